//! `grouter-standin`: a GoRouter stand-in, an HTTP server on a loopback port that answers for
//! every app of its site and tells where a request landed. `grouter demo` runs one per site
//! (the `grouter-standin` binary, as a child process) in place of a Cloud Foundry
//! foundation; the integration tests run it in process ([`StandIn`]).
//!
//! - `GET /health` → 200 `ok` (503 after [`StandIn::set_healthy`]`(false)`).
//! - `GET /bytes/N` → N bytes, streamed in 64 KiB chunks.
//! - `POST /consume` → reads the body as a stream and answers with its length.
//! - `GET /delay/MS` → answers after MS milliseconds (at most 60 s): a request in flight.
//! - `/eof-once/KEY` → the first time KEY arrives as the first request of a connection,
//!   the connection is closed without an answer (a GoRouter closing a connection it has
//!   just accepted); after that, answered as anything else. [`StandIn::eof_count`] counts
//!   the closes.
//! - `GET /connection-named` → a response whose `Connection` header names `X-Hop` (which
//!   it carries, with `X-App: kept`).
//! - A WebSocket upgrade → echoes every message, text prefixed with the site.
//! - Anything else → 200 JSON `{site, host, method, path, query, headers}`.
//!
//! Every response carries `X-Stub-Site: <site>`.
//!
//! It owns nothing of GRouter's and depends on no GRouter crate: it is what GRouter forwards
//! to, so the product can be tested against it without linking it (the product crate must
//! not depend on this one, nor on its WebSocket library).
//!
//! Must never: buffer a body whole, or outlive its [`StandIn`] (dropping it stops the
//! listener and cuts every open connection, as a GoRouter that dies would).

#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Size of the chunks `/bytes/N` streams.
const CHUNK: usize = 64 * 1024;
/// Header naming the stand-in's site on every response.
const SITE_HEADER: &str = "x-stub-site";

type Body = BoxBody<Bytes, std::io::Error>;

#[derive(Debug)]
struct State {
    site: String,
    /// `site` as a header value (`x` when the site cannot be one).
    site_header: HeaderValue,
    healthy: AtomicBool,
    requests: AtomicUsize,
    /// `/eof-once/` keys already closed on.
    eof_keys: parking_lot::Mutex<HashSet<String>>,
    eofs: AtomicUsize,
    accepted: AtomicUsize,
}

/// A running stand-in; stops when dropped.
#[derive(Debug)]
pub struct StandIn {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl StandIn {
    /// Start a stand-in for a GoRouter of `site` on a loopback port of the system's choosing.
    pub async fn start(site: &str) -> std::io::Result<StandIn> {
        Self::start_on(site, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Start a stand-in for a GoRouter of `site` listening on `addr`.
    pub async fn start_on(site: &str, addr: SocketAddr) -> std::io::Result<StandIn> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            site: site.to_string(),
            site_header: HeaderValue::from_str(site)
                .unwrap_or_else(|_| HeaderValue::from_static("x")),
            healthy: AtomicBool::new(true),
            requests: AtomicUsize::new(0),
            eof_keys: parking_lot::Mutex::new(HashSet::new()),
            eofs: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
        });
        let task = tokio::spawn(serve(listener, state.clone()));
        Ok(StandIn { addr, state, task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The site it stands in for.
    pub fn site(&self) -> &str {
        &self.state.site
    }

    /// Make `/health` answer 200 (true) or 503 (false).
    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Stop serving: the port closes and open connections are cut.
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Requests served other than health checks.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Connections closed without an answer by `/eof-once/`.
    pub fn eof_count(&self) -> usize {
        self.state.eofs.load(Ordering::Relaxed)
    }

    /// Connections accepted so far (health checks' included).
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accept connections until aborted.
async fn serve(listener: TcpListener, state: Arc<State>) {
    // Connections live in this set: aborting the task drops the set, which aborts them too,
    // as a GoRouter that dies would cut them.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            // Out of descriptors or a connection reset before accept: keep serving.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        state.accepted.fetch_add(1, Ordering::Relaxed);
        // Reap finished connections so the set does not grow without bound.
        while conns.try_join_next().is_some() {}
        let state = state.clone();
        conns.spawn(async move {
            // Requests this connection has carried: `/eof-once/` closes only a fresh one.
            let carried = Arc::new(AtomicUsize::new(0));
            let service = service_fn(move |req: Request<Incoming>| {
                let (state, carried) = (state.clone(), carried.clone());
                async move {
                    let first = carried.fetch_add(1, Ordering::Relaxed) == 0;
                    if first
                        && let Some(key) = req.uri().path().strip_prefix("/eof-once/")
                        && state.eof_keys.lock().insert(key.to_string())
                    {
                        state.eofs.fetch_add(1, Ordering::Relaxed);
                        // An error from the service: hyper closes the connection without
                        // writing a byte of a response.
                        return Err(std::io::Error::other("closed on purpose"));
                    }
                    Ok(handle(&state, req).await)
                }
            });
            // A client that goes away mid-request is not the stand-in's problem.
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn full(status: StatusCode, state: &State, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert(SITE_HEADER, state.site_header.clone());
    r
}

async fn handle(s: &State, mut req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path == "/health" {
        return if s.healthy.load(Ordering::Relaxed) {
            full(StatusCode::OK, s, "ok")
        } else {
            full(StatusCode::SERVICE_UNAVAILABLE, s, "unhealthy")
        };
    }
    s.requests.fetch_add(1, Ordering::Relaxed);
    let upgrade = req.headers().get(header::UPGRADE);
    if upgrade.is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket")) {
        return websocket(s, &mut req);
    }
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        return bytes(s, n);
    }
    if let Some(ms) = path
        .strip_prefix("/delay/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms.min(60_000))).await;
        return full(StatusCode::OK, s, format!("delayed {ms} ms"));
    }
    if path == "/connection-named" {
        let mut r = full(StatusCode::OK, s, "named");
        let h = r.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("X-Hop"));
        h.insert("x-hop", HeaderValue::from_static("hop-by-hop"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        return r;
    }
    if path == "/consume" {
        let mut body = req.into_body();
        let mut total: u64 = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => total += f.data_ref().map_or(0, |d| d.len() as u64),
                Err(_) => return full(StatusCode::BAD_REQUEST, s, "body failed"),
            }
        }
        return full(StatusCode::OK, s, total.to_string());
    }
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or_default())))
        .collect();
    let body = json!({
        "site": s.site,
        "host": req.headers().get(header::HOST).and_then(|h| h.to_str().ok()),
        "method": req.method().as_str(),
        "path": path,
        "query": req.uri().query(),
        "headers": headers,
    });
    let mut r = full(StatusCode::OK, s, body.to_string());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `n` bytes of `x`, streamed in [`CHUNK`]s.
fn bytes(s: &State, n: usize) -> Response<Body> {
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let chunks = (0..n.div_ceil(CHUNK)).map(move |i| {
        let len = CHUNK.min(n - i * CHUNK);
        Ok::<_, std::io::Error>(Frame::data(chunk.slice(..len)))
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(futures::stream::iter(
        chunks,
    ))));
    r.headers_mut().insert(SITE_HEADER, s.site_header.clone());
    r
}

/// Accept a WebSocket upgrade and echo messages on a task of their own.
fn websocket(s: &State, req: &mut Request<Incoming>) -> Response<Body> {
    let Some(key) = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()))
    else {
        return full(StatusCode::BAD_REQUEST, s, "no key");
    };
    let upgrade = hyper::upgrade::on(req);
    let site = s.site.clone();
    tokio::spawn(async move {
        let Ok(io) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(io),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            let reply = match msg {
                Message::Text(t) => Message::text(format!("{site}: {t}")),
                Message::Binary(b) => Message::Binary(b),
                Message::Close(_) => break,
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
    });
    let mut r = full(StatusCode::SWITCHING_PROTOCOLS, s, Bytes::new());
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&key) {
        h.insert("sec-websocket-accept", v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_with_its_site_and_health() {
        let stand_in = StandIn::start("lon").await.unwrap();
        let addr = stand_in.addr();
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build_http::<Full<Bytes>>();
        let get = |path: &str| {
            let req = Request::get(format!("http://{addr}{path}"))
                .header(header::HOST, "shop.apps.example.com")
                .body(Full::new(Bytes::new()))
                .unwrap();
            client.request(req)
        };
        let resp = get("/a?b=c").await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[SITE_HEADER], "lon");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["site"], "lon");
        assert_eq!(v["host"], "shop.apps.example.com");
        assert_eq!(v["query"], "b=c");
        assert_eq!(get("/health").await.unwrap().status(), 200);
        stand_in.set_healthy(false);
        assert_eq!(get("/health").await.unwrap().status(), 503);
        assert_eq!(stand_in.requests(), 1, "health checks are not counted");
        let resp = get("/bytes/70000").await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 70_000);
    }
}
