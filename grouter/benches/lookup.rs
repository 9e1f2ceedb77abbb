//! Route lookup latency on a 200,000-route table (issue 2: ≤ 1 µs median).
//!
//! `cargo bench -p grouter --bench lookup`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use grouter::table::{RouteEntry, RouteKey, Table};

const ROUTES: usize = 200_000;

fn build() -> Table {
    let table = Table::new("lon-1", "lon", 1);
    for i in 0..ROUTES {
        // Mostly plain app hosts; every 10th with a context path; every 100th a wildcard.
        let uri = match i % 100 {
            0 => format!("*.tenant-{i}.example.com"),
            n if n % 10 == 0 => format!("app-{i}.apps.example.com/api/v{}", n / 10),
            _ => format!("app-{i}.apps.example.com"),
        };
        let entry = RouteEntry {
            app: std::sync::Arc::new(
                grouter::table::App::new(grouter::table::AppFields {
                    id: &format!("{i:08x}-5e1c-4c1e-9a77-0f3b2d1a9c10"),
                    name: Some(&format!("app-{i}")),
                    ..Default::default()
                })
                .unwrap(),
            ),
            endpoints: 2,
            instances: 2,
            updated_at_ms: 0,
        };
        table.upsert_local(&std::sync::Arc::new(RouteKey::parse(&uri).unwrap()), entry);
    }
    table
}

fn bench(c: &mut Criterion) {
    let table = build();
    assert_eq!(table.stats().routes, ROUTES);
    let mut g = c.benchmark_group("lookup_200k");
    let mut i = 0usize;
    g.bench_function("exact_host", |b| {
        b.iter(|| {
            i = (i + 7919) % ROUTES;
            let host = format!("app-{}.apps.example.com", i | 1);
            black_box(table.lookup(black_box(&host), "/index.html"))
        })
    });
    // The same work without the format! above, to show the table's own cost.
    let hosts: Vec<String> = (0..4096)
        .map(|i| format!("app-{}.apps.example.com", i * 37 + 1))
        .collect();
    g.bench_function("exact_host_prebuilt", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            black_box(table.lookup(black_box(&hosts[i]), "/index.html"))
        })
    });
    g.bench_function("path_prefix", |b| {
        b.iter(|| black_box(table.lookup(black_box("app-110.apps.example.com"), "/api/v1/users/7")))
    });
    g.bench_function("wildcard", |b| {
        b.iter(|| black_box(table.lookup(black_box("shop.tenant-1200.example.com"), "/")))
    });
    g.bench_function("miss", |b| {
        b.iter(|| black_box(table.lookup(black_box("nothing.apps.example.com"), "/")))
    });
    g.bench_function("mixed_case_with_port", |b| {
        b.iter(|| black_box(table.lookup(black_box("App-3.Apps.Example.com:443"), "/")))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
