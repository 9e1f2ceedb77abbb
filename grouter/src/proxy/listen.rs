//! The listeners: accept (at most [`MAX_CONNECTIONS`] at once), TLS with ALPN, and the
//! connections peers hand over from the mesh. An HTTP/1.1 connection starts on the fast
//! path (`super::h1`); HTTP/2 (by ALPN, or from a peer) goes to hyper (`super::server`).
//!
//! Must never: keep accepting after `shutdown`, or end before the connections it accepted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::forward::Conn;
use super::server::serve_conn;
use super::{HEADER_READ_TIMEOUT, Proxy, h1};

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 20_000;

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
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let scheme = if tls.is_some() { "https" } else { "http" };
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
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
        let _ = tcp.set_nodelay(true);
        let (proxy, tls, shutdown) = (proxy.clone(), tls.clone(), shutdown.clone());
        tracker.spawn(async move {
            let _permit = permit;
            let conn = Conn::new(client, scheme, None);
            match tls {
                None => h1::serve(proxy, tcp, conn, shutdown).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let tls = stream.get_ref().1;
                            let conn = conn.with_client_cert(tls.peer_certificates());
                            if tls.alpn_protocol() == Some(b"h2") {
                                serve_conn(proxy, stream, conn, shutdown).await;
                            } else {
                                h1::serve(proxy, stream, conn, shutdown).await;
                            }
                        }
                        Ok(Err(err)) => debug!(%client, %err, "tls handshake failed"),
                        Err(_) => debug!(%client, "tls handshake timed out"),
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
        let (proxy, ended) = (proxy.clone(), peer.cancel);
        tracker.spawn(async move {
            serve_conn(proxy, peer.stream, conn, stop.clone()).await;
            stop.cancel();
            ended.cancel();
        });
    }
    tracker.close();
    tracker.wait().await;
}
