//! Objects on top of the [`Store`]: JSON encoding, keys, and `resourceVersion` (which is the store revision
//! and is never stored inside the object, exactly as Kubernetes does with etcd).

use kumo_api::{ApiError, ResourceDef};
use kumo_store::{Error as StoreError, KeyValue, RangeRequest, Store};
use serde_json::Value;
use std::sync::Arc;

/// Where Events are stored (core/v1 and events.k8s.io/v1 share it).
pub const EVENTS_PREFIX: &str = "/registry/core/events/";

/// Whether `key` (or a key prefix under it) is an Event's.
pub fn is_event_key(key: &str) -> bool {
    key.starts_with(EVENTS_PREFIX)
}

#[derive(Clone)]
pub struct Objects {
    /// Everything but Events.
    pub store: Arc<dyn Store>,
    /// Events: the same store, or one of their own (a file of its own on the embedded backend, optionally an
    /// etcd of its own), so that a flood of them never slows or fills the store everything else is in.
    pub events: Arc<dyn Store>,
    /// Events are deleted this long after their last write.
    pub event_ttl: std::time::Duration,
}

/// Decodes a stored object and stamps its resourceVersion.
pub fn decode(kv: &KeyValue) -> Result<Value, ApiError> {
    decode_at(&kv.key, &kv.value, kv.mod_revision)
}

/// [`decode`] of `json`, stored under `key` at `revision`.
pub fn decode_at(key: &str, json: &[u8], revision: i64) -> Result<Value, ApiError> {
    let mut v: Value = serde_json::from_slice(json)
        .map_err(|e| ApiError::internal(format!("stored object {key} is not valid JSON: {e}")))?;
    kumo_api::meta::set_meta(&mut v, "resourceVersion", Value::String(revision.to_string()));
    Ok(v)
}

fn encode(obj: &Value) -> Vec<u8> {
    let mut o = obj.clone();
    kumo_api::meta::remove_meta(&mut o, "resourceVersion");
    kumo_api::meta::remove_meta(&mut o, "selfLink");
    serde_json::to_vec(&o).expect("JSON values always serialize")
}

/// Maps a store failure on `def`/`name` to the API error Kubernetes would give.
pub fn store_error(def: &ResourceDef, name: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound(_) => ApiError::not_found(&def.group, &def.plural, name),
        StoreError::AlreadyExists(_) => ApiError::already_exists(&def.group, &def.plural, name),
        StoreError::Conflict { .. } => ApiError::stale(&def.group, &def.plural, name),
        StoreError::Compacted { requested, compacted } => {
            ApiError::gone(format!("too old resource version: {requested} ({compacted})"))
        }
        StoreError::FutureRevision { requested, current } => {
            let mut e = ApiError::timeout(format!("Too large resource version: {requested}, current: {current}"));
            e.retry_after_seconds = Some(1);
            e
        }
        // The store is down or slow: a retryable 503/504 (with Retry-After), never a 500.
        StoreError::Unavailable(m) => {
            let mut e = ApiError::unavailable(format!("storage is unavailable: {m}; retry shortly"));
            e.retry_after_seconds = Some(1);
            e
        }
        StoreError::Timeout(m) => {
            let mut e = ApiError::timeout(format!("storage did not answer in time: {m}; retry shortly"));
            e.retry_after_seconds = Some(1);
            e
        }
        StoreError::NoSpace(m) => {
            let mut e = ApiError::insufficient_storage(format!(
                "the write was not stored: the server's disk is full ({m}); free space on it, then retry"
            ));
            e.retry_after_seconds = Some(5);
            e
        }
        // Never served: the client learns which object, the operator gets the details in the log and events.
        StoreError::Corrupt { key, detail } => {
            ApiError::internal(format!("the stored object {key} is corrupt ({detail}); restore it from a snapshot"))
        }
        StoreError::Backend(m) => ApiError::internal(format!("storage error: {m}")),
    }
}

/// Parses a resourceVersion string; anything but a non-negative integer is a 400.
pub fn parse_rv(rv: &str) -> Result<i64, ApiError> {
    rv.parse::<i64>().ok().filter(|r| *r >= 0).ok_or_else(|| {
        ApiError::bad_request(format!("invalid resource version {rv:?}: must be a non-negative integer"))
    })
}

/// Serves a stored object at the version the client asked for (versions of a kind share storage; kumo
/// converts between CRD versions by rewriting apiVersion only, the CRD `None` strategy).
pub fn present(def: &ResourceDef, obj: Value) -> Value {
    let mut obj = if def.storage_group.is_some() { kumo_api::convert::event_from_core(&obj) } else { obj };
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), Value::String(def.api_version()));
        m.insert("kind".into(), Value::String(def.kind.clone()));
    }
    obj
}

/// The stored form of an object: its kind's storage version (and representation).
pub fn to_storage(def: &ResourceDef, obj: Value) -> Value {
    let mut obj = if def.storage_group.is_some() { kumo_api::convert::event_to_core(&obj) } else { obj };
    if def.kind == "Event" && matches!(def.group.as_str(), "" | "events.k8s.io") {
        kumo_api::convert::fill_legacy_event_fields(&mut obj);
    }
    obj["apiVersion"] = Value::String(def.storage_api_version());
    obj
}

impl Objects {
    /// Objects in one store: Events with the rest.
    pub fn single(store: Arc<dyn Store>) -> Objects {
        Objects { events: store.clone(), store, event_ttl: std::time::Duration::from_secs(3600) }
    }

    /// The store that holds `key` (or every key under a prefix).
    pub fn store_for(&self, key: &str) -> &Arc<dyn Store> {
        if is_event_key(key) {
            &self.events
        } else {
            &self.store
        }
    }

    /// Whether Events have a store of their own.
    pub fn events_apart(&self) -> bool {
        !Arc::ptr_eq(&self.store, &self.events)
    }

    /// Every distinct store: the main one first.
    pub fn stores(&self) -> Vec<&Arc<dyn Store>> {
        if self.events_apart() {
            vec![&self.store, &self.events]
        } else {
            vec![&self.store]
        }
    }

    pub async fn get(&self, def: &ResourceDef, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        let key = def.key(ns, name);
        match self.store_for(&key).get(&key).await {
            Ok(Some(kv)) => decode(&kv),
            Ok(None) => Err(ApiError::not_found(&def.group, &def.plural, name)),
            Err(e) => Err(store_error(def, name, e)),
        }
    }

    /// [`Objects::get`] without a linearizable round (see [`Store::get_serializable`]); None when absent.
    pub async fn get_serializable(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, ApiError> {
        let key = def.key(ns, name);
        match self.store_for(&key).get_serializable(&key).await {
            Ok(kv) => kv.as_ref().map(decode).transpose(),
            Err(e) => Err(store_error(def, name, e)),
        }
    }

    pub async fn try_get(&self, def: &ResourceDef, ns: Option<&str>, name: &str) -> Result<Option<Value>, ApiError> {
        match self.get(def, ns, name).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.code == 404 => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn create(&self, def: &ResourceDef, obj: &Value) -> Result<Value, ApiError> {
        let name = kumo_api::meta::name(obj);
        let key = def.key(kumo_api::meta::namespace(obj), name);
        let kv = if is_event_key(&key) {
            self.events.create_expiring(&key, encode(obj), self.event_ttl).await
        } else {
            self.store.create(&key, encode(obj)).await
        };
        let kv = kv.map_err(|e| store_error(def, name, e))?;
        let mut out = obj.clone();
        kumo_api::meta::set_meta(&mut out, "resourceVersion", Value::String(kv.mod_revision.to_string()));
        Ok(out)
    }

    /// Compare-and-swap on `expected_rv` (the resourceVersion the change was computed from).
    pub async fn update(&self, def: &ResourceDef, obj: &Value, expected_rv: i64) -> Result<Value, ApiError> {
        let name = kumo_api::meta::name(obj);
        let key = def.key(kumo_api::meta::namespace(obj), name);
        // Every write of an Event starts its TTL anew, as Kubernetes' does.
        let kv = if is_event_key(&key) {
            self.events.update_expiring(&key, encode(obj), expected_rv, self.event_ttl).await
        } else {
            self.store.update(&key, encode(obj), expected_rv).await
        };
        let kv = kv.map_err(|e| store_error(def, name, e))?;
        let mut out = obj.clone();
        kumo_api::meta::set_meta(&mut out, "resourceVersion", Value::String(kv.mod_revision.to_string()));
        Ok(out)
    }

    pub async fn delete(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        expected_rv: Option<i64>,
    ) -> Result<Value, ApiError> {
        let key = def.key(ns, name);
        let kv = self.store_for(&key).delete(&key, expected_rv).await.map_err(|e| store_error(def, name, e))?;
        decode(&kv)
    }

    /// Every stored object of `def` (in `ns` when given), at the latest revision.
    pub async fn list_all(&self, def: &ResourceDef, ns: Option<&str>) -> Result<(Vec<Value>, i64), ApiError> {
        let prefix = def.list_prefix(ns);
        let r = self
            .store_for(&prefix)
            .range(RangeRequest { prefix: prefix.clone(), ..Default::default() })
            .await
            .map_err(|e| store_error(def, "", e))?;
        let objs = r.kvs.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        Ok((objs, r.revision))
    }
}
