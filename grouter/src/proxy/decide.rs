//! The routing decision, in one place and without I/O (CONTRACT.md, "HTTP behaviour").
//!
//! Order: served at this site → local GoRouters; served only elsewhere → the policy
//! (`proxy` over the mesh to the best site, or `redirect` to it); unknown → 404, or the
//! local GoRouters when sync is `lost` (fail open). A request that came from a peer over the
//! mesh is always routed locally, never onward. A Host in this site's redirect form
//! (`shop.nyc.apps.example.com` at `nyc`) is routed as the host it stands for.
//!
//! Must never: build a redirect target from anything but configured data and the matched
//! route.

use std::sync::Arc;

use smallvec::SmallVec;

use crate::config::RemoteMode;
use crate::health::SyncState;
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
    /// No Host: 400 `empty_host`.
    EmptyHost,
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
}

/// Decide for one request.
pub fn decide(
    table: &Table,
    rules: &Rules,
    sync: SyncState,
    ask: Ask<'_>,
) -> (Decision, Option<RouteMatch>) {
    let Ask {
        scheme,
        host,
        path,
        query,
        from_peer,
    } = ask;
    if host.trim().is_empty() || crate::table::normalize_host(host).is_none() {
        return (Decision::EmptyHost, None);
    }
    if from_peer {
        // The sending node chose this site; forwarding onward could loop.
        return (
            Decision::Local {
                also: SmallVec::new(),
            },
            table.lookup(host, path),
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
    if m.local {
        let also = m.remote_sites.clone();
        return (Decision::Local { also }, Some(m));
    }
    let decision = match rules.remote {
        RemoteMode::Proxy => Decision::Remote {
            sites: m.remote_sites.clone(),
        },
        RemoteMode::Redirect => match m.remote_sites.first() {
            Some(site) => {
                let target = render_redirect_host(&rules.redirect_host, host, site, &rules.region);
                let mut location = format!("{scheme}://{target}{path}");
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

/// `{label}.{site}.{parent}` for `shop.apps.example.com` at `nyc` →
/// `shop.nyc.apps.example.com`. The host is the request's, lower-cased and without port.
pub fn render_redirect_host(template: &str, host: &str, site: &str, region: &str) -> String {
    let host = crate::table::normalize_host(host)
        .map(|h| h.into_owned())
        .unwrap_or_default();
    let (label, parent) = host.split_once('.').unwrap_or((host.as_str(), ""));
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
            Ask {
                scheme: "https",
                host,
                path: "/cart",
                query: Some("id=7"),
                from_peer: false,
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
                location: "https://shop.nyc.apps.example.com/cart?id=7".into()
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
        };
        let (from_peer, _) = decide(&t, &proxy, SyncState::InSync, ask);
        assert_eq!(from_peer, Decision::Local { also: sites(&[]) });
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
        };
        let (decision, m) = decide(&t, &r, SyncState::InSync, ask);
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
}
