//! The control plane without a leader (CONTRACT.md, "Global configuration over the mesh";
//! docs/CONTROL.md): config writes taken at this node, merged with every other node's, and
//! turned into what the data plane reads.
//!
//! Owns:
//! - **writes**: a write through the admin API gets this node's next hybrid-clock reading
//!   ([`clock`]), goes into this node's own partition of the table (which the mesh seals and
//!   replicates like routes), is flushed to `state_dir` ([`persist`]) and audited, all
//!   before it is acknowledged;
//! - **start-up**: the writes persisted by earlier generations of this node are written
//!   into the new generation's partition before the mesh starts, so a policy never vanishes
//!   because its writer restarted;
//! - **the merged view**: for every config key, the write with the latest clock among all
//!   partitions ([`crate::table::Table::config_winner`]), kept current from the table's
//!   dirty keys; route and site policies go to the [`PolicyStore`]; the keys this node keeps
//!   for a departed writer are persisted like its own.
//!
//! Must never: let a value from a peer that does not parse stop the node (it is ignored,
//! counted and logged without its content), log a value (certificates carry keys), or
//! acknowledge a write it has not flushed to disk.

pub mod clock;
pub mod persist;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::policy::{Policies, PolicyStore, RoutePolicy, RouteRule, SitePolicy};
use crate::table::{ConfigValue, Hlc, Table};
use crate::tls::{CertStore, Challenges, Source};
use clock::Clock;
pub use persist::AuditEntry;
use persist::StateDir;

/// Audit entries kept in memory (and read back from `state_dir` at start-up).
pub const AUDIT_KEEP: usize = 10_000;

/// Key prefixes of the config keyspace.
pub const ROUTE_POLICY: &str = "policy/route/";
/// Site policies.
pub const SITE_POLICY: &str = "policy/site/";
/// Uploaded (and ACME) certificates.
pub const CERT: &str = "cert/";

/// ACME HTTP-01 answers: `acme/http01/<token>` → [`Http01Value`].
pub const ACME_HTTP01: &str = "acme/http01/";
/// ACME TLS-ALPN-01 answers: `acme/alpn/<name>` → [`AlpnValue`].
pub const ACME_ALPN: &str = "acme/alpn/";

/// The value of an `acme/http01/<token>` key: what every node answers for the token.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http01Value {
    /// The name being validated.
    pub name: String,
    /// `<token>.<account key thumbprint>`.
    pub key_authorization: String,
}

/// The value of an `acme/alpn/<name>` key.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlpnValue {
    /// SHA-256 of the key authorization, lower-case hex.
    pub digest: String,
}

/// The value of a `cert/<host>` key.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertValue {
    /// The chain, leaf first.
    pub cert_pem: String,
    /// The leaf's private key.
    pub key_pem: String,
    /// `acme` for an issued certificate; absent for an upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl CertValue {
    fn source(&self) -> Source {
        if self.source.as_deref() == Some("acme") {
            Source::Acme
        } else {
            Source::Upload
        }
    }
}

/// A write the control plane could not take.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The state directory could not be written: nothing was acknowledged.
    #[error("state directory {dir}: {source}")]
    Persist {
        /// The directory.
        dir: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The table refused the write (never expected: the clock only rises).
    #[error("the write was not newer than this node's last write of {0}")]
    NotNewer(String),
}

/// A write taken.
#[derive(Debug, Clone)]
pub struct Written {
    /// The key.
    pub key: String,
    /// Its clock.
    pub hlc: Hlc,
}

/// The merged value of one key.
#[derive(Debug, Clone)]
pub struct Winner {
    /// The winning write (never a deletion: deleted keys are absent).
    pub value: Arc<ConfigValue>,
    /// The node whose partition holds it.
    pub holder: Arc<str>,
}

impl Winner {
    /// The value's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.value.value.as_deref().unwrap_or_default()
    }
}

/// Counters of the control plane.
#[derive(Debug, Default)]
pub struct ControlCounters {
    /// Writes taken at this node.
    pub writes: AtomicU64,
    /// Merged values that did not parse (ignored).
    pub invalid_values: AtomicU64,
    /// Times the merged view was brought up to date.
    pub refreshes: AtomicU64,
}

/// The control plane of one node. Cheap to share (`Arc<Control>`).
#[derive(Debug)]
pub struct Control {
    table: Arc<Table>,
    policies: Arc<PolicyStore>,
    node_id: String,
    clock: Clock,
    state: StateDir,
    /// Winners by key, deletions left out (ordered, so a prefix is a range).
    merged: RwLock<BTreeMap<Arc<str>, Winner>>,
    /// Route rules by host, kept across refreshes while their policy is unchanged (each
    /// carries the counter that spreads choices by weight).
    rules: Mutex<HashMap<String, Arc<RouteRule>>>,
    sites: Mutex<HashMap<String, SitePolicy>>,
    /// The clock of every key of this node's partition as flushed to `state_dir`.
    persisted: Mutex<HashMap<Arc<str>, Hlc>>,
    audit: Mutex<VecDeque<AuditEntry>>,
    /// The HTTPS listener's certificate store, once there is one.
    certs: RwLock<Option<Arc<CertStore>>>,
    /// The ACME challenges of every order in the mesh, which the listeners answer.
    challenges: Arc<Challenges>,
    /// Serialises refreshes (a write refreshes at once; the task on every change).
    refreshing: Mutex<()>,
    /// Counters.
    pub counters: ControlCounters,
}

impl Control {
    /// Open `state_dir`, put this node's persisted writes into its (new) partition, and
    /// build the merged view. Call before the mesh starts, so the first seal covers them.
    pub fn open(
        state_dir: &Path,
        table: Arc<Table>,
        policies: Arc<PolicyStore>,
    ) -> Result<Arc<Control>, ControlError> {
        let (state, loaded) =
            StateDir::open(state_dir, AUDIT_KEEP).map_err(|source| ControlError::Persist {
                dir: state_dir.display().to_string(),
                source,
            })?;
        let node_id = table.me().node_id.to_string();
        let clock = Clock::new(&node_id);
        let mut persisted = HashMap::new();
        for (key, value) in loaded.writes {
            clock.observe(&value.hlc);
            let hlc = value.hlc.clone();
            table.write_config_local(&key, value);
            persisted.insert(Arc::from(key), hlc);
        }
        info!(
            state_dir = %state_dir.display(),
            writes = persisted.len(),
            skipped_lines = loaded.bad_lines,
            "control: state loaded"
        );
        let control = Arc::new(Control {
            table,
            policies,
            node_id,
            clock,
            state,
            merged: RwLock::new(BTreeMap::new()),
            rules: Mutex::new(HashMap::new()),
            sites: Mutex::new(HashMap::new()),
            persisted: Mutex::new(persisted),
            audit: Mutex::new(loaded.audit.into()),
            certs: RwLock::new(None),
            challenges: Arc::default(),
            refreshing: Mutex::new(()),
            counters: ControlCounters::default(),
        });
        control.refresh();
        Ok(control)
    }

    /// Write `key` (`None` deletes it) at this node: clock, partition, disk, audit. `token`
    /// names the token that wrote (`write`); `summary` describes the value for the audit
    /// trail (never secret).
    pub fn write(
        &self,
        key: &str,
        value: Option<Vec<u8>>,
        token: &str,
        summary: &str,
    ) -> Result<Written, ControlError> {
        let deleted = value.is_none();
        let written = self.store(key, value)?;
        let hlc = written.hlc.clone();
        let entry = AuditEntry {
            at_ms: hlc.ms,
            hlc: hlc.to_string(),
            node_id: self.node_id.clone(),
            token: token.to_string(),
            action: if deleted { "delete" } else { "put" }.to_string(),
            key: key.to_string(),
            summary: summary.to_string(),
        };
        info!(
            target: "audit",
            key,
            action = %entry.action,
            token,
            hlc = %entry.hlc,
            summary,
            "config write"
        );
        if let Err(e) = self.state.append_audit(&entry) {
            warn!(error = %e, "control: audit line not written");
        }
        {
            let mut audit = self.audit.lock();
            if audit.len() >= AUDIT_KEEP {
                audit.pop_front();
            }
            audit.push_back(entry);
        }
        self.refresh();
        Ok(written)
    }

    /// Write a value this node reports rather than one an operator asked for (a site's
    /// placement status, its RTTs): clock, disk, partition, like [`Control::write`], but no
    /// audit entry.
    pub fn record(&self, key: &str, value: Option<Vec<u8>>) -> Result<Written, ControlError> {
        let written = self.store(key, value)?;
        self.refresh();
        Ok(written)
    }

    /// Clock, disk (first: a write acknowledged is a write that survives a crash), and this
    /// node's partition.
    fn store(&self, key: &str, value: Option<Vec<u8>>) -> Result<Written, ControlError> {
        let hlc = self.clock.tick(now_ms());
        let value = ConfigValue {
            hlc: hlc.clone(),
            value: value.map(Arc::from),
        };
        self.state
            .append_write(key, &value)
            .map_err(|source| self.persist_error(source))?;
        self.persisted.lock().insert(Arc::from(key), hlc.clone());
        if self.table.write_config_local(key, value).is_none() {
            return Err(ControlError::NotNewer(key.to_string()));
        }
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        Ok(Written {
            key: key.to_string(),
            hlc,
        })
    }

    fn persist_error(&self, source: std::io::Error) -> ControlError {
        ControlError::Persist {
            dir: self.state.path().display().to_string(),
            source,
        }
    }

    /// Serve the merged `cert/<host>` keys from `store` (and keep doing so). Blocking:
    /// loading a certificate costs tens of microseconds.
    pub fn set_certs(&self, store: Arc<CertStore>) {
        let _one = self.refreshing.lock();
        for (key, w) in self.list(CERT) {
            self.apply_cert(&store, &key[CERT.len()..], Some(&w));
        }
        *self.certs.write() = Some(store);
    }

    /// The certificate store, if the node serves HTTPS.
    pub fn certs(&self) -> Option<Arc<CertStore>> {
        self.certs.read().clone()
    }

    /// The ACME challenges this node answers (filled from the merged `acme/http01/…` and
    /// `acme/alpn/…` keys).
    pub fn challenges(&self) -> &Arc<Challenges> {
        &self.challenges
    }

    /// The policy store this control plane fills.
    pub fn policies(&self) -> &Arc<PolicyStore> {
        &self.policies
    }

    /// The merged value of `key` (`None`: never written, or deleted).
    pub fn get(&self, key: &str) -> Option<Winner> {
        self.merged.read().get(key).cloned()
    }

    /// Every merged key under `prefix`, in key order.
    pub fn list(&self, prefix: &str) -> Vec<(Arc<str>, Winner)> {
        let merged = self.merged.read();
        merged
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, w)| (k.clone(), w.clone()))
            .collect()
    }

    /// The audit trail of this node, newest first, at most `limit` entries.
    pub fn audit(&self, limit: usize) -> Vec<AuditEntry> {
        self.audit
            .lock()
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect()
    }

    /// Keep the merged view in step with the table until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut changes = self.table.subscribe_config();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                changed = changes.changed() => if changed.is_err() { break },
            }
            // Loading certificates blocks: off the runtime's threads.
            let me = self.clone();
            if tokio::task::spawn_blocking(move || me.refresh())
                .await
                .is_err()
            {
                warn!("control: refresh failed");
            }
        }
    }

    /// Bring the merged view up to date with the keys the table marked dirty.
    pub fn refresh(&self) {
        let _one = self.refreshing.lock();
        let dirty = self.table.take_config_dirty();
        if dirty.is_empty() {
            return;
        }
        self.counters.refreshes.fetch_add(1, Ordering::Relaxed);
        let mut policies_changed = false;
        for key in dirty {
            let winner = self.table.config_winner(&key);
            if let Some((value, _)) = &winner {
                self.clock.observe(&value.hlc);
            }
            self.persist_kept(&key);
            let winner = winner
                .filter(|(v, _)| !v.is_deleted())
                .map(|(value, holder)| Winner { value, holder });
            if let Some(host) = key.strip_prefix(ROUTE_POLICY) {
                policies_changed |= self.apply_route_policy(host, winner.as_ref());
            } else if let Some(site) = key.strip_prefix(SITE_POLICY) {
                policies_changed |= self.apply_site_policy(site, winner.as_ref());
            } else if let Some(host) = key.strip_prefix(CERT)
                && let Some(store) = self.certs()
            {
                self.apply_cert(&store, host, winner.as_ref());
            } else if let Some(token) = key.strip_prefix(ACME_HTTP01) {
                self.apply_http01(token, winner.as_ref());
            } else if let Some(name) = key.strip_prefix(ACME_ALPN) {
                self.apply_alpn(name, winner.as_ref());
            }
            let mut merged = self.merged.write();
            match winner {
                Some(w) => merged.insert(key, w),
                None => merged.remove(&key),
            };
        }
        if policies_changed {
            let rules = self.rules.lock();
            let sites = self.sites.lock();
            self.policies.set_policies(Policies::new(
                rules.iter().map(|(h, r)| (h.clone(), r.clone())),
                sites.iter().map(|(s, p)| (s.clone(), p.clone())),
            ));
        }
    }

    /// A key this node's partition holds under a clock not yet on disk (one it keeps for a
    /// departed writer): flush it, so it survives this node's restart too.
    fn persist_kept(&self, key: &Arc<str>) {
        let Some(own) = self.table.own_config(key) else {
            return;
        };
        let mut persisted = self.persisted.lock();
        if persisted.get(key) == Some(&own.hlc) {
            return;
        }
        match self.state.append_write(key, &own) {
            Ok(()) => {
                persisted.insert(key.clone(), own.hlc.clone());
            }
            Err(e) => warn!(key = %key, error = %e, "control: kept write not persisted"),
        }
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, key: &str, w: &Winner) -> Option<T> {
        match serde_json::from_slice(w.bytes()) {
            Ok(v) => Some(v),
            Err(e) => {
                self.counters.invalid_values.fetch_add(1, Ordering::Relaxed);
                warn!(key, holder = %w.holder, error = %e.classify_name(), "control: merged value ignored: does not parse");
                None
            }
        }
    }

    fn apply_route_policy(&self, host: &str, winner: Option<&Winner>) -> bool {
        let policy: Option<RoutePolicy> =
            winner.and_then(|w| self.parse(&format!("{ROUTE_POLICY}{host}"), w));
        let mut rules = self.rules.lock();
        match policy {
            Some(p) if rules.get(host).is_some_and(|r| r.policy == p) => false,
            Some(p) => {
                rules.insert(host.to_string(), Arc::new(RouteRule::new(p)));
                true
            }
            None => rules.remove(host).is_some(),
        }
    }

    /// Serve (or stop serving) the merged certificate of `host`. What does not parse or
    /// load is logged by host only, never with its content.
    fn apply_cert(&self, store: &CertStore, host: &str, winner: Option<&Winner>) {
        let value: Option<CertValue> = winner.and_then(|w| self.parse(&format!("{CERT}{host}"), w));
        match value {
            Some(v) => {
                // A certificate that moved between upload and ACME leaves its old slot.
                let other = match v.source() {
                    Source::Upload => Source::Acme,
                    Source::Acme => Source::Upload,
                };
                store.remove_dynamic(host, other);
                if let Err(e) = store.set_dynamic(host, v.source(), &v.cert_pem, &v.key_pem) {
                    self.counters.invalid_values.fetch_add(1, Ordering::Relaxed);
                    warn!(host, reason = %e, "control: merged certificate not served");
                    store.remove_dynamic(host, v.source());
                }
            }
            None => {
                store.remove_dynamic(host, Source::Upload);
                store.remove_dynamic(host, Source::Acme);
            }
        }
    }

    fn apply_http01(&self, token: &str, winner: Option<&Winner>) {
        let value: Option<Http01Value> =
            winner.and_then(|w| self.parse(&format!("{ACME_HTTP01}{token}"), w));
        let Some(v) = value else {
            self.challenges.remove_http01(token);
            return;
        };
        if let Err(e) = self
            .challenges
            .set_http01(token, &v.name, &v.key_authorization)
        {
            self.counters.invalid_values.fetch_add(1, Ordering::Relaxed);
            warn!(reason = %e, "control: merged ACME HTTP-01 challenge not answered");
            self.challenges.remove_http01(token);
        }
    }

    fn apply_alpn(&self, name: &str, winner: Option<&Winner>) {
        let value: Option<AlpnValue> =
            winner.and_then(|w| self.parse(&format!("{ACME_ALPN}{name}"), w));
        let digest = value.and_then(|v| decode_hex(&v.digest));
        let Some(digest) = digest else {
            self.challenges.remove_alpn(name);
            return;
        };
        let provider = rustls::crypto::ring::default_provider();
        if let Err(e) = self.challenges.set_alpn(&provider, name, &digest) {
            self.counters.invalid_values.fetch_add(1, Ordering::Relaxed);
            warn!(name, reason = %e, "control: merged ACME TLS-ALPN-01 challenge not answered");
            self.challenges.remove_alpn(name);
        }
    }

    fn apply_site_policy(&self, site: &str, winner: Option<&Winner>) -> bool {
        let policy: Option<SitePolicy> =
            winner.and_then(|w| self.parse(&format!("{SITE_POLICY}{site}"), w));
        let mut sites = self.sites.lock();
        match policy {
            Some(p) if sites.get(site) == Some(&p) => false,
            Some(p) => {
                sites.insert(site.to_string(), p);
                true
            }
            None => sites.remove(site).is_some(),
        }
    }
}

/// How `serde_json` classifies an error, without the input it quotes.
trait Classify {
    fn classify_name(&self) -> &'static str;
}

impl Classify for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "io",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "data",
            serde_json::error::Category::Eof => "eof",
        }
    }
}

/// Lower-case hex into bytes (`None` for anything else, or more than 64 bytes).
pub fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 || hex.len() > 128 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, table: &Arc<Table>) -> (Arc<Control>, Arc<PolicyStore>) {
        let store = Arc::new(PolicyStore::default());
        (
            Control::open(dir, table.clone(), store.clone()).unwrap(),
            store,
        )
    }

    #[test]
    fn a_write_is_in_force_at_once_audited_and_survives_a_new_generation() {
        let dir = tempfile::tempdir().unwrap();
        let table = Arc::new(Table::new("lon-1", "lon", 1));
        let (c, store) = open(dir.path(), &table);
        c.write(
            "policy/route/shop.example.com",
            Some(br#"{"regions":["eu"]}"#.to_vec()),
            "write",
            "regions=eu",
        )
        .unwrap();
        c.write(
            "policy/site/nyc",
            Some(br#"{"drained":true}"#.to_vec()),
            "write",
            "drained",
        )
        .unwrap();
        let p = store.policies();
        assert_eq!(
            p.route("shop.example.com").unwrap().policy.regions,
            Some(vec!["eu".to_string()])
        );
        assert!(p.site_drained("nyc"));
        c.write("policy/site/nyc", None, "write", "").unwrap();
        assert!(!store.policies().site_drained("nyc"));
        let audit = c.audit(10);
        assert_eq!(audit.len(), 3);
        assert_eq!(
            (audit[0].action.as_str(), audit[0].key.as_str()),
            ("delete", "policy/site/nyc")
        );
        drop(c);

        // The next generation of the node: same state_dir, empty table.
        let table = Arc::new(Table::new("lon-1", "lon", 2));
        let (c, store) = open(dir.path(), &table);
        assert!(store.policies().route("shop.example.com").is_some());
        assert!(!store.policies().site_drained("nyc"));
        assert!(
            c.get("policy/site/nyc").is_none(),
            "the deletion persisted too"
        );
        assert_eq!(c.audit(10).len(), 3);
        // Its clock continues above what it wrote before.
        let w = c
            .write("policy/site/lon", Some(b"{}".to_vec()), "write", "")
            .unwrap();
        let before = c
            .get("policy/route/shop.example.com")
            .unwrap()
            .value
            .hlc
            .clone();
        assert!(w.hlc > before);
        assert_eq!(c.list("policy/").len(), 2);
    }

    #[test]
    fn a_value_that_does_not_parse_is_ignored_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let table = Arc::new(Table::new("lon-1", "lon", 1));
        let (c, store) = open(dir.path(), &table);
        c.write(
            "policy/route/a.com",
            Some(b"{\"weights\":{\"x\":-1}}".to_vec()),
            "write",
            "",
        )
        .unwrap();
        assert!(store.policies().route("a.com").is_none());
        assert_eq!(c.counters.invalid_values.load(Ordering::Relaxed), 1);
    }
}
