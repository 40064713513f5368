//! Conversions between representations that share storage. `events.k8s.io/v1` Events are stored as
//! `core/v1` Events (as in Kubernetes), so an event written by a controller through either API shows up in both —
//! `kubectl describe` reads core/v1.

use serde_json::{json, Map, Value};

/// (events.k8s.io/v1 field, core/v1 field) pairs that differ only in name.
const EVENT_RENAMES: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename(obj: &Value, to_core: bool, api_version: &str) -> Value {
    let Some(m) = obj.as_object() else { return obj.clone() };
    let mut out = Map::new();
    for (k, v) in m {
        let renamed = EVENT_RENAMES
            .iter()
            .find(|(new, old)| if to_core { new == k } else { old == k })
            .map(|(new, old)| if to_core { *old } else { *new })
            .unwrap_or(k.as_str());
        out.insert(renamed.to_string(), v.clone());
    }
    out.insert("apiVersion".into(), Value::String(api_version.into()));
    out.insert("kind".into(), Value::String("Event".into()));
    Value::Object(out)
}

/// An `events.k8s.io/v1` Event in its stored (`core/v1`) form; other objects unchanged.
pub fn event_to_core(obj: &Value) -> Value {
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some("events.k8s.io/v1") => rename(obj, true, "v1"),
        _ => obj.clone(),
    }
}

/// A stored `core/v1` Event as `events.k8s.io/v1`; other objects unchanged.
pub fn event_from_core(obj: &Value) -> Value {
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some("v1") => rename(obj, false, "events.k8s.io/v1"),
        _ => obj.clone(),
    }
}

/// Gives a stored (core/v1) Event the fields kubectl users sort and filter by, from their events.k8s.io
/// counterparts when a client left them out: `firstTimestamp` and `lastTimestamp` (the event time, the series'
/// last observation, else the creation time), `count` (the series' count, else 1) and `source.component`.
pub fn fill_legacy_event_fields(ev: &mut Value) {
    let Some(m) = ev.as_object_mut() else { return };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
    let created = text(m.get("metadata").and_then(|md| md.get("creationTimestamp")));
    let event_time = text(m.get("eventTime"));
    let series = m.get("series").cloned().unwrap_or(Value::Null);
    // Kubernetes' MicroTime has microseconds; Time (the legacy fields) whole seconds.
    let seconds = |t: String| match t.split_once('.') {
        Some((s, _)) => format!("{s}Z"),
        None => t,
    };
    let first = text(m.get("firstTimestamp")).or_else(|| event_time.clone().map(seconds)).or(created);
    if m.get("firstTimestamp").is_none_or(Value::is_null) {
        if let Some(f) = &first {
            m.insert("firstTimestamp".into(), json!(f));
        }
    }
    if m.get("lastTimestamp").is_none_or(Value::is_null) {
        let last = text(series.get("lastObservedTime")).map(seconds).or(first);
        if let Some(l) = last {
            m.insert("lastTimestamp".into(), json!(l));
        }
    }
    if m.get("count").is_none_or(Value::is_null) {
        m.insert("count".into(), json!(series.get("count").and_then(Value::as_i64).unwrap_or(1)));
    }
    if m.get("source").and_then(|s| s.get("component")).is_none() {
        if let Some(c) = text(m.get("reportingComponent")) {
            let host = text(m.get("reportingInstance"));
            m.insert("source".into(), json!({"component": c, "host": host}));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_without_legacy_fields_get_them() {
        let mut e = event_to_core(&json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e", "creationTimestamp": "2026-01-01T00:00:09Z"}, "reason": "R",
            "eventTime": "2026-01-01T00:00:01.123456Z", "reportingController": "ctl", "reportingInstance": "n1",
            "series": {"count": 4, "lastObservedTime": "2026-01-01T00:00:05.000001Z"}}));
        fill_legacy_event_fields(&mut e);
        assert_eq!(e["firstTimestamp"], "2026-01-01T00:00:01Z");
        assert_eq!(e["lastTimestamp"], "2026-01-01T00:00:05Z");
        assert_eq!(e["count"], 4);
        assert_eq!(e["source"], json!({"component": "ctl", "host": "n1"}));
        // What a client gave is kept.
        let mut core = json!({"metadata": {"creationTimestamp": "2026-01-01T00:00:09Z"}, "count": 2,
            "lastTimestamp": "2026-01-01T00:00:08Z", "source": {"component": "me"}});
        fill_legacy_event_fields(&mut core);
        assert_eq!((core["count"].as_i64(), core["lastTimestamp"].as_str()), (Some(2), Some("2026-01-01T00:00:08Z")));
        assert_eq!(core["firstTimestamp"], "2026-01-01T00:00:09Z");
        assert_eq!(core["source"], json!({"component": "me"}));
    }

    #[test]
    fn round_trip() {
        let e = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
            "regarding": {"kind": "Widget", "name": "w"}, "note": "hello", "reason": "Started",
            "reportingController": "kumo", "eventTime": "2026-01-01T00:00:00.000000Z"});
        let core = event_to_core(&e);
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "w");
        assert_eq!(core["message"], "hello");
        assert_eq!(core["reportingComponent"], "kumo");
        assert!(core.get("note").is_none());
        assert_eq!(event_from_core(&core), e);
    }
}
