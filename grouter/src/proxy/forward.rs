//! The one forwarder: every request that goes upstream, from whichever listener and codec,
//! passes through [`forward`]. It owns the choice of targets ([`Proxy::targets`]), the retry
//! loop (at most [`MAX_ATTEMPTS`], each failure asked [`AttemptError::retry_fresh`] and
//! [`AttemptError::retry_elsewhere`]), the ejection of GoRouters that refuse connections, and
//! the access-log record ([`Access`], written out by [`Proxy::log_access`]).
//!
//! What it does not own is the protocol: a [`Codec`] sends one attempt to one target. The
//! HTTP/1.1 fast path (`super::h1`) and the general path (`super::server`, with the HTTP/2
//! byte codec `super::h2`, hyper's clients in `super::upstream` and `super::remote`) each
//! bring theirs, generic so the fast paths pay for no boxing.
//!
//! Must never: retry a request its [`Replay`] does not allow, or try more than
//! [`MAX_ATTEMPTS`] targets.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tracing::{debug, info, warn};

use super::Proxy;
use super::access::{self, Facts};
use super::decide::Decision;
use super::error::{AttemptError, AttemptKind, Replay, Sent};
use super::h2;
use super::headers::{Client, Policy, TraceId};
use super::upstream::{Affinity, GoRouters};
use crate::config::AccessLogFormat;
use crate::table::RouteMatch;

/// Most attempts for one request (gorouter's `max_attempts`).
pub(super) const MAX_ATTEMPTS: usize = 3;

/// How a connection reached us.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) client: SocketAddr,
    /// The certificate the client showed on its TLS connection (base64 of its DER, as
    /// `X-Forwarded-Client-Cert` carries it), read once per connection.
    pub(super) client_cert: Option<Box<str>>,
    /// The client's address as `X-Forwarded-For` names it (IPv4-mapped IPv6 as IPv4),
    /// formatted once per connection.
    pub(super) ip: Box<str>,
    pub(super) scheme: &'static str,
    /// A peer forwarded this over the mesh: route locally only, keep its forwarding headers.
    pub(super) peer: Option<String>,
    /// This client connection's own upstream connection (HTTP/1.1 on the general path).
    pub(super) affinity: Affinity,
    /// This client connection's idle GoRouter connections for its HTTP/2 streams.
    pub(super) streams: h2::Streams,
}

impl Conn {
    pub(super) fn new(client: SocketAddr, scheme: &'static str, peer: Option<String>) -> Conn {
        Conn {
            client,
            client_cert: None,
            ip: client_ip(client).to_string().into(),
            scheme,
            peer,
            affinity: Affinity::default(),
            streams: h2::Streams::default(),
        }
    }

    /// This connection, with the certificate chain its client showed at the TLS handshake
    /// (the leaf is what `X-Forwarded-Client-Cert` carries).
    pub(super) fn with_client_cert(
        mut self,
        chain: Option<&[rustls::pki_types::CertificateDer<'_>]>,
    ) -> Conn {
        self.client_cert = chain
            .and_then(|c| c.first())
            .map(|leaf| base64(leaf.as_ref()).into());
        self
    }

    /// What the forwarding headers need of this connection, under `policy`.
    pub(super) fn headers<'a>(&'a self, policy: &Policy) -> Client<'a> {
        let direct = self.peer.is_none();
        Client {
            ip: &self.ip,
            scheme: self.scheme,
            direct,
            trusted: direct && !policy.trusted.is_empty() && policy.trusts(client_ip(self.client)),
            cert: self.client_cert.as_deref(),
        }
    }
}

/// Standard base64 with padding (RFC 4648 §4), as gorouter writes a certificate's DER into
/// `X-Forwarded-Client-Cert` (the PEM body without its lines).
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ABC[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn client_ip(addr: SocketAddr) -> IpAddr {
    match addr.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        ip => ip,
    }
}

/// Where one attempt goes.
#[derive(Debug, Clone)]
pub(super) enum Target {
    /// Index into [`GoRouters::all`].
    GoRouter(usize),
    /// Another site, over the mesh.
    Site(Arc<str>),
}

/// Who served (or last failed) a request, for the access log; rendered only when written.
#[derive(Debug, Default)]
pub(super) enum Served {
    #[default]
    Nobody,
    /// Index into [`GoRouters::all`].
    GoRouter(usize),
    /// A site, before a node of it answered.
    Site(Arc<str>),
    /// A site and the node of it that answered.
    Node(Arc<str>, String),
}

impl Served {
    fn of(target: &Target) -> Served {
        match target {
            Target::GoRouter(i) => Served::GoRouter(*i),
            Target::Site(s) => Served::Site(s.clone()),
        }
    }
}

/// The access-log record of one request, filled in as it is forwarded.
#[derive(Debug)]
pub(super) struct Access {
    pub(super) decision: &'static str,
    pub(super) upstream: Served,
    pub(super) attempts: usize,
    pub(super) router_error: &'static str,
    /// Why the last attempt failed, when the request ended in `endpoint_failure`.
    pub(super) failure: &'static str,
    /// The request's trace id (the one it brought or the one created for it).
    pub(super) trace: TraceId,
}

impl Access {
    /// The record of a request decided `decision` (as [`decision_name`] names it).
    pub(super) fn new(decision: &'static str) -> Access {
        Access {
            decision,
            upstream: Served::Nobody,
            attempts: 0,
            router_error: "",
            failure: "",
            trace: TraceId::default(),
        }
    }
}

/// What one access log line says beyond the [`Access`] record.
pub(super) struct AccessLine<'a> {
    pub(super) served_by: &'a str,
    pub(super) conn: &'a Conn,
    pub(super) host: &'a str,
    pub(super) path: &'a str,
    pub(super) route: Option<&'a RouteMatch>,
    pub(super) status: u16,
    pub(super) started: Instant,
    /// The request's own facts, collected only for the `rtr` format.
    pub(super) facts: Option<&'a Facts>,
    /// Response body bytes (declared length; 0 when unknown).
    pub(super) sent: u64,
}

/// The access log's name of a decision.
pub(super) fn decision_name(d: &Decision) -> &'static str {
    match d {
        Decision::Local { .. } => "local",
        Decision::Remote { .. } => "remote",
        Decision::Redirect { .. } => "redirect",
        Decision::FailOpen => "fail_open",
        Decision::NotFound => "unknown_route",
        Decision::NoEndpoints => "no_endpoints",
        Decision::EmptyHost => "empty_host",
        Decision::AcmeChallenge(_) => "acme_challenge",
        Decision::InvalidHost(_) => "invalid_host",
    }
}

/// `Served` as the access log writes it.
struct Upstream<'a>(&'a Served, &'a GoRouters);

impl std::fmt::Display for Upstream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Served::Nobody => Ok(()),
            Served::GoRouter(i) => match self.1.all().get(*i) {
                Some(r) => f.write_str(&r.addr),
                None => Ok(()),
            },
            Served::Site(s) => f.write_str(s),
            Served::Node(s, n) => write!(f, "{s}/{n}"),
        }
    }
}

impl Proxy {
    /// The targets a forwarding decision tries, in order (none for the proxy's own
    /// answers). `Local`: the GoRouters of the route's pool (usable ones round-robin, then
    /// the rest; `super::pools`), then the other sites serving the route; `Remote`: the
    /// serving sites, best first.
    pub(super) fn targets(&self, decision: &Decision, route: Option<&RouteMatch>) -> Vec<Target> {
        let also = match decision {
            Decision::Local { also } => also.as_slice(),
            Decision::FailOpen => &[],
            Decision::Remote { sites } => {
                return sites.iter().cloned().map(Target::Site).collect();
            }
            Decision::Redirect { .. }
            | Decision::NotFound
            | Decision::NoEndpoints
            | Decision::EmptyHost
            | Decision::AcmeChallenge(_)
            | Decision::InvalidHost(_) => {
                return Vec::new();
            }
        };
        let pool = super::pools::local_targets(
            |segment| self.gorouters.order_in(segment),
            route,
            &self.gorouters.segment_unavailable,
        );
        let mut t: Vec<Target> = pool.into_iter().map(Target::GoRouter).collect();
        t.extend(also.iter().cloned().map(Target::Site));
        t
    }

    /// Whether access log lines need the request's [`Facts`] (the `rtr` format).
    pub(super) fn wants_facts(&self) -> bool {
        self.access_log && self.access_format == AccessLogFormat::Rtr
    }

    /// One access log line (target `grouter::access`): GRouter's record, or gorouter's
    /// `rtr` line as the event's message.
    pub(super) fn log_access(&self, a: &AccessLine<'_>, log: &Access) {
        let router_error = match log.failure {
            "" => std::borrow::Cow::Borrowed(log.router_error),
            why => std::borrow::Cow::Owned(format!("{} ({why})", log.router_error)),
        };
        if let (AccessLogFormat::Rtr, Some(facts)) = (self.access_format, a.facts) {
            let elapsed = a.started.elapsed();
            let line = access::render(&access::Line {
                host: a.host,
                started: SystemTime::now() - elapsed,
                facts,
                status: a.status,
                sent: a.sent,
                remote_addr: &a.conn.client.to_string(),
                backend: &Upstream(&log.upstream, &self.gorouters).to_string(),
                response_secs: elapsed.as_secs_f64(),
                app_id: a.route.map_or("", |m| m.app.id()),
                router_error: &router_error,
                trace_id: log.trace.as_str(),
            });
            info!(target: "grouter::access", "{line}");
            return;
        }
        info!(
            target: "grouter::access",
            site = %self.rules.site,
            served_by = %a.served_by,
            client = %a.conn.client,
            peer = a.conn.peer.as_deref().unwrap_or(""),
            scheme = a.conn.scheme,
            host = %a.host,
            path = %a.path,
            route = a.route.map(|m| format!("{}{}", m.host, m.path)).unwrap_or_default(),
            decision = log.decision,
            status = a.status,
            upstream = %Upstream(&log.upstream, &self.gorouters),
            attempts = log.attempts,
            router_error = %router_error,
            trace_id = log.trace.as_str(),
            duration_ms = a.started.elapsed().as_secs_f64() * 1000.0,
            "access"
        );
    }
}

/// Note a failed attempt: eject a GoRouter that refused the connection, and say why.
fn failed(gorouters: &GoRouters, target: &Target, err: &AttemptError, fresh_next: bool) {
    match target {
        Target::GoRouter(i) => {
            let Some(router) = gorouters.all().get(*i) else {
                return;
            };
            let addr = &router.addr;
            if fresh_next {
                debug!(gorouter = %addr, error = %err, "idle upstream connection was closed; opening a new one");
            } else if err.ejects() {
                gorouters.eject(router);
                warn!(gorouter = %addr, error = %err, "gorouter refused the connection; trying the next target");
            } else {
                warn!(gorouter = %addr, error = %err, "gorouter request failed");
            }
        }
        // A site with no node to send to (all dead or set aside) is routine while a fault
        // lasts: not a warning per request.
        Target::Site(site) if err.kind() == AttemptKind::NoNode => {
            debug!(site = %site, error = %err, "remote site skipped; trying the next target");
        }
        Target::Site(site) => {
            warn!(site = %site, error = %err, "remote site failed; trying the next target");
        }
    }
}

/// One upstream protocol: sends one attempt of a request to one target.
pub(super) trait Codec {
    /// What a successful attempt hands back.
    type Response;

    /// What the request allows once an attempt failed (asked after each failure: a
    /// streamed body may have been read meanwhile).
    fn replay(&self) -> Replay;

    /// Send the request to `target`; `fresh`: on a new connection, not a kept-alive one
    /// (to a site: to any live node of it, even one set aside).
    /// `served` starts as the target and may be made more precise (the node of a site).
    fn send(
        &mut self,
        target: &Target,
        fresh: bool,
        served: &mut Served,
    ) -> impl Future<Output = Result<Self::Response, AttemptError>> + Send;
}

/// How forwarding ended.
pub(super) enum Forwarded<R> {
    /// A target answered.
    Response(R),
    /// Every allowed attempt failed: answer 502 `endpoint_failure` (`log` says so, and
    /// `log.failure` why).
    Failed,
    /// Nothing was sent, and the targets left are not this codec's: the caller hands the
    /// request to the general path.
    Handoff,
}

/// Forward through `codec` to `targets` in order, at most [`MAX_ATTEMPTS`] of them. A
/// kept-alive connection found closed is replaced once per target when the request allows
/// it; a failure goes on to the next target only when [`AttemptError::retry_elsewhere`]
/// says so, and when no target is left, a target that closed a fresh connection before
/// answering is tried again ([`AttemptError::retry_same`]) within the same budget; else the
/// first site skipped because every node of it was set aside ([`AttemptKind::SetAside`])
/// is tried once more, `fresh` (to a set-aside node: the fault may have healed unprobed),
/// when the body is whole.
/// `handoff`: when the targets run out after a failure that sent nothing, the caller can
/// take the request elsewhere (the HTTP/1.1 fast path's targets are one GoRouter; the
/// general path tries the rest).
pub(super) async fn forward<C: Codec>(
    gorouters: &GoRouters,
    targets: impl IntoIterator<Item = Target>,
    handoff: bool,
    codec: &mut C,
    log: &mut Access,
) -> Forwarded<C::Response> {
    let mut targets = targets.into_iter();
    let mut last: Option<(Target, AttemptError)> = None;
    // The first site skipped because all its nodes were set aside: the last resort.
    let mut set_aside: Option<Target> = None;
    for _ in 0..MAX_ATTEMPTS {
        let (target, mut fresh) = match targets.next() {
            Some(t) => (t, false),
            None => match last.take() {
                Some((t, err)) if err.retry_same(codec.replay()) => (t, false),
                again => match set_aside.take() {
                    Some(t) if codec.replay().whole => (t, true),
                    _ => {
                        last = again;
                        break;
                    }
                },
            },
        };
        loop {
            log.attempts += 1;
            log.upstream = Served::of(&target);
            let err = match codec.send(&target, fresh, &mut log.upstream).await {
                Ok(resp) => return Forwarded::Response(resp),
                Err(err) => err,
            };
            let replay = codec.replay();
            let again = !fresh && err.retry_fresh(replay);
            failed(gorouters, &target, &err, again);
            if again {
                fresh = true;
                continue;
            }
            if !err.retry_elsewhere(replay) {
                log.router_error = "endpoint_failure";
                log.failure = err.reason();
                return Forwarded::Failed;
            }
            if err.kind() == AttemptKind::SetAside && set_aside.is_none() {
                set_aside = Some(target.clone());
            }
            last = Some((target, err));
            break;
        }
    }
    if handoff
        && last
            .as_ref()
            .is_some_and(|(_, e)| e.sent() == Sent::Nothing)
    {
        return Forwarded::Handoff;
    }
    log.router_error = "endpoint_failure";
    log.failure = last.map_or("", |(_, e)| e.reason());
    Forwarded::Failed
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::super::error::AttemptKind;
    use super::*;

    /// A codec that fails as scripted (then succeeds) and records every attempt.
    struct Scripted {
        failures: VecDeque<AttemptKind>,
        replay: Replay,
        calls: Vec<String>,
    }

    impl Scripted {
        fn new(failures: &[AttemptKind], replay: Replay) -> Scripted {
            Scripted {
                failures: failures.iter().copied().collect(),
                replay,
                calls: Vec::new(),
            }
        }
    }

    impl Codec for Scripted {
        type Response = ();

        fn replay(&self) -> Replay {
            self.replay
        }

        async fn send(
            &mut self,
            target: &Target,
            fresh: bool,
            _served: &mut Served,
        ) -> Result<(), AttemptError> {
            let to = match target {
                Target::GoRouter(i) => format!("gorouter {i}"),
                Target::Site(s) => format!("site {s}"),
            };
            self.calls
                .push(if fresh { format!("{to}, fresh") } else { to });
            match self.failures.pop_front() {
                Some(kind) => Err(AttemptError::new(kind, "scripted")),
                None => Ok(()),
            }
        }
    }

    const GET: Replay = Replay {
        idempotent: true,
        whole: true,
    };
    const POST: Replay = Replay {
        idempotent: false,
        whole: true,
    };

    fn gorouters(n: usize) -> GoRouters {
        GoRouters::for_tests(n)
    }

    fn all_targets() -> Vec<Target> {
        vec![
            Target::GoRouter(0),
            Target::GoRouter(1),
            Target::Site("nyc".into()),
            Target::Site("sfo".into()),
        ]
    }

    async fn run(
        routers: &GoRouters,
        targets: Vec<Target>,
        handoff: bool,
        codec: &mut Scripted,
    ) -> (&'static str, Access) {
        let mut log = Access::new("local");
        let out = match forward(routers, targets, handoff, codec, &mut log).await {
            Forwarded::Response(()) => "response",
            Forwarded::Failed => "failed",
            Forwarded::Handoff => "handoff",
        };
        (out, log)
    }

    #[tokio::test]
    async fn nothing_sent_moves_on_and_ejects_a_gorouter() {
        use AttemptKind::*;
        let routers = gorouters(2);
        let mut codec = Scripted::new(&[Connect, NoNode], POST);
        let (out, log) = run(&routers, all_targets(), false, &mut codec).await;
        assert_eq!(out, "response");
        assert_eq!(codec.calls, ["gorouter 0", "gorouter 1", "site nyc"]);
        assert_eq!(log.attempts, 3);
        assert_eq!(log.router_error, "");
        assert_eq!(routers.pick(Some(0)), Some(1), "gorouter 0 is ejected");
    }

    #[tokio::test]
    async fn at_most_three_targets() {
        use AttemptKind::*;
        let routers = gorouters(2);
        let mut codec = Scripted::new(&[Connect, Connect, NotSent, NotSent], GET);
        let (out, log) = run(&routers, all_targets(), false, &mut codec).await;
        assert_eq!(out, "failed");
        assert_eq!(codec.calls.len(), MAX_ATTEMPTS);
        assert_eq!(log.router_error, "endpoint_failure");
    }

    #[tokio::test]
    async fn partly_sent_moves_on_only_when_idempotent_and_closed_before_a_response() {
        let routers = gorouters(2);
        let mut get = Scripted::new(&[AttemptKind::Reset], GET);
        assert_eq!(
            run(&routers, all_targets(), false, &mut get).await.0,
            "response"
        );
        assert_eq!(get.calls, ["gorouter 0", "gorouter 1"]);
        for kind in [AttemptKind::Reset, AttemptKind::Request] {
            let mut post = Scripted::new(&[kind], POST);
            let (out, log) = run(&routers, all_targets(), false, &mut post).await;
            assert_eq!(out, "failed");
            assert_eq!(post.calls, ["gorouter 0"]);
            assert_eq!(log.router_error, "endpoint_failure");
        }
        // Any other failure after sending is not retried, even for a GET (gorouter's
        // proxy_round_tripper_test.go, "when backend is unavailable due to non-retriable
        // error": "does not retry").
        let mut get = Scripted::new(&[AttemptKind::Request], GET);
        let (out, log) = run(&routers, all_targets(), false, &mut get).await;
        assert_eq!(out, "failed");
        assert_eq!(get.calls, ["gorouter 0"]);
        assert_eq!(log.failure, "malformed response");
    }

    #[tokio::test]
    async fn an_idle_closed_connection_is_replaced_once() {
        use AttemptKind::*;
        let routers = gorouters(2);
        let mut codec = Scripted::new(&[IdleClosed], GET);
        let (out, log) = run(&routers, all_targets(), false, &mut codec).await;
        assert_eq!(out, "response");
        assert_eq!(codec.calls, ["gorouter 0", "gorouter 0, fresh"]);
        assert_eq!(log.attempts, 2);
        assert_eq!(routers.pick(Some(0)), Some(0), "not ejected");
        // Once per target: a second idle close goes on as partly sent.
        let mut codec = Scripted::new(&[IdleClosed, IdleClosed], GET);
        run(&routers, all_targets(), false, &mut codec).await;
        assert_eq!(
            codec.calls,
            ["gorouter 0", "gorouter 0, fresh", "gorouter 1"]
        );
        // A POST whose body went out is not sent again.
        let mut codec = Scripted::new(&[IdleClosed], POST);
        assert_eq!(
            run(&routers, all_targets(), false, &mut codec).await.0,
            "failed"
        );
        assert_eq!(codec.calls, ["gorouter 0"]);
    }

    #[tokio::test]
    async fn the_fast_path_hands_off_only_what_sent_nothing() {
        let routers = gorouters(2);
        let one = || vec![Target::GoRouter(0)];
        let mut codec = Scripted::new(&[AttemptKind::Connect], POST);
        assert_eq!(run(&routers, one(), true, &mut codec).await.0, "handoff");
        let mut codec = Scripted::new(&[AttemptKind::Request], GET);
        assert_eq!(run(&routers, one(), true, &mut codec).await.0, "failed");
        // Without a hand-off, running out of targets is a failure.
        let mut codec = Scripted::new(&[AttemptKind::Connect], GET);
        assert_eq!(run(&routers, one(), false, &mut codec).await.0, "failed");
    }

    #[tokio::test]
    async fn a_target_that_closed_a_fresh_connection_is_tried_again_within_the_budget() {
        use AttemptKind::*;
        let routers = gorouters(1);
        let one = || vec![Target::GoRouter(0)];
        // proxy_round_tripper_test.go, "when the backend fails with an empty response error
        // (io.EOF)": "GET, body is empty: attempts retry" (one backend: the same one again).
        let mut codec = Scripted::new(&[Reset], GET);
        let (out, log) = run(&routers, one(), true, &mut codec).await;
        assert_eq!(out, "response");
        assert_eq!(codec.calls, ["gorouter 0", "gorouter 0"]);
        assert_eq!(log.attempts, 2);
        // At most three attempts, then 502 with the reason.
        let mut codec = Scripted::new(&[Reset, Reset, Reset, Reset], GET);
        let (out, log) = run(&routers, one(), true, &mut codec).await;
        assert_eq!(out, "failed");
        assert_eq!(codec.calls.len(), MAX_ATTEMPTS);
        assert_eq!((log.router_error, log.failure), ("endpoint_failure", "EOF"));
        // "POST, body is empty: does not retry".
        let mut codec = Scripted::new(&[Reset], POST);
        assert_eq!(run(&routers, one(), true, &mut codec).await.0, "failed");
        assert_eq!(codec.calls, ["gorouter 0"]);
        // A refused connection is not tried again: the fast path hands the request over.
        let mut codec = Scripted::new(&[Connect], GET);
        assert_eq!(run(&routers, one(), true, &mut codec).await.0, "handoff");
        assert_eq!(codec.calls, ["gorouter 0"]);
        // With other targets left, the next one comes first.
        let routers = gorouters(2);
        let mut codec = Scripted::new(&[Reset], GET);
        run(&routers, all_targets(), false, &mut codec).await;
        assert_eq!(codec.calls, ["gorouter 0", "gorouter 1"]);
    }

    #[tokio::test]
    async fn a_site_whose_nodes_are_all_set_aside_is_the_last_resort() {
        use AttemptKind::*;
        let routers = gorouters(1);
        let sites = || vec![Target::Site("b".into()), Target::Site("c".into())];
        // b was set aside by the last fault, c falls silent under the next: b is tried once
        // more, to any of its nodes, rather than answering 502.
        let mut codec = Scripted::new(&[SetAside, Unresponsive], GET);
        let (out, log) = run(&routers, sites(), false, &mut codec).await;
        assert_eq!(out, "response");
        assert_eq!(codec.calls, ["site b", "site c", "site b, fresh"]);
        assert_eq!(log.attempts, 3);
        // Both set aside: the first is the last resort, once.
        let mut codec = Scripted::new(&[SetAside, SetAside, Connect], GET);
        let (out, log) = run(&routers, sites(), false, &mut codec).await;
        assert_eq!(out, "failed");
        assert_eq!(codec.calls, ["site b", "site c", "site b, fresh"]);
        assert_eq!(log.failure, "dial failed");
        // A POST whose try at c may have reached it is not sent again anywhere.
        let mut codec = Scripted::new(&[SetAside, Unresponsive], POST);
        assert_eq!(run(&routers, sites(), false, &mut codec).await.0, "failed");
        assert_eq!(codec.calls, ["site b", "site c"]);
        // A POST that reached no node goes to the set-aside site (nothing was sent).
        let mut codec = Scripted::new(&[SetAside, NoNode], POST);
        assert_eq!(
            run(&routers, sites(), false, &mut codec).await.0,
            "response"
        );
        assert_eq!(codec.calls, ["site b", "site c", "site b, fresh"]);
    }

    #[test]
    fn client_certificates_are_carried_as_gorouter_writes_them() {
        // RFC 4648 §10's test vectors.
        for (raw, b64) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), b64, "{raw}");
        }
        let der = rustls::pki_types::CertificateDer::from(vec![0xde, 0xad, 0xbe, 0xef]);
        let conn =
            Conn::new("10.0.0.1:1".parse().unwrap(), "https", None).with_client_cert(Some(&[der]));
        assert_eq!(conn.client_cert.as_deref(), Some("3q2+7w=="));
        let policy = Policy {
            trusted: vec!["10.0.0.0/8".parse().unwrap()],
            ..Policy::default()
        };
        let c = conn.headers(&policy);
        assert!(c.trusted && c.direct);
        assert_eq!(c.cert, Some("3q2+7w=="));
        // An IPv4-mapped client is matched as IPv4; a peer's request is never "trusted".
        let mapped = Conn::new("[::ffff:10.1.1.1]:1".parse().unwrap(), "http", None);
        assert!(mapped.headers(&policy).trusted);
        let peer = Conn::new("10.0.0.1:1".parse().unwrap(), "https", Some("nyc-1".into()));
        assert!(!peer.headers(&policy).trusted);
    }
}
