//! Route and site policies as every node holds them after the merge (CONTRACT.md, "Global
//! configuration over the mesh"): the one view that `proxy::decide`, `dns` and `/healthz`
//! read.
//!
//! Owns: the policy types and their JSON (what `PUT /v1/policies/…` accepts and what the
//! mesh carries in a config value), and [`PolicyStore`], the current merged [`Policies`]
//! behind one cheap `Arc` swap. Must never: do I/O, or know where a policy came from (the
//! control plane merges and replaces the whole view; readers only read).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

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
    /// Site → region (sites whose nodes announce no region are absent).
    pub regions: HashMap<Arc<str>, Arc<str>>,
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

/// The current [`Policies`] and [`SiteFacts`]: written by the control plane and the mesh,
/// read on every request (each lock is held only to clone an `Arc`).
#[derive(Debug, Default)]
pub struct PolicyStore {
    policies: RwLock<Arc<Policies>>,
    facts: RwLock<Arc<SiteFacts>>,
}

impl PolicyStore {
    /// The policies in force.
    pub fn policies(&self) -> Arc<Policies> {
        Arc::clone(&self.policies.read())
    }

    /// Replace the policies in force.
    pub fn set_policies(&self, policies: Policies) {
        *self.policies.write() = Arc::new(policies);
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
