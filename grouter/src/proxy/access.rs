//! gorouter's access-log line (`[log] access_log_format = "rtr"`), rendered from what the
//! forwarder recorded: the field order and quoting of gorouter's
//! `accesslog/schema/access_log_record.go`, so tools that parse gorouter's lines parse ours.
//!
//! ```text
//! host - [2000-01-01T00:00:00.000000000Z] "GET /path?q HTTP/1.1" 200 0 23 "referer" "agent"
//!   "10.0.0.9:51234" "127.0.0.1:8081" x_forwarded_for:"…" x_forwarded_proto:"…"
//!   vcap_request_id:"…" response_time:0.001234 gorouter_time:"-" app_id:"…" app_index:"-"
//!   instance_id:"-" x_cf_routererror:"-" trace_id:"…"
//! ```
//!
//! What GRouter cannot know is written as gorouter writes an unknown: `"-"` (the app's
//! index and instance: GRouter forwards to GoRouters, not to app instances; `gorouter_time`).
//! The request's own `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Vcap-Request-Id` are
//! logged as received; bytes sent are the response's declared length (0 when it has none).
//! `trace_id` is an extra field at the end, as gorouter appends extra headers.
//!
//! A leaf: imports nothing of the crate. Must never: write a raw byte a parser could take
//! for the end of a field (every string is quoted and escaped).

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// What the request itself says, for the `rtr` line (collected only in that format).
#[derive(Debug, Default, Clone)]
pub(super) struct Facts {
    pub(super) method: String,
    /// Path and query as the request line had them.
    pub(super) uri: String,
    /// `HTTP/1.1`, `HTTP/2.0`.
    pub(super) proto: &'static str,
    pub(super) referer: String,
    pub(super) user_agent: String,
    pub(super) xff: String,
    pub(super) xfp: String,
    pub(super) vcap: String,
    /// Request body bytes (declared length).
    pub(super) received: u64,
}

impl Facts {
    /// The facts of a request whose headers are a header map.
    pub(super) fn of(parts: &http::request::Parts) -> Facts {
        let h = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        Facts {
            method: parts.method.as_str().to_string(),
            uri: parts
                .uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .to_string(),
            proto: proto(parts.version),
            referer: h("referer"),
            user_agent: h("user-agent"),
            xff: h("x-forwarded-for"),
            xfp: h("x-forwarded-proto"),
            vcap: h("x-vcap-request-id"),
            received: h("content-length").parse().unwrap_or(0),
        }
    }
}

/// gorouter's spelling of an HTTP version (Go's `Request.Proto`).
pub(super) fn proto(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// One `rtr` line.
#[derive(Debug)]
pub(super) struct Line<'a> {
    pub(super) host: &'a str,
    pub(super) started: SystemTime,
    pub(super) facts: &'a Facts,
    pub(super) status: u16,
    pub(super) sent: u64,
    pub(super) remote_addr: &'a str,
    pub(super) backend: &'a str,
    pub(super) response_secs: f64,
    pub(super) app_id: &'a str,
    /// The full `X-Cf-Routererror` value.
    pub(super) router_error: &'a str,
    pub(super) trace_id: &'a str,
}

/// Render `l` as gorouter would.
pub(super) fn render(l: &Line<'_>) -> String {
    let f = l.facts;
    let mut out = String::with_capacity(512);
    out.push_str(l.host);
    out.push_str(" - [");
    timestamp(&mut out, l.started);
    out.push_str("] ");
    quoted(&mut out, &format!("{} {} {}", f.method, f.uri, f.proto));
    let _ = write!(out, " {} {} {} ", l.status, f.received, l.sent);
    for v in [&f.referer[..], &f.user_agent, l.remote_addr, l.backend] {
        dash_or_quoted(&mut out, v);
        out.push(' ');
    }
    for (name, v) in [
        ("x_forwarded_for", &f.xff[..]),
        ("x_forwarded_proto", &f.xfp),
        ("vcap_request_id", &f.vcap),
    ] {
        out.push_str(name);
        out.push(':');
        dash_or_quoted(&mut out, v);
        out.push(' ');
    }
    let _ = write!(out, "response_time:{:.6} ", l.response_secs.max(0.0));
    out.push_str("gorouter_time:\"-\" app_id:");
    dash_or_quoted(&mut out, l.app_id);
    out.push_str(" app_index:\"-\" instance_id:\"-\" x_cf_routererror:");
    dash_or_quoted(&mut out, l.router_error);
    out.push_str(" trace_id:");
    dash_or_quoted(&mut out, l.trace_id);
    out
}

fn dash_or_quoted(out: &mut String, v: &str) {
    if v.is_empty() {
        out.push_str("\"-\"");
    } else {
        quoted(out, v);
    }
}

/// Go's `strconv.Quote` for what a header can hold: `"` and `\` escaped, control and
/// non-ASCII bytes as escapes, so a line is always one line.
fn quoted(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `2006-01-02T15:04:05.000000000Z` in UTC, gorouter's `ReceivedAt` format.
fn timestamp(out: &mut String, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil(days);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_nanos()
    );
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`).
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// accesslog/schema/access_log_record_test.go, "LogMessage": "makes a record with all
    /// values" (the same fields in the same order and quoting; what GRouter cannot know is
    /// `"-"`, as the same file's "adds all appropriate empty values if fields are unset").
    #[test]
    fn the_line_is_gorouters() {
        let facts = Facts {
            method: "GET".into(),
            uri: "/request?x=\"1\"".into(),
            proto: "HTTP/1.1",
            referer: "FakeReferer".into(),
            user_agent: "FakeUserAgent".into(),
            xff: "FakeProxy1, FakeProxy2".into(),
            xfp: "FakeOriginalRequestProto".into(),
            vcap: "abc-123-xyz-pdq".into(),
            received: 30,
        };
        let line = Line {
            host: "FakeRequestHost",
            started: UNIX_EPOCH + Duration::from_secs(946_684_800),
            facts: &facts,
            status: 200,
            sent: 23,
            remote_addr: "FakeRemoteAddr",
            backend: "1.2.3.4:1234",
            response_secs: 60.0,
            app_id: "FakeApplicationId",
            router_error: "some-router-error",
            trace_id: "",
        };
        assert_eq!(
            render(&line),
            "FakeRequestHost - [2000-01-01T00:00:00.000000000Z] \"GET /request?x=\\\"1\\\" HTTP/1.1\" \
             200 30 23 \"FakeReferer\" \"FakeUserAgent\" \"FakeRemoteAddr\" \"1.2.3.4:1234\" \
             x_forwarded_for:\"FakeProxy1, FakeProxy2\" x_forwarded_proto:\"FakeOriginalRequestProto\" \
             vcap_request_id:\"abc-123-xyz-pdq\" response_time:60.000000 gorouter_time:\"-\" \
             app_id:\"FakeApplicationId\" app_index:\"-\" instance_id:\"-\" \
             x_cf_routererror:\"some-router-error\" trace_id:\"-\""
        );
        let empty = Facts::default();
        let r = render(&referer_free(&empty));
        assert!(
            r.contains(" 0 0 0 \"-\" \"-\" \"-\" \"-\" x_forwarded_for:\"-\""),
            "{r}"
        );
        assert!(!r.contains('\n'));
    }

    fn referer_free(facts: &Facts) -> Line<'_> {
        Line {
            host: "h",
            started: UNIX_EPOCH + Duration::new(1_714_380_000, 123_456_789),
            facts,
            status: 0,
            sent: 0,
            remote_addr: "",
            backend: "",
            response_secs: 0.0,
            app_id: "",
            router_error: "",
            trace_id: "",
        }
    }

    #[test]
    fn timestamps_are_utc_with_nanoseconds() {
        let mut s = String::new();
        timestamp(
            &mut s,
            UNIX_EPOCH + Duration::new(1_714_380_000, 123_456_789),
        );
        assert_eq!(s, "2024-04-29T08:40:00.123456789Z");
        let mut s = String::new();
        timestamp(&mut s, UNIX_EPOCH + Duration::from_secs(951_782_400)); // a leap day
        assert_eq!(s, "2000-02-29T00:00:00.000000000Z");
    }
}
