//! The bodies of the fuzz targets: one function per decoder that takes untrusted bytes,
//! runs them through the product's own entry point and checks what must hold whatever the
//! bytes were. `fuzz/fuzz_targets/*.rs` call these under libFuzzer (nightly, `deploy/fuzz.sh`);
//! `grouter/tests/fuzz_corpus.rs` calls the same functions on stable over every input in
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`, so a crash once found stays a
//! test of the ordinary suite.
//!
//! - [`nats_message`]: `router.register` / `router.unregister` payloads into the learner's
//!   registry and this node's partition; the plain JSON reader held to serde_json.
//! - [`mesh_frames`]: mesh frames into the anti-entropy state machine and the table.
//! - [`dns_query`]: DNS packets into the answer path.
//! - [`http1_head`]: a client's bytes into the HTTP/1.1 fast path (the request head parser,
//!   Host validation, the upstream head it writes), and a GoRouter's response head.
//! - [`config_file`]: config files, parsed and validated as `grouter check` does.
//!
//! A check that fails panics (that is what the fuzzer reports). The fixtures are fixed, and
//! state never carries from one input to the next, so every crash replays from its input.
//!
//! Must never: do I/O (no socket, file or clock is read: time is passed in), or weaken a
//! check to let an input through.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use grouter_protocol::mesh::{self as wire, frame::Body};
use grouter_protocol::nats::{MessageKind, Registration, RegistryMessage, RouteKey};
use hickory_proto::op::{Message, MessageType};

use crate::config::{Config, RemoteMode};
use crate::dns::answer::{DnsSettings, Nameserver, NodeStatus};
use crate::dns::wire::{MAX_UDP_PAYLOAD, Transport, Zones, respond};
use crate::health::{Health, SyncState};
use crate::learn::Registry;
use crate::mesh::sync::{self, Context, Inbox, Owner, PeerView, Rejection, Sender, Trust};
use crate::names::parse_host;
use crate::policy::PolicyStore;
use crate::proxy::decide::{self, Decision, Rules};
use crate::proxy::upstream::GoRouters;
use crate::table::{App, Import, NodeRecord, ReplicatedEntry, RouteEntry, Seal, Table};

// ---------------------------------------------------------------------------------------------
// NATS

/// Lines of NATS payloads, each applied to one registry in order. A line's first byte says
/// what it is: `R` a `router.register` payload follows, `U` a `router.unregister` one, `C`
/// commit the batch to the table, `P` a minute passes and the registry prunes, `N` a NATS
/// reconnect (every endpoint refreshed); any other line is a register payload whole.
/// Every message is one second after the one before.
///
/// Checks: a message that validates has normalised, sorted, distinct routes (each parses
/// back to itself); after every commit the table's endpoint count is the registry's; and
/// once everything is stale, a prune leaves this node's partition empty.
pub fn nats_message(data: &[u8]) {
    const THRESHOLD: Duration = Duration::from_secs(120);
    const TLS_THRESHOLD: Duration = Duration::from_secs(360);
    let table = Arc::new(Table::new("lon-1", "lon", 1));
    let mut registry = Registry::new(table.clone(), THRESHOLD, TLS_THRESHOLD);
    let mut now_ms = 1_000_000u64;
    let agree = |registry: &Registry| {
        assert_eq!(
            table.stats().local_endpoints,
            registry.endpoints() as u64,
            "the table's endpoints are the registry's after a commit"
        );
    };
    for line in data.split(|&b| b == b'\n') {
        now_ms += 1_000;
        let (kind, payload) = match line.split_first() {
            Some((b'R', rest)) => (MessageKind::Register, rest),
            Some((b'U', rest)) => (MessageKind::Unregister, rest),
            Some((b'C', _)) => {
                registry.commit();
                agree(&registry);
                continue;
            }
            Some((b'P', _)) => {
                now_ms += 60_000;
                registry.prune(now_ms);
                agree(&registry);
                continue;
            }
            Some((b'N', _)) => {
                registry.refresh_all(now_ms);
                continue;
            }
            _ => (MessageKind::Register, line),
        };
        // The plain reader reads nothing serde_json would read otherwise.
        if let Some(plain) = RegistryMessage::read_plain(payload) {
            let reference: Result<RegistryMessage<'_>, _> = serde_json::from_slice(payload);
            assert_eq!(
                Some(plain),
                reference.ok(),
                "plain reader differs from serde_json"
            );
        }
        match Registration::parse(payload, kind) {
            Ok(reg) => {
                check_registration(&reg);
                registry.apply(kind, &reg, now_ms);
            }
            Err(err) => {
                assert!(!err.to_string().is_empty());
                assert_eq!(
                    grouter_protocol::nats::InvalidMessage::REASONS[err.index()],
                    err.reason()
                );
            }
        }
    }
    registry.commit();
    agree(&registry);
    let later = now_ms + 2 * u64::try_from(TLS_THRESHOLD.as_millis()).unwrap_or(u64::MAX);
    registry.prune(later);
    assert_eq!(registry.endpoints(), 0, "every endpoint is stale by now");
    let stats = table.stats();
    assert_eq!((stats.local_routes, stats.local_endpoints), (0, 0));
}

fn check_registration(reg: &Registration<'_>) {
    assert!(!reg.routes.is_empty(), "a valid registration has a route");
    assert!(!reg.host.trim().is_empty() && reg.port != 0);
    assert!(
        reg.routes.windows(2).all(|w| w[0] < w[1]),
        "routes sorted and distinct"
    );
    for key in &reg.routes {
        assert!(!key.host.bytes().any(|b| b.is_ascii_uppercase()), "{key}");
        assert!(!key.path.bytes().any(|b| b.is_ascii_uppercase()), "{key}");
        assert!(
            key.path.is_empty() || (key.path.starts_with('/') && !key.path.ends_with('/')),
            "{key}"
        );
        assert!(!key.path.contains(['?', '#']), "{key}");
        assert_eq!(
            RouteKey::parse(&key.to_string()).as_ref(),
            Some(key),
            "normalising is idempotent"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Mesh

/// "Now" for the mesh and DNS targets, in microseconds since the Unix epoch: generations
/// and config clocks up to five minutes past it are accepted.
const NOW_MICROS: u64 = 1_700_000_000_000_000;

/// The peers a frame can come from, by the low bits of its control byte.
const SENDERS: [(&str, &str); 4] = [
    ("nyc-1", "nyc"),
    ("sgp-1", "sgp"),
    ("lon-2", "lon"),
    ("nyc-2", "nyc"),
];

/// The receiving node, `lon-1`, and the replica the convergence check builds.
const ME: (&str, &str) = ("lon-1", "lon");
const MIRROR: (&str, &str) = ("zz-mirror", "zz");

/// The mesh's trust with the cryptography taken out, so that the fuzzer reaches everything
/// behind it: a certificate is the text `node@site`, a seal is any non-empty signature.
/// What the rules do with an owner, a site, versions and entries is all still checked.
#[derive(Debug)]
struct OpenTrust {
    me: (&'static str, &'static str),
}

impl Trust for OpenTrust {
    fn own_cert(&self) -> Arc<[u8]> {
        Arc::from(format!("{}@{}", self.me.0, self.me.1).as_bytes())
    }
    fn sign(&self, _statement: &[u8]) -> Option<(u32, Vec<u8>)> {
        Some((1, b"sealed".to_vec()))
    }
    fn certify(&self, cert: &[u8]) -> Result<Owner, Rejection> {
        let text = std::str::from_utf8(cert).map_err(|_| Rejection::UnknownCa)?;
        let (node, site) = text.split_once('@').ok_or(Rejection::UnknownCa)?;
        Ok(Owner {
            node_id: node.into(),
            site: site.into(),
        })
    }
    fn verify(&self, cert: &[u8], _statement: &[u8], _scheme: u32, signature: &[u8]) -> bool {
        self.certify(cert).is_ok() && !signature.is_empty()
    }
}

/// Frames as a peer's session reader gets them: each is a control byte, a little-endian
/// 16-bit length and that many bytes of frame (what the length-delimited codec hands
/// over). The control byte's low two bits pick the sender ([`SENDERS`]); bit 2 makes every
/// node count as directly connected. Deltas go to `lon-1`'s table through
/// [`sync::apply`] (one inbox for the connection), digests into that peer's view and out
/// again as the deltas `lon-1` would push.
///
/// Checks: a frame that decodes re-encodes to itself; whatever was applied, a fresh
/// replica sent everything `lon-1` holds ends with the same partitions at the same versions
/// (what the sync promises: convergence).
pub fn mesh_frames(data: &[u8]) {
    let table = Table::new(ME.0, ME.1, 1);
    table.upsert_local(&local_key("shop.apps.example.com"), route_entry("shop", 2));
    let trust = OpenTrust { me: ME };
    let mut inbox = Inbox::default();
    let mut views: BTreeMap<&str, PeerView> = BTreeMap::new();
    let mut rest = data;
    while let [control, lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (frame, next) = tail.split_at(len);
        rest = next;
        let Ok(body) = wire::decode(frame) else {
            continue;
        };
        assert_eq!(
            wire::decode(&wire::encode(body.clone())).ok().as_ref(),
            Some(&body),
            "a decoded frame re-encodes to itself"
        );
        let (node_id, site) = SENDERS[usize::from(control & 3)];
        let all_direct = control & 4 != 0;
        match body {
            Body::Delta(delta) => {
                let is_direct = |_: &str| all_direct;
                let cx = Context {
                    table: &table,
                    trust: &trust,
                    is_direct: &is_direct,
                    now_micros: NOW_MICROS,
                };
                sync::apply(&cx, &mut inbox, Sender { node_id, site }, delta);
            }
            Body::Digest(digest) => {
                let view = views.entry(node_id).or_default();
                let max = table.limits().max_nodes;
                if view.set_from_digest(&digest, std::time::Instant::now(), max) {
                    // What `push` would send, bounded (each round advances the view).
                    for _ in 0..8 {
                        if sync::delta(&table, &trust, view, node_id).is_none() {
                            break;
                        }
                    }
                }
            }
            Body::Hello(_) | Body::Ping(_) | Body::Pong(_) => {}
        }
    }
    converges(&table, &trust);
}

/// Everything `from` holds, sent to a fresh replica, gives it the same partitions (but its
/// own and the replica's) at the same generations and versions.
fn converges(from: &Table, trust: &OpenTrust) {
    let mirror = Table::new(MIRROR.0, MIRROR.1, 1);
    let mirror_trust = OpenTrust { me: MIRROR };
    let mut view = PeerView::default();
    let mut inbox = Inbox::default();
    let sender = Sender {
        node_id: ME.0,
        site: ME.1,
    };
    let no_direct = |_: &str| false;
    let cx = Context {
        table: &mirror,
        trust: &mirror_trust,
        is_direct: &no_direct,
        now_micros: NOW_MICROS,
    };
    let mut rounds = 0;
    while let Some(delta) = sync::delta(from, trust, &mut view, MIRROR.0) {
        let applied = sync::apply(&cx, &mut inbox, sender, delta);
        assert!(
            applied.rejected.is_empty(),
            "a replica refuses what its peer holds: {:?}",
            applied.rejected
        );
        rounds += 1;
        assert!(rounds < 1_000, "the deltas of a small table never end");
    }
    let held = |t: &Table, skip: &str| -> BTreeMap<String, (u64, u64)> {
        t.digest()
            .into_iter()
            .filter(|(o, v)| *o.node_id != *skip && *o.node_id != *MIRROR.0 && *v > 0)
            .map(|(o, v)| (o.node_id.to_string(), (o.generation, v)))
            .collect()
    };
    assert_eq!(
        held(&mirror, ""),
        held(from, ""),
        "the replica holds what its peer holds"
    );
}

fn local_key(uri: &str) -> Arc<RouteKey> {
    Arc::new(RouteKey::parse(uri).unwrap_or_else(|| panic!("{uri} is a route key")))
}

fn route_entry(app: &str, endpoints: u32) -> RouteEntry {
    RouteEntry {
        app: Arc::new(App::with_id(app)),
        endpoints,
        instances: endpoints,
        updated_at_ms: 0,
    }
}

/// `node` of `site`, with `record`, serves `routes` (imported as its owner sealed it).
fn import_remote(table: &Table, node: &str, site: &str, record: NodeRecord, routes: &[&str]) {
    let n = routes.len() as u64;
    let import = Import {
        node_id: node.into(),
        site: site.into(),
        generation: 1,
        from_version: 0,
        up_to_version: n + 1,
        reset: false,
        record: Some(NodeRecord {
            version: n + 1,
            ..record
        }),
        entries: routes
            .iter()
            .zip(1..)
            .map(|(uri, version)| ReplicatedEntry {
                key: local_key(uri),
                version,
                value: Some(Arc::new(route_entry("remote", 1))),
            })
            .collect(),
        config: Vec::new(),
        seal: Seal {
            version: n + 1,
            scheme: 1,
            signature: Arc::from(&b"sealed"[..]),
        },
        owner_cert: Arc::from(format!("{node}@{site}").as_bytes()),
    };
    let outcome = table.import(import, |_| true);
    assert!(
        matches!(outcome, crate::table::ImportOutcome::Applied { .. }),
        "the fixture imports: {outcome:?}"
    );
}

/// `lon-1`'s table as the DNS and HTTP targets see it: routes here, at nyc, and at both.
fn shared_table() -> Table {
    let table = Table::new(ME.0, ME.1, 1);
    for uri in [
        "app.apps.example.com",
        "shop.apps.example.com",
        "*.wild.apps.example.com",
        "api.apps.example.com/v1",
    ] {
        table.upsert_local(&local_key(uri), route_entry("local", 2));
    }
    import_remote(
        &table,
        "nyc-1",
        "nyc",
        NodeRecord {
            region: "us".into(),
            healthy: true,
            site_addresses: vec!["192.0.2.10".into(), "2001:db8::10".into()],
            ..NodeRecord::default()
        },
        &[
            "blog.apps.example.com",
            "shop.apps.example.com",
            "*.far.example.test",
            "deep.a.b.apps.example.com",
        ],
    );
    table
}

// ---------------------------------------------------------------------------------------------
// DNS

struct DnsFixture {
    table: Table,
    /// Default name servers (`ns.<zone>`), and explicit ones in and out of the zones.
    settings: [DnsSettings; 2],
}

fn dns_fixture() -> &'static DnsFixture {
    static FIXTURE: OnceLock<DnsFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap_or(IpAddr::from([192, 0, 2, 1])) };
        let base = DnsSettings {
            zones: vec!["apps.example.com".into(), "far.example.test".into()],
            ttl: 30,
            site: ME.1.into(),
            own_addresses: vec![ip("192.0.2.1"), ip("2001:db8::1")],
            client_networks: vec![
                ("10.1.0.0/16".parse().unwrap_or_default(), "lon".into()),
                ("10.2.0.0/16".parse().unwrap_or_default(), "nyc".into()),
            ],
            answer_sites: 2,
            nameservers: Vec::new(),
        };
        let explicit = DnsSettings {
            answer_sites: 1,
            nameservers: vec![
                Nameserver {
                    name: "ns1.apps.example.com".into(),
                    addresses: vec![ip("192.0.2.53")],
                },
                Nameserver {
                    name: "ns2.example.net".into(),
                    addresses: Vec::new(),
                },
            ],
            ..base.clone()
        };
        DnsFixture {
            table: shared_table(),
            settings: [base, explicit],
        }
    })
}

/// One DNS packet, as UDP and as TCP, under both settings and with sync in and lost.
///
/// Checks: nothing is sent for a packet shorter than a header or for a response (no
/// reflection); what is sent is a response with the query's id, decodes, and over UDP fits
/// [`MAX_UDP_PAYLOAD`]; a truncated answer carries no records.
pub fn dns_query(data: &[u8]) {
    let fx = dns_fixture();
    let src: IpAddr = IpAddr::from([10, 1, 2, 3]);
    for (settings, sync) in fx.settings.iter().zip([SyncState::InSync, SyncState::Lost]) {
        for transport in [Transport::Udp, Transport::Tcp] {
            let zones = Zones {
                table: &fx.table,
                settings,
                status: NodeStatus {
                    sync,
                    healthy: true,
                },
                policy: None,
            };
            let reply = respond(zones, data, transport, src);
            let Some(bytes) = reply.bytes.as_deref() else {
                continue;
            };
            assert!(data.len() >= 12, "no answer to less than a header");
            assert_eq!(data[2] & 0x80, 0, "a response is never answered");
            assert_eq!(bytes.get(..2), data.get(..2), "the id is echoed");
            if transport == Transport::Udp {
                assert!(
                    bytes.len() <= usize::from(MAX_UDP_PAYLOAD),
                    "{}",
                    bytes.len()
                );
            }
            let msg = match Message::from_vec(bytes) {
                Ok(msg) => msg,
                Err(err) => panic!("our own answer does not decode: {err}"),
            };
            assert_eq!(msg.metadata.message_type, MessageType::Response);
            if reply.truncated {
                assert_eq!(transport, Transport::Udp);
                assert!(msg.answers.is_empty() && msg.authorities.is_empty());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1

struct HttpFixture {
    proxy: Arc<crate::proxy::Proxy>,
    table: Arc<Table>,
    redirect: Rules,
}

fn http_fixture() -> &'static HttpFixture {
    static FIXTURE: OnceLock<HttpFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let config = match Config::from_toml(HTTP_CONFIG, Path::new("fuzz.toml"), Path::new("")) {
            Ok(config) => config,
            Err(err) => panic!("the fixture's config: {err}"),
        };
        let table = Arc::new(shared_table());
        // Sync lost: an unknown host fails open to the GoRouters, so the fast path takes
        // every request with a valid Host, not only the routed ones.
        let health = Arc::new(Health::new());
        health.set_sync(SyncState::Lost);
        let metrics = crate::metrics::Metrics::new();
        let http = crate::limits::Gate::new(10, metrics.listener_stats("http"));
        let https = http.sharing(metrics.listener_stats("https"));
        let edge = crate::proxy::Edge::new(
            config.proxy.timeouts(),
            http,
            https,
            metrics.listener_stats("mesh"),
            metrics.reason_counters("refused", "", crate::proxy::edge::REFUSED_REASONS),
        );
        let rules = |remote| Rules {
            site: config.site.clone(),
            region: "eu".into(),
            remote,
            redirect_host: config.proxy.redirect_host.clone(),
        };
        let proxy = crate::proxy::Proxy::new(
            table.clone(),
            health,
            Arc::new(PolicyStore::default()),
            rules(RemoteMode::Proxy),
            Arc::new(GoRouters::new(&config.gorouters)),
            None,
            crate::proxy::Settings::from_config(&config),
            edge,
        );
        HttpFixture {
            proxy,
            table,
            redirect: rules(RemoteMode::Redirect),
        }
    })
}

/// The node of the HTTP target: never started, its GoRouters never dialled.
const HTTP_CONFIG: &str = r#"
node_id = "lon-1"
site = "lon"
[nats]
servers = ["nats://127.0.0.1:4222"]
[gorouters]
addresses = ["127.0.0.1:1"]
[proxy]
http_listen = "127.0.0.1:0"
trusted_proxies = ["192.0.2.0/24"]
[admin]
listen = "127.0.0.1:0"
token_file = "admin.token"
"#;

/// A client's bytes into the HTTP/1.1 fast path (pipelined requests until one is not its
/// to take), every Host header into the routing decision in redirect mode, and the same
/// bytes as a GoRouter's response into the response rewriter.
///
/// Checks: every upstream head the fast path writes is one whole HTTP/1.1 request with the
/// client's method and target, exactly one Host, which is a valid host name, no CR or LF
/// inside a header, and the client's body after it; a redirect's authority is a host name
/// and port only; a rewritten response head is one whole head with exactly one
/// `x-grouter-site`, this site's.
pub fn http1_head(data: &[u8]) {
    let fx = http_fixture();
    let (taken, _) = crate::proxy::take_requests(&fx.proxy, "http", data);
    let mut at = 0;
    for t in &taken {
        let client = &data[at..at + t.len];
        at += t.len;
        check_upstream_request(client, &t.upstream);
    }
    for host in request_hosts(data) {
        check_host(&host);
        check_redirect(fx, &host);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        check_host(text);
    }
    for head_method in [false, true] {
        if let Ok(Some(relay)) = crate::proxy::relay_response(data, head_method, false) {
            check_response_head(&relay);
            let used = relay.head_len + relay.body_len;
            assert!(used <= data.len());
            // A body that does not end here takes every byte there is.
            assert!(relay.body_done || used == data.len(), "{relay:?}");
        }
    }
}

/// Parse a head whole, or panic.
fn whole_request<'h, 'b>(
    bytes: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
) -> (httparse::Request<'h, 'b>, usize) {
    let mut req = httparse::Request::new(headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => (req, n),
        other => panic!(
            "not a whole request head ({other:?}): {:?}",
            String::from_utf8_lossy(bytes)
        ),
    }
}

fn check_upstream_request(client: &[u8], upstream: &[u8]) {
    let mut ch = [httparse::EMPTY_HEADER; 128];
    let (creq, clen) = whole_request(client, &mut ch);
    let mut uh = [httparse::EMPTY_HEADER; 256];
    let (ureq, ulen) = whole_request(upstream, &mut uh);
    assert_eq!((ureq.method, ureq.path), (creq.method, creq.path));
    assert_eq!(ureq.version, Some(1));
    let hosts: Vec<&[u8]> = ureq
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| h.value)
        .collect();
    assert_eq!(hosts.len(), 1, "exactly one Host goes upstream");
    let host = std::str::from_utf8(hosts[0]).unwrap_or_default();
    assert!(
        parse_host(host).is_ok(),
        "the fast path forwarded Host {host:?}"
    );
    for h in ureq.headers.iter() {
        assert!(
            !h.value.iter().any(|&b| b == b'\r' || b == b'\n'),
            "{}: {:?}",
            h.name,
            String::from_utf8_lossy(h.value)
        );
    }
    assert_eq!(
        &upstream[ulen..],
        &client[clen..],
        "the body follows the head"
    );
}

/// Every Host header value of the request head at the front of `data` (when it parses).
fn request_hosts(data: &[u8]) -> Vec<Cow<'_, str>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if req.parse(data).is_err() {
        return Vec::new();
    }
    req.headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| String::from_utf8_lossy(h.value))
        .collect()
}

/// What [`parse_host`] accepts is a host name and nothing that ends or re-scopes an
/// authority.
fn check_host(raw: &str) {
    let Ok(host) = parse_host(raw) else {
        return;
    };
    let name: &str = &host.name;
    assert!(!name.is_empty() && name.len() <= 253, "{raw:?}");
    assert!(
        name.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)),
        "{raw:?} gave {name:?}"
    );
    assert!(
        !name.starts_with('.') && !name.ends_with('.') && !name.contains(".."),
        "{raw:?}"
    );
    assert!(host.port.is_none_or(|p| p != 0), "{raw:?}");
}

/// A redirect built from a request's Host names a host name (and port) as its authority.
fn check_redirect(fx: &HttpFixture, host: &str) {
    for path in ["/", "/x?y"] {
        let ask = decide::Ask {
            scheme: "https",
            host,
            path,
            query: Some("q=1"),
            from_peer: false,
            host_conflict: None,
        };
        let (decision, _) = decide::decide(&fx.table, &fx.redirect, SyncState::InSync, None, ask);
        if let Decision::Redirect { location, .. } = decision {
            let Some(rest) = location.strip_prefix("https://") else {
                panic!("{location:?}");
            };
            let authority = rest.split('/').next().unwrap_or_default();
            assert!(
                !authority.contains(['?', '#', '@', '\\', '%', ' ', '\r', '\n']),
                "{host:?} redirected to {location:?}"
            );
            let name = authority.rsplit_once(':').map_or(authority, |(n, _)| n);
            assert!(
                parse_host(name).is_ok(),
                "{host:?} redirected to {location:?}"
            );
            assert!(!location.contains(['\r', '\n']), "{location:?}");
        }
    }
}

fn check_response_head(relay: &crate::proxy::Relay) {
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&relay.head) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, relay.head.len(), "one head"),
        other => panic!(
            "not a whole response head ({other:?}): {:?}",
            String::from_utf8_lossy(&relay.head)
        ),
    }
    let sites: Vec<&[u8]> = resp
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("x-grouter-site"))
        .map(|h| h.value)
        .collect();
    assert_eq!(
        sites,
        [b"lon"],
        "only this site's x-grouter-site reaches the client"
    );
}

// ---------------------------------------------------------------------------------------------
// Config

/// A config file, parsed and validated as `grouter check` does (relative paths stay
/// relative: no file is read).
///
/// Checks: every error names a reason; a config that validates validates again, unchanged
/// (normalising is idempotent), and what `grouter run` derives from it first (timeouts,
/// the GoRouter pools, DNS settings, proxy settings) builds.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text, Path::new("fuzz.toml"), Path::new("")) {
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an error names a problem");
            for e in &errors.0 {
                assert!(!e.reason.is_empty(), "{e}");
            }
            let _ = errors.to_string();
        }
        Ok(config) => {
            match config.revalidated() {
                Ok(again) => assert_eq!(again, config, "validating twice changes nothing"),
                Err(errors) => panic!("a valid config fails validation again: {errors}"),
            }
            let _ = config.proxy.timeouts();
            let _ = GoRouters::new(&config.gorouters);
            let _ = crate::proxy::Settings::from_config(&config);
            if let Some(dns) = &config.dns {
                let _ = DnsSettings::from_config(dns, &config.site);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `http1_head`: a Host that is not UTF-8 was skipped, so a second Host after
    /// it passed as the only one and both went to the GoRouter. The general path takes such
    /// a request (and refuses it).
    #[test]
    fn the_fast_path_hands_a_host_that_is_not_text_and_a_second_host_to_the_general_path() {
        let fx = http_fixture();
        let take = |raw: &[u8]| crate::proxy::take_requests(&fx.proxy, "http", raw);
        let (taken, general) =
            take(b"GET / HTTP/1.1\r\nHost: \x80\r\nHost: app.apps.example.com\r\n\r\n");
        assert!(taken.is_empty() && general);
        let (taken, general) = take(b"GET / HTTP/1.1\r\nHost: app.apps.example.com\xff\r\n\r\n");
        assert!(taken.is_empty() && general);
        // One valid Host is the fast path's, pipelined requests too.
        let one = b"GET / HTTP/1.1\r\nHost: app.apps.example.com\r\n\r\n";
        let (taken, general) = take(&[&one[..], &one[..]].concat());
        assert_eq!((taken.len(), general), (2, false));
        http1_head(&[&one[..], &one[..]].concat());
    }
}
