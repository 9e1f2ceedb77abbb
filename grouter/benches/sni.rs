//! SNI resolution with 10,000 dynamic (uploaded) certificates (issue 13: ≤ 2 µs median),
//! and the memory they take.
//!
//! `cargo bench -p grouter --bench sni`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use grouter::tls::{CertStore, Source};
use rcgen::{CertificateParams, KeyPair};

const CERTS: usize = 10_000;
/// Every this many certificates is a wildcard (`*.tenant-<i>.example.com`).
const WILDCARD_EVERY: usize = 100;

fn host(i: usize) -> String {
    if i % WILDCARD_EVERY == 0 {
        format!("*.tenant-{i}.example.com")
    } else {
        format!("app-{i}.apps.example.com")
    }
}

/// A self-signed certificate for `name` with a fresh ECDSA P-256 key, as PEM.
fn pair(name: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Resident set size in bytes (Linux), 0 elsewhere.
fn rss() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn build(dir: &std::path::Path) -> std::sync::Arc<CertStore> {
    let (cert, key) = pair("default.example.com");
    std::fs::write(dir.join("default.pem"), cert).unwrap();
    std::fs::write(dir.join("default.key"), key).unwrap();
    let store = CertStore::load(dir, &dir.join("default.pem"), &dir.join("default.key")).unwrap();

    let pems: Vec<(String, String, String)> = (0..CERTS)
        .map(|i| {
            let host = host(i);
            let (cert, key) = pair(&host);
            (host, cert, key)
        })
        .collect();
    let der_bytes: usize = pems.iter().map(|(_, cert, _)| cert.len() * 3 / 4).sum();
    let before = rss();
    let start = std::time::Instant::now();
    for (host, cert, key) in &pems {
        store.set_dynamic(host, Source::Upload, cert, key).unwrap();
    }
    let took = start.elapsed();
    let after = rss();
    eprintln!(
        "{CERTS} dynamic certificates: set_dynamic {:.0} µs each; RSS +{} KiB, ≈ {} B per \
         certificate (leaf DER ≈ {} B)",
        took.as_secs_f64() * 1e6 / CERTS as f64,
        after.saturating_sub(before) / 1024,
        after.saturating_sub(before) / CERTS,
        der_bytes / CERTS,
    );
    // One more change with 10,000 in place: what an upload costs the store.
    let (cert, key) = pair("app-1.apps.example.com");
    let start = std::time::Instant::now();
    store
        .set_dynamic("app-1.apps.example.com", Source::Acme, &cert, &key)
        .unwrap();
    eprintln!("one more set_dynamic at {CERTS}: {:?}", start.elapsed());
    store
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = build(dir.path());
    assert_eq!(store.list().len(), CERTS);

    // Every exact name, visited with a stride so that lookups do not stay in one cache line.
    let names: Vec<String> = (0..CERTS)
        .filter(|i| i % WILDCARD_EVERY != 0)
        .map(host)
        .collect();
    let mut g = c.benchmark_group("sni_10k");
    let mut i = 0usize;
    g.bench_function("exact", |b| {
        b.iter(|| {
            i = (i + 7919) % names.len();
            black_box(store.resolve_name(black_box(Some(&names[i]))))
        })
    });
    g.bench_function("wildcard", |b| {
        b.iter(|| black_box(store.resolve_name(black_box(Some("shop.tenant-1200.example.com")))))
    });
    g.bench_function("miss_default", |b| {
        b.iter(|| black_box(store.resolve_name(black_box(Some("nothing.apps.example.com")))))
    });
    g.bench_function("mixed_case", |b| {
        b.iter(|| black_box(store.resolve_name(black_box(Some("App-3.Apps.Example.com")))))
    });
    g.bench_function("no_sni", |b| {
        b.iter(|| black_box(store.resolve_name(black_box(None))))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
