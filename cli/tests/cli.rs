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
