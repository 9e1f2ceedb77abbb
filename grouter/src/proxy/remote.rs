//! Forwarding to other sites: HTTP over the mesh's mutual TLS to a node of the chosen site.
//!
//! Owns: one multiplexed HTTP/2 connection per remote node (opened on first use through the
//! mesh's dialer, re-opened when it breaks), HTTP/1.1 connections for upgrades (WebSocket
//! over HTTP/2 would need RFC 8441), the choice of node within a site (the one with the
//! lowest RTT among the live ones), and the liveness of those connections.
//!
//! The receiving node knows the request comes from a peer by the certificate on the
//! connection, and routes it only to its own GoRouters.
//!
//! Every connection is identity-checked: the certificate the dialled node presents must
//! name the node (and site) that was picked, or the connection is closed, counted in
//! `grouter_mesh_dial_identity_mismatch_total`, and the attempt fails as a connect error so
//! the next candidate is tried.
//!
//! Liveness (a node paused, a link that drops every packet: open connections that fall
//! silent rather than close): while a request waits for its response head, hyper sends an
//! HTTP/2 PING whenever the connection has read nothing for [`PING_AFTER`], and this module
//! declares the connection dead once nothing at all has been read for [`Liveness::silence`]
//! (the ping interval plus a timeout of four round trips, at least [`MIN_TIMEOUT`]) since
//! the later of the request's start and the last byte. The request then fails as
//! [`AttemptKind::Unresponsive`], so an idempotent one goes to the next site, and the node
//! is set aside ([`Quarantine`]) until a probe handshake with it succeeds. Dials are bounded
//! the same way; a dial that times out sets the node aside too.
//!
//! Must never: dial anything but the advertised mesh address of a live node, send a request
//! to a node other than the one picked, or leave a request waiting on a silent connection.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::{debug, info, warn};

use super::body::Reclaimable;
use super::error::{AttemptError, AttemptKind};
use crate::mesh::identity::MeshTls;
use crate::mesh::{DialError, Mesh};

/// A connection that has read nothing for this long while a request waits sends a PING.
pub const PING_AFTER: Duration = Duration::from_millis(250);
/// The shortest liveness timeout, whatever the measured RTT.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(500);
/// The longest: a link slower than this is treated as down.
const MAX_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a node set aside is probed.
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// A failed request on an open connection: cancelled before it was sent, the connection
/// closed or reset before a response (so an idempotent request may go again), or failed
/// otherwise after it was sent.
fn request_failed(addr: &str, e: hyper::Error) -> AttemptError {
    let classified = AttemptError::from_hyper(e, false);
    debug!(%addr, error = %classified, "request to a remote node failed");
    classified
}

fn connect_failed(addr: &str, e: impl std::fmt::Display) -> AttemptError {
    AttemptError::new(AttemptKind::Connect, format!("connect to {addr}: {e}"))
}

fn no_node(site: &str) -> AttemptError {
    AttemptError::new(AttemptKind::NoNode, format!("no live node of site {site}"))
}

/// How long a connection to one node may stay silent, from the RTT the mesh measured to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// hyper's keep-alive timeout: how long an answer to a PING may take.
    pub timeout: Duration,
}

impl Liveness {
    /// Four round trips, within [`MIN_TIMEOUT`]..=[`MAX_TIMEOUT`].
    pub fn for_rtt(rtt: Option<Duration>) -> Liveness {
        let timeout = rtt
            .map_or(MIN_TIMEOUT, |r| r.saturating_mul(4))
            .clamp(MIN_TIMEOUT, MAX_TIMEOUT);
        Liveness { timeout }
    }

    /// Silence after which a connection with a request waiting is dead: one ping interval
    /// for the PING to go out, then its timeout.
    pub fn silence(self) -> Duration {
        PING_AFTER + self.timeout
    }

    /// The most a dial (TCP and TLS: two round trips and the handshake's work) may take.
    pub fn dial(self) -> Duration {
        self.timeout.saturating_mul(2)
    }
}

/// Nodes set aside after they fell silent: skipped by [`Remotes::pick`] until a probe (a
/// fresh, identity-checked TLS handshake, at most every [`PROBE_EVERY`]) succeeds. Only a
/// handshake proves the path and the process answer: a node the mesh still hears over a
/// link it dialled itself may be unreachable the other way.
#[derive(Debug, Clone, Default)]
struct Quarantine(Arc<Mutex<HashMap<String, Aside>>>);

#[derive(Debug)]
struct Aside {
    /// When it was set aside, or last probed.
    probed: Instant,
    probing: bool,
}

impl Quarantine {
    fn add(&self, node: &str) {
        self.0.lock().insert(
            node.to_string(),
            Aside {
                probed: Instant::now(),
                probing: false,
            },
        );
    }

    /// Whether `node` is set aside; when a probe is due, claim it (`Some(true)`).
    fn check(&self, node: &str) -> (bool, bool) {
        let mut q = self.0.lock();
        let Some(a) = q.get_mut(node) else {
            return (false, false);
        };
        let due = !a.probing && a.probed.elapsed() >= PROBE_EVERY;
        if due {
            a.probing = true;
        }
        (true, due)
    }

    fn probed(&self, node: &str, answered: bool) {
        let mut q = self.0.lock();
        if answered {
            q.remove(node);
        } else if let Some(a) = q.get_mut(node) {
            a.probing = false;
            a.probed = Instant::now();
        }
    }
}

/// A stream that notes when it last read a byte (in microseconds since `base`).
#[derive(Debug)]
struct Watched<T> {
    inner: T,
    base: Instant,
    read_us: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let us = u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.read_us.store(us, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// One HTTP/2 connection to a node, and when it last read a byte.
#[derive(Debug, Clone)]
struct Conn {
    sender: SendRequest<Reclaimable>,
    base: Instant,
    read_us: Arc<AtomicU64>,
    liveness: Liveness,
}

impl Conn {
    fn last_read(&self) -> Instant {
        self.base + Duration::from_micros(self.read_us.load(Ordering::Relaxed))
    }

    /// Resolves once the connection has read nothing for its silence since `from` (or since
    /// its last read, if later).
    async fn fallen_silent(&self, from: Instant) {
        loop {
            let quiet_since = self.last_read().max(from);
            let due = quiet_since + self.liveness.silence();
            let now = Instant::now();
            if now >= due {
                return;
            }
            // Reads meanwhile move the deadline: look again when this one is due.
            tokio::time::sleep(due - now).await;
        }
    }
}

/// Connections to remote nodes.
#[derive(Debug)]
pub struct Remotes {
    mesh: Arc<Mesh>,
    dialer: Arc<dyn crate::mesh::Dialer>,
    h2: Arc<rustls::ClientConfig>,
    h1: Arc<rustls::ClientConfig>,
    conns: Mutex<HashMap<String, Conn>>,
    quarantine: Quarantine,
}

impl Remotes {
    /// Remote forwarding through `mesh`, dialling with `dialer`.
    pub fn new(mesh: Arc<Mesh>, tls: &MeshTls, dialer: Arc<dyn crate::mesh::Dialer>) -> Remotes {
        Remotes {
            h2: tls.client_with_alpn(b"h2"),
            h1: tls.client_with_alpn(b"http/1.1"),
            mesh,
            dialer,
            conns: Mutex::new(HashMap::new()),
            quarantine: Quarantine::default(),
        }
    }

    /// The live node of `site` to send to: connected peers by RTT first, then any live node
    /// with an address, leaving out nodes set aside after they fell silent (and probing
    /// those when due), unless `any` (the last resort) and every live node is set aside.
    /// `(node_id, address)`.
    fn pick(&self, site: &str, any: bool) -> Result<(String, String), AttemptError> {
        let nodes = self.mesh.site_nodes(site);
        if let Some(live) = nodes
            .iter()
            .find(|(node, addr)| !self.aside(node, site, addr))
        {
            return Ok(live.clone());
        }
        match nodes.into_iter().next() {
            None => Err(no_node(site)),
            Some(aside) if any => {
                debug!(node = %aside.0, "every node of the site set aside: trying one anyway");
                Ok(aside)
            }
            Some(_) => Err(AttemptError::new(
                AttemptKind::SetAside,
                format!("every live node of site {site} set aside"),
            )),
        }
    }

    /// Whether `node` is set aside; starts a probe of it when one is due.
    fn aside(&self, node: &str, site: &str, addr: &str) -> bool {
        let (aside, probe) = self.quarantine.check(node);
        if probe {
            let (mesh, dialer, tls, quarantine) = (
                self.mesh.clone(),
                self.dialer.clone(),
                self.h2.clone(),
                self.quarantine.clone(),
            );
            let (node, site, addr) = (node.to_string(), site.to_string(), addr.to_string());
            let dial = self.liveness(&node).dial();
            tokio::spawn(async move {
                let answered = mesh
                    .connect_node(dialer.as_ref(), &node, &site, &addr, tls, Some(dial))
                    .await
                    .is_ok();
                if answered {
                    info!(node = %node, "remote node answers again");
                }
                quarantine.probed(&node, answered);
            });
        }
        aside
    }

    fn liveness(&self, node: &str) -> Liveness {
        Liveness::for_rtt(self.mesh.rtt_to(node))
    }

    /// Set `node` aside and forget its connection: it fell silent.
    fn set_aside(&self, node: &str, why: &str) {
        self.conns.lock().remove(node);
        self.quarantine.add(node);
        warn!(node = %node, reason = %why, "remote node unresponsive; set aside until it answers a probe");
    }

    /// A TLS connection to `node` (of `site`) at `addr`, whose certificate names it, within
    /// the dial bound of `liveness`.
    async fn tls(
        &self,
        node: &str,
        site: &str,
        addr: &str,
        config: Arc<rustls::ClientConfig>,
        liveness: Liveness,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, AttemptError> {
        match self
            .mesh
            .connect_node(
                self.dialer.as_ref(),
                node,
                site,
                addr,
                config,
                Some(liveness.dial()),
            )
            .await
        {
            Ok(tls) => {
                // It answers: whatever set it aside is over.
                self.quarantine.probed(node, true);
                Ok(tls)
            }
            Err(e @ DialError::TimedOut(_)) => {
                self.set_aside(node, "dial timed out");
                Err(AttemptError::new(AttemptKind::Connect, e))
            }
            Err(e) => Err(AttemptError::new(AttemptKind::Connect, e)),
        }
    }

    async fn conn(&self, node: &str, site: &str, addr: &str) -> Result<Conn, AttemptError> {
        if let Some(c) = self
            .conns
            .lock()
            .get(node)
            .filter(|c| !c.sender.is_closed())
            .cloned()
        {
            return Ok(c);
        }
        let liveness = self.liveness(node);
        let tls = self
            .tls(node, site, addr, self.h2.clone(), liveness)
            .await?;
        let base = Instant::now();
        let read_us = Arc::new(AtomicU64::new(0));
        let io = TokioIo::new(Watched {
            inner: tls,
            base,
            read_us: read_us.clone(),
        });
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // PINGs only while a request waits; hyper closes the connection well after this
            // module has given up on it (a request waits at most `silence` from the later of
            // its start and the last read; hyper's PING goes out no earlier than that read).
            .keep_alive_interval(PING_AFTER)
            .keep_alive_timeout(liveness.silence().saturating_mul(2))
            .keep_alive_while_idle(false)
            .adaptive_window(true)
            .handshake(io)
            .await
            .map_err(|e| connect_failed(addr, e))?;
        let node_name = node.to_string();
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                debug!(node = %node_name, %err, "remote connection ended");
            }
        });
        let conn = Conn {
            sender,
            base,
            read_us,
            liveness,
        };
        self.conns.lock().insert(node.to_string(), conn.clone());
        Ok(conn)
    }

    /// Send `req` (absolute-form URI with the original host) to a node of `site` (`any`: even
    /// one set aside, when all are; [`Remotes::pick`]).
    pub async fn send(
        &self,
        site: &str,
        req: Request<Reclaimable>,
        any: bool,
    ) -> Result<(Response<Incoming>, String), AttemptError> {
        let (node, addr) = self.pick(site, any)?;
        let conn = self.conn(&node, site, &addr).await?;
        let mut sender = conn.sender.clone();
        let started = Instant::now();
        let exchange = async {
            if sender.ready().await.is_err() {
                self.conns.lock().remove(&node);
                return Err(connect_failed(&addr, "connection closed"));
            }
            match sender.send_request(req).await {
                Ok(resp) => Ok((resp, node.clone())),
                Err(e) if e.is_timeout() => {
                    // hyper's own keep-alive gave up first: the same verdict.
                    self.set_aside(&node, "keep-alive timed out");
                    Err(AttemptError::new(AttemptKind::Unresponsive, e))
                }
                Err(e) => {
                    if e.is_closed() || e.is_canceled() {
                        self.conns.lock().remove(&node);
                    }
                    Err(request_failed(&addr, e))
                }
            }
        };
        tokio::select! {
            done = exchange => done,
            () = conn.fallen_silent(started) => {
                let silence = conn.liveness.silence();
                self.set_aside(&node, "no answer to a ping");
                Err(AttemptError::new(
                    AttemptKind::Unresponsive,
                    format!("{node} at {addr}: nothing read for {silence:?}"),
                ))
            }
        }
    }

    /// Send an upgrade request (WebSocket) over a fresh HTTP/1.1 connection to a node of
    /// `site` (`any` as for [`Remotes::send`]).
    pub async fn send_upgrade(
        &self,
        site: &str,
        req: Request<Reclaimable>,
        any: bool,
    ) -> Result<(Response<Incoming>, String), AttemptError> {
        let (node, addr) = self.pick(site, any)?;
        let liveness = self.liveness(&node);
        let io = TokioIo::new(
            self.tls(&node, site, &addr, self.h1.clone(), liveness)
                .await?,
        );
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| connect_failed(&addr, e))?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| request_failed(&addr, e))?;
        Ok((resp, node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::TcpDialer;
    use crate::mesh::test_support::impostor;
    use crate::proxy::body;

    fn request() -> Request<Reclaimable> {
        Request::builder()
            .uri("http://shop.apps.example.com/")
            .body(Reclaimable::new(body::empty()))
            .unwrap()
    }

    #[test]
    fn liveness_follows_the_rtt_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(Liveness::for_rtt(None).timeout, MIN_TIMEOUT);
        assert_eq!(Liveness::for_rtt(Some(ms(1))).timeout, MIN_TIMEOUT);
        assert_eq!(Liveness::for_rtt(Some(ms(200))).timeout, ms(800));
        assert_eq!(
            Liveness::for_rtt(Some(Duration::from_secs(60))).timeout,
            MAX_TIMEOUT
        );
        // On a LAN-like link a waiting request learns of a silent peer within a second.
        assert!(Liveness::for_rtt(Some(ms(2))).silence() < Duration::from_secs(1));
        assert_eq!(Liveness::for_rtt(None).dial(), ms(1000));
    }

    #[test]
    fn a_node_set_aside_is_probed_once_at_a_time_and_back_only_when_it_answers() {
        let q = Quarantine::default();
        assert_eq!(q.check("b-1"), (false, false));
        q.add("b-1");
        // Not yet due: set aside, no probe.
        assert_eq!(q.check("b-1"), (true, false));
        q.0.lock().get_mut("b-1").unwrap().probed -= PROBE_EVERY;
        assert_eq!(q.check("b-1"), (true, true), "due: this caller probes");
        assert_eq!(q.check("b-1"), (true, false), "one probe at a time");
        q.probed("b-1", false);
        assert_eq!(
            q.check("b-1"),
            (true, false),
            "failed: the next probe waits"
        );
        q.0.lock().get_mut("b-1").unwrap().probed -= PROBE_EVERY;
        assert_eq!(q.check("b-1"), (true, true));
        q.probed("b-1", true);
        assert_eq!(q.check("b-1"), (false, false), "answered: back in use");
    }

    #[tokio::test]
    async fn a_remote_node_answering_with_another_identity_is_a_connect_error() {
        // nyc-1 is picked for site nyc; mal-1 answers at its address.
        let f = impostor(("nyc-1", "nyc")).await;
        let tls = f.mesh.tls().clone();
        let remotes = Remotes::new(f.mesh.clone(), &tls, Arc::new(TcpDialer::default()));
        assert_eq!(
            remotes.pick("nyc", false).unwrap(),
            ("nyc-1".into(), f.impostor.clone())
        );
        assert_eq!(
            remotes.pick("xyz", true).unwrap_err().kind(),
            AttemptKind::NoNode
        );
        // Set aside, it is skipped, and picked only as the last resort; an answer from
        // another identity does not bring it back.
        remotes.quarantine.add("nyc-1");
        let err = remotes.send("nyc", request(), false).await.unwrap_err();
        assert_eq!(err.kind(), AttemptKind::SetAside, "{err}");
        assert_eq!(
            remotes.pick("nyc", true).unwrap(),
            ("nyc-1".into(), f.impostor.clone())
        );
        let err = remotes.send("nyc", request(), true).await.unwrap_err();
        assert_eq!(err.kind(), AttemptKind::Connect, "{err}");
        assert!(err.to_string().contains("mal-1@mal"), "{err}");
        assert!(remotes.quarantine.check("nyc-1").0, "still set aside");
        remotes.quarantine.probed("nyc-1", true);

        let err = remotes.send("nyc", request(), false).await.unwrap_err();
        assert_eq!(err.kind(), AttemptKind::Connect, "{err}");
        let err = remotes
            .send_upgrade("nyc", request(), false)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), AttemptKind::Connect, "{err}");
        assert_eq!(f.mesh.peers().len(), 0);
        let metrics = f.mesh.metrics_for_test();
        assert_eq!(metrics.dial_identity_mismatch.get(), 3);
        // Nothing was kept for the next request.
        assert!(remotes.conns.lock().is_empty());

        // The node that is what it says passes the check.
        let f = impostor(("mal-1", "mal")).await;
        let tls = f.mesh.tls().clone();
        let remotes = Remotes::new(f.mesh.clone(), &tls, Arc::new(TcpDialer::default()));
        // Set aside earlier, a handshake that proves it is the node brings it back.
        remotes.quarantine.add("mal-1");
        assert!(
            remotes
                .tls(
                    "mal-1",
                    "mal",
                    &f.impostor,
                    remotes.h2.clone(),
                    Liveness::for_rtt(None)
                )
                .await
                .is_ok()
        );
        assert_eq!(remotes.quarantine.check("mal-1"), (false, false));
        // The right node id at the wrong site is not.
        assert!(
            remotes
                .tls(
                    "mal-1",
                    "lon",
                    &f.impostor,
                    remotes.h2.clone(),
                    Liveness::for_rtt(None)
                )
                .await
                .is_err()
        );
        assert_eq!(f.mesh.metrics_for_test().dial_identity_mismatch.get(), 1);
    }
}
