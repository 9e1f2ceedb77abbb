//! One DNS packet in, at most one DNS packet out: decoding, checking, encoding, ECS echo and
//! the UDP size cap, around [`answer`](super::answer::answer). Sans-IO: the caller owns the
//! sockets.
//!
//! Owns: what a malformed or unexpected packet gets (dropped when it cannot be a query we
//! may answer — shorter than a header, or a response; FORMERR when it cannot be decoded or
//! does not ask exactly one question, or its Client Subnet is invalid; NOTIMP for opcodes
//! other than QUERY; BADVERS for EDNS versions above 0; REFUSED for classes other than IN),
//! the EDNS answer (OPT with our 1,232-byte buffer, the DO bit copied, ECS echoed with the
//! scope), and truncation: a UDP answer larger than the client's buffer (512 without EDNS)
//! or 1,232 bytes, whichever is smaller, goes out with TC set and no records, so the client
//! asks again over TCP, which carries it whole.
//!
//! Must never: panic on any input, answer a response (reflection loops), or send a UDP
//! datagram larger than that cap.

use std::net::IpAddr;

use hickory_proto::op::{
    Edns, Header, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use ipnet::IpNet;

use super::answer::{self, ApexRecord, Client, DnsSettings, NodeStatus, Rcode, Reason};
use crate::table::Table;

/// The largest UDP answer, whatever buffer the client advertises (DNS flag day 2020: fits
/// the common path MTU without fragmentation). Also the buffer our OPT advertises.
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// The largest UDP answer to a client without EDNS (RFC 1035 §4.2.1).
pub const PLAIN_UDP_PAYLOAD: u16 = 512;
/// SOA timers (seconds): refresh, retry, expire. Nothing transfers these zones; the values
/// only have to be sane.
const SOA_TIMERS: (i32, i32, i32) = (3600, 600, 86_400);

/// How the packet arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A datagram: the answer is capped and may be truncated.
    Udp,
    /// A TCP stream: the answer goes whole.
    Tcp,
}

/// Why a packet was not answered normally (`grouter_dns_bad_packets_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPacket {
    /// Shorter than a DNS header: dropped.
    Short,
    /// A response (QR set): dropped, never answered.
    Response,
    /// Cannot be decoded past the header: FORMERR.
    Undecodable,
    /// Not exactly one question: FORMERR.
    QuestionCount,
    /// An ECS option with a prefix too long for its family or address bits beyond it:
    /// FORMERR (RFC 7871 §6).
    BadClientSubnet,
}

impl BadPacket {
    /// Every reason, for metrics.
    pub const ALL: [BadPacket; 5] = [
        BadPacket::Short,
        BadPacket::Response,
        BadPacket::Undecodable,
        BadPacket::QuestionCount,
        BadPacket::BadClientSubnet,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            BadPacket::Short => "short",
            BadPacket::Response => "response",
            BadPacket::Undecodable => "undecodable",
            BadPacket::QuestionCount => "question_count",
            BadPacket::BadClientSubnet => "bad_client_subnet",
        }
    }
}

/// What answering needs: the table and the settings, and the node's state now.
#[derive(Debug, Clone, Copy)]
pub struct Zones<'a> {
    /// The merged route table.
    pub table: &'a Table,
    /// `[dns]` and the node.
    pub settings: &'a DnsSettings,
    /// Sync and health.
    pub status: NodeStatus,
    /// The policies in force (`None` when there are none).
    pub policy: Option<answer::Policy<'a>>,
}

/// The outcome of one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The packet to send back (`None`: send nothing).
    pub bytes: Option<Vec<u8>>,
    /// Query type label (`A`, `AAAA`, `SOA`, `NS`, `ANY`, `AXFR`, `IXFR`, `other`).
    pub qtype: &'static str,
    /// The response code sent (meaningless when nothing is sent).
    pub rcode: ResponseCode,
    /// Why an app host's answer names its sites.
    pub reason: Option<Reason>,
    /// The packet was malformed or unexpected.
    pub bad: Option<BadPacket>,
    /// The UDP answer was truncated (TC set).
    pub truncated: bool,
    /// The ECS scope echoed, when the query carried ECS.
    pub scope: Option<u8>,
}

impl Reply {
    fn dropped(bad: BadPacket) -> Reply {
        Reply {
            bytes: None,
            qtype: "other",
            rcode: ResponseCode::NoError,
            reason: None,
            bad: Some(bad),
            truncated: false,
            scope: None,
        }
    }
}

/// The query type label: a fixed, small set (unknown types would let clients grow it).
fn qtype_label(t: RecordType) -> &'static str {
    match t {
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::SOA => "SOA",
        RecordType::NS => "NS",
        RecordType::ANY => "ANY",
        RecordType::AXFR => "AXFR",
        RecordType::IXFR => "IXFR",
        _ => "other",
    }
}

/// Answer one packet that arrived over `transport` from `src`.
pub fn respond(z: Zones<'_>, packet: &[u8], transport: Transport, src: IpAddr) -> Reply {
    let mut decoder = BinDecoder::new(packet);
    let Ok(header) = Header::read(&mut decoder) else {
        return Reply::dropped(BadPacket::Short);
    };
    let req = header.metadata;
    if req.message_type == MessageType::Response {
        return Reply::dropped(BadPacket::Response);
    }
    if header.counts.queries != 1 {
        return error(
            &req,
            None,
            None,
            ResponseCode::FormErr,
            BadPacket::QuestionCount,
        );
    }
    let Ok(query) = Query::read(&mut decoder) else {
        return error(
            &req,
            None,
            None,
            ResponseCode::FormErr,
            BadPacket::Undecodable,
        );
    };
    let edns = match read_edns(&mut decoder, &header) {
        Ok(edns) => edns,
        Err(()) => {
            return error(
                &req,
                Some(query),
                None,
                ResponseCode::FormErr,
                BadPacket::Undecodable,
            );
        }
    };
    let subnet = match edns.as_ref().map(client_subnet) {
        Some(Err(())) => {
            return error(
                &req,
                Some(query),
                edns.as_ref(),
                ResponseCode::FormErr,
                BadPacket::BadClientSubnet,
            );
        }
        Some(Ok(s)) => s,
        None => None,
    };
    let qtype = query.query_type();
    if req.op_code != OpCode::Query {
        return plain(&req, query, edns.as_ref(), ResponseCode::NotImp, transport);
    }
    if edns.as_ref().is_some_and(|e| e.version() > 0) {
        return plain(&req, query, edns.as_ref(), ResponseCode::BADVERS, transport);
    }
    if query.query_class() != DNSClass::IN {
        return plain(&req, query, edns.as_ref(), ResponseCode::Refused, transport);
    }
    let qname = query.name().clone();
    let decided = answer::answer(
        z.table,
        z.settings,
        z.status,
        z.policy,
        Client {
            addr: src,
            subnet: subnet.and_then(|s| IpNet::new(s.addr(), s.source_prefix()).ok()),
        },
        &qname.to_ascii(),
        qtype.into(),
    );
    let ttl = z.settings.ttl;
    let zone = decided
        .zone
        .as_deref()
        .and_then(|z| Name::from_ascii(format!("{z}.")).ok());
    let mut msg = response(&req, query, edns.as_ref());
    msg.answers = decided
        .answers
        .iter()
        .map(|ip| address_record(qname.clone(), ttl, *ip))
        .collect();
    if let (Some(zone), Some(zone_name)) = (&zone, decided.zone.as_deref()) {
        match decided.apex {
            Some(ApexRecord::Soa) => msg.answers.extend(soa_record(z.settings, zone, zone_name)),
            Some(ApexRecord::Ns) => {
                let servers = z.settings.nameservers_of(zone_name);
                for ns in &servers {
                    if let Ok(name) = Name::from_ascii(format!("{}.", ns.name)) {
                        msg.answers.push(Record::from_rdata(
                            zone.clone(),
                            ttl,
                            RData::NS(NS(name.clone())),
                        ));
                        // Glue: the addresses of the name servers inside our zones.
                        if z.settings.zone_of(&ns.name).is_some() {
                            msg.additionals.extend(
                                ns.addresses
                                    .iter()
                                    .map(|ip| address_record(name.clone(), ttl, *ip)),
                            );
                        }
                    }
                }
            }
            None => {}
        }
        if decided.authority_soa {
            msg.authorities
                .extend(soa_record(z.settings, zone, zone_name));
        }
    }
    let rcode = match decided.rcode {
        Rcode::NoError => ResponseCode::NoError,
        Rcode::NxDomain => ResponseCode::NXDomain,
        Rcode::Refused => ResponseCode::Refused,
    };
    msg.metadata.response_code = rcode;
    msg.metadata.authoritative = decided.rcode != Rcode::Refused;
    let scope = subnet.map(|s| {
        if s.source_prefix() == 0 {
            0
        } else {
            decided.scope
        }
    });
    if let (Some(edns), Some(s), Some(scope)) = (msg.edns.as_mut(), subnet, scope) {
        edns.options_mut()
            .insert(EdnsOption::Subnet(ClientSubnet::new(
                s.addr(),
                s.source_prefix(),
                scope,
            )));
    }
    let (bytes, truncated) = encode(msg, transport, edns.as_ref());
    Reply {
        bytes,
        qtype: qtype_label(qtype),
        rcode,
        reason: decided.reason,
        bad: None,
        truncated,
        scope,
    }
}

/// The request's OPT record, if any, read past the answer and authority sections.
fn read_edns(decoder: &mut BinDecoder<'_>, header: &Header) -> Result<Option<Edns>, ()> {
    let op = header.metadata.op_code;
    for (count, additional) in [
        (header.counts.answers, false),
        (header.counts.authorities, false),
        (header.counts.additionals, true),
    ] {
        let (_, edns, _) =
            Message::read_records(decoder, usize::from(count), additional, op).map_err(|_| ())?;
        if additional {
            return Ok(edns);
        }
    }
    Ok(None)
}

/// The Client Subnet option of a request, checked (RFC 7871 §6): the prefix fits the family
/// and no address bit is set beyond it. `Ok(None)` when there is none.
fn client_subnet(edns: &Edns) -> Result<Option<ClientSubnet>, ()> {
    let Some(EdnsOption::Subnet(s)) = edns.option(EdnsCode::Subnet) else {
        return Ok(None);
    };
    let net = IpNet::new(s.addr(), s.source_prefix()).map_err(|_| ())?;
    if net.network() != s.addr() {
        return Err(());
    }
    Ok(Some(*s))
}

/// A response to `req` asking `query` (when known), with an OPT when the request had one:
/// our buffer size, version 0, the DO bit copied.
fn response(req: &Metadata, query: Query, edns: Option<&Edns>) -> Message {
    let mut msg = Message::new(req.id, MessageType::Response, req.op_code);
    msg.metadata.recursion_desired = req.recursion_desired;
    msg.metadata.checking_disabled = req.checking_disabled;
    msg.metadata.recursion_available = false;
    msg.add_query(query);
    if let Some(e) = edns {
        let mut out = Edns::new();
        out.set_max_payload(MAX_UDP_PAYLOAD);
        out.set_version(0);
        out.set_dnssec_ok(e.flags().dnssec_ok);
        msg.set_edns(out);
    }
    msg
}

/// An answer with no records and `rcode`.
fn plain(
    req: &Metadata,
    query: Query,
    edns: Option<&Edns>,
    rcode: ResponseCode,
    transport: Transport,
) -> Reply {
    let qtype = qtype_label(query.query_type());
    let mut msg = response(req, query, edns);
    msg.metadata.response_code = rcode;
    let (bytes, truncated) = encode(msg, transport, edns);
    Reply {
        bytes,
        qtype,
        rcode,
        reason: None,
        bad: None,
        truncated,
        scope: None,
    }
}

/// An error answer to a packet that was malformed.
fn error(
    req: &Metadata,
    query: Option<Query>,
    edns: Option<&Edns>,
    rcode: ResponseCode,
    bad: BadPacket,
) -> Reply {
    let qtype = query
        .as_ref()
        .map_or("other", |q| qtype_label(q.query_type()));
    let mut msg = Message::new(req.id, MessageType::Response, req.op_code);
    msg.metadata.recursion_desired = req.recursion_desired;
    msg.metadata.response_code = rcode;
    if let Some(q) = query {
        msg.add_query(q);
    }
    if edns.is_some() {
        let mut out = Edns::new();
        out.set_max_payload(MAX_UDP_PAYLOAD);
        msg.set_edns(out);
    }
    Reply {
        bytes: msg.to_vec().ok(),
        qtype,
        rcode,
        reason: None,
        bad: Some(bad),
        truncated: false,
        scope: None,
    }
}

/// The largest UDP answer for a request with `edns` (or none).
pub fn udp_limit(edns: Option<&Edns>) -> usize {
    usize::from(edns.map_or(PLAIN_UDP_PAYLOAD, |e| {
        e.max_payload().clamp(PLAIN_UDP_PAYLOAD, MAX_UDP_PAYLOAD)
    }))
}

/// Encode `msg`; over UDP, when it does not fit, the same header and question with TC set
/// and no records (the OPT stays). `(bytes, truncated)`.
fn encode(mut msg: Message, transport: Transport, edns: Option<&Edns>) -> (Option<Vec<u8>>, bool) {
    let Ok(bytes) = msg.to_vec() else {
        return (servfail(&msg), false);
    };
    if transport == Transport::Tcp || bytes.len() <= udp_limit(edns) {
        return (Some(bytes), false);
    }
    msg.answers.clear();
    msg.authorities.clear();
    msg.additionals.clear();
    msg.metadata.truncation = true;
    match msg.to_vec() {
        Ok(bytes) if bytes.len() <= udp_limit(edns) => (Some(bytes), true),
        _ => (servfail(&msg), false),
    }
}

/// A bare SERVFAIL for an answer that could not be encoded (nothing we build should fail).
fn servfail(msg: &Message) -> Option<Vec<u8>> {
    let mut out = Message::new(msg.metadata.id, MessageType::Response, msg.metadata.op_code);
    out.metadata.response_code = ResponseCode::ServFail;
    out.to_vec().ok()
}

fn address_record(name: Name, ttl: u32, ip: IpAddr) -> Record {
    let rdata = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name, ttl, rdata)
}

/// The zone's SOA: the first name server is the primary, `hostmaster.<zone>` the contact,
/// the TTL the negative-caching time.
fn soa_record(settings: &DnsSettings, zone: &Name, zone_name: &str) -> Option<Record> {
    let primary = settings.nameservers_of(zone_name).into_iter().next()?;
    let mname = Name::from_ascii(format!("{}.", primary.name)).ok()?;
    let rname = Name::from_ascii("hostmaster")
        .ok()?
        .append_domain(zone)
        .ok()?;
    let (refresh, retry, expire) = SOA_TIMERS;
    let ttl = settings.ttl;
    Some(Record::from_rdata(
        zone.clone(),
        ttl,
        RData::SOA(SOA::new(mname, rname, 1, refresh, retry, expire, ttl)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::SyncState;
    use crate::table::testing::{entry, key};

    fn settings(addresses: usize) -> DnsSettings {
        DnsSettings {
            zones: vec!["apps.example.com".into()],
            ttl: 30,
            site: "lon".into(),
            own_addresses: (1..=addresses)
                .map(|i| format!("192.0.2.{i}").parse().unwrap())
                .collect(),
            client_networks: vec![("10.1.0.0/16".parse().unwrap(), "lon".into())],
            answer_sites: 1,
            nameservers: vec![
                answer::Nameserver {
                    name: "ns1.apps.example.com".into(),
                    addresses: vec!["192.0.2.53".parse().unwrap()],
                },
                answer::Nameserver {
                    name: "ns2.example.net".into(),
                    addresses: Vec::new(),
                },
            ],
        }
    }

    fn table() -> Table {
        let t = Table::new("lon-1", "lon", 1);
        t.upsert_local(&key("app.apps.example.com"), entry("app", 2));
        t
    }

    fn run(s: &DnsSettings, packet: &[u8], transport: Transport) -> Reply {
        let t = table();
        let z = Zones {
            table: &t,
            settings: s,
            status: NodeStatus {
                sync: SyncState::InSync,
                healthy: true,
            },
            policy: None,
        };
        respond(z, packet, transport, "10.9.0.1".parse().unwrap())
    }

    fn query(name: &str, qtype: RecordType, edns: Option<(u16, Option<&str>)>) -> Message {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some((payload, ecs)) = edns {
            let mut e = Edns::new();
            e.set_max_payload(payload);
            if let Some(net) = ecs {
                e.options_mut()
                    .insert(EdnsOption::Subnet(net.parse::<ClientSubnet>().unwrap()));
            }
            m.set_edns(e);
        }
        m
    }

    fn ask(s: &DnsSettings, m: &Message, transport: Transport) -> (Reply, Message) {
        let reply = run(s, &m.to_vec().unwrap(), transport);
        let msg = Message::from_vec(reply.bytes.as_deref().expect("an answer")).unwrap();
        assert_eq!(msg.metadata.id, 7);
        (reply, msg)
    }

    fn ecs_of(m: &Message) -> Option<ClientSubnet> {
        match m.edns.as_ref()?.option(EdnsCode::Subnet)? {
            EdnsOption::Subnet(s) => Some(*s),
            _ => None,
        }
    }

    #[test]
    fn malformed_and_unexpected_packets_get_a_clear_code() {
        let s = settings(1);
        let good = query("app.apps.example.com", RecordType::A, None)
            .to_vec()
            .unwrap();
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut p = good.clone();
            f(&mut p);
            p
        };
        // (packet, what it gets: None = dropped)
        type Case<'a> = (&'a str, Vec<u8>, Option<ResponseCode>, Option<BadPacket>);
        let cases: Vec<Case<'_>> = vec![
            ("empty", Vec::new(), None, Some(BadPacket::Short)),
            (
                "11 bytes",
                good[..11].to_vec(),
                None,
                Some(BadPacket::Short),
            ),
            (
                "a response",
                with(&|p| p[2] |= 0x80),
                None,
                Some(BadPacket::Response),
            ),
            (
                "no question",
                with(&|p| p[5] = 0),
                Some(ResponseCode::FormErr),
                Some(BadPacket::QuestionCount),
            ),
            (
                "two questions",
                with(&|p| p[5] = 2),
                Some(ResponseCode::FormErr),
                Some(BadPacket::QuestionCount),
            ),
            (
                "65535 questions",
                with(&|p| {
                    p[4] = 0xff;
                    p[5] = 0xff
                }),
                Some(ResponseCode::FormErr),
                Some(BadPacket::QuestionCount),
            ),
            (
                "cut question",
                good[..good.len() - 3].to_vec(),
                Some(ResponseCode::FormErr),
                Some(BadPacket::Undecodable),
            ),
            (
                "phantom additional",
                with(&|p| p[11] = 1),
                Some(ResponseCode::FormErr),
                Some(BadPacket::Undecodable),
            ),
            (
                "NOTIFY",
                with(&|p| p[2] = (p[2] & 0x87) | (4 << 3)),
                Some(ResponseCode::NotImp),
                None,
            ),
            (
                "UPDATE",
                with(&|p| p[2] = (p[2] & 0x87) | (5 << 3)),
                Some(ResponseCode::NotImp),
                None,
            ),
            (
                "class CH",
                with(&|p| {
                    let n = p.len();
                    p[n - 1] = 3
                }),
                Some(ResponseCode::Refused),
                None,
            ),
        ];
        for (what, packet, rcode, bad) in cases {
            let r = run(&s, &packet, Transport::Udp);
            assert_eq!(r.bad, bad, "{what}");
            match rcode {
                None => assert!(r.bytes.is_none(), "{what}: dropped"),
                Some(rcode) => {
                    let m = Message::from_vec(r.bytes.as_deref().unwrap()).unwrap();
                    assert_eq!(
                        (m.metadata.response_code, r.rcode),
                        (rcode, rcode),
                        "{what}"
                    );
                    assert_eq!(m.metadata.message_type, MessageType::Response, "{what}");
                }
            }
        }
        // EDNS version 1: BADVERS, with an OPT of version 0.
        let mut m = query("app.apps.example.com", RecordType::A, Some((1232, None)));
        if let Some(e) = m.edns.as_mut() {
            e.set_version(1);
        }
        let (r, back) = ask(&s, &m, Transport::Udp);
        // BADVERS and BADSIG share the code 16: compare numbers.
        assert_eq!(r.rcode, ResponseCode::BADVERS);
        assert_eq!(u16::from(back.metadata.response_code), 16);
        assert_eq!(back.edns.map(|e| e.version()), Some(0));
        // ECS with address bits past the source prefix (in its last address byte), or a
        // prefix too long for the family: FORMERR.
        for ecs in [
            ClientSubnet::new("10.1.255.0".parse().unwrap(), 20, 0),
            ClientSubnet::new("2001:db8::ff00".parse().unwrap(), 116, 0),
        ] {
            let mut m = query("app.apps.example.com", RecordType::A, Some((1232, None)));
            if let Some(e) = m.edns.as_mut() {
                e.options_mut().insert(EdnsOption::Subnet(ecs));
            }
            let r = run(&s, &m.to_vec().unwrap(), Transport::Udp);
            assert_eq!(
                (r.rcode, r.bad),
                (ResponseCode::FormErr, Some(BadPacket::BadClientSubnet)),
                "{ecs:?}"
            );
        }
        let mut bad_prefix = query(
            "app.apps.example.com",
            RecordType::A,
            Some((1232, Some("10.1.0.0/16"))),
        )
        .to_vec()
        .unwrap();
        // The ECS option ends the packet: family(2) source(1) scope(1) address(2).
        let n = bad_prefix.len();
        bad_prefix[n - 4] = 40;
        let r = run(&s, &bad_prefix, Transport::Udp);
        assert_eq!(r.rcode, ResponseCode::FormErr);
        assert!(r.bad.is_some());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let s = settings(3);
        let seed = query(
            "app.apps.example.com",
            RecordType::A,
            Some((4096, Some("10.1.2.0/24"))),
        )
        .to_vec()
        .unwrap();
        // A small deterministic generator: flip, cut and fill bytes of a valid query.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut p = seed.clone();
            for _ in 0..(next() % 6) {
                let i = (next() as usize) % p.len();
                p[i] = next() as u8;
            }
            p.truncate(1 + (next() as usize) % p.len());
            for t in [Transport::Udp, Transport::Tcp] {
                let r = run(&s, &p, t);
                if let Some(b) = r.bytes {
                    assert!(t == Transport::Tcp || b.len() <= usize::from(MAX_UDP_PAYLOAD));
                }
            }
        }
    }

    #[test]
    fn ecs_is_echoed_with_its_scope_and_only_when_asked() {
        let s = settings(1);
        let (r, m) = ask(
            &s,
            &query(
                "app.apps.example.com",
                RecordType::A,
                Some((1232, Some("10.1.2.0/24"))),
            ),
            Transport::Udp,
        );
        let ecs = ecs_of(&m).expect("ECS echoed");
        // Family, source prefix and address as asked; one site serves: scope 0.
        assert_eq!(
            (ecs.addr(), ecs.source_prefix(), ecs.scope_prefix()),
            ("10.1.2.0".parse().unwrap(), 24, 0)
        );
        assert_eq!(r.scope, Some(0));
        assert!(
            m.metadata.authoritative
                && m.metadata.recursion_desired
                && !m.metadata.recursion_available
        );
        // With EDNS but no ECS: an OPT without ECS; without EDNS: no OPT at all.
        let (_, m) = ask(
            &s,
            &query("app.apps.example.com", RecordType::A, Some((1232, None))),
            Transport::Udp,
        );
        assert!(m.edns.is_some() && ecs_of(&m).is_none());
        assert_eq!(m.edns.map(|e| e.max_payload()), Some(MAX_UDP_PAYLOAD));
        let (_, m) = ask(
            &s,
            &query("app.apps.example.com", RecordType::A, None),
            Transport::Udp,
        );
        assert!(m.edns.is_none());
        assert_eq!(m.answers.len(), 1);
    }

    #[test]
    fn udp_answers_are_capped_and_truncated_tcp_carries_them_whole() {
        // 100 A records of 16 bytes: ~1,650 bytes; 60: ~1,000; 20: ~360.
        for (addresses, payload, transport, truncated) in [
            (100, Some(4096), Transport::Udp, true),
            (100, Some(65_535), Transport::Udp, true),
            (100, Some(4096), Transport::Tcp, false),
            (100, None, Transport::Tcp, false),
            (60, Some(4096), Transport::Udp, false),
            (60, Some(1232), Transport::Udp, false),
            (60, Some(600), Transport::Udp, true),
            (60, Some(100), Transport::Udp, true),
            (60, None, Transport::Udp, true),
            (20, None, Transport::Udp, false),
        ] {
            let s = settings(addresses);
            let what = format!("{addresses} addresses, payload {payload:?}, {transport:?}");
            let m = query(
                "app.apps.example.com",
                RecordType::A,
                payload.map(|p| (p, Some("10.1.2.0/24"))),
            );
            let reply = run(&s, &m.to_vec().unwrap(), transport);
            let bytes = reply.bytes.clone().unwrap();
            let back = Message::from_vec(&bytes).unwrap();
            assert_eq!(
                (reply.truncated, back.metadata.truncation),
                (truncated, truncated),
                "{what}"
            );
            if transport == Transport::Udp {
                let cap = payload.map_or(512, |p| p.clamp(512, MAX_UDP_PAYLOAD));
                assert!(
                    bytes.len() <= usize::from(cap),
                    "{what}: {} bytes",
                    bytes.len()
                );
            }
            if truncated {
                assert!(
                    back.answers.is_empty(),
                    "{what}: a truncated answer holds no records"
                );
                assert_eq!(back.queries.len(), 1);
                assert_eq!(
                    payload.is_some(),
                    ecs_of(&back).is_some(),
                    "{what}: the OPT stays"
                );
            } else {
                assert_eq!(back.answers.len(), addresses, "{what}");
            }
        }
    }

    #[test]
    fn apex_ns_has_glue_soa_names_the_first_and_transfers_are_refused() {
        let s = settings(1);
        let (_, m) = ask(
            &s,
            &query("apps.example.com", RecordType::NS, None),
            Transport::Udp,
        );
        let names: Vec<String> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::NS(ns) => Some(ns.0.to_ascii()),
                _ => None,
            })
            .collect();
        assert_eq!(names, ["ns1.apps.example.com.", "ns2.example.net."]);
        let glue: Vec<(String, String)> = m
            .additionals
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some((r.name.to_ascii(), a.0.to_string())),
                _ => None,
            })
            .collect();
        assert_eq!(
            glue,
            [(
                "ns1.apps.example.com.".to_string(),
                "192.0.2.53".to_string()
            )]
        );
        let (_, m) = ask(
            &s,
            &query("apps.example.com", RecordType::SOA, None),
            Transport::Udp,
        );
        match m.answers.first().map(|r| &r.data) {
            Some(RData::SOA(soa)) => {
                assert_eq!(soa.mname.to_ascii(), "ns1.apps.example.com.");
                assert_eq!(soa.rname.to_ascii(), "hostmaster.apps.example.com.");
            }
            other => panic!("no SOA: {other:?}"),
        }
        let (_, m) = ask(
            &s,
            &query("ns1.apps.example.com", RecordType::A, None),
            Transport::Udp,
        );
        assert_eq!(m.answers.len(), 1);
        for t in [RecordType::AXFR, RecordType::IXFR] {
            for transport in [Transport::Udp, Transport::Tcp] {
                let (r, m) = ask(&s, &query("apps.example.com", t, None), transport);
                assert_eq!(
                    (m.metadata.response_code, r.qtype),
                    (
                        ResponseCode::Refused,
                        if t == RecordType::AXFR {
                            "AXFR"
                        } else {
                            "IXFR"
                        }
                    )
                );
                assert!(m.answers.is_empty() && !m.metadata.authoritative);
            }
        }
        // The question's case is kept in the answer.
        let (_, m) = ask(
            &s,
            &query("App.Apps.Example.COM", RecordType::A, None),
            Transport::Udp,
        );
        assert_eq!(
            m.answers.first().map(|r| r.name.to_ascii()),
            Some("App.Apps.Example.COM.".to_string())
        );
    }
}
