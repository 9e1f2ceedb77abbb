//! Isolation segments end to end (issue 12, deliverable 2): a node with a shared GoRouter
//! and a segment's GoRouter (stand-ins that say which they are in `X-Stub-Site`), routes
//! registered over real NATS with and without `isolation_segment`, requested over
//! HTTP/1.1 (the fast path) and HTTP/2 (the general path).

use std::time::Duration;

use grouter_tests::gorouter::GoRouterStub;
use grouter_tests::{NatsServer, Node};
use serde_json::json;

const SEC: Duration = Duration::from_secs(1);

/// Which stand-in answered `host`, and the status, over `client` (plain port at `node`).
async fn answered_by(client: &reqwest::Client, host: &str) -> (u16, String, String) {
    let resp = client
        .get(format!("http://{host}/"))
        .timeout(10 * SEC)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let stub = resp
        .headers()
        .get("x-stub-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let error = resp
        .headers()
        .get("x-cf-routererror")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, stub, error)
}

/// gorouter's sharding (reference/gorouter.md, `isolation_segment` and
/// `routing_table_sharding_mode`): a segment's GoRouters serve its routes, the shared ones
/// the rest; a segment without GoRouters at this site is never sent to the shared ones.
#[tokio::test]
async fn segmented_routes_reach_their_segments_gorouters_on_http1_and_http2() {
    let (shared, seg_a) = (
        GoRouterStub::start("shared").await,
        GoRouterStub::start("seg-a").await,
    );
    let bus = NatsServer::start();
    let node = Node::builder("lon-1", "lon")
        .nats(&bus.url())
        .gorouters(&[shared.addr()])
        .extra(&format!(
            "\n[gorouters.segments]\n\"seg-a\" = [\"{}\"]\n",
            seg_a.addr()
        ))
        .start()
        .await;
    let client = bus.client().await;
    let reg = |uri: &str, segment: Option<&str>| {
        let mut m = json!({"host": "10.0.0.1", "port": 61000, "uris": [uri], "app": uri});
        if let Some(s) = segment {
            m["isolation_segment"] = json!(s);
        }
        m
    };
    for (uri, segment) in [
        ("plain.example.com", None),
        ("seg.example.com", Some("seg-a")),
        ("nowhere.example.com", Some("seg-x")),
    ] {
        node.register_until_routed(&client, &reg(uri, segment), uri)
            .await;
    }
    let route = node.route("seg.example.com", "").await.expect("route");
    assert_eq!(route["sites"][0]["isolation_segment"], "seg-a", "{route}");
    let route = node.route("plain.example.com", "").await.expect("route");
    assert!(route["sites"][0]["isolation_segment"].is_null(), "{route}");

    let addr = node.http_addr();
    let resolve = |b: reqwest::ClientBuilder| {
        [
            "plain.example.com",
            "seg.example.com",
            "nowhere.example.com",
        ]
        .into_iter()
        .fold(b, |b, h| b.resolve(h, addr))
    };
    let h1 = resolve(reqwest::Client::builder().http1_only())
        .build()
        .expect("client");
    let h2 = resolve(reqwest::Client::builder().http2_prior_knowledge())
        .build()
        .expect("client");
    for (name, client) in [("HTTP/1.1", &h1), ("HTTP/2", &h2)] {
        // Alternating on one connection: the fast path's kept GoRouter never leaks a route
        // into the other pool.
        for _ in 0..2 {
            let (status, stub, _) = answered_by(client, "plain.example.com").await;
            assert_eq!((status, stub.as_str()), (200, "shared"), "{name}");
            let (status, stub, _) = answered_by(client, "seg.example.com").await;
            assert_eq!((status, stub.as_str()), (200, "seg-a"), "{name}");
        }
        let (status, stub, error) = answered_by(client, "nowhere.example.com").await;
        assert_eq!(status, 502, "{name}");
        assert_eq!(stub, "", "{name}: no GoRouter answered");
        assert!(error.starts_with("endpoint_failure"), "{name}: {error}");
    }
    assert_eq!(
        node.metric("grouter_gorouters_segment_unavailable_total")
            .await,
        Some(2.0)
    );
}

/// Health probes per pool: the segment's GoRouters are probed like the shared ones, a
/// failed one logged with its segment; `/healthz` follows the shared GoRouters.
#[tokio::test]
async fn each_pool_is_probed_and_healthz_follows_the_shared_one() {
    let (shared, seg_a) = (
        GoRouterStub::start("shared").await,
        GoRouterStub::start("seg-a").await,
    );
    let bus = NatsServer::start();
    let node = Node::builder("lon-1", "lon")
        .nats(&bus.url())
        .gorouters(&[shared.addr()])
        .extra(&format!(
            "\n[gorouters.segments]\n\"seg-a\" = [\"{}\"]\n",
            seg_a.addr()
        ))
        .start()
        .await;
    seg_a.set_healthy(false);
    node.log
        .wait_for(10 * SEC, "the segment's GoRouter failing its probe", |l| {
            (l.contains("gorouter failed its health check") && l.contains("seg-a")).then_some(())
        });
    // The segment's GoRouter down does not make the node unhealthy (a probe of the shared
    // one may fail on a loaded machine: wait for it to pass).
    grouter_tests::wait_until(10 * SEC, "/healthz 200 with the segment down", || async {
        (node.get("/healthz").await.ok()?.0 == 200).then_some(())
    })
    .await;
    shared.set_healthy(false);
    grouter_tests::wait_until(10 * SEC, "/healthz to say 503", || async {
        (node.get("/healthz").await.ok()?.0 == 503).then_some(())
    })
    .await;
}
