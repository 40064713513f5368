//! Which live watchers a change goes to. Watchers are filed by resource (`/registry/{group}/{plural}/`), and
//! those whose label selector requires `key=value` also by that label: a change reaches the watchers of its
//! resource without a label, and of the labels its object has or had. So a change costs the watchers it
//! concerns, not every watcher (ten thousand agents each watching the VMIs of their own node).
//!
//! A watcher whose queue is full (it fell behind) is dropped: its stream ends and its client relists.

use super::CachedEvent;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What a watcher wants: keys under `prefix`, and (optionally) only objects that have or had a label.
#[derive(Clone, Debug, Default)]
pub struct Interest {
    pub prefix: String,
    pub label: Option<(String, String)>,
}

impl Interest {
    pub fn prefix(prefix: &str) -> Interest {
        Interest { prefix: prefix.to_string(), label: None }
    }

    /// Whether `ev` is of interest: as a live change reaches only the watchers it concerns, so a replay of
    /// history passes only those changes on (the caller still applies its whole selector).
    pub fn concerns(&self, ev: &CachedEvent) -> bool {
        ev.key.starts_with(&self.prefix) && self.label.as_ref().is_none_or(|(k, v)| ev.has_label(k, v))
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Slot {
    /// Over more than one resource (`/registry/`, a whole group).
    Broad,
    Resource(String),
    Label(String, String, String),
}

struct Watcher {
    prefix: String,
    tx: mpsc::Sender<Arc<CachedEvent>>,
}

#[derive(Default)]
pub struct Routes {
    next: u64,
    slots: HashMap<Slot, HashMap<u64, Watcher>>,
    slot_of: HashMap<u64, Slot>,
}

/// `/registry/{group}/{plural}/` of a key or prefix that reaches that deep.
pub fn resource_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("/registry/")?;
    let group = rest.find('/')?;
    let plural = rest[group + 1..].find('/')?;
    Some(&key[.."/registry/".len() + group + 1 + plural + 1])
}

impl Routes {
    /// Files a watcher; its changes arrive on the receiver, which ends when the watcher is dropped here.
    pub fn add(&mut self, interest: &Interest, capacity: usize) -> (u64, mpsc::Receiver<Arc<CachedEvent>>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let id = self.next;
        self.next += 1;
        let slot = match (resource_of(&interest.prefix), &interest.label) {
            (None, _) => Slot::Broad,
            (Some(r), None) => Slot::Resource(r.to_string()),
            (Some(r), Some((k, v))) => Slot::Label(r.to_string(), k.clone(), v.clone()),
        };
        self.slots.entry(slot.clone()).or_default().insert(id, Watcher { prefix: interest.prefix.clone(), tx });
        self.slot_of.insert(id, slot);
        (id, rx)
    }

    pub fn remove(&mut self, id: u64) {
        if let Some(slot) = self.slot_of.remove(&id) {
            if let Some(ws) = self.slots.get_mut(&slot) {
                ws.remove(&id);
                if ws.is_empty() {
                    self.slots.remove(&slot);
                }
            }
        }
    }

    /// Ends every watch (their clients relist).
    pub fn clear(&mut self) {
        self.slots.clear();
        self.slot_of.clear();
    }

    /// How many watchers are filed per resource (`/registry/{group}/{plural}/`; None: over several).
    pub fn per_resource(&self) -> HashMap<Option<String>, usize> {
        let mut out = HashMap::new();
        for (slot, ws) in &self.slots {
            let r = match slot {
                Slot::Broad => None,
                Slot::Resource(r) | Slot::Label(r, ..) => Some(r.clone()),
            };
            *out.entry(r).or_default() += ws.len();
        }
        out
    }

    /// How many watchers are filed.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.slot_of.len()
    }

    /// Hands `ev` to the watchers it concerns.
    pub fn send(&mut self, ev: &Arc<CachedEvent>) {
        let mut slots = vec![Slot::Broad];
        if let Some(resource) = resource_of(&ev.key) {
            slots.push(Slot::Resource(resource.to_string()));
            let labels = ev.labels().iter();
            slots.extend(labels.map(|(k, v)| Slot::Label(resource.to_string(), k.clone(), v.clone())));
        }
        let mut behind = Vec::new();
        for slot in slots {
            let Some(ws) = self.slots.get(&slot) else { continue };
            for (id, w) in ws {
                if ev.key.starts_with(&w.prefix) && w.tx.try_send(ev.clone()).is_err() {
                    // Full (it fell behind) or closed (its stream is gone): either way, no longer a watcher.
                    behind.push(*id);
                }
            }
        }
        for id in behind {
            self.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(key: &str, labels: serde_json::Value, prev: Option<serde_json::Value>) -> Arc<CachedEvent> {
        let kv = |labels: serde_json::Value, rev: i64| kumo_store::KeyValue {
            key: key.into(),
            value: serde_json::to_vec(&json!({"metadata": {"labels": labels}})).unwrap(),
            create_revision: 1,
            mod_revision: rev,
        };
        let e = kumo_store::Event { kind: kumo_store::EventKind::Put, kv: kv(labels, 2), prev: prev.map(|p| kv(p, 1)) };
        CachedEvent::new(e, None).unwrap()
    }

    #[test]
    fn resources_are_the_first_three_segments() {
        assert_eq!(
            resource_of("/registry/kubevirt.io/virtualmachineinstances/ns/a"),
            Some("/registry/kubevirt.io/virtualmachineinstances/")
        );
        assert_eq!(resource_of("/registry/core/nodes/"), Some("/registry/core/nodes/"));
        assert_eq!(resource_of("/registry/core/"), None);
        assert_eq!(resource_of("/registry/"), None);
    }

    #[test]
    fn a_change_reaches_only_the_watchers_it_concerns() {
        let mut r = Routes::default();
        let vmis = "/registry/kubevirt.io/virtualmachineinstances/";
        let on =
            |node: &str| Interest { prefix: vmis.into(), label: Some(("kubevirt.io/nodeName".into(), node.into())) };
        let (_, mut a) = r.add(&on("a"), 8);
        let (_, mut b) = r.add(&on("b"), 8);
        let (_, mut all) = r.add(&Interest::prefix(vmis), 8);
        let (_, mut team) = r.add(&Interest::prefix(&format!("{vmis}team/")), 8);
        let (_, mut broad) = r.add(&Interest::prefix("/registry/"), 8);
        let (_, mut nodes) = r.add(&Interest::prefix("/registry/core/nodes/"), 8);
        r.send(&event(&format!("{vmis}default/x"), json!({"kubevirt.io/nodeName": "a"}), None));
        // Moved from a to b: both hear of it (a sees it leave).
        r.send(&event(
            &format!("{vmis}team/y"),
            json!({"kubevirt.io/nodeName": "b"}),
            Some(json!({"kubevirt.io/nodeName": "a"})),
        ));
        let count = |rx: &mut mpsc::Receiver<Arc<CachedEvent>>| std::iter::from_fn(|| rx.try_recv().ok()).count();
        assert_eq!(
            [count(&mut a), count(&mut b), count(&mut all), count(&mut team), count(&mut broad), count(&mut nodes)],
            [2, 1, 2, 1, 2, 0]
        );
    }

    #[test]
    fn a_watcher_that_falls_behind_is_dropped_and_its_stream_ends() {
        let mut r = Routes::default();
        let (_, mut slow) = r.add(&Interest::prefix("/registry/core/nodes/"), 1);
        r.send(&event("/registry/core/nodes/a", json!({}), None));
        r.send(&event("/registry/core/nodes/b", json!({}), None));
        assert_eq!(r.len(), 0);
        assert!(slow.try_recv().is_ok());
        assert!(matches!(slow.try_recv(), Err(mpsc::error::TryRecvError::Disconnected)));
    }
}
