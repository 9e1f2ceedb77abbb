//! The pure core of the placement commands (`gcf scale`, `gcf placement`, `gcf
//! placements`): the `--sites` syntax, the request body, when a placement is done, and
//! every line of text they show (progress per site, the `cf app`-like block, the list).
//!
//! Owns: the "Done" rule of the placement API (placement-api.md), what a site's progress
//! line says and when a plain (non-terminal) progress line is due, and the cells of the
//! placement tables.
//!
//! Must never: do I/O, sleep or know the admin API's URLs; every function is pure so the
//! commands' behaviour is unit-tested without a server or a terminal. Text that came
//! from the network (steps, states, errors) is cleaned of control characters before it
//! is shown, so a hostile or confused node cannot move the cursor or clear the screen.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::api::{Desired, Placement, PlacementSite, SitesSpec};
use crate::commands::format_time_ms;

/// Shown for a value the API did not send.
const MISSING: &str = "-";

/// Headers of the per-site table of `gcf scale` and `gcf placement`.
pub const SITE_HEADERS: [&str; 7] = [
    "site",
    "chosen",
    "state",
    "instances",
    "app state",
    "droplet",
    "error",
];

/// Headers of `gcf placements`.
pub const LIST_HEADERS: [&str; 6] = ["org", "space", "app", "desired", "chosen", "state"];

/// Hex digits of a droplet's SHA-256 shown in the table.
const DROPLET_CHARS: usize = 12;

/// Characters of an error shown in a table cell (the whole error is in the failure
/// message and `--json`).
const ERROR_CELL_CHARS: usize = 60;

/// Characters of an error shown on a progress line.
const ERROR_PROGRESS_CHARS: usize = 80;

/// Characters of an error in the failure message of `gcf scale`.
const ERROR_MESSAGE_CHARS: usize = 500;

/// Characters of a state or step name (they are short words; anything longer is junk).
const WORD_CHARS: usize = 32;

/// `--sites N` or `--sites lon,nyc`: a non-negative integer, or site names separated by
/// commas (none empty, none with spaces or control characters, none twice). The error
/// says why; clap adds the flag and the value (exit 2).
pub fn parse_sites(arg: &str) -> Result<SitesSpec, String> {
    let arg = arg.trim();
    if arg.is_empty() {
        return Err(
            "empty (write a number of sites, e.g. 2, or site names, e.g. lon,nyc)".to_owned(),
        );
    }
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if all_digits(arg) {
        return arg
            .parse::<u64>()
            .map(SitesSpec::Count)
            .map_err(|_| "the number of sites is too large".to_owned());
    }
    if arg.strip_prefix('-').is_some_and(all_digits) {
        return Err("the number of sites cannot be negative".to_owned());
    }
    let mut names: Vec<String> = Vec::new();
    for name in arg.split(',').map(str::trim) {
        if name.is_empty() {
            return Err("empty site name in the list (write e.g. lon,nyc)".to_owned());
        }
        if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "site name '{}' has spaces or control characters",
                name.escape_debug()
            ));
        }
        if names.iter().any(|n| n == name) {
            return Err(format!("site {name} is listed twice"));
        }
        names.push(name.to_owned());
    }
    Ok(SitesSpec::List(names))
}

/// The body of `PUT /v1/placements/{org}/{space}/{app}`: `instances` only when given
/// (absent: the API keeps what the app has).
pub fn request_body(sites: &SitesSpec, instances: Option<u32>) -> Value {
    let mut body = json!({ "sites": sites });
    if let (Some(k), Some(map)) = (instances, body.as_object_mut()) {
        map.insert("instances".to_owned(), Value::from(k));
    }
    body
}

/// `2 sites, 3 instances`, `lon and nyc, 1 instance`, `1 site, instances kept`.
pub fn desired_text(desired: &Desired) -> String {
    let sites = match &desired.sites {
        Some(SitesSpec::Count(n)) => plural(*n, "site"),
        Some(SitesSpec::List(names)) => and_list(names),
        None => MISSING.to_owned(),
    };
    let instances = desired
        .instances
        .map_or_else(|| "instances kept".to_owned(), |k| plural(k, "instance"));
    format!("{sites}, {instances}")
}

fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `lon`, `lon and nyc`, `lon, nyc and sgp`; `none` for no names.
fn and_list(names: &[String]) -> String {
    let names: Vec<String> = names.iter().map(|n| clean(n, WORD_CHARS)).collect();
    match names.as_slice() {
        [] => "none".to_owned(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// Whether `site` is one of the chosen (by its own flag or the placement's list).
pub fn is_chosen(placement: &Placement, site: &PlacementSite) -> bool {
    site.chosen || placement.chosen.contains(&site.site)
}

/// A site name as it is shown (cleaned like all text from the network).
pub fn site_name(name: &str) -> String {
    clean(name, WORD_CHARS)
}

/// A chosen site running with the desired instances (any number, when none is desired).
fn is_ready(placement: &Placement, site: &PlacementSite) -> bool {
    site.state == "running"
        && placement
            .desired
            .instances
            .is_none_or(|k| site.instances == Some(k))
}

/// A failure reported after the placement was written: one from before (the reconciler
/// is about to try the new placement) does not end the wait.
fn failed_since_written(placement: &Placement, site: &PlacementSite) -> bool {
    site.state == "failed"
        && match (placement.written_at_ms, site.updated_at_ms) {
            (Some(written), Some(updated)) => updated >= written,
            _ => true,
        }
}

/// The Done rule for one site: a chosen site is ready or has failed since the write; an
/// unchosen one is `stopped`, `absent`, failed, or `unknown` (a site that takes no part
/// in placement, having no Cloud Controller configured, never reports).
pub fn site_done(placement: &Placement, site: &PlacementSite) -> bool {
    if is_chosen(placement, site) {
        failed_since_written(placement, site) || is_ready(placement, site)
    } else {
        matches!(
            site.state.as_str(),
            "stopped" | "absent" | "failed" | "unknown"
        )
    }
}

/// Whether `gcf scale` can stop waiting: every site is done, and every chosen site has
/// a status at all.
pub fn is_done(placement: &Placement) -> bool {
    not_done(placement).is_empty()
}

/// The sites still under way, as `nyc (working, copy_droplet)`, in the API's order;
/// chosen sites without any status come last as `sgp (no status yet)`.
pub fn not_done(placement: &Placement) -> Vec<String> {
    let mut pending: Vec<String> = placement
        .sites
        .iter()
        .filter(|s| !site_done(placement, s))
        .map(|s| {
            let p = site_progress(placement, s);
            match p.detail {
                Some(detail) => format!("{} ({}, {detail})", clean(&s.site, WORD_CHARS), p.state),
                None => format!("{} ({})", clean(&s.site, WORD_CHARS), p.state),
            }
        })
        .collect();
    for name in &placement.chosen {
        if !placement.sites.iter().any(|s| &s.site == name) {
            pending.push(format!("{} (no status yet)", clean(name, WORD_CHARS)));
        }
    }
    pending
}

/// One line per chosen site that failed: `nyc: upload_droplet: Cloud Controller ...`.
pub fn failures(placement: &Placement) -> Vec<String> {
    placement
        .sites
        .iter()
        .filter(|s| is_chosen(placement, s) && s.state == "failed")
        .map(|s| {
            let error = s
                .error
                .as_deref()
                .filter(|e| !e.trim().is_empty())
                .map_or_else(
                    || "failed (no error reported)".to_owned(),
                    |e| clean(e, ERROR_MESSAGE_CHARS),
                );
            format!("{}: {error}", clean(&s.site, WORD_CHARS))
        })
        .collect()
}

/// What a progress line says about one site: its state, and a detail where there is one
/// (the step while working, `3/3` instances while running, the error when failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteProgress {
    /// `working`, `running`, ... (`unknown` when the API sent none).
    pub state: String,
    /// `upload_droplet`, `2/3`, `upload_droplet: Cloud Controller ...`.
    pub detail: Option<String>,
}

impl SiteProgress {
    /// The message of a terminal's spinner line, after the site: `working  upload_droplet`.
    pub fn tty_message(&self) -> String {
        match &self.detail {
            Some(detail) => format!("{:<7}  {detail}", self.state),
            None => self.state.clone(),
        }
    }

    /// A plain progress line: `nyc: working (copy_droplet)`.
    pub fn plain_line(&self, site: &str) -> String {
        let site = clean(site, WORD_CHARS);
        match &self.detail {
            Some(detail) => format!("{site}: {} ({detail})", self.state),
            None => format!("{site}: {}", self.state),
        }
    }
}

/// The progress of `site` within `placement`.
pub fn site_progress(placement: &Placement, site: &PlacementSite) -> SiteProgress {
    let state = state_word(site);
    let detail = match state.as_str() {
        "working" => site
            .step
            .as_deref()
            .map(|s| clean(s, WORD_CHARS))
            .filter(|s| !s.is_empty()),
        "running" => Some(instances_text(placement, site)),
        "failed" => site
            .error
            .as_deref()
            .map(|e| clean(e, ERROR_PROGRESS_CHARS))
            .filter(|e| !e.is_empty()),
        _ => None,
    };
    SiteProgress { state, detail }
}

fn state_word(site: &PlacementSite) -> String {
    let state = clean(&site.state, WORD_CHARS);
    if state.is_empty() {
        "unknown".to_owned()
    } else {
        state
    }
}

/// `2/3` (running of desired) at a chosen site when instances are desired; otherwise the
/// instances the site reports, `3 instances`.
fn instances_text(placement: &Placement, site: &PlacementSite) -> String {
    match (is_chosen(placement, site), placement.desired.instances) {
        (true, Some(k)) => format!("{}/{k}", opt(site.instances)),
        _ => site
            .instances
            .map_or_else(|| MISSING.to_owned(), |n| plural(n, "instance")),
    }
}

/// Decides which plain progress lines are due: a site's line when it is new or differs
/// from the last one printed for that site (its state, step, instances or error changed),
/// never the same line twice in a row.
#[derive(Debug, Default)]
pub struct PlainProgress {
    last: BTreeMap<String, String>,
}

impl PlainProgress {
    /// No line printed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The lines to print for this poll's `placement`, in the API's site order.
    pub fn changes(&mut self, placement: &Placement) -> Vec<String> {
        let mut lines = Vec::new();
        for site in &placement.sites {
            let line = site_progress(placement, site).plain_line(&site.site);
            if self.last.get(&site.site) != Some(&line) {
                self.last.insert(site.site.clone(), line.clone());
                lines.push(line);
            }
        }
        lines
    }
}

/// The `key: value` lines above the site table, like `cf app`.
pub fn detail_pairs(placement: &Placement) -> Vec<(&'static str, String)> {
    let mut pairs = vec![
        ("name", clean(&placement.app, usize::MAX)),
        ("org", clean(&placement.org, usize::MAX)),
        ("space", clean(&placement.space, usize::MAX)),
        ("desired", desired_text(&placement.desired)),
        ("chosen", comma_list(&placement.chosen)),
    ];
    if let Some(ms) = placement.written_at_ms {
        let by = if placement.written_by.is_empty() {
            String::new()
        } else {
            format!(" by {}", clean(&placement.written_by, WORD_CHARS))
        };
        pairs.push(("written", format!("{}{by}", format_time_ms(ms))));
    }
    pairs
}

/// Rows of the per-site table: `lon  yes  running  3/3  STARTED  0123456789ab  -`.
pub fn site_rows(placement: &Placement) -> Vec<Vec<String>> {
    placement
        .sites
        .iter()
        .map(|s| {
            let progress = site_progress(placement, s);
            let state = match (&progress.detail, progress.state.as_str()) {
                (Some(step), "working") => format!("working ({step})"),
                _ => progress.state.clone(),
            };
            let instances = match (is_chosen(placement, s), placement.desired.instances) {
                (true, Some(k)) => format!("{}/{k}", opt(s.instances)),
                _ => opt(s.instances),
            };
            let droplet = s
                .droplet_sha256
                .as_deref()
                .map(|d| d.strip_prefix("sha256:").unwrap_or(d))
                .map(|d| clean(d, usize::MAX).chars().take(DROPLET_CHARS).collect())
                .filter(|d: &String| !d.is_empty())
                .unwrap_or_else(|| MISSING.to_owned());
            vec![
                clean(&s.site, WORD_CHARS),
                if is_chosen(placement, s) { "yes" } else { "no" }.to_owned(),
                state,
                instances,
                s.app_state
                    .as_deref()
                    .map(|a| clean(a, WORD_CHARS))
                    .filter(|a| !a.is_empty())
                    .unwrap_or_else(|| MISSING.to_owned()),
                droplet,
                s.error
                    .as_deref()
                    .map(|e| clean(e, ERROR_CELL_CHARS))
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| MISSING.to_owned()),
            ]
        })
        .collect()
}

/// `sgp: find_app: UAA at … refused …`: each failed site's whole error (to
/// [`ERROR_MESSAGE_CHARS`]), for errors the table cell cuts short.
pub fn error_lines(placement: &Placement) -> Vec<String> {
    placement
        .sites
        .iter()
        .filter_map(|s| {
            let e = s.error.as_deref()?;
            (e.chars().count() > ERROR_CELL_CHARS).then(|| {
                format!(
                    "{}: {}",
                    clean(&s.site, WORD_CHARS),
                    clean(e, ERROR_MESSAGE_CHARS)
                )
            })
        })
        .collect()
}

/// Rows of `gcf placements`: `demo  prod  shop  2 sites, 3 instances  lon, nyc  2/2 running`.
pub fn list_rows(placements: &[Placement]) -> Vec<Vec<String>> {
    placements
        .iter()
        .map(|p| {
            vec![
                clean(&p.org, usize::MAX),
                clean(&p.space, usize::MAX),
                clean(&p.app, usize::MAX),
                desired_text(&p.desired),
                comma_list(&p.chosen),
                state_summary(p),
            ]
        })
        .collect()
}

/// `2/2 running`, `1/2 running, 1 working`, `2/2 running, 1 scaling down`: how many
/// chosen sites are ready, then how many of the rest are in each state; unchosen sites
/// that still run the app, or are being scaled to zero, count too.
pub fn state_summary(placement: &Placement) -> String {
    let chosen: Vec<&PlacementSite> = placement
        .sites
        .iter()
        .filter(|s| is_chosen(placement, s))
        .collect();
    let ready = chosen.iter().filter(|s| is_ready(placement, s)).count();
    let total = placement.chosen.len().max(chosen.len());
    let mut others: BTreeMap<String, usize> = BTreeMap::new();
    for site in &chosen {
        if !is_ready(placement, site) {
            let label = match state_word(site).as_str() {
                "running" => "scaling".to_owned(),
                other => other.to_owned(),
            };
            *others.entry(label).or_default() += 1;
        }
    }
    let missing = total.saturating_sub(chosen.len());
    if missing > 0 {
        *others.entry("without status".to_owned()).or_default() += missing;
    }
    for site in placement
        .sites
        .iter()
        .filter(|s| !is_chosen(placement, s) && !site_done(placement, s))
    {
        let label = match state_word(site).as_str() {
            "working" => "scaling down".to_owned(),
            other => format!("{other} (not chosen)"),
        };
        *others.entry(label).or_default() += 1;
    }
    let mut parts = vec![format!("{ready}/{total} running")];
    parts.extend(others.iter().map(|(label, n)| format!("{n} {label}")));
    parts.join(", ")
}

fn comma_list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names
            .iter()
            .map(|n| clean(n, WORD_CHARS))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| MISSING.to_owned(), |v| v.to_string())
}

/// Text from the network made safe for one line of a terminal: control characters
/// (escape sequences, newlines) become spaces, runs of whitespace one space, and text
/// longer than `max` characters is cut with `…`.
fn clean(text: &str, max: usize) -> String {
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect();
    let joined = words.join(" ");
    if joined.chars().count() <= max {
        joined
    } else {
        let mut cut: String = joined.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two sites chosen of three, three instances desired: lon is ready, nyc is copying
    /// the droplet, sgp (not chosen) has been scaled to zero.
    const WORKING: &str = r#"{
        "org":"demo","space":"prod","app":"shop",
        "desired":{"sites":2,"instances":3},
        "chosen":["lon","nyc"],
        "written_at_ms":1764670000000,"written_by":"lon-1",
        "sites":[
          {"site":"lon","chosen":true,"state":"running","step":null,"app_guid":"g1",
           "instances":3,"app_state":"STARTED",
           "droplet_sha256":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
           "copyable":true,"routes":["shop.apps.example.com"],"error":null,"attempts":0,
           "steps":[],"reconciler":"lon-1","updated_at_ms":1764670000000},
          {"site":"nyc","chosen":true,"state":"working","step":"copy_droplet",
           "instances":null,"app_state":null,"droplet_sha256":null,"error":null},
          {"site":"sgp","chosen":false,"state":"stopped","instances":0,"app_state":"STOPPED"}
        ]}"#;

    fn placement(text: &str) -> Placement {
        serde_json::from_str(text).unwrap()
    }

    /// `WORKING` with nyc's entry replaced by `nyc`.
    fn with_nyc(nyc: &str) -> Placement {
        let mut value: Value = serde_json::from_str(WORKING).unwrap();
        value["sites"][1] = serde_json::from_str(nyc).unwrap();
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn sites_flag_takes_a_count_or_a_list() {
        assert_eq!(parse_sites("2"), Ok(SitesSpec::Count(2)));
        assert_eq!(parse_sites(" 0 "), Ok(SitesSpec::Count(0)));
        assert_eq!(
            parse_sites("lon, nyc"),
            Ok(SitesSpec::List(vec!["lon".into(), "nyc".into()]))
        );
        assert_eq!(parse_sites("lon"), Ok(SitesSpec::List(vec!["lon".into()])));
        let cases = [
            ("", "empty"),
            ("  ", "empty"),
            ("lon,,nyc", "empty site name"),
            ("lon,", "empty site name"),
            ("-1", "negative"),
            ("99999999999999999999999", "too large"),
            ("lon,lon", "site lon is listed twice"),
            ("l on", "spaces"),
            ("lon,\u{1b}[2J", "control"),
        ];
        for (arg, want) in cases {
            let err = parse_sites(arg).unwrap_err();
            assert!(err.contains(want), "{arg:?}: {err}");
        }
    }

    #[test]
    fn request_bodies_carry_instances_only_when_given() {
        assert_eq!(
            request_body(&SitesSpec::Count(2), Some(3)),
            json!({"sites": 2, "instances": 3})
        );
        assert_eq!(
            request_body(&SitesSpec::List(vec!["lon".into(), "nyc".into()]), None),
            json!({"sites": ["lon", "nyc"]})
        );
        assert_eq!(
            request_body(&SitesSpec::Count(0), Some(0)).to_string(),
            r#"{"instances":0,"sites":0}"#
        );
    }

    #[test]
    fn desired_reads_as_words() {
        let desired = |text: &str| desired_text(&serde_json::from_str::<Desired>(text).unwrap());
        assert_eq!(
            desired(r#"{"sites":2,"instances":3}"#),
            "2 sites, 3 instances"
        );
        assert_eq!(
            desired(r#"{"sites":1,"instances":1}"#),
            "1 site, 1 instance"
        );
        assert_eq!(
            desired(r#"{"sites":["lon","nyc","sgp"],"instances":null}"#),
            "lon, nyc and sgp, instances kept"
        );
        assert_eq!(desired(r#"{"sites":["lon"]}"#), "lon, instances kept");
        // A shape this gcf does not know is shown as missing, not a parse error.
        assert_eq!(
            desired(r#"{"sites":{"any":true},"instances":2}"#),
            "-, 2 instances"
        );
    }

    /// The Done rule of placement-api.md, site by site.
    #[test]
    fn done_when_chosen_sites_run_or_fail_and_the_rest_are_stopped() {
        let working = placement(WORKING);
        assert!(!is_done(&working));
        assert_eq!(not_done(&working), ["nyc (working, copy_droplet)"]);

        let running = |instances: u64| {
            with_nyc(&format!(
                r#"{{"site":"nyc","chosen":true,"state":"running","instances":{instances}}}"#
            ))
        };
        assert!(is_done(&running(3)));
        // Running, but not yet with the desired instances.
        let scaling = running(1);
        assert!(!is_done(&scaling));
        assert_eq!(not_done(&scaling), ["nyc (running, 1/3)"]);
        // A failed chosen site is done (and reported as a failure).
        let failed = with_nyc(
            r#"{"site":"nyc","chosen":true,"state":"failed","error":"upload_droplet: Cloud Controller at nyc answered 500"}"#,
        );
        assert!(is_done(&failed));
        assert_eq!(
            failures(&failed),
            ["nyc: upload_droplet: Cloud Controller at nyc answered 500"]
        );
        assert!(failures(&running(3)).is_empty());
        // A failure reported before the placement was written is the old placement's: the
        // reconciler is about to try the new one.
        let mut stale = with_nyc(
            r#"{"site":"nyc","chosen":true,"state":"failed","error":"scale: boom","updated_at_ms":1}"#,
        );
        stale.written_at_ms = Some(2);
        assert!(!is_done(&stale));
        stale.sites[1].updated_at_ms = Some(2);
        assert!(is_done(&stale));
        for state in ["pending", "unknown", "absent", "stopped", ""] {
            let p = with_nyc(&format!(
                r#"{{"site":"nyc","chosen":true,"state":"{state}"}}"#
            ));
            assert!(!is_done(&p), "chosen {state:?}");
        }

        // Unchosen sites must be stopped, absent or failed, or never report (no Cloud
        // Controller there).
        for (state, done) in [
            ("stopped", true),
            ("absent", true),
            ("failed", true),
            ("working", false),
            ("running", false),
            ("unknown", true),
        ] {
            let mut p = running(3);
            p.sites[2].state = state.to_owned();
            assert_eq!(is_done(&p), done, "unchosen {state}");
        }

        // Without desired instances any number running will do.
        let mut p = running(1);
        p.desired.instances = None;
        assert!(is_done(&p));

        // A chosen site with no status at all is not done.
        let mut p = running(3);
        p.chosen.push("syd".into());
        assert_eq!(not_done(&p), ["syd (no status yet)"]);
    }

    #[test]
    fn the_table_is_cf_app_like() {
        let p = with_nyc(
            r#"{"site":"nyc","chosen":true,"state":"failed","instances":null,
                "error":"upload_droplet: Cloud Controller at nyc answered 500 Internal Server Error: the blobstore is unavailable, try again later"}"#,
        );
        let text = crate::table::render_pairs(&detail_pairs(&p));
        assert_eq!(
            text,
            "\
name:      shop
org:       demo
space:     prod
desired:   2 sites, 3 instances
chosen:    lon, nyc
written:   2025-12-02T10:06:40Z by lon-1
"
        );
        let table = crate::table::render(&SITE_HEADERS, &site_rows(&p));
        assert_eq!(
            table,
            "\
site  chosen  state    instances  app state  droplet       error
lon   yes     running  3/3        STARTED    0123456789ab  -
nyc   yes     failed   -/3        -          -             upload_droplet: Cloud Controller at nyc answered 500 Intern…
sgp   no      stopped  0          STOPPED    -             -
"
        );
        assert_eq!(
            error_lines(&p),
            [
                "nyc: upload_droplet: Cloud Controller at nyc answered 500 Internal Server Error: the blobstore is unavailable, try again later"
            ],
            "the whole error is shown below the table"
        );
        let rows = site_rows(&placement(WORKING));
        assert_eq!(rows[1][2], "working (copy_droplet)");
        assert!(error_lines(&placement(WORKING)).is_empty());
    }

    #[test]
    fn progress_lines_per_state() {
        let p = placement(WORKING);
        let lines: Vec<String> = p
            .sites
            .iter()
            .map(|s| site_progress(&p, s).tty_message())
            .collect();
        assert_eq!(lines, ["running  3/3", "working  copy_droplet", "stopped"]);
        let failed =
            with_nyc(r#"{"site":"nyc","chosen":true,"state":"failed","error":"boom\nagain"}"#);
        assert_eq!(
            site_progress(&failed, &failed.sites[1]).plain_line("nyc"),
            "nyc: failed (boom again)"
        );
        // An unchosen site still running says how many instances it has.
        let mut p = placement(WORKING);
        p.sites[2].state = "running".into();
        p.sites[2].instances = Some(2);
        assert_eq!(
            site_progress(&p, &p.sites[2]).plain_line("sgp"),
            "sgp: running (2 instances)"
        );
    }

    /// Off a terminal, a site's line is printed when it first appears and again only when
    /// what it says changes.
    #[test]
    fn plain_progress_prints_only_changes() {
        let mut plain = PlainProgress::new();
        assert_eq!(
            plain.changes(&placement(WORKING)),
            [
                "lon: running (3/3)",
                "nyc: working (copy_droplet)",
                "sgp: stopped"
            ]
        );
        assert!(plain.changes(&placement(WORKING)).is_empty());
        let uploading =
            with_nyc(r#"{"site":"nyc","chosen":true,"state":"working","step":"upload_droplet"}"#);
        assert_eq!(plain.changes(&uploading), ["nyc: working (upload_droplet)"]);
        assert!(plain.changes(&uploading).is_empty());
        let running = with_nyc(r#"{"site":"nyc","chosen":true,"state":"running","instances":1}"#);
        assert_eq!(plain.changes(&running), ["nyc: running (1/3)"]);
        let running = with_nyc(r#"{"site":"nyc","chosen":true,"state":"running","instances":3}"#);
        assert_eq!(plain.changes(&running), ["nyc: running (3/3)"]);
        // Back to an earlier state is a change too.
        assert_eq!(plain.changes(&uploading), ["nyc: working (upload_droplet)"]);
    }

    #[test]
    fn list_rows_summarise_the_state() {
        let done = with_nyc(r#"{"site":"nyc","chosen":true,"state":"running","instances":3}"#);
        let mut stopping = with_nyc(r#"{"site":"nyc","chosen":true,"state":"failed"}"#);
        stopping.sites[2].state = "working".into();
        stopping.sites[2].step = Some("scale_to_zero".into());
        let rows = list_rows(&[placement(WORKING), done, stopping]);
        assert_eq!(
            rows[0],
            [
                "demo",
                "prod",
                "shop",
                "2 sites, 3 instances",
                "lon, nyc",
                "1/2 running, 1 working"
            ]
        );
        assert_eq!(rows[1][5], "2/2 running");
        assert_eq!(rows[2][5], "1/2 running, 1 failed, 1 scaling down");
        let mut scaling = placement(WORKING);
        scaling.sites[0].instances = Some(1);
        scaling.chosen.push("syd".into());
        assert_eq!(
            state_summary(&scaling),
            "0/3 running, 1 scaling, 1 without status, 1 working"
        );
    }

    #[test]
    fn network_text_is_made_safe_for_a_terminal() {
        assert_eq!(clean("a\u{1b}[2Jb\r\n  c\t", 100), "a [2Jb c");
        assert_eq!(clean("abcdef", 4), "abc…");
        assert_eq!(clean("", 4), "");
    }
}
