//! The BOSH release (`deploy/bosh/`) as a BOSH director would render it: every template of
//! the `grouter` job is filled in by Ruby's ERB through a minimal BOSH shim
//! (`deploy/bosh/test/render.rb`: `p`, `if_p`, `spec`, the spec's defaults), into a fake
//! `/var/vcap` tree; then the rendered `bin/pre-start` runs (it makes the node's directories,
//! narrows the secrets to 0600 and runs `grouter check` on the rendered config), and the
//! rendered config is started the way `bpm.yml` starts it.
//!
//! Owns: what an operator's manifest turns into. Never talks to a real director.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use grouter::config::Config;
use grouter_tests::{LogLines, MeshCa, NatsServer, find_program, grouter_bin};
use serde_json::{Value, json};

fn release_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/bosh")
}

/// A rendered job in its own fake `/var/vcap` (`root/var/vcap/jobs/grouter/...`).
struct Rendered {
    _root: tempfile::TempDir,
    vcap: PathBuf,
}

impl Rendered {
    fn job(&self) -> PathBuf {
        self.vcap.join("jobs/grouter")
    }
    fn config(&self) -> PathBuf {
        self.job().join("config/grouter.toml")
    }
    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.job().join(rel)).unwrap()
    }
    fn mode(&self, rel: &str) -> u32 {
        std::fs::metadata(self.job().join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }
    /// The rendered `bin/pre-start`, run as the agent runs it (it ends with `grouter check`).
    fn pre_start(&self) -> Output {
        Command::new("bash")
            .arg(self.job().join("bin/pre-start"))
            .output()
            .unwrap()
    }
}

/// Render the job with `properties` (nested as in a manifest): `Ok` with the tree, or `Err`
/// with the renderer's stderr.
fn render(properties: &Value) -> Result<Rendered, String> {
    let ruby = find_program("ruby", "apt-get install -y ruby");
    let root = tempfile::tempdir().unwrap();
    let vcap = root.path().join("var/vcap");
    let job = vcap.join("jobs/grouter");
    let props = root.path().join("properties.json");
    std::fs::write(&props, serde_json::to_vec(properties).unwrap()).unwrap();
    let out = Command::new(ruby)
        .arg(release_dir().join("test/render.rb"))
        .arg(release_dir().join("jobs/grouter"))
        .arg(&props)
        .arg(&job)
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    // Move the tree under the temp dir: every /var/vcap/ the templates name becomes ours.
    let prefix = format!("{}/", vcap.display());
    for file in files(&job) {
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, text.replace("/var/vcap/", &prefix)).unwrap();
    }
    let bin = vcap.join("packages/grouter/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(grouter_bin(), bin.join("grouter")).unwrap();
    Ok(Rendered { _root: root, vcap })
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The property names `jobs/grouter/spec` declares.
fn spec_properties() -> Vec<String> {
    let ruby = find_program("ruby", "apt-get install -y ruby");
    let out = Command::new(ruby)
        .args([
            "-ryaml",
            "-e",
            "puts YAML.safe_load(File.read(ARGV[0])).fetch('properties').keys",
        ])
        .arg(release_dir().join("jobs/grouter/spec"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(names.len() > 60, "{names:?}");
    names
}

/// `section.key` of every `key = ...` line of a TOML file, commented-out ones included.
fn toml_keys(text: &str) -> std::collections::BTreeSet<String> {
    let mut section = String::new();
    let mut keys = std::collections::BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            section = format!("{name}.");
            continue;
        }
        let line = line.trim_start_matches('#').trim_start();
        let Some((key, _)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            keys.insert(format!("{section}{key}"));
        }
    }
    keys
}

/// Only the properties the job's spec has no default for.
fn minimal() -> Value {
    json!({
        "site": "lon",
        "nats": { "servers": ["nats://10.0.0.5:4222"] },
        "gorouters": { "addresses": ["10.0.1.5:80"] },
        "admin": { "token": "admin-secret" },
    })
}

fn assert_pre_start_passes(r: &Rendered) {
    let out = r.pre_start();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pre-start failed:\n{stderr}\n{}",
        r.read("config/grouter.toml")
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("grouter.toml: ok"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("warning:"),
        "a file the rendered config names is missing:\n{stderr}"
    );
}

#[test]
fn minimal_properties_render_a_config_grouter_check_accepts() {
    let r = render(&minimal()).unwrap();
    assert_pre_start_passes(&r);

    let c = Config::load(&r.config()).unwrap();
    assert_eq!(
        c.node_id, "grouter-0",
        "default node id: spec.name-spec.index"
    );
    assert_eq!(c.site, "lon");
    assert_eq!(c.state_dir(), r.vcap.join("store/grouter/state"));
    assert!(r.vcap.join("store/grouter/state").is_dir());
    assert!(
        c.mesh.is_none() && c.dns.is_none() && c.tls.is_none() && c.cloud_controller.is_none(),
        "optional sections appear only when their properties are set:\n{}",
        r.read("config/grouter.toml")
    );
    assert_eq!(c.proxy.http_listen.to_string(), "0.0.0.0:80");
    assert_eq!(c.nats.stale_threshold_secs, 120);
    assert_eq!(r.read("config/admin.token").trim(), "admin-secret");
    for secret in ["config/admin.token", "config/grouter.toml"] {
        assert_eq!(r.mode(secret), 0o600, "{secret}");
    }
    let bpm = r.read("config/bpm.yml");
    assert!(
        bpm.contains("- run\n  - --config\n") && bpm.contains("config/grouter.toml"),
        "{bpm}"
    );
}

/// Every section: mesh with a real certificate from the mesh CA, HTTPS, DNS, the Cloud
/// Controller; the node then starts from the rendered files exactly as bpm starts it.
#[tokio::test]
async fn full_properties_render_a_node_that_starts() {
    let ca = MeshCa::new();
    let issued = ca.issue("lon-1", "lon");
    let pem = |name: &str| std::fs::read_to_string(issued.path().join(name)).unwrap();
    // A CRL revoking another node, as `grouter tls revoke` writes it.
    drop(ca.issue("lon-9", "lon"));
    let revoke = Command::new(grouter_bin())
        .args(["tls", "revoke", "--ca"])
        .arg(ca.dir())
        .args(["--node", "lon-9"])
        .output()
        .unwrap();
    assert!(
        revoke.status.success(),
        "{}",
        String::from_utf8_lossy(&revoke.stderr)
    );
    let crl = std::fs::read_to_string(ca.dir().join("crl.pem")).unwrap();
    let apps = grouter_tests::AppCerts::new();
    let (cert, key, _) = apps.issue_pem(&["apps.example.com"], None);
    let bus = NatsServer::start();
    let gorouter = grouter_tests::gorouter::GoRouterStub::start("lon").await;
    let gorouter_addr = gorouter.addr();
    let segment = grouter_tests::gorouter::GoRouterStub::start("lon").await;
    let properties = json!({
        "node_id": "lon-1",
        "site": "lon",
        "region": "eu",
        "worker_threads": 2,
        "nats": {
            "servers": [bus.url()], "user": "grouter", "password": "p\"w\\d",
            "stale_threshold_secs": 60, "prune_interval_secs": 10,
            "tls_stale_threshold_secs": 240, "max_pending_messages": 4096,
        },
        "gorouters": {
            "addresses": [gorouter_addr.to_string()], "health_port": gorouter_addr.port(),
            "segments": { "seg-a": [segment.addr().to_string()] },
            "response_timeout_secs": 120,
        },
        "proxy": {
            "http_listen": "127.0.0.1:0", "https_listen": "127.0.0.1:0",
            "max_connections": 1000, "remote": "redirect",
            "redirect_host": "{label}.{site}.{parent}", "site_header": false,
            "trusted_proxies": ["10.0.0.0/8"], "forwarded_client_cert": "forward",
            "tracing": "b3",
        },
        "tls": {
            "default_cert": cert, "default_key": key,
            "client_cert": "request", "client_ca": pem("ca.pem"),
        },
        "mesh": {
            "ca": pem("ca.pem"), "cert": pem("node.pem"), "key": pem("node.key"), "crl": crl,
            "listen": "127.0.0.1:0", "advertise": "10.0.0.10:7946",
            "seeds": ["nyc-1.example.com:7946"], "dial_from": "127.0.0.1",
            "site_domains": { "lon": ["apps.example.com"] },
            "max_nodes": 50, "max_entries_per_partition": 10000, "max_connections": 100,
        },
        "dns": {
            "zones": ["apps.example.com"], "listen": "127.0.0.1:0",
            "site_addresses": ["192.0.2.10"], "client_networks": { "10.1.0.0/16": "lon" },
            "answer_sites": 2, "nameservers": { "ns1.apps.example.com": ["192.0.2.53"] },
        },
        "admin": {
            "listen": "127.0.0.1:0", "token": "admin-secret", "read_token": "read-secret",
            "max_connections": 64,
        },
        "cloud_controller": {
            "api": "https://api.sys.lon.example.com", "uaa": "https://uaa.sys.lon.example.com",
            "client_id": "grouter", "client_secret": "cc-secret", "ca": pem("ca.pem"),
        },
        "acme": {
            "directory_url": "https://acme.example.com/dir", "ca_roots": pem("ca.pem"),
            "contact": ["mailto:ops@example.com"], "domains": ["apps.example.com"],
            "challenges": ["http-01", "tls-alpn-01"], "renew_at": 0.7,
        },
        "log": { "format": "json", "access_log": false, "access_log_format": "rtr" },
    });
    let r = render(&properties).unwrap();
    assert_pre_start_passes(&r);

    // Every key of the annotated sample config (its commented-out optional keys included)
    // is a property the job writes.
    let sample = std::fs::read_to_string(release_dir().join("../configs/lon-1.toml")).unwrap();
    let mut rendered = toml_keys(&r.read("config/grouter.toml"));
    // The NATS keys that exclude (or would change) the ones above: a token instead of a
    // user, and a CA for tls:// servers.
    let mut props = minimal();
    props["nats"] = json!({ "servers": ["tls://nats.example.com:4222"], "token": "t", "tls_ca": pem("ca.pem") });
    let token = render(&props).unwrap();
    assert_pre_start_passes(&token);
    rendered.extend(toml_keys(&token.read("config/grouter.toml")));
    let missing: Vec<String> = toml_keys(&sample).difference(&rendered).cloned().collect();
    assert!(
        missing.is_empty(),
        "keys of deploy/configs/lon-1.toml the job cannot set: {missing:?}"
    );

    // And every property of the spec reaches the config: as the key of its name, or as
    // `<name>_file` for the ones whose value the job writes to a file.
    let unused: Vec<String> = spec_properties()
        .into_iter()
        .filter(|p| !rendered.contains(p) && !rendered.contains(&format!("{p}_file")))
        .collect();
    assert!(
        unused.is_empty(),
        "properties that reach no config key: {unused:?}"
    );

    let c = Config::load(&r.config()).unwrap();
    assert_eq!(c.node_id, "lon-1");
    assert_eq!(c.region.as_deref(), Some("eu"));
    assert_eq!(c.nats.password.as_deref(), Some("p\"w\\d"));
    let mesh = c.mesh.as_ref().expect("[mesh]");
    assert_eq!(mesh.advertise.as_deref(), Some("10.0.0.10:7946"));
    assert_eq!(mesh.site_domains["lon"], ["apps.example.com"]);
    assert_eq!(c.dns.as_ref().expect("[dns]").answer_sites, 2);
    let cc = c.cloud_controller.as_ref().expect("[cloud_controller]");
    assert_eq!(
        std::fs::read_to_string(&cc.client_secret_file)
            .unwrap()
            .trim(),
        "cc-secret"
    );
    let acme = c.acme.as_ref().expect("[acme]");
    assert_eq!(acme.domains, ["apps.example.com"]);
    assert!((acme.renew_at - 0.7).abs() < 1e-9);
    assert!(acme.ca_roots.as_ref().is_some_and(|p| p.is_file()));
    assert!(c.admin.read_token_file.is_some());
    assert!(c.tls.is_some() && c.proxy.https_listen.is_some());
    assert_eq!(c.gorouters.segments["seg-a"], [segment.addr().to_string()]);
    assert_eq!(c.gorouters.response_timeout_secs, 120);
    for secret in [
        "config/admin-read.token",
        "config/cc.secret",
        "config/mesh/node.key",
        "config/tls/default.key",
    ] {
        assert_eq!(r.mode(secret), 0o600, "{secret}");
    }

    // Start it as bpm.yml says (executable and args), and wait for its admin API.
    let bpm = r.read("config/bpm.yml");
    let args: Vec<&str> = bpm
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("args:"))
        .skip(1)
        .map_while(|l| l.trim_start().strip_prefix("- "))
        .collect();
    assert_eq!(args[..2], ["run", "--config"], "{bpm}");
    let mut child = Command::new(r.vcap.join("packages/grouter/bin/grouter"))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = LogLines::follow(&mut child);
    let _node = KillOnDrop(child);
    let admin: std::net::SocketAddr =
        log.wait_for(Duration::from_secs(10), "the admin listener", |l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["message"] == "listening" && v["service"] == "admin")
                .then(|| v["addr"].as_str()?.parse().ok())?
        });
    grouter_tests::install_crypto();
    let http = reqwest::Client::new();
    let body = grouter_tests::wait_until(Duration::from_secs(10), "/healthz 200", || {
        let req = http.get(format!("http://{admin}/healthz"));
        async move {
            let resp = req.send().await.ok()?;
            let ok = resp.status().is_success();
            let body = resp.text().await.ok()?;
            ok.then_some(body)
        }
    })
    .await;
    assert!(body.contains("\"ok\""), "{body}");
    // The token files are the node's: the admin token writes, the read token only reads.
    let put = |token: &str| {
        http.put(format!("http://{admin}/v1/policies/sites/lon"))
            .bearer_auth(token)
            .json(&json!({ "drained": false }))
            .send()
    };
    assert_eq!(put("read-secret").await.unwrap().status(), 403);
    assert!(put("admin-secret").await.unwrap().status().is_success());
    for service in ["mesh", "http", "https", "dns"] {
        log.wait_for(Duration::from_secs(10), service, |l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["message"] == "listening" && v["service"] == service).then_some(())
        });
    }
}

/// The node started from the rendered files, killed however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_missing_required_property_fails_rendering_naming_it() {
    for (section, key, name) in [
        ("", "site", "site"),
        ("nats", "servers", "nats.servers"),
        ("admin", "token", "admin.token"),
    ] {
        let mut props = minimal();
        if section.is_empty() {
            props.as_object_mut().unwrap().remove(key);
        } else {
            props[section].as_object_mut().unwrap().remove(key);
        }
        let err = render(&props)
            .err()
            .unwrap_or_else(|| panic!("{name}: rendered"));
        assert!(
            err.contains(&format!("Can't find property '{name}'"))
                && err.contains("grouter.toml.erb"),
            "{name}: {err}"
        );
    }
    // A section turned on without what it needs names the missing property too.
    let mut props = minimal();
    props["mesh"] = json!({ "ca": "-----BEGIN CERTIFICATE-----\n" });
    let err = render(&props).err().expect("mesh without cert rendered");
    assert!(err.contains("Can't find property 'mesh.cert'"), "{err}");
}

/// Quotes, backslashes, newlines and control characters in a property stay inside their
/// TOML string: a free-text value reads back unchanged, a name is refused naming its key,
/// and no value ever adds a key.
#[test]
fn hostile_property_values_never_inject_toml() {
    let injected = "x\"\nbogus = 1\n[evil]\nk = \"v";
    let password = format!("{injected}\t\u{7f}\u{1}é\\");
    let mut props = minimal();
    props["nats"]["password"] = json!(password);
    props["nats"]["user"] = json!("u");
    props["gorouters"]["segments"] = json!({ "seg\"]\nx = [\"": ["127.0.0.1:8091"] });
    let r = render(&props).unwrap();
    let out = Command::new(grouter_bin())
        .args(["check", "--config"])
        .arg(r.config())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The segment name is refused as a segment name, not as broken TOML.
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("gorouters.segments"), "{stderr}");
    assert!(
        !stderr.contains("bogus") && !stderr.contains("evil") && !stderr.contains("invalid TOML"),
        "{stderr}"
    );

    let mut props = minimal();
    props["nats"]["password"] = json!(password);
    props["nats"]["user"] = json!("u");
    let r = render(&props).unwrap();
    assert_pre_start_passes(&r);
    let c = Config::load(&r.config()).unwrap();
    assert_eq!(c.nats.password.as_deref(), Some(password.as_str()));

    let mut props = minimal();
    props["site"] = json!("lon\"\nregion = \"eu");
    let r = render(&props).unwrap();
    let err = Config::load(&r.config()).unwrap_err().to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(": site: \"lon\\\"\\nregion"),
        "the whole value is the site: {err}"
    );
}

/// The README's example manifest renders a config `grouter check` accepts, its CredHub
/// variables standing in as placeholder strings.
#[test]
fn the_example_manifest_renders_a_valid_config() {
    let ruby = find_program("ruby", "apt-get install -y ruby");
    let extract = r#"
        m = YAML.safe_load(File.read(ARGV[0]).gsub(/\(\(([^)]+)\)\)/) { "placeholder-#{$1}" })
        job = m.fetch("instance_groups").flat_map { |g| g.fetch("jobs") }.find { |j| j["name"] == "grouter" }
        puts JSON.generate(job.fetch("properties"))
    "#;
    let out = Command::new(ruby)
        .args(["-ryaml", "-rjson", "-e", extract])
        .arg(release_dir().join("manifest-example.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let properties: Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = render(&properties).unwrap();
    let out = Command::new(grouter_bin())
        .args(["check", "--config"])
        .arg(r.config())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        r.read("config/grouter.toml")
    );
    let c = Config::load(&r.config()).unwrap();
    assert_eq!((c.node_id.as_str(), c.site.as_str()), ("lon-1", "lon"));
    let mesh = c.mesh.as_ref().expect("[mesh]");
    assert_eq!(
        mesh.advertise.as_deref(),
        Some("10.0.0.10:7946"),
        "advertise defaults to spec.address and the mesh.listen port"
    );
    assert!(c.mesh.is_some() && c.dns.is_some() && c.tls.is_some() && c.cloud_controller.is_some());
}
