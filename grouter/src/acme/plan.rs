//! Who orders which certificate, and when (sans-IO): the rules every node applies to the
//! same merged view, so that one node orders a name and the others wait.
//!
//! Owns: the `acme/order/<name>` record ([`OrderRecord`]: the lease, the order in flight, the
//! failures), the issuer's election ([`issuer`], rendezvous hashing over the live nodes),
//! the quorum rule, renewal times ([`renew_at`]) and back-off ([`backoff_ms`]).
//!
//! Must never: do I/O or read a clock (time is passed in), or let a record from a peer that
//! does not parse count as anything but "no record".

use serde::{Deserialize, Serialize};

/// How long a claim holds without being renewed. The holder renews it every
/// [`LEASE_RENEW_MS`]; a holder that dies stops renewing, and a holder the failure detector
/// no longer calls alive loses it at once.
pub const LEASE_MS: u64 = 30_000;
/// How often the holder renews its lease.
pub const LEASE_RENEW_MS: u64 = 10_000;
/// How long a claimant waits, after writing its claim, for a concurrent claim to reach it
/// (one push takes one round trip); then the claim with the latest clock has won.
pub const SETTLE_MS: u64 = 2_000;
/// Longest back-off between failed attempts.
pub const MAX_BACKOFF_MS: u64 = 6 * 3600 * 1000;
/// Longest error text kept in a record.
pub const MAX_ERROR: usize = 300;

/// The record of one name's certificate, written by whichever node last worked on it and
/// merged by last-writer-wins like every config key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRecord {
    /// The node that holds (or last held) the lease.
    pub holder: String,
    /// The lease holds until then (Unix ms); 0: released.
    #[serde(default)]
    pub until_ms: u64,
    /// The order in flight at the CA, so that a node taking over resumes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_url: Option<String>,
    /// The private key of the order in flight (PKCS#8 PEM), once its CSR was sent: a node
    /// taking over a finalised order can still use the certificate. A secret, like an
    /// uploaded key: replicated over the mesh's TLS, stored 0600, never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pem: Option<String>,
    /// Attempts failed in a row.
    #[serde(default)]
    pub failures: u32,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// No node tries again before then (Unix ms).
    #[serde(default)]
    pub next_attempt_ms: u64,
    /// Orders placed at the CA for this name, by every node, over its life.
    #[serde(default)]
    pub orders: u64,
}

impl OrderRecord {
    /// Parse a merged value; `None` for what does not parse.
    pub fn parse(bytes: &[u8]) -> Option<OrderRecord> {
        serde_json::from_slice(bytes).ok()
    }

    /// The value to write.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Whether the lease binds others at `now_ms`: unexpired and held by a node that is
    /// alive (`alive` answers for node ids).
    pub fn held(&self, now_ms: u64, alive: impl Fn(&str) -> bool) -> bool {
        self.until_ms > now_ms && alive(&self.holder)
    }

    /// A failed attempt: released, counted, and the next one pushed back.
    pub fn failed(&mut self, now_ms: u64, error: &str, jitter: f64) {
        self.until_ms = 0;
        self.failures = self.failures.saturating_add(1);
        self.last_error = Some(truncate(error));
        self.next_attempt_ms = now_ms.saturating_add(backoff_ms(self.failures, jitter));
    }
}

/// `s` cut to [`MAX_ERROR`] bytes at a character boundary, control characters replaced.
pub fn truncate(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if out.len() + c.len_utf8() > MAX_ERROR {
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

/// The base of the back-off: 30 s, doubled with every failure up to [`MAX_BACKOFF_MS`];
/// `GROUTER_ACME_BACKOFF_MS` overrides the base (tests).
pub fn backoff_base_ms() -> u64 {
    std::env::var("GROUTER_ACME_BACKOFF_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&ms: &u64| ms > 0)
        .unwrap_or(30_000)
}

/// The wait after the `failures`-th failure in a row; `jitter` in `0.0..1.0` adds up to a
/// quarter more, so nodes and names do not retry in step.
pub fn backoff_ms(failures: u32, jitter: f64) -> u64 {
    let base = backoff_base_ms();
    let doubled = base.saturating_mul(1u64 << failures.saturating_sub(1).min(30));
    let capped = doubled.min(MAX_BACKOFF_MS);
    capped + (capped as f64 * 0.25 * jitter.clamp(0.0, 1.0)) as u64
}

/// A node as the election sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// Its id.
    pub node_id: &'a str,
    /// Its site.
    pub site: &'a str,
}

/// The node that orders `name`: the highest rendezvous score (SHA-256 of the name and the
/// node id) among `live` nodes. Every node that sees the same live set picks the same one,
/// and a node's death moves only the names it was first for.
pub fn issuer<'a>(name: &str, live: &[Candidate<'a>]) -> Option<&'a str> {
    live.iter()
        .max_by_key(|c| (score(name, c.node_id), c.node_id))
        .map(|c| c.node_id)
}

fn score(name: &str, node_id: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(name.as_bytes());
    ctx.update(&[0]);
    ctx.update(node_id.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Whether this node sees a majority of the sites it knows (its own included): an order
/// is placed only on the majority side of a partition, so two sides never both order.
pub fn quorum(known_sites: usize, reachable_sites: usize) -> bool {
    reachable_sites * 2 > known_sites
}

/// When a certificate valid from `not_before_ms` to `not_after_ms` is renewed: at
/// `fraction` of its lifetime, less up to 5 % of it by `jitter` (`0.0..1.0`, per name), so
/// the names of one deployment do not all renew at once.
pub fn renew_at(not_before_ms: u64, not_after_ms: u64, fraction: f64, jitter: f64) -> u64 {
    let life = not_after_ms.saturating_sub(not_before_ms) as f64;
    let at = life * (fraction - 0.05 * jitter.clamp(0.0, 1.0));
    not_before_ms.saturating_add(at.max(0.0) as u64)
}

/// A stable number in `0.0..1.0` for `name` (its jitter).
pub fn jitter_of(name: &str) -> f64 {
    let s = score(name, "jitter");
    let v = u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
    f64::from(v) / (f64::from(u32::MAX) + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes<'a>(ids: &[&'a str]) -> Vec<Candidate<'a>> {
        ids.iter()
            .map(|id| Candidate {
                node_id: id,
                site: "s",
            })
            .collect()
    }

    #[test]
    fn every_view_of_the_same_live_set_elects_the_same_issuer() {
        let a = nodes(&["a1", "a2", "b1", "b2", "c1"]);
        let mut b = a.clone();
        b.reverse();
        for name in ["x.apps.example.com", "y.apps.example.com", "z.example.org"] {
            assert_eq!(issuer(name, &a), issuer(name, &b));
        }
        assert_eq!(issuer("x", &[]), None);
    }

    #[test]
    fn a_dead_issuer_moves_only_its_own_names() {
        let all = nodes(&["a1", "a2", "b1", "b2", "c1", "c2"]);
        let names: Vec<String> = (0..200).map(|i| format!("app{i}.example.com")).collect();
        let before: Vec<_> = names.iter().map(|n| issuer(n, &all).unwrap()).collect();
        let without: Vec<_> = all.iter().filter(|c| c.node_id != "b1").cloned().collect();
        let mut moved = 0;
        for (n, was) in names.iter().zip(&before) {
            let now = issuer(n, &without).unwrap();
            if *was == "b1" {
                moved += 1;
                assert_ne!(now, "b1");
            } else {
                assert_eq!(now, *was, "{n} moved though its issuer lives");
            }
        }
        // Spread: each of six nodes is first for some names.
        assert!(moved > 10 && moved < 70, "{moved}");
    }

    #[test]
    fn only_a_majority_of_sites_orders() {
        assert!(quorum(1, 1));
        assert!(quorum(3, 2));
        assert!(!quorum(3, 1));
        assert!(!quorum(2, 1), "an even split orders on neither side");
        assert!(quorum(2, 2));
    }

    #[test]
    fn a_lease_binds_only_while_unexpired_and_its_holder_lives() {
        let r = OrderRecord {
            holder: "b1".into(),
            until_ms: 1_000,
            ..OrderRecord::default()
        };
        assert!(r.held(999, |_| true));
        assert!(!r.held(1_000, |_| true));
        assert!(!r.held(10, |n| n != "b1"));
    }

    #[test]
    fn failures_back_off_exponentially_to_a_cap_and_release_the_lease() {
        let base = backoff_base_ms();
        assert_eq!(backoff_ms(1, 0.0), base);
        assert_eq!(backoff_ms(2, 0.0), 2 * base);
        assert_eq!(backoff_ms(3, 0.0), 4 * base);
        assert_eq!(backoff_ms(60, 0.0), MAX_BACKOFF_MS);
        assert!(backoff_ms(1, 1.0) <= base + base / 4);
        let mut r = OrderRecord {
            holder: "a".into(),
            until_ms: 50_000,
            ..OrderRecord::default()
        };
        r.failed(10_000, &format!("boom\r\n{}", "x".repeat(1000)), 0.0);
        assert_eq!(r.until_ms, 0);
        assert_eq!(r.failures, 1);
        assert_eq!(r.next_attempt_ms, 10_000 + base);
        let e = r.last_error.unwrap();
        assert!(e.len() <= MAX_ERROR && !e.contains('\r'), "{e:?}");
    }

    #[test]
    fn renewal_falls_at_the_fraction_of_the_lifetime_less_jitter() {
        assert_eq!(renew_at(1_000, 101_000, 0.66, 0.0), 67_000);
        assert_eq!(renew_at(1_000, 101_000, 0.66, 1.0), 62_000);
        let j = jitter_of("a.example.com");
        assert!((0.0..1.0).contains(&j));
        assert_eq!(j, jitter_of("a.example.com"));
        assert_ne!(j, jitter_of("b.example.com"));
    }

    #[test]
    fn records_from_peers_parse_or_count_as_absent() {
        let r = OrderRecord {
            holder: "a1".into(),
            until_ms: 5,
            order_url: Some("https://ca/order/1".into()),
            ..OrderRecord::default()
        };
        assert_eq!(OrderRecord::parse(&r.encode()), Some(r));
        assert_eq!(OrderRecord::parse(b"{\"holder\":1}"), None);
        assert_eq!(OrderRecord::parse(b"{\"holder\":\"a\",\"evil\":1}"), None);
        assert_eq!(OrderRecord::parse(&[0xff; 3]), None);
    }
}
