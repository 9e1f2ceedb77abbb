//! The `grouter-cc-standin` binary as the placement tests run it: its flags, the `listening`
//! line, SIGTERM, and a bad seed refused at startup naming the field.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead as _;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

fn standin(seed: &Value, dir: &std::path::Path) -> Command {
    let seed_file = dir.join("seed.json");
    std::fs::write(&seed_file, seed.to_string()).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_grouter-cc-standin"));
    cmd.args([
        "--site",
        "nyc",
        "--listen",
        "127.0.0.1:0",
        "--client-id",
        "grouter-nyc",
    ])
    .args(["--client-secret", "s", "--job-delay-ms", "100", "--seed"])
    .arg(&seed_file)
    .arg("--blob-dir")
    .arg(dir.join("blobs"))
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    cmd
}

#[test]
fn it_announces_its_address_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let seed = json!({"domains": ["apps.example.com"], "orgs": [{"name": "demo", "spaces": [{"name": "prod", "apps": [
        {"name": "shop", "lifecycle": "buildpack", "state": "STARTED", "instances": 2,
         "routes": ["shop.apps.example.com"], "droplet": {"size": 3 << 20, "seed": 7}}]}]}]});
    let mut child = standin(&seed, dir.path()).spawn().unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["message"], "listening");
    assert_eq!(v["service"], "cloud_controller");
    assert_eq!(v["site"], "nyc");
    let addr = v["addr"].as_str().unwrap().to_string();
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );

    // A plain HTTP/1.1 request for the state, without a client library.
    use std::io::{Read as _, Write as _};
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "GET /_standin/state HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    let state: Value = serde_json::from_str(body).unwrap();
    assert_eq!(state["site"], "nyc");
    assert_eq!(state["droplets"][0]["size"], 3 << 20);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(0), "{exit:?}");
}

#[test]
fn a_bad_seed_is_a_startup_error_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let seed = json!({"domains": ["apps.example.com"], "orgs": [{"name": "demo", "spaces": [{"name": "prod", "apps": [
        {"name": "shop", "lifecycle": "buildpack", "state": "STARTED"}]}]}]});
    let out = standin(&seed, dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("orgs[0].spaces[0].apps[0].droplet"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_grouter-cc-standin"))
        .args(["--site", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a missing flag");
}
