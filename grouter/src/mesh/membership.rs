//! Membership: who this node is connected to, who it should dial, how it ranks the other
//! sites, and when deleted routes may be forgotten. Rules only; the caller does the I/O.
//!
//! Owns:
//! - the **peer set**: at most one connection per peer. Of two connections between the same
//!   pair of nodes, the one dialled by the node with the smaller id wins, on both ends alike;
//!   a reconnect in the same direction replaces the old connection;
//! - the **address owners**: which node an address turned out to be (seeds are dialled
//!   before anyone knows who answers), this node included;
//! - the **dial targets**: seeds and the advertised addresses of live known nodes, except
//!   this node's own and those of nodes already connected;
//! - the **site ranking**: healthy sites before unhealthy, then by the lowest RTT to any
//!   of their nodes;
//! - the failure detector of [`super::liveness`], which also says when a dead node is
//!   retired; and the **tombstone horizon** ([`TombstoneHorizon`]).
//!
//! Time is passed in (`now`), the table is passed in as a snapshot of its partitions, and a
//! connection is anything that implements [`Link`], so every rule is tested here without
//! sockets, tasks or a clock.
//!
//! Must never: lock, do I/O, spawn, read the clock, or close a connection itself (it hands
//! the connection that lost back to the caller, which closes it).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::liveness::{Assessment, Detector, NodeView};
use crate::table::{Origin, PartitionSummary};

/// What membership needs to know of one connection; the mesh's is an `Arc<PeerLink>`.
pub(super) trait Link {
    /// The peer's node id (from its certificate).
    fn peer(&self) -> &str;
    /// The peer's site (from its certificate).
    fn site(&self) -> &str;
    /// The remote address (the one dialled, when this node dialled).
    fn addr(&self) -> &str;
    /// This node dialled the connection.
    fn dialed(&self) -> bool;
    /// Round-trip time of the last answered ping.
    fn rtt(&self) -> Option<Duration>;
    /// The same connection (not merely one to the same peer).
    fn same(&self, other: &Self) -> bool;
}

/// What [`Membership::register`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admission<L> {
    /// The connection is the peer's now; `replaced` (if any) lost and must be closed.
    Admitted {
        /// The peer's previous connection.
        replaced: Option<L>,
    },
    /// Another connection to the same peer wins: this one must be closed.
    Duplicate,
}

/// The membership of one node. The mesh keeps it behind one lock.
#[derive(Debug)]
pub(super) struct Membership<L> {
    me: Arc<Origin>,
    /// Where other nodes reach this node (never dialled).
    advertise: String,
    seeds: Vec<String>,
    peers: HashMap<String, L>,
    /// Addresses that turned out to be a given node, or this node itself.
    addr_owner: HashMap<String, String>,
    detector: Detector,
}

impl<L: Link> Membership<L> {
    /// Nobody connected yet. `me` is this node's origin, `advertise` its own address (never a
    /// target), `seeds` the addresses dialled before anything is known.
    pub(super) fn new(
        me: Arc<Origin>,
        advertise: String,
        seeds: Vec<String>,
        detector: Detector,
    ) -> Membership<L> {
        Membership {
            me,
            advertise,
            seeds,
            peers: HashMap::new(),
            addr_owner: HashMap::new(),
            detector,
        }
    }

    /// Take in a connection whose peer said hello. The address it was dialled at is its
    /// from now on, even when the connection then loses: the certificate said so either way.
    pub(super) fn register(&mut self, link: L) -> Admission<L> {
        if link.dialed() {
            self.addr_owner
                .insert(link.addr().to_string(), link.peer().to_string());
        }
        if let Some(old) = self.peers.get(link.peer())
            && old_wins(&self.me.node_id, link.peer(), old.dialed(), link.dialed())
        {
            return Admission::Duplicate;
        }
        let replaced = self.peers.insert(link.peer().to_string(), link);
        Admission::Admitted { replaced }
    }

    /// Forget a connection that ended. A connection that already lost its place to a newer
    /// one changes nothing. True when it was the peer's connection.
    pub(super) fn unregister(&mut self, link: &L) -> bool {
        if self.peers.get(link.peer()).is_some_and(|p| p.same(link)) {
            self.peers.remove(link.peer());
            return true;
        }
        false
    }

    /// How many peers are connected.
    pub(super) fn len(&self) -> usize {
        self.peers.len()
    }

    /// The current connections, in no particular order.
    pub(super) fn links(&self) -> impl Iterator<Item = &L> {
        self.peers.values()
    }

    /// The node is connected to this one directly.
    pub(super) fn is_direct(&self, node_id: &str) -> bool {
        self.peers.contains_key(node_id)
    }

    /// `addr` turned out to be `node_id` (this node's own id when a seed names this node).
    pub(super) fn owner_is(&mut self, addr: &str, node_id: &str) {
        self.addr_owner
            .insert(addr.to_string(), node_id.to_string());
    }

    /// The nodes a dial of `addr` must reach: the live nodes in `partitions` whose record
    /// advertises it (this node excluded). Empty when no node does (a seed nobody claims):
    /// then any node the mesh CA certified may answer.
    pub(super) fn expected_owners(
        &self,
        addr: &str,
        partitions: &[PartitionSummary],
    ) -> Vec<String> {
        let mut owners: Vec<String> = Vec::new();
        for p in partitions {
            if let Some(r) = &p.record
                && p.origin.is_alive()
                && r.advertise == addr
                && p.origin.node_id != self.me.node_id
                && !owners.iter().any(|o| **o == *p.origin.node_id)
            {
                owners.push(p.origin.node_id.to_string());
            }
        }
        owners
    }

    /// Addresses worth dialling now, each once: the seeds, then the advertised addresses of
    /// the live nodes in `partitions`; except this node's own address and those known to be
    /// this node or a node already connected.
    pub(super) fn targets(&self, partitions: &[PartitionSummary]) -> Vec<String> {
        let me = &*self.me.node_id;
        let mut out: Vec<String> = Vec::new();
        let mut consider = |addr: &str, node: Option<&str>| {
            if addr.is_empty() || addr == self.advertise {
                return;
            }
            let owner = node.or_else(|| self.addr_owner.get(addr).map(String::as_str));
            if owner.is_some_and(|n| n == me || self.peers.contains_key(n)) {
                return;
            }
            if !out.iter().any(|a| a == addr) {
                out.push(addr.to_string());
            }
        };
        for seed in &self.seeds {
            consider(seed, None);
        }
        for p in partitions {
            if let Some(r) = &p.record
                && p.origin.is_alive()
            {
                consider(&r.advertise, Some(&p.origin.node_id));
            }
        }
        out
    }

    /// The other sites of live nodes in `partitions`, best first: healthy before unhealthy
    /// (a site is healthy when a live node of it says its GoRouters are), then by the lowest
    /// RTT of a connection to any of its nodes (sites without one last), then by name.
    pub(super) fn rank_sites(&self, partitions: &[PartitionSummary]) -> Vec<Arc<str>> {
        let mut rtt: HashMap<&str, Duration> = HashMap::new();
        for p in self.peers.values() {
            if let Some(r) = p.rtt() {
                let e = rtt.entry(p.site()).or_insert(r);
                *e = (*e).min(r);
            }
        }
        let mut sites: HashMap<Arc<str>, bool> = HashMap::new();
        for p in partitions {
            if p.origin.local_site || !p.origin.is_alive() {
                continue;
            }
            let healthy = p.record.as_ref().is_some_and(|r| r.healthy);
            *sites.entry(p.origin.site.clone()).or_default() |= healthy;
        }
        let mut ranked: Vec<(bool, Duration, Arc<str>)> = sites
            .into_iter()
            .map(|(site, healthy)| {
                (
                    !healthy,
                    rtt.get(&*site).copied().unwrap_or(Duration::MAX),
                    site,
                )
            })
            .collect();
        ranked.sort();
        ranked.into_iter().map(|(_, _, site)| site).collect()
    }

    /// Run the failure detector over `partitions` at `now`: verdicts, the nodes dead long
    /// enough to retire, the sync state.
    pub(super) fn assess(&mut self, partitions: &[PartitionSummary], now: Instant) -> Assessment {
        self.detector.assess_partitions(&self.me, partitions, now)
    }

    /// Every other node as the failure detector last saw it, silences measured to `now`.
    pub(super) fn nodes(&self, now: Instant) -> Vec<NodeView> {
        self.detector.nodes(now)
    }
}

/// Of two connections between `me` and `peer`, whether the one held (`old_dialed`: this
/// node dialled it) stays and the new one loses. The connection dialled by the node with the
/// smaller id wins; between two in the same direction, the newer wins (a reconnect). Both
/// ends decide alike: each sees the other's `dialed` flipped, and `me` and `peer` swapped.
fn old_wins(me: &str, peer: &str, old_dialed: bool, new_dialed: bool) -> bool {
    let dialer = |dialed: bool| if dialed { me } else { peer };
    let smaller = if me < peer { me } else { peer };
    dialer(old_dialed) != dialer(new_dialed) && dialer(old_dialed) == smaller
}

/// Partitions and a version of each: `(node_id, version)`.
pub(super) type Versions = Vec<(Arc<str>, u64)>;

/// When deleted routes may be forgotten. Every `every`, each partition's version is noted (a
/// checkpoint); once a checkpoint is `grace` old, tombstones at or below its versions were
/// deleted at least `grace` ago and are purged. Replicas still behind that horizon get a
/// reset (see `Table::export`).
#[derive(Debug)]
pub(super) struct TombstoneHorizon {
    grace: Duration,
    every: Duration,
    /// Oldest first: when, and every partition's version then.
    checkpoints: VecDeque<(Instant, Versions)>,
    last_checkpoint: Instant,
}

impl TombstoneHorizon {
    /// No checkpoint yet; the first is taken `every` after `now`.
    pub(super) fn new(grace: Duration, every: Duration, now: Instant) -> TombstoneHorizon {
        TombstoneHorizon {
            grace,
            every,
            checkpoints: VecDeque::new(),
            last_checkpoint: now,
        }
    }

    /// At `now`: take a checkpoint if one is due (only then is `versions` called, for every
    /// partition's `(node_id, max_version)`), and return the horizons to purge now,
    /// `(node_id, version)`, oldest checkpoint first.
    pub(super) fn tick(&mut self, now: Instant, versions: impl FnOnce() -> Versions) -> Versions {
        if now.saturating_duration_since(self.last_checkpoint) >= self.every {
            self.last_checkpoint = now;
            self.checkpoints.push_back((now, versions()));
        }
        let mut purge = Vec::new();
        while let Some((at, _)) = self.checkpoints.front() {
            if now.saturating_duration_since(*at) < self.grace {
                break;
            }
            if let Some((_, versions)) = self.checkpoints.pop_front() {
                purge.extend(versions);
            }
        }
        purge
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::SyncState;
    use crate::mesh::liveness::{Timeouts, Verdict};
    use crate::table::{Import, NodeRecord, Table};

    /// A connection as membership sees it; `id` tells connections to the same peer apart.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Conn {
        id: u32,
        peer: String,
        site: String,
        addr: String,
        dialed: bool,
        rtt: Option<Duration>,
    }

    impl Link for Conn {
        fn peer(&self) -> &str {
            &self.peer
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
            self.rtt
        }
        fn same(&self, other: &Self) -> bool {
            self.id == other.id
        }
    }

    fn conn(id: u32, peer: &str, dialed: bool) -> Conn {
        Conn {
            id,
            peer: peer.into(),
            site: site_of(peer).into(),
            addr: format!("{peer}:7000"),
            dialed,
            rtt: None,
        }
    }

    /// Test node ids are `<site>-<n>`.
    fn site_of(node: &str) -> &str {
        node.split('-').next().unwrap_or(node)
    }

    const TIMEOUTS: Timeouts = Timeouts {
        suspect_after: Duration::from_secs(2),
        dead_after: Duration::from_millis(2500),
        retire_after: Duration::from_secs(600),
        sync_lost_after: Duration::from_secs(10),
    };

    fn membership(me: &str, seeds: &[&str]) -> Membership<Conn> {
        Membership::new(
            Origin::new(me, site_of(me), 1, true),
            format!("{me}:7000"),
            seeds.iter().map(|s| s.to_string()).collect(),
            Detector::new(TIMEOUTS),
        )
    }

    fn admitted(a: Admission<Conn>) -> Option<Conn> {
        match a {
            Admission::Admitted { replaced } => replaced,
            Admission::Duplicate => panic!("refused as a duplicate"),
        }
    }

    /// The id of the one connection held to `peer`.
    fn held(m: &Membership<Conn>, peer: &str) -> Option<u32> {
        m.links().find(|l| l.peer == peer).map(|l| l.id)
    }

    #[test]
    fn of_two_dials_the_smaller_ids_wins_on_both_ends_in_any_order() {
        // Connection 1 is dialled by lon-1, connection 2 by nyc-1; lon-1 < nyc-1.
        let at_lon = |id: u32| conn(id, "nyc-1", id == 1);
        let at_nyc = |id: u32| conn(id, "lon-1", id == 2);
        for lon_order in [[1, 2], [2, 1]] {
            for nyc_order in [[1, 2], [2, 1]] {
                let mut lon = membership("lon-1", &[]);
                let mut nyc = membership("nyc-1", &[]);
                for id in lon_order {
                    lon.register(at_lon(id));
                }
                for id in nyc_order {
                    nyc.register(at_nyc(id));
                }
                let case = format!("lon saw {lon_order:?}, nyc saw {nyc_order:?}");
                assert_eq!(held(&lon, "nyc-1"), Some(1), "{case}");
                assert_eq!(held(&nyc, "lon-1"), Some(1), "{case}");
                assert_eq!((lon.len(), nyc.len()), (1, 1), "{case}");
            }
        }
    }

    #[test]
    fn the_loser_is_refused_or_handed_back_to_be_closed() {
        let mut lon = membership("lon-1", &[]);
        // The larger id's dial first: replaced by the smaller id's, and handed back.
        assert_eq!(admitted(lon.register(conn(1, "nyc-1", false))), None);
        let replaced = admitted(lon.register(conn(2, "nyc-1", true)));
        assert_eq!(replaced.map(|c| c.id), Some(1));
        // The larger id's dial again, now that the smaller id's holds: refused.
        assert_eq!(lon.register(conn(3, "nyc-1", false)), Admission::Duplicate);
        assert_eq!(held(&lon, "nyc-1"), Some(2));
        // The loser ending does not take the winner with it.
        assert!(!lon.unregister(&conn(3, "nyc-1", false)));
        assert!(!lon.unregister(&conn(1, "nyc-1", false)));
        assert!(lon.is_direct("nyc-1"));
        assert!(lon.unregister(&conn(2, "nyc-1", true)));
        assert!(!lon.is_direct("nyc-1"));
        assert_eq!(lon.len(), 0);
    }

    #[test]
    fn a_reconnect_in_the_same_direction_replaces_the_old_connection() {
        for dialed in [true, false] {
            let mut lon = membership("lon-1", &[]);
            let mut nyc = membership("nyc-1", &[]);
            lon.register(conn(1, "nyc-1", dialed));
            nyc.register(conn(1, "lon-1", !dialed));
            // The old connection is not yet seen to be gone when its successor arrives.
            let replaced = admitted(lon.register(conn(2, "nyc-1", dialed)));
            assert_eq!(replaced.map(|c| c.id), Some(1), "lon dialled: {dialed}");
            let replaced = admitted(nyc.register(conn(2, "lon-1", !dialed)));
            assert_eq!(replaced.map(|c| c.id), Some(1), "lon dialled: {dialed}");
            // When the old one's session then ends, the new one stays.
            assert!(!lon.unregister(&conn(1, "nyc-1", dialed)));
            assert_eq!(held(&lon, "nyc-1"), Some(2));
        }
    }

    #[test]
    fn dialled_addresses_are_owned_even_by_a_loser() {
        let mut lon = membership("lon-1", &["seed:1"]);
        lon.register(conn(1, "nyc-1", true));
        let mut late = conn(2, "nyc-1", false);
        late.addr = "10.0.0.9:5555".into();
        assert_eq!(lon.register(late), Admission::Duplicate);
        // A dialled seed that turned out to be a connected node is not dialled again; an
        // accepted connection's address (the peer's ephemeral port) is not remembered.
        let mut seeded = conn(3, "sgp-1", true);
        seeded.addr = "seed:1".into();
        lon.register(seeded);
        assert_eq!(lon.targets(&[]), Vec::<String>::new());
        lon.unregister(&conn(3, "sgp-1", true));
        assert_eq!(lon.targets(&[]), ["seed:1"]);
        assert!(!lon.addr_owner.contains_key("10.0.0.9:5555"));
    }

    /// A partition of `node` (at `advertise`) as the table holds it, alive or dead.
    fn part(node: &str, advertise: &str, healthy: bool, alive: bool) -> PartitionSummary {
        let origin = Origin::new(node, site_of(node), 1, false);
        origin.set_alive(alive);
        PartitionSummary {
            origin,
            max_version: 1,
            routes: 0,
            record: Some(NodeRecord {
                version: 1,
                advertise: advertise.into(),
                healthy,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn targets_are_seeds_and_discovered_nodes_but_not_self_or_connected() {
        let mut lon = membership(
            "lon-1",
            &["seed-a:1", "lon-1:7000", "", "seed-b:1", "seed-a:1"],
        );
        let me = PartitionSummary {
            origin: lon.me.clone(),
            ..part("lon-1", "lon-1:7000", true, true)
        };
        let parts = [
            me,
            part("nyc-1", "nyc-1:7000", true, true),
            part("nyc-2", "nyc-2:7000", true, false),
            part("sgp-1", "", true, true),
            part("sgp-2", "seed-b:1", true, true),
        ];
        // This node's own address, empty ones, dead nodes and repeats are never targets.
        assert_eq!(
            lon.targets(&parts),
            ["seed-a:1", "seed-b:1", "nyc-1:7000"],
            "seed-b:1 is sgp-2's advertised address, listed once"
        );

        // Connected nodes are not dialled, by their advertised address or a seed that
        // turned out to be them.
        lon.register(conn(1, "nyc-1", false));
        let mut via_seed = conn(2, "sgp-2", true);
        via_seed.addr = "seed-b:1".into();
        lon.register(via_seed);
        assert_eq!(lon.targets(&parts), ["seed-a:1"]);

        // A seed that turned out to be this node is not dialled again.
        lon.owner_is("seed-a:1", "lon-1");
        assert_eq!(lon.targets(&parts), Vec::<String>::new());

        // A seed owned by a node that is gone again is dialled again.
        lon.unregister(&conn(2, "sgp-2", true));
        assert_eq!(lon.targets(&parts), ["seed-b:1"]);
        // So is a node whose connection ended.
        lon.unregister(&conn(1, "nyc-1", false));
        assert_eq!(lon.targets(&parts), ["seed-b:1", "nyc-1:7000"]);
    }

    #[test]
    fn a_dialled_address_must_be_the_live_node_that_advertises_it() {
        let lon = membership("lon-1", &["seed:1"]);
        let parts = [
            PartitionSummary {
                origin: lon.me.clone(),
                ..part("lon-1", "lon-1:7000", true, true)
            },
            part("nyc-1", "nyc-1:7000", true, true),
            part("nyc-2", "shared:7000", true, true),
            part("sgp-1", "shared:7000", true, true),
            part("sgp-2", "old:7000", true, false),
        ];
        assert_eq!(lon.expected_owners("nyc-1:7000", &parts), ["nyc-1"]);
        // Two live claims: either may answer (owner-signed records settle who lies).
        assert_eq!(
            lon.expected_owners("shared:7000", &parts),
            ["nyc-2", "sgp-1"]
        );
        // A dead node's address, a seed nobody advertises, and this node's own: anyone.
        assert!(lon.expected_owners("old:7000", &parts).is_empty());
        assert!(lon.expected_owners("seed:1", &parts).is_empty());
        assert!(lon.expected_owners("lon-1:7000", &parts).is_empty());
    }

    #[test]
    fn a_discovered_node_is_judged_by_its_own_id_not_the_address_owner() {
        // An address learnt as sgp-1's is now advertised by nyc-1 (sgp-1 moved away): the
        // record says who is there, so it is dialled while nyc-1 is not connected.
        let mut lon = membership("lon-1", &[]);
        let mut c = conn(1, "sgp-1", true);
        c.addr = "10.0.0.1:7000".into();
        lon.register(c);
        let parts = [part("nyc-1", "10.0.0.1:7000", true, true)];
        assert_eq!(lon.targets(&parts), ["10.0.0.1:7000"]);
    }

    fn with_rtt(id: u32, peer: &str, ms: u64) -> Conn {
        Conn {
            rtt: Some(Duration::from_millis(ms)),
            ..conn(id, peer, true)
        }
    }

    fn names(sites: Vec<Arc<str>>) -> Vec<String> {
        sites.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sites_rank_healthy_first_then_by_the_nearest_node() {
        let mut lon = membership("lon-1", &[]);
        lon.register(with_rtt(1, "nyc-1", 80));
        lon.register(with_rtt(2, "nyc-2", 70));
        lon.register(with_rtt(3, "sgp-1", 200));
        lon.register(with_rtt(4, "fra-1", 10));
        lon.register(conn(5, "syd-1", true)); // no ping answered yet
        let local = PartitionSummary {
            origin: Origin::new("lon-2", "lon", 1, true),
            ..part("lon-2", "", true, true)
        };
        let parts = [
            local,
            part("nyc-1", "", false, true),
            part("nyc-2", "", true, true),
            part("sgp-1", "", true, true),
            part("syd-1", "", true, true),
            part("fra-1", "", false, true),
            part("ams-1", "", true, true), // known through a relay only
            part("ber-1", "", true, true),
            part("par-1", "", true, false), // dead: not ranked
        ];
        // Healthy: nyc (70 ms via nyc-2, though nyc-1 says unhealthy), sgp (200 ms), then
        // ams, ber and syd without an RTT, by name. Unhealthy last, however near: fra.
        assert_eq!(
            names(lon.rank_sites(&parts)),
            ["nyc", "sgp", "ams", "ber", "syd", "fra"]
        );
        // The local site is never ranked, even when only its nodes are known.
        assert!(lon.rank_sites(&parts[..1]).is_empty());
    }

    #[test]
    fn a_site_is_unhealthy_when_its_only_healthy_node_is_dead() {
        let lon = membership("lon-1", &[]);
        let parts = [
            part("nyc-1", "", false, true),
            part("nyc-2", "", true, false),
            part("sgp-1", "", true, true),
        ];
        assert_eq!(names(lon.rank_sites(&parts)), ["sgp", "nyc"]);
    }

    fn beat(t: &Table, node: &str, heartbeat: u64) {
        let version = heartbeat + 1;
        t.import_trusted(Import {
            node_id: node.into(),
            site: site_of(node).into(),
            generation: 1,
            from_version: 0,
            up_to_version: version,
            reset: false,
            record: Some(NodeRecord {
                version,
                heartbeat,
                advertise: format!("{node}:7000"),
                ..Default::default()
            }),
            config: vec![],
            entries: vec![],
            seal: crate::table::testing::no_seal(),
            owner_cert: std::sync::Arc::from(&b""[..]),
        });
    }

    #[test]
    fn a_silent_node_dies_and_is_retired_only_after_the_grace() {
        let t = Table::new("lon-1", "lon", 1);
        let mut m: Membership<Conn> = Membership::new(
            t.me().clone(),
            "lon-1:7000".into(),
            Vec::new(),
            Detector::new(TIMEOUTS),
        );
        let t0 = Instant::now();
        beat(&t, "nyc-1", 1);
        let a = m.assess(&t.partitions(), t0);
        assert_eq!(a.sync, SyncState::InSync);
        assert!(a.to_retire.is_empty());
        assert_eq!(m.targets(&t.partitions()), ["nyc-1:7000"]);
        // Silent from t0: dead after dead_after, retired dead_after + retire_after after.
        let dead = t0 + TIMEOUTS.dead_after;
        let a = m.assess(&t.partitions(), dead);
        assert_eq!(a.transitions, [(Arc::from("nyc-1"), Verdict::Dead)]);
        assert!(a.to_retire.is_empty());
        let retire = dead + TIMEOUTS.retire_after;
        let a = m.assess(&t.partitions(), retire - Duration::from_millis(1));
        assert!(a.to_retire.is_empty(), "a tick before the horizon");
        let a = m.assess(&t.partitions(), retire);
        assert_eq!(a.to_retire, [Arc::from("nyc-1")]);
        assert_eq!(m.nodes(retire)[0].silent_for, retire - t0);
        // Dead, it is dialled no more.
        assert!(m.targets(&t.partitions()).is_empty());
    }

    fn versions(v: &[(&str, u64)]) -> Versions {
        v.iter().map(|(n, v)| (Arc::from(*n), *v)).collect()
    }

    #[test]
    fn tombstones_are_purged_a_grace_after_the_checkpoint_that_saw_them() {
        let (grace, every) = (Duration::from_secs(600), Duration::from_secs(60));
        let t0 = Instant::now();
        let mut h = TombstoneHorizon::new(grace, every, t0);
        // Tick every second for 800 s; each partition's version is the second it is read.
        let (mut read_at, mut purged) = (Vec::new(), Vec::new());
        for s in 0..=800u64 {
            let now = t0 + Duration::from_secs(s);
            let due = h.tick(now, || {
                read_at.push(s);
                versions(&[("lon-1", s), ("nyc-1", s + 1)])
            });
            if !due.is_empty() {
                purged.push((s, due));
            }
        }
        // A checkpoint a minute, the first a minute after the start.
        assert_eq!(read_at, (1..=13).map(|m| m * 60).collect::<Vec<_>>());
        // Each purged a grace after it was taken, and once.
        assert_eq!(
            purged,
            [
                (660, versions(&[("lon-1", 60), ("nyc-1", 61)])),
                (720, versions(&[("lon-1", 120), ("nyc-1", 121)])),
                (780, versions(&[("lon-1", 180), ("nyc-1", 181)])),
            ]
        );
    }

    #[test]
    fn checkpoints_overdue_together_are_purged_together_oldest_first() {
        let (grace, every) = (Duration::from_secs(600), Duration::from_secs(60));
        let t0 = Instant::now();
        let mut h = TombstoneHorizon::new(grace, every, t0);
        h.tick(t0 + every, || versions(&[("nyc-1", 3)]));
        h.tick(t0 + every * 2, || versions(&[("nyc-1", 4)]));
        // A long stall: both are overdue at the next tick, which also takes a checkpoint.
        let late = t0 + every * 2 + grace * 2;
        assert_eq!(
            h.tick(late, || versions(&[("nyc-1", 8)])),
            versions(&[("nyc-1", 3), ("nyc-1", 4)])
        );
        assert_eq!(h.tick(late + grace, Vec::new), versions(&[("nyc-1", 8)]));
    }
}
