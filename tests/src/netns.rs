//! Running a test inside a network namespace that holds only loopback, so nothing it starts
//! (a caching resolver, a DNS checker that would ask the root servers) can reach beyond this
//! machine.
//!
//! [`isolate`] runs the calling test again as a child process of the test binary, under
//! `unshare --net` (as root; otherwise with `--map-root-user` in a user namespace too), and
//! passes or fails with the child. Inside, the child brings loopback up, checks that no
//! other interface exists, and runs the test's body: every process the body starts
//! inherits the namespace.

use std::process::Command;

use crate::find_program;

/// Set in the child's environment: the test is already inside its namespace.
const INSIDE: &str = "GROUTER_TEST_LOOPBACK_NETNS";

/// `true` inside the namespace: run the test's body. In the parent, run the test named
/// `test` (its path in the test binary, e.g. `dns_resolver::ecs_through_unbound`) in a
/// fresh namespace and return `false` once it passed; panic with its output if it failed.
pub fn isolate(test: &str) -> bool {
    if std::env::var_os(INSIDE).is_some() {
        bring_up_loopback_only();
        return true;
    }
    let unshare = find_program("unshare", "apt-get install -y util-linux");
    let exe = std::env::current_exe().expect("current exe");
    let mut refused = Vec::new();
    for flags in [&["--net"][..], &["--net", "--map-root-user"][..]] {
        let out = Command::new(&unshare)
            .args(flags)
            .arg("--")
            .arg(&exe)
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(INSIDE, "1")
            .output()
            .expect("run unshare");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && stderr.contains("unshare failed") {
            refused.push(format!("unshare {}: {}", flags.join(" "), stderr.trim()));
            continue;
        }
        // libtest shows this when the parent test fails.
        println!("--- {test} inside a loopback-only network namespace ---\n{stdout}");
        eprintln!("{stderr}");
        assert!(
            out.status.success(),
            "{test} failed inside its network namespace"
        );
        assert!(
            stdout.contains("1 passed"),
            "{test} did not run inside its network namespace (is the name right?)"
        );
        return false;
    }
    panic!(
        "cannot create a network namespace (needs root, or unprivileged user namespaces): {}",
        refused.join("; ")
    );
}

/// Loopback up; no other interface.
fn bring_up_loopback_only() {
    let ip = find_program("ip", "apt-get install -y iproute2");
    let status = Command::new(ip)
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("run ip");
    assert!(status.success(), "ip link set lo up: {status}");
    // /proc/net is the reading process's namespace (/sys/class/net would be the host's).
    let dev = std::fs::read_to_string("/proc/net/dev").expect("read /proc/net/dev");
    let interfaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| Some(l.split_once(':')?.0.trim()))
        .collect();
    assert_eq!(interfaces, ["lo"], "only loopback in the namespace");
}
