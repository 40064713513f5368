//! One change as the watch cache holds it. While it is among the newest events it is held decoded (live
//! watchers, the garbage collector and writes all read it then); older, it is only its stored bytes. The ring
//! keeps 75 s of history, which at ten thousand nodes is over a hundred thousand events: decoded trees are
//! several times their JSON, and they were most of the API server's memory.

use crate::objects::{decode, decode_at};
use bytes::Bytes;
use kumo_store::{EventKind, KeyValue};
use serde_json::Value;
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub struct CachedEvent {
    pub revision: i64,
    pub key: String,
    pub deleted: bool,
    object: Stored,
    prev: Option<Stored>,
    /// The labels the object has or had: which watchers a change concerns is decided without decoding it
    /// (ten thousand agents resuming their watches each pass over every VMI change since their revision).
    labels: Box<[(String, String)]>,
    hot: Mutex<Option<Hot>>,
    /// Watch-stream lines already encoded for this event, by (event type, served apiVersion): watchers of the
    /// same kind share one serialization instead of each encoding the object again. Made again on demand once
    /// cold: a replay to thousands of watchers (every agent's watch of Nodes resuming) encodes it once.
    encoded: Mutex<Vec<(String, Bytes)>>,
}

/// An object as the store holds it, and the revision decoding stamps on it as its resourceVersion.
#[derive(Debug, Clone)]
struct Stored {
    json: Bytes,
    revision: i64,
}

impl Stored {
    fn of(kv: KeyValue) -> Stored {
        Stored { json: Bytes::from(kv.value), revision: kv.mod_revision }
    }

    fn decode(&self, key: &str) -> Option<Value> {
        decode_at(key, &self.json, self.revision).ok()
    }
}

#[derive(Debug)]
struct Hot {
    object: Arc<Value>,
    prev: Option<Arc<Value>>,
}

impl CachedEvent {
    /// The change decoded (None: its object is not JSON). `before` is the key's newest cached event: when it is
    /// the state this change replaced, its object is the previous state, shared rather than decoded again.
    pub(super) fn new(e: kumo_store::Event, before: Option<Arc<CachedEvent>>) -> Option<Arc<CachedEvent>> {
        // For a deletion, `kv` is the last state and its mod_revision the deletion's: decode stamps that.
        let object = decode(&e.kv).ok()?;
        let before = before.filter(|b| !b.deleted && e.prev.as_ref().is_some_and(|p| b.revision == p.mod_revision));
        let (prev, prev_value) = match (e.prev, before) {
            (Some(_), Some(b)) => (Some(b.object.clone()), Some(b.object())),
            (Some(p), None) => {
                let value = decode(&p).ok().map(Arc::new);
                (Some(Stored::of(p)), value)
            }
            (None, _) => (None, None),
        };
        let mut labels: Vec<(String, String)> =
            std::iter::once(&object).chain(prev_value.as_deref()).flat_map(labels_of).collect();
        labels.sort();
        labels.dedup();
        Some(Arc::new(CachedEvent {
            labels: labels.into_boxed_slice(),
            revision: e.kv.mod_revision,
            deleted: e.kind == EventKind::Delete,
            key: e.kv.key.clone(),
            object: Stored::of(e.kv),
            prev,
            hot: Mutex::new(Some(Hot { object: Arc::new(object), prev: prev_value })),
            encoded: Mutex::default(),
        }))
    }

    /// An object as read from the store (when the cache starts): its bytes only, and its labels.
    pub(super) fn stored(kv: KeyValue) -> Arc<CachedEvent> {
        let labels = labels_in(&kv.value);
        Arc::new(CachedEvent::cold(kv.key.clone(), Stored::of(kv), labels))
    }

    /// This change as the copy of its object once it has left the ring: the object's bytes and labels only.
    pub(super) fn settled(&self) -> Arc<CachedEvent> {
        let labels = labels_in(&self.object.json);
        Arc::new(CachedEvent::cold(self.key.clone(), self.object.clone(), labels))
    }

    fn cold(key: String, object: Stored, labels: Box<[(String, String)]>) -> CachedEvent {
        let revision = object.revision;
        CachedEvent {
            labels,
            revision,
            deleted: false,
            key,
            object,
            prev: None,
            hot: Mutex::new(None),
            encoded: Mutex::default(),
        }
    }

    /// The new object (for a deletion: the last state), resourceVersion stamped with `revision`.
    pub fn object(&self) -> Arc<Value> {
        if let Some(hot) = self.hot.lock().expect("lock").as_ref() {
            return hot.object.clone();
        }
        Arc::new(self.object.decode(&self.key).expect("decoded when the event was cached"))
    }

    /// The state this change replaced, when the store said.
    pub fn prev(&self) -> Option<Arc<Value>> {
        if let Some(hot) = self.hot.lock().expect("lock").as_ref() {
            return hot.prev.clone();
        }
        self.prev.as_ref().and_then(|p| p.decode(&self.key)).map(Arc::new)
    }

    /// The encoding of this event under `key`, computed by `make` the first time. Made under the lock, so that
    /// watchers handed the event together wait for one encoding rather than each making their own.
    pub fn encoded(&self, key: &str, make: impl FnOnce() -> Bytes) -> Bytes {
        let mut encoded = self.encoded.lock().expect("lock");
        if let Some((_, b)) = encoded.iter().find(|(k, _)| k == key) {
            return b.clone();
        }
        let b = make();
        encoded.push((key.to_string(), b.clone()));
        b
    }

    /// Whether this change replaced a state the store told of (an update, or a deletion).
    pub fn replaced(&self) -> bool {
        self.prev.is_some()
    }

    /// Whether the object has or had label `key` = `value`.
    pub fn has_label(&self, key: &str, value: &str) -> bool {
        self.labels.iter().any(|(k, v)| k == key && v == value)
    }

    /// Every label the object has or had.
    pub fn labels(&self) -> &[(String, String)] {
        &self.labels
    }

    /// Drops the decoded object and the encodings: the event is old, and few will read it again.
    pub(super) fn cool(&self) {
        self.hot.lock().expect("lock").take();
        *self.encoded.lock().expect("lock") = Vec::new();
    }
}

/// The labels of a stored object, read without decoding the rest of it.
fn labels_in(json: &[u8]) -> Box<[(String, String)]> {
    #[derive(serde::Deserialize)]
    struct Labelled {
        #[serde(default)]
        metadata: Meta,
    }
    #[derive(serde::Deserialize, Default)]
    struct Meta {
        #[serde(default)]
        labels: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    }
    let labels = serde_json::from_slice::<Labelled>(json).ok().and_then(|o| o.metadata.labels);
    labels.into_iter().flatten().filter_map(|(k, v)| Some((k, v.as_str()?.to_string()))).collect()
}

fn labels_of(obj: &Value) -> impl Iterator<Item = (String, String)> + '_ {
    let labels = obj.pointer("/metadata/labels").and_then(Value::as_object).into_iter().flatten();
    labels.filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &Value, rev: i64) -> KeyValue {
        KeyValue { key: key.into(), value: serde_json::to_vec(value).unwrap(), create_revision: 1, mod_revision: rev }
    }

    #[test]
    fn a_cooled_event_reads_the_same_as_a_hot_one() {
        let key = "/registry/core/configmaps/default/a";
        let (v1, v2) = (
            serde_json::json!({"metadata": {"labels": {"x": "1"}}}),
            serde_json::json!({"metadata": {"labels": {"x": "2"}}}),
        );
        let put = |kv1: KeyValue, kv2: KeyValue| kumo_store::Event { kind: EventKind::Put, kv: kv2, prev: Some(kv1) };
        let first = CachedEvent::new(kumo_store::Event { kind: EventKind::Put, kv: kv(key, &v1, 2), prev: None }, None)
            .unwrap();
        // With the state it replaced at hand, and without: the same previous object either way.
        for before in [Some(first.clone()), None] {
            let ev = CachedEvent::new(put(kv(key, &v1, 2), kv(key, &v2, 3)), before).unwrap();
            let hot = (ev.object(), ev.prev(), ev.encoded("MODIFIED|v1", || Bytes::from_static(b"line")));
            ev.cool();
            assert_eq!(*ev.object(), *hot.0);
            assert_eq!(kumo_api::meta::resource_version(&ev.object()), "3");
            assert_eq!(ev.prev().as_deref(), hot.1.as_deref());
            assert_eq!(kumo_api::meta::resource_version(&ev.prev().unwrap()), "2");
            assert_eq!(hot.2, Bytes::from_static(b"line"));
            assert!(ev.has_label("x", "1") && ev.has_label("x", "2"), "labels it had and has: {:?}", ev.labels());
            assert!(!ev.has_label("x", "3"));
            // Cold, an encoding is made again when asked for, then shared.
            assert_eq!(ev.encoded("MODIFIED|v1", || Bytes::from_static(b"again")), Bytes::from_static(b"again"));
            assert_eq!(ev.encoded("MODIFIED|v1", || Bytes::from_static(b"third")), Bytes::from_static(b"again"));
        }
    }
}
