//! The pure core of the control-plane commands: parsing their arguments, editing a route
//! policy, and deciding which write (if any) each route host needs.
//!
//! Owns: the syntax of `--regions eu,us` and `lon=3,nyc=1`, what `pin`, `unpin`,
//! `weights`, `set-routing`, `drain` and `undrain` do to one route policy, and when a
//! policy counts as empty (then it is deleted rather than written).
//!
//! Must never: do I/O or know the admin API's URLs; every function is pure so the
//! commands' effects are unit-tested without a server.
//!
//! A route policy is kept as a JSON object, not a typed struct: a `PUT` replaces the whole
//! policy, so a read-modify-write must carry every field it read, including fields a
//! newer GRouter knows and this gcf does not.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// A route policy as JSON: `{mode, regions, weights, drained}`, all optional.
pub type Policy = Map<String, Value>;

/// How requests for a route served only at other sites reach them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Forward over the mesh to the chosen site's node.
    Proxy,
    /// 307 to the chosen site's redirect host.
    Redirect,
}

impl Mode {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Proxy => "proxy",
            Mode::Redirect => "redirect",
        }
    }
}

/// One command's change to a route policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// `gcf pin`: only sites of these regions serve the route.
    Pin(Vec<String>),
    /// `gcf unpin`: any region may serve it again.
    Unpin,
    /// `gcf weights`: the share of each site (the whole map is replaced).
    Weights(Vec<(String, u32)>),
    /// `gcf set-routing`.
    Mode(Mode),
    /// `gcf drain --site S APP`: add S to `drained`.
    Drain(String),
    /// `gcf undrain --site S APP`: remove S from `drained`.
    Undrain(String),
}

/// What one route host needs so that its policy reflects an [`Edit`].
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// The policy already says so: nothing is written.
    Unchanged,
    /// `PUT` this whole policy.
    Put(Policy),
    /// The edit leaves nothing set: `DELETE` the policy.
    Delete,
}

/// `--regions eu,us`: names separated by commas, none empty, duplicates dropped (first
/// kept), order kept. The error says why; clap adds the flag and the value (exit 2).
pub fn parse_regions(arg: &str) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = Vec::new();
    for name in arg.split(',').map(str::trim) {
        if name.is_empty() {
            return Err("empty region name (write e.g. eu,us)".to_owned());
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// `lon=3,nyc=1`: `SITE=N` pairs separated by commas, N a whole number from 0 (never) to
/// 2^32-1, each site at most once. The error says why; clap adds the argument and the
/// value (exit 2).
pub fn parse_weights(arg: &str) -> Result<Vec<(String, u32)>, String> {
    let bad = |why: String| format!("{why} (write e.g. lon=3,nyc=1)");
    let mut weights: Vec<(String, u32)> = Vec::new();
    for pair in arg.split(',').map(str::trim) {
        let Some((site, weight)) = pair.split_once('=') else {
            return Err(bad(if pair.is_empty() {
                "empty entry".to_owned()
            } else {
                format!("'{pair}' has no '='")
            }));
        };
        let (site, weight) = (site.trim(), weight.trim());
        if site.is_empty() {
            return Err(bad(format!("'{pair}' has no site name")));
        }
        // `u32::from_str` takes a leading `+`; a weight is digits only.
        let parsed = weight
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| weight.parse::<u32>().ok())
            .flatten();
        let Some(n) = parsed else {
            let why = if weight.starts_with('-') {
                format!("the weight of {site} is negative")
            } else {
                format!(
                    "the weight of {site} must be a whole number from 0 to {}",
                    u32::MAX
                )
            };
            return Err(bad(why));
        };
        if weights.iter().any(|(s, _)| s == site) {
            return Err(bad(format!("{site} is given twice")));
        }
        weights.push((site.to_owned(), n));
    }
    Ok(weights)
}

/// `lon=3, nyc=1`, as shown to the user.
pub fn weights_text(weights: &[(String, u32)]) -> String {
    weights
        .iter()
        .map(|(site, n)| format!("{site}={n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The policy with `edit` applied, normalised (see [`normalize`]).
pub fn apply(policy: &Policy, edit: &Edit) -> Policy {
    let mut policy = normalize(policy);
    match edit {
        Edit::Pin(regions) => {
            policy.insert("regions".into(), strings(regions.iter()));
        }
        Edit::Unpin => {
            policy.remove("regions");
        }
        Edit::Weights(weights) => {
            let map: Map<String, Value> = weights
                .iter()
                .map(|(site, n)| (site.clone(), Value::from(*n)))
                .collect();
            policy.insert("weights".into(), Value::Object(map));
        }
        Edit::Mode(mode) => {
            policy.insert("mode".into(), Value::from(mode.as_str()));
        }
        Edit::Drain(site) => {
            let mut sites = drained(&policy);
            if !sites.iter().any(|s| s == site) {
                sites.push(site.clone());
            }
            policy.insert("drained".into(), strings(sites.iter()));
        }
        Edit::Undrain(site) => {
            let sites: Vec<String> = drained(&policy).into_iter().filter(|s| s != site).collect();
            policy.insert("drained".into(), strings(sites.iter()));
        }
    }
    normalize(&policy)
}

/// What a host whose current policy is `current` (`None`: it has none) needs for `edit`.
pub fn plan(current: Option<&Policy>, edit: &Edit) -> Plan {
    let before = current.map(normalize).unwrap_or_default();
    let after = apply(&before, edit);
    if after == before {
        Plan::Unchanged
    } else if after.is_empty() {
        Plan::Delete
    } else {
        Plan::Put(after)
    }
}

/// What a site whose current site policy is `current` needs so that it is drained
/// (`drained`) or not. `drained: false` sets nothing, so undraining a policy that only
/// drained the site deletes it.
pub fn site_plan(current: Option<&Policy>, drained: bool) -> Plan {
    let unset_false = |p: &Policy| -> Policy {
        let mut p = normalize(p);
        if p.get("drained") == Some(&Value::Bool(false)) {
            p.remove("drained");
        }
        p
    };
    let before = current.map(normalize).unwrap_or_default();
    let mut after = before.clone();
    after.insert("drained".into(), Value::Bool(drained));
    let after = unset_false(&after);
    if unset_false(&before) == after {
        Plan::Unchanged
    } else if after.is_empty() {
        Plan::Delete
    } else {
        Plan::Put(after)
    }
}

/// The policy without fields that set nothing (`null`, `[]`, `{}`): the API treats them
/// as absent, and `regions: []` is even refused.
pub fn normalize(policy: &Policy) -> Policy {
    policy
        .iter()
        .filter(|(_, v)| !is_unset(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn is_unset(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.is_empty(),
        _ => false,
    }
}

/// The sites a policy drains (strings only; anything else is not a site name).
pub fn drained(policy: &Policy) -> Vec<String> {
    policy
        .get("drained")
        .and_then(Value::as_array)
        .map(|sites| {
            sites
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn strings<'a>(items: impl Iterator<Item = &'a String>) -> Value {
    Value::Array(items.map(|s| Value::from(s.as_str())).collect())
}

/// The distinct route hosts of an app's `host` / `host/path` routes, lower-cased, in
/// first-seen order (a policy is per host, so `shop.example.com/cart` is `shop.example.com`).
pub fn route_hosts<'a>(routes: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut hosts = Vec::new();
    for route in routes {
        let host = route
            .split('/')
            .next()
            .unwrap_or(route)
            .to_ascii_lowercase();
        if !host.is_empty() && seen.insert(host.clone()) {
            hosts.push(host);
        }
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(value: Value) -> Policy {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn regions_are_comma_separated_names() {
        assert_eq!(parse_regions("eu").unwrap(), ["eu"]);
        assert_eq!(parse_regions("eu, us,eu").unwrap(), ["eu", "us"]);
        for bad in ["", "eu,", ",eu", "eu,,us", " "] {
            let err = parse_regions(bad).unwrap_err();
            assert_eq!(err, "empty region name (write e.g. eu,us)", "{bad:?}");
        }
    }

    #[test]
    fn weights_parse_and_malformed_ones_say_why() {
        assert_eq!(
            parse_weights("lon=3,nyc=1").unwrap(),
            [("lon".to_owned(), 3), ("nyc".to_owned(), 1)]
        );
        assert_eq!(parse_weights(" lon = 0 ").unwrap(), [("lon".to_owned(), 0)]);
        let cases = [
            ("lon=x", "the weight of lon must be a whole number"),
            ("lon=-1", "the weight of lon is negative"),
            ("lon=+1", "the weight of lon must be a whole number"),
            ("lon=1.5", "the weight of lon must be a whole number"),
            ("lon=", "the weight of lon must be a whole number"),
            ("lon=4294967296", "the weight of lon must be a whole number"),
            ("lon", "'lon' has no '='"),
            ("lon=1,nyc", "'nyc' has no '='"),
            ("=3", "'=3' has no site name"),
            ("lon=1,", "empty entry"),
            ("", "empty entry"),
            ("lon=1,lon=2", "lon is given twice"),
        ];
        for (arg, why) in cases {
            let err = parse_weights(arg).unwrap_err();
            assert!(
                err.starts_with(why) && err.ends_with(" (write e.g. lon=3,nyc=1)"),
                "{arg}: {err}"
            );
        }
        assert_eq!(
            weights_text(&parse_weights("lon=3,nyc=1").unwrap()),
            "lon=3, nyc=1"
        );
    }

    #[test]
    fn pin_unpin_weights_and_mode_touch_only_their_field() {
        let current = policy(
            json!({"mode": null, "weights": {"lon": 2}, "drained": ["nyc"],
            "future": {"x": 1}}),
        );
        let pinned = apply(&current, &Edit::Pin(vec!["eu".into(), "us".into()]));
        assert_eq!(
            Value::Object(pinned.clone()),
            json!({"regions": ["eu", "us"], "weights": {"lon": 2}, "drained": ["nyc"],
                "future": {"x": 1}}),
            "unknown fields are carried, nulls dropped"
        );
        let unpinned = apply(&pinned, &Edit::Unpin);
        assert_eq!(unpinned, normalize(&current));
        let weighted = apply(
            &current,
            &Edit::Weights(vec![("nyc".into(), 0), ("lon".into(), 5)]),
        );
        assert_eq!(weighted["weights"], json!({"lon": 5, "nyc": 0}));
        let redirect = apply(&current, &Edit::Mode(Mode::Redirect));
        assert_eq!(redirect["mode"], json!("redirect"));
        assert_eq!(redirect["drained"], json!(["nyc"]));
    }

    #[test]
    fn drain_and_undrain_add_and_remove_one_site() {
        let current = policy(json!({"drained": ["nyc"]}));
        let both = apply(&current, &Edit::Drain("lon".into()));
        assert_eq!(both["drained"], json!(["nyc", "lon"]));
        assert_eq!(
            apply(&both, &Edit::Drain("lon".into())),
            both,
            "no duplicates"
        );
        let back = apply(&both, &Edit::Undrain("nyc".into()));
        assert_eq!(back["drained"], json!(["lon"]));
        let none = apply(&back, &Edit::Undrain("lon".into()));
        assert!(
            none.is_empty(),
            "an empty drained list is dropped: {none:?}"
        );
    }

    #[test]
    fn plans_skip_no_ops_and_delete_emptied_policies() {
        let pin = Edit::Pin(vec!["eu".into()]);
        // No policy yet (404): the pin is the whole policy.
        assert_eq!(
            plan(None, &pin),
            Plan::Put(policy(json!({"regions": ["eu"]})))
        );
        // Already so: nothing to write.
        let pinned = policy(json!({"regions": ["eu"], "mode": null}));
        assert_eq!(plan(Some(&pinned), &pin), Plan::Unchanged);
        // Unpinning the only field deletes the policy; with others left it is a PUT.
        assert_eq!(plan(Some(&pinned), &Edit::Unpin), Plan::Delete);
        let more = policy(json!({"regions": ["eu"], "mode": "proxy"}));
        assert_eq!(
            plan(Some(&more), &Edit::Unpin),
            Plan::Put(policy(json!({"mode": "proxy"})))
        );
        // Nothing to unpin or undrain where there is no policy: no DELETE of nothing.
        assert_eq!(plan(None, &Edit::Unpin), Plan::Unchanged);
        assert_eq!(plan(None, &Edit::Undrain("lon".into())), Plan::Unchanged);
        // An existing policy that sets nothing and is asked to unpin stays as it is.
        assert_eq!(
            plan(Some(&policy(json!({}))), &Edit::Unpin),
            Plan::Unchanged
        );
    }

    #[test]
    fn site_plans_put_drained_true_and_delete_on_undrain() {
        let drained = policy(json!({"drained": true}));
        assert_eq!(site_plan(None, true), Plan::Put(drained.clone()));
        assert_eq!(site_plan(Some(&drained), true), Plan::Unchanged);
        assert_eq!(site_plan(Some(&drained), false), Plan::Delete);
        assert_eq!(site_plan(None, false), Plan::Unchanged);
        // A policy someone wrote as drained:false says nothing; it is left alone.
        let undrained = policy(json!({"drained": false}));
        assert_eq!(site_plan(Some(&undrained), false), Plan::Unchanged);
        assert_eq!(site_plan(Some(&undrained), true), Plan::Put(drained));
        // Fields of a newer node survive both ways.
        let more = policy(json!({"drained": true, "future": 1}));
        assert_eq!(
            site_plan(Some(&more), false),
            Plan::Put(policy(json!({"future": 1})))
        );
    }

    #[test]
    fn route_hosts_are_distinct_lower_case_hosts() {
        assert_eq!(
            route_hosts([
                "shop.apps.example.com",
                "shop.apps.example.com/cart",
                "Cart.Example.com/x/y",
                "*.apps.example.com/api",
                "",
            ]),
            [
                "shop.apps.example.com",
                "cart.example.com",
                "*.apps.example.com"
            ]
        );
    }
}
