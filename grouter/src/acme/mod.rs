//! Automatic certificates from an ACME CA, ordered once for the whole mesh (CONTRACT.md
//! "Automatic certificates (ACME)"; docs/TLS.md).
//!
//! Owns: deciding, every second, which routed names under `acme.domains` need a
//! certificate (none valid, or past `renew_at` of its lifetime); electing the one node that
//! orders each ([`plan::issuer`]) and holding the lease (`acme/order/<name>`); the mesh's one
//! ACME account (`acme/account`); driving an order (resuming the one a dead issuer left);
//! publishing its challenges as config keys, which every node answers
//! ([`crate::control::ACME_HTTP01`], [`crate::control::ACME_ALPN`]); and storing the
//! certificate as `cert/<name>` with `source: "acme"`, which replicates and serves like an
//! upload.
//!
//! Must never: order a name outside `acme.domains` or one that is not routed (no issuance
//! for arbitrary SNI); order on the minority side of a partition ([`plan::quorum`]); store a
//! certificate that fails [`client::accept`]; log a key or an account credential; let a CA's
//! answer stop the node (every failure is recorded in the name's record and backs off).

pub mod client;
pub mod plan;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{AcmeChallenge, AcmeConfig};
use crate::control::{ACME_ALPN, ACME_HTTP01, AlpnValue, CERT, CertValue, Control, Http01Value};
use crate::mesh::Mesh;
use crate::mesh::liveness::Verdict;
use crate::table::Table;
use client::Transport;
use plan::{Candidate, OrderRecord};

/// `acme/order/<name>`: the name's [`OrderRecord`].
pub const ORDER: &str = "acme/order/";
/// `acme/account`: the mesh's ACME account.
pub const ACCOUNT: &str = "acme/account";

/// How often the names are looked at.
const TICK: Duration = Duration::from_secs(1);
/// Longest one attempt may take, from claim to certificate.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest wait for the CA to validate, or to issue.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(1.5)
    .timeout(Duration::from_secs(120));
/// Longest wait for a challenge to reach the peers before the CA is told to look.
const PROPAGATE_TIMEOUT: Duration = Duration::from_secs(5);

/// The value of `acme/account`.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountValue {
    /// The CA it belongs to.
    directory_url: String,
    /// `instant-acme`'s credentials (the account key: a secret).
    credentials: serde_json::Value,
}

/// The counters of ACME.
#[derive(Debug, Default)]
pub struct AcmeMetrics {
    /// Orders placed at the CA by this node.
    pub orders: Counter,
    /// Attempts that failed at this node.
    pub failures: Counter,
    /// Certificates this node obtained (first issues and renewals).
    pub issued: Counter,
    /// Of those, renewals of a name that had a certificate.
    pub renewals: Counter,
}

impl AcmeMetrics {
    /// Register in `metrics`.
    pub fn register(&self, metrics: &crate::metrics::Metrics) {
        for (name, help, c) in [
            (
                "acme_orders",
                "ACME orders placed at the CA by this node",
                &self.orders,
            ),
            (
                "acme_failures",
                "ACME attempts that failed at this node",
                &self.failures,
            ),
            (
                "acme_issued",
                "ACME certificates obtained by this node",
                &self.issued,
            ),
            (
                "acme_renewals",
                "ACME certificates renewed by this node",
                &self.renewals,
            ),
        ] {
            metrics.register(name, help, c.clone());
        }
    }
}

/// What one node contributes to ACME.
#[derive(Debug)]
pub struct Acme {
    settings: AcmeConfig,
    me: String,
    site: String,
    control: Arc<Control>,
    table: Arc<Table>,
    mesh: Option<Arc<Mesh>>,
    transport: Transport,
    metrics: Arc<AcmeMetrics>,
    /// Names (and [`ACCOUNT`]) this node is working on.
    working: Mutex<HashSet<String>>,
}

/// A removal from [`Acme::working`] when the work ends, however it ends.
struct Working(Arc<Acme>, String);

impl Drop for Working {
    fn drop(&mut self) {
        self.0.working.lock().remove(&self.1);
    }
}

/// Unix milliseconds now.
fn now_ms() -> u64 {
    crate::control::now_ms()
}

fn ms_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `(notBefore, notAfter)` in Unix ms of the leaf of a PEM chain.
fn validity_of_pem(pem: &str) -> Option<(u64, u64)> {
    let der = rustls_pemfile::certs(&mut pem.as_bytes()).next()?.ok()?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&der).ok()?;
    let v = leaf.validity();
    let ms = |t: i64| u64::try_from(t).ok().map(|s| s.saturating_mul(1000));
    Some((ms(v.not_before.timestamp())?, ms(v.not_after.timestamp())?))
}

impl Acme {
    /// ACME for this node as `settings` say; `extra_roots` is the PEM of `acme.ca_roots`.
    pub fn new(
        settings: AcmeConfig,
        extra_roots: Option<&[u8]>,
        control: Arc<Control>,
        table: Arc<Table>,
        mesh: Option<Arc<Mesh>>,
        metrics: Arc<AcmeMetrics>,
    ) -> Result<Arc<Acme>, client::ClientError> {
        let transport = Transport::new(extra_roots)?;
        Ok(Arc::new(Acme {
            settings,
            me: table.me().node_id.to_string(),
            site: table.me().site.to_string(),
            control,
            table,
            mesh,
            transport,
            metrics,
            working: Mutex::new(HashSet::new()),
        }))
    }

    /// Look at the names every second until `shutdown`; attempts in flight are dropped with
    /// it (their lease lapses, and a node resumes the order).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.clone().step(&shutdown);
        }
    }

    /// The live nodes (this one included) and whether they reach a majority of the known
    /// sites.
    fn view(&self) -> (Vec<(String, String)>, bool) {
        let mut live = vec![(self.me.clone(), self.site.clone())];
        let mut known: HashSet<String> = HashSet::from([self.site.clone()]);
        let mut reachable = known.clone();
        if let Some(mesh) = &self.mesh {
            for n in mesh.nodes() {
                known.insert(n.origin.site.to_string());
                if n.state == Verdict::Alive {
                    reachable.insert(n.origin.site.to_string());
                    live.push((n.origin.node_id.to_string(), n.origin.site.to_string()));
                }
            }
        }
        let quorum = plan::quorum(known.len(), reachable.len());
        (live, quorum)
    }

    /// The `(notBefore, notAfter)` of the certificate `name` is served with, if any: a file,
    /// an upload or an ACME certificate, for the name or its wildcard.
    fn served(&self, name: &str) -> Option<(u64, u64)> {
        let store = self.control.certs()?;
        let wildcard = name
            .split_once('.')
            .map(|(_, parent)| format!("*.{parent}"));
        let found = store
            .get(name)
            .or_else(|| wildcard.and_then(|w| store.get(&w)))?;
        Some((ms_of(found.meta.not_before), ms_of(found.meta.not_after)))
    }

    /// The `(notBefore, notAfter)` of what the mesh holds as `cert/<name>` (an upload or an
    /// ACME certificate, served or not: a file may shadow it).
    fn replicated(&self, name: &str) -> Option<(u64, u64)> {
        let w = self.control.get(&format!("{CERT}{name}"))?;
        let value: CertValue = serde_json::from_slice(w.bytes()).ok()?;
        validity_of_pem(&value.cert_pem)
    }

    /// Whether `name` needs a certificate at `now`: neither the one served nor the one the
    /// mesh holds is short of its renewal time. (Both count: a file that shadows a fresh
    /// ACME certificate must not make the mesh order again and again.)
    fn due(&self, name: &str, now: u64) -> bool {
        let fresh = |v: Option<(u64, u64)>| {
            v.is_some_and(|(nb, na)| {
                now < plan::renew_at(nb, na, self.settings.renew_at, plan::jitter_of(name))
            })
        };
        !fresh(self.served(name)) && !fresh(self.replicated(name))
    }

    fn record(&self, name: &str) -> Option<OrderRecord> {
        let w = self.control.get(&format!("{ORDER}{name}"))?;
        OrderRecord::parse(w.bytes())
    }

    fn save(&self, name: &str, rec: &OrderRecord) -> Result<(), String> {
        self.control
            .record(&format!("{ORDER}{name}"), Some(rec.encode()))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn account_value(&self) -> Option<AccountValue> {
        let w = self.control.get(ACCOUNT)?;
        let v: AccountValue = serde_json::from_slice(w.bytes()).ok()?;
        (v.directory_url == self.settings.directory_url).then_some(v)
    }

    /// Start the work this node is due to do now.
    fn step(self: Arc<Self>, shutdown: &CancellationToken) {
        let now = now_ms();
        let names = self
            .table
            .live_hosts(|h| !h.starts_with("*.") && self.settings.covers(h));
        let due: Vec<_> = names.into_iter().filter(|n| self.due(n, now)).collect();
        if due.is_empty() {
            return;
        }
        tracing::debug!(due = due.len(), "acme: names due");
        let (live, quorum) = self.view();
        if !quorum {
            return;
        }
        let candidates: Vec<Candidate<'_>> = live
            .iter()
            .map(|(n, s)| Candidate {
                node_id: n,
                site: s,
            })
            .collect();
        let alive = |id: &str| live.iter().any(|(n, _)| n == id);
        if self.account_value().is_none() {
            // Orders wait for the mesh's one account, which one node registers: in its
            // own first order, or alone when it orders none of these names.
            if plan::issuer(ACCOUNT, &candidates) != Some(self.me.as_str()) {
                return;
            }
            if due
                .iter()
                .all(|n| plan::issuer(n, &candidates) != Some(self.me.as_str()))
            {
                self.clone().spawn(ACCOUNT.to_string(), None, shutdown);
                return;
            }
        }
        for name in due {
            let rec = self.record(&name);
            if let Some(r) = &rec {
                let mine = r.holder == self.me;
                if !mine && r.held(now, alive) || now < r.next_attempt_ms {
                    continue;
                }
                // A lease of this node's (an earlier life, maybe) is resumed by it.
                if mine && r.until_ms > now {
                    self.clone().spawn(name.to_string(), rec, shutdown);
                    continue;
                }
            }
            if plan::issuer(&name, &candidates) == Some(self.me.as_str()) {
                self.clone().spawn(name.to_string(), rec, shutdown);
            }
        }
    }

    fn spawn(
        self: Arc<Self>,
        name: String,
        rec: Option<OrderRecord>,
        shutdown: &CancellationToken,
    ) {
        if !self.working.lock().insert(name.clone()) {
            return;
        }
        let token = shutdown.child_token();
        tokio::spawn(async move {
            let _working = Working(self.clone(), name.clone());
            tokio::select! {
                () = token.cancelled() => {}
                () = self.attempt(&name, rec) => {}
            }
        });
    }

    /// One attempt: claim, check, order, store; every failure recorded.
    async fn attempt(&self, name: &str, prev: Option<OrderRecord>) {
        if name == ACCOUNT {
            if let Err(e) = self.create_account().await {
                self.metrics.failures.inc();
                warn!(error = %e, "acme: account not registered");
                tokio::time::sleep(Duration::from_millis(plan::backoff_base_ms())).await;
            }
            return;
        }
        let now = now_ms();
        let resuming = prev
            .as_ref()
            .is_some_and(|r| r.holder == self.me && r.until_ms > now);
        info!(name, resuming, "acme: claiming the order");
        let mut rec = prev.unwrap_or_default();
        let had_cert = self.served(name).is_some();
        rec.holder = self.me.clone();
        rec.until_ms = now + plan::LEASE_MS;
        if let Err(e) = self.save(name, &rec) {
            warn!(name, error = %e, "acme: lease not written");
            return;
        }
        if !resuming {
            // Concurrent claims reach every node within this; the latest clock has won.
            tokio::time::sleep(Duration::from_millis(plan::SETTLE_MS)).await;
            if self.record(name).is_none_or(|r| r.holder != self.me) {
                info!(name, "acme: another node claimed the order");
                return;
            }
        }
        // A lease may be wrong for a moment: look again before ordering.
        if !self.due(name, now_ms()) {
            rec.until_ms = 0;
            let _ = self.save(name, &rec);
            return;
        }
        let shared = Arc::new(Mutex::new(rec));
        let mut published = Vec::new();
        let outcome = tokio::select! {
            r = tokio::time::timeout(ATTEMPT_TIMEOUT, self.order(name, &shared, &mut published)) => {
                r.unwrap_or_else(|_| Err("the attempt took longer than 10 minutes".into()))
            }
            lost = self.hold_lease(name, &shared) => Err(lost),
        };
        for key in published {
            let _ = self.control.record(&key, None);
        }
        let mut rec = shared.lock().clone();
        match outcome {
            Ok((chain, key)) => {
                let value = CertValue {
                    cert_pem: chain,
                    key_pem: key,
                    source: Some("acme".into()),
                };
                let bytes = serde_json::to_vec(&value).unwrap_or_default();
                if let Err(e) = self.control.write(
                    &format!("{CERT}{name}"),
                    Some(bytes),
                    "acme",
                    "ACME certificate",
                ) {
                    rec.failed(
                        now_ms(),
                        &format!("certificate not stored: {e}"),
                        plan::jitter_of(name),
                    );
                    self.metrics.failures.inc();
                } else {
                    self.metrics.issued.inc();
                    if had_cert {
                        self.metrics.renewals.inc();
                    }
                    info!(name, orders = rec.orders, "acme: certificate issued");
                    rec = OrderRecord {
                        holder: self.me.clone(),
                        orders: rec.orders,
                        ..OrderRecord::default()
                    };
                }
            }
            Err(e) => {
                warn!(name, error = %e, "acme: attempt failed");
                self.metrics.failures.inc();
                rec.failed(now_ms(), &e, plan::jitter_of(name));
                if e.contains("accountDoesNotExist") || e.contains(":unauthorized") {
                    // The CA no longer knows the account: the mesh registers a new one.
                    let _ = self.control.record(ACCOUNT, None);
                }
            }
        }
        if let Err(e) = self.save(name, &rec) {
            warn!(name, error = %e, "acme: record not written");
        }
    }

    /// Renew the lease until another node's claim wins it (then the reason).
    async fn hold_lease(&self, name: &str, rec: &Mutex<OrderRecord>) -> String {
        let mut every = tokio::time::interval(Duration::from_millis(plan::LEASE_RENEW_MS));
        every.tick().await;
        loop {
            every.tick().await;
            if let Some(merged) = self.record(name)
                && merged.holder != self.me
            {
                return format!("node {} took over the order", merged.holder);
            }
            let snapshot = {
                let mut r = rec.lock();
                r.until_ms = now_ms() + plan::LEASE_MS;
                r.clone()
            };
            if let Err(e) = self.save(name, &snapshot) {
                warn!(name, error = %e, "acme: lease not renewed");
            }
        }
    }

    fn update(
        &self,
        name: &str,
        rec: &Mutex<OrderRecord>,
        f: impl FnOnce(&mut OrderRecord),
    ) -> Result<(), String> {
        let snapshot = {
            let mut r = rec.lock();
            f(&mut r);
            r.clone()
        };
        self.save(name, &snapshot)
    }

    /// The mesh's account; registered first when there is none (only the node elected for
    /// it gets here then).
    async fn account(&self) -> Result<Account, String> {
        let Some(v) = self.account_value() else {
            return self.create_account().await;
        };
        let creds: AccountCredentials = serde_json::from_value(v.credentials)
            .map_err(|_| "the mesh's ACME account does not parse".to_string())?;
        Account::builder_with_http(Box::new(self.transport.clone()))
            .from_credentials(creds)
            .await
            .map_err(|e| format!("ACME directory: {}", client::chain(&e)))
    }

    async fn create_account(&self) -> Result<Account, String> {
        let contact: Vec<&str> = self.settings.contact.iter().map(String::as_str).collect();
        let (account, creds) = Account::builder_with_http(Box::new(self.transport.clone()))
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.settings.directory_url.clone(),
                None,
            )
            .await
            .map_err(|e| format!("ACME account: {}", client::chain(&e)))?;
        let value = AccountValue {
            directory_url: self.settings.directory_url.clone(),
            credentials: serde_json::to_value(&creds).map_err(|e| e.to_string())?,
        };
        let bytes = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
        self.control
            .write(ACCOUNT, Some(bytes), "acme", "ACME account registered")
            .map_err(|e| e.to_string())?;
        info!(directory = %self.settings.directory_url, "acme: account registered for the mesh");
        Ok(account)
    }

    /// Place (or resume) the order of `name` and see it through to a checked chain and key.
    async fn order(
        &self,
        name: &str,
        rec: &Mutex<OrderRecord>,
        published: &mut Vec<String>,
    ) -> Result<(String, String), String> {
        let acme = |e: instant_acme::Error| client::chain(&e);
        let account = self.account().await?;
        let resume = rec.lock().order_url.clone();
        let mut order = match resume {
            Some(url) => match account.order(url).await {
                Ok(mut o) => {
                    let status = o.state().status;
                    info!(name, ?status, "acme: order resumed");
                    (status != OrderStatus::Invalid).then_some(o)
                }
                Err(_) => None,
            },
            None => None,
        };
        if order.is_none() {
            let ids = [Identifier::Dns(name.to_string())];
            let o = account
                .new_order(&NewOrder::new(&ids))
                .await
                .map_err(acme)?;
            self.metrics.orders.inc();
            info!(name, "acme: order placed");
            let url = o.url().to_string();
            self.update(name, rec, |r| {
                r.orders += 1;
                r.order_url = Some(url);
                r.key_pem = None;
            })?;
            order = Some(o);
        }
        let Some(mut order) = order else {
            return Err("no order".into());
        };
        if order.state().status == OrderStatus::Pending {
            self.authorize(name, &mut order, published).await?;
            let status = order.poll_ready(&POLL).await.map_err(acme)?;
            if status != OrderStatus::Ready {
                return Err(format!("the CA left the order {status:?}"));
            }
        }
        if order.state().status == OrderStatus::Ready {
            let key = match rec.lock().key_pem.clone() {
                Some(k) => k,
                None => client::new_key()?,
            };
            let csr = client::csr(name, &key)?;
            self.update(name, rec, |r| r.key_pem = Some(key))?;
            order.finalize_csr(&csr).await.map_err(acme)?;
        }
        let chain = order.poll_certificate(&POLL).await.map_err(acme)?;
        let Some(key) = rec.lock().key_pem.clone() else {
            // Finalised by a node that died before sharing its key: order anew next time.
            self.update(name, rec, |r| r.order_url = None)?;
            return Err("the order was finalised with a key this mesh does not hold".into());
        };
        client::accept(name, &chain, &key)?;
        Ok((chain, key))
    }

    /// Answer every pending authorization of `order` with the first of `acme.challenges`
    /// the CA offers, published to the mesh before the CA is told to look.
    async fn authorize(
        &self,
        name: &str,
        order: &mut instant_acme::Order,
        published: &mut Vec<String>,
    ) -> Result<(), String> {
        let acme = |e: instant_acme::Error| client::chain(&e);
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(acme)?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("authorization of {name} is {other:?}")),
            }
            let kind = self.settings.challenges.iter().copied().find(|k| {
                authz
                    .challenges
                    .iter()
                    .any(|c| c.r#type == challenge_type(*k))
            });
            let Some(kind) = kind else {
                return Err(format!(
                    "the CA offers none of {:?}",
                    self.settings.challenges
                ));
            };
            let Some(mut challenge) = authz.challenge(challenge_type(kind)) else {
                return Err("challenge vanished".into());
            };
            let ka = challenge.key_authorization();
            let (key, value) = match kind {
                AcmeChallenge::Http01 => (
                    format!("{ACME_HTTP01}{}", challenge.token),
                    serde_json::to_vec(&Http01Value {
                        name: name.to_string(),
                        key_authorization: ka.as_str().to_string(),
                    }),
                ),
                AcmeChallenge::TlsAlpn01 => (
                    format!("{ACME_ALPN}{name}"),
                    serde_json::to_vec(&AlpnValue {
                        digest: hex(ka.digest().as_ref()),
                    }),
                ),
            };
            let value = value.map_err(|e| e.to_string())?;
            self.control
                .record(&key, Some(value))
                .map_err(|e| e.to_string())?;
            published.push(key);
            self.propagated().await;
            challenge.set_ready().await.map_err(acme)?;
        }
        Ok(())
    }

    /// Wait (at most [`PROPAGATE_TIMEOUT`]) until every connected peer holds this node's
    /// partition at its current version.
    async fn propagated(&self) {
        let Some(mesh) = &self.mesh else {
            return;
        };
        let target = self
            .table
            .partitions()
            .into_iter()
            .find(|p| *p.origin.node_id == *self.me)
            .map_or(0, |p| p.max_version);
        let deadline = tokio::time::Instant::now() + PROPAGATE_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            let behind = mesh
                .peers()
                .iter()
                .any(|p| p.held().get(&self.me).copied().unwrap_or(0) < target);
            if !behind {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn challenge_type(kind: AcmeChallenge) -> ChallengeType {
    match kind {
        AcmeChallenge::Http01 => ChallengeType::Http01,
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    }
}

/// The ACME state of `name` for `/v1/certs/{host}`: who orders it, the failures, when the
/// next attempt may be; `None` when no node ever worked on it.
pub fn status(control: &Control, name: &str) -> Option<serde_json::Value> {
    let w = control.get(&format!("{ORDER}{name}"))?;
    let rec = OrderRecord::parse(w.bytes())?;
    let now = now_ms();
    let state = if rec.until_ms > now {
        "ordering"
    } else if rec.failures > 0 {
        "failed"
    } else {
        "idle"
    };
    let at = |ms: u64| crate::tls::rfc3339(UNIX_EPOCH + Duration::from_millis(ms));
    Some(serde_json::json!({
        "state": state,
        "issuer": rec.holder,
        "orders": rec.orders,
        "failures": rec.failures,
        "last_error": rec.last_error,
        "next_attempt": (rec.next_attempt_ms > now).then(|| at(rec.next_attempt_ms)),
    }))
}
