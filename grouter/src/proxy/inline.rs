//! The HTTP/2 streams of a client connection, run inside that connection's own task.
//!
//! hyper hands every HTTP/2 stream to an executor; the usual one spawns a runtime task per
//! stream. [`Inline`] keeps them instead, and [`Driven`] polls them together with the
//! connection: no task set-up and tear-down per request, and the connection flushes the
//! responses of all the streams that finished in one poll together. The price: a
//! connection's streams share one task, so they use one core at a time (as in HAProxy and
//! nginx, whose connections each live on one thread).
//!
//! Must never: let the connection end before its streams (a stream still sending a body
//! needs the connection polled), or poll a finished connection again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::stream::{FuturesUnordered, StreamExt};
use parking_lot::Mutex;

use super::body::BoxError;

type Stream = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Rounds of connection-then-streams in one poll while streams keep finishing.
const ROUNDS: u32 = 8;

/// hyper's executor for one connection: streams wait here until [`Driven`] takes them.
#[derive(Clone, Default)]
pub(super) struct Inline(Arc<Mutex<Vec<Stream>>>);

impl<F> hyper::rt::Executor<F> for Inline
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        self.0.lock().push(Box::pin(stream));
    }
}

/// A connection and its running streams: a future that is ready when the connection has
/// ended and every stream has finished.
pub(super) struct Driven<C> {
    conn: Pin<Box<C>>,
    inline: Inline,
    running: FuturesUnordered<Stream>,
    /// The connection's result, once it has ended.
    ended: Option<Ended>,
    /// A stream was ever handed over: the connection speaks HTTP/2.
    streamed: bool,
}

/// How a connection ended.
pub(super) type Ended = Result<(), BoxError>;

// No field is ever pinned through `Driven` (the connection is boxed).
impl<C> Unpin for Driven<C> {}

impl<C: Future<Output = Ended>> Driven<C> {
    /// `conn`, served with `inline` as its executor.
    pub(super) fn new(conn: C, inline: Inline) -> Self {
        Driven {
            conn: Box::pin(conn),
            inline,
            running: FuturesUnordered::new(),
            ended: None,
            streamed: false,
        }
    }

    /// Streams running (or handed over and not yet polled); `None` while none ever was,
    /// as on HTTP/1.1, which runs no streams. For the idle watchdog.
    pub(super) fn streams(&self) -> Option<usize> {
        let waiting = self.inline.0.lock().len();
        let n = self.running.len() + waiting;
        (self.streamed || n > 0).then_some(n)
    }

    /// The connection, while it has not ended (its streams may run on after it).
    pub(super) fn connection(&mut self) -> Option<Pin<&mut C>> {
        self.ended.is_none().then_some(self.conn.as_mut())
    }
}

impl<C: Future<Output = Ended>> Future for Driven<C> {
    type Output = Ended;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended> {
        let d = &mut *self;
        for round in 1.. {
            if d.ended.is_none()
                && let Poll::Ready(out) = d.conn.as_mut().poll(cx)
            {
                d.ended = Some(out);
            }
            {
                let mut handed = d.inline.0.lock();
                d.streamed |= !handed.is_empty();
                d.running.extend(handed.drain(..));
            }
            let mut finished = false;
            while let Poll::Ready(Some(())) = d.running.poll_next_unpin(cx) {
                finished = true;
            }
            // A stream that finished has queued its response's last frames: the connection
            // writes them now rather than a scheduler round later.
            if !finished || d.ended.is_some() {
                break;
            }
            if round == ROUNDS {
                // Busy: let the other connections run, and come back.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        if d.running.is_empty()
            && let Some(out) = d.ended.take()
        {
            return Poll::Ready(out);
        }
        Poll::Pending
    }
}
