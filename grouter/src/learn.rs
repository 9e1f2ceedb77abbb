//! Learning this site's routes from its NATS bus, exactly as gorouter does.
//!
//! Owns: the NATS connection (reconnecting forever with back-off), the subscriptions to
//! `router.register` / `router.unregister`, the `router.greet` sent on every (re)connect, and
//! the **endpoint registry**: every endpoint with its last registration time, from which it
//! derives this node's route entries in the table.
//!
//! Both subjects come through one subscription (`router.*`), so register and unregister are
//! applied in the order NATS delivered them. Messages are drained in batches: the registry
//! takes them one by one and the table gets one write per changed route per batch, which is
//! what lets a burst of a whole site's registrations arrive without loss (the client's queue,
//! `nats.max_pending_messages`, only has to hold what the learner has not reached yet).
//!
//! Expiry follows gorouter with `suspend_pruning_if_nats_unavailable`: an endpoint not
//! re-registered within its stale threshold is removed by the periodic prune; TLS endpoints
//! (`tls_port`), which gorouter keeps until a dial fails, are removed after
//! `nats.tls_stale_threshold_secs` (GRouter never dials backends); nothing is pruned while
//! NATS is disconnected, and every endpoint is refreshed on reconnect.
//!
//! Must never: write another node's partition, publish anything but `router.greet`, or stop
//! on a bad message (those are counted per reason and logged once per reason).
//!
//! One task owns the registry, so the ingest path takes no lock but the table's own.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::connection::State;
use futures::{FutureExt, StreamExt};
use grouter_protocol::nats::{
    InvalidMessage, MessageKind, Registration, RouteKey, RouterStart, SUBJECT_GREET,
    SUBJECT_ROUTER_ALL,
};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::table::{App, AppFields, AppInterner, RouteEntry, Table};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

/// The registry's maps are keyed by what NATS sends; foldhash (seeded per map) is several
/// times faster than SipHash on such short keys.
type Fast = foldhash::fast::RandomState;

/// Most messages applied between two commits to the table: large enough that a burst costs
/// one table write per route, small enough that the table's lock is held for well under a
/// millisecond.
const BATCH: usize = 512;

/// The learner's counters, registered in the node's [`Metrics`].
#[derive(Debug)]
pub struct LearnMetrics {
    /// `router.register` messages received.
    pub register_messages: Counter,
    /// `router.unregister` messages received.
    pub unregister_messages: Counter,
    /// Messages dropped, one counter per [`InvalidMessage::REASONS`] entry.
    invalid: [Counter; InvalidMessage::REASONS.len()],
    /// URIs dropped from otherwise valid messages.
    pub invalid_uris: Counter,
    /// 1 while connected to the site's NATS.
    pub connected: Gauge,
    /// Successful connections to NATS (the first and every reconnect).
    pub connects: Counter,
    /// `router.greet` requests sent.
    pub greets_sent: Counter,
    /// `router.greet` requests answered by a router.
    pub greet_replies: Counter,
    /// Times the NATS client dropped messages because the learner fell behind.
    pub slow_consumer: Counter,
    /// Endpoints removed because they were not re-registered in time.
    pub pruned: Counter,
    /// Endpoints known to this node's learner.
    pub endpoints: Gauge,
}

impl LearnMetrics {
    /// The counters, registered in `metrics` at zero.
    pub fn new(metrics: &Metrics) -> LearnMetrics {
        let m = LearnMetrics {
            register_messages: Counter::default(),
            unregister_messages: Counter::default(),
            invalid: metrics.reason_counters(
                "nats_invalid_messages",
                "messages dropped as invalid, by reason",
                InvalidMessage::REASONS,
            ),
            invalid_uris: Counter::default(),
            connected: Gauge::default(),
            connects: Counter::default(),
            greets_sent: Counter::default(),
            greet_replies: Counter::default(),
            slow_consumer: Counter::default(),
            pruned: Counter::default(),
            endpoints: Gauge::default(),
        };
        for (name, help, counter) in [
            (
                "nats_register_messages",
                "router.register messages received",
                &m.register_messages,
            ),
            (
                "nats_unregister_messages",
                "router.unregister messages received",
                &m.unregister_messages,
            ),
            (
                "nats_invalid_uris",
                "URIs dropped from otherwise valid messages",
                &m.invalid_uris,
            ),
            (
                "nats_connects",
                "connections to NATS, the first and every reconnect",
                &m.connects,
            ),
            (
                "nats_greets_sent",
                "router.greet requests sent",
                &m.greets_sent,
            ),
            (
                "nats_greet_replies",
                "router.greet requests answered",
                &m.greet_replies,
            ),
            (
                "endpoints_pruned",
                "endpoints removed for not re-registering in time",
                &m.pruned,
            ),
            (
                "nats_slow_consumer_events",
                "times registrations were dropped because the learner fell behind (emitters re-send them)",
                &m.slow_consumer,
            ),
        ] {
            metrics.register(name, help, counter.clone());
        }
        metrics.register(
            "nats_connected",
            "1 while connected to the site's NATS",
            m.connected.clone(),
        );
        metrics.register(
            "local_endpoints",
            "endpoints learned from this site's NATS",
            m.endpoints.clone(),
        );
        m
    }

    /// Count one invalid message.
    pub fn count_invalid(&self, err: &InvalidMessage) {
        if let Some(c) = self.invalid.get(err.index()) {
            c.inc();
        }
    }
}

/// How the learner reaches NATS and expires endpoints.
#[derive(Debug, Clone)]
pub struct LearnSettings {
    /// NATS URLs of this site's bus.
    pub servers: Vec<String>,
    /// User name and password, if the bus wants them.
    pub user_password: Option<(String, String)>,
    /// Token, if the bus wants one.
    pub token: Option<String>,
    /// Extra CA for a TLS bus.
    pub tls_ca: Option<PathBuf>,
    /// Default (and maximum) stale threshold: gorouter's `droplet_stale_threshold`.
    pub stale_threshold: Duration,
    /// How often stale endpoints are swept.
    pub prune_interval: Duration,
    /// Age at which a `tls_port` endpoint that was not re-registered is removed.
    pub tls_stale_threshold: Duration,
    /// Messages the NATS client queues for the learner before it drops the excess.
    pub max_pending_messages: usize,
    /// Name this client gives the NATS server.
    pub client_name: String,
}

/// Errors that stop the learner. Bad messages never do.
#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    /// The client could not be set up (bad server list or TLS settings).
    #[error("nats connect: {0}")]
    Connect(#[from] async_nats::ConnectError),
    /// Subscribing failed.
    #[error("nats subscribe: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
}

/// One backend endpoint of one route. Kept small (48 bytes): a site can have hundreds of
/// thousands of them.
#[derive(Debug, Clone)]
struct Endpoint {
    /// Interned backend host (cells have many endpoints each).
    host: Arc<str>,
    app: Arc<App>,
    /// Hash of `private_instance_id` (0 when absent): only distinct instances are counted.
    instance: u64,
    /// Monotonic milliseconds (registry clock) of the last registration.
    last_seen_ms: u64,
    /// Effective stale threshold in milliseconds.
    threshold_ms: u32,
    port: u16,
    tls: bool,
}

impl Endpoint {
    fn same_registration(&self, other: &Endpoint) -> bool {
        self.tls == other.tls
            && self.threshold_ms == other.threshold_ms
            && Arc::ptr_eq(&self.app, &other.app)
            && self.instance == other.instance
    }

    fn is_stale(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.last_seen_ms) > u64::from(self.threshold_ms)
    }
}

#[derive(Debug)]
struct Pool {
    /// Exactly as many slots as endpoints: a boxed slice is 8 bytes smaller than a `Vec` in
    /// each of hundreds of thousands of map slots, and most pools hold a handful.
    endpoints: Box<[Endpoint]>,
    /// Changed since the registry's last commit.
    dirty: bool,
}

impl Pool {
    fn push(&mut self, ep: Endpoint) {
        // Exact growth: Vec's doubling would leave most of a 4-slot allocation empty.
        let mut v = std::mem::take(&mut self.endpoints).into_vec();
        v.reserve_exact(1);
        v.push(ep);
        self.endpoints = v.into_boxed_slice();
    }

    fn retain(&mut self, keep: impl FnMut(&Endpoint) -> bool) -> usize {
        let before = self.endpoints.len();
        let mut v = std::mem::take(&mut self.endpoints).into_vec();
        v.retain(keep);
        self.endpoints = v.into_boxed_slice();
        before - self.endpoints.len()
    }

    /// The route entry this pool amounts to (with `updated_at_ms` left at 0).
    fn summary(&self) -> Option<RouteEntry> {
        let first = self
            .endpoints
            .iter()
            .min_by(|a, b| a.app.id().cmp(b.app.id()))?;
        let mut instances: Vec<u64> = self.endpoints.iter().map(|e| e.instance).collect();
        instances.sort_unstable();
        instances.dedup();
        Some(RouteEntry {
            // The endpoint's own record: a route costs no allocation for its app.
            app: first.app.clone(),
            endpoints: u32::try_from(self.endpoints.len()).unwrap_or(u32::MAX),
            instances: u32::try_from(instances.len()).unwrap_or(u32::MAX),
            updated_at_ms: 0,
        })
    }
}

/// Shares one allocation among equal strings (cell hosts) and one record per app (GUID,
/// name, org, space and segment together), which the app's route entries share too.
#[derive(Debug, Default)]
struct Interner {
    hosts: HashSet<Arc<str>, Fast>,
    apps: AppInterner,
}

impl Interner {
    fn host(&mut self, s: &str) -> Arc<str> {
        if let Some(v) = self.hosts.get(s) {
            return v.clone();
        }
        let v: Arc<str> = Arc::from(s);
        self.hosts.insert(v.clone());
        v
    }

    fn app(&mut self, reg: &Registration<'_>) -> Arc<App> {
        let fields = AppFields {
            id: &reg.app,
            name: reg.app_name.as_deref(),
            org: reg.org.as_deref(),
            space: reg.space.as_deref(),
            segment: reg.isolation_segment.as_deref(),
        };
        // Tags beyond `App::MAX_FIELD` are not kept (nothing real is that long).
        self.apps.intern(fields).unwrap_or_else(|_| {
            self.apps
                .intern(AppFields {
                    id: fields.id,
                    ..AppFields::default()
                })
                .unwrap_or_default()
        })
    }

    /// Forget what no endpoint holds any more.
    fn collect(&mut self) {
        self.hosts.retain(|s| Arc::strong_count(s) > 1);
        self.apps.collect();
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.apps.is_empty()
    }
}

fn instance_hash(id: Option<&str>) -> u64 {
    use std::hash::BuildHasher;
    // Fixed seed: the same id must hash the same in every pool of this process.
    id.map_or(0, |id| foldhash::fast::FixedState::default().hash_one(id))
}

/// The endpoint registry of this node's site, and the writer of this node's partition.
///
/// Messages are applied to the registry one by one, in order ([`Registry::apply`]); the
/// routes they touched reach the table together at [`Registry::commit`], under one lock and
/// with one change notification, so a burst costs the table (and every peer's push loop) one
/// write per route per batch instead of one per message.
///
/// Time is passed in (monotonic milliseconds) so that expiry is tested without a clock.
#[derive(Debug)]
pub struct Registry {
    table: Arc<Table>,
    /// Keys are shared with the table's partition (one allocation per route).
    routes: HashMap<Arc<RouteKey>, Pool, Fast>,
    /// Routes changed since the last commit, each once (its pool's `dirty` flag says so).
    dirty: Vec<Arc<RouteKey>>,
    strings: Interner,
    default_threshold_ms: u32,
    tls_threshold_ms: u32,
    endpoints: usize,
}

/// What one message or sweep changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Endpoints added or replaced.
    pub upserted: usize,
    /// Endpoints removed.
    pub removed: usize,
    /// Routes whose entry in the table changed (filled in by a commit).
    pub routes_changed: usize,
}

impl Registry {
    /// An empty registry writing into `table`'s local partition. `tls_stale_threshold` is the
    /// age at which a `tls_port` endpoint that was not re-registered is removed.
    pub fn new(
        table: Arc<Table>,
        stale_threshold: Duration,
        tls_stale_threshold: Duration,
    ) -> Registry {
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        Registry {
            table,
            routes: HashMap::default(),
            dirty: Vec::new(),
            strings: Interner::default(),
            default_threshold_ms: ms(stale_threshold),
            tls_threshold_ms: ms(tls_stale_threshold),
            endpoints: 0,
        }
    }

    /// Endpoints held.
    pub fn endpoints(&self) -> usize {
        self.endpoints
    }

    /// Apply a `router.register` and commit it: add the endpoint to each route, or refresh
    /// it; a changed field replaces the endpoint.
    pub fn register(&mut self, reg: &Registration<'_>, now_ms: u64) -> Applied {
        let mut applied = self.apply(MessageKind::Register, reg, now_ms);
        applied.routes_changed = self.commit();
        applied
    }

    /// Apply a `router.unregister` and commit it: remove the endpoint `host:port` from each
    /// route.
    pub fn unregister(&mut self, reg: &Registration<'_>) -> Applied {
        let mut applied = self.apply(MessageKind::Unregister, reg, 0);
        applied.routes_changed = self.commit();
        applied
    }

    /// Apply one message to the registry; the table sees it at the next [`Registry::commit`].
    pub fn apply(&mut self, kind: MessageKind, reg: &Registration<'_>, now_ms: u64) -> Applied {
        match kind {
            MessageKind::Register => self.apply_register(reg, now_ms),
            MessageKind::Unregister => self.apply_unregister(reg),
        }
    }

    fn apply_register(&mut self, reg: &Registration<'_>, now_ms: u64) -> Applied {
        // gorouter never ages out TLS endpoints (it notices dead ones when it dials them);
        // GRouter does not dial backends, so they get a threshold of their own.
        let threshold_ms = if reg.tls {
            self.tls_threshold_ms
        } else {
            match u32::try_from(reg.stale_threshold_secs.saturating_mul(1000)) {
                Ok(ms) if ms > 0 && ms <= self.default_threshold_ms => ms,
                _ => self.default_threshold_ms,
            }
        };
        let ep = Endpoint {
            host: self.strings.host(&reg.host),
            app: self.strings.app(reg),
            instance: instance_hash(reg.instance_id.as_deref()),
            last_seen_ms: now_ms,
            threshold_ms,
            port: reg.port,
            tls: reg.tls,
        };
        let mut applied = Applied::default();
        for key in &reg.routes {
            let pool = match self.routes.get_mut(key) {
                Some(p) => p,
                None => self.routes.entry(Arc::new(key.clone())).or_insert(Pool {
                    endpoints: Box::default(),
                    dirty: false,
                }),
            };
            match pool
                .endpoints
                .iter_mut()
                .find(|e| e.port == ep.port && e.host == ep.host)
            {
                Some(cur) if cur.same_registration(&ep) => {
                    // The common case: a heartbeat. Only the time moves; nothing to replicate.
                    cur.last_seen_ms = now_ms;
                    continue;
                }
                Some(cur) => *cur = ep.clone(),
                None => {
                    pool.push(ep.clone());
                    self.endpoints += 1;
                }
            }
            applied.upserted += 1;
            if !std::mem::replace(&mut pool.dirty, true) {
                self.mark(key);
            }
        }
        applied
    }

    /// Queue `key`, whose pool was just flagged dirty, for the next commit. The registry's
    /// key is the route's one allocation, shared with the table's partition.
    fn mark(&mut self, key: &RouteKey) {
        if let Some((k, _)) = self.routes.get_key_value(key) {
            self.dirty.push(k.clone());
        }
    }

    fn apply_unregister(&mut self, reg: &Registration<'_>) -> Applied {
        let mut applied = Applied::default();
        for key in &reg.routes {
            let Some(pool) = self.routes.get_mut(key) else {
                continue;
            };
            let removed = pool.retain(|e| !(e.port == reg.port && *e.host == *reg.host));
            if removed == 0 {
                continue;
            }
            self.endpoints -= removed;
            applied.removed += removed;
            if !std::mem::replace(&mut pool.dirty, true) {
                self.mark(key);
            }
        }
        applied
    }

    /// Write every route changed since the last commit into the table, in one batch; routes
    /// left without endpoints become tombstones. Returns how many table entries changed.
    pub fn commit(&mut self) -> usize {
        if self.dirty.is_empty() {
            return 0;
        }
        let dirty = std::mem::take(&mut self.dirty);
        let current = self.table.local_entries(&dirty);
        let now = unix_ms();
        let mut writes = Vec::with_capacity(dirty.len());
        for (key, cur) in dirty.into_iter().zip(current) {
            let summary = match self.routes.get_mut(&key) {
                Some(pool) => {
                    pool.dirty = false;
                    pool.summary()
                }
                None => None,
            };
            match summary {
                None => {
                    self.routes.remove(&key);
                    if cur.is_some() {
                        writes.push((key, None));
                    }
                }
                Some(mut entry) => {
                    // Compare without the timestamp, so no-op replacements do not create
                    // versions that would be replicated for nothing.
                    if let Some(cur) = &cur {
                        entry.updated_at_ms = cur.updated_at_ms;
                        if **cur == entry {
                            continue;
                        }
                    }
                    entry.updated_at_ms = now;
                    writes.push((key, Some(entry)));
                }
            }
        }
        self.table.write_local_batch(writes)
    }

    /// Remove (and commit) every endpoint whose threshold has passed.
    pub fn prune(&mut self, now_ms: u64) -> Applied {
        let mut applied = Applied::default();
        for (key, pool) in &mut self.routes {
            let removed = pool.retain(|e| !e.is_stale(now_ms));
            if removed == 0 {
                continue;
            }
            applied.removed += removed;
            if !std::mem::replace(&mut pool.dirty, true) {
                self.dirty.push(key.clone());
            }
        }
        self.endpoints -= applied.removed;
        applied.routes_changed = self.commit();
        if applied.removed > 0 {
            self.strings.collect();
        }
        applied
    }

    /// Treat every endpoint as registered now (on a NATS reconnect, so that nothing is pruned
    /// before emitters had a full threshold to re-register).
    pub fn refresh_all(&mut self, now_ms: u64) {
        for pool in self.routes.values_mut() {
            for e in &mut pool.endpoints {
                e.last_seen_ms = now_ms;
            }
        }
    }
}

/// Wall-clock Unix milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Remembers which invalid-message reasons were logged already, so each is logged once.
#[derive(Debug, Default)]
struct LoggedOnce([bool; InvalidMessage::REASONS.len()]);

impl LoggedOnce {
    fn first(&mut self, err: &InvalidMessage) -> bool {
        match self.0.get_mut(err.index()) {
            Some(seen) if !*seen => {
                *seen = true;
                true
            }
            _ => false,
        }
    }
}

/// Connect to the site's NATS and learn routes into `table` until `shutdown`.
pub async fn run(
    settings: LearnSettings,
    table: Arc<Table>,
    metrics: Arc<LearnMetrics>,
    shutdown: CancellationToken,
) -> Result<(), LearnError> {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut opts = async_nats::ConnectOptions::new()
        .name(&settings.client_name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        // gorouter doubles the library's pending limit so that a burst does not overflow
        // it; we size it for a whole site's emitters re-sending at once. The queue holds
        // messages only while the learner is behind.
        .subscription_capacity(settings.max_pending_messages)
        .event_callback(move |event| {
            let tx = events_tx.clone();
            async move {
                // The receiver lives as long as the learner; after it, events do not matter.
                let _ = tx.send(event);
            }
        });
    if let Some((user, password)) = &settings.user_password {
        opts = opts.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &settings.token {
        opts = opts.token(token.clone());
    }
    if let Some(ca) = &settings.tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    let client = opts.connect(settings.servers.as_slice()).await?;
    let mut messages = client.subscribe(SUBJECT_ROUTER_ALL).await?;

    let epoch = Instant::now();
    let now_ms = move || u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut registry = Registry::new(
        table,
        settings.stale_threshold,
        settings.tls_stale_threshold,
    );
    let mut logged = LoggedOnce::default();
    let mut connected = false;
    let mut greeter: Option<CancellationToken> = None;
    let mut prune = tokio::time::interval(settings.prune_interval);
    prune.set_missed_tick_behavior(MissedTickBehavior::Delay);
    info!(servers = ?settings.servers, "learning routes from nats");

    loop {
        tokio::select! {
            // Shutdown first: a busy bus must not delay it.
            biased;
            () = shutdown.cancelled() => break,
            Some(event) = events.recv() => match event {
                async_nats::Event::Connected => {
                    // Emitters get a full threshold to re-register after an outage.
                    registry.refresh_all(now_ms());
                    connected = true;
                    metrics.connected.set(1);
                    metrics.connects.inc();
                    info!(endpoints = registry.endpoints(), "nats connected; endpoints refreshed");
                    if let Some(previous) = greeter.take() {
                        previous.cancel();
                    }
                    let token = shutdown.child_token();
                    greeter = Some(token.clone());
                    tokio::spawn(greet(client.clone(), metrics.clone(), token));
                }
                async_nats::Event::Disconnected => {
                    connected = false;
                    metrics.connected.set(0);
                    warn!(endpoints = registry.endpoints(), "nats disconnected; pruning suspended");
                }
                async_nats::Event::SlowConsumer(sid) => {
                    metrics.slow_consumer.inc();
                    warn!(sid, "nats slow consumer: registrations were dropped; emitters re-send them within their register interval");
                }
                other => debug!(event = %other, "nats event"),
            },
            Some(first) = messages.next() => {
                // Drain what is queued (up to a batch) and give the table one write per
                // route for all of it: in a burst, the learner must outrun the bus.
                let now = now_ms();
                let mut next = Some(first);
                let mut taken = 0;
                while let Some(msg) = next {
                    learn_one(&mut registry, &metrics, &mut logged, &msg, now);
                    taken += 1;
                    next = if taken < BATCH { messages.next().now_or_never().flatten() } else { None };
                }
                registry.commit();
                metrics.endpoints.set(i64::try_from(registry.endpoints()).unwrap_or(i64::MAX));
            }
            _ = prune.tick() => {
                // Both our view (events processed in order with messages) and the client's
                // must say connected: a reconnect is only honoured after its refresh ran.
                if connected && client.connection_state() == State::Connected {
                    let applied = registry.prune(now_ms());
                    if applied.removed > 0 {
                        metrics.pruned.inc_by(applied.removed as u64);
                        metrics.endpoints.set(i64::try_from(registry.endpoints()).unwrap_or(i64::MAX));
                        info!(removed = applied.removed, routes_changed = applied.routes_changed,
                            "pruned stale endpoints");
                    }
                } else {
                    debug!("nats disconnected: prune skipped");
                }
            }
        }
    }
    if let Some(g) = greeter {
        g.cancel();
    }
    info!("learner stopped");
    Ok(())
}

/// Parse one NATS message and apply it to the registry (uncommitted), counting it.
fn learn_one(
    registry: &mut Registry,
    metrics: &LearnMetrics,
    logged: &mut LoggedOnce,
    msg: &async_nats::Message,
    now_ms: u64,
) {
    let Some(kind) = MessageKind::of_subject(msg.subject.as_str()) else {
        // router.greet, router.start and the like: not ours to learn from.
        return;
    };
    match kind {
        MessageKind::Register => metrics.register_messages.inc(),
        MessageKind::Unregister => metrics.unregister_messages.inc(),
    };
    match Registration::parse(&msg.payload, kind) {
        Ok(reg) => {
            if reg.dropped_uris > 0 {
                metrics.invalid_uris.inc_by(reg.dropped_uris as u64);
            }
            registry.apply(kind, &reg, now_ms);
        }
        Err(err) => {
            metrics.count_invalid(&err);
            if logged.first(&err) {
                warn!(reason = err.reason(), error = %err,
                    "dropping invalid nats message (logged once per reason; see /metrics)");
            }
        }
    }
}

/// Send `router.greet` until a router answers (like route-emitter: every second, at most
/// 30 times), and log what the site's routers expect.
async fn greet(client: async_nats::Client, metrics: Arc<LearnMetrics>, stop: CancellationToken) {
    const ATTEMPTS: usize = 30;
    const WAIT: Duration = Duration::from_secs(1);
    for attempt in 1..=ATTEMPTS {
        metrics.greets_sent.inc();
        let request = client.request(SUBJECT_GREET, bytes::Bytes::new());
        let reply = tokio::select! {
            () = stop.cancelled() => return,
            r = tokio::time::timeout(WAIT, request) => r,
        };
        match reply {
            Ok(Ok(msg)) => {
                metrics.greet_replies.inc();
                match serde_json::from_slice::<RouterStart>(&msg.payload) {
                    Ok(start) => info!(
                        router = %start.id,
                        register_interval_secs = start.minimum_register_interval_in_seconds,
                        prune_threshold_secs = start.prune_threshold_in_seconds,
                        "a router answered router.greet"
                    ),
                    Err(err) => debug!(%err, "router.greet answer is not a router.start payload"),
                }
                return;
            }
            Ok(Err(err)) => debug!(attempt, %err, "router.greet not answered"),
            Err(_) => debug!(attempt, "router.greet timed out"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(WAIT) => {}
        }
    }
    debug!("no router answered router.greet; the site may have no gorouter yet");
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(120);

    fn reg(json: &str) -> Registration<'_> {
        Registration::parse(json.as_bytes(), MessageKind::Register).unwrap()
    }

    fn unreg(json: &str) -> Registration<'_> {
        Registration::parse(json.as_bytes(), MessageKind::Unregister).unwrap()
    }

    fn setup() -> (Arc<Table>, Registry) {
        let table = Arc::new(Table::new("n1", "lon", 1));
        let registry = Registry::new(table.clone(), T, 3 * T);
        (table, registry)
    }

    fn endpoints(table: &Table, host: &str) -> Option<u32> {
        table
            .local_entry(&RouteKey::parse(host).unwrap())
            .map(|e| e.endpoints)
    }

    #[test]
    fn register_refresh_replace_unregister() {
        let (table, mut r) = setup();
        let a = r#"{"host":"10.0.0.1","port":61000,"uris":["shop.example.com"],"app":"app-1"}"#;
        let b = r#"{"host":"10.0.0.2","port":61000,"uris":["shop.example.com"],"app":"app-1"}"#;
        assert_eq!(r.register(&reg(a), 0).routes_changed, 1);
        assert_eq!(r.register(&reg(b), 0).routes_changed, 1);
        assert_eq!(endpoints(&table, "shop.example.com"), Some(2));
        let v = table.with_local_partition(|p| p.max_version()).unwrap();
        // A heartbeat changes nothing in the table (no new version to replicate).
        assert_eq!(r.register(&reg(a), 10).routes_changed, 0);
        assert_eq!(table.with_local_partition(|p| p.max_version()).unwrap(), v);
        // A changed field replaces the endpoint.
        let a2 = r#"{"host":"10.0.0.1","port":61000,"uris":["shop.example.com"],"app":"app-0"}"#;
        assert_eq!(r.register(&reg(a2), 10).upserted, 1);
        assert_eq!(r.endpoints(), 2);
        assert_eq!(
            table.lookup("shop.example.com", "/").unwrap().app.id(),
            "app-0"
        );
        // Unregister by host:port.
        assert_eq!(r.unregister(&unreg(a2)).removed, 1);
        assert_eq!(endpoints(&table, "shop.example.com"), Some(1));
        assert_eq!(r.unregister(&unreg(b)).removed, 1);
        assert_eq!(endpoints(&table, "shop.example.com"), None);
        assert!(table.lookup("shop.example.com", "/").is_none());
        assert_eq!(r.endpoints(), 0);
    }

    #[test]
    fn tls_port_is_the_endpoint_key() {
        let (table, mut r) = setup();
        let both = r#"{"host":"h","port":8080,"tls_port":8443,"server_cert_domain_san":"s","uris":["a.com"]}"#;
        let plain = r#"{"host":"h","port":8443,"uris":["a.com"]}"#;
        r.register(&reg(both), 0);
        // Same host:8443 without TLS replaces the endpoint (gorouter docs' example).
        r.register(&reg(plain), 0);
        assert_eq!(endpoints(&table, "a.com"), Some(1));
        // …which is now prunable at the plain threshold.
        assert_eq!(r.prune(200_000).removed, 1);
    }

    #[test]
    fn prune_honours_message_threshold_and_the_tls_threshold() {
        let (table, mut r) = setup();
        r.register(
            &reg(r#"{"host":"h","port":1,"uris":["short.com"],"stale_threshold_in_seconds":2}"#),
            0,
        );
        r.register(
            &reg(
                r#"{"host":"h","port":2,"uris":["default.com"],"stale_threshold_in_seconds":999}"#,
            ),
            0,
        );
        r.register(
            &reg(r#"{"host":"h","port":3,"uris":["zero.com"],"stale_threshold_in_seconds":0}"#),
            0,
        );
        r.register(&reg(r#"{"host":"h","tls_port":4,"server_cert_domain_san":"x","uris":["tls.com"],"stale_threshold_in_seconds":1}"#), 0);
        assert_eq!(
            r.prune(2_000).removed,
            0,
            "exactly at the threshold is not stale"
        );
        assert_eq!(r.prune(2_001).removed, 1);
        assert_eq!(endpoints(&table, "short.com"), None);
        assert_eq!(r.prune(120_000).removed, 0);
        assert_eq!(
            r.prune(120_001).removed,
            2,
            "over-large and zero thresholds mean the default"
        );
        assert_eq!(
            endpoints(&table, "tls.com"),
            Some(1),
            "tls endpoints outlive the plain threshold and ignore the message's"
        );
        assert_eq!(r.prune(360_000).removed, 0);
        assert_eq!(r.prune(360_001).removed, 1, "…until the tls threshold");
        assert_eq!(endpoints(&table, "tls.com"), None);
    }

    #[test]
    fn refresh_all_restarts_every_clock() {
        let (_table, mut r) = setup();
        r.register(&reg(r#"{"host":"h","port":1,"uris":["a.com"]}"#), 0);
        r.refresh_all(100_000);
        assert_eq!(r.prune(200_000).removed, 0);
        assert_eq!(r.prune(220_001).removed, 1);
    }

    #[test]
    fn one_message_many_routes_and_instances() {
        let (table, mut r) = setup();
        r.register(&reg(r#"{"host":"h","port":1,"uris":["a.com","b.com/x"],"app":"g","private_instance_id":"i1","tags":{"app_name":"shop"}}"#), 0);
        r.register(
            &reg(r#"{"host":"h","port":2,"uris":["a.com"],"app":"g","private_instance_id":"i2"}"#),
            0,
        );
        r.register(
            &reg(r#"{"host":"h","port":3,"uris":["a.com"],"app":"g","private_instance_id":"i2"}"#),
            0,
        );
        let a = table
            .local_entry(&RouteKey::parse("a.com").unwrap())
            .unwrap();
        assert_eq!((a.endpoints, a.instances), (3, 2));
        let b = table
            .local_entry(&RouteKey::parse("b.com/x").unwrap())
            .unwrap();
        assert_eq!(b.app.name(), Some("shop"));
        assert_eq!(
            r.unregister(&unreg(r#"{"host":"h","port":9,"uris":["a.com"]}"#))
                .removed,
            0
        );
    }

    #[test]
    fn a_batch_is_applied_in_order_and_written_once_per_route() {
        let (table, mut r) = setup();
        let v0 = table.with_local_partition(|p| p.max_version()).unwrap();
        let a = r#"{"host":"h","port":1,"uris":["a.com"],"app":"g"}"#;
        let b = r#"{"host":"h","port":2,"uris":["a.com"],"app":"g"}"#;
        // Register then unregister in one batch: the route never reaches the table.
        r.apply(MessageKind::Register, &reg(a), 0);
        r.apply(MessageKind::Unregister, &unreg(a), 0);
        assert_eq!(r.commit(), 0);
        assert_eq!(endpoints(&table, "a.com"), None);
        assert_eq!(table.with_local_partition(|p| p.max_version()).unwrap(), v0);
        // Unregister then register (the order NATS delivered): the endpoint stays.
        r.apply(MessageKind::Unregister, &unreg(a), 0);
        r.apply(MessageKind::Register, &reg(a), 0);
        // Two endpoints of one route in one batch: one table write.
        r.apply(MessageKind::Register, &reg(b), 0);
        assert_eq!(r.commit(), 1);
        assert_eq!(endpoints(&table, "a.com"), Some(2));
        assert_eq!(
            table.with_local_partition(|p| p.max_version()).unwrap(),
            v0 + 1
        );
        // Emptied in a batch: a tombstone, and the registry forgets the pool.
        r.apply(MessageKind::Unregister, &unreg(a), 0);
        r.apply(MessageKind::Unregister, &unreg(b), 0);
        assert_eq!(r.commit(), 1);
        assert_eq!(endpoints(&table, "a.com"), None);
        assert!(r.routes.is_empty() && r.dirty.is_empty());
        assert_eq!(r.endpoints(), 0);
    }

    #[test]
    fn interned_strings_are_collected_after_prune() {
        let (_table, mut r) = setup();
        for i in 0..100 {
            let m = format!(r#"{{"host":"h{i}","port":1,"uris":["a{i}.com"],"app":"app{i}"}}"#);
            r.register(&reg(&m), 0);
        }
        assert_eq!(r.prune(1_000_000).removed, 100);
        assert!(r.strings.is_empty(), "{:?} left", r.strings);
    }
}
