//! The `grouter-standin` binary: one GoRouter stand-in ([`grouter_standin::StandIn`]) in a
//! process of its own, for `grouter demo`, which links no stand-in code.
//!
//! It binds `--listen` (default `127.0.0.1:0`, a port of the system's choosing), writes one
//! JSON line `{"message":"listening","service":"gorouter","addr":"IP:PORT"}` to stderr (the
//! shape of `grouter`'s own `listening` lines, so the demo reads both alike) and serves until
//! SIGINT or SIGTERM.
//!
//! Exit codes: 0 after a signal, 1 when it cannot bind or start, 2 on a bad flag.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use grouter_standin::StandIn;

#[derive(Debug, Parser)]
#[command(
    name = "grouter-standin",
    version,
    about = "A GoRouter stand-in: answers every app of its site on one port"
)]
struct Cli {
    /// The site it stands in for: it answers with this in `X-Stub-Site` and the JSON.
    #[arg(long)]
    site: String,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
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
    // One worker is plenty for a demo's few requests.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("grouter-standin: cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("grouter-standin: {err}");
            ExitCode::from(1)
        }
    }
}

/// Serve until SIGINT or SIGTERM; the stand-in stops when dropped.
async fn serve(cli: &Cli) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    // Installed before the address is announced: whoever read it may signal at once.
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot listen for SIGINT: {e}"))?;
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot listen for SIGTERM: {e}"))?;
    let stand_in = StandIn::start_on(&cli.site, cli.listen)
        .await
        .map_err(|e| format!("cannot bind {}: {e}", cli.listen))?;
    let line = serde_json::json!({
        "message": "listening",
        "service": "gorouter",
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
