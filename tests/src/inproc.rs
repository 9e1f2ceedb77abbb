//! In-process GRouter nodes on a network the test controls.
//!
//! [`Net`] stands between the nodes' mesh connections: every connection a node dials goes
//! through a TCP relay in this process, so a test can cut a site off (every relay to or from
//! it is torn down and new dials are refused) and heal it again. The relays also count the
//! bytes each site sends each other site and can throttle a direction, for the benchmarks
//! (`grouter-bench`), which run these same nodes. [`InProcNode`] runs a whole
//! node ([`grouter::node::run`]) as a task of the test's runtime, with its listeners bound
//! on loopback port 0, and hands the test its [`NodeState`] so assertions read the table and
//! the sync state directly. NATS stays real: one [`crate::NatsServer`] per site.
//!
//! Nothing here sleeps to synchronise: tests wait with [`crate::wait_until`].

// Fixtures fail a test by panicking with a message; that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use grouter::config::Config;
use grouter::mesh::{Dialer, TcpDialer};
use grouter::node::{Listeners, NodeError, NodeState};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::MeshCa;

/// How long a dropped node gets to stop on its own before its task is aborted.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Bytes a relay reads at a time, each way.
const RELAY_BUFFER: usize = 16 * 1024;

/// Process-wide set-up, idempotent: the rustls provider (reqwest is built without one) and,
/// when `RUST_LOG` is set, the nodes' logs routed to the test output.
fn init_process() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

// ---------------------------------------------------------------------------------------------
// The network.

/// A network between sites that a test can cut and heal. Cheap to clone (shared state).
#[derive(Debug, Clone, Default)]
pub struct Net {
    inner: Arc<Mutex<NetState>>,
}

#[derive(Debug, Default)]
struct NetState {
    /// Mesh listener address → the site of the node behind it.
    sites: HashMap<SocketAddr, String>,
    /// Sites cut off from every other site.
    isolated: HashSet<String>,
    /// Live relays.
    relays: Vec<Relay>,
    /// `(sender site, receiver site)` → bytes relayed that way so far (TLS records and all),
    /// over every relay ever made.
    sent: HashMap<(String, String), Arc<AtomicU64>>,
    /// `(sender site, receiver site)` → bytes/s allowed that way on relays made from now on.
    limits: HashMap<(String, String), u64>,
}

/// One relayed connection, dialled by a node of `from` to a node of `to`.
#[derive(Debug)]
struct Relay {
    from: String,
    to: String,
    task: AbortHandle,
}

impl NetState {
    /// Whether connections from `from` to `to` are blocked. Links inside one site never are:
    /// a cut separates a site from the others.
    fn blocked(&self, from: &str, to: &str) -> bool {
        from != to && (self.isolated.contains(from) || self.isolated.contains(to))
    }

    /// The byte counter and the rate limit of the direction `from` → `to`.
    fn direction(&mut self, from: &str, to: &str) -> (Arc<AtomicU64>, Option<u64>) {
        let key = (from.to_string(), to.to_string());
        let limit = self.limits.get(&key).copied();
        (self.sent.entry(key).or_default().clone(), limit)
    }
}

impl Net {
    /// A network with nothing cut.
    pub fn new() -> Net {
        Net::default()
    }

    /// Record that the mesh listener at `addr` belongs to a node of `site`.
    pub fn register(&self, addr: SocketAddr, site: &str) {
        self.inner.lock().sites.insert(addr, site.to_string());
    }

    /// A dialer for the nodes of `site`: every connection goes through a relay of this
    /// network.
    pub fn dialer(&self, site: &str) -> Arc<dyn Dialer> {
        Arc::new(NetDialer {
            net: self.clone(),
            site: site.to_string(),
        })
    }

    /// Cut `site` off from every other site, both ways: live relays between it and any other
    /// site are aborted (both ends see their connection drop) and new dials are refused
    /// until [`Net::heal`].
    pub fn cut(&self, site: &str) {
        let mut net = self.inner.lock();
        net.isolated.insert(site.to_string());
        let relays = std::mem::take(&mut net.relays);
        for r in relays {
            if net.blocked(&r.from, &r.to) {
                r.task.abort();
            } else {
                net.relays.push(r);
            }
        }
    }

    /// Undo [`Net::cut`]: new dials between `site` and the others succeed again.
    pub fn heal(&self, site: &str) {
        self.inner.lock().isolated.remove(site);
    }

    /// Throttle what nodes of `from` send nodes of `to` to `bytes_per_sec`, on connections
    /// opened from now on (whichever side dials).
    pub fn limit(&self, from: &str, to: &str, bytes_per_sec: u64) {
        self.inner
            .lock()
            .limits
            .insert((from.to_string(), to.to_string()), bytes_per_sec.max(1));
    }

    /// Bytes nodes of `from` have sent nodes of `to` through this network so far, on every
    /// connection either of them dialled: TCP payload, so TLS records and all.
    pub fn bytes_sent(&self, from: &str, to: &str) -> u64 {
        self.inner
            .lock()
            .sent
            .get(&(from.to_string(), to.to_string()))
            .map_or(0, |n| n.load(Ordering::Relaxed))
    }

    /// Live relays between `a` and `b`, in either direction (for diagnostics).
    pub fn relays_between(&self, a: &str, b: &str) -> usize {
        let mut net = self.inner.lock();
        net.relays.retain(|r| !r.task.is_finished());
        net.relays
            .iter()
            .filter(|r| (r.from == a && r.to == b) || (r.from == b && r.to == a))
            .count()
    }

    /// One relayed connection from a node of `from` to the mesh listener at `addr`.
    async fn relay(&self, from: &str, addr: &str) -> io::Result<TcpStream> {
        let refused = |why: String| io::Error::new(io::ErrorKind::ConnectionRefused, why);
        let target: SocketAddr = addr
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
        let to = {
            let net = self.inner.lock();
            let to = net
                .sites
                .get(&target)
                .cloned()
                .ok_or_else(|| refused(format!("{addr}: no node registered there")))?;
            if net.blocked(from, &to) {
                return Err(refused(format!("{from} -> {to}: cut")));
            }
            to
        };
        let upstream = TcpStream::connect(target).await?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let relay_addr = listener.local_addr()?;
        // The connect completes from the listen backlog, so dialling and accepting can run
        // side by side.
        let (client, accepted) =
            tokio::try_join!(TcpStream::connect(relay_addr), listener.accept())?;
        drop(listener);
        let (mut inbound, _) = accepted;
        let mut upstream = upstream;
        for s in [&client, &inbound, &upstream] {
            s.set_nodelay(true)?;
        }
        let (up, down) = {
            let mut net = self.inner.lock();
            (net.direction(from, &to), net.direction(&to, from))
        };
        let task = tokio::spawn(async move {
            // Like `copy_bidirectional`: a direction that reaches EOF shuts its write side and
            // the other carries on; an error ends both. Aborting the task (a cut) drops both
            // sockets, which closes the connection for both nodes.
            let (inbound_read, inbound_write) = inbound.split();
            let (upstream_read, upstream_write) = upstream.split();
            let _ = tokio::try_join!(
                pump(inbound_read, upstream_write, up),
                pump(upstream_read, inbound_write, down),
            );
        });
        let mut net = self.inner.lock();
        // A cut may have come while we connected.
        if net.blocked(from, &to) {
            task.abort();
            return Err(refused(format!("{from} -> {to}: cut")));
        }
        net.relays.retain(|r| !r.task.is_finished());
        net.relays.push(Relay {
            from: from.to_string(),
            to,
            task: task.abort_handle(),
        });
        Ok(client)
    }
}

/// Copy `from` to `to` until EOF, counting into `sent` and, with a limit, pacing to that many
/// bytes/s from the first byte on; then shut `to`'s write side.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    (sent, limit): (Arc<AtomicU64>, Option<u64>),
) -> io::Result<()> {
    let mut buf = vec![0u8; RELAY_BUFFER];
    let started = tokio::time::Instant::now();
    let mut total: u64 = 0;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        to.write_all(&buf[..n]).await?;
        sent.fetch_add(n as u64, Ordering::Relaxed);
        total += n as u64;
        if let Some(rate) = limit {
            // Throttling is the point here: the next read waits until the rate allows it.
            let due = started + Duration::from_secs_f64(total as f64 / rate as f64);
            tokio::time::sleep_until(due).await;
        }
    }
    to.shutdown().await
}

impl Drop for NetState {
    fn drop(&mut self) {
        for r in &self.relays {
            r.task.abort();
        }
    }
}

/// The dialer of one site's nodes on a [`Net`].
#[derive(Debug)]
struct NetDialer {
    net: Net,
    site: String,
}

impl Dialer for NetDialer {
    fn dial<'a>(
        &'a self,
        addr: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send + 'a>> {
        Box::pin(self.net.relay(&self.site, addr))
    }
}

// ---------------------------------------------------------------------------------------------
// Nodes.

/// Settings of an in-process node; [`InProcNodeBuilder::start`] runs it.
#[derive(Debug, Clone)]
pub struct InProcNodeBuilder {
    node_id: String,
    site: String,
    nats: Vec<String>,
    mesh: Option<(std::path::PathBuf, Vec<SocketAddr>)>,
    net: Option<Net>,
    sync_lost_after_secs: u64,
    heartbeat_interval_ms: Option<u64>,
    expiry: Option<(u64, u64)>,
    gorouters: Vec<SocketAddr>,
    extra: String,
    http_at: Option<SocketAddr>,
}

impl InProcNodeBuilder {
    /// Bus of the node's site.
    pub fn nats(mut self, url: &str) -> Self {
        self.nats = vec![url.to_string()];
        self
    }

    /// Join the mesh of `ca` (a certificate is issued for this node), dialling `seeds`.
    pub fn mesh(mut self, ca: &MeshCa, seeds: &[SocketAddr]) -> Self {
        self.mesh = Some((ca.dir().to_path_buf(), seeds.to_vec()));
        self
    }

    /// Dial through `net` (and register the node's mesh address there). Without it the
    /// node dials with plain TCP.
    pub fn net(mut self, net: &Net) -> Self {
        self.net = Some(net.clone());
        self
    }

    /// `mesh.sync_lost_after_secs` (3 unless changed).
    pub fn sync_lost_after_secs(mut self, secs: u64) -> Self {
        self.sync_lost_after_secs = secs;
        self
    }

    /// Forward to these GoRouters (default: a new [`crate::gorouter::GoRouterStub`] of the
    /// node's site, kept by the node as [`InProcNode::stub`]).
    pub fn gorouters(mut self, addrs: &[SocketAddr]) -> Self {
        self.gorouters = addrs.to_vec();
        self
    }

    /// `mesh.heartbeat_interval_ms` (the config's default unless set).
    pub fn heartbeat_interval_ms(mut self, ms: u64) -> Self {
        self.heartbeat_interval_ms = Some(ms);
        self
    }

    /// `nats.stale_threshold_secs` and `nats.prune_interval_secs` (the config's defaults
    /// unless set).
    pub fn expiry(mut self, stale_threshold_secs: u64, prune_interval_secs: u64) -> Self {
        self.expiry = Some((stale_threshold_secs, prune_interval_secs));
        self
    }

    /// Write certificates, token and config into a temporary directory, bind the listeners
    /// on loopback port 0 and run the node as a task of the current runtime.
    pub async fn start(self) -> InProcNode {
        self.prepare().await.run()
    }

    /// Everything [`Self::start`] does before the node runs: certificates, token, config,
    /// the GoRouter stand-in and bound listeners. [`PreparedNode::run`] starts it, so a
    /// benchmark can time the node alone.
    /// TOML appended to the config (whole sections, such as `[acme]`).
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self
    }

    /// Serve plain HTTP on `addr` instead of an ephemeral port of 127.0.0.1.
    pub fn http_listen(mut self, addr: SocketAddr) -> Self {
        self.http_at = Some(addr);
        self
    }

    pub async fn prepare(self) -> PreparedNode {
        init_process();
        let dir = tempfile::tempdir().expect("tempdir");
        let token = format!("inproc-token-{}", self.node_id);
        std::fs::write(dir.path().join("admin.token"), &token).expect("write token");
        let servers: Vec<String> = self.nats.iter().map(|s| format!("{s:?}")).collect();
        // The site's GoRouter: a stand-in that reports the site and the Host it got, unless
        // the caller named GoRouters.
        let stub = if self.gorouters.is_empty() {
            Some(crate::gorouter::GoRouterStub::start(&self.site).await)
        } else {
            None
        };
        let gorouters: Vec<String> = match &stub {
            Some(stub) => vec![format!("\"{}\"", stub.addr())],
            None => self.gorouters.iter().map(|a| format!("\"{a}\"")).collect(),
        };
        let mut text = format!(
            r#"node_id = "{node_id}"
site = "{site}"

[nats]
servers = [{servers}]
{expiry}
[gorouters]
addresses = [{gorouters}]

[proxy]
http_listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"
token_file = "admin.token"
"#,
            node_id = self.node_id,
            site = self.site,
            servers = servers.join(", "),
            gorouters = gorouters.join(", "),
            expiry = self.expiry.map_or(String::new(), |(stale, prune)| format!(
                "stale_threshold_secs = {stale}\nprune_interval_secs = {prune}\n"
            )),
        );
        if let Some((ca, seeds)) = &self.mesh {
            let id = grouter::mesh::identity::NodeIdentity::new(
                self.node_id.as_str(),
                self.site.as_str(),
            )
            .expect("valid node identity");
            grouter::mesh::identity::create_node(ca, &id, &dir.path().join("mesh"))
                .expect("issue node certificate");
            let seeds: Vec<String> = seeds.iter().map(|s| format!("\"{s}\"")).collect();
            text.push_str(&format!(
                "\n[mesh]\nlisten = \"127.0.0.1:0\"\nseeds = [{}]\nca = \"mesh/ca.pem\"\n\
                 cert = \"mesh/node.pem\"\nkey = \"mesh/node.key\"\nsync_lost_after_secs = {}\n",
                seeds.join(", "),
                self.sync_lost_after_secs,
            ));
            if let Some(ms) = self.heartbeat_interval_ms {
                text.push_str(&format!("heartbeat_interval_ms = {ms}\n"));
            }
        }
        text.push_str(&self.extra);
        let origin = dir.path().join(format!("{}.toml", self.node_id));
        let config = Config::from_toml(&text, &origin, dir.path())
            .unwrap_or_else(|e| panic!("config of {}:\n{e}\n---\n{text}", self.node_id));

        let http = TcpListener::bind(self.http_at.unwrap_or(([127, 0, 0, 1], 0).into()))
            .await
            .expect("bind http");
        let http_addr = http.local_addr().expect("http addr");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let admin_addr = admin.local_addr().expect("admin addr");
        let (mesh, mesh_addr) = if config.mesh.is_some() {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind mesh");
            let a = l.local_addr().expect("mesh addr");
            (Some(l), Some(a))
        } else {
            (None, None)
        };
        let dialer: Arc<dyn Dialer> = match &self.net {
            Some(net) => {
                if let Some(a) = mesh_addr {
                    net.register(a, &self.site);
                }
                net.dialer(&self.site)
            }
            None => Arc::new(TcpDialer::default()),
        };
        let state = Arc::new(NodeState::new(
            &config,
            token.clone(),
            grouter::node::new_generation(),
        ));
        PreparedNode {
            node_id: self.node_id,
            site: self.site,
            config,
            state,
            listeners: Listeners {
                admin,
                mesh,
                http: Some(http),
                https: None,
                dns_udp: None,
                dns_tcp: None,
                dialer,
            },
            admin_addr,
            mesh_addr,
            http_addr,
            stub,
            token,
            dir,
        }
    }
}

/// An in-process node ready to run: [`InProcNodeBuilder::prepare`].
#[derive(Debug)]
pub struct PreparedNode {
    node_id: String,
    site: String,
    config: Config,
    state: Arc<NodeState>,
    listeners: Listeners,
    admin_addr: SocketAddr,
    mesh_addr: Option<SocketAddr>,
    http_addr: SocketAddr,
    stub: Option<crate::gorouter::GoRouterStub>,
    token: String,
    dir: tempfile::TempDir,
}

impl PreparedNode {
    /// Run the node ([`grouter::node::run`]) as a task of the current runtime.
    pub fn run(self) -> InProcNode {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(grouter::node::run(
            self.config,
            self.state.clone(),
            self.listeners,
            shutdown.clone(),
        ));
        InProcNode {
            node_id: self.node_id,
            site: self.site,
            state: self.state,
            admin_addr: self.admin_addr,
            mesh_addr: self.mesh_addr,
            http_addr: self.http_addr,
            stub: self.stub,
            token: self.token,
            http: reqwest::Client::new(),
            shutdown,
            task: Some(task),
            _dir: self.dir,
        }
    }
}

/// A GRouter node running inside the test process. Stops when dropped.
#[derive(Debug)]
pub struct InProcNode {
    node_id: String,
    site: String,
    state: Arc<NodeState>,
    admin_addr: SocketAddr,
    mesh_addr: Option<SocketAddr>,
    http_addr: SocketAddr,
    /// The site's GoRouter stand-in, unless the builder was given GoRouters.
    pub stub: Option<crate::gorouter::GoRouterStub>,
    token: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), NodeError>>>,
    _dir: tempfile::TempDir,
}

impl InProcNode {
    /// The proxy's plain HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// A node `node_id` at `site`, with nothing else set.
    pub fn builder(node_id: &str, site: &str) -> InProcNodeBuilder {
        InProcNodeBuilder {
            node_id: node_id.to_string(),
            site: site.to_string(),
            nats: Vec::new(),
            mesh: None,
            net: None,
            sync_lost_after_secs: 3,
            heartbeat_interval_ms: None,
            expiry: None,
            gorouters: Vec::new(),
            extra: String::new(),
            http_at: None,
        }
    }

    /// A meshed node learning from `nats_url`, dialling `seeds` through `net`.
    pub async fn start(
        node_id: &str,
        site: &str,
        nats_url: &str,
        ca: &MeshCa,
        seeds: &[SocketAddr],
        net: &Net,
    ) -> InProcNode {
        Self::builder(node_id, site)
            .nats(nats_url)
            .mesh(ca, seeds)
            .net(net)
            .start()
            .await
    }

    /// The node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The node's site.
    pub fn site(&self) -> &str {
        &self.site
    }

    /// The node's shared state: table, sync state, mesh, metrics.
    pub fn state(&self) -> &Arc<NodeState> {
        &self.state
    }

    /// The mesh listener's address.
    pub fn mesh_addr(&self) -> SocketAddr {
        self.mesh_addr.expect("node has a mesh")
    }

    /// The admin API's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Whether the node's task has ended (a subsystem failed, or it was stopped).
    pub fn has_stopped(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Tell the node to stop, as SIGTERM would, without waiting: it drains and its task
    /// ends (see [`Self::has_stopped`]).
    pub fn shut_down(&self) {
        self.shutdown.cancel();
    }

    /// Stop the node and wait until its task has ended, aborting it after a grace period.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(STOP_GRACE, task).await.is_err() {
                abort.abort();
            }
        }
    }

    /// PUT a JSON body to an admin path with the token; returns status and JSON body.
    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .http
            .put(format!("http://{}{}", self.admin_addr, path))
            .bearer_auth(&self.token)
            .json(body)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap_or_else(|e| panic!("PUT {path} at {}: {e}", self.node_id));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// GET an admin path with the token and parse JSON, asserting 200.
    pub async fn json(&self, path: &str) -> Value {
        let resp = self
            .http
            .get(format!("http://{}{}", self.admin_addr, path))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} at {}: {e}", self.node_id));
        let status = resp.status().as_u16();
        let body = resp.text().await.expect("admin body");
        assert_eq!(status, 200, "GET {path} at {}: {body}", self.node_id);
        serde_json::from_str(&body).expect("json body")
    }

    /// Publish `registration` on the site's bus until this node has learned `host` as a
    /// local route (its subscription may not be live yet when the node has just started).
    pub async fn register_until_learned(
        &self,
        bus: &async_nats::Client,
        registration: &Value,
        host: &str,
    ) {
        crate::wait_until(
            Duration::from_secs(10),
            &format!("{} to learn {host}", self.node_id),
            || async {
                publish(bus, "router.register", registration).await;
                self.state
                    .table
                    .lookup(host, "")
                    .is_some_and(|m| m.local)
                    .then_some(())
            },
        )
        .await;
    }
}

impl InProcNode {
    /// The node at a glance, for a failing test's output: sync state, peers, partitions and
    /// (the first few) routes with every server.
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        const MAX_ROUTES: usize = 40;
        let table = &self.state.table;
        let mut out = format!(
            "{}@{} (generation {}): sync {}",
            self.node_id,
            self.site,
            table.me().generation,
            self.state.health.sync().as_str()
        );
        if let Some(mesh) = self.state.mesh.get() {
            let peers: Vec<String> = mesh.peers().iter().map(|p| p.node_id.clone()).collect();
            let _ = write!(out, "; peers {peers:?}");
            for n in mesh.nodes() {
                let _ = write!(
                    out,
                    "\n  node {}@{}: {} (silent {:?})",
                    n.origin.node_id,
                    n.origin.site,
                    n.state.as_str(),
                    n.silent_for
                );
            }
        }
        let mut parts = table.partitions();
        parts.sort_by(|a, b| a.origin.node_id.cmp(&b.origin.node_id));
        for p in parts {
            let _ = write!(
                out,
                "\n  partition {}@{} gen {}: v{} routes {} alive {}",
                p.origin.node_id,
                p.origin.site,
                p.origin.generation,
                p.max_version,
                p.routes,
                p.origin.is_alive()
            );
        }
        let routes = table.routes(None);
        for r in routes.iter().take(MAX_ROUTES) {
            let servers: Vec<String> = r
                .servers
                .iter()
                .map(|(o, e)| {
                    format!(
                        "{}@{}#{}{} app {} eps {}",
                        o.node_id,
                        o.site,
                        o.generation,
                        if o.is_alive() { "" } else { " (dead)" },
                        e.app.id(),
                        e.endpoints
                    )
                })
                .collect();
            let _ = write!(
                out,
                "\n  route {}{}: {}",
                r.host,
                r.path,
                servers.join(", ")
            );
        }
        if routes.len() > MAX_ROUTES {
            let _ = write!(out, "\n  … and {} more routes", routes.len() - MAX_ROUTES);
        }
        out
    }
}

impl Drop for InProcNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- in-process node ---\n{}", self.describe());
        }
        // Cancel first, so the node drains its subsystems (including the mesh's detached
        // session tasks); abort only what is still running after a grace period.
        self.shutdown.cancel();
        let Some(task) = self.task.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    let abort = task.abort_handle();
                    if tokio::time::timeout(STOP_GRACE, task).await.is_err() {
                        abort.abort();
                    }
                });
            }
            Err(_) => task.abort(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Route messages.

/// A gorouter `router.register` payload for endpoint `host:port` of `app`, serving `uri`.
pub fn registration(host: &str, port: u16, uri: &str, app: &str) -> Value {
    serde_json::json!({
        "host": host, "port": port, "uris": [uri], "app": app,
        "private_instance_id": format!("{app}-{port}"), "tags": {"app_name": app},
    })
}

/// The matching `router.unregister` payload.
pub fn unregistration(host: &str, port: u16, uri: &str) -> Value {
    serde_json::json!({"host": host, "port": port, "uris": [uri]})
}

/// Publish `payload` on `subject` and flush, so it is on the server when this returns.
pub async fn publish(nats: &async_nats::Client, subject: &str, payload: &Value) {
    nats.publish(subject.to_string(), payload.to_string().into())
        .await
        .expect("publish");
    nats.flush().await.expect("flush");
}
