//! Certificates uploaded once and served everywhere (issue 13), with real processes and a
//! verifying TLS client that compares the certificate each node serves by SNI.

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use grouter_tests::{AppCerts, MeshCa, NatsServer, Node, wait_until};

const SEC: Duration = Duration::from_secs(1);
/// The contract's bound from a write at one node to its effect at every node.
const PROPAGATION: Duration = Duration::from_secs(2);
const SETTLE: Duration = Duration::from_secs(30);
const HOST: &str = "shop.apps.example.com";
const PATH: &str = "/v1/certs/shop.apps.example.com";

async fn https_node(
    id: &str,
    site: &str,
    bus: &NatsServer,
    ca: &MeshCa,
    certs: &AppCerts,
    seeds: &[std::net::SocketAddr],
) -> Node {
    let dir = certs.dir.path();
    Node::builder(id, site)
        .nats(&bus.url())
        .mesh(ca, seeds)
        .https(dir, &dir.join("default.pem"), &dir.join("default.key"))
        .start()
        .await
}

/// Until every node serves `want` for the shop host (`None`: no certificate a verifying
/// client accepts); returns how long the slowest took.
async fn served_everywhere(
    certs: &AppCerts,
    nodes: &[&Node],
    want: Option<&Vec<u8>>,
    what: &str,
) -> Duration {
    let started = Instant::now();
    for n in nodes {
        wait_until(PROPAGATION + SEC, what, || async {
            (certs.served(n.https_addr(), HOST).await.as_ref() == want).then_some(())
        })
        .await;
    }
    started.elapsed()
}

fn now_secs() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs(),
    )
    .expect("secs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_certificate_is_served_by_every_node_survives_restarts_and_leaves_everywhere() {
    let certs = AppCerts::new();
    certs.issue("default", "default.example.com");
    let ca = MeshCa::new();
    let buses = [
        NatsServer::start(),
        NatsServer::start(),
        NatsServer::start(),
    ];
    let lon = https_node("lon-1", "lon", &buses[0], &ca, &certs, &[]).await;
    let mut nyc = https_node("nyc-1", "nyc", &buses[1], &ca, &certs, &[lon.mesh_addr()]).await;
    let mut sgp = https_node("sgp-1", "sgp", &buses[2], &ca, &certs, &[lon.mesh_addr()]).await;
    for n in [&lon, &nyc, &sgp] {
        wait_until(SETTLE, "a full mesh", || async {
            let s = n.json("/v1/status").await;
            (s["peers_connected"].as_u64()? >= 2).then_some(())
        })
        .await;
    }
    // Nobody serves the host before the upload (the default certificate does not verify).
    assert_eq!(certs.served(nyc.https_addr(), HOST).await, None);

    // Refused uploads, each with its reason and field; nothing is written.
    let (cert, key, der) = certs.issue_pem(&[HOST], None);
    let (_, other_key, _) = certs.issue_pem(&[HOST], None);
    let (blog_cert, blog_key, _) = certs.issue_pem(&["blog.apps.example.com"], None);
    let (old_cert, old_key, _) = certs.issue_pem(
        &[HOST],
        Some((now_secs() - 20 * 86_400, now_secs() - 86_400)),
    );
    let bad: [(Value, &str); 5] = [
        (json!({ "cert_pem": cert, "key_pem": other_key }), "key_pem"),
        (
            json!({ "cert_pem": blog_cert, "key_pem": blog_key }),
            "host",
        ),
        (
            json!({ "cert_pem": "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", "key_pem": key }),
            "cert_pem",
        ),
        (
            json!({ "cert_pem": "garbage", "key_pem": "garbage" }),
            "cert_pem",
        ),
        (
            json!({ "cert_pem": old_cert, "key_pem": old_key }),
            "cert_pem",
        ),
    ];
    for (body, field) in &bad {
        let (status, resp) = nyc.put(PATH, body).await;
        assert_eq!(status, 400, "{resp}");
        assert_eq!(resp["field"], *field, "{resp}");
        let text = resp.to_string();
        assert!(
            !text.contains("PRIVATE KEY") && !text.contains("BEGIN"),
            "no PEM echoed: {text}"
        );
    }
    assert!(
        lon.json("/v1/audit").await["entries"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );

    // Uploaded at nyc: every node serves it by SNI within 2 s.
    let (status, resp) = nyc
        .put(PATH, &json!({ "cert_pem": cert, "key_pem": key }))
        .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["host"], HOST);
    let took = served_everywhere(
        &certs,
        &[&lon, &nyc, &sgp],
        Some(&der),
        "the upload served everywhere",
    )
    .await;
    assert!(took < PROPAGATION + SEC, "{took:?}");
    let meta = lon.json(PATH).await;
    assert_eq!(meta["source"], "upload", "{meta}");
    assert_eq!(meta["sans"], json!([HOST]));
    assert_eq!(meta["fingerprint_sha256"], resp["fingerprint_sha256"]);
    let listed = sgp.json("/v1/certs").await.to_string();
    assert!(
        listed.contains(HOST) && !listed.contains("PRIVATE KEY") && !listed.contains("key_pem"),
        "{listed}"
    );

    // The key is kept only in files of mode 0600, and never logged.
    let stored = nyc.state_dir().join("config.jsonl");
    let mode = std::fs::metadata(&stored)
        .expect("state file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(&stored).expect("state");
    assert!(
        text.contains("PRIVATE KEY"),
        "{}: {}",
        stored.display(),
        &text[..text.len().min(300)]
    );
    for n in [&lon, &nyc, &sgp] {
        assert_eq!(
            n.log.count("PRIVATE KEY"),
            0,
            "a key in the log:\n{}",
            n.log.tail(20)
        );
    }

    // A node that restarts learns it again; the writer that restarts serves it from disk.
    // (Both dial lon again: a restarted node listens on a new port, so lon, seeded with
    // nobody, stays up.)
    sgp.restart().await;
    served_everywhere(
        &certs,
        &[&sgp],
        Some(&der),
        "the restarted node serves it again",
    )
    .await;
    nyc.restart().await;
    served_everywhere(
        &certs,
        &[&lon, &nyc, &sgp],
        Some(&der),
        "served after the writer's restart",
    )
    .await;

    // Deleted at another node than the writer: gone everywhere within 2 s.
    for n in [&nyc, &sgp] {
        wait_until(SETTLE, "the restarted nodes back in the mesh", || async {
            let s = n.json("/v1/status").await;
            (s["peers_connected"].as_u64()? >= 2).then_some(())
        })
        .await;
    }
    let (status, resp) = lon.delete(PATH).await;
    assert_eq!(status, 200, "{resp}");
    let took =
        served_everywhere(&certs, &[&lon, &nyc, &sgp], None, "the deletion everywhere").await;
    assert!(took < PROPAGATION + SEC, "{took:?}");
    let (status, _) = lon.delete(PATH).await;
    assert_eq!(status, 404);
}
