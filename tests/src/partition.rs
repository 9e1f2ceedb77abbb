//! A site partitioned from the others, with in-process nodes on a network the test cuts and
//! heals (DESIGN.md, "Failure model"): the rest keeps converging, the cut-off site reports
//! `lost` and keeps serving its own routes, and after the heal every node holds the same
//! routes, each served once per site.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use grouter::health::SyncState;
use grouter_tests::inproc::{InProcNode, Net, publish, registration, unregistration};
use grouter_tests::{MeshCa, NatsServer, wait_until};

const SEC: Duration = Duration::from_secs(1);

/// How `node` would route `host` now: `(served locally, remote sites)`, `None` when no live
/// node serves it.
fn served(node: &InProcNode, host: &str) -> Option<(bool, Vec<String>)> {
    let m = node.state().table.lookup(host, "")?;
    Some((
        m.local,
        m.remote_sites.iter().map(|s| s.to_string()).collect(),
    ))
}

/// What `node` should see for a route served at `site` only.
fn served_at(node: &InProcNode, site: &str) -> Option<(bool, Vec<String>)> {
    Some(if node.site() == site {
        (true, vec![])
    } else {
        (false, vec![site.to_string()])
    })
}

/// Every `(host, site)` that some server in `node`'s table announces, dead servers included.
fn host_sites(node: &InProcNode) -> BTreeSet<(String, String)> {
    node.state()
        .table
        .routes(None)
        .iter()
        .flat_map(|r| {
            r.servers
                .iter()
                .map(|(o, _)| (r.host.to_string(), o.site.to_string()))
        })
        .collect()
}

async fn wait_sync(node: &InProcNode, want: SyncState, timeout: Duration) {
    wait_until(
        timeout,
        &format!("{} to be {}", node.node_id(), want.as_str()),
        || async { (node.state().health.sync() == want).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_site_keeps_its_routes_and_everything_converges_after_the_heal() {
    let ca = MeshCa::new();
    let net = Net::new();
    let buses = [
        NatsServer::start(),
        NatsServer::start(),
        NatsServer::start(),
    ];
    let lon = InProcNode::start("lon-1", "lon", &buses[0].url(), &ca, &[], &net).await;
    let seeds = [lon.mesh_addr()];
    let nyc = InProcNode::start("nyc-1", "nyc", &buses[1].url(), &ca, &seeds, &net).await;
    let sgp = InProcNode::start("sgp-1", "sgp", &buses[2].url(), &ca, &seeds, &net).await;
    let nodes = [&lon, &nyc, &sgp];
    let (lon_bus, nyc_bus, sgp_bus) = (
        buses[0].client().await,
        buses[1].client().await,
        buses[2].client().await,
    );

    // A full mesh (nyc and sgp find each other through lon), in sync everywhere.
    for node in nodes {
        wait_until(15 * SEC, "a full mesh", || async {
            let peers = node.state().mesh.get()?.peers().len();
            (peers == 2 && node.state().health.sync() == SyncState::InSync).then_some(())
        })
        .await;
    }

    // One route per site, seen everywhere.
    let (a1, a2) = ("a1.example.com", "a2.example.com");
    let b1 = "b1.example.com";
    let (c1, c2) = ("c1.example.com", "c2.example.com");
    lon.register_until_learned(&lon_bus, &registration("10.0.0.1", 61001, a1, "a1"), a1)
        .await;
    nyc.register_until_learned(&nyc_bus, &registration("10.1.0.1", 61001, b1, "b1"), b1)
        .await;
    sgp.register_until_learned(&sgp_bus, &registration("10.2.0.1", 61001, c1, "c1"), c1)
        .await;
    for node in nodes {
        for (host, site) in [(a1, "lon"), (b1, "nyc"), (c1, "sgp")] {
            wait_until(
                5 * SEC,
                &format!("{host} at {}", node.node_id()),
                || async { (served(node, host) == served_at(node, site)).then_some(()) },
            )
            .await;
        }
    }

    // Cut sgp off. Dead after 2.5 s of silence, unreachable for the sync state after 3 s.
    net.cut("sgp");
    wait_sync(&sgp, SyncState::Lost, 10 * SEC).await;
    wait_sync(&lon, SyncState::Degraded, 10 * SEC).await;
    wait_sync(&nyc, SyncState::Degraded, 10 * SEC).await;
    assert_eq!(net.relays_between("sgp", "lon"), 0);
    assert_eq!(net.relays_between("sgp", "nyc"), 0);
    assert_eq!(
        net.relays_between("lon", "nyc"),
        1,
        "lon and nyc stay connected"
    );

    // Changes on both sides of the cut.
    lon.register_until_learned(&lon_bus, &registration("10.0.0.2", 61002, a2, "a2"), a2)
        .await;
    publish(
        &lon_bus,
        "router.unregister",
        &unregistration("10.0.0.1", 61001, a1),
    )
    .await;
    sgp.register_until_learned(&sgp_bus, &registration("10.2.0.2", 61002, c2, "c2"), c2)
        .await;

    // lon and nyc keep converging.
    for node in [&lon, &nyc] {
        wait_until(
            5 * SEC,
            &format!("a2 and no a1 at {}", node.node_id()),
            || async {
                (served(node, a2) == served_at(node, "lon") && served(node, a1).is_none())
                    .then_some(())
            },
        )
        .await;
    }
    // They no longer count sgp: its routes stop routing there (but stay visible as dead).
    for node in [&lon, &nyc] {
        assert_eq!(served(node, c1), None, "c1 at {}", node.node_id());
        assert_eq!(served(node, c2), None, "c2 at {}", node.node_id());
        assert!(
            node.state()
                .table
                .routes(Some(c1))
                .iter()
                .flat_map(|r| &r.servers)
                .all(|(o, _)| !o.is_alive()),
            "sgp's c1 entry at {} is dead",
            node.node_id()
        );
        assert_eq!(served(node, b1), served_at(node, "nyc"));
    }
    // sgp keeps serving its own routes and hears nothing of the others' changes.
    assert_eq!(served(&sgp, c1), Some((true, vec![])));
    assert_eq!(served(&sgp, c2), Some((true, vec![])));
    assert!(
        sgp.state().table.routes(Some(a2)).is_empty(),
        "a2 reached sgp through the cut"
    );
    assert_eq!(sgp.state().health.sync(), SyncState::Lost);

    // Heal: everything converges, nothing lost, nothing duplicated.
    net.heal("sgp");
    for node in nodes {
        wait_until(
            15 * SEC,
            &format!("{} in sync after the heal", node.node_id()),
            || async {
                let peers = node.state().mesh.get()?.peers().len();
                (peers == 2 && node.state().health.sync() == SyncState::InSync).then_some(())
            },
        )
        .await;
    }
    let expected: BTreeSet<(String, String)> = [(a2, "lon"), (b1, "nyc"), (c1, "sgp"), (c2, "sgp")]
        .iter()
        .map(|(h, s)| (h.to_string(), s.to_string()))
        .collect();
    for node in nodes {
        wait_until(
            10 * SEC,
            &format!("{} to converge after the heal", node.node_id()),
            || async { (host_sites(node) == expected).then_some(()) },
        )
        .await;
    }
    let generations: BTreeMap<String, u64> = nodes
        .iter()
        .map(|n| (n.node_id().to_string(), n.state().table.me().generation))
        .collect();
    for node in nodes {
        for (host, site) in [(a2, "lon"), (b1, "nyc"), (c1, "sgp"), (c2, "sgp")] {
            assert_eq!(
                served(node, host),
                served_at(node, site),
                "{host} at {}",
                node.node_id()
            );
            // Exactly one server per site, alive, from the owner's current incarnation.
            let views = node.state().table.routes(Some(host));
            assert_eq!(views.len(), 1, "{host} at {}: {views:?}", node.node_id());
            let servers: Vec<(String, String, u64, bool)> = views[0]
                .servers
                .iter()
                .map(|(o, _)| {
                    (
                        o.site.to_string(),
                        o.node_id.to_string(),
                        o.generation,
                        o.is_alive(),
                    )
                })
                .collect();
            let owner = format!("{site}-1");
            assert_eq!(
                servers,
                vec![(site.to_string(), owner.clone(), generations[&owner], true)],
                "{host} at {}",
                node.node_id()
            );
        }
        assert_eq!(served(node, a1), None, "a1 at {}", node.node_id());
    }
    // Every node ends with the same table.
    let views: Vec<BTreeSet<(String, String)>> = nodes.iter().map(|n| host_sites(n)).collect();
    assert_eq!(views[0], views[1], "lon and nyc differ");
    assert_eq!(views[0], views[2], "lon and sgp differ");
}

/// `GET http://node/` with `Host: host`: status and the site that served.
async fn get(node: &InProcNode, host: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .get(format!("http://{}/", node.http_addr()))
        .header("host", host)
        .timeout(5 * SEC)
        .send()
        .await
        .expect("request");
    let site = resp
        .headers()
        .get("x-grouter-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (resp.status().as_u16(), site)
}

/// Issue 4's acceptance: site C cut off from the mesh serves its local apps and forwards
/// unknown hosts to its local GoRouters; A and B stop sending traffic to C.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_site_serves_its_own_and_fails_open_while_the_others_stop_sending_to_it() {
    let ca = MeshCa::new();
    let net = Net::new();
    let buses = [
        NatsServer::start(),
        NatsServer::start(),
        NatsServer::start(),
    ];
    let lon = InProcNode::start("lon-1", "lon", &buses[0].url(), &ca, &[], &net).await;
    let seeds = [lon.mesh_addr()];
    let nyc = InProcNode::start("nyc-1", "nyc", &buses[1].url(), &ca, &seeds, &net).await;
    let sgp = InProcNode::start("sgp-1", "sgp", &buses[2].url(), &ca, &seeds, &net).await;
    let (lon_bus, sgp_bus) = (buses[0].client().await, buses[2].client().await);
    for node in [&lon, &nyc, &sgp] {
        wait_sync(node, SyncState::InSync, 15 * SEC).await;
    }
    let (shared, sgp_only, lon_only) = (
        "shared.example.com",
        "sgp-only.example.com",
        "lon-only.example.com",
    );
    lon.register_until_learned(
        &lon_bus,
        &registration("10.0.0.1", 61001, shared, "shared"),
        shared,
    )
    .await;
    lon.register_until_learned(
        &lon_bus,
        &registration("10.0.0.1", 61002, lon_only, "l"),
        lon_only,
    )
    .await;
    sgp.register_until_learned(
        &sgp_bus,
        &registration("10.2.0.1", 61001, shared, "shared"),
        shared,
    )
    .await;
    sgp.register_until_learned(
        &sgp_bus,
        &registration("10.2.0.1", 61002, sgp_only, "s"),
        sgp_only,
    )
    .await;
    wait_until(
        5 * SEC,
        "nyc to know sgp-only and both sites of shared",
        || async {
            let both = served(&nyc, shared).is_some_and(|(_, s)| s.len() == 2);
            (both && served(&nyc, sgp_only).is_some()).then_some(())
        },
    )
    .await;
    // Connected: lon and nyc send sgp-only to sgp.
    assert_eq!(get(&lon, sgp_only).await, (200, "sgp".to_string()));
    assert_eq!(get(&nyc, sgp_only).await, (200, "sgp".to_string()));

    net.cut("sgp");
    wait_sync(&sgp, SyncState::Lost, 10 * SEC).await;
    wait_sync(&lon, SyncState::Degraded, 10 * SEC).await;
    wait_sync(&nyc, SyncState::Degraded, 10 * SEC).await;
    let stub = sgp.stub.as_ref().expect("sgp's own stand-in");
    let sgp_requests = stub.requests();

    // sgp serves its own apps, and fails open: anything it cannot place goes to its own
    // GoRouters (which know their foundation's routes best).
    assert_eq!(get(&sgp, sgp_only).await, (200, "sgp".to_string()));
    assert_eq!(get(&sgp, shared).await, (200, "sgp".to_string()));
    assert_eq!(
        get(&sgp, "nothing.example.com").await,
        (200, "sgp".to_string())
    );
    assert_eq!(
        get(&sgp, lon_only).await,
        (200, "sgp".to_string()),
        "lon is unreachable: fail open"
    );

    // lon and nyc no longer send anything to sgp: its routes stop counting, and the shared
    // app is served where it still can be.
    let before = stub.requests();
    for _ in 0..5 {
        assert_eq!(get(&nyc, shared).await, (200, "lon".to_string()));
        assert_eq!(get(&lon, shared).await, (200, "lon".to_string()));
        let (status, _) = get(&nyc, sgp_only).await;
        assert_eq!(
            status, 404,
            "a route only the cut-off site served is unknown elsewhere"
        );
    }
    assert_eq!(
        stub.requests(),
        before,
        "no traffic reached sgp from the other sites"
    );
    assert!(stub.requests() >= sgp_requests + 4);

    // After the heal, traffic for sgp's apps flows to it again.
    net.heal("sgp");
    for node in [&lon, &nyc, &sgp] {
        wait_sync(node, SyncState::InSync, 15 * SEC).await;
    }
    wait_until(
        10 * SEC,
        "sgp-only to be served by sgp from nyc again",
        || async { (get(&nyc, sgp_only).await == (200, "sgp".to_string())).then_some(()) },
    )
    .await;
}
