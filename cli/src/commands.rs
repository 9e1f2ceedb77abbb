//! One function per `gcf` command: fetch from the admin API, turn the answer into rows or
//! `key: value` pairs, write them to `out`.
//!
//! Owns: what each command shows (columns, cell formats, empty-list messages, `--json`),
//! the `gcf api` flow (check `/healthz`, then save the target), `gcf target`, and the
//! `gcf scale` wait: polling the placement and drawing its progress (spinner lines on a
//! terminal, plain lines otherwise; the text itself comes from [`crate::placement`]).
//!
//! Must never: read flags or the environment (main does; this takes explicit paths, and
//! whether stdout is a terminal, so tests need no global state), exit the process, or
//! print the token. The `*_rows` and `*_pairs` functions are pure so each command's
//! output is unit-tested from sample JSON.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use serde_json::Value;

use crate::UsageError;
use crate::api::{
    App, AppsBody, AuditBody, AuditEntry, CertInfo, CertsBody, Client, JsonBody, JsonText, Peer,
    PeersBody, Placement, PlacementsBody, PoliciesBody, Route, RoutePolicyEntry, RoutesBody,
    SiteInfo, SitePolicyEntry, SitesBody, SitesSpec, Status, WriteReply,
};
use crate::placement::{self, PlainProgress};
use crate::policy::{self, Edit, Mode, Plan, Policy};
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

/// Headers of the route policy tables (`gcf policies` adds `updated` and `by`).
pub const ROUTE_POLICY_HEADERS: [&str; 7] = [
    "host", "mode", "regions", "weights", "drained", "updated", "by",
];
/// Headers of the site policy table of `gcf policies`.
pub const SITE_POLICY_HEADERS: [&str; 4] = ["site", "drained", "updated", "by"];
/// Headers of the table an app-level policy command prints after `OK`.
pub const EDIT_HEADERS: [&str; 6] = ["host", "write", "mode", "regions", "weights", "drained"];
/// Headers of `gcf certs`.
pub const CERTS_HEADERS: [&str; 5] = ["host", "source", "not after", "sans", "nodes serving"];
/// Headers of `gcf audit`.
pub const AUDIT_HEADERS: [&str; 5] = ["time", "node", "token", "action", "key"];

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
    // Org and space, like the token, belong to the API they were chosen at.
    let (org, space) = match target::load(config) {
        Ok(Some(old)) if old.api == api => (old.org, old.space),
        _ => (None, None),
    };
    let target = Target {
        api,
        token,
        org,
        space,
    };
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

/// Rows of `gcf sites`: nodes as `lon-1 (alive), lon-2 (suspect)`; a site drained by a
/// site policy reads `yes (drained)` in the healthy column.
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
                {
                    let healthy = s.healthy.map_or(MISSING, |h| if h { "yes" } else { "no" });
                    if s.drained == Some(true) {
                        format!("{healthy} (drained)")
                    } else {
                        healthy.to_owned()
                    }
                },
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

/// A policy object as `key=value; ...`; `default` when there is none.
///
/// Fields that set nothing (`"mode": null`) are left out, and fields are separated by
/// `; ` since a list value has commas of its own: `regions=eu, us; weights=lon=3, nyc=1`.
fn policy_text(policy: &Value) -> String {
    match policy {
        Value::Null => "default".to_owned(),
        Value::Object(map) => {
            let set = policy::normalize(map);
            if set.is_empty() {
                return "default".to_owned();
            }
            set.iter()
                .map(|(k, v)| format!("{k}={}", cell(v)))
                .collect::<Vec<_>>()
                .join("; ")
        }
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

/// `gcf policies`: every route and site policy in force.
pub fn policies(client: &Client, json: bool, out: &mut dyn Write) -> Result<()> {
    let body = client.get("/v1/policies", &[])?;
    if json {
        return print_json(body.text(), out);
    }
    let policies: PoliciesBody = body.parse()?;
    writeln!(out, "route policies")?;
    print_table(
        &ROUTE_POLICY_HEADERS,
        &route_policy_rows(&policies.routes),
        "No route policies.",
        out,
    )?;
    writeln!(out)?;
    writeln!(out, "site policies")?;
    print_table(
        &SITE_POLICY_HEADERS,
        &site_policy_rows(&policies.sites),
        "No site policies.",
        out,
    )
}

/// Rows of the route policies of `gcf policies`: unset fields `-`, regions and drained
/// sites as `eu, us`, weights as `lon=3, nyc=1`, the write's time (UTC) and node.
pub fn route_policy_rows(entries: &[RoutePolicyEntry]) -> Vec<Vec<String>> {
    entries
        .iter()
        .map(|e| {
            let mut row = vec![e.host.clone()];
            row.extend(policy_cells(&e.policy));
            row.push(
                e.written
                    .written_at_ms
                    .map_or_else(|| MISSING.to_owned(), format_time_ms),
            );
            row.push(or_missing(&e.written.written_by));
            row
        })
        .collect()
}

/// Rows of the site policies of `gcf policies`.
pub fn site_policy_rows(entries: &[SitePolicyEntry]) -> Vec<Vec<String>> {
    entries
        .iter()
        .map(|e| {
            let drained = match e.policy.get("drained") {
                Some(Value::Bool(true)) => "yes",
                Some(Value::Bool(false)) => "no",
                _ => MISSING,
            };
            vec![
                e.site.clone(),
                drained.to_owned(),
                e.written
                    .written_at_ms
                    .map_or_else(|| MISSING.to_owned(), format_time_ms),
                or_missing(&e.written.written_by),
            ]
        })
        .collect()
}

/// `mode`, `regions`, `weights`, `drained` of a route policy as cells.
fn policy_cells(policy: &Value) -> [String; 4] {
    ["mode", "regions", "weights", "drained"]
        .map(|k| policy.get(k).map_or_else(|| MISSING.to_owned(), cell))
}

/// The route hosts an app-level command writes to, and how its messages name them.
#[derive(Debug, PartialEq, Eq)]
pub struct Hosts {
    /// `app shop` or `route shop.apps.example.com`.
    pub label: String,
    /// Distinct lower-case route hosts, in the app's order.
    pub hosts: Vec<String>,
}

/// The route hosts `name` stands for: an app's (by name, `org/space/name`, id or GUID, as
/// `gcf app`), else a route host the mesh knows. Unknown names fail as `gcf app` does.
pub fn resolve_hosts(apps: &[App], routes: &[Route], name: &str) -> Result<Hosts> {
    match find_app(apps, name) {
        Ok(i) => {
            let app = &apps[i];
            let hosts = policy::route_hosts(app.routes.iter().map(String::as_str));
            if hosts.is_empty() {
                bail!(
                    "App '{}' has no routes: there is nothing to apply a route policy to.",
                    app_name(app)
                );
            }
            Ok(Hosts {
                label: format!("app {}", app_name(app)),
                hosts,
            })
        }
        Err(not_an_app) => {
            let host = name.to_ascii_lowercase();
            let known = routes.iter().any(|r| r.host.eq_ignore_ascii_case(&host))
                || apps.iter().any(|a| {
                    policy::route_hosts(a.routes.iter().map(String::as_str)).contains(&host)
                });
            if known {
                Ok(Hosts {
                    label: format!("route {host}"),
                    hosts: vec![host],
                })
            } else {
                Err(not_an_app)
            }
        }
    }
}

/// Refuse an edit that names a site or region no site of the mesh has, before anything
/// is written. (`Undrain` is checked by its caller: a site that left the mesh may still
/// be listed in a policy, and undraining it must stay possible.)
pub fn check_edit(edit: &Edit, sites: &[SiteInfo]) -> Result<()> {
    match edit {
        Edit::Pin(regions) => {
            let known: Vec<&str> = {
                // A site without a region is listed with `""` (or `null`): no region.
                let mut r: Vec<&str> = sites
                    .iter()
                    .filter_map(|s| s.region.as_deref())
                    .filter(|r| !r.is_empty())
                    .collect();
                r.sort_unstable();
                r.dedup();
                r
            };
            for region in regions {
                if !known.contains(&region.as_str()) {
                    bail!(
                        "Region '{region}' not found: no site is in it (regions: {}).",
                        list_or_none(&known)
                    );
                }
            }
            Ok(())
        }
        Edit::Weights(weights) => {
            for (site, _) in weights {
                check_site(site, sites)?;
            }
            Ok(())
        }
        Edit::Drain(site) => check_site(site, sites),
        Edit::Unpin | Edit::Mode(_) | Edit::Undrain(_) => Ok(()),
    }
}

/// `Site 'x' not found.` unless `site` is one of `sites`.
fn check_site(site: &str, sites: &[SiteInfo]) -> Result<()> {
    if sites.iter().any(|s| s.site == site) {
        return Ok(());
    }
    let names: Vec<&str> = sites.iter().map(|s| s.site.as_str()).collect();
    bail!("Site '{site}' not found (sites: {}).", list_or_none(&names))
}

fn list_or_none(items: &[&str]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

/// `gcf pin APP --regions eu,us`.
pub fn pin(
    client: &Client,
    app: &str,
    regions: &[String],
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let doing = |label: &str| format!("Pinning {label} to regions {}...", regions.join(", "));
    edit_routes(client, app, &Edit::Pin(regions.to_vec()), &doing, json, out)
}

/// `gcf unpin APP`.
pub fn unpin(client: &Client, app: &str, json: bool, out: &mut dyn Write) -> Result<()> {
    let doing = |label: &str| format!("Unpinning {label}...");
    edit_routes(client, app, &Edit::Unpin, &doing, json, out)
}

/// `gcf weights APP lon=3,nyc=1`.
pub fn weights(
    client: &Client,
    app: &str,
    weights: &[(String, u32)],
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let text = policy::weights_text(weights);
    let doing = |label: &str| format!("Setting weights {text} for {label}...");
    edit_routes(
        client,
        app,
        &Edit::Weights(weights.to_vec()),
        &doing,
        json,
        out,
    )
}

/// `gcf set-routing APP --mode proxy|redirect`.
pub fn set_routing(
    client: &Client,
    app: &str,
    mode: Mode,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let doing = |label: &str| format!("Setting routing mode of {label} to {}...", mode.as_str());
    edit_routes(client, app, &Edit::Mode(mode), &doing, json, out)
}

/// `gcf drain --site S [APP]`: the whole site (a site policy), or only APP's routes.
pub fn drain(
    client: &Client,
    site: &str,
    app: Option<&str>,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    match app {
        Some(app) => {
            let doing = |label: &str| format!("Draining site {site} for {label}...");
            edit_routes(
                client,
                app,
                &Edit::Drain(site.to_owned()),
                &doing,
                json,
                out,
            )
        }
        None => edit_site(client, site, true, json, out),
    }
}

/// `gcf undrain --site S [APP]`.
pub fn undrain(
    client: &Client,
    site: &str,
    app: Option<&str>,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    match app {
        Some(app) => {
            let doing = |label: &str| format!("Undraining site {site} for {label}...");
            edit_routes(
                client,
                app,
                &Edit::Undrain(site.to_owned()),
                &doing,
                json,
                out,
            )
        }
        None => edit_site(client, site, false, json, out),
    }
}

/// One route host's current policy and the write it needs.
#[derive(Debug)]
pub struct HostPlan {
    /// The route host.
    pub host: String,
    /// Its policy before (`None`: it had none).
    pub current: Option<Policy>,
    /// What it needs.
    pub plan: Plan,
}

/// The read-modify-write behind every app-level policy command: resolve the hosts, check
/// the edit, read every host's policy, and only then write (a `PUT` per changed host, a
/// `DELETE` where nothing is left, nothing where nothing changes).
fn edit_routes(
    client: &Client,
    name: &str,
    edit: &Edit,
    doing: &dyn Fn(&str) -> String,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let apps: AppsBody = client.get("/v1/apps", &[])?.parse()?;
    let routes: RoutesBody = client.get("/v1/routes", &[])?.parse()?;
    let target = resolve_hosts(&apps.apps, &routes.routes, name)?;
    let sites: SitesBody = client.get("/v1/sites", &[])?.parse()?;
    check_edit(edit, &sites.sites)?;
    let mut plans = Vec::with_capacity(target.hosts.len());
    for host in &target.hosts {
        let current = match client.get_opt(&["policies", "routes", host])? {
            Some(body) => Some(policy_object(&body.parse::<RoutePolicyEntry>()?.policy)),
            None => None,
        };
        let plan = policy::plan(current.as_ref(), edit);
        plans.push(HostPlan {
            host: host.clone(),
            current,
            plan,
        });
    }
    if let Edit::Undrain(site) = edit {
        let listed = plans.iter().any(|p| {
            p.current
                .as_ref()
                .is_some_and(|c| policy::drained(c).contains(site))
        });
        if !listed {
            check_site(site, &sites.sites)?;
        }
    }
    if !json {
        writeln!(out, "{}", doing(&target.label))?;
        out.flush()?;
    }
    let mut replies: Vec<JsonBody> = Vec::new();
    let mut written: Vec<&str> = Vec::new();
    for p in &plans {
        let segments = ["policies", "routes", p.host.as_str()];
        let reply = match &p.plan {
            Plan::Unchanged => continue,
            Plan::Put(policy) => client
                .put(&segments, &Value::Object(policy.clone()))
                .map(Some),
            // None: deleted elsewhere since the read, so nothing is left to delete.
            Plan::Delete => client.delete(&segments),
        };
        match reply {
            Ok(body) => {
                replies.extend(body);
                written.push(&p.host);
            }
            Err(err) => return Err(partial_failure(err, &written)),
        }
    }
    finish_writes(&replies, json, out)?;
    if !json {
        writeln!(out)?;
        out.write_all(table::render(&EDIT_HEADERS, &edit_rows(&plans)).as_bytes())?;
    }
    Ok(())
}

/// A failed write after others succeeded: say which ones, since nothing is rolled back.
fn partial_failure(err: anyhow::Error, written: &[&str]) -> anyhow::Error {
    if written.is_empty() {
        err
    } else {
        anyhow!(
            "{err:#}\nAlready written: {}. Run the command again to finish.",
            written.join(", ")
        )
    }
}

/// The `policy` of a route policy entry as an object (anything else: empty).
fn policy_object(value: &Value) -> Policy {
    value.as_object().cloned().unwrap_or_default()
}

/// Rows of the table after an app-level policy command: each host, what was written
/// (`updated`, `deleted`, `unchanged`) and its policy now.
pub fn edit_rows(plans: &[HostPlan]) -> Vec<Vec<String>> {
    plans
        .iter()
        .map(|p| {
            let (write, now) = match &p.plan {
                Plan::Unchanged => ("unchanged", p.current.clone().unwrap_or_default()),
                Plan::Put(policy) => ("updated", policy.clone()),
                Plan::Delete => ("deleted", Policy::new()),
            };
            let mut row = vec![p.host.clone(), write.to_owned()];
            row.extend(policy_cells(&Value::Object(policy::normalize(&now))));
            row
        })
        .collect()
}

/// `drain --site S` / `undrain --site S` without an app: the site policy.
fn edit_site(
    client: &Client,
    site: &str,
    drained: bool,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let sites: SitesBody = client.get("/v1/sites", &[])?.parse()?;
    let segments = ["policies", "sites", site];
    let current = match client.get_opt(&segments)? {
        Some(body) => Some(policy_object(&body.parse::<SitePolicyEntry>()?.policy)),
        None => None,
    };
    // Undraining a site that left the mesh must stay possible while a policy names it.
    if drained || current.is_none() {
        check_site(site, &sites.sites)?;
    }
    let plan = policy::site_plan(current.as_ref(), drained);
    if !json {
        let verb = if drained { "Draining" } else { "Undraining" };
        writeln!(out, "{verb} site {site}...")?;
        out.flush()?;
    }
    let reply = match plan {
        Plan::Unchanged => None,
        Plan::Put(policy) => Some(client.put(&segments, &Value::Object(policy))?),
        Plan::Delete => client.delete(&segments)?,
    };
    let replies: Vec<JsonBody> = reply.into_iter().collect();
    if !json && replies.is_empty() {
        let state = if drained {
            "already drained"
        } else {
            "not drained"
        };
        writeln!(out, "Site {site} is {state}.")?;
    }
    finish_writes(&replies, json, out)
}

/// After the writes: `--json` prints the replies as one JSON array (empty when nothing
/// needed writing); otherwise a warning for every write no peer has yet, then `OK`.
fn finish_writes(replies: &[JsonBody], json: bool, out: &mut dyn Write) -> Result<()> {
    if json {
        let texts: Vec<&str> = replies.iter().map(JsonBody::text).collect();
        return print_json(&format!("[{}]", texts.join(",")), out);
    }
    let parsed: Vec<WriteReply> = replies.iter().map(JsonBody::parse).collect::<Result<_>>()?;
    for line in unreplicated_warnings(&parsed) {
        writeln!(out, "{line}")?;
    }
    writeln!(out, "OK")?;
    Ok(())
}

/// One warning per node that stored a write no peer has received yet.
pub fn unreplicated_warnings(replies: &[WriteReply]) -> Vec<String> {
    let mut nodes: Vec<&str> = Vec::new();
    for reply in replies.iter().filter(|r| r.replicated == Some(false)) {
        let node = reply.node().unwrap_or("this node");
        if !nodes.contains(&node) {
            nodes.push(node);
        }
    }
    nodes
        .iter()
        .map(|node| {
            format!(
                "Warning: no peer is connected: stored at {node} only until peers connect, then it spreads to the mesh."
            )
        })
        .collect()
}

/// `gcf certs`.
pub fn certs(client: &Client, json: bool, out: &mut dyn Write) -> Result<()> {
    let body = client.get("/v1/certs", &[])?;
    if json {
        return print_json(body.text(), out);
    }
    let certs: CertsBody = body.parse()?;
    print_table(
        &CERTS_HEADERS,
        &cert_rows(&certs.certs),
        "No certificates found.",
        out,
    )
}

/// Rows of `gcf certs`.
pub fn cert_rows(certs: &[CertInfo]) -> Vec<Vec<String>> {
    let list = |items: &[String]| {
        if items.is_empty() {
            MISSING.to_owned()
        } else {
            items.join(", ")
        }
    };
    certs
        .iter()
        .map(|c| {
            vec![
                c.host.clone(),
                opt(c.source.as_deref()),
                opt(c.not_after.as_deref()),
                list(&c.sans),
                list(&c.nodes_serving),
            ]
        })
        .collect()
}

/// `gcf upload-cert HOST --cert F --key F`: both files are read (and must hold something)
/// before anything is sent.
pub fn upload_cert(
    client: &Client,
    host: &str,
    cert: &Path,
    key: &Path,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let cert_pem = read_pem(cert, "--cert")?;
    let key_pem = read_pem(key, "--key")?;
    if !json {
        writeln!(out, "Uploading certificate for {host}...")?;
        out.flush()?;
    }
    let body = serde_json::json!({"cert_pem": cert_pem, "key_pem": key_pem});
    let reply = client.put(&["certs", host], &body)?;
    if json {
        return print_json(reply.text(), out);
    }
    let parsed: WriteReply = reply.parse()?;
    for line in unreplicated_warnings(std::slice::from_ref(&parsed)) {
        writeln!(out, "{line}")?;
    }
    writeln!(out, "OK")?;
    writeln!(out)?;
    out.write_all(table::render_pairs(&upload_pairs(host, &parsed)).as_bytes())?;
    Ok(())
}

/// The `key: value` lines after an upload.
pub fn upload_pairs(host: &str, reply: &WriteReply) -> Vec<(&'static str, String)> {
    vec![
        (
            "host",
            reply.host.clone().unwrap_or_else(|| host.to_owned()),
        ),
        (
            "sans",
            if reply.sans.is_empty() {
                MISSING.to_owned()
            } else {
                reply.sans.join(", ")
            },
        ),
        ("not after", opt(reply.not_after.as_deref())),
        ("sha-256", opt(reply.fingerprint_sha256.as_deref())),
    ]
}

/// A PEM file's text; a missing, unreadable or empty file is a usage error naming `flag`.
fn read_pem(path: &Path, flag: &str) -> Result<String> {
    let at_fault = || format!("{flag} {}", path.display());
    let text = std::fs::read_to_string(path)
        .map_err(|err| UsageError::new(format!("{}: {err}", at_fault())))?;
    if text.trim().is_empty() {
        return Err(UsageError::new(format!("{}: the file is empty", at_fault())).into());
    }
    Ok(text)
}

/// `gcf delete-cert HOST`.
pub fn delete_cert(client: &Client, host: &str, json: bool, out: &mut dyn Write) -> Result<()> {
    if !json {
        writeln!(out, "Deleting certificate for {host}...")?;
        out.flush()?;
    }
    let Some(reply) = client.delete(&["certs", host])? else {
        bail!("No uploaded certificate for '{host}'.");
    };
    if json {
        return print_json(reply.text(), out);
    }
    finish_writes(std::slice::from_ref(&reply), false, out)
}

/// `gcf audit [--limit N]`.
pub fn audit(client: &Client, limit: Option<u32>, json: bool, out: &mut dyn Write) -> Result<()> {
    let limit = limit.map(|n| n.to_string());
    let query: Vec<(&str, &str)> = limit.as_deref().map(|n| ("limit", n)).into_iter().collect();
    let body = client.get("/v1/audit", &query)?;
    if json {
        return print_json(body.text(), out);
    }
    let audit: AuditBody = body.parse()?;
    print_table(
        &AUDIT_HEADERS,
        &audit_rows(&audit.entries),
        "No writes audited at this node.",
        out,
    )
}

/// Rows of `gcf audit`, newest first as the API sends them.
pub fn audit_rows(entries: &[AuditEntry]) -> Vec<Vec<String>> {
    entries
        .iter()
        .map(|e| {
            vec![
                e.at_ms.map_or_else(|| MISSING.to_owned(), format_time_ms),
                or_missing(&e.node_id),
                or_missing(&e.token),
                or_missing(&e.action),
                or_missing(&e.key),
            ]
        })
        .collect()
}

/// The error for a placement command run before `gcf target -o ORG -s SPACE`.
pub const NO_SPACE: &str =
    "No org and space targeted. Use 'gcf target -o ORG -s SPACE' to target them.";

/// A client for the saved target and its org and space: the cf-like "No API endpoint set"
/// error (exit 1) without a target, a usage error (exit 2) naming `gcf target -o ORG -s
/// SPACE` without an org or space.
pub fn connect_space(config: &Path) -> Result<(Client, String, String)> {
    let Some(target) = target::load(config)? else {
        bail!(NO_TARGET);
    };
    let (Some(org), Some(space)) = (target.org.clone(), target.space.clone()) else {
        return Err(UsageError::new(NO_SPACE).into());
    };
    let client = Client::new(&target.api, target.token.as_deref())?;
    Ok((client, org, space))
}

/// `gcf target` without flags: the API, org and space, like `cf target`.
pub fn target_show(config: &Path, out: &mut dyn Write) -> Result<()> {
    let Some(target) = target::load(config)? else {
        bail!(NO_TARGET);
    };
    out.write_all(table::render_pairs(&org_space_pairs(&target)).as_bytes())?;
    if target.org.is_none() || target.space.is_none() {
        writeln!(out)?;
        writeln!(
            out,
            "No org or space targeted, use 'gcf target -o ORG -s SPACE'."
        )?;
    }
    Ok(())
}

/// `gcf target [-o ORG] [-s SPACE]`: save the org and/or space beside the API target
/// (the one not given is kept), then show the target. Both names are checked before
/// anything is saved; there must be an API target already.
pub fn target_set(
    config: &Path,
    org: Option<&str>,
    space: Option<&str>,
    out: &mut dyn Write,
) -> Result<()> {
    let org = org.map(|o| target::check_name("-o", o)).transpose()?;
    let space = space.map(|s| target::check_name("-s", s)).transpose()?;
    let Some(mut target) = target::load(config)? else {
        bail!(NO_TARGET);
    };
    if org.is_some() {
        target.org = org;
    }
    if space.is_some() {
        target.space = space;
    }
    target::save(config, &target)?;
    out.write_all(table::render_pairs(&org_space_pairs(&target)).as_bytes())?;
    Ok(())
}

fn org_space_pairs(target: &Target) -> Vec<(&'static str, String)> {
    vec![
        ("api endpoint", target.api.clone()),
        ("org", opt(target.org.as_deref())),
        ("space", opt(target.space.as_deref())),
    ]
}

/// Where to place an app (`gcf scale`'s flags, parsed).
#[derive(Debug, Clone)]
pub struct ScaleRequest {
    /// `--sites`.
    pub sites: SitesSpec,
    /// `-i`; `None`: keep the instances the app has.
    pub instances: Option<u32>,
}

/// How `gcf scale` waits (`None` with `--no-wait`).
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    /// `--timeout`: give up after this long.
    pub timeout: Duration,
    /// Time between polls of the placement.
    pub interval: Duration,
}

impl Wait {
    /// The interval between polls of `gcf scale`.
    pub const INTERVAL: Duration = Duration::from_millis(500);
}

/// How `gcf scale` shows its progress while it waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// Spinner lines redrawn in place (stdout is a terminal).
    Terminal,
    /// A line per change of a site (stdout is a pipe or a file).
    Plain,
    /// Nothing until the end (`--json`).
    Json,
}

/// `gcf scale APP --sites N|LIST [-i K]`: write the desired placement, then (unless
/// `wait` is `None`) poll it until it is done, showing each site's progress, and end with
/// the `cf app`-like table. A refused write (400: unknown site, ...) writes nothing and
/// fails with the API's message; a chosen site that failed, or the timeout, fails after
/// the table.
#[allow(clippy::too_many_arguments)]
pub fn scale(
    client: &Client,
    org: &str,
    space: &str,
    app: &str,
    request: &ScaleRequest,
    wait: Option<Wait>,
    display: Display,
    out: &mut dyn Write,
) -> Result<()> {
    let segments = ["placements", org, space, app];
    let body = placement::request_body(&request.sites, request.instances);
    let json = display == Display::Json;
    if !json {
        let desired = placement::desired_text(&crate::api::Desired {
            sites: Some(request.sites.clone()),
            instances: request.instances.map(u64::from),
        });
        writeln!(
            out,
            "Scaling app {app} in org {org} / space {space} to {desired}..."
        )?;
        out.flush()?;
    }
    let reply = client.put(&segments, &body)?;
    let mut current: Placement = reply.parse()?;
    let mut text = reply.text().to_owned();
    if !json {
        writeln!(out, "OK")?;
    }
    let Some(wait) = wait else {
        if !json {
            writeln!(out)?;
        }
        return show_placement(&current, &text, json, out);
    };
    if !json {
        writeln!(out)?;
        writeln!(
            out,
            "Waiting for app {app} to run at {}...",
            if current.chosen.is_empty() {
                "no site".to_owned()
            } else {
                let names: Vec<String> = current
                    .chosen
                    .iter()
                    .map(|n| placement::site_name(n))
                    .collect();
                names.join(", ")
            }
        )?;
        out.flush()?;
    }
    let mut view = ProgressView::new(display)?;
    let deadline = Instant::now() + wait.timeout;
    let timed_out = loop {
        view.show(&current, out)?;
        if placement::is_done(&current) {
            break false;
        }
        let now = Instant::now();
        if now >= deadline {
            break true;
        }
        view.pause(wait.interval.min(deadline - now));
        let Some(body) = client.get_opt(&segments)? else {
            view.finish(out)?;
            bail!("The placement of {org}/{space}/{app} was deleted while waiting for it.");
        };
        current = body.parse()?;
        text = body.text().to_owned();
    };
    view.finish(out)?;
    if !json {
        writeln!(out)?;
    }
    show_placement(&current, &text, json, out)?;
    if timed_out {
        bail!(
            "Timed out after {} s waiting for app {app}: not done at {}.",
            wait.timeout.as_secs_f64(),
            placement::not_done(&current).join(", ")
        );
    }
    let failures = placement::failures(&current);
    if !failures.is_empty() {
        bail!(
            "App {app} failed at {} of {} chosen sites:\n{}",
            failures.len(),
            current.chosen.len().max(failures.len()),
            failures.join("\n")
        );
    }
    Ok(())
}

/// `gcf placement APP`.
pub fn placement(
    client: &Client,
    org: &str,
    space: &str,
    app: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let Some(body) = client.get_opt(&["placements", org, space, app])? else {
        bail!(
            "No placement for app {app} in org {org} / space {space}. Use 'gcf scale {app} --sites N' to place it."
        );
    };
    let current: Placement = body.parse()?;
    show_placement(&current, body.text(), json, out)
}

/// `gcf placements`.
pub fn placements(client: &Client, json: bool, out: &mut dyn Write) -> Result<()> {
    let body = client.get("/v1/placements", &[])?;
    if json {
        return print_json(body.text(), out);
    }
    let list: PlacementsBody = body.parse()?;
    print_table(
        &placement::LIST_HEADERS,
        &placement::list_rows(&list.placements),
        "No placements found.",
        out,
    )
}

/// The `cf app`-like block of one placement (or its JSON as received).
fn show_placement(current: &Placement, text: &str, json: bool, out: &mut dyn Write) -> Result<()> {
    if json {
        return print_json(text, out);
    }
    out.write_all(table::render_pairs(&placement::detail_pairs(current)).as_bytes())?;
    writeln!(out)?;
    print_table(
        &placement::SITE_HEADERS,
        &placement::site_rows(current),
        "No sites known.",
        out,
    )?;
    let errors = placement::error_lines(current);
    if !errors.is_empty() {
        writeln!(out, "\nerrors:")?;
        for line in errors {
            writeln!(out, "  {line}")?;
        }
    }
    Ok(())
}

/// The live progress of `gcf scale`.
enum ProgressView {
    /// One spinner line per site, drawn by indicatif straight to the terminal.
    Terminal(Box<TerminalProgress>),
    /// Lines written to `out` when a site's state changes.
    Plain(PlainProgress),
    /// Nothing.
    Quiet,
}

impl ProgressView {
    fn new(display: Display) -> Result<Self> {
        Ok(match display {
            Display::Terminal => ProgressView::Terminal(Box::new(TerminalProgress::new()?)),
            Display::Plain => ProgressView::Plain(PlainProgress::new()),
            Display::Json => ProgressView::Quiet,
        })
    }

    fn show(&mut self, current: &Placement, out: &mut dyn Write) -> Result<()> {
        match self {
            ProgressView::Terminal(t) => t.show(current),
            ProgressView::Plain(plain) => {
                for line in plain.changes(current) {
                    writeln!(out, "{line}")?;
                }
                out.flush()?;
            }
            ProgressView::Quiet => {}
        }
        Ok(())
    }

    /// Wait `pause` before the next poll (keeping spinners turning on a terminal).
    fn pause(&mut self, pause: Duration) {
        match self {
            ProgressView::Terminal(t) => t.pause(pause),
            ProgressView::Plain(_) | ProgressView::Quiet => std::thread::sleep(pause),
        }
    }

    /// Stop drawing; on a terminal, end the last spinner line.
    fn finish(&mut self, out: &mut dyn Write) -> Result<()> {
        if let ProgressView::Terminal(t) = self {
            if t.finish() {
                writeln!(out)?;
            }
        }
        Ok(())
    }
}

/// indicatif's spinner lines, one per site: `⠋ nyc  working  upload_droplet`, and `✓`
/// or `✗` in place of the spinner once the site is done.
///
/// The bars are ticked from this thread only (no steady-tick thread): main holds the
/// stdout lock for the whole command, and a drawing thread would block on it.
struct TerminalProgress {
    multi: indicatif::MultiProgress,
    bars: Vec<(String, indicatif::ProgressBar)>,
    spinning: indicatif::ProgressStyle,
    succeeded: indicatif::ProgressStyle,
    failed: indicatif::ProgressStyle,
}

impl TerminalProgress {
    /// How often spinners turn between polls.
    const TICK: Duration = Duration::from_millis(100);

    fn new() -> Result<Self> {
        use indicatif::{MultiProgress, ProgressDrawTarget, ProgressStyle};
        let style = |template: &str| ProgressStyle::with_template(template);
        Ok(Self {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
            bars: Vec::new(),
            spinning: style("{spinner} {prefix}  {msg}")?,
            succeeded: style("✓ {prefix}  {msg}")?,
            failed: style("✗ {prefix}  {msg}")?,
        })
    }

    fn show(&mut self, current: &Placement) {
        let width = current
            .sites
            .iter()
            .map(|s| &s.site)
            .chain(self.bars.iter().map(|(name, _)| name))
            .map(|name| placement::site_name(name).chars().count())
            .max()
            .unwrap_or(0);
        for site in &current.sites {
            let progress = placement::site_progress(current, site);
            let style = if !placement::site_done(current, site) {
                &self.spinning
            } else if progress.state == "failed" {
                &self.failed
            } else {
                &self.succeeded
            };
            let prefix = format!("{:<width$}", placement::site_name(&site.site));
            match self.bars.iter().find(|(name, _)| *name == site.site) {
                Some((_, bar)) => {
                    bar.set_style(style.clone());
                    bar.set_prefix(prefix);
                    bar.set_message(progress.tty_message());
                }
                None => {
                    // Fully set up before it is added, so its first frame is complete.
                    let bar = indicatif::ProgressBar::new_spinner()
                        .with_style(style.clone())
                        .with_prefix(prefix)
                        .with_message(progress.tty_message());
                    let bar = self.multi.add(bar);
                    self.bars.push((site.site.clone(), bar));
                }
            }
        }
        // A site that appeared later may be wider: keep every prefix aligned.
        for (name, bar) in &self.bars {
            bar.set_prefix(format!("{:<width$}", placement::site_name(name)));
            bar.tick();
        }
    }

    fn pause(&self, pause: Duration) {
        let until = Instant::now() + pause;
        loop {
            let now = Instant::now();
            if now >= until {
                return;
            }
            std::thread::sleep(Self::TICK.min(until - now));
            for (_, bar) in &self.bars {
                bar.tick();
            }
        }
    }

    /// Leave every line as it last was; the cursor stays at the end of the last one.
    fn finish(&self) -> bool {
        for (_, bar) in &self.bars {
            bar.abandon();
        }
        !self.bars.is_empty()
    }
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

/// Unix milliseconds as UTC RFC 3339 to the second, `2026-12-02T06:01:02Z`.
pub fn format_time_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
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
         "policy":{"remote":"proxy","sites":["lon","nyc"],"mode":null,"drained":[]}},
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
                {"site":"nyc","region":"us","healthy":false,"rtt_ms":73.2,"routes":0,"nodes":[]},
                {"site":"sgp","healthy":true,"drained":true,"nodes":[]}]}"#,
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
                &["sgp", "-", "yes (drained)", "-", "-", "-"],
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
policy:      remote=proxy; sites=lon, nyc

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
        assert_eq!(saved, Target::new(base.clone(), Some("s3cret".into())));
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
        target::save(&config, &Target::new(url.clone(), Some("t".into()))).unwrap();
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

    const SITES_JSON: &str = r#"{"sites":[
        {"site":"lon","region":"eu","healthy":true,"nodes":[{"node_id":"lon-1","state":"alive"}]},
        {"site":"nyc","region":"us","healthy":true,"nodes":[]},
        {"site":"sgp","region":null,"healthy":true,"nodes":[]},
        {"site":"syd","region":"","healthy":true,"nodes":[]}]}"#;

    /// An app with two route hosts (three routes), and one with none.
    const CONTROL_APPS_JSON: &str = r#"{"apps":[
        {"app_id":"acme/prod/shop","name":"shop","org":"acme","space":"prod",
         "routes":["shop.apps.example.com","shop.apps.example.com/cart","Cart.Example.com"],
         "sites":[{"site":"lon","instances":1,"app_guids":["g-lon"]}]},
        {"app_id":"acme/prod/idle","name":"idle","org":"acme","space":"prod","routes":[],"sites":[]}]}"#;

    fn sites_fixture() -> Vec<SiteInfo> {
        serde_json::from_str::<SitesBody>(SITES_JSON).unwrap().sites
    }

    #[test]
    fn policy_rows_show_unset_fields_as_dashes() {
        let body: PoliciesBody = serde_json::from_str(
            r#"{"routes":[
                {"host":"shop.apps.example.com","policy":{"mode":"redirect","regions":["eu","us"],
                  "weights":{"lon":3,"nyc":1},"drained":["nyc"]},
                 "hlc":"1764655262000.0@lon-1","written_by":"lon-1","written_at_ms":1764655262123},
                {"host":"*.apps.example.com","policy":{"mode":null,"regions":null,"weights":null},
                 "hlc":"1.2@nyc-1","written_by":"nyc-1"}],
              "sites":[{"site":"nyc","policy":{"drained":true},"hlc":"5.0@nyc-1",
                 "written_by":"nyc-1","written_at_ms":0},
                 {"site":"lon","policy":{}}]}"#,
        )
        .unwrap();
        assert_eq!(
            route_policy_rows(&body.routes),
            rows(&[
                &[
                    "shop.apps.example.com",
                    "redirect",
                    "eu, us",
                    "lon=3, nyc=1",
                    "nyc",
                    "2025-12-02T06:01:02Z",
                    "lon-1"
                ],
                &["*.apps.example.com", "-", "-", "-", "-", "-", "nyc-1"],
            ])
        );
        assert_eq!(
            site_policy_rows(&body.sites),
            rows(&[
                &["nyc", "yes", "1970-01-01T00:00:00Z", "nyc-1"],
                &["lon", "-", "-", "-"]
            ])
        );
    }

    #[test]
    fn times_are_utc_rfc3339() {
        assert_eq!(format_time_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time_ms(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(format_time_ms(1_709_251_199_999), "2024-02-29T23:59:59Z");
        assert_eq!(format_time_ms(4_102_444_800_000), "2100-01-01T00:00:00Z");
    }

    #[test]
    fn cert_and_audit_rows() {
        let body: CertsBody = serde_json::from_str(
            r#"{"certs":[{"host":"shop.example.com","sans":["shop.example.com","www.shop.example.com"],
                "not_after":"2027-01-01T00:00:00Z","fingerprint_sha256":"ab12","source":"upload",
                "nodes_serving":["lon-1","nyc-1"]},
               {"host":"x.example.com","sans":null}]}"#,
        )
        .unwrap();
        assert_eq!(
            cert_rows(&body.certs),
            rows(&[
                &[
                    "shop.example.com",
                    "upload",
                    "2027-01-01T00:00:00Z",
                    "shop.example.com, www.shop.example.com",
                    "lon-1, nyc-1"
                ],
                &["x.example.com", "-", "-", "-", "-"],
            ])
        );
        let body: AuditBody = serde_json::from_str(
            r#"{"entries":[{"at_ms":1764655262123,"hlc":"1764655262123.0@lon-1","node_id":"lon-1",
                "token":"write","action":"put","key":"policy/route/shop.apps.example.com",
                "summary":"regions=eu"},{"action":"delete"}]}"#,
        )
        .unwrap();
        assert_eq!(
            audit_rows(&body.entries),
            rows(&[
                &[
                    "2025-12-02T06:01:02Z",
                    "lon-1",
                    "write",
                    "put",
                    "policy/route/shop.apps.example.com"
                ],
                &["-", "-", "-", "delete", "-"],
            ])
        );
        let reply: WriteReply = serde_json::from_str(
            r#"{"key":"cert/shop.example.com","hlc":"9.0@nyc-1","replicated":true,
                "host":"shop.example.com","sans":["shop.example.com"],
                "not_after":"2027-01-01T00:00:00Z","fingerprint_sha256":"ab12"}"#,
        )
        .unwrap();
        assert_eq!(
            table::render_pairs(&upload_pairs("shop.example.com", &reply)),
            "host:        shop.example.com\nsans:        shop.example.com\n\
             not after:   2027-01-01T00:00:00Z\nsha-256:     ab12\n"
        );
    }

    /// Issue 13: APP is an app (every route host of it) or one route host; anything else
    /// fails like `gcf app`.
    #[test]
    fn app_level_commands_resolve_apps_and_route_hosts() {
        let apps = serde_json::from_str::<AppsBody>(CONTROL_APPS_JSON)
            .unwrap()
            .apps;
        let routes = serde_json::from_str::<RoutesBody>(ROUTES_JSON)
            .unwrap()
            .routes;
        let shop = Hosts {
            label: "app shop".into(),
            hosts: vec!["shop.apps.example.com".into(), "cart.example.com".into()],
        };
        assert_eq!(resolve_hosts(&apps, &routes, "shop").unwrap(), shop);
        assert_eq!(
            resolve_hosts(&apps, &routes, "acme/prod/shop").unwrap(),
            shop
        );
        assert_eq!(resolve_hosts(&apps, &routes, "g-lon").unwrap(), shop);
        // A route host, from the routes or an app's routes, in any case.
        assert_eq!(
            resolve_hosts(&apps, &routes, "*.apps.example.com").unwrap(),
            Hosts {
                label: "route *.apps.example.com".into(),
                hosts: vec!["*.apps.example.com".into()]
            }
        );
        assert_eq!(
            resolve_hosts(&apps, &routes, "CART.example.com")
                .unwrap()
                .hosts,
            ["cart.example.com"]
        );
        assert_eq!(
            resolve_hosts(&apps, &routes, "nope")
                .unwrap_err()
                .to_string(),
            "App 'nope' not found."
        );
        assert!(
            resolve_hosts(&apps, &routes, "idle")
                .unwrap_err()
                .to_string()
                .contains("has no routes")
        );
    }

    #[test]
    fn edits_naming_unknown_sites_or_regions_are_refused() {
        let sites = sites_fixture();
        check_edit(&Edit::Pin(vec!["eu".into(), "us".into()]), &sites).unwrap();
        assert_eq!(
            check_edit(&Edit::Pin(vec!["eu".into(), "mars".into()]), &sites)
                .unwrap_err()
                .to_string(),
            "Region 'mars' not found: no site is in it (regions: eu, us)."
        );
        check_edit(
            &Edit::Weights(vec![("lon".into(), 1), ("sgp".into(), 0)]),
            &sites,
        )
        .unwrap();
        assert_eq!(
            check_edit(
                &Edit::Weights(vec![("lon".into(), 1), ("par".into(), 2)]),
                &sites
            )
            .unwrap_err()
            .to_string(),
            "Site 'par' not found (sites: lon, nyc, sgp, syd)."
        );
        assert!(check_edit(&Edit::Drain("par".into()), &sites).is_err());
        check_edit(&Edit::Drain("nyc".into()), &sites).unwrap();
        assert_eq!(
            check_edit(&Edit::Pin(vec!["eu".into()]), &[])
                .unwrap_err()
                .to_string(),
            "Region 'eu' not found: no site is in it (regions: none)."
        );
    }

    #[test]
    fn edit_rows_say_what_was_written() {
        let p = |v: serde_json::Value| v.as_object().cloned().unwrap();
        let plans = [
            HostPlan {
                host: "a.example.com".into(),
                current: None,
                plan: Plan::Put(p(serde_json::json!({"regions": ["eu"]}))),
            },
            HostPlan {
                host: "b.example.com".into(),
                current: Some(p(serde_json::json!({"regions": ["eu"], "mode": null}))),
                plan: Plan::Unchanged,
            },
            HostPlan {
                host: "c.example.com".into(),
                current: Some(p(serde_json::json!({"regions": ["us"]}))),
                plan: Plan::Delete,
            },
        ];
        assert_eq!(
            table::render(&EDIT_HEADERS, &edit_rows(&plans)),
            "\
host           write      mode  regions  weights  drained
a.example.com  updated    -     eu       -        -
b.example.com  unchanged  -     eu       -        -
c.example.com  deleted    -     -        -        -
"
        );
    }

    #[test]
    fn unreplicated_writes_warn_once_per_node() {
        let replies: Vec<WriteReply> = [
            r#"{"key":"a","hlc":"1.0@lon-1","replicated":false}"#,
            r#"{"key":"b","hlc":"1.1@lon-1","replicated":false}"#,
            r#"{"key":"c","hlc":"1.2@lon-1","replicated":true}"#,
            r#"{"key":"d","hlc":"garbage"}"#,
        ]
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect();
        assert_eq!(
            unreplicated_warnings(&replies),
            [
                "Warning: no peer is connected: stored at lon-1 only until peers connect, then it spreads to the mesh."
            ]
        );
        assert!(
            unreplicated_warnings(&replies[2..]).is_empty(),
            "unknown is not false"
        );
        let odd: WriteReply = serde_json::from_str(r#"{"hlc":"1.0","replicated":false}"#).unwrap();
        assert!(unreplicated_warnings(&[odd])[0].contains("stored at this node only"));
    }

    /// A stateful stand-in for the control-plane endpoints: policies are stored as sent,
    /// writes need the token `write` (`read` gets a 403), and every request is recorded
    /// as `METHOD path body`.
    struct ControlStub {
        base: String,
        requests: mpsc::Receiver<String>,
    }

    impl ControlStub {
        fn start(replicated: bool) -> ControlStub {
            ControlStub::with(replicated, &[])
        }

        /// A stub whose store already holds `(key, policy JSON)` pairs.
        fn with(replicated: bool, stored: &[(&str, &str)]) -> ControlStub {
            let stored: Vec<(String, String)> = stored
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let (seen, requests) = mpsc::channel();
            std::thread::spawn(move || {
                let mut store: std::collections::BTreeMap<String, String> =
                    stored.into_iter().collect();
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    control_answer(stream, &mut store, &seen, replicated);
                }
            });
            ControlStub { base, requests }
        }

        fn client(&self, token: &str) -> Client {
            Client::new(&self.base, Some(token)).unwrap()
        }

        /// The requests so far (each is recorded before it is answered), then forget them.
        fn take(&self) -> Vec<String> {
            self.requests.try_iter().collect()
        }

        fn writes(&self) -> Vec<String> {
            self.take()
                .into_iter()
                .filter(|r| !r.starts_with("GET "))
                .collect()
        }
    }

    fn control_answer(
        stream: TcpStream,
        store: &mut std::collections::BTreeMap<String, String>,
        seen: &mpsc::Sender<String>,
        replicated: bool,
    ) {
        use std::io::Read;
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let (mut token, mut length) = (String::new(), 0usize);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 || line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("authorization") {
                    token = value.trim().trim_start_matches("Bearer ").to_owned();
                }
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let body = String::from_utf8(body).unwrap();
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let _ = seen.send(format!("{method} {path} {body}").trim_end().to_owned());
        let key = |p: &str| {
            p.strip_prefix("/v1/policies/routes/")
                .map(|h| format!("policy/route/{h}"))
                .or_else(|| {
                    p.strip_prefix("/v1/policies/sites/")
                        .map(|s| format!("policy/site/{s}"))
                })
                .or_else(|| p.strip_prefix("/v1/certs/").map(|h| format!("cert/{h}")))
        };
        let not_found = ("404 Not Found", r#"{"error":"no such key"}"#.to_owned());
        let reply =
            |key: &str| format!(r#"{{"key":"{key}","hlc":"7.0@lon-1","replicated":{replicated}}}"#);
        let (status, text) = match (method, path) {
            (_, _) if token != "write" && token != "read" => (
                "401 Unauthorized",
                r#"{"error":"missing or invalid bearer token"}"#.to_owned(),
            ),
            ("GET", "/v1/apps") => ("200 OK", CONTROL_APPS_JSON.to_owned()),
            ("GET", "/v1/routes") => ("200 OK", ROUTES_JSON.to_owned()),
            ("GET", "/v1/sites") => ("200 OK", SITES_JSON.to_owned()),
            ("GET", "/v1/policies") => {
                let routes: Vec<String> = store
                    .iter()
                    .filter_map(|(k, v)| {
                        k.strip_prefix("policy/route/")
                            .map(|h| format!(r#"{{"host":"{h}","policy":{v}}}"#))
                    })
                    .collect();
                (
                    "200 OK",
                    format!(r#"{{"routes":[{}],"sites":[]}}"#, routes.join(",")),
                )
            }
            ("GET", p) => match key(p).and_then(|k| store.get(&k).map(|v| (k, v))) {
                Some((k, v)) if k.starts_with("policy/route/") => (
                    "200 OK",
                    format!(
                        r#"{{"host":"{}","policy":{v},"hlc":"1.0@nyc-1"}}"#,
                        &k[13..]
                    ),
                ),
                Some((k, v)) => (
                    "200 OK",
                    format!(r#"{{"site":"{}","policy":{v}}}"#, &k[12..]),
                ),
                None => not_found,
            },
            (_, _) if token == "read" => (
                "403 Forbidden",
                r#"{"error":"this token may only read"}"#.to_owned(),
            ),
            ("PUT", p) if p.starts_with("/v1/certs/") => {
                let k = key(p).unwrap();
                store.insert(k.clone(), body);
                (
                    "200 OK",
                    format!(
                        r#"{{"key":"{k}","hlc":"8.0@lon-1","replicated":{replicated},"host":"{}","sans":["{}"],"not_after":"2027-01-01T00:00:00Z","fingerprint_sha256":"ab12"}}"#,
                        &k[5..],
                        &k[5..]
                    ),
                )
            }
            ("PUT", p) => match key(p) {
                Some(k) if body.contains("\"bogus\"") => (
                    "400 Bad Request",
                    format!(r#"{{"error":"unknown field bogus in {k}","field":"bogus"}}"#),
                ),
                Some(k) => {
                    store.insert(k.clone(), body);
                    ("200 OK", reply(&k))
                }
                None => not_found,
            },
            ("DELETE", p) => match key(p).filter(|k| store.remove(k).is_some()) {
                Some(k) => ("200 OK", reply(&k)),
                None => not_found,
            },
            _ => not_found,
        };
        let mut stream = stream;
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
            text.len()
        );
    }

    fn failure(f: impl FnOnce(&mut Vec<u8>) -> Result<()>) -> String {
        let mut out = Vec::new();
        format!("{:#}", f(&mut out).unwrap_err())
    }

    /// `gcf target -o/-s` saves beside the API target, each flag alone changes only its
    /// own; `gcf api` to the same URL keeps them, to another drops them.
    #[test]
    fn target_org_and_space() {
        let tmp = TempDir::new("target");
        let config = tmp.0.join("config.toml");
        let mut sink = Vec::new();
        assert_eq!(
            target_show(&config, &mut sink).unwrap_err().to_string(),
            NO_TARGET
        );
        assert_eq!(
            target_set(&config, Some("demo"), None, &mut sink)
                .unwrap_err()
                .to_string(),
            NO_TARGET
        );
        target::save(
            &config,
            &Target::new("http://127.0.0.1:9".into(), Some("t".into())),
        )
        .unwrap();
        let err = connect_space(&config).unwrap_err();
        assert!(err.downcast_ref::<crate::UsageError>().is_some());
        assert!(
            err.to_string().contains("gcf target -o ORG -s SPACE"),
            "{err}"
        );

        assert_eq!(
            output(|out| target_show(&config, out)),
            "api endpoint:   http://127.0.0.1:9\norg:            -\nspace:          -\n\n\
             No org or space targeted, use 'gcf target -o ORG -s SPACE'.\n"
        );
        let text = output(|out| target_set(&config, Some(" demo "), None, out));
        assert_eq!(
            text,
            "api endpoint:   http://127.0.0.1:9\norg:            demo\nspace:          -\n"
        );
        assert!(connect_space(&config).is_err(), "a space is needed too");
        output(|out| target_set(&config, None, Some("prod"), out));
        let text = output(|out| target_show(&config, out));
        assert_eq!(
            text,
            "api endpoint:   http://127.0.0.1:9\norg:            demo\nspace:          prod\n"
        );
        let (_, org, space) = connect_space(&config).unwrap();
        assert_eq!((org.as_str(), space.as_str()), ("demo", "prod"));
        let saved = target::load(&config).unwrap().unwrap();
        assert_eq!(saved.token.as_deref(), Some("t"), "the token is kept");

        // A bad name is a usage error and changes nothing.
        let err = target_set(&config, Some("x"), Some(" "), &mut sink).unwrap_err();
        assert!(err.downcast_ref::<crate::UsageError>().is_some(), "{err}");
        assert_eq!(target::load(&config).unwrap().unwrap(), saved);

        // Re-targeting the API: same URL keeps org and space, another URL drops them.
        let (base, _requests) = serve("t");
        target::save(
            &config,
            &Target {
                api: base.clone(),
                ..saved.clone()
            },
        )
        .unwrap();
        output(|out| api_set(&config, &base, None, out));
        let kept = target::load(&config).unwrap().unwrap();
        assert_eq!(
            (kept.org.as_deref(), kept.space.as_deref()),
            (Some("demo"), Some("prod"))
        );
        let (other, _requests) = serve("t");
        output(|out| api_set(&config, &other, None, out));
        let dropped = target::load(&config).unwrap().unwrap();
        assert_eq!((dropped.org, dropped.space), (None, None));
    }

    /// A placement with lon running 3/3, sgp scaled to zero and `nyc` as given.
    fn placement_json(nyc: &str) -> String {
        format!(
            r#"{{"org":"demo","space":"prod","app":"shop",
            "desired":{{"sites":2,"instances":3}},"chosen":["lon","nyc"],
            "written_at_ms":1764670000000,"written_by":"lon-1",
            "sites":[
              {{"site":"lon","chosen":true,"state":"running","instances":3,"app_state":"STARTED",
                "droplet_sha256":"aabbccddeeff00112233445566778899aabbccddeeff00112233445566778899"}},
              {{"site":"nyc","chosen":true,{nyc}}},
              {{"site":"sgp","chosen":false,"state":"stopped","instances":0,"app_state":"STOPPED"}}]}}"#
        )
    }

    /// An admin API stand-in for the placement paths: `PUT` answers `put` (a body naming
    /// site `nosuch` gets the API's 400), each `GET` of the app the next of `gets` (the
    /// last one again once they run out), and a `GET` of another app 404. Each request is
    /// recorded as `METHOD path body`.
    struct PlacementStub {
        base: String,
        requests: mpsc::Receiver<String>,
    }

    impl PlacementStub {
        fn start(put: String, gets: Vec<String>) -> PlacementStub {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let (seen, requests) = mpsc::channel();
            std::thread::spawn(move || {
                let mut next = 0usize;
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let (method, path, body) = read_request(&stream);
                    let _ = seen.send(format!("{method} {path} {body}").trim_end().to_owned());
                    let (status, text) = match (method.as_str(), path.as_str()) {
                        ("PUT", _) if body.contains("nosuch") => (
                            "400 Bad Request",
                            r#"{"error":"unknown site \"nosuch\"","field":"sites"}"#.to_owned(),
                        ),
                        ("PUT", _) => ("200 OK", put.clone()),
                        ("GET", "/v1/placements") => {
                            ("200 OK", format!(r#"{{"placements":[{put}]}}"#))
                        }
                        ("GET", p) if p.ends_with("/shop") && !gets.is_empty() => {
                            let text = gets[next.min(gets.len() - 1)].clone();
                            next += 1;
                            ("200 OK", text)
                        }
                        _ => (
                            "404 Not Found",
                            r#"{"error":"no placement for demo/prod/nope"}"#.to_owned(),
                        ),
                    };
                    let mut stream = stream;
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                        text.len()
                    );
                }
            });
            PlacementStub { base, requests }
        }

        fn client(&self) -> Client {
            Client::new(&self.base, Some("t")).unwrap()
        }

        fn take(&self) -> Vec<String> {
            self.requests.try_iter().collect()
        }
    }

    /// The request line's method and path, and the body.
    fn read_request(stream: &TcpStream) -> (String, String, String) {
        use std::io::Read;
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 || line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let mut parts = request_line.split_whitespace();
        (
            parts.next().unwrap_or("").to_owned(),
            parts.next().unwrap_or("").to_owned(),
            String::from_utf8(body).unwrap(),
        )
    }

    fn quick(timeout: Duration) -> Option<Wait> {
        Some(Wait {
            timeout,
            interval: Duration::from_millis(1),
        })
    }

    fn two_sites() -> ScaleRequest {
        ScaleRequest {
            sites: SitesSpec::Count(2),
            instances: Some(3),
        }
    }

    /// `gcf scale` off a terminal: the write, a plain line per change of a site while it
    /// polls, then the `cf app`-like table once the placement is done.
    #[test]
    fn scale_writes_then_waits_with_plain_progress() {
        let working = |step: &str| placement_json(&format!(r#""state":"working","step":"{step}""#));
        let stub = PlacementStub::start(
            placement_json(r#""state":"absent""#),
            vec![
                working("copy_droplet"),
                working("copy_droplet"),
                working("upload_droplet"),
                placement_json(
                    r#""state":"running","instances":3,"app_state":"STARTED","droplet_sha256":"aabbccddeeff00112233445566778899aabbccddeeff00112233445566778899""#,
                ),
            ],
        );
        let client = stub.client();
        let text = output(|out| {
            scale(
                &client,
                "demo",
                "prod",
                "shop",
                &two_sites(),
                quick(Duration::from_secs(30)),
                Display::Plain,
                out,
            )
        });
        assert_eq!(
            text,
            "\
Scaling app shop in org demo / space prod to 2 sites, 3 instances...
OK

Waiting for app shop to run at lon, nyc...
lon: running (3/3)
nyc: absent
sgp: stopped
nyc: working (copy_droplet)
nyc: working (upload_droplet)
nyc: running (3/3)

name:      shop
org:       demo
space:     prod
desired:   2 sites, 3 instances
chosen:    lon, nyc
written:   2025-12-02T10:06:40Z by lon-1

site  chosen  state    instances  app state  droplet       error
lon   yes     running  3/3        STARTED    aabbccddeeff  -
nyc   yes     running  3/3        STARTED    aabbccddeeff  -
sgp   no      stopped  0          STOPPED    -             -
"
        );
        assert!(!text.contains('\u{1b}'), "no escape codes off a terminal");
        let requests = stub.take();
        assert_eq!(
            requests[0],
            r#"PUT /v1/placements/demo/prod/shop {"instances":3,"sites":2}"#
        );
        assert_eq!(requests[1..], ["GET /v1/placements/demo/prod/shop"; 4]);
    }

    #[test]
    fn scale_fails_on_a_failed_site_a_refused_write_and_the_timeout() {
        let failed = placement_json(
            r#""state":"failed","error":"upload_droplet: Cloud Controller at nyc answered 500""#,
        );
        let stub = PlacementStub::start(placement_json(r#""state":"pending""#), vec![failed]);
        let client = stub.client();
        let mut out = Vec::new();
        let err = scale(
            &client,
            "demo",
            "prod",
            "shop",
            &two_sites(),
            quick(Duration::from_secs(30)),
            Display::Plain,
            &mut out,
        )
        .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "App shop failed at 1 of 2 chosen sites:\nnyc: upload_droplet: Cloud Controller at nyc answered 500"
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("nyc: failed (upload_droplet: Cloud Controller at nyc answered 500)\n"),
            "{text}"
        );
        assert!(
            text.contains("\nnyc   yes     failed   -/3        -          -             upload_droplet: Cloud Controller at nyc answered 500\n"),
            "the table is printed before the failure: {text}"
        );

        // An unknown site: the API's 400, after nothing but the first line; no polling.
        stub.take();
        let mut out = Vec::new();
        let request = ScaleRequest {
            sites: SitesSpec::List(vec!["lon".into(), "nosuch".into()]),
            instances: None,
        };
        let err = scale(
            &client,
            "demo",
            "prod",
            "shop",
            &request,
            quick(Duration::from_secs(30)),
            Display::Plain,
            &mut out,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}/v1/placements/demo/prod/shop: 400 Bad Request: unknown site \"nosuch\" (field sites)",
                stub.base
            )
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Scaling app shop in org demo / space prod to lon and nosuch, instances kept...\n"
        );
        assert_eq!(
            stub.take(),
            [r#"PUT /v1/placements/demo/prod/shop {"sites":["lon","nosuch"]}"#]
        );

        // Never done: the timeout names the sites still under way, after the table.
        let stuck = placement_json(r#""state":"working","step":"copy_droplet""#);
        let stub = PlacementStub::start(stuck.clone(), vec![stuck]);
        let mut out = Vec::new();
        let err = scale(
            &stub.client(),
            "demo",
            "prod",
            "shop",
            &two_sites(),
            quick(Duration::from_millis(30)),
            Display::Plain,
            &mut out,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Timed out after 0.03 s waiting for app shop: not done at nyc (working, copy_droplet)."
        );
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("\nsite  chosen  state"),
            "the table is printed before the timeout"
        );
    }

    #[test]
    fn scale_without_waiting_or_as_json() {
        let absent = placement_json(r#""state":"absent""#);
        let running = placement_json(r#""state":"running","instances":3"#);
        let stub = PlacementStub::start(absent.clone(), vec![running.clone()]);
        let client = stub.client();
        let text = output(|out| {
            scale(
                &client,
                "demo",
                "prod",
                "shop",
                &two_sites(),
                None,
                Display::Plain,
                out,
            )
        });
        assert!(
            text.starts_with("Scaling app shop in org demo / space prod to 2 sites, 3 instances...\nOK\n\nname:      shop\n"),
            "{text}"
        );
        assert!(text.contains("\nnyc   yes     absent   -/3"), "{text}");
        assert_eq!(stub.take().len(), 1, "--no-wait: the write only");

        // --json: no progress, the last placement's JSON as received.
        let text = output(|out| {
            scale(
                &client,
                "demo",
                "prod",
                "shop",
                &two_sites(),
                quick(Duration::from_secs(30)),
                Display::Json,
                out,
            )
        });
        assert_eq!(text, format!("{}\n", table::pretty_json(&running)));
        let text = output(|out| {
            scale(
                &client,
                "demo",
                "prod",
                "shop",
                &two_sites(),
                None,
                Display::Json,
                out,
            )
        });
        assert_eq!(text, format!("{}\n", table::pretty_json(&absent)));

        // Org and space names are one URL segment each.
        stub.take();
        output(|out| {
            scale(
                &client,
                "my org",
                "a/b",
                "shop",
                &two_sites(),
                None,
                Display::Json,
                out,
            )
        });
        assert_eq!(
            stub.take(),
            [r#"PUT /v1/placements/my%20org/a%2Fb/shop {"instances":3,"sites":2}"#]
        );
    }

    #[test]
    fn placement_and_placements_show_the_tables() {
        let running = placement_json(r#""state":"running","instances":3"#);
        let stub = PlacementStub::start(running.clone(), vec![running.clone()]);
        let client = stub.client();
        let text = output(|out| placement(&client, "demo", "prod", "shop", false, out));
        assert!(text.starts_with("name:      shop\n"), "{text}");
        assert!(text.contains("\nsite  chosen  state"), "{text}");
        let text = output(|out| placement(&client, "demo", "prod", "shop", true, out));
        assert_eq!(text, format!("{}\n", table::pretty_json(&running)));
        assert_eq!(
            failure(|out| placement(&client, "demo", "prod", "nope", false, out)),
            "No placement for app nope in org demo / space prod. Use 'gcf scale nope --sites N' to place it."
        );
        let text = output(|out| placements(&client, false, out));
        assert_eq!(
            text,
            "\
org   space  app   desired               chosen    state
demo  prod   shop  2 sites, 3 instances  lon, nyc  2/2 running
"
        );
    }

    /// Issue 13: pin, weights, set-routing and drain read each host's policy, change their
    /// field, and PUT the whole policy back; unpin and undrain delete what they empty.
    #[test]
    fn app_level_commands_read_modify_write_every_route_host() {
        let stub = ControlStub::start(true);
        let client = stub.client("write");

        let text = output(|out| pin(&client, "shop", &["eu".into()], false, out));
        assert_eq!(
            text,
            "\
Pinning app shop to regions eu...
OK

host                   write    mode  regions  weights  drained
shop.apps.example.com  updated  -     eu       -        -
cart.example.com       updated  -     eu       -        -
"
        );
        let gets = stub.take();
        assert_eq!(
            gets,
            [
                "GET /v1/apps",
                "GET /v1/routes",
                "GET /v1/sites",
                "GET /v1/policies/routes/shop.apps.example.com",
                "GET /v1/policies/routes/cart.example.com",
                r#"PUT /v1/policies/routes/shop.apps.example.com {"regions":["eu"]}"#,
                r#"PUT /v1/policies/routes/cart.example.com {"regions":["eu"]}"#,
            ],
            "every read before the first write"
        );

        // Later edits keep what is there.
        output(|out| {
            weights(
                &client,
                "shop",
                &[("lon".into(), 3), ("nyc".into(), 1)],
                false,
                out,
            )
        });
        output(|out| set_routing(&client, "cart.example.com", Mode::Redirect, false, out));
        output(|out| drain(&client, "nyc", Some("shop"), false, out));
        assert_eq!(
            stub.writes(),
            [
                r#"PUT /v1/policies/routes/shop.apps.example.com {"regions":["eu"],"weights":{"lon":3,"nyc":1}}"#,
                r#"PUT /v1/policies/routes/cart.example.com {"regions":["eu"],"weights":{"lon":3,"nyc":1}}"#,
                r#"PUT /v1/policies/routes/cart.example.com {"mode":"redirect","regions":["eu"],"weights":{"lon":3,"nyc":1}}"#,
                r#"PUT /v1/policies/routes/shop.apps.example.com {"drained":["nyc"],"regions":["eu"],"weights":{"lon":3,"nyc":1}}"#,
                r#"PUT /v1/policies/routes/cart.example.com {"drained":["nyc"],"mode":"redirect","regions":["eu"],"weights":{"lon":3,"nyc":1}}"#,
            ]
        );

        // Nothing changes: nothing is written, and the table says so.
        let text = output(|out| drain(&client, "nyc", Some("shop"), false, out));
        assert!(text.contains("shop.apps.example.com  unchanged"), "{text}");
        assert!(stub.writes().is_empty());

        // --json: the write replies as one array.
        let text = output(|out| undrain(&client, "nyc", Some("shop.apps.example.com"), true, out));
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            serde_json::json!([{"key": "policy/route/shop.apps.example.com", "hlc": "7.0@lon-1",
                "replicated": true}])
        );
        stub.take();

        // Unpin leaves the other fields; a policy left empty is deleted.
        output(|out| unpin(&client, "shop", false, out));
        assert_eq!(
            stub.writes(),
            [
                r#"PUT /v1/policies/routes/shop.apps.example.com {"weights":{"lon":3,"nyc":1}}"#,
                r#"PUT /v1/policies/routes/cart.example.com {"drained":["nyc"],"mode":"redirect","weights":{"lon":3,"nyc":1}}"#,
            ]
        );
        output(|out| pin(&client, "*.apps.example.com", &["us".into()], false, out));
        stub.take();
        let text = output(|out| unpin(&client, "*.apps.example.com", false, out));
        assert!(text.contains("*.apps.example.com  deleted"), "{text}");
        assert_eq!(
            stub.writes(),
            ["DELETE /v1/policies/routes/*.apps.example.com"]
        );
    }

    /// Issue 13: a command naming an unknown app, site or region writes nothing.
    #[test]
    fn unknown_apps_sites_and_regions_write_nothing() {
        let stub = ControlStub::start(true);
        let client = stub.client("write");
        type Run<'a> = Box<dyn Fn(&mut Vec<u8>) -> Result<()> + 'a>;
        let cases: [(&str, Run); 6] = [
            (
                "App 'nope' not found.",
                Box::new(|out| pin(&client, "nope", &["eu".into()], false, out)),
            ),
            (
                "Region 'mars' not found: no site is in it (regions: eu, us).",
                Box::new(|out| pin(&client, "shop", &["eu".into(), "mars".into()], false, out)),
            ),
            (
                "Site 'par' not found (sites: lon, nyc, sgp, syd).",
                Box::new(|out| weights(&client, "shop", &[("par".into(), 1)], false, out)),
            ),
            (
                "Site 'par' not found (sites: lon, nyc, sgp, syd).",
                Box::new(|out| drain(&client, "par", None, false, out)),
            ),
            (
                "Site 'par' not found (sites: lon, nyc, sgp, syd).",
                Box::new(|out| drain(&client, "par", Some("shop"), false, out)),
            ),
            (
                "Site 'par' not found (sites: lon, nyc, sgp, syd).",
                Box::new(|out| undrain(&client, "par", None, false, out)),
            ),
        ];
        for (want, run) in cases {
            assert_eq!(failure(|out| run(out)), want);
        }
        assert!(stub.writes().is_empty());
    }

    #[test]
    fn site_drain_writes_the_site_policy_and_undrain_deletes_it() {
        let stub = ControlStub::start(false);
        let client = stub.client("write");
        let text = output(|out| drain(&client, "nyc", None, false, out));
        assert_eq!(
            text,
            "Draining site nyc...\nWarning: no peer is connected: stored at lon-1 only until peers connect, then it spreads to the mesh.\nOK\n"
        );
        assert_eq!(
            stub.writes(),
            [r#"PUT /v1/policies/sites/nyc {"drained":true}"#]
        );
        let text = output(|out| drain(&client, "nyc", None, false, out));
        assert_eq!(
            text,
            "Draining site nyc...\nSite nyc is already drained.\nOK\n"
        );
        assert!(stub.writes().is_empty());
        let text = output(|out| undrain(&client, "nyc", None, true, out));
        assert!(
            text.starts_with("[\n  {\n    \"key\": \"policy/site/nyc\""),
            "{text}"
        );
        assert_eq!(stub.writes(), ["DELETE /v1/policies/sites/nyc"]);
        let text = output(|out| undrain(&client, "nyc", None, true, out));
        assert_eq!(text, "[]\n");
        let text = output(|out| undrain(&client, "nyc", None, false, out));
        assert_eq!(
            text,
            "Undraining site nyc...\nSite nyc is not drained.\nOK\n"
        );
        assert!(stub.writes().is_empty());
    }

    #[test]
    fn certificates_upload_and_delete() {
        let stub = ControlStub::start(true);
        let client = stub.client("write");
        let tmp = TempDir::new("certs");
        let (cert, key) = (tmp.0.join("cert.pem"), tmp.0.join("key.pem"));
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();

        // A missing or empty file is a usage error naming the flag; nothing is sent.
        let mut sink = Vec::new();
        let err =
            upload_cert(&client, "shop.example.com", &cert, &key, false, &mut sink).unwrap_err();
        assert!(err.downcast_ref::<crate::UsageError>().is_some(), "{err}");
        assert!(
            err.to_string()
                .starts_with(&format!("--key {}: ", key.display())),
            "{err}"
        );
        std::fs::write(&key, "\n").unwrap();
        let err =
            upload_cert(&client, "shop.example.com", &cert, &key, false, &mut sink).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("--key {}: the file is empty", key.display())
        );
        assert!(stub.take().is_empty() && sink.is_empty());

        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nBBBB\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let text = output(|out| upload_cert(&client, "shop.example.com", &cert, &key, false, out));
        assert!(
            text.starts_with("Uploading certificate for shop.example.com...\nOK\n\nhost:        shop.example.com\n"),
            "{text}"
        );
        let sent = stub.writes();
        let body: Value = serde_json::from_str(
            sent[0]
                .strip_prefix("PUT /v1/certs/shop.example.com ")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(body["cert_pem"], std::fs::read_to_string(&cert).unwrap());
        assert_eq!(body["key_pem"], std::fs::read_to_string(&key).unwrap());

        let text = output(|out| delete_cert(&client, "shop.example.com", true, out));
        assert!(
            text.contains("\"key\": \"cert/shop.example.com\""),
            "{text}"
        );
        assert_eq!(
            failure(|out| delete_cert(&client, "shop.example.com", false, out)),
            "No uploaded certificate for 'shop.example.com'."
        );
    }

    /// A read-only token reads but every write fails with the API's 403 message, before
    /// anything is stored.
    #[test]
    fn a_read_token_cannot_write() {
        let stub = ControlStub::start(true);
        let client = stub.client("read");
        let text = output(|out| policies(&client, false, out));
        assert_eq!(
            text,
            "route policies\nNo route policies.\n\nsite policies\nNo site policies.\n"
        );
        let err = failure(|out| pin(&client, "shop", &["eu".into()], false, out));
        assert_eq!(
            err,
            format!(
                "{}/v1/policies/routes/shop.apps.example.com: 403 Forbidden: this token may only read",
                stub.base
            )
        );
        let err = failure(|out| drain(&client, "lon", None, false, out));
        assert!(
            err.ends_with("403 Forbidden: this token may only read"),
            "{err}"
        );
    }

    /// A write refused part-way says which hosts were already written.
    #[test]
    fn a_refused_write_names_the_field_and_what_was_already_written() {
        // The second host's policy has a field the stub refuses on PUT.
        let stub = ControlStub::with(true, &[("policy/route/cart.example.com", r#"{"bogus":1}"#)]);
        let client = stub.client("write");
        let url = client.v1_url(&["policies", "routes", "cart.example.com"]);
        assert_eq!(
            failure(|out| pin(&client, "shop", &["eu".into()], false, out)),
            format!(
                "{url}: 400 Bad Request: unknown field bogus in policy/route/cart.example.com (field bogus)\n\
                 Already written: shop.apps.example.com. Run the command again to finish."
            )
        );
    }
}
