//! The naming rules of node ids and sites, one copy for the config and the mesh identities,
//! and of the host names clients may ask for ([`parse_host`], CONTRACT.md "Edge rules").
//!
//! Owns: what a node id, a site and a region may be (length and characters). Sites and
//! regions become DNS labels (redirect hosts, identity URIs), so they are label-shaped. What
//! a request's Host (or HTTP/2 `:authority`) may be: a host name and an optional port.
//!
//! Must never: import anything of this crate; the config, the certificate code and the proxy
//! all build on it.

use std::borrow::Cow;

/// Longest accepted node id.
pub const NODE_ID_MAX_LEN: usize = 64;
/// Longest accepted site or region: they become DNS labels.
pub const SITE_MAX_LEN: usize = 32;

/// A node id: 1..=64 of `[a-z0-9._-]`. The reason names the value.
pub fn check_node_id(value: &str) -> Result<(), String> {
    check_chars(value, NODE_ID_MAX_LEN, "[a-z0-9._-]", |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
    })
}

/// A site or region: 1..=32 of `[a-z0-9-]`, a DNS label, so not starting or ending with
/// '-'. The reason names the value.
pub fn check_site(value: &str) -> Result<(), String> {
    check_chars(value, SITE_MAX_LEN, "[a-z0-9-]", |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
    })?;
    if value.starts_with('-') || value.ends_with('-') {
        return Err(format!(
            "{value:?} must start and end with a letter or digit"
        ));
    }
    Ok(())
}

/// Longest host name as text (RFC 1035 §2.3.4: 255 octets on the wire, so 253 characters
/// without the root's dot).
pub const HOST_MAX_LEN: usize = 253;
/// Longest label of a host name (RFC 1035 §2.3.4).
pub const LABEL_MAX_LEN: usize = 63;

/// A request's host, as [`parse_host`] accepts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host<'a> {
    /// The host name, lower-cased, without port or trailing dot.
    pub name: Cow<'a, str>,
    /// The port, when the request named one.
    pub port: Option<u16>,
}

/// Why a Host is not a host name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// No name at all (`""`, `":443"`): gorouter's `empty_host`.
    #[error("empty host")]
    Empty,
    /// A byte outside `[A-Za-z0-9._-]` in the name.
    #[error("byte {0:#04x} is not allowed in a host name")]
    Byte(u8),
    /// Two dots in a row, or a leading dot.
    #[error("empty label")]
    EmptyLabel,
    /// A label over [`LABEL_MAX_LEN`].
    #[error("label longer than {LABEL_MAX_LEN} characters")]
    LongLabel,
    /// A name over [`HOST_MAX_LEN`].
    #[error("longer than {HOST_MAX_LEN} characters")]
    TooLong,
    /// A port that is not 1..=65535 in at most five digits.
    #[error("invalid port")]
    Port,
}

/// The host name and port of a request's Host header or `:authority` (CONTRACT.md, "Edge
/// rules"): `name[:port]`, the name made of labels of `[A-Za-z0-9_-]` (at most 63 each)
/// joined by dots, at most 253 characters, one trailing dot allowed (the absolute form of
/// the same name); the port 1..=65535. Surrounding spaces and tabs (a header's optional
/// white space) are ignored; the name is lower-cased.
///
/// Stricter than RFC 3986's `reg-name`, which also admits percent-encoding and the
/// sub-delimiters (`!$&'()*+,;=`), and than gorouter, which takes whatever Go's HTTP server
/// lets through: every byte that can end or re-scope a URL's authority (`?`, `#`, `@`, `/`,
/// `\`, `%`, space, `:` twice, `[`) is refused, so a Host can never name one site to the
/// route table and another to a GoRouter or a `Location`. IP literals in brackets (IPv6)
/// are refused too: no route can be registered for one. `_` is allowed although RFC 1123
/// host names exclude it: Cloud Controller accepts it in route hosts, DNS carries it (RFC
/// 2181 §11), Go's server (gorouter) accepts it, and it delimits nothing in a URL (RFC 3986
/// §2.3, unreserved).
pub fn parse_host(raw: &str) -> Result<Host<'_>, HostError> {
    let raw = raw.trim_matches([' ', '\t']);
    let (name, port) = match raw.split_once(':') {
        Some((name, port)) => (name, Some(parse_port(port)?)),
        None => (raw, None),
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    if name.len() > HOST_MAX_LEN {
        return Err(HostError::TooLong);
    }
    let mut upper = false;
    let mut label = 0usize;
    for &b in name.as_bytes() {
        match b {
            b'.' if label == 0 => return Err(HostError::EmptyLabel),
            b'.' => label = 0,
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => label += 1,
            b'A'..=b'Z' => {
                upper = true;
                label += 1;
            }
            other => return Err(HostError::Byte(other)),
        }
        if label > LABEL_MAX_LEN {
            return Err(HostError::LongLabel);
        }
    }
    if label == 0 {
        return Err(HostError::EmptyLabel); // "a.." after the one trailing dot went
    }
    let name = if upper {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    };
    Ok(Host { name, port })
}

/// 1..=65535 in one to five digits.
fn parse_port(port: &str) -> Result<u16, HostError> {
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostError::Port);
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(HostError::Port),
        Ok(p) => Ok(p),
    }
}

/// Length and charset of a name.
fn check_chars(
    value: &str,
    max_len: usize,
    charset: &str,
    allowed: impl Fn(char) -> bool,
) -> Result<(), String> {
    if value.is_empty() || value.len() > max_len {
        Err(format!("{value:?} must be 1..={max_len} characters long"))
    } else if let Some(c) = value.chars().find(|c| !allowed(*c)) {
        Err(format!(
            "{value:?} contains {c:?}; allowed characters are {charset}"
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_and_sites_follow_one_rule() {
        assert!(check_node_id("lon-1.a_b").is_ok());
        assert!(check_node_id(&"n".repeat(64)).is_ok());
        assert!(check_node_id(&"n".repeat(65)).is_err());
        assert!(check_node_id("").is_err());
        let upper = check_node_id("Lon-1").unwrap_err();
        assert!(upper.contains("'L'"), "{upper}");
        assert!(check_site("lon").is_ok());
        assert!(check_site("lon.1").is_err(), "a site is one DNS label");
        assert!(check_site("-lon").unwrap_err().contains("start and end"));
        assert!(check_site(&"s".repeat(33)).is_err());
    }

    /// What a request's Host may be. Cases with a gorouter equivalent cite its test; the
    /// rest follow RFC 1035/1123 (lengths, labels), RFC 3986 §3.2 (what delimits an
    /// authority) and RFC 9110 §7.2 (Host is `uri-host [ ":" port ]`).
    #[test]
    fn host_names_follow_the_edge_rules() {
        use HostError::*;
        let long_label = format!("{}.example.com", "a".repeat(63));
        let too_long_label = format!("{}.example.com", "a".repeat(64));
        // 4 labels of 63 plus 3 dots: 255 > 253.
        let too_long = ["b".repeat(63).as_str(); 4].join(".");
        let longest = format!(
            "{}.{}",
            "c".repeat(63),
            ["d".repeat(63).as_str(); 3].join(".")
        )[..253]
            .to_string();
        type Parsed = Result<(String, Option<u16>), HostError>;
        let ok = |name: &str, port: Option<u16>| Ok::<_, HostError>((name.to_string(), port));
        let cases: Vec<(&str, Parsed)> = vec![
            // proxy/proxy_test.go, It("responds with 404 for a not found host name with only
            // valid characters"): letters of both cases, digits, '-' and '.' are a host.
            (
                "abcdefghijklmnopqrstuvwxyz.0123456789-ABCDEFGHIJKLMNOPQRSTUVW.XYZ",
                ok(
                    "abcdefghijklmnopqrstuvwxyz.0123456789-abcdefghijklmnopqrstuvw.xyz",
                    None,
                ),
            ),
            // proxy/proxy_test.go, It("responds to host with malicious script with 400").
            (
                "<html><header><script>alert(document.cookie);</script></header><body/></html>",
                Err(Byte(b'<')),
            ),
            // handlers/lookup_test.go, Context("when the host is not set"): empty_host.
            ("", Err(Empty)),
            ("   ", Err(Empty)),
            (":443", Err(Empty)),
            // route/uris_test.go lower-cases route hosts; a request's host is matched the same.
            ("Shop.Apps.Example.COM", ok("shop.apps.example.com", None)),
            (
                "shop.apps.example.com:8443",
                ok("shop.apps.example.com", Some(8443)),
            ),
            // RFC 9110 §5.6.3: optional white space around a field value is not part of it.
            ("\tshop.example.com ", ok("shop.example.com", None)),
            // RFC 1034 §3.1: the absolute form names the same host.
            ("shop.example.com.", ok("shop.example.com", None)),
            ("shop.example.com.:80", ok("shop.example.com", Some(80))),
            ("10.0.0.1:8080", ok("10.0.0.1", Some(8080))),
            (
                "my_app.apps.example.com",
                ok("my_app.apps.example.com", None),
            ),
            ("xn--bcher-kva.example", ok("xn--bcher-kva.example", None)),
            ("localhost", ok("localhost", None)),
            (long_label.as_str(), ok(long_label.as_str(), None)),
            (longest.as_str(), ok(longest.as_str(), None)),
            // RFC 1035 §2.3.4: 63 per label, 255 octets on the wire.
            (too_long_label.as_str(), Err(LongLabel)),
            (too_long.as_str(), Err(TooLong)),
            // RFC 3986 §3.2: each of these ends or re-scopes an authority, so a route table
            // and a GoRouter (or a browser following `Location`) could read different hosts.
            ("x.evil.com?.wild.example.test", Err(Byte(b'?'))),
            ("x.evil.com#.wild.example.test", Err(Byte(b'#'))),
            ("evil.com@shop.example.com", Err(Byte(b'@'))),
            ("evil.com/.shop.example.com", Err(Byte(b'/'))),
            ("evil.com\\.shop.example.com", Err(Byte(b'\\'))),
            ("shop example.com", Err(Byte(b' '))),
            ("shop.example.com\r", Err(Byte(b'\r'))),
            ("shop%2eexample.com", Err(Byte(b'%'))),
            ("*.wild.example.test", Err(Byte(b'*'))),
            ("[::1]:8080", Err(Port)),
            ("[2001:db8::1]", Err(Port)),
            ("[v1.x]", Err(Byte(b'['))),
            ("bücher.example", Err(Byte(0xc3))),
            ("a..b.example.com", Err(EmptyLabel)),
            (".example.com", Err(EmptyLabel)),
            ("shop.example.com..", Err(EmptyLabel)),
            // RFC 3986 §3.2.3 allows an empty port; no client sends one, and one colon too
            // many (an unbracketed IPv6 address) is no host name.
            ("shop.example.com:", Err(Port)),
            ("shop.example.com:0", Err(Port)),
            ("shop.example.com:65536", Err(Port)),
            ("shop.example.com:008080", Err(Port)),
            ("shop.example.com:80:80", Err(Port)),
            ("::1", Err(Port)),
            ("shop.example.com:+80", Err(Port)),
        ];
        for (raw, want) in cases {
            let got = parse_host(raw).map(|h| (h.name.into_owned(), h.port));
            assert_eq!(got, want, "{raw:?}");
        }
    }
}
