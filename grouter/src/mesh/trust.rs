//! The mesh's [`Trust`]: seals this node's partition with its mesh key, and checks other
//! owners' certificates (against the mesh CA and its CRL) and seals (against the key of
//! the certificate).
//!
//! Owns: the signing key (the node's mesh TLS key: its certificate is what already names
//! it), and a small cache of certificate verdicts. Must never: log key material, accept a
//! certificate the mesh's TLS handshake would refuse, or cache a verdict across a CRL
//! change.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustls::SignatureScheme;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::CertificateDer;
use rustls::sign::SigningKey;

use super::identity::{CertRejection, IdentityError, MeshTls};
use super::sync::{Owner, Rejection, Trust};

/// Schemes this node signs with, in order of preference (whichever its key supports).
const SIGNING_SCHEMES: [SignatureScheme; 5] = [
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ED25519,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PKCS1_SHA256,
];

/// How long a certificate verdict is reused (expiry is re-checked after it).
const VERDICT_TTL: Duration = Duration::from_secs(10);
/// Most verdicts kept (bounded by the number of nodes in practice).
const VERDICTS_MAX: usize = 4096;

/// This node's key and the mesh CA, as the replication rules need them.
pub struct MeshTrust {
    tls: MeshTls,
    own_cert: Arc<[u8]>,
    key: Arc<dyn SigningKey>,
    algorithms: WebPkiSupportedAlgorithms,
    verdicts: Mutex<HashMap<[u8; 32], Verdict>>,
}

/// When a certificate was checked, and what came of it.
type Verdict = (Instant, Result<Owner, Rejection>);

impl std::fmt::Debug for MeshTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTrust")
            .field("me", &self.tls.me)
            .finish_non_exhaustive()
    }
}

impl MeshTrust {
    /// Load from the PEM files of a node (the same the mesh's TLS uses).
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<MeshTrust, IdentityError> {
        let tls = MeshTls::load(ca, cert, key)?;
        MeshTrust::new(tls, cert, key)
    }

    /// The trust of a node whose TLS was loaded from `cert` and `key` (certificates are
    /// checked as its TLS checks them: against the mesh CA and the current CRL).
    pub fn new(tls: MeshTls, cert: &Path, key: &Path) -> Result<MeshTrust, IdentityError> {
        let pem_error = |path: &Path, reason: String| IdentityError::Pem {
            path: path.to_path_buf(),
            reason,
        };
        let cert_pem = std::fs::read(cert).map_err(|e| pem_error(cert, e.to_string()))?;
        let own = rustls_pemfile::certs(&mut cert_pem.as_slice())
            .next()
            .ok_or_else(|| pem_error(cert, "no certificate".to_string()))?
            .map_err(|e| pem_error(cert, e.to_string()))?;
        let key_pem = std::fs::read(key).map_err(|e| pem_error(key, e.to_string()))?;
        let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|e| pem_error(key, e.to_string()))?
            .ok_or_else(|| pem_error(key, "no private key".to_string()))?;
        let provider = rustls::crypto::ring::default_provider();
        let signing = provider
            .key_provider
            .load_private_key(key_der)
            .map_err(|e| pem_error(key, format!("not a usable key: {e}")))?;
        if signing.choose_scheme(&SIGNING_SCHEMES).is_none() {
            return Err(pem_error(
                key,
                "a key no mesh signature scheme supports".into(),
            ));
        }
        Ok(MeshTrust {
            tls,
            own_cert: Arc::from(own.as_ref()),
            key: signing,
            algorithms: provider.signature_verification_algorithms,
            verdicts: Mutex::new(HashMap::new()),
        })
    }

    /// The mesh TLS this trust was made for.
    pub fn tls(&self) -> &MeshTls {
        &self.tls
    }

    /// Forget every certificate verdict (the CRL changed).
    pub fn forget_verdicts(&self) {
        self.verdicts.lock().clear();
    }

    fn check(&self, cert: &[u8]) -> Result<Owner, Rejection> {
        let id = self.tls.verify_node_cert(cert).map_err(|why| match why {
            CertRejection::Revoked => Rejection::Revoked,
            CertRejection::Expired => Rejection::CertExpired,
            CertRejection::NotFromCa => Rejection::UnknownCa,
            CertRejection::NoIdentity => Rejection::UnknownOwner,
        })?;
        Ok(Owner {
            node_id: id.node_id,
            site: id.site,
        })
    }
}

impl Trust for MeshTrust {
    fn own_cert(&self) -> Arc<[u8]> {
        self.own_cert.clone()
    }

    fn sign(&self, statement: &[u8]) -> Option<(u32, Vec<u8>)> {
        let signer = self.key.choose_scheme(&SIGNING_SCHEMES)?;
        let signature = signer.sign(statement).ok()?;
        Some((u32::from(u16::from(signer.scheme())), signature))
    }

    fn certify(&self, cert: &[u8]) -> Result<Owner, Rejection> {
        let id = *blake3::hash(cert).as_bytes();
        if let Some((at, verdict)) = self.verdicts.lock().get(&id)
            && at.elapsed() < VERDICT_TTL
        {
            return verdict.clone();
        }
        let verdict = self.check(cert);
        let mut verdicts = self.verdicts.lock();
        if verdicts.len() >= VERDICTS_MAX {
            verdicts.clear();
        }
        verdicts.insert(id, (Instant::now(), verdict.clone()));
        verdict
    }

    fn verify(&self, cert: &[u8], statement: &[u8], scheme: u32, signature: &[u8]) -> bool {
        let Ok(scheme) = u16::try_from(scheme).map(SignatureScheme::from) else {
            return false;
        };
        let der = CertificateDer::from(cert);
        let Ok(ee) = webpki::EndEntityCert::try_from(&der) else {
            return false;
        };
        let Some((_, algs)) = self.algorithms.mapping.iter().find(|(s, _)| *s == scheme) else {
            return false;
        };
        algs.iter()
            .any(|alg| ee.verify_signature(*alg, statement, signature).is_ok())
    }
}
