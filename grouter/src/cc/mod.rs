//! This site's Cloud Controller (v3 API), its UAA and its blobstore, as the placement uses
//! them (docs/PLACEMENT.md; the calls are listed there).
//!
//! Owns: the UAA token (client credentials, fetched when needed, renewed before it expires
//! and once more when the Cloud Controller says it is no longer valid), every request's
//! time limit, the size limit of a JSON answer, pagination, the droplet download (the
//! Cloud Controller answers a redirect to its blobstore, which is followed *without* the
//! OAuth header: a signed blobstore URL refuses a second credential) and the streamed
//! droplet upload with its asynchronous job.
//!
//! Must never: talk to another site's Cloud Controller (it has one base URL, this site's),
//! log or return the client secret or a token, follow a pagination link off the API's
//! origin, or hold a droplet in memory.

mod model;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use reqwest::{Method, StatusCode, header};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tracing::{debug, info};

pub use model::{App, CcError, Checksum, Droplet, Lifecycle, Named, Process, Route};
use model::{Errors, Job, Page, Token, UaaError};

/// Longest wait for one JSON call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest JSON answer read (a Cloud Controller's page of 50 resources is far smaller).
const MAX_JSON: usize = 4 << 20;
/// Most pages of one list followed.
const MAX_PAGES: usize = 50;
/// A token is renewed when it has less than this left.
const TOKEN_MARGIN: Duration = Duration::from_secs(120);
/// Longest wait for an upload job.
const JOB_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest a droplet upload may take, bits and answer (its bits come idle-limited).
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(3600);

/// Where this site's Cloud Controller is and who this node is to it.
#[derive(Clone)]
pub struct CcSettings {
    /// This site (for log lines).
    pub site: String,
    /// The Cloud Controller's base URL.
    pub api: String,
    /// The UAA's base URL.
    pub uaa: String,
    /// The UAA client id.
    pub client_id: String,
    /// Its secret.
    pub client_secret: String,
    /// Extra PEM roots, besides the system's.
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for CcSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CcSettings")
            .field("site", &self.site)
            .field("api", &self.api)
            .field("uaa", &self.uaa)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A droplet's bytes, as the blobstore sends them.
pub struct DropletStream {
    /// Its length, when the blobstore says.
    pub len: Option<u64>,
    /// The bytes.
    pub body: BoxStream<'static, Result<Bytes, CcError>>,
}

impl std::fmt::Debug for DropletStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DropletStream")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// A client of this site's Cloud Controller; cheap to clone.
#[derive(Clone)]
pub struct CcClient {
    inner: Arc<Inner>,
}

struct Inner {
    settings: CcSettings,
    api: String,
    uaa: String,
    /// Redirects are not followed: the download's redirect is followed by hand.
    http: reqwest::Client,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for CcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CcClient")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

fn base(url: &str, what: &str) -> Result<String, CcError> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| CcError::Setup(format!("{what} {url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(CcError::Setup(format!(
            "{what} {url:?}: not an http(s) URL"
        )));
    }
    Ok(url.trim_end_matches('/').to_string())
}

fn tls_config(ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, CcError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(pem) = ca_pem {
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            let cert =
                cert.map_err(|e| CcError::Setup(format!("cloud_controller.ca_file: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| CcError::Setup(format!("cloud_controller.ca_file: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(CcError::Setup(
                "cloud_controller.ca_file holds no certificate".into(),
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CcError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn transport(method: &Method, url: &str, e: &reqwest::Error) -> CcError {
    let mut error = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        error = format!("{error}: {s}");
        source = s.source();
    }
    CcError::Transport {
        method: method.to_string(),
        url: url.to_string(),
        error,
    }
}

/// Read at most [`MAX_JSON`] bytes of `resp`.
async fn read_limited(resp: &mut reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_JSON {
            return Err(format!("answer larger than {MAX_JSON} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(120)]);
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The error of a non-2xx Cloud Controller answer.
fn api_error(method: &Method, path: &str, status: StatusCode, body: &[u8]) -> CcError {
    match serde_json::from_slice::<Errors>(body) {
        Ok(Errors { errors }) => {
            let first = errors.into_iter().next();
            CcError::Api {
                method: method.to_string(),
                path: path.to_string(),
                status: status.as_u16(),
                title: first
                    .as_ref()
                    .map(|e| e.title.clone())
                    .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string()),
                detail: first.map(|e| e.detail).unwrap_or_default(),
            }
        }
        Err(_) => CcError::Api {
            method: method.to_string(),
            path: path.to_string(),
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("").to_string(),
            detail: excerpt(body),
        },
    }
}

fn query(path: &str, pairs: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    format!("{path}?{}", q.finish())
}

impl CcClient {
    /// A client of the Cloud Controller and UAA in `settings`.
    pub fn new(settings: CcSettings) -> Result<CcClient, CcError> {
        let api = base(&settings.api, "cloud_controller.api")?;
        let uaa = base(&settings.uaa, "cloud_controller.uaa")?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config(settings.ca_pem.as_deref())?)
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("grouter/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CcError::Setup(format!("HTTP client: {e}")))?;
        Ok(CcClient {
            inner: Arc::new(Inner {
                settings,
                api,
                uaa,
                http,
                token: tokio::sync::Mutex::new(None),
            }),
        })
    }

    /// A bearer token with at least [`TOKEN_MARGIN`] left; a new one when `renew`.
    async fn token(&self, renew: bool) -> Result<String, CcError> {
        let mut held = self.inner.token.lock().await;
        if !renew
            && let Some((token, until)) = held.as_ref()
            && Instant::now() + TOKEN_MARGIN < *until
        {
            return Ok(token.clone());
        }
        let s = &self.inner.settings;
        let url = format!("{}/oauth/token", self.inner.uaa);
        let method = Method::POST;
        let mut resp = self
            .inner
            .http
            .post(&url)
            .basic_auth(&s.client_id, Some(&s.client_secret))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body("grant_type=client_credentials")
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .map_err(|e| transport(&method, &url, &e))?;
        let status = resp.status();
        let auth_error = |detail: String| CcError::Auth {
            uaa: self.inner.uaa.clone(),
            client_id: s.client_id.clone(),
            status: status.as_u16(),
            detail,
        };
        let body = read_limited(&mut resp).await.map_err(auth_error)?;
        if !status.is_success() {
            let detail = match serde_json::from_slice::<UaaError>(&body) {
                Ok(e) if !e.error_description.is_empty() => e.error_description,
                Ok(e) if !e.error.is_empty() => e.error,
                _ => excerpt(&body),
            };
            return Err(auth_error(detail));
        }
        let token: Token = serde_json::from_slice(&body)
            .map_err(|e| auth_error(format!("the answer is not a token: {e}")))?;
        // A token without a lifetime is used for a minute past the margin, then renewed.
        let life = Duration::from_secs(token.expires_in.unwrap_or(180).min(86_400));
        info!(site = %s.site, client_id = %s.client_id, expires_in_s = life.as_secs(), "UAA token obtained");
        *held = Some((token.access_token.clone(), Instant::now() + life));
        Ok(token.access_token)
    }

    /// One JSON call; a 401 renews the token and tries once more. `None` for a 404 when
    /// `missing_ok`.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        missing_ok: bool,
    ) -> Result<Option<Value>, CcError> {
        let url = if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{path}", self.inner.api)
        };
        let mut renew = false;
        loop {
            let token = self.token(renew).await?;
            let mut req = self
                .inner
                .http
                .request(method.clone(), &url)
                .bearer_auth(&token)
                .header(header::ACCEPT, "application/json")
                .timeout(CALL_TIMEOUT);
            if let Some(body) = body {
                req = req
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(body.to_string());
            }
            let mut resp = req.send().await.map_err(|e| transport(&method, &url, &e))?;
            let status = resp.status();
            let bytes = read_limited(&mut resp)
                .await
                .map_err(|why| CcError::Garbage {
                    method: method.to_string(),
                    path: path.to_string(),
                    status: status.as_u16(),
                    why,
                })?;
            if status == StatusCode::UNAUTHORIZED && !renew {
                debug!(path, "the Cloud Controller refused the token; renewing it");
                renew = true;
                continue;
            }
            if status == StatusCode::NOT_FOUND && missing_ok {
                return Ok(None);
            }
            if !status.is_success() {
                return Err(api_error(&method, path, status, &bytes));
            }
            if bytes.is_empty() {
                return Ok(Some(Value::Null));
            }
            return serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| CcError::Garbage {
                    method: method.to_string(),
                    path: path.to_string(),
                    status: status.as_u16(),
                    why: format!("{e} (it starts {:?})", excerpt(&bytes)),
                });
        }
    }

    fn parse<T: DeserializeOwned>(method: &Method, path: &str, v: Value) -> Result<T, CcError> {
        serde_json::from_value(v).map_err(|e| CcError::Garbage {
            method: method.to_string(),
            path: path.to_string(),
            status: 200,
            why: e.to_string(),
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, CcError> {
        let v = self
            .send(method.clone(), path, body, false)
            .await?
            .unwrap_or(Value::Null);
        Self::parse(&method, path, v)
    }

    async fn get_opt<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, CcError> {
        match self.send(Method::GET, path, None, true).await? {
            None => Ok(None),
            Some(v) => Self::parse(&Method::GET, path, v).map(Some),
        }
    }

    /// Every resource of a list, following `next` on the API's own origin.
    async fn list<T: DeserializeOwned>(&self, path: &str) -> Result<Vec<T>, CcError> {
        let mut all = Vec::new();
        let mut next = Some(path.to_string());
        for _ in 0..MAX_PAGES {
            let Some(at) = next.take() else { break };
            let page: Page<T> = self.call(Method::GET, &at, None).await?;
            all.extend(page.resources);
            next = match page.pagination.and_then(|p| p.next) {
                None => None,
                Some(href) if href.href.starts_with(&format!("{}/", self.inner.api)) => {
                    Some(href.href)
                }
                Some(href) => {
                    return Err(CcError::Garbage {
                        method: "GET".into(),
                        path: path.to_string(),
                        status: 200,
                        why: format!("its next page {:?} is not on {}", href.href, self.inner.api),
                    });
                }
            };
        }
        Ok(all)
    }

    async fn first<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, CcError> {
        Ok(self.list(path).await?.into_iter().next())
    }

    /// The organisation named `name`.
    pub async fn org(&self, name: &str) -> Result<Option<Named>, CcError> {
        self.first(&query("/v3/organizations", &[("names", name)]))
            .await
    }

    /// The space named `name` in the organisation `org`.
    pub async fn space(&self, org: &str, name: &str) -> Result<Option<Named>, CcError> {
        self.first(&query(
            "/v3/spaces",
            &[("names", name), ("organization_guids", org)],
        ))
        .await
    }

    /// The app named `name` in the space `space`.
    pub async fn app(&self, space: &str, name: &str) -> Result<Option<App>, CcError> {
        self.first(&query(
            "/v3/apps",
            &[("names", name), ("space_guids", space)],
        ))
        .await
    }

    /// Create the app `name` in `space` (stopped, buildpack lifecycle, the default stack).
    pub async fn create_app(&self, space: &str, name: &str) -> Result<App, CcError> {
        let body = json!({"name": name, "relationships": {"space": {"data": {"guid": space}}}});
        self.call(Method::POST, "/v3/apps", Some(&body)).await
    }

    /// The app's current droplet, if it has one.
    pub async fn current_droplet(&self, app: &str) -> Result<Option<Droplet>, CcError> {
        self.get_opt(&format!("/v3/apps/{app}/droplets/current"))
            .await
    }

    /// Every droplet of the app.
    pub async fn app_droplets(&self, app: &str) -> Result<Vec<Droplet>, CcError> {
        self.list(&format!("/v3/apps/{app}/droplets")).await
    }

    /// The droplet `guid`.
    pub async fn droplet(&self, guid: &str) -> Result<Droplet, CcError> {
        self.call(Method::GET, &format!("/v3/droplets/{guid}"), None)
            .await
    }

    /// A new droplet of the app, awaiting its bits.
    pub async fn create_droplet(
        &self,
        app: &str,
        process_types: &std::collections::BTreeMap<String, String>,
    ) -> Result<Droplet, CcError> {
        let body = json!({
            "relationships": {"app": {"data": {"guid": app}}},
            "process_types": process_types,
        });
        self.call(Method::POST, "/v3/droplets", Some(&body)).await
    }

    /// Make `droplet` the app's current droplet.
    pub async fn set_current_droplet(&self, app: &str, droplet: &str) -> Result<(), CcError> {
        let body = json!({"data": {"guid": droplet}});
        self.call::<Value>(
            Method::PATCH,
            &format!("/v3/apps/{app}/relationships/current_droplet"),
            Some(&body),
        )
        .await
        .map(drop)
    }

    /// The app's web process.
    pub async fn web_process(&self, app: &str) -> Result<Process, CcError> {
        self.call(Method::GET, &format!("/v3/apps/{app}/processes/web"), None)
            .await
    }

    /// Scale the app's web process to `instances`.
    pub async fn scale_web(&self, app: &str, instances: u32) -> Result<(), CcError> {
        let body = json!({"instances": instances});
        self.call::<Value>(
            Method::POST,
            &format!("/v3/apps/{app}/processes/web/actions/scale"),
            Some(&body),
        )
        .await
        .map(drop)
    }

    /// Start the app.
    pub async fn start(&self, app: &str) -> Result<(), CcError> {
        self.call::<Value>(Method::POST, &format!("/v3/apps/{app}/actions/start"), None)
            .await
            .map(drop)
    }

    /// The routes mapped to the app.
    pub async fn app_routes(&self, app: &str) -> Result<Vec<Route>, CcError> {
        self.list(&format!("/v3/apps/{app}/routes")).await
    }

    /// The domain named `name`.
    pub async fn domain(&self, name: &str) -> Result<Option<Named>, CcError> {
        self.first(&query("/v3/domains", &[("names", name)])).await
    }

    /// The route `host`/`path` on the domain `domain`.
    pub async fn route(
        &self,
        domain: &str,
        host: &str,
        path: &str,
    ) -> Result<Option<Route>, CcError> {
        let routes: Vec<Route> = self
            .list(&query(
                "/v3/routes",
                &[("domain_guids", domain), ("hosts", host), ("paths", path)],
            ))
            .await?;
        // Filters are matched again: an empty `hosts=` or `paths=` filter is not understood
        // alike by every Cloud Controller version.
        Ok(routes
            .into_iter()
            .find(|r| r.host == host && r.path == path))
    }

    /// Create the route `host`/`path` on `domain` in `space`.
    pub async fn create_route(
        &self,
        space: &str,
        domain: &str,
        host: &str,
        path: &str,
    ) -> Result<Route, CcError> {
        let mut body = json!({
            "host": host,
            "relationships": {"space": {"data": {"guid": space}}, "domain": {"data": {"guid": domain}}},
        });
        if !path.is_empty() {
            body["path"] = json!(path);
        }
        self.call(Method::POST, "/v3/routes", Some(&body)).await
    }

    /// Send the route's traffic to the app (too).
    pub async fn add_destination(&self, route: &str, app: &str) -> Result<(), CcError> {
        let body = json!({"destinations": [{"app": {"guid": app}}]});
        self.call::<Value>(
            Method::POST,
            &format!("/v3/routes/{route}/destinations"),
            Some(&body),
        )
        .await
        .map(drop)
    }

    /// The droplet's bits: the Cloud Controller's redirect, followed to the blobstore
    /// without the OAuth header.
    pub async fn download_droplet(&self, guid: &str) -> Result<DropletStream, CcError> {
        let path = format!("/v3/droplets/{guid}/download");
        let url = format!("{}{path}", self.inner.api);
        let mut renew = false;
        let mut resp = loop {
            let token = self.token(renew).await?;
            let resp = self
                .inner
                .http
                .get(&url)
                .bearer_auth(&token)
                .timeout(CALL_TIMEOUT)
                .send()
                .await
                .map_err(|e| transport(&Method::GET, &url, &e))?;
            if resp.status() == StatusCode::UNAUTHORIZED && !renew {
                renew = true;
                continue;
            }
            break resp;
        };
        let status = resp.status();
        if status.is_redirection() {
            let location = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| CcError::Garbage {
                    method: "GET".into(),
                    path: path.clone(),
                    status: status.as_u16(),
                    why: "a redirect without a Location".into(),
                })?;
            let target = resp.url().join(location).map_err(|e| CcError::Garbage {
                method: "GET".into(),
                path: path.clone(),
                status: status.as_u16(),
                why: format!("its Location {location:?}: {e}"),
            })?;
            let target_text = target.to_string();
            // No Authorization header: the blobstore's URL is signed. Its answer's head
            // must come within the call limit; the bits have none overall (each chunk is
            // idle-limited by the caller).
            let sent = tokio::time::timeout(CALL_TIMEOUT, self.inner.http.get(target).send());
            resp = sent
                .await
                .map_err(|_| CcError::Transport {
                    method: "GET".into(),
                    url: target_text.clone(),
                    error: format!("no answer within {} s", CALL_TIMEOUT.as_secs()),
                })?
                .map_err(|e| transport(&Method::GET, &target_text, &e))?;
            if !resp.status().is_success() {
                let status = resp.status().as_u16();
                let body = read_limited(&mut resp).await.unwrap_or_default();
                return Err(CcError::Blobstore {
                    droplet: guid.to_string(),
                    status,
                    detail: excerpt(&body),
                });
            }
        } else if !status.is_success() {
            let body = read_limited(&mut resp).await.unwrap_or_default();
            return Err(api_error(&Method::GET, &path, status, &body));
        }
        let len = resp.content_length();
        let url = resp.url().to_string();
        let body = resp
            .bytes_stream()
            .map_err(move |e| transport(&Method::GET, &url, &e))
            .boxed();
        Ok(DropletStream { len, body })
    }

    /// Upload `body` (`len` bytes when known) as the bits of `droplet` (awaiting its
    /// upload), then wait for the Cloud Controller's job; the droplet as it is after.
    pub async fn upload_droplet<S>(
        &self,
        droplet: &str,
        len: Option<u64>,
        body: S,
    ) -> Result<Droplet, CcError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let path = format!("/v3/droplets/{droplet}/upload");
        let url = format!("{}{path}", self.inner.api);
        // The body can be sent once: a token that would expire during it is renewed first.
        let token = self.token(false).await?;
        let stream = reqwest::Body::wrap_stream(body);
        let part = match len {
            Some(len) => reqwest::multipart::Part::stream_with_length(stream, len),
            None => reqwest::multipart::Part::stream(stream),
        }
        .file_name("droplet.tgz")
        .mime_str("application/gzip")
        .map_err(|e| CcError::Setup(e.to_string()))?;
        let form = reqwest::multipart::Form::new().part("bits", part);
        let mut resp = self
            .inner
            .http
            .post(&url)
            .bearer_auth(&token)
            .header(header::ACCEPT, "application/json")
            .multipart(form)
            .timeout(UPLOAD_TIMEOUT)
            .send()
            .await
            .map_err(|e| transport(&Method::POST, &url, &e))?;
        let status = resp.status();
        let location = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = read_limited(&mut resp).await.unwrap_or_default();
        if !status.is_success() {
            return Err(api_error(&Method::POST, &path, status, &bytes));
        }
        if let Some(job) = location {
            self.await_job(&job).await?;
        }
        self.droplet(droplet).await
    }

    /// Wait for the job at `url` (absolute or a path) to complete.
    async fn await_job(&self, url: &str) -> Result<(), CcError> {
        let deadline = Instant::now() + JOB_TIMEOUT;
        let mut pause = Duration::from_millis(100);
        loop {
            let job: Job = self.call(Method::GET, url, None).await?;
            match job.state.as_str() {
                "COMPLETE" => return Ok(()),
                "FAILED" => {
                    let detail = job
                        .errors
                        .iter()
                        .map(|e| format!("{}: {}", e.title, e.detail))
                        .collect::<Vec<_>>()
                        .join("; ");
                    return Err(CcError::Job {
                        job: job.guid,
                        operation: job.operation,
                        state: "FAILED".into(),
                        detail,
                    });
                }
                _ if Instant::now() >= deadline => {
                    return Err(CcError::Job {
                        job: job.guid,
                        operation: job.operation,
                        state: format!("still {} after {} s", job.state, JOB_TIMEOUT.as_secs()),
                        detail: String::new(),
                    });
                }
                _ => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_read_as_the_cloud_controllers_errors_or_their_start() {
        let e = api_error(
            &Method::GET,
            "/v3/apps/x",
            StatusCode::NOT_FOUND,
            br#"{"errors":[{"code":10010,"title":"CF-ResourceNotFound","detail":"App not found"}]}"#,
        );
        assert_eq!(
            e.to_string(),
            "GET /v3/apps/x: HTTP 404 CF-ResourceNotFound: App not found"
        );
        let e = api_error(
            &Method::POST,
            "/v3/droplets/d/upload",
            StatusCode::INTERNAL_SERVER_ERROR,
            b"<html>\r\nboom",
        );
        let text = e.to_string();
        assert!(
            text.contains("500") && text.contains("<html>  boom"),
            "{text}"
        );
    }

    #[test]
    fn list_filters_are_form_encoded() {
        assert_eq!(
            query("/v3/apps", &[("names", "a b,c&d"), ("space_guids", "g")]),
            "/v3/apps?names=a+b%2Cc%26d&space_guids=g"
        );
    }

    #[test]
    fn settings_never_print_the_secret() {
        let s = CcSettings {
            site: "lon".into(),
            api: "https://api".into(),
            uaa: "https://uaa".into(),
            client_id: "grouter-lon".into(),
            client_secret: "hunter2".into(),
            ca_pem: None,
        };
        assert!(!format!("{s:?}").contains("hunter2"));
        let client = CcClient::new(s).unwrap();
        assert!(!format!("{client:?}").contains("hunter2"));
    }

    #[test]
    fn a_bad_base_url_or_ca_file_is_a_setup_error() {
        let mut s = CcSettings {
            site: "lon".into(),
            api: "ftp://api".into(),
            uaa: "https://uaa".into(),
            client_id: "c".into(),
            client_secret: "s".into(),
            ca_pem: None,
        };
        assert!(matches!(CcClient::new(s.clone()), Err(CcError::Setup(_))));
        s.api = "https://api".into();
        s.ca_pem = Some(b"not a certificate".to_vec());
        let e = CcClient::new(s).unwrap_err().to_string();
        assert!(e.contains("ca_file"), "{e}");
    }
}
