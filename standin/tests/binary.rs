//! The `grouter-standin` binary as `grouter demo` runs it: it announces its address on
//! stderr, answers for its site, and stops on SIGTERM. (Also makes `cargo test --workspace`
//! build the binary, which the demo's integration test runs.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn announces_its_address_answers_for_its_site_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_grouter-standin"))
        .args(["--site", "lon"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start grouter-standin");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // The first line is the announcement; the read ends if the child exits.
    let line = lines.next().expect("an announcement").unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["message"], "listening", "{line}");
    assert_eq!(v["site"], "lon", "{line}");
    let addr = v["addr"].as_str().unwrap().to_string();
    assert!(
        addr.starts_with("127.0.0.1:"),
        "binds loopback by default: {addr}"
    );

    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"GET /x HTTP/1.1\r\nHost: shop.example.com\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    let head = reply.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{reply}");
    assert!(head.contains("x-stub-site: lon"), "{reply}");

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM is a clean stop: {status}");
}
