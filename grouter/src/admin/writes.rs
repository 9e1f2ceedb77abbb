//! The admin API's control-plane resources (CONTRACT.md, "Global configuration over the
//! mesh"): `/v1/policies…`, `/v1/certs…` and `/v1/audit`.
//!
//! Owns: validating what a write says against what this node knows (sites, regions, host
//! names) before anything is written, and the JSON of these resources. Must never: write
//! after a failed check (a refused write leaves every key as it was), echo a request body
//! into an error, or return a certificate's key.

use std::collections::BTreeSet;

use http::StatusCode;
use serde_json::{Value, json};

use super::AdminState;
use crate::control::{CERT, CertValue, ROUTE_POLICY, SITE_POLICY, Winner};
use crate::policy::{RoutePolicy, SitePolicy};
use crate::tls::{CertListing, CertMeta};

/// The largest write body accepted (a certificate chain with its key fits many times).
pub const MAX_BODY: usize = 256 * 1024;

/// A refused request: status, message, and the field at fault.
#[derive(Debug)]
pub struct Refusal {
    /// HTTP status.
    pub status: StatusCode,
    /// What is wrong.
    pub message: String,
    /// The field (or path part) at fault, if one.
    pub field: Option<String>,
}

impl Refusal {
    pub(super) fn bad(field: &str, message: impl Into<String>) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            field: Some(field.to_string()),
        }
    }

    pub(super) fn not_found(message: impl Into<String>) -> Refusal {
        Refusal {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            field: None,
        }
    }

    /// The JSON body of the refusal.
    pub fn body(&self) -> Value {
        match &self.field {
            Some(f) => json!({ "error": self.message, "field": f }),
            None => json!({ "error": self.message }),
        }
    }
}

/// Sites and regions this node knows of: its own, and every partition's owner's.
pub(super) fn known(state: &AdminState) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut sites = BTreeSet::new();
    let mut regions = BTreeSet::new();
    sites.insert(state.table.me().site.to_string());
    regions.extend(state.region.clone());
    for p in state.table.partitions() {
        sites.insert(p.origin.site.to_string());
        if let Some(r) = p.record.filter(|r| !r.region.is_empty()) {
            regions.insert(r.region);
        }
    }
    (sites, regions)
}

/// A route host as a policy names it: a host name, or `*.` and one, lower-cased.
fn route_host(raw: &str) -> Result<String, Refusal> {
    let lower = raw.to_ascii_lowercase();
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    match crate::names::parse_host(name) {
        Ok(h) if h.port.is_none() && *h.name == *name && name.contains('.') => Ok(lower),
        _ => Err(Refusal::bad("host", format!("{raw:?} is not a route host"))),
    }
}

fn site_name(raw: &str) -> Result<String, Refusal> {
    crate::names::check_site(raw)
        .map(|()| raw.to_string())
        .map_err(|why| Refusal::bad("site", why))
}

/// Parse a JSON body into `T`, naming the field at fault.
pub(super) fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = match inner.classify() {
            serde_json::error::Category::Data => data_message(&inner.to_string()),
            _ => "the body is not valid JSON".to_string(),
        };
        let field = if path == "." || path == "?" {
            "body".to_string()
        } else {
            path
        };
        Refusal::bad(&field, message)
    })
}

/// serde's data error, without the line/column suffix (the field is named separately).
fn data_message(raw: &str) -> String {
    raw.split(" at line ").next().unwrap_or(raw).to_string()
}

fn check_route_policy(state: &AdminState, p: &RoutePolicy) -> Result<(), Refusal> {
    let (sites, regions) = known(state);
    if let Some(rs) = &p.regions {
        if rs.is_empty() {
            return Err(Refusal::bad(
                "regions",
                "must list at least one region (omit it to allow every region)",
            ));
        }
        if let Some(r) = rs.iter().find(|r| !regions.contains(*r)) {
            return Err(Refusal::bad(
                "regions",
                format!("unknown region {r:?} (known: {})", join(&regions)),
            ));
        }
    }
    if let Some(ws) = &p.weights
        && let Some(s) = ws.keys().find(|s| !sites.contains(*s))
    {
        return Err(Refusal::bad(
            &format!("weights.{s}"),
            format!("unknown site {s:?} (known: {})", join(&sites)),
        ));
    }
    if let Some(s) = p.drained.iter().find(|s| !sites.contains(*s)) {
        return Err(Refusal::bad(
            "drained",
            format!("unknown site {s:?} (known: {})", join(&sites)),
        ));
    }
    Ok(())
}

pub(super) fn join(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(", ")
}

/// A short, non-secret description of a route policy for the audit trail.
fn summary_of(p: &RoutePolicy) -> String {
    let mut parts = Vec::new();
    if let Some(m) = p.mode {
        parts.push(format!(
            "mode={}",
            if m == crate::policy::Mode::Proxy {
                "proxy"
            } else {
                "redirect"
            }
        ));
    }
    if let Some(r) = &p.regions {
        parts.push(format!("regions={}", r.join(",")));
    }
    if let Some(w) = &p.weights {
        let w: Vec<String> = w.iter().map(|(s, n)| format!("{s}={n}")).collect();
        parts.push(format!("weights={}", w.join(",")));
    }
    if !p.drained.is_empty() {
        parts.push(format!("drained={}", p.drained.join(",")));
    }
    parts.join(" ")
}

fn replicated(state: &AdminState) -> bool {
    state.mesh.as_deref().is_some_and(|m| !m.peers().is_empty())
}

pub(super) fn write(
    state: &AdminState,
    key: &str,
    value: Option<Vec<u8>>,
    summary: &str,
) -> Result<Value, Refusal> {
    let w = state
        .control
        .write(key, value, "write", summary)
        .map_err(|e| Refusal {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: e.to_string(),
            field: None,
        })?;
    Ok(json!({ "key": w.key, "hlc": w.hlc.to_string(), "replicated": replicated(state) }))
}

fn meta(w: &Winner) -> (String, String, u64) {
    (
        w.value.hlc.to_string(),
        w.value.hlc.node.to_string(),
        w.value.hlc.ms,
    )
}

/// A policy and its write: `{<field>: name, policy, hlc, written_by, written_at_ms}`.
fn policy_json(field: &str, name: &str, w: &Winner) -> Value {
    let policy: Value = serde_json::from_slice(w.bytes()).unwrap_or(Value::Null);
    let (hlc, by, at) = meta(w);
    json!({ field: name, "policy": policy, "hlc": hlc, "written_by": by, "written_at_ms": at })
}

/// `GET /v1/policies`.
pub fn list_policies(state: &AdminState) -> Value {
    let routes: Vec<Value> = state
        .control
        .list(ROUTE_POLICY)
        .iter()
        .map(|(k, w)| policy_json("host", &k[ROUTE_POLICY.len()..], w))
        .collect();
    let sites: Vec<Value> = state
        .control
        .list(SITE_POLICY)
        .iter()
        .map(|(k, w)| policy_json("site", &k[SITE_POLICY.len()..], w))
        .collect();
    json!({ "routes": routes, "sites": sites })
}

/// What a PUT body becomes: checked value bytes and an audit summary.
type Put<'a> = dyn Fn(&[u8]) -> Result<(Vec<u8>, String), Refusal> + 'a;

/// How one policy resource is read and written: the key's merged value as JSON, and what a
/// PUT body becomes (checked value bytes and an audit summary).
struct Resource<'a> {
    key: String,
    /// "policy for route shop.example.com": what a 404 says there is none of.
    what: String,
    show: &'a dyn Fn(&Winner) -> Value,
    put: &'a Put<'a>,
}

fn serve(
    state: &AdminState,
    method: &http::Method,
    body: &[u8],
    r: &Resource<'_>,
) -> Result<Value, Refusal> {
    match *method {
        http::Method::GET => state
            .control
            .get(&r.key)
            .map(|w| (r.show)(&w))
            .ok_or_else(|| Refusal::not_found(format!("no {}", r.what))),
        http::Method::PUT => {
            let (bytes, summary) = (r.put)(body)?;
            write(state, &r.key, Some(bytes), &summary)
        }
        http::Method::DELETE => {
            if state.control.get(&r.key).is_none() {
                return Err(Refusal::not_found(format!("no {}", r.what)));
            }
            write(state, &r.key, None, "")
        }
        _ => Err(Refusal {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: "method not allowed".into(),
            field: None,
        }),
    }
}

fn to_bytes(value: &impl serde::Serialize) -> Result<Vec<u8>, Refusal> {
    serde_json::to_vec(value).map_err(|e| Refusal::bad("body", e.to_string()))
}

/// `GET|PUT|DELETE /v1/policies/routes/{host}`.
pub fn route_policy(
    state: &AdminState,
    method: &http::Method,
    raw_host: &str,
    body: &[u8],
) -> Result<Value, Refusal> {
    let host = route_host(raw_host)?;
    serve(
        state,
        method,
        body,
        &Resource {
            key: format!("{ROUTE_POLICY}{host}"),
            what: format!("policy for route {host}"),
            show: &|w| policy_json("host", &host, w),
            put: &|body| {
                let policy: RoutePolicy = parse_body(body)?;
                check_route_policy(state, &policy)?;
                Ok((to_bytes(&policy)?, summary_of(&policy)))
            },
        },
    )
}

/// `GET|PUT|DELETE /v1/policies/sites/{site}`.
pub fn site_policy(
    state: &AdminState,
    method: &http::Method,
    raw_site: &str,
    body: &[u8],
) -> Result<Value, Refusal> {
    let site = site_name(raw_site)?;
    serve(
        state,
        method,
        body,
        &Resource {
            key: format!("{SITE_POLICY}{site}"),
            what: format!("policy for site {site}"),
            show: &|w| policy_json("site", &site, w),
            put: &|body| {
                let policy: SitePolicy = parse_body(body)?;
                let (sites, _) = known(state);
                if !sites.contains(&site) {
                    return Err(Refusal::bad(
                        "site",
                        format!("unknown site {site:?} (known: {})", join(&sites)),
                    ));
                }
                let summary = if policy.drained {
                    "drained"
                } else {
                    "not drained"
                };
                Ok((to_bytes(&policy)?, summary.to_string()))
            },
        },
    )
}

/// What `PUT /v1/certs/{host}` takes (the stored value has the same two fields).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Upload {
    cert_pem: String,
    key_pem: String,
}

fn meta_json(meta: &CertMeta) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("host".into(), json!(meta.host));
    m.insert("sans".into(), json!(meta.sans));
    m.insert("not_after".into(), json!(meta.not_after_rfc3339()));
    m.insert("fingerprint_sha256".into(), json!(meta.fingerprint_sha256));
    m
}

/// Nodes known to serve the certificate of `listing`: this node, and for a replicated one
/// the connected peers that hold the write (their digest reaches its version in the
/// holder's partition).
fn nodes_serving(state: &AdminState, listing: &CertListing) -> Vec<String> {
    let mut nodes = vec![state.table.me().node_id.to_string()];
    if listing.source == crate::tls::CertOrigin::File {
        return nodes;
    }
    let key = format!("{CERT}{}", listing.meta.host);
    let Some(w) = state.control.get(&key) else {
        return nodes;
    };
    let Some(version) = state.table.config_version(&w.holder, &key) else {
        return nodes;
    };
    for peer in state.mesh.as_deref().map(|m| m.peers()).unwrap_or_default() {
        let holds = *peer.node_id == *w.holder
            || peer.held().get(&*w.holder).is_some_and(|v| *v >= version);
        if holds && !nodes.contains(&peer.node_id) {
            nodes.push(peer.node_id.clone());
        }
    }
    nodes.sort();
    nodes
}

fn listing_json(state: &AdminState, listing: &CertListing) -> Value {
    let mut m = meta_json(&listing.meta);
    m.insert("source".into(), json!(listing.source.as_str()));
    m.insert("nodes_serving".into(), json!(nodes_serving(state, listing)));
    Value::Object(m)
}

/// `GET /v1/certs`: every certificate this node serves by name (metadata only).
pub fn list_certs(state: &AdminState) -> Value {
    let listings = state.control.certs().map(|s| s.list()).unwrap_or_default();
    let certs: Vec<Value> = listings.iter().map(|l| listing_json(state, l)).collect();
    json!({ "certs": certs })
}

/// `GET|PUT|DELETE /v1/certs/{host}`.
pub fn cert(
    state: &AdminState,
    method: &http::Method,
    raw_host: &str,
    body: &[u8],
) -> Result<Value, Refusal> {
    let host = route_host(raw_host)?;
    let key = format!("{CERT}{host}");
    match *method {
        http::Method::GET => {
            let served = state
                .control
                .certs()
                .and_then(|s| s.get(&host))
                .map(|l| listing_json(state, &l));
            // ACME's state of the name (CONTRACT.md: `last_error`, `next_attempt`), also
            // before its first certificate is served.
            let acme = crate::acme::status(&state.control, &host);
            let mut out = match (served, &acme) {
                (Some(v), _) => v,
                (None, Some(_)) => json!({ "host": host, "served": false }),
                (None, None) => {
                    return Err(Refusal::not_found(format!("no certificate for {host}")));
                }
            };
            if let (Value::Object(o), Some(a)) = (&mut out, acme) {
                o.insert("last_error".into(), a["last_error"].clone());
                o.insert("next_attempt".into(), a["next_attempt"].clone());
                o.insert("acme".into(), a);
            }
            Ok(out)
        }
        http::Method::PUT => {
            let upload: Upload = parse_body(body)?;
            let meta = crate::tls::validate_upload(
                &host,
                &upload.cert_pem,
                &upload.key_pem,
                std::time::SystemTime::now(),
            )
            .map_err(|e| Refusal::bad(e.field(), e.to_string()))?;
            let value = CertValue {
                cert_pem: upload.cert_pem,
                key_pem: upload.key_pem,
                source: None,
            };
            let bytes =
                serde_json::to_vec(&value).map_err(|e| Refusal::bad("body", e.to_string()))?;
            let summary = format!(
                "upload sha256={} not_after={}",
                meta.fingerprint_sha256,
                meta.not_after_rfc3339()
            );
            let mut out = write(state, &key, Some(bytes), &summary)?;
            if let Value::Object(o) = &mut out {
                o.extend(meta_json(&meta));
            }
            Ok(out)
        }
        http::Method::DELETE => {
            if state.control.get(&key).is_none() {
                return Err(Refusal::not_found(format!(
                    "no uploaded certificate for {host}"
                )));
            }
            write(state, &key, None, "")
        }
        _ => Err(Refusal {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: "method not allowed".into(),
            field: None,
        }),
    }
}

/// `GET /v1/audit[?limit=N]`.
pub fn audit(state: &AdminState, limit: Option<&str>) -> Result<Value, Refusal> {
    let limit = match limit {
        None => 100,
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| Refusal::bad("limit", "must be a non-negative integer"))?,
    };
    Ok(json!({ "entries": state.control.audit(limit) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_hosts_are_host_names_or_wildcards() {
        assert_eq!(route_host("Shop.Example.com").unwrap(), "shop.example.com");
        assert_eq!(
            route_host("*.apps.example.com").unwrap(),
            "*.apps.example.com"
        );
        for bad in [
            "", "shop", "a.com:80", "a..com", "a.com/x", "*", "*.", "a b.com", "a.com?x",
        ] {
            assert!(route_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn body_errors_name_the_field() {
        let e = parse_body::<RoutePolicy>(br#"{"weights":{"lon":-1}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("weights.lon"));
        let e = parse_body::<RoutePolicy>(br#"{"regoins":["eu"]}"#).unwrap_err();
        assert!(e.message.contains("regoins"), "{}", e.message);
        let e = parse_body::<RoutePolicy>(b"{").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("body"));
    }
}
