//! The Cloud Foundry part of `grouter demo` (issue 14): one Cloud Controller stand-in per
//! site (a `grouter-cc-standin` process: CC v3, UAA and blobstore on one port), what each
//! foundation holds at startup, the `gcf scale` commands the demo prints, and the `--check`
//! case that places an app at a second foundation:
//!
//! - lon's foundation holds org `demo`, space `prod` and the buildpack app `shop` (the
//!   sample app that runs at lon, route `shop.apps.example.com`) with a small droplet;
//! - nyc's and sgp's hold the same org, space and domain, and no app;
//! - each site's node reconciles placements against its own foundation only, as the UAA
//!   client `grouter-<site>`, whose random secret is in `<site>/cc-client.secret` (0600).
//!
//! The case writes `sites: 2` for `shop` at nyc, waits (polling, with a deadline) until the
//! placement has settled at lon (every chosen site running the instances, the others
//! stopped or absent), and checks in the second site's stand-in state that the app is
//! there with lon's droplet (same sha256), started, its route mapped. It then scales the
//! app back to lon alone and deletes the placement, so that the cases after it (fail-open)
//! start with no placement to reconcile.
//!
//! Owns: the foundations' seeds, the UAA clients' secrets and the stand-ins' blob
//! directories (under each site's directory). Must never: print a client secret, or leave
//! a placement in force after its case, whatever the case's outcome.

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::control::{poll, with_undo};
use super::{APPS, App, Demo, DemoError, INSTANCES, Proc, START_TIMEOUT, Site, grouter_listening};

/// The `--check` case, as it is named in the PASS/FAIL line.
pub(super) const CASE: &str =
    "place an app at a second foundation (shop: lon's droplet, started, route mapped)";
/// The UAA client's secret, in the site's directory (`cloud_controller.client_secret_file`).
pub(super) const SECRET_FILE: &str = "cc-client.secret";
/// The Cloud Controller stand-in's log, in the site's directory.
pub(super) const LOG_FILE: &str = "cc.log";
/// The stand-in's seed, in the site's directory.
const SEED_FILE: &str = "cc-seed.json";
/// The stand-in's blobstore (droplet bits), in the site's directory.
const BLOB_DIR: &str = "cc-blobs";

/// The org and space every foundation holds (GRouter never creates them).
const ORG: &str = "demo";
/// The space, in [`ORG`].
const SPACE: &str = "prod";
/// The sample app placed: the one that runs at lon.
const PLACED_APP: &str = "shop";
/// The site whose foundation holds [`PLACED_APP`] at startup.
const HOME_SITE: &str = "lon";
/// The app domain every foundation holds: the demo's DNS zone, which the sample routes are in.
const DOMAIN: &str = "apps.example.com";
/// The size of the app's droplet at lon: small, so the copy takes a moment in a debug build.
const DROPLET_SIZE: u64 = 2 << 20;
/// What the stand-in generates the droplet's bits from.
const DROPLET_SEED: u64 = 14;
/// How long an upload job stays `PROCESSING` at a stand-in.
const JOB_DELAY_MS: u64 = 100;
/// How long a placement has to settle: a droplet copy between two debug-build nodes, and
/// the reconcilers' 1 s ticks, with room for a loaded machine.
const SETTLE_WAIT: Duration = Duration::from_secs(60);

/// The sample app placed (one of [`APPS`]).
fn placed_app() -> Option<&'static App> {
    APPS.iter().find(|a| a.name == PLACED_APP)
}

/// What `site`'s foundation holds at startup (the stand-in's seed JSON): the org, space and
/// domain, and at [`HOME_SITE`] the placed app, with its droplet and route.
fn seed(site: &str) -> Value {
    let apps: Vec<Value> = placed_app()
        .filter(|_| site == HOME_SITE)
        .map(|app| {
            json!({
                "name": app.name,
                "lifecycle": "buildpack",
                "state": "STARTED",
                "instances": INSTANCES,
                "routes": [app.host],
                "droplet": {"size": DROPLET_SIZE, "seed": DROPLET_SEED},
            })
        })
        .into_iter()
        .collect();
    json!({
        "domains": [DOMAIN],
        "orgs": [{"name": ORG, "spaces": [{"name": SPACE, "apps": apps}]}],
    })
}

/// One site's foundation, ready to start: its UAA client and the files the stand-in reads.
#[derive(Debug)]
pub(super) struct Foundation {
    site: &'static str,
    /// The UAA client the site's node uses: `grouter-<site>`.
    pub(super) client_id: String,
    /// The file holding its secret ([`SECRET_FILE`], 0600), read by the node and the stand-in.
    secret_file: PathBuf,
    seed_file: PathBuf,
    blob_dir: PathBuf,
}

impl Foundation {
    /// Write the seed, a new random secret (0600) and the blob directory under `site_dir`.
    pub(super) fn prepare(site_dir: &Path, site: &'static str) -> Result<Foundation, DemoError> {
        let secret = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let secret_file = site_dir.join(SECRET_FILE);
        write_file(&secret_file, secret.as_bytes(), 0o600)?;
        let seed_file = site_dir.join(SEED_FILE);
        write_file(&seed_file, seed(site).to_string().as_bytes(), 0o644)?;
        let blob_dir = site_dir.join(BLOB_DIR);
        fs::create_dir_all(&blob_dir).map_err(|source| DemoError::Io {
            action: "create",
            path: blob_dir.clone(),
            source,
        })?;
        Ok(Foundation {
            site,
            client_id: format!("grouter-{site}"),
            secret_file,
            seed_file,
            blob_dir,
        })
    }

    /// Start `grouter-cc-standin` on `addr` (port 0: one of the system's choosing); it and
    /// the address it reported.
    pub(super) async fn start(
        &self,
        bin: &Path,
        site_dir: &Path,
        addr: SocketAddr,
    ) -> Result<(Proc, SocketAddr), DemoError> {
        let mut cmd = Command::new(bin);
        cmd.arg("--site")
            .arg(self.site)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--client-id")
            .arg(&self.client_id)
            // From the node's own secret file: never on a command line `ps` shows.
            .arg("--client-secret-file")
            .arg(&self.secret_file)
            .arg("--seed")
            .arg(&self.seed_file)
            .arg("--blob-dir")
            .arg(&self.blob_dir)
            .arg("--job-delay-ms")
            .arg(JOB_DELAY_MS.to_string());
        let site = self.site;
        let (mut proc, mut rx) = Proc::spawn(
            format!("the Cloud Controller stand-in of {site}"),
            cmd,
            site_dir.join(LOG_FILE),
            grouter_listening,
        )?;
        let found = proc.wait_listening(&mut rx, &["cloud_controller"]).await?;
        let addr = found
            .get("cloud_controller")
            .copied()
            .ok_or_else(|| DemoError::Timeout {
                what: format!("the Cloud Controller stand-in of {site} to listen"),
                timeout: START_TIMEOUT,
            })?;
        Ok((proc, addr))
    }
}

/// Write `path` with `mode`, replacing it.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DemoError> {
    let io = |source| DemoError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)
}

/// The placement in `p` (a `GET /v1/placements/…` answer) when it is settled for `sites`
/// sites: that many chosen, each `running` with the instances, every other site `stopped`
/// or `absent`; else what is still missing.
fn settled(p: &Value, sites: u64) -> Result<Vec<String>, String> {
    if p["desired"]["sites"].as_u64() != Some(sites) {
        return Err(format!("the placement asks for {}", p["desired"]));
    }
    let chosen: Vec<String> = p["chosen"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if u64::try_from(chosen.len()).ok() != Some(sites) {
        return Err(format!("chosen: {}", p["chosen"]));
    }
    let want = p["instances"].as_u64();
    let reports = p["sites"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut waiting = Vec::new();
    for s in reports {
        let (site, state) = (s["site"].as_str().unwrap_or("?"), &s["state"]);
        let ok = if s["chosen"] == true {
            state == "running" && s["instances"].as_u64() == want
        } else {
            state == "stopped" || state == "absent"
        };
        if !ok {
            let error = s["error"]
                .as_str()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            waiting.push(format!("{site} is {state}{error}"));
        }
    }
    if reports.is_empty() {
        waiting.push("no site has reported".into());
    }
    if waiting.is_empty() {
        Ok(chosen)
    } else {
        Err(waiting.join(", "))
    }
}

/// `name` in a stand-in's `/_standin/state`, in [`ORG`] and [`SPACE`].
fn state_app<'a>(state: &'a Value, name: &str) -> Option<&'a Value> {
    state["apps"]
        .as_array()?
        .iter()
        .find(|a| a["name"] == name && a["org"] == ORG && a["space"] == SPACE)
}

/// The sha256 of `app`'s current droplet, staged, in a stand-in's state.
fn current_sha<'a>(state: &'a Value, app: &Value) -> Option<&'a str> {
    let current = app["current_droplet"].as_str()?;
    state["droplets"]
        .as_array()?
        .iter()
        .find(|d| d["guid"] == current && d["state"] == "STAGED")?["sha256"]
        .as_str()
}

/// Whether the route `host` has `app` as a destination in a stand-in's state.
fn route_mapped(state: &Value, host: &str, app: &Value) -> bool {
    state["routes"].as_array().is_some_and(|routes| {
        routes.iter().any(|r| {
            r["url"] == host
                && r["destinations"]
                    .as_array()
                    .is_some_and(|d| d.contains(&app["guid"]))
        })
    })
}

impl Demo {
    /// `GET /_standin/state` of `site`'s Cloud Controller stand-in.
    async fn foundation_state(&self, site: &Site) -> Result<Value, String> {
        let reply = self
            .get(site.cloud_controller, None, "/_standin/state", None)
            .await?;
        reply.expect_status(200)?;
        serde_json::from_str(&reply.body)
            .map_err(|e| format!("{}'s /_standin/state: {e}", site.name))
    }

    /// The placement commands to try, for the summary.
    pub(super) fn placement_summary(&self, gcf: &str) -> String {
        let mut out = String::new();
        let Some(app) = placed_app() else {
            return out;
        };
        let _ = writeln!(
            out,
            "Place an app at more foundations with gcf, targeted as above (each site has a Cloud Controller \
             stand-in: CC v3, UAA and blobstore;"
        );
        let _ = writeln!(
            out,
            "{HOME_SITE}'s runs {} in org {ORG}, space {SPACE}, the others hold the org, space and domain \
             only; each node uses only its own site's UAA client, grouter-<site>):",
            app.name
        );
        let _ = writeln!(
            out,
            "  # The Cloud Controllers: {}",
            self.sites
                .iter()
                .map(|s| format!("{} http://{}", s.name, s.cloud_controller))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            out,
            "  # Run {} at a second foundation: its droplet is copied there from {HOME_SITE} over the mesh",
            app.name
        );
        let _ = writeln!(out, "  {gcf} target -o {ORG} -s {SPACE}");
        let _ = writeln!(out, "  {gcf} scale {} --sites 2 -i {INSTANCES}", app.name);
        let _ = writeln!(out, "  {gcf} placement {}", app.name);
        let _ = writeln!(
            out,
            "  # The copy, in the chosen site's foundation (same droplet sha256 as {HOME_SITE}'s, \
             STARTED, route mapped):"
        );
        for site in self.sites.iter().filter(|s| s.name != HOME_SITE) {
            let _ = writeln!(
                out,
                "  curl -s http://{}/_standin/state    # {}",
                site.cloud_controller, site.name
            );
        }
        let _ = writeln!(
            out,
            "  # Back to {HOME_SITE} alone: the other site scales it to 0 (an app is never deleted)"
        );
        let _ = writeln!(out, "  {gcf} scale {} --sites 1", app.name);
        let _ = writeln!(out, "  {gcf} placements");
        let _ = writeln!(out);
        out
    }

    /// The placement case: `shop` at two sites (written at nyc, checked at lon and in the
    /// second site's foundation), then back to lon alone and the placement deleted.
    pub(super) async fn check_placement(&self, lon: &Site, nyc: &Site) -> Result<String, String> {
        let app = placed_app().ok_or_else(|| format!("no sample app {PLACED_APP}"))?;
        let path = format!("/v1/placements/{ORG}/{SPACE}/{}", app.name);
        let placed = async {
            let written = Instant::now();
            let desired = json!({ "sites": 2, "instances": INSTANCES });
            self.admin_write(nyc, &path, Some(&desired)).await?;
            let chosen = poll(SETTLE_WAIT, || async {
                settled(&self.admin_json(lon, &path).await?, 2)
            })
            .await
            .map_err(|e| format!("the placement did not settle at lon: {e}"))?;
            let took = written.elapsed().as_secs_f64();
            if !chosen.iter().any(|s| s == HOME_SITE) {
                return Err(format!(
                    "chosen {chosen:?}: {HOME_SITE}, which runs {}, is not among them",
                    app.name
                ));
            }
            let second = chosen
                .iter()
                .find_map(|s| self.site(s).filter(|s| s.name != HOME_SITE))
                .ok_or_else(|| format!("chosen {chosen:?}: no second demo site"))?;
            let home_state = self.foundation_state(lon).await?;
            let home_sha = state_app(&home_state, app.name)
                .and_then(|a| current_sha(&home_state, a))
                .ok_or_else(|| {
                    format!(
                        "{HOME_SITE}'s foundation has no staged droplet of {}",
                        app.name
                    )
                })?
                .to_string();
            let state = self.foundation_state(second).await?;
            let there = second.name;
            let copy = state_app(&state, app.name).ok_or_else(|| {
                format!(
                    "{there}'s foundation has no app {} in {ORG}/{SPACE}",
                    app.name
                )
            })?;
            let sha = current_sha(&state, copy);
            if sha != Some(home_sha.as_str()) {
                return Err(format!(
                    "{there}'s current droplet of {} has sha256 {sha:?}, {HOME_SITE}'s {home_sha}",
                    app.name
                ));
            }
            if copy["state"] != "STARTED"
                || copy["instances"].as_u64() != Some(u64::from(INSTANCES))
            {
                return Err(format!(
                    "{there}'s {} is {} with {} instances, not STARTED with {INSTANCES}",
                    app.name, copy["state"], copy["instances"]
                ));
            }
            if !route_mapped(&state, app.host, copy) {
                return Err(format!(
                    "{there}'s foundation does not map {} to {}",
                    app.host, app.name
                ));
            }
            Ok(format!(
                "written at nyc; within {took:.1} s {} runs at {} with {INSTANCES} instances each; \
                 {there}'s foundation has {HOME_SITE}'s droplet (sha256 {}…), started, {} mapped",
                app.name,
                chosen.join(" and "),
                home_sha.get(..12).unwrap_or(&home_sha),
                app.host
            ))
        };
        let result = placed.await;
        let undo = async {
            self.admin_write(nyc, &path, Some(&json!({ "sites": 1 })))
                .await?;
            let chosen = poll(SETTLE_WAIT, || async {
                settled(&self.admin_json(lon, &path).await?, 1)
            })
            .await
            .map_err(|e| format!("back to one site: {e}"))?;
            if chosen != [HOME_SITE] {
                return Err(format!(
                    "back to one site: chosen {chosen:?}, not {HOME_SITE}"
                ));
            }
            self.admin_write(nyc, &path, None).await?;
            Ok(format!(
                "back to {HOME_SITE} alone (the copy stopped at 0 instances, not deleted), placement deleted"
            ))
        };
        with_undo(result, undo.await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_placed_app_runs_at_lon_in_the_seeded_domain() {
        let app = placed_app().unwrap();
        assert!(app.sites.contains(&HOME_SITE));
        assert!(app.host.ends_with(&format!(".{DOMAIN}")), "{}", app.host);
        let lon = seed(HOME_SITE);
        let apps = &lon["orgs"][0]["spaces"][0]["apps"];
        assert_eq!(apps[0]["name"], app.name);
        assert_eq!(apps[0]["routes"], json!([app.host]));
        assert_eq!(apps[0]["droplet"]["size"], DROPLET_SIZE);
        for site in ["nyc", "sgp"] {
            let s = seed(site);
            assert_eq!(s["domains"], json!([DOMAIN]));
            assert_eq!(s["orgs"][0]["name"], ORG);
            assert_eq!(s["orgs"][0]["spaces"][0]["name"], SPACE);
            assert_eq!(s["orgs"][0]["spaces"][0]["apps"], json!([]));
        }
    }

    #[test]
    fn the_secret_is_private_and_the_seed_written() {
        let dir =
            std::env::temp_dir().join(format!("grouter-demo-cc-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir_all(&dir).unwrap();
        let f = Foundation::prepare(&dir, "nyc").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(dir.join(SECRET_FILE))
            .unwrap()
            .permissions()
            .mode();
        let secret = fs::read_to_string(dir.join(SECRET_FILE)).unwrap();
        let seeded: Value = serde_json::from_slice(&fs::read(&f.seed_file).unwrap()).unwrap();
        let blobs = f.blob_dir.is_dir();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(dir.join(SECRET_FILE), f.secret_file);
        assert!(secret.len() >= 32);
        assert_eq!(f.client_id, "grouter-nyc");
        assert_eq!(seeded, seed("nyc"));
        assert!(blobs);
    }

    #[test]
    fn settled_means_every_chosen_site_running_and_the_others_stopped_or_absent() {
        let p = |nyc: &str, sgp: &str| {
            json!({"desired": {"sites": 2}, "instances": 2, "chosen": ["lon", "nyc"], "sites": [
                {"site": "lon", "chosen": true, "state": "running", "instances": 2},
                {"site": "nyc", "chosen": true, "state": nyc, "instances": 2},
                {"site": "sgp", "chosen": false, "state": sgp, "instances": 0},
            ]})
        };
        assert_eq!(settled(&p("running", "absent"), 2).unwrap(), ["lon", "nyc"]);
        assert_eq!(
            settled(&p("running", "stopped"), 2).unwrap(),
            ["lon", "nyc"]
        );
        assert!(
            settled(&p("working", "absent"), 2)
                .unwrap_err()
                .contains("nyc is \"working\"")
        );
        assert!(settled(&p("running", "unknown"), 2).is_err());
        assert!(
            settled(&p("running", "absent"), 1).is_err(),
            "asks for 2, not 1"
        );
        assert!(
            settled(
                &json!({"desired": {"sites": 1}, "chosen": ["lon"], "sites": []}),
                1
            )
            .is_err()
        );
    }

    #[test]
    fn the_copy_is_read_from_a_stand_in_state() {
        let state = json!({
            "apps": [{"guid": "a1", "name": "shop", "org": "demo", "space": "prod",
                "state": "STARTED", "instances": 2, "current_droplet": "d1"}],
            "droplets": [{"guid": "d1", "app": "a1", "state": "STAGED", "sha256": "abc"}],
            "routes": [{"guid": "r1", "host": "shop", "url": "shop.apps.example.com",
                "destinations": ["a1"]}],
        });
        let app = state_app(&state, "shop").unwrap();
        assert_eq!(current_sha(&state, app), Some("abc"));
        assert!(route_mapped(&state, "shop.apps.example.com", app));
        assert!(!route_mapped(&state, "blog.apps.example.com", app));
        assert!(state_app(&state, "blog").is_none());
    }
}
