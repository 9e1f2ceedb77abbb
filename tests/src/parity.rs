//! gorouter parity end to end (CONTRACT.md "gorouter parity", issue 12): real nodes, real
//! TLS, `curl` and `openssl s_client`, and the GoRouter stand-in, which echoes the request
//! headers it received and can close a fresh connection once (`/eof-once/KEY`).
//!
//! Each test names the behaviour a user would notice: an idempotent request whose GoRouter
//! closed a fresh connection is answered on every forwarding path; a forged
//! `X-Forwarded-Client-Cert` never reaches the app, a client certificate does, as gorouter
//! writes it; `X-Forwarded-Proto` is kept only from a trusted proxy; `100 Continue` over
//! HTTP/2; hop-by-hop response headers stripped; gorouter's error answers; trace ids.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use grouter_tests::{NatsServer, Node, TwoSites, wait_until};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

const SEC: Duration = Duration::from_secs(1);
const HOST: &str = "app.example.com";

/// A program the test runs, found on PATH, or a failure naming how to install it.
fn program(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found on PATH: install it with `apt-get install -y {package}` (deploy/test.sh does this)")
        })
}

/// Register `HOST` on `bus` until `node` routes it.
async fn route(node: &Node, bus: &NatsServer) {
    let client = bus.client().await;
    let msg = json!({"host": "10.0.0.1", "port": 8080, "uris": [HOST], "app": "app-guid"});
    node.register_until_routed(&client, &msg, HOST).await;
}

/// A response read off a raw connection.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The stand-in's JSON echo.
    fn echo(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{e}: not the stand-in's JSON: {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Send `request` (which asks to close) and read the response up to the close.
async fn raw(addr: SocketAddr, request: &str) -> Raw {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(10 * SEC, tcp.read_to_end(&mut buf))
        .await
        .expect("response within 10 s")
        .expect("read");
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(&buf) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("{other:?}: {}", String::from_utf8_lossy(&buf)),
    };
    Raw {
        status: resp.code.unwrap_or(0),
        headers: resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: buf[len..].to_vec(),
    }
}

fn get_close(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{extra}Connection: close\r\n\r\n")
}

/// An HTTP/2 (prior knowledge) GET with extra headers; status, headers and body.
async fn h2_get(
    node: &Node,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    // The host in the URL, so that `:authority` names it (a Host header beside a different
    // `:authority` is refused).
    let addr = node.http_addr();
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve(HOST, addr)
        .build()
        .expect("client");
    let mut req = client
        .get(format!("http://{HOST}:{}{path}", addr.port()))
        .timeout(10 * SEC);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = req.send().await.expect("response");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let (status, h) = (resp.status().as_u16(), resp.headers().clone());
    (status, h, resp.text().await.expect("body"))
}

#[tokio::test]
async fn an_idempotent_request_survives_a_gorouter_closing_a_fresh_connection_on_every_path() {
    let bus = NatsServer::start();
    let node = Node::builder("lon-1", "lon").nats(&bus.url()).start().await;
    route(&node, &bus).await;
    let stub = node.stub.as_ref().expect("the node's stand-in");
    let addr = node.http_addr();

    // HTTP/1.1 fast path: the GoRouter closes the fresh connection the GET went on; the
    // node sends it again (proxy_round_tripper_test.go, "when the backend fails with an
    // empty response error (io.EOF)": "GET, body is empty: attempts retry").
    let r = raw(addr, &get_close("/eof-once/fast", "")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.echo()["path"], "/eof-once/fast");
    // The general path (HTTP/1.0 is handed to hyper).
    let r = raw(
        addr,
        &format!("GET /eof-once/general HTTP/1.0\r\nHost: {HOST}\r\n\r\n"),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    // The HTTP/2 byte path.
    let (status, _, body) = h2_get(&node, "/eof-once/h2", &[]).await;
    assert_eq!(status, 200, "{body}");
    // The fast path's answered connection is parked for the next client connection to take;
    // a request in flight holds it, so that the POSTs below meet fresh connections.
    let requests = stub.requests();
    let mut holder = tokio::net::TcpStream::connect(addr).await.expect("connect");
    holder
        .write_all(format!("GET /delay/30000 HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    wait_until(10 * SEC, "the held request at the stand-in", || async {
        (stub.requests() > requests).then_some(())
    })
    .await;
    // A POST is not sent twice ("POST, body is empty: does not retry"): gorouter's 502.
    let r = raw(
        addr,
        &format!("POST /eof-once/post HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"),
    )
    .await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.header("x-cf-routererror"), Some("endpoint_failure (EOF)"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "502 Bad Gateway: Registered endpoint failed to handle the request.\n"
    );
    // … unless it carries an idempotency key ("POST, body is empty, Idempotency-Key header:
    // attempts retry").
    let r = raw(
        addr,
        &format!("POST /eof-once/keyed HTTP/1.1\r\nHost: {HOST}\r\nIdempotency-Key: k1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        stub.eof_count(),
        5,
        "each path met a closed connection once"
    );
    drop(holder);
}

#[tokio::test]
async fn an_idempotent_request_survives_a_remote_gorouter_closing_a_fresh_connection() {
    let TwoSites {
        ca: _ca,
        lon_bus: _lon_bus,
        nyc_bus,
        lon,
        nyc,
    } = TwoSites::start().await;
    route(&nyc, &nyc_bus).await;
    wait_until(15 * SEC, "lon to know nyc's route", || async {
        lon.route(HOST, "").await.map(|_| ())
    })
    .await;
    // lon proxies to nyc over the mesh; nyc's GoRouter closes the fresh connection once.
    let r = raw(lon.http_addr(), &get_close("/eof-once/remote", "")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-grouter-site"), Some("nyc"));
    assert_eq!(r.echo()["path"], "/eof-once/remote");
    assert_eq!(nyc.stub.as_ref().expect("stand-in").eof_count(), 1);
    let (status, h, _) = h2_get(&lon, "/eof-once/remote-h2", &[]).await;
    assert_eq!(
        (status, h["x-grouter-site"].to_str().unwrap()),
        (200, "nyc")
    );
}

#[tokio::test]
async fn x_forwarded_proto_is_kept_only_from_a_trusted_proxy() {
    let bus = NatsServer::start();
    // The test connects from 127.0.0.1: one node trusts it as its load balancer, the other
    // does not.
    let trusting = Node::builder("lon-1", "lon")
        .nats(&bus.url())
        .proxy_option("trusted_proxies = [\"127.0.0.0/8\"]")
        .start()
        .await;
    let wary = Node::builder("lon-2", "lon").nats(&bus.url()).start().await;
    route(&trusting, &bus).await;
    route(&wary, &bus).await;
    let lb = "X-Forwarded-Proto: https\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-For: 198.51.100.7, 192.0.2.1\r\nProxy-Authorization: Basic c2VjcmV0\r\n";
    for (node, proto) in [(&trusting, "https"), (&wary, "http")] {
        // The fast path, then HTTP/2.
        let echo = raw(node.http_addr(), &get_close("/xfp", lb)).await.echo();
        let h = &echo["headers"];
        assert_eq!(h["x-forwarded-proto"], proto, "{echo}");
        assert_eq!(
            h["x-forwarded-for"], "203.0.113.9, 198.51.100.7, 192.0.2.1, 127.0.0.1",
            "every line folded, then the client: {echo}"
        );
        assert!(h.get("proxy-authorization").is_none(), "hop-by-hop: {echo}");
        let (_, _, body) = h2_get(
            node,
            "/xfp",
            &[
                ("x-forwarded-proto", "https"),
                ("x-forwarded-for", "203.0.113.9"),
            ],
        )
        .await;
        let echo: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(echo["headers"]["x-forwarded-proto"], proto, "{echo}");
        assert_eq!(echo["headers"]["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    }
}

/// A CA for client certificates and a server certificate, in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("dir");
        let write =
            |name: &str, text: String| std::fs::write(dir.path().join(name), text).expect("write");
        // The server's own (self-signed) default certificate; clients here do not check it.
        let server = rcgen::generate_simple_self_signed(vec!["default.example.com".into()])
            .expect("server cert");
        write("server.pem", server.cert.pem());
        write("server.key", server.signing_key.serialize_pem());
        std::fs::create_dir(dir.path().join("certs")).expect("cert dir");
        // The client CA and one client.
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "client CA");
        let ca_cert = ca.self_signed(&ca_key).expect("ca");
        write("client-ca.pem", ca_cert.pem());
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["client.example.com".into()]).expect("params");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).expect("client cert");
        write("client.pem", cert.pem());
        write("client.key", key.serialize_pem());
        // A client whose certificate no configured CA vouches for.
        let stranger = rcgen::generate_simple_self_signed(vec!["stranger.example.com".into()])
            .expect("stranger");
        write("stranger.pem", stranger.cert.pem());
        write("stranger.key", stranger.signing_key.serialize_pem());
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// What gorouter puts in `X-Forwarded-Client-Cert` for `name`'s certificate: its PEM
    /// without the BEGIN/END lines and newlines (handlers/clientcert.go, `sanitize`).
    fn xfcc(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name))
            .expect("pem")
            .replace("-----BEGIN CERTIFICATE-----", "")
            .replace("-----END CERTIFICATE-----", "")
            .replace('\n', "")
    }

    fn node(
        &self,
        node_id: &str,
        bus: &NatsServer,
        client_cert: &str,
    ) -> grouter_tests::NodeBuilder {
        Node::builder(node_id, "lon")
            .nats(&bus.url())
            .https(
                &self.path("certs"),
                &self.path("server.pem"),
                &self.path("server.key"),
            )
            .tls_option(&format!(
                "client_cert = \"{client_cert}\"\nclient_ca = {:?}",
                self.path("client-ca.pem")
            ))
    }
}

/// `curl` over HTTPS to `node`, with `args`; the stand-in's JSON echo, or `None` when curl
/// failed (a refused handshake). Run without blocking: the stand-in shares the runtime.
async fn curl(node: &Node, path: &str, args: &[&str]) -> Option<Value> {
    let out = Command::new(program("curl", "curl"))
        .args([
            "-sk",
            "--max-time",
            "10",
            "-H",
            &format!("Host: {HOST}"),
            "-H",
            "X-Forwarded-Client-Cert: forged",
        ])
        .args(args)
        .arg(format!(
            "https://127.0.0.1:{}{path}",
            node.https_addr().port()
        ))
        .output()
        .await
        .expect("run curl");
    out.status.success().then(|| {
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    })
}

#[tokio::test]
async fn a_forged_client_certificate_header_is_replaced_by_the_certificate_the_client_showed() {
    let pki = Pki::new();
    let bus = NatsServer::start();
    let node = pki.node("lon-1", &bus, "request").start().await;
    route(&node, &bus).await;
    let cert = pki.path("client.pem");
    let key = pki.path("client.key");
    let with_cert = [
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    let expected = pki.xfcc("client.pem");
    for version in ["--http1.1", "--http2"] {
        // clientcert_test.go, "Client Cert Result", SANITIZE_SET: a TLS client without a
        // certificate gets the forged header stripped …
        let echo = curl(&node, "/xfcc", &[version])
            .await
            .expect("served without a certificate");
        assert!(
            echo["headers"].get("x-forwarded-client-cert").is_none(),
            "{version}: {echo}"
        );
        // … and one with a certificate gets it replaced by its certificate (certSanitizeMTLS).
        let mut args = vec![version];
        args.extend(with_cert);
        let echo = curl(&node, "/xfcc", &args)
            .await
            .expect("served with a certificate");
        assert_eq!(
            echo["headers"]["x-forwarded-client-cert"], expected,
            "{version}: {echo}"
        );
    }
    // Plain HTTP: stripped ("when there is no tls connection").
    let echo = raw(
        node.http_addr(),
        &get_close("/xfcc", "X-Forwarded-Client-Cert: forged\r\n"),
    )
    .await
    .echo();
    assert!(
        echo["headers"].get("x-forwarded-client-cert").is_none(),
        "{echo}"
    );
    // openssl s_client with the certificate, a hand-written request.
    let request = format!(
        "GET /xfcc HTTP/1.1\r\nHost: {HOST}\r\nX-Forwarded-Client-Cert: forged\r\nConnection: close\r\n\r\n"
    );
    let mut child = Command::new(program("openssl", "openssl"))
        .args(["s_client", "-quiet", "-ign_eof", "-connect"])
        .arg(format!("127.0.0.1:{}", node.https_addr().port()))
        .args([
            "-cert",
            cert.to_str().unwrap(),
            "-key",
            key.to_str().unwrap(),
            "-servername",
            HOST,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run openssl");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(request.as_bytes()).await.expect("write");
    drop(stdin);
    let out = tokio::time::timeout(10 * SEC, child.wait_with_output())
        .await
        .expect("openssl within 10 s")
        .expect("openssl output");
    let text = String::from_utf8_lossy(&out.stdout);
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no response: {text}"));
    let echo: Value = serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(echo["headers"]["x-forwarded-client-cert"], expected);
    // A certificate no configured CA vouches for is refused at the handshake.
    let stranger = (pki.path("stranger.pem"), pki.path("stranger.key"));
    assert!(
        curl(
            &node,
            "/xfcc",
            &[
                "--cert",
                stranger.0.to_str().unwrap(),
                "--key",
                stranger.1.to_str().unwrap()
            ]
        )
        .await
        .is_none()
    );
}

#[tokio::test]
async fn client_certificate_modes_require_and_forward() {
    let pki = Pki::new();
    let bus = NatsServer::start();
    let strict = pki.node("lon-1", &bus, "require").start().await;
    let forwarding = pki
        .node("lon-2", &bus, "request")
        .proxy_option("forwarded_client_cert = \"forward\"")
        .start()
        .await;
    route(&strict, &bus).await;
    route(&forwarding, &bus).await;
    let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
    let with_cert = [
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    // `require`: no certificate, no connection.
    assert!(
        curl(&strict, "/", &[]).await.is_none(),
        "a client without a certificate is refused"
    );
    let echo = curl(&strict, "/", &with_cert).await.expect("served");
    assert_eq!(
        echo["headers"]["x-forwarded-client-cert"],
        pki.xfcc("client.pem")
    );
    // `forward` (clientcert_test.go, FORWARD): a client with a certificate keeps its header
    // (a TLS-terminating proxy that passes it on), one without loses it.
    let echo = curl(&forwarding, "/", &with_cert).await.expect("served");
    assert_eq!(echo["headers"]["x-forwarded-client-cert"], "forged");
    let echo = curl(&forwarding, "/", &[]).await.expect("served");
    assert!(
        echo["headers"].get("x-forwarded-client-cert").is_none(),
        "{echo}"
    );
}

#[tokio::test]
async fn curl_over_http2_gets_100_continue_and_hop_by_hop_headers_never_pass() {
    let bus = NatsServer::start();
    let node = Node::builder("lon-1", "lon").nats(&bus.url()).start().await;
    route(&node, &bus).await;
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("body");
    std::fs::write(&data, vec![b'x'; 100_000]).expect("body");
    let out = Command::new(program("curl", "curl"))
        .args([
            "-sv",
            "--max-time",
            "10",
            "--http2-prior-knowledge",
            "-H",
            &format!("Host: {HOST}"),
            "-H",
            "Expect: 100-continue",
            "--data-binary",
        ])
        .arg(format!("@{}", data.display()))
        .arg(format!("http://{}/consume", node.http_addr()))
        .output()
        .await
        .expect("run curl");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stderr.contains("< HTTP/2 100"),
        "no 100 Continue:\n{stderr}"
    );
    assert!(stderr.contains("< HTTP/2 200"), "{stderr}");
    assert_eq!(stdout, "100000", "the whole body arrived");

    // A GoRouter response whose Connection header names another header: that header is
    // stripped, on every path, and the response is not a 502.
    let fast = raw(node.http_addr(), &get_close("/connection-named", "")).await;
    let general = raw(
        node.http_addr(),
        &format!("GET /connection-named HTTP/1.0\r\nHost: {HOST}\r\n\r\n"),
    )
    .await;
    for r in [&fast, &general] {
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-hop"), None, "{r:?}");
        assert_eq!(r.header("x-app"), Some("kept"), "{r:?}");
    }
    let (status, h, _) = h2_get(&node, "/connection-named", &[]).await;
    assert_eq!(status, 200);
    assert!(
        h.get("x-hop").is_none() && h.get("connection").is_none(),
        "{h:?}"
    );

    // `Upgrade: h2c` is this hop's business: the GoRouter gets a plain request.
    let r = raw(
        node.http_addr(),
        &get_close("/h2c", "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let echo = r.echo();
    for h in ["upgrade", "http2-settings"] {
        assert!(echo["headers"].get(h).is_none(), "{h}: {echo}");
    }
}

/// The access log's JSON lines of `node` for `path`.
fn access_lines(node: &Node, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    node.log.wait_for(10 * SEC, what, |l| {
        let v: Value = serde_json::from_str(l).ok()?;
        (v["target"] == "grouter::access" && f(&v)).then_some(v)
    })
}

#[tokio::test]
async fn gorouters_errors_trace_ids_and_access_log_line() {
    let bus = NatsServer::start();
    let node = Node::builder("lon-1", "lon").nats(&bus.url()).start().await;
    route(&node, &bus).await;

    // handlers/lookup_test.go, "when the route does not exist".
    let r = raw(
        node.http_addr(),
        "GET / HTTP/1.1\r\nHost: nowhere.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "404 Not Found: Requested route ('nowhere.example.com') does not exist.\n"
    );
    assert_eq!(r.header("cache-control"), Some("no-cache, no-store"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("x-cf-routererror"), Some("unknown_route"));

    // W3C by default: a trace is created, and its id logged.
    let echo = raw(node.http_addr(), &get_close("/traced", ""))
        .await
        .echo();
    let tp = echo["headers"]["traceparent"]
        .as_str()
        .expect("a traceparent")
        .to_string();
    let trace = tp.split('-').nth(1).expect("trace id").to_string();
    let line = access_lines(&node, "the access line", |v| v["path"] == "/traced");
    assert_eq!(line["trace_id"], trace.as_str(), "{line}");
    // One the client brought is passed on, and logged.
    let theirs = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (_, _, body) = h2_get(&node, "/theirs", &[("traceparent", theirs)]).await;
    let echo: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(echo["headers"]["traceparent"], theirs);
    let line = access_lines(&node, "the h2 access line", |v| v["path"] == "/theirs");
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");

    // B3, and gorouter's line format.
    let rtr = Node::builder("lon-2", "lon")
        .nats(&bus.url())
        .proxy_option("tracing = \"b3\"")
        .extra("access_log_format = \"rtr\"\n")
        .start()
        .await;
    route(&rtr, &bus).await;
    let echo = raw(
        rtr.http_addr(),
        &get_close("/b3?q=1", "User-Agent: parity-test\r\n"),
    )
    .await
    .echo();
    let h = &echo["headers"];
    let trace = h["x-b3-traceid"]
        .as_str()
        .expect("x-b3-traceid")
        .to_string();
    assert_eq!(
        h["b3"],
        format!("{trace}-{}", h["x-b3-spanid"].as_str().expect("span"))
    );
    let line = access_lines(&rtr, "the rtr line", |v| {
        v["message"].as_str().is_some_and(|m| m.contains("/b3?q=1"))
    });
    let m = line["message"].as_str().unwrap_or_default();
    assert!(m.starts_with(&format!("{HOST} - [")), "{m}");
    for part in [
        "\"GET /b3?q=1 HTTP/1.1\" 200 0 ".to_string(),
        "\"parity-test\" \"127.0.0.1:".to_string(),
        "app_id:\"app-guid\"".to_string(),
        "x_cf_routererror:\"-\"".to_string(),
        format!("trace_id:\"{trace}\""),
    ] {
        assert!(m.contains(&part), "{part} in {m}");
    }
}
