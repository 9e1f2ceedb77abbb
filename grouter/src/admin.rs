//! The admin HTTP API: `/healthz`, `/metrics` and the token-protected `/v1/*` JSON API.
//!
//! Owns: the admin listener, request routing, bearer-token checks and the JSON shapes of
//! CONTRACT.md ("Admin API").
//!
//! Must never: change state without a valid token, leak internals in an error body, or log
//! the token.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::node::NodeState;
use crate::table::RouteView;

type Body = Full<Bytes>;

/// Serve the admin API on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, state: Arc<NodeState>, shutdown: CancellationToken) {
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
        let state = state.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req)) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => if let Err(err) = res {
                    debug!(%peer, %err, "admin connection ended with an error");
                },
                () = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
    connections.close();
    connections.wait().await;
}

fn handle(state: &NodeState, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    match (req.method(), path) {
        (&Method::GET, "/healthz") => healthz(state),
        (&Method::GET, "/metrics") => {
            let text = state.metrics.encode(state.table.stats());
            Response::builder()
                .header(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )
                .body(Body::from(text))
                .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR))
        }
        (_, p) if p.starts_with("/v1/") => {
            if !authorized(state, &req) {
                let mut resp = error(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
                return resp;
            }
            let params: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
            match (req.method(), p) {
                (&Method::GET, "/v1/status") => ok(status(state)),
                (&Method::GET, "/v1/routes") => ok(routes(state, &params)),
                (_, "/v1/status" | "/v1/routes") => {
                    error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
                }
                _ => error(StatusCode::NOT_FOUND, "no such resource"),
            }
        }
        (_, "/healthz" | "/metrics") => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => error(StatusCode::NOT_FOUND, "no such resource"),
    }
}

fn healthz(state: &NodeState) -> Response<Body> {
    let (status, word) = if state.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        (StatusCode::OK, "ok")
    };
    let body = json!({ "status": word, "sync": state.sync().as_str() });
    let mut resp = ok(body);
    *resp.status_mut() = status;
    resp
}

/// Constant-time comparison of the bearer token, so that timing does not reveal it.
fn authorized(state: &NodeState, req: &Request<Incoming>) -> bool {
    let Some(got) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let want = state.token.as_bytes();
    let got = got.trim().as_bytes();
    got.len() == want.len() && got.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn status(state: &NodeState) -> Value {
    let stats = state.table.stats();
    json!({
        "node_id": &*state.table.me().node_id,
        "site": &*state.table.me().site,
        "region": state.region,
        "generation": state.table.me().generation,
        "sync": state.sync().as_str(),
        "routes": stats.routes,
        "local_routes": stats.local_routes,
        "local_endpoints": stats.local_endpoints,
        "peers_alive": 0,
        "uptime_secs": state.started.elapsed().as_secs(),
    })
}

fn routes(state: &NodeState, params: &BTreeMap<String, String>) -> Value {
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
        if app_id.is_none() || origin.local_site {
            app_id = Some(&entry.app_id);
        }
    }
    if sites.is_empty() {
        return None;
    }
    let sites: Vec<Value> = sites
        .into_iter()
        .map(|(name, s)| {
            json!({
                "site": name,
                "endpoints": s.endpoints,
                "local": s.local,
                "nodes": s.nodes,
                "updated_at": s.updated_at,
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
