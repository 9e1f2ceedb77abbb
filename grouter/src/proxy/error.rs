//! Errors: the ones the proxy answers itself ([`RouterError`]), mapped in one place to
//! gorouter's statuses and `X-Cf-Routererror` values, and a failed attempt to forward
//! ([`AttemptError`]), which alone answers "may I retry?" for every forwarding path. Bodies
//! never carry internals (addresses, error chains): those go to the log.
//!
//! A leaf: imports nothing of the proxy but its body types.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use super::body::{BoxError, ProxyBody};

/// Why the proxy answered on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouterError {
    /// No route for the host: 404 `unknown_route`.
    UnknownRoute(String),
    /// A route that no site may take (its policy's regions have no healthy site, or every
    /// site serving it is drained): 503 `no_endpoints`.
    NoEndpoints(String),
    /// No Host: 400 `empty_host`.
    EmptyHost,
    /// Every target failed: 502 `endpoint_failure (<reason>)`, the reason being the last
    /// attempt's ([`AttemptError::reason`]).
    EndpointFailure(&'static str),
    /// A Host that is not a host name, or two of them: 400 `invalid_host` (CONTRACT.md,
    /// "Edge rules").
    InvalidHost,
}

/// `Cache-Control` on a 404 (gorouter's `addNoCacheControlHeader`).
const NO_CACHE: &str = "no-cache, no-store";
/// `Cache-Control` on a 400 for a missing Host and a 503 `no_endpoints` (gorouter's
/// `addInvalidResponseCacheControlHeader`).
const SHORT_CACHE: &str = "public,max-age=2";

impl RouterError {
    /// Status, `X-Cf-Routererror` code (without its reason) and body, as gorouter answers:
    /// the body is `<status> <reason phrase>: <message>` and a newline.
    pub(super) fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            RouterError::UnknownRoute(host) => (
                StatusCode::NOT_FOUND,
                "unknown_route",
                format!("404 Not Found: Requested route ('{host}') does not exist.\n"),
            ),
            RouterError::NoEndpoints(host) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no_endpoints",
                format!(
                    "503 Service Unavailable: Requested route ('{host}') has no available endpoints.\n"
                ),
            ),
            RouterError::EmptyHost => (
                StatusCode::BAD_REQUEST,
                "empty_host",
                "400 Bad Request: Request had empty Host header\n".into(),
            ),
            RouterError::EndpointFailure(_) => (
                StatusCode::BAD_GATEWAY,
                "endpoint_failure",
                "502 Bad Gateway: Registered endpoint failed to handle the request.\n".into(),
            ),
            RouterError::InvalidHost => (
                StatusCode::BAD_REQUEST,
                "invalid_host",
                "400 Bad Request: malformed Host header\n".into(),
            ),
        }
    }

    /// The headers of the answer besides its framing, as gorouter sends them: `X-Cf-Routererror`
    /// (with the failure's reason for `endpoint_failure`), `Content-Type`,
    /// `X-Content-Type-Options: nosniff` on every one, and `Cache-Control` where gorouter sets
    /// it. `put` is called once per header, so the HTTP/1.1 fast path writes them as bytes and
    /// the general path into a header map from the same list.
    pub(super) fn headers(&self, mut put: impl FnMut(&'static str, &str)) {
        let (_, code, _) = self.parts();
        match self {
            RouterError::EndpointFailure(reason) if !reason.is_empty() => {
                put("x-cf-routererror", &format!("{code} ({reason})"));
            }
            _ => put("x-cf-routererror", code),
        }
        put("content-type", "text/plain; charset=utf-8");
        put("x-content-type-options", "nosniff");
        match self {
            RouterError::UnknownRoute(_) => put("cache-control", NO_CACHE),
            RouterError::EmptyHost | RouterError::NoEndpoints(_) => {
                put("cache-control", SHORT_CACHE);
            }
            RouterError::EndpointFailure(_) | RouterError::InvalidHost => {}
        }
    }

    /// The response a client sees.
    pub fn response(&self) -> Response<ProxyBody> {
        let (status, _, body) = self.parts();
        let mut resp = Response::new(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        );
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        self.headers(|name, value| {
            if let Ok(v) = HeaderValue::from_str(value) {
                h.insert(name, v);
            }
        });
        resp
    }

    /// The `X-Cf-Routererror` code (for the access log; the reason is logged beside it).
    pub fn code(&self) -> &'static str {
        self.parts().1
    }

    /// The reason of an `endpoint_failure` (empty for the other errors).
    pub fn reason(&self) -> &'static str {
        match self {
            RouterError::EndpointFailure(reason) => reason,
            _ => "",
        }
    }
}

/// The answer to an ACME HTTP-01 validation: the key authorization as `text/plain`
/// (RFC 8555 §8.3), or 404 when no order in the mesh issued the token.
pub fn acme_challenge(key_authorization: Option<&str>) -> Response<ProxyBody> {
    let (status, body) = match key_authorization {
        Some(ka) => (StatusCode::OK, Bytes::copy_from_slice(ka.as_bytes())),
        None => (
            StatusCode::NOT_FOUND,
            Bytes::from_static(b"404 Not Found: no such ACME challenge\n"),
        ),
    };
    let mut resp = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    resp
}

/// A 307 to `location`.
pub fn redirect(location: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// How far a failed attempt got, as pingora's `RetryType` carries it: the one fact every
/// forwarding path asks before trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Not a byte reached the target: the request may go to another target, whatever its
    /// method, as long as its body is still whole.
    Nothing,
    /// Some or all of the request went out: only an idempotent request whose body is still
    /// whole may go again, and only when nothing came back.
    Partly,
}

/// What went wrong in one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptKind {
    /// The target could not be connected to (refused, timed out, TLS or handshake failed).
    /// A GoRouter that does this is ejected for a while.
    Connect,
    /// No live node of the site to send to.
    NoNode,
    /// Every live node of the site was set aside lately, after it fell silent, and awaits
    /// a probe: skipped while another target is left, tried anyway as the last resort
    /// (`super::forward`), for a fault may have healed before the probe says so.
    SetAside,
    /// The connection turned out closed, or the request was cancelled, before it was sent.
    NotSent,
    /// A kept-alive connection the target had closed while idle: the request was written
    /// but nothing came back. It may go once more on a fresh connection to the same target.
    IdleClosed,
    /// A fresh connection the target closed or reset before a byte of a response came back
    /// (gorouter's `IdempotentRequestEOF`): the target accepted the connection, so it is
    /// alive, and an idempotent request may go again.
    Reset,
    /// The exchange failed otherwise after the request was sent (a malformed response, a
    /// timeout): never sent again.
    Request,
    /// The request was sent to another site's node, and then the connection fell silent:
    /// no byte came back, not even the answer to a liveness ping, within the liveness
    /// timeout (the node is paused or its link black-holed). An idempotent request whose
    /// body is whole goes to the next site; any other gets 502 `endpoint_failure (timeout)`.
    Unresponsive,
}

/// A failed attempt to forward a request to one target.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", kind.what())]
pub struct AttemptError {
    kind: AttemptKind,
    source: BoxError,
}

/// What a request allows once an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replay {
    /// Idempotent ([`is_idempotent`]): GET, HEAD, OPTIONS, TRACE, or any request with an
    /// idempotency key.
    pub idempotent: bool,
    /// The body can still be sent whole: none, buffered, or not a byte read from it yet.
    pub whole: bool,
}

impl AttemptKind {
    fn what(self) -> &'static str {
        match self {
            AttemptKind::Connect => "connect",
            AttemptKind::NoNode => "no node",
            AttemptKind::SetAside => "set aside",
            AttemptKind::NotSent => "not sent",
            AttemptKind::IdleClosed => "kept-alive connection closed",
            AttemptKind::Reset => "closed before a response",
            AttemptKind::Request => "request",
            AttemptKind::Unresponsive => "unresponsive",
        }
    }
}

impl AttemptError {
    /// An attempt that failed as `kind`, for `source`.
    pub fn new(kind: AttemptKind, source: impl Into<BoxError>) -> AttemptError {
        AttemptError {
            kind,
            source: source.into(),
        }
    }

    /// A failure of hyper's client after the request was handed to it: cancelled before it
    /// was sent, the connection closed or reset before a response (on a `reused` connection:
    /// [`AttemptKind::IdleClosed`], else [`AttemptKind::Reset`]), or anything else.
    pub fn from_hyper(e: hyper::Error, reused: bool) -> AttemptError {
        let closed =
            e.is_incomplete_message() || e.is_closed() || io_kind(&e).is_some_and(is_close);
        let kind = if e.is_canceled() {
            AttemptKind::NotSent
        } else if closed && reused {
            AttemptKind::IdleClosed
        } else if closed {
            AttemptKind::Reset
        } else {
            AttemptKind::Request
        };
        AttemptError::new(kind, e)
    }

    /// What went wrong.
    pub fn kind(&self) -> AttemptKind {
        self.kind
    }

    /// How far the request got.
    pub fn sent(&self) -> Sent {
        match self.kind {
            AttemptKind::Connect
            | AttemptKind::NoNode
            | AttemptKind::SetAside
            | AttemptKind::NotSent => Sent::Nothing,
            AttemptKind::IdleClosed
            | AttemptKind::Reset
            | AttemptKind::Request
            | AttemptKind::Unresponsive => Sent::Partly,
        }
    }

    /// Whether the target itself is at fault in a way that ejects a GoRouter.
    pub fn ejects(&self) -> bool {
        self.kind == AttemptKind::Connect
    }

    /// Whether the request may go to the next target: when nothing was sent and the body is
    /// whole, whatever the method; when the connection was closed or reset before a response
    /// came, only an idempotent request whose body is whole (gorouter's
    /// `RetriableClassifiers`).
    pub fn retry_elsewhere(&self, r: Replay) -> bool {
        match self.kind {
            AttemptKind::Connect
            | AttemptKind::NoNode
            | AttemptKind::SetAside
            | AttemptKind::NotSent => r.whole,
            AttemptKind::IdleClosed | AttemptKind::Reset | AttemptKind::Unresponsive => {
                r.idempotent && r.whole
            }
            AttemptKind::Request => false,
        }
    }

    /// Whether the request may go once more to the same target, on a fresh connection: the
    /// target closed a kept-alive connection while idle (the classic keep-alive race), and
    /// the request is idempotent with its body whole.
    pub fn retry_fresh(&self, r: Replay) -> bool {
        self.kind == AttemptKind::IdleClosed && r.whole && r.idempotent
    }

    /// Whether, with no other target left, the same target may be tried again: it accepted
    /// the connection and closed it before answering (a GoRouter restarting, or closing a
    /// connection it had just accepted), and the request may go again at all.
    pub fn retry_same(&self, r: Replay) -> bool {
        self.kind == AttemptKind::Reset && self.retry_elsewhere(r)
    }

    /// The reason `X-Cf-Routererror: endpoint_failure (<reason>)` gives for this failure,
    /// after gorouter's, without addresses or error chains.
    pub fn reason(&self) -> &'static str {
        let io = io_kind(&*self.source);
        match self.kind {
            AttemptKind::Connect => match io {
                Some(std::io::ErrorKind::ConnectionRefused) => "dial: connection refused",
                Some(std::io::ErrorKind::TimedOut) => "dial: timeout",
                _ => "dial failed",
            },
            AttemptKind::NoNode | AttemptKind::SetAside => "no live node",
            AttemptKind::NotSent => "request canceled",
            AttemptKind::IdleClosed | AttemptKind::Reset => match io {
                Some(std::io::ErrorKind::ConnectionReset) => "connection reset by peer",
                _ => "EOF",
            },
            AttemptKind::Unresponsive => "timeout",
            AttemptKind::Request => match io {
                Some(std::io::ErrorKind::TimedOut) => "timeout",
                Some(_) => "read failed",
                None => "malformed response",
            },
        }
    }
}

/// The kind of the first I/O error in `e`'s chain.
fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut at = Some(e);
    while let Some(e) = at {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        at = e.source();
    }
    None
}

/// An I/O error that means the other side closed the connection.
fn is_close(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        kind,
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
    )
}

/// Whether a request is idempotent for retries (RFC 9110 §9.2.2 as gorouter reads it, after
/// Go's `isReplayable`): GET, HEAD, OPTIONS or TRACE (as the request line spells them), or
/// any method when the request carries `Idempotency-Key` or `X-Idempotency-Key`
/// (`has_key`). PUT and DELETE are idempotent in RFC 9110 but not retried by gorouter.
pub fn is_idempotent(method: &str, has_key: bool) -> bool {
    has_key || matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE")
}

/// Whether a header name is an idempotency key (`Idempotency-Key`, `X-Idempotency-Key`).
pub fn is_idempotency_key(name: &str) -> bool {
    name.eq_ignore_ascii_case("idempotency-key") || name.eq_ignore_ascii_case("x-idempotency-key")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(r: &Response<ProxyBody>, name: &str) -> String {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }

    async fn body(r: Response<ProxyBody>) -> String {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// The proxy's own answers, as gorouter writes them.
    #[tokio::test]
    async fn own_answers_are_gorouters() {
        struct Case {
            /// The gorouter test the case comes from.
            from: &'static str,
            err: RouterError,
            status: u16,
            router_error: &'static str,
            body: &'static str,
            cache_control: &'static str,
        }
        let cases = [
            Case {
                // handlers/lookup_test.go, "when the route does not exist": "sets
                // X-Cf-RouterError to unknown_route", "sets Cache-Control to contain
                // no-cache, no-store", "returns a 404 NotFound", "has a meaningful response";
                // errorwriter/error_writer_test.go (the `<status> <text>: <message>` body).
                from: "lookup_test.go: when the route does not exist",
                err: RouterError::UnknownRoute("shop.example.com".into()),
                status: 404,
                router_error: "unknown_route",
                body: "404 Not Found: Requested route ('shop.example.com') does not exist.\n",
                cache_control: "no-cache, no-store",
            },
            Case {
                // handlers/lookup_test.go, "when the host is empty": "sets X-Cf-RouterError
                // to empty_host", "sets Cache-Control to public,max-age=2".
                from: "lookup_test.go: when there is no host",
                err: RouterError::EmptyHost,
                status: 400,
                router_error: "empty_host",
                body: "400 Bad Request: Request had empty Host header\n",
                cache_control: "public,max-age=2",
            },
            Case {
                // handlers/lookup.go, handleUnavailableRoute (an empty pool; here, a route
                // no site may take by its policies): no_endpoints, public,max-age=2, 503.
                from: "lookup.go: handleUnavailableRoute",
                err: RouterError::NoEndpoints("shop.example.com".into()),
                status: 503,
                router_error: "no_endpoints",
                body: "503 Service Unavailable: Requested route ('shop.example.com') has no available endpoints.\n",
                cache_control: "public,max-age=2",
            },
            Case {
                // proxy/round_tripper/error_handler_test.go, "sets a header to describe the
                // endpoint_failure" and the default 502 with BadGatewayMessage.
                from: "error_handler_test.go: sets a header to describe the endpoint_failure",
                err: RouterError::EndpointFailure("EOF"),
                status: 502,
                router_error: "endpoint_failure (EOF)",
                body: "502 Bad Gateway: Registered endpoint failed to handle the request.\n",
                cache_control: "",
            },
        ];
        for c in cases {
            let r = c.err.response();
            assert_eq!(r.status(), c.status, "{}", c.from);
            assert_eq!(header(&r, "x-cf-routererror"), c.router_error, "{}", c.from);
            // errorwriter/error_writer_test.go: "should set the X-Content-Type-Options to nosniff".
            assert_eq!(
                header(&r, "x-content-type-options"),
                "nosniff",
                "{}",
                c.from
            );
            assert_eq!(
                header(&r, "content-type"),
                "text/plain; charset=utf-8",
                "{}",
                c.from
            );
            assert_eq!(header(&r, "cache-control"), c.cache_control, "{}", c.from);
            assert_eq!(body(r).await, c.body, "{}", c.from);
        }
        assert_eq!(
            redirect("https://a.b/c?d").headers()["location"],
            "https://a.b/c?d"
        );
    }

    fn attempt(kind: AttemptKind) -> AttemptError {
        AttemptError::new(kind, "test")
    }

    /// Retries after an attempt failed, as gorouter's round tripper decides them.
    #[test]
    fn retries_follow_gorouters_round_tripper() {
        use AttemptKind::*;
        struct Case {
            /// The gorouter test the case comes from.
            from: &'static str,
            kind: AttemptKind,
            idempotent: bool,
            whole: bool,
            elsewhere: bool,
        }
        let eof = "proxy_round_tripper_test.go: when the backend fails with an empty response error (io.EOF)";
        let cases = [
            // "GET, body is empty: attempts retry"
            Case {
                from: eof,
                kind: Reset,
                idempotent: true,
                whole: true,
                elsewhere: true,
            },
            // "GET, body is not empty and GetBody is non-nil: attempts retry" (a buffered body)
            Case {
                from: eof,
                kind: Reset,
                idempotent: true,
                whole: true,
                elsewhere: true,
            },
            // "GET, body is not empty: does not retry" (a streamed body already read)
            Case {
                from: eof,
                kind: Reset,
                idempotent: true,
                whole: false,
                elsewhere: false,
            },
            // "POST, body is empty: does not retry"
            Case {
                from: eof,
                kind: Reset,
                idempotent: false,
                whole: true,
                elsewhere: false,
            },
            // "POST, body is empty, Idempotency-Key header: attempts retry"
            Case {
                from: eof,
                kind: Reset,
                idempotent: true,
                whole: true,
                elsewhere: true,
            },
            // The same on a kept-alive connection found closed.
            Case {
                from: eof,
                kind: IdleClosed,
                idempotent: false,
                whole: true,
                elsewhere: false,
            },
            Case {
                from: eof,
                kind: IdleClosed,
                idempotent: true,
                whole: true,
                elsewhere: true,
            },
            // "when some backends fail": "retries until success" (dial errors, any method).
            Case {
                from: "proxy_round_tripper_test.go: when some backends fail",
                kind: Connect,
                idempotent: false,
                whole: true,
                elsewhere: true,
            },
            Case {
                from: "proxy_round_tripper_test.go: when some backends fail",
                kind: NoNode,
                idempotent: false,
                whole: true,
                elsewhere: true,
            },
            Case {
                from: "proxy_round_tripper_test.go: when some backends fail",
                kind: NotSent,
                idempotent: false,
                whole: true,
                elsewhere: true,
            },
            // A streamed body already read cannot go again, even when nothing reached the target.
            Case {
                from: "proxy_round_tripper_test.go: when some backends fail",
                kind: Connect,
                idempotent: true,
                whole: false,
                elsewhere: false,
            },
            // "when backend is unavailable due to non-retriable error": "does not retry".
            Case {
                from: "proxy_round_tripper_test.go: when backend is unavailable due to non-retriable error",
                kind: Request,
                idempotent: true,
                whole: true,
                elsewhere: false,
            },
        ];
        for c in cases {
            let r = Replay {
                idempotent: c.idempotent,
                whole: c.whole,
            };
            let e = attempt(c.kind);
            assert_eq!(
                e.retry_elsewhere(r),
                c.elsewhere,
                "{}: {:?} {r:?}",
                c.from,
                c.kind
            );
            assert_eq!(
                e.retry_same(r),
                c.elsewhere && c.kind == Reset,
                "{:?} {r:?}",
                c.kind
            );
            assert_eq!(
                e.retry_fresh(r),
                c.elsewhere && c.kind == IdleClosed,
                "{:?} {r:?}",
                c.kind
            );
            assert_eq!(e.ejects(), c.kind == Connect);
        }
    }

    #[test]
    fn each_kind_says_how_far_the_request_got_and_why() {
        use AttemptKind::*;
        for (kind, sent) in [
            (Connect, Sent::Nothing),
            (NoNode, Sent::Nothing),
            (NotSent, Sent::Nothing),
            (IdleClosed, Sent::Partly),
            (Reset, Sent::Partly),
            (Request, Sent::Partly),
        ] {
            assert_eq!(attempt(kind).sent(), sent, "{kind:?}");
        }
        let io = |kind: AttemptKind, e: std::io::ErrorKind| {
            AttemptError::new(kind, std::io::Error::from(e))
        };
        assert_eq!(
            io(Connect, std::io::ErrorKind::ConnectionRefused).reason(),
            "dial: connection refused"
        );
        assert_eq!(
            io(Connect, std::io::ErrorKind::TimedOut).reason(),
            "dial: timeout"
        );
        assert_eq!(io(Reset, std::io::ErrorKind::UnexpectedEof).reason(), "EOF");
        assert_eq!(
            io(Reset, std::io::ErrorKind::ConnectionReset).reason(),
            "connection reset by peer"
        );
        assert_eq!(attempt(Request).reason(), "malformed response");
        assert_eq!(attempt(NoNode).reason(), "no live node");
        // No address or error chain in a reason.
        let e = AttemptError::new(Connect, "connect to 10.1.2.3:443: certificate names x");
        assert_eq!(e.reason(), "dial failed");
    }

    /// proxy_round_tripper_test.go, the io.EOF table: GET, HEAD, OPTIONS, TRACE and an empty
    /// method (GET in Go) retry; POST retries only with `Idempotency-Key` or
    /// `X-Idempotency-Key`. PUT and DELETE are not replayable in Go's `isReplayable`.
    #[test]
    fn idempotent_methods_and_keys() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE"] {
            assert!(is_idempotent(m, false), "{m}");
        }
        for m in ["POST", "PUT", "DELETE", "PATCH", "CONNECT", "get"] {
            assert!(!is_idempotent(m, false), "{m}");
            assert!(is_idempotent(m, true), "{m} with a key");
        }
        for n in ["Idempotency-Key", "x-idempotency-key"] {
            assert!(is_idempotency_key(n), "{n}");
        }
        assert!(!is_idempotency_key("x-idempotency"));
    }
}
