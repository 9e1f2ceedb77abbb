//! `gcf` as a user runs it, without a server: usage errors and a missing target. (Also makes
//! cargo build the `gcf` binary that the workspace's integration tests drive against real
//! nodes.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn gcf(home: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gcf"));
    c.env("GCF_HOME", home);
    c
}

#[test]
fn usage_errors_exit_2_and_no_target_exits_1_with_cf_wording() {
    let home = std::env::temp_dir().join(format!("gcf-cli-test-{}", std::process::id()));
    let out = gcf(&home).arg("bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = gcf(&home).arg("routes").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("No API endpoint set"), "{stderr}");
    let _ = std::fs::remove_dir_all(home);
}

/// `gcf scale` and `gcf placement` need a targeted org and space: without them, a usage
/// error (exit 2) that says how to set them, before any request.
#[test]
fn placement_commands_need_an_org_and_space() {
    let home = std::env::temp_dir().join(format!("gcf-cli-test-space-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    let out = gcf(&home).arg("target").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("No API endpoint set"));

    std::fs::create_dir_all(&home).unwrap();
    // A port nothing listens on: a request would fail with exit 1, not 2.
    std::fs::write(home.join("config.toml"), "api = \"http://127.0.0.1:9\"\n").unwrap();
    for args in [
        &["scale", "shop", "--sites", "2"][..],
        &["placement", "shop"],
    ] {
        let out = gcf(&home).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("FAILED\n") && stderr.contains("'gcf target -o ORG -s SPACE'"),
            "{args:?}: {stderr}"
        );
    }
    let out = gcf(&home)
        .args(["target", "-o", "demo", "-s", "prod"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("org:            demo\nspace:          prod\n"),
        "{stdout}"
    );
    let out = gcf(&home)
        .args(["scale", "shop", "--sites", "2"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "now it gets as far as the request"
    );
    let _ = std::fs::remove_dir_all(home);
}
