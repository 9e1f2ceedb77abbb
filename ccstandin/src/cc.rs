//! The CC v3 calls other than droplet bits (those are in [`crate::blobstore`]): orgs,
//! spaces, apps and their web process, current droplet, start/stop, droplets, jobs, domains,
//! routes and destinations, with the CC's answers and errors.
//!
//! Owns the rules of each call (what may be created, what must exist, what must be STAGED).
//! Must never hold the store's lock across an `.await`, nor panic on a body or path a client
//! sent: every bad input is a CC error.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Value, json};

use crate::error::CcError;
use crate::server::{Filters, Sh, base_url, json_body, json_response, list, str_at};
use crate::store::{AppState, Droplet, DropletState, Lifecycle, Stamp, new_guid};

type Answer = Result<Response, CcError>;

fn ok(v: &Value) -> Answer {
    Ok(json_response(StatusCode::OK, v))
}

// --- organizations, spaces, domains -------------------------------------------------------

pub(crate) async fn list_orgs(State(sh): Sh, headers: HeaderMap, uri: Uri) -> Answer {
    let base = base_url(&sh, &headers);
    let f = Filters::parse(uri.query());
    let store = sh.store.lock();
    let items = store
        .orgs
        .iter()
        .filter(|o| f.admits("names", &o.name) && f.admits("guids", &o.guid))
        .map(|o| store.org_json(o, &base))
        .collect();
    Ok(list(&base, uri.path(), uri.query(), items))
}

pub(crate) async fn get_org(State(sh): Sh, headers: HeaderMap, Path(guid): Path<String>) -> Answer {
    let base = base_url(&sh, &headers);
    let store = sh.store.lock();
    let o = store
        .org(&guid)
        .ok_or_else(|| CcError::not_found("Organization"))?;
    ok(&store.org_json(o, &base))
}

pub(crate) async fn list_spaces(State(sh): Sh, headers: HeaderMap, uri: Uri) -> Answer {
    let base = base_url(&sh, &headers);
    let f = Filters::parse(uri.query());
    let store = sh.store.lock();
    let items = store
        .spaces
        .iter()
        .filter(|s| {
            f.admits("names", &s.name)
                && f.admits("guids", &s.guid)
                && f.admits("organization_guids", &s.org)
        })
        .map(|s| store.space_json(s, &base))
        .collect();
    Ok(list(&base, uri.path(), uri.query(), items))
}

pub(crate) async fn get_space(
    State(sh): Sh,
    headers: HeaderMap,
    Path(guid): Path<String>,
) -> Answer {
    let base = base_url(&sh, &headers);
    let store = sh.store.lock();
    let s = store
        .space(&guid)
        .ok_or_else(|| CcError::not_found("Space"))?;
    ok(&store.space_json(s, &base))
}

pub(crate) async fn list_domains(State(sh): Sh, headers: HeaderMap, uri: Uri) -> Answer {
    let base = base_url(&sh, &headers);
    let f = Filters::parse(uri.query());
    let store = sh.store.lock();
    let items = store
        .domains
        .iter()
        .filter(|d| f.admits("names", &d.name) && f.admits("guids", &d.guid))
        .map(|d| store.domain_json(d, &base))
        .collect();
    Ok(list(&base, uri.path(), uri.query(), items))
}

pub(crate) async fn get_domain(
    State(sh): Sh,
    headers: HeaderMap,
    Path(guid): Path<String>,
) -> Answer {
    let base = base_url(&sh, &headers);
    let store = sh.store.lock();
    let d = store
        .domain(&guid)
        .ok_or_else(|| CcError::not_found("Domain"))?;
    ok(&store.domain_json(d, &base))
}

// --- apps ---------------------------------------------------------------------------------

pub(crate) async fn list_apps(State(sh): Sh, headers: HeaderMap, uri: Uri) -> Answer {
    let base = base_url(&sh, &headers);
    let f = Filters::parse(uri.query());
    let store = sh.store.lock();
    let items = store
        .apps
        .iter()
        .filter(|a| {
            let org = store.space(&a.space).map_or("", |s| s.org.as_str());
            f.admits("names", &a.name)
                && f.admits("guids", &a.guid)
                && f.admits("space_guids", &a.space)
                && f.admits("organization_guids", org)
        })
        .map(|a| store.app_json(a, &base))
        .collect();
    Ok(list(&base, uri.path(), uri.query(), items))
}

pub(crate) async fn get_app(State(sh): Sh, headers: HeaderMap, Path(guid): Path<String>) -> Answer {
    let base = base_url(&sh, &headers);
    let store = sh.store.lock();
    let a = store.app(&guid).ok_or_else(|| CcError::not_found("App"))?;
    ok(&store.app_json(a, &base))
}

pub(crate) async fn create_app(State(sh): Sh, headers: HeaderMap, body: Bytes) -> Answer {
    let base = base_url(&sh, &headers);
    let body = json_body(&body)?;
    let name = match body.get("name") {
        Some(Value::String(n)) if !n.is_empty() && n.len() <= 255 => n.clone(),
        Some(Value::String(_)) => return Err(CcError::unprocessable("Name can't be blank")),
        Some(_) => return Err(CcError::unprocessable("Name must be a string")),
        None => return Err(CcError::unprocessable("Name can't be blank")),
    };
    let space = str_at(&body, "/relationships/space/data/guid")
        .ok_or_else(|| {
            CcError::unprocessable(
                "Relationships 'relationships' must include one or more valid relationships",
            )
        })?
        .to_string();
    let lifecycle = match body.get("lifecycle") {
        None | Some(Value::Null) => Lifecycle::Buildpack,
        Some(l) => match l.get("type").and_then(Value::as_str) {
            Some("buildpack") => Lifecycle::Buildpack,
            Some("docker") => Lifecycle::Docker,
            _ => {
                return Err(CcError::unprocessable(
                    "Lifecycle type is not included in the list: buildpack, docker",
                ));
            }
        },
    };
    let mut store = sh.store.lock();
    if store.space(&space).is_none() {
        return Err(CcError::unprocessable(
            "Invalid space. Ensure that the space exists and you have access to it.",
        ));
    }
    if store
        .apps
        .iter()
        .any(|a| a.space == space && a.name == name)
    {
        return Err(CcError::unprocessable(format!(
            "App with the name '{name}' already exists."
        )));
    }
    let guid = store.add_app(&space, &name, lifecycle);
    let a = store.app(&guid).ok_or_else(CcError::server)?;
    Ok(json_response(
        StatusCode::CREATED,
        &store.app_json(a, &base),
    ))
}

pub(crate) async fn start(State(sh): Sh, headers: HeaderMap, Path(guid): Path<String>) -> Answer {
    let base = base_url(&sh, &headers);
    let mut store = sh.store.lock();
    let a = store.app(&guid).ok_or_else(|| CcError::not_found("App"))?;
    if a.current_droplet.is_none() {
        return Err(CcError::unprocessable(
            "Assign a droplet before starting this app.",
        ));
    }
    let a = store.app_mut(&guid).ok_or_else(CcError::server)?;
    if a.state != AppState::Started {
        a.state = AppState::Started;
        a.stamp.touch();
    }
    let a = store.app(&guid).ok_or_else(CcError::server)?;
    ok(&store.app_json(a, &base))
}

pub(crate) async fn stop(State(sh): Sh, headers: HeaderMap, Path(guid): Path<String>) -> Answer {
    let base = base_url(&sh, &headers);
    let mut store = sh.store.lock();
    let a = store
        .app_mut(&guid)
        .ok_or_else(|| CcError::not_found("App"))?;
    if a.state != AppState::Stopped {
        a.state = AppState::Stopped;
        a.stamp.touch();
    }
    let a = store.app(&guid).ok_or_else(CcError::server)?;
    ok(&store.app_json(a, &base))
}

pub(crate) async fn web_process(
    State(sh): Sh,
    headers: HeaderMap,
    Path(guid): Path<String>,
) -> Answer {
    let base = base_url(&sh, &headers);
    let store = sh.store.lock();
    let a = store.app(&guid).ok_or_else(|| CcError::not_found("App"))?;
    ok(&store.process_json(a, &base))
}

pub(crate) async fn scale(
    State(sh): Sh,
    headers: HeaderMap,
    Path(guid): Path<String>,
    body: Bytes,
) -> Answer {
    let base = base_url(&sh, &headers);
    let body = json_body(&body)?;
    let instances = match body.get("instances") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|&n| n <= 2000)
                .ok_or_else(|| {
                    CcError::unprocessable("Instances must be an integer between 0 and 2000")
                })?,
        ),
    };
    for key in [
        "memory_in_mb",
        "disk_in_mb",
        "log_rate_limit_in_bytes_per_second",
    ] {
        if body.get(key).is_some_and(|v| !v.is_null() && !v.is_i64()) {
            return Err(CcError::unprocessable(format!("{key} must be an integer")));
        }
    }
    let mut store = sh.store.lock();
    let a = store
        .app_mut(&guid)
        .ok_or_else(|| CcError::not_found("App"))?;
    if let Some(n) = instances
        && a.instances != n
    {
        a.instances = n;
        a.process_stamp.touch();
    }
    let a = store.app(&guid).ok_or_else(CcError::server)?;
    Ok(json_response(
        StatusCode::ACCEPTED,
        &store.process_json(a, &base),
    ))
}

pub(crate) async fn app_routes(
    State(sh): Sh,
    headers: HeaderMap,
    uri: Uri,
    Path(guid): Path<String>,
) -> Answer {
    let base = base_url(&sh, &headers);
    let store = sh.store.lock();
    if store.app(&guid).is_none() {
        return Err(CcError::not_found("App"));
    }
    let items = store
        .routes
        .iter()
        .filter(|r| r.destinations.iter().any(|d| d.app == guid))
        .map(|r| store.route_json(r, &base))
        .collect();
    Ok(list(&base, uri.path(), uri.query(), items))
}

// --- droplets and jobs ----------------------------------------------------------------------

pub(crate) async fn app_droplets(
    State(sh): Sh,
    headers: HeaderMap,
    uri: Uri,
    Path(guid): Path<String>,
) -> Answer {
    let base = base_url(&sh, &headers);
    let f = Filters::parse(uri.query());
    let store = sh.store.lock();
    if store.app(&guid).is_none() {
        return Err(CcError::not_found("App"));
    }
    let items = store
        .droplets
        .iter()
        .filter(|d| d.app == guid && f.admits("states", d.state.as_str()))
        .map(|d| store.droplet_json(d, &base))
        .collect();
    Ok(list(&base, uri.path(), uri.query(), items))
}

pub(crate) async fn current_droplet(
    State(sh): Sh,
    headers: HeaderMap,
    Path(guid): Path<String>,
) -> Answer {
    let base = base_url(&sh, &headers);
    let store = sh.store.lock();
    let a = store.app(&guid).ok_or_else(|| CcError::not_found("App"))?;
    let d = a
        .current_droplet
        .as_deref()
        .and_then(|d| store.droplet(d))
        .ok_or_else(|| CcError::not_found("Droplet"))?;
    ok(&store.droplet_json(d, &base))
}

fn current_droplet_rel(base: &str, app: &str, droplet: Option<&str>) -> Value {
    json!({
        "data": droplet.map(|g| json!({"guid": g})),
        "links": {
            "self": {"href": format!("{base}/v3/apps/{app}/relationships/current_droplet")},
            "related": {"href": format!("{base}/v3/apps/{app}/droplets/current")},
        },
    })
}

pub(crate) async fn get_current_droplet_rel(
    State(sh): Sh,
    headers: HeaderMap,
    Path(guid): Path<String>,
) -> Answer {
    let base = base_url(&sh, &headers);
    let store = sh.store.lock();
    let a = store.app(&guid).ok_or_else(|| CcError::not_found("App"))?;
    ok(&current_droplet_rel(
        &base,
        &guid,
        a.current_droplet.as_deref(),
    ))
}

pub(crate) async fn set_current_droplet(
    State(sh): Sh,
    headers: HeaderMap,
    Path(guid): Path<String>,
    body: Bytes,
) -> Answer {
    let base = base_url(&sh, &headers);
    let body = json_body(&body)?;
    let droplet = str_at(&body, "/data/guid").map(str::to_string);
    let mut store = sh.store.lock();
    if store.app(&guid).is_none() {
        return Err(CcError::not_found("App"));
    }
    let Some(droplet) = droplet else {
        return Err(CcError::unprocessable(
            "Current droplet cannot be removed. Replace it with a preferred droplet.",
        ));
    };
    match store.droplet(&droplet) {
        Some(d) if d.app == guid && d.state == DropletState::Staged => {}
        Some(d) if d.app == guid => {
            return Err(CcError::unprocessable(format!(
                "Unable to assign current droplet: the droplet is {}, not STAGED.",
                d.state.as_str()
            )));
        }
        _ => {
            return Err(CcError::unprocessable(
                "Unable to assign current droplet. Ensure the droplet exists and belongs to this app.",
            ));
        }
    }
    let a = store.app_mut(&guid).ok_or_else(CcError::server)?;
    if a.current_droplet.as_deref() != Some(droplet.as_str()) {
        a.current_droplet = Some(droplet.clone());
        a.stamp.touch();
    }
    ok(&current_droplet_rel(&base, &guid, Some(&droplet)))
}

pub(crate) async fn get_droplet(
    State(sh): Sh,
    headers: HeaderMap,
    Path(guid): Path<String>,
) -> Answer {
    let base = base_url(&sh, &headers);
    let store = sh.store.lock();
    let d = store
        .droplet(&guid)
        .ok_or_else(|| CcError::not_found("Droplet"))?;
    ok(&store.droplet_json(d, &base))
}

pub(crate) async fn create_droplet(State(sh): Sh, headers: HeaderMap, body: Bytes) -> Answer {
    let base = base_url(&sh, &headers);
    let body = json_body(&body)?;
    let app = str_at(&body, "/relationships/app/data/guid")
        .ok_or_else(|| CcError::unprocessable("Relationships must include an app"))?
        .to_string();
    let process_types = match body.get("process_types") {
        None | Some(Value::Null) => json!({}),
        Some(p @ Value::Object(m)) if m.values().all(Value::is_string) => p.clone(),
        Some(_) => {
            return Err(CcError::unprocessable(
                "Process types must be an object of strings",
            ));
        }
    };
    let mut store = sh.store.lock();
    match store.app(&app) {
        None => return Err(CcError::unprocessable("App not found")),
        Some(a) if a.lifecycle == Lifecycle::Docker => {
            return Err(CcError::unprocessable(
                "Droplet creation is not available for apps with docker lifecycle.",
            ));
        }
        Some(_) => {}
    }
    let guid = new_guid();
    store.add_droplet(Droplet {
        guid: guid.clone(),
        app,
        state: DropletState::AwaitingUpload,
        error: None,
        lifecycle: Lifecycle::Buildpack,
        sha256: None,
        size: None,
        image: None,
        process_types,
        blob: None,
        stamp: Stamp::now(),
    });
    let d = store.droplet(&guid).ok_or_else(CcError::server)?;
    Ok(json_response(
        StatusCode::CREATED,
        &store.droplet_json(d, &base),
    ))
}

pub(crate) async fn get_job(State(sh): Sh, headers: HeaderMap, Path(guid): Path<String>) -> Answer {
    let base = base_url(&sh, &headers);
    let store = sh.store.lock();
    let j = store.job(&guid).ok_or_else(|| CcError::not_found("Job"))?;
    ok(&store.job_json(j, &base))
}

// --- routes -------------------------------------------------------------------------------

pub(crate) async fn list_routes(State(sh): Sh, headers: HeaderMap, uri: Uri) -> Answer {
    let base = base_url(&sh, &headers);
    let f = Filters::parse(uri.query());
    let store = sh.store.lock();
    let items = store
        .routes
        .iter()
        .filter(|r| {
            f.admits("guids", &r.guid)
                && f.admits("domain_guids", &r.domain)
                && f.admits("hosts", &r.host)
                && f.admits("paths", &r.path)
                && f.admits("space_guids", &r.space)
                && store
                    .space(&r.space)
                    .is_some_and(|s| f.admits("organization_guids", &s.org))
                && (f.admits("app_guids", "")
                    || r.destinations.iter().any(|d| f.admits("app_guids", &d.app)))
        })
        .map(|r| store.route_json(r, &base))
        .collect();
    Ok(list(&base, uri.path(), uri.query(), items))
}

pub(crate) async fn get_route(
    State(sh): Sh,
    headers: HeaderMap,
    Path(guid): Path<String>,
) -> Answer {
    let base = base_url(&sh, &headers);
    let store = sh.store.lock();
    let r = store
        .route(&guid)
        .ok_or_else(|| CcError::not_found("Route"))?;
    ok(&store.route_json(r, &base))
}

pub(crate) async fn create_route(State(sh): Sh, headers: HeaderMap, body: Bytes) -> Answer {
    let base = base_url(&sh, &headers);
    let body = json_body(&body)?;
    let text = |key: &str| match body.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(CcError::unprocessable(format!("{key} must be a string"))),
    };
    let host = text("host")?;
    let path = text("path")?;
    if !host.is_empty()
        && (host.len() > 63
            || host != "*" && !host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    {
        return Err(CcError::unprocessable(
            "Host must be either \"*\" or contain only alphanumeric characters, \"_\", or \"-\"",
        ));
    }
    if !path.is_empty() && (!path.starts_with('/') || path == "/" || path.contains('?')) {
        return Err(CcError::unprocessable(
            "Path must begin with a / and not be / alone",
        ));
    }
    let space = str_at(&body, "/relationships/space/data/guid")
        .ok_or_else(|| CcError::unprocessable("Relationships must include a space"))?
        .to_string();
    let domain = str_at(&body, "/relationships/domain/data/guid")
        .ok_or_else(|| CcError::unprocessable("Relationships must include a domain"))?
        .to_string();
    let mut store = sh.store.lock();
    if store.space(&space).is_none() {
        return Err(CcError::unprocessable(
            "Invalid space. Ensure that the space exists and you have access to it.",
        ));
    }
    let Some(domain_name) = store.domain(&domain).map(|d| d.name.clone()) else {
        return Err(CcError::unprocessable(
            "Invalid domain. Ensure that the domain exists and you have access to it.",
        ));
    };
    if store.find_route(&domain, &host, &path).is_some() {
        let what = if path.is_empty() {
            format!("host '{host}'")
        } else {
            format!("host '{host}' and path '{path}'")
        };
        return Err(CcError::unprocessable(format!(
            "Route already exists with {what} for domain '{domain_name}'."
        )));
    }
    let guid = store.add_route(&space, &domain, &host, &path);
    let r = store.route(&guid).ok_or_else(CcError::server)?;
    Ok(json_response(
        StatusCode::CREATED,
        &store.route_json(r, &base),
    ))
}

fn destinations_json(store: &crate::store::Store, base: &str, route: &str) -> Answer {
    let r = store
        .route(route)
        .ok_or_else(|| CcError::not_found("Route"))?;
    let destinations: Vec<Value> = r
        .destinations
        .iter()
        .map(crate::store::Store::destination_json)
        .collect();
    ok(&json!({
        "destinations": destinations,
        "links": {
            "self": {"href": format!("{base}/v3/routes/{route}/destinations")},
            "route": {"href": format!("{base}/v3/routes/{route}")},
        },
    }))
}

pub(crate) async fn route_destinations(
    State(sh): Sh,
    headers: HeaderMap,
    Path(guid): Path<String>,
) -> Answer {
    let base = base_url(&sh, &headers);
    let store = sh.store.lock();
    destinations_json(&store, &base, &guid)
}

pub(crate) async fn add_destinations(
    State(sh): Sh,
    headers: HeaderMap,
    Path(guid): Path<String>,
    body: Bytes,
) -> Answer {
    let base = base_url(&sh, &headers);
    let body = json_body(&body)?;
    let Some(list) = body.get("destinations").and_then(Value::as_array) else {
        return Err(CcError::unprocessable("Destinations must be an array"));
    };
    let mut apps = Vec::new();
    for d in list {
        let Some(app) = str_at(d, "/app/guid") else {
            return Err(CcError::unprocessable(
                "Destinations must each name an app guid",
            ));
        };
        if let Some(t) = d.pointer("/app/process/type")
            && t.as_str() != Some("web")
        {
            return Err(CcError::unprocessable(
                "Only the web process type is supported here",
            ));
        }
        apps.push(app.to_string());
    }
    let mut store = sh.store.lock();
    let Some(route_space) = store.route(&guid).map(|r| r.space.clone()) else {
        return Err(CcError::not_found("Route"));
    };
    for app in &apps {
        match store.app(app) {
            None => {
                return Err(CcError::unprocessable(format!(
                    "App(s) with guid(s) \"{app}\" do not exist or you do not have access."
                )));
            }
            Some(a) if a.space != route_space => {
                return Err(CcError::unprocessable(
                    "Routes destinations must be in the same space as the route.",
                ));
            }
            Some(_) => {}
        }
    }
    for app in &apps {
        store.add_destination(&guid, app);
    }
    destinations_json(&store, &base, &guid)
}
