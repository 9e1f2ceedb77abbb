//! The data plane: HTTP/1.1 and HTTP/2 listeners (plain and TLS), requests forwarded by peers
//! over the mesh, the routing decision ([`decide`]), forwarding with retries, header rules,
//! WebSocket upgrades and the access log.
//!
//! # One way through
//!
//! ```text
//!  listen ─► h1 (HTTP/1.1 fast path) ──hands over──► server (hyper: HTTP/1.1, HTTP/2)
//!              │ request head                          │ request head
//!              ├──────────► Proxy::decide ◄────────────┤  (one call per request)
//!              └──────────► forward ◄──────────────────┘  targets, retries, ejection,
//!                              │ Codec: one attempt,       access-log record
//!                              ▼        one target
//!      h1's byte codec │ server's General: h2 (bytes) │ upstream (hyper) │ remote (mesh)
//!                              ▼
//!                    wire ─► headers · error · body
//! ```
//!
//! Imports point down this list and never up (`mod.rs` re-exports the listeners, and
//! holds only [`Proxy`] and constants):
//! 1. `listen`: accept, TLS and ALPN, peers' connections.
//! 2. `h1`: the HTTP/1.1 fast path and its byte codec to a GoRouter; hands what it does not
//!    take to `server`.
//! 3. `server` (with `inline`, its HTTP/2 streams' executor): hyper's server, the general
//!    path, and its codec `General`, which picks the upstream protocol per target.
//! 4. `forward`: the one forwarder: targets, the retry loop, ejection, the access-log
//!    record; `Conn`, what a client connection carries.
//! 5. [`Proxy`] (this file): the handles the layers above read, and the one call of
//!    [`decide::decide`].
//! 6. upstream codecs: `h2` (HTTP/2 streams without a body to GoRouters, as bytes),
//!    [`upstream`] (the GoRouters: health, ejection, hyper's HTTP/1.1 client to them),
//!    [`remote`] (other sites over the mesh).
//! 7. `wire`: HTTP/1.1 on the wire to a GoRouter.
//! 8. leaves: `headers` (the contract's header rules), [`error`] (own answers, and
//!    whether a failed attempt may be retried), `access` (gorouter's `rtr` access-log
//!    line), `body`, [`decide`] (pure), [`edge`] (the listeners' limits and timeouts,
//!    requests that name two hosts, refusal counters), `pools` (which GoRouters serve
//!    which isolation segment).
//!
//! Forwarding: a request decided `Local` goes to the GoRouters of its route's pool (its
//! isolation segment's, or the shared ones; round-robin among the healthy), then to the
//! other sites serving the route; `Remote` goes to the serving sites best first. At most 3 attempts. A failed attempt is an [`error::AttemptError`] that says
//! whether anything was sent: if nothing was, the request goes to the next target while its
//! body is whole (unread); if something was, only an idempotent request (GET, HEAD,
//! OPTIONS, TRACE, or one with an idempotency key) whose body is whole goes again, and only
//! when the connection closed before a response. Bodies stream both ways; nothing is buffered whole but small HTTP/1.1 bodies on
//! the fast path.
//!
//! Must never: hold a lock across an `.await`, forward a peer's request onward, or put
//! internals in a response body.

mod access;
mod body;
pub mod decide;
pub mod edge;
pub mod error;
mod forward;
mod h1;
mod h2;
mod headers;
mod inline;
mod listen;
mod pools;
pub mod remote;
mod server;
pub mod upstream;
mod wire;

use std::sync::Arc;

use http::HeaderValue;

use crate::config::{AccessLogFormat, Config};
use crate::health::{Health, SyncState};
use crate::policy::PolicyStore;
use crate::table::{RouteMatch, Table};
use crate::tls::Challenges;
use crate::traffic::Traffic;
use decide::{Decision, Rules};
use remote::Remotes;
use upstream::GoRouters;

pub use edge::Edge;
pub use listen::{serve_http, serve_https, serve_peers};
// The fast path without I/O, for the fuzz targets.
pub(crate) use h1::{Relay, relay_response, take_requests};

/// Header telling which site served.
const SITE_HEADER: &str = "x-grouter-site";

/// What the proxy reads of its node: the table, the sync state and GoRouter health, and the
/// policies in force.
#[derive(Debug)]
struct NodeView {
    table: Arc<Table>,
    health: Arc<Health>,
    policies: Arc<PolicyStore>,
}

impl NodeView {
    fn sync(&self) -> SyncState {
        self.health.sync()
    }
}

/// Where HTTP-01 validations ask (RFC 8555 §8.3).
const ACME_CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// The proxy of one node.
#[derive(Debug)]
pub struct Proxy {
    node: NodeView,
    rules: Rules,
    gorouters: Arc<GoRouters>,
    remotes: Option<Remotes>,
    site: HeaderValue,
    site_header: bool,
    access_log: bool,
    edge: Edge,
    /// The header rules (forwarding headers, client certificates, tracing).
    policy: headers::Policy,
    access_format: AccessLogFormat,
    /// Responses per answering site, for the history.
    traffic: Arc<Traffic>,
    /// The ACME HTTP-01 tokens of the mesh's orders, when the node takes part in ACME.
    challenges: Option<Arc<Challenges>>,
}

/// What a proxy takes from the config besides its decision rules: the site header, the
/// header rules of "gorouter parity" (CONTRACT.md) and the access log.
#[derive(Debug, Clone)]
pub struct Settings {
    site_header: bool,
    access_log: bool,
    policy: headers::Policy,
    access_format: AccessLogFormat,
    traffic: Arc<Traffic>,
    challenges: Option<Arc<Challenges>>,
}

impl Settings {
    /// Count responses in `traffic` (else in counters of the proxy's own).
    #[must_use]
    pub fn with_traffic(mut self, traffic: Arc<Traffic>) -> Settings {
        self.traffic = traffic;
        self
    }

    /// Answer ACME HTTP-01 validations from `challenges` on the plain listener.
    #[must_use]
    pub fn with_challenges(mut self, challenges: Arc<Challenges>) -> Settings {
        self.challenges = Some(challenges);
        self
    }

    /// From `[proxy]` (`site_header`, `trusted_proxies`, `forwarded_client_cert`, `tracing`)
    /// and `[log]` (`access_log`, `access_log_format`).
    pub fn from_config(config: &Config) -> Settings {
        Settings {
            site_header: config.proxy.site_header,
            access_log: config.log.access_log,
            policy: headers::Policy {
                xfcc: config.proxy.forwarded_client_cert,
                tracing: config.proxy.tracing,
                trusted: config.proxy.trusted_proxies.clone(),
            },
            access_format: config.log.access_log_format,
            traffic: Arc::default(),
            challenges: None,
        }
    }
}

impl Proxy {
    /// A proxy over `table`, failing open by `health`'s sync state and obeying `policies`;
    /// `remotes` when the node is in a mesh; its listeners limited and timed by `edge`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        table: Arc<Table>,
        health: Arc<Health>,
        policies: Arc<PolicyStore>,
        rules: Rules,
        gorouters: Arc<GoRouters>,
        remotes: Option<Remotes>,
        settings: Settings,
        edge: Edge,
    ) -> Arc<Proxy> {
        let site = HeaderValue::from_str(&rules.site)
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Arc::new(Proxy {
            node: NodeView {
                table,
                health,
                policies,
            },
            rules,
            gorouters,
            remotes,
            site,
            site_header: settings.site_header,
            access_log: settings.access_log,
            policy: settings.policy,
            access_format: settings.access_format,
            traffic: settings.traffic,
            challenges: settings.challenges,
            edge,
        })
    }

    /// The decision for one request: the one place the proxy reads the node's table, sync
    /// state and policies. Without any policy in force that costs one atomic load.
    /// `spend_turn` as [`decide::Policy::spend_turn`] says.
    fn decide(&self, ask: decide::Ask<'_>, spend_turn: bool) -> (Decision, Option<RouteMatch>) {
        // Before any route: a CA's validation is this node's to answer, whatever is routed.
        if let Some(challenges) = &self.challenges
            && ask.scheme == "http"
            && !ask.from_peer
            && let Some(token) = ask.path.strip_prefix(ACME_CHALLENGE_PATH)
        {
            return (
                Decision::AcmeChallenge(challenges.http01(token, ask.host)),
                None,
            );
        }
        let Some(policies) = self.node.policies.active() else {
            return decide::decide(&self.node.table, &self.rules, self.node.sync(), None, ask);
        };
        let facts = self.node.policies.facts();
        let policy = decide::Policy {
            policies: &policies,
            facts: &facts,
            local_healthy: self.node.health.gorouters_healthy(),
            spend_turn,
        };
        decide::decide(
            &self.node.table,
            &self.rules,
            self.node.sync(),
            Some(policy),
            ask,
        )
    }
}
