//! Droplets site to site, streamed between the two sites' nodes over the mesh.
//!
//! A site that needs an app's droplet asks a node of a site that has it, on the mesh port
//! with ALPN `grouter-droplet/1` (mutual TLS, the dialled node's identity checked), for
//! `GET /v1/droplets/{org}/{space}/{app}?sha256=…`. That node downloads the current droplet
//! from its own Cloud Controller (following the redirect to its blobstore) and streams it
//! back; the asking node streams it on into its own Cloud Controller's upload. Neither ever
//! holds more than a few buffers of it, nor the other site's credentials.
//!
//! Owns: both ends of that exchange, and who may ask: only a node of another site that
//! the placement (as this node evaluates it) has chosen for that app, at most
//! [`MAX_STREAMS`] at once.
//!
//! Must never: serve a droplet to a site the placement did not choose, to its own site, or
//! for an app without a placement; buffer a droplet; let a stalled stream hold a slot
//! forever (every chunk must arrive within [`IDLE`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::{AppKey, Inputs, decode_segment, encode_segment, evaluate};
use crate::cc::CcClient;
use crate::control::Control;
use crate::mesh::identity::DROPLET_ALPN;
use crate::mesh::{Dialer, Mesh, PeerHttp};
use crate::table::Table;

/// The path prefix droplets are asked for on.
pub const PATH: &str = "/v1/droplets/";
/// The header that carries the droplet's SHA-256.
pub const SHA_HEADER: &str = "x-grouter-droplet-sha256";
/// Droplets this node streams out at once; one more is answered 503.
pub const MAX_STREAMS: usize = 2;
/// Longest wait for the next chunk of a droplet, either way.
pub const IDLE: Duration = Duration::from_secs(60);
/// Longest wait for the answer's head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(60);

/// A droplet's bytes as they arrive.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, io::Error>> + Send>>;

type Body = UnsyncBoxBody<Bytes, io::Error>;

/// The serving end: this site's droplets, for the sites chosen to run them.
#[derive(Debug)]
pub struct DropletServer {
    control: Arc<Control>,
    table: Arc<Table>,
    cc: CcClient,
    site: String,
    permits: Arc<Semaphore>,
}

impl DropletServer {
    /// Serve this site's droplets from `cc`.
    pub fn new(control: Arc<Control>, table: Arc<Table>, cc: CcClient, site: String) -> Self {
        DropletServer {
            control,
            table,
            cc,
            site,
            permits: Arc::new(Semaphore::new(MAX_STREAMS)),
        }
    }

    /// Serve the connections the mesh hands over until `shutdown`.
    pub async fn serve(
        self: Arc<Self>,
        mut conns: mpsc::Receiver<PeerHttp>,
        shutdown: CancellationToken,
    ) {
        let tracker = TaskTracker::new();
        loop {
            let conn = tokio::select! {
                () = shutdown.cancelled() => break,
                c = conns.recv() => match c {
                    Some(c) => c,
                    None => break,
                },
            };
            let me = self.clone();
            let stop = shutdown.child_token();
            tracker.spawn(async move {
                let _slot = conn.slot;
                let peer = conn.peer.clone();
                let service = hyper::service::service_fn(move |req| {
                    let (me, peer) = (me.clone(), peer.clone());
                    async move { Ok::<_, std::convert::Infallible>(me.handle(&peer, req).await) }
                });
                let http = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(conn.stream), service);
                tokio::pin!(http);
                tokio::select! {
                    r = http.as_mut() => if let Err(e) = r { debug!(error = %e, "droplet connection ended") },
                    () = stop.cancelled() => {},
                    () = conn.cancel.cancelled() => {},
                }
                conn.cancel.cancel();
            });
        }
        tracker.close();
        tracker.wait().await;
    }

    async fn handle(
        &self,
        peer: &crate::mesh::identity::NodeIdentity,
        req: Request<Incoming>,
    ) -> Response<Body> {
        if req.method() != Method::GET {
            return refuse(StatusCode::METHOD_NOT_ALLOWED, "only GET");
        }
        let Some(app) = req.uri().path().strip_prefix(PATH).and_then(|rest| {
            let parts: Option<Vec<String>> = rest.split('/').map(decode_segment).collect();
            AppKey::parse(&parts?.join("/"))
        }) else {
            return refuse(StatusCode::NOT_FOUND, "no such droplet path");
        };
        let want: Option<String> = req.uri().query().and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "sha256")
                .map(|(_, v)| v.into_owned())
        });
        if peer.site == self.site {
            return refuse(
                StatusCode::FORBIDDEN,
                "a node of this site asks its own Cloud Controller",
            );
        }
        let inputs = Inputs::read(&self.control, &self.table);
        let Some(placement) = evaluate(&self.control, &inputs, &app) else {
            return refuse(StatusCode::NOT_FOUND, &format!("no placement for {app}"));
        };
        if !placement.choice.has(&peer.site) {
            warn!(%app, peer = %peer, "droplet refused: the asking site is not chosen for the app");
            return refuse(
                StatusCode::FORBIDDEN,
                &format!("site {} is not chosen for {app}", peer.site),
            );
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            let mut resp = refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy streaming other droplets",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
            return resp;
        };
        let droplet = match self.current_droplet(&app).await {
            Ok(d) => d,
            Err((status, why)) => return refuse(status, &why),
        };
        let sha = droplet.sha256().unwrap_or_default().to_string();
        if want.as_deref().is_some_and(|w| w != sha) {
            return refuse(
                StatusCode::CONFLICT,
                &format!("the current droplet of {app} at {} has changed", self.site),
            );
        }
        let download = match self.cc.download_droplet(&droplet.guid).await {
            Ok(d) => d,
            Err(e) => return refuse(StatusCode::BAD_GATEWAY, &e.to_string()),
        };
        info!(%app, peer = %peer, droplet = %droplet.guid, bytes = ?download.len, "streaming a droplet to another site");
        let len = download.len;
        let body = idle_limited(download.body.map(|r| r.map_err(io::Error::other)).boxed());
        // The slot is held until the stream ends (or is dropped with the connection).
        let body = body.map(move |chunk| {
            let _held = &permit;
            chunk.map(Frame::data)
        });
        let mut resp = Response::new(BodyExt::boxed_unsync(StreamBody::new(body)));
        if let Some(len) = len {
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
        }
        if let Ok(v) = header::HeaderValue::from_str(&sha) {
            resp.headers_mut().insert(SHA_HEADER, v);
        }
        resp
    }

    async fn current_droplet(
        &self,
        app: &AppKey,
    ) -> Result<crate::cc::Droplet, (StatusCode, String)> {
        let site = &self.site;
        let fail = |e: crate::cc::CcError| (StatusCode::BAD_GATEWAY, e.to_string());
        let missing = |what: String| {
            (
                StatusCode::NOT_FOUND,
                format!("{what} does not exist at {site}"),
            )
        };
        let org = self
            .cc
            .org(&app.org)
            .await
            .map_err(fail)?
            .ok_or_else(|| missing(format!("org {:?}", app.org)))?;
        let space = self
            .cc
            .space(&org.guid, &app.space)
            .await
            .map_err(fail)?
            .ok_or_else(|| missing(format!("space {:?}", app.space)))?;
        let found = self
            .cc
            .app(&space.guid, &app.app)
            .await
            .map_err(fail)?
            .ok_or_else(|| missing(format!("app {:?}", app.app)))?;
        let droplet = self
            .cc
            .current_droplet(&found.guid)
            .await
            .map_err(fail)?
            .ok_or_else(|| missing(format!("a current droplet of {:?}", app.app)))?;
        if !droplet.is_buildpack() {
            return Err((
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "not copyable: {app} at {site} is a docker app (only buildpack droplets can be downloaded)"
                ),
            ));
        }
        Ok(droplet)
    }
}

fn refuse(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut resp = Response::new(BodyExt::boxed_unsync(
        Full::new(Bytes::from(body)).map_err(|never| match never {}),
    ));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// `stream`, ended with an error when a chunk takes longer than [`IDLE`].
pub fn idle_limited(stream: ByteStream) -> ByteStream {
    futures::stream::unfold(Some(stream), |state| async move {
        let mut stream = state?;
        match tokio::time::timeout(IDLE, stream.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(stream))),
            Ok(Some(Err(e))) => Some((Err(e), None)),
            Ok(None) => None,
            Err(_) => Some((
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no droplet bytes for {} s", IDLE.as_secs()),
                )),
                None,
            )),
        }
    })
    .boxed()
}

/// A droplet on its way from another site.
pub struct Fetched {
    /// The node streaming it.
    pub node: String,
    /// Its length, when the other side said.
    pub len: Option<u64>,
    /// Its bytes.
    pub body: ByteStream,
}

impl std::fmt::Debug for Fetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetched")
            .field("node", &self.node)
            .field("len", &self.len)
            .finish()
    }
}

/// The asking end: fetches droplets from other sites' nodes.
#[derive(Debug)]
pub struct DropletFetcher {
    mesh: Arc<Mesh>,
    dialer: Arc<dyn Dialer>,
    tls: Arc<rustls::ClientConfig>,
}

impl DropletFetcher {
    /// Fetch through `mesh`, dialling with `dialer`.
    pub fn new(mesh: Arc<Mesh>, dialer: Arc<dyn Dialer>) -> DropletFetcher {
        let tls = mesh.tls().client_with_alpn(DROPLET_ALPN);
        DropletFetcher { mesh, dialer, tls }
    }

    /// Stream the current droplet of `app` (whose SHA-256 must be `sha256`) from a node of
    /// `site`: each live node in turn until one answers. The error names every node tried.
    pub async fn fetch(&self, site: &str, app: &AppKey, sha256: &str) -> Result<Fetched, String> {
        let nodes = self.mesh.site_nodes(site);
        if nodes.is_empty() {
            return Err(format!("no live node of {site} to copy the droplet from"));
        }
        let path = format!(
            "{PATH}{}/{}/{}?sha256={}",
            encode_segment(&app.org),
            encode_segment(&app.space),
            encode_segment(&app.app),
            encode_segment(sha256)
        );
        let mut failures = Vec::new();
        for (node, addr) in nodes {
            match self.try_node(&node, site, &addr, &path).await {
                Ok((len, body)) => return Ok(Fetched { node, len, body }),
                Err(e) => failures.push(format!("{node}: {e}")),
            }
        }
        Err(failures.join("; "))
    }

    async fn try_node(
        &self,
        node: &str,
        site: &str,
        addr: &str,
        path: &str,
    ) -> Result<(Option<u64>, ByteStream), String> {
        let tls = self
            .mesh
            .connect_node(
                self.dialer.as_ref(),
                node,
                site,
                addr,
                self.tls.clone(),
                None,
            )
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "droplet connection ended");
            }
        });
        let req = Request::get(path)
            .header(header::HOST, crate::mesh::identity::MESH_SERVER_NAME)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(HEAD_TIMEOUT, sender.send_request(req))
            .await
            .map_err(|_| "no answer within 60 s".to_string())?
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        if status != StatusCode::OK {
            let body = http_body_util::Limited::new(resp.into_body(), 4096)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let why = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| "no reason given".into());
            return Err(format!("{status}: {why}"));
        }
        let len = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body =
            http_body_util::BodyStream::new(resp.into_body()).filter_map(|frame| async move {
                match frame {
                    Ok(f) => f.into_data().ok().map(Ok),
                    Err(e) => Some(Err(io::Error::other(e))),
                }
            });
        Ok((len, idle_limited(body.boxed())))
    }
}
