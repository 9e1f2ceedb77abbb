//! Route and site policies as every node holds them after the merge (CONTRACT.md, "Global
//! configuration over the mesh"): the one view that `proxy::decide`, `dns` and `/healthz`
//! read.
//!
//! Owns: the policy types and their JSON (what `PUT /v1/policies/…` accepts and what the
//! mesh carries in a config value), [`PolicyStore`], the current merged [`Policies`]
//! behind one cheap `Arc` swap, and [`Steering`], the rules that apply them to one route
//! (which sites are admitted and eligible, the weighted order, the [`Verdict`]), so the
//! proxy and DNS apply the same rules. Must never: do I/O, or know where a policy came from
//! (the control plane merges and replaces the whole view; readers only read).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// How a route served only at other sites is reached (overrides `proxy.remote`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Forward over the mesh to the chosen site's node.
    Proxy,
    /// 307 to the chosen site's redirect host.
    Redirect,
}

/// The policy of one route host (`PUT /v1/policies/routes/{host}`). Every field is optional;
/// a PUT replaces the whole policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutePolicy {
    /// Overrides `proxy.remote` for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Only sites whose region is listed may serve the route (never relaxed on failover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<Vec<String>>,
    /// Among eligible remote sites, the share of requests and DNS answers (0 = never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<BTreeMap<String, u32>>,
    /// Sites that take no new requests or DNS answers for the route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drained: Vec<String>,
}

/// The policy of one site (`PUT /v1/policies/sites/{site}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SitePolicy {
    /// The whole site takes no new requests or DNS answers, and its nodes' `/healthz` is 503.
    #[serde(default)]
    pub drained: bool,
}

/// A route policy as the data plane holds it, with the counter that spreads choices by
/// weight (shared by every request for the route at this node).
#[derive(Debug, Default)]
pub struct RouteRule {
    /// The policy as written.
    pub policy: RoutePolicy,
    /// Choices made so far (for smooth, deterministic weighted spreading).
    turns: AtomicU64,
}

impl RouteRule {
    /// A rule for `policy`.
    pub fn new(policy: RoutePolicy) -> RouteRule {
        RouteRule {
            policy,
            turns: AtomicU64::new(0),
        }
    }

    /// The next turn number (every call returns a new one).
    pub fn next_turn(&self) -> u64 {
        self.turns.fetch_add(1, Ordering::Relaxed)
    }

    /// The turn [`RouteRule::next_turn`] would return, without taking it.
    pub fn peek_turn(&self) -> u64 {
        self.turns.load(Ordering::Relaxed)
    }
}

/// Every policy in force: one immutable snapshot, replaced whole on change.
#[derive(Debug, Default)]
pub struct Policies {
    routes: HashMap<Box<str>, Arc<RouteRule>, foldhash::fast::RandomState>,
    sites: HashMap<Box<str>, SitePolicy, foldhash::fast::RandomState>,
}

impl Policies {
    /// A snapshot of these policies. Hosts are lower-cased route hosts (`*.domain` for a
    /// wildcard route).
    pub fn new(
        routes: impl IntoIterator<Item = (String, Arc<RouteRule>)>,
        sites: impl IntoIterator<Item = (String, SitePolicy)>,
    ) -> Policies {
        Policies {
            routes: routes
                .into_iter()
                .map(|(h, r)| (h.into_boxed_str(), r))
                .collect(),
            sites: sites
                .into_iter()
                .map(|(s, p)| (s.into_boxed_str(), p))
                .collect(),
        }
    }

    /// The rule of a route host, if it has one.
    pub fn route(&self, host: &str) -> Option<&Arc<RouteRule>> {
        self.routes.get(host)
    }

    /// Whether a site policy drains `site` for every route.
    pub fn site_drained(&self, site: &str) -> bool {
        self.sites.get(site).is_some_and(|p| p.drained)
    }

    /// Every route rule, by host (unordered).
    pub fn routes(&self) -> impl Iterator<Item = (&str, &Arc<RouteRule>)> {
        self.routes.iter().map(|(h, r)| (&**h, r))
    }

    /// Every site policy, by site (unordered).
    pub fn sites(&self) -> impl Iterator<Item = (&str, &SitePolicy)> {
        self.sites.iter().map(|(s, p)| (&**s, p))
    }

    /// No policy at all (the data plane's fast path).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.sites.is_empty()
    }
}

/// What the data plane needs to know of the sites to apply policies: each site's region and
/// whether it can serve (any alive node of it reports healthy GoRouters).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SiteFacts {
    /// Site → region, this node's own site included (sites whose nodes announce no
    /// region are absent). Read on every request a policy steers: a fast hash.
    pub regions: HashMap<Arc<str>, Arc<str>, foldhash::fast::RandomState>,
    /// Sites with a healthy alive node (this node's own site included when it is healthy).
    pub healthy: Vec<Arc<str>>,
}

impl SiteFacts {
    /// The region of `site`, if known.
    pub fn region(&self, site: &str) -> Option<&str> {
        self.regions.get(site).map(|r| &**r)
    }

    /// Whether `site` can serve.
    pub fn is_healthy(&self, site: &str) -> bool {
        self.healthy.iter().any(|s| **s == *site)
    }
}

/// Where a route may go, as [`Steering::verdict`] says for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Serve at this site; `also` are the remote sites to fail over to, in order.
    Local {
        /// Eligible remote sites, the weighted pick first.
        also: SmallVec<[Arc<str>; 2]>,
    },
    /// Serve at another site (by the route's mode): the first of `sites` that answers.
    Elsewhere {
        /// Eligible remote sites, the weighted pick first.
        sites: SmallVec<[Arc<str>; 2]>,
    },
    /// No site may take it: 503 `no_endpoints`.
    NoEndpoints,
}

/// How the policies bear on one route: its rule (if any), the site drains and what is
/// known of the sites. The one place the rules of CONTRACT.md's route and site policies
/// live; `proxy::decide` and `dns` only ask it.
///
/// A site is *admitted* when it is in the rule's regions (a site of unknown region is in
/// none), not in the rule's `drained` list and not drained by a site policy. A remote site
/// is *eligible* when it is admitted, healthy and, if the rule has weights, weighted above
/// 0. This site, when it serves the route and is admitted, always comes first (weights
/// spread only the remote sites).
#[derive(Debug, Clone, Copy)]
pub struct Steering<'a> {
    rule: Option<&'a RouteRule>,
    policies: &'a Policies,
    facts: &'a SiteFacts,
}

impl<'a> Steering<'a> {
    /// The steering of the route whose host (as registered: `*.domain` for a wildcard) is
    /// `host`.
    pub fn new(policies: &'a Policies, facts: &'a SiteFacts, host: &str) -> Steering<'a> {
        Steering {
            rule: policies.route(host).map(|r| &**r),
            policies,
            facts,
        }
    }

    fn policy(&self) -> Option<&'a RoutePolicy> {
        self.rule.map(|r| &r.policy)
    }

    /// The route's `mode`, which overrides `proxy.remote`.
    pub fn mode(&self) -> Option<Mode> {
        self.policy().and_then(|p| p.mode)
    }

    /// Whether `site` lies in the rule's regions (always, without `regions`). Never
    /// relaxed: a request a peer forwards to a site outside them is refused there too.
    pub fn in_regions(&self, site: &str) -> bool {
        match self.policy().and_then(|p| p.regions.as_deref()) {
            None => true,
            Some(regions) => self
                .facts
                .region(site)
                .is_some_and(|r| regions.iter().any(|allowed| allowed == r)),
        }
    }

    /// Whether `site` may take new requests and DNS answers for the route, health aside.
    pub fn admits(&self, site: &str) -> bool {
        self.in_regions(site)
            && !self
                .policy()
                .is_some_and(|p| p.drained.iter().any(|d| d == site))
            && !self.policies.site_drained(site)
    }

    /// The weight of `site` among remote sites: `None` without weights (all equal), else
    /// its weight (0 when unlisted: never chosen).
    fn weight(&self, site: &str) -> Option<u32> {
        let weights = self.policy()?.weights.as_ref()?;
        Some(weights.get(site).copied().unwrap_or(0))
    }

    /// Whether `site`, as a remote site, may be chosen at all by weight (always without
    /// weights).
    pub fn weighs(&self, site: &str) -> bool {
        self.weight(site) != Some(0)
    }

    /// Whether anything here changes the choice among `sites`: a rule that restricts or
    /// spreads, or a site policy draining one of them. When nothing does, callers keep
    /// their policy-free behaviour exactly (a mode override aside).
    pub fn restricts<'s>(&self, mut sites: impl Iterator<Item = &'s str>) -> bool {
        let ruled = self
            .policy()
            .is_some_and(|p| p.regions.is_some() || p.weights.is_some() || !p.drained.is_empty());
        ruled || sites.any(|s| self.policies.site_drained(s))
    }

    /// The turn for spreading by weight: a new one when `spend`, else the next one left
    /// untaken (for a look whose result is decided again: the HTTP/1.1 fast path hands
    /// remote requests to the general path). 0 without weights.
    pub fn turn(&self, spend: bool) -> u64 {
        match self.rule {
            Some(r) if r.policy.weights.is_some() => {
                if spend {
                    r.next_turn()
                } else {
                    r.peek_turn()
                }
            }
            _ => 0,
        }
    }

    /// Move the remote site that takes `turn` by weight to the front of `items`, the others
    /// keeping their order (the site ranking, for failover). Nothing moves without weights
    /// or with fewer than two items. Every item must weigh (see [`Steering::weighs`]).
    pub fn weighted_first<T>(&self, items: &mut [T], site_of: impl Fn(&T) -> &str, turn: u64) {
        if items.len() < 2 || self.policy().is_none_or(|p| p.weights.is_none()) {
            return;
        }
        let weights: SmallVec<[u32; 4]> = items
            .iter()
            .map(|i| self.weight(site_of(i)).unwrap_or(0))
            .collect();
        if let Some(i) = weighted_pick(&weights, turn) {
            items[..=i].rotate_right(1);
        }
    }

    /// Where one request for the route goes. `here` is this node's site, `served_here`
    /// whether it serves the route, `here_healthy` whether its GoRouters are; `ranked` the
    /// other sites serving it, best first. `spend` as for [`Steering::turn`].
    ///
    /// When nothing restricts ([`Steering::restricts`]) the answer is the policy-free one:
    /// here then `ranked`, or `ranked`. Otherwise: here when admitted (then the eligible
    /// remote sites), except that an unhealthy here with no eligible remote site is
    /// [`Verdict::NoEndpoints`]; else the eligible remote sites, weighted pick first; none
    /// → [`Verdict::NoEndpoints`].
    pub fn verdict(
        &self,
        here: &str,
        served_here: bool,
        here_healthy: bool,
        ranked: &[Arc<str>],
        spend: bool,
    ) -> Verdict {
        let sites = served_here
            .then_some(here)
            .into_iter()
            .chain(ranked.iter().map(|s| &**s));
        if !self.restricts(sites) {
            let all: SmallVec<[Arc<str>; 2]> = ranked.iter().cloned().collect();
            return if served_here {
                Verdict::Local { also: all }
            } else {
                Verdict::Elsewhere { sites: all }
            };
        }
        let mut remote: SmallVec<[Arc<str>; 2]> = ranked
            .iter()
            .filter(|s| self.admits(s) && self.weighs(s) && self.facts.is_healthy(s))
            .cloned()
            .collect();
        if remote.len() > 1 {
            let turn = self.turn(spend);
            self.weighted_first(&mut remote, |s| &**s, turn);
        }
        if served_here && self.admits(here) {
            if here_healthy || !remote.is_empty() {
                return Verdict::Local { also: remote };
            }
            return Verdict::NoEndpoints;
        }
        if remote.is_empty() {
            Verdict::NoEndpoints
        } else {
            Verdict::Elsewhere { sites: remote }
        }
    }
}

/// Which of `weights` takes turn `turn`: `None` when every weight is 0. Over any `W`
/// consecutive turns (`W` the sum of the weights) index `i` is chosen exactly
/// `weights[i]` times, so 1:3 over 1,000 turns is 250/750; within the cycle the turns are
/// spread, not in runs: turn `t` takes slot `t·g mod W` (`g` the stride coprime to `W`
/// nearest above `W/φ`, so consecutive turns land far apart, like a golden-ratio
/// sequence), and slot `s` belongs to the index whose share of `[0, W)` holds it.
/// Deterministic and stateless: the turn is the only state.
pub fn weighted_pick(weights: &[u32], turn: u64) -> Option<usize> {
    let total: u128 = weights.iter().map(|w| u128::from(*w)).sum();
    if total == 0 {
        return None;
    }
    let slot = (u128::from(turn) % total) * stride(total) % total;
    let mut end = 0u128;
    weights.iter().position(|w| {
        end += u128::from(*w);
        slot < end
    })
}

/// The stride of [`weighted_pick`] for a cycle of `total` slots: the first number at or
/// above `total/φ` that is coprime to `total` (so `t·stride mod total` visits every slot
/// once per cycle).
fn stride(total: u128) -> u128 {
    // 2^64/φ: the golden ratio's fraction in 64-bit fixed point.
    const INV_PHI: u128 = 0x9E37_79B9_7F4A_7C15;
    let mut g = total.checked_mul(INV_PHI).map_or(1, |p| (p >> 64).max(1));
    // Ends at the latest at `total - 1` (coprime to every `total`); 1 when `total` is 1.
    while g < total && gcd(g, total) != 1 {
        g += 1;
    }
    if g >= total { 1 } else { g }
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The current [`Policies`] and [`SiteFacts`]: written by the control plane and the mesh,
/// read on every request (each lock is held only to clone an `Arc`).
#[derive(Debug, Default)]
pub struct PolicyStore {
    policies: RwLock<Arc<Policies>>,
    facts: RwLock<Arc<SiteFacts>>,
    /// Some policy is in force: the data plane's one atomic load when there is none.
    any: AtomicBool,
}

impl PolicyStore {
    /// The policies in force.
    pub fn policies(&self) -> Arc<Policies> {
        Arc::clone(&self.policies.read())
    }

    /// The policies in force, or `None` without taking a lock when there are none (the
    /// data plane's fast path).
    pub fn active(&self) -> Option<Arc<Policies>> {
        if self.any.load(Ordering::Acquire) {
            Some(self.policies())
        } else {
            None
        }
    }

    /// Replace the policies in force.
    pub fn set_policies(&self, policies: Policies) {
        let any = !policies.is_empty();
        *self.policies.write() = Arc::new(policies);
        self.any.store(any, Ordering::Release);
    }

    /// What is known of the sites.
    pub fn facts(&self) -> Arc<SiteFacts> {
        Arc::clone(&self.facts.read())
    }

    /// Replace what is known of the sites (only when it changed: readers keep their `Arc`).
    pub fn set_facts(&self, facts: SiteFacts) {
        if **self.facts.read() != facts {
            *self.facts.write() = Arc::new(facts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_policy_json_is_strict() {
        let p: RoutePolicy = serde_json::from_str(
            r#"{"mode":"redirect","regions":["eu"],"weights":{"lon":3,"nyc":1},"drained":["nyc"]}"#,
        )
        .unwrap();
        assert_eq!(p.mode, Some(Mode::Redirect));
        assert_eq!(p.weights.as_ref().and_then(|w| w.get("lon")), Some(&3));
        assert_eq!(
            serde_json::from_str::<RoutePolicy>("{}").unwrap(),
            RoutePolicy::default()
        );
        for bad in [
            r#"{"regoins":["eu"]}"#,
            r#"{"weights":{"lon":-1}}"#,
            r#"{"weights":{"lon":1.5}}"#,
            r#"{"mode":"teleport"}"#,
        ] {
            assert!(serde_json::from_str::<RoutePolicy>(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod steering_tests {
    use super::*;

    /// lon and fra in `eu`, nyc and sfo in `us`, sgp of unknown region; healthy as listed.
    fn facts(healthy: &[&str]) -> SiteFacts {
        SiteFacts {
            regions: [("lon", "eu"), ("fra", "eu"), ("nyc", "us"), ("sfo", "us")]
                .into_iter()
                .map(|(s, r)| (Arc::from(s), Arc::from(r)))
                .collect(),
            healthy: healthy.iter().map(|s| Arc::from(*s)).collect(),
        }
    }

    const ALL: &[&str] = &["lon", "fra", "nyc", "sfo", "sgp"];

    fn policies(route: Option<&str>, drained_sites: &[&str]) -> Policies {
        Policies::new(
            route.map(|json| {
                let p: RoutePolicy = serde_json::from_str(json).unwrap();
                ("shop.example.com".to_string(), Arc::new(RouteRule::new(p)))
            }),
            drained_sites
                .iter()
                .map(|s| (s.to_string(), SitePolicy { drained: true })),
        )
    }

    fn sites(list: &[&str]) -> SmallVec<[Arc<str>; 2]> {
        list.iter().map(|s| Arc::from(*s)).collect()
    }

    fn local(list: &[&str]) -> Verdict {
        Verdict::Local { also: sites(list) }
    }

    fn elsewhere(list: &[&str]) -> Verdict {
        Verdict::Elsewhere { sites: sites(list) }
    }

    #[test]
    fn weighted_pick_is_exact_over_every_cycle_and_spread_within_it() {
        let mut count = [0u32; 2];
        for t in 0..1000 {
            count[weighted_pick(&[1, 3], t).unwrap()] += 1;
        }
        assert_eq!(count, [250, 750]);
        // Any window of W consecutive turns, not only aligned ones, is exact.
        for (weights, start) in [([100u32, 300u32], 57u64), ([7, 5], 3), ([1, 1], 1)] {
            let total: u32 = weights.iter().sum();
            let mut c = [0u32; 2];
            for t in start..start + u64::from(total) {
                c[weighted_pick(&weights, t).unwrap()] += 1;
            }
            assert_eq!(c, weights, "{weights:?} from {start}");
        }
        // 100:300 does not come in runs of 100: every 20 turns hold about 5 of the first.
        for w in 0..20u64 {
            let firsts = (w * 20..w * 20 + 20)
                .filter(|t| weighted_pick(&[100, 300], *t) == Some(0))
                .count();
            assert!((3..=7).contains(&firsts), "window {w}: {firsts}");
        }
        assert_eq!(weighted_pick(&[0, 0], 5), None);
        assert_eq!(weighted_pick(&[], 5), None);
        assert!((0..50).all(|t| weighted_pick(&[0, 4, 0], t) == Some(1)));
        // Huge weights neither overflow nor stall.
        let big = [u32::MAX, u32::MAX - 1, 3];
        assert!((0..1000).all(|t| weighted_pick(&big, t).is_some()));
    }

    #[test]
    fn admitted_sites_are_in_the_regions_and_not_drained() {
        let p = policies(Some(r#"{"regions":["eu"],"drained":["fra"]}"#), &["lon"]);
        let f = facts(ALL);
        let s = Steering::new(&p, &f, "shop.example.com");
        assert!(s.in_regions("lon") && s.in_regions("fra"));
        assert!(!s.in_regions("nyc"));
        // A site of unknown region is in no region.
        assert!(!s.in_regions("sgp"));
        // lon is drained by its site policy, fra by the route's list.
        assert!(ALL.iter().all(|site| !s.admits(site)));
        // Another route: only the site drain applies.
        let other = Steering::new(&p, &f, "other.example.com");
        assert!(other.in_regions("sgp"));
        assert!(!other.admits("lon") && other.admits("fra") && other.admits("sgp"));
    }

    #[test]
    fn without_restrictions_the_policy_free_order_stands() {
        let f = facts(&[]);
        let ranked = sites(&["nyc", "sgp"]);
        for p in [
            Policies::default(),
            // A site drain elsewhere, a rule with only a mode.
            policies(Some(r#"{"mode":"redirect"}"#), &["fra"]),
        ] {
            let s = Steering::new(&p, &f, "shop.example.com");
            // Unhealthy sites included, as without policies.
            assert_eq!(
                s.verdict("lon", true, false, &ranked, true),
                local(&["nyc", "sgp"])
            );
            assert_eq!(
                s.verdict("lon", false, true, &ranked, true),
                elsewhere(&["nyc", "sgp"])
            );
        }
        let p = policies(Some(r#"{"mode":"redirect"}"#), &[]);
        assert_eq!(
            Steering::new(&p, &f, "shop.example.com").mode(),
            Some(Mode::Redirect)
        );
        assert_eq!(Steering::new(&p, &f, "x.example.com").mode(), None);
    }

    #[test]
    fn a_pinned_route_never_leaves_its_regions_on_failover_either() {
        let p = policies(Some(r#"{"regions":["eu"]}"#), &[]);
        let f = facts(&["lon", "fra", "nyc", "sfo", "sgp"]);
        let s = Steering::new(&p, &f, "shop.example.com");
        let ranked = sites(&["sfo", "fra", "sgp", "lon"]);
        // At nyc (us), serving it locally: not here, only the eu sites, in rank order.
        assert_eq!(
            s.verdict("nyc", true, true, &ranked, true),
            elsewhere(&["fra", "lon"])
        );
        // At lon (eu): here, failing over to fra only.
        let ranked = sites(&["nyc", "fra", "sfo"]);
        assert_eq!(s.verdict("lon", true, true, &ranked, true), local(&["fra"]));
        // eu unhealthy: nothing, never a us site.
        let f = facts(&["nyc", "sfo"]);
        let s = Steering::new(&p, &f, "shop.example.com");
        let ranked = sites(&["lon", "fra", "sfo"]);
        assert_eq!(
            s.verdict("nyc", true, true, &ranked, true),
            Verdict::NoEndpoints
        );
        // At lon with its GoRouters down too, and no other eu site: nothing either.
        let ranked = sites(&["fra", "nyc"]);
        assert_eq!(
            s.verdict("lon", true, false, &ranked, true),
            Verdict::NoEndpoints
        );
        // ... but with its GoRouters up it serves (local wins without asking the facts).
        assert_eq!(s.verdict("lon", true, true, &ranked, true), local(&[]));
        // An unhealthy lon with a healthy eu site still tries itself first.
        let f = facts(&["fra"]);
        let s = Steering::new(&p, &f, "shop.example.com");
        assert_eq!(
            s.verdict("lon", true, false, &ranked, true),
            local(&["fra"])
        );
    }

    #[test]
    fn drained_sites_take_nothing_new() {
        let f = facts(ALL);
        let ranked = sites(&["nyc", "fra", "sgp"]);
        // The route drained at lon (here) and nyc: elsewhere, without them.
        let p = policies(Some(r#"{"drained":["lon","nyc"]}"#), &[]);
        let s = Steering::new(&p, &f, "shop.example.com");
        assert_eq!(
            s.verdict("lon", true, true, &ranked, true),
            elsewhere(&["fra", "sgp"])
        );
        // The same by site policies, for every route (no rule needed).
        let p = policies(None, &["lon", "nyc"]);
        let s = Steering::new(&p, &f, "any.example.com");
        assert_eq!(
            s.verdict("lon", true, true, &ranked, true),
            elsewhere(&["fra", "sgp"])
        );
        // A drain restricts, so unhealthy sites drop out as well.
        let f2 = facts(&["fra"]);
        let s = Steering::new(&p, &f2, "any.example.com");
        assert_eq!(
            s.verdict("lon", true, true, &ranked, true),
            elsewhere(&["fra"])
        );
        // Every serving site drained: nothing.
        let p = policies(Some(r#"{"drained":["fra","sgp"]}"#), &["lon", "nyc"]);
        let s = Steering::new(&p, &f, "shop.example.com");
        assert_eq!(
            s.verdict("lon", true, true, &ranked, true),
            Verdict::NoEndpoints
        );
        assert_eq!(
            s.verdict("lon", false, true, &ranked, true),
            Verdict::NoEndpoints
        );
    }

    #[test]
    fn weights_spread_the_remote_sites_exactly_and_local_still_wins() {
        let p = policies(Some(r#"{"weights":{"nyc":1,"fra":3,"sgp":0}}"#), &[]);
        let f = facts(ALL);
        let s = Steering::new(&p, &f, "shop.example.com");
        // Ranked nyc, sgp, fra, sfo: sgp weighs 0 and sfo is unlisted: never chosen, not
        // even on failover.
        let ranked = sites(&["nyc", "sgp", "fra", "sfo"]);
        let mut first = std::collections::HashMap::<String, u32>::new();
        for _ in 0..1000 {
            match s.verdict("lon", false, true, &ranked, true) {
                Verdict::Elsewhere { sites } => {
                    assert_eq!(sites.len(), 2, "{sites:?}");
                    *first.entry(sites[0].to_string()).or_default() += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(first.get("nyc"), Some(&250));
        assert_eq!(first.get("fra"), Some(&750));
        // Served here (lon is unlisted): here first all the same; failover by weight.
        match s.verdict("lon", true, true, &ranked, true) {
            Verdict::Local { also } => assert_eq!(also.len(), 2),
            other => panic!("{other:?}"),
        }
        // A look without spending leaves the turn where it was.
        let before = p.route("shop.example.com").unwrap().peek_turn();
        s.verdict("lon", false, true, &ranked, false);
        assert_eq!(p.route("shop.example.com").unwrap().peek_turn(), before);
        // Only weight-0 and unlisted sites serve it elsewhere: nothing.
        let only = sites(&["sgp", "sfo"]);
        assert_eq!(
            s.verdict("lon", false, true, &only, true),
            Verdict::NoEndpoints
        );
    }

    #[test]
    fn the_store_is_free_to_read_until_a_policy_is_set() {
        let store = PolicyStore::default();
        assert!(store.active().is_none());
        store.set_policies(policies(Some("{}"), &[]));
        assert!(
            store
                .active()
                .is_some_and(|p| p.route("shop.example.com").is_some())
        );
        store.set_policies(Policies::default());
        assert!(store.active().is_none());
    }
}
