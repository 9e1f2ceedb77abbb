//! The admin API client and the shapes of its answers (CONTRACT.md, "Admin API").
//!
//! Owns: building URLs (query parameters URL-encoded), the bearer token header, the
//! 10-second timeout, turning HTTP and network failures into messages that name the URL,
//! and lenient typed structs for the JSON bodies.
//!
//! Must never: print anything, retry (a CLI should fail fast and say why), or put the
//! token in an error message or `Debug` output.
//!
//! The response structs are deliberately forgiving: unknown fields are ignored and
//! missing or `null` fields fall back to defaults, so a node running a newer or older
//! GRouter still gets a useful table instead of a parse error.

use std::fmt;
use std::sync::Once;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use reqwest::{StatusCode, Url};
use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// Every request (connect, send, read) must finish within this time.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The message for a 401; the wording is part of gcf's interface.
pub const UNAUTHORIZED: &str = "Not logged in or token rejected: check --token-file.";

/// reqwest is built with `rustls-no-provider` and panics when a client is built before a
/// crypto provider is installed; install ring's exactly once per process.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another provider is already the process default: that one will do.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client for one node's admin API.
pub struct Client {
    base: Url,
    token: Option<String>,
    http: reqwest::blocking::Client,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// A JSON body as received, already checked to be well-formed JSON.
#[derive(Debug)]
pub struct JsonBody {
    url: String,
    text: String,
}

impl JsonBody {
    /// The body exactly as the API sent it (for `--json`).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Decode the body into `T`; a mismatch names the URL.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(&self.text)
            .with_context(|| format!("{}: unexpected response", self.url))
    }
}

impl Client {
    /// A client for the API at `base` (a normalised URL, see `target::normalize_url`),
    /// sending `token` as a bearer token on `/v1/*` requests when there is one.
    pub fn new(base: &str, token: Option<&str>) -> Result<Self> {
        install_crypto_provider();
        let base = Url::parse(base).with_context(|| format!("invalid API URL '{base}'"))?;
        let http = reqwest::blocking::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .user_agent(concat!("gcf/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            base,
            token: token.map(str::to_owned),
            http,
        })
    }

    /// The API's base URL, as targeted.
    pub fn base(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// `path` (starting with `/`) under the base URL, with `query` form-URL-encoded.
    ///
    /// reqwest 0.13 puts `RequestBuilder::query` behind a `query` feature this workspace
    /// does not enable; `Url::query_pairs_mut` does the same encoding.
    pub fn url(&self, path: &str, query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        url.set_path(&format!("{}{path}", self.base.path().trim_end_matches('/')));
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (key, value) in query {
                pairs.append_pair(key, value);
            }
        }
        url
    }

    /// `GET /healthz` (no token). A 503 still means the API answered: the node is up but
    /// cannot serve traffic (draining, or no healthy local GoRouter).
    pub fn healthz(&self) -> Result<Health> {
        let url = self.url("/healthz", &[]);
        let resp = self
            .http
            .get(url.clone())
            .send()
            .map_err(|e| network_error(&url, &e))?;
        let status = resp.status();
        let text = resp.text().map_err(|e| network_error(&url, &e))?;
        if !(status.is_success() || status == StatusCode::SERVICE_UNAVAILABLE) {
            return Err(status_error(&url, status, &text));
        }
        let mut health: Health = serde_json::from_str(&text)
            .with_context(|| format!("{url}: not a GRouter admin API (unexpected /healthz)"))?;
        health.serving = status.is_success();
        Ok(health)
    }

    /// The URL of `/v1/<segments...>`, each segment percent-encoded (a route host such as
    /// `*.apps.example.com` or a site name is one segment, never a path).
    pub fn v1_url(&self, segments: &[&str]) -> Url {
        let mut url = self.url("/v1", &[]);
        if let Ok(mut path) = url.path_segments_mut() {
            path.extend(segments);
        }
        url
    }

    /// `GET path?query` with the bearer token; the body must be JSON.
    pub fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<JsonBody> {
        let url = self.url(path, query);
        self.send(Method::Get, url, None)?.found()
    }

    /// `GET /v1/<segments...>`; `None` when the API answers 404 (no value for that key).
    pub fn get_opt(&self, segments: &[&str]) -> Result<Option<JsonBody>> {
        Ok(self
            .send(Method::Get, self.v1_url(segments), None)?
            .into_option())
    }

    /// `PUT /v1/<segments...>` with the JSON `body`; a 404 is an error like any other.
    pub fn put(&self, segments: &[&str], body: &Value) -> Result<JsonBody> {
        self.send(Method::Put, self.v1_url(segments), Some(body))?
            .found()
    }

    /// `DELETE /v1/<segments...>`; `None` when the API answers 404 (nothing to delete,
    /// nothing written).
    pub fn delete(&self, segments: &[&str]) -> Result<Option<JsonBody>> {
        Ok(self
            .send(Method::Delete, self.v1_url(segments), None)?
            .into_option())
    }

    /// One request with the bearer token. 401 is [`UNAUTHORIZED`]; other failures name
    /// the URL, the status and the API's `error` (and `field`, for a refused write).
    fn send(&self, method: Method, url: Url, body: Option<&Value>) -> Result<Reply> {
        let mut req = match method {
            Method::Get => self.http.get(url.clone()),
            Method::Put => self.http.put(url.clone()),
            Method::Delete => self.http.delete(url.clone()),
        };
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let resp = req.send().map_err(|e| network_error(&url, &e))?;
        let status = resp.status();
        let text = resp.text().map_err(|e| network_error(&url, &e))?;
        if status == StatusCode::UNAUTHORIZED {
            return Err(anyhow!(UNAUTHORIZED));
        }
        if status == StatusCode::NOT_FOUND {
            return Ok(Reply::NotFound(status_error(&url, status, &text)));
        }
        if !status.is_success() {
            return Err(status_error(&url, status, &text));
        }
        serde_json::from_str::<IgnoredAny>(&text)
            .with_context(|| format!("{url}: the response is not JSON"))?;
        Ok(Reply::Found(JsonBody {
            url: url.to_string(),
            text,
        }))
    }
}

#[derive(Debug, Clone, Copy)]
enum Method {
    Get,
    Put,
    Delete,
}

/// A request's outcome: a JSON body, or a 404 kept as the error it is where a 404 is not
/// expected.
enum Reply {
    Found(JsonBody),
    NotFound(anyhow::Error),
}

impl Reply {
    fn found(self) -> Result<JsonBody> {
        match self {
            Reply::Found(body) => Ok(body),
            Reply::NotFound(err) => Err(err),
        }
    }

    fn into_option(self) -> Option<JsonBody> {
        match self {
            Reply::Found(body) => Some(body),
            Reply::NotFound(_) => None,
        }
    }
}

/// A send or read failure, naming the URL and the innermost cause (e.g. "Connection
/// refused (os error 111)") rather than reqwest's generic wrapper text.
fn network_error(url: &Url, err: &reqwest::Error) -> anyhow::Error {
    if err.is_timeout() {
        return anyhow!("{url}: no answer within {} s", TIMEOUT.as_secs());
    }
    let mut cause: &dyn std::error::Error = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    anyhow!("cannot reach {url}: {cause}")
}

/// A non-success status, with the API's `{"error": ...}` message when it sent one.
fn status_error(url: &Url, status: StatusCode, body: &str) -> anyhow::Error {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
        #[serde(default)]
        field: Option<String>,
    }
    let detail = match serde_json::from_str::<ErrorBody>(body) {
        Ok(ErrorBody {
            error,
            field: Some(field),
        }) if !field.is_empty() => format!("{error} (field {field})"),
        Ok(e) => e.error,
        // Not our JSON (a proxy's HTML page, say): a short, single-line excerpt.
        Err(_) => body
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(120)
            .collect(),
    };
    if detail.is_empty() {
        anyhow!("{url}: {status}")
    } else {
        anyhow!("{url}: {status}: {detail}")
    }
}

/// Treat a JSON `null` like a missing field: the type's default.
fn nullable<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(de)?.unwrap_or_default())
}

/// `GET /healthz`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Health {
    /// `ok`, or why the node cannot serve (`draining`, ...).
    #[serde(deserialize_with = "nullable")]
    pub status: String,
    /// `in_sync`, `degraded` or `lost`.
    #[serde(deserialize_with = "nullable")]
    pub sync: String,
    /// False when the node answered 503; set from the status code, not the body.
    #[serde(skip)]
    pub serving: bool,
}

/// `GET /v1/status`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Status {
    /// This node's id (`lon-1`).
    #[serde(deserialize_with = "nullable")]
    pub node_id: String,
    /// This node's site (`lon`).
    #[serde(deserialize_with = "nullable")]
    pub site: String,
    /// The site's region, when configured.
    pub region: Option<String>,
    /// This node's incarnation.
    pub generation: Option<u64>,
    /// `in_sync`, `degraded` or `lost`.
    #[serde(deserialize_with = "nullable")]
    pub sync: String,
    /// Routes known across the mesh.
    pub routes: Option<u64>,
    /// Routes served at this site (not in the contract; shown when present).
    pub local_routes: Option<u64>,
    /// Endpoints at this site (not in the contract; shown when present).
    pub local_endpoints: Option<u64>,
    /// Peers this node currently sees alive.
    pub peers_alive: Option<u64>,
    /// Seconds since the node started.
    pub uptime_secs: Option<u64>,
}

/// `GET /v1/sites`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SitesBody {
    /// Every site the node knows.
    #[serde(deserialize_with = "nullable")]
    pub sites: Vec<SiteInfo>,
}

/// One site in `GET /v1/sites`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SiteInfo {
    /// Site name.
    #[serde(deserialize_with = "nullable")]
    pub site: String,
    /// Region, when configured.
    pub region: Option<String>,
    /// Whether the site can serve.
    pub healthy: Option<bool>,
    /// Round-trip time to the site; absent for the local site or when unknown.
    pub rtt_ms: Option<f64>,
    /// Routes the site serves.
    pub routes: Option<u64>,
    /// The site's GRouter nodes.
    #[serde(deserialize_with = "nullable")]
    pub nodes: Vec<SiteNode>,
    /// Whether a site policy drains the whole site (issue 13; absent from older nodes).
    pub drained: Option<bool>,
}

/// One node of a site.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SiteNode {
    /// Node id.
    #[serde(deserialize_with = "nullable")]
    pub node_id: String,
    /// `alive`, `suspect` or `dead`.
    #[serde(deserialize_with = "nullable")]
    pub state: String,
}

/// `GET /v1/routes`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RoutesBody {
    /// Routes with their serving sites.
    #[serde(deserialize_with = "nullable")]
    pub routes: Vec<Route>,
}

/// One route in `GET /v1/routes`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Route {
    /// Host, or `*.domain` for a wildcard.
    #[serde(deserialize_with = "nullable")]
    pub host: String,
    /// Path prefix; empty for the whole host.
    #[serde(deserialize_with = "nullable")]
    pub path: String,
    /// The app behind the route.
    #[serde(deserialize_with = "nullable")]
    pub app_id: String,
    /// Sites serving the route.
    #[serde(deserialize_with = "nullable")]
    pub sites: Vec<RouteSite>,
}

/// One serving site of a route.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RouteSite {
    /// Site name.
    #[serde(deserialize_with = "nullable")]
    pub site: String,
    /// Endpoints registered for the route at that site.
    #[serde(deserialize_with = "nullable")]
    pub endpoints: u64,
    /// Whether that site is the answering node's own.
    #[serde(deserialize_with = "nullable")]
    pub local: bool,
}

/// `GET /v1/apps`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AppsBody {
    /// Apps across the mesh.
    #[serde(deserialize_with = "nullable")]
    pub apps: Vec<App>,
}

/// One app in `GET /v1/apps`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct App {
    /// The app's identity across foundations: `org/space/name` when route-emitter tagged
    /// all three, else its GUID (the same app has another GUID at every foundation).
    #[serde(deserialize_with = "nullable")]
    pub app_id: String,
    /// From the `app_name` tag; `None` when no endpoint carried one.
    pub name: Option<String>,
    /// From the `organization_name` tag.
    pub org: Option<String>,
    /// From the `space_name` tag.
    pub space: Option<String>,
    /// `host` or `host/path` routes.
    #[serde(deserialize_with = "nullable")]
    pub routes: Vec<String>,
    /// Where it runs.
    #[serde(deserialize_with = "nullable")]
    pub sites: Vec<AppSite>,
    /// The app's routing policy; its shape grows with the policy issues, so it is kept
    /// as JSON and shown key by key.
    pub policy: Value,
}

/// One site an app runs at.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AppSite {
    /// Site name.
    #[serde(deserialize_with = "nullable")]
    pub site: String,
    /// Instances (endpoints) at that site.
    #[serde(deserialize_with = "nullable")]
    pub instances: u64,
    /// The app's GUIDs at that site's foundation (one, unless it was re-created).
    #[serde(deserialize_with = "nullable")]
    pub app_guids: Vec<String>,
}

/// The metadata every stored config value carries (`GET /v1/policies…`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Written {
    /// The value's hybrid logical clock, `"<physical_ms>.<counter>@<node_id>"`.
    #[serde(deserialize_with = "nullable")]
    pub hlc: String,
    /// The node that accepted the write.
    #[serde(deserialize_with = "nullable")]
    pub written_by: String,
    /// When that node accepted it (Unix milliseconds).
    pub written_at_ms: Option<u64>,
}

/// `GET /v1/policies`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PoliciesBody {
    /// Route policies, sorted by host.
    #[serde(deserialize_with = "nullable")]
    pub routes: Vec<RoutePolicyEntry>,
    /// Site policies, sorted by site.
    #[serde(deserialize_with = "nullable")]
    pub sites: Vec<SitePolicyEntry>,
}

/// One route policy (`GET /v1/policies/routes/{host}` and the `routes` of `GET /v1/policies`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RoutePolicyEntry {
    /// Route host (lower case; `*.domain` for a wildcard).
    #[serde(deserialize_with = "nullable")]
    pub host: String,
    /// `{mode, regions, weights, drained}`, kept as JSON so that a read-modify-write
    /// carries fields a newer node knows and this gcf does not.
    #[serde(deserialize_with = "nullable")]
    pub policy: Value,
    /// Who wrote it, when.
    #[serde(flatten)]
    pub written: Written,
}

/// One site policy (`GET /v1/policies/sites/{site}` and the `sites` of `GET /v1/policies`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SitePolicyEntry {
    /// Site name.
    #[serde(deserialize_with = "nullable")]
    pub site: String,
    /// `{drained}`.
    #[serde(deserialize_with = "nullable")]
    pub policy: Value,
    /// Who wrote it, when.
    #[serde(flatten)]
    pub written: Written,
}

/// The answer to a `PUT` or `DELETE` of a config value (policies and certificates).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct WriteReply {
    /// The key written, e.g. `policy/route/shop.apps.example.com`.
    #[serde(deserialize_with = "nullable")]
    pub key: String,
    /// The write's HLC; its `@node` suffix names the node that stored it.
    #[serde(deserialize_with = "nullable")]
    pub hlc: String,
    /// False when no peer was connected: stored at this node only, for now.
    pub replicated: Option<bool>,
    /// Certificate uploads: the host.
    pub host: Option<String>,
    /// Certificate uploads: the names the certificate covers.
    #[serde(deserialize_with = "nullable")]
    pub sans: Vec<String>,
    /// Certificate uploads: expiry (RFC 3339).
    pub not_after: Option<String>,
    /// Certificate uploads: SHA-256 of the leaf, hex.
    pub fingerprint_sha256: Option<String>,
}

impl WriteReply {
    /// The node that stored the write: the HLC's `@node` suffix.
    pub fn node(&self) -> Option<&str> {
        self.hlc
            .rsplit_once('@')
            .map(|(_, node)| node)
            .filter(|n| !n.is_empty())
    }
}

/// `GET /v1/placements`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PlacementsBody {
    /// Every placement, sorted by org, space and app.
    #[serde(deserialize_with = "nullable")]
    pub placements: Vec<Placement>,
}

/// One app's placement across foundations (`GET /v1/placements/{org}/{space}/{app}`, the
/// answer to its `PUT`, and each entry of `GET /v1/placements`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Placement {
    /// The app's org.
    #[serde(deserialize_with = "nullable")]
    pub org: String,
    /// The app's space.
    #[serde(deserialize_with = "nullable")]
    pub space: String,
    /// The app's name.
    #[serde(deserialize_with = "nullable")]
    pub app: String,
    /// What was asked for, as written.
    #[serde(deserialize_with = "nullable")]
    pub desired: Desired,
    /// The sites chosen to run the app (the same choice at every node).
    #[serde(deserialize_with = "nullable")]
    pub chosen: Vec<String>,
    /// When the desired placement was written (Unix milliseconds).
    pub written_at_ms: Option<u64>,
    /// The node that accepted the write.
    #[serde(deserialize_with = "nullable")]
    pub written_by: String,
    /// Every known site, chosen or not, with what its reconciler last reported.
    #[serde(deserialize_with = "nullable")]
    pub sites: Vec<PlacementSite>,
}

/// The desired placement: how many sites (or which) and how many instances at each.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Desired {
    /// `N` or `["lon","nyc"]`; `None` when missing or of another shape.
    #[serde(deserialize_with = "lenient")]
    pub sites: Option<SitesSpec>,
    /// Instances at each chosen site; `None`: keep what the app has.
    pub instances: Option<u64>,
}

/// `sites` of a placement, as `gcf scale --sites` takes it and the API stores it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(untagged)]
pub enum SitesSpec {
    /// Any `N` sites, chosen by GRouter.
    Count(u64),
    /// Exactly these sites.
    List(Vec<String>),
}

/// One site's part in a placement.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PlacementSite {
    /// Site name.
    #[serde(deserialize_with = "nullable")]
    pub site: String,
    /// Whether the site is one of the chosen.
    #[serde(deserialize_with = "nullable")]
    pub chosen: bool,
    /// `absent`, `pending`, `working`, `running`, `stopped`, `failed` or `unknown`.
    #[serde(deserialize_with = "nullable")]
    pub state: String,
    /// While `working`: the step under way (`copy_droplet`, ...).
    pub step: Option<String>,
    /// Instances the site's Cloud Controller reports.
    pub instances: Option<u64>,
    /// `STARTED` or `STOPPED`.
    pub app_state: Option<String>,
    /// SHA-256 of the app's current droplet, hex.
    pub droplet_sha256: Option<String>,
    /// The last failure, `step: message`.
    pub error: Option<String>,
    /// When the site's reconciler wrote this report (Unix ms).
    pub updated_at_ms: Option<u64>,
}

/// A field that falls back to `None` when it is missing, `null` or of a shape this gcf
/// does not know, rather than failing the whole response.
fn lenient<'de, D, T>(de: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let value = Value::deserialize(de)?;
    Ok(serde_json::from_value(value).ok())
}

/// `GET /v1/certs`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CertsBody {
    /// Every certificate the mesh knows, metadata only.
    #[serde(deserialize_with = "nullable")]
    pub certs: Vec<CertInfo>,
}

/// One certificate's metadata (never its key).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CertInfo {
    /// The host it was stored under.
    #[serde(deserialize_with = "nullable")]
    pub host: String,
    /// Names it covers.
    #[serde(deserialize_with = "nullable")]
    pub sans: Vec<String>,
    /// Expiry, RFC 3339.
    pub not_after: Option<String>,
    /// SHA-256 of the leaf, hex.
    pub fingerprint_sha256: Option<String>,
    /// `file`, `upload` or `acme`.
    pub source: Option<String>,
    /// Nodes that serve it by SNI now.
    #[serde(deserialize_with = "nullable")]
    pub nodes_serving: Vec<String>,
}

/// `GET /v1/audit`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AuditBody {
    /// The node's own writes, newest first.
    #[serde(deserialize_with = "nullable")]
    pub entries: Vec<AuditEntry>,
}

/// One audited write.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AuditEntry {
    /// When (Unix milliseconds).
    pub at_ms: Option<u64>,
    /// The write's HLC.
    #[serde(deserialize_with = "nullable")]
    pub hlc: String,
    /// The node that accepted it.
    #[serde(deserialize_with = "nullable")]
    pub node_id: String,
    /// The kind of token that made it (`write`).
    #[serde(deserialize_with = "nullable")]
    pub token: String,
    /// `put` or `delete`.
    #[serde(deserialize_with = "nullable")]
    pub action: String,
    /// The key written.
    #[serde(deserialize_with = "nullable")]
    pub key: String,
    /// A one-line description of the change.
    #[serde(deserialize_with = "nullable")]
    pub summary: String,
}

/// `GET /v1/peers`, whose shape is not fixed yet: `{"peers": [...]}` or a bare array.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PeersBody {
    /// `{"peers": [...]}` (other keys ignored).
    Wrapped {
        /// The peers.
        #[serde(default, deserialize_with = "nullable")]
        peers: Vec<Peer>,
    },
    /// `[...]`.
    Bare(Vec<Peer>),
}

impl PeersBody {
    /// The peers, whichever shape carried them.
    pub fn into_peers(self) -> Vec<Peer> {
        match self {
            PeersBody::Wrapped { peers } | PeersBody::Bare(peers) => peers,
        }
    }
}

/// One entry of the peers list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Peer {
    /// An object, keys in the order received (they become table columns).
    Object(OrderedObject),
    /// Anything else (shown in a single column).
    Other(Value),
}

/// A JSON object with its keys in the order received (serde_json's `Map` sorts them).
#[derive(Debug, Default, PartialEq)]
pub struct OrderedObject(pub Vec<(String, Value)>);

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedObject, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(OrderedObject(entries))
            }
        }
        de.deserialize_map(ObjectVisitor)
    }
}

/// Any JSON value re-encoded compactly with object keys in the order received, for
/// printing part of a response "as received" (`gcf app NAME --json`). Numbers keep their
/// value, not necessarily their spelling (`1.50` becomes `1.5`).
#[derive(Debug, Default, PartialEq)]
pub struct JsonText(pub String);

impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_any(TextVisitor).map(JsonText)
    }
}

/// Builds the compact text of whatever value it visits.
struct TextVisitor;

impl TextVisitor {
    fn encode<E: serde::de::Error, T: serde::Serialize + ?Sized>(v: &T) -> Result<String, E> {
        serde_json::to_string(v).map_err(E::custom)
    }
}

impl<'de> Visitor<'de> for TextVisitor {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<String, E> {
        Self::encode(&v)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
        Self::encode(v)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<String, E> {
        Ok("null".to_owned())
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<String, E> {
        Ok("null".to_owned())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<String, A::Error> {
        let mut items = Vec::new();
        while let Some(JsonText(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(format!("[{}]", items.join(",")))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<String, A::Error> {
        let mut entries = Vec::new();
        while let Some((key, JsonText(value))) = map.next_entry::<String, JsonText>()? {
            entries.push(format!("{}:{value}", Self::encode::<A::Error, _>(&key)?));
        }
        Ok(format!("{{{}}}", entries.join(",")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_query_and_keep_base_path() {
        let client = Client::new("http://127.0.0.1:9/admin", None).unwrap();
        assert_eq!(
            client.url("/v1/routes", &[("site", "l o&n=1")]).as_str(),
            "http://127.0.0.1:9/admin/v1/routes?site=l+o%26n%3D1"
        );
        let client = Client::new("http://127.0.0.1:9", None).unwrap();
        assert_eq!(
            client.url("/healthz", &[]).as_str(),
            "http://127.0.0.1:9/healthz"
        );
        assert_eq!(client.base(), "http://127.0.0.1:9");
    }

    #[test]
    fn debug_redacts_the_token() {
        let client = Client::new("http://127.0.0.1:9", Some("s3cret")).unwrap();
        let text = format!("{client:?}");
        assert!(
            !text.contains("s3cret") && text.contains("<redacted>"),
            "{text}"
        );
    }

    #[test]
    fn missing_null_and_unknown_fields_are_tolerated() {
        let body: RoutesBody = serde_json::from_str(
            r#"{"routes":[{"host":"a.example.com","path":null,"extra":{"x":1},
                "sites":[{"site":"lon","endpoints":null}]}],"more":true}"#,
        )
        .unwrap();
        let route = &body.routes[0];
        assert_eq!(route.host, "a.example.com");
        assert_eq!(route.path, "");
        assert_eq!(route.app_id, "");
        assert_eq!(route.sites[0].endpoints, 0);
        assert!(!route.sites[0].local);

        let body: AppsBody = serde_json::from_str(r#"{"apps":[{"app_id":"x"}]}"#).unwrap();
        assert_eq!(body.apps[0].name, None);
        assert!(body.apps[0].policy.is_null());

        let status: Status = serde_json::from_str("{}").unwrap();
        assert_eq!(status.uptime_secs, None);
        let sites: SitesBody = serde_json::from_str(r#"{"sites":null}"#).unwrap();
        assert!(sites.sites.is_empty());
    }

    #[test]
    fn peers_keep_key_order_in_either_shape() {
        let wrapped: PeersBody =
            serde_json::from_str(r#"{"peers":[{"z":1,"a":"x"},7],"node":"lon-1"}"#).unwrap();
        let peers = wrapped.into_peers();
        let Peer::Object(first) = &peers[0] else {
            panic!("{peers:?}")
        };
        let keys: Vec<&str> = first.0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["z", "a"]);
        assert!(matches!(&peers[1], Peer::Other(v) if v == 7));

        let bare: PeersBody = serde_json::from_str(r#"[{"b":1}]"#).unwrap();
        assert_eq!(bare.into_peers().len(), 1);
        let empty: PeersBody = serde_json::from_str(r#"{}"#).unwrap();
        assert!(empty.into_peers().is_empty());
    }

    #[test]
    fn json_text_keeps_key_order() {
        let text = r#"{"z":[1,-2,1.5,true,null,"a\"b"],"a":{"y":{},"b":[]}}"#;
        let JsonText(got) = serde_json::from_str(text).unwrap();
        assert_eq!(got, text);
    }

    #[test]
    fn error_bodies_become_messages_naming_the_url() {
        let url = Url::parse("http://h:1/v1/sites").unwrap();
        let err = status_error(
            &url,
            StatusCode::NOT_FOUND,
            r#"{"error":"no such resource"}"#,
        );
        assert_eq!(
            err.to_string(),
            "http://h:1/v1/sites: 404 Not Found: no such resource"
        );
        let err = status_error(&url, StatusCode::BAD_GATEWAY, "<html>\n  bad\n</html>");
        assert_eq!(
            err.to_string(),
            "http://h:1/v1/sites: 502 Bad Gateway: <html> bad </html>"
        );
        let err = status_error(&url, StatusCode::INTERNAL_SERVER_ERROR, "");
        assert_eq!(
            err.to_string(),
            "http://h:1/v1/sites: 500 Internal Server Error"
        );
    }
}
