//! The API server's metrics, in Prometheus' text format at `/metrics` (admin only), under the names
//! Kubernetes uses: `apiserver_request_total` (by verb, group, version, resource, subresource, code) and
//! `apiserver_request_duration_seconds` (by verb and resource; watches, which last, are not timed),
//! `apiserver_resource_objects` (stored objects per resource, counted at most once a minute, as kube-apiserver
//! counts them periodically) and `apiserver_longrunning_requests` (live watches per resource).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::{Duration, Instant};

/// What `/metrics` (and a node's, proxied) is: prometheus-client encodes OpenMetrics text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Counting every resource's keys is a scan of the store's index: not more often than this.
const COUNT_EVERY: Duration = Duration::from_secs(60);

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    group: String,
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LongRunningLabels {
    verb: String,
    group: String,
    resource: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Histograms,
    rejected: Family<FlowLabels, Counter>,
    objects: Family<ResourceLabels, Gauge>,
    watches: Family<LongRunningLabels, Gauge>,
    counted: std::sync::Mutex<Option<Instant>>,
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
        let objects = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "apiserver_resource_objects",
            "Objects stored, by group and resource (counted at most once a minute)",
            objects.clone(),
        );
        let watches = Family::<LongRunningLabels, Gauge>::default();
        registry.register(
            "apiserver_longrunning_requests",
            "Requests open now that last (watches), by verb, group and resource",
            watches.clone(),
        );
        Metrics { registry, requests, durations, rejected, objects, watches, counted: Default::default() }
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

    /// Whether the stored objects are due to be counted again (once a minute at most).
    fn count_due(&self) -> bool {
        let mut c = self.counted.lock().expect("lock");
        if c.is_some_and(|t| t.elapsed() < COUNT_EVERY) {
            return false;
        }
        *c = Some(Instant::now());
        true
    }

    fn set_objects(&self, counts: &[((String, String), i64)]) {
        self.objects.clear();
        for ((group, resource), n) in counts {
            self.objects.get_or_create(&ResourceLabels { group: group.clone(), resource: resource.clone() }).set(*n);
        }
    }

    fn set_watches(&self, counts: &[((String, String), usize)]) {
        self.watches.clear();
        for ((group, resource), n) in counts {
            let l = LongRunningLabels { verb: "WATCH".into(), group: group.clone(), resource: resource.clone() };
            self.watches.get_or_create(&l).set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }

    /// Everything, in Prometheus' text exposition format.
    pub fn text(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// The metrics with what is counted at scrape time brought up to date: live watches always, stored objects
/// when due.
pub async fn scrape(api: &crate::state::ApiServer) -> String {
    // One entry per stored resource: all served versions share a key prefix.
    let mut by_prefix = std::collections::BTreeMap::new();
    for def in api.registry.all() {
        by_prefix.entry(def.key_prefix()).or_insert_with(|| (def.group.clone(), def.plural.clone()));
    }
    let mut watches = std::collections::BTreeMap::<(String, String), usize>::new();
    let caches = if std::sync::Arc::ptr_eq(&api.cache, &api.events_cache) {
        vec![&api.cache]
    } else {
        vec![&api.cache, &api.events_cache]
    };
    for cache in caches {
        for (prefix, n) in cache.watchers() {
            // A watch over several resources has none to name.
            let key = prefix.and_then(|p| by_prefix.get(&p).cloned()).unwrap_or_default();
            *watches.entry(key).or_default() += n;
        }
    }
    api.metrics.set_watches(&watches.into_iter().collect::<Vec<_>>());
    if api.metrics.count_due() {
        let mut counts = Vec::with_capacity(by_prefix.len());
        for (prefix, names) in by_prefix {
            let req = kumo_store::RangeRequest { prefix: prefix.clone(), limit: 1, ..Default::default() };
            match api.objects.store_for(&prefix).range(req).await {
                Ok(r) => counts.push((names, r.kvs.len() as i64 + r.remaining)),
                Err(e) => tracing::warn!("metrics: counting {prefix}: {e}"),
            }
        }
        api.metrics.set_objects(&counts);
    }
    api.metrics.text()
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

    #[test]
    fn counted_objects_and_watches_replace_the_last_count() {
        let m = Metrics::default();
        let vms = ("kubevirt.io".to_string(), "virtualmachines".to_string());
        let pods = ("".to_string(), "configmaps".to_string());
        m.set_objects(&[(vms.clone(), 3), (pods.clone(), 1)]);
        m.set_watches(&[(vms.clone(), 2)]);
        let text = m.text();
        assert!(
            text.contains(r#"apiserver_resource_objects{group="kubevirt.io",resource="virtualmachines"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"apiserver_longrunning_requests{verb="WATCH",group="kubevirt.io",resource="virtualmachines"} 2"#
            ),
            "{text}"
        );
        // A resource no longer counted (a CRD removed) and watches that ended leave no stale series.
        m.set_objects(&[(vms, 4)]);
        m.set_watches(&[]);
        let text = m.text();
        assert!(!text.contains(r#"resource="configmaps""#), "{text}");
        assert!(!text.contains("apiserver_longrunning_requests{"), "{text}");
        assert!(m.count_due() && !m.count_due(), "counted at most once a minute");
    }
}
