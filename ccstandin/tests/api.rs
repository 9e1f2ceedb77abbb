//! The stand-in in process on 127.0.0.1:0, driven over HTTP as GRouter's client drives it:
//! tokens, the copy of a droplet (create, upload, job, stage, assign, start), downloads
//! through the signed blobstore URL, every fault, token expiry and seed errors.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failure is the test failing

use std::time::{Duration, Instant};

use grouter_cc_standin::{CcStandIn, Config, Error, Seed, seeded_bytes};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const ID: &str = "grouter-lon";
const SECRET: &str = "s3cret";

struct Cc {
    _cc: CcStandIn,
    http: reqwest::Client,
    url: String,
    dir: tempfile::TempDir,
}

fn shop_seed(size: u64) -> Value {
    json!({
        "domains": ["apps.example.com", "example.com"],
        "orgs": [{"name": "demo", "spaces": [{"name": "prod", "apps": [
            {"name": "shop", "lifecycle": "buildpack", "state": "STARTED", "instances": 2,
             "routes": ["shop.apps.example.com", "x.apps.example.com/path", "example.com"],
             "droplet": {"size": size, "seed": 7}},
            {"name": "web", "lifecycle": "docker", "state": "STARTED", "instances": 1,
             "routes": ["web.apps.example.com"]},
            {"name": "idle", "state": "STOPPED"}
        ]}]}]
    })
}

impl Cc {
    async fn start(seed: &Value) -> Cc {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let cc = CcStandIn::start(Config {
            site: "lon".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            client_id: ID.into(),
            client_secret: SECRET.into(),
            seed: Seed::from_json(&seed.to_string()).unwrap(),
            blob_dir: dir.path().join("blobs"),
            job_delay: Duration::from_millis(50),
        })
        .await
        .unwrap();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let url = cc.url();
        Cc {
            _cc: cc,
            http,
            url,
            dir,
        }
    }

    async fn token(&self) -> String {
        let r = self
            .http
            .post(format!("{}/oauth/token", self.url))
            .basic_auth(ID, Some(SECRET))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["token_type"], "bearer");
        v["access_token"].as_str().unwrap().to_string()
    }

    async fn call(
        &self,
        method: Method,
        token: Option<&str>,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, Some(token), path, None).await
    }

    async fn post(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, Some(token), path, Some(body)).await
    }

    async fn hook(&self, path: &str) -> Value {
        self.call(Method::GET, None, &format!("/_standin/{path}"), None)
            .await
            .1
    }

    async fn faults(&self, f: Value) -> Value {
        let (status, v) = self
            .call(Method::POST, None, "/_standin/faults", Some(f))
            .await;
        assert_eq!(status, 200, "{v}");
        v
    }

    async fn state(&self) -> Value {
        self.hook("state").await
    }

    async fn space_guid(&self) -> String {
        self.state().await["spaces"][0]["guid"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn app_guid(&self, name: &str) -> String {
        let s = self.state().await;
        let a = s["apps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .unwrap();
        a["guid"].as_str().unwrap().to_string()
    }

    async fn new_app_with_droplet(&self, token: &str, name: &str) -> (String, String) {
        let space = self.space_guid().await;
        let (status, app) = self
            .post(
                token,
                "/v3/apps",
                json!({"name": name, "relationships": {"space": {"data": {"guid": space}}}}),
            )
            .await;
        assert_eq!(status, 201, "{app}");
        let app = app["guid"].as_str().unwrap().to_string();
        let (status, d) = self
            .post(
                token,
                "/v3/droplets",
                json!({"relationships": {"app": {"data": {"guid": app}}},
                "process_types": {"web": "bundle exec rackup"}}),
            )
            .await;
        assert_eq!(status, 201, "{d}");
        assert_eq!(d["state"], "AWAITING_UPLOAD");
        (app, d["guid"].as_str().unwrap().to_string())
    }

    async fn upload(
        &self,
        token: &str,
        droplet: &str,
        part: &str,
        file: &str,
        bits: Vec<u8>,
    ) -> reqwest::Response {
        let form = reqwest::multipart::Form::new().part(
            part.to_string(),
            reqwest::multipart::Part::bytes(bits).file_name(file.to_string()),
        );
        self.http
            .post(format!("{}/v3/droplets/{droplet}/upload", self.url))
            .bearer_auth(token)
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    fn blob_files(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("blobs"))
            .unwrap()
            .count()
    }
}

/// Poll `f` until it gives `Some`, for at most five seconds.
async fn poll<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn error_title(v: &Value) -> &str {
    v["errors"][0]["title"].as_str().unwrap_or("")
}

#[tokio::test]
async fn token_requests_good_and_bad_are_all_recorded_and_v3_needs_a_good_token() {
    let cc = Cc::start(&shop_seed(1000)).await;
    let (status, v) = cc.call(Method::GET, None, "/v3/apps", None).await;
    assert_eq!(status, 401);
    assert_eq!(v["errors"][0]["code"], 1000);
    assert_eq!(error_title(&v), "CF-InvalidAuthToken");
    assert_eq!(cc.get("not-a-token", "/v3/apps").await.0, 401);

    let token = cc.token().await;
    let form = |id: &str, secret: &str, grant: &str| {
        cc.http
            .post(format!("{}/oauth/token", cc.url))
            .form(&[
                ("grant_type", grant.to_string()),
                ("client_id", id.into()),
                ("client_secret", secret.into()),
            ])
            .send()
    };
    assert_eq!(
        form(ID, SECRET, "client_credentials")
            .await
            .unwrap()
            .status(),
        200
    );
    let bad = form(ID, "wrong", "client_credentials").await.unwrap();
    assert_eq!(bad.status(), 401);
    assert_eq!(
        bad.json::<Value>().await.unwrap()["error_description"],
        "Bad credentials"
    );
    let grant = form(ID, SECRET, "password").await.unwrap();
    assert_eq!(grant.status(), 400);
    assert_eq!(
        grant.json::<Value>().await.unwrap()["error"],
        "unsupported_grant_type"
    );

    let tokens = cc.hook("tokens").await;
    let oks: Vec<bool> = tokens
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["ok"].as_bool().unwrap())
        .collect();
    assert_eq!(oks, [true, true, false, false], "{tokens}");
    assert_eq!(tokens[2]["client_secret"], "wrong");
    assert_eq!(tokens[3]["grant_type"], "password");
    assert_eq!(tokens[0]["client_id"], ID);
    assert!(tokens[0]["at_ms"].is_u64());

    let (status, v) = cc.get(&token, "/v3/organizations?names=demo").await;
    assert_eq!(status, 200);
    assert_eq!(v["pagination"]["total_results"], 1);
    assert_eq!(v["resources"][0]["name"], "demo");
    assert!(v["pagination"]["next"].is_null());

    let requests = cc.hook("requests").await;
    let auth: Vec<bool> = requests
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["authorization"].as_bool().unwrap())
        .collect();
    assert_eq!(auth, [false, true, true]);
    assert_eq!(requests[2]["path"], "/v3/organizations");
    assert_eq!(requests[2]["method"], "GET");
}

#[tokio::test]
async fn a_droplet_is_created_uploaded_staged_assigned_and_started() {
    const SIZE: usize = 300_001;
    let cc = Cc::start(&shop_seed(SIZE as u64)).await;
    let token = cc.token().await;
    let seeded_sha = cc.state().await["droplets"][0]["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let bits = seeded_bytes(SIZE, 7);
    assert_eq!(
        sha256_hex(&bits),
        seeded_sha,
        "seeded bits are the documented splitmix64 stream"
    );

    let (app, droplet) = cc.new_app_with_droplet(&token, "copy").await;
    let (_, a) = cc.get(&token, &format!("/v3/apps/{app}")).await;
    assert_eq!(a["state"], "STOPPED");
    assert_eq!(a["lifecycle"]["data"]["stack"], "cflinuxfs4");
    let (status, v) = cc
        .get(&token, &format!("/v3/apps/{app}/droplets/current"))
        .await;
    assert_eq!(status, 404);
    assert_eq!(v["errors"][0]["detail"], "Droplet not found");
    let (status, v) = cc
        .post(&token, &format!("/v3/apps/{app}/actions/start"), json!({}))
        .await;
    assert_eq!(status, 422);
    assert_eq!(
        v["errors"][0]["detail"],
        "Assign a droplet before starting this app."
    );
    let (status, _) = cc
        .call(
            Method::PATCH,
            Some(&token),
            &format!("/v3/apps/{app}/relationships/current_droplet"),
            Some(json!({"data": {"guid": droplet}})),
        )
        .await;
    assert_eq!(status, 422, "an unstaged droplet cannot be current");

    let r = cc
        .upload(&token, &droplet, "bits", "droplet.tgz", bits.clone())
        .await;
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let d: Value = r.json().await.unwrap();
    assert_eq!(d["state"], "PROCESSING_UPLOAD");
    assert!(
        location.starts_with(&format!("{}/v3/jobs/", cc.url)),
        "{location}"
    );
    let job_path = location.trim_start_matches(&cc.url).to_string();
    let job = poll("the job to complete", || async {
        let (_, j) = cc.get(&token, &job_path).await;
        (j["state"] != "PROCESSING").then_some(j)
    })
    .await;
    assert_eq!(job["state"], "COMPLETE", "{job}");
    assert_eq!(job["operation"], "droplet.upload");
    let (_, d) = cc.get(&token, &format!("/v3/droplets/{droplet}")).await;
    assert_eq!(d["state"], "STAGED");
    assert_eq!(
        d["checksum"],
        json!({"type": "sha256", "value": seeded_sha})
    );

    let r = cc
        .upload(&token, &droplet, "bits", "droplet.tgz", b"again".to_vec())
        .await;
    assert_eq!(r.status(), 422, "a staged droplet takes no more bits");

    let (status, v) = cc
        .call(
            Method::PATCH,
            Some(&token),
            &format!("/v3/apps/{app}/relationships/current_droplet"),
            Some(json!({"data": {"guid": droplet}})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["guid"], droplet);
    let other = cc.app_guid("shop").await;
    let (status, _) = cc
        .call(
            Method::PATCH,
            Some(&token),
            &format!("/v3/apps/{other}/relationships/current_droplet"),
            Some(json!({"data": {"guid": droplet}})),
        )
        .await;
    assert_eq!(status, 422, "another app's droplet cannot be current");
    let (status, p) = cc
        .post(
            &token,
            &format!("/v3/apps/{app}/processes/web/actions/scale"),
            json!({"instances": 3}),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(p["instances"], 3);
    let (status, a) = cc
        .post(&token, &format!("/v3/apps/{app}/actions/start"), json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(a["state"], "STARTED");

    // A route, its destination (twice: a no-op), a duplicate route refused.
    let (_, domains) = cc.get(&token, "/v3/domains?names=apps.example.com").await;
    let domain = domains["resources"][0]["guid"]
        .as_str()
        .unwrap()
        .to_string();
    let space = cc.space_guid().await;
    let route_body = json!({"host": "copy", "relationships": {"space": {"data": {"guid": space}}, "domain": {"data": {"guid": domain}}}});
    let (status, route) = cc.post(&token, "/v3/routes", route_body.clone()).await;
    assert_eq!(status, 201, "{route}");
    assert_eq!(route["url"], "copy.apps.example.com");
    assert_eq!(cc.post(&token, "/v3/routes", route_body).await.0, 422);
    let rguid = route["guid"].as_str().unwrap();
    for _ in 0..2 {
        let (status, v) = cc
            .post(
                &token,
                &format!("/v3/routes/{rguid}/destinations"),
                json!({"destinations": [{"app": {"guid": app}}]}),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["destinations"].as_array().unwrap().len(), 1);
    }
    let (_, found) = cc
        .get(
            &token,
            &format!("/v3/routes?domain_guids={domain}&hosts=copy&paths="),
        )
        .await;
    assert_eq!(found["pagination"]["total_results"], 1);
    let (_, found) = cc
        .get(
            &token,
            &format!("/v3/routes?domain_guids={domain}&hosts=copy&paths=/nope"),
        )
        .await;
    assert_eq!(found["pagination"]["total_results"], 0);
    let (_, routes) = cc.get(&token, &format!("/v3/apps/{app}/routes")).await;
    assert_eq!(routes["resources"][0]["guid"], rguid);

    let state = cc.state().await;
    let a = state["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "copy")
        .unwrap();
    assert_eq!(a["state"], "STARTED");
    assert_eq!(a["instances"], 3);
    assert_eq!(a["org"], "demo");
    assert_eq!(a["space"], "prod");
    assert_eq!(a["current_droplet"], droplet);
    let d = state["droplets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["guid"] == droplet)
        .unwrap();
    assert_eq!(d["sha256"], seeded_sha);
    assert_eq!(d["size"], SIZE);
    assert_eq!(d["app"], app);
    assert_eq!(state["jobs"][0]["state"], "COMPLETE");
    let r = state["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["host"] == "copy")
        .unwrap();
    assert_eq!(r["destinations"], json!([app]));
    assert_eq!(r["domain"], "apps.example.com");
    assert_eq!(cc.state().await, state, "nothing changes by itself");

    // The app name is taken now.
    let (status, _) = cc
        .post(
            &token,
            "/v3/apps",
            json!({"name": "copy", "relationships": {"space": {"data": {"guid": space}}}}),
        )
        .await;
    assert_eq!(status, 422);
}

#[tokio::test]
async fn the_seed_makes_routes_processes_and_droplets() {
    let cc = Cc::start(&shop_seed(10)).await;
    let state = cc.state().await;
    let shop = &state["apps"][0];
    assert_eq!(shop["name"], "shop");
    assert_eq!(shop["instances"], 2);
    assert_eq!(shop["state"], "STARTED");
    let urls: Vec<&str> = state["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["url"].as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        [
            "shop.apps.example.com",
            "x.apps.example.com/path",
            "example.com",
            "web.apps.example.com"
        ]
    );
    assert_eq!(state["routes"][1]["path"], "/path");
    assert_eq!(state["routes"][2]["host"], "");
    assert_eq!(state["routes"][2]["domain"], "example.com");
    let web = &state["apps"][1];
    let docker = state["droplets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["app"] == web["guid"])
        .unwrap();
    assert_eq!(docker["lifecycle"], "docker");
    assert_eq!(docker["image"], "example/web:latest");
    assert!(docker["sha256"].is_null());
    assert_eq!(state["apps"][2]["state"], "STOPPED");
    assert!(state["apps"][2]["current_droplet"].is_null());
    assert_eq!(state["apps"][2]["instances"], 1);

    let token = cc.token().await;
    let space = cc.space_guid().await;
    let org = state["orgs"][0]["guid"].as_str().unwrap();
    let (_, spaces) = cc
        .get(
            &token,
            &format!("/v3/spaces?names=prod&organization_guids={org}"),
        )
        .await;
    assert_eq!(spaces["resources"][0]["guid"], space);
    let (_, apps) = cc
        .get(
            &token,
            &format!("/v3/apps?names=shop,web&space_guids={space}"),
        )
        .await;
    assert_eq!(apps["pagination"]["total_results"], 2);
    assert_eq!(apps["resources"][1]["lifecycle"]["type"], "docker");
    let shop_guid = shop["guid"].as_str().unwrap();
    let (_, p) = cc
        .get(&token, &format!("/v3/apps/{shop_guid}/processes/web"))
        .await;
    assert_eq!(p["instances"], 2);
    assert_eq!(p["type"], "web");
    let (_, d) = cc
        .get(&token, &format!("/v3/apps/{shop_guid}/droplets/current"))
        .await;
    assert_eq!(d["checksum"]["value"], state["droplets"][0]["sha256"]);
    let (_, routes) = cc
        .get(&token, &format!("/v3/apps/{shop_guid}/routes"))
        .await;
    assert_eq!(routes["pagination"]["total_results"], 3);
}

#[tokio::test]
async fn downloads_redirect_to_a_signed_blobstore_url_that_refuses_an_authorization_header() {
    const SIZE: usize = 200_000;
    let cc = Cc::start(&shop_seed(SIZE as u64)).await;
    let token = cc.token().await;
    let state = cc.state().await;
    let droplet = state["droplets"][0]["guid"].as_str().unwrap();
    let r = cc
        .http
        .get(format!("{}/v3/droplets/{droplet}/download", cc.url))
        .bearer_auth(&token)
        .header("host", "cc.example.test:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let prefix = format!("http://cc.example.test:8080/_blobstore/droplets/{droplet}?signature=");
    assert!(location.starts_with(&prefix), "{location}");
    let blob = format!(
        "{}{}",
        cc.url,
        location.trim_start_matches("http://cc.example.test:8080")
    );

    let r = cc.http.get(&blob).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("<Code>InvalidArgument</Code>")
            && text.contains("Only one auth mechanism allowed"),
        "{text}"
    );

    let r = cc.http.get(format!("{blob}0")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = cc
        .http
        .get(format!("{}/_blobstore/droplets/{droplet}", cc.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "no signature");

    let r = cc.http.get(&blob).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], SIZE.to_string().as_str());
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    let bytes = r.bytes().await.unwrap();
    assert_eq!(bytes.as_ref(), seeded_bytes(SIZE, 7).as_slice());

    let docker = state["droplets"][1]["guid"].as_str().unwrap();
    let (status, v) = cc
        .get(&token, &format!("/v3/droplets/{docker}/download"))
        .await;
    assert_eq!(status, 422);
    assert_eq!(
        v["errors"][0]["detail"],
        "Cannot download droplets with 'docker' lifecycle."
    );
    let (_, fresh) = cc.new_app_with_droplet(&token, "fresh").await;
    let (status, v) = cc
        .get(&token, &format!("/v3/droplets/{fresh}/download"))
        .await;
    assert_eq!(status, 422);
    assert_eq!(
        v["errors"][0]["detail"],
        "Only staged droplets can be downloaded."
    );

    let requests = cc.hook("requests").await;
    let blob_requests: Vec<bool> = requests
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["path"].as_str().unwrap().starts_with("/_blobstore/"))
        .map(|r| r["authorization"].as_bool().unwrap())
        .collect();
    assert_eq!(blob_requests, [true, false, false, false]);
}

#[tokio::test]
async fn upload_faults_fail_the_upload_or_the_job_and_leave_nothing_behind() {
    let cc = Cc::start(&shop_seed(10)).await;
    let token = cc.token().await;
    let (_, droplet) = cc.new_app_with_droplet(&token, "copy").await;
    let files = cc.blob_files();
    let f = cc.faults(json!({"upload_500": 1, "job_failed": 1})).await;
    assert_eq!(f["upload_500"], 1);

    let r = cc
        .upload(&token, &droplet, "bits", "d.tgz", vec![1; 100_000])
        .await;
    assert_eq!(r.status(), 500);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], 10001);
    assert_eq!(error_title(&v), "CF-ServerError");
    assert_eq!(cc.blob_files(), files, "a refused upload stores nothing");
    let (_, d) = cc.get(&token, &format!("/v3/droplets/{droplet}")).await;
    assert_eq!(d["state"], "AWAITING_UPLOAD");

    let r = cc
        .upload(&token, &droplet, "bits", "d.tgz", vec![1; 1000])
        .await;
    assert_eq!(r.status(), 202);
    let job_path = r.headers()["location"]
        .to_str()
        .unwrap()
        .trim_start_matches(&cc.url)
        .to_string();
    let job = poll("the job to end", || async {
        let (_, j) = cc.get(&token, &job_path).await;
        (j["state"] != "PROCESSING").then_some(j)
    })
    .await;
    assert_eq!(job["state"], "FAILED");
    assert_eq!(
        job["errors"],
        json!([{"code": 10001, "title": "CF-ServerError", "detail": "droplet upload failed (injected)"}])
    );
    let (_, d) = cc.get(&token, &format!("/v3/droplets/{droplet}")).await;
    assert_eq!(d["state"], "FAILED");
    assert!(
        d["error"].as_str().is_some_and(|e| e.contains("injected")),
        "{d}"
    );
    assert_eq!(cc.blob_files(), files, "a failed job's bits are removed");
    assert_eq!(
        cc.hook("faults").await,
        json!({"upload_500": 0, "job_failed": 0, "garbage": 0, "token_401": 0, "slow_download_bytes_per_s": null})
    );

    // Faults used up: the next droplet goes through.
    let (_, droplet) = cc.new_app_with_droplet(&token, "copy2").await;
    let r = cc
        .upload(&token, &droplet, "bits", "d.tgz", vec![2; 1000])
        .await;
    assert_eq!(r.status(), 202);
}

#[tokio::test]
async fn a_malformed_upload_is_refused() {
    let cc = Cc::start(&shop_seed(10)).await;
    let token = cc.token().await;
    let (_, droplet) = cc.new_app_with_droplet(&token, "copy").await;
    let files = cc.blob_files();
    let r = cc
        .upload(&token, &droplet, "bits", "droplet.zip", vec![1; 10])
        .await;
    assert_eq!(r.status(), 422, "filename must end .tgz");
    let r = cc
        .upload(&token, &droplet, "file", "droplet.tgz", vec![1; 10])
        .await;
    assert_eq!(r.status(), 422, "the part must be named bits");
    let r = cc
        .http
        .post(format!("{}/v3/droplets/{droplet}/upload", cc.url))
        .bearer_auth(&token)
        .body("not multipart")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = cc
        .upload(&token, "no-such-droplet", "bits", "d.tgz", vec![1; 10])
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(cc.blob_files(), files);
    let (_, d) = cc.get(&token, &format!("/v3/droplets/{droplet}")).await;
    assert_eq!(d["state"], "AWAITING_UPLOAD");
}

#[tokio::test]
async fn bad_bodies_are_cc_errors() {
    let cc = Cc::start(&shop_seed(10)).await;
    let token = cc.token().await;
    let r = cc
        .http
        .post(format!("{}/v3/apps", cc.url))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], 1001);
    assert_eq!(error_title(&v), "CF-MessageParseError");
    assert_eq!(cc.post(&token, "/v3/apps", json!([1, 2])).await.0, 422);
    assert_eq!(cc.post(&token, "/v3/apps", json!({"name": 5})).await.0, 422);
    let (status, _) = cc
        .post(
            &token,
            "/v3/apps",
            json!({"name": "x", "relationships": {"space": {"data": {"guid": "nope"}}}}),
        )
        .await;
    assert_eq!(status, 422);
    let (status, v) = cc.get(&token, "/v3/apps/nope").await;
    assert_eq!(status, 404);
    assert_eq!(v["errors"][0]["detail"], "App not found");
    assert_eq!(cc.get(&token, "/v3/jobs/nope").await.0, 404);
    assert_eq!(cc.get(&token, "/v3/no/such/thing").await.0, 404);
    let shop = cc.app_guid("shop").await;
    let (status, _) = cc
        .post(
            &token,
            &format!("/v3/apps/{shop}/processes/web/actions/scale"),
            json!({"instances": -1}),
        )
        .await;
    assert_eq!(status, 422);
    let (status, _) = cc.post(&token, "/v3/routes", json!({"host": "a b"})).await;
    assert_eq!(status, 422);
    let (status, _) = cc
        .post(&token, "/_standin/faults", json!({"nonsense": 1}))
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn garbage_and_401_faults_answer_the_next_requests_and_then_stop() {
    let cc = Cc::start(&shop_seed(10)).await;
    let token = cc.token().await;
    cc.faults(json!({"garbage": 1000})).await;
    for _ in 0..3 {
        let r = cc
            .http
            .get(format!("{}/v3/apps", cc.url))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/html");
        assert_eq!(r.text().await.unwrap(), "<html>garbage</html>");
    }
    let space = cc.space_guid().await;
    let (status, body) = cc
        .post(
            &token,
            "/v3/apps",
            json!({"name": "g", "relationships": {"space": {"data": {"guid": space}}}}),
        )
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!("<html>garbage</html>"))
    );
    assert!(
        cc.state().await["apps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["name"] != "g"),
        "garbage does nothing"
    );
    assert_eq!(cc.faults(json!({"garbage": 0})).await["garbage"], 0);
    assert_eq!(cc.get(&token, "/v3/apps").await.0, 200);

    cc.faults(json!({"token_401": 2})).await;
    for _ in 0..2 {
        let (status, v) = cc.get(&token, "/v3/apps").await;
        assert_eq!(status, 401);
        assert_eq!(error_title(&v), "CF-InvalidAuthToken");
    }
    assert_eq!(cc.get(&token, "/v3/apps").await.0, 200);

    cc.faults(json!({"garbage": 1})).await;
    assert_eq!(
        cc.get(&token, "/v3/apps").await.1,
        json!("<html>garbage</html>")
    );
    assert_eq!(cc.get(&token, "/v3/apps").await.0, 200);
}

#[tokio::test]
async fn expired_tokens_are_refused_until_a_new_one_is_fetched() {
    let cc = Cc::start(&shop_seed(10)).await;
    let token = cc.token().await;
    assert_eq!(cc.get(&token, "/v3/apps").await.0, 200);
    let (status, _) = cc
        .call(Method::POST, None, "/_standin/expire_tokens", None)
        .await;
    assert_eq!(status, 200);
    let (status, v) = cc.get(&token, "/v3/apps").await;
    assert_eq!(status, 401);
    assert_eq!(error_title(&v), "CF-InvalidAuthToken");
    let fresh = cc.token().await;
    assert_eq!(cc.get(&fresh, "/v3/apps").await.0, 200);
}

#[tokio::test]
async fn slow_downloads_are_paced_and_the_pace_applies_to_a_download_under_way() {
    const SIZE: usize = 400_000;
    let cc = Cc::start(&shop_seed(SIZE as u64)).await;
    let token = cc.token().await;
    let droplet = cc.state().await["droplets"][0]["guid"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = cc
        .get(&token, &format!("/v3/droplets/{droplet}/download"))
        .await;
    assert_eq!(status, 302);
    let location = cc
        .http
        .get(format!("{}/v3/droplets/{droplet}/download", cc.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .headers()["location"]
        .to_str()
        .unwrap()
        .to_string();

    // 400 kB at 1 MB/s: at least about 0.4 s.
    cc.faults(json!({"slow_download_bytes_per_s": 1_000_000}))
        .await;
    let started = Instant::now();
    let bytes = cc
        .http
        .get(&location)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes.len(), SIZE);
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "{:?}",
        started.elapsed()
    );

    // 10 kB/s would take 40 s; lifted after the first chunk, the rest comes at once.
    cc.faults(json!({"slow_download_bytes_per_s": 10_000}))
        .await;
    let started = Instant::now();
    let mut r = cc.http.get(&location).send().await.unwrap();
    let first = r.chunk().await.unwrap().unwrap();
    cc.faults(json!({"slow_download_bytes_per_s": null})).await;
    let mut got = first.len();
    while let Some(c) = r.chunk().await.unwrap() {
        got += c.len();
    }
    assert_eq!(got, SIZE);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

fn seed_error(seed: Value) -> (String, String) {
    match Seed::from_json(&seed.to_string()) {
        Err(Error::Seed { field, message }) => (field, message),
        other => panic!("not a seed error: {other:?}"),
    }
}

#[test]
fn seed_errors_name_the_field() {
    let app = |extra: Value| {
        let mut a =
            json!({"name": "shop", "lifecycle": "buildpack", "state": "STOPPED", "instances": 1});
        for (k, v) in extra.as_object().unwrap() {
            a[k] = v.clone();
        }
        json!({"domains": ["apps.example.com"], "orgs": [{"name": "demo", "spaces": [{"name": "prod", "apps": [a]}]}]})
    };
    let path = "orgs[0].spaces[0].apps[0]";
    let (field, msg) = seed_error(app(json!({"colour": "red"})));
    assert_eq!(field, format!("{path}.colour"), "{msg}");
    assert!(msg.contains("unknown field"), "{msg}");
    assert_eq!(
        seed_error(app(json!({"lifecycle": "java"}))).0,
        format!("{path}.lifecycle")
    );
    assert_eq!(
        seed_error(app(json!({"state": "RUNNING"}))).0,
        format!("{path}.state")
    );
    assert_eq!(
        seed_error(app(json!({"instances": -1}))).0,
        format!("{path}.instances")
    );
    assert_eq!(
        seed_error(app(json!({"state": "STARTED"}))).0,
        format!("{path}.droplet")
    );
    assert_eq!(
        seed_error(app(
            json!({"lifecycle": "docker", "droplet": {"size": 1, "seed": 1}})
        ))
        .0,
        format!("{path}.droplet")
    );
    assert_eq!(
        seed_error(app(json!({"droplet": {"size": 1}}))).0,
        format!("{path}.droplet")
    );
    assert_eq!(
        seed_error(app(json!({"droplet": {"size": 1, "seed": 1, "x": 1}}))).0,
        format!("{path}.droplet.x")
    );
    let (field, msg) = seed_error(app(
        json!({"routes": ["ok.apps.example.com", "shop.other.org"]}),
    ));
    assert_eq!(field, format!("{path}.routes[1]"));
    assert!(msg.contains("shop.other.org"), "{msg}");
    assert_eq!(
        seed_error(json!({"domains": ["a.com"], "extra": 1})).0,
        "extra"
    );
    assert_eq!(seed_error(json!({"domains": ["a b"]})).0, "domains[0]");
    assert_eq!(
        seed_error(json!({"orgs": [{"name": "a"}, {"name": "a"}]})).0,
        "orgs[1].name"
    );
    assert!(Seed::from_json("{").is_err());
    assert!(
        Seed::from_json(
            &app(json!({"state": "STARTED", "droplet": {"size": 1, "seed": 1}})).to_string()
        )
        .is_ok()
    );
}

#[tokio::test]
async fn an_unwritable_blob_dir_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let r = CcStandIn::start(Config {
        site: "lon".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        client_id: ID.into(),
        client_secret: SECRET.into(),
        seed: Seed::default(),
        blob_dir: file.join("blobs"),
        job_delay: Duration::from_millis(1),
    })
    .await;
    assert!(matches!(r, Err(Error::BlobDir { .. })), "{r:?}");
}

#[tokio::test]
async fn an_upload_refused_at_the_gate_reads_the_401_not_a_reset() {
    let cc = Cc::start(&shop_seed(10)).await;
    let token = cc.token().await;
    let (_, droplet) = cc.new_app_with_droplet(&token, "copy").await;
    let (status, _) = cc
        .call(Method::POST, None, "/_standin/expire_tokens", None)
        .await;
    assert_eq!(status, 200);
    let r = cc
        .upload(&token, &droplet, "bits", "d.tgz", vec![3; 4 << 20])
        .await;
    assert_eq!(r.status(), 401);
    cc.faults(json!({"garbage": 1})).await;
    let token = cc.token().await;
    let r = cc
        .upload(&token, &droplet, "bits", "d.tgz", vec![3; 4 << 20])
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "<html>garbage</html>");
    let r = cc
        .upload(&token, &droplet, "bits", "d.tgz", vec![3; 4 << 20])
        .await;
    assert_eq!(r.status(), 202);
}
