//! What is placed where, kept current change by change (kube-scheduler's cache): each node's VMIs and the
//! room they take. Recounting every VMI for each placement made scheduling O(VMIs), about 30 placements a
//! second at 10,000 VMIs and slower with every VMI added.

use super::{finished, request, Config, Request};
use kumo_api::kubevirt::VirtualMachineInstance;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Vmi = Arc<VirtualMachineInstance>;

/// How long a binding this process made counts without the watch showing it (kube-scheduler expires its
/// assumed pods alike): a write cancelled midway must not hold the VMI, or the room, forever.
const ASSUME_TTL: Duration = Duration::from_secs(30);

/// The VMIs bound to a node and not finished, by node.
#[derive(Default)]
pub struct Placed {
    config: Config,
    by_key: HashMap<String, Entry>,
    nodes: HashMap<String, Load>,
    /// Placed VMIs with required pod anti-affinity: they can keep a new VMI out of their domain, so every
    /// placement looks at them (and only at them, when the new VMI has no affinity terms of its own).
    anti: HashSet<String>,
    /// Bindings this process made that the watch has not shown yet, by key, and when.
    assumed: HashMap<String, Instant>,
    assume_ttl: Duration,
    /// A full list was taken in (before that, what is placed is not known).
    synced: bool,
}

impl std::fmt::Debug for Placed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placed").field("vmis", &self.by_key.len()).field("nodes", &self.nodes.len()).finish()
    }
}

struct Entry {
    node: String,
    request: Request,
    vmi: Vmi,
}

/// One node's share.
#[derive(Default)]
pub struct Load {
    pub used: Request,
    pub vmis: HashMap<String, Vmi>,
}

/// A VMI's identity here: its uid (a VMI made again under its name is another VMI), else its name.
pub fn key(vmi: &VirtualMachineInstance) -> String {
    match &vmi.metadata.uid {
        Some(uid) => uid.clone(),
        None => format!(
            "{}/{}",
            vmi.metadata.namespace.as_deref().unwrap_or(""),
            vmi.metadata.name.as_deref().unwrap_or("")
        ),
    }
}

fn required_anti(vmi: &VirtualMachineInstance) -> bool {
    let anti = vmi.spec.affinity.as_ref().and_then(|a| a.pod_anti_affinity.as_ref());
    anti.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref()).is_some_and(|t| !t.is_empty())
}

impl Placed {
    pub fn new(config: Config) -> Self {
        Placed { config, assume_ttl: ASSUME_TTL, ..Default::default() }
    }

    /// Every VMI in `vmis` as it is (tests and relists).
    pub fn of(config: Config, vmis: impl IntoIterator<Item = Vmi>) -> Self {
        let mut p = Placed::new(config);
        vmis.into_iter().for_each(|v| p.set(v));
        p
    }

    /// The VMI's newest state as the watch shows it. An unbound state of a VMI this process bound is older
    /// than the binding, which is kept.
    pub fn set(&mut self, vmi: Vmi) {
        let k = key(&vmi);
        if vmi.node_name().is_none() && self.assumed.get(&k).is_some_and(|at| at.elapsed() < self.assume_ttl) {
            return;
        }
        self.assumed.remove(&k);
        self.put(k, vmi);
    }

    /// The VMI is gone.
    pub fn remove(&mut self, key: &str) {
        self.assumed.remove(key);
        self.take(key);
    }

    /// This process bound the VMI (`bound`: its state with the node set); count it until the watch shows it.
    pub fn assume(&mut self, bound: Vmi) {
        let k = key(&bound);
        self.assumed.insert(k.clone(), Instant::now());
        self.put(k, bound);
    }

    /// The binding was not written: back to `current`, the VMI as the watch last showed it (None: gone).
    pub fn forget(&mut self, key: &str, current: Option<Vmi>) {
        if self.assumed.remove(key).is_none() {
            return;
        }
        match current {
            Some(v) => self.put(key.to_string(), v),
            None => self.take(key),
        }
    }

    /// Whether this process bound the VMI and the watch has not shown it yet. A binding that waited past its
    /// time is forgotten: back to `current`, as in [`Placed::forget`].
    pub fn is_assumed(&mut self, key: &str, current: impl FnOnce() -> Option<Vmi>) -> bool {
        match self.assumed.get(key) {
            Some(at) if at.elapsed() < self.assume_ttl => true,
            Some(_) => {
                self.forget(key, current());
                false
            }
            None => false,
        }
    }

    /// Whether a full list was taken in.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Every VMI again from a full list: what is not in it is gone.
    pub fn relist(&mut self, vmis: impl IntoIterator<Item = Vmi>) {
        self.synced = true;
        let mut seen = HashSet::new();
        for v in vmis {
            seen.insert(key(&v));
            self.set(v);
        }
        let gone: Vec<String> =
            self.by_key.keys().chain(self.assumed.keys()).filter(|k| !seen.contains(*k)).cloned().collect();
        gone.iter().for_each(|k| self.remove(k));
    }

    pub fn load(&self, node: &str) -> Option<&Load> {
        self.nodes.get(node)
    }

    /// Every placed VMI with its node.
    pub fn all(&self) -> impl Iterator<Item = (&str, &VirtualMachineInstance)> {
        self.by_key.values().map(|e| (e.node.as_str(), &*e.vmi))
    }

    /// The placed VMIs with required pod anti-affinity, with their nodes.
    pub fn with_required_anti(&self) -> impl Iterator<Item = (&str, &VirtualMachineInstance)> {
        self.anti.iter().filter_map(|k| self.by_key.get(k)).map(|e| (e.node.as_str(), &*e.vmi))
    }

    fn put(&mut self, k: String, vmi: Vmi) {
        self.take(&k);
        let Some(node) = vmi.node_name().filter(|_| !finished(&vmi)).map(str::to_string) else { return };
        let request = request(&vmi, &self.config);
        let load = self.nodes.entry(node.clone()).or_default();
        load.used += request;
        load.vmis.insert(k.clone(), vmi.clone());
        if required_anti(&vmi) {
            self.anti.insert(k.clone());
        }
        self.by_key.insert(k, Entry { node, request, vmi });
    }

    fn take(&mut self, k: &str) {
        let Some(e) = self.by_key.remove(k) else { return };
        self.anti.remove(k);
        if let Some(load) = self.nodes.get_mut(&e.node) {
            load.used.cpu_milli = load.used.cpu_milli.saturating_sub(e.request.cpu_milli);
            load.used.memory = load.used.memory.saturating_sub(e.request.memory);
            load.vmis.remove(k);
            if load.vmis.is_empty() {
                self.nodes.remove(&e.node);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vmi(uid: &str, node: Option<&str>, phase: &str) -> Vmi {
        let mut v = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": uid, "namespace": "default", "uid": uid},
            "spec": {"domain": {"devices": {}, "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}},
            "status": {"phase": phase}});
        if let Some(n) = node {
            v["status"]["nodeName"] = json!(n);
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn used(p: &Placed, node: &str) -> (u64, usize) {
        p.load(node).map(|l| (l.used.cpu_milli, l.vmis.len())).unwrap_or((0, 0))
    }

    #[test]
    fn counts_follow_each_change_of_node_phase_and_deletion() {
        let mut p = Placed::new(Config::default());
        p.set(vmi("a", Some("n1"), "Running"));
        p.set(vmi("b", Some("n1"), "Running"));
        p.set(vmi("c", None, "Pending"));
        assert_eq!(used(&p, "n1"), (2000, 2));
        p.set(vmi("b", Some("n1"), "Succeeded"));
        assert_eq!(used(&p, "n1"), (1000, 1), "finished VMIs take no room");
        p.set(vmi("a", Some("n2"), "Running"));
        assert_eq!((used(&p, "n1"), used(&p, "n2")), ((0, 0), (1000, 1)));
        p.remove("a");
        assert_eq!(used(&p, "n2"), (0, 0));
        assert_eq!(p.all().count(), 0);
    }

    #[test]
    fn an_assumed_binding_outlives_older_unbound_states_and_is_undone_when_not_written() {
        let mut p = Placed::new(Config::default());
        p.set(vmi("a", None, "Pending"));
        p.assume(vmi("a", Some("n1"), "Scheduled"));
        p.set(vmi("a", None, "Pending"));
        assert_eq!(used(&p, "n1"), (1000, 1), "a stale unbound state must not undo the binding");
        assert!(p.is_assumed("a", || None));
        p.forget("a", Some(vmi("a", None, "Pending")));
        assert_eq!(used(&p, "n1"), (0, 0));
        p.assume(vmi("a", Some("n1"), "Scheduled"));
        p.set(vmi("a", Some("n1"), "Scheduled"));
        assert!(!p.is_assumed("a", || None), "the watch showed the binding");
        p.forget("a", None);
        assert_eq!(used(&p, "n1"), (1000, 1), "forgetting a binding the watch showed changes nothing");
    }

    #[test]
    fn a_relist_drops_what_is_gone() {
        let mut p = Placed::of(Config::default(), [vmi("a", Some("n1"), "Running"), vmi("b", Some("n1"), "Running")]);
        p.assume(vmi("c", Some("n2"), "Scheduled"));
        p.relist([vmi("a", Some("n1"), "Running")]);
        assert_eq!((used(&p, "n1"), used(&p, "n2")), ((1000, 1), (0, 0)));
        assert!(!p.is_assumed("c", || None));
    }

    #[test]
    fn a_binding_the_watch_never_shows_expires() {
        let mut p = Placed::new(Config::default());
        p.assume_ttl = Duration::ZERO;
        p.assume(vmi("a", Some("n1"), "Scheduled"));
        assert!(!p.is_assumed("a", || Some(vmi("a", None, "Pending"))), "past its time");
        assert_eq!(used(&p, "n1"), (0, 0), "and its room is free again");
        p.assume(vmi("a", Some("n1"), "Scheduled"));
        p.set(vmi("a", None, "Pending"));
        assert_eq!(used(&p, "n1"), (0, 0), "an expired binding gives way to what the watch shows");
    }
}
