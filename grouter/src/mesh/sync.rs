//! Anti-entropy between replicas of the table, as pure functions: no sockets, no clocks.
//!
//! Owns: turning the table into digests and deltas, applying a peer's delta, what each peer
//! is known to hold ([`PeerView`]), and **the rule of who may speak for which partition**:
//!
//! 1. Identity comes from certificates only: the peer is who its certificate says.
//! 2. Nobody writes this node's own partition: such entries are dropped and counted.
//! 3. A node speaks for its own partition, under the site its certificate names; a delta
//!    that claims another site for the sender's own partition is dropped.
//! 4. A peer may relay partitions of other nodes (so a partial mesh converges), but not of
//!    a node that is connected to us directly: that node is the only source of its own
//!    partition while it is.
//! 5. A relay may not move a node to another site: a partition's site is fixed by the
//!    owner's certificate when we met it directly, else by the partition as first held.
//!
//! Relays are trusted to pass content on faithfully: every mesh member holds a certificate
//! from the mesh CA, so a member's stolen key compromises the mesh (as in any mTLS mesh
//! without per-entry signatures). What the rule guarantees is that no member can impersonate
//! another's identity, re-home it, or overwrite the receiver's own state.
//!
//! Must never: do I/O, or write this node's own partition.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use grouter_protocol::mesh as wire;
use grouter_protocol::nats::RouteKey;

use crate::table::{Import, ImportOutcome, NodeRecord, ReplicatedEntry, RouteEntry, Table};

/// Most entries in one delta frame (≈ 80 bytes each on the wire).
pub const DELTA_BUDGET: usize = 20_000;

/// Why a partition delta was dropped. Label values of the mesh's rejection metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// Entries for the receiver's own partition.
    OwnPartition,
    /// The sender relayed a partition whose owner is connected to the receiver directly.
    OwnerConnected,
    /// The delta claims a site other than the one the owner's identity carries.
    SiteMismatch,
    /// An older incarnation than the one held (or retired): not an error, just late.
    Stale,
    /// Missing node id or site, or a malformed route key.
    Malformed,
    /// The delta starts above what we hold (an earlier one was lost): the next digest
    /// exchange repairs it.
    Gap,
}

impl Rejection {
    /// Every reason, in a fixed order.
    pub const ALL: [Rejection; 6] = [
        Rejection::OwnPartition,
        Rejection::OwnerConnected,
        Rejection::SiteMismatch,
        Rejection::Stale,
        Rejection::Malformed,
        Rejection::Gap,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::OwnPartition => "own_partition",
            Rejection::OwnerConnected => "owner_connected",
            Rejection::SiteMismatch => "site_mismatch",
            Rejection::Stale => "stale",
            Rejection::Malformed => "malformed",
            Rejection::Gap => "gap",
        }
    }
}

/// Who sent a delta, as its certificate says.
#[derive(Debug, Clone, Copy)]
pub struct Sender<'a> {
    /// The peer's node id.
    pub node_id: &'a str,
    /// The peer's site.
    pub site: &'a str,
}

/// What the receiver knows for the authority rule beyond the table.
pub trait Authority {
    /// The node is connected to us directly right now.
    fn is_direct(&self, node_id: &str) -> bool;
    /// The node's site as its certificate said, if we ever met it directly.
    fn certified_site(&self, node_id: &str) -> Option<String>;
}

/// Outcome of applying one delta.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Entries (and records) that changed the table.
    pub changed: usize,
    /// Partitions dropped, with the reason.
    pub rejected: Vec<(String, Rejection)>,
}

/// What a peer is known to hold: `node_id → (generation, version)`, set from the peer's
/// digests and advanced by every delta sent to it; and which partitions it takes from their
/// owners directly (never relayed to it).
#[derive(Debug, Clone)]
pub struct PeerView {
    held: HashMap<String, (u64, u64)>,
    /// When a delta of each partition was last sent to the peer.
    sent_at: HashMap<String, Instant>,
    direct: HashSet<String>,
    grace: Duration,
}

impl Default for PeerView {
    fn default() -> Self {
        Self::with_grace(Duration::ZERO)
    }
}

impl PeerView {
    /// A view in which a delta counts as lost when a digest still lacks it `grace` after it
    /// was sent (over TCP, deltas arrive in order, so a digest that reports less within the
    /// grace may simply predate them).
    pub fn with_grace(grace: Duration) -> PeerView {
        PeerView {
            held: HashMap::new(),
            sent_at: HashMap::new(),
            direct: HashSet::new(),
            grace,
        }
    }

    /// Take in what the peer says it holds (at `now`). Where it reports less than was sent,
    /// the view keeps its lead while the send is recent (in flight), and falls back to the
    /// report once it is not (lost or rejected: sent again).
    pub fn set_from_digest(&mut self, digest: &wire::Digest, now: Instant) {
        let in_flight = |node: &str, sent_at: &HashMap<String, Instant>| {
            sent_at
                .get(node)
                .is_some_and(|t| now.saturating_duration_since(*t) < self.grace)
        };
        let mut held = HashMap::with_capacity(digest.partitions.len());
        for p in &digest.partitions {
            let reported = (p.generation, p.max_version);
            let value = match self.held.get(&p.node_id) {
                Some(&(g, v))
                    if g == p.generation
                        && v > p.max_version
                        && in_flight(&p.node_id, &self.sent_at) =>
                {
                    (g, v)
                }
                _ => reported,
            };
            held.insert(p.node_id.clone(), value);
        }
        // Sent but not listed yet: keep while in flight.
        for (node, &sent) in &self.held {
            if !held.contains_key(node) && in_flight(node, &self.sent_at) {
                held.insert(node.clone(), sent);
            }
        }
        self.held = held;
        self.direct = digest
            .partitions
            .iter()
            .filter(|p| p.direct)
            .map(|p| p.node_id.clone())
            .collect();
    }

    /// What the peer holds of `node_id`.
    pub fn held(&self, node_id: &str) -> Option<(u64, u64)> {
        self.held.get(node_id).copied()
    }
}

/// This table's digest: every partition's incarnation and highest version, and whether
/// this node takes it from its owner directly (`direct(node_id)`).
pub fn digest(table: &Table, direct: impl Fn(&str) -> bool) -> wire::Digest {
    let mut partitions: Vec<wire::DigestEntry> = table
        .digest()
        .into_iter()
        .map(|(o, v)| wire::DigestEntry {
            node_id: o.node_id.to_string(),
            generation: o.generation,
            max_version: v,
            direct: direct(&o.node_id),
        })
        .collect();
    partitions.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    wire::Digest { partitions }
}

/// What `peer` lacks according to `view`, at most about [`DELTA_BUDGET`] entries, oldest
/// first within each partition; `view` advances as if the peer applied it. `None` when the
/// peer lacks nothing. The peer's own partition is never sent back to it.
pub fn delta(table: &Table, view: &mut PeerView, peer: &str) -> Option<wire::Delta> {
    let mut budget = DELTA_BUDGET;
    let mut partitions = Vec::new();
    let mut owners: Vec<Arc<str>> = table
        .digest()
        .into_iter()
        .map(|(o, _)| o.node_id.clone())
        .collect();
    // This node's own changes first: they are what only we can give.
    owners.sort_by_key(|n| (**n != *table.me().node_id, n.clone()));
    for node_id in owners {
        if budget == 0 {
            break;
        }
        let relayed = *node_id != *table.me().node_id;
        if *node_id == *peer || (relayed && view.direct.contains(&*node_id)) {
            // Its own partition, or one it takes from the owner directly (we would only be
            // relaying it).
            continue;
        }
        let Some(export) = table.export(&node_id, view.held(&node_id), budget) else {
            continue;
        };
        budget = budget.saturating_sub(export.entries.len());
        view.held.insert(
            node_id.to_string(),
            (export.origin.generation, export.up_to_version),
        );
        view.sent_at.insert(node_id.to_string(), Instant::now());
        partitions.push(wire::PartitionDelta {
            node_id: node_id.to_string(),
            site: export.origin.site.to_string(),
            generation: export.origin.generation,
            from_version: export.from_version,
            up_to_version: export.up_to_version,
            reset: export.reset,
            record: export.record.map(record_to_wire),
            entries: export.entries.into_iter().map(entry_to_wire).collect(),
        });
    }
    (!partitions.is_empty()).then_some(wire::Delta { partitions })
}

/// Apply a delta from `sender` under the authority rule (module docs).
pub fn apply(
    table: &Table,
    authority: &impl Authority,
    sender: Sender<'_>,
    delta: wire::Delta,
) -> Applied {
    let mut out = Applied::default();
    for pd in delta.partitions {
        let node_id = pd.node_id.clone();
        match check(table, authority, sender, &pd) {
            Err(why) => out.rejected.push((node_id, why)),
            Ok(()) => match import(table, pd) {
                Ok(ImportOutcome::Applied { changed, .. }) => out.changed += changed,
                Ok(ImportOutcome::OwnPartition) => {
                    out.rejected.push((node_id, Rejection::OwnPartition))
                }
                Ok(ImportOutcome::Stale) => out.rejected.push((node_id, Rejection::Stale)),
                Ok(ImportOutcome::Gap) => out.rejected.push((node_id, Rejection::Gap)),
                Err(why) => out.rejected.push((node_id, why)),
            },
        }
    }
    out
}

fn check(
    table: &Table,
    authority: &impl Authority,
    sender: Sender<'_>,
    pd: &wire::PartitionDelta,
) -> Result<(), Rejection> {
    if pd.node_id.is_empty() || pd.site.is_empty() {
        return Err(Rejection::Malformed);
    }
    if *pd.node_id == *table.me().node_id {
        return Err(Rejection::OwnPartition);
    }
    if pd.node_id == sender.node_id {
        // The owner speaks: its certificate names its site. A node retired as dead that
        // speaks for itself again is alive after all (relays still cannot bring it back).
        if pd.site != sender.site {
            return Err(Rejection::SiteMismatch);
        }
        table.unretire(&pd.node_id);
        return Ok(());
    }
    if authority.is_direct(&pd.node_id) {
        return Err(Rejection::OwnerConnected);
    }
    let known_site = authority.certified_site(&pd.node_id).or_else(|| {
        table
            .digest()
            .into_iter()
            .find(|(o, _)| *o.node_id == *pd.node_id)
            .map(|(o, _)| o.site.to_string())
    });
    match known_site {
        Some(site) if site != pd.site => Err(Rejection::SiteMismatch),
        _ => Ok(()),
    }
}

fn import(table: &Table, pd: wire::PartitionDelta) -> Result<ImportOutcome, Rejection> {
    let mut entries = Vec::with_capacity(pd.entries.len());
    for e in pd.entries {
        let key = RouteKey::parse(&format!("{}{}", e.host, e.path)).ok_or(Rejection::Malformed)?;
        if key.host != e.host || key.path != e.path {
            // A peer sends keys as we normalise them; anything else is not ours to guess.
            return Err(Rejection::Malformed);
        }
        entries.push(ReplicatedEntry {
            key: Arc::new(key),
            version: e.version,
            value: e.route.map(|r| {
                Arc::new(RouteEntry {
                    app_id: r.app_id.into(),
                    app_name: (!r.app_name.is_empty()).then(|| r.app_name.into()),
                    endpoints: r.endpoints,
                    instances: r.instances,
                    updated_at_ms: r.updated_at_ms,
                })
            }),
        });
    }
    Ok(table.import(Import {
        node_id: pd.node_id,
        site: pd.site,
        generation: pd.generation,
        from_version: pd.from_version,
        up_to_version: pd.up_to_version,
        reset: pd.reset,
        record: pd.record.map(record_from_wire),
        entries,
    }))
}

fn entry_to_wire(e: ReplicatedEntry) -> wire::Entry {
    wire::Entry {
        host: e.key.host.clone(),
        path: e.key.path.clone(),
        version: e.version,
        route: e.value.map(|r| wire::RouteValue {
            app_id: r.app_id.to_string(),
            app_name: r.app_name.as_deref().unwrap_or_default().to_string(),
            endpoints: r.endpoints,
            instances: r.instances,
            updated_at_ms: r.updated_at_ms,
        }),
    }
}

fn record_to_wire(r: NodeRecord) -> wire::NodeRecord {
    wire::NodeRecord {
        version: r.version,
        region: r.region,
        advertise: r.advertise,
        heartbeat: r.heartbeat,
        healthy: r.healthy,
        site_addresses: r.site_addresses,
        proxy_address: r.proxy_address,
    }
}

fn record_from_wire(r: wire::NodeRecord) -> NodeRecord {
    NodeRecord {
        version: r.version,
        region: r.region,
        advertise: r.advertise,
        heartbeat: r.heartbeat,
        healthy: r.healthy,
        site_addresses: r.site_addresses,
        proxy_address: r.proxy_address,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use super::*;
    use crate::table::testing::{entry, key};

    #[test]
    fn rejection_reasons_index_their_counters_in_order() {
        for (i, r) in Rejection::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{}", r.as_str());
        }
    }

    /// No direct peers; no certificates seen.
    struct Nobody;
    impl Authority for Nobody {
        fn is_direct(&self, _: &str) -> bool {
            false
        }
        fn certified_site(&self, _: &str) -> Option<String> {
            None
        }
    }

    /// Everything a table holds, comparable across replicas: per partition, live routes and
    /// the record.
    /// Per partition: generation, `(route, "app:endpoints")` pairs, record.
    type State = BTreeMap<String, (u64, Vec<(String, String)>, Option<NodeRecord>)>;

    fn state(t: &Table) -> State {
        let mut out = BTreeMap::new();
        for p in t.partitions() {
            let mut routes: Vec<(String, String)> = t
                .routes(None)
                .into_iter()
                .flat_map(|r| {
                    let name = format!("{}{}", r.host, r.path);
                    r.servers
                        .into_iter()
                        .filter(|(o, _)| Arc::ptr_eq(o, &p.origin))
                        .map(move |(_, e)| (name.clone(), format!("{}:{}", e.app_id, e.endpoints)))
                })
                .collect();
            routes.sort();
            out.insert(
                p.origin.node_id.to_string(),
                (p.origin.generation, routes, p.record),
            );
        }
        out
    }

    fn send(from: &Table, to: &Table, view: &mut PeerView) -> Applied {
        let me = from.me();
        let sender = Sender {
            node_id: &me.node_id,
            site: &me.site,
        };
        match delta(from, view, &to.me().node_id) {
            Some(d) => apply(to, &Nobody, sender, d),
            None => Applied::default(),
        }
    }

    #[test]
    fn a_delta_carries_routes_tombstones_and_records() {
        let a = Table::new("lon-1", "lon", 1);
        let b = Table::new("nyc-1", "nyc", 1);
        a.upsert_local(&key("shop.com"), entry("shop", 2));
        a.upsert_local(&key("gone.com/x"), entry("gone", 1));
        a.remove_local(&key("gone.com/x"));
        a.update_local_record(|r| r.heartbeat = 7);
        let mut view = PeerView::default();
        let applied = send(&a, &b, &mut view);
        assert!(applied.rejected.is_empty(), "{applied:?}");
        let m = b.lookup("shop.com", "/").unwrap();
        assert!(!m.local);
        assert_eq!(m.remote_sites.as_slice(), [Arc::<str>::from("lon")]);
        assert!(b.lookup("gone.com", "/x").is_none());
        assert_eq!(state(&a)["lon-1"], state(&b)["lon-1"]);
        // Nothing more to send until something changes.
        assert!(delta(&a, &mut view, "nyc-1").is_none());
        a.remove_local(&key("shop.com"));
        send(&a, &b, &mut view);
        assert!(b.lookup("shop.com", "/").is_none());
    }

    #[test]
    fn nobody_writes_the_receivers_partition_or_re_homes_a_node() {
        let a = Table::new("lon-1", "lon", 1);
        a.upsert_local(&key("mine.com"), entry("mine", 1));
        let forged = |node: &str, site: &str| wire::Delta {
            partitions: vec![wire::PartitionDelta {
                node_id: node.into(),
                site: site.into(),
                generation: 99,
                from_version: 0,
                up_to_version: 100,
                reset: true,
                record: None,
                entries: vec![wire::Entry {
                    host: "evil.com".into(),
                    path: String::new(),
                    version: 100,
                    route: Some(wire::RouteValue {
                        app_id: "evil".into(),
                        endpoints: 1,
                        ..Default::default()
                    }),
                }],
            }],
        };
        let mallory = Sender {
            node_id: "mal-1",
            site: "mal",
        };
        let before = state(&a);
        // 1. The receiver's own partition.
        let r = apply(&a, &Nobody, mallory, forged("lon-1", "lon"));
        assert_eq!(r.rejected, [("lon-1".to_string(), Rejection::OwnPartition)]);
        // 2. Its own partition under another site than its certificate says.
        let r = apply(&a, &Nobody, mallory, forged("mal-1", "lon"));
        assert_eq!(r.rejected, [("mal-1".to_string(), Rejection::SiteMismatch)]);
        // 3. A node that is connected directly.
        struct Direct;
        impl Authority for Direct {
            fn is_direct(&self, n: &str) -> bool {
                n == "nyc-1"
            }
            fn certified_site(&self, n: &str) -> Option<String> {
                (n == "nyc-1").then(|| "nyc".to_string())
            }
        }
        let r = apply(&a, &Direct, mallory, forged("nyc-1", "nyc"));
        assert_eq!(
            r.rejected,
            [("nyc-1".to_string(), Rejection::OwnerConnected)]
        );
        // 4. Re-homing a node whose certificate we saw.
        struct Seen;
        impl Authority for Seen {
            fn is_direct(&self, _: &str) -> bool {
                false
            }
            fn certified_site(&self, n: &str) -> Option<String> {
                (n == "nyc-1").then(|| "nyc".to_string())
            }
        }
        let r = apply(&a, &Seen, mallory, forged("nyc-1", "lon"));
        assert_eq!(r.rejected, [("nyc-1".to_string(), Rejection::SiteMismatch)]);
        assert_eq!(state(&a), before, "nothing changed");
        assert!(a.lookup("evil.com", "/").is_none());
        assert!(a.lookup("mine.com", "/").unwrap().local);
        // A legitimate relay of a node we never met is accepted.
        let r = apply(&a, &Nobody, mallory, forged("sgp-1", "sgp"));
        assert!(r.rejected.is_empty());
        assert!(a.lookup("evil.com", "/").is_some());
    }

    #[test]
    fn a_new_generation_supersedes_and_retired_ones_stay_dead() {
        let a1 = Table::new("lon-1", "lon", 1);
        a1.upsert_local(&key("old.com"), entry("old", 1));
        let b = Table::new("nyc-1", "nyc", 1);
        send(&a1, &b, &mut PeerView::default());
        assert!(b.lookup("old.com", "/").is_some());
        // lon-1 restarts empty with a newer generation.
        let a2 = Table::new("lon-1", "lon", 2);
        a2.upsert_local(&key("new.com"), entry("new", 1));
        let mut view = PeerView::default();
        view.set_from_digest(&digest(&b, |_| false), Instant::now());
        send(&a2, &b, &mut view);
        assert!(
            b.lookup("old.com", "/").is_none(),
            "the old incarnation is superseded"
        );
        assert!(b.lookup("new.com", "/").is_some());
        // …and the old one, relayed late, is ignored.
        let r = send(&a1, &b, &mut PeerView::default());
        assert_eq!(r.rejected, [("lon-1".to_string(), Rejection::Stale)]);
        // The restarted node relearns everything else from its peer.
        b.upsert_local(&key("nyc.com"), entry("n", 1));
        send(&b, &a2, &mut PeerView::default());
        assert!(a2.lookup("nyc.com", "/").is_some());
        // A retired incarnation is never resurrected by a relay…
        assert!(b.retire("lon-1"));
        assert!(b.lookup("new.com", "/").is_none());
        let relay = Table::new("sgp-1", "sgp", 1);
        send(&a2, &relay, &mut PeerView::default());
        let r = send(&relay, &b, &mut PeerView::default());
        assert_eq!(r.rejected, [("lon-1".to_string(), Rejection::Stale)]);
        assert!(b.lookup("new.com", "/").is_none());
        // …but the node itself, speaking again after a long partition, is back.
        let r = send(&a2, &b, &mut PeerView::default());
        assert!(r.rejected.is_empty(), "{r:?}");
        assert!(b.lookup("new.com", "/").is_some());
    }

    #[test]
    fn a_replica_behind_the_tombstone_horizon_gets_a_reset() {
        let a = Table::new("lon-1", "lon", 1);
        let b = Table::new("nyc-1", "nyc", 1);
        a.upsert_local(&key("x.com"), entry("x", 1));
        a.upsert_local(&key("y.com"), entry("y", 1));
        let mut view = PeerView::default();
        send(&a, &b, &mut view);
        // b misses the deletion of x, and a forgets it.
        a.remove_local(&key("x.com"));
        let horizon = a.digest()[0].1;
        assert_eq!(a.purge_tombstones("lon-1", horizon), 1);
        let d = delta(&a, &mut view, "nyc-1").unwrap();
        assert!(d.partitions[0].reset);
        let sender = Sender {
            node_id: "lon-1",
            site: "lon",
        };
        apply(&b, &Nobody, sender, d);
        assert!(
            b.lookup("x.com", "/").is_none(),
            "the reset dropped the forgotten route"
        );
        assert!(b.lookup("y.com", "/").is_some());
        assert_eq!(state(&a)["lon-1"].1, state(&b)["lon-1"].1);
    }

    #[test]
    fn a_digest_that_predates_a_delta_does_not_cause_a_resend_but_loss_does() {
        let a = Table::new("lon-1", "lon", 1);
        a.upsert_local(&key("x.com"), entry("x", 1));
        let mut view = PeerView::with_grace(Duration::from_secs(2));
        let empty = wire::Digest { partitions: vec![] };
        let t0 = Instant::now();
        view.set_from_digest(&empty, t0);
        assert!(delta(&a, &mut view, "nyc-1").is_some());
        // The peer's next digest was sent before our delta arrived: nothing is resent.
        view.set_from_digest(&empty, t0 + Duration::from_millis(500));
        assert!(
            delta(&a, &mut view, "nyc-1").is_none(),
            "in flight, not lost"
        );
        // Still missing well after it was sent: lost, so sent again.
        view.set_from_digest(&empty, t0 + Duration::from_secs(3));
        assert!(delta(&a, &mut view, "nyc-1").is_some(), "lost, so resent");
        // A partition the peer takes from its owner directly is never relayed to it.
        let b = Table::new("sgp-1", "sgp", 1);
        send(&a, &b, &mut PeerView::default());
        let direct = wire::Digest {
            partitions: vec![wire::DigestEntry {
                node_id: "lon-1".into(),
                generation: 1,
                max_version: 0,
                direct: true,
            }],
        };
        let mut view = PeerView::default();
        view.set_from_digest(&direct, Instant::now());
        // …while the owner itself still sends it.
        let mut owner_view = PeerView::default();
        owner_view.set_from_digest(&direct, Instant::now());
        a.upsert_local(&key("y.com"), entry("y", 1));
        let own = delta(&a, &mut owner_view, "nyc-1");
        assert!(own.is_some_and(|d| d.partitions.iter().any(|p| p.node_id == "lon-1")));
        let relayed = delta(&b, &mut view, "nyc-1").map(|d| {
            d.partitions
                .iter()
                .map(|p| p.node_id.clone())
                .collect::<Vec<_>>()
        });
        assert!(
            relayed
                .as_ref()
                .is_none_or(|p| !p.contains(&"lon-1".to_string())),
            "{relayed:?}"
        );
    }

    #[test]
    fn large_partitions_go_in_budgeted_chunks() {
        let a = Table::new("lon-1", "lon", 1);
        for i in 0..(DELTA_BUDGET * 2 + 10) {
            a.upsert_local(&key(&format!("app-{i}.com")), entry("a", 1));
        }
        let b = Table::new("nyc-1", "nyc", 1);
        let mut view = PeerView::default();
        let mut frames = 0;
        while let Some(d) = delta(&a, &mut view, "nyc-1") {
            assert!(d.partitions.iter().map(|p| p.entries.len()).sum::<usize>() <= DELTA_BUDGET);
            apply(
                &b,
                &Nobody,
                Sender {
                    node_id: "lon-1",
                    site: "lon",
                },
                d,
            );
            frames += 1;
        }
        assert_eq!(frames, 3);
        assert_eq!(b.stats().routes, DELTA_BUDGET * 2 + 10);
    }

    /// A small deterministic PRNG (xorshift), so a failing seed can be replayed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Replicas exchange digests and deltas over a network that loses 30 % of messages and
    /// delivers the rest in random order, while owners keep writing. Once writes stop and
    /// the network heals (every message delivered), every replica holds every partition
    /// exactly as its owner does: nothing lost, nothing duplicated, tombstones honoured.
    #[test]
    fn replicas_converge_under_loss_and_reordering() {
        for seed in [1u64, 7, 42, 1234, 99991] {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let sites = ["lon", "nyc", "sgp"];
            let tables: Vec<Table> = (0..6)
                .map(|i| Table::new(&format!("{}-{}", sites[i % 3], i / 3 + 1), sites[i % 3], 1))
                .collect();
            let n = tables.len();
            // Partial mesh: a ring plus one chord, so relaying is needed.
            let links: Vec<(usize, usize)> =
                (0..n).map(|i| (i, (i + 1) % n)).chain([(0, 3)]).collect();
            let mut views: HashMap<(usize, usize), PeerView> = HashMap::new();
            // In-flight messages: (to, from, delta or digest).
            enum Msg {
                Digest(wire::Digest),
                Delta(wire::Delta),
            }
            let mut wire_msgs: Vec<(usize, usize, Msg)> = Vec::new();
            let mut live: HashSet<(usize, String)> = HashSet::new();
            for round in 0..400 {
                let writing = round < 300;
                if writing {
                    for _ in 0..3 {
                        let t = rng.below(n as u64) as usize;
                        let k = format!("r{}.example.com", rng.below(40));
                        if rng.below(3) == 0 {
                            tables[t].remove_local(&key(&k));
                            live.remove(&(t, k));
                        } else {
                            tables[t].upsert_local(
                                &key(&k),
                                entry(&format!("a{}", rng.below(5)), 1 + rng.below(3) as u32),
                            );
                            live.insert((t, k));
                        }
                    }
                }
                // Every link: both ends push deltas; sometimes send a digest.
                for &(x, y) in &links {
                    for (from, to) in [(x, y), (y, x)] {
                        let view = views.entry((from, to)).or_default();
                        if let Some(d) = delta(&tables[from], view, &tables[to].me().node_id) {
                            wire_msgs.push((to, from, Msg::Delta(d)));
                        }
                        if rng.below(4) == 0 {
                            wire_msgs.push((
                                to,
                                from,
                                Msg::Digest(digest(&tables[from], |_| false)),
                            ));
                        }
                    }
                }
                // Deliver a random subset in random order; lose some while "faulty".
                let mut keep = Vec::new();
                while !wire_msgs.is_empty() {
                    let i = rng.below(wire_msgs.len() as u64) as usize;
                    let (to, from, msg) = wire_msgs.swap_remove(i);
                    if writing && rng.below(10) < 3 {
                        continue; // lost
                    }
                    if writing && rng.below(10) < 2 {
                        keep.push((to, from, msg)); // delayed to a later round
                        continue;
                    }
                    match msg {
                        Msg::Delta(d) => {
                            let o = tables[from].me();
                            apply(
                                &tables[to],
                                &Nobody,
                                Sender {
                                    node_id: &o.node_id,
                                    site: &o.site,
                                },
                                d,
                            );
                        }
                        Msg::Digest(d) => {
                            // The digest's sender tells the receiver what it holds.
                            views
                                .entry((to, from))
                                .or_default()
                                .set_from_digest(&d, Instant::now());
                        }
                    }
                }
                wire_msgs = keep;
            }
            let reference = state(&tables[0]);
            for (i, t) in tables.iter().enumerate() {
                assert_eq!(state(t), reference, "seed {seed}: replica {i} differs");
            }
            // And the owners' truth matches what was written.
            for (t, table) in tables.iter().enumerate() {
                let owned = &reference[&*table.me().node_id].1;
                let want: HashSet<String> = live
                    .iter()
                    .filter(|(o, _)| *o == t)
                    .map(|(_, k)| k.clone())
                    .collect();
                let got: HashSet<String> = owned.iter().map(|(k, _)| k.clone()).collect();
                assert_eq!(got, want, "seed {seed}: partition of replica {t}");
            }
        }
    }
}
