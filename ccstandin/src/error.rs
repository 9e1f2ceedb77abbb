//! The two kinds of error: [`Error`], why the stand-in could not start (a bad seed, a blob
//! dir it cannot write, an address it cannot bind), and [`CcError`], a CC v3 error answer
//! (`{"errors":[{code,title,detail}]}` with its HTTP status).
//!
//! Owns the CC error codes and titles. Must never carry anything a client did not cause into
//! a 4xx, nor panic on anything a client sent.

use std::path::PathBuf;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Why the stand-in could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The seed file could not be read.
    #[error("cannot read the seed {path}: {source}")]
    SeedRead {
        /// The seed file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The seed is not what it must be; `field` names where (`orgs[0].spaces[1].apps[0].droplet`).
    #[error("bad seed: {field}: {message}")]
    Seed {
        /// The path of the offending field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The blob dir (or a seeded droplet in it) could not be written.
    #[error("blob dir {path}: {source}")]
    BlobDir {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The listen address could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn seed(field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Seed {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A CC v3 error answer.
#[derive(Debug, Clone)]
pub(crate) struct CcError {
    status: StatusCode,
    code: u32,
    title: &'static str,
    detail: String,
}

impl CcError {
    /// 401 CF-InvalidAuthToken: no, an unknown or an expired bearer token.
    pub(crate) fn invalid_token() -> CcError {
        CcError {
            status: StatusCode::UNAUTHORIZED,
            code: 1000,
            title: "CF-InvalidAuthToken",
            detail: "Invalid Auth Token".into(),
        }
    }

    /// 404 CF-ResourceNotFound: "`thing` not found".
    pub(crate) fn not_found(thing: &str) -> CcError {
        CcError {
            status: StatusCode::NOT_FOUND,
            code: 10010,
            title: "CF-ResourceNotFound",
            detail: format!("{thing} not found"),
        }
    }

    /// 404 CF-NotFound: a path the CC does not serve.
    pub(crate) fn unknown_request() -> CcError {
        CcError {
            status: StatusCode::NOT_FOUND,
            code: 10000,
            title: "CF-NotFound",
            detail: "Unknown request".into(),
        }
    }

    /// 422 CF-UnprocessableEntity.
    pub(crate) fn unprocessable(detail: impl Into<String>) -> CcError {
        CcError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: 10008,
            title: "CF-UnprocessableEntity",
            detail: detail.into(),
        }
    }

    /// 400 CF-MessageParseError: a body that is not JSON (or not a multipart form).
    pub(crate) fn parse(detail: impl Into<String>) -> CcError {
        CcError {
            status: StatusCode::BAD_REQUEST,
            code: 1001,
            title: "CF-MessageParseError",
            detail: format!("Request invalid due to parse error: {}", detail.into()),
        }
    }

    /// 500 CF-ServerError (an injected fault, or the stand-in's own I/O failing).
    pub(crate) fn server() -> CcError {
        CcError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: 10001,
            title: "CF-ServerError",
            detail:
                "An unexpected, uncaught error occurred; the CC logs will contain more information"
                    .into(),
        }
    }

    /// The `{code,title,detail}` object (also a failed job's `errors` entry).
    pub(crate) fn entry(code: u32, title: &str, detail: &str) -> serde_json::Value {
        serde_json::json!({"code": code, "title": title, "detail": detail})
    }
}

impl IntoResponse for CcError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "errors": [CcError::entry(self.code, self.title, &self.detail)]
        });
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }
}
