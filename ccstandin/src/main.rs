//! The `grouter-cc-standin` binary: one foundation's Cloud Controller, UAA and blobstore
//! ([`grouter_cc_standin::CcStandIn`]) in a process of its own, for the placement
//! integration tests.
//!
//! It seeds the foundation from `--seed` (a startup error naming the field when the seed is
//! bad), binds `--listen`, writes one JSON line
//! `{"message":"listening","service":"cloud_controller","site":SITE,"addr":"IP:PORT"}` to
//! stderr and serves until SIGINT or SIGTERM.
//!
//! Owns only the command line. Must never print the client secret.
//!
//! Exit codes: 0 after a signal, 1 when it cannot seed, bind or start, 2 on a bad flag.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use grouter_cc_standin::{CcStandIn, Config, Seed};

#[derive(Debug, Parser)]
#[command(
    name = "grouter-cc-standin",
    version,
    about = "A Cloud Controller (CC v3), UAA and blobstore stand-in for one site, on one port"
)]
struct Cli {
    /// The site it stands in for.
    #[arg(long)]
    site: String,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The UAA client it accepts.
    #[arg(long)]
    client_id: String,
    /// That client's secret (visible in `ps`: prefer `--client-secret-file`).
    #[arg(
        long,
        required_unless_present = "client_secret_file",
        conflicts_with = "client_secret_file"
    )]
    client_secret: Option<String>,
    /// A file holding that client's secret (surrounding whitespace ignored).
    #[arg(long)]
    client_secret_file: Option<PathBuf>,
    /// The seed JSON: domains, orgs, spaces, apps (none: an empty foundation).
    #[arg(long)]
    seed: Option<PathBuf>,
    /// Where droplet bits are kept (created if missing).
    #[arg(long)]
    blob_dir: PathBuf,
    /// How long an upload job stays PROCESSING, in milliseconds.
    #[arg(long, default_value_t = 200)]
    job_delay_ms: u64,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("grouter-cc-standin: cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("grouter-cc-standin: {err:#}");
            ExitCode::from(1)
        }
    }
}

/// Seed, bind, announce, serve until SIGINT or SIGTERM.
async fn serve(cli: Cli) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Installed before the address is announced: whoever read it may signal at once.
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let client_secret = match (cli.client_secret, &cli.client_secret_file) {
        (Some(secret), _) => secret,
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --client-secret-file {}", path.display()))?
            .trim()
            .to_string(),
        (None, None) => anyhow::bail!("--client-secret or --client-secret-file is needed"),
    };
    let seed = match &cli.seed {
        Some(path) => Seed::from_file(path)?,
        None => Seed::default(),
    };
    let stand_in = CcStandIn::start(Config {
        site: cli.site,
        listen: cli.listen,
        client_id: cli.client_id,
        client_secret,
        seed,
        blob_dir: cli.blob_dir,
        job_delay: Duration::from_millis(cli.job_delay_ms),
    })
    .await?;
    let line = serde_json::json!({
        "message": "listening",
        "service": "cloud_controller",
        "site": stand_in.site(),
        "addr": stand_in.addr().to_string(),
    });
    eprintln!("{line}");
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    drop(stand_in);
    Ok(())
}
