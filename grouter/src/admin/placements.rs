//! The admin API's placement resources (CONTRACT.md, "Placing apps across foundations"):
//! `GET /v1/placements` and `GET|PUT|DELETE /v1/placements/{org}/{space}/{app}`.
//!
//! Owns: checking a desired placement against the sites this node knows before it is
//! written (an unknown site is named and nothing is written), and the JSON of a placement:
//! what was asked, the choice (the same at every node) and every site's report.
//!
//! Must never: write after a failed check, or act on a Cloud Controller (the sites'
//! reconcilers do).

use std::collections::BTreeSet;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::AdminState;
use super::writes::{Refusal, join, known, parse_body, write};
use crate::placement::{
    AppKey, Desired, Evaluated, Inputs, MAX_INSTANCES, Sites, State, check_name, decode_segment,
    evaluate, evaluate_all,
};

/// `GET /v1/placements`.
pub fn list(state: &AdminState) -> Value {
    let inputs = Inputs::read(&state.control, &state.table);
    let all: Vec<Value> = evaluate_all(&state.control, &inputs)
        .iter()
        .map(placement_json)
        .collect();
    json!({ "placements": all })
}

/// `GET|PUT|DELETE /v1/placements/{org}/{space}/{app}` (`rest` is after the prefix).
pub fn one(state: &AdminState, method: &Method, rest: &str, body: &[u8]) -> Result<Value, Refusal> {
    let app = app_key(rest)?;
    let inputs = || Inputs::read(&state.control, &state.table);
    let not_found = || Refusal::not_found(format!("no placement for {app}"));
    match *method {
        Method::GET => evaluate(&state.control, &inputs(), &app)
            .map(|p| placement_json(&p))
            .ok_or_else(not_found),
        Method::PUT => {
            let desired: Desired = parse_body(body)?;
            check(state, &desired)?;
            let bytes =
                serde_json::to_vec(&desired).map_err(|e| Refusal::bad("body", e.to_string()))?;
            write(state, &app.key(), Some(bytes), &summary(&app, &desired))?;
            evaluate(&state.control, &inputs(), &app)
                .map(|p| placement_json(&p))
                .ok_or_else(not_found)
        }
        Method::DELETE => {
            if state.control.get(&app.key()).is_none() {
                return Err(not_found());
            }
            write(state, &app.key(), None, &format!("{app}: no longer placed"))?;
            Ok(json!({ "deleted": true }))
        }
        _ => Err(Refusal {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: "method not allowed".into(),
            field: None,
        }),
    }
}

/// `{org}/{space}/{app}`, each percent-decoded and checked.
fn app_key(rest: &str) -> Result<AppKey, Refusal> {
    let parts: Vec<&str> = rest.split('/').collect();
    let [org, space, app] = parts.as_slice() else {
        return Err(Refusal::not_found(
            "expected /v1/placements/{org}/{space}/{app}",
        ));
    };
    let mut names = Vec::with_capacity(3);
    for (field, raw) in [("org", org), ("space", space), ("app", app)] {
        let name = decode_segment(raw)
            .ok_or_else(|| Refusal::bad(field, "is not valid percent-encoded UTF-8"))?;
        check_name(&name).map_err(|why| Refusal::bad(field, why))?;
        names.push(name);
    }
    let mut names = names.into_iter();
    Ok(AppKey {
        org: names.next().unwrap_or_default(),
        space: names.next().unwrap_or_default(),
        app: names.next().unwrap_or_default(),
    })
}

/// Refuse what cannot be placed: more sites than are known, an unknown or repeated site,
/// too many instances.
fn check(state: &AdminState, d: &Desired) -> Result<(), Refusal> {
    let (sites, _) = known(state);
    match &d.sites {
        Sites::Count(n) => {
            if usize::try_from(*n).map_or(true, |n| n > sites.len()) {
                return Err(Refusal::bad(
                    "sites",
                    format!(
                        "{n} sites asked for, but only {} are known ({})",
                        sites.len(),
                        join(&sites)
                    ),
                ));
            }
        }
        Sites::List(list) => {
            if list.is_empty() {
                return Err(Refusal::bad("sites", "the list of sites is empty"));
            }
            let mut seen = BTreeSet::new();
            for s in list {
                if !sites.contains(s) {
                    return Err(Refusal::bad(
                        "sites",
                        format!("unknown site {s:?} (known: {})", join(&sites)),
                    ));
                }
                if !seen.insert(s) {
                    return Err(Refusal::bad("sites", format!("site {s:?} is listed twice")));
                }
            }
        }
    }
    if let Some(k) = d.instances
        && k > MAX_INSTANCES
    {
        return Err(Refusal::bad(
            "instances",
            format!("{k} is over the limit of {MAX_INSTANCES}"),
        ));
    }
    Ok(())
}

fn summary(app: &AppKey, d: &Desired) -> String {
    let sites = match &d.sites {
        Sites::Count(n) => format!("sites={n}"),
        Sites::List(l) => format!("sites={}", l.join(",")),
    };
    match d.instances {
        Some(k) => format!("{app}: {sites} instances={k}"),
        None => format!("{app}: {sites}"),
    }
}

/// A placement as the API shows it (docs/PLACEMENT.md).
fn placement_json(p: &Evaluated) -> Value {
    let sites: Vec<Value> = p
        .sites
        .iter()
        .map(|(site, r)| {
            let chosen = p.choice.has(site);
            let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
            if let Some(obj) = v.as_object_mut() {
                obj.insert("site".into(), json!(site));
                obj.insert("chosen".into(), json!(chosen));
                obj.remove("route_specs");
                obj.remove("process_types");
                if r.state == State::Unknown {
                    obj.insert("state".into(), json!("unknown"));
                }
                // A chosen site whose report predates its choice has not begun.
                if chosen && matches!(r.state, State::Absent | State::Stopped) {
                    obj.insert("state".into(), json!("pending"));
                }
                if let Some(why) = p.choice.excluded.get(site) {
                    obj.insert("not_chosen_because".into(), json!(why.as_str()));
                }
            }
            v
        })
        .collect();
    json!({
        "org": p.app.org,
        "space": p.app.space,
        "app": p.app.app,
        "desired": p.desired,
        "instances": p.instances,
        "chosen": p.choice.chosen,
        "written_at_ms": p.written_at_ms,
        "written_by": p.written_by,
        "sites": sites,
    })
}
