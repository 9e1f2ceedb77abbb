//! `gcf` against real nodes of a two-site mesh: the commands an operator runs.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use grouter_tests::{MeshCa, NatsServer, Node, TwoSites, wait_until};
use serde_json::{Value, json};

const SEC: Duration = Duration::from_secs(1);

/// The `gcf` binary next to `grouter` (the cli package's own tests make cargo build it).
fn gcf_bin() -> PathBuf {
    let bin = grouter_tests::grouter_bin().with_file_name("gcf");
    assert!(
        bin.is_file(),
        "{} not found: run `cargo test --workspace`",
        bin.display()
    );
    bin
}

fn gcf(home: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(gcf_bin())
        .env("GCF_HOME", home)
        .args(args)
        .output()
        .expect("run gcf");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn gcf_shows_the_global_view_of_a_two_site_mesh() {
    let TwoSites {
        ca: _ca,
        lon_bus,
        nyc_bus,
        lon: _lon,
        nyc,
    } = TwoSites::start().await;
    for (bus, host, instance) in [
        (&lon_bus, "10.0.0.1", "i-lon"),
        (&nyc_bus, "10.1.0.1", "i-nyc"),
    ] {
        let client = bus.client().await;
        let msg = json!({"host": host, "port": 61000, "uris": ["shop.apps.example.com"], "app": "guid-shop",
            "private_instance_id": instance, "tags": {"app_name": "shop"}});
        wait_until(10 * SEC, "the route registered", || async {
            client
                .publish("router.register", msg.to_string().into())
                .await
                .ok()?;
            client.flush().await.ok()?;
            let r = nyc.route("shop.apps.example.com", "").await?;
            (r["sites"]
                .as_array()?
                .iter()
                .any(|s| s["site"] == host_site(host)))
            .then_some(())
        })
        .await;
    }
    wait_until(10 * SEC, "nyc in sync", || async {
        (nyc.json("/v1/status").await["sync"] == "in_sync").then_some(())
    })
    .await;

    let home = tempfile::tempdir().expect("tempdir");
    let token_file = home.path().join("token");
    std::fs::write(&token_file, nyc.token()).expect("token");
    let url = format!("http://{}", nyc.admin_addr());
    let (code, out, err) = gcf(
        home.path(),
        &["api", &url, "--token-file", token_file.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");

    let (code, out, _) = gcf(home.path(), &["apps"]);
    assert_eq!(code, 0);
    let row = out
        .lines()
        .find(|l| l.starts_with("shop"))
        .expect("shop row");
    assert!(
        row.contains("lon, nyc") && row.contains("lon:1") && row.contains("nyc:1"),
        "{out}"
    );

    let (code, out, _) = gcf(home.path(), &["sites"]);
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with("lon") && l.contains("lon-1 (alive)")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("nyc") && l.contains("nyc-1 (alive)")),
        "{out}"
    );

    let (code, out, _) = gcf(home.path(), &["routes", "--site", "lon"]);
    assert_eq!(code, 0);
    assert!(out.contains("shop.apps.example.com"), "{out}");
    assert!(
        out.contains("lon (1)") && !out.contains("nyc"),
        "only lon's view: {out}"
    );

    let (code, out, _) = gcf(home.path(), &["status", "--json"]);
    assert_eq!(code, 0);
    let status: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(status["node_id"], "nyc-1");
    assert_eq!(status["sync"], "in_sync");

    let (code, out, _) = gcf(home.path(), &["app", "shop"]);
    assert_eq!(code, 0);
    assert!(out.contains("guid-shop"), "{out}");

    // A wrong token: a clear message, exit 1.
    std::fs::write(&token_file, "wrong").expect("token");
    let (code, _, _) = gcf(
        home.path(),
        &["api", &url, "--token-file", token_file.to_str().unwrap()],
    );
    assert_eq!(code, 0, "the health check needs no token");
    let (code, _, err) = gcf(home.path(), &["routes"]);
    assert_eq!(code, 1);
    assert!(err.contains("token"), "{err}");
}

fn host_site(host: &str) -> &'static str {
    if host.starts_with("10.0.") {
        "lon"
    } else {
        "nyc"
    }
}

/// A route-emitter registration of `app` (GUID `guid`) in `org`/`space`.
fn tagged_registration(host: &str, uri: &str, guid: &str, org: &str, space: &str) -> Value {
    json!({"host": host, "port": 61000, "uris": [uri], "app": guid,
        "private_instance_id": format!("{guid}-0"),
        "tags": {"component": "route-emitter", "app_name": "shop",
                 "organization_name": org, "space_name": space}})
}

/// Issue 12: the same app has a different GUID in every foundation; the global `cf apps`
/// shows it once, by org, space and name, with both sites and both GUIDs. A name in two
/// orgs is two apps, and `gcf app NAME` says it is ambiguous.
#[tokio::test]
async fn one_app_across_foundations_is_one_row_and_ambiguous_names_are_refused() {
    let TwoSites {
        ca: _ca,
        lon_bus,
        nyc_bus,
        lon,
        nyc,
    } = TwoSites::start().await;
    let (lon_client, nyc_client) = (lon_bus.client().await, nyc_bus.client().await);
    let lon_shop = tagged_registration(
        "10.0.0.1",
        "shop.apps.example.com",
        "guid-lon",
        "acme",
        "prod",
    );
    let nyc_shop = tagged_registration(
        "10.1.0.1",
        "shop.apps.example.com",
        "guid-nyc",
        "acme",
        "prod",
    );
    lon.register_until_routed(&lon_client, &lon_shop, "shop.apps.example.com")
        .await;
    nyc.register_until_routed(&nyc_client, &nyc_shop, "shop.apps.example.com")
        .await;
    let one_app = wait_until(10 * SEC, "one app at both sites, seen from nyc", || async {
        let apps = nyc.json("/v1/apps").await;
        let app = apps["apps"]
            .as_array()?
            .iter()
            .find(|a| a["app_id"] == "acme/prod/shop")?
            .clone();
        (app["sites"].as_array()?.len() == 2).then_some(apps)
    })
    .await;
    assert_eq!(
        one_app["apps"].as_array().map(Vec::len),
        Some(1),
        "{one_app}"
    );
    let app = &one_app["apps"][0];
    assert_eq!(
        (&app["org"], &app["space"], &app["name"]),
        (&json!("acme"), &json!("prod"), &json!("shop"))
    );
    assert_eq!(
        app["sites"],
        json!([
            {"site": "lon", "instances": 1, "app_guids": ["guid-lon"]},
            {"site": "nyc", "instances": 1, "app_guids": ["guid-nyc"]},
        ])
    );

    let home = tempfile::tempdir().expect("tempdir");
    let token_file = home.path().join("token");
    std::fs::write(&token_file, nyc.token()).expect("token");
    let url = format!("http://{}", nyc.admin_addr());
    let (code, out, err) = gcf(
        home.path(),
        &["api", &url, "--token-file", token_file.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = gcf(home.path(), &["apps"]);
    assert_eq!(code, 0);
    let shop_rows: Vec<&str> = out.lines().filter(|l| l.starts_with("shop")).collect();
    assert_eq!(shop_rows.len(), 1, "one row for the app: {out}");
    let words: Vec<&str> = shop_rows[0].split_whitespace().collect();
    assert_eq!(words[..5], ["shop", "acme", "prod", "lon,", "nyc"], "{out}");
    assert!(shop_rows[0].contains("lon:1 nyc:1"), "{out}");
    let (code, out, _) = gcf(home.path(), &["app", "shop"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("org:         acme\n") && out.contains("guid-lon") && out.contains("guid-nyc"),
        "{out}"
    );
    // Either site's GUID finds it too.
    let (code, out, _) = gcf(home.path(), &["app", "guid-lon"]);
    assert_eq!(code, 0);
    assert!(out.contains("app id:      acme/prod/shop\n"), "{out}");

    // Another org's app of the same name, at nyc: now the bare name is ambiguous.
    let other = tagged_registration(
        "10.1.0.2",
        "shop.beta.example.com",
        "guid-beta",
        "beta",
        "prod",
    );
    nyc.register_until_routed(&nyc_client, &other, "shop.beta.example.com")
        .await;
    let (code, _, err) = gcf(home.path(), &["app", "shop"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("ambiguous") && err.contains("acme/prod/shop, beta/prod/shop"),
        "{err}"
    );
    let (code, out, _) = gcf(home.path(), &["app", "beta/prod/shop"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("guid-beta") && !out.contains("guid-lon"),
        "{out}"
    );
}

/// A `gcf` home directory targeting one node's admin API with one token.
struct Gcf {
    home: tempfile::TempDir,
}

impl Gcf {
    /// `gcf api URL --token-file F` for `node` with `token` (its write or read token).
    fn target(node: &Node, token: &str) -> Gcf {
        let home = tempfile::tempdir().expect("tempdir");
        let token_file = home.path().join("token");
        std::fs::write(&token_file, token).expect("token");
        let url = format!("http://{}", node.admin_addr());
        let gcf = Gcf { home };
        let (code, out, err) = gcf.run(&["api", &url, "--token-file", path_str(&token_file)]);
        assert_eq!(code, 0, "{out}{err}");
        gcf
    }

    fn run(&self, args: &[&str]) -> (i32, String, String) {
        gcf(self.home.path(), args)
    }

    /// Run a command that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "gcf {args:?}: {out}{err}");
        out
    }

    /// Run a command that must fail with `code`; its stderr.
    fn fails(&self, code: i32, args: &[&str]) -> String {
        let (got, out, err) = self.run(args);
        assert_eq!(got, code, "gcf {args:?}: {out}{err}");
        err
    }
}

fn path_str(path: &std::path::Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

/// Two sites in two regions, lon (eu, with a read-only token too) and nyc (us), running
/// app `shop` on two route hosts; returns once lon sees it at both sites and is in sync.
async fn shop_in_two_regions() -> (MeshCa, [NatsServer; 2], Node, Node) {
    let ca = MeshCa::new();
    let buses = [NatsServer::start(), NatsServer::start()];
    let lon = Node::builder("lon-1", "lon")
        .region("eu")
        .nats(&buses[0].url())
        .mesh(&ca, &[])
        .read_token()
        .start()
        .await;
    let nyc = Node::builder("nyc-1", "nyc")
        .region("us")
        .nats(&buses[1].url())
        .mesh(&ca, &[lon.mesh_addr()])
        .start()
        .await;
    for (bus, node, ip) in [(&buses[0], &lon, "10.0.0.1"), (&buses[1], &nyc, "10.1.0.1")] {
        let msg = json!({"host": ip, "port": 61000, "app": "guid-shop",
            "uris": ["shop.apps.example.com", "cart.apps.example.com"],
            "private_instance_id": format!("i-{ip}"), "tags": {"app_name": "shop"}});
        node.register_until_routed(&bus.client().await, &msg, "cart.apps.example.com")
            .await;
    }
    wait_until(30 * SEC, "lon sees shop at both sites, in sync", || async {
        let status = lon.json("/v1/status").await;
        let route = lon.route("cart.apps.example.com", "").await?;
        let sites = route["sites"].as_array()?.len();
        (status["sync"] == "in_sync" && sites == 2).then_some(())
    })
    .await;
    (ca, buses, lon, nyc)
}

/// The route policy `node` holds for `host` without its unset (`null`) fields; `Null`
/// when none.
async fn route_policy(node: &Node, host: &str) -> Value {
    let (status, body) = node
        .send(
            reqwest::Method::GET,
            &format!("/v1/policies/routes/{host}"),
            None,
            Some(node.token()),
        )
        .await;
    match &body["policy"] {
        Value::Object(fields) if status == 200 => Value::Object(
            fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        _ => Value::Null,
    }
}

/// Issue 13: every policy command against a real node: the write lands on every route
/// host of the app, reaches the other site, keeps the fields other commands set, and
/// shows in `gcf policies` and `gcf audit`; `--json` is the API's JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcf_writes_route_and_site_policies_that_reach_every_node() {
    let (_ca, _buses, lon, nyc) = shop_in_two_regions().await;
    let gcf = Gcf::target(&lon, lon.token());
    let hosts = ["shop.apps.example.com", "cart.apps.example.com"];

    let out = gcf.ok(&["policies"]);
    assert_eq!(
        out,
        "route policies\nNo route policies.\n\nsite policies\nNo site policies.\n"
    );

    let out = gcf.ok(&["pin", "shop", "--regions", "eu"]);
    assert!(
        out.starts_with("Pinning app shop to regions eu...\nOK\n\n"),
        "{out}"
    );
    for host in hosts {
        assert!(
            out.lines()
                .any(|l| l.starts_with(host) && l.contains("updated") && l.contains(" eu ")),
            "{out}"
        );
        // Written at lon, in force at nyc too.
        wait_until(3 * SEC, "the pin at nyc", || async {
            (route_policy(&nyc, host).await["regions"] == json!(["eu"])).then_some(())
        })
        .await;
    }

    let out = gcf.ok(&["app", "shop"]);
    assert!(out.contains("\npolicy:      regions=eu\n"), "{out}");

    // --json: the API's answers, one per route host.
    let out = gcf.ok(&["weights", "shop", "lon=3,nyc=1", "--json"]);
    let replies: Value = serde_json::from_str(&out).expect("json");
    let mut keys: Vec<&str> = replies
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|r| r["key"].as_str())
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "policy/route/cart.apps.example.com",
            "policy/route/shop.apps.example.com"
        ],
        "{out}"
    );
    assert!(
        replies[0]["replicated"] == true && replies[0]["hlc"].is_string(),
        "{out}"
    );

    // A route host names just that route.
    let out = gcf.ok(&["set-routing", "cart.apps.example.com", "--mode", "redirect"]);
    assert!(
        out.starts_with("Setting routing mode of route cart.apps.example.com to redirect...\nOK\n"),
        "{out}"
    );
    gcf.ok(&["drain", "--site", "nyc", "shop"]);
    // Each command kept what the others set.
    assert_eq!(
        route_policy(&lon, "cart.apps.example.com").await,
        json!({"mode": "redirect", "regions": ["eu"], "weights": {"lon": 3, "nyc": 1},
            "drained": ["nyc"]})
    );
    assert_eq!(
        route_policy(&lon, "shop.apps.example.com").await,
        json!({"regions": ["eu"], "weights": {"lon": 3, "nyc": 1}, "drained": ["nyc"]})
    );

    let out = gcf.ok(&["policies"]);
    let row = out
        .lines()
        .find(|l| l.starts_with("cart.apps.example.com"))
        .expect("cart row");
    let words: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        [&words[..6], &words[7..]].concat(),
        [
            "cart.apps.example.com",
            "redirect",
            "eu",
            "lon=3,",
            "nyc=1",
            "nyc",
            "lon-1"
        ],
        "{out}"
    );
    assert!(
        words[6].len() == 20 && words[6].ends_with('Z'),
        "updated, RFC 3339: {out}"
    );
    let out = gcf.ok(&["policies", "--json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("json"),
        lon.json("/v1/policies").await
    );

    // Undrain and unpin remove their field and keep the others.
    gcf.ok(&["undrain", "--site", "nyc", "shop"]);
    let out = gcf.ok(&["unpin", "shop"]);
    assert!(out.starts_with("Unpinning app shop...\nOK\n"), "{out}");
    assert_eq!(
        route_policy(&lon, "cart.apps.example.com").await,
        json!({"mode": "redirect", "weights": {"lon": 3, "nyc": 1}})
    );
    // Nothing to change: nothing written.
    let before = lon.json("/v1/policies").await;
    let out = gcf.ok(&["unpin", "shop"]);
    assert!(out.contains("unchanged"), "{out}");
    assert_eq!(lon.json("/v1/policies").await, before);

    // The whole site: nyc's /healthz goes 503 (anycast withdraws it), and back.
    let out = gcf.ok(&["drain", "--site", "nyc"]);
    assert_eq!(out, "Draining site nyc...\nOK\n");
    wait_until(3 * SEC, "nyc's /healthz 503", || async {
        (nyc.get("/healthz").await.ok()?.0 == 503).then_some(())
    })
    .await;
    let out = gcf.ok(&["sites"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("nyc") && l.contains("(drained)")),
        "{out}"
    );
    let out = gcf.ok(&["policies"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("nyc ") && l.contains(" yes ")),
        "{out}"
    );
    let out = gcf.ok(&["undrain", "--site", "nyc", "--json"]);
    let replies: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(replies[0]["key"], "policy/site/nyc", "{out}");
    wait_until(3 * SEC, "nyc's /healthz 200 again", || async {
        (nyc.get("/healthz").await.ok()?.0 == 200).then_some(())
    })
    .await;

    // The audit trail of lon's writes, newest first.
    let out = gcf.ok(&["audit"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("time") && lines[0].contains("key"),
        "{out}"
    );
    let newest: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        newest[1..],
        ["lon-1", "write", "delete", "policy/site/nyc"],
        "{out}"
    );
    assert!(
        lines.iter().any(|l| l.split_whitespace().skip(1).eq([
            "lon-1",
            "write",
            "put",
            "policy/route/cart.apps.example.com"
        ])),
        "{out}"
    );
    let out = gcf.ok(&["audit", "--limit", "1", "--json"]);
    let audit: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(audit["entries"].as_array().map(Vec::len), Some(1), "{out}");
}

/// Issue 13: unknown apps, sites, regions and malformed weights fail clearly, before
/// anything is written; a read-only token reads but cannot write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcf_refuses_bad_input_and_read_tokens_without_writing() {
    let (_ca, _buses, lon, _nyc) = shop_in_two_regions().await;
    let gcf = Gcf::target(&lon, lon.token());
    gcf.ok(&["pin", "shop", "--regions", "eu,us"]);
    let before = lon.json("/v1/policies").await;
    assert_eq!(
        before["routes"].as_array().map(Vec::len),
        Some(2),
        "{before}"
    );

    let cases: [(&[&str], i32, &str); 10] = [
        (
            &["pin", "nope", "--regions", "eu"],
            1,
            "App 'nope' not found.",
        ),
        (
            &["pin", "shop", "--regions", "eu,mars"],
            1,
            "Region 'mars' not found",
        ),
        (
            &["weights", "shop", "lon=3,par=1"],
            1,
            "Site 'par' not found (sites: lon, nyc).",
        ),
        (&["weights", "shop", "lon=x"], 2, "<WEIGHTS>"),
        (&["weights", "shop", "lon=-1"], 2, "negative"),
        (&["weights", "shop", "lon"], 2, "has no '='"),
        (&["drain", "--site", "par"], 1, "Site 'par' not found"),
        (
            &["drain", "--site", "par", "shop"],
            1,
            "Site 'par' not found",
        ),
        (&["undrain", "--site", "par"], 1, "Site 'par' not found"),
        (
            &["set-routing", "nope", "--mode", "proxy"],
            1,
            "App 'nope' not found.",
        ),
    ];
    for (args, code, message) in cases {
        let err = gcf.fails(code, args);
        assert!(err.contains(message), "gcf {args:?}: {err}");
        assert_eq!(lon.json("/v1/policies").await, before, "gcf {args:?} wrote");
    }

    // The read-only token: reads work, every write is refused with the API's 403.
    let reader = Gcf::target(&lon, lon.read_token());
    let out = reader.ok(&["policies"]);
    assert!(out.contains("shop.apps.example.com"), "{out}");
    for args in [
        &["pin", "shop", "--regions", "us"][..],
        &["unpin", "shop"],
        &["drain", "--site", "nyc"],
        &["weights", "shop", "lon=1"],
    ] {
        let err = reader.fails(1, args);
        assert!(
            err.contains("403 Forbidden: this token may only read"),
            "gcf {args:?}: {err}"
        );
    }
    assert_eq!(lon.json("/v1/policies").await, before);
}

/// Issue 13: a write at a node with no peer connected is stored there only for now, and
/// gcf says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcf_warns_when_a_write_is_not_replicated_yet() {
    let bus = NatsServer::start();
    let lon = Node::builder("lon-1", "lon")
        .region("eu")
        .nats(&bus.url())
        .start()
        .await;
    let gcf = Gcf::target(&lon, lon.token());
    let out = gcf.ok(&["drain", "--site", "lon"]);
    assert_eq!(
        out,
        "Draining site lon...\nWarning: no peer is connected: stored at lon-1 only until peers connect, then it spreads to the mesh.\nOK\n"
    );
    wait_until(3 * SEC, "lon's /healthz 503", || async {
        (lon.get("/healthz").await.ok()?.0 == 503).then_some(())
    })
    .await;
    let out = gcf.ok(&["undrain", "--site", "lon", "--json"]);
    let replies: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(replies[0]["replicated"], false, "{out}");
}

/// Issue 13: `gcf upload-cert` at one node, and the other serves it by SNI; `gcf certs`
/// lists it with the nodes serving it; bad files and refused certificates write nothing;
/// a read token cannot upload; `gcf delete-cert` removes it everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcf_uploads_lists_and_deletes_certificates() {
    const HOST: &str = "shop.apps.example.com";
    let certs = grouter_tests::AppCerts::new();
    certs.issue("default", "default.example.com");
    let dir = certs.dir.path();
    let ca = MeshCa::new();
    let buses = [NatsServer::start(), NatsServer::start()];
    let lon = Node::builder("lon-1", "lon")
        .nats(&buses[0].url())
        .mesh(&ca, &[])
        .https(dir, &dir.join("default.pem"), &dir.join("default.key"))
        .read_token()
        .start()
        .await;
    let nyc = Node::builder("nyc-1", "nyc")
        .nats(&buses[1].url())
        .mesh(&ca, &[lon.mesh_addr()])
        .https(dir, &dir.join("default.pem"), &dir.join("default.key"))
        .start()
        .await;
    for n in [&lon, &nyc] {
        wait_until(30 * SEC, "a two-node mesh", || async {
            (n.json("/v1/status").await["peers_connected"].as_u64()? >= 1).then_some(())
        })
        .await;
    }
    let files = tempfile::tempdir().expect("tempdir");
    let (chain, key, leaf) = certs.issue_pem(&[HOST], None);
    let (cert_file, key_file) = (files.path().join("shop.pem"), files.path().join("shop.key"));
    std::fs::write(&cert_file, &chain).expect("cert");
    std::fs::write(&key_file, &key).expect("key");
    let (cert_arg, key_arg) = (path_str(&cert_file), path_str(&key_file));

    let gcf = Gcf::target(&lon, lon.token());
    // The default certificate is no upload (and default.pem names no host): none listed.
    assert_eq!(gcf.ok(&["certs"]), "No certificates found.\n");
    let before = lon.json("/v1/certs").await;

    // Refused before anything is sent, or by the node: nothing is stored.
    let missing = path_str(files.path()).to_owned() + "/missing.key";
    let err = gcf.fails(
        2,
        &["upload-cert", HOST, "--cert", cert_arg, "--key", &missing],
    );
    assert!(err.contains(&format!("--key {missing}: ")), "{err}");
    let garbage = files.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("garbage");
    let err = gcf.fails(
        1,
        &[
            "upload-cert",
            HOST,
            "--cert",
            path_str(&garbage),
            "--key",
            key_arg,
        ],
    );
    assert!(
        err.contains("400 Bad Request") && err.contains("(field cert_pem)"),
        "{err}"
    );
    let err = gcf.fails(
        1,
        &[
            "upload-cert",
            "other.apps.example.com",
            "--cert",
            cert_arg,
            "--key",
            key_arg,
        ],
    );
    assert!(err.contains("(field host)"), "{err}");
    let reader = Gcf::target(&lon, lon.read_token());
    let err = reader.fails(
        1,
        &["upload-cert", HOST, "--cert", cert_arg, "--key", key_arg],
    );
    assert!(
        err.contains("403 Forbidden: this token may only read"),
        "{err}"
    );
    assert_eq!(lon.json("/v1/certs").await, before);

    // Uploaded at lon, served by nyc.
    let out = gcf.ok(&["upload-cert", HOST, "--cert", cert_arg, "--key", key_arg]);
    assert!(
        out.starts_with(&format!(
            "Uploading certificate for {HOST}...\nOK\n\nhost:        {HOST}\nsans:        {HOST}\n"
        )) && out.contains("\nsha-256:     "),
        "{out}"
    );
    wait_until(3 * SEC, "nyc serves the upload by SNI", || async {
        (certs.served(nyc.https_addr(), HOST).await.as_ref() == Some(&leaf)).then_some(())
    })
    .await;
    let row = wait_until(10 * SEC, "gcf certs: both nodes serve it", || async {
        let out = gcf.ok(&["certs"]);
        let row = out.lines().find(|l| l.starts_with(HOST))?.to_owned();
        row.ends_with("lon-1, nyc-1").then_some(row)
    })
    .await;
    let words: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(words[..2], [HOST, "upload"], "{row}");
    assert_eq!(words[3], HOST, "sans: {row}");
    let listed: Value = serde_json::from_str(&gcf.ok(&["certs", "--json"])).expect("json");
    assert!(
        listed["certs"]
            .as_array()
            .expect("certs")
            .iter()
            .any(|c| c["host"] == HOST && c["source"] == "upload" && c.get("key_pem").is_none()),
        "{listed}"
    );

    // A read token may list but not delete.
    assert!(reader.ok(&["certs"]).contains(HOST));
    let err = reader.fails(1, &["delete-cert", HOST]);
    assert!(err.contains("403 Forbidden"), "{err}");

    let out = gcf.ok(&["delete-cert", HOST, "--json"]);
    let reply: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(reply["key"], format!("cert/{HOST}"), "{out}");
    wait_until(3 * SEC, "nyc no longer serves it", || async {
        certs
            .served(nyc.https_addr(), HOST)
            .await
            .is_none()
            .then_some(())
    })
    .await;
    let err = gcf.fails(1, &["delete-cert", HOST]);
    assert!(
        err.contains(&format!("No uploaded certificate for '{HOST}'.")),
        "{err}"
    );
    let out = gcf.ok(&["audit"]);
    for action in ["put", "delete"] {
        assert!(
            out.lines().any(|l| l.split_whitespace().skip(1).eq([
                "lon-1",
                "write",
                action,
                &format!("cert/{HOST}")
            ])),
            "{out}"
        );
    }
}
