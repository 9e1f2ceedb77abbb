//! Forwarding to other sites: HTTP over the mesh's mutual TLS to a node of the chosen site.
//!
//! Owns: one multiplexed HTTP/2 connection per remote node (opened on first use through the
//! mesh's dialer, re-opened when it breaks), HTTP/1.1 connections for upgrades (WebSocket
//! over HTTP/2 would need RFC 8441), and the choice of node within a site (the one with the
//! lowest RTT among the live ones).
//!
//! The receiving node knows the request comes from a peer by the certificate on the
//! connection, and routes it only to its own GoRouters.
//!
//! Every connection is identity-checked: the certificate the dialled node presents must
//! name the node (and site) that was picked, or the connection is closed, counted in
//! `grouter_mesh_dial_identity_mismatch_total`, and the attempt fails as a connect error so
//! the next candidate is tried.
//!
//! Must never: dial anything but the advertised mesh address of a live node, or send a
//! request to a node other than the one picked.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use tracing::debug;

use super::body::Reclaimable;
use super::error::{AttemptError, AttemptKind};
use crate::mesh::Mesh;
use crate::mesh::identity::MeshTls;

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

/// Connections to remote nodes.
#[derive(Debug)]
pub struct Remotes {
    mesh: Arc<Mesh>,
    dialer: Arc<dyn crate::mesh::Dialer>,
    h2: Arc<rustls::ClientConfig>,
    h1: Arc<rustls::ClientConfig>,
    conns: Mutex<HashMap<String, SendRequest<Reclaimable>>>,
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
        }
    }

    /// The live node of `site` to send to: connected peers by RTT first, then any live node
    /// with an address. `(node_id, address)`.
    fn pick(&self, site: &str) -> Option<(String, String)> {
        self.mesh.site_nodes(site).into_iter().next()
    }

    /// A TLS connection to `node` (of `site`) at `addr`, whose certificate names it.
    async fn tls(
        &self,
        node: &str,
        site: &str,
        addr: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>, AttemptError> {
        self.mesh
            .connect_node(self.dialer.as_ref(), node, site, addr, config)
            .await
            .map(TokioIo::new)
            .map_err(|e| AttemptError::new(AttemptKind::Connect, e))
    }

    async fn sender(
        &self,
        node: &str,
        site: &str,
        addr: &str,
    ) -> Result<SendRequest<Reclaimable>, AttemptError> {
        if let Some(s) = self
            .conns
            .lock()
            .get(node)
            .filter(|s| !s.is_closed())
            .cloned()
        {
            return Ok(s);
        }
        let io = self.tls(node, site, addr, self.h2.clone()).await?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(10))
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
        self.conns.lock().insert(node.to_string(), sender.clone());
        Ok(sender)
    }

    /// Send `req` (absolute-form URI with the original host) to a node of `site`.
    pub async fn send(
        &self,
        site: &str,
        req: Request<Reclaimable>,
    ) -> Result<(Response<Incoming>, String), AttemptError> {
        let (node, addr) = self.pick(site).ok_or_else(|| no_node(site))?;
        let mut sender = self.sender(&node, site, &addr).await?;
        if sender.ready().await.is_err() {
            self.conns.lock().remove(&node);
            return Err(connect_failed(&addr, "connection closed"));
        }
        match sender.send_request(req).await {
            Ok(resp) => Ok((resp, node)),
            Err(e) => {
                if e.is_closed() || e.is_canceled() {
                    self.conns.lock().remove(&node);
                }
                Err(request_failed(&addr, e))
            }
        }
    }

    /// Send an upgrade request (WebSocket) over a fresh HTTP/1.1 connection to a node of
    /// `site`.
    pub async fn send_upgrade(
        &self,
        site: &str,
        req: Request<Reclaimable>,
    ) -> Result<(Response<Incoming>, String), AttemptError> {
        let (node, addr) = self.pick(site).ok_or_else(|| no_node(site))?;
        let io = self.tls(&node, site, &addr, self.h1.clone()).await?;
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

    #[tokio::test]
    async fn a_remote_node_answering_with_another_identity_is_a_connect_error() {
        // nyc-1 is picked for site nyc; mal-1 answers at its address.
        let f = impostor(("nyc-1", "nyc")).await;
        let tls = f.mesh.tls().clone();
        let remotes = Remotes::new(f.mesh.clone(), &tls, Arc::new(TcpDialer));
        assert_eq!(
            remotes.pick("nyc"),
            Some(("nyc-1".into(), f.impostor.clone()))
        );

        let err = remotes.send("nyc", request()).await.unwrap_err();
        assert_eq!(err.kind(), AttemptKind::Connect, "{err}");
        assert!(err.to_string().contains("mal-1@mal"), "{err}");
        let err = remotes.send_upgrade("nyc", request()).await.unwrap_err();
        assert_eq!(err.kind(), AttemptKind::Connect, "{err}");
        assert_eq!(f.mesh.peers().len(), 0);
        let metrics = f.mesh.metrics_for_test();
        assert_eq!(metrics.dial_identity_mismatch.get(), 2);
        // Nothing was kept for the next request.
        assert!(remotes.conns.lock().is_empty());

        // The node that is what it says passes the check.
        let f = impostor(("mal-1", "mal")).await;
        let tls = f.mesh.tls().clone();
        let remotes = Remotes::new(f.mesh.clone(), &tls, Arc::new(TcpDialer));
        assert!(
            remotes
                .tls("mal-1", "mal", &f.impostor, remotes.h2.clone())
                .await
                .is_ok()
        );
        // The right node id at the wrong site is not.
        assert!(
            remotes
                .tls("mal-1", "lon", &f.impostor, remotes.h2.clone())
                .await
                .is_err()
        );
        assert_eq!(f.mesh.metrics_for_test().dial_identity_mismatch.get(), 1);
    }
}
