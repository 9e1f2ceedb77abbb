//! `grouter-bench`: benchmarks that need real processes (not timed tests).
//!
//! - `grouter-bench ingest`: registrations from a real `nats-server` into the table, with
//!   lookups running at the same time; reports messages/s, lookups/s and memory per endpoint.
//! - `grouter-bench memory`: memory of the registry and table, fed without NATS.
//!
//! The mesh (Issue 3) runs full nodes in-process (`grouter::node::run`, one real `nats-server`
//! per site, mesh certificates from a throw-away CA, every listener on 127.0.0.1:0):
//!
//! - `propagation`: `router.register` at site A's NATS → visible in site C's table.
//! - `full-sync`: a new node learns a 200,000-route partition; time and bytes.
//! - `failure`: kill a node; time until the others' detectors say `dead`.
//! - `idle --minutes N`: three idle nodes; count any suspect/dead verdict.
//! - `wire`: bytes on the wire per route change, above the idle heartbeat traffic.
//! - `mesh-memory`: one table holding 5 sites × 200,000 routes (4 imported via `sync::apply`).
//!
//! Issue 17: `soak --connections N --duration SECS`: one node (a process) holds a crowd of
//! client connections; RSS, descriptors, `/healthz` and attackers' cut-off times
//! (`docs/RELIABILITY.md`, "Soak").
//!
//! Results and the exact commands are recorded in `docs/BENCHMARKS.md`
//! (`cargo run --release -p grouter-bench -- SUBCOMMAND`).
//!
//! It owns the measurements and their reports, nothing else: the `nats-server` launcher,
//! the in-process node, the mesh CA and the relaying network (which counts bytes and
//! throttles) are the integration tests' fixtures (`grouter_tests`), so the benchmarks run
//! exactly what the tests check. Where a benchmark needs a knob a fixture lacks, the knob
//! goes into the fixture.
//!
//! Must never: be a dependency of the product (it depends on `grouter`, never the other
//! way round), bind a fixed port, or leave a `nats-server` or a directory behind (the
//! fixtures stop and remove theirs on drop).

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)]

/// The product's allocator (`grouter/src/main.rs`), so that CPU and memory figures are the
/// daemon's, not the system allocator's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Parser, Subcommand};
use grouter::learn::{self, LearnSettings};
use grouter::metrics::Metrics;
use grouter::table::Table;
use grouter_tests::NatsServer;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "grouter-bench")]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// NATS → table ingest rate with concurrent lookups, and memory per endpoint.
    Ingest {
        /// Distinct routes.
        #[arg(long, default_value_t = 200_000)]
        routes: usize,
        /// Endpoints per route (one register message each).
        #[arg(long, default_value_t = 2)]
        endpoints: usize,
        /// Use this NATS instead of starting a nats-server.
        #[arg(long)]
        nats: Option<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
        /// Offered load in messages/s (0: publish as fast as the client can, one burst).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Also run what a connected mesh peer's session costs the owner while it ingests:
        /// on every table change, the deltas it would push (fold, seal, encode).
        #[arg(long)]
        sealing: bool,
    },
    /// What sealing costs an owner per route change, and verifying a receiver per delta.
    SealCost {
        /// Routes in the partition.
        #[arg(long, default_value_t = 200_000)]
        routes: usize,
        /// Changes per batch size measured.
        #[arg(long, default_value_t = 20_000)]
        changes: usize,
    },
    /// Decoding route-emitter payloads: serde_json's derived visitor against the plain
    /// reader the learner uses (`RegistryMessage::decode`), and the whole validation.
    Parse {
        /// Distinct messages, each decoded `rounds` times by each decoder.
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        /// Passes over the messages.
        #[arg(long, default_value_t = 10)]
        rounds: usize,
    },
    /// Memory of the registry and table holding `routes` x `endpoints`, fed without NATS.
    Memory {
        /// Distinct routes.
        #[arg(long, default_value_t = 200_000)]
        routes: usize,
        /// Endpoints per route.
        #[arg(long, default_value_t = 2)]
        endpoints: usize,
    },
    /// Registration at site A's NATS → visible in site C's table (3 sites, one node each).
    Propagation {
        /// Registrations to publish.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Milliseconds between two registrations.
        #[arg(long, default_value_t = 5)]
        interval_ms: u64,
        /// Spin on `table.lookup` instead of waking on `table.subscribe()` (costs one core).
        #[arg(long)]
        poll: bool,
    },
    /// A route policy written through node A's admin API, until it is in force at B and C
    /// (three sites, in-process): p50/p99 of the slower of the two.
    PolicyPropagation {
        /// Policy writes (one host each).
        #[arg(long, default_value_t = 500)]
        count: usize,
        /// Milliseconds between two writes.
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
    },
    /// Issue 13's scale: route policies and uploaded certificates through the control plane,
    /// then the decision's and SNI's medians and memory per policy and per certificate.
    ControlScale {
        /// Route policies (each on a route of its own).
        #[arg(long, default_value_t = 10_000)]
        policies: usize,
        /// Uploaded certificates.
        #[arg(long, default_value_t = 10_000)]
        certs: usize,
    },
    /// A new node joins and learns a partition of `routes` routes from node A.
    FullSync {
        /// Routes in node A's partition.
        #[arg(long, default_value_t = 200_000)]
        routes: usize,
        /// New nodes to start one after the other (each a fresh node id).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Throttle what the new node receives to this many Mbit/s (0: loopback speed), to
        /// see a sync over a slower link.
        #[arg(long, default_value_t = 0)]
        limit_mbit: u64,
    },
    /// Kill node B; time until A's (and C's) failure detector says dead.
    Failure {
        /// Kills (B is restarted between them).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Mesh heartbeat interval (the default config is 500 ms).
        #[arg(long, default_value_t = 500)]
        heartbeat_ms: u64,
    },
    /// Three idle nodes: count every suspect or dead verdict (there should be none).
    Idle {
        /// How long to watch.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
    /// Bytes on the wire from A to C per route change at A, above idle traffic.
    Wire {
        /// Route changes at A (first half new routes, second half endpoint-count updates).
        #[arg(long, default_value_t = 10_000)]
        changes: usize,
        /// Changes per second.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
    },
    /// One table holding `sites` partitions of `routes` routes (own + imported).
    MeshMemory {
        /// Routes per partition.
        #[arg(long, default_value_t = 200_000)]
        routes: usize,
        /// Partitions (sites, one node each), this node's own included.
        #[arg(long, default_value_t = 5)]
        sites: usize,
        /// Every site serves different hosts (default: every site serves the same hosts,
        /// as when each app is deployed at every site).
        #[arg(long)]
        distinct_hosts: bool,
    },
    /// Issue 17's soak: one node holds `connections` client connections (keep-alive, idle,
    /// slow, slowloris, slow-read) for `duration` seconds; its RSS, descriptors and
    /// `/healthz` sampled throughout.
    Soak {
        /// Client connections.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Seconds the crowd runs.
        #[arg(long, default_value_t = 600)]
        duration: u64,
        /// Seconds between samples (default: 10, at most a tenth of the run).
        #[arg(long)]
        sample: Option<u64>,
    },
    /// (internal) Fill a table in this process and write its deltas to stdout.
    #[command(hide = true)]
    EmitPartition {
        /// Directory with the node's `ca.pem`, `node.pem` and `node.key` (it seals with them).
        #[arg(long)]
        cert_dir: std::path::PathBuf,
        #[arg(long)]
        node: String,
        #[arg(long)]
        site: String,
        #[arg(long)]
        site_index: usize,
        #[arg(long)]
        routes: usize,
        #[arg(long)]
        distinct_hosts: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Bench::Ingest {
            routes,
            endpoints,
            nats,
            timeout_secs,
            rate,
            sealing,
        } => rt.block_on(ingest(
            routes,
            endpoints,
            nats,
            Duration::from_secs(timeout_secs),
            rate,
            sealing,
        )),
        Bench::SealCost { routes, changes } => mesh_bench::seal_cost(routes, changes),
        Bench::Parse { messages, rounds } => parse(messages, rounds),
        Bench::Memory { routes, endpoints } => memory(routes, endpoints),
        Bench::Propagation {
            count,
            interval_ms,
            poll,
        } => rt.block_on(mesh_bench::propagation(
            count,
            Duration::from_millis(interval_ms),
            poll,
        )),
        Bench::ControlScale { policies, certs } => control_bench::control_scale(policies, certs),
        Bench::PolicyPropagation { count, interval_ms } => rt.block_on(
            mesh_bench::policy_propagation(count, Duration::from_millis(interval_ms)),
        ),
        Bench::FullSync {
            routes,
            runs,
            limit_mbit,
        } => rt.block_on(mesh_bench::full_sync(routes, runs, limit_mbit)),
        Bench::Failure { runs, heartbeat_ms } => {
            rt.block_on(mesh_bench::failure(runs, heartbeat_ms))
        }
        Bench::Idle { minutes } => rt.block_on(mesh_bench::idle(minutes)),
        Bench::Wire { changes, rate } => rt.block_on(mesh_bench::wire(changes, rate)),
        Bench::MeshMemory {
            routes,
            sites,
            distinct_hosts,
        } => mesh_bench::mesh_memory(routes, sites, distinct_hosts),
        Bench::Soak {
            connections,
            duration,
            sample,
        } => rt.block_on(soak_bench::soak(
            connections,
            Duration::from_secs(duration),
            sample.map(Duration::from_secs),
        )),
        Bench::EmitPartition {
            cert_dir,
            node,
            site,
            site_index,
            routes,
            distinct_hosts,
        } => {
            mesh_bench::emit_partition(&cert_dir, &node, &site, site_index, routes, distinct_hosts)
        }
    }
}

/// Cells the benchmark's app instances run on (a large foundation has hundreds).
const CELLS: usize = 1000;

/// A route-emitter-shaped registration (one URI per message, as route-emitter sends):
/// instance `endpoint` of app `route`, on one of [`CELLS`] cells with its own host ports.
fn message(route: usize, endpoint: usize) -> String {
    let n = route * 4 + endpoint;
    let cell = n % CELLS;
    let ip = format!("10.0.{}.{}", cell >> 8, cell & 0xff);
    let slot = n / CELLS;
    format!(
        r#"{{"host":"{ip}","port":{port},"tls_port":{tls},"protocol":"http1","uris":["app-{route}.apps.example.com"],"app":"{route:08x}-5e1c-4c1e-9a77-0f3b2d1a9c10","private_instance_id":"{route:08x}-77d4-4e2a-5b6c-{endpoint:012x}","private_instance_index":"{endpoint}","server_cert_domain_san":"{route:08x}-77d4-4e2a-5b6c-{endpoint:012x}","availability_zone":"z1","endpoint_updated_at_ns":1714380000000000000,"tags":{{"component":"route-emitter","app_name":"app-{route}","organization_name":"acme","space_name":"prod","process_type":"web"}}}}"#,
        port = 20000 + slot * 2,
        tls = 20001 + slot * 2,
    )
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

fn parse(messages: usize, rounds: usize) -> anyhow::Result<()> {
    use grouter_protocol::nats::{MessageKind, Registration, RegistryMessage};
    let payloads: Vec<String> = (0..messages.max(1))
        .map(|i| message(i / 2, i % 2))
        .collect();
    let avg = payloads.iter().map(String::len).sum::<usize>() / payloads.len();
    // Each decoder must read every payload, and the same way, or its figure means nothing.
    for p in &payloads {
        let reference: RegistryMessage<'_> = serde_json::from_slice(p.as_bytes())?;
        anyhow::ensure!(
            RegistryMessage::read_plain(p.as_bytes()).as_ref() == Some(&reference),
            "the plain reader read {p} otherwise"
        );
    }
    let time = |what: &str, decode: &dyn Fn(&[u8]) -> usize| {
        let started = Instant::now();
        let mut kept = 0usize;
        for _ in 0..rounds {
            for p in &payloads {
                kept += decode(std::hint::black_box(p.as_bytes()));
            }
        }
        let per = started.elapsed().as_secs_f64() * 1e9 / (rounds * payloads.len()) as f64;
        println!("  {what:<44} {per:>7.0} ns/message  ({kept} fields kept)");
        per
    };
    println!(
        "parse: {} route-emitter payloads of {avg} B average, {rounds} passes each",
        payloads.len()
    );
    let serde = time("serde_json::from_slice::<RegistryMessage>", &|p| {
        serde_json::from_slice::<RegistryMessage<'_>>(p)
            .map_or(0, |m| m.uris.map_or(0, |u| u.len()))
    });
    let plain = time("RegistryMessage::decode (plain reader)", &|p| {
        RegistryMessage::decode(p).map_or(0, |m| m.uris.map_or(0, |u| u.len()))
    });
    time("Registration::parse (decode + validate)", &|p| {
        Registration::parse(p, MessageKind::Register).map_or(0, |r| r.routes.len())
    });
    println!(
        "  plain reader / serde_json: {:.2}x the speed",
        serde / plain
    );
    Ok(())
}

fn memory(routes: usize, endpoints: usize) -> anyhow::Result<()> {
    use grouter_protocol::nats::{MessageKind, Registration};
    let table = Arc::new(Table::new("bench-1", "lon", 1));
    let mut registry = learn::Registry::new(
        table.clone(),
        Duration::from_secs(120),
        Duration::from_secs(360),
    );
    let before = rss_bytes();
    // Messages are built and dropped one at a time, so only what is kept shows in RSS.
    for i in 0..routes * endpoints {
        let m = message(i / endpoints, i % endpoints);
        let reg = Registration::parse(m.as_bytes(), MessageKind::Register)?;
        registry.register(&reg, 0);
    }
    let grown = rss_bytes().saturating_sub(before);
    let total = routes * endpoints;
    anyhow::ensure!(
        registry.endpoints() == total,
        "only {} endpoints",
        registry.endpoints()
    );
    println!(
        "memory: {routes} routes x {endpoints} endpoints (route-emitter messages, tls_port, tags)"
    );
    println!(
        "  RSS +{:.1} MiB -> {:.0} B per endpoint, {:.0} B per route (endpoint registry + versioned partition + lookup index)",
        grown as f64 / 1048576.0,
        grown as f64 / total as f64,
        grown as f64 / routes as f64
    );
    Ok(())
}

async fn ingest(
    routes: usize,
    endpoints: usize,
    nats: Option<String>,
    timeout: Duration,
    rate: u64,
    sealing: bool,
) -> anyhow::Result<()> {
    let (_server, url) = match nats {
        Some(url) => (None, url),
        None => {
            let server = NatsServer::start();
            let url = server.url();
            (Some(server), url)
        }
    };
    let total = routes * endpoints;
    // Payloads are built before measuring so the publisher is not the bottleneck.
    let payloads: Vec<bytes::Bytes> = (0..total)
        .map(|i| message(i / endpoints, i % endpoints).into())
        .collect();
    let avg_len = payloads.iter().map(bytes::Bytes::len).sum::<usize>() / total.max(1);

    let table = Arc::new(Table::new("bench-1", "lon", 1));
    let metrics = Arc::new(learn::LearnMetrics::new(&Metrics::new()));
    let shutdown = CancellationToken::new();
    let settings = LearnSettings {
        servers: vec![url.clone()],
        user_password: None,
        token: None,
        tls_ca: None,
        stale_threshold: Duration::from_secs(3600),
        prune_interval: Duration::from_secs(3600),
        tls_stale_threshold: Duration::from_secs(3 * 3600),
        max_pending_messages: 524_288,
        client_name: "grouter-bench".into(),
    };
    let learner = tokio::spawn(learn::run(
        settings,
        table.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let publisher = async_nats::connect(&url).await?;

    // Wait until the learner is subscribed: a probe registration comes through.
    let probe = r#"{"host":"10.255.255.255","port":1,"uris":["probe.bench"]}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    while table.lookup("probe.bench", "/").is_none() {
        publisher.publish("router.register", probe.into()).await?;
        publisher.flush().await?;
        if Instant::now() > deadline {
            bail!("learner did not subscribe");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let base_endpoints = table.stats().local_endpoints;
    let rss_before = rss_bytes();
    // A peer's push loop, as `session` runs it: wake on a change, send every delta.
    let pusher = sealing.then(|| {
        let (table, stop) = (table.clone(), shutdown.clone());
        tokio::spawn(async move {
            let ca = grouter_tests::MeshCa::new();
            let dir = ca.issue("bench-1", "lon");
            let trust = grouter::mesh::trust::MeshTrust::load(
                &dir.path().join("ca.pem"),
                &dir.path().join("node.pem"),
                &dir.path().join("node.key"),
            )?;
            let mut view = grouter::mesh::sync::PeerView::default();
            let mut changes = table.subscribe();
            let (mut frames, mut bytes, mut sealed) = (0u64, 0u64, 0u64);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    r = changes.changed() => if r.is_err() { break },
                }
                while let Some(d) = grouter::mesh::sync::delta(&table, &trust, &mut view, "peer-1")
                {
                    sealed += d.partitions.iter().filter(|p| p.seal.is_some()).count() as u64;
                    let frame = grouter_protocol::mesh::encode(
                        grouter_protocol::mesh::frame::Body::Delta(d),
                    );
                    frames += 1;
                    bytes += frame.len() as u64 + 4;
                }
            }
            anyhow::Ok((frames, bytes, sealed))
        })
    });

    // Lookups run on their own thread for the whole ingest.
    let stop = Arc::new(AtomicBool::new(false));
    let lookups = Arc::new(AtomicU64::new(0));
    let looker = {
        let (table, stop, lookups) = (table.clone(), stop.clone(), lookups.clone());
        std::thread::spawn(move || {
            let mut i = 0usize;
            let mut hits = 0u64;
            let mut host = String::with_capacity(64);
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..1024 {
                    i = (i + 7919) % routes.max(1);
                    host.clear();
                    host.push_str("app-");
                    host.push_str(&i.to_string());
                    host.push_str(".apps.example.com");
                    hits += u64::from(table.lookup(&host, "/").is_some());
                }
                lookups.fetch_add(1024, Ordering::Relaxed);
            }
            hits
        })
    };

    let started = Instant::now();
    for (i, chunk) in payloads.chunks(1000).enumerate() {
        for p in chunk {
            publisher.publish("router.register", p.clone()).await?;
        }
        if rate > 0 {
            // Pace to the offered rate: chunk i+1 may start at (i+1)*1000/rate seconds.
            publisher.flush().await?;
            let due = started + Duration::from_secs_f64((i + 1) as f64 * 1000.0 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
    }
    publisher.flush().await?;
    let published = started.elapsed();
    let want = base_endpoints + total as u64;
    let deadline = started + timeout;
    while table.stats().local_endpoints < want {
        if Instant::now() > deadline {
            bail!(
                "only {} of {total} endpoints arrived in {timeout:?} (slow consumer drops?)",
                table.stats().local_endpoints - base_endpoints
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let ingested = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let hits = looker
        .join()
        .map_err(|_| anyhow::anyhow!("lookup thread panicked"))?;
    let looked = lookups.load(Ordering::Relaxed);
    let rss_after = rss_bytes();
    shutdown.cancel();
    let _ = learner.await;
    let pushed = match pusher {
        Some(p) => Some(p.await??),
        None => None,
    };

    let stats = table.stats();
    let secs = ingested.as_secs_f64();
    let offered = if rate > 0 {
        format!("{rate}/s offered")
    } else {
        "one burst".to_string()
    };
    println!(
        "ingest: {total} register messages ({routes} routes x {endpoints} endpoints, {avg_len} B average, {offered}) via {url}"
    );
    println!("  published in      {:>8.3} s", published.as_secs_f64());
    println!(
        "  all in the table  {:>8.3} s  -> {:.0} messages/s",
        secs,
        total as f64 / secs
    );
    println!(
        "  concurrent lookups {looked} ({:.0}/s, {hits} hits)",
        looked as f64 / secs
    );
    if let Some((frames, bytes, sealed)) = pushed {
        println!(
            "  sealing peer: {frames} delta frames ({sealed} sealed), {:.1} MiB, pushed while ingesting",
            bytes as f64 / 1048576.0
        );
    }
    println!(
        "  table: {} routes, {} local endpoints",
        stats.routes, stats.local_endpoints
    );
    let grown = rss_after.saturating_sub(rss_before);
    println!(
        "  memory: RSS +{:.1} MiB -> {:.0} B per endpoint ({:.0} B per route), registry and table together",
        grown as f64 / 1048576.0,
        grown as f64 / total as f64,
        grown as f64 / routes as f64
    );
    Ok(())
}

/// Issue 3: the mesh. Full nodes run in this process, each with its own `nats-server`.
mod control_bench;
mod soak_bench;

mod mesh_bench {
    use std::collections::{BTreeMap, HashMap};
    use std::io::{Read, Write};
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::process::{Command, Stdio};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use anyhow::{Context, anyhow, bail};
    use grouter::mesh::liveness::Verdict;
    use grouter::mesh::sync::{self, PeerView, Sender};
    use grouter::mesh::{Mesh, PeerLink};
    use grouter::node::NodeState;
    use grouter::table::{RouteEntry, Table};
    use grouter_protocol::mesh as wire;
    use grouter_protocol::nats::RouteKey;
    use grouter_tests::inproc::{InProcNode, InProcNodeBuilder, Net, PreparedNode};
    use grouter_tests::{MeshCa, NatsServer};

    use super::rss_bytes;

    // ---------------------------------------------------------------------------------------
    // Set-up: the tests' fixtures (a mesh CA, a nats-server per site, in-process nodes).

    /// `mesh.sync_lost_after_secs` of the benchmarks' nodes: the config's default (the
    /// fixture's own is shorter, for tests).
    const SYNC_LOST_AFTER_SECS: u64 = 10;

    /// The benchmarks' nodes' GoRouter: the discard port, where nothing listens. No
    /// measurement here forwards a request, and every node's record says the same
    /// (`healthy = false`) on every run.
    const NO_GOROUTER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9);

    /// Everything the nodes of one benchmark share. Dropping it stops the nats-servers and
    /// removes the CA (nodes are stopped first, by their owners).
    struct Lab {
        ca: MeshCa,
        nats: HashMap<String, NatsServer>,
        heartbeat_ms: u64,
    }

    impl Lab {
        fn new(heartbeat_ms: u64) -> Lab {
            Lab {
                ca: MeshCa::new(),
                nats: HashMap::new(),
                heartbeat_ms,
            }
        }

        /// The site's NATS, started on first use.
        fn nats_url(&mut self, site: &str) -> String {
            self.nats
                .entry(site.to_string())
                .or_insert_with(NatsServer::start)
                .url()
        }

        /// A node of `site` learning from the site's NATS and dialling `seeds`, with
        /// registrations that never go stale while a benchmark runs.
        fn builder(&mut self, id: &str, site: &str, seeds: &[SocketAddr]) -> InProcNodeBuilder {
            InProcNode::builder(id, site)
                .nats(&self.nats_url(site))
                .mesh(&self.ca, seeds)
                .expiry(3600, 3600)
                .gorouters(&[NO_GOROUTER])
                .heartbeat_interval_ms(self.heartbeat_ms)
                .sync_lost_after_secs(SYNC_LOST_AFTER_SECS)
        }

        /// Certificates, config and listeners of a node (dialling through `net` if given),
        /// ready to [`launch`].
        async fn prepare(
            &mut self,
            id: &str,
            site: &str,
            seeds: &[SocketAddr],
            net: Option<&Net>,
        ) -> PreparedNode {
            let builder = self.builder(id, site, seeds);
            match net {
                Some(net) => builder.net(net),
                None => builder,
            }
            .prepare()
            .await
        }

        async fn start(
            &mut self,
            id: &str,
            site: &str,
            seeds: &[SocketAddr],
            net: Option<&Net>,
        ) -> anyhow::Result<BenchNode> {
            launch(self.prepare(id, site, seeds, net).await).await
        }
    }

    /// Run the node; returns once its mesh exists.
    async fn launch(prepared: PreparedNode) -> anyhow::Result<BenchNode> {
        let node = prepared.run();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mesh = loop {
            if let Some(m) = node.state().mesh.get() {
                break m.clone();
            }
            if Instant::now() > deadline {
                bail!("{}: the mesh did not start", node.node_id());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        Ok(BenchNode {
            id: node.node_id().to_string(),
            site: node.site().to_string(),
            state: node.state().clone(),
            addr: node.mesh_addr(),
            mesh,
            node,
        })
    }

    /// A node running in this process.
    struct BenchNode {
        id: String,
        site: String,
        state: Arc<NodeState>,
        mesh: Arc<Mesh>,
        /// Its mesh listener.
        addr: SocketAddr,
        node: InProcNode,
    }

    impl BenchNode {
        fn table(&self) -> &Table {
            &self.state.table
        }

        /// The link to `peer`, if connected.
        fn link(&self, peer: &str) -> Option<Arc<PeerLink>> {
            self.mesh.peers().into_iter().find(|l| l.node_id == peer)
        }

        /// `peer` as this node's failure detector sees it: (verdict, generation).
        fn verdict(&self, peer: &str) -> Option<(Verdict, u64)> {
            self.mesh
                .nodes()
                .into_iter()
                .find(|v| *v.origin.node_id == *peer)
                .map(|v| (v.state, v.origin.generation))
        }

        /// Live routes this node holds of `owner`'s partition, and its version.
        fn held(&self, owner: &str) -> Option<(usize, u64)> {
            self.table()
                .partitions()
                .into_iter()
                .find(|p| *p.origin.node_id == *owner)
                .map(|p| (p.routes, p.max_version))
        }

        /// `grouter_mesh_deltas_rejected_total` by reason.
        fn rejections(&self) -> BTreeMap<String, u64> {
            let text = self
                .state
                .metrics
                .encode(self.table().stats(), self.state.health.sync());
            text.lines()
                .filter_map(|l| l.strip_prefix("grouter_mesh_deltas_rejected_total{reason=\""))
                .filter_map(|l| {
                    let (reason, rest) = l.split_once("\"}")?;
                    Some((reason.to_string(), rest.trim().parse().ok()?))
                })
                .collect()
        }

        fn entries_sent(&self) -> u64 {
            self.state.mesh_metrics.entries_sent.get()
        }

        async fn stop(self) {
            self.node.stop().await;
        }
    }

    /// Poll `cond` every 5 ms until it holds; fail after `timeout`.
    async fn wait_for(
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut() -> bool,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        while !cond() {
            if start.elapsed() > timeout {
                bail!("{what}: not within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(start.elapsed())
    }

    /// Every node connected to every other, holding its partition and seeing it alive.
    fn full_mesh(nodes: &[&BenchNode]) -> bool {
        nodes.iter().all(|n| {
            nodes.iter().filter(|o| o.id != n.id).all(|o| {
                n.link(&o.id).is_some() && n.verdict(&o.id).is_some_and(|v| v.0 == Verdict::Alive)
            })
        })
    }

    /// Wait for a full mesh, then `settle` more (duplicate connections are resolved and the
    /// first digests exchanged); fail if it came apart meanwhile.
    async fn form_mesh(nodes: &[&BenchNode], settle: Duration) -> anyhow::Result<Duration> {
        let took = wait_for("full mesh", Duration::from_secs(20), || full_mesh(nodes)).await?;
        tokio::time::sleep(settle).await;
        wait_for("full mesh after settling", Duration::from_secs(5), || {
            full_mesh(nodes)
        })
        .await?;
        Ok(took)
    }

    fn bench_key(host: &str) -> anyhow::Result<Arc<RouteKey>> {
        RouteKey::parse(host)
            .map(Arc::new)
            .with_context(|| format!("bad route {host}"))
    }

    /// A route entry shaped like the learner's: app GUID, app name, endpoint counts.
    fn bench_entry(site: usize, route: usize, endpoints: u32) -> RouteEntry {
        RouteEntry {
            app: std::sync::Arc::new(
                grouter::table::App::new(grouter::table::AppFields {
                    id: &format!("{route:08x}-5e1c-4c1e-9a77-{site:012x}"),
                    name: Some(&format!("app-{route}")),
                    ..Default::default()
                })
                .unwrap_or_default(),
            ),
            endpoints,
            instances: endpoints,
            updated_at_ms: 1_714_380_000_000 + route as u64,
        }
    }

    fn bench_host(route: usize) -> String {
        format!("app-{route}.apps.example.com")
    }

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1000.0
    }

    fn mib(b: u64) -> f64 {
        b as f64 / 1_048_576.0
    }

    /// The `q` quantile (nearest rank) of sorted samples.
    fn quantile(sorted: &[Duration], q: f64) -> Duration {
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    fn summary_row(label: &str, samples: &mut [Duration]) -> String {
        samples.sort();
        let mean =
            samples.iter().sum::<Duration>() / u32::try_from(samples.len().max(1)).unwrap_or(1);
        format!(
            "  {label:<22} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            ms(quantile(samples, 0.50)),
            ms(quantile(samples, 0.90)),
            ms(quantile(samples, 0.99)),
            ms(samples.last().copied().unwrap_or_default()),
            ms(mean),
        )
    }

    // ---------------------------------------------------------------------------------------
    // propagation

    /// When each host appears in `table` (`None`: not within the deadline). Runs on its own
    /// thread: waits on the table's change notification (or spins with `poll`).
    fn watch_arrivals(
        table: Arc<Table>,
        hosts: Arc<Vec<String>>,
        published: Arc<AtomicUsize>,
        poll: bool,
        deadline: Instant,
    ) -> anyhow::Result<Vec<Option<Instant>>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        let mut changes = table.subscribe();
        let mut seen: Vec<Option<Instant>> = vec![None; hosts.len()];
        let mut first_unseen = 0;
        let mut remaining = hosts.len();
        while remaining > 0 && Instant::now() < deadline {
            if !poll {
                let woke = rt.block_on(async {
                    tokio::time::timeout(Duration::from_millis(20), changes.changed()).await
                });
                if matches!(woke, Ok(Err(_))) {
                    break; // the table is gone
                }
            }
            let now = Instant::now();
            let upto = published.load(Ordering::Acquire).min(hosts.len());
            for i in first_unseen..upto {
                if seen[i].is_none() && table.lookup(&hosts[i], "/").is_some() {
                    seen[i] = Some(now);
                    remaining -= 1;
                }
            }
            while first_unseen < hosts.len() && seen[first_unseen].is_some() {
                first_unseen += 1;
            }
        }
        Ok(seen)
    }

    fn register_json(host: &str, i: usize) -> String {
        format!(
            r#"{{"host":"10.0.{}.{}","port":{},"protocol":"http1","uris":["{host}"],"app":"{i:08x}-5e1c-4c1e-9a77-0f3b2d1a9c10","private_instance_id":"{i:08x}-77d4-4e2a-5b6c-000000000000","private_instance_index":"0","availability_zone":"z1","tags":{{"component":"route-emitter","app_name":"prop-{i}","organization_name":"acme","space_name":"prod","process_type":"web"}}}}"#,
            (i >> 8) & 0xff,
            i & 0xff,
            20000 + (i % 40000),
        )
    }

    /// `Bench::PolicyPropagation`.
    pub(super) async fn policy_propagation(count: usize, interval: Duration) -> anyhow::Result<()> {
        let mut lab = Lab::new(500);
        let a = lab.start("a-1", "lon", &[], None).await?;
        let b = lab.start("b-1", "nyc", &[a.addr], None).await?;
        let c = lab.start("c-1", "sgp", &[a.addr], None).await?;
        form_mesh(&[&a, &b, &c], Duration::from_secs(2)).await?;
        let hosts: Vec<String> = (0..count)
            .map(|i| format!("pol-{i}.apps.example.com"))
            .collect();
        let body = serde_json::json!({ "mode": "redirect" });
        let mut latencies = Vec::with_capacity(count);
        for host in &hosts {
            let started = Instant::now();
            let (status, resp) = a
                .node
                .put(&format!("/v1/policies/routes/{host}"), &body)
                .await;
            if status != 200 {
                bail!("PUT policy for {host}: {status} {resp}");
            }
            // Spin (yielding) until both other sites have it in force.
            let deadline = started + Duration::from_secs(5);
            loop {
                let in_force = |n: &BenchNode| n.state.policies.policies().route(host).is_some();
                if in_force(&b) && in_force(&c) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("the policy for {host} was not in force at b-1 and c-1 within 5 s");
                }
                tokio::task::yield_now().await;
            }
            latencies.push(started.elapsed());
            tokio::time::sleep(interval).await;
        }
        latencies.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "policy propagation A admin PUT -> in force at B and C, {count} writes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            ms(quantile(&latencies, 0.5)),
            ms(quantile(&latencies, 0.99)),
            ms(latencies[latencies.len() - 1]),
        );
        for n in [a, b, c] {
            n.node.stop().await;
        }
        Ok(())
    }

    pub(super) async fn propagation(
        count: usize,
        interval: Duration,
        poll: bool,
    ) -> anyhow::Result<()> {
        let mut lab = Lab::new(500);
        let a = lab.start("a-1", "lon", &[], None).await?;
        let b = lab.start("b-1", "nyc", &[a.addr], None).await?;
        let c = lab.start("c-1", "sgp", &[a.addr], None).await?;
        let formed = form_mesh(&[&a, &b, &c], Duration::from_secs(2)).await?;
        let url = lab.nats_url("lon");
        let publisher = async_nats::connect(&url).await?;

        // Until a probe registration shows up at C, A's learner may not be subscribed yet.
        let probe = register_json("probe.apps.example.com", 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.table().lookup("probe.apps.example.com", "/").is_none() {
            publisher
                .publish("router.register", probe.clone().into())
                .await?;
            publisher.flush().await?;
            if Instant::now() > deadline {
                bail!("a probe registration at lon's NATS never reached c-1");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let rejected_before = (b.rejections(), c.rejections());
        let sent_before = [a.entries_sent(), b.entries_sent(), c.entries_sent()];

        let hosts: Arc<Vec<String>> = Arc::new(
            (0..count)
                .map(|i| format!("prop-{i}.apps.example.com"))
                .collect(),
        );
        let payloads: Vec<bytes::Bytes> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| register_json(h, i).into())
            .collect();
        let published = Arc::new(AtomicUsize::new(0));
        let run_for = interval * u32::try_from(count).unwrap_or(u32::MAX);
        let deadline = Instant::now() + run_for + Duration::from_secs(10);
        let watchers: Vec<_> = [a.state.table.clone(), c.state.table.clone()]
            .into_iter()
            .map(|t| {
                let (hosts, published) = (hosts.clone(), published.clone());
                std::thread::spawn(move || watch_arrivals(t, hosts, published, poll, deadline))
            })
            .collect();

        let mut sent_at = Vec::with_capacity(count);
        let started = Instant::now();
        for (i, p) in payloads.into_iter().enumerate() {
            tokio::time::sleep_until((started + interval * u32::try_from(i).unwrap_or(0)).into())
                .await;
            sent_at.push(Instant::now());
            published.store(i + 1, Ordering::Release);
            publisher.publish("router.register", p).await?;
            publisher.flush().await?;
        }
        let publish_secs = started.elapsed().as_secs_f64();
        let mut arrivals = Vec::new();
        for w in watchers {
            arrivals.push(w.join().map_err(|_| anyhow!("watcher thread panicked"))??);
        }
        let (at_a, at_c) = (&arrivals[0], &arrivals[1]);
        let mut nats_to_a = Vec::new();
        let mut nats_to_c = Vec::new();
        let mut a_to_c = Vec::new();
        for i in 0..count {
            if let Some(ta) = at_a[i] {
                nats_to_a.push(ta.saturating_duration_since(sent_at[i]));
            }
            if let Some(tc) = at_c[i] {
                nats_to_c.push(tc.saturating_duration_since(sent_at[i]));
                if let Some(ta) = at_a[i] {
                    a_to_c.push(tc.saturating_duration_since(ta));
                }
            }
        }
        let missing = count - nats_to_c.len();
        let rejected_after = (b.rejections(), c.rejections());
        let sent_after = [a.entries_sent(), b.entries_sent(), c.entries_sent()];

        println!(
            "propagation: {count} router.register messages, one every {} ms ({publish_secs:.2} s), published to lon's NATS (node a-1); arrival watched in a-1's and sgp's (c-1) tables by {}",
            interval.as_millis(),
            if poll {
                "spinning on lookup"
            } else {
                "waking on table.subscribe()"
            },
        );
        println!(
            "  mesh: a-1 (lon), b-1 (nyc), c-1 (sgp), one nats-server per site, full mesh after {:.0} ms",
            ms(formed)
        );
        println!(
            "  {:<22} {:>8} {:>8} {:>8} {:>8} {:>8}   (ms)",
            "", "p50", "p90", "p99", "max", "mean"
        );
        println!("{}", summary_row("NATS -> a-1 table", &mut nats_to_a));
        println!("{}", summary_row("a-1 table -> c-1 table", &mut a_to_c));
        println!("{}", summary_row("NATS -> c-1 table", &mut nats_to_c));
        let p99 = quantile(&nats_to_c, 0.99);
        println!(
            "  arrived at c-1: {} of {count}; target p99 <= 50 ms: {}",
            nats_to_c.len(),
            if missing == 0 && p99 <= Duration::from_millis(50) {
                "met"
            } else {
                "NOT met"
            }
        );
        let diff = |before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, k: &str| {
            after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0)
        };
        println!(
            "  entries sent during the run: a-1 {}, b-1 {}, c-1 {}; deltas dropped as owner_connected: at b-1 {}, at c-1 {}",
            sent_after[0] - sent_before[0],
            sent_after[1] - sent_before[1],
            sent_after[2] - sent_before[2],
            diff(&rejected_before.0, &rejected_after.0, "owner_connected"),
            diff(&rejected_before.1, &rejected_after.1, "owner_connected"),
        );
        drop(publisher);
        for n in [c, b, a] {
            n.stop().await;
        }
        drop(lab);
        if missing > 0 {
            bail!("{missing} registrations never reached c-1");
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // full-sync

    pub(super) async fn full_sync(
        routes: usize,
        runs: usize,
        limit_mbit: u64,
    ) -> anyhow::Result<()> {
        let mut lab = Lab::new(500);
        let a = lab.start("a-1", "lon", &[], None).await?;
        // With a limit, the new nodes dial a-1 through a relay that throttles what lon sends
        // sgp; a-1 itself dials plain TCP, as without one.
        let net = (limit_mbit > 0).then(|| {
            let net = Net::new();
            net.register(a.addr, &a.site);
            net.limit(&a.site, "sgp", limit_mbit * 1_000_000 / 8);
            net
        });
        let keys: Vec<Arc<RouteKey>> = (0..routes)
            .map(|i| bench_key(&bench_host(i)))
            .collect::<anyhow::Result<_>>()?;
        let filled = Instant::now();
        for (i, k) in keys.iter().enumerate() {
            a.table().upsert_local(k, bench_entry(0, i, 2));
        }
        let fill = filled.elapsed();
        drop(keys);
        let (held, version) = a.held("a-1").context("a-1 holds no partition")?;
        println!(
            "full-sync: a-1 (lon) holds {held} routes (version {version}, written with upsert_local in {:.2} s); a new node of site sgp starts seeded with a-1{}",
            fill.as_secs_f64(),
            if limit_mbit > 0 {
                format!(", receiving through a relay throttled to {limit_mbit} Mbit/s")
            } else {
                String::new()
            }
        );
        println!(
            "  {:<5} {:>10} {:>12} {:>14} {:>12} {:>12} {:>9}",
            "node", "connected", "first entry", "all routes", "C received", "A had sent", "B/route"
        );
        let mut totals = Vec::new();
        for run in 1..=runs {
            let id = format!("c-{run}");
            let sent_before = a.entries_sent();
            let prepared = lab.prepare(&id, "sgp", &[a.addr], net.as_ref()).await;
            let t0 = Instant::now();
            let c = launch(prepared).await?;
            let (mut connected, mut first) = (None, None);
            let deadline = t0 + Duration::from_secs(120);
            let all = loop {
                let now = Instant::now();
                if connected.is_none() && c.link("a-1").is_some() {
                    connected = Some(now - t0);
                }
                let got = c.held("a-1").map_or(0, |h| h.0);
                if first.is_none() && got > 0 {
                    first = Some(now - t0);
                }
                if got >= routes {
                    break now - t0;
                }
                if now > deadline {
                    bail!("{id}: only {got} of {routes} routes after 120 s");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            let received = |c: &BenchNode| -> u64 {
                c.mesh
                    .peers()
                    .iter()
                    .map(|l| l.bytes_in.load(Ordering::Relaxed))
                    .sum()
            };
            let at_all = received(&c);
            let sent = a
                .link(&id)
                .map_or(0, |l| l.bytes_out.load(Ordering::Relaxed));
            println!(
                "  {id:<5} {:>7.0} ms {:>9.0} ms {:>12.3} s {:>9.2} MiB {:>8.2} MiB {:>9.1}",
                ms(connected.unwrap_or_default()),
                ms(first.unwrap_or_default()),
                all.as_secs_f64(),
                mib(at_all),
                mib(sent),
                at_all as f64 / routes as f64,
            );
            totals.push(all);
            // What else arrives once C holds everything (a second copy, if any): wait until
            // route entries stop flowing for 3 s (at most 120 s).
            let mut last = (a.entries_sent(), Instant::now());
            while last.1.elapsed() < Duration::from_secs(3)
                && t0.elapsed() < Duration::from_secs(120)
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if a.entries_sent() != last.0 {
                    last = (a.entries_sent(), Instant::now());
                }
            }
            let settled = received(&c);
            println!(
                "        quiet from {:.1} s: {id} received {:.2} MiB in all; a-1 sent {} route entries since {id} started ({:.2} per route)",
                last.1.saturating_duration_since(t0).as_secs_f64(),
                mib(settled),
                a.entries_sent() - sent_before,
                (a.entries_sent() - sent_before) as f64 / routes as f64
            );
            c.stop().await;
        }
        totals.sort();
        let worst = totals.last().copied().unwrap_or_default();
        println!(
            "  target: all {routes} routes in <= 2 s: {} (worst {:.3} s)",
            if worst <= Duration::from_secs(2) {
                "met"
            } else {
                "NOT met"
            },
            worst.as_secs_f64()
        );
        a.stop().await;
        drop(lab);
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // failure

    pub(super) async fn failure(runs: usize, heartbeat_ms: u64) -> anyhow::Result<()> {
        let mut lab = Lab::new(heartbeat_ms);
        let a = lab.start("a-1", "lon", &[], None).await?;
        let mut b = lab.start("b-1", "nyc", &[a.addr], None).await?;
        let c = lab.start("c-1", "sgp", &[a.addr], None).await?;
        form_mesh(&[&a, &b, &c], Duration::from_secs(2)).await?;
        let hb = Duration::from_millis(heartbeat_ms);
        println!(
            "failure: heartbeat {heartbeat_ms} ms (suspect after {} ms, dead after {} ms of silence); b-1 is stopped (its shutdown token cancelled), a-1 and c-1 watched every 5 ms",
            heartbeat_ms * 4,
            heartbeat_ms * 5
        );
        println!(
            "  {:<4} {:>12} {:>12} {:>12} {:>12}",
            "kill", "a-1 suspect", "a-1 dead", "c-1 suspect", "c-1 dead"
        );
        let mut dead_times = Vec::new();
        for run in 1..=runs {
            // Kill at a different phase of the heartbeat each time.
            let phase = hb.mul_f64((run as f64 * 0.37).fract());
            tokio::time::sleep(phase).await;
            let generation = b.table().me().generation;
            let killed = Instant::now();
            b.node.shut_down();
            let mut seen: [Option<Duration>; 4] = [None; 4];
            let deadline = killed + Duration::from_secs(15);
            while seen[1].is_none() || seen[3].is_none() {
                let now = Instant::now();
                for (k, n) in [&a, &c].iter().enumerate() {
                    match n.verdict("b-1") {
                        Some((Verdict::Suspect, g)) if g == generation => {
                            seen[2 * k].get_or_insert(now - killed);
                        }
                        Some((Verdict::Dead, g)) if g == generation => {
                            seen[2 * k].get_or_insert(now - killed);
                            seen[2 * k + 1].get_or_insert(now - killed);
                        }
                        _ => {}
                    }
                }
                if now > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let show = |d: Option<Duration>| {
                d.map_or("never".to_string(), |d| format!("{:.3} s", d.as_secs_f64()))
            };
            println!(
                "  {run:<4} {:>12} {:>12} {:>12} {:>12}",
                show(seen[0]),
                show(seen[1]),
                show(seen[2]),
                show(seen[3])
            );
            dead_times.extend([seen[1], seen[3]]);
            let old = std::mem::replace(&mut b, lab.start("b-1", "nyc", &[a.addr], None).await?);
            old.stop().await;
            form_mesh(&[&a, &b, &c], Duration::from_secs(1)).await?;
        }
        let worst = dead_times
            .iter()
            .map(|d| d.unwrap_or(Duration::MAX))
            .max()
            .unwrap_or_default();
        println!(
            "  target: dead within 3 s: {} (worst {})",
            if worst <= Duration::from_secs(3) {
                "met"
            } else {
                "NOT met"
            },
            if worst == Duration::MAX {
                "never".to_string()
            } else {
                format!("{:.3} s", worst.as_secs_f64())
            }
        );
        for n in [c, b, a] {
            n.stop().await;
        }
        drop(lab);
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // idle

    pub(super) async fn idle(minutes: u64) -> anyhow::Result<()> {
        let mut lab = Lab::new(500);
        let a = lab.start("a-1", "lon", &[], None).await?;
        let b = lab.start("b-1", "nyc", &[a.addr], None).await?;
        let c = lab.start("c-1", "sgp", &[a.addr], None).await?;
        form_mesh(&[&a, &b, &c], Duration::from_secs(3)).await?;
        let nodes = [&a, &b, &c];
        println!(
            "idle: a-1 (lon), b-1 (nyc), c-1 (sgp), heartbeat 500 ms (suspect after 2 s); every node's detector polled every 100 ms for {minutes} min"
        );
        // Per (observer, peer): last verdict and the link's identity (to count reconnects).
        let mut last: HashMap<(String, String), Verdict> = HashMap::new();
        let mut links: HashMap<(String, String), Instant> = HashMap::new();
        for n in nodes {
            for l in n.mesh.peers() {
                links.insert((n.id.clone(), l.node_id.clone()), l.since);
            }
        }
        let (mut suspects, mut deads, mut reconnects, mut not_in_sync) = (0u64, 0u64, 0u64, 0u64);
        let mut max_silent = Duration::ZERO;
        let mut max_rtt = Duration::ZERO;
        let started = Instant::now();
        let end = started + Duration::from_secs(minutes * 60);
        let mut next_report = started + Duration::from_secs(60);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut polls = 0u64;
        while Instant::now() < end {
            tick.tick().await;
            polls += 1;
            for n in nodes {
                if n.state.health.sync() != grouter::health::SyncState::InSync {
                    not_in_sync += 1;
                }
                for v in n.mesh.nodes() {
                    max_silent = max_silent.max(v.silent_for);
                    let key = (n.id.clone(), v.origin.node_id.to_string());
                    let prev = last.insert(key.clone(), v.state).unwrap_or(Verdict::Alive);
                    if prev != v.state {
                        let at = started.elapsed().as_secs_f64();
                        println!(
                            "  {at:>7.1} s  {} sees {} {}",
                            key.0,
                            key.1,
                            v.state.as_str()
                        );
                        match v.state {
                            Verdict::Suspect => suspects += 1,
                            Verdict::Dead => deads += 1,
                            Verdict::Alive => {}
                        }
                    }
                }
                for l in n.mesh.peers() {
                    if let Some(rtt) = l.rtt() {
                        max_rtt = max_rtt.max(rtt);
                    }
                    let key = (n.id.clone(), l.node_id.clone());
                    if links.insert(key, l.since).is_some_and(|s| s != l.since) {
                        reconnects += 1;
                    }
                }
            }
            if Instant::now() >= next_report {
                next_report += Duration::from_secs(60);
                println!(
                    "  {:>4.0} min: suspect {suspects}, dead {deads}, reconnects {reconnects}, longest silence {:.0} ms, max RTT {:.2} ms",
                    started.elapsed().as_secs_f64() / 60.0,
                    ms(max_silent),
                    ms(max_rtt)
                );
            }
        }
        println!(
            "  {minutes} min, {polls} polls of 3 detectors: suspect transitions {suspects}, dead {deads}, reconnects {reconnects}, polls not in_sync {not_in_sync}"
        );
        println!(
            "  longest silence seen {:.0} ms (suspicion at 2000 ms), max RTT {:.2} ms; target 0 false suspicions: {}",
            ms(max_silent),
            ms(max_rtt),
            if suspects + deads == 0 {
                "met"
            } else {
                "NOT met"
            }
        );
        for n in [c, b, a] {
            n.stop().await;
        }
        drop(lab);
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // wire

    /// Byte counters of every ordered pair of nodes at one moment.
    struct Snapshot {
        /// `(from, to)` → (frame bytes from the sender's PeerLink, TLS bytes from the relay).
        bytes: BTreeMap<(String, String), (u64, u64)>,
        /// The links' `since`, to notice a reconnect inside a window.
        since: BTreeMap<(String, String), Instant>,
        entries_sent: BTreeMap<String, u64>,
        owner_connected: BTreeMap<String, u64>,
    }

    fn snapshot(nodes: &[&BenchNode], net: &Net) -> Snapshot {
        let mut s = Snapshot {
            bytes: BTreeMap::new(),
            since: BTreeMap::new(),
            entries_sent: BTreeMap::new(),
            owner_connected: BTreeMap::new(),
        };
        for n in nodes {
            s.entries_sent.insert(n.id.clone(), n.entries_sent());
            s.owner_connected.insert(
                n.id.clone(),
                n.rejections().get("owner_connected").copied().unwrap_or(0),
            );
            for o in nodes.iter().filter(|o| o.id != n.id) {
                let link = n.link(&o.id);
                let frames = link
                    .as_ref()
                    .map_or(0, |l| l.bytes_out.load(Ordering::Relaxed));
                let tls = net.bytes_sent(&n.site, &o.site);
                let key = (n.id.clone(), o.id.clone());
                s.bytes.insert(key.clone(), (frames, tls));
                if let Some(l) = link {
                    s.since.insert(key, l.since);
                }
            }
        }
        s
    }

    /// Per ordered pair: bytes in the window between two snapshots.
    fn window(
        a: &Snapshot,
        b: &Snapshot,
    ) -> anyhow::Result<BTreeMap<(String, String), (u64, u64)>> {
        if a.since != b.since {
            bail!("a mesh connection was replaced during the measurement; run again");
        }
        Ok(b.bytes
            .iter()
            .map(|(k, (f, t))| {
                let (f0, t0) = a.bytes.get(k).copied().unwrap_or_default();
                (k.clone(), (f - f0, t - t0))
            })
            .collect())
    }

    pub(super) async fn wire(changes: usize, rate: u64) -> anyhow::Result<()> {
        let rate = rate.max(1);
        let mut lab = Lab::new(500);
        // Every connection through a relay of `net`, which counts what each site sends each
        // other (one node per site, so per node).
        let net = Net::new();
        let a = lab.start("a-1", "lon", &[], Some(&net)).await?;
        let b = lab.start("b-1", "nyc", &[a.addr], Some(&net)).await?;
        let c = lab.start("c-1", "sgp", &[a.addr], Some(&net)).await?;
        let nodes = [&a, &b, &c];
        form_mesh(&nodes, Duration::from_secs(3)).await?;

        let stream_for = Duration::from_secs_f64(changes as f64 / rate as f64);
        let window_len = stream_for + Duration::from_secs(1);
        let routes = changes.div_ceil(2).max(1);
        let keys: Vec<Arc<RouteKey>> = (0..routes)
            .map(|i| bench_key(&format!("wire-{i}.apps.example.com")))
            .collect::<anyhow::Result<_>>()?;

        // 1. Idle: heartbeats, pings, digests.
        let s0 = snapshot(&nodes, &net);
        tokio::time::sleep(window_len).await;
        let s1 = snapshot(&nodes, &net);
        let idle = window(&s0, &s1)?;

        // 2. The same length of time with a steady stream of changes at a-1.
        let s2 = snapshot(&nodes, &net);
        let started = Instant::now();
        for i in 0..changes {
            let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
            let r = i % routes;
            let endpoints = if i < routes { 2 } else { 3 };
            a.table()
                .upsert_local(&keys[r], bench_entry(0, r, endpoints));
        }
        let streamed = started.elapsed();
        let (_, version) = a.held("a-1").context("a-1 partition")?;
        let caught_up = wait_for("c-1 catching up", Duration::from_secs(10), || {
            c.held("a-1").is_some_and(|h| h.1 >= version)
        })
        .await?;
        let rest = window_len.saturating_sub(started.elapsed());
        if rest.is_zero() {
            println!("  (warning: the stream took longer than the idle window)");
        }
        tokio::time::sleep(rest).await;
        let s3 = snapshot(&nodes, &net);
        let busy = window(&s2, &s3)?;

        println!(
            "wire: {changes} route changes written at a-1 (lon) at {rate}/s ({} new routes, then endpoint-count updates of them), in {:.2} s; c-1 caught up {:.0} ms after the last",
            routes,
            streamed.as_secs_f64(),
            ms(caught_up)
        );
        println!(
            "  full mesh a-1, b-1, c-1 (heartbeat 500 ms); every connection through a counting loopback relay; two windows of {:.1} s each",
            window_len.as_secs_f64()
        );
        println!(
            "  {:<10} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12}",
            "link", "idle frames", "idle TLS", "busy frames", "busy TLS", "frames/chg", "TLS/chg"
        );
        for (k, (bf, bt)) in &busy {
            let (idf, idt) = idle.get(k).copied().unwrap_or_default();
            println!(
                "  {:<10} {:>12} {:>12} {:>12} {:>12} {:>12.1} {:>12.1}",
                format!("{}->{}", &k.0[..1], &k.1[..1]),
                idf,
                idt,
                bf,
                bt,
                (*bf as f64 - idf as f64) / changes as f64,
                (*bt as f64 - idt as f64) / changes as f64,
            );
        }
        let key = ("a-1".to_string(), "c-1".to_string());
        let (bf, bt) = busy.get(&key).copied().unwrap_or_default();
        let (idf, idt) = idle.get(&key).copied().unwrap_or_default();
        println!(
            "  a-1 -> c-1: idle {:.0} B/s frames ({:.0} B/s TLS); per change {:.1} B in frames, {:.1} B in TLS records (idle subtracted)",
            idf as f64 / window_len.as_secs_f64(),
            idt as f64 / window_len.as_secs_f64(),
            (bf as f64 - idf as f64) / changes as f64,
            (bt as f64 - idt as f64) / changes as f64,
        );
        let d = |m: &BTreeMap<String, u64>, m0: &BTreeMap<String, u64>, k: &str| {
            m.get(k).copied().unwrap_or(0) - m0.get(k).copied().unwrap_or(0)
        };
        println!(
            "  idle window: partition deltas dropped as owner_connected (relayed heartbeats): at a-1 {}, b-1 {}, c-1 {}",
            d(&s1.owner_connected, &s0.owner_connected, "a-1"),
            d(&s1.owner_connected, &s0.owner_connected, "b-1"),
            d(&s1.owner_connected, &s0.owner_connected, "c-1"),
        );
        println!(
            "  entries sent in the busy window: a-1 {}, b-1 {}, c-1 {}; dropped as owner_connected: at b-1 {}, at c-1 {}",
            d(&s3.entries_sent, &s2.entries_sent, "a-1"),
            d(&s3.entries_sent, &s2.entries_sent, "b-1"),
            d(&s3.entries_sent, &s2.entries_sent, "c-1"),
            d(&s3.owner_connected, &s2.owner_connected, "b-1"),
            d(&s3.owner_connected, &s2.owner_connected, "c-1"),
        );
        for n in [c, b, a] {
            n.stop().await;
        }
        drop(lab);
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // seal-cost

    /// What sealing costs the owner per change, and verifying costs a receiver per delta,
    /// for batches of 1 to 1,000 changes, on a partition of `routes` routes.
    pub(super) fn seal_cost(routes: usize, changes: usize) -> anyhow::Result<()> {
        let ca = MeshCa::new();
        let (owner_dir, replica_dir) = (ca.issue("lon-1", "lon"), ca.issue("nyc-1", "nyc"));
        let owner_trust = trust_in(owner_dir.path())?;
        let replica_trust = trust_in(replica_dir.path())?;
        let owner = Table::new("lon-1", "lon", 1);
        let replica = Table::new("nyc-1", "nyc", 1);
        fill(&owner, 0, routes, true)?;
        let sender = Sender {
            node_id: "lon-1",
            site: "lon",
        };
        let cx = sync::Context {
            table: &replica,
            trust: &replica_trust,
            is_direct: &|_| false,
            now_micros: u64::MAX / 2,
        };
        let mut inbox = sync::Inbox::default();
        let mut view = PeerView::default();
        // The full sync first: its verification is the largest a receiver does.
        let t = Instant::now();
        let mut frames = Vec::new();
        while let Some(d) = sync::delta(&owner, &owner_trust, &mut view, "nyc-1") {
            frames.push(d);
        }
        let exported = t.elapsed();
        let t = Instant::now();
        for d in frames {
            let applied = sync::apply(&cx, &mut inbox, sender, d);
            if !applied.rejected.is_empty() {
                bail!("full sync refused: {:?}", applied.rejected);
            }
        }
        let imported = t.elapsed();
        println!(
            "seal-cost: partition of {routes} routes; ECDSA P-256 node keys (ring); LtHash16 (BLAKE3)"
        );
        println!(
            "  full sync in process: export+seal {:.0} ms, verify+apply {:.0} ms ({:.2} us per route)",
            ms(exported),
            ms(imported),
            imported.as_secs_f64() * 1e6 / routes as f64
        );
        println!(
            "  {:>6} {:>18} {:>18} {:>16} {:>16}",
            "batch", "owner us/change", "owner us/delta", "recv us/delta", "recv us/change"
        );
        let mut round = 0u32;
        for batch in [1usize, 10, 100, 1000] {
            let deltas = (changes / batch).max(1);
            let (mut owner_time, mut recv_time) = (Duration::ZERO, Duration::ZERO);
            for d in 0..deltas {
                round += 1;
                let t = Instant::now();
                for i in 0..batch {
                    let route = (d * batch + i) % routes;
                    let key = bench_key(&site_host(0, route, true))?;
                    owner.upsert_local(&key, bench_entry(0, route, 3 + round));
                }
                let mut out = Vec::new();
                while let Some(d) = sync::delta(&owner, &owner_trust, &mut view, "nyc-1") {
                    out.push(d);
                }
                owner_time += t.elapsed();
                let t = Instant::now();
                for d in out {
                    let applied = sync::apply(&cx, &mut inbox, sender, d);
                    if !applied.rejected.is_empty() {
                        bail!("delta refused: {:?}", applied.rejected);
                    }
                }
                recv_time += t.elapsed();
            }
            let per = |d: Duration, n: usize| d.as_secs_f64() * 1e6 / n as f64;
            println!(
                "  {batch:>6} {:>18.2} {:>18.1} {:>16.1} {:>16.2}",
                per(owner_time, deltas * batch),
                per(owner_time, deltas),
                per(recv_time, deltas),
                per(recv_time, deltas * batch),
            );
        }
        // The bare costs the figures are made of.
        let key = bench_key(&site_host(0, 1, true))?;
        let entry = bench_entry(0, 1, 2);
        let n = 20_000u32;
        let t = Instant::now();
        let mut h = grouter_protocol::seal::StateHash::default();
        for i in 0..n {
            h.add(&grouter::table::state::entry_digest(
                &key,
                u64::from(i),
                &entry,
            ));
        }
        let hash = t.elapsed() / n;
        let stmt = owner.own_statement().context("own statement")?.to_bytes();
        let t = Instant::now();
        let mut sig = (0, Vec::new());
        for _ in 0..1000 {
            sig = grouter::mesh::sync::Trust::sign(&owner_trust, &stmt).context("sign")?;
        }
        let sign = t.elapsed() / 1000;
        let cert = grouter::mesh::sync::Trust::own_cert(&owner_trust);
        let t = Instant::now();
        for _ in 0..1000 {
            if !grouter::mesh::sync::Trust::verify(&replica_trust, &cert, &stmt, sig.0, &sig.1) {
                bail!("own signature does not verify");
            }
        }
        let verify = t.elapsed() / 1000;
        println!(
            "  one entry into the set hash {:.2} us; one seal {:.1} us; one verification {:.1} us; statement {} B, signature {} B",
            hash.as_secs_f64() * 1e6,
            sign.as_secs_f64() * 1e6,
            verify.as_secs_f64() * 1e6,
            stmt.len(),
            sig.1.len()
        );
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // mesh-memory

    /// The trust of a node whose certificate is in `dir` (as `MeshCa::issue` writes it).
    fn trust_in(dir: &std::path::Path) -> anyhow::Result<grouter::mesh::trust::MeshTrust> {
        Ok(grouter::mesh::trust::MeshTrust::load(
            &dir.join("ca.pem"),
            &dir.join("node.pem"),
            &dir.join("node.key"),
        )?)
    }

    fn site_host(site: usize, route: usize, distinct: bool) -> String {
        if distinct {
            format!("app-{route}.s{site}.apps.example.com")
        } else {
            bench_host(route)
        }
    }

    fn fill(table: &Table, site: usize, routes: usize, distinct: bool) -> anyhow::Result<()> {
        for i in 0..routes {
            let key = bench_key(&site_host(site, i, distinct))?;
            table.upsert_local(&key, bench_entry(site, i, 2));
        }
        Ok(())
    }

    /// Child process: a table filled with `upsert_local`, written out as the deltas a peer
    /// would receive (`u32` big-endian length, then the encoded frame).
    pub(super) fn emit_partition(
        cert_dir: &std::path::Path,
        node: &str,
        site: &str,
        site_index: usize,
        routes: usize,
        distinct: bool,
    ) -> anyhow::Result<()> {
        let table = Table::new(node, site, 1);
        fill(&table, site_index, routes, distinct)?;
        let trust = trust_in(cert_dir)?;
        let mut view = PeerView::default();
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        while let Some(d) = sync::delta(&table, &trust, &mut view, "bench-target") {
            let frame = wire::encode(wire::frame::Body::Delta(d));
            out.write_all(&u32::try_from(frame.len())?.to_be_bytes())?;
            out.write_all(&frame)?;
        }
        out.flush()?;
        Ok(())
    }

    pub(super) fn mesh_memory(routes: usize, sites: usize, distinct: bool) -> anyhow::Result<()> {
        let exe = std::env::current_exe()?;
        let names = ["lon", "nyc", "sgp", "fra", "syd", "sao", "tyo", "jnb"];
        let site_name = |i: usize| {
            names
                .get(i)
                .map_or(format!("site{i}"), |s| (*s).to_string())
        };
        println!(
            "mesh-memory: one table, {sites} partitions x {routes} routes ({}); this node's own written with upsert_local, the others imported with sync::apply from deltas made by a child process's table",
            if distinct {
                "every site serves different hosts"
            } else {
                "every site serves the same hosts"
            }
        );
        let ca = grouter_tests::MeshCa::new();
        let own_dir = ca.issue(&format!("{}-1", site_name(0)), &site_name(0));
        let trust = trust_in(own_dir.path())?;
        let rss0 = rss_bytes();
        let table = Table::new(&format!("{}-1", site_name(0)), &site_name(0), 1);
        let t = Instant::now();
        fill(&table, 0, routes, distinct)?;
        let rss1 = rss_bytes();
        println!(
            "  {:<22} {:>10} {:>12} {:>9}",
            "partition", "RSS +MiB", "B per route", "time"
        );
        println!(
            "  {:<22} {:>10.1} {:>12.0} {:>7.2} s",
            format!("{}-1 (own)", site_name(0)),
            mib(rss1.saturating_sub(rss0)),
            rss1.saturating_sub(rss0) as f64 / routes as f64,
            t.elapsed().as_secs_f64()
        );
        let mut prev = rss1;
        let mut imported_growth = 0u64;
        for s in 1..sites {
            let node = format!("{}-1", site_name(s));
            let site = site_name(s);
            let dir = ca.issue(&node, &site);
            let mut child = Command::new(&exe)
                .args(["emit-partition", "--node", &node, "--site", &site])
                .arg("--cert-dir")
                .arg(dir.path())
                .args([
                    "--site-index",
                    &s.to_string(),
                    "--routes",
                    &routes.to_string(),
                ])
                .args(distinct.then_some("--distinct-hosts"))
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()?;
            let mut pipe = child.stdout.take().context("child stdout")?;
            let mut buf = Vec::new();
            let mut applying = Duration::ZERO;
            let mut frames = 0;
            let mut inbox = sync::Inbox::default();
            loop {
                let mut len = [0u8; 4];
                match pipe.read_exact(&mut len) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e.into()),
                }
                buf.resize(u32::from_be_bytes(len) as usize, 0);
                pipe.read_exact(&mut buf)?;
                let t = Instant::now();
                let wire::frame::Body::Delta(delta) = wire::decode(&buf)? else {
                    bail!("child sent a frame that is not a delta");
                };
                let cx = sync::Context {
                    table: &table,
                    trust: &trust,
                    is_direct: &|_| false,
                    now_micros: u64::MAX / 2,
                };
                let applied = sync::apply(
                    &cx,
                    &mut inbox,
                    Sender {
                        node_id: &node,
                        site: &site,
                    },
                    delta,
                );
                applying += t.elapsed();
                frames += 1;
                if !applied.rejected.is_empty() {
                    bail!("rejected: {:?}", applied.rejected);
                }
            }
            if !child.wait()?.success() {
                bail!("emit-partition for {node} failed");
            }
            drop(buf);
            let rss = rss_bytes();
            let grown = rss.saturating_sub(prev);
            imported_growth += grown;
            prev = rss;
            println!(
                "  {:<22} {:>10.1} {:>12.0} {:>7.2} s  ({frames} frames decoded and applied)",
                format!("{node} (imported)"),
                mib(grown),
                grown as f64 / routes as f64,
                applying.as_secs_f64()
            );
        }
        let stats = table.stats();
        let total = prev.saturating_sub(rss0);
        let entries = routes * sites;
        anyhow::ensure!(
            table.partitions().iter().all(|p| p.routes == routes),
            "a partition is incomplete"
        );
        println!(
            "  total: RSS +{:.1} MiB for {entries} route entries in {} partitions ({} distinct routes in the index): {:.0} B per entry; imported partitions {:.0} B per entry",
            mib(total),
            stats.partitions,
            stats.routes,
            total as f64 / entries as f64,
            imported_growth as f64 / (routes * (sites - 1)).max(1) as f64,
        );
        Ok(())
    }
}
