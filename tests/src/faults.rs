//! The chaos harness (issue 17): three sites of two real nodes each, constant client traffic
//! at every node, and a seeded schedule of faults — a pair of sites cut, black-holed, or
//! slowed with loss; a node killed (SIGKILL) and restarted, or paused (SIGSTOP) past the
//! failure detector's suspicion; a site's NATS stopped; one of a site's GoRouters stopped —
//! one at a time, each healed before the next, with the invariants of DESIGN.md's failure
//! model checked throughout:
//!
//! - no request for an app served at the requesting node's own site fails;
//! - a request for an app served only at other sites fails, if at all, within
//!   [`FAILOVER`] of a fault's start;
//! - within [`CONVERGE`] of each heal, every node holds the same view: every route, at
//!   every site serving it, from every node of that site, and is in sync;
//! - no node refuses a peer's frame for misbehaviour (an honest mesh forges nothing);
//! - no node leaks file descriptors or tasks.
//!
//! [`run`] returns the figures; the seed is printed first, so a failure can be replayed
//! with the same seed. Requests are GETs: a GoRouter stopped mid-request may fail a request
//! that is not idempotent, and that is the client's to retry.
//!
//! Links between sites go through [`crate::relay::Links`]: each node advertises its relay
//! and dials from an address of its own site.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::relay::{Link, Links, Relay};
use crate::{MeshCa, NatsServer, Node};
use grouter_standin::StandIn;

/// The sites.
pub const SITES: [&str; 3] = ["a", "b", "c"];
/// Nodes per site.
pub const NODES_PER_SITE: usize = 2;
/// A remote app may fail for this long after a fault starts.
pub const FAILOVER: Duration = Duration::from_secs(3);
/// Every node's view agrees within this long of a heal.
pub const CONVERGE: Duration = Duration::from_secs(5);
/// How long a waiting convergence check looks before it reports a violation.
const CONVERGE_LOOK: Duration = Duration::from_secs(20);
/// Route emitters re-register this often (Cloud Foundry's route-emitter: 20 s).
const EMIT_EVERY: Duration = Duration::from_secs(2);
/// The app every site serves.
const EVERYWHERE: &str = "every.apps.example.com";
/// The misbehaviour reasons of `grouter::mesh::sync::Rejection`.
const MISBEHAVIOUR: [&str; 12] = [
    "own_partition",
    "site_mismatch",
    "malformed",
    "bad_signature",
    "unknown_owner",
    "generation_in_future",
    "config_in_future",
    "over_limit",
    "domain_not_allowed",
    "revoked",
    "cert_expired",
    "unknown_ca",
];

/// The app served at every site but `site`, requested at `site`'s nodes.
fn pair_app(site: &str) -> String {
    format!("pair-{site}.apps.example.com")
}

/// How long a run lasts and which schedule it follows.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The schedule's seed.
    pub seed: u64,
    /// Faults are started until this much time has passed (every kind at least once).
    pub duration: Duration,
}

/// A fault.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// The link between two sites cut (resets, refused dials).
    Cut(usize, usize),
    /// The link between two sites black-holed.
    Hole(usize, usize),
    /// The link between two sites slow and lossy.
    Slow(usize, usize, Duration, f64),
    /// A node killed (SIGKILL), restarted at the heal.
    Kill(usize),
    /// A node paused (SIGSTOP), continued at the heal.
    Pause(usize),
    /// A site's NATS server stopped, started again at the heal.
    Nats(usize),
    /// One of a site's GoRouters stopped, started again at the heal.
    GoRouter(usize, usize),
}

impl Fault {
    const KINDS: usize = 7;

    fn random(kind: usize, rng: &mut fastrand::Rng) -> Fault {
        let pair = |rng: &mut fastrand::Rng| {
            let a = rng.usize(0..SITES.len());
            (a, (a + 1 + rng.usize(0..SITES.len() - 1)) % SITES.len())
        };
        let node = |rng: &mut fastrand::Rng| rng.usize(0..SITES.len() * NODES_PER_SITE);
        match kind {
            0 => {
                let (a, b) = pair(rng);
                Fault::Cut(a, b)
            }
            1 => {
                let (a, b) = pair(rng);
                Fault::Hole(a, b)
            }
            2 => {
                let (a, b) = pair(rng);
                let delay = Duration::from_millis(rng.u64(20..=150));
                Fault::Slow(a, b, delay, f64::from(rng.u8(0..=5)) / 100.0)
            }
            3 => Fault::Kill(node(rng)),
            4 => Fault::Pause(node(rng)),
            5 => Fault::Nats(rng.usize(0..SITES.len())),
            _ => Fault::GoRouter(rng.usize(0..SITES.len()), rng.usize(0..2)),
        }
    }

    /// The node this fault takes down, if any: its own clients' requests cannot succeed.
    fn downs(&self) -> Option<usize> {
        match self {
            Fault::Kill(n) | Fault::Pause(n) => Some(*n),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        let n = |i: &usize| node_name(*i);
        match self {
            Fault::Cut(a, b) => format!("cut {}–{}", SITES[*a], SITES[*b]),
            Fault::Hole(a, b) => format!("black hole {}–{}", SITES[*a], SITES[*b]),
            Fault::Slow(a, b, d, l) => {
                format!(
                    "slow {}–{} (+{d:?}, {:.0} % loss)",
                    SITES[*a],
                    SITES[*b],
                    l * 100.0
                )
            }
            Fault::Kill(i) => format!("kill -9 {}", n(i)),
            Fault::Pause(i) => format!("SIGSTOP {}", n(i)),
            Fault::Nats(s) => format!("stop NATS of {}", SITES[*s]),
            Fault::GoRouter(s, g) => format!("stop GoRouter {g} of {}", SITES[*s]),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Fault::Cut(..) => "cut",
            Fault::Hole(..) => "black hole",
            Fault::Slow(..) => "slow link",
            Fault::Kill(_) => "kill -9",
            Fault::Pause(_) => "SIGSTOP",
            Fault::Nats(_) => "NATS stop",
            Fault::GoRouter(..) => "GoRouter stop",
        }
    }
}

fn node_name(i: usize) -> String {
    format!("{}-{}", SITES[i / NODES_PER_SITE], i % NODES_PER_SITE + 1)
}

fn site_of(i: usize) -> usize {
    i / NODES_PER_SITE
}

/// What one fault did.
#[derive(Debug, Clone)]
pub struct Episode {
    /// The fault.
    pub fault: String,
    /// Its kind.
    pub kind: &'static str,
    /// When it started, from the run's start.
    pub at: Duration,
    /// How long it lasted.
    pub held: Duration,
    /// From the heal until every node's view agreed.
    pub converged_in: Duration,
    /// Requests sent while it lasted (until converged), but those to the node it took down.
    pub requests: usize,
    /// Of those, failed requests for locally served apps (must be 0).
    pub local_failed: usize,
    /// Of those, failed requests for remote apps.
    pub remote_failed: usize,
    /// From the fault's start to the end of the last failed remote request (0 when none).
    pub failover: Duration,
}

/// The figures of a run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Every fault, in order.
    pub episodes: Vec<Episode>,
    /// Requests sent in all, local / remote.
    pub sent: (usize, usize),
    /// Failed requests in all, local / remote, but those [`Report::felled`].
    pub failed: (usize, usize),
    /// Requests that failed because their own node was killed or paused under them.
    pub felled: usize,
    /// Open descriptors per node after warm-up and at the end.
    pub fds: Vec<(String, usize, usize)>,
    /// Resident memory (KiB) per node after warm-up and at the end.
    pub rss_kib: Vec<(String, u64, u64)>,
    /// Tasks alive in each node's runtime after warm-up and once the traffic stopped.
    pub tasks: Vec<(String, u64, u64)>,
}

impl Report {
    /// The `q` quantile (0..=1) of `f` over the episodes.
    pub fn quantile(&self, q: f64, f: impl Fn(&Episode) -> Duration) -> Duration {
        let mut v: Vec<Duration> = self.episodes.iter().map(f).collect();
        v.sort();
        if v.is_empty() {
            return Duration::ZERO;
        }
        let last = v.len() - 1;
        let i = (0..=last)
            .find(|i| {
                let share = u32::try_from(*i).unwrap_or(u32::MAX);
                let total = u32::try_from(last.max(1)).unwrap_or(u32::MAX);
                f64::from(share) / f64::from(total) >= q
            })
            .unwrap_or(last);
        v[i]
    }

    /// One line per fault kind: count, requests, failures, failover and convergence.
    pub fn summary(&self) -> String {
        let mut by: BTreeMap<&str, Vec<&Episode>> = BTreeMap::new();
        for e in &self.episodes {
            by.entry(e.kind).or_default().push(e);
        }
        let mut out = format!(
            "seed {}: {} faults, {} local requests ({} failed), {} remote ({} failed), {} \
             felled with their own node; failover p50 {:?} p99 {:?}; convergence p50 {:?} p99 {:?}\n",
            self.seed,
            self.episodes.len(),
            self.sent.0,
            self.failed.0,
            self.sent.1,
            self.failed.1,
            self.felled,
            self.quantile(0.5, |e| e.failover),
            self.quantile(0.99, |e| e.failover),
            self.quantile(0.5, |e| e.converged_in),
            self.quantile(0.99, |e| e.converged_in),
        );
        for (kind, eps) in by {
            let max =
                |f: fn(&Episode) -> Duration| eps.iter().map(|e| f(e)).max().unwrap_or_default();
            out.push_str(&format!(
                "  {kind:<14} {:>4} faults {:>7} requests {:>3} local failed {:>4} remote failed, \
                 failover max {:>7.2?}, convergence max {:>7.2?}\n",
                eps.len(),
                eps.iter().map(|e| e.requests).sum::<usize>(),
                eps.iter().map(|e| e.local_failed).sum::<usize>(),
                eps.iter().map(|e| e.remote_failed).sum::<usize>(),
                max(|e| e.failover),
                max(|e| e.converged_in),
            ));
        }
        for (((name, f0, f1), (_, r0, r1)), (_, t0, t1)) in
            self.fds.iter().zip(&self.rss_kib).zip(&self.tasks)
        {
            out.push_str(&format!(
                "  {name}: fds {f0} -> {f1}, tasks {t0} -> {t1}, RSS {} -> {} MiB\n",
                r0 / 1024,
                r1 / 1024
            ));
        }
        out
    }
}

/// One request's outcome.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    node: usize,
    local: bool,
    at: Duration,
    took: Duration,
    ok: bool,
    /// The status, 0 when no response came (the error then in `error`).
    status: u16,
    error: Option<&'static str>,
}

impl Outcome {
    /// Whether the request was under way while the fault of `w` lasted (it may have been
    /// sent just before it began).
    fn overlaps(&self, w: &Window) -> bool {
        let (_, at, _, until) = w;
        self.at < *until && self.at + self.took >= *at
    }

    /// Whether the request was sent to a node that a fault took down (killed or paused)
    /// while it was under way: no router can answer for its own crash.
    fn felled(&self, windows: &[Window]) -> bool {
        windows
            .iter()
            .any(|w| w.0.downs() == Some(self.node) && self.overlaps(w))
    }
}

/// A site's NATS and GoRouters (addresses kept, so a stopped one comes back on its port).
struct Site {
    bus: NatsServer,
    gorouters: Vec<(SocketAddr, Option<StandIn>)>,
}

/// The running mesh.
struct Mesh {
    _ca: MeshCa,
    links: Links,
    sites: Vec<Site>,
    nodes: Vec<Node>,
    relays: Vec<Relay>,
    /// Each node's proxy address while it runs, for its clients.
    http: Vec<Arc<Mutex<Option<SocketAddr>>>>,
    /// The node a fault has taken down now.
    down: Arc<Mutex<Option<usize>>>,
}

/// The routes a site's emitter registers: the app every site serves, and the pair apps of
/// the other sites.
fn registrations(site: usize) -> Vec<Value> {
    let mut hosts = vec![EVERYWHERE.to_string()];
    hosts.extend(
        SITES
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != site)
            .map(|(_, s)| pair_app(s)),
    );
    hosts
        .into_iter()
        .enumerate()
        .map(|(i, host)| {
            json!({
                "host": format!("10.0.{site}.1"), "port": 61000 + i,
                "uris": [&host], "app": format!("guid-{host}"),
            })
        })
        .collect()
}

type View = BTreeMap<(String, String), BTreeSet<String>>;

/// The view every node must hold: `(host, site) → nodes serving it there`.
fn expected_view() -> View {
    let mut view = BTreeMap::new();
    for (si, site) in SITES.iter().enumerate() {
        let nodes: BTreeSet<String> = (0..NODES_PER_SITE)
            .map(|n| node_name(si * NODES_PER_SITE + n))
            .collect();
        for r in registrations(si) {
            let host = r["uris"][0].as_str().unwrap_or_default().to_string();
            view.insert((host, site.to_string()), nodes.clone());
        }
    }
    view
}

async fn view_of(node: &Node) -> Option<View> {
    let routes = node.json("/v1/routes").await;
    let mut view = BTreeMap::new();
    for r in routes["routes"].as_array()? {
        for s in r["sites"].as_array()? {
            let nodes = s["nodes"]
                .as_array()?
                .iter()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect();
            view.insert(
                (
                    r["host"].as_str()?.to_string(),
                    s["site"].as_str()?.to_string(),
                ),
                nodes,
            );
        }
    }
    Some(view)
}

/// Misbehaviour refusals a node counted, by reason.
async fn misbehaviour(node: &Node) -> BTreeMap<String, u64> {
    let peers = node.json("/v1/peers").await;
    let mut out = BTreeMap::new();
    let mut add = |m: &Value| {
        for (reason, n) in m.as_object().into_iter().flatten() {
            if MISBEHAVIOUR.contains(&reason.as_str()) {
                *out.entry(reason.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
    };
    add(&peers["rejections"]);
    for p in peers["peers"].as_array().into_iter().flatten() {
        add(&p["rejections"]);
    }
    out
}

impl Mesh {
    async fn start() -> Mesh {
        let ca = MeshCa::new();
        let links = Links::new();
        let mut sites = Vec::new();
        for site in SITES {
            let bus = NatsServer::start();
            let mut gorouters = Vec::new();
            for _ in 0..2 {
                let g = StandIn::start(site)
                    .await
                    .expect("start a GoRouter stand-in");
                gorouters.push((g.addr(), Some(g)));
            }
            sites.push(Site { bus, gorouters });
        }
        let mut relays: Vec<Relay> = Vec::new();
        let mut nodes: Vec<Node> = Vec::new();
        for i in 0..SITES.len() * NODES_PER_SITE {
            let si = site_of(i);
            let (site_byte, node_byte) = (
                u8::try_from(10 + si).unwrap_or(10),
                u8::try_from(i % NODES_PER_SITE + 1).unwrap_or(1),
            );
            let from = IpAddr::from([127, 0, site_byte, node_byte]);
            let seeds: Vec<SocketAddr> = relays.iter().map(Relay::addr).collect();
            let addrs: Vec<SocketAddr> = sites[si].gorouters.iter().map(|(a, _)| *a).collect();
            let builder = Node::builder(&node_name(i), SITES[si])
                .nats(&sites[si].bus.url())
                .gorouters(&addrs)
                .mesh(&ca, &seeds);
            let (node, relay) = links.start_node(builder, SITES[si], from).await;
            relays.push(relay);
            nodes.push(node);
        }
        let http = nodes
            .iter()
            .map(|n| Arc::new(Mutex::new(Some(n.http_addr()))))
            .collect();
        Mesh {
            _ca: ca,
            links,
            sites,
            nodes,
            relays,
            http,
            down: Arc::new(Mutex::new(None)),
        }
    }

    /// Whether every node holds the expected view, in sync.
    async fn converged(&self) -> bool {
        let want = expected_view();
        for n in &self.nodes {
            if n.sync_state().await != "in_sync" || view_of(n).await.as_ref() != Some(&want) {
                return false;
            }
        }
        true
    }

    fn apply(&mut self, fault: &Fault) {
        match *fault {
            Fault::Cut(a, b) => self.links.set(SITES[a], SITES[b], Link::Cut),
            Fault::Hole(a, b) => self.links.set(SITES[a], SITES[b], Link::Holed),
            Fault::Slow(a, b, delay, loss) => {
                self.links
                    .set(SITES[a], SITES[b], Link::Slow { delay, loss });
            }
            Fault::Kill(i) => {
                *self.down.lock() = Some(i);
                *self.http[i].lock() = None;
                self.nodes[i].kill();
            }
            Fault::Pause(i) => {
                *self.down.lock() = Some(i);
                self.nodes[i].freeze(true);
            }
            Fault::Nats(s) => self.sites[s].bus.stop(),
            Fault::GoRouter(s, g) => {
                if let Some(stub) = self.sites[s].gorouters[g].1.take() {
                    stub.stop();
                }
            }
        }
    }

    async fn heal(&mut self, fault: &Fault) {
        match *fault {
            Fault::Cut(a, b) | Fault::Hole(a, b) | Fault::Slow(a, b, ..) => {
                self.links.set(SITES[a], SITES[b], Link::Up);
            }
            Fault::Kill(i) => {
                self.nodes[i].restart().await;
                self.relays[i].set_target(self.nodes[i].mesh_addr());
                *self.http[i].lock() = Some(self.nodes[i].http_addr());
            }
            Fault::Pause(i) => self.nodes[i].freeze(false),
            Fault::Nats(s) => self.sites[s].bus.restart(),
            Fault::GoRouter(s, g) => {
                let addr = self.sites[s].gorouters[g].0;
                let stub = StandIn::start_on(SITES[s], addr)
                    .await
                    .expect("restart a GoRouter stand-in on its port");
                self.sites[s].gorouters[g].1 = Some(stub);
            }
        }
    }
}

/// Every site's route emitter: its registrations, again every [`EMIT_EVERY`], through
/// outages of its NATS (it reconnects, as emitters do).
fn emitters(mesh: &Mesh, stop: &CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
    (0..SITES.len())
        .map(|si| {
            let url = mesh.sites[si].bus.url();
            let stop = stop.clone();
            tokio::spawn(async move {
                let options = async_nats::ConnectOptions::new()
                    .retry_on_initial_connect()
                    .max_reconnects(None);
                let Ok(bus) = options.connect(url).await else {
                    return;
                };
                let regs = registrations(si);
                while !stop.is_cancelled() {
                    for r in &regs {
                        let _ = bus.publish("router.register", r.to_string().into()).await;
                    }
                    let _ = bus.flush().await;
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = tokio::time::sleep(EMIT_EVERY) => {}
                    }
                }
            })
        })
        .collect()
}

/// Clients at every node: one for the app served everywhere, one for the app served only
/// elsewhere, back to back.
fn clients(
    mesh: &Mesh,
    started: Instant,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<Vec<Outcome>>> {
    let mut tasks = Vec::new();
    for node in 0..mesh.nodes.len() {
        for local in [true, false] {
            let (addr, down, stop) = (mesh.http[node].clone(), mesh.down.clone(), stop.clone());
            let host = if local {
                EVERYWHERE.to_string()
            } else {
                pair_app(SITES[site_of(node)])
            };
            tasks.push(tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .expect("client");
                let mut seen = Vec::new();
                while !stop.is_cancelled() {
                    let target = *addr.lock();
                    let Some(target) = target.filter(|_| *down.lock() != Some(node)) else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let begun = Instant::now();
                    let (status, error) = match http
                        .get(format!("http://{target}/"))
                        .header("host", &host)
                        .send()
                        .await
                    {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            match r.bytes().await {
                                Ok(_) => (status, None),
                                Err(_) => (status, Some("body")),
                            }
                        }
                        Err(e) if e.is_timeout() => (0, Some("timeout")),
                        Err(e) if e.is_connect() => (0, Some("connect")),
                        Err(_) => (0, Some("request")),
                    };
                    seen.push(Outcome {
                        node,
                        local,
                        at: begun - started,
                        took: begun.elapsed(),
                        ok: status == 200 && error.is_none(),
                        status,
                        error,
                    });
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                seen
            }));
        }
    }
    tasks
}

/// A fault as it ran: the fault, when it began, how long it was held, and when the views
/// had converged after its heal (all from the run's start).
type Window = (Fault, Duration, Duration, Duration);

/// Run the mesh through `settings`' schedule and return its figures; panics (naming the
/// seed) at the first broken invariant.
pub async fn run(settings: Settings) -> Report {
    let seed = settings.seed;
    println!(
        "chaos: seed {seed} (replay: GROUTER_CHAOS_SEED={seed} GROUTER_CHAOS_SECS={})",
        settings.duration.as_secs()
    );
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut mesh = Mesh::start().await;
    let stop = CancellationToken::new();
    let emitting = emitters(&mesh, &stop);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !mesh.converged().await {
        assert!(
            Instant::now() < deadline,
            "seed {seed}: the mesh never converged at start"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started = Instant::now();
    let traffic = clients(&mesh, started, &stop);
    // Warm-up: connections made, first requests served.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut warm: Vec<(usize, u64, u64)> = Vec::new();
    for n in &mesh.nodes {
        warm.push((n.open_fds(), n.rss_kib(), tasks(n).await));
    }

    // Every kind once, in the seed's order, then any kind, until the duration is spent.
    let mut kinds: Vec<usize> = (0..Fault::KINDS).collect();
    rng.shuffle(&mut kinds);
    let mut windows: Vec<Window> = Vec::new();
    let mut converged_in = Vec::new();
    let mut i = 0;
    while i < Fault::KINDS || started.elapsed() < settings.duration {
        let kind = kinds
            .get(i)
            .copied()
            .unwrap_or_else(|| rng.usize(0..Fault::KINDS));
        let fault = Fault::random(kind, &mut rng);
        let hold = match fault {
            // Past the suspicion timeout (2 s) and the death verdict (2.5 s).
            Fault::Pause(_) => Duration::from_millis(rng.u64(3000..=4000)),
            _ => Duration::from_millis(rng.u64(1500..=3500)),
        };
        let at = started.elapsed();
        println!(
            "chaos: {at:>7.1?} fault {}: {} for {hold:?}",
            i + 1,
            fault.describe()
        );
        mesh.apply(&fault);
        tokio::time::sleep(hold).await;
        mesh.heal(&fault).await;
        let healed = Instant::now();
        while !mesh.converged().await {
            assert!(
                healed.elapsed() < CONVERGE_LOOK,
                "seed {seed}: no convergence {CONVERGE_LOOK:?} after healing {}",
                fault.describe()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let took = healed.elapsed();
        *mesh.down.lock() = None;
        windows.push((fault.clone(), at, hold, started.elapsed()));
        converged_in.push(took);
        assert!(
            took <= CONVERGE,
            "seed {seed}: converged {took:?} after healing {} (more than {CONVERGE:?})",
            fault.describe()
        );
        i += 1;
    }
    // Let the last requests finish, then stop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    let mut outcomes = Vec::new();
    for t in traffic {
        outcomes.extend(t.await.expect("client task"));
    }
    for e in emitting {
        let _ = e.await;
    }

    let episodes = windows
        .iter()
        .zip(converged_in)
        .map(|(w, converged_in)| episode(w, converged_in, &outcomes, &windows))
        .collect();
    // Requests outside every fault's window must all have succeeded.
    let outside_failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !o.ok && !o.felled(&windows))
        .filter(|o| !windows.iter().any(|w| o.overlaps(w)))
        .collect();
    let count = |local: bool| outcomes.iter().filter(|o| o.local == local).count();
    let failed = |local: bool| {
        outcomes
            .iter()
            .filter(|o| o.local == local && !o.ok && !o.felled(&windows))
            .count()
    };
    let felled = outcomes
        .iter()
        .filter(|o| !o.ok && o.felled(&windows))
        .count();
    // The clients' connections close; what stays is the node's own.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut fds, mut rss, mut alive) = (Vec::new(), Vec::new(), Vec::new());
    for (i, n) in mesh.nodes.iter().enumerate() {
        fds.push((node_name(i), warm[i].0, n.open_fds()));
        rss.push((node_name(i), warm[i].1, n.rss_kib()));
        alive.push((node_name(i), warm[i].2, tasks(n).await));
    }
    let report = Report {
        seed,
        episodes,
        sent: (count(true), count(false)),
        failed: (failed(true), failed(false)),
        felled,
        fds,
        rss_kib: rss,
        tasks: alive,
    };
    println!("{}", report.summary());
    for o in outcomes
        .iter()
        .filter(|o| !o.ok && !o.felled(&windows))
        .take(40)
    {
        let during = windows
            .iter()
            .filter(|w| o.overlaps(w))
            .map(|w| w.0.describe())
            .collect::<Vec<_>>();
        println!(
            "chaos: failed: {} {} at {:.2?} after {:.2?}: status {} {:?} during {during:?}",
            node_name(o.node),
            if o.local { "local" } else { "remote" },
            o.at,
            o.took,
            o.status,
            o.error
        );
    }

    // The invariants.
    for e in &report.episodes {
        assert_eq!(
            e.local_failed, 0,
            "seed {seed}: local requests failed during {}",
            e.fault
        );
        assert!(
            e.failover <= FAILOVER,
            "seed {seed}: remote requests failed for {:?} after {} began",
            e.failover,
            e.fault
        );
    }
    assert!(
        outside_failed.is_empty(),
        "seed {seed}: {} requests failed outside any fault, first at {:?}",
        outside_failed.len(),
        outside_failed.first().map(|o| o.at)
    );
    for n in &mesh.nodes {
        let bad = misbehaviour(n).await;
        assert!(
            bad.is_empty(),
            "seed {seed}: an honest mesh was refused for misbehaviour: {bad:?}"
        );
    }
    let base = report.fds.iter().map(|(_, w, _)| *w).max().unwrap_or(0);
    for (name, _, end) in &report.fds {
        assert!(
            *end <= base + 40,
            "seed {seed}: {name} holds {end} descriptors at the end, {base} after warm-up"
        );
    }
    let base = report.tasks.iter().map(|(_, w, _)| *w).max().unwrap_or(0);
    for (name, _, end) in &report.tasks {
        assert!(
            *end <= base + 40,
            "seed {seed}: {name} runs {end} tasks at the end, {base} after warm-up"
        );
    }
    report
}

/// Tasks alive in `node`'s runtime.
async fn tasks(node: &Node) -> u64 {
    node.metric_labelled("grouter_runtime_tasks", "state=\"alive\"")
        .await
        .map(|v| {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let n = v as u64;
            n
        })
        .expect("the node exports grouter_runtime_tasks")
}

/// The figures of one fault from the requests sent while it lasted.
fn episode(w: &Window, converged_in: Duration, outcomes: &[Outcome], all: &[Window]) -> Episode {
    let (fault, at, hold, _) = w;
    let during: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.overlaps(w) && !o.felled(all))
        .collect();
    let remote_failed: Vec<&&Outcome> = during.iter().filter(|o| !o.local && !o.ok).collect();
    Episode {
        fault: fault.describe(),
        kind: fault.kind(),
        at: *at,
        held: *hold,
        converged_in,
        requests: during.len(),
        local_failed: during.iter().filter(|o| o.local && !o.ok).count(),
        remote_failed: remote_failed.len(),
        failover: remote_failed
            .iter()
            .map(|o| (o.at + o.took).saturating_sub(*at))
            .max()
            .unwrap_or_default(),
    }
}
