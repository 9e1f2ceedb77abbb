//! Requests the proxy answered, by the site that answered them: the totals the history
//! sampler (the `history` module) turns into requests per second and an error rate per site.
//!
//! Owns: one pair of counters (requests, 5xx) per answering site. A leaf: imports nothing of
//! the crate. The set of sites is bounded ([`MAX_SITES`]); a site over the bound is counted
//! under [`OTHER`], never a new allocation per request.
//!
//! Must never: block the proxy (a read lock and two relaxed atomics per request; the write
//! lock only the first time a site answers) or grow without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

/// Most sites counted apart; the rest share [`OTHER`].
pub const MAX_SITES: usize = 64;
/// The site name under which sites over [`MAX_SITES`] are counted.
pub const OTHER: &str = "(other)";

#[derive(Debug, Default)]
struct Pair {
    requests: AtomicU64,
    errors: AtomicU64,
}

/// The proxy's per-site request counters.
#[derive(Debug, Default)]
pub struct Traffic {
    sites: RwLock<Vec<(Arc<str>, Arc<Pair>)>>,
}

/// One site's totals since the node started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteTotals {
    /// The site that answered.
    pub site: Arc<str>,
    /// Requests answered.
    pub requests: u64,
    /// Of which answered with a 5xx status.
    pub errors: u64,
}

impl Traffic {
    /// Count one response with `status`, answered by `site`.
    pub fn count(&self, site: &str, status: u16) {
        let pair = self.pair(site);
        pair.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            pair.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn pair(&self, site: &str) -> Arc<Pair> {
        if let Some((_, p)) = self.sites.read().iter().find(|(s, _)| &**s == site) {
            return p.clone();
        }
        let mut sites = self.sites.write();
        if let Some((_, p)) = sites.iter().find(|(s, _)| &**s == site) {
            return p.clone();
        }
        let name = if sites.len() < MAX_SITES { site } else { OTHER };
        if let Some((_, p)) = sites.iter().find(|(s, _)| &**s == name) {
            return p.clone();
        }
        let p = Arc::new(Pair::default());
        sites.push((name.into(), p.clone()));
        p
    }

    /// Every site's totals, in site order.
    pub fn totals(&self) -> Vec<SiteTotals> {
        let mut v: Vec<SiteTotals> = self
            .sites
            .read()
            .iter()
            .map(|(site, p)| SiteTotals {
                site: site.clone(),
                requests: p.requests.load(Ordering::Relaxed),
                errors: p.errors.load(Ordering::Relaxed),
            })
            .collect();
        v.sort_by(|a, b| a.site.cmp(&b.site));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_site_and_5xx_as_errors_within_the_bound() {
        let t = Traffic::default();
        t.count("nyc", 200);
        t.count("lon", 502);
        t.count("lon", 404);
        let totals = t.totals();
        assert_eq!(totals[0].site.as_ref(), "lon");
        assert_eq!((totals[0].requests, totals[0].errors), (2, 1));
        assert_eq!((totals[1].requests, totals[1].errors), (1, 0));
        for i in 0..200 {
            t.count(&format!("s{i}"), 200);
        }
        let totals = t.totals();
        assert_eq!(totals.len(), MAX_SITES + 1);
        assert!(totals.iter().any(|s| &*s.site == OTHER));
    }
}
