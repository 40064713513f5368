//! OpenAPI v3 structural schemas (a CRD's `openAPIV3Schema`): validation, pruning of unknown fields, and
//! defaulting — what the Kubernetes API server does for custom resources.

use crate::status::Cause;
use serde_json::{Map, Value};

/// What checking an object against its schema found.
#[derive(Debug, Default)]
pub struct Findings {
    /// Fields the schema does not declare (pruned from the object unless validation is Strict).
    pub unknown: Vec<String>,
    pub causes: Vec<Cause>,
}

/// Applies `default`s, checks the object, and removes (prunes) fields the schema does not know.
pub fn process(obj: &mut Value, schema: &Value) -> Findings {
    let mut f = Findings::default();
    default(obj, schema);
    walk(obj, schema, "", true, &mut f);
    f
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn preserves(schema: &Value) -> bool {
    schema.get("x-kubernetes-preserve-unknown-fields").and_then(Value::as_bool).unwrap_or(false)
}

/// Defaults fill absent fields of objects that exist; they never create a parent object.
pub fn default(obj: &mut Value, schema: &Value) {
    match obj {
        Value::Object(m) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, s) in props {
                    if !m.contains_key(k) {
                        if let Some(d) = s.get("default") {
                            m.insert(k.clone(), d.clone());
                        }
                    }
                    if let Some(child) = m.get_mut(k) {
                        default(child, s);
                    }
                }
            } else if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for v in m.values_mut() {
                    default(v, ap);
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = schema.get("items") {
                for v in a.iter_mut() {
                    default(v, items);
                }
            }
        }
        _ => {}
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn walk(v: &mut Value, schema: &Value, path: &str, root: bool, f: &mut Findings) {
    let nullable = schema.get("nullable").and_then(Value::as_bool).unwrap_or(false);
    if v.is_null() && nullable {
        return;
    }
    let int_or_string = schema.get("x-kubernetes-int-or-string").and_then(Value::as_bool).unwrap_or(false);
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let actual = type_name(v);
        let ok = actual == t
            || (t == "number" && actual == "integer")
            || (int_or_string && matches!(actual, "integer" | "string"));
        if !ok {
            f.causes.push(Cause::invalid(
                path,
                format!("Invalid value: \"{actual}\": {path} in body must be of type {t}: \"{actual}\""),
            ));
            return;
        }
    } else if int_or_string && !matches!(type_name(v), "integer" | "string") {
        f.causes.push(Cause::invalid(path, format!("{path} in body must be an integer or a string")));
        return;
    }
    check_constraints(v, schema, path, f);
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(list) = schema.get(key).and_then(Value::as_array) {
            let passing = list
                .iter()
                .filter(|s| {
                    let mut sub = Findings::default();
                    let mut copy = v.clone();
                    walk_no_prune(&mut copy, s, path, &mut sub);
                    sub.causes.is_empty()
                })
                .count();
            let ok = match key {
                "allOf" => passing == list.len(),
                "anyOf" => passing > 0,
                _ => passing == 1,
            };
            if !ok {
                f.causes.push(Cause::invalid(path, format!("{path} in body must validate {key}")));
            }
        }
    }
    match v {
        Value::Object(m) => walk_object(m, schema, path, root, f),
        Value::Array(a) => {
            if let Some(items) = schema.get("items") {
                for (i, item) in a.iter_mut().enumerate() {
                    walk(item, items, &format!("{path}[{i}]"), false, f);
                }
            }
        }
        _ => {}
    }
}

fn walk_no_prune(v: &mut Value, schema: &Value, path: &str, f: &mut Findings) {
    // Sub-schemas of anyOf/oneOf constrain values but do not declare fields; validate without pruning.
    check_constraints(v, schema, path, f);
    if let (Some(t), actual) = (schema.get("type").and_then(Value::as_str), type_name(v)) {
        if t != actual && !(t == "number" && actual == "integer") {
            f.causes.push(Cause::invalid(path, format!("must be of type {t}")));
        }
    }
    if let (Value::Object(m), Some(props)) = (&mut *v, schema.get("properties").and_then(Value::as_object)) {
        for (k, s) in props {
            if let Some(child) = m.get_mut(k) {
                walk_no_prune(child, s, &join(path, k), f);
            }
        }
    }
}

fn walk_object(m: &mut Map<String, Value>, schema: &Value, path: &str, root: bool, f: &mut Findings) {
    let embedded = schema.get("x-kubernetes-embedded-resource").and_then(Value::as_bool).unwrap_or(false);
    let props = schema.get("properties").and_then(Value::as_object);
    if let Some(req) = schema.get("required").and_then(Value::as_array) {
        for r in req.iter().filter_map(Value::as_str) {
            if !m.contains_key(r) {
                f.causes.push(Cause::required(join(path, r)));
            }
        }
    }
    let additional = schema.get("additionalProperties");
    let keys: Vec<String> = m.keys().cloned().collect();
    for k in keys {
        let child_path = join(path, &k);
        if (root || embedded) && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            // ObjectMeta is validated separately; a schema may still constrain metadata.name etc.
            continue;
        }
        if let Some(s) = props.and_then(|p| p.get(&k)) {
            walk(m.get_mut(&k).expect("present"), s, &child_path, false, f);
        } else if let Some(ap) = additional.filter(|a| a.is_object()) {
            walk(m.get_mut(&k).expect("present"), ap, &child_path, false, f);
        } else if additional.and_then(Value::as_bool) == Some(true) || preserves(schema) {
            continue;
        } else if props.is_some() || !preserves(schema) {
            f.unknown.push(child_path);
            m.remove(&k);
        }
    }
}

fn check_constraints(v: &Value, s: &Value, path: &str, f: &mut Findings) {
    let num = |k: &str| s.get(k).and_then(Value::as_f64);
    if let Some(allowed) = s.get("enum").and_then(Value::as_array) {
        if !allowed.contains(v) {
            let list: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
            f.causes.push(Cause {
                reason: "FieldValueNotSupported".into(),
                message: format!("Unsupported value: {v}: supported values: {}", list.join(", ")),
                field: path.into(),
            });
        }
    }
    match v {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(min) = num("minimum") {
                let excl = s.get("exclusiveMinimum").and_then(Value::as_bool).unwrap_or(false);
                if x < min || (excl && x == min) {
                    f.causes.push(Cause::invalid(
                        path,
                        format!("Invalid value: {x}: {path} in body should be greater than or equal to {min}"),
                    ));
                }
            }
            if let Some(max) = num("maximum") {
                let excl = s.get("exclusiveMaximum").and_then(Value::as_bool).unwrap_or(false);
                if x > max || (excl && x == max) {
                    f.causes.push(Cause::invalid(
                        path,
                        format!("Invalid value: {x}: {path} in body should be less than or equal to {max}"),
                    ));
                }
            }
        }
        Value::String(st) => {
            let len = st.chars().count() as f64;
            if num("minLength").is_some_and(|m| len < m) {
                f.causes.push(Cause::invalid(
                    path,
                    format!("{path} in body should be at least {} chars long", num("minLength").unwrap_or(0.0)),
                ));
            }
            if num("maxLength").is_some_and(|m| len > m) {
                f.causes.push(Cause::invalid(
                    path,
                    format!("Too long: may not be more than {} bytes", num("maxLength").unwrap_or(0.0)),
                ));
            }
            if let Some(p) = s.get("pattern").and_then(Value::as_str) {
                if let Ok(re) = regex::Regex::new(p) {
                    if !re.is_match(st) {
                        f.causes.push(Cause::invalid(
                            path,
                            format!("Invalid value: \"{st}\": {path} in body should match '{p}'"),
                        ));
                    }
                }
            }
        }
        Value::Array(a) => {
            let len = a.len() as f64;
            if num("minItems").is_some_and(|m| len < m) {
                f.causes.push(Cause::invalid(
                    path,
                    format!("{path} in body should have at least {} items", num("minItems").unwrap_or(0.0)),
                ));
            }
            if num("maxItems").is_some_and(|m| len > m) {
                f.causes.push(Cause::invalid(
                    path,
                    format!("Too many: {len}: must have at most {} items", num("maxItems").unwrap_or(0.0)),
                ));
            }
        }
        Value::Object(m) => {
            let len = m.len() as f64;
            if num("maxProperties").is_some_and(|x| len > x) {
                f.causes.push(Cause::invalid(path, "too many properties"));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["image"], "properties": {
                "image": {"type": "string", "minLength": 1},
                "replicas": {"type": "integer", "default": 1, "minimum": 0},
                "mode": {"type": "string", "enum": ["a", "b"]},
                "port": {"x-kubernetes-int-or-string": true},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "tags": {"type": "object", "additionalProperties": {"type": "string"}}
            }},
            "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
        }})
    }

    #[test]
    fn defaults_prunes_and_validates() {
        let mut o = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n"},
            "spec": {"image": "i", "bogus": 1, "port": "http", "extra": {"anything": [1]}, "tags": {"a": "b"}}});
        let f = process(&mut o, &schema());
        assert!(f.causes.is_empty(), "{:?}", f.causes);
        assert_eq!(f.unknown, vec!["spec.bogus"]);
        assert_eq!(o["spec"]["replicas"], 1);
        assert!(o["spec"].get("bogus").is_none());
        assert_eq!(o["spec"]["extra"]["anything"], json!([1]));
    }

    #[test]
    fn reports_each_bad_field() {
        let mut o = json!({"spec": {"replicas": -1, "mode": "c", "tags": {"a": 1}}});
        let f = process(&mut o, &schema());
        let fields: Vec<&str> = f.causes.iter().map(|c| c.field.as_str()).collect();
        assert!(fields.contains(&"spec.image"), "{fields:?}");
        assert!(fields.contains(&"spec.replicas"));
        assert!(fields.contains(&"spec.mode"));
        assert!(fields.contains(&"spec.tags.a"));
    }
}
