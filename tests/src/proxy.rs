//! The data plane end to end: real nodes, real NATS, real TLS, GoRouter stand-ins that
//! report their site and what they received.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use grouter_tests::gorouter::GoRouterStub;
use grouter_tests::{AppCerts, MeshCa, NatsServer, Node, wait_until};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const SEC: Duration = Duration::from_secs(1);

/// Sites with one node each, in one mesh.
struct Mesh {
    _ca: MeshCa,
    buses: Vec<NatsServer>,
    nodes: Vec<Node>,
}

impl Mesh {
    async fn start(sites: &[&str]) -> Mesh {
        let ca = MeshCa::new();
        let mut buses = Vec::new();
        let mut nodes: Vec<Node> = Vec::new();
        for site in sites {
            let bus = NatsServer::start();
            let seeds: Vec<SocketAddr> = nodes
                .first()
                .map(|n| vec![n.mesh_addr()])
                .unwrap_or_default();
            let node = Node::builder(&format!("{site}-1"), site)
                .nats(&bus.url())
                .mesh(&ca, &seeds)
                .start()
                .await;
            buses.push(bus);
            nodes.push(node);
        }
        for node in &nodes {
            wait_until(15 * SEC, "in_sync", || async {
                (node.json("/v1/status").await["sync"] == "in_sync").then_some(())
            })
            .await;
        }
        Mesh {
            _ca: ca,
            buses,
            nodes,
        }
    }

    /// Register `uri` at site `i` (as its GoRouter stand-in's app) and wait until every node
    /// of the mesh knows it.
    async fn serve(&self, i: usize, uri: &str) {
        let bus = self.buses[i].client().await;
        let host = uri.split('/').next().unwrap_or(uri);
        let msg = json!({"host": "10.0.0.1", "port": 61000 + i, "uris": [uri], "app": format!("app-{host}")});
        let site = self.nodes[i].json("/v1/status").await["site"].clone();
        wait_until(10 * SEC, "the route everywhere", || async {
            bus.publish("router.register", msg.to_string().into())
                .await
                .ok()?;
            bus.flush().await.ok()?;
            for n in &self.nodes {
                let r = n.route(host, "").await?;
                r["sites"].as_array()?.iter().find(|s| s["site"] == site)?;
            }
            Some(())
        })
        .await;
    }

    async fn unserve(&self, i: usize, uri: &str) {
        let bus = self.buses[i].client().await;
        let msg = json!({"host": "10.0.0.1", "port": 61000 + i, "uris": [uri]});
        bus.publish("router.unregister", msg.to_string().into())
            .await
            .expect("publish");
        bus.flush().await.expect("flush");
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

async fn get(node: &Node, host: &str, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let resp = client()
        .get(format!("http://{}{path}", node.http_addr()))
        .header("host", host)
        .timeout(10 * SEC)
        .send()
        .await
        .expect("request");
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    (status, headers, resp.text().await.expect("body"))
}

fn site_of(h: &reqwest::header::HeaderMap) -> &str {
    h.get("x-grouter-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn every_branch_of_the_decision() {
    let mesh = Mesh::start(&["lon", "nyc"]).await;
    let (lon, nyc) = (&mesh.nodes[0], &mesh.nodes[1]);
    mesh.serve(0, "local.example.com").await;
    mesh.serve(1, "shop.apps.example.com").await;

    // Local: lon's GoRouter, with the contract's headers.
    let resp = client()
        .get(format!("http://{}/cart?id=7", lon.http_addr()))
        .header("host", "local.example.com")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-vcap-request-id", "req-1")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(site_of(resp.headers()), "lon");
    let seen: Value = resp.json().await.expect("json");
    assert_eq!(seen["site"], "lon");
    assert_eq!(seen["host"], "local.example.com");
    assert_eq!(seen["path"], "/cart");
    assert_eq!(seen["query"], "id=7");
    assert_eq!(seen["headers"]["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "http");
    assert_eq!(seen["headers"]["x-vcap-request-id"], "req-1");
    assert!(
        seen["headers"]["x-request-start"]
            .as_str()
            .is_some_and(|s| s.parse::<u64>().is_ok())
    );

    // Served only at nyc: proxied over the mesh, Host unchanged, the client's address once.
    let (status, headers, body) = get(lon, "shop.apps.example.com", "/p").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(site_of(&headers), "nyc");
    let seen: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (seen["site"].as_str(), seen["host"].as_str()),
        (Some("nyc"), Some("shop.apps.example.com"))
    );
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(
        seen["headers"]["x-vcap-request-id"].as_str().map(str::len),
        Some(36)
    );

    // Unknown: gorouter's 404.
    let (status, headers, body) = get(lon, "nothing.example.com", "/").await;
    assert_eq!(status, 404);
    assert_eq!(headers["x-cf-routererror"], "unknown_route");
    assert_eq!(
        body.trim(),
        "404 Not Found: Requested route ('nothing.example.com') does not exist."
    );
    assert_eq!(headers["cache-control"], "no-cache, no-store");
    assert_eq!(headers["x-content-type-options"], "nosniff");

    // nyc's redirect form of a host it serves is routed there as that host.
    let (status, headers, body) = get(nyc, "shop.nyc.apps.example.com", "/").await;
    assert_eq!((status, site_of(&headers)), (200, "nyc"), "{body}");

    // Empty Host: 400.
    let mut tcp = tokio::net::TcpStream::connect(lon.http_addr())
        .await
        .expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: \r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0; 4096];
    let n = tcp.read(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(
        text.starts_with("HTTP/1.1 400") && text.contains("empty_host"),
        "{text}"
    );

    // A node whose policy is redirect: 307 to the serving site's redirect host.
    let bus = NatsServer::start();
    let redirector = Node::builder("lon-2", "lon")
        .nats(&bus.url())
        .mesh(&mesh._ca, &[lon.mesh_addr()])
        .redirect()
        .start()
        .await;
    wait_until(10 * SEC, "the redirector to learn the route", || async {
        redirector
            .route("shop.apps.example.com", "")
            .await
            .map(|_| ())
    })
    .await;
    let (status, headers, _) = get(&redirector, "shop.apps.example.com", "/cart?id=7").await;
    assert_eq!(status, 307);
    assert_eq!(
        headers["location"],
        "http://shop.nyc.apps.example.com/cart?id=7"
    );

    // Fail open: a node that has lost every other site sends unknown hosts to its GoRouters.
    let alone_bus = NatsServer::start();
    let alone = Node::builder("sgp-1", "sgp")
        .nats(&alone_bus.url())
        .mesh(&mesh._ca, &[])
        .start()
        .await;
    assert_eq!(alone.json("/v1/status").await["sync"], "lost");
    let (status, headers, body) = get(&alone, "nothing.example.com", "/").await;
    assert_eq!((status, site_of(&headers)), (200, "sgp"), "{body}");
    let seen: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(seen["host"], "nothing.example.com");
}

#[tokio::test]
async fn local_wins_and_a_failing_site_is_replaced_without_client_errors() {
    let mesh = Mesh::start(&["lon", "nyc"]).await;
    let lon = &mesh.nodes[0];
    mesh.serve(0, "both.example.com").await;
    mesh.serve(1, "both.example.com").await;
    for _ in 0..20 {
        let (status, headers, _) = get(lon, "both.example.com", "/").await;
        assert_eq!((status, site_of(&headers)), (200, "lon"), "local wins");
    }
    // lon's endpoints go: requests keep succeeding, and land at nyc once lon has pruned it.
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hammer = {
        let addr = lon.http_addr();
        let answered = answered.clone();
        tokio::spawn(async move {
            let c = client();
            let mut sites = Vec::new();
            for _ in 0..200 {
                let r = c
                    .get(format!("http://{addr}/"))
                    .header("host", "both.example.com")
                    .send()
                    .await
                    .expect("request");
                assert_eq!(r.status(), 200, "no client-visible error");
                sites.push(site_of(r.headers()).to_string());
                answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sites
        })
    };
    wait_until(10 * SEC, "the first requests to be answered", || async {
        (answered.load(std::sync::atomic::Ordering::SeqCst) >= 10).then_some(())
    })
    .await;
    mesh.unserve(0, "both.example.com").await;
    let sites = hammer.await.expect("hammer");
    assert_eq!(sites.first().map(String::as_str), Some("lon"));
    assert_eq!(sites.last().map(String::as_str), Some("nyc"));

    // A GoRouter that stops answering: the route is still registered locally, the
    // connection fails, and the request goes on to the other site.
    mesh.serve(0, "both.example.com").await;
    let (_, headers, _) = get(lon, "both.example.com", "/").await;
    assert_eq!(site_of(&headers), "lon");
    lon.stub.as_ref().expect("stub").stop();
    for _ in 0..10 {
        let (status, headers, _) = get(lon, "both.example.com", "/").await;
        assert_eq!(
            (status, site_of(&headers)),
            (200, "nyc"),
            "no client-visible error"
        );
    }
    // …and the probes notice: lon stops saying it can serve.
    wait_until(5 * SEC, "lon's /healthz to fail", || async {
        let (status, _) = lon.get("/healthz").await.ok()?;
        (status == 503).then_some(())
    })
    .await;
}

#[tokio::test]
async fn http2_websocket_and_large_bodies_cross_to_a_remote_site() {
    let mesh = Mesh::start(&["lon", "nyc"]).await;
    let (lon, nyc) = (&mesh.nodes[0], &mesh.nodes[1]);
    mesh.serve(1, "remote.example.com").await;

    // HTTP/2 from the client (prior knowledge on the plain port).
    // The host as `:authority` only: a Host that differs from it is refused.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve("remote.example.com", lon.http_addr())
        .build()
        .expect("client");
    let resp = h2
        .get("http://remote.example.com/h2")
        .send()
        .await
        .expect("h2");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(site_of(resp.headers()), "nyc");
    let seen: Value = resp.json().await.expect("json");
    assert_eq!(seen["host"], "remote.example.com");

    // A WebSocket echo through the remote site.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/ws", lon.http_addr()),
    )
    .expect("req");
    req.headers_mut()
        .insert("host", "remote.example.com".parse().expect("host"));
    let tcp = tokio::net::TcpStream::connect(lon.http_addr())
        .await
        .expect("connect");
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("websocket handshake");
    assert_eq!(resp.headers()["x-grouter-site"], "nyc");
    for i in 0..5 {
        ws.send(Message::text(format!("hello {i}")))
            .await
            .expect("send");
        let echo = tokio::time::timeout(5 * SEC, ws.next())
            .await
            .expect("echo in time")
            .expect("open")
            .expect("frame");
        assert_eq!(echo, Message::text(format!("nyc: hello {i}")));
    }
    ws.close(None).await.ok();

    // 200 MB each way, streamed: the nodes' memory stays small.
    const SIZE: usize = 200 * 1024 * 1024;
    let chunk = bytes::Bytes::from(vec![7u8; 1 << 20]);
    let chunks = futures::stream::iter(
        (0..SIZE / (1 << 20))
            .map(move |_| Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk.clone()))),
    );
    let resp = client()
        .post(format!("http://{}/consume", lon.http_addr()))
        .header("host", "remote.example.com")
        .body(reqwest::Body::wrap(http_body_util::StreamBody::new(chunks)))
        .timeout(120 * SEC)
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body"), SIZE.to_string());
    let resp = client()
        .get(format!("http://{}/bytes/{SIZE}", lon.http_addr()))
        .header("host", "remote.example.com")
        .timeout(120 * SEC)
        .send()
        .await
        .expect("download");
    assert_eq!(resp.status(), 200);
    let mut total = 0usize;
    let mut resp = resp;
    while let Some(chunk) = resp.chunk().await.expect("chunk") {
        total += chunk.len();
    }
    assert_eq!(total, SIZE);
    for node in [lon, nyc] {
        let peak = node.peak_rss_kib();
        assert!(peak < 100 * 1024, "peak RSS {peak} KiB");
    }
}

#[tokio::test]
async fn bad_input_gets_clear_statuses_and_leaks_nothing() {
    // A GoRouter that resets every connection after reading the request.
    let resetter = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let reset_addr = resetter.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = resetter.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    let bus = NatsServer::start();
    let good = GoRouterStub::start("lon").await;
    let node = Node::builder("lon-1", "lon")
        .nats(&bus.url())
        .gorouters(&[good.addr()])
        .start()
        .await;
    let bus_client = bus.client().await;
    let msg = json!({"host": "10.0.0.1", "port": 1, "uris": ["app.example.com"], "app": "a"});
    node.register_until_routed(&bus_client, &msg, "app.example.com")
        .await;
    // Warm up, then count descriptors.
    for _ in 0..3 {
        let _ = get(&node, "app.example.com", "/").await;
    }
    let fds_before = node.open_fds();

    // Invalid Host: a clean 400 or 404, never a crash.
    for host in ["bad host!", "[::1", "...", "a..b"] {
        let (status, _, _) = get(&node, host, "/").await;
        assert!(status == 400 || status == 404, "{host:?}: {status}");
    }
    // Oversized headers: 431.
    let mut tcp = tokio::net::TcpStream::connect(node.http_addr())
        .await
        .expect("connect");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: app.example.com\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let _ = tcp.write_all(big.as_bytes()).await;
    let mut buf = vec![0; 1024];
    let n = tcp.read(&mut buf).await.unwrap_or(0);
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Clients that vanish mid-body and mid-headers.
    for _ in 0..20 {
        let mut tcp = tokio::net::TcpStream::connect(node.http_addr())
            .await
            .expect("connect");
        let _ = tcp.write_all(b"POST /consume HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 1000000\r\n\r\npartial").await;
        drop(tcp);
        let mut tcp = tokio::net::TcpStream::connect(node.http_addr())
            .await
            .expect("connect");
        let _ = tcp.write_all(b"GET / HTTP/1.1\r\nHost: app.exa").await;
        drop(tcp);
    }
    // The node still serves.
    let (status, headers, _) = get(&node, "app.example.com", "/").await;
    assert_eq!((status, site_of(&headers)), (200, "lon"));

    // An upstream that resets: 502 endpoint_failure.
    let bus2 = NatsServer::start();
    let resetting = Node::builder("lon-2", "lon")
        .nats(&bus2.url())
        .gorouters(&[reset_addr])
        .start()
        .await;
    let c2 = bus2.client().await;
    resetting
        .register_until_routed(&c2, &msg, "app.example.com")
        .await;
    let (status, headers, body) = get(&resetting, "app.example.com", "/").await;
    assert_eq!(status, 502, "{body}");
    // gorouter's `endpoint_failure (<reason>)`, the reason without addresses.
    let router_error = headers["x-cf-routererror"].to_str().unwrap_or_default();
    assert!(
        [
            "endpoint_failure (EOF)",
            "endpoint_failure (connection reset by peer)"
        ]
        .contains(&router_error),
        "{router_error}"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(
        !body.contains("127.0.0.1"),
        "no internals in the body: {body}"
    );

    // Nothing leaked: descriptors settle back.
    wait_until(10 * SEC, "descriptors to settle", || async {
        let now = node.open_fds();
        (now <= fds_before + 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn sni_picks_each_apps_certificate_and_new_ones_are_served_within_2s() {
    let certs = AppCerts::new();
    let shop = certs.issue("shop.apps.example.com", "shop.apps.example.com");
    let blog = certs.issue("blog.apps.example.com", "blog.apps.example.com");
    let default = certs.issue("default", "default.example.com");
    let dir = certs.dir.path();
    let bus = NatsServer::start();
    let node = Node::builder("lon-1", "lon")
        .nats(&bus.url())
        .https(dir, &dir.join("default.pem"), &dir.join("default.key"))
        .start()
        .await;
    let addr = node.https_addr();
    assert_eq!(
        certs.served(addr, "shop.apps.example.com").await,
        Some(shop)
    );
    assert_eq!(
        certs.served(addr, "blog.apps.example.com").await,
        Some(blog)
    );
    // No certificate of its own: the default (which a verifying client then refuses).
    assert_eq!(certs.served(addr, "other.apps.example.com").await, None);
    let insecure_name = {
        // Accept anything, just to see which certificate came: the default.
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let c = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AcceptAny))
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("other.apps.example.com").expect("name");
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(c))
            .connect(name, tcp)
            .await
            .expect("tls");
        tls.get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
    };
    assert_eq!(insecure_name, Some(default));

    // A request over TLS, HTTP/2 by ALPN, verified end to end.
    let msg =
        json!({"host": "10.0.0.1", "port": 1, "uris": ["shop.apps.example.com"], "app": "shop"});
    let nats = bus.client().await;
    node.register_until_routed(&nats, &msg, "shop.apps.example.com")
        .await;
    let https = reqwest::Client::builder()
        .tls_backend_preconfigured(certs.client_config())
        .resolve("shop.apps.example.com", addr)
        .build()
        .expect("client");
    let resp = https
        .get(format!("https://shop.apps.example.com:{}/", addr.port()))
        .send()
        .await
        .expect("https request");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let seen: Value = resp.json().await.expect("json");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");

    // A certificate dropped into cert_dir is served within 2 s, without a restart.
    let added = std::time::Instant::now();
    let new = certs.issue("new.apps.example.com", "new.apps.example.com");
    wait_until(3 * SEC, "the new certificate", || async {
        (certs.served(addr, "new.apps.example.com").await.as_ref() == Some(&new)).then_some(())
    })
    .await;
    assert!(
        added.elapsed() < 2 * SEC,
        "served after {:?}",
        added.elapsed()
    );
}

/// A verifier that accepts any certificate (only to look at what the server sends).
#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test]
async fn http2_streams_on_one_connection_do_not_wait_for_each_other() {
    let bus = NatsServer::start();
    let node = Node::builder("lon-1", "lon").nats(&bus.url()).start().await;
    let client_bus = bus.client().await;
    let msg = json!({"host": "10.0.0.1", "port": 1, "uris": ["app.example.com"], "app": "a"});
    node.register_until_routed(&client_bus, &msg, "app.example.com")
        .await;
    let addr = node.http_addr();
    // The host as `:authority` only: a Host that differs from it is refused.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve("app.example.com", addr)
        .build()
        .expect("client");
    let get = |path: &'static str| {
        let h2 = h2.clone();
        async move {
            h2.get(format!("http://app.example.com{path}"))
                .timeout(30 * SEC)
                .send()
                .await
                .map(|r| (r.version(), r.status().as_u16()))
        }
    };
    // The connection is open before the streams share it.
    assert_eq!(
        get("/").await.expect("first"),
        (reqwest::Version::HTTP_2, 200)
    );

    // A stream the GoRouter answers after 20 s is in flight; streams after it on the same
    // connection are answered meanwhile.
    let slow = tokio::spawn(get("/delay/20000"));
    wait_until(5 * SEC, "the slow stream to reach the GoRouter", || async {
        let stub = node.stub.as_ref()?;
        (stub.requests() >= 2).then_some(())
    })
    .await;
    for _ in 0..5 {
        assert_eq!(
            get("/fast").await.expect("fast"),
            (reqwest::Version::HTTP_2, 200)
        );
    }
    assert!(!slow.is_finished(), "the slow stream is still in flight");
    slow.abort();
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_while_healthz_says_503() {
    let bus = NatsServer::start();
    let mut node = Node::builder("lon-1", "lon").nats(&bus.url()).start().await;
    let client_bus = bus.client().await;
    let msg = json!({"host": "10.0.0.1", "port": 1, "uris": ["slow.example.com"], "app": "s"});
    node.register_until_routed(&client_bus, &msg, "slow.example.com")
        .await;
    let (status, _) = node.get("/healthz").await.expect("healthz");
    assert_eq!(status, 200);

    // Two requests that take 2 s are in flight when SIGTERM arrives: one over HTTP/1.1, one
    // an HTTP/2 stream.
    let addr = node.http_addr();
    let slow = |client: reqwest::Client| {
        tokio::spawn(async move {
            client
                .get("http://slow.example.com/delay/2000")
                .timeout(10 * SEC)
                .send()
                .await
                .map(|r| (r.version(), r.status().as_u16()))
        })
    };
    // The host as the URL's (HTTP/2: `:authority` only; a Host that differs is refused).
    let in_flight = slow(
        reqwest::Client::builder()
            .resolve("slow.example.com", addr)
            .build()
            .expect("client"),
    );
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve("slow.example.com", addr)
        .build()
        .expect("client");
    let in_flight_h2 = slow(h2);
    let admin = node.admin_addr();
    let token = node.token().to_string();
    wait_until(
        5 * SEC,
        "the slow requests to reach the GoRouter",
        || async {
            let stub = node.stub.as_ref()?;
            (stub.requests() >= 2).then_some(())
        },
    )
    .await;
    let exit = tokio::task::spawn_blocking(move || node.terminate());

    // While draining, the admin API answers and /healthz says 503, so load balancers and
    // anycast withdraw this node.
    let draining = wait_until(5 * SEC, "/healthz to answer 503 while draining", || async {
        let r = reqwest::Client::new()
            .get(format!("http://{admin}/healthz"))
            .bearer_auth(&token)
            .send()
            .await
            .ok()?;
        (r.status() == 503).then_some(r.text().await.unwrap_or_default())
    })
    .await;
    assert!(draining.contains("draining"), "{draining}");
    // New connections are refused; the one in flight completes.
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener closed at once"
    );
    assert_eq!(
        in_flight
            .await
            .expect("join")
            .expect("the in-flight request completed"),
        (reqwest::Version::HTTP_11, 200)
    );
    assert_eq!(
        in_flight_h2
            .await
            .expect("join")
            .expect("the in-flight HTTP/2 stream completed"),
        (reqwest::Version::HTTP_2, 200)
    );
    assert_eq!(exit.await.expect("join"), Some(0), "drained and exited 0");
}
