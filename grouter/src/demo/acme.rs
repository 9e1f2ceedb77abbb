//! The demo's ACME CA: Debian's `pebble`, resolving names through `pebble-challtestsrv`
//! (which answers 127.0.0.1 for every name) and validating HTTP-01 and TLS-ALPN-01 on lon's
//! ports. The nodes order [`NAME`] — served at sgp only — so the CA's validation lands at
//! lon, which answers the challenge another node published: one order for the whole mesh,
//! the certificate served by every node.
//!
//! Owns: the two processes, their files under `acme/` in the demo directory, and the check
//! of the result. Must never: make ACME a condition of the demo (without `pebble` the demo
//! runs without it and says so), or order anything but [`NAME`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tokio::time::Instant;

use super::{DemoError, Proc, Site, find_program};

/// The one name the demo's nodes order (`acme.domains`).
pub(super) const NAME: &str = "cdn.apps.example.com";
/// How long pebble has to serve its directory.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the mesh has to get and serve the certificate.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(60);

/// Pebble and its DNS, running.
#[derive(Debug)]
pub(super) struct DemoAcme {
    pebble: Proc,
    dns: Proc,
    directory: String,
    api_cert: PathBuf,
    management: SocketAddr,
    log: PathBuf,
}

/// A port of 127.0.0.1 free now.
pub(super) fn free_port() -> Result<u16, DemoError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| DemoError::Start {
        what: "a free port for pebble".into(),
        source,
    })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|source| DemoError::Start {
            what: "a free port for pebble".into(),
            source,
        })
}

fn write(path: &Path, text: &str) -> Result<(), DemoError> {
    std::fs::write(path, text).map_err(|source| DemoError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    })
}

impl DemoAcme {
    /// Start pebble validating on `http_port` and `https_port` of 127.0.0.1 (lon's); `None`
    /// (and a note) when pebble is not installed.
    pub(super) async fn start(
        dir: &Path,
        http_port: u16,
        https_port: u16,
    ) -> Result<Option<DemoAcme>, DemoError> {
        let (Some(pebble_bin), Some(dns_bin)) =
            (find_program("pebble"), find_program("pebble-challtestsrv"))
        else {
            eprintln!(
                "grouter demo: pebble not found, so no ACME example (apt-get install -y pebble; deploy/demo.sh installs it)"
            );
            return Ok(None);
        };
        let dir = dir.join("acme");
        std::fs::create_dir_all(&dir).map_err(|source| DemoError::Io {
            action: "create",
            path: dir.clone(),
            source,
        })?;
        // Pebble's own API certificate (the package ships none).
        let key = rcgen::KeyPair::generate().map_err(|e| DemoError::Start {
            what: format!("pebble's key: {e}"),
            source: std::io::Error::other("rcgen"),
        })?;
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .and_then(|p| p.self_signed(&key))
            .map_err(|e| DemoError::Start {
                what: format!("pebble's certificate: {e}"),
                source: std::io::Error::other("rcgen"),
            })?;
        let api_cert = dir.join("pebble-api.pem");
        write(&api_cert, &cert.pem())?;
        write(&dir.join("pebble-api.key"), &key.serialize_pem())?;
        let (dns_port, dns_admin, api, management) =
            (free_port()?, free_port()?, free_port()?, free_port()?);
        let mut cmd = Command::new(dns_bin);
        cmd.args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-management", &format!("127.0.0.1:{dns_admin}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""]);
        let (dns, _) = Proc::spawn(
            "pebble-challtestsrv".into(),
            cmd,
            dir.join("dns.log"),
            |_| None,
        )?;
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{api}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": api_cert,
            "privateKey": dir.join("pebble-api.key"),
            "httpPort": http_port,
            "tlsPort": https_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        write(&dir.join("pebble.json"), &config.to_string())?;
        let log = dir.join("pebble.log");
        // Pebble logs to stdout: through a shell, into the log file the demo shows.
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg("exec \"$0\" -config \"$1\" -dnsserver \"$2\" 1>&2")
            .arg(&pebble_bin)
            .arg(dir.join("pebble.json"))
            .arg(format!("127.0.0.1:{dns_port}"))
            .env("PEBBLE_VA_NOSLEEP", "1");
        let (pebble, _) = Proc::spawn("pebble".into(), cmd, log.clone(), |_| None)?;
        let acme = DemoAcme {
            pebble,
            dns,
            directory: format!("https://127.0.0.1:{api}/dir"),
            api_cert,
            management: SocketAddr::from(([127, 0, 0, 1], management)),
            log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while !std::fs::read_to_string(&acme.log)
            .is_ok_and(|l| l.contains("ACME directory available"))
        {
            if Instant::now() >= deadline {
                return Err(DemoError::Timeout {
                    what: format!("pebble to listen (see {})", acme.log.display()),
                    timeout: START_TIMEOUT,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Some(acme))
    }

    /// The nodes' `[acme]` section.
    pub(super) fn section(&self) -> String {
        format!(
            "\n[acme]\ndirectory_url = \"{}\"\nca_roots = {:?}\ncontact = [\"mailto:ops@example.com\"]\ndomains = [\"{NAME}\"]\n",
            self.directory,
            self.api_cert.display().to_string(),
        )
    }

    /// The line of the demo's summary.
    pub(super) fn summary(&self) -> String {
        format!(
            "ACME: {NAME} is ordered once for the mesh from pebble ({}; log {})",
            self.directory,
            self.log.display()
        )
    }

    /// Orders pebble created.
    fn orders(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|l| l.lines().filter(|l| l.contains("Added order")).count())
            .unwrap_or(0)
    }

    /// Pebble's issuing roots (new at every start).
    async fn roots(&self) -> Result<rustls::RootCertStore, String> {
        let api = std::fs::read(&self.api_cert).map_err(|e| e.to_string())?;
        let mut trust = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut &api[..]) {
            trust
                .add(c.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(trust)
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        let pem = client
            .get(format!("https://{}/roots/0", self.management))
            .send()
            .await
            .map_err(|e| format!("pebble's roots: {e}"))?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut pem.as_bytes()) {
            roots
                .add(c.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        Ok(roots)
    }

    /// The check: every node serves [`NAME`] a certificate chaining to pebble's root, after
    /// exactly one order.
    pub(super) async fn check(&self, sites: &[&Site]) -> Result<String, String> {
        let roots = std::sync::Arc::new(self.roots().await?);
        let started = Instant::now();
        for site in sites {
            loop {
                match super::control::tls_get(roots.clone(), site.https, NAME).await {
                    Ok(_) => break,
                    Err(e) if started.elapsed() >= ISSUE_TIMEOUT => {
                        return Err(format!(
                            "{} does not serve pebble's certificate: {e}",
                            site.name
                        ));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
        match self.orders() {
            1 => Ok(format!(
                "one order at pebble; served by {} after {:.1} s",
                sites.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
                started.elapsed().as_secs_f64()
            )),
            n => Err(format!(
                "{n} orders at pebble, not 1 (see {})",
                self.log.display()
            )),
        }
    }

    /// Stop both processes.
    pub(super) async fn stop(mut self) {
        self.pebble.ask_to_stop();
        self.dns.ask_to_stop();
        let deadline = Instant::now() + Duration::from_secs(5);
        self.pebble.wait_stopped(deadline).await;
        self.dns.wait_stopped(deadline).await;
    }
}
