//! The foundation's resources (orgs, spaces, apps and their web processes, droplets, domains,
//! routes, jobs), kept in creation order, and their CC v3 JSON shapes.
//!
//! Owns the data and the rendering; the HTTP handlers decide what may change. Must never be
//! locked across an `.await` (it lives in a `parking_lot::Mutex`), touch the network or read
//! a droplet's bits.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::time::now_rfc3339;

/// A new GUID (UUID v4).
pub(crate) fn new_guid() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lifecycle {
    Buildpack,
    Docker,
}

impl Lifecycle {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Buildpack => "buildpack",
            Lifecycle::Docker => "docker",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppState {
    Started,
    Stopped,
}

impl AppState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AppState::Started => "STARTED",
            AppState::Stopped => "STOPPED",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropletState {
    AwaitingUpload,
    ProcessingUpload,
    Staged,
    Failed,
}

impl DropletState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DropletState::AwaitingUpload => "AWAITING_UPLOAD",
            DropletState::ProcessingUpload => "PROCESSING_UPLOAD",
            DropletState::Staged => "STAGED",
            DropletState::Failed => "FAILED",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobState {
    Processing,
    Complete,
    Failed,
}

impl JobState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            JobState::Processing => "PROCESSING",
            JobState::Complete => "COMPLETE",
            JobState::Failed => "FAILED",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Stamp {
    pub(crate) created_at: String,
    pub(crate) updated_at: String,
}

impl Stamp {
    pub(crate) fn now() -> Stamp {
        let t = now_rfc3339();
        Stamp {
            created_at: t.clone(),
            updated_at: t,
        }
    }

    pub(crate) fn touch(&mut self) {
        self.updated_at = now_rfc3339();
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Org {
    pub(crate) guid: String,
    pub(crate) name: String,
    pub(crate) stamp: Stamp,
}

#[derive(Debug, Clone)]
pub(crate) struct Space {
    pub(crate) guid: String,
    pub(crate) name: String,
    pub(crate) org: String,
    pub(crate) stamp: Stamp,
}

#[derive(Debug, Clone)]
pub(crate) struct App {
    pub(crate) guid: String,
    pub(crate) name: String,
    pub(crate) space: String,
    pub(crate) state: AppState,
    pub(crate) lifecycle: Lifecycle,
    pub(crate) current_droplet: Option<String>,
    /// The web process (its guid is the app's, as in the CC).
    pub(crate) instances: u32,
    pub(crate) process_stamp: Stamp,
    pub(crate) stamp: Stamp,
}

#[derive(Debug, Clone)]
pub(crate) struct Droplet {
    pub(crate) guid: String,
    pub(crate) app: String,
    pub(crate) state: DropletState,
    pub(crate) error: Option<String>,
    pub(crate) lifecycle: Lifecycle,
    /// Set once STAGED (buildpack).
    pub(crate) sha256: Option<String>,
    pub(crate) size: Option<u64>,
    pub(crate) image: Option<String>,
    pub(crate) process_types: Value,
    /// Where the bits are, once uploaded (or seeded).
    pub(crate) blob: Option<PathBuf>,
    pub(crate) stamp: Stamp,
}

#[derive(Debug, Clone)]
pub(crate) struct Domain {
    pub(crate) guid: String,
    pub(crate) name: String,
    pub(crate) stamp: Stamp,
}

#[derive(Debug, Clone)]
pub(crate) struct Destination {
    pub(crate) guid: String,
    pub(crate) app: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub(crate) guid: String,
    pub(crate) host: String,
    pub(crate) path: String,
    pub(crate) space: String,
    pub(crate) domain: String,
    pub(crate) destinations: Vec<Destination>,
    pub(crate) stamp: Stamp,
}

#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub(crate) guid: String,
    pub(crate) droplet: String,
    pub(crate) state: JobState,
    pub(crate) errors: Vec<Value>,
    pub(crate) stamp: Stamp,
}

/// Everything, each kind in creation order.
#[derive(Debug, Default)]
pub(crate) struct Store {
    pub(crate) orgs: Vec<Org>,
    pub(crate) spaces: Vec<Space>,
    pub(crate) apps: Vec<App>,
    pub(crate) droplets: Vec<Droplet>,
    pub(crate) domains: Vec<Domain>,
    pub(crate) routes: Vec<Route>,
    pub(crate) jobs: Vec<Job>,
}

impl Store {
    pub(crate) fn org(&self, guid: &str) -> Option<&Org> {
        self.orgs.iter().find(|o| o.guid == guid)
    }
    pub(crate) fn space(&self, guid: &str) -> Option<&Space> {
        self.spaces.iter().find(|s| s.guid == guid)
    }
    pub(crate) fn app(&self, guid: &str) -> Option<&App> {
        self.apps.iter().find(|a| a.guid == guid)
    }
    pub(crate) fn app_mut(&mut self, guid: &str) -> Option<&mut App> {
        self.apps.iter_mut().find(|a| a.guid == guid)
    }
    pub(crate) fn droplet(&self, guid: &str) -> Option<&Droplet> {
        self.droplets.iter().find(|d| d.guid == guid)
    }
    pub(crate) fn droplet_mut(&mut self, guid: &str) -> Option<&mut Droplet> {
        self.droplets.iter_mut().find(|d| d.guid == guid)
    }
    pub(crate) fn domain(&self, guid: &str) -> Option<&Domain> {
        self.domains.iter().find(|d| d.guid == guid)
    }
    pub(crate) fn route(&self, guid: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.guid == guid)
    }
    pub(crate) fn route_mut(&mut self, guid: &str) -> Option<&mut Route> {
        self.routes.iter_mut().find(|r| r.guid == guid)
    }
    pub(crate) fn job(&self, guid: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.guid == guid)
    }
    pub(crate) fn job_mut(&mut self, guid: &str) -> Option<&mut Job> {
        self.jobs.iter_mut().find(|j| j.guid == guid)
    }

    pub(crate) fn add_org(&mut self, name: &str) -> String {
        let guid = new_guid();
        self.orgs.push(Org {
            guid: guid.clone(),
            name: name.into(),
            stamp: Stamp::now(),
        });
        guid
    }

    pub(crate) fn add_space(&mut self, org: &str, name: &str) -> String {
        let guid = new_guid();
        self.spaces.push(Space {
            guid: guid.clone(),
            name: name.into(),
            org: org.into(),
            stamp: Stamp::now(),
        });
        guid
    }

    /// A new app in `space`, STOPPED, with a web process of `instances`.
    pub(crate) fn add_app(&mut self, space: &str, name: &str, lifecycle: Lifecycle) -> String {
        let guid = new_guid();
        self.apps.push(App {
            guid: guid.clone(),
            name: name.into(),
            space: space.into(),
            state: AppState::Stopped,
            lifecycle,
            current_droplet: None,
            instances: 1,
            process_stamp: Stamp::now(),
            stamp: Stamp::now(),
        });
        guid
    }

    pub(crate) fn add_droplet(&mut self, droplet: Droplet) {
        self.droplets.push(droplet);
    }

    pub(crate) fn add_domain(&mut self, name: &str) -> String {
        let guid = new_guid();
        self.domains.push(Domain {
            guid: guid.clone(),
            name: name.into(),
            stamp: Stamp::now(),
        });
        guid
    }

    /// The route `host`/`domain`/`path`, if there is one.
    pub(crate) fn find_route(&self, domain: &str, host: &str, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.domain == domain && r.host == host && r.path == path)
    }

    pub(crate) fn add_route(
        &mut self,
        space: &str,
        domain: &str,
        host: &str,
        path: &str,
    ) -> String {
        let guid = new_guid();
        self.routes.push(Route {
            guid: guid.clone(),
            host: host.into(),
            path: path.into(),
            space: space.into(),
            domain: domain.into(),
            destinations: Vec::new(),
            stamp: Stamp::now(),
        });
        guid
    }

    /// Map `app` to `route` (a no-op when it already is).
    pub(crate) fn add_destination(&mut self, route: &str, app: &str) {
        if let Some(r) = self.route_mut(route)
            && !r.destinations.iter().any(|d| d.app == app)
        {
            r.destinations.push(Destination {
                guid: new_guid(),
                app: app.into(),
            });
            r.stamp.touch();
        }
    }

    /// A route's `url`: `host.domain` + path (no host: `domain` + path).
    pub(crate) fn route_url(&self, route: &Route) -> String {
        let domain = self.domain(&route.domain).map_or("", |d| d.name.as_str());
        if route.host.is_empty() {
            format!("{domain}{}", route.path)
        } else {
            format!("{}.{domain}{}", route.host, route.path)
        }
    }

    // --- CC v3 JSON -------------------------------------------------------------------

    pub(crate) fn org_json(&self, o: &Org, base: &str) -> Value {
        json!({
            "guid": o.guid, "name": o.name, "suspended": false,
            "created_at": o.stamp.created_at, "updated_at": o.stamp.updated_at,
            "relationships": {"quota": {"data": null}},
            "metadata": {"labels": {}, "annotations": {}},
            "links": {"self": {"href": format!("{base}/v3/organizations/{}", o.guid)}},
        })
    }

    pub(crate) fn space_json(&self, s: &Space, base: &str) -> Value {
        json!({
            "guid": s.guid, "name": s.name,
            "created_at": s.stamp.created_at, "updated_at": s.stamp.updated_at,
            "relationships": {"organization": {"data": {"guid": s.org}}, "quota": {"data": null}},
            "metadata": {"labels": {}, "annotations": {}},
            "links": {
                "self": {"href": format!("{base}/v3/spaces/{}", s.guid)},
                "organization": {"href": format!("{base}/v3/organizations/{}", s.org)},
            },
        })
    }

    pub(crate) fn app_json(&self, a: &App, base: &str) -> Value {
        let lifecycle = match a.lifecycle {
            Lifecycle::Buildpack => {
                json!({"type": "buildpack", "data": {"buildpacks": [], "stack": "cflinuxfs4"}})
            }
            Lifecycle::Docker => json!({"type": "docker", "data": {}}),
        };
        let app = format!("{base}/v3/apps/{}", a.guid);
        json!({
            "guid": a.guid, "name": a.name, "state": a.state.as_str(),
            "created_at": a.stamp.created_at, "updated_at": a.stamp.updated_at,
            "lifecycle": lifecycle,
            "relationships": {"space": {"data": {"guid": a.space}}},
            "metadata": {"labels": {}, "annotations": {}},
            "links": {
                "self": {"href": app},
                "space": {"href": format!("{base}/v3/spaces/{}", a.space)},
                "processes": {"href": format!("{app}/processes")},
                "droplets": {"href": format!("{app}/droplets")},
                "current_droplet": {"href": format!("{app}/droplets/current")},
                "start": {"href": format!("{app}/actions/start"), "method": "POST"},
                "stop": {"href": format!("{app}/actions/stop"), "method": "POST"},
            },
        })
    }

    pub(crate) fn process_json(&self, a: &App, base: &str) -> Value {
        json!({
            "guid": a.guid, "type": "web", "command": null, "instances": a.instances,
            "memory_in_mb": 256, "disk_in_mb": 1024, "log_rate_limit_in_bytes_per_second": -1,
            "health_check": {"type": "port", "data": {"timeout": null, "invocation_timeout": null}},
            "created_at": a.process_stamp.created_at, "updated_at": a.process_stamp.updated_at,
            "relationships": {"app": {"data": {"guid": a.guid}}, "revision": {"data": null}},
            "metadata": {"labels": {}, "annotations": {}},
            "links": {
                "self": {"href": format!("{base}/v3/processes/{}", a.guid)},
                "scale": {"href": format!("{base}/v3/processes/{}/actions/scale", a.guid), "method": "POST"},
                "app": {"href": format!("{base}/v3/apps/{}", a.guid)},
            },
        })
    }

    pub(crate) fn droplet_json(&self, d: &Droplet, base: &str) -> Value {
        let checksum = match (&d.sha256, d.state) {
            (Some(sha), DropletState::Staged) => json!({"type": "sha256", "value": sha}),
            _ => Value::Null,
        };
        let stack = match d.lifecycle {
            Lifecycle::Buildpack => json!("cflinuxfs4"),
            Lifecycle::Docker => Value::Null,
        };
        let mut links = json!({
            "self": {"href": format!("{base}/v3/droplets/{}", d.guid)},
            "app": {"href": format!("{base}/v3/apps/{}", d.app)},
            "assign_current_droplet": {
                "href": format!("{base}/v3/apps/{}/relationships/current_droplet", d.app),
                "method": "PATCH",
            },
        });
        if d.lifecycle == Lifecycle::Buildpack {
            links["upload"] = json!({
                "href": format!("{base}/v3/droplets/{}/upload", d.guid), "method": "POST"
            });
            links["download"] = json!({"href": format!("{base}/v3/droplets/{}/download", d.guid)});
        }
        json!({
            "guid": d.guid, "state": d.state.as_str(), "error": d.error,
            "lifecycle": {"type": d.lifecycle.as_str(), "data": {}},
            "checksum": checksum, "buildpacks": [], "stack": stack, "image": d.image,
            "execution_metadata": "", "process_types": d.process_types,
            "created_at": d.stamp.created_at, "updated_at": d.stamp.updated_at,
            "relationships": {"app": {"data": {"guid": d.app}}},
            "metadata": {"labels": {}, "annotations": {}},
            "links": links,
        })
    }

    pub(crate) fn domain_json(&self, d: &Domain, base: &str) -> Value {
        json!({
            "guid": d.guid, "name": d.name, "internal": false, "router_group": null,
            "supported_protocols": ["http"],
            "created_at": d.stamp.created_at, "updated_at": d.stamp.updated_at,
            "relationships": {"organization": {"data": null}, "shared_organizations": {"data": []}},
            "metadata": {"labels": {}, "annotations": {}},
            "links": {"self": {"href": format!("{base}/v3/domains/{}", d.guid)}},
        })
    }

    pub(crate) fn destination_json(d: &Destination) -> Value {
        json!({
            "guid": d.guid, "app": {"guid": d.app, "process": {"type": "web"}},
            "weight": null, "port": 8080, "protocol": "http1",
        })
    }

    pub(crate) fn route_json(&self, r: &Route, base: &str) -> Value {
        let destinations: Vec<Value> = r.destinations.iter().map(Store::destination_json).collect();
        json!({
            "guid": r.guid, "host": r.host, "path": r.path, "url": self.route_url(r),
            "protocol": "http", "port": null,
            "created_at": r.stamp.created_at, "updated_at": r.stamp.updated_at,
            "destinations": destinations,
            "relationships": {"space": {"data": {"guid": r.space}}, "domain": {"data": {"guid": r.domain}}},
            "metadata": {"labels": {}, "annotations": {}},
            "links": {
                "self": {"href": format!("{base}/v3/routes/{}", r.guid)},
                "space": {"href": format!("{base}/v3/spaces/{}", r.space)},
                "domain": {"href": format!("{base}/v3/domains/{}", r.domain)},
                "destinations": {"href": format!("{base}/v3/routes/{}/destinations", r.guid)},
            },
        })
    }

    pub(crate) fn job_json(&self, j: &Job, base: &str) -> Value {
        json!({
            "guid": j.guid, "operation": "droplet.upload", "state": j.state.as_str(),
            "errors": j.errors, "warnings": [],
            "created_at": j.stamp.created_at, "updated_at": j.stamp.updated_at,
            "links": {
                "self": {"href": format!("{base}/v3/jobs/{}", j.guid)},
                "droplet": {"href": format!("{base}/v3/droplets/{}", j.droplet)},
            },
        })
    }

    /// `GET /_standin/state`: names instead of GUIDs where the tests want them, in creation
    /// order, nothing that changes by itself.
    pub(crate) fn state_json(&self, site: &str) -> Value {
        let org_name = |guid: &str| self.org(guid).map(|o| o.name.clone());
        let space = |guid: &str| self.space(guid);
        json!({
            "site": site,
            "domains": self.domains.iter().map(|d| json!({"guid": d.guid, "name": d.name})).collect::<Vec<_>>(),
            "orgs": self.orgs.iter().map(|o| json!({"guid": o.guid, "name": o.name})).collect::<Vec<_>>(),
            "spaces": self.spaces.iter().map(|s| json!({
                "guid": s.guid, "name": s.name, "org": org_name(&s.org),
            })).collect::<Vec<_>>(),
            "apps": self.apps.iter().map(|a| {
                let sp = space(&a.space);
                json!({
                    "guid": a.guid, "name": a.name,
                    "org": sp.and_then(|s| org_name(&s.org)),
                    "space": sp.map(|s| s.name.clone()),
                    "state": a.state.as_str(), "lifecycle": a.lifecycle.as_str(),
                    "instances": a.instances, "current_droplet": a.current_droplet,
                    "created_at": a.stamp.created_at,
                })
            }).collect::<Vec<_>>(),
            "droplets": self.droplets.iter().map(|d| {
                let staged = d.state == DropletState::Staged;
                json!({
                    "guid": d.guid, "app": d.app, "state": d.state.as_str(),
                    "lifecycle": d.lifecycle.as_str(),
                    "sha256": if staged { d.sha256.clone() } else { None },
                    "size": if staged { d.size } else { None },
                    "image": d.image, "error": d.error,
                })
            }).collect::<Vec<_>>(),
            "routes": self.routes.iter().map(|r| json!({
                "guid": r.guid, "host": r.host, "path": r.path, "url": self.route_url(r),
                "domain": self.domain(&r.domain).map(|d| d.name.clone()),
                "destinations": r.destinations.iter().map(|d| d.app.clone()).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "jobs": self.jobs.iter().map(|j| json!({"guid": j.guid, "state": j.state.as_str()})).collect::<Vec<_>>(),
        })
    }
}
