//! Placing apps across foundations (CONTRACT.md, "Placing apps across foundations";
//! docs/PLACEMENT.md).
//!
//! Owns:
//! - the keys: the desired placement `placement/<org>/<space>/<app>` (written through the
//!   admin API at any node), each site's report `placement-status/<org>/<space>/<app>/<site>`
//!   (written only by that site's reconciler) and each site's RTT to the others
//!   `site-rtt/<site>`, all config keys merged by last writer wins like policies;
//! - [`evaluate`]: the deterministic choice ([`choose`]) from the merged view, the same at
//!   every node, with every site's report: what `GET /v1/placements…` shows;
//! - [`reconcile`]: the per-site reconciler, which acts on this site's own Cloud
//!   Controller only, with this site's own credentials;
//! - [`droplet`]: droplets streamed site to site between the two sites' nodes over the
//!   mesh's mutual TLS.
//!
//! Must never: touch another site's Cloud Controller, hold another site's credentials,
//! delete an app (a site no longer chosen scales it to 0), or buffer a whole droplet.

pub mod choose;
pub mod droplet;
pub mod reconcile;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::control::Control;
use crate::policy::{Policies, SiteFacts};
use crate::table::Table;
use choose::{Candidate, Choice, Rules};

/// Desired placements: `placement/<org>/<space>/<app>`.
pub const PLACEMENT: &str = "placement/";
/// Each site's report: `placement-status/<org>/<space>/<app>/<site>`.
pub const STATUS: &str = "placement-status/";
/// Each site's RTT to the other sites, in 10 ms steps: `site-rtt/<site>`.
pub const SITE_RTT: &str = "site-rtt/";

/// Most instances a placement may ask for.
pub const MAX_INSTANCES: u32 = 10_000;
/// Steps kept in a site's report.
pub const STEPS_KEPT: usize = 20;

/// How many sites, or which.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Sites {
    /// This many sites, chosen by [`choose`].
    Count(u32),
    /// Exactly these sites.
    List(Vec<String>),
}

/// The value of a `placement/…` key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Desired {
    /// Where the app should run.
    pub sites: Sites,
    /// Instances at each chosen site; `None` keeps what the app has where it runs.
    #[serde(default)]
    pub instances: Option<u32>,
}

/// An app, by the names Cloud Foundry knows it by at every foundation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AppKey {
    /// Organisation name.
    pub org: String,
    /// Space name.
    pub space: String,
    /// App name.
    pub app: String,
}

impl AppKey {
    /// The key of the desired placement.
    pub fn key(&self) -> String {
        format!("{PLACEMENT}{}/{}/{}", self.org, self.space, self.app)
    }

    /// The key of `site`'s report.
    pub fn status_key(&self, site: &str) -> String {
        format!("{}{site}", self.status_prefix())
    }

    fn status_prefix(&self) -> String {
        format!("{STATUS}{}/{}/{}/", self.org, self.space, self.app)
    }

    /// The app named by the rest of a `placement/…` key.
    pub fn parse(rest: &str) -> Option<AppKey> {
        let mut parts = rest.split('/');
        let (org, space, app) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let key = AppKey {
            org: org.to_string(),
            space: space.to_string(),
            app: app.to_string(),
        };
        [org, space, app]
            .iter()
            .all(|n| check_name(n).is_ok())
            .then_some(key)
    }
}

impl std::fmt::Display for AppKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.org, self.space, self.app)
    }
}

/// Whether `name` may be an org, space or app name here: 1..=255 bytes, no `/`, no
/// control characters, not `.` or `..`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err("must be 1..=255 bytes".into());
    }
    if name == "." || name == ".." || name.contains('/') || name.chars().any(char::is_control) {
        return Err(format!(
            "{name:?} may not contain '/' or control characters"
        ));
    }
    Ok(())
}

/// `name` as one URL path segment: unreserved bytes as they are, the rest `%XX`.
pub fn encode_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One URL path segment decoded (`%XX`), or `None` when it is not valid UTF-8 or a `%`
/// is not followed by two hex digits.
pub fn decode_segment(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Where a site's reconciler is with an app.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// No report from the site yet.
    #[default]
    Unknown,
    /// The app does not exist there.
    Absent,
    /// Chosen; work not begun.
    Pending,
    /// A step is under way (`step`).
    Working,
    /// Started with the desired instances.
    Running,
    /// Present with 0 instances (not chosen).
    Stopped,
    /// The last attempt failed (`error`); retried at `next_attempt_ms`.
    Failed,
}

/// One reconciler step's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The step.
    pub step: String,
    /// `ok` or `failed`.
    pub outcome: String,
    /// What it did or why it failed.
    pub detail: String,
    /// When.
    pub at_ms: u64,
}

/// A route of the app as Cloud Foundry maps it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RouteSpec {
    /// Host label (empty for a route on the domain itself).
    pub host: String,
    /// Domain name.
    pub domain: String,
    /// Path (empty or starting with `/`).
    pub path: String,
}

impl RouteSpec {
    /// The full host name.
    pub fn fqdn(&self) -> String {
        if self.host.is_empty() {
            self.domain.clone()
        } else {
            format!("{}.{}", self.host, self.domain)
        }
    }

    /// `host.domain/path`, as Cloud Foundry writes a route's URL.
    pub fn url(&self) -> String {
        format!("{}{}", self.fqdn(), self.path)
    }
}

/// The value of a `placement-status/…` key: one site's report on one app.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SiteStatus {
    /// Where the reconciler is.
    pub state: State,
    /// The step under way, while `working`.
    pub step: Option<String>,
    /// The app's guid at this site's Cloud Controller.
    pub app_guid: Option<String>,
    /// When the app was created there (the Cloud Controller's `created_at`).
    pub created_at: Option<String>,
    /// Web instances the Cloud Controller reports.
    pub instances: Option<u32>,
    /// `STARTED` or `STOPPED`.
    pub app_state: Option<String>,
    /// SHA-256 of the current droplet's bits.
    pub droplet_sha256: Option<String>,
    /// The current droplet's process types.
    pub process_types: BTreeMap<String, String>,
    /// Whether the current droplet can be copied (false for a docker app).
    pub copyable: Option<bool>,
    /// The app's routes, as URLs.
    pub routes: Vec<String>,
    /// The app's routes, as Cloud Foundry maps them.
    pub route_specs: Vec<RouteSpec>,
    /// Why the last attempt failed.
    pub error: Option<String>,
    /// Failed attempts in a row.
    pub attempts: u32,
    /// When the next attempt is due, after a failure.
    pub next_attempt_ms: Option<u64>,
    /// The last [`STEPS_KEPT`] steps.
    pub steps: Vec<StepRecord>,
    /// The node that wrote the report.
    pub reconciler: String,
    /// When it was written.
    pub updated_at_ms: u64,
}

impl SiteStatus {
    /// Whether the app runs there: started with at least one instance.
    pub fn running(&self) -> bool {
        self.app_state.as_deref() == Some("STARTED") && self.instances.unwrap_or(0) > 0
    }
}

/// One site as the choice sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteInfo {
    /// The site.
    pub site: String,
    /// Its region.
    pub region: Option<String>,
    /// Whether it can serve.
    pub healthy: bool,
}

/// Every site this node knows of (its own and every partition owner's), with regions and
/// health from `facts`.
pub fn known_sites(table: &Table, facts: &SiteFacts) -> Vec<SiteInfo> {
    let mut sites = BTreeSet::new();
    sites.insert(table.me().site.to_string());
    for p in table.partitions() {
        sites.insert(p.origin.site.to_string());
    }
    sites
        .into_iter()
        .map(|site| SiteInfo {
            region: facts.region(&site).map(str::to_string),
            healthy: facts.is_healthy(&site),
            site,
        })
        .collect()
}

/// A placement with the choice and every site's report.
#[derive(Debug, Clone)]
pub struct Evaluated {
    /// The app.
    pub app: AppKey,
    /// What was asked.
    pub desired: Desired,
    /// When and where it was written (HLC).
    pub written_at_ms: u64,
    /// The node that wrote it.
    pub written_by: String,
    /// The choice.
    pub choice: Choice,
    /// Reports by site (every known site, `Unknown` where none came).
    pub sites: BTreeMap<String, SiteStatus>,
    /// The instances each chosen site should run.
    pub instances: u32,
}

/// The merged inputs of the choice, read once for many placements.
#[derive(Debug)]
pub struct Inputs {
    sites: Vec<SiteInfo>,
    policies: Arc<Policies>,
    rtt: BTreeMap<String, BTreeMap<String, u32>>,
    /// The site of every node this node holds a partition of (certified by the mesh).
    node_sites: HashMap<String, String>,
}

impl Inputs {
    /// Read the sites, policies and published RTTs.
    pub fn read(control: &Control, table: &Table) -> Inputs {
        let facts = control.policies().facts();
        let mut node_sites: HashMap<String, String> = table
            .partitions()
            .iter()
            .map(|p| (p.origin.node_id.to_string(), p.origin.site.to_string()))
            .collect();
        let me = table.me();
        node_sites.insert(me.node_id.to_string(), me.site.to_string());
        let rtt = control
            .list(SITE_RTT)
            .into_iter()
            .filter(|(k, w)| reported_by(&node_sites, &w.holder, &k[SITE_RTT.len()..]))
            .filter_map(|(k, w)| {
                let site = k.strip_prefix(SITE_RTT)?.to_string();
                let v: BTreeMap<String, u32> = serde_json::from_slice(w.bytes()).ok()?;
                Some((site, v))
            })
            .collect();
        Inputs {
            sites: known_sites(table, &facts),
            policies: control.policies().policies(),
            rtt,
            node_sites,
        }
    }

    /// Each site's published RTTs to the others (`site → site → ms`, in 10 ms steps), each
    /// counted only from a node of that site.
    pub fn rtts(&self) -> &BTreeMap<String, BTreeMap<String, u32>> {
        &self.rtt
    }

    /// The known sites.
    pub fn sites(&self) -> &[SiteInfo] {
        &self.sites
    }

    fn rtt(&self, a: &str, b: &str) -> Option<u32> {
        let one = |x: &str, y: &str| self.rtt.get(x).and_then(|m| m.get(y)).copied();
        match (one(a, b), one(b, a)) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        }
    }

    /// What the app's route policies allow, from the routes any site reports for it.
    fn rules(&self, reports: &BTreeMap<String, SiteStatus>) -> Rules {
        let hosts: BTreeSet<String> = reports
            .values()
            .flat_map(|s| s.route_specs.iter().map(RouteSpec::fqdn))
            .collect();
        let mut rules = Rules::default();
        for host in &hosts {
            let Some(rule) = self.policies.route(host) else {
                continue;
            };
            if let Some(regions) = &rule.policy.regions {
                let these: BTreeSet<String> = regions.iter().cloned().collect();
                rules.regions = Some(match rules.regions.take() {
                    None => these,
                    Some(before) => before.intersection(&these).cloned().collect(),
                });
            }
            if rules.weights.is_none() {
                rules.weights.clone_from(&rule.policy.weights);
            }
        }
        rules
    }
}

/// Whether `holder` (the node whose partition holds a report) is a node of `site`: a
/// site's report and RTTs count only from the site's own nodes, so a node of another site,
/// compromised or not, can neither hide nor forge what runs where.
fn reported_by(node_sites: &HashMap<String, String>, holder: &str, site: &str) -> bool {
    node_sites.get(holder).is_some_and(|s| s == site)
}

/// The placement of `app` as every node sees it, or `None` when there is none.
pub fn evaluate(control: &Control, inputs: &Inputs, app: &AppKey) -> Option<Evaluated> {
    let winner = control.get(&app.key())?;
    let desired: Desired = serde_json::from_slice(winner.bytes()).ok()?;
    let prefix = app.status_prefix();
    let mut sites: BTreeMap<String, SiteStatus> = control
        .list(&prefix)
        .into_iter()
        .filter_map(|(k, w)| {
            let site = k.strip_prefix(prefix.as_str())?.to_string();
            // Only a node of the site may say what runs there.
            reported_by(&inputs.node_sites, &w.holder, &site).then_some(())?;
            Some((site, serde_json::from_slice(w.bytes()).ok()?))
        })
        .collect();
    for s in &inputs.sites {
        sites.entry(s.site.clone()).or_default();
    }
    let candidates: Vec<Candidate> = inputs
        .sites
        .iter()
        .map(|s| Candidate {
            site: s.site.clone(),
            region: s.region.clone(),
            healthy: s.healthy,
            running_since: sites
                .get(&s.site)
                .filter(|r| r.running())
                .map(|r| r.created_at.clone().unwrap_or_default()),
            placing: sites
                .get(&s.site)
                .is_some_and(|r| r.state == State::Working),
        })
        .collect();
    let rules = inputs.rules(&sites);
    let choice = choose::choose(&desired.sites, &candidates, &rules, |a, b| inputs.rtt(a, b));
    let instances = desired.instances.unwrap_or_else(|| {
        choice
            .chosen
            .iter()
            .chain(sites.keys())
            .filter_map(|s| {
                sites
                    .get(s)
                    .filter(|r| r.running())
                    .and_then(|r| r.instances)
            })
            .next()
            .unwrap_or(1)
    });
    Some(Evaluated {
        app: app.clone(),
        desired,
        written_at_ms: winner.value.hlc.ms,
        written_by: winner.value.hlc.node.to_string(),
        choice,
        sites,
        instances,
    })
}

/// Every placement, in key order.
pub fn evaluate_all(control: &Control, inputs: &Inputs) -> Vec<Evaluated> {
    control
        .list(PLACEMENT)
        .into_iter()
        .filter_map(|(k, _)| AppKey::parse(k.strip_prefix(PLACEMENT)?))
        .filter_map(|app| evaluate(control, inputs, &app))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_placements_read_as_the_contract_writes_them() {
        let d: Desired = serde_json::from_str(r#"{"sites":2,"instances":3}"#).unwrap();
        assert_eq!(d.sites, Sites::Count(2));
        assert_eq!(d.instances, Some(3));
        let d: Desired = serde_json::from_str(r#"{"sites":["lon","nyc"]}"#).unwrap();
        assert_eq!(d.sites, Sites::List(vec!["lon".into(), "nyc".into()]));
        assert!(serde_json::from_str::<Desired>(r#"{"sites":2,"extra":1}"#).is_err());
        assert!(serde_json::from_str::<Desired>(r#"{"sites":-1}"#).is_err());
    }

    #[test]
    fn app_keys_round_trip_and_refuse_slashes_and_dots() {
        let k = AppKey::parse("demo/prod/shop").unwrap();
        assert_eq!(k.key(), "placement/demo/prod/shop");
        assert_eq!(k.status_key("nyc"), "placement-status/demo/prod/shop/nyc");
        assert!(AppKey::parse("demo/prod").is_none());
        assert!(AppKey::parse("demo/prod/shop/x").is_none());
        assert!(AppKey::parse("demo/../shop").is_none());
        assert!(check_name("a\r").is_err());
    }

    #[test]
    fn a_sites_report_counts_only_from_its_own_nodes() {
        let nodes: HashMap<String, String> = [("lon-1", "lon"), ("nyc-1", "nyc")]
            .map(|(n, s)| (n.to_string(), s.to_string()))
            .into();
        assert!(reported_by(&nodes, "lon-1", "lon"));
        assert!(
            !reported_by(&nodes, "nyc-1", "lon"),
            "another site's node cannot report for lon"
        );
        assert!(
            !reported_by(&nodes, "ghost-1", "lon"),
            "a node no partition stands behind"
        );
    }

    #[test]
    fn path_segments_round_trip_and_bad_escapes_are_refused() {
        for name in ["shop", "my app", "a%b", "ünï", "x?y#z"] {
            assert_eq!(decode_segment(&encode_segment(name)).as_deref(), Some(name));
        }
        assert_eq!(encode_segment("my app/x"), "my%20app%2Fx");
        assert!(decode_segment("%zz").is_none());
        assert!(decode_segment("%2").is_none());
        assert!(decode_segment("%FF").is_none(), "not UTF-8");
    }
}
