//! A reader for the plain JSON route emitters send: `router.register` and
//! `router.unregister` payloads with no escapes, read straight into a [`RegistryMessage`]
//! several times cheaper than serde's derived visitor, which is most of the learner's cost
//! per message.
//!
//! Owns: reading a payload that is plainly valid into the same [`RegistryMessage`] that
//! `serde_json::from_slice` would give, strings borrowed from the payload.
//!
//! Must never: accept a payload that serde_json refuses, or read one differently. Whatever
//! it is not sure of (an escape or a control character anywhere, whitespace included but
//! for spaces, a duplicate field, a number with a sign, fraction or exponent, a leading
//! zero, deep nesting, a struct written as an array, invalid UTF-8, anything after the
//! object) it gives up on with `None`, and the caller
//! asks serde_json, whose answer, error included, is the reference. It never allocates
//! beyond the `uris` vector and recurses at most [`MAX_DEPTH`] levels.

use std::borrow::Cow;

use super::{RegistryMessage, RegistryOptions, RegistryTags};

/// Nesting deeper than this (in keys we skip) is left to serde_json and its own limit.
const MAX_DEPTH: u32 = 32;

/// The message in `payload` if it is plainly valid; `None` when serde_json must decide.
pub(super) fn read(payload: &[u8]) -> Option<RegistryMessage<'_>> {
    let text = std::str::from_utf8(payload).ok()?;
    if !plain_bytes(payload) {
        return None;
    }
    let mut r = Reader {
        text,
        bytes: text.as_bytes(),
        at: 0,
    };
    let msg = r.message()?;
    r.space();
    (r.at == r.bytes.len()).then_some(msg)
}

/// No escape anywhere and no control character (so no whitespace but spaces: emitters send
/// none), checked once for the whole payload so that strings need only look for their
/// closing quote. Without an early exit, so that it compiles to vector compares.
fn plain_bytes(payload: &[u8]) -> bool {
    payload.iter().fold(0u8, |bad, &b| {
        bad | u8::from(b < 0x20) | u8::from(b == b'\\')
    }) == 0
}

struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

/// One bit per field of [`RegistryMessage`] (or of a nested struct): serde refuses a field
/// given twice, so we give up on it.
struct Seen(u16);

impl Seen {
    fn first(&mut self, bit: u16) -> Option<()> {
        let mask = 1 << bit;
        (self.0 & mask == 0).then(|| self.0 |= mask)
    }
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    /// Skip JSON whitespace and return the next byte, not taking it.
    fn next(&mut self) -> Option<u8> {
        self.space();
        self.peek()
    }

    fn space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// The next token, taken if it is `byte`.
    fn take(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then(|| self.at += 1)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.bytes[self.at..]
            .starts_with(word)
            .then(|| self.at += word.len())
    }

    /// `null`, taken; `false` (nothing taken) when the next value is something else.
    fn null(&mut self) -> bool {
        self.next() == Some(b'n') && self.literal(b"null").is_some()
    }

    /// A string, borrowed from the payload ([`plain_bytes`] holds: it has no escape and no
    /// control character, so it ends at the next quote).
    fn string(&mut self) -> Option<&'a str> {
        if self.next()? != b'"' {
            return None;
        }
        let start = self.at + 1;
        let len = memchr::memchr(b'"', &self.bytes[start..])?;
        self.at = start + len + 1;
        // Quotes are ASCII, so both ends are character boundaries of the valid UTF-8.
        self.text.get(start..start + len)
    }

    fn opt_str(&mut self) -> Option<Option<Cow<'a, str>>> {
        if self.null() {
            return Some(None);
        }
        Some(Some(Cow::Borrowed(self.string()?)))
    }

    /// A non-negative integer without sign, fraction, exponent or leading zero, whose
    /// digits fit `max`.
    fn unsigned(&mut self, max: u64) -> Option<u64> {
        self.space();
        let digits = self.bytes[self.at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let text = &self.bytes[self.at..self.at + digits];
        if digits == 0 || (digits > 1 && text[0] == b'0') || digits > 19 {
            return None;
        }
        if let Some(b'.' | b'e' | b'E') = self.bytes.get(self.at + digits) {
            return None;
        }
        let value = text.iter().try_fold(0u64, |v, &d| {
            v.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })?;
        self.at += digits;
        (value <= max).then_some(value)
    }

    fn opt_u16(&mut self) -> Option<Option<u16>> {
        if self.null() {
            return Some(None);
        }
        let v = self.unsigned(u64::from(u16::MAX))?;
        Some(Some(u16::try_from(v).ok()?))
    }

    fn opt_i64(&mut self) -> Option<Option<i64>> {
        if self.null() {
            return Some(None);
        }
        // serde_json reads `-0` as a float: negative numbers are left to it.
        let v = self.unsigned(i64::MAX as u64)?;
        Some(Some(i64::try_from(v).ok()?))
    }

    /// An object whose keys go to `field` one by one, which must take the value.
    fn object(&mut self, mut field: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.take(b'{')?;
        if self.next()? == b'}' {
            self.at += 1;
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.take(b':')?;
            field(self, key)?;
            match self.next()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An array whose elements `item` reads one by one.
    fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.take(b'[')?;
        if self.next()? == b']' {
            self.at += 1;
            return Some(());
        }
        loop {
            item(self)?;
            match self.next()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Any value, checked and not kept (serde's `IgnoredAny` for unknown keys).
    fn skip(&mut self, depth: u32) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.next()? {
            b'"' => self.string().map(drop),
            b'{' => self.object(|r, _| r.skip(depth + 1)),
            b'[' => self.array(|r| r.skip(depth + 1)),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'0'..=b'9' => self.unsigned(u64::MAX).map(drop),
            _ => None,
        }
    }

    fn message(&mut self) -> Option<RegistryMessage<'a>> {
        let mut m = RegistryMessage::default();
        let mut seen = Seen(0);
        self.object(|r, key| {
            match key {
                "host" => {
                    seen.first(0)?;
                    m.host = r.opt_str()?;
                }
                "port" => {
                    seen.first(1)?;
                    m.port = r.opt_u16()?;
                }
                "tls_port" => {
                    seen.first(2)?;
                    m.tls_port = r.opt_u16()?;
                }
                "uris" => {
                    seen.first(3)?;
                    m.uris = r.uris()?;
                }
                "app" => {
                    seen.first(4)?;
                    m.app = r.opt_str()?;
                }
                "private_instance_id" => {
                    seen.first(5)?;
                    m.private_instance_id = r.opt_str()?;
                }
                "server_cert_domain_san" => {
                    seen.first(6)?;
                    m.server_cert_domain_san = r.opt_str()?;
                }
                "route_service_url" => {
                    seen.first(7)?;
                    m.route_service_url = r.opt_str()?;
                }
                "tags" => {
                    seen.first(8)?;
                    m.tags = r.tags()?;
                }
                "isolation_segment" => {
                    seen.first(9)?;
                    m.isolation_segment = r.opt_str()?;
                }
                "stale_threshold_in_seconds" => {
                    seen.first(10)?;
                    m.stale_threshold_in_seconds = r.opt_i64()?;
                }
                "options" => {
                    seen.first(11)?;
                    m.options = r.options()?;
                }
                _ => r.skip(0)?,
            };
            Some(())
        })?;
        Some(m)
    }

    fn uris(&mut self) -> Option<Option<Vec<Cow<'a, str>>>> {
        if self.null() {
            return Some(None);
        }
        let mut uris = Vec::new();
        self.array(|r| {
            uris.push(Cow::Borrowed(r.string()?));
            Some(())
        })?;
        Some(Some(uris))
    }

    /// `null`, or an object whose keys named in `names` hold strings (or `null`) and whose
    /// other keys are skipped: the shape of both `tags` and `options`.
    fn strings<const N: usize>(
        &mut self,
        names: [&str; N],
    ) -> Option<Option<[Option<Cow<'a, str>>; N]>> {
        if self.null() {
            return Some(None);
        }
        let mut values = [const { None }; N];
        let mut seen = Seen(0);
        self.object(|r, key| {
            match names.iter().position(|n| *n == key) {
                Some(i) => {
                    seen.first(u16::try_from(i).ok()?)?;
                    values[i] = r.opt_str()?;
                }
                None => r.skip(1)?,
            }
            Some(())
        })?;
        Some(Some(values))
    }

    fn tags(&mut self) -> Option<Option<RegistryTags<'a>>> {
        let tags = self.strings(["app_name", "organization_name", "space_name"])?;
        Some(
            tags.map(|[app_name, organization_name, space_name]| RegistryTags {
                app_name,
                organization_name,
                space_name,
            }),
        )
    }

    fn options(&mut self) -> Option<Option<RegistryOptions<'a>>> {
        let options = self.strings(["loadbalancing"])?;
        Some(options.map(|[loadbalancing]| RegistryOptions { loadbalancing }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// serde_json's reading, the reference.
    fn serde(payload: &[u8]) -> Option<RegistryMessage<'_>> {
        serde_json::from_slice(payload).ok()
    }

    /// The property: whatever this reader reads, serde_json reads the same; strings it
    /// returns are borrowed.
    fn agrees(payload: &[u8]) -> bool {
        match read(payload) {
            None => false,
            Some(plain) => {
                let reference = serde(payload);
                assert_eq!(
                    Some(&plain),
                    reference.as_ref(),
                    "{:?}",
                    String::from_utf8_lossy(payload)
                );
                true
            }
        }
    }

    /// As route-emitter sends it (Go's encoding/json: no whitespace), with every kind of
    /// value in keys GRouter skips.
    const EMITTER: &str = concat!(
        r#"{"host":"10.0.16.21","port":61012,"tls_port":61014,"protocol":"http1","#,
        r#""uris":["shop.apps.example.com","shop.apps.example.com/api"],"app":"5e1c0b7a","#,
        r#""private_instance_id":"8f3a","private_instance_index":"0","#,
        r#""server_cert_domain_san":"8f3a","availability_zone":"z1","#,
        r#""endpoint_updated_at_ns":1714380000000000000,"stale_threshold_in_seconds":30,"#,
        r#""isolation_segment":"seg","route_service_url":null,"tags":{"component":"#,
        r#""route-emitter","app_name":"shop","organization_name":"acme","#,
        r#""space_name":"prod","n":[1,{"a":true}]},"options":{"loadbalancing":"#,
        r#""least-connection","hash_balance":"1.2"},"unknown":[1,2,false,null,[]],"e":{}}"#
    );

    #[test]
    fn reads_a_route_emitter_message_as_serde_does() {
        assert!(agrees(EMITTER.as_bytes()));
        let m = read(EMITTER.as_bytes()).unwrap();
        assert!(matches!(m.host, Some(Cow::Borrowed("10.0.16.21"))));
        assert_eq!((m.port, m.tls_port), (Some(61012), Some(61014)));
        assert_eq!(m.stale_threshold_in_seconds, Some(30));
        assert_eq!(
            m.options.unwrap().loadbalancing.as_deref(),
            Some("least-connection")
        );
        for plain in [
            r#"{}"#,
            r#" { "host" : null , "uris" : null , "tags" : null , "options" : null } "#,
            r#"{"port":0,"tls_port":65535,"uris":[],"tags":{},"stale_threshold_in_seconds":9223372036854775807}"#,
            "{\"host\":\"h\u{e9}\u{1F600}\"}",
        ] {
            assert!(agrees(plain.as_bytes()), "{plain}");
        }
    }

    #[test]
    fn leaves_to_serde_what_it_is_not_sure_of() {
        let cases: &[&str] = &[
            r#"{"host":"a\"b"}"#,         // an escape
            r#"{"ho\u0073t":"h"}"#,       // an escaped key
            "{\"host\":\"a\tb\"}",        // a control character
            "{\"host\":\"h\"}\n",         // whitespace other than spaces
            r#"{"host":"a","host":"b"}"#, // a field twice
            r#"{"tags":{"app_name":"a","app_name":"b"}}"#,
            r#"{"port":-1}"#,                       // a sign
            r#"{"stale_threshold_in_seconds":-0}"#, // serde reads -0 as a float
            r#"{"port":80.0}"#,                     // a fraction
            r#"{"port":8e1}"#,                      // an exponent
            r#"{"port":080}"#,                      // a leading zero
            r#"{"port":65536}"#,                    // out of range
            r#"{"stale_threshold_in_seconds":9223372036854775808}"#,
            r#"{"x":99999999999999999999}"#, // more digits than u64
            r#"{"x":1.5}"#,                  // a float in a skipped key
            r#"["h",1]"#,                    // a struct as an array
            r#"{"host":"h"} x"#,             // something after the object
            r#"{"host":"h",}"#,              // a trailing comma
            r#"{"uris":["a",]}"#,
            r#"{"host":"h""#, // truncated
            r#"{"host":"h"#,
            r#"{"x":nul}"#,
            r#"{"x":True}"#,
            r#"{"port":"80"}"#, // wrong type
            r#"{"uris":[1]}"#,
            r#"{"tags":"x"}"#,
            "",
            "null",
        ];
        for case in cases {
            assert!(read(case.as_bytes()).is_none(), "{case}");
        }
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(40), "]".repeat(40));
        assert!(read(deep.as_bytes()).is_none());
        assert!(serde(deep.as_bytes()).is_some(), "serde decides it");
        assert!(read(b"{\"host\":\"\xff\"}").is_none(), "invalid UTF-8");
    }

    /// Every byte of a real message changed, dropped or doubled, and random splices: the
    /// reader either gives up or agrees with serde_json.
    #[test]
    fn mutated_messages_are_read_as_serde_reads_them_or_left_to_it() {
        let base = EMITTER.as_bytes();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        const SPECIAL: &[u8] = b"{}[]\",:\\ 0123456789-.eEtrufalsn\t\x01\xc3\xa9";
        let (mut read_by_us, mut total) = (0, 0);
        for i in 0..base.len() {
            for edit in 0..4 {
                let mut m = base.to_vec();
                match edit {
                    0 => {
                        m.remove(i);
                    }
                    1 => m.insert(i, base[i]),
                    _ => m[i] = SPECIAL[(rand() as usize) % SPECIAL.len()],
                }
                total += 1;
                read_by_us += usize::from(agrees(&m));
            }
        }
        for _ in 0..20_000 {
            let mut m = base.to_vec();
            for _ in 0..1 + rand() % 3 {
                let at = (rand() as usize) % m.len();
                m[at] = SPECIAL[(rand() as usize) % SPECIAL.len()];
            }
            total += 1;
            read_by_us += usize::from(agrees(&m));
        }
        // Most edits land in a string and leave the message plain: the fast path is taken.
        assert!(read_by_us * 4 > total, "{read_by_us} of {total}");
    }
}
