//! The per-site reconciler: makes this site's own Cloud Controller match the placement.
//!
//! One node per site reconciles at a time: the alive node of the site with the lowest node
//! id (each node of a site sees the same members; all of a site's nodes carry the same
//! `[cloud_controller]`). For every placement it runs one task that, each pass, looks at the
//! app in this foundation, reports what it saw (`placement-status/…/<site>`: the choice at
//! other sites reads it), and then does only the steps still missing:
//!
//! - chosen: find or create the app in the same org and space; when it has no current
//!   droplet, copy the droplet from a site that has one ([`super::droplet`], streamed),
//!   upload it, set it current; map the app's routes; scale to the desired instances; start;
//! - not chosen: scale it to 0 where it runs (never delete), unless the site was left out
//!   only for its health: an unhealthy site is left as it is.
//!
//! Every pass starts from what the Cloud Controller says, so a pass cut short (a node
//! restart mid-copy, a Cloud Controller failing mid-way) is taken up by the next one: an
//! app already created is reused, a droplet awaiting its bits gets them again. Failures
//! are retried with exponential back-off (1 s to 60 s) and reported with the step at fault.
//!
//! Must never: act on another site's Cloud Controller, delete an app, or write another
//! site's report.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::droplet::DropletFetcher;
use super::{
    AppKey, Evaluated, Inputs, PLACEMENT, RouteSpec, SITE_RTT, STEPS_KEPT, SiteStatus, State,
    StepRecord, evaluate,
};
use crate::cc::{App, CcClient, CcError, Droplet};
use crate::control::{Control, now_ms};
use crate::mesh::Mesh;
use crate::table::Table;

/// How often the reconciler looks for new placements and re-checks who reconciles.
const TICK: Duration = Duration::from_secs(1);
/// How often a settled app is looked at again in its Cloud Controller.
const RECHECK: Duration = Duration::from_secs(10);
/// How often this site's RTTs to the others are published (when they changed).
const RTT_EVERY: Duration = Duration::from_secs(10);
/// Back-off after failures: 1 s doubling to this.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long after a placement is written a site waits for the others' first reports
/// before "no site has a droplet to copy" is an error.
const REPORT_GRACE_MS: u64 = 30_000;
/// Longest wait for a droplet another pass left processing.
const PROCESSING_WAIT: Duration = Duration::from_secs(120);

/// Labels of the step counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    /// The step.
    pub step: String,
    /// `ok` or `failed`.
    pub outcome: String,
}

/// The reconciler's counters.
#[derive(Debug, Default)]
pub struct PlacementMetrics {
    /// Steps taken, by step and outcome.
    pub steps: Family<StepLabels, Counter>,
    /// Droplet bytes uploaded to this site's Cloud Controller after a copy.
    pub droplet_bytes: Counter,
}

impl PlacementMetrics {
    /// Register in `metrics`.
    pub fn register(self: &Arc<Self>, metrics: &crate::metrics::Metrics) {
        metrics.register(
            "placement_steps",
            "Placement reconciler steps, by step and outcome",
            self.steps.clone(),
        );
        metrics.register(
            "placement_droplet_bytes",
            "Droplet bytes copied from other sites into this site's Cloud Controller",
            self.droplet_bytes.clone(),
        );
    }
}

/// A failed step.
#[derive(Debug)]
struct Failure {
    step: &'static str,
    error: String,
    /// Not a failure yet: waiting for another site's report (not counted, no back-off).
    wait: bool,
}

fn at(step: &'static str) -> impl Fn(CcError) -> Failure {
    move |e| Failure {
        wait: false,
        step,
        error: e.to_string(),
    }
}

/// This site's reconciler.
#[derive(Debug)]
pub struct Reconciler {
    control: Arc<Control>,
    table: Arc<Table>,
    mesh: Option<Arc<Mesh>>,
    fetcher: Option<DropletFetcher>,
    cc: CcClient,
    node_id: String,
    site: String,
    metrics: Arc<PlacementMetrics>,
}

impl Reconciler {
    /// The reconciler of this node's site, acting on `cc`.
    pub fn new(
        control: Arc<Control>,
        table: Arc<Table>,
        mesh: Option<Arc<Mesh>>,
        fetcher: Option<DropletFetcher>,
        cc: CcClient,
        metrics: Arc<PlacementMetrics>,
    ) -> Reconciler {
        let me = table.me();
        let (node_id, site) = (me.node_id.to_string(), me.site.to_string());
        Reconciler {
            control,
            table,
            mesh,
            fetcher,
            cc,
            node_id,
            site,
            metrics,
        }
    }

    /// Whether this node reconciles its site now: the lowest node id among the site's
    /// alive nodes.
    fn is_reconciler(&self) -> bool {
        !self.table.partitions().iter().any(|p| {
            *p.origin.site == *self.site && p.origin.is_alive() && *p.origin.node_id < *self.node_id
        })
    }

    /// Run until `shutdown`: one task per placement while this node reconciles its site.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tasks: HashMap<AppKey, CancellationToken> = HashMap::new();
        let mut rtt_at: Option<Instant> = None;
        let mut ticks = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            if !self.is_reconciler() {
                for (_, t) in tasks.drain() {
                    t.cancel();
                }
                continue;
            }
            if rtt_at.is_none_or(|t| t.elapsed() >= RTT_EVERY) {
                rtt_at = Some(Instant::now());
                self.publish_rtt();
            }
            let wanted: Vec<AppKey> = self
                .control
                .list(PLACEMENT)
                .into_iter()
                .filter_map(|(k, _)| AppKey::parse(k.strip_prefix(PLACEMENT)?))
                .collect();
            tasks.retain(|app, token| {
                let keep = wanted.contains(app) && !token.is_cancelled();
                if !keep {
                    token.cancel();
                }
                keep
            });
            for app in wanted {
                if tasks.contains_key(&app) {
                    continue;
                }
                let token = shutdown.child_token();
                tasks.insert(app.clone(), token.clone());
                let me = self.clone();
                tokio::spawn(async move {
                    me.follow(app, token).await;
                });
            }
        }
        for (_, t) in tasks.drain() {
            t.cancel();
        }
    }

    /// This site's RTT to every other site it has a peer at, in 10 ms steps (rounded up),
    /// published when it changed, so every node ranks sites by the same numbers.
    fn publish_rtt(&self) {
        let Some(mesh) = &self.mesh else { return };
        let mut rtt: BTreeMap<String, u32> = BTreeMap::new();
        for p in mesh.peers() {
            let Some(d) = p.rtt() else { continue };
            if p.site == self.site {
                continue;
            }
            let steps = u32::try_from(d.as_millis().div_ceil(10)).unwrap_or(u32::MAX / 10);
            let ms = steps.saturating_mul(10);
            rtt.entry(p.site.clone())
                .and_modify(|v| *v = (*v).min(ms))
                .or_insert(ms);
        }
        let key = format!("{SITE_RTT}{}", self.site);
        let current = self
            .control
            .get(&key)
            .filter(|w| *w.holder == *self.node_id)
            .and_then(|w| serde_json::from_slice::<BTreeMap<String, u32>>(w.bytes()).ok());
        if current.as_ref().is_some_and(|c| !rtt_moved(c, &rtt)) {
            return;
        }
        match serde_json::to_vec(&rtt) {
            Ok(bytes) => {
                if let Err(e) = self.control.record(&key, Some(bytes)) {
                    warn!(error = %e, "placement: site RTTs not recorded");
                }
            }
            Err(e) => warn!(error = %e, "placement: site RTTs not encoded"),
        }
    }

    /// Reconcile `app` until its placement is deleted or `stop`.
    async fn follow(&self, app: AppKey, stop: CancellationToken) {
        let mut status = self
            .control
            .get(&app.status_key(&self.site))
            .and_then(|w| serde_json::from_slice::<SiteStatus>(w.bytes()).ok())
            .unwrap_or_default();
        // The placement last acted on, and when to look again without a change.
        let mut last: Option<(String, Instant)> = None;
        loop {
            let inputs = Inputs::read(&self.control, &self.table);
            let Some(placement) = evaluate(&self.control, &inputs, &app) else {
                break;
            };
            let fingerprint = format!(
                "{:?}|{}|{}",
                placement.choice.chosen, placement.instances, placement.written_at_ms
            );
            let changed = last.as_ref().is_none_or(|(f, _)| *f != fingerprint);
            let due = last.as_ref().is_some_and(|(_, at)| Instant::now() >= *at);
            if changed || due {
                if changed {
                    // A new placement is worth an attempt at once, whatever the back-off.
                    status.attempts = 0;
                    status.next_attempt_ms = None;
                }
                match self.pass(&placement, &mut status).await {
                    Ok(()) => {
                        status.error = None;
                        status.attempts = 0;
                        status.next_attempt_ms = None;
                    }
                    Err(f) if f.wait => {
                        status.state = State::Working;
                        status.step = Some(f.step.to_string());
                        status.error = None;
                    }
                    Err(f) => {
                        status.attempts = status.attempts.saturating_add(1);
                        let backoff = backoff(status.attempts);
                        status.state = State::Failed;
                        status.step = Some(f.step.to_string());
                        status.next_attempt_ms = Some(now_ms() + backoff_ms(backoff));
                        warn!(app = %app, site = %self.site, step = f.step, error = %f.error, attempts = status.attempts, "placement: step failed");
                        self.note(&mut status, f.step, "failed", &f.error);
                        status.error = Some(format!("{}: {}", f.step, f.error));
                    }
                }
                self.report(&app, &mut status);
                // After a failure the next attempt is due at the back-off's end (or at once
                // when the placement changes); after a success, at the next recheck.
                let wait = if status.error.is_some() {
                    backoff(status.attempts)
                } else if status.state == State::Working {
                    TICK
                } else {
                    RECHECK
                };
                last = Some((fingerprint, Instant::now() + wait));
            }
            if sleep_or_stop(&stop, TICK).await {
                break;
            }
        }
    }

    /// Write this site's report of `app`, when it says something new.
    fn report(&self, app: &AppKey, status: &mut SiteStatus) {
        let key = app.status_key(&self.site);
        status.reconciler.clone_from(&self.node_id);
        // Only this node's own last report counts as already said (another node of the
        // site may hold an older one).
        let current = self
            .control
            .get(&key)
            .filter(|w| *w.holder == *self.node_id)
            .and_then(|w| serde_json::from_slice::<SiteStatus>(w.bytes()).ok());
        let same = current.as_ref().is_some_and(|c| {
            let mut c = c.clone();
            c.updated_at_ms = status.updated_at_ms;
            c == *status
        });
        if same {
            return;
        }
        status.updated_at_ms = now_ms();
        match serde_json::to_vec(status) {
            Ok(bytes) => {
                if let Err(e) = self.control.record(&key, Some(bytes)) {
                    warn!(app = %app, error = %e, "placement: status not recorded");
                }
            }
            Err(e) => warn!(app = %app, error = %e, "placement: status not encoded"),
        }
    }

    fn note(&self, status: &mut SiteStatus, step: &'static str, outcome: &str, detail: &str) {
        self.metrics
            .steps
            .get_or_create(&StepLabels {
                step: step.into(),
                outcome: outcome.into(),
            })
            .inc();
        status.steps.push(StepRecord {
            step: step.into(),
            outcome: outcome.into(),
            detail: detail.into(),
            at_ms: now_ms(),
        });
        let over = status.steps.len().saturating_sub(STEPS_KEPT);
        status.steps.drain(..over);
    }

    /// Show `step` under way (reported at once, so `gcf scale` can show it).
    fn working(&self, app: &AppKey, status: &mut SiteStatus, step: &'static str) {
        status.state = State::Working;
        status.step = Some(step.into());
        self.report(app, status);
    }

    fn done(&self, status: &mut SiteStatus, step: &'static str, detail: &str) {
        info!(site = %self.site, step, detail, "placement: step done");
        self.note(status, step, "ok", detail);
    }

    /// One pass: observe, report, act on what is missing.
    async fn pass(&self, p: &Evaluated, status: &mut SiteStatus) -> Result<(), Failure> {
        let app = &p.app;
        let chosen = p.choice.has(&self.site);
        let Some(space) = self.space(app, chosen).await? else {
            // Not chosen, and nothing of the app here.
            *status = SiteStatus {
                state: State::Absent,
                steps: std::mem::take(&mut status.steps),
                ..SiteStatus::default()
            };
            return Ok(());
        };
        let mut found = self
            .cc
            .app(&space, &app.app)
            .await
            .map_err(at("find_app"))?;
        let mut current = match &found {
            Some(a) => self
                .cc
                .current_droplet(&a.guid)
                .await
                .map_err(at("find_app"))?,
            None => None,
        };
        self.observe(status, found.as_ref(), current.as_ref())
            .await?;
        if !chosen {
            if p.choice.excluded.get(&self.site) == Some(&super::choose::Excluded::Unhealthy) {
                // Left out for its health alone: it is kept as it is. Scaling it down
                // would not help its clients, and a health flap (or this node's view
                // of it) must never take an app down.
                status.step = None;
                return Ok(());
            }
            return self.retire(app, status, found.as_ref()).await;
        }
        if current.as_ref().is_none_or(|d| !d.is_staged()) {
            let (a, d) = self.copy(p, status, &space, found.take()).await?;
            found = Some(a);
            current = Some(d);
            self.observe(status, found.as_ref(), current.as_ref())
                .await?;
        }
        let Some(found) = found else {
            return Err(Failure {
                wait: false,
                step: "find_app",
                error: "the app vanished while it was being placed".into(),
            });
        };
        self.map_routes(p, status, &space, &found).await?;
        let instances = self
            .cc
            .web_process(&found.guid)
            .await
            .map_err(at("scale"))?
            .instances;
        if instances != p.instances {
            self.working(app, status, "scale");
            self.cc
                .scale_web(&found.guid, p.instances)
                .await
                .map_err(at("scale"))?;
            self.done(
                status,
                "scale",
                &format!("{instances} → {} instances", p.instances),
            );
        }
        status.instances = Some(p.instances);
        if found.state != "STARTED" {
            self.working(app, status, "start");
            self.cc.start(&found.guid).await.map_err(at("start"))?;
            self.done(status, "start", "started");
        }
        status.app_state = Some("STARTED".into());
        status.state = State::Running;
        status.step = None;
        Ok(())
    }

    /// The space's guid; `None` when the org or space is missing and the site is not
    /// chosen (nothing to do), a failure when it is chosen.
    async fn space(&self, app: &AppKey, chosen: bool) -> Result<Option<String>, Failure> {
        let missing = |what: String| {
            if chosen {
                Err(Failure {
                    wait: false,
                    step: "find_app",
                    error: format!("{what} does not exist at {}", self.site),
                })
            } else {
                Ok(None)
            }
        };
        let Some(org) = self.cc.org(&app.org).await.map_err(at("find_app"))? else {
            return missing(format!("org {:?}", app.org));
        };
        let Some(space) = self
            .cc
            .space(&org.guid, &app.space)
            .await
            .map_err(at("find_app"))?
        else {
            return missing(format!("space {:?} in org {:?}", app.space, app.org));
        };
        Ok(Some(space.guid))
    }

    /// Fill the report with what this site's Cloud Controller says of the app.
    async fn observe(
        &self,
        status: &mut SiteStatus,
        found: Option<&App>,
        current: Option<&Droplet>,
    ) -> Result<(), Failure> {
        let Some(a) = found else {
            status.state = State::Absent;
            status.app_guid = None;
            status.created_at = None;
            status.instances = None;
            status.app_state = None;
            status.droplet_sha256 = None;
            status.copyable = None;
            status.routes.clear();
            status.route_specs.clear();
            return Ok(());
        };
        let process = self.cc.web_process(&a.guid).await.map_err(at("find_app"))?;
        let mut routes: Vec<RouteSpec> = self
            .cc
            .app_routes(&a.guid)
            .await
            .map_err(at("find_app"))?
            .iter()
            .filter_map(|r| route_spec(&r.host, &r.path, &r.url))
            .collect();
        routes.sort();
        routes.dedup();
        status.app_guid = Some(a.guid.clone());
        status.created_at = Some(a.created_at.clone());
        status.instances = Some(process.instances);
        status.app_state = Some(a.state.clone());
        status.droplet_sha256 = current.and_then(|d| d.sha256().map(str::to_string));
        status.process_types = current.map(|d| d.process_types.clone()).unwrap_or_default();
        status.copyable = current.map(Droplet::is_buildpack);
        status.routes = routes.iter().map(RouteSpec::url).collect();
        status.route_specs = routes;
        status.state = if status.running() {
            State::Running
        } else {
            State::Stopped
        };
        Ok(())
    }

    /// Not chosen: scale to 0 where it runs.
    async fn retire(
        &self,
        app: &AppKey,
        status: &mut SiteStatus,
        found: Option<&App>,
    ) -> Result<(), Failure> {
        let Some(a) = found else {
            status.state = State::Absent;
            status.step = None;
            return Ok(());
        };
        if status.instances.unwrap_or(0) > 0 {
            self.working(app, status, "scale_to_zero");
            self.cc
                .scale_web(&a.guid, 0)
                .await
                .map_err(at("scale_to_zero"))?;
            let was = status.instances.unwrap_or(0);
            self.done(
                status,
                "scale_to_zero",
                &format!("{was} → 0 instances (not chosen)"),
            );
            status.instances = Some(0);
        }
        status.state = State::Stopped;
        status.step = None;
        Ok(())
    }

    /// Give the app (created when missing) a current droplet copied from another site.
    async fn copy(
        &self,
        p: &Evaluated,
        status: &mut SiteStatus,
        space: &str,
        found: Option<App>,
    ) -> Result<(App, Droplet), Failure> {
        let app = &p.app;
        let (source, sha, process_types) = self.source(p)?;
        let found = match found {
            Some(a) => a,
            None => {
                self.working(app, status, "create_app");
                let a = self
                    .cc
                    .create_app(space, &app.app)
                    .await
                    .map_err(at("create_app"))?;
                self.done(
                    status,
                    "create_app",
                    &format!("created {} in {}/{}", a.guid, app.org, app.space),
                );
                a
            }
        };
        status.app_guid = Some(found.guid.clone());
        // A droplet an earlier pass created (or staged) is taken up again.
        let droplets = self
            .cc
            .app_droplets(&found.guid)
            .await
            .map_err(at("copy_droplet"))?;
        if let Some(d) = droplets
            .iter()
            .find(|d| d.is_staged() && d.sha256() == Some(sha.as_str()))
        {
            self.set_current(app, status, &found, d).await?;
            return Ok((found, d.clone()));
        }
        let pending = droplets.iter().find(|d| d.state == "PROCESSING_UPLOAD");
        if let Some(d) = pending {
            self.working(app, status, "upload_droplet");
            let d = self.await_processing(&d.guid).await?;
            if d.sha256() == Some(sha.as_str()) {
                self.done(
                    status,
                    "upload_droplet",
                    &format!("resumed: {} finished processing", d.guid),
                );
                self.set_current(app, status, &found, &d).await?;
                return Ok((found, d));
            }
        }
        let waiting = droplets
            .iter()
            .find(|d| d.state == "AWAITING_UPLOAD")
            .cloned();
        let resumed = waiting.is_some();
        let droplet = match waiting {
            Some(d) => d,
            None => self
                .cc
                .create_droplet(&found.guid, &process_types)
                .await
                .map_err(at("copy_droplet"))?,
        };
        let Some(fetcher) = &self.fetcher else {
            return Err(Failure {
                wait: false,
                step: "copy_droplet",
                error: "this node has no mesh to copy a droplet over".into(),
            });
        };
        self.working(app, status, "copy_droplet");
        let fetched = fetcher
            .fetch(&source, app, &sha)
            .await
            .map_err(|e| Failure {
                wait: false,
                step: "copy_droplet",
                error: format!("from {source}: {e}"),
            })?;
        let from = fetched.node.clone();
        let len = fetched.len;
        let bytes = self.metrics.droplet_bytes.clone();
        let body = futures::StreamExt::inspect(fetched.body, move |chunk| {
            if let Ok(c) = chunk {
                bytes.inc_by(c.len() as u64);
            }
        });
        self.working(app, status, "upload_droplet");
        let uploaded = self
            .cc
            .upload_droplet(&droplet.guid, len, body)
            .await
            .map_err(at("upload_droplet"))?;
        if uploaded.sha256() != Some(sha.as_str()) {
            return Err(Failure {
                wait: false,
                step: "upload_droplet",
                error: format!(
                    "the uploaded droplet's sha256 {} is not the source's {sha}",
                    uploaded.sha256().unwrap_or("(none)")
                ),
            });
        }
        let detail = format!(
            "{}{} bytes from {source} ({from})",
            if resumed { "resumed: " } else { "" },
            len.map_or_else(|| "?".to_string(), |l| l.to_string())
        );
        self.done(status, "copy_droplet", &detail);
        self.set_current(app, status, &found, &uploaded).await?;
        Ok((found, uploaded))
    }

    async fn set_current(
        &self,
        app: &AppKey,
        status: &mut SiteStatus,
        found: &App,
        d: &Droplet,
    ) -> Result<(), Failure> {
        self.working(app, status, "set_droplet");
        self.cc
            .set_current_droplet(&found.guid, &d.guid)
            .await
            .map_err(at("set_droplet"))?;
        self.done(
            status,
            "set_droplet",
            &format!("droplet {} is current", d.guid),
        );
        Ok(())
    }

    async fn await_processing(&self, guid: &str) -> Result<Droplet, Failure> {
        let deadline = Instant::now() + PROCESSING_WAIT;
        loop {
            let d = self.cc.droplet(guid).await.map_err(at("upload_droplet"))?;
            if d.state != "PROCESSING_UPLOAD" {
                return Ok(d);
            }
            if Instant::now() >= deadline {
                return Err(Failure {
                    wait: false,
                    step: "upload_droplet",
                    error: format!(
                        "droplet {guid} still processing after {} s",
                        PROCESSING_WAIT.as_secs()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The site to copy from: one that reports a copyable droplet (running sites first,
    /// then by name), with its SHA-256 and process types.
    fn source(&self, p: &Evaluated) -> Result<(String, String, BTreeMap<String, String>), Failure> {
        let mut have: Vec<(&String, &SiteStatus)> = p
            .sites
            .iter()
            .filter(|(s, r)| **s != self.site && r.copyable.is_some())
            .collect();
        have.sort_by_key(|(s, r)| (!r.running(), (*s).clone()));
        if let Some((site, r)) = have.iter().find(|(_, r)| r.copyable == Some(true)) {
            if let Some(sha) = &r.droplet_sha256 {
                return Ok(((*site).clone(), sha.clone(), r.process_types.clone()));
            }
        }
        // Until every other site has reported once (or for a while after the placement was
        // written), a site that runs the app may simply not have said so yet.
        let unheard = p
            .sites
            .iter()
            .any(|(s, r)| *s != self.site && r.state == State::Unknown);
        if have.is_empty() && unheard && now_ms().saturating_sub(p.written_at_ms) < REPORT_GRACE_MS
        {
            return Err(Failure {
                step: "copy_droplet",
                error: "waiting for the sites that run the app to report its droplet".into(),
                wait: true,
            });
        }
        let error = match have
            .iter()
            .find(|(_, r)| r.copyable == Some(false))
            .or(have.first())
        {
            Some((site, r)) if r.copyable == Some(true) => format!(
                "the droplet of {} at {site} has no sha256 to check a copy against",
                p.app.app
            ),
            Some((site, _)) => format!(
                "not copyable: {} at {site} is a docker app (only buildpack droplets can be downloaded)",
                p.app.app
            ),
            None => "no other site reports a droplet of the app to copy".to_string(),
        };
        Err(Failure {
            wait: false,
            step: "copy_droplet",
            error,
        })
    }

    /// Map the routes the app has where it runs to it here too.
    async fn map_routes(
        &self,
        p: &Evaluated,
        status: &mut SiteStatus,
        space: &str,
        found: &App,
    ) -> Result<(), Failure> {
        let mut wanted: Vec<RouteSpec> = p
            .sites
            .iter()
            .filter(|(s, r)| **s != self.site && r.running())
            .flat_map(|(_, r)| r.route_specs.iter().cloned())
            .collect();
        wanted.sort();
        wanted.dedup();
        let missing: Vec<&RouteSpec> = wanted
            .iter()
            .filter(|w| !status.route_specs.contains(w))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        self.working(&p.app, status, "map_routes");
        for spec in missing {
            let Some(domain) = self
                .cc
                .domain(&spec.domain)
                .await
                .map_err(at("map_routes"))?
            else {
                return Err(Failure {
                    wait: false,
                    step: "map_routes",
                    error: format!("domain {:?} does not exist at {}", spec.domain, self.site),
                });
            };
            let route = match self
                .cc
                .route(&domain.guid, &spec.host, &spec.path)
                .await
                .map_err(at("map_routes"))?
            {
                Some(r) => r,
                None => self
                    .cc
                    .create_route(space, &domain.guid, &spec.host, &spec.path)
                    .await
                    .map_err(at("map_routes"))?,
            };
            self.cc
                .add_destination(&route.guid, &found.guid)
                .await
                .map_err(at("map_routes"))?;
            self.done(status, "map_routes", &format!("{} mapped", spec.url()));
            status.route_specs.push(spec.clone());
            status.routes.push(spec.url());
        }
        Ok(())
    }
}

/// A route's parts from what the Cloud Controller says: the domain is the URL without the
/// host label and the path.
fn route_spec(host: &str, path: &str, url: &str) -> Option<RouteSpec> {
    let without_path = url.strip_suffix(path)?;
    let domain = if host.is_empty() {
        without_path
    } else {
        without_path.strip_prefix(host)?.strip_prefix('.')?
    };
    (!domain.is_empty()).then(|| RouteSpec {
        host: host.to_string(),
        domain: domain.to_string(),
        path: path.to_string(),
    })
}

/// Whether published RTTs are worth replacing: a site came or went, or one moved by at
/// least 20 ms and half its value. Jitter below that would only churn the choice.
fn rtt_moved(published: &BTreeMap<String, u32>, now: &BTreeMap<String, u32>) -> bool {
    published.len() != now.len()
        || now.iter().any(|(site, &ms)| match published.get(site) {
            None => true,
            Some(&was) => ms.abs_diff(was) >= 20.max(was / 2),
        })
}

fn backoff(attempts: u32) -> Duration {
    let secs = 1u64 << attempts.saturating_sub(1).min(6);
    Duration::from_secs(secs).min(MAX_BACKOFF)
}

fn backoff_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Sleep `d`; `true` when `stop` came first.
async fn sleep_or_stop(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(d) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_parts_come_from_the_url() {
        let r = route_spec("shop", "/api", "shop.apps.example.com/api").unwrap();
        assert_eq!(r.domain, "apps.example.com");
        assert_eq!(r.url(), "shop.apps.example.com/api");
        let r = route_spec("", "", "apps.example.com").unwrap();
        assert_eq!(r.fqdn(), "apps.example.com");
        assert!(route_spec("shop", "", "other.example.com").is_none());
    }

    #[test]
    fn rtt_jitter_is_not_republished() {
        let was: BTreeMap<String, u32> = [("nyc".to_string(), 10), ("sgp".to_string(), 100)].into();
        let mut now = was.clone();
        now.insert("nyc".into(), 20);
        now.insert("sgp".into(), 140);
        assert!(!rtt_moved(&was, &now), "10 ms and 40 % are jitter");
        now.insert("nyc".into(), 30);
        assert!(rtt_moved(&was, &now));
        now.insert("nyc".into(), 10);
        now.insert("sgp".into(), 150);
        assert!(rtt_moved(&was, &now));
        now.remove("sgp");
        assert!(rtt_moved(&was, &now), "a site gone");
    }

    #[test]
    fn back_off_doubles_to_a_minute() {
        let secs: Vec<u64> = (1..=9).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
