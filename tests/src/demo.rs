//! `grouter demo --check` end to end: three sites on loopback (real `nats-server`s, real
//! `grouter` nodes, `grouter-standin` and `grouter-cc-standin` processes), every example
//! request the demo prints, the control-plane ones (pins, a drain, a certificate upload),
//! placing an app at a second foundation (its droplet copied over the mesh) and fail-open
//! included, each reported PASS; a clean stop that removes its temporary directory.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The cases `grouter demo --check` runs, as it names them.
const CASES: [&str; 17] = [
    "local app (shop at lon)",
    "local app (cdn at sgp)",
    "remote app proxied (blog at lon)",
    "redirect (blog at sgp)",
    "redirect target (blog.nyc at nyc)",
    "unknown host (at lon)",
    "unknown host (at sgp, in sync)",
    "admin API (at lon)",
    "dns (at lon)",
    "pin (shop to us: lon proxies it to nyc, sgp redirects there)",
    "pin (blog to eu, where nothing runs it: 503 at lon)",
    "drain (site nyc: /healthz 503, shop sent to lon)",
    "certificate upload (at lon, served by SNI at sgp)",
    "ACME (one order for the mesh; the CA validates at lon, sgp serves the name)",
    "place an app at a second foundation (shop: lon's droplet, started, route mapped)",
    "fail open (sgp cut off, unknown host)",
    "recovery (every node in sync)",
];
/// The whole run takes about 12 s (10 of them waiting for sgp to lose its sync), plus the
/// placement case's droplet copy and scale-down (about a second here, more on a loaded machine).
const DEADLINE: Duration = Duration::from_secs(120);

#[test]
fn demo_check_passes_every_case() {
    // The ACME case needs pebble: without it the demo skips the case, and this test fails.
    grouter_tests::find_program("pebble", "apt-get install -y pebble");
    let mut child = Command::new(grouter_tests::grouter_bin())
        .args(["demo", "--check"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn grouter demo --check");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if started.elapsed() > DEADLINE {
            // SIGTERM first: the demo stops its own children (they are in their own
            // process groups), then SIGKILL if it does not.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(10));
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out.join().expect("stdout thread");
    let stderr = err.join().expect("stderr thread");
    let output = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    let status = status.unwrap_or_else(|| panic!("no exit within {DEADLINE:?}\n{output}"));

    let results: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("PASS") || l.starts_with("FAIL"))
        .collect();
    for case in CASES {
        assert!(
            results
                .iter()
                .any(|l| l.starts_with(&format!("PASS  {case}:"))),
            "case {case:?} did not pass\n{output}"
        );
    }
    assert!(
        results.iter().all(|l| l.starts_with("PASS")),
        "a case failed\n{output}"
    );
    assert_eq!(results.len(), CASES.len(), "{output}");
    assert!(status.success(), "exit {status}\n{output}");

    // The temporary directory is gone.
    let dir = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("grouter demo: files in ")?
                .strip_suffix(" (removed on exit)")
        })
        .unwrap_or_else(|| panic!("no directory line\n{output}"));
    assert!(!std::path::Path::new(dir).exists(), "{dir} was not removed");
    assert!(stdout.lines().any(|l| l == "stopped"), "{output}");
}
