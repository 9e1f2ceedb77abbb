//! `grouter-bench`: benchmarks that need real processes (not timed tests).
//!
//! - `grouter-bench ingest`: registrations from a real `nats-server` into the table, with
//!   lookups running at the same time; reports messages/s, lookups/s and memory per endpoint.
//!
//! Results and the exact commands are recorded in `docs/BENCHMARKS.md`.

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use grouter::learn::{self, LearnSettings};
use grouter::metrics::Metrics;
use grouter::table::Table;
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
        } => rt.block_on(ingest(
            routes,
            endpoints,
            nats,
            Duration::from_secs(timeout_secs),
            rate,
        )),
        Bench::Memory { routes, endpoints } => memory(routes, endpoints),
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

struct NatsChild(Child);

impl Drop for NatsChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_nats() -> anyhow::Result<(NatsChild, String)> {
    let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("nats-server not found: apt-get install -y nats-server")?;
    // Pick a free port, then hand it to the server.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let url = format!("nats://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nats-server did not start on {url}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok((NatsChild(child), url))
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

fn memory(routes: usize, endpoints: usize) -> anyhow::Result<()> {
    use grouter_protocol::nats::{MessageKind, Registration};
    let table = Arc::new(Table::new("bench-1", "lon", 1));
    let mut registry = learn::Registry::new(table.clone(), Duration::from_secs(120));
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
) -> anyhow::Result<()> {
    let (_child, url) = match nats {
        Some(url) => (None, url),
        None => {
            let (c, u) = start_nats()?;
            (Some(c), u)
        }
    };
    let total = routes * endpoints;
    // Payloads are built before measuring so the publisher is not the bottleneck.
    let payloads: Vec<bytes::Bytes> = (0..total)
        .map(|i| message(i / endpoints, i % endpoints).into())
        .collect();
    let avg_len = payloads.iter().map(bytes::Bytes::len).sum::<usize>() / total.max(1);

    let table = Arc::new(Table::new("bench-1", "lon", 1));
    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    let settings = LearnSettings {
        servers: vec![url.clone()],
        user_password: None,
        token: None,
        tls_ca: None,
        stale_threshold: Duration::from_secs(3600),
        prune_interval: Duration::from_secs(3600),
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
