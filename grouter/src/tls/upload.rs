//! Certificates that arrive from the control plane (uploads through `PUT /v1/certs/{host}`,
//! ACME): the checks a PEM chain and key pass before anything is stored or served, and the
//! metadata the admin API shows for every served certificate.
//!
//! Owns:
//! - [`validate_upload`]: host name, PEM syntax and size, chain order and signatures, the
//!   leaf's names and validity period, the key's format and that it belongs to the leaf;
//!   every refusal an [`UploadError`] naming the request field at fault;
//! - [`CertMeta`]: what is shown of a certificate (names, expiry, SHA-256 fingerprint), and
//!   [`rfc3339`] for its dates.
//!
//! Must never:
//! - put key material into an error, a log line or a `Debug` output (errors say what is
//!   wrong, never quote the bytes; a private key pasted into `cert_pem` is refused without
//!   being echoed);
//! - panic or allocate without bound on hostile input: both PEM fields are capped
//!   ([`MAX_PEM_BYTES`]) before they are parsed, the chain at [`MAX_CHAIN`] certificates.
//!
//! Chain checks: each certificate's issuer name must be the next one's subject name (byte
//! for byte, as webpki compares them) and its signature must verify with the next one's key
//! (x509-parser's `verify`, on ring). A signature algorithm ring cannot check is let through
//! on the names alone. The chain is not checked against any trust store: operators may
//! upload certificates of a private CA.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{Error as RustlsError, InconsistentKeys};
use x509_parser::certificate::X509Certificate;
use x509_parser::error::X509Error;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer as _;

use super::{Host, REASON_MAX_NAMES, dns_names, is_dns_name, names_for_reason, pem_reason};

/// The most bytes `cert_pem` and `key_pem` may each hold (a chain of ten 4096-bit RSA
/// certificates is about 20 KiB).
pub const MAX_PEM_BYTES: usize = 64 * 1024;
/// The most certificates `cert_pem` may hold (leaf and intermediates; real chains have 2–4).
pub const MAX_CHAIN: usize = 10;
/// The longest section label a refusal quotes.
const MAX_LABEL: usize = 40;

/// The request field an [`UploadError`] is about, as the admin API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadField {
    /// The `{host}` of `PUT /v1/certs/{host}`.
    Host,
    /// The chain, leaf first.
    CertPem,
    /// The private key.
    KeyPem,
}

impl UploadField {
    /// `"host"`, `"cert_pem"` or `"key_pem"`.
    pub fn as_str(self) -> &'static str {
        match self {
            UploadField::Host => "host",
            UploadField::CertPem => "cert_pem",
            UploadField::KeyPem => "key_pem",
        }
    }
}

/// Why a certificate upload is refused. Messages are lower-case, say what to fix and never
/// hold key material; [`UploadError::field`] names the field at fault. Positions in the
/// chain count from 1 (the leaf).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UploadError {
    /// The host is not a lower-case DNS name or `*.<domain>`.
    #[error(
        "{0:?} is not a host name (letters, digits, '-' and '_' in dot-separated labels; a wildcard only as a whole first label, *.<domain>)"
    )]
    BadHost(String),
    /// `cert_pem` is empty or blank.
    #[error("cert_pem is empty")]
    EmptyCert,
    /// `cert_pem` is over [`MAX_PEM_BYTES`].
    #[error("cert_pem is {size} bytes; at most {max} are accepted")]
    CertTooLarge {
        /// Its size.
        size: usize,
        /// The cap.
        max: usize,
    },
    /// `cert_pem` is not well-formed PEM.
    #[error("cert_pem is not valid PEM: {0}")]
    CertPem(&'static str),
    /// `cert_pem` holds a private key (refused, so that a key never travels as a
    /// certificate).
    #[error(
        "cert_pem holds a private key; send the key in key_pem and only certificates in cert_pem"
    )]
    KeyInCertPem,
    /// `cert_pem` holds a section other than `CERTIFICATE`.
    #[error("cert_pem holds a {0:?} section; only CERTIFICATE sections belong there")]
    UnexpectedSection(String),
    /// `cert_pem` holds no `CERTIFICATE` section.
    #[error("cert_pem holds no certificate (a PEM CERTIFICATE section, leaf first)")]
    NoCertificate,
    /// `cert_pem` holds more than [`MAX_CHAIN`] certificates.
    #[error("cert_pem holds {count} certificates; at most {max} are accepted")]
    TooManyCertificates {
        /// How many it holds.
        count: usize,
        /// The cap.
        max: usize,
    },
    /// A certificate of the chain does not parse.
    #[error("certificate {position} of cert_pem is not a valid X.509 certificate: {reason}")]
    BadCertificate {
        /// Its position in the chain, from 1.
        position: usize,
        /// What the parser said.
        reason: String,
    },
    /// The leaf's subjectAltName extension does not parse.
    #[error("the leaf certificate has an invalid subjectAltName extension: {0}")]
    BadSan(String),
    /// The leaf does not cover the host.
    #[error("the leaf certificate is not valid for {host} ({names})")]
    HostNotCovered {
        /// The host of the upload.
        host: String,
        /// The leaf's DNS names, for the operator.
        names: String,
    },
    /// The leaf's validity ended before now.
    #[error("the leaf certificate expired at {not_after}")]
    Expired {
        /// Its notAfter, RFC 3339.
        not_after: String,
    },
    /// The leaf's validity starts after now.
    #[error("the leaf certificate is not valid before {not_before}")]
    NotYetValid {
        /// Its notBefore, RFC 3339.
        not_before: String,
    },
    /// A certificate is not followed by its issuer.
    #[error("certificate {position} of cert_pem is not issued by certificate {next}: the chain must be leaf first, each certificate followed by its issuer", next = position + 1)]
    ChainOrder {
        /// The position of the certificate whose issuer does not follow it, from 1.
        position: usize,
    },
    /// A certificate's signature does not verify with the next certificate's key.
    #[error("the signature of certificate {position} of cert_pem does not verify with the key of certificate {next}", next = position + 1)]
    ChainSignature {
        /// The position of the certificate whose signature fails, from 1.
        position: usize,
    },
    /// `key_pem` is empty or blank.
    #[error("key_pem is empty")]
    EmptyKey,
    /// `key_pem` is over [`MAX_PEM_BYTES`].
    #[error("key_pem is {size} bytes; at most {max} are accepted")]
    KeyTooLarge {
        /// Its size.
        size: usize,
        /// The cap.
        max: usize,
    },
    /// `key_pem` is not well-formed PEM.
    #[error("key_pem is not valid PEM: {0}")]
    KeyPem(&'static str),
    /// `key_pem` holds no private key.
    #[error(
        "key_pem holds no private key (PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY expected)"
    )]
    NoKey,
    /// `key_pem` holds more than one private key.
    #[error("key_pem holds {0} private keys; send exactly one, the leaf certificate's")]
    SeveralKeys(usize),
    /// `key_pem` holds an encrypted private key.
    #[error("key_pem holds an encrypted private key; send it unencrypted")]
    EncryptedKey,
    /// `key_pem` holds a private key in a format other than PKCS#8, PKCS#1 or SEC1.
    #[error(
        "key_pem holds a {0:?} section; PKCS#8 (PRIVATE KEY), PKCS#1 (RSA PRIVATE KEY) or SEC1 (EC PRIVATE KEY) expected"
    )]
    KeyFormat(String),
    /// The key parses but rustls cannot sign with it.
    #[error("key_pem is not a usable private key (RSA, ECDSA P-256/P-384 or Ed25519 expected)")]
    UnusableKey,
    /// The key is not the leaf's.
    #[error("the private key in key_pem does not match the leaf certificate")]
    KeyMismatch,
    /// Whether the key is the leaf's could not be checked.
    #[error("cannot check that the private key in key_pem matches the leaf certificate")]
    KeyUnchecked,
    /// rustls refused the leaf's public key.
    #[error("the leaf certificate is not usable: {0}")]
    UnusableCertificate(String),
}

impl UploadError {
    /// The request field at fault: `"host"`, `"cert_pem"` or `"key_pem"`.
    pub fn field(&self) -> &'static str {
        self.upload_field().as_str()
    }

    /// [`UploadError::field`] as a type.
    pub fn upload_field(&self) -> UploadField {
        use UploadError as E;
        match self {
            E::BadHost(_) | E::HostNotCovered { .. } => UploadField::Host,
            E::EmptyCert
            | E::CertTooLarge { .. }
            | E::CertPem(_)
            | E::KeyInCertPem
            | E::UnexpectedSection(_)
            | E::NoCertificate
            | E::TooManyCertificates { .. }
            | E::BadCertificate { .. }
            | E::BadSan(_)
            | E::Expired { .. }
            | E::NotYetValid { .. }
            | E::ChainOrder { .. }
            | E::ChainSignature { .. }
            | E::UnusableCertificate(_) => UploadField::CertPem,
            E::EmptyKey
            | E::KeyTooLarge { .. }
            | E::KeyPem(_)
            | E::NoKey
            | E::SeveralKeys(_)
            | E::EncryptedKey
            | E::KeyFormat(_)
            | E::UnusableKey
            | E::KeyMismatch
            | E::KeyUnchecked => UploadField::KeyPem,
        }
    }
}

/// What is shown of a served certificate: never key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertMeta {
    /// The name it is served for, lower-case: `shop.example.com` or `*.example.com`.
    pub host: String,
    /// The leaf's DNS subjectAltNames, lower-case, in certificate order.
    pub sans: Vec<String>,
    /// The leaf's notBefore.
    pub not_before: SystemTime,
    /// The leaf's notAfter.
    pub not_after: SystemTime,
    /// SHA-256 of the leaf's DER, lower-case hex without separators.
    pub fingerprint_sha256: String,
}

impl CertMeta {
    /// [`CertMeta::not_after`] as RFC 3339 in UTC (`2026-03-01T12:00:00Z`).
    pub fn not_after_rfc3339(&self) -> String {
        rfc3339(self.not_after)
    }

    /// The metadata of a parsed leaf certificate served for `host`.
    pub(super) fn of_leaf(host: String, leaf_der: &[u8], leaf: &X509Certificate<'_>) -> CertMeta {
        let sans = leaf
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        CertMeta {
            host,
            sans,
            not_before: system_time(leaf.validity().not_before.timestamp()),
            not_after: system_time(leaf.validity().not_after.timestamp()),
            fingerprint_sha256: sha256_hex(leaf_der),
        }
    }
}

/// A checked chain and key, ready to serve.
pub(super) struct Checked {
    /// What the store keys it by.
    pub(super) host: Host,
    /// Chain and signer.
    pub(super) key: CertifiedKey,
    /// Its metadata.
    pub(super) meta: CertMeta,
}

/// Check an upload for `host` (lower-cased here; `*.domain` for a wildcard): `cert_pem` is a
/// PEM chain, leaf first, each certificate followed by its issuer; `key_pem` is the leaf's
/// private key (PKCS#8, PKCS#1 or SEC1, unencrypted); the leaf covers `host` (a wildcard SAN
/// covers one label; a wildcard host needs that very wildcard SAN) and is valid at `now`.
/// Returns what would be shown of it; nothing is kept.
pub fn validate_upload(
    host: &str,
    cert_pem: &str,
    key_pem: &str,
    now: SystemTime,
) -> Result<CertMeta, UploadError> {
    let provider = rustls::crypto::ring::default_provider();
    check(&provider, host, cert_pem, key_pem, Some(now)).map(|checked| checked.meta)
}

/// [`validate_upload`], keeping the signer. `now: None` skips the validity period (a node
/// applying a replicated certificate serves it whatever its own clock says, as it does a
/// file, so that every node serves the same certificate).
pub(super) fn check(
    provider: &CryptoProvider,
    host: &str,
    cert_pem: &str,
    key_pem: &str,
    now: Option<SystemTime>,
) -> Result<Checked, UploadError> {
    let host = upload_host(host)?;
    let chain = parse_chain(cert_pem)?;
    let parsed = chain
        .iter()
        .enumerate()
        .map(|(i, der)| parse_certificate(i + 1, der))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(leaf) = parsed.first() else {
        return Err(UploadError::NoCertificate);
    };

    let names = dns_names(leaf).map_err(|e| UploadError::BadSan(e.to_string()))?;
    if !names.iter().any(|san| host.covered_by(san)) {
        return Err(UploadError::HostNotCovered {
            host: host.to_string(),
            names: names_for_reason(&names, REASON_MAX_NAMES),
        });
    }
    if let Some(now) = now {
        let validity = leaf.validity();
        let not_before = system_time(validity.not_before.timestamp());
        let not_after = system_time(validity.not_after.timestamp());
        if now > not_after {
            return Err(UploadError::Expired {
                not_after: rfc3339(not_after),
            });
        }
        if now < not_before {
            return Err(UploadError::NotYetValid {
                not_before: rfc3339(not_before),
            });
        }
    }
    check_chain(&parsed)?;
    let meta = CertMeta::of_leaf(host.to_string(), &chain[0], leaf);
    drop(parsed);

    // The key's bytes go only to the parser and the signer.
    let key = parse_key(key_pem)?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|_| UploadError::UnusableKey)?;
    let key = CertifiedKey::new(chain, signer);
    match key.keys_match() {
        Ok(()) => Ok(Checked { host, key, meta }),
        Err(RustlsError::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(UploadError::KeyMismatch)
        }
        Err(RustlsError::InconsistentKeys(InconsistentKeys::Unknown)) => {
            Err(UploadError::KeyUnchecked)
        }
        Err(e) => Err(UploadError::UnusableCertificate(e.to_string())),
    }
}

/// The host of an upload: lower-cased, `*.<domain>` a wildcard.
pub(super) fn upload_host(host: &str) -> Result<Host, UploadError> {
    let lower = host.to_ascii_lowercase();
    let parsed = match lower.strip_prefix("*.") {
        Some(domain) => Host::Wildcard(domain.to_string()),
        None => Host::Exact(lower.clone()),
    };
    let name = match &parsed {
        Host::Exact(name) | Host::Wildcard(name) => name,
    };
    if name.contains('*') || !is_dns_name(name) {
        return Err(UploadError::BadHost(host.chars().take(300).collect()));
    }
    Ok(parsed)
}

/// The `BEGIN` labels of a PEM text, as the PEM parser finds them (a line, ended by `\n` or
/// `\r`, starting with `-----BEGIN `), up to the closing dashes.
fn begin_labels(text: &str) -> impl Iterator<Item = &str> {
    text.split(['\n', '\r']).filter_map(|line| {
        let rest = line.strip_prefix("-----BEGIN ")?;
        Some(rest.split("-----").next().unwrap_or(rest).trim())
    })
}

/// A label fit to quote: printable ASCII, at most [`MAX_LABEL`] characters.
fn quotable(label: &str) -> String {
    label
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(MAX_LABEL)
        .collect()
}

/// The certificates of `cert_pem`, in order. Text outside PEM sections (OpenSSL's "Bag
/// Attributes" and "subject=" lines) is ignored; sections other than CERTIFICATE are refused.
fn parse_chain(cert_pem: &str) -> Result<Vec<CertificateDer<'static>>, UploadError> {
    if cert_pem.len() > MAX_PEM_BYTES {
        return Err(UploadError::CertTooLarge {
            size: cert_pem.len(),
            max: MAX_PEM_BYTES,
        });
    }
    if cert_pem.trim().is_empty() {
        return Err(UploadError::EmptyCert);
    }
    // Anywhere, not only in a well-formed BEGIN line: base64 has no spaces, so this is a key
    // section, however mangled, and it must not travel or be stored as a certificate.
    if cert_pem.contains("PRIVATE KEY") {
        return Err(UploadError::KeyInCertPem);
    }
    for label in begin_labels(cert_pem) {
        if label != "CERTIFICATE" {
            return Err(UploadError::UnexpectedSection(quotable(label)));
        }
    }
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| UploadError::CertPem(pem_reason(&e)))?;
    if chain.is_empty() {
        return Err(UploadError::NoCertificate);
    }
    if chain.len() > MAX_CHAIN {
        return Err(UploadError::TooManyCertificates {
            count: chain.len(),
            max: MAX_CHAIN,
        });
    }
    Ok(chain)
}

/// One certificate of the chain; trailing bytes after its DER are refused.
fn parse_certificate<'a>(
    position: usize,
    der: &'a CertificateDer<'_>,
) -> Result<X509Certificate<'a>, UploadError> {
    let bad = |reason: String| UploadError::BadCertificate { position, reason };
    match X509Certificate::from_der(der.as_ref()) {
        Ok((rest, _)) if !rest.is_empty() => {
            Err(bad(format!("{} bytes follow the certificate", rest.len())))
        }
        Ok((_, cert)) => Ok(cert),
        Err(e) => Err(bad(e.to_string())),
    }
}

/// Each certificate followed by its issuer: names equal, signature verified.
fn check_chain(parsed: &[X509Certificate<'_>]) -> Result<(), UploadError> {
    for (i, pair) in parsed.windows(2).enumerate() {
        let [cert, issuer] = pair else { continue };
        let position = i + 1;
        if cert.issuer().as_raw() != issuer.subject().as_raw() {
            return Err(UploadError::ChainOrder { position });
        }
        match cert.verify_signature(Some(issuer.public_key())) {
            Ok(()) => {}
            // ring cannot check it (say, RSA-PSS with SHA-1): the names matched.
            Err(X509Error::SignatureUnsupportedAlgorithm) => {
                tracing::debug!(position, "chain signature algorithm not checked");
            }
            Err(_) => return Err(UploadError::ChainSignature { position }),
        }
    }
    Ok(())
}

/// The one private key of `key_pem`. Text outside PEM sections and non-key sections (a
/// certificate pasted along) are ignored.
fn parse_key(key_pem: &str) -> Result<PrivateKeyDer<'static>, UploadError> {
    if key_pem.len() > MAX_PEM_BYTES {
        return Err(UploadError::KeyTooLarge {
            size: key_pem.len(),
            max: MAX_PEM_BYTES,
        });
    }
    if key_pem.trim().is_empty() {
        return Err(UploadError::EmptyKey);
    }
    // OpenSSL's legacy encryption marks the section with a `Proc-Type: 4,ENCRYPTED` header.
    if key_pem
        .lines()
        .any(|line| line.trim_start().starts_with("Proc-Type:") && line.contains("ENCRYPTED"))
    {
        return Err(UploadError::EncryptedKey);
    }
    let mut keys = 0;
    for label in begin_labels(key_pem) {
        match label {
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" => keys += 1,
            "ENCRYPTED PRIVATE KEY" => return Err(UploadError::EncryptedKey),
            other if other.contains("PRIVATE KEY") => {
                return Err(UploadError::KeyFormat(quotable(other)));
            }
            _ => {}
        }
    }
    match keys {
        0 => return Err(UploadError::NoKey),
        1 => {}
        n => return Err(UploadError::SeveralKeys(n)),
    }
    PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| match e {
        pem::Error::NoItemsFound => UploadError::NoKey,
        other => UploadError::KeyPem(pem_reason(&other)),
    })
}

/// Seconds since the Unix epoch (negative before it) as a `SystemTime`, saturating.
fn system_time(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    let time = if secs >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    };
    time.unwrap_or(UNIX_EPOCH)
}

/// `t` as RFC 3339 in UTC, whole seconds: `2026-03-01T12:00:00Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => {
            let d = before.duration();
            let whole = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            // Round down: 0.5 s before the epoch is 1969-12-31T23:59:59Z.
            -whole - i64::from(d.subsec_nanos() > 0)
        }
    };
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Year, month, day of a day count since 1970-01-01 (proleptic Gregorian; Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// SHA-256 of `der`, lower-case hex.
fn sha256_hex(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut hex = String::with_capacity(64);
    for byte in digest.as_ref() {
        // Writing to a String cannot fail.
        let _ = fmt::Write::write_fmt(&mut hex, format_args!("{byte:02x}"));
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::tests::{Ca, Leaf};
    use rcgen::{KeyPair, date_time_ymd};

    const SHOP: &str = "shop.apps.example.com";
    const RSA_PKCS1: &str = include_str!("testdata/rsa2048.pkcs1.key");
    const RSA_PKCS8: &str = include_str!("testdata/rsa2048.pkcs8.key");
    const P256_SEC1: &str = include_str!("testdata/p256.sec1.key");
    const P256_PKCS8: &str = include_str!("testdata/p256.pkcs8.key");

    fn now() -> SystemTime {
        SystemTime::now()
    }

    /// The base64 lines of a PEM text: what must never appear in an error.
    fn body_lines(pem: &str) -> Vec<&str> {
        pem.lines()
            .filter(|l| !l.starts_with("-----") && l.len() > 16)
            .collect()
    }

    fn refusal(host: &str, cert_pem: &str, key_pem: &str) -> UploadError {
        let err = validate_upload(host, cert_pem, key_pem, now()).unwrap_err();
        for line in body_lines(key_pem) {
            assert!(!err.to_string().contains(line), "key material in {err}");
            assert!(
                !format!("{err:?}").contains(line),
                "key material in {err:?}"
            );
        }
        err
    }

    /// A PEM section with this label around this DER.
    fn section(label: &str, der: &[u8]) -> String {
        let b64 = data_encoding_base64(der);
        format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n")
    }

    /// Standard base64 with padding (tests only; avoids a dependency).
    fn data_encoding_base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn a_chain_leaf_first_is_accepted_with_its_metadata() {
        let root = Ca::named("upload test root");
        let intermediate = root.intermediate("upload test intermediate");
        let leaf = intermediate.leaf_with(&[SHOP, "WWW.Shop.Apps.Example.com"], |p| {
            p.not_after = date_time_ymd(2040, 2, 29);
        });
        // OpenSSL's explanatory text around the sections is fine; so is the root at the end.
        let cert_pem = format!(
            "Bag Attributes\n    friendlyName: shop\n{}{}subject=CN=root\n{}",
            leaf.cert_pem, intermediate.cert_pem, root.cert_pem
        );
        let meta =
            validate_upload("Shop.Apps.Example.COM", &cert_pem, &leaf.key_pem, now()).unwrap();
        assert_eq!(meta.host, SHOP);
        assert_eq!(meta.sans, vec![SHOP, "www.shop.apps.example.com"]);
        assert_eq!(meta.not_after_rfc3339(), "2040-02-29T00:00:00Z");
        assert_eq!(meta.fingerprint_sha256.len(), 64);
        assert!(
            meta.fingerprint_sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        // The fingerprint is the leaf's, whatever follows it.
        let alone = validate_upload(SHOP, &leaf.cert_pem, &leaf.key_pem, now()).unwrap();
        assert_eq!(alone.fingerprint_sha256, meta.fingerprint_sha256);
        let other = root.leaf(&[SHOP]);
        let other = validate_upload(SHOP, &other.cert_pem, &other.key_pem, now()).unwrap();
        assert_ne!(other.fingerprint_sha256, meta.fingerprint_sha256);
    }

    #[test]
    fn fingerprints_are_lower_case_sha256_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn wildcards_cover_one_label_and_a_wildcard_host_needs_the_wildcard_san() {
        let ca = Ca::new();
        let wildcard = ca.leaf(&["*.apps.example.com"]);
        let ok =
            |host: &str, leaf: &Leaf| validate_upload(host, &leaf.cert_pem, &leaf.key_pem, now());
        assert_eq!(
            ok("*.apps.example.com", &wildcard).unwrap().host,
            "*.apps.example.com"
        );
        assert_eq!(
            ok("*.APPS.example.com", &wildcard).unwrap().host,
            "*.apps.example.com"
        );
        assert_eq!(ok(SHOP, &wildcard).unwrap().host, SHOP);
        for host in [
            "a.shop.apps.example.com",
            "apps.example.com",
            "*.example.com",
        ] {
            let err = ok(host, &wildcard).unwrap_err();
            assert!(
                matches!(err, UploadError::HostNotCovered { .. }),
                "{host}: {err}"
            );
            assert_eq!(err.field(), "host");
        }
        // A certificate for one name does not make a wildcard upload.
        let single = ca.leaf(&[SHOP]);
        let err = ok("*.apps.example.com", &single).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the leaf certificate is not valid for *.apps.example.com (it is for shop.apps.example.com)"
        );
        assert_eq!(err.field(), "host");
        // Nor a wildcard two levels up.
        let parent = ca.leaf(&["*.example.com"]);
        assert!(ok("*.apps.example.com", &parent).is_err());
        assert!(ok(SHOP, &parent).is_err());
    }

    #[test]
    fn key_formats_pkcs8_pkcs1_sec1_ed25519_p384() {
        let ca = Ca::new();
        let cases: Vec<(&str, KeyPair, Option<&str>)> = vec![
            ("ecdsa p-256 pkcs#8", KeyPair::generate().unwrap(), None),
            (
                "ecdsa p-384 pkcs#8",
                KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap(),
                None,
            ),
            (
                "ed25519 pkcs#8",
                KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
                None,
            ),
            (
                "rsa pkcs#1",
                KeyPair::from_pem(RSA_PKCS8).unwrap(),
                Some(RSA_PKCS1),
            ),
            (
                "ecdsa p-256 sec1",
                KeyPair::from_pem(P256_PKCS8).unwrap(),
                Some(P256_SEC1),
            ),
        ];
        for (what, key, encoded) in cases {
            let leaf = ca.leaf_with_key(&[SHOP], &key, |_| {});
            let key_pem = encoded.map_or(leaf.key_pem.clone(), str::to_string);
            let meta = validate_upload(SHOP, &leaf.cert_pem, &key_pem, now());
            assert!(meta.is_ok(), "{what}: {meta:?}");
        }
    }

    #[test]
    fn every_refusal_names_its_field_and_reason() {
        let root = Ca::named("refusal root");
        let intermediate = root.intermediate("refusal intermediate");
        let leaf = intermediate.leaf(&[SHOP]);
        let chain = format!("{}{}", leaf.cert_pem, intermediate.cert_pem);
        let key = leaf.key_pem.as_str();
        let other = root.leaf(&[SHOP]);
        let pem_of = |text: &str| section("CERTIFICATE", text.as_bytes());

        let expired = root.leaf_with(&[SHOP], |p| {
            p.not_before = date_time_ymd(2000, 1, 1);
            p.not_after = date_time_ymd(2001, 1, 1);
        });
        let future = root.leaf_with(&[SHOP], |p| {
            p.not_before = date_time_ymd(2999, 1, 1);
            p.not_after = date_time_ymd(3000, 1, 1);
        });
        // The intermediate's name, another key: the names chain, the signature does not.
        let impostor = Ca::named("refusal intermediate");
        let impostor_root = Ca::named("refusal root");
        let not_der = pem_of("not der");
        let without_issuer = format!("{}{}", leaf.cert_pem, root.cert_pem);
        let reversed = format!(
            "{}{}{}",
            leaf.cert_pem, root.cert_pem, intermediate.cert_pem
        );
        let forged_root = format!("{chain}{}", impostor_root.cert_pem);
        let forged_issuer = format!("{}{}", leaf.cert_pem, impostor.cert_pem);
        let eleven = format!("{}{}", leaf.cert_pem, intermediate.cert_pem.repeat(10));
        let huge_cert = format!("{}{}", leaf.cert_pem, " ".repeat(MAX_PEM_BYTES));
        let huge_key = format!("{key}{}", " ".repeat(MAX_PEM_BYTES));
        let two_keys = format!("{key}{}", other.key_pem);
        let key_and_cert = format!("{}{key}", leaf.cert_pem);
        // Old Mac line ends and an indented BEGIN line: still a key.
        let key_after_cr = format!("{}{key}", leaf.cert_pem).replace('\n', "\r");
        let key_indented = format!("{} {key}", leaf.cert_pem);
        let encrypted = section("ENCRYPTED PRIVATE KEY", b"0123456789abcdef");
        let legacy_encrypted = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        let openssh = section("OPENSSH PRIVATE KEY", b"openssh-key-v1");
        let junk_pkcs8 = section("PRIVATE KEY", b"not a der key at all");
        let truncated = key.lines().take(3).collect::<Vec<_>>().join("\n");
        let bad_base64 = "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n";
        let csr = section("CERTIFICATE REQUEST", b"csr");

        // Each: host, cert_pem, key_pem, the field at fault, the reason.
        macro_rules! refused {
            ($host:expr, $cert:expr, $key:expr, $field:literal, $reason:pat $(if $guard:expr)?) => {{
                let (cert, key): (&str, &str) = ($cert, $key);
                let err = refusal($host, cert, key);
                assert!(matches!(err, $reason $(if $guard)?), "want {}: {err:?}", stringify!($reason));
                assert_eq!(err.field(), $field, "{err}");
                // Nothing of the certificate's body is quoted either.
                for line in body_lines(cert) {
                    assert!(!err.to_string().contains(line), "{err}");
                }
            }};
        }
        use UploadError as E;
        refused!("sp ace.example.com", &chain, key, "host", E::BadHost(_));
        refused!("a.*.example.com", &chain, key, "host", E::BadHost(_));
        refused!("*", &chain, key, "host", E::BadHost(_));
        refused!("", &chain, key, "host", E::BadHost(_));
        refused!(
            "blog.apps.example.com",
            &chain,
            key,
            "host",
            E::HostNotCovered { .. }
        );
        refused!(SHOP, " \n", key, "cert_pem", E::EmptyCert);
        refused!(SHOP, "hello", key, "cert_pem", E::NoCertificate);
        refused!(
            SHOP,
            "-----BEGIN CERTIFICATE-----\nAAAA\n",
            key,
            "cert_pem",
            E::CertPem(_)
        );
        refused!(
            SHOP,
            &bad_base64.replace("PRIVATE KEY", "CERTIFICATE"),
            key,
            "cert_pem",
            E::CertPem(_)
        );
        refused!(SHOP, &key_and_cert, key, "cert_pem", E::KeyInCertPem);
        refused!(SHOP, &key_after_cr, key, "cert_pem", E::KeyInCertPem);
        refused!(SHOP, &key_indented, key, "cert_pem", E::KeyInCertPem);
        refused!(SHOP, &csr, key, "cert_pem", E::UnexpectedSection(ref l) if l == "CERTIFICATE REQUEST");
        refused!(
            SHOP,
            &not_der,
            key,
            "cert_pem",
            E::BadCertificate { position: 1, .. }
        );
        refused!(
            SHOP,
            &eleven,
            key,
            "cert_pem",
            E::TooManyCertificates {
                count: 11,
                max: MAX_CHAIN
            }
        );
        refused!(SHOP, &huge_cert, key, "cert_pem", E::CertTooLarge { .. });
        refused!(SHOP, &expired.cert_pem, &expired.key_pem, "cert_pem", E::Expired { ref not_after } if not_after == "2001-01-01T00:00:00Z");
        refused!(SHOP, &future.cert_pem, &future.key_pem, "cert_pem", E::NotYetValid { ref not_before } if not_before == "2999-01-01T00:00:00Z");
        refused!(
            SHOP,
            &without_issuer,
            key,
            "cert_pem",
            E::ChainOrder { position: 1 }
        );
        refused!(
            SHOP,
            &reversed,
            key,
            "cert_pem",
            E::ChainOrder { position: 1 }
        );
        refused!(
            SHOP,
            &forged_issuer,
            key,
            "cert_pem",
            E::ChainSignature { position: 1 }
        );
        refused!(
            SHOP,
            &forged_root,
            key,
            "cert_pem",
            E::ChainSignature { position: 2 }
        );
        refused!(SHOP, &chain, "", "key_pem", E::EmptyKey);
        refused!(SHOP, &chain, "hello", "key_pem", E::NoKey);
        refused!(SHOP, &chain, &leaf.cert_pem, "key_pem", E::NoKey);
        refused!(SHOP, &chain, &truncated, "key_pem", E::KeyPem(_));
        refused!(SHOP, &chain, bad_base64, "key_pem", E::KeyPem(_));
        refused!(SHOP, &chain, &two_keys, "key_pem", E::SeveralKeys(2));
        refused!(SHOP, &chain, &encrypted, "key_pem", E::EncryptedKey);
        refused!(SHOP, &chain, legacy_encrypted, "key_pem", E::EncryptedKey);
        refused!(SHOP, &chain, &openssh, "key_pem", E::KeyFormat(ref l) if l == "OPENSSH PRIVATE KEY");
        refused!(SHOP, &chain, &junk_pkcs8, "key_pem", E::UnusableKey);
        refused!(SHOP, &chain, &huge_key, "key_pem", E::KeyTooLarge { .. });
        refused!(SHOP, &chain, &other.key_pem, "key_pem", E::KeyMismatch);
        // Sanity: the chain and key the cases break are good.
        assert!(validate_upload(SHOP, &chain, key, now()).is_ok());
    }

    #[test]
    fn a_key_pasted_as_certificate_is_not_echoed() {
        let leaf = Ca::new().leaf(&[SHOP]);
        let err = refusal(SHOP, &leaf.key_pem, &leaf.key_pem);
        assert_eq!(err, UploadError::KeyInCertPem);
        for line in body_lines(&leaf.key_pem) {
            assert!(!err.to_string().contains(line));
        }
    }

    #[test]
    fn rfc3339_renders_utc_dates() {
        let at = |secs: i64| rfc3339(system_time(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_767_225_599), "2025-12-31T23:59:59Z");
        assert_eq!(at(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(at(-1), "1969-12-31T23:59:59Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_millis(500)),
            "1969-12-31T23:59:59Z"
        );
    }
}
