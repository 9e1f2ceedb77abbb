//! `grouter-cc-standin`: a stand-in for one Cloud Foundry foundation's Cloud Controller (the
//! CC v3 API), its UAA token endpoint and its blobstore, on one listener, following the
//! published API for exactly the calls GRouter's placement makes (creating an app in another
//! foundation and copying its droplet there; the subset both sides follow is written down in
//! the project's `cc-api.md` notes). The `grouter-cc-standin` binary runs one per site for the integration tests; the
//! crate's own tests run it in process ([`CcStandIn`]).
//!
//! - `POST /oauth/token`: UAA client credentials (HTTP Basic or form fields).
//! - `/v3/...`: the CC calls (every one needs a bearer token from `/oauth/token`).
//! - `GET /_blobstore/droplets/:guid?signature=S`: where a droplet download redirects to
//!   (refuses an `Authorization` header, as S3 signed URLs do).
//! - `/_standin/...`: hooks for tests: `tokens`, `requests`, `state`, `faults`,
//!   `expire_tokens`.
//!
//! It owns nothing of GRouter's and depends on no GRouter crate: GRouter is tested against
//! it without linking it. Must never hold a droplet whole in memory (uploads and downloads
//! stream through files in the blob dir), panic on anything a client sends, or put anything
//! that changes by itself into `/_standin/state`.

#![forbid(unsafe_code)]

mod blobstore;
mod cc;
mod error;
mod faults;
mod hooks;
mod seed;
mod server;
mod store;
mod time;
mod uaa;

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;

pub use error::Error;
pub use seed::{Seed, seeded_bytes};

/// How the stand-in is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// The site it stands in for (in `/_standin/state`).
    pub site: String,
    /// Where to listen (`127.0.0.1:0` for a port of the system's choosing).
    pub listen: SocketAddr,
    /// The one UAA client it knows.
    pub client_id: String,
    /// That client's secret.
    pub client_secret: String,
    /// What the foundation holds at startup.
    pub seed: Seed,
    /// Where droplet bits are kept (created if missing).
    pub blob_dir: PathBuf,
    /// How long an upload job stays PROCESSING.
    pub job_delay: Duration,
}

/// The most request records `/_standin/requests` keeps.
const MAX_REQUEST_RECORDS: usize = 10_000;

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) site: String,
    pub(crate) client_id: String,
    pub(crate) client_secret: String,
    pub(crate) blob_dir: PathBuf,
    pub(crate) job_delay: Duration,
    pub(crate) addr: SocketAddr,
    started: Instant,
    pub(crate) store: Mutex<store::Store>,
    pub(crate) faults: Mutex<faults::Faults>,
    /// Bearer tokens that are currently valid.
    pub(crate) tokens: Mutex<HashSet<String>>,
    /// Every token request, in order.
    pub(crate) token_log: Mutex<Vec<Value>>,
    /// The last [`MAX_REQUEST_RECORDS`] `/v3` and `/_blobstore` requests.
    pub(crate) requests: Mutex<VecDeque<Value>>,
    /// Signs blobstore URLs.
    pub(crate) signing_key: ring::hmac::Key,
}

impl Shared {
    /// Milliseconds since the stand-in started.
    pub(crate) fn at_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn record_request(&self, method: &str, path: &str, query: Option<&str>, auth: bool) {
        let record = serde_json::json!({
            "method": method, "path": path, "query": query,
            "authorization": auth, "at_ms": self.at_ms(),
        });
        let mut requests = self.requests.lock();
        if requests.len() >= MAX_REQUEST_RECORDS {
            requests.pop_front();
        }
        requests.push_back(record);
    }
}

/// A running stand-in; dropping it stops the listener.
#[derive(Debug)]
pub struct CcStandIn {
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl CcStandIn {
    /// Seed the foundation (writing seeded droplets to the blob dir), bind and serve.
    pub async fn start(config: Config) -> Result<CcStandIn, Error> {
        let blob_dir = config.blob_dir.clone();
        std::fs::create_dir_all(&blob_dir).map_err(|source| Error::BlobDir {
            path: blob_dir.clone(),
            source,
        })?;
        let seed = config.seed.clone();
        let dir = blob_dir.clone();
        // Seeded droplets may be large: generate and hash them off the runtime's threads.
        let store = tokio::task::spawn_blocking(move || {
            let mut store = store::Store::default();
            seed.apply(&mut store, &dir).map(|()| store)
        })
        .await
        .map_err(|e| Error::BlobDir {
            path: blob_dir.clone(),
            source: std::io::Error::other(e.to_string()),
        })??;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        let rng = ring::rand::SystemRandom::new();
        let signing_key =
            ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng).map_err(|_| Error::Bind {
                addr,
                source: std::io::Error::other("no randomness for the blobstore signing key"),
            })?;
        let shared = Arc::new(Shared {
            site: config.site,
            client_id: config.client_id,
            client_secret: config.client_secret,
            blob_dir,
            job_delay: config.job_delay,
            addr,
            started: Instant::now(),
            store: Mutex::new(store),
            faults: Mutex::new(faults::Faults::default()),
            tokens: Mutex::new(HashSet::new()),
            token_log: Mutex::new(Vec::new()),
            requests: Mutex::new(VecDeque::new()),
            signing_key,
        });
        let app = server::router(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(CcStandIn { shared, server })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://ADDR`: the CC API, UAA and blobstore alike.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// The site it stands in for.
    pub fn site(&self) -> &str {
        &self.shared.site
    }
}

impl Drop for CcStandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}
