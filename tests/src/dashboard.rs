//! The dashboard in headless Chromium (issue 15): a 3-site mesh of real nodes with traffic
//! through lon's proxy; the page, loaded from lon's admin listener with the token in the URL
//! fragment, names every site and plots the last hour from `/v1/history`; a wrong token
//! shows the refusal. The screenshot goes to `$GROUTER_DASHBOARD_SCREENSHOT` when set (that
//! is how docs/dashboard.png is made), else to a temporary directory.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use grouter_tests::gorouter::GoRouterStub;
use grouter_tests::{MeshCa, NatsServer, Node, find_program, wait_until};

const SETTLE: Duration = Duration::from_secs(30);
const SITES: [&str; 3] = ["lon", "nyc", "sgp"];

/// Three sites, each with a GoRouter stand-in and an app of its own, fully meshed.
struct Mesh {
    _ca: MeshCa,
    _buses: [NatsServer; 3],
    _stubs: Vec<GoRouterStub>,
    nodes: Vec<Node>,
}

async fn three_sites() -> Mesh {
    let ca = MeshCa::new();
    let buses = [
        NatsServer::start(),
        NatsServer::start(),
        NatsServer::start(),
    ];
    let mut stubs = Vec::new();
    let mut nodes: Vec<Node> = Vec::new();
    for (i, site) in SITES.iter().enumerate() {
        let stub = GoRouterStub::start(site).await;
        let seeds: Vec<_> = nodes.first().map(Node::mesh_addr).into_iter().collect();
        let node = Node::builder(&format!("{site}-1"), site)
            .region(if *site == "nyc" { "us" } else { "eu" })
            .nats(&buses[i].url())
            .gorouters(&[stub.addr()])
            .mesh(&ca, &seeds)
            .start()
            .await;
        stubs.push(stub);
        nodes.push(node);
    }
    for n in &nodes {
        wait_until(SETTLE, "every node sees three sites in sync", || async {
            let status = n.json("/v1/status").await;
            let sites = n.json("/v1/sites").await;
            (status["sync"] == "in_sync" && sites["sites"].as_array()?.len() == 3).then_some(())
        })
        .await;
    }
    for (i, site) in SITES.iter().enumerate() {
        let bus = buses[i].client().await;
        let host = format!("app-{site}.apps.example.com");
        let msg = json!({"host": "10.0.0.1", "port": 61000 + i, "uris": [&host], "app": format!("guid-{site}")});
        nodes[i].register_until_routed(&bus, &msg, &host).await;
        wait_until(SETTLE, "lon knows the route", || async {
            nodes[0].route(&host, "").await.map(|_| ())
        })
        .await;
    }
    Mesh {
        _ca: ca,
        _buses: buses,
        _stubs: stubs,
        nodes,
    }
}

/// Requests through lon's proxy for every site's app (lon's own, and two proxied ones), plus
/// an unknown host, until the history shows traffic answered by every site.
async fn traffic(lon: &Node) -> Value {
    let http = reqwest::Client::new();
    wait_until(SETTLE, "requests per second for every site", || async {
        for site in SITES {
            for _ in 0..5 {
                let _ = http
                    .get(format!("http://{}/", lon.http_addr()))
                    .header("host", format!("app-{site}.apps.example.com"))
                    .send()
                    .await;
            }
        }
        let h = lon.json("/v1/history").await;
        let samples = h["samples"].as_array()?;
        let busy = |site: &str| {
            samples.iter().any(|s| {
                s["sites"].as_array().is_some_and(|v| {
                    v.iter()
                        .any(|x| x["site"] == site && x["requests_per_sec"].as_f64() > Some(0.0))
                })
            })
        };
        (samples.len() >= 4 && SITES.iter().all(|s| busy(s))).then_some(h)
    })
    .await
}

/// Chromium's DOM of `url` after the page's fetches, and a screenshot at `shot`.
async fn chromium(url: &str, shot: Option<&Path>) -> String {
    let bin = find_program("chromium", "apt-get install -y chromium");
    let profile = tempfile::tempdir().expect("profile dir");
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--window-size=1400,1000",
        "--virtual-time-budget=15000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .kill_on_drop(true)
    .stdin(std::process::Stdio::null());
    match shot {
        Some(path) => cmd.arg(format!("--screenshot={}", path.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.arg(url).output())
        .await
        .expect("chromium finished within 90 s")
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of `attr="…"` on the element whose `id` is `id`.
fn attr_of(dom: &str, id: &str, attr: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let tag_start = dom[..at].rfind('<')?;
    let tag_end = at + dom[at..].find('>')?;
    let tag = &dom[tag_start..tag_end];
    let key = format!("{attr}=\"");
    let v = tag.find(&key)? + key.len();
    Some(tag[v..v + tag[v..].find('"')?].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_names_every_site_and_plots_the_last_hour_in_chromium() {
    let mesh = three_sites().await;
    let lon = &mesh.nodes[0];
    // A policy write, for the events list.
    let (status, body) = lon
        .put(
            "/v1/policies/routes/app-nyc.apps.example.com",
            &json!({"weights": {"nyc": 2, "sgp": 1}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let history = traffic(lon).await;
    assert_eq!(history["capacity"], 720, "{history}");

    // `/` is static and needs no token; `/v1/history` does.
    let anonymous = |path: &str| {
        let url = format!("http://{}{path}", lon.admin_addr());
        async move { reqwest::get(url).await.expect("GET") }
    };
    let page = anonymous("/").await;
    assert_eq!(page.status(), 200);
    assert!(
        page.text()
            .await
            .unwrap_or_default()
            .contains("uPlot.iife.min.js")
    );
    assert_eq!(anonymous("/v1/history").await.status(), 401);

    // Every site's row of the RTT matrix, sites without a Cloud Controller included: each
    // node's pings carry its own row to its peers.
    wait_until(
        SETTLE,
        "lon's RTT matrix holds every pair of sites",
        || async {
            let sites = lon.json("/v1/sites").await;
            let m = &sites["rtt_matrix"];
            SITES
                .iter()
                .all(|a| {
                    SITES
                        .iter()
                        .all(|b| a == b || m[a][b].as_f64().is_some_and(|ms| ms > 0.0))
                })
                .then_some(())
        },
    )
    .await;

    let url = format!("http://{}/#token={}", lon.admin_addr(), lon.token());
    let dom = chromium(&url, None).await;
    assert!(
        dom.contains("data-state=\"ready\""),
        "the page never got ready:\n{dom}"
    );
    for site in SITES {
        assert!(
            dom.contains(&format!("data-site=\"{site}\"")),
            "no card for {site}:\n{dom}"
        );
        assert!(
            dom.contains(&format!("data-node=\"{site}-1\"")),
            "no node of {site}:\n{dom}"
        );
    }
    // uPlot draws into a canvas inside `.u-wrap`; the page says how many points it plotted.
    assert!(
        dom.matches("class=\"u-wrap\"").count() >= 4,
        "charts missing:\n{dom}"
    );
    assert!(
        dom.matches("<canvas").count() >= 4,
        "canvases missing:\n{dom}"
    );
    for chart in ["chart-rps", "chart-err", "chart-rtt", "chart-routes"] {
        let points: usize = attr_of(&dom, chart, "data-points")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{chart} has no data-points:\n{dom}"));
        assert!(points >= 2, "{chart} plots {points} points");
    }
    let series = attr_of(&dom, "chart-rps", "data-series").unwrap_or_default();
    assert_eq!(series, "lon|nyc|sgp", "requests/s per site");
    assert!(
        dom.contains("data-kind=\"write\""),
        "the policy write is not listed:\n{dom}"
    );
    assert!(dom.contains("data-kind=\"sync\""), "no sync event:\n{dom}");
    // The RTT matrix shows a number in every cell: every site's row, not only lon's.
    let matrix = dom
        .split_once("<table id=\"rtt\">")
        .and_then(|(_, rest)| rest.split_once("</table>"))
        .map(|(table, _)| table)
        .unwrap_or_else(|| panic!("no RTT matrix:\n{dom}"));
    assert_eq!(
        matrix.matches("<td").count(),
        SITES.len() * SITES.len(),
        "{matrix}"
    );
    assert!(
        !matrix.contains("muted"),
        "a cell of the RTT matrix has no number:\n{matrix}"
    );

    // The screenshot with traffic still flowing, so its charts are live.
    let http_addr = lon.http_addr();
    let flowing = tokio::spawn(async move {
        let http = reqwest::Client::new();
        for i in 0u64.. {
            let site = SITES[usize::try_from(i % 3).unwrap_or(0)];
            let _ = http
                .get(format!("http://{http_addr}/"))
                .header("host", format!("app-{site}.apps.example.com"))
                .send()
                .await;
            tokio::time::sleep(Duration::from_millis(20 + 10 * (i % 3))).await;
        }
    });
    let shot = match std::env::var_os("GROUTER_DASHBOARD_SCREENSHOT") {
        Some(p) => std::path::PathBuf::from(p),
        None => std::env::temp_dir().join(format!("grouter-dashboard-{}.png", std::process::id())),
    };
    chromium(&url, Some(&shot)).await;
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    flowing.abort();

    // A drained site: lon's `/healthz` answers 503 and the page says why.
    let (status, body) = lon
        .put("/v1/policies/sites/lon", &json!({"drained": true}))
        .await;
    assert_eq!(status, 200, "{body}");
    wait_until(SETTLE, "lon's /healthz 503", || async {
        let resp = reqwest::get(format!("http://{}/healthz", lon.admin_addr()))
            .await
            .ok()?;
        (resp.status() == 503).then_some(())
    })
    .await;
    let dom = chromium(&url, None).await;
    assert!(dom.contains("data-health=\"site_drained\""), "{dom}");
    assert!(dom.contains("its site is drained by policy"), "{dom}");
    assert!(
        dom.contains("data-marker=\"drained\""),
        "no drained marker:\n{dom}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_shows_a_refusal_and_no_data() {
    let bus = NatsServer::start();
    let lon = Node::builder("lon-1", "lon").nats(&bus.url()).start().await;
    let url = format!("http://{}/#token=not-the-token", lon.admin_addr());
    let dom = chromium(&url, None).await;
    assert!(dom.contains("data-state=\"login\""), "{dom}");
    assert!(dom.contains("The token was refused (401)"), "{dom}");
    assert!(!dom.contains("data-site="), "{dom}");
    assert!(
        !dom.contains("not-the-token"),
        "the token stays out of the DOM:\n{dom}"
    );
}

/// A node that stops answering: the page (served here from the node's own assets) finds
/// every `/v1/*` and `/healthz` connection closed without an answer, and says the node
/// cannot be reached, with the token kept out of the DOM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_node_is_named_as_such() {
    let bus = NatsServer::start();
    let lon = Node::builder("lon-1", "lon").nats(&bus.url()).start().await;
    let origin = format!("http://{}", lon.admin_addr());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let front = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let origin = origin.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let origin = origin.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            if path != "/" && !path.starts_with("/dashboard/") {
                                // The API is gone: the connection closes with no answer.
                                return Err(std::io::Error::other("unreachable"));
                            }
                            let resp = reqwest::get(format!("{origin}{path}"))
                                .await
                                .map_err(std::io::Error::other)?;
                            let kind = resp.headers().get("content-type").cloned();
                            let body = resp.bytes().await.map_err(std::io::Error::other)?;
                            let mut out = hyper::Response::new(http_body_util::Full::new(body));
                            if let Some(k) = kind {
                                out.headers_mut().insert("content-type", k);
                            }
                            Ok(out)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    let url = format!("http://{front}/#token={}", lon.token());
    let dom = chromium(&url, None).await;
    server.abort();
    assert!(dom.contains("data-state=\"unreachable\""), "{dom}");
    assert!(dom.contains("This node cannot be reached"), "{dom}");
    assert!(
        !dom.contains(lon.token()),
        "the token stays out of the DOM:\n{dom}"
    );
}
