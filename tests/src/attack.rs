//! Attacks on the mesh by a member that holds a genuine certificate (issue 11): each test
//! plays the attacker with the harness of [`grouter_tests::evil`] against real `grouter`
//! processes and asserts what a user of the victim would notice: its routes (`/v1/routes`),
//! its answers to HTTP requests and DNS queries, and its sync state are as before the
//! attack, and the refusal is counted by reason in `grouter_mesh_deltas_rejected_total`.
//!
//! Most tests run a partial mesh of three sites, `lon-1` (the victim, `p`) — `sgp-1` (the
//! relay, `r`) — `nyc-1` (the owner, `q`): `p` and `q` advertise a mesh address nobody
//! listens on, so neither can dial the other, and `p` learns `q`'s partition only through
//! `r`. That is the position in which a relayed partition matters: a node connected to the
//! owner directly takes the partition from the owner only.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use grouter_protocol::mesh::{self as wire, frame::Body};
use grouter_tests::evil::{EvilIdentity, EvilListener, EvilPeer, garbage, now_micros};
use grouter_tests::inproc::registration;
use grouter_tests::{MeshCa, NatsServer, Node, wait_until};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use serde_json::Value;
use tokio::net::UdpSocket;

const SEC: Duration = Duration::from_secs(1);
const LON_ADDR: &str = "192.0.2.10";
const NYC_ADDR: &str = "198.51.100.10";
const SGP_ADDR: &str = "203.0.113.10";
/// An address an attacker would like DNS to hand out.
const EVIL_ADDR: &str = "203.0.113.66";
/// lon's resolver (mapped to lon by `dns.client_networks`).
const LON_RESOLVER: &str = "127.0.0.2";
/// A mesh address nobody listens on: a node advertising it cannot be dialled.
const NOWHERE: &str = "127.0.0.1:1";
const SHOP: &str = "shop.apps.example.com";
const HOME: &str = "home.apps.example.com";
const REASON_METRIC: &str = "grouter_mesh_deltas_rejected_total";

fn dns_toml(site_addr: &str) -> String {
    format!(
        "\n[dns]\nlisten = \"127.0.0.1:0\"\nzones = [\"apps.example.com\"]\nttl_secs = 5\n\
         site_addresses = [\"{site_addr}\"]\n\
         client_networks = {{ \"{LON_RESOLVER}/32\" = \"lon\" }}\n"
    )
}

/// The partial mesh `p`–`r`–`q` of the module docs, each node with its own bus and a DNS
/// front; `p` redirects requests for apps served elsewhere (so an HTTP answer names the
/// serving site without dialling it). `p_mesh` is added to `p`'s `[mesh]` section.
/// Returns once `p` is `in_sync`, `q`'s `shop` is routed at `p` through `r`, and `p`'s own
/// `home` is routed.
struct Trio {
    ca: MeshCa,
    buses: [NatsServer; 3],
    p: Node,
    r: Node,
    q: Node,
}

impl Trio {
    async fn start(p_mesh: &str) -> Trio {
        let ca = MeshCa::new();
        let buses = [
            NatsServer::start(),
            NatsServer::start(),
            NatsServer::start(),
        ];
        let r = Node::builder("sgp-1", "sgp")
            .nats(&buses[1].url())
            .mesh(&ca, &[])
            .extra(&dns_toml(SGP_ADDR))
            .start()
            .await;
        let p = Node::builder("lon-1", "lon")
            .nats(&buses[0].url())
            .mesh(&ca, &[r.mesh_addr()])
            .mesh_option(&format!("advertise = \"{NOWHERE}\""))
            .mesh_option(p_mesh)
            .extra(&dns_toml(LON_ADDR))
            .redirect()
            .start()
            .await;
        let q = Node::builder("nyc-1", "nyc")
            .nats(&buses[2].url())
            .mesh(&ca, &[r.mesh_addr()])
            .mesh_option(&format!("advertise = \"{NOWHERE}\""))
            .extra(&dns_toml(NYC_ADDR))
            .start()
            .await;
        let trio = Trio { ca, buses, p, r, q };
        let q_bus = trio.buses[2].client().await;
        trio.q
            .register_until_routed(&q_bus, &registration("10.1.0.1", 1, SHOP, "shop"), SHOP)
            .await;
        let p_bus = trio.buses[0].client().await;
        trio.p
            .register_until_routed(&p_bus, &registration("10.0.0.1", 1, HOME, "home"), HOME)
            .await;
        wait_until(15 * SEC, "q's route at p, through r", || async {
            (sites_of(&trio.p, SHOP).await == ["nyc"]).then_some(())
        })
        .await;
        wait_until(10 * SEC, "p in sync", || async {
            (trio.p.sync_state().await == "in_sync").then_some(())
        })
        .await;
        assert!(
            !peer_ids(&trio.p).await.contains(&"nyc-1".to_string()),
            "p and q must not be connected directly for this fixture to mean anything"
        );
        trio
    }

    /// Register `host` at q's site and wait until p routes it (through r).
    async fn q_registers(&self, host: &str, ip: &str) {
        let bus = self.buses[2].client().await;
        self.q
            .register_until_routed(&bus, &registration(ip, 1, host, "later"), host)
            .await;
        wait_until(10 * SEC, "q's new route at p", || async {
            (sites_of(&self.p, host).await == ["nyc"]).then_some(())
        })
        .await;
    }
}

/// The sites serving `host` per `node`'s `/v1/routes`.
async fn sites_of(node: &Node, host: &str) -> Vec<String> {
    let Some(route) = node.route(host, "").await else {
        return vec![];
    };
    route["sites"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|s| s["site"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Node ids of `node`'s direct peers.
async fn peer_ids(node: &Node) -> Vec<String> {
    node.json("/v1/peers").await["peers"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter_map(|p| p["node_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `node_id → (generation, max_version)` of every partition `node` holds.
async fn watermarks(node: &Node) -> Vec<(String, u64, u64)> {
    node.json("/v1/peers").await["watermarks"]
        .as_array()
        .map(|w| {
            w.iter()
                .map(|w| {
                    (
                        w["node_id"].as_str().unwrap_or_default().to_string(),
                        w["generation"].as_u64().unwrap_or_default(),
                        w["max_version"].as_u64().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Partitions counted as dropped at `node` for `reason` so far.
async fn rejected(node: &Node, reason: &str) -> f64 {
    node.metric_labelled(REASON_METRIC, &format!("reason=\"{reason}\""))
        .await
        .unwrap_or(0.0)
}

/// Refusals of `reason` that `node` counted against what `peer` sent, per `/v1/peers` (the
/// peer's own entry while it is connected, else the list of past peers).
async fn peer_rejections(node: &Node, peer: &str, reason: &str) -> u64 {
    let peers = node.json("/v1/peers").await;
    let live = peers["peers"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["node_id"] == peer))
        .map(|p| p["rejections"][reason].clone());
    live.unwrap_or_else(|| peers["rejections"][peer][reason].clone())
        .as_u64()
        .unwrap_or(0)
}

/// Wait until `node` has counted at least `at_least` rejections for `reason`.
async fn wait_rejected(node: &Node, reason: &str, at_least: f64) {
    wait_until(
        5 * SEC,
        &format!("{at_least} rejections for {reason}"),
        || async { (rejected(node, reason).await >= at_least).then_some(()) },
    )
    .await;
}

/// What a user of the victim sees: its routes, its answer to a request for `shop` (status,
/// `Location`, `X-Grouter-Site`), its DNS answer for `shop` and for `names`, its sync state.
#[derive(Debug, PartialEq)]
struct Seen {
    routes: Value,
    shop: (u16, String, String),
    dns: Vec<(String, Vec<IpAddr>)>,
    sync: String,
}

/// Hosts whose DNS answers [`seen`] records.
const NAMES: [&str; 3] = [SHOP, HOME, "ghost.apps.example.com"];

async fn seen(node: &Node) -> Seen {
    let mut dns = Vec::new();
    for name in NAMES {
        dns.push((name.to_string(), dns_a(node, name).await));
    }
    Seen {
        routes: node.json("/v1/routes").await,
        shop: http_get(node, SHOP).await,
        dns,
        sync: node.sync_state().await,
    }
}

/// GET `/` with `Host: host` through `node`'s HTTP listener.
async fn http_get(node: &Node, host: &str) -> (u16, String, String) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = client
        .get(format!("http://{}/", node.http_addr()))
        .header("host", host)
        .timeout(5 * SEC)
        .send()
        .await
        .expect("request through the node");
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    (
        resp.status().as_u16(),
        header("location"),
        header("x-grouter-site"),
    )
}

fn dns_server(node: &Node) -> SocketAddr {
    node.log.wait_for(10 * SEC, "the dns listener", |l| {
        let v: Value = serde_json::from_str(l).ok()?;
        (v["message"] == "listening" && v["service"] == "dns")
            .then(|| v["addr"].as_str()?.parse::<SocketAddr>().ok())?
    })
}

/// The A records `node`'s DNS front gives lon's resolver for `name`, sorted.
async fn dns_a(node: &Node, name: &str) -> Vec<IpAddr> {
    let server = dns_server(node);
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let sock = UdpSocket::bind((LON_RESOLVER.parse::<IpAddr>().unwrap(), 0))
        .await
        .unwrap();
    sock.send_to(&m.to_vec().unwrap(), server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(2 * SEC, sock.recv(&mut buf))
        .await
        .expect("a DNS answer")
        .unwrap();
    let answer = Message::from_vec(&buf[..n]).unwrap();
    let mut ips: Vec<IpAddr> = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    ips.sort();
    ips
}

/// A route value for a wire entry.
fn route(app: &str) -> Option<wire::RouteValue> {
    Some(wire::RouteValue {
        app_id: app.into(),
        app_name: app.into(),
        endpoints: 1,
        instances: 1,
        updated_at_ms: 1,
        ..Default::default()
    })
}

fn entry(host: &str, version: u64, value: Option<wire::RouteValue>) -> wire::Entry {
    wire::Entry {
        host: host.into(),
        path: String::new(),
        version,
        route: value,
    }
}

/// A partition of a node no certificate names, with a node record that advertises
/// `advertise` (mesh and proxy) and [`EVIL_ADDR`] as its site's DNS address.
fn ghost(
    node_id: &str,
    site: &str,
    advertise: &str,
    entries: Vec<wire::Entry>,
) -> wire::PartitionDelta {
    let up_to = entries.iter().map(|e| e.version).max().unwrap_or(1) + 1;
    wire::PartitionDelta {
        node_id: node_id.into(),
        site: site.into(),
        generation: 1,
        from_version: 0,
        up_to_version: up_to,
        reset: true,
        record: Some(wire::NodeRecord {
            version: up_to,
            region: String::new(),
            advertise: advertise.into(),
            heartbeat: 1,
            healthy: true,
            site_addresses: vec![EVIL_ADDR.into()],
            proxy_address: advertise.into(),
        }),
        entries,
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// (f) The partial mesh itself: the owner's partition reaches p through r, verified.

#[tokio::test]
async fn a_partial_mesh_relays_the_owners_partition_verified() {
    let trio = Trio::start("").await;
    // p routes q's app as nyc's (a redirect names nyc's host) and answers DNS with nyc's
    // entry address, having never spoken to q.
    assert_eq!(
        http_get(&trio.p, SHOP).await,
        (
            307,
            "http://shop.nyc.apps.example.com/".to_string(),
            "lon".to_string()
        )
    );
    assert_eq!(
        dns_a(&trio.p, SHOP).await,
        [NYC_ADDR.parse::<IpAddr>().unwrap()]
    );
    // Changes keep flowing through r: a new route and a withdrawal.
    trio.q_registers("later.apps.example.com", "10.1.0.2").await;
    let bus = trio.buses[2].client().await;
    grouter_tests::inproc::publish(
        &bus,
        "router.unregister",
        &serde_json::json!({"host": "10.1.0.2", "port": 1, "uris": ["later.apps.example.com"]}),
    )
    .await;
    wait_until(10 * SEC, "the withdrawal at p", || async {
        trio.p
            .route("later.apps.example.com", "")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    // Everything r relayed verified: nothing was dropped for want of a valid seal.
    for reason in ["bad_signature", "unknown_owner", "malformed"] {
        assert_eq!(rejected(&trio.p, reason).await, 0.0, "{reason}");
    }
    assert!(!peer_ids(&trio.p).await.contains(&"nyc-1".to_string()));
    let _ = &trio.r;
    let _ = &trio.ca;
}

// ---------------------------------------------------------------------------------------------
// (c) Invented nodes: node ids no certificate names.

#[tokio::test]
async fn invented_nodes_are_not_imported_dialled_or_answered() {
    let trio = Trio::start("").await;
    let attacker = EvilIdentity::issue(&trio.ca, "sgp-9", "sgp");
    let mut listener = EvilListener::bind(&attacker).await;
    let before = seen(&trio.p).await;
    let mut evil = EvilPeer::dial(&attacker, trio.p.mesh_addr()).await;
    let lure = listener.addr().to_string();
    evil.send(Body::Delta(wire::Delta {
        partitions: vec![
            // A ghost at the victim's own site claiming nyc's app: local wins, so p would
            // serve shop itself.
            ghost(
                "lon-ghost",
                "lon",
                &lure,
                vec![entry(SHOP, 1, route("shop"))],
            ),
            // A ghost at nyc adding the attacker's address to nyc's DNS answers and luring
            // every node to dial (and proxy to) the attacker's listener.
            ghost(
                "nyc-ghost",
                "nyc",
                &lure,
                vec![
                    entry(SHOP, 1, route("shop")),
                    entry("ghost.apps.example.com", 2, route("ghost")),
                ],
            ),
        ],
    }));
    evil.sync().await;
    // Long enough for the dial loop (every 200 ms) to have acted on a new address: two of
    // p's digest intervals.
    evil.wait_digests(2).await;
    assert_eq!(seen(&trio.p).await, before);
    let held: Vec<String> = watermarks(&trio.p).await.into_iter().map(|w| w.0).collect();
    assert!(
        !held.iter().any(|n| n.contains("ghost")),
        "p holds a ghost: {held:?}"
    );
    assert_eq!(
        listener.connections(),
        0,
        "something dialled the ghost's address"
    );
    assert!(listener.accept(Duration::ZERO).await.is_none());
    // Nor did p relay them: r holds no ghost either.
    let at_r: Vec<String> = watermarks(&trio.r).await.into_iter().map(|w| w.0).collect();
    assert!(!at_r.iter().any(|n| n.contains("ghost")), "{at_r:?}");
    // p still takes q's updates.
    trio.q_registers("later.apps.example.com", "10.1.0.2").await;
}

// ---------------------------------------------------------------------------------------------
// (d) Flood: thousands of invented nodes.

/// Frames of `per_frame` invented partitions of `routes` routes each, `nodes` in all.
fn flood(nodes: usize, routes: usize, per_frame: usize) -> Vec<wire::Delta> {
    (0..nodes)
        .collect::<Vec<_>>()
        .chunks(per_frame)
        .map(|chunk| wire::Delta {
            partitions: chunk
                .iter()
                .map(|i| {
                    let entries = (0..routes)
                        .map(|j| {
                            let v = j as u64 + 1;
                            entry(
                                &format!("r{j}.g{i}.apps.example.com"),
                                v,
                                route(&format!("g{i}")),
                            )
                        })
                        .collect();
                    let pd = ghost(&format!("flood-{i}"), "sgp", NOWHERE, entries);
                    // Half of them sealed (with noise, as no certificate names them), half
                    // not (staged, waiting for a seal).
                    if i % 2 == 0 {
                        wire::PartitionDelta {
                            seal: forged_seal(0x0403),
                            ..pd
                        }
                    } else {
                        pd
                    }
                })
                .collect(),
        })
        .collect()
}

#[tokio::test]
async fn a_flood_of_invented_nodes_costs_nothing_and_goes_nowhere() {
    let trio = Trio::start("").await;
    let attacker = EvilIdentity::issue(&trio.ca, "sgp-9", "sgp");
    let before = seen(&trio.p).await;
    let rss_before = trio.p.rss_kib();
    let unknown_before = rejected(&trio.p, "unknown_owner").await;
    let mut evil = EvilPeer::dial(&attacker, trio.p.mesh_addr()).await;
    let frames = flood(2_000, 50, 40);
    let mut bytes = 0;
    for d in frames {
        let encoded = wire::encode(Body::Delta(d));
        bytes += encoded.len();
        evil.send_raw(&encoded);
    }
    assert!(bytes > 4_000_000, "the flood is {bytes} bytes");
    evil.sync().await;
    evil.wait_digests(2).await;
    let rss_after = trio.p.rss_kib();
    assert_eq!(seen(&trio.p).await, before);
    for node in [&trio.p, &trio.r, &trio.q] {
        let held: Vec<String> = watermarks(node).await.into_iter().map(|w| w.0).collect();
        assert!(
            !held.iter().any(|n| n.starts_with("flood-")),
            "a flooded partition is held: {held:?}"
        );
        assert!(node.route("r0.g0.apps.example.com", "").await.is_none());
    }
    // Every sealed one refused as a node no certificate names.
    wait_rejected(&trio.p, "unknown_owner", unknown_before + 1_000.0).await;
    assert_eq!(
        peer_rejections(&trio.p, "sgp-9", "unknown_owner").await,
        1_000
    );
    let grown = rss_after.saturating_sub(rss_before);
    assert!(
        grown < 24 * 1024,
        "p grew by {grown} KiB for a flood of {bytes} bytes it refused"
    );
}

// ---------------------------------------------------------------------------------------------
// (g) Garbage.

#[tokio::test]
async fn garbage_is_refused_without_harm() {
    let trio = Trio::start("").await;
    let attacker = EvilIdentity::issue(&trio.ca, "sgp-9", "sgp");
    let before = seen(&trio.p).await;

    // Random bytes as a frame: not a frame, the connection is dropped.
    let mut evil = EvilPeer::dial(&attacker, trio.p.mesh_addr()).await;
    evil.send_raw(&garbage(1, 4096));
    assert!(evil.closed_within(5 * SEC).await, "random frame kept");
    // Random bytes with no framing at all (a random length prefix).
    let mut evil = EvilPeer::dial(&attacker, trio.p.mesh_addr()).await;
    evil.send_bytes(&garbage(2, 64 * 1024));
    assert!(evil.closed_within(5 * SEC).await, "random stream kept");
    // A length prefix over the frame cap: refused before anything is buffered.
    let rss = trio.p.rss_kib();
    let mut evil = EvilPeer::dial(&attacker, trio.p.mesh_addr()).await;
    let over = u32::try_from(wire::MAX_FRAME + 1).unwrap();
    evil.send_bytes(&over.to_be_bytes());
    evil.send_bytes(&garbage(3, 1024 * 1024));
    assert!(evil.closed_within(5 * SEC).await, "oversized frame kept");
    assert!(
        trio.p.rss_kib() < rss + 16 * 1024,
        "the oversized frame was buffered"
    );

    // Deltas that decode but make no sense: refused, counted, the connection kept.
    let mut evil = EvilPeer::dial(&attacker, trio.p.mesh_addr()).await;
    let malformed_before = rejected(&trio.p, "malformed").await;
    let nonsense = [
        // Duplicate keys.
        ghost(
            "sgp-9",
            "sgp",
            NOWHERE,
            vec![entry(SHOP, 1, route("a")), entry(SHOP, 2, None)],
        ),
        // A version above the watermark the delta claims.
        wire::PartitionDelta {
            up_to_version: 1,
            ..ghost("sgp-9", "sgp", NOWHERE, vec![entry(SHOP, 5, route("a"))])
        },
        // No node id.
        ghost("", "sgp", NOWHERE, vec![entry(SHOP, 1, route("a"))]),
        // A key that is not a route key.
        ghost(
            "sgp-9",
            "sgp",
            NOWHERE,
            vec![entry("NOT A HOST/..", 1, route("a"))],
        ),
    ];
    let n = nonsense.len();
    for pd in nonsense {
        evil.send(Body::Delta(wire::Delta {
            partitions: vec![pd],
        }));
    }
    evil.sync().await;
    wait_rejected(&trio.p, "malformed", malformed_before + n as f64).await;
    assert_eq!(seen(&trio.p).await, before);
    assert!(trio.p.route(SHOP, "").await.is_some());
    trio.q_registers("later.apps.example.com", "10.1.0.2").await;
}

// ---------------------------------------------------------------------------------------------
// Genuine frames of other nodes, to replay and tamper with.

/// q's partition as r relays it, sealed by q and with q's certificate: asked of r by a
/// member that says it holds nothing.
async fn q_partition_from_r(trio: &Trio, attacker: &EvilIdentity) -> wire::PartitionDelta {
    let mut at_r = EvilPeer::dial(attacker, trio.r.mesh_addr()).await;
    let got = at_r
        .fetch_partitions("q's sealed partition from r", |got| {
            got.iter()
                .any(|pd| pd.node_id == "nyc-1" && pd.seal.is_some() && !pd.owner_cert.is_empty())
        })
        .await;
    let mut q: Vec<wire::PartitionDelta> =
        got.into_iter().filter(|pd| pd.node_id == "nyc-1").collect();
    assert_eq!(q.len(), 1, "q's partition in one frame: {q:?}");
    let q = q.remove(0);
    assert!(
        q.entries
            .iter()
            .any(|e| e.host == SHOP && e.route.is_some()),
        "q's partition serves shop: {q:?}"
    );
    q
}

/// A seal of `scheme` whose signature is noise.
fn forged_seal(scheme: u32) -> Option<wire::Seal> {
    Some(wire::Seal {
        scheme,
        signature: garbage(7, 72),
    })
}

// ---------------------------------------------------------------------------------------------
// (a) A relay erasing another node's route at version 2^62.

#[tokio::test]
async fn a_relay_cannot_erase_or_roll_back_another_nodes_partition() {
    let trio = Trio::start("").await;
    let attacker = EvilIdentity::issue(&trio.ca, "sgp-9", "sgp");
    let genuine = q_partition_from_r(&trio, &attacker).await;
    let seal = genuine.seal.clone().unwrap();
    let before = seen(&trio.p).await;
    let (sig_before, unknown_before) = (
        rejected(&trio.p, "bad_signature").await,
        rejected(&trio.p, "unknown_owner").await,
    );

    let huge = 1u64 << 62;
    // q's partition with shop tombstoned at 2^62, on from where p holds it.
    let erase = wire::PartitionDelta {
        from_version: genuine.up_to_version,
        up_to_version: huge,
        reset: false,
        record: None,
        entries: vec![entry(SHOP, huge, None)],
        ..genuine.clone()
    };
    // The same as a reset of the whole partition: nothing listed, so everything dropped.
    let wipe = wire::PartitionDelta {
        from_version: 0,
        up_to_version: huge,
        reset: true,
        entries: vec![],
        ..genuine.clone()
    };
    let mut evil = EvilPeer::dial(&attacker, trio.p.mesh_addr()).await;
    let attempts = [
        // A seal of noise with q's certificate.
        wire::PartitionDelta {
            seal: forged_seal(seal.scheme),
            ..erase.clone()
        },
        // q's genuine seal of its real state, reused.
        wire::PartitionDelta {
            seal: Some(seal.clone()),
            ..erase.clone()
        },
        wire::PartitionDelta {
            seal: Some(seal.clone()),
            ..wipe.clone()
        },
        // No certificate along: p checks the seal with the one it holds for q.
        wire::PartitionDelta {
            seal: Some(seal.clone()),
            owner_cert: vec![],
            ..erase.clone()
        },
    ];
    let n = attempts.len() as f64;
    for pd in attempts {
        evil.send(Body::Delta(wire::Delta {
            partitions: vec![pd],
        }));
    }
    // And with no seal at all: staged, waiting for a seal that never comes.
    evil.send(Body::Delta(wire::Delta {
        partitions: vec![wire::PartitionDelta {
            seal: None,
            ..erase.clone()
        }],
    }));
    evil.sync().await;
    wait_rejected(&trio.p, "bad_signature", sig_before + n).await;
    assert_eq!(rejected(&trio.p, "unknown_owner").await, unknown_before);
    // The operator sees who sent them, and that the honest relay sent none.
    assert_eq!(
        peer_rejections(&trio.p, "sgp-9", "bad_signature").await,
        n as u64
    );
    assert_eq!(peer_rejections(&trio.p, "sgp-1", "bad_signature").await, 0);
    assert_eq!(seen(&trio.p).await, before);
    let (_, gen_q, v_q) = watermarks(&trio.p)
        .await
        .into_iter()
        .find(|w| w.0 == "nyc-1")
        .unwrap();
    assert_eq!(gen_q, genuine.generation);
    assert!(v_q < huge, "p holds q at version {v_q}");

    // q's later updates still arrive through r...
    trio.q_registers("later.apps.example.com", "10.1.0.2").await;
    // ...and q's genuine old state, replayed, does not roll them back (old news: nothing
    // to apply, so nothing changes).
    let held_q = |w: Vec<(String, u64, u64)>| w.into_iter().find(|w| w.0 == "nyc-1");
    let q_before = held_q(watermarks(&trio.p).await).unwrap();
    evil.send(Body::Delta(wire::Delta {
        partitions: vec![genuine.clone()],
    }));
    evil.sync().await;
    let q_after = held_q(watermarks(&trio.p).await).unwrap();
    assert_eq!(q_after.1, q_before.1);
    assert!(
        q_after.2 >= q_before.2,
        "rolled back: {q_before:?} -> {q_after:?}"
    );
    assert_eq!(sites_of(&trio.p, "later.apps.example.com").await, ["nyc"]);
    assert_eq!(sites_of(&trio.p, SHOP).await, ["nyc"]);
    assert_eq!(trio.p.sync_state().await, "in_sync");
}

// ---------------------------------------------------------------------------------------------
// (b) Generation lock-out.

#[tokio::test]
async fn a_future_generation_locks_nobody_out() {
    let mut trio = Trio::start("").await;
    let attacker = EvilIdentity::issue(&trio.ca, "sgp-9", "sgp");
    let genuine = q_partition_from_r(&trio, &attacker).await;
    let before = seen(&trio.p).await;
    let future_before = rejected(&trio.p, "generation_in_future").await;
    let mut evil = EvilPeer::dial(&attacker, trio.p.mesh_addr()).await;

    // q at generation u64::MAX and an hour ahead, with q's seal and certificate...
    let mut attempts = vec![];
    for generation in [u64::MAX, now_micros() + 3_600_000_000] {
        attempts.push(wire::PartitionDelta {
            generation,
            ..genuine.clone()
        });
    }
    // ...and sealed by the attacker's own key, under its own certificate.
    let trust = attacker.trust();
    let (scheme, signature) =
        grouter::mesh::sync::Trust::sign(&trust, b"nyc-1 at u64::MAX").unwrap();
    attempts.push(wire::PartitionDelta {
        generation: u64::MAX,
        seal: Some(wire::Seal { scheme, signature }),
        owner_cert: attacker.cert_der(),
        ..genuine.clone()
    });
    // The attacker's own genuine partition at u64::MAX (an owner dating itself ahead).
    let own = attacker.partition(u64::MAX);
    own.upsert("mine.apps.example.com", "mine");
    attempts.extend(own.delta("lon-1").partitions);
    let n = attempts.len() as f64;
    for pd in attempts {
        evil.send(Body::Delta(wire::Delta {
            partitions: vec![pd],
        }));
    }
    evil.sync().await;
    wait_rejected(&trio.p, "generation_in_future", future_before + n).await;
    assert_eq!(seen(&trio.p).await, before);
    assert!(
        watermarks(&trio.p).await.iter().all(|w| w.1 < u64::MAX / 2),
        "a generation in the future is held"
    );
    // The attacker, honest again with a real start time, is not locked out of its own
    // partition either.
    let honest = attacker.partition(now_micros());
    honest.upsert("mine.apps.example.com", "mine");
    evil.send(Body::Delta(honest.delta("lon-1")));
    evil.sync().await;
    wait_until(5 * SEC, "the attacker's honest partition", || async {
        (sites_of(&trio.p, "mine.apps.example.com").await == ["sgp"]).then_some(())
    })
    .await;

    // q restarts: p takes its new generation (relayed by r) and its routes as they return.
    trio.q.restart().await;
    let bus = trio.buses[2].client().await;
    trio.q
        .register_until_routed(&bus, &registration("10.1.0.1", 1, SHOP, "shop"), SHOP)
        .await;
    wait_until(15 * SEC, "q's new generation at p", || async {
        let (_, g, _) = watermarks(&trio.p)
            .await
            .into_iter()
            .find(|w| w.0 == "nyc-1")?;
        (g > genuine.generation).then_some(())
    })
    .await;
    trio.q_registers("later.apps.example.com", "10.1.0.2").await;
    assert_eq!(sites_of(&trio.p, SHOP).await, ["nyc"]);
    assert_eq!(trio.p.sync_state().await, "in_sync");
}

// ---------------------------------------------------------------------------------------------
// (c, sealed) Invented nodes that bring a seal: no certificate, or one of another node.

#[tokio::test]
async fn invented_nodes_with_seals_are_unknown_owners() {
    let trio = Trio::start("").await;
    let attacker = EvilIdentity::issue(&trio.ca, "sgp-9", "sgp");
    let mut listener = EvilListener::bind(&attacker).await;
    let lure = listener.addr().to_string();
    let before = seen(&trio.p).await;
    let unknown_before = rejected(&trio.p, "unknown_owner").await;
    let trust = attacker.trust();
    let (scheme, signature) =
        grouter::mesh::sync::Trust::sign(&trust, b"a ghost's statement").unwrap();
    let sealed = |pd: wire::PartitionDelta, cert: Vec<u8>| wire::PartitionDelta {
        seal: Some(wire::Seal {
            scheme,
            signature: signature.clone(),
        }),
        owner_cert: cert,
        ..pd
    };
    let mut evil = EvilPeer::dial(&attacker, trio.p.mesh_addr()).await;
    let attempts = [
        // No certificate at all.
        sealed(
            ghost(
                "lon-ghost",
                "lon",
                &lure,
                vec![entry(SHOP, 1, route("shop"))],
            ),
            vec![],
        ),
        // The attacker's genuine certificate, which names sgp-9, not the ghost.
        sealed(
            ghost(
                "lon-ghost",
                "lon",
                &lure,
                vec![entry(SHOP, 1, route("shop"))],
            ),
            attacker.cert_der(),
        ),
        sealed(
            ghost(
                "nyc-ghost",
                "nyc",
                &lure,
                vec![entry("ghost.apps.example.com", 1, route("ghost"))],
            ),
            attacker.cert_der(),
        ),
        // Not a certificate.
        sealed(
            ghost(
                "nyc-ghost",
                "nyc",
                &lure,
                vec![entry(SHOP, 1, route("shop"))],
            ),
            garbage(9, 600),
        ),
    ];
    let n = attempts.len() as f64;
    for pd in attempts {
        evil.send(Body::Delta(wire::Delta {
            partitions: vec![pd],
        }));
    }
    evil.sync().await;
    evil.wait_digests(2).await;
    // Noise where a certificate should be is not from the mesh CA: counted as such, or as
    // an unknown owner; either way refused.
    let unknown_ca = rejected(&trio.p, "unknown_ca").await;
    assert!(
        rejected(&trio.p, "unknown_owner").await + unknown_ca >= unknown_before + n,
        "every ghost refused and counted"
    );
    assert!(rejected(&trio.p, "unknown_owner").await >= unknown_before + n - 1.0);
    assert!(peer_rejections(&trio.p, "sgp-9", "unknown_owner").await >= 3);
    assert_eq!(seen(&trio.p).await, before);
    assert_eq!(
        listener.connections(),
        0,
        "something dialled the ghost's address"
    );
    assert!(listener.accept(Duration::ZERO).await.is_none());
    assert!(
        !watermarks(&trio.p)
            .await
            .iter()
            .any(|w| w.0.contains("ghost"))
    );
}

// ---------------------------------------------------------------------------------------------
// (d) Bounds on what a genuine member can make a node hold.

#[tokio::test]
async fn a_member_over_the_limits_is_refused() {
    let trio = Trio::start("max_nodes = 6\nmax_entries_per_partition = 1000").await;
    let attacker = EvilIdentity::issue(&trio.ca, "sgp-9", "sgp");
    let over_before = rejected(&trio.p, "over_limit").await;
    let mut evil = EvilPeer::dial(&attacker, trio.p.mesh_addr()).await;

    // Its own genuine partition of 1,500 routes, over max_entries_per_partition.
    let own = attacker.partition(now_micros());
    for i in 0..1_500 {
        own.upsert(&format!("r{i}.big.apps.example.com"), "big");
    }
    evil.send(Body::Delta(own.delta("lon-1")));
    evil.sync().await;
    wait_rejected(&trio.p, "over_limit", over_before + 1.0).await;
    assert!(trio.p.route("r0.big.apps.example.com", "").await.is_none());
    assert!(
        !watermarks(&trio.p).await.iter().any(|w| w.0 == "sgp-9"),
        "the oversized partition is held"
    );

    // Genuine partitions of five more certified nodes, relayed: p holds three (lon-1,
    // sgp-1, nyc-1), so three more reach max_nodes and the other two are refused.
    let others: Vec<EvilIdentity> = (10..15)
        .map(|i| EvilIdentity::issue(&trio.ca, &format!("sgp-{i}"), "sgp"))
        .collect();
    for (i, other) in others.iter().enumerate() {
        let part = other.partition(now_micros());
        part.upsert(&format!("n{i}.apps.example.com"), "n");
        evil.send(Body::Delta(part.delta("lon-1")));
    }
    evil.sync().await;
    wait_rejected(&trio.p, "over_limit", over_before + 3.0).await;
    let held = watermarks(&trio.p).await;
    assert_eq!(held.len(), 6, "{held:?}");
    let mut routed = 0;
    for i in 0..5 {
        if trio
            .p
            .route(&format!("n{i}.apps.example.com"), "")
            .await
            .is_some()
        {
            routed += 1;
        }
    }
    assert_eq!(routed, 3, "routes of the nodes within max_nodes");
    // The real nodes are unaffected, and q's updates still arrive.
    assert_eq!(sites_of(&trio.p, SHOP).await, ["nyc"]);
    assert_eq!(sites_of(&trio.p, HOME).await, ["lon"]);
    trio.q_registers("later.apps.example.com", "10.1.0.2").await;
    assert_eq!(trio.p.sync_state().await, "in_sync");
}

// ---------------------------------------------------------------------------------------------
// (e) Per-site name authority.

#[tokio::test]
async fn a_site_announces_only_its_domains() {
    let trio = Trio::start("site_domains = { \"nyc\" = [\"apps.example.com\"] }").await;
    let attacker = EvilIdentity::issue(&trio.ca, "nyc-9", "nyc");
    let before = rejected(&trio.p, "domain_not_allowed").await;
    let mut evil = EvilPeer::dial(&attacker, trio.p.mesh_addr()).await;
    let own = attacker.partition(now_micros());
    own.upsert("ok.apps.example.com", "ok");
    own.upsert("login.bank.example.org", "bank");
    evil.send(Body::Delta(own.delta("lon-1")));
    evil.sync().await;
    wait_until(5 * SEC, "the allowed route", || async {
        (sites_of(&trio.p, "ok.apps.example.com").await == ["nyc"]).then_some(())
    })
    .await;
    wait_rejected(&trio.p, "domain_not_allowed", before + 1.0).await;
    assert_eq!(
        peer_rejections(&trio.p, "nyc-9", "domain_not_allowed").await,
        1
    );
    assert!(trio.p.route("login.bank.example.org", "").await.is_none());
    // A user asking p for the name gets what p answers for a name nobody serves.
    let client = reqwest::Client::new();
    let resp = client
        .get(format!("http://{}/", trio.p.http_addr()))
        .header("host", "login.bank.example.org")
        .timeout(5 * SEC)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    assert_eq!(
        resp.headers()
            .get("x-cf-routererror")
            .and_then(|v| v.to_str().ok()),
        Some("unknown_route")
    );
    // The allowed one is redirected to nyc like any nyc app.
    assert_eq!(
        http_get(&trio.p, "ok.apps.example.com").await.1,
        "http://ok.nyc.apps.example.com/"
    );
}

/// A stolen node key is revoked with `grouter tls revoke`: within 2 s of the CRL change every
/// node has closed its connections to the revoked node, dropped its partition (its routes
/// are gone everywhere, relays included), and refuses it at the handshake; the others keep
/// routing each other's apps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_refused_and_its_partition_gone_everywhere_within_2_s() {
    let ca = MeshCa::new();
    let crl = ca.dir().join("crl.pem");
    let crl_option = format!("crl = {:?}", crl.display().to_string());
    let buses = [
        NatsServer::start(),
        NatsServer::start(),
        NatsServer::start(),
    ];
    let lon = Node::builder("lon-1", "lon")
        .nats(&buses[0].url())
        .mesh(&ca, &[])
        .mesh_option(&crl_option)
        .start()
        .await;
    let nyc = Node::builder("nyc-1", "nyc")
        .nats(&buses[1].url())
        .mesh(&ca, &[lon.mesh_addr()])
        .mesh_option(&crl_option)
        .start()
        .await;
    let sgp = Node::builder("sgp-1", "sgp")
        .nats(&buses[2].url())
        .mesh(&ca, &[lon.mesh_addr(), nyc.mesh_addr()])
        .mesh_option(&crl_option)
        .start()
        .await;
    let stolen = "stolen.apps.example.com";
    let sgp_bus = buses[2].client().await;
    sgp.register_until_routed(&sgp_bus, &registration("10.2.0.1", 1, stolen, "s"), stolen)
        .await;
    let nyc_bus = buses[1].client().await;
    nyc.register_until_routed(&nyc_bus, &registration("10.1.0.1", 1, SHOP, "shop"), SHOP)
        .await;
    for node in [&lon, &nyc] {
        wait_until(15 * SEC, "sgp's route everywhere", || async {
            (sites_of(node, stolen).await == ["sgp"]).then_some(())
        })
        .await;
    }
    wait_until(15 * SEC, "nyc's route at lon and sgp", || async {
        (sites_of(&lon, SHOP).await == ["nyc"] && sites_of(&sgp, SHOP).await == ["nyc"])
            .then_some(())
    })
    .await;
    // sgp forwards requests for nyc's app to nyc over the mesh (a pooled connection).
    assert_eq!(sgp.answered_by(SHOP).await.as_deref(), Some("nyc"));

    let out = std::process::Command::new(grouter_tests::grouter_bin())
        .args(["tls", "revoke", "--ca"])
        .arg(ca.dir())
        .args(["--node", "sgp-1"])
        .output()
        .expect("run grouter tls revoke");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked_at = std::time::Instant::now();

    for node in [&lon, &nyc] {
        wait_until(
            (2 * SEC).saturating_sub(revoked_at.elapsed()),
            "sgp-1 disconnected and its partition gone",
            || async {
                let gone = sites_of(node, stolen).await.is_empty()
                    && !peer_ids(node).await.contains(&"sgp-1".to_string())
                    && !node.json("/v1/peers").await["watermarks"]
                        .as_array()
                        .is_some_and(|w| w.iter().any(|w| w["node_id"] == "sgp-1"));
                gone.then_some(())
            },
        )
        .await;
    }
    // nyc no longer serves what sgp forwards: its forwarding connection was closed, and a
    // new one is refused at the handshake.
    wait_until(
        (2 * SEC).saturating_sub(revoked_at.elapsed()),
        "nyc stops serving sgp's forwarded requests",
        || async { (sgp.answered_by(SHOP).await.as_deref() != Some("nyc")).then_some(()) },
    )
    .await;
    let within = revoked_at.elapsed();
    assert!(within <= 2 * SEC, "took {within:?}");
    // It stays out: its redials are refused at the handshake, and nobody relays it back.
    wait_until(10 * SEC, "sgp-1's redials refused", || async {
        let refused = lon.metric("grouter_mesh_handshake_failures_total").await;
        refused.is_some_and(|n| n > 0.0).then_some(())
    })
    .await;
    for node in [&lon, &nyc] {
        assert!(sites_of(node, stolen).await.is_empty());
        assert!(!peer_ids(node).await.contains(&"sgp-1".to_string()));
    }
    // The rest of the mesh carries on.
    assert_eq!(sites_of(&lon, SHOP).await, ["nyc"]);
    assert_eq!(lon.sync_state().await, "in_sync");
}
