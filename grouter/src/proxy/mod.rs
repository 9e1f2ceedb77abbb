//! The data plane: HTTP/1.1 and HTTP/2 listeners (plain and TLS), requests forwarded by peers
//! over the mesh, the routing decision ([`decide`]), forwarding with retries, header rules,
//! WebSocket upgrades and the access log.
//!
//! - [`decide`]: the decision, pure.
//! - [`upstream`]: this site's GoRouters (pools, health, ejection).
//! - [`remote`]: other sites' nodes over the mesh.
//! - [`error`]: what the proxy answers itself.
//!
//! Forwarding: a request decided `Local` goes to the GoRouters (round-robin among the
//! healthy), then to the other sites serving the route; `Remote` goes to the serving sites
//! best first. At most 3 attempts. A target that could not be connected to is always
//! skipped (the body is taken back unread); a failure after sending is retried only for
//! idempotent requests without a body. Bodies stream both ways; nothing is buffered whole.
//!
//! Must never: hold a lock across an `.await`, forward a peer's request onward, or put
//! internals in a response body.

pub mod decide;
pub mod error;
mod h1;
mod h2;
mod inline;
pub mod remote;
pub mod upstream;
mod wire;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::node::NodeState;
use decide::{Decision, Rules};
use error::{AttemptError, AttemptKind, Replay, RouterError};
use remote::Remotes;
use upstream::{GoRouters, ProxyBody, Reclaimable};

/// Most attempts for one request (gorouter's `max_attempts`).
const MAX_ATTEMPTS: usize = 3;
/// Time a client has to send its request headers (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Request header buffer: larger headers get 431.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 20_000;
/// Header telling which site served.
const SITE_HEADER: &str = "x-grouter-site";

/// The proxy of one node.
#[derive(Debug)]
pub struct Proxy {
    node: Arc<NodeState>,
    rules: Rules,
    gorouters: Arc<GoRouters>,
    remotes: Option<Remotes>,
    site: HeaderValue,
    site_header: bool,
    access_log: bool,
}

/// How a connection reached us.
#[derive(Debug)]
struct Conn {
    client: SocketAddr,
    /// The client's address as `X-Forwarded-For` names it (IPv4-mapped IPv6 as IPv4),
    /// formatted once per connection.
    ip: Box<str>,
    scheme: &'static str,
    /// A peer forwarded this over the mesh: route locally only, keep its forwarding headers.
    peer: Option<String>,
    /// This client connection's own upstream connection (HTTP/1.1 only).
    affinity: Affinity,
    /// This client connection's idle GoRouter connections for its HTTP/2 streams.
    streams: h2::Streams,
}

impl Conn {
    fn new(client: SocketAddr, scheme: &'static str, peer: Option<String>) -> Conn {
        Conn {
            client,
            ip: client_ip(client).to_string().into(),
            scheme,
            peer,
            affinity: Affinity::default(),
            streams: h2::Streams::default(),
        }
    }
}

/// An HTTP/1.1 client sends one request at a time, so its connection can keep one upstream
/// connection of its own: no pool checkout, no lock shared with other connections. The
/// sender is taken out while a request uses it and put back when the response head arrives
/// (its next request waits in `ready()` until the body has been sent on).
#[derive(Debug, Default, Clone)]
struct Affinity(Arc<parking_lot::Mutex<Option<(String, Upstream)>>>);

/// One HTTP/1.1 connection to a GoRouter.
type Upstream = hyper::client::conn::http1::SendRequest<Reclaimable>;

impl Proxy {
    /// A proxy for `node`; `remotes` when the node is in a mesh.
    pub fn new(
        node: Arc<NodeState>,
        rules: Rules,
        gorouters: Arc<GoRouters>,
        remotes: Option<Remotes>,
        site_header: bool,
        access_log: bool,
    ) -> Arc<Proxy> {
        let site = HeaderValue::from_str(&rules.site)
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Arc::new(Proxy {
            node,
            rules,
            gorouters,
            remotes,
            site,
            site_header,
            access_log,
        })
    }

    async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        conn: Arc<Conn>,
    ) -> Response<ProxyBody> {
        let started = self.access_log.then(Instant::now);
        let client_upgrade = is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let host = host_of(&parts).unwrap_or_default();
        let path = parts.uri.path();
        let ask = decide::Ask {
            scheme: conn.scheme,
            host,
            path,
            query: parts.uri.query(),
            from_peer: conn.peer.is_some(),
        };
        let (decision, route) =
            decide::decide(&self.node.table, &self.rules, self.node.sync(), ask);
        let mut log = Access {
            decision: decision_name(&decision),
            upstream: String::new(),
            attempts: 0,
            error: "",
        };
        let mut resp = match &decision {
            Decision::EmptyHost => self.own_error(&mut log, RouterError::EmptyHost),
            Decision::NotFound => {
                self.own_error(&mut log, RouterError::UnknownRoute(host.to_string()))
            }
            Decision::Redirect { location, .. } => error::redirect(location),
            Decision::Local { also } => {
                let targets = self.local_targets(also);
                self.forward(&parts, body, &conn, host, targets, &mut log)
                    .await
            }
            Decision::FailOpen => {
                let targets = self.local_targets(&[]);
                self.forward(&parts, body, &conn, host, targets, &mut log)
                    .await
            }
            Decision::Remote { sites } => {
                let targets = sites.iter().map(|s| Target::Site(s.to_string())).collect();
                self.forward(&parts, body, &conn, host, targets, &mut log)
                    .await
            }
        };
        if let Some(client_upgrade) = client_upgrade
            && resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
        {
            bridge_upgrade(client_upgrade, &mut resp);
        }
        if self.site_header && !resp.headers().contains_key(SITE_HEADER) {
            resp.headers_mut().insert(SITE_HEADER, self.site.clone());
        } else if !self.site_header {
            resp.headers_mut().remove(SITE_HEADER);
        }
        if self.access_log {
            let served = resp
                .headers()
                .get(SITE_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            self.log_access(&AccessLine {
                served_by: served,
                conn: &conn,
                host,
                path,
                route: route.as_ref(),
                decision: log.decision,
                status: resp.status().as_u16(),
                upstream: &log.upstream,
                attempts: log.attempts,
                router_error: log.error,
                started: started.unwrap_or_else(Instant::now),
            });
        }
        resp
    }

    /// One access log line (target `grouter::access`).
    fn log_access(&self, a: &AccessLine<'_>) {
        info!(
            target: "grouter::access",
            site = %self.rules.site,
            served_by = %a.served_by,
            client = %a.conn.client,
            peer = a.conn.peer.as_deref().unwrap_or(""),
            scheme = a.conn.scheme,
            host = %a.host,
            path = %a.path,
            route = a.route.map(|m| format!("{}{}", m.host, m.path)).unwrap_or_default(),
            decision = a.decision,
            status = a.status,
            upstream = %a.upstream,
            attempts = a.attempts,
            router_error = a.router_error,
            duration_ms = a.started.elapsed().as_secs_f64() * 1000.0,
            "access"
        );
    }

    fn own_error(&self, log: &mut Access, err: RouterError) -> Response<ProxyBody> {
        log.error = err.code();
        err.response()
    }

    fn local_targets(&self, also: &[Arc<str>]) -> Vec<Target> {
        let mut t: Vec<Target> = self
            .gorouters
            .order()
            .into_iter()
            .map(Target::GoRouter)
            .collect();
        t.extend(also.iter().map(|s| Target::Site(s.to_string())));
        t
    }

    /// Try `targets` in order (at most [`MAX_ATTEMPTS`]).
    async fn forward(
        &self,
        parts: &http::request::Parts,
        body: Incoming,
        conn: &Conn,
        host: &str,
        targets: Vec<Target>,
        log: &mut Access,
    ) -> Response<ProxyBody> {
        let upgrade = is_upgrade(&parts.headers);
        let mut prepared: Option<HeaderMap> = None;
        let idempotent = error::is_idempotent(parts.method.as_str());
        let bodiless = body.is_end_stream();
        // A bodiless HTTP/2 stream goes to a GoRouter as bytes on the connection's own set.
        let h2_head = (parts.version == Version::HTTP_2 && body.is_end_stream())
            .then(|| h2::request_head(parts, conn, host));
        // Made when a target needs it: a stream the fast way never does.
        let mut incoming = Some(body);
        let mut body: Option<Reclaimable> = None;
        let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        // The rarer ways' futures are boxed, so that this one (boxed once per HTTP/2
        // stream) stays small.
        for target in targets.into_iter().take(MAX_ATTEMPTS) {
            log.attempts += 1;
            // A bodiless HTTP/2 stream to a GoRouter is written as bytes; the rest needs the
            // upstream header map.
            let raw_router = match (&h2_head, &target) {
                (Some(_), Target::GoRouter(i)) => Some(*i),
                _ => None,
            };
            let mut headers = if raw_router.is_some() {
                HeaderMap::new()
            } else {
                prepared
                    .get_or_insert_with(|| upstream_headers(&parts.headers, conn, host, upgrade))
                    .clone()
            };
            let result = match &target {
                Target::GoRouter(i) => {
                    let Some(gorouter) = self.gorouters.all().get(*i) else {
                        continue;
                    };
                    let addr = &gorouter.addr;
                    if self.access_log {
                        log.upstream.clone_from(addr);
                    }
                    if let (Some(head), Some(router)) = (&h2_head, raw_router) {
                        let head_method = parts.method == Method::HEAD;
                        match h2::send(&conn.streams, router, addr, head, head_method).await {
                            Ok(resp) => Ok(resp),
                            Err(e) => {
                                if e.ejects() {
                                    self.gorouters.eject(gorouter);
                                    warn!(gorouter = %addr, error = %e, "gorouter refused the connection; trying the next target");
                                } else {
                                    warn!(gorouter = %addr, error = %e, "gorouter request failed");
                                }
                                Err(e)
                            }
                        }
                    } else {
                        let affine = parts.version <= Version::HTTP_11 && !upgrade;
                        // On its own connection a request goes in origin form; the pool needs
                        // the address in the URI (and sends origin form itself).
                        let uri = if affine {
                            path_and_query.parse::<Uri>()
                        } else {
                            format!("http://{addr}{path_and_query}").parse::<Uri>()
                        };
                        let Ok(uri) = uri else {
                            break;
                        };
                        let body = body.get_or_insert_with(|| reclaimable(incoming.take()));
                        let req =
                            build(&parts.method, uri, Version::HTTP_11, headers, body.clone());
                        let sent = if affine {
                            Box::pin(send_affine(
                                &conn.affinity,
                                addr,
                                req,
                                body,
                                bodiless,
                                idempotent,
                            ))
                            .await
                        } else {
                            Box::pin(self.gorouters.client().request(req))
                                .await
                                .map_err(|e| {
                                    let kind = if e.is_connect() {
                                        AttemptKind::Connect
                                    } else {
                                        AttemptKind::Request
                                    };
                                    AttemptError::new(kind, e)
                                })
                        };
                        match sent {
                            Ok(resp) => Ok(self.downstream(resp)),
                            Err(e) => {
                                if e.ejects() {
                                    self.gorouters.eject(gorouter);
                                    warn!(gorouter = %addr, error = %e, "gorouter refused the connection; trying the next target");
                                } else {
                                    warn!(gorouter = %addr, error = %e, "gorouter request failed");
                                }
                                Err(e)
                            }
                        }
                    }
                }
                Target::Site(site) => {
                    let Some(remotes) = &self.remotes else {
                        continue;
                    };
                    let scheme = "https";
                    let Ok(uri) = format!("{scheme}://{host}{path_and_query}").parse::<Uri>()
                    else {
                        break;
                    };
                    let body = body.get_or_insert_with(|| reclaimable(incoming.take()));
                    let sent = if upgrade {
                        // HTTP/1.1 to the peer: origin-form URI with the Host header.
                        let origin: Uri = path_and_query
                            .parse()
                            .unwrap_or_else(|_| Uri::from_static("/"));
                        if let Ok(v) = HeaderValue::from_str(host) {
                            headers.insert(header::HOST, v);
                        }
                        let req = build(
                            &parts.method,
                            origin,
                            Version::HTTP_11,
                            headers,
                            body.clone(),
                        );
                        Box::pin(remotes.send_upgrade(site, req)).await
                    } else {
                        headers.remove(header::HOST);
                        let req = build(&parts.method, uri, Version::HTTP_2, headers, body.clone());
                        Box::pin(remotes.send(site, req)).await
                    };
                    match sent {
                        Ok((resp, node)) => {
                            log.upstream = format!("{site}/{node}");
                            Ok(self.downstream(resp))
                        }
                        Err(e) => {
                            log.upstream = site.clone();
                            warn!(site = %site, error = %e, "remote site failed; trying the next target");
                            Err(e)
                        }
                    }
                }
            };
            match result {
                Ok(resp) => return resp,
                Err(e) => {
                    let unread = bodiless || body.as_ref().is_none_or(Reclaimable::unread);
                    let replay = Replay {
                        idempotent,
                        bodiless,
                        whole: unread,
                        unsent: unread,
                    };
                    if !e.retry_elsewhere(replay) {
                        break;
                    }
                }
            }
        }
        log.error = RouterError::EndpointFailure.code();
        RouterError::EndpointFailure.response()
    }

    /// Prepare an upstream response for the client.
    fn downstream(&self, resp: Response<Incoming>) -> Response<ProxyBody> {
        let (mut parts, body) = resp.into_parts();
        if parts.status != http::StatusCode::SWITCHING_PROTOCOLS {
            strip_hop_by_hop(&mut parts.headers);
        }
        Response::from_parts(parts, upstream::boxed(body))
    }
}

/// Send `req` to `addr` on the client connection's own upstream connection, opening one
/// when there is none (or it is to another GoRouter, or closed). A reused connection that the
/// GoRouter closed while idle (the classic keep-alive race) is replaced once, when
/// [`AttemptError::retry_fresh`] allows.
async fn send_affine(
    affinity: &Affinity,
    addr: &str,
    req: Request<Reclaimable>,
    body: &Reclaimable,
    bodiless: bool,
    idempotent: bool,
) -> Result<Response<Incoming>, AttemptError> {
    let cached = affinity
        .0
        .lock()
        .take()
        .filter(|(a, s)| a == addr && !s.is_closed());
    let reused = cached.is_some();
    let mut sender = match cached {
        Some((_, s)) => s,
        None => open_upstream(addr).await?,
    };
    // Keep a copy of the request head in case the reused connection turns out dead.
    let (method, uri, headers) = (
        req.method().clone(),
        req.uri().clone(),
        req.headers().clone(),
    );
    let failed = |e: hyper::Error, reused: bool| {
        let kind = if reused {
            AttemptKind::IdleClosed
        } else {
            AttemptKind::Request
        };
        AttemptError::new(kind, e)
    };
    let result = match sender.ready().await {
        Ok(()) => sender.send_request(req).await,
        Err(e) => Err(e),
    };
    let result = match result.map_err(|e| failed(e, reused)) {
        Err(e)
            if {
                let unread = bodiless || body.unread();
                let replay = Replay {
                    idempotent,
                    bodiless,
                    whole: unread,
                    unsent: unread,
                };
                e.retry_fresh(replay)
            } =>
        {
            debug!(gorouter = %addr, error = %e, "idle upstream connection was closed; opening a new one");
            sender = open_upstream(addr).await?;
            sender.ready().await.map_err(|e| failed(e, false))?;
            sender
                .send_request(build(&method, uri, Version::HTTP_11, headers, body.clone()))
                .await
                .map_err(|e| failed(e, false))
        }
        other => other,
    };
    let resp = result?;
    affinity.0.lock().replace((addr.to_string(), sender));
    Ok(resp)
}

async fn open_upstream(
    addr: &str,
) -> Result<hyper::client::conn::http1::SendRequest<Reclaimable>, AttemptError> {
    let tcp = wire::connect(addr)
        .await
        .map_err(|e| AttemptError::new(AttemptKind::Connect, e))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| AttemptError::new(AttemptKind::Connect, e))?;
    tokio::spawn(async move {
        if let Err(err) = conn.await {
            debug!(%err, "upstream connection ended");
        }
    });
    Ok(sender)
}

#[derive(Debug)]
enum Target {
    /// Index into [`GoRouters::all`].
    GoRouter(usize),
    Site(String),
}

/// What one access log line says.
struct AccessLine<'a> {
    served_by: &'a str,
    conn: &'a Conn,
    host: &'a str,
    path: &'a str,
    route: Option<&'a crate::table::RouteMatch>,
    decision: &'static str,
    status: u16,
    upstream: &'a str,
    attempts: usize,
    router_error: &'static str,
    started: Instant,
}

struct Access {
    decision: &'static str,
    upstream: String,
    attempts: usize,
    error: &'static str,
}

fn decision_name(d: &Decision) -> &'static str {
    match d {
        Decision::Local { .. } => "local",
        Decision::Remote { .. } => "remote",
        Decision::Redirect { .. } => "redirect",
        Decision::FailOpen => "fail_open",
        Decision::NotFound => "unknown_route",
        Decision::EmptyHost => "empty_host",
    }
}

fn build(
    method: &Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Reclaimable,
) -> Request<Reclaimable> {
    let mut req = Request::new(body);
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    req
}

/// The request's host: the Host header, or the URI's authority (HTTP/2).
fn host_of(parts: &http::request::Parts) -> Option<&str> {
    parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(http::uri::Authority::as_str))
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named by Connection are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for h in &named {
        headers.remove(h);
    }
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
}

/// The headers sent upstream (CONTRACT.md): Host unchanged; `X-Forwarded-For` appended and
/// `X-Forwarded-Proto` set from the client connection (a peer's request keeps what the first
/// node set); `X-Request-Start` and `X-Vcap-Request-Id` set when absent; hop-by-hop headers
/// dropped, except the upgrade pair of an upgrade request.
fn upstream_headers(incoming: &HeaderMap, conn: &Conn, host: &str, upgrade: bool) -> HeaderMap {
    let mut h = incoming.clone();
    strip_hop_by_hop(&mut h);
    if upgrade {
        if let Some(u) = incoming.get(header::UPGRADE) {
            h.insert(header::UPGRADE, u.clone());
        }
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if !h.contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(host)
    {
        h.insert(header::HOST, v);
    }
    if conn.peer.is_none() {
        let ip = &conn.ip;
        let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
            _ => ip.to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            h.insert("x-forwarded-for", v);
        }
        h.insert("x-forwarded-proto", HeaderValue::from_static(conn.scheme));
    }
    if !h.contains_key("x-request-start") {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        if let Ok(v) = HeaderValue::from_str(&ms.to_string()) {
            h.insert("x-request-start", v);
        }
    }
    if !h.contains_key("x-vcap-request-id")
        && let Ok(v) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
    {
        h.insert("x-vcap-request-id", v);
    }
    h
}

fn client_ip(addr: SocketAddr) -> IpAddr {
    match addr.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        ip => ip,
    }
}

/// A request body that can go to the next target while unread.
fn reclaimable(body: Option<Incoming>) -> Reclaimable {
    Reclaimable::new(body.map_or_else(upstream::empty, upstream::boxed))
}

/// Join the client's upgraded connection to the upstream's, both ways, once both are ready.
fn bridge_upgrade(client: hyper::upgrade::OnUpgrade, resp: &mut Response<ProxyBody>) {
    let Some(upstream) = resp.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return;
    };
    tokio::spawn(async move {
        match tokio::try_join!(client, upstream) {
            Ok((c, u)) => {
                let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                if let Err(err) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                    debug!(%err, "upgraded connection ended");
                }
            }
            Err(err) => debug!(%err, "upgrade failed"),
        }
    });
}

/// Serve plain HTTP on `listener` until `shutdown`, then drain.
pub async fn serve_http(proxy: Arc<Proxy>, listener: TcpListener, shutdown: CancellationToken) {
    serve(proxy, listener, None, shutdown).await;
}

/// Serve HTTPS (HTTP/1.1 and HTTP/2 by ALPN) on `listener` until `shutdown`, then drain.
pub async fn serve_https(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) {
    serve(
        proxy,
        listener,
        Some(tokio_rustls::TlsAcceptor::from(tls)),
        shutdown,
    )
    .await;
}

async fn serve(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let scheme = if tls.is_some() { "https" } else { "http" };
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let (tcp, client) = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(err) => {
                    warn!(%err, "proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (proxy, tls, shutdown) = (proxy.clone(), tls.clone(), shutdown.clone());
        tracker.spawn(async move {
            let _permit = permit;
            let conn = Conn::new(client, scheme, None);
            match tls {
                None => h1::serve(proxy, tcp, conn, shutdown).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) if stream.get_ref().1.alpn_protocol() == Some(b"h2") => {
                            serve_conn(proxy, stream, conn, shutdown).await;
                        }
                        Ok(Ok(stream)) => h1::serve(proxy, stream, conn, shutdown).await,
                        Ok(Err(err)) => debug!(%client, %err, "tls handshake failed"),
                        Err(_) => debug!(%client, "tls handshake timed out"),
                    }
                }
            }
        });
    }
    // Refuse new connections at once (load balancers see it), then let the open ones finish.
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// Serve requests that peers forward over the mesh, until `shutdown`.
pub async fn serve_peers(
    proxy: Arc<Proxy>,
    mut conns: tokio::sync::mpsc::Receiver<crate::mesh::PeerHttp>,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    loop {
        let peer = tokio::select! {
            () = shutdown.cancelled() => break,
            p = conns.recv() => match p {
                Some(p) => p,
                None => break,
            },
        };
        let client = peer
            .stream
            .get_ref()
            .0
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let conn = Conn::new(client, "https", Some(peer.peer.node_id.clone()));
        tracker.spawn(serve_conn(
            proxy.clone(),
            peer.stream,
            conn,
            shutdown.clone(),
        ));
    }
    tracker.close();
    tracker.wait().await;
}

async fn serve_conn<S>(proxy: Arc<Proxy>, io: S, conn: Conn, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let conn = Arc::new(conn);
    let service = service_fn(move |req| {
        let (proxy, conn) = (proxy.clone(), conn.clone());
        // Boxed: each HTTP/2 stream is a future of its own, and a small one moves cheaply.
        let handled: Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>> =
            Box::pin(proxy.handle(req, conn));
        async move { Ok::<_, Infallible>(handled.await) }
    });
    let streams = inline::Inline::default();
    let mut builder = auto::Builder::new(streams.clone());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .initial_stream_window_size(1024 * 1024)
        .initial_connection_window_size(4 * 1024 * 1024);
    let served = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let mut driven = inline::Driven::new(served, streams);
    tokio::select! {
        res = &mut driven => if let Err(err) = res {
            debug!(%err, "connection ended with an error");
        },
        () = shutdown.cancelled() => {
            // Drain: finish the requests in flight, accept no new ones on this connection.
            if let Some(served) = driven.connection() {
                served.graceful_shutdown();
            }
            if let Err(err) = driven.await {
                debug!(%err, "connection ended with an error while draining");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_headers_follow_the_contract() {
        let mut incoming = HeaderMap::new();
        incoming.insert(header::HOST, HeaderValue::from_static("shop.example.com"));
        incoming.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        incoming.insert("x-vcap-request-id", HeaderValue::from_static("keep-me"));
        incoming.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        incoming.insert("x-secret", HeaderValue::from_static("hop"));
        let client: SocketAddr = "10.9.8.7:5555".parse().unwrap();
        let conn = Conn::new(client, "https", None);
        let h = upstream_headers(&incoming, &conn, "shop.example.com", false);
        assert_eq!(h[header::HOST], "shop.example.com");
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.9.8.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-vcap-request-id"], "keep-me");
        assert!(
            h["x-request-start"]
                .to_str()
                .unwrap()
                .parse::<u128>()
                .is_ok()
        );
        assert!(!h.contains_key(header::CONNECTION) && !h.contains_key("x-secret"));
        // A fresh request gets an id; a peer's request keeps its forwarding headers.
        let mut fresh = HeaderMap::new();
        fresh.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        let peer = Conn::new(client, "https", Some("lon-1".into()));
        let h = upstream_headers(&fresh, &peer, "h2.example.com", false);
        assert_eq!(
            h[header::HOST],
            "h2.example.com",
            "HTTP/2's authority becomes the Host"
        );
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key("x-forwarded-for"));
        assert_eq!(h["x-vcap-request-id"].len(), 36);
    }

    #[test]
    fn upgrade_requests_keep_their_upgrade_headers() {
        let mut incoming = HeaderMap::new();
        incoming.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        incoming.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&incoming));
        let conn = Conn::new("127.0.0.1:1".parse().unwrap(), "http", None);
        let h = upstream_headers(&incoming, &conn, "ws.example.com", true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }
}
