//! HTTP/1.1 on the wire to a GoRouter, without a client library: the connection, its
//! buffer, one round trip, and where a message ends (`Content-Length`, chunked framing,
//! hop-by-hop headers). Shared by the byte codecs ([`super::h1`]'s for HTTP/1.1 clients and
//! [`super::h2`] for HTTP/2 streams), which write requests and parse responses themselves.
//!
//! Must never: accept a framing it cannot delimit exactly.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use smallvec::SmallVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::error::{AttemptError, AttemptKind};
use super::headers::{Hop, MAX_HEADER_BYTES, hop_by_hop};

/// Connect timeout to a GoRouter (gorouter's own `endpoint_dial_timeout` is 5 s; ours is
/// to a router on the same site).
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Read buffer growth step.
pub(super) const READ_CHUNK: usize = 16 * 1024;
/// Headers per response parsed.
const MAX_HEADERS: usize = 100;

/// A response head, as far as forwarding it goes.
#[derive(Debug, Clone, Copy)]
pub(super) struct ResponseHead {
    pub(super) status: u16,
    pub(super) framing: Framing,
    /// The GoRouter will not take another request on this connection.
    pub(super) upstream_close: bool,
}

/// Write `request` and read up to the end of the final response head, which `parse` reads
/// (interim 1xx heads are skipped, as hyper's client does) and which is then consumed
/// from `up.buf`. `parse` returns `None` while the head is not whole. A failure before a
/// byte came back is [`AttemptKind::IdleClosed`] on a `reused` connection (the GoRouter
/// may have closed it while idle) and [`AttemptKind::Reset`] on a fresh one.
pub(super) async fn round_trip<T>(
    up: &mut Upstream,
    request: &[u8],
    reused: bool,
    mut parse: impl FnMut(&[u8]) -> Result<Option<(usize, Option<T>)>, ()>,
) -> Result<T, AttemptError> {
    let silent = if reused {
        AttemptKind::IdleClosed
    } else {
        AttemptKind::Reset
    };
    up.buf.clear();
    up.tcp
        .write_all(request)
        .await
        .map_err(|e| AttemptError::new(silent, e))?;
    let mut received = false;
    loop {
        up.buf.reserve(READ_CHUNK);
        match up.tcp.read_buf(&mut up.buf).await {
            Ok(0) => {
                let kind = if received {
                    AttemptKind::Request
                } else {
                    silent
                };
                return Err(AttemptError::new(
                    kind,
                    std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                ));
            }
            Ok(_) => received = true,
            Err(e) if !received => return Err(AttemptError::new(silent, e)),
            Err(e) => return Err(AttemptError::new(AttemptKind::Request, e)),
        }
        loop {
            match parse(&up.buf) {
                Ok(Some((len, None))) => up.buf.advance(len), // an interim 1xx
                Ok(Some((len, Some(head)))) => {
                    up.buf.advance(len);
                    return Ok(head);
                }
                Ok(None) if up.buf.len() < MAX_HEADER_BYTES => break,
                Ok(None) | Err(()) => {
                    return Err(AttemptError::new(
                        AttemptKind::Request,
                        "unusable response head",
                    ));
                }
            }
        }
    }
}

/// A part of a response head to pass on.
#[derive(Debug, Clone, Copy)]
pub(super) enum Part<'a> {
    /// Status code and reason.
    Status(u16, &'a str),
    Header(&'a str, &'a [u8]),
}

/// Parse the response head at the front of `buf`: its length, and `None` for an interim
/// 1xx. `emit` gets the status first, then every header to pass on: not the hop-by-hop
/// ones (those `Connection` names included), except `Transfer-Encoding` when `keep_te` (the
/// body then passes as it is framed), and not `Content-Length` beside chunked framing (RFC
/// 9112 §6.3). `Err`: a head not to pass on (a 101 to a request that asked for no upgrade,
/// a framing that cannot be delimited), or a part `emit` refused.
#[allow(clippy::type_complexity)]
pub(super) fn response_head(
    buf: &[u8],
    head_method: bool,
    keep_te: bool,
    mut emit: impl FnMut(Part<'_>) -> Result<(), ()>,
) -> Result<Option<(usize, Option<ResponseHead>)>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let (Some(version), Some(code)) = (resp.version, resp.code) else {
        return Err(());
    };
    // A status is three digits, the first 1 to 5 (RFC 9110 §15); httparse takes any three
    // digits, and `000` would go to the client as `HTTP/1.1 0`. hyper, on the general
    // path, refuses below 100 too (a 502 either way).
    if code == 101 || code < 100 {
        return Err(());
    }
    if (100..200).contains(&code) {
        return Ok(Some((len, None)));
    }
    // Framing first: it decides which headers pass.
    let (mut length, mut chunked) = (None, false);
    let mut upstream_close = version == 0;
    // Headers the Connection header names: hop-by-hop, dropped (RFC 9110 §7.6.1).
    let mut named: SmallVec<[&[u8]; 4]> = SmallVec::new();
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(h.value).ok_or(())?;
            if length.is_some_and(|l| l != n) {
                return Err(());
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Its last coding decides the framing.
            chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            if !chunked {
                return Err(());
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    upstream_close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    upstream_close = upstream_close && version != 0;
                } else if !token.is_empty() {
                    named.push(token);
                }
            }
        }
    }
    emit(Part::Status(code, resp.reason.unwrap_or("")))?;
    let mut length_sent = false;
    for h in resp.headers.iter() {
        let pass = match hop_by_hop(h.name) {
            Some(Hop::TransferEncoding) => keep_te,
            Some(Hop::Other) => false,
            None if named
                .iter()
                .any(|n| n.eq_ignore_ascii_case(h.name.as_bytes())) =>
            {
                // Framing headers stay whatever Connection says: they delimit the body.
                h.name.eq_ignore_ascii_case("content-length")
                    && !chunked
                    && !std::mem::replace(&mut length_sent, true)
            }
            None if h.name.eq_ignore_ascii_case("content-length") => {
                !chunked && !std::mem::replace(&mut length_sent, true)
            }
            None => true,
        };
        if pass {
            emit(Part::Header(h.name, h.value))?;
        }
    }
    let framing = if head_method || code == 204 || code == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    Ok(Some((
        len,
        Some(ResponseHead {
            status: code,
            framing,
            upstream_close,
        }),
    )))
}

/// An HTTP/1.1 connection to one GoRouter.
#[derive(Debug)]
pub(super) struct Upstream {
    /// Index into [`super::upstream::GoRouters::all`].
    pub(super) router: usize,
    pub(super) tcp: TcpStream,
    pub(super) buf: BytesMut,
}

impl Upstream {
    /// Whether nothing, not even a close, has come from the GoRouter since its last
    /// response. Costs no syscall while the socket is not readable.
    pub(super) fn open_and_quiet(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.tcp.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// How a response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Connect to a GoRouter within [`CONNECT_TIMEOUT`], with Nagle off.
pub(super) async fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// A `Content-Length` value: digits only, no sign, no list.
pub(super) fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Where a chunked body ends (RFC 9112 §7.1), found incrementally as bytes pass through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Chunked {
    /// Reading a chunk size; `digits` tells whether any hex digit was seen.
    #[default]
    SizeStart,
    Size {
        n: u64,
    },
    Extension {
        n: u64,
    },
    SizeLf {
        n: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

impl Chunked {
    pub(super) fn done(self) -> bool {
        self == Chunked::Done
    }

    /// Consume the bytes of `buf` that belong to the body, handing the chunks' data to
    /// `data`; stops at the body's end.
    pub(super) fn scan(&mut self, buf: &[u8], mut data: impl FnMut(&[u8])) -> Result<usize, ()> {
        let mut i = 0;
        while i < buf.len() && *self != Chunked::Done {
            let b = buf[i];
            *self = match *self {
                Chunked::SizeStart => Chunked::Size {
                    n: u64::from(hex(b).ok_or(())?),
                },
                Chunked::Size { n } => match hex(b) {
                    Some(d) => {
                        if n >> 56 != 0 {
                            return Err(());
                        }
                        Chunked::Size {
                            n: n * 16 + u64::from(d),
                        }
                    }
                    None if b == b';' || b == b' ' || b == b'\t' => Chunked::Extension { n },
                    None if b == b'\r' => Chunked::SizeLf { n },
                    None => return Err(()),
                },
                Chunked::Extension { n } => match b {
                    b'\r' => Chunked::SizeLf { n },
                    b'\n' => return Err(()),
                    _ => Chunked::Extension { n },
                },
                Chunked::SizeLf { n } if b == b'\n' => {
                    if n == 0 {
                        Chunked::TrailerStart
                    } else {
                        Chunked::Data { left: n }
                    }
                }
                Chunked::Data { left } => {
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(buf.len() - i);
                    data(&buf[i..i + take]);
                    i += take;
                    let left = left - take as u64;
                    *self = if left == 0 {
                        Chunked::DataCr
                    } else {
                        Chunked::Data { left }
                    };
                    continue;
                }
                Chunked::DataCr if b == b'\r' => Chunked::DataLf,
                Chunked::DataLf if b == b'\n' => Chunked::SizeStart,
                Chunked::TrailerStart if b == b'\r' => Chunked::EndLf,
                Chunked::TrailerStart | Chunked::TrailerLine if b != b'\r' && b != b'\n' => {
                    Chunked::TrailerLine
                }
                Chunked::TrailerLine if b == b'\r' => Chunked::TrailerLf,
                Chunked::TrailerLf if b == b'\n' => Chunked::TrailerStart,
                Chunked::EndLf if b == b'\n' => Chunked::Done,
                _ => return Err(()),
            };
            i += 1;
        }
        Ok(i)
    }
}

pub(super) fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";

    #[test]
    fn a_chunked_body_ends_exactly_where_its_framing_says() {
        // Whole, with the next message behind it: only the body is consumed.
        let mut c = Chunked::default();
        let mut whole = BODY.to_vec();
        whole.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(c.scan(&whole, |_| {}), Ok(BODY.len()));
        assert!(c.done());
        // Byte by byte: the same end, found only at the last byte.
        let mut c = Chunked::default();
        for (i, b) in BODY.iter().enumerate() {
            assert!(!c.done(), "done early at {i}");
            assert_eq!(c.scan(std::slice::from_ref(b), |_| {}), Ok(1));
        }
        assert!(c.done());
        // Without trailers, upper-case hex.
        let mut c = Chunked::default();
        let body = b"A\r\n0123456789\r\n0\r\n\r\n";
        assert_eq!(c.scan(body, |_| {}), Ok(body.len()));
        assert!(c.done());
    }

    #[test]
    fn a_broken_chunked_body_is_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloX",
            b"5\nhello",
            b"ffffffffffffffffff\r\n",
            b"0\r\nbad\nline\r\n",
        ] {
            let mut c = Chunked::default();
            assert_eq!(
                c.scan(bad, |_| {}),
                Err(()),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Found by the `http1_head` fuzz target: a GoRouter's `HTTP/1.0 000 K` went to the
    /// client as `HTTP/1.1 0 K`, which is no status line.
    #[test]
    fn a_status_below_100_is_refused() {
        for bad in [
            &b"HTTP/1.0 000 K\r\n\r\n"[..],
            b"HTTP/1.1 099 X\r\nContent-Length: 0\r\n\r\n",
        ] {
            let head = response_head(bad, false, true, |_| Ok(()));
            assert!(head.is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let ok = response_head(b"HTTP/1.1 599 X\r\n\r\n", false, true, |_| Ok(()));
        assert!(matches!(
            ok,
            Ok(Some((_, Some(ResponseHead { status: 599, .. }))))
        ));
    }

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b" 42 "), Some(42));
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b"1,1",
            b"0x10",
            b"99999999999999999999",
        ] {
            assert_eq!(
                parse_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
