//! Prometheus metrics: the registry, and the name of every metric the proxy exports.

use std::sync::atomic::AtomicU64;

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Prefix of every metric name.
pub const NAMESPACE: &str = "dependency_proxy";

/// What a cache lookup or upstream request was for.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Kind {
    Manifest,
    Blob,
    Token,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Manifest => "manifest",
            Kind::Blob => "blob",
            Kind::Token => "token",
        }
    }
}

impl EncodeLabelValue for Kind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: Kind,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub kind: Kind,
    /// HTTP status, or `error` when no response arrived.
    pub status: String,
}

/// Every metric the proxy updates. Cheap to share behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    pub cache_hits: Family<KindLabel, Counter>,
    pub cache_misses: Family<KindLabel, Counter>,
    pub stale_serves: Counter,
    pub bytes_served: Counter,
    pub upstream_bytes: Counter,
    pub upstream_requests: Family<UpstreamLabels, Counter>,
    pub upstream_latency: Family<KindLabel, Histogram>,
    pub inflight_fetches: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub integrity_failures: Counter,
    pub coalesced_requests: Counter<u64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(NAMESPACE);
        let cache_hits = Family::<KindLabel, Counter>::default();
        registry.register("cache_hits", "Requests answered from the cache", cache_hits.clone());
        let cache_misses = Family::<KindLabel, Counter>::default();
        registry.register("cache_misses", "Requests that needed the upstream", cache_misses.clone());
        let stale_serves = Counter::default();
        registry.register(
            "stale_serves",
            "Tags served from the cache because the upstream could not be asked",
            stale_serves.clone(),
        );
        let bytes_served = Counter::default();
        registry.register("bytes_served", "Body bytes sent to clients for blobs and manifests", bytes_served.clone());
        let upstream_bytes = Counter::default();
        registry.register("upstream_bytes", "Body bytes received from the upstream", upstream_bytes.clone());
        let upstream_requests = Family::<UpstreamLabels, Counter>::default();
        registry.register("upstream_requests", "Requests sent to the upstream", upstream_requests.clone());
        let upstream_latency = Family::<KindLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        registry.register(
            "upstream_request_duration_seconds",
            "Time until the upstream's response headers arrived",
            upstream_latency.clone(),
        );
        let inflight_fetches = Gauge::default();
        registry.register("inflight_fetches", "Blob downloads from the upstream in progress", inflight_fetches.clone());
        let integrity_failures = Counter::default();
        registry.register(
            "integrity_failures",
            "Upstream transfers refused because their bytes or length did not match the digest",
            integrity_failures.clone(),
        );
        let coalesced_requests = Counter::default();
        registry.register(
            "coalesced_requests",
            "Blob requests served from another request's in-flight download",
            coalesced_requests.clone(),
        );
        Self {
            registry,
            cache_hits,
            cache_misses,
            stale_serves,
            bytes_served,
            upstream_bytes,
            upstream_requests,
            upstream_latency,
            inflight_fetches,
            integrity_failures,
            coalesced_requests,
        }
    }

    pub fn hit(&self, kind: Kind) {
        self.cache_hits.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn miss(&self, kind: Kind) {
        self.cache_misses.get_or_create(&KindLabel { kind }).inc();
    }

    /// Renders the OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_namespace_and_labels() {
        let metrics = Metrics::new();
        metrics.hit(Kind::Blob);
        metrics.hit(Kind::Blob);
        metrics.miss(Kind::Manifest);
        let text = metrics.encode();
        assert!(text.contains("dependency_proxy_cache_hits_total{kind=\"blob\"} 2"), "{text}");
        assert!(text.contains("dependency_proxy_cache_misses_total{kind=\"manifest\"} 1"), "{text}");
        assert!(text.contains("# TYPE dependency_proxy_inflight_fetches gauge"), "{text}");
    }
}
