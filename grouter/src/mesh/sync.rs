//! Anti-entropy between replicas of the table, as pure functions: no sockets, no clocks.
//!
//! Owns: turning the table into digests and deltas, applying a peer's delta, what each peer
//! is known to hold ([`PeerView`]), what a peer has sent of a partition that spans several
//! frames ([`Inbox`]), and **the rule of who may author which partition**:
//!
//! 1. Only a partition's owner authors it. Every partition a delta completes carries the
//!    owner's seal: a signature, by the key of a mesh-CA certificate that names the
//!    partition's node id and site, over the statement of the state the receiver will hold
//!    (generation, version, record, and the set hash of every live entry; see
//!    [`crate::table::state`]). The receiver computes that statement itself from what it
//!    holds plus what arrived, and applies nothing unless the seal covers it. A relay can
//!    forward a partition; it cannot forge, alter, roll back, delete from or re-date it.
//! 2. A node exists only by certificate: a partition without one, or with one that the mesh
//!    CA did not issue, that is revoked or expired, or that names another node or site, is
//!    refused. The certificate travels with the partition, so a node never met directly is
//!    still verifiable.
//! 3. Nobody writes this node's own partition; a generation (a start time) more than
//!    [`GENERATION_SKEW`] ahead of this node's clock is refused.
//! 4. A peer does not relay to us a partition whose owner is connected to us directly: that
//!    node is its only source while it is (not a matter of trust any more, of waste).
//! 5. What a peer can make us hold is bounded ([`crate::table::Limits`], one staged
//!    partition per connection, digests of at most `max_nodes` partitions).
//!
//! What this does not protect against (docs/MESH.md): a relay that withholds updates (the
//! owner's direct connections and other relays repair it), and an owner that lies about its
//! own routes (`mesh.site_domains` bounds which names a site may claim).
//!
//! Must never: do I/O, write this node's own partition, or change the table for a frame it
//! could not verify.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use grouter_protocol::mesh as wire;
use grouter_protocol::nats::RouteKey;

use crate::names::{check_node_id, check_site};
use crate::table::{
    AppFields, AppInterner, ConfigValue, Hlc, Import, ImportOutcome, NodeRecord, ReplicatedConfig,
    ReplicatedEntry, RouteEntry, Seal, Table,
};

/// Most entries in one delta frame (≈ 80 bytes each on the wire).
pub const DELTA_BUDGET: usize = 20_000;

/// How far ahead of this node's clock a generation (microseconds since the Unix epoch) may be;
/// the same bound holds for the clock of a config write.
pub const GENERATION_SKEW: Duration = Duration::from_secs(300);

/// Largest config value a partition may carry (a certificate chain with its key is a few
/// KiB; a policy far less).
pub const MAX_CONFIG_VALUE: usize = 64 * 1024;

/// Longest config key (`cert/` or `policy/route/` and a host name).
pub const MAX_CONFIG_KEY: usize = 512;

/// Why a partition delta (or an entry of one) was refused. Label values of the mesh's
/// rejection metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// Entries for the receiver's own partition.
    OwnPartition,
    /// The sender relayed a partition whose owner is connected to the receiver directly.
    OwnerConnected,
    /// The partition claims a site other than the one its owner's certificate names.
    SiteMismatch,
    /// An older incarnation than the one held (or retired): not an error, just late.
    Stale,
    /// Missing or invalid node id or site, a malformed route key, a key twice, a version
    /// above the one the delta reaches.
    Malformed,
    /// The delta starts above what we hold (an earlier one was lost): the next digest
    /// exchange repairs it.
    Gap,
    /// The owner's seal does not cover the state the delta would produce.
    BadSignature,
    /// No certificate for the partition's owner, or one that names another node.
    UnknownOwner,
    /// A generation too far in the future.
    GenerationInFuture,
    /// A config write whose clock is too far in the future (it would win every merge).
    ConfigInFuture,
    /// Over `max_nodes`, `max_entries_per_partition`, or what a digest may list.
    OverLimit,
    /// A route under none of its site's `mesh.site_domains` (held, never routed).
    DomainNotAllowed,
    /// The owner's certificate is on the mesh CRL.
    Revoked,
    /// The owner's certificate is expired (or not yet valid).
    CertExpired,
    /// The owner's certificate is not from the mesh CA.
    UnknownCa,
}

impl Rejection {
    /// Every reason, in a fixed order.
    pub const ALL: [Rejection; 15] = [
        Rejection::OwnPartition,
        Rejection::OwnerConnected,
        Rejection::SiteMismatch,
        Rejection::Stale,
        Rejection::Malformed,
        Rejection::Gap,
        Rejection::BadSignature,
        Rejection::UnknownOwner,
        Rejection::GenerationInFuture,
        Rejection::ConfigInFuture,
        Rejection::OverLimit,
        Rejection::DomainNotAllowed,
        Rejection::Revoked,
        Rejection::CertExpired,
        Rejection::UnknownCa,
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
            Rejection::BadSignature => "bad_signature",
            Rejection::UnknownOwner => "unknown_owner",
            Rejection::GenerationInFuture => "generation_in_future",
            Rejection::ConfigInFuture => "config_in_future",
            Rejection::OverLimit => "over_limit",
            Rejection::DomainNotAllowed => "domain_not_allowed",
            Rejection::Revoked => "revoked",
            Rejection::CertExpired => "cert_expired",
            Rejection::UnknownCa => "unknown_ca",
        }
    }

    /// Whether the reason says a peer misbehaves (or is broken), as opposed to the ordinary
    /// races of replication (late, or ahead of a lost frame).
    pub fn is_misbehaviour(self) -> bool {
        !matches!(
            self,
            Rejection::Stale | Rejection::Gap | Rejection::OwnerConnected
        )
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

/// A node a mesh-CA certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Node id from the certificate.
    pub node_id: String,
    /// Site from the certificate.
    pub site: String,
}

/// What vouches for owners: the mesh CA for certificates, owners' keys for seals; and this
/// node's own key for sealing its partition.
pub trait Trust {
    /// This node's certificate (DER), sent with its partition.
    fn own_cert(&self) -> Arc<[u8]>;
    /// Sign `statement` with this node's key: `(scheme, signature)`.
    fn sign(&self, statement: &[u8]) -> Option<(u32, Vec<u8>)>;
    /// The node a certificate names, if the mesh CA vouches for it now.
    fn certify(&self, cert: &[u8]) -> Result<Owner, Rejection>;
    /// Whether `signature` (of `scheme`) by `cert`'s key covers `statement`.
    fn verify(&self, cert: &[u8], statement: &[u8], scheme: u32, signature: &[u8]) -> bool;
}

/// What the receiver knows beyond the table and the trust: its clock and its direct peers.
pub struct Context<'a, T: Trust> {
    /// The table deltas apply to.
    pub table: &'a Table,
    /// Certificates and seals.
    pub trust: &'a T,
    /// The node is connected to us directly right now.
    pub is_direct: &'a dyn Fn(&str) -> bool,
    /// Now, in microseconds since the Unix epoch (the unit of generations).
    pub now_micros: u64,
}

impl<T: Trust> std::fmt::Debug for Context<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("me", &self.table.me().node_id)
            .field("now_micros", &self.now_micros)
            .finish_non_exhaustive()
    }
}

/// Outcome of applying one delta.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Entries (and records) that changed the table.
    pub changed: usize,
    /// Partitions dropped, with the reason.
    pub rejected: Vec<(String, Rejection)>,
    /// Live routes held but not routed because their site may not announce them.
    pub not_allowed: usize,
    /// Partitions whose chunks were staged, waiting for the sealed last one.
    pub staged: usize,
}

/// What a peer is known to hold: `node_id → (generation, version)`, set from the peer's
/// digests and advanced by every delta sent to it; which partitions it takes from their
/// owners directly (never relayed to it); and the partition whose chunks are in flight.
#[derive(Debug, Clone)]
pub struct PeerView {
    held: HashMap<String, (u64, u64)>,
    /// When a delta of each partition was last sent to the peer.
    sent_at: HashMap<String, Instant>,
    direct: HashSet<String>,
    /// `node_id → generation` the peer's last digest reported holding: it has the owner's
    /// certificate of those (until then every delta of the partition carries it).
    reported: HashMap<String, u64>,
    /// A partition cut short by the budget: it goes first in the next delta, so the peer
    /// never has more than one partially sent partition to stage.
    partial: Option<String>,
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
            reported: HashMap::new(),
            partial: None,
            grace,
        }
    }

    /// Take in what the peer says it holds (at `now`). Where it reports less than was sent,
    /// the view keeps its lead while the send is recent (in flight), and falls back to the
    /// report once it is not (lost or rejected: sent again). A digest listing more than
    /// `max_partitions` is refused whole (`false`): no honest node holds more.
    pub fn set_from_digest(
        &mut self,
        digest: &wire::Digest,
        now: Instant,
        max_partitions: usize,
    ) -> bool {
        if digest.partitions.len() > max_partitions {
            return false;
        }
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
        self.reported = digest
            .partitions
            .iter()
            .map(|p| (p.node_id.clone(), p.generation))
            .collect();
        self.sent_at.retain(|node, _| self.held.contains_key(node));
        self.direct = digest
            .partitions
            .iter()
            .filter(|p| p.direct)
            .map(|p| p.node_id.clone())
            .collect();
        true
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
/// peer lacks nothing. The peer's own partition is never sent back to it. This node's own
/// partition is sealed with `trust` (once per version, however many peers it goes to).
pub fn delta(
    table: &Table,
    trust: &impl Trust,
    view: &mut PeerView,
    peer: &str,
) -> Option<wire::Delta> {
    let mut budget = DELTA_BUDGET;
    let mut partitions = Vec::new();
    let me = table.me().node_id.clone();
    let mut owners: Vec<Arc<str>> = table
        .digest()
        .into_iter()
        .map(|(o, _)| o.node_id.clone())
        .collect();
    // A partition in flight first (the peer stages it), then this node's own changes (what
    // only we can give), then the rest by name.
    let partial = view.partial.take();
    owners.sort_by_key(|n| (partial.as_deref() != Some(&**n), **n != *me, n.clone()));
    for node_id in owners {
        if budget == 0 {
            break;
        }
        let relayed = *node_id != *me;
        if *node_id == *peer || (relayed && view.direct.contains(&*node_id)) {
            // Its own partition, or one it takes from the owner directly (we would only be
            // relaying it).
            continue;
        }
        let held = view.held(&node_id);
        let Some(mut export) = table.export(&node_id, held, budget) else {
            continue;
        };
        if export.complete && export.seal.is_none() {
            let Some(statement) = export.statement.take() else {
                // A replica without its owner's seal cannot be forwarded (never happens:
                // replicas are only ever imported sealed).
                continue;
            };
            let Some((scheme, signature)) = trust.sign(&statement.to_bytes()) else {
                continue;
            };
            let seal = Seal {
                version: statement.version,
                scheme,
                signature: signature.into(),
            };
            table.set_own_seal(seal.clone());
            export.seal = Some(seal);
        }
        if !export.complete {
            view.partial = Some(node_id.to_string());
        }
        // The certificate goes along until the peer's digest says it holds the partition.
        let peer_has_cert =
            !export.reset && view.reported.get(&*node_id) == Some(&export.origin.generation);
        let owner_cert = if peer_has_cert {
            Vec::new()
        } else if relayed {
            export
                .owner_cert
                .as_deref()
                .map(<[u8]>::to_vec)
                .unwrap_or_default()
        } else {
            trust.own_cert().to_vec()
        };
        budget = budget.saturating_sub(export.entries.len() + export.config.len());
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
            config: export.config.into_iter().map(config_to_wire).collect(),
            seal: export.seal.map(|s| wire::Seal {
                scheme: s.scheme,
                signature: s.signature.to_vec(),
            }),
            owner_cert,
        });
    }
    (!partitions.is_empty()).then_some(wire::Delta { partitions })
}

/// What one peer has sent of a partition that spans several frames, not applied until the
/// sealed last frame arrives. One per connection: an honest sender finishes one partition
/// before it starts cutting another ([`PeerView`]).
#[derive(Debug, Default)]
pub struct Inbox {
    staged: Option<Staged>,
}

#[derive(Debug)]
struct Staged {
    node_id: String,
    site: String,
    generation: u64,
    from_version: u64,
    up_to_version: u64,
    reset: bool,
    record: Option<NodeRecord>,
    owner_cert: Vec<u8>,
    entries: Vec<ReplicatedEntry>,
    /// Config keys staged, by key (each once, the latest version).
    config: HashMap<Arc<str>, ReplicatedConfig>,
    /// Where each key is in `entries`: built when a second frame continues the first (one
    /// frame's keys are distinct in an honest delta, and a repeat fails the seal check).
    index: Option<HashMap<Arc<RouteKey>, usize>>,
    /// The owner's seal, once the last frame brought it.
    seal: Option<wire::Seal>,
}

impl Inbox {
    /// Entries staged (for tests and diagnostics).
    pub fn staged_entries(&self) -> usize {
        self.staged.as_ref().map_or(0, |s| s.entries.len())
    }
}

/// Apply a delta from `sender` under the authority rule (module docs).
pub fn apply(
    cx: &Context<'_, impl Trust>,
    inbox: &mut Inbox,
    sender: Sender<'_>,
    delta: wire::Delta,
) -> Applied {
    let mut out = Applied::default();
    for pd in delta.partitions {
        let node_id = pd.node_id.clone();
        match apply_partition(cx, inbox, sender, pd) {
            Ok(Step::Staged) => out.staged += 1,
            Ok(Step::Applied {
                changed,
                not_allowed,
            }) => {
                out.changed += changed;
                out.not_allowed += not_allowed;
            }
            Err(why) => out.rejected.push((node_id, why)),
        }
    }
    out
}

enum Step {
    Staged,
    Applied { changed: usize, not_allowed: usize },
}

fn apply_partition(
    cx: &Context<'_, impl Trust>,
    inbox: &mut Inbox,
    sender: Sender<'_>,
    pd: wire::PartitionDelta,
) -> Result<Step, Rejection> {
    let table = cx.table;
    if check_node_id(&pd.node_id).is_err() || check_site(&pd.site).is_err() {
        return Err(Rejection::Malformed);
    }
    if *pd.node_id == *table.me().node_id {
        return Err(Rejection::OwnPartition);
    }
    let from_owner = pd.node_id == sender.node_id;
    if from_owner && pd.site != sender.site {
        return Err(Rejection::SiteMismatch);
    }
    if !from_owner && (cx.is_direct)(&pd.node_id) {
        return Err(Rejection::OwnerConnected);
    }
    let skew = u64::try_from(GENERATION_SKEW.as_micros()).unwrap_or(u64::MAX);
    if pd.generation > cx.now_micros.saturating_add(skew) {
        return Err(Rejection::GenerationInFuture);
    }
    let ahead_ms = cx.now_micros.saturating_add(skew) / 1000;
    if pd.config.iter().any(|c| c.hlc_ms > ahead_ms) {
        return Err(Rejection::ConfigInFuture);
    }
    stage(inbox, pd, table.limits().max_entries_per_partition)?;
    if inbox.staged.as_ref().is_none_or(|s| s.seal.is_none()) {
        return Ok(Step::Staged);
    }
    let Some(staged) = inbox.staged.take() else {
        return Ok(Step::Staged);
    };
    let Staged {
        node_id,
        site,
        generation,
        from_version,
        up_to_version,
        reset,
        record,
        owner_cert,
        entries,
        config,
        seal,
        ..
    } = staged;
    let Some(seal) = seal else {
        return Ok(Step::Staged);
    };
    // The certificate: the one that came along, else the one held for the partition.
    let cert: Arc<[u8]> = if owner_cert.is_empty() {
        match table.owner_cert(&node_id) {
            Some(cert) => cert,
            // Continues what we do not hold (what we held was dropped meanwhile): the next
            // digest repairs it, with the certificate.
            None if from_version > 0 && !reset => return Err(Rejection::Gap),
            None => return Err(Rejection::UnknownOwner),
        }
    } else {
        owner_cert.into()
    };
    let owner = cx.trust.certify(&cert)?;
    if owner.node_id != node_id {
        return Err(Rejection::UnknownOwner);
    }
    if owner.site != site {
        return Err(Rejection::SiteMismatch);
    }
    if from_owner {
        // A node retired as dead that speaks for itself again is alive after all (relays
        // cannot bring it back).
        table.unretire(&node_id);
    }
    let import = Import {
        node_id,
        site,
        generation,
        from_version,
        up_to_version,
        reset,
        record,
        entries,
        config: config.into_values().collect(),
        seal: Seal {
            version: up_to_version,
            scheme: seal.scheme,
            signature: seal.signature.into(),
        },
        owner_cert: cert.clone(),
    };
    let (scheme, signature) = (import.seal.scheme, import.seal.signature.clone());
    let outcome = table.import(import, |statement| {
        cx.trust
            .verify(&cert, &statement.to_bytes(), scheme, &signature)
    });
    match outcome {
        ImportOutcome::Applied {
            changed,
            not_allowed,
            ..
        } => Ok(Step::Applied {
            changed,
            not_allowed,
        }),
        ImportOutcome::OwnPartition => Err(Rejection::OwnPartition),
        ImportOutcome::Stale => Err(Rejection::Stale),
        ImportOutcome::Gap => Err(Rejection::Gap),
        ImportOutcome::BadSignature => Err(Rejection::BadSignature),
        ImportOutcome::OverLimit => Err(Rejection::OverLimit),
        ImportOutcome::Malformed => Err(Rejection::Malformed),
    }
}

/// Add one partition delta to the inbox: it continues what is staged of the same
/// incarnation, or starts afresh (dropping what another partition left unfinished).
fn stage(inbox: &mut Inbox, pd: wire::PartitionDelta, max_entries: usize) -> Result<(), Rejection> {
    let continues = inbox.staged.as_ref().is_some_and(|s| {
        s.node_id == pd.node_id
            && s.generation == pd.generation
            && !pd.reset
            && pd.from_version >= s.from_version
            && pd.from_version <= s.up_to_version
    });
    if !continues {
        inbox.staged = Some(Staged {
            node_id: pd.node_id.clone(),
            site: pd.site.clone(),
            generation: pd.generation,
            from_version: pd.from_version,
            up_to_version: pd.from_version,
            reset: pd.reset,
            record: None,
            owner_cert: Vec::new(),
            entries: Vec::new(),
            config: HashMap::new(),
            index: None,
            seal: None,
        });
    }
    let result = merge(inbox, pd, max_entries);
    if result.is_err() {
        inbox.staged = None;
    }
    result
}

fn merge(inbox: &mut Inbox, pd: wire::PartitionDelta, max_entries: usize) -> Result<(), Rejection> {
    let Some(st) = inbox.staged.as_mut() else {
        return Err(Rejection::Malformed);
    };
    if pd.site != st.site || pd.up_to_version < pd.from_version {
        return Err(Rejection::Malformed);
    }
    // Versions rise within a frame (the sender exports in version order), and a key comes
    // at most once (a repeat would also fail the seal check, but is refused as what it is).
    // The set's hasher is seeded per process: keys come from a peer.
    let mut last = pd.from_version;
    let mut seen: HashSet<(&str, &str), foldhash::fast::RandomState> =
        HashSet::with_capacity_and_hasher(pd.entries.len(), Default::default());
    for e in &pd.entries {
        if e.version <= last || e.version > pd.up_to_version || !seen.insert((&e.host, &e.path)) {
            return Err(Rejection::Malformed);
        }
        last = e.version;
    }
    drop(seen);
    let mut keys: HashSet<&str, foldhash::fast::RandomState> =
        HashSet::with_capacity_and_hasher(pd.config.len(), Default::default());
    for c in &pd.config {
        if c.version <= pd.from_version
            || c.version > pd.up_to_version
            || !keys.insert(&c.key)
            || c.key.is_empty()
            || c.key.len() > MAX_CONFIG_KEY
            || c.value.len() > MAX_CONFIG_VALUE
            || check_node_id(&c.hlc_node).is_err()
            || (c.deleted && !c.value.is_empty())
        {
            return Err(Rejection::Malformed);
        }
    }
    drop(keys);
    if st.entries.len() + st.config.len() + pd.config.len() > max_entries {
        return Err(Rejection::OverLimit);
    }
    for c in pd.config {
        let c = config_from_wire(c);
        match st.config.get(&c.key) {
            Some(held) if held.version >= c.version => {}
            _ => {
                st.config.insert(c.key.clone(), c);
            }
        }
    }
    // The entries of one app share one record, as at their owner.
    let mut apps = AppInterner::default();
    if st.entries.is_empty() {
        if pd.entries.len() > max_entries {
            return Err(Rejection::OverLimit);
        }
        st.entries.reserve_exact(pd.entries.len());
        for e in pd.entries {
            st.entries.push(entry_from_wire(e, &mut apps)?);
        }
    } else {
        let entries = &mut st.entries;
        let index = st.index.get_or_insert_with(|| {
            entries
                .iter()
                .enumerate()
                .map(|(i, e)| (e.key.clone(), i))
                .collect()
        });
        for e in pd.entries {
            let entry = entry_from_wire(e, &mut apps)?;
            match index.entry(entry.key.clone()) {
                MapEntry::Occupied(o) => {
                    let held = &mut entries[*o.get()];
                    if entry.version > held.version {
                        *held = entry;
                    }
                }
                MapEntry::Vacant(v) => {
                    if entries.len() >= max_entries {
                        return Err(Rejection::OverLimit);
                    }
                    v.insert(entries.len());
                    entries.push(entry);
                }
            }
        }
    }
    if let Some(r) = pd.record {
        let r = record_from_wire(r);
        if st.record.as_ref().is_none_or(|cur| r.version > cur.version) {
            st.record = Some(r);
        }
    }
    if !pd.owner_cert.is_empty() {
        st.owner_cert = pd.owner_cert;
    }
    st.up_to_version = st.up_to_version.max(pd.up_to_version);
    st.seal = pd.seal;
    Ok(())
}

fn entry_from_wire(e: wire::Entry, apps: &mut AppInterner) -> Result<ReplicatedEntry, Rejection> {
    let key = RouteKey::parse(&format!("{}{}", e.host, e.path)).ok_or(Rejection::Malformed)?;
    if *key.host != *e.host || *key.path != *e.path {
        // A peer sends keys as we normalise them; anything else is not ours to guess.
        return Err(Rejection::Malformed);
    }
    let value = match e.route {
        None => None,
        Some(r) => {
            // Empty strings are absent tags, as at the owner (the seal covers every field).
            let app = apps
                .intern(AppFields {
                    id: &r.app_id,
                    name: tag(&r.app_name),
                    org: tag(&r.org),
                    space: tag(&r.space),
                    segment: tag(&r.isolation_segment),
                })
                .map_err(|_| Rejection::Malformed)?;
            Some(Arc::new(RouteEntry {
                app,
                endpoints: r.endpoints,
                instances: r.instances,
                updated_at_ms: r.updated_at_ms,
            }))
        }
    };
    Ok(ReplicatedEntry {
        key: Arc::new(key),
        version: e.version,
        value,
    })
}

fn config_from_wire(c: wire::ConfigEntry) -> ReplicatedConfig {
    ReplicatedConfig {
        key: Arc::from(c.key),
        version: c.version,
        value: Arc::new(ConfigValue {
            hlc: Hlc {
                ms: c.hlc_ms,
                counter: c.hlc_counter,
                node: Arc::from(c.hlc_node),
            },
            value: (!c.deleted).then(|| Arc::from(c.value)),
        }),
    }
}

fn config_to_wire(c: ReplicatedConfig) -> wire::ConfigEntry {
    wire::ConfigEntry {
        key: c.key.to_string(),
        version: c.version,
        hlc_ms: c.value.hlc.ms,
        hlc_counter: c.value.hlc.counter,
        hlc_node: c.value.hlc.node.to_string(),
        deleted: c.value.is_deleted(),
        value: c
            .value
            .value
            .as_deref()
            .map(<[u8]>::to_vec)
            .unwrap_or_default(),
    }
}

/// An empty tag is an absent one.
fn tag(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

fn entry_to_wire(e: ReplicatedEntry) -> wire::Entry {
    wire::Entry {
        host: e.key.host.to_string(),
        path: e.key.path.to_string(),
        version: e.version,
        route: e.value.map(|r| {
            let app = r.app.fields();
            wire::RouteValue {
                app_id: app.id.to_string(),
                app_name: app.name.unwrap_or_default().to_string(),
                org: app.org.unwrap_or_default().to_string(),
                space: app.space.unwrap_or_default().to_string(),
                isolation_segment: app.segment.unwrap_or_default().to_string(),
                endpoints: r.endpoints,
                instances: r.instances,
                updated_at_ms: r.updated_at_ms,
            }
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

    /// A model of the mesh's trust: a "certificate" is `node@site` (certified unless it
    /// names a node on `revoked`), and a node's seal is a keyed hash under a key only its own
    /// `TestTrust` uses to sign: a relay's trust signs for the relay, never for others.
    struct TestTrust {
        me: String,
        site: String,
    }

    fn key_of(node: &str) -> [u8; 32] {
        blake3::derive_key("grouter sync tests: the key of a node", node.as_bytes())
    }

    impl TestTrust {
        fn of(t: &Table) -> TestTrust {
            TestTrust {
                me: t.me().node_id.to_string(),
                site: t.me().site.to_string(),
            }
        }
    }

    const REVOKED: &str = "revoked-1";

    impl Trust for TestTrust {
        fn own_cert(&self) -> Arc<[u8]> {
            Arc::from(format!("{}@{}", self.me, self.site).as_bytes())
        }
        fn sign(&self, statement: &[u8]) -> Option<(u32, Vec<u8>)> {
            Some((
                7,
                blake3::keyed_hash(&key_of(&self.me), statement)
                    .as_bytes()
                    .to_vec(),
            ))
        }
        fn certify(&self, cert: &[u8]) -> Result<Owner, Rejection> {
            let text = std::str::from_utf8(cert).map_err(|_| Rejection::UnknownCa)?;
            let (node, site) = text.split_once('@').ok_or(Rejection::UnknownCa)?;
            if node == REVOKED {
                return Err(Rejection::Revoked);
            }
            Ok(Owner {
                node_id: node.into(),
                site: site.into(),
            })
        }
        fn verify(&self, cert: &[u8], statement: &[u8], scheme: u32, sig: &[u8]) -> bool {
            let Ok(owner) = self.certify(cert) else {
                return false;
            };
            scheme == 7 && blake3::keyed_hash(&key_of(&owner.node_id), statement).as_bytes() == sig
        }
    }

    /// Apply `d` at `to` as sent by `sender`, with no direct peers, now.
    fn apply_at(to: &Table, inbox: &mut Inbox, sender: Sender<'_>, d: wire::Delta) -> Applied {
        let trust = TestTrust::of(to);
        let cx = Context {
            table: to,
            trust: &trust,
            is_direct: &|_| false,
            now_micros: 1_000_000,
        };
        apply(&cx, inbox, sender, d)
    }

    fn sender_of(t: &Table) -> Sender<'_> {
        let me = t.me();
        Sender {
            node_id: &me.node_id,
            site: &me.site,
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
                        .map(move |(_, e)| {
                            (name.clone(), format!("{}:{}", e.app.id(), e.endpoints))
                        })
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
        match delta(from, &TestTrust::of(from), view, &to.me().node_id) {
            Some(d) => apply_at(to, &mut Inbox::default(), sender_of(from), d),
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
        assert!(delta(&a, &TestTrust::of(&a), &mut view, "nyc-1").is_none());
        a.remove_local(&key("shop.com"));
        send(&a, &b, &mut view);
        assert!(b.lookup("shop.com", "/").is_none());
    }

    /// The one delta `from` would send `to` now (a fresh view: everything it holds).
    fn one_delta(from: &Table, to: &str) -> wire::Delta {
        delta(from, &TestTrust::of(from), &mut PeerView::default(), to).expect("a delta")
    }

    /// `owner` (lon-1) serves shop.com; relay (mal-1, a genuine member) holds a verified copy;
    /// the victim (nyc-1) holds it too, from the relay. What the relay then sends, however it
    /// tampers with the owner's partition, changes nothing and is counted.
    #[test]
    fn a_relay_cannot_forge_roll_back_delete_or_re_date_anothers_partition() {
        let owner = Table::new("lon-1", "lon", 1);
        let tagged = crate::table::App::new(AppFields {
            id: "shop",
            name: Some("shop"),
            org: Some("acme"),
            space: Some("prod"),
            segment: Some("seg-a"),
        })
        .unwrap();
        owner.upsert_local(
            &key("shop.com"),
            RouteEntry {
                app: Arc::new(tagged),
                ..entry("shop", 2)
            },
        );
        owner.update_local_record(|r| r.advertise = "10.0.0.1:7000".into());
        let relay = Table::new("mal-1", "mal", 1);
        let victim = Table::new("nyc-1", "nyc", 1);
        send(&owner, &relay, &mut PeerView::default());
        let honest = one_delta(&relay, "nyc-1");
        let r = apply_at(
            &victim,
            &mut Inbox::default(),
            sender_of(&relay),
            honest.clone(),
        );
        assert!(r.rejected.is_empty(), "an honest relay is accepted: {r:?}");
        let view = victim.routes(Some("shop.com"));
        let held = &view[0].servers[0].1.app;
        assert_eq!(held.identity(), Some(("acme", "prod", "shop")));
        assert_eq!(held.segment(), Some("seg-a"));
        let before = state(&victim);
        let lon = |d: &wire::Delta| {
            d.partitions
                .iter()
                .find(|p| p.node_id == "lon-1")
                .cloned()
                .expect("lon-1's partition")
        };
        let tamper = |f: &dyn Fn(&mut wire::PartitionDelta)| {
            let mut p = lon(&honest);
            f(&mut p);
            wire::Delta {
                partitions: vec![p],
            }
        };
        let tombstone = |version| wire::Entry {
            host: "shop.com".into(),
            path: String::new(),
            version,
            route: None,
        };
        let attacks: Vec<(&str, wire::Delta, Rejection)> = vec![
            (
                "a tombstone at version 2^62, under the owner's old seal",
                tamper(&|p| {
                    p.up_to_version = 1 << 62;
                    p.entries = vec![tombstone(1 << 62)];
                }),
                Rejection::BadSignature,
            ),
            (
                "a tombstone above the sealed version",
                tamper(&|p| {
                    let v = p.up_to_version;
                    p.entries = vec![tombstone(v + 1)];
                }),
                Rejection::Malformed,
            ),
            (
                "a tombstone at a version above what the victim holds, sealed by nobody",
                tamper(&|p| {
                    p.up_to_version += 1;
                    let v = p.up_to_version;
                    p.entries = vec![tombstone(v)];
                }),
                Rejection::BadSignature,
            ),
            (
                "another app for the route",
                tamper(&|p| {
                    if let Some(r) = p.entries[0].route.as_mut() {
                        r.app_id = "evil".into();
                    }
                }),
                Rejection::BadSignature,
            ),
            // Issue 12: the app's identity across foundations and its isolation segment
            // are the owner's word too: a relay cannot move an app to another org or space
            // (and so merge it with another app in `/v1/apps`), rename it, or re-segment it.
            (
                "another org for the app",
                tamper(&|p| {
                    if let Some(r) = p.entries[0].route.as_mut() {
                        r.org = "evil-org".into();
                    }
                }),
                Rejection::BadSignature,
            ),
            (
                "the org dropped (the app merged into an untagged one)",
                tamper(&|p| {
                    if let Some(r) = p.entries[0].route.as_mut() {
                        r.org.clear();
                    }
                }),
                Rejection::BadSignature,
            ),
            (
                "another space for the app",
                tamper(&|p| {
                    if let Some(r) = p.entries[0].route.as_mut() {
                        r.space = "evil-space".into();
                    }
                }),
                Rejection::BadSignature,
            ),
            (
                "another name for the app",
                tamper(&|p| {
                    if let Some(r) = p.entries[0].route.as_mut() {
                        r.app_name = "evil".into();
                    }
                }),
                Rejection::BadSignature,
            ),
            (
                "another isolation segment for the route",
                tamper(&|p| {
                    if let Some(r) = p.entries[0].route.as_mut() {
                        r.isolation_segment = "seg-evil".into();
                    }
                }),
                Rejection::BadSignature,
            ),
            (
                "another advertised address",
                tamper(&|p| {
                    if let Some(r) = p.record.as_mut() {
                        r.advertise = "attacker:7000".into();
                    }
                }),
                Rejection::BadSignature,
            ),
            (
                "the entries dropped (a deletion by omission)",
                tamper(&|p| p.entries.clear()),
                Rejection::BadSignature,
            ),
            (
                "sealed by the relay itself",
                tamper(&|p| {
                    let stmt = b"anything";
                    let (scheme, sig) = TestTrust::of(&relay).sign(stmt).unwrap();
                    p.seal = Some(wire::Seal {
                        scheme,
                        signature: sig,
                    });
                }),
                Rejection::BadSignature,
            ),
            (
                "the relay's own certificate as the owner's",
                tamper(&|p| p.owner_cert = b"mal-1@mal".to_vec()),
                Rejection::UnknownOwner,
            ),
            (
                "a generation far in the future",
                tamper(&|p| p.generation = u64::MAX),
                Rejection::GenerationInFuture,
            ),
            (
                "a newer generation under the old seal",
                tamper(&|p| p.generation = 2),
                Rejection::BadSignature,
            ),
            (
                "moved to another site",
                tamper(&|p| p.site = "mal".into()),
                Rejection::SiteMismatch,
            ),
        ];
        for (what, d, want) in attacks {
            // A node that does not hold the partition yet refuses it…
            let fresh = Table::new("sgp-1", "sgp", 1);
            let r = apply_at(&fresh, &mut Inbox::default(), sender_of(&relay), d.clone());
            assert_eq!(r.rejected, [("lon-1".to_string(), want)], "{what}");
            assert_eq!(fresh.partitions().len(), 1, "{what}: nothing imported");
            // …and one that holds it keeps what it holds (a version it has is a no-op).
            let r = apply_at(&victim, &mut Inbox::default(), sender_of(&relay), d);
            assert!(
                r.rejected.iter().all(|(_, why)| *why == want),
                "{what}: {r:?}"
            );
            assert_eq!(state(&victim), before, "{what}: nothing changed");
        }
        // A resend of what the victim holds, whatever it says, is a no-op.
        let r = apply_at(
            &victim,
            &mut Inbox::default(),
            sender_of(&relay),
            tamper(&|p| p.entries = vec![tombstone(p.up_to_version)]),
        );
        assert_eq!((r.changed, r.rejected.len()), (0, 0));
        assert_eq!(state(&victim), before);
        // The owner's later updates still arrive (nothing was re-dated past them).
        owner.upsert_local(&key("shop.com"), entry("shop", 3));
        let mut view = PeerView::default();
        view.set_from_digest(&digest(&victim, |_| false), Instant::now(), usize::MAX);
        let r = send(&owner, &victim, &mut view);
        assert!(r.rejected.is_empty(), "{r:?}");
        assert_eq!(
            state(&victim)["lon-1"].1,
            [("shop.com".into(), "shop:3".into())]
        );
    }

    #[test]
    fn nodes_exist_only_by_certificate_and_nobody_writes_the_receivers_partition() {
        let victim = Table::new("lon-1", "lon", 1);
        victim.upsert_local(&key("mine.com"), entry("mine", 1));
        let mal = Table::new("mal-1", "mal", 1);
        let ghost = |node: &str, site: &str, cert: &[u8]| wire::Delta {
            partitions: vec![wire::PartitionDelta {
                node_id: node.into(),
                site: site.into(),
                generation: 5,
                from_version: 0,
                up_to_version: 1,
                reset: false,
                record: None,
                config: vec![],
                entries: vec![wire::Entry {
                    host: "mine.com".into(),
                    path: String::new(),
                    version: 1,
                    route: Some(wire::RouteValue {
                        app_id: "evil".into(),
                        endpoints: 1,
                        ..Default::default()
                    }),
                }],
                seal: Some(wire::Seal {
                    scheme: 7,
                    signature: vec![0; 32],
                }),
                owner_cert: cert.to_vec(),
            }],
        };
        let before = state(&victim);
        for (what, d, want) in [
            (
                "a ghost without a certificate",
                ghost("lon-9", "lon", b""),
                Rejection::UnknownOwner,
            ),
            (
                "a ghost with garbage for one",
                ghost("lon-9", "lon", b"\xff"),
                Rejection::UnknownCa,
            ),
            (
                "a revoked node",
                ghost(REVOKED, "lon", b"revoked-1@lon"),
                Rejection::Revoked,
            ),
            (
                "another node's certificate",
                ghost("lon-9", "lon", b"mal-1@mal"),
                Rejection::UnknownOwner,
            ),
            (
                "the receiver's own partition",
                ghost("lon-1", "lon", b"lon-1@lon"),
                Rejection::OwnPartition,
            ),
            (
                "the sender's own, under another site",
                ghost("mal-1", "lon", b"mal-1@mal"),
                Rejection::SiteMismatch,
            ),
            (
                "an invalid node id",
                ghost("Lon 9", "lon", b""),
                Rejection::Malformed,
            ),
        ] {
            let r = apply_at(&victim, &mut Inbox::default(), sender_of(&mal), d);
            assert_eq!(r.rejected.len(), 1, "{what}");
            assert_eq!(r.rejected[0].1, want, "{what}");
            assert_eq!(state(&victim), before, "{what}: nothing changed");
        }
        assert!(victim.lookup("mine.com", "/").unwrap().local);
    }

    #[test]
    fn what_a_peer_can_make_a_node_hold_is_bounded() {
        let victim = Table::new("lon-1", "lon", 1);
        victim.set_limits(crate::table::Limits {
            max_nodes: 3,
            max_entries_per_partition: 100,
        });
        // A genuine partition over the entry limit: refused whole, in one frame or staged.
        let big = Table::new("mal-1", "mal", 1);
        for i in 0..101 {
            big.upsert_local(&key(&format!("r{i}.com")), entry("a", 1));
        }
        let r = send(&big, &victim, &mut PeerView::default());
        assert_eq!(r.rejected, [("mal-1".to_string(), Rejection::OverLimit)]);
        assert_eq!(victim.partitions().len(), 1);
        // Chunks that stage more than the limit are dropped as soon as they would.
        let mut inbox = Inbox::default();
        let mut chunk = one_delta(&big, "lon-1");
        chunk.partitions[0].seal = None;
        chunk.partitions[0].entries.truncate(60);
        chunk.partitions[0].up_to_version = 60;
        let r = apply_at(&victim, &mut inbox, sender_of(&big), chunk.clone());
        assert_eq!((r.staged, inbox.staged_entries()), (1, 60));
        let mut next = one_delta(&big, "lon-1");
        next.partitions[0].seal = None;
        next.partitions[0].from_version = 60;
        next.partitions[0].entries.drain(..60);
        let r = apply_at(&victim, &mut inbox, sender_of(&big), next);
        assert_eq!(r.rejected, [("mal-1".to_string(), Rejection::OverLimit)]);
        assert_eq!(inbox.staged_entries(), 0, "the staging is dropped");
        // Partitions beyond max_nodes (the receiver's own counts).
        for n in ["a-1", "b-1", "c-1"] {
            let t = Table::new(n, &n[..1], 1);
            t.upsert_local(&key("x.com"), entry("x", 1));
            let r = send(&t, &victim, &mut PeerView::default());
            if n == "c-1" {
                assert_eq!(r.rejected, [("c-1".to_string(), Rejection::OverLimit)]);
            } else {
                assert!(r.rejected.is_empty(), "{r:?}");
            }
        }
        assert_eq!(victim.partitions().len(), 3);
        // A digest listing more partitions than max_nodes is refused whole.
        let mut view = PeerView::default();
        let huge = wire::Digest {
            partitions: (0..4)
                .map(|i| wire::DigestEntry {
                    node_id: format!("n-{i}"),
                    ..Default::default()
                })
                .collect(),
        };
        assert!(!view.set_from_digest(&huge, Instant::now(), 3));
        assert_eq!(view.held("n-0"), None);
    }

    #[test]
    fn malformed_partitions_are_refused_without_a_change() {
        let victim = Table::new("lon-1", "lon", 1);
        let owner = Table::new("nyc-1", "nyc", 1);
        owner.upsert_local(&key("a.com"), entry("a", 1));
        owner.upsert_local(&key("b.com"), entry("b", 1));
        let honest = one_delta(&owner, "lon-1");
        type Tamper = Box<dyn Fn(&mut wire::PartitionDelta)>;
        let cases: Vec<(&str, Tamper)> = vec![
            (
                "a key twice",
                Box::new(|p| {
                    let dup = p.entries[0].clone();
                    p.entries.push(dup);
                }),
            ),
            (
                "a version above up_to",
                Box::new(|p| p.entries[0].version = p.up_to_version + 1),
            ),
            ("version zero", Box::new(|p| p.entries[0].version = 0)),
            (
                "a key not in normal form",
                Box::new(|p| p.entries[0].host = "A.com".into()),
            ),
            (
                "up_to below from",
                Box::new(|p| p.from_version = p.up_to_version + 1),
            ),
        ];
        for (what, f) in cases {
            let mut d = honest.clone();
            f(&mut d.partitions[0]);
            let r = apply_at(&victim, &mut Inbox::default(), sender_of(&owner), d);
            assert_eq!(
                r.rejected,
                [("nyc-1".to_string(), Rejection::Malformed)],
                "{what}"
            );
            assert_eq!(victim.partitions().len(), 1, "{what}");
        }
        let r = apply_at(&victim, &mut Inbox::default(), sender_of(&owner), honest);
        assert!(r.rejected.is_empty());
    }

    /// p and q are not connected; r relays q's partition to p, which verifies it against q's
    /// seal; r's replica survives a purge of its tombstones (they are not hashed).
    #[test]
    fn a_partial_mesh_converges_through_a_relay_that_cannot_tamper() {
        let p = Table::new("p-1", "p", 1);
        let r = Table::new("r-1", "r", 1);
        let q = Table::new("q-1", "q", 1);
        q.upsert_local(&key("kept.com"), entry("k", 1));
        q.upsert_local(&key("gone.com"), entry("g", 1));
        q.remove_local(&key("gone.com"));
        send(&q, &r, &mut PeerView::default());
        r.purge_tombstones("q-1", u64::MAX);
        let out = send(&r, &p, &mut PeerView::default());
        assert!(out.rejected.is_empty(), "{out:?}");
        assert_eq!(state(&p)["q-1"], state(&q)["q-1"]);
        assert!(p.lookup("kept.com", "/").is_some());
        assert!(p.lookup("gone.com", "/").is_none());
    }

    #[test]
    fn routes_outside_a_sites_domains_are_held_and_relayed_but_never_routed() {
        let owner = Table::new("lon-1", "lon", 1);
        owner.upsert_local(&key("shop.apps.example.com"), entry("shop", 1));
        owner.upsert_local(&key("bank.example.org"), entry("evil", 1));
        let victim = Table::new("nyc-1", "nyc", 1);
        victim.set_site_domains(HashMap::from([(
            "lon".to_string(),
            vec!["apps.example.com".to_string()],
        )]));
        let r = send(&owner, &victim, &mut PeerView::default());
        assert!(r.rejected.is_empty(), "{r:?}");
        assert_eq!(r.not_allowed, 1);
        assert!(victim.lookup("shop.apps.example.com", "/").is_some());
        assert!(victim.lookup("bank.example.org", "/").is_none());
        assert!(victim.sites_for_host("bank.example.org").is_none());
        // Forwarded intact: a third node without the rule verifies and holds both.
        let third = Table::new("sgp-1", "sgp", 1);
        let r = send(&victim, &third, &mut PeerView::default());
        assert!(r.rejected.is_empty(), "{r:?}");
        assert!(third.lookup("bank.example.org", "/").is_some());
    }

    #[test]
    fn domain_patterns() {
        for (d, host, want) in [
            ("apps.example.com", "apps.example.com", true),
            ("apps.example.com", "shop.apps.example.com", true),
            ("apps.example.com", "*.apps.example.com", true),
            ("apps.example.com", "evilapps.example.com", false),
            ("apps.example.com", "example.com", false),
            ("*.lon.example.com", "a.lon.example.com", true),
            ("*.lon.example.com", "a.b.lon.example.com", true),
            ("*.lon.example.com", "lon.example.com", false),
            ("*.lon.example.com", "xlon.example.com", false),
        ] {
            let t = Table::new("nyc-1", "nyc", 1);
            t.set_site_domains(HashMap::from([("lon".to_string(), vec![d.to_string()])]));
            assert_eq!(t.site_may_announce("lon", host), want, "{d} / {host}");
            assert!(t.site_may_announce("sgp", host), "a site without a list");
        }
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
        view.set_from_digest(&digest(&b, |_| false), Instant::now(), usize::MAX);
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
        let d = delta(&a, &TestTrust::of(&a), &mut view, "nyc-1").unwrap();
        assert!(d.partitions[0].reset);
        apply_at(&b, &mut Inbox::default(), sender_of(&a), d);
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
        view.set_from_digest(&empty, t0, usize::MAX);
        assert!(delta(&a, &TestTrust::of(&a), &mut view, "nyc-1").is_some());
        // The peer's next digest was sent before our delta arrived: nothing is resent.
        view.set_from_digest(&empty, t0 + Duration::from_millis(500), usize::MAX);
        assert!(
            delta(&a, &TestTrust::of(&a), &mut view, "nyc-1").is_none(),
            "in flight, not lost"
        );
        // Still missing well after it was sent: lost, so sent again.
        view.set_from_digest(&empty, t0 + Duration::from_secs(3), usize::MAX);
        assert!(
            delta(&a, &TestTrust::of(&a), &mut view, "nyc-1").is_some(),
            "lost, so resent"
        );
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
        view.set_from_digest(&direct, Instant::now(), usize::MAX);
        // …while the owner itself still sends it.
        let mut owner_view = PeerView::default();
        owner_view.set_from_digest(&direct, Instant::now(), usize::MAX);
        a.upsert_local(&key("y.com"), entry("y", 1));
        let own = delta(&a, &TestTrust::of(&a), &mut owner_view, "nyc-1");
        assert!(own.is_some_and(|d| d.partitions.iter().any(|p| p.node_id == "lon-1")));
        let relayed = delta(&b, &TestTrust::of(&b), &mut view, "nyc-1").map(|d| {
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
        let mut inbox = Inbox::default();
        while let Some(d) = delta(&a, &TestTrust::of(&a), &mut view, "nyc-1") {
            assert!(d.partitions.iter().map(|p| p.entries.len()).sum::<usize>() <= DELTA_BUDGET);
            let sealed = d.partitions[0].seal.is_some();
            let r = apply_at(&b, &mut inbox, sender_of(&a), d);
            assert!(r.rejected.is_empty(), "{r:?}");
            frames += 1;
            if !sealed {
                // Staged, not applied: nothing of it is routed yet.
                assert_eq!(b.stats().routes, 0);
                assert_eq!(inbox.staged_entries(), DELTA_BUDGET * frames);
            }
        }
        assert_eq!(frames, 3);
        assert_eq!(inbox.staged_entries(), 0);
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
            let mut inboxes: HashMap<(usize, usize), Inbox> = HashMap::new();
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
                        let trust = TestTrust::of(&tables[from]);
                        if let Some(d) =
                            delta(&tables[from], &trust, view, &tables[to].me().node_id)
                        {
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
                            let inbox = inboxes.entry((to, from)).or_default();
                            let r = apply_at(&tables[to], inbox, sender_of(&tables[from]), d);
                            assert!(
                                !r.rejected.iter().any(|(_, why)| why.is_misbehaviour()),
                                "seed {seed}: an honest delta refused: {r:?}"
                            );
                        }
                        Msg::Digest(d) => {
                            // The digest's sender tells the receiver what it holds.
                            views.entry((to, from)).or_default().set_from_digest(
                                &d,
                                Instant::now(),
                                usize::MAX,
                            );
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
