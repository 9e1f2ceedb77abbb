//! The mesh with real processes: one `nats-server` per site, several `grouter` nodes per
//! site, real mutual TLS.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use grouter::mesh::identity::{MESH_SERVER_NAME, MeshTls};
use grouter_protocol::mesh::{self as wire, frame::Body};
use grouter_tests::evil::{EvilIdentity, EvilPeer};
use grouter_tests::inproc::{publish, registration};
use grouter_tests::{MeshCa, NatsServer, Node, TwoSites, wait_until};
use serde_json::{Value, json};

const SEC: Duration = Duration::from_secs(1);

/// The sites serving `host` per `node`'s `/v1/routes`, as `(site, local)` pairs.
async fn sites_of(node: &Node, host: &str) -> Vec<(String, bool)> {
    let Some(route) = node.route(host, "").await else {
        return vec![];
    };
    route["sites"]
        .as_array()
        .map(|sites| {
            sites
                .iter()
                .map(|s| {
                    (
                        s["site"].as_str().unwrap_or_default().to_string(),
                        s["local"] == true,
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn three_sites_of_two_nodes_replicate_and_withdraw_routes() {
    let ca = MeshCa::new();
    let sites = ["lon", "nyc", "sgp"];
    let buses: Vec<NatsServer> = sites.iter().map(|_| NatsServer::start()).collect();
    let mut nodes: Vec<Node> = Vec::new();
    for (i, site) in sites.iter().enumerate() {
        for n in 1..=2 {
            // Every node knows only the first node as a seed: the rest is discovered.
            let seeds: Vec<SocketAddr> = nodes
                .first()
                .map(|f| vec![f.mesh_addr()])
                .unwrap_or_default();
            let node = Node::builder(&format!("{site}-{n}"), site)
                .nats(&buses[i].url())
                .mesh(&ca, &seeds)
                .start()
                .await;
            nodes.push(node);
        }
    }
    // Full mesh: every node ends up connected to the other five and in sync.
    for node in &nodes {
        wait_until(15 * SEC, "a full mesh", || async {
            let peers = node.json("/v1/peers").await;
            (peers["peers"].as_array().map_or(0, Vec::len) == 5).then_some(())
        })
        .await;
        wait_until(10 * SEC, "in_sync", || async {
            (node.sync_state().await == "in_sync").then_some(())
        })
        .await;
    }

    let lon_bus = buses[0].client().await;
    nodes[0]
        .register_until_routed(
            &lon_bus,
            &registration("10.0.0.1", 61001, "shop.apps.example.com", "shop"),
            "shop.apps.example.com",
        )
        .await;
    for node in &nodes {
        let want_local = node.json("/v1/status").await["site"] == "lon";
        wait_until(5 * SEC, "the route at every node", || async {
            (sites_of(node, "shop.apps.example.com").await == vec![("lon".to_string(), want_local)])
                .then_some(())
        })
        .await;
    }
    // Both lon nodes learned it; remote nodes see both as its servers.
    let route = wait_until(5 * SEC, "both lon nodes as servers at sgp-2", || async {
        let r = nodes[5].route("shop.apps.example.com", "").await?;
        (r["sites"][0]["nodes"] == json!(["lon-1", "lon-2"])).then_some(r)
    })
    .await;
    assert_eq!(route["sites"][0]["endpoints"], 1);
    assert_eq!(route["app_id"], "shop");

    // Served at nyc too: each node lists both sites, marking its own when it is one of them.
    let nyc_bus = buses[1].client().await;
    nodes[2]
        .register_until_routed(
            &nyc_bus,
            &registration("10.1.0.1", 61001, "shop.apps.example.com", "shop"),
            "shop.apps.example.com",
        )
        .await;
    wait_until(5 * SEC, "both sites at sgp", || async {
        (sites_of(&nodes[4], "shop.apps.example.com").await
            == vec![("lon".to_string(), false), ("nyc".to_string(), false)])
        .then_some(())
    })
    .await;
    let apps = nodes[4].json("/v1/apps").await;
    assert_eq!(apps["apps"][0]["name"], "shop");
    assert_eq!(
        apps["apps"][0]["sites"],
        json!([
            {"site": "lon", "instances": 1, "app_guids": ["shop"]},
            {"site": "nyc", "instances": 1, "app_guids": ["shop"]}
        ])
    );
    let sites_view = nodes[4].json("/v1/sites").await;
    let names: Vec<&str> = sites_view["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["site"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["lon", "nyc", "sgp"]);
    for s in sites_view["sites"].as_array().unwrap() {
        assert_eq!(s["nodes"].as_array().unwrap().len(), 2, "{s}");
        assert!(
            s["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["state"] == "alive"),
            "{s}"
        );
    }

    // Withdrawn at both sites: gone everywhere.
    publish(
        &lon_bus,
        "router.unregister",
        &json!({"host": "10.0.0.1", "port": 61001, "uris": ["shop.apps.example.com"]}),
    )
    .await;
    publish(
        &nyc_bus,
        "router.unregister",
        &json!({"host": "10.1.0.1", "port": 61001, "uris": ["shop.apps.example.com"]}),
    )
    .await;
    for node in &nodes {
        wait_until(5 * SEC, "the route to disappear everywhere", || async {
            node.route("shop.apps.example.com", "")
                .await
                .is_none()
                .then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn a_restarted_node_gets_a_new_generation_and_relearns_the_mesh() {
    let ca = MeshCa::new();
    let (lon_bus, nyc_bus) = (NatsServer::start(), NatsServer::start());
    let nyc = Node::builder("nyc-1", "nyc")
        .nats(&nyc_bus.url())
        .mesh(&ca, &[])
        .start()
        .await;
    let mut lon = Node::builder("lon-1", "lon")
        .nats(&lon_bus.url())
        .mesh(&ca, &[nyc.mesh_addr()])
        .start()
        .await;
    let nyc_client = nyc_bus.client().await;
    nyc.register_until_routed(
        &nyc_client,
        &registration("10.1.0.1", 1, "nyc-app.example.com", "n"),
        "nyc-app.example.com",
    )
    .await;
    let lon_client = lon_bus.client().await;
    lon.register_until_routed(
        &lon_client,
        &registration("10.0.0.1", 1, "lon-old.example.com", "o"),
        "lon-old.example.com",
    )
    .await;
    wait_until(5 * SEC, "lon's route at nyc", || async {
        nyc.route("lon-old.example.com", "").await.map(|_| ())
    })
    .await;
    let generation = |status: Value| status["generation"].as_u64().unwrap_or_default();
    let first = generation(lon.json("/v1/status").await);

    lon.restart().await;
    let second = generation(lon.json("/v1/status").await);
    assert!(second > first, "generation {second} after {first}");
    // It relearns the rest of the mesh from its peer…
    wait_until(10 * SEC, "lon to relearn nyc's route", || async {
        lon.route("nyc-app.example.com", "").await.map(|_| ())
    })
    .await;
    // …and its old incarnation is superseded at nyc: the new one announces only what it
    // has learned since (the emitter has not re-registered lon-old yet).
    wait_until(10 * SEC, "nyc to hold the new generation", || async {
        let peers = nyc.json("/v1/peers").await;
        let lon_mark = peers["watermarks"]
            .as_array()?
            .iter()
            .find(|w| w["node_id"] == "lon-1")?
            .clone();
        (lon_mark["generation"].as_u64() == Some(second)).then_some(())
    })
    .await;
    assert!(
        nyc.route("lon-old.example.com", "").await.is_none(),
        "the old incarnation's routes are gone"
    );
    // The emitter re-registers: it comes back under the new generation.
    publish(
        &lon_client,
        "router.register",
        &registration("10.0.0.1", 1, "lon-old.example.com", "o"),
    )
    .await;
    wait_until(5 * SEC, "the re-registered route at nyc", || async {
        nyc.route("lon-old.example.com", "").await.map(|_| ())
    })
    .await;
}

/// A TLS client speaking the mesh protocol, for tests that play a peer.
async fn tls_client(
    config: std::sync::Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(MESH_SERVER_NAME).expect("name");
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

fn framed<S: tokio::io::AsyncRead + tokio::io::AsyncWrite>(
    s: S,
) -> tokio_util::codec::Framed<S, tokio_util::codec::LengthDelimitedCodec> {
    tokio_util::codec::Framed::new(
        s,
        tokio_util::codec::LengthDelimitedCodec::builder()
            .length_field_length(4)
            .max_frame_length(wire::MAX_FRAME)
            .new_codec(),
    )
}

/// Whether a connection carries the mesh protocol: the node's hello arrives (TLS 1.3 lets a
/// client finish its side of the handshake before the server has checked its certificate,
/// so a refusal shows as the connection closing without a frame).
async fn node_says_hello(
    stream: std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
) -> bool {
    let Ok(stream) = stream else { return false };
    let mut f = framed(stream);
    matches!(
        tokio::time::timeout(5 * SEC, f.next()).await,
        Ok(Some(Ok(frame))) if matches!(wire::decode(&frame), Ok(Body::Hello(_)))
    )
}

#[tokio::test]
async fn only_holders_of_a_mesh_certificate_can_join() {
    let ca = MeshCa::new();
    let bus = NatsServer::start();
    let node = Node::builder("lon-1", "lon")
        .nats(&bus.url())
        .mesh(&ca, &[])
        .start()
        .await;
    let load = |dir: &std::path::Path| {
        MeshTls::load(
            &dir.join("ca.pem"),
            &dir.join("node.pem"),
            &dir.join("node.key"),
        )
        .expect("load")
    };

    // A member: the node answers with its hello.
    let member = ca.issue("nyc-1", "nyc");
    assert!(node_says_hello(tls_client(load(member.path()).client, node.mesh_addr()).await).await);

    // A certificate from another CA (trusting the node's CA, so only our cert is the problem).
    let other = MeshCa::new();
    let foreign = other.issue("evil-1", "evil");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile_certs(&ca.dir().join("ca.pem")) {
        roots.add(c).expect("root");
    }
    let foreign_tls = load(foreign.path());
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let (chain, key) = (
        rustls_pemfile_certs(&foreign.path().join("node.pem")),
        rustls_pemfile_key(&foreign.path().join("node.key")),
    );
    let with_foreign_cert = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(chain, key)
        .expect("client cert");
    drop(foreign_tls);
    assert!(
        !node_says_hello(
            tls_client(std::sync::Arc::new(with_foreign_cert), node.mesh_addr()).await
        )
        .await
    );

    // No certificate at all.
    let no_cert = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    assert!(
        !node_says_hello(tls_client(std::sync::Arc::new(no_cert), node.mesh_addr()).await).await
    );

    wait_until(5 * SEC, "refusals to be counted", || async {
        (node.metric("grouter_mesh_handshake_failures_total").await >= Some(2.0)).then_some(())
    })
    .await;
    let peers = node.json("/v1/peers").await;
    assert!(
        peers["peers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["node_id"] != "evil-1")
    );
}

fn rustls_pemfile_certs(path: &std::path::Path) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(path)
        .expect("pem")
        .map(|c| c.expect("cert"))
        .collect()
}

fn rustls_pemfile_key(path: &std::path::Path) -> rustls::pki_types::PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_file(path).expect("key")
}

#[tokio::test]
async fn a_misbehaving_peer_changes_nothing() {
    let TwoSites {
        ca,
        lon_bus,
        nyc_bus: _nyc_bus,
        lon,
        nyc: _nyc,
    } = TwoSites::start().await;
    let bus = lon_bus.client().await;
    lon.register_until_routed(
        &bus,
        &registration("10.0.0.1", 1, "mine.example.com", "mine"),
        "mine.example.com",
    )
    .await;
    wait_until(10 * SEC, "nyc connected to lon", || async {
        let peers = lon.json("/v1/peers").await;
        peers["peers"]
            .as_array()?
            .iter()
            .any(|p| p["node_id"] == "nyc-1")
            .then_some(())
    })
    .await;
    let before = lon.json("/v1/routes").await;

    // Mallory holds a genuine mesh certificate, for mal-1 at site mal.
    let mallory = EvilIdentity::issue(&ca, "mal-1", "mal");
    let mut evil_peer = EvilPeer::dial(&mallory, lon.mesh_addr()).await;
    let evil = |node: &str, site: &str, generation: u64| wire::PartitionDelta {
        node_id: node.into(),
        site: site.into(),
        generation,
        from_version: 0,
        up_to_version: 1_000_000,
        reset: true,
        record: None,
        entries: vec![
            wire::Entry {
                host: "mine.example.com".into(),
                path: String::new(),
                version: 999_999,
                route: None,
            },
            wire::Entry {
                host: "evil.example.com".into(),
                path: String::new(),
                version: 1_000_000,
                route: Some(wire::RouteValue {
                    app_id: "evil".into(),
                    endpoints: 9,
                    ..Default::default()
                }),
            },
        ],
        ..Default::default()
    };
    evil_peer.send(Body::Delta(wire::Delta {
        partitions: vec![
            evil("lon-1", "lon", u64::MAX), // the receiver's own partition
            evil("nyc-1", "nyc", u64::MAX), // a node connected to the receiver directly
            evil("mal-1", "lon", 1), // its own partition, under a site its cert does not name
        ],
    }));
    // The node read it, kept the connection and answered a ping sent after it.
    evil_peer.sync().await;

    for reason in ["own_partition", "owner_connected", "site_mismatch"] {
        let n = lon
            .metric_labelled(
                "grouter_mesh_deltas_rejected_total",
                &format!("reason=\"{reason}\""),
            )
            .await;
        assert_eq!(n, Some(1.0), "{reason}");
    }
    let mut after = lon.json("/v1/routes").await;
    // updated_at and the like are unchanged too: the whole document is identical.
    assert_eq!(std::mem::take(&mut after), before);
    assert!(lon.route("evil.example.com", "").await.is_none());
    assert_eq!(
        sites_of(&lon, "mine.example.com").await,
        vec![("lon".to_string(), true)]
    );
}

/// Issue 12, the start-up transition: a node never says `lost` (and fails open) while it
/// holds another site's routes. Right after start it holds none and says `lost`; the moment
/// the peer's partition is imported, it is in sync (before the fix, the sync state followed
/// only at the failure detector's next tick).
#[tokio::test]
async fn a_starting_node_is_in_sync_as_soon_as_it_holds_a_peers_routes() {
    let ca = MeshCa::new();
    let (lon_bus, nyc_bus) = (NatsServer::start(), NatsServer::start());
    let nyc = Node::builder("nyc-1", "nyc")
        .nats(&nyc_bus.url())
        .mesh(&ca, &[])
        .start()
        .await;
    assert_eq!(
        nyc.sync_state().await,
        "lost",
        "alone, from the first answer"
    );
    let nyc_client = nyc_bus.client().await;
    nyc.register_until_routed(
        &nyc_client,
        &registration("10.1.0.1", 1, "nyc-app.example.com", "n"),
        "nyc-app.example.com",
    )
    .await;
    let lon = Node::builder("lon-1", "lon")
        .nats(&lon_bus.url())
        .mesh(&ca, &[nyc.mesh_addr()])
        .start()
        .await;
    // Polled as fast as the admin API answers: the first answer that lists nyc's route is
    // followed by a status that is in sync.
    let sync = wait_until(10 * SEC, "nyc's route at lon", || async {
        lon.route("nyc-app.example.com", "").await?;
        Some(lon.sync_state().await)
    })
    .await;
    assert_eq!(sync, "in_sync");
    let (_, healthz) = lon.get("/healthz").await.expect("healthz");
    assert!(healthz.contains(r#""sync":"in_sync""#), "{healthz}");
}
