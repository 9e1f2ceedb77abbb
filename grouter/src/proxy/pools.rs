//! Isolation segments: which of this site's GoRouters serve which routes
//! (`[gorouters] segments = { "seg-a" = ["127.0.0.1:8091"] }`, CONTRACT.md "gorouter
//! parity").
//!
//! Owns: the pools' membership (every GoRouter belongs to the shared pool or to one
//! segment's, in one flat list so a target stays an index into `upstream::GoRouters::all`), the
//! segment a matched route is served by (its local entry's `isolation_segment`, which the
//! owner seals with the entry), and the choice of pool for a route.
//!
//! A route registered with `isolation_segment = S` goes only to S's GoRouters; the shared
//! GoRouters get only unsegmented routes (as a gorouter sharded `shared-and-segments`
//! would hold them). When this site has no pool for S, the route has no local GoRouter: it
//! is never sent to the shared ones (they would answer 404, or serve the wrong
//! segment's tenants); the other sites serving it are tried, and without any the request
//! is answered 502 `endpoint_failure` and counted in
//! `grouter_gorouters_segment_unavailable_total`.
//!
//! Must never: hand a segmented route to the shared GoRouters, or an unsegmented one to a
//! segment's; import the layers above it (a leaf of the proxy: `upstream` reads it).

use prometheus_client::metrics::counter::Counter;

use crate::config::GoroutersConfig;
use crate::table::RouteMatch;

/// Every configured GoRouter with its pool: the shared ones first, then each segment's
/// (by segment name).
pub(super) fn members(cfg: &GoroutersConfig) -> Vec<(String, Option<Box<str>>)> {
    let shared = cfg.addresses.iter().map(|a| (a.clone(), None));
    let segmented = cfg.segments.iter().flat_map(|(segment, addresses)| {
        addresses
            .iter()
            .map(move |a| (a.clone(), Some(segment.as_str().into())))
    });
    shared.chain(segmented).collect()
}

/// The isolation segment whose GoRouters serve `route` here (`None`: the shared ones, also
/// for a request that matched no route and fails open).
pub(super) fn segment_of(route: Option<&RouteMatch>) -> Option<&str> {
    route.and_then(|m| m.app.segment())
}

/// The GoRouters (by index) to try for `route`, in order, from `order_in` (the GoRouters
/// of a pool in the order to try them). Empty when the route's segment has no pool at this
/// site, which is then counted on `unavailable`.
pub(super) fn local_targets(
    order_in: impl FnOnce(Option<&str>) -> Vec<usize>,
    route: Option<&RouteMatch>,
    unavailable: &Counter,
) -> Vec<usize> {
    let segment = segment_of(route);
    let order = order_in(segment);
    if order.is_empty() && segment.is_some() {
        unavailable.inc();
        tracing::debug!(
            segment = segment.unwrap_or(""),
            "no gorouters of the route's isolation segment at this site"
        );
    }
    order
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::upstream::GoRouters;
    use super::*;
    use crate::table::{App, AppFields};

    fn config() -> GoroutersConfig {
        GoroutersConfig {
            addresses: vec!["127.0.0.1:8081".into(), "127.0.0.1:8082".into()],
            health_url_path: "/health".into(),
            health_port: None,
            segments: [
                ("seg-a".to_string(), vec!["127.0.0.1:8091".to_string()]),
                ("seg-b".to_string(), vec!["127.0.0.1:8092".to_string()]),
            ]
            .into_iter()
            .collect(),
            response_timeout_secs: 900,
        }
    }

    fn route(segment: Option<&str>) -> RouteMatch {
        RouteMatch {
            host: "shop.example.com".into(),
            path: "".into(),
            app: Arc::new(
                App::new(AppFields {
                    id: "g",
                    segment,
                    ..AppFields::default()
                })
                .unwrap(),
            ),
            local: true,
            remote_sites: Default::default(),
        }
    }

    fn addrs(g: &GoRouters, order: &[usize]) -> Vec<String> {
        let mut v: Vec<String> = order.iter().map(|&i| g.all()[i].addr.clone()).collect();
        v.sort();
        v
    }

    /// gorouter's sharding, `registry/registry_test.go`, Context "when routing table
    /// sharding mode is `segments`" It("registers routes in the specified isolation
    /// segments, but not other isolation segments") (a segment's router: only its own
    /// segment's routes; another segment's are not held), and Context "... is
    /// `shared-and-segments`", "with an endpoint in a shared isolation segment"
    /// It("resgisters the route") (unsegmented routes: the shared routers).
    #[test]
    fn each_route_goes_to_its_own_pool_only() {
        let g = GoRouters::new(&config());
        let unavailable = Counter::default();
        assert_eq!(
            addrs(
                &g,
                &local_targets(|s| g.order_in(s), Some(&route(None)), &unavailable)
            ),
            ["127.0.0.1:8081", "127.0.0.1:8082"]
        );
        assert_eq!(
            addrs(&g, &local_targets(|s| g.order_in(s), None, &unavailable)),
            ["127.0.0.1:8081", "127.0.0.1:8082"],
            "failing open goes to the shared GoRouters"
        );
        assert_eq!(
            addrs(
                &g,
                &local_targets(|s| g.order_in(s), Some(&route(Some("seg-a"))), &unavailable)
            ),
            ["127.0.0.1:8091"]
        );
        assert_eq!(unavailable.get(), 0);
        // A segment this site has no GoRouters for: nothing local, never the shared ones.
        assert!(
            local_targets(|s| g.order_in(s), Some(&route(Some("seg-x"))), &unavailable).is_empty()
        );
        assert_eq!(unavailable.get(), 1);
        // The fast path's pick keeps to the pool too, even when the connection prefers
        // another pool's GoRouter.
        let shared = g.pick_in(None, None).unwrap();
        let seg_b = g.pick_in(Some("seg-b"), Some(shared)).unwrap();
        assert_eq!(g.all()[seg_b].addr, "127.0.0.1:8092");
        assert_eq!(g.pick_in(Some("seg-x"), Some(shared)), None);
        assert!(g.all()[g.pick(Some(seg_b)).unwrap()].segment.is_none());
    }
}
