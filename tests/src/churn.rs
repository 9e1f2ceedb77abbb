//! Sustained route churn at one site, replicated to another: 2,000 route changes per second
//! at lon for 30 s arrive at sgp complete and, per route, in order.
//!
//! In-process nodes (so the observer reads sgp's table directly, every 100 ms, without
//! serialising 500 routes over HTTP) with real NATS; the watermarks are compared through
//! the admin API's `/v1/peers`, as an operator would.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use grouter::health::SyncState;
use grouter::node::NodeState;
use grouter_tests::inproc::{InProcNode, registration};
use grouter_tests::{MeshCa, NatsServer, wait_until};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const SEC: Duration = Duration::from_secs(1);
/// Distinct routes the changes cycle through.
const ROUTES: usize = 500;
/// Messages per second at lon.
const RATE: usize = 2_000;
/// How long the load lasts.
const LOAD: Duration = Duration::from_secs(30);
/// How often sgp's view is sampled.
const OBSERVE_EVERY: Duration = Duration::from_millis(100);

fn host(route: usize) -> String {
    format!("churn-{route}.example.com")
}

/// Message `i`: route `i % ROUTES` is now served by app `v{i}`, on a fixed endpoint per route
/// (so the registry replaces the endpoint's app: one route change per message).
fn change(i: usize) -> Value {
    let route = i % ROUTES;
    let port = 20_000 + u16::try_from(route).expect("route fits a port");
    registration("10.0.0.1", port, &host(route), &format!("v{i}"))
}

/// The app version lon's partition announces for each churn route in `state`'s table:
/// route → N of `vN`.
fn versions_from_lon(state: &NodeState) -> HashMap<usize, usize> {
    let mut out = HashMap::new();
    for view in state.table.routes(None) {
        let Some(route) = view
            .host
            .strip_prefix("churn-")
            .and_then(|h| h.strip_suffix(".example.com"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        for (origin, entry) in &view.servers {
            if &*origin.site != "lon" {
                continue;
            }
            let n = entry
                .app
                .id()
                .strip_prefix('v')
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("unexpected app id {:?}", entry.app.id()));
            out.insert(route, n);
        }
    }
    out
}

/// What the observer saw at sgp.
#[derive(Debug, Default)]
struct Observed {
    /// Samples taken.
    samples: usize,
    /// Route → the versions seen, in sample order, each once.
    history: HashMap<usize, Vec<usize>>,
    /// `(route, earlier version, later version)` whenever a route went backwards.
    regressions: Vec<(usize, usize, usize)>,
    /// Largest gap between messages published and the newest version seen at sgp.
    max_lag: usize,
}

/// Sample sgp's view every [`OBSERVE_EVERY`] until `stop`, checking per route that versions
/// never decrease.
async fn observe(
    state: Arc<NodeState>,
    published: Arc<AtomicUsize>,
    stop: CancellationToken,
) -> Observed {
    let mut seen = Observed::default();
    let mut tick = tokio::time::interval(OBSERVE_EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => return seen,
            _ = tick.tick() => {}
        }
        let sent = published.load(Ordering::Acquire);
        let now = versions_from_lon(&state);
        seen.samples += 1;
        let newest = now.values().copied().max().unwrap_or(0);
        seen.max_lag = seen.max_lag.max(sent.saturating_sub(newest + 1));
        for (route, n) in now {
            let history = seen.history.entry(route).or_default();
            match history.last() {
                Some(&last) if n < last => seen.regressions.push((route, last, n)),
                Some(&last) if n == last => {}
                _ => history.push(n),
            }
        }
    }
}

/// lon's partition as `(generation, max_version)` in `node`'s `/v1/peers` watermarks.
async fn lon_watermark(node: &InProcNode) -> Option<(u64, u64)> {
    let peers = node.json("/v1/peers").await;
    let w = peers["watermarks"]
        .as_array()?
        .iter()
        .find(|w| w["node_id"] == "lon-1")?
        .clone();
    Some((w["generation"].as_u64()?, w["max_version"].as_u64()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_route_changes_per_second_arrive_complete_and_in_order() {
    let ca = MeshCa::new();
    let (lon_bus, sgp_bus) = (NatsServer::start(), NatsServer::start());
    let lon = InProcNode::builder("lon-1", "lon")
        .nats(&lon_bus.url())
        .mesh(&ca, &[])
        .start()
        .await;
    let sgp = InProcNode::builder("sgp-1", "sgp")
        .nats(&sgp_bus.url())
        .mesh(&ca, &[lon.mesh_addr()])
        .start()
        .await;
    for node in [&lon, &sgp] {
        wait_until(10 * SEC, "the mesh in sync", || async {
            (node.state().health.sync() == SyncState::InSync).then_some(())
        })
        .await;
    }
    // lon's subscription is live and replication runs: a first route reaches sgp.
    let bus = lon_bus.client().await;
    let warmup = "warmup.example.com";
    lon.register_until_learned(&bus, &registration("10.0.0.2", 19_999, warmup, "w"), warmup)
        .await;
    wait_until(5 * SEC, "the warm-up route at sgp", || async {
        sgp.state().table.lookup(warmup, "").map(|_| ())
    })
    .await;

    let published = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let observer = tokio::spawn(observe(
        sgp.state().clone(),
        published.clone(),
        stop.clone(),
    ));

    // The load: paced by the clock, RATE messages per second for LOAD.
    let total = RATE * usize::try_from(LOAD.as_secs()).expect("secs");
    let started = Instant::now();
    let mut pace = tokio::time::interval(Duration::from_millis(5));
    let mut sent = 0;
    while sent < total {
        pace.tick().await;
        let due = (started.elapsed().as_secs_f64() * RATE as f64) as usize;
        while sent < due.min(total) {
            bus.publish("router.register", change(sent).to_string().into())
                .await
                .expect("publish");
            sent += 1;
            published.store(sent, Ordering::Release);
        }
    }
    bus.flush().await.expect("flush");
    let took = started.elapsed();
    // The load must really have been the load: the publisher kept the pace.
    assert!(
        took < LOAD + 2 * SEC,
        "publishing {total} messages took {took:?}, below {RATE}/s"
    );

    // Complete: the last change of every route, first at lon (so a miss is pinned on the
    // learner or on the mesh), then at sgp.
    let last = |route: usize| total - ROUTES + route;
    let all_last = |state: &NodeState| {
        let now = versions_from_lon(state);
        (0..ROUTES).all(|r| now.get(&r) == Some(&last(r)))
    };
    wait_until(
        20 * SEC,
        "lon to learn every route's last change",
        || async { all_last(lon.state()).then_some(()) },
    )
    .await;
    let lon_done = started.elapsed();
    wait_until(
        20 * SEC,
        "sgp to hold every route's last change",
        || async { all_last(sgp.state()).then_some(()) },
    )
    .await;
    let sgp_done = started.elapsed();
    stop.cancel();
    let observed = observer.await.expect("observer");

    // In order: no route ever went backwards at sgp.
    assert!(
        observed.regressions.is_empty(),
        "{} regressions at sgp (route, seen, then): {:?}",
        observed.regressions.len(),
        &observed.regressions[..observed.regressions.len().min(20)]
    );
    // The observer did watch the churn (so the order check means something): it sampled
    // throughout, and saw every route move.
    assert!(observed.samples >= 200, "only {} samples", observed.samples);
    assert_eq!(observed.history.len(), ROUTES, "routes observed at sgp");
    let least_moves = observed.history.values().map(Vec::len).min().unwrap_or(0);
    assert!(
        least_moves >= 2,
        "some route was seen at only {least_moves} version(s)"
    );
    for (route, versions) in &observed.history {
        assert!(
            versions.iter().all(|n| n % ROUTES == *route),
            "route {route} showed another route's version: {versions:?}"
        );
    }

    // sgp holds lon's partition up to lon's own watermark (lon's heartbeat moves it every
    // 500 ms, so read both until they agree).
    let (lon_mark, sgp_mark) =
        wait_until(10 * SEC, "sgp's watermark of lon to catch up", || async {
            let lon_mark = lon_watermark(&lon).await?;
            let sgp_mark = lon_watermark(&sgp).await?;
            (lon_mark == sgp_mark).then_some((lon_mark, sgp_mark))
        })
        .await;
    assert_eq!(lon_mark.0, lon.state().table.me().generation);
    eprintln!(
        "churn: {total} changes in {took:?}; lon complete at {lon_done:?}, sgp at {sgp_done:?}; \
         {} samples, max lag {} messages, fewest distinct versions seen for a route {least_moves}; \
         lon watermark {lon_mark:?} = sgp's {sgp_mark:?}",
        observed.samples, observed.max_lag
    );
}
