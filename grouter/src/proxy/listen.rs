//! The listeners: accept (at most `proxy.max_connections` at once, plain and TLS together:
//! one more is closed at once and counted `over_limit`), TLS with ALPN (within
//! `proxy.tls_handshake_timeout_secs`, or cut and counted `handshake_timeout`), and the
//! connections peers hand over from the mesh. An HTTP/1.1 connection starts on the fast
//! path (`super::h1`); HTTP/2 (by ALPN, or from a peer) goes to hyper (`super::server`),
//! whose first request is due within the header timeout. Every client connection is a
//! [`SendGuard`]: one that takes no byte of its response for the idle timeout is reset.
//!
//! Must never: keep accepting after `shutdown`, end before the connections it accepted, or
//! let a connection wait unbounded for a handshake, a first request or a client that does
//! not read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::forward::Conn;
use super::server::serve_conn;
use super::{Proxy, h1};
use crate::limits::{Cut, SendGuard};

/// Serve plain HTTP on `listener` until `shutdown`, then drain.
pub async fn serve_http(proxy: Arc<Proxy>, listener: TcpListener, shutdown: CancellationToken) {
    serve(proxy, listener, None, shutdown).await;
}

/// Serve HTTPS (HTTP/1.1 and HTTP/2 by ALPN) on `listener` until `shutdown`, then drain.
pub async fn serve_https(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) {
    serve(
        proxy,
        listener,
        Some(tokio_rustls::TlsAcceptor::from(tls)),
        shutdown,
    )
    .await;
}

async fn serve(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let (scheme, gate) = match tls {
        Some(_) => ("https", proxy.edge.https.clone()),
        None => ("http", proxy.edge.http.clone()),
    };
    let timeouts = proxy.edge.timeouts;
    loop {
        let (tcp, client) = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(err) => {
                    warn!(%err, "proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Over the limit: closed at once (and counted), so the client hears of it and the
        // descriptors the rest of the node needs stay free.
        let Some(slot) = gate.admit() else {
            debug!(%client, "connection over proxy.max_connections closed");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        // A client that takes nothing of its response for the idle timeout is reset.
        let tcp = SendGuard::new(tcp, timeouts.idle, gate.stats());
        let (proxy, tls, shutdown) = (proxy.clone(), tls.clone(), shutdown.clone());
        tracker.spawn(async move {
            let _slot = slot;
            let conn = Conn::new(client, scheme, None);
            match tls {
                None => h1::serve(proxy, tcp, conn, shutdown).await,
                Some(acceptor) => {
                    match tokio::time::timeout(timeouts.tls_handshake, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let tls = stream.get_ref().1;
                            if tls.alpn_protocol() == Some(crate::tls::ACME_TLS_ALPN) {
                                // A TLS-ALPN-01 validation: the handshake was the answer.
                                let mut stream = stream;
                                let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
                                return;
                            }
                            let conn = conn.with_client_cert(tls.peer_certificates());
                            if tls.alpn_protocol() == Some(b"h2") {
                                let first_by = Instant::now() + timeouts.request_header;
                                serve_conn(proxy, stream, conn, shutdown, first_by).await;
                            } else {
                                h1::serve(proxy, stream, conn, shutdown).await;
                            }
                        }
                        Ok(Err(err)) => debug!(%client, %err, "tls handshake failed"),
                        Err(_) => {
                            debug!(%client, "tls handshake timed out");
                            proxy.edge.https.stats().cut(Cut::HandshakeTimeout);
                        }
                    }
                }
            }
        });
    }
    // Refuse new connections at once (load balancers see it), then let the open ones finish.
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// Serve requests that peers forward over the mesh, until `shutdown`.
pub async fn serve_peers(
    proxy: Arc<Proxy>,
    mut conns: tokio::sync::mpsc::Receiver<crate::mesh::PeerHttp>,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    loop {
        let peer = tokio::select! {
            () = shutdown.cancelled() => break,
            p = conns.recv() => match p {
                Some(p) => p,
                None => break,
            },
        };
        let client = peer
            .stream
            .get_ref()
            .0
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let conn = Conn::new(client, "https", Some(peer.peer.node_id.clone()));
        // Ends on shutdown or when the peer's certificate is revoked (the mesh cancels it).
        let stop = shutdown.child_token();
        let (revoked, linked) = (peer.cancel.clone(), stop.clone());
        tracker.spawn(async move {
            tokio::select! {
                () = revoked.cancelled() => linked.cancel(),
                () = linked.cancelled() => {}
            }
        });
        let (proxy, ended, slot) = (proxy.clone(), peer.cancel, peer.slot);
        tracker.spawn(async move {
            let _slot = slot; // the mesh listener's, until the connection ends
            let first_by = Instant::now() + proxy.edge.timeouts.request_header;
            serve_conn(proxy, peer.stream, conn, stop.clone(), first_by).await;
            stop.cancel();
            ended.cancel();
        });
    }
    tracker.close();
    tracker.wait().await;
}
