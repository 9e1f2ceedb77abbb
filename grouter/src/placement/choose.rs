//! The deterministic choice of the sites an app runs in (docs/PLACEMENT.md). Pure: the
//! same inputs give the same sites at every node, which is what lets every site's
//! reconciler act alone.
//!
//! Must never: read a clock, a random number or anything of this node's own (its site, its
//! RTT measurements): only what every node holds alike after the merge.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use super::Sites;

/// What the choice knows of one site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The site.
    pub site: String,
    /// Its region, if its nodes announce one.
    pub region: Option<String>,
    /// Whether an alive node of it reports healthy GoRouters.
    pub healthy: bool,
    /// When the app was created at that site's Cloud Controller, while it runs there
    /// (started, more than 0 instances); `None` when it does not run there.
    pub running_since: Option<String>,
    /// The site reports the app being placed there (a step under way): among the sites
    /// that do not run it yet, it keeps its place, so a jitter in RTTs or weights cannot
    /// move a copy that has begun.
    pub placing: bool,
}

/// What the app's route policies say about where it may run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// Regions every one of its pinned routes allows (`None`: no route is pinned).
    pub regions: Option<BTreeSet<String>>,
    /// Weights of the first of its routes (by host) that has weights.
    pub weights: Option<BTreeMap<String, u32>>,
}

impl Rules {
    /// Whether the app may run at a site of `region`.
    pub fn allows(&self, region: Option<&str>) -> bool {
        match &self.regions {
            None => true,
            Some(allowed) => region.is_some_and(|r| allowed.contains(r)),
        }
    }

    fn weight(&self, site: &str) -> Option<u32> {
        self.weights
            .as_ref()
            .map(|w| w.get(site).copied().unwrap_or(0))
    }
}

/// Why a site was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Excluded {
    /// Outside the regions the app's routes are pinned to.
    Region,
    /// No healthy node.
    Unhealthy,
    /// Weighted 0 by the app's route policy (never newly chosen).
    Weight,
    /// Eligible, but enough sites ranked before it.
    Ranked,
    /// Not in the list the operator gave.
    NotListed,
}

impl Excluded {
    /// The reason in the placement status.
    pub fn as_str(self) -> &'static str {
        match self {
            Excluded::Region => "outside the app's regions",
            Excluded::Unhealthy => "not healthy",
            Excluded::Weight => "weighted 0",
            Excluded::Ranked => "other sites ranked first",
            Excluded::NotListed => "not listed",
        }
    }
}

/// The outcome: the chosen sites (in rank order) and why each other site is not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Choice {
    /// Chosen sites, best first.
    pub chosen: Vec<String>,
    /// Sites not chosen, with the reason.
    pub excluded: BTreeMap<String, Excluded>,
}

impl Choice {
    /// Whether `site` is chosen.
    pub fn has(&self, site: &str) -> bool {
        self.chosen.iter().any(|s| s == site)
    }
}

/// Choose the sites for `wanted` among `candidates`.
///
/// - A list names the sites: each is chosen unless the app's regions exclude it (an explicit
///   list overrides health, but never pinning).
/// - A count takes, among the sites allowed by the regions and healthy: first those already
///   running the app, oldest first (so adding a site never moves the app, and shrinking keeps
///   the sites it ran in first); then those where it is being placed; then the others by
///   highest weight, then lowest RTT from the
///   sites running it (`rtt`), then name. Weight 0 keeps a site from being newly chosen but
///   never evicts the app from a site it runs in.
pub fn choose(
    wanted: &Sites,
    candidates: &[Candidate],
    rules: &Rules,
    rtt: impl Fn(&str, &str) -> Option<u32>,
) -> Choice {
    let mut choice = Choice::default();
    match wanted {
        Sites::List(list) => {
            for c in candidates {
                if !list.contains(&c.site) {
                    choice.excluded.insert(c.site.clone(), Excluded::NotListed);
                } else if !rules.allows(c.region.as_deref()) {
                    choice.excluded.insert(c.site.clone(), Excluded::Region);
                }
            }
            choice.chosen = list
                .iter()
                .filter(|s| !choice.excluded.contains_key(*s))
                .filter(|s| candidates.iter().any(|c| c.site == **s))
                .cloned()
                .collect();
        }
        Sites::Count(n) => {
            let running: Vec<&str> = candidates
                .iter()
                .filter(|c| c.running_since.is_some())
                .map(|c| c.site.as_str())
                .collect();
            let mut eligible: Vec<&Candidate> = Vec::new();
            for c in candidates {
                let why = if !rules.allows(c.region.as_deref()) {
                    Some(Excluded::Region)
                } else if !c.healthy {
                    Some(Excluded::Unhealthy)
                } else if c.running_since.is_none() && rules.weight(&c.site) == Some(0) {
                    Some(Excluded::Weight)
                } else {
                    None
                };
                match why {
                    Some(why) => {
                        choice.excluded.insert(c.site.clone(), why);
                    }
                    None => eligible.push(c),
                }
            }
            let distance = |site: &str| {
                running
                    .iter()
                    .filter(|r| **r != site)
                    .filter_map(|r| rtt(r, site))
                    .min()
                    .unwrap_or(u32::MAX)
            };
            eligible.sort_by(|a, b| rank(a, b, rules, &distance));
            let take = usize::try_from(*n).unwrap_or(usize::MAX);
            for (i, c) in eligible.into_iter().enumerate() {
                if i < take {
                    choice.chosen.push(c.site.clone());
                } else {
                    choice.excluded.insert(c.site.clone(), Excluded::Ranked);
                }
            }
        }
    }
    choice
}

fn rank(a: &Candidate, b: &Candidate, rules: &Rules, distance: &impl Fn(&str) -> u32) -> Ordering {
    match (&a.running_since, &b.running_since) {
        (Some(x), Some(y)) => x.cmp(y).then_with(|| a.site.cmp(&b.site)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => {
            let w = |c: &Candidate| rules.weight(&c.site).unwrap_or(1);
            b.placing
                .cmp(&a.placing)
                .then_with(|| w(b).cmp(&w(a)))
                .then_with(|| distance(&a.site).cmp(&distance(&b.site)))
                .then_with(|| a.site.cmp(&b.site))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(name: &str, region: &str, healthy: bool, since: Option<&str>) -> Candidate {
        Candidate {
            site: name.into(),
            region: Some(region.into()),
            healthy,
            running_since: since.map(Into::into),
            placing: false,
        }
    }

    fn three(lon_since: Option<&str>) -> Vec<Candidate> {
        vec![
            site("lon", "eu", true, lon_since),
            site("nyc", "us", true, None),
            site("sgp", "ap", true, None),
        ]
    }

    fn no_rtt(_: &str, _: &str) -> Option<u32> {
        None
    }

    #[test]
    fn a_count_keeps_where_the_app_runs_and_adds_by_weight_then_rtt_then_name() {
        let sites = three(Some("2026-01-01T00:00:00Z"));
        let c = choose(&Sites::Count(2), &sites, &Rules::default(), no_rtt);
        assert_eq!(c.chosen, ["lon", "nyc"], "ties break by name");
        let near_sgp = |a: &str, b: &str| Some(if (a, b) == ("lon", "sgp") { 5 } else { 50 });
        let c = choose(&Sites::Count(2), &sites, &Rules::default(), near_sgp);
        assert_eq!(c.chosen, ["lon", "sgp"], "lowest RTT from lon");
        let rules = Rules {
            weights: Some([("nyc".into(), 3), ("sgp".into(), 1)].into()),
            ..Rules::default()
        };
        let c = choose(&Sites::Count(2), &sites, &rules, near_sgp);
        assert_eq!(
            c.chosen,
            ["lon", "nyc"],
            "weight before RTT; lon, weighted 0, still runs it"
        );
        assert_eq!(c.excluded.get("sgp"), Some(&Excluded::Ranked));
    }

    #[test]
    fn shrinking_keeps_the_oldest_sites_and_every_order_of_input_agrees() {
        let mut sites = three(Some("2026-01-01T00:00:00Z"));
        sites[2].running_since = Some("2026-02-01T00:00:00Z".into());
        let c = choose(&Sites::Count(1), &sites, &Rules::default(), no_rtt);
        assert_eq!(c.chosen, ["lon"]);
        sites.reverse();
        assert_eq!(
            choose(&Sites::Count(1), &sites, &Rules::default(), no_rtt).chosen,
            ["lon"]
        );
        assert_eq!(
            choose(&Sites::Count(0), &sites, &Rules::default(), no_rtt).chosen,
            Vec::<String>::new()
        );
    }

    #[test]
    fn regions_are_never_relaxed_and_unhealthy_sites_are_replaced() {
        let mut sites = three(Some("2026-01-01T00:00:00Z"));
        sites.push(site("fra", "eu", true, None));
        let rules = Rules {
            regions: Some(["eu".to_string()].into()),
            ..Rules::default()
        };
        let c = choose(&Sites::Count(3), &sites, &rules, no_rtt);
        assert_eq!(c.chosen, ["lon", "fra"], "only two sites in eu");
        assert_eq!(c.excluded.get("nyc"), Some(&Excluded::Region));
        sites[0].healthy = false;
        let c = choose(&Sites::Count(1), &sites, &rules, no_rtt);
        assert_eq!(c.chosen, ["fra"]);
        assert_eq!(c.excluded.get("lon"), Some(&Excluded::Unhealthy));
        let c = choose(
            &Sites::List(vec!["lon".into(), "nyc".into()]),
            &sites,
            &rules,
            no_rtt,
        );
        assert_eq!(c.chosen, ["lon"], "a list overrides health, not pinning");
        assert_eq!(c.excluded.get("nyc"), Some(&Excluded::Region));
        assert_eq!(c.excluded.get("sgp"), Some(&Excluded::NotListed));
    }

    #[test]
    fn a_copy_under_way_keeps_its_site_when_rtts_move() {
        let rules = Rules::default();
        let mut sites = vec![
            site("lon", "eu", true, Some("2026-01-01T00:00:00Z")),
            site("nyc", "us", true, None),
            site("sgp", "ap", true, None),
        ];
        let near_nyc = |a: &str, b: &str| Some(if a == "nyc" || b == "nyc" { 10 } else { 20 });
        let near_sgp = |a: &str, b: &str| Some(if a == "sgp" || b == "sgp" { 10 } else { 20 });
        assert_eq!(
            choose(&Sites::Count(2), &sites, &rules, near_nyc).chosen,
            ["lon", "nyc"]
        );
        assert_eq!(
            choose(&Sites::Count(2), &sites, &rules, near_sgp).chosen,
            ["lon", "sgp"]
        );
        sites[1].placing = true;
        assert_eq!(
            choose(&Sites::Count(2), &sites, &rules, near_sgp).chosen,
            ["lon", "nyc"],
            "nyc, copying already, stays chosen though sgp is now nearer"
        );
    }
}
