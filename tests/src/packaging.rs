//! The deploy files under `deploy/systemd`, `deploy/container` and `deploy/monitoring`: the
//! systemd unit's hardening (`systemd-analyze security` exposure ≤ 2.0) and validity, the
//! sample config, a lint of the Dockerfile (no image can be pulled here), the alert rules
//! (`promtool check rules` and `promtool test rules`), the Grafana dashboard's queries, and
//! that every metric the rules and the dashboard use is one a running mesh exports.
//!
//! Must never: skip when a program is missing (it fails naming the install command), or
//! touch the system's systemd (everything is `--offline` or a file in a temp dir).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use grouter_tests::{AppCerts, MeshCa, NatsServer, Node, find_program, grouter_bin, wait_until};

/// The repository's root (this crate is `tests/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Run `cmd`, returning (success, stdout + stderr).
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn systemd_analyze() -> PathBuf {
    find_program("systemd-analyze", "apt-get install -y systemd")
}

fn promtool() -> PathBuf {
    find_program("promtool", "apt-get install -y prometheus")
}

#[test]
fn systemd_unit_exposure_is_at_most_2() {
    let unit = repo().join("deploy/systemd/grouter.service");
    let (ok, text) = run(Command::new(systemd_analyze())
        // --threshold is in tenths: the exit status is non-zero above an exposure of 2.0.
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&unit));
    let exposure: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for grouter.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure in:\n{text}"));
    assert!(ok && exposure <= 2.0, "exposure {exposure} > 2.0:\n{text}");
}

#[test]
fn systemd_unit_verifies_runs_as_its_own_user_and_keeps_state_in_state_directory() {
    let text = read("deploy/systemd/grouter.service");
    for line in [
        "User=grouter",
        "StateDirectory=grouter",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "ExecStart=/usr/local/bin/grouter run --config /etc/grouter/grouter.toml",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing");
    }
    // The node does not reload its config on SIGHUP: a reload command would lie.
    assert!(
        !text.lines().any(|l| l.starts_with("ExecReload")),
        "ExecReload without a reload"
    );
    // `verify` needs the binary to exist: point the unit at the one just built.
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = dir.path().join("grouter.service");
    let bin = grouter_bin();
    std::fs::write(
        &unit,
        text.replace("/usr/local/bin/grouter", &bin.display().to_string()),
    )
    .expect("write unit");
    let (ok, out) = run(Command::new(systemd_analyze()).arg("verify").arg(&unit));
    assert!(
        ok && out.trim().is_empty(),
        "systemd-analyze verify:\n{out}"
    );
}

#[test]
fn sample_config_for_the_unit_passes_grouter_check_with_state_in_var_lib() {
    let config = repo().join("deploy/systemd/grouter.toml");
    assert!(
        read("deploy/systemd/grouter.toml")
            .lines()
            .any(|l| l.trim() == r#"state_dir = "/var/lib/grouter""#),
        "state_dir must be the unit's StateDirectory"
    );
    let (ok, out) = run(Command::new(grouter_bin())
        .arg("check")
        .arg("--config")
        .arg(&config));
    assert!(ok, "grouter check:\n{out}");
}

/// One Dockerfile instruction: keyword (upper case) and its arguments, continuation lines
/// joined.
fn dockerfile(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let t = line.trim();
        if pending.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(t);
                let (kw, args) = pending
                    .split_once(char::is_whitespace)
                    .unwrap_or((&pending, ""));
                out.push((kw.to_ascii_uppercase(), args.trim().to_string()));
                pending.clear();
            }
        }
    }
    out
}

#[test]
fn dockerfile_is_multi_stage_pinned_non_root_with_a_healthz_check() {
    let all = dockerfile(&read("deploy/container/Dockerfile"));
    let froms: Vec<usize> = (0..all.len()).filter(|&i| all[i].0 == "FROM").collect();
    assert!(froms.len() >= 2, "not multi-stage: {froms:?}");
    let builder_stages: Vec<String> = froms[..froms.len() - 1]
        .iter()
        .filter_map(|&i| all[i].1.split_whitespace().nth(2).map(str::to_string))
        .collect();
    let last = froms[froms.len() - 1];
    let image = all[last].1.split_whitespace().next().unwrap_or_default();
    let pinned = image.contains('@')
        || image
            .rsplit_once(':')
            .is_some_and(|(_, tag)| !tag.is_empty() && tag != "latest" && !tag.contains('/'));
    assert!(pinned, "final stage {image} has no explicit tag or digest");
    for &i in &froms {
        let image = all[i].1.split_whitespace().next().unwrap_or_default();
        assert!(
            image.contains(':') || image.contains('@'),
            "{image}: every stage is pinned"
        );
        assert!(!image.ends_with(":latest"), "{image}: latest");
    }
    let final_stage = &all[last + 1..];
    // Only the binary and the CA certificates come from the build stage.
    let copies: Vec<&String> = final_stage
        .iter()
        .filter(|(k, _)| k == "COPY" || k == "ADD")
        .map(|(_, a)| a)
        .collect();
    assert_eq!(copies.len(), 2, "final stage copies: {copies:?}");
    for c in &copies {
        let from = c
            .split_whitespace()
            .find_map(|w| w.strip_prefix("--from="))
            .unwrap_or_else(|| panic!("{c}: not from a build stage"));
        assert!(
            builder_stages.iter().any(|s| s == from),
            "{c}: unknown stage"
        );
    }
    assert!(
        copies[0].contains("/usr/local/bin/grouter"),
        "{}",
        copies[0]
    );
    assert!(copies[1].contains("ca-certificates.crt"), "{}", copies[1]);
    let user = final_stage
        .iter()
        .rev()
        .find(|(k, _)| k == "USER")
        .map(|(_, a)| a.as_str())
        .expect("USER in the final stage");
    let name = user.split(':').next().unwrap_or_default();
    assert!(!["", "root", "0"].contains(&name), "USER {user} is root");
    let health = final_stage
        .iter()
        .find(|(k, _)| k == "HEALTHCHECK")
        .map(|(_, a)| a.as_str())
        .expect("HEALTHCHECK in the final stage");
    assert!(
        health.contains("/healthz"),
        "HEALTHCHECK does not ask /healthz: {health}"
    );
    let entry = final_stage
        .iter()
        .find(|(k, _)| k == "ENTRYPOINT")
        .map(|(_, a)| a.as_str())
        .expect("ENTRYPOINT");
    assert_eq!(
        entry,
        r#"["grouter", "run", "--config", "/etc/grouter/grouter.toml"]"#
    );
    assert!(final_stage.iter().any(|(k, _)| k == "EXPOSE"), "EXPOSE");
}

/// The HEALTHCHECK's `CMD [...]` as argv.
fn healthcheck_argv() -> Vec<String> {
    let all = dockerfile(&read("deploy/container/Dockerfile"));
    let health = all
        .iter()
        .rev()
        .find(|(k, _)| k == "HEALTHCHECK")
        .map(|(_, a)| a.clone())
        .expect("HEALTHCHECK");
    let json = health.split_once("CMD").expect("CMD").1.trim();
    serde_json::from_str(json).unwrap_or_else(|e| panic!("CMD is not an exec array ({e}): {json}"))
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = repo().join("deploy/monitoring");
    let (ok, out) = run(Command::new(promtool()).current_dir(&dir).args([
        "check",
        "rules",
        "grouter.rules.yml",
    ]));
    assert!(
        ok && out.contains("SUCCESS: 7 rules found"),
        "promtool check rules:\n{out}"
    );
    let (ok, out) = run(Command::new(promtool()).current_dir(&dir).args([
        "test",
        "rules",
        "grouter.rules.test.yml",
    ]));
    assert!(ok, "promtool test rules:\n{out}");
    // Every alert is exercised, firing and silent.
    let tests = read("deploy/monitoring/grouter.rules.test.yml");
    for alert in alert_names() {
        let evals = tests.matches(&format!("alertname: {alert}\n")).count();
        assert!(evals >= 2, "{alert}: {evals} evaluations in the rule test");
    }
}

fn alert_names() -> Vec<String> {
    read("deploy/monitoring/grouter.rules.yml")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: ").map(str::to_string))
        .collect()
}

/// Every `expr` of the Grafana dashboard's panels, `$site` as Grafana would expand "All".
fn dashboard_queries() -> Vec<String> {
    let dash: serde_json::Value =
        serde_json::from_str(&read("deploy/monitoring/grafana-dashboard.json")).expect("JSON");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().expect("targets") {
            out.push(t["expr"].as_str().expect("expr").replace("$site", ".*"));
        }
    }
    out
}

#[test]
fn dashboard_queries_are_valid_promql() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 10, "{queries:?}");
    // promtool parses recording rules; a JSON document is YAML.
    let rules = serde_json::json!({"groups": [{"name": "dashboard", "rules":
        queries.iter().enumerate().map(|(i, q)| serde_json::json!({"record": format!("dashboard:q{i}"), "expr": q})).collect::<Vec<_>>()}]});
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("dashboard.rules.yml");
    std::fs::write(&file, rules.to_string()).expect("write");
    let (ok, out) = run(Command::new(promtool()).args(["check", "rules"]).arg(&file));
    assert!(ok, "dashboard queries:\n{out}");
}

/// Metric names (`grouter_*`, `up`) used by a PromQL text.
fn metric_names(promql: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = promql.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while i < bytes.len() {
        if word(bytes[i]) && (i == 0 || !word(bytes[i - 1])) {
            let start = i;
            while i < bytes.len() && word(bytes[i]) {
                i += 1;
            }
            let w = &promql[start..i];
            if w.starts_with("grouter_") {
                names.insert(w.to_string());
            }
            if w == "up" && promql[i..].starts_with('{') {
                names.insert(w.to_string());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Sample names in a Prometheus text exposition (`name{...} value`).
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_of_the_rules_and_the_dashboard_is_exported_by_a_meshed_node() {
    let mut used = BTreeSet::new();
    let rules = read("deploy/monitoring/grouter.rules.yml");
    let uncommented: Vec<&str> = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    used.extend(metric_names(&uncommented.join("\n")));
    for q in dashboard_queries() {
        used.extend(metric_names(&q));
    }
    // Prometheus's own scrape series, not the node's.
    assert!(used.remove("up"), "site down uses up");
    for needed in [
        "grouter_sync_state",
        "grouter_gorouters_healthy",
        "grouter_certificate_not_after_seconds",
        "grouter_mesh_deltas_rejected_total",
        "grouter_nats_connected",
        "grouter_mesh_peer_rtt_seconds",
        "grouter_serving",
        "grouter_proxy_responses_total",
        "grouter_proxy_errors_total",
    ] {
        assert!(used.contains(needed), "{needed} is used nowhere");
    }

    // Two sites with HTTPS (so a certificate is served) and a mesh (so peers have an RTT).
    let ca = MeshCa::new();
    let certs = AppCerts::new();
    certs.issue("default", "default.apps.example.com");
    certs.issue("shop.apps.example.com", "shop.apps.example.com");
    let dir = certs.dir.path();
    let (lon_bus, nyc_bus) = (NatsServer::start(), NatsServer::start());
    let lon = Node::builder("lon-1", "lon")
        .nats(&lon_bus.url())
        .mesh(&ca, &[])
        .https(dir, &dir.join("default.pem"), &dir.join("default.key"))
        .start()
        .await;
    let nyc = Node::builder("nyc-1", "nyc")
        .nats(&nyc_bus.url())
        .mesh(&ca, &[lon.mesh_addr()])
        .start()
        .await;
    // A route at lon, so its proxy answers requests (the responses counters have samples).
    let bus = lon_bus.client().await;
    let host = "shop.apps.example.com";
    let msg =
        serde_json::json!({"host": "10.0.0.1", "port": 61000, "uris": [host], "app": "guid-shop"});
    lon.register_until_routed(&bus, &msg, host).await;
    let http = reqwest::Client::new();
    let text = wait_until(Duration::from_secs(20), "lon's RTT to nyc and its certificate in /metrics", || async {
        let _ = http
            .get(format!("http://{}/", lon.http_addr()))
            .header("host", host)
            .send()
            .await;
        let (status, text) = lon.get("/metrics").await.ok()?;
        (status == 200
            && text.contains(r#"grouter_proxy_responses_total{answered_by="lon"}"#)
            && text.contains(r#"grouter_mesh_peer_rtt_seconds{peer="nyc-1",peer_site="nyc"}"#)
            && text.contains(r#"grouter_certificate_not_after_seconds{host="shop.apps.example.com",source="file"}"#)
            && text.contains(r#"grouter_certificate_not_after_seconds{host="lon-1",source="mesh"}"#)
            && text.contains(r#"grouter_sync_state{state="in_sync"} 1"#))
        .then_some(text)
    })
    .await;
    let have = exported(&text);
    let missing: Vec<&String> = used.difference(&have).collect();
    assert!(
        missing.is_empty(),
        "used but not exported: {missing:?}\n{text}"
    );
    // A healthy node: serving, its GoRouter healthy, NATS connected.
    for line in [
        "grouter_serving 1",
        "grouter_gorouters_healthy 1",
        "grouter_nats_connected 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }

    // The container's HEALTHCHECK command, pointed at this node's admin listener, passes;
    // against a port nobody listens on, it fails.
    let argv = healthcheck_argv();
    let admin = lon.admin_addr();
    let at = |port: u16| -> bool {
        let args: Vec<String> = argv[1..]
            .iter()
            .map(|a| a.replace("127.0.0.1/9090", &format!("{}/{port}", admin.ip())))
            .collect();
        Command::new(&argv[0])
            .args(&args)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    assert!(at(admin.port()), "HEALTHCHECK fails against a healthy node");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    assert!(!at(closed), "HEALTHCHECK passes with nothing listening");
    drop(nyc);
}
