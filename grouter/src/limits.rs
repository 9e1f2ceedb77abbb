//! Connection limits and timeouts that every listener shares (CONTRACT.md, "Edge rules"):
//! the proxy's plain and TLS listeners, the connections peers forward requests on, the admin
//! API and the mesh.
//!
//! Owns: how many connections a listener takes at once ([`Gate`]: over it a connection is
//! closed at once and counted, never left to pile up in the backlog), the counters of what
//! was cut and why ([`ListenerStats`], [`Cut`]), the timeouts ([`Timeouts`]), the watchdog
//! that cuts a hyper connection whose first request is late or whose HTTP/2 streams have all
//! been idle too long ([`Watchdog`]), the guard that resets a client which takes no byte of
//! what it is sent for the idle timeout ([`SendGuard`]: a slow-read client, or one gone
//! without a word), and the default limits derived from the open-file limit
//! ([`derive_limits`]), so that idle sockets on one listener cannot take the descriptors the
//! node needs for the mesh, NATS, the GoRouters and `/healthz`.
//!
//! A leaf: imports nothing of the crate (the metrics module registers the counters it hands
//! out here).
//!
//! Must never: block an accept loop, or read a clock per request (the watchdog counts
//! requests and samples them a few times per timeout; the send guard reads one only when a
//! write would block).

use std::future::Future as _;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Default `proxy.request_header_timeout_secs`: time to send a request head.
pub const DEFAULT_REQUEST_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `proxy.idle_timeout_secs`: an idle keep-alive or HTTP/2 connection is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Default `proxy.tls_handshake_timeout_secs` (gorouter's `tls_handshake_timeout`).
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection was cut (the `reason` of `grouter_connections_cut_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// A request head (or HTTP/2's connection preface) did not arrive in time.
    HeadTimeout = 0,
    /// A kept-alive connection, or an HTTP/2 connection without streams, sat idle too long.
    IdleTimeout = 1,
    /// The TLS handshake did not finish in time.
    HandshakeTimeout = 2,
    /// The listener already had its most connections: closed at once.
    OverLimit = 3,
    /// The client took no byte of what it was sent for the idle timeout ([`SendGuard`]).
    SendTimeout = 4,
}

impl Cut {
    /// Every reason, in counter order.
    pub const ALL: [Cut; 5] = [
        Cut::HeadTimeout,
        Cut::IdleTimeout,
        Cut::HandshakeTimeout,
        Cut::OverLimit,
        Cut::SendTimeout,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Cut::HeadTimeout => "head_timeout",
            Cut::IdleTimeout => "idle_timeout",
            Cut::HandshakeTimeout => "handshake_timeout",
            Cut::OverLimit => "over_limit",
            Cut::SendTimeout => "send_timeout",
        }
    }
}

/// The counters of one listener: connections cut, by reason, connections open and the
/// limit. Clones share the counters.
#[derive(Debug, Clone, Default)]
pub struct ListenerStats {
    cuts: [Counter; 5],
    open: Gauge,
    limit: Gauge,
}

impl ListenerStats {
    /// Stats over these (registered) metrics; `cuts` in [`Cut::ALL`] order.
    pub fn new(cuts: [Counter; 5], open: Gauge, limit: Gauge) -> ListenerStats {
        ListenerStats { cuts, open, limit }
    }

    /// Count one cut connection.
    pub fn cut(&self, why: Cut) {
        self.cuts[why as usize].inc();
    }

    /// Connections cut for `why` so far.
    pub fn cuts(&self, why: Cut) -> u64 {
        self.cuts[why as usize].get()
    }
}

/// The connection limit of a listener (or of several sharing one budget, as the proxy's
/// plain and TLS listeners do). Clones share the slots.
#[derive(Debug, Clone)]
pub struct Gate {
    slots: Arc<Semaphore>,
    stats: ListenerStats,
}

/// A connection a [`Gate`] let in; its slot is free again when this drops.
#[derive(Debug)]
pub struct Admitted {
    _slot: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl Gate {
    /// At most `max` connections at once (at least one).
    pub fn new(max: usize, stats: ListenerStats) -> Gate {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        stats.limit.set(i64::try_from(max).unwrap_or(i64::MAX));
        Gate {
            slots: Arc::new(Semaphore::new(max)),
            stats,
        }
    }

    /// Another listener's gate on the same slots, counted in `stats`.
    pub fn sharing(&self, stats: ListenerStats) -> Gate {
        stats.limit.set(self.stats.limit.get());
        Gate {
            slots: self.slots.clone(),
            stats,
        }
    }

    /// A slot for a connection just accepted, or `None` (counted `over_limit`): the caller
    /// closes the connection at once.
    pub fn admit(&self) -> Option<Admitted> {
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => {
                self.stats.open.inc();
                Some(Admitted {
                    _slot: slot,
                    open: self.stats.open.clone(),
                })
            }
            Err(_) => {
                self.stats.cut(Cut::OverLimit);
                None
            }
        }
    }

    /// This listener's counters.
    pub fn stats(&self) -> &ListenerStats {
        &self.stats
    }
}

/// The timeouts of a listener's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A request head (the first one from the connection's start, later ones from their
    /// first byte), and HTTP/2's connection preface.
    pub request_header: Duration,
    /// A kept-alive HTTP/1.1 connection between requests; an HTTP/2 connection without
    /// streams.
    pub idle: Duration,
    /// The TLS handshake.
    pub tls_handshake: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            request_header: DEFAULT_REQUEST_HEADER_TIMEOUT,
            idle: DEFAULT_IDLE_TIMEOUT,
            tls_handshake: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
        }
    }
}

/// How often a timeout of `timeout` is checked: a quarter of it (at least 50 ms), so a
/// connection is cut between the timeout and a quarter (or, idle, a half) more.
pub fn check_period(timeout: Duration) -> Duration {
    (timeout / 4).max(Duration::from_millis(50))
}

/// The watchdog of one hyper connection (HTTP/1.1 or HTTP/2): the first request must arrive
/// by a deadline (a partial preface or head, or a silent client, is cut then), and an
/// HTTP/2 connection whose streams have all been idle for the idle timeout is cut. A
/// kept-alive HTTP/1.1 connection's later heads are hyper's `header_read_timeout`.
///
/// No clock is read per request: the owner counts requests, and the watchdog samples the
/// count and the running streams every [`check_period`] of the idle timeout.
#[derive(Debug)]
pub struct Watchdog {
    idle: Duration,
    period: Duration,
    next: Instant,
    idle_for: Duration,
    requests_seen: u64,
    armed: bool,
}

impl Watchdog {
    /// A watchdog whose first check is the first request's deadline `first_by`.
    pub fn new(timeouts: &Timeouts, first_by: Instant) -> Watchdog {
        Watchdog {
            idle: timeouts.idle,
            period: check_period(timeouts.idle),
            next: first_by,
            idle_for: Duration::ZERO,
            requests_seen: 0,
            armed: true,
        }
    }

    /// When [`Watchdog::check`] is due (far ahead once disarmed).
    pub fn next_check(&self) -> Instant {
        if self.armed {
            self.next
        } else {
            Instant::now() + Duration::from_secs(86_400 * 365)
        }
    }

    /// At [`Watchdog::next_check`]: `requests` the connection has received so far, and
    /// `streams`, its running HTTP/2 streams (`None` when it never ran one: HTTP/1.1). The
    /// reason to cut the connection, if it must go.
    pub fn check(&mut self, requests: u64, streams: Option<usize>) -> Option<Cut> {
        if requests == 0 {
            return Some(Cut::HeadTimeout);
        }
        let Some(streams) = streams else {
            // HTTP/1.1: hyper times the heads from here on.
            self.armed = false;
            return None;
        };
        if streams == 0 && requests == self.requests_seen {
            self.idle_for += self.period;
        } else {
            self.idle_for = Duration::ZERO;
        }
        self.requests_seen = requests;
        self.next += self.period;
        // One period more: a stream may have ended just after the previous check.
        (self.idle_for >= self.idle + self.period).then_some(Cut::IdleTimeout)
    }
}

/// A client connection whose writes must make progress: when the client takes no byte of
/// what it is sent for `limit` (its receive window shut, as a slow-read attack keeps it, or
/// a client gone without a FIN), the write fails with `TimedOut`, every later write too, the
/// cut is counted `send_timeout`, and the socket is set to reset on close, which frees the
/// response queued in the kernel at once and tells the client (a FIN would wait behind the
/// unread bytes). Reads pass through untouched: the head and idle timeouts govern them.
///
/// The clock is read only when a write would block (once per stall), never per request.
/// Long responses to a client that reads are never cut, however long they take.
#[derive(Debug)]
pub struct SendGuard {
    io: TcpStream,
    limit: Duration,
    /// Armed while a write is blocked; allocated at the first stall.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    expired: bool,
    cuts: Counter,
}

impl SendGuard {
    /// Guard `io`, counting a cut in `stats`.
    pub fn new(io: TcpStream, limit: Duration, stats: &ListenerStats) -> SendGuard {
        SendGuard {
            io,
            limit,
            timer: None,
            armed: false,
            expired: false,
            cuts: stats.cuts[Cut::SendTimeout as usize].clone(),
        }
    }

    /// The connection underneath.
    pub fn get_ref(&self) -> &TcpStream {
        &self.io
    }

    /// A write was refused for now: arm the timer (once per stall), and fail once it fires.
    fn blocked<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        let timer = match &mut self.timer {
            Some(t) => t,
            None => self.timer.insert(Box::pin(tokio::time::sleep(self.limit))),
        };
        if !self.armed {
            timer.as_mut().reset(Instant::now() + self.limit);
            self.armed = true;
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.expired = true;
        self.cuts.inc();
        // Reset on close: the queued response is dropped now, not after the client's
        // zero-window probes give up (minutes), and the client hears of it.
        let _ = rustix::net::sockopt::set_socket_linger(&self.io, Some(Duration::ZERO));
        Poll::Ready(Err(timed_out()))
    }

    fn progressed<T>(
        &mut self,
        r: Poll<std::io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<T>> {
        match r {
            Poll::Pending => self.blocked(cx),
            ready => {
                self.armed = false;
                ready
            }
        }
    }
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the client took nothing for the idle timeout",
    )
}

impl AsyncRead for SendGuard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendGuard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.expired {
            return Poll::Ready(Err(timed_out()));
        }
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.progressed(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.expired {
            return Poll::Ready(Err(timed_out()));
        }
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.progressed(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.expired {
            return Poll::Ready(Err(timed_out()));
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.expired {
            // Closing (with the reset set) is all that is left.
            return Poll::Ready(Err(timed_out()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Descriptors kept for the node's own sockets and files (NATS, GoRouter probes, DNS over
/// TCP, mesh dials, certificates, logs): a sixteenth of the open-file limit, 64..=1024.
fn own_reserve(nofile: u64) -> u64 {
    (nofile / 16).clamp(64, 1024)
}

/// The connection limits of the node's listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// `proxy.max_connections`: the plain and TLS listeners together.
    pub proxy: usize,
    /// `admin.max_connections`.
    pub admin: usize,
    /// `mesh.max_connections`: sessions and forwarded-request connections together.
    pub mesh: usize,
}

/// The limits from the configured ones and, for those not configured, from `nofile` (the
/// open-file limit): admin a thirty-second of it (16..=256), the mesh an eighth
/// (64..=4096), and the proxy half of what is left after those and the node's own reserve
/// (a sixteenth, 64..=1024), because each proxied connection may hold a GoRouter connection
/// too; at least 16. With 1,024 descriptors that is 400 proxy connections, with 65,536
/// about 30,000.
pub fn derive_limits(
    nofile: u64,
    proxy: Option<usize>,
    admin: Option<usize>,
    mesh: Option<usize>,
) -> ConnectionLimits {
    let as_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let admin = admin.unwrap_or_else(|| as_usize((nofile / 32).clamp(16, 256)));
    let mesh = mesh.unwrap_or_else(|| as_usize((nofile / 8).clamp(64, 4096)));
    let proxy = proxy.unwrap_or_else(|| {
        let taken = own_reserve(nofile)
            .saturating_add(admin as u64)
            .saturating_add(mesh as u64);
        as_usize((nofile.saturating_sub(taken) / 2).max(16))
    });
    ConnectionLimits { proxy, admin, mesh }
}

/// The process's open-file limit, after raising the soft limit to the hard one (as Go's
/// runtime does for gorouter since Go 1.19): systemd starts services with a soft limit of
/// 1,024 whatever the hard limit allows. 1,024 when it cannot be read.
pub fn open_file_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = getrlimit(Resource::Nofile);
        }
    }
    // `None` is "unlimited": count it as a large budget rather than a huge number.
    limit.current.unwrap_or(1 << 20).min(1 << 24)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_leave_room_for_the_nodes_own_sockets() {
        // (open-file limit, derived proxy, admin, mesh)
        for (nofile, proxy, admin, mesh) in [
            (1024, 400, 32, 128),
            (20_000, 8110, 256, 2500),
            (65_536, 30_080, 256, 4096),
            (100, 16, 16, 64),
        ] {
            let got = derive_limits(nofile, None, None, None);
            assert_eq!(
                got,
                ConnectionLimits { proxy, admin, mesh },
                "nofile {nofile}"
            );
            let own = own_reserve(nofile) as usize;
            if nofile >= 1024 {
                assert!(
                    2 * got.proxy + got.admin + got.mesh + own <= nofile as usize,
                    "{nofile}"
                );
            }
        }
        // Configured values win; the proxy's default accounts for them.
        let got = derive_limits(1024, None, Some(8), Some(16));
        assert_eq!(
            got,
            ConnectionLimits {
                proxy: 468,
                admin: 8,
                mesh: 16
            }
        );
        assert_eq!(derive_limits(1024, Some(5), None, None).proxy, 5);
    }

    #[test]
    fn a_gate_refuses_and_counts_beyond_its_limit_and_frees_slots_on_drop() {
        let http = ListenerStats::default();
        let https = ListenerStats::default();
        let gate = Gate::new(2, http.clone());
        let other = gate.sharing(https.clone());
        let a = gate.admit().expect("first");
        let _b = other.admit().expect("second, on the shared budget");
        assert!(gate.admit().is_none());
        assert!(other.admit().is_none());
        assert_eq!(http.cuts(Cut::OverLimit), 1);
        assert_eq!(https.cuts(Cut::OverLimit), 1);
        assert_eq!((http.open.get(), https.open.get()), (1, 1));
        drop(a);
        assert_eq!(http.open.get(), 0);
        assert!(gate.admit().is_some());
        assert_eq!(http.limit.get(), 2);
    }

    #[test]
    fn the_watchdog_cuts_late_first_requests_and_idle_http2() {
        let t = Timeouts {
            request_header: Duration::from_secs(10),
            idle: Duration::from_secs(8),
            tls_handshake: Duration::from_secs(10),
        };
        let start = Instant::now();
        // Nothing (or only part of a preface or head) by the deadline: cut.
        let mut dog = Watchdog::new(&t, start + t.request_header);
        assert_eq!(dog.next_check(), start + t.request_header);
        assert_eq!(dog.check(0, None), Some(Cut::HeadTimeout));
        // HTTP/1.1: after the first request, hyper's header timeout takes over.
        let mut dog = Watchdog::new(&t, start + t.request_header);
        assert_eq!(dog.check(1, None), None);
        assert!(dog.next_check() > start + Duration::from_secs(86_400));
        // HTTP/2: checked every 2 s; cut once idle for the timeout and a period more.
        let mut dog = Watchdog::new(&t, start);
        assert_eq!(dog.check(1, Some(1)), None, "a stream runs");
        let verdicts: Vec<Option<Cut>> = (0..5).map(|_| dog.check(1, Some(0))).collect();
        assert_eq!(verdicts[..4], [None; 4]);
        assert_eq!(verdicts[4], Some(Cut::IdleTimeout));
        // Requests between checks keep it open, even when no stream is running at a check.
        let mut dog = Watchdog::new(&t, start);
        for n in 1..100 {
            assert_eq!(dog.check(n, Some(0)), None);
        }
        // A long stream keeps it open too.
        let mut dog = Watchdog::new(&t, start);
        for _ in 0..100 {
            assert_eq!(dog.check(1, Some(1)), None);
        }
    }
}

#[cfg(test)]
mod send_guard_tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpSocket};

    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    /// A loopback pair: the server's end guarded by `limit`, the client's receive buffer
    /// `rcvbuf` bytes.
    async fn pair(stats: &ListenerStats, limit: Duration, rcvbuf: u32) -> (SendGuard, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(rcvbuf).unwrap();
        let (client, accepted) = tokio::join!(
            socket.connect(listener.local_addr().unwrap()),
            listener.accept()
        );
        // A small send buffer: the kernel wakes a blocked writer once a third of it has
        // drained, so a client that reads a little lets the writer on at once (with
        // loopback's megabytes, it would take a megabyte read).
        let accepted = accepted.unwrap().0;
        rustix::net::sockopt::set_socket_send_buffer_size(&accepted, 64 << 10).unwrap();
        let server = SendGuard::new(accepted, limit, stats);
        (server, client.unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_reads_nothing_is_reset_after_the_limit_and_counted() {
        let stats = ListenerStats::default();
        let (mut server, client) = pair(&stats, LIMIT, 4096).await;
        let started = Instant::now();
        let big = vec![b'x'; 64 << 20];
        let err = server.write_all(&big).await.unwrap_err();
        let took = started.elapsed();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(
            took >= LIMIT && took < LIMIT + Duration::from_secs(1),
            "{took:?}"
        );
        assert_eq!(stats.cuts(Cut::SendTimeout), 1);
        // Every later write fails at once, and shutting down sends nothing more.
        assert!(server.write(b"more").await.is_err());
        assert!(server.shutdown().await.is_err());
        drop(server);
        // The client hears a reset, not a clean end behind the queued bytes.
        assert_eq!(
            client.take_error().unwrap().map(|e| e.kind()),
            Some(std::io::ErrorKind::ConnectionReset)
        );
    }

    /// On the real clock: with the paused one, a loaded machine's deferred loopback delivery
    /// lets the clock jump past the writer's deadline before the client's read frees room.
    #[tokio::test]
    async fn a_client_that_keeps_reading_is_never_cut_however_long_it_takes() {
        const LIMIT: Duration = Duration::from_secs(1);
        let stats = ListenerStats::default();
        let (mut server, mut client) = pair(&stats, LIMIT, 64 << 10).await;
        let total = 8 << 20;
        let writer = tokio::spawn(async move {
            let chunk = vec![b'x'; 64 << 10];
            for _ in 0..total / chunk.len() {
                server.write_all(&chunk).await?;
            }
            server.shutdown().await
        });
        // After each MiB the client pauses for a quarter of the limit.
        let started = Instant::now();
        let mut got = 0;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = client.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            if (got + n) >> 20 > got >> 20 {
                tokio::time::sleep(LIMIT / 4).await;
            }
            got += n;
        }
        assert_eq!(got, total);
        writer.await.unwrap().unwrap();
        assert!(
            started.elapsed() > LIMIT * 3 / 2,
            "the pauses added up past the limit"
        );
        assert_eq!(stats.cuts(Cut::SendTimeout), 0);
    }
}
