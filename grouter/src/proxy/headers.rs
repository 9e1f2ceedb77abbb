//! The contract's header rules (CONTRACT.md) for requests sent upstream, in both forms:
//! a header map for hyper's clients ([`upstream_headers`]) and bytes for the byte codecs
//! ([`request_head`] for HTTP/2 streams; [`put_forwarded`] and [`put_request_ids`], which
//! the HTTP/1.1 fast path also writes with, as it copies the head it parsed); which headers
//! are hop-by-hop.
//!
//! A leaf: imports nothing of the crate.
//!
//! Must never: pass a hop-by-hop header upstream (but an upgrade's own pair), or replace
//! the forwarding headers of a request a peer forwarded.

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Request header buffer: larger headers get 431.
pub(super) const MAX_HEADER_BYTES: usize = 64 * 1024;

/// What the forwarding headers need to know of the client connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct Client<'a> {
    /// The client's address as `X-Forwarded-For` names it.
    pub(super) ip: &'a str,
    /// `http` or `https`, as the client connected.
    pub(super) scheme: &'static str,
    /// Not forwarded by a peer: this node sets the forwarding headers.
    pub(super) direct: bool,
}

/// The request's host: the Host header, or the URI's authority (HTTP/2).
pub(super) fn host_of(parts: &http::request::Parts) -> Option<&str> {
    parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(http::uri::Authority::as_str))
}

pub(super) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1).
pub(super) const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named by Connection are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for h in &named {
        headers.remove(h);
    }
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
}

/// The headers sent upstream (CONTRACT.md): Host unchanged; `X-Forwarded-For` appended and
/// `X-Forwarded-Proto` set from the client connection (a peer's request keeps what the first
/// node set); `X-Request-Start` and `X-Vcap-Request-Id` set when absent; hop-by-hop headers
/// dropped, except the upgrade pair of an upgrade request.
pub(super) fn upstream_headers(
    incoming: &HeaderMap,
    client: Client<'_>,
    host: &str,
    upgrade: bool,
) -> HeaderMap {
    let mut h = incoming.clone();
    strip_hop_by_hop(&mut h);
    if upgrade {
        if let Some(u) = incoming.get(header::UPGRADE) {
            h.insert(header::UPGRADE, u.clone());
        }
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if !h.contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(host)
    {
        h.insert(header::HOST, v);
    }
    if client.direct {
        let ip = client.ip;
        let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
            _ => ip.to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            h.insert("x-forwarded-for", v);
        }
        h.insert("x-forwarded-proto", HeaderValue::from_static(client.scheme));
    }
    if !h.contains_key("x-request-start") {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        if let Ok(v) = HeaderValue::from_str(&ms.to_string()) {
            h.insert("x-request-start", v);
        }
    }
    if !h.contains_key("x-vcap-request-id")
        && let Ok(v) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
    {
        h.insert("x-vcap-request-id", v);
    }
    h
}

/// The HTTP/1.1 request head, as bytes, for a bodiless HTTP/2 stream (the `super::h2`
/// codec), with the contract's headers (as [`upstream_headers`]).
pub(super) fn request_head(
    parts: &http::request::Parts,
    client: Client<'_>,
    host: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let direct = client.direct;
    let (mut has_host, mut has_start, mut has_id) = (false, false, false);
    for (name, value) in &parts.headers {
        let n = name.as_str();
        if hop_by_hop(n).is_some()
            || (direct && (n == "x-forwarded-for" || n == "x-forwarded-proto"))
        {
            continue;
        }
        has_host |= name == http::header::HOST;
        has_start |= n == "x-request-start";
        has_id |= n == "x-vcap-request-id";
        put_header(&mut out, n.as_bytes(), value.as_bytes());
    }
    if !has_host {
        put_header(&mut out, b"host", host.as_bytes());
    }
    if direct {
        let prev = parts.headers.get_all("x-forwarded-for");
        put_forwarded(
            &mut out,
            prev.iter().map(HeaderValue::as_bytes),
            client.ip,
            client.scheme,
        );
    }
    put_request_ids(&mut out, has_start, has_id);
    out.extend_from_slice(b"\r\n");
    out
}

/// Write one header line.
pub(super) fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Write the forwarding headers of a request from a client (CONTRACT.md, as
/// [`upstream_headers`]): `X-Forwarded-For` with the client's own values (`prev`)
/// and then `ip`, and `X-Forwarded-Proto`.
pub(super) fn put_forwarded<'a>(
    out: &mut Vec<u8>,
    prev: impl IntoIterator<Item = &'a [u8]>,
    ip: impl std::fmt::Display,
    scheme: &str,
) {
    out.extend_from_slice(b"x-forwarded-for: ");
    for p in prev {
        let p = p.trim_ascii();
        if !p.is_empty() {
            out.extend_from_slice(p);
            out.extend_from_slice(b", ");
        }
    }
    let _ = write!(out, "{ip}\r\n");
    put_header(out, b"x-forwarded-proto", scheme.as_bytes());
}

/// Write `X-Request-Start` (milliseconds since the epoch) and `X-Vcap-Request-Id` (a new
/// UUID), each unless the request has one.
pub(super) fn put_request_ids(out: &mut Vec<u8>, has_start: bool, has_id: bool) {
    if !has_start {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        put_header(
            out,
            b"x-request-start",
            itoa::Buffer::new().format(ms).as_bytes(),
        );
    }
    if !has_id {
        let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut id);
        put_header(out, b"x-vcap-request-id", id.as_bytes());
    }
}

/// The hop-by-hop headers (as [`HOP_BY_HOP`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hop {
    TransferEncoding,
    Other,
}

pub(super) fn hop_by_hop(name: &str) -> Option<Hop> {
    let hop = HOP_BY_HOP
        .iter()
        .any(|h| h.len() == name.len() && name.eq_ignore_ascii_case(h));
    match hop {
        false => None,
        true if name.eq_ignore_ascii_case("transfer-encoding") => Some(Hop::TransferEncoding),
        true => Some(Hop::Other),
    }
}
