//! Checks every object gets whatever its kind: names, namespace, labels, annotations, apiVersion/kind.

use crate::meta;
use crate::resource::ResourceDef;
use crate::status::Cause;
use serde_json::Value;

/// Objects larger than this are refused (as etcd's default request limit makes Kubernetes do).
pub const MAX_OBJECT_BYTES: usize = 1_572_864;
const MAX_ANNOTATION_BYTES: usize = 256 * 1024;

/// RFC 1123 label: what namespaces (and label-value-like names) must be.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: what most object names must be.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

fn name_cause(def: &ResourceDef, name: &str) -> Option<Cause> {
    let (ok, what) = if def.kind == "Namespace" {
        (is_dns1123_label(name), "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character")
    } else {
        (is_dns1123_subdomain(name), "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character")
    };
    (!ok).then(|| Cause::invalid("metadata.name", format!("Invalid value: \"{name}\": {what}")))
}

fn qualified_name_ok(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    name_ok && prefix.is_none_or(is_dns1123_subdomain)
}

fn label_value_ok(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// Validates metadata common to every kind. `url_namespace` is the namespace from the request path.
pub fn validate_metadata(def: &ResourceDef, obj: &Value, url_namespace: Option<&str>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = meta::name(obj);
    if name.is_empty() {
        causes.push(Cause::required("metadata.name"));
    } else if let Some(c) = name_cause(def, name) {
        causes.push(c);
    }
    if def.namespaced {
        match (meta::namespace(obj), url_namespace) {
            (Some(a), Some(b)) if a != b => causes.push(Cause::invalid(
                "metadata.namespace",
                format!("Invalid value: \"{a}\": the namespace of the provided object does not match the namespace sent on the request"),
            )),
            (None, None) => causes.push(Cause::required("metadata.namespace")),
            _ => {}
        }
    }
    if let Some(labels) = obj.pointer("/metadata/labels") {
        match labels.as_object() {
            Some(m) => {
                for (k, v) in m {
                    if !qualified_name_ok(k) {
                        causes.push(Cause::invalid("metadata.labels", format!("Invalid value: \"{k}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character")));
                    }
                    match v.as_str() {
                        Some(s) if label_value_ok(s) => {}
                        _ => causes.push(Cause::invalid(
                            "metadata.labels",
                            format!("Invalid value: {v}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
                        )),
                    }
                }
            }
            None if labels.is_null() => {}
            None => causes.push(Cause::invalid("metadata.labels", "must be a map of strings")),
        }
    }
    if let Some(ann) = obj.pointer("/metadata/annotations") {
        match ann.as_object() {
            Some(m) => {
                let total: usize = m.iter().map(|(k, v)| k.len() + v.as_str().map_or(0, str::len)).sum();
                if total > MAX_ANNOTATION_BYTES {
                    causes.push(Cause::invalid(
                        "metadata.annotations",
                        format!("Too long: must have at most {MAX_ANNOTATION_BYTES} bytes"),
                    ));
                }
                for (k, v) in m {
                    if !qualified_name_ok(k) {
                        causes.push(Cause::invalid(
                            "metadata.annotations",
                            format!("Invalid value: \"{k}\": invalid key"),
                        ));
                    }
                    if !v.is_string() {
                        causes.push(Cause::invalid(format!("metadata.annotations.{k}"), "must be a string"));
                    }
                }
            }
            None if ann.is_null() => {}
            None => causes.push(Cause::invalid("metadata.annotations", "must be a map of strings")),
        }
    }
    if let Some(f) = obj.pointer("/metadata/finalizers") {
        let ok = f.as_array().is_some_and(|a| a.iter().all(|x| x.as_str().is_some_and(qualified_name_ok)));
        if !ok && !f.is_null() {
            causes.push(Cause::invalid("metadata.finalizers", "must be a list of qualified names"));
        }
    }
    causes
}

/// apiVersion and kind must name the endpoint's kind (or be empty, which the server fills in).
pub fn validate_type_meta(def: &ResourceDef, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    match obj.get("kind").and_then(Value::as_str) {
        Some(k) if k != def.kind => {
            causes.push(Cause::invalid("kind", format!("Invalid value: \"{k}\": must be {}", def.kind)))
        }
        _ => {}
    }
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some(v) if v != def.api_version() => {
            causes.push(Cause::invalid("apiVersion", format!("Invalid value: \"{v}\": must be {}", def.api_version())))
        }
        _ => {}
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::builtin_resources;
    use serde_json::json;

    fn cm() -> ResourceDef {
        builtin_resources().into_iter().find(|d| d.kind == "ConfigMap").unwrap()
    }

    #[test]
    fn names() {
        assert!(is_dns1123_subdomain("a.b-c"));
        assert!(!is_dns1123_subdomain("A"));
        assert!(!is_dns1123_label("a.b"));
        let bad = json!({"metadata": {"name": "Bad_Name", "namespace": "default"}});
        let causes = validate_metadata(&cm(), &bad, Some("default"));
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "metadata.name");
    }

    #[test]
    fn labels_and_namespace_mismatch() {
        let o = json!({"metadata": {"name": "x", "namespace": "a", "labels": {"ok": "-bad"}}});
        let fields: Vec<String> = validate_metadata(&cm(), &o, Some("b")).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, vec!["metadata.namespace", "metadata.labels"]);
    }
}
