//! The test hooks under `/_standin/`: what the stand-in was asked (`tokens`, `requests`),
//! what it holds (`state`), what to break (`faults`) and `expire_tokens`.
//!
//! Owns nothing but views of [`Shared`](crate::Shared) and the fault merge. Must never need
//! a token, nor put into `state` anything that changes without a request changing it.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use crate::server::{Sh, json_response};

pub(crate) async fn tokens(State(sh): Sh) -> Response {
    let log = Value::Array(sh.token_log.lock().clone());
    json_response(StatusCode::OK, &log)
}

pub(crate) async fn requests(State(sh): Sh) -> Response {
    let log = Value::Array(sh.requests.lock().iter().cloned().collect());
    json_response(StatusCode::OK, &log)
}

pub(crate) async fn state(State(sh): Sh) -> Response {
    let state = sh.store.lock().state_json(&sh.site);
    json_response(StatusCode::OK, &state)
}

pub(crate) async fn get_faults(State(sh): Sh) -> Response {
    let faults = sh.faults.lock().to_json();
    json_response(StatusCode::OK, &faults)
}

pub(crate) async fn set_faults(State(sh): Sh, body: Bytes) -> Response {
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return json_response(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()}));
        }
    };
    let mut faults = sh.faults.lock();
    match faults.merge(&body) {
        Ok(()) => json_response(StatusCode::OK, &faults.to_json()),
        Err(e) => json_response(StatusCode::BAD_REQUEST, &json!({"error": e})),
    }
}

pub(crate) async fn expire_tokens(State(sh): Sh) -> Response {
    let expired = {
        let mut tokens = sh.tokens.lock();
        let n = tokens.len();
        tokens.clear();
        n
    };
    json_response(StatusCode::OK, &json!({"expired": expired}))
}
