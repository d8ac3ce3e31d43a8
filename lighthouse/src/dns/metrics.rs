//! Prometheus metrics of the DNS server.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of one answered (or dropped) query.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    /// The question's type (`A`, `SRV`, ..., `other`), `none` when it had
    /// none.
    pub qtype: &'static str,
    /// The response code sent, `dropped` when nothing was sent.
    pub rcode: &'static str,
    /// `udp` or `tcp`.
    pub transport: &'static str,
}

/// The server's metrics; clones share their values.
#[derive(Clone, Debug)]
pub struct DnsMetrics {
    queries: Family<QueryLabels, Counter>,
    latency: Histogram,
}

impl Default for DnsMetrics {
    fn default() -> Self {
        Self {
            queries: Family::default(),
            // 5 us .. about 80 ms.
            latency: Histogram::new(exponential_buckets(5e-6, 2.0, 15)),
        }
    }
}

impl DnsMetrics {
    /// Metrics registered in `registry` as `dns_queries` and
    /// `dns_answer_latency_seconds` (under the registry's prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "dns_queries",
            "DNS queries by type, response code and transport",
            metrics.queries.clone(),
        );
        registry.register(
            "dns_answer_latency_seconds",
            "Time from a query's arrival to its answer being ready",
            metrics.latency.clone(),
        );
        metrics
    }

    /// Counts one query and its handling time.
    pub fn observe(&self, labels: &QueryLabels, elapsed: Duration) {
        self.queries.get_or_create(labels).inc();
        self.latency.observe(elapsed.as_secs_f64());
    }

    /// How many queries carried these labels (for tests and `show`).
    pub fn count(&self, labels: &QueryLabels) -> u64 {
        self.queries.get_or_create(labels).get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_metrics_are_encoded() {
        let mut registry = Registry::with_prefix("causeway");
        let metrics = DnsMetrics::register(&mut registry);
        let labels = QueryLabels {
            qtype: "A",
            rcode: "NOERROR",
            transport: "udp",
        };
        metrics.observe(&labels, Duration::from_micros(40));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                r#"causeway_dns_queries_total{qtype="A",rcode="NOERROR",transport="udp"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("causeway_dns_answer_latency_seconds_count 1"),
            "{text}"
        );
    }
}
