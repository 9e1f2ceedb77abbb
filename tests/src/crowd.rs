//! A crowd of HTTP/1.1 clients held against one node for a while, and what the node looks
//! like meanwhile (issue 17's soak). `grouter-bench soak` runs it with 10,000 connections for
//! ten minutes, the integration test `soak::` with a thousand for seconds: one code, two
//! scales.
//!
//! The crowd ([`Mix`]): keep-alive clients sending a request every few seconds; idle ones
//! that send one request and wait for the node to close them (then come back); slow ones
//! that dribble each head within the head timeout; and two kinds of attacker, slowloris (a
//! request head that never ends) and slow-read (a large response never read), each of which
//! measures how long the node took to cut it, then comes back. Meanwhile a prober asks
//! `/healthz` on the admin listener every second on a new connection (as the anycast check
//! does), and a sampler reads the node's RSS and open descriptors from `/proc`.
//!
//! Owns: the clients, their tallies, the samples and the [`Report`]. Must never: sleep to
//! synchronise (the clients' pauses are their pace; every end is a deadline), count a
//! request that was not answered 200 as passed, or wait unbounded (every read, write and
//! connect has a deadline; the run ends at [`Crowd::duration`] plus the longest of them).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, sleep, sleep_until, timeout, timeout_at};

/// A response (head and body) must arrive within this, or the request failed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connect must succeed within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// `/healthz` answering later than this counts as not answering: the anycast check's
/// timeout (`deploy/anycast/grouter-anycast-check.sh`).
pub const HEALTHZ_TIMEOUT: Duration = Duration::from_secs(2);
/// How often `/healthz` is asked.
const HEALTHZ_EVERY: Duration = Duration::from_secs(1);
/// What a slow-read client asks for: far more than any socket buffer holds.
const SLOW_READ_BYTES: u64 = 1 << 30;
/// A slow-read client's receive buffer: small, so the node's writes stall at once.
const SLOW_READ_RCVBUF: u32 = 4096;
/// How often a slow-read client looks whether the node has reset its connection.
const SLOW_READ_POLL: Duration = Duration::from_millis(100);
/// Failure messages kept for the report.
const FAILURES_KEPT: usize = 20;

/// How many clients of each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    /// A request every few seconds on one connection.
    pub keepalive: usize,
    /// One request, then silence until the node closes the connection at its idle timeout.
    pub idle: usize,
    /// Keep-alive, each head dribbled in pieces over a third of the head timeout.
    pub slow: usize,
    /// A head that never ends.
    pub slowloris: usize,
    /// A large response, never read.
    pub slow_read: usize,
}

impl Mix {
    /// `connections` split 84 % keep-alive, 10 % idle, 5 % slow, and half a percent each
    /// slowloris and slow-read (at least two of each).
    pub fn of(connections: usize) -> Mix {
        let attackers = (connections / 200).max(2);
        let idle = connections / 10;
        let slow = connections / 20;
        Mix {
            keepalive: connections.saturating_sub(idle + slow + 2 * attackers),
            idle,
            slow,
            slowloris: attackers,
            slow_read: attackers,
        }
    }

    /// Every client.
    pub fn total(&self) -> usize {
        self.keepalive + self.idle + self.slow + self.slowloris + self.slow_read
    }
}

/// What the crowd runs against, and how.
#[derive(Debug, Clone)]
pub struct Crowd {
    /// The node's plain HTTP listener.
    pub proxy: SocketAddr,
    /// The node's admin listener (`/healthz`).
    pub admin: SocketAddr,
    /// The node's process (RSS and descriptors are read from `/proc/<pid>`).
    pub pid: u32,
    /// A host the node routes to its GoRouter.
    pub host: String,
    /// The clients.
    pub mix: Mix,
    /// How long the clients run (the ramp included).
    pub duration: Duration,
    /// How often the node is sampled.
    pub sample: Duration,
    /// The clients connect over this time, evenly.
    pub ramp: Duration,
    /// The node's `proxy.request_header_timeout_secs`.
    pub head_timeout: Duration,
    /// The node's `proxy.idle_timeout_secs`.
    pub idle_timeout: Duration,
    /// Keep-alive (and slow) clients pause between requests for a time drawn from this range.
    pub pause: (Duration, Duration),
    /// Samples at or after this are past the warm-up: the RSS growth is measured from the
    /// first of them.
    pub warmup: Duration,
}

impl Crowd {
    /// `connections` clients ([`Mix::of`]) for `duration` against a node with these
    /// timeouts: ramped over a second per thousand clients, pauses of 2 to 6 s (at most a
    /// third of the idle timeout), warm-up a tenth of the run (at least the ramp and a
    /// pause more).
    pub fn new(
        proxy: SocketAddr,
        admin: SocketAddr,
        pid: u32,
        host: &str,
        connections: usize,
        duration: Duration,
        (head_timeout, idle_timeout): (Duration, Duration),
    ) -> Crowd {
        let ramp = Duration::from_millis(connections as u64).max(Duration::from_millis(100));
        let hi = Duration::from_secs(6).min(idle_timeout / 3);
        let pause = (Duration::from_secs(2).min(hi / 2), hi);
        Crowd {
            proxy,
            admin,
            pid,
            host: host.to_string(),
            mix: Mix::of(connections),
            duration,
            sample: Duration::from_secs(10).min(duration / 10),
            ramp,
            head_timeout,
            idle_timeout,
            pause,
            warmup: (duration / 10).max(ramp + pause.1),
        }
    }

    /// How long the node's descriptors may take to come back after the crowd.
    pub fn fds_wait(&self) -> Duration {
        self.idle_timeout + Duration::from_secs(30)
    }

    /// Descriptors this process needs for the crowd (its clients, the prober, slack).
    pub fn fds_needed(&self) -> u64 {
        self.mix.total() as u64 + 256
    }

    /// Run the crowd to its end, then wait (up to the idle timeout and 30 s more) for the
    /// node's descriptors to come back to where they were before the crowd. `progress` gets each sample as it is taken.
    pub async fn run(&self, mut progress: impl FnMut(&Sample)) -> Report {
        let node = ProcNode(self.pid);
        let fds_before = node.fds();
        let rss_before = node.rss_kib();
        let tally = Arc::new(Tally::default());
        let start = Instant::now();
        let stop = start + self.duration;
        let mut clients = tokio::task::JoinSet::new();
        let kinds = [
            (Kind::KeepAlive, self.mix.keepalive),
            (Kind::Idle, self.mix.idle),
            (Kind::Slow, self.mix.slow),
            (Kind::Slowloris, self.mix.slowloris),
            (Kind::SlowRead, self.mix.slow_read),
        ];
        // Interleave the kinds over the ramp, so each arrives throughout it.
        let total = self.mix.total().max(1);
        let mut order: Vec<Kind> = Vec::with_capacity(total);
        let mut left: Vec<(Kind, usize)> = kinds.to_vec();
        while order.len() < total {
            for (kind, n) in &mut left {
                if *n > 0 {
                    order.push(*kind);
                    *n -= 1;
                }
            }
        }
        let shared = Arc::new(self.clone());
        for (i, kind) in order.into_iter().enumerate() {
            let at = start + self.ramp.mul_f64(i as f64 / total as f64);
            let (crowd, tally) = (shared.clone(), tally.clone());
            clients.spawn(async move {
                sleep_until(at).await;
                let client = Client {
                    crowd: &crowd,
                    tally: &tally,
                    kind,
                    rng: Rng::new(i as u64),
                    stop,
                };
                client.run().await;
            });
        }
        let prober = tokio::spawn(probe_healthz(self.admin, tally.clone(), stop));

        // Sample until the clients' end.
        let mut samples = Vec::new();
        let mut next = start + self.sample;
        let mut healthz_seen = 0;
        // The last sample comes before the stop: at it, the clients are leaving.
        while next < stop {
            sleep_until(next).await;
            let healthz = tally.healthz.lock();
            let slowest = healthz[healthz_seen..]
                .iter()
                .map(|h| h.latency)
                .max()
                .unwrap_or_default();
            healthz_seen = healthz.len();
            drop(healthz);
            let s = Sample {
                at: next - start,
                rss_kib: node.rss_kib(),
                fds: node.fds(),
                open: tally.open_total(),
                ok: tally.ok.load(Ordering::Relaxed),
                failed: tally.failed.load(Ordering::Relaxed),
                cuts: tally.cut_count(),
                healthz_max: slowest,
            };
            progress(&s);
            samples.push(s);
            next += self.sample;
        }
        // Every client ends by its own deadline (the stop, plus one request or cut at most).
        while clients.join_next().await.is_some() {}
        let _ = prober.await;
        let ended = Instant::now();
        let all_closed = node.wait_fds_at_most(fds_before, self.fds_wait()).await;
        let closed_after = all_closed.then(|| ended.elapsed());
        let t = Arc::try_unwrap(tally).unwrap_or_else(|t| t.snapshot());
        Report {
            mix: self.mix,
            duration: self.duration,
            warmup: self.warmup,
            ramp: self.ramp,
            head_timeout: self.head_timeout,
            idle_timeout: self.idle_timeout,
            fds_before,
            rss_before,
            fds_after: node.fds(),
            closed_after,
            samples,
            ok: t.ok.into_inner(),
            failed: t.failed.into_inner(),
            failures: t.failures.into_inner(),
            peak_open: t.peak_open.into_inner(),
            healthz: t.healthz.into_inner(),
            slowloris: t.slowloris.into_inner(),
            slow_read: t.slow_read.into_inner(),
            idle: t.idle.into_inner(),
        }
    }
}

/// The node's process, as `/proc` shows it.
#[derive(Debug, Clone, Copy)]
struct ProcNode(u32);

impl ProcNode {
    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.0))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.0)).map_or(0, |d| d.count())
    }

    /// Whether the descriptors came down to `n` within `within`.
    async fn wait_fds_at_most(&self, n: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.fds() <= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The node at one moment of the run.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Since the crowd started.
    pub at: Duration,
    /// The node's resident memory.
    pub rss_kib: u64,
    /// The node's open descriptors.
    pub fds: usize,
    /// Client connections open at that moment (all kinds).
    pub open: usize,
    /// Requests answered 200 so far (keep-alive, slow and idle clients).
    pub ok: u64,
    /// Requests of those clients that failed so far.
    pub failed: u64,
    /// Attackers and idle clients cut so far.
    pub cuts: usize,
    /// The slowest `/healthz` since the previous sample.
    pub healthz_max: Duration,
}

impl Sample {
    /// One row of [`Report::table`].
    pub fn row(&self) -> String {
        format!(
            "| {:>5} | {:>6} | {:>7.1} | {:>6} | {:>9} | {:>6} | {:>5} | {:>8.1} |",
            self.at.as_secs(),
            self.open,
            self.rss_kib as f64 / 1024.0,
            self.fds,
            self.ok,
            self.failed,
            self.cuts,
            self.healthz_max.as_secs_f64() * 1e3,
        )
    }

    /// The header of [`Report::table`].
    pub fn header() -> &'static str {
        "|   t s |   open | RSS MiB |    fds |   req ok | failed |  cuts | healthz ms |\n\
         | ----: | -----: | ------: | -----: | -------: | -----: | ----: | ---------: |"
    }
}

/// One `/healthz` asked.
#[derive(Debug, Clone, Copy)]
pub struct Healthz {
    /// Since the crowd started.
    pub at: Duration,
    /// Until the whole answer (or the timeout).
    pub latency: Duration,
    /// Answered 200 within [`HEALTHZ_TIMEOUT`].
    pub ok: bool,
}

/// What a run showed.
#[derive(Debug, Clone)]
pub struct Report {
    /// The clients.
    pub mix: Mix,
    /// The run's length.
    pub duration: Duration,
    /// Where the warm-up ends.
    pub warmup: Duration,
    /// The clients' ramp.
    pub ramp: Duration,
    /// The node's head timeout.
    pub head_timeout: Duration,
    /// The node's idle timeout.
    pub idle_timeout: Duration,
    /// The node's descriptors before the crowd.
    pub fds_before: usize,
    /// The node's RSS before the crowd.
    pub rss_before: u64,
    /// Its descriptors at the end of the wait after the crowd.
    pub fds_after: usize,
    /// How long after the last client ended the node was back to `fds_before` (`None`:
    /// not within [`Crowd::fds_wait`]).
    pub closed_after: Option<Duration>,
    /// The samples, in order.
    pub samples: Vec<Sample>,
    /// Requests answered 200.
    pub ok: u64,
    /// Requests that failed (a status other than 200, a reset, a timeout, a refused connect).
    pub failed: u64,
    /// The first failures, described.
    pub failures: Vec<String>,
    /// Most client connections open at once.
    pub peak_open: usize,
    /// Every `/healthz` asked.
    pub healthz: Vec<Healthz>,
    /// Slowloris clients: from connect to the node's close, or `None` when not cut within
    /// three head timeouts.
    pub slowloris: Vec<Option<Duration>>,
    /// Slow-read clients: from the request to the node's reset, or `None` when not cut
    /// within three idle timeouts.
    pub slow_read: Vec<Option<Duration>>,
    /// Idle clients: from their response to the node's close, or `None` when not closed
    /// within three idle timeouts.
    pub idle: Vec<Option<Duration>>,
}

impl Report {
    /// The samples past the warm-up.
    pub fn held(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(|s| s.at >= self.warmup)
    }

    /// RSS at the first sample past the warm-up and at the last, KiB.
    pub fn rss_warm_and_end(&self) -> (u64, u64) {
        let warm = self.held().next().map_or(0, |s| s.rss_kib);
        let end = self.samples.last().map_or(0, |s| s.rss_kib);
        (warm, end)
    }

    /// Fewest and most descriptors past the warm-up.
    pub fn fds_range(&self) -> (usize, usize) {
        let fds: Vec<usize> = self.held().map(|s| s.fds).collect();
        let min = fds.iter().copied().min().unwrap_or(0);
        (min, fds.iter().copied().max().unwrap_or(0))
    }

    /// The slowest `/healthz`, and how many were not answered 200 in time.
    pub fn healthz_worst(&self) -> (Duration, usize) {
        let max = self
            .healthz
            .iter()
            .map(|h| h.latency)
            .max()
            .unwrap_or_default();
        (max, self.healthz.iter().filter(|h| !h.ok).count())
    }

    /// The samples as a Markdown table.
    pub fn table(&self) -> String {
        let mut out = String::from(Sample::header());
        for s in &self.samples {
            out.push('\n');
            out.push_str(&s.row());
        }
        out
    }

    /// The summary: memory, descriptors, requests, `/healthz` and cut-off times.
    pub fn summary(&self) -> String {
        let mib = |kib: u64| kib as f64 / 1024.0;
        let (warm, end) = self.rss_warm_and_end();
        let (fd_min, fd_max) = self.fds_range();
        let (hz_max, hz_bad) = self.healthz_worst();
        let mut hz: Vec<Duration> = self.healthz.iter().map(|h| h.latency).collect();
        hz.sort_unstable();
        let peak_rss = self.samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
        let m = &self.mix;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "clients: {} ({} keep-alive, {} idle, {} slow, {} slowloris, {} slow-read), \
             ramp {:.1} s, run {} s; most open at once {}",
            m.total(),
            m.keepalive,
            m.idle,
            m.slow,
            m.slowloris,
            m.slow_read,
            self.ramp.as_secs_f64(),
            self.duration.as_secs(),
            self.peak_open,
        );
        let _ = writeln!(
            out,
            "node RSS: {:.1} MiB before, {:.1} MiB at warm-up ({} s), {:.1} MiB at the end, \
             peak {:.1} MiB: growth after warm-up {:+.1} MiB",
            mib(self.rss_before),
            mib(warm),
            self.warmup.as_secs(),
            mib(end),
            mib(peak_rss),
            mib(end) - mib(warm),
        );
        let _ = writeln!(
            out,
            "node fds: {} before, {}..{} while held, {} after the crowd left ({})",
            self.fds_before,
            fd_min,
            fd_max,
            self.fds_after,
            match self.closed_after {
                Some(d) => format!(
                    "back to {} within {:.1} s",
                    self.fds_before,
                    d.as_secs_f64()
                ),
                None => format!("NOT back to {} in time", self.fds_before),
            },
        );
        let _ = writeln!(
            out,
            "requests: {} ok, {} failed{}",
            self.ok,
            self.failed,
            if self.failures.is_empty() {
                String::new()
            } else {
                format!(" (first: {})", self.failures.join("; "))
            },
        );
        let _ = writeln!(
            out,
            "/healthz: {} asked, {} not 200 within {} s; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.healthz.len(),
            hz_bad,
            HEALTHZ_TIMEOUT.as_secs(),
            ms(percentile(&hz, 0.5)),
            ms(percentile(&hz, 0.99)),
            ms(hz_max),
        );
        for (what, timeout, cuts) in [
            ("slowloris", self.head_timeout, &self.slowloris),
            ("slow-read", self.idle_timeout, &self.slow_read),
            ("idle", self.idle_timeout, &self.idle),
        ] {
            let _ = writeln!(
                out,
                "{what} cut-off (timeout {} s): {}",
                timeout.as_secs(),
                describe_cuts(cuts)
            );
        }
        out
    }
}

/// `n cut, min/p50/max`, and how many were not.
fn describe_cuts(cuts: &[Option<Duration>]) -> String {
    let mut cut: Vec<Duration> = cuts.iter().flatten().copied().collect();
    cut.sort_unstable();
    let uncut = cuts.len() - cut.len();
    if cut.is_empty() {
        return format!("none cut, {uncut} not cut");
    }
    format!(
        "{} cut after {:.2} / {:.2} / {:.2} s (min / p50 / max), {} not cut",
        cut.len(),
        cut[0].as_secs_f64(),
        percentile(&cut, 0.5).as_secs_f64(),
        cut[cut.len() - 1].as_secs_f64(),
        uncut,
    )
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    KeepAlive,
    Idle,
    Slow,
    Slowloris,
    SlowRead,
}

/// The clients' shared counters.
#[derive(Debug, Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    open: AtomicUsize,
    peak_open: AtomicUsize,
    failures: Mutex<Vec<String>>,
    healthz: Mutex<Vec<Healthz>>,
    slowloris: Mutex<Vec<Option<Duration>>>,
    slow_read: Mutex<Vec<Option<Duration>>>,
    idle: Mutex<Vec<Option<Duration>>>,
}

impl Tally {
    fn fail(&self, kind: Kind, what: impl std::fmt::Display) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut f = self.failures.lock();
        if f.len() < FAILURES_KEPT {
            f.push(format!("{kind:?}: {what}"));
        }
    }

    fn open_total(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn cut_count(&self) -> usize {
        let n = |v: &Mutex<Vec<Option<Duration>>>| v.lock().iter().flatten().count();
        n(&self.slowloris) + n(&self.slow_read) + n(&self.idle)
    }

    fn snapshot(&self) -> Tally {
        Tally {
            ok: AtomicU64::new(self.ok.load(Ordering::Relaxed)),
            failed: AtomicU64::new(self.failed.load(Ordering::Relaxed)),
            open: AtomicUsize::new(self.open.load(Ordering::Relaxed)),
            peak_open: AtomicUsize::new(self.peak_open.load(Ordering::Relaxed)),
            failures: Mutex::new(self.failures.lock().clone()),
            healthz: Mutex::new(self.healthz.lock().clone()),
            slowloris: Mutex::new(self.slowloris.lock().clone()),
            slow_read: Mutex::new(self.slow_read.lock().clone()),
            idle: Mutex::new(self.idle.lock().clone()),
        }
    }
}

/// A client connection, counted open while it lives.
struct Open<'a> {
    tcp: TcpStream,
    buf: Vec<u8>,
    tally: &'a Tally,
}

impl<'a> Open<'a> {
    fn new(tcp: TcpStream, tally: &'a Tally) -> Open<'a> {
        let now = tally.open.fetch_add(1, Ordering::Relaxed) + 1;
        tally.peak_open.fetch_max(now, Ordering::Relaxed);
        Open {
            tcp,
            buf: Vec::with_capacity(2048),
            tally,
        }
    }

    /// Read one response (head and `Content-Length` body): its status.
    async fn response(&mut self) -> std::io::Result<u16> {
        response(&mut self.tcp, &mut self.buf).await
    }
}

/// `GET path` for `host` on a kept-alive connection: the response's status, once it has been
/// read whole (head and `Content-Length` body), so the connection can carry the next.
pub async fn get(tcp: &mut TcpStream, host: &str, path: &str) -> std::io::Result<u16> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    tcp.write_all(request.as_bytes()).await?;
    response(tcp, &mut Vec::new()).await
}

/// Read one response from `tcp` (`buf` holds what was read and not used yet).
async fn response(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head_len = end + 4;
            let (status, length) = parse_head(&buf[..head_len])?;
            let total = head_len + length;
            while buf.len() < total {
                fill(tcp, buf).await?;
            }
            buf.drain(..total);
            return Ok(status);
        }
        fill(tcp, buf).await?;
    }
}

async fn fill(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 4096];
    let n = tcp.read(&mut chunk).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.tally.open.fetch_sub(1, Ordering::Relaxed);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Status and `Content-Length` of a response head.
fn parse_head(head: &[u8]) -> std::io::Result<(u16, usize)> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(bad("unparsable response head")),
    }
    let status = resp.code.ok_or_else(|| bad("no status"))?;
    let mut length = 0;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| bad("bad content-length"))?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad("a chunked response (the clients read lengths only)"));
        }
    }
    Ok((status, length))
}

/// splitmix64: each client's own pace, reproducible.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A duration in `[lo, hi]`.
    fn between(&mut self, (lo, hi): (Duration, Duration)) -> Duration {
        let f = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi.saturating_sub(lo)).mul_f64(f)
    }
}

/// One client of the crowd.
struct Client<'a> {
    crowd: &'a Crowd,
    tally: &'a Tally,
    kind: Kind,
    rng: Rng,
    stop: Instant,
}

impl<'a> Client<'a> {
    async fn run(mut self) {
        match self.kind {
            Kind::KeepAlive | Kind::Slow => self.polite().await,
            Kind::Idle => self.idle().await,
            Kind::Slowloris => self.slowloris().await,
            Kind::SlowRead => self.slow_read().await,
        }
    }

    async fn connect(&self) -> Option<Open<'a>> {
        match timeout(CONNECT_TIMEOUT, TcpStream::connect(self.crowd.proxy)).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                Some(Open::new(tcp, self.tally))
            }
            Ok(Err(e)) => {
                self.tally.fail(self.kind, format!("connect: {e}"));
                None
            }
            Err(_) => {
                self.tally.fail(self.kind, "connect: timed out");
                None
            }
        }
    }

    fn request(&self, n: u64) -> String {
        format!(
            "GET /soak/{n} HTTP/1.1\r\nHost: {}\r\nUser-Agent: grouter-soak\r\n\r\n",
            self.crowd.host
        )
    }

    /// Send a request (dribbled in pieces when slow) and read its response: whether it was
    /// a 200 (anything else is counted failed).
    async fn exchange(&self, conn: &mut Open<'_>, n: u64) -> bool {
        let request = self.request(n);
        let slow = self.kind == Kind::Slow;
        let ended = timeout(RESPONSE_TIMEOUT, async {
            if slow {
                // Four pieces over a third of the head timeout: well within it.
                let bytes = request.as_bytes();
                let piece = bytes.len().div_ceil(4);
                for (i, part) in bytes.chunks(piece).enumerate() {
                    if i > 0 {
                        sleep(self.crowd.head_timeout / 12).await;
                    }
                    conn.tcp.write_all(part).await?;
                }
            } else {
                conn.tcp.write_all(request.as_bytes()).await?;
            }
            conn.response().await
        })
        .await;
        match ended {
            Ok(Ok(200)) => {
                self.tally.ok.fetch_add(1, Ordering::Relaxed);
                true
            }
            Ok(Ok(status)) => {
                self.tally.fail(self.kind, format!("status {status}"));
                false
            }
            Ok(Err(e)) => {
                self.tally.fail(self.kind, e);
                false
            }
            Err(_) => {
                self.tally.fail(self.kind, "no response within 10 s");
                false
            }
        }
    }

    /// Keep-alive and slow clients: a request, a pause, again, on one connection while it
    /// serves (a new one after a failure).
    async fn polite(&mut self) {
        let mut n = 0;
        let mut conn = None;
        while Instant::now() < self.stop {
            if conn.is_none() {
                conn = self.connect().await;
            }
            if let Some(c) = conn.as_mut() {
                n += 1;
                if !self.exchange(c, n).await {
                    conn = None;
                }
            }
            let pause = self.rng.between(self.crowd.pause);
            sleep_until((Instant::now() + pause).min(self.stop)).await;
        }
    }

    /// Idle clients: a request, then silence until the node closes the connection.
    async fn idle(&mut self) {
        let limit = 3 * self.crowd.idle_timeout;
        while Instant::now() < self.stop {
            let Some(mut conn) = self.connect().await else {
                sleep_until((Instant::now() + Duration::from_secs(1)).min(self.stop)).await;
                continue;
            };
            if !self.exchange(&mut conn, 0).await {
                continue;
            }
            let since = Instant::now();
            let mut byte = [0u8; 1];
            match timeout_at(self.stop.min(since + limit), conn.tcp.read(&mut byte)).await {
                Ok(_) => self.tally.idle.lock().push(Some(since.elapsed())),
                Err(_) if Instant::now() >= self.stop => return,
                Err(_) => self.tally.idle.lock().push(None),
            }
        }
    }

    /// Slowloris: a request line and part of a header, then a byte now and then, never the
    /// end of the head; timed from the connect to the node's close.
    async fn slowloris(&mut self) {
        let limit = 3 * self.crowd.head_timeout;
        let drip = self.crowd.head_timeout / 10;
        while Instant::now() < self.stop {
            let Some(mut conn) = self.connect().await else {
                sleep_until((Instant::now() + Duration::from_secs(1)).min(self.stop)).await;
                continue;
            };
            let since = Instant::now();
            let opening = format!("GET / HTTP/1.1\r\nHost: {}\r\nX-Slow: ", self.crowd.host);
            let mut cut = conn.tcp.write_all(opening.as_bytes()).await.is_err();
            let give_up = self.stop.min(since + limit);
            let mut byte = [0u8; 256];
            while !cut {
                tokio::select! {
                    // Anything from the node (a close, a reset, an error page) ends it.
                    _ = conn.tcp.read(&mut byte) => cut = true,
                    () = sleep(drip) => {
                        cut = conn.tcp.write_all(b"a").await.is_err();
                    }
                    () = sleep_until(give_up) => break,
                }
            }
            if cut {
                self.tally.slowloris.lock().push(Some(since.elapsed()));
            } else if Instant::now() < self.stop {
                self.tally.slowloris.lock().push(None);
            }
        }
    }

    /// Slow-read: a request for a large response, which is never read; timed from the
    /// request to the node's reset (a node that closes gracefully cannot be heard behind the
    /// unread response, so this waits for a reset).
    async fn slow_read(&mut self) {
        let limit = 3 * self.crowd.idle_timeout;
        while Instant::now() < self.stop {
            let tcp = async {
                let socket = TcpSocket::new_v4()?;
                socket.set_recv_buffer_size(SLOW_READ_RCVBUF)?;
                timeout(CONNECT_TIMEOUT, socket.connect(self.crowd.proxy))
                    .await
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
            };
            let mut conn = match tcp.await {
                Ok(tcp) => Open::new(tcp, self.tally),
                Err(e) => {
                    self.tally.fail(self.kind, format!("connect: {e}"));
                    sleep_until((Instant::now() + Duration::from_secs(1)).min(self.stop)).await;
                    continue;
                }
            };
            let request = format!(
                "GET /bytes/{SLOW_READ_BYTES} HTTP/1.1\r\nHost: {}\r\n\r\n",
                self.crowd.host
            );
            if conn.tcp.write_all(request.as_bytes()).await.is_err() {
                continue;
            }
            let since = Instant::now();
            let give_up = self.stop.min(since + limit);
            let cut = loop {
                if !matches!(conn.tcp.take_error(), Ok(None)) {
                    break true;
                }
                if Instant::now() >= give_up {
                    break false;
                }
                sleep(SLOW_READ_POLL).await;
            };
            if cut {
                self.tally.slow_read.lock().push(Some(since.elapsed()));
            } else if Instant::now() < self.stop {
                self.tally.slow_read.lock().push(None);
            }
        }
    }
}

/// Ask `/healthz` every second on a new connection until `stop`.
async fn probe_healthz(admin: SocketAddr, tally: Arc<Tally>, stop: Instant) {
    let start = Instant::now();
    let mut next = start;
    while next < stop {
        sleep_until(next).await;
        let t = Instant::now();
        let answer = timeout(HEALTHZ_TIMEOUT, async {
            let mut tcp = TcpStream::connect(admin).await?;
            tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .await?;
            let mut out = Vec::new();
            tcp.read_to_end(&mut out).await?;
            Ok::<_, std::io::Error>(out)
        })
        .await;
        let ok = matches!(&answer, Ok(Ok(out)) if out.starts_with(b"HTTP/1.1 200"));
        tally.healthz.lock().push(Healthz {
            at: t - start,
            latency: t.elapsed(),
            ok,
        });
        next += HEALTHZ_EVERY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_adds_up_and_has_every_kind() {
        for n in [10, 1000, 10_000] {
            let m = Mix::of(n);
            assert_eq!(m.total(), n, "{m:?}");
            assert!(
                m.slowloris >= 2 && m.slow_read >= 2 && m.keepalive > 0,
                "{m:?}"
            );
        }
        assert_eq!(
            Mix::of(10_000),
            Mix {
                keepalive: 8400,
                idle: 1000,
                slow: 500,
                slowloris: 50,
                slow_read: 50
            }
        );
    }
}
