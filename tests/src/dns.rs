//! The DNS front with real processes: two meshed sites, each with its own `nats-server`;
//! queries are real DNS packets (encoded with hickory-proto) over UDP and TCP, sent from
//! chosen loopback source addresses (127.0.0.N) that `dns.client_networks` maps to sites.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use grouter_tests::inproc::{publish, registration};
use grouter_tests::{MeshCa, NatsServer, Node, wait_until};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{Name, RData, RecordType};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, UdpSocket};

const SEC: Duration = Duration::from_secs(1);
/// How long a new two-site mesh may take to replicate routes and health before a test's
/// first DNS check: a deadline for set-up on a loaded machine, not a measured latency.
const SETTLE: Duration = Duration::from_secs(30);
pub(crate) const LON_ADDR: &str = "192.0.2.10";
pub(crate) const NYC_ADDR: &str = "198.51.100.10";
/// Resolvers: 127.0.0.2 is lon's, 127.0.0.3 is nyc's.
const LON_RESOLVER: &str = "127.0.0.2";
const NYC_RESOLVER: &str = "127.0.0.3";

fn dns_toml(site_addr: &str) -> String {
    dns_toml_many(&[site_addr])
}

fn dns_toml_many(site_addrs: &[&str]) -> String {
    let site_addrs = site_addrs
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "\n[dns]\nlisten = \"127.0.0.1:0\"\nzones = [\"apps.example.com\"]\nttl_secs = 5\n\
         site_addresses = [{site_addrs}]\n\
         client_networks = {{ \"{LON_RESOLVER}/32\" = \"lon\", \"{NYC_RESOLVER}/32\" = \"nyc\" }}\n"
    )
}

/// lon and nyc, meshed, each with its own `nats-server` and a `[dns]` section answering
/// with its site's entry address.
async fn two_dns_sites() -> (MeshCa, NatsServer, NatsServer, Node, Node) {
    let ca = MeshCa::new();
    let (lon_bus, nyc_bus) = (NatsServer::start(), NatsServer::start());
    let lon = Node::builder("lon-1", "lon")
        .nats(&lon_bus.url())
        .mesh(&ca, &[])
        .extra(&dns_toml(LON_ADDR))
        .start()
        .await;
    let nyc = Node::builder("nyc-1", "nyc")
        .nats(&nyc_bus.url())
        .mesh(&ca, &[lon.mesh_addr()])
        .extra(&dns_toml(NYC_ADDR))
        .start()
        .await;
    (ca, lon_bus, nyc_bus, lon, nyc)
}

/// lon alone (so its sync is `lost`), answering with `site_addrs`, with `host` routed; and
/// its DNS address.
async fn one_dns_site(site_addrs: &[&str], host: &str) -> (MeshCa, NatsServer, Node, SocketAddr) {
    let ca = MeshCa::new();
    let bus = NatsServer::start();
    let lon = Node::builder("lon-1", "lon")
        .nats(&bus.url())
        .mesh(&ca, &[])
        .extra(&dns_toml_many(site_addrs))
        .start()
        .await;
    let client = bus.client().await;
    lon.register_until_routed(&client, &registration(host, 8080, host, "app"), host)
        .await;
    let server = dns_addr(&lon);
    (ca, bus, lon, server)
}

pub(crate) fn dns_addr(node: &Node) -> SocketAddr {
    node.log.wait_for(10 * SEC, "the dns listener", |l| {
        let v: Value = serde_json::from_str(l).ok()?;
        (v["message"] == "listening" && v["service"] == "dns")
            .then(|| v["addr"].as_str()?.parse::<SocketAddr>().ok())?
    })
}

pub(crate) fn query(name: &str, qtype: RecordType, ecs: Option<&str>) -> Vec<u8> {
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(net) = ecs {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        edns.options_mut()
            .insert(EdnsOption::Subnet(net.parse::<ClientSubnet>().unwrap()));
        m.set_edns(edns);
    }
    m.to_vec().unwrap()
}

pub(crate) async fn udp_raw(server: SocketAddr, from: &str, packet: &[u8]) -> Option<Message> {
    let sock = UdpSocket::bind((from.parse::<IpAddr>().unwrap(), 0))
        .await
        .unwrap();
    sock.send_to(packet, server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(2 * SEC, sock.recv(&mut buf))
        .await
        .ok()?
        .unwrap();
    Some(Message::from_vec(&buf[..n]).unwrap())
}

pub(crate) async fn udp(
    server: SocketAddr,
    from: &str,
    name: &str,
    qtype: RecordType,
    ecs: Option<&str>,
) -> Message {
    udp_raw(server, from, &query(name, qtype, ecs))
        .await
        .unwrap_or_else(|| panic!("no UDP answer for {name} from {from}"))
}

pub(crate) async fn tcp(server: SocketAddr, from: &str, name: &str, qtype: RecordType) -> Message {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    let mut stream = sock.connect(server).await.unwrap();
    let packet = query(name, qtype, None);
    let len = u16::try_from(packet.len()).unwrap().to_be_bytes();
    stream.write_all(&len).await.unwrap();
    stream.write_all(&packet).await.unwrap();
    let mut len = [0u8; 2];
    tokio::time::timeout(10 * SEC, stream.read_exact(&mut len))
        .await
        .unwrap()
        .unwrap();
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

pub(crate) fn addresses(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

pub(crate) fn has_soa_authority(m: &Message) -> bool {
    m.authorities
        .iter()
        .any(|r| r.record_type() == RecordType::SOA)
}

#[tokio::test]
async fn two_sites_steer_by_resolver_and_ecs_over_udp_and_tcp() {
    let (_ca, lon_bus, nyc_bus, lon, nyc) = two_dns_sites().await;
    let server = dns_addr(&lon);
    let host = "shop.apps.example.com";
    for (node, bus) in [(&lon, &lon_bus), (&nyc, &nyc_bus)] {
        let bus = bus.client().await;
        node.register_until_routed(&bus, &registration(host, 8080, host, "app-shop"), host)
            .await;
    }
    // lon's resolver gets lon; once nyc's route and record (with its site address) have
    // replicated, nyc's resolver gets nyc.
    let a = udp(server, LON_RESOLVER, host, RecordType::A, None).await;
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert!(a.metadata.authoritative);
    assert_eq!(addresses(&a), [LON_ADDR]);
    wait_until(SETTLE, "nyc's resolver to be steered to nyc", || async {
        let m = udp(server, NYC_RESOLVER, host, RecordType::A, None).await;
        (addresses(&m) == [NYC_ADDR]).then_some(())
    })
    .await;
    // ECS from nyc's network wins over lon's resolver address.
    let ecs = udp(
        server,
        LON_RESOLVER,
        host,
        RecordType::A,
        Some("127.0.0.3/32"),
    )
    .await;
    assert_eq!(addresses(&ecs), [NYC_ADDR]);
    assert!(ecs.edns.is_some(), "EDNS answered with EDNS");
    // The same over TCP.
    let t = tcp(server, NYC_RESOLVER, host, RecordType::A).await;
    assert_eq!(addresses(&t), [NYC_ADDR]);

    // Unknown names: NXDOMAIN with the SOA; outside the zones: REFUSED.
    let nx = udp(
        server,
        LON_RESOLVER,
        "nope.apps.example.com",
        RecordType::A,
        None,
    )
    .await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(has_soa_authority(&nx), "{nx:?}");
    let refused = udp(
        server,
        LON_RESOLVER,
        "shop.example.org",
        RecordType::A,
        None,
    )
    .await;
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
    // The apex: SOA and NS.
    let soa = tcp(server, LON_RESOLVER, "apps.example.com", RecordType::SOA).await;
    assert_eq!(
        soa.answers.first().map(|r| r.record_type()),
        Some(RecordType::SOA)
    );
    let ns = udp(
        server,
        LON_RESOLVER,
        "apps.example.com",
        RecordType::NS,
        None,
    )
    .await;
    assert_eq!(
        ns.answers.first().map(|r| r.record_type()),
        Some(RecordType::NS)
    );
    // ANY and malformed packets: no panic, the server keeps answering.
    let any = udp(server, LON_RESOLVER, host, RecordType::ANY, None).await;
    assert_eq!(any.metadata.response_code, ResponseCode::NoError);
    let _ = udp_raw(server, LON_RESOLVER, b"\x12\x34\x01").await;
    let mut truncated = query(host, RecordType::A, None);
    truncated.truncate(truncated.len() - 3);
    let _ = udp_raw(server, LON_RESOLVER, &truncated).await;
    let again = udp(server, LON_RESOLVER, host, RecordType::A, None).await;
    assert_eq!(addresses(&again), [LON_ADDR]);

    // Metrics.
    let queries = lon
        .metric_labelled("grouter_dns_queries_total", r#"type="A",rcode="nxdomain""#)
        .await;
    assert_eq!(queries, Some(1.0));
    let steered = lon
        .metric_labelled("grouter_dns_steering_total", r#"reason="client_network""#)
        .await
        .unwrap_or_default();
    assert!(
        steered >= 4.0,
        "steering by client network counted: {steered}"
    );
}

/// The steering follows live state: a site that loses an app's last endpoint drops out of
/// its answers within 2 s; a site whose GoRouters fail gives way to the other; a node that
/// has lost every other site answers with its own site rather than NXDOMAIN.
#[tokio::test]
async fn answers_follow_endpoints_and_health_and_a_lost_node_fails_open() {
    let (ca, lon_bus, nyc_bus, lon, nyc) = two_dns_sites().await;
    let server = dns_addr(&lon);
    let (shop, blog) = ("shop.apps.example.com", "blog.apps.example.com");
    let (lon_client, nyc_client) = (lon_bus.client().await, nyc_bus.client().await);
    for host in [shop, blog] {
        for (node, bus) in [(&lon, &lon_client), (&nyc, &nyc_client)] {
            node.register_until_routed(bus, &registration(host, 8080, host, host), host)
                .await;
        }
    }
    wait_until(SETTLE, "nyc's resolver to be steered to nyc", || async {
        let m = udp(server, NYC_RESOLVER, blog, RecordType::A, None).await;
        (addresses(&m) == [NYC_ADDR]).then_some(())
    })
    .await;

    // nyc loses blog's last endpoint: within 2 s nyc's resolver is sent to lon.
    let gone = std::time::Instant::now();
    publish(
        &nyc_client,
        "router.unregister",
        &grouter_tests::inproc::unregistration(blog, 8080, blog),
    )
    .await;
    wait_until(3 * SEC, "blog to leave nyc's answers", || async {
        let m = udp(server, NYC_RESOLVER, blog, RecordType::A, None).await;
        (addresses(&m) == [LON_ADDR]).then_some(())
    })
    .await;
    assert!(gone.elapsed() < 2 * SEC, "took {:?}", gone.elapsed());

    // lon's GoRouters fail: once the probes notice, lon's own resolver is sent to nyc.
    assert_eq!(
        addresses(&udp(server, LON_RESOLVER, shop, RecordType::A, None).await),
        [LON_ADDR]
    );
    lon.stub.as_ref().expect("lon's stand-in").stop();
    wait_until(5 * SEC, "shop to be answered with nyc", || async {
        let m = udp(server, LON_RESOLVER, shop, RecordType::A, None).await;
        (addresses(&m) == [NYC_ADDR]).then_some(())
    })
    .await;

    // A node cut off from every other site (here: one that never met another) fails open.
    let sgp_bus = NatsServer::start();
    let sgp = Node::builder("sgp-1", "sgp")
        .nats(&sgp_bus.url())
        .mesh(&ca, &[])
        .extra(&dns_toml("203.0.113.10"))
        .start()
        .await;
    assert_eq!(sgp.json("/v1/status").await["sync"], "lost");
    let sgp_dns = dns_addr(&sgp);
    let open = udp(
        sgp_dns,
        LON_RESOLVER,
        "anything.apps.example.com",
        RecordType::A,
        None,
    )
    .await;
    assert_eq!(open.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&open), ["203.0.113.10"]);
    let outside = udp(
        sgp_dns,
        LON_RESOLVER,
        "www.example.org",
        RecordType::A,
        None,
    )
    .await;
    assert_eq!(
        outside.metadata.response_code,
        ResponseCode::Refused,
        "fail-open stays inside the zones"
    );
}

/// `kdig` (knot-dnsutils), or a panic naming the install command.
pub(crate) fn kdig() -> &'static str {
    ["/usr/bin/kdig", "/usr/local/bin/kdig"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .unwrap_or_else(|| panic!("kdig not found: install it with `apt-get install -y knot-dnsutils` (deploy/test.sh does this)"))
}

/// Run `kdig` against `server` with `args`; its standard output.
fn kdig_at(server: SocketAddr, args: &[&str]) -> String {
    let out = std::process::Command::new(kdig())
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+time=2", "+retry=0"])
        .args(args)
        .output()
        .expect("run kdig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kdig`'s standard output and error together (it reports failed transfers on stderr).
fn kdig_all(server: SocketAddr, args: &[&str]) -> String {
    let out = std::process::Command::new(kdig())
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+time=2", "+retry=0"])
        .args(args)
        .output()
        .expect("run kdig");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The non-empty lines of `kdig +short` output, sorted.
fn sorted_lines(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// An answer too large for a UDP reply comes truncated with the TC bit, so the resolver
/// asks again over TCP and gets all of it. The cap is 512 bytes without EDNS and 1,232 with
/// it, whatever buffer the client advertises (it used to follow the client up to 64 KB).
#[tokio::test]
async fn a_large_answer_is_truncated_over_udp_and_whole_over_tcp() {
    // 100 entry addresses: 100 A records of 16 bytes each fit neither 512 nor 1,232 bytes.
    let many: Vec<String> = (1..=100).map(|i| format!("192.0.2.{i}")).collect();
    let host = "big.apps.example.com";
    let (_ca, _bus, lon, server) =
        one_dns_site(&many.iter().map(String::as_str).collect::<Vec<_>>(), host).await;

    let over_udp = udp(server, LON_RESOLVER, host, RecordType::A, None).await;
    assert!(over_udp.metadata.truncation, "TC set over UDP");
    assert!(
        over_udp.to_vec().unwrap().len() <= 512,
        "the UDP reply fits 512 bytes"
    );
    assert!(
        addresses(&over_udp).len() < many.len(),
        "a truncated reply cannot hold every address"
    );

    let over_tcp = tcp(server, LON_RESOLVER, host, RecordType::A).await;
    assert!(!over_tcp.metadata.truncation, "TC clear over TCP");
    let mut got = addresses(&over_tcp);
    got.sort();
    let mut want = many.clone();
    want.sort();
    assert_eq!(got, want, "every entry address over TCP");

    // A standard resolver does exactly that: kdig asks over UDP, sees TC and asks again
    // over TCP; without EDNS, and with a 4,096-byte EDNS buffer.
    for edns in ["+noedns", "+bufsize=4096"] {
        let got = sorted_lines(&kdig_at(server, &[edns, "+short", host, "A"]));
        assert_eq!(
            got, want,
            "{edns}: kdig retried over TCP and got every address"
        );
        // Told not to retry, kdig shows what came over UDP: TC, within the cap.
        let udp_only = kdig_at(server, &[edns, "+ignore", host, "A"]);
        let flags = udp_only
            .lines()
            .find(|l| l.contains("Flags:"))
            .unwrap_or_default();
        assert!(flags.contains(" tc"), "{edns}: TC over UDP: {udp_only}");
        let received: usize = udp_only
            .lines()
            .find_map(|l| {
                l.strip_prefix(";; Received ")?
                    .split(' ')
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("{edns}: size in {udp_only}"));
        let cap = if edns == "+noedns" { 512 } else { 1232 };
        assert!(received <= cap, "{edns}: {received} bytes over UDP");
    }
    let truncated = lon.metric("grouter_dns_truncated_total").await;
    assert!(truncated >= Some(5.0), "truncations counted: {truncated:?}");
}

/// The answers as a standard tool sees them: `kdig` (knot-dnsutils) over UDP and TCP.
#[tokio::test]
async fn kdig_gets_steered_answers_over_udp_and_tcp() {
    let kdig = kdig();
    let host = "shop.apps.example.com";
    let (_ca, _bus, _lon, server) = one_dns_site(&[LON_ADDR], host).await;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(kdig)
            .arg(format!("@{}", server.ip()))
            .args(["-p", &server.port().to_string(), "+time=2", "+retry=0"])
            .args(args)
            .output()
            .expect("run kdig");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // This node is lost (no other site), so it answers from its own site either way; the
    // route exists, so it is a plain steered answer.
    assert_eq!(run(&["+short", host, "A"]).trim(), LON_ADDR);
    assert_eq!(run(&["+tcp", "+short", host, "A"]).trim(), LON_ADDR);
    let soa = run(&["apps.example.com", "SOA"]);
    assert!(soa.contains("NOERROR") && soa.contains("SOA"), "{soa}");
    let refused = run(&["www.example.org", "A"]);
    assert!(refused.contains("REFUSED"), "{refused}");
    let flags = run(&[host, "A"]);
    assert!(flags.contains(" aa"), "authoritative answer: {flags}");
}

/// Each DNS rule as `kdig` sees it, on two meshed sites that steer 10.1/16 to lon and
/// 10.2/16 to nyc and name their name server `ns1.apps.example.com`: ECS echoed with the
/// scope of the matched network (and absent when not asked), NODATA for empty
/// non-terminals, the NS set with glue and the name server's address, zone transfers
/// refused; malformed packets get FORMERR or are dropped, and are counted.
#[tokio::test]
async fn kdig_sees_ecs_scope_nodata_name_servers_and_refused_transfers() {
    let ca = MeshCa::new();
    let (lon_bus, nyc_bus) = (NatsServer::start(), NatsServer::start());
    let extra = |addr: &str| {
        format!(
            "\n[dns]\nlisten = \"127.0.0.1:0\"\nzones = [\"apps.example.com\"]\nttl_secs = 5\n\
             site_addresses = [\"{addr}\"]\n\
             client_networks = {{ \"10.1.0.0/16\" = \"lon\", \"10.2.0.0/16\" = \"nyc\" }}\n\
             nameservers = {{ \"ns1.apps.example.com\" = [\"192.0.2.53\"], \
             \"ns2.example.net\" = [] }}\n"
        )
    };
    let lon = Node::builder("lon-1", "lon")
        .nats(&lon_bus.url())
        .mesh(&ca, &[])
        .extra(&extra(LON_ADDR))
        .start()
        .await;
    let nyc = Node::builder("nyc-1", "nyc")
        .nats(&nyc_bus.url())
        .mesh(&ca, &[lon.mesh_addr()])
        .extra(&extra(NYC_ADDR))
        .start()
        .await;
    let server = dns_addr(&lon);
    let shop = "shop.apps.example.com";
    for (node, bus) in [(&lon, &lon_bus), (&nyc, &nyc_bus)] {
        let bus = bus.client().await;
        node.register_until_routed(&bus, &registration(shop, 8080, shop, "shop"), shop)
            .await;
    }
    let bus = lon_bus.client().await;
    for host in ["a.b.apps.example.com", "*.wild.apps.example.com"] {
        lon.register_until_routed(&bus, &registration(host, 8080, host, "app"), host)
            .await;
    }
    wait_until(SETTLE, "lon in sync with nyc's routes", || async {
        let out = kdig_at(server, &["+short", "+subnet=10.2.3.0/24", shop, "A"]);
        (out.trim() == NYC_ADDR).then_some(())
    })
    .await;

    // ECS: the answer's scope is the matched /16 (kdig shows address/source/scope).
    for (subnet, site, echo) in [
        ("10.2.3.0/24", NYC_ADDR, "10.2.3.0/24/16"),
        ("10.1.7.9/32", LON_ADDR, "10.1.7.9/32/16"),
    ] {
        let out = kdig_at(server, &[&format!("+subnet={subnet}"), shop, "A"]);
        assert!(out.contains(&format!("CLIENT-SUBNET: {echo}")), "{out}");
        assert!(out.contains(site), "{subnet}: {out}");
    }
    // A name one site serves does not depend on the subnet: scope 0.
    let out = kdig_at(
        server,
        &["+subnet=10.2.3.0/24", "a.b.apps.example.com", "A"],
    );
    assert!(out.contains("CLIENT-SUBNET: 10.2.3.0/24/0"), "{out}");
    // Without ECS, none comes back.
    let out = kdig_at(server, &[shop, "A"]);
    assert!(!out.contains("CLIENT-SUBNET"), "{out}");

    // Empty non-terminals: NOERROR with no answer and the SOA; beside them, NXDOMAIN.
    for (name, rcode) in [
        ("b.apps.example.com", "NOERROR"),
        ("wild.apps.example.com", "NOERROR"),
        ("c.apps.example.com", "NXDOMAIN"),
        ("x.a.b.apps.example.com", "NXDOMAIN"),
    ] {
        let out = kdig_at(server, &[name, "A"]);
        assert!(out.contains(&format!("status: {rcode}")), "{name}: {out}");
        assert!(
            out.contains("AUTHORITY SECTION") && out.contains("SOA"),
            "{name}: {out}"
        );
    }
    let nodata = kdig_at(server, &["+short", "b.apps.example.com", "A"]);
    assert_eq!(nodata.trim(), "", "no address for an empty non-terminal");
    let below = kdig_at(server, &["+short", "x.wild.apps.example.com", "A"]);
    assert_eq!(below.trim(), LON_ADDR, "the wildcard below it");

    // The NS set, with glue for the name inside the zone; its address; the SOA names it.
    let ns = kdig_at(server, &["apps.example.com", "NS"]);
    assert!(
        ns.contains("NS\tns1.apps.example.com.") && ns.contains("NS\tns2.example.net."),
        "{ns}"
    );
    assert!(
        ns.contains("ADDITIONAL SECTION") && ns.contains("192.0.2.53"),
        "{ns}"
    );
    let ns_a = kdig_at(server, &["+short", "ns1.apps.example.com", "A"]);
    assert_eq!(ns_a.trim(), "192.0.2.53");
    let soa = kdig_at(server, &["+short", "apps.example.com", "SOA"]);
    assert!(
        soa.starts_with("ns1.apps.example.com. hostmaster.apps.example.com. "),
        "{soa}"
    );
    let outside = kdig_at(server, &["ns2.example.net", "A"]);
    assert!(outside.contains("status: REFUSED"), "{outside}");

    // Zone transfers: REFUSED (kdig does AXFR and IXFR over TCP).
    for xfr in ["AXFR", "IXFR=1"] {
        let out = kdig_all(server, &["apps.example.com", xfr]);
        assert!(out.contains("REFUSED"), "{xfr}: {out}");
    }
    let refused = lon
        .metric_labelled(
            "grouter_dns_queries_total",
            r#"type="AXFR",rcode="refused""#,
        )
        .await;
    assert_eq!(refused, Some(1.0));

    // Malformed packets: counted by reason; FORMERR when there is a header to answer.
    let _ = udp_raw(server, LON_RESOLVER, b"\x12\x34\x01").await;
    let mut two = query(shop, RecordType::A, None);
    two[5] = 2;
    let formerr = udp_raw(server, LON_RESOLVER, &two).await.expect("FORMERR");
    assert_eq!(formerr.metadata.response_code, ResponseCode::FormErr);
    let mut response = query(shop, RecordType::A, None);
    response[2] |= 0x80;
    assert!(
        udp_raw(server, LON_RESOLVER, &response).await.is_none(),
        "a response is never answered"
    );
    for (reason, want) in [("short", 1.0), ("question_count", 1.0), ("response", 1.0)] {
        let got = lon
            .metric_labelled(
                "grouter_dns_bad_packets_total",
                &format!("reason=\"{reason}\""),
            )
            .await;
        assert_eq!(got, Some(want), "{reason}");
    }
    // And the server still answers.
    assert_eq!(kdig_at(server, &["+short", shop, "A"]).trim(), LON_ADDR);
}

/// A TCP client that sends half a query and then nothing is cut off after the idle timeout
/// (10 s), and the cut is counted; other clients are answered meanwhile.
#[tokio::test]
async fn a_silent_tcp_client_is_cut_off() {
    let host = "shop.apps.example.com";
    let (_ca, _bus, lon, server) = one_dns_site(&[LON_ADDR], host).await;
    let mut silent = tokio::net::TcpStream::connect(server).await.unwrap();
    // The length prefix of a 40-byte query, and 3 bytes of it.
    silent.write_all(&[0, 40, 0x12, 0x34, 0x01]).await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(
        addresses(&tcp(server, LON_RESOLVER, host, RecordType::A).await),
        [LON_ADDR]
    );
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(15 * SEC, silent.read(&mut buf))
        .await
        .expect("closed within 15 s");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "closed, not answered: {read:?}"
    );
    let took = started.elapsed();
    assert!(took >= 9 * SEC, "cut at the timeout, not before: {took:?}");
    let cut = lon
        .metric_labelled("grouter_dns_tcp_cut_total", r#"reason="timeout""#)
        .await;
    assert_eq!(cut, Some(1.0));
}
