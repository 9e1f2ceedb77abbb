//! The last hour of the node, for `GET /v1/history` and the dashboard: a sample every
//! interval (5 s; `GROUTER_HISTORY_INTERVAL_MS` overrides it, for tests) of requests per
//! second and error rate per answering site (`crate::traffic`), routes per site (the table),
//! RTT per connected peer (the mesh), and a list of recent events: sync-state transitions,
//! node verdict changes (suspect, dead, alive again, removed: retired or revoked) and the
//! control plane's writes (`Control::audit`).
//!
//! Owns: [`Recorder`], the sans-IO core (an [`Observation`] in, samples and events out, in
//! two fixed-capacity [`ring::Ring`]s), and [`run`], the task that observes. Memory is
//! bounded: [`SAMPLES`] samples of at most [`MAX_SERIES`] sites and peers each, and
//! [`EVENTS`] events (docs/DASHBOARD.md gives the sizes).
//!
//! Must never: hold a lock across an `.await`, grow past its bounds, or record a secret (an
//! audit summary never holds a key).

pub mod ring;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::control::Control;
use crate::health::Health;
use crate::mesh::Mesh;
use crate::table::Table;
use crate::traffic::{SiteTotals, Traffic};
use ring::Ring;

/// Samples kept: an hour at the default interval.
pub const SAMPLES: usize = 720;
/// Events kept.
pub const EVENTS: usize = 200;
/// Most sites and most peers in one sample (the rest are left out of it).
pub const MAX_SERIES: usize = 64;
/// The default sampling interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// The environment variable that overrides the interval (milliseconds, 100 to 60,000).
pub const INTERVAL_ENV: &str = "GROUTER_HISTORY_INTERVAL_MS";
/// Audit entries read per observation (more writes than this in one interval: the oldest
/// of them are not listed as events; `/v1/audit` still has them).
const AUDIT_PER_TICK: usize = 50;

/// The interval from [`INTERVAL_ENV`], else [`DEFAULT_INTERVAL`].
pub fn interval_from_env() -> Duration {
    std::env::var(INTERVAL_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| (100..=60_000).contains(ms))
        .map_or(DEFAULT_INTERVAL, Duration::from_millis)
}

/// A peer link's RTT.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerRtt {
    /// The peer node.
    pub node_id: String,
    /// Its site.
    pub site: String,
    /// The last measured RTT, if any.
    pub rtt_ms: Option<f64>,
}

/// A control-plane write as the history lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// Unix milliseconds of the write.
    pub at_ms: u64,
    /// Its clock (orders writes of one millisecond).
    pub hlc: String,
    /// The node that took it.
    pub node_id: String,
    /// `put` or `delete`.
    pub action: String,
    /// The config key (`policy/...`, `cert/...`).
    pub key: String,
    /// What was written, briefly (never a key).
    pub summary: String,
}

/// What the node looks like at one instant.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// The proxy's totals per answering site.
    pub traffic: Vec<SiteTotals>,
    /// Routes per site.
    pub routes: BTreeMap<String, usize>,
    /// Connected peers.
    pub peers: Vec<PeerRtt>,
    /// The sync state (`in_sync`, `degraded`, `lost`).
    pub sync: &'static str,
    /// Every other node the mesh knows: `node_id → (site, verdict)`.
    pub nodes: BTreeMap<String, (String, &'static str)>,
    /// The newest control-plane writes, any order.
    pub writes: Vec<Write>,
}

/// Requests and 5xx per site, as totals.
type Totals = BTreeMap<Arc<str>, (u64, u64)>;

#[derive(Debug, Clone)]
struct SiteSample {
    site: Arc<str>,
    requests_per_sec: Option<f64>,
    error_rate: Option<f64>,
    routes: Option<usize>,
}

#[derive(Debug, Clone)]
struct Sample {
    at_ms: u64,
    sync: &'static str,
    sites: Vec<SiteSample>,
    peers: Vec<PeerRtt>,
}

#[derive(Debug, Clone)]
struct Event {
    at_ms: u64,
    body: Value,
}

/// The sans-IO history: observations in, a bounded record out.
#[derive(Debug)]
pub struct Recorder {
    interval: Duration,
    samples: Ring<Sample>,
    events: Ring<Event>,
    /// Totals and time of the previous observation, for rates.
    last_traffic: Option<(u64, Totals)>,
    last_sync: Option<&'static str>,
    last_nodes: Option<BTreeMap<String, (String, &'static str)>>,
    last_write: Option<(u64, String)>,
}

impl Recorder {
    /// An empty record of [`SAMPLES`] samples taken every `interval`.
    pub fn new(interval: Duration) -> Recorder {
        Recorder::with_capacity(interval, SAMPLES, EVENTS)
    }

    /// An empty record with other bounds (tests).
    pub fn with_capacity(interval: Duration, samples: usize, events: usize) -> Recorder {
        Recorder {
            interval,
            samples: Ring::new(samples),
            events: Ring::new(events),
            last_traffic: None,
            last_sync: None,
            last_nodes: None,
            last_write: None,
        }
    }

    /// Record one observation: a sample, and an event for each change since the last.
    pub fn observe(&mut self, obs: Observation) {
        let at = obs.at_ms;
        // Rates against the previous totals.
        let totals: Totals = obs
            .traffic
            .iter()
            .map(|t| (t.site.clone(), (t.requests, t.errors)))
            .collect();
        let mut sites: BTreeMap<Arc<str>, SiteSample> = BTreeMap::new();
        let blank = |site: &Arc<str>| SiteSample {
            site: site.clone(),
            requests_per_sec: None,
            error_rate: None,
            routes: None,
        };
        for (site, &(req, err)) in &totals {
            let mut s = blank(site);
            if let Some((then, before)) = &self.last_traffic {
                let (req0, err0) = before.get(site).copied().unwrap_or((0, 0));
                let secs = (at.saturating_sub(*then) as f64 / 1000.0).max(0.001);
                let (dr, de) = (req.saturating_sub(req0), err.saturating_sub(err0));
                s.requests_per_sec = Some(dr as f64 / secs);
                s.error_rate = Some(if dr == 0 { 0.0 } else { de as f64 / dr as f64 });
            }
            sites.insert(site.clone(), s);
        }
        for (site, &routes) in &obs.routes {
            let key: Arc<str> = site.as_str().into();
            let s = sites.entry(key.clone()).or_insert_with(|| {
                let mut s = blank(&key);
                if self.last_traffic.is_some() {
                    // No request answered by that site yet: none per second.
                    s.requests_per_sec = Some(0.0);
                    s.error_rate = Some(0.0);
                }
                s
            });
            s.routes = Some(routes);
        }
        self.last_traffic = Some((at, totals));
        let mut peers = obs.peers;
        peers.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        peers.truncate(MAX_SERIES);
        self.samples.push(Sample {
            at_ms: at,
            sync: obs.sync,
            sites: sites.into_values().take(MAX_SERIES).collect(),
            peers,
        });

        if self.last_sync != Some(obs.sync) {
            self.event(
                at,
                json!({"kind": "sync", "from": self.last_sync, "to": obs.sync}),
            );
            self.last_sync = Some(obs.sync);
        }
        if let Some(before) = self.last_nodes.take() {
            for (node, (site, state)) in &obs.nodes {
                let was = before.get(node).map(|(_, s)| *s);
                if was != Some(*state) {
                    self.event(
                        at,
                        json!({"kind": "node", "node_id": node, "site": site, "from": was, "to": state}),
                    );
                }
            }
            for (node, (site, state)) in &before {
                if !obs.nodes.contains_key(node) {
                    self.event(
                        at,
                        json!({"kind": "node", "node_id": node, "site": site, "from": state, "to": "removed"}),
                    );
                }
            }
        } else {
            // The first look: only what is already wrong is news.
            for (node, (site, state)) in obs.nodes.iter().filter(|(_, (_, s))| *s != "alive") {
                self.event(
                    at,
                    json!({"kind": "node", "node_id": node, "site": site, "from": null, "to": state}),
                );
            }
        }
        self.last_nodes = Some(obs.nodes);
        let mut writes = obs.writes;
        writes.sort_by(|a, b| (a.at_ms, &a.hlc).cmp(&(b.at_ms, &b.hlc)));
        for w in writes {
            let mark = (w.at_ms, w.hlc.clone());
            if self.last_write.as_ref().is_some_and(|last| &mark <= last) {
                continue;
            }
            self.event(
                w.at_ms,
                json!({"kind": "write", "node_id": w.node_id, "action": w.action, "key": w.key, "summary": w.summary}),
            );
            self.last_write = Some(mark);
        }
    }

    fn event(&mut self, at_ms: u64, body: Value) {
        self.events.push(Event { at_ms, body });
    }

    /// Samples held.
    pub fn samples(&self) -> usize {
        self.samples.len()
    }

    /// Events held.
    pub fn events(&self) -> usize {
        self.events.len()
    }

    /// An estimate of the bytes held (the rings' items and their strings).
    pub fn approx_bytes(&self) -> usize {
        let samples: usize = self
            .samples
            .iter()
            .map(|s| {
                std::mem::size_of::<Sample>()
                    + s.sites
                        .iter()
                        .map(|x| std::mem::size_of::<SiteSample>() + x.site.len())
                        .sum::<usize>()
                    + s.peers
                        .iter()
                        .map(|p| std::mem::size_of::<PeerRtt>() + p.node_id.len() + p.site.len())
                        .sum::<usize>()
            })
            .sum();
        let events: usize = self
            .events
            .iter()
            .map(|e| std::mem::size_of::<Event>() + e.body.to_string().len())
            .sum();
        samples + events
    }

    /// The `GET /v1/history` body: samples oldest first, events newest first.
    pub fn to_json(&self) -> Value {
        let samples: Vec<Value> = self
            .samples
            .iter()
            .map(|s| {
                json!({
                    "at_ms": s.at_ms,
                    "sync": s.sync,
                    "sites": s.sites.iter().map(|x| json!({
                        "site": &*x.site,
                        "requests_per_sec": x.requests_per_sec,
                        "error_rate": x.error_rate,
                        "routes": x.routes,
                    })).collect::<Vec<_>>(),
                    "peers": s.peers.iter().map(|p| json!({
                        "node_id": p.node_id,
                        "site": p.site,
                        "rtt_ms": p.rtt_ms,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let events: Vec<Value> = self
            .events
            .iter()
            .rev()
            .map(|e| {
                let mut v = e.body.clone();
                if let Some(o) = v.as_object_mut() {
                    o.insert("at_ms".into(), json!(e.at_ms));
                }
                v
            })
            .collect();
        json!({
            "interval_ms": u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX),
            "capacity": self.samples.capacity(),
            "events_capacity": self.events.capacity(),
            "approx_bytes": self.approx_bytes(),
            "samples": samples,
            "events": events,
        })
    }
}

/// The shared history: the sampler writes it, `/v1/history` reads it.
#[derive(Debug)]
pub struct History {
    recorder: Mutex<Recorder>,
}

impl History {
    /// An empty history sampled every `interval`.
    pub fn new(interval: Duration) -> Arc<History> {
        Arc::new(History {
            recorder: Mutex::new(Recorder::new(interval)),
        })
    }

    /// The interval it is sampled at.
    pub fn interval(&self) -> Duration {
        self.recorder.lock().interval
    }

    /// The `GET /v1/history` body.
    pub fn to_json(&self) -> Value {
        self.recorder.lock().to_json()
    }
}

/// What the sampler reads.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Routes per site.
    pub table: Arc<Table>,
    /// The sync state.
    pub health: Arc<Health>,
    /// Peers' RTTs and nodes' verdicts, with a mesh.
    pub mesh: Option<Arc<Mesh>>,
    /// Policy and certificate writes.
    pub control: Arc<Control>,
    /// The proxy's counters.
    pub traffic: Arc<Traffic>,
}

/// Observe `sources` now.
fn observe(sources: &Sources) -> Observation {
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let me = sources.table.me();
    let nodes: BTreeMap<String, (String, &'static str)> = sources
        .mesh
        .as_deref()
        .map(Mesh::nodes)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.origin.node_id != me.node_id)
        .map(|n| {
            (
                n.origin.node_id.to_string(),
                (n.origin.site.to_string(), n.state.as_str()),
            )
        })
        .collect();
    let mut routes: BTreeMap<String, usize> = BTreeMap::new();
    for p in sources.table.partitions() {
        let dead = nodes
            .get(&*p.origin.node_id)
            .is_some_and(|(_, s)| *s == "dead");
        if dead {
            continue;
        }
        let n = routes.entry(p.origin.site.to_string()).or_default();
        // Nodes of a site learn the same bus: the largest, not a sum.
        *n = (*n).max(p.routes);
    }
    let peers = sources
        .mesh
        .as_deref()
        .map(Mesh::peers)
        .unwrap_or_default()
        .iter()
        .map(|p| PeerRtt {
            node_id: p.node_id.clone(),
            site: p.site.clone(),
            rtt_ms: p.rtt().map(|d| d.as_secs_f64() * 1000.0),
        })
        .collect();
    let writes = sources
        .control
        .audit(AUDIT_PER_TICK)
        .into_iter()
        .map(|a| Write {
            at_ms: a.at_ms,
            hlc: a.hlc,
            node_id: a.node_id,
            action: a.action,
            key: a.key,
            summary: a.summary,
        })
        .collect();
    Observation {
        at_ms,
        traffic: sources.traffic.totals(),
        routes,
        peers,
        sync: sources.health.sync().as_str(),
        nodes,
        writes,
    }
}

/// Sample `sources` into `history` at its interval until `shutdown`.
pub async fn run(history: Arc<History>, sources: Sources, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(history.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {
                let obs = observe(&sources);
                history.recorder.lock().observe(obs);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(at_ms: u64, lon: (u64, u64), sync: &'static str) -> Observation {
        Observation {
            at_ms,
            traffic: vec![SiteTotals {
                site: "lon".into(),
                requests: lon.0,
                errors: lon.1,
            }],
            routes: [("lon".to_string(), 3), ("nyc".to_string(), 2)].into(),
            peers: vec![PeerRtt {
                node_id: "nyc-1".into(),
                site: "nyc".into(),
                rtt_ms: Some(1.5),
            }],
            sync,
            nodes: [("nyc-1".to_string(), ("nyc".to_string(), "alive"))].into(),
            writes: Vec::new(),
        }
    }

    #[test]
    fn rates_routes_rtts_and_events_in_the_json() {
        let mut r = Recorder::new(Duration::from_secs(5));
        r.observe(obs(10_000, (0, 0), "lost"));
        let mut o = obs(15_000, (50, 5), "in_sync");
        o.nodes.insert("nyc-1".into(), ("nyc".into(), "suspect"));
        o.writes.push(Write {
            at_ms: 14_000,
            hlc: "14000.0@lon-1".into(),
            node_id: "lon-1".into(),
            action: "put".into(),
            key: "policy/site/nyc".into(),
            summary: "drained".into(),
        });
        r.observe(o.clone());
        // The same write seen again is not listed twice.
        o.at_ms = 20_000;
        r.observe(o);
        let j = r.to_json();
        assert_eq!(j["interval_ms"], 5000);
        assert_eq!(j["capacity"], SAMPLES);
        let samples = j["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0]["sites"][0]["requests_per_sec"], Value::Null);
        let lon = &samples[1]["sites"][0];
        assert_eq!(lon["site"], "lon");
        assert_eq!(lon["requests_per_sec"], 10.0);
        assert_eq!(lon["error_rate"], 0.1);
        assert_eq!(lon["routes"], 3);
        let nyc = &samples[1]["sites"][1];
        assert_eq!((&nyc["site"], &nyc["routes"]), (&json!("nyc"), &json!(2)));
        assert_eq!(nyc["requests_per_sec"], 0.0);
        assert_eq!(samples[2]["sites"][0]["requests_per_sec"], 0.0);
        assert_eq!(
            samples[1]["peers"][0],
            json!({"node_id": "nyc-1", "site": "nyc", "rtt_ms": 1.5})
        );
        let kinds: Vec<String> = j["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| format!("{}:{}", e["kind"].as_str().unwrap(), e["to"]))
            .collect();
        // Newest first: the write (at 14 s, but seen at 15 s, after the node's change).
        assert_eq!(
            kinds,
            [
                "write:null",
                "node:\"suspect\"",
                "sync:\"in_sync\"",
                "sync:\"lost\""
            ]
        );
        assert_eq!(j["events"][0]["key"], "policy/site/nyc");
    }

    #[test]
    fn holds_at_most_its_capacity_of_samples_and_events() {
        let mut r = Recorder::with_capacity(Duration::from_secs(5), 720, 200);
        for i in 0..5_000u64 {
            let sync = if i % 2 == 0 { "in_sync" } else { "degraded" };
            r.observe(obs(i * 5_000, (i, 0), sync));
            assert!(r.samples() <= 720 && r.events() <= 200);
        }
        assert_eq!((r.samples(), r.events()), (720, 200));
        let bytes = r.approx_bytes();
        // Bounded: one more hour changes nothing.
        for i in 5_000..6_000u64 {
            r.observe(obs(i * 5_000, (i, 0), "in_sync"));
        }
        assert!(
            r.approx_bytes() <= bytes + bytes / 10,
            "{bytes} → {}",
            r.approx_bytes()
        );
        assert!(bytes < 1 << 20, "{bytes} bytes for 3 series");
        let j = r.to_json();
        assert_eq!(j["samples"].as_array().unwrap().len(), 720);
        assert_eq!(j["events"].as_array().unwrap().len(), 200);
    }

    #[test]
    fn removed_nodes_and_many_sites_stay_within_the_series_bound() {
        let mut r = Recorder::new(Duration::from_secs(5));
        r.observe(obs(0, (0, 0), "in_sync"));
        let mut o = obs(5_000, (0, 0), "in_sync");
        o.nodes.clear();
        o.routes = (0..500).map(|i| (format!("s{i:03}"), 1)).collect();
        o.peers = (0..500)
            .map(|i| PeerRtt {
                node_id: format!("n{i}"),
                site: "x".into(),
                rtt_ms: None,
            })
            .collect();
        r.observe(o);
        let j = r.to_json();
        assert_eq!(j["events"][0]["to"], "removed");
        assert_eq!(
            j["samples"][1]["sites"].as_array().unwrap().len(),
            MAX_SERIES
        );
        assert_eq!(
            j["samples"][1]["peers"].as_array().unwrap().len(),
            MAX_SERIES
        );
    }
}
