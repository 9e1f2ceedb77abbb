//! The mesh: this node's connections to the nodes of every site, and replication of the
//! table's partitions over them.
//!
//! - [`identity`]: the mesh CA, node certificates (node id and site in the SAN) and the
//!   TLS 1.3 mutual-auth configurations; a peer's identity comes from its certificate only.
//! - [`sync`]: anti-entropy as pure functions over the table (digest, delta, apply) and the
//!   rule of who may speak for which partition.
//! - [`liveness`]: the failure detector and the node's sync state.
//! - `membership`: the rules, without I/O and with time passed in: which of two connections
//!   to a peer stays, the certified sites and address owners, whom to dial, the site
//!   ranking, and the tombstone horizon; it holds the failure detector.
//! - `session`: one connection (hello, digests, deltas, pings).
//!
//! This module does the I/O around those rules: the listener, the TLS handshakes, dialling
//! the targets membership names (with back-off), closing the connection membership says
//! lost, the heartbeat that travels in this node's record, and the periodic step that
//! assesses liveness, retires the long dead, sets the sync state, the site order and the
//! facts route policies are applied with (each site's region and health), and purges old
//! tombstones; until the node is in sync, a session that applies a verified delta
//! runs that assessment at once (first contact counts without waiting for the tick).
//! Membership sits behind the mesh's one lock, which is never held
//! across an `.await` or while the table is read. A dialled peer must present the
//! certificate of the node whose record advertises the address; with `mesh.crl`, a loop
//! reloads the CRL and closes the connections of peers it revokes.
//!
//! Must never: accept a peer's update to this node's partition, or a peer without a
//! certificate from the mesh CA; decide membership itself (a rule that lives here cannot be
//! tested without sockets).

pub mod identity;
pub mod liveness;
mod membership;
mod session;
pub mod sync;
pub mod trust;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::MeshConfig;
use crate::health::{Health, SyncState};
use crate::limits::{Cut, Gate};
use crate::metrics::Metrics;
use crate::policy::{PolicyStore, SiteFacts};
use crate::table::{Origin, PartitionSummary, Table};
use grouter_protocol::mesh as wire;
use identity::{MeshTls, NodeIdentity};
use liveness::{Detector, NodeView, Timeouts};
use membership::{Admission, Membership, TombstoneHorizon};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use trust::MeshTrust;

/// How long a TCP connect plus TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest pause between attempts to reach an address.
const REDIAL_MAX: Duration = Duration::from_secs(2);
/// How often the failure detector assesses liveness.
const DETECTOR_TICK: Duration = Duration::from_millis(100);
/// How long deleted routes are remembered before replicas behind them need a reset.
const TOMBSTONE_GRACE: Duration = Duration::from_secs(600);
/// How often each partition's version is noted for the tombstone horizon.
const TOMBSTONE_CHECKPOINT: Duration = Duration::from_secs(60);
/// Why [`Mesh::connect_node`] gave no connection.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// Refused, reset, a TLS failure, or a certificate naming another node.
    #[error("{0}")]
    Failed(String),
    /// Nothing answered within the time allowed: the node or its link may be black-holed.
    #[error("{0}")]
    TimedOut(String),
}

/// Most sites a peer's ping may report round trips to (more are ignored).
pub const MAX_RTT_SITES: usize = 256;
/// How long a dead node's partition stays visible (as dead) before it is removed.
const RETIRE_AFTER: Duration = Duration::from_secs(600);

/// How the mesh behaves.
#[derive(Debug, Clone)]
pub struct MeshSettings {
    /// Where other nodes reach this node's mesh listener (carried in its record).
    pub advertise: String,
    /// Addresses to dial at start; the rest are discovered.
    pub seeds: Vec<String>,
    /// This node's heartbeat and the peers' ping interval.
    pub heartbeat_interval: Duration,
    /// How often each connection sends a digest (repairs what pushes missed).
    pub digest_interval: Duration,
    /// Failure detector and sync-state timeouts.
    pub timeouts: Timeouts,
    /// This node's region (carried in its record).
    pub region: String,
    /// This site's public entry addresses, `dns.site_addresses` (carried in its record, so
    /// other sites' DNS fronts can answer with them); empty without `[dns]`.
    pub site_addresses: Vec<String>,
}

impl MeshSettings {
    /// Settings from the `[mesh]` section: a node is suspected after 4 missed heartbeats and
    /// dead after 5 (2.5 s with the default 500 ms). `bound` is the listener's address, the
    /// advertised one unless the config names another.
    pub fn from_config(
        c: &MeshConfig,
        region: Option<&str>,
        bound: std::net::SocketAddr,
    ) -> MeshSettings {
        let hb = Duration::from_millis(c.heartbeat_interval_ms);
        MeshSettings {
            advertise: c.advertise.clone().unwrap_or_else(|| bound.to_string()),
            seeds: c.seeds.clone(),
            heartbeat_interval: hb,
            digest_interval: Duration::from_secs(1),
            timeouts: Timeouts {
                suspect_after: hb * 4,
                dead_after: hb * 5,
                retire_after: RETIRE_AFTER,
                sync_lost_after: Duration::from_secs(c.sync_lost_after_secs),
            },
            region: region.unwrap_or_default().to_string(),
            site_addresses: Vec::new(),
        }
    }
}

/// Opens the TCP connection to a peer address. The mesh dials through this so that tests
/// can route links through relays they cut and heal.
pub trait Dialer: Send + Sync + fmt::Debug + 'static {
    /// Connect to `addr` (`host:port`).
    fn dial<'a>(
        &'a self,
        addr: &'a str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send + 'a>>;
}

/// Plain TCP, from `mesh.dial_from` when it is set (an anycast host dials from its unicast
/// address, so that the answers come back to it and not to the nearest instance).
#[derive(Debug, Default, Clone, Copy)]
pub struct TcpDialer {
    source: Option<std::net::IpAddr>,
}

impl TcpDialer {
    /// Dial from `source` (any port), or as the routing table chooses when `None`.
    pub fn from_source(source: Option<std::net::IpAddr>) -> TcpDialer {
        TcpDialer { source }
    }
}

impl Dialer for TcpDialer {
    fn dial<'a>(
        &'a self,
        addr: &'a str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send + 'a>> {
        Box::pin(async move {
            let s = match self.source {
                None => TcpStream::connect(addr).await?,
                Some(source) => {
                    let mut last = None;
                    let mut connected = None;
                    for target in tokio::net::lookup_host(addr).await? {
                        if target.is_ipv4() != source.is_ipv4() {
                            continue;
                        }
                        let socket = if source.is_ipv4() {
                            tokio::net::TcpSocket::new_v4()?
                        } else {
                            tokio::net::TcpSocket::new_v6()?
                        };
                        socket.bind(std::net::SocketAddr::new(source, 0))?;
                        match socket.connect(target).await {
                            Ok(s) => {
                                connected = Some(s);
                                break;
                            }
                            Err(e) => last = Some(e),
                        }
                    }
                    connected.ok_or_else(|| {
                        last.unwrap_or_else(|| {
                            std::io::Error::new(
                                std::io::ErrorKind::AddrNotAvailable,
                                format!("{addr}: no address of the family of {source}"),
                            )
                        })
                    })?
                }
            };
            s.set_nodelay(true)?;
            Ok(s)
        })
    }
}

/// One live connection to a peer.
#[derive(Debug)]
pub struct PeerLink {
    /// Peer node id (from its certificate).
    pub node_id: String,
    /// Peer site (from its certificate).
    pub site: String,
    /// Remote address.
    pub addr: String,
    /// This node dialled the connection.
    pub dialed: bool,
    /// When it was established.
    pub since: Instant,
    /// Bytes received (frames and length prefixes).
    pub bytes_in: AtomicU64,
    /// Bytes sent.
    pub bytes_out: AtomicU64,
    rtt_us: AtomicU64,
    ping_seq: AtomicU64,
    ping_sent_us: AtomicU64,
    held: Mutex<BTreeMap<String, u64>>,
    /// What the peer last said of its own round trips to each site (its pings carry it).
    reported: Mutex<BTreeMap<String, Duration>>,
    cancel: CancellationToken,
    /// The peer's end-entity certificate (DER) as the handshake verified it, so that a
    /// CRL reload can close the connections of revoked certificates.
    cert: Option<Arc<[u8]>>,
}

impl PeerLink {
    fn new(
        peer: &NodeIdentity,
        cert: Arc<[u8]>,
        addr: &str,
        dialed: bool,
        cancel: CancellationToken,
    ) -> PeerLink {
        PeerLink {
            node_id: peer.node_id.clone(),
            site: peer.site.clone(),
            addr: addr.to_string(),
            dialed,
            since: Instant::now(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            rtt_us: AtomicU64::new(0),
            ping_seq: AtomicU64::new(0),
            ping_sent_us: AtomicU64::new(0),
            held: Mutex::new(BTreeMap::new()),
            reported: Mutex::new(BTreeMap::new()),
            cancel,
            cert: (!cert.is_empty()).then_some(cert),
        }
    }

    /// The peer's end-entity certificate (DER), when the connection was made by this
    /// module's listener or dialler.
    pub fn cert(&self) -> Option<&[u8]> {
        self.cert.as_deref()
    }

    /// Round-trip time of the last answered ping (`None` before the first).
    pub fn rtt(&self) -> Option<Duration> {
        match self.rtt_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// What the peer said it holds in its last digest: `node_id → version`.
    pub fn held(&self) -> BTreeMap<String, u64> {
        self.held.lock().clone()
    }

    /// The peer's own round-trip times to the sites it links to directly, as its last ping
    /// reported them: its site's row of the inter-site matrix.
    pub fn reported_rtts(&self) -> BTreeMap<String, Duration> {
        self.reported.lock().clone()
    }

    /// Keep what a ping reported: at most [`MAX_RTT_SITES`] valid site names, the rest
    /// ignored (a peer can only describe itself, and only so much of that).
    fn set_reported(&self, rtts: &[wire::SiteRtt]) {
        let row: BTreeMap<String, Duration> = rtts
            .iter()
            .filter(|r| r.rtt_us > 0 && crate::names::check_site(&r.site).is_ok())
            .take(MAX_RTT_SITES)
            .map(|r| (r.site.clone(), Duration::from_micros(u64::from(r.rtt_us))))
            .collect();
        *self.reported.lock() = row;
    }

    fn micros(&self) -> u64 {
        u64::try_from(self.since.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn ping(&self) -> u64 {
        let seq = self.ping_seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.ping_sent_us.store(self.micros(), Ordering::Relaxed);
        seq
    }

    fn pong(&self, seq: u64) {
        if seq == self.ping_seq.load(Ordering::Relaxed) {
            let rtt = self
                .micros()
                .saturating_sub(self.ping_sent_us.load(Ordering::Relaxed));
            self.rtt_us.store(rtt.max(1), Ordering::Relaxed);
        }
    }
}

impl membership::Link for Arc<PeerLink> {
    fn peer(&self) -> &str {
        &self.node_id
    }

    fn site(&self) -> &str {
        &self.site
    }

    fn addr(&self) -> &str {
        &self.addr
    }

    fn dialed(&self) -> bool {
        self.dialed
    }

    fn rtt(&self) -> Option<Duration> {
        PeerLink::rtt(self)
    }

    fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(self, other)
    }
}

/// The mesh of one node.
#[derive(Debug)]
pub struct Mesh {
    table: Arc<Table>,
    metrics: Arc<MeshMetrics>,
    settings: MeshSettings,
    tls: MeshTls,
    trust: MeshTrust,
    /// Connections on which peers forward HTTP, with their certificates: closed when the
    /// certificate is revoked (ended ones are pruned as new ones arrive).
    peer_http_conns: Mutex<Vec<(Arc<[u8]>, CancellationToken)>>,
    /// Refusals per peer node (certified ids only, at most `max_nodes`).
    rejections: Mutex<HashMap<String, Tally>>,
    /// The peer set and every rule about it: the one lock of the mesh, never held across an
    /// `.await` or while reading the table.
    membership: Mutex<Membership<Arc<PeerLink>>>,
    /// Where connections from peers that forward HTTP go (set by the proxy).
    peer_http: OnceLock<mpsc::Sender<PeerHttp>>,
    /// Where connections from peers that fetch droplets go (set by app placement).
    peer_droplet: OnceLock<mpsc::Sender<PeerHttp>>,
    /// The node's health: the mesh writes its sync state and reads whether it can serve.
    health: Arc<Health>,
    /// Where the mesh keeps the sites' regions and health current for the data plane.
    policies: Arc<PolicyStore>,
    /// Held through one assessment (snapshot, detector, sync state), so that two of them
    /// (the periodic one and a session's after first contact) never interleave: a verdict
    /// from an older snapshot would otherwise overwrite a newer one.
    assessing: Mutex<()>,
}

/// A connection on which a peer forwards HTTP requests (ALPN `h2` or `http/1.1`).
#[derive(Debug)]
pub struct PeerHttp {
    /// The authenticated TLS stream.
    pub stream: tokio_rustls::server::TlsStream<TcpStream>,
    /// Who the peer is, from its certificate.
    pub peer: NodeIdentity,
    /// Cancelled when the peer's certificate is revoked (stop taking its requests), and by
    /// the server when the connection ends.
    pub cancel: CancellationToken,
    /// The connection's slot under `mesh.max_connections`: held while it is served.
    pub slot: crate::limits::Admitted,
}

impl Mesh {
    /// A peer's HTTP (or droplet) connection, registered so that revoking the peer's
    /// certificate cancels it.
    fn hand_over(
        &self,
        stream: tokio_rustls::server::TlsStream<TcpStream>,
        peer: NodeIdentity,
        cert: Arc<[u8]>,
        slot: crate::limits::Admitted,
        shutdown: &CancellationToken,
    ) -> PeerHttp {
        let cancel = shutdown.child_token();
        let mut conns = self.peer_http_conns.lock();
        conns.retain(|(_, t)| !t.is_cancelled());
        conns.push((cert, cancel.clone()));
        PeerHttp {
            stream,
            peer,
            cancel,
            slot,
        }
    }

    /// The table this mesh replicates.
    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    /// The TLS identity of this node.
    pub fn tls(&self) -> &MeshTls {
        &self.tls
    }

    /// Receive the connections on which peers forward HTTP requests (once).
    pub fn take_peer_http(&self) -> Option<mpsc::Receiver<PeerHttp>> {
        let (tx, rx) = mpsc::channel(256);
        self.peer_http.set(tx).ok().map(|()| rx)
    }

    /// Receive the connections on which peers fetch droplets (once).
    pub fn take_peer_droplet(&self) -> Option<mpsc::Receiver<PeerHttp>> {
        let (tx, rx) = mpsc::channel(16);
        self.peer_droplet.set(tx).ok().map(|()| rx)
    }

    /// The live nodes of `site` with an advertised mesh address, `(node_id, address)`:
    /// connected peers by RTT first, then the others by node id. Never this node's own site.
    pub fn site_nodes(&self, site: &str) -> Vec<(String, String)> {
        let rtts: HashMap<String, Duration> = self
            .peers()
            .iter()
            .filter(|p| p.site == site)
            .map(|p| (p.node_id.clone(), p.rtt().unwrap_or(Duration::MAX)))
            .collect();
        let mut nodes: Vec<(Duration, String, String)> = self
            .table
            .partitions()
            .iter()
            .filter(|p| *p.origin.site == *site && p.origin.is_alive() && !p.origin.local_site)
            .filter_map(|p| {
                let addr = p
                    .record
                    .as_ref()
                    .map(|r| r.advertise.clone())
                    .filter(|a| !a.is_empty())?;
                let node = p.origin.node_id.to_string();
                Some((
                    rtts.get(&node).copied().unwrap_or(Duration::MAX),
                    node,
                    addr,
                ))
            })
            .collect();
        nodes.sort();
        nodes.dedup_by(|a, b| a.1 == b.1);
        nodes.into_iter().map(|(_, n, a)| (n, a)).collect()
    }

    /// The measured round trip to `node`, when it is a direct peer that answered a ping.
    pub fn rtt_to(&self, node: &str) -> Option<Duration> {
        let peers = self.membership.lock();
        peers.links().find(|l| l.node_id == node)?.rtt()
    }

    /// A mutual-TLS connection to `node` of `site` at `addr` with `config` (its ALPN), whose
    /// certificate must name that node and site: anything else is dropped before a byte is
    /// sent and counted in `grouter_mesh_dial_identity_mismatch_total`.
    pub async fn connect_node(
        &self,
        dialer: &dyn Dialer,
        node: &str,
        site: &str,
        addr: &str,
        config: Arc<rustls::ClientConfig>,
        timeout: Option<Duration>,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, DialError> {
        let attempt = async {
            let tcp = dialer.dial(addr).await.map_err(|e| e.to_string())?;
            tokio_rustls::TlsConnector::from(config)
                .connect(MeshTls::server_name(), tcp)
                .await
                .map_err(|e| e.to_string())
        };
        let limit = timeout.unwrap_or(CONNECT_TIMEOUT);
        let tls = match tokio::time::timeout(limit, attempt).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return Err(DialError::Failed(format!("connect to {addr}: {e}"))),
            Err(_) => {
                return Err(DialError::TimedOut(format!(
                    "connect to {addr}: timed out after {limit:?}"
                )));
            }
        };
        // The mesh CA vouches for every node; only the certificate says which one answered.
        match tls
            .get_ref()
            .1
            .peer_certificates()
            .map(identity::peer_identity)
        {
            Some(Ok(id)) if id.node_id == node && id.site == site => Ok(tls),
            other => {
                self.count_dial_identity_mismatch();
                let presented = match other {
                    Some(Ok(id)) => id.to_string(),
                    _ => "no node identity".to_string(),
                };
                warn!(%addr, expected = %format_args!("{node}@{site}"), %presented, "dialled node answered with another identity; dropped");
                Err(DialError::Failed(format!(
                    "connect to {addr}: certificate names {presented}, not {node}@{site}"
                )))
            }
        }
    }

    /// A mesh for `table`, authenticated by `trust`, that keeps `health`'s sync state and
    /// the [`SiteFacts`] in `policies`.
    pub fn new(
        table: Arc<Table>,
        metrics: Arc<MeshMetrics>,
        settings: MeshSettings,
        trust: MeshTrust,
        health: Arc<Health>,
        policies: Arc<PolicyStore>,
    ) -> Arc<Mesh> {
        let tls = trust.tls().clone();
        let detector = Detector::new(settings.timeouts);
        let membership = Membership::new(
            table.me().clone(),
            settings.advertise.clone(),
            settings.seeds.clone(),
            detector,
        );
        Arc::new(Mesh {
            table,
            metrics,
            settings,
            tls,
            trust,
            rejections: Mutex::new(HashMap::new()),
            peer_http_conns: Mutex::new(Vec::new()),
            membership: Mutex::new(membership),
            peer_http: OnceLock::new(),
            peer_droplet: OnceLock::new(),
            health,
            policies,
            assessing: Mutex::new(()),
        })
    }

    /// Assess liveness at `now`: log verdict changes, retire the long dead, set the sync
    /// state, the site order and the site facts.
    fn assess(&self, now: Instant) {
        let _one_at_a_time = self.assessing.lock();
        let partitions = self.table.partitions();
        let assessment = self.membership.lock().assess(&partitions, now);
        for (node_id, state) in &assessment.transitions {
            info!(node = %node_id, state = state.as_str(), "mesh node state changed");
        }
        for node_id in &assessment.to_retire {
            if self.table.retire(node_id) {
                info!(node = %node_id, "dead node's partition retired");
            }
        }
        self.health.set_sync(assessment.sync);
        let partitions = self.table.partitions();
        self.table
            .set_site_order(self.membership.lock().rank_sites(&partitions));
        self.policies.set_facts(site_facts(
            &partitions,
            self.table.me(),
            &self.settings.region,
            self.health.can_serve(),
        ));
    }

    /// A peer's verified delta changed the table. Until the node is in sync that contact
    /// counts at once, not at the detector's next tick: otherwise a node that has just
    /// imported another site's routes would say `lost` (and fail open) while holding them.
    /// In sync, nothing can improve, so the common case costs one atomic load.
    fn heard_from_peer(&self) {
        if self.health.sync() != SyncState::InSync {
            self.assess(Instant::now());
        }
    }

    /// Current connections, sorted by peer.
    pub fn peers(&self) -> Vec<Arc<PeerLink>> {
        let mut v: Vec<_> = self.membership.lock().links().cloned().collect();
        v.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        v
    }

    /// This node's row of the inter-site RTT matrix: its best measured link to each other
    /// site, in microseconds. Its pings carry it to its direct peers.
    fn rtt_row(&self) -> Vec<wire::SiteRtt> {
        let mut best: BTreeMap<String, u64> = BTreeMap::new();
        for link in self.membership.lock().links() {
            let Some(rtt) = link.rtt() else { continue };
            let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
            let e = best.entry(link.site.clone()).or_insert(us);
            *e = (*e).min(us);
        }
        best.into_iter()
            .filter(|(site, _)| *site != *self.table.me().site)
            .take(MAX_RTT_SITES)
            .map(|(site, us)| wire::SiteRtt {
                site,
                rtt_us: u32::try_from(us).unwrap_or(u32::MAX),
            })
            .collect()
    }

    /// Every other node as the failure detector sees it.
    pub fn nodes(&self) -> Vec<NodeView> {
        self.membership.lock().nodes(Instant::now())
    }

    /// Keep at most one connection per peer (the rule is [`Membership::register`]'s), and
    /// close the one that lost. False when `link` lost and must close.
    fn register(&self, link: Arc<PeerLink>) -> bool {
        let mut peers = self.membership.lock();
        match peers.register(link) {
            Admission::Duplicate => {
                self.metrics.duplicates.inc();
                return false;
            }
            Admission::Admitted { replaced } => {
                if let Some(old) = replaced {
                    old.cancel.cancel();
                }
            }
        }
        self.metrics
            .peers
            .set(i64::try_from(peers.len()).unwrap_or(i64::MAX));
        self.metrics.connects.inc();
        true
    }

    fn unregister(&self, link: &Arc<PeerLink>) {
        let mut peers = self.membership.lock();
        peers.unregister(link);
        self.metrics
            .peers
            .set(i64::try_from(peers.len()).unwrap_or(i64::MAX));
    }

    /// Whether `node_id` is connected to this node directly.
    pub fn is_direct(&self, node_id: &str) -> bool {
        self.membership.lock().is_direct(node_id)
    }

    /// Certificates and seals.
    pub fn trust(&self) -> &MeshTrust {
        &self.trust
    }

    fn count_applied(&self, link: &PeerLink, applied: &sync::Applied) {
        self.metrics.entries_applied.inc_by(applied.changed as u64);
        for (node, why) in &applied.rejected {
            self.count_rejection(link, node, *why);
        }
        if applied.not_allowed > 0 {
            let why = sync::Rejection::DomainNotAllowed;
            self.metrics.rejected[why as usize].inc_by(applied.not_allowed as u64);
            self.tally(link, "", why, applied.not_allowed as u64);
        }
    }

    /// Count one refusal of what `link`'s peer sent (of `partition`'s, if it names one):
    /// in the metric, in the peer's tally (`/v1/peers`), and in the log at most once per
    /// peer and reason per minute.
    fn count_rejection(&self, link: &PeerLink, partition: &str, why: sync::Rejection) {
        self.metrics.count_rejection(why);
        self.tally(link, partition, why, 1);
    }

    fn tally(&self, link: &PeerLink, partition: &str, why: sync::Rejection, n: u64) {
        let log = {
            let mut tallies = self.rejections.lock();
            if !tallies.contains_key(&link.node_id)
                && tallies.len() >= self.table.limits().max_nodes
            {
                // Certified peers only, so bounded by the mesh; never beyond the limit.
                return;
            }
            let t = tallies.entry(link.node_id.clone()).or_default();
            t.counts[why as usize] += n;
            let now = Instant::now();
            let due = t.logged[why as usize]
                .is_none_or(|at| now.saturating_duration_since(at) >= REJECTION_LOG_EVERY);
            if due {
                t.logged[why as usize] = Some(now);
            }
            due
        };
        if !log {
            return;
        }
        if why.is_misbehaviour() {
            warn!(peer = %link.node_id, %partition, reason = why.as_str(), "mesh delta refused");
        } else {
            // Routine: a relay raced the owner's own push, or a late or lost delta that the
            // next digest repairs.
            debug!(peer = %link.node_id, %partition, reason = why.as_str(), "mesh delta dropped");
        }
    }

    /// What each peer sent that was refused, by reason (peers that sent nothing refused are
    /// absent).
    pub fn rejections(&self) -> BTreeMap<String, BTreeMap<&'static str, u64>> {
        self.rejections
            .lock()
            .iter()
            .map(|(node, t)| {
                let reasons = sync::Rejection::ALL
                    .iter()
                    .filter(|r| t.counts[**r as usize] > 0)
                    .map(|r| (r.as_str(), t.counts[*r as usize]))
                    .collect();
                (node.clone(), reasons)
            })
            .collect()
    }
}

/// How often one peer's refusals of one reason are logged.
const REJECTION_LOG_EVERY: Duration = Duration::from_secs(60);

/// Refusals of what one peer sent.
#[derive(Debug, Default)]
struct Tally {
    counts: [u64; sync::Rejection::ALL.len()],
    logged: [Option<Instant>; sync::Rejection::ALL.len()],
}

/// The mesh of a running node, for the admin API.
pub type MeshHandle = OnceLock<Arc<Mesh>>;

/// The mesh's counters, registered in the node's [`Metrics`] (even without `[mesh]`, so
/// scrapes show zeros).
#[derive(Debug)]
pub struct MeshMetrics {
    /// Mesh peers connected now.
    pub peers: Gauge,
    /// Mesh connections established.
    pub connects: Counter,
    /// Mesh connections closed because another one to the same peer won.
    pub duplicates: Counter,
    /// TLS handshakes or identities refused.
    pub handshake_failures: Counter,
    /// Dialled nodes (mesh or remote proxy) whose certificate named another node than the
    /// one dialled.
    pub dial_identity_mismatch: Counter,
    /// Live connections closed because a reloaded CRL revoked the peer's certificate.
    pub revoked_closed: Counter,
    /// Replicated entries sent.
    pub entries_sent: Counter,
    /// Replicated entries (and records) that changed this node's table.
    pub entries_applied: Counter,
    /// `grouter_mesh_deltas_rejected_total`, one counter per [`sync::Rejection`].
    rejected: [Counter; sync::Rejection::ALL.len()],
}

impl MeshMetrics {
    /// The counters, registered in `metrics` at zero.
    pub fn new(metrics: &Metrics) -> MeshMetrics {
        let m = MeshMetrics {
            peers: Gauge::default(),
            connects: Counter::default(),
            duplicates: Counter::default(),
            handshake_failures: Counter::default(),
            dial_identity_mismatch: Counter::default(),
            revoked_closed: Counter::default(),
            entries_sent: Counter::default(),
            entries_applied: Counter::default(),
            rejected: metrics.reason_counters(
                "mesh_deltas_rejected",
                "partition deltas dropped, by reason",
                sync::Rejection::ALL.map(sync::Rejection::as_str),
            ),
        };
        metrics.register("mesh_peers", "mesh peers connected", m.peers.clone());
        for (name, help, counter) in [
            ("mesh_connects", "mesh connections established", &m.connects),
            (
                "mesh_duplicate_connections",
                "mesh connections closed as duplicates",
                &m.duplicates,
            ),
            (
                "mesh_handshake_failures",
                "mesh TLS handshakes or identities refused",
                &m.handshake_failures,
            ),
            (
                "mesh_dial_identity_mismatch",
                "dialled nodes whose certificate named another node",
                &m.dial_identity_mismatch,
            ),
            (
                "mesh_revoked_connections_closed",
                "mesh connections closed because the CRL revoked the peer",
                &m.revoked_closed,
            ),
            (
                "mesh_entries_sent",
                "replicated entries sent to peers",
                &m.entries_sent,
            ),
            (
                "mesh_entries_applied",
                "replicated entries that changed the table",
                &m.entries_applied,
            ),
        ] {
            metrics.register(name, help, counter.clone());
        }
        m
    }

    /// Count one dropped partition delta.
    pub fn count_rejection(&self, why: sync::Rejection) {
        if let Some(c) = self.rejected.get(why as usize) {
            c.inc();
        }
    }
}

/// Run the mesh on `listener` until `shutdown`, taking at most what `gate` admits.
pub async fn run(
    mesh: Arc<Mesh>,
    listener: TcpListener,
    gate: Gate,
    dialer: Arc<dyn Dialer>,
    shutdown: CancellationToken,
) {
    let tasks = TaskTracker::new();
    tasks.spawn(accept_loop(
        mesh.clone(),
        listener,
        gate,
        tasks.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(dial_loop(
        mesh.clone(),
        dialer,
        tasks.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(heartbeat_loop(mesh.clone(), shutdown.clone()));
    if mesh.tls.crl_path().is_some() {
        tasks.spawn(crl_loop(mesh.clone(), shutdown.clone()));
    }
    shutdown.cancelled().await;
    tasks.close();
    tasks.wait().await;
    info!("mesh stopped");
}

/// Accept peers' connections: at most `gate`'s (one more is closed at once and counted),
/// each with [`CONNECT_TIMEOUT`] for its handshake (counted when it runs out); a session then
/// ends when its peer falls silent, and a connection that forwards requests has the proxy's
/// timeouts.
async fn accept_loop(
    mesh: Arc<Mesh>,
    listener: TcpListener,
    gate: Gate,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(mesh.tls.server.clone());
    loop {
        let (tcp, addr) = tokio::select! {
            () = shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(err) => {
                    warn!(%err, "mesh accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = gate.admit() else {
            debug!(%addr, "mesh connection over mesh.max_connections closed");
            drop(tcp);
            continue;
        };
        let (mesh, acceptor, shutdown, stats) = (
            mesh.clone(),
            acceptor.clone(),
            shutdown.clone(),
            gate.stats().clone(),
        );
        tasks.spawn(async move {
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    mesh.metrics.handshake_failures.inc();
                    warn!(%addr, %err, "mesh handshake refused");
                    return;
                }
                Err(_) => {
                    mesh.metrics.handshake_failures.inc();
                    stats.cut(Cut::HandshakeTimeout);
                    debug!(%addr, "mesh handshake timed out");
                    return;
                }
            };
            let peer = match tls.get_ref().1.peer_certificates().map(identity::peer_identity) {
                Some(Ok(p)) => p,
                other => {
                    mesh.metrics.handshake_failures.inc();
                    warn!(%addr, error = ?other.map(|r| r.err()), "mesh peer without a node identity");
                    return;
                }
            };
            let cert = end_entity(tls.get_ref().1.peer_certificates());
            match tls.get_ref().1.alpn_protocol() {
                Some(p) if p == identity::MESH_ALPN => {
                    let _slot = slot;
                    let _ = session::run(mesh, tls, peer, cert, false, addr.to_string(), shutdown).await;
                }
                Some(p) if p == identity::DROPLET_ALPN => match mesh.peer_droplet.get() {
                    Some(tx) => {
                        let conn = mesh.hand_over(tls, peer, cert, slot, &shutdown);
                        let _ = tx.send(conn).await;
                    }
                    None => debug!(%addr, "peer asked for a droplet, but this node places no apps"),
                },
                Some(b"h2" | b"http/1.1") => match mesh.peer_http.get() {
                    Some(tx) => {
                        let conn = mesh.hand_over(tls, peer, cert, slot, &shutdown);
                        let _ = tx.send(conn).await;
                    }
                    None => debug!(%addr, "peer forwarded HTTP, but this node has no proxy"),
                },
                other => debug!(%addr, alpn = ?other, "mesh connection without a known protocol"),
            }
        });
    }
}

/// Dial every seed and every discovered node we are not connected to, with back-off.
async fn dial_loop(
    mesh: Arc<Mesh>,
    dialer: Arc<dyn Dialer>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let connector = tokio_rustls::TlsConnector::from(mesh.tls.client.clone());
    let (done_tx, mut done) = mpsc::unbounded_channel::<(String, bool)>();
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut next_try: HashMap<String, (Instant, Duration)> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            Some((addr, ok)) = done.recv() => {
                in_flight.remove(&addr);
                let backoff = if ok {
                    Duration::from_millis(100)
                } else {
                    next_try.get(&addr).map_or(Duration::from_millis(200), |(_, b)| (*b * 2).min(REDIAL_MAX))
                };
                next_try.insert(addr, (Instant::now() + backoff, backoff));
            }
            _ = tick.tick() => {
                for addr in targets(&mesh) {
                    if in_flight.contains(&addr) || next_try.get(&addr).is_some_and(|(t, _)| Instant::now() < *t) {
                        continue;
                    }
                    in_flight.insert(addr.clone());
                    let (mesh, dialer, connector, done_tx, shutdown) =
                        (mesh.clone(), dialer.clone(), connector.clone(), done_tx.clone(), shutdown.clone());
                    tasks.spawn(async move {
                        let ok = dial(&mesh, dialer.as_ref(), &connector, &addr, shutdown).await;
                        let _ = done_tx.send((addr, ok));
                    });
                }
            }
        }
    }
}

/// Addresses worth dialling now ([`Membership::targets`]).
fn targets(mesh: &Mesh) -> Vec<String> {
    let partitions = mesh.table.partitions();
    mesh.membership.lock().targets(&partitions)
}

/// One connection attempt; runs the session when it succeeds. True when a session ran.
async fn dial(
    mesh: &Arc<Mesh>,
    dialer: &dyn Dialer,
    connector: &tokio_rustls::TlsConnector,
    addr: &str,
    shutdown: CancellationToken,
) -> bool {
    let attempt = async {
        let tcp = dialer.dial(addr).await?;
        connector.connect(MeshTls::server_name(), tcp).await
    };
    let tls = match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            debug!(%addr, %err, "mesh dial failed");
            return false;
        }
        Err(_) => {
            debug!(%addr, "mesh dial timed out");
            return false;
        }
    };
    let peer = match tls
        .get_ref()
        .1
        .peer_certificates()
        .map(identity::peer_identity)
    {
        Some(Ok(p)) => p,
        _ => {
            mesh.metrics.handshake_failures.inc();
            return false;
        }
    };
    if peer.node_id == *mesh.table.me().node_id {
        // A seed list may name this node itself.
        mesh.membership.lock().owner_is(addr, &peer.node_id);
        return false;
    }
    // The address is a known node's: whoever answers must be that node (a node that
    // advertises another's address, or a listener in the way, is not spoken to).
    let expected = {
        let partitions = mesh.table.partitions();
        mesh.membership.lock().expected_owners(addr, &partitions)
    };
    if !expected.is_empty() && !expected.contains(&peer.node_id) {
        mesh.metrics.handshake_failures.inc();
        mesh.metrics.dial_identity_mismatch.inc();
        warn!(%addr, expected = ?expected, presented = %peer, "mesh dial answered by another node; dropped");
        return false;
    }
    let cert = end_entity(tls.get_ref().1.peer_certificates());
    session::run(
        mesh.clone(),
        tls,
        peer,
        cert,
        true,
        addr.to_string(),
        shutdown,
    )
    .await
    .is_ok()
}

/// Each site's region and whether it can serve, from the nodes' records: a site is
/// healthy when one of its alive nodes says so, this node speaking for itself (`me_healthy`,
/// its own record being refreshed only every heartbeat). A site whose nodes disagree on the
/// region gets the smallest (a misconfiguration, but every node then sees the same).
fn site_facts(
    partitions: &[PartitionSummary],
    me: &Arc<Origin>,
    my_region: &str,
    me_healthy: bool,
) -> SiteFacts {
    let mut facts = SiteFacts::default();
    if !my_region.is_empty() {
        facts.regions.insert(me.site.clone(), my_region.into());
    }
    if me_healthy {
        facts.healthy.push(me.site.clone());
    }
    for p in partitions {
        let Some(record) = p.record.as_ref().filter(|_| !Arc::ptr_eq(&p.origin, me)) else {
            continue;
        };
        let site = &p.origin.site;
        // This site's region is this node's to say when it has one.
        let said = site == &me.site && !my_region.is_empty();
        if !record.region.is_empty() && !said {
            facts
                .regions
                .entry(site.clone())
                .and_modify(|r| {
                    if *record.region < **r {
                        *r = record.region.as_str().into();
                    }
                })
                .or_insert_with(|| record.region.as_str().into());
        }
        if record.healthy && p.origin.is_alive() && !facts.healthy.contains(site) {
            facts.healthy.push(site.clone());
        }
    }
    facts.healthy.sort();
    facts
}

/// Beat, assess liveness, retire the long dead, set the sync state, forget old tombstones.
async fn heartbeat_loop(mesh: Arc<Mesh>, shutdown: CancellationToken) {
    // Liveness is assessed every DETECTOR_TICK, heartbeats go out every heartbeat_interval:
    // a verdict then lags the silence by at most one tick, not one heartbeat.
    let mut tick = tokio::time::interval(DETECTOR_TICK.min(mesh.settings.heartbeat_interval));
    let mut next_beat = Instant::now();
    // Only this loop forgets tombstones, so the horizon needs no lock.
    let mut tombstones =
        TombstoneHorizon::new(TOMBSTONE_GRACE, TOMBSTONE_CHECKPOINT, Instant::now());
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let s = &mesh.settings;
        let now = Instant::now();
        if now >= next_beat {
            next_beat = now + s.heartbeat_interval;
            mesh.table.update_local_record(|r| {
                r.heartbeat += 1;
                r.advertise.clone_from(&s.advertise);
                r.region.clone_from(&s.region);
                r.site_addresses.clone_from(&s.site_addresses);
                r.healthy = mesh.health.can_serve();
            });
        }
        mesh.assess(now);

        // Tombstones: purge what was deleted before the grace period.
        let versions = || {
            mesh.table
                .digest()
                .into_iter()
                .map(|(o, v)| (o.node_id.clone(), v))
                .collect()
        };
        for (node_id, v) in tombstones.tick(now, versions) {
            mesh.table.purge_tombstones(&node_id, v);
        }
    }
}

/// The end-entity certificate of a verified chain (empty when there is none: such a
/// connection never gets this far, and an empty certificate matches no revocation).
fn end_entity(chain: Option<&[rustls::pki_types::CertificateDer<'static>]>) -> Arc<[u8]> {
    chain
        .and_then(|c| c.first())
        .map_or_else(|| Arc::from(&[][..]), |c| Arc::from(c.as_ref()))
}

/// How often the CRL file is looked at.
const CRL_POLL: Duration = Duration::from_millis(500);

/// Reload the CRL when its file changes and close every connection whose peer certificate
/// it now revokes (new handshakes are refused by the verifiers themselves).
async fn crl_loop(mesh: Arc<Mesh>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(CRL_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match mesh.tls.reload_crl() {
            Ok(false) => {}
            Ok(true) => {
                failing = false;
                info!(crl = ?mesh.tls.crl_path(), "mesh CRL reloaded");
                mesh.trust.forget_verdicts();
                close_revoked(&mesh);
                drop_revoked_partitions(&mesh);
            }
            // Once per spell of failures, not every 500 ms; the previous CRL stays.
            Err(err) if !failing => {
                failing = true;
                warn!(%err, "mesh CRL not reloaded; the previous one stays in force");
            }
            Err(_) => {}
        }
    }
}

/// Close every live connection whose peer certificate the current CRL revokes: mesh
/// sessions, and the connections on which peers forward HTTP (they finish what is in
/// flight and take no more).
fn close_revoked(mesh: &Mesh) {
    for (cert, cancel) in mesh.peer_http_conns.lock().iter() {
        if !cancel.is_cancelled() && is_revoked(mesh, cert) {
            mesh.metrics.revoked_closed.inc();
            cancel.cancel();
        }
    }
    for link in mesh.peers() {
        if link.cert().is_some_and(|cert| is_revoked(mesh, cert)) {
            mesh.metrics.revoked_closed.inc();
            info!(peer = %link.node_id, site = %link.site, "mesh peer's certificate revoked; closing");
            link.cancel.cancel();
        }
    }
}

/// Remove every partition whose owner's certificate the current CRL revokes (relays that
/// still hold it are refused the same way: the certificate no longer certifies).
fn drop_revoked_partitions(mesh: &Mesh) {
    for (node_id, cert) in mesh.table.owner_certs() {
        if is_revoked(mesh, &cert) && mesh.table.retire(&node_id) {
            mesh.metrics.count_rejection(sync::Rejection::Revoked);
            info!(node = %node_id, "revoked node's partition dropped");
        }
    }
}

/// Whether the current CRL revokes `cert` (other refusals, such as expiry, are not
/// revocation: they are dealt with where the certificate is next checked).
fn is_revoked(mesh: &Mesh, cert: &[u8]) -> bool {
    matches!(
        mesh.tls.verify_node_cert(cert),
        Err(identity::CertRejection::Revoked)
    )
}

impl Mesh {
    /// Count a dialled node whose certificate named another node (the remote proxy's
    /// client checks this too).
    pub fn count_dial_identity_mismatch(&self) {
        self.metrics.dial_identity_mismatch.inc();
    }

    /// The counters, for tests elsewhere in the crate.
    #[cfg(test)]
    pub(crate) fn metrics_for_test(&self) -> &MeshMetrics {
        &self.metrics
    }
}

/// Fixtures for tests of the mesh and of what dials through it.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::Path;

    use super::*;
    use crate::table::{Import, NodeRecord};

    /// lon-1's mesh (not running), and a listener at `impostor` that completes the TLS
    /// handshake with a genuine mesh certificate for mal-1@mal, then hangs up. The table
    /// knows one more node, `advertised_as` (`node@site`), whose record advertises the
    /// impostor's address.
    pub(crate) struct Impostor {
        pub(crate) mesh: Arc<Mesh>,
        pub(crate) impostor: String,
        _dir: tempfile::TempDir,
    }

    fn load(dir: &Path) -> MeshTls {
        MeshTls::load(
            &dir.join(identity::CA_CERT_FILE),
            &dir.join(identity::NODE_CERT_FILE),
            &dir.join(identity::NODE_KEY_FILE),
        )
        .unwrap()
    }

    pub(crate) async fn impostor(advertised_as: (&str, &str)) -> Impostor {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        identity::create_ca(&ca).unwrap();
        for (node, site) in [("lon-1", "lon"), ("mal-1", "mal")] {
            let id = NodeIdentity::new(node, site).unwrap();
            identity::create_node(&ca, &id, &dir.path().join(node)).unwrap();
        }
        let mal = load(&dir.path().join("mal-1"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let impostor = listener.local_addr().unwrap().to_string();
        let acceptor = tokio_rustls::TlsAcceptor::from(mal.server.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = acceptor.accept(tcp).await;
                });
            }
        });

        let table = Arc::new(Table::new("lon-1", "lon", 1));
        let (node, site) = advertised_as;
        table.import_trusted(Import {
            node_id: node.into(),
            site: site.into(),
            generation: 1,
            from_version: 0,
            up_to_version: 1,
            reset: false,
            record: Some(NodeRecord {
                version: 1,
                heartbeat: 1,
                advertise: impostor.clone(),
                ..Default::default()
            }),
            config: vec![],
            entries: vec![],
            seal: crate::table::testing::no_seal(),
            owner_cert: Arc::from(&b""[..]),
        });
        let settings = MeshSettings {
            advertise: "127.0.0.1:1".into(),
            seeds: Vec::new(),
            heartbeat_interval: Duration::from_millis(500),
            digest_interval: Duration::from_secs(1),
            timeouts: Timeouts {
                suspect_after: Duration::from_secs(2),
                dead_after: Duration::from_secs(3),
                retire_after: RETIRE_AFTER,
                sync_lost_after: Duration::from_secs(10),
            },
            region: String::new(),
            site_addresses: Vec::new(),
        };
        let metrics = Arc::new(MeshMetrics::new(&Metrics::new()));
        let lon = dir.path().join("lon-1");
        let trust = MeshTrust::new(
            load(&lon),
            &lon.join(identity::NODE_CERT_FILE),
            &lon.join(identity::NODE_KEY_FILE),
        )
        .unwrap();
        let mesh = Mesh::new(
            table,
            metrics,
            settings,
            trust,
            Arc::new(Health::meshed()),
            Arc::default(),
        );
        Impostor {
            mesh,
            impostor,
            _dir: dir,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[tokio::test]
    async fn dial_from_sets_the_source_address() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let source: std::net::IpAddr = "127.0.0.3".parse().unwrap();
        let dialer = TcpDialer::from_source(Some(source));
        let (dialed, accepted) = tokio::join!(dialer.dial(&addr), listener.accept());
        dialed.unwrap();
        assert_eq!(accepted.unwrap().1.ip(), source);
        // A source of the other family has nothing to dial.
        let v6 = TcpDialer::from_source(Some("::1".parse().unwrap()));
        assert!(v6.dial(&addr).await.is_err());
    }

    #[test]
    fn a_peer_s_reported_rtts_are_bounded_and_only_site_names() {
        let peer = NodeIdentity::new("nyc-1", "nyc").unwrap();
        let link = PeerLink::new(
            &peer,
            Arc::from(Vec::new()),
            "x",
            true,
            CancellationToken::new(),
        );
        let mut rtts: Vec<wire::SiteRtt> = (0..10_000)
            .map(|i| wire::SiteRtt {
                site: format!("s{i}"),
                rtt_us: 1_000,
            })
            .collect();
        rtts.insert(
            0,
            wire::SiteRtt {
                site: "Evil Site?".into(),
                rtt_us: 5,
            },
        );
        rtts.insert(
            0,
            wire::SiteRtt {
                site: "zero".into(),
                rtt_us: 0,
            },
        );
        link.set_reported(&rtts);
        let row = link.reported_rtts();
        assert_eq!(row.len(), MAX_RTT_SITES);
        assert!(!row.contains_key("Evil Site?") && !row.contains_key("zero"));
        assert_eq!(row.get("s0"), Some(&Duration::from_millis(1)));
        // The next ping replaces the row: a site no longer reported is gone.
        link.set_reported(&[wire::SiteRtt {
            site: "lon".into(),
            rtt_us: 80_000,
        }]);
        assert_eq!(
            link.reported_rtts().into_iter().collect::<Vec<_>>(),
            [("lon".to_string(), Duration::from_millis(80))]
        );
    }

    /// A running mesh node `node@site` with certificates from the CA in `ca` (and its CRL
    /// when `crl`), dialling `seeds`.
    async fn start(
        root: &Path,
        ca: &Path,
        (node, site): (&str, &str),
        crl: bool,
        seeds: &[String],
        shutdown: &CancellationToken,
    ) -> (Arc<Mesh>, String) {
        let dir = root.join(node);
        let id = NodeIdentity::new(node, site).unwrap();
        identity::create_node(ca, &id, &dir).unwrap();
        let tls = MeshTls::load_with_crl(
            &dir.join(identity::CA_CERT_FILE),
            &dir.join(identity::NODE_CERT_FILE),
            &dir.join(identity::NODE_KEY_FILE),
            crl.then(|| ca.join(identity::CRL_FILE)).as_deref(),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let settings = MeshSettings {
            advertise: addr.clone(),
            seeds: seeds.to_vec(),
            heartbeat_interval: Duration::from_millis(100),
            digest_interval: Duration::from_millis(200),
            timeouts: Timeouts {
                suspect_after: Duration::from_secs(2),
                dead_after: Duration::from_secs(3),
                retire_after: RETIRE_AFTER,
                sync_lost_after: Duration::from_secs(10),
            },
            region: String::new(),
            site_addresses: Vec::new(),
        };
        let table = Arc::new(Table::new(node, site, 1));
        let metrics = Arc::new(MeshMetrics::new(&Metrics::new()));
        let trust = MeshTrust::new(
            tls,
            &dir.join(identity::NODE_CERT_FILE),
            &dir.join(identity::NODE_KEY_FILE),
        )
        .unwrap();
        let mesh = Mesh::new(
            table,
            metrics,
            settings,
            trust,
            Arc::new(Health::meshed()),
            Arc::default(),
        );
        tokio::spawn(run(
            mesh.clone(),
            listener,
            Gate::new(64, crate::limits::ListenerStats::default()),
            Arc::new(TcpDialer::default()),
            shutdown.clone(),
        ));
        (mesh, addr)
    }

    /// Wait until `f` holds, for at most 10 s.
    async fn until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut poll = tokio::time::interval(Duration::from_millis(10));
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            poll.tick().await;
        }
    }

    #[tokio::test]
    async fn a_revoked_peer_is_disconnected_and_refused_after_the_crl_changes() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        identity::create_ca(&ca).unwrap();
        let shutdown = CancellationToken::new();
        let (lon, lon_addr) = start(dir.path(), &ca, ("lon-1", "lon"), true, &[], &shutdown).await;
        let (nyc, _) = start(
            dir.path(),
            &ca,
            ("nyc-1", "nyc"),
            false,
            std::slice::from_ref(&lon_addr),
            &shutdown,
        )
        .await;
        until("nyc-1 connected to lon-1", || {
            lon.peers().iter().any(|p| p.node_id == "nyc-1")
        })
        .await;
        let link = lon
            .peers()
            .into_iter()
            .find(|p| p.node_id == "nyc-1")
            .unwrap();
        assert!(link.cert().is_some_and(|c| !c.is_empty()));
        // nyc-1 also opens a connection to forward HTTP on (as its remote proxy does).
        let mut forwarded = lon.take_peer_http().unwrap();
        let tcp = TcpStream::connect(&lon_addr).await.unwrap();
        let _h2 = tokio_rustls::TlsConnector::from(nyc.tls.client_with_alpn(b"h2"))
            .connect(MeshTls::server_name(), tcp)
            .await
            .unwrap();
        let conn = tokio::time::timeout(Duration::from_secs(5), forwarded.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(conn.peer.node_id, "nyc-1");
        assert!(!conn.cancel.is_cancelled());

        identity::revoke_node(&ca, "nyc-1").unwrap();
        until(
            "lon-1 closed the revoked link and forwarding connection",
            || lon.metrics.revoked_closed.get() == 2 && lon.peers().is_empty(),
        )
        .await;
        assert!(link.cancel.is_cancelled());
        assert!(
            conn.cancel.is_cancelled(),
            "the proxy is told to stop serving it"
        );
        until("nyc-1 saw the link close", || nyc.peers().is_empty()).await;
        // nyc-1 keeps dialling, and every handshake is refused now.
        let failures = lon.metrics.handshake_failures.get();
        until("a redial refused", || {
            lon.metrics.handshake_failures.get() > failures
        })
        .await;
        assert!(lon.peers().is_empty());
        drop(nyc);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_dial_answered_by_another_node_is_dropped_and_counted() {
        // nyc-1 advertises the address, mal-1 answers it.
        let f = test_support::impostor(("nyc-1", "nyc")).await;
        let connector = tokio_rustls::TlsConnector::from(f.mesh.tls.client.clone());
        let ran = dial(
            &f.mesh,
            &TcpDialer::default(),
            &connector,
            &f.impostor,
            CancellationToken::new(),
        )
        .await;
        assert!(!ran);
        assert_eq!(f.mesh.metrics.dial_identity_mismatch.get(), 1);
        assert_eq!(f.mesh.metrics.handshake_failures.get(), 1);
        assert!(f.mesh.peers().is_empty());
    }

    #[tokio::test]
    async fn a_dial_answered_by_the_node_that_advertises_the_address_goes_on() {
        // mal-1 advertises its own address: the session starts (and fails at the hello,
        // because this impostor hangs up), and nothing is counted as a mismatch.
        let f = test_support::impostor(("mal-1", "mal")).await;
        let connector = tokio_rustls::TlsConnector::from(f.mesh.tls.client.clone());
        dial(
            &f.mesh,
            &TcpDialer::default(),
            &connector,
            &f.impostor,
            CancellationToken::new(),
        )
        .await;
        assert_eq!(f.mesh.metrics.dial_identity_mismatch.get(), 0);
        assert_eq!(f.mesh.metrics.handshake_failures.get(), 0);
    }

    #[test]
    fn site_facts_say_each_sites_region_and_whether_an_alive_node_can_serve() {
        use crate::table::NodeRecord;
        let me = Origin::new("lon-1", "lon", 1, true);
        let part = |node: &str, site: &str, region: &str, healthy: bool, alive: bool| {
            let origin = Origin::new(node, site, 1, site == "lon");
            origin.set_alive(alive);
            PartitionSummary {
                origin,
                max_version: 1,
                routes: 0,
                record: Some(NodeRecord {
                    region: region.into(),
                    healthy,
                    ..Default::default()
                }),
            }
        };
        let partitions = [
            // This node's own stale record: it speaks for itself instead.
            PartitionSummary {
                origin: me.clone(),
                max_version: 1,
                routes: 0,
                record: Some(NodeRecord {
                    region: "stale".into(),
                    healthy: true,
                    ..Default::default()
                }),
            },
            part("lon-2", "lon", "other", false, true),
            part("nyc-1", "nyc", "us", false, true),
            part("nyc-2", "nyc", "us", true, false),
            part("fra-1", "fra", "eu", true, true),
            part("sgp-1", "sgp", "", true, true),
        ];
        let facts = site_facts(&partitions, &me, "eu", false);
        assert_eq!(facts.region("lon"), Some("eu"));
        assert_eq!(facts.region("nyc"), Some("us"));
        assert_eq!(facts.region("fra"), Some("eu"));
        assert_eq!(facts.region("sgp"), None);
        // nyc's healthy node is dead, its alive one unhealthy; lon is down by its own word.
        let healthy: Vec<&str> = facts.healthy.iter().map(|s| &**s).collect();
        assert_eq!(healthy, ["fra", "sgp"]);
        let facts = site_facts(&partitions, &me, "eu", true);
        assert!(facts.is_healthy("lon"));
    }
}
