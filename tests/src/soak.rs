//! The soak of issue 17 in its short form: the crowd of `grouter-bench soak`
//! ([`grouter_tests::crowd`]) at a thousand connections for twenty seconds, against one
//! node with short timeouts so that its attackers are cut several times over. What a user
//! of the node would notice: no well-behaved client's request fails, slowloris and
//! slow-read clients are cut within the documented timeouts (docs/PROXY.md, "Timeouts"),
//! `/healthz` answers throughout, and the node's descriptors come back once the crowd has
//! gone. And what the long soak found: idle clients give their GoRouter connections back.

use std::time::Duration;

use grouter_tests::crowd::{Crowd, HEALTHZ_TIMEOUT, get};
use grouter_tests::inproc::registration;
use grouter_tests::{NatsServer, Node, wait_until};
use tokio::net::TcpStream;

const SEC: Duration = Duration::from_secs(1);
const HOST: &str = "soak.apps.example.com";
const HEAD: Duration = Duration::from_secs(3);
const IDLE: Duration = Duration::from_secs(6);

/// How late after its timeout a cut may come: the fast path checks a head's and an idle
/// connection's time every quarter of the head timeout (`grouter::limits::check_period`),
/// and a loaded machine schedules the rest (the clients time the cuts by their own clock,
/// from when their runtime got to them).
const LATE: Duration = Duration::from_millis(HEAD.as_millis() as u64 / 4 + 2000);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_hold_and_attackers_are_cut_within_the_timeouts() {
    let connections = 1000;
    let bus = NatsServer::start();
    let node = Node::builder("soak-1", "lon")
        .nats(&bus.url())
        .proxy_option(&format!(
            "request_header_timeout_secs = {}\nidle_timeout_secs = {}",
            HEAD.as_secs(),
            IDLE.as_secs()
        ))
        // A line per request would be most of the node's work, and of this test's memory.
        .log_option("access_log = false")
        .start()
        .await;
    let reg = registration("10.0.0.1", 61000, HOST, "soak");
    node.register_until_routed(&bus.client().await, &reg, HOST)
        .await;

    let crowd = Crowd::new(
        node.http_addr(),
        node.admin_addr(),
        node.pid(),
        HOST,
        connections,
        Duration::from_secs(20),
        (HEAD, IDLE),
    );
    let nofile = grouter::limits::open_file_limit();
    assert!(
        nofile >= crowd.fds_needed(),
        "the crowd needs {} descriptors, the open-file limit is {nofile}: raise it (`ulimit -n`)",
        crowd.fds_needed()
    );
    let report = crowd.run(|_| {}).await;
    let summary = format!("{}\n{}", report.summary(), report.table());
    eprintln!("{summary}");

    assert!(
        report.ok > 1000,
        "the well-behaved clients were answered: {summary}"
    );
    assert_eq!(
        report.failed, 0,
        "no well-behaved client's request failed: {summary}"
    );
    assert!(
        report.peak_open >= connections * 95 / 100,
        "the node held (nearly) every connection at once: {summary}"
    );
    for (what, timeout, cuts) in [
        ("slowloris", HEAD, &report.slowloris),
        ("slow-read", IDLE, &report.slow_read),
        ("idle", IDLE, &report.idle),
    ] {
        assert!(!cuts.is_empty(), "some {what} clients were cut: {summary}");
        for cut in cuts {
            let cut = cut.unwrap_or_else(|| panic!("a {what} client was never cut: {summary}"));
            // Not before half the timeout either (the clients' clocks start late under load;
            // that no slow client is cut early is the failed-requests count's to say).
            assert!(
                cut >= timeout / 2 && cut <= timeout + LATE,
                "a {what} client was cut after {cut:?}, its timeout being {timeout:?}: {summary}"
            );
        }
    }
    let (slowest, unanswered) = report.healthz_worst();
    assert!(
        report.healthz.len() >= 15 && unanswered == 0,
        "/healthz answered 200 within {HEALTHZ_TIMEOUT:?} throughout (slowest {slowest:?}): {summary}"
    );
    assert!(
        report.closed_after.is_some(),
        "the node's descriptors came back to {} once the crowd left (still {}): {summary}",
        report.fds_before,
        report.fds_after
    );
}

/// What the soak found at 10,000 connections: a client connection on the fast path kept its
/// own GoRouter connection while idle, so the node needed two descriptors per client (and
/// the GoRouter as many connections as the node had clients). Idle for a tick, it now parks
/// that connection for any client connection to take.
#[tokio::test]
async fn idle_clients_give_their_gorouter_connections_back_for_others() {
    let idle_clients = 100;
    let bus = NatsServer::start();
    let node = Node::builder("soak-1", "lon")
        .nats(&bus.url())
        // A tick of a quarter of the head timeout: parked within a second.
        .proxy_option("request_header_timeout_secs = 2\nidle_timeout_secs = 60")
        .log_option("access_log = false")
        .env("RUST_LOG", "info,async_nats=warn,grouter::proxy::h1=debug")
        .start()
        .await;
    let reg = registration("10.0.0.1", 61000, HOST, "soak");
    node.register_until_routed(&bus.client().await, &reg, HOST)
        .await;
    let stub = node.stub.as_ref().expect("the node's own stand-in");
    let connect = || async { TcpStream::connect(node.http_addr()).await.expect("connect") };

    // A hundred clients ask once each, then say nothing.
    let mut idle = Vec::new();
    for _ in 0..idle_clients {
        let mut c = connect().await;
        assert_eq!(get(&mut c, HOST, "/").await.expect("answer"), 200);
        idle.push(c);
    }
    wait_until(
        10 * SEC,
        "the idle clients to park their GoRouter connections",
        || async { (node.log.count("gorouter connection parked") >= idle_clients).then_some(()) },
    )
    .await;

    // A hundred other clients, all at once: the GoRouter sees no new connection for them.
    let accepted = stub.accepted();
    let others = futures::future::join_all((0..idle_clients).map(|_| async {
        let mut c = connect().await;
        let status = get(&mut c, HOST, "/").await.expect("answer");
        (c, status)
    }))
    .await;
    assert!(others.iter().all(|(_, s)| *s == 200));
    let opened = stub.accepted() - accepted;
    assert!(
        opened <= 5,
        "{opened} new GoRouter connections for {idle_clients} new clients, with {idle_clients} parked"
    );
    // The idle clients are served again when they come back.
    for c in &mut idle {
        assert_eq!(get(c, HOST, "/").await.expect("answer"), 200);
    }
}
