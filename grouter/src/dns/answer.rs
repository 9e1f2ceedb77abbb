//! The answering decision for one question, as a pure function of the table, the settings,
//! the names that have names below them, the node's state and the client.
//!
//! Owns: zone membership (REFUSED outside, and for zone transfers), the apex SOA and NS, the
//! name servers' own addresses, which sites serve a host (wildcards honoured), which of them
//! are healthy, their order by proximity, how many an answer names, fail-open when sync is
//! lost, NODATA for empty non-terminals and NXDOMAIN for names with nothing at or below them,
//! and the ECS scope (RFC 7871 §7.2.1) an answer is valid for.
//!
//! Route and site policies ([`crate::policy::Steering`], keyed by the host of the route the
//! name matched, wildcards included) narrow the serving sites before any of that: a site
//! outside the route's regions or drained (by the route or a site policy) is never named,
//! nor a remote site that its weights give 0 or do not list; the remote sites are spread by
//! the weights (this node's site, when it serves the name and is admitted, still comes
//! first, and a client network's site first of all). When the admitted sites are all
//! unhealthy they are all named, as without policies; when no site is admitted the answer
//! is NODATA (NOERROR, no address, the SOA: [`Reason::NoneAllowed`]), as for a known name
//! whose sites have no address of the asked family.
//!
//! Must never: do I/O, write the table, answer an existing name with an empty answer while
//! any site its policies admit serves it (when every such site is unhealthy it names all of
//! them), name a site its policies do not admit, or say NXDOMAIN for a name that has a name
//! below it (RFC 8020).

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::RecordType;
use ipnet::IpNet;

use crate::config::DnsConfig;
use crate::health::SyncState;
use crate::policy::{Policies, SiteFacts, Steering};
use crate::table::Table;

/// One name server of the zones: its name and, when it lies inside a zone, its addresses
/// (answered for the name, and as glue beside NS answers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nameserver {
    /// Lower-case, no trailing dot.
    pub name: String,
    /// Its addresses (empty for a name outside every zone: not ours to answer).
    pub addresses: Vec<IpAddr>,
}

/// What [`answer`] needs from `[dns]` and the node.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// Zones, lower-case, no trailing dot.
    pub zones: Vec<String>,
    /// TTL of every record.
    pub ttl: u32,
    /// This node's site.
    pub site: Arc<str>,
    /// This site's entry addresses.
    pub own_addresses: Vec<IpAddr>,
    /// Client network → site, most specific first.
    pub client_networks: Vec<(IpNet, String)>,
    /// How many healthy sites one answer names.
    pub answer_sites: usize,
    /// `dns.nameservers`, sorted by name. Empty: every zone's name server is `ns.<zone>`,
    /// with this site's entry addresses.
    pub nameservers: Vec<Nameserver>,
}

impl DnsSettings {
    /// Settings from a validated `[dns]` section for a node of `site`.
    pub fn from_config(c: &DnsConfig, site: &str) -> DnsSettings {
        DnsSettings {
            zones: c.zones.clone(),
            ttl: c.ttl_secs,
            site: site.into(),
            own_addresses: c.site_addresses.clone(),
            client_networks: c.client_networks.clone(),
            answer_sites: c.answer_sites.max(1),
            nameservers: c
                .nameservers
                .iter()
                .map(|(name, addresses)| Nameserver {
                    name: name.clone(),
                    addresses: addresses.clone(),
                })
                .collect(),
        }
    }

    /// The zone `name` (lower-case, no trailing dot) belongs to: the longest that matches.
    pub fn zone_of(&self, name: &str) -> Option<&str> {
        self.zones
            .iter()
            .filter(|z| is_at_or_below(name, z))
            .max_by_key(|z| z.len())
            .map(String::as_str)
    }

    /// The name servers of `zone`, in order (the first is the SOA's primary).
    pub fn nameservers_of(&self, zone: &str) -> Vec<Nameserver> {
        if self.nameservers.is_empty() {
            vec![Nameserver {
                name: format!("ns.{zone}"),
                addresses: self.own_addresses.clone(),
            }]
        } else {
            self.nameservers.clone()
        }
    }

    /// The addresses of `name` when it is one of our name servers inside a zone.
    fn nameserver_addresses(&self, name: &str) -> Option<&[IpAddr]> {
        if self.nameservers.is_empty() {
            let zone = name.strip_prefix("ns.")?;
            return self
                .zones
                .iter()
                .any(|z| z == zone)
                .then_some(self.own_addresses.as_slice());
        }
        self.nameservers
            .iter()
            .find(|ns| ns.name == name && !ns.addresses.is_empty())
            .map(|ns| ns.addresses.as_slice())
    }

    /// Whether a name server's name lies strictly below `name` (making it a non-terminal).
    fn nameserver_below(&self, name: &str) -> bool {
        if self.nameservers.is_empty() {
            // `ns.<zone>` is below only the zone itself, which exists anyway.
            return false;
        }
        self.nameservers
            .iter()
            .any(|ns| ns.name.len() > name.len() && is_at_or_below(&ns.name, name))
    }
}

/// `name` equals `zone` or ends with `.zone` (both lower-case, no trailing dot).
pub(crate) fn is_at_or_below(name: &str, zone: &str) -> bool {
    name == zone
        || (name.len() > zone.len()
            && name.ends_with(zone)
            && name.as_bytes().get(name.len() - zone.len() - 1) == Some(&b'.'))
}

/// The question's type, as far as the answer logic cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryType {
    /// IPv4 addresses.
    A,
    /// IPv6 addresses.
    Aaaa,
    /// The zone's SOA.
    Soa,
    /// The zone's name servers.
    Ns,
    /// AXFR or IXFR: refused (nothing transfers these zones).
    Transfer,
    /// Anything else, ANY included: an empty NOERROR (or NXDOMAIN) with the SOA.
    Other,
}

impl From<RecordType> for QueryType {
    fn from(t: RecordType) -> Self {
        match t {
            RecordType::A => QueryType::A,
            RecordType::AAAA => QueryType::Aaaa,
            RecordType::SOA => QueryType::Soa,
            RecordType::NS => QueryType::Ns,
            RecordType::AXFR | RecordType::IXFR => QueryType::Transfer,
            _ => QueryType::Other,
        }
    }
}

/// The answer's response code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    /// The name exists (the answer may still be empty for this type).
    NoError,
    /// Nothing is at or below the name.
    NxDomain,
    /// The name is outside every configured zone, or a zone transfer was asked for.
    Refused,
}

/// Why an answer for an app host names the sites it does (`grouter_dns_steering_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The client's network (ECS or resolver address) maps to a healthy serving site,
    /// which comes first.
    ClientNetwork,
    /// No mapped site applied: this node's site first, then by RTT.
    Proximity,
    /// Every serving site is unhealthy: all of them.
    AllUnhealthy,
    /// This node lost sync with the mesh: its own site's addresses.
    FailOpen,
    /// The name's policies admit none of the sites serving it: no address (NODATA).
    NoneAllowed,
}

impl Reason {
    /// Every reason, for metrics.
    pub const ALL: [Reason; 5] = [
        Reason::ClientNetwork,
        Reason::Proximity,
        Reason::AllUnhealthy,
        Reason::FailOpen,
        Reason::NoneAllowed,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ClientNetwork => "client_network",
            Reason::Proximity => "proximity",
            Reason::AllUnhealthy => "all_unhealthy",
            Reason::FailOpen => "fail_open",
            Reason::NoneAllowed => "none_allowed",
        }
    }
}

/// Records at the zone apex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApexRecord {
    /// The SOA in the answer section.
    Soa,
    /// The NS in the answer section (glue in the additional section).
    Ns,
}

/// The decision for one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Response code.
    pub rcode: Rcode,
    /// The zone the name belongs to (`None` when refused).
    pub zone: Option<String>,
    /// A or AAAA records, in order.
    pub answers: Vec<IpAddr>,
    /// An apex record in the answer section.
    pub apex: Option<ApexRecord>,
    /// The zone's SOA goes in the authority section (NXDOMAIN and NODATA).
    pub authority_soa: bool,
    /// Why these sites (only for answers about an app host).
    pub reason: Option<Reason>,
    /// The ECS SCOPE PREFIX-LENGTH: how many leading bits of the client subnet this answer
    /// depends on (0: the same answer for every client of the family).
    pub scope: u8,
}

impl Answer {
    pub(crate) fn refused() -> Answer {
        Answer {
            rcode: Rcode::Refused,
            zone: None,
            answers: Vec::new(),
            apex: None,
            authority_soa: false,
            reason: None,
            scope: 0,
        }
    }

    fn in_zone(zone: &str, rcode: Rcode) -> Answer {
        Answer {
            zone: Some(zone.to_string()),
            rcode,
            ..Answer::refused()
        }
    }
}

/// What the node knows about itself when answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeStatus {
    /// The mesh sync state.
    pub sync: SyncState,
    /// This node's GoRouters pass health checks (and it is not draining).
    pub healthy: bool,
}

/// The policies an answer obeys (`None` to [`answer`] when no policy is in force).
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// Every policy in force.
    pub policies: &'a Policies,
    /// The sites' regions and health.
    pub facts: &'a SiteFacts,
}

/// Who asks: the resolver's address and the EDNS Client Subnet it sent, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The resolver's address (the packet's source).
    pub addr: IpAddr,
    /// The ECS network (host bits clear). A SOURCE PREFIX-LENGTH of 0 asks that the
    /// client's address not be used: the resolver's address steers then.
    pub subnet: Option<IpNet>,
}

/// One candidate site of an answer.
#[derive(Debug)]
struct Candidate {
    site: Arc<str>,
    /// This node's own site.
    local: bool,
    healthy: bool,
    addresses: Vec<IpAddr>,
}

/// Answer one question, obeying `policy` (`None`: no policy in force). `name` may have any
/// case and a trailing dot.
pub fn answer(
    table: &Table,
    settings: &DnsSettings,
    status: NodeStatus,
    policy: Option<Policy<'_>>,
    client: Client,
    name: &str,
    qtype: QueryType,
) -> Answer {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let Some(zone) = settings.zone_of(&name) else {
        return Answer::refused();
    };
    if qtype == QueryType::Transfer {
        return Answer::refused();
    }
    let at_apex = name == zone;
    let family_matches = |ip: &IpAddr| match qtype {
        QueryType::A => ip.is_ipv4(),
        QueryType::Aaaa => ip.is_ipv6(),
        _ => false,
    };
    let mut out = Answer::in_zone(zone, Rcode::NoError);
    if at_apex && matches!(qtype, QueryType::Soa | QueryType::Ns) {
        out.apex = Some(if qtype == QueryType::Soa {
            ApexRecord::Soa
        } else {
            ApexRecord::Ns
        });
        return out;
    }
    // The name servers' own names: fixed addresses, whatever the table or sync say.
    if let Some(addresses) = settings.nameserver_addresses(&name) {
        out.answers = addresses.iter().copied().filter(family_matches).collect();
        out.authority_soa = out.answers.is_empty();
        return out;
    }
    // Fail open: data from other sites is stale, so every name in the zone gets this site.
    if status.sync == SyncState::Lost && !at_apex {
        out.answers = settings
            .own_addresses
            .iter()
            .copied()
            .filter(family_matches)
            .collect();
        out.authority_soa = out.answers.is_empty();
        out.reason = Some(Reason::FailOpen);
        return out;
    }
    let Some(sites) = table.sites_for_host(&name) else {
        // The apex exists (it has SOA and NS) even when no app is served there, and so does
        // every name with a name below it (an empty non-terminal): NODATA, not NXDOMAIN.
        if !at_apex && !has_names_below(table, settings, &name) {
            out.rcode = Rcode::NxDomain;
        }
        out.authority_soa = true;
        return out;
    };
    if !matches!(qtype, QueryType::A | QueryType::Aaaa) {
        out.authority_soa = true;
        return out;
    }
    let mut candidates = candidates(table, settings, status, &sites, &family_matches);
    let steering = policy.map(|p| {
        let host = route_host(table, p.policies, &name);
        Steering::new(p.policies, p.facts, host.as_deref().unwrap_or(&name))
    });
    // Only when a policy bears on these sites; otherwise the policy-free answer exactly.
    let steering = steering.filter(|s| s.restricts(sites.iter().map(|(site, _, _)| &**site)));
    if let Some(s) = &steering
        && !candidates.is_empty()
    {
        candidates.retain(|c| s.admits(&c.site) && (c.local || s.weighs(&c.site)));
        if candidates.is_empty() {
            out.reason = Some(Reason::NoneAllowed);
            out.authority_soa = true;
            return out;
        }
    }
    let healthy: Vec<&Candidate> = candidates.iter().filter(|c| c.healthy).collect();
    let chosen: Vec<&Candidate> = if healthy.is_empty() {
        out.reason = Some(Reason::AllUnhealthy);
        candidates.iter().collect()
    } else {
        // ECS wins over the resolver's address, unless it carries no address bits.
        let ecs = client.subnet.filter(|net| net.prefix_len() > 0);
        let addr = ecs.map_or(client.addr, |net| net.network());
        let matched = settings
            .client_networks
            .iter()
            .find(|(net, _)| net.contains(&addr));
        // With one healthy site every client gets the same answer; with more, the answer
        // holds for the block of addresses that map like this one.
        if ecs.is_some() && healthy.len() > 1 {
            out.scope = scope_for(&settings.client_networks, addr, matched.map(|m| m.0));
        }
        let mut ordered = healthy;
        if let Some(s) = &steering {
            // The remote sites by weight (this site, first when it serves, stays first).
            let remote = ordered
                .iter()
                .position(|c| !c.local)
                .unwrap_or(ordered.len());
            if ordered.len() - remote > 1 {
                s.weighted_first(&mut ordered[remote..], |c| &c.site, s.turn(true));
            }
        }
        match matched.and_then(|(_, p)| ordered.iter().position(|c| &*c.site == p)) {
            Some(i) => {
                let first = ordered.remove(i);
                ordered.insert(0, first);
                out.reason = Some(Reason::ClientNetwork);
            }
            None => out.reason = Some(Reason::Proximity),
        }
        ordered.truncate(settings.answer_sites);
        ordered
    };
    for c in chosen {
        for ip in &c.addresses {
            if !out.answers.contains(ip) {
                out.answers.push(*ip);
            }
        }
    }
    out.authority_soa = out.answers.is_empty();
    out
}

/// The host of the route `name` matched (as [`Table::sites_for_host`] matches: `name` itself
/// when a server of it has endpoints, else the nearest wildcard above it that has), the key
/// of its route policy. `None` when no host `name` could match has a route policy, which
/// spares the table the question.
fn route_host(table: &Table, policies: &Policies, name: &str) -> Option<String> {
    let wildcards = || {
        let mut rest = name;
        std::iter::from_fn(move || {
            let dot = rest.find('.')?;
            rest = &rest[dot + 1..];
            (!rest.is_empty()).then(|| format!("*.{rest}"))
        })
    };
    if policies.route(name).is_none() && !wildcards().any(|w| policies.route(&w).is_some()) {
        return None;
    }
    let served = |host: &str| {
        table
            .routes(Some(host))
            .iter()
            .any(|r| r.servers.iter().any(|(_, e)| e.endpoints > 0))
    };
    if served(name) {
        return Some(name.to_string());
    }
    wildcards().find(|w| served(w))
}

/// Whether some name exists strictly below `name`: a route (wildcards included: the table
/// counts `*.name` below `name`) or a name server.
fn has_names_below(table: &Table, settings: &DnsSettings, name: &str) -> bool {
    table.has_routes_below(name) || settings.nameserver_below(name)
}

/// The ECS scope of an answer steered for `addr`, whose most specific client network is
/// `matched`: the shortest prefix of `addr` whose whole block maps to the same network.
/// That is the matched prefix length, made longer when a more specific network (which
/// would map differently) lies inside the block; for an unmatched address, long enough to
/// exclude every network.
pub fn scope_for(networks: &[(IpNet, String)], addr: IpAddr, matched: Option<IpNet>) -> u8 {
    let width: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let base = matched.map_or(0, |n| n.prefix_len());
    let mut scope = base;
    for (net, _) in networks {
        if net.prefix_len() <= base {
            continue;
        }
        let Some(common) = common_prefix(addr, net.network()) else {
            continue;
        };
        // `addr` is outside `net` (a more specific network holding it would have matched),
        // so they share fewer than `net.prefix_len()` bits: one more bit keeps `net` out.
        if common < net.prefix_len() {
            scope = scope.max(common + 1);
        }
    }
    scope.min(width)
}

/// How many leading bits two addresses of one family share (`None` across families).
fn common_prefix(a: IpAddr, b: IpAddr) -> Option<u8> {
    let bits = match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) ^ u32::from(b)).leading_zeros(),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a) ^ u128::from(b)).leading_zeros(),
        _ => return None,
    };
    u8::try_from(bits).ok()
}

/// The serving sites (in the table's order: this site, then by health and RTT) that have
/// addresses of the asked family, each with its health.
fn candidates(
    table: &Table,
    settings: &DnsSettings,
    status: NodeStatus,
    sites: &[(Arc<str>, bool, bool)],
    family_matches: &dyn Fn(&IpAddr) -> bool,
) -> Vec<Candidate> {
    let partitions = table.partitions();
    let me = table.me();
    sites
        .iter()
        .filter_map(|(site, local, live)| {
            let addresses: Vec<IpAddr> = if *local {
                settings.own_addresses.clone()
            } else {
                let mut addrs = Vec::new();
                // Addresses from the site's nodes, live ones first.
                let mut nodes: Vec<_> = partitions
                    .iter()
                    .filter(|p| p.origin.site == *site)
                    .collect();
                nodes.sort_by_key(|p| !p.origin.is_alive());
                for p in nodes {
                    for a in p.record.iter().flat_map(|r| r.site_addresses.iter()) {
                        if let Ok(ip) = a.parse::<IpAddr>()
                            && !addrs.contains(&ip)
                        {
                            addrs.push(ip);
                        }
                    }
                }
                addrs
            };
            let addresses: Vec<IpAddr> = addresses.into_iter().filter(family_matches).collect();
            if addresses.is_empty() {
                return None;
            }
            // A site is healthy when one of its live nodes says its GoRouters are (this
            // node speaks for itself: its record is only refreshed while a mesh runs).
            let site_healthy = partitions.iter().any(|p| {
                p.origin.site == *site
                    && p.origin.is_alive()
                    && if Arc::ptr_eq(&p.origin, me) {
                        status.healthy
                    } else {
                        p.record.as_ref().is_some_and(|r| r.healthy)
                    }
            });
            Some(Candidate {
                site: site.clone(),
                local: *local,
                healthy: *live && site_healthy,
                addresses,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::testing::{first_import, key};
    use crate::table::{Import, NodeRecord};

    fn entry(endpoints: u32) -> crate::table::RouteEntry {
        crate::table::testing::entry("app", endpoints)
    }

    const LON: &str = "192.0.2.10";
    const NYC: &str = "198.51.100.10";
    const NYC6: &str = "2001:db8::10";

    fn settings() -> DnsSettings {
        DnsSettings {
            zones: vec!["apps.example.com".into()],
            ttl: 30,
            site: "lon".into(),
            own_addresses: vec![LON.parse().unwrap()],
            client_networks: vec![
                ("10.2.0.0/16".parse().unwrap(), "nyc".into()),
                ("10.1.0.0/16".parse().unwrap(), "lon".into()),
            ],
            answer_sites: 1,
            nameservers: Vec::new(),
        }
    }

    /// A table at lon-1 with `hosts` served locally and a peer `nyc-1` serving `remote`.
    fn table(local: &[&str], remote: &[&str], nyc_healthy: bool) -> Table {
        let t = Table::new("lon-1", "lon", 1);
        for h in local {
            t.upsert_local(&key(h), entry(2));
        }
        let routes: Vec<_> = remote.iter().map(|h| (*h, "app", 1)).collect();
        let n = routes.len() as u64;
        t.import_trusted(Import {
            up_to_version: n + 1,
            reset: true,
            record: Some(NodeRecord {
                version: n + 1,
                healthy: nyc_healthy,
                site_addresses: vec![NYC.into(), NYC6.into(), "junk".into()],
                ..Default::default()
            }),
            ..first_import("nyc-1", "nyc", &routes)
        });
        t
    }

    #[test]
    fn steering_reasons_index_their_counters_in_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{}", r.as_str());
        }
    }

    fn ok() -> NodeStatus {
        NodeStatus {
            sync: SyncState::InSync,
            healthy: true,
        }
    }

    fn ask(
        t: &Table,
        s: &DnsSettings,
        st: NodeStatus,
        client: &str,
        ecs: Option<&str>,
        name: &str,
        q: QueryType,
    ) -> Answer {
        answer(
            t,
            s,
            st,
            None,
            Client {
                addr: client.parse().unwrap(),
                subnet: ecs.map(|e| e.parse().unwrap()),
            },
            name,
            q,
        )
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn steers_by_resolver_network_then_ecs() {
        let t = table(&["app.apps.example.com"], &["app.apps.example.com"], true);
        let s = settings();
        let a = ask(
            &t,
            &s,
            ok(),
            "10.1.0.53",
            None,
            "App.Apps.Example.com.",
            QueryType::A,
        );
        assert_eq!((a.rcode, a.answers.clone()), (Rcode::NoError, ips(&[LON])));
        assert_eq!(a.reason, Some(Reason::ClientNetwork));
        let b = ask(
            &t,
            &s,
            ok(),
            "10.2.0.53",
            None,
            "app.apps.example.com",
            QueryType::A,
        );
        assert_eq!(b.answers, ips(&[NYC]));
        // ECS wins over the resolver's address.
        let c = ask(
            &t,
            &s,
            ok(),
            "10.1.0.53",
            Some("10.2.3.0/24"),
            "app.apps.example.com",
            QueryType::A,
        );
        assert_eq!(
            (c.answers, c.reason),
            (ips(&[NYC]), Some(Reason::ClientNetwork))
        );
        // An unmapped client: this node's site first.
        let d = ask(
            &t,
            &s,
            ok(),
            "172.16.0.1",
            None,
            "app.apps.example.com",
            QueryType::A,
        );
        assert_eq!(
            (d.answers, d.reason),
            (ips(&[LON]), Some(Reason::Proximity))
        );
    }

    #[test]
    fn answer_sites_and_address_family() {
        let t = table(&["app.apps.example.com"], &["app.apps.example.com"], true);
        let mut s = settings();
        s.answer_sites = 2;
        let a = ask(
            &t,
            &s,
            ok(),
            "10.2.0.1",
            None,
            "app.apps.example.com",
            QueryType::A,
        );
        assert_eq!(a.answers, ips(&[NYC, LON]));
        // AAAA: only nyc has an IPv6 address.
        let b = ask(
            &t,
            &s,
            ok(),
            "10.1.0.1",
            None,
            "app.apps.example.com",
            QueryType::Aaaa,
        );
        assert_eq!((b.rcode, b.answers), (Rcode::NoError, ips(&[NYC6])));
        // A host only lon serves has no AAAA: NODATA with the SOA.
        let t = table(&["v4.apps.example.com"], &[], true);
        let c = ask(
            &t,
            &s,
            ok(),
            "10.1.0.1",
            None,
            "v4.apps.example.com",
            QueryType::Aaaa,
        );
        assert!(c.answers.is_empty() && c.authority_soa && c.rcode == Rcode::NoError);
    }

    #[test]
    fn unhealthy_sites_are_skipped_unless_all_are() {
        // nyc says its GoRouters fail: a client of nyc gets lon.
        let t = table(&["app.apps.example.com"], &["app.apps.example.com"], false);
        let s = settings();
        let a = ask(
            &t,
            &s,
            ok(),
            "10.2.0.1",
            None,
            "app.apps.example.com",
            QueryType::A,
        );
        assert_eq!(
            (a.answers, a.reason),
            (ips(&[LON]), Some(Reason::Proximity))
        );
        // lon fails too: all of them, never empty.
        let down = NodeStatus {
            healthy: false,
            ..ok()
        };
        let b = ask(
            &t,
            &s,
            down,
            "10.2.0.1",
            None,
            "app.apps.example.com",
            QueryType::A,
        );
        assert_eq!(
            (b.answers, b.reason),
            (ips(&[LON, NYC]), Some(Reason::AllUnhealthy))
        );
        // A dead nyc node does not count either.
        let t = table(&["app.apps.example.com"], &["app.apps.example.com"], true);
        for p in t.partitions() {
            if &*p.origin.node_id == "nyc-1" {
                p.origin.set_alive(false);
            }
        }
        let c = ask(
            &t,
            &s,
            ok(),
            "10.2.0.1",
            None,
            "app.apps.example.com",
            QueryType::A,
        );
        assert_eq!(c.answers, ips(&[LON]));
        // A site without endpoints does not serve.
        let t = table(&["app.apps.example.com"], &["app.apps.example.com"], true);
        t.upsert_local(&key("app.apps.example.com"), entry(0));
        let d = ask(
            &t,
            &s,
            ok(),
            "10.1.0.1",
            None,
            "app.apps.example.com",
            QueryType::A,
        );
        assert_eq!(d.answers, ips(&[NYC]));
    }

    #[test]
    fn wildcards_nxdomain_refused_and_apex() {
        let t = table(&["*.apps.example.com/path"], &[], true);
        let s = settings();
        let a = ask(
            &t,
            &s,
            ok(),
            "10.1.0.1",
            None,
            "anything.apps.example.com",
            QueryType::A,
        );
        assert_eq!(a.answers, ips(&[LON]));
        let t = table(&["app.apps.example.com"], &[], true);
        let b = ask(
            &t,
            &s,
            ok(),
            "10.1.0.1",
            None,
            "nope.apps.example.com",
            QueryType::A,
        );
        assert_eq!((b.rcode, b.authority_soa), (Rcode::NxDomain, true));
        assert!(b.answers.is_empty() && b.reason.is_none());
        let c = ask(
            &t,
            &s,
            ok(),
            "10.1.0.1",
            None,
            "app.example.org",
            QueryType::A,
        );
        assert_eq!(c, Answer::refused());
        let c = ask(
            &t,
            &s,
            ok(),
            "10.1.0.1",
            None,
            "xapps.example.com",
            QueryType::A,
        );
        assert_eq!(c.rcode, Rcode::Refused);
        let soa = ask(
            &t,
            &s,
            ok(),
            "10.1.0.1",
            None,
            "APPS.example.com.",
            QueryType::Soa,
        );
        assert_eq!(
            (soa.rcode, soa.apex),
            (Rcode::NoError, Some(ApexRecord::Soa))
        );
        let ns = ask(
            &t,
            &s,
            ok(),
            "10.1.0.1",
            None,
            "apps.example.com",
            QueryType::Ns,
        );
        assert_eq!(ns.apex, Some(ApexRecord::Ns));
        // The apex exists: A there is NODATA, not NXDOMAIN.
        let apex_a = ask(
            &t,
            &s,
            ok(),
            "10.1.0.1",
            None,
            "apps.example.com",
            QueryType::A,
        );
        assert_eq!((apex_a.rcode, apex_a.authority_soa), (Rcode::NoError, true));
        // Other types for a served host: NODATA with SOA.
        let mx = ask(
            &t,
            &s,
            ok(),
            "10.1.0.1",
            None,
            "app.apps.example.com",
            QueryType::Other,
        );
        assert_eq!(
            (mx.rcode, mx.authority_soa, mx.answers.len()),
            (Rcode::NoError, true, 0)
        );
    }

    #[test]
    fn fails_open_when_sync_is_lost() {
        let t = table(&[], &["app.apps.example.com"], true);
        let s = settings();
        let lost = NodeStatus {
            sync: SyncState::Lost,
            ..ok()
        };
        for name in ["app.apps.example.com", "unknown.apps.example.com"] {
            let a = ask(&t, &s, lost, "10.2.0.1", None, name, QueryType::A);
            assert_eq!(
                (a.rcode, a.answers, a.reason),
                (Rcode::NoError, ips(&[LON]), Some(Reason::FailOpen))
            );
        }
        // Still refuses outside the zones.
        let r = ask(
            &t,
            &s,
            lost,
            "10.2.0.1",
            None,
            "x.example.org",
            QueryType::A,
        );
        assert_eq!(r.rcode, Rcode::Refused);
    }

    fn nets(list: &[(&str, &str)]) -> Vec<(IpNet, String)> {
        let mut v: Vec<(IpNet, String)> = list
            .iter()
            .map(|(n, s)| (n.parse().unwrap(), s.to_string()))
            .collect();
        v.sort_by(|(a, _), (b, _)| b.prefix_len().cmp(&a.prefix_len()).then(a.cmp(b)));
        v
    }

    #[test]
    fn scope_is_the_block_that_maps_like_the_client() {
        let networks = nets(&[
            ("10.0.0.0/8", "lon"),
            ("10.2.0.0/16", "nyc"),
            ("10.2.3.0/24", "lon"),
            ("2001:db8::/32", "nyc"),
        ]);
        // (client address, expected scope)
        let cases = [
            // In 10/8 but far from 10.2/16: the block must exclude 10.2/16 (they share 14
            // bits: 10.0 = 00001010.00000000, 10.2 = 00001010.00000010).
            ("10.1.2.3", 15),
            ("10.128.0.1", 9),
            // In 10.2/16, outside 10.2.3/24: 10.2.200.1 shares 16 bits with 10.2.3.0.
            ("10.2.200.1", 17),
            ("10.2.2.1", 24),
            // The most specific network: its own prefix.
            ("10.2.3.77", 24),
            // Unmatched: long enough to exclude every network of the family.
            ("11.0.0.1", 8),
            ("192.168.1.1", 1),
            ("2001:db8:1::1", 32),
            ("2001:db9::1", 32),
            ("2002::1", 15),
        ];
        for (addr, want) in cases {
            let addr: IpAddr = addr.parse().unwrap();
            let matched = networks
                .iter()
                .find(|(n, _)| n.contains(&addr))
                .map(|m| m.0);
            assert_eq!(scope_for(&networks, addr, matched), want, "{addr}");
        }
        // No network of the family: the answer holds for every client of it.
        let v4_only = nets(&[("10.0.0.0/8", "lon")]);
        assert_eq!(scope_for(&v4_only, "2001:db8::1".parse().unwrap(), None), 0);
    }

    #[test]
    fn ecs_answers_carry_the_scope_they_depend_on() {
        let t = table(&["app.apps.example.com"], &["app.apps.example.com"], true);
        let s = settings();
        let host = "app.apps.example.com";
        // Steered to nyc by the /16 it falls in.
        let a = ask(
            &t,
            &s,
            ok(),
            "127.0.0.1",
            Some("10.2.3.0/24"),
            host,
            QueryType::A,
        );
        assert_eq!((a.answers, a.scope), (ips(&[NYC]), 16));
        let b = ask(
            &t,
            &s,
            ok(),
            "127.0.0.1",
            Some("10.1.3.0/24"),
            host,
            QueryType::A,
        );
        assert_eq!((b.answers, b.scope), (ips(&[LON]), 16));
        // Unmatched: the block that holds no client network (172 and 10 differ in the
        // first bit: 128.0.0.0/1).
        let c = ask(
            &t,
            &s,
            ok(),
            "10.2.0.1",
            Some("172.16.0.0/24"),
            host,
            QueryType::A,
        );
        assert_eq!(
            (c.answers, c.reason, c.scope),
            (ips(&[LON]), Some(Reason::Proximity), 1)
        );
        // SOURCE PREFIX-LENGTH 0: the resolver's address steers; the answer holds for all.
        let d = ask(
            &t,
            &s,
            ok(),
            "10.2.0.1",
            Some("0.0.0.0/0"),
            host,
            QueryType::A,
        );
        assert_eq!((d.answers, d.scope), (ips(&[NYC]), 0));
        // Without ECS the scope is moot (and 0).
        let e = ask(&t, &s, ok(), "10.2.0.1", None, host, QueryType::A);
        assert_eq!(e.scope, 0);
        // Only one healthy site serves it: the same answer for everyone.
        let t1 = table(&["solo.apps.example.com"], &[], true);
        let f = ask(
            &t1,
            &s,
            ok(),
            "127.0.0.1",
            Some("10.2.3.0/24"),
            "solo.apps.example.com",
            QueryType::A,
        );
        assert_eq!((f.answers, f.scope), (ips(&[LON]), 0));
        // NXDOMAIN and the apex do not depend on the subnet.
        let g = ask(
            &t,
            &s,
            ok(),
            "127.0.0.1",
            Some("10.2.3.0/24"),
            "nope.apps.example.com",
            QueryType::A,
        );
        assert_eq!((g.rcode, g.scope), (Rcode::NxDomain, 0));
    }

    #[test]
    fn empty_non_terminals_are_nodata_not_nxdomain() {
        let t = table(
            &[
                "a.b.apps.example.com",
                "*.wild.apps.example.com",
                "x.y.z.apps.example.com",
            ],
            &[],
            true,
        );
        let s = settings();
        let q = |name: &str| {
            answer(
                &t,
                &s,
                ok(),
                None,
                Client {
                    addr: "10.1.0.1".parse().unwrap(),
                    subnet: None,
                },
                name,
                QueryType::A,
            )
        };
        // (name, rcode): names above routes exist; names beside or below them do not.
        let cases = [
            ("b.apps.example.com", Rcode::NoError),
            ("wild.apps.example.com", Rcode::NoError),
            ("y.z.apps.example.com", Rcode::NoError),
            ("Z.apps.example.com.", Rcode::NoError),
            ("c.apps.example.com", Rcode::NxDomain),
            ("x.b.apps.example.com", Rcode::NxDomain),
            ("a.a.b.apps.example.com", Rcode::NxDomain),
        ];
        for (name, rcode) in cases {
            let a = q(name);
            assert_eq!(
                (a.rcode, a.authority_soa, a.answers.len()),
                (rcode, true, 0),
                "{name}"
            );
        }
        // Under the wildcard: answered.
        assert_eq!(q("any.wild.apps.example.com").answers, ips(&[LON]));
        // The moment the last route below a name goes, the name is gone too.
        for host in ["a.b.apps.example.com", "*.wild.apps.example.com"] {
            t.remove_local(&grouter_protocol::nats::RouteKey::parse(host).unwrap());
        }
        assert_eq!(q("b.apps.example.com").rcode, Rcode::NxDomain);
        assert_eq!(q("wild.apps.example.com").rcode, Rcode::NxDomain);
        assert_eq!(q("y.z.apps.example.com").rcode, Rcode::NoError);
    }

    #[test]
    fn name_servers_are_answered_and_transfers_refused() {
        let t = table(&["app.apps.example.com"], &[], true);
        let mut s = settings();
        // Derived: ns.<zone> with this site's addresses.
        let ns = ask(
            &t,
            &s,
            ok(),
            "10.1.0.1",
            None,
            "ns.apps.example.com",
            QueryType::A,
        );
        assert_eq!((ns.rcode, ns.answers), (Rcode::NoError, ips(&[LON])));
        assert_eq!(
            s.nameservers_of("apps.example.com")[0].name,
            "ns.apps.example.com"
        );
        // Configured: in-zone names answered with their addresses (even when sync is lost),
        // their parents are non-terminals, out-of-zone names are refused.
        s.nameservers = vec![
            Nameserver {
                name: "ns1.dns.apps.example.com".into(),
                addresses: ips(&["192.0.2.53", "2001:db8::53"]),
            },
            Nameserver {
                name: "ns2.example.net".into(),
                addresses: Vec::new(),
            },
        ];
        let lost = NodeStatus {
            sync: SyncState::Lost,
            ..ok()
        };
        for st in [ok(), lost] {
            let a = ask(
                &t,
                &s,
                st,
                "10.1.0.1",
                None,
                "NS1.dns.apps.example.com",
                QueryType::A,
            );
            assert_eq!(
                (a.rcode, a.answers, a.reason),
                (Rcode::NoError, ips(&["192.0.2.53"]), None)
            );
        }
        let aaaa = ask(
            &t,
            &s,
            ok(),
            "10.1.0.1",
            None,
            "ns1.dns.apps.example.com",
            QueryType::Aaaa,
        );
        assert_eq!(aaaa.answers, ips(&["2001:db8::53"]));
        let mx = ask(
            &t,
            &s,
            ok(),
            "10.1.0.1",
            None,
            "ns1.dns.apps.example.com",
            QueryType::Other,
        );
        assert!(mx.rcode == Rcode::NoError && mx.answers.is_empty() && mx.authority_soa);
        let parent = ask(
            &t,
            &s,
            ok(),
            "10.1.0.1",
            None,
            "dns.apps.example.com",
            QueryType::A,
        );
        assert_eq!(parent.rcode, Rcode::NoError);
        let derived = ask(
            &t,
            &s,
            ok(),
            "10.1.0.1",
            None,
            "ns.apps.example.com",
            QueryType::A,
        );
        assert_eq!(
            derived.rcode,
            Rcode::NxDomain,
            "configured names replace ns.<zone>"
        );
        let outside = ask(
            &t,
            &s,
            ok(),
            "10.1.0.1",
            None,
            "ns2.example.net",
            QueryType::A,
        );
        assert_eq!(outside.rcode, Rcode::Refused);
        // Zone transfers: refused, at the apex and anywhere else.
        for name in ["apps.example.com", "app.apps.example.com"] {
            let x = ask(&t, &s, ok(), "10.1.0.1", None, name, QueryType::Transfer);
            assert_eq!(x, Answer::refused());
        }
        assert_eq!(QueryType::from(RecordType::IXFR), QueryType::Transfer);
        assert_eq!(QueryType::from(RecordType::AXFR), QueryType::Transfer);
    }

    mod policies {
        use super::*;
        use crate::policy::{RoutePolicy, RouteRule, SitePolicy};

        const FRA: &str = "203.0.113.10";
        const SFO: &str = "198.51.100.20";

        /// lon-1 (this node, eu) serves `local`; nyc-1 (us), sfo-1 (us) and fra-1 (eu)
        /// serve `remote`, healthy unless listed in `sick`; ranked nyc, fra, sfo.
        fn table(local: &[&str], remote: &[&str], sick: &[&str]) -> Table {
            let t = Table::new("lon-1", "lon", 1);
            for h in local {
                t.upsert_local(&key(h), entry(2));
            }
            let routes: Vec<_> = remote.iter().map(|h| (*h, "app", 1)).collect();
            let n = routes.len() as u64;
            for (node, site, addr) in [
                ("nyc-1", "nyc", NYC),
                ("sfo-1", "sfo", SFO),
                ("fra-1", "fra", FRA),
            ] {
                t.import_trusted(Import {
                    up_to_version: n + 1,
                    reset: true,
                    record: Some(NodeRecord {
                        version: n + 1,
                        healthy: !sick.contains(&site),
                        site_addresses: vec![addr.into()],
                        ..Default::default()
                    }),
                    ..first_import(node, site, &routes)
                });
            }
            t.set_site_order(vec!["nyc".into(), "fra".into(), "sfo".into()]);
            t
        }

        fn facts() -> SiteFacts {
            SiteFacts {
                regions: [("lon", "eu"), ("fra", "eu"), ("nyc", "us"), ("sfo", "us")]
                    .into_iter()
                    .map(|(s, r)| (Arc::from(s), Arc::from(r)))
                    .collect(),
                healthy: Vec::new(),
            }
        }

        fn policies(rules: &[(&str, &str)], drained_sites: &[&str]) -> Policies {
            Policies::new(
                rules.iter().map(|(host, json)| {
                    let p: RoutePolicy = serde_json::from_str(json).unwrap();
                    (host.to_string(), Arc::new(RouteRule::new(p)))
                }),
                drained_sites
                    .iter()
                    .map(|s| (s.to_string(), SitePolicy { drained: true })),
            )
        }

        const APP: &str = "app.apps.example.com";

        /// The A answer for `name` to a client of nyc's network (10.2.0.0/16).
        fn a(t: &Table, s: &DnsSettings, st: NodeStatus, p: &Policies, name: &str) -> Answer {
            let f = facts();
            let policy = Policy {
                policies: p,
                facts: &f,
            };
            let client = Client {
                addr: "10.2.0.1".parse().unwrap(),
                subnet: None,
            };
            answer(t, s, st, Some(policy), client, name, QueryType::A)
        }

        fn wide() -> DnsSettings {
            DnsSettings {
                answer_sites: 4,
                ..settings()
            }
        }

        #[test]
        fn only_admitted_sites_are_named() {
            let t = table(&[APP], &[APP], &[]);
            let s = wide();
            // Pinned to eu: lon and fra, never nyc, although the client maps to nyc.
            let p = policies(&[(APP, r#"{"regions":["eu"]}"#)], &[]);
            let d = a(&t, &s, ok(), &p, APP);
            assert_eq!(
                (d.answers, d.reason),
                (ips(&[LON, FRA]), Some(Reason::Proximity))
            );
            // Pinned to us at an eu node: nyc (the client's) then sfo.
            let p = policies(&[(APP, r#"{"regions":["us"]}"#)], &[]);
            let d = a(&t, &s, ok(), &p, APP);
            assert_eq!(
                (d.answers, d.reason),
                (ips(&[NYC, SFO]), Some(Reason::ClientNetwork))
            );
            // Drained for the route at lon and nyc; sfo drained as a site.
            let p = policies(&[(APP, r#"{"drained":["lon","nyc"]}"#)], &["sfo"]);
            assert_eq!(a(&t, &s, ok(), &p, APP).answers, ips(&[FRA]));
            // A site drain alone moves every name.
            let p = policies(&[], &["lon", "nyc"]);
            assert_eq!(a(&t, &s, ok(), &p, APP).answers, ips(&[FRA, SFO]));
        }

        #[test]
        fn admitted_sites_all_unhealthy_are_named_and_none_admitted_is_nodata() {
            // eu pinned, fra and this node unhealthy: both named, never a us site.
            let t = table(&[APP], &[APP], &["fra"]);
            let down = NodeStatus {
                healthy: false,
                ..ok()
            };
            let p = policies(&[(APP, r#"{"regions":["eu"]}"#)], &[]);
            let d = a(&t, &wide(), down, &p, APP);
            assert_eq!(
                (d.answers, d.reason),
                (ips(&[LON, FRA]), Some(Reason::AllUnhealthy))
            );
            // A region no serving site is in, or every serving site drained: NODATA.
            for p in [
                policies(&[(APP, r#"{"regions":["ap"]}"#)], &[]),
                policies(&[(APP, r#"{"drained":["lon","fra"]}"#)], &["nyc", "sfo"]),
            ] {
                let d = a(&t, &wide(), ok(), &p, APP);
                assert_eq!(
                    (d.rcode, d.answers.is_empty(), d.authority_soa, d.reason),
                    (Rcode::NoError, true, true, Some(Reason::NoneAllowed))
                );
            }
        }

        #[test]
        fn weights_spread_answers_exactly_and_this_site_still_wins() {
            let t = table(
                &["own.apps.example.com"],
                &[APP, "own.apps.example.com"],
                &[],
            );
            let s = settings();
            let p = policies(
                &[
                    (APP, r#"{"weights":{"nyc":1,"fra":3}}"#),
                    ("own.apps.example.com", r#"{"weights":{"nyc":1,"fra":3}}"#),
                ],
                &[],
            );
            let f = facts();
            let policy = Policy {
                policies: &p,
                facts: &f,
            };
            // A client no network maps (a mapped one gets its own site first).
            let unmapped = Client {
                addr: "172.16.0.1".parse().unwrap(),
                subnet: None,
            };
            let mut nyc = 0;
            for _ in 0..1000 {
                let d = answer(&t, &s, ok(), Some(policy), unmapped, APP, QueryType::A);
                match d.answers.as_slice() {
                    [ip] if *ip == NYC.parse::<IpAddr>().unwrap() => nyc += 1,
                    [ip] if *ip == FRA.parse::<IpAddr>().unwrap() => {}
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(nyc, 250);
            // sfo is unlisted: never named, not even when all are asked for.
            let d = a(&t, &wide(), ok(), &p, APP);
            assert_eq!(d.answers.len(), 2);
            assert!(!d.answers.contains(&SFO.parse().unwrap()));
            // Served here too: this site first, whatever the weights.
            let own = "own.apps.example.com";
            for _ in 0..4 {
                let d = answer(&t, &s, ok(), Some(policy), unmapped, own, QueryType::A);
                assert_eq!(d.answers, ips(&[LON]));
            }
            // A client mapped to a weighted site is still steered there first.
            let d = a(&t, &s, ok(), &p, APP);
            assert_eq!(
                (d.answers, d.reason),
                (ips(&[NYC]), Some(Reason::ClientNetwork))
            );
        }

        #[test]
        fn a_wildcards_policy_governs_the_names_it_matches_only() {
            let t = table(
                &[],
                &["*.wild.apps.example.com", "own.wild.apps.example.com"],
                &[],
            );
            let p = policies(&[("*.wild.apps.example.com", r#"{"regions":["us"]}"#)], &[]);
            let d = a(&t, &wide(), ok(), &p, "x.wild.apps.example.com");
            assert_eq!(d.answers, ips(&[NYC, SFO]));
            // An exact route below the wildcard is not the wildcard's.
            let d = a(&t, &wide(), ok(), &p, "own.wild.apps.example.com");
            assert_eq!(d.answers, ips(&[NYC, FRA, SFO]));
        }

        #[test]
        fn policies_for_other_names_leave_answers_and_scopes_as_they_were() {
            let t = table(&[APP], &[APP], &[]);
            let s = settings();
            let p = policies(&[("else.apps.example.com", r#"{"regions":["us"]}"#)], &[]);
            let f = facts();
            for ecs in [
                None,
                Some("10.2.3.0/24"),
                Some("10.1.0.0/16"),
                Some("172.16.0.0/12"),
            ] {
                for q in [QueryType::A, QueryType::Aaaa] {
                    let client = Client {
                        addr: "192.0.2.200".parse().unwrap(),
                        subnet: ecs.map(|e| e.parse().unwrap()),
                    };
                    let policy = Policy {
                        policies: &p,
                        facts: &f,
                    };
                    let with = answer(&t, &s, ok(), Some(policy), client, APP, q);
                    let without = answer(&t, &s, ok(), None, client, APP, q);
                    assert_eq!(with, without, "{ecs:?} {q:?}");
                }
            }
        }
    }
}
