//! This site's GoRouters: a keep-alive pool to each, round-robin choice among the healthy,
//! passive ejection on connect failure, and active health probes.
//!
//! Also the request body that can be taken back ([`Reclaimable`]): a request whose
//! connection attempt failed before a byte of its body was sent can be retried on the next
//! target without buffering the body.
//!
//! Must never: hold a lock across an `.await`, or block a request on a health probe.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Uri;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::wire::CONNECT_TIMEOUT;
use crate::config::GoroutersConfig;

/// Errors of the bodies the proxy passes on.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bodies the proxy sends upstream and back.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// How long a GoRouter that refused a connection is skipped (unless none is left).
const EJECT_FOR: Duration = Duration::from_secs(5);

/// A request body that can be taken back while nobody has read from it.
#[derive(Debug, Clone)]
pub struct Reclaimable(Arc<Mutex<ReclaimState>>);

#[derive(Debug)]
struct ReclaimState {
    body: Option<ProxyBody>,
    started: bool,
}

impl Reclaimable {
    /// Wrap a body.
    pub fn new(body: ProxyBody) -> Reclaimable {
        Reclaimable(Arc::new(Mutex::new(ReclaimState {
            body: Some(body),
            started: false,
        })))
    }

    /// Whether no byte of the body was read yet (it can still go to another target).
    pub fn unread(&self) -> bool {
        !self.0.lock().started
    }
}

impl Body for Reclaimable {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut s = self.0.lock();
        s.started = true;
        match s.body.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.lock().body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .lock()
            .body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// Box an incoming body.
pub fn boxed(body: Incoming) -> ProxyBody {
    use http_body_util::BodyExt;
    body.map_err(BoxError::from).boxed()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    use http_body_util::BodyExt;
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// One GoRouter.
#[derive(Debug)]
pub struct GoRouter {
    /// `host:port`.
    pub addr: String,
    health: Uri,
    healthy: AtomicBool,
    ejected_until_ms: AtomicU64,
}

/// The GoRouters of this site.
#[derive(Debug)]
pub struct GoRouters {
    routers: Vec<GoRouter>,
    next: AtomicUsize,
    epoch: Instant,
    client: Client<HttpConnector, Reclaimable>,
}

impl GoRouters {
    /// Pools for the configured GoRouters; all start healthy (probes correct that within a
    /// second).
    pub fn new(cfg: &GoroutersConfig) -> GoRouters {
        let routers = cfg
            .addresses
            .iter()
            .map(|addr| {
                let probe_addr = match cfg.health_port {
                    Some(port) => match addr.rsplit_once(':') {
                        Some((host, _)) => format!("{host}:{port}"),
                        None => addr.clone(),
                    },
                    None => addr.clone(),
                };
                GoRouter {
                    addr: addr.clone(),
                    health: format!("http://{probe_addr}{}", cfg.health_url_path)
                        .parse()
                        .unwrap_or_else(|_| Uri::from_static("http://127.0.0.1:1/health")),
                    healthy: AtomicBool::new(true),
                    ejected_until_ms: AtomicU64::new(0),
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
        }
    }

    /// The pooled client.
    pub fn client(&self) -> &Client<HttpConnector, Reclaimable> {
        &self.client
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

    /// GoRouters to try (by index), in order: the usable ones round-robin, then the rest (a router
    /// marked down may still answer; trying it beats failing the request).
    pub fn order(&self) -> Vec<usize> {
        let n = self.routers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let (mut good, bad): (Vec<usize>, Vec<usize>) = (0..n)
            .map(|i| (start + i) % n)
            .partition(|&i| self.usable(&self.routers[i]));
        good.extend(bad);
        good
    }

    /// One usable GoRouter, by index: `prefer` when it is usable (a client connection
    /// keeps the GoRouter its upstream connection goes to), otherwise the next usable one
    /// round-robin. `None` when none is usable.
    pub fn pick(&self, prefer: Option<usize>) -> Option<usize> {
        if let Some(i) = prefer
            && self.routers.get(i).is_some_and(|r| self.usable(r))
        {
            return Some(i);
        }
        let n = self.routers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| self.usable(&self.routers[i]))
    }

    /// Skip `r` for a while: it refused a connection.
    pub fn eject(&self, r: &GoRouter) {
        let until = self.now_ms() + u64::try_from(EJECT_FOR.as_millis()).unwrap_or(u64::MAX);
        r.ejected_until_ms.store(until, Ordering::Relaxed);
    }

    /// Whether any GoRouter passes its health check.
    pub fn any_healthy(&self) -> bool {
        self.routers
            .iter()
            .any(|r| r.healthy.load(Ordering::Relaxed))
    }

    /// Probe every GoRouter's health URL every `interval` until `shutdown`; a router is
    /// healthy when it answers 2xx within the interval. Calls `on_change` with the site's
    /// overall health whenever it changes.
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
            let probes = self.routers.iter().map(|r| {
                let fut = probe_client.get(r.health.clone());
                async move {
                    let ok = matches!(tokio::time::timeout(interval, fut).await, Ok(Ok(resp)) if resp.status().is_success());
                    (r, ok)
                }
            });
            for (r, ok) in futures::future::join_all(probes).await {
                if r.healthy.swap(ok, Ordering::Relaxed) != ok {
                    if ok {
                        info!(gorouter = %r.addr, "gorouter healthy");
                    } else {
                        warn!(gorouter = %r.addr, "gorouter failed its health check");
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
