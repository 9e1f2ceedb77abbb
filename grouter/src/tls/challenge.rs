//! The ACME challenges this node answers for the whole mesh (RFC 8555 §8.3, RFC 8737).
//!
//! Owns: the HTTP-01 tokens (`token → (name, key authorization)`) that the plain HTTP
//! listener answers at `/.well-known/acme-challenge/{token}`, and the TLS-ALPN-01 names
//! (`name → self-signed certificate carrying the acmeIdentifier extension`) that the HTTPS
//! listener serves to a client offering only `acme-tls/1`. The control plane fills it from
//! the merged `acme/http01/…` and `acme/alpn/…` keys, so every node answers for an order
//! that any node placed.
//!
//! Must never: answer a token for another name than the one it was issued for, hold more
//! than [`MAX_CHALLENGES`] of either kind (a peer's flood of keys is cut off, not kept), or
//! put a challenge certificate's key anywhere but memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Most challenges of each kind held at once (orders in flight across the mesh).
pub const MAX_CHALLENGES: usize = 4096;

/// Longest HTTP-01 token taken (RFC 8555 asks for at least 128 bits of base64url; CAs send
/// 43 characters).
const MAX_TOKEN: usize = 256;

/// Longest key authorization taken (token, `.`, a 43-character thumbprint).
const MAX_KEY_AUTH: usize = 512;

/// Why a challenge was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    /// The token is empty, too long or not base64url.
    #[error("token is not 1..={MAX_TOKEN} base64url characters")]
    Token,
    /// The key authorization is not `<token>.<thumbprint>` in base64url.
    #[error("key authorization is not <token>.<thumbprint>")]
    KeyAuthorization,
    /// The TLS-ALPN-01 digest is not 32 bytes.
    #[error("acmeIdentifier digest is not 32 bytes")]
    Digest,
    /// The certificate could not be made.
    #[error("challenge certificate: {0}")]
    Certificate(String),
    /// [`MAX_CHALLENGES`] are held already.
    #[error("more than {MAX_CHALLENGES} challenges")]
    Full,
}

fn base64url(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// One HTTP-01 token's answer.
#[derive(Debug, Clone)]
struct Http01 {
    name: Arc<str>,
    key_authorization: Arc<str>,
}

/// The challenges of every live order in the mesh. Cheap to share (`Arc<Challenges>`).
#[derive(Default)]
pub struct Challenges {
    http: RwLock<HashMap<Arc<str>, Http01>>,
    alpn: RwLock<HashMap<Arc<str>, Arc<CertifiedKey>>>,
    /// Validations answered: HTTP-01, TLS-ALPN-01.
    answered: [AtomicU64; 2],
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenges")
            .field("http01", &self.http.read().len())
            .field("tls_alpn01", &self.alpn.read().len())
            .finish()
    }
}

impl Challenges {
    /// Answer `token` for `name` with `key_authorization`.
    pub fn set_http01(
        &self,
        token: &str,
        name: &str,
        key_authorization: &str,
    ) -> Result<(), ChallengeError> {
        if token.len() > MAX_TOKEN || !base64url(token) {
            return Err(ChallengeError::Token);
        }
        match key_authorization.split_once('.') {
            Some((t, thumb))
                if t == token && base64url(thumb) && key_authorization.len() <= MAX_KEY_AUTH => {}
            _ => return Err(ChallengeError::KeyAuthorization),
        }
        let mut http = self.http.write();
        if http.len() >= MAX_CHALLENGES && !http.contains_key(token) {
            return Err(ChallengeError::Full);
        }
        http.insert(
            Arc::from(token),
            Http01 {
                name: Arc::from(name.to_ascii_lowercase().as_str()),
                key_authorization: Arc::from(key_authorization),
            },
        );
        Ok(())
    }

    /// Stop answering `token`.
    pub fn remove_http01(&self, token: &str) {
        self.http.write().remove(token);
    }

    /// The key authorization of `token`, when it was issued for `host` (any case, maybe with
    /// a port, as a Host header has it).
    pub fn http01(&self, token: &str, host: &str) -> Option<Arc<str>> {
        let name = host.rsplit_once(':').map_or(host, |(n, _)| n);
        let name = name.strip_suffix('.').unwrap_or(name);
        let http = self.http.read();
        let found = http.get(token)?;
        let answer = found
            .name
            .eq_ignore_ascii_case(name)
            .then(|| Arc::clone(&found.key_authorization));
        if answer.is_some() {
            self.answered[0].fetch_add(1, Ordering::Relaxed);
        }
        answer
    }

    /// Serve, for `name`, a self-signed certificate proving `digest` (the SHA-256 of the key
    /// authorization) to a TLS-ALPN-01 validation.
    pub fn set_alpn(
        &self,
        provider: &CryptoProvider,
        name: &str,
        digest: &[u8],
    ) -> Result<(), ChallengeError> {
        if digest.len() != 32 {
            return Err(ChallengeError::Digest);
        }
        let name = name.to_ascii_lowercase();
        {
            let alpn = self.alpn.read();
            if alpn.len() >= MAX_CHALLENGES && !alpn.contains_key(name.as_str()) {
                return Err(ChallengeError::Full);
            }
        }
        let certified = alpn_certificate(provider, &name, digest)?;
        self.alpn
            .write()
            .insert(Arc::from(name.as_str()), Arc::new(certified));
        Ok(())
    }

    /// Stop serving the TLS-ALPN-01 certificate of `name`.
    pub fn remove_alpn(&self, name: &str) {
        self.alpn.write().remove(name.to_ascii_lowercase().as_str());
    }

    /// The TLS-ALPN-01 certificate of `sni`, if an order in the mesh asked for one.
    pub fn alpn(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let name = sni.strip_suffix('.').unwrap_or(sni).to_ascii_lowercase();
        let found = self.alpn.read().get(name.as_str()).cloned();
        if found.is_some() {
            self.answered[1].fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// Validations answered so far: `(http-01, tls-alpn-01)`.
    pub fn answered(&self) -> (u64, u64) {
        (
            self.answered[0].load(Ordering::Relaxed),
            self.answered[1].load(Ordering::Relaxed),
        )
    }

    /// How many of each kind are held: `(http-01, tls-alpn-01)`.
    pub fn counts(&self) -> (usize, usize) {
        (self.http.read().len(), self.alpn.read().len())
    }
}

/// RFC 8737 §3: a certificate for exactly `name`, with the critical acmeIdentifier
/// extension holding `digest`.
fn alpn_certificate(
    provider: &CryptoProvider,
    name: &str,
    digest: &[u8],
) -> Result<CertifiedKey, ChallengeError> {
    let bad = |e: &dyn std::fmt::Display| ChallengeError::Certificate(e.to_string());
    let mut params = CertificateParams::new(vec![name.to_string()]).map_err(|e| bad(&e))?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let key = KeyPair::generate().map_err(|e| bad(&e))?;
    let cert = params.self_signed(&key).map_err(|e| bad(&e))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| bad(&e))?;
    Ok(CertifiedKey::new(
        vec![CertificateDer::from(cert.der().to_vec())],
        signer,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> CryptoProvider {
        rustls::crypto::ring::default_provider()
    }

    #[test]
    fn a_token_is_answered_only_for_its_own_name() {
        let c = Challenges::default();
        c.set_http01("tok_1-A", "App.Example.com", "tok_1-A.thumb")
            .unwrap();
        assert_eq!(
            c.http01("tok_1-A", "app.example.com:80").as_deref(),
            Some("tok_1-A.thumb")
        );
        assert_eq!(
            c.http01("tok_1-A", "APP.example.com.").as_deref(),
            Some("tok_1-A.thumb")
        );
        assert!(c.http01("tok_1-A", "other.example.com").is_none());
        assert!(c.http01("unknown", "app.example.com").is_none());
        c.remove_http01("tok_1-A");
        assert!(c.http01("tok_1-A", "app.example.com").is_none());
    }

    #[test]
    fn hostile_tokens_and_key_authorizations_are_refused() {
        let c = Challenges::default();
        for token in [
            "",
            "a/b",
            "a.b",
            "..",
            "tok\r\n",
            &"x".repeat(MAX_TOKEN + 1),
        ] {
            assert_eq!(
                c.set_http01(token, "a.example.com", &format!("{token}.t")),
                Err(ChallengeError::Token),
                "{token:?}"
            );
        }
        for ka in ["tok", "other.thumb", "tok.", "tok.th/umb", "tok.th\u{7f}"] {
            assert_eq!(
                c.set_http01("tok", "a.example.com", ka),
                Err(ChallengeError::KeyAuthorization),
                "{ka:?}"
            );
        }
        assert_eq!(c.counts(), (0, 0));
    }

    #[test]
    fn the_number_held_is_bounded() {
        let c = Challenges::default();
        for i in 0..MAX_CHALLENGES {
            let t = format!("t{i}");
            c.set_http01(&t, "a.example.com", &format!("{t}.x"))
                .unwrap();
        }
        assert_eq!(
            c.set_http01("one-more", "a.example.com", "one-more.x"),
            Err(ChallengeError::Full)
        );
        // Replacing a held one is not growth.
        c.set_http01("t0", "a.example.com", "t0.y").unwrap();
        assert_eq!(c.counts().0, MAX_CHALLENGES);
    }

    #[test]
    fn the_alpn_certificate_names_the_host_and_carries_the_digest() {
        let c = Challenges::default();
        let digest = [7u8; 32];
        assert_eq!(
            c.set_alpn(&provider(), "a.example.com", &digest[..31]),
            Err(ChallengeError::Digest)
        );
        c.set_alpn(&provider(), "A.example.com", &digest).unwrap();
        let served = c.alpn("a.example.COM").unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&served.cert[0]).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            format!("{:?}", san.value.general_names),
            r#"[DNSName("a.example.com")]"#
        );
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .unwrap();
        assert!(ext.critical);
        // DER OCTET STRING of the 32 bytes.
        assert_eq!(&ext.value[..2], &[0x04, 0x20]);
        assert_eq!(&ext.value[2..], &digest);
        assert!(c.alpn("b.example.com").is_none());
        c.remove_alpn("a.example.com");
        assert!(c.alpn("a.example.com").is_none());
    }
}
