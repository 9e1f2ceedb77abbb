//! Connection limits and timeouts that every listener shares (CONTRACT.md, "Edge rules"):
//! the proxy's plain and TLS listeners, the connections peers forward requests on, the admin
//! API and the mesh.
//!
//! Owns: how many connections a listener takes at once ([`Gate`]: over it a connection is
//! closed at once and counted, never left to pile up in the backlog), the counters of what
//! was cut and why ([`ListenerStats`], [`Cut`]), the timeouts ([`Timeouts`]), the watchdog
//! that cuts a hyper connection whose first request is late or whose HTTP/2 streams have all
//! been idle too long ([`Watchdog`]), and the default limits derived from the open-file
//! limit ([`derive_limits`]), so that idle sockets on one listener cannot take the
//! descriptors the node needs for the mesh, NATS, the GoRouters and `/healthz`.
//!
//! A leaf: imports nothing of the crate (the metrics module registers the counters it hands
//! out here).
//!
//! Must never: block an accept loop, or read a clock per request (the watchdog counts
//! requests and samples them a few times per timeout).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

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
}

impl Cut {
    /// Every reason, in counter order.
    pub const ALL: [Cut; 4] = [
        Cut::HeadTimeout,
        Cut::IdleTimeout,
        Cut::HandshakeTimeout,
        Cut::OverLimit,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Cut::HeadTimeout => "head_timeout",
            Cut::IdleTimeout => "idle_timeout",
            Cut::HandshakeTimeout => "handshake_timeout",
            Cut::OverLimit => "over_limit",
        }
    }
}

/// The counters of one listener: connections cut, by reason, connections open and the
/// limit. Clones share the counters.
#[derive(Debug, Clone, Default)]
pub struct ListenerStats {
    cuts: [Counter; 4],
    open: Gauge,
    limit: Gauge,
}

impl ListenerStats {
    /// Stats over these (registered) metrics; `cuts` in [`Cut::ALL`] order.
    pub fn new(cuts: [Counter; 4], open: Gauge, limit: Gauge) -> ListenerStats {
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
