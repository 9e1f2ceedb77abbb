//! `grouter check` as operators run it: every shipped config passes, a broken one fails with
//! exit 2 and names the key. (Also makes cargo build the `grouter` binary that the
//! workspace's integration tests run.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn grouter() -> Command {
    Command::new(env!("CARGO_BIN_EXE_grouter"))
}

fn configs(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            configs(&p, out);
        } else if p.extension().is_some_and(|e| e == "toml") {
            out.push(p);
        }
    }
}

#[test]
fn check_accepts_every_config_under_deploy() {
    let mut found = Vec::new();
    configs(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy"),
        &mut found,
    );
    assert!(!found.is_empty(), "no configs under deploy/");
    for config in found {
        let out = grouter()
            .arg("check")
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            config.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn check_rejects_a_broken_config_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[nats]\nservers = [\"nats://127.0.0.1:4222\"]\nbogus = 1\n",
            "nats.bogus",
        ),
        (
            "[nats]\nservers = [\"nats://127.0.0.1:4222\"]\nstale_threshold_secs = \"soon\"\n",
            "nats.stale_threshold_secs",
        ),
        ("[nats]\nservers = []\n", "nats.servers"),
    ];
    for (i, (nats, key)) in cases.iter().enumerate() {
        let text = format!(
            "node_id = \"n1\"\nsite = \"lon\"\n{nats}\n[gorouters]\naddresses = [\"127.0.0.1:8081\"]\n\
             [proxy]\nhttp_listen = \"127.0.0.1:8080\"\n[admin]\nlisten = \"127.0.0.1:9090\"\ntoken_file = \"t\"\n"
        );
        let path = dir.path().join(format!("broken-{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = grouter()
            .arg("check")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}: {stderr}");
        assert!(
            stderr.contains(&format!("broken-{i}.toml: {key}")),
            "{key} not named in: {stderr}"
        );
    }
}

#[test]
fn usage_errors_exit_2_and_missing_file_is_named() {
    let out = grouter().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = grouter()
        .args(["check", "--config", "/nonexistent/x.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.toml"));
}
