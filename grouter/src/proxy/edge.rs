//! The proxy's share of the edge rules (CONTRACT.md, "Edge rules"): the timeouts and
//! connection limits of its listeners (the rules themselves are [`crate::limits`]), whether a
//! request names its host more than once or in two ways that disagree ([`host_conflict`];
//! whether the host is a host name is [`crate::names::parse_host`], asked by the decision),
//! and the counters of requests refused for their host or framing.
//!
//! A leaf of the proxy: imports only the decision's types (and names `Conn` and `Served`).
//!
//! Must never: let a request whose host is in doubt reach a GoRouter, another site or a
//! `Location`.

use http::{HeaderValue, header};
use prometheus_client::metrics::counter::Counter;

use super::decide::{BadHost, Decision};
use super::forward::Served;
use crate::limits::{Gate, ListenerStats, Timeouts};
use crate::names::parse_host;

/// Reasons of `grouter_http_refused_requests_total`, in the order [`Edge::new`] takes them.
pub const REFUSED_REASONS: [&str; 5] = [
    "empty_host",
    "invalid_host",
    "duplicate_host",
    "host_mismatch",
    "malformed",
];

/// The proxy's listeners' limits and its refusal counters.
#[derive(Debug)]
pub struct Edge {
    pub(super) timeouts: Timeouts,
    /// `proxy.http_listen`.
    pub(super) http: Gate,
    /// `proxy.https_listen` (the same slots as `http`).
    pub(super) https: Gate,
    /// Connections peers forward requests on (the mesh listener's).
    pub(super) peers: ListenerStats,
    refused: [Counter; 5],
}

impl Edge {
    /// Limits and counters; `refused` in [`REFUSED_REASONS`] order.
    pub fn new(
        timeouts: Timeouts,
        http: Gate,
        https: Gate,
        peers: ListenerStats,
        refused: [Counter; 5],
    ) -> Edge {
        Edge {
            timeouts,
            http,
            https,
            peers,
            refused,
        }
    }

    /// The counters of the listener `conn` came in on.
    pub(super) fn listener(&self, conn: &super::forward::Conn) -> &ListenerStats {
        match (conn.peer.is_some(), conn.scheme) {
            (true, _) => &self.peers,
            (false, "https") => self.https.stats(),
            (false, _) => self.http.stats(),
        }
    }

    /// Count a request the proxy answers 400 for its host.
    pub(super) fn refused(&self, decision: &Decision) {
        let i = match decision {
            Decision::EmptyHost => 0,
            Decision::InvalidHost(BadHost::Invalid) => 1,
            Decision::InvalidHost(BadHost::Duplicate) => 2,
            Decision::InvalidHost(BadHost::Mismatch) => 3,
            _ => return,
        };
        self.refused[i].inc();
    }

    /// Count a request whose framing the HTTP parser refused (a CR in a header, …).
    pub(super) fn malformed(&self) {
        self.refused[4].inc();
    }
}

/// The `X-Grouter-Site` of a response another site's node sent (`served` says where the
/// request went): that site, by our own record of it. `None` for a GoRouter's response,
/// which gets this site's.
pub(super) fn served_by(served: &Served) -> Option<HeaderValue> {
    match served {
        Served::Site(site) | Served::Node(site, _) => HeaderValue::from_str(site).ok(),
        Served::Nobody | Served::GoRouter(_) => None,
    }
}

/// Whether a request names its host twice (two Host headers), or in two ways that disagree
/// (a Host header and an authority, HTTP/2's `:authority` or an HTTP/1.1 absolute-form
/// target, that are not the same host and port). A Host that is not a host name is left to
/// the decision, which refuses it as `invalid_host` all the same.
pub(super) fn host_conflict(parts: &http::request::Parts) -> Option<BadHost> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Some(BadHost::Duplicate);
    }
    let host = first?;
    // Not even ASCII text (which would read as no Host at all further on).
    let Ok(host) = host.to_str() else {
        return Some(BadHost::Invalid);
    };
    let authority = parts.uri.authority()?;
    match (parse_host(host), parse_host(authority.as_str())) {
        (Ok(h), Ok(a)) if h == a => None,
        (Ok(_), _) => Some(BadHost::Mismatch),
        (Err(_), _) => None, // the decision refuses the Host itself
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, hosts: &[&str]) -> http::request::Parts {
        let mut req = http::Request::get(uri);
        for h in hosts {
            req = req.header(header::HOST, *h);
        }
        req.body(())
            .map(|r| r.into_parts().0)
            .unwrap_or_else(|e| panic!("{uri}: {e}"))
    }

    #[test]
    fn a_request_names_one_host() {
        use BadHost::*;
        for (uri, hosts, want) in [
            ("/", &["shop.example.com"][..], None),
            ("/", &[][..], None),
            // HTTP/2: only `:authority`, or a Host that says the same.
            ("https://shop.example.com/", &[][..], None),
            ("https://shop.example.com/", &["Shop.Example.com"][..], None),
            (
                "https://shop.example.com:8443/",
                &["shop.example.com:8443"][..],
                None,
            ),
            // RFC 9112 §3.2: two Hosts are a 400.
            (
                "/",
                &["a.example.com", "a.example.com"][..],
                Some(Duplicate),
            ),
            (
                "/",
                &["a.example.com", "b.example.com"][..],
                Some(Duplicate),
            ),
            // RFC 9113 §8.3.1 (`:authority` and Host differ), RFC 9112 §3.2.2 (absolute form).
            (
                "https://a.example.com/",
                &["b.example.com"][..],
                Some(Mismatch),
            ),
            (
                "https://a.example.com:8443/",
                &["a.example.com"][..],
                Some(Mismatch),
            ),
            (
                "https://user@a.example.com/",
                &["a.example.com"][..],
                Some(Mismatch),
            ),
        ] {
            assert_eq!(host_conflict(&parts(uri, hosts)), want, "{uri} {hosts:?}");
        }
        let mut latin1 = parts("/", &[]);
        latin1.headers.insert(
            header::HOST,
            HeaderValue::from_bytes(b"caf\xe9.example.com").unwrap_or_else(|e| panic!("{e}")),
        );
        assert_eq!(
            host_conflict(&latin1),
            Some(Invalid),
            "not ASCII: invalid, not empty"
        );
    }
}
