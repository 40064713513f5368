//! The API server's metrics, in Prometheus' text format at `/metrics` (admin only), under the names
//! Kubernetes uses: `apiserver_request_total` (by verb, group, version, resource, subresource, code) and
//! `apiserver_request_duration_seconds` (by verb and resource; watches, which last, are not timed).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    verb: String,
    resource: String,
}

type Histograms = Family<DurationLabels, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    flow_schema: String,
    priority_level: String,
    reason: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Histograms,
    rejected: Family<FlowLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let durations: Histograms = Family::new_with_constructor(latency_histogram);
        registry.register(
            "apiserver_request",
            "Requests served, by verb, group, version, resource, subresource and HTTP code",
            requests.clone(),
        );
        registry.register(
            "apiserver_request_duration_seconds",
            "How long requests took to serve, by verb and resource (watches excluded)",
            durations.clone(),
        );
        let rejected = Family::<FlowLabels, Counter>::default();
        registry.register(
            "apiserver_flowcontrol_rejected_requests",
            "Requests API Priority and Fairness refused (429), by flow schema, priority level and reason",
            rejected.clone(),
        );
        Metrics { registry, requests, durations, rejected }
    }
}

impl Metrics {
    /// Counts a request served; times it unless it is a watch.
    pub fn observe(&self, labels: RequestLabels, took: Duration) {
        if labels.verb != "watch" {
            let d = DurationLabels { verb: labels.verb.clone(), resource: labels.resource.clone() };
            self.durations.get_or_create(&d).observe(took.as_secs_f64());
        }
        self.requests.get_or_create(&labels).inc();
    }

    /// Counts a request refused by API Priority and Fairness.
    pub fn flow_rejected(&self, class: &kumo_api::flowcontrol::Classification, reason: &str) {
        let labels = FlowLabels {
            flow_schema: class.flow_schema.clone(),
            priority_level: class.priority_level.clone(),
            reason: reason.to_string(),
        };
        self.rejected.get_or_create(&labels).inc();
    }

    /// Everything, in Prometheus' text exposition format.
    pub fn text(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_labels_and_timed_unless_watches() {
        let m = Metrics::default();
        let labels = |verb: &str, code: &str| RequestLabels {
            verb: verb.into(),
            group: "".into(),
            version: "v1".into(),
            resource: "events".into(),
            subresource: "".into(),
            code: code.into(),
        };
        m.observe(labels("create", "201"), Duration::from_millis(3));
        m.observe(labels("create", "201"), Duration::from_millis(5));
        m.observe(labels("watch", "200"), Duration::from_secs(300));
        let text = m.text();
        assert!(
            text.contains(
                r#"apiserver_request_total{verb="create",group="",version="v1",resource="events",subresource="",code="201"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"apiserver_request_duration_seconds_count{verb="create",resource="events"} 2"#),
            "{text}"
        );
        assert!(!text.contains(r#"apiserver_request_duration_seconds_count{verb="watch""#), "{text}");
    }
}
