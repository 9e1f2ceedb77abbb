//! The DNS front: authoritative answers for the configured zones, steering clients to a site.
//!
//! Owns:
//! - [`answer`](answer::answer) (`answer.rs`), the whole answering decision as a pure function
//!   of the table, the node's health and sync state, the client (resolver address or EDNS
//!   Client Subnet) and the question, with the ECS scope the answer holds for;
//! - [`wire`], one packet in, at most one out: decoding, the checks on malformed packets,
//!   the EDNS/ECS answer and the UDP size cap (sans-IO);
//! - [`serve`]: the UDP socket and TCP listener the binary bound, with the TCP idle timeout
//!   and connection limit, and the counters.
//!
//! Must never: answer for names outside its zones, write the table, panic on a packet, let a
//! TCP client hold a connection silent past [`TCP_IDLE_TIMEOUT`], or hold more than
//! [`MAX_TCP_CONNECTIONS`] of them.
//!
//! Route and site policies steer answers as they steer requests (see `answer.rs`).
//!
//! Not yet: DNSSEC, ANY beyond an empty NOERROR, a SOA serial that changes.

pub mod answer;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use answer::{
    Answer, ApexRecord, Client, DnsSettings, Nameserver, NodeStatus, Policy, QueryType, Rcode,
    Reason,
};

use crate::health::Health;
use crate::metrics::Metrics;
use crate::policy::PolicyStore;
use crate::table::Table;
use wire::{BadPacket, Reply, Transport, Zones};

/// How long a TCP client may stay silent (between queries, or inside one) before its
/// connection is closed.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most TCP connections open at once; more are closed on accept and counted.
pub const MAX_TCP_CONNECTIONS: usize = 512;
/// Most tasks reading the UDP socket.
const MAX_UDP_WORKERS: usize = 4;
/// After a failed accept (out of file descriptors), wait this long before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why a TCP connection was closed by the server (`grouter_dns_tcp_cut_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpCut {
    /// [`MAX_TCP_CONNECTIONS`] were open.
    Limit,
    /// Silent past [`TCP_IDLE_TIMEOUT`].
    Timeout,
}

impl TcpCut {
    /// Every reason, for metrics.
    pub const ALL: [TcpCut; 2] = [TcpCut::Limit, TcpCut::Timeout];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            TcpCut::Limit => "limit",
            TcpCut::Timeout => "timeout",
        }
    }
}

/// The DNS front's counters: `grouter_dns_queries_total{type,rcode}`,
/// `grouter_dns_steering_total{reason}`, `grouter_dns_bad_packets_total{reason}`,
/// `grouter_dns_truncated_total` and `grouter_dns_tcp_cut_total{reason}`.
#[derive(Debug)]
pub struct DnsMetrics {
    queries: Family<Vec<(String, String)>, Counter>,
    steering: [Counter; Reason::ALL.len()],
    bad: [Counter; BadPacket::ALL.len()],
    truncated: Counter,
    tcp_cut: [Counter; TcpCut::ALL.len()],
}

impl DnsMetrics {
    /// The counters, registered in `metrics` (the reasons at zero).
    pub fn new(metrics: &Metrics) -> DnsMetrics {
        let queries = Family::default();
        metrics.register(
            "dns_queries",
            "DNS queries answered, by query type and response code",
            queries.clone(),
        );
        let steering = metrics.reason_counters(
            "dns_steering",
            "DNS answers for app hosts, by why they name the sites they do",
            Reason::ALL.map(Reason::as_str),
        );
        let bad = metrics.reason_counters(
            "dns_bad_packets",
            "DNS packets malformed or unexpected (dropped, or answered FORMERR), by reason",
            BadPacket::ALL.map(BadPacket::as_str),
        );
        let truncated = Counter::default();
        metrics.register(
            "dns_truncated",
            "UDP answers sent truncated (TC) because they exceed the client's buffer or 1232 bytes",
            truncated.clone(),
        );
        let tcp_cut = metrics.reason_counters(
            "dns_tcp_cut",
            "DNS TCP connections closed by the server, by reason",
            TcpCut::ALL.map(TcpCut::as_str),
        );
        DnsMetrics {
            queries,
            steering,
            bad,
            truncated,
            tcp_cut,
        }
    }

    /// Count what one packet got.
    fn count(&self, r: &Reply) {
        if let Some(c) = r.bad.and_then(|b| self.bad.get(b as usize)) {
            c.inc();
        }
        if r.bytes.is_some() {
            // The label set is small: types and codes are bounded enumerations.
            self.queries
                .get_or_create(&vec![
                    ("type".to_string(), r.qtype.to_string()),
                    ("rcode".to_string(), rcode_label(r.rcode).to_string()),
                ])
                .inc();
        }
        if let Some(c) = r.reason.and_then(|w| self.steering.get(w as usize)) {
            c.inc();
        }
        if r.truncated {
            self.truncated.inc();
        }
    }

    fn count_cut(&self, why: TcpCut) {
        if let Some(c) = self.tcp_cut.get(why as usize) {
            c.inc();
        }
    }
}

/// The `rcode` label: a fixed, small set.
fn rcode_label(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "noerror",
        ResponseCode::FormErr => "formerr",
        ResponseCode::ServFail => "servfail",
        ResponseCode::NXDomain => "nxdomain",
        ResponseCode::NotImp => "notimp",
        ResponseCode::Refused => "refused",
        ResponseCode::BADVERS => "badvers",
        _ => "other",
    }
}

/// What the DNS front reads and counts.
#[derive(Debug)]
pub struct Front {
    /// The merged route table.
    pub table: Arc<Table>,
    /// This node's sync state and health.
    pub health: Arc<Health>,
    /// The front's counters.
    pub metrics: Arc<DnsMetrics>,
    /// The route and site policies in force, and the sites' facts.
    pub policies: Arc<PolicyStore>,
}

/// Errors of the DNS front.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The server stopped with an error.
    #[error("dns server: {0}")]
    Server(String),
}

/// What every serving task shares.
#[derive(Debug)]
struct Shared {
    front: Front,
    settings: DnsSettings,
}

impl Shared {
    /// Answer and count one packet.
    fn respond(&self, packet: &[u8], transport: Transport, src: SocketAddr) -> Reply {
        let policies = self.front.policies.active();
        let facts = policies.as_ref().map(|_| self.front.policies.facts());
        let zones = Zones {
            table: &self.front.table,
            settings: &self.settings,
            status: NodeStatus {
                sync: self.front.health.sync(),
                healthy: self.front.health.can_serve(),
            },
            policy: policies
                .as_deref()
                .zip(facts.as_deref())
                .map(|(policies, facts)| Policy { policies, facts }),
        };
        let reply = wire::respond(zones, packet, transport, src.ip().to_canonical());
        self.front.metrics.count(&reply);
        if let Some(bad) = reply.bad {
            debug!(%src, reason = bad.as_str(), "dns: bad packet");
        }
        reply
    }
}

/// Serve `[dns]` on the bound UDP socket and TCP listener until `shutdown`.
pub async fn serve(
    settings: DnsSettings,
    state: Front,
    udp: UdpSocket,
    tcp: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), DnsError> {
    let addrs = (udp.local_addr().ok(), tcp.local_addr().ok());
    let shared = Arc::new(Shared {
        front: state,
        settings,
    });
    let mut tasks = tokio::task::JoinSet::new();
    let udp = Arc::new(udp);
    let workers = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, MAX_UDP_WORKERS);
    for _ in 0..workers {
        tasks.spawn(serve_udp(shared.clone(), udp.clone(), shutdown.clone()));
    }
    tasks.spawn(serve_tcp(shared.clone(), tcp, shutdown.clone()));
    info!(udp = ?addrs.0, tcp = ?addrs.1, udp_workers = workers, "dns serving");
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done
            && !shutdown.is_cancelled()
        {
            shutdown.cancel();
            return Err(DnsError::Server(e.to_string()));
        }
    }
    Ok(())
}

/// One task reading the shared UDP socket: every datagram is answered in place.
async fn serve_udp(shared: Arc<Shared>, sock: Arc<UdpSocket>, shutdown: CancellationToken) {
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    loop {
        let (n, src) = tokio::select! {
            () = shutdown.cancelled() => return,
            got = sock.recv_from(&mut buf) => match got {
                Ok(got) => got,
                Err(e) => {
                    debug!(error = %e, "dns: udp receive failed");
                    continue;
                }
            },
        };
        let Some(packet) = buf.get(..n) else {
            continue;
        };
        let reply = shared.respond(packet, Transport::Udp, src);
        if let Some(bytes) = reply.bytes
            && let Err(e) = sock.send_to(&bytes, src).await
        {
            debug!(%src, error = %e, "dns: udp send failed");
        }
    }
}

/// Accept TCP connections, each served by its own task, up to [`MAX_TCP_CONNECTIONS`].
async fn serve_tcp(shared: Arc<Shared>, listener: TcpListener, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            got = listener.accept() => match got {
                Ok(got) => got,
                Err(e) => {
                    warn!(error = %e, "dns: tcp accept failed");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shared.front.metrics.count_cut(TcpCut::Limit);
            debug!(%peer, "dns: tcp connection limit reached; closing");
            drop(stream);
            continue;
        };
        let (s, stop) = (shared.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _slot = slot;
            tokio::select! {
                () = stop.cancelled() => {}
                () = serve_connection(&s, stream, peer) => {}
            }
        });
    }
}

/// Queries on one TCP connection, each framed by a two-byte length (RFC 1035 §4.2.2),
/// answered in order until the client closes, sends garbage, or stays silent too long.
async fn serve_connection(shared: &Shared, mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let cut = || shared.front.metrics.count_cut(TcpCut::Timeout);
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut len)).await {
            Err(_) => return cut(),
            Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
        }
        let mut packet = vec![0u8; usize::from(u16::from_be_bytes(len))];
        match tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut packet)).await {
            Err(_) => return cut(),
            Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
        }
        let reply = shared.respond(&packet, Transport::Tcp, peer);
        let Some(bytes) = reply.bytes else {
            // Nothing to say (a response, or less than a header): the stream cannot be
            // trusted to be in step any more.
            return;
        };
        let Ok(n) = u16::try_from(bytes.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&n.to_be_bytes());
        framed.extend_from_slice(&bytes);
        match tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.write_all(&framed)).await {
            Err(_) => return cut(),
            Ok(Err(_)) => return,
            Ok(Ok(())) => {}
        }
    }
}
