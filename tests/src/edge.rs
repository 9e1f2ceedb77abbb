//! The edge rules of CONTRACT.md ("Edge rules") end to end, tried as an attacker would: real
//! nodes in a real mesh, real NATS, GoRouter stand-ins that count what reached them, and raw
//! TCP writes where a client library would normalise the bytes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use grouter_tests::{MeshCa, NatsServer, Node, wait_until};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SEC: Duration = Duration::from_secs(1);

/// `lon` serves `local.example.com`, `nyc` serves `*.wild.example.test`, and `lon-r` (also
/// at `lon`, with `proxy.remote = "redirect"`) redirects what only `nyc` serves.
struct Sites {
    ca: MeshCa,
    _buses: Vec<NatsServer>,
    lon: Node,
    nyc: Node,
    redirector: Node,
}

impl Sites {
    async fn start(extra: &str) -> Sites {
        let ca = MeshCa::new();
        let (lon_bus, nyc_bus, r_bus) = (
            NatsServer::start(),
            NatsServer::start(),
            NatsServer::start(),
        );
        let lon = Node::builder("lon-1", "lon")
            .nats(&lon_bus.url())
            .mesh(&ca, &[])
            .extra(extra)
            .start()
            .await;
        let nyc = Node::builder("nyc-1", "nyc")
            .nats(&nyc_bus.url())
            .mesh(&ca, &[lon.mesh_addr()])
            .extra(extra)
            .start()
            .await;
        let redirector = Node::builder("lon-r", "lon")
            .nats(&r_bus.url())
            .mesh(&ca, &[lon.mesh_addr()])
            .redirect()
            .extra(extra)
            .start()
            .await;
        let sites = Sites {
            ca,
            _buses: vec![lon_bus, nyc_bus, r_bus],
            lon,
            nyc,
            redirector,
        };
        sites.serve(0, "local.example.com").await;
        sites.serve(1, "*.wild.example.test").await;
        sites
    }

    /// Register `uri` at `lon` (0) or `nyc` (1) and wait until every node knows it.
    async fn serve(&self, i: usize, uri: &str) {
        let bus = self._buses[i].client().await;
        let msg = json!({"host": "10.0.0.1", "port": 61000 + i, "uris": [uri], "app": format!("app-{i}")});
        wait_until(15 * SEC, "the route at every node", || async {
            bus.publish("router.register", msg.to_string().into())
                .await
                .ok()?;
            bus.flush().await.ok()?;
            for n in [&self.lon, &self.nyc, &self.redirector] {
                n.route(uri, "").await?;
            }
            Some(())
        })
        .await;
    }

    /// Requests that reached any GoRouter stand-in (health probes not counted).
    fn reached(&self) -> usize {
        [&self.lon, &self.nyc, &self.redirector]
            .iter()
            .filter_map(|n| n.stub.as_ref())
            .map(|s| s.requests())
            .sum()
    }
}

/// Write `request` on a new connection to `addr` and read until the server closes (or 5 s).
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(5 * SEC, tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// One header of a raw response, by lower-case name.
fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

async fn refused(node: &Node, reason: &str) -> f64 {
    node.metric_labelled(
        "grouter_http_refused_requests_total",
        &format!("reason=\"{reason}\""),
    )
    .await
    .unwrap_or(0.0)
}

#[tokio::test]
async fn an_open_redirect_attempt_gets_400_and_redirects_keep_scheme_and_port() {
    let sites = Sites::start("").await;
    let r = sites.redirector.http_addr();

    // The attack of issue 12: `?` ends the authority for a browser, so `Location:
    // http://x.evil.com?.nyc.wild.example.test/` would have sent it to x.evil.com.
    for host in [
        "x.evil.com?.wild.example.test",
        "x.evil.com#.wild.example.test",
        "x.evil.com/.wild.example.test",
        "user@x.evil.com.wild.example.test",
    ] {
        let resp = raw(
            r,
            format!("GET /p?q=1 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{host}: {resp}");
        assert_eq!(
            header(&resp, "x-cf-routererror"),
            Some("invalid_host"),
            "{host}"
        );
        assert_eq!(header(&resp, "location"), None, "{host}: {resp}");
    }
    assert!(refused(&sites.redirector, "invalid_host").await >= 4.0);

    // A real wildcard host is redirected to nyc's form of it: scheme and the request's
    // non-default port kept, path and query kept, nothing else of the request used.
    let resp = raw(
        r,
        b"GET /cart?id=7 HTTP/1.1\r\nHost: App.Wild.Example.Test:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 307"), "{resp}");
    assert_eq!(
        header(&resp, "location"),
        Some("http://app.nyc.wild.example.test:8080/cart?id=7")
    );
    // The default port is not repeated.
    let resp = raw(
        r,
        b"GET / HTTP/1.1\r\nHost: app.wild.example.test:80\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        header(&resp, "location"),
        Some("http://app.nyc.wild.example.test/"),
        "{resp}"
    );
    assert_eq!(sites.reached(), 0, "a redirect reaches no GoRouter");
}

#[tokio::test]
async fn hosts_that_are_not_host_names_are_refused_and_reach_no_gorouter() {
    let sites = Sites::start("").await;
    let lon = sites.lon.http_addr();
    // Proxy mode: before issue 12, `local.example.com?.wild.example.test` matched nyc's
    // wildcard and went to nyc's GoRouter, though lon serves `local.example.com` itself.
    for host in [
        "local.example.com?.wild.example.test",
        "local.example.com#.wild.example.test",
        "local.example.com@a.wild.example.test",
        "local.example.com a.wild.example.test",
        "local.example.com%2f.wild.example.test",
        "local.example.com:80@a.wild.example.test",
        "[::1]:80",
        "*.wild.example.test",
    ] {
        let resp = raw(
            lon,
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{host:?}: {resp}");
        assert_eq!(
            header(&resp, "x-cf-routererror"),
            Some("invalid_host"),
            "{host:?}"
        );
        assert_eq!(header(&resp, "x-grouter-site"), Some("lon"), "{host:?}");
    }
    assert!(refused(&sites.lon, "invalid_host").await >= 8.0);
    // A CR inside the Host breaks the message's framing itself: the parser refuses it.
    let resp = raw(
        lon,
        b"GET / HTTP/1.1\r\nHost: local.example.com\ra.wild.example.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    wait_until(5 * SEC, "the malformed request counted", || async {
        (refused(&sites.lon, "malformed").await >= 1.0).then_some(())
    })
    .await;
    assert_eq!(sites.reached(), 0, "nothing reached a GoRouter");

    // `_` is a host name character here (Cloud Controller accepts it in route hosts).
    let resp = raw(
        lon,
        b"GET / HTTP/1.1\r\nHost: my_app.wild.example.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(header(&resp, "x-grouter-site"), Some("nyc"));
}

#[tokio::test]
async fn two_hosts_or_a_host_that_differs_from_the_authority_get_400() {
    let sites = Sites::start("").await;
    let lon = sites.lon.http_addr();
    let resp = raw(
        lon,
        b"GET / HTTP/1.1\r\nHost: local.example.com\r\nHost: a.wild.example.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert_eq!(header(&resp, "x-cf-routererror"), Some("invalid_host"));
    assert_eq!(refused(&sites.lon, "duplicate_host").await, 1.0);
    // HTTP/1.1's absolute form names the host too (RFC 9112 §3.2.2).
    let resp = raw(
        lon,
        b"GET http://a.wild.example.test/ HTTP/1.1\r\nHost: local.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert_eq!(header(&resp, "x-cf-routererror"), Some("invalid_host"));

    // HTTP/2: `:authority` says one host, a Host header another (RFC 9113 §8.3.1).
    let tcp = TcpStream::connect(lon).await.expect("connect");
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let mut send = |authority: &str, host: Option<&str>| {
        let mut req = http::Request::get(format!("http://{authority}/"));
        if let Some(host) = host {
            req = req.header("host", host);
        }
        h2.send_request(
            req.body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("request"),
        )
    };
    let resp = send("local.example.com", Some("a.wild.example.test"))
        .await
        .expect("response");
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["x-cf-routererror"], "invalid_host");
    let resp = send("local.example.com", Some("LOCAL.example.com"))
        .await
        .expect("response");
    assert_eq!(
        resp.status(),
        200,
        "the same host in another case is the same host"
    );
    // An authority no host name: `!` is a sub-delimiter, fine in a URI, not in a host.
    let resp = send("x.evil.com!.wild.example.test", None)
        .await
        .expect("response");
    assert_eq!(resp.status(), 400);
    assert_eq!(refused(&sites.lon, "host_mismatch").await, 2.0);
    assert_eq!(
        sites.reached(),
        1,
        "only the request with one host reached a GoRouter"
    );
    let _ = &sites.ca;
}

/// A GoRouter that answers everything (its `/health` included) with 200 and a forged
/// `X-Grouter-Site`, as an app could.
async fn forging_gorouter() -> SocketAddr {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_req| async {
                    let resp = http::Response::builder()
                        .header("x-grouter-site", "forged")
                        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"ok")))
                        .expect("response");
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_apps_x_grouter_site_is_replaced_on_every_path() {
    let ca = MeshCa::new();
    let (lon_bus, nyc_bus) = (NatsServer::start(), NatsServer::start());
    let lon = Node::builder("lon-1", "lon")
        .nats(&lon_bus.url())
        .gorouters(&[forging_gorouter().await])
        .mesh(&ca, &[])
        .start()
        .await;
    let nyc = Node::builder("nyc-1", "nyc")
        .nats(&nyc_bus.url())
        .gorouters(&[forging_gorouter().await])
        .mesh(&ca, &[lon.mesh_addr()])
        .start()
        .await;
    let quiet = Node::builder("lon-2", "lon")
        .nats(&lon_bus.url())
        .gorouters(&[forging_gorouter().await])
        .proxy_option("site_header = false")
        .start()
        .await;
    let publish = |bus: &NatsServer, uri: &'static str| {
        let url = bus.url();
        async move {
            let bus = async_nats::connect(url).await.expect("nats");
            let msg = json!({"host": "10.0.0.1", "port": 61000, "uris": [uri], "app": "a"});
            bus.publish("router.register", msg.to_string().into())
                .await
                .expect("publish");
            bus.flush().await.expect("flush");
        }
    };
    wait_until(15 * SEC, "routes everywhere", || async {
        publish(&lon_bus, "here.example.com").await;
        publish(&nyc_bus, "there.example.com").await;
        lon.route("here.example.com", "").await?;
        lon.route("there.example.com", "").await?;
        quiet.route("here.example.com", "").await?;
        Some(())
    })
    .await;

    let site = |resp: &str| header(resp, "x-grouter-site").map(str::to_string);
    // HTTP/1.1 fast path.
    let fast = raw(
        lon.http_addr(),
        b"GET / HTTP/1.1\r\nHost: here.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(fast.starts_with("HTTP/1.1 200"), "{fast}");
    assert_eq!(site(&fast).as_deref(), Some("lon"), "{fast}");
    assert_eq!(fast.matches("x-grouter-site").count(), 1, "{fast}");
    // General path (a chunked request body is not the fast path's).
    let general = raw(
        lon.http_addr(),
        b"POST / HTTP/1.1\r\nHost: here.example.com\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    )
    .await;
    assert!(general.starts_with("HTTP/1.1 200"), "{general}");
    assert_eq!(site(&general).as_deref(), Some("lon"), "{general}");
    // HTTP/2 (a bodiless stream goes to the GoRouter as bytes) and the remote path.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve("here.example.com", lon.http_addr())
        .resolve("there.example.com", lon.http_addr())
        .build()
        .expect("client");
    for (host, want) in [("here.example.com", "lon"), ("there.example.com", "nyc")] {
        let resp = h2
            .get(format!("http://{host}/"))
            .timeout(10 * SEC)
            .send()
            .await
            .expect("h2 request");
        assert_eq!(resp.status(), 200, "{host}");
        let sites: Vec<_> = resp.headers().get_all("x-grouter-site").iter().collect();
        assert_eq!(sites, [want], "{host}");
    }
    // Remote over HTTP/1.1 (the general path to another site).
    let remote = raw(
        lon.http_addr(),
        b"GET / HTTP/1.1\r\nHost: there.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(site(&remote).as_deref(), Some("nyc"), "{remote}");
    // `proxy.site_header = false`: none at all, the app's included.
    let none = raw(
        quiet.http_addr(),
        b"GET / HTTP/1.1\r\nHost: here.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(none.starts_with("HTTP/1.1 200"), "{none}");
    assert_eq!(site(&none), None, "{none}");
    let _ = nyc;
}

/// Connect to `addr`, write `bytes`, and wait (up to `within`) for the server to close:
/// how long it took, or `None` if it was still open.
async fn closed_after(addr: SocketAddr, bytes: &[u8], within: Duration) -> Option<Duration> {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    tcp.write_all(bytes).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue, // an answer (a GOAWAY, a 408…) before the close
            Err(_) => return None,
        }
    }
}

async fn cut(node: &Node, listener: &str, reason: &str) -> f64 {
    node.metric_labelled(
        "grouter_connections_cut_total",
        &format!("listener=\"{listener}\",reason=\"{reason}\""),
    )
    .await
    .unwrap_or(0.0)
}

/// HTTP/2's connection preface and an empty SETTINGS frame.
const PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test]
async fn slow_http2_and_admin_clients_are_cut_within_their_timeouts() {
    let bus = NatsServer::start();
    let node = Node::builder("lon-1", "lon")
        .nats(&bus.url())
        .proxy_option("request_header_timeout_secs = 1\nidle_timeout_secs = 2")
        .start()
        .await;
    let nats = bus.client().await;
    let msg = json!({"host": "10.0.0.1", "port": 1, "uris": ["app.example.com"], "app": "a"});
    node.register_until_routed(&nats, &msg, "app.example.com")
        .await;
    let (http, admin) = (node.http_addr(), node.admin_addr());
    // Each must be cut after its timeout (1 s for heads, 2 s idle), and well before 3× it.
    let within = |d: Option<Duration>, at_least: Duration, what: &str| {
        let d = d.unwrap_or_else(|| panic!("{what}: still open"));
        assert!(
            d >= at_least.mul_f32(0.9) && d < at_least * 3,
            "{what}: closed after {d:?}"
        );
    };
    let tries = [
        // A partial preface, held by the HTTP/1.1 parser (it could still be a request line)…
        ("partial preface (h1 parser)", &b"PRI * HTT"[..], SEC),
        // … and past it, held by HTTP/2's.
        ("partial preface (h2)", &b"PRI * HTTP/2.0\r\n\r\nS"[..], SEC),
        // The preface and SETTINGS, then silence: no first request.
        ("preface without a request", PREFACE_AND_SETTINGS, SEC),
        (
            "partial request head",
            &b"GET / HTTP/1.1\r\nHost: app.exa"[..],
            SEC,
        ),
        ("silent connection", &b""[..], SEC),
    ];
    // Run concurrently: the cuts are the node's timers, not the test's.
    let runs = tries.map(|(what, bytes, at_least)| async move {
        (what, closed_after(http, bytes, 10 * SEC).await, at_least)
    });
    for (what, took, at_least) in futures::future::join_all(runs).await {
        within(took, at_least, what);
    }
    assert_eq!(cut(&node, "http", "head_timeout").await, 5.0);

    // An HTTP/2 connection that served a request, then sits idle: GOAWAY and closed after the
    // idle timeout.
    let tcp = TcpStream::connect(http).await.expect("connect");
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    let ended = tokio::spawn(conn);
    let resp = h2
        .send_request(
            http::Request::get("http://app.example.com/")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), 200);
    drop(resp);
    let idle_from = Instant::now();
    tokio::time::timeout(10 * SEC, ended)
        .await
        .expect("the idle HTTP/2 connection was closed")
        .expect("join")
        .expect("closed cleanly, with GOAWAY");
    within(Some(idle_from.elapsed()), 2 * SEC, "idle HTTP/2");
    assert_eq!(cut(&node, "http", "idle_timeout").await, 1.0);

    // The admin listener: a partial head, a partial preface.
    let admin_tries = [
        ("partial admin head", &b"GET /healthz HTTP/1.1\r\nHo"[..]),
        ("partial admin preface", &b"PRI * HTTP/2.0\r\n"[..]),
    ];
    for (what, bytes) in admin_tries {
        within(closed_after(admin, bytes, 10 * SEC).await, SEC, what);
    }
    assert_eq!(cut(&node, "admin", "head_timeout").await, 2.0);
    // And it still answers.
    assert_eq!(node.get("/healthz").await.expect("healthz").0, 200);
}

#[tokio::test]
async fn idle_sockets_up_to_the_limit_leave_healthz_and_the_mesh_working() {
    let ca = MeshCa::new();
    let (bus, peer_bus) = (NatsServer::start(), NatsServer::start());
    const LIMIT: usize = 8;
    let node = Node::builder("lon-1", "lon")
        .nats(&bus.url())
        .mesh(&ca, &[])
        .proxy_option(&format!(
            "max_connections = {LIMIT}\nrequest_header_timeout_secs = 60"
        ))
        .admin_option("max_connections = 4")
        .mesh_option("max_connections = 16")
        .start()
        .await;
    let peer = Node::builder("nyc-1", "nyc")
        .nats(&peer_bus.url())
        .mesh(&ca, &[node.mesh_addr()])
        .start()
        .await;
    let limit = |listener: &str| {
        let node = &node;
        let listener = listener.to_string();
        async move {
            node.metric_labelled(
                "grouter_connection_limit",
                &format!("listener=\"{listener}\""),
            )
            .await
        }
    };
    assert_eq!(limit("http").await, Some(LIMIT as f64));
    assert_eq!(limit("https").await, Some(LIMIT as f64));
    assert_eq!(limit("admin").await, Some(4.0));
    assert_eq!(limit("mesh").await, Some(16.0));

    // Fill the proxy with idle connections.
    let mut idle = Vec::new();
    for _ in 0..LIMIT {
        idle.push(TcpStream::connect(node.http_addr()).await.expect("connect"));
    }
    wait_until(5 * SEC, "every idle connection held", || async {
        let open = node
            .metric_labelled("grouter_connections_open", "listener=\"http\"")
            .await?;
        (open == LIMIT as f64).then_some(())
    })
    .await;
    // The next one is closed at once, and counted.
    let refused_in = closed_after(node.http_addr(), b"", 5 * SEC)
        .await
        .expect("the connection over the limit was closed");
    assert!(refused_in < 2 * SEC, "{refused_in:?}");
    assert_eq!(cut(&node, "http", "over_limit").await, 1.0);
    // Meanwhile /healthz answers and the mesh still syncs: a route registered at nyc
    // arrives here.
    assert_eq!(node.get("/healthz").await.expect("healthz").0, 200);
    let nats = peer_bus.client().await;
    let msg = json!({"host": "10.0.0.2", "port": 2, "uris": ["new.example.com"], "app": "n"});
    wait_until(10 * SEC, "the peer's new route", || async {
        nats.publish("router.register", msg.to_string().into())
            .await
            .ok()?;
        nats.flush().await.ok()?;
        node.route("new.example.com", "").await.map(|_| ())
    })
    .await;
    wait_until(10 * SEC, "in_sync with the peer", || async {
        (node.sync_state().await == "in_sync").then_some(())
    })
    .await;
    // Once the idle ones go, the proxy serves again.
    drop(idle);
    wait_until(5 * SEC, "the slots freed", || async {
        let resp = raw(
            node.http_addr(),
            b"GET / HTTP/1.1\r\nHost: new.example.com\r\nConnection: close\r\n\r\n",
        )
        .await;
        resp.starts_with("HTTP/1.1 200").then_some(())
    })
    .await;

    // The admin listener has its own limit: idle sockets there refuse the next one too.
    let mut admin_idle = Vec::new();
    for _ in 0..4 {
        admin_idle.push(
            TcpStream::connect(node.admin_addr())
                .await
                .expect("connect"),
        );
    }
    let refused = wait_until(
        5 * SEC,
        "an admin connection over the limit closed",
        || async { closed_after(node.admin_addr(), b"", SEC).await },
    )
    .await;
    assert!(refused < SEC, "{refused:?}");
    drop(admin_idle);
    wait_until(5 * SEC, "admin answering again", || async {
        (node.get("/healthz").await.ok()?.0 == 200).then_some(())
    })
    .await;
    assert!(cut(&node, "admin", "over_limit").await >= 1.0);

    // A mesh connection that never finishes its handshake is cut and counted.
    let took = closed_after(node.mesh_addr(), b"", 10 * SEC).await;
    assert!(took.is_some_and(|d| d < 5 * SEC), "{took:?}");
    assert_eq!(cut(&node, "mesh", "handshake_timeout").await, 1.0);
    let _ = peer;
}

/// The cipher suite `openssl s_client` got from `addr`, offering `args`' suites in its own
/// order of preference.
async fn negotiated_cipher(addr: SocketAddr, args: &[&str]) -> String {
    let openssl = grouter_tests::find_program("openssl", "apt-get install -y openssl");
    let out = tokio::time::timeout(
        10 * SEC,
        tokio::process::Command::new(openssl)
            .args([
                "s_client",
                "-connect",
                &addr.to_string(),
                "-servername",
                "app.example.com",
            ])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("openssl s_client in time")
    .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            l.split_once(", Cipher is ")
                .map(|(_, c)| c.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no cipher in s_client's output:\n{text}"))
}

#[tokio::test]
async fn the_server_chooses_the_cipher_suite_and_slow_handshakes_are_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate().expect("key"); // ECDSA P-256
    let cert = rcgen::CertificateParams::new(vec!["app.example.com".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    let (pem, key_pem, certs) = (
        dir.path().join("default.pem"),
        dir.path().join("default.key"),
        dir.path().join("certs"),
    );
    std::fs::write(&pem, cert.pem()).expect("write cert");
    std::fs::write(&key_pem, key.serialize_pem()).expect("write key");
    std::fs::create_dir(&certs).expect("cert dir");
    let bus = NatsServer::start();
    let node = Node::builder("lon-1", "lon")
        .nats(&bus.url())
        .https(&certs, &pem, &key_pem)
        .proxy_option("tls_handshake_timeout_secs = 1")
        .start()
        .await;
    let https = node.https_addr();

    // Whatever order the client prefers, the server's first suite it offers wins: AES-256-GCM
    // before AES-128-GCM before ChaCha20 (rustls's order), on TLS 1.2 and 1.3 alike.
    for offered in [
        "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256",
    ] {
        let got = negotiated_cipher(https, &["-tls1_2", "-cipher", offered]).await;
        assert_eq!(got, "ECDHE-ECDSA-AES256-GCM-SHA384", "offered {offered}");
    }
    let got = negotiated_cipher(
        https,
        &[
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256",
        ],
    )
    .await;
    assert_eq!(got, "ECDHE-ECDSA-AES128-GCM-SHA256");
    let got = negotiated_cipher(
        https,
        &[
            "-tls1_3",
            "-ciphersuites",
            "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384",
        ],
    )
    .await;
    assert_eq!(got, "TLS_AES_256_GCM_SHA384");

    // A client that opens a connection and never says hello is cut after 1 s.
    let took = closed_after(https, b"", 10 * SEC).await.expect("cut");
    assert!(took >= SEC.mul_f32(0.9) && took < 3 * SEC, "{took:?}");
    assert_eq!(cut(&node, "https", "handshake_timeout").await, 1.0);
}

/// A GoRouter that accepts a request and never answers (paused, or an app that hangs where
/// the GoRouter waits longer) holds no request forever: past
/// `gorouters.response_timeout_secs` the client gets 502 `endpoint_failure (timeout)`, on
/// the fast path, the general path and HTTP/2 alike, and the request is not sent again.
#[tokio::test]
async fn a_gorouter_that_never_answers_gets_502_after_the_response_timeout() {
    let bus = NatsServer::start();
    let node = Node::builder("lon-1", "lon")
        .nats(&bus.url())
        .gorouters_option("response_timeout_secs = 1")
        .start()
        .await;
    let reg = grouter_tests::inproc::registration("10.0.0.1", 61000, "slow.example.com", "slow");
    node.register_until_routed(&bus.client().await, &reg, "slow.example.com")
        .await;
    let stub = node.stub.as_ref().expect("the node's own stand-in");
    let timed_out = |what: &str, status: u16, why: Option<&str>, took: Duration| {
        assert_eq!(status, 502, "{what}");
        assert_eq!(why, Some("endpoint_failure (timeout)"), "{what}");
        assert!(
            took >= SEC && took < 4 * SEC,
            "{what}: answered after {took:?}"
        );
    };

    // The fast path, then the general path (a chunked body), each to /delay/6000.
    for (what, request) in [
        (
            "fast path",
            &b"GET /delay/6000 HTTP/1.1\r\nHost: slow.example.com\r\nConnection: close\r\n\r\n"[..],
        ),
        (
            "general path",
            b"POST /delay/6000 HTTP/1.1\r\nHost: slow.example.com\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        ),
    ] {
        let before = stub.requests();
        let started = Instant::now();
        let resp = raw(node.http_addr(), request).await;
        let took = started.elapsed();
        let status = resp
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        timed_out(what, status, header(&resp, "x-cf-routererror"), took);
        assert_eq!(stub.requests() - before, 1, "{what}: sent once, never again");
    }
    // HTTP/2 (a bodiless stream goes to the GoRouter as bytes).
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve("slow.example.com", node.http_addr())
        .build()
        .expect("client");
    let started = Instant::now();
    let resp = h2
        .get("http://slow.example.com/delay/6000")
        .timeout(10 * SEC)
        .send()
        .await
        .expect("h2 request");
    let why = resp
        .headers()
        .get("x-cf-routererror")
        .and_then(|v| v.to_str().ok());
    timed_out("HTTP/2", resp.status().as_u16(), why, started.elapsed());
    // An answer within the timeout is untouched.
    let resp = raw(
        node.http_addr(),
        b"GET /delay/200 HTTP/1.1\r\nHost: slow.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}
