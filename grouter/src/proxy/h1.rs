//! The HTTP/1.1 fast path: a client's HTTP/1.1 request for a route served at this site goes
//! to a local GoRouter on the client connection's own upstream connection, in the
//! connection's one task. The request and response heads are rewritten into a buffer and
//! bodies pass through as they are framed: no per-request task, channel, pool or header map.
//!
//! Only the plain case is taken: `HTTP/1.1`, origin-form target, one Host, no
//! `Transfer-Encoding`, `Expect` or `Upgrade`, a `Content-Length` body of at most
//! [`MAX_BUFFERED_BODY`], a decision of `Local` or `FailOpen` and a usable GoRouter that
//! accepts the connection. Anything else (another site, a redirect, a 404, an upgrade, a
//! streamed or chunked request body, HTTP/1.0, a malformed or oversized head, a GoRouter
//! refusing the connection) hands the connection, with every byte already read, to the
//! general path ([`super::server::serve_conn`], hyper) for the rest of its life. Each of those
//! behaviours so has one implementation.
//!
//! Must never: forward a byte past the end of a message, reuse an upstream connection
//! whose state is unknown, or answer a request the general path would answer differently.

use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::access::Facts;
use super::decide::{self, Decision};
use super::error::{self, AttemptError, AttemptKind, Replay, RouterError};
use super::forward::{
    Access, AccessLine, Codec, Conn, Forwarded, Served, Target, decision_name, forward,
};
use super::headers::{Copier, MAX_HEADER_BYTES, TraceId, put_header};
use super::server::serve_conn;
use super::upstream::GoRouters;
use super::wire::{
    Chunked, Framing, Part, READ_CHUNK, ResponseHead, Upstream, connect, parse_length,
    response_head, round_trip,
};
use super::{Proxy, SITE_HEADER};
use crate::limits::{Cut, Timeouts, check_period};
use crate::table::RouteMatch;

/// Request bodies up to this size are read whole before forwarding (larger ones stream
/// through the general path).
pub(super) const MAX_BUFFERED_BODY: usize = 64 * 1024;
/// Headers per message the fast path parses (more: the general path).
const MAX_HEADERS: usize = 100;
/// How long a client has to send a buffered body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// The read buffer an idle connection waits with, once its buffers were shed: most request
/// heads fit.
const IDLE_READ: usize = 2048;
/// Response body bytes written together with the head; more go in their own write.
const COALESCE: usize = 16 * 1024;

/// Serve an HTTP/1.1 client connection: the fast path while requests fit it, then the
/// general path.
pub(super) async fn serve<S>(proxy: Arc<Proxy>, mut io: S, conn: Conn, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut c = Connection {
        buf: BytesMut::with_capacity(READ_CHUNK),
        out: Vec::with_capacity(1024),
        head: Vec::with_capacity(1024),
        up: None,
    };
    let mut patience = Patience::new(&proxy.edge.timeouts, Instant::now());
    let end = c
        .run(&proxy, &conn, &mut io, &mut patience, &shutdown)
        .await;
    // A GoRouter connection still held is in a known state (whole responses only): another
    // client connection may have it.
    if let Some(up) = c.up.take() {
        proxy.gorouters.park(up);
    }
    match end {
        End::Close => close(io).await,
        End::Gone => {}
        End::Fallback => {
            // The general path takes the connection with every byte read and not yet used;
            // a head still being read keeps its deadline.
            let first_by = patience.head_deadline();
            let Connection { buf, .. } = c;
            serve_conn(proxy, Prefixed { pre: buf, io }, conn, shutdown, first_by).await;
        }
    }
}

/// How the fast path ended with a client connection.
enum End {
    /// Close it.
    Close,
    /// The client closed it, or it failed.
    Gone,
    /// The general path takes it.
    Fallback,
}

impl Connection {
    /// The fast path's loop: requests while they fit it.
    async fn run<S>(
        &mut self,
        proxy: &Proxy,
        conn: &Conn,
        io: &mut S,
        patience: &mut Patience,
        shutdown: &CancellationToken,
    ) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let cancelled = shutdown.clone().cancelled_owned();
        tokio::pin!(cancelled);
        let mut tick = tokio::time::interval_at(Instant::now() + patience.tick, patience.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let plan = match self.plan(proxy, conn) {
                Parsed::Forward(plan) => plan,
                Parsed::Fallback => return End::Fallback,
                Parsed::Partial if self.buf.len() >= MAX_HEADER_BYTES => return End::Fallback,
                Parsed::Partial => {
                    let idle = self.buf.is_empty();
                    if !idle {
                        patience.head_started();
                    }
                    // After the buffers were shed, a small one for the next head: an idle
                    // connection waits on little memory (it grows to READ_CHUNK when a head
                    // needs more).
                    self.buf.reserve(if self.buf.capacity() == 0 {
                        IDLE_READ
                    } else {
                        READ_CHUNK
                    });
                    let read = tokio::select! {
                        biased;
                        () = cancelled.as_mut(), if idle => return End::Close,
                        _ = tick.tick() => {
                            if let Some(cut) = patience.expired(Instant::now()) {
                                debug!(client = %conn.client, reason = cut.as_str(), "client timed out");
                                proxy.edge.listener(conn).cut(cut);
                                return End::Close;
                            }
                            // Between requests at a tick: the GoRouter connection goes back
                            // for others and the buffers are freed, so a client idle for a
                            // tick holds no GoRouter connection (nor its descriptor) and
                            // little memory. A busy connection parks at most once a tick,
                            // and takes a connection back with its next request.
                            if patience.between_requests() {
                                if let Some(up) = self.up.take() {
                                    debug!(client = %conn.client, gorouter = up.router, "idle: gorouter connection parked");
                                    proxy.gorouters.park(up);
                                }
                                self.shed_buffers();
                            }
                            continue;
                        }
                        r = io.read_buf(&mut self.buf) => r,
                    };
                    match read {
                        Ok(n) if n > 0 => continue,
                        Ok(_) => return End::Gone, // the client closed
                        Err(err) => {
                            debug!(client = %conn.client, %err, "client read failed");
                            return End::Gone;
                        }
                    }
                }
            };
            let closing = plan.close || shutdown.is_cancelled();
            match self.exchange(proxy, conn, io, &plan, closing).await {
                Exchanged::Done if closing => return End::Close,
                Exchanged::Done => patience.exchanged(),
                Exchanged::Close => return End::Close,
                Exchanged::Fallback => return End::Fallback,
            }
        }
    }
}

async fn close<S: AsyncWrite + Unpin>(mut io: S) {
    let _ = io.shutdown().await;
}

/// Request-head and idle timeouts without a timer per request: one ticker per connection,
/// every [`check_period`] of the header timeout, and this account between ticks. A head is
/// due within the header timeout of its first byte (of the connection's start, for the
/// first request), checked to within a tick; an idle kept-alive connection closes after the
/// idle timeout, to within a tick. The clock is read only for heads that arrive in pieces.
#[derive(Debug)]
struct Patience {
    /// How often the ticker ticks.
    tick: Duration,
    head: Duration,
    idle: Duration,
    /// Exchanges completed on the connection.
    exchanges: u64,
    at_last_tick: u64,
    /// When the head being read began: the connection's start for the first, its first
    /// bytes for later ones; `None` between requests.
    head_since: Option<Instant>,
    /// Idle ticks in a row between requests, as time.
    idle_for: Duration,
}

impl Patience {
    fn new(t: &Timeouts, start: Instant) -> Patience {
        Patience {
            tick: check_period(t.request_header),
            head: t.request_header,
            idle: t.idle,
            exchanges: 0,
            at_last_tick: 0,
            head_since: Some(start),
            idle_for: Duration::ZERO,
        }
    }

    /// The first bytes of a head are in (noted once per head).
    fn head_started(&mut self) {
        if self.head_since.is_none() {
            self.head_since = Some(Instant::now());
        }
    }

    /// An exchange completed: the next head's clock starts with its first byte.
    fn exchanged(&mut self) {
        self.exchanges += 1;
        self.head_since = None;
    }

    /// Between requests: no head is being read.
    fn between_requests(&self) -> bool {
        self.head_since.is_none()
    }

    /// When the head being read is due (now plus the header timeout if none is).
    fn head_deadline(&self) -> Instant {
        self.head_since.unwrap_or_else(Instant::now) + self.head
    }

    /// A tick passed at `now` while waiting for a head: why the client is cut, if it is.
    fn expired(&mut self, now: Instant) -> Option<Cut> {
        if let Some(since) = self.head_since {
            return (now.saturating_duration_since(since) >= self.head).then_some(Cut::HeadTimeout);
        }
        if self.exchanges == self.at_last_tick {
            self.idle_for += self.tick;
        } else {
            self.idle_for = Duration::ZERO;
        }
        self.at_last_tick = self.exchanges;
        (self.idle_for >= self.idle).then_some(Cut::IdleTimeout)
    }
}

/// One client connection's state between requests.
struct Connection {
    /// Bytes read from the client and not yet used.
    buf: BytesMut,
    /// The request head (and buffered body) for the GoRouter.
    out: Vec<u8>,
    /// The response head for the client.
    head: Vec<u8>,
    /// This connection's own upstream connection.
    up: Option<Upstream>,
}

/// What the fast path makes of the bytes at the front of the client buffer.
enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// The general path's request (from here on, the connection is its).
    Fallback,
    /// Forward: the upstream head is in `out`.
    Forward(Plan),
}

/// A request the fast path forwards.
struct Plan {
    head_len: usize,
    body_len: usize,
    /// `HEAD`: the response has no body whatever its headers say.
    head_method: bool,
    /// Resending after a dead keep-alive connection is safe.
    idempotent: bool,
    /// The client asked to close after this response.
    close: bool,
    router: usize,
    decision: &'static str,
    /// The trace id the request goes upstream with.
    trace: TraceId,
    /// For the access log (only when it is on).
    log: Option<Box<LogStart>>,
}

/// What the access log line of a forwarded request needs from its head.
struct LogStart {
    started: std::time::Instant,
    host: String,
    path: String,
    route: Option<RouteMatch>,
    /// For the `rtr` format.
    facts: Option<Facts>,
}

/// The request's own facts for the `rtr` access log line.
fn facts_of(method: &str, target: &str, req: &httparse::Request<'_, '_>) -> Facts {
    let mut f = Facts {
        method: method.to_string(),
        uri: target.to_string(),
        proto: "HTTP/1.1",
        ..Facts::default()
    };
    for h in req.headers.iter() {
        let v = || String::from_utf8_lossy(h.value).into_owned();
        match h.name.to_ascii_lowercase().as_str() {
            "referer" => f.referer = v(),
            "user-agent" => f.user_agent = v(),
            "x-forwarded-for" if f.xff.is_empty() => f.xff = v(),
            "x-forwarded-for" => {
                f.xff.push_str(", ");
                f.xff.push_str(&String::from_utf8_lossy(h.value));
            }
            "x-forwarded-proto" => f.xfp = v(),
            "x-vcap-request-id" => f.vcap = v(),
            "content-length" => f.received = parse_length(h.value).unwrap_or(0),
            _ => {}
        }
    }
    f
}

/// How an exchange ended.
enum Exchanged {
    /// The response was sent whole; the connection can carry the next request.
    Done,
    /// The connection must close (a failure mid-response, or a close-delimited body).
    Close,
    /// Nothing was sent anywhere yet: the general path takes the request.
    Fallback,
}

impl Connection {
    /// Free the buffers of an idle connection (allocated again by its next request).
    fn shed_buffers(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
        if self.out.capacity() > 0 {
            self.out = Vec::new();
            self.head = Vec::new();
        }
    }

    /// Parse the request at the front of `buf` and, when the fast path takes it, write the
    /// upstream head into `out`.
    fn plan(&mut self, proxy: &Proxy, conn: &Conn) -> Parsed {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Fallback,
        };
        let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
            return Parsed::Fallback;
        };
        if !target.starts_with('/') {
            return Parsed::Fallback;
        }
        let mut host = None;
        let mut body_len: Option<usize> = None;
        let mut close = false;
        for h in req.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("host") {
                // A second Host, or one that is not even text: the general path refuses it
                // (a Host skipped here would let a second one through, and both upstream).
                let (None, Ok(value)) = (host, std::str::from_utf8(h.value)) else {
                    return Parsed::Fallback;
                };
                host = Some(value);
            } else if name.eq_ignore_ascii_case("content-length") {
                let Some(n) = parse_length(h.value) else {
                    return Parsed::Fallback;
                };
                if body_len.is_some_and(|b| b as u64 != n) {
                    return Parsed::Fallback;
                }
                match usize::try_from(n) {
                    Ok(n) if n <= MAX_BUFFERED_BODY => body_len = Some(n),
                    _ => return Parsed::Fallback,
                }
            } else if name.eq_ignore_ascii_case("connection") {
                for token in h.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
                        // Other tokens name hop-by-hop headers (or ask to upgrade).
                        return Parsed::Fallback;
                    }
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                || name.eq_ignore_ascii_case("upgrade")
                || name.eq_ignore_ascii_case("expect")
            {
                return Parsed::Fallback;
            }
        }
        let Some(host) = host else {
            return Parsed::Fallback;
        };
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let ask = decide::Ask {
            scheme: conn.scheme,
            host,
            path,
            query,
            from_peer: conn.peer.is_some(),
            host_conflict: None, // a second Host went to the general path above
        };
        // A look: what is not local is decided again (and takes its weighted turn) there.
        let (decision, route) = proxy.decide(ask, false);
        if !matches!(decision, Decision::Local { .. } | Decision::FailOpen) {
            return Parsed::Fallback;
        }
        let prefer = self.up.as_ref().map(|u| u.router);
        // The route's own pool: an isolation segment's GoRouters, or the shared ones.
        let segment = super::pools::segment_of(route.as_ref());
        let Some(router) = proxy.gorouters.pick_in(segment, prefer) else {
            return Parsed::Fallback;
        };

        // The upstream head: the request line and headers as they came, less the hop-by-hop
        // ones, with the forwarding headers by the contract's rules (`super::headers`).
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut copier = Copier::new(conn.headers(&proxy.policy), &proxy.policy);
        for h in req.headers.iter() {
            if copier.keep(h.name, h.value) {
                put_header(out, h.name.as_bytes(), h.value);
            }
        }
        let idempotent = error::is_idempotent(method, copier.idempotency_key);
        let trace = copier.finish(out);
        out.extend_from_slice(b"\r\n");
        Parsed::Forward(Plan {
            head_len,
            body_len: body_len.unwrap_or(0),
            head_method: method == "HEAD",
            idempotent,
            close,
            router,
            decision: decision_name(&decision),
            trace,
            log: proxy.access_log.then(|| {
                Box::new(LogStart {
                    started: std::time::Instant::now(),
                    host: host.to_string(),
                    path: path.to_string(),
                    route,
                    facts: proxy.wants_facts().then(|| facts_of(method, target, &req)),
                })
            }),
        })
    }

    /// Send the planned request to its GoRouter and its response to the client.
    async fn exchange<S>(
        &mut self,
        proxy: &Proxy,
        conn: &Conn,
        io: &mut S,
        plan: &Plan,
        closing: bool,
    ) -> Exchanged
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // The whole request: head (already in `out`) and body.
        let total = plan.head_len + plan.body_len;
        if self.buf.len() < total {
            let deadline = tokio::time::Instant::now() + BODY_TIMEOUT;
            while self.buf.len() < total {
                self.buf.reserve(total - self.buf.len());
                match tokio::time::timeout_at(deadline, io.read_buf(&mut self.buf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return Exchanged::Close, // vanished or too slow mid-body
                }
            }
        }
        self.out.extend_from_slice(&self.buf[plan.head_len..total]);

        if self.up.as_ref().is_some_and(|u| !u.open_and_quiet()) {
            self.up = None; // the GoRouter closed it while idle (or sent unasked bytes)
        }
        if self.up.is_none() {
            // One another client connection parked (reused: a failure before any answer
            // is retried on a fresh one), else the codec connects.
            self.up = proxy.gorouters.take_parked(plan.router);
        }
        let mut log = Access::new(plan.decision);
        log.trace = plan.trace;
        let mut codec = ByteCodec {
            gorouters: &proxy.gorouters,
            up: &mut self.up,
            out: &self.out,
            head: &mut self.head,
            rewrite: Rewrite {
                head_method: plan.head_method,
                closing,
                site_header: proxy.site_header,
                site: &proxy.site,
            },
            replay: Replay {
                idempotent: plan.idempotent,
                whole: true, // buffered
            },
        };
        // One GoRouter: when it cannot be connected to, the general path tries the other
        // GoRouters and sites.
        let target = std::iter::once(Target::GoRouter(plan.router));
        let resp = match forward(&proxy.gorouters, target, true, &mut codec, &mut log).await {
            Forwarded::Response(resp) => resp,
            Forwarded::Handoff => return Exchanged::Fallback,
            Forwarded::Failed => {
                self.up = None;
                self.buf.advance(total);
                let err = RouterError::EndpointFailure(log.failure);
                let written = write_own(io, &err, proxy, closing).await;
                access_line(proxy, conn, plan, 502, 0, &log);
                return if written {
                    Exchanged::Done
                } else {
                    Exchanged::Close
                };
            }
        };
        self.buf.advance(total);

        let Some(up) = self.up.as_mut() else {
            return Exchanged::Close;
        };
        let status = resp.status;
        let outcome = relay_body(up, io, &mut self.head, &resp).await;
        let reusable = outcome == Relayed::Whole
            && !resp.upstream_close
            && resp.framing != Framing::UntilClose
            && up.buf.is_empty();
        if !reusable {
            self.up = None;
        }
        let sent = match resp.framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        access_line(proxy, conn, plan, status, sent, &log);
        match outcome {
            Relayed::Whole if resp.framing != Framing::UntilClose => Exchanged::Done,
            _ => Exchanged::Close,
        }
    }
}

/// The fast path's upstream codec: the planned request, as bytes, to a GoRouter on the
/// client connection's own upstream connection; the response head rewritten for the client
/// as it is parsed. The body is relayed after (by [`relay_body`]).
struct ByteCodec<'a> {
    gorouters: &'a GoRouters,
    up: &'a mut Option<Upstream>,
    /// The request: head and buffered body.
    out: &'a [u8],
    /// The client's response head.
    head: &'a mut Vec<u8>,
    rewrite: Rewrite<'a>,
    replay: Replay,
}

impl Codec for ByteCodec<'_> {
    type Response = ResponseHead;

    fn replay(&self) -> Replay {
        self.replay
    }

    async fn send(
        &mut self,
        target: &Target,
        fresh: bool,
        _served: &mut Served,
    ) -> Result<ResponseHead, AttemptError> {
        let &Target::GoRouter(i) = target else {
            return Err(AttemptError::new(AttemptKind::NotSent, "not a GoRouter"));
        };
        let Some(router) = self.gorouters.all().get(i) else {
            return Err(AttemptError::new(AttemptKind::NotSent, "no such GoRouter"));
        };
        let reused = !fresh && self.up.as_ref().is_some_and(|u| u.router == i);
        let (up_slot, out, rewrite, head) =
            (&mut *self.up, self.out, &self.rewrite, &mut *self.head);
        let attempt = async move {
            if !reused {
                *up_slot = None;
                let tcp = connect(&router.addr)
                    .await
                    .map_err(|e| AttemptError::new(AttemptKind::Connect, e))?;
                *up_slot = Some(Upstream {
                    router: i,
                    tcp,
                    buf: BytesMut::with_capacity(READ_CHUNK),
                });
            }
            let Some(up) = up_slot.as_mut() else {
                return Err(AttemptError::new(AttemptKind::NotSent, "no connection"));
            };
            round_trip(up, out, reused, |buf| client_head(buf, rewrite, head)).await
        };
        let sent = self.gorouters.bounded(&router.addr, attempt).await;
        if sent.is_err() {
            *self.up = None;
        }
        sent
    }
}

/// Count a forwarded request, and write its access log line.
fn access_line(proxy: &Proxy, conn: &Conn, plan: &Plan, status: u16, sent: u64, log: &Access) {
    // The fast path forwards to this site's GoRouters only.
    proxy.traffic.count(&proxy.rules.site, status);
    let Some(LogStart {
        started,
        host,
        path,
        route,
        facts,
    }) = plan.log.as_deref()
    else {
        return;
    };
    let line = AccessLine {
        served_by: &proxy.rules.site,
        conn,
        host,
        path,
        route: route.as_ref(),
        status,
        started: *started,
        facts: facts.as_ref(),
        sent,
    };
    proxy.log_access(&line, log);
}

/// How a response head is rewritten for the client.
struct Rewrite<'a> {
    /// The request was `HEAD`: the response has no body whatever its headers say.
    head_method: bool,
    /// The client connection closes after this response.
    closing: bool,
    site_header: bool,
    site: &'a http::HeaderValue,
}

/// The client's response head, written into `out` as the GoRouter's is parsed: its
/// status and headers (`Transfer-Encoding` kept: the body passes as it is framed), with
/// this site's `X-Grouter-Site` in place of any the GoRouter sent (or none, per config) and
/// `Connection: close` when the connection ends after it.
#[allow(clippy::type_complexity)]
fn client_head(
    buf: &[u8],
    rewrite: &Rewrite<'_>,
    out: &mut Vec<u8>,
) -> Result<Option<(usize, Option<ResponseHead>)>, ()> {
    out.clear();
    let parsed = response_head(buf, rewrite.head_method, true, |part| {
        match part {
            Part::Status(code, reason) => {
                out.extend_from_slice(b"HTTP/1.1 ");
                out.extend_from_slice(itoa::Buffer::new().format(code).as_bytes());
                out.push(b' ');
                out.extend_from_slice(reason.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Part::Header(name, value) => {
                // An app's (or GoRouter's) own `X-Grouter-Site` never reaches the client.
                if !name.eq_ignore_ascii_case(SITE_HEADER) {
                    put_header(out, name.as_bytes(), value);
                }
            }
        }
        Ok(())
    })?;
    if let Some((_, Some(head))) = &parsed {
        if rewrite.site_header {
            put_header(out, SITE_HEADER.as_bytes(), rewrite.site.as_bytes());
        }
        if rewrite.closing || head.framing == Framing::UntilClose {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
    Ok(parsed)
}

/// One request as the fast path takes it from a client's bytes ([`take_requests`]).
#[derive(Debug)]
pub(crate) struct Taken {
    /// Bytes of the client's request used: head and body.
    pub(crate) len: usize,
    /// What goes to the GoRouter: the rewritten head, then the body.
    pub(crate) upstream: Vec<u8>,
}

/// The fast path's reading of a client's bytes, without I/O (for the fuzz targets): each
/// pipelined request it would forward, in order, until it needs more bytes, a request asks
/// to close, or the general path takes the connection (then `true`).
pub(crate) fn take_requests(
    proxy: &Proxy,
    scheme: &'static str,
    bytes: &[u8],
) -> (Vec<Taken>, bool) {
    let conn = Conn::new(
        std::net::SocketAddr::from(([192, 0, 2, 1], 40_000)),
        scheme,
        None,
    );
    let mut c = Connection {
        buf: BytesMut::from(bytes),
        out: Vec::new(),
        head: Vec::new(),
        up: None,
    };
    let mut taken = Vec::new();
    loop {
        let plan = match c.plan(proxy, &conn) {
            Parsed::Forward(plan) => plan,
            Parsed::Partial => return (taken, false),
            Parsed::Fallback => return (taken, true),
        };
        // As `exchange` reads it: the head, then the buffered body.
        let total = plan.head_len + plan.body_len;
        if c.buf.len() < total {
            return (taken, false);
        }
        c.out.extend_from_slice(&c.buf[plan.head_len..total]);
        taken.push(Taken {
            len: total,
            upstream: std::mem::take(&mut c.out),
        });
        c.buf.advance(total);
        if plan.close {
            return (taken, false);
        }
    }
}

/// What the fast path sends a client for a GoRouter's response ([`relay_response`]).
#[derive(Debug)]
pub(crate) struct Relay {
    /// The client's response head.
    pub(crate) head: Vec<u8>,
    /// Bytes of the GoRouter's used for it: interim heads and the final head.
    pub(crate) head_len: usize,
    /// Bytes after the head that belong to the body, as it is framed.
    pub(crate) body_len: usize,
    /// The body ends within those bytes.
    pub(crate) body_done: bool,
}

/// The fast path's reading of a GoRouter's response bytes, without I/O (for the fuzz
/// targets): interim 1xx heads skipped as `round_trip` skips them, the final head
/// rewritten for the client, and how much of the rest its framing takes. `Ok(None)` while
/// the head is not whole; `Err` for a response the fast path does not pass on.
pub(crate) fn relay_response(
    bytes: &[u8],
    head_method: bool,
    closing: bool,
) -> Result<Option<Relay>, ()> {
    static SITE: http::HeaderValue = http::HeaderValue::from_static("lon");
    let rewrite = Rewrite {
        head_method,
        closing,
        site_header: true,
        site: &SITE,
    };
    let mut head = Vec::new();
    let mut at = 0;
    let (len, resp) = loop {
        match client_head(&bytes[at..], &rewrite, &mut head)? {
            None => return Ok(None),
            Some((len, None)) => at += len,
            Some((len, Some(resp))) => break (at + len, resp),
        }
    };
    let rest = &bytes[len..];
    let (body_len, body_done) = match resp.framing {
        Framing::Empty => (0, true),
        Framing::Length(n) => {
            let take = usize::try_from(n).unwrap_or(usize::MAX).min(rest.len());
            (take, take as u64 == n)
        }
        Framing::Chunked => {
            let mut chunks = Chunked::default();
            let n = chunks.scan(rest, |_| {})?;
            (n, chunks.done())
        }
        Framing::UntilClose => (rest.len(), false),
    };
    Ok(Some(Relay {
        head,
        head_len: len,
        body_len,
        body_done,
    }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relayed {
    /// The whole body reached the client.
    Whole,
    /// Either side failed mid-body.
    Cut,
}

/// Send the response head and body to the client, as framed.
async fn relay_body<S>(
    up: &mut Upstream,
    io: &mut S,
    out: &mut Vec<u8>,
    resp: &ResponseHead,
) -> Relayed
where
    S: AsyncWrite + Unpin,
{
    let mut chunks = Chunked::default();
    let mut left = match resp.framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let mut first = true;
    loop {
        // Take the part of `up.buf` that belongs to this body.
        let (take, done) = match resp.framing {
            Framing::Empty => (0, true),
            Framing::Length(_) => {
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(up.buf.len());
                left -= take as u64;
                (take, left == 0)
            }
            Framing::Chunked => match chunks.scan(&up.buf, |_| {}) {
                Ok(n) => (n, chunks.done()),
                Err(()) => return Relayed::Cut,
            },
            Framing::UntilClose => (up.buf.len(), false),
        };
        let body = &up.buf[..take];
        let written = if first && body.len() <= COALESCE {
            out.extend_from_slice(body);
            io.write_all(out).await
        } else if first {
            match io.write_all(out).await {
                Ok(()) => io.write_all(body).await,
                Err(e) => Err(e),
            }
        } else {
            io.write_all(body).await
        };
        first = false;
        up.buf.advance(take);
        if written.is_err() {
            return Relayed::Cut;
        }
        if done {
            return match io.flush().await {
                Ok(()) => Relayed::Whole,
                Err(_) => Relayed::Cut,
            };
        }
        if !up.buf.is_empty() {
            // Bytes past what the framing allows: the GoRouter broke the protocol.
            return Relayed::Cut;
        }
        up.buf.reserve(READ_CHUNK);
        match up.tcp.read_buf(&mut up.buf).await {
            Ok(0) if resp.framing == Framing::UntilClose => {
                return match io.flush().await {
                    Ok(()) => Relayed::Whole,
                    Err(_) => Relayed::Cut,
                };
            }
            Ok(0) | Err(_) => return Relayed::Cut,
            Ok(_) => {}
        }
    }
}

/// Write one of the proxy's own answers. `false` when the client is gone.
async fn write_own<S: AsyncWrite + Unpin>(
    io: &mut S,
    err: &RouterError,
    proxy: &Proxy,
    close: bool,
) -> bool {
    let (status, _, body) = err.parts();
    let mut out = Vec::with_capacity(256 + body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-length: {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    err.headers(|name, value| put_header(&mut out, name.as_bytes(), value.as_bytes()));
    if proxy.site_header {
        out.extend_from_slice(SITE_HEADER.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(proxy.site.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    io.write_all(&out).await.is_ok() && io.flush().await.is_ok()
}

/// A connection whose first bytes were already read: they are read again first.
struct Prefixed<S> {
    pre: BytesMut,
    io: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pre.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.pre.len().min(buf.remaining());
        buf.put_slice(&self.pre[..n]);
        self.pre.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(head_method: bool, closing: bool) -> (Rewrite<'static>, Vec<u8>) {
        static SITE: http::HeaderValue = http::HeaderValue::from_static("lon");
        (
            Rewrite {
                head_method,
                closing,
                site_header: true,
                site: &SITE,
            },
            Vec::new(),
        )
    }

    fn framing(raw: &[u8], head_method: bool) -> Result<Framing, ()> {
        let (r, mut out) = rewrite(head_method, false);
        match client_head(raw, &r, &mut out)? {
            Some((_, Some(resp))) => Ok(resp.framing),
            _ => Err(()),
        }
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let len = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(framing(len, false), Ok(Framing::Length(3)));
        assert_eq!(framing(len, true), Ok(Framing::Empty), "HEAD");
        assert_eq!(
            framing(b"HTTP/1.1 204 No Content\r\n\r\n", false),
            Ok(Framing::Empty)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false
            ),
            Ok(Framing::Empty)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                false
            ),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\n\r\n", false),
            Ok(Framing::UntilClose)
        );
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        ] {
            assert_eq!(
                framing(bad, false),
                Err(()),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn response_heads_lose_hop_by_hop_headers_and_gain_the_site() {
        let (r, mut out) = rewrite(false, true);
        let raw = b"HTTP/1.0 200 OK\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive\r\nContent-Length: 2\r\nX-Grouter-Site: forged\r\nX-App: a\r\n\r\nok";
        let Ok(Some((len, Some(resp)))) = client_head(raw, &r, &mut out) else {
            panic!("a final head");
        };
        assert_eq!(len, raw.len() - 2);
        assert!(!resp.upstream_close, "HTTP/1.0 with keep-alive stays open");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-App: a\r\nx-grouter-site: lon\r\nconnection: close\r\n\r\n"
        );
        let interim = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n";
        assert!(matches!(
            client_head(interim, &r, &mut out),
            Ok(Some((n, None))) if n == interim.len()
        ));
        assert!(matches!(
            client_head(b"HTTP/1.1 200 OK\r\nContent-Le", &r, &mut out),
            Ok(None)
        ));
        // Chunked framing wins over a Content-Length, which is not passed on.
        let (r, mut out) = rewrite(false, false);
        let both = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(
            client_head(both, &r, &mut out),
            Ok(Some((
                _,
                Some(ResponseHead {
                    framing: Framing::Chunked,
                    ..
                })
            )))
        ));
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-grouter-site: lon\r\n\r\n"
        );
        // Headers the Connection header names are hop-by-hop: dropped, not a 502 (RFC 9110
        // §7.6.1; gorouter's handlers/hop_by_hop_test.go, "removes the headers named in
        // Connection"). A framing header keeps framing the body.
        let (r, mut out) = rewrite(false, false);
        let named = b"HTTP/1.1 200 OK\r\nConnection: X-Secret, content-length\r\nX-Secret: 1\r\nContent-Length: 2\r\nX-App: a\r\n\r\n";
        assert!(matches!(
            client_head(named, &r, &mut out),
            Ok(Some((
                _,
                Some(ResponseHead {
                    framing: Framing::Length(2),
                    ..
                })
            )))
        ));
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-App: a\r\nx-grouter-site: lon\r\n\r\n"
        );
    }

    #[test]
    fn slow_heads_and_idle_connections_run_out_of_patience() {
        let t = Timeouts {
            request_header: Duration::from_secs(8),
            idle: Duration::from_secs(20),
            tls_handshake: Duration::from_secs(8),
        };
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        // The first head (or nothing at all) is due 8 s after the connection's start,
        // checked every 2 s.
        let mut p = Patience::new(&t, start);
        assert_eq!(p.tick, Duration::from_secs(2));
        assert_eq!(p.expired(at(6)), None);
        assert_eq!(p.expired(at(8)), Some(Cut::HeadTimeout));
        assert_eq!(p.head_deadline(), at(8));
        assert!(!p.between_requests(), "the first head is awaited");
        // After an exchange, idle ticks add up to the idle timeout.
        let mut p = Patience::new(&t, start);
        p.exchanged();
        assert!(
            p.between_requests(),
            "a tick now parks the GoRouter connection"
        );
        let verdicts: Vec<Option<Cut>> = (1..=11).map(|i| p.expired(at(2 * i))).collect();
        assert_eq!(
            verdicts[..10],
            [None; 10],
            "the tick that saw the exchange resets"
        );
        assert_eq!(
            verdicts[10],
            Some(Cut::IdleTimeout),
            "idle for 20 s or more"
        );
        // A later head is due 8 s after its first byte, however long the idle was.
        p.head_started();
        assert!(!p.between_requests());
        let began = p.head_since.expect("noted");
        assert_eq!(p.expired(began + Duration::from_secs(7)), None);
        assert_eq!(
            p.expired(began + Duration::from_secs(8)),
            Some(Cut::HeadTimeout)
        );
        // Progress between ticks keeps a busy connection alive.
        let mut p = Patience::new(&t, start);
        for i in 0..100 {
            p.exchanged();
            assert_eq!(p.expired(at(i)), None);
        }
    }
}
