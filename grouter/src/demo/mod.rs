//! `grouter demo`: a self-contained three-site mesh on loopback, to see GRouter route.
//!
//! For each site (`lon`, `nyc`, `sgp`) it starts a `nats-server` (the site's bus), a GoRouter
//! stand-in (a `grouter-standin` child process, found next to this binary as cargo builds
//! them), a Cloud Controller stand-in (a `grouter-cc-standin` child process, the site's
//! foundation: CC v3, UAA and blobstore on one port; [`foundation`]) and a `grouter run`
//! child process (this very binary) whose config, mesh certificate and log it writes into
//! one directory. lon's foundation holds the sample app `shop` (a buildpack app with a
//! droplet); nyc's and sgp's hold the same org, space and domain but no app, and every
//! node's `[cloud_controller]` names its own site's foundation with a UAA client of that
//! site alone. It then registers sample routes at each site's NATS
//! as a route emitter would (again every 20 s), waits until every node is `in_sync` and
//! knows every route, and prints the sites and ready-to-paste `curl` and `gcf` commands for
//! each branch of the routing decision: a local app, a remote app proxied over the mesh, a
//! redirect (`sgp` redirects instead of proxying), an unknown host, the admin API, the
//! control plane ([`control`]: pinning apps to a region, draining a site, uploading a
//! certificate that every node then serves by SNI on its HTTPS listener), placing an app
//! at more foundations (`gcf scale`: lon's droplet copied to another site's foundation over
//! the mesh), and fail-open when a site is cut off.
//!
//! With `--check` it runs those examples itself, prints `PASS` or `FAIL` per case and exits
//! 0 only when all pass; otherwise it runs until SIGINT or SIGTERM.
//!
//! Ports: with `--base-port N` every port is fixed ([`PortOffset`]), so the printed commands
//! are the same on every run; without it every listener binds port 0 and the demo learns the
//! ports from the children's `listening` log lines (JSON logs).
//!
//! Children run in their own process groups, so that a Ctrl-C in the terminal reaches the
//! demo alone and it stops them in order (nodes first, then the buses, then the stand-ins:
//! the GoRouter and the Cloud Controller ones).
//! The flip side: a demo killed with SIGKILL leaves them running.
//!
//! It is part of the `grouter` binary, not of the library, and links no stand-in code: the
//! product must not depend on the stand-ins' crates (nor the GoRouter stand-in's WebSocket
//! library); they are run as programs.
//!
//! Must never: leave a child process running when it returns (children are stopped by pid
//! on every path; a [`Proc`] that is dropped kills its child); delete a directory the user
//! named with `--dir` (only a directory it made itself under the system temp dir); signal
//! any process it did not start.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use grouter::config::{Config, ConfigErrors, RemoteMode};
use grouter::mesh::identity::{self, IdentityError, NodeIdentity};

mod acme;
mod control;
mod foundation;

/// The demo's sites in start order: name, region, policy for apps served only elsewhere.
/// `sgp` redirects so that the redirect branch can be shown next to the proxy branch.
const SITES: [(&str, &str, RemoteMode); 3] = [
    ("lon", "eu", RemoteMode::Proxy),
    ("nyc", "us", RemoteMode::Proxy),
    ("sgp", "ap", RemoteMode::Redirect),
];

/// A sample app: its name, app guid, route, and the sites that run it.
#[derive(Debug)]
struct App {
    name: &'static str,
    guid: &'static str,
    host: &'static str,
    sites: &'static [&'static str],
}

/// The sample apps, registered at the sites that run them.
const APPS: [App; 3] = [
    App {
        name: "shop",
        guid: "5d0c1b6e-0000-4000-8000-000000000001",
        host: "shop.apps.example.com",
        sites: &["lon", "nyc"],
    },
    App {
        name: "blog",
        guid: "5d0c1b6e-0000-4000-8000-000000000002",
        host: "blog.apps.example.com",
        sites: &["nyc"],
    },
    App {
        name: "cdn",
        guid: "5d0c1b6e-0000-4000-8000-000000000003",
        host: "cdn.apps.example.com",
        sites: &["sgp"],
    },
];
/// Instances each app runs at each of its sites.
const INSTANCES: u16 = 2;
/// A host no site serves.
const UNKNOWN_HOST: &str = "nope.apps.example.com";

/// How often routes are registered again once the mesh is ready (a route emitter's
/// heartbeat; well under the 120 s stale threshold).
const REREGISTER_INTERVAL: Duration = Duration::from_secs(20);
/// How often routes are registered until every node knows every route: a node that
/// subscribed after a registration missed it.
const REGISTER_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// How long one process has to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the mesh has to converge (every node `in_sync`, every route everywhere).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `sgp` has to report sync `lost` once the other sites' nodes are stopped (it
/// takes `mesh.sync_lost_after_secs`, 10 s).
const LOST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often readiness and sync state are polled.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How often the children are checked for an unexpected exit.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);
/// How long a child has to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Deadline of one HTTP request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response body read.
const MAX_BODY: usize = 1024 * 1024;
/// Lines of a child's log quoted when it fails.
const LOG_TAIL_LINES: usize = 20;
/// Seconds without the other sites before a node's sync is `lost` (the default).
const SYNC_LOST_AFTER_SECS: u64 = 10;
/// The admin token file, in the demo directory.
const TOKEN_FILE: &str = "admin.token";
/// The mesh CA's directory, in the demo directory.
const CA_DIR: &str = "mesh-ca";
/// A node's `tls.cert_dir`, in its site's directory (empty: certificates are uploaded).
const CERT_DIR: &str = "certs";
/// A node's config file, in its site's directory.
const CONFIG_FILE: &str = "grouter.toml";
/// The install command named when `nats-server` is missing.
const NATS_INSTALL: &str = "apt-get install -y nats-server";
/// The GoRouter stand-in's binary, next to this one.
const STANDIN_BIN: &str = "grouter-standin";
/// The Cloud Controller stand-in's binary, next to this one.
const CC_STANDIN_BIN: &str = "grouter-cc-standin";

/// Where each listener sits with `--base-port N`: port `N + offset + site index`.
#[derive(Debug, Clone, Copy)]
#[repr(u16)]
enum PortOffset {
    /// `proxy.http_listen`.
    Http = 0,
    /// `admin.listen`.
    Admin = 10,
    /// `mesh.listen`.
    Mesh = 20,
    /// The site's `nats-server`.
    Nats = 30,
    /// The site's GoRouter stand-in.
    GoRouter = 40,
    /// `dns.listen` (UDP and TCP).
    Dns = 50,
    /// `proxy.https_listen`.
    Https = 60,
    /// The site's Cloud Controller stand-in (CC v3, UAA and blobstore).
    CloudController = 70,
}
/// Ports used above `--base-port` (the highest offset is the last).
const PORT_SPAN: u16 = PortOffset::CloudController as u16 + SITES.len() as u16;

/// `grouter demo` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Directory for the configs, certificates, admin token and logs; kept on exit.
    /// Default: a new directory under the system temp dir, removed on exit.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Use fixed ports so the printed commands stay the same: HTTP N..N+2, admin N+10..,
    /// mesh N+20.., NATS N+30.., GoRouter stand-ins N+40.., DNS N+50.., HTTPS N+60..,
    /// Cloud Controller stand-ins N+70.. (lon, nyc, sgp). Default: ports of the system's
    /// choosing.
    #[arg(long, value_name = "N")]
    pub base_port: Option<u16>,
    /// Run every example request, print PASS or FAIL per case, stop, and exit 0 only when
    /// all pass.
    #[arg(long)]
    pub check: bool,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// `nats-server` is not installed.
    #[error("nats-server not found on PATH or in /usr/sbin: install it with `{NATS_INSTALL}`")]
    NatsServerMissing,
    /// The `grouter-standin` binary is not next to this one.
    #[error(
        "the GoRouter stand-in {} not found: build it with `cargo build --workspace` \
         (or `cargo build -p grouter-standin`, with `--release` for a release build)",
        path.display()
    )]
    StandInMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The `grouter-cc-standin` binary is not next to this one.
    #[error(
        "the Cloud Controller stand-in {} not found: build it with \
         `cargo build -p grouter-cc-standin` (with `--release` for a release build; \
         `cargo build --workspace` builds it too)",
        path.display()
    )]
    CcStandInMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A file or directory could not be read, written or created.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory at fault.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A process or thread could not be started, or a listener bound.
    #[error("cannot start {what}: {source}")]
    Start {
        /// What.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Mesh certificates could not be made.
    #[error("mesh certificates: {0}")]
    Identity(#[from] IdentityError),
    /// A config the demo wrote does not validate (a bug in the demo).
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// A child process exited when it should be running.
    #[error("{what} exited ({status}); last lines of {}:\n{tail}", log.display())]
    Exited {
        /// Which process.
        what: String,
        /// How it ended.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        tail: String,
    },
    /// Something did not happen in time.
    #[error("timed out after {} s waiting for {what}", timeout.as_secs())]
    Timeout {
        /// What was awaited, and what was still missing.
        what: String,
        /// How long it was awaited.
        timeout: Duration,
    },
    /// A site's NATS could not be reached.
    #[error("{url}: {reason}")]
    Nats {
        /// The server.
        url: String,
        /// Why.
        reason: String,
    },
    /// SIGINT or SIGTERM arrived before the checks finished.
    #[error("interrupted by {0} before the checks finished")]
    Interrupted(&'static str),
}

/// How the demo ended when nothing failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Stopped by a signal.
    Stopped,
    /// `--check` ran every case; whether all passed.
    Checked(bool),
}

/// Run `grouter demo`: 0 after a clean stop or when every check passed, 1 on a runtime
/// failure or a failed check, 2 on a bad flag.
pub fn main(args: DemoArgs) -> ExitCode {
    let bad_base = args
        .base_port
        .filter(|&base| base == 0 || base.checked_add(PORT_SPAN).is_none());
    if let Some(base) = bad_base {
        eprintln!(
            "grouter demo: --base-port: {base} is out of range: the demo uses ports N..N+{PORT_SPAN}, \
             so N must be 1..={}",
            u16::MAX - PORT_SPAN
        );
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("grouter demo: cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(Outcome::Stopped | Outcome::Checked(true)) => ExitCode::SUCCESS,
        Ok(Outcome::Checked(false)) => ExitCode::from(1),
        Err(err) => {
            eprintln!("grouter demo: {err}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: DemoArgs) -> Result<Outcome, DemoError> {
    // Installed before any child starts: from here on SIGINT and SIGTERM stop the demo
    // cleanly instead of killing it and orphaning its children.
    let mut signals = Signals::new()?;
    let nats_bin = find_program("nats-server").ok_or(DemoError::NatsServerMissing)?;
    let standin_bin =
        sibling_program(STANDIN_BIN).map_err(|path| DemoError::StandInMissing { path })?;
    let cc_standin_bin =
        sibling_program(CC_STANDIN_BIN).map_err(|path| DemoError::CcStandInMissing { path })?;
    let (dir, temporary) = prepare_dir(args.dir.as_deref())?;
    println!(
        "grouter demo: files in {}{}",
        dir.display(),
        if temporary { " (removed on exit)" } else { "" }
    );
    let programs = Programs {
        nats: nats_bin,
        standin: standin_bin,
        cc_standin: cc_standin_bin,
    };
    let outcome = run_in(&dir, &programs, &args, &mut signals).await;
    if temporary {
        if let Err(err) = fs::remove_dir_all(&dir) {
            eprintln!("grouter demo: cannot remove {}: {err}", dir.display());
        }
    }
    outcome
}

/// Start, serve or check, stop: the part that needs the directory.
async fn run_in(
    dir: &Path,
    programs: &Programs,
    args: &DemoArgs,
    signals: &mut Signals,
) -> Result<Outcome, DemoError> {
    // A signal during start-up drops the half-started demo, whose processes are killed.
    let mut demo = tokio::select! {
        demo = Demo::start(dir, programs, args.base_port) => demo?,
        name = signals.recv() => {
            println!("{name}: stopping");
            return Ok(Outcome::Stopped);
        }
    };
    let outcome = tokio::select! {
        outcome = demo.operate(args.check) => outcome,
        name = signals.recv() => {
            println!("{name}: stopping");
            if args.check {
                Err(DemoError::Interrupted(name))
            } else {
                Ok(Outcome::Stopped)
            }
        }
    };
    demo.stop().await;
    outcome
}

/// SIGINT and SIGTERM, both of which stop the demo.
#[derive(Debug)]
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn new() -> Result<Signals, DemoError> {
        let listen = |kind| {
            signal(kind).map_err(|source| DemoError::Start {
                what: "the signal handlers".into(),
                source,
            })
        };
        Ok(Signals {
            interrupt: listen(SignalKind::interrupt())?,
            terminate: listen(SignalKind::terminate())?,
        })
    }

    /// The name of the next signal.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// The programs the demo runs besides this binary.
#[derive(Debug)]
struct Programs {
    /// `nats-server`.
    nats: PathBuf,
    /// `grouter-standin`.
    standin: PathBuf,
    /// `grouter-cc-standin`.
    cc_standin: PathBuf,
}

/// The program `name` next to this binary, where cargo puts the workspace's binaries; where
/// it was looked for when it is not there (or this executable cannot be found).
fn sibling_program(name: &str) -> Result<PathBuf, PathBuf> {
    let path = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(name)))
        .unwrap_or_else(|| PathBuf::from(name));
    if path.is_file() { Ok(path) } else { Err(path) }
}

/// A Debian-packaged daemon: on PATH, in /usr/sbin or in /usr/bin.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// `kill(1)` (procps): on PATH, else in /usr/bin or /bin; looked up once.
fn kill_program() -> Option<&'static Path> {
    static KILL: OnceLock<Option<PathBuf>> = OnceLock::new();
    KILL.get_or_init(|| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
            .map(|dir| dir.join("kill"))
            .find(|p| p.is_file())
    })
    .as_deref()
}

/// The demo directory, absolute (printed commands work from anywhere), and whether the demo
/// made it (and so removes it).
fn prepare_dir(dir: Option<&Path>) -> Result<(PathBuf, bool), DemoError> {
    match dir {
        Some(dir) => {
            let dir = std::path::absolute(dir).map_err(|source| DemoError::Io {
                action: "resolve",
                path: dir.to_path_buf(),
                source,
            })?;
            fs::create_dir_all(&dir).map_err(|source| DemoError::Io {
                action: "create",
                path: dir.clone(),
                source,
            })?;
            Ok((dir, false))
        }
        None => {
            let name = format!("grouter-demo-{}", uuid::Uuid::new_v4().simple());
            let dir = std::env::temp_dir().join(name);
            // Private: it holds the admin token and the mesh CA key.
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|source| DemoError::Io {
                    action: "create",
                    path: dir.clone(),
                    source,
                })?;
            Ok((dir, true))
        }
    }
}

/// The admin token in `path`: the one there if any (a kept `--dir` keeps its token), else a
/// new random one written with mode 0600.
fn ensure_token(path: &Path) -> Result<String, DemoError> {
    if let Some(existing) = fs::read_to_string(path)
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Ok(existing.trim().to_string());
    }
    let token = uuid::Uuid::new_v4().simple().to_string();
    let io_err = |source| DemoError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err)?;
    writeln!(file, "{token}").map_err(io_err)?;
    Ok(token)
}

// ---------------------------------------------------------------------------------------------
// Child processes.

/// A bound listener a child reported in its log.
#[derive(Debug)]
struct Listening {
    service: String,
    addr: SocketAddr,
}

/// The JSON log line `{"message":"listening","service":…,"addr":…}` of `grouter` and of
/// `grouter-standin`.
fn grouter_listening(line: &str) -> Option<Listening> {
    let v: Value = serde_json::from_str(line).ok()?;
    if v["message"] != "listening" {
        return None;
    }
    Some(Listening {
        service: v["service"].as_str()?.to_string(),
        addr: v["addr"].as_str()?.parse().ok()?,
    })
}

/// `nats-server`'s `Listening for client connections on 127.0.0.1:PORT`.
fn nats_listening(line: &str) -> Option<Listening> {
    let (_, addr) = line.split_once("Listening for client connections on ")?;
    Some(Listening {
        service: "nats".into(),
        addr: addr.trim().parse().ok()?,
    })
}

/// A child process of the demo, with its stderr copied to a log file.
#[derive(Debug)]
struct Proc {
    /// What it is, for messages: `lon-1 (grouter)`.
    what: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Start `cmd` in its own process group (so a Ctrl-C in the terminal reaches the demo
    /// alone, which stops its children in order), copying its stderr to `log` on a thread
    /// and sending every line `parse` recognises to the returned channel. The channel closes
    /// when the child closes its stderr, which it does when it exits.
    fn spawn(
        what: String,
        mut cmd: Command,
        log: PathBuf,
        parse: fn(&str) -> Option<Listening>,
    ) -> Result<(Proc, mpsc::UnboundedReceiver<Listening>), DemoError> {
        let file = File::create(&log).map_err(|source| DemoError::Io {
            action: "create",
            path: log.clone(),
            source,
        })?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|source| DemoError::Start {
                what: what.clone(),
                source,
            })?;
        let (tx, rx) = mpsc::unbounded_channel();
        let stderr = child.stderr.take();
        // From here the child is owned by `proc`: any error below kills it on drop.
        let proc = Proc {
            what: what.clone(),
            child: Some(child),
            log,
        };
        if let Some(stderr) = stderr {
            std::thread::Builder::new()
                .name(format!("log {what}"))
                .spawn(move || copy_log(stderr, file, parse, &tx))
                .map_err(|source| DemoError::Start {
                    what: format!("the log thread of {what}"),
                    source,
                })?;
        }
        Ok((proc, rx))
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Send `sig` (`STOP`, `CONT`, `TERM`) with `kill(1)`; false when it could not be sent.
    fn signal(&self, sig: &str) -> bool {
        let (Some(child), Some(kill)) = (&self.child, kill_program()) else {
            return false;
        };
        Command::new(kill)
            .arg(format!("-{sig}"))
            .arg(child.id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// How it ended, if it has.
    fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// The error for a child that exited when it should be running.
    fn exited(&mut self, status: Option<ExitStatus>) -> DemoError {
        DemoError::Exited {
            what: format!("{} (pid {})", self.what, self.pid()),
            status: status.map_or_else(|| "stderr closed".into(), |s| s.to_string()),
            log: self.log.clone(),
            tail: log_tail(&self.log, LOG_TAIL_LINES),
        }
    }

    /// Wait for the listeners named in `services`, until `deadline`.
    async fn wait_listening(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Listening>,
        services: &[&str],
    ) -> Result<BTreeMap<String, SocketAddr>, DemoError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut found = BTreeMap::new();
        while services.iter().any(|s| !found.contains_key(*s)) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(l)) => {
                    found.insert(l.service, l.addr);
                }
                Ok(None) => {
                    // Its stderr closed: it is exiting; give it a moment to be reaped.
                    let mut status = None;
                    for _ in 0..50 {
                        status = self.exit_status();
                        if status.is_some() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    return Err(self.exited(status));
                }
                Err(_) => {
                    return Err(DemoError::Timeout {
                        what: format!("{} to listen (see {})", self.what, self.log.display()),
                        timeout: START_TIMEOUT,
                    });
                }
            }
        }
        Ok(found)
    }

    /// Ask it to stop: SIGCONT (it may have been stopped by the user), then SIGTERM.
    fn ask_to_stop(&mut self) {
        self.signal("CONT");
        if !self.signal("TERM") {
            // Without kill(1), the only signal std can send.
            self.kill();
        }
    }

    /// Wait until it exits or `deadline` passes, then kill it; how it ended.
    async fn wait_stopped(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(status) = self.exit_status() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                let status = self.child.take().and_then(|mut c| c.wait().ok());
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL (by pid, through std: it needs no kill(1) and ends a stopped process too).
    fn kill(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Child::kill sends SIGKILL to this pid, which also ends a stopped process.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Copy `stderr` line by line into `file`, sending recognised lines to `tx`. Lines that are
/// not UTF-8 are copied lossily rather than ending the copy (which would block the child
/// once the pipe filled).
fn copy_log(
    stderr: ChildStderr,
    file: File,
    parse: fn(&str) -> Option<Listening>,
    tx: &mpsc::UnboundedSender<Listening>,
) {
    let mut reader = BufReader::new(stderr);
    let mut log = io::LineWriter::new(file);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        // A full disk must not stop the copy: the child would block on its stderr.
        let _ = writeln!(log, "{line}");
        if let Some(l) = parse(line) {
            // Nobody listens once the child is up; that is fine.
            let _ = tx.send(l);
        }
    }
}

/// The last `n` lines of `path`, or why it could not be read.
fn log_tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(err) => format!("(cannot read it: {err})"),
    }
}

// ---------------------------------------------------------------------------------------------
// The demo.

/// One site: its bus, its GoRouter stand-in, its Cloud Controller stand-in and its node.
#[derive(Debug)]
struct Site {
    name: &'static str,
    node_id: String,
    remote: RemoteMode,
    dir: PathBuf,
    nats: Proc,
    nats_url: String,
    /// The `grouter-standin` process.
    stand_in: Proc,
    /// The stand-in's address.
    gorouter: SocketAddr,
    /// The `grouter-cc-standin` process: the site's foundation.
    cc: Proc,
    /// Its address (CC v3, UAA, blobstore and `/_standin/state`).
    cloud_controller: SocketAddr,
    node: Proc,
    http: SocketAddr,
    admin: SocketAddr,
    mesh: SocketAddr,
    /// `dns.listen`.
    dns: SocketAddr,
    /// `proxy.https_listen`.
    https: SocketAddr,
}

/// The running demo.
#[derive(Debug)]
struct Demo {
    dir: PathBuf,
    token: String,
    sites: Vec<Site>,
    emitter: JoinHandle<()>,
    /// Set once every node knows every route: registrations slow to the emitter's pace.
    routes_known: Arc<AtomicBool>,
    http: Client<HttpConnector, Full<Bytes>>,
    /// The demo's certificates (default, and the one the examples upload).
    tls: control::DemoTls,
    /// The ACME CA (pebble), when installed.
    acme: Option<acme::DemoAcme>,
}

impl Demo {
    /// Start every site in order (later sites seed the mesh with the earlier ones) and the
    /// route emitter.
    async fn start(dir: &Path, programs: &Programs, base: Option<u16>) -> Result<Demo, DemoError> {
        let token = ensure_token(&dir.join(TOKEN_FILE))?;
        let ca_dir = dir.join(CA_DIR);
        // A kept directory keeps its CA: `grouter tls ca` never overwrites a CA key.
        if !ca_dir.join(identity::CA_KEY_FILE).exists() {
            identity::create_ca(&ca_dir)?;
        }
        let tls = control::DemoTls::create(&dir.join(control::TLS_DIR))?;
        // pebble validates at lon's HTTP and HTTPS ports, so they are chosen before lon runs.
        let lon_port = |offset: PortOffset| match base {
            Some(b) => Ok(b + offset as u16),
            None => acme::free_port(),
        };
        let lon_ports = (lon_port(PortOffset::Http)?, lon_port(PortOffset::Https)?);
        let acme = acme::DemoAcme::start(dir, lon_ports.0, lon_ports.1).await?;
        let acme_section = acme
            .as_ref()
            .map(acme::DemoAcme::section)
            .unwrap_or_default();
        let mut sites: Vec<Site> = Vec::new();
        for (index, (name, region, remote)) in SITES.into_iter().enumerate() {
            let port = |offset: PortOffset| {
                let index = u16::try_from(index).unwrap_or(0);
                let port = base.map_or(0, |b| b + offset as u16 + index);
                SocketAddr::from(([127, 0, 0, 1], port))
            };
            let site_dir = dir.join(name);
            // `tls.cert_dir`: empty; the demo's certificate arrives by upload instead.
            let cert_dir = site_dir.join(CERT_DIR);
            fs::create_dir_all(&cert_dir).map_err(|source| DemoError::Io {
                action: "create",
                path: cert_dir.clone(),
                source,
            })?;

            let (nats, nats_addr) =
                start_nats(&programs.nats, name, &site_dir, port(PortOffset::Nats)).await?;
            let (stand_in, gorouter) = start_standin(
                &programs.standin,
                name,
                &site_dir,
                port(PortOffset::GoRouter),
            )
            .await?;
            let foundation = foundation::Foundation::prepare(&site_dir, name)?;
            let (cc, cloud_controller) = foundation
                .start(
                    &programs.cc_standin,
                    &site_dir,
                    port(PortOffset::CloudController),
                )
                .await?;

            let node_id = format!("{name}-1");
            let identity = NodeIdentity::new(node_id.as_str(), name)?;
            identity::create_node(&ca_dir, &identity, &site_dir.join("mesh"))?;
            let nats_url = format!("nats://{nats_addr}");
            let config = NodeConfig {
                node_id: &node_id,
                site: name,
                region,
                remote,
                nats_url: &nats_url,
                gorouter,
                http: if index == 0 {
                    SocketAddr::from(([127, 0, 0, 1], lon_ports.0))
                } else {
                    port(PortOffset::Http)
                },
                admin: port(PortOffset::Admin),
                mesh: port(PortOffset::Mesh),
                seeds: sites.iter().map(|s| s.mesh).collect(),
                dns: port(PortOffset::Dns),
                https: if index == 0 {
                    SocketAddr::from(([127, 0, 0, 1], lon_ports.1))
                } else {
                    port(PortOffset::Https)
                },
                entry: entry_address(name),
                cloud_controller: Some((cloud_controller, foundation.client_id.as_str())),
                acme: &acme_section,
            }
            .render();
            let config_path = site_dir.join(CONFIG_FILE);
            fs::write(&config_path, config).map_err(|source| DemoError::Io {
                action: "write",
                path: config_path.clone(),
                source,
            })?;
            // The demo writes what `grouter run` accepts; checked here so a mistake reads
            // as a config error rather than as a child that died.
            Config::load(&config_path)?;

            let (node, listening) = start_node(&node_id, &config_path, &site_dir).await?;
            let addr = |service: &str| listening.get(service).copied();
            let (Some(http), Some(admin), Some(mesh), Some(dns), Some(https)) = (
                addr("http"),
                addr("admin"),
                addr("mesh"),
                addr("dns"),
                addr("https"),
            ) else {
                // wait_listening returned every service asked for.
                return Err(DemoError::Timeout {
                    what: format!("{node_id} to listen"),
                    timeout: START_TIMEOUT,
                });
            };
            sites.push(Site {
                name,
                node_id,
                remote,
                dir: site_dir,
                nats,
                nats_url,
                stand_in,
                gorouter,
                cc,
                cloud_controller,
                node,
                http,
                admin,
                mesh,
                dns,
                https,
            });
        }

        let mut buses = Vec::new();
        for site in &sites {
            let client = async_nats::connect(site.nats_url.as_str())
                .await
                .map_err(|e| DemoError::Nats {
                    url: site.nats_url.clone(),
                    reason: e.to_string(),
                })?;
            buses.push((site.name, client));
        }
        let routes_known = Arc::new(AtomicBool::new(false));
        let emitter = tokio::spawn(emit_routes(buses, routes_known.clone()));
        let http = Client::builder(TokioExecutor::new())
            // No idle connections: a request never lands on a connection to a node that was
            // stopped in the meantime.
            .pool_max_idle_per_host(0)
            .build_http();
        Ok(Demo {
            dir: dir.to_path_buf(),
            token,
            sites,
            emitter,
            routes_known,
            http,
            tls,
            acme,
        })
    }

    /// Wait for the mesh, print what to try, then check or serve. Returns only on failure or
    /// when the checks are done.
    async fn operate(&mut self, check: bool) -> Result<Outcome, DemoError> {
        let started = Instant::now();
        self.wait_in_sync(READY_TIMEOUT).await?;
        self.routes_known.store(true, Ordering::Relaxed);
        println!(
            "the mesh is in sync and every node knows every route ({:.1} s)",
            started.elapsed().as_secs_f64()
        );
        println!();
        print!("{}", self.summary());
        if check {
            println!();
            return Ok(Outcome::Checked(self.check().await));
        }
        println!("Running. Ctrl-C (SIGINT) or SIGTERM stops every process.");
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        loop {
            tick.tick().await;
            if let Some(err) = self.exited() {
                return Err(err);
            }
        }
    }

    /// The first child that exited, as an error.
    fn exited(&mut self) -> Option<DemoError> {
        for site in &mut self.sites {
            for proc in [
                &mut site.node,
                &mut site.nats,
                &mut site.stand_in,
                &mut site.cc,
            ] {
                if let Some(status) = proc.exit_status() {
                    return Some(proc.exited(Some(status)));
                }
            }
        }
        None
    }

    /// Wait until every node is `in_sync` and knows every route at exactly its sites.
    async fn wait_in_sync(&mut self, timeout: Duration) -> Result<(), DemoError> {
        let deadline = Instant::now() + timeout;
        loop {
            let missing = self.not_ready().await;
            if missing.is_empty() {
                return Ok(());
            }
            if let Some(err) = self.exited() {
                return Err(err);
            }
            if Instant::now() >= deadline {
                return Err(DemoError::Timeout {
                    what: format!("the mesh to converge: {}", missing.join("; ")),
                    timeout,
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// What keeps the mesh from being ready, one entry per problem; empty when ready.
    async fn not_ready(&self) -> Vec<String> {
        let mut missing = Vec::new();
        for site in &self.sites {
            match self.admin_json(site, "/v1/status").await {
                Ok(status) if status["sync"] == "in_sync" => {}
                Ok(status) => missing.push(format!("{} is {}", site.node_id, status["sync"])),
                Err(err) => missing.push(format!("{}: {err}", site.node_id)),
            }
            let routes = match self.admin_json(site, "/v1/routes").await {
                Ok(v) => v,
                Err(err) => {
                    missing.push(format!("{}: {err}", site.node_id));
                    continue;
                }
            };
            for app in &APPS {
                let sites = serving_sites(&routes, app.host);
                if sites != app.sites {
                    missing.push(format!(
                        "{} sees {} at [{}], not [{}]",
                        site.node_id,
                        app.host,
                        sites.join(", "),
                        app.sites.join(", ")
                    ));
                }
            }
        }
        missing
    }

    /// GET an admin path of `site` with the token; the JSON of a 200.
    async fn admin_json(&self, site: &Site, path: &str) -> Result<Value, String> {
        let reply = self.get(site.admin, None, path, Some(&self.token)).await?;
        if reply.status != 200 {
            return Err(format!("GET {path}: {}", reply.status));
        }
        serde_json::from_str(&reply.body).map_err(|e| format!("GET {path}: {e}"))
    }

    /// GET `path` from `addr`, with a Host and a bearer token when given.
    async fn get(
        &self,
        addr: SocketAddr,
        host: Option<&str>,
        path: &str,
        token: Option<&str>,
    ) -> Result<Reply, String> {
        self.request(http::Method::GET, addr, host, path, token, None)
            .await
    }

    /// `method path` at `addr`, with a Host, a bearer token and a JSON body when given.
    async fn request(
        &self,
        method: http::Method,
        addr: SocketAddr,
        host: Option<&str>,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Reply, String> {
        let verb = method.to_string();
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        if let Some(host) = host {
            req = req.header(header::HOST, host);
        }
        if let Some(token) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let content = match body {
            Some(body) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(body.to_string())
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(content)).map_err(|e| e.to_string())?;
        let exchange = async {
            let resp = self.http.request(req).await.map_err(|e| error_chain(&e))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("reading the body: {e}"))?
                .to_bytes();
            Ok(Reply {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()))?
            .map_err(|e: String| format!("{verb} http://{addr}{path}: {e}"))
    }

    fn site(&self, name: &str) -> Option<&Site> {
        self.sites.iter().find(|s| s.name == name)
    }

    /// The sites, routes and commands to try.
    fn summary(&self) -> String {
        let mut out = String::new();
        let dir = shell_quote(&self.dir.display().to_string());
        let token_file = format!("{dir}/{TOKEN_FILE}");
        let _ = writeln!(
            out,
            "{:<5} {:<6} {:<9} {:<16} {:<16} {:<16} {:<23} {:<16} {:>7}",
            "SITE", "NODE", "REMOTE", "HTTP", "ADMIN", "MESH", "NATS", "GOROUTER", "PID"
        );
        for s in &self.sites {
            let _ = writeln!(
                out,
                "{:<5} {:<6} {:<9} {:<16} {:<16} {:<16} {:<23} {:<16} {:>7}",
                s.name,
                s.node_id,
                remote_word(s.remote),
                s.http.to_string(),
                s.admin.to_string(),
                s.mesh.to_string(),
                s.nats_url,
                s.gorouter.to_string(),
                s.node.pid()
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Routes, registered at each site's NATS as a route emitter would (again every {} s):",
            REREGISTER_INTERVAL.as_secs()
        );
        for app in &APPS {
            let _ = writeln!(
                out,
                "  {:<24} app {:<5} {} instances at each of: {}",
                app.host,
                app.name,
                INSTANCES,
                app.sites.join(", ")
            );
        }
        let (Some(lon), Some(nyc), Some(sgp)) =
            (self.site("lon"), self.site("nyc"), self.site("sgp"))
        else {
            return out;
        };
        let curl =
            |site: &Site, host: &str| format!("curl -si -H 'Host: {host}' http://{}/", site.http);
        let _ = writeln!(out);
        let _ = writeln!(out, "Try:");
        let examples = [
            (
                "A local app: shop runs at lon, so lon's GoRouter serves it (X-Grouter-Site: lon)",
                curl(lon, "shop.apps.example.com"),
            ),
            (
                "A remote app: blog runs only at nyc; lon proxies it over the mesh (X-Grouter-Site: nyc)",
                curl(lon, "blog.apps.example.com"),
            ),
            (
                "A redirect: sgp redirects instead (307, Location: http://blog.nyc.apps.example.com/)",
                curl(sgp, "blog.apps.example.com"),
            ),
            (
                "The redirect target: nyc serves its redirect form of blog as blog",
                curl(nyc, "blog.nyc.apps.example.com"),
            ),
            (
                "An unknown host: 404, X-Cf-Routererror: unknown_route",
                curl(lon, UNKNOWN_HOST),
            ),
        ];
        for (what, cmd) in examples {
            let _ = writeln!(out, "  # {what}");
            let _ = writeln!(out, "  {cmd}");
        }
        if let Some(acme) = &self.acme {
            let _ = writeln!(out);
            let _ = writeln!(out, "{}", acme.summary());
            let sgp = self
                .site("sgp")
                .map_or(String::new(), |s| s.https.to_string());
            let _ = writeln!(
                out,
                "  openssl s_client -connect {sgp} -servername {} </dev/null 2>/dev/null | openssl x509 -noout -issuer -subject",
                acme::NAME
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "DNS for apps.example.com (each site's entry address is a documentation address):"
        );
        let dig = |site: &Site, host: &str| {
            format!(
                "dig @{} -p {} +short {host}",
                site.dns.ip(),
                site.dns.port()
            )
        };
        let _ = writeln!(
            out,
            "  # shop is served at lon: lon's node answers {}",
            entry_address("lon")
        );
        let _ = writeln!(out, "  {}", dig(lon, "shop.apps.example.com"));
        let _ = writeln!(
            out,
            "  # blog is served only at nyc: {}",
            entry_address("nyc")
        );
        let _ = writeln!(out, "  {}", dig(lon, "blog.apps.example.com"));
        let _ = writeln!(out);
        let _ = writeln!(out, "Admin API and gcf (the token is in {token_file}):");
        let _ = writeln!(out, "  curl -s http://{}/healthz", lon.admin);
        let _ = writeln!(
            out,
            "  curl -s -H \"Authorization: Bearer $(cat {token_file})\" http://{}/v1/sites",
            lon.admin
        );
        let gcf = gcf_path();
        let _ = writeln!(
            out,
            "  {gcf} api http://{} --token-file {token_file}",
            lon.admin
        );
        let _ = writeln!(out, "  {gcf} sites");
        let _ = writeln!(out, "  {gcf} apps");
        let _ = writeln!(out, "  {gcf} routes");
        let _ = writeln!(out);
        out.push_str(&self.control_summary(&gcf));
        out.push_str(&self.placement_summary(&gcf));
        let pids = format!("{} {}", lon.node.pid(), nyc.node.pid());
        let _ = writeln!(
            out,
            "Fail open: cut sgp off by stopping the lon and nyc nodes; after ~{SYNC_LOST_AFTER_SECS} s \
             sgp reports sync \"lost\""
        );
        let _ = writeln!(
            out,
            "and sends unknown hosts to its own GoRouters (the stand-in answers 200 with its site):"
        );
        let _ = writeln!(out, "  kill -STOP {pids}");
        let _ = writeln!(out, "  curl -s http://{}/healthz", sgp.admin);
        let _ = writeln!(out, "  {}", curl(sgp, UNKNOWN_HOST));
        let _ = writeln!(out, "  kill -CONT {pids}");
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Configs and logs: {dir}/<site>/{CONFIG_FILE}, grouter.log, nats.log, gorouter.log, {}",
            foundation::LOG_FILE
        );
        out
    }

    /// Run every example; print a PASS or FAIL line per case; whether all passed.
    async fn check(&mut self) -> bool {
        let mut passed = 0;
        let mut failed = 0;
        let mut report = |name: &str, result: Result<String, String>| match result {
            Ok(detail) => {
                passed += 1;
                println!("PASS  {name}: {detail}");
            }
            Err(why) => {
                failed += 1;
                println!("FAIL  {name}: {why}");
            }
        };
        let Some((lon, nyc, sgp)) = self.three() else {
            report("sites", Err("lon, nyc and sgp are not all running".into()));
            return false;
        };

        let reply = self
            .get(lon.http, Some("shop.apps.example.com"), "/", None)
            .await;
        report("local app (shop at lon)", served_by(reply, "lon"));

        let reply = self
            .get(sgp.http, Some("cdn.apps.example.com"), "/", None)
            .await;
        report("local app (cdn at sgp)", served_by(reply, "sgp"));

        let reply = self
            .get(lon.http, Some("blog.apps.example.com"), "/", None)
            .await;
        report("remote app proxied (blog at lon)", served_by(reply, "nyc"));

        let reply = self
            .get(sgp.http, Some("blog.apps.example.com"), "/a?b=c", None)
            .await;
        report(
            "redirect (blog at sgp)",
            reply.and_then(|r| {
                r.expect_status(307)?;
                let want = "http://blog.nyc.apps.example.com/a?b=c";
                let location = r.header("location");
                if location != want {
                    return Err(format!("expected Location: {want}, got {location:?}"));
                }
                Ok(format!("307, Location: {location}"))
            }),
        );

        let reply = self
            .get(nyc.http, Some("blog.nyc.apps.example.com"), "/", None)
            .await;
        report("redirect target (blog.nyc at nyc)", served_by(reply, "nyc"));

        let not_found = |reply: Result<Reply, String>| {
            let reply = reply?;
            reply.expect_status(404)?;
            let code = reply.header("x-cf-routererror");
            if code != "unknown_route" {
                return Err(format!(
                    "expected X-Cf-Routererror: unknown_route, got {code:?}"
                ));
            }
            Ok("404, X-Cf-Routererror: unknown_route".to_string())
        };
        let reply = self.get(lon.http, Some(UNKNOWN_HOST), "/", None).await;
        report("unknown host (at lon)", not_found(reply));
        let reply = self.get(sgp.http, Some(UNKNOWN_HOST), "/", None).await;
        report("unknown host (at sgp, in sync)", not_found(reply));

        let admin = async {
            let anonymous = self.get(lon.admin, None, "/v1/sites", None).await?;
            anonymous.expect_status(401)?;
            let sites = self.admin_json(lon, "/v1/sites").await?;
            let mut names: Vec<&str> = sites["sites"]
                .as_array()
                .map(|a| a.iter().filter_map(|s| s["site"].as_str()).collect())
                .unwrap_or_default();
            names.sort_unstable();
            if names != ["lon", "nyc", "sgp"] {
                return Err(format!("expected sites lon, nyc, sgp; got {names:?}"));
            }
            Ok("GET /v1/sites: 401 without the token; lon, nyc, sgp with it".to_string())
        };
        report("admin API (at lon)", admin.await);

        // DNS: lon's node answers for the app zone, steering to the sites that serve a host.
        let dns = async {
            let shop = dns_a(lon.dns, "shop.apps.example.com").await?;
            let blog = dns_a(lon.dns, "blog.apps.example.com").await?;
            let (want_shop, want_blog) = (entry_address("lon"), entry_address("nyc"));
            if shop != [want_shop] || blog != [want_blog] {
                return Err(format!(
                    "expected shop -> {want_shop} (lon serves it), blog -> {want_blog} (only nyc does); got {shop:?}, {blog:?}"
                ));
            }
            Ok(format!(
                "shop -> {want_shop} (lon), blog -> {want_blog} (nyc)"
            ))
        };
        report("dns (at lon)", dns.await);

        // The control plane: each example undoes its write before the next one.
        self.check_control(lon, nyc, sgp, &mut report).await;
        if let Some(acme) = &self.acme {
            report(
                "ACME (one order for the mesh; the CA validates at lon, sgp serves the name)",
                acme.check(&[lon, nyc, sgp]).await,
            );
        }

        // Placement: shop at a second foundation, then back to lon alone.
        report(foundation::CASE, self.check_placement(lon, nyc).await);

        // Fail open: stop the other sites' nodes, whatever happens resume them.
        let cut = [&lon.node, &nyc.node];
        let stopped = cut.iter().all(|p| p.signal("STOP"));
        let fail_open = async {
            if !stopped {
                return Err("could not SIGSTOP the lon and nyc nodes with kill(1)".to_string());
            }
            let started = Instant::now();
            let deadline = started + LOST_TIMEOUT;
            loop {
                match self.admin_json(sgp, "/v1/status").await {
                    Ok(status) if status["sync"] == "lost" => break,
                    Ok(_) | Err(_) if Instant::now() >= deadline => {
                        return Err(format!(
                            "sgp did not report sync lost within {} s",
                            LOST_TIMEOUT.as_secs()
                        ));
                    }
                    _ => tokio::time::sleep(POLL_INTERVAL).await,
                }
            }
            let after = started.elapsed().as_secs_f64();
            let reply = self.get(sgp.http, Some(UNKNOWN_HOST), "/", None).await;
            let detail = served_by(reply, "sgp")?;
            Ok(format!(
                "sync lost after {after:.1} s; {UNKNOWN_HOST} at sgp: {detail}"
            ))
        };
        let result = fail_open.await;
        for proc in cut {
            proc.signal("CONT");
        }
        report("fail open (sgp cut off, unknown host)", result);

        let started = Instant::now();
        let recovered = self
            .wait_in_sync(READY_TIMEOUT)
            .await
            .map(|()| {
                format!(
                    "in sync again after {:.1} s",
                    started.elapsed().as_secs_f64()
                )
            })
            .map_err(|e| e.to_string());
        report("recovery (every node in sync)", recovered);

        println!();
        println!("{passed} passed, {failed} failed");
        failed == 0
    }

    fn three(&self) -> Option<(&Site, &Site, &Site)> {
        Some((self.site("lon")?, self.site("nyc")?, self.site("sgp")?))
    }

    /// Stop the emitter, then every node (SIGCONT, SIGTERM, SIGKILL after a grace period),
    /// then every NATS server, then the stand-ins (GoRouter and Cloud Controller).
    async fn stop(self) {
        self.emitter.abort();
        if let Some(acme) = self.acme {
            acme.stop().await;
        }
        let mut sites = self.sites;
        for site in &mut sites {
            site.node.ask_to_stop();
        }
        let deadline = Instant::now() + STOP_GRACE;
        for site in &mut sites {
            match site.node.wait_stopped(deadline).await {
                Some(status) if status.success() => {}
                Some(status) => eprintln!(
                    "grouter demo: {} ended with {status}; see {}",
                    site.node_id,
                    site.dir.join("grouter.log").display()
                ),
                None => {}
            }
        }
        for site in &mut sites {
            site.nats.ask_to_stop();
        }
        let deadline = Instant::now() + STOP_GRACE;
        for site in &mut sites {
            site.nats.wait_stopped(deadline).await;
        }
        for site in &mut sites {
            site.stand_in.ask_to_stop();
            site.cc.ask_to_stop();
        }
        let deadline = Instant::now() + STOP_GRACE;
        for site in &mut sites {
            site.stand_in.wait_stopped(deadline).await;
            site.cc.wait_stopped(deadline).await;
        }
        println!("stopped");
    }
}

/// What the site list of `host` in a `/v1/routes` answer is, sorted.
fn serving_sites<'a>(routes: &'a Value, host: &str) -> Vec<&'a str> {
    let mut sites: Vec<&str> = routes["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["host"] == host)
        .flat_map(|r| r["sites"].as_array().into_iter().flatten())
        .filter_map(|s| s["site"].as_str())
        .collect();
    sites.sort_unstable();
    sites.dedup();
    sites
}

/// `reply` is a 200 from `site`'s GoRouter stand-in, as GRouter says (`X-Grouter-Site`)
/// and as the stand-in says (`X-Stub-Site`).
fn served_by(reply: Result<Reply, String>, site: &str) -> Result<String, String> {
    let reply = reply?;
    reply.expect_status(200)?;
    let by = reply.header("x-grouter-site");
    let stand_in = reply.header("x-stub-site");
    if by != site || stand_in != site {
        return Err(format!(
            "expected site {site}, got X-Grouter-Site: {by:?}, X-Stub-Site: {stand_in:?}"
        ));
    }
    Ok(format!("200, X-Grouter-Site: {site}"))
}

/// An HTTP answer, read whole (bodies here are small).
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn expect_status(&self, want: u16) -> Result<(), String> {
        if self.status == want {
            return Ok(());
        }
        let first = self.body.lines().next().unwrap_or("");
        Err(format!("expected {want}, got {} ({first})", self.status))
    }
}

/// An error and its sources, `: `-separated (hyper's own message is terse).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let _ = write!(text, ": {e}");
        source = e.source();
    }
    text
}

fn remote_word(mode: RemoteMode) -> &'static str {
    match mode {
        RemoteMode::Proxy => "proxy",
        RemoteMode::Redirect => "redirect",
    }
}

/// `gcf` next to this binary (as cargo builds them) when it is there, else `gcf`.
fn gcf_path() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("gcf")))
        .filter(|p| p.is_file())
        .map_or_else(
            || "gcf".to_string(),
            |p| shell_quote(&p.display().to_string()),
        )
}

/// `s` as one shell word: unchanged when it needs no quoting, else in single quotes.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:@=,%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Start a site's `nats-server` on `addr` (port 0: one of its choosing); it and its URL.
async fn start_nats(
    bin: &Path,
    site: &str,
    dir: &Path,
    addr: SocketAddr,
) -> Result<(Proc, SocketAddr), DemoError> {
    let port = if addr.port() == 0 {
        "-1".to_string()
    } else {
        addr.port().to_string()
    };
    let mut cmd = Command::new(bin);
    // -m 0: no monitoring port.
    cmd.args(["-a", "127.0.0.1", "-p", &port, "-m", "0"]);
    let (mut proc, mut rx) = Proc::spawn(
        format!("nats-server of {site}"),
        cmd,
        dir.join("nats.log"),
        nats_listening,
    )?;
    let found = proc.wait_listening(&mut rx, &["nats"]).await?;
    let addr = found
        .get("nats")
        .copied()
        .ok_or_else(|| DemoError::Timeout {
            what: format!("the nats-server of {site} to listen"),
            timeout: START_TIMEOUT,
        })?;
    Ok((proc, addr))
}

/// Start a site's `grouter-standin` on `addr` (port 0: one of the system's choosing); it and
/// the address it reported.
async fn start_standin(
    bin: &Path,
    site: &str,
    dir: &Path,
    addr: SocketAddr,
) -> Result<(Proc, SocketAddr), DemoError> {
    let mut cmd = Command::new(bin);
    cmd.arg("--site")
        .arg(site)
        .arg("--listen")
        .arg(addr.to_string());
    let (mut proc, mut rx) = Proc::spawn(
        format!("the GoRouter stand-in of {site}"),
        cmd,
        dir.join("gorouter.log"),
        grouter_listening,
    )?;
    let found = proc.wait_listening(&mut rx, &["gorouter"]).await?;
    let addr = found
        .get("gorouter")
        .copied()
        .ok_or_else(|| DemoError::Timeout {
            what: format!("the GoRouter stand-in of {site} to listen"),
            timeout: START_TIMEOUT,
        })?;
    Ok((proc, addr))
}

/// Start `grouter run --config CONFIG` (this binary) and wait for its listeners.
async fn start_node(
    node_id: &str,
    config: &Path,
    dir: &Path,
) -> Result<(Proc, BTreeMap<String, SocketAddr>), DemoError> {
    let exe = std::env::current_exe().map_err(|source| DemoError::Start {
        what: format!("{node_id}: cannot find this executable"),
        source,
    })?;
    let mut cmd = Command::new(exe);
    cmd.arg("run").arg("--config").arg(config);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info,async_nats=warn");
    }
    let (mut proc, mut rx) = Proc::spawn(
        format!("{node_id} (grouter)"),
        cmd,
        dir.join("grouter.log"),
        grouter_listening,
    )?;
    let found = proc
        .wait_listening(&mut rx, &["admin", "mesh", "http", "dns", "https"])
        .await?;
    Ok((proc, found))
}

/// A node's config, as the demo writes it.
/// The A records a DNS server answers for `name` (one UDP query, 2 s to answer).
async fn dns_a(server: SocketAddr, name: &str) -> Result<Vec<String>, String> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    let mut m = Message::new(0x6472, MessageType::Query, OpCode::Query);
    let qname = Name::from_ascii(name).map_err(|e| format!("{name}: {e}"))?;
    m.add_query(Query::query(qname, RecordType::A));
    let packet = m.to_vec().map_err(|e| format!("encode: {e}"))?;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    sock.send_to(&packet, server)
        .await
        .map_err(|e| format!("send to {server}: {e}"))?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
        .await
        .map_err(|_| format!("no answer from {server} within 2 s"))?
        .map_err(|e| e.to_string())?;
    let reply =
        Message::from_vec(buf.get(..n).unwrap_or_default()).map_err(|e| format!("decode: {e}"))?;
    Ok(reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect())
}

/// A site's entry address in DNS answers: documentation ranges (RFC 5737), never dialled.
fn entry_address(site: &str) -> &'static str {
    match site {
        "lon" => "192.0.2.10",
        "nyc" => "198.51.100.10",
        _ => "203.0.113.10",
    }
}

#[derive(Debug)]
struct NodeConfig<'a> {
    node_id: &'a str,
    site: &'a str,
    region: &'a str,
    remote: RemoteMode,
    nats_url: &'a str,
    gorouter: SocketAddr,
    http: SocketAddr,
    admin: SocketAddr,
    mesh: SocketAddr,
    seeds: Vec<SocketAddr>,
    dns: SocketAddr,
    /// `proxy.https_listen`.
    https: SocketAddr,
    /// The site's entry address, as DNS answers it (a documentation address: nothing is
    /// sent there).
    entry: &'a str,
    /// The site's Cloud Controller stand-in and the UAA client of this site
    /// (`[cloud_controller]`, its secret in [`foundation::SECRET_FILE`]); none: no section.
    cloud_controller: Option<(SocketAddr, &'a str)>,
    /// The `[acme]` section (empty: none).
    acme: &'a str,
}

impl NodeConfig<'_> {
    fn render(&self) -> String {
        let seeds: Vec<String> = self.seeds.iter().map(|s| format!("\"{s}\"")).collect();
        format!(
            r#"# Written by `grouter demo`: node {node_id} of site {site}.
node_id = "{node_id}"
site = "{site}"
region = "{region}"

[nats]
servers = ["{nats}"]

[gorouters]
addresses = ["{gorouter}"]

[proxy]
http_listen = "{http}"
https_listen = "{https}"
remote = "{remote}"

[tls]
cert_dir = "{CERT_DIR}"
default_cert = "../{tls_dir}/{default_cert}"
default_key = "../{tls_dir}/{default_key}"

[mesh]
listen = "{mesh}"
seeds = [{seeds}]
ca = "mesh/{ca}"
cert = "mesh/{cert}"
key = "mesh/{key}"
sync_lost_after_secs = {lost}

[admin]
listen = "{admin}"
token_file = "../{TOKEN_FILE}"

[dns]
listen = "{dns}"
zones = ["apps.example.com"]
site_addresses = ["{entry}"]

[log]
format = "json"
{cloud_controller}{acme}"#,
            cloud_controller = self.cloud_controller_section(),
            acme = self.acme,
            dns = self.dns,
            https = self.https,
            tls_dir = control::TLS_DIR,
            default_cert = control::DEFAULT_CERT,
            default_key = control::DEFAULT_KEY,
            entry = self.entry,
            node_id = self.node_id,
            site = self.site,
            region = self.region,
            nats = self.nats_url,
            gorouter = self.gorouter,
            http = self.http,
            remote = remote_word(self.remote),
            mesh = self.mesh,
            seeds = seeds.join(", "),
            ca = identity::CA_CERT_FILE,
            cert = identity::NODE_CERT_FILE,
            key = identity::NODE_KEY_FILE,
            lost = SYNC_LOST_AFTER_SECS,
            admin = self.admin,
        )
    }

    /// `[cloud_controller]`: the site's own foundation (one address serves the API and UAA)
    /// and its own UAA client, the secret in a file next to the config.
    fn cloud_controller_section(&self) -> String {
        let Some((addr, client_id)) = self.cloud_controller else {
            return String::new();
        };
        format!(
            r#"
[cloud_controller]
api = "http://{addr}"
uaa = "http://{addr}"
client_id = "{client_id}"
client_secret_file = "{secret}"
"#,
            secret = foundation::SECRET_FILE,
        )
    }
}

/// The `router.register` messages of `site`: every instance of every app it runs.
fn registrations(site_index: usize, site: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for (app_index, app) in APPS.iter().enumerate() {
        if !app.sites.contains(&site) {
            continue;
        }
        for instance in 0..INSTANCES {
            // Cells of site N are 10.N.0.0/16; each instance has its own port.
            let port = 61000 + u16::try_from(app_index).unwrap_or(0) * 10 + instance;
            out.push(json!({
                "host": format!("10.{site_index}.0.{}", app_index + 1),
                "port": port,
                "uris": [app.host],
                "app": app.guid,
                "private_instance_id": format!("{}-{site}-{instance}", app.name),
                "private_instance_index": instance.to_string(),
                "tags": {"app_name": app.name, "component": "route-emitter"},
            }));
        }
    }
    out
}

/// Register every site's routes at its NATS, every [`REGISTER_RETRY_INTERVAL`] until
/// `routes_known`, then every [`REREGISTER_INTERVAL`], until aborted.
async fn emit_routes(
    buses: Vec<(&'static str, async_nats::Client)>,
    routes_known: Arc<AtomicBool>,
) {
    let messages: Vec<(async_nats::Client, Vec<Bytes>)> = buses
        .into_iter()
        .enumerate()
        .map(|(i, (site, client))| {
            let payloads = registrations(i, site)
                .iter()
                .map(|m| Bytes::from(m.to_string()))
                .collect();
            (client, payloads)
        })
        .collect();
    loop {
        for (client, payloads) in &messages {
            for payload in payloads {
                // A failed publish is retried on the next round, as an emitter would.
                let _ = client.publish("router.register", payload.clone()).await;
            }
            let _ = client.flush().await;
        }
        let pause = if routes_known.load(Ordering::Relaxed) {
            REREGISTER_INTERVAL
        } else {
            REGISTER_RETRY_INTERVAL
        };
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_validate() {
        let dir = std::env::temp_dir().join(format!(
            "grouter-demo-test-{}",
            uuid::Uuid::new_v4().simple()
        ));
        fs::create_dir_all(dir.join("lon").join(CERT_DIR)).unwrap();
        control::DemoTls::create(&dir.join(control::TLS_DIR)).unwrap();
        let config = NodeConfig {
            node_id: "lon-1",
            site: "lon",
            region: "eu",
            remote: RemoteMode::Redirect,
            nats_url: "nats://127.0.0.1:4222",
            gorouter: "127.0.0.1:8081".parse().unwrap(),
            http: "127.0.0.1:0".parse().unwrap(),
            admin: "127.0.0.1:0".parse().unwrap(),
            mesh: "127.0.0.1:0".parse().unwrap(),
            seeds: vec!["127.0.0.1:7946".parse().unwrap()],
            dns: "127.0.0.1:0".parse().unwrap(),
            https: "127.0.0.1:0".parse().unwrap(),
            entry: entry_address("lon"),
            cloud_controller: Some(("127.0.0.1:8082".parse().unwrap(), "grouter-lon")),
            acme: "\n[acme]\ndirectory_url = \"https://127.0.0.1:14000/dir\"\ndomains = [\"cdn.apps.example.com\"]\n",
        }
        .render();
        fs::write(dir.join("lon").join(foundation::SECRET_FILE), "s3cret\n").unwrap();
        let path = dir.join("lon").join(CONFIG_FILE);
        fs::write(&path, config).unwrap();
        let loaded = Config::load(&path);
        fs::remove_dir_all(&dir).unwrap();
        let loaded = loaded.unwrap();
        assert_eq!(loaded.proxy.remote, RemoteMode::Redirect);
        assert_eq!(
            loaded.admin.token_file,
            dir.join("lon").join("../admin.token")
        );
        let cc = loaded.cloud_controller.unwrap();
        assert_eq!(cc.client_id, "grouter-lon");
        assert_eq!(cc.api, "http://127.0.0.1:8082");
        assert_eq!(
            cc.client_secret_file,
            dir.join("lon").join(foundation::SECRET_FILE)
        );
    }

    #[test]
    fn registrations_follow_the_apps() {
        let lon = registrations(0, "lon");
        assert_eq!(lon.len(), usize::from(INSTANCES), "shop only");
        assert!(lon.iter().all(|m| m["uris"][0] == "shop.apps.example.com"));
        let nyc = registrations(1, "nyc");
        assert_eq!(nyc.len(), 2 * usize::from(INSTANCES), "shop and blog");
        let mut keys: Vec<String> = nyc
            .iter()
            .map(|m| format!("{}:{}", m["host"], m["port"]))
            .collect();
        keys.dedup();
        assert_eq!(keys.len(), nyc.len(), "one endpoint per instance");
        for m in lon.iter().chain(&nyc) {
            let text = m.to_string();
            let kind = grouter_protocol::nats::MessageKind::Register;
            assert!(grouter_protocol::nats::Registration::parse(text.as_bytes(), kind).is_ok());
        }
    }

    #[test]
    fn listening_lines_are_recognised() {
        let l = grouter_listening(
            r#"{"timestamp":"x","level":"INFO","message":"listening","service":"admin","addr":"127.0.0.1:9090"}"#,
        )
        .unwrap();
        assert_eq!((l.service.as_str(), l.addr.port()), ("admin", 9090));
        assert!(grouter_listening("not json").is_none());
        let n = nats_listening(
            "[1] 2024/01/01 00:00:00.000000 [INF] Listening for client connections on 127.0.0.1:4222",
        )
        .unwrap();
        assert_eq!(n.addr.port(), 4222);
    }

    #[test]
    fn shell_words() {
        assert_eq!(shell_quote("/tmp/a-b_c.d"), "/tmp/a-b_c.d");
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn serving_sites_reads_v1_routes() {
        let routes = json!({"routes": [
            {"host": "shop.apps.example.com", "path": "", "sites": [{"site": "nyc"}, {"site": "lon"}]},
            {"host": "blog.apps.example.com", "path": "", "sites": [{"site": "nyc"}]},
        ]});
        assert_eq!(
            serving_sites(&routes, "shop.apps.example.com"),
            ["lon", "nyc"]
        );
        assert!(serving_sites(&routes, "cdn.apps.example.com").is_empty());
    }
}
