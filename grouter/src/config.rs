//! Node configuration: the TOML schema of `grouter run --config FILE`, its defaults and its
//! validation.
//!
//! Owns: the shape of the file (every struct rejects unknown keys), the named defaults, the
//! checks that go beyond types (names, `host:port` addresses, the `redirect_host` template,
//! CIDRs, cross-section rules such as "`https_listen` needs `[tls]`"), and the resolution of
//! relative paths against the config file's directory.
//!
//! Errors always name the file and the dotted key at fault (`lon-1.toml: nats.servers[1]:
//! invalid address …`), and validation reports every problem it finds, not just the first.
//!
//! Must never: panic on any input; do I/O other than reading the config file itself
//! ([`Config::load`]) and, when asked, checking that referenced files can be read
//! ([`Config::missing_files`]); open sockets or start anything. Other modules receive a
//! [`Config`] that has already been validated and need not re-check it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::names;

// ---------------------------------------------------------------------------------------------
// Limits and defaults (named, so the docs, the serde attributes and the checks agree).

/// Default `nats.stale_threshold_secs`, gorouter's `droplet_stale_threshold`.
const DEFAULT_STALE_THRESHOLD_SECS: u64 = 120;
/// Default `nats.prune_interval_secs`.
const DEFAULT_PRUNE_INTERVAL_SECS: u64 = 30;
/// Default `nats.tls_stale_threshold_secs`, as a multiple of `nats.stale_threshold_secs`.
const TLS_STALE_THRESHOLD_FACTOR: u64 = 3;
/// Default `nats.max_pending_messages`: room for a burst of 200,000 registrations (every
/// emitter re-sending at once after a reconnect) with headroom; at ~0.7 KB a queued message,
/// about 370 MB when full, and nothing when the learner keeps up.
const DEFAULT_MAX_PENDING_MESSAGES: usize = 524_288;
/// Smallest accepted `nats.max_pending_messages`.
const MIN_PENDING_MESSAGES: usize = 1024;
/// Default `gorouters.health_url_path`.
const DEFAULT_HEALTH_URL_PATH: &str = "/health";
/// Default `proxy.redirect_host`: `shop.apps.example.com` -> `shop.nyc.apps.example.com`.
const DEFAULT_REDIRECT_HOST: &str = "{label}.{site}.{parent}";
/// Placeholders `proxy.redirect_host` may use.
const REDIRECT_PLACEHOLDERS: [&str; 4] = ["label", "site", "parent", "region"];
/// Default `mesh.sync_lost_after_secs`.
const DEFAULT_SYNC_LOST_AFTER_SECS: u64 = 10;
/// Default `mesh.heartbeat_interval_ms`.
const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 500;
/// Shortest accepted `mesh.heartbeat_interval_ms`: faster only burns CPU and bandwidth.
const MIN_HEARTBEAT_INTERVAL_MS: u64 = 50;
/// Default `mesh.max_nodes`.
const DEFAULT_MAX_NODES: usize = 1000;
/// Default `mesh.max_entries_per_partition`.
const DEFAULT_MAX_ENTRIES_PER_PARTITION: usize = 1_000_000;
/// Default `dns.ttl_secs`.
const DEFAULT_DNS_TTL_SECS: u32 = 30;
/// Default `dns.answer_sites`.
const DEFAULT_ANSWER_SITES: usize = 1;
/// Most sites one DNS answer may name.
const MAX_ANSWER_SITES: usize = 8;
/// Most names in `dns.nameservers`.
const MAX_NAMESERVERS: usize = 13;

// Edge limits (CONTRACT.md "Edge rules"): timeouts of every HTTP listener and connection
// limits; the defaults live in `crate::limits`.
fn default_request_header_timeout_secs() -> u64 {
    crate::limits::DEFAULT_REQUEST_HEADER_TIMEOUT.as_secs()
}
fn default_idle_timeout_secs() -> u64 {
    crate::limits::DEFAULT_IDLE_TIMEOUT.as_secs()
}
fn default_tls_handshake_timeout_secs() -> u64 {
    crate::limits::DEFAULT_TLS_HANDSHAKE_TIMEOUT.as_secs()
}
/// Longest accepted timeout of the edge keys (a day): beyond it a typo, not a choice.
const MAX_EDGE_TIMEOUT_SECS: u64 = 86_400;

fn default_max_nodes() -> usize {
    DEFAULT_MAX_NODES
}
fn default_max_entries_per_partition() -> usize {
    DEFAULT_MAX_ENTRIES_PER_PARTITION
}
fn default_stale_threshold_secs() -> u64 {
    DEFAULT_STALE_THRESHOLD_SECS
}
fn default_prune_interval_secs() -> u64 {
    DEFAULT_PRUNE_INTERVAL_SECS
}
fn default_max_pending_messages() -> usize {
    DEFAULT_MAX_PENDING_MESSAGES
}
fn default_health_url_path() -> String {
    DEFAULT_HEALTH_URL_PATH.to_owned()
}
/// gorouter's own `request_timeout_in_seconds`: GRouter waits no less than it does.
fn default_response_timeout_secs() -> u64 {
    900
}
fn default_redirect_host() -> String {
    DEFAULT_REDIRECT_HOST.to_owned()
}
fn default_true() -> bool {
    true
}
fn default_sync_lost_after_secs() -> u64 {
    DEFAULT_SYNC_LOST_AFTER_SECS
}
fn default_heartbeat_interval_ms() -> u64 {
    DEFAULT_HEARTBEAT_INTERVAL_MS
}
fn default_dns_ttl_secs() -> u32 {
    DEFAULT_DNS_TTL_SECS
}
fn default_answer_sites() -> usize {
    DEFAULT_ANSWER_SITES
}

// ---------------------------------------------------------------------------------------------
// Schema.

/// A node's validated configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's id, unique in the mesh: 1..=64 characters of `[a-z0-9._-]`.
    pub node_id: String,
    /// The datacentre this node serves: 1..=32 characters of `[a-z0-9-]`, starting and ending
    /// with a letter or digit (it becomes a DNS label in redirect hosts).
    pub site: String,
    /// Optional region of the site, for region pinning; same rules as `site`.
    #[serde(default)]
    pub region: Option<String>,
    /// This site's NATS bus, where the GoRouters' route registrations are read.
    pub nats: NatsConfig,
    /// This site's GoRouters, the local targets of proxied requests.
    pub gorouters: GoroutersConfig,
    /// The HTTP(S) front door.
    pub proxy: ProxyConfig,
    /// Certificates for `proxy.https_listen`; required when it is set.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Peering with the other nodes; without it the node runs alone and is always in sync.
    #[serde(default)]
    pub mesh: Option<MeshConfig>,
    /// The authoritative DNS server for the apps' zones; off when absent.
    #[serde(default)]
    pub dns: Option<DnsConfig>,
    /// The admin API (`/healthz`, `/metrics`, `/v1/*`).
    pub admin: AdminConfig,
    /// This site's Cloud Foundry API, for placing apps across foundations; optional.
    #[serde(default)]
    pub cloud_controller: Option<CloudControllerConfig>,
    /// Automatic certificates by ACME (docs/TLS.md); off when absent.
    #[serde(default)]
    pub acme: Option<AcmeConfig>,
    /// Logging; every field has a default.
    #[serde(default)]
    pub log: LogConfig,
    /// Where this node keeps what it persists: its own control-plane writes (policies,
    /// uploaded certificates with their keys, mode 0600), the audit trail. Default:
    /// `state-<node_id>` beside the config file, so nodes that share a directory never share
    /// state. Created when missing (mode 0700).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Threads that serve requests (default: one per CPU). `1` runs everything on a single
    /// thread, which is also the fastest set-up on one core.
    #[serde(default)]
    pub worker_threads: Option<usize>,
    /// The file this configuration was read from, used to name it in errors. Not a TOML key;
    /// set by [`Config::load`] and [`Config::from_toml`].
    #[serde(skip)]
    pub source: PathBuf,
}

/// `[nats]`: this site's bus.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Servers of the site's NATS cluster, each `nats://host:port`, `tls://host:port` or
    /// `host:port` (IPv6 as `[::1]:4222`); at least one.
    pub servers: Vec<String>,
    /// User name; requires `password`.
    #[serde(default)]
    pub user: Option<String>,
    /// Password for `user`.
    #[serde(default)]
    pub password: Option<String>,
    /// Authentication token; cannot be combined with `user`.
    #[serde(default)]
    pub token: Option<String>,
    /// CA bundle (PEM) that the NATS servers' certificates must chain to.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Seconds after which an endpoint that was not re-registered is pruned (gorouter's
    /// `droplet_stale_threshold`); at least 1.
    #[serde(default = "default_stale_threshold_secs")]
    pub stale_threshold_secs: u64,
    /// Seconds between two prune passes; at least 1.
    #[serde(default = "default_prune_interval_secs")]
    pub prune_interval_secs: u64,
    /// Seconds after which a `tls_port` endpoint that was not re-registered is removed
    /// (gorouter keeps them until a dial fails; GRouter does not dial backends). Default
    /// 3 × `stale_threshold_secs`; at least `stale_threshold_secs`.
    #[serde(default)]
    pub tls_stale_threshold_secs: Option<u64>,
    /// Messages the NATS client may queue for the learner before it drops (and counts) the
    /// excess; at least 1,024.
    #[serde(default = "default_max_pending_messages")]
    pub max_pending_messages: usize,
}

impl NatsConfig {
    /// `tls_stale_threshold_secs`, or its default.
    pub fn tls_stale_threshold_secs(&self) -> u64 {
        self.tls_stale_threshold_secs.unwrap_or(
            self.stale_threshold_secs
                .saturating_mul(TLS_STALE_THRESHOLD_FACTOR),
        )
    }
}

/// Credentials are redacted so the config can be logged.
impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("NatsConfig")
            .field("servers", &self.servers)
            .field("user", &self.user)
            .field("password", &redacted(&self.password))
            .field("token", &redacted(&self.token))
            .field("tls_ca", &self.tls_ca)
            .field("stale_threshold_secs", &self.stale_threshold_secs)
            .field("prune_interval_secs", &self.prune_interval_secs)
            .field("tls_stale_threshold_secs", &self.tls_stale_threshold_secs)
            .field("max_pending_messages", &self.max_pending_messages)
            .finish()
    }
}

/// `[gorouters]`: this site's GoRouters.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoroutersConfig {
    /// Each GoRouter as `host:port` (IPv6 as `[::1]:8081`); at least one.
    pub addresses: Vec<String>,
    /// Path probed on each GoRouter to decide whether it is healthy; starts with `/`.
    #[serde(default = "default_health_url_path")]
    pub health_url_path: String,
    /// Port of the health probe when it differs from the routing port.
    #[serde(default)]
    pub health_port: Option<u16>,
    /// Isolation segments: each segment's GoRouters, `{ "seg-a" = ["127.0.0.1:8091"] }`.
    /// An endpoint registered with `isolation_segment` is served by its segment's
    /// GoRouters only (probed like the shared ones); `addresses` get only unsegmented
    /// routes.
    #[serde(default)]
    pub segments: BTreeMap<String, Vec<String>>,
    /// How long one try waits for a GoRouter's response head once the request is sent
    /// (default 900 s, gorouter's own request timeout); then 502 `endpoint_failure
    /// (timeout)`, never sent again. A paused GoRouter holds no request forever.
    #[serde(default = "default_response_timeout_secs")]
    pub response_timeout_secs: u64,
}

/// What to do with a request for an app served only at other sites.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RemoteMode {
    /// Forward it over the mesh to a node of the chosen site.
    #[default]
    Proxy,
    /// Answer 307 with the chosen site's `redirect_host`.
    Redirect,
}

/// `[proxy]`: the HTTP(S) front door.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Plain HTTP listener.
    pub http_listen: SocketAddr,
    /// HTTPS listener (HTTP/2 via ALPN); requires `[tls]`.
    #[serde(default)]
    pub https_listen: Option<SocketAddr>,
    // -- Edge limits (CONTRACT.md "Edge rules"), for every HTTP listener of the node.
    /// Seconds a client has to send a request head: the first from the connection's start
    /// (HTTP/2's preface and first request included), later ones from their first byte. On
    /// the proxy's listeners, the admin API and the connections peers forward requests on.
    /// 1..=86400.
    #[serde(default = "default_request_header_timeout_secs")]
    pub request_header_timeout_secs: u64,
    /// Seconds a kept-alive HTTP/1.1 connection may sit idle between requests, and an
    /// HTTP/2 connection without streams, on the same listeners; a client that takes no
    /// byte of what it is sent for as long is reset; a GoRouter connection an idle client
    /// gave back is closed after as long unused. 1..=86400.
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// Seconds the TLS handshake on `https_listen` may take. 1..=86400.
    #[serde(default = "default_tls_handshake_timeout_secs")]
    pub tls_handshake_timeout_secs: u64,
    /// Most client connections at once, `http_listen` and `https_listen` together; one
    /// more is closed at once and counted. Default: derived from the open-file limit,
    /// leaving room for the admin and mesh listeners and the node's own sockets
    /// (`grouter::limits::derive_limits`, docs/PROXY.md). At least 1.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Default handling of apps served only elsewhere: `proxy` or `redirect`.
    #[serde(default)]
    pub remote: RemoteMode,
    /// Host that redirects point to. Placeholders: `{label}` (required: the host's left-most
    /// label), `{site}`, `{parent}` (the host without its left-most label) and `{region}`.
    #[serde(default = "default_redirect_host")]
    pub redirect_host: String,
    /// Whether responses carry `X-Grouter-Site: <site that served>`.
    #[serde(default = "default_true")]
    pub site_header: bool,

    // gorouter parity (CONTRACT.md "gorouter parity"): forwarding headers and tracing.
    /// Clients (CIDRs) whose `X-Forwarded-For` and `X-Forwarded-Proto` are kept: load
    /// balancers in front of GRouter. Every other client's `X-Forwarded-Proto` is set from
    /// its connection. Host bits are cleared.
    #[serde(default, deserialize_with = "de_cidrs")]
    pub trusted_proxies: Vec<IpNet>,
    /// What happens to `X-Forwarded-Client-Cert` (gorouter's `forwarded_client_cert`).
    #[serde(default)]
    pub forwarded_client_cert: ForwardedClientCert,
    /// Which trace headers are created when a request carries none.
    #[serde(default)]
    pub tracing: TracingMode,
}

/// `proxy.forwarded_client_cert`, with gorouter's semantics (its `handlers/clientcert.go`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardedClientCert {
    /// Remove the client's `X-Forwarded-Client-Cert`, and set it from the certificate the
    /// client showed on the TLS connection, if any (base64 of its DER).
    #[default]
    SanitizeSet,
    /// Keep the client's header only when the client showed a certificate; remove it
    /// otherwise.
    Forward,
    /// Pass the client's header on unchanged.
    AlwaysForward,
}

/// `proxy.tracing`: the trace context created for a request that carries none (headers a
/// request brings are passed on unchanged, whatever the mode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TracingMode {
    /// W3C Trace Context: `traceparent`.
    #[default]
    W3c,
    /// Zipkin B3: `X-B3-TraceId`, `X-B3-SpanId` and the single `b3` header.
    B3,
    /// Nothing is created.
    None,
}

/// `tls.client_cert`: whether the HTTPS listener asks clients for a certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertMode {
    /// Never asked for.
    #[default]
    None,
    /// Asked for; a client without one is served, one with a certificate that
    /// `tls.client_ca` does not vouch for is refused at the handshake.
    Request,
    /// Required: a client without a certificate `tls.client_ca` vouches for is refused.
    Require,
}

/// `[tls]`: server certificates for `proxy.https_listen`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Directory of `<host>.pem` + `<host>.key` pairs (wildcards as `_wildcard.<domain>`),
    /// hot-reloaded.
    pub cert_dir: PathBuf,
    /// Certificate chain (PEM) served when no certificate in `cert_dir` matches.
    pub default_cert: PathBuf,
    /// Private key (PEM) of `default_cert`.
    pub default_key: PathBuf,
    /// Whether clients are asked for a certificate: `none`, `request` or `require`.
    #[serde(default)]
    pub client_cert: ClientCertMode,
    /// CA certificates (PEM, one or more) that client certificates must chain to; required
    /// unless `client_cert = "none"`.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// `[mesh]`: mutual-TLS peering with the other nodes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshConfig {
    /// Address the mesh listener binds.
    pub listen: SocketAddr,
    /// `host:port` other nodes use to reach this one. Default: the address `listen` bound
    /// (fine when `listen` names a specific IP; required when it is `0.0.0.0` or `::`).
    #[serde(default)]
    pub advertise: Option<String>,
    /// `host:port` of any reachable nodes; the rest are discovered. Empty for the first node.
    #[serde(default)]
    pub seeds: Vec<String>,
    /// The IP address this node's connections to other nodes (mesh sessions, proxied
    /// requests, droplet copies) leave from. Default: as the routing table chooses. Set it
    /// on an anycast host to the node's unicast address, so that answers come back here.
    #[serde(default)]
    pub dial_from: Option<std::net::IpAddr>,
    /// Mesh CA certificate (PEM) that peers' certificates must chain to.
    pub ca: PathBuf,
    /// This node's certificate (PEM), carrying its node id and site.
    pub cert: PathBuf,
    /// Private key (PEM) of `cert`.
    pub key: PathBuf,
    /// Seconds without contact with any peer after which sync is `lost`; at least 1.
    #[serde(default = "default_sync_lost_after_secs")]
    pub sync_lost_after_secs: u64,
    /// Milliseconds between heartbeats to each peer; at least 50 and below
    /// `sync_lost_after_secs`.
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// The mesh CA's certificate revocation list (PEM, as `grouter tls revoke` writes it).
    /// Optional; when set it must exist at start, and it is reloaded when it changes: a
    /// revoked certificate is refused at the handshake and its connections are closed.
    #[serde(default)]
    pub crl: Option<PathBuf>,
    /// Which names each site may announce: site -> domains, each `example.com` (that name
    /// and every name under it) or `*.example.com` (every name under it, not the name
    /// itself); lower-cased. A route of a site's node under none of its domains is held
    /// (it is part of what the owner signed, and relayed intact) but never routed, answered
    /// in DNS or listed. A site without an entry may announce anything.
    #[serde(default)]
    pub site_domains: BTreeMap<String, Vec<String>>,
    /// Most nodes (partitions) this node holds; more are refused and counted. At least 1.
    #[serde(default = "default_max_nodes")]
    pub max_nodes: usize,
    /// Most routes (entries and tombstones) one partition may hold; more are refused and
    /// counted. At least 1.
    #[serde(default = "default_max_entries_per_partition")]
    pub max_entries_per_partition: usize,
    /// Most connections the mesh listener holds at once (sessions and the connections
    /// peers forward requests on); one more is closed at once and counted. Default:
    /// derived from the open-file limit (docs/PROXY.md). At least 1.
    #[serde(default)]
    pub max_connections: Option<usize>,
}

/// `[dns]`: authoritative answers for the apps' zones, steering clients to a site.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Address served over both UDP and TCP.
    pub listen: SocketAddr,
    /// Zones answered for, lower-cased and without a trailing dot; at least one.
    pub zones: Vec<String>,
    /// TTL of the answers, in seconds.
    #[serde(default = "default_dns_ttl_secs")]
    pub ttl_secs: u32,
    /// This site's public entry addresses (A/AAAA records); at least one.
    pub site_addresses: Vec<IpAddr>,
    /// Resolver or ECS subnet -> nearest site, written as a table `{ "10.1.0.0/16" = "lon" }`.
    /// Stored most specific network first (then by address), so the first match is the
    /// longest prefix. Host bits in a key are cleared (`10.1.2.3/16` is `10.1.0.0/16`).
    #[serde(default, deserialize_with = "de_client_networks")]
    pub client_networks: Vec<(IpNet, String)>,
    /// How many sites one answer names (best first); 1..=8.
    #[serde(default = "default_answer_sites")]
    pub answer_sites: usize,
    /// The zones' name servers, `{ "ns1.apps.example.com" = ["192.0.2.53"] }`: the apex NS
    /// set of every zone (the first name, in sorted order, is the SOA's primary). A name
    /// inside a zone must list its addresses (answered for it, and glue beside NS answers);
    /// one outside every zone must list none (not ours to answer). Names are lower-cased,
    /// without a trailing dot. Empty (the default): each zone's only name server is
    /// `ns.<zone>`, with `site_addresses`.
    #[serde(default)]
    pub nameservers: BTreeMap<String, Vec<IpAddr>>,
}

/// `[admin]`: the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin HTTP listener.
    pub listen: SocketAddr,
    /// File holding the bearer token for `/v1/*`: reads and writes (surrounding whitespace
    /// ignored).
    pub token_file: PathBuf,
    /// Optional file holding a second token that may only read `/v1/*` (403 on writes).
    #[serde(default)]
    pub read_token_file: Option<PathBuf>,
    /// Most admin connections at once; one more is closed at once and counted. Default:
    /// derived from the open-file limit (docs/PROXY.md). At least 1.
    #[serde(default)]
    pub max_connections: Option<usize>,
}

/// `[cloud_controller]`: this site's Cloud Foundry API and the UAA client it uses
/// (docs/PLACEMENT.md). Every node of a site should carry the same section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudControllerConfig {
    /// The Cloud Controller's base URL (`https://api.sys.lon.example.com`).
    pub api: String,
    /// The UAA's base URL (`https://uaa.sys.lon.example.com`).
    pub uaa: String,
    /// The UAA client (grant `client_credentials`) this site's nodes use.
    pub client_id: String,
    /// File holding the client's secret (surrounding whitespace ignored).
    pub client_secret_file: PathBuf,
    /// Optional PEM roots for the API, UAA and blobstore, besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// An ACME challenge type GRouter answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
pub enum AcmeChallenge {
    /// HTTP-01, on `proxy.http_listen` (port 80 to the CA).
    #[serde(rename = "http-01")]
    Http01,
    /// TLS-ALPN-01, on `proxy.https_listen` (port 443 to the CA).
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

/// `[acme]`: certificates ordered from an ACME CA for routed names under `domains`, once
/// for the whole mesh (docs/TLS.md). Every node of every site should carry the same section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The CA's directory (`https://acme-v02.api.letsencrypt.org/directory`).
    pub directory_url: String,
    /// Optional PEM roots for the CA's API, besides the system's.
    #[serde(default)]
    pub ca_roots: Option<PathBuf>,
    /// The account's contacts (`mailto:` URLs).
    #[serde(default)]
    pub contact: Vec<String>,
    /// Names under these (and only these: a name itself or any name below it) are ordered
    /// when routed; lower-cased, without a trailing dot; at least one.
    pub domains: Vec<String>,
    /// The challenge types offered to the CA, tried in this order; default both.
    #[serde(default = "default_acme_challenges")]
    pub challenges: Vec<AcmeChallenge>,
    /// When to renew, as a fraction of the certificate's lifetime (0.5..=0.9; 0.66).
    #[serde(default = "default_renew_at")]
    pub renew_at: f64,
}

// `renew_at` is validated to a finite range, so equality is reflexive.
impl Eq for AcmeConfig {}

fn default_acme_challenges() -> Vec<AcmeChallenge> {
    vec![AcmeChallenge::Http01, AcmeChallenge::TlsAlpn01]
}

fn default_renew_at() -> f64 {
    0.66
}

impl AcmeConfig {
    /// Whether `name` (lower-case) is one of `domains` or below one.
    pub fn covers(&self, name: &str) -> bool {
        self.domains.iter().any(|d| {
            name == d
                || name
                    .strip_suffix(d.as_str())
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
        })
    }

    fn validate(&mut self, p: &mut Problems<'_>, https: bool) {
        if let Err(why) = check_base_url(&self.directory_url) {
            p.push("acme.directory_url", why);
        } else if !self.directory_url.starts_with("https://") {
            p.push(
                "acme.directory_url",
                "must be an https:// URL (RFC 8555 §6.1)",
            );
        }
        if let Some(ca) = &self.ca_roots {
            check_path(p, "acme.ca_roots", ca);
        }
        for (i, c) in self.contact.iter().enumerate() {
            if !c.starts_with("mailto:") || c.len() <= 7 || c.chars().any(char::is_control) {
                p.push(
                    format!("acme.contact[{i}]"),
                    format!("{c:?} is not a mailto: URL"),
                );
            }
        }
        if self.domains.is_empty() {
            p.push("acme.domains", "must list at least one domain");
        }
        for (i, d) in self.domains.iter_mut().enumerate() {
            let normal = d.strip_suffix('.').unwrap_or(d).to_ascii_lowercase();
            if let Err(why) = check_dns_name(&normal) {
                p.push(
                    format!("acme.domains[{i}]"),
                    format!("invalid domain {d:?}: {why}"),
                );
            } else if !normal.contains('.') {
                p.push(
                    format!("acme.domains[{i}]"),
                    format!("{normal:?} is a top-level domain: name one below it"),
                );
            }
            *d = normal;
        }
        if self.challenges.is_empty() {
            p.push("acme.challenges", "must list http-01, tls-alpn-01 or both");
        }
        if self.challenges.contains(&AcmeChallenge::TlsAlpn01) && !https {
            p.push(
                "acme.challenges",
                "tls-alpn-01 needs proxy.https_listen (the CA validates on port 443)",
            );
        }
        if !(0.5..=0.9).contains(&self.renew_at) {
            p.push(
                "acme.renew_at",
                format!("{} is out of range 0.5..=0.9", self.renew_at),
            );
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`: logging.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// Whether every proxied request is logged.
    #[serde(default = "default_true")]
    pub access_log: bool,
    /// The access log line: `json` (GRouter's record, one field per fact) or `rtr`
    /// (gorouter's access-log line).
    #[serde(default)]
    pub access_log_format: AccessLogFormat,
}

/// `log.access_log_format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// GRouter's structured record: one field per fact, a JSON object with `format = "json"`.
    #[default]
    Json,
    /// gorouter's line (`accesslog/schema`): `host - [time] "METHOD uri PROTO" status …`,
    /// as the event's message.
    Rtr,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            access_log: default_true(),
            access_log_format: AccessLogFormat::default(),
        }
    }
}

/// A `dns.client_networks` key: a CIDR, parsed while the key is read so that an error names it.
struct Cidr(IpNet);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse::<IpNet>()
            .map(|net| Cidr(net.trunc()))
            .map_err(|_| {
                de::Error::custom(format!(
                    "invalid CIDR {text:?}: expected a network such as \"10.1.0.0/16\" or \
                 \"2001:db8::/32\""
                ))
            })
    }
}

/// Reads a list of CIDRs (`proxy.trusted_proxies`), each checked as it is read.
fn de_cidrs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    let nets = Vec::<Cidr>::deserialize(deserializer)?;
    Ok(nets.into_iter().map(|Cidr(net)| net).collect())
}

/// Reads `dns.client_networks` as a table of CIDR keys, in file order (sorted by `validate`).
fn de_client_networks<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<(IpNet, String)>, D::Error> {
    struct NetworksVisitor;
    impl<'de> Visitor<'de> for NetworksVisitor {
        type Value = Vec<(IpNet, String)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a table of \"CIDR\" = \"site\"")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((Cidr(net), site)) = map.next_entry::<Cidr, String>()? {
                out.push((net, site));
            }
            Ok(out)
        }
    }
    deserializer.deserialize_map(NetworksVisitor)
}

// ---------------------------------------------------------------------------------------------
// Errors.

/// One problem in a config file: `FILE: key: reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}{}", .file.display(), key_prefix(.key), .reason)]
pub struct ConfigError {
    /// The config file at fault.
    pub file: PathBuf,
    /// Dotted key at fault, e.g. `nats.servers[1]`; empty when the problem is the file as a
    /// whole (unreadable, or not TOML at all).
    pub key: String,
    /// What is wrong, in lower case.
    pub reason: String,
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

/// Every problem found in a config file, in file order where known; displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", lines(.0))]
pub struct ConfigErrors(pub Vec<ConfigError>);

fn lines(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Collects validation problems for one file.
struct Problems<'a> {
    file: &'a Path,
    found: Vec<ConfigError>,
}

impl Problems<'_> {
    fn push(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.found.push(ConfigError {
            file: self.file.to_path_buf(),
            key: key.into(),
            reason: reason.into(),
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Loading.

impl Config {
    /// Read, parse and validate. Relative paths in the file are resolved against the config
    /// file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                key: String::new(),
                reason: format!("cannot read file: {e}"),
            }])
        })?;
        let base_dir = path.parent().unwrap_or(Path::new(""));
        Self::from_toml(&text, path, base_dir)
    }

    /// Parse and validate text; `origin` is the file name used in error messages; `base_dir`
    /// resolves relative paths.
    pub fn from_toml(text: &str, origin: &Path, base_dir: &Path) -> Result<Config, ConfigErrors> {
        let one = |key: String, reason: String| {
            ConfigErrors(vec![ConfigError {
                file: origin.to_path_buf(),
                key,
                reason,
            }])
        };
        let deserializer = toml::Deserializer::parse(text).map_err(|e| {
            let reason = match e.span() {
                Some(span) => {
                    let (line, column) = line_column(text, span.start);
                    format!("line {line}, column {column}: {}", e.message())
                }
                None => e.message().to_owned(),
            };
            one(
                String::new(),
                format!("invalid TOML: {}", single_line(&reason)),
            )
        })?;
        let mut config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let (key, reason) = describe_serde_error(text, &e);
            one(key, reason)
        })?;
        config.source = origin.to_path_buf();

        let mut problems = Problems {
            file: origin,
            found: Vec::new(),
        };
        config.validate(&mut problems);
        if !problems.found.is_empty() {
            return Err(ConfigErrors(problems.found));
        }
        config.resolve_paths(base_dir);
        Ok(config)
    }

    /// Validate a loaded config again (for the fuzz targets): what passed must pass again,
    /// and normalising what it normalised must change nothing.
    pub(crate) fn revalidated(&self) -> Result<Config, ConfigErrors> {
        let mut again = self.clone();
        let mut problems = Problems {
            file: &self.source,
            found: Vec::new(),
        };
        again.validate(&mut problems);
        if problems.found.is_empty() {
            Ok(again)
        } else {
            Err(ConfigErrors(problems.found))
        }
    }

    /// Referenced files that do not exist or cannot be read (token file, TLS and mesh
    /// cert/key/ca). `grouter check` prints these as warnings; `grouter run` treats them as
    /// errors.
    pub fn missing_files(&self) -> Vec<ConfigError> {
        let mut problems = Problems {
            file: &self.source,
            found: Vec::new(),
        };
        let mut files: Vec<(&str, &Path)> = vec![("admin.token_file", &self.admin.token_file)];
        if let Some(read) = &self.admin.read_token_file {
            files.push(("admin.read_token_file", read));
        }
        if let Some(ca) = &self.nats.tls_ca {
            files.push(("nats.tls_ca", ca));
        }
        if let Some(tls) = &self.tls {
            files.push(("tls.default_cert", &tls.default_cert));
            files.push(("tls.default_key", &tls.default_key));
            if let Some(ca) = &tls.client_ca {
                files.push(("tls.client_ca", ca));
            }
        }
        if let Some(cc) = &self.cloud_controller {
            files.push((
                "cloud_controller.client_secret_file",
                &cc.client_secret_file,
            ));
            if let Some(ca) = &cc.ca_file {
                files.push(("cloud_controller.ca_file", ca));
            }
        }
        if let Some(ca) = self.acme.as_ref().and_then(|a| a.ca_roots.as_ref()) {
            files.push(("acme.ca_roots", ca));
        }
        if let Some(mesh) = &self.mesh {
            files.push(("mesh.ca", &mesh.ca));
            files.push(("mesh.cert", &mesh.cert));
            files.push(("mesh.key", &mesh.key));
            if let Some(crl) = &mesh.crl {
                files.push(("mesh.crl", crl));
            }
        }
        for (key, path) in files {
            match std::fs::read(path) {
                Ok(bytes)
                    if (key.starts_with("admin.") && key.ends_with("token_file")
                        || key == "cloud_controller.client_secret_file")
                        && bytes.trim_ascii().is_empty() =>
                {
                    problems.push(key, format!("{} is empty", path.display()));
                }
                Ok(_) => {}
                Err(e) => problems.push(key, unreadable(path, &e)),
            }
        }
        let cert_dir = self.tls.as_ref().map(|tls| &tls.cert_dir);
        if let Some((dir, Err(e))) = cert_dir.map(|dir| (dir, std::fs::read_dir(dir))) {
            problems.push("tls.cert_dir", unreadable(dir, &e));
        }
        problems.found
    }

    /// Checks everything types cannot express, collecting every problem; normalises
    /// `dns.zones` and orders `dns.client_networks`.
    fn validate(&mut self, p: &mut Problems<'_>) {
        if let Err(reason) = names::check_node_id(&self.node_id) {
            p.push("node_id", reason);
        }
        check_site_name(p, "site", &self.site);
        if let Some(region) = &self.region {
            check_site_name(p, "region", region);
        }
        if let Some(n) = self.worker_threads
            && !(1..=1024).contains(&n)
        {
            p.push("worker_threads", format!("{n} is out of range 1..=1024"));
        }
        self.nats.validate(p);
        self.gorouters.validate(p);
        self.proxy.validate(p);
        if self.proxy.https_listen.is_some() && self.tls.is_none() {
            p.push("tls", "missing (required when proxy.https_listen is set)");
        }
        if let Some(tls) = &self.tls {
            tls.validate(p);
        }
        if let Some(mesh) = &mut self.mesh {
            mesh.validate(p);
        }
        if let Some(dns) = &mut self.dns {
            dns.validate(p);
        }
        check_path(p, "admin.token_file", &self.admin.token_file);
        if let Some(read) = &self.admin.read_token_file {
            check_path(p, "admin.read_token_file", read);
        }
        check_max_connections(p, "admin.max_connections", self.admin.max_connections);
        if let Some(cc) = &self.cloud_controller {
            cc.validate(p);
        }
        let https = self.proxy.https_listen.is_some();
        if let Some(acme) = &mut self.acme {
            acme.validate(p, https);
        }
        self.check_listeners_distinct(p);
    }

    /// Two listeners on the same address would fail at bind time with a less helpful message.
    /// Port 0 (any free port) never clashes.
    fn check_listeners_distinct(&self, p: &mut Problems<'_>) {
        let mut listeners = vec![("proxy.http_listen", self.proxy.http_listen)];
        listeners.extend(self.proxy.https_listen.map(|a| ("proxy.https_listen", a)));
        if let Some(mesh) = &self.mesh {
            listeners.push(("mesh.listen", mesh.listen));
        }
        if let Some(dns) = &self.dns {
            listeners.push(("dns.listen", dns.listen));
        }
        listeners.push(("admin.listen", self.admin.listen));
        for (i, (key, addr)) in listeners.iter().enumerate() {
            if addr.port() == 0 {
                continue;
            }
            if let Some((earlier, _)) = listeners.iter().take(i).find(|(_, a)| a == addr) {
                p.push(*key, format!("{addr} is already used by {earlier}"));
            }
        }
    }

    fn resolve_paths(&mut self, base_dir: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base_dir.join(&*path);
            }
        };
        if let Some(ca) = &mut self.nats.tls_ca {
            resolve(ca);
        }
        if let Some(tls) = &mut self.tls {
            resolve(&mut tls.cert_dir);
            resolve(&mut tls.default_cert);
            resolve(&mut tls.default_key);
            if let Some(ca) = &mut tls.client_ca {
                resolve(ca);
            }
        }
        if let Some(mesh) = &mut self.mesh {
            resolve(&mut mesh.ca);
            resolve(&mut mesh.cert);
            resolve(&mut mesh.key);
            if let Some(crl) = &mut mesh.crl {
                resolve(crl);
            }
        }
        if let Some(ca) = self.acme.as_mut().and_then(|a| a.ca_roots.as_mut()) {
            resolve(ca);
        }
        if let Some(cc) = &mut self.cloud_controller {
            resolve(&mut cc.client_secret_file);
            if let Some(ca) = &mut cc.ca_file {
                resolve(ca);
            }
        }
        resolve(&mut self.admin.token_file);
        if let Some(read) = &mut self.admin.read_token_file {
            resolve(read);
        }
        let state_dir = self
            .state_dir
            .get_or_insert_with(|| PathBuf::from(format!("state-{}", self.node_id)));
        resolve(state_dir);
    }

    /// The node's state directory (`state_dir`, resolved; see [`Config::state_dir`]).
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("state-{}", self.node_id)))
    }
}

impl CloudControllerConfig {
    fn validate(&self, p: &mut Problems<'_>) {
        for (key, url) in [
            ("cloud_controller.api", &self.api),
            ("cloud_controller.uaa", &self.uaa),
        ] {
            if let Err(why) = check_base_url(url) {
                p.push(key, why);
            }
        }
        if self.client_id.is_empty()
            || self.client_id.len() > 255
            || self.client_id.chars().any(char::is_control)
        {
            p.push(
                "cloud_controller.client_id",
                "must be 1..=255 characters without control characters",
            );
        }
        check_path(
            p,
            "cloud_controller.client_secret_file",
            &self.client_secret_file,
        );
        if let Some(ca) = &self.ca_file {
            check_path(p, "cloud_controller.ca_file", ca);
        }
    }
}

/// An `http://` or `https://` URL with a host, and nothing after the path.
fn check_base_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("{url:?} must start with https:// or http://"))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    if url.contains(['?', '#', '@', ' ']) || url.chars().any(char::is_control) {
        return Err(format!(
            "{url:?} must be a plain base URL (no query, fragment, user or spaces)"
        ));
    }
    Ok(())
}

impl NatsConfig {
    fn validate(&self, p: &mut Problems<'_>) {
        if self.servers.is_empty() {
            p.push("nats.servers", "must list at least one server");
        }
        for (i, server) in self.servers.iter().enumerate() {
            if let Err(why) = check_nats_server(server) {
                p.push(
                    format!("nats.servers[{i}]"),
                    format!("invalid address {server:?}: {why}"),
                );
            }
        }
        for (key, value) in [
            ("nats.user", &self.user),
            ("nats.password", &self.password),
            ("nats.token", &self.token),
        ] {
            if value.as_deref() == Some("") {
                p.push(key, "must not be empty");
            }
        }
        match (&self.user, &self.password) {
            (Some(_), None) => p.push("nats.password", "missing (required when nats.user is set)"),
            (None, Some(_)) => p.push("nats.user", "missing (required when nats.password is set)"),
            _ => {}
        }
        if self.user.is_some() && self.token.is_some() {
            p.push("nats.token", "cannot be combined with nats.user");
        }
        if let Some(ca) = &self.tls_ca {
            check_path(p, "nats.tls_ca", ca);
        }
        check_at_least(p, "nats.stale_threshold_secs", self.stale_threshold_secs, 1);
        check_at_least(p, "nats.prune_interval_secs", self.prune_interval_secs, 1);
        if let Some(tls) = self.tls_stale_threshold_secs {
            check_at_least(
                p,
                "nats.tls_stale_threshold_secs",
                tls,
                self.stale_threshold_secs,
            );
        }
        check_at_least(
            p,
            "nats.max_pending_messages",
            to_u64(self.max_pending_messages),
            to_u64(MIN_PENDING_MESSAGES),
        );
    }
}

impl GoroutersConfig {
    fn validate(&self, p: &mut Problems<'_>) {
        if self.addresses.is_empty() {
            p.push("gorouters.addresses", "must list at least one address");
        }
        for (i, address) in self.addresses.iter().enumerate() {
            if let Err(why) = check_host_port(address) {
                p.push(
                    format!("gorouters.addresses[{i}]"),
                    format!("invalid address {address:?}: {why}"),
                );
            }
        }
        if !self.health_url_path.starts_with('/') {
            p.push(
                "gorouters.health_url_path",
                format!("{:?} must start with '/'", self.health_url_path),
            );
        } else if self
            .health_url_path
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            p.push("gorouters.health_url_path", "must not contain whitespace");
        }
        if self.health_port == Some(0) {
            p.push("gorouters.health_port", "must be 1..=65535");
        }
        check_range(
            p,
            "gorouters.response_timeout_secs",
            self.response_timeout_secs,
            1,
            MAX_EDGE_TIMEOUT_SECS,
        );
        let mut seen: BTreeSet<&str> = self.addresses.iter().map(String::as_str).collect();
        for (segment, addresses) in &self.segments {
            let key = format!("gorouters.segments.{segment}");
            if segment.is_empty()
                || segment.len() > 255
                || segment.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                p.push(
                    "gorouters.segments",
                    format!("{segment:?}: a segment name is 1 to 255 characters without spaces"),
                );
            }
            if addresses.is_empty() {
                p.push(key.clone(), "must list at least one address");
            }
            for (i, address) in addresses.iter().enumerate() {
                if let Err(why) = check_host_port(address) {
                    p.push(
                        format!("{key}[{i}]"),
                        format!("invalid address {address:?}: {why}"),
                    );
                } else if !seen.insert(address) {
                    p.push(
                        format!("{key}[{i}]"),
                        format!("{address:?} is already a GoRouter of another pool"),
                    );
                }
            }
        }
    }
}

impl ProxyConfig {
    fn validate(&self, p: &mut Problems<'_>) {
        if let Err(why) = check_redirect_host(&self.redirect_host) {
            p.push(
                "proxy.redirect_host",
                format!("invalid template {:?}: {why}", self.redirect_host),
            );
        }
        self.validate_edge(p);
    }

    /// The edge keys (CONTRACT.md "Edge rules").
    fn validate_edge(&self, p: &mut Problems<'_>) {
        for (key, secs) in [
            (
                "proxy.request_header_timeout_secs",
                self.request_header_timeout_secs,
            ),
            ("proxy.idle_timeout_secs", self.idle_timeout_secs),
            (
                "proxy.tls_handshake_timeout_secs",
                self.tls_handshake_timeout_secs,
            ),
        ] {
            check_range(p, key, secs, 1, MAX_EDGE_TIMEOUT_SECS);
        }
        check_max_connections(p, "proxy.max_connections", self.max_connections);
    }

    /// The edge timeouts.
    pub fn timeouts(&self) -> crate::limits::Timeouts {
        use std::time::Duration;
        crate::limits::Timeouts {
            request_header: Duration::from_secs(self.request_header_timeout_secs),
            idle: Duration::from_secs(self.idle_timeout_secs),
            tls_handshake: Duration::from_secs(self.tls_handshake_timeout_secs),
        }
    }
}

fn check_range(p: &mut Problems<'_>, key: &str, value: u64, min: u64, max: u64) {
    if !(min..=max).contains(&value) {
        p.push(key, format!("{value} is out of range {min}..={max}"));
    }
}

fn check_max_connections(p: &mut Problems<'_>, key: &str, value: Option<usize>) {
    if value == Some(0) {
        p.push(key, "must be at least 1");
    }
}

impl TlsConfig {
    fn validate(&self, p: &mut Problems<'_>) {
        check_path(p, "tls.cert_dir", &self.cert_dir);
        check_path(p, "tls.default_cert", &self.default_cert);
        check_path(p, "tls.default_key", &self.default_key);
        match (&self.client_ca, self.client_cert) {
            (Some(ca), _) => check_path(p, "tls.client_ca", ca),
            (None, ClientCertMode::None) => {}
            (None, _) => p.push(
                "tls.client_ca",
                "missing (required when tls.client_cert is \"request\" or \"require\")",
            ),
        }
    }
}

impl MeshConfig {
    /// Checks the section and lower-cases `site_domains`.
    fn validate(&mut self, p: &mut Problems<'_>) {
        match &self.advertise {
            Some(advertise) => {
                if let Err(why) = check_host_port(advertise) {
                    p.push(
                        "mesh.advertise",
                        format!("invalid address {advertise:?}: {why}"),
                    );
                }
            }
            None if self.listen.ip().is_unspecified() => p.push(
                "mesh.advertise",
                "missing: mesh.listen binds every address, so say which one peers should dial",
            ),
            None => {}
        }
        for (i, seed) in self.seeds.iter().enumerate() {
            if let Err(why) = check_host_port(seed) {
                p.push(
                    format!("mesh.seeds[{i}]"),
                    format!("invalid address {seed:?}: {why}"),
                );
            }
        }
        check_path(p, "mesh.ca", &self.ca);
        check_path(p, "mesh.cert", &self.cert);
        check_path(p, "mesh.key", &self.key);
        if let Some(crl) = &self.crl {
            check_path(p, "mesh.crl", crl);
        }
        for (site, patterns) in &mut self.site_domains {
            let key = format!("mesh.site_domains.{site}");
            check_site_name(p, &key, site);
            let mut seen = BTreeSet::new();
            for (i, pattern) in patterns.iter_mut().enumerate() {
                let normal = pattern.to_ascii_lowercase();
                let host = normal.strip_prefix("*.").unwrap_or(&normal);
                if let Err(why) = check_dns_name(host) {
                    p.push(
                        format!("{key}[{i}]"),
                        format!("invalid domain {pattern:?} (a host name or *.suffix): {why}"),
                    );
                } else if !seen.insert(normal.clone()) {
                    p.push(
                        format!("{key}[{i}]"),
                        format!("duplicate domain {normal:?}"),
                    );
                }
                *pattern = normal;
            }
        }
        check_at_least(p, "mesh.max_nodes", to_u64(self.max_nodes), 1);
        check_max_connections(p, "mesh.max_connections", self.max_connections);
        check_at_least(
            p,
            "mesh.max_entries_per_partition",
            to_u64(self.max_entries_per_partition),
            1,
        );
        check_at_least(p, "mesh.sync_lost_after_secs", self.sync_lost_after_secs, 1);
        check_at_least(
            p,
            "mesh.heartbeat_interval_ms",
            self.heartbeat_interval_ms,
            MIN_HEARTBEAT_INTERVAL_MS,
        );
        // A peer must get at least one heartbeat in before it declares sync lost.
        let lost_ms = self.sync_lost_after_secs.saturating_mul(1000);
        if self.sync_lost_after_secs >= 1 && self.heartbeat_interval_ms >= lost_ms {
            p.push(
                "mesh.heartbeat_interval_ms",
                format!(
                    "must be below mesh.sync_lost_after_secs ({lost_ms} ms), got {}",
                    self.heartbeat_interval_ms
                ),
            );
        }
    }
}

impl DnsConfig {
    fn validate(&mut self, p: &mut Problems<'_>) {
        if self.zones.is_empty() {
            p.push("dns.zones", "must list at least one zone");
        }
        let mut seen = BTreeSet::new();
        for (i, zone) in self.zones.iter_mut().enumerate() {
            let normal = zone.strip_suffix('.').unwrap_or(zone).to_ascii_lowercase();
            if let Err(why) = check_dns_name(&normal) {
                p.push(
                    format!("dns.zones[{i}]"),
                    format!("invalid zone {zone:?}: {why}"),
                );
            } else if !seen.insert(normal.clone()) {
                p.push(
                    format!("dns.zones[{i}]"),
                    format!("duplicate zone {normal:?}"),
                );
            }
            *zone = normal;
        }
        if self.site_addresses.is_empty() {
            p.push("dns.site_addresses", "must list at least one address");
        }
        for (i, ip) in self.site_addresses.iter().enumerate() {
            if ip.is_unspecified() || ip.is_multicast() {
                p.push(
                    format!("dns.site_addresses[{i}]"),
                    format!("{ip} cannot be a host address"),
                );
            }
        }
        // Most specific first, so lookups can take the first match.
        self.client_networks
            .sort_by(|(a, _), (b, _)| b.prefix_len().cmp(&a.prefix_len()).then(a.cmp(b)));
        let mut previous: Option<IpNet> = None;
        for (net, site) in &self.client_networks {
            let key = format!("dns.client_networks.\"{net}\"");
            if previous == Some(*net) {
                p.push(
                    &key,
                    "duplicate network (keys are compared with host bits cleared)",
                );
            }
            previous = Some(*net);
            check_site_name(p, &key, site);
        }
        if !(1..=MAX_ANSWER_SITES).contains(&self.answer_sites) {
            p.push(
                "dns.answer_sites",
                format!("must be 1..={MAX_ANSWER_SITES}, got {}", self.answer_sites),
            );
        }
        self.validate_nameservers(p);
    }

    fn validate_nameservers(&mut self, p: &mut Problems<'_>) {
        if self.nameservers.len() > MAX_NAMESERVERS {
            p.push(
                "dns.nameservers",
                format!(
                    "at most {MAX_NAMESERVERS} names, got {}",
                    self.nameservers.len()
                ),
            );
        }
        let mut normalised = BTreeMap::new();
        for (name, addresses) in std::mem::take(&mut self.nameservers) {
            let key = format!("dns.nameservers.\"{name}\"");
            let normal = name.strip_suffix('.').unwrap_or(&name).to_ascii_lowercase();
            if let Err(why) = check_dns_name(&normal) {
                p.push(&key, format!("invalid name: {why}"));
                continue;
            }
            let in_zone = self.zones.iter().any(|z| {
                normal == *z
                    || (normal.len() > z.len()
                        && normal.ends_with(z.as_str())
                        && normal.as_bytes().get(normal.len() - z.len() - 1) == Some(&b'.'))
            });
            if in_zone && addresses.is_empty() {
                p.push(
                    &key,
                    "a name inside dns.zones must list its addresses (they are its A/AAAA \
                     records and the glue)",
                );
            }
            if !in_zone && !addresses.is_empty() {
                p.push(
                    &key,
                    "a name outside dns.zones is not answered here: list no addresses",
                );
            }
            for (i, ip) in addresses.iter().enumerate() {
                if ip.is_unspecified() || ip.is_multicast() {
                    p.push(
                        format!("{key}[{i}]"),
                        format!("{ip} cannot be a host address"),
                    );
                }
            }
            if normalised.insert(normal.clone(), addresses).is_some() {
                p.push(&key, format!("duplicate name {normal:?}"));
            }
        }
        self.nameservers = normalised;
    }
}

// ---------------------------------------------------------------------------------------------
// Checks.

fn check_at_least(p: &mut Problems<'_>, key: &str, value: u64, min: u64) {
    if value < min {
        p.push(key, format!("must be at least {min}, got {value}"));
    }
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn check_path(p: &mut Problems<'_>, key: &str, path: &Path) {
    if path.as_os_str().is_empty() {
        p.push(key, "must not be empty");
    }
}

/// A site or region name (see [`names::check_site`]).
fn check_site_name(p: &mut Problems<'_>, key: &str, value: &str) {
    if let Err(reason) = names::check_site(value) {
        p.push(key, reason);
    }
}

/// `nats://host:port`, `tls://host:port` or `host:port`.
fn check_nats_server(server: &str) -> Result<(), String> {
    let host_port = if let Some(rest) = server.strip_prefix("nats://") {
        rest
    } else if let Some(rest) = server.strip_prefix("tls://") {
        rest
    } else if server.contains("://") {
        return Err("unsupported scheme; use nats://, tls:// or none".to_owned());
    } else {
        server
    };
    if host_port.contains('@') {
        return Err(
            "credentials in the address are not accepted; use nats.user and \
                    nats.password, or nats.token"
                .to_owned(),
        );
    }
    check_host_port(host_port)
}

/// `host:port` where host is an IPv4 address, a bracketed IPv6 address or a host name, and the
/// port is 1..=65535.
fn check_host_port(address: &str) -> Result<(), String> {
    let port = if let Some(rest) = address.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or("missing ']' after the IPv6 address")?;
        ip.parse::<Ipv6Addr>()
            .map_err(|_| format!("{ip:?} is not an IPv6 address"))?;
        after.strip_prefix(':').ok_or("missing :port")?
    } else {
        let (host, port) = address.rsplit_once(':').ok_or("missing :port")?;
        if host.contains(':') {
            return Err("write IPv6 addresses in brackets, e.g. [::1]:8081".to_owned());
        }
        check_host(host)?;
        port
    };
    match port.parse::<u16>() {
        Ok(0) => Err("port must be 1..=65535".to_owned()),
        Ok(_) => Ok(()),
        Err(_) => Err(format!("invalid port {port:?}")),
    }
}

/// An IPv4 address or a host name (letters, digits, '-' and '_' in dot-separated labels).
fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("missing host".to_owned());
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return Ok(());
    }
    let labels_ok = host.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    let looks_numeric = host
        .rsplit('.')
        .next()
        .is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()));
    if labels_ok && !looks_numeric {
        Ok(())
    } else {
        Err(format!("{host:?} is not an IPv4 address or host name"))
    }
}

/// A lower-case DNS name without a trailing dot.
fn check_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.len() > 253 {
        return Err("longer than 253 characters".to_owned());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label".to_owned());
        }
        if label.len() > 63 {
            return Err(format!("label {label:?} is longer than 63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!("label {label:?} contains {c:?}"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with '-'"));
        }
    }
    Ok(())
}

/// Literal host characters around `{placeholder}`s; `{label}` is required.
fn check_redirect_host(template: &str) -> Result<(), String> {
    fn literal(text: &str) -> Result<(), String> {
        match text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-')))
        {
            Some('}') => Err("'}' without '{'".to_owned()),
            Some(c) => Err(format!("{c:?} cannot appear in a host name")),
            None => Ok(()),
        }
    }
    let mut has_label = false;
    let mut rest = template;
    while let Some((before, after)) = rest.split_once('{') {
        literal(before)?;
        let (name, tail) = after.split_once('}').ok_or("'{' without '}'")?;
        if !REDIRECT_PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "unknown placeholder {{{}}}; allowed are {{label}}, {{site}}, {{parent}} and \
                 {{region}}",
                name.escape_debug()
            ));
        }
        has_label |= name == "label";
        rest = tail;
    }
    literal(rest)?;
    if has_label {
        Ok(())
    } else {
        Err("must contain {label}".to_owned())
    }
}

// ---------------------------------------------------------------------------------------------
// Error rendering.

/// Turns a serde error into `(dotted key, reason)`.
fn describe_serde_error(
    text: &str,
    error: &serde_path_to_error::Error<toml::de::Error>,
) -> (String, String) {
    let mut key = dotted_key(error.path());
    let inner = error.inner();
    let message = single_line(inner.message());
    let at_line = inner
        .span()
        .map(|span| format!(" (line {})", line_column(text, span.start).0));

    if let Some(field) = between(&message, "missing field `", "`") {
        // The path names the table that lacks the key; the key itself is in the message.
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(&bare_or_quoted(field));
        return (key, "missing".to_owned());
    }
    if let Some(field) = message.strip_prefix("unknown field `") {
        // The path already ends with the unknown key; list what would have been accepted.
        let expected = field
            .split_once("`, expected ")
            .map(|(_, rest)| format!("; expected {}", rest.replace('`', "")))
            .or_else(|| field.ends_with("there are no fields").then(String::new))
            .unwrap_or_default();
        return (
            key,
            format!("unknown key{expected}{}", at_line.unwrap_or_default()),
        );
    }
    (key, format!("{message}{}", at_line.unwrap_or_default()))
}

/// `nats.servers[1]`, `dns.client_networks."10.1.0.0/16"`.
fn dotted_key(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&bare_or_quoted(key));
            }
            Segment::Enum { variant } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&bare_or_quoted(variant));
            }
            Segment::Unknown => out.push_str(".?"),
        }
    }
    out
}

/// A TOML key as written: bare when it can be, quoted otherwise.
fn bare_or_quoted(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    text.strip_prefix(start)?
        .split_once(end)
        .map(|(inside, _)| inside)
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn single_line(text: &str) -> String {
    text.trim()
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ")
}

fn unreadable(path: &Path, error: &std::io::Error) -> String {
    if error.kind() == std::io::ErrorKind::NotFound {
        format!("{} does not exist", path.display())
    } else {
        format!("cannot read {}: {error}", path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from CONTRACT.md, verbatim.
    const CONTRACT_EXAMPLE: &str = r#"
node_id = "lon-1"          # unique in the mesh
site    = "lon"            # datacentre name
region  = "eu"             # optional, for region pinning

[nats]                     # this site's bus
servers = ["nats://127.0.0.1:4222"]
# user, password, token, tls_ca … optional
stale_threshold_secs = 120 # gorouter's droplet_stale_threshold
prune_interval_secs  = 30

[gorouters]                # this site's GoRouters
addresses = ["127.0.0.1:8081"]
health_url_path = "/health"  # probed on each address (health_port optional)

[proxy]
http_listen  = "127.0.0.1:8080"
https_listen = "127.0.0.1:8443"
remote = "proxy"           # or "redirect": default for apps served only elsewhere
redirect_host = "{label}.{site}.{parent}"  # shop.apps.example.com -> shop.nyc.apps.example.com

[tls]
cert_dir = "certs/"        # <host>.pem + <host>.key pairs (wildcards as _wildcard.<domain>), hot-reloaded
default_cert = "certs/default.pem"
default_key  = "certs/default.key"

[mesh]                     # optional: without it the node runs alone and is always in_sync
listen    = "127.0.0.1:7946"
advertise = "127.0.0.1:7946"
seeds     = ["127.0.0.1:7947"]   # any reachable nodes; the rest are discovered
ca = "mesh/ca.pem"
cert = "mesh/node.pem"
key  = "mesh/node.key"
sync_lost_after_secs = 10

[dns]                      # optional
listen = "127.0.0.1:5353"  # UDP and TCP
zones  = ["apps.example.com"]
ttl_secs = 30
site_addresses = ["192.0.2.10"]      # this site's public entry addresses (A/AAAA)
client_networks = { "10.1.0.0/16" = "lon" }  # resolver or ECS subnet -> nearest site

[admin]
listen = "127.0.0.1:9090"
token_file = "admin.token" # bearer token for /v1/*
"#;

    const MINIMAL: &str = r#"
node_id = "solo"
site = "lon"
[nats]
servers = ["127.0.0.1:4222"]
[gorouters]
addresses = ["127.0.0.1:8081"]
[proxy]
http_listen = "127.0.0.1:8080"
[admin]
listen = "127.0.0.1:9090"
token_file = "admin.token"
"#;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::from_toml(text, Path::new("lon-1.toml"), Path::new("/etc/grouter"))
    }

    /// Parses `text`, expecting failure, and returns the rendered error lines.
    fn errors(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(config) => panic!("expected errors, got {config:?}"),
            Err(ConfigErrors(errs)) => errs.iter().map(ToString::to_string).collect(),
        }
    }

    /// Exactly one error, whose key is `key`; returns its reason.
    #[track_caller]
    fn single_error(text: &str, key: &str) -> String {
        let errs = match parse(text) {
            Ok(config) => panic!("expected an error at {key}, got {config:?}"),
            Err(ConfigErrors(errs)) => errs,
        };
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].key, key, "{}", errs[0]);
        assert_eq!(errs[0].file, Path::new("lon-1.toml"));
        errs[0].reason.clone()
    }

    #[test]
    fn acme_section_parses_covers_its_domains_and_refuses_what_cannot_work() {
        let section = "\n[acme]\ndirectory_url = \"https://ca.example.com/dir\"\n\
                       domains = [\"Apps.Example.com.\"]\nchallenges = [\"http-01\"]\n";
        let c = parse(&format!("{MINIMAL}{section}")).unwrap();
        let acme = c.acme.unwrap();
        assert_eq!(acme.domains, ["apps.example.com"]);
        assert!((acme.renew_at - 0.66).abs() < 1e-9);
        assert!(acme.covers("apps.example.com") && acme.covers("shop.apps.example.com"));
        assert!(!acme.covers("evilapps.example.com") && !acme.covers("example.com"));
        let with = |k: &str| {
            format!(
                "{MINIMAL}\n[acme]\ndirectory_url = \"https://ca.example.com/dir\"\n\
                 domains = [\"apps.example.com\"]\nchallenges = [\"http-01\"]\n{k}\n"
            )
        };
        let plain = section.replace("https://", "http://");
        assert!(single_error(&format!("{MINIMAL}{plain}"), "acme.directory_url").contains("https"));
        single_error(&with("renew_at = 0.99"), "acme.renew_at");
        single_error(&with("contact = [\"ops@example.com\"]"), "acme.contact[0]");
        let alpn = section.replace("\"http-01\"", "\"tls-alpn-01\"");
        let why = single_error(&format!("{MINIMAL}{alpn}"), "acme.challenges");
        assert!(why.contains("https_listen"), "{why}");
        let tld = section.replace("Apps.Example.com.", "com");
        single_error(&format!("{MINIMAL}{tld}"), "acme.domains[0]");
    }

    #[test]
    fn contract_example_parses() {
        let c = parse(CONTRACT_EXAMPLE).unwrap();
        assert_eq!(c.node_id, "lon-1");
        assert_eq!(c.site, "lon");
        assert_eq!(c.region.as_deref(), Some("eu"));
        assert_eq!(c.nats.servers, ["nats://127.0.0.1:4222"]);
        assert_eq!(c.gorouters.addresses, ["127.0.0.1:8081"]);
        assert_eq!(
            c.proxy.https_listen,
            Some("127.0.0.1:8443".parse().unwrap())
        );
        assert_eq!(c.proxy.remote, RemoteMode::Proxy);
        let tls = c.tls.as_ref().unwrap();
        assert_eq!(tls.default_key, Path::new("/etc/grouter/certs/default.key"));
        let mesh = c.mesh.as_ref().unwrap();
        assert_eq!(mesh.seeds, ["127.0.0.1:7947"]);
        assert_eq!(mesh.cert, Path::new("/etc/grouter/mesh/node.pem"));
        let dns = c.dns.as_ref().unwrap();
        assert_eq!(dns.zones, ["apps.example.com"]);
        assert_eq!(
            dns.site_addresses,
            ["192.0.2.10".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            dns.client_networks,
            [("10.1.0.0/16".parse().unwrap(), "lon".to_owned())]
        );
        assert_eq!(c.admin.listen, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(c.source, Path::new("lon-1.toml"));
    }

    /// MINIMAL with a `[mesh]` section ending in `extra` lines.
    fn with_mesh(extra: &str) -> String {
        format!(
            "{MINIMAL}\n[mesh]\nlisten = \"127.0.0.1:7946\"\nca = \"mesh/ca.pem\"\n\
             cert = \"mesh/node.pem\"\nkey = \"mesh/node.key\"\n{extra}\n"
        )
    }

    #[test]
    fn cloud_controller_section_parses_resolves_and_rejects_bad_urls() {
        let section = "\n[cloud_controller]\napi = \"https://api.sys.lon.example.com\"\n\
                       uaa = \"https://uaa.sys.lon.example.com/\"\nclient_id = \"grouter-lon\"\n\
                       client_secret_file = \"cc.secret\"\n";
        let c = parse(&format!("{MINIMAL}{section}")).unwrap();
        let cc = c.cloud_controller.unwrap();
        assert_eq!(cc.client_id, "grouter-lon");
        assert_eq!(cc.client_secret_file, Path::new("/etc/grouter/cc.secret"));
        assert_eq!(cc.ca_file, None);
        let bad = section.replace("https://api.sys.lon.example.com", "https://api.evil@x?y");
        let why = single_error(&format!("{MINIMAL}{bad}"), "cloud_controller.api");
        assert!(why.contains("plain base URL"), "{why}");
        let bad = section.replace("https://uaa.sys.lon.example.com/", "ftp://uaa");
        let why = single_error(&format!("{MINIMAL}{bad}"), "cloud_controller.uaa");
        assert!(why.contains("https://"), "{why}");
        let bad = section.replace("grouter-lon", "");
        single_error(&format!("{MINIMAL}{bad}"), "cloud_controller.client_id");
        let unknown = format!("{MINIMAL}{section}client_secret = \"inline\"\n");
        assert!(
            errors(&unknown).iter().any(|e| e.contains("client_secret")),
            "a secret in the config is refused"
        );
    }

    #[test]
    fn mesh_trust_keys_default_and_parse() {
        let c = parse(&with_mesh("")).unwrap();
        let mesh = c.mesh.unwrap();
        assert_eq!(mesh.crl, None);
        assert!(mesh.site_domains.is_empty());
        assert_eq!(mesh.max_nodes, 1000);
        assert_eq!(mesh.max_entries_per_partition, 1_000_000);

        let c = parse(&with_mesh(
            "crl = \"mesh/crl.pem\"\nmax_nodes = 5\nmax_entries_per_partition = 7\n\
             site_domains = { \"lon\" = [\"Apps.Example.com\", \"*.LON.example.com\"], \"nyc\" = [] }",
        ))
        .unwrap();
        let mesh = c.mesh.unwrap();
        // Relative, so resolved against the config's directory like the other mesh files.
        assert_eq!(
            mesh.crl.as_deref(),
            Some(Path::new("/etc/grouter/mesh/crl.pem"))
        );
        assert_eq!((mesh.max_nodes, mesh.max_entries_per_partition), (5, 7));
        assert_eq!(
            mesh.site_domains,
            BTreeMap::from([
                (
                    "lon".to_string(),
                    vec![
                        "apps.example.com".to_string(),
                        "*.lon.example.com".to_string()
                    ]
                ),
                ("nyc".to_string(), Vec::new()),
            ])
        );
        let c = parse(&with_mesh("crl = \"/var/lib/crl.pem\"")).unwrap();
        assert_eq!(
            c.mesh.unwrap().crl.as_deref(),
            Some(Path::new("/var/lib/crl.pem"))
        );
    }

    #[test]
    fn mesh_trust_keys_are_validated() {
        let reason = single_error(&with_mesh("max_nodes = 0"), "mesh.max_nodes");
        assert!(reason.contains("at least 1"), "{reason}");
        single_error(
            &with_mesh("max_entries_per_partition = 0"),
            "mesh.max_entries_per_partition",
        );
        single_error(&with_mesh("max_nodes = -1"), "mesh.max_nodes");
        single_error(&with_mesh("crl = \"\""), "mesh.crl");
        let reason = single_error(
            &with_mesh("site_domains = { \"LON!\" = [\"apps.example.com\"] }"),
            "mesh.site_domains.LON!",
        );
        assert!(reason.contains("LON!"), "{reason}");
        for bad in [
            "*",
            "*.",
            "a..b",
            "foo.*.com",
            "**.a.com",
            "a b.com",
            "-a.com",
            "",
        ] {
            let text = with_mesh(&format!(
                "site_domains = {{ \"lon\" = [\"ok.com\", {bad:?}] }}"
            ));
            let reason = single_error(&text, "mesh.site_domains.lon[1]");
            assert!(reason.contains("*.suffix"), "{bad}: {reason}");
        }
        let reason = single_error(
            &with_mesh("site_domains = { \"lon\" = [\"a.com\", \"A.com\"] }"),
            "mesh.site_domains.lon[1]",
        );
        assert!(reason.contains("duplicate"), "{reason}");
        single_error(
            &with_mesh("site_domains = { \"lon\" = \"a.com\" }"),
            "mesh.site_domains.lon",
        );
    }

    #[test]
    fn defaults_are_applied() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.region, None);
        assert_eq!(c.nats.stale_threshold_secs, 120);
        assert_eq!(c.nats.prune_interval_secs, 30);
        assert_eq!(c.nats.user, None);
        assert_eq!(c.gorouters.health_url_path, "/health");
        assert_eq!(c.gorouters.health_port, None);
        assert_eq!(c.proxy.https_listen, None);
        assert_eq!(c.proxy.remote, RemoteMode::Proxy);
        assert_eq!(c.proxy.redirect_host, "{label}.{site}.{parent}");
        assert!(c.proxy.site_header);
        assert!(c.tls.is_none() && c.mesh.is_none() && c.dns.is_none());
        assert_eq!(
            c.log,
            LogConfig {
                format: LogFormat::Text,
                access_log: true,
                access_log_format: AccessLogFormat::Json,
            }
        );
        assert!(c.proxy.trusted_proxies.is_empty());
        assert_eq!(
            c.proxy.forwarded_client_cert,
            ForwardedClientCert::SanitizeSet
        );
        assert_eq!(c.proxy.tracing, TracingMode::W3c);

        let c = parse(&format!(
            "{MINIMAL}\n[mesh]\nlisten = \"127.0.0.1:7946\"\nadvertise = \"grouter-1.lon:7946\"\n\
             ca = \"ca.pem\"\ncert = \"n.pem\"\nkey = \"n.key\"\n\
             [dns]\nlisten = \"127.0.0.1:5353\"\nzones = [\"Apps.Example.COM.\"]\n\
             site_addresses = [\"2001:db8::1\"]\n"
        ))
        .unwrap();
        let mesh = c.mesh.unwrap();
        assert!(mesh.seeds.is_empty());
        assert_eq!(
            (mesh.sync_lost_after_secs, mesh.heartbeat_interval_ms),
            (10, 500)
        );
        let dns = c.dns.unwrap();
        assert_eq!(
            dns.zones,
            ["apps.example.com"],
            "lower-cased, trailing dot stripped"
        );
        assert_eq!((dns.ttl_secs, dns.answer_sites), (30, 1));
        assert!(dns.client_networks.is_empty());
    }

    #[test]
    fn edge_keys_have_defaults_and_are_checked() {
        let c = parse(MINIMAL).unwrap();
        let t = c.proxy.timeouts();
        assert_eq!(
            (
                t.request_header.as_secs(),
                t.idle.as_secs(),
                t.tls_handshake.as_secs()
            ),
            (10, 90, 10)
        );
        assert_eq!(c.proxy.max_connections, None, "derived at start");
        assert_eq!(c.admin.max_connections, None);
        let c = parse(
            &MINIMAL
                .replace(
                    "[admin]",
                    "request_header_timeout_secs = 2\nidle_timeout_secs = 3\n\
                     tls_handshake_timeout_secs = 4\nmax_connections = 5\n[admin]",
                )
                .replace("token_file", "max_connections = 6\ntoken_file"),
        )
        .unwrap();
        let t = c.proxy.timeouts();
        assert_eq!(
            (
                t.request_header.as_secs(),
                t.idle.as_secs(),
                t.tls_handshake.as_secs()
            ),
            (2, 3, 4)
        );
        assert_eq!(
            (c.proxy.max_connections, c.admin.max_connections),
            (Some(5), Some(6))
        );
        for (line, key) in [
            (
                "request_header_timeout_secs = 0",
                "proxy.request_header_timeout_secs",
            ),
            ("idle_timeout_secs = 86401", "proxy.idle_timeout_secs"),
            (
                "tls_handshake_timeout_secs = 0",
                "proxy.tls_handshake_timeout_secs",
            ),
            ("max_connections = 0", "proxy.max_connections"),
        ] {
            let reason = single_error(
                &MINIMAL.replace("[admin]", &format!("{line}\n[admin]")),
                key,
            );
            assert!(
                reason.contains("out of range") || reason.contains("at least 1"),
                "{reason}"
            );
        }
        // The GoRouters' response timeout: 900 s unless set, within the same bounds.
        assert_eq!(parse(MINIMAL).unwrap().gorouters.response_timeout_secs, 900);
        for value in [0, 86_401] {
            let reason = single_error(
                &MINIMAL.replace(
                    "[proxy]",
                    &format!("response_timeout_secs = {value}\n[proxy]"),
                ),
                "gorouters.response_timeout_secs",
            );
            assert!(reason.contains("out of range"), "{reason}");
        }
        let reason = single_error(
            &MINIMAL.replace("token_file", "max_connections = 0\ntoken_file"),
            "admin.max_connections",
        );
        assert_eq!(reason, "must be at least 1");
    }

    #[test]
    fn log_and_remote_enums_parse() {
        let c = parse(&MINIMAL.replace(
            "[admin]",
            "remote = \"redirect\"\nsite_header = false\n[log]\nformat = \"json\"\n\
             access_log = false\n[admin]",
        ))
        .unwrap();
        assert_eq!(c.proxy.remote, RemoteMode::Redirect);
        assert!(!c.proxy.site_header);
        assert_eq!(
            c.log,
            LogConfig {
                format: LogFormat::Json,
                access_log: false,
                access_log_format: AccessLogFormat::Json,
            }
        );
    }

    #[test]
    fn parity_keys_parse_and_are_checked() {
        let c = parse(&MINIMAL.replace(
            "[admin]",
            "trusted_proxies = [\"10.0.0.7/8\", \"2001:db8::/32\"]\n\
             forwarded_client_cert = \"always_forward\"\ntracing = \"b3\"\n\
             [log]\naccess_log_format = \"rtr\"\n[admin]",
        ))
        .unwrap();
        assert_eq!(
            c.proxy.trusted_proxies,
            [
                "10.0.0.0/8".parse::<IpNet>().unwrap(),
                "2001:db8::/32".parse().unwrap()
            ],
            "host bits cleared"
        );
        assert_eq!(
            c.proxy.forwarded_client_cert,
            ForwardedClientCert::AlwaysForward
        );
        assert_eq!(c.proxy.tracing, TracingMode::B3);
        assert_eq!(c.log.access_log_format, AccessLogFormat::Rtr);

        let bad = |extra: &str, key: &str| {
            single_error(
                &MINIMAL.replace("[admin]", &format!("{extra}\n[admin]")),
                key,
            )
        };
        assert!(
            bad(
                "trusted_proxies = [\"10.0.0.0/33\"]",
                "proxy.trusted_proxies[0]"
            )
            .contains("invalid CIDR")
        );
        assert!(
            bad(
                "forwarded_client_cert = \"sanitize\"",
                "proxy.forwarded_client_cert"
            )
            .contains("unknown variant")
        );
        assert!(bad("tracing = \"zipkin\"", "proxy.tracing").contains("unknown variant"));

        let tls = "https_listen = \"127.0.0.1:8443\"\n[tls]\ncert_dir = \"c\"\n\
                   default_cert = \"c.pem\"\ndefault_key = \"c.key\"\n";
        let c = parse(&MINIMAL.replace("[admin]", &format!("{tls}[admin]"))).unwrap();
        let t = c.tls.unwrap();
        assert_eq!((t.client_cert, t.client_ca), (ClientCertMode::None, None));
        let reason = single_error(
            &MINIMAL.replace(
                "[admin]",
                &format!("{tls}client_cert = \"require\"\n[admin]"),
            ),
            "tls.client_ca",
        );
        assert!(reason.starts_with("missing"), "{reason}");
        let c = parse(&MINIMAL.replace(
            "[admin]",
            &format!("{tls}client_cert = \"request\"\nclient_ca = \"clients.pem\"\n[admin]"),
        ))
        .unwrap();
        assert_eq!(c.tls.unwrap().client_cert, ClientCertMode::Request);
    }

    #[test]
    fn unknown_top_level_key_is_named() {
        let reason = single_error(&format!("colour = \"blue\"\n{MINIMAL}"), "colour");
        assert!(reason.starts_with("unknown key"), "{reason}");
    }

    #[test]
    fn unknown_key_in_section_is_named() {
        let text = MINIMAL.replace("[admin]", "bogus = 1\n[admin]");
        let reason = single_error(&text, "proxy.bogus");
        assert!(reason.starts_with("unknown key"), "{reason}");
        assert!(
            reason.contains("http_listen"),
            "lists the accepted keys: {reason}"
        );
        let rendered = errors(&text);
        assert!(
            rendered[0].starts_with("lon-1.toml: proxy.bogus: unknown key"),
            "{rendered:?}"
        );
    }

    #[test]
    fn unknown_section_is_named() {
        single_error(&format!("{MINIMAL}\n[extra]\na = 1\n"), "extra");
    }

    #[test]
    fn wrong_type_is_named() {
        let reason = single_error(
            &MINIMAL.replace("[admin]", "site_header = \"yes\"\n[admin]"),
            "proxy.site_header",
        );
        assert!(reason.contains("invalid type"), "{reason}");
        single_error(
            &MINIMAL.replace("\"127.0.0.1:4222\"", "4222"),
            "nats.servers[0]",
        );
        single_error(
            &MINIMAL.replace("[admin]", "remote = \"teleport\"\n[admin]"),
            "proxy.remote",
        );
        single_error(
            &MINIMAL.replace(
                "http_listen = \"127.0.0.1:8080\"",
                "http_listen = \"localhost\"",
            ),
            "proxy.http_listen",
        );
    }

    #[test]
    fn missing_required_keys_are_named() {
        assert_eq!(
            single_error(&MINIMAL.replace("site = \"lon\"", ""), "site"),
            "missing"
        );
        assert_eq!(
            single_error(
                &MINIMAL.replace("servers = [\"127.0.0.1:4222\"]", ""),
                "nats.servers"
            ),
            "missing"
        );
        let no_admin = MINIMAL.replace(
            "[admin]\nlisten = \"127.0.0.1:9090\"\ntoken_file = \"admin.token\"\n",
            "",
        );
        assert_eq!(single_error(&no_admin, "admin"), "missing");
        let text = format!("{MINIMAL}[tls]\ncert_dir = \"c\"\ndefault_cert = \"c.pem\"\n");
        assert_eq!(single_error(&text, "tls.default_key"), "missing");
    }

    #[test]
    fn bad_addresses_are_named_and_all_reported() {
        let text = MINIMAL
            .replace(
                "[\"127.0.0.1:4222\"]",
                "[\"nats://a:4222\", \"nats://x\", \"http://b:1\"]",
            )
            .replace(
                "[\"127.0.0.1:8081\"]",
                "[\"[::1]:8081\", \"::1:8081\", \"gr:0\"]",
            );
        let errs = errors(&text);
        assert_eq!(errs.len(), 4, "{errs:#?}");
        assert!(errs[0].starts_with("lon-1.toml: nats.servers[1]: invalid address \"nats://x\": "));
        assert!(errs[1].starts_with("lon-1.toml: nats.servers[2]: invalid address \"http://b:1\""));
        assert!(
            errs[2].starts_with("lon-1.toml: gorouters.addresses[1]: "),
            "{}",
            errs[2]
        );
        assert!(
            errs[3].starts_with("lon-1.toml: gorouters.addresses[2]: "),
            "{}",
            errs[3]
        );
    }

    #[test]
    fn host_port_forms() {
        for ok in [
            "127.0.0.1:1",
            "[::1]:8081",
            "[2001:db8::1]:65535",
            "gorouter-0.lon.internal:80",
            "a_b:9",
        ] {
            assert_eq!(check_host_port(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ":80",
            "host",
            "host:",
            "host:65536",
            "host:0",
            "[::1]",
            "[::1:80",
            "::1:80",
            "-a:1",
            "a..b:1",
            "1.2.3.256:1",
            "a b:1",
        ] {
            assert!(check_host_port(bad).is_err(), "{bad}");
        }
        assert!(check_nats_server("tls://n.example:4222").is_ok());
        assert!(check_nats_server("nats://u:p@n:4222").is_err());
    }

    #[test]
    fn bad_cidr_is_named() {
        let text = format!(
            "{MINIMAL}[dns]\nlisten = \"127.0.0.1:5353\"\nzones = [\"apps.example.com\"]\n\
             site_addresses = [\"192.0.2.10\"]\n\
             client_networks = {{ \"10.1.0.0/16\" = \"lon\", \"10.2.0.0/33\" = \"nyc\" }}\n"
        );
        let reason = single_error(&text, "dns.client_networks.\"10.2.0.0/33\"");
        assert!(reason.contains("invalid CIDR"), "{reason}");
    }

    #[test]
    fn nameservers_are_normalised_and_checked() {
        let dns = "[dns]\nlisten = \"127.0.0.1:5353\"\nzones = [\"apps.example.com\"]\n\
                   site_addresses = [\"192.0.2.10\"]\n";
        let c = parse(&format!(
            "{MINIMAL}{dns}nameservers = {{ \"NS2.apps.example.com.\" = [\"192.0.2.54\", \
             \"2001:db8::53\"], \"ns1.apps.example.com\" = [\"192.0.2.53\"], \
             \"ns.example.net\" = [] }}\n"
        ))
        .unwrap();
        let ns: Vec<String> = c
            .dns
            .unwrap()
            .nameservers
            .iter()
            .map(|(n, a)| format!("{n}={a:?}"))
            .collect();
        assert_eq!(
            ns,
            [
                "ns.example.net=[]",
                "ns1.apps.example.com=[192.0.2.53]",
                "ns2.apps.example.com=[192.0.2.54, 2001:db8::53]"
            ]
        );
        // (nameservers value, the key and reason of the one error)
        let cases = [
            (
                "{ \"ns1.apps.example.com\" = [] }",
                "dns.nameservers.\"ns1.apps.example.com\"",
                "must list its addresses",
            ),
            (
                "{ \"ns.example.net\" = [\"192.0.2.53\"] }",
                "dns.nameservers.\"ns.example.net\"",
                "list no addresses",
            ),
            (
                "{ \"ns_1.apps.example.com\" = [\"192.0.2.53\"] }",
                "dns.nameservers.\"ns_1.apps.example.com\"",
                "invalid name",
            ),
            (
                "{ \"ns1.apps.example.com\" = [\"0.0.0.0\"] }",
                "dns.nameservers.\"ns1.apps.example.com\"[0]",
                "cannot be a host address",
            ),
            (
                "{ \"ns1.apps.example.com\" = [\"192.0.2.53\"], \"NS1.apps.example.com\" = [\"192.0.2.54\"] }",
                "dns.nameservers.\"ns1.apps.example.com\"",
                "duplicate name",
            ),
        ];
        for (value, key, reason) in cases {
            let got = single_error(&format!("{MINIMAL}{dns}nameservers = {value}\n"), key);
            assert!(got.contains(reason), "{value}: {got}");
        }
    }

    #[test]
    fn client_networks_are_sorted_and_checked() {
        let dns = "[dns]\nlisten = \"127.0.0.1:5353\"\nzones = [\"apps.example.com\"]\n\
                   site_addresses = [\"192.0.2.10\"]\n";
        let c = parse(&format!(
            "{MINIMAL}{dns}client_networks = {{ \"10.0.0.0/8\" = \"nyc\", \
             \"10.1.2.3/16\" = \"lon\", \"2001:db8::/32\" = \"sgp\" }}\n"
        ))
        .unwrap();
        let nets: Vec<String> = c
            .dns
            .unwrap()
            .client_networks
            .iter()
            .map(|(n, s)| format!("{n}={s}"))
            .collect();
        assert_eq!(
            nets,
            ["2001:db8::/32=sgp", "10.1.0.0/16=lon", "10.0.0.0/8=nyc"]
        );

        let errs = errors(&format!(
            "{MINIMAL}{dns}answer_sites = 9\nclient_networks = {{ \"10.0.0.0/8\" = \"\", \
             \"10.1.0.0/16\" = \"lon\", \"10.1.0.1/16\" = \"nyc\" }}\n"
        ));
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert!(
            errs[0].contains("dns.client_networks.\"10.1.0.0/16\": duplicate"),
            "{errs:?}"
        );
        assert!(
            errs[1].contains("dns.client_networks.\"10.0.0.0/8\": \"\" must be"),
            "{errs:?}"
        );
        assert!(
            errs[2].contains("dns.answer_sites: must be 1..=8"),
            "{errs:?}"
        );
    }

    #[test]
    fn bad_redirect_host_placeholder_is_named() {
        let with =
            |t: &str| MINIMAL.replace("[admin]", &format!("redirect_host = \"{t}\"\n[admin]"));
        let reason = single_error(&with("{label}.{zone}"), "proxy.redirect_host");
        assert!(reason.contains("unknown placeholder {zone}"), "{reason}");
        let reason = single_error(&with("www.{site}.{parent}"), "proxy.redirect_host");
        assert!(reason.contains("must contain {label}"), "{reason}");
        single_error(&with("{label.{site}"), "proxy.redirect_host");
        single_error(&with("{label}}.x"), "proxy.redirect_host");
        single_error(&with("{label}/x"), "proxy.redirect_host");
        assert!(parse(&with("{label}-{region}.{site}.{parent}")).is_ok());
    }

    #[test]
    fn isolation_segments_name_their_gorouters() {
        let with =
            |seg: &str| MINIMAL.replace("[proxy]", &format!("segments = {{ {seg} }}\n[proxy]"));
        let c = parse(&with(r#""seg-a" = ["127.0.0.1:8091", "127.0.0.1:8092"]"#)).unwrap();
        assert_eq!(c.gorouters.segments["seg-a"].len(), 2);
        assert!(parse(MINIMAL).unwrap().gorouters.segments.is_empty());
        let reason = single_error(&with(r#""seg-a" = []"#), "gorouters.segments.seg-a");
        assert!(reason.contains("at least one"), "{reason}");
        let reason = single_error(
            &with(r#""seg-a" = ["nope"]"#),
            "gorouters.segments.seg-a[0]",
        );
        assert!(reason.contains("invalid address"), "{reason}");
        let reason = single_error(
            &with(r#""seg-a" = ["127.0.0.1:8081"]"#),
            "gorouters.segments.seg-a[0]",
        );
        assert!(reason.contains("another pool"), "{reason}");
        let reason = single_error(
            &with(r#""seg a" = ["127.0.0.1:8091"]"#),
            "gorouters.segments",
        );
        assert!(reason.contains("without spaces"), "{reason}");
    }

    #[test]
    fn https_listen_requires_tls() {
        let text = MINIMAL.replace("[admin]", "https_listen = \"127.0.0.1:8443\"\n[admin]");
        let reason = single_error(&text, "tls");
        assert!(reason.starts_with("missing"), "{reason}");
    }

    #[test]
    fn names_and_numbers_are_checked_together() {
        let text = MINIMAL
            .replace("node_id = \"solo\"", "node_id = \"Solo!\"")
            .replace("site = \"lon\"", "site = \"lon-\"\nregion = \"\"")
            .replace(
                "[gorouters]",
                "user = \"u\"\nprune_interval_secs = 0\n[gorouters]",
            )
            .replace("[proxy]", "health_url_path = \"health\"\n[proxy]")
            .replace("127.0.0.1:9090", "127.0.0.1:8080");
        let errs = errors(&text);
        let keys: Vec<&str> = errs.iter().map(|e| e.split(": ").nth(1).unwrap()).collect();
        assert_eq!(
            keys,
            [
                "node_id",
                "site",
                "region",
                "nats.password",
                "nats.prune_interval_secs",
                "gorouters.health_url_path",
                "admin.listen",
            ],
            "{errs:#?}"
        );
    }

    #[test]
    fn mesh_timing_is_checked() {
        let mesh = "[mesh]\nlisten = \"127.0.0.1:7946\"\nadvertise = \"127.0.0.1\"\n\
                    seeds = [\"n2:7946\", \"n3\"]\nca = \"ca.pem\"\ncert = \"\"\nkey = \"k\"\n\
                    sync_lost_after_secs = 1\nheartbeat_interval_ms = 1000\n";
        let errs = errors(&format!("{MINIMAL}{mesh}"));
        assert_eq!(errs.len(), 4, "{errs:#?}");
        assert!(errs[0].contains(": mesh.advertise: "));
        assert!(errs[1].contains(": mesh.seeds[1]: "));
        assert!(errs[2].contains(": mesh.cert: must not be empty"));
        assert!(errs[3].contains(": mesh.heartbeat_interval_ms: must be below"));
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let errs = errors("node_id = \"a\"\nsite = = \"b\"\n");
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("lon-1.toml: invalid TOML: line 2, column"),
            "{errs:?}"
        );
        assert!(!errs[0].contains('\n'));
    }

    #[test]
    fn relative_paths_resolve_against_base_dir() {
        let text = format!(
            "{MINIMAL}[tls]\ncert_dir = \"certs/\"\ndefault_cert = \"/abs/default.pem\"\n\
             default_key = \"../keys/default.key\"\n"
        )
        .replace("[nats]", "[nats]\ntls_ca = \"nats-ca.pem\"");
        let c = Config::from_toml(&text, Path::new("x.toml"), Path::new("/srv/cfg")).unwrap();
        assert_eq!(c.admin.token_file, Path::new("/srv/cfg/admin.token"));
        assert_eq!(
            c.nats.tls_ca.as_deref(),
            Some(Path::new("/srv/cfg/nats-ca.pem"))
        );
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert_dir, Path::new("/srv/cfg/certs/"));
        assert_eq!(
            tls.default_cert,
            Path::new("/abs/default.pem"),
            "absolute paths are kept"
        );
        assert_eq!(tls.default_key, Path::new("/srv/cfg/../keys/default.key"));
    }

    /// Each node's state directory is its own by default (beside the config file, named by
    /// node), or where `state_dir` says; a read token file is checked like the write one.
    #[test]
    fn state_dir_defaults_per_node_and_the_read_token_file_is_checked() {
        let c = Config::from_toml(MINIMAL, Path::new("x.toml"), Path::new("/srv/cfg")).unwrap();
        assert_eq!(
            c.state_dir(),
            Path::new(&format!("/srv/cfg/state-{}", c.node_id))
        );
        let text = MINIMAL.replace("[nats]", "state_dir = \"/var/lib/grouter\"\n[nats]");
        let c = Config::from_toml(&text, Path::new("x.toml"), Path::new("/srv/cfg")).unwrap();
        assert_eq!(c.state_dir(), Path::new("/var/lib/grouter"));
        let text = MINIMAL.replace("token_file", "read_token_file = \"ro.token\"\ntoken_file");
        let c = Config::from_toml(&text, Path::new("x.toml"), Path::new("/nonexistent")).unwrap();
        let missing: Vec<String> = c.missing_files().iter().map(|e| e.key.clone()).collect();
        assert_eq!(missing, ["admin.token_file", "admin.read_token_file"]);
    }

    #[test]
    fn load_resolves_against_the_file_and_reports_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        let tls =
            "[tls]\ncert_dir = \"certs\"\ndefault_cert = \"d.pem\"\ndefault_key = \"d.key\"\n";
        std::fs::write(&path, format!("{MINIMAL}{tls}")).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.admin.token_file, dir.path().join("admin.token"));
        let missing: Vec<String> = c.missing_files().iter().map(|e| e.key.clone()).collect();
        assert_eq!(
            missing,
            [
                "admin.token_file",
                "tls.default_cert",
                "tls.default_key",
                "tls.cert_dir"
            ]
        );
        assert_eq!(c.missing_files()[0].file, path);

        std::fs::write(dir.path().join("admin.token"), "  \n").unwrap();
        std::fs::write(dir.path().join("d.pem"), "x").unwrap();
        std::fs::write(dir.path().join("d.key"), "x").unwrap();
        std::fs::create_dir(dir.path().join("certs")).unwrap();
        let missing = c.missing_files();
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert!(missing[0].reason.ends_with("is empty"));
        std::fs::write(dir.path().join("admin.token"), "secret\n").unwrap();
        assert!(c.missing_files().is_empty());

        let err = Config::load(&dir.path().join("absent.toml")).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert!(
            err.to_string().contains("absent.toml: cannot read file: "),
            "{err}"
        );
    }

    #[test]
    fn credentials_are_not_in_debug_output() {
        let c = parse(&MINIMAL.replace(
            "[gorouters]",
            "user = \"u\"\npassword = \"hunter2\"\n[gorouters]",
        ))
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn errors_display_one_per_line() {
        let err = parse(
            &MINIMAL
                .replace("node_id = \"solo\"", "node_id = \"\"")
                .replace("site = \"lon\"", "site = \"L\""),
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 2);
        let text = err.to_string();
        assert_eq!(text.lines().count(), 2);
        assert!(text.lines().all(|l| l.starts_with("lon-1.toml: ")));
    }

    #[test]
    fn hostile_input_never_panics() {
        let samples = [
            "",
            "=",
            "[",
            "[[nats]]",
            "node_id = 1",
            "a.b.c = {",
            "\u{0}",
            "[dns]\nclient_networks = 3",
            "[dns]\nclient_networks = { \"\" = 1 }",
            "[proxy]\nredirect_host = \"{\"",
            "node_id = \"\u{1F600}\"\nsite = \"\u{e9}\"",
        ];
        for s in samples {
            assert!(parse(s).is_err(), "{s:?}");
            let mut text = MINIMAL.to_owned();
            text.push_str(s);
            let _ = parse(&text);
        }
    }

    #[test]
    fn every_config_under_deploy_is_valid() {
        fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, found);
                } else if path.extension().is_some_and(|e| e == "toml") {
                    found.push(path);
                }
            }
        }
        let mut found = Vec::new();
        walk(
            Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy")),
            &mut found,
        );
        assert!(!found.is_empty(), "no *.toml under deploy/");
        for path in found {
            if let Err(e) = Config::load(&path) {
                panic!("{}:\n{e}", path.display());
            }
        }
    }
}
