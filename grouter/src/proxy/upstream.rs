//! This site's GoRouters, shared and per isolation segment (the pools: `super::pools`):
//! their health (active probes, passive ejection), round-robin
//! choice among the healthy, and hyper's HTTP/1.1 client to them, the upstream codec of the
//! general path: a client connection's own connection (`Affinity`, for HTTP/1.1
//! clients) or the shared keep-alive pool (HTTP/2 streams with a body, upgrades).
//!
//! Also the GoRouter connections the fast path's client connections park when they go idle
//! ([`GoRouters::park`], [`GoRouters::take_parked`]): at most [`MAX_PARKED`] per GoRouter,
//! closed once parked for the idle timeout, so that idle clients hold no GoRouter connection
//! (and no descriptor) each.
//!
//! Must never: hold a lock across an `.await`, block a request on a health probe, or hand
//! out a parked connection that has heard anything from its GoRouter since its last
//! response.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::body::Reclaimable;
use super::error::{AttemptError, AttemptKind};
use super::wire::{CONNECT_TIMEOUT, Upstream, connect};
use crate::config::GoroutersConfig;

/// How long a GoRouter that refused a connection is skipped (unless none is left).
const EJECT_FOR: Duration = Duration::from_secs(5);
/// Parked connections kept per GoRouter (as many as hyper's pool keeps idle per host, above);
/// one parked beyond it is closed.
pub(super) const MAX_PARKED: usize = 1024;

/// A GoRouter connection parked by an idle client connection, and since when.
#[derive(Debug)]
struct Parked {
    up: Upstream,
    since: tokio::time::Instant,
}

/// One GoRouter.
#[derive(Debug)]
pub struct GoRouter {
    /// `host:port`.
    pub addr: String,
    /// The isolation segment it serves (`None`: the shared GoRouters).
    pub segment: Option<Box<str>>,
    health: Uri,
    healthy: AtomicBool,
    ejected_until_ms: AtomicU64,
    /// Connections parked by idle client connections, oldest first.
    parked: Mutex<std::collections::VecDeque<Parked>>,
}

/// The GoRouters of this site.
#[derive(Debug)]
pub struct GoRouters {
    routers: Vec<GoRouter>,
    next: AtomicUsize,
    epoch: Instant,
    client: Client<HttpConnector, Reclaimable>,
    /// How long a parked connection is kept (`proxy.idle_timeout_secs`).
    parked_for: Duration,
    /// How long one try waits for a response head (`gorouters.response_timeout_secs`).
    response_timeout: Duration,
    /// Requests for a route whose isolation segment has no GoRouters at this site
    /// (`super::pools`); the node registers it in `/metrics`.
    pub segment_unavailable: prometheus_client::metrics::counter::Counter,
}

impl GoRouters {
    /// Pools for the configured GoRouters; all start healthy (probes correct that within a
    /// second).
    pub fn new(cfg: &GoroutersConfig) -> GoRouters {
        let routers = super::pools::members(cfg)
            .into_iter()
            .map(|(addr, segment)| {
                let probe_addr = match cfg.health_port {
                    Some(port) => match addr.rsplit_once(':') {
                        Some((host, _)) => format!("{host}:{port}"),
                        None => addr.clone(),
                    },
                    None => addr.clone(),
                };
                GoRouter {
                    segment,
                    addr: addr.clone(),
                    health: format!("http://{probe_addr}{}", cfg.health_url_path)
                        .parse()
                        .unwrap_or_else(|_| Uri::from_static("http://127.0.0.1:1/health")),
                    healthy: AtomicBool::new(true),
                    ejected_until_ms: AtomicU64::new(0),
                    parked: Mutex::default(),
                }
            })
            .collect();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        GoRouters {
            routers,
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            client,
            parked_for: crate::limits::DEFAULT_IDLE_TIMEOUT,
            response_timeout: Duration::from_secs(cfg.response_timeout_secs),
            segment_unavailable: Default::default(),
        }
    }

    /// Keep parked connections for `idle` (`proxy.idle_timeout_secs`; default its default).
    pub fn parked_for(mut self, idle: Duration) -> GoRouters {
        self.parked_for = idle;
        self
    }

    /// Bound one try's wait for a GoRouter's response head (with its connect) by
    /// `gorouters.response_timeout_secs`: past it the try fails as a request that timed out
    /// (502 `endpoint_failure (timeout)`, never sent again).
    pub(super) async fn bounded<T>(
        &self,
        addr: &str,
        attempt: impl Future<Output = Result<T, AttemptError>>,
    ) -> Result<T, AttemptError> {
        match tokio::time::timeout(self.response_timeout, attempt).await {
            Ok(done) => done,
            Err(_) => {
                warn!(gorouter = %addr, timeout = ?self.response_timeout, "gorouter sent no response head in time");
                Err(AttemptError::new(
                    AttemptKind::Request,
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "{addr}: no response head within {:?}",
                            self.response_timeout
                        ),
                    ),
                ))
            }
        }
    }

    /// Park `up`, a connection whose last response ended exactly, for another client
    /// connection to take: an idle client connection gives its GoRouter connection back.
    /// Closed at once when its GoRouter already has [`MAX_PARKED`] parked, or has closed it.
    pub(super) fn park(&self, mut up: Upstream) {
        let Some(router) = self.routers.get(up.router) else {
            return;
        };
        if !up.open_and_quiet() {
            return;
        }
        // Its read buffer is empty (the response ended exactly): freed while parked.
        up.buf = bytes::BytesMut::new();
        let since = tokio::time::Instant::now();
        let mut parked = router.parked.lock();
        if parked.len() < MAX_PARKED {
            parked.push_back(Parked { up, since });
        }
    }

    /// The most recently parked connection to GoRouter `router` that is still open and
    /// quiet (the others are closed on the way).
    pub(super) fn take_parked(&self, router: usize) -> Option<Upstream> {
        let r = self.routers.get(router)?;
        let mut parked = r.parked.lock();
        while let Some(p) = parked.pop_back() {
            if p.up.open_and_quiet() {
                return Some(p.up);
            }
        }
        None
    }

    /// Close the connections parked for longer than the idle timeout.
    fn close_stale_parked(&self) {
        let Some(cutoff) = tokio::time::Instant::now().checked_sub(self.parked_for) else {
            return;
        };
        for r in &self.routers {
            let mut parked = r.parked.lock();
            while parked.front().is_some_and(|p| p.since <= cutoff) {
                parked.pop_front();
            }
        }
    }

    /// `n` GoRouters at `127.0.0.1:1`, `:2`, … (nothing listens there), with the defaults.
    #[cfg(test)]
    pub(super) fn for_tests(n: usize) -> GoRouters {
        GoRouters::new(&GoroutersConfig {
            addresses: (0..n).map(|i| format!("127.0.0.1:{}", 1 + i)).collect(),
            health_url_path: "/health".into(),
            health_port: None,
            segments: Default::default(),
            response_timeout_secs: 900,
        })
    }

    /// Connections parked at GoRouter `router`.
    #[cfg(test)]
    fn parked_count(&self, router: usize) -> usize {
        self.routers
            .get(router)
            .map_or(0, |r| r.parked.lock().len())
    }

    /// Connections parked at GoRouter `router` that are open and quiet.
    #[cfg(test)]
    fn parked_quiet(&self, router: usize) -> usize {
        self.routers.get(router).map_or(0, |r| {
            r.parked
                .lock()
                .iter()
                .filter(|p| p.up.open_and_quiet())
                .count()
        })
    }

    /// Send `req` (absolute-form URI) through the shared keep-alive pool.
    pub(super) async fn send_pooled(
        &self,
        req: Request<Reclaimable>,
    ) -> Result<Response<Incoming>, AttemptError> {
        self.client.request(req).await.map_err(|e| {
            if e.is_connect() {
                AttemptError::new(AttemptKind::Connect, e)
            } else {
                // The pool's connection may have been new or kept: either way the GoRouter
                // closed it before answering, which the pool itself has not retried.
                match std::error::Error::source(&e).and_then(|s| s.downcast_ref::<hyper::Error>()) {
                    Some(h) => classify_pooled(h),
                    None => AttemptError::new(AttemptKind::Request, e),
                }
            }
        })
    }

    /// Every GoRouter.
    pub fn all(&self) -> &[GoRouter] {
        &self.routers
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn usable(&self, r: &GoRouter) -> bool {
        r.healthy.load(Ordering::Relaxed)
            && r.ejected_until_ms.load(Ordering::Relaxed) <= self.now_ms()
    }

    /// The shared GoRouters to try: [`GoRouters::order_in`] the shared pool.
    pub fn order(&self) -> Vec<usize> {
        self.order_in(None)
    }

    /// GoRouters of `segment`'s pool (`None`: the shared one) to try (by index), in order:
    /// the usable ones round-robin, then the rest (a router marked down may still answer;
    /// trying it beats failing the request). Empty when this site has no such pool.
    pub fn order_in(&self, segment: Option<&str>) -> Vec<usize> {
        let n = self.routers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let (mut good, bad): (Vec<usize>, Vec<usize>) = (0..n)
            .map(|i| (start + i) % n)
            .filter(|&i| self.routers[i].segment.as_deref() == segment)
            .partition(|&i| self.usable(&self.routers[i]));
        good.extend(bad);
        good
    }

    /// One usable GoRouter, by index: `prefer` when it is usable (a client connection
    /// keeps the GoRouter its upstream connection goes to), otherwise the next usable one
    /// round-robin. `None` when none is usable.
    pub fn pick(&self, prefer: Option<usize>) -> Option<usize> {
        self.pick_in(None, prefer)
    }

    /// [`GoRouters::pick`] within `segment`'s pool (`None`: the shared one).
    pub fn pick_in(&self, segment: Option<&str>, prefer: Option<usize>) -> Option<usize> {
        let in_pool = |r: &GoRouter| r.segment.as_deref() == segment && self.usable(r);
        if let Some(i) = prefer
            && self.routers.get(i).is_some_and(in_pool)
        {
            return Some(i);
        }
        let n = self.routers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| in_pool(&self.routers[i]))
    }

    /// Skip `r` for a while: it refused a connection.
    pub fn eject(&self, r: &GoRouter) {
        let until = self.now_ms() + u64::try_from(EJECT_FOR.as_millis()).unwrap_or(u64::MAX);
        r.ejected_until_ms.store(until, Ordering::Relaxed);
    }

    /// Whether any shared GoRouter passes its health check (what `/healthz` and this
    /// node's record say: segments' GoRouters serve only their segments' routes).
    pub fn any_healthy(&self) -> bool {
        self.routers
            .iter()
            .any(|r| r.segment.is_none() && r.healthy.load(Ordering::Relaxed))
    }

    /// Probe every GoRouter's health URL every `interval` until `shutdown`; a router is
    /// healthy when it answers 2xx within the interval. Calls `on_change` with the site's
    /// overall health whenever it changes. Parked connections past the idle timeout are
    /// closed at each round.
    pub async fn probe(
        self: Arc<Self>,
        interval: Duration,
        on_change: impl Fn(bool) + Send,
        shutdown: CancellationToken,
    ) {
        let probe_client: Client<HttpConnector, http_body_util::Empty<Bytes>> = {
            let mut c = HttpConnector::new();
            c.set_connect_timeout(Some(interval));
            Client::builder(TokioExecutor::new()).build(c)
        };
        let mut tick = tokio::time::interval(interval);
        let mut overall = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.close_stale_parked();
            let probes = self.routers.iter().map(|r| {
                let fut = probe_client.get(r.health.clone());
                async move {
                    let ok = matches!(tokio::time::timeout(interval, fut).await, Ok(Ok(resp)) if resp.status().is_success());
                    (r, ok)
                }
            });
            for (r, ok) in futures::future::join_all(probes).await {
                if r.healthy.swap(ok, Ordering::Relaxed) != ok {
                    let segment = r.segment.as_deref().unwrap_or("");
                    if ok {
                        info!(gorouter = %r.addr, segment, "gorouter healthy");
                    } else {
                        warn!(gorouter = %r.addr, segment, "gorouter failed its health check");
                    }
                }
            }
            let now = self.any_healthy();
            if overall != Some(now) {
                overall = Some(now);
                on_change(now);
            }
        }
    }
}

/// An HTTP/1.1 client sends one request at a time, so its connection can keep one upstream
/// connection of its own: no pool checkout, no lock shared with other connections. The
/// sender is taken out while a request uses it and put back when the response head arrives
/// (its next request waits in `ready()` until the body has been sent on).
#[derive(Debug, Default, Clone)]
pub(super) struct Affinity(Arc<Mutex<Option<(String, Sender)>>>);

/// One HTTP/1.1 connection to a GoRouter, through hyper.
type Sender = hyper::client::conn::http1::SendRequest<Reclaimable>;

impl Affinity {
    /// Send `req` (origin-form URI) to `addr` on this client connection's own upstream
    /// connection, opening one when there is none (or it is to another GoRouter, or closed,
    /// or `fresh` asks for a new one). A failure on a reused connection is
    /// [`AttemptKind::IdleClosed`]: the GoRouter may have closed it while idle.
    pub(super) async fn send(
        &self,
        addr: &str,
        req: Request<Reclaimable>,
        fresh: bool,
    ) -> Result<Response<Incoming>, AttemptError> {
        let cached = self
            .0
            .lock()
            .take()
            .filter(|(a, s)| !fresh && a == addr && !s.is_closed());
        let reused = cached.is_some();
        let mut sender = match cached {
            Some((_, s)) => s,
            None => open(addr).await?,
        };
        let result = match sender.ready().await {
            Ok(()) => sender.send_request(req).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(resp) => {
                self.0.lock().replace((addr.to_string(), sender));
                Ok(resp)
            }
            Err(e) => Err(AttemptError::from_hyper(e, reused)),
        }
    }
}

/// A failure of the shared pool's request, by the hyper error under it (the pool says
/// nothing of whether the connection was kept-alive: a close is a [`AttemptKind::Reset`]).
fn classify_pooled(e: &hyper::Error) -> AttemptError {
    let kind = if e.is_canceled() {
        AttemptKind::NotSent
    } else if e.is_incomplete_message() || e.is_closed() {
        AttemptKind::Reset
    } else {
        AttemptKind::Request
    };
    AttemptError::new(kind, e.to_string())
}

async fn open(addr: &str) -> Result<Sender, AttemptError> {
    let tcp = connect(addr)
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

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    fn gorouters(n: usize) -> GoRouters {
        GoRouters::for_tests(n).parked_for(Duration::from_secs(90))
    }

    /// A connection to GoRouter `router` (index), with the GoRouter's end.
    async fn connection(listener: &TcpListener, router: usize) -> (Upstream, TcpStream) {
        let (tcp, accepted) = tokio::join!(
            TcpStream::connect(listener.local_addr().unwrap()),
            listener.accept()
        );
        let up = Upstream {
            router,
            tcp: tcp.unwrap(),
            buf: BytesMut::new(),
        };
        (up, accepted.unwrap().0)
    }

    #[tokio::test(start_paused = true)]
    async fn parked_connections_go_to_their_gorouter_newest_first_and_close_when_stale() {
        let g = gorouters(2);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a, _a_far) = connection(&listener, 0).await;
        let (b, _b_far) = connection(&listener, 0).await;
        let (a_port, b_port) = (
            a.tcp.local_addr().unwrap().port(),
            b.tcp.local_addr().unwrap().port(),
        );
        g.park(a);
        tokio::time::advance(Duration::from_secs(60)).await;
        g.park(b);
        assert!(g.take_parked(1).is_none(), "parked at GoRouter 0 only");
        let newest = g.take_parked(0).unwrap();
        assert_eq!(newest.tcp.local_addr().unwrap().port(), b_port);
        g.park(newest);
        // 90 s after the first was parked it is closed; the second (60 s younger) stays.
        tokio::time::advance(Duration::from_secs(30)).await;
        g.close_stale_parked();
        assert_eq!(g.parked_count(0), 1);
        assert_eq!(
            g.take_parked(0).unwrap().tcp.local_addr().unwrap().port(),
            b_port
        );
        assert_ne!(a_port, b_port);
        assert!(g.take_parked(0).is_none());
    }

    #[tokio::test]
    async fn a_connection_its_gorouter_closed_or_spoke_on_is_never_handed_out() {
        let g = gorouters(1);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (closed, closed_far) = connection(&listener, 0).await;
        let (spoke, mut spoke_far) = connection(&listener, 0).await;
        let (good, _good_far) = connection(&listener, 0).await;
        g.park(good);
        g.park(closed);
        g.park(spoke);
        drop(closed_far);
        spoke_far.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        // Until the runtime has seen the FIN and the bytes arrive.
        let deadline = Instant::now() + Duration::from_secs(5);
        while g.parked_quiet(0) > 1 {
            assert!(
                Instant::now() < deadline,
                "the close and the bytes never showed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(g.take_parked(0).is_some(), "the quiet one");
        assert!(g.take_parked(0).is_none(), "the others were closed");
        // One parked beyond the bound is closed at once.
        for _ in 0..MAX_PARKED + 1 {
            let (up, _) = connection(&listener, 0).await;
            g.park(up);
        }
        assert_eq!(g.parked_count(0), MAX_PARKED);
    }
}
