//! One GRouter node: the state its subsystems share and the tree they run in.
//!
//! Owns: the wiring and nothing else. [`NodeState`] holds the handles the subsystems are built
//! from (table, health, metrics, mesh); [`run`] hands each subsystem the handles it uses,
//! starts them under one cancellation token, reports the first that fails, and drains the
//! rest within a grace period.
//!
//! Must never: define a type another module needs (shared types live in leaf modules such as
//! `health`), be imported by anything but the binary and the test fixtures, bind sockets (the
//! binary does, so tests pass port-0 listeners), or read flags.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::AdminState;
use crate::config::Config;
use crate::dns::DnsMetrics;
use crate::health::Health;
use crate::learn::{self, LearnMetrics, LearnSettings};
use crate::mesh::{MeshHandle, MeshMetrics};
use crate::metrics::Metrics;
use crate::policy::{PolicyStore, SiteFacts};
use crate::table::Table;

/// How often each GoRouter's health URL is probed.
const GOROUTER_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How often `tls.cert_dir` is checked for changes (a new certificate is served within
/// this much time).
const CERT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How long subsystems get to finish after shutdown is requested.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// The handles one node's subsystems are built from. Each subsystem takes the handles it
/// uses, never this whole struct.
#[derive(Debug)]
pub struct NodeState {
    /// The merged route table.
    pub table: Arc<Table>,
    /// Sync state, drain flag and GoRouter health.
    pub health: Arc<Health>,
    /// The node's metrics registry and its shared counters.
    pub metrics: Arc<Metrics>,
    /// The learner's counters.
    pub learn_metrics: Arc<LearnMetrics>,
    /// The DNS front's counters (registered even without `[dns]`, so scrapes show zeros).
    pub dns_metrics: Arc<DnsMetrics>,
    /// The mesh's counters (registered even without `[mesh]`).
    pub mesh_metrics: Arc<MeshMetrics>,
    /// Bearer token of `/v1/*`.
    pub token: String,
    /// The node's region, if configured.
    pub region: Option<String>,
    /// When the node started.
    pub started: Instant,
    /// The mesh, when `[mesh]` is configured (set once at start).
    pub mesh: MeshHandle,
    /// The route and site policies in force and what is known of the sites (filled by the
    /// control plane and the mesh; read by the proxy, DNS and `/healthz`).
    pub policies: Arc<PolicyStore>,
    /// Responses per answering site (the proxy counts, the history samples).
    pub traffic: Arc<crate::traffic::Traffic>,
}

impl NodeState {
    /// State of a node with an empty table.
    pub fn new(config: &Config, token: String, generation: u64) -> NodeState {
        let metrics = Arc::new(Metrics::new());
        let policies = Arc::new(PolicyStore::default());
        // This site's region, known before (and without) a mesh.
        if let Some(region) = config.region.as_deref().filter(|r| !r.is_empty()) {
            policies.set_facts(SiteFacts {
                regions: [(config.site.as_str().into(), region.into())]
                    .into_iter()
                    .collect(),
                healthy: Vec::new(),
            });
        }
        NodeState {
            table: Arc::new(Table::new(&config.node_id, &config.site, generation)),
            // With a mesh the node has heard from no other site yet: `lost` from the first
            // instant, until the first verified partition of another site arrives.
            health: Arc::new(if config.mesh.is_some() {
                Health::meshed()
            } else {
                Health::new()
            }),
            learn_metrics: Arc::new(LearnMetrics::new(&metrics)),
            dns_metrics: Arc::new(DnsMetrics::new(&metrics)),
            mesh_metrics: Arc::new(MeshMetrics::new(&metrics)),
            metrics,
            token,
            region: config.region.clone(),
            started: Instant::now(),
            mesh: MeshHandle::new(),
            policies,
            traffic: Arc::default(),
        }
    }
}

/// Sockets the binary bound for the node, and how it dials peers.
#[derive(Debug)]
pub struct Listeners {
    /// `admin.listen`.
    pub admin: TcpListener,
    /// `mesh.listen`, when `[mesh]` is configured.
    pub mesh: Option<TcpListener>,
    /// `proxy.http_listen`; without it (and `https`) the node runs no data plane, as some
    /// tests and benchmarks want.
    pub http: Option<TcpListener>,
    /// `proxy.https_listen`, when `[tls]` is configured.
    pub https: Option<TcpListener>,
    /// `dns.listen` over UDP, when `[dns]` is configured.
    pub dns_udp: Option<tokio::net::UdpSocket>,
    /// `dns.listen` over TCP, when `[dns]` is configured.
    pub dns_tcp: Option<TcpListener>,
    /// How the mesh opens connections (plain TCP outside tests).
    pub dialer: Arc<dyn crate::mesh::Dialer>,
}

impl Listeners {
    /// Admin and optional mesh listeners, no data plane, dialling with plain TCP.
    pub fn new(admin: TcpListener, mesh: Option<TcpListener>) -> Listeners {
        Listeners {
            admin,
            mesh,
            http: None,
            https: None,
            dns_udp: None,
            dns_tcp: None,
            dialer: Arc::new(crate::mesh::TcpDialer::default()),
        }
    }
}

/// Errors that stop a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The learner could not start.
    #[error("learn: {0}")]
    Learn(#[from] learn::LearnError),
    /// The mesh's certificates could not be loaded or do not match the config.
    #[error("mesh: {0}")]
    Mesh(String),
    /// The TLS certificates of the HTTPS listener could not be loaded.
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The state directory or the read token could not be read.
    #[error("{0}")]
    State(String),
    /// The DNS server failed.
    #[error("dns: {0}")]
    Dns(#[from] crate::dns::DnsError),
    /// A subsystem panicked or was cancelled from outside.
    #[error("subsystem {name} failed: {reason}")]
    Subsystem {
        /// Which subsystem.
        name: &'static str,
        /// What happened.
        reason: String,
    },
}

/// The subsystems of one drain phase.
type Subsystems = JoinSet<(&'static str, Result<(), NodeError>)>;

/// What a subsystem that ended while the node runs amounts to: always a failure.
fn failure(
    done: Result<(&'static str, Result<(), NodeError>), tokio::task::JoinError>,
) -> NodeError {
    match done {
        Ok((name, Ok(()))) => NodeError::Subsystem {
            name,
            reason: "stopped unexpectedly".into(),
        },
        Ok((_, Err(err))) => err,
        Err(join) => NodeError::Subsystem {
            name: "task",
            reason: join.to_string(),
        },
    }
}

/// Wait (at most [`DRAIN_GRACE`]) for `set` to finish after its token was cancelled; abort
/// what is left, saying `late`.
async fn drain(set: &mut Subsystems, late: &str) {
    let finished = tokio::time::timeout(DRAIN_GRACE, async {
        while let Some(done) = set.join_next().await {
            if let Ok((name, Err(err))) = done {
                warn!(subsystem = name, error = %err, "subsystem failed while draining");
            }
        }
    })
    .await;
    if finished.is_err() {
        warn!(grace_secs = DRAIN_GRACE.as_secs(), "{late}");
        set.abort_all();
    }
}

/// A new generation for this incarnation: microseconds since the Unix epoch, so a restarted
/// node always starts a newer generation than its previous life (given a sane clock).
pub fn new_generation() -> u64 {
    learn::unix_ms().saturating_mul(1000)
}

/// Run the node until `shutdown` is cancelled or a subsystem fails. Without `http` and
/// `https` listeners it runs no data plane.
pub async fn run(
    config: Config,
    state: Arc<NodeState>,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let mut tasks = Subsystems::new();
    // Connection limits per listener, leaving descriptors for the node's own sockets.
    let nofile = crate::limits::open_file_limit();
    let limits = crate::limits::derive_limits(
        nofile,
        config.proxy.max_connections,
        config.admin.max_connections,
        config.mesh.as_ref().and_then(|m| m.max_connections),
    );
    info!(
        nofile,
        proxy = limits.proxy,
        admin = limits.admin,
        mesh = limits.mesh,
        "connection limits"
    );
    // Subsystems hang off `stop`, which is cancelled only once this function has seen the
    // shutdown request: so a subsystem that ends before then is always a failure, never a
    // race with the signal handler.
    let stop = CancellationToken::new();
    // The data plane's servers stop first and drain their requests, while the rest (admin
    // included: `/healthz` says 503 meanwhile) keeps running.
    let stop_serving = CancellationToken::new();
    let mut serving = Subsystems::new();
    // The control plane first: this node's persisted writes go into its partition before
    // the mesh seals and sends it.
    let control = crate::control::Control::open(
        &config.state_dir(),
        state.table.clone(),
        state.policies.clone(),
    )
    .map_err(|e| NodeError::State(format!("state_dir: {e}")))?;
    let read_token = match &config.admin.read_token_file {
        None => None,
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| {
                    NodeError::State(format!("admin.read_token_file: {}: {e}", path.display()))
                })?
                .trim()
                .to_string(),
        ),
    };
    {
        let (control, token) = (control.clone(), stop.child_token());
        tasks.spawn(async move {
            control.run(token).await;
            ("control", Ok(()))
        });
    }
    let settings = LearnSettings {
        servers: config.nats.servers.clone(),
        user_password: config.nats.user.clone().zip(config.nats.password.clone()),
        token: config.nats.token.clone(),
        tls_ca: config.nats.tls_ca.clone(),
        stale_threshold: Duration::from_secs(config.nats.stale_threshold_secs),
        prune_interval: Duration::from_secs(config.nats.prune_interval_secs),
        tls_stale_threshold: Duration::from_secs(config.nats.tls_stale_threshold_secs()),
        max_pending_messages: config.nats.max_pending_messages,
        client_name: format!("grouter-{}", config.node_id),
    };
    {
        let (table, metrics, token) = (
            state.table.clone(),
            state.learn_metrics.clone(),
            stop.child_token(),
        );
        tasks.spawn(async move {
            (
                "learn",
                learn::run(settings, table, metrics, token)
                    .await
                    .map_err(NodeError::from),
            )
        });
    }
    if let Some(mesh_config) = &config.mesh {
        let listener = listeners
            .mesh
            .ok_or_else(|| NodeError::Mesh("mesh.listen: no listener bound".into()))?;
        let tls = crate::mesh::identity::MeshTls::load_with_crl(
            &mesh_config.ca,
            &mesh_config.cert,
            &mesh_config.key,
            mesh_config.crl.as_deref(),
        )
        .map_err(|e| NodeError::Mesh(e.to_string()))?;
        if tls.me.node_id != config.node_id || tls.me.site != config.site {
            return Err(NodeError::Mesh(format!(
                "mesh.cert: {} is for {}@{}, but this node is {}@{}",
                mesh_config.cert.display(),
                tls.me.node_id,
                tls.me.site,
                config.node_id,
                config.site
            )));
        }
        let bound = listener
            .local_addr()
            .map_err(|e| NodeError::Mesh(format!("mesh.listen: {e}")))?;
        let mut settings =
            crate::mesh::MeshSettings::from_config(mesh_config, config.region.as_deref(), bound);
        // Other sites' DNS fronts answer with this site's entry addresses.
        if let Some(dns) = &config.dns {
            settings.site_addresses = dns.site_addresses.iter().map(ToString::to_string).collect();
        }
        let trust = crate::mesh::trust::MeshTrust::new(tls, &mesh_config.cert, &mesh_config.key)
            .map_err(|e| NodeError::Mesh(e.to_string()))?;
        // What other nodes can make this one hold, and which names each site may announce.
        state.table.set_limits(crate::table::Limits {
            max_nodes: mesh_config.max_nodes,
            max_entries_per_partition: mesh_config.max_entries_per_partition,
        });
        state.table.set_site_domains(
            mesh_config
                .site_domains
                .iter()
                .map(|(site, domains)| (site.clone(), domains.clone()))
                .collect(),
        );
        let mesh = crate::mesh::Mesh::new(
            state.table.clone(),
            state.mesh_metrics.clone(),
            settings,
            trust,
            state.health.clone(),
            state.policies.clone(),
        );
        let _ = state.mesh.set(mesh.clone());
        // RTT per connected peer, for the Grafana dashboard (deploy/monitoring/).
        let links = mesh.clone();
        state.metrics.register(
            "mesh_peer_rtt_seconds",
            "round-trip time of the last answered ping, per connected peer node",
            crate::metrics::SampledGauge::new(move || {
                links
                    .peers()
                    .iter()
                    .filter_map(|p| {
                        let rtt = p.rtt()?.as_secs_f64();
                        let labels = vec![
                            ("peer".to_string(), p.node_id.clone()),
                            ("peer_site".to_string(), p.site.clone()),
                        ];
                        Some((labels, rtt))
                    })
                    .collect()
            }),
        );
        let (dialer, token) = (listeners.dialer.clone(), stop.child_token());
        let gate = crate::limits::Gate::new(limits.mesh, state.metrics.listener_stats("mesh"));
        tasks.spawn(async move {
            crate::mesh::run(mesh, listener, gate, dialer, token).await;
            ("mesh", Ok(()))
        });
    }
    // The data plane: GoRouter health, the proxy, and requests peers forward to us.
    // Responses by the site that answered them (this node's proxy), for dashboards and alerts.
    for (name, help, errors_only) in [
        (
            "proxy_responses",
            "Responses this node's proxy gave, by the site that answered",
            false,
        ),
        (
            "proxy_errors",
            "Of those, the 5xx ones, by the site that answered",
            true,
        ),
    ] {
        let traffic = state.traffic.clone();
        state.metrics.register(
            name,
            help,
            crate::metrics::SampledCounter::new(move || {
                traffic
                    .totals()
                    .into_iter()
                    .map(|t| {
                        let n = if errors_only { t.errors } else { t.requests };
                        (vec![("answered_by".to_string(), t.site.to_string())], n)
                    })
                    .collect()
            }),
        );
    }
    // Parked GoRouter connections (idle clients gave them back) close after the idle timeout.
    let gorouters = Arc::new(
        crate::proxy::upstream::GoRouters::new(&config.gorouters)
            .parked_for(config.proxy.timeouts().idle),
    );
    state.metrics.register(
        "gorouters_segment_unavailable",
        "Requests for a route whose isolation segment has no GoRouters at this site",
        gorouters.segment_unavailable.clone(),
    );
    // Read at each scrape, for alerting: what the probes and `/healthz` say.
    for (name, help, flag) in [
        (
            "gorouters_healthy",
            "1 while at least one of this site's GoRouters passes its health check",
            Health::gorouters_healthy as fn(&Health) -> bool,
        ),
        (
            "serving",
            "1 while the node is not draining and a GoRouter of its site is healthy (/healthz also says 503 for a drained site)",
            Health::can_serve,
        ),
    ] {
        let health = state.health.clone();
        state.metrics.register(
            name,
            help,
            crate::metrics::FlagGauge::new(move || flag(&health)),
        );
    }
    {
        let (gorouters, health, token) =
            (gorouters.clone(), state.health.clone(), stop.child_token());
        tasks.spawn(async move {
            gorouters
                .probe(
                    GOROUTER_PROBE_INTERVAL,
                    move |healthy| health.set_gorouters_healthy(healthy),
                    token,
                )
                .await;
            ("gorouter probes", Ok(()))
        });
    }
    if listeners.http.is_some() || listeners.https.is_some() {
        let remotes = state.mesh.get().map(|m| {
            crate::proxy::remote::Remotes::new(m.clone(), m.tls(), listeners.dialer.clone())
        });
        let rules = crate::proxy::decide::Rules {
            site: config.site.clone(),
            region: config.region.clone().unwrap_or_default(),
            remote: config.proxy.remote,
            redirect_host: config.proxy.redirect_host.clone(),
        };
        // The plain and TLS listeners share one budget.
        let http = crate::limits::Gate::new(limits.proxy, state.metrics.listener_stats("http"));
        let https = http.sharing(state.metrics.listener_stats("https"));
        let edge = crate::proxy::Edge::new(
            config.proxy.timeouts(),
            http,
            https,
            state.metrics.listener_stats("mesh"),
            state.metrics.reason_counters(
                "http_refused_requests",
                "requests answered 400 for their Host (empty_host, invalid_host, duplicate_host, host_mismatch) or refused by the HTTP parser (malformed)",
                crate::proxy::edge::REFUSED_REASONS,
            ),
        );
        let p =
            crate::proxy::Proxy::new(
                state.table.clone(),
                state.health.clone(),
                state.policies.clone(),
                rules,
                gorouters.clone(),
                remotes,
                {
                    let settings = crate::proxy::Settings::from_config(&config)
                        .with_traffic(state.traffic.clone());
                    // Every node answers the mesh's HTTP-01 validations (docs/TLS.md).
                    if config.acme.as_ref().is_some_and(|a| {
                        a.challenges.contains(&crate::config::AcmeChallenge::Http01)
                    }) {
                        settings.with_challenges(control.challenges().clone())
                    } else {
                        settings
                    }
                },
                edge,
            );
        if let Some(peers) = state.mesh.get().and_then(|m| m.take_peer_http()) {
            let (p, token) = (p.clone(), stop_serving.child_token());
            serving.spawn(async move {
                crate::proxy::serve_peers(p, peers, token).await;
                ("peer requests", Ok(()))
            });
        }
        if let Some(http) = listeners.http {
            let (p, token) = (p.clone(), stop_serving.child_token());
            serving.spawn(async move {
                crate::proxy::serve_http(p, http, token).await;
                ("http", Ok(()))
            });
        }
        if let (Some(https), Some(tls)) = (listeners.https, &config.tls) {
            let store =
                crate::tls::CertStore::load(&tls.cert_dir, &tls.default_cert, &tls.default_key)?;
            let clients = match (tls.client_cert, &tls.client_ca) {
                (crate::config::ClientCertMode::Request, Some(ca)) => {
                    crate::tls::ClientCerts::Request(ca.clone())
                }
                (crate::config::ClientCertMode::Require, Some(ca)) => {
                    crate::tls::ClientCerts::Require(ca.clone())
                }
                _ => crate::tls::ClientCerts::None,
            };
            if config.acme.as_ref().is_some_and(|a| {
                a.challenges
                    .contains(&crate::config::AcmeChallenge::TlsAlpn01)
            }) {
                store.set_challenges(control.challenges().clone());
            }
            let server = store.server_config_with(&clients)?;
            // Uploaded certificates (and their replicas) are served beside the files.
            control.set_certs(store.clone());
            let (watch, token) = (store.clone(), stop.child_token());
            tasks.spawn(async move {
                watch.watch(CERT_POLL_INTERVAL, token).await;
                ("certificate reload", Ok(()))
            });
            let (p, token) = (p.clone(), stop_serving.child_token());
            serving.spawn(async move {
                crate::proxy::serve_https(p, https, server, token).await;
                ("https", Ok(()))
            });
        }
    }
    if let (Some(dns), Some(udp), Some(tcp)) = (&config.dns, listeners.dns_udp, listeners.dns_tcp) {
        let settings = crate::dns::DnsSettings::from_config(dns, &config.site);
        let front = crate::dns::Front {
            table: state.table.clone(),
            health: state.health.clone(),
            metrics: state.dns_metrics.clone(),
            policies: state.policies.clone(),
        };
        let token = stop.child_token();
        tasks.spawn(async move {
            (
                "dns",
                crate::dns::serve(settings, front, udp, tcp, token)
                    .await
                    .map_err(NodeError::from),
            )
        });
    }
    // Tasks alive in the runtime: flat under steady load, back to its level after a fault
    // (the chaos suite checks it; a leak of per-connection tasks shows here first).
    let runtime = tokio::runtime::Handle::current();
    state.metrics.register(
        "runtime_tasks",
        "Tasks alive in the node's async runtime",
        crate::metrics::SampledGauge::new(move || {
            let alive = runtime.metrics().num_alive_tasks();
            #[allow(clippy::cast_precision_loss)]
            let alive = alive as f64;
            vec![(vec![("state".to_string(), "alive".to_string())], alive)]
        }),
    );
    // For "certificate expiring" alerts (deploy/monitoring/grouter.rules.yml): every served
    // certificate, and this node's own mesh certificate (`source="mesh"`, host = node id).
    let mesh_not_after = config
        .mesh
        .as_ref()
        .and_then(|m| std::fs::read(&m.cert).ok())
        .and_then(|pem| mesh_cert_not_after(&pem));
    {
        let (control, node_id) = (control.clone(), config.node_id.clone());
        state.metrics.register(
            "certificate_not_after_seconds",
            "notAfter of each served certificate (cert_dir, upload, ACME) and of the node's mesh certificate, in Unix seconds, by host and source",
            crate::metrics::SampledGauge::new(move || {
                let label = |host: String, source: &str| {
                    vec![("host".to_string(), host), ("source".to_string(), source.to_string())]
                };
                let mut rows: Vec<_> = control
                    .certs()
                    .map(|store| store.list())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| {
                        let secs = c
                            .meta
                            .not_after
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0.0, |d| d.as_secs_f64());
                        (label(c.meta.host, c.source.as_str()), secs)
                    })
                    .collect();
                if let Some(secs) = mesh_not_after {
                    rows.push((label(node_id.clone(), "mesh"), secs));
                }
                rows
            }),
        );
    }
    if let Some(acme) = &config.acme {
        let roots = match &acme.ca_roots {
            None => None,
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                NodeError::State(format!("acme.ca_roots: {}: {e}", path.display()))
            })?),
        };
        let metrics = Arc::new(crate::acme::AcmeMetrics::default());
        metrics.register(&state.metrics);
        let challenges = control.challenges().clone();
        state.metrics.register(
            "acme_challenges_answered",
            "ACME validations this node answered for the mesh's orders, by type",
            crate::metrics::SampledCounter::new(move || {
                let (http, alpn) = challenges.answered();
                let label = |t: &str| vec![("type".to_string(), t.to_string())];
                vec![(label("http-01"), http), (label("tls-alpn-01"), alpn)]
            }),
        );
        let acme = crate::acme::Acme::new(
            acme.clone(),
            roots.as_deref(),
            control.clone(),
            state.table.clone(),
            state.mesh.get().cloned(),
            metrics,
        )
        .map_err(|e| NodeError::State(format!("acme: {e}")))?;
        let token = stop.child_token();
        tasks.spawn(async move {
            acme.run(token).await;
            ("acme", Ok(()))
        });
    }
    if let Some(cc) = &config.cloud_controller {
        let secret = std::fs::read_to_string(&cc.client_secret_file)
            .map_err(|e| {
                NodeError::State(format!(
                    "cloud_controller.client_secret_file: {}: {e}",
                    cc.client_secret_file.display()
                ))
            })?
            .trim()
            .to_string();
        let ca_pem = match &cc.ca_file {
            None => None,
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                NodeError::State(format!("cloud_controller.ca_file: {}: {e}", path.display()))
            })?),
        };
        let client = crate::cc::CcClient::new(crate::cc::CcSettings {
            site: config.site.clone(),
            api: cc.api.clone(),
            uaa: cc.uaa.clone(),
            client_id: cc.client_id.clone(),
            client_secret: secret,
            ca_pem,
        })
        .map_err(|e| NodeError::State(format!("cloud_controller: {e}")))?;
        let metrics = Arc::new(crate::placement::reconcile::PlacementMetrics::default());
        metrics.register(&state.metrics);
        let mesh = state.mesh.get().cloned();
        if let Some(conns) = mesh.as_ref().and_then(|m| m.take_peer_droplet()) {
            let server = Arc::new(crate::placement::droplet::DropletServer::new(
                control.clone(),
                state.table.clone(),
                client.clone(),
                config.site.clone(),
            ));
            let token = stop.child_token();
            tasks.spawn(async move {
                server.serve(conns, token).await;
                ("droplet server", Ok(()))
            });
        }
        let fetcher = mesh.as_ref().map(|m| {
            crate::placement::droplet::DropletFetcher::new(m.clone(), listeners.dialer.clone())
        });
        let reconciler = Arc::new(crate::placement::reconcile::Reconciler::new(
            control.clone(),
            state.table.clone(),
            mesh,
            fetcher,
            client,
            metrics,
        ));
        let token = stop.child_token();
        tasks.spawn(async move {
            reconciler.run(token).await;
            ("placement reconciler", Ok(()))
        });
    }
    // The last hour for `/v1/history`, sampled from the handles the other subsystems fill.
    let history = crate::history::History::new(crate::history::interval_from_env());
    {
        let sources = crate::history::Sources {
            table: state.table.clone(),
            health: state.health.clone(),
            mesh: state.mesh.get().cloned(),
            control: control.clone(),
            traffic: state.traffic.clone(),
        };
        let (history, token) = (history.clone(), stop.child_token());
        tasks.spawn(async move {
            crate::history::run(history, sources, token).await;
            ("history", Ok(()))
        });
    }
    {
        let admin = Arc::new(AdminState {
            table: state.table.clone(),
            health: state.health.clone(),
            metrics: state.metrics.clone(),
            mesh: state.mesh.get().cloned(),
            token: state.token.clone(),
            read_token,
            control,
            region: state.region.clone(),
            started: state.started,
            history,
        });
        let token = stop.child_token();
        let gate = crate::limits::Gate::new(limits.admin, state.metrics.listener_stats("admin"));
        let timeouts = config.proxy.timeouts();
        tasks.spawn(async move {
            crate::admin::serve(listeners.admin, admin, gate, timeouts, token).await;
            ("admin", Ok(()))
        });
    }
    info!(node_id = %config.node_id, site = %config.site,
        generation = state.table.me().generation, "node running");

    // Wait for shutdown, or for the first subsystem to end (which is a failure while we run).
    let first_error = tokio::select! {
        () = shutdown.cancelled() => None,
        Some(done) = serving.join_next() => Some(failure(done)),
        Some(done) = tasks.join_next() => Some(failure(done)),
    };
    if let Some(err) = &first_error {
        error!(error = %err, "subsystem failed; shutting the node down");
    }
    // Phase 1: stop accepting and finish the requests in flight; health checks say 503.
    state.health.start_draining();
    info!(
        grace_secs = DRAIN_GRACE.as_secs(),
        "draining: finishing requests in flight"
    );
    stop_serving.cancel();
    drain(
        &mut serving,
        "requests still in flight after the grace period; cutting them",
    )
    .await;
    // Phase 2: everything else.
    stop.cancel();
    drain(&mut tasks, "grace period over; aborting what is left").await;
    info!("node stopped");
    first_error.map_or(Ok(()), Err)
}

/// The notAfter (Unix seconds) of the first certificate of a PEM file.
fn mesh_cert_not_after(pem: &[u8]) -> Option<f64> {
    let der = rustls_pemfile::certs(&mut &pem[..]).next()?.ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some(cert.validity().not_after.timestamp() as f64)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::health::SyncState;

    #[test]
    fn a_scrape_shows_every_subsystems_counters_at_zero_even_without_mesh_or_dns() {
        let config = Config::from_toml(
            r#"
node_id = "solo"
site = "lon"
[nats]
servers = ["127.0.0.1:4222"]
[gorouters]
addresses = ["127.0.0.1:8081"]
[proxy]
http_listen = "127.0.0.1:8080"
[admin]
listen = "127.0.0.1:9090"
token_file = "admin.token"
"#,
            Path::new("solo.toml"),
            Path::new("/etc/grouter"),
        );
        let Ok(config) = config else {
            panic!("config: {config:?}");
        };
        let state = NodeState::new(&config, "t".into(), 1);
        let text = state
            .metrics
            .encode(state.table.stats(), state.health.sync());
        for line in [
            r#"grouter_mesh_deltas_rejected_total{reason="own_partition"} 0"#,
            r#"grouter_dns_steering_total{reason="fail_open"} 0"#,
            r#"grouter_sync_state{state="in_sync"} 1"#,
            "grouter_nats_slow_consumer_events_total 0",
            "grouter_mesh_handshake_failures_total 0",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    /// Issue 12: the sync state is the honest one from the first instant, before any task
    /// runs: a node alone is `in_sync`, a node with a mesh has heard from nobody (`lost`).
    #[test]
    fn a_node_with_a_mesh_starts_lost_and_one_without_starts_in_sync() {
        let base = r#"
node_id = "lon-1"
site = "lon"
[nats]
servers = ["127.0.0.1:4222"]
[gorouters]
addresses = ["127.0.0.1:8081"]
[proxy]
http_listen = "127.0.0.1:8080"
[admin]
listen = "127.0.0.1:9090"
token_file = "admin.token"
"#;
        let mesh = "[mesh]\nlisten = \"127.0.0.1:7946\"\nca = \"ca.pem\"\ncert = \"n.pem\"\nkey = \"n.key\"\n";
        for (extra, sync) in [("", SyncState::InSync), (mesh, SyncState::Lost)] {
            let config = Config::from_toml(
                &format!("{base}{extra}"),
                Path::new("n.toml"),
                Path::new("/etc/grouter"),
            );
            let Ok(config) = config else {
                panic!("config: {config:?}");
            };
            let state = NodeState::new(&config, "t".into(), 1);
            assert_eq!(state.health.sync(), sync, "with {extra:?}");
        }
    }
}
