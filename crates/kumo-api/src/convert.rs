//! Conversions between representations that share storage. `events.k8s.io/v1` Events are stored as
//! `core/v1` Events (as in Kubernetes), so an event written by a controller through either API shows up in both —
//! `kubectl describe` reads core/v1.

use serde_json::{Map, Value};

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
