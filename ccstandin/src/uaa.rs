//! UAA's token endpoint (`POST /oauth/token`, `grant_type=client_credentials`), for the one
//! client the stand-in knows.
//!
//! Owns issuing bearer tokens and recording every token request (before checking it). Must
//! never issue a token for wrong credentials, nor drop a request from the record.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use serde_json::json;

use crate::server::{Sh, json_response};
use crate::store::new_guid;

pub(crate) async fn token(
    axum::extract::State(sh): Sh,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut client_id = None;
    let mut client_secret = None;
    let mut grant_type = None;
    for (k, v) in form_urlencoded::parse(&body) {
        match k.as_ref() {
            "client_id" => client_id = Some(v.into_owned()),
            "client_secret" => client_secret = Some(v.into_owned()),
            "grant_type" => grant_type = Some(v.into_owned()),
            _ => {}
        }
    }
    if let Some((id, secret)) = basic(&headers) {
        client_id = Some(id);
        client_secret = Some(secret);
    }
    let credentials_ok = client_id.as_deref() == Some(sh.client_id.as_str())
        && client_secret.as_deref() == Some(sh.client_secret.as_str());
    let grant_ok = grant_type.as_deref() == Some("client_credentials");
    sh.token_log.lock().push(json!({
        "client_id": client_id, "client_secret": client_secret, "grant_type": grant_type,
        "ok": credentials_ok && grant_ok, "at_ms": sh.at_ms(),
    }));
    if !credentials_ok {
        return json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "unauthorized", "error_description": "Bad credentials"}),
        );
    }
    if !grant_ok {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({
                "error": "unsupported_grant_type",
                "error_description": format!(
                    "Unsupported grant type: {}",
                    grant_type.as_deref().unwrap_or("(none)")
                ),
            }),
        );
    }
    let token = format!("standin-{}", uuid::Uuid::new_v4().simple());
    sh.tokens.lock().insert(token.clone());
    json_response(
        StatusCode::OK,
        &json!({
            "access_token": token, "token_type": "bearer", "expires_in": 600,
            "scope": "cloud_controller.admin", "jti": new_guid(),
        }),
    )
}

/// `Authorization: Basic base64(id:secret)` → (id, secret); the parts are URL-decoded, as
/// UAA does.
fn basic(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((url_decode(id), url_decode(secret)))
}

fn url_decode(s: &str) -> String {
    if !s.contains(['%', '+']) {
        return s.to_string();
    }
    // form_urlencoded decodes `+` as space, which a client that did not encode would not mean;
    // only percent-escapes are decoded.
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|b| (*b as char).to_digit(16)),
                bytes.get(i + 2).and_then(|b| (*b as char).to_digit(16)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}
