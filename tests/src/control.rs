//! The control plane with real processes (issue 13): a write at any node is in force at
//! every node within 2 s; it survives its writer's restart and a wiped node's rejoin;
//! concurrent writes during a partition converge to one winner; tokens and bad input.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use grouter_tests::inproc::{InProcNode, Net};
use grouter_tests::{MeshCa, NatsServer, Node, wait_until};

const SEC: Duration = Duration::from_secs(1);
/// What the contract allows between a write at one node and its effect at every node.
const PROPAGATION: Duration = Duration::from_secs(2);
/// How long a mesh may take to form on a loaded machine.
const SETTLE: Duration = Duration::from_secs(30);

const POLICY: &str = "/v1/policies/routes/shop.apps.example.com";

/// Three sites in two regions: lon (eu), nyc (us), sgp (eu), fully meshed.
async fn three_sites(ca: &MeshCa, buses: &[NatsServer; 3]) -> [Node; 3] {
    let lon = Node::builder("lon-1", "lon")
        .region("eu")
        .nats(&buses[0].url())
        .mesh(ca, &[])
        .read_token()
        .start()
        .await;
    let nyc = Node::builder("nyc-1", "nyc")
        .region("us")
        .nats(&buses[1].url())
        .mesh(ca, &[lon.mesh_addr()])
        .start()
        .await;
    let sgp = Node::builder("sgp-1", "sgp")
        .region("eu")
        .nats(&buses[2].url())
        .mesh(ca, &[lon.mesh_addr()])
        .start()
        .await;
    let nodes = [lon, nyc, sgp];
    for n in &nodes {
        wait_until(
            SETTLE,
            "every node sees three sites with their regions",
            || async {
                let sites = n.json("/v1/sites").await;
                let regions: Vec<String> = sites["sites"]
                    .as_array()?
                    .iter()
                    .map(|s| s["region"].as_str().unwrap_or("").to_string())
                    .collect();
                (regions == ["eu", "us", "eu"]).then_some(())
            },
        )
        .await;
    }
    nodes
}

/// The policy `node` holds for the shop route, if any.
async fn policy_at(node: &Node) -> Option<Value> {
    let (status, body) = node
        .send(Method::GET, POLICY, None, Some(node.token()))
        .await;
    (status == 200).then_some(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_written_anywhere_is_everywhere_and_outlives_its_writers_restart_and_a_wiped_node()
{
    let ca = MeshCa::new();
    let buses = [
        NatsServer::start(),
        NatsServer::start(),
        NatsServer::start(),
    ];
    let [lon, mut nyc, mut sgp] = three_sites(&ca, &buses).await;

    // Written at a us node, pinning the route to eu.
    let written_at = Instant::now();
    let (status, body) = nyc
        .put(
            POLICY,
            &json!({ "regions": ["eu"], "weights": { "lon": 1, "sgp": 3 } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replicated"], true, "{body}");
    let hlc = body["hlc"].as_str().expect("hlc").to_string();
    for n in [&lon, &nyc, &sgp] {
        let p = wait_until(PROPAGATION + SEC, "the policy at every node", || async {
            policy_at(n).await
        })
        .await;
        assert_eq!(p["hlc"], hlc.as_str());
        assert_eq!(p["written_by"], "nyc-1");
        assert_eq!(p["policy"]["regions"], json!(["eu"]));
    }
    assert!(written_at.elapsed() < PROPAGATION + SEC);
    let listed = lon.json("/v1/policies").await;
    assert_eq!(
        listed["routes"][0]["host"], "shop.apps.example.com",
        "{listed}"
    );

    // The writer crashes and comes back with a new generation and the same state_dir: the
    // policy never leaves the other nodes meanwhile, and the writer holds it again.
    nyc.restart().await;
    let until = Instant::now() + 3 * SEC;
    while Instant::now() < until {
        for n in [&lon, &sgp] {
            let p = policy_at(n).await.expect("the policy stays in force");
            assert_eq!(p["hlc"], hlc.as_str());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let p = policy_at(&nyc)
        .await
        .expect("the restarted writer serves its own write");
    assert_eq!(p["hlc"], hlc.as_str());

    // Another node is wiped (empty state_dir) and rejoins: it learns the policy from peers.
    sgp.kill();
    std::fs::remove_dir_all(sgp.state_dir()).expect("wipe state_dir");
    sgp.restart().await;
    let p = wait_until(SETTLE, "the wiped node relearns the policy", || async {
        policy_at(&sgp).await
    })
    .await;
    assert_eq!(p["hlc"], hlc.as_str());
    assert!(policy_at(&lon).await.is_some());

    // A delete is gone everywhere within 2 s.
    let (status, body) = lon.delete(POLICY).await;
    assert_eq!(status, 200, "{body}");
    for n in [&lon, &nyc, &sgp] {
        wait_until(PROPAGATION + SEC, "the deletion at every node", || async {
            policy_at(n).await.is_none().then_some(())
        })
        .await;
    }
    let (status, _) = lon.delete(POLICY).await;
    assert_eq!(status, 404, "nothing left to delete");
    // The audit trail of the writing node names the write.
    let audit = nyc.json("/v1/audit").await;
    assert_eq!(
        audit["entries"][0]["key"],
        "policy/route/shop.apps.example.com"
    );
    assert_eq!(audit["entries"][0]["action"], "put");
    assert_eq!(audit["entries"][0]["token"], "write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_bad_input_write_nothing() {
    let bus = NatsServer::start();
    let node = Node::builder("lon-1", "lon")
        .region("eu")
        .nats(&bus.url())
        .read_token()
        .start()
        .await;
    let read = node.read_token().to_string();
    let site = "/v1/policies/sites/lon";
    // No token: 401 for reads and writes alike.
    for method in [Method::GET, Method::PUT, Method::DELETE] {
        let (status, _) = node.send(method, site, None, None).await;
        assert_eq!(status, 401);
    }
    // The read token reads everything and writes nothing.
    for path in ["/v1/policies", "/v1/audit", "/v1/sites", "/v1/status"] {
        let (status, body) = node.send(Method::GET, path, None, Some(&read)).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    for (method, path) in [
        (Method::PUT, site),
        (Method::DELETE, site),
        (Method::PUT, POLICY),
        (Method::DELETE, POLICY),
    ] {
        let (status, body) = node
            .send(
                method.clone(),
                path,
                Some(&json!({"drained": true})),
                Some(&read),
            )
            .await;
        assert_eq!(status, 403, "{method} {path}: {body}");
    }

    // Bad input: 400 with the field named.
    let bad: [(&str, Value, &str); 8] = [
        (POLICY, json!({ "regions": [] }), "regions"),
        (POLICY, json!({ "regions": ["mars"] }), "regions"),
        (POLICY, json!({ "weights": { "lon": -1 } }), "weights.lon"),
        (POLICY, json!({ "weights": { "lon": 1.5 } }), "weights.lon"),
        (
            POLICY,
            json!({ "weights": { "atlantis": 1 } }),
            "weights.atlantis",
        ),
        (POLICY, json!({ "drained": ["atlantis"] }), "drained"),
        (
            POLICY,
            json!({ "mode": "proxy", "colour": "red" }),
            "colour",
        ),
        (
            "/v1/policies/sites/atlantis",
            json!({ "drained": true }),
            "site",
        ),
    ];
    for (path, body, field) in bad {
        let (status, resp) = node.put(path, &body).await;
        assert_eq!(status, 400, "{body}: {resp}");
        assert!(
            resp["field"].as_str().is_some_and(|f| f.contains(field))
                || resp["error"].as_str().is_some_and(|e| e.contains(field)),
            "{body}: {resp}"
        );
    }
    let (status, _) = node.put("/v1/policies/routes/not a host", &json!({})).await;
    assert_eq!(status, 400);
    // Over the body limit: 413, without reading it all.
    let huge = json!({ "regions": ["x".repeat(300 * 1024)] });
    let (status, _) = node.put(POLICY, &huge).await;
    assert_eq!(status, 413);
    let listed = node.json("/v1/policies").await;
    assert_eq!(
        listed,
        json!({ "routes": [], "sites": [] }),
        "nothing was written"
    );
    assert_eq!(node.json("/v1/audit").await["entries"], json!([]));

    // Without peers a write is still taken, and says it is not replicated yet.
    let (status, body) = node.put(site, &json!({ "drained": true })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replicated"], false);
    // A drained site's /healthz is 503 (anycast withdraws it), and says why.
    let (status, body) = node.get("/healthz").await.expect("healthz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("site_drained"), "{body}");
    let sites = node.json("/v1/sites").await;
    assert_eq!(sites["sites"][0]["drained"], true);
    let (status, _) = node.delete(site).await;
    assert_eq!(status, 200);
    wait_until(PROPAGATION, "healthz back to 200", || async {
        (node.get("/healthz").await.ok()?.0 == 200).then_some(())
    })
    .await;
}

/// Two sites cut apart both take a write of the same key; after the heal every node holds
/// the same winner: the later clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_writes_during_a_partition_converge_to_one_winner() {
    let ca = MeshCa::new();
    let net = Net::new();
    let (lon_bus, nyc_bus) = (NatsServer::start(), NatsServer::start());
    let lon = InProcNode::builder("lon-1", "lon")
        .nats(&lon_bus.url())
        .mesh(&ca, &[])
        .net(&net)
        .sync_lost_after_secs(2)
        .start()
        .await;
    let nyc = InProcNode::builder("nyc-1", "nyc")
        .nats(&nyc_bus.url())
        .mesh(&ca, &[lon.mesh_addr()])
        .net(&net)
        .sync_lost_after_secs(2)
        .start()
        .await;
    let key = "/v1/policies/sites/nyc";
    let (status, _) = lon.put(key, &json!({ "drained": false })).await;
    assert_eq!(status, 200);
    wait_until(SETTLE, "nyc has lon's first write", || async {
        let p = nyc.json("/v1/policies").await;
        (p["sites"].as_array()?.len() == 1).then_some(())
    })
    .await;

    net.cut("lon");
    wait_until(SETTLE, "the cut is seen on both sides", || async {
        let a = lon.json("/v1/status").await;
        let b = nyc.json("/v1/status").await;
        (a["sync"] == "lost" && b["sync"] == "lost").then_some(())
    })
    .await;
    // Both sides write the same key while cut off; nyc writes second.
    let (s1, first) = lon.put(key, &json!({ "drained": true })).await;
    let (s2, second) = nyc.put(key, &json!({ "drained": false })).await;
    assert_eq!((s1, s2), (200, 200), "{first} {second}");
    let later = second["hlc"].as_str().expect("hlc").to_string();
    assert_ne!(first["hlc"], second["hlc"]);
    // Each side holds its own until the heal.
    assert_eq!(lon.json(key).await["policy"]["drained"], true);

    net.heal("lon");
    for n in [&lon, &nyc] {
        let v = wait_until(SETTLE, "one winner everywhere after the heal", || async {
            let v = n.json(key).await;
            (v["hlc"] == later.as_str()).then_some(v)
        })
        .await;
        assert_eq!(v["policy"]["drained"], false);
        assert_eq!(v["written_by"], "nyc-1");
    }
    lon.stop().await;
    nyc.stop().await;
}
