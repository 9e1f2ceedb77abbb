//! The fuzz targets' bodies (`grouter::fuzzing`) on stable, over every input committed for
//! them: the seed corpus in `fuzz/corpus/<target>/` and each crash ever found, kept in
//! `fuzz/regressions/<target>/`. A crash fixed once so stays fixed in the ordinary suite;
//! `deploy/fuzz.sh` runs the same bodies under libFuzzer.
//!
//! The binary seeds (mesh frames, DNS packets) are built here from what the product itself
//! sends, and checked against the same bodies; `GROUTER_FUZZ_SEEDS=DIR` also writes them
//! to `DIR/<target>/` (how the committed ones were made).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use grouter::fuzzing;
use grouter::mesh::sync::{self, Owner, PeerView, Rejection, Trust};
use grouter::table::{App, RouteEntry, RouteKey, Table};
use grouter_protocol::mesh::{self as wire, frame::Body};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{Name, RecordType};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files directly in `dir`, sorted (none when it does not exist).
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Run `body` over the corpus of `target` (which must not be empty) and its regressions;
/// fail naming every input that panics.
fn replay(target: &str, body: fn(&[u8])) {
    let corpus = inputs(&fuzz_dir().join("corpus").join(target));
    assert!(
        !corpus.is_empty(),
        "no seed corpus in fuzz/corpus/{target}/"
    );
    let regressions = inputs(&fuzz_dir().join("regressions").join(target));
    let mut failed = Vec::new();
    for file in corpus.iter().chain(&regressions) {
        let data = std::fs::read(file).unwrap();
        if catch_unwind(AssertUnwindSafe(|| body(&data))).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target} panicked on {} of {} inputs: {failed:#?}",
        failed.len(),
        corpus.len() + regressions.len()
    );
}

#[test]
fn nats_message_corpus_and_regressions() {
    replay("nats_message", fuzzing::nats_message);
}

#[test]
fn mesh_frames_corpus_and_regressions() {
    replay("mesh_frames", fuzzing::mesh_frames);
}

#[test]
fn dns_query_corpus_and_regressions() {
    replay("dns_query", fuzzing::dns_query);
}

#[test]
fn http1_head_corpus_and_regressions() {
    replay("http1_head", fuzzing::http1_head);
}

#[test]
fn config_file_corpus_and_regressions() {
    replay("config_file", fuzzing::config_file);
}

/// Write `seeds` to `$GROUTER_FUZZ_SEEDS/<target>/` when that is set.
fn write_seeds(target: &str, seeds: &[(String, Vec<u8>)]) {
    let Some(dir) = std::env::var_os("GROUTER_FUZZ_SEEDS") else {
        return;
    };
    let dir = Path::new(&dir).join(target);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// One input of `mesh_frames`: each frame behind its control byte and 16-bit length.
fn frames(frames: &[(u8, Body)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (control, body) in frames {
        let bytes = wire::encode(body.clone());
        out.push(*control);
        out.extend_from_slice(&u16::try_from(bytes.len()).unwrap().to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

/// The trust of the mesh target: a certificate is `node@site`, a seal any signature.
struct TextTrust(&'static str);

impl Trust for TextTrust {
    fn own_cert(&self) -> Arc<[u8]> {
        Arc::from(self.0.as_bytes())
    }
    fn sign(&self, _: &[u8]) -> Option<(u32, Vec<u8>)> {
        Some((1, b"sealed".to_vec()))
    }
    fn certify(&self, cert: &[u8]) -> Result<Owner, Rejection> {
        let (node, site) = std::str::from_utf8(cert)
            .ok()
            .and_then(|t| t.split_once('@'))
            .ok_or(Rejection::UnknownCa)?;
        Ok(Owner {
            node_id: node.into(),
            site: site.into(),
        })
    }
    fn verify(&self, _: &[u8], _: &[u8], _: u32, signature: &[u8]) -> bool {
        !signature.is_empty()
    }
}

fn key(uri: &str) -> Arc<RouteKey> {
    Arc::new(RouteKey::parse(uri).unwrap())
}

fn entry(app: &str, endpoints: u32) -> RouteEntry {
    RouteEntry {
        app: Arc::new(App::with_id(app)),
        endpoints,
        instances: endpoints,
        updated_at_ms: 0,
    }
}

/// What nyc-1 sends lon-1: its first delta (routes, a tombstone, its record), a digest,
/// a later delta, pings; and a delta it relays for sgp-1.
fn mesh_seeds() -> Vec<(String, Vec<u8>)> {
    let nyc = Table::new("nyc-1", "nyc", 1_600_000_000_000_000);
    let trust = TextTrust("nyc-1@nyc");
    nyc.upsert_local(&key("blog.apps.example.com"), entry("blog", 2));
    nyc.upsert_local(&key("shop.apps.example.com/api"), entry("shop", 1));
    nyc.upsert_local(&key("gone.apps.example.com"), entry("gone", 1));
    nyc.remove_local(&key("gone.apps.example.com"));
    nyc.update_local_record(|r| {
        r.region = "us".into();
        r.heartbeat = 3;
        r.healthy = true;
        r.site_addresses = vec!["192.0.2.10".into()];
    });
    let mut view = PeerView::default();
    let first = sync::delta(&nyc, &trust, &mut view, "lon-1").unwrap();
    let digest = sync::digest(&nyc, |n| n == "lon-1");
    nyc.upsert_local(&key("new.apps.example.com"), entry("new", 1));
    nyc.remove_local(&key("blog.apps.example.com"));
    let later = sync::delta(&nyc, &trust, &mut view, "lon-1").unwrap();

    let sgp = Table::new("sgp-1", "sgp", 1_650_000_000_000_000);
    sgp.upsert_local(&key("*.wild.apps.example.com"), entry("wild", 3));
    let relay = Table::new("nyc-2", "nyc", 1_600_000_000_000_001);
    let from_sgp = sync::delta(
        &sgp,
        &TextTrust("sgp-1@sgp"),
        &mut PeerView::default(),
        "nyc-2",
    )
    .unwrap();
    let applied = sync::apply(
        &sync::Context {
            table: &relay,
            trust: &TextTrust("nyc-2@nyc"),
            is_direct: &|_| false,
            now_micros: 1_700_000_000_000_000,
        },
        &mut sync::Inbox::default(),
        sync::Sender {
            node_id: "sgp-1",
            site: "sgp",
        },
        from_sgp,
    );
    assert!(applied.rejected.is_empty(), "{applied:?}");
    let relayed = sync::delta(
        &relay,
        &TextTrust("nyc-2@nyc"),
        &mut PeerView::default(),
        "lon-1",
    )
    .unwrap();

    let hello = Body::Hello(wire::Hello {
        protocol_version: wire::PROTOCOL_VERSION,
        node_id: "nyc-1".into(),
        site: "nyc".into(),
        generation: 1_600_000_000_000_000,
    });
    vec![
        (
            "first-delta".into(),
            frames(&[(0, hello.clone()), (0, Body::Delta(first.clone()))]),
        ),
        (
            "delta-digest-delta".into(),
            frames(&[
                (0, Body::Delta(first.clone())),
                (0, Body::Digest(digest.clone())),
                (0, Body::Delta(later)),
                (
                    0,
                    Body::Ping(wire::Ping {
                        seq: 7,
                        rtts: Vec::new(),
                    }),
                ),
                (0, Body::Pong(wire::Pong { seq: 7 })),
            ]),
        ),
        (
            "relayed".into(),
            frames(&[(3, Body::Delta(relayed.clone())), (4, Body::Delta(first))]),
        ),
        ("digest".into(), frames(&[(1, Body::Digest(digest))])),
        ("relayed-only".into(), frames(&[(3, Body::Delta(relayed))])),
    ]
}

/// Queries of every type the answer path tells apart, with and without EDNS and ECS.
fn dns_seeds() -> Vec<(String, Vec<u8>)> {
    let query = |name: &str, qtype: RecordType, edns: Option<(u16, Option<&str>)>| {
        let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some((payload, ecs)) = edns {
            let mut e = Edns::new();
            e.set_max_payload(payload);
            if let Some(net) = ecs {
                e.options_mut()
                    .insert(EdnsOption::Subnet(net.parse::<ClientSubnet>().unwrap()));
            }
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    };
    vec![
        (
            "a-local".into(),
            query("app.apps.example.com.", RecordType::A, None),
        ),
        (
            "aaaa-remote-ecs".into(),
            query(
                "blog.apps.example.com.",
                RecordType::AAAA,
                Some((1232, Some("10.2.0.0/16"))),
            ),
        ),
        (
            "a-wildcard-edns".into(),
            query(
                "x.wild.apps.example.com.",
                RecordType::A,
                Some((4096, None)),
            ),
        ),
        (
            "soa-apex".into(),
            query("apps.example.com.", RecordType::SOA, None),
        ),
        (
            "ns-apex".into(),
            query("apps.example.com.", RecordType::NS, None),
        ),
        (
            "any-both".into(),
            query("shop.apps.example.com.", RecordType::ANY, Some((512, None))),
        ),
        (
            "nxdomain".into(),
            query("nope.apps.example.com.", RecordType::A, None),
        ),
        (
            "empty-non-terminal".into(),
            query("a.b.apps.example.com.", RecordType::A, None),
        ),
        ("refused".into(), query("example.org.", RecordType::A, None)),
        (
            "axfr".into(),
            query("apps.example.com.", RecordType::AXFR, None),
        ),
        (
            "ns-glue".into(),
            query("ns1.apps.example.com.", RecordType::A, None),
        ),
    ]
}

#[test]
fn the_products_own_frames_and_queries_pass_the_targets() {
    for (target, seeds, body) in [
        (
            "mesh_frames",
            mesh_seeds(),
            fuzzing::mesh_frames as fn(&[u8]),
        ),
        ("dns_query", dns_seeds(), fuzzing::dns_query),
    ] {
        for (name, bytes) in &seeds {
            if catch_unwind(AssertUnwindSafe(|| body(bytes))).is_err() {
                panic!("{target} panicked on the seed {name}");
            }
        }
        write_seeds(target, &seeds);
    }
}
