//! HTTP/1.1 on the wire through a node: pipelining, every response framing, interim
//! responses, a GoRouter that closes kept-alive connections, and the hand-over from the fast
//! path to the general one in the middle of a connection. The GoRouter here is scripted
//! byte by byte, so the framings are exactly the ones under test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use grouter_tests::{NatsServer, Node, wait_until};
use parking_lot::Mutex;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SEC: Duration = Duration::from_secs(1);

/// What the scripted GoRouter received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A GoRouter stand-in answering from a script; optionally it closes every connection after
/// one response, without saying so (as a GoRouter whose idle timeout fired would). The
/// node's health probes (`/health`) are answered but not recorded.
struct Scripted {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start(close_after_each: bool) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (log, count) = (seen.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(Self::serve(
                    tcp,
                    log.clone(),
                    count.clone(),
                    close_after_each,
                ));
            }
        });
        Scripted {
            addr,
            seen,
            connections,
        }
    }

    /// Serve one connection; it counts in `connections` unless it only carried health
    /// probes.
    async fn serve(
        mut tcp: TcpStream,
        log: Arc<Mutex<Vec<Seen>>>,
        connections: Arc<AtomicUsize>,
        close_after_each: bool,
    ) {
        let mut buf = Vec::new();
        let mut counted = false;
        loop {
            let Some(req) = read_request(&mut tcp, &mut buf).await else {
                return;
            };
            if !counted && req.path != "/health" {
                counted = true;
                connections.fetch_add(1, Ordering::SeqCst);
            }
            let (answer, then_close) = script(&req);
            if req.path != "/health" {
                log.lock().push(req);
            }
            if tcp.write_all(&answer).await.is_err() || then_close || close_after_each {
                return;
            }
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }
}

/// The scripted answers, by path: the raw bytes and whether the connection closes after.
fn script(req: &Seen) -> (Vec<u8>, bool) {
    let plain = |body: &[u8]| {
        let mut r =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        r.extend_from_slice(body);
        r
    };
    match req.path.as_str() {
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n".to_vec(),
            false,
        ),
        // HEAD gets the head a GET would, without the body.
        "/len" if req.method == "HEAD" => (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n".to_vec(), false),
        "/len" => (plain(b"abc"), false),
        "/echo" => (plain(&req.body), false),
        "/hints" => (
            [b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n".as_slice(), &plain(b"ok")].concat(),
            false,
        ),
        "/until-close" => (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close".to_vec(), true),
        _ => (plain(b"ok"), false),
    }
}

/// Parsed headers as owned (name, value) pairs.
fn owned(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

/// Read one request (head and `Content-Length` or chunked body).
async fn read_request(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Seen> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = req.parse(buf) {
            let headers = owned(req.headers);
            let len = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse::<usize>().ok())
                .unwrap_or(0);
            let chunked = headers
                .iter()
                .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
            let (method, path) = (req.method?.to_string(), req.path?.to_string());
            buf.drain(..n);
            let body = if chunked {
                read_chunked(tcp, buf).await?
            } else {
                while buf.len() < len {
                    read_more(tcp, buf).await?;
                }
                buf.drain(..len).collect()
            };
            return Some(Seen {
                method,
                path,
                headers,
                body,
            });
        }
        read_more(tcp, buf).await?;
    }
}

/// A chunked body (without trailers), decoded.
async fn read_chunked(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            read_more(tcp, buf).await?;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).ok()?.trim(), 16).ok()?;
        buf.drain(..line_end + 2);
        while buf.len() < size + 2 {
            read_more(tcp, buf).await?;
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
        if size == 0 {
            return Some(body);
        }
    }
}

async fn read_more(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 8192];
    match tcp.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

/// A response as the client got it (a chunked body decoded).
#[derive(Debug)]
struct Got {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Read one response from `tcp` (`head`: it answers a HEAD request).
async fn read_response(tcp: &mut TcpStream, buf: &mut Vec<u8>, head: bool) -> Got {
    let deadline = tokio::time::Instant::now() + 10 * SEC;
    let (status, headers, n) = loop {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut hs);
        if let Ok(httparse::Status::Complete(n)) = resp.parse(buf) {
            let headers = owned(resp.headers);
            break (resp.code.expect("status"), headers, n);
        }
        assert!(
            more(tcp, buf, deadline).await,
            "closed before a head: {:?}",
            String::from_utf8_lossy(buf)
        );
    };
    buf.drain(..n);
    let mut got = Got {
        status,
        headers,
        body: Vec::new(),
    };
    if head || status == 204 || status == 304 {
        return got;
    }
    if got
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                assert!(more(tcp, buf, deadline).await, "closed mid-body");
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .expect("chunk size");
            buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers up to the empty line.
                loop {
                    if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                        buf.drain(..i + 2);
                        if i == 0 {
                            return got;
                        }
                        continue;
                    }
                    assert!(more(tcp, buf, deadline).await, "closed in the trailers");
                }
            }
            while buf.len() < size + 2 {
                assert!(more(tcp, buf, deadline).await, "closed mid-chunk");
            }
            got.body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
        }
    }
    if let Some(len) = got
        .header("content-length")
        .map(|v| v.parse::<usize>().expect("length"))
    {
        while buf.len() < len {
            assert!(more(tcp, buf, deadline).await, "closed mid-body");
        }
        got.body = buf.drain(..len).collect();
        return got;
    }
    // Delimited by the close.
    while more(tcp, buf, deadline).await {}
    got.body = std::mem::take(buf);
    got
}

/// Read more before `deadline` (or fail the test); `false` at end of stream.
async fn more(tcp: &mut TcpStream, buf: &mut Vec<u8>, deadline: tokio::time::Instant) -> bool {
    tokio::time::timeout_at(deadline, read_more_or_eof(tcp, buf))
        .await
        .expect("the response in time")
}

/// `false` at end of stream.
async fn read_more_or_eof(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match tcp.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// A node of site `lon` whose one GoRouter is `gorouter`, serving `app.example.com`.
async fn node_for(bus: &NatsServer, gorouter: SocketAddr) -> Node {
    let node = Node::builder("lon-1", "lon")
        .nats(&bus.url())
        .gorouters(&[gorouter])
        .start()
        .await;
    let client = bus.client().await;
    let msg = json!({"host": "10.0.0.1", "port": 8080, "uris": ["app.example.com"], "app": "a"});
    node.register_until_routed(&client, &msg, "app.example.com")
        .await;
    node
}

#[tokio::test]
async fn pipelined_requests_and_every_response_framing_pass_through_in_order() {
    let bus = NatsServer::start();
    let gorouter = Scripted::start(false).await;
    let node = node_for(&bus, gorouter.addr).await;

    // Nine requests in one write. The fifth is for an unknown host (404, answered by the
    // general path, which then serves the rest of the connection).
    let requests = concat!(
        "GET /chunked HTTP/1.1\r\nHost: app.example.com\r\nConnection: keep-alive\r\n\r\n",
        "HEAD /len HTTP/1.1\r\nHost: app.example.com\r\n\r\n",
        "GET /len HTTP/1.1\r\nHost: app.example.com\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n",
        "POST /echo HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 5\r\n\r\nhello",
        "GET / HTTP/1.1\r\nHost: nowhere.example.com\r\n\r\n",
        "GET /hints HTTP/1.1\r\nHost: app.example.com\r\n\r\n",
        "POST /echo HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "GET /len HTTP/1.1\r\nHost: app.example.com\r\n\r\n",
        "GET /chunked HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n",
    );
    let mut tcp = TcpStream::connect(node.http_addr()).await.expect("connect");
    tcp.write_all(requests.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let mut got = Vec::new();
    for head in [false, true, false, false, false, false, false, false, false] {
        got.push(read_response(&mut tcp, &mut buf, head).await);
    }
    let summary: Vec<(u16, String)> = got
        .iter()
        .map(|g| (g.status, String::from_utf8_lossy(&g.body).into_owned()))
        .collect();
    let expected: Vec<(u16, String)> = [
        (200, "hello world"),
        (200, ""),
        (200, "abc"),
        (200, "hello"),
        (
            404,
            "404 Not Found: Requested route ('nowhere.example.com') does not exist.\n",
        ),
        (200, "ok"),
        (200, "abc"),
        (200, "abc"),
        (200, "hello world"),
    ]
    .into_iter()
    .map(|(s, b)| (s, b.to_string()))
    .collect();
    assert_eq!(summary, expected);
    for g in &got {
        assert_eq!(g.header("x-grouter-site"), Some("lon"), "{g:?}");
    }
    assert_eq!(
        got[1].header("content-length"),
        Some("3"),
        "HEAD keeps the length"
    );
    assert_eq!(got[4].header("x-cf-routererror"), Some("unknown_route"));
    assert_eq!(got[8].header("connection"), Some("close"));
    // `Connection: close` is honoured: the node closes after the last response.
    assert!(
        !read_more_or_eof(&mut tcp, &mut buf).await,
        "the node closed the connection"
    );

    // The GoRouter got every forwarded request, in order, with the contract's headers.
    let seen = gorouter.seen();
    let paths: Vec<(&str, &str)> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.path.as_str()))
        .collect();
    assert_eq!(
        paths,
        [
            ("GET", "/chunked"),
            ("HEAD", "/len"),
            ("GET", "/len"),
            ("POST", "/echo"),
            ("GET", "/hints"),
            ("POST", "/echo"),
            ("GET", "/len"),
            ("GET", "/chunked"),
        ]
    );
    for s in &seen {
        assert_eq!(s.header("host"), Some("app.example.com"), "{s:?}");
        assert_eq!(s.header("x-forwarded-proto"), Some("http"), "{s:?}");
        assert_eq!(
            s.header("x-vcap-request-id").map(str::len),
            Some(36),
            "{s:?}"
        );
        assert!(
            s.header("x-request-start")
                .is_some_and(|v| v.parse::<u128>().is_ok()),
            "{s:?}"
        );
        assert!(
            s.header("connection").is_none(),
            "hop-by-hop headers stay: {s:?}"
        );
    }
    assert_eq!(seen[0].header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(
        seen[2].header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(seen[3].body, b"hello");
    assert_eq!(seen[5].body, b"abc", "a chunked request body arrives whole");
    // One upstream connection for the client connection, and one more once the general
    // path took over.
    assert_eq!(gorouter.connections.load(Ordering::SeqCst), 2);

    // Every request has its access log line.
    let line = node
        .log
        .wait_for(5 * SEC, "the access line of the first request", |l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["target"] == "grouter::access" && v["path"] == "/chunked").then_some(v)
        });
    assert_eq!(line["host"], "app.example.com", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["decision"], "local", "{line}");
    assert_eq!(line["served_by"], "lon", "{line}");
    assert_eq!(line["attempts"], 1, "{line}");
    assert_eq!(line["upstream"], gorouter.addr.to_string(), "{line}");
    assert!(
        line["duration_ms"].as_f64().is_some_and(|d| d > 0.0),
        "{line}"
    );
    wait_until(5 * SEC, "nine access lines", || async {
        (node.log.count("grouter::access") >= 9).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_gorouter_closing_kept_alive_connections_costs_no_client_error() {
    let bus = NatsServer::start();
    let gorouter = Scripted::start(true).await;
    let node = node_for(&bus, gorouter.addr).await;
    let mut tcp = TcpStream::connect(node.http_addr()).await.expect("connect");
    let mut buf = Vec::new();
    // The GoRouter closes after every response: each request finds its kept-alive upstream
    // connection closed, including the ones that are not safe to resend.
    for i in 0..5 {
        let body = format!("body {i}");
        let req = format!(
            "POST /echo HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: {}\r\n\r\n{body}GET /len HTTP/1.1\r\nHost: app.example.com\r\n\r\n",
            body.len()
        );
        tcp.write_all(req.as_bytes()).await.expect("write");
        let post = read_response(&mut tcp, &mut buf, false).await;
        assert_eq!(
            (post.status, post.body.as_slice()),
            (200, body.as_bytes()),
            "{post:?}"
        );
        let get = read_response(&mut tcp, &mut buf, false).await;
        assert_eq!(
            (get.status, get.body.as_slice()),
            (200, b"abc".as_slice()),
            "{get:?}"
        );
    }
    assert_eq!(
        gorouter.connections.load(Ordering::SeqCst),
        10,
        "a fresh connection per request"
    );

    // A body delimited by the GoRouter's close reaches the client whole, marked so, and
    // the client connection closes after it.
    tcp.write_all(b"GET /until-close HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
        .await
        .expect("write");
    let got = read_response(&mut tcp, &mut buf, false).await;
    assert_eq!(
        (got.status, got.body.as_slice()),
        (200, b"until close".as_slice())
    );
    assert_eq!(got.header("connection"), Some("close"));
}

#[tokio::test]
async fn http2_streams_reach_the_gorouter_as_http1_with_every_framing() {
    let bus = NatsServer::start();
    let gorouter = Scripted::start(false).await;
    let node = node_for(&bus, gorouter.addr).await;
    // The host in the URL (`:authority`), not in a Host header too: a Host that differs
    // from `:authority` is refused (CONTRACT.md "Edge rules").
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve("app.example.com", node.http_addr())
        .build()
        .expect("client");
    let url = |path: &str| format!("http://app.example.com{path}");
    let get = |path: &'static str| {
        let req = h2.get(url(path));
        async move {
            let resp = req.send().await.expect("response");
            assert_eq!(resp.version(), reqwest::Version::HTTP_2);
            let status = resp.status().as_u16();
            let site = resp.headers().get("x-grouter-site").cloned();
            let te = resp.headers().get("transfer-encoding").cloned();
            let body = resp.text().await.expect("body");
            assert_eq!(
                site.as_ref().map(|v| v.as_bytes()),
                Some(&b"lon"[..]),
                "{path}"
            );
            assert!(te.is_none(), "no HTTP/1.1 framing in HTTP/2: {path}");
            (status, body)
        }
    };
    // Chunked, by length, after an interim 103, and delimited by the GoRouter's close: each
    // arrives whole, the chunked one decoded.
    assert_eq!(get("/chunked").await, (200, "hello world".to_string()));
    assert_eq!(get("/len").await, (200, "abc".to_string()));
    assert_eq!(get("/hints").await, (200, "ok".to_string()));
    assert_eq!(get("/until-close").await, (200, "until close".to_string()));
    assert_eq!(get("/len").await, (200, "abc".to_string()));
    let head = h2
        .head(url("/len"))
        .header("host", "app.example.com")
        .send()
        .await
        .expect("HEAD");
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "3");
    // Connections are kept: one up to the response the GoRouter closed, one after it.
    assert_eq!(gorouter.connections.load(Ordering::SeqCst), 2);
    // Concurrent streams, each answered right.
    let many = futures::future::join_all((0..20).map(|_| get("/chunked"))).await;
    assert!(
        many.iter().all(|r| r == &(200, "hello world".to_string())),
        "{many:?}"
    );

    // What the GoRouter got: HTTP/1.1 with the Host and the contract's headers.
    let seen = gorouter.seen();
    assert_eq!(seen.len(), 26, "{seen:?}");
    for s in &seen {
        assert_eq!(s.header("host"), Some("app.example.com"), "{s:?}");
        assert_eq!(s.header("x-forwarded-for"), Some("127.0.0.1"), "{s:?}");
        assert_eq!(s.header("x-forwarded-proto"), Some("http"), "{s:?}");
        assert_eq!(
            s.header("x-vcap-request-id").map(str::len),
            Some(36),
            "{s:?}"
        );
    }
    // At most one more per concurrent stream.
    let opened = gorouter.connections.load(Ordering::SeqCst);
    assert!(opened <= 22, "{opened} connections");
}
