//! Per-application server certificates for the HTTPS listener.
//!
//! Owns:
//! - the **certificate store** ([`CertStore`]): the default pair (`tls.default_cert`,
//!   `tls.default_key`) and every pair in `tls.cert_dir` (not recursive): `<host>.pem`
//!   (chain, leaf first) with `<host>.key` (PKCS#8, PKCS#1 or SEC1), wildcards as
//!   `_wildcard.<domain>.pem`/`.key` meaning `*.<domain>`; host names are lower-cased;
//! - **SNI resolution** (the store is the listener's [`ResolvesServerCert`]): exact name
//!   first, then the wildcard one level up (`*.b.c` serves `a.b.c`, never `x.a.b.c`), else the
//!   default certificate (also when the client sent no SNI);
//! - **hot reload**: [`CertStore::watch`] polls the files and [`CertStore::reload`] swaps in a
//!   new map, so handshakes never wait on the file system;
//! - **dynamic certificates**, from the control plane (uploads, ACME; the caller replicates
//!   and persists them): [`CertStore::set_dynamic`] checks a PEM pair ([`upload`]) and serves
//!   it, [`CertStore::remove_dynamic`] stops. For one host a `cert_dir` file beats both; of
//!   an upload and an ACME certificate the later `not_after` wins (the upload on a tie). File
//!   reloads never touch them, nor they the files;
//! - what is served, as metadata only ([`CertStore::list`], [`CertStore::get`]);
//! - the HTTPS [`ServerConfig`] ([`CertStore::server_config`]), asking clients for a
//!   certificate when `tls.client_cert` says so ([`ClientCerts`]: rustls's webpki verifier
//!   over the CA certificates of `tls.client_ca`).
//!
//! Must never:
//! - log, print or put into an error message any key material (reasons name files and say
//!   what is wrong with them, nothing more);
//! - take the node down because of one bad file: a bad pair is logged with the file name and
//!   skipped, and a pair that was serving keeps serving until its files are removed or fixed.
//!   Only the default pair must be good, and only at [`CertStore::load`].
//!
//! Lookups are the hot path of every handshake: the file maps sit behind one
//! `RwLock<Arc<..>>` that is held only to clone the `Arc`; a reload builds new maps off to
//! the side and replaces the `Arc`. The dynamic maps (possibly tens of thousands of names)
//! are changed in place, one name per change, under their own `RwLock`, whose write side is
//! held only for the map operation (parsing and key loading happen before it is taken).

mod challenge;
mod upload;

pub use challenge::{ACME_TLS_ALPN, ChallengeError, Challenges, MAX_CHALLENGES};
pub use upload::{
    CertMeta, MAX_CHAIN, MAX_PEM_BYTES, UploadError, UploadField, rfc3339, validate_upload,
};

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, ServerConfig};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use x509_parser::certificate::X509Certificate;
use x509_parser::error::X509Error;
use x509_parser::extensions::GeneralName;

/// Extension of a certificate chain file in `cert_dir`.
const CERT_EXT: &str = "pem";
/// Extension of a private key file in `cert_dir`.
const KEY_EXT: &str = "key";
/// File-name prefix that stands for `*.` (a `*` in file names is awkward in shells).
const WILDCARD_PREFIX: &str = "_wildcard.";
/// ALPN protocols of the HTTPS listener, in order of preference.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// Server-side session cache for clients that resume by session id (TLS 1.2 without
/// tickets); about 1 MiB at most.
const SESSION_CACHE_ENTRIES: usize = 4096;
/// The shortest poll interval `watch` accepts (tokio's interval panics on zero).
const MIN_WATCH_INTERVAL: Duration = Duration::from_millis(10);
/// How many of a certificate's DNS names a "not valid for" reason lists.
const REASON_MAX_NAMES: usize = 5;
/// Suffix of a skip reason when the name keeps its previously loaded certificate.
const KEPT: &str = "; still serving the previously loaded certificate";

/// What can go wrong loading certificates or building the server configuration. Messages
/// are lower-case, name the file at fault and never carry key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file or directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file or directory at fault.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A file was read but is not what it should be (bad PEM, no certificate, no key, an
    /// unusable key or certificate, a missing partner file).
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The private key is not the key of the certificate.
    #[error("{}: private key does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The certificate does not cover the host name its file is named after.
    #[error("{}: certificate is not valid for {name} ({names})", path.display())]
    NameMismatch {
        /// The certificate file.
        path: PathBuf,
        /// The name the file stands for (`shop.example.com` or `*.example.com`).
        name: String,
        /// The certificate's DNS names, for the operator.
        names: String,
    },
    /// rustls refused to build the server configuration.
    #[error("cannot build the tls server configuration: {0}")]
    Config(#[source] rustls::Error),
}

impl TlsError {
    /// The file at fault and the reason without the file name, as in [`ReloadReport::skipped`].
    fn file_and_reason(&self) -> (PathBuf, String) {
        match self {
            TlsError::Read { path, source } => (path.clone(), format!("cannot read: {source}")),
            TlsError::Invalid { path, reason } => (path.clone(), reason.clone()),
            TlsError::KeyMismatch { cert, key } => (
                key.clone(),
                format!(
                    "private key does not match the certificate in {}",
                    cert.display()
                ),
            ),
            TlsError::NameMismatch { path, name, names } => (
                path.clone(),
                format!("certificate is not valid for {name} ({names})"),
            ),
            TlsError::Config(e) => (PathBuf::new(), e.to_string()),
        }
    }
}

/// What a [`CertStore::reload`] did. Names are as in [`CertStore::names`], sorted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Names served now that were not before.
    pub added: Vec<String>,
    /// Names no longer served (their requests fall back to a wildcard or the default).
    pub removed: Vec<String>,
    /// Names whose certificate chain changed.
    pub updated: Vec<String>,
    /// Files that were not loaded, with the reason (never key material). A name that was
    /// served before keeps its previous certificate; the reason says so.
    pub skipped: Vec<(PathBuf, String)>,
}

impl ReloadReport {
    /// Whether the served set changed.
    fn changed(&self) -> bool {
        !(self.added.is_empty() && self.removed.is_empty() && self.updated.is_empty())
    }
}

/// The host name a file pair stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Host {
    /// `shop.example.com`.
    Exact(String),
    /// `*.example.com`, holding `example.com`.
    Wildcard(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Exact(name) => f.write_str(name),
            Host::Wildcard(domain) => write!(f, "*.{domain}"),
        }
    }
}

impl Host {
    /// What the maps key it by: the name, or the domain of a wildcard.
    fn key(&self) -> &str {
        match self {
            Host::Exact(name) | Host::Wildcard(name) => name,
        }
    }

    /// The host a file stem names: lower-cased, `_wildcard.` for `*.`.
    fn from_stem(stem: &str) -> Result<Host, String> {
        let lower = stem.to_ascii_lowercase();
        let host = match lower.strip_prefix(WILDCARD_PREFIX) {
            Some(domain) => Host::Wildcard(domain.to_string()),
            None => Host::Exact(lower.clone()),
        };
        let name = match &host {
            Host::Exact(name) | Host::Wildcard(name) => name,
        };
        if name.contains('*') {
            return Err(format!(
                "file name is not a host name (write wildcards as {WILDCARD_PREFIX}<domain>)"
            ));
        }
        if !is_dns_name(name) {
            return Err("file name is not a host name".to_string());
        }
        Ok(host)
    }

    /// Whether a certificate DNS name (`san`) covers this host, as a TLS client checks it:
    /// equal, or `*.<parent>` covering an exact name one level below `<parent>`.
    fn covered_by(&self, san: &str) -> bool {
        let san = san.strip_suffix('.').unwrap_or(san);
        match self {
            Host::Exact(name) => {
                san.eq_ignore_ascii_case(name)
                    || san.strip_prefix("*.").is_some_and(|domain| {
                        name.split_once('.').is_some_and(|(label, parent)| {
                            !label.is_empty() && parent.eq_ignore_ascii_case(domain)
                        })
                    })
            }
            Host::Wildcard(domain) => san
                .strip_prefix("*.")
                .is_some_and(|d| d.eq_ignore_ascii_case(domain)),
        }
    }
}

/// Labels of letters, digits, `-` and `_` (seen in platform host names), 1..=63 long,
/// 253 at most in all.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Where a dynamic certificate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// `PUT /v1/certs/{host}`.
    Upload,
    /// Issued by the ACME client.
    Acme,
}

/// Where a served certificate comes from, as `GET /v1/certs` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertOrigin {
    /// A pair in `tls.cert_dir`.
    File,
    /// An upload.
    Upload,
    /// ACME.
    Acme,
}

impl CertOrigin {
    /// `"file"`, `"upload"` or `"acme"`.
    pub fn as_str(self) -> &'static str {
        match self {
            CertOrigin::File => "file",
            CertOrigin::Upload => "upload",
            CertOrigin::Acme => "acme",
        }
    }
}

impl From<Source> for CertOrigin {
    fn from(source: Source) -> CertOrigin {
        match source {
            Source::Upload => CertOrigin::Upload,
            Source::Acme => CertOrigin::Acme,
        }
    }
}

/// A served name's certificate, as [`CertStore::list`] shows it: metadata only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertListing {
    /// Host, names, expiry, fingerprint.
    pub meta: CertMeta,
    /// Where it comes from (of several for the same host, the one served).
    pub source: CertOrigin,
}

/// A certificate ready to serve and what is shown of it.
#[derive(Clone)]
struct Served {
    key: Arc<CertifiedKey>,
    meta: Arc<CertMeta>,
}

impl Served {
    fn listing(&self, source: CertOrigin) -> (Arc<CertMeta>, CertOrigin) {
        (Arc::clone(&self.meta), source)
    }
}

/// The dynamic certificates of one name, at most one per source.
#[derive(Default)]
struct Slot {
    upload: Option<Served>,
    acme: Option<Served>,
}

impl Slot {
    /// The one to serve: of an upload and an ACME certificate the later `not_after`, the
    /// upload on a tie (so every node picks the same whatever order they arrived in).
    fn served(&self) -> Option<(&Served, CertOrigin)> {
        match (&self.upload, &self.acme) {
            (Some(upload), Some(acme)) if acme.meta.not_after > upload.meta.not_after => {
                Some((acme, CertOrigin::Acme))
            }
            (Some(upload), _) => Some((upload, CertOrigin::Upload)),
            (None, Some(acme)) => Some((acme, CertOrigin::Acme)),
            (None, None) => None,
        }
    }

    fn source_mut(&mut self, source: Source) -> &mut Option<Served> {
        match source {
            Source::Upload => &mut self.upload,
            Source::Acme => &mut self.acme,
        }
    }

    fn is_empty(&self) -> bool {
        self.upload.is_none() && self.acme.is_none()
    }
}

/// Seeded per map; SNI values only ever look up, never insert.
type Fast = foldhash::fast::RandomState;

/// The dynamic certificates, changed in place one name at a time.
#[derive(Default)]
struct Dynamic {
    /// Exact host → its certificates.
    exact: HashMap<String, Slot, Fast>,
    /// Parent domain → the certificates of `*.<domain>`.
    wildcard: HashMap<String, Slot, Fast>,
}

impl Dynamic {
    fn slots(&self, host: &Host) -> &HashMap<String, Slot, Fast> {
        match host {
            Host::Exact(_) => &self.exact,
            Host::Wildcard(_) => &self.wildcard,
        }
    }

    fn slots_mut(&mut self, host: &Host) -> &mut HashMap<String, Slot, Fast> {
        match host {
            Host::Exact(_) => &mut self.exact,
            Host::Wildcard(_) => &mut self.wildcard,
        }
    }
}

/// One generation of certificates loaded from files; replaced whole on reload.
struct Certs {
    /// Exact host → certificate.
    exact: HashMap<String, Served>,
    /// Parent domain → certificate of `*.<domain>`.
    wildcard: HashMap<String, Served>,
    /// Served when nothing else matches.
    default: Arc<CertifiedKey>,
}

impl Certs {
    fn get(&self, host: &Host) -> Option<&Served> {
        match host {
            Host::Exact(name) => self.exact.get(name),
            Host::Wildcard(domain) => self.wildcard.get(domain),
        }
    }

    /// Every served name, each with its certificate, sorted by name.
    fn by_name(&self) -> BTreeMap<String, &Arc<CertifiedKey>> {
        let exact = self.exact.iter().map(|(name, s)| (name.clone(), &s.key));
        let wildcard = self
            .wildcard
            .iter()
            .map(|(domain, s)| (Host::Wildcard(domain.clone()).to_string(), &s.key));
        exact.chain(wildcard).collect()
    }
}

/// An SNI value as the maps key it: without a trailing dot, lower-case. No allocation
/// unless the name has upper-case letters.
fn sni_key(sni: &str) -> Cow<'_, str> {
    let sni = sni.strip_suffix('.').unwrap_or(sni);
    if sni.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(sni.to_ascii_lowercase())
    } else {
        Cow::Borrowed(sni)
    }
}

/// The files the store reads.
#[derive(Debug)]
struct Paths {
    cert_dir: PathBuf,
    default_cert: PathBuf,
    default_key: PathBuf,
}

/// What `watch` compares between polls: every relevant file's path, modification time,
/// size and inode (an atomic rename-over changes the inode even when time and size match).
/// A file that cannot be stat'ed, or a directory that cannot be read, has `None`.
type Fingerprint = Vec<(PathBuf, Option<(SystemTime, u64, u64)>)>;

/// The per-application certificate store and SNI resolver of the HTTPS listener.
pub struct CertStore {
    paths: Paths,
    provider: Arc<CryptoProvider>,
    /// The current generation of files; the lock is held only to clone or replace the `Arc`.
    certs: RwLock<Arc<Certs>>,
    /// Uploads and ACME certificates; the write lock is held only for one map operation.
    dynamic: RwLock<Dynamic>,
    /// Serialises reloads, and holds the fingerprint the current generation was read at
    /// (taken before reading, so a change during a reload triggers another).
    reloading: Mutex<Fingerprint>,
    /// TLS-ALPN-01 answers, when the node takes part in ACME ([`CertStore::set_challenges`]).
    challenges: std::sync::OnceLock<Arc<Challenges>>,
}

impl fmt::Debug for CertStore {
    // Never the keys: only where they come from and how many names are served.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let certs = self.current();
        // Read once: a second read guard in the same expression could wait on a writer
        // queued behind the first.
        let (dynamic_exact, dynamic_wildcard) = {
            let dynamic = self.dynamic.read();
            (dynamic.exact.len(), dynamic.wildcard.len())
        };
        f.debug_struct("CertStore")
            .field("cert_dir", &self.paths.cert_dir)
            .field("default_cert", &self.paths.default_cert)
            .field("default_key", &self.paths.default_key)
            .field("exact_names", &certs.exact.len())
            .field("wildcard_names", &certs.wildcard.len())
            .field("dynamic_exact_names", &dynamic_exact)
            .field("dynamic_wildcard_names", &dynamic_wildcard)
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Load the default pair (must succeed: error otherwise) and every pair in `cert_dir`
    /// (bad ones are logged with the file name and skipped). An unreadable `cert_dir` is an
    /// error too. The default files may live in `cert_dir`; they are not read as a host pair.
    pub fn load(
        cert_dir: &Path,
        default_cert: &Path,
        default_key: &Path,
    ) -> Result<Arc<CertStore>, TlsError> {
        let paths = Paths {
            cert_dir: cert_dir.to_path_buf(),
            default_cert: default_cert.to_path_buf(),
            default_key: default_key.to_path_buf(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let seen = fingerprint(&paths);
        let (certs, report) = scan(&paths, &provider, None)?;
        info!(
            cert_dir = %paths.cert_dir.display(),
            names = certs.exact.len() + certs.wildcard.len(),
            skipped = report.skipped.len(),
            "tls certificates loaded"
        );
        Ok(Arc::new(CertStore {
            paths,
            provider,
            certs: RwLock::new(Arc::new(certs)),
            dynamic: RwLock::new(Dynamic::default()),
            reloading: Mutex::new(seen),
            challenges: std::sync::OnceLock::new(),
        }))
    }

    /// Rescan `cert_dir` and the default files; swap in what changed. Returns what happened
    /// (names added/removed/updated, files skipped with reason). Never fails: a bad file is
    /// skipped (a name it served keeps its previous certificate, a bad default keeps the
    /// previous default) and an unreadable `cert_dir` keeps every loaded name.
    ///
    /// Blocking (file reads, key parsing): call it off the async runtime.
    pub fn reload(&self) -> ReloadReport {
        let mut seen = self.reloading.lock();
        self.reload_locked(&mut seen)
    }

    /// Names served (exact and `*.domain`, from files and dynamic), sorted. The default
    /// certificate has no name.
    pub fn names(&self) -> Vec<String> {
        self.list().into_iter().map(|l| l.meta.host).collect()
    }

    /// Check a certificate from the control plane (as [`validate_upload`] does, except the
    /// validity period: a replicated certificate is served whatever this node's clock says,
    /// as a file is, and an expired one is only logged) and serve it for `host` (lower-cased;
    /// `*.domain` for a wildcard), replacing the one `source` held for it. Served from the
    /// next handshake on unless a `cert_dir` file holds the same host, or (between upload and
    /// ACME) the other source's certificate expires later. Cheap with many names: the
    /// parsing happens first, then one map insert under the write lock.
    ///
    /// Blocking (key parsing, about 0.1 ms for ECDSA): call it off the async runtime when
    /// applying many.
    pub fn set_dynamic(
        &self,
        host: &str,
        source: Source,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<CertMeta, UploadError> {
        let checked = upload::check(&self.provider, host, cert_pem, key_pem, None)?;
        let meta = checked.meta.clone();
        let served = Served {
            key: Arc::new(checked.key),
            meta: Arc::new(checked.meta),
        };
        let host = checked.host;
        let serving = {
            let mut dynamic = self.dynamic.write();
            let slot = dynamic
                .slots_mut(&host)
                .entry(host.key().to_string())
                .or_default();
            *slot.source_mut(source) = Some(served);
            slot.served()
                .map(|(s, origin)| (origin, Arc::clone(&s.meta)))
        };
        let shadowed_by_file = self.current().get(&host).is_some();
        let origin = CertOrigin::from(source);
        let serving_it = serving
            .as_ref()
            .is_some_and(|(o, m)| *o == origin && m.fingerprint_sha256 == meta.fingerprint_sha256);
        info!(
            host = %meta.host,
            source = origin.as_str(),
            fingerprint_sha256 = %meta.fingerprint_sha256,
            not_after = %meta.not_after_rfc3339(),
            served = serving_it && !shadowed_by_file,
            shadowed_by_file,
            "tls dynamic certificate set"
        );
        if meta.not_after < SystemTime::now() {
            warn!(host = %meta.host, source = origin.as_str(), "tls dynamic certificate is expired");
        }
        Ok(meta)
    }

    /// Stop serving the certificate `source` holds for `host` (lower-cased; `*.domain` for a
    /// wildcard); the other source's, a wildcard one level up or the default takes over.
    /// Whether there was one.
    pub fn remove_dynamic(&self, host: &str, source: Source) -> bool {
        let Ok(host) = upload::upload_host(host) else {
            return false;
        };
        let removed = {
            let mut dynamic = self.dynamic.write();
            let slots = dynamic.slots_mut(&host);
            match slots.get_mut(host.key()) {
                None => false,
                Some(slot) => {
                    let removed = slot.source_mut(source).take().is_some();
                    if slot.is_empty() {
                        slots.remove(host.key());
                    }
                    removed
                }
            }
        };
        if removed {
            info!(host = %host, source = CertOrigin::from(source).as_str(), "tls dynamic certificate removed");
        }
        removed
    }

    /// Every served name with what is shown of its certificate (never key material), sorted
    /// by host: each file pair, and each dynamic name no file holds (with the source that
    /// wins, see [`CertStore::set_dynamic`]). The default certificate has no name.
    pub fn list(&self) -> Vec<CertListing> {
        let files = self.current();
        let mut listed: Vec<(Arc<CertMeta>, CertOrigin)> = files
            .exact
            .values()
            .chain(files.wildcard.values())
            .map(|s| s.listing(CertOrigin::File))
            .collect();
        {
            let dynamic = self.dynamic.read();
            listed.reserve(dynamic.exact.len() + dynamic.wildcard.len());
            let exact = dynamic
                .exact
                .iter()
                .filter(|(name, _)| !files.exact.contains_key(*name));
            let wildcard = dynamic
                .wildcard
                .iter()
                .filter(|(domain, _)| !files.wildcard.contains_key(*domain));
            for (_, slot) in exact.chain(wildcard) {
                if let Some((s, origin)) = slot.served() {
                    listed.push(s.listing(origin));
                }
            }
        }
        // Cloned after the lock is released.
        let mut out: Vec<CertListing> = listed
            .into_iter()
            .map(|(meta, source)| CertListing {
                meta: CertMeta::clone(&meta),
                source,
            })
            .collect();
        out.sort_by(|a, b| a.meta.host.cmp(&b.meta.host));
        out
    }

    /// The certificate served for exactly the name `host` (lower-cased; `*.domain` for a
    /// wildcard), as in [`CertStore::list`]: a name only a wildcard covers has none.
    pub fn get(&self, host: &str) -> Option<CertListing> {
        let host = upload::upload_host(host).ok()?;
        let (meta, source) = match self.current().get(&host) {
            Some(s) => s.listing(CertOrigin::File),
            None => {
                let dynamic = self.dynamic.read();
                let (s, origin) = dynamic.slots(&host).get(host.key())?.served()?;
                s.listing(origin)
            }
        };
        Some(CertListing {
            meta: CertMeta::clone(&meta),
            source,
        })
    }

    /// Poll `cert_dir` and the default files every `interval` (compare names, mtimes, sizes
    /// and inodes) and reload on change, until `shutdown`. The first poll is immediate, so
    /// changes made between `load` and `watch` are picked up.
    pub async fn watch(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(interval.max(MIN_WATCH_INTERVAL));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // Shutdown wins over a due poll.
                biased;
                () = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            // Stat'ing and parsing are blocking file-system work: off the runtime threads.
            let store = Arc::clone(&self);
            if let Err(e) = tokio::task::spawn_blocking(move || store.reload_if_changed()).await {
                warn!(error = %e, "tls certificate poll failed");
            }
        }
    }

    /// Answer TLS-ALPN-01 validations from `challenges` (before [`CertStore::server_config`],
    /// which then offers `acme-tls/1`). Once: a second call is ignored.
    pub fn set_challenges(&self, challenges: Arc<Challenges>) {
        let _ = self.challenges.set(challenges);
    }

    /// A TLS server config for the HTTPS listener: TLS 1.2 and 1.3, ALPN `h2` then
    /// `http/1.1`, this store as the certificate resolver, a server-side session cache and
    /// stateless tickets (a fresh ticket key per config, rotated by rustls) for resumption.
    /// No 0-RTT early data (it could be replayed).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        self.server_config_with(&ClientCerts::None)
    }

    /// [`CertStore::server_config`], asking clients for a certificate as `clients` says.
    pub fn server_config_with(
        self: &Arc<Self>,
        clients: &ClientCerts,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let verifier = clients.verifier(&self.provider)?;
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Config)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        if self.challenges.get().is_some() {
            // Last: a client offering h2 or http/1.1 too never negotiates it.
            config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
        }
        // The server's cipher suite order, not the client's (CONTRACT.md "Edge rules";
        // testssl.sh flags the opposite): AEADs with the strongest first, as rustls lists them.
        config.ignore_client_order = true;
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(TlsError::Config)?;
        Ok(Arc::new(config))
    }

    /// The certificate served for an SNI value (`None`: the client sent none), by the rules
    /// in the module doc: exact name (file, then dynamic), the wildcard one level up (file,
    /// then dynamic), the default. What every handshake asks ([`ResolvesServerCert`]).
    pub fn resolve_name(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let files = self.current();
        let Some(sni) = sni else {
            return Arc::clone(&files.default);
        };
        let name = sni_key(sni);
        let name = name.as_ref();
        if let Some(found) = files.exact.get(name) {
            return Arc::clone(&found.key);
        }
        let dynamic = self.dynamic.read();
        if let Some((found, _)) = dynamic.exact.get(name).and_then(Slot::served) {
            return Arc::clone(&found.key);
        }
        // One level only: `*.b.c` covers `a.b.c`, so look up the parent of the first label.
        let parent = match name.split_once('.') {
            Some((label, parent)) if !label.is_empty() => parent,
            _ => return Arc::clone(&files.default),
        };
        if let Some(found) = files.wildcard.get(parent) {
            return Arc::clone(&found.key);
        }
        match dynamic.wildcard.get(parent).and_then(Slot::served) {
            Some((found, _)) => Arc::clone(&found.key),
            None => Arc::clone(&files.default),
        }
    }

    /// The current generation (the read lock is held only for the clone).
    fn current(&self) -> Arc<Certs> {
        Arc::clone(&self.certs.read())
    }

    /// Reload when the files' fingerprint differs from the one the current generation was
    /// read at.
    fn reload_if_changed(&self) -> Option<ReloadReport> {
        let mut seen = self.reloading.lock();
        if fingerprint(&self.paths) == *seen {
            return None;
        }
        Some(self.reload_locked(&mut seen))
    }

    fn reload_locked(&self, seen: &mut Fingerprint) -> ReloadReport {
        *seen = fingerprint(&self.paths);
        let previous = self.current();
        let (certs, report) = match scan(&self.paths, &self.provider, Some(&previous)) {
            Ok(scanned) => scanned,
            // Unreachable with a previous generation (scan then never fails); keep serving.
            Err(e) => {
                let mut report = ReloadReport::default();
                report.skipped.push(e.file_and_reason());
                return report;
            }
        };
        if !Arc::ptr_eq(&certs.default, &previous.default)
            && certs.default.cert != previous.default.cert
        {
            info!(file = %self.paths.default_cert.display(), "tls default certificate updated");
        }
        *self.certs.write() = Arc::new(certs);
        if report.changed() {
            info!(
                added = ?report.added,
                removed = ?report.removed,
                updated = ?report.updated,
                skipped = report.skipped.len(),
                "tls certificates reloaded"
            );
        }
        report
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A TLS-ALPN-01 validation offers `acme-tls/1` alone (RFC 8737 §3): it gets the
        // challenge certificate of its name or no handshake, never an app's certificate.
        if let Some(challenges) = self.challenges.get()
            && offers_only_acme(&client_hello)
        {
            return client_hello.server_name().and_then(|n| challenges.alpn(n));
        }
        Some(self.resolve_name(client_hello.server_name()))
    }
}

/// Whether a client offers `acme-tls/1` and nothing else.
fn offers_only_acme(hello: &ClientHello<'_>) -> bool {
    hello.alpn().is_some_and(|mut offered| {
        offered.next() == Some(ACME_TLS_ALPN) && offered.next().is_none()
    })
}

/// Read the default pair and `cert_dir` into a new generation. With no `previous` (at load)
/// a bad default pair or an unreadable directory is an error; with one, they keep what
/// `previous` had and are reported as skipped, so this never fails.
fn scan(
    paths: &Paths,
    provider: &CryptoProvider,
    previous: Option<&Certs>,
) -> Result<(Certs, ReloadReport), TlsError> {
    let mut report = ReloadReport::default();
    let default = match load_pair(provider, &paths.default_cert, &paths.default_key, None) {
        Ok(served) => served.key,
        Err(e) => {
            let Some(previous) = previous else {
                return Err(e);
            };
            let (file, reason) = e.file_and_reason();
            skip(
                &mut report,
                file,
                format!("{reason}; still serving the previous default"),
            );
            Arc::clone(&previous.default)
        }
    };

    let files = match pairs_in(paths) {
        Ok(files) => files,
        Err(source) => {
            let Some(previous) = previous else {
                return Err(TlsError::Read {
                    path: paths.cert_dir.clone(),
                    source,
                });
            };
            let reason = format!("cannot read directory: {source}; keeping every loaded name");
            skip(&mut report, paths.cert_dir.clone(), reason);
            let certs = Certs {
                exact: previous.exact.clone(),
                wildcard: previous.wildcard.clone(),
                default,
            };
            return Ok((certs, report));
        }
    };

    let mut certs = Certs {
        exact: HashMap::new(),
        wildcard: HashMap::new(),
        default,
    };
    let mut hosts = HashSet::new();
    for (stem, pair) in files {
        let Some(any_file) = pair.cert.as_ref().or(pair.key.as_ref()) else {
            continue;
        };
        let host = match Host::from_stem(&stem) {
            Ok(host) => host,
            Err(reason) => {
                skip(&mut report, any_file.clone(), reason);
                continue;
            }
        };
        if !hosts.insert(host.clone()) {
            let reason =
                format!("another file pair already serves {host} (names are case-insensitive)");
            skip(&mut report, any_file.clone(), reason);
            continue;
        }
        let loaded = match (&pair.cert, &pair.key) {
            (Some(cert), Some(key)) => load_pair(provider, cert, key, Some(&host)),
            (Some(cert), None) => Err(TlsError::Invalid {
                path: cert.clone(),
                reason: format!("no key file {stem}.{KEY_EXT}"),
            }),
            (None, _) => Err(TlsError::Invalid {
                path: any_file.clone(),
                reason: format!("no certificate file {stem}.{CERT_EXT}"),
            }),
        };
        let ck = match loaded {
            Ok(ck) => ck,
            Err(e) => {
                let (file, mut reason) = e.file_and_reason();
                // A pair being rewritten is briefly inconsistent: keep serving what was good.
                let kept = previous.and_then(|p| match &host {
                    Host::Exact(name) => p.exact.get(name),
                    Host::Wildcard(domain) => p.wildcard.get(domain),
                });
                let Some(kept) = kept else {
                    skip(&mut report, file, reason);
                    continue;
                };
                reason.push_str(KEPT);
                skip(&mut report, file, reason);
                kept.clone()
            }
        };
        match host {
            Host::Exact(name) => certs.exact.insert(name, ck),
            Host::Wildcard(domain) => certs.wildcard.insert(domain, ck),
        };
    }

    let now = certs.by_name();
    match previous {
        None => report.added = now.keys().cloned().collect(),
        Some(previous) => {
            let before = previous.by_name();
            for (name, ck) in &now {
                match before.get(name) {
                    None => report.added.push(name.clone()),
                    Some(old) if old.cert != ck.cert => report.updated.push(name.clone()),
                    Some(_) => {}
                }
            }
            report.removed = before
                .into_keys()
                .filter(|name| !now.contains_key(name))
                .collect();
        }
    }
    Ok((certs, report))
}

/// Record and log a skipped file. The reason never holds key material.
fn skip(report: &mut ReloadReport, file: PathBuf, reason: String) {
    warn!(file = %file.display(), reason = %reason, "tls certificate file skipped");
    report.skipped.push((file, reason));
}

/// The files of one host in `cert_dir`.
#[derive(Debug, Default)]
struct FilePair {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// The `.pem`/`.key` files of `cert_dir` grouped by file stem (sorted, so duplicates resolve
/// the same way every time). Hidden files, other extensions, non-files and the default pair's
/// own files are left out.
fn pairs_in(paths: &Paths) -> io::Result<BTreeMap<String, FilePair>> {
    let default_cert = canonical(&paths.default_cert);
    let default_key = canonical(&paths.default_key);
    let mut pairs: BTreeMap<String, FilePair> = BTreeMap::new();
    for entry in fs::read_dir(&paths.cert_dir)? {
        let path = entry?.path();
        let Some((stem, ext)) = relevant(&path) else {
            continue;
        };
        // Follows symlinks (Kubernetes secret volumes are symlinks into `..data/`).
        if !fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            continue;
        }
        let canon = canonical(&path);
        if canon == default_cert || canon == default_key {
            continue;
        }
        let pair = pairs.entry(stem.to_string()).or_default();
        if ext == CERT_EXT {
            pair.cert = Some(path);
        } else {
            pair.key = Some(path);
        }
    }
    Ok(pairs)
}

/// `(stem, extension)` of a certificate or key file name worth reading.
fn relevant(path: &Path) -> Option<(&str, &str)> {
    let name = path.file_name()?.to_str()?;
    if name.starts_with('.') {
        return None;
    }
    let (stem, ext) = name.rsplit_once('.')?;
    (ext == CERT_EXT || ext == KEY_EXT).then_some((stem, ext))
}

fn canonical(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// See [`Fingerprint`]. Cheap: one directory listing and a stat per relevant file.
fn fingerprint(paths: &Paths) -> Fingerprint {
    let stat = |path: &Path| {
        fs::metadata(path).ok().map(|m| {
            let modified = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            (modified, m.len(), m.ino())
        })
    };
    let mut files: Fingerprint = [&paths.default_cert, &paths.default_key]
        .into_iter()
        .map(|path| (path.clone(), stat(path)))
        .collect();
    match fs::read_dir(&paths.cert_dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let path = entry.path();
                if relevant(&path).is_some() {
                    let stats = stat(&path);
                    files.push((path, stats));
                }
            }
        }
        Err(_) => files.push((paths.cert_dir.clone(), None)),
    }
    files.sort();
    files
}

/// The DNS names of a certificate's subjectAltName extension (none without one).
fn dns_names<'c>(cert: &'c X509Certificate<'_>) -> Result<Vec<&'c str>, X509Error> {
    let san = cert.subject_alternative_name()?;
    Ok(san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(*dns),
            _ => None,
        })
        .collect())
}

/// A certificate's DNS names for a "not valid for" reason: at most `max`.
fn names_for_reason(names: &[&str], max: usize) -> String {
    if names.is_empty() {
        return "it has no DNS names".to_string();
    }
    let mut listed = names[..names.len().min(max)].join(", ");
    if names.len() > max {
        listed.push_str(", …");
    }
    format!("it is for {listed}")
}

/// Load and check one pair: the chain parses, the leaf is valid for `host` (when given), the
/// key parses and belongs to the leaf. The metadata names `host` (empty for the default).
fn load_pair(
    provider: &CryptoProvider,
    cert_path: &Path,
    key_path: &Path,
    host: Option<&Host>,
) -> Result<Served, TlsError> {
    let invalid = |path: &Path, reason: String| TlsError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let read = |path: &Path| {
        fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })
    };

    let cert_pem = read(cert_path)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(cert_path, format!("invalid PEM: {}", pem_reason(&e))))?;
    let Some(leaf) = chain.first() else {
        return Err(invalid(cert_path, "no certificate found".to_string()));
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| invalid(cert_path, format!("not an X.509 certificate: {e}")))?;
    if let Some(host) = host {
        let names = dns_names(&parsed)
            .map_err(|e| invalid(cert_path, format!("invalid subjectAltName: {e}")))?;
        if !names.iter().any(|san| host.covered_by(san)) {
            return Err(TlsError::NameMismatch {
                path: cert_path.to_path_buf(),
                name: host.to_string(),
                names: names_for_reason(&names, REASON_MAX_NAMES),
            });
        }
    }
    if !parsed.validity().is_valid() {
        // Still served: falling back to another certificate would not help the client.
        warn!(file = %cert_path.display(), "tls certificate is expired or not yet valid");
    }
    let meta = CertMeta::of_leaf(host.map(Host::to_string).unwrap_or_default(), leaf, &parsed);

    // The key's bytes go only to the parser and the signer; errors say what, never which bytes.
    let key_pem = read(key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => invalid(key_path, "no private key found".to_string()),
        other => invalid(key_path, format!("invalid PEM: {}", pem_reason(&other))),
    })?;
    drop(key_pem);
    let signer = provider.key_provider.load_private_key(key).map_err(|_| {
        invalid(
            key_path,
            "not a usable private key (RSA, ECDSA P-256/P-384 or Ed25519 expected)".to_string(),
        )
    })?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        Ok(()) => Ok(Served {
            key: Arc::new(certified),
            meta: Arc::new(meta),
        }),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch {
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
            })
        }
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Err(invalid(
            key_path,
            "cannot check that the private key matches the certificate".to_string(),
        )),
        Err(e) => Err(invalid(cert_path, format!("unusable certificate: {e}"))),
    }
}

/// A PEM error without the bytes it quotes (a key file's lines must not reach a log).
fn pem_reason(e: &pem::Error) -> &'static str {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line",
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "bad base64",
        pem::Error::NoItemsFound => "nothing found",
        pem::Error::SectionTooLarge => "a section is too large",
        _ => "unreadable",
    }
}

/// Whether the HTTPS listener asks clients for a certificate (`tls.client_cert`), and the
/// CA certificates (`tls.client_ca`, PEM) a client certificate must chain to.
#[derive(Debug, Clone)]
pub enum ClientCerts {
    /// Never asked for.
    None,
    /// Asked for; a client without one is served, one whose certificate does not chain to
    /// the CA file is refused at the handshake.
    Request(PathBuf),
    /// Required: a client without a certificate that chains to the CA file is refused.
    Require(PathBuf),
}

impl ClientCerts {
    /// rustls's verifier for this mode (webpki: chain, validity and client-auth usage).
    fn verifier(
        &self,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
        let (path, required) = match self {
            ClientCerts::None => return Ok(rustls::server::WebPkiClientVerifier::no_client_auth()),
            ClientCerts::Request(path) => (path, false),
            ClientCerts::Require(path) => (path, true),
        };
        let invalid = |reason: String| TlsError::Invalid {
            path: path.clone(),
            reason,
        };
        let pem = fs::read(path).map_err(|source| TlsError::Read {
            path: path.clone(),
            source,
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| invalid(format!("invalid PEM: {}", pem_reason(&e))))?;
            roots
                .add(cert)
                .map_err(|e| invalid(format!("not a usable CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(invalid("no certificate found".to_string()));
        }
        let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(provider),
        );
        let builder = if required {
            builder
        } else {
            builder.allow_unauthenticated()
        };
        builder
            .build()
            .map_err(|e| invalid(format!("cannot verify clients with it: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        date_time_ymd,
    };
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, HandshakeKind, RootCertStore};
    use std::time::Instant;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    const SHOP: &str = "shop.apps.example.com";
    const BLOG: &str = "blog.apps.example.com";
    const WILDCARD_STEM: &str = "_wildcard.apps.example.com";
    /// The default certificate names every host the tests expect it to be served for, so
    /// the client can verify chain *and* name even when the default is the answer.
    const DEFAULT_NAMES: &[&str] = &[
        "default.example.com",
        "a.b.apps.example.com",
        "other.apps.example.com",
        "new.apps.example.com",
        "x.dyn.example.com",
        "127.0.0.1",
    ];

    /// A test CA issuing leaf certificates (and intermediate CAs).
    pub(super) struct Ca {
        issuer: Issuer<'static, KeyPair>,
        roots: RootCertStore,
        /// This CA's certificate.
        pub(super) cert_pem: String,
    }

    /// A leaf certificate and its key, as PEM, and the leaf's DER to compare with what a
    /// handshake served.
    pub(super) struct Leaf {
        pub(super) cert_pem: String,
        pub(super) key_pem: String,
        pub(super) der: CertificateDer<'static>,
    }

    fn ca_params(name: &str) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
    }

    impl Ca {
        pub(super) fn new() -> Ca {
            Ca::named("grouter test ca")
        }

        /// A self-signed root with this common name.
        pub(super) fn named(name: &str) -> Ca {
            let key = KeyPair::generate().unwrap();
            let params = ca_params(name);
            let cert = params.self_signed(&key).unwrap();
            let mut roots = RootCertStore::empty();
            roots.add(cert.der().clone()).unwrap();
            Ca {
                issuer: Issuer::new(params, key),
                roots,
                cert_pem: cert.pem(),
            }
        }

        /// An intermediate CA issued by this one (clients trust this one's roots).
        pub(super) fn intermediate(&self, name: &str) -> Ca {
            let key = KeyPair::generate().unwrap();
            let params = ca_params(name);
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            Ca {
                issuer: Issuer::new(params, key),
                roots: self.roots.clone(),
                cert_pem: cert.pem(),
            }
        }

        pub(super) fn leaf(&self, names: &[&str]) -> Leaf {
            self.leaf_with(names, |_| {})
        }

        /// A leaf with a fresh ECDSA P-256 key, `edit` adjusting its parameters (validity).
        pub(super) fn leaf_with(
            &self,
            names: &[&str],
            edit: impl FnOnce(&mut CertificateParams),
        ) -> Leaf {
            self.leaf_with_key(names, &KeyPair::generate().unwrap(), edit)
        }

        pub(super) fn leaf_with_key(
            &self,
            names: &[&str],
            key: &KeyPair,
            edit: impl FnOnce(&mut CertificateParams),
        ) -> Leaf {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut params = CertificateParams::new(names).unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, "grouter test leaf");
            edit(&mut params);
            let cert = params.signed_by(key, &self.issuer).unwrap();
            Leaf {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
                der: cert.der().clone(),
            }
        }

        /// A client trusting only this CA, verifying chain and name, offering `alpn`.
        fn client(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
            self.client_with(alpn, &[&rustls::version::TLS13, &rustls::version::TLS12])
        }

        fn client_with(
            &self,
            alpn: &[&[u8]],
            versions: &[&'static rustls::SupportedProtocolVersion],
        ) -> Arc<ClientConfig> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(self.roots.clone())
                .with_no_client_auth();
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Arc::new(config)
        }
    }

    /// Write `<stem>.pem` and `<stem>.key`.
    fn write_pair(dir: &Path, stem: &str, leaf: &Leaf) {
        fs::write(dir.join(format!("{stem}.pem")), &leaf.cert_pem).unwrap();
        fs::write(dir.join(format!("{stem}.key")), &leaf.key_pem).unwrap();
    }

    fn remove_pair(dir: &Path, stem: &str) {
        fs::remove_file(dir.join(format!("{stem}.pem"))).unwrap();
        fs::remove_file(dir.join(format!("{stem}.key"))).unwrap();
    }

    /// A cert dir with shop, blog, the wildcard and the default pair (the default inside the
    /// cert dir, as in the contract's example config).
    struct Fixture {
        dir: tempfile::TempDir,
        ca: Ca,
        shop: Leaf,
        blog: Leaf,
        wildcard: Leaf,
        default: Leaf,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let ca = Ca::new();
            let fixture = Fixture {
                shop: ca.leaf(&[SHOP]),
                blog: ca.leaf(&[BLOG]),
                wildcard: ca.leaf(&["*.apps.example.com"]),
                default: ca.leaf(DEFAULT_NAMES),
                dir,
                ca,
            };
            write_pair(fixture.path(), "shop.apps.example.com", &fixture.shop);
            write_pair(fixture.path(), "blog.apps.example.com", &fixture.blog);
            write_pair(fixture.path(), WILDCARD_STEM, &fixture.wildcard);
            write_pair(fixture.path(), "default", &fixture.default);
            fixture
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }

        fn load(&self) -> Result<Arc<CertStore>, TlsError> {
            CertStore::load(
                self.path(),
                &self.path().join("default.pem"),
                &self.path().join("default.key"),
            )
        }
    }

    struct Served {
        leaf: CertificateDer<'static>,
        alpn: Option<Vec<u8>>,
        kind: Option<HandshakeKind>,
    }

    /// One handshake over an in-memory pipe, the client verifying chain and name; what the
    /// server presented and what was negotiated. The server sends one byte afterwards so
    /// the client also processes any session tickets.
    async fn handshake(
        server: &Arc<ServerConfig>,
        client: &Arc<ClientConfig>,
        name: &str,
    ) -> Served {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let acceptor = TlsAcceptor::from(Arc::clone(server));
        let connector = TlsConnector::from(Arc::clone(client));
        let name = ServerName::try_from(name.to_string()).unwrap();
        let server_side = async {
            let mut stream = acceptor.accept(server_io).await.unwrap();
            stream.write_all(b"x").await.unwrap();
            stream.flush().await.unwrap();
            stream
        };
        let client_side = async {
            let mut stream = connector.connect(name, client_io).await.unwrap();
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.unwrap();
            stream
        };
        let (_server, client) = tokio::join!(server_side, client_side);
        let conn = client.get_ref().1;
        Served {
            leaf: conn.peer_certificates().unwrap()[0].clone(),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            kind: conn.handshake_kind(),
        }
    }

    async fn served_for(
        server: &Arc<ServerConfig>,
        ca: &Ca,
        name: &str,
    ) -> CertificateDer<'static> {
        handshake(server, &ca.client(&[b"h2"]), name).await.leaf
    }

    #[tokio::test]
    async fn sni_picks_exact_then_one_level_wildcard_then_default() {
        let f = Fixture::new();
        let store = f.load().unwrap();
        let server = store.server_config().unwrap();
        assert_eq!(
            store.names(),
            vec!["*.apps.example.com", BLOG, SHOP],
            "the default pair inside cert_dir is not a host pair"
        );

        // Exact beats the wildcard that also covers it.
        assert_eq!(served_for(&server, &f.ca, SHOP).await, f.shop.der);
        assert_eq!(served_for(&server, &f.ca, BLOG).await, f.blog.der);
        assert_eq!(
            served_for(&server, &f.ca, "other.apps.example.com").await,
            f.wildcard.der
        );
        // Wildcards cover one level only.
        assert_eq!(
            served_for(&server, &f.ca, "a.b.apps.example.com").await,
            f.default.der
        );
        // rustls clients send no SNI for an IP address.
        assert_eq!(served_for(&server, &f.ca, "127.0.0.1").await, f.default.der);
    }

    #[test]
    fn resolver_lowercases_and_defaults_without_sni() {
        let f = Fixture::new();
        let store = f.load().unwrap();
        let served = |sni: Option<&str>| store.resolve_name(sni).cert[0].clone();
        assert_eq!(served(None), f.default.der);
        assert_eq!(served(Some("SHOP.Apps.Example.COM")), f.shop.der);
        assert_eq!(served(Some("shop.apps.example.com.")), f.shop.der);
        assert_eq!(served(Some("Other.APPS.example.com")), f.wildcard.der);
        assert_eq!(served(Some("apps.example.com")), f.default.der);
        assert_eq!(served(Some("x.y.apps.example.com")), f.default.der);
        assert_eq!(served(Some("")), f.default.der);
    }

    #[tokio::test]
    async fn exact_beats_wildcard_and_removal_falls_back() {
        let f = Fixture::new();
        let store = f.load().unwrap();
        let server = store.server_config().unwrap();
        assert_eq!(served_for(&server, &f.ca, SHOP).await, f.shop.der);

        remove_pair(f.path(), "shop.apps.example.com");
        let report = store.reload();
        assert_eq!(report.removed, vec![SHOP]);
        assert!(report.skipped.is_empty(), "{report:?}");
        assert_eq!(served_for(&server, &f.ca, SHOP).await, f.wildcard.der);

        remove_pair(f.path(), WILDCARD_STEM);
        let report = store.reload();
        assert_eq!(report.removed, vec!["*.apps.example.com"]);
        assert_eq!(
            served_for(&server, &f.ca, "other.apps.example.com").await,
            f.default.der
        );
    }

    #[tokio::test]
    async fn watch_picks_up_new_and_removed_pairs() {
        let f = Fixture::new();
        let store = f.load().unwrap();
        let server = store.server_config().unwrap();
        let shutdown = CancellationToken::new();
        let watcher =
            tokio::spawn(Arc::clone(&store).watch(Duration::from_millis(200), shutdown.clone()));
        let new_name = "new.apps.example.com";
        assert_eq!(served_for(&server, &f.ca, new_name).await, f.wildcard.der);

        // Added: served within 2 s.
        let new = f.ca.leaf(&[new_name]);
        let start = Instant::now();
        write_pair(f.path(), new_name, &new);
        while served_for(&server, &f.ca, new_name).await != new.der {
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "new pair not served within 2 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(store.names().contains(&new_name.to_string()));

        // Removed: back to the wildcard, then (wildcard gone too) to the default.
        let start = Instant::now();
        remove_pair(f.path(), new_name);
        while served_for(&server, &f.ca, new_name).await != f.wildcard.der {
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "removal not seen within 2 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let start = Instant::now();
        remove_pair(f.path(), WILDCARD_STEM);
        while served_for(&server, &f.ca, new_name).await != f.default.der {
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "removal not seen within 2 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(2), watcher)
            .await
            .expect("watch stops on shutdown")
            .unwrap();
    }

    #[tokio::test]
    async fn bad_files_are_skipped_and_the_rest_served() {
        let f = Fixture::new();
        let dir = f.path();
        // A certificate without its key.
        let lonely = f.ca.leaf(&["lonely.apps.example.com"]);
        fs::write(dir.join("lonely.apps.example.com.pem"), &lonely.cert_pem).unwrap();
        // A garbage certificate file (its key is fine).
        let garbage = f.ca.leaf(&["garbage.apps.example.com"]);
        fs::write(
            dir.join("garbage.apps.example.com.pem"),
            "not a certificate\n",
        )
        .unwrap();
        fs::write(dir.join("garbage.apps.example.com.key"), &garbage.key_pem).unwrap();
        // The key of another certificate.
        let mismatch = f.ca.leaf(&["mismatch.apps.example.com"]);
        let other = f.ca.leaf(&["mismatch.apps.example.com"]);
        fs::write(
            dir.join("mismatch.apps.example.com.pem"),
            &mismatch.cert_pem,
        )
        .unwrap();
        fs::write(dir.join("mismatch.apps.example.com.key"), &other.key_pem).unwrap();
        // A certificate for another name than its file's.
        write_pair(
            dir,
            "wrongname.apps.example.com",
            &f.ca.leaf(&["shop.example.org"]),
        );
        // A wildcard file holding a certificate for a single name.
        write_pair(
            dir,
            "_wildcard.example.net",
            &f.ca.leaf(&["www.example.net"]),
        );
        // Files that are not ours are ignored.
        fs::write(dir.join("README.txt"), "certificates live here").unwrap();

        let store = f.load().unwrap();
        assert_eq!(store.names(), vec!["*.apps.example.com", BLOG, SHOP]);
        let server = store.server_config().unwrap();
        assert_eq!(served_for(&server, &f.ca, SHOP).await, f.shop.der);
        assert_eq!(served_for(&server, &f.ca, BLOG).await, f.blog.der);

        let report = store.reload();
        assert!(!report.changed(), "{report:?}");
        let mut skipped: Vec<(String, String)> = report
            .skipped
            .iter()
            .map(|(path, reason)| {
                let file = path.file_name().unwrap().to_string_lossy().into_owned();
                (file, reason.clone())
            })
            .collect();
        skipped.sort();
        let expect = [
            ("_wildcard.example.net.pem", "not valid for *.example.net"),
            ("garbage.apps.example.com.pem", "no certificate found"),
            (
                "lonely.apps.example.com.pem",
                "no key file lonely.apps.example.com.key",
            ),
            (
                "mismatch.apps.example.com.key",
                "does not match the certificate",
            ),
            (
                "wrongname.apps.example.com.pem",
                "not valid for wrongname.apps.example.com",
            ),
        ];
        assert_eq!(skipped.len(), expect.len(), "{skipped:?}");
        for ((file, reason), (want_file, want_reason)) in skipped.iter().zip(expect) {
            assert_eq!(file, want_file);
            assert!(reason.contains(want_reason), "{file}: {reason}");
        }
        // No key material in any reason.
        let key_body = |pem: &str| pem.lines().nth(1).unwrap().to_string();
        for (_, reason) in &report.skipped {
            for key in [&garbage.key_pem, &other.key_pem, &lonely.key_pem] {
                assert!(!reason.contains(&key_body(key)));
            }
        }
    }

    #[test]
    fn a_broken_update_keeps_the_previous_certificate() {
        let f = Fixture::new();
        let store = f.load().unwrap();
        fs::write(f.path().join("shop.apps.example.com.key"), "garbage").unwrap();
        let report = store.reload();
        assert_eq!(report.skipped.len(), 1, "{report:?}");
        assert!(report.skipped[0].1.contains("no private key found"));
        assert!(report.skipped[0].1.ends_with(KEPT));
        assert!(!report.changed());
        assert_eq!(store.resolve_name(Some(SHOP)).cert[0], f.shop.der);

        // A good new pair replaces it and is reported as updated.
        let renewed = f.ca.leaf(&[SHOP, "www.shop.apps.example.com"]);
        write_pair(f.path(), "shop.apps.example.com", &renewed);
        let report = store.reload();
        assert_eq!(report.updated, vec![SHOP]);
        assert!(report.added.is_empty() && report.removed.is_empty());
        assert_eq!(store.resolve_name(Some(SHOP)).cert[0], renewed.der);

        // A broken default keeps the previous default too.
        fs::write(f.path().join("default.pem"), "garbage").unwrap();
        let report = store.reload();
        assert_eq!(report.skipped.len(), 1, "{report:?}");
        assert_eq!(store.resolve_name(None).cert[0], f.default.der);
    }

    #[test]
    fn load_fails_only_for_a_bad_default_pair() {
        // Mismatched default key.
        let f = Fixture::new();
        fs::write(f.path().join("default.key"), &f.shop.key_pem).unwrap();
        let err = f.load().unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("default.key"), "{err}");

        // Missing default certificate.
        let f = Fixture::new();
        fs::remove_file(f.path().join("default.pem")).unwrap();
        let err = f.load().unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
        assert!(err.to_string().contains("default.pem"), "{err}");

        // Garbage default certificate.
        let f = Fixture::new();
        fs::write(
            f.path().join("default.pem"),
            "-----BEGIN CERTIFICATE-----\n!!\n",
        )
        .unwrap();
        let err = f.load().unwrap_err();
        assert!(err.to_string().contains("default.pem"), "{err}");

        // Missing cert_dir.
        let f = Fixture::new();
        let err = CertStore::load(
            &f.path().join("nope"),
            &f.path().join("default.pem"),
            &f.path().join("default.key"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn file_names_map_to_hosts() {
        assert_eq!(
            Host::from_stem("Shop.Apps.Example.com"),
            Ok(Host::Exact("shop.apps.example.com".to_string()))
        );
        assert_eq!(
            Host::from_stem("_wildcard.nyc.apps.example.com"),
            Ok(Host::Wildcard("nyc.apps.example.com".to_string()))
        );
        assert!(Host::from_stem("*.example.com").is_err());
        assert!(Host::from_stem("a..b").is_err());
        assert!(Host::from_stem("sp ace.example.com").is_err());

        let exact = Host::Exact("a.b.c".to_string());
        assert!(exact.covered_by("A.B.C"));
        assert!(exact.covered_by("*.b.c"));
        assert!(!exact.covered_by("*.c"));
        let wildcard = Host::Wildcard("b.c".to_string());
        assert!(wildcard.covered_by("*.b.c"));
        assert!(!wildcard.covered_by("a.b.c"));
        assert!(!wildcard.covered_by("*.c"));
    }

    #[tokio::test]
    async fn server_config_negotiates_alpn_versions_and_resumes() {
        let f = Fixture::new();
        let store = f.load().unwrap();
        let server = store.server_config().unwrap();

        let h2 = handshake(&server, &f.ca.client(&[b"h2"]), SHOP).await;
        assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
        let h1 = handshake(&server, &f.ca.client(&[b"http/1.1"]), SHOP).await;
        assert_eq!(h1.alpn.as_deref(), Some(&b"http/1.1"[..]));
        let both = handshake(&server, &f.ca.client(&[b"http/1.1", b"h2"]), SHOP).await;
        assert_eq!(both.alpn.as_deref(), Some(&b"h2"[..]), "server preference");

        // TLS 1.2 and 1.3, each resuming on a second connection with the same client.
        for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
            let client = f.ca.client_with(&[b"h2"], &[version]);
            let first = handshake(&server, &client, SHOP).await;
            assert_eq!(first.leaf, f.shop.der);
            assert_eq!(first.kind, Some(HandshakeKind::Full));
            let second = handshake(&server, &client, SHOP).await;
            assert_eq!(second.kind, Some(HandshakeKind::Resumed), "{version:?}");
        }
    }

    #[test]
    fn debug_names_files_not_keys() {
        let f = Fixture::new();
        let store = f.load().unwrap();
        let debug = format!("{store:?}");
        assert!(debug.contains("default.pem"));
        assert!(!debug.contains("PRIVATE KEY"));
        let body = f.default.key_pem.lines().nth(1).unwrap();
        assert!(!debug.contains(body));
    }

    fn set(store: &CertStore, host: &str, source: Source, leaf: &Leaf) -> CertMeta {
        store
            .set_dynamic(host, source, &leaf.cert_pem, &leaf.key_pem)
            .unwrap()
    }

    fn served_now(store: &CertStore, name: &str) -> CertificateDer<'static> {
        store.resolve_name(Some(name)).cert[0].clone()
    }

    #[tokio::test]
    async fn an_uploaded_certificate_is_served_and_removal_falls_back() {
        let f = Fixture::new();
        let store = f.load().unwrap();
        let server = store.server_config().unwrap();
        let new_name = "new.apps.example.com";
        assert_eq!(served_for(&server, &f.ca, new_name).await, f.wildcard.der);

        // An exact upload (with its intermediate) beats the file wildcard: exact names first.
        let intermediate = f.ca.intermediate("upload intermediate");
        let leaf = intermediate.leaf(&[new_name]);
        let chain = format!("{}{}", leaf.cert_pem, intermediate.cert_pem);
        let meta = store
            .set_dynamic(
                "New.Apps.Example.com",
                Source::Upload,
                &chain,
                &leaf.key_pem,
            )
            .unwrap();
        assert_eq!(meta.host, new_name);
        assert_eq!(served_for(&server, &f.ca, new_name).await, leaf.der);
        assert_eq!(
            store.resolve_name(Some(new_name)).cert.len(),
            2,
            "chain served"
        );

        assert!(store.remove_dynamic(new_name, Source::Upload));
        assert!(
            !store.remove_dynamic(new_name, Source::Upload),
            "already gone"
        );
        assert!(!store.remove_dynamic("not a host", Source::Upload));
        assert_eq!(served_for(&server, &f.ca, new_name).await, f.wildcard.der);

        // A wildcard upload covers one level; an exact upload below it wins for its name.
        let wildcard = f.ca.leaf(&["*.dyn.example.com"]);
        set(&store, "*.dyn.example.com", Source::Acme, &wildcard);
        let exact = f.ca.leaf(&["y.dyn.example.com"]);
        set(&store, "y.dyn.example.com", Source::Upload, &exact);
        assert_eq!(
            served_for(&server, &f.ca, "x.dyn.example.com").await,
            wildcard.der
        );
        assert_eq!(served_now(&store, "X.Dyn.Example.COM."), wildcard.der);
        assert_eq!(served_now(&store, "y.dyn.example.com"), exact.der);
        assert_eq!(served_now(&store, "a.x.dyn.example.com"), f.default.der);
        assert!(store.remove_dynamic("*.DYN.example.com", Source::Acme));
        assert_eq!(
            served_for(&server, &f.ca, "x.dyn.example.com").await,
            f.default.der
        );
        assert_eq!(served_now(&store, "y.dyn.example.com"), exact.der);
    }

    #[tokio::test]
    async fn a_file_beats_an_upload_and_reloads_keep_dynamic_certificates() {
        let f = Fixture::new();
        let store = f.load().unwrap();
        let server = store.server_config().unwrap();
        let uploaded = f.ca.leaf(&[SHOP]);
        set(&store, SHOP, Source::Upload, &uploaded);
        assert_eq!(served_for(&server, &f.ca, SHOP).await, f.shop.der);
        assert_eq!(store.get(SHOP).unwrap().source, CertOrigin::File);
        // Also for wildcards.
        let wildcard = f.ca.leaf(&["*.apps.example.com"]);
        set(&store, "*.apps.example.com", Source::Acme, &wildcard);
        assert_eq!(served_now(&store, "other.apps.example.com"), f.wildcard.der);

        // The file goes: a reload leaves the upload, which now serves.
        remove_pair(f.path(), "shop.apps.example.com");
        let report = store.reload();
        assert_eq!(report.removed, vec![SHOP]);
        assert_eq!(served_for(&server, &f.ca, SHOP).await, uploaded.der);
        assert_eq!(store.get(SHOP).unwrap().source, CertOrigin::Upload);
        remove_pair(f.path(), WILDCARD_STEM);
        store.reload();
        assert_eq!(served_now(&store, "other.apps.example.com"), wildcard.der);

        // The file comes back and wins again; removing the upload leaves the file alone.
        write_pair(f.path(), "shop.apps.example.com", &f.shop);
        let report = store.reload();
        assert_eq!(report.added, vec![SHOP]);
        assert_eq!(served_for(&server, &f.ca, SHOP).await, f.shop.der);
        assert!(store.remove_dynamic(SHOP, Source::Upload));
        assert_eq!(served_for(&server, &f.ca, SHOP).await, f.shop.der);
        assert_eq!(store.get(SHOP).unwrap().source, CertOrigin::File);
    }

    #[tokio::test]
    async fn the_later_not_after_wins_between_upload_and_acme() {
        let f = Fixture::new();
        let store = f.load().unwrap();
        let server = store.server_config().unwrap();
        let name = "new.apps.example.com";
        let until = |year: i32| {
            f.ca.leaf_with(&[name], |p| p.not_after = date_time_ymd(year, 1, 1))
        };
        let (upload_2040, acme_2041, upload_2042, upload_2041) =
            (until(2040), until(2041), until(2042), until(2041));

        set(&store, name, Source::Upload, &upload_2040);
        assert_eq!(served_for(&server, &f.ca, name).await, upload_2040.der);
        set(&store, name, Source::Acme, &acme_2041);
        assert_eq!(served_for(&server, &f.ca, name).await, acme_2041.der);
        let listed = store.get(name).unwrap();
        assert_eq!(listed.source, CertOrigin::Acme);
        assert_eq!(listed.meta.not_after_rfc3339(), "2041-01-01T00:00:00Z");

        // A renewed upload replaces the old one and expires later.
        set(&store, name, Source::Upload, &upload_2042);
        assert_eq!(served_now(&store, name), upload_2042.der);
        assert_eq!(store.get(name).unwrap().source, CertOrigin::Upload);
        // On a tie the upload wins, whatever came first.
        set(&store, name, Source::Upload, &upload_2041);
        assert_eq!(served_now(&store, name), upload_2041.der);

        // Removing one source leaves the other; removing both, the file wildcard.
        assert!(store.remove_dynamic(name, Source::Upload));
        assert_eq!(served_for(&server, &f.ca, name).await, acme_2041.der);
        assert!(!store.remove_dynamic(name, Source::Upload));
        assert!(store.remove_dynamic(name, Source::Acme));
        assert_eq!(served_for(&server, &f.ca, name).await, f.wildcard.der);
        assert_eq!(store.get(name), None);
    }

    #[test]
    fn list_and_get_show_metadata_of_files_and_uploads_never_keys() {
        let f = Fixture::new();
        let store = f.load().unwrap();
        let new_name = "new.apps.example.com";
        let new = f.ca.leaf(&[new_name, "www.new.apps.example.com"]);
        let new_meta = set(&store, new_name, Source::Upload, &new);
        set(&store, SHOP, Source::Acme, &f.ca.leaf(&[SHOP])); // shadowed by the file
        let wildcard = f.ca.leaf(&["*.dyn.example.com"]);
        set(&store, "*.dyn.example.com", Source::Acme, &wildcard);

        let list = store.list();
        let rows: Vec<(&str, &str)> = list
            .iter()
            .map(|l| (l.meta.host.as_str(), l.source.as_str()))
            .collect();
        assert_eq!(
            rows,
            vec![
                ("*.apps.example.com", "file"),
                ("*.dyn.example.com", "acme"),
                (BLOG, "file"),
                (new_name, "upload"),
                (SHOP, "file"),
            ]
        );
        assert_eq!(store.names(), rows.iter().map(|r| r.0).collect::<Vec<_>>());
        let listed_new = store.get("NEW.apps.example.com").unwrap();
        assert_eq!(listed_new.meta, new_meta);
        assert_eq!(
            listed_new.meta.sans,
            vec![new_name, "www.new.apps.example.com"]
        );
        // A file's metadata is what an upload of the same pair would show.
        let shop = store.get(SHOP).unwrap();
        let as_upload =
            validate_upload(SHOP, &f.shop.cert_pem, &f.shop.key_pem, SystemTime::now()).unwrap();
        assert_eq!(shop.meta, as_upload);
        assert_eq!(
            store.get("*.apps.example.com").unwrap().meta.sans,
            vec!["*.apps.example.com"]
        );
        // Names only a wildcard covers, unknown names and non-names have no entry.
        assert_eq!(store.get("other.apps.example.com"), None);
        assert_eq!(store.get("x.dyn.example.com"), None);
        assert_eq!(store.get("sp ace"), None);

        let shown = format!("{list:?} {store:?}");
        assert!(shown.contains("dynamic_exact_names: 2"), "{shown}");
        for pem in [&new.key_pem, &wildcard.key_pem, &f.shop.key_pem] {
            for line in pem.lines().filter(|l| !l.starts_with("-----")) {
                assert!(!shown.contains(line));
            }
        }
    }

    #[test]
    fn set_dynamic_refuses_bad_pairs_keeps_serving_and_takes_expired_replicas() {
        let f = Fixture::new();
        let store = f.load().unwrap();
        let name = "new.apps.example.com";
        let good = f.ca.leaf(&[name]);
        set(&store, name, Source::Upload, &good);

        let other = f.ca.leaf(&[name]);
        let err = store
            .set_dynamic(name, Source::Upload, &good.cert_pem, &other.key_pem)
            .unwrap_err();
        assert_eq!(err, UploadError::KeyMismatch);
        let err = store
            .set_dynamic(BLOG, Source::Upload, &good.cert_pem, &good.key_pem)
            .unwrap_err();
        assert_eq!(err.field(), "host");
        let err = store
            .set_dynamic(name, Source::Upload, "garbage", &good.key_pem)
            .unwrap_err();
        assert_eq!(err.field(), "cert_pem");
        assert_eq!(
            served_now(&store, name),
            good.der,
            "a refusal changes nothing"
        );
        assert_eq!(served_now(&store, BLOG), f.blog.der);

        // Expired: refused as an upload, served when it arrives replicated (as a file is).
        let expired = f.ca.leaf_with(&[name], |p| {
            p.not_before = date_time_ymd(2000, 1, 1);
            p.not_after = date_time_ymd(2001, 1, 1);
        });
        let now = SystemTime::now();
        assert!(matches!(
            validate_upload(name, &expired.cert_pem, &expired.key_pem, now),
            Err(UploadError::Expired { .. })
        ));
        set(&store, name, Source::Acme, &expired);
        assert_eq!(served_now(&store, name), good.der, "the later not_after");
        assert!(store.remove_dynamic(name, Source::Upload));
        assert_eq!(served_now(&store, name), expired.der);
    }
}
