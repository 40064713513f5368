//! How a list at a given path merges, for strategic merge patch and server-side apply.
//!
//! Kubernetes learns this from Go struct tags (`patchStrategy`/`patchMergeKey`, `+listType`/`+listMapKey`) for
//! built-in kinds, and from `x-kubernetes-list-type`/`x-kubernetes-list-map-keys` for custom resources. A path
//! names object fields from the root; list items are not counted, so the containers of a pod template are
//! `["spec", "template", "spec", "containers"]`.

use crate::resource::Builtin;
use serde_json::Value;

/// How the items of one list merge.
#[derive(Clone, Debug, PartialEq)]
pub enum ListType {
    /// The list is replaced as a whole.
    Atomic,
    /// A set of scalars: merging is a union.
    Set,
    /// Items are objects identified by these key fields (`x-kubernetes-list-map-keys` / `patchMergeKey`).
    Map(Vec<String>),
}

impl ListType {
    fn map(keys: &[&str]) -> ListType {
        ListType::Map(keys.iter().map(|k| k.to_string()).collect())
    }
}

/// Answers how the list at `path` merges.
pub trait ListTypes: Send + Sync {
    /// `path` is the object field names from the root, list items not counted (e.g.
    /// `["metadata", "ownerReferences"]`).
    fn list_type(&self, path: &[&str]) -> ListType;
}

/// Lists every object has, whatever its kind.
fn metadata_list(path: &[&str]) -> Option<ListType> {
    match path {
        ["metadata", "ownerReferences"] => Some(ListType::map(&["uid"])),
        ["metadata", "finalizers"] => Some(ListType::Set),
        ["metadata", "managedFields"] => Some(ListType::Atomic),
        _ => None,
    }
}

/// The list types of the built-in kinds, as their Go struct tags declare them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuiltinLists(pub Builtin);

impl ListTypes for BuiltinLists {
    fn list_type(&self, path: &[&str]) -> ListType {
        if let Some(t) = metadata_list(path) {
            return t;
        }
        match (self.0, path) {
            (Builtin::Namespace, ["status", "conditions"]) => ListType::map(&["type"]),
            (Builtin::Node, ["spec", "taints"]) => ListType::map(&["key", "effect"]),
            (Builtin::Node, ["spec", "podCIDRs"]) => ListType::Set,
            (Builtin::Node, ["status", "conditions"]) => ListType::map(&["type"]),
            (Builtin::Node, ["status", "addresses"]) => ListType::map(&["type"]),
            (Builtin::Node, ["status", "images"]) => ListType::Atomic,
            (Builtin::Node, ["status", "volumesInUse"]) => ListType::Atomic,
            (Builtin::Node, ["status", "volumesAttached"]) => ListType::Atomic,
            (Builtin::ServiceAccount, ["secrets"]) => ListType::map(&["name"]),
            (Builtin::ServiceAccount, ["imagePullSecrets"]) => ListType::map(&["name"]),
            (Builtin::CustomResourceDefinition, ["spec", "versions"]) => ListType::map(&["name"]),
            (Builtin::CustomResourceDefinition, ["status", "conditions"]) => ListType::map(&["type"]),
            (Builtin::CertificateSigningRequest, ["status", "conditions"]) => ListType::map(&["type"]),
            (Builtin::PersistentVolumeClaim, ["status", "conditions"]) => ListType::map(&["type"]),
            _ => ListType::Atomic,
        }
    }
}

/// The list types an OpenAPI v3 object schema declares (a CRD's `openAPIV3Schema`): `x-kubernetes-list-type`
/// and `x-kubernetes-list-map-keys`, or failing those `x-kubernetes-patch-strategy: merge` with
/// `x-kubernetes-patch-merge-key`. Undeclared lists, and every list when there is no schema, are atomic —
/// except the metadata lists every object has.
#[derive(Clone, Copy, Debug)]
pub struct SchemaLists<'a>(pub Option<&'a Value>);

impl ListTypes for SchemaLists<'_> {
    fn list_type(&self, path: &[&str]) -> ListType {
        if let Some(t) = metadata_list(path) {
            return t;
        }
        let Some(mut schema) = self.0 else {
            return ListType::Atomic;
        };
        for name in path {
            schema = skip_items(schema);
            let next = schema
                .get("properties")
                .and_then(|p| p.get(*name))
                .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()));
            match next {
                Some(s) => schema = s,
                None => return ListType::Atomic,
            }
        }
        declared(schema)
    }
}

/// Past any array levels (lists of lists), to the schema of the innermost items.
fn skip_items(mut schema: &Value) -> &Value {
    while schema.get("type").and_then(Value::as_str) == Some("array") {
        match schema.get("items") {
            Some(items) if items.is_object() => schema = items,
            _ => break,
        }
    }
    schema
}

fn declared(schema: &Value) -> ListType {
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default()
    };
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => return ListType::Set,
        Some("map") => {
            let keys = strings(schema.get("x-kubernetes-list-map-keys"));
            return if keys.is_empty() { ListType::Atomic } else { ListType::Map(keys) };
        }
        Some(_) => return ListType::Atomic,
        None => {}
    }
    let strategy = schema.get("x-kubernetes-patch-strategy").and_then(Value::as_str).unwrap_or("");
    if strategy.split(',').any(|s| s.trim() == "merge") {
        return match schema.get("x-kubernetes-patch-merge-key").and_then(Value::as_str) {
            Some(key) => ListType::Map(vec![key.to_string()]),
            None => ListType::Set,
        };
    }
    ListType::Atomic
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(k: &[&str]) -> ListType {
        ListType::map(k)
    }

    #[test]
    fn builtin_metadata_lists_apply_to_every_kind() {
        for kind in [Builtin::ConfigMap, Builtin::Node, Builtin::Lease] {
            let l = BuiltinLists(kind);
            assert_eq!(l.list_type(&["metadata", "ownerReferences"]), keys(&["uid"]));
            assert_eq!(l.list_type(&["metadata", "finalizers"]), ListType::Set);
            assert_eq!(l.list_type(&["metadata", "managedFields"]), ListType::Atomic);
        }
    }

    #[test]
    fn builtin_kind_lists() {
        let node = BuiltinLists(Builtin::Node);
        assert_eq!(node.list_type(&["spec", "taints"]), keys(&["key", "effect"]));
        assert_eq!(node.list_type(&["status", "conditions"]), keys(&["type"]));
        assert_eq!(node.list_type(&["status", "addresses"]), keys(&["type"]));
        assert_eq!(node.list_type(&["status", "images"]), ListType::Atomic);
        assert_eq!(node.list_type(&["status", "volumesInUse"]), ListType::Atomic);
        let sa = BuiltinLists(Builtin::ServiceAccount);
        assert_eq!(sa.list_type(&["secrets"]), keys(&["name"]));
        assert_eq!(sa.list_type(&["imagePullSecrets"]), keys(&["name"]));
        let crd = BuiltinLists(Builtin::CustomResourceDefinition);
        assert_eq!(crd.list_type(&["spec", "versions"]), keys(&["name"]));
        assert_eq!(crd.list_type(&["status", "conditions"]), keys(&["type"]));
        assert_eq!(crd.list_type(&["spec", "names", "shortNames"]), ListType::Atomic);
        // Same path, other kind: atomic.
        assert_eq!(BuiltinLists(Builtin::ConfigMap).list_type(&["secrets"]), ListType::Atomic);
    }

    #[test]
    fn schema_lists_walk_properties_items_and_additional_properties() {
        let schema = json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "properties": {
                        "ports": {
                            "type": "array",
                            "x-kubernetes-list-type": "map",
                            "x-kubernetes-list-map-keys": ["port", "protocol"],
                            "items": {"type": "object", "properties": {
                                "hosts": {"type": "array", "x-kubernetes-list-type": "set",
                                          "items": {"type": "string"}}
                            }}
                        },
                        "tags": {"type": "array", "items": {"type": "string"}},
                        "byName": {"type": "object", "additionalProperties": {
                            "type": "array", "x-kubernetes-patch-strategy": "merge",
                            "x-kubernetes-patch-merge-key": "id", "items": {"type": "object"}
                        }}
                    }
                }
            }
        });
        let l = SchemaLists(Some(&schema));
        assert_eq!(l.list_type(&["spec", "ports"]), keys(&["port", "protocol"]));
        assert_eq!(l.list_type(&["spec", "ports", "hosts"]), ListType::Set);
        assert_eq!(l.list_type(&["spec", "tags"]), ListType::Atomic);
        assert_eq!(l.list_type(&["spec", "byName", "anything"]), keys(&["id"]));
        assert_eq!(l.list_type(&["spec", "missing"]), ListType::Atomic);
        assert_eq!(l.list_type(&["metadata", "finalizers"]), ListType::Set);
        assert_eq!(SchemaLists(None).list_type(&["spec", "ports"]), ListType::Atomic);
        assert_eq!(SchemaLists(None).list_type(&["metadata", "ownerReferences"]), keys(&["uid"]));
    }
}
