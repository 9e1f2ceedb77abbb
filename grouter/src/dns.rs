//! The DNS front: authoritative answers for the configured zones, steering clients to a site.
//!
//! Owns:
//! - [`answer`], the whole answering decision as a pure function of the table, the node's
//!   health and sync state, the client (resolver address or EDNS Client Subnet) and the
//!   question: zone membership (REFUSED outside), apex SOA/NS, which sites serve a host
//!   (wildcards honoured), which of them are healthy, their order by proximity, how many an
//!   answer names, fail-open when sync is lost, NXDOMAIN for names nothing serves;
//! - [`serve`], a hickory-server [`RequestHandler`] on the UDP socket and TCP listener the
//!   binary bound (EDNS, truncation and TCP come from hickory-server).
//!
//! Must never: answer for names outside its zones, answer an existing name with an empty
//! answer while any site serves it (when every serving site is unhealthy it names all of
//! them), write the table, or panic on a packet (hickory-server decodes; a malformed query
//! gets FORMERR or is dropped).
//!
//! Not yet: per-app steering policy ("allowed" sites), DNSSEC, configurable NS names and
//! glue (the apex NS names `ns.<zone>`), ANY beyond an empty NOERROR.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use ipnet::IpNet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::DnsConfig;
use crate::health::{Health, SyncState};
use crate::metrics::Metrics;
use crate::table::Table;

/// How long a TCP client may stay silent before its connection is closed.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses buffered per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;
/// SOA timers (seconds): refresh, retry, expire. Nothing transfers these zones; the values
/// only have to be sane.
const SOA_TIMERS: (i32, i32, i32) = (3600, 600, 86_400);

/// What [`answer`] needs from `[dns]` and the node.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// Zones, lower-case, no trailing dot.
    pub zones: Vec<String>,
    /// TTL of every record.
    pub ttl: u32,
    /// This node's site.
    pub site: Arc<str>,
    /// This site's entry addresses.
    pub own_addresses: Vec<IpAddr>,
    /// Client network → site, most specific first.
    pub client_networks: Vec<(IpNet, String)>,
    /// How many healthy sites one answer names.
    pub answer_sites: usize,
}

impl DnsSettings {
    /// Settings from a validated `[dns]` section for a node of `site`.
    pub fn from_config(c: &DnsConfig, site: &str) -> DnsSettings {
        DnsSettings {
            zones: c.zones.clone(),
            ttl: c.ttl_secs,
            site: site.into(),
            own_addresses: c.site_addresses.clone(),
            client_networks: c.client_networks.clone(),
            answer_sites: c.answer_sites.max(1),
        }
    }

    /// The zone `name` (lower-case, no trailing dot) belongs to: the longest that matches.
    fn zone_of(&self, name: &str) -> Option<&str> {
        self.zones
            .iter()
            .filter(|z| {
                name == z.as_str()
                    || (name.len() > z.len()
                        && name.ends_with(z.as_str())
                        && name.as_bytes()[name.len() - z.len() - 1] == b'.')
            })
            .max_by_key(|z| z.len())
            .map(String::as_str)
    }

    /// The site a client address belongs to (longest prefix).
    fn client_site(&self, addr: IpAddr) -> Option<&str> {
        self.client_networks
            .iter()
            .find(|(net, _)| net.contains(&addr))
            .map(|(_, site)| site.as_str())
    }
}

/// The question's type, as far as the answer logic cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryType {
    /// IPv4 addresses.
    A,
    /// IPv6 addresses.
    Aaaa,
    /// The zone's SOA.
    Soa,
    /// The zone's name servers.
    Ns,
    /// Anything else, ANY included: an empty NOERROR (or NXDOMAIN) with the SOA.
    Other,
}

impl From<RecordType> for QueryType {
    fn from(t: RecordType) -> Self {
        match t {
            RecordType::A => QueryType::A,
            RecordType::AAAA => QueryType::Aaaa,
            RecordType::SOA => QueryType::Soa,
            RecordType::NS => QueryType::Ns,
            _ => QueryType::Other,
        }
    }
}

/// The answer's response code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    /// The name exists (the answer may still be empty for this type).
    NoError,
    /// No site serves the name.
    NxDomain,
    /// The name is outside every configured zone.
    Refused,
}

/// Why an answer for an app host names the sites it does (`grouter_dns_steering_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The client's network (ECS or resolver address) maps to a healthy serving site,
    /// which comes first.
    ClientNetwork,
    /// No mapped site applied: this node's site first, then by RTT.
    Proximity,
    /// Every serving site is unhealthy: all of them.
    AllUnhealthy,
    /// This node lost sync with the mesh: its own site's addresses.
    FailOpen,
}

impl Reason {
    /// Every reason, for metrics.
    pub const ALL: [Reason; 4] = [
        Reason::ClientNetwork,
        Reason::Proximity,
        Reason::AllUnhealthy,
        Reason::FailOpen,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ClientNetwork => "client_network",
            Reason::Proximity => "proximity",
            Reason::AllUnhealthy => "all_unhealthy",
            Reason::FailOpen => "fail_open",
        }
    }
}

/// The DNS front's counters: `grouter_dns_queries_total{type,rcode}` and
/// `grouter_dns_steering_total{reason}`.
#[derive(Debug)]
pub struct DnsMetrics {
    queries: Family<Vec<(String, String)>, Counter>,
    steering: [Counter; Reason::ALL.len()],
}

impl DnsMetrics {
    /// The counters, registered in `metrics` (the steering reasons at zero).
    pub fn new(metrics: &Metrics) -> DnsMetrics {
        let queries = Family::default();
        metrics.register(
            "dns_queries",
            "DNS queries answered, by query type and response code",
            queries.clone(),
        );
        let steering = metrics.reason_counters(
            "dns_steering",
            "DNS answers for app hosts, by why they name the sites they do",
            Reason::ALL.map(Reason::as_str),
        );
        DnsMetrics { queries, steering }
    }

    /// Count one query by its type (`A`, `AAAA`, …) and response code (`noerror`, …). The
    /// label set is small: types and codes are bounded enumerations.
    fn count_query(&self, qtype: &str, rcode: &str) {
        self.queries
            .get_or_create(&vec![
                ("type".to_string(), qtype.to_string()),
                ("rcode".to_string(), rcode.to_string()),
            ])
            .inc();
    }

    /// Count one steering decision.
    fn count_steering(&self, why: Reason) {
        if let Some(c) = self.steering.get(why as usize) {
            c.inc();
        }
    }
}

/// What the DNS front reads and counts.
#[derive(Debug)]
pub struct Front {
    /// The merged route table.
    pub table: Arc<Table>,
    /// This node's sync state and health.
    pub health: Arc<Health>,
    /// The front's counters.
    pub metrics: Arc<DnsMetrics>,
}

/// Records at the zone apex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApexRecord {
    /// The SOA in the answer section.
    Soa,
    /// The NS in the answer section.
    Ns,
}

/// The decision for one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Response code.
    pub rcode: Rcode,
    /// The zone the name belongs to (`None` when refused).
    pub zone: Option<String>,
    /// A or AAAA records, in order.
    pub answers: Vec<IpAddr>,
    /// An apex record in the answer section.
    pub apex: Option<ApexRecord>,
    /// The zone's SOA goes in the authority section (NXDOMAIN and NODATA).
    pub authority_soa: bool,
    /// Why these sites (only for answers about an app host).
    pub reason: Option<Reason>,
}

impl Answer {
    fn refused() -> Answer {
        Answer {
            rcode: Rcode::Refused,
            zone: None,
            answers: Vec::new(),
            apex: None,
            authority_soa: false,
            reason: None,
        }
    }

    fn in_zone(zone: &str, rcode: Rcode) -> Answer {
        Answer {
            rcode,
            zone: Some(zone.to_string()),
            answers: Vec::new(),
            apex: None,
            authority_soa: false,
            reason: None,
        }
    }
}

/// What the node knows about itself when answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeStatus {
    /// The mesh sync state.
    pub sync: SyncState,
    /// This node's GoRouters pass health checks (and it is not draining).
    pub healthy: bool,
}

/// One candidate site of an answer.
#[derive(Debug)]
struct Candidate {
    site: Arc<str>,
    healthy: bool,
    addresses: Vec<IpAddr>,
}

/// Answer one question. `name` may have any case and a trailing dot; `client` is the
/// resolver's address and `ecs` the EDNS Client Subnet, which wins when present.
pub fn answer(
    table: &Table,
    settings: &DnsSettings,
    status: NodeStatus,
    client: IpAddr,
    ecs: Option<IpNet>,
    name: &str,
    qtype: QueryType,
) -> Answer {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let Some(zone) = settings.zone_of(&name) else {
        return Answer::refused();
    };
    let at_apex = name == zone;
    let family_matches = |ip: &IpAddr| match qtype {
        QueryType::A => ip.is_ipv4(),
        QueryType::Aaaa => ip.is_ipv6(),
        _ => false,
    };
    let mut out = Answer::in_zone(zone, Rcode::NoError);
    if at_apex && matches!(qtype, QueryType::Soa | QueryType::Ns) {
        out.apex = Some(if qtype == QueryType::Soa {
            ApexRecord::Soa
        } else {
            ApexRecord::Ns
        });
        return out;
    }
    // Fail open: data from other sites is stale, so every name in the zone gets this site.
    if status.sync == SyncState::Lost && !at_apex {
        out.answers = settings
            .own_addresses
            .iter()
            .copied()
            .filter(family_matches)
            .collect();
        out.authority_soa = out.answers.is_empty();
        out.reason = Some(Reason::FailOpen);
        return out;
    }
    let Some(sites) = table.sites_for_host(&name) else {
        // The apex exists (it has SOA and NS) even when no app is served there.
        if !at_apex {
            out.rcode = Rcode::NxDomain;
        }
        out.authority_soa = true;
        return out;
    };
    if !matches!(qtype, QueryType::A | QueryType::Aaaa) {
        out.authority_soa = true;
        return out;
    }
    let candidates = candidates(table, settings, status, &sites, &family_matches);
    let healthy: Vec<&Candidate> = candidates.iter().filter(|c| c.healthy).collect();
    let chosen: Vec<&Candidate> = if healthy.is_empty() {
        out.reason = Some(Reason::AllUnhealthy);
        candidates.iter().collect()
    } else {
        let preferred = ecs
            .map(|net| net.network())
            .or(Some(client))
            .and_then(|addr| settings.client_site(addr));
        let mut ordered = healthy;
        match preferred.and_then(|p| ordered.iter().position(|c| &*c.site == p)) {
            Some(i) => {
                let first = ordered.remove(i);
                ordered.insert(0, first);
                out.reason = Some(Reason::ClientNetwork);
            }
            None => out.reason = Some(Reason::Proximity),
        }
        ordered.truncate(settings.answer_sites);
        ordered
    };
    for c in chosen {
        for ip in &c.addresses {
            if !out.answers.contains(ip) {
                out.answers.push(*ip);
            }
        }
    }
    out.authority_soa = out.answers.is_empty();
    out
}

/// The serving sites (in the table's order: this site, then by health and RTT) that have
/// addresses of the asked family, each with its health.
fn candidates(
    table: &Table,
    settings: &DnsSettings,
    status: NodeStatus,
    sites: &[(Arc<str>, bool, bool)],
    family_matches: &dyn Fn(&IpAddr) -> bool,
) -> Vec<Candidate> {
    let partitions = table.partitions();
    let me = table.me();
    sites
        .iter()
        .filter_map(|(site, local, live)| {
            let addresses: Vec<IpAddr> = if *local {
                settings.own_addresses.clone()
            } else {
                let mut addrs = Vec::new();
                // Addresses from the site's nodes, live ones first.
                let mut nodes: Vec<_> = partitions
                    .iter()
                    .filter(|p| p.origin.site == *site)
                    .collect();
                nodes.sort_by_key(|p| !p.origin.is_alive());
                for p in nodes {
                    for a in p.record.iter().flat_map(|r| r.site_addresses.iter()) {
                        if let Ok(ip) = a.parse::<IpAddr>()
                            && !addrs.contains(&ip)
                        {
                            addrs.push(ip);
                        }
                    }
                }
                addrs
            };
            let addresses: Vec<IpAddr> = addresses.into_iter().filter(family_matches).collect();
            if addresses.is_empty() {
                return None;
            }
            // A site is healthy when one of its live nodes says its GoRouters are (this
            // node speaks for itself: its record is only refreshed while a mesh runs).
            let site_healthy = partitions.iter().any(|p| {
                p.origin.site == *site
                    && p.origin.is_alive()
                    && if Arc::ptr_eq(&p.origin, me) {
                        status.healthy
                    } else {
                        p.record.as_ref().is_some_and(|r| r.healthy)
                    }
            });
            Some(Candidate {
                site: site.clone(),
                healthy: *live && site_healthy,
                addresses,
            })
        })
        .collect()
}

/// Errors of the DNS front.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The server stopped with an error.
    #[error("dns server: {0}")]
    Server(String),
}

/// The request handler: decodes the question, calls [`answer`], encodes the records.
#[derive(Debug)]
struct Handler {
    state: Front,
    settings: DnsSettings,
}

/// The first Client Subnet option of a request, as a network.
fn client_subnet(edns: Option<&Edns>) -> Option<IpNet> {
    match edns?.option(EdnsCode::Subnet)? {
        EdnsOption::Subnet(s) => IpNet::new(s.addr(), s.source_prefix()).ok(),
        _ => None,
    }
}

fn soa_record(zone: &Name, ttl: u32) -> Option<Record> {
    let mname = Name::from_ascii("ns").ok()?.append_domain(zone).ok()?;
    let rname = Name::from_ascii("hostmaster")
        .ok()?
        .append_domain(zone)
        .ok()?;
    let (refresh, retry, expire) = SOA_TIMERS;
    Some(Record::from_rdata(
        zone.clone(),
        ttl,
        RData::SOA(SOA::new(mname, rname, 1, refresh, retry, expire, ttl)),
    ))
}

fn ns_record(zone: &Name, ttl: u32) -> Option<Record> {
    let ns = Name::from_ascii("ns").ok()?.append_domain(zone).ok()?;
    Some(Record::from_rdata(zone.clone(), ttl, RData::NS(NS(ns))))
}

/// The `rcode` label: a fixed, small set.
fn rcode_label(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "noerror",
        ResponseCode::FormErr => "formerr",
        ResponseCode::ServFail => "servfail",
        ResponseCode::NXDomain => "nxdomain",
        ResponseCode::NotImp => "notimp",
        ResponseCode::Refused => "refused",
        ResponseCode::BADVERS => "badvers",
        _ => "other",
    }
}

impl Handler {
    async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> Result<ResponseInfo, String> {
        let req_edns = request.edns.as_ref();
        let mut resp_edns = Edns::new();
        if let Some(e) = req_edns {
            resp_edns.set_max_payload(e.max_payload().max(512));
            resp_edns.set_version(0);
        }
        let mut builder = MessageResponseBuilder::new(&request.queries, None);
        if req_edns.is_some() {
            builder.edns(&resp_edns);
        }
        let metrics = &*self.state.metrics;
        if request.metadata.message_type != MessageType::Query
            || request.metadata.op_code != OpCode::Query
        {
            metrics.count_query("other", rcode_label(ResponseCode::NotImp));
            let msg = builder.error_msg(&request.metadata, ResponseCode::NotImp);
            return response.send_response(msg).await.map_err(|e| e.to_string());
        }
        if req_edns.is_some_and(|e| e.version() > 0) {
            metrics.count_query("other", rcode_label(ResponseCode::BADVERS));
            let msg = builder.error_msg(&request.metadata, ResponseCode::BADVERS);
            return response.send_response(msg).await.map_err(|e| e.to_string());
        }
        let Ok(info) = request.request_info() else {
            metrics.count_query("other", rcode_label(ResponseCode::FormErr));
            let msg = builder.error_msg(&request.metadata, ResponseCode::FormErr);
            return response.send_response(msg).await.map_err(|e| e.to_string());
        };
        let qname: Name = info.query.name().into();
        let qtype = info.query.query_type();
        let status = NodeStatus {
            sync: self.state.health.sync(),
            healthy: self.state.health.can_serve(),
        };
        let decided = answer(
            &self.state.table,
            &self.settings,
            status,
            request.src().ip(),
            client_subnet(req_edns),
            &qname.to_ascii(),
            qtype.into(),
        );
        let ttl = self.settings.ttl;
        let zone = decided
            .zone
            .as_deref()
            .and_then(|z| Name::from_ascii(format!("{z}.")).ok());
        let mut answers: Vec<Record> = decided
            .answers
            .iter()
            .map(|ip| {
                let rdata = match ip {
                    IpAddr::V4(v4) => RData::A(A(*v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
                };
                Record::from_rdata(qname.clone(), ttl, rdata)
            })
            .collect();
        if let Some(zone) = &zone {
            match decided.apex {
                Some(ApexRecord::Soa) => answers.extend(soa_record(zone, ttl)),
                Some(ApexRecord::Ns) => answers.extend(ns_record(zone, ttl)),
                None => {}
            }
        }
        let soa: Vec<Record> = match (&zone, decided.authority_soa) {
            (Some(zone), true) => soa_record(zone, ttl).into_iter().collect(),
            _ => Vec::new(),
        };
        let rcode = match decided.rcode {
            Rcode::NoError => ResponseCode::NoError,
            Rcode::NxDomain => ResponseCode::NXDomain,
            Rcode::Refused => ResponseCode::Refused,
        };
        // Known types only: unknown ones would let clients grow the label set.
        let type_label = match qtype {
            RecordType::A | RecordType::AAAA | RecordType::SOA | RecordType::NS => {
                qtype.to_string()
            }
            RecordType::ANY => "ANY".to_string(),
            _ => "other".to_string(),
        };
        metrics.count_query(&type_label, rcode_label(rcode));
        if let Some(reason) = decided.reason {
            metrics.count_steering(reason);
        }
        debug!(name = %qname, qtype = %qtype, rcode = %rcode, answers = decided.answers.len(),
            reason = decided.reason.map(Reason::as_str), "dns answer");
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = decided.rcode != Rcode::Refused;
        metadata.recursion_available = false;
        metadata.response_code = rcode;
        let msg = builder.build(metadata, answers.iter(), [], soa.iter(), []);
        response.send_response(msg).await.map_err(|e| e.to_string())
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        match self.respond(request, response_handle).await {
            Ok(info) => info,
            Err(err) => {
                // Sending failed (the client went away, or the socket broke): report what
                // the client would have seen.
                warn!(error = %err, "dns: cannot send response");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(hickory_proto::op::Header {
                    metadata,
                    counts: Default::default(),
                })
            }
        }
    }
}

/// Serve `[dns]` on the bound UDP socket and TCP listener until `shutdown`.
pub async fn serve(
    settings: DnsSettings,
    state: Front,
    udp: UdpSocket,
    tcp: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), DnsError> {
    let addrs: (Option<SocketAddr>, Option<SocketAddr>) =
        (udp.local_addr().ok(), tcp.local_addr().ok());
    let mut server = hickory_server::Server::new(Handler { state, settings });
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
    info!(udp = ?addrs.0, tcp = ?addrs.1, "dns serving");
    // The server ends on its own only when a socket fails; shutdown drains it.
    tokio::select! {
        () = shutdown.cancelled() => {}
        done = server.block_until_done() => {
            return Err(DnsError::Server(match done {
                Ok(()) => "stopped unexpectedly".into(),
                Err(e) => e.to_string(),
            }));
        }
    }
    server
        .shutdown_gracefully()
        .await
        .map_err(|e| DnsError::Server(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::testing::{first_import, key};
    use crate::table::{Import, NodeRecord};

    fn entry(endpoints: u32) -> crate::table::RouteEntry {
        crate::table::testing::entry("app", endpoints)
    }

    const LON: &str = "192.0.2.10";
    const NYC: &str = "198.51.100.10";
    const NYC6: &str = "2001:db8::10";

    fn settings() -> DnsSettings {
        DnsSettings {
            zones: vec!["apps.example.com".into()],
            ttl: 30,
            site: "lon".into(),
            own_addresses: vec![LON.parse().unwrap()],
            client_networks: vec![
                ("10.2.0.0/16".parse().unwrap(), "nyc".into()),
                ("10.1.0.0/16".parse().unwrap(), "lon".into()),
            ],
            answer_sites: 1,
        }
    }

    /// A table at lon-1 with `hosts` served locally and a peer `nyc-1` serving `remote`.
    fn table(local: &[&str], remote: &[&str], nyc_healthy: bool) -> Table {
        let t = Table::new("lon-1", "lon", 1);
        for h in local {
            t.upsert_local(&key(h), entry(2));
        }
        let routes: Vec<_> = remote.iter().map(|h| (*h, "app", 1)).collect();
        let n = routes.len() as u64;
        t.import_trusted(Import {
            up_to_version: n + 1,
            reset: true,
            record: Some(NodeRecord {
                version: n + 1,
                healthy: nyc_healthy,
                site_addresses: vec![NYC.into(), NYC6.into(), "junk".into()],
                ..Default::default()
            }),
            ..first_import("nyc-1", "nyc", &routes)
        });
        t
    }

    #[test]
    fn steering_reasons_index_their_counters_in_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{}", r.as_str());
        }
    }

    fn ok() -> NodeStatus {
        NodeStatus {
            sync: SyncState::InSync,
            healthy: true,
        }
    }

    fn ask(
        t: &Table,
        s: &DnsSettings,
        st: NodeStatus,
        client: &str,
        ecs: Option<&str>,
        name: &str,
        q: QueryType,
    ) -> Answer {
        answer(
            t,
            s,
            st,
            client.parse().unwrap(),
            ecs.map(|e| e.parse().unwrap()),
            name,
            q,
        )
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn steers_by_resolver_network_then_ecs() {
        let t = table(&["app.apps.example.com"], &["app.apps.example.com"], true);
        let s = settings();
        let a = ask(
            &t,
            &s,
            ok(),
            "10.1.0.53",
            None,
            "App.Apps.Example.com.",
            QueryType::A,
        );
        assert_eq!((a.rcode, a.answers.clone()), (Rcode::NoError, ips(&[LON])));
        assert_eq!(a.reason, Some(Reason::ClientNetwork));
        let b = ask(
            &t,
            &s,
            ok(),
            "10.2.0.53",
            None,
            "app.apps.example.com",
            QueryType::A,
        );
        assert_eq!(b.answers, ips(&[NYC]));
        // ECS wins over the resolver's address.
        let c = ask(
            &t,
            &s,
            ok(),
            "10.1.0.53",
            Some("10.2.3.0/24"),
            "app.apps.example.com",
            QueryType::A,
        );
        assert_eq!(
            (c.answers, c.reason),
            (ips(&[NYC]), Some(Reason::ClientNetwork))
        );
        // An unmapped client: this node's site first.
        let d = ask(
            &t,
            &s,
            ok(),
            "172.16.0.1",
            None,
            "app.apps.example.com",
            QueryType::A,
        );
        assert_eq!(
            (d.answers, d.reason),
            (ips(&[LON]), Some(Reason::Proximity))
        );
    }

    #[test]
    fn answer_sites_and_address_family() {
        let t = table(&["app.apps.example.com"], &["app.apps.example.com"], true);
        let mut s = settings();
        s.answer_sites = 2;
        let a = ask(
            &t,
            &s,
            ok(),
            "10.2.0.1",
            None,
            "app.apps.example.com",
            QueryType::A,
        );
        assert_eq!(a.answers, ips(&[NYC, LON]));
        // AAAA: only nyc has an IPv6 address.
        let b = ask(
            &t,
            &s,
            ok(),
            "10.1.0.1",
            None,
            "app.apps.example.com",
            QueryType::Aaaa,
        );
        assert_eq!((b.rcode, b.answers), (Rcode::NoError, ips(&[NYC6])));
        // A host only lon serves has no AAAA: NODATA with the SOA.
        let t = table(&["v4.apps.example.com"], &[], true);
        let c = ask(
            &t,
            &s,
            ok(),
            "10.1.0.1",
            None,
            "v4.apps.example.com",
            QueryType::Aaaa,
        );
        assert!(c.answers.is_empty() && c.authority_soa && c.rcode == Rcode::NoError);
    }

    #[test]
    fn unhealthy_sites_are_skipped_unless_all_are() {
        // nyc says its GoRouters fail: a client of nyc gets lon.
        let t = table(&["app.apps.example.com"], &["app.apps.example.com"], false);
        let s = settings();
        let a = ask(
            &t,
            &s,
            ok(),
            "10.2.0.1",
            None,
            "app.apps.example.com",
            QueryType::A,
        );
        assert_eq!(
            (a.answers, a.reason),
            (ips(&[LON]), Some(Reason::Proximity))
        );
        // lon fails too: all of them, never empty.
        let down = NodeStatus {
            healthy: false,
            ..ok()
        };
        let b = ask(
            &t,
            &s,
            down,
            "10.2.0.1",
            None,
            "app.apps.example.com",
            QueryType::A,
        );
        assert_eq!(
            (b.answers, b.reason),
            (ips(&[LON, NYC]), Some(Reason::AllUnhealthy))
        );
        // A dead nyc node does not count either.
        let t = table(&["app.apps.example.com"], &["app.apps.example.com"], true);
        for p in t.partitions() {
            if &*p.origin.node_id == "nyc-1" {
                p.origin.set_alive(false);
            }
        }
        let c = ask(
            &t,
            &s,
            ok(),
            "10.2.0.1",
            None,
            "app.apps.example.com",
            QueryType::A,
        );
        assert_eq!(c.answers, ips(&[LON]));
        // A site without endpoints does not serve.
        let t = table(&["app.apps.example.com"], &["app.apps.example.com"], true);
        t.upsert_local(&key("app.apps.example.com"), entry(0));
        let d = ask(
            &t,
            &s,
            ok(),
            "10.1.0.1",
            None,
            "app.apps.example.com",
            QueryType::A,
        );
        assert_eq!(d.answers, ips(&[NYC]));
    }

    #[test]
    fn wildcards_nxdomain_refused_and_apex() {
        let t = table(&["*.apps.example.com/path"], &[], true);
        let s = settings();
        let a = ask(
            &t,
            &s,
            ok(),
            "10.1.0.1",
            None,
            "anything.apps.example.com",
            QueryType::A,
        );
        assert_eq!(a.answers, ips(&[LON]));
        let t = table(&["app.apps.example.com"], &[], true);
        let b = ask(
            &t,
            &s,
            ok(),
            "10.1.0.1",
            None,
            "nope.apps.example.com",
            QueryType::A,
        );
        assert_eq!((b.rcode, b.authority_soa), (Rcode::NxDomain, true));
        assert!(b.answers.is_empty() && b.reason.is_none());
        let c = ask(
            &t,
            &s,
            ok(),
            "10.1.0.1",
            None,
            "app.example.org",
            QueryType::A,
        );
        assert_eq!(c, Answer::refused());
        let c = ask(
            &t,
            &s,
            ok(),
            "10.1.0.1",
            None,
            "xapps.example.com",
            QueryType::A,
        );
        assert_eq!(c.rcode, Rcode::Refused);
        let soa = ask(
            &t,
            &s,
            ok(),
            "10.1.0.1",
            None,
            "APPS.example.com.",
            QueryType::Soa,
        );
        assert_eq!(
            (soa.rcode, soa.apex),
            (Rcode::NoError, Some(ApexRecord::Soa))
        );
        let ns = ask(
            &t,
            &s,
            ok(),
            "10.1.0.1",
            None,
            "apps.example.com",
            QueryType::Ns,
        );
        assert_eq!(ns.apex, Some(ApexRecord::Ns));
        // The apex exists: A there is NODATA, not NXDOMAIN.
        let apex_a = ask(
            &t,
            &s,
            ok(),
            "10.1.0.1",
            None,
            "apps.example.com",
            QueryType::A,
        );
        assert_eq!((apex_a.rcode, apex_a.authority_soa), (Rcode::NoError, true));
        // Other types for a served host: NODATA with SOA.
        let mx = ask(
            &t,
            &s,
            ok(),
            "10.1.0.1",
            None,
            "app.apps.example.com",
            QueryType::Other,
        );
        assert_eq!(
            (mx.rcode, mx.authority_soa, mx.answers.len()),
            (Rcode::NoError, true, 0)
        );
    }

    #[test]
    fn fails_open_when_sync_is_lost() {
        let t = table(&[], &["app.apps.example.com"], true);
        let s = settings();
        let lost = NodeStatus {
            sync: SyncState::Lost,
            ..ok()
        };
        for name in ["app.apps.example.com", "unknown.apps.example.com"] {
            let a = ask(&t, &s, lost, "10.2.0.1", None, name, QueryType::A);
            assert_eq!(
                (a.rcode, a.answers, a.reason),
                (Rcode::NoError, ips(&[LON]), Some(Reason::FailOpen))
            );
        }
        // Still refuses outside the zones.
        let r = ask(
            &t,
            &s,
            lost,
            "10.2.0.1",
            None,
            "x.example.org",
            QueryType::A,
        );
        assert_eq!(r.rcode, Rcode::Refused);
    }
}
