//! A misbehaving mesh peer: it holds a genuine certificate from the test's [`MeshCa`] and
//! speaks the wire protocol by hand, so a test can send a node any frame a compromised (or
//! merely buggy) member could.
//!
//! [`EvilPeer::dial`] connects to a node's mesh listener over the same mutual TLS as a real
//! node and exchanges hellos; afterwards the test sends what it likes ([`EvilPeer::send`],
//! [`EvilPeer::send_raw`], [`EvilPeer::send_bytes`]) and knows the node has read all of it
//! once [`EvilPeer::sync`] returns (a ping is answered only after every frame before it was
//! processed: a session reads its frames in order). A reader task answers the node's pings,
//! so the connection stays up as long as the test wants, and keeps every other frame for
//! [`EvilPeer::recv`]; the node's deltas carry its owners' seals and certificates, which is
//! how a test gets genuine frames of other nodes to replay or tamper with.
//!
//! [`EvilListener`] is the accepting side: a listener with a genuine certificate that counts
//! every TCP connection made to it, so a test can show that nothing dials an address an
//! attacker advertised.
//!
//! Nothing here sleeps to synchronise: waits are bounded by deadlines on events.

// Fixtures fail a test by panicking with a message; that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{BufMut as _, Bytes, BytesMut};
use futures::StreamExt as _;
use grouter::mesh::identity::{MESH_SERVER_NAME, MeshTls};
use grouter::mesh::trust::MeshTrust;
use grouter_protocol::mesh::{self as wire, frame::Body};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

use crate::MeshCa;

/// How long [`EvilPeer::recv`] and [`EvilPeer::sync`] wait by default.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// A genuine mesh identity held by the attacker: a certificate from the mesh CA for
/// `node_id@site`, in its own directory (`ca.pem`, `node.pem`, `node.key`).
#[derive(Debug)]
pub struct EvilIdentity {
    /// The node id the certificate names.
    pub node_id: String,
    /// The site the certificate names.
    pub site: String,
    dir: tempfile::TempDir,
}

impl EvilIdentity {
    /// Issue a certificate for `node_id@site` from `ca`.
    pub fn issue(ca: &MeshCa, node_id: &str, site: &str) -> EvilIdentity {
        EvilIdentity {
            node_id: node_id.to_string(),
            site: site.to_string(),
            dir: ca.issue(node_id, site),
        }
    }

    /// The directory holding `ca.pem`, `node.pem` and `node.key`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The mesh CA certificate.
    pub fn ca_pem(&self) -> std::path::PathBuf {
        self.dir().join("ca.pem")
    }

    /// The node certificate.
    pub fn cert_pem(&self) -> std::path::PathBuf {
        self.dir().join("node.pem")
    }

    /// The node key.
    pub fn key_pem(&self) -> std::path::PathBuf {
        self.dir().join("node.key")
    }

    /// The TLS configurations a real node with this certificate would use.
    pub fn tls(&self) -> MeshTls {
        crate::install_crypto();
        MeshTls::load(&self.ca_pem(), &self.cert_pem(), &self.key_pem())
            .expect("load the harness's own mesh certificate")
    }

    /// The certificate as DER, as a node record carries it (`PartitionDelta.owner_cert`).
    pub fn cert_der(&self) -> Vec<u8> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        CertificateDer::pem_file_iter(self.cert_pem())
            .expect("read node.pem")
            .next()
            .expect("a certificate in node.pem")
            .expect("valid PEM")
            .to_vec()
    }

    /// The hello a real node of this identity sends, at `generation`.
    pub fn hello(&self, generation: u64) -> wire::Hello {
        wire::Hello {
            protocol_version: wire::PROTOCOL_VERSION,
            node_id: self.node_id.clone(),
            site: self.site.clone(),
            generation,
        }
    }
}

/// Frames the node sent, in order, apart from the pings the reader answered itself.
#[derive(Debug)]
enum Incoming {
    Frame(Body),
    /// The stream ended (`None`: cleanly) or failed.
    Closed(Option<String>),
}

/// One mesh connection played by the attacker (see the module docs).
#[derive(Debug)]
pub struct EvilPeer {
    /// The node's hello.
    pub hello: wire::Hello,
    out: mpsc::UnboundedSender<Bytes>,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    /// Highest pong sequence number heard.
    pongs: watch::Receiver<u64>,
    /// Digests the node has sent so far.
    digests: watch::Receiver<u64>,
    /// Set once the connection has ended, either way.
    closed: watch::Receiver<bool>,
    next_seq: u64,
    /// Why the stream ended, once [`EvilPeer::recv`] saw it end (`None` inside: cleanly).
    pub ended: Option<Option<String>>,
    tasks: Vec<JoinHandle<()>>,
}

impl EvilPeer {
    /// Connect to the mesh listener at `addr` as `me`, say hello at generation 1 and wait
    /// for the node's hello.
    pub async fn dial(me: &EvilIdentity, addr: SocketAddr) -> EvilPeer {
        Self::dial_with_hello(me, addr, me.hello(1)).await
    }

    /// As [`EvilPeer::dial`], with a hello of the test's choosing.
    pub async fn dial_with_hello(
        me: &EvilIdentity,
        addr: SocketAddr,
        hello: wire::Hello,
    ) -> EvilPeer {
        let stream = connect_tls(me, addr).await.expect("mesh TLS handshake");
        Self::over(stream, hello).await
    }

    /// Run the attacker's end over an established stream: send `hello`, wait for the
    /// node's.
    pub async fn over<S>(stream: S, hello: wire::Hello) -> EvilPeer
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, mut write) = tokio::io::split(stream);
        let (out, mut out_rx) = mpsc::unbounded_channel::<Bytes>();
        let (in_tx, mut incoming) = mpsc::unbounded_channel::<Incoming>();
        let (pong_tx, pongs) = watch::channel(0u64);
        let (digest_tx, digests) = watch::channel(0u64);
        let (closed_tx, closed) = watch::channel(false);
        let closed_tx = Arc::new(closed_tx);

        let writer = {
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                while let Some(bytes) = out_rx.recv().await {
                    if write.write_all(&bytes).await.is_err() || write.flush().await.is_err() {
                        break;
                    }
                }
                let _ = write.shutdown().await;
                closed_tx.send_replace(true);
            })
        };
        let reader = {
            let out = out.clone();
            tokio::spawn(async move {
                let mut frames = FramedRead::new(read, codec());
                let end = loop {
                    let frame = match frames.next().await {
                        None => break None,
                        Some(Err(e)) => break Some(e.to_string()),
                        Some(Ok(f)) => f,
                    };
                    match wire::decode(&frame) {
                        Ok(Body::Ping(p)) => {
                            let _ = out.send(frame_bytes(&wire::encode(Body::Pong(wire::Pong {
                                seq: p.seq,
                            }))));
                        }
                        Ok(Body::Pong(p)) => {
                            pong_tx.send_modify(|s| *s = (*s).max(p.seq));
                        }
                        Ok(body) => {
                            if matches!(body, Body::Digest(_)) {
                                digest_tx.send_modify(|n| *n += 1);
                            }
                            let _ = in_tx.send(Incoming::Frame(body));
                        }
                        Err(e) => break Some(format!("undecodable frame from the node: {e}")),
                    }
                };
                let _ = in_tx.send(Incoming::Closed(end));
                closed_tx.send_replace(true);
            })
        };
        let _ = out.send(frame_bytes(&wire::encode(Body::Hello(hello))));
        let theirs = match tokio::time::timeout(DEADLINE, incoming.recv()).await {
            Ok(Some(Incoming::Frame(Body::Hello(h)))) => h,
            other => panic!("expected the node's hello, got {other:?}"),
        };
        EvilPeer {
            hello: theirs,
            out,
            incoming,
            pongs,
            digests,
            closed,
            next_seq: 1 << 32,
            ended: None,
            tasks: vec![writer, reader],
        }
    }

    /// Send one frame, length-prefixed as the protocol frames it.
    pub fn send(&self, body: Body) {
        self.send_raw(&wire::encode(body));
    }

    /// Send `payload` (any bytes) as one frame: a 4-byte big-endian length, then `payload`.
    pub fn send_raw(&self, payload: &[u8]) {
        let _ = self.out.send(frame_bytes(payload));
    }

    /// Write `bytes` to the stream exactly as given (no length prefix added), e.g. a length
    /// prefix that promises more than the frame cap.
    pub fn send_bytes(&self, bytes: &[u8]) {
        let _ = self.out.send(Bytes::copy_from_slice(bytes));
    }

    /// Send a ping and wait for its pong: the node has read and processed every frame sent
    /// before it. Panics when the connection closes first or after [`DEADLINE`].
    pub async fn sync(&mut self) {
        assert!(
            self.try_sync(DEADLINE).await,
            "the node did not answer a ping within {DEADLINE:?} (connection closed: {})",
            *self.closed.borrow()
        );
    }

    /// As [`EvilPeer::sync`], returning false instead of panicking when no pong comes within
    /// `timeout` (or the connection closes).
    pub async fn try_sync(&mut self, timeout: Duration) -> bool {
        self.next_seq += 1;
        let seq = self.next_seq;
        self.send(Body::Ping(wire::Ping {
            seq,
            rtts: Vec::new(),
        }));
        let mut pongs = self.pongs.clone();
        let mut closed = self.closed.clone();
        let answered = async {
            loop {
                if *pongs.borrow_and_update() >= seq {
                    return true;
                }
                if *closed.borrow_and_update() {
                    return false;
                }
                tokio::select! {
                    r = pongs.changed() => if r.is_err() { return *pongs.borrow() >= seq },
                    r = closed.changed() => if r.is_err() { return false },
                }
            }
        };
        tokio::time::timeout(timeout, answered)
            .await
            .unwrap_or(false)
    }

    /// The next frame the node sent (pings excepted), waiting up to `timeout`; `None` when
    /// the connection closed or nothing came.
    pub async fn recv(&mut self, timeout: Duration) -> Option<Body> {
        match tokio::time::timeout(timeout, self.incoming.recv()).await {
            Ok(Some(Incoming::Frame(body))) => Some(body),
            Ok(Some(Incoming::Closed(why))) => {
                self.ended = Some(why);
                None
            }
            _ => None,
        }
    }

    /// Ask the node for everything it holds (an empty digest: "I hold nothing") and collect
    /// the partitions it sends until `done` says the collection is complete, merged per node
    /// in arrival order. The partitions keep their owners' seals and certificates.
    pub async fn fetch_partitions(
        &mut self,
        what: &str,
        mut done: impl FnMut(&[wire::PartitionDelta]) -> bool,
    ) -> Vec<wire::PartitionDelta> {
        self.send(Body::Digest(wire::Digest { partitions: vec![] }));
        let mut got: Vec<wire::PartitionDelta> = Vec::new();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !done(&got) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Some(Body::Delta(d)) => got.extend(d.partitions),
                Some(_) => {}
                None => panic!("timed out waiting for {what}; got {got:?}"),
            }
        }
        got
    }

    /// Wait until the node has sent `n` more digests than so far (it sends one a second): a
    /// bounded observation window measured in the node's own ticks, not a guessed sleep.
    pub async fn wait_digests(&mut self, n: u64) {
        let mut digests = self.digests.clone();
        let target = *digests.borrow_and_update() + n;
        let waited = tokio::time::timeout(DEADLINE * 2, async {
            while *digests.borrow_and_update() < target {
                if digests.changed().await.is_err() {
                    return false;
                }
            }
            true
        })
        .await;
        assert_eq!(waited, Ok(true), "the node stopped sending digests");
    }

    /// Wait until the node closes the connection (or it fails); true when it did within
    /// `timeout`.
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let mut closed = self.closed.clone();
        tokio::time::timeout(timeout, async {
            while !*closed.borrow_and_update() {
                if closed.changed().await.is_err() {
                    break;
                }
            }
        })
        .await
        .is_ok()
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }
}

impl Drop for EvilPeer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The mesh's framing: 4-byte big-endian length, capped at [`wire::MAX_FRAME`].
fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(wire::MAX_FRAME)
        .new_codec()
}

/// `payload` behind its 4-byte big-endian length.
fn frame_bytes(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(payload.len() + 4);
    b.put_u32(u32::try_from(payload.len()).expect("payload under 4 GiB"));
    b.put_slice(payload);
    b.freeze()
}

/// A mesh TLS connection to `addr` with `me`'s certificate.
pub async fn connect_tls(
    me: &EvilIdentity,
    addr: SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(MESH_SERVER_NAME).expect("server name");
    tokio_rustls::TlsConnector::from(me.tls().client)
        .connect(name, tcp)
        .await
}

/// A listener with a genuine mesh certificate that counts every TCP connection made to it
/// and, for connections that complete the mesh handshake, hands the test an [`EvilPeer`].
#[derive(Debug)]
pub struct EvilListener {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    peers: mpsc::UnboundedReceiver<EvilPeer>,
    task: JoinHandle<()>,
}

impl EvilListener {
    /// Listen on a loopback port of the system's choosing as `me`.
    pub async fn bind(me: &EvilIdentity) -> EvilListener {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let (tx, peers) = mpsc::unbounded_channel();
        let acceptor = tokio_rustls::TlsAcceptor::from(me.tls().server);
        let hello = me.hello(1);
        let task = {
            let connections = connections.clone();
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::SeqCst);
                    let (acceptor, tx, hello) = (acceptor.clone(), tx.clone(), hello.clone());
                    tokio::spawn(async move {
                        if let Ok(Ok(tls)) =
                            tokio::time::timeout(DEADLINE, acceptor.accept(tcp)).await
                        {
                            let _ = tx.send(EvilPeer::over(tls, hello).await);
                        }
                    });
                }
            })
        };
        EvilListener {
            addr,
            connections,
            peers,
            task,
        }
    }

    /// The listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The next peer that completed the mesh handshake, waiting up to `timeout`.
    pub async fn accept(&mut self, timeout: Duration) -> Option<EvilPeer> {
        tokio::time::timeout(timeout, self.peers.recv())
            .await
            .ok()
            .flatten()
    }
}

impl Drop for EvilListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), so a failing garbage test can be rerun
/// with the same input.
pub fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Now, in microseconds since the Unix epoch: the unit of generations (a start time).
pub fn now_micros() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    u64::try_from(since.as_micros()).expect("before the year 586,000")
}

/// The attacker's own partition, kept and sealed by the product's own code
/// ([`grouter::table::Table`], [`grouter::mesh::sync::delta`], [`MeshTrust`]): what it
/// sends is exactly what a genuine node of its identity would, so a victim accepts it
/// unless a rule other than authorship refuses it. Tamper with the result to attack.
pub struct OwnPartition {
    table: grouter::table::Table,
    trust: MeshTrust,
}

impl std::fmt::Debug for OwnPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnPartition")
            .field("me", &self.table.me().node_id)
            .field("generation", &self.table.me().generation)
            .finish_non_exhaustive()
    }
}

impl EvilIdentity {
    /// The product's signer for this identity's key.
    pub fn trust(&self) -> MeshTrust {
        crate::install_crypto();
        MeshTrust::load(&self.ca_pem(), &self.cert_pem(), &self.key_pem())
            .expect("load the harness's own mesh trust")
    }

    /// A partition of this identity at `generation` (e.g. [`now_micros`]), empty.
    pub fn partition(&self, generation: u64) -> OwnPartition {
        OwnPartition {
            table: grouter::table::Table::new(&self.node_id, &self.site, generation),
            trust: self.trust(),
        }
    }
}

impl OwnPartition {
    /// Serve `host` (path "") as app `app`.
    pub fn upsert(&self, host: &str, app: &str) {
        let key =
            Arc::new(grouter_protocol::nats::RouteKey::parse(host).expect("a valid route key"));
        self.table.upsert_local(
            &key,
            grouter::table::RouteEntry {
                app: Arc::new(
                    grouter::table::App::new(grouter::table::AppFields {
                        id: app,
                        name: Some(app),
                        ..Default::default()
                    })
                    .expect("a short app id"),
                ),
                endpoints: 1,
                instances: 1,
                updated_at_ms: 1,
            },
        );
    }

    /// Stop serving `host`, leaving a tombstone.
    pub fn remove(&self, host: &str) {
        let key = grouter_protocol::nats::RouteKey::parse(host).expect("a valid route key");
        self.table.remove_local(&key);
    }

    /// The whole partition, sealed, as its owner sends it to `peer` that holds none of it.
    pub fn delta(&self, peer: &str) -> wire::Delta {
        grouter::mesh::sync::delta(
            &self.table,
            &self.trust,
            &mut grouter::mesh::sync::PeerView::default(),
            peer,
        )
        .expect("a partition to send")
    }

    /// The signer.
    pub fn trust(&self) -> &MeshTrust {
        &self.trust
    }
}
