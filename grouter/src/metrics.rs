//! Prometheus metrics of the node.
//!
//! Owns: the metric registry and the handles every subsystem increments. Counters on hot
//! paths are plain atomics (no label lookup per message); gauges derived from the table are
//! set when `/metrics` is scraped.
//!
//! Must never: block, or allocate on a hot path.

use std::fmt::Write as _;

use grouter_protocol::nats::InvalidMessage;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::table::TableStats;

/// Every metric of the node.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `router.register` messages received.
    pub nats_register: Counter,
    /// `router.unregister` messages received.
    pub nats_unregister: Counter,
    /// Messages dropped, one counter per [`InvalidMessage::REASONS`] entry.
    pub nats_invalid: [Counter; InvalidMessage::REASONS.len()],
    /// URIs dropped from otherwise valid messages.
    pub nats_invalid_uris: Counter,
    /// 1 while connected to the site's NATS.
    pub nats_connected: Gauge,
    /// Successful connections to NATS (the first and every reconnect).
    pub nats_connects: Counter,
    /// `router.greet` requests sent.
    pub nats_greets_sent: Counter,
    /// `router.greet` requests answered by a router.
    pub nats_greet_replies: Counter,
    /// Times the NATS client dropped messages because the learner fell behind.
    pub nats_slow_consumer: Counter,
    /// Endpoints removed because they were not re-registered in time.
    pub endpoints_pruned: Counter,
    /// Endpoints known to this node's learner.
    pub endpoints: Gauge,
    /// Mesh peers connected now.
    pub mesh_peers: Gauge,
    /// Mesh connections established.
    pub mesh_connects: Counter,
    /// Mesh connections closed because another one to the same peer won.
    pub mesh_duplicates: Counter,
    /// TLS handshakes or identities refused.
    pub mesh_handshake_failures: Counter,
    /// Replicated entries sent.
    pub entries_sent: Counter,
    /// Replicated entries (and records) that changed this node's table.
    pub mesh_entries_applied: Counter,
    mesh_rejected: [Counter; crate::mesh::sync::Rejection::ALL.len()],
    sync_state: Family<Vec<(String, String)>, Gauge>,
    dns_queries: Family<Vec<(String, String)>, Counter>,
    dns_steering: [Counter; crate::dns::Reason::ALL.len()],
    routes: Gauge,
    local_routes: Gauge,
    partitions: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("grouter");
        let m = Metrics {
            nats_register: Counter::default(),
            nats_unregister: Counter::default(),
            nats_invalid: Default::default(),
            nats_invalid_uris: Counter::default(),
            nats_connected: Gauge::default(),
            nats_connects: Counter::default(),
            nats_greets_sent: Counter::default(),
            nats_greet_replies: Counter::default(),
            nats_slow_consumer: Counter::default(),
            endpoints_pruned: Counter::default(),
            endpoints: Gauge::default(),
            mesh_peers: Gauge::default(),
            mesh_connects: Counter::default(),
            mesh_duplicates: Counter::default(),
            mesh_handshake_failures: Counter::default(),
            entries_sent: Counter::default(),
            mesh_entries_applied: Counter::default(),
            mesh_rejected: Default::default(),
            sync_state: Family::default(),
            dns_queries: Family::default(),
            dns_steering: Default::default(),
            routes: Gauge::default(),
            local_routes: Gauge::default(),
            partitions: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "nats_register_messages",
            "router.register messages received",
            m.nats_register.clone(),
        );
        r.register(
            "nats_unregister_messages",
            "router.unregister messages received",
            m.nats_unregister.clone(),
        );
        r.register(
            "nats_invalid_uris",
            "URIs dropped from otherwise valid messages",
            m.nats_invalid_uris.clone(),
        );
        r.register(
            "nats_connected",
            "1 while connected to the site's NATS",
            m.nats_connected.clone(),
        );
        r.register(
            "nats_connects",
            "connections to NATS, the first and every reconnect",
            m.nats_connects.clone(),
        );
        r.register(
            "nats_greets_sent",
            "router.greet requests sent",
            m.nats_greets_sent.clone(),
        );
        r.register(
            "nats_greet_replies",
            "router.greet requests answered",
            m.nats_greet_replies.clone(),
        );
        r.register(
            "endpoints_pruned",
            "endpoints removed for not re-registering in time",
            m.endpoints_pruned.clone(),
        );
        r.register(
            "local_endpoints",
            "endpoints learned from this site's NATS",
            m.endpoints.clone(),
        );
        r.register(
            "routes",
            "distinct routes served by any site",
            m.routes.clone(),
        );
        r.register(
            "local_routes",
            "routes this node learned from its site",
            m.local_routes.clone(),
        );
        r.register(
            "partitions",
            "partitions in the table, this node's included",
            m.partitions.clone(),
        );
        // One family, every reason created up front: scrapes show zeros, and the hot path
        // increments a plain counter instead of looking up a label set.
        let invalid: Family<Vec<(String, String)>, Counter> = Family::default();
        r.register(
            "nats_invalid_messages",
            "messages dropped as invalid, by reason",
            invalid.clone(),
        );
        let nats_invalid = InvalidMessage::REASONS.map(|reason| {
            invalid
                .get_or_create(&vec![("reason".to_string(), reason.to_string())])
                .clone()
        });
        r.register(
            "nats_slow_consumer_events",
            "times registrations were dropped because the learner fell behind (emitters re-send them)",
            m.nats_slow_consumer.clone(),
        );
        r.register("mesh_peers", "mesh peers connected", m.mesh_peers.clone());
        r.register(
            "mesh_connects",
            "mesh connections established",
            m.mesh_connects.clone(),
        );
        r.register(
            "mesh_duplicate_connections",
            "mesh connections closed as duplicates",
            m.mesh_duplicates.clone(),
        );
        r.register(
            "mesh_handshake_failures",
            "mesh TLS handshakes or identities refused",
            m.mesh_handshake_failures.clone(),
        );
        r.register(
            "mesh_entries_sent",
            "replicated entries sent to peers",
            m.entries_sent.clone(),
        );
        r.register(
            "mesh_entries_applied",
            "replicated entries that changed the table",
            m.mesh_entries_applied.clone(),
        );
        let rejected: Family<Vec<(String, String)>, Counter> = Family::default();
        r.register(
            "mesh_deltas_rejected",
            "partition deltas dropped, by reason",
            rejected.clone(),
        );
        let mesh_rejected = crate::mesh::sync::Rejection::ALL.map(|why| {
            rejected
                .get_or_create(&vec![("reason".to_string(), why.as_str().to_string())])
                .clone()
        });
        r.register(
            "sync_state",
            "1 for the node's current sync state",
            m.sync_state.clone(),
        );
        r.register(
            "dns_queries",
            "DNS queries answered, by query type and response code",
            m.dns_queries.clone(),
        );
        let steering: Family<Vec<(String, String)>, Counter> = Family::default();
        r.register(
            "dns_steering",
            "DNS answers for app hosts, by why they name the sites they do",
            steering.clone(),
        );
        let dns_steering = crate::dns::Reason::ALL.map(|why| {
            steering
                .get_or_create(&vec![("reason".to_string(), why.as_str().to_string())])
                .clone()
        });
        let m = Metrics {
            registry,
            nats_invalid,
            mesh_rejected,
            dns_steering,
            ..m
        };
        m.set_sync(crate::node::SyncState::InSync);
        m
    }

    /// Count one invalid message.
    pub fn count_invalid(&self, err: &InvalidMessage) {
        if let Some(c) = self.nats_invalid.get(err.index()) {
            c.inc();
        }
    }

    /// Count one dropped partition delta.
    pub fn count_mesh_rejection(&self, why: crate::mesh::sync::Rejection) {
        if let Some(i) = crate::mesh::sync::Rejection::ALL
            .iter()
            .position(|r| *r == why)
            && let Some(c) = self.mesh_rejected.get(i)
        {
            c.inc();
        }
    }

    /// Count one DNS query by its type (`A`, `AAAA`, …) and response code (`noerror`, …).
    /// The label set is small: types and codes are bounded enumerations.
    pub fn count_dns_query(&self, qtype: &str, rcode: &str) {
        self.dns_queries
            .get_or_create(&vec![
                ("type".to_string(), qtype.to_string()),
                ("rcode".to_string(), rcode.to_string()),
            ])
            .inc();
    }

    /// Count one steering decision.
    pub fn count_dns_steering(&self, why: crate::dns::Reason) {
        if let Some(i) = crate::dns::Reason::ALL.iter().position(|r| *r == why)
            && let Some(c) = self.dns_steering.get(i)
        {
            c.inc();
        }
    }

    /// Expose the sync state as `grouter_sync_state{state=…}` (1 for the current one).
    pub fn set_sync(&self, sync: crate::node::SyncState) {
        use crate::node::SyncState;
        for s in [SyncState::InSync, SyncState::Degraded, SyncState::Lost] {
            self.sync_state
                .get_or_create(&vec![("state".to_string(), s.as_str().to_string())])
                .set(i64::from(s == sync));
        }
    }

    /// Prometheus text exposition, with table gauges refreshed from `stats`.
    pub fn encode(&self, stats: TableStats) -> String {
        let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.routes.set(as_i64(stats.routes));
        self.local_routes.set(as_i64(stats.local_routes));
        self.partitions.set(as_i64(stats.partitions));
        let mut out = String::with_capacity(4096);
        if encode(&mut out, &self.registry).is_err() {
            // Encoding into a String cannot fail; keep the endpoint answering regardless.
            let _ = writeln!(out, "# encoding error");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_invalid_reasons_and_counts() {
        let m = Metrics::new();
        m.count_invalid(&InvalidMessage::MissingHost);
        m.count_invalid(&InvalidMessage::MissingHost);
        m.nats_register.inc();
        let text = m.encode(TableStats {
            routes: 7,
            ..Default::default()
        });
        assert!(
            text.contains(r#"grouter_nats_invalid_messages_total{reason="missing_host"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"grouter_nats_invalid_messages_total{reason="truncated"} 0"#));
        assert!(text.contains("grouter_nats_register_messages_total 1"));
        assert!(text.contains("grouter_routes 7"));
        for name in [
            "grouter_nats_slow_consumer_events_total 0",
            "grouter_mesh_handshake_failures_total 0",
            r#"grouter_mesh_deltas_rejected_total{reason="own_partition"} 0"#,
            r#"grouter_sync_state{state="in_sync"} 1"#,
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
