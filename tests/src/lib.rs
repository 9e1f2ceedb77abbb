//! Fixtures for GRouter's integration tests: real `nats-server` processes, real `grouter`
//! nodes, and a deadline-bounded wait.
//!
//! Every fixture binds loopback port 0 (or lets the server pick a random port), lives in its
//! own temporary directory, and kills its process on drop, so tests run in parallel. Nothing
//! here sleeps to synchronise: [`wait_until`] polls a condition until a deadline.

// Fixtures fail a test by panicking with a message; that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;

/// Poll `cond` every 10 ms until it returns `Some`, or panic with `what` after `timeout`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Where a Debian-packaged program lives: on PATH or in /usr/sbin; panics naming `install`
/// when it is missing.
pub fn find_program(name: &str, install: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found on PATH or in /usr/sbin: install it with `{install}` (deploy/test.sh does this)")
        })
}

/// Collects a child's stderr lines on a thread (so the pipe never fills and blocks the
/// child) and lets a test wait for a line.
#[derive(Debug, Clone, Default)]
pub struct LogLines(Arc<Mutex<Vec<String>>>);

impl LogLines {
    /// Follow `child`'s stderr (it must have been spawned with `Stdio::piped()`).
    pub fn follow(child: &mut Child) -> LogLines {
        let lines = LogLines::default();
        if let Some(stderr) = child.stderr.take() {
            lines.read_from(stderr);
        }
        lines
    }

    /// Follow `child`'s stdout and stderr both (each spawned with `Stdio::piped()`).
    pub fn follow_both(child: &mut Child) -> LogLines {
        let lines = LogLines::follow(child);
        if let Some(stdout) = child.stdout.take() {
            lines.read_from(stdout);
        }
        lines
    }

    /// Append every line of `stream` on a thread of its own.
    fn read_from(&self, stream: impl std::io::Read + Send + 'static) {
        let sink = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                sink.0.lock().push(line);
            }
        });
    }

    /// How many lines `f` accepts.
    pub fn count_matching(&self, f: impl Fn(&str) -> bool) -> usize {
        self.0.lock().iter().filter(|l| f(l)).count()
    }

    /// The first line for which `f` returns `Some`, waiting up to `timeout`.
    pub fn wait_for<T>(&self, timeout: Duration, what: &str, f: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.0.lock().iter().find_map(|l| f(l)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; output so far:\n{}",
                self.tail(40)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.0.lock();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// How many lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.0.lock().iter().filter(|l| l.contains(needle)).count()
    }
}

/// A real `nats-server` on a random loopback port.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    /// Server output.
    pub log: LogLines,
}

impl NatsServer {
    /// Start a server on a port of its choosing.
    pub fn start() -> NatsServer {
        Self::spawn(None)
    }

    fn spawn(port: Option<u16>) -> NatsServer {
        let bin = find_program("nats-server", "apt-get install -y nats-server");
        let port_arg = port.map_or_else(|| "-1".to_string(), |p| p.to_string());
        let mut child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port_arg, "-m", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nats-server");
        let log = LogLines::follow(&mut child);
        let port = log.wait_for(Duration::from_secs(10), "nats-server to listen", |l| {
            let (_, addr) = l.split_once("Listening for client connections on ")?;
            addr.trim().parse::<SocketAddr>().ok().map(|a| a.port())
        });
        NatsServer {
            child: Some(child),
            port,
            log,
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kill the server (the port stays reserved for [`Self::restart`]).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let again = Self::spawn(Some(self.port));
        *self = again;
    }

    /// A client of this server.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connect to nats-server")
    }
}

impl NatsServer {
    /// Publish `registration` on `router.register` every `every`, as a route emitter does,
    /// until the returned [`Emitter`] is dropped: a test or bench that outlasts the stale
    /// threshold keeps its route.
    pub async fn emit_every(&self, registration: &Value, every: Duration) -> Emitter {
        let bus = self.client().await;
        let payload = bytes::Bytes::from(registration.to_string());
        Emitter(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let _ = bus.publish("router.register", payload.clone()).await;
                let _ = bus.flush().await;
            }
        }))
    }
}

/// A route emitter's task ([`NatsServer::emit_every`]); stops when dropped.
#[derive(Debug)]
pub struct Emitter(tokio::task::JoinHandle<()>);

impl Drop for Emitter {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `grouter` binary built by `cargo test --workspace` (the `grouter` package's own
/// integration tests make cargo build it next to this test binary, in the directory above
/// `deps/`), or beside this binary (`grouter-bench`, built with it by
/// `cargo build -p grouter -p grouter-bench`). `GROUTER_BIN` overrides both.
pub fn grouter_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GROUTER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let beside = exe.parent().expect("exe dir");
    let above = beside.parent().unwrap_or(beside);
    let candidates = [beside.join("grouter"), above.join("grouter")];
    let found = candidates.iter().find(|p| p.is_file());
    found.cloned().unwrap_or_else(|| {
        panic!(
            "{} not found: run `cargo test --workspace` (or `cargo build -p grouter`) first",
            candidates[1].display()
        )
    })
}

/// Install ring as rustls's process-wide crypto provider (reqwest is built without one).
pub fn install_crypto() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Settings of a node under test; [`NodeBuilder::start`] writes its config and runs it.
#[derive(Debug, Clone)]
pub struct NodeBuilder {
    node_id: String,
    site: String,
    nats: Vec<String>,
    stale_threshold_secs: u64,
    prune_interval_secs: u64,
    extra: String,
    proxy_extra: String,
    gorouters_extra: String,
    admin_extra: String,
    log_extra: String,
    mesh: Option<(PathBuf, Vec<SocketAddr>)>,
    mesh_extra: String,
    nats_extra: String,
    gorouters: Vec<SocketAddr>,
    redirect: bool,
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    tls_extra: String,
    region: Option<String>,
    read_token: bool,
    listen_ip: Option<(String, u16, u16)>,
    env: Vec<(String, String)>,
}

impl NodeBuilder {
    /// TOML lines added to the `[tls]` section [`NodeBuilder::https`] writes (e.g.
    /// `client_cert = "request"`).
    pub fn tls_option(mut self, toml: &str) -> Self {
        self.tls_extra.push_str(toml);
        self.tls_extra.push('\n');
        self
    }

    /// Forward to these GoRouters (default: a new [`gorouter::GoRouterStub`] of the node's
    /// site, kept by the node).
    pub fn gorouters(mut self, addrs: &[SocketAddr]) -> Self {
        self.gorouters = addrs.to_vec();
        self
    }

    /// Answer requests for apps served only elsewhere with a redirect instead of proxying.
    pub fn redirect(mut self) -> Self {
        self.redirect = true;
        self
    }

    /// Serve HTTPS with certificates from `cert_dir` and this default pair.
    pub fn https(mut self, cert_dir: &Path, default_cert: &Path, default_key: &Path) -> Self {
        self.tls = Some((
            cert_dir.to_path_buf(),
            default_cert.to_path_buf(),
            default_key.to_path_buf(),
        ));
        self
    }

    /// Join the mesh of `ca` (a certificate is issued for this node), dialling `seeds`.
    pub fn mesh(mut self, ca: &MeshCa, seeds: &[SocketAddr]) -> Self {
        self.mesh = Some((ca.dir().to_path_buf(), seeds.to_vec()));
        self
    }

    /// Bus of the node's site.
    pub fn nats(mut self, url: &str) -> Self {
        self.nats = vec![url.to_string()];
        self
    }

    /// `nats.stale_threshold_secs` and `nats.prune_interval_secs`.
    pub fn expiry(mut self, stale_threshold_secs: u64, prune_interval_secs: u64) -> Self {
        self.stale_threshold_secs = stale_threshold_secs;
        self.prune_interval_secs = prune_interval_secs;
        self
    }

    /// TOML lines added to the `[nats]` section (e.g. `tls_stale_threshold_secs = 4`).
    pub fn nats_option(mut self, toml: &str) -> Self {
        self.nats_extra.push_str(toml);
        self.nats_extra.push('\n');
        self
    }

    /// TOML lines added to the `[mesh]` section that [`NodeBuilder::mesh`] writes (e.g.
    /// `max_entries_per_partition = 1000`); [`NodeBuilder::extra`] cannot add to that
    /// section, since TOML forbids a table twice.
    pub fn mesh_option(mut self, toml: &str) -> Self {
        self.mesh_extra.push_str(toml);
        self.mesh_extra.push('\n');
        self
    }

    /// TOML lines added to the `[proxy]` section (e.g. `idle_timeout_secs = 2`,
    /// `tracing = "b3"`), which [`NodeBuilder::extra`] cannot add to.
    pub fn proxy_option(mut self, toml: &str) -> Self {
        self.proxy_extra.push_str(toml);
        self.proxy_extra.push('\n');
        self
    }

    /// TOML lines added to the `[gorouters]` section (e.g. `response_timeout_secs = 1`).
    pub fn gorouters_option(mut self, toml: &str) -> Self {
        self.gorouters_extra.push_str(toml);
        self.gorouters_extra.push('\n');
        self
    }

    /// TOML lines added to the `[admin]` section (e.g. `max_connections = 4`).
    pub fn admin_option(mut self, toml: &str) -> Self {
        self.admin_extra.push_str(toml);
        self.admin_extra.push('\n');
        self
    }

    /// TOML lines added to the `[log]` section (e.g. `access_log = false`).
    pub fn log_option(mut self, toml: &str) -> Self {
        self.log_extra.push_str(toml);
        self.log_extra.push('\n');
        self
    }

    /// Extra TOML appended to the config (before the `[mesh]` section, if any).
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self
    }

    /// Write the config and start the process; returns once the admin API answers.
    /// The node's region (`region = …`).
    pub fn region(mut self, region: &str) -> Self {
        self.region = Some(region.to_string());
        self
    }

    /// Put `proxy.http_listen` on `ip:http_port` and `proxy.https_listen` (if any) on
    /// `ip:https_port` (distinct loopback addresses with one port for every node, as an ACME
    /// CA that validates on fixed ports needs).
    pub fn listen_on(mut self, ip: &str, http_port: u16, https_port: u16) -> Self {
        self.listen_ip = Some((ip.to_string(), http_port, https_port));
        self
    }

    /// An environment variable for the node's process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Give the node a read-only token too (`admin.read_token_file`; [`Node::read_token`]).
    pub fn read_token(mut self) -> Self {
        self.read_token = true;
        self
    }

    pub async fn start(self) -> Node {
        install_crypto();
        let dir = tempfile::tempdir().expect("tempdir");
        let token = format!("test-token-{}", std::process::id());
        std::fs::write(dir.path().join("admin.token"), &token).expect("write token");
        let read_token = self.read_token.then(|| {
            let t = format!("read-token-{}", std::process::id());
            std::fs::write(dir.path().join("read.token"), &t).expect("write read token");
            t
        });
        let admin_extra = if read_token.is_some() {
            format!("read_token_file = \"read.token\"\n{}", self.admin_extra)
        } else {
            self.admin_extra.clone()
        };
        let region = self
            .region
            .as_ref()
            .map(|r| format!("region = {r:?}\n"))
            .unwrap_or_default();
        let servers: Vec<String> = self.nats.iter().map(|s| format!("{s:?}")).collect();
        let stub = if self.gorouters.is_empty() {
            Some(gorouter::GoRouterStub::start(&self.site).await)
        } else {
            None
        };
        let gorouter_addrs: Vec<SocketAddr> = match &stub {
            Some(stub) => vec![stub.addr()],
            None => self.gorouters.clone(),
        };
        let (http_at, https_at) = match &self.listen_ip {
            Some((ip, h, s)) => (format!("{ip}:{h}"), format!("{ip}:{s}")),
            None => ("127.0.0.1:0".to_string(), "127.0.0.1:0".to_string()),
        };
        let https = match &self.tls {
            Some((dir, cert, key)) => format!(
                "https_listen = \"{https_at}\"\n\n[tls]\ncert_dir = {dir:?}\ndefault_cert = {cert:?}\ndefault_key = {key:?}\n{}",
                self.tls_extra
            ),
            None => String::new(),
        };
        let config = format!(
            r#"node_id = "{node_id}"
site = "{site}"
{region}
[nats]
servers = [{servers}]
stale_threshold_secs = {stale}
prune_interval_secs = {prune}
{nats_extra}
[gorouters]
addresses = [{gorouters}]
{gorouters_extra}
[proxy]
http_listen = "{http_at}"
remote = "{remote}"
{proxy_extra}{https}

[admin]
listen = "127.0.0.1:0"
token_file = "admin.token"
{admin_extra}
[log]
format = "json"
{log_extra}
{extra}
"#,
            node_id = self.node_id,
            site = self.site,
            servers = servers.join(", "),
            stale = self.stale_threshold_secs,
            prune = self.prune_interval_secs,
            nats_extra = self.nats_extra,
            log_extra = self.log_extra,
            extra = self.extra,
            gorouters = gorouter_addrs
                .iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(", "),
            remote = if self.redirect { "redirect" } else { "proxy" },
            proxy_extra = self.proxy_extra,
            gorouters_extra = self.gorouters_extra,
            admin_extra = admin_extra,
            https = https,
            region = region,
        );
        let mut config = config;
        if let Some((ca, seeds)) = &self.mesh {
            let certs = dir.path().join("mesh");
            let id = grouter::mesh::identity::NodeIdentity::new(
                self.node_id.as_str(),
                self.site.as_str(),
            )
            .expect("valid node identity");
            grouter::mesh::identity::create_node(ca, &id, &certs).expect("issue node certificate");
            let seeds: Vec<String> = seeds.iter().map(|s| format!("\"{s}\"")).collect();
            config.push_str(&format!(
                "\n[mesh]\nlisten = \"127.0.0.1:0\"\nseeds = [{}]\nca = \"mesh/ca.pem\"\ncert = \"mesh/node.pem\"\nkey = \"mesh/node.key\"\nsync_lost_after_secs = 3\n{}",
                seeds.join(", "),
                self.mesh_extra,
            ));
        }
        let config_path = dir.path().join(format!("{}.toml", self.node_id));
        std::fs::write(&config_path, config).expect("write config");
        let mut node = Node {
            child: None,
            admin: "127.0.0.1:0".parse().expect("addr"),
            http_listen: None,
            https_listen: None,
            stub,
            mesh: None,
            token,
            read_token,
            log: LogLines::default(),
            http: reqwest::Client::new(),
            config_path,
            env: self.env.clone(),
            _dir: dir,
        };
        node.spawn().await;
        node
    }
}

/// A running `grouter` process.
#[derive(Debug)]
pub struct Node {
    child: Option<Child>,
    admin: SocketAddr,
    http_listen: Option<SocketAddr>,
    https_listen: Option<SocketAddr>,
    /// The node's own GoRouter stand-in, unless the test gave addresses.
    pub stub: Option<gorouter::GoRouterStub>,
    mesh: Option<SocketAddr>,
    token: String,
    read_token: Option<String>,
    config_path: PathBuf,
    env: Vec<(String, String)>,
    /// The node's log (JSON lines).
    pub log: LogLines,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Node {
    /// A node `node_id` at `site`, with a 120 s threshold swept every 30 s unless changed.
    pub fn builder(node_id: &str, site: &str) -> NodeBuilder {
        NodeBuilder {
            node_id: node_id.to_string(),
            site: site.to_string(),
            nats: Vec::new(),
            stale_threshold_secs: 120,
            prune_interval_secs: 30,
            extra: String::new(),
            proxy_extra: String::new(),
            gorouters_extra: String::new(),
            admin_extra: String::new(),
            log_extra: String::new(),
            mesh: None,
            mesh_extra: String::new(),
            nats_extra: String::new(),
            gorouters: Vec::new(),
            redirect: false,
            tls: None,
            tls_extra: String::new(),
            region: None,
            read_token: false,
            listen_ip: None,
            env: Vec::new(),
        }
    }

    /// Start the process (again) with its config; returns once the admin API answers.
    async fn spawn(&mut self) {
        let mut child = Command::new(grouter_bin())
            .args(["run", "--config"])
            .arg(&self.config_path)
            .env("RUST_LOG", "info,async_nats=warn")
            // `/v1/history` samples every second, so tests see charts move within seconds.
            .env("GROUTER_HISTORY_INTERVAL_MS", "1000")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn grouter");
        self.log = LogLines::follow(&mut child);
        self.child = Some(child);
        let listening = |service: &'static str| {
            move |l: &str| {
                let v: Value = serde_json::from_str(l).ok()?;
                (v["message"] == "listening" && v["service"] == service)
                    .then(|| v["addr"].as_str()?.parse::<SocketAddr>().ok())?
            }
        };
        self.admin = self.log.wait_for(
            Duration::from_secs(10),
            "the admin listener",
            listening("admin"),
        );
        let has_mesh =
            std::fs::read_to_string(&self.config_path).is_ok_and(|c| c.contains("[mesh]"));
        if has_mesh {
            self.mesh = Some(self.log.wait_for(
                Duration::from_secs(10),
                "the mesh listener",
                listening("mesh"),
            ));
        }
        self.http_listen = Some(self.log.wait_for(
            Duration::from_secs(10),
            "the http listener",
            listening("http"),
        ));
        let has_https =
            std::fs::read_to_string(&self.config_path).is_ok_and(|c| c.contains("https_listen"));
        if has_https {
            self.https_listen = Some(self.log.wait_for(
                Duration::from_secs(10),
                "the https listener",
                listening("https"),
            ));
        }
        let answered = tokio::time::timeout(Duration::from_secs(10), async {
            while self.get("/healthz").await.is_err() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            answered.is_ok(),
            "the admin API did not answer within 10 s; output so far:\n{}",
            self.log.tail(40)
        );
    }

    /// Kill the process (SIGKILL: a crash) and start it again with the same config; it comes
    /// back with an empty table and a new generation.
    pub async fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn().await;
    }

    /// Kill the process (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The plain HTTP listener's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_listen.expect("http listener")
    }

    /// The HTTPS listener's address.
    pub fn https_addr(&self) -> SocketAddr {
        self.https_listen.expect("https listener")
    }

    /// The mesh listener's address.
    pub fn mesh_addr(&self) -> SocketAddr {
        self.mesh.expect("node has a mesh")
    }

    /// The admin API's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The admin token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The read-only token ([`NodeBuilder::read_token`]).
    pub fn read_token(&self) -> &str {
        self.read_token
            .as_deref()
            .expect("node started with a read token")
    }

    /// The node's state directory (`state_dir`'s default: `state-<node_id>` beside its
    /// config file).
    pub fn state_dir(&self) -> PathBuf {
        let name = self
            .config_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.config_path
            .parent()
            .expect("config in a directory")
            .join(format!("state-{name}"))
    }

    /// Any admin request: `token` `None` sends none; returns status and JSON body (`Null`
    /// when the body is not JSON).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("http://{}{}", self.admin, path))
            .timeout(Duration::from_secs(10));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.expect("admin request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// PUT a JSON body with the write token.
    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::PUT, path, Some(body), Some(&self.token))
            .await
    }

    /// DELETE with the write token.
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::DELETE, path, None, Some(&self.token))
            .await
    }

    /// GET an admin path with the token; returns status and body.
    pub async fn get(&self, path: &str) -> reqwest::Result<(u16, String)> {
        let resp = self
            .http
            .get(format!("http://{}{}", self.admin, path))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(5))
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await?))
    }

    /// GET an admin path and parse JSON, asserting 200.
    pub async fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await.expect("admin request");
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).expect("json body")
    }

    /// The routes array of `/v1/routes[?query]`.
    pub async fn routes(&self, query: &str) -> Vec<Value> {
        let v = self.json(&format!("/v1/routes{query}")).await;
        v["routes"].as_array().cloned().unwrap_or_default()
    }

    /// The route `host` + `path` from `/v1/routes`, if listed.
    pub async fn route(&self, host: &str, path: &str) -> Option<Value> {
        self.routes(&format!("?host={host}"))
            .await
            .into_iter()
            .find(|r| r["path"] == path)
    }

    /// Publish `msg` (a `router.register` body) on `bus`, again and again, until this node
    /// lists the route `host` (path `""`) as served by its own site: as a route emitter
    /// would, with no delay guessed. (Another site's copy of the route does not count: it
    /// can arrive over the mesh before this node has subscribed to its bus.)
    pub async fn register_until_routed(&self, bus: &async_nats::Client, msg: &Value, host: &str) {
        wait_until(Duration::from_secs(10), "the route", || async {
            bus.publish("router.register", msg.to_string().into())
                .await
                .ok()?;
            bus.flush().await.ok()?;
            let route = self.route(host, "").await?;
            route["sites"]
                .as_array()?
                .iter()
                .any(|s| s["local"] == true)
                .then_some(())
        })
        .await;
    }

    /// The site that answers `GET /` for `host` through this node's proxy (its
    /// `X-Grouter-Site`), when it answers 200 within 5 s.
    pub async fn answered_by(&self, host: &str) -> Option<String> {
        let resp = self
            .http
            .get(format!("http://{}/", self.http_addr()))
            .header("host", host)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        let site = resp.headers().get("x-grouter-site")?.to_str().ok()?;
        (resp.status() == 200).then(|| site.to_string())
    }

    /// `/v1/status`'s `sync` (`in_sync`, `degraded` or `lost`).
    pub async fn sync_state(&self) -> String {
        self.json("/v1/status").await["sync"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Sum of every sample of `name` (all label sets) in `/metrics`, or `None` if absent.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics").await.ok()?;
        parse_metric(&text, name)
    }

    /// One labelled sample, e.g. `metric_labelled("x_total", r#"reason="bad_json""#)`.
    pub async fn metric_labelled(&self, name: &str, labels: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics").await.ok()?;
        let prefix = format!("{name}{{{labels}}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
    }

    /// The process id (while running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// Resident memory of the process in KiB.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().map(Child::id).expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// Peak resident memory of the process in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        self.proc_status("VmHWM:")
    }

    /// Open file descriptors of the process.
    pub fn open_fds(&self) -> usize {
        let pid = self.child.as_ref().map(Child::id).expect("running");
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn proc_status(&self, field: &str) -> u64 {
        let pid = self.child.as_ref().map(Child::id).expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("field in /proc status")
    }

    /// Stop (`true`) or continue (`false`) the process, as a node stalled by the machine
    /// would be: its sockets stay open and the kernel and its peers buffer for it.
    pub fn freeze(&self, frozen: bool) {
        let pid = self.child.as_ref().map(Child::id).expect("running");
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let ok = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {signal} {pid}");
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Send SIGTERM and wait (bounded) for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- node log (last 60 lines) ---\n{}", self.log.tail(60));
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sum of the samples of `name` in a Prometheus text exposition.
pub fn parse_metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// The two-site mesh many tests start from: `lon-1` and `nyc-1`, each with its own
/// `nats-server`, nyc seeded with lon, certificates from one CA (kept alive here).
#[derive(Debug)]
pub struct TwoSites {
    /// The mesh CA both certificates come from.
    pub ca: MeshCa,
    /// lon's bus.
    pub lon_bus: NatsServer,
    /// nyc's bus.
    pub nyc_bus: NatsServer,
    /// The lon node.
    pub lon: Node,
    /// The nyc node.
    pub nyc: Node,
}

impl TwoSites {
    /// Start both sites (each node's admin API answers when this returns).
    pub async fn start() -> TwoSites {
        let ca = MeshCa::new();
        let (lon_bus, nyc_bus) = (NatsServer::start(), NatsServer::start());
        let lon = Node::builder("lon-1", "lon")
            .nats(&lon_bus.url())
            .mesh(&ca, &[])
            .start()
            .await;
        let nyc = Node::builder("nyc-1", "nyc")
            .nats(&nyc_bus.url())
            .mesh(&ca, &[lon.mesh_addr()])
            .start()
            .await;
        TwoSites {
            ca,
            lon_bus,
            nyc_bus,
            lon,
            nyc,
        }
    }
}

/// A mesh CA in a temporary directory; nodes started with [`NodeBuilder::mesh`] get a
/// certificate from it.
#[derive(Debug)]
pub struct MeshCa {
    dir: tempfile::TempDir,
}

impl MeshCa {
    /// Create a new CA.
    pub fn new() -> MeshCa {
        let dir = tempfile::tempdir().expect("tempdir");
        grouter::mesh::identity::create_ca(dir.path()).expect("create mesh CA");
        MeshCa { dir }
    }

    /// The CA's directory (`ca.pem`, `ca.key`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Issue a certificate for `node@site` into a new directory (`node.pem`, `node.key`,
    /// `ca.pem`).
    pub fn issue(&self, node: &str, site: &str) -> tempfile::TempDir {
        let out = tempfile::tempdir().expect("tempdir");
        let id = grouter::mesh::identity::NodeIdentity::new(node, site).expect("identity");
        grouter::mesh::identity::create_node(self.dir(), &id, out.path()).expect("issue");
        out
    }
}

impl Default for MeshCa {
    fn default() -> Self {
        Self::new()
    }
}
pub mod crowd;
pub mod evil;
pub mod faults;
pub mod gorouter;
pub mod inproc;
pub mod netns;
pub mod relay;

/// A test CA issuing leaf certificates for app hosts, written as `cert_dir` files.
pub struct AppCerts {
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_der: rustls::pki_types::CertificateDer<'static>,
    /// Where `issue` writes its pairs.
    pub dir: tempfile::TempDir,
}

impl AppCerts {
    /// A new CA and an empty directory.
    pub fn new() -> AppCerts {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "apps test CA");
        let cert = params.self_signed(&key).expect("ca");
        let ca_der = cert.der().clone();
        AppCerts {
            ca: rcgen::Issuer::new(params, key),
            ca_der,
            dir: tempfile::tempdir().expect("dir"),
        }
    }

    /// Issue a certificate for `name` into `<file>.pem`/`.key`; returns its DER.
    pub fn issue(&self, file: &str, name: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .expect("params")
            .signed_by(&key, &self.ca)
            .expect("sign");
        // Write the key first: the node's reload must never see a certificate without it.
        std::fs::write(
            self.dir.path().join(format!("{file}.key")),
            key.serialize_pem(),
        )
        .expect("key");
        std::fs::write(self.dir.path().join(format!("{file}.pem")), cert.pem()).expect("cert");
        cert.der().to_vec()
    }

    /// A client that trusts this CA only (ALPN h2, http/1.1).
    pub fn client_config(&self) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("root");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut c = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        c
    }

    /// The certificate a real client (verifying chain and name) is served for `sni`.
    pub async fn served(&self, addr: SocketAddr, sni: &str) -> Option<Vec<u8>> {
        served_leaf(self.client_config(), addr, sni).await
    }
}

/// The leaf certificate (DER) `addr` serves for `sni` to a client with `config`, if the
/// handshake passes that client's checks.
pub async fn served_leaf(
    config: rustls::ClientConfig,
    addr: SocketAddr,
    sni: &str,
) -> Option<Vec<u8>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).ok()?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .ok()?;
    tls.get_ref()
        .1
        .peer_certificates()?
        .first()
        .map(|c| c.to_vec())
}

impl std::fmt::Debug for AppCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppCerts")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Default for AppCerts {
    fn default() -> Self {
        Self::new()
    }
}

impl AppCerts {
    /// Issue a certificate for `names` valid from `not_before` to `not_after` (Unix seconds;
    /// `None`: rcgen's defaults), without writing it: `(chain PEM, key PEM, leaf DER)`.
    pub fn issue_pem(
        &self,
        names: &[&str],
        validity: Option<(i64, i64)>,
    ) -> (String, String, Vec<u8>) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        if let Some((from, to)) = validity {
            params.not_before = rcgen::date_time_ymd(1970, 1, 1) + time_secs(from);
            params.not_after = rcgen::date_time_ymd(1970, 1, 1) + time_secs(to);
        }
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}

fn time_secs(s: i64) -> std::time::Duration {
    std::time::Duration::from_secs(u64::try_from(s).expect("after 1970"))
}
