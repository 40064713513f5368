//! `meta.k8s.io/v1` Table responses, so `kubectl get` prints a kind's real columns.

use crate::jsonpath;
use crate::resource::{PrinterColumn, ResourceDef};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// Column definitions: Name first, then the kind's printer columns.
pub fn column_definitions(def: &ResourceDef) -> Vec<Value> {
    let mut cols = vec![json!({"name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace."})];
    for c in columns(def) {
        cols.push(json!({"name": c.name, "type": c.type_, "format": c.format, "priority": c.priority,
            "description": c.description}));
    }
    cols
}

fn columns(def: &ResourceDef) -> Vec<PrinterColumn> {
    if def.printer_columns.is_empty() {
        vec![PrinterColumn::new("Age", "date", ".metadata.creationTimestamp", "")]
    } else {
        def.printer_columns.clone()
    }
}

/// One row for `obj`; `include_object` is `None`, `Metadata` (the default) or `Object`.
pub fn row(def: &ResourceDef, obj: &Value, include_object: &str, now: DateTime<Utc>) -> Value {
    let mut name = obj.pointer("/metadata/name").cloned().unwrap_or(Value::Null);
    if def.builtin == Some(crate::resource::Builtin::StorageClass) && crate::storage::is_default_class(obj) {
        // kubectl marks the default class in the name column.
        name = Value::String(format!("{} (default)", name.as_str().unwrap_or_default()));
    }
    let mut cells = vec![name];
    for c in columns(def) {
        cells.push(cell(&c, obj, now));
    }
    let object = match include_object {
        "None" => Value::Null,
        "Object" => obj.clone(),
        _ => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or(json!({}))}),
    };
    let mut r = json!({"cells": cells});
    if !object.is_null() {
        r["object"] = object;
    }
    r
}

pub fn table(def: &ResourceDef, objs: &[Value], include_object: &str, list_meta: Value, with_columns: bool) -> Value {
    let now = Utc::now();
    let rows: Vec<Value> = objs.iter().map(|o| row(def, o, include_object, now)).collect();
    let mut t = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "rows": rows});
    // kubectl only needs the columns once per watch; Kubernetes omits them after the first event.
    t["columnDefinitions"] = if with_columns { Value::Array(column_definitions(def)) } else { json!([]) };
    t
}

fn cell(c: &PrinterColumn, obj: &Value, now: DateTime<Utc>) -> Value {
    let value = computed(&c.json_path, obj).unwrap_or_else(|| {
        let hits = jsonpath::query(obj, &c.json_path).unwrap_or_default();
        match hits.len() {
            0 => Value::Null,
            1 => hits[0].clone(),
            _ => Value::String(hits.iter().map(|h| jsonpath::scalar_string(h)).collect::<Vec<_>>().join(",")),
        }
    });
    match (c.type_.as_str(), &value) {
        ("date", Value::String(s)) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => Value::String(human_duration(now.signed_duration_since(t.with_timezone(&Utc)))),
            Err(_) => value,
        },
        ("string", Value::Null) => Value::String("<none>".into()),
        ("string", v) if !v.is_string() => Value::String(jsonpath::scalar_string(v)),
        _ => value,
    }
}

/// Columns Kubernetes computes in Go rather than by JSONPath, named like functions in our builtin defs.
fn computed(path: &str, obj: &Value) -> Option<Value> {
    let (func, arg) = path.strip_suffix(')')?.split_once('(')?;
    let arg_values = |a: &str| -> Vec<Value> {
        a.split(',').flat_map(|p| jsonpath::query(obj, p.trim()).unwrap_or_default()).cloned().collect()
    };
    Some(match func {
        "count" => {
            let n: usize = arg_values(arg)
                .iter()
                .map(|v| match v {
                    Value::Object(m) => m.len(),
                    Value::Array(a) => a.len(),
                    _ => 0,
                })
                .sum();
            json!(n)
        }
        "nodeReady" => {
            let ready = jsonpath::query(obj, ".status.conditions[?(@.type==\"Ready\")].status").ok()?;
            let s = match ready.first().and_then(|v| v.as_str()) {
                Some("True") => "Ready",
                Some(_) => "NotReady",
                None => "Unknown",
            };
            let unsched = obj.pointer("/spec/unschedulable").and_then(Value::as_bool).unwrap_or(false);
            json!(if unsched { format!("{s},SchedulingDisabled") } else { s.to_string() })
        }
        "nodeRoles" => {
            let roles: Vec<&str> = obj
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .map(|m| m.keys().filter_map(|k| k.strip_prefix("node-role.kubernetes.io/")).collect())
                .unwrap_or_default();
            json!(if roles.is_empty() { "<none>".to_string() } else { roles.join(",") })
        }
        "eventLastSeen" => ["/lastTimestamp", "/eventTime", "/series/lastObservedTime", "/deprecatedLastTimestamp"]
            .iter()
            .filter_map(|p| obj.pointer(p))
            .find(|v| v.is_string())
            .cloned()
            .or_else(|| obj.pointer("/metadata/creationTimestamp").cloned())
            .unwrap_or(Value::Null),
        // Empty (not `<none>`) when unset, as kubectl prints these columns.
        "orEmpty" => arg_values(arg).into_iter().next().unwrap_or(json!("")),
        "orUnset" => arg_values(arg).into_iter().next().unwrap_or(json!("<unset>")),
        "orFalse" => arg_values(arg).into_iter().next().unwrap_or(json!(false)),
        "accessModes" => {
            let modes = arg_values(arg).into_iter().next().unwrap_or(Value::Null);
            json!(crate::storage::short_access_modes(modes.as_array().map(Vec::as_slice).unwrap_or_default()))
        }
        "claimRef" => match arg_values(arg).into_iter().next() {
            Some(r) => json!(format!(
                "{}/{}",
                r.get("namespace").and_then(Value::as_str).unwrap_or_default(),
                r.get("name").and_then(Value::as_str).unwrap_or_default()
            )),
            None => json!(""),
        },
        "eventObject" => {
            let o = arg_values(arg).into_iter().next().unwrap_or(Value::Null);
            let kind = o.get("kind").and_then(Value::as_str).unwrap_or("").to_lowercase();
            let name = o.get("name").and_then(Value::as_str).unwrap_or("");
            json!(format!("{kind}/{name}"))
        }
        _ => return None,
    })
}

/// Ages the way kubectl prints them: `45s`, `3m20s`, `5h3m`, `4d`, `2y30d`.
pub fn human_duration(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 8 * 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s if s < 8 * 86400 => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
        s if s < 2 * 365 * 86400 => format!("{}d", s / 86400),
        s => format!("{}y{}d", s / (365 * 86400), (s % (365 * 86400)) / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::builtin_resources;

    #[test]
    fn configmap_row_counts_keys_and_ages() {
        let def = builtin_resources().into_iter().find(|d| d.kind == "ConfigMap").unwrap();
        let now = Utc::now();
        let created = (now - chrono::Duration::seconds(300)).to_rfc3339();
        let obj = json!({"metadata": {"name": "c", "creationTimestamp": created}, "data": {"a": "1", "b": "2"}});
        let r = row(&def, &obj, "Metadata", now);
        assert_eq!(r["cells"], json!(["c", 2, "5m0s"]));
        assert_eq!(r["object"]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(chrono::Duration::seconds(59)), "59s");
        assert_eq!(human_duration(chrono::Duration::seconds(3 * 86400 + 7200)), "3d2h");
    }
}
