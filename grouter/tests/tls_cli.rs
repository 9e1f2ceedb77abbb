//! `grouter tls ca`, `grouter tls node` and `grouter tls revoke` as operators run them: the
//! happy path writes the files a node config points at; a bad name is a usage error (exit 2)
//! naming the flag; a missing CA is a runtime failure (exit 1) naming the path; `openssl`
//! reads the CRL and the validity `--days` asked for.

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

/// `openssl ARGS…`; fails, naming the install command, when openssl is missing.
fn openssl(args: &[&str]) -> String {
    let out = match Command::new("openssl").args(args).output() {
        Ok(out) => out,
        Err(err) => panic!("cannot run openssl ({err}): apt-get install openssl"),
    };
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn ok(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn node(ca: &Path, node: &str, site: &str, out: &Path, days: Option<&str>) -> Output {
    let mut args = vec![
        "tls",
        "node",
        "--ca",
        s(ca),
        "--node",
        node,
        "--site",
        site,
        "--out",
        s(out),
    ];
    if let Some(days) = days {
        args.extend(["--days", days]);
    }
    grouter(&args)
}

/// The certificate's serial as openssl prints it (upper-case hex).
fn serial(cert: &Path) -> String {
    let out = openssl(&["x509", "-in", s(cert), "-noout", "-serial"]);
    out.trim().trim_start_matches("serial=").to_string()
}

#[test]
fn revoke_writes_a_crl_that_openssl_lists() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ok(&grouter(&["tls", "ca", "--out", s(&ca)]));
    let lon = dir.path().join("lon-1");
    let nyc = dir.path().join("nyc-1");
    ok(&node(&ca, "lon-1", "lon", &lon, None));
    let stdout = ok(&node(&ca, "nyc-1", "nyc", &nyc, None));
    let nyc_serial = serial(&nyc.join("node.pem"));
    let issued = ca
        .join("issued")
        .join(format!("nyc-1-{}.pem", nyc_serial.to_lowercase()));
    assert!(issued.is_file(), "{stdout}");
    assert!(stdout.contains(s(&issued)), "{stdout}");

    let stdout = ok(&grouter(&[
        "tls",
        "revoke",
        "--ca",
        s(&ca),
        "--node",
        "nyc-1",
    ]));
    assert!(stdout.contains(&nyc_serial.to_lowercase()), "{stdout}");
    let crl = ca.join("crl.pem");
    let text = openssl(&["crl", "-in", s(&crl), "-noout", "-text"]);
    assert!(text.contains(&nyc_serial), "{text}");
    let lon_serial = serial(&lon.join("node.pem"));
    assert!(!text.contains(&lon_serial), "{text}");
    // Signed by the CA.
    let verify = Command::new("openssl")
        .args([
            "crl",
            "-in",
            s(&crl),
            "-noout",
            "-CAfile",
            s(&ca.join("ca.pem")),
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&verify.stderr).contains("verify OK"),
        "{verify:?}"
    );
    let number = |text: &str| {
        text.lines()
            .skip_while(|l| !l.contains("X509v3 CRL Number"))
            .nth(1)
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(number(&text), "2");

    // By file: lon-1 joins, nyc-1 stays, the number grows.
    ok(&grouter(&[
        "tls",
        "revoke",
        "--ca",
        s(&ca),
        "--cert",
        s(&lon.join("node.pem")),
    ]));
    let text = openssl(&["crl", "-in", s(&crl), "-noout", "-text"]);
    assert!(
        text.contains(&nyc_serial) && text.contains(&lon_serial),
        "{text}"
    );
    assert_eq!(number(&text), "3");

    // An unknown node: exit 1, naming what was searched.
    let out = grouter(&["tls", "revoke", "--ca", s(&ca), "--node", "ghost-1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ghost-1"), "{stderr}");
    assert!(stderr.contains(s(&ca.join("issued"))), "{stderr}");
    // Neither --node nor --cert: usage.
    assert_eq!(
        grouter(&["tls", "revoke", "--ca", s(&ca)]).status.code(),
        Some(2)
    );
}

#[test]
fn days_sets_the_node_certificate_validity() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ok(&grouter(&["tls", "ca", "--out", s(&ca)]));
    let out = dir.path().join("lon-1");
    ok(&node(&ca, "lon-1", "lon", &out, Some("1")));
    let end = openssl(&[
        "x509",
        "-in",
        s(&out.join("node.pem")),
        "-noout",
        "-checkend",
        "0",
    ]);
    assert!(end.contains("will not expire"), "{end}");
    // Valid for a day: still valid in 23 h, not in 25 h.
    let check = |secs: u64| {
        Command::new("openssl")
            .args([
                "x509",
                "-in",
                s(&out.join("node.pem")),
                "-noout",
                "-checkend",
            ])
            .arg(secs.to_string())
            .status()
            .unwrap()
            .success()
    };
    assert!(check(23 * 3600));
    assert!(!check(25 * 3600));
    // The default is a year.
    ok(&node(&ca, "lon-1", "lon", &out, None));
    assert!(check(364 * 86_400));
    assert!(!check(367 * 86_400));

    for bad in ["0", "100000", "x"] {
        let o = node(&ca, "lon-1", "lon", &out, Some(bad));
        assert_eq!(o.status.code(), Some(2), "--days {bad}");
    }
}
