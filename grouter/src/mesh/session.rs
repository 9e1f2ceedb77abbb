//! One authenticated connection to a peer: hello, then digests, deltas and pings both ways.
//!
//! Owns: the framing of one TLS stream, the peer's [`PeerView`], pushing deltas whenever the
//! table changes, periodic digests (which repair whatever a push missed), RTT from pings,
//! and closing a connection that stays silent.
//!
//! The reader runs in its own task and applies deltas itself (a delta that changed the table
//! counts as contact at once while the node is not in sync), so a session never stops
//! reading because it is busy writing: two peers pushing large deltas at each other cannot
//! deadlock on full socket buffers.
//!
//! A session runs over any `AsyncRead + AsyncWrite` stream: the mesh's TLS stream, or in
//! this module's tests an in-memory `tokio::io::duplex` pair, so two ends replicate without
//! sockets or certificates on the wire.
//!
//! Must never: accept a hello that contradicts the peer's certificate, or apply a delta
//! without the authority rule of [`super::sync`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use grouter_protocol::mesh::{self as wire, frame::Body};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::identity::NodeIdentity;
use super::sync::{self, Inbox, PeerView, Sender};
use super::{Mesh, PeerLink};

/// How long a peer has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors that end a session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Reading or writing failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something that is not a frame.
    #[error("frame: {0}")]
    Frame(#[from] wire::FrameError),
    /// The peer did not say hello in time, or said it wrongly.
    #[error("handshake: {0}")]
    Hello(String),
    /// Nothing heard for too long.
    #[error("peer silent for {0:?}")]
    Silent(Duration),
    /// Another connection to the same peer won (the rule is in `membership`).
    #[error("duplicate connection")]
    Duplicate,
}

/// Messages from the reader task to the writer loop.
enum Control {
    Digest(wire::Digest),
    Ping(u64),
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(wire::MAX_FRAME)
        .new_codec()
}

/// Run a session over an established stream (TLS in production) with an authenticated
/// `peer`, whose end-entity certificate was `cert` (empty when the stream is not TLS).
pub(super) async fn run<S>(
    mesh: Arc<Mesh>,
    stream: S,
    peer: NodeIdentity,
    cert: Arc<[u8]>,
    dialed: bool,
    addr: String,
    shutdown: CancellationToken,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut framed = Framed::new(stream, codec());
    let me = mesh.table.me().clone();
    framed
        .send(wire::encode(Body::Hello(wire::Hello {
            protocol_version: wire::PROTOCOL_VERSION,
            node_id: me.node_id.to_string(),
            site: me.site.to_string(),
            generation: me.generation,
        })))
        .await?;
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, framed.next()).await {
        Err(_) => return Err(SessionError::Hello("no hello in time".into())),
        Ok(None) => return Err(SessionError::Hello("closed before hello".into())),
        Ok(Some(frame)) => match wire::decode(&frame?)? {
            Body::Hello(h) => h,
            _ => return Err(SessionError::Hello("first frame is not a hello".into())),
        },
    };
    if hello.node_id != peer.node_id || hello.site != peer.site {
        return Err(SessionError::Hello(format!(
            "hello says {}@{}, certificate says {}@{}",
            hello.node_id, hello.site, peer.node_id, peer.site
        )));
    }
    if hello.protocol_version == 0 {
        return Err(SessionError::Hello("protocol version 0".into()));
    }

    let cancel = shutdown.child_token();
    let link = Arc::new(PeerLink::new(&peer, cert, &addr, dialed, cancel.clone()));
    if !mesh.register(link.clone()) {
        return Err(SessionError::Duplicate);
    }
    info!(peer = %peer.node_id, site = %peer.site, %addr, dialed, "mesh peer connected");
    let result = exchange(&mesh, framed, &peer, &link, cancel.clone()).await;
    cancel.cancel();
    mesh.unregister(&link);
    match &result {
        Ok(()) => info!(peer = %peer.node_id, "mesh peer disconnected"),
        Err(err) => warn!(peer = %peer.node_id, error = %err, "mesh peer lost"),
    }
    result
}

async fn exchange<S>(
    mesh: &Arc<Mesh>,
    framed: Framed<S, LengthDelimitedCodec>,
    peer: &NodeIdentity,
    link: &Arc<PeerLink>,
    cancel: CancellationToken,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sink, mut stream) = framed.split();
    let (control_tx, mut control) = mpsc::channel::<Control>(64);
    let started = Instant::now();
    let last_rx = Arc::new(AtomicU64::new(0));

    // Reader: decode, apply deltas, hand digests and pings to the writer.
    let reader = {
        let (mesh, peer, link, last_rx, cancel) = (
            mesh.clone(),
            peer.clone(),
            link.clone(),
            last_rx.clone(),
            cancel.clone(),
        );
        tokio::spawn(async move {
            let mut inbox = Inbox::default();
            let result: Result<(), SessionError> = async {
                loop {
                    let frame = tokio::select! {
                        () = cancel.cancelled() => return Ok(()),
                        f = stream.next() => match f {
                            None => return Ok(()),
                            Some(f) => f?,
                        },
                    };
                    last_rx.store(elapsed_ms(started), Ordering::Relaxed);
                    link.bytes_in
                        .fetch_add(frame.len() as u64 + 4, Ordering::Relaxed);
                    match wire::decode(&frame)? {
                        Body::Delta(delta) => {
                            let sender = Sender {
                                node_id: &peer.node_id,
                                site: &peer.site,
                            };
                            let entries: usize =
                                delta.partitions.iter().map(|p| p.entries.len()).sum();
                            let apply = || {
                                let is_direct = |n: &str| mesh.is_direct(n);
                                let cx = sync::Context {
                                    table: &mesh.table,
                                    trust: mesh.trust(),
                                    is_direct: &is_direct,
                                    now_micros: now_micros(),
                                };
                                sync::apply(&cx, &mut inbox, sender, delta)
                            };
                            // Verifying a large delta hashes every entry: off the async
                            // workers when the runtime has others to run the rest.
                            let applied = if entries > 1_000
                                && tokio::runtime::Handle::current().runtime_flavor()
                                    == tokio::runtime::RuntimeFlavor::MultiThread
                            {
                                tokio::task::block_in_place(apply)
                            } else {
                                apply()
                            };
                            mesh.count_applied(&link, &applied);
                            if applied.changed > 0 {
                                mesh.heard_from_peer();
                            }
                        }
                        Body::Digest(d) => {
                            if control_tx.send(Control::Digest(d)).await.is_err() {
                                return Ok(());
                            }
                        }
                        Body::Ping(p) => {
                            link.set_reported(&p.rtts);
                            // Pings beyond the channel's room are dropped: a flood must not
                            // cost memory, and the peer's next ping is answered.
                            let _ = control_tx.try_send(Control::Ping(p.seq));
                        }
                        Body::Pong(p) => link.pong(p.seq),
                        Body::Hello(_) => debug!(peer = %peer.node_id, "repeated hello ignored"),
                    }
                }
            }
            .await;
            cancel.cancel();
            result
        })
    };

    // A delta still missing from a digest two digest intervals after it was sent is
    // taken as lost and sent again; before that it is taken as in flight.
    let mut view = PeerView::with_grace(mesh.settings.digest_interval * 2);
    // Until the peer's digest arrives we do not know what it holds: pushing then would
    // send it everything.
    let mut knows_peer = false;
    let mut changes = mesh.table.subscribe();
    // The opening digest goes out at once below; the periodic ones start an interval later
    // (an immediate second digest would make the peer send everything twice).
    let first = tokio::time::Instant::now() + mesh.settings.digest_interval;
    let mut digest_tick = tokio::time::interval_at(first, mesh.settings.digest_interval);
    let mut ping_tick = tokio::time::interval(mesh.settings.heartbeat_interval);
    let silent_limit = mesh.settings.timeouts.dead_after;
    let writer: Result<(), SessionError> = async {
        // Open with our digest, so the peer sends what we lack.
        send(&mut sink, link, Body::Digest(sync::digest(&mesh.table, |n| mesh.is_direct(n)))).await?;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                Some(msg) = control.recv() => match msg {
                    Control::Digest(d) => {
                        // The peer's own account of what it holds: send exactly the rest.
                        let max = mesh.table.limits().max_nodes;
                        if !view.set_from_digest(&d, Instant::now(), max) {
                            mesh.count_rejection(link, &peer.node_id, sync::Rejection::OverLimit);
                            continue;
                        }
                        *link.held.lock() = d.partitions.iter().map(|p| (p.node_id.clone(), p.max_version)).collect();
                        knows_peer = true;
                        push(mesh, &mut sink, link, &mut view, &peer.node_id).await?;
                    }
                    Control::Ping(seq) => send(&mut sink, link, Body::Pong(wire::Pong { seq })).await?,
                },
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    if !knows_peer {
                        continue;
                    }
                    push(mesh, &mut sink, link, &mut view, &peer.node_id).await?;
                }
                _ = digest_tick.tick() => {
                    send(&mut sink, link, Body::Digest(sync::digest(&mesh.table, |n| mesh.is_direct(n)))).await?;
                }
                _ = ping_tick.tick() => {
                    let silent = Duration::from_millis(elapsed_ms(started).saturating_sub(last_rx.load(Ordering::Relaxed)));
                    if silent > silent_limit {
                        return Err(SessionError::Silent(silent));
                    }
                    let seq = link.ping();
                    let rtts = mesh.rtt_row();
                    send(&mut sink, link, Body::Ping(wire::Ping { seq, rtts })).await?;
                }
            }
        }
    }
    .await;
    cancel.cancel();
    let read = reader.await.unwrap_or(Ok(()));
    writer.and(read)
}

/// Send every delta the peer lacks (several frames if it lacks much).
async fn push<W>(
    mesh: &Mesh,
    sink: &mut W,
    link: &PeerLink,
    view: &mut PeerView,
    peer: &str,
) -> Result<(), SessionError>
where
    W: futures::Sink<Bytes, Error = std::io::Error> + Unpin,
{
    while let Some(delta) = sync::delta(&mesh.table, mesh.trust(), view, peer) {
        let entries: usize = delta.partitions.iter().map(|p| p.entries.len()).sum();
        mesh.metrics.entries_sent.inc_by(entries as u64);
        send(sink, link, Body::Delta(delta)).await?;
    }
    Ok(())
}

async fn send<W>(sink: &mut W, link: &PeerLink, body: Body) -> Result<(), SessionError>
where
    W: futures::Sink<Bytes, Error = std::io::Error> + Unpin,
{
    let bytes = wire::encode(body);
    link.bytes_out
        .fetch_add(bytes.len() as u64 + 4, Ordering::Relaxed);
    sink.send(bytes).await?;
    Ok(())
}

/// Microseconds since the Unix epoch (the unit of generations).
fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::health::SyncState;
    use crate::mesh::MeshSettings;
    use crate::mesh::identity;
    use crate::mesh::liveness::Timeouts;
    use crate::mesh::trust::MeshTrust;
    use crate::metrics::Metrics;
    use crate::table::testing::key;
    use crate::table::{RouteEntry, Table};

    /// How long a test waits for replication before it fails (it takes milliseconds).
    const PATIENCE: Duration = Duration::from_secs(10);

    /// A mesh of `node@site` with a certificate from the CA in `root/ca`. It never listens
    /// or dials: the test hands its sessions their streams. (The session does not use the
    /// TLS configuration, but seals and checks partitions with the certificates.)
    fn mesh(root: &Path, node: &str, site: &str) -> Arc<Mesh> {
        let ca = root.join("ca");
        if !ca.exists() {
            identity::create_ca(&ca).unwrap();
        }
        let dir = root.join(node);
        identity::create_node(&ca, &NodeIdentity::new(node, site).unwrap(), &dir).unwrap();
        let trust = MeshTrust::load(
            &dir.join(identity::CA_CERT_FILE),
            &dir.join(identity::NODE_CERT_FILE),
            &dir.join(identity::NODE_KEY_FILE),
        )
        .unwrap();
        let settings = MeshSettings {
            advertise: format!("{node}:7000"),
            seeds: Vec::new(),
            heartbeat_interval: Duration::from_millis(500),
            digest_interval: Duration::from_secs(1),
            timeouts: Timeouts {
                suspect_after: Duration::from_secs(2),
                dead_after: Duration::from_millis(2500),
                retire_after: Duration::from_secs(600),
                sync_lost_after: Duration::from_secs(10),
            },
            region: String::new(),
            site_addresses: Vec::new(),
        };
        let table = Arc::new(Table::new(node, site, 1));
        let metrics = Arc::new(crate::mesh::MeshMetrics::new(&Metrics::new()));
        Mesh::new(
            table,
            metrics,
            settings,
            trust,
            Arc::new(crate::health::Health::meshed()),
            Arc::default(),
        )
    }

    /// One end of a connection: `mesh` talking to `peer` over `stream`.
    fn end<S>(
        mesh: &Arc<Mesh>,
        stream: S,
        peer: &Mesh,
        dialed: bool,
        shutdown: &CancellationToken,
    ) -> tokio::task::JoinHandle<Result<(), SessionError>>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let me = peer.table.me();
        let identity = NodeIdentity::new(&*me.node_id, &*me.site).unwrap();
        tokio::spawn(run(
            mesh.clone(),
            stream,
            identity,
            Arc::from(&[][..]),
            dialed,
            format!("{}:7000", me.node_id),
            shutdown.clone(),
        ))
    }

    fn route(app: &str) -> RouteEntry {
        crate::table::testing::entry(app, 1)
    }

    /// The sites `table` would send a request for `host` to, if any serves it.
    fn sites(table: &Table, host: &str) -> Option<Vec<String>> {
        table
            .lookup(host, "/")
            .map(|m| m.remote_sites.iter().map(|s| s.to_string()).collect())
    }

    /// Wait for `table` to satisfy `cond`, woken by its changes (never by a timer).
    async fn until(table: &Table, what: &str, cond: impl Fn(&Table) -> bool) {
        let mut changes = table.subscribe();
        let wait = async {
            while !cond(table) {
                changes.changed().await.unwrap();
            }
        };
        if tokio::time::timeout(PATIENCE, wait).await.is_err() {
            panic!("{what}: not within {PATIENCE:?}");
        }
    }

    #[tokio::test]
    async fn two_ends_over_a_duplex_stream_replicate_routes_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let lon = mesh(dir.path(), "lon-1", "lon");
        let nyc = mesh(dir.path(), "nyc-1", "nyc");
        // Held before the connection: it goes over in the opening exchange of digests.
        lon.table
            .upsert_local(&key("early.example.com"), route("a"));

        let (lon_io, nyc_io) = tokio::io::duplex(64 * 1024);
        let shutdown = CancellationToken::new();
        let lon_end = end(&lon, lon_io, &nyc, true, &shutdown);
        let nyc_end = end(&nyc, nyc_io, &lon, false, &shutdown);

        until(&nyc.table, "the early route at nyc", |t| {
            sites(t, "early.example.com").is_some()
        })
        .await;
        assert_eq!(sites(&nyc.table, "early.example.com").unwrap(), ["lon"]);
        // Each end took the other as its direct peer, from the identity it was given.
        assert_eq!(lon.peers()[0].node_id, "nyc-1");
        assert!(lon.peers()[0].dialed);
        assert_eq!(nyc.peers()[0].node_id, "lon-1");
        assert!(!nyc.peers()[0].dialed);

        // Changes once connected are pushed, both ways.
        lon.table.upsert_local(&key("late.example.com"), route("b"));
        nyc.table.upsert_local(&key("nyc.example.com"), route("c"));
        until(&nyc.table, "the late route at nyc", |t| {
            sites(t, "late.example.com").is_some()
        })
        .await;
        until(&lon.table, "nyc's route at lon", |t| {
            sites(t, "nyc.example.com").is_some_and(|s| s == ["nyc"])
        })
        .await;

        // A delete travels as a tombstone.
        assert!(lon.table.remove_local(&key("early.example.com")).is_some());
        until(&nyc.table, "the delete at nyc", |t| {
            sites(t, "early.example.com").is_none()
        })
        .await;
        assert!(sites(&nyc.table, "late.example.com").is_some());

        // Shut down, both ends let go of the peer.
        shutdown.cancel();
        let _ = lon_end.await.unwrap();
        let _ = nyc_end.await.unwrap();
        assert!(lon.peers().is_empty());
        assert!(nyc.peers().is_empty());
    }

    #[tokio::test]
    async fn a_second_connection_dialled_by_the_larger_id_is_refused_on_both_ends() {
        let dir = tempfile::tempdir().unwrap();
        let lon = mesh(dir.path(), "lon-1", "lon");
        let nyc = mesh(dir.path(), "nyc-1", "nyc");
        let shutdown = CancellationToken::new();
        // lon-1 dials first; lon-1 < nyc-1, so its connection is the one to keep.
        let (lon_io, nyc_io) = tokio::io::duplex(64 * 1024);
        let _first = (
            end(&lon, lon_io, &nyc, true, &shutdown),
            end(&nyc, nyc_io, &lon, false, &shutdown),
        );
        lon.table.upsert_local(&key("one.example.com"), route("a"));
        until(&nyc.table, "the first connection replicating", |t| {
            sites(t, "one.example.com").is_some()
        })
        .await;

        // nyc-1 dials too: both ends refuse it after the hellos.
        let (lon_io, nyc_io) = tokio::io::duplex(64 * 1024);
        let lon_second = end(&lon, lon_io, &nyc, false, &shutdown);
        let nyc_second = end(&nyc, nyc_io, &lon, true, &shutdown);
        assert!(matches!(
            lon_second.await.unwrap(),
            Err(SessionError::Duplicate)
        ));
        assert!(matches!(
            nyc_second.await.unwrap(),
            Err(SessionError::Duplicate)
        ));

        // The first connection is still the peer's, and still replicates.
        assert!(lon.peers()[0].dialed);
        assert!(!nyc.peers()[0].dialed);
        lon.table.upsert_local(&key("two.example.com"), route("b"));
        until(&nyc.table, "the first connection still replicating", |t| {
            sites(t, "two.example.com").is_some()
        })
        .await;
        shutdown.cancel();
    }

    /// Issue 12: contact counts as soon as the first verified delta arrives, not at the
    /// failure detector's next tick (which these sessions never run): a node that holds
    /// another site's routes never says `lost` while holding them.
    #[tokio::test]
    async fn the_first_verified_delta_from_another_site_ends_lost_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let lon = mesh(dir.path(), "lon-1", "lon");
        let nyc = mesh(dir.path(), "nyc-1", "nyc");
        assert_eq!(lon.health.sync(), SyncState::Lost, "before any contact");
        nyc.table.upsert_local(&key("shop.example.com"), route("a"));
        let (lon_io, nyc_io) = tokio::io::duplex(64 * 1024);
        let shutdown = CancellationToken::new();
        let _ends = (
            end(&lon, lon_io, &nyc, true, &shutdown),
            end(&nyc, nyc_io, &lon, false, &shutdown),
        );
        until(&lon.table, "nyc's route at lon", |t| {
            sites(t, "shop.example.com").is_some()
        })
        .await;
        assert_eq!(lon.health.sync(), SyncState::InSync);
        // A peer of the same site is no contact with another site.
        let lon2 = mesh(dir.path(), "lon-2", "lon");
        lon2.table.upsert_local(&key("two.example.com"), route("b"));
        let fresh = mesh(dir.path(), "lon-3", "lon");
        let (a, b) = tokio::io::duplex(64 * 1024);
        let _same_site = (
            end(&fresh, a, &lon2, true, &shutdown),
            end(&lon2, b, &fresh, false, &shutdown),
        );
        until(&fresh.table, "lon-2's route at lon-3", |t| {
            t.lookup("two.example.com", "/").is_some()
        })
        .await;
        assert_eq!(fresh.health.sync(), SyncState::Lost);
        shutdown.cancel();
    }
}
