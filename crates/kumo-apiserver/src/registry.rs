//! The kinds being served right now: the built-ins plus whatever established CRDs add. Handlers look kinds up
//! here; nothing else in the server is specific to a kind.

use kumo_api::builtin::builtin_resources;
use kumo_api::{crd, ResourceDef};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// (group, version, plural).
type Gvr = (String, String, String);

#[derive(Default)]
pub struct Registry {
    /// (group, version, plural) → kind.
    kinds: RwLock<BTreeMap<Gvr, Arc<ResourceDef>>>,
    /// CRD name → the (group, version, plural) keys it registered.
    by_crd: RwLock<BTreeMap<String, Vec<Gvr>>>,
}

impl Registry {
    pub fn with_builtins() -> Self {
        let r = Registry::default();
        {
            let mut k = r.kinds.write().expect("lock");
            for d in builtin_resources() {
                k.insert((d.group.clone(), d.version.clone(), d.plural.clone()), Arc::new(d));
            }
        }
        r
    }

    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.kinds.read().expect("lock").get(&(group.into(), version.into(), plural.into())).cloned()
    }

    /// The kind at `(group, version)` whose Kind is `kind`.
    pub fn by_kind(&self, group: &str, version: &str, kind: &str) -> Option<Arc<ResourceDef>> {
        self.kinds
            .read()
            .expect("lock")
            .values()
            .find(|d| d.group == group && d.version == version && d.kind == kind)
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<ResourceDef>> {
        self.kinds.read().expect("lock").values().cloned().collect()
    }

    /// Served kinds sharing storage with `def` (all versions of one group/plural).
    pub fn versions_of(&self, group: &str, plural: &str) -> Vec<Arc<ResourceDef>> {
        self.all().into_iter().filter(|d| d.group == group && d.plural == plural).collect()
    }

    /// (group → versions) in the order discovery lists them; the core group is "".
    pub fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for d in self.all() {
            let vs = out.entry(d.group.clone()).or_default();
            if !vs.contains(&d.version) {
                vs.push(d.version.clone());
            }
        }
        for vs in out.values_mut() {
            vs.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        }
        out
    }

    /// Serves (or re-serves) the kinds a CRD defines, replacing what it served before.
    pub fn put_crd(&self, crd: &Value) {
        let name = crd.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
        self.remove_crd(&name);
        let defs = crd::resource_defs(crd);
        let mut keys = Vec::new();
        let mut k = self.kinds.write().expect("lock");
        for d in defs {
            let key = (d.group.clone(), d.version.clone(), d.plural.clone());
            // A CRD never shadows a built-in kind.
            if k.get(&key).is_some_and(|e| e.builtin.is_some()) {
                continue;
            }
            k.insert(key.clone(), Arc::new(d));
            keys.push(key);
        }
        self.by_crd.write().expect("lock").insert(name, keys);
    }

    /// The names of the CRDs whose kinds are served.
    pub fn crd_names(&self) -> Vec<String> {
        self.by_crd.read().expect("lock").keys().cloned().collect()
    }

    pub fn remove_crd(&self, name: &str) {
        if let Some(keys) = self.by_crd.write().expect("lock").remove(name) {
            let mut k = self.kinds.write().expect("lock");
            for key in keys {
                k.remove(&key);
            }
        }
    }
}

/// Kubernetes' version ordering: GA > beta > alpha, higher numbers first.
pub fn version_priority(v: &str) -> (u8, u32, u32) {
    let rest = match v.strip_prefix('v') {
        Some(r) => r,
        None => return (0, 0, 0),
    };
    let (major, tail) = rest.split_at(rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len()));
    let major: u32 = major.parse().unwrap_or(0);
    if tail.is_empty() {
        return (3, major, 0);
    }
    let minor = |t: &str| t.parse::<u32>().unwrap_or(0);
    if let Some(t) = tail.strip_prefix("beta") {
        (2, major, minor(t))
    } else if let Some(t) = tail.strip_prefix("alpha") {
        (1, major, minor(t))
    } else {
        (0, major, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn crd_kinds_come_and_go() {
        let r = Registry::with_builtins();
        let crd = json!({"metadata": {"name": "widgets.example.com"}, "spec": {"group": "example.com",
            "scope": "Namespaced", "names": {"plural": "widgets", "kind": "Widget"},
            "versions": [{"name": "v1beta1", "served": true, "storage": false, "schema": {"openAPIV3Schema": {"type": "object"}}},
                         {"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object"}}}]}});
        r.put_crd(&crd);
        assert!(r.get("example.com", "v1", "widgets").is_some());
        assert_eq!(r.groups()["example.com"], vec!["v1", "v1beta1"]);
        r.remove_crd("widgets.example.com");
        assert!(r.get("example.com", "v1", "widgets").is_none());
        assert!(r.get("", "v1", "configmaps").is_some());
    }
}
