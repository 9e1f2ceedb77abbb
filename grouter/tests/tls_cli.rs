//! `grouter tls ca` and `grouter tls node` as operators run them: the happy path writes the
//! files a node config points at; a bad name is a usage error (exit 2) naming the flag; a
//! missing CA is a runtime failure (exit 1) naming the path.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

fn grouter(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_grouter"))
        .args(args)
        .output()
        .unwrap()
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn ca_then_node_writes_the_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let node = dir.path().join("lon-1");

    let out = grouter(&["tls", "ca", "--out", s(&ca)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ca.join("ca.pem").is_file());
    assert_eq!(mode(&ca.join("ca.key")), 0o600);

    let out = grouter(&[
        "tls",
        "node",
        "--ca",
        s(&ca),
        "--node",
        "lon-1",
        "--site",
        "lon",
        "--out",
        s(&node),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(node.join("node.pem").is_file());
    assert!(node.join("ca.pem").is_file());
    assert_eq!(mode(&node.join("node.key")), 0o600);

    // A second CA in the same place is refused, and the first one is kept.
    let key = std::fs::read(ca.join("ca.key")).unwrap();
    let out = grouter(&["tls", "ca", "--out", s(&ca)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ca.key"));
    assert_eq!(std::fs::read(ca.join("ca.key")).unwrap(), key);
}

#[test]
fn node_with_an_invalid_site_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    assert!(grouter(&["tls", "ca", "--out", s(&ca)]).status.success());
    let node = dir.path().join("node");

    let out = grouter(&[
        "tls",
        "node",
        "--ca",
        s(&ca),
        "--node",
        "lon-1",
        "--site",
        "LON!",
        "--out",
        s(&node),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--site"), "{stderr}");
    assert!(!node.exists());

    let out = grouter(&[
        "tls",
        "node",
        "--ca",
        s(&ca),
        "--node",
        "Lon 1",
        "--site",
        "lon",
        "--out",
        s(&node),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--node"), "{stderr}");
}

#[test]
fn node_with_a_missing_ca_is_a_runtime_failure_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-ca");
    let out = grouter(&[
        "tls",
        "node",
        "--ca",
        s(&missing),
        "--node",
        "lon-1",
        "--site",
        "lon",
        "--out",
        s(&dir.path().join("node")),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(s(&missing)), "{stderr}");
}

#[test]
fn missing_flags_are_usage_errors() {
    let out = grouter(&["tls", "node", "--node", "lon-1"]);
    assert_eq!(out.status.code(), Some(2));
}
