//! The way to the ACME CA: an HTTP client for `instant-acme` that bounds what a CA can make
//! us hold or wait for, and the check of what it issues.
//!
//! Owns: every request to the CA (timeouts, a cap on answer size, the CA's extra roots),
//! the private key and CSR of an order, and [`accept`], the check that an issued chain is
//! for the name we ordered and matches our key before anything is stored.
//!
//! Must never: follow a redirect, read more than [`MAX_ANSWER`] bytes of an answer, wait
//! longer than [`CALL_TIMEOUT`] for one, or put a key in an error or a log line.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};

/// Longest answer read from the CA (directories, orders and chains are a few KiB).
pub const MAX_ANSWER: usize = 1 << 20;
/// Longest wait for one answer, connection included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a connection to the CA.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the CA could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// `acme.ca_roots` holds no usable certificate.
    #[error("acme.ca_roots: {0}")]
    Roots(String),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Setup(String),
}

/// The transport `instant-acme` sends through. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Transport {
    http: reqwest::Client,
}

impl Transport {
    /// A client trusting the system's roots and `extra_roots` (PEM).
    pub fn new(extra_roots: Option<&[u8]>) -> Result<Transport, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if let Some(pem) = extra_roots {
            let mut added = 0;
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                let cert = cert.map_err(|e| ClientError::Roots(e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| ClientError::Roots(e.to_string()))?;
                added += 1;
            }
            if added == 0 {
                return Err(ClientError::Roots("no certificate in the file".into()));
            }
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Setup(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("grouter/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(Transport { http })
    }

    async fn send(
        http: reqwest::Client,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Result<BytesResponse, instant_acme::Error> {
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(never) => match never {},
        };
        let url = parts.uri.to_string();
        let mut resp = http
            .request(parts.method, &url)
            .headers(parts.headers)
            .body(body)
            .send()
            .await
            .map_err(|e| other(format!("{url}: {}", chain(&e))))?;
        let mut answer = http::Response::builder().status(resp.status());
        if let Some(h) = answer.headers_mut() {
            *h = resp.headers().clone();
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| other(format!("{url}: {}", chain(&e))))?
        {
            if bytes.len() + chunk.len() > MAX_ANSWER {
                return Err(other(format!(
                    "{url}: answer larger than {MAX_ANSWER} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        let answer = answer
            .body(Full::new(Bytes::from(bytes)))
            .map_err(instant_acme::Error::Http)?;
        Ok(BytesResponse::from(answer))
    }
}

impl HttpClient for Transport {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        Box::pin(Transport::send(self.http.clone(), req))
    }
}

fn other(msg: String) -> instant_acme::Error {
    instant_acme::Error::Other(msg.into())
}

/// An error with its sources, on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out = format!("{out}: {s_text}");
        }
        source = s.source();
    }
    out
}

/// A fresh ECDSA P-256 key for a certificate (PKCS#8 PEM).
pub fn new_key() -> Result<String, String> {
    rcgen::KeyPair::generate()
        .map(|k| k.serialize_pem())
        .map_err(|e| format!("key generation: {e}"))
}

/// The DER CSR for `name` signed by `key_pem`.
pub fn csr(name: &str, key_pem: &str) -> Result<Vec<u8>, String> {
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(|_| "the order's key does not parse")?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])
        .map_err(|e| format!("CSR for {name}: {e}"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| format!("CSR for {name}: {e}"))?;
    Ok(csr.der().to_vec())
}

/// Accept what the CA issued for `name` only if it is a chain for `name`, valid now, whose
/// leaf matches `key_pem` (the checks of an upload, [`crate::tls::validate_upload`]).
pub fn accept(name: &str, chain_pem: &str, key_pem: &str) -> Result<(), String> {
    crate::tls::validate_upload(name, chain_pem, key_pem, SystemTime::now())
        .map(|_| ())
        .map_err(|e| format!("the CA's certificate was refused: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::FromDer as _;

    fn issue(names: &[&str], key: &rcgen::KeyPair) -> String {
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        params.self_signed(key).unwrap().pem()
    }

    #[test]
    fn a_certificate_for_the_wrong_name_or_another_key_is_refused() {
        let key_pem = new_key().unwrap();
        let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
        let good = issue(&["a.apps.example.com"], &key);
        accept("a.apps.example.com", &good, &key_pem).unwrap();

        let wrong_name = issue(&["evil.example.com"], &key);
        let why = accept("a.apps.example.com", &wrong_name, &key_pem).unwrap_err();
        assert!(why.contains("refused"), "{why}");

        let other_key = rcgen::KeyPair::generate().unwrap();
        let wrong_key = issue(&["a.apps.example.com"], &other_key);
        let why = accept("a.apps.example.com", &wrong_key, &key_pem).unwrap_err();
        assert!(why.contains("refused"), "{why}");
        assert!(!why.contains("PRIVATE KEY"), "no key in the reason: {why}");

        let why = accept("a.apps.example.com", "garbage", &key_pem).unwrap_err();
        assert!(why.contains("refused"), "{why}");
    }

    #[test]
    fn the_csr_names_exactly_the_host() {
        let key_pem = new_key().unwrap();
        let der = csr("a.apps.example.com", &key_pem).unwrap();
        let (_, req) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
        let names: Vec<String> = req
            .requested_extensions()
            .into_iter()
            .flatten()
            .filter_map(|e| match e {
                x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) => {
                    Some(format!("{:?}", san.general_names))
                }
                _ => None,
            })
            .collect();
        assert_eq!(names, [r#"[DNSName("a.apps.example.com")]"#]);
        assert!(csr("a.apps.example.com", "not a key").is_err());
    }
}
