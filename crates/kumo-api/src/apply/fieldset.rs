//! Sets of field paths, as `metadata.managedFields[].fieldsV1` encodes them.
//!
//! A path is a list of encoded path elements: `f:<field>` for a map field, `k:{"name":"a"}` for the item of a
//! keyed list (key fields sorted), `v:"x"` for a set value, `i:<n>` for a list index. A set is a tree; each node
//! says whether its own path is in the set (a *member*). In FieldsV1 a member leaf is `{}` and a member with
//! children carries `".": {}`.

use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// A set of field paths.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSet {
    member: bool,
    children: BTreeMap<String, FieldSet>,
}

/// `f:<name>`.
pub fn field(name: &str) -> String {
    format!("f:{name}")
}

/// `v:<json>` for a set value.
pub fn value(v: &Value) -> String {
    format!("v:{}", canonical(v))
}

/// `k:{...}` for a keyed list item, from its key fields (sorted by name).
pub fn key(fields: &[(&str, &Value)]) -> String {
    let mut sorted: Vec<&(&str, &Value)> = fields.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let parts: Vec<String> =
        sorted.iter().map(|(k, v)| format!("{}:{}", canonical(&Value::from(*k)), canonical(v))).collect();
    format!("k:{{{}}}", parts.join(","))
}

/// JSON with object keys sorted, so equal values encode alike.
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            let parts: Vec<String> =
                keys.iter().map(|k| format!("{}:{}", canonical(&Value::from(k.as_str())), canonical(&o[*k]))).collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(canonical).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

/// Re-encodes a path element read from stored FieldsV1 so it compares equal to ours.
fn normalize_element(pe: &str) -> String {
    if let Some(json) = pe.strip_prefix("k:") {
        if let Ok(Value::Object(o)) = serde_json::from_str::<Value>(json) {
            let fields: Vec<(&str, &Value)> = o.iter().map(|(k, v)| (k.as_str(), v)).collect();
            return key(&fields);
        }
    } else if let Some(json) = pe.strip_prefix("v:") {
        if let Ok(v) = serde_json::from_str::<Value>(json) {
            return value(&v);
        }
    }
    pe.to_string()
}

/// A path as Kubernetes prints it in conflicts: `.spec.containers[name="nginx"].image`, `.finalizers[="x"]`.
pub fn path_string(path: &[String]) -> String {
    let mut out = String::new();
    for pe in path {
        if let Some(name) = pe.strip_prefix("f:") {
            out.push('.');
            out.push_str(name);
        } else if let Some(json) = pe.strip_prefix("k:") {
            let parts: Vec<String> = match serde_json::from_str::<Value>(json) {
                Ok(Value::Object(o)) => o.iter().map(|(k, v)| format!("{k}={}", canonical(v))).collect(),
                _ => vec![json.to_string()],
            };
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(json) = pe.strip_prefix("v:") {
            out.push_str(&format!("[={json}]"));
        } else if let Some(i) = pe.strip_prefix("i:") {
            out.push_str(&format!("[{i}]"));
        } else {
            out.push_str(pe);
        }
    }
    out
}

impl FieldSet {
    pub fn new() -> Self {
        FieldSet::default()
    }

    pub fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    /// Whether this node's own path is in the set.
    pub fn is_member(&self) -> bool {
        self.member
    }

    pub fn child(&self, pe: &str) -> Option<&FieldSet> {
        self.children.get(pe)
    }

    /// Adds `path` to the set.
    pub fn insert(&mut self, path: &[String]) {
        let mut node = self;
        for pe in path {
            node = node.children.entry(pe.clone()).or_default();
        }
        node.member = true;
    }

    /// Removes `path` (not what lies under it) from the set.
    pub fn remove(&mut self, path: &[String]) {
        if let Some((first, rest)) = path.split_first() {
            if let Some(c) = self.children.get_mut(first) {
                c.remove(rest);
                if c.is_empty() {
                    self.children.remove(first);
                }
            }
        } else {
            self.member = false;
        }
    }

    pub fn contains(&self, path: &[String]) -> bool {
        match path.split_first() {
            None => self.member,
            Some((first, rest)) => self.children.get(first).is_some_and(|c| c.contains(rest)),
        }
    }

    pub fn union(&self, other: &FieldSet) -> FieldSet {
        let mut out = self.clone();
        out.member |= other.member;
        for (pe, c) in &other.children {
            let merged = match out.children.get(pe) {
                Some(mine) => mine.union(c),
                None => c.clone(),
            };
            out.children.insert(pe.clone(), merged);
        }
        out
    }

    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet { member: self.member && !other.member, children: BTreeMap::new() };
        for (pe, c) in &self.children {
            let d = match other.children.get(pe) {
                Some(o) => c.difference(o),
                None => c.clone(),
            };
            if !d.is_empty() {
                out.children.insert(pe.clone(), d);
            }
        }
        out
    }

    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet { member: self.member && other.member, children: BTreeMap::new() };
        for (pe, c) in &self.children {
            if let Some(o) = other.children.get(pe) {
                let i = c.intersection(o);
                if !i.is_empty() {
                    out.children.insert(pe.clone(), i);
                }
            }
        }
        out
    }

    /// Every path in the set, in order (a parent before its children).
    pub fn paths(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if self.member {
            out.push(prefix.clone());
        }
        for (pe, c) in &self.children {
            prefix.push(pe.clone());
            c.collect(prefix, out);
            prefix.pop();
        }
    }

    /// Reads a `fieldsV1` value; anything that is not an object is the empty set.
    pub fn from_fields_v1(v: &Value) -> FieldSet {
        let mut set = FieldSet::read(v);
        set.member = false; // the root is never a member; `{}` at the root is the empty set
        set
    }

    fn read(v: &Value) -> FieldSet {
        let Value::Object(o) = v else {
            return FieldSet::new();
        };
        let mut set = FieldSet { member: o.is_empty() || o.contains_key("."), children: BTreeMap::new() };
        for (pe, c) in o {
            if pe != "." {
                let child = FieldSet::read(c);
                if !child.is_empty() {
                    set.children.insert(normalize_element(pe), child);
                }
            }
        }
        set
    }

    /// Writes the set as a `fieldsV1` value.
    pub fn to_fields_v1(&self) -> Value {
        let mut o = Map::new();
        for (pe, c) in &self.children {
            o.insert(pe.clone(), c.to_fields_v1());
        }
        if self.member && !o.is_empty() {
            o.insert(".".into(), Value::Object(Map::new()));
        }
        Value::Object(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(elems: &[&str]) -> Vec<String> {
        elems.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fields_v1_round_trip() {
        let v = json!({
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {"f:list": {"k:{\"name\":\"a\"}": {".": {}, "f:image": {}}}, "f:set": {"v:\"x\"": {}}}
        });
        let set = FieldSet::from_fields_v1(&v);
        assert!(set.contains(&p(&["f:metadata", "f:labels"])));
        assert!(set.contains(&p(&["f:metadata", "f:labels", "f:app"])));
        assert!(!set.contains(&p(&["f:metadata"])));
        assert!(set.contains(&p(&["f:spec", "f:list", "k:{\"name\":\"a\"}"])));
        assert!(set.contains(&p(&["f:spec", "f:set", "v:\"x\""])));
        assert_eq!(set.to_fields_v1(), v);
        assert_eq!(FieldSet::from_fields_v1(&json!({})), FieldSet::new());
    }

    #[test]
    fn key_encoding_is_sorted_and_normalized() {
        let k = key(&[("protocol", &json!("TCP")), ("containerPort", &json!(80))]);
        assert_eq!(k, "k:{\"containerPort\":80,\"protocol\":\"TCP\"}");
        assert_eq!(normalize_element("k:{\"protocol\": \"TCP\", \"containerPort\": 80}"), k);
        assert_eq!(value(&json!("x")), "v:\"x\"");
    }

    #[test]
    fn set_operations() {
        let mut a = FieldSet::new();
        a.insert(&p(&["f:a", "f:b"]));
        a.insert(&p(&["f:a", "f:c"]));
        let mut b = FieldSet::new();
        b.insert(&p(&["f:a", "f:c"]));
        b.insert(&p(&["f:d"]));
        assert_eq!(a.intersection(&b).paths(), vec![p(&["f:a", "f:c"])]);
        assert_eq!(a.difference(&b).paths(), vec![p(&["f:a", "f:b"])]);
        assert_eq!(a.union(&b).paths().len(), 3);
        a.remove(&p(&["f:a", "f:b"]));
        assert_eq!(a.paths(), vec![p(&["f:a", "f:c"])]);
    }

    #[test]
    fn paths_print_like_kubernetes() {
        let path = p(&["f:spec", "f:containers", "k:{\"name\":\"nginx\"}", "f:image"]);
        assert_eq!(path_string(&path), ".spec.containers[name=\"nginx\"].image");
        assert_eq!(path_string(&p(&["f:metadata", "f:finalizers", "v:\"x\""])), ".metadata.finalizers[=\"x\"]");
    }
}
