//! Walks over objects for server-side apply: the field set of a value, the difference between two values,
//! merging an applied configuration, and removing fields an applier gave up.

use super::fieldset::{self, FieldSet};
use crate::patch::lists::{ListType, ListTypes};
use serde_json::{Map, Value};

type Object = Map<String, Value>;

/// Metadata fields the server owns; they are never tracked and never taken from an applied configuration.
const SERVER_METADATA: &[&str] =
    &["managedFields", "resourceVersion", "uid", "creationTimestamp", "generation", "selfLink"];

/// The object without the fields field management ignores: `apiVersion`, `kind`, `metadata.name`,
/// `metadata.namespace` and the server-owned metadata.
pub fn strip(obj: &Value) -> Value {
    let mut out = obj.clone();
    if let Value::Object(o) = &mut out {
        o.remove("apiVersion");
        o.remove("kind");
        if let Some(Value::Object(meta)) = o.get_mut("metadata") {
            for f in SERVER_METADATA.iter().chain(&["name", "namespace"]) {
                meta.remove(*f);
            }
        }
    }
    out
}

/// The applied configuration as it merges into the live object: without server-owned metadata, except a
/// `resourceVersion`, which stays so the caller can check it as a precondition (as Kubernetes does).
pub fn applicable(config: &Value) -> Value {
    let mut out = config.clone();
    if let Some(Value::Object(meta)) = out.get_mut("metadata") {
        for f in SERVER_METADATA.iter().filter(|f| **f != "resourceVersion") {
            meta.remove(*f);
        }
    }
    out
}

/// What a walk needs: the list types, and where it is (field names for list types, encoded path elements
/// for field sets).
pub struct Walker<'a> {
    lists: &'a dyn ListTypes,
    names: Vec<String>,
    pes: Vec<String>,
}

/// The key of a keyed list item; `Err` names the missing key field.
fn item_key(item: &Value, keys: &[String]) -> Result<String, String> {
    let Value::Object(o) = item else {
        return Err(format!("associative list with keys has an element that is not a map: {item}"));
    };
    let mut fields = Vec::new();
    for k in keys {
        match o.get(k) {
            Some(v) if !v.is_null() => fields.push((k.as_str(), v)),
            _ => {}
        }
    }
    if fields.is_empty() {
        return Err(format!("associative list with keys has an element that omits key field {:?}", keys[0]));
    }
    Ok(fieldset::key(&fields))
}

/// The items of a keyed list by key, or `None` when some item has no key or two share one (such a list is
/// then treated as atomic).
fn keyed(items: &[Value], keys: &[String]) -> Option<Vec<(String, usize)>> {
    let mut out: Vec<(String, usize)> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let k = item_key(item, keys).ok()?;
        if out.iter().any(|(seen, _)| *seen == k) {
            return None;
        }
        out.push((k, i));
    }
    Some(out)
}

fn find<'v>(index: &[(String, usize)], items: &'v [Value], pe: &str) -> Option<&'v Value> {
    index.iter().find(|(k, _)| k == pe).map(|(_, i)| &items[*i])
}

/// Added, modified and removed paths between two values.
#[derive(Default, Debug)]
pub struct Comparison {
    pub added: FieldSet,
    pub modified: FieldSet,
    pub removed: FieldSet,
}

impl Comparison {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.modified.is_empty() && self.removed.is_empty()
    }
}

impl<'a> Walker<'a> {
    pub fn new(lists: &'a dyn ListTypes) -> Self {
        Walker { lists, names: Vec::new(), pes: Vec::new() }
    }

    fn list_type(&self) -> ListType {
        let names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        self.lists.list_type(&names)
    }

    fn enter_field(&mut self, name: &str) {
        self.names.push(name.to_string());
        self.pes.push(fieldset::field(name));
    }

    fn leave_field(&mut self) {
        self.names.pop();
        self.pes.pop();
    }

    /// The fields an applied configuration sets: every leaf (scalar, atomic list, empty map) and every list
    /// item. Null values are not owned. Keyed list items must carry their keys and be unique.
    pub fn field_set(&mut self, obj: &Value, out: &mut FieldSet) -> Result<(), String> {
        match obj {
            Value::Object(o) if o.is_empty() => out.insert(&self.pes),
            Value::Object(o) => {
                for (k, v) in o {
                    if v.is_null() {
                        continue;
                    }
                    self.enter_field(k);
                    let r = self.field_set(v, out);
                    self.leave_field();
                    r?;
                }
            }
            Value::Array(items) => match self.list_type() {
                _ if items.is_empty() => out.insert(&self.pes),
                ListType::Atomic => out.insert(&self.pes),
                ListType::Set => {
                    for item in items {
                        let pe = fieldset::value(item);
                        if self.contains_child(out, &pe) {
                            return Err(format!("{}: duplicate entries for key {pe}", self.here()));
                        }
                        self.pes.push(pe);
                        out.insert(&self.pes);
                        self.pes.pop();
                    }
                }
                ListType::Map(keys) => {
                    for item in items {
                        let pe = item_key(item, &keys).map_err(|e| format!("{}: {e}", self.here()))?;
                        if self.contains_child(out, &pe) {
                            return Err(format!("{}: duplicate entries for key {pe}", self.here()));
                        }
                        self.pes.push(pe);
                        out.insert(&self.pes);
                        let r = self.field_set(item, out);
                        self.pes.pop();
                        r?;
                    }
                }
            },
            _ => out.insert(&self.pes),
        }
        Ok(())
    }

    fn contains_child(&self, set: &FieldSet, pe: &str) -> bool {
        let mut path = self.pes.clone();
        path.push(pe.to_string());
        set.contains(&path)
    }

    fn here(&self) -> String {
        fieldset::path_string(&self.pes)
    }

    /// Records `v` and everything under it as added (or removed).
    fn all_paths(&mut self, v: &Value, out: &mut FieldSet) {
        if !self.pes.is_empty() {
            out.insert(&self.pes);
        }
        match v {
            Value::Object(o) => {
                for (k, child) in o {
                    self.enter_field(k);
                    self.all_paths(child, out);
                    self.leave_field();
                }
            }
            Value::Array(items) => match self.list_type() {
                ListType::Atomic => {}
                ListType::Set => {
                    for item in items {
                        self.pes.push(fieldset::value(item));
                        out.insert(&self.pes);
                        self.pes.pop();
                    }
                }
                ListType::Map(keys) => {
                    if let Some(index) = keyed(items, &keys) {
                        for (pe, i) in index {
                            self.pes.push(pe);
                            self.all_paths(&items[i], out);
                            self.pes.pop();
                        }
                    }
                }
            },
            _ => {}
        }
    }

    /// What changed from `old` to `new`: like Kubernetes' structured-merge-diff, a path present only in `new`
    /// is added (with everything under it), one only in `old` removed, and a leaf whose value differs
    /// modified.
    pub fn compare(&mut self, old: Option<&Value>, new: Option<&Value>, c: &mut Comparison) {
        match (old, new) {
            (None, None) => {}
            (None, Some(n)) => self.all_paths(n, &mut c.added),
            (Some(o), None) => self.all_paths(o, &mut c.removed),
            (Some(o), Some(n)) if o == n => {}
            (Some(Value::Object(a)), Some(Value::Object(b))) => {
                for k in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
                    self.enter_field(k);
                    self.compare(a.get(k), b.get(k), c);
                    self.leave_field();
                }
            }
            (Some(Value::Array(a)), Some(Value::Array(b))) => match self.list_type() {
                ListType::Atomic => c.modified.insert(&self.pes),
                ListType::Set => {
                    for (items, other, set) in [(a, b, &mut c.removed), (b, a, &mut c.added)] {
                        for item in items.iter().filter(|i| !other.contains(i)) {
                            self.pes.push(fieldset::value(item));
                            set.insert(&self.pes);
                            self.pes.pop();
                        }
                    }
                }
                ListType::Map(keys) => match (keyed(a, &keys), keyed(b, &keys)) {
                    (Some(ka), Some(kb)) => {
                        let all = ka.iter().chain(kb.iter().filter(|(k, _)| !ka.iter().any(|(x, _)| x == k)));
                        for (pe, _) in all {
                            let (old, new) = (find(&ka, a, pe), find(&kb, b, pe));
                            self.pes.push(pe.clone());
                            self.compare(old, new, c);
                            self.pes.pop();
                        }
                    }
                    _ => c.modified.insert(&self.pes),
                },
            },
            (Some(o), Some(n)) => {
                // A leaf changed, or the kind of value did.
                c.modified.insert(&self.pes);
                if o.is_object() || o.is_array() || n.is_object() || n.is_array() {
                    let here = self.pes.clone();
                    self.all_paths(o, &mut c.removed);
                    self.all_paths(n, &mut c.added);
                    for set in [&mut c.removed, &mut c.added] {
                        set.remove(&here);
                    }
                }
            }
        }
    }

    /// `config` merged into `live`: maps recursively (a null removes the field), keyed lists by key, sets as a
    /// union, everything else replaced.
    pub fn merge(&mut self, live: Option<&Value>, config: &Value) -> Value {
        match (live, config) {
            (live, Value::Object(c)) => {
                let mut out = match live {
                    Some(Value::Object(l)) => l.clone(),
                    _ => Object::new(),
                };
                for (k, v) in c {
                    if v.is_null() {
                        out.remove(k);
                        continue;
                    }
                    self.enter_field(k);
                    let merged = self.merge(out.get(k), v);
                    self.leave_field();
                    out.insert(k.clone(), merged);
                }
                Value::Object(out)
            }
            (Some(Value::Array(l)), Value::Array(c)) => match self.list_type() {
                ListType::Atomic => config.clone(),
                ListType::Set => {
                    let mut out = l.clone();
                    for item in c {
                        if !out.contains(item) {
                            out.push(item.clone());
                        }
                    }
                    Value::Array(out)
                }
                ListType::Map(keys) => {
                    let mut out = l.clone();
                    for item in c {
                        let k = item_key(item, &keys).ok();
                        let pos = k
                            .as_ref()
                            .and_then(|k| out.iter().position(|o| item_key(o, &keys).ok().as_ref() == Some(k)));
                        match pos {
                            Some(i) => out[i] = self.merge(Some(&out[i]), item),
                            None => out.push(self.merge(None, item)),
                        }
                    }
                    Value::Array(out)
                }
            },
            (_, Value::Array(c)) => Value::Array(c.iter().map(|item| self.merge(None, item)).collect()),
            (_, scalar) => scalar.clone(),
        }
    }

    /// Removes from `obj` the paths in `remove`, except where `keep` still has something at or under the path;
    /// a map or list that this empties is removed too unless `keep` has it.
    pub fn prune(&mut self, obj: &mut Object, remove: &FieldSet, keep: Option<&FieldSet>) {
        let fields: Vec<String> = obj.keys().cloned().collect();
        for name in fields {
            let pe = fieldset::field(&name);
            let Some(rm) = remove.child(&pe) else {
                continue;
            };
            let kept = keep.and_then(|k| k.child(&pe)).filter(|k| !k.is_empty());
            if rm.is_member() && kept.is_none() {
                obj.remove(&name);
                continue;
            }
            let Some(value) = obj.get_mut(&name) else {
                continue;
            };
            let was_filled = is_filled(value);
            self.enter_field(&name);
            self.prune_value(value, rm, kept);
            self.leave_field();
            if was_filled && !is_filled(value) && kept.is_none() {
                obj.remove(&name);
            }
        }
    }

    fn prune_value(&mut self, value: &mut Value, remove: &FieldSet, keep: Option<&FieldSet>) {
        match value {
            Value::Object(o) => self.prune(o, remove, keep),
            Value::Array(items) => match self.list_type() {
                ListType::Atomic => {}
                ListType::Set => items.retain(|item| {
                    let pe = fieldset::value(item);
                    let rm = remove.child(&pe).is_some_and(FieldSet::is_member);
                    let kept = keep.and_then(|k| k.child(&pe)).is_some_and(|k| !k.is_empty());
                    !rm || kept
                }),
                ListType::Map(keys) => {
                    let mut i = 0;
                    while i < items.len() {
                        let Ok(pe) = item_key(&items[i], &keys) else {
                            i += 1;
                            continue;
                        };
                        let Some(rm) = remove.child(&pe) else {
                            i += 1;
                            continue;
                        };
                        let kept = keep.and_then(|k| k.child(&pe)).filter(|k| !k.is_empty());
                        if rm.is_member() && kept.is_none() {
                            items.remove(i);
                            continue;
                        }
                        if let Value::Object(o) = &mut items[i] {
                            self.pes.push(pe);
                            self.prune(o, rm, kept);
                            self.pes.pop();
                        }
                        i += 1;
                    }
                }
            },
            _ => {}
        }
    }
}

fn is_filled(v: &Value) -> bool {
    match v {
        Value::Object(o) => !o.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => true,
    }
}
