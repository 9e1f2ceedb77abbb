//! `gcf` against real nodes of a two-site mesh: the commands an operator runs.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use grouter_tests::{MeshCa, NatsServer, Node, wait_until};
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
    let ca = MeshCa::new();
    let (lon_bus, nyc_bus) = (NatsServer::start(), NatsServer::start());
    let lon = Node::builder("lon-1", "lon")
        .nats(&lon_bus.url())
        .mesh(&ca, &[])
        .start()
        .await;
    let nyc = Node::builder("nyc-1", "nyc")
        .nats(&nyc_bus.url())
        .mesh(&ca, &[lon.mesh_addr()])
        .start()
        .await;
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
