//! Label indexes of the watch cache: for chosen (resource, label) pairs, which keys carry each value, as of the
//! cache's revision. A list selecting on such a label (each node agent lists the VMIs bound to it by
//! `kubevirt.io/nodeName`) reads just those keys instead of every object of the resource.

use std::collections::{BTreeSet, HashMap};

/// The indexed (resource prefix, label key) pairs.
pub const INDEXED: &[(&str, &str)] =
    &[("/registry/kubevirt.io/virtualmachineinstances/", kumo_api::kubevirt::NODE_NAME_LABEL)];

#[derive(Default)]
pub struct LabelIndex {
    /// (resource, label key, value) → keys.
    keys: HashMap<(usize, String), BTreeSet<String>>,
    /// key → the indexed value it carries, per index (to move it when the label changes).
    value_of: HashMap<(usize, String), String>,
}

/// Which index covers `key` (or a prefix of one resource), if any, and its label.
fn index_of(key: &str) -> Option<(usize, &'static str)> {
    INDEXED.iter().position(|(prefix, _)| key.starts_with(prefix)).map(|i| (i, INDEXED[i].1))
}

/// Whether lists of `prefix` selecting on `label` can be answered from an index.
pub fn covers(prefix: &str, label: &str) -> bool {
    index_of(prefix).is_some_and(|(_, l)| l == label)
}

/// The replay queues of the ring an event is filed in: (index, value) for each value of its resource's indexed
/// label the object has or had (`labels`: deduplicated, so an event is filed in a queue once).
pub fn queues(key: &str, labels: &[(String, String)]) -> Vec<(usize, String)> {
    let Some((i, label)) = index_of(key) else { return vec![] };
    labels.iter().filter(|(k, _)| k == label).map(|(_, v)| (i, v.clone())).collect()
}

/// The replay queue holding every event a watch of `prefix` selecting `label` (key, value) concerns, when that
/// label of that resource is indexed.
pub fn queue_for(prefix: &str, label: &(String, String)) -> Option<(usize, String)> {
    index_of(prefix).filter(|(_, l)| *l == label.0).map(|(i, _)| (i, label.1.clone()))
}

impl LabelIndex {
    /// Records `key`'s object (None: deleted).
    pub fn update(&mut self, key: &str, obj: Option<&serde_json::Value>) {
        let Some((_, label)) = index_of(key) else { return };
        let value = obj.and_then(|o| o.pointer("/metadata/labels")).and_then(|l| l.get(label)).and_then(|v| v.as_str());
        self.set(key, value);
    }

    /// Records `key`'s labels, as read from its stored bytes when the cache starts.
    pub fn update_labels(&mut self, key: &str, labels: &[(String, String)]) {
        let Some((_, label)) = index_of(key) else { return };
        self.set(key, labels.iter().find(|(k, _)| k == label).map(|(_, v)| v.as_str()));
    }

    fn set(&mut self, key: &str, value: Option<&str>) {
        let Some((i, _)) = index_of(key) else { return };
        let slot = (i, key.to_string());
        let old = self.value_of.get(&slot);
        if old.map(String::as_str) == value {
            return;
        }
        if let Some(old) = self.value_of.remove(&slot) {
            let k = (i, old);
            if let Some(set) = self.keys.get_mut(&k) {
                set.remove(key);
                if set.is_empty() {
                    self.keys.remove(&k);
                }
            }
        }
        if let Some(v) = value {
            self.keys.entry((i, v.to_string())).or_default().insert(key.to_string());
            self.value_of.insert(slot, v.to_string());
        }
    }

    /// Keys under `prefix` whose indexed label is `value`, in key order, after `start_after`.
    pub fn keys(&self, prefix: &str, value: &str, start_after: Option<&str>) -> Vec<String> {
        let Some((i, _)) = index_of(prefix) else { return vec![] };
        let Some(set) = self.keys.get(&(i, value.to_string())) else { return vec![] };
        set.iter().filter(|k| k.starts_with(prefix) && start_after.is_none_or(|a| k.as_str() > a)).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_follow_their_label_and_go_when_deleted() {
        let mut ix = LabelIndex::default();
        let p = INDEXED[0].0;
        let on = |node: &str| json!({"metadata": {"labels": {"kubevirt.io/nodeName": node}}});
        ix.update(&format!("{p}a/x"), Some(&on("n1")));
        ix.update(&format!("{p}b/y"), Some(&on("n1")));
        ix.update(&format!("{p}a/z"), Some(&json!({"metadata": {}})));
        ix.update("/registry/core/configmaps/a/x", Some(&on("n1")));
        assert_eq!(ix.keys(p, "n1", None), [format!("{p}a/x"), format!("{p}b/y")]);
        assert_eq!(ix.keys(&format!("{p}b/"), "n1", None), [format!("{p}b/y")]);
        assert_eq!(ix.keys(p, "n1", Some(&format!("{p}a/x"))), [format!("{p}b/y")]);
        ix.update(&format!("{p}a/x"), Some(&on("n2")));
        ix.update(&format!("{p}b/y"), None);
        assert!(ix.keys(p, "n1", None).is_empty());
        assert_eq!(ix.keys(p, "n2", None), [format!("{p}a/x")]);
        assert!(
            covers(p, "kubevirt.io/nodeName")
                && !covers(p, "app")
                && !covers("/registry/core/pods/", "kubevirt.io/nodeName")
        );
    }

    #[test]
    fn stored_bytes_index_as_the_decoded_object_does() {
        let mut ix = LabelIndex::default();
        let p = INDEXED[0].0;
        let obj = json!({"metadata": {"name": "x", "labels": {"kubevirt.io/nodeName": "n1", "app": "a"}},
            "spec": {"domain": {"devices": {}}}, "status": {"phase": "Running"}});
        for (key, value) in
            [("a/x", serde_json::to_vec(&obj).unwrap()), ("a/y", br#"{"metadata": {"name": "y"}}"#.to_vec())]
        {
            let kv = kumo_store::KeyValue { key: format!("{p}{key}"), value, create_revision: 1, mod_revision: 1 };
            let ev = super::super::CachedEvent::stored(kv);
            ix.update_labels(&ev.key, ev.labels());
        }
        assert_eq!(ix.keys(p, "n1", None), [format!("{p}a/x")]);
        ix.update(&format!("{p}a/x"), None);
        assert!(ix.keys(p, "n1", None).is_empty());
    }
}
