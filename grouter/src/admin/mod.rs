//! The admin HTTP API: `/healthz`, `/metrics`, the token-protected `/v1/*` JSON API, and the
//! dashboard's static files at `/` ([`dashboard`]).
//!
//! Owns: the admin listener, request routing, bearer-token checks and the JSON shapes of
//! CONTRACT.md ("Admin API"). The listener holds at most `admin.max_connections` (one more
//! is closed at once and counted), and its connections have the proxy's timeouts
//! (`crate::limits`): a request head within `proxy.request_header_timeout_secs`, an idle
//! HTTP/2 connection closed after `proxy.idle_timeout_secs`.
//!
//! Writes (`PUT`, `DELETE`) need the write token (`admin.token_file`); the read token
//! (`admin.read_token_file`) gets 403 on them. The control-plane resources are in [`writes`].
//!
//! Must never: change state without the write token, leak internals in an error body, or
//! log a token.

mod dashboard;
pub mod placements;
pub mod writes;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::control::Control;
use crate::health::Health;
use crate::history::History;
use crate::limits::{Cut, Gate, Timeouts, Watchdog};
use crate::mesh::Mesh;
use crate::mesh::liveness::Verdict;
use crate::metrics::Metrics;
use crate::table::{RouteView, Table};

type Body = Full<Bytes>;

/// What the admin API reads.
#[derive(Debug)]
pub struct AdminState {
    /// The merged route table.
    pub table: Arc<Table>,
    /// Sync state, drain flag and GoRouter health.
    pub health: Arc<Health>,
    /// The registry `/metrics` encodes.
    pub metrics: Arc<Metrics>,
    /// The mesh, when `[mesh]` is configured.
    pub mesh: Option<Arc<Mesh>>,
    /// Bearer token of `/v1/*`: reads and writes.
    pub token: String,
    /// Bearer token that may only read `/v1/*`.
    pub read_token: Option<String>,
    /// The control plane (policies, certificates, audit).
    pub control: Arc<Control>,
    /// The node's region, if configured.
    pub region: Option<String>,
    /// When the node started.
    pub started: std::time::Instant,
    /// The last hour, for `/v1/history` and the dashboard.
    pub history: Arc<History>,
}

/// What a bearer token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// Serve the admin API on `listener` until `shutdown`: at most `gate`'s connections, each
/// within `timeouts`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    gate: Gate,
    timeouts: Timeouts,
    shutdown: CancellationToken,
) {
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(err) => {
                    // Out of descriptors or similar: keep serving the connections we have.
                    warn!(%err, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Over the limit: closed at once and counted, so that a flood of idle connections
        // cannot starve the load balancers' `/healthz`.
        let Some(slot) = gate.admit() else {
            debug!(%peer, "admin connection over admin.max_connections closed");
            drop(stream);
            continue;
        };
        let (state, shutdown, stats) = (state.clone(), shutdown.clone(), gate.stats().clone());
        connections.spawn(async move {
            let _slot = slot;
            serve_connection(stream, state, timeouts, &stats, shutdown).await;
            debug!(%peer, "admin connection closed");
        });
    }
    connections.close();
    connections.wait().await;
}

/// One admin connection (HTTP/1.1 or HTTP/2), cut when its first request is late, when an
/// HTTP/1.1 head is late (hyper's header timeout), or when HTTP/2 sits without streams.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    state: Arc<AdminState>,
    timeouts: Timeouts,
    stats: &crate::limits::ListenerStats,
    shutdown: CancellationToken,
) {
    let requests = Arc::new(AtomicU64::new(0));
    let service = {
        let requests = requests.clone();
        service_fn(move |req| {
            requests.fetch_add(1, Ordering::Relaxed);
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(&state, req).await) }
        })
    };
    let streams = Streams::default();
    let mut builder = auto::Builder::new(streams.clone());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.request_header);
    builder.http2().timer(TokioTimer::new());
    // A client that takes nothing of its answer for the idle timeout is reset.
    let stream = crate::limits::SendGuard::new(stream, timeouts.idle, stats);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let first_by = tokio::time::Instant::now() + timeouts.request_header;
    let mut dog = Watchdog::new(&timeouts, first_by);
    let check = tokio::time::sleep_until(dog.next_check());
    tokio::pin!(check);
    let res = loop {
        tokio::select! {
            res = conn.as_mut() => break res,
            () = &mut check => {
                match dog.check(requests.load(Ordering::Relaxed), streams.running()) {
                    None => check.as_mut().reset(dog.next_check()),
                    Some(cut) => {
                        stats.cut(cut);
                        if cut == Cut::IdleTimeout {
                            conn.as_mut().graceful_shutdown();
                            let _ = tokio::time::timeout(timeouts.request_header, conn.as_mut()).await;
                        }
                        return;
                    }
                }
            }
            () = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                break conn.as_mut().await;
            }
        }
    };
    if let Err(err) = res {
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
        {
            let first = requests.load(Ordering::Relaxed) == 0;
            stats.cut(if first {
                Cut::HeadTimeout
            } else {
                Cut::IdleTimeout
            });
        }
        debug!(%err, "admin connection ended with an error");
    }
}

/// hyper's executor for an admin connection's HTTP/2 streams: a task each, counted, so the
/// watchdog knows when none is running.
#[derive(Debug, Clone, Default)]
struct Streams {
    running: Arc<AtomicUsize>,
    ever: Arc<AtomicBool>,
}

impl Streams {
    /// Streams running; `None` while none ever ran (HTTP/1.1).
    fn running(&self) -> Option<usize> {
        self.ever
            .load(Ordering::Relaxed)
            .then(|| self.running.load(Ordering::Relaxed))
    }
}

/// Counts a stream as running until dropped (finished or aborted).
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<F> hyper::rt::Executor<F> for Streams
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        self.ever.store(true, Ordering::Relaxed);
        self.running.fetch_add(1, Ordering::Relaxed);
        let running = Running(self.running.clone());
        tokio::spawn(async move {
            let _running = running;
            stream.await;
        });
    }
}

async fn handle(state: &AdminState, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => healthz(state),
        // The dashboard's static files: no token (the page asks for it, then calls /v1/*).
        (&Method::GET, p) if p == "/" || p.starts_with("/dashboard/") => {
            dashboard::file(p).unwrap_or_else(|| error(StatusCode::NOT_FOUND, "no such resource"))
        }
        (&Method::GET, "/metrics") => {
            let text = state
                .metrics
                .encode(state.table.stats(), state.health.sync());
            Response::builder()
                .header(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )
                .body(Body::from(text))
                .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR))
        }
        (_, p) if p.starts_with("/v1/") => {
            let Some(access) = authorized(state, &req) else {
                let mut resp = error(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
                return resp;
            };
            let params: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
            let writing = matches!(method, Method::PUT | Method::DELETE | Method::POST);
            if writing && access != Access::Write {
                return error(StatusCode::FORBIDDEN, "this token may only read");
            }
            let body = if writing {
                match Limited::new(req.into_body(), writes::MAX_BODY)
                    .collect()
                    .await
                {
                    Ok(b) => b.to_bytes(),
                    Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                        return error(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            &format!("the body is over {} bytes", writes::MAX_BODY),
                        );
                    }
                    Err(_) => return error(StatusCode::BAD_REQUEST, "the body could not be read"),
                }
            } else {
                Bytes::new()
            };
            v1(state, &method, p, &params, &body)
        }
        (_, "/healthz" | "/metrics") => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => error(StatusCode::NOT_FOUND, "no such resource"),
    }
}

/// `/v1/*` once the token is checked (and a write's body read).
fn v1(
    state: &AdminState,
    method: &Method,
    path: &str,
    params: &BTreeMap<String, String>,
    body: &[u8],
) -> Response<Body> {
    let answer = |r: Result<Value, writes::Refusal>| match r {
        Ok(v) => ok(v),
        Err(refusal) => {
            let mut resp = ok(refusal.body());
            *resp.status_mut() = refusal.status;
            resp
        }
    };
    if let Some(host) = path.strip_prefix("/v1/policies/routes/") {
        return answer(writes::route_policy(state, method, host, body));
    }
    if let Some(site) = path.strip_prefix("/v1/policies/sites/") {
        return answer(writes::site_policy(state, method, site, body));
    }
    if let Some(host) = path.strip_prefix("/v1/certs/") {
        return answer(writes::cert(state, method, host, body));
    }
    if let Some(rest) = path.strip_prefix("/v1/placements/") {
        return answer(placements::one(state, method, rest, body));
    }
    match (method, path) {
        (&Method::GET, "/v1/status") => ok(status(state)),
        (&Method::GET, "/v1/routes") => ok(routes(state, params)),
        (&Method::GET, "/v1/apps") => ok(apps(state, params)),
        (&Method::GET, "/v1/sites") => ok(sites(state)),
        (&Method::GET, "/v1/peers") => ok(peers(state)),
        (&Method::GET, "/v1/policies") => ok(writes::list_policies(state)),
        (&Method::GET, "/v1/certs") => ok(writes::list_certs(state)),
        (&Method::GET, "/v1/placements") => ok(placements::list(state)),
        (&Method::GET, "/v1/history") => ok(state.history.to_json()),
        (&Method::GET, "/v1/audit") => answer(writes::audit(
            state,
            params.get("limit").map(String::as_str),
        )),
        (
            _,
            "/v1/status" | "/v1/routes" | "/v1/apps" | "/v1/sites" | "/v1/peers" | "/v1/policies"
            | "/v1/audit" | "/v1/certs" | "/v1/placements" | "/v1/history",
        ) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => error(StatusCode::NOT_FOUND, "no such resource"),
    }
}

fn healthz(state: &AdminState) -> Response<Body> {
    let site_drained = state
        .control
        .policies()
        .policies()
        .site_drained(&state.table.me().site);
    let (status, word) = if state.health.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if site_drained {
        (StatusCode::SERVICE_UNAVAILABLE, "site_drained")
    } else if !state.health.gorouters_healthy() {
        (StatusCode::SERVICE_UNAVAILABLE, "no_healthy_gorouter")
    } else {
        (StatusCode::OK, "ok")
    };
    let body = json!({ "status": word, "sync": state.health.sync().as_str() });
    let mut resp = ok(body);
    *resp.status_mut() = status;
    resp
}

/// Which token the request carries (compared in constant time, so timing reveals neither).
fn authorized(state: &AdminState, req: &Request<Incoming>) -> Option<Access> {
    let got = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))?
        .trim()
        .as_bytes();
    let same = |want: &str| {
        let want = want.as_bytes();
        got.len() == want.len() && got.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    };
    if same(&state.token) {
        Some(Access::Write)
    } else if state.read_token.as_deref().is_some_and(same) {
        Some(Access::Read)
    } else {
        None
    }
}

fn status(state: &AdminState) -> Value {
    let stats = state.table.stats();
    json!({
        "node_id": &*state.table.me().node_id,
        "site": &*state.table.me().site,
        "region": state.region,
        "generation": state.table.me().generation,
        "sync": state.health.sync().as_str(),
        "routes": stats.routes,
        "local_routes": stats.local_routes,
        "local_endpoints": stats.local_endpoints,
        "peers_alive": state.mesh.as_deref().map_or(0, |m| {
            m.nodes().iter().filter(|n| n.state != Verdict::Dead).count()
        }),
        "peers_connected": state.mesh.as_deref().map_or(0, |m| m.peers().len()),
        "uptime_secs": state.started.elapsed().as_secs(),
    })
}

fn routes(state: &AdminState, params: &BTreeMap<String, String>) -> Value {
    let site_filter = params.get("site").map(String::as_str);
    let views = state.table.routes(params.get("host").map(String::as_str));
    let routes: Vec<Value> = views
        .iter()
        .filter_map(|v| route_json(v, site_filter))
        .collect();
    json!({ "routes": routes })
}

/// One route with its serving sites; `None` when `site_filter` excludes every site.
fn route_json(view: &RouteView, site_filter: Option<&str>) -> Option<Value> {
    #[derive(Default)]
    struct Site<'a> {
        endpoints: u32,
        local: bool,
        nodes: Vec<&'a str>,
        updated_at: u64,
        segment: Option<&'a str>,
    }
    let mut sites: BTreeMap<&str, Site<'_>> = BTreeMap::new();
    let mut app_id: Option<&str> = None;
    for (origin, entry) in view.servers.iter().filter(|(o, _)| o.is_alive()) {
        if site_filter.is_some_and(|s| s != &*origin.site) {
            continue;
        }
        let site = sites.entry(&origin.site).or_default();
        // Nodes of one site learn the same bus: their counts agree, so take the largest
        // rather than a sum that would count every endpoint once per node.
        site.endpoints = site.endpoints.max(entry.endpoints);
        site.local = origin.local_site;
        site.nodes.push(&origin.node_id);
        site.updated_at = site.updated_at.max(entry.updated_at_ms);
        if site.segment.is_none() {
            site.segment = entry.app.segment();
        }
        if app_id.is_none() || origin.local_site {
            app_id = Some(entry.app.id());
        }
    }
    if sites.is_empty() {
        return None;
    }
    let sites: Vec<Value> = sites
        .into_iter()
        .map(|(name, mut s)| {
            s.nodes.sort_unstable();
            json!({
                "site": name,
                "endpoints": s.endpoints,
                "local": s.local,
                "nodes": s.nodes,
                "updated_at": s.updated_at,
                "isolation_segment": s.segment,
            })
        })
        .collect();
    Some(json!({
        "host": &*view.host,
        "path": &*view.path,
        "app_id": app_id.unwrap_or(""),
        "sites": sites,
    }))
}

/// The global `cf apps`: every app, its routes, and its instances per site. An app is
/// grouped by its identity across foundations, `(org, space, name)` from route-emitter's
/// tags (the same app has another GUID at every site), and by its GUID when any of the
/// three is missing. `app_id` is that identity as one string (`org/space/name`, or the
/// GUID); the GUIDs are listed per site.
fn apps(state: &AdminState, params: &BTreeMap<String, String>) -> Value {
    /// How apps are grouped: tagged ones by identity, the rest by GUID (after them).
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    enum Key<'a> {
        Identity(&'a str, &'a str, &'a str),
        Guid(&'a str),
    }
    #[derive(Default)]
    struct App<'a> {
        name: Option<&'a str>,
        org: Option<&'a str>,
        space: Option<&'a str>,
        routes: Vec<String>,
        /// site → GUID → instances (the largest count any route of the app reports).
        sites: BTreeMap<&'a str, BTreeMap<&'a str, u32>>,
    }
    let views = state.table.routes(None);
    let mut apps: BTreeMap<Key<'_>, App<'_>> = BTreeMap::new();
    for v in &views {
        for (origin, entry) in v.servers.iter().filter(|(o, _)| o.is_alive()) {
            let who = &entry.app;
            let key = match who.identity() {
                Some((org, space, name)) => Key::Identity(org, space, name),
                None => Key::Guid(who.id()),
            };
            let app = apps.entry(key).or_default();
            app.name = app.name.or(who.name());
            app.org = app.org.or(who.org());
            app.space = app.space.or(who.space());
            let route = format!("{}{}", v.host, v.path);
            if !app.routes.contains(&route) {
                app.routes.push(route);
            }
            let n = app
                .sites
                .entry(&origin.site)
                .or_default()
                .entry(who.id())
                .or_default();
            *n = (*n).max(entry.instances);
        }
    }
    let site_filter = params.get("site");
    let rules = state.control.policies().policies();
    let apps: Vec<Value> = apps
        .into_iter()
        .filter(|(_, a)| site_filter.is_none_or(|s| a.sites.contains_key(s.as_str())))
        .map(|(key, a)| {
            let id = match key {
                Key::Identity(org, space, name) => format!("{org}/{space}/{name}"),
                Key::Guid(guid) => guid.to_string(),
            };
            let sites: Vec<Value> = a
                .sites
                .iter()
                .map(|(site, guids)| {
                    json!({
                        "site": site,
                        "instances": guids.values().sum::<u32>(),
                        "app_guids": guids.keys().collect::<Vec<_>>(),
                    })
                })
                .collect();
            // Each route host's policy; `policy` is the first one's (app-level commands
            // write the same policy to every host of the app).
            let mut hosts: Vec<&str> = a
                .routes
                .iter()
                .map(|r| r.split_once('/').map_or(r.as_str(), |(h, _)| h))
                .collect();
            hosts.dedup();
            let policies: serde_json::Map<String, Value> = hosts
                .iter()
                .filter_map(|h| {
                    let rule = rules.route(h)?;
                    Some((h.to_string(), serde_json::to_value(&rule.policy).ok()?))
                })
                .collect();
            let policy = policies
                .values()
                .next()
                .cloned()
                .unwrap_or_else(|| json!({}));
            json!({
                "app_id": id,
                "name": a.name,
                "org": a.org,
                "space": a.space,
                "routes": a.routes,
                "sites": sites,
                "policy": policy,
                "policies": policies,
            })
        })
        .collect();
    json!({ "apps": apps })
}

/// Every site: its nodes and their liveness, health, RTT from here, and routes.
fn sites(state: &AdminState) -> Value {
    #[derive(Default)]
    struct Site {
        region: String,
        healthy: bool,
        rtt_ms: Option<f64>,
        routes: usize,
        nodes: Vec<Value>,
    }
    let me = state.table.me();
    let mesh = state.mesh.as_deref();
    let verdicts: BTreeMap<String, (Verdict, u128)> = mesh
        .map(|m| m.nodes())
        .unwrap_or_default()
        .into_iter()
        .map(|n| {
            (
                n.origin.node_id.to_string(),
                (n.state, n.silent_for.as_millis()),
            )
        })
        .collect();
    let rtts: Vec<(String, f64)> = mesh
        .map(|m| m.peers())
        .unwrap_or_default()
        .iter()
        .filter_map(|p| Some((p.site.clone(), p.rtt()?.as_secs_f64() * 1000.0)))
        .collect();
    let mut sites: BTreeMap<String, Site> = BTreeMap::new();
    for p in state.table.partitions() {
        let own = Arc::ptr_eq(&p.origin, me);
        let (verdict, silent_ms) = if own {
            (Verdict::Alive, 0)
        } else {
            verdicts
                .get(&*p.origin.node_id)
                .copied()
                .unwrap_or((Verdict::Alive, 0))
        };
        let site = sites.entry(p.origin.site.to_string()).or_default();
        let record = p.record.as_ref();
        if site.region.is_empty() {
            site.region = if own {
                state.region.clone().unwrap_or_default()
            } else {
                record.map(|r| r.region.clone()).unwrap_or_default()
            };
        }
        let healthy = if own {
            state.health.can_serve()
        } else {
            record.is_some_and(|r| r.healthy)
        };
        if verdict != Verdict::Dead {
            site.healthy |= healthy;
            site.routes = site.routes.max(p.routes);
        }
        site.nodes.push(json!({
            "node_id": &*p.origin.node_id,
            "state": verdict.as_str(),
            "last_seen_ms": u64::try_from(silent_ms).unwrap_or(u64::MAX),
        }));
    }
    if let Some(local) = sites.get_mut(&*me.site) {
        local.rtt_ms = Some(0.0);
    }
    for (site, rtt) in rtts {
        if let Some(s) = sites.get_mut(&site) {
            s.rtt_ms = Some(s.rtt_ms.map_or(rtt, |r| r.min(rtt)));
        }
    }
    // The inter-site RTT matrix: this site's row measured here; another site's as its
    // nodes linked to this one report it in their pings (the best of them); failing that, as
    // its placing nodes publish it (in 10 ms steps).
    let mut matrix: BTreeMap<String, BTreeMap<String, f64>> =
        crate::placement::Inputs::read(&state.control, &state.table)
            .rtts()
            .iter()
            .map(|(from, row)| {
                let row = row.iter().map(|(to, ms)| (to.clone(), f64::from(*ms)));
                (from.clone(), row.collect())
            })
            .collect();
    let mut reported: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for link in mesh.map(|m| m.peers()).unwrap_or_default() {
        let row = reported.entry(link.site.clone()).or_default();
        for (to, rtt) in link.reported_rtts() {
            let ms = rtt.as_secs_f64() * 1000.0;
            let e = row.entry(to).or_insert(ms);
            *e = e.min(ms);
        }
    }
    for (from, row) in reported {
        if !row.is_empty() {
            matrix.insert(from, row);
        }
    }
    let own: BTreeMap<String, f64> = sites
        .iter()
        .filter_map(|(name, s)| Some((name.clone(), s.rtt_ms?)))
        .collect();
    matrix.insert(me.site.to_string(), own);
    let policies = state.control.policies().policies();
    let sites: Vec<Value> = sites
        .into_iter()
        .map(|(name, s)| {
            json!({
                "site": name,
                "drained": policies.site_drained(&name),
                "region": s.region,
                "healthy": s.healthy,
                "rtt_ms": s.rtt_ms,
                "routes": s.routes,
                "nodes": s.nodes,
            })
        })
        .collect();
    json!({ "sites": sites, "rtt_matrix": matrix })
}

/// This node's peer connections, what each peer holds, and this node's own watermarks.
fn peers(state: &AdminState) -> Value {
    let links = state.mesh.as_deref().map(|m| m.peers()).unwrap_or_default();
    let mut rejections = state
        .mesh
        .as_deref()
        .map(|m| m.rejections())
        .unwrap_or_default();
    let peers: Vec<Value> = links
        .iter()
        .map(|p| {
            json!({
                "node_id": p.node_id,
                "site": p.site,
                "address": p.addr,
                "direction": if p.dialed { "outbound" } else { "inbound" },
                "connected_secs": p.since.elapsed().as_secs(),
                "rtt_ms": p.rtt().map(|d| d.as_secs_f64() * 1000.0),
                "bytes_in": p.bytes_in.load(std::sync::atomic::Ordering::Relaxed),
                "bytes_out": p.bytes_out.load(std::sync::atomic::Ordering::Relaxed),
                "held": p.held(),
                "rejections": rejections.remove(&p.node_id).unwrap_or_default(),
            })
        })
        .collect();
    let mut watermarks: Vec<Value> = state
        .table
        .digest()
        .into_iter()
        .map(|(o, v)| json!({ "node_id": &*o.node_id, "site": &*o.site, "generation": o.generation, "max_version": v }))
        .collect();
    watermarks.sort_by(|a, b| a["node_id"].as_str().cmp(&b["node_id"].as_str()));
    // Refusals of peers not connected now (what connected peers sent is listed with them).
    json!({ "peers": peers, "watermarks": watermarks, "rejections": rejections })
}

fn ok(body: Value) -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR))
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    let mut resp = ok(json!({ "error": message }));
    *resp.status_mut() = status;
    resp
}

fn plain(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Body::default());
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::testing::{entry, first_import, key};
    use crate::table::{App, AppFields, RouteEntry};

    fn tagged(guid: &str, org: &str, space: &str, name: &str) -> RouteEntry {
        let app = App::new(AppFields {
            id: guid,
            name: Some(name),
            org: Some(org),
            space: Some(space),
            segment: None,
        })
        .unwrap();
        RouteEntry {
            app: Arc::new(app),
            ..entry(guid, 2)
        }
    }

    fn state(table: Table) -> AdminState {
        let table = Arc::new(table);
        AdminState {
            table: table.clone(),
            health: Arc::new(Health::new()),
            metrics: Arc::new(Metrics::new()),
            mesh: None,
            token: "t".into(),
            read_token: None,
            control: crate::control::Control::open(
                &std::env::temp_dir().join(format!("grouter-admin-test-{}", uuid::Uuid::new_v4())),
                table.clone(),
                Arc::default(),
            )
            .unwrap(),
            region: None,
            started: std::time::Instant::now(),
            history: History::new(std::time::Duration::from_secs(5)),
        }
    }

    /// Issue 12: the global `cf apps` groups by org, space and name (the same app has
    /// another GUID at every foundation), and by GUID when the tags are missing.
    #[test]
    fn apps_are_grouped_by_org_space_and_name_across_sites_else_by_guid() {
        let table = Table::new("lon-1", "lon", 1);
        table.upsert_local(
            &key("shop.example.com"),
            tagged("g-lon", "acme", "prod", "shop"),
        );
        table.upsert_local(&key("legacy.example.com"), entry("g-legacy", 1));
        let mut nyc = first_import("nyc-1", "nyc", &[]);
        let mut add = |uri: &str, e: RouteEntry| {
            let version = nyc.entries.len() as u64 + 1;
            nyc.entries.push(crate::table::ReplicatedEntry {
                key: key(uri),
                version,
                value: Some(Arc::new(e)),
            });
            nyc.up_to_version = version;
        };
        add("shop.example.com", tagged("g-nyc", "acme", "prod", "shop"));
        add(
            "shop-nyc.example.com",
            tagged("g-nyc", "acme", "prod", "shop"),
        );
        // Same name in another space: another app.
        add("beta.example.com", tagged("g-beta", "acme", "dev", "shop"));
        table.import_trusted(nyc);
        let s = state(table);

        let all = apps(&s, &BTreeMap::new());
        let ids: Vec<&str> = all["apps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["app_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["acme/dev/shop", "acme/prod/shop", "g-legacy"]);
        let shop = &all["apps"][1];
        assert_eq!(
            (&shop["org"], &shop["space"], &shop["name"]),
            (&json!("acme"), &json!("prod"), &json!("shop"))
        );
        assert_eq!(
            shop["routes"],
            json!(["shop-nyc.example.com", "shop.example.com"])
        );
        assert_eq!(
            shop["sites"],
            json!([
                {"site": "lon", "instances": 2, "app_guids": ["g-lon"]},
                {"site": "nyc", "instances": 2, "app_guids": ["g-nyc"]},
            ])
        );
        let legacy = &all["apps"][2];
        assert_eq!(
            (&legacy["org"], &legacy["name"]),
            (&json!(null), &json!(null))
        );
        assert_eq!(legacy["sites"][0]["app_guids"], json!(["g-legacy"]));

        // `?site=` keeps the apps that run there, with all their sites.
        let mut at_lon = BTreeMap::new();
        at_lon.insert("site".to_string(), "lon".to_string());
        let ids: Vec<String> = apps(&s, &at_lon)["apps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["app_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids, ["acme/prod/shop", "g-legacy"]);
    }
}
