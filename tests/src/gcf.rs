//! `gcf` against real nodes of a two-site mesh: the commands an operator runs.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use grouter_tests::{TwoSites, wait_until};
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
