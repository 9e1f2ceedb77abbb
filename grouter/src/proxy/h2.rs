//! HTTP/2 client streams without a body, to this site's GoRouters, over HTTP/1.1 connections
//! that belong to the client connection ([`Streams`]). The request is written as bytes and
//! the response head parsed with httparse ([`super::wire`]): no client library, shared pool
//! or connection task per request. The response body streams straight from the GoRouter
//! connection, which rejoins the set when the body has ended exactly.
//!
//! One of the general path's upstream codecs (`super::server`'s `General` picks it);
//! requests with a body, upgrades and other sites go the other ways.
//!
//! Must never: put a connection back before its response ended, keep more than [`MAX_IDLE`]
//! idle connections per client connection, or hold the set's lock across an `.await`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, SizeHint};
use parking_lot::Mutex;

use super::body::{self, BoxError, ProxyBody};
use super::error::{AttemptError, AttemptKind};
use super::wire::{
    Chunked, Framing, Part, READ_CHUNK, Upstream, connect, response_head, round_trip,
};

/// Idle GoRouter connections one client connection keeps.
const MAX_IDLE: usize = 64;
/// Response bodies up to this size are copied out of the connection's read buffer.
const SMALL_BODY: usize = 4096;

/// The idle GoRouter connections of one HTTP/2 client connection.
#[derive(Debug, Default, Clone)]
pub(super) struct Streams(Arc<Mutex<Vec<Upstream>>>);

impl Streams {
    /// An idle connection to GoRouter `router` that is still open.
    fn take(&self, router: usize) -> Option<Upstream> {
        let mut idle = self.0.lock();
        while let Some(pos) = idle.iter().rposition(|u| u.router == router) {
            let up = idle.swap_remove(pos);
            if up.open_and_quiet() {
                return Some(up);
            }
        }
        None
    }

    fn put(&self, up: Upstream) {
        let mut idle = self.0.lock();
        if idle.len() < MAX_IDLE {
            idle.push(up);
        }
    }
}

/// Send a bodiless request (`head`, from [`super::headers::request_head`]) to GoRouter `router` at `addr`
/// on one of `streams`' idle connections (or a new one, always when `fresh`), and return
/// its response. A failure before anything came back on an idle connection is
/// [`AttemptKind::IdleClosed`]: the forwarder sends it again, fresh.
pub(super) async fn send(
    streams: &Streams,
    router: usize,
    addr: &str,
    head: &[u8],
    head_method: bool,
    fresh: bool,
) -> Result<Response<ProxyBody>, AttemptError> {
    let idle = if fresh { None } else { streams.take(router) };
    let (mut up, reused) = match idle {
        Some(up) => (up, true),
        None => (
            Upstream {
                router,
                tcp: connect(addr)
                    .await
                    .map_err(|e| AttemptError::new(AttemptKind::Connect, e))?,
                buf: BytesMut::with_capacity(READ_CHUNK),
            },
            false,
        ),
    };
    let parsed = exchange(&mut up, head, head_method, reused).await?;
    Ok(respond(up, parsed, streams))
}

/// A response head as parsed for the client.
struct Parsed {
    head: http::response::Parts,
    framing: Framing,
    upstream_close: bool,
}

/// Write `head` and read the response head into a header map (no hop-by-hop headers: HTTP/2
/// has its own framing).
async fn exchange(
    up: &mut Upstream,
    head: &[u8],
    head_method: bool,
    reused: bool,
) -> Result<Parsed, AttemptError> {
    let mut map = HeaderMap::new();
    let mut status = StatusCode::OK;
    let parsed = round_trip(up, head, reused, |buf| {
        map.clear();
        response_head(buf, head_method, false, |part| {
            match part {
                Part::Status(code, _) => status = StatusCode::from_u16(code).map_err(|_| ())?,
                Part::Header(name, value) => {
                    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| ())?;
                    map.append(name, HeaderValue::from_bytes(value).map_err(|_| ())?);
                }
            }
            Ok(())
        })
    })
    .await?;
    let mut parts = Response::new(()).into_parts().0;
    parts.status = status;
    parts.headers = map;
    Ok(Parsed {
        head: parts,
        framing: parsed.framing,
        upstream_close: parsed.upstream_close,
    })
}

/// The response for the client: whole when its body is already in, streaming otherwise.
fn respond(mut up: Upstream, parsed: Parsed, streams: &Streams) -> Response<ProxyBody> {
    let Parsed {
        head,
        framing,
        upstream_close,
    } = parsed;
    let keep = !upstream_close;
    let body = match framing {
        Framing::Empty => {
            if keep && up.buf.is_empty() {
                streams.put(up);
            }
            body::empty()
        }
        Framing::Length(n) if up.buf.len() as u64 == n => {
            // A small body is copied, so the connection keeps its read buffer.
            let data = if up.buf.len() <= SMALL_BODY {
                let data = Bytes::copy_from_slice(&up.buf);
                up.buf.clear();
                data
            } else {
                up.buf.split().freeze()
            };
            if keep {
                streams.put(up);
            }
            Full::new(data).map_err(|never| match never {}).boxed()
        }
        framing => BodyExt::boxed(Streaming {
            up: Some(up),
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunks: Chunked::default(),
            keep: keep && framing != Framing::UntilClose,
            streams: streams.clone(),
        }),
    };
    Response::from_parts(head, body)
}

/// A response body read from the GoRouter connection as the client takes it.
struct Streaming {
    /// `None` once the body has ended.
    up: Option<Upstream>,
    framing: Framing,
    /// `Length`: bytes still to come.
    left: u64,
    chunks: Chunked,
    /// The connection may carry another request after this body.
    keep: bool,
    streams: Streams,
}

impl Streaming {
    /// The body ended exactly here: the connection goes back to the set.
    fn finish(&mut self) {
        if let Some(up) = self.up.take()
            && self.keep
            && up.buf.is_empty()
        {
            self.streams.put(up);
        }
    }
}

impl Body for Streaming {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(up) = this.up.as_mut() else {
                return Poll::Ready(None);
            };
            if !up.buf.is_empty() {
                let data = match this.framing {
                    Framing::Length(_) => {
                        let take = usize::try_from(this.left)
                            .unwrap_or(usize::MAX)
                            .min(up.buf.len());
                        this.left -= take as u64;
                        up.buf.split_to(take).freeze()
                    }
                    Framing::Chunked => {
                        let mut data = BytesMut::new();
                        let Ok(used) = this.chunks.scan(&up.buf, |d| data.extend_from_slice(d))
                        else {
                            this.up = None;
                            return Poll::Ready(Some(Err("bad chunked framing".into())));
                        };
                        up.buf.advance(used);
                        data.freeze()
                    }
                    _ => up.buf.split().freeze(),
                };
                let ended = match this.framing {
                    Framing::Length(_) => this.left == 0,
                    Framing::Chunked => this.chunks.done(),
                    _ => false,
                };
                if ended {
                    this.finish();
                }
                if !data.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                if ended {
                    return Poll::Ready(None);
                }
                // Only framing was in the buffer (a chunk-size line): read on.
            }
            let Some(up) = this.up.as_mut() else {
                return Poll::Ready(None);
            };
            up.buf.reserve(READ_CHUNK);
            match up.tcp.try_read_buf(&mut up.buf) {
                Ok(0) if this.framing == Framing::UntilClose => {
                    this.up = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.up = None;
                    return Poll::Ready(Some(Err("the GoRouter closed mid-body".into())));
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    match up.tcp.poll_read_ready(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => {
                            this.up = None;
                            return Poll::Ready(Some(Err(e.into())));
                        }
                    }
                }
                Err(e) => {
                    this.up = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.up.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(_) => SizeHint::with_exact(self.left),
            _ => SizeHint::default(),
        }
    }
}
