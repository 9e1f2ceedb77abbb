//! `gcf scale APP --sites N` end to end (issue 14): three sites, each with its own
//! `nats-server`, GRouter node and Cloud Controller stand-in (`grouter-cc-standin`, a real
//! process following the CC v3 and UAA API), driven through `gcf` and the admin API.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use grouter_tests::{LogLines, MeshCa, NatsServer, Node, wait_until};
use serde_json::{Value, json};

const SEC: Duration = Duration::from_secs(1);
/// How long a placement may take to settle (a droplet copy in a debug build included).
const SETTLE: Duration = Duration::from_secs(90);

fn bin(name: &str) -> PathBuf {
    let bin = grouter_tests::grouter_bin().with_file_name(name);
    assert!(
        bin.is_file(),
        "{} not found: run `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// One site's Cloud Controller (with its UAA and blobstore): a `grouter-cc-standin` process.
#[derive(Debug)]
struct Foundation {
    child: Child,
    url: String,
    client_id: String,
    secret_file: PathBuf,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Foundation {
    /// A foundation for `site` whose UAA client is `grouter-<site>` with a secret of its own,
    /// holding `seed` (the stand-in's seed JSON).
    fn start(site: &str, seed: &Value) -> Foundation {
        grouter_tests::install_crypto();
        let dir = tempfile::tempdir().expect("tempdir");
        let client_id = format!("grouter-{site}");
        let secret = format!("secret-of-{site}-{}", std::process::id());
        let secret_file = dir.path().join("cc.secret");
        std::fs::write(&secret_file, &secret).expect("secret");
        let seed_file = dir.path().join("seed.json");
        std::fs::write(&seed_file, seed.to_string()).expect("seed");
        let blobs = dir.path().join("blobs");
        std::fs::create_dir_all(&blobs).expect("blob dir");
        let mut child = Command::new(bin("grouter-cc-standin"))
            .args([
                "--site",
                site,
                "--listen",
                "127.0.0.1:0",
                "--client-id",
                &client_id,
            ])
            .arg("--client-secret-file")
            .arg(&secret_file)
            .args(["--job-delay-ms", "100"])
            .arg("--seed")
            .arg(&seed_file)
            .arg("--blob-dir")
            .arg(&blobs)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start grouter-cc-standin");
        let log = LogLines::follow(&mut child);
        let addr = log.wait_for(
            60 * SEC,
            "the Cloud Controller stand-in listening",
            |line| {
                let v: Value = serde_json::from_str(line).ok()?;
                (v["message"] == "listening").then(|| v["addr"].as_str().map(str::to_string))?
            },
        );
        Foundation {
            child,
            url: format!("http://{addr}"),
            client_id,
            secret_file,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    /// The node's `[cloud_controller]` section for this foundation.
    fn config(&self) -> String {
        self.config_with_secret(&self.secret_file)
    }

    fn config_with_secret(&self, secret_file: &std::path::Path) -> String {
        format!(
            "\n[cloud_controller]\napi = \"{url}\"\nuaa = \"{url}\"\nclient_id = \"{id}\"\nclient_secret_file = {secret:?}\n",
            url = self.url,
            id = self.client_id,
            secret = secret_file,
        )
    }

    async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("stand-in answers")
            .json()
            .await
            .expect("stand-in JSON")
    }

    async fn state(&self) -> Value {
        self.get("/_standin/state").await
    }

    async fn faults(&self, faults: &Value) {
        let r = self
            .http
            .post(format!("{}/_standin/faults", self.url))
            .json(faults)
            .send()
            .await
            .expect("faults set");
        assert!(r.status().is_success(), "faults: {}", r.status());
    }

    /// The app named `name` in this foundation's state, if any.
    async fn app(&self, name: &str) -> Option<Value> {
        let state = self.state().await;
        state["apps"]
            .as_array()?
            .iter()
            .find(|a| a["name"] == name)
            .cloned()
    }
}

impl Drop for Foundation {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn seed_with(apps: Value) -> Value {
    json!({
        "domains": ["apps.example.com"],
        "orgs": [{"name": "demo", "spaces": [{"name": "prod", "apps": apps}]}]
    })
}

fn empty_space() -> Value {
    seed_with(json!([]))
}

/// Three sites (`lon`, `nyc`, `sgp`; regions eu, us, ap), each with a bus, a foundation and
/// a node; nyc and sgp seeded with lon.
struct ThreeSites {
    _ca: MeshCa,
    _buses: Vec<NatsServer>,
    ccs: Vec<Foundation>,
    nodes: Vec<Node>,
}

const SITES: [(&str, &str); 3] = [("lon", "eu"), ("nyc", "us"), ("sgp", "ap")];

impl ThreeSites {
    /// Start the sites with these foundations' seeds (lon, nyc, sgp); the node of site
    /// `wrong_secret` (an index) holds a secret its UAA refuses.
    async fn start(seeds: [Value; 3], wrong_secret: Option<usize>) -> ThreeSites {
        let ca = MeshCa::new();
        let mut buses = Vec::new();
        let mut ccs = Vec::new();
        let mut nodes: Vec<Node> = Vec::new();
        for (i, ((site, region), seed)) in SITES.iter().zip(seeds.iter()).enumerate() {
            let bus = NatsServer::start();
            let cc = Foundation::start(site, seed);
            let seeds: Vec<_> = nodes.first().map(|n| n.mesh_addr()).into_iter().collect();
            let section = if wrong_secret == Some(i) {
                let wrong = cc.secret_file.with_file_name("wrong.secret");
                std::fs::write(&wrong, "not-the-secret").expect("wrong secret");
                cc.config_with_secret(&wrong)
            } else {
                cc.config()
            };
            let node = Node::builder(&format!("{site}-1"), site)
                .region(region)
                .nats(&bus.url())
                .mesh(&ca, &seeds)
                .extra(&section)
                .start()
                .await;
            buses.push(bus);
            ccs.push(cc);
            nodes.push(node);
        }
        let sites = ThreeSites {
            _ca: ca,
            _buses: buses,
            ccs,
            nodes,
        };
        for n in &sites.nodes {
            wait_until(30 * SEC, "every node sees three healthy sites", || async {
                let v = n.json("/v1/sites").await;
                let healthy = v["sites"]
                    .as_array()?
                    .iter()
                    .filter(|s| s["healthy"] == true)
                    .count();
                (healthy == 3).then_some(())
            })
            .await;
        }
        sites
    }

    async fn gcf_home(&self, node: usize) -> tempfile::TempDir {
        let home = tempfile::tempdir().expect("tempdir");
        let token_file = home.path().join("token");
        std::fs::write(&token_file, self.nodes[node].token()).expect("token");
        let url = format!("http://{}", self.nodes[node].admin_addr());
        let (code, out, err) = gcf(
            home.path(),
            &["api", &url, "--token-file", token_file.to_str().unwrap()],
        )
        .await;
        assert_eq!(code, 0, "{out}{err}");
        let (code, out, err) = gcf(home.path(), &["target", "-o", "demo", "-s", "prod"]).await;
        assert_eq!(code, 0, "{out}{err}");
        home
    }
}

/// Run `gcf` without blocking the test's runtime (the nodes' GoRouter stubs answer their
/// health probes on it: a blocked runtime would make every site unhealthy).
async fn gcf(home: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(bin("gcf"))
        .env("GCF_HOME", home)
        .args(args)
        .output()
        .await
        .expect("run gcf");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn site_status<'a>(placement: &'a Value, site: &str) -> &'a Value {
    placement["sites"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["site"] == site))
        .unwrap_or(&Value::Null)
}

/// The current droplet's sha256 of `app` in a foundation's state.
fn current_sha(state: &Value, app: &Value) -> Option<String> {
    let current = app["current_droplet"].as_str()?;
    state["droplets"]
        .as_array()?
        .iter()
        .find(|d| d["guid"] == current)
        .and_then(|d| d["sha256"].as_str().map(str::to_string))
}

fn shop(size: u64) -> Value {
    json!([{"name": "shop", "lifecycle": "buildpack", "state": "STARTED", "instances": 2,
        "routes": ["shop.apps.example.com"], "droplet": {"size": size, "seed": 7}}])
}

/// The placement at `path` as `node` has it, `None` until it has replicated there.
async fn placement_at(node: &Node, path: &str) -> Option<Value> {
    match node.get(path).await {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// Wait until the placement at `node` is settled: every chosen site running with the
/// desired instances, every other site stopped or absent.
async fn settled(node: &Node, path: &str) -> Value {
    wait_until(SETTLE, "the placement settled", || async {
        let p = placement_at(node, path).await?;
        let sites = p["sites"].as_array()?;
        let want = p["instances"].as_u64()?;
        if p["chosen"].as_array()?.is_empty() {
            return None;
        }
        sites
            .iter()
            .all(|s| {
                if s["chosen"] == true {
                    s["state"] == "running" && s["instances"].as_u64() == Some(want)
                } else {
                    s["state"] == "stopped" || s["state"] == "absent"
                }
            })
            .then_some(p)
    })
    .await
}

const SHOP: &str = "/v1/placements/demo/prod/shop";

#[tokio::test]
async fn gcf_scale_places_the_app_at_one_more_site_with_the_same_droplet_and_each_sites_own_credentials()
 {
    let mesh = ThreeSites::start(
        [seed_with(shop(3 << 20)), empty_space(), empty_space()],
        None,
    )
    .await;
    let home = mesh.gcf_home(1).await;
    let (code, out, err) = gcf(home.path(), &["scale", "shop", "--sites", "2", "-i", "3"]).await;
    assert_eq!(code, 0, "gcf scale: {out}{err}");
    assert!(
        out.contains("running"),
        "the final table shows the sites running: {out}"
    );

    // Every node makes the same choice: lon (where shop runs) and one more.
    let mut chosen = Vec::new();
    for n in &mesh.nodes {
        let p = settled(n, SHOP).await;
        chosen.push(p["chosen"].clone());
    }
    assert!(
        chosen.iter().all(|c| *c == chosen[0]),
        "same choice everywhere: {chosen:?}"
    );
    let chosen: Vec<String> = serde_json::from_value(chosen[0].clone()).unwrap();
    assert_eq!(chosen.len(), 2);
    assert_eq!(chosen[0], "lon");
    let other = chosen[1].clone();
    let (target, idle) = if other == "nyc" { (1, 2) } else { (2, 1) };

    // The other site's foundation has the app: same org/space, same droplet bytes, current,
    // 3 instances, started, route mapped. The third has nothing.
    let lon_state = mesh.ccs[0].state().await;
    let lon_app = mesh.ccs[0].app("shop").await.expect("shop at lon");
    let lon_sha = current_sha(&lon_state, &lon_app).expect("lon's droplet");
    let state = mesh.ccs[target].state().await;
    let app = mesh.ccs[target].app("shop").await.expect("shop copied");
    assert_eq!(app["space"], "prod", "{app}");
    assert_eq!(app["org"], "demo", "{app}");
    assert_eq!(
        current_sha(&state, &app).as_deref(),
        Some(lon_sha.as_str()),
        "same droplet bits"
    );
    assert_eq!(app["state"], "STARTED");
    assert_eq!(app["instances"], 3);
    let routes = state["routes"].as_array().unwrap();
    assert!(
        routes.iter().any(|r| r["host"] == "shop"
            && r["destinations"]
                .as_array()
                .is_some_and(|d| d.iter().any(|g| *g == app["guid"]))),
        "route mapped: {routes:?}"
    );
    assert!(
        mesh.ccs[idle].app("shop").await.is_none(),
        "the third site was left alone"
    );
    assert_eq!(
        lon_app["instances"], 3,
        "lon scaled to the desired instances too"
    );

    // A second identical command changes nothing at any foundation.
    let before: Vec<Value> =
        futures::future::join_all(mesh.ccs.iter().map(Foundation::state)).await;
    let (code, out, err) = gcf(home.path(), &["scale", "shop", "--sites", "2", "-i", "3"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let p = settled(&mesh.nodes[0], SHOP).await;
    assert_eq!(p["chosen"], json!(chosen));
    let after: Vec<Value> = futures::future::join_all(mesh.ccs.iter().map(Foundation::state)).await;
    assert_eq!(
        before, after,
        "the second identical command changed a foundation"
    );

    // Each node used only its own foundation's credentials.
    for cc in &mesh.ccs {
        let tokens = cc.get("/_standin/tokens").await;
        let tokens = tokens.as_array().unwrap();
        let secret = std::fs::read_to_string(&cc.secret_file).unwrap();
        assert!(
            !tokens.is_empty() || cc.client_id == "grouter-sgp",
            "{} was asked for tokens",
            cc.client_id
        );
        for t in tokens {
            assert_eq!(t["client_id"], cc.client_id.as_str(), "{t}");
            assert_eq!(t["client_secret"], secret.as_str(), "{t}");
        }
    }

    // --sites 1 scales the extra site to 0 (never deleting it); lon keeps the app.
    let (code, out, err) = gcf(home.path(), &["scale", "shop", "--sites", "1"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let p = settled(&mesh.nodes[2], SHOP).await;
    assert_eq!(p["chosen"], json!(["lon"]));
    let app = mesh.ccs[target].app("shop").await.expect("not deleted");
    assert_eq!(app["instances"], 0);
    assert_eq!(mesh.ccs[0].app("shop").await.unwrap()["instances"], 3);

    // A list naming an unknown site fails naming it, and nothing is written.
    let (code, out, err) = gcf(home.path(), &["scale", "shop", "--sites", "lon,nosuch"]).await;
    assert_ne!(code, 0);
    assert!(format!("{out}{err}").contains("nosuch"), "{out}{err}");
    let p = mesh.nodes[1].json(SHOP).await;
    assert_eq!(p["desired"]["sites"], 1, "{p}");
}

#[tokio::test]
async fn a_failing_cloud_controller_is_retried_with_back_off_and_a_node_restarted_mid_copy_resumes()
{
    let mut mesh = ThreeSites::start(
        [seed_with(shop(24 << 20)), empty_space(), empty_space()],
        None,
    )
    .await;
    // nyc's foundation fails the first upload with a 500 and the next job; lon's blobstore is
    // slow, so the copy is under way long enough to kill nyc's node in the middle.
    mesh.ccs[1]
        .faults(&json!({"upload_500": 1, "job_failed": 1}))
        .await;
    mesh.ccs[0]
        .faults(&json!({"slow_download_bytes_per_s": 4 << 20}))
        .await;
    let (status, body) = mesh.nodes[0]
        .put(SHOP, &json!({"sites": ["lon", "nyc"], "instances": 1}))
        .await;
    assert_eq!(status, 200, "{body}");

    // Both faults are reported in nyc's status as failed steps.
    let nyc = &mesh.nodes[1];
    let failed = wait_until(SETTLE, "nyc reports the failed upload", || async {
        let p = placement_at(nyc, SHOP).await?;
        let s = site_status(&p, "nyc");
        let failed = s["steps"]
            .as_array()?
            .iter()
            .filter(|s| s["outcome"] == "failed")
            .count();
        (failed >= 1
            && s["error"]
                .as_str()
                .is_some_and(|e| e.contains("upload_droplet")))
        .then(|| s.clone())
    })
    .await;
    assert!(failed["next_attempt_ms"].as_u64().is_some(), "{failed}");
    assert!(
        failed["error"].as_str().unwrap().contains("500"),
        "{failed}"
    );

    // Kill nyc's node while a copy is under way; restarted, it finishes the job.
    wait_until(SETTLE, "a copy under way", || async {
        let p = placement_at(&mesh.nodes[1], SHOP).await?;
        let s = site_status(&p, "nyc");
        (s["state"] == "working" && s["step"] == "upload_droplet").then_some(())
    })
    .await;
    mesh.nodes[1].kill();
    mesh.ccs[0]
        .faults(&json!({"slow_download_bytes_per_s": null}))
        .await;
    mesh.nodes[1].restart().await;
    let p = settled(&mesh.nodes[1], SHOP).await;
    let nyc_state = mesh.ccs[1].state().await;
    let apps: Vec<&Value> = nyc_state["apps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["name"] == "shop")
        .collect();
    assert_eq!(apps.len(), 1, "one app, not one per attempt: {apps:?}");
    let lon_state = mesh.ccs[0].state().await;
    let lon_app = mesh.ccs[0].app("shop").await.unwrap();
    assert_eq!(
        current_sha(&nyc_state, apps[0]),
        current_sha(&lon_state, &lon_app)
    );
    let steps = site_status(&p, "nyc")["steps"].to_string();
    assert!(
        steps.contains("failed"),
        "the failures stay in the report: {steps}"
    );
}

#[tokio::test]
async fn bad_credentials_missing_spaces_docker_apps_and_garbage_are_clear_per_site_errors() {
    let docker = json!({"name": "web", "lifecycle": "docker", "state": "STARTED", "instances": 1,
        "routes": ["web.apps.example.com"]});
    let mut lon_apps = shop(1 << 20);
    lon_apps.as_array_mut().unwrap().push(docker);
    // sgp's node holds a secret its UAA refuses.
    let mesh =
        ThreeSites::start([seed_with(lon_apps), empty_space(), empty_space()], Some(2)).await;
    let lon = &mesh.nodes[0];
    // The error `site` reports for `placement` once it names `about` (until the other sites
    // have reported, a site may first say that none has a droplet to copy).
    let error_of = |placement: &str, site: &str, about: &'static str| {
        let (node, placement, site) = (&mesh.nodes[1], placement.to_string(), site.to_string());
        async move {
            wait_until(
                SETTLE,
                &format!("{site} reports an error about {about} for {placement}"),
                || async {
                    let p = placement_at(node, &placement).await?;
                    let s = site_status(&p, &site);
                    let e = s["error"].as_str().filter(|_| s["state"] == "failed")?;
                    e.contains(about).then(|| e.to_string())
                },
            )
            .await
        }
    };

    // Wrong credentials: UAA's refusal, naming the client.
    assert_eq!(
        lon.put(SHOP, &json!({"sites": ["lon", "sgp"]})).await.0,
        200
    );
    let e = error_of(SHOP, "sgp", "grouter-sgp").await;
    assert!(
        e.contains("grouter-sgp") && e.to_lowercase().contains("credentials"),
        "{e}"
    );
    let home = mesh.gcf_home(0).await;
    wait_until(
        SETTLE,
        "gcf placement at lon shows sgp's whole error",
        || async {
            let (code, out, err) = gcf(home.path(), &["placement", "shop"]).await;
            assert_eq!(code, 0, "{out}{err}");
            let line = out.lines().find(|l| l.trim_start().starts_with("sgp: "))?;
            (line.contains("grouter-sgp") && line.contains("credentials")).then_some(())
        },
    )
    .await;

    // A missing space at the target: named, and nothing created.
    let staging = "/v1/placements/demo/staging/shop";
    assert_eq!(lon.put(staging, &json!({"sites": ["nyc"]})).await.0, 200);
    let e = error_of(staging, "nyc", "staging").await;
    assert!(
        e.contains("staging") && e.contains("does not exist at nyc"),
        "{e}"
    );

    // A docker app is not copyable, and nothing is half-created at the target.
    let web = "/v1/placements/demo/prod/web";
    assert_eq!(lon.put(web, &json!({"sites": ["lon", "nyc"]})).await.0, 200);
    let e = error_of(web, "nyc", "not copyable").await;
    assert!(e.contains("not copyable") && e.contains("docker"), "{e}");
    assert!(
        mesh.ccs[1].app("web").await.is_none(),
        "no app left half-created"
    );

    // A Cloud Controller answering garbage is reported, then recovered from.
    mesh.ccs[1].faults(&json!({"garbage": 1000})).await;
    assert_eq!(
        lon.put(SHOP, &json!({"sites": ["lon", "nyc"]})).await.0,
        200
    );
    let e = error_of(SHOP, "nyc", "JSON").await;
    assert!(e.contains("JSON"), "{e}");
    mesh.ccs[1].faults(&json!({"garbage": 0})).await;
    wait_until(
        SETTLE,
        "nyc runs shop once its Cloud Controller answers sense",
        || async {
            let p = placement_at(lon, SHOP).await?;
            (site_status(&p, "nyc")["state"] == "running").then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_large_droplet_streams_through_both_sites_nodes_without_their_memory_growing_by_64_mb() {
    const SIZE: u64 = 1 << 30;
    let mesh = ThreeSites::start([seed_with(shop(SIZE)), empty_space(), empty_space()], None).await;
    let (lon, nyc) = (&mesh.nodes[0], &mesh.nodes[1]);
    let before = [lon.peak_rss_kib(), nyc.peak_rss_kib()];
    let started = std::time::Instant::now();
    assert_eq!(
        lon.put(SHOP, &json!({"sites": ["lon", "nyc"]})).await.0,
        200
    );
    let p = settled(nyc, SHOP).await;
    let took = started.elapsed();
    let after = [lon.peak_rss_kib(), nyc.peak_rss_kib()];
    let nyc_state = mesh.ccs[1].state().await;
    let app = mesh.ccs[1].app("shop").await.expect("copied");
    let lon_state = mesh.ccs[0].state().await;
    let lon_app = mesh.ccs[0].app("shop").await.unwrap();
    assert_eq!(
        current_sha(&nyc_state, &app),
        current_sha(&lon_state, &lon_app)
    );
    let size = nyc_state["droplets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["guid"] == app["current_droplet"])
        .and_then(|d| d["size"].as_u64());
    assert_eq!(size, Some(SIZE), "{p}");
    for (name, (b, a)) in ["lon", "nyc"].iter().zip(before.iter().zip(after.iter())) {
        let grown_mib = a.saturating_sub(*b) / 1024;
        eprintln!(
            "{name}: peak RSS {b} KiB -> {a} KiB (+{grown_mib} MiB) copying 1 GiB in {took:?}"
        );
        assert!(
            grown_mib < 64,
            "{name}'s memory grew by {grown_mib} MiB moving a 1 GiB droplet"
        );
    }
}
