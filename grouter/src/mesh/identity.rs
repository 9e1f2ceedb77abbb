//! Who a mesh node is, and how that is proven: the mesh CA, node certificates, the TLS
//! configurations of the mesh, and the extraction of a peer's identity.
//!
//! Owns:
//! - the mesh CA (`grouter tls ca`): an ECDSA P-256 CA that signs node certificates only;
//! - node certificates (`grouter tls node`): the node id and site are carried in a URI SAN
//!   `spiffe://grouter.mesh/site/<site>/node/<node_id>`; every node certificate also names
//!   [`MESH_SERVER_NAME`], because peers are dialled by address and the name is shared;
//! - [`MeshTls`]: TLS 1.3-only server and client configurations with mutual authentication
//!   against the mesh CA alone, ALPN [`MESH_ALPN`], on the ring provider (never a
//!   process-wide default provider);
//! - [`peer_identity`]: a peer's [`NodeIdentity`] from its verified certificate.
//!
//! Must never:
//! - log or print key material (keys are written with mode 0600 and go nowhere else);
//! - accept a peer that does not present a certificate issued by the mesh CA (the server
//!   requires a client certificate; both sides trust the mesh CA and nothing else);
//! - take a peer's identity from anything but its certificate (not the address it dials
//!   from, not what it says in a message).

use std::fs;
use std::io::{self, BufReader, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData as _, SanType,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use x509_parser::extensions::GeneralName;

use crate::names::{check_node_id, check_site};

/// DNS name every node certificate carries and every client verifies (peers are dialled by
/// address, so the name is shared; the node identity is in the URI SAN).
pub const MESH_SERVER_NAME: &str = "mesh.grouter.internal";
/// ALPN protocol of the mesh.
pub const MESH_ALPN: &[u8] = b"grouter-mesh/1";

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
/// How long a node certificate is valid: about two years.
const NODE_VALIDITY: Duration = Duration::from_secs(730 * 24 * 60 * 60);
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

/// Create a mesh CA in `out_dir` (made if missing): `ca.pem` (certificate) and `ca.key`
/// (0600). Refuses to overwrite an existing `ca.key`.
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
    write_file(&cert_path, cert.pem().as_bytes(), FileKind::Public)
}

/// Issue a node certificate signed by the CA in `ca_dir` (reads `ca.pem` + `ca.key`):
/// writes `node.pem`, `node.key` (0600) and a copy of `ca.pem` into `out_dir` (made if
/// missing). An existing node certificate and key there are replaced.
pub fn create_node(
    ca_dir: &Path,
    node: &NodeIdentity,
    out_dir: &Path,
) -> Result<(), IdentityError> {
    node.validate()?;
    let ca_cert_path = ca_dir.join(CA_CERT_FILE);
    let ca_key_path = ca_dir.join(CA_KEY_FILE);
    let ca_pem = read_to_string(&ca_cert_path)?;
    let ca_der = first_cert(&ca_cert_path, ca_pem.as_bytes())?;
    let ca_key =
        KeyPair::from_pem(&read_to_string(&ca_key_path)?).map_err(|e| IdentityError::Pem {
            path: ca_key_path.clone(),
            reason: format!("not a usable private key: {e}"),
        })?;
    check_ca(&ca_cert_path, &ca_der, &ca_key_path, &ca_key)?;
    let issuer = Issuer::from_ca_cert_der(&ca_der, ca_key).map_err(|e| IdentityError::Pem {
        path: ca_cert_path.clone(),
        reason: format!("not a usable CA certificate: {e}"),
    })?;

    let cert_path = out_dir.join(NODE_CERT_FILE);
    let key_path = out_dir.join(NODE_KEY_FILE);
    let generate = |source| IdentityError::Generate {
        path: cert_path.clone(),
        source,
    };
    let key = generate_key(&key_path)?;
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
    set_validity(&mut params, NODE_VALIDITY);
    let cert = params.signed_by(&key, &issuer).map_err(generate)?;

    create_dir(out_dir)?;
    write_file(&key_path, key.serialize_pem().as_bytes(), FileKind::Secret)?;
    write_file(&cert_path, cert.pem().as_bytes(), FileKind::Public)?;
    write_file(
        &out_dir.join(CA_CERT_FILE),
        ca_pem.as_bytes(),
        FileKind::Public,
    )
}

/// TLS configurations of one node, built from PEM files.
#[derive(Debug, Clone)]
pub struct MeshTls {
    /// This node, as its own certificate says.
    pub me: NodeIdentity,
    /// For accepting peers: TLS 1.3, client certificate from the mesh CA required.
    pub server: Arc<ServerConfig>,
    /// For dialling peers (with [`MeshTls::server_name`]): TLS 1.3, trusts the mesh CA only,
    /// presents this node's certificate.
    pub client: Arc<ClientConfig>,
}

impl MeshTls {
    /// Load CA, cert and key; checks the key matches the cert, the cert verifies against the
    /// CA (as server and as client) and carries a node identity (returned in `me`).
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<MeshTls, IdentityError> {
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

        let tls_error = |source| IdentityError::Tls {
            path: ca.to_path_buf(),
            source,
        };
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| tls_error(rustls::Error::General(e.to_string())))?;
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| tls_error(rustls::Error::General(e.to_string())))?;

        // Refuse at start-up what every peer would refuse in the handshake.
        let now = UnixTime::now();
        let not_accepted = |e: rustls::Error| IdentityError::NotIssuedByCa {
            cert: cert.to_path_buf(),
            ca: ca.to_path_buf(),
            reason: e.to_string(),
        };
        server_verifier
            .verify_server_cert(end_entity, intermediates, &Self::server_name(), &[], now)
            .map_err(not_accepted)?;
        client_verifier
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(not_accepted)?;

        let cert_error = |source| IdentityError::Tls {
            path: cert.to_path_buf(),
            source,
        };
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(cert_error)?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key_der.clone_key())
            .map_err(cert_error)?;
        // Gossip first; peers also forward requests over the same authenticated listener
        // (`h2`, or `http/1.1` for upgrades), which the proxy serves and routes locally only.
        server.alpn_protocols = vec![MESH_ALPN.to_vec(), b"h2".to_vec(), b"http/1.1".to_vec()];

        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(cert_error)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key_der)
            .map_err(cert_error)?;
        client.alpn_protocols = vec![MESH_ALPN.to_vec()];

        Ok(MeshTls {
            me,
            server: Arc::new(server),
            client: Arc::new(client),
        })
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
        assert!((700..=740).contains(&days), "{days}");

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

    #[test]
    fn the_server_name_is_the_shared_mesh_name() {
        assert!(matches!(MeshTls::server_name(), ServerName::DnsName(_)));
        assert_eq!(MeshTls::server_name().to_str(), MESH_SERVER_NAME);
    }
}
