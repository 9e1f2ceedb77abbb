//! The contract's header rules (CONTRACT.md, "gorouter parity") for requests sent upstream,
//! in both forms: a header map for hyper's clients ([`upstream_headers`]) and bytes for the
//! byte codecs ([`Copier`], which the HTTP/1.1 fast path and [`request_head`] for HTTP/2
//! streams copy a head through); which headers are hop-by-hop; the trace context.
//!
//! The rules, for a request from a client (a peer's request keeps what the first node set):
//! - `X-Forwarded-For`: every line the client sent, folded into one, then the client's
//!   address;
//! - `X-Forwarded-Proto`: the client connection's scheme, unless the client is a trusted
//!   proxy (`proxy.trusted_proxies`) that sent one;
//! - `X-Forwarded-Client-Cert` by `proxy.forwarded_client_cert` (gorouter's
//!   `handlers/clientcert.go`): `sanitize_set` removes it and sets it from the certificate
//!   the client showed (base64 of its DER), `forward` keeps it only from a client that
//!   showed one, `always_forward` keeps it;
//! - `X-Request-Start` and `X-Vcap-Request-Id` set when absent;
//! - trace headers passed on, and created when absent by `proxy.tracing`: `traceparent`
//!   (`w3c`, replacing one that is not valid) or `X-B3-TraceId`, `X-B3-SpanId` and `b3`
//!   (`b3`). The trace id goes to the access log;
//! - hop-by-hop headers dropped (with those `Connection` names, and `Proxy-Authorization`),
//!   but an upgrade's own pair; `Upgrade: h2c` is not an upgrade we forward.
//!
//! A leaf but for the config's enums: imports nothing else of the crate. No allocation on
//! the byte paths: the forwarding lines are written straight into the caller's buffer.
//!
//! Must never: pass a hop-by-hop header upstream (but an upgrade's own pair), replace the
//! forwarding headers of a request a peer forwarded, or let a client's own
//! `X-Forwarded-Client-Cert` through where the mode says it is not to be trusted.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use smallvec::SmallVec;

use crate::config::{ForwardedClientCert, TracingMode};

/// Request header buffer: larger headers get 431.
pub(super) const MAX_HEADER_BYTES: usize = 64 * 1024;

const XFF: &str = "x-forwarded-for";
const XFP: &str = "x-forwarded-proto";
const XFCC: &str = "x-forwarded-client-cert";
const TRACEPARENT: &str = "traceparent";
const B3: &str = "b3";
const B3_TRACE: &str = "x-b3-traceid";
const B3_SPAN: &str = "x-b3-spanid";

/// The header rules of one proxy, from its config.
#[derive(Debug, Clone, Default)]
pub(super) struct Policy {
    /// `proxy.forwarded_client_cert`.
    pub(super) xfcc: ForwardedClientCert,
    /// `proxy.tracing`.
    pub(super) tracing: TracingMode,
    /// `proxy.trusted_proxies`.
    pub(super) trusted: Vec<IpNet>,
}

impl Policy {
    /// Whether `ip` is a trusted proxy. The list is short (the load balancers in front).
    pub(super) fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }
}

/// What the forwarding headers need to know of the client connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct Client<'a> {
    /// The client's address as `X-Forwarded-For` names it.
    pub(super) ip: &'a str,
    /// `http` or `https`, as the client connected.
    pub(super) scheme: &'static str,
    /// Not forwarded by a peer: this node sets the forwarding headers.
    pub(super) direct: bool,
    /// The client is a trusted proxy: its `X-Forwarded-Proto` is kept.
    pub(super) trusted: bool,
    /// The certificate the client showed on its TLS connection, base64 of its DER.
    pub(super) cert: Option<&'a str>,
}

/// A trace id (16 or 32 hex digits) for the access log.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct TraceId {
    hex: [u8; 32],
    len: u8,
}

impl TraceId {
    /// `v` when it is 16 or 32 hex digits, not all zero.
    fn from_hex(v: &[u8]) -> Option<TraceId> {
        if !(v.len() == 16 || v.len() == 32)
            || !v.iter().all(u8::is_ascii_hexdigit)
            || v.iter().all(|&b| b == b'0')
        {
            return None;
        }
        let mut hex = [0u8; 32];
        hex[..v.len()].copy_from_slice(v);
        hex[..v.len()].make_ascii_lowercase();
        Some(TraceId {
            hex,
            len: v.len() as u8,
        })
    }

    fn of(v: u128) -> TraceId {
        let mut hex = [0u8; 32];
        for (i, d) in hex.iter_mut().enumerate() {
            *d = HEX[((v >> ((31 - i) * 4)) & 0xf) as usize];
        }
        TraceId { hex, len: 32 }
    }

    /// The id, empty when there is none.
    pub(super) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.hex[..usize::from(self.len)]).unwrap_or("")
    }
}

impl std::fmt::Debug for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The request's host: the Host header, or the URI's authority (HTTP/2).
pub(super) fn host_of(parts: &http::request::Parts) -> Option<&str> {
    parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(http::uri::Authority::as_str))
}

/// Whether the request asks for an upgrade this proxy forwards: `Connection: upgrade` with
/// an `Upgrade` other than `h2c` (HTTP/2 over cleartext is this hop's business, never the
/// GoRouter's; such a request is forwarded as a plain one, RFC 9113 §3.1).
pub(super) fn is_upgrade(headers: &HeaderMap) -> bool {
    let Some(upgrade) = headers.get(header::UPGRADE) else {
        return false;
    };
    let only_h2c = upgrade
        .as_bytes()
        .split(|&b| b == b',')
        .all(|p| p.trim_ascii().eq_ignore_ascii_case(b"h2c"));
    !only_h2c
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1), and the
/// proxy-authentication pair, meant for this hop (RFC 9110 §11.7; Go's `ReverseProxy`,
/// which gorouter uses, drops them too).
pub(super) const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named by Connection are hop-by-hop too.
    let named: SmallVec<[HeaderName; 4]> = headers
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

/// The headers sent upstream (the module's rules), and the trace id for the access log.
pub(super) fn upstream_headers(
    incoming: &HeaderMap,
    client: Client<'_>,
    policy: &Policy,
    host: &str,
    upgrade: bool,
) -> (HeaderMap, TraceId) {
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
        let mut xff = Vec::with_capacity(64);
        put_xff_value(
            &mut xff,
            incoming.get_all(XFF).iter().map(HeaderValue::as_bytes),
            client.ip,
        );
        if let Ok(v) = HeaderValue::from_bytes(&xff) {
            h.insert(XFF, v);
        }
        if !(client.trusted && h.contains_key(XFP)) {
            h.insert(XFP, HeaderValue::from_static(client.scheme));
        }
        let keep = keeps_xfcc(policy.xfcc, client);
        if !keep {
            h.remove(XFCC);
        }
        if policy.xfcc == ForwardedClientCert::SanitizeSet
            && let Some(v) = client.cert.and_then(|c| HeaderValue::from_str(c).ok())
        {
            h.insert(XFCC, v);
        }
    }
    if !h.contains_key("x-request-start") {
        let mut ms = itoa::Buffer::new();
        if let Ok(v) = HeaderValue::from_str(ms.format(now_ms())) {
            h.insert("x-request-start", v);
        }
    }
    if !h.contains_key("x-vcap-request-id") {
        let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut id);
        if let Ok(v) = HeaderValue::from_str(id) {
            h.insert("x-vcap-request-id", v);
        }
    }
    // Trace context: what the request brings, else a new one by the mode.
    let mut seen = Traces::default();
    for v in h.get_all(TRACEPARENT) {
        seen.note(Trace::Traceparent, v.as_bytes());
    }
    for v in h.get_all(B3) {
        seen.note(Trace::Single, v.as_bytes());
    }
    for v in h.get_all(B3_TRACE) {
        seen.note(Trace::XB3TraceId, v.as_bytes());
    }
    let mut added = Vec::new();
    match policy.tracing {
        TracingMode::W3c if seen.w3c.is_none() => {
            h.remove(TRACEPARENT);
        }
        TracingMode::B3 if !seen.b3 => {
            h.remove(B3);
            h.remove(B3_SPAN);
        }
        _ => {}
    }
    let trace = seen.finish(policy.tracing, &mut added);
    for line in added.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(at) = line.iter().position(|&b| b == b':')
            && let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(&line[..at]),
                HeaderValue::from_bytes(line[at + 1..].trim_ascii()),
            )
        {
            h.insert(n, v);
        }
    }
    (h, trace)
}

/// Whether a client's own `X-Forwarded-Client-Cert` passes, by mode (gorouter's
/// `handlers/clientcert.go`).
fn keeps_xfcc(mode: ForwardedClientCert, client: Client<'_>) -> bool {
    match mode {
        ForwardedClientCert::SanitizeSet => false,
        ForwardedClientCert::Forward => client.cert.is_some(),
        ForwardedClientCert::AlwaysForward => true,
    }
}

/// Which trace header a value came from.
#[derive(Debug, Clone, Copy)]
enum Trace {
    Traceparent,
    Single,
    XB3TraceId,
}

/// The trace headers a request carries.
#[derive(Debug, Default)]
struct Traces {
    /// The trace id of a valid `traceparent`.
    w3c: Option<TraceId>,
    /// A `b3` or `X-B3-TraceId` was there (even without an id: `b3: 0` says "not sampled").
    b3: bool,
    /// Its trace id.
    b3_id: Option<TraceId>,
}

impl Traces {
    /// Note a header's value; `false` when it is a `traceparent` or `b3` that is not valid
    /// (W3C Trace Context §3.2.2: such a header is replaced, in its mode).
    fn note(&mut self, which: Trace, v: &[u8]) -> bool {
        match which {
            Trace::Traceparent => match w3c_trace_id(v) {
                Some(id) => {
                    self.w3c.get_or_insert(id);
                    true
                }
                None => false,
            },
            Trace::Single => {
                // `{trace}-{span}[-{sampled}[-{parent}]]`, or a sampling decision alone.
                let v = v.trim_ascii();
                let mut parts = v.split(|&b| b == b'-');
                let first = parts.next().unwrap_or(b"");
                let id = TraceId::from_hex(first);
                let span_ok = parts
                    .next()
                    .is_some_and(|s| s.len() == 16 && s.iter().all(u8::is_ascii_hexdigit));
                let valid = (id.is_some() && span_ok) || matches!(v, b"0" | b"1" | b"d");
                if valid {
                    self.b3 = true;
                    if let Some(id) = id {
                        self.b3_id.get_or_insert(id);
                    }
                }
                valid
            }
            Trace::XB3TraceId => {
                let v = v.trim_ascii();
                self.b3 |= !v.is_empty();
                if let Some(id) = TraceId::from_hex(v) {
                    self.b3_id.get_or_insert(id);
                }
                true
            }
        }
    }

    /// Write the headers `mode` creates for a request without its kind of trace context
    /// (`name: value\r\n` lines) into `out`, and return the trace id to log: the mode's, else
    /// the other kind's.
    fn finish(self, mode: TracingMode, out: &mut Vec<u8>) -> TraceId {
        match mode {
            TracingMode::W3c => match self.w3c {
                Some(id) => id,
                None => {
                    let (trace, span) = new_ids();
                    out.extend_from_slice(b"traceparent: 00-");
                    put_hex(out, trace, 32);
                    out.push(b'-');
                    put_hex(out, u128::from(span), 16);
                    out.extend_from_slice(b"-01\r\n");
                    TraceId::of(trace)
                }
            },
            TracingMode::B3 if self.b3 => self.b3_id.or(self.w3c).unwrap_or_default(),
            TracingMode::B3 => {
                let (trace, span) = new_ids();
                out.extend_from_slice(b"x-b3-traceid: ");
                put_hex(out, trace, 32);
                out.extend_from_slice(b"\r\nx-b3-spanid: ");
                put_hex(out, u128::from(span), 16);
                out.extend_from_slice(b"\r\nb3: ");
                put_hex(out, trace, 32);
                out.push(b'-');
                put_hex(out, u128::from(span), 16);
                out.extend_from_slice(b"\r\n");
                TraceId::of(trace)
            }
            TracingMode::None => self.w3c.or(self.b3_id).unwrap_or_default(),
        }
    }
}

/// A new random trace id (128 bits) and span id (64 bits, never zero).
fn new_ids() -> (u128, u64) {
    let trace = fastrand::u128(1..);
    (trace, fastrand::u64(1..))
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn put_hex(out: &mut Vec<u8>, v: u128, digits: usize) {
    for i in (0..digits).rev() {
        out.push(HEX[((v >> (i * 4)) & 0xf) as usize]);
    }
}

fn lower_hex(v: &[u8]) -> bool {
    v.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The trace id of a valid `traceparent` (W3C Trace Context §3.2: `version-traceid-
/// parentid-flags`, lower-case hex, no all-zero ids, version `ff` invalid, version `00`
/// exactly 55 characters, later versions at least that with a `-` after).
fn w3c_trace_id(v: &[u8]) -> Option<TraceId> {
    let v = v.trim_ascii();
    if v.len() < 55 || (v.len() > 55 && (v.starts_with(b"00") || v[55] != b'-')) {
        return None;
    }
    let (version, trace, span, flags) = (&v[..2], &v[3..35], &v[36..52], &v[53..55]);
    let dashes = v[2] == b'-' && v[35] == b'-' && v[52] == b'-';
    let ok = dashes
        && lower_hex(version)
        && version != b"ff"
        && lower_hex(trace)
        && lower_hex(span)
        && lower_hex(flags)
        && span.iter().any(|&b| b != b'0');
    if ok { TraceId::from_hex(trace) } else { None }
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// Copies a request head's headers into bytes for a GoRouter by the module's rules: the
/// caller offers each header to [`Copier::keep`] and writes the ones it keeps, then
/// [`Copier::finish`] writes the headers this node sets. Notes only slices of the head it
/// copies: no allocation.
pub(super) struct Copier<'a> {
    client: Client<'a>,
    policy: &'a Policy,
    /// The client's `X-Forwarded-For` lines.
    xff: SmallVec<[&'a [u8]; 4]>,
    /// A trusted client's `X-Forwarded-Proto`.
    xfp: bool,
    has_start: bool,
    has_id: bool,
    /// The request carries an idempotency key.
    pub(super) idempotency_key: bool,
    traces: Traces,
    /// An `X-B3-SpanId` held back in `b3` mode: passed on with the request's own trace id,
    /// replaced when a new trace is created.
    b3_span: Option<&'a [u8]>,
}

impl<'a> Copier<'a> {
    pub(super) fn new(client: Client<'a>, policy: &'a Policy) -> Copier<'a> {
        Copier {
            client,
            policy,
            xff: SmallVec::new(),
            xfp: false,
            has_start: false,
            has_id: false,
            idempotency_key: false,
            traces: Traces::default(),
            b3_span: None,
        }
    }

    /// Whether header `name: value` goes upstream as it is (hop-by-hop headers never do;
    /// the forwarding headers this node sets are held back for [`Copier::finish`]).
    pub(super) fn keep(&mut self, name: &str, value: &'a [u8]) -> bool {
        let direct = self.client.direct;
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        let mode = self.policy.tracing;
        match name.len() {
            2 if is(B3) => self.traces.note(Trace::Single, value) || mode != TracingMode::B3,
            11 if mode == TracingMode::B3 && is(B3_SPAN) => {
                self.b3_span = Some(value);
                false
            }
            11 if is(TRACEPARENT) => {
                self.traces.note(Trace::Traceparent, value) || mode != TracingMode::W3c
            }
            12 if is(B3_TRACE) => self.traces.note(Trace::XB3TraceId, value),
            15 if is(XFF) => {
                if direct {
                    self.xff.push(value);
                }
                !direct
            }
            15 if is("x-request-start") => {
                self.has_start = true;
                true
            }
            17 if is(XFP) => {
                self.xfp |= self.client.trusted;
                !direct || self.client.trusted
            }
            17 if is("x-vcap-request-id") => {
                self.has_id = true;
                true
            }
            23 if is(XFCC) => !direct || keeps_xfcc(self.policy.xfcc, self.client),
            15 | 17 if super::error::is_idempotency_key(name) => {
                self.idempotency_key = true;
                true
            }
            _ => hop_by_hop(name).is_none(),
        }
    }

    /// Write the headers this node sets (the forwarding headers of a client's request,
    /// request ids, a new trace context), and return the trace id for the access log.
    pub(super) fn finish(self, out: &mut Vec<u8>) -> TraceId {
        let c = self.client;
        if c.direct {
            out.extend_from_slice(b"x-forwarded-for: ");
            put_xff_value(out, self.xff, c.ip);
            out.extend_from_slice(b"\r\n");
            if !self.xfp {
                put_header(out, XFP.as_bytes(), c.scheme.as_bytes());
            }
            if self.policy.xfcc == ForwardedClientCert::SanitizeSet
                && let Some(cert) = c.cert
            {
                put_header(out, XFCC.as_bytes(), cert.as_bytes());
            }
        }
        put_request_ids(out, self.has_start, self.has_id);
        if let Some(span) = self.b3_span
            && self.traces.b3
        {
            put_header(out, B3_SPAN.as_bytes(), span);
        }
        self.traces.finish(self.policy.tracing, out)
    }
}

/// An `X-Forwarded-For` value: the client's own lines (`prev`), folded, then `ip`.
fn put_xff_value<'a>(out: &mut Vec<u8>, prev: impl IntoIterator<Item = &'a [u8]>, ip: &str) {
    for p in prev {
        let p = p.trim_ascii();
        if !p.is_empty() {
            out.extend_from_slice(p);
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(ip.as_bytes());
}

/// The HTTP/1.1 request head, as bytes, for a bodiless HTTP/2 stream (the `super::h2`
/// codec), with the module's headers; and the trace id for the access log.
pub(super) fn request_head(
    parts: &http::request::Parts,
    client: Client<'_>,
    policy: &Policy,
    host: &str,
) -> (Vec<u8>, TraceId) {
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
    let mut copier = Copier::new(client, policy);
    let mut has_host = false;
    // HTTP/2 forbids Connection (RFC 9113 §8.2.2), so this is empty but for a request that
    // came as HTTP/1.1.
    let named: SmallVec<[&[u8]; 2]> = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .collect();
    for (name, value) in &parts.headers {
        if named
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name.as_str().as_bytes()))
        {
            continue;
        }
        if copier.keep(name.as_str(), value.as_bytes()) {
            has_host |= name == http::header::HOST;
            put_header(&mut out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if !has_host {
        put_header(&mut out, b"host", host.as_bytes());
    }
    let trace = copier.finish(&mut out);
    out.extend_from_slice(b"\r\n");
    (out, trace)
}

/// Write one header line.
pub(super) fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Write `X-Request-Start` (milliseconds since the epoch) and `X-Vcap-Request-Id` (a new
/// UUID), each unless the request has one.
pub(super) fn put_request_ids(out: &mut Vec<u8>, has_start: bool, has_id: bool) {
    if !has_start {
        put_header(
            out,
            b"x-request-start",
            itoa::Buffer::new().format(now_ms()).as_bytes(),
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

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "MIIBfakecert==";

    fn client(direct: bool, trusted: bool, cert: bool, scheme: &'static str) -> Client<'static> {
        Client {
            ip: "10.9.8.7",
            scheme,
            direct,
            trusted,
            cert: cert.then_some(CERT),
        }
    }

    fn policy(xfcc: ForwardedClientCert, tracing: TracingMode) -> Policy {
        Policy {
            xfcc,
            tracing,
            trusted: Vec::new(),
        }
    }

    /// The headers a GoRouter gets, by both writers: the header map (hyper's clients) and
    /// the bytes (the fast path and HTTP/2 streams), each as `name -> values joined by " | "`.
    fn both(
        incoming: &[(&str, &str)],
        c: Client<'_>,
        p: &Policy,
    ) -> [(Vec<(String, String)>, TraceId); 2] {
        let mut map = HeaderMap::new();
        map.insert(header::HOST, HeaderValue::from_static("shop.example.com"));
        for (n, v) in incoming {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let (h, map_trace) = upstream_headers(&map, c, p, "shop.example.com", is_upgrade(&map));
        let from_map = h
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        let mut req = http::Request::get("/a").body(()).unwrap();
        *req.headers_mut() = map;
        let (parts, ()) = req.into_parts();
        let (bytes, byte_trace) = request_head(&parts, c, p, "shop.example.com");
        let mut parsed = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Request::new(&mut parsed);
        assert!(
            r.parse(&bytes).unwrap().is_complete(),
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        let from_bytes = r
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8(h.value.to_vec()).unwrap(),
                )
            })
            .collect();
        [(from_map, map_trace), (from_bytes, byte_trace)]
    }

    fn get(headers: &[(String, String)], name: &str) -> Option<String> {
        let values: Vec<&str> = headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(" | "))
    }

    /// gorouter's forwarding-header behaviours, each through both writers.
    #[test]
    fn forwarding_headers_follow_gorouter() {
        use ForwardedClientCert::*;
        struct Case {
            /// The gorouter test (or contract line) the case comes from.
            from: &'static str,
            incoming: &'static [(&'static str, &'static str)],
            client: Client<'static>,
            xfcc: ForwardedClientCert,
            expect: &'static [(&'static str, Option<&'static str>)],
        }
        let direct = client(true, false, false, "http");
        let direct_tls = client(true, false, false, "https");
        let mtls = client(true, false, true, "https");
        let trusted = client(true, true, false, "http");
        let peer = client(false, false, false, "https");
        let cases = [
            Case {
                from: "proxy_test.go: It(\"sets X-Forwarded-For\")",
                incoming: &[("x-forwarded-for", "1.2.3.4")],
                client: direct,
                xfcc: SanitizeSet,
                expect: &[("x-forwarded-for", Some("1.2.3.4, 10.9.8.7"))],
            },
            Case {
                from: "CONTRACT.md: several X-Forwarded-For lines are folded into one, then the client appended",
                incoming: &[
                    ("x-forwarded-for", "1.1.1.1"),
                    ("x-forwarded-for", " 2.2.2.2, 3.3.3.3 "),
                ],
                client: direct,
                xfcc: SanitizeSet,
                expect: &[(
                    "x-forwarded-for",
                    Some("1.1.1.1, 2.2.2.2, 3.3.3.3, 10.9.8.7"),
                )],
            },
            Case {
                from: "x_forwarded_proto_test.go: It(\"sets X-Forwarded-Proto to http when connecting over http with header set to https\")",
                incoming: &[("x-forwarded-proto", "https")],
                client: direct,
                xfcc: SanitizeSet,
                expect: &[("x-forwarded-proto", Some("http"))],
            },
            Case {
                from: "x_forwarded_proto_test.go: It(\"sets X-Forwarded-Proto to https when connecting over https with header set to http\")",
                incoming: &[("x-forwarded-proto", "http")],
                client: direct_tls,
                xfcc: SanitizeSet,
                expect: &[("x-forwarded-proto", Some("https"))],
            },
            Case {
                from: "x_forwarded_proto_test.go: It(\"doesn't overwrite X-Forwarded-Proto if present\") (a trusted proxy)",
                incoming: &[
                    ("x-forwarded-proto", "https"),
                    ("x-forwarded-for", "203.0.113.9"),
                ],
                client: trusted,
                xfcc: SanitizeSet,
                expect: &[
                    ("x-forwarded-proto", Some("https")),
                    ("x-forwarded-for", Some("203.0.113.9, 10.9.8.7")),
                ],
            },
            Case {
                from: "x_forwarded_proto_test.go: It(\"sets X-Forwarded-Proto to http if client is not providing one and connecting over http\") (a trusted proxy)",
                incoming: &[],
                client: trusted,
                xfcc: SanitizeSet,
                expect: &[("x-forwarded-proto", Some("http"))],
            },
            // clientcert_test.go, DescribeTable("Client Cert Result"), the entries "when
            // dontForceDeleteHeader, dontSkipSanitization, and config.<MODE>": "when there is no
            // tls connection", "… a tls connection with no client certs", "… a mtls connection
            // with client certs".
            Case {
                from: "clientcert_test.go: SANITIZE_SET, no tls connection",
                incoming: &[("x-forwarded-client-cert", "forged")],
                client: direct,
                xfcc: SanitizeSet,
                expect: &[("x-forwarded-client-cert", None)],
            },
            Case {
                from: "clientcert_test.go: SANITIZE_SET, tls without client certs",
                incoming: &[("x-forwarded-client-cert", "forged")],
                client: direct_tls,
                xfcc: SanitizeSet,
                expect: &[("x-forwarded-client-cert", None)],
            },
            Case {
                from: "clientcert_test.go: SANITIZE_SET, mtls (certSanitizeMTLS)",
                incoming: &[("x-forwarded-client-cert", "forged")],
                client: mtls,
                xfcc: SanitizeSet,
                expect: &[("x-forwarded-client-cert", Some(CERT))],
            },
            Case {
                from: "clientcert_test.go: FORWARD, no tls connection",
                incoming: &[("x-forwarded-client-cert", "forged")],
                client: direct,
                xfcc: Forward,
                expect: &[("x-forwarded-client-cert", None)],
            },
            Case {
                from: "clientcert_test.go: FORWARD, tls without client certs",
                incoming: &[("x-forwarded-client-cert", "forged")],
                client: direct_tls,
                xfcc: Forward,
                expect: &[("x-forwarded-client-cert", None)],
            },
            Case {
                from: "clientcert_test.go: FORWARD, mtls (xfccSanitizeMTLS: the client's header)",
                incoming: &[("x-forwarded-client-cert", "from-lb")],
                client: mtls,
                xfcc: Forward,
                expect: &[("x-forwarded-client-cert", Some("from-lb"))],
            },
            Case {
                from: "clientcert_test.go: ALWAYS_FORWARD, no tls connection",
                incoming: &[("x-forwarded-client-cert", "from-lb")],
                client: direct,
                xfcc: AlwaysForward,
                expect: &[("x-forwarded-client-cert", Some("from-lb"))],
            },
            Case {
                from: "clientcert_test.go: ALWAYS_FORWARD, mtls",
                incoming: &[("x-forwarded-client-cert", "from-lb")],
                client: mtls,
                xfcc: AlwaysForward,
                expect: &[("x-forwarded-client-cert", Some("from-lb"))],
            },
            Case {
                from: "docs/PROXY.md: a peer's request keeps the forwarding headers the first node set",
                incoming: &[
                    ("x-forwarded-for", "1.2.3.4"),
                    ("x-forwarded-proto", "https"),
                    ("x-forwarded-client-cert", "set-by-first-node"),
                ],
                client: peer,
                xfcc: SanitizeSet,
                expect: &[
                    ("x-forwarded-for", Some("1.2.3.4")),
                    ("x-forwarded-proto", Some("https")),
                    ("x-forwarded-client-cert", Some("set-by-first-node")),
                ],
            },
            Case {
                from: "RFC 9110 §7.6.1/§11.7.2 (Go's ReverseProxy hop-by-hop list, which gorouter uses); hop_by_hop_test.go: It(\"removes the headers listed in the Connection header\")",
                incoming: &[
                    ("proxy-authorization", "Basic Zm9vOmJhcg=="),
                    ("connection", "keep-alive, x-secret"),
                    ("x-secret", "1"),
                    ("te", "trailers"),
                    ("x-app", "kept"),
                ],
                client: direct,
                xfcc: SanitizeSet,
                expect: &[
                    ("proxy-authorization", None),
                    ("connection", None),
                    ("x-secret", None),
                    ("te", None),
                    ("x-app", Some("kept")),
                ],
            },
            Case {
                from: "RFC 9113 §3.1: h2c is this hop's upgrade, not forwarded",
                incoming: &[
                    ("connection", "Upgrade, HTTP2-Settings"),
                    ("upgrade", "h2c"),
                    ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
                ],
                client: direct,
                xfcc: SanitizeSet,
                expect: &[
                    ("upgrade", None),
                    ("connection", None),
                    ("http2-settings", None),
                ],
            },
            Case {
                from: "CONTRACT.md: X-Request-Start set when absent, X-Vcap-Request-Id passed on unchanged",
                incoming: &[
                    ("x-request-start", "1700000000000"),
                    ("x-vcap-request-id", "keep-me"),
                ],
                client: direct,
                xfcc: SanitizeSet,
                expect: &[
                    ("x-request-start", Some("1700000000000")),
                    ("x-vcap-request-id", Some("keep-me")),
                    ("host", Some("shop.example.com")),
                ],
            },
        ];
        for c in cases {
            let p = policy(c.xfcc, TracingMode::None);
            for (way, (headers, _)) in ["map", "bytes"]
                .into_iter()
                .zip(both(c.incoming, c.client, &p))
            {
                for (name, want) in c.expect {
                    assert_eq!(
                        get(&headers, name).as_deref(),
                        *want,
                        "{} ({way}): {name} in {headers:?}",
                        c.from
                    );
                }
                if c.client.direct {
                    assert_eq!(
                        get(&headers, "x-vcap-request-id").map(|v| !v.is_empty()),
                        Some(true)
                    );
                    assert!(get(&headers, "x-request-start").is_some());
                }
            }
        }
    }

    fn hex_of(v: &str, len: usize) -> bool {
        v.len() == len && lower_hex(v.as_bytes()) && v.bytes().any(|b| b != b'0')
    }

    /// Trace headers: passed on, created when absent by the mode.
    #[test]
    fn trace_context_is_passed_on_or_created() {
        use TracingMode::*;
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = client(true, false, false, "http");
        // w3c_test.go, "when there are no pre-existing headers": "sets W3C headers from request
        // context and calls the next handler".
        for (headers, trace) in both(&[], c, &policy(ForwardedClientCert::SanitizeSet, W3c)) {
            let tp = get(&headers, "traceparent").unwrap();
            let parts: Vec<&str> = tp.split('-').collect();
            assert_eq!(parts.len(), 4, "{tp}");
            assert_eq!((parts[0], parts[3]), ("00", "01"), "{tp}");
            assert!(hex_of(parts[1], 32) && hex_of(parts[2], 16), "{tp}");
            assert_eq!(trace.as_str(), parts[1], "the access log gets the trace id");
            assert!(get(&headers, "b3").is_none());
        }
        // w3c_test.go, "when there are pre-existing headers": passed on (CONTRACT.md: passed
        // on; gorouter would also re-parent it).
        for (headers, trace) in both(
            &[("traceparent", valid)],
            c,
            &policy(ForwardedClientCert::SanitizeSet, W3c),
        ) {
            assert_eq!(get(&headers, "traceparent").as_deref(), Some(valid));
            assert_eq!(trace.as_str(), "4bf92f3577b34da6a3ce929d0e0e4736");
        }
        // W3C Trace Context §3.2.2.3: an invalid traceparent is replaced (all-zero trace id,
        // upper case, version ff, bad length).
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            for (headers, trace) in both(
                &[("traceparent", bad)],
                c,
                &policy(ForwardedClientCert::SanitizeSet, W3c),
            ) {
                let tp = get(&headers, "traceparent").unwrap();
                assert_ne!(tp, bad);
                assert!(!tp.contains('|'), "one traceparent: {tp}");
                assert_eq!(&tp[3..35], trace.as_str());
            }
        }
        // zipkin_test.go, "with Zipkin enabled": It("sets zipkin headers").
        for (headers, trace) in both(&[], c, &policy(ForwardedClientCert::SanitizeSet, B3)) {
            let (t, s) = (
                get(&headers, "x-b3-traceid").unwrap(),
                get(&headers, "x-b3-spanid").unwrap(),
            );
            assert!(hex_of(&t, 32) && hex_of(&s, 16), "{t} {s}");
            assert_eq!(get(&headers, "b3"), Some(format!("{t}-{s}")));
            assert_eq!(trace.as_str(), t);
            assert!(get(&headers, "traceparent").is_none());
        }
        // zipkin_test.go, "with a valid B3Header already set": It("doesn't overwrite the B3Header").
        let b3 = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90";
        for (headers, trace) in both(
            &[("b3", b3)],
            c,
            &policy(ForwardedClientCert::SanitizeSet, B3),
        ) {
            assert_eq!(get(&headers, "b3").as_deref(), Some(b3));
            assert!(get(&headers, "x-b3-traceid").is_none());
            assert_eq!(trace.as_str(), "80f198ee56343ba864fe8b2a57d3eff7");
        }
        // zipkin_test.go, "with B3TraceIdHeader, B3SpanIdHeader and B3ParentSpanIdHeader
        // already set": It("doesn't overwrite the B3SpanIdHeader"), ("… B3TraceIdHeader").
        let pair = [
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ];
        for (headers, trace) in both(&pair, c, &policy(ForwardedClientCert::SanitizeSet, B3)) {
            assert_eq!(
                get(&headers, "x-b3-traceid").as_deref(),
                Some("463ac35c9f6413ad")
            );
            assert_eq!(
                get(&headers, "x-b3-spanid").as_deref(),
                Some("a2fb4a1d1a96d312")
            );
            assert_eq!(trace.as_str(), "463ac35c9f6413ad");
        }
        // zipkin_test.go, "with only B3SpanIdHeader set": It("adds the B3TraceIdHeader and
        // overwrites the SpanId").
        for (headers, _) in both(
            &[("x-b3-spanid", "a2fb4a1d1a96d312")],
            c,
            &policy(ForwardedClientCert::SanitizeSet, B3),
        ) {
            let s = get(&headers, "x-b3-spanid").unwrap();
            assert!(hex_of(&s, 16) && s != "a2fb4a1d1a96d312", "{s}");
            assert!(get(&headers, "x-b3-traceid").is_some());
        }
        // zipkin_test.go, "with invalid B3Header already set": It("overwrites the B3Header").
        for (headers, _) in both(
            &[("b3", "not-a-b3")],
            c,
            &policy(ForwardedClientCert::SanitizeSet, B3),
        ) {
            assert_ne!(get(&headers, "b3").as_deref(), Some("not-a-b3"));
        }
        // `none`: nothing created, what came is passed on and its id logged.
        for (headers, trace) in both(&[], c, &policy(ForwardedClientCert::SanitizeSet, None)) {
            assert!(
                ["traceparent", "b3", "x-b3-traceid"]
                    .iter()
                    .all(|n| get(&headers, n).is_none())
            );
            assert_eq!(trace.as_str(), "");
        }
        for (headers, trace) in both(
            &[("b3", b3)],
            c,
            &policy(ForwardedClientCert::SanitizeSet, None),
        ) {
            assert_eq!(get(&headers, "b3").as_deref(), Some(b3));
            assert_eq!(trace.as_str(), "80f198ee56343ba864fe8b2a57d3eff7");
        }
    }

    #[test]
    fn upgrades_and_trust() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!is_upgrade(&h), "h2c is not forwarded as an upgrade");
        let c = client(true, false, false, "http");
        let (up, _) = upstream_headers(&h, c, &Policy::default(), "ws.example.com", true);
        assert_eq!(up[header::CONNECTION], "upgrade");
        let p = Policy {
            trusted: vec![
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            ..Policy::default()
        };
        assert!(p.trusts("10.1.2.3".parse().unwrap()));
        assert!(p.trusts("2001:db8::1".parse().unwrap()));
        assert!(!p.trusts("192.0.2.1".parse().unwrap()));
    }
}
