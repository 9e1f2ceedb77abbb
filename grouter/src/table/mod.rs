//! The route table: the merged view of every partition, and gorouter-compatible lookup.
//!
//! Owns:
//! - the **partitions**: one per node incarnation (`node_id`, `generation`), each a versioned
//!   map `route key → entry` with tombstones and a change log, written only by its owner (this
//!   node's partition by `learn`; other nodes' partitions only through replication);
//! - the **lookup index** over all partitions: host → paths → who serves each path;
//! - **local-wins selection**: a route served by a live node of this node's site is local;
//!   otherwise the sites of the live nodes that serve it are its remote candidates.
//!
//! Must never: do I/O, block on anything but its own short critical sections, or let one
//! partition's writes change another partition's entries.
//!
//! Lookup follows gorouter: exact host with the longest path prefix (on `/` boundaries) that
//! has a live server, then wildcards replacing the left-most label step by step (`*.b.c`,
//! then `*.c`). Hosts and paths compare case-insensitively; ports and trailing slashes are
//! dropped.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dashmap::DashMap;
use parking_lot::RwLock;
use smallvec::SmallVec;
use state::{EntryDigest, StateHash};

/// The hasher of the table's large maps (route keys, host index). foldhash is several times
/// faster than SipHash on short keys, and seeded at random per map: keys come from NATS and
/// from peers, whose entries are bounded (`Limits`), and requests only look keys up.
type Fast = foldhash::fast::RandomState;

pub use app::{App, AppFields, AppInterner};
pub use config::{ConfigValue, Hlc, ReplicatedConfig};
pub use grouter_protocol::nats::RouteKey;
pub use state::Statement;

pub mod app;
pub mod config;
pub mod state;

/// Bounds on what other nodes can make this table hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most partitions (this node's included).
    pub max_nodes: usize,
    /// Most entries (live and tombstones) in one replicated partition.
    pub max_entries_per_partition: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_nodes: 1_000,
            max_entries_per_partition: 1_000_000,
        }
    }
}

/// An owner's signature over the [`Statement`] of its partition at `version` (opaque to the
/// table: the mesh makes and checks it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    /// The partition version the signature covers.
    pub version: u64,
    /// Signature scheme (TLS `SignatureScheme` code).
    pub scheme: u32,
    /// The signature bytes.
    pub signature: Arc<[u8]>,
}

/// Who writes a partition: one incarnation of one node.
#[derive(Debug)]
pub struct Origin {
    /// The node's id, unique in the mesh.
    pub node_id: Arc<str>,
    /// The node's site.
    pub site: Arc<str>,
    /// Incarnation of the node: a restart starts a new generation.
    pub generation: u64,
    /// Whether `site` is this node's own site (fixed when the origin is created).
    pub local_site: bool,
    alive: AtomicBool,
}

impl Origin {
    /// A new origin, alive.
    pub fn new(node_id: &str, site: &str, generation: u64, local_site: bool) -> Arc<Origin> {
        Arc::new(Origin {
            node_id: node_id.into(),
            site: site.into(),
            generation,
            local_site,
            alive: AtomicBool::new(true),
        })
    }

    /// Whether this partition currently counts toward its site.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Mark the partition alive or dead (the failure detector's verdict).
    pub fn set_alive(&self, alive: bool) {
        self.alive.store(alive, Ordering::Release);
    }
}

/// What a partition says about one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    /// The app serving the route (the one with the smallest GUID when several share it):
    /// GUID, name, org, space and isolation segment in one allocation shared by the app's
    /// routes.
    pub app: Arc<App>,
    /// Live endpoints behind the route at the owner's site.
    pub endpoints: u32,
    /// Distinct app instances among those endpoints.
    pub instances: u32,
    /// Unix milliseconds of the last change of this entry.
    pub updated_at_ms: u64,
}

/// A node's description of itself, versioned in its own partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRecord {
    /// Partition version of the last change.
    pub version: u64,
    /// The node's region.
    pub region: String,
    /// Where other nodes reach its mesh listener.
    pub advertise: String,
    /// Increases every heartbeat interval.
    pub heartbeat: u64,
    /// The node's site GoRouters pass health checks.
    pub healthy: bool,
    /// The site's public entry addresses.
    pub site_addresses: Vec<String>,
    /// Where the node accepts requests forwarded from other sites.
    pub proxy_address: String,
}

/// One entry of a partition on its way to or from a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicatedEntry {
    /// The route.
    pub key: Arc<RouteKey>,
    /// Its version in the owner's partition.
    pub version: u64,
    /// `None` for a tombstone.
    pub value: Option<Arc<RouteEntry>>,
}

/// What a replica lacks of one partition.
#[derive(Debug, Clone)]
pub struct Export {
    /// The partition's owner.
    pub origin: Arc<Origin>,
    /// The watermark these entries start from.
    pub from_version: u64,
    /// The replica holds everything up to here once it applied this.
    pub up_to_version: u64,
    /// The replica must drop what it holds of this partition first.
    pub reset: bool,
    /// The owner's record, when newer than the replica's watermark.
    pub record: Option<NodeRecord>,
    /// Entries in version order.
    pub entries: Vec<ReplicatedEntry>,
    /// Config keys in version order (versions interleave with `entries`').
    pub config: Vec<ReplicatedConfig>,
    /// The owner's seal over the partition at `up_to_version`; `None` when the export is cut
    /// short by the budget (more follows) or, for this node's own partition, when no seal
    /// was made at this version yet (then `statement` is what to sign).
    pub seal: Option<Seal>,
    /// This node's own partition only: what to sign for `up_to_version` when `seal` is
    /// `None` and the export is complete (see [`Table::set_own_seal`]).
    pub statement: Option<Statement>,
    /// The owner's certificate, as held (replicated partitions only).
    pub owner_cert: Option<Arc<[u8]>>,
    /// The export reaches the partition's current version (not cut short by the budget).
    pub complete: bool,
}

/// What a replica received for one partition.
#[derive(Debug, Clone)]
pub struct Import {
    /// Owner node id.
    pub node_id: String,
    /// Owner site.
    pub site: String,
    /// Owner incarnation.
    pub generation: u64,
    /// The watermark these entries start from (see [`Export::from_version`]).
    pub from_version: u64,
    /// Sender's watermark after these entries.
    pub up_to_version: u64,
    /// Drop what is held of this partition first.
    pub reset: bool,
    /// The owner's record, if sent.
    pub record: Option<NodeRecord>,
    /// Entries, each key at most once (any order; older versions than held are ignored).
    pub entries: Vec<ReplicatedEntry>,
    /// Config keys, each at most once (as `entries`).
    pub config: Vec<ReplicatedConfig>,
    /// The owner's seal over the partition at `up_to_version`.
    pub seal: Seal,
    /// The owner's certificate the seal is checked with (already checked against the CA).
    pub owner_cert: Arc<[u8]>,
}

/// What happened to an [`Import`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportOutcome {
    /// Applied; `changed` entries were newer than what was held.
    Applied {
        /// Entries that changed the partition.
        changed: usize,
        /// The import started a newer generation, replacing the previous one.
        superseded: bool,
        /// Live entries held but not routed: under none of the owner site's domains.
        not_allowed: usize,
    },
    /// The partition is this node's own: never written from outside.
    OwnPartition,
    /// An older generation than the one held (or than one retired): ignored.
    Stale,
    /// The entries start above what is held: applying them would skip changes. Ignored; the
    /// next digest exchange repairs it.
    Gap,
    /// The state the import would produce is not what the owner signed: nothing applied.
    BadSignature,
    /// Applying it would exceed a [`Limits`] bound: nothing applied.
    OverLimit,
    /// An entry's version is above the version the import claims to reach, or zero.
    Malformed,
}

#[derive(Debug, Clone)]
struct Versioned {
    version: u64,
    /// `None` is a tombstone.
    value: Option<Arc<RouteEntry>>,
}

/// One node's partition: a versioned map with a change log ordered by version, so that a
/// replica can be sent exactly the entries newer than a watermark.
#[derive(Debug)]
pub struct Partition {
    origin: Arc<Origin>,
    max_version: u64,
    entries: HashMap<Arc<RouteKey>, Versioned, Fast>,
    /// version → key; each key appears once, at its latest version.
    log: BTreeMap<u64, Arc<RouteKey>>,
    live: usize,
    /// Config keys (never tombstoned here: a deletion is a value with its clock).
    config: HashMap<Arc<str>, (u64, Arc<ConfigValue>), Fast>,
    /// version → config key, as `log` (the two share the partition's versions).
    config_log: BTreeMap<u64, Arc<str>>,
    /// The owner's description of itself.
    record: Option<NodeRecord>,
    /// Tombstones at or below this version were purged: a replica behind it needs a reset.
    gc_floor: u64,
    /// Set hash of the live entries with a version up to `folded`.
    root: StateHash,
    /// Replicas: always `max_version`. This node's partition: entries written since are
    /// added to `root` (and `unfolded` taken out) when a statement is needed.
    folded: u64,
    /// This node's partition: digests of entries in `root` that were overwritten since the
    /// last fold.
    unfolded: Vec<EntryDigest>,
    /// This node's partition: `unfolded` overflowed (nobody sealed for a long time), so the
    /// next fold recomputes `root` from every live entry.
    root_stale: bool,
    /// The owner's seal (replicas: at `max_version`; this node: the last one made).
    seal: Option<Seal>,
    /// The owner's certificate (replicas).
    owner_cert: Option<Arc<[u8]>>,
}

/// Unfolded digests kept before the owner gives up on them and recomputes its hash at the
/// next fold (the mesh folds each time it seals, so this is reached only when nobody asks
/// for seals for a long time).
const UNFOLDED_MAX: usize = 65_536;

/// How often an export of this node's partition hashes outside the lock and finds that
/// writes moved the partition on meanwhile, before it folds under the lock.
const FOLD_RETRIES: usize = 3;

impl Partition {
    fn new(origin: Arc<Origin>) -> Self {
        Partition {
            origin,
            max_version: 0,
            entries: HashMap::default(),
            log: BTreeMap::new(),
            live: 0,
            config: HashMap::default(),
            config_log: BTreeMap::new(),
            record: None,
            gc_floor: 0,
            root: StateHash::default(),
            folded: 0,
            unfolded: Vec::new(),
            root_stale: false,
            seal: None,
            owner_cert: None,
        }
    }

    /// What a fold must hash, taken from the partition (which is then folded as far as
    /// `max_version`, except for the sum itself: see [`Table::fold_own`]).
    fn take_fold(&mut self) -> Fold {
        let recompute = std::mem::take(&mut self.root_stale);
        let from = if recompute { 0 } else { self.folded };
        let added = self
            .log
            .range(from + 1..)
            .filter_map(|(v, key)| {
                let value = self.entries.get(key)?.value.clone()?;
                Some((key.clone(), *v, value))
            })
            .collect();
        let added_config = self
            .config_log
            .range(from + 1..)
            .filter_map(|(v, key)| Some((key.clone(), *v, self.config.get(key)?.1.clone())))
            .collect();
        let removed = std::mem::take(&mut self.unfolded);
        self.folded = self.max_version;
        Fold {
            added_config,
            base: if recompute {
                StateHash::default()
            } else {
                self.root.clone()
            },
            removed: if recompute { Vec::new() } else { removed },
            added,
        }
    }

    /// Bring `root` up to `max_version` in place (this node's partition, under the lock).
    fn fold(&mut self) {
        let fold = self.take_fold();
        self.root = fold.sum();
    }

    /// The statement of this partition as it stands (`fold` first for this node's own).
    fn statement(&self) -> Statement {
        Statement {
            node_id: self.origin.node_id.to_string(),
            site: self.origin.site.to_string(),
            generation: self.origin.generation,
            version: self.max_version,
            live: (self.live + self.config.len()) as u64,
            record: state::record_digest(self.record.as_ref()),
            root: self.root.digest(),
        }
    }

    /// The owner's node record, if one arrived.
    pub fn record(&self) -> Option<&NodeRecord> {
        self.record.as_ref()
    }

    /// Versions at or below this lost their tombstones.
    pub fn gc_floor(&self) -> u64 {
        self.gc_floor
    }

    /// The writer of this partition.
    pub fn origin(&self) -> &Arc<Origin> {
        &self.origin
    }

    /// Highest version written.
    pub fn max_version(&self) -> u64 {
        self.max_version
    }

    /// Live (non-tombstone) entries.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether the partition has no live entry.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Entries (live and tombstones) with a version above `after`, oldest first.
    pub fn changes_since(
        &self,
        after: u64,
    ) -> impl Iterator<Item = (u64, &RouteKey, Option<&RouteEntry>)> + '_ {
        self.log.range(after + 1..).filter_map(|(v, key)| {
            let e = self.entries.get(key)?;
            Some((*v, key.as_ref(), e.value.as_deref()))
        })
    }

    /// Record `value` for `key` at `version`. Returns false (and changes nothing) when the
    /// partition already holds that key at the same or a newer version.
    fn put(&mut self, key: &Arc<RouteKey>, value: Option<Arc<RouteEntry>>, version: u64) -> bool {
        match self.entries.get_mut(key.as_ref()) {
            Some(cur) if cur.version >= version => return false,
            Some(cur) => {
                self.log.remove(&cur.version);
                self.live =
                    self.live + usize::from(value.is_some()) - usize::from(cur.value.is_some());
                cur.version = version;
                cur.value = value;
                if let Some((k, _)) = self.entries.get_key_value(key.as_ref()) {
                    self.log.insert(version, k.clone());
                }
            }
            None => {
                let k = key.clone();
                self.live += usize::from(value.is_some());
                self.entries.insert(k.clone(), Versioned { version, value });
                self.log.insert(version, k);
            }
        }
        self.max_version = self.max_version.max(version);
        true
    }

    fn get(&self, key: &RouteKey) -> Option<&Versioned> {
        self.entries.get(key)
    }

    /// Record `value` for config `key` at `version` (false, and nothing changed, when the
    /// key is held at the same or a newer version).
    fn put_config(&mut self, key: &Arc<str>, value: Arc<ConfigValue>, version: u64) -> bool {
        match self.config.get_mut(&**key) {
            Some((v, _)) if *v >= version => return false,
            Some(cur) => {
                self.config_log.remove(&cur.0);
                *cur = (version, value);
            }
            None => {
                self.config.insert(key.clone(), (version, value));
            }
        }
        if let Some((k, _)) = self.config.get_key_value(&**key) {
            self.config_log.insert(version, k.clone());
        }
        self.max_version = self.max_version.max(version);
        true
    }

    /// The config value this partition holds for `key`.
    pub fn config(&self, key: &str) -> Option<&Arc<ConfigValue>> {
        self.config.get(key).map(|(_, v)| v)
    }

    /// Every config key of the partition with its value (unordered).
    pub fn config_entries(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<ConfigValue>)> {
        self.config.iter().map(|(k, (_, v))| (k, v))
    }
}

/// The hashing of one fold of this node's partition, done without the partitions lock.
struct Fold {
    base: StateHash,
    removed: Vec<EntryDigest>,
    added: Vec<(Arc<RouteKey>, u64, Arc<RouteEntry>)>,
    added_config: Vec<(Arc<str>, u64, Arc<ConfigValue>)>,
}

impl Fold {
    fn sum(self) -> StateHash {
        let digests: Vec<EntryDigest> = self
            .added
            .iter()
            .map(|(k, v, e)| state::entry_digest(k, *v, e))
            .chain(
                self.added_config
                    .iter()
                    .map(|(k, v, c)| state::config_digest(k, *v, c)),
            )
            .collect();
        let mut root = StateHash::of(&digests);
        root.add_hash(&self.base);
        for d in &self.removed {
            root.remove(d);
        }
        root
    }
}

/// One server of a path: a partition and what it says.
#[derive(Debug, Clone)]
struct Served {
    origin: Arc<Origin>,
    entry: Arc<RouteEntry>,
}

#[derive(Debug, Default)]
struct PathRoutes {
    path: Box<str>,
    servers: SmallVec<[Served; 1]>,
}

impl PathRoutes {
    fn has_live_server(&self) -> bool {
        self.servers
            .iter()
            .any(|s| s.entry.endpoints > 0 && s.origin.is_alive())
    }
}

/// All paths of one host, longest path first.
#[derive(Debug, Default)]
struct HostRoutes {
    paths: SmallVec<[PathRoutes; 1]>,
}

/// The result of a lookup: the route that matched and who can serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    /// Route host as registered (may be a wildcard).
    pub host: Arc<str>,
    /// Route path as registered (`""` for the whole host).
    pub path: Box<str>,
    /// The app serving it, preferring a local server's view (whose isolation segment says
    /// which of this site's GoRouters serve it).
    pub app: Arc<App>,
    /// A live node of this node's own site serves the route.
    pub local: bool,
    /// Sites of live servers other than this node's site, each once, best first (see
    /// [`Table::set_site_order`]).
    pub remote_sites: SmallVec<[Arc<str>; 2]>,
}

/// A route with every partition that serves it, for the admin API.
#[derive(Debug, Clone)]
pub struct RouteView {
    /// Route host.
    pub host: Arc<str>,
    /// Route path.
    pub path: Box<str>,
    /// `(server's origin, its entry)`, dead servers included (their origin says so).
    pub servers: Vec<(Arc<Origin>, Arc<RouteEntry>)>,
}

/// One partition at a glance.
#[derive(Debug, Clone)]
pub struct PartitionSummary {
    /// Owner and incarnation.
    pub origin: Arc<Origin>,
    /// Highest version held.
    pub max_version: u64,
    /// Live routes.
    pub routes: usize,
    /// The owner's record, if any arrived.
    pub record: Option<NodeRecord>,
}

/// Counts for metrics and status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Distinct host+path keys served by any partition.
    pub routes: usize,
    /// Live entries in this node's own partition.
    pub local_routes: usize,
    /// Endpoints behind this node's own routes.
    pub local_endpoints: u64,
    /// Partitions known (including this node's).
    pub partitions: usize,
}

/// The merged route table. Cheap to share (`Arc<Table>`); every method takes `&self`.
#[derive(Debug)]
pub struct Table {
    me: Arc<Origin>,
    index: DashMap<Arc<str>, HostRoutes, Fast>,
    /// For every name above a host of the index, how many hosts lie below it.
    below: DashMap<Arc<str>, u32, Fast>,
    /// Partitions by node id (one incarnation each: a newer generation replaces an older).
    partitions: RwLock<HashMap<Arc<str>, Partition>>,
    /// Incarnations removed after they died: never accepted again (a relay that still holds
    /// one must not resurrect it).
    retired: RwLock<HashMap<Arc<str>, u64>>,
    /// Other sites, best first (healthy, then nearest): remote candidates are ordered by it.
    site_order: RwLock<Arc<[Arc<str>]>>,
    /// Bumped on every change of any partition; the mesh waits on it to push deltas.
    changes: tokio::sync::watch::Sender<u64>,
    routes: AtomicU64,
    local_endpoints: AtomicU64,
    limits: RwLock<Limits>,
    /// Held while this node's partition is folded (one fold at a time: between taking what
    /// to hash and storing the sum, the partition's `root` lags its `folded`).
    own_fold: parking_lot::Mutex<()>,
    /// Site → the domains its nodes may announce (sites not listed may announce anything).
    site_domains: RwLock<HashMap<Arc<str>, Vec<String>>>,
    /// Config keys whose merged value may have changed since the control plane last looked.
    config_dirty: parking_lot::Mutex<std::collections::HashSet<Arc<str>>>,
    /// Bumped whenever `config_dirty` gains a key.
    config_changes: tokio::sync::watch::Sender<u64>,
}

impl Table {
    /// An empty table whose own partition is `(node_id, generation)` at `site`.
    pub fn new(node_id: &str, site: &str, generation: u64) -> Table {
        let me = Origin::new(node_id, site, generation, true);
        let mut partitions = HashMap::new();
        partitions.insert(me.node_id.clone(), Partition::new(me.clone()));
        Table {
            me,
            index: DashMap::with_hasher(Fast::default()),
            below: DashMap::with_hasher(Fast::default()),
            partitions: RwLock::new(partitions),
            retired: RwLock::new(HashMap::new()),
            site_order: RwLock::new(Arc::from(Vec::new())),
            changes: tokio::sync::watch::Sender::new(0),
            config_dirty: parking_lot::Mutex::new(std::collections::HashSet::new()),
            config_changes: tokio::sync::watch::Sender::new(0),
            routes: AtomicU64::new(0),
            local_endpoints: AtomicU64::new(0),
            limits: RwLock::new(Limits::default()),
            own_fold: parking_lot::Mutex::new(()),
            site_domains: RwLock::new(HashMap::new()),
        }
    }

    /// Bound what replication can make this table hold (applies to later imports).
    pub fn set_limits(&self, limits: Limits) {
        *self.limits.write() = limits;
    }

    /// The bounds in force.
    pub fn limits(&self) -> Limits {
        *self.limits.read()
    }

    /// Which names each site's nodes may announce: a domain `d` allows `d` and every name
    /// under it, `*.d` every name under `d`. Routes of other sites' partitions outside their
    /// site's domains are held (they are part of what the owner signed) but never routed.
    /// Applies to later imports.
    pub fn set_site_domains(&self, domains: HashMap<String, Vec<String>>) {
        *self.site_domains.write() = domains
            .into_iter()
            .map(|(site, list)| (Arc::from(site.as_str()), list))
            .collect();
    }

    /// Whether a node of `site` may announce `host`.
    pub fn site_may_announce(&self, site: &str, host: &str) -> bool {
        let domains = self.site_domains.read();
        let Some(list) = domains.get(site) else {
            return true;
        };
        list.iter().any(|d| domain_allows(d, host))
    }

    /// This node's own origin.
    pub fn me(&self) -> &Arc<Origin> {
        &self.me
    }

    /// Rank the other sites, best first (the mesh does this from health and RTT). Remote
    /// candidates of a lookup come in this order; sites not ranked come last.
    pub fn set_site_order(&self, sites: Vec<Arc<str>>) {
        if *self.site_order.read().as_ref() != *sites.as_slice() {
            *self.site_order.write() = Arc::from(sites);
        }
    }

    /// Set (or replace) this node's entry for `key`. Returns the new version, or `None` when
    /// the entry is unchanged (so nothing needs to be replicated). The table keeps the key's
    /// `Arc`, so a caller that holds the same key shares its allocation.
    pub fn upsert_local(&self, key: &Arc<RouteKey>, entry: RouteEntry) -> Option<u64> {
        self.write_local(key, Some(entry))
    }

    /// Remove this node's entry for `key`, leaving a tombstone. Returns the tombstone's
    /// version, or `None` when the node did not serve the route.
    pub fn remove_local(&self, key: &RouteKey) -> Option<u64> {
        let key =
            self.with_local_partition(|p| p.entries.get_key_value(key).map(|(k, _)| k.clone()))??;
        self.write_local(&key, None)
    }

    fn write_local(&self, key: &Arc<RouteKey>, entry: Option<RouteEntry>) -> Option<u64> {
        let mut parts = self.partitions.write();
        let part = parts.get_mut(&self.me.node_id)?;
        let version = self.write_local_in(part, key, entry);
        drop(parts);
        if version.is_some() {
            self.changed();
        }
        version
    }

    /// Apply many writes to this node's partition under one lock and with one change
    /// notification: what a learner draining a burst does. `None` removes the key (a
    /// tombstone when it was served). Writes equal to the current entry change nothing.
    /// Returns how many changed the table.
    pub fn write_local_batch(
        &self,
        writes: impl IntoIterator<Item = (Arc<RouteKey>, Option<RouteEntry>)>,
    ) -> usize {
        let mut parts = self.partitions.write();
        let Some(part) = parts.get_mut(&self.me.node_id) else {
            return 0;
        };
        let changed = writes
            .into_iter()
            .filter(|(key, entry)| self.write_local_in(part, key, entry.clone()).is_some())
            .count();
        drop(parts);
        if changed > 0 {
            self.changed();
        }
        changed
    }

    /// One write to this node's partition, under the caller's lock; the caller notifies.
    fn write_local_in(
        &self,
        part: &mut Partition,
        key: &Arc<RouteKey>,
        entry: Option<RouteEntry>,
    ) -> Option<u64> {
        let old = part.get(key).and_then(|v| v.value.clone());
        if old.as_deref() == entry.as_ref() {
            return None;
        }
        let version = part.max_version + 1;
        // An entry already in the hash leaves it at the next fold.
        let folded_out = part
            .get(key)
            .filter(|cur| cur.version <= part.folded)
            .and_then(|cur| Some(state::entry_digest(key, cur.version, cur.value.as_ref()?)));
        part.unfolded.extend(folded_out);
        let entry = entry.map(Arc::new);
        part.put(key, entry.clone(), version);
        if part.unfolded.len() >= UNFOLDED_MAX {
            part.unfolded = Vec::new();
            part.root_stale = true;
        }
        // The index is updated under the partitions lock so that writers of one key are
        // serialised; readers of the index never take this lock.
        let old_eps = old.as_ref().map_or(0, |e| u64::from(e.endpoints));
        let new_eps = entry.as_ref().map_or(0, |e| u64::from(e.endpoints));
        self.local_endpoints.fetch_add(new_eps, Ordering::Relaxed);
        self.local_endpoints.fetch_sub(old_eps, Ordering::Relaxed);
        self.index_set(key, &self.me, entry);
        Some(version)
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that wakes on every change of any partition (for pushing deltas).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Write config `key` in this node's partition. Returns the new version, or `None` when
    /// the partition already holds a write of the key at the same or a later clock (the
    /// control plane's clock only moves forward, so that is a repeat).
    pub fn write_config_local(&self, key: &str, value: ConfigValue) -> Option<u64> {
        let key: Arc<str> = Arc::from(key);
        let mut parts = self.partitions.write();
        let part = parts.get_mut(&self.me.node_id)?;
        let version = Self::write_config_in(part, &key, value)?;
        drop(parts);
        self.config_touched([key]);
        self.changed();
        Some(version)
    }

    /// One config write to this node's partition, under the caller's lock.
    fn write_config_in(part: &mut Partition, key: &Arc<str>, value: ConfigValue) -> Option<u64> {
        if part.config(key).is_some_and(|cur| cur.hlc >= value.hlc) {
            return None;
        }
        let folded_out = part
            .config
            .get(key)
            .filter(|(v, _)| *v <= part.folded)
            .map(|(v, cur)| state::config_digest(key, *v, cur));
        part.unfolded.extend(folded_out);
        if part.unfolded.len() >= UNFOLDED_MAX {
            part.unfolded = Vec::new();
            part.root_stale = true;
        }
        let version = part.max_version + 1;
        part.put_config(key, Arc::new(value), version);
        Some(version)
    }

    /// The merged value of config `key`: the write with the latest clock among every
    /// partition that holds the key (dead nodes' included, until they are retired), with
    /// the node whose partition holds it. Deletions are returned too (they win like writes).
    pub fn config_winner(&self, key: &str) -> Option<(Arc<ConfigValue>, Arc<str>)> {
        let parts = self.partitions.read();
        parts
            .values()
            .filter_map(|p| Some((p.config(key)?, &p.origin.node_id)))
            .max_by(|a, b| a.0.hlc.cmp(&b.0.hlc))
            .map(|(v, n)| (v.clone(), n.clone()))
    }

    /// The version at which `holder`'s partition holds config `key`.
    pub fn config_version(&self, holder: &str, key: &str) -> Option<u64> {
        self.partitions
            .read()
            .get(holder)?
            .config
            .get(key)
            .map(|(v, _)| *v)
    }

    /// This node's own write of config `key`, if any.
    pub fn own_config(&self, key: &str) -> Option<Arc<ConfigValue>> {
        self.with_local_partition(|p| p.config(key).cloned())?
    }

    /// The config keys whose merged value may have changed since the last call.
    pub fn take_config_dirty(&self) -> Vec<Arc<str>> {
        self.config_dirty.lock().drain().collect()
    }

    /// A receiver that wakes when config keys become dirty ([`Table::take_config_dirty`]).
    pub fn subscribe_config(&self) -> tokio::sync::watch::Receiver<u64> {
        self.config_changes.subscribe()
    }

    fn config_touched(&self, keys: impl IntoIterator<Item = Arc<str>>) {
        let mut dirty = self.config_dirty.lock();
        let before = dirty.len();
        dirty.extend(keys);
        let grew = dirty.len() > before;
        drop(dirty);
        if grew {
            self.config_changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Update this node's own record; it gets the next version of the partition.
    pub fn update_local_record(&self, update: impl FnOnce(&mut NodeRecord)) -> u64 {
        let mut parts = self.partitions.write();
        let Some(part) = parts.get_mut(&self.me.node_id) else {
            return 0;
        };
        let mut record = part.record.clone().unwrap_or_default();
        update(&mut record);
        part.max_version += 1;
        record.version = part.max_version;
        part.record = Some(record);
        let v = part.max_version;
        drop(parts);
        self.changed();
        v
    }

    /// `(origin, max_version)` of every partition, this node's included.
    pub fn digest(&self) -> Vec<(Arc<Origin>, u64)> {
        let parts = self.partitions.read();
        parts
            .values()
            .map(|p| (p.origin.clone(), p.max_version))
            .collect()
    }

    /// Every partition's origin, watermark, size and record (for liveness and the admin API).
    pub fn partitions(&self) -> Vec<PartitionSummary> {
        let parts = self.partitions.read();
        parts
            .values()
            .map(|p| PartitionSummary {
                origin: p.origin.clone(),
                max_version: p.max_version,
                routes: p.live,
                record: p.record.clone(),
            })
            .collect()
    }

    /// What a replica that holds `node_id`'s partition as `held` = `(generation, version)`
    /// (`None` when it holds none) lacks, oldest first: at most `budget` entries, except for a
    /// reset (the replica is behind the tombstone horizon), which carries the whole live
    /// partition. `None` when it lacks nothing, or holds a newer generation than this table.
    ///
    /// A complete export carries the owner's seal for `up_to_version` (for this node's own
    /// partition, the statement to sign when no seal at that version was made yet).
    pub fn export(&self, node_id: &str, held: Option<(u64, u64)>, budget: usize) -> Option<Export> {
        if *node_id == *self.me.node_id {
            let _folding = self.own_fold.lock();
            // Hash outside the lock; if writes moved the partition on meanwhile, again,
            // and after a few tries under the lock (a statement must describe exactly
            // what is exported).
            for _ in 0..FOLD_RETRIES {
                self.fold_own();
                let parts = self.partitions.read();
                let p = parts.get(node_id)?;
                if p.folded == p.max_version && !p.root_stale {
                    return Self::export_own(p, held, budget);
                }
            }
            let mut parts = self.partitions.write();
            let p = parts.get_mut(node_id)?;
            p.fold();
            return Self::export_own(p, held, budget);
        }
        let parts = self.partitions.read();
        Self::export_from(parts.get(node_id)?, held, budget)
    }

    /// [`Table::export_from`] of this node's folded partition, with the statement to sign.
    fn export_own(p: &Partition, held: Option<(u64, u64)>, budget: usize) -> Option<Export> {
        let mut export = Self::export_from(p, held, budget)?;
        if export.seal.is_none() && export.complete {
            export.statement = Some(p.statement());
        }
        export.owner_cert = None;
        Some(export)
    }

    /// Fold this node's partition, hashing without the partitions lock (the caller holds
    /// `own_fold`, so no other fold runs; writes meanwhile note what they overwrite for the
    /// next one).
    fn fold_own(&self) {
        let fold = {
            let mut parts = self.partitions.write();
            let Some(p) = parts.get_mut(&self.me.node_id) else {
                return;
            };
            if p.folded == p.max_version && !p.root_stale {
                return;
            }
            p.take_fold()
        };
        let root = fold.sum();
        if let Some(p) = self.partitions.write().get_mut(&self.me.node_id) {
            p.root = root;
        }
    }

    fn export_from(p: &Partition, held: Option<(u64, u64)>, budget: usize) -> Option<Export> {
        let after = match held {
            Some((g, v)) if g == p.origin.generation => v,
            Some((g, _)) if g > p.origin.generation => return None,
            _ => 0,
        };
        if after >= p.max_version {
            return None;
        }
        // Behind the tombstone horizon, the replica may hold routes whose deletion we no
        // longer remember: it gets the whole live partition, in one piece (a reset split
        // over frames would leave it behind the horizon again), and starts afresh.
        let reset = after < p.gc_floor;
        let mut entries = Vec::new();
        let mut config = Vec::new();
        let mut up_to = p.max_version;
        let start = if reset { 0 } else { after };
        // The two logs in one version order (they share the partition's versions).
        let mut routes = p.log.range(start + 1..).peekable();
        let mut keys = p.config_log.range(start + 1..).peekable();
        loop {
            let next_route = routes.peek().map(|(v, _)| **v);
            let next_key = keys.peek().map(|(v, _)| **v);
            let v = match (next_route, next_key) {
                (None, None) => break,
                (Some(r), Some(k)) => r.min(k),
                (Some(r), None) => r,
                (None, Some(k)) => k,
            };
            if !reset && entries.len() + config.len() == budget {
                up_to = v - 1;
                break;
            }
            if next_route == Some(v) {
                let Some((_, key)) = routes.next() else { break };
                let Some(e) = p.entries.get(key) else {
                    continue;
                };
                if reset && e.value.is_none() {
                    continue;
                }
                entries.push(ReplicatedEntry {
                    key: key.clone(),
                    version: v,
                    value: e.value.clone(),
                });
            } else {
                let Some((_, key)) = keys.next() else { break };
                let Some((_, value)) = p.config.get(key) else {
                    continue;
                };
                config.push(ReplicatedConfig {
                    key: key.clone(),
                    version: v,
                    value: value.clone(),
                });
            }
        }
        let record = p.record.clone().filter(|r| r.version > after);
        let seal = p.seal.clone().filter(|s| s.version == up_to);
        Some(Export {
            origin: p.origin.clone(),
            from_version: if reset { 0 } else { after },
            up_to_version: up_to,
            reset,
            record,
            entries,
            config,
            seal,
            statement: None,
            owner_cert: p.owner_cert.clone(),
            complete: up_to == p.max_version,
        })
    }

    /// Keep the seal made over this node's own statement at `seal.version` (what
    /// [`Table::export`] asked to sign), so that later exports at that version reuse it.
    pub fn set_own_seal(&self, seal: Seal) {
        let mut parts = self.partitions.write();
        if let Some(p) = parts.get_mut(&self.me.node_id)
            && p.seal.as_ref().is_none_or(|s| s.version < seal.version)
        {
            p.seal = Some(seal);
        }
    }

    /// The certificate held for `node_id`'s partition (as it came with its owner's seal).
    pub fn owner_cert(&self, node_id: &str) -> Option<Arc<[u8]>> {
        self.partitions.read().get(node_id)?.owner_cert.clone()
    }

    /// Every replicated partition with the certificate it was accepted under.
    pub fn owner_certs(&self) -> Vec<(Arc<str>, Arc<[u8]>)> {
        self.partitions
            .read()
            .values()
            .filter_map(|p| Some((p.origin.node_id.clone(), p.owner_cert.clone()?)))
            .collect()
    }

    /// The statement of this node's own partition as it stands now.
    pub fn own_statement(&self) -> Option<Statement> {
        let _folding = self.own_fold.lock();
        let mut parts = self.partitions.write();
        let p = parts.get_mut(&self.me.node_id)?;
        p.fold();
        Some(p.statement())
    }

    /// Apply what a peer sent for another node's partition, if the state it produces is the
    /// one its owner signed: `verify` is asked whether the owner's seal covers the
    /// [`Statement`] of that state, and nothing changes unless it says yes. This table's own
    /// partition is never written this way; a generation older than the one held (or
    /// retired) is ignored; a newer one replaces the partition.
    pub fn import(&self, import: Import, verify: impl FnOnce(&Statement) -> bool) -> ImportOutcome {
        if *import.node_id == *self.me.node_id {
            return ImportOutcome::OwnPartition;
        }
        if import.seal.version != import.up_to_version
            || import
                .entries
                .iter()
                .any(|e| e.version == 0 || e.version > import.up_to_version)
            || import
                .config
                .iter()
                .any(|c| c.version == 0 || c.version > import.up_to_version)
            || import
                .record
                .as_ref()
                .is_some_and(|r| r.version > import.up_to_version)
        {
            return ImportOutcome::Malformed;
        }
        if self
            .retired
            .read()
            .get(import.node_id.as_str())
            .is_some_and(|g| import.generation <= *g)
        {
            return ImportOutcome::Stale;
        }
        // The expensive part, without a lock: every incoming live entry's digest and their
        // sum. Entries that turn out older than what is held are taken out again below.
        let digests: Vec<Option<EntryDigest>> = import
            .entries
            .iter()
            .map(|e| {
                e.value
                    .as_ref()
                    .map(|v| state::entry_digest(&e.key, e.version, v))
            })
            .collect();
        let config_digests: Vec<EntryDigest> = import
            .config
            .iter()
            .map(|c| state::config_digest(&c.key, c.version, &c.value))
            .collect();
        let incoming: Vec<EntryDigest> = digests
            .iter()
            .flatten()
            .chain(&config_digests)
            .copied()
            .collect();
        let mut root = StateHash::of(&incoming);
        drop(incoming);

        let limits = self.limits();
        let mut parts = self.partitions.write();
        // What is held of this incarnation; a newer incarnation or a reset starts from 0.
        let held = match parts.get(import.node_id.as_str()) {
            Some(p) if p.origin.generation > import.generation => return ImportOutcome::Stale,
            Some(p) if p.origin.generation == import.generation => Some(p),
            _ => None,
        };
        let held_version = held.map_or(0, |p| p.max_version);
        if !import.reset && import.from_version > held_version {
            return ImportOutcome::Gap;
        }
        if !import.reset && import.up_to_version <= held_version {
            // Nothing newer than what is held (a resend): nothing to check or change.
            return ImportOutcome::Applied {
                changed: 0,
                superseded: false,
                not_allowed: 0,
            };
        }
        if !parts.contains_key(import.node_id.as_str()) && parts.len() >= limits.max_nodes {
            return ImportOutcome::OverLimit;
        }
        let base = held.filter(|_| !import.reset);
        // The statement of the state this import would produce.
        let mut live = base.map_or(0, |p| p.live as u64);
        let mut size = base.map_or(0, |p| p.entries.len() + p.config.len());
        live += base.map_or(0, |p| p.config.len() as u64);
        if let Some(p) = base {
            root.add_hash(&p.root);
        }
        for (e, d) in import.entries.iter().zip(&digests) {
            match base.and_then(|p| p.get(&e.key)) {
                Some(cur) if cur.version >= e.version => {
                    if let Some(d) = d {
                        root.remove(d);
                    }
                    continue;
                }
                Some(cur) => {
                    if let Some(old) = &cur.value {
                        root.remove(&state::entry_digest(&e.key, cur.version, old));
                        live -= 1;
                    }
                }
                None => size += 1,
            }
            live += u64::from(e.value.is_some());
        }
        for (c, d) in import.config.iter().zip(&config_digests) {
            match base.and_then(|p| p.config.get(&c.key)) {
                Some((held, _)) if *held >= c.version => {
                    root.remove(d);
                    continue;
                }
                Some((held, old)) => {
                    root.remove(&state::config_digest(&c.key, *held, old));
                    live -= 1;
                }
                None => size += 1,
            }
            live += 1;
        }
        if size > limits.max_entries_per_partition {
            return ImportOutcome::OverLimit;
        }
        let record = match (&import.record, base.and_then(|p| p.record.as_ref())) {
            (Some(new), Some(cur)) if new.version <= cur.version => Some(cur.clone()),
            (Some(new), _) => Some(new.clone()),
            (None, cur) => cur.cloned(),
        };
        let statement = Statement {
            node_id: import.node_id.clone(),
            site: import.site.clone(),
            generation: import.generation,
            version: import.up_to_version,
            live,
            record: state::record_digest(record.as_ref()),
            root: root.digest(),
        };
        if !verify(&statement) {
            return ImportOutcome::BadSignature;
        }

        // Verified: apply.
        let mut superseded = false;
        if parts
            .get(import.node_id.as_str())
            .is_some_and(|p| p.origin.generation < import.generation)
        {
            superseded = true;
            if let Some(old) = parts.remove(import.node_id.as_str()) {
                old.origin.set_alive(false);
                self.unindex(&old);
                self.config_touched(old.config.keys().cloned());
            }
        }
        let node_id: Arc<str> = Arc::from(import.node_id.as_str());
        let part = parts.entry(node_id.clone()).or_insert_with(|| {
            let local = *import.site == *self.me.site;
            Partition::new(Origin::new(
                &import.node_id,
                &import.site,
                import.generation,
                local,
            ))
        });
        if import.reset {
            let old = std::mem::replace(part, Partition::new(part.origin.clone()));
            self.unindex(&old);
            self.config_touched(old.config.keys().cloned());
        }
        let origin = part.origin.clone();
        let routable = self.site_may_announce_fn(&origin.site);
        let mut changed = 0;
        let mut not_allowed = 0;
        for e in import.entries {
            let old_live = part.get(&e.key).and_then(|v| v.value.clone());
            if part.put(&e.key, e.value.clone(), e.version) {
                changed += 1;
                if !routable(&e.key.host) {
                    not_allowed += usize::from(e.value.is_some());
                } else if old_live.is_some() || e.value.is_some() {
                    self.index_set(&e.key, &origin, e.value);
                }
            }
        }
        let mut touched = Vec::new();
        for c in import.config {
            if part.put_config(&c.key, c.value, c.version) {
                changed += 1;
                touched.push(c.key);
            }
        }
        self.config_touched(touched);
        if record != part.record {
            part.record = record;
            changed += 1;
        }
        part.max_version = import.up_to_version;
        part.folded = import.up_to_version;
        part.root = root;
        part.seal = Some(import.seal);
        part.owner_cert = Some(import.owner_cert);
        drop(parts);
        if changed > 0 || superseded {
            self.changed();
        }
        ImportOutcome::Applied {
            changed,
            superseded,
            not_allowed,
        }
    }

    /// [`Table::site_may_announce`] for one site, as a closure over a snapshot.
    fn site_may_announce_fn(&self, site: &str) -> impl Fn(&str) -> bool + use<> {
        let list = self.site_domains.read().get(site).cloned();
        move |host| {
            list.as_ref()
                .is_none_or(|l| l.iter().any(|d| domain_allows(d, host)))
        }
    }

    /// Remove a dead node's partition and remember its incarnation, so that no relay brings
    /// it back. This node's own partition cannot be removed.
    pub fn retire(&self, node_id: &str) -> bool {
        if *node_id == *self.me.node_id {
            return false;
        }
        let mut parts = self.partitions.write();
        let Some(old) = parts.remove(node_id) else {
            return false;
        };
        // Its config writes must not leave with it: this node keeps every one that no other
        // partition matches or beats, under the writer's own clock (so the merge picks the
        // same winner everywhere, and every node that retires it keeps the same copy).
        let adopt: Vec<(Arc<str>, Arc<ConfigValue>)> = old
            .config
            .iter()
            .filter(|(key, (_, value))| {
                !parts
                    .values()
                    .any(|p| p.config(key).is_some_and(|v| v.hlc >= value.hlc))
            })
            .map(|(key, (_, value))| (key.clone(), value.clone()))
            .collect();
        if let Some(own) = parts.get_mut(&self.me.node_id) {
            for (key, value) in adopt {
                Self::write_config_in(own, &key, ConfigValue::clone(&value));
            }
        }
        drop(parts);
        old.origin.set_alive(false);
        self.config_touched(old.config.keys().cloned());
        {
            // Only certified nodes ever had a partition, so this is bounded by the mesh;
            // beyond twice max_nodes the oldest incarnation is forgotten (its generation
            // is the smallest: generations are start times).
            let mut retired = self.retired.write();
            if retired.len() >= 2 * self.limits().max_nodes
                && let Some(oldest) = retired
                    .iter()
                    .min_by_key(|(_, g)| **g)
                    .map(|(n, _)| n.clone())
            {
                retired.remove(&oldest);
            }
            retired.insert(old.origin.node_id.clone(), old.origin.generation);
        }
        self.unindex(&old);
        self.changed();
        true
    }

    /// Forget that `node_id` was retired: the node itself is speaking again (after a
    /// partition longer than the retirement grace), so its incarnation is alive after all.
    pub fn unretire(&self, node_id: &str) -> bool {
        self.retired.write().remove(node_id).is_some()
    }

    /// Take every live entry of a (removed or reset) partition out of the index.
    fn unindex(&self, part: &Partition) {
        for (key, v) in &part.entries {
            if v.value.is_some() {
                self.index_set(key, &part.origin, None);
            }
        }
    }

    /// Purge tombstones at or below `horizon` from `node_id`'s partition (its owner and every
    /// replica do this after a grace period); replicas behind it will get a reset.
    pub fn purge_tombstones(&self, node_id: &str, horizon: u64) -> usize {
        let mut parts = self.partitions.write();
        let Some(p) = parts.get_mut(node_id) else {
            return 0;
        };
        let horizon = horizon.min(p.max_version);
        let dead: Vec<u64> = p
            .log
            .range(..=horizon)
            .filter(|(_, k)| p.entries.get(*k).is_some_and(|e| e.value.is_none()))
            .map(|(v, _)| *v)
            .collect();
        for v in &dead {
            if let Some(k) = p.log.remove(v) {
                p.entries.remove(&k);
            }
        }
        p.gc_floor = p.gc_floor.max(horizon);
        dead.len()
    }

    /// Point the index at `entry` (or remove) for `(key, origin)`.
    fn index_set(&self, key: &RouteKey, origin: &Arc<Origin>, entry: Option<Arc<RouteEntry>>) {
        match entry {
            Some(entry) => {
                let mut host = match self.index.entry(key.host.clone()) {
                    dashmap::Entry::Occupied(o) => o.into_ref(),
                    dashmap::Entry::Vacant(v) => {
                        self.count_below(&key.host, true);
                        v.insert(HostRoutes::default())
                    }
                };
                let paths = &mut host.paths;
                let idx = match paths.iter().position(|p| *p.path == *key.path) {
                    Some(i) => i,
                    None => {
                        // Keep longest path first so lookup takes the first match.
                        let at = paths
                            .iter()
                            .position(|p| p.path.len() < key.path.len())
                            .unwrap_or(paths.len());
                        paths.insert(
                            at,
                            PathRoutes {
                                path: key.path.clone(),
                                servers: SmallVec::new(),
                            },
                        );
                        self.routes.fetch_add(1, Ordering::Relaxed);
                        at
                    }
                };
                let servers = &mut paths[idx].servers;
                match servers.iter_mut().find(|s| Arc::ptr_eq(&s.origin, origin)) {
                    Some(s) => s.entry = entry,
                    None => servers.push(Served {
                        origin: origin.clone(),
                        entry,
                    }),
                }
            }
            None => {
                let host_now_empty = match self.index.get_mut(&*key.host) {
                    None => return,
                    Some(mut host) => {
                        if let Some(i) = host.paths.iter().position(|p| *p.path == *key.path) {
                            host.paths[i]
                                .servers
                                .retain(|s| !Arc::ptr_eq(&s.origin, origin));
                            if host.paths[i].servers.is_empty() {
                                host.paths.remove(i);
                                self.routes.fetch_sub(1, Ordering::Relaxed);
                            }
                        }
                        host.paths.is_empty()
                    }
                };
                if host_now_empty
                    && self
                        .index
                        .remove_if(&*key.host, |_, h| h.paths.is_empty())
                        .is_some()
                {
                    self.count_below(&key.host, false);
                }
            }
        }
    }

    /// Count `host` in (or out of) every name above it: `a.b.example.com` counts for
    /// `b.example.com`, `example.com` and `com`. Index writers are serialised by the
    /// partitions lock, so counts and index agree.
    fn count_below(&self, host: &str, added: bool) {
        let mut rest = host;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if rest.is_empty() {
                break;
            }
            if added {
                match self.below.get_mut(rest) {
                    Some(mut n) => *n += 1,
                    None => {
                        self.below.insert(Arc::from(rest), 1);
                    }
                }
            } else if let Some(mut n) = self.below.get_mut(rest) {
                *n -= 1;
                let gone = *n == 0;
                drop(n);
                if gone {
                    self.below.remove_if(rest, |_, n| *n == 0);
                }
            }
        }
    }

    /// Whether some route's host lies strictly below `name` (lower-case, no trailing dot):
    /// DNS answers NODATA, not NXDOMAIN, for such an empty non-terminal (RFC 8020). Exact at
    /// every instant: the counts move with the index.
    pub fn has_routes_below(&self, name: &str) -> bool {
        self.below.contains_key(name)
    }

    /// This node's current entry for `key`.
    pub fn local_entry(&self, key: &RouteKey) -> Option<Arc<RouteEntry>> {
        let parts = self.partitions.read();
        parts.get(&self.me.node_id)?.get(key)?.value.clone()
    }

    /// This node's current entries for `keys`, in their order, under one lock.
    pub fn local_entries(&self, keys: &[Arc<RouteKey>]) -> Vec<Option<Arc<RouteEntry>>> {
        let parts = self.partitions.read();
        let part = parts.get(&self.me.node_id);
        keys.iter()
            .map(|k| part.and_then(|p| p.get(k)?.value.clone()))
            .collect()
    }

    /// Run `f` over this node's own partition (for replication and diagnostics).
    pub fn with_local_partition<R>(&self, f: impl FnOnce(&Partition) -> R) -> Option<R> {
        let parts = self.partitions.read();
        parts.get(&self.me.node_id).map(f)
    }

    /// Find the route for a request, like gorouter. `host` may carry a port and any case;
    /// `path` is the request path without query.
    pub fn lookup(&self, host: &str, path: &str) -> Option<RouteMatch> {
        let host = normalize_host(host)?;
        if let Some(m) = self.lookup_host(&host, path) {
            return Some(m);
        }
        // Wildcards: replace the left-most label with `*`, then the next, …
        let mut buf = String::with_capacity(host.len() + 1);
        let mut rest: &str = &host;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if rest.is_empty() {
                break;
            }
            buf.clear();
            buf.push_str("*.");
            buf.push_str(rest);
            if let Some(m) = self.lookup_host(&buf, path) {
                return Some(m);
            }
        }
        None
    }

    fn lookup_host(&self, host: &str, path: &str) -> Option<RouteMatch> {
        let routes = self.index.get(host)?;
        let (host_key, routes) = routes.pair();
        let p = routes
            .paths
            .iter()
            .find(|p| path_matches(&p.path, path) && p.has_live_server())?;
        let mut local = false;
        let mut app: Option<&Arc<App>> = None;
        let mut remote_sites: SmallVec<[Arc<str>; 2]> = SmallVec::new();
        for s in p
            .servers
            .iter()
            .filter(|s| s.entry.endpoints > 0 && s.origin.is_alive())
        {
            if s.origin.local_site {
                if !local {
                    app = Some(&s.entry.app);
                }
                local = true;
            } else {
                app.get_or_insert(&s.entry.app);
                if !remote_sites.contains(&s.origin.site) {
                    remote_sites.push(s.origin.site.clone());
                }
            }
        }
        if remote_sites.len() > 1 {
            let order = self.site_order.read().clone();
            let rank = |site: &Arc<str>| order.iter().position(|s| s == site).unwrap_or(usize::MAX);
            remote_sites.sort_by_key(rank);
        }
        Some(RouteMatch {
            host: host_key.clone(),
            path: p.path.clone(),
            app: app.cloned().unwrap_or_default(),
            local,
            remote_sites,
        })
    }

    /// The sites that serve `host` on any path, for DNS: this node's site first, then the
    /// others in [`Table::set_site_order`] order. `(site, local, live)` where `live` says a
    /// live node of the site has endpoints; sites whose only servers are dead are included
    /// with `live == false` (DNS falls back to them when nothing is healthy). The host
    /// matches exactly when any server of it has endpoints, else through wildcards like
    /// [`Table::lookup`]. `None` when nothing serves the host.
    pub fn sites_for_host(&self, host: &str) -> Option<Vec<(Arc<str>, bool, bool)>> {
        let host = normalize_host(host)?;
        let collect = |name: &str| -> Option<Vec<(Arc<str>, bool, bool)>> {
            let routes = self.index.get(name)?;
            let mut sites: Vec<(Arc<str>, bool, bool)> = Vec::new();
            for s in routes.paths.iter().flat_map(|p| p.servers.iter()) {
                if s.entry.endpoints == 0 {
                    continue;
                }
                let alive = s.origin.is_alive();
                match sites.iter_mut().find(|(site, _, _)| *site == s.origin.site) {
                    Some(found) => found.2 |= alive,
                    None => sites.push((s.origin.site.clone(), s.origin.local_site, alive)),
                }
            }
            (!sites.is_empty()).then_some(sites)
        };
        let mut found = collect(&host);
        let mut rest: &str = &host;
        while found.is_none()
            && let Some(dot) = rest.find('.')
        {
            rest = &rest[dot + 1..];
            if rest.is_empty() {
                break;
            }
            found = collect(&format!("*.{rest}"));
        }
        let mut sites = found?;
        let order = self.site_order.read().clone();
        let rank = |site: &Arc<str>| order.iter().position(|s| s == site).unwrap_or(usize::MAX);
        sites.sort_by(|a, b| (!a.1, rank(&a.0), &a.0).cmp(&(!b.1, rank(&b.0), &b.0)));
        Some(sites)
    }

    /// Every route (optionally of one host, exactly as registered), sorted by host then path.
    pub fn routes(&self, host: Option<&str>) -> Vec<RouteView> {
        let mut out = Vec::new();
        let mut push = |host: &Arc<str>, routes: &HostRoutes| {
            for p in &routes.paths {
                out.push(RouteView {
                    host: host.clone(),
                    path: p.path.clone(),
                    servers: p
                        .servers
                        .iter()
                        .map(|s| (s.origin.clone(), s.entry.clone()))
                        .collect(),
                });
            }
        };
        match host {
            Some(h) => {
                if let Some(h) = normalize_host(h)
                    && let Some(r) = self.index.get(h.as_ref())
                {
                    push(r.key(), r.value());
                }
            }
            None => {
                for r in self.index.iter() {
                    push(r.key(), r.value());
                }
            }
        }
        out.sort_by(|a, b| (&a.host, &a.path).cmp(&(&b.host, &b.path)));
        out
    }

    /// Every host with a live server somewhere that `keep` accepts, unsorted. Reads keys
    /// only: cheap enough to call every few seconds with a large table.
    pub fn live_hosts(&self, keep: impl Fn(&str) -> bool) -> Vec<Arc<str>> {
        self.index
            .iter()
            .filter(|r| keep(r.key()) && r.value().paths.iter().any(PathRoutes::has_live_server))
            .map(|r| r.key().clone())
            .collect()
    }

    /// Counts for metrics and status.
    pub fn stats(&self) -> TableStats {
        let parts = self.partitions.read();
        TableStats {
            routes: usize::try_from(self.routes.load(Ordering::Relaxed)).unwrap_or(usize::MAX),
            local_routes: parts.get(&self.me.node_id).map_or(0, Partition::len),
            local_endpoints: self.local_endpoints.load(Ordering::Relaxed),
            partitions: parts.len(),
        }
    }
}

/// Whether a route path matches a request path: equal, or a prefix ending at a `/`
/// boundary; the empty route path matches everything. Case-insensitive.
/// Whether the domain pattern `d` (`example.com`: it and every name under it; `*.example.com`:
/// every name under it) covers the route host `host` (itself possibly a wildcard).
fn domain_allows(d: &str, host: &str) -> bool {
    match d.strip_prefix("*.") {
        Some(parent) => host
            .strip_suffix(parent)
            .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
        None => host == d || host.strip_suffix(d).is_some_and(|rest| rest.ends_with('.')),
    }
}

fn path_matches(route: &str, request: &str) -> bool {
    if route.is_empty() {
        return true;
    }
    let request = request.trim_end_matches('/');
    request.len() >= route.len()
        && request.as_bytes()[..route.len()].eq_ignore_ascii_case(route.as_bytes())
        && (request.len() == route.len() || request.as_bytes()[route.len()] == b'/')
}

/// Normalise a request's Host: drop a port, a trailing dot and IPv6 brackets' port, and
/// lower-case (borrowing when nothing changes). `None` for an empty host.
pub fn normalize_host(host: &str) -> Option<Cow<'_, str>> {
    let host = host.trim();
    let host = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port → [v6]
        match rest.find(']') {
            Some(i) => &host[..i + 2],
            None => host,
        }
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}

/// Builders the unit tests of every module that holds a table share.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod testing {
    use super::*;

    /// The key of `uri`, which must be valid.
    pub(crate) fn key(uri: &str) -> Arc<RouteKey> {
        Arc::new(RouteKey::parse(uri).unwrap())
    }

    /// A route of `app` with `endpoints` endpoints, one instance each.
    pub(crate) fn entry(app: &str, endpoints: u32) -> RouteEntry {
        RouteEntry {
            app: Arc::new(App::with_id(app)),
            endpoints,
            instances: endpoints,
            updated_at_ms: 0,
        }
    }

    /// The first delta of `node`'s partition (generation 1, no record): `routes` as
    /// `(uri, app, endpoints)` at versions 1, 2, …
    pub(crate) fn first_import(node: &str, site: &str, routes: &[(&str, &str, u32)]) -> Import {
        Import {
            node_id: node.into(),
            site: site.into(),
            generation: 1,
            from_version: 0,
            up_to_version: routes.len() as u64,
            reset: false,
            record: None,
            config: vec![],
            entries: routes
                .iter()
                .zip(1..)
                .map(|((uri, app, eps), version)| ReplicatedEntry {
                    key: key(uri),
                    version,
                    value: Some(Arc::new(entry(app, *eps))),
                })
                .collect(),
            seal: no_seal(),
            owner_cert: Arc::from(&b""[..]),
        }
    }

    /// A seal nobody checks (see [`Table::import_trusted`]).
    pub(crate) fn no_seal() -> Seal {
        Seal {
            version: 0,
            scheme: 0,
            signature: Arc::from(&b""[..]),
        }
    }
}

#[cfg(test)]
impl Table {
    /// Import without a signature check, sealed at whatever version it reaches (tests of
    /// what the table does with an import; the mesh's tests check the seals).
    pub(crate) fn import_trusted(&self, mut import: Import) -> ImportOutcome {
        import.seal.version = import.up_to_version;
        self.import(import, |_| true)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{entry, first_import, key, no_seal};
    use super::*;

    fn table(routes: &[(&str, &str, u32)]) -> Table {
        let t = Table::new("lon-1", "lon", 1);
        for (uri, app, eps) in routes {
            t.upsert_local(&key(uri), entry(app, *eps));
        }
        t
    }

    /// Lookup semantics as a table of cases: (request host, request path, expected app).
    #[test]
    fn lookup_cases() {
        let t = table(&[
            ("example.com", "root", 1),
            ("example.com/api", "api", 1),
            ("example.com/api/v2", "api-v2", 1),
            ("example.com/empty", "empty", 0),
            ("*.example.com", "wild", 1),
            ("exact.example.com", "exact", 1),
            ("*.com", "tld-wild", 1),
            ("only.path.org/x", "only-x", 1),
        ]);
        let cases: &[(&str, &str, Option<&str>)] = &[
            // exact host, no path
            ("example.com", "/", Some("root")),
            ("example.com", "", Some("root")),
            // path prefix on segment boundaries
            ("example.com", "/api", Some("api")),
            ("example.com", "/api/", Some("api")),
            ("example.com", "/api/users", Some("api")),
            ("example.com", "/apis", Some("root")),
            // longest prefix wins
            ("example.com", "/api/v2/items", Some("api-v2")),
            ("example.com", "/api/v22", Some("api")),
            // an empty pool falls through to a shorter prefix
            ("example.com", "/empty/x", Some("root")),
            // wildcard replaces the left-most label
            ("shop.example.com", "/", Some("wild")),
            ("a.b.example.com", "/", Some("wild")),
            // exact beats wildcard
            ("exact.example.com", "/", Some("exact")),
            // wildcard steps outward: *.example.com misses for other.org → *.com … miss
            ("foo.com", "/", Some("tld-wild")),
            ("foo.net", "/", None),
            // exact host without a matching path falls through to wildcards, then misses
            ("only.path.org", "/y", None),
            ("only.path.org", "/x/1", Some("only-x")),
            // case and port normalisation
            ("EXAMPLE.com:8080", "/API/V2", Some("api-v2")),
            ("Shop.Example.Com.", "/", Some("wild")),
            ("", "/", None),
        ];
        for (host, path, want) in cases {
            let got = t.lookup(host, path).map(|m| m.app.id().to_string());
            assert_eq!(got.as_deref(), *want, "lookup({host:?}, {path:?})");
        }
    }

    #[test]
    fn match_reports_route_and_locality() {
        let t = table(&[("*.example.com/api", "wild", 2)]);
        let m = t.lookup("a.example.com", "/api/x").unwrap();
        assert_eq!(&*m.host, "*.example.com");
        assert_eq!(&*m.path, "/api");
        assert!(m.local);
        assert!(m.remote_sites.is_empty());
    }

    /// The hash this node folds in step with its writes is the hash of its live entries,
    /// however writes, overwrites, deletes, folds and an overflow interleave.
    #[test]
    fn the_owners_folded_hash_is_the_hash_of_its_live_entries() {
        let t = Table::new("lon-1", "lon", 1);
        let from_scratch = |t: &Table| {
            t.with_local_partition(|p| {
                let digests: Vec<_> = p
                    .entries
                    .iter()
                    .filter_map(|(k, v)| Some(state::entry_digest(k, v.version, v.value.as_ref()?)))
                    .collect();
                StateHash::of(&digests).digest()
            })
            .unwrap()
        };
        let check = |t: &Table, when: &str| {
            let stmt = t.own_statement().unwrap();
            assert_eq!(stmt.root, from_scratch(t), "{when}");
            assert_eq!(
                stmt.version,
                t.digest()
                    .iter()
                    .find(|(o, _)| *o.node_id == *"lon-1")
                    .unwrap()
                    .1
            );
        };
        for i in 0..50 {
            t.upsert_local(&key(&format!("r{i}.com")), entry("a", 1));
        }
        check(&t, "first fold");
        for i in 0..50 {
            if i % 3 == 0 {
                t.remove_local(&key(&format!("r{i}.com")));
            } else {
                t.upsert_local(&key(&format!("r{i}.com")), entry("b", 2));
            }
            if i % 10 == 0 {
                // An export folds too.
                let _ = t.export("lon-1", None, 7);
            }
        }
        t.upsert_local(&key("r1.com"), entry("c", 3));
        check(&t, "after overwrites, deletes and folds");
        // Overwrites beyond what the owner notes: the next fold starts over.
        for i in 0..(UNFOLDED_MAX + 10) {
            t.upsert_local(&key("r2.com"), entry("d", 1 + (i % 2) as u32));
        }
        check(&t, "after an overflow");
    }

    fn cv(ms: u64, node: &str, value: Option<&str>) -> ConfigValue {
        ConfigValue {
            hlc: Hlc {
                ms,
                counter: 0,
                node: node.into(),
            },
            value: value.map(|v| Arc::from(v.as_bytes())),
        }
    }

    /// Everything `from` holds of `owner`'s partition, imported into `to` only if the state
    /// it produces is the owner's own statement (what a seal would cover).
    fn replicate(from: &Table, owner: &Table, to: &Table, budget: usize) -> ImportOutcome {
        let node = owner.me().node_id.to_string();
        let mut last = ImportOutcome::Malformed;
        loop {
            let held = to
                .digest()
                .into_iter()
                .find(|(o, _)| *o.node_id == *node)
                .map(|(o, v)| (o.generation, v));
            let Some(export) = from.export(&node, held, budget) else {
                return last;
            };
            let want = owner.own_statement().unwrap();
            let import = Import {
                node_id: node.clone(),
                site: export.origin.site.to_string(),
                generation: export.origin.generation,
                from_version: export.from_version,
                up_to_version: export.up_to_version,
                reset: export.reset,
                record: export.record,
                entries: export.entries,
                config: export.config,
                seal: Seal {
                    version: export.up_to_version,
                    ..no_seal()
                },
                owner_cert: Arc::from(&[][..]),
            };
            let complete = export.complete;
            last = to.import(import, |st| !complete || *st == want);
            assert!(matches!(last, ImportOutcome::Applied { .. }), "{last:?}");
        }
    }

    /// Config keys ride in the owner's partition: they replicate in version order with its
    /// routes, the owner's seal covers them (the receiver's statement is the owner's), and
    /// the merge picks the latest clock among every partition.
    #[test]
    fn config_keys_replicate_under_the_owners_statement_and_merge_by_clock() {
        let lon = Table::new("lon-1", "lon", 1);
        let nyc = Table::new("nyc-1", "nyc", 1);
        lon.upsert_local(&key("a.com"), entry("a", 1));
        assert_eq!(
            lon.write_config_local("policy/site/lon", cv(10, "lon-1", Some("{}"))),
            Some(2)
        );
        lon.upsert_local(&key("b.com"), entry("b", 1));
        assert_eq!(
            lon.write_config_local("policy/site/lon", cv(9, "lon-1", None)),
            None,
            "an older clock never overwrites"
        );
        lon.write_config_local(
            "policy/route/a.com",
            cv(11, "lon-1", Some(r#"{"mode":"redirect"}"#)),
        );
        // Cut into frames of 1: the versions of routes and config keys interleave.
        replicate(&lon, &lon, &nyc, 1);
        let (v, holder) = nyc.config_winner("policy/route/a.com").unwrap();
        assert_eq!((v.hlc.ms, &*holder), (11, "lon-1"));
        assert!(nyc.lookup("b.com", "/").is_some());
        let mut dirty = nyc.take_config_dirty();
        dirty.sort();
        assert_eq!(
            dirty,
            [
                Arc::from("policy/route/a.com"),
                Arc::from("policy/site/lon")
            ]
        );

        // A later write elsewhere wins everywhere; a deletion wins like a write.
        nyc.write_config_local("policy/site/lon", cv(20, "nyc-1", None));
        replicate(&nyc, &nyc, &lon, 100);
        for t in [&lon, &nyc] {
            let (v, holder) = t.config_winner("policy/site/lon").unwrap();
            assert!(v.is_deleted());
            assert_eq!(&*holder, "nyc-1");
        }
        // Overwriting its own key keeps the owner's hash the hash of what it holds.
        lon.write_config_local("policy/route/a.com", cv(30, "lon-1", Some("{}")));
        replicate(&lon, &lon, &nyc, 100);
        assert_eq!(
            nyc.config_winner("policy/route/a.com").unwrap().0.hlc.ms,
            30
        );
    }

    /// A node that leaves for good does not take its config writes along: whoever retires
    /// it keeps them, under the writer's clock, unless another partition already beats them.
    #[test]
    fn retiring_a_writer_keeps_its_winning_config_writes() {
        let lon = Table::new("lon-1", "lon", 1);
        let nyc = Table::new("nyc-1", "nyc", 1);
        nyc.write_config_local(
            "policy/site/nyc",
            cv(5, "nyc-1", Some(r#"{"drained":true}"#)),
        );
        nyc.write_config_local(
            "policy/site/lon",
            cv(5, "nyc-1", Some(r#"{"drained":true}"#)),
        );
        lon.write_config_local("policy/site/lon", cv(6, "lon-1", None));
        replicate(&nyc, &nyc, &lon, 100);
        assert!(lon.retire("nyc-1"));
        let (v, holder) = lon.config_winner("policy/site/nyc").unwrap();
        assert_eq!(
            (v.hlc.to_string(), &*holder),
            ("5.0@nyc-1".to_string(), "lon-1")
        );
        assert!(lon.config_winner("policy/site/lon").unwrap().0.is_deleted());
    }

    #[test]
    fn unchanged_write_is_not_a_new_version() {
        let t = Table::new("n", "s", 1);
        let k = key("a.com");
        assert_eq!(t.upsert_local(&k, entry("a", 1)), Some(1));
        assert_eq!(t.upsert_local(&k, entry("a", 1)), None);
        assert_eq!(t.upsert_local(&k, entry("a", 2)), Some(2));
        assert_eq!(t.remove_local(&k), Some(3));
        assert_eq!(t.remove_local(&k), None);
        assert_eq!(t.remove_local(&key("never.com")), None);
    }

    #[test]
    fn removal_leaves_tombstone_and_empties_index() {
        let t = table(&[("a.com", "a", 1), ("a.com/p", "p", 1), ("b.com", "b", 2)]);
        assert_eq!(t.stats().routes, 3);
        assert_eq!(t.stats().local_endpoints, 4);
        t.remove_local(&key("a.com"));
        t.remove_local(&key("a.com/p"));
        assert!(t.lookup("a.com", "/p").is_none());
        let s = t.stats();
        assert_eq!((s.routes, s.local_routes, s.local_endpoints), (1, 1, 2));
        assert!(
            t.index.get("a.com").is_none(),
            "empty hosts leave the index"
        );
        let changes: Vec<_> = t
            .with_local_partition(|p| {
                p.changes_since(0)
                    .map(|(v, k, e)| (v, k.to_string(), e.is_some()))
                    .collect()
            })
            .unwrap();
        assert_eq!(
            changes,
            vec![
                (3, "b.com".to_string(), true),
                (4, "a.com".to_string(), false),
                (5, "a.com/p".to_string(), false),
            ],
            "the change log holds each key once, at its latest version"
        );
    }

    #[test]
    fn remote_candidates_follow_the_site_order_and_local_wins() {
        let t = Table::new("lon-1", "lon", 1);
        let remote =
            |node: &str, site: &str, app: &str| first_import(node, site, &[("shop.com", app, 2)]);
        t.import_trusted(remote("sgp-1", "sgp", "shop"));
        t.import_trusted(remote("nyc-1", "nyc", "shop"));
        let sites = |t: &Table| {
            t.lookup("shop.com", "/")
                .unwrap()
                .remote_sites
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
        };
        t.set_site_order(vec!["nyc".into(), "sgp".into()]);
        assert_eq!(sites(&t), ["nyc", "sgp"]);
        t.set_site_order(vec!["sgp".into(), "nyc".into()]);
        assert_eq!(sites(&t), ["sgp", "nyc"]);
        // A dead node's site drops out of the candidates.
        let nyc = t
            .partitions()
            .into_iter()
            .find(|p| &*p.origin.node_id == "nyc-1")
            .unwrap();
        nyc.origin.set_alive(false);
        assert_eq!(sites(&t), ["sgp"]);
        // Served locally as well: local wins, whatever the remote order.
        t.upsert_local(&key("shop.com"), entry("shop", 1));
        let m = t.lookup("shop.com", "/").unwrap();
        assert!(m.local);
        assert_eq!(m.app.id(), "shop");
    }

    #[test]
    fn dead_origin_does_not_serve() {
        let t = table(&[("a.com", "a", 1)]);
        t.me().set_alive(false);
        assert!(t.lookup("a.com", "/").is_none());
        t.me().set_alive(true);
        assert!(t.lookup("a.com", "/").is_some());
    }

    #[test]
    fn routes_listing_filters_by_host() {
        let t = table(&[("b.com", "b", 1), ("a.com/x", "ax", 1), ("a.com", "a", 1)]);
        let all: Vec<_> = t
            .routes(None)
            .iter()
            .map(|r| format!("{}{}", r.host, r.path))
            .collect();
        assert_eq!(all, ["a.com", "a.com/x", "b.com"]);
        assert_eq!(t.routes(Some("A.com:80")).len(), 2);
        assert!(t.routes(Some("c.com")).is_empty());
    }

    #[test]
    fn normalize_host_cases() {
        let cases = [
            ("Example.COM", Some("example.com")),
            ("example.com:8443", Some("example.com")),
            ("example.com.", Some("example.com")),
            ("[::1]:8080", Some("[::1]")),
            ("  ", None),
            (":80", None),
        ];
        for (h, want) in cases {
            assert_eq!(normalize_host(h).as_deref(), want, "{h:?}");
        }
    }
}
