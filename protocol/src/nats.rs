//! gorouter's NATS messages, exactly as gorouter and route-emitter put them on the bus.
//!
//! Owns: the serde shape of `router.register` / `router.unregister` (gorouter's
//! `RegistryMessage`), of `router.start` and the `router.greet` reply, URI normalisation into
//! route keys, and validation into [`Registration`]s.
//!
//! Must never: panic or allocate without bound on a payload, whatever it holds. Payloads
//! over [`MAX_PAYLOAD`] are refused before they are parsed.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

mod plain;

/// Subject on which route emitters announce endpoints.
pub const SUBJECT_REGISTER: &str = "router.register";
/// Subject on which route emitters withdraw endpoints.
pub const SUBJECT_UNREGISTER: &str = "router.unregister";
/// Request subject that asks routers for their register interval (answered with a
/// [`RouterStart`]-shaped payload).
pub const SUBJECT_GREET: &str = "router.greet";
/// Subject on which gorouter announces itself. GRouter never publishes it.
pub const SUBJECT_START: &str = "router.start";

/// Largest payload we parse. gorouter has no such limit, but a real registration is well
/// under 4 KiB (route-emitter sends one URI per message); anything larger is refused
/// without parsing so that garbage cannot cost memory.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Largest number of URIs taken from one message.
pub const MAX_URIS: usize = 1024;

/// A `router.register` / `router.unregister` payload as gorouter's `RegistryMessage`
/// reads it, the fields GRouter uses. Strings borrow from the payload where they hold no
/// escapes. Other keys are skipped without being decoded, as gorouter ignores unknown
/// ones: `private_instance_index`, `protocol` (GRouter talks HTTP/1.1 to GoRouters, never
/// to backends), `availability_zone` and `endpoint_updated_at_ns` are such keys here,
/// since skipping a string costs less than validating and keeping it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct RegistryMessage<'a> {
    /// Backend IP or hostname.
    #[serde(borrow, default, deserialize_with = "borrow_str")]
    pub host: Option<Cow<'a, str>>,
    /// Plain-HTTP backend port.
    #[serde(default)]
    pub port: Option<u16>,
    /// TLS backend port; preferred over `port` when non-zero.
    #[serde(default)]
    pub tls_port: Option<u16>,
    /// Route keys: `host`, `host/path` or `*.domain`.
    #[serde(borrow, default, deserialize_with = "borrow_list")]
    pub uris: Option<Vec<Cow<'a, str>>>,
    /// App GUID.
    #[serde(borrow, default, deserialize_with = "borrow_str")]
    pub app: Option<Cow<'a, str>>,
    /// Instance GUID.
    #[serde(borrow, default, deserialize_with = "borrow_str")]
    pub private_instance_id: Option<Cow<'a, str>>,
    /// SAN the backend certificate must carry; required with `tls_port`.
    #[serde(borrow, default, deserialize_with = "borrow_str")]
    pub server_cert_domain_san: Option<Cow<'a, str>>,
    /// Route service; must be https when set.
    #[serde(borrow, default, deserialize_with = "borrow_str")]
    pub route_service_url: Option<Cow<'a, str>>,
    /// Metric tags: only those GRouter reads are kept.
    #[serde(borrow, default)]
    pub tags: Option<RegistryTags<'a>>,
    /// Isolation segment name.
    #[serde(borrow, default, deserialize_with = "borrow_str")]
    pub isolation_segment: Option<Cow<'a, str>>,
    /// Per-endpoint TTL in seconds; 0 or above the router's default means the default.
    #[serde(default)]
    pub stale_threshold_in_seconds: Option<i64>,
    /// Per-route options (`loadbalancing`, `hash_header`, …).
    #[serde(borrow, default)]
    pub options: Option<RegistryOptions<'a>>,
}

impl<'a> RegistryMessage<'a> {
    /// Decode a payload (of at most [`MAX_PAYLOAD`] bytes, which the caller checks): plain
    /// JSON by the [`plain`] reader, anything else by serde_json, which also words every
    /// error.
    pub fn decode(payload: &'a [u8]) -> Result<RegistryMessage<'a>, InvalidMessage> {
        match plain::read(payload) {
            Some(msg) => Ok(msg),
            None => serde_json::from_slice(payload).map_err(classify),
        }
    }

    /// What the plain reader alone makes of `payload` (`None`: it leaves it to
    /// serde_json). For the differential tests and fuzzing that hold it to serde_json.
    pub fn read_plain(payload: &'a [u8]) -> Option<RegistryMessage<'a>> {
        plain::read(payload)
    }
}

/// serde's `Cow<str>` always deserializes to an owned copy (its `borrow` attribute reaches
/// only a field whose type is `Cow` itself, not `Option<Cow>`): this borrows from the
/// payload whenever the JSON string holds no escape, which is nearly always.
struct Borrowed<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Borrowed<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Borrowed<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(Borrowed(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Borrowed(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Borrowed(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Visit)
    }
}

fn borrow_str<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    Ok(Option::<Borrowed<'a>>::deserialize(d)?.map(|b| b.0))
}

fn borrow_list<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<Cow<'a, str>>>, D::Error> {
    Ok(Option::<Vec<Borrowed<'a>>>::deserialize(d)?.map(|v| v.into_iter().map(|b| b.0).collect()))
}

/// The `tags` of a registration that GRouter reads (route-emitter also sends `component`,
/// `process_type`, `source_id` and more); the rest are skipped without being stored.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct RegistryTags<'a> {
    /// The app's name in its space.
    #[serde(borrow, default, deserialize_with = "borrow_str")]
    pub app_name: Option<Cow<'a, str>>,
    /// The app's organisation.
    #[serde(borrow, default, deserialize_with = "borrow_str")]
    pub organization_name: Option<Cow<'a, str>>,
    /// The app's space.
    #[serde(borrow, default, deserialize_with = "borrow_str")]
    pub space_name: Option<Cow<'a, str>>,
}

/// The `options` object of a registration. Only the keys GRouter reads are typed; the rest
/// are ignored.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct RegistryOptions<'a> {
    /// `round-robin`, `least-connection` or `hash`.
    #[serde(borrow, default, deserialize_with = "borrow_str")]
    pub loadbalancing: Option<Cow<'a, str>>,
}

/// gorouter's `router.start` announcement, also the payload of a `router.greet` reply.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct RouterStart {
    /// `<index>-<uuid>` of the router.
    #[serde(default)]
    pub id: String,
    /// The router's addresses.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// How often emitters should re-register.
    #[serde(rename = "minimumRegisterIntervalInSeconds", default)]
    pub minimum_register_interval_in_seconds: u64,
    /// The router's stale threshold.
    #[serde(rename = "pruneThresholdInSeconds", default)]
    pub prune_threshold_in_seconds: u64,
}

/// The one subscription that carries both kinds, so that they stay in the order NATS
/// delivered them (two subscriptions are two queues, and a reader of both can reorder an
/// unregister before the register it follows). Other `router.*` subjects are ignored.
pub const SUBJECT_ROUTER_ALL: &str = "router.*";

/// Which subject a payload arrived on; unregister needs fewer fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// `router.register`
    Register,
    /// `router.unregister`
    Unregister,
}

impl MessageKind {
    /// The kind of a message on `subject`; `None` for the other `router.*` subjects.
    pub fn of_subject(subject: &str) -> Option<MessageKind> {
        match subject {
            SUBJECT_REGISTER => Some(MessageKind::Register),
            SUBJECT_UNREGISTER => Some(MessageKind::Unregister),
            _ => None,
        }
    }
}

/// Why a message was dropped. Each kind is one label value of the invalid-message metric.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidMessage {
    /// The payload is larger than [`MAX_PAYLOAD`].
    #[error("payload of {0} bytes is over the {MAX_PAYLOAD} byte limit")]
    Oversized(usize),
    /// The JSON ends early.
    #[error("truncated json: {0}")]
    Truncated(String),
    /// Not JSON at all.
    #[error("malformed json: {0}")]
    BadJson(String),
    /// JSON, but a field has the wrong type or range.
    #[error("wrong field type: {0}")]
    WrongType(String),
    /// `uris` is absent or empty.
    #[error("no uris")]
    MissingUris,
    /// No URI of the message is a usable route key.
    #[error("no valid uri: {0:?}")]
    BadUri(String),
    /// `host` is absent or empty.
    #[error("no host")]
    MissingHost,
    /// Neither `port` nor `tls_port` is set.
    #[error("no port or tls_port")]
    MissingPort,
    /// `tls_port` without `server_cert_domain_san`.
    #[error("tls_port without server_cert_domain_san")]
    TlsPortWithoutSan,
    /// `route_service_url` is set and is not https.
    #[error("route_service_url is not https")]
    RouteServiceNotHttps,
}

impl InvalidMessage {
    /// Every reason label, in a fixed order (for metrics and "log once" bookkeeping).
    pub const REASONS: [&'static str; 10] = [
        "oversized",
        "truncated",
        "bad_json",
        "wrong_type",
        "missing_uris",
        "bad_uri",
        "missing_host",
        "missing_port",
        "tls_port_without_san",
        "route_service_not_https",
    ];

    /// The metric label of this reason; an index into [`Self::REASONS`] via [`Self::index`].
    pub fn reason(&self) -> &'static str {
        Self::REASONS[self.index()]
    }

    /// Position of this reason in [`Self::REASONS`].
    pub fn index(&self) -> usize {
        match self {
            Self::Oversized(_) => 0,
            Self::Truncated(_) => 1,
            Self::BadJson(_) => 2,
            Self::WrongType(_) => 3,
            Self::MissingUris => 4,
            Self::BadUri(_) => 5,
            Self::MissingHost => 6,
            Self::MissingPort => 7,
            Self::TlsPortWithoutSan => 8,
            Self::RouteServiceNotHttps => 9,
        }
    }
}

/// A normalised route key: lower-case host (possibly `*.domain`) and a path that is empty or
/// starts with `/` and has no trailing slash.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    /// Lower-case host, no port. Shared: the table's host index keys by the same allocation.
    pub host: Arc<str>,
    /// `""` or `/seg[/seg…]`, lower-case, no trailing slash, no query. Boxed: 8 bytes less
    /// per route than a `String`, and a key never grows.
    pub path: Box<str>,
}

impl RouteKey {
    /// Normalise a URI from a registration the way gorouter builds its route keys: lower-case,
    /// query dropped, trailing slashes dropped. Returns `None` for a URI that cannot be a
    /// route (empty host, a `*` that is not the whole left-most label, spaces, control
    /// characters).
    pub fn parse(uri: &str) -> Option<RouteKey> {
        let uri = uri.split(['?', '#']).next().unwrap_or_default();
        let uri = uri.trim_end_matches('/');
        let (host, path) = match uri.find('/') {
            Some(i) => (&uri[..i], &uri[i..]),
            None => (uri, ""),
        };
        // A route key's host carries no port in CF; drop one if an emitter sent it.
        let host = match host.rsplit_once(':') {
            Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        };
        if !valid_route_host(host) || !path.bytes().all(|b| b > b' ' && b != 0x7f) {
            return None;
        }
        // Emitters send lower case: copy once, lower-casing only when there is a need.
        let lower = |s: &str| s.bytes().any(|b| b.is_ascii_uppercase());
        Some(RouteKey {
            host: if lower(host) {
                host.to_ascii_lowercase().into()
            } else {
                host.into()
            },
            path: if lower(path) {
                path.to_ascii_lowercase().into()
            } else {
                path.into()
            },
        })
    }
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.host, self.path)
    }
}

fn valid_route_host(host: &str) -> bool {
    if host.is_empty() || host.len() > 253 {
        return false;
    }
    let rest = host.strip_prefix("*.").unwrap_or(host);
    !rest.is_empty()
        && rest.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A validated registration: one backend endpoint and the routes it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration<'a> {
    /// Backend host.
    pub host: Cow<'a, str>,
    /// `tls_port` when set, else `port`: the endpoint key is `host:port`.
    pub port: u16,
    /// The endpoint is reached over TLS (`tls_port` was set); such endpoints are never
    /// pruned by age.
    pub tls: bool,
    /// Normalised routes; at least one.
    pub routes: Vec<RouteKey>,
    /// App GUID (empty when the emitter sent none).
    pub app: Cow<'a, str>,
    /// Instance GUID, if any.
    pub instance_id: Option<Cow<'a, str>>,
    /// `tags.app_name`, if any.
    pub app_name: Option<Cow<'a, str>>,
    /// `tags.organization_name`, if any: with the space and the name, the app's identity
    /// across foundations (its GUID differs at every site).
    pub org: Option<Cow<'a, str>>,
    /// `tags.space_name`, if any.
    pub space: Option<Cow<'a, str>>,
    /// `isolation_segment`, if any: the endpoint is served by that segment's GoRouters only.
    pub isolation_segment: Option<Cow<'a, str>>,
    /// `stale_threshold_in_seconds` as sent (0 when absent); the learner clamps it.
    pub stale_threshold_secs: i64,
    /// Number of URIs dropped because they were not valid route keys.
    pub dropped_uris: usize,
}

impl<'a> Registration<'a> {
    /// Validate a payload of the given kind. Registrations need `host`, a port and `uris`;
    /// `tls_port` needs `server_cert_domain_san`; a `route_service_url` must be https.
    /// Unregistrations need only `host`, a port and `uris`, like gorouter.
    pub fn parse(payload: &'a [u8], kind: MessageKind) -> Result<Self, InvalidMessage> {
        if payload.len() > MAX_PAYLOAD {
            return Err(InvalidMessage::Oversized(payload.len()));
        }
        Self::from_message(RegistryMessage::decode(payload)?, kind)
    }

    /// Validate an already decoded message.
    pub fn from_message(
        msg: RegistryMessage<'a>,
        kind: MessageKind,
    ) -> Result<Self, InvalidMessage> {
        let host = match msg.host {
            Some(h) if !h.trim().is_empty() => h,
            _ => return Err(InvalidMessage::MissingHost),
        };
        let tls_port = msg.tls_port.filter(|p| *p != 0);
        let port = match (tls_port, msg.port.filter(|p| *p != 0)) {
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => return Err(InvalidMessage::MissingPort),
        };
        let uris = match msg.uris {
            Some(u) if !u.is_empty() => u,
            _ => return Err(InvalidMessage::MissingUris),
        };
        if kind == MessageKind::Register {
            if tls_port.is_some()
                && msg
                    .server_cert_domain_san
                    .as_deref()
                    .is_none_or(|s| s.trim().is_empty())
            {
                return Err(InvalidMessage::TlsPortWithoutSan);
            }
            if let Some(rs) = msg.route_service_url.as_deref()
                && !rs.is_empty()
                && !rs
                    .get(..8)
                    .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
            {
                return Err(InvalidMessage::RouteServiceNotHttps);
            }
        }
        let considered = uris.len().min(MAX_URIS);
        let mut routes: Vec<RouteKey> = uris[..considered]
            .iter()
            .filter_map(|u| RouteKey::parse(u))
            .collect();
        let dropped_uris = uris.len() - routes.len();
        if routes.is_empty() {
            let first = uris
                .first()
                .map(|u| u.chars().take(80).collect())
                .unwrap_or_default();
            return Err(InvalidMessage::BadUri(first));
        }
        routes.sort_unstable();
        routes.dedup();
        // Empty tags are absent tags (route-emitter sends "" for unknown values).
        let tags = msg.tags.unwrap_or_default();
        let present = |v: Option<Cow<'a, str>>| v.filter(|n| !n.is_empty());
        let (app_name, org, space) = (
            present(tags.app_name),
            present(tags.organization_name),
            present(tags.space_name),
        );
        Ok(Registration {
            host,
            port,
            tls: tls_port.is_some(),
            routes,
            app: msg.app.unwrap_or_default(),
            instance_id: msg.private_instance_id.filter(|s| !s.is_empty()),
            app_name,
            org,
            space,
            isolation_segment: present(msg.isolation_segment),
            stale_threshold_secs: msg.stale_threshold_in_seconds.unwrap_or(0),
            dropped_uris,
        })
    }
}

fn classify(e: serde_json::Error) -> InvalidMessage {
    use serde_json::error::Category;
    let detail = e.to_string();
    match e.classify() {
        Category::Eof => InvalidMessage::Truncated(detail),
        Category::Data => InvalidMessage::WrongType(detail),
        Category::Syntax | Category::Io => InvalidMessage::BadJson(detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(json: &str) -> Result<Registration<'_>, InvalidMessage> {
        Registration::parse(json.as_bytes(), MessageKind::Register)
    }

    #[test]
    fn parses_route_emitter_message() {
        let json = r#"{"host":"10.0.16.21","port":61012,"tls_port":61014,"protocol":"http1",
 "uris":["shop.apps.example.com"],"app":"5e1c0b7a","private_instance_id":"8f3a",
 "private_instance_index":"0","server_cert_domain_san":"8f3a","availability_zone":"z1",
 "endpoint_updated_at_ns":1714380000000000000,
 "tags":{"component":"route-emitter","app_name":"shop"},
 "options":{"loadbalancing":"least-connection","hash_balance":"1.2"},"unknown":[1,2]}"#;
        let r = reg(json).unwrap();
        assert_eq!(r.host, "10.0.16.21");
        assert_eq!(r.port, 61014, "tls_port wins over port");
        assert!(r.tls);
        assert_eq!(r.app, "5e1c0b7a");
        assert_eq!(r.app_name.as_deref(), Some("shop"));
        assert_eq!((r.org.as_deref(), r.space.as_deref()), (None, None));
        assert_eq!(r.isolation_segment, None);
        assert_eq!(
            r.routes,
            vec![RouteKey::parse("shop.apps.example.com").unwrap()]
        );
    }

    #[test]
    fn reads_the_apps_identity_tags_and_isolation_segment() {
        let r = reg(r#"{"host":"h","port":1,"uris":["a.com"],"app":"g","isolation_segment":"seg-a",
 "tags":{"component":"route-emitter","app_name":"shop","organization_name":"acme","space_name":"prod"}}"#)
        .unwrap();
        assert_eq!(r.app_name.as_deref(), Some("shop"));
        assert_eq!(r.org.as_deref(), Some("acme"));
        assert_eq!(r.space.as_deref(), Some("prod"));
        assert_eq!(r.isolation_segment.as_deref(), Some("seg-a"));
        // Empty values are absent ones.
        let r = reg(
            r#"{"host":"h","port":1,"uris":["a.com"],"isolation_segment":"",
 "tags":{"app_name":"","organization_name":"","space_name":""}}"#,
        )
        .unwrap();
        assert_eq!(
            (r.app_name, r.org, r.space, r.isolation_segment),
            (None, None, None, None)
        );
    }

    #[test]
    fn strings_borrow_from_the_payload_unless_escaped() {
        // Parsing is the learner's main cost: a copy per string would double it.
        let json = br#"{"host":"10.0.0.1","port":1,"uris":["a.com","b\u002ecom"],"app":"g\n1",
 "tags":{"app_name":"shop","space_name":"prod"}}"#;
        let m: RegistryMessage<'_> = serde_json::from_slice(json).unwrap();
        assert!(matches!(m.host, Some(Cow::Borrowed("10.0.0.1"))));
        let uris = m.uris.unwrap();
        assert!(matches!(uris[0], Cow::Borrowed("a.com")));
        assert!(
            matches!(&uris[1], Cow::Owned(s) if s == "b.com"),
            "escapes decoded"
        );
        assert!(matches!(&m.app, Some(Cow::Owned(s)) if s == "g\n1"));
        let tags = m.tags.unwrap();
        assert!(matches!(tags.app_name, Some(Cow::Borrowed("shop"))));
        assert!(matches!(tags.space_name, Some(Cow::Borrowed("prod"))));
        assert!(tags.organization_name.is_none());
    }

    #[test]
    fn rejects_each_invalid_kind() {
        let cases: &[(&str, &str)] = &[
            (r#"{"host":"h","port":1,"uris":["a.com"]"#, "truncated"),
            (r#"not json"#, "bad_json"),
            (r#"{"host":"h","port":"80","uris":["a.com"]}"#, "wrong_type"),
            (
                r#"{"host":"h","port":70000,"uris":["a.com"]}"#,
                "wrong_type",
            ),
            (r#"[1,2]"#, "wrong_type"),
            (r#"{"host":"h","port":1}"#, "missing_uris"),
            (r#"{"host":"h","port":1,"uris":[]}"#, "missing_uris"),
            (
                r#"{"host":"h","port":1,"uris":["", "*.", "a b.com"]}"#,
                "bad_uri",
            ),
            (r#"{"port":1,"uris":["a.com"]}"#, "missing_host"),
            (r#"{"host":"","port":1,"uris":["a.com"]}"#, "missing_host"),
            (r#"{"host":"h","uris":["a.com"]}"#, "missing_port"),
            (r#"{"host":"h","port":0,"uris":["a.com"]}"#, "missing_port"),
            (
                r#"{"host":"h","tls_port":443,"uris":["a.com"]}"#,
                "tls_port_without_san",
            ),
            (
                r#"{"host":"h","port":1,"uris":["a.com"],"route_service_url":"http://rs"}"#,
                "route_service_not_https",
            ),
        ];
        for (json, reason) in cases {
            let err = reg(json).expect_err(json);
            assert_eq!(err.reason(), *reason, "{json}: {err}");
        }
        let big = format!(r#"{{"host":"{}"}}"#, "x".repeat(MAX_PAYLOAD));
        assert_eq!(reg(&big).unwrap_err().reason(), "oversized");
    }

    #[test]
    fn unregister_needs_no_san_or_https_check() {
        let json = r#"{"host":"h","tls_port":443,"uris":["a.com"],"route_service_url":"http://x"}"#;
        let r = Registration::parse(json.as_bytes(), MessageKind::Unregister).unwrap();
        assert_eq!((r.port, r.tls), (443, true));
    }

    #[test]
    fn https_route_service_accepted_and_escapes_decoded() {
        let json =
            r#"{"host":"h\u0031","port":8,"uris":["A.com/X/"],"route_service_url":"HTTPS://rs"}"#;
        let r = reg(json).unwrap();
        assert_eq!(r.host, "h1");
        assert_eq!(r.routes[0].to_string(), "a.com/x");
    }

    #[test]
    fn route_key_normalisation() {
        let cases = [
            ("Shop.Example.COM", Some(("shop.example.com", ""))),
            ("shop.example.com/", Some(("shop.example.com", ""))),
            (
                "shop.example.com/API/v1/",
                Some(("shop.example.com", "/api/v1")),
            ),
            ("shop.example.com/a?b=c", Some(("shop.example.com", "/a"))),
            ("shop.example.com:8080/a", Some(("shop.example.com", "/a"))),
            ("*.Example.com", Some(("*.example.com", ""))),
            ("a.*.example.com", None),
            ("*", None),
            ("", None),
            ("/path", None),
            ("sp ace.com", None),
        ];
        for (uri, want) in cases {
            let got = RouteKey::parse(uri);
            let got = got.as_ref().map(|k| (&*k.host, &*k.path));
            assert_eq!(got, want, "{uri}");
        }
    }

    #[test]
    fn duplicate_and_bad_uris_within_one_message() {
        let r = reg(r#"{"host":"h","port":1,"uris":["a.com","A.com/","", "b.com"]}"#).unwrap();
        assert_eq!(r.routes.len(), 2);
        assert_eq!(r.dropped_uris, 1);
    }

    #[test]
    fn router_start_round_trips_gorouter_keys() {
        let s = r#"{"id":"0-abc","hosts":["10.0.0.1"],"minimumRegisterIntervalInSeconds":20,"pruneThresholdInSeconds":120}"#;
        let v: RouterStart = serde_json::from_str(s).unwrap();
        assert_eq!(v.minimum_register_interval_in_seconds, 20);
        assert_eq!(v.prune_threshold_in_seconds, 120);
        assert!(
            serde_json::to_string(&v)
                .unwrap()
                .contains("pruneThresholdInSeconds")
        );
    }
}
