//! The general path, client side: hyper's server for every connection the HTTP/1.1 fast
//! path does not keep (HTTP/2 from clients and from peers, and what `super::h1` hands
//! over), its streams run in the connection's own task (`super::inline`). A request is
//! decided, and one that goes upstream is forwarded through [`super::forward`] with
//! [`General`], the codec that picks the upstream protocol per target: HTTP/2 streams
//! without a body to a GoRouter as bytes (`super::h2`), other requests to a GoRouter through
//! hyper's HTTP/1.1 client (`super::upstream`), and requests to other sites over the mesh
//! (`super::remote`). Here too: the proxy's own answers, the site header, WebSocket
//! upgrades joined after 101, and the access log line.
//!
//! Must never: put internals in a response body, or hold a lock across an `.await`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::access::Facts;
use super::body::{ProxyBody, Reclaimable};
use super::decide::{self, Decision};
use super::error::{self, AttemptError, AttemptKind, Replay, RouterError};
use super::forward::{
    Access, AccessLine, Codec, Conn, Forwarded, Served, Target, decision_name, forward,
};
use super::headers::{
    MAX_HEADER_BYTES, TraceId, host_of, is_upgrade, request_head, strip_hop_by_hop,
    upstream_headers,
};
use super::{Proxy, SITE_HEADER, body, h2, inline};
use crate::limits::{Cut, Watchdog};

/// Serve a connection with hyper (HTTP/1.1 or HTTP/2, by what the client speaks) until it
/// ends or `shutdown`, then drain it. The first request must arrive by `first_by` (a
/// partial HTTP/2 preface or request head is cut then); an HTTP/2 connection without
/// streams for the idle timeout is cut (GOAWAY first); later HTTP/1.1 heads have hyper's
/// header timeout. Every cut is counted on the connection's listener.
pub(super) async fn serve_conn<S>(
    proxy: Arc<Proxy>,
    io: S,
    conn: Conn,
    shutdown: CancellationToken,
    first_by: tokio::time::Instant,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let timeouts = proxy.edge.timeouts;
    let conn = Arc::new(conn);
    // Requests received: the watchdog's one signal of progress (no clock per request).
    let requests = Arc::new(AtomicU64::new(0));
    let service = {
        let (proxy, conn, requests) = (proxy.clone(), conn.clone(), requests.clone());
        service_fn(move |req| {
            requests.fetch_add(1, Ordering::Relaxed);
            let (proxy, conn) = (proxy.clone(), conn.clone());
            // Boxed: each HTTP/2 stream is a future of its own, and a small one moves cheaply.
            let handled: Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>> =
                Box::pin(handle(proxy, req, conn));
            async move { Ok::<_, Infallible>(handled.await) }
        })
    };
    let streams = inline::Inline::default();
    let mut builder = auto::Builder::new(streams.clone());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.request_header)
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
    let mut dog = Watchdog::new(&timeouts, first_by);
    let check = tokio::time::sleep_until(dog.next_check());
    tokio::pin!(check);
    let stats = proxy.edge.listener(&conn);
    let res = loop {
        tokio::select! {
            res = &mut driven => break res,
            () = &mut check => {
                let Some(cut) = dog.check(requests.load(Ordering::Relaxed), driven.streams()) else {
                    check.as_mut().reset(dog.next_check());
                    continue;
                };
                debug!(client = %conn.client, reason = cut.as_str(), "connection timed out");
                stats.cut(cut);
                if cut == Cut::IdleTimeout
                    && let Some(served) = driven.connection()
                {
                    // HTTP/2 without streams: GOAWAY, then close, but never wait long.
                    served.graceful_shutdown();
                    let _ = tokio::time::timeout(timeouts.request_header, &mut driven).await;
                }
                return; // dropping the connection closes it
            }
            () = shutdown.cancelled() => {
                // Drain: finish the requests in flight, accept no new ones on this connection.
                if let Some(served) = driven.connection() {
                    served.graceful_shutdown();
                }
                break (&mut driven).await;
            }
        }
    };
    if let Err(err) = res {
        match err.downcast_ref::<hyper::Error>() {
            Some(e) if e.is_timeout() => {
                // hyper's header timeout on HTTP/1.1: a partial head, or an idle keep-alive.
                let first = requests.load(Ordering::Relaxed) == 0;
                stats.cut(if first {
                    Cut::HeadTimeout
                } else {
                    Cut::IdleTimeout
                });
            }
            Some(e) if e.is_parse() => proxy.edge.malformed(),
            _ => {}
        }
        debug!(client = %conn.client, %err, "connection ended with an error");
    }
}

/// One request: decide, answer or forward, then the site header and the access log.
async fn handle(
    proxy: Arc<Proxy>,
    mut req: Request<Incoming>,
    conn: Arc<Conn>,
) -> Response<ProxyBody> {
    let started = proxy.access_log.then(Instant::now);
    let client_upgrade = is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let facts = proxy.wants_facts().then(|| Facts::of(&parts));
    let host = host_of(&parts).unwrap_or_default();
    let path = parts.uri.path();
    let ask = decide::Ask {
        scheme: conn.scheme,
        host,
        path,
        query: parts.uri.query(),
        from_peer: conn.peer.is_some(),
        host_conflict: super::edge::host_conflict(&parts),
    };
    let (decision, route) = proxy.decide(ask, true);
    let mut log = Access::new(decision_name(&decision));
    // The other site that answered, if one did; else this site answered.
    let mut served_by = None;
    let mut resp = match &decision {
        Decision::EmptyHost => {
            proxy.edge.refused(&decision);
            own_error(&mut log, &RouterError::EmptyHost)
        }
        Decision::InvalidHost(_) => {
            proxy.edge.refused(&decision);
            own_error(&mut log, &RouterError::InvalidHost)
        }
        Decision::NotFound => own_error(&mut log, &RouterError::UnknownRoute(host.to_string())),
        Decision::NoEndpoints => own_error(&mut log, &RouterError::NoEndpoints(host.to_string())),
        Decision::Redirect { location, .. } => error::redirect(location),
        Decision::AcmeChallenge(answer) => error::acme_challenge(answer.as_deref()),
        Decision::Local { .. } | Decision::FailOpen | Decision::Remote { .. } => {
            let targets = proxy.targets(&decision, route.as_ref());
            let mut codec = General::new(&proxy, &parts, body, &conn, host);
            let forwarded = forward(&proxy.gorouters, targets, false, &mut codec, &mut log).await;
            log.trace = codec.trace;
            match forwarded {
                Forwarded::Response(resp) => {
                    served_by = super::edge::served_by(&log.upstream);
                    resp
                }
                Forwarded::Failed | Forwarded::Handoff => {
                    RouterError::EndpointFailure(log.failure).response()
                }
            }
        }
    };
    if let Some(client_upgrade) = client_upgrade
        && resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
    {
        bridge_upgrade(client_upgrade, &mut resp);
    }
    // Counted by the site that answered (this one unless another site's node did).
    let answered = served_by.as_ref().and_then(|v| v.to_str().ok());
    proxy.traffic.count(
        answered.unwrap_or(&proxy.rules.site),
        resp.status().as_u16(),
    );
    // Always ours: this site, or the site whose node we sent the request to; never an app's.
    if proxy.site_header {
        let site = served_by.unwrap_or_else(|| proxy.site.clone());
        resp.headers_mut().insert(SITE_HEADER, site);
    } else {
        resp.headers_mut().remove(SITE_HEADER);
    }
    if proxy.access_log {
        let served = resp
            .headers()
            .get(SITE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let line = AccessLine {
            served_by: served,
            conn: &conn,
            host,
            path,
            route: route.as_ref(),
            status: resp.status().as_u16(),
            started: started.unwrap_or_else(Instant::now),
            facts: facts.as_ref(),
            sent: resp.body().size_hint().exact().unwrap_or(0),
        };
        proxy.log_access(&line, &log);
    }
    resp
}

fn own_error(log: &mut Access, err: &RouterError) -> Response<ProxyBody> {
    log.router_error = err.code();
    log.failure = err.reason();
    err.response()
}

/// The general path's codec: one request, sent to each target in the protocol it takes.
struct General<'a> {
    proxy: &'a Proxy,
    parts: &'a http::request::Parts,
    conn: &'a Conn,
    host: &'a str,
    upgrade: bool,
    idempotent: bool,
    bodiless: bool,
    path_and_query: &'a str,
    /// The trace id the request went upstream with.
    trace: TraceId,
    /// A bodiless HTTP/2 stream goes to a GoRouter as bytes on the connection's own set.
    h2_head: Option<Vec<u8>>,
    /// The upstream header map, made when a target needs it: a stream the byte way never
    /// does.
    prepared: Option<HeaderMap>,
    incoming: Option<Incoming>,
    body: Option<Reclaimable>,
}

impl<'a> General<'a> {
    fn new(
        proxy: &'a Proxy,
        parts: &'a http::request::Parts,
        body: Incoming,
        conn: &'a Conn,
        host: &'a str,
    ) -> Self {
        let bodiless = body.is_end_stream();
        // The key matters only for methods not idempotent by themselves: GETs skip the scan.
        let idempotent = error::is_idempotent(parts.method.as_str(), false)
            || parts
                .headers
                .keys()
                .any(|n| error::is_idempotency_key(n.as_str()));
        let mut trace = TraceId::default();
        let h2_head = (parts.version == Version::HTTP_2 && bodiless).then(|| {
            let (head, id) = request_head(parts, conn.headers(&proxy.policy), &proxy.policy, host);
            trace = id;
            head
        });
        General {
            proxy,
            parts,
            conn,
            host,
            upgrade: is_upgrade(&parts.headers),
            idempotent,
            bodiless,
            path_and_query: parts.uri.path_and_query().map_or("/", |pq| pq.as_str()),
            trace,
            h2_head,
            prepared: None,
            incoming: Some(body),
            body: None,
        }
    }

    fn headers(&mut self) -> HeaderMap {
        let (parts, conn, host, upgrade) = (self.parts, self.conn, self.host, self.upgrade);
        let policy = &self.proxy.policy;
        let trace = &mut self.trace;
        self.prepared
            .get_or_insert_with(|| {
                let (h, id) =
                    upstream_headers(&parts.headers, conn.headers(policy), policy, host, upgrade);
                *trace = id;
                h
            })
            .clone()
    }

    fn body(&mut self) -> Reclaimable {
        let incoming = &mut self.incoming;
        self.body
            .get_or_insert_with(|| {
                Reclaimable::new(incoming.take().map_or_else(body::empty, body::boxed))
            })
            .clone()
    }

    async fn gorouter(
        &mut self,
        i: usize,
        fresh: bool,
    ) -> Result<Response<ProxyBody>, AttemptError> {
        let proxy = self.proxy;
        let Some(gorouter) = proxy.gorouters.all().get(i) else {
            return Err(AttemptError::new(AttemptKind::NotSent, "no such gorouter"));
        };
        let addr = &gorouter.addr;
        proxy
            .gorouters
            .bounded(addr, self.gorouter_try(i, addr, fresh))
            .await
    }

    async fn gorouter_try(
        &mut self,
        i: usize,
        addr: &str,
        fresh: bool,
    ) -> Result<Response<ProxyBody>, AttemptError> {
        if let Some(head) = &self.h2_head {
            let head_method = self.parts.method == Method::HEAD;
            return h2::send(&self.conn.streams, i, addr, head, head_method, fresh).await;
        }
        let affine = self.parts.version <= Version::HTTP_11 && !self.upgrade;
        // On its own connection a request goes in origin form; the pool needs the address
        // in the URI (and sends origin form itself).
        let uri = if affine {
            self.path_and_query.parse::<Uri>()
        } else {
            format!("http://{addr}{}", self.path_and_query).parse::<Uri>()
        };
        let uri = uri.map_err(|e| AttemptError::new(AttemptKind::Request, e))?;
        let (headers, body) = (self.headers(), self.body());
        let req = build(&self.parts.method, uri, Version::HTTP_11, headers, body);
        // The rarer ways' futures are boxed, so that a stream's (boxed once per HTTP/2
        // stream) stays small.
        let resp = if affine {
            Box::pin(self.conn.affinity.send(addr, req, fresh)).await?
        } else {
            Box::pin(self.proxy.gorouters.send_pooled(req)).await?
        };
        Ok(downstream(resp))
    }

    async fn site(
        &mut self,
        site: &Arc<str>,
        any_node: bool,
        served: &mut Served,
    ) -> Result<Response<ProxyBody>, AttemptError> {
        let Some(remotes) = &self.proxy.remotes else {
            return Err(AttemptError::new(AttemptKind::NoNode, "not in a mesh"));
        };
        let uri = format!("https://{}{}", self.host, self.path_and_query)
            .parse::<Uri>()
            .map_err(|e| AttemptError::new(AttemptKind::Request, e))?;
        let (mut headers, body) = (self.headers(), self.body());
        let sent = if self.upgrade {
            // HTTP/1.1 to the peer: origin-form URI with the Host header.
            let origin: Uri = self
                .path_and_query
                .parse()
                .unwrap_or_else(|_| Uri::from_static("/"));
            if let Ok(v) = HeaderValue::from_str(self.host) {
                headers.insert(header::HOST, v);
            }
            let req = build(&self.parts.method, origin, Version::HTTP_11, headers, body);
            Box::pin(remotes.send_upgrade(site, req, any_node)).await
        } else {
            headers.remove(header::HOST);
            let req = build(&self.parts.method, uri, Version::HTTP_2, headers, body);
            Box::pin(remotes.send(site, req, any_node)).await
        };
        let (resp, node) = sent?;
        if self.proxy.access_log {
            *served = Served::Node(site.clone(), node);
        }
        Ok(downstream(resp))
    }
}

impl Codec for General<'_> {
    type Response = Response<ProxyBody>;

    fn replay(&self) -> Replay {
        Replay {
            idempotent: self.idempotent,
            whole: self.bodiless || self.body.as_ref().is_none_or(Reclaimable::unread),
        }
    }

    async fn send(
        &mut self,
        target: &Target,
        fresh: bool,
        served: &mut Served,
    ) -> Result<Response<ProxyBody>, AttemptError> {
        match target {
            Target::GoRouter(i) => self.gorouter(*i, fresh).await,
            Target::Site(site) => self.site(site, fresh, served).await,
        }
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

/// Prepare an upstream response for the client.
fn downstream(resp: Response<Incoming>) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    if parts.status != http::StatusCode::SWITCHING_PROTOCOLS {
        strip_hop_by_hop(&mut parts.headers);
    }
    Response::from_parts(parts, body::boxed(body))
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
