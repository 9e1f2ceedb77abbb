//! The DNS front behind a real caching resolver: Debian's `unbound` with its `subnetcache`
//! module (RFC 7871), a stub zone for the app zone only pointing at GRouter's listener.
//! Everything runs in a loopback-only network namespace ([`grouter_tests::netns`]): unbound
//! has no root hints that lead anywhere, refuses every name outside the app zone, and could
//! not leave the machine if it tried.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use grouter_tests::inproc::registration;
use grouter_tests::{LogLines, MeshCa, NatsServer, Node, find_program, netns, wait_until};
use hickory_proto::rr::RecordType;

use crate::dns::{LON_ADDR, NYC_ADDR, addresses, dns_addr, kdig, udp};

const SEC: Duration = Duration::from_secs(1);
/// How long a new two-site mesh may take to replicate routes and health before a test's
/// first DNS check: a deadline for set-up on a loaded machine, not a measured latency.
const SETTLE: Duration = Duration::from_secs(30);
const ZONE: &str = "apps.example.com";
/// Where unbound listens inside the namespace (port 53 is free there: nothing else runs).
const RESOLVER: &str = "127.0.0.1";
/// An app, and one whose host has an empty non-terminal above it.
const SHOP: &str = "shop.apps.example.com";
const DEEP: &str = "a.b.apps.example.com";

/// `[dns]` of a site steering 10.1/16 to lon and 10.2/16 to nyc.
fn dns_toml(site_addr: &str) -> String {
    format!(
        "\n[dns]\nlisten = \"127.0.0.1:0\"\nzones = [\"{ZONE}\"]\nttl_secs = 60\n\
         site_addresses = [\"{site_addr}\"]\n\
         client_networks = {{ \"10.1.0.0/16\" = \"lon\", \"10.2.0.0/16\" = \"nyc\" }}\n"
    )
}

/// A running `unbound`, killed on drop.
struct Unbound {
    child: Child,
    log: LogLines,
    _dir: tempfile::TempDir,
}

impl Unbound {
    /// unbound on 127.0.0.1:53 resolving only `ZONE`, from `stub` (with ECS), caching per
    /// subnet. `always_forward` is `client-subnet-always-forward`: with `yes` unbound skips
    /// its regular cache for queries that carry ECS; with `no` (the default) an answer
    /// without ECS lands there and serves every client.
    fn start(stub: SocketAddr, always_forward: bool) -> Unbound {
        let bin = find_program("unbound", "apt-get install -y unbound");
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display();
        // Root hints that lead nowhere: one root server on a loopback address where nothing
        // listens. (Every name outside the zone is refused before it gets that far.)
        std::fs::write(
            dir.path().join("root.hints"),
            ".                3600000  NS  a.root.invalid.\n\
             a.root.invalid.  3600000  A   127.0.0.254\n",
        )
        .expect("write root hints");
        let conf = format!(
            r#"server:
    interface: {RESOLVER}
    port: 53
    do-ip6: no
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    username: ""
    chroot: ""
    directory: "{d}"
    pidfile: "{d}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    num-threads: 1
    module-config: "subnetcache iterator"
    root-hints: "{d}/root.hints"
    local-zone: "." refuse
    local-zone: "{ZONE}." transparent
    send-client-subnet: {stub_ip}
    client-subnet-always-forward: {always}
    max-client-subnet-ipv4: 24
    qname-minimisation: yes
    qname-minimisation-strict: yes
remote-control:
    control-enable: no
stub-zone:
    name: "{ZONE}"
    stub-addr: {stub_ip}@{stub_port}
"#,
            stub_ip = stub.ip(),
            stub_port = stub.port(),
            always = if always_forward { "yes" } else { "no" },
        );
        let path = dir.path().join("unbound.conf");
        std::fs::write(&path, conf).expect("write unbound.conf");
        check_config(&path);
        let mut child = Command::new(bin)
            .arg("-d")
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn unbound");
        let log = LogLines::follow(&mut child);
        log.wait_for(10 * SEC, "unbound to start", |l| {
            l.contains("start of service").then_some(())
        });
        Unbound {
            child,
            log,
            _dir: dir,
        }
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn check_config(path: &Path) {
    let checker = find_program("unbound-checkconf", "apt-get install -y unbound");
    let out = Command::new(checker)
        .arg(path)
        .output()
        .expect("run unbound-checkconf");
    assert!(
        out.status.success(),
        "unbound-checkconf: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What `kdig` says when asking unbound for `name` A as a client of `subnet`: the addresses
/// and the ECS option unbound returned (`address/source/scope`).
fn ask_resolver(name: &str, subnet: &str) -> (Vec<String>, Option<String>) {
    let out = Command::new(kdig())
        .arg(format!("@{RESOLVER}"))
        .args(["+time=3", "+retry=0", "+noall", "+answer", "+opt"])
        .arg(format!("+subnet={subnet}"))
        .args([name, "A"])
        .output()
        .expect("run kdig");
    let text = String::from_utf8_lossy(&out.stdout);
    let addrs = text
        .lines()
        .filter(|l| !l.starts_with(';'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 5 && f[3] == "A").then(|| f[4].to_string())
        })
        .collect();
    // kdig: ";; CLIENT-SUBNET: 10.1.2.3/32/16"
    let ecs = text
        .lines()
        .find_map(|l| l.split("CLIENT-SUBNET:").nth(1))
        .map(|s| s.trim().to_string());
    (addrs, ecs)
}

/// The answers GRouter steered by client network so far (each is a query unbound sent).
async fn steered(node: &Node) -> f64 {
    node.metric_labelled("grouter_dns_steering_total", r#"reason="client_network""#)
        .await
        .unwrap_or_default()
}

/// Two clients in different `client_networks` subnets asking the same unbound get their own
/// sites (no collapse to whichever asked first), because GRouter echoes ECS with the scope
/// the answer depends on (the matched /16); a third client in the first one's /16 is served
/// from unbound's cache, without a query to GRouter. Names above routes (empty
/// non-terminals) resolve through unbound's strict QNAME minimisation.
#[tokio::test]
async fn ecs_through_unbound_keeps_each_subnet_on_its_site_and_caches_per_scope() {
    if !netns::isolate(
        "dns_resolver::ecs_through_unbound_keeps_each_subnet_on_its_site_and_caches_per_scope",
    ) {
        return;
    }
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
    let server = dns_addr(&lon);
    for host in [SHOP, DEEP] {
        for (node, bus) in [(&lon, &lon_bus), (&nyc, &nyc_bus)] {
            let bus = bus.client().await;
            node.register_until_routed(&bus, &registration(host, 8080, host, "app"), host)
                .await;
        }
    }
    // Asked directly, lon's DNS steers 10.2/16 to nyc once nyc's routes have replicated.
    wait_until(SETTLE, "lon to steer 10.2/16 to nyc", || async {
        let m = udp(
            server,
            "127.0.0.1",
            SHOP,
            RecordType::A,
            Some("10.2.0.0/24"),
        )
        .await;
        (addresses(&m) == [NYC_ADDR]).then_some(())
    })
    .await;

    for always_forward in [false, true] {
        through_unbound(&lon, server, always_forward).await;
    }
}

/// The per-subnet checks against a fresh unbound in front of `lon`'s DNS at `server`.
async fn through_unbound(lon: &Node, server: SocketAddr, always_forward: bool) {
    let unbound = Unbound::start(server, always_forward);
    let how = format!("client-subnet-always-forward: {always_forward}");
    let before = steered(lon).await;
    // First a lon client, then a nyc client: each gets its own site.
    let (lon_answer, lon_ecs) = ask_resolver(SHOP, "10.1.2.3/32");
    assert_eq!(
        lon_answer,
        [LON_ADDR],
        "{how}: lon's client: {}",
        unbound.log.tail(20)
    );
    let (nyc_answer, nyc_ecs) = ask_resolver(SHOP, "10.2.2.3/32");
    assert_eq!(
        nyc_answer,
        [NYC_ADDR],
        "{how}: nyc's client, after lon's: no collapse"
    );
    // unbound tells its clients the scope GRouter gave it: the matched /16.
    assert_eq!(lon_ecs.as_deref(), Some("10.1.2.3/32/16"), "{how}");
    assert_eq!(nyc_ecs.as_deref(), Some("10.2.2.3/32/16"), "{how}");
    let asked = steered(lon).await;
    assert_eq!(
        asked - before,
        2.0,
        "{how}: one query to GRouter per subnet"
    );

    // Clients elsewhere in the same /16s: from unbound's cache, GRouter is not asked.
    assert_eq!(ask_resolver(SHOP, "10.1.200.9/32").0, [LON_ADDR]);
    assert_eq!(ask_resolver(SHOP, "10.2.77.1/32").0, [NYC_ADDR]);
    assert_eq!(ask_resolver(SHOP, "10.1.2.3/32").0, [LON_ADDR]);
    assert_eq!(
        steered(lon).await,
        asked,
        "{how}: same scope: served from the cache"
    );
    // A client of another lon-mapped network would share nothing: 10.3/16 is unmapped, so
    // GRouter is asked again (and answers with the nearest site, lon).
    let proximity_before = lon
        .metric_labelled("grouter_dns_steering_total", r#"reason="proximity""#)
        .await
        .unwrap_or_default();
    assert_eq!(ask_resolver(SHOP, "10.3.0.1/32").0, [LON_ADDR]);
    let proximity_after = lon
        .metric_labelled("grouter_dns_steering_total", r#"reason="proximity""#)
        .await
        .unwrap_or_default();
    assert_eq!(
        proximity_after - proximity_before,
        1.0,
        "{how}: another scope: asked"
    );

    // The empty non-terminal above a route: NODATA. Strict QNAME minimisation asks for
    // `b.apps.example.com` first on the way to the route below it, and stops there on an
    // NXDOMAIN (RFC 8020: nothing below exists), which would lose the route.
    assert!(
        ask_resolver("b.apps.example.com", "10.1.2.3/32")
            .0
            .is_empty()
    );
    assert_eq!(ask_resolver(DEEP, "10.1.2.3/32").0, [LON_ADDR]);
    assert_eq!(ask_resolver(DEEP, "10.2.2.3/32").0, [NYC_ADDR]);
    // Outside the app zone unbound refuses: it never goes looking elsewhere.
    let out = Command::new(kdig())
        .arg(format!("@{RESOLVER}"))
        .args(["+time=3", "+retry=0", "www.example.org", "A"])
        .output()
        .expect("run kdig");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("REFUSED"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
