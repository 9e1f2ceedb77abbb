//! Cuttable links between the sites of real node processes: a TCP relay in front of each
//! node's mesh listener, which knows which site each connection comes from and applies
//! that pair of sites' state — up, cut, black-holed, or slow and lossy.
//!
//! A node advertises its relay's address (`mesh.advertise`), so every other node reaches it
//! — mesh sessions and proxied requests alike — only through the relay, and dials from an
//! address of its own site (`mesh.dial_from`, registered with [`Links::source`]), which is
//! how the relay tells the sites apart. A connection from an unregistered address belongs
//! to no site and is never cut.
//!
//! - **Cut**: live connections of the pair are closed and new ones closed at once (a
//!   link whose failure the peers see: a reset, a refused dial).
//! - **Black hole**: nothing moves between the pair, and nothing is closed: bytes wait,
//!   as TCP would retransmit them, and flow again after the heal; new connections are
//!   accepted and wait too. The peers see open, silent connections.
//! - **Slow**: every chunk is delayed by the latency; a share of them (the loss) by a
//!   further 200 ms, as a TCP retransmission would delay it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// What a lost segment costs: TCP's minimum retransmission timeout.
const RETRANSMIT: Duration = Duration::from_millis(200);
/// How often a waiting (black-holed) connection looks at its link again.
const RECHECK: Duration = Duration::from_millis(20);

/// The state of the link between two sites.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Link {
    /// Bytes flow.
    Up,
    /// Connections closed, new ones refused.
    Cut,
    /// Bytes wait; nothing closes.
    Holed,
    /// Every chunk `delay` late, a share `loss` (0..=1) of them [`RETRANSMIT`] later still.
    Slow {
        /// Added one-way latency.
        delay: Duration,
        /// Share of chunks delayed as if a segment was lost.
        loss: f64,
    },
}

/// The links of a set of sites.
#[derive(Debug, Clone, Default)]
pub struct Links {
    inner: Arc<State>,
}

#[derive(Debug, Default)]
struct State {
    sources: Mutex<HashMap<IpAddr, String>>,
    links: Mutex<HashMap<(String, String), Link>>,
    /// Live relayed connections: (from site, to site, abort).
    conns: Mutex<Vec<(String, String, AbortHandle)>>,
}

impl State {
    fn link(&self, a: &str, b: &str) -> Link {
        self.links
            .lock()
            .get(&pair(a, b))
            .copied()
            .unwrap_or(Link::Up)
    }
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

impl Links {
    /// Links with every pair up.
    pub fn new() -> Links {
        Links::default()
    }

    /// Connections from `ip` come from a node of `site`.
    pub fn source(&self, ip: IpAddr, site: &str) {
        self.inner.sources.lock().insert(ip, site.to_string());
    }

    /// Set the link between `a` and `b` (both directions). Cutting closes the pair's live
    /// connections.
    pub fn set(&self, a: &str, b: &str, link: Link) {
        self.inner.links.lock().insert(pair(a, b), link);
        if link == Link::Cut {
            let mut conns = self.inner.conns.lock();
            conns.retain(|(from, to, abort)| {
                let cut = pair(from, to) == pair(a, b);
                if cut {
                    abort.abort();
                }
                !cut && !abort.is_finished()
            });
        }
    }

    /// Start the node `builder` describes, of `site`, behind a relay of its own: it
    /// advertises the relay and dials from `from`, which is registered as `site`'s.
    pub async fn start_node(
        &self,
        builder: crate::NodeBuilder,
        site: &str,
        from: IpAddr,
    ) -> (crate::Node, Relay) {
        let relay = self.relay(site).await;
        self.source(from, site);
        let node = builder
            .mesh_option(&format!(
                "advertise = \"{}\"\ndial_from = \"{from}\"",
                relay.addr()
            ))
            .start()
            .await;
        relay.set_target(node.mesh_addr());
        (node, relay)
    }

    /// A relay in front of a node of `site`, forwarding nowhere until [`Relay::set_target`].
    pub async fn relay(&self, site: &str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let target = Arc::new(Mutex::new(None));
        let task = tokio::spawn(accept(
            listener,
            site.to_string(),
            self.inner.clone(),
            target.clone(),
        ));
        Relay { addr, target, task }
    }
}

/// A relay in front of one node; stops when dropped.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    task: JoinHandle<()>,
}

impl Relay {
    /// The address the node advertises and its peers dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Forward new connections to `target`, the node's real mesh listener (again after a
    /// restart moved it).
    pub fn set_target(&self, target: SocketAddr) {
        *self.target.lock() = Some(target);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(
    listener: TcpListener,
    to: String,
    state: Arc<State>,
    target: Arc<Mutex<Option<SocketAddr>>>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    while let Ok((inbound, peer)) = listener.accept().await {
        let from = state
            .sources
            .lock()
            .get(&peer.ip())
            .cloned()
            .unwrap_or_default();
        if !from.is_empty() && state.link(&from, &to) == Link::Cut {
            continue;
        }
        let Some(upstream) = *target.lock() else {
            continue;
        };
        let (state2, from2, to2) = (state.clone(), from.clone(), to.clone());
        let abort = tasks.spawn(async move {
            let Ok(upstream) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let (ri, wi) = inbound.into_split();
            let (ru, wu) = upstream.into_split();
            tokio::select! {
                () = pump(ri, wu, &state2, &from2, &to2) => {}
                () = pump(ru, wi, &state2, &from2, &to2) => {}
            }
        });
        if !from.is_empty() {
            state.conns.lock().push((from, to.clone(), abort));
        }
        while tasks.try_join_next().is_some() {}
    }
}

/// Copy `from` to `to` until either closes, as the link between the sites allows.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: &State,
    a: &str,
    b: &str,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // A black hole holds what is read next (TCP would keep retransmitting it).
        while !a.is_empty() && state.link(a, b) == Link::Holed {
            tokio::time::sleep(RECHECK).await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        loop {
            match if a.is_empty() {
                Link::Up
            } else {
                state.link(a, b)
            } {
                Link::Up => break,
                Link::Cut => return,
                Link::Holed => tokio::time::sleep(RECHECK).await,
                Link::Slow { delay, loss } => {
                    tokio::time::sleep(delay).await;
                    if fastrand::f64() < loss {
                        tokio::time::sleep(RETRANSMIT).await;
                    }
                    break;
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
