//! Strategic merge patch (`application/strategic-merge-patch+json`), as `kubectl` and Kubernetes apply it.
//!
//! Maps merge recursively and `null` deletes a key. Lists merge as their [`ListType`] says: lists of maps by
//! their merge key, sets of scalars as a union, everything else is replaced. The directives are understood:
//! `$patch` (`merge`, `replace`, `delete`) on maps and list items, `$retainKeys`,
//! `$deleteFromPrimitiveList/<field>` and `$setElementOrder/<field>`. No directive survives into the result.

use super::lists::{ListType, ListTypes};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

type Object = Map<String, Value>;

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";

/// Applies the strategic merge patch `patch` to `original`. `lists` says how each list merges. The error is a
/// description of what is wrong with the patch (callers report it as a 400/422).
pub fn strategic_merge(original: &Value, patch: &Value, lists: &dyn ListTypes) -> Result<Value, String> {
    let Value::Object(patch) = patch else {
        return Err("a strategic merge patch must be a JSON object".into());
    };
    let empty = Object::new();
    let original = original.as_object().unwrap_or(&empty);
    let merged = Merger { lists }.merge_map(original, patch, &mut Vec::new())?;
    Ok(Value::Object(merged.unwrap_or_default()))
}

struct Merger<'a> {
    lists: &'a dyn ListTypes,
}

/// The directives found in one patch map.
#[derive(Default)]
struct Directives<'p> {
    retain_keys: Option<Vec<&'p str>>,
    delete_from: Vec<(&'p str, &'p Vec<Value>)>,
    orders: BTreeMap<&'p str, &'p Vec<Value>>,
}

fn directives(patch: &Object) -> Result<Directives<'_>, String> {
    let mut d = Directives::default();
    for (key, value) in patch {
        if !key.starts_with('$') || key == PATCH {
            continue;
        }
        let list = || value.as_array().ok_or_else(|| format!("{key} must be a list, got {value}"));
        if key == RETAIN_KEYS {
            let keys: Option<Vec<&str>> = list()?.iter().map(Value::as_str).collect();
            d.retain_keys = Some(keys.ok_or_else(|| format!("{RETAIN_KEYS} must list field names"))?);
        } else if let Some(field) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            d.delete_from.push((field, list()?));
        } else if let Some(field) = key.strip_prefix(SET_ELEMENT_ORDER) {
            d.orders.insert(field, list()?);
        } else {
            return Err(format!("unknown patch directive {key:?}"));
        }
    }
    Ok(d)
}

/// The `$patch` directive of a map, if any.
fn patch_directive(obj: &Object) -> Result<Option<&str>, String> {
    match obj.get(PATCH) {
        None => Ok(None),
        Some(Value::String(s)) if matches!(s.as_str(), "merge" | "replace" | "delete") => Ok(Some(s)),
        Some(other) => Err(format!("unknown patch type: {other}")),
    }
}

/// The merge key values of a list item; `None` when the item has none of the key fields.
fn key_of(item: &Object, keys: &[String]) -> Option<Vec<Value>> {
    let values: Vec<Value> = keys.iter().map(|k| item.get(k).cloned().unwrap_or(Value::Null)).collect();
    values.iter().any(|v| !v.is_null()).then_some(values)
}

/// How an item is identified for ordering: its merge key values, or itself.
fn identity(item: &Value, keys: Option<&[String]>) -> Value {
    match (keys, item) {
        (Some(keys), Value::Object(o)) => Value::Array(key_of(o, keys).unwrap_or_default()),
        _ => item.clone(),
    }
}

impl Merger<'_> {
    fn list_type(&self, path: &[String]) -> ListType {
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        self.lists.list_type(&path)
    }

    /// Merges `patch` into `original`; `None` when the patch deletes the map.
    fn merge_map(&self, original: &Object, patch: &Object, path: &mut Vec<String>) -> Result<Option<Object>, String> {
        let mut out = match patch_directive(patch)? {
            Some("delete") => return Ok(None),
            Some("replace") => Object::new(),
            _ => original.clone(),
        };
        let d = directives(patch)?;
        if let Some(retain) = &d.retain_keys {
            for (k, v) in patch {
                if !k.starts_with('$') && !v.is_null() && !retain.contains(&k.as_str()) {
                    return Err(format!("field {k:?} is in the patch but not in {RETAIN_KEYS}"));
                }
            }
            out.retain(|k, _| retain.contains(&k.as_str()));
        }
        for (field, values) in &d.delete_from {
            if let Some(Value::Array(list)) = out.get_mut(*field) {
                list.retain(|item| !values.contains(item));
            }
        }
        for (key, value) in patch {
            if key.starts_with('$') {
                continue;
            }
            path.push(key.clone());
            let merged = self.merge_value(out.get(key), value, d.orders.get(key.as_str()).copied(), path);
            path.pop();
            match merged? {
                Some(v) => out.insert(key.clone(), v),
                None => out.remove(key),
            };
        }
        // An order for a list the patch does not otherwise touch still reorders it.
        for (field, order) in &d.orders {
            if patch.contains_key(*field) {
                continue;
            }
            path.push(field.to_string());
            let keys = match self.list_type(path) {
                ListType::Map(keys) => Some(keys),
                ListType::Set => None,
                ListType::Atomic => {
                    path.pop();
                    continue;
                }
            };
            path.pop();
            if let Some(Value::Array(list)) = out.get_mut(*field) {
                let server = list.clone();
                *list = reorder(std::mem::take(list), order, &server, keys.as_deref());
            }
        }
        Ok(Some(out))
    }

    /// The merged value of one field; `None` deletes the field.
    fn merge_value(
        &self,
        original: Option<&Value>,
        patch: &Value,
        order: Option<&Vec<Value>>,
        path: &mut Vec<String>,
    ) -> Result<Option<Value>, String> {
        match patch {
            Value::Null => Ok(None),
            Value::Object(p) => {
                let empty = Object::new();
                let o = match original {
                    Some(Value::Object(o)) => o,
                    _ => &empty,
                };
                Ok(self.merge_map(o, p, path)?.map(Value::Object))
            }
            Value::Array(p) => {
                let o: &[Value] = match original {
                    Some(Value::Array(o)) => o,
                    _ => &[],
                };
                let (merged, keys) = match self.list_type(path) {
                    ListType::Atomic => return Ok(Some(patch.clone())),
                    ListType::Set => (merge_set(o, p)?, None),
                    ListType::Map(keys) => (self.merge_keyed(o, p, &keys, path)?, Some(keys)),
                };
                Ok(Some(Value::Array(match order {
                    Some(order) => reorder(merged, order, o, keys.as_deref()),
                    None => merged,
                })))
            }
            scalar => Ok(Some(scalar.clone())),
        }
    }

    /// A list of maps merged by key: patch items update the item with the same key or are appended,
    /// `{"$patch": "delete", key...}` removes it, and a `{"$patch": "replace"}` item replaces the whole list.
    fn merge_keyed(
        &self,
        original: &[Value],
        patch: &[Value],
        keys: &[String],
        path: &mut Vec<String>,
    ) -> Result<Vec<Value>, String> {
        let is_list_replace = |item: &Value| match item {
            Value::Object(o) => o.get(PATCH) == Some(&Value::from("replace")) && key_of(o, keys).is_none(),
            _ => false,
        };
        let replace = patch.iter().any(is_list_replace);
        let mut out: Vec<Value> = if replace { Vec::new() } else { original.to_vec() };
        for item in patch {
            let Value::Object(obj) = item else {
                // Scalars in a keyed list: nothing to key them by, so they merge as a set.
                if !out.contains(item) {
                    out.push(item.clone());
                }
                continue;
            };
            if is_list_replace(item) {
                continue;
            }
            let directive = patch_directive(obj)?;
            let key = key_of(obj, keys)
                .ok_or_else(|| format!("map: {item} does not contain declared merge key: {}", keys.join(",")))?;
            let same_key = |o: &Value| o.as_object().and_then(|o| key_of(o, keys)).as_ref() == Some(&key);
            if directive == Some("delete") {
                out.retain(|o| !same_key(o));
                continue;
            }
            let empty = Object::new();
            let pos = out.iter().position(same_key);
            let current = pos.and_then(|i| out[i].as_object()).unwrap_or(&empty);
            let merged = self.merge_map(current, obj, path)?.map(Value::Object);
            match (pos, merged) {
                (Some(i), Some(v)) => out[i] = v,
                (Some(i), None) => {
                    out.remove(i);
                }
                (None, Some(v)) => out.push(v),
                (None, None) => {}
            }
        }
        Ok(out)
    }
}

/// A set: the original items in order, then the new ones. A `{"$patch": "replace"}` item replaces the set.
fn merge_set(original: &[Value], patch: &[Value]) -> Result<Vec<Value>, String> {
    let mut replace = false;
    let mut items = Vec::new();
    for item in patch {
        match item {
            Value::Object(o) if o.contains_key(PATCH) => match patch_directive(o)? {
                Some("replace") if o.len() == 1 => replace = true,
                _ => return Err(format!("unsupported directive in a list of scalars: {item}")),
            },
            _ => items.push(item),
        }
    }
    let mut out = if replace { Vec::new() } else { original.to_vec() };
    for item in items {
        if !out.contains(item) {
            out.push(item.clone());
        }
    }
    Ok(out)
}

/// Orders `list` by `$setElementOrder`: items named in the order come in that order, items the order does
/// not name (the server's own) keep their place relative to the others as in `server` (Kubernetes'
/// `normalizeElementOrder`).
fn reorder(list: Vec<Value>, order: &[Value], server: &[Value], keys: Option<&[String]>) -> Vec<Value> {
    let order_ids: Vec<Value> = order.iter().map(|v| identity(v, keys)).collect();
    let server_ids: Vec<Value> = server.iter().map(|v| identity(v, keys)).collect();
    let position = |ids: &[Value], v: &Value| ids.iter().position(|id| *id == identity(v, keys));
    let (mut left, right): (Vec<Value>, Vec<Value>) = list.into_iter().partition(|v| position(&order_ids, v).is_some());
    left.sort_by_key(|v| position(&order_ids, v));
    let mut out = Vec::with_capacity(left.len() + right.len());
    let (mut left, mut right) = (left.into_iter().peekable(), right.into_iter().peekable());
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => match (position(&server_ids, l), position(&server_ids, r)) {
                (Some(li), Some(ri)) => li < ri,
                _ => false,
            },
        };
        out.extend(if take_left { left.next() } else { right.next() });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Test list types: `items` merges by `name`, `finalizers`/`tags` are sets, the rest atomic.
    struct Lists;
    impl ListTypes for Lists {
        fn list_type(&self, path: &[&str]) -> ListType {
            match path.last() {
                Some(&"items") | Some(&"containers") => ListType::Map(vec!["name".into()]),
                Some(&"finalizers") | Some(&"tags") => ListType::Set,
                _ => ListType::Atomic,
            }
        }
    }

    fn smp(original: Value, patch: Value) -> Result<Value, String> {
        strategic_merge(&original, &patch, &Lists)
    }

    #[test]
    fn maps_merge_and_null_deletes() {
        let orig = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "data": {"x": "1"}});
        let patch = json!({"metadata": {"labels": {"a": null, "c": "3"}}, "data": null, "new": {"k": "v"}});
        assert_eq!(smp(orig, patch).unwrap(), json!({"metadata": {"labels": {"b": "2", "c": "3"}}, "new": {"k": "v"}}));
    }

    #[test]
    fn patch_replace_and_delete_on_maps() {
        let orig = json!({"spec": {"a": 1, "b": {"c": 2}}, "keep": 1});
        let replaced = smp(orig.clone(), json!({"spec": {"$patch": "replace", "z": 9, "n": null}})).unwrap();
        assert_eq!(replaced, json!({"spec": {"z": 9}, "keep": 1}));
        let deleted = smp(orig.clone(), json!({"spec": {"$patch": "delete"}})).unwrap();
        assert_eq!(deleted, json!({"keep": 1}));
        assert_eq!(smp(orig.clone(), json!({"$patch": "delete"})).unwrap(), json!({}));
        assert!(smp(orig, json!({"spec": {"$patch": "explode"}})).is_err());
    }

    #[test]
    fn keyed_list_merges_by_key_and_deletes_items() {
        let orig = json!({"items": [
            {"name": "a", "image": "a:1", "port": 1},
            {"name": "b", "image": "b:1"},
            {"name": "c", "image": "c:1"}
        ]});
        let patch = json!({"items": [
            {"name": "a", "image": "a:2", "port": null},
            {"name": "b", "$patch": "delete"},
            {"name": "d", "image": "d:1"}
        ]});
        assert_eq!(
            smp(orig, patch).unwrap(),
            json!({"items": [
                {"name": "a", "image": "a:2"},
                {"name": "c", "image": "c:1"},
                {"name": "d", "image": "d:1"}
            ]})
        );
    }

    #[test]
    fn keyed_list_replace_directive_and_missing_key() {
        let orig = json!({"items": [{"name": "a"}, {"name": "b"}]});
        let patch = json!({"items": [{"$patch": "replace"}, {"name": "z", "v": 1}]});
        assert_eq!(smp(orig.clone(), patch).unwrap(), json!({"items": [{"name": "z", "v": 1}]}));
        let err = smp(orig, json!({"items": [{"image": "x"}]})).unwrap_err();
        assert!(err.contains("merge key"), "{err}");
    }

    #[test]
    fn nested_keyed_list_inside_item() {
        let orig = json!({"items": [{"name": "a", "containers": [{"name": "c1", "image": "1"}]}]});
        let patch = json!({"items": [{"name": "a", "containers": [{"name": "c2", "image": "2"}]}]});
        assert_eq!(
            smp(orig, patch).unwrap(),
            json!({"items": [{"name": "a", "containers": [{"name": "c1", "image": "1"}, {"name": "c2", "image": "2"}]}]})
        );
    }

    #[test]
    fn primitive_set_union_and_delete_from_primitive_list() {
        let orig = json!({"metadata": {"finalizers": ["b", "a", "c"]}});
        let patch = json!({"metadata": {"finalizers": ["d", "a"]}});
        assert_eq!(smp(orig.clone(), patch).unwrap(), json!({"metadata": {"finalizers": ["b", "a", "c", "d"]}}));
        let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a", "c"], "finalizers": ["e"]}});
        assert_eq!(smp(orig.clone(), patch).unwrap(), json!({"metadata": {"finalizers": ["b", "e"]}}));
        let patch = json!({"metadata": {"finalizers": [{"$patch": "replace"}, "x"]}});
        assert_eq!(smp(orig, patch).unwrap(), json!({"metadata": {"finalizers": ["x"]}}));
    }

    #[test]
    fn retain_keys_keeps_only_listed_fields() {
        let orig = json!({"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}});
        let patch = json!({"strategy": {"$retainKeys": ["type"], "type": "Recreate"}});
        assert_eq!(smp(orig.clone(), patch).unwrap(), json!({"strategy": {"type": "Recreate"}}));
        // A patched field outside $retainKeys is an error.
        let bad = json!({"strategy": {"$retainKeys": ["type"], "other": 1}});
        assert!(smp(orig, bad).is_err());
    }

    #[test]
    fn atomic_lists_replace() {
        let orig = json!({"spec": {"args": ["a", "b"], "ports": [{"name": "x"}]}});
        let patch = json!({"spec": {"args": ["c"], "ports": [{"port": 1}]}});
        assert_eq!(smp(orig, patch).unwrap(), json!({"spec": {"args": ["c"], "ports": [{"port": 1}]}}));
    }

    #[test]
    fn set_element_order_orders_result() {
        // Items only the server has keep their place; patched ones follow the order given.
        let orig = json!({"items": [{"name": "a"}, {"name": "server"}, {"name": "b"}], "tags": ["x", "y"]});
        let patch = json!({
            "$setElementOrder/items": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
            "items": [{"name": "c"}],
            "$setElementOrder/tags": ["y", "x"]
        });
        assert_eq!(
            smp(orig, patch).unwrap(),
            json!({"items": [{"name": "a"}, {"name": "server"}, {"name": "b"}, {"name": "c"}], "tags": ["y", "x"]})
        );
        let orig = json!({"items": [{"name": "a", "v": 1}, {"name": "b"}]});
        let patch = json!({"$setElementOrder/items": [{"name": "b"}, {"name": "a"}], "items": [{"name": "a", "v": 2}]});
        assert_eq!(smp(orig, patch).unwrap(), json!({"items": [{"name": "b"}, {"name": "a", "v": 2}]}));
    }

    #[test]
    fn unknown_directive_is_an_error_and_directives_never_leak() {
        assert!(smp(json!({}), json!({"$bogus": 1})).is_err());
        assert!(smp(json!({}), json!({"a": {"$deleteFromPrimitiveList/x": "notalist"}})).is_err());
        // Directives inside newly added content are processed too.
        let out = smp(json!({}), json!({"a": {"$patch": "merge", "b": {"$retainKeys": ["c"], "c": 1}}})).unwrap();
        assert_eq!(out, json!({"a": {"b": {"c": 1}}}));
    }
}
