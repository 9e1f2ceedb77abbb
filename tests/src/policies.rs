//! Route and site policies steering real traffic (issue 13): three `grouter` processes in
//! two regions — lon and par in `eu`, nyc in `us` — each with its own `nats-server`, GoRouter
//! stand-in and DNS front; policies written through the admin API of one node, requests and
//! DNS questions sent to every node.
//!
//! - a route pinned to `eu` is within 2 s never served, proxied, redirected or answered in
//!   DNS at a `us` site; with the eu GoRouters down it is 503 `no_endpoints`, never a us
//!   answer;
//! - a site drained for one app, then for everything: new requests and DNS answers leave it
//!   within 2 s, while an upload in flight there completes;
//! - weights 1:3 between two remote sites over 1,000 requests and 1,000 DNS answers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::dns::{addresses, dns_addr, udp};
use grouter_tests::{MeshCa, NatsServer, Node, wait_until};

const SEC: Duration = Duration::from_secs(1);
/// What the contract allows between a write at one node and its effect at every node.
const PROPAGATION: Duration = Duration::from_secs(2);
/// Slack on top of [`PROPAGATION`] for the test's own requests on a loaded machine.
const SLACK: Duration = Duration::from_secs(1);
/// How long a mesh may take to form, and health to travel, on a loaded machine: a deadline
/// for set-up, not a measured latency.
const SETTLE: Duration = Duration::from_secs(30);

const APP: &str = "shop.apps.example.com";
const OTHER: &str = "other.apps.example.com";
const LON_ADDR: &str = "192.0.2.10";
const PAR_ADDR: &str = "192.0.2.20";
const NYC_ADDR: &str = "198.51.100.10";

fn dns_toml(site_addr: &str, answer_sites: usize) -> String {
    format!(
        "\n[dns]\nlisten = \"127.0.0.1:0\"\nzones = [\"apps.example.com\"]\nttl_secs = 5\n\
         site_addresses = [\"{site_addr}\"]\nanswer_sites = {answer_sites}\n"
    )
}

/// lon-1 (eu), par-1 (eu) and nyc-1 (us), meshed, every DNS front naming at most
/// `answer_sites` sites per answer.
struct Sites {
    _ca: MeshCa,
    buses: [NatsServer; 3],
    lon: Node,
    par: Node,
    nyc: Node,
}

impl Sites {
    async fn start(answer_sites: usize) -> Sites {
        let ca = MeshCa::new();
        let buses = [
            NatsServer::start(),
            NatsServer::start(),
            NatsServer::start(),
        ];
        let lon = Node::builder("lon-1", "lon")
            .region("eu")
            .nats(&buses[0].url())
            .mesh(&ca, &[])
            .extra(&dns_toml(LON_ADDR, answer_sites))
            .start()
            .await;
        let par = Node::builder("par-1", "par")
            .region("eu")
            .nats(&buses[1].url())
            .mesh(&ca, &[lon.mesh_addr()])
            .extra(&dns_toml(PAR_ADDR, answer_sites))
            .start()
            .await;
        let nyc = Node::builder("nyc-1", "nyc")
            .region("us")
            .nats(&buses[2].url())
            .mesh(&ca, &[lon.mesh_addr()])
            .extra(&dns_toml(NYC_ADDR, answer_sites))
            .start()
            .await;
        let sites = Sites {
            _ca: ca,
            buses,
            lon,
            par,
            nyc,
        };
        for n in sites.all() {
            wait_until(SETTLE, "every node knows three sites in sync", || async {
                let status = n.json("/v1/status").await;
                let listed = n.json("/v1/sites").await;
                (status["sync"] == "in_sync" && listed["sites"].as_array()?.len() == 3)
                    .then_some(())
            })
            .await;
        }
        sites
    }

    fn all(&self) -> [&Node; 3] {
        [&self.lon, &self.par, &self.nyc]
    }

    /// Register `host` at each of `sites` (by index: lon 0, par 1, nyc 2) and wait until every
    /// node knows each of them serves it.
    async fn serve(&self, host: &str, sites: &[usize]) {
        let names = ["lon", "par", "nyc"];
        for &i in sites {
            let bus = self.buses[i].client().await;
            let msg = json!({
                "host": "10.0.0.1", "port": 61000 + i, "uris": [host], "app": format!("app-{host}")
            });
            wait_until(SETTLE, "the route at every node", || async {
                bus.publish("router.register", msg.to_string().into())
                    .await
                    .ok()?;
                bus.flush().await.ok()?;
                for n in self.all() {
                    let r = n.route(host, "").await?;
                    r["sites"]
                        .as_array()?
                        .iter()
                        .find(|s| s["site"] == names[i])?;
                }
                Some(())
            })
            .await;
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// What one request for `host` at `node` got.
#[derive(Debug)]
struct Got {
    status: u16,
    /// The GoRouter stand-in's site that answered (empty for GRouter's own answers).
    served_by: String,
    router_error: String,
    location: String,
}

async fn get(http: &reqwest::Client, node: &Node, host: &str) -> Got {
    let resp = http
        .get(format!("http://{}/", node.http_addr()))
        .header("host", host)
        .timeout(10 * SEC)
        .send()
        .await
        .expect("request");
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    Got {
        status: resp.status().as_u16(),
        served_by: header("x-stub-site"),
        router_error: header("x-cf-routererror"),
        location: header("location"),
    }
}

/// The A records `node`'s DNS front answers for `host`.
async fn answer(node: &Node, host: &str) -> Vec<String> {
    addresses(
        &udp(
            dns_addr(node),
            "127.0.0.1",
            &format!("{host}."),
            RecordType::A,
            None,
        )
        .await,
    )
}

/// The time left until `deadline` (zero once it passed: `wait_until` then tries once).
fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn route_policy(host: &str) -> String {
    format!("/v1/policies/routes/{host}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_pinned_to_eu_is_never_served_proxied_redirected_or_answered_in_us() {
    let s = Sites::start(3).await;
    s.serve(APP, &[0, 1, 2]).await;
    let http = client();
    // Before: nyc serves it itself, and its DNS front names all three sites, nyc first.
    let got = get(&http, &s.nyc, APP).await;
    assert_eq!((got.status, got.served_by.as_str()), (200, "nyc"));
    wait_until(SETTLE, "nyc's answer names the three sites", || async {
        let a = answer(&s.nyc, APP).await;
        (a.len() == 3 && a[0] == NYC_ADDR).then_some(())
    })
    .await;

    // Pinned to eu, written at the us node.
    let written = Instant::now();
    let (status, body) = s
        .nyc
        .put(&route_policy(APP), &json!({ "regions": ["eu"] }))
        .await;
    assert_eq!(status, 200, "{body}");
    let deadline = written + PROPAGATION + SLACK;
    wait_until(left(deadline), "nyc proxies it to eu", || async {
        let got = get(&http, &s.nyc, APP).await;
        (got.status == 200 && ["lon", "par"].contains(&got.served_by.as_str())).then_some(())
    })
    .await;
    for n in s.all() {
        wait_until(left(deadline), "no DNS front names nyc", || async {
            let a = answer(n, APP).await;
            (!a.is_empty() && !a.contains(&NYC_ADDR.to_string())).then_some(())
        })
        .await;
    }
    // From then on, nothing in us: requests at every node, and every DNS front.
    for _ in 0..20 {
        for n in s.all() {
            let got = get(&http, n, APP).await;
            assert_eq!(got.status, 200, "{got:?}");
            assert!(["lon", "par"].contains(&got.served_by.as_str()), "{got:?}");
            let a = answer(n, APP).await;
            assert!(!a.is_empty() && !a.contains(&NYC_ADDR.to_string()), "{a:?}");
        }
    }
    // The eu nodes serve it themselves.
    assert_eq!(get(&http, &s.lon, APP).await.served_by, "lon");
    assert_eq!(get(&http, &s.par, APP).await.served_by, "par");

    // Redirect mode: nyc redirects to an eu site, never to its own.
    let written = Instant::now();
    let (status, body) = s
        .lon
        .put(
            &route_policy(APP),
            &json!({ "regions": ["eu"], "mode": "redirect" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let got = wait_until(
        left(written + PROPAGATION + SLACK),
        "nyc redirects",
        || async {
            let got = get(&http, &s.nyc, APP).await;
            (got.status == 307).then_some(got)
        },
    )
    .await;
    assert!(
        got.location == "http://shop.lon.apps.example.com/"
            || got.location == "http://shop.par.apps.example.com/",
        "{got:?}"
    );

    // The eu GoRouters fail their health checks: 503 no_endpoints at nyc (and at lon,
    // which has no healthy eu site left either), never a us answer.
    s.lon
        .stub
        .as_ref()
        .expect("lon's stand-in")
        .set_healthy(false);
    s.par
        .stub
        .as_ref()
        .expect("par's stand-in")
        .set_healthy(false);
    for n in [&s.nyc, &s.lon] {
        wait_until(SETTLE, "503 no_endpoints", || async {
            let got = get(&http, n, APP).await;
            (got.status == 503).then_some(())
        })
        .await;
    }
    for _ in 0..20 {
        let got = get(&http, &s.nyc, APP).await;
        assert_eq!(
            (
                got.status,
                got.router_error.as_str(),
                got.served_by.as_str()
            ),
            (503, "no_endpoints", ""),
            "{got:?}"
        );
        // DNS names the unhealthy eu sites (every admitted site, as when none is healthy
        // without policies), never nyc.
        for n in s.all() {
            let mut a = answer(n, APP).await;
            a.sort();
            assert_eq!(a, [LON_ADDR, PAR_ADDR], "{}", n.admin_addr());
        }
    }
}

/// A request whose body is on its way: the head and the first half sent, the rest held.
struct Upload {
    stream: TcpStream,
    rest: Vec<u8>,
}

impl Upload {
    const LEN: usize = 4 << 20;

    async fn start(to: SocketAddr, host: &str) -> Upload {
        let mut stream = TcpStream::connect(to).await.expect("connect");
        let head = format!(
            "POST /consume HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            Upload::LEN
        );
        stream.write_all(head.as_bytes()).await.expect("head");
        let body = vec![b'x'; Upload::LEN];
        let (first, rest) = body.split_at(Upload::LEN / 2);
        stream.write_all(first).await.expect("first half");
        Upload {
            stream,
            rest: rest.to_vec(),
        }
    }

    /// Send the rest; the response's status, stand-in site and body.
    async fn finish(mut self) -> (u16, String, String) {
        self.stream
            .write_all(&self.rest)
            .await
            .expect("second half");
        let mut raw = Vec::new();
        tokio::time::timeout(30 * SEC, self.stream.read_to_end(&mut raw))
            .await
            .expect("the upload's response within 30 s")
            .expect("read");
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let site = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("x-stub-site")
                    .then(|| value.trim().to_string())
            })
            .unwrap_or_default();
        (status, site, body.to_string())
    }
}

/// Within `deadline`, `host` at par is served by lon, and no DNS front names par.
async fn moved_off_par(s: &Sites, http: &reqwest::Client, host: &str, deadline: Instant) {
    wait_until(left(deadline), "par sends new requests to lon", || async {
        let got = get(http, &s.par, host).await;
        (got.status == 200 && got.served_by == "lon").then_some(())
    })
    .await;
    for n in s.all() {
        wait_until(left(deadline), "no DNS front names par", || async {
            (answer(n, host).await == [LON_ADDR]).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_site_takes_no_new_requests_or_answers_and_finishes_an_upload_in_flight() {
    let s = Sites::start(3).await;
    s.serve(APP, &[0, 1]).await;
    s.serve(OTHER, &[0, 1]).await;
    let http = client();
    assert_eq!(get(&http, &s.par, APP).await.served_by, "par");

    // Drained for one app (written at lon) while an upload to par is half sent.
    let upload = Upload::start(s.par.http_addr(), APP).await;
    let written = Instant::now();
    let (status, body) = s
        .lon
        .put(&route_policy(APP), &json!({ "drained": ["par"] }))
        .await;
    assert_eq!(status, 200, "{body}");
    moved_off_par(&s, &http, APP, written + PROPAGATION + SLACK).await;
    // The other app stays where it was.
    assert_eq!(get(&http, &s.par, OTHER).await.served_by, "par");
    let mut a = answer(&s.lon, OTHER).await;
    a.sort();
    assert_eq!(a, [LON_ADDR, PAR_ADDR]);
    let (status, site, body) = upload.finish().await;
    assert_eq!((status, site.as_str()), (200, "par"), "{body}");
    assert_eq!(body.trim(), Upload::LEN.to_string());

    // Undrained, then the whole site drained (written at nyc): every app moves.
    let (status, body) = s.lon.delete(&route_policy(APP)).await;
    assert_eq!(status, 200, "{body}");
    wait_until(SETTLE, "par serves the app again", || async {
        (get(&http, &s.par, APP).await.served_by == "par").then_some(())
    })
    .await;
    let upload = Upload::start(s.par.http_addr(), OTHER).await;
    let written = Instant::now();
    let (status, body) = s
        .nyc
        .put("/v1/policies/sites/par", &json!({ "drained": true }))
        .await;
    assert_eq!(status, 200, "{body}");
    let deadline = written + PROPAGATION + SLACK;
    for host in [APP, OTHER] {
        moved_off_par(&s, &http, host, deadline).await;
    }
    let (status, site, body) = upload.finish().await;
    assert_eq!((status, site.as_str()), (200, "par"), "{body}");
    assert_eq!(body.trim(), Upload::LEN.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_requests_and_answers_one_to_three_between_two_remote_sites() {
    let s = Sites::start(1).await;
    s.serve(APP, &[0, 1]).await;
    let (status, body) = s
        .nyc
        .put(
            &route_policy(APP),
            &json!({ "weights": { "lon": 1, "par": 3 } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let http = client();
    // In force at nyc once both sites have taken a request from it.
    wait_until(SETTLE, "nyc spreads the app over lon and par", || async {
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(get(&http, &s.nyc, APP).await.served_by);
        }
        (seen.iter().any(|x| x == "lon") && seen.iter().any(|x| x == "par")).then_some(())
    })
    .await;

    let mut lon = 0;
    for _ in 0..1000 {
        let got = get(&http, &s.nyc, APP).await;
        match (got.status, got.served_by.as_str()) {
            (200, "lon") => lon += 1,
            (200, "par") => {}
            _ => panic!("{got:?}"),
        }
    }
    assert!(
        (200..=300).contains(&lon),
        "lon took {lon} of 1000 requests"
    );

    let mut lon = 0;
    for _ in 0..1000 {
        match answer(&s.nyc, APP).await.as_slice() {
            [a] if a == LON_ADDR => lon += 1,
            [a] if a == PAR_ADDR => {}
            other => panic!("{other:?}"),
        }
    }
    assert!((200..=300).contains(&lon), "lon got {lon} of 1000 answers");
}
