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
    /// No Host: 400 `empty_host`.
    EmptyHost,
    /// Every target failed: 502 `endpoint_failure`.
    EndpointFailure,
    /// A Host that is not a host name, or two of them: 400 `invalid_host` (CONTRACT.md,
    /// "Edge rules").
    InvalidHost,
}

impl RouterError {
    /// Status, `X-Cf-Routererror` value and body, as gorouter answers.
    pub(super) fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            RouterError::UnknownRoute(host) => (
                StatusCode::NOT_FOUND,
                "unknown_route",
                format!("Requested route ('{host}') does not exist.\n"),
            ),
            RouterError::EmptyHost => (
                StatusCode::BAD_REQUEST,
                "empty_host",
                "Request had empty Host header\n".into(),
            ),
            RouterError::EndpointFailure => (
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

    /// The response a client sees.
    pub fn response(&self) -> Response<ProxyBody> {
        let (status, code, body) = self.parts();
        let mut resp = Response::new(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        );
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert("x-cf-routererror", HeaderValue::from_static(code));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }

    /// The `X-Cf-Routererror` value (for the access log).
    pub fn code(&self) -> &'static str {
        self.parts().1
    }
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
    /// Some or all of the request went out: only an idempotent request without a body may
    /// go again.
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
    /// The connection turned out closed, or the request was cancelled, before it was sent.
    NotSent,
    /// A kept-alive connection the target had closed while idle: the request was written
    /// but nothing came back. It may go once more on a fresh connection to the same target.
    IdleClosed,
    /// The exchange failed after the request was sent.
    Request,
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
    /// The method is idempotent (RFC 9110 §9.2.2).
    pub idempotent: bool,
    /// The request has no body.
    pub bodiless: bool,
    /// The body can still be sent whole: none, buffered, or not a byte read from it yet.
    pub whole: bool,
    /// No byte of the body has gone out (none, or not read yet).
    pub unsent: bool,
}

impl AttemptKind {
    fn what(self) -> &'static str {
        match self {
            AttemptKind::Connect => "connect",
            AttemptKind::NoNode => "no node",
            AttemptKind::NotSent => "not sent",
            AttemptKind::IdleClosed => "kept-alive connection closed",
            AttemptKind::Request => "request",
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

    /// What went wrong.
    pub fn kind(&self) -> AttemptKind {
        self.kind
    }

    /// How far the request got.
    pub fn sent(&self) -> Sent {
        match self.kind {
            AttemptKind::Connect | AttemptKind::NoNode | AttemptKind::NotSent => Sent::Nothing,
            AttemptKind::IdleClosed | AttemptKind::Request => Sent::Partly,
        }
    }

    /// Whether the target itself is at fault in a way that ejects a GoRouter.
    pub fn ejects(&self) -> bool {
        self.kind == AttemptKind::Connect
    }

    /// Whether the request may go to the next target.
    pub fn retry_elsewhere(&self, r: Replay) -> bool {
        match self.sent() {
            Sent::Nothing => r.whole,
            Sent::Partly => r.idempotent && r.bodiless,
        }
    }

    /// Whether the request may go once more to the same target, on a fresh connection: the
    /// target closed a kept-alive connection while idle (the classic keep-alive race), and
    /// sending again is safe (the body is whole, and the method idempotent or no byte of
    /// the body went out).
    pub fn retry_fresh(&self, r: Replay) -> bool {
        self.kind == AttemptKind::IdleClosed && r.whole && (r.idempotent || r.unsent)
    }
}

/// Whether a method (as the request line spells it) is idempotent.
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gorouter_compatible_answers() {
        let r = RouterError::UnknownRoute("shop.example.com".into()).response();
        assert_eq!(r.status(), 404);
        assert_eq!(r.headers()["x-cf-routererror"], "unknown_route");
        assert_eq!(RouterError::EmptyHost.response().status(), 400);
        assert_eq!(
            RouterError::EndpointFailure.response().headers()["x-cf-routererror"],
            "endpoint_failure"
        );
        assert_eq!(
            redirect("https://a.b/c?d").headers()["location"],
            "https://a.b/c?d"
        );
    }

    fn attempt(kind: AttemptKind) -> AttemptError {
        AttemptError::new(kind, "test")
    }

    const GET: Replay = Replay {
        idempotent: true,
        bodiless: true,
        whole: true,
        unsent: true,
    };
    /// A POST whose body is buffered (the HTTP/1.1 fast path) and was written.
    const POST_BUFFERED: Replay = Replay {
        idempotent: false,
        bodiless: false,
        whole: true,
        unsent: false,
    };
    /// A POST whose streamed body was not read yet.
    const POST_UNREAD: Replay = Replay {
        idempotent: false,
        bodiless: false,
        whole: true,
        unsent: true,
    };
    /// A PUT whose streamed body was partly read.
    const PUT_STARTED: Replay = Replay {
        idempotent: true,
        bodiless: false,
        whole: false,
        unsent: false,
    };
    const POST_BODILESS: Replay = Replay {
        idempotent: false,
        bodiless: true,
        whole: true,
        unsent: true,
    };
    /// A PUT whose body is buffered and was written.
    const PUT_BUFFERED: Replay = Replay {
        idempotent: true,
        bodiless: false,
        whole: true,
        unsent: false,
    };

    #[test]
    fn each_kind_says_how_far_the_request_got() {
        use AttemptKind::*;
        for (kind, sent) in [
            (Connect, Sent::Nothing),
            (NoNode, Sent::Nothing),
            (NotSent, Sent::Nothing),
            (IdleClosed, Sent::Partly),
            (Request, Sent::Partly),
        ] {
            assert_eq!(attempt(kind).sent(), sent, "{kind:?}");
            assert_eq!(attempt(kind).ejects(), kind == Connect, "{kind:?}");
        }
    }

    #[test]
    fn nothing_sent_goes_elsewhere_for_any_method_while_the_body_is_whole() {
        for kind in [
            AttemptKind::Connect,
            AttemptKind::NoNode,
            AttemptKind::NotSent,
        ] {
            let e = attempt(kind);
            for r in [GET, POST_BUFFERED, POST_UNREAD, POST_BODILESS, PUT_BUFFERED] {
                assert!(e.retry_elsewhere(r), "{kind:?} {r:?}");
                assert!(!e.retry_fresh(r), "{kind:?} {r:?}: elsewhere, not again");
            }
            assert!(
                !e.retry_elsewhere(PUT_STARTED),
                "{kind:?}: the body is gone"
            );
        }
    }

    #[test]
    fn partly_sent_goes_elsewhere_only_when_idempotent_and_bodiless() {
        for kind in [AttemptKind::IdleClosed, AttemptKind::Request] {
            let e = attempt(kind);
            assert!(e.retry_elsewhere(GET), "{kind:?}");
            for r in [
                POST_BUFFERED,
                POST_UNREAD,
                POST_BODILESS,
                PUT_STARTED,
                PUT_BUFFERED,
            ] {
                assert!(!e.retry_elsewhere(r), "{kind:?} {r:?}");
            }
        }
    }

    #[test]
    fn an_idle_closed_connection_is_replaced_when_sending_again_is_safe() {
        let e = attempt(AttemptKind::IdleClosed);
        for r in [GET, POST_BODILESS, POST_UNREAD, PUT_BUFFERED] {
            assert!(e.retry_fresh(r), "{r:?}");
        }
        // A non-idempotent body that went out, or a body no longer whole, is not resent.
        for r in [POST_BUFFERED, PUT_STARTED] {
            assert!(!e.retry_fresh(r), "{r:?}");
        }
        // A failure on a fresh connection is never "idle closed".
        assert!(!attempt(AttemptKind::Request).retry_fresh(GET));
    }

    #[test]
    fn idempotent_methods() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(is_idempotent(m), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "get"] {
            assert!(!is_idempotent(m), "{m}");
        }
    }
}
