//! The zone as `dnsviz` (Debian's `dnsviz`) judges it: probed in authoritative mode against
//! GRouter's DNS listener only, inside a loopback-only network namespace
//! ([`grouter_tests::netns`]) so it can never reach the root servers, then assessed with
//! `dnsviz grok`: no errors and no warnings (an NXDOMAIN above an existing name would be
//! `INCONSISTENT_NXDOMAIN_ANCESTOR`; an NS name without an address, a lame server, EDNS
//! mishandling and inconsistent SOA/NS would show too).

use std::process::Command;

use grouter_tests::inproc::registration;
use grouter_tests::{NatsServer, Node, find_program, netns};
use serde_json::Value;

/// Routed hosts: a plain one, one with an empty non-terminal above it, a wildcard.
const ROUTES: [&str; 3] = [
    "shop.apps.example.com",
    "a.b.apps.example.com",
    "*.wild.apps.example.com",
];

/// Every error and warning in `dnsviz grok` output, as `name: kind code: description`.
fn findings(v: &Value, name: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "errors" || k == "warnings" {
                    for e in v.as_array().into_iter().flatten() {
                        out.push(format!(
                            "{name}: {k} {}: {}",
                            e["code"].as_str().unwrap_or("?"),
                            e["description"].as_str().unwrap_or("")
                        ));
                    }
                } else {
                    findings(v, name, out);
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                findings(v, name, out);
            }
        }
        _ => {}
    }
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn dnsviz_finds_no_errors_in_the_zone() {
    if !netns::isolate("dns_dnsviz::dnsviz_finds_no_errors_in_the_zone") {
        return;
    }
    let dnsviz = find_program("dnsviz", "apt-get install -y dnsviz");
    let bus = NatsServer::start();
    // No mesh: the node is in sync on its own, so it answers from its table (a node that
    // lost sync answers every name with its site). Port 53 is free inside the namespace,
    // so the name server's own address really serves the zone.
    let node = Node::builder("lon-1", "lon")
        .nats(&bus.url())
        .extra(
            "\n[dns]\nlisten = \"127.0.0.1:53\"\nzones = [\"apps.example.com\"]\n\
             site_addresses = [\"192.0.2.10\", \"2001:db8::10\"]\n\
             nameservers = { \"ns1.apps.example.com\" = [\"127.0.0.1\"] }\n",
        )
        .start()
        .await;
    let client = bus.client().await;
    for host in ROUTES {
        node.register_until_routed(&client, &registration(host, 8080, host, "app"), host)
            .await;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let probe = dir.path().join("probe.json");
    let names = [
        "apps.example.com",
        "shop.apps.example.com",
        "b.apps.example.com",
        "a.b.apps.example.com",
        "wild.apps.example.com",
        "x.wild.apps.example.com",
        "ns1.apps.example.com",
        "nope.apps.example.com",
    ];
    // -A: authoritative analysis; `zone+:server` queries only that server for the zone and
    // nothing above it; -E adds the EDNS compatibility queries.
    run(
        Command::new(&dnsviz)
            .args(["probe", "-A", "-E", "-4"])
            .args(["-x", "apps.example.com+:ns1.apps.example.com=127.0.0.1"])
            .arg("-o")
            .arg(&probe)
            .args(names),
        "dnsviz probe",
    );
    let grok = run(
        Command::new(&dnsviz).args(["grok", "-P", "-r"]).arg(&probe),
        "dnsviz grok",
    );
    let report: Value = serde_json::from_str(&grok).expect("dnsviz grok prints JSON");
    let mut found = Vec::new();
    for name in names {
        let fqdn = format!("{name}.");
        let entry = &report[fqdn.as_str()];
        assert!(!entry.is_null(), "grok reports {fqdn}: {grok}");
        findings(entry, name, &mut found);
    }
    assert!(found.is_empty(), "dnsviz findings:\n{}", found.join("\n"));
    // What dnsviz saw: names above routes exist, names beside them do not.
    let status = |name: &str| report[format!("{name}.").as_str()]["status"].clone();
    for (name, want) in [
        ("b.apps.example.com", "NOERROR"),
        ("wild.apps.example.com", "NOERROR"),
        ("a.b.apps.example.com", "NOERROR"),
        ("ns1.apps.example.com", "NOERROR"),
        ("nope.apps.example.com", "NXDOMAIN"),
    ] {
        assert_eq!(status(name), want, "{name}");
    }
}
