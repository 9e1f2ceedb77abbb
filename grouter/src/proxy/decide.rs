//! The routing decision, in one place and without I/O (CONTRACT.md, "HTTP behaviour").
//!
//! Order: served at this site → local GoRouters; served only elsewhere → the policy
//! (`proxy` over the mesh to the best site, or `redirect` to it); unknown → 404, or the
//! local GoRouters when sync is `lost` (fail open). A request that came from a peer over the
//! mesh is always routed locally, never onward. A Host in this site's redirect form
//! (`shop.nyc.apps.example.com` at `nyc`) is routed as the host it stands for.
//!
//! Route and site policies (CONTRACT.md, "Global configuration over the mesh") bend that
//! order through [`crate::policy::Steering`], keyed by the matched route's host: sites
//! outside the route's regions or drained take nothing new, remote sites are spread by
//! weight, the route's `mode` overrides `proxy.remote`, and a route no site may take is
//! 503 `no_endpoints` ([`Decision::NoEndpoints`]). A peer's request for a route whose
//! regions exclude this site is refused the same way, never served (a drain does not
//! refuse it: the peer chose this site before it learnt of the drain). Without any policy
//! the decision reads none.
//!
//! Before any of that, the edge rules (CONTRACT.md, "Edge rules"): a Host that is not a host
//! name ([`crate::names::parse_host`]), two Hosts, or a Host that contradicts the request's
//! authority is refused (400 `invalid_host`), so the table, a GoRouter and a `Location`
//! never read different hosts out of one request.
//!
//! Must never: build a redirect target from anything but configured data and the matched
//! route (a wildcard route's labels are the validated request's), plus the request's path,
//! query and validated port.

use std::sync::Arc;

use smallvec::SmallVec;

use crate::config::RemoteMode;
use crate::health::SyncState;
use crate::names::{HostError, parse_host};
use crate::policy::{Mode, Policies, SiteFacts, Steering, Verdict};
use crate::table::{RouteMatch, Table};

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward to this site's GoRouters; `also` are remote sites serving the route, tried
    /// after the local GoRouters fail to connect.
    Local {
        /// Remote sites that also serve the route, best first.
        also: SmallVec<[Arc<str>; 2]>,
    },
    /// Forward over the mesh to the first of these sites that answers.
    Remote {
        /// Sites serving the route, best first.
        sites: SmallVec<[Arc<str>; 2]>,
    },
    /// Answer 307 to this URL.
    Redirect {
        /// The chosen site.
        site: Arc<str>,
        /// `Location` value.
        location: String,
    },
    /// Unknown host while this node has lost the other sites: local GoRouters decide.
    FailOpen,
    /// Unknown route: 404 `unknown_route`.
    NotFound,
    /// A known route that no site may take now (its policy's regions have no healthy
    /// site, or every site serving it is drained): 503 `no_endpoints`.
    NoEndpoints,
    /// No Host: 400 `empty_host`.
    EmptyHost,
    /// An ACME HTTP-01 validation (`/.well-known/acme-challenge/{token}` on the plain
    /// listener): this node answers it with the key authorization of an order anywhere in
    /// the mesh, or 404 for a token no order issued. Never forwarded.
    AcmeChallenge(Option<Arc<str>>),
    /// A Host that is not a host name, or not the request's only one: 400 `invalid_host`.
    InvalidHost(BadHost),
}

/// Why a request's host was refused as `invalid_host` (the `/metrics` reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadHost {
    /// Not `name[:port]` with a host name ([`crate::names::parse_host`]).
    Invalid,
    /// Two or more Host headers (RFC 9112 §3.2: a server must answer 400).
    Duplicate,
    /// A Host header that names another host than the request's authority (HTTP/2's
    /// `:authority`, RFC 9113 §8.3.1, or an HTTP/1.1 absolute-form target, RFC 9112
    /// §3.2.2).
    Mismatch,
}

impl BadHost {
    /// The `reason` label of `grouter_http_refused_requests_total`.
    pub fn reason(self) -> &'static str {
        match self {
            BadHost::Invalid => "invalid_host",
            BadHost::Duplicate => "duplicate_host",
            BadHost::Mismatch => "host_mismatch",
        }
    }
}

/// Everything the decision depends on besides the table.
#[derive(Debug, Clone)]
pub struct Rules {
    /// This node's site.
    pub site: String,
    /// This node's region (for `{region}` in redirect hosts).
    pub region: String,
    /// Default policy for apps served only elsewhere.
    pub remote: RemoteMode,
    /// Redirect host template.
    pub redirect_host: String,
}

/// The policies one decision obeys, and what it needs besides to apply them.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// Every policy in force.
    pub policies: &'a Policies,
    /// The sites' regions and health.
    pub facts: &'a SiteFacts,
    /// Some GoRouter of this site is healthy.
    pub local_healthy: bool,
    /// Take a turn of a weighted route's spreading: false for a look whose outcome is
    /// decided again if it is not local (the HTTP/1.1 fast path), so one request takes
    /// one turn.
    pub spend_turn: bool,
}

/// What the decision needs to know of a request.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// `http` or `https`, as the client connected.
    pub scheme: &'a str,
    /// The Host (any case, maybe with a port).
    pub host: &'a str,
    /// The path, without query.
    pub path: &'a str,
    /// The query, kept in redirects.
    pub query: Option<&'a str>,
    /// A peer forwarded the request over the mesh.
    pub from_peer: bool,
    /// The request named its host twice, or in two ways that disagree.
    pub host_conflict: Option<BadHost>,
}

/// Decide for one request; `policy` is `None` when no policy is in force.
pub fn decide(
    table: &Table,
    rules: &Rules,
    sync: SyncState,
    policy: Option<Policy<'_>>,
    ask: Ask<'_>,
) -> (Decision, Option<RouteMatch>) {
    let Ask {
        scheme,
        host,
        path,
        query,
        from_peer,
        host_conflict,
    } = ask;
    if let Some(bad) = host_conflict {
        return (Decision::InvalidHost(bad), None);
    }
    let parsed = match parse_host(host) {
        Ok(h) => h,
        Err(HostError::Empty) => return (Decision::EmptyHost, None),
        Err(_) => return (Decision::InvalidHost(BadHost::Invalid), None),
    };
    let host: &str = &parsed.name;
    if from_peer {
        let m = table.lookup(host, path);
        // Defence in depth: a peer with a stale view must not make this site serve a
        // route pinned elsewhere.
        if let (Some(p), Some(found)) = (policy, &m)
            && !Steering::new(p.policies, p.facts, &found.host).in_regions(&rules.site)
        {
            return (Decision::NoEndpoints, m);
        }
        // The sending node chose this site; forwarding onward could loop.
        return (
            Decision::Local {
                also: SmallVec::new(),
            },
            m,
        );
    }
    let found = table.lookup(host, path).or_else(|| {
        let original = redirect_form_of(&rules.redirect_host, &rules.site, &rules.region, host)?;
        table.lookup(&original, path).filter(|m| m.local)
    });
    let Some(m) = found else {
        return match sync {
            SyncState::Lost => (Decision::FailOpen, None),
            _ => (Decision::NotFound, None),
        };
    };
    let (mode, sites) = match policy {
        None if m.local => {
            let also = m.remote_sites.clone();
            return (Decision::Local { also }, Some(m));
        }
        None => (rules.remote, m.remote_sites.clone()),
        Some(p) => {
            let steering = Steering::new(p.policies, p.facts, &m.host);
            let mode = match steering.mode() {
                None => rules.remote,
                Some(Mode::Proxy) => RemoteMode::Proxy,
                Some(Mode::Redirect) => RemoteMode::Redirect,
            };
            match steering.verdict(
                &rules.site,
                m.local,
                p.local_healthy,
                &m.remote_sites,
                p.spend_turn,
            ) {
                Verdict::Local { also } => return (Decision::Local { also }, Some(m)),
                Verdict::Elsewhere { sites } => (mode, sites),
                Verdict::NoEndpoints => return (Decision::NoEndpoints, Some(m)),
            }
        }
    };
    let decision = match mode {
        RemoteMode::Proxy => Decision::Remote { sites },
        RemoteMode::Redirect => match sites.first() {
            Some(site) => {
                // The route's own host; for a wildcard route, the (validated) host it matched.
                let routed = if m.host.starts_with("*.") {
                    host
                } else {
                    &m.host
                };
                let target =
                    render_redirect_host(&rules.redirect_host, routed, site, &rules.region);
                let mut location = format!("{scheme}://{target}");
                if let Some(port) = parsed.port.filter(|p| !is_default_port(scheme, *p)) {
                    location.push(':');
                    location.push_str(itoa::Buffer::new().format(port));
                }
                // An origin-form path; anything else (`OPTIONS *`) would run into the host.
                location.push_str(if path.starts_with('/') { path } else { "/" });
                if let Some(q) = query {
                    location.push('?');
                    location.push_str(q);
                }
                Decision::Redirect {
                    site: site.clone(),
                    location,
                }
            }
            None => Decision::NotFound,
        },
    };
    (decision, Some(m))
}

/// Whether `port` is the one `scheme` implies (RFC 9110 §4.2), so a URL need not name it.
fn is_default_port(scheme: &str, port: u16) -> bool {
    matches!((scheme, port), ("http", 80) | ("https", 443))
}

/// `{label}.{site}.{parent}` for `shop.apps.example.com` at `nyc` →
/// `shop.nyc.apps.example.com`. `host` is a host name as [`parse_host`] returns it
/// (lower-cased, without port).
pub fn render_redirect_host(template: &str, host: &str, site: &str, region: &str) -> String {
    let (label, parent) = host.split_once('.').unwrap_or((host, ""));
    template
        .replace("{label}", label)
        .replace("{site}", site)
        .replace("{region}", region)
        .replace("{parent}", parent)
}

/// If `host` is this site's redirect form of some host, that host: the inverse of
/// [`render_redirect_host`] for `site`. `None` when `host` does not have the form.
pub fn redirect_form_of(template: &str, site: &str, region: &str, host: &str) -> Option<String> {
    let host = crate::table::normalize_host(host)?;
    let fixed = template.replace("{site}", site).replace("{region}", region);
    // The template is literal text around `{label}` (one DNS label) and `{parent}` (the
    // rest); without `{parent}` the original host cannot be recovered.
    let (before, rest) = fixed.split_once("{label}")?;
    let (mid, after) = rest.split_once("{parent}")?;
    let host = host.strip_prefix(before)?.strip_suffix(after)?;
    let (label, parent) = host.split_once(mid)?;
    if label.is_empty() || label.contains('.') || parent.is_empty() {
        return None;
    }
    Some(format!("{label}.{parent}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::RouteEntry;
    use crate::table::testing::{first_import, key};

    fn entry(app: &str) -> RouteEntry {
        crate::table::testing::entry(app, 1)
    }

    /// `node` of `site` serves `uri` too (one more version of its partition).
    fn remote(t: &Table, node: &str, site: &str, uri: &str) {
        let held = t
            .digest()
            .into_iter()
            .find(|(o, _)| *o.node_id == *node)
            .map_or(0, |(_, v)| v);
        let mut import = first_import(node, site, &[(uri, "x", 1)]);
        import.from_version = held;
        import.up_to_version = held + 1;
        import.entries[0].version = held + 1;
        t.import_trusted(import);
    }

    fn rules(remote: RemoteMode) -> Rules {
        Rules {
            site: "lon".into(),
            region: "eu".into(),
            remote,
            redirect_host: "{label}.{site}.{parent}".into(),
        }
    }

    fn d(t: &Table, r: &Rules, sync: SyncState, host: &str) -> Decision {
        decide(
            t,
            r,
            sync,
            None,
            Ask {
                scheme: "https",
                host,
                path: "/cart",
                query: Some("id=7"),
                from_peer: false,
                host_conflict: None,
            },
        )
        .0
    }

    #[test]
    fn every_branch_in_the_contracts_order() {
        let t = Table::new("lon-1", "lon", 1);
        t.upsert_local(&key("local.example.com"), entry("l"));
        t.upsert_local(&key("both.example.com"), entry("b"));
        remote(&t, "nyc-1", "nyc", "both.example.com");
        remote(&t, "nyc-1", "nyc", "shop.apps.example.com");
        let proxy = rules(RemoteMode::Proxy);
        let redirect = rules(RemoteMode::Redirect);
        let sites = |s: &[&str]| {
            s.iter()
                .map(|x| Arc::<str>::from(*x))
                .collect::<SmallVec<[Arc<str>; 2]>>()
        };

        assert_eq!(
            d(&t, &proxy, SyncState::InSync, "local.example.com"),
            Decision::Local { also: sites(&[]) }
        );
        assert_eq!(
            d(&t, &proxy, SyncState::InSync, "both.example.com"),
            Decision::Local {
                also: sites(&["nyc"])
            }
        );
        assert_eq!(
            d(&t, &proxy, SyncState::InSync, "shop.apps.example.com"),
            Decision::Remote {
                sites: sites(&["nyc"])
            }
        );
        assert_eq!(
            d(
                &t,
                &redirect,
                SyncState::InSync,
                "Shop.Apps.Example.com:8443"
            ),
            Decision::Redirect {
                site: "nyc".into(),
                location: "https://shop.nyc.apps.example.com:8443/cart?id=7".into()
            }
        );
        assert_eq!(
            d(&t, &proxy, SyncState::InSync, "nothing.example.com"),
            Decision::NotFound
        );
        assert_eq!(
            d(&t, &proxy, SyncState::Degraded, "nothing.example.com"),
            Decision::NotFound
        );
        assert_eq!(
            d(&t, &proxy, SyncState::Lost, "nothing.example.com"),
            Decision::FailOpen
        );
        assert_eq!(d(&t, &proxy, SyncState::InSync, ""), Decision::EmptyHost);
        assert_eq!(
            d(&t, &proxy, SyncState::InSync, ":443"),
            Decision::EmptyHost
        );
        // From a peer: always local, never onward.
        let ask = Ask {
            scheme: "https",
            host: "shop.apps.example.com",
            path: "/",
            query: None,
            from_peer: true,
            host_conflict: None,
        };
        let (from_peer, _) = decide(&t, &proxy, SyncState::InSync, None, ask);
        assert_eq!(from_peer, Decision::Local { also: sites(&[]) });
    }

    #[test]
    fn hosts_that_are_not_host_names_are_refused_before_any_lookup() {
        let t = Table::new("lon-1", "lon", 1);
        t.upsert_local(&key("local.example.com"), entry("l"));
        remote(&t, "nyc-1", "nyc", "*.wild.example.test");
        let redirect = rules(RemoteMode::Redirect);
        let invalid = Decision::InvalidHost(BadHost::Invalid);
        for host in [
            "x.evil.com?.wild.example.test",
            "x.evil.com#.wild.example.test",
            "x@evil.com.wild.example.test",
            "x evil.com.wild.example.test",
            "x.evil.com%3f.wild.example.test",
            "*.wild.example.test",
            "local.example.com:99999",
        ] {
            assert_eq!(d(&t, &redirect, SyncState::InSync, host), invalid, "{host}");
            // Failing open does not let them through either.
            assert_eq!(d(&t, &redirect, SyncState::Lost, host), invalid, "{host}");
        }
        let ask = |host_conflict| Ask {
            scheme: "http",
            host: "local.example.com",
            path: "/",
            query: None,
            from_peer: false,
            host_conflict,
        };
        for bad in [BadHost::Duplicate, BadHost::Mismatch] {
            let (decision, m) = decide(&t, &redirect, SyncState::InSync, None, ask(Some(bad)));
            assert_eq!((decision, m), (Decision::InvalidHost(bad), None));
        }
    }

    #[test]
    fn redirects_are_built_from_the_route_and_keep_scheme_and_port() {
        let t = Table::new("lon-1", "lon", 1);
        remote(&t, "nyc-1", "nyc", "*.wild.example.test");
        remote(&t, "nyc-1", "nyc", "shop.apps.example.com");
        let r = rules(RemoteMode::Redirect);
        let redirect = |scheme, host, path| {
            let ask = Ask {
                scheme,
                host,
                path,
                query: None,
                from_peer: false,
                host_conflict: None,
            };
            match decide(&t, &r, SyncState::InSync, None, ask).0 {
                Decision::Redirect { location, .. } => location,
                other => panic!("{host}: {other:?}"),
            }
        };
        let cases = [
            (
                "http",
                "App.Wild.Example.Test",
                "/",
                "http://app.nyc.wild.example.test/",
            ),
            (
                "http",
                "a.b.wild.example.test:80",
                "/x",
                "http://a.nyc.b.wild.example.test/x",
            ),
            (
                "http",
                "shop.apps.example.com:8080",
                "/",
                "http://shop.nyc.apps.example.com:8080/",
            ),
            (
                "https",
                "shop.apps.example.com:443",
                "/",
                "https://shop.nyc.apps.example.com/",
            ),
            (
                "https",
                "shop.apps.example.com:80",
                "/",
                "https://shop.nyc.apps.example.com:80/",
            ),
            (
                "http",
                "shop.apps.example.com.",
                "//evil.com",
                "http://shop.nyc.apps.example.com//evil.com",
            ),
            (
                "http",
                "shop.apps.example.com",
                "*",
                "http://shop.nyc.apps.example.com/",
            ),
        ];
        for (scheme, host, path, want) in cases {
            assert_eq!(redirect(scheme, host, path), want, "{scheme} {host} {path}");
        }
    }

    #[test]
    fn this_sites_redirect_form_is_routed_as_the_original_host() {
        let t = Table::new("nyc-1", "nyc", 1);
        t.upsert_local(&key("shop.apps.example.com"), entry("s"));
        let r = Rules {
            site: "nyc".into(),
            ..rules(RemoteMode::Redirect)
        };
        let ask = Ask {
            scheme: "https",
            host: "shop.nyc.apps.example.com",
            path: "/",
            query: None,
            from_peer: false,
            host_conflict: None,
        };
        let (decision, m) = decide(&t, &r, SyncState::InSync, None, ask);
        assert_eq!(
            decision,
            Decision::Local {
                also: SmallVec::new()
            }
        );
        assert_eq!(&*m.unwrap().host, "shop.apps.example.com");
        // Another site's redirect form is not ours to serve.
        assert_eq!(
            d(&t, &r, SyncState::InSync, "shop.lon.apps.example.com"),
            Decision::NotFound
        );
    }

    #[test]
    fn redirect_templates_round_trip() {
        let cases = [
            (
                "{label}.{site}.{parent}",
                "shop.apps.example.com",
                "shop.nyc.apps.example.com",
            ),
            (
                "{label}-{site}.{parent}",
                "shop.apps.example.com",
                "shop-nyc.apps.example.com",
            ),
            (
                "{label}.{site}.{region}.example.net",
                "shop.apps.example.com",
                "shop.nyc.us.example.net",
            ),
        ];
        for (template, host, want) in cases {
            let rendered = render_redirect_host(template, host, "nyc", "us");
            assert_eq!(rendered, want, "{template}");
            let back = redirect_form_of(template, "nyc", "us", &rendered);
            // Without {parent} in the template the original parent cannot be recovered.
            if template.contains("{parent}") {
                assert_eq!(back.as_deref(), Some(host), "{template}");
            }
        }
        assert_eq!(
            redirect_form_of(
                "{label}.{site}.{parent}",
                "nyc",
                "",
                "shop.apps.example.com"
            ),
            None
        );
        assert_eq!(
            redirect_form_of("{label}.{site}.{parent}", "nyc", "", "nyc.example.com"),
            None
        );
    }

    mod policies {
        use super::*;
        use crate::policy::{Policies, RoutePolicy, RouteRule, SiteFacts, SitePolicy};

        /// nyc-1 (site nyc, region us) serves shop and other locally; lon-1 (eu), fra-1
        /// (eu) and sfo-1 (us) serve them too, ranked lon, sfo, fra.
        fn table() -> Table {
            let t = Table::new("nyc-1", "nyc", 1);
            for host in ["shop.example.com", "other.example.com"] {
                t.upsert_local(&key(host), entry("s"));
                for (node, site) in [("lon-1", "lon"), ("fra-1", "fra"), ("sfo-1", "sfo")] {
                    remote(&t, node, site, host);
                }
            }
            remote(&t, "lon-1", "lon", "remote.example.com");
            remote(&t, "fra-1", "fra", "remote.example.com");
            t.set_site_order(vec!["lon".into(), "sfo".into(), "fra".into()]);
            t
        }

        fn rules(remote: RemoteMode) -> Rules {
            Rules {
                site: "nyc".into(),
                region: "us".into(),
                remote,
                redirect_host: "{label}.{site}.{parent}".into(),
            }
        }

        fn facts(healthy: &[&str]) -> SiteFacts {
            SiteFacts {
                regions: [("lon", "eu"), ("fra", "eu"), ("nyc", "us"), ("sfo", "us")]
                    .into_iter()
                    .map(|(s, r)| (Arc::from(s), Arc::from(r)))
                    .collect(),
                healthy: healthy.iter().map(|s| Arc::from(*s)).collect(),
            }
        }

        fn policies(shop: &str, drained_sites: &[&str]) -> Policies {
            let p: RoutePolicy = serde_json::from_str(shop).unwrap();
            Policies::new(
                [("shop.example.com".to_string(), Arc::new(RouteRule::new(p)))],
                drained_sites
                    .iter()
                    .map(|s| (s.to_string(), SitePolicy { drained: true })),
            )
        }

        struct World {
            table: Table,
            policies: Policies,
            facts: SiteFacts,
        }

        impl World {
            fn new(shop: &str, drained_sites: &[&str], healthy: &[&str]) -> World {
                World {
                    table: table(),
                    policies: policies(shop, drained_sites),
                    facts: facts(healthy),
                }
            }

            fn ask(&self, r: &Rules, host: &str, from_peer: bool, spend: bool) -> Decision {
                let policy = Policy {
                    policies: &self.policies,
                    facts: &self.facts,
                    local_healthy: true,
                    spend_turn: spend,
                };
                let ask = Ask {
                    scheme: "https",
                    host,
                    path: "/",
                    query: None,
                    from_peer,
                    host_conflict: None,
                };
                decide(&self.table, r, SyncState::InSync, Some(policy), ask).0
            }

            fn d(&self, r: &Rules, host: &str) -> Decision {
                self.ask(r, host, false, true)
            }
        }

        const ALL: &[&str] = &["lon", "fra", "nyc", "sfo"];

        fn sites(list: &[&str]) -> SmallVec<[Arc<str>; 2]> {
            list.iter().map(|s| Arc::from(*s)).collect()
        }

        #[test]
        fn without_a_rule_or_drain_policies_change_nothing() {
            let w = World::new(r#"{"regions":["eu"]}"#, &[], &[]);
            let proxy = rules(RemoteMode::Proxy);
            // other.example.com has no rule: the policy-free decision, unhealthy sites too.
            let free = d(&w.table, &proxy, SyncState::InSync, "other.example.com");
            assert_eq!(free, w.d(&proxy, "other.example.com"));
            assert_eq!(
                free,
                Decision::Local {
                    also: sites(&["lon", "sfo", "fra"])
                }
            );
            assert_eq!(
                w.ask(&proxy, "other.example.com", true, true),
                Decision::Local { also: sites(&[]) }
            );
        }

        #[test]
        fn a_pinned_route_is_never_served_proxied_or_redirected_outside_its_regions() {
            let w = World::new(r#"{"regions":["eu"]}"#, &[], ALL);
            let proxy = rules(RemoteMode::Proxy);
            // nyc serves it, but is in us: the eu sites, failover included, in rank order.
            assert_eq!(
                w.d(&proxy, "shop.example.com"),
                Decision::Remote {
                    sites: sites(&["lon", "fra"])
                }
            );
            let redirect = rules(RemoteMode::Redirect);
            assert_eq!(
                w.d(&redirect, "shop.example.com"),
                Decision::Redirect {
                    site: "lon".into(),
                    location: "https://shop.lon.example.com/".into()
                }
            );
            // A peer that still sends it here is refused, not served.
            assert_eq!(
                w.ask(&proxy, "shop.example.com", true, true),
                Decision::NoEndpoints
            );
            // No eu site healthy: 503, never a us site.
            for healthy in [&["nyc", "sfo"][..], &[]] {
                let w = World::new(r#"{"regions":["eu"]}"#, &[], healthy);
                assert_eq!(w.d(&proxy, "shop.example.com"), Decision::NoEndpoints);
                assert_eq!(w.d(&redirect, "shop.example.com"), Decision::NoEndpoints);
            }
            // Pinned to us: here first, failing over to sfo only.
            let w = World::new(r#"{"regions":["us"]}"#, &[], ALL);
            assert_eq!(
                w.d(&proxy, "shop.example.com"),
                Decision::Local {
                    also: sites(&["sfo"])
                }
            );
        }

        #[test]
        fn drained_sites_send_new_requests_elsewhere_by_the_routes_mode() {
            let proxy = rules(RemoteMode::Proxy);
            // Drained here for the route, with mode redirect overriding proxy.remote.
            let w = World::new(r#"{"drained":["nyc","lon"],"mode":"redirect"}"#, &[], ALL);
            assert_eq!(
                w.d(&proxy, "shop.example.com"),
                Decision::Redirect {
                    site: "sfo".into(),
                    location: "https://shop.sfo.example.com/".into()
                }
            );
            // A peer's request that was already on its way is still served here.
            assert_eq!(
                w.ask(&proxy, "shop.example.com", true, true),
                Decision::Local { also: sites(&[]) }
            );
            // The site drained for everything: every route moves, with no rule of its own.
            let w = World::new("{}", &["nyc", "sfo"], ALL);
            assert_eq!(
                w.d(&proxy, "other.example.com"),
                Decision::Remote {
                    sites: sites(&["lon", "fra"])
                }
            );
            // Mode proxy overrides proxy.remote = redirect.
            let w = World::new(r#"{"drained":["nyc"],"mode":"proxy"}"#, &[], ALL);
            assert_eq!(
                w.d(&rules(RemoteMode::Redirect), "shop.example.com"),
                Decision::Remote {
                    sites: sites(&["lon", "sfo", "fra"])
                }
            );
            // Every serving site drained: 503.
            let w = World::new(r#"{"drained":["lon","fra"]}"#, &["nyc", "sfo"], ALL);
            assert_eq!(w.d(&proxy, "shop.example.com"), Decision::NoEndpoints);
            assert_eq!(
                w.d(&rules(RemoteMode::Redirect), "shop.example.com"),
                Decision::NoEndpoints
            );
            // remote.example.com (served only at lon and fra) with both drained by site.
            let w = World::new("{}", &["lon", "fra"], ALL);
            assert_eq!(w.d(&proxy, "remote.example.com"), Decision::NoEndpoints);
        }

        #[test]
        fn weights_split_remote_requests_exactly_and_a_look_takes_no_turn() {
            let w = World::new(
                r#"{"weights":{"lon":1,"fra":3},"drained":["nyc"]}"#,
                &[],
                ALL,
            );
            let proxy = rules(RemoteMode::Proxy);
            let mut lon = 0;
            for _ in 0..1000 {
                // The HTTP/1.1 fast path's look, then the general path's decision.
                let look = w.ask(&proxy, "shop.example.com", false, false);
                assert!(matches!(look, Decision::Remote { .. }), "{look:?}");
                match w.d(&proxy, "shop.example.com") {
                    Decision::Remote { sites: s } => {
                        // sfo is unlisted: never chosen, not even to fail over to.
                        assert_eq!(s.len(), 2, "{s:?}");
                        lon += usize::from(&*s[0] == "lon");
                    }
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(lon, 250);
            // Undrained, nyc serves it itself: local still wins.
            let w = World::new(r#"{"weights":{"lon":1,"fra":3}}"#, &[], ALL);
            assert!(matches!(
                w.d(&proxy, "shop.example.com"),
                Decision::Local { also } if also.len() == 2
            ));
        }

        #[test]
        fn an_unhealthy_site_with_nowhere_else_to_go_is_503() {
            let w = World::new(r#"{"regions":["us"]}"#, &[], &["nyc"]);
            let policy = Policy {
                policies: &w.policies,
                facts: &w.facts,
                local_healthy: false,
                spend_turn: true,
            };
            let ask = Ask {
                scheme: "http",
                host: "shop.example.com",
                path: "/",
                query: None,
                from_peer: false,
                host_conflict: None,
            };
            let proxy = rules(RemoteMode::Proxy);
            let (decision, m) = decide(&w.table, &proxy, SyncState::InSync, Some(policy), ask);
            assert_eq!(decision, Decision::NoEndpoints);
            // The route is still named (for the access log).
            assert_eq!(m.map(|m| m.host), Some("shop.example.com".into()));
        }
    }
}
