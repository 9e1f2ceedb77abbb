//! One function per `gcf` command: fetch from the admin API, turn the answer into rows or
//! `key: value` pairs, write them to `out`.
//!
//! Owns: what each command shows (columns, cell formats, empty-list messages, `--json`)
//! and the `gcf api` flow (check `/healthz`, then save the target).
//!
//! Must never: read flags or the environment (main does; this takes explicit paths so
//! tests need no global state), exit the process, or print the token. The `*_rows` and
//! `*_pairs` functions are pure so each command's output is unit-tested from sample JSON.

use std::io::Write;
use std::path::Path;

use anyhow::{Result, anyhow, bail};
use serde_json::Value;

use crate::api::{
    App, AppsBody, Client, JsonText, Peer, PeersBody, Route, RoutesBody, SiteInfo, SitesBody,
    Status,
};
use crate::table;
use crate::target::{self, Target};

/// The error for commands run before `gcf api`; the wording follows cf.
pub const NO_TARGET: &str = "No API endpoint set. Use 'gcf api URL --token-file FILE' to set one.";

/// Shown for a value the API did not send.
const MISSING: &str = "-";

/// Headers of `gcf sites`.
pub const SITES_HEADERS: [&str; 6] = ["site", "region", "healthy", "rtt", "routes", "nodes"];
/// Headers of `gcf routes`.
pub const ROUTES_HEADERS: [&str; 4] = ["host", "path", "app", "sites"];
/// Headers of `gcf apps`.
pub const APPS_HEADERS: [&str; 6] = ["name", "org", "space", "sites", "instances", "routes"];
/// Headers of the per-site table of `gcf app`.
pub const APP_SITES_HEADERS: [&str; 3] = ["site", "instances", "app guid"];

/// A client for the saved target, or the cf-like "No API endpoint set" error.
pub fn connect(config: &Path) -> Result<Client> {
    let Some(target) = target::load(config)? else {
        bail!(NO_TARGET);
    };
    Client::new(&target.api, target.token.as_deref())
}

/// `gcf api` without a URL: show the saved target.
pub fn api_show(config: &Path, out: &mut dyn Write) -> Result<()> {
    match target::load(config)? {
        Some(target) => {
            out.write_all(table::render_pairs(&target_pairs(&target, None)).as_bytes())?
        }
        None => writeln!(
            out,
            "No API endpoint set. Use 'gcf api URL --token-file FILE' to set one."
        )?,
    }
    Ok(())
}

/// `gcf api URL [--token-file F]`: check that `URL/healthz` answers, then save the
/// target. Nothing is saved when the check fails.
///
/// Without `--token-file` the saved token is kept if the URL is unchanged (re-targeting
/// the same node should not log you out) and dropped otherwise (a token belongs to one
/// mesh's admin API).
pub fn api_set(
    config: &Path,
    url: &str,
    token_file: Option<&Path>,
    out: &mut dyn Write,
) -> Result<()> {
    let api = target::normalize_url(url)?;
    // Read the token before touching the network: a bad flag is reported as such.
    let token = match token_file {
        Some(path) => Some(target::read_token_file(path)?),
        None => match target::load(config) {
            Ok(Some(old)) if old.api == api => old.token,
            _ => None,
        },
    };
    writeln!(out, "Setting API endpoint to {api}...")?;
    out.flush()?;
    let health = Client::new(&api, None)?.healthz()?;
    let target = Target { api, token };
    target::save(config, &target)?;
    writeln!(out, "OK")?;
    writeln!(out)?;
    out.write_all(table::render_pairs(&target_pairs(&target, Some(&health))).as_bytes())?;
    Ok(())
}

fn target_pairs(
    target: &Target,
    health: Option<&crate::api::Health>,
) -> Vec<(&'static str, String)> {
    let mut pairs = vec![("api endpoint", target.api.clone())];
    if let Some(health) = health {
        let status = if health.serving {
            health.status.clone()
        } else {
            format!("{} (not serving)", health.status)
        };
        pairs.push(("node status", or_missing(&status)));
        pairs.push(("sync", or_missing(&health.sync)));
    }
    let token = if target.token.is_some() {
        "set"
    } else {
        "none (use --token-file)"
    };
    pairs.push(("token", token.to_owned()));
    pairs
}

/// `gcf status`.
pub fn status(client: &Client, json: bool, out: &mut dyn Write) -> Result<()> {
    let body = client.get("/v1/status", &[])?;
    if json {
        return print_json(body.text(), out);
    }
    let status: Status = body.parse()?;
    out.write_all(table::render_pairs(&status_pairs(client.base(), &status)).as_bytes())?;
    Ok(())
}

/// The `key: value` lines of `gcf status`, like `cf target`.
pub fn status_pairs(api: &str, s: &Status) -> Vec<(&'static str, String)> {
    let mut pairs = vec![
        ("api endpoint", api.to_owned()),
        ("node", or_missing(&s.node_id)),
        ("site", or_missing(&s.site)),
        ("region", opt(s.region.as_deref())),
        ("generation", opt(s.generation)),
        ("sync", or_missing(&s.sync)),
        ("routes", opt(s.routes)),
    ];
    if let Some(n) = s.local_routes {
        pairs.push(("local routes", n.to_string()));
    }
    if let Some(n) = s.local_endpoints {
        pairs.push(("local endpoints", n.to_string()));
    }
    pairs.push(("peers alive", opt(s.peers_alive)));
    pairs.push((
        "uptime",
        s.uptime_secs
            .map_or_else(|| MISSING.to_owned(), format_uptime),
    ));
    pairs
}

/// `gcf sites`.
pub fn sites(client: &Client, json: bool, out: &mut dyn Write) -> Result<()> {
    let body = client.get("/v1/sites", &[])?;
    if json {
        return print_json(body.text(), out);
    }
    let sites: SitesBody = body.parse()?;
    print_table(
        &SITES_HEADERS,
        &site_rows(&sites.sites),
        "No sites found.",
        out,
    )
}

/// Rows of `gcf sites`: nodes as `lon-1 (alive), lon-2 (suspect)`.
pub fn site_rows(sites: &[SiteInfo]) -> Vec<Vec<String>> {
    sites
        .iter()
        .map(|s| {
            let nodes: Vec<String> = s
                .nodes
                .iter()
                .map(|n| {
                    if n.state.is_empty() {
                        n.node_id.clone()
                    } else {
                        format!("{} ({})", n.node_id, n.state)
                    }
                })
                .collect();
            vec![
                s.site.clone(),
                opt(s.region.as_deref()),
                s.healthy
                    .map_or(MISSING, |h| if h { "yes" } else { "no" })
                    .to_owned(),
                s.rtt_ms.map_or_else(|| MISSING.to_owned(), format_rtt),
                opt(s.routes),
                if nodes.is_empty() {
                    MISSING.to_owned()
                } else {
                    nodes.join(", ")
                },
            ]
        })
        .collect()
}

/// `gcf routes [--site S]`.
pub fn routes(client: &Client, site: Option<&str>, json: bool, out: &mut dyn Write) -> Result<()> {
    let query: Vec<(&str, &str)> = site.map(|s| ("site", s)).into_iter().collect();
    let body = client.get("/v1/routes", &query)?;
    if json {
        return print_json(body.text(), out);
    }
    let routes: RoutesBody = body.parse()?;
    print_table(
        &ROUTES_HEADERS,
        &route_rows(&routes.routes),
        "No routes found.",
        out,
    )
}

/// Rows of `gcf routes`: sites as `lon* (2), nyc (3)`, `*` marking the local site and the
/// number counting endpoints.
pub fn route_rows(routes: &[Route]) -> Vec<Vec<String>> {
    routes
        .iter()
        .map(|r| {
            let sites: Vec<String> = r
                .sites
                .iter()
                .map(|s| {
                    format!(
                        "{}{} ({})",
                        s.site,
                        if s.local { "*" } else { "" },
                        s.endpoints
                    )
                })
                .collect();
            vec![
                r.host.clone(),
                r.path.clone(),
                r.app_id.clone(),
                sites.join(", "),
            ]
        })
        .collect()
}

/// `gcf apps [--site S]`.
pub fn apps(client: &Client, site: Option<&str>, json: bool, out: &mut dyn Write) -> Result<()> {
    let query: Vec<(&str, &str)> = site.map(|s| ("site", s)).into_iter().collect();
    let body = client.get("/v1/apps", &query)?;
    if json {
        return print_json(body.text(), out);
    }
    let apps: AppsBody = body.parse()?;
    print_table(&APPS_HEADERS, &app_rows(&apps.apps), "No apps found.", out)
}

/// Rows of `gcf apps`, the global `cf apps`, one per app across foundations:
/// `shop  acme  prod  lon, nyc  lon:2 nyc:3  routes` (an app without org and space tags is
/// its own row per GUID, with `-` for them).
pub fn app_rows(apps: &[App]) -> Vec<Vec<String>> {
    apps.iter()
        .map(|a| {
            vec![
                app_name(a).to_owned(),
                opt(a.org.as_deref()),
                opt(a.space.as_deref()),
                a.sites
                    .iter()
                    .map(|s| s.site.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                a.sites
                    .iter()
                    .map(|s| format!("{}:{}", s.site, s.instances))
                    .collect::<Vec<_>>()
                    .join(" "),
                a.routes.join(", "),
            ]
        })
        .collect()
}

/// An app's display name: its name, else its id.
fn app_name(app: &App) -> &str {
    app.name
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(&app.app_id)
}

/// `org/space/name` of a tagged app, else its id: what names it unambiguously.
fn qualified(app: &App) -> String {
    match (
        app.org.as_deref(),
        app.space.as_deref(),
        app.name.as_deref(),
    ) {
        (Some(org), Some(space), Some(name)) => format!("{org}/{space}/{name}"),
        _ => app.app_id.clone(),
    }
}

/// `gcf app NAME`.
pub fn app(client: &Client, name: &str, json: bool, out: &mut dyn Write) -> Result<()> {
    let body = client.get("/v1/apps", &[])?;
    if json {
        // Find the app with the typed view, then print that element with its keys in the
        // order received.
        let apps: AppsBody = body.parse()?;
        let index = find_app(&apps.apps, name)?;
        let raw: RawApps = body.parse()?;
        let text = raw.apps.get(index).map_or("null", |t| t.0.as_str());
        return print_json(text, out);
    }
    let apps: AppsBody = body.parse()?;
    let app = &apps.apps[find_app(&apps.apps, name)?];
    out.write_all(app_detail(app).as_bytes())?;
    Ok(())
}

/// The apps list with each app kept as its original text, for `gcf app NAME --json`.
#[derive(serde::Deserialize)]
struct RawApps {
    #[serde(default)]
    apps: Vec<JsonText>,
}

/// Index of the app called `name`: its id (`org/space/name` for a tagged app, else its
/// GUID), `org/space/name`, or one of its GUIDs at any site wins; otherwise the name must
/// match exactly one app (names are not unique across orgs and spaces).
pub fn find_app(apps: &[App], name: &str) -> Result<usize> {
    if let Some(i) = apps
        .iter()
        .position(|a| a.app_id == name || qualified(a) == name)
    {
        return Ok(i);
    }
    if let Some(i) = apps.iter().position(|a| {
        a.sites
            .iter()
            .any(|s| s.app_guids.iter().any(|g| g == name))
    }) {
        return Ok(i);
    }
    let matches: Vec<usize> = (0..apps.len())
        .filter(|&i| apps[i].name.as_deref() == Some(name))
        .collect();
    match matches.as_slice() {
        [] => Err(anyhow!("App '{name}' not found.")),
        [i] => Ok(*i),
        many => {
            let ids: Vec<String> = many.iter().map(|&i| qualified(&apps[i])).collect();
            Err(anyhow!(
                "App name '{name}' is ambiguous: it names {} apps: {}. Use 'gcf app ORG/SPACE/NAME' (or an app GUID).",
                ids.len(),
                ids.join(", ")
            ))
        }
    }
}

/// The `cf app`-like block for one app: `key: value` lines, a blank line, then a
/// per-site instances table.
pub fn app_detail(app: &App) -> String {
    let total: u64 = app.sites.iter().map(|s| s.instances).sum();
    let pairs = vec![
        ("name", app_name(app).to_owned()),
        ("org", opt(app.org.as_deref())),
        ("space", opt(app.space.as_deref())),
        ("app id", or_missing(&app.app_id)),
        (
            "routes",
            if app.routes.is_empty() {
                MISSING.to_owned()
            } else {
                app.routes.join(", ")
            },
        ),
        (
            "sites",
            if app.sites.is_empty() {
                MISSING.to_owned()
            } else {
                app.sites
                    .iter()
                    .map(|s| s.site.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        ("instances", total.to_string()),
        ("policy", policy_text(&app.policy)),
    ];
    let mut out = table::render_pairs(&pairs);
    out.push('\n');
    if app.sites.is_empty() {
        out.push_str("No instances found.\n");
    } else {
        let rows: Vec<Vec<String>> = app
            .sites
            .iter()
            .map(|s| {
                vec![
                    s.site.clone(),
                    s.instances.to_string(),
                    if s.app_guids.is_empty() {
                        MISSING.to_owned()
                    } else {
                        s.app_guids.join(", ")
                    },
                ]
            })
            .collect();
        out.push_str(&table::render(&APP_SITES_HEADERS, &rows));
    }
    out
}

/// A policy object as `key=value, ...`; `default` when there is none.
fn policy_text(policy: &Value) -> String {
    match policy {
        Value::Null => "default".to_owned(),
        Value::Object(map) if map.is_empty() => "default".to_owned(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", cell(v)))
            .collect::<Vec<_>>()
            .join(", "),
        other => cell(other),
    }
}

/// `gcf peers`.
pub fn peers(client: &Client, json: bool, out: &mut dyn Write) -> Result<()> {
    let body = client.get("/v1/peers", &[])?;
    if json {
        return print_json(body.text(), out);
    }
    let peers: PeersBody = body.parse()?;
    let (headers, rows) = peer_table(&peers.into_peers());
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    print_table(&headers, &rows, "No peers found.", out)
}

/// The peers table: columns are the union of the objects' keys in first-seen order; a
/// key an object lacks shows as `-`; an entry that is not an object goes in a `peer`
/// column.
pub fn peer_table(peers: &[Peer]) -> (Vec<String>, Vec<Vec<String>>) {
    const OTHER: &str = "peer";
    let mut headers: Vec<String> = Vec::new();
    for peer in peers {
        let keys: Vec<&str> = match peer {
            Peer::Object(obj) => obj.0.iter().map(|(k, _)| k.as_str()).collect(),
            Peer::Other(_) => vec![OTHER],
        };
        for key in keys {
            if !headers.iter().any(|h| h == key) {
                headers.push(key.to_owned());
            }
        }
    }
    let rows = peers
        .iter()
        .map(|peer| {
            headers
                .iter()
                .map(|h| match peer {
                    Peer::Object(obj) => obj
                        .0
                        .iter()
                        .find(|(k, _)| k == h)
                        .map_or_else(|| MISSING.to_owned(), |(_, v)| cell(v)),
                    Peer::Other(v) if h == OTHER => cell(v),
                    Peer::Other(_) => MISSING.to_owned(),
                })
                .collect()
        })
        .collect();
    (headers, rows)
}

/// A JSON value as a table cell: strings bare, `null` and empty objects as `-`, arrays of
/// scalars joined with `, `, objects of scalars as `key=value, …` (a peer's `rejections`
/// read `bad_signature=3, over_limit=1`), anything nested deeper as compact JSON.
fn cell(value: &Value) -> String {
    let scalar = |v: &Value| !v.is_array() && !v.is_object();
    match value {
        Value::Null => MISSING.to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(scalar) => {
            items.iter().map(cell).collect::<Vec<_>>().join(", ")
        }
        Value::Object(map) if map.is_empty() => MISSING.to_owned(),
        Value::Object(map) if map.values().all(scalar) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", cell(v)))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

fn print_json(text: &str, out: &mut dyn Write) -> Result<()> {
    writeln!(out, "{}", table::pretty_json(text))?;
    Ok(())
}

fn print_table(
    headers: &[&str],
    rows: &[Vec<String>],
    empty: &str,
    out: &mut dyn Write,
) -> Result<()> {
    if rows.is_empty() {
        writeln!(out, "{empty}")?;
    } else {
        out.write_all(table::render(headers, rows).as_bytes())?;
    }
    Ok(())
}

fn or_missing(s: &str) -> String {
    if s.is_empty() {
        MISSING.to_owned()
    } else {
        s.to_owned()
    }
}

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| MISSING.to_owned(), |v| v.to_string())
}

/// `12ms`, `0.4ms`: whole milliseconds when that loses nothing visible.
fn format_rtt(ms: f64) -> String {
    if ms >= 10.0 || ms.fract() == 0.0 {
        format!("{ms:.0}ms")
    } else {
        format!("{ms:.1}ms")
    }
}

/// `3d 4h 5m 6s`, leading zero units left out.
fn format_uptime(secs: u64) -> String {
    let units = [
        (secs / 86_400, "d"),
        (secs / 3_600 % 24, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
    ];
    let first = units
        .iter()
        .position(|(n, _)| *n > 0)
        .unwrap_or(units.len() - 1);
    units[first..]
        .iter()
        .map(|(n, u)| format!("{n}{u}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::net::{TcpListener, TcpStream};
    use std::sync::mpsc;

    use super::*;
    use crate::api;
    use crate::target::tests::TempDir;

    const ROUTES_JSON: &str = r#"{"routes":[
        {"host":"shop.apps.example.com","path":"","app_id":"5e1c-aa","sites":[
            {"site":"lon","endpoints":2,"local":true,"nodes":["lon-1"],"updated_at":1700000000000},
            {"site":"nyc","endpoints":3,"local":false,"nodes":["nyc-1","nyc-2"],"updated_at":1700000000001}]},
        {"host":"*.apps.example.com","path":"/api","app_id":"77b0","sites":[
            {"site":"sgp","endpoints":1,"local":false,"nodes":["sgp-1"],"updated_at":1}]}]}"#;

    const APPS_JSON: &str = r#"{"apps":[
        {"app_id":"acme/prod/shop","name":"shop","org":"acme","space":"prod",
         "routes":["shop.apps.example.com","shop.apps.example.com/cart"],
         "sites":[{"site":"lon","instances":2,"app_guids":["5e1c-aa"]},
                  {"site":"nyc","instances":3,"app_guids":["9f00-bb"]}],
         "policy":{"remote":"proxy","sites":["lon","nyc"]}},
        {"app_id":"77b0","name":null,"org":null,"space":null,"routes":["*.apps.example.com/api"],
         "sites":[{"site":"sgp","instances":1,"app_guids":["77b0"]}],"policy":null},
        {"app_id":"acme/prod/twin","name":"twin","org":"acme","space":"prod","routes":[],"sites":[],"policy":{}},
        {"app_id":"beta/dev/twin","name":"twin","org":"beta","space":"dev","routes":[],"sites":[],"policy":{}}]}"#;

    fn rows(lines: &[&[&str]]) -> Vec<Vec<String>> {
        lines
            .iter()
            .map(|l| l.iter().map(|c| (*c).to_owned()).collect())
            .collect()
    }

    fn output(f: impl FnOnce(&mut Vec<u8>) -> Result<()>) -> String {
        let mut out = Vec::new();
        f(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn status_pairs_read_like_cf_target() {
        let status: Status = serde_json::from_str(
            r#"{"node_id":"lon-1","site":"lon","region":null,"generation":3,"sync":"in_sync",
                "routes":12,"peers_alive":2,"uptime_secs":3723,"new_field":[1]}"#,
        )
        .unwrap();
        let text = table::render_pairs(&status_pairs("http://127.0.0.1:9090", &status));
        let want = "\
api endpoint:   http://127.0.0.1:9090
node:           lon-1
site:           lon
region:         -
generation:     3
sync:           in_sync
routes:         12
peers alive:    2
uptime:         1h 2m 3s
";
        assert_eq!(text, want);
    }

    #[test]
    fn uptime_and_rtt_formats() {
        assert_eq!(format_uptime(0), "0s");
        assert_eq!(format_uptime(59), "59s");
        assert_eq!(format_uptime(3600), "1h 0m 0s");
        assert_eq!(format_uptime(2 * 86_400 + 5), "2d 0h 0m 5s");
        assert_eq!(format_rtt(12.0), "12ms");
        assert_eq!(format_rtt(73.6), "74ms");
        assert_eq!(format_rtt(0.42), "0.4ms");
    }

    #[test]
    fn site_rows_from_sample_json() {
        let body: SitesBody = serde_json::from_str(
            r#"{"sites":[
                {"site":"lon","region":"eu","healthy":true,"rtt_ms":null,"routes":4,
                 "nodes":[{"node_id":"lon-1","state":"alive","last_seen_ms":10},
                          {"node_id":"lon-2","state":"suspect","last_seen_ms":9000}]},
                {"site":"nyc","region":"us","healthy":false,"rtt_ms":73.2,"routes":0,"nodes":[]}]}"#,
        )
        .unwrap();
        assert_eq!(
            site_rows(&body.sites),
            rows(&[
                &[
                    "lon",
                    "eu",
                    "yes",
                    "-",
                    "4",
                    "lon-1 (alive), lon-2 (suspect)"
                ],
                &["nyc", "us", "no", "73ms", "0", "-"],
            ])
        );
    }

    #[test]
    fn route_rows_mark_the_local_site_and_count_endpoints() {
        let body: RoutesBody = serde_json::from_str(ROUTES_JSON).unwrap();
        assert_eq!(
            route_rows(&body.routes),
            rows(&[
                &["shop.apps.example.com", "", "5e1c-aa", "lon* (2), nyc (3)"],
                &["*.apps.example.com", "/api", "77b0", "sgp (1)"],
            ])
        );
    }

    #[test]
    fn app_rows_are_the_global_cf_apps() {
        let body: AppsBody = serde_json::from_str(APPS_JSON).unwrap();
        let got = app_rows(&body.apps);
        assert_eq!(
            got[0],
            rows(&[&[
                "shop",
                "acme",
                "prod",
                "lon, nyc",
                "lon:2 nyc:3",
                "shop.apps.example.com, shop.apps.example.com/cart"
            ]])[0]
        );
        // No name: the app id (its GUID) stands in; no org or space tags.
        assert_eq!(got[1][..3], ["77b0", "-", "-"]);
        let text = table::render(&APPS_HEADERS, &got[..2]);
        assert!(
            text.starts_with("name  org   space  sites     instances    routes\n"),
            "{text}"
        );
    }

    /// Issue 12: `gcf app` takes a name, `org/space/name` or any site's GUID, and says
    /// clearly when a name is ambiguous across orgs and spaces.
    #[test]
    fn find_app_by_name_qualified_name_or_guid() {
        let body: AppsBody = serde_json::from_str(APPS_JSON).unwrap();
        assert_eq!(find_app(&body.apps, "shop").unwrap(), 0);
        assert_eq!(find_app(&body.apps, "acme/prod/shop").unwrap(), 0);
        // Each foundation's GUID names the one app.
        assert_eq!(find_app(&body.apps, "5e1c-aa").unwrap(), 0);
        assert_eq!(find_app(&body.apps, "9f00-bb").unwrap(), 0);
        assert_eq!(find_app(&body.apps, "77b0").unwrap(), 1);
        assert_eq!(find_app(&body.apps, "beta/dev/twin").unwrap(), 3);
        assert_eq!(
            find_app(&body.apps, "nope").unwrap_err().to_string(),
            "App 'nope' not found."
        );
        assert!(find_app(&body.apps, "beta/prod/twin").is_err());
        // Names are not unique across orgs and spaces: ask for the full name instead of
        // guessing.
        let err = find_app(&body.apps, "twin").unwrap_err().to_string();
        assert_eq!(
            err,
            "App name 'twin' is ambiguous: it names 2 apps: acme/prod/twin, beta/dev/twin. \
             Use 'gcf app ORG/SPACE/NAME' (or an app GUID)."
        );
        // A missing name never matches the empty string.
        assert!(find_app(&[App::default()], "x").is_err());
    }

    #[test]
    fn app_detail_is_cf_app_like() {
        let body: AppsBody = serde_json::from_str(APPS_JSON).unwrap();
        let want = "\
name:        shop
org:         acme
space:       prod
app id:      acme/prod/shop
routes:      shop.apps.example.com, shop.apps.example.com/cart
sites:       lon, nyc
instances:   5
policy:      remote=proxy, sites=lon, nyc

site  instances  app guid
lon   2          5e1c-aa
nyc   3          9f00-bb
";
        assert_eq!(app_detail(&body.apps[0]), want);
        let none = app_detail(&body.apps[2]);
        assert!(
            none.contains("policy:      default\n") && none.ends_with("No instances found.\n"),
            "{none}"
        );
    }

    #[test]
    fn peer_table_columns_are_the_union_of_keys_in_first_seen_order() {
        let body: PeersBody = serde_json::from_str(
            r#"{"peers":[
                {"node_id":"nyc-1","addr":"127.0.0.1:7947","watermark":{"lon-1":5},
                 "rejections":{}},
                {"node_id":"sgp-1","state":"connecting","addr":null,"sites":["sgp","x"],
                 "rejections":{"bad_signature":3,"over_limit":1},"deep":{"a":[1]}},
                "odd"]}"#,
        )
        .unwrap();
        let (headers, got) = peer_table(&body.into_peers());
        assert_eq!(
            headers,
            [
                "node_id",
                "addr",
                "watermark",
                "rejections",
                "state",
                "sites",
                "deep",
                "peer"
            ]
        );
        assert_eq!(
            got,
            rows(&[
                &[
                    "nyc-1",
                    "127.0.0.1:7947",
                    "lon-1=5",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-"
                ],
                &[
                    "sgp-1",
                    "-",
                    "-",
                    "bad_signature=3, over_limit=1",
                    "connecting",
                    "sgp, x",
                    r#"{"a":[1]}"#,
                    "-"
                ],
                &["-", "-", "-", "-", "-", "-", "-", "odd"],
            ])
        );
    }

    /// A tiny admin API stand-in on a port-0 listener: `/healthz` for anyone, `/v1/*`
    /// only with `token`. Each request line is sent on the returned channel.
    fn serve(token: &'static str) -> (String, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (seen, requests) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                answer(stream, token, &seen);
            }
        });
        (base, requests)
    }

    fn answer(stream: TcpStream, token: &str, seen: &mpsc::Sender<String>) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let mut authorized = false;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 || line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("authorization")
                    && value.trim() == format!("Bearer {token}")
                {
                    authorized = true;
                }
            }
        }
        let _ = seen.send(request_line.trim_end().to_owned());
        let target = request_line.split_whitespace().nth(1).unwrap_or("");
        let path = target.split('?').next().unwrap_or("");
        let (status, body) = match path {
            "/healthz" => ("200 OK", r#"{"status":"ok","sync":"in_sync"}"#),
            p if p.starts_with("/v1/") && !authorized => (
                "401 Unauthorized",
                r#"{"error":"missing or invalid bearer token"}"#,
            ),
            "/v1/routes" => ("200 OK", ROUTES_JSON),
            "/v1/apps" => ("200 OK", APPS_JSON),
            "/v1/peers" => ("200 OK", r#"{"peers":[]}"#),
            _ => ("404 Not Found", r#"{"error":"no such resource"}"#),
        };
        let mut stream = stream;
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    }

    #[test]
    fn end_to_end_against_a_local_api() {
        let (base, requests) = serve("s3cret");
        let tmp = TempDir::new("e2e");
        let config = tmp.0.join("home").join("config.toml");
        let token_file = tmp.0.join("admin.token");
        std::fs::write(&token_file, "s3cret\n").unwrap();

        // Before `gcf api`: the cf-like error.
        assert_eq!(connect(&config).unwrap_err().to_string(), NO_TARGET);
        let shown = output(|out| api_show(&config, out));
        assert!(shown.starts_with("No API endpoint set."), "{shown}");

        // `gcf api URL --token-file F` checks /healthz, then saves.
        let text = output(|out| api_set(&config, &format!("{base}/"), Some(&token_file), out));
        assert!(
            text.starts_with(&format!("Setting API endpoint to {base}...\nOK\n")),
            "{text}"
        );
        assert!(
            text.contains("sync:") && text.contains("in_sync") && !text.contains("s3cret"),
            "{text}"
        );
        assert_eq!(requests.recv().unwrap(), "GET /healthz HTTP/1.1");
        let saved = target::load(&config).unwrap().unwrap();
        assert_eq!(
            saved,
            Target {
                api: base.clone(),
                token: Some("s3cret".into())
            }
        );
        let shown = output(|out| api_show(&config, out));
        assert!(
            shown.contains(&base) && shown.contains("token:") && !shown.contains("s3cret"),
            "{shown}"
        );

        // Re-targeting the same URL without --token-file keeps the token.
        output(|out| api_set(&config, &base, None, out));
        assert_eq!(
            target::load(&config).unwrap().unwrap().token.as_deref(),
            Some("s3cret")
        );
        requests.try_iter().for_each(drop);

        // `gcf routes --site S`: the table, and the site URL-encoded.
        let client = connect(&config).unwrap();
        let text = output(|out| routes(&client, Some("l o&n"), false, out));
        let want = "\
host                   path  app      sites
shop.apps.example.com        5e1c-aa  lon* (2), nyc (3)
*.apps.example.com     /api  77b0     sgp (1)
";
        assert_eq!(text, want);
        assert_eq!(
            requests.recv().unwrap(),
            "GET /v1/routes?site=l+o%26n HTTP/1.1"
        );

        // `--json`: the API's JSON, pretty-printed, keys in the order received.
        let text = output(|out| routes(&client, None, true, out));
        assert_eq!(text, format!("{}\n", table::pretty_json(ROUTES_JSON)));
        assert!(text.starts_with("{\n  \"routes\": [\n    {\n      \"host\": \"shop.apps.example.com\",\n      \"path\""), "{text}");
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            serde_json::from_str::<serde_json::Value>(ROUTES_JSON).unwrap()
        );

        // `gcf app NAME` and `gcf app NAME --json`; unknown apps fail.
        let text = output(|out| app(&client, "shop", false, out));
        assert!(text.starts_with("name:        shop\n"), "{text}");
        let text = output(|out| app(&client, "shop", true, out));
        assert!(
            text.starts_with("{\n  \"app_id\": \"acme/prod/shop\",\n  \"name\": \"shop\""),
            "{text}"
        );
        let mut sink = Vec::new();
        let err = app(&client, "nope", false, &mut sink).unwrap_err();
        assert_eq!(err.to_string(), "App 'nope' not found.");

        // Empty lists say so.
        assert_eq!(
            output(|out| peers(&client, false, out)),
            "No peers found.\n"
        );

        // An endpoint the node does not offer: the status and URL are named.
        let err = sites(&client, false, &mut sink).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("{base}/v1/sites: 404 Not Found: no such resource")
        );

        // A wrong token: the 401 message, nothing else.
        let wrong = api::Client::new(&base, Some("wrong")).unwrap();
        let err = routes(&wrong, None, false, &mut sink).unwrap_err();
        assert_eq!(err.to_string(), api::UNAUTHORIZED);
        let none = api::Client::new(&base, None).unwrap();
        assert_eq!(
            status(&none, false, &mut sink).unwrap_err().to_string(),
            api::UNAUTHORIZED
        );
    }

    #[test]
    fn unreachable_api_is_an_error_and_saves_nothing() {
        // Bind then drop: a port on which nothing listens.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let tmp = TempDir::new("unreachable");
        let config = tmp.0.join("config.toml");
        let mut out = Vec::new();
        let err = api_set(&config, &url, None, &mut out)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("cannot reach {url}/healthz: ")),
            "{err}"
        );
        assert_eq!(target::load(&config).unwrap(), None);

        // A command against a target that went away names the URL too.
        target::save(
            &config,
            &Target {
                api: url.clone(),
                token: Some("t".into()),
            },
        )
        .unwrap();
        let client = connect(&config).unwrap();
        let err = status(&client, false, &mut out).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("cannot reach {url}/v1/status: ")),
            "{err}"
        );
    }

    #[test]
    fn a_bad_token_file_fails_before_any_request() {
        let tmp = TempDir::new("badtoken");
        let config = tmp.0.join("config.toml");
        let mut out = Vec::new();
        let err = api_set(
            &config,
            "http://127.0.0.1:9",
            Some(&tmp.0.join("missing")),
            &mut out,
        )
        .unwrap_err();
        assert!(err.downcast_ref::<crate::UsageError>().is_some(), "{err}");
        assert!(out.is_empty());
        let err = api_set(&config, "ftp://x", None, &mut out).unwrap_err();
        assert!(err.downcast_ref::<crate::UsageError>().is_some(), "{err}");
    }
}
