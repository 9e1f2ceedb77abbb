//! Learning routes from a real `nats-server`: registration latency, replacement, expiry,
//! NATS outages and garbage on the bus.

use std::time::{Duration, Instant};

use grouter_tests::inproc::{publish, registration};
use grouter_tests::{NatsServer, Node, wait_until};
use serde_json::{Value, json};

const SEC: Duration = Duration::from_secs(1);

/// Publish a probe route until the node shows it: from then on its subscriptions are live.
async fn until_subscribed(node: &Node, nats: &async_nats::Client) {
    let probe = registration("10.9.9.9", 1, "probe.internal", "probe");
    wait_until(10 * SEC, "the node to learn a probe route", || async {
        publish(nats, "router.register", &probe.clone()).await;
        node.route("probe.internal", "").await.map(|_| ())
    })
    .await;
    publish(nats, "router.unregister", &probe).await;
    wait_until(5 * SEC, "the probe to go", || async {
        node.route("probe.internal", "")
            .await
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn register_is_visible_within_100ms_then_replaced_and_unregistered() {
    let nats = NatsServer::start();
    let node = Node::builder("lon-1", "lon")
        .nats(&nats.url())
        .start()
        .await;
    let bus = nats.client().await;
    until_subscribed(&node, &bus).await;

    let started = Instant::now();
    publish(
        &bus,
        "router.register",
        &registration("10.0.0.1", 61001, "shop.apps.example.com/", "app-a"),
    )
    .await;
    let route = wait_until(SEC, "the route", || node.route("shop.apps.example.com", "")).await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(100), "visible after {took:?}");
    assert_eq!(route["app_id"], "app-a");
    assert_eq!(route["sites"][0]["site"], "lon");
    assert_eq!(route["sites"][0]["local"], true);
    assert_eq!(route["sites"][0]["endpoints"], 1);
    assert_eq!(route["sites"][0]["nodes"], json!(["lon-1"]));

    // A second endpoint, then the first one re-registered with a changed field (its app).
    publish(
        &bus,
        "router.register",
        &registration("10.0.0.2", 61001, "shop.apps.example.com", "app-b"),
    )
    .await;
    publish(
        &bus,
        "router.register",
        &registration("10.0.0.1", 61001, "SHOP.apps.example.com", "app-b"),
    )
    .await;
    wait_until(SEC, "both endpoints, both of app-b", || async {
        let r = node.route("shop.apps.example.com", "").await?;
        (r["app_id"] == "app-b" && r["sites"][0]["endpoints"] == 2).then_some(())
    })
    .await;

    // Unregister both: the route is gone.
    for host in ["10.0.0.1", "10.0.0.2"] {
        publish(
            &bus,
            "router.unregister",
            &json!({"host": host, "port": 61001, "uris": ["shop.apps.example.com"]}),
        )
        .await;
    }
    wait_until(SEC, "the route to go", || async {
        node.route("shop.apps.example.com", "")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    let status = node.json("/v1/status").await;
    assert_eq!(status["routes"], 0);
    assert_eq!(status["node_id"], "lon-1");
    assert_eq!(status["sync"], "in_sync");
}

#[tokio::test]
async fn stale_endpoints_are_pruned_and_tls_endpoints_after_their_own_threshold() {
    let nats = NatsServer::start();
    let node = Node::builder("lon-1", "lon")
        .nats(&nats.url())
        .expiry(2, 1)
        .nats_option("tls_stale_threshold_secs = 5")
        .start()
        .await;
    let bus = nats.client().await;
    until_subscribed(&node, &bus).await;

    publish(
        &bus,
        "router.register",
        &registration("10.0.0.1", 8080, "plain.example.com", "p"),
    )
    .await;
    publish(
        &bus,
        "router.register",
        &json!({"host": "10.0.0.1", "tls_port": 8443,
        "server_cert_domain_san": "i-1", "uris": ["tls.example.com"], "app": "t"}),
    )
    .await;
    let registered = Instant::now();
    wait_until(SEC, "both routes", || async {
        let p = node.route("plain.example.com", "").await;
        let t = node.route("tls.example.com", "").await;
        (p.is_some() && t.is_some()).then_some(())
    })
    .await;

    wait_until(6 * SEC, "the plain endpoint to be pruned", || async {
        node.route("plain.example.com", "")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    let after = registered.elapsed();
    // Threshold 2 s, sweeps every 1 s: gone after 2 to 3 sweeps (plus scheduling slack).
    assert!(after >= 2 * SEC, "pruned too early, after {after:?}");
    assert!(
        after < Duration::from_millis(3500),
        "pruned too late, after {after:?}"
    );
    assert!(
        node.route("tls.example.com", "").await.is_some(),
        "tls endpoints outlive the plain threshold"
    );
    // gorouter keeps a tls_port endpoint until a dial to it fails; GRouter never dials
    // backends, so a dead cell's TLS routes go after nats.tls_stale_threshold_secs.
    wait_until(8 * SEC, "the tls endpoint to be pruned", || async {
        node.route("tls.example.com", "")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    let after = registered.elapsed();
    assert!(
        after >= 5 * SEC,
        "tls endpoint pruned too early, after {after:?}"
    );
    assert!(node.metric("grouter_endpoints_pruned_total").await >= Some(2.0));
}

#[tokio::test]
async fn nats_outage_suspends_pruning_and_reconnect_greets_and_refreshes() {
    let mut nats = NatsServer::start();
    let node = Node::builder("lon-1", "lon")
        .nats(&nats.url())
        .expiry(2, 1)
        .start()
        .await;
    let bus = nats.client().await;
    until_subscribed(&node, &bus).await;
    publish(
        &bus,
        "router.register",
        &registration("10.0.0.1", 8080, "kept.example.com", "k"),
    )
    .await;
    wait_until(SEC, "the route", || node.route("kept.example.com", "")).await;
    drop(bus);

    nats.stop();
    wait_until(10 * SEC, "the node to notice the outage", || async {
        (node.metric("grouter_nats_connected").await == Some(0.0)).then_some(())
    })
    .await;
    // The scenario itself: NATS stays down for more than twice the stale threshold.
    tokio::time::sleep(5 * SEC).await;
    assert!(
        node.route("kept.example.com", "").await.is_some(),
        "nothing is pruned while NATS is down"
    );

    nats.restart();
    let bus = nats.client().await;
    let mut greets = bus.subscribe("router.greet").await.expect("subscribe");
    bus.flush().await.expect("flush");
    // The node greets on reconnect and keeps greeting (every second) until a router answers;
    // this test plays the router and answers each greet.
    let first = tokio::time::timeout(10 * SEC, futures::StreamExt::next(&mut greets))
        .await
        .expect("a router.greet after the reconnect")
        .expect("subscription open");
    let reconnected = Instant::now();
    let responder = {
        let bus = bus.clone();
        let start = json!({"id": "0-test", "hosts": ["127.0.0.1"],
            "minimumRegisterIntervalInSeconds": 20, "pruneThresholdInSeconds": 120});
        tokio::spawn(async move {
            let mut next = Some(first);
            while let Some(greet) = next {
                let reply = greet.reply.expect("router.greet is a request");
                bus.publish(reply, start.to_string().into())
                    .await
                    .expect("reply");
                bus.flush().await.expect("flush");
                next = futures::StreamExt::next(&mut greets).await;
            }
        })
    };
    wait_until(5 * SEC, "the greet reply to be counted", || async {
        (node.metric("grouter_nats_greet_replies_total").await >= Some(1.0)).then_some(())
    })
    .await;
    assert!(node.metric("grouter_nats_connects_total").await >= Some(2.0));
    responder.abort();

    // Refreshed on reconnect: still there a second later (threshold 2 s), gone once a full
    // threshold has passed without a registration.
    tokio::time::sleep(SEC.saturating_sub(reconnected.elapsed())).await;
    assert!(
        node.route("kept.example.com", "").await.is_some(),
        "endpoints are refreshed on reconnect, not pruned at once"
    );
    wait_until(5 * SEC, "the unrefreshed route to be pruned", || async {
        node.route("kept.example.com", "")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        reconnected.elapsed() >= 2 * SEC,
        "pruned before a full threshold after reconnect"
    );
}

#[tokio::test]
async fn garbage_on_the_bus_is_counted_by_reason_and_memory_stays_flat() {
    let nats = NatsServer::start();
    let mut node = Node::builder("lon-1", "lon")
        .nats(&nats.url())
        .start()
        .await;
    let bus = nats.client().await;
    until_subscribed(&node, &bus).await;

    let oversized = format!(
        r#"{{"host":"h","port":1,"uris":["a.com"],"pad":"{}"}}"#,
        "x".repeat(80_000)
    );
    let kinds: [(&str, String); 6] = [
        ("bad_json", "\u{0}\u{1}not json at all".to_string()),
        (
            "truncated",
            r#"{"host":"10.0.0.1","port":80,"uris":["a.c"#.to_string(),
        ),
        (
            "wrong_type",
            r#"{"host":"10.0.0.1","port":"eighty","uris":["a.com"]}"#.to_string(),
        ),
        (
            "missing_uris",
            r#"{"host":"10.0.0.1","port":80}"#.to_string(),
        ),
        (
            "route_service_not_https",
            r#"{"host":"h","port":1,"uris":["a.com"],"route_service_url":"http://x"}"#.to_string(),
        ),
        ("oversized", oversized),
    ];
    let send = |from: usize, count: usize| {
        let bus = bus.clone();
        let kinds = kinds.clone();
        async move {
            for i in from..from + count {
                let (_, payload) = &kinds[i % kinds.len()];
                let subject = if i % 2 == 0 {
                    "router.register"
                } else {
                    "router.unregister"
                };
                bus.publish(subject, payload.clone().into())
                    .await
                    .expect("publish");
            }
            bus.flush().await.expect("flush");
        }
    };
    let invalid = || async {
        node.metric("grouter_nats_invalid_messages_total")
            .await
            .unwrap_or(0.0)
    };
    // Sent in batches, each counted before the next goes: what is measured is what the
    // node keeps, not how many 80 kB messages happened to queue up at once.
    const BATCH: usize = 500;
    let flood = |from: usize, count: usize| {
        let (send, invalid) = (&send, &invalid);
        async move {
            for start in (from..from + count).step_by(BATCH) {
                send(start, BATCH).await;
                let want = (start + BATCH) as f64;
                wait_until(
                    20 * SEC,
                    "a batch of invalid messages to be counted",
                    || async { (invalid().await >= want).then_some(()) },
                )
                .await;
            }
        }
    };

    // Flat means a plateau: the first 10,000 let the allocator settle into its working
    // set (it keeps freed pages for reuse); 10,000 more must then add next to nothing,
    // where a leak would keep growing at the same rate.
    const ROUND: usize = 10_000;
    flood(0, ROUND).await;
    let rss_before = node.rss_kib();
    flood(ROUND, ROUND).await;
    let rss_after = node.rss_kib();
    eprintln!("rss after the first {ROUND}: {rss_before} KiB, after {ROUND} more: {rss_after} KiB");
    assert_eq!(
        invalid().await,
        (2 * ROUND) as f64,
        "every message counted exactly once"
    );
    for (reason, _) in &kinds {
        let n = node
            .metric_labelled(
                "grouter_nats_invalid_messages_total",
                &format!("reason=\"{reason}\""),
            )
            .await
            .unwrap_or(0.0);
        // 20,000 messages cycled over 6 kinds (an unregister needs no https check, so
        // route_service_not_https counts only the register half of its share).
        assert!(n > 0.0, "{reason} counted: {n}");
    }
    assert!(
        rss_after < rss_before + 8 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    // Logged once per reason, not once per message.
    assert!(node.log.count("dropping invalid nats message") <= kinds.len());
    // Still serving: a valid registration after the flood is learned.
    publish(
        &bus,
        "router.register",
        &registration("10.0.0.7", 7, "after.example.com", "a"),
    )
    .await;
    wait_until(SEC, "a valid route after the garbage", || {
        node.route("after.example.com", "")
    })
    .await;
    assert!(node.is_running());
    assert_eq!(node.terminate(), Some(0), "SIGTERM drains and exits 0");
}

#[tokio::test]
async fn admin_api_requires_the_token_and_filters_routes() {
    let nats = NatsServer::start();
    let node = Node::builder("lon-1", "lon")
        .nats(&nats.url())
        .start()
        .await;
    let bus = nats.client().await;
    until_subscribed(&node, &bus).await;
    publish(
        &bus,
        "router.register",
        &registration("10.0.0.1", 1, "a.example.com", "a"),
    )
    .await;
    publish(
        &bus,
        "router.register",
        &registration("10.0.0.1", 2, "b.example.com/api", "b"),
    )
    .await;
    wait_until(SEC, "both routes", || async {
        (node.routes("").await.len() == 2).then_some(())
    })
    .await;

    let http = reqwest::Client::new();
    let base = format!("http://{}", node.admin_addr());
    for auth in [None, Some("Bearer wrong"), Some("Basic abc")] {
        let mut req = http.get(format!("{base}/v1/routes"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.expect("request");
        assert_eq!(resp.status(), 401, "auth {auth:?}");
        assert!(
            !resp
                .text()
                .await
                .unwrap_or_default()
                .contains("a.example.com")
        );
    }
    // /healthz and /metrics need no token.
    let health: Value = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, json!({"status": "ok", "sync": "in_sync"}));
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        grouter_tests::parse_metric(&metrics, "grouter_local_routes"),
        Some(2.0)
    );
    assert_eq!(
        grouter_tests::parse_metric(&metrics, "grouter_nats_connected"),
        Some(1.0)
    );

    let only_b = node.routes("?host=B.example.com").await;
    assert_eq!(only_b.len(), 1);
    assert_eq!(only_b[0]["path"], "/api");
    assert_eq!(only_b[0]["app_id"], "b");
    assert_eq!(node.routes("?site=lon").await.len(), 2);
    assert!(node.routes("?site=nyc").await.is_empty());
    let (status, _) = node.get("/v1/nothing").await.unwrap();
    assert_eq!(status, 404);
}

/// Every route of the node's own site, as `/v1/routes` lists them.
async fn local_hosts(node: &Node) -> std::collections::HashSet<String> {
    node.routes("?site=lon")
        .await
        .iter()
        .filter_map(|r| r["host"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn register_and_unregister_stay_in_order_under_a_flood() {
    // gorouter reads both subjects from one subscription, in order (mbus/subscriber.go);
    // two subscriptions merged by a reader reorder them under load, and a route that was
    // withdrawn right after it was registered stays routed until it is pruned.
    const ROUTES: usize = 10_000;
    const KEPT: usize = 500;
    let nats = NatsServer::start();
    let node = Node::builder("lon-1", "lon")
        .nats(&nats.url())
        .start()
        .await;
    let bus = nats.client().await;
    until_subscribed(&node, &bus).await;

    // Each withdrawn route's register and unregister have heartbeats of other routes in
    // between, as on a real bus: registers far outnumber unregisters. The node is stalled
    // while they are published, so that it finds all of them queued at once.
    node.freeze(true);
    for i in 0..ROUTES {
        let uri = format!("r{i}.flood.example.com");
        let reg = registration("10.1.0.1", 61000, &uri, "flood");
        bus.publish("router.register", reg.to_string().into())
            .await
            .unwrap();
        for j in 0..5 {
            let kept = format!("k{}.flood.example.com", (i * 5 + j) % KEPT);
            let beat = registration("10.1.0.2", 61000, &kept, "kept");
            bus.publish("router.register", beat.to_string().into())
                .await
                .unwrap();
        }
        let unreg = json!({"host": "10.1.0.1", "port": 61000, "uris": [uri]});
        bus.publish("router.unregister", unreg.to_string().into())
            .await
            .unwrap();
    }
    // Published last, so learned last: once it is in, everything before it was applied.
    publish(
        &bus,
        "router.register",
        &registration("10.1.0.3", 61000, "sentinel.flood.example.com", "s"),
    )
    .await;
    node.freeze(false);
    wait_until(60 * SEC, "the sentinel route", || {
        node.route("sentinel.flood.example.com", "")
    })
    .await;
    let hosts = local_hosts(&node).await;
    let withdrawn: Vec<_> = hosts.iter().filter(|h| h.starts_with('r')).collect();
    assert!(
        withdrawn.is_empty(),
        "{} withdrawn routes still routed, e.g. {:?}",
        withdrawn.len(),
        withdrawn.first()
    );
    let kept = hosts.iter().filter(|h| h.starts_with('k')).count();
    assert_eq!(kept, KEPT, "every kept route is there");
    assert_eq!(
        node.metric("grouter_nats_slow_consumer_events_total").await,
        Some(0.0)
    );
}

#[tokio::test]
async fn a_burst_of_200000_registrations_all_reach_the_table() {
    // gorouter loses such a burst to the NATS client's pending limit (gorouter#166); after a
    // NATS reconnect every emitter re-sends at once, so GRouter must not.
    const BURST: usize = 200_000;
    let nats = NatsServer::start();
    let node = Node::builder("lon-1", "lon")
        .nats(&nats.url())
        .start()
        .await;
    let bus = nats.client().await;
    until_subscribed(&node, &bus).await;

    // Built first, so that the burst is published as fast as the client can write.
    let payloads: Vec<bytes::Bytes> = (0..BURST)
        .map(|i| {
            let reg = registration(
                &format!("10.2.{}.{}", i / 250 % 250, i % 250),
                61000 + (i / 62_500) as u16,
                &format!("b{i}.burst.example.com"),
                &format!("app-{}", i % 5000),
            );
            reg.to_string().into()
        })
        .collect();
    let started = Instant::now();
    for p in payloads {
        bus.publish("router.register", p).await.unwrap();
    }
    bus.flush().await.unwrap();
    let published = started.elapsed();
    wait_until(120 * SEC, "all 200,000 endpoints in the table", || async {
        let n = node.metric("grouter_local_endpoints").await?;
        (n >= BURST as f64).then_some(())
    })
    .await;
    let all_in = started.elapsed();
    assert_eq!(
        node.metric("grouter_nats_slow_consumer_events_total").await,
        Some(0.0),
        "nothing was dropped"
    );
    assert_eq!(node.json("/v1/status").await["routes"], BURST);
    eprintln!("burst of {BURST}: published in {published:?}, all in the table after {all_in:?}");
}
