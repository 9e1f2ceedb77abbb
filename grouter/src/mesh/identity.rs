//! Who a mesh node is, and how that is proven: the mesh CA, node certificates, the TLS
//! configurations of the mesh, and the extraction of a peer's identity.
//!
//! Owns:
//! - the mesh CA (`grouter tls ca`): an ECDSA P-256 CA that signs node certificates only;
//! - node certificates (`grouter tls node`): the node id and site are carried in a URI SAN
//!   `spiffe://grouter.mesh/site/<site>/node/<node_id>`; every node certificate also names
//!   [`MESH_SERVER_NAME`], because peers are dialled by address and the name is shared;
//!   each with a random serial, valid for `--days`; the CA directory keeps a copy of each in
//!   `issued/` so that it can be revoked by node id;
//! - revocation (`grouter tls revoke`): the CA's CRL `crl.pem`, signed by the CA key, whose
//!   entries only accumulate and whose number only grows;
//! - [`MeshTls`]: TLS 1.3-only server and client configurations with mutual authentication
//!   against the mesh CA alone and the current CRL (reloadable without rebuilding the
//!   configurations: both verify through verifiers that delegate to rustls's WebPKI ones
//!   held behind a lock), no session resumption, ALPN [`MESH_ALPN`], on the ring provider
//!   (never a process-wide default provider); [`MeshTls::verify_node_cert`] applies the
//!   same check to a certificate that did not come from a handshake;
//! - [`peer_identity`]: a peer's [`NodeIdentity`] from its verified certificate.
//!
//! Must never:
//! - log or print key material (keys are written with mode 0600 and go nowhere else);
//! - accept a peer that does not present a certificate issued by the mesh CA (the server
//!   requires a client certificate; both sides trust the mesh CA and nothing else);
//! - take a peer's identity from anything but its certificate (not the address it dials
//!   from, not what it says in a message);
//! - resume a TLS session (resumption skips the certificate check, so the CRL with it).

use std::fs;
use std::io::{self, BufReader, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData as _,
    RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, DnsName, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use tokio::sync::watch;
use x509_parser::extensions::GeneralName;

use crate::names::{check_node_id, check_site};

/// DNS name every node certificate carries and every client verifies (peers are dialled by
/// address, so the name is shared; the node identity is in the URI SAN).
pub const MESH_SERVER_NAME: &str = "mesh.grouter.internal";
/// ALPN protocol of the mesh.
pub const MESH_ALPN: &[u8] = b"grouter-mesh/1";
/// ALPN protocol on which a node asks another site's node for an app's droplet (HTTP/1.1
/// inside; see `placement::droplet`).
pub const DROPLET_ALPN: &[u8] = b"grouter-droplet/1";

/// The mesh CA's certificate, in the CA directory and copied next to every node certificate.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The mesh CA's private key (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";
/// A node's certificate.
pub const NODE_CERT_FILE: &str = "node.pem";
/// A node's private key (mode 0600).
pub const NODE_KEY_FILE: &str = "node.key";

/// Start of the URI SAN that carries a node's identity: `<prefix><site>/node/<node_id>`.
const IDENTITY_URI_PREFIX: &str = "spiffe://grouter.mesh/site/";
/// Separates the site from the node id in the identity URI.
const IDENTITY_URI_NODE: &str = "/node/";
/// Common name of the mesh CA.
const CA_COMMON_NAME: &str = "GRouter mesh CA";
/// How long the mesh CA is valid: about ten years (replacing it means re-issuing every node).
const CA_VALIDITY: Duration = Duration::from_secs(3652 * 24 * 60 * 60);
/// How long a node certificate is valid unless `grouter tls node --days` says otherwise.
pub const DEFAULT_NODE_DAYS: u32 = 365;
/// The longest validity `grouter tls node --days` takes: the CA's own.
pub const MAX_NODE_DAYS: u32 = 3652;
/// Where the CA directory keeps a copy of every node certificate it issued:
/// `<ca dir>/issued/<node_id>-<serial hex>.pem`.
pub const ISSUED_DIR: &str = "issued";
/// The CA's certificate revocation list, in the CA directory.
pub const CRL_FILE: &str = "crl.pem";
/// Certificates start to be valid this long before they are made, so that a peer whose
/// clock is a little behind still accepts them.
const CLOCK_SKEW: Duration = Duration::from_secs(60 * 60);

/// Which part of a [`NodeIdentity`] is at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameField {
    /// The node id (`node_id` in the config, `--node` on the command line).
    NodeId,
    /// The site (`site` in the config, `--site` on the command line).
    Site,
}

impl std::fmt::Display for NameField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NameField::NodeId => "node_id",
            NameField::Site => "site",
        })
    }
}

/// What can go wrong making certificates, loading them, or identifying a peer. Messages
/// name the file at fault; none carries key material.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file or directory could not be read, written or created.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done: "read", "write", "create".
        action: &'static str,
        /// The file or directory at fault.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `create_ca` found a CA key already there.
    #[error("{}: already exists; refusing to overwrite the mesh CA key", path.display())]
    AlreadyExists {
        /// The existing key file.
        path: PathBuf,
    },
    /// A node id or site breaks the naming rules.
    #[error("{field}: {reason}")]
    InvalidName {
        /// Which name.
        field: NameField,
        /// Why, naming the value.
        reason: String,
    },
    /// A PEM file holds no usable certificate or key, or the wrong kind of one.
    #[error("{}: {reason}", path.display())]
    Pem {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A private key does not belong to the certificate it is paired with.
    #[error("{}: does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate.
        cert: PathBuf,
        /// The key that does not match it.
        key: PathBuf,
    },
    /// A node certificate does not verify against the mesh CA (another CA, expired, wrong
    /// name or usage).
    #[error("{}: not accepted by the mesh CA in {}: {reason}", cert.display(), ca.display())]
    NotIssuedByCa {
        /// The node certificate.
        cert: PathBuf,
        /// The CA certificate it was checked against.
        ca: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// A certificate verifies but carries no (valid) node identity.
    #[error("{}: not a mesh node certificate: {reason}", path.display())]
    NotNodeCertificate {
        /// The certificate file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Generating a key or certificate failed.
    #[error("cannot generate {}: {source}", path.display())]
    Generate {
        /// The file that was to be written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },
    /// rustls refused to build a configuration from the files.
    #[error("{}: cannot build the mesh TLS configuration: {source}", path.display())]
    Tls {
        /// The file the configuration was built from.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: rustls::Error,
    },
    /// A peer's certificate carries no valid node identity.
    #[error("peer certificate: {0}")]
    Peer(String),
    /// `--days` out of range.
    #[error("--days {days}: must be 1..={MAX_NODE_DAYS}")]
    InvalidDays {
        /// The value given.
        days: u32,
    },
    /// `revoke_node` found no certificate issued to the node.
    #[error("no certificate issued to node {node_id:?} in {}", searched.display())]
    UnknownNode {
        /// The node id asked for.
        node_id: String,
        /// The directory searched (`<ca dir>/issued`).
        searched: PathBuf,
    },
}

/// Who a node is, as its certificate says.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeIdentity {
    /// The node id: 1..=64 of `[a-z0-9._-]`.
    pub node_id: String,
    /// The node's site: 1..=32 of `[a-z0-9-]`, not starting or ending with '-'.
    pub site: String,
}

impl NodeIdentity {
    /// A validated identity.
    pub fn new(node_id: impl Into<String>, site: impl Into<String>) -> Result<Self, IdentityError> {
        let identity = NodeIdentity {
            node_id: node_id.into(),
            site: site.into(),
        };
        identity.validate()?;
        Ok(identity)
    }

    /// Check both names against the naming rules (the same as the config's).
    pub fn validate(&self) -> Result<(), IdentityError> {
        check_node_id(&self.node_id).map_err(|reason| IdentityError::InvalidName {
            field: NameField::NodeId,
            reason,
        })?;
        check_site(&self.site).map_err(|reason| IdentityError::InvalidName {
            field: NameField::Site,
            reason,
        })
    }

    /// The URI SAN that carries this identity in a certificate.
    pub fn uri(&self) -> String {
        format!(
            "{IDENTITY_URI_PREFIX}{}{IDENTITY_URI_NODE}{}",
            self.site, self.node_id
        )
    }
}

impl std::fmt::Display for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.node_id, self.site)
    }
}

/// Create a mesh CA in `out_dir` (made if missing): `ca.pem` (certificate), `ca.key`
/// (0600) and an empty `crl.pem`. Refuses to overwrite an existing `ca.key`.
pub fn create_ca(out_dir: &Path) -> Result<(), IdentityError> {
    let key_path = out_dir.join(CA_KEY_FILE);
    let cert_path = out_dir.join(CA_CERT_FILE);
    // Checked before the work and again, atomically, when the key is written.
    if fs::symlink_metadata(&key_path).is_ok() {
        return Err(IdentityError::AlreadyExists { path: key_path });
    }
    create_dir(out_dir)?;

    let key = generate_key(&key_path)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, CA_VALIDITY);
    let cert = params
        .self_signed(&key)
        .map_err(|source| IdentityError::Generate {
            path: cert_path.clone(),
            source,
        })?;

    write_file(
        &key_path,
        key.serialize_pem().as_bytes(),
        FileKind::NewSecret,
    )?;
    write_file(&cert_path, cert.pem().as_bytes(), FileKind::Public)?;
    // An empty CRL from the start, so that nodes can point `mesh.crl` at it before anything
    // is revoked.
    write_crl(out_dir, &CaFiles::read(out_dir)?, Vec::new()).map(drop)
}

/// Issue a node certificate valid for [`DEFAULT_NODE_DAYS`]; see [`issue_node`].
pub fn create_node(
    ca_dir: &Path,
    node: &NodeIdentity,
    out_dir: &Path,
) -> Result<(), IdentityError> {
    issue_node(ca_dir, node, out_dir, DEFAULT_NODE_DAYS).map(drop)
}

/// Issue a node certificate signed by the CA in `ca_dir` (reads `ca.pem` + `ca.key`), valid
/// for `days` (1..=[`MAX_NODE_DAYS`]) with a random serial: writes `node.pem`, `node.key`
/// (0600) and a copy of `ca.pem` into `out_dir` (made if missing), and keeps a copy of the
/// certificate in `ca_dir/issued/<node_id>-<serial hex>.pem` (returned) so that
/// [`revoke_node`] can find it. An existing node certificate and key in `out_dir` are
/// replaced.
pub fn issue_node(
    ca_dir: &Path,
    node: &NodeIdentity,
    out_dir: &Path,
    days: u32,
) -> Result<PathBuf, IdentityError> {
    node.validate()?;
    if !(1..=MAX_NODE_DAYS).contains(&days) {
        return Err(IdentityError::InvalidDays { days });
    }
    let ca = CaFiles::read(ca_dir)?;
    let cert_path = out_dir.join(NODE_CERT_FILE);
    let key_path = out_dir.join(NODE_KEY_FILE);
    let generate = |source| IdentityError::Generate {
        path: cert_path.clone(),
        source,
    };
    let key = generate_key(&key_path)?;
    let serial = random_serial();
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(&node.node_id);
    params.subject_alt_names = vec![
        SanType::DnsName(MESH_SERVER_NAME.try_into().map_err(generate)?),
        SanType::URI(node.uri().try_into().map_err(generate)?),
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    set_validity(
        &mut params,
        Duration::from_secs(u64::from(days) * 24 * 60 * 60),
    );
    let cert = params.signed_by(&key, &ca.issuer).map_err(generate)?;

    // The CA's record first: a certificate that was handed out but not recorded could not
    // be revoked by node id.
    let issued_dir = ca_dir.join(ISSUED_DIR);
    let issued = issued_dir.join(format!("{}-{}.pem", node.node_id, hex(&serial)));
    create_dir(&issued_dir)?;
    write_file(&issued, cert.pem().as_bytes(), FileKind::Public)?;

    create_dir(out_dir)?;
    write_file(&key_path, key.serialize_pem().as_bytes(), FileKind::Secret)?;
    write_file(&cert_path, cert.pem().as_bytes(), FileKind::Public)?;
    write_file(
        &out_dir.join(CA_CERT_FILE),
        ca.pem.as_bytes(),
        FileKind::Public,
    )?;
    Ok(issued)
}

/// What [`revoke_node`] or [`revoke_cert`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The CRL written (`ca_dir/crl.pem`).
    pub crl: PathBuf,
    /// Serial numbers (lower-case hex) this call added; empty when all were already revoked.
    pub added: Vec<String>,
    /// How many certificates the CRL lists now.
    pub total: usize,
    /// The CRL's number (one more than the previous CRL's).
    pub crl_number: u64,
}

/// Revoke every certificate issued to `node_id` (those under `ca_dir/issued/` whose
/// identity names it) by writing a new `ca_dir/crl.pem` signed by the CA key. Entries of
/// the previous CRL are kept and its number is increased.
pub fn revoke_node(ca_dir: &Path, node_id: &str) -> Result<Revocation, IdentityError> {
    check_node_id(node_id).map_err(|reason| IdentityError::InvalidName {
        field: NameField::NodeId,
        reason,
    })?;
    let ca = CaFiles::read(ca_dir)?;
    let issued_dir = ca_dir.join(ISSUED_DIR);
    let mut serials = Vec::new();
    let entries = match fs::read_dir(&issued_dir) {
        Ok(entries) => entries.collect::<Result<Vec<_>, _>>(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
    .map_err(io_error("read", &issued_dir))?;
    let mut paths: Vec<PathBuf> = entries
        .into_iter()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pem"))
        .collect();
    paths.sort();
    for path in paths {
        let der = first_cert(&path, &read(&path)?)?;
        // The identity inside decides, not the file name (a node id may contain '-').
        if identity_of(&der).is_ok_and(|id| id.node_id == node_id) {
            serials.push(issued_serial(&ca, &path, &der)?);
        }
    }
    if serials.is_empty() {
        return Err(IdentityError::UnknownNode {
            node_id: node_id.to_string(),
            searched: issued_dir,
        });
    }
    write_crl(ca_dir, &ca, serials)
}

/// Revoke the certificate in `cert` (it must have been issued by the CA in `ca_dir`), as
/// [`revoke_node`] does.
pub fn revoke_cert(ca_dir: &Path, cert: &Path) -> Result<Revocation, IdentityError> {
    let ca = CaFiles::read(ca_dir)?;
    let der = first_cert(cert, &read(cert)?)?;
    let serial = issued_serial(&ca, cert, &der)?;
    write_crl(ca_dir, &ca, vec![serial])
}

/// The mesh CA's files, read and checked.
struct CaFiles {
    cert_path: PathBuf,
    pem: String,
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl CaFiles {
    fn read(ca_dir: &Path) -> Result<CaFiles, IdentityError> {
        let cert_path = ca_dir.join(CA_CERT_FILE);
        let key_path = ca_dir.join(CA_KEY_FILE);
        let pem = read_to_string(&cert_path)?;
        let der = first_cert(&cert_path, pem.as_bytes())?;
        let key =
            KeyPair::from_pem(&read_to_string(&key_path)?).map_err(|e| IdentityError::Pem {
                path: key_path.clone(),
                reason: format!("not a usable private key: {e}"),
            })?;
        check_ca(&cert_path, &der, &key_path, &key)?;
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|e| IdentityError::Pem {
            path: cert_path.clone(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
        Ok(CaFiles {
            cert_path,
            pem,
            der,
            issuer,
        })
    }
}

/// The serial of `der` (from `path`), which must be signed by the CA.
fn issued_serial(
    ca: &CaFiles,
    path: &Path,
    der: &CertificateDer<'_>,
) -> Result<Vec<u8>, IdentityError> {
    let not_x509 =
        |path: &Path, e: x509_parser::nom::Err<x509_parser::error::X509Error>| IdentityError::Pem {
            path: path.to_path_buf(),
            reason: format!("not an X.509 certificate: {e}"),
        };
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| not_x509(path, e))?;
    let (_, ca_cert) =
        x509_parser::parse_x509_certificate(&ca.der).map_err(|e| not_x509(&ca.cert_path, e))?;
    // The signature, not the issuer's name: two CAs may well share a name.
    if cert.issuer() != ca_cert.subject()
        || cert.verify_signature(Some(ca_cert.public_key())).is_err()
    {
        return Err(IdentityError::NotIssuedByCa {
            cert: path.to_path_buf(),
            ca: ca.cert_path.clone(),
            reason: "not signed by this CA".to_string(),
        });
    }
    Ok(normal_serial(cert.raw_serial()))
}

/// Write `ca_dir/crl.pem`: the previous CRL's entries (if any) plus `serials`, numbered one
/// more than the previous CRL.
fn write_crl(
    ca_dir: &Path,
    ca: &CaFiles,
    serials: Vec<Vec<u8>>,
) -> Result<Revocation, IdentityError> {
    let crl_path = ca_dir.join(CRL_FILE);
    let (mut revoked, previous_number) = match fs::read(&crl_path) {
        Ok(pem) => read_crl_entries(&crl_path, &pem)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => (Vec::new(), 0),
        Err(e) => return Err(io_error("read", &crl_path)(e)),
    };
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch();
    let mut added = Vec::new();
    for serial in serials {
        if revoked
            .iter()
            .any(|r: &RevokedCertParams| r.serial_number.as_ref() == serial.as_slice())
        {
            continue;
        }
        added.push(hex(&serial));
        revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: now,
            reason_code: Some(RevocationReason::KeyCompromise),
            invalidity_date: None,
        });
    }
    let crl_number = previous_number.saturating_add(1);
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + CA_VALIDITY,
        crl_number: SerialNumber::from(crl_number),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let generate = |source| IdentityError::Generate {
        path: crl_path.clone(),
        source,
    };
    let crl = params.signed_by(&ca.issuer).map_err(generate)?;
    let pem = crl.pem().map_err(generate)?;
    // Write beside and rename, so a node reloading the CRL never reads half of one.
    let tmp = ca_dir.join(format!("{CRL_FILE}.tmp"));
    write_file(&tmp, pem.as_bytes(), FileKind::Public)?;
    fs::rename(&tmp, &crl_path).map_err(io_error("write", &crl_path))?;
    Ok(Revocation {
        crl: crl_path,
        added,
        total: params.revoked_certs.len(),
        crl_number,
    })
}

/// The entries and number of an existing CRL.
fn read_crl_entries(
    path: &Path,
    pem: &[u8],
) -> Result<(Vec<RevokedCertParams>, u64), IdentityError> {
    let bad = |reason: String| IdentityError::Pem {
        path: path.to_path_buf(),
        reason,
    };
    let ders = parse_crls(path, pem)?;
    let mut revoked = Vec::new();
    let mut number = 0u64;
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    for der in &ders {
        let (_, crl) = x509_parser::parse_x509_crl(der)
            .map_err(|e| bad(format!("not a certificate revocation list: {e}")))?;
        if let Some(n) = crl.crl_number() {
            let bytes = n.to_bytes_be();
            let n = bytes
                .iter()
                .try_fold(0u64, |acc, b| {
                    acc.checked_mul(256).map(|a| a | u64::from(*b))
                })
                .unwrap_or(u64::MAX);
            number = number.max(n);
        }
        for entry in crl.iter_revoked_certificates() {
            let secs = u64::try_from(entry.revocation_date.timestamp()).unwrap_or_default();
            revoked.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&normal_serial(entry.raw_serial())),
                revocation_time: epoch + Duration::from_secs(secs),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
        }
    }
    Ok((revoked, number))
}

/// A serial without the sign byte DER adds when the first bit is set.
fn normal_serial(raw: &[u8]) -> Vec<u8> {
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    raw[start..].to_vec()
}

/// 16 random bytes, positive and without a leading zero byte (so the hex in the file name
/// is the serial as every tool prints it).
fn random_serial() -> [u8; 16] {
    let mut serial = uuid::Uuid::new_v4().into_bytes();
    serial[0] = (serial[0] & 0x7f) | 0x40;
    serial
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How long since the Unix epoch (zero if the clock is before it).
fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// TLS configurations of one node, built from PEM files.
///
/// Both configurations verify peers through a shared trust state that holds the current
/// CRL: a [`MeshTls::reload_crl`] takes effect for every clone and for every configuration
/// built from it (the `Arc`s other code holds stay the same).
#[derive(Debug, Clone)]
pub struct MeshTls {
    /// This node, as its own certificate says.
    pub me: NodeIdentity,
    /// For accepting peers: TLS 1.3, client certificate from the mesh CA required.
    pub server: Arc<ServerConfig>,
    /// For dialling peers (with [`MeshTls::server_name`]): TLS 1.3, trusts the mesh CA only,
    /// presents this node's certificate.
    pub client: Arc<ClientConfig>,
    trust: Arc<Trust>,
}

/// Why [`MeshTls::verify_node_cert`] refused a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertRejection {
    /// The current CRL lists it.
    Revoked,
    /// Outside its validity period (expired, or not valid yet).
    Expired,
    /// Not issued by the mesh CA (or not a usable certificate at all).
    NotFromCa,
    /// Issued by the mesh CA but carries no node identity.
    NoIdentity,
}

impl CertRejection {
    /// The reason as metrics and logs name it.
    pub fn as_str(self) -> &'static str {
        match self {
            CertRejection::Revoked => "revoked",
            CertRejection::Expired => "cert_expired",
            CertRejection::NotFromCa => "unknown_ca",
            CertRejection::NoIdentity => "no_identity",
        }
    }
}

impl std::fmt::Display for CertRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl MeshTls {
    /// Load CA, cert and key without a CRL; see [`MeshTls::load_with_crl`].
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<MeshTls, IdentityError> {
        Self::load_with_crl(ca, cert, key, None)
    }

    /// Load CA, cert and key, and the CRL when `crl` names one (PEM, as `grouter tls
    /// revoke` writes it; it must be there). Checks the key matches the cert, and the cert
    /// verifies against the CA and the CRL (as server and as client) and carries a node
    /// identity (returned in `me`).
    pub fn load_with_crl(
        ca: &Path,
        cert: &Path,
        key: &Path,
        crl: Option<&Path>,
    ) -> Result<MeshTls, IdentityError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(read_roots(ca)?);
        let chain = read_certs(cert)?;
        let key_der = read_key(key)?;
        let (end_entity, intermediates) = match chain.split_first() {
            Some(split) => split,
            None => return Err(no_certificate(cert)),
        };

        check_key(&provider, &chain, &key_der, cert, key)?;
        let me = identity_of(end_entity).map_err(|reason| IdentityError::NotNodeCertificate {
            path: cert.to_path_buf(),
            reason,
        })?;

        let crl_pem = crl.map(read).transpose()?;
        let crls = match (crl, &crl_pem) {
            (Some(path), Some(pem)) => parse_crls(path, pem)?,
            _ => Vec::new(),
        };
        let verifiers = Verifiers::build(&roots, &provider, crls, crl.unwrap_or(ca))?;

        // Refuse at start-up what every peer would refuse in the handshake.
        let not_accepted = |e: rustls::Error| IdentityError::NotIssuedByCa {
            cert: cert.to_path_buf(),
            ca: ca.to_path_buf(),
            reason: e.to_string(),
        };
        verifiers
            .check_own(end_entity, intermediates)
            .map_err(not_accepted)?;

        let (changes, _) = watch::channel(0);
        let trust = Arc::new(Trust {
            hints: verifiers.client.root_hint_subjects().to_vec(),
            current: RwLock::new(Arc::new(verifiers)),
            roots,
            provider: provider.clone(),
            crl_path: crl.map(Path::to_path_buf),
            crl_pem: Mutex::new(crl_pem),
            own: chain.clone(),
            changes,
        });

        let cert_error = |source| IdentityError::Tls {
            path: cert.to_path_buf(),
            source,
        };
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(cert_error)?
            .with_client_cert_verifier(Arc::new(ClientVerifier(trust.clone())))
            .with_single_cert(chain.clone(), key_der.clone_key())
            .map_err(cert_error)?;
        // Gossip first; peers also forward requests over the same authenticated listener
        // (`h2`, or `http/1.1` for upgrades), which the proxy serves and routes locally only,
        // and fetch droplets for app placement.
        server.alpn_protocols = vec![
            MESH_ALPN.to_vec(),
            b"h2".to_vec(),
            b"http/1.1".to_vec(),
            DROPLET_ALPN.to_vec(),
        ];
        // No resumption: a resumed session skips certificate verification, so a peer revoked
        // since its first handshake would get back in on its ticket. Mesh connections are
        // long-lived; a full handshake per connection costs little.
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.send_tls13_tickets = 0;

        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(cert_error)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier(trust.clone())))
            .with_client_auth_cert(chain, key_der)
            .map_err(cert_error)?;
        client.alpn_protocols = vec![MESH_ALPN.to_vec()];
        client.resumption = rustls::client::Resumption::disabled();

        Ok(MeshTls {
            me,
            server: Arc::new(server),
            client: Arc::new(client),
            trust,
        })
    }

    /// The CRL file this node was loaded with, if any.
    pub fn crl_path(&self) -> Option<&Path> {
        self.trust.crl_path.as_deref()
    }

    /// Re-read the CRL file; when its content changed, verify every handshake from now on
    /// against the new one and bump [`MeshTls::crl_changes`]. True when it changed. Without
    /// a CRL file, false. On an error (unreadable, not a CRL, not from the mesh CA) the
    /// previous CRL stays in force.
    pub fn reload_crl(&self) -> Result<bool, IdentityError> {
        let Some(path) = self.trust.crl_path.as_deref() else {
            return Ok(false);
        };
        // Held while rebuilding, so two reloads never race each other.
        let mut current_pem = self.trust.crl_pem.lock();
        let pem = read(path)?;
        if current_pem.as_deref() == Some(pem.as_slice()) {
            return Ok(false);
        }
        let crls = parse_crls(path, &pem)?;
        let verifiers = Verifiers::build(&self.trust.roots, &self.trust.provider, crls, path)?;
        // A CRL of another CA would make every certificate's status unknown, so refused by
        // every node: keep the previous one instead. This node's own certificate being
        // revoked is no reason to refuse (the peers refuse it anyway).
        if let Some((end_entity, intermediates)) = self.trust.own.split_first() {
            match verifiers.check_own(end_entity, intermediates) {
                Ok(()) | Err(rustls::Error::InvalidCertificate(CertificateError::Revoked)) => {}
                Err(e) => {
                    return Err(IdentityError::Pem {
                        path: path.to_path_buf(),
                        reason: format!("not usable with the mesh CA: {e}"),
                    });
                }
            }
        }
        *self.trust.current.write() = Arc::new(verifiers);
        *current_pem = Some(pem);
        self.trust.changes.send_modify(|n| *n += 1);
        Ok(true)
    }

    /// Bumps on every [`MeshTls::reload_crl`] that changed the CRL.
    pub fn crl_changes(&self) -> watch::Receiver<u64> {
        self.trust.changes.subscribe()
    }

    /// Verify `der` (an end-entity certificate, no intermediates) as a mesh client
    /// certificate against the mesh CA and the current CRL, now; its identity when it
    /// passes.
    pub fn verify_node_cert(&self, der: &[u8]) -> Result<NodeIdentity, CertRejection> {
        let cert = CertificateDer::from(der);
        let verifiers = self.trust.current.read().clone();
        if let Err(e) = verifiers
            .client
            .verify_client_cert(&cert, &[], UnixTime::now())
        {
            return Err(match e {
                rustls::Error::InvalidCertificate(CertificateError::Revoked) => {
                    CertRejection::Revoked
                }
                rustls::Error::InvalidCertificate(
                    CertificateError::Expired
                    | CertificateError::ExpiredContext { .. }
                    | CertificateError::NotValidYet
                    | CertificateError::NotValidYetContext { .. },
                ) => CertRejection::Expired,
                _ => CertRejection::NotFromCa,
            });
        }
        identity_of(&cert).map_err(|_| CertRejection::NoIdentity)
    }

    /// The client configuration with another ALPN protocol (the proxy dials peers with `h2`
    /// or `http/1.1` on the same mutual TLS).
    pub fn client_with_alpn(&self, protocol: &[u8]) -> Arc<ClientConfig> {
        let mut config = self.client.as_ref().clone();
        config.alpn_protocols = vec![protocol.to_vec()];
        Arc::new(config)
    }

    /// The server name to use when dialling a peer.
    pub fn server_name() -> ServerName<'static> {
        match DnsName::try_from(MESH_SERVER_NAME) {
            Ok(name) => ServerName::DnsName(name),
            // Unreachable (a unit test checks the constant), and fails closed if it ever is:
            // no node certificate carries an IP address, so every handshake would be refused.
            Err(_) => ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()),
        }
    }
}

/// The mesh CA and the current CRL, shared by every clone of a [`MeshTls`] and by the
/// verifiers inside its configurations.
#[derive(Debug)]
struct Trust {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    /// The CA's subjects, hinted to clients (they do not change with the CRL; kept here
    /// because [`ClientCertVerifier::root_hint_subjects`] lends them out).
    hints: Vec<rustls::DistinguishedName>,
    /// The verifiers in force; replaced whole on a CRL change.
    current: RwLock<Arc<Verifiers>>,
    crl_path: Option<PathBuf>,
    /// The CRL file as last loaded; also serialises reloads.
    crl_pem: Mutex<Option<Vec<u8>>>,
    /// This node's own chain, to check that a new CRL is usable.
    own: Vec<CertificateDer<'static>>,
    changes: watch::Sender<u64>,
}

/// The rustls verifiers for one CRL.
#[derive(Debug)]
struct Verifiers {
    client: Arc<dyn ClientCertVerifier>,
    server: Arc<WebPkiServerVerifier>,
}

impl Verifiers {
    /// Verifiers against `roots` and `crls` (none: no revocation checks). Only end-entity
    /// certificates are checked for revocation: the CA is the trust anchor, and the CA's
    /// CRL covers what it issued.
    fn build(
        roots: &Arc<RootCertStore>,
        provider: &Arc<CryptoProvider>,
        crls: Vec<CertificateRevocationListDer<'static>>,
        path: &Path,
    ) -> Result<Verifiers, IdentityError> {
        let tls_error = |e: rustls::server::VerifierBuilderError| IdentityError::Tls {
            path: path.to_path_buf(),
            source: rustls::Error::General(e.to_string()),
        };
        let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .with_crls(crls.clone())
            .only_check_end_entity_revocation()
            .build()
            .map_err(tls_error)?;
        let server = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .build()
            .map_err(tls_error)?;
        Ok(Verifiers { client, server })
    }

    /// This node's own certificate passes both ways (what every peer will check).
    fn check_own(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        let now = UnixTime::now();
        self.server.verify_server_cert(
            end_entity,
            intermediates,
            &MeshTls::server_name(),
            &[],
            now,
        )?;
        self.client
            .verify_client_cert(end_entity, intermediates, now)
            .map(drop)
    }
}

/// The server side's check of a client: the current [`Verifiers`]' client verifier.
#[derive(Debug)]
struct ClientVerifier(Arc<Trust>);

impl ClientVerifier {
    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.0.current.read().client.clone()
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &self.0.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// The client side's check of a server: the current [`Verifiers`]' server verifier.
#[derive(Debug)]
struct ServerVerifier(Arc<Trust>);

impl ServerVerifier {
    fn current(&self) -> Arc<WebPkiServerVerifier> {
        self.0.current.read().server.clone()
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.current().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// The identity in a peer's end-entity certificate (first of `chain`), from its URI SAN.
///
/// Call it only on a chain the TLS handshake has verified (`peer_certificates()` of an
/// established mesh connection): it reads the identity, it does not check the signature.
pub fn peer_identity(chain: &[CertificateDer<'_>]) -> Result<NodeIdentity, IdentityError> {
    let end_entity = chain
        .first()
        .ok_or_else(|| IdentityError::Peer("no certificate".to_string()))?;
    identity_of(end_entity).map_err(IdentityError::Peer)
}

// ---------------------------------------------------------------------------------------------
// Names.

/// The identity in one certificate's URI SAN; the reason when there is none (or two).
fn identity_of(der: &CertificateDer<'_>) -> Result<NodeIdentity, String> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    if !rest.is_empty() {
        return Err("trailing data after the certificate".to_string());
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("invalid subjectAltName: {e}"))?
        .ok_or_else(|| "no subjectAltName".to_string())?;
    let mut found = None;
    for name in &san.value.general_names {
        let GeneralName::URI(uri) = name else {
            continue;
        };
        if let Some(rest) = uri.strip_prefix(IDENTITY_URI_PREFIX) {
            if found.is_some() {
                return Err("more than one mesh identity URI".to_string());
            }
            found = Some(rest);
        }
    }
    let rest = found.ok_or_else(|| {
        format!("no URI SAN {IDENTITY_URI_PREFIX}<site>{IDENTITY_URI_NODE}<node_id>")
    })?;
    let (site, node_id) = rest
        .split_once(IDENTITY_URI_NODE)
        .ok_or_else(|| format!("malformed mesh identity URI {IDENTITY_URI_PREFIX}{rest:?}"))?;
    check_site(site).map_err(|reason| format!("site: {reason}"))?;
    check_node_id(node_id).map_err(|reason| format!("node_id: {reason}"))?;
    Ok(NodeIdentity {
        node_id: node_id.to_string(),
        site: site.to_string(),
    })
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

// ---------------------------------------------------------------------------------------------
// Certificates and keys.

fn generate_key(path: &Path) -> Result<KeyPair, IdentityError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
        IdentityError::Generate {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Valid from a little before now for `validity`.
fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + since_epoch.saturating_sub(CLOCK_SKEW);
    params.not_after = epoch + since_epoch + validity;
}

/// The CA certificate is a CA and `key` is its key.
fn check_ca(
    cert_path: &Path,
    der: &CertificateDer<'_>,
    key_path: &Path,
    key: &KeyPair,
) -> Result<(), IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| IdentityError::Pem {
        path: cert_path.to_path_buf(),
        reason: format!("not an X.509 certificate: {e}"),
    })?;
    if !cert.is_ca() {
        return Err(IdentityError::Pem {
            path: cert_path.to_path_buf(),
            reason: "not a CA certificate".to_string(),
        });
    }
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(IdentityError::KeyMismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
        });
    }
    Ok(())
}

/// The key belongs to the end-entity certificate of `chain`.
fn check_key(
    provider: &CryptoProvider,
    chain: &[CertificateDer<'static>],
    key_der: &PrivateKeyDer<'static>,
    cert: &Path,
    key: &Path,
) -> Result<(), IdentityError> {
    let certified = CertifiedKey::from_der(chain.to_vec(), key_der.clone_key(), provider).map_err(
        |e| match e {
            rustls::Error::InconsistentKeys(_) => IdentityError::KeyMismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            },
            other => IdentityError::Pem {
                path: key.to_path_buf(),
                reason: format!("not a usable private key: {other}"),
            },
        },
    )?;
    certified
        .keys_match()
        .map_err(|_| IdentityError::KeyMismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        })
}

fn no_certificate(path: &Path) -> IdentityError {
    IdentityError::Pem {
        path: path.to_path_buf(),
        reason: "no certificate found".to_string(),
    }
}

/// Every certificate in a PEM file; at least one.
fn parse_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs = rustls_pemfile::certs(&mut BufReader::new(pem))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Pem {
            path: path.to_path_buf(),
            reason: format!("invalid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(no_certificate(path));
    }
    Ok(certs)
}

/// Every CRL in a PEM file; at least one.
fn parse_crls(
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateRevocationListDer<'static>>, IdentityError> {
    let crls = rustls_pemfile::crls(&mut BufReader::new(pem))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Pem {
            path: path.to_path_buf(),
            reason: format!("invalid PEM: {e}"),
        })?;
    if crls.is_empty() {
        return Err(IdentityError::Pem {
            path: path.to_path_buf(),
            reason: "no certificate revocation list found".to_string(),
        });
    }
    Ok(crls)
}

fn first_cert(path: &Path, pem: &[u8]) -> Result<CertificateDer<'static>, IdentityError> {
    parse_certs(path, pem)?
        .into_iter()
        .next()
        .ok_or_else(|| no_certificate(path))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    parse_certs(path, &read(path)?)
}

/// The mesh CA's certificates as the only trust anchors.
fn read_roots(path: &Path) -> Result<RootCertStore, IdentityError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|e| IdentityError::Pem {
            path: path.to_path_buf(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, IdentityError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut BufReader::new(pem.as_slice()))
        .map_err(|e| IdentityError::Pem {
            path: path.to_path_buf(),
            reason: format!("invalid PEM: {e}"),
        })?
        .ok_or_else(|| IdentityError::Pem {
            path: path.to_path_buf(),
            reason: "no private key found".to_string(),
        })
}

// ---------------------------------------------------------------------------------------------
// Files.

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> IdentityError {
    let path = path.to_path_buf();
    move |source| IdentityError::Io {
        action,
        path,
        source,
    }
}

fn read(path: &Path) -> Result<Vec<u8>, IdentityError> {
    fs::read(path).map_err(io_error("read", path))
}

fn read_to_string(path: &Path) -> Result<String, IdentityError> {
    fs::read_to_string(path).map_err(io_error("read", path))
}

fn create_dir(path: &Path) -> Result<(), IdentityError> {
    fs::create_dir_all(path).map_err(io_error("create", path))
}

/// How a file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    /// Public: mode as the umask says, replaced when present.
    Public,
    /// A private key (mode 0600) that must not exist yet.
    NewSecret,
    /// A private key (mode 0600), replaced when present.
    Secret,
}

fn write_file(path: &Path, contents: &[u8], kind: FileKind) -> Result<(), IdentityError> {
    let mut options = fs::OpenOptions::new();
    options.write(true);
    match kind {
        FileKind::Public => {
            options.create(true).truncate(true);
        }
        FileKind::NewSecret => {
            options.create_new(true).mode(0o600);
        }
        FileKind::Secret => {
            options.create(true).truncate(true).mode(0o600);
        }
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists && kind == FileKind::NewSecret {
            IdentityError::AlreadyExists {
                path: path.to_path_buf(),
            }
        } else {
            io_error("write", path)(e)
        }
    })?;
    if kind != FileKind::Public {
        // An existing file keeps its mode on open; narrow it before the key goes in.
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_error("write", path))?;
    }
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(io_error("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    /// A CA in `<root>/<name>-ca` and a node certificate for each `(node, site)` in
    /// `<root>/<node>`.
    fn mesh(root: &Path, name: &str, nodes: &[(&str, &str)]) -> PathBuf {
        let ca = root.join(format!("{name}-ca"));
        create_ca(&ca).unwrap();
        for (node, site) in nodes {
            create_node(
                &ca,
                &NodeIdentity::new(*node, *site).unwrap(),
                &root.join(node),
            )
            .unwrap();
        }
        ca
    }

    fn load(dir: &Path) -> MeshTls {
        MeshTls::load(
            &dir.join(CA_CERT_FILE),
            &dir.join(NODE_CERT_FILE),
            &dir.join(NODE_KEY_FILE),
        )
        .unwrap()
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A TLS 1.3 client trusting the CA in `ca`, presenting the cert and key in `client_dir`
    /// (none when `None`).
    fn client_config(ca: &Path, client_dir: Option<&Path>) -> Arc<ClientConfig> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(read_roots(&ca.join(CA_CERT_FILE)).unwrap());
        let mut config = match client_dir {
            Some(dir) => builder
                .with_client_auth_cert(
                    read_certs(&dir.join(NODE_CERT_FILE)).unwrap(),
                    read_key(&dir.join(NODE_KEY_FILE)).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![MESH_ALPN.to_vec()];
        Arc::new(config)
    }

    type ServerStream = tokio_rustls::server::TlsStream<tokio::io::DuplexStream>;
    type ClientStream = tokio_rustls::client::TlsStream<tokio::io::DuplexStream>;

    /// Both ends of one handshake over an in-memory pipe.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> (io::Result<ServerStream>, io::Result<ClientStream>) {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let acceptor = TlsAcceptor::from(server);
        let connector = TlsConnector::from(client);
        tokio::join!(
            acceptor.accept(server_io),
            connector.connect(MeshTls::server_name(), client_io)
        )
    }

    /// The rustls error inside a failed handshake.
    fn tls_error(err: &io::Error) -> &rustls::Error {
        err.get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .unwrap_or_else(|| panic!("not a TLS error: {err}"))
    }

    /// In TLS 1.3 the client finishes before the server has checked its certificate; once
    /// the server refused, the client must see no application data, only an error or EOF.
    async fn assert_no_data(client: io::Result<ClientStream>) {
        if let Ok(mut stream) = client {
            let _ = stream.write_all(b"hello").await;
            let mut buf = [0u8; 16];
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => {}
                Ok(n) => panic!("client got {n} bytes from a server that refused it"),
            }
        }
    }

    #[tokio::test]
    async fn two_nodes_authenticate_each_other_over_tls13() {
        let dir = tempfile::tempdir().unwrap();
        mesh(dir.path(), "mesh", &[("lon-1", "lon"), ("nyc-1", "nyc")]);
        let lon = load(&dir.path().join("lon-1"));
        let nyc = load(&dir.path().join("nyc-1"));
        assert_eq!(lon.me, NodeIdentity::new("lon-1", "lon").unwrap());
        assert_eq!(nyc.me, NodeIdentity::new("nyc-1", "nyc").unwrap());

        let (server, client) = handshake(lon.server.clone(), nyc.client.clone()).await;
        let (mut server, mut client) = (server.unwrap(), client.unwrap());

        let (_, server_conn) = server.get_ref();
        assert_eq!(
            peer_identity(server_conn.peer_certificates().unwrap()).unwrap(),
            nyc.me
        );
        assert_eq!(
            server_conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(server_conn.alpn_protocol(), Some(MESH_ALPN));

        let (_, client_conn) = client.get_ref();
        assert_eq!(
            peer_identity(client_conn.peer_certificates().unwrap()).unwrap(),
            lon.me
        );
        assert_eq!(
            client_conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(client_conn.alpn_protocol(), Some(MESH_ALPN));

        // And the link carries data both ways.
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        server.write_all(b"pong").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    }

    #[tokio::test]
    async fn client_with_a_certificate_from_another_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = mesh(dir.path(), "mesh", &[("lon-1", "lon")]);
        mesh(dir.path(), "other", &[("evil-1", "nyc")]);
        let lon = load(&dir.path().join("lon-1"));
        // Trusts the mesh CA (so it accepts the server) but presents another CA's cert.
        let evil = client_config(&ca, Some(&dir.path().join("evil-1")));

        let (server, client) = handshake(lon.server.clone(), evil).await;
        let err = server.expect_err("the server must refuse the client");
        // Both CAs have the same name, so the chain is found and its signature fails.
        assert!(
            matches!(tls_error(&err), rustls::Error::InvalidCertificate(_)),
            "{err}"
        );
        assert_no_data(client).await;
    }

    #[tokio::test]
    async fn client_without_a_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = mesh(dir.path(), "mesh", &[("lon-1", "lon")]);
        let lon = load(&dir.path().join("lon-1"));
        let anonymous = client_config(&ca, None);

        let (server, client) = handshake(lon.server.clone(), anonymous).await;
        let err = server.expect_err("the server must refuse the client");
        assert!(
            matches!(tls_error(&err), rustls::Error::NoCertificatesPresented),
            "{err}"
        );
        assert_no_data(client).await;
    }

    #[tokio::test]
    async fn server_with_a_certificate_from_another_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        mesh(dir.path(), "mesh", &[("lon-1", "lon")]);
        mesh(dir.path(), "other", &[("evil-1", "nyc")]);
        let lon = load(&dir.path().join("lon-1"));
        let evil = load(&dir.path().join("evil-1"));

        let (server, client) = handshake(evil.server.clone(), lon.client.clone()).await;
        let err = client.expect_err("the client must refuse the server");
        assert!(
            matches!(tls_error(&err), rustls::Error::InvalidCertificate(_)),
            "{err}"
        );
        assert!(server.is_err());
    }

    #[test]
    fn peer_identity_needs_the_mesh_uri_san() {
        let other = rcgen::generate_simple_self_signed(vec!["example.com".to_string()]).unwrap();
        let err = peer_identity(&[other.cert.der().clone()]).unwrap_err();
        assert!(err.to_string().contains("no URI SAN"), "{err}");
        assert!(matches!(
            peer_identity(&[]).unwrap_err(),
            IdentityError::Peer(_)
        ));

        let with_uri = |uris: &[&str]| {
            let mut params = CertificateParams::new(vec![MESH_SERVER_NAME.to_string()]).unwrap();
            for uri in uris {
                params
                    .subject_alt_names
                    .push(SanType::URI((*uri).try_into().unwrap()));
            }
            let key = KeyPair::generate().unwrap();
            peer_identity(&[params.self_signed(&key).unwrap().der().clone()])
        };
        assert_eq!(
            with_uri(&["spiffe://grouter.mesh/site/lon/node/lon-1"]).unwrap(),
            NodeIdentity::new("lon-1", "lon").unwrap()
        );
        for bad in [
            "spiffe://grouter.mesh/site/LON/node/lon-1",
            "spiffe://grouter.mesh/site/lon/node/a/b",
            "spiffe://grouter.mesh/site/lon/node/",
            "spiffe://grouter.mesh/site/lon",
            "spiffe://other.mesh/site/lon/node/lon-1",
            "https://grouter.mesh/site/lon/node/lon-1",
        ] {
            assert!(with_uri(&[bad]).is_err(), "{bad}");
        }
        // Two identities are one too many.
        assert!(
            with_uri(&[
                "spiffe://grouter.mesh/site/lon/node/lon-1",
                "spiffe://grouter.mesh/site/nyc/node/nyc-1",
            ])
            .is_err()
        );
    }

    #[test]
    fn node_certificates_carry_the_agreed_names() {
        let dir = tempfile::tempdir().unwrap();
        let ca = mesh(dir.path(), "mesh", &[("lon-1", "lon")]);
        let pem = fs::read(dir.path().join("lon-1").join(NODE_CERT_FILE)).unwrap();
        let der = first_cert(Path::new("node.pem"), &pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), "lon-1");
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert!(
            san.value
                .general_names
                .contains(&GeneralName::DNSName(MESH_SERVER_NAME))
        );
        assert!(san.value.general_names.contains(&GeneralName::URI(
            "spiffe://grouter.mesh/site/lon/node/lon-1"
        )));
        let eku = cert.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.server_auth && eku.value.client_auth);
        assert!(!cert.is_ca());
        let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
            / 86_400;
        assert!((365..=366).contains(&days), "{days}");

        let pem = fs::read(ca.join(CA_CERT_FILE)).unwrap();
        let der = first_cert(Path::new("ca.pem"), &pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), CA_COMMON_NAME);
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.value.ca);
        assert_eq!(bc.value.path_len_constraint, Some(0));
        let ku = cert.key_usage().unwrap().unwrap();
        assert!(ku.value.key_cert_sign() && ku.value.crl_sign());
        let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
            / 86_400;
        assert!((3640..=3660).contains(&days), "{days}");

        // The copy of the CA next to the node is the CA.
        assert_eq!(
            fs::read(ca.join(CA_CERT_FILE)).unwrap(),
            fs::read(dir.path().join("lon-1").join(CA_CERT_FILE)).unwrap()
        );
    }

    #[test]
    fn create_ca_refuses_to_overwrite_and_keys_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let ca = mesh(dir.path(), "mesh", &[("lon-1", "lon")]);
        let key_before = fs::read(ca.join(CA_KEY_FILE)).unwrap();
        let err = create_ca(&ca).unwrap_err();
        assert!(matches!(err, IdentityError::AlreadyExists { .. }), "{err}");
        assert!(
            err.to_string()
                .contains(&ca.join(CA_KEY_FILE).display().to_string())
        );
        assert_eq!(fs::read(ca.join(CA_KEY_FILE)).unwrap(), key_before);

        for key in [
            ca.join(CA_KEY_FILE),
            dir.path().join("lon-1").join(NODE_KEY_FILE),
        ] {
            let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }

        // Re-issuing over a world-readable key narrows it again.
        let node_key = dir.path().join("lon-1").join(NODE_KEY_FILE);
        fs::set_permissions(&node_key, fs::Permissions::from_mode(0o644)).unwrap();
        create_node(
            &ca,
            &NodeIdentity::new("lon-1", "lon").unwrap(),
            &dir.path().join("lon-1"),
        )
        .unwrap();
        let mode = fs::metadata(&node_key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        load(&dir.path().join("lon-1"));
    }

    #[test]
    fn load_names_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        mesh(dir.path(), "mesh", &[("lon-1", "lon")]);
        let node = dir.path().join("lon-1");
        let missing = node.join("nope.pem");
        let cases = [
            (
                missing.clone(),
                node.join(NODE_CERT_FILE),
                node.join(NODE_KEY_FILE),
            ),
            (
                node.join(CA_CERT_FILE),
                missing.clone(),
                node.join(NODE_KEY_FILE),
            ),
            (
                node.join(CA_CERT_FILE),
                node.join(NODE_CERT_FILE),
                missing.clone(),
            ),
        ];
        for (ca, cert, key) in cases {
            let err = MeshTls::load(&ca, &cert, &key).unwrap_err();
            assert!(matches!(err, IdentityError::Io { .. }), "{err}");
            assert!(
                err.to_string().contains(&missing.display().to_string()),
                "{err}"
            );
        }
        // A file that is there but holds no PEM is named too.
        let empty = node.join("empty.pem");
        fs::write(&empty, "").unwrap();
        let err =
            MeshTls::load(&node.join(CA_CERT_FILE), &empty, &node.join(NODE_KEY_FILE)).unwrap_err();
        assert!(
            err.to_string().contains("empty.pem: no certificate found"),
            "{err}"
        );
    }

    #[test]
    fn load_rejects_a_key_of_another_certificate() {
        let dir = tempfile::tempdir().unwrap();
        mesh(dir.path(), "mesh", &[("lon-1", "lon"), ("nyc-1", "nyc")]);
        let lon = dir.path().join("lon-1");
        let nyc = dir.path().join("nyc-1");
        let err = MeshTls::load(
            &lon.join(CA_CERT_FILE),
            &lon.join(NODE_CERT_FILE),
            &nyc.join(NODE_KEY_FILE),
        )
        .unwrap_err();
        assert!(matches!(err, IdentityError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("nyc-1/node.key"), "{err}");
    }

    #[test]
    fn load_rejects_a_certificate_from_another_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = mesh(dir.path(), "mesh", &[]);
        mesh(dir.path(), "other", &[("evil-1", "nyc")]);
        let evil = dir.path().join("evil-1");
        let err = MeshTls::load(
            &ca.join(CA_CERT_FILE),
            &evil.join(NODE_CERT_FILE),
            &evil.join(NODE_KEY_FILE),
        )
        .unwrap_err();
        assert!(matches!(err, IdentityError::NotIssuedByCa { .. }), "{err}");
    }

    #[test]
    fn load_rejects_a_certificate_without_a_node_identity() {
        let dir = tempfile::tempdir().unwrap();
        let ca = mesh(dir.path(), "mesh", &[]);
        // The CA's own cert and key: they match, but it is no node.
        let err = MeshTls::load(
            &ca.join(CA_CERT_FILE),
            &ca.join(CA_CERT_FILE),
            &ca.join(CA_KEY_FILE),
        )
        .unwrap_err();
        assert!(
            matches!(err, IdentityError::NotNodeCertificate { .. }),
            "{err}"
        );
    }

    #[test]
    fn create_node_checks_names_and_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = mesh(dir.path(), "mesh", &[]);
        let other = mesh(dir.path(), "other", &[]);
        let out = dir.path().join("out");

        let bad_site = NodeIdentity {
            node_id: "lon-1".to_string(),
            site: "LON!".to_string(),
        };
        let err = create_node(&ca, &bad_site, &out).unwrap_err();
        assert!(
            matches!(
                err,
                IdentityError::InvalidName {
                    field: NameField::Site,
                    ..
                }
            ),
            "{err}"
        );
        assert!(!out.exists(), "nothing is written for a bad name");

        for (node_id, site) in [
            ("", "lon"),
            ("Lon-1", "lon"),
            ("lon/1", "lon"),
            ("lon-1", "-lon"),
            ("lon-1", "lon-"),
            ("lon-1", "l.on"),
            ("lon-1", ""),
        ] {
            assert!(
                NodeIdentity::new(node_id, site).is_err(),
                "{node_id} {site}"
            );
        }
        assert!(NodeIdentity::new("a".repeat(64), "b".repeat(32)).is_ok());
        assert!(NodeIdentity::new("a".repeat(65), "lon").is_err());
        assert!(NodeIdentity::new("lon-1", "b".repeat(33)).is_err());
        assert!(NodeIdentity::new("lon_1.a-b", "l0n-2").is_ok());

        // A CA key that is not the CA certificate's key.
        let mixed = dir.path().join("mixed");
        fs::create_dir(&mixed).unwrap();
        fs::copy(ca.join(CA_CERT_FILE), mixed.join(CA_CERT_FILE)).unwrap();
        fs::copy(other.join(CA_KEY_FILE), mixed.join(CA_KEY_FILE)).unwrap();
        let err =
            create_node(&mixed, &NodeIdentity::new("lon-1", "lon").unwrap(), &out).unwrap_err();
        assert!(matches!(err, IdentityError::KeyMismatch { .. }), "{err}");

        let err = create_node(
            &dir.path().join("absent"),
            &NodeIdentity::new("lon-1", "lon").unwrap(),
            &out,
        )
        .unwrap_err();
        assert!(err.to_string().contains("absent/ca.pem"), "{err}");
    }

    /// Load the node in `dir` with the CRL of the CA in `ca`.
    fn load_with_crl(dir: &Path, ca: &Path) -> MeshTls {
        MeshTls::load_with_crl(
            &dir.join(CA_CERT_FILE),
            &dir.join(NODE_CERT_FILE),
            &dir.join(NODE_KEY_FILE),
            Some(&ca.join(CRL_FILE)),
        )
        .unwrap()
    }

    /// Both ends of one handshake over loopback TCP.
    async fn tcp_handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> (
        io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
        io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(server);
        let connector = TlsConnector::from(client);
        let server = async {
            let (tcp, _) = listener.accept().await?;
            acceptor.accept(tcp).await
        };
        let client = async {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            connector.connect(MeshTls::server_name(), tcp).await
        };
        tokio::join!(server, client)
    }

    fn node_der(dir: &Path) -> Vec<u8> {
        let pem = fs::read(dir.join(NODE_CERT_FILE)).unwrap();
        first_cert(Path::new("node.pem"), &pem).unwrap().to_vec()
    }

    #[tokio::test]
    async fn a_revoked_client_is_refused_after_the_crl_is_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let ca = mesh(dir.path(), "mesh", &[("lon-1", "lon"), ("nyc-1", "nyc")]);
        let lon = load_with_crl(&dir.path().join("lon-1"), &ca);
        let nyc = load(&dir.path().join("nyc-1"));
        // The configuration other code holds, taken before the reload.
        let server = lon.server.clone();
        let mut changes = lon.crl_changes();

        let (s, c) = tcp_handshake(server.clone(), nyc.client.clone()).await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        // Data both ways, so that a session ticket (if one were sent) reaches the client: a
        // resumed handshake would skip the certificate check below.
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(b"pong").await.unwrap();
        c.read_exact(&mut buf).await.unwrap();
        drop((s, c));

        let revoked = revoke_node(&ca, "nyc-1").unwrap();
        assert_eq!(revoked.added.len(), 1);
        assert!(lon.clone().reload_crl().unwrap(), "the CRL changed");
        assert!(changes.has_changed().unwrap());
        assert_eq!(*changes.borrow_and_update(), 1);
        assert!(!lon.reload_crl().unwrap(), "unchanged the second time");
        assert!(!changes.has_changed().unwrap());

        let (s, c) = tcp_handshake(server, nyc.client.clone()).await;
        let err = s.expect_err("the server must refuse the revoked client");
        assert!(
            matches!(
                tls_error(&err),
                rustls::Error::InvalidCertificate(CertificateError::Revoked)
            ),
            "{err}"
        );
        if let Ok(mut stream) = c {
            let _ = stream.write_all(b"hello").await;
            let mut buf = [0u8; 16];
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => {}
                Ok(n) => panic!("client got {n} bytes from a server that refused it"),
            }
        }
    }

    #[tokio::test]
    async fn a_revoked_server_is_refused_after_the_crl_is_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let ca = mesh(dir.path(), "mesh", &[("lon-1", "lon"), ("nyc-1", "nyc")]);
        let lon = load_with_crl(&dir.path().join("lon-1"), &ca);
        let nyc = load(&dir.path().join("nyc-1"));
        let client = lon.client_with_alpn(MESH_ALPN);

        let (s, c) = tcp_handshake(nyc.server.clone(), client.clone()).await;
        assert!(s.is_ok() && c.is_ok(), "accepted before the revocation");

        revoke_node(&ca, "nyc-1").unwrap();
        assert!(lon.reload_crl().unwrap());
        let (_, c) = tcp_handshake(nyc.server.clone(), client).await;
        let err = c.expect_err("the client must refuse the revoked server");
        assert!(
            matches!(
                tls_error(&err),
                rustls::Error::InvalidCertificate(CertificateError::Revoked)
            ),
            "{err}"
        );
        // And the mesh client configuration itself, taken before the reload, too.
        let (_, c) = tcp_handshake(nyc.server.clone(), lon.client.clone()).await;
        assert!(c.is_err());
    }

    #[test]
    fn verify_node_cert_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let ca = mesh(
            dir.path(),
            "mesh",
            &[("lon-1", "lon"), ("nyc-1", "nyc"), ("sgp-1", "sgp")],
        );
        mesh(dir.path(), "other", &[("evil-1", "nyc")]);
        let lon = load_with_crl(&dir.path().join("lon-1"), &ca);

        assert_eq!(
            lon.verify_node_cert(&node_der(&dir.path().join("nyc-1"))),
            Ok(NodeIdentity::new("nyc-1", "nyc").unwrap())
        );
        assert_eq!(
            lon.verify_node_cert(&node_der(&dir.path().join("evil-1"))),
            Err(CertRejection::NotFromCa)
        );
        assert_eq!(
            lon.verify_node_cert(b"not a certificate"),
            Err(CertRejection::NotFromCa)
        );

        revoke_node(&ca, "nyc-1").unwrap();
        // Not yet: the CRL in force is the one loaded.
        assert!(
            lon.verify_node_cert(&node_der(&dir.path().join("nyc-1")))
                .is_ok()
        );
        assert!(lon.reload_crl().unwrap());
        assert_eq!(
            lon.verify_node_cert(&node_der(&dir.path().join("nyc-1"))),
            Err(CertRejection::Revoked)
        );
        assert!(
            lon.verify_node_cert(&node_der(&dir.path().join("sgp-1")))
                .is_ok()
        );

        // Signed by the mesh CA, but long expired.
        let files = CaFiles::read(&ca).unwrap();
        let mut params = CertificateParams::new(vec![MESH_SERVER_NAME.to_string()]).unwrap();
        params.subject_alt_names.push(SanType::URI(
            NodeIdentity::new("old-1", "lon")
                .unwrap()
                .uri()
                .try_into()
                .unwrap(),
        ));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = rcgen::date_time_ymd(2001, 1, 1);
        params.not_after = rcgen::date_time_ymd(2002, 1, 1);
        let key = KeyPair::generate().unwrap();
        let expired = params.signed_by(&key, &files.issuer).unwrap();
        assert_eq!(
            lon.verify_node_cert(expired.der()),
            Err(CertRejection::Expired)
        );

        // Signed by the mesh CA and valid, but names no node.
        let mut params = CertificateParams::new(vec![MESH_SERVER_NAME.to_string()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let anonymous = params.signed_by(&key, &files.issuer).unwrap();
        assert_eq!(
            lon.verify_node_cert(anonymous.der()),
            Err(CertRejection::NoIdentity)
        );

        for (why, s) in [
            (CertRejection::Revoked, "revoked"),
            (CertRejection::Expired, "cert_expired"),
            (CertRejection::NotFromCa, "unknown_ca"),
            (CertRejection::NoIdentity, "no_identity"),
        ] {
            assert_eq!(why.as_str(), s);
        }
    }

    #[test]
    fn revocations_accumulate_and_the_crl_number_grows() {
        let dir = tempfile::tempdir().unwrap();
        let ca = mesh(dir.path(), "mesh", &[("lon-1", "lon"), ("nyc-1", "nyc")]);
        // The CA starts with an empty CRL, number 1.
        let (entries, number) = crl_state(&ca);
        assert!(entries.is_empty());
        assert_eq!(number, 1);

        // Re-issued: two certificates of nyc-1 on record, each under its serial.
        let nyc = dir.path().join("nyc-1");
        let second =
            issue_node(&ca, &NodeIdentity::new("nyc-1", "nyc").unwrap(), &nyc, 30).unwrap();
        assert!(second.starts_with(ca.join(ISSUED_DIR)));
        let name = second.file_name().unwrap().to_str().unwrap();
        let der = node_der(&nyc);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(name, format!("nyc-1-{}.pem", hex(cert.raw_serial())));
        assert_eq!(
            fs::read(&second).unwrap(),
            fs::read(nyc.join(NODE_CERT_FILE)).unwrap()
        );

        let r = revoke_node(&ca, "nyc-1").unwrap();
        assert_eq!((r.added.len(), r.total, r.crl_number), (2, 2, 2));
        assert!(r.added.contains(&hex(cert.raw_serial())));
        // Again: nothing new, but a new CRL all the same.
        let r = revoke_node(&ca, "nyc-1").unwrap();
        assert_eq!((r.added.len(), r.total, r.crl_number), (0, 2, 3));
        // A single certificate by file; the earlier entries stay.
        let r = revoke_cert(&ca, &dir.path().join("lon-1").join(NODE_CERT_FILE)).unwrap();
        assert_eq!((r.added.len(), r.total, r.crl_number), (1, 3, 4));
        let (entries, number) = crl_state(&ca);
        assert_eq!((entries.len(), number), (3, 4));

        let err = revoke_node(&ca, "ghost-1").unwrap_err();
        assert!(matches!(err, IdentityError::UnknownNode { .. }), "{err}");
        assert!(err.to_string().contains("ghost-1"), "{err}");
        assert!(
            err.to_string()
                .contains(&ca.join(ISSUED_DIR).display().to_string()),
            "{err}"
        );

        // Another CA's certificate cannot be revoked here.
        mesh(dir.path(), "other", &[("evil-1", "nyc")]);
        let err = revoke_cert(&ca, &dir.path().join("evil-1").join(NODE_CERT_FILE)).unwrap_err();
        assert!(matches!(err, IdentityError::NotIssuedByCa { .. }), "{err}");
        assert!(matches!(
            issue_node(&ca, &NodeIdentity::new("x-1", "lon").unwrap(), &nyc, 0),
            Err(IdentityError::InvalidDays { days: 0 })
        ));
    }

    /// The serials and number of the CA's CRL.
    fn crl_state(ca: &Path) -> (Vec<Vec<u8>>, u64) {
        let (entries, number) =
            read_crl_entries(&ca.join(CRL_FILE), &fs::read(ca.join(CRL_FILE)).unwrap()).unwrap();
        (
            entries.iter().map(|e| e.serial_number.to_bytes()).collect(),
            number,
        )
    }

    #[test]
    fn a_crl_of_another_ca_is_refused_and_the_old_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let ca = mesh(dir.path(), "mesh", &[("lon-1", "lon"), ("nyc-1", "nyc")]);
        let other = mesh(dir.path(), "other", &[]);
        let lon = load_with_crl(&dir.path().join("lon-1"), &ca);
        revoke_node(&ca, "nyc-1").unwrap();
        assert!(lon.reload_crl().unwrap());

        fs::copy(other.join(CRL_FILE), ca.join(CRL_FILE)).unwrap();
        let err = lon.reload_crl().unwrap_err();
        assert!(err.to_string().contains("crl.pem"), "{err}");
        fs::write(ca.join(CRL_FILE), "garbage").unwrap();
        assert!(lon.reload_crl().is_err());
        fs::remove_file(ca.join(CRL_FILE)).unwrap();
        assert!(matches!(lon.reload_crl(), Err(IdentityError::Io { .. })));
        // nyc-1 is still revoked.
        assert_eq!(
            lon.verify_node_cert(&node_der(&dir.path().join("nyc-1"))),
            Err(CertRejection::Revoked)
        );
        // Without a CRL there is nothing to reload.
        assert!(!load(&dir.path().join("lon-1")).reload_crl().unwrap());
        // And a node whose CRL file is missing does not start.
        let node = dir.path().join("lon-1");
        let err = MeshTls::load_with_crl(
            &node.join(CA_CERT_FILE),
            &node.join(NODE_CERT_FILE),
            &node.join(NODE_KEY_FILE),
            Some(&ca.join(CRL_FILE)),
        )
        .unwrap_err();
        assert!(err.to_string().contains("crl.pem"), "{err}");
    }

    #[test]
    fn the_server_name_is_the_shared_mesh_name() {
        assert!(matches!(MeshTls::server_name(), ServerName::DnsName(_)));
        assert_eq!(MeshTls::server_name().to_str(), MESH_SERVER_NAME);
    }
}
