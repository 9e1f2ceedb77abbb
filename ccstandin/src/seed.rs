//! The seed: what the foundation holds at startup (domains, orgs, spaces, apps with their
//! routes, processes and droplets), read strictly from JSON, and the deterministic droplet
//! bits it asks for (`size` bytes of splitmix64 output from `seed`, written to the blob dir
//! and hashed with SHA-256 as they are generated).
//!
//! Owns the seed's format and its checks. Must never accept an unknown field or a value it
//! cannot honour (every error names the field), nor hold a droplet's bits in memory.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::Error;
use crate::store::{AppState, Droplet, DropletState, Lifecycle, Stamp, Store, new_guid};

/// A validated seed (see the crate docs for its JSON).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    #[serde(default)]
    domains: Vec<String>,
    #[serde(default)]
    orgs: Vec<SeedOrg>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedOrg {
    name: String,
    #[serde(default)]
    spaces: Vec<SeedSpace>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedSpace {
    name: String,
    #[serde(default)]
    apps: Vec<SeedApp>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
enum SeedLifecycle {
    #[default]
    #[serde(rename = "buildpack")]
    Buildpack,
    #[serde(rename = "docker")]
    Docker,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
enum SeedState {
    #[serde(rename = "STARTED")]
    Started,
    #[default]
    #[serde(rename = "STOPPED")]
    Stopped,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedApp {
    name: String,
    #[serde(default)]
    lifecycle: SeedLifecycle,
    #[serde(default)]
    state: SeedState,
    #[serde(default = "one")]
    instances: u32,
    #[serde(default)]
    routes: Vec<String>,
    droplet: Option<SeedDroplet>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedDroplet {
    size: u64,
    seed: u64,
}

/// The largest seeded droplet (a guard against a typo filling the disk).
const MAX_SEEDED_DROPLET: u64 = 16 << 30;

impl Seed {
    /// Read and check the seed file at `path`.
    pub fn from_file(path: &Path) -> Result<Seed, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::SeedRead {
            path: path.to_path_buf(),
            source,
        })?;
        Seed::from_json(&text)
    }

    /// Parse and check a seed.
    pub fn from_json(text: &str) -> Result<Seed, Error> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let seed: Seed = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            Error::seed(field, e.into_inner().to_string())
        })?;
        seed.check()?;
        Ok(seed)
    }

    fn check(&self) -> Result<(), Error> {
        for (i, d) in self.domains.iter().enumerate() {
            let field = format!("domains[{i}]");
            if !valid_hostname(d) {
                return Err(Error::seed(field, format!("{d:?} is not a domain name")));
            }
            if self.domains[..i].contains(d) {
                return Err(Error::seed(field, format!("domain {d:?} given twice")));
            }
        }
        for (o, org) in self.orgs.iter().enumerate() {
            let field = format!("orgs[{o}]");
            check_name(&format!("{field}.name"), &org.name)?;
            if self.orgs[..o].iter().any(|x| x.name == org.name) {
                return Err(Error::seed(
                    format!("{field}.name"),
                    format!("org {:?} given twice", org.name),
                ));
            }
            for (s, space) in org.spaces.iter().enumerate() {
                let field = format!("{field}.spaces[{s}]");
                check_name(&format!("{field}.name"), &space.name)?;
                if org.spaces[..s].iter().any(|x| x.name == space.name) {
                    return Err(Error::seed(
                        format!("{field}.name"),
                        format!("space {:?} given twice", space.name),
                    ));
                }
                for (a, app) in space.apps.iter().enumerate() {
                    let field = format!("{field}.apps[{a}]");
                    check_name(&format!("{field}.name"), &app.name)?;
                    if space.apps[..a].iter().any(|x| x.name == app.name) {
                        return Err(Error::seed(
                            format!("{field}.name"),
                            format!("app {:?} given twice", app.name),
                        ));
                    }
                    match (app.lifecycle, app.droplet, app.state) {
                        (SeedLifecycle::Docker, Some(_), _) => {
                            return Err(Error::seed(
                                format!("{field}.droplet"),
                                "a docker app has no droplet bits (it gets a docker droplet of its own)",
                            ));
                        }
                        (SeedLifecycle::Buildpack, None, SeedState::Started) => {
                            return Err(Error::seed(
                                format!("{field}.droplet"),
                                "a STARTED buildpack app needs a droplet",
                            ));
                        }
                        (_, Some(d), _) if d.size > MAX_SEEDED_DROPLET => {
                            return Err(Error::seed(
                                format!("{field}.droplet.size"),
                                format!("at most {MAX_SEEDED_DROPLET} bytes"),
                            ));
                        }
                        _ => {}
                    }
                    for (r, route) in app.routes.iter().enumerate() {
                        self.split_route(route)
                            .map_err(|m| Error::seed(format!("{field}.routes[{r}]"), m))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// `host.domain[/path]` → (domain, host, path), the domain the longest matching suffix.
    fn split_route<'a>(&'a self, route: &'a str) -> Result<(&'a str, &'a str, &'a str), String> {
        let (name, path) = match route.find('/') {
            Some(i) => route.split_at(i),
            None => (route, ""),
        };
        if path == "/" || path.contains("//") || path.contains(['?', '#', ' ']) {
            return Err(format!("{route:?}: bad path {path:?}"));
        }
        let mut best: Option<(&str, &str)> = None;
        for d in &self.domains {
            let host = if name == d {
                Some("")
            } else {
                name.strip_suffix(d.as_str())
                    .and_then(|h| h.strip_suffix('.'))
            };
            if let Some(host) = host
                && best.is_none_or(|(b, _)| d.len() > b.len())
            {
                best = Some((d.as_str(), host));
            }
        }
        let (domain, host) = best
            .ok_or_else(|| format!("{route:?} is under none of the domains {:?}", self.domains))?;
        if !host.is_empty() && !valid_hostname(host) {
            return Err(format!("{route:?}: bad host {host:?}"));
        }
        Ok((domain, host, path))
    }

    /// Fill `store` and write the seeded droplets' bits under `blob_dir`.
    pub(crate) fn apply(&self, store: &mut Store, blob_dir: &Path) -> Result<(), Error> {
        let mut domain_guids = Vec::new();
        for d in &self.domains {
            domain_guids.push((d.clone(), store.add_domain(d)));
        }
        for org in &self.orgs {
            let org_guid = store.add_org(&org.name);
            for space in &org.spaces {
                let space_guid = store.add_space(&org_guid, &space.name);
                for app in &space.apps {
                    self.apply_app(store, blob_dir, &space_guid, app, &domain_guids)?;
                }
            }
        }
        Ok(())
    }

    fn apply_app(
        &self,
        store: &mut Store,
        blob_dir: &Path,
        space: &str,
        app: &SeedApp,
        domains: &[(String, String)],
    ) -> Result<(), Error> {
        let lifecycle = match app.lifecycle {
            SeedLifecycle::Buildpack => Lifecycle::Buildpack,
            SeedLifecycle::Docker => Lifecycle::Docker,
        };
        let guid = store.add_app(space, &app.name, lifecycle);
        let droplet = match (lifecycle, app.droplet) {
            (Lifecycle::Docker, _) => Some(Droplet {
                guid: new_guid(),
                app: guid.clone(),
                state: DropletState::Staged,
                error: None,
                lifecycle,
                sha256: None,
                size: None,
                image: Some(format!("example/{}:latest", app.name)),
                process_types: serde_json::json!({"web": ""}),
                blob: None,
                stamp: Stamp::now(),
            }),
            (Lifecycle::Buildpack, Some(d)) => {
                let droplet_guid = new_guid();
                let path = blob_dir.join(format!("droplet-{droplet_guid}"));
                let sha = write_seeded(&path, d.size, d.seed)?;
                Some(Droplet {
                    guid: droplet_guid,
                    app: guid.clone(),
                    state: DropletState::Staged,
                    error: None,
                    lifecycle,
                    sha256: Some(sha),
                    size: Some(d.size),
                    image: None,
                    process_types: serde_json::json!({"web": "bundle exec rackup"}),
                    blob: Some(path),
                    stamp: Stamp::now(),
                })
            }
            (Lifecycle::Buildpack, None) => None,
        };
        let current = droplet.as_ref().map(|d| d.guid.clone());
        if let Some(d) = droplet {
            store.add_droplet(d);
        }
        if let Some(a) = store.app_mut(&guid) {
            a.current_droplet = current;
            a.instances = app.instances;
            if let SeedState::Started = app.state {
                a.state = AppState::Started;
            }
        }
        for route in &app.routes {
            let Ok((domain, host, path)) = self.split_route(route) else {
                continue; // checked in `check`
            };
            let Some((_, domain_guid)) = domains.iter().find(|(n, _)| n == domain) else {
                continue;
            };
            let route_guid = match store.find_route(domain_guid, host, path) {
                Some(r) => r.guid.clone(),
                None => store.add_route(space, domain_guid, host, path),
            };
            store.add_destination(&route_guid, &guid);
        }
        Ok(())
    }
}

fn check_name(field: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        return Err(Error::seed(field, format!("{name:?} is not a name")));
    }
    Ok(())
}

fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// splitmix64: the deterministic bits of a seeded droplet.
#[derive(Debug)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fill `buf` with the next bytes (little-endian words; a partial last word is cut).
    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// `size` seeded bytes, the way [`write_seeded`] writes them (for tests).
pub fn seeded_bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0; size];
    SplitMix64::new(seed).fill(&mut v);
    v
}

/// Write `size` bytes from `seed` to `path` in 1 MiB chunks; their SHA-256 as hex.
fn write_seeded(path: &PathBuf, size: u64, seed: u64) -> Result<String, Error> {
    let err = |source| Error::BlobDir {
        path: path.clone(),
        source,
    };
    const CHUNK: usize = 1 << 20;
    let mut file = std::fs::File::create(path).map_err(err)?;
    let mut rng = SplitMix64::new(seed);
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; CHUNK];
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
        // Chunks are whole words (CHUNK is a multiple of 8), so the stream matches `seeded_bytes`.
        rng.fill(&mut buf[..n]);
        hash.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(err)?;
        left -= n as u64;
    }
    file.flush().map_err(err)?;
    Ok(hex(hash.finish().as_ref()))
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
