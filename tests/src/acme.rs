//! ACME against Debian's `pebble` (a real RFC 8555 CA), three sites of real processes on
//! distinct loopback addresses: pebble resolves names through a GRouter node's own DNS
//! front and validates on the ports every node shares, so the CA finds the sites the way
//! a real one would.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use grouter_tests::{
    AppCerts, LogLines, MeshCa, NatsServer, Node, find_program, install_crypto, wait_until,
};
use serde_json::{Value, json};

const SEC: Duration = Duration::from_secs(1);
const SITES: [(&str, &str); 3] = [("a", "127.0.0.2"), ("b", "127.0.0.3"), ("c", "127.0.0.4")];
const ZONE: &str = "apps.test";

/// A port free on every one of `ips`.
fn shared_port(ips: &[&str]) -> u16 {
    for _ in 0..100 {
        let first = std::net::TcpListener::bind((ips[0], 0)).expect("bind");
        let port = first.local_addr().expect("addr").port();
        let rest: Vec<_> = ips[1..]
            .iter()
            .map(|ip| std::net::TcpListener::bind((*ip, port)))
            .collect();
        if rest.iter().all(Result::is_ok) {
            return port;
        }
    }
    panic!("no port free on all of {ips:?}");
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A running `pebble`.
struct Pebble {
    child: Child,
    log: LogLines,
    dir: tempfile::TempDir,
    api: SocketAddr,
    management: SocketAddr,
}

impl Pebble {
    /// Pebble on loopback, resolving through `dns`, validating HTTP-01 on `http_port` and
    /// TLS-ALPN-01 on `tls_port`; certificates valid `validity_secs`.
    fn start(dns: SocketAddr, http_port: u16, tls_port: u16, validity_secs: u64) -> Pebble {
        let bin = find_program("pebble", "apt-get install -y pebble");
        let dir = tempfile::tempdir().expect("dir");
        // The package ships no certificate for pebble's own API: make one.
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
                .expect("params");
        let cert = params.self_signed(&key).expect("cert");
        std::fs::write(dir.path().join("api.pem"), cert.pem()).expect("write");
        std::fs::write(dir.path().join("api.key"), key.serialize_pem()).expect("write");
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let management: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let config = json!({"pebble": {
            "listenAddress": api.to_string(),
            "managementListenAddress": management.to_string(),
            "certificate": dir.path().join("api.pem"),
            "privateKey": dir.path().join("api.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity_secs,
        }});
        std::fs::write(dir.path().join("pebble.json"), config.to_string()).expect("write");
        let mut child = Command::new(bin)
            .arg("-config")
            .arg(dir.path().join("pebble.json"))
            .arg("-dnsserver")
            .arg(dns.to_string())
            .env("PEBBLE_VA_NOSLEEP", "1")
            // Every order needs its own validation: reused authorizations would hide
            // whether the challenge reached the CA through a node.
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pebble");
        let log = LogLines::follow_both(&mut child);
        log.wait_for(10 * SEC, "pebble listening", |l| {
            l.contains("ACME directory available").then_some(())
        });
        Pebble {
            child,
            log,
            dir,
            api,
            management,
        }
    }

    fn directory(&self) -> String {
        format!("https://{}/dir", self.api)
    }

    fn api_cert(&self) -> PathBuf {
        self.dir.path().join("api.pem")
    }

    /// The roots pebble issues under (a new one at every start).
    async fn roots(&self) -> rustls::RootCertStore {
        let api = std::fs::read(self.api_cert()).expect("read");
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&api).expect("pem"))
            .build()
            .expect("client");
        let mut roots = rustls::RootCertStore::empty();
        let pem = client
            .get(format!("https://{}/roots/0", self.management))
            .send()
            .await
            .expect("pebble roots")
            .text()
            .await
            .expect("body");
        use rustls::pki_types::pem::PemObject as _;
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(c.expect("cert")).expect("root");
        }
        roots
    }

    /// Orders pebble created (its log does not name them: a test orders one name at a time).
    fn orders(&self) -> usize {
        self.log.count_matching(|l| l.contains("Added order"))
    }

    /// Validations pebble attempted for `name`.
    fn validations_of(&self, name: &str) -> usize {
        self.log
            .count_matching(|l| l.contains("Attempting to validate") && l.contains(name))
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Mesh {
    _ca: MeshCa,
    _buses: Vec<NatsServer>,
    buses: Vec<async_nats::Client>,
    _certs: AppCerts,
    nodes: Vec<Node>,
    pebble: Pebble,
}

fn acme_toml(pebble_dir: &str, roots: &std::path::Path, challenges: &str) -> String {
    format!(
        "\n[acme]\ndirectory_url = {pebble_dir:?}\nca_roots = {roots:?}\n\
         contact = [\"mailto:ops@example.com\"]\ndomains = [{ZONE:?}]\nchallenges = [{challenges}]\n"
    )
}

fn dns_toml(site_ip: &str) -> String {
    format!(
        "\n[dns]\nlisten = \"127.0.0.1:0\"\nzones = [{ZONE:?}]\nttl_secs = 1\nsite_addresses = [\"{site_ip}\"]\n"
    )
}

/// Three sites, one node each, on their own loopback address; pebble resolves through
/// a's DNS front.
async fn three_sites(challenges: &str, validity_secs: u64) -> Mesh {
    install_crypto();
    let ips: Vec<&str> = SITES.iter().map(|(_, ip)| *ip).collect();
    let (http_port, https_port) = (shared_port(&ips), shared_port(&ips));
    let ca = MeshCa::new();
    let certs = AppCerts::new();
    certs.issue("default", "default.test");
    let default = (
        certs.dir.path().join("default.pem"),
        certs.dir.path().join("default.key"),
    );
    let cert_dir = tempfile::tempdir().expect("dir");
    // pebble must know a's DNS port before it starts, and the nodes pebble's URL: start
    // pebble against a port picked now, which a's DNS then takes.
    let dns_port = free_port();
    let pebble = Pebble::start(
        format!("127.0.0.1:{dns_port}").parse().expect("addr"),
        http_port,
        https_port,
        validity_secs,
    );
    let acme = acme_toml(&pebble.directory(), &pebble.api_cert(), challenges);
    let mut buses = Vec::new();
    let mut nodes: Vec<Node> = Vec::new();
    for (site, ip) in SITES {
        let bus = NatsServer::start();
        let seeds: Vec<_> = nodes.first().map(Node::mesh_addr).into_iter().collect();
        let dns = dns_toml(ip);
        let dns = if site == "a" {
            dns.replace("127.0.0.1:0", &format!("127.0.0.1:{dns_port}"))
        } else {
            dns
        };
        let node = Node::builder(&format!("{site}1"), site)
            .nats(&bus.url())
            .mesh(&ca, &seeds)
            .https(cert_dir.path(), &default.0, &default.1)
            .listen_on(ip, http_port, https_port)
            .env("GROUTER_ACME_BACKOFF_MS", "1000")
            .extra(&format!("{dns}{acme}"))
            .start()
            .await;
        buses.push(bus);
        nodes.push(node);
    }
    for n in &nodes {
        wait_until(20 * SEC, "every node sees three sites in sync", || async {
            let status = n.json("/v1/status").await;
            (status["sync"] == "in_sync").then_some(())
        })
        .await;
    }
    let mut clients = Vec::new();
    for b in &buses {
        clients.push(b.client().await);
    }
    std::mem::forget(cert_dir);
    Mesh {
        _ca: ca,
        _buses: buses,
        buses: clients,
        _certs: certs,
        nodes,
        pebble,
    }
}

impl Mesh {
    /// Route `name` at b only (DNS then sends the CA to b's address).
    async fn route_at_b(&self, name: &str) {
        self.nodes[1]
            .register_until_routed(&self.buses[1], &registration(name, 8080), name)
            .await;
    }

    /// Wait until every node serves `name` a certificate of pebble's; pebble's roots.
    async fn served_everywhere(&self, name: &str) -> rustls::RootCertStore {
        let roots = self.pebble.roots().await;
        for n in &self.nodes {
            wait_until(
                60 * SEC,
                "every node serves the CA's certificate",
                || async { served(&roots, n.https_addr(), name).await },
            )
            .await;
        }
        roots
    }
}

fn registration(host: &str, port: u16) -> Value {
    json!({"host": "10.0.0.1", "port": port, "uris": [host], "app": format!("guid-{host}")})
}

/// Whether `addr` serves `name` a certificate that chains to `roots` (a real client's
/// check: chain, name, validity), and its DER.
async fn served(roots: &rustls::RootCertStore, addr: SocketAddr, name: &str) -> Option<Vec<u8>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    grouter_tests::served_leaf(config, addr, name).await
}

/// The first name (`<stem>N.apps.test`) whose elected issuer (of the three nodes) `want`
/// accepts, and that issuer: the test chooses where the order is placed.
fn name_where(stem: &str, want: impl Fn(&str) -> bool) -> (String, String) {
    let nodes: Vec<_> = SITES
        .iter()
        .map(|(s, _)| (format!("{s}1"), s.to_string()))
        .collect();
    let candidates: Vec<_> = nodes
        .iter()
        .map(|(n, s)| grouter::acme::plan::Candidate {
            node_id: n,
            site: s,
        })
        .collect();
    for i in 0..100 {
        let name = format!("{stem}{i}.{ZONE}");
        let issuer = grouter::acme::plan::issuer(&name, &candidates).expect("issuer");
        if want(issuer) {
            return (name, issuer.to_string());
        }
    }
    panic!("no name {stem}N has an issuer the test wants");
}

/// A name not ordered by `avoid` (so the CA's lookup, steered to the serving site, lands on
/// another site than the issuer's), and its issuer.
fn name_not_issued_by(stem: &str, avoid: &str) -> (String, String) {
    name_where(stem, |issuer| issuer != avoid)
}

/// A name ordered by `issuer`.
fn name_issued_by(stem: &str, issuer: &str) -> String {
    name_where(stem, |i| i == issuer).0
}

/// A new routed name under the zone gets one certificate from the CA, served by every
/// node; the CA's HTTP-01 lookup lands at the serving site, not the issuer's; pebble's
/// log shows exactly one order. A routed name outside `acme.domains` is never ordered.
#[tokio::test]
async fn one_order_per_name_served_everywhere_validated_through_another_site() {
    let mesh = three_sites("\"http-01\"", 3600).await;
    let (name, issuer) = name_not_issued_by("shop", "b1");
    // Routed at b only: DNS sends the CA to b's address.
    mesh.route_at_b(&name).await;
    let outside = "shop.example.org";
    mesh.nodes[1]
        .register_until_routed(&mesh.buses[1], &registration(outside, 8081), outside)
        .await;
    mesh.served_everywhere(&name).await;
    for n in &mesh.nodes {
        let cert = n.json(&format!("/v1/certs/{name}")).await;
        assert_eq!(cert["source"], "acme", "{cert}");
        assert_eq!(cert["acme"]["orders"], 1, "{cert}");
        assert_eq!(cert["acme"]["issuer"], issuer.as_str(), "{cert}");
    }
    assert_eq!(
        mesh.pebble.orders(),
        1,
        "pebble's log:\n{}",
        mesh.pebble.log.tail(80)
    );
    // The validation reached b (the serving site), which answered from the issuer's keys;
    // the issuer's own site never saw the CA.
    let b_answered = answered(&mesh.nodes[1], "http-01").await.unwrap_or(0.0);
    assert!(
        b_answered >= 1.0,
        "b answered the CA:\n{}",
        mesh.nodes[1].log.tail(30)
    );
    let issuer_node = mesh
        .nodes
        .iter()
        .position(|n| n.log.count("acme: order placed") > 0);
    let issuer_at = SITES.iter().position(|(s, _)| format!("{s}1") == issuer);
    assert_eq!(issuer_node, issuer_at, "the elected node placed the order");
    let at_issuer = answered(&mesh.nodes[issuer_at.expect("issuer")], "http-01").await;
    assert_eq!(
        at_issuer,
        Some(0.0),
        "the CA never looked at the issuer's site"
    );
    // A handshake for a name under the zone that nothing routes orders nothing (no
    // issuance on demand for whatever SNI a client sends).
    let unrouted = format!("nothing-here.{ZONE}");
    let _ = served(
        &mesh.pebble.roots().await,
        mesh.nodes[0].https_addr(),
        &unrouted,
    )
    .await;
    assert_eq!(mesh.pebble.validations_of(&unrouted), 0);
    assert_eq!(mesh.pebble.validations_of(outside), 0);
    assert!(!mesh.pebble.log.tail(10_000).contains(outside));
    let (code, _) = mesh.nodes[0]
        .get(&format!("/v1/certs/{outside}"))
        .await
        .expect("admin");
    assert_eq!(code, 404);
}

/// TLS-ALPN-01 alone: the CA's handshake (ALPN `acme-tls/1`) at the serving site gets the
/// challenge certificate; no HTTP-01 validation is ever attempted.
#[tokio::test]
async fn tls_alpn_01_works_with_http_01_disabled() {
    let mesh = three_sites("\"tls-alpn-01\"", 3600).await;
    let (name, _) = name_not_issued_by("alpn", "b1");
    mesh.route_at_b(&name).await;
    let roots = mesh.served_everywhere(&name).await;
    let log = mesh.pebble.log.tail(10_000);
    assert!(!log.contains("w/ HTTP"), "{log}");
    assert_eq!(mesh.pebble.orders(), 1, "{log}");
    let b = &mesh.nodes[1];
    assert!(
        answered(b, "tls-alpn-01").await.unwrap_or(0.0) >= 1.0,
        "b answered the CA's handshake"
    );
    for n in &mesh.nodes {
        assert_eq!(answered(n, "http-01").await, Some(0.0));
    }
    // An app's client offering h2 and http/1.1 never gets the challenge certificate.
    let app = served(&roots, mesh.nodes[1].https_addr(), &name).await;
    assert!(app.is_some());
}

/// The issuer killed (SIGKILL) right after it placed the order: another node resumes or
/// restarts it, and the certificate is still served everywhere within 90 s, with at most
/// one extra order.
#[tokio::test]
async fn a_killed_issuer_s_order_is_finished_by_another_node() {
    let mut mesh = three_sites("\"http-01\"", 3600).await;
    // Issued by c (a runs pebble's DNS; b serves the route), so the route and the CA's
    // resolver outlive the kill.
    let name = name_issued_by("kill", "c1");
    mesh.route_at_b(&name).await;
    wait_until(30 * SEC, "c placed the order", || async {
        (mesh.pebble.orders() >= 1).then_some(())
    })
    .await;
    mesh.nodes[2].kill();
    let started = std::time::Instant::now();
    let roots = mesh.pebble.roots().await;
    for n in &mesh.nodes[..2] {
        wait_until(
            90 * SEC,
            "the survivors serve the CA's certificate",
            || async { served(&roots, n.https_addr(), &name).await },
        )
        .await;
    }
    assert!(started.elapsed() < 90 * SEC);
    let orders = mesh.pebble.orders();
    let resumed = mesh.nodes[..2]
        .iter()
        .any(|n| n.log.count("acme: order resumed") > 0);
    eprintln!("orders: {orders}, resumed by a survivor: {resumed}");
    if orders == 1 {
        // No second order: the dead issuer's was either finished before the kill, or a
        // survivor resumed it.
        let issued_before = mesh.nodes[2].log.count("acme: certificate issued") > 0;
        assert!(resumed || issued_before, "{}", mesh.pebble.log.tail(60));
    }
    assert!(
        (1..=2).contains(&orders),
        "{orders} orders:\n{}",
        mesh.pebble.log.tail(60)
    );
}

/// A short-lived certificate is renewed once at `renew_at` of its lifetime; every node
/// switches to the new one, and a connection opened before the switch keeps working.
#[tokio::test]
async fn short_lived_certificates_renew_once_and_connections_survive_the_switch() {
    let mesh = three_sites("\"http-01\"", 40).await;
    let (name, _) = name_not_issued_by("renew", "b1");
    mesh.route_at_b(&name).await;
    let roots = mesh.pebble.roots().await;
    let first = wait_until(60 * SEC, "b serves the first certificate", || async {
        served(&roots, mesh.nodes[1].https_addr(), &name).await
    })
    .await;
    // A client connected before the renewal, keeping its connection.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .resolve(&name, mesh.nodes[1].https_addr())
        .pool_max_idle_per_host(1)
        .build()
        .expect("client");
    let url = format!("https://{name}:{}/", mesh.nodes[1].https_addr().port());
    let status = client.get(&url).send().await.expect("request").status();
    assert_eq!(status, 200);
    for n in &mesh.nodes {
        wait_until(
            60 * SEC,
            "every node serves the renewed certificate",
            || async {
                served(&roots, n.https_addr(), &name)
                    .await
                    .filter(|der| *der != first)
            },
        )
        .await;
    }
    // Renewed once: the first order and one renewal, not one per node.
    assert_eq!(mesh.pebble.orders(), 2, "{}", mesh.pebble.log.tail(60));
    let status = client
        .get(&url)
        .send()
        .await
        .expect("the old connection")
        .status();
    assert_eq!(status, 200);
}

/// One node alone with HTTPS and `[acme]` for `directory` (trusting `roots`), `name` routed
/// at it; its bus and its certificates are kept with it.
struct Alone {
    node: Node,
    _bus: NatsServer,
    _certs: AppCerts,
    _cert_dir: tempfile::TempDir,
}

impl Alone {
    async fn start(directory: &str, roots: &std::path::Path, name: &str) -> Alone {
        install_crypto();
        let bus = NatsServer::start();
        let certs = AppCerts::new();
        certs.issue("default", "default.test");
        let cert_dir = tempfile::tempdir().expect("dir");
        let node = Node::builder("a1", "a")
            .nats(&bus.url())
            .https(
                cert_dir.path(),
                &certs.dir.path().join("default.pem"),
                &certs.dir.path().join("default.key"),
            )
            .env("GROUTER_ACME_BACKOFF_MS", "1000")
            .extra(&acme_toml(directory, roots, "\"http-01\""))
            .start()
            .await;
        let client = bus.client().await;
        node.register_until_routed(&client, &registration(name, 8080), name)
            .await;
        Alone {
            node,
            _bus: bus,
            _certs: certs,
            _cert_dir: cert_dir,
        }
    }
}

/// A CA that cannot be reached: the node keeps running, reports the error and the next
/// attempt in `/v1/certs/{host}`, and backs off (attempts grow slower than once a second).
#[tokio::test]
async fn an_unreachable_ca_backs_off_and_reports_without_crashing() {
    let dead = format!("https://127.0.0.1:{}/dir", free_port());
    let name = format!("shop.{ZONE}");
    // Any PEM will do as the roots of a CA that never answers.
    let roots = MeshCa::new();
    let mut alone = Alone::start(&dead, &roots.dir().join("ca.pem"), &name).await;
    let node = &mut alone.node;
    let status = wait_until(30 * SEC, "the failure is reported", || async {
        let (_, body) = node.get(&format!("/v1/certs/{name}")).await.ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (v["acme"]["failures"].as_u64()? >= 2).then_some(v)
    })
    .await;
    assert_eq!(status["served"], false, "{status}");
    assert!(
        status["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("127.0.0.1")),
        "{status}"
    );
    assert!(status["next_attempt"].is_string(), "{status}");
    // Back-off: 1 s, 2 s, 4 s, … so at most 4 failures in the next 6 s.
    let before = status["acme"]["failures"].as_u64().expect("failures");
    let later = wait_until(10 * SEC, "the next attempts", || async {
        let v = node.json(&format!("/v1/certs/{name}")).await;
        let f = v["acme"]["failures"].as_u64()?;
        (f > before).then_some(f)
    })
    .await;
    assert!(later <= before + 3, "{before} → {later}");
    assert!(node.is_running());
    // An unknown token is 404 from the node itself, never forwarded to a GoRouter.
    let resp = reqwest::Client::new()
        .get(format!(
            "http://{}/.well-known/acme-challenge/unknown-token",
            node.http_addr()
        ))
        .header("host", &name)
        .send()
        .await
        .expect("challenge request");
    assert_eq!(resp.status(), 404);
    assert!(resp.headers().get("x-stub-site").is_none(), "not forwarded");
    let resp = reqwest::Client::new()
        .get(format!("http://{}/other", node.http_addr()))
        .header("host", &name)
        .send()
        .await
        .expect("request");
    assert!(
        resp.headers().get("x-stub-site").is_some(),
        "other paths are routed"
    );
    assert!(
        node.metric("grouter_acme_failures_total")
            .await
            .unwrap_or(0.0)
            >= 2.0
    );
}

/// What `node` counted of the validations of `kind` it answered.
async fn answered(node: &Node, kind: &str) -> Option<f64> {
    node.metric_labelled(
        "grouter_acme_challenges_answered_total",
        &format!("type=\"{kind}\""),
    )
    .await
}

/// A fake DNS (`pebble-challtestsrv`) answering every A query with `ip`, for CA lookups
/// when the nodes run no DNS front.
struct FakeDns {
    child: Child,
    addr: SocketAddr,
}

impl FakeDns {
    fn start(ip: &str) -> FakeDns {
        let bin = find_program("pebble-challtestsrv", "apt-get install -y pebble");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let management = format!("127.0.0.1:{}", free_port());
        let mut child = Command::new(bin)
            .args(["-defaultIPv4", ip, "-defaultIPv6", ""])
            .args(["-dns01", &addr.to_string(), "-management", &management])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pebble-challtestsrv");
        let log = LogLines::follow_both(&mut child);
        log.wait_for(10 * SEC, "the fake DNS", |l| {
            (l.contains("DNS") && l.contains(&addr.to_string())).then_some(())
        });
        FakeDns { child, addr }
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Exactly one order across a partition: site c cut off from a and b, a name routed at a
/// and at c whose elected issuer (of all three) is c. c, alone, is a minority and orders
/// nothing; a and b elect among themselves and order once; after the heal c takes the
/// certificate from the mesh instead of ordering.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn across_a_partition_only_the_majority_orders_and_only_once() {
    use grouter::health::SyncState;
    use grouter_tests::inproc::{InProcNode, Net, registration};

    let ips: Vec<&str> = SITES.iter().map(|(_, ip)| *ip).collect();
    let http_port = shared_port(&ips);
    // The CA finds the name at a's address.
    let dns = FakeDns::start(SITES[0].1);
    let pebble = Pebble::start(dns.addr, http_port, shared_port(&ips), 3600);
    let acme = acme_toml(&pebble.directory(), &pebble.api_cert(), "\"http-01\"");
    let ca = MeshCa::new();
    let net = Net::new();
    let buses = [
        NatsServer::start(),
        NatsServer::start(),
        NatsServer::start(),
    ];
    let mut nodes: Vec<InProcNode> = Vec::new();
    for (i, (site, ip)) in SITES.iter().enumerate() {
        let seeds: Vec<_> = nodes
            .first()
            .map(InProcNode::mesh_addr)
            .into_iter()
            .collect();
        let node = InProcNode::builder(&format!("{site}1"), site)
            .nats(&buses[i].url())
            .mesh(&ca, &seeds)
            .net(&net)
            .http_listen(format!("{ip}:{http_port}").parse().expect("addr"))
            .extra(&acme)
            .start()
            .await;
        nodes.push(node);
    }
    for n in &nodes {
        wait_until(20 * SEC, "in sync", || async {
            (n.state().health.sync() == SyncState::InSync).then_some(())
        })
        .await;
    }
    let name = name_issued_by("split", "c1");
    net.cut("c");
    for (n, want) in [
        (&nodes[2], SyncState::Lost),
        (&nodes[0], SyncState::Degraded),
    ] {
        wait_until(20 * SEC, "the cut is seen", || async {
            (n.state().health.sync() == want).then_some(())
        })
        .await;
    }
    for i in [0, 2] {
        let bus = buses[i].client().await;
        let msg = registration("10.0.0.1", 8080, &name, "app");
        nodes[i].register_until_learned(&bus, &msg, &name).await;
    }
    let key = format!("cert/{name}");
    wait_until(60 * SEC, "a and b hold the certificate", || async {
        (nodes[0].state().table.config_winner(&key).is_some()
            && nodes[1].state().table.config_winner(&key).is_some())
        .then_some(())
    })
    .await;
    assert!(
        nodes[2].state().table.config_winner(&key).is_none(),
        "c is cut off: it cannot have it"
    );
    net.heal("c");
    wait_until(
        30 * SEC,
        "c takes the certificate from the mesh",
        || async { nodes[2].state().table.config_winner(&key).map(|_| ()) },
    )
    .await;
    // c had the name routed and due for the whole cut; nothing but the majority's one order.
    assert_eq!(pebble.orders(), 1, "{}", pebble.log.tail(60));
    let parsed = |n: &InProcNode| {
        let (v, _) = n.state().table.config_winner(&key)?;
        let v: Value = serde_json::from_slice(v.value.as_deref()?).ok()?;
        v["source"].as_str().map(str::to_string)
    };
    for n in &nodes {
        assert_eq!(parsed(n).as_deref(), Some("acme"), "{}", n.describe());
    }
}

/// How a hostile CA misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hostile {
    /// The directory is not JSON.
    GarbageDirectory,
    /// The directory is 2 MiB.
    HugeDirectory,
    /// The certificate names another host.
    WrongNames,
    /// The certificate is for another key than the CSR's.
    WrongKey,
    /// Every order is refused: the CA no longer knows the account.
    ForgottenAccount,
}

/// A CA that speaks just enough ACME to reach the step where it misbehaves (it checks no
/// signature: what is under test is what the node does with the answers).
struct HostileCa {
    base: String,
    roots: tempfile::TempDir,
    requests: Arc<parking_lot::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HostileCa {
    async fn start(mode: Hostile, name: &str) -> HostileCa {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let roots = tempfile::tempdir().expect("dir");
        std::fs::write(roots.path().join("ca.pem"), cert.pem()).expect("write");
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("https://{}", listener.local_addr().expect("addr"));
        // What it issues: for the wrong name, or for the right one under a key of its own.
        let issued_for = if mode == Hostile::WrongNames {
            "evil.example.com"
        } else {
            name
        };
        let leaf_key = rcgen::KeyPair::generate().expect("key");
        let leaf = rcgen::CertificateParams::new(vec![issued_for.to_string()])
            .expect("params")
            .self_signed(&leaf_key)
            .expect("leaf")
            .pem();
        let requests = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (log, b) = (requests.clone(), base.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    break;
                };
                let (acceptor, log, b, leaf) =
                    (acceptor.clone(), log.clone(), b.clone(), leaf.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let answer = hostile_answer(
                                mode,
                                &b,
                                &leaf,
                                req.method().as_str(),
                                req.uri().path(),
                            );
                            log.lock()
                                .push(format!("{} {}", req.method(), req.uri().path()));
                            async move { Ok::<_, std::convert::Infallible>(answer) }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        HostileCa {
            base,
            roots,
            requests,
            task,
        }
    }

    fn count(&self, request: &str) -> usize {
        self.requests
            .lock()
            .iter()
            .filter(|r| *r == request)
            .count()
    }
}

impl Drop for HostileCa {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn hostile_answer(
    mode: Hostile,
    base: &str,
    leaf: &str,
    method: &str,
    path: &str,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let order = |status: &str| {
        json!({"status": status, "authorizations": [], "finalize": format!("{base}/finalize"),
               "certificate": format!("{base}/cert")})
        .to_string()
    };
    let (status, location, body) = match (method, path) {
        ("GET", "/dir") => match mode {
            Hostile::GarbageDirectory => (200, None, "{\"newNonce\": 7,".to_string()),
            Hostile::HugeDirectory => (
                200,
                None,
                format!("{{\"pad\":\"{}\"}}", "x".repeat(2 << 20)),
            ),
            _ => (
                200,
                None,
                json!({"newNonce": format!("{base}/nonce"), "newAccount": format!("{base}/acct"),
                       "newOrder": format!("{base}/order")})
                .to_string(),
            ),
        },
        (_, "/nonce") => (200, None, String::new()),
        ("POST", "/acct") => (
            201,
            Some(format!("{base}/acct/1")),
            "{\"status\":\"valid\"}".into(),
        ),
        ("POST", "/order") if mode == Hostile::ForgottenAccount => (
            400,
            None,
            json!({"type": "urn:ietf:params:acme:error:accountDoesNotExist",
                   "detail": "no such account", "status": 400})
            .to_string(),
        ),
        ("POST", "/order") => (201, Some(format!("{base}/order/1")), order("ready")),
        ("POST", "/finalize" | "/order/1") => (200, None, order("valid")),
        ("POST", "/cert") => (200, None, leaf.to_string()),
        _ => (404, None, String::new()),
    };
    let mut resp = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    let h = resp.headers_mut();
    h.insert("replay-nonce", http::HeaderValue::from_static("bm9uY2U"));
    if let Some(l) = location.and_then(|l| http::HeaderValue::from_str(&l).ok()) {
        h.insert("location", l);
    }
    resp
}

/// A hostile CA — a directory that is not JSON or is 2 MiB, a certificate for other names
/// or another key, an account it no longer knows — is refused and reported in status; the
/// node keeps running and serves nothing it issued; a forgotten account is registered anew.
#[tokio::test]
async fn a_hostile_ca_is_refused_reported_and_never_served() {
    let name = format!("shop.{ZONE}");
    for (mode, reason) in [
        (Hostile::GarbageDirectory, "JSON"),
        (Hostile::HugeDirectory, "larger than"),
        (Hostile::WrongNames, "refused"),
        (Hostile::WrongKey, "refused"),
        (Hostile::ForgottenAccount, "accountDoesNotExist"),
    ] {
        let ca = HostileCa::start(mode, &name).await;
        let directory = format!("{}/dir", ca.base);
        let mut alone = Alone::start(&directory, &ca.roots.path().join("ca.pem"), &name).await;
        let node = &mut alone.node;
        let status = wait_until(30 * SEC, &format!("{mode:?} reported"), || async {
            let (_, body) = node.get(&format!("/v1/certs/{name}")).await.ok()?;
            let v: Value = serde_json::from_str(&body).ok()?;
            v["last_error"].as_str()?.contains(reason).then_some(v)
        })
        .await;
        assert_eq!(status["served"], false, "{mode:?}: {status}");
        assert!(
            !status.to_string().contains("PRIVATE KEY"),
            "{mode:?}: no key in status"
        );
        assert!(node.is_running(), "{mode:?}");
        if mode == Hostile::ForgottenAccount {
            wait_until(30 * SEC, "the account is registered anew", || async {
                (ca.count("POST /acct") >= 2).then_some(())
            })
            .await;
        }
        let (code, _) = node.get("/healthz").await.expect("healthz");
        assert_eq!(code, 200, "{mode:?}");
    }
}
