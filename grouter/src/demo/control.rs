//! The control-plane part of `grouter demo` (issue 13): the demo's TLS certificates, the
//! `gcf` commands it prints for policies and certificates, and the `--check` cases that
//! run them end to end against the three sites:
//!
//! - pin `shop` (at lon and nyc) to region `us`: lon, in `eu`, stops serving it itself and
//!   proxies it to nyc, and sgp redirects it there;
//! - pin `blog` (only at nyc) to region `eu`: no site of that region runs it, so lon answers
//!   503 `no_endpoints`;
//! - drain site nyc: its `/healthz` answers 503 and its node sends `shop` to lon;
//! - upload a certificate for `shop.apps.example.com` at lon: sgp, which served its default
//!   certificate for that name, serves the upload by SNI.
//!
//! Every write goes to a node other than the one whose behaviour is checked, to show that
//! any node takes a write for the whole mesh. Each case undoes its write and waits until
//! the mesh is back as it was, so that every case (and the fail-open one after them)
//! starts from the demo's initial state.
//!
//! Owns: the demo CA, the default certificate every node serves and the certificate the
//! examples upload (written under `tls/` in the demo directory, keys 0600). Must never:
//! leave a policy or an upload in force after its case, whatever the case's outcome.

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;

use super::{Demo, DemoError, POLL_INTERVAL, REQUEST_TIMEOUT, Reply, Site, served_by, shell_quote};

/// The demo's certificates, in the demo directory.
pub(super) const TLS_DIR: &str = "tls";
/// The demo CA (what `curl --cacert` trusts).
const CA_CERT: &str = "ca.pem";
/// The certificate every node serves when no other matches (`tls.default_cert`).
pub(super) const DEFAULT_CERT: &str = "default.pem";
/// Its key (`tls.default_key`).
pub(super) const DEFAULT_KEY: &str = "default.key";
/// The certificate the examples upload: `shop.apps.example.com`, then the CA.
const SHOP_CERT: &str = "shop.pem";
/// Its key.
const SHOP_KEY: &str = "shop.key";
/// The name the default certificate covers: one no request uses.
const DEFAULT_NAME: &str = "default.grouter-demo.invalid";

/// The app pinned to `us` and the host the certificate is for.
const SHOP: &str = "shop.apps.example.com";
/// The app pinned to `eu`, where nothing runs it.
const BLOG: &str = "blog.apps.example.com";

/// How long a control-plane write may take to be in force where it is checked: the
/// contract's 2 s, with room for a loaded machine.
const PROPAGATION_WAIT: Duration = Duration::from_secs(6);
/// How long the demo's certificates are valid.
const VALIDITY: Duration = Duration::from_secs(30 * 86_400);
/// How far back their validity starts, for clocks a little behind.
const BACKDATE: Duration = Duration::from_secs(3_600);

/// The demo CA and the certificate files made with it.
#[derive(Debug)]
pub(super) struct DemoTls {
    dir: PathBuf,
    /// Trusts the demo CA only: a handshake verifies only with a certificate it issued for
    /// the name asked.
    roots: Arc<RootCertStore>,
}

impl DemoTls {
    /// Make a new CA, the default certificate and the one to upload, under `dir` (made
    /// fresh every run: nothing in it is worth keeping).
    pub(super) fn create(dir: &Path) -> Result<DemoTls, DemoError> {
        fs::create_dir_all(dir).map_err(|source| DemoError::Io {
            action: "create",
            path: dir.to_path_buf(),
            source,
        })?;
        let generate = |what: &str, e: rcgen::Error| DemoError::Io {
            action: "generate",
            path: dir.join(what),
            source: std::io::Error::other(e.to_string()),
        };
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| generate(CA_CERT, e))?;
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| generate(CA_CERT, e))?;
        params.distinguished_name = common_name("GRouter demo CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params);
        let ca_cert = params
            .self_signed(&ca_key)
            .map_err(|e| generate(CA_CERT, e))?;
        let issuer = Issuer::new(params, ca_key);
        write(dir, CA_CERT, ca_cert.pem().as_bytes(), false)?;

        for (name, cert_file, key_file) in [
            (DEFAULT_NAME, DEFAULT_CERT, DEFAULT_KEY),
            (SHOP, SHOP_CERT, SHOP_KEY),
        ] {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|e| generate(key_file, e))?;
            let mut params = CertificateParams::new(vec![name.to_string()])
                .map_err(|e| generate(cert_file, e))?;
            params.distinguished_name = common_name(name);
            set_validity(&mut params);
            let cert = params
                .signed_by(&key, &issuer)
                .map_err(|e| generate(cert_file, e))?;
            // Leaf first, then its issuer: a full chain, as an upload wants it.
            let chain = format!("{}{}", cert.pem(), ca_cert.pem());
            write(dir, cert_file, chain.as_bytes(), false)?;
            write(dir, key_file, key.serialize_pem().as_bytes(), true)?;
        }

        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca_cert.der().to_vec()))
            .map_err(|e| DemoError::Io {
                action: "trust",
                path: dir.join(CA_CERT),
                source: std::io::Error::other(e.to_string()),
            })?;
        Ok(DemoTls {
            dir: dir.to_path_buf(),
            roots: Arc::new(roots),
        })
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// The upload body of `gcf upload-cert`: the chain and key files' text.
    fn upload_body(&self) -> Result<Value, String> {
        let read = |file: &str| {
            fs::read_to_string(self.path(file))
                .map_err(|e| format!("cannot read {}: {e}", self.path(file).display()))
        };
        Ok(json!({ "cert_pem": read(SHOP_CERT)?, "key_pem": read(SHOP_KEY)? }))
    }
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn set_validity(params: &mut CertificateParams) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + now.saturating_sub(BACKDATE);
    params.not_after = epoch + now + VALIDITY;
}

/// Write `file` under `dir`, replacing it; a key (`secret`) is readable by its owner only.
fn write(dir: &Path, file: &str, bytes: &[u8], secret: bool) -> Result<(), DemoError> {
    let path = dir.join(file);
    let io = |source| DemoError::Io {
        action: "write",
        path: path.clone(),
        source,
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&path)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)
}

/// What a TLS client that trusts only the demo CA got from `addr` for `name` by SNI: the
/// SHA-256 of the leaf (hex) and the status of a `GET /` over that connection. A
/// certificate that is not the demo CA's for `name` fails the handshake.
pub(super) async fn tls_get(
    roots: Arc<RootCertStore>,
    addr: SocketAddr,
    name: &str,
) -> Result<(String, u16), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server_name = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(server_name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|der| hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref()))
            .ok_or("no certificate")?;
        let request = format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
        tls.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut head = Vec::new();
        let mut buf = [0u8; 512];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
            let n = tls.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(buf.get(..n).unwrap_or_default());
        }
        let status = String::from_utf8_lossy(&head)
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or("no HTTP status line")?;
        Ok::<_, String>((leaf, status))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()))?
        .map_err(|e| format!("https://{addr} ({name}): {e}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Try `probe` every poll interval until it succeeds or `timeout` passes: its value, or
/// its last error.
pub(super) async fn poll<T, F, Fut>(timeout: Duration, mut probe: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match probe().await {
            Ok(v) => return Ok(v),
            Err(e) if started.elapsed() >= timeout => {
                return Err(format!("not within {} s: {e}", timeout.as_secs()));
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// `reply` is a 307 to `location`.
fn redirected(reply: Result<Reply, String>, location: &str) -> Result<String, String> {
    let reply = reply?;
    reply.expect_status(307)?;
    let got = reply.header("location");
    if got != location {
        return Err(format!("expected Location: {location}, got {got:?}"));
    }
    Ok(format!("307, Location: {location}"))
}

/// `reply` is GRouter's own 503 for a route no allowed site can take.
fn no_endpoints(reply: Result<Reply, String>) -> Result<String, String> {
    let reply = reply?;
    reply.expect_status(503)?;
    let code = reply.header("x-cf-routererror");
    if code != "no_endpoints" {
        return Err(format!(
            "expected X-Cf-Routererror: no_endpoints, got {code:?}"
        ));
    }
    Ok("503, X-Cf-Routererror: no_endpoints".to_string())
}

/// The outcome of a case, then of undoing its write: a failed undo fails the case too,
/// since every later case assumes the initial state.
pub(super) fn with_undo(
    result: Result<String, String>,
    undo: Result<String, String>,
) -> Result<String, String> {
    match (result, undo) {
        (Ok(done), Ok(undone)) => Ok(format!("{done}; {undone}")),
        (Ok(_), Err(e)) => Err(format!("undoing it: {e}")),
        (Err(e), Ok(_)) => Err(e),
        (Err(e), Err(u)) => Err(format!("{e}; and undoing it: {u}")),
    }
}

impl Demo {
    /// `PUT path` with `body`, or `DELETE path` (`None`), at `site`'s admin API; the JSON
    /// of its 200.
    pub(super) async fn admin_write(
        &self,
        site: &Site,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        let method = if body.is_some() {
            http::Method::PUT
        } else {
            http::Method::DELETE
        };
        let verb = method.to_string();
        let reply = self
            .request(method, site.admin, None, path, Some(&self.token), body)
            .await?;
        if reply.status != 200 {
            return Err(format!(
                "{verb} {path} at {}: {} {}",
                site.node_id,
                reply.status,
                reply.body.trim()
            ));
        }
        serde_json::from_str(&reply.body).map_err(|e| format!("{verb} {path}: {e}"))
    }

    /// `GET http://site/` for `host`.
    async fn fetch(&self, site: &Site, host: &str) -> Result<Reply, String> {
        self.get(site.http, Some(host), "/", None).await
    }

    /// The status of `site`'s `/healthz`.
    async fn healthz(&self, site: &Site) -> Result<u16, String> {
        Ok(self.get(site.admin, None, "/healthz", None).await?.status)
    }

    /// The control-plane commands to try, for the summary.
    pub(super) fn control_summary(&self, gcf: &str) -> String {
        let mut out = String::new();
        let (Some(lon), Some(nyc), Some(sgp)) =
            (self.site("lon"), self.site("nyc"), self.site("sgp"))
        else {
            return out;
        };
        let curl =
            |site: &Site, host: &str| format!("curl -si -H 'Host: {host}' http://{}/", site.http);
        let _ = writeln!(
            out,
            "Control plane with gcf, targeted as above (any node takes a write for the whole mesh, \
             in force everywhere within 2 s):"
        );
        let steps: [(&str, Vec<String>); 4] = [
            (
                "Pin shop to region us: lon (eu) no longer serves it itself but proxies it to nyc",
                vec![
                    format!("{gcf} pin shop --regions us"),
                    curl(lon, SHOP),
                    format!("{gcf} unpin shop"),
                ],
            ),
            (
                "Pin blog to region eu, where no site runs it: 503, X-Cf-Routererror: no_endpoints",
                vec![
                    format!("{gcf} pin blog --regions eu"),
                    curl(lon, BLOG),
                    format!("{gcf} policies"),
                    format!("{gcf} unpin blog"),
                ],
            ),
            (
                "Drain site nyc: its /healthz answers 503 and it sends shop to lon",
                vec![
                    format!("{gcf} drain --site nyc"),
                    format!("curl -si http://{}/healthz", nyc.admin),
                    curl(nyc, SHOP),
                    format!("{gcf} undrain --site nyc"),
                ],
            ),
            (
                "Upload a certificate for shop at lon: sgp serves it by SNI (curl trusts only the demo CA)",
                vec![
                    format!(
                        "{gcf} upload-cert {SHOP} --cert {} --key {}",
                        self.quoted(SHOP_CERT),
                        self.quoted(SHOP_KEY)
                    ),
                    format!(
                        "curl -si --cacert {} --resolve {SHOP}:{port}:{ip} https://{SHOP}:{port}/",
                        self.quoted(CA_CERT),
                        port = sgp.https.port(),
                        ip = sgp.https.ip()
                    ),
                    format!("{gcf} certs"),
                    format!("{gcf} delete-cert {SHOP}"),
                    format!("{gcf} audit"),
                ],
            ),
        ];
        for (what, commands) in steps {
            let _ = writeln!(out, "  # {what}");
            for command in commands {
                let _ = writeln!(out, "  {command}");
            }
        }
        let _ = writeln!(
            out,
            "Each node serves HTTPS too ({}), with a default certificate for {DEFAULT_NAME} \
             and its {}/<site>/certs directory empty.",
            self.sites
                .iter()
                .map(|s| format!("{} {}", s.name, s.https))
                .collect::<Vec<_>>()
                .join(", "),
            shell_quote(&self.dir.display().to_string()),
        );
        let _ = writeln!(out);
        out
    }

    /// A file of the demo's TLS directory, quoted for a shell.
    fn quoted(&self, file: &str) -> String {
        shell_quote(&self.tls.path(file).display().to_string())
    }

    /// Run the control-plane cases, reporting each.
    pub(super) async fn check_control(
        &self,
        lon: &Site,
        nyc: &Site,
        sgp: &Site,
        report: &mut dyn FnMut(&str, Result<String, String>),
    ) {
        report(
            "pin (shop to us: lon proxies it to nyc, sgp redirects there)",
            self.check_pin_elsewhere(lon, nyc, sgp).await,
        );
        report(
            "pin (blog to eu, where nothing runs it: 503 at lon)",
            self.check_pin_nowhere(lon, nyc).await,
        );
        report(
            "drain (site nyc: /healthz 503, shop sent to lon)",
            self.check_drain(lon, nyc, sgp).await,
        );
        report(
            "certificate upload (at lon, served by SNI at sgp)",
            self.check_upload(lon, nyc, sgp).await,
        );
    }

    async fn check_pin_elsewhere(
        &self,
        lon: &Site,
        nyc: &Site,
        sgp: &Site,
    ) -> Result<String, String> {
        let path = format!("/v1/policies/routes/{SHOP}");
        let pinned = async {
            let written = Instant::now();
            self.admin_write(nyc, &path, Some(&json!({ "regions": ["us"] })))
                .await?;
            poll(PROPAGATION_WAIT, || async {
                served_by(self.fetch(lon, SHOP).await, "nyc")
            })
            .await
            .map_err(|e| format!("lon did not send shop to nyc: {e}"))?;
            let location = "http://shop.nyc.apps.example.com/";
            poll(PROPAGATION_WAIT, || async {
                redirected(self.fetch(sgp, SHOP).await, location)
            })
            .await
            .map_err(|e| format!("sgp did not redirect shop to nyc: {e}"))?;
            Ok(format!(
                "written at nyc; within {:.1} s lon proxies shop to nyc (X-Grouter-Site: nyc) and sgp answers 307 to {location}",
                written.elapsed().as_secs_f64()
            ))
        };
        let result = pinned.await;
        let undo = async {
            self.admin_write(nyc, &path, None).await?;
            poll(PROPAGATION_WAIT, || async {
                served_by(self.fetch(lon, SHOP).await, "lon")
            })
            .await
            .map(|_| "unpinned, lon serves it itself again".to_string())
        };
        with_undo(result, undo.await)
    }

    async fn check_pin_nowhere(&self, lon: &Site, nyc: &Site) -> Result<String, String> {
        let path = format!("/v1/policies/routes/{BLOG}");
        let pinned = async {
            let written = Instant::now();
            self.admin_write(nyc, &path, Some(&json!({ "regions": ["eu"] })))
                .await?;
            let detail = poll(PROPAGATION_WAIT, || async {
                no_endpoints(self.fetch(lon, BLOG).await)
            })
            .await?;
            Ok(format!(
                "written at nyc; within {:.1} s lon answers {detail}",
                written.elapsed().as_secs_f64()
            ))
        };
        let result = pinned.await;
        let undo = async {
            self.admin_write(nyc, &path, None).await?;
            poll(PROPAGATION_WAIT, || async {
                served_by(self.fetch(lon, BLOG).await, "nyc")
            })
            .await
            .map(|_| "unpinned, lon proxies it to nyc again".to_string())
        };
        with_undo(result, undo.await)
    }

    async fn check_drain(&self, lon: &Site, nyc: &Site, sgp: &Site) -> Result<String, String> {
        let path = "/v1/policies/sites/nyc";
        let drained = async {
            let written = Instant::now();
            self.admin_write(sgp, path, Some(&json!({ "drained": true })))
                .await?;
            poll(PROPAGATION_WAIT, || async {
                match self.healthz(nyc).await? {
                    503 => Ok(()),
                    other => Err(format!("nyc's /healthz answered {other}")),
                }
            })
            .await?;
            poll(PROPAGATION_WAIT, || async {
                served_by(self.fetch(nyc, SHOP).await, "lon")
            })
            .await
            .map_err(|e| format!("nyc did not send shop to lon: {e}"))?;
            // lon's view: nyc is drained in /v1/sites.
            let sites = self.admin_json(lon, "/v1/sites").await?;
            let listed = sites["sites"]
                .as_array()
                .and_then(|a| a.iter().find(|s| s["site"] == "nyc"))
                .map(|s| s["drained"] == true);
            if listed != Some(true) {
                return Err(format!(
                    "lon's /v1/sites does not list nyc drained: {sites}"
                ));
            }
            Ok(format!(
                "written at sgp; within {:.1} s nyc's /healthz is 503 and nyc proxies shop to lon",
                written.elapsed().as_secs_f64()
            ))
        };
        let result = drained.await;
        let undo = async {
            self.admin_write(sgp, path, None).await?;
            poll(PROPAGATION_WAIT, || async {
                match self.healthz(nyc).await? {
                    200 => served_by(self.fetch(nyc, SHOP).await, "nyc"),
                    other => Err(format!("nyc's /healthz answered {other}")),
                }
            })
            .await
            .map(|_| "undrained, nyc is healthy and serves shop again".to_string())
        };
        with_undo(result, undo.await)
    }

    async fn check_upload(&self, lon: &Site, nyc: &Site, sgp: &Site) -> Result<String, String> {
        let roots = self.tls.roots.clone();
        let probe = || tls_get(roots.clone(), sgp.https, SHOP);
        // Before: sgp serves its default certificate for shop, which a client refuses.
        match probe().await {
            Err(e) if e.contains("certificate") => {}
            Err(e) => return Err(format!("before the upload: {e}")),
            Ok((leaf, _)) => {
                return Err(format!(
                    "before the upload sgp already serves a demo CA certificate for shop ({leaf})"
                ));
            }
        }
        let path = format!("/v1/certs/{SHOP}");
        let uploaded = async {
            let written = Instant::now();
            let reply = self
                .admin_write(lon, &path, Some(&self.tls.upload_body()?))
                .await?;
            let want = reply["fingerprint_sha256"]
                .as_str()
                .map(str::to_ascii_lowercase)
                .ok_or_else(|| format!("no fingerprint_sha256 in {reply}"))?;
            let (_, status) = poll(PROPAGATION_WAIT, || async {
                let (leaf, status) = probe().await?;
                if leaf == want {
                    Ok((leaf, status))
                } else {
                    Err(format!("sgp serves {leaf}, not the upload {want}"))
                }
            })
            .await?;
            Ok(format!(
                "written at lon; within {:.1} s sgp's HTTPS serves it for {SHOP} (verified, sha-256 {}…; GET / answered {status})",
                written.elapsed().as_secs_f64(),
                want.get(..12).unwrap_or(&want)
            ))
        };
        let result = uploaded.await;
        let undo = async {
            // nyc takes the delete once the upload has reached it (until then: 404), which
            // may be after sgp serves it.
            poll(PROPAGATION_WAIT, || self.admin_write(nyc, &path, None)).await?;
            poll(PROPAGATION_WAIT, || async {
                match probe().await {
                    Err(e) if e.contains("certificate") => Ok(()),
                    Err(e) => Err(e),
                    Ok((leaf, _)) => Err(format!("sgp still serves {leaf}")),
                }
            })
            .await
            .map(|_| "deleted at nyc, sgp serves its default certificate again".to_string())
        };
        with_undo(result, undo.await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_certificates_are_a_chain_of_the_demo_ca_with_private_keys() {
        let dir = std::env::temp_dir().join(format!(
            "grouter-demo-tls-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let tls = DemoTls::create(&dir).unwrap();
        let body = tls.upload_body().unwrap();
        let chain = body["cert_pem"].as_str().unwrap();
        assert_eq!(
            chain.matches("BEGIN CERTIFICATE").count(),
            2,
            "leaf, then the CA"
        );
        let key_mode = fs::metadata(tls.path(SHOP_KEY)).unwrap().permissions();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(key_mode.mode() & 0o777, 0o600);
        assert_eq!(tls.roots.len(), 1);
        // The upload passes the checks a node makes.
        let key = body["key_pem"].as_str().unwrap();
        let checked = grouter::tls::validate_upload(SHOP, chain, key, SystemTime::now());
        fs::remove_dir_all(&dir).unwrap();
        assert!(checked.is_ok(), "{checked:?}");
    }

    #[test]
    fn an_undo_that_fails_fails_the_case() {
        let ok = |s: &str| Ok::<String, String>(s.to_string());
        let err = |s: &str| Err::<String, String>(s.to_string());
        assert_eq!(with_undo(ok("a"), ok("b")), ok("a; b"));
        assert_eq!(with_undo(ok("a"), err("b")), err("undoing it: b"));
        assert_eq!(with_undo(err("a"), ok("b")), err("a"));
        assert_eq!(with_undo(err("a"), err("b")), err("a; and undoing it: b"));
    }
}
