//! The names inside the zones that have a routed name strictly below them, so that an empty
//! non-terminal (`b.apps.example.com` above the route `a.b.apps.example.com`,
//! `wild.apps.example.com` above `*.wild.apps.example.com`) answers NODATA, never NXDOMAIN
//! (RFC 8020: an NXDOMAIN denies everything below the name too).
//!
//! Owns: the set, swapped whole when rebuilt from the table's routes (the front rebuilds it
//! when the table changes, at a bounded rate), and the rule that builds it.
//!
//! Must never: hold a lock while building, or list a name outside the zones or the apex
//! itself (which exists anyway).

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::RwLock;

use super::answer::is_at_or_below;
use crate::table::{Table, normalize_host};

type NameSet = HashSet<Box<str>, foldhash::fast::RandomState>;

/// The names below which a route exists (shared by the answering tasks).
#[derive(Debug, Default)]
pub struct Ancestors {
    names: RwLock<Arc<NameSet>>,
}

impl Ancestors {
    /// Whether a route exists strictly below `name` (lower-case, no trailing dot).
    pub fn contains(&self, name: &str) -> bool {
        self.names.read().contains(name)
    }

    /// How many names the set holds.
    pub fn len(&self) -> usize {
        self.names.read().len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replace the set with the ancestors of `table`'s routes inside `zones`.
    pub fn rebuild(&self, table: &Table, zones: &[String]) {
        let routes = table.routes(None);
        let hosts = routes
            .iter()
            .filter(|r| r.servers.iter().any(|(_, e)| e.endpoints > 0))
            .map(|r| &*r.host);
        let set = build(hosts, zones);
        *self.names.write() = Arc::new(set);
    }
}

/// Every name strictly between a zone apex and a host of `hosts` (hosts outside the zones
/// contribute nothing). A host is compared as the table looks it up: lower-case, without
/// port or trailing dot.
pub fn build<'a>(hosts: impl Iterator<Item = &'a str>, zones: &[String]) -> NameSet {
    let mut set = NameSet::default();
    for host in hosts {
        let Some(host) = normalize_host(host) else {
            continue;
        };
        let Some(zone) = zones
            .iter()
            .filter(|z| is_at_or_below(&host, z))
            .max_by_key(|z| z.len())
        else {
            continue;
        };
        let mut rest: &str = &host;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if rest.len() <= zone.len() || !set.insert(rest.into()) {
                // At the apex, or already listed (and so are the names above it).
                break;
            }
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_the_names_between_the_apex_and_each_route() {
        let zones = vec!["apps.example.com".to_string(), "example.org".to_string()];
        let set = build(
            [
                "a.b.apps.example.com",
                "*.wild.apps.example.com",
                "X.Deep.C.apps.example.com:8080",
                "top.apps.example.com",
                "outside.example.net",
                "y.deep.c.apps.example.com",
            ]
            .into_iter(),
            &zones,
        );
        let mut names: Vec<&str> = set.iter().map(|s| &**s).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "b.apps.example.com",
                "c.apps.example.com",
                "deep.c.apps.example.com",
                "wild.apps.example.com",
            ]
        );
    }
}
