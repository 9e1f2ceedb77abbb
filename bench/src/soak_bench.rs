//! Issue 17's soak: one `grouter` node (a process of its own, with a GoRouter stand-in and a
//! real `nats-server`) holding a crowd of client connections for minutes: keep-alive, idle,
//! slow, slowloris and slow-read clients ([`grouter_tests::crowd`], which the integration
//! test `soak::` runs at a small scale). Prints a row per sample (the node's RSS and
//! descriptors, requests, cuts, `/healthz`), then the summary.

use std::time::Duration;

use anyhow::bail;
use grouter::limits::{DEFAULT_IDLE_TIMEOUT, DEFAULT_REQUEST_HEADER_TIMEOUT, derive_limits};
use grouter_tests::crowd::{Crowd, Sample};
use grouter_tests::inproc::registration;
use grouter_tests::{NatsServer, Node};

/// The host the crowd asks for.
const HOST: &str = "soak.apps.example.com";

/// `Bench::Soak`.
pub async fn soak(
    connections: usize,
    duration: Duration,
    sample: Option<Duration>,
) -> anyhow::Result<()> {
    // Raise this process's soft open-file limit to the hard one; the node inherits it (and
    // raises its own the same way).
    let nofile = grouter::limits::open_file_limit();
    // The node's proxy limit as it would derive it, which assumes every client connection
    // may hold a GoRouter connection at once. Where that is below the crowd, the limit is
    // set to the crowd and a twentieth more, and the run shows what the node really held.
    let derived = derive_limits(nofile, None, None, None);
    let proxy_limit = (derived.proxy < connections).then(|| connections + connections / 20);
    println!(
        "open-file limit {nofile}: the node's derived limits are proxy {}, admin {}, mesh {}; {}",
        derived.proxy,
        derived.admin,
        derived.mesh,
        match proxy_limit {
            Some(n) =>
                format!("below {connections} client connections: proxy.max_connections = {n}"),
            None => "the defaults hold the crowd".to_string(),
        }
    );
    let bus = NatsServer::start();
    let mut node = Node::builder("soak-1", "lon")
        .nats(&bus.url())
        // A line per request would be most of the node's work, and fill this process's
        // memory with the node's output.
        .log_option("access_log = false");
    if let Some(n) = proxy_limit {
        node = node.proxy_option(&format!("max_connections = {n}"));
    }
    let node = node.start().await;
    let reg = registration("10.0.0.1", 61000, HOST, "soak");
    node.register_until_routed(&bus.client().await, &reg, HOST)
        .await;
    // Re-registered as Cloud Foundry's route emitter does, or the route goes stale (120 s)
    // in the middle of the soak.
    let _emitter = bus.emit_every(&reg, Duration::from_secs(20)).await;

    let mut crowd = Crowd::new(
        node.http_addr(),
        node.admin_addr(),
        node.pid(),
        HOST,
        connections,
        duration,
        (DEFAULT_REQUEST_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT),
    );
    if let Some(s) = sample {
        crowd.sample = s;
    }
    if nofile < crowd.fds_needed() {
        bail!(
            "the crowd needs {} descriptors and the open-file limit is {nofile}: raise it (`ulimit -Hn`)",
            crowd.fds_needed()
        );
    }
    println!(
        "node pid {}, http {}, admin {}; {:?}; pauses {:?}..{:?}; warm-up {} s",
        node.pid(),
        node.http_addr(),
        node.admin_addr(),
        crowd.mix,
        crowd.pause.0,
        crowd.pause.1,
        crowd.warmup.as_secs()
    );
    println!("{}", Sample::header());
    let report = crowd.run(|s| println!("{}", s.row())).await;
    println!("\n{}", report.summary());
    let (warm, end) = report.rss_warm_and_end();
    let grew_mib = (end as f64 - warm as f64) / 1024.0;
    let cut_all = [&report.slowloris, &report.slow_read]
        .iter()
        .all(|c| !c.is_empty() && c.iter().all(Option::is_some));
    let passed = grew_mib < 50.0
        && report.failed == 0
        && report.closed_after.is_some()
        && report.healthz_worst().1 == 0
        && cut_all;
    println!(
        "{}: RSS growth after warm-up {grew_mib:+.1} MiB (< 50), {} failed requests, fds {}, \
         /healthz {} unanswered, attackers {}",
        if passed { "PASS" } else { "FAIL" },
        report.failed,
        if report.closed_after.is_some() {
            "back to baseline"
        } else {
            "NOT back to baseline"
        },
        report.healthz_worst().1,
        if cut_all { "all cut" } else { "NOT all cut" },
    );
    if !passed {
        bail!("the soak failed");
    }
    Ok(())
}
