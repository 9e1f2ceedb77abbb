//! The `grouter` binary: parses flags, loads and validates the config, installs logging,
//! binds sockets (logging every bound address) and hands over to [`grouter::node::run`].
//! `grouter demo` lives in this binary's [`demo`] module, outside the library.
//!
//! Exit codes: 0 ok, 1 runtime failure, 2 usage or config error.

#![forbid(unsafe_code)]

/// mimalloc: the proxy allocates small, short-lived buffers per request, where it beats the
/// system allocator measurably (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod demo;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use grouter::config::{Config, LogFormat};
use grouter::mesh::identity::{self, IdentityError, NameField, NodeIdentity};
use grouter::node::{self, Listeners, NodeState};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

#[derive(Debug, Parser)]
#[command(
    name = "grouter",
    version,
    about = "A global router for multi-datacentre Cloud Foundry"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node.
    Run {
        /// The node's TOML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration: exit 0 when valid, 2 with `FILE: key: reason` lines when not.
    Check {
        /// The TOML configuration to check.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a self-contained 3-site mesh on loopback (lon, nyc, sgp) and print what to try.
    Demo(demo::DemoArgs),
    /// Make the mesh CA and node certificates.
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TlsCommand {
    /// Create the mesh CA: `ca.pem`, `ca.key` (mode 0600) and an empty `crl.pem`; never
    /// overwrites a CA key.
    Ca {
        /// Directory to write to (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Issue a node certificate signed by the mesh CA: `node.pem`, `node.key` (mode 0600)
    /// and a copy of `ca.pem`; the CA directory keeps a copy in
    /// `issued/<node_id>-<serial>.pem` for `grouter tls revoke`.
    Node {
        /// Directory holding the mesh CA's `ca.pem` and `ca.key`.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// The node's id (the config's `node_id`): 1..=64 of [a-z0-9._-].
        #[arg(long, value_name = "NODE_ID")]
        node: String,
        /// The node's site (the config's `site`): 1..=32 of [a-z0-9-].
        #[arg(long, value_name = "SITE")]
        site: String,
        /// Directory to write to (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// How many days the certificate is valid (1..=3652).
        #[arg(long, value_name = "N", default_value_t = identity::DEFAULT_NODE_DAYS)]
        days: u32,
    },
    /// Revoke certificates: adds them to the CA's `crl.pem` (signed by the CA key; earlier
    /// entries are kept and the CRL number grows). Nodes with `mesh.crl` refuse them.
    Revoke {
        /// Directory holding the mesh CA's `ca.pem`, `ca.key` and `issued/`.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// Revoke every certificate issued to this node id (found in `DIR/issued/`).
        #[arg(
            long,
            value_name = "NODE_ID",
            required_unless_present = "cert",
            conflicts_with = "cert"
        )]
        node: Option<String>,
        /// Revoke this certificate file instead.
        #[arg(long, value_name = "FILE")]
        cert: Option<PathBuf>,
    },
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
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => run(&config),
        Command::Tls { command } => tls(command),
        Command::Demo(args) => demo::main(args),
    }
}

/// `grouter tls …`: bad names are usage errors (2), failing to read or write is a runtime
/// failure (1).
fn tls(command: TlsCommand) -> ExitCode {
    let (what, result, written) = match command {
        TlsCommand::Ca { out } => (
            "grouter tls ca",
            identity::create_ca(&out).map(|()| Vec::new()),
            [
                identity::CA_CERT_FILE,
                identity::CA_KEY_FILE,
                identity::CRL_FILE,
            ]
            .map(|f| out.join(f))
            .to_vec(),
        ),
        TlsCommand::Node {
            ca,
            node,
            site,
            out,
            days,
        } => {
            let node = match NodeIdentity::new(node, site) {
                Ok(node) => node,
                Err(IdentityError::InvalidName { field, reason }) => {
                    let flag = match field {
                        NameField::NodeId => "--node",
                        NameField::Site => "--site",
                    };
                    eprintln!("grouter tls node: {flag}: {reason}");
                    return ExitCode::from(2);
                }
                Err(err) => {
                    eprintln!("grouter tls node: {err}");
                    return ExitCode::from(2);
                }
            };
            (
                "grouter tls node",
                identity::issue_node(&ca, &node, &out, days).map(|issued| vec![issued]),
                [
                    identity::NODE_CERT_FILE,
                    identity::NODE_KEY_FILE,
                    identity::CA_CERT_FILE,
                ]
                .map(|f| out.join(f))
                .to_vec(),
            )
        }
        TlsCommand::Revoke { ca, node, cert } => return revoke(&ca, node, cert.as_deref()),
    };
    match result {
        Ok(also) => {
            for file in written.iter().chain(&also) {
                println!("wrote {}", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(err @ IdentityError::InvalidDays { .. }) => {
            eprintln!("{what}: {err}");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("{what}: {err}");
            ExitCode::from(1)
        }
    }
}

/// `grouter tls revoke`: an invalid node id is a usage error (2); a node without issued
/// certificates, or a certificate of another CA, is a failure (1).
fn revoke(ca: &Path, node: Option<String>, cert: Option<&Path>) -> ExitCode {
    let result = match (node, cert) {
        (_, Some(cert)) => identity::revoke_cert(ca, cert),
        (Some(node), None) => identity::revoke_node(ca, &node),
        (None, None) => {
            eprintln!("grouter tls revoke: --node or --cert is required");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(r) => {
            for serial in &r.added {
                println!("revoked serial {serial}");
            }
            if r.added.is_empty() {
                println!("already revoked");
            }
            println!(
                "wrote {} (CRL number {}, {} revoked)",
                r.crl.display(),
                r.crl_number,
                r.total
            );
            ExitCode::SUCCESS
        }
        Err(IdentityError::InvalidName { reason, .. }) => {
            eprintln!("grouter tls revoke: --node: {reason}");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("grouter tls revoke: {err}");
            ExitCode::from(1)
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            for missing in config.missing_files() {
                eprintln!("warning: {missing} (needed by `grouter run`)");
            }
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::from(2)
        }
    }
}

fn run(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
    };
    let missing = config.missing_files();
    if !missing.is_empty() {
        for m in missing {
            eprintln!("{m}");
        }
        return ExitCode::from(2);
    }
    init_tracing(config.log.format);
    let token = match read_token(&config) {
        Ok(t) => t,
        Err(err) => {
            eprintln!("{err:#}");
            return ExitCode::from(2);
        }
    };
    // One worker: a single-threaded runtime (no cross-thread wake-ups), the fastest set-up
    // on one core. Otherwise one worker per CPU unless configured.
    let runtime = match config.worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(config, token)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!(error = format!("{err:#}"), "grouter stopped with an error");
            eprintln!("grouter: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn read_token(config: &Config) -> anyhow::Result<String> {
    let path = &config.admin.token_file;
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("admin.token_file: cannot read {}", path.display()))?;
    let token = token.trim().to_string();
    anyhow::ensure!(
        !token.is_empty(),
        "admin.token_file: {} is empty",
        path.display()
    );
    Ok(token)
}

async fn serve(config: Config, token: String) -> anyhow::Result<()> {
    let admin = bind(config.admin.listen, "admin", "admin.listen").await?;
    let mesh = match &config.mesh {
        Some(m) => Some(bind(m.listen, "mesh", "mesh.listen").await?),
        None => None,
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    let state = Arc::new(NodeState::new(&config, token, node::new_generation()));
    let mut listeners = Listeners::new(admin, mesh);
    if let Some(m) = &config.mesh {
        listeners.dialer = Arc::new(grouter::mesh::TcpDialer::from_source(m.dial_from));
    }
    listeners.http = Some(bind(config.proxy.http_listen, "http", "proxy.http_listen").await?);
    if let Some(addr) = config.proxy.https_listen {
        listeners.https = Some(bind(addr, "https", "proxy.https_listen").await?);
    }
    if let Some(dns) = &config.dns {
        let (udp, tcp) = bind_dns(dns.listen).await?;
        listeners.dns_udp = Some(udp);
        listeners.dns_tcp = Some(tcp);
    }
    node::run(config, state, listeners, shutdown).await?;
    Ok(())
}

async fn bind(
    addr: std::net::SocketAddr,
    service: &'static str,
    key: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("{key}: cannot bind {addr}"))?;
    let bound = listener
        .local_addr()
        .with_context(|| format!("{key}: {addr}"))?;
    info!(service, addr = %bound, "listening");
    Ok(listener)
}

/// DNS over UDP and TCP on one port. For port 0 the port UDP gets may be taken for TCP
/// (the two have separate port spaces), so another is tried, a few times.
async fn bind_dns(
    listen: std::net::SocketAddr,
) -> anyhow::Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    const TRIES: usize = 16;
    for attempt in 1..=TRIES {
        let udp = tokio::net::UdpSocket::bind(listen)
            .await
            .with_context(|| format!("dns.listen: cannot bind {listen} (udp)"))?;
        let addr = udp
            .local_addr()
            .with_context(|| format!("dns.listen: {listen}"))?;
        match tokio::net::TcpListener::bind(addr).await {
            Ok(tcp) => {
                info!(service = "dns", proto = "udp", %addr, "listening");
                info!(service = "dns", %addr, "listening");
                return Ok((udp, tcp));
            }
            Err(err)
                if listen.port() == 0
                    && err.kind() == std::io::ErrorKind::AddrInUse
                    && attempt < TRIES =>
            {
                debug!(%addr, "dns: the udp port is taken for tcp; trying another");
            }
            Err(err) => {
                return Err(err).with_context(|| format!("dns.listen: cannot bind {addr} (tcp)"));
            }
        }
    }
    anyhow::bail!("dns.listen: no port free for both udp and tcp after {TRIES} tries")
}

/// Cancel `shutdown` on SIGINT or SIGTERM; both drain the same way.
async fn signals(shutdown: CancellationToken) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(err) => {
                error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT: draining"),
        () = term => info!("SIGTERM: draining"),
    }
    shutdown.cancel();
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dns_binds_udp_and_tcp_on_one_port_and_names_a_taken_one() {
        // Port 0: both protocols on the same port, whichever it is.
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (udp, tcp) = bind_dns(any).await.unwrap();
        assert_eq!(udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        // A configured port whose TCP side is taken is an error naming the key and the
        // protocol, not a silent move to another port.
        let mut checked = false;
        for _ in 0..16 {
            let taken = tokio::net::TcpListener::bind(any).await.unwrap();
            let port = taken.local_addr().unwrap();
            if tokio::net::UdpSocket::bind(port).await.is_err() {
                continue; // taken for UDP too: not the case under test
            }
            let err = bind_dns(port).await.unwrap_err();
            let text = format!("{err:#}");
            assert!(text.starts_with("dns.listen: cannot bind"), "{text}");
            assert!(text.contains("(tcp)"), "{text}");
            checked = true;
            break;
        }
        assert!(checked, "no port was free for UDP and taken for TCP");
    }
}
