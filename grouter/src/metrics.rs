//! Prometheus metrics of the node.
//!
//! Owns: the metric registry and the gauges derived from the table and the sync state (set
//! when `/metrics` is scraped). Each subsystem owns its counters (`learn::LearnMetrics`,
//! `mesh::MeshMetrics`, `dns::DnsMetrics`) and registers them here through
//! [`Metrics::register`] and [`Metrics::reason_counters`]. Counters on hot paths are plain
//! atomics (no label lookup per message). [`FlagGauge`] and [`SampledGauge`] report, at
//! scrape time, facts a subsystem already keeps (the health flags, served certificates, peer
//! RTTs), so nothing mirrors them into gauges; the node wires them up.
//!
//! Must never: import a subsystem (it assembles what they register), block on a hot path, or
//! allocate on one.

use std::fmt::Write as _;

use parking_lot::Mutex;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};

use crate::health::SyncState;
use crate::limits::{Cut, ListenerStats};
use crate::table::TableStats;

/// Label sets of the per-listener families.
type Labels = Vec<(String, String)>;

/// Every metric of the node.
#[derive(Debug)]
pub struct Metrics {
    /// Locked only to register (at start) and to encode (per scrape).
    registry: Mutex<Registry>,
    sync_state: Family<Vec<(String, String)>, Gauge>,
    routes: Gauge,
    local_routes: Gauge,
    partitions: Gauge,
    /// `grouter_connections_cut_total{listener,reason}`.
    connections_cut: Family<Labels, Counter>,
    /// `grouter_connections_open{listener}`.
    connections_open: Family<Labels, Gauge>,
    /// `grouter_connection_limit{listener}`.
    connection_limit: Family<Labels, Gauge>,
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
            sync_state: Family::default(),
            routes: Gauge::default(),
            local_routes: Gauge::default(),
            partitions: Gauge::default(),
            connections_cut: Family::default(),
            connections_open: Family::default(),
            connection_limit: Family::default(),
            registry: Mutex::new(Registry::default()),
        };
        let r = &mut registry;
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
        r.register(
            "sync_state",
            "1 for the node's current sync state",
            m.sync_state.clone(),
        );
        r.register(
            "connections_cut",
            "connections a listener closed: timeouts (head_timeout, idle_timeout, handshake_timeout), clients that took nothing they were sent for the idle timeout (send_timeout) and connections over its limit (over_limit)",
            m.connections_cut.clone(),
        );
        r.register(
            "connections_open",
            "connections a listener holds",
            m.connections_open.clone(),
        );
        r.register(
            "connection_limit",
            "most connections a listener holds at once",
            m.connection_limit.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            ..m
        }
    }

    /// Register a subsystem's metric (at start; scrapes include it from then on).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry.lock().register(name, help, metric);
    }

    /// One counter per reason in a family labelled `reason`, every one created up front:
    /// scrapes show zeros, and a hot path increments a plain counter instead of looking up a
    /// label set.
    pub fn reason_counters<const N: usize>(
        &self,
        name: &str,
        help: &str,
        reasons: [&str; N],
    ) -> [Counter; N] {
        reason_counters(&mut self.registry.lock(), name, help, reasons)
    }

    /// The connection counters of `listener` (`http`, `https`, `admin`, `mesh`), created at
    /// zero; the same listener always gets the same counters.
    pub fn listener_stats(&self, listener: &str) -> ListenerStats {
        let label = |extra: Option<&str>| {
            let mut l = vec![("listener".to_string(), listener.to_string())];
            if let Some(reason) = extra {
                l.push(("reason".to_string(), reason.to_string()));
            }
            l
        };
        let cuts = Cut::ALL.map(|c| {
            self.connections_cut
                .get_or_create(&label(Some(c.as_str())))
                .clone()
        });
        ListenerStats::new(
            cuts,
            self.connections_open.get_or_create(&label(None)).clone(),
            self.connection_limit.get_or_create(&label(None)).clone(),
        )
    }

    /// Prometheus text exposition, with the table gauges refreshed from `stats` and
    /// `grouter_sync_state{state=…}` from `sync` (1 for the current state).
    pub fn encode(&self, stats: TableStats, sync: SyncState) -> String {
        let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.routes.set(as_i64(stats.routes));
        self.local_routes.set(as_i64(stats.local_routes));
        self.partitions.set(as_i64(stats.partitions));
        for s in SyncState::ALL {
            self.sync_state
                .get_or_create(&vec![("state".to_string(), s.as_str().to_string())])
                .set(i64::from(s == sync));
        }
        let mut out = String::with_capacity(4096);
        if encode(&mut out, &self.registry.lock()).is_err() {
            // Encoding into a String cannot fail; keep the endpoint answering regardless.
            let _ = writeln!(out, "# encoding error");
        }
        out
    }
}

/// A gauge read when `/metrics` is scraped: 1 while `flag` says yes, else 0. For facts another
/// subsystem already keeps (an atomic), so nothing has to mirror them into a gauge.
pub struct FlagGauge(Box<dyn Fn() -> bool + Send + Sync>);

impl FlagGauge {
    /// A gauge reporting `flag()` at each scrape.
    pub fn new(flag: impl Fn() -> bool + Send + Sync + 'static) -> FlagGauge {
        FlagGauge(Box::new(flag))
    }
}

impl std::fmt::Debug for FlagGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("FlagGauge").field(&(self.0)()).finish()
    }
}

impl prometheus_client::encoding::EncodeMetric for FlagGauge {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&i64::from((self.0)()))
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Gauge
    }
}

/// A labelled gauge family read when `/metrics` is scraped: one sample per label set that
/// `samples` returns then (e.g. one per served certificate). Not for hot paths.
pub struct SampledGauge(Box<dyn Fn() -> Vec<(Labels, f64)> + Send + Sync>);

impl SampledGauge {
    /// A family reporting `samples()` at each scrape.
    pub fn new(samples: impl Fn() -> Vec<(Labels, f64)> + Send + Sync + 'static) -> SampledGauge {
        SampledGauge(Box::new(samples))
    }
}

impl std::fmt::Debug for SampledGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SampledGauge").finish_non_exhaustive()
    }
}

impl prometheus_client::encoding::EncodeMetric for SampledGauge {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        for (labels, value) in (self.0)() {
            encoder.encode_family(&labels)?.encode_gauge(&value)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Gauge
    }
}

/// A labelled counter family read when `/metrics` is scraped, for totals another subsystem
/// already keeps (e.g. the proxy's responses per site): one sample per label set `totals`
/// returns.
pub struct SampledCounter(Box<dyn Fn() -> Vec<(Labels, u64)> + Send + Sync>);

impl SampledCounter {
    /// A family reporting `totals()` at each scrape.
    pub fn new(totals: impl Fn() -> Vec<(Labels, u64)> + Send + Sync + 'static) -> SampledCounter {
        SampledCounter(Box::new(totals))
    }
}

impl std::fmt::Debug for SampledCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SampledCounter").finish_non_exhaustive()
    }
}

impl prometheus_client::encoding::EncodeMetric for SampledCounter {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        for (labels, total) in (self.0)() {
            encoder
                .encode_family(&labels)?
                .encode_counter::<Labels, _, u64>(&total, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Counter
    }
}

/// See [`Metrics::reason_counters`].
fn reason_counters<const N: usize>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    reasons: [&str; N],
) -> [Counter; N] {
    let family: Family<Vec<(String, String)>, Counter> = Family::default();
    registry.register(name, help, family.clone());
    reasons.map(|reason| {
        family
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_reason_counters_table_gauges_and_the_sync_state() {
        let m = Metrics::new();
        let [missing_host, truncated] = m.reason_counters(
            "nats_invalid_messages",
            "messages dropped as invalid, by reason",
            ["missing_host", "truncated"],
        );
        missing_host.inc();
        missing_host.inc();
        let _ = truncated;
        m.listener_stats("admin").cut(Cut::OverLimit);
        m.register("flag", "a flag", FlagGauge::new(|| true));
        m.register(
            "sampled",
            "samples",
            SampledGauge::new(|| vec![(vec![("host".to_string(), "a.com".to_string())], 42.5)]),
        );
        let text = m.encode(
            TableStats {
                routes: 7,
                ..Default::default()
            },
            SyncState::Degraded,
        );
        for line in [
            r#"grouter_nats_invalid_messages_total{reason="missing_host"} 2"#,
            r#"grouter_nats_invalid_messages_total{reason="truncated"} 0"#,
            "grouter_routes 7",
            "grouter_flag 1",
            r#"grouter_sampled{host="a.com"} 42.5"#,
            r#"grouter_sync_state{state="degraded"} 1"#,
            r#"grouter_sync_state{state="in_sync"} 0"#,
            r#"grouter_connections_cut_total{listener="admin",reason="over_limit"} 1"#,
            r#"grouter_connections_cut_total{listener="admin",reason="head_timeout"} 0"#,
            r#"grouter_connections_open{listener="admin"} 0"#,
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
