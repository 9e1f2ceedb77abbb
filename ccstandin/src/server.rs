//! The router: which path goes to which handler, and the gate every `/v3` request passes
//! (recorded, then the garbage and 401 faults, then the bearer token), plus the helpers the
//! handlers share (the request's base URL, JSON bodies, filters, list pages).
//!
//! Owns routing and authentication. Must never let a `/v3` request reach a handler without a
//! valid token, nor answer a CC error in any shape but `{"errors":[...]}`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::error::CcError;
use crate::faults::Fault;
use crate::{Shared, blobstore, cc, hooks, uaa};

pub(crate) type Sh = State<Arc<Shared>>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let v3 = Router::new()
        .route("/v3/organizations", get(cc::list_orgs))
        .route("/v3/organizations/{guid}", get(cc::get_org))
        .route("/v3/spaces", get(cc::list_spaces))
        .route("/v3/spaces/{guid}", get(cc::get_space))
        .route("/v3/apps", get(cc::list_apps).post(cc::create_app))
        .route("/v3/apps/{guid}", get(cc::get_app))
        .route("/v3/apps/{guid}/droplets", get(cc::app_droplets))
        .route("/v3/apps/{guid}/droplets/current", get(cc::current_droplet))
        .route(
            "/v3/apps/{guid}/relationships/current_droplet",
            get(cc::get_current_droplet_rel).patch(cc::set_current_droplet),
        )
        .route("/v3/apps/{guid}/processes/web", get(cc::web_process))
        .route(
            "/v3/apps/{guid}/processes/web/actions/scale",
            post(cc::scale),
        )
        .route("/v3/apps/{guid}/actions/start", post(cc::start))
        .route("/v3/apps/{guid}/actions/stop", post(cc::stop))
        .route("/v3/apps/{guid}/routes", get(cc::app_routes))
        .route("/v3/droplets", post(cc::create_droplet))
        .route("/v3/droplets/{guid}", get(cc::get_droplet))
        .route(
            "/v3/droplets/{guid}/upload",
            post(blobstore::upload).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v3/droplets/{guid}/download",
            get(blobstore::download_redirect),
        )
        .route("/v3/jobs/{guid}", get(cc::get_job))
        .route("/v3/domains", get(cc::list_domains))
        .route("/v3/domains/{guid}", get(cc::get_domain))
        .route("/v3/routes", get(cc::list_routes).post(cc::create_route))
        .route("/v3/routes/{guid}", get(cc::get_route))
        .route(
            "/v3/routes/{guid}/destinations",
            get(cc::route_destinations).post(cc::add_destinations),
        )
        // Only the routes above pass the gate: UAA, the blobstore and the hooks need no token.
        .route_layer(middleware::from_fn_with_state(shared.clone(), gate));
    v3.route("/oauth/token", post(uaa::token))
        .route("/_blobstore/droplets/{guid}", get(blobstore::download))
        .route("/_standin/tokens", get(hooks::tokens))
        .route("/_standin/requests", get(hooks::requests))
        .route("/_standin/state", get(hooks::state))
        .route(
            "/_standin/faults",
            get(hooks::get_faults).post(hooks::set_faults),
        )
        .route("/_standin/expire_tokens", post(hooks::expire_tokens))
        .fallback(not_found)
        .with_state(shared)
}

/// A path nobody serves: under `/v3`, through the gate, then CF-NotFound.
async fn not_found(State(sh): Sh, req: Request) -> Response {
    if req.uri().path().starts_with("/v3/") || req.uri().path() == "/v3" {
        let next = |_req: Request| async { CcError::unknown_request().into_response() };
        return gate_with(&sh, req, next).await;
    }
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// Every `/v3` request: recorded; then the garbage fault, the 401 fault, the token.
async fn gate(State(sh): Sh, req: Request, next: Next) -> Response {
    gate_with(&sh, req, |req| next.run(req)).await
}

async fn gate_with<F, Fut>(sh: &Shared, req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let auth = req.headers().contains_key(header::AUTHORIZATION);
    sh.record_request(
        req.method().as_str(),
        req.uri().path(),
        req.uri().query(),
        auth,
    );
    let (garbage, refuse) = {
        let mut f = sh.faults.lock();
        let garbage = f.take(Fault::Garbage);
        (garbage, !garbage && f.take(Fault::Token401))
    };
    let valid = bearer(req.headers()).is_some_and(|t| sh.tokens.lock().contains(t));
    if garbage || refuse || !valid {
        // Read what the client is still sending (an upload's bits), so it reads this answer
        // rather than a reset.
        crate::blobstore::drain(req.into_body()).await;
        if garbage {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/html")],
                "<html>garbage</html>",
            )
                .into_response();
        }
        return CcError::invalid_token().into_response();
    }
    next(req).await
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// `http://HOST` of this request (its `Host` header), for links and redirects.
pub(crate) fn base_url(sh: &Shared, headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| sh.addr.to_string(), str::to_string);
    format!("http://{host}")
}

/// A request body as a JSON object (400 CF-MessageParseError when it is not JSON, 422 when
/// it is not an object).
pub(crate) fn json_body(body: &[u8]) -> Result<Value, CcError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| CcError::parse(e.to_string()))?;
    if v.is_object() {
        Ok(v)
    } else {
        Err(CcError::unprocessable(
            "the request body must be a JSON object",
        ))
    }
}

/// The string at `pointer` (`/relationships/space/data/guid`) in `v`.
pub(crate) fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// Comma-separated filters from a query string: `names=a,b` → `{"names": ["a","b"]}`.
#[derive(Debug, Default)]
pub(crate) struct Filters(HashMap<String, Vec<String>>);

impl Filters {
    pub(crate) fn parse(query: Option<&str>) -> Filters {
        let mut map = HashMap::new();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            map.insert(
                k.into_owned(),
                v.split(',').map(str::to_string).collect::<Vec<_>>(),
            );
        }
        Filters(map)
    }

    /// Whether `value` passes the filter `key` (always, when the query has no such key).
    pub(crate) fn admits(&self, key: &str, value: &str) -> bool {
        self.0
            .get(key)
            .is_none_or(|vs| vs.iter().any(|v| v == value))
    }
}

/// A one-page list.
pub(crate) fn list(base: &str, path: &str, query: Option<&str>, resources: Vec<Value>) -> Response {
    let href = match query {
        Some(q) if !q.is_empty() => format!("{base}{path}?{q}"),
        _ => format!("{base}{path}"),
    };
    json_response(
        StatusCode::OK,
        &json!({
            "pagination": {
                "total_results": resources.len(), "total_pages": 1,
                "first": {"href": href}, "last": {"href": href},
                "next": null, "previous": null,
            },
            "resources": resources,
        }),
    )
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}
