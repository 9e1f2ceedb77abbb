//! Issue 13's scale figures, in process: 10,000 route policies and 10,000 uploaded
//! certificates written through the control plane (clock, partition, disk, merged view), then
//! the routing decision's and the SNI resolver's medians, and memory per policy and per
//! certificate.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use grouter::config::RemoteMode;
use grouter::control::Control;
use grouter::health::SyncState;
use grouter::policy::{PolicyStore, SiteFacts};
use grouter::proxy::decide::{Ask, Policy, Rules, decide};
use grouter::table::{App, RouteEntry, RouteKey, Table};
use grouter::tls::CertStore;

use super::rss_bytes;

/// Timed calls per measurement.
const SAMPLES: usize = 200_000;

/// The median of `f`'s cost over [`SAMPLES`] calls (each timed alone; the clock's own cost,
/// about 20 ns here, is included).
fn median(mut f: impl FnMut(usize)) -> Duration {
    let mut samples: Vec<Duration> = (0..SAMPLES)
        .map(|i| {
            let t = Instant::now();
            f(i);
            t.elapsed()
        })
        .collect();
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// `Bench::ControlScale`.
pub fn control_scale(policies: usize, certs: usize) -> anyhow::Result<()> {
    // State on tmpfs when there is one: the figure is the control plane's, not the disk's.
    let shm = Path::new("/dev/shm");
    let state = if shm.is_dir() {
        tempfile::tempdir_in(shm)?
    } else {
        tempfile::tempdir()?
    };
    let table = Arc::new(Table::new("bench-1", "lon", 1));
    let hosts: Vec<String> = (0..policies.max(1))
        .map(|i| format!("pol-{i}.apps.example.com"))
        .collect();
    let app = Arc::new(App::with_id("bench-app"));
    for h in &hosts {
        let key = Arc::new(RouteKey::parse(h).context("route key")?);
        table.upsert_local(
            &key,
            RouteEntry {
                app: app.clone(),
                endpoints: 1,
                instances: 1,
                updated_at_ms: 1,
            },
        );
    }
    let store = Arc::new(PolicyStore::default());
    store.set_facts(SiteFacts {
        regions: [(Arc::from("lon"), Arc::from("eu"))].into_iter().collect(),
        healthy: vec![Arc::from("lon")],
    });
    let control = Control::open(state.path(), table.clone(), store.clone())?;
    let rules = Rules {
        site: "lon".into(),
        region: "eu".into(),
        remote: RemoteMode::Proxy,
        redirect_host: "{label}.{site}.{parent}".into(),
    };
    let look = |store: &PolicyStore, i: usize| {
        let host = &hosts[(i * 7919) % hosts.len()];
        let ask = Ask {
            scheme: "https",
            host,
            path: "/cart",
            query: None,
            from_peer: false,
            host_conflict: None,
        };
        // What a request does: one look at the store, the policies only when some are set.
        let (decision, _) = if let Some(p) = store.active() {
            let f = store.facts();
            decide(
                &table,
                &rules,
                SyncState::InSync,
                Some(Policy {
                    policies: &p,
                    facts: &f,
                    local_healthy: true,
                    spend_turn: true,
                }),
                ask,
            )
        } else {
            decide(&table, &rules, SyncState::InSync, None, ask)
        };
        std::hint::black_box(decision);
    };
    let without = median(|i| look(&store, i));

    let rss0 = rss_bytes();
    let started = Instant::now();
    let body = br#"{"regions":["eu"],"weights":{"lon":1}}"#;
    for h in &hosts[..policies] {
        control.write(
            &format!("policy/route/{h}"),
            Some(body.to_vec()),
            "write",
            "bench",
        )?;
    }
    let write_secs = started.elapsed().as_secs_f64();
    let rss1 = rss_bytes();
    if store.policies().routes().count() != policies {
        bail!("not every policy is in force");
    }
    let with = median(|i| look(&store, i));
    println!(
        "{policies} route policies: written in {write_secs:.2} s ({:.0} µs each, clock + partition + disk + merge); \
         decision median {:.0} ns with them vs {:.0} ns without; memory {:.0} B per policy",
        write_secs * 1e6 / policies.max(1) as f64,
        with.as_nanos(),
        without.as_nanos(),
        (rss1.saturating_sub(rss0)) as f64 / policies.max(1) as f64,
    );

    // Certificates: a CA, `certs` leaves, uploaded through the control plane.
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let dir = tempfile::tempdir()?;
    let default_key = rcgen::KeyPair::generate()?;
    let default = rcgen::CertificateParams::new(vec!["default.example.com".into()])?
        .signed_by(&default_key, &issuer)?;
    std::fs::write(dir.path().join("default.pem"), default.pem())?;
    std::fs::write(dir.path().join("default.key"), default_key.serialize_pem())?;
    let cert_dir = dir.path().join("certs");
    std::fs::create_dir(&cert_dir)?;
    let certs_store = CertStore::load(
        &cert_dir,
        &dir.path().join("default.pem"),
        &dir.path().join("default.key"),
    )?;
    control.set_certs(certs_store.clone());
    let names: Vec<String> = (0..certs.max(1))
        .map(|i| format!("c-{i}.apps.example.com"))
        .collect();
    let pems: Vec<Vec<u8>> = names[..certs]
        .iter()
        .map(|n| -> anyhow::Result<Vec<u8>> {
            let key = rcgen::KeyPair::generate()?;
            let cert = rcgen::CertificateParams::new(vec![n.clone()])?.signed_by(&key, &issuer)?;
            let pem = format!("{}{}", cert.pem(), ca_cert.pem());
            Ok(serde_json::to_vec(&serde_json::json!({
                "cert_pem": pem,
                "key_pem": key.serialize_pem(),
            }))?)
        })
        .collect::<anyhow::Result<_>>()?;
    let sni_before = median(|i| {
        std::hint::black_box(certs_store.resolve_name(Some(&names[(i * 7919) % names.len()])));
    });
    let rss2 = rss_bytes();
    let started = Instant::now();
    for (n, pem) in names[..certs].iter().zip(pems) {
        control.write(&format!("cert/{n}"), Some(pem), "write", "bench")?;
    }
    let write_secs = started.elapsed().as_secs_f64();
    let rss3 = rss_bytes();
    if certs_store.list().len() != certs {
        bail!(
            "{} of {certs} certificates served",
            certs_store.list().len()
        );
    }
    let sni = median(|i| {
        std::hint::black_box(certs_store.resolve_name(Some(&names[(i * 7919) % names.len()])));
    });
    let with_certs = median(|i| look(&store, i));
    println!(
        "{certs} uploaded certificates (P-256 leaf + CA, ~1.2 KiB PEM each): written in {write_secs:.2} s \
         ({:.0} µs each); SNI median {:.0} ns with them ({:.0} ns before); memory {:.0} B per certificate \
         (parsed for serving + the replicated value); decision median now {:.0} ns",
        write_secs * 1e6 / certs.max(1) as f64,
        sni.as_nanos(),
        sni_before.as_nanos(),
        (rss3.saturating_sub(rss2)) as f64 / certs.max(1) as f64,
        with_certs.as_nanos(),
    );
    Ok(())
}
