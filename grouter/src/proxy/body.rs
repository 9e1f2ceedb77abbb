//! The bodies the proxy passes on, and the request body that can go to another target
//! while unread ([`Reclaimable`]): a request whose attempt failed before a byte of its body
//! was read can be retried on the next target without buffering the body.
//!
//! A leaf: imports nothing of the crate.
//!
//! Must never: buffer a body whole.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use parking_lot::Mutex;

/// Errors of the bodies the proxy passes on.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bodies the proxy sends upstream and back.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A request body that knows whether anybody has read from it.
#[derive(Debug, Clone)]
pub struct Reclaimable(Arc<Mutex<ReclaimState>>);

#[derive(Debug)]
struct ReclaimState {
    body: ProxyBody,
    started: bool,
}

impl Reclaimable {
    /// Wrap a body.
    pub fn new(body: ProxyBody) -> Reclaimable {
        Reclaimable(Arc::new(Mutex::new(ReclaimState {
            body,
            started: false,
        })))
    }

    /// Whether no byte of the body was read yet (it can still go to another target).
    pub fn unread(&self) -> bool {
        !self.0.lock().started
    }
}

impl Body for Reclaimable {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut s = self.0.lock();
        s.started = true;
        Pin::new(&mut s.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.lock().body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.lock().body.size_hint()
    }
}

/// Box an incoming body.
pub fn boxed(body: Incoming) -> ProxyBody {
    body.map_err(BoxError::from).boxed()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}
