//! Errors the proxy answers itself, mapped in one place to gorouter's statuses and
//! `X-Cf-Routererror` values. Bodies never carry internals (addresses, error chains): those
//! go to the log.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use super::upstream::ProxyBody;

/// Why the proxy answered on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouterError {
    /// No route for the host: 404 `unknown_route`.
    UnknownRoute(String),
    /// No Host: 400 `empty_host`.
    EmptyHost,
    /// Every target failed: 502 `endpoint_failure`.
    EndpointFailure,
    /// No target at all (the route exists, but nothing can serve it now): 503 `no_endpoints`.
    NoEndpoints,
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
            RouterError::NoEndpoints => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no_endpoints",
                "503 Service Unavailable\n".into(),
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
        assert_eq!(RouterError::NoEndpoints.response().status(), 503);
        assert_eq!(
            redirect("https://a.b/c?d").headers()["location"],
            "https://a.b/c?d"
        );
    }
}
