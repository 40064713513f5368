//! Reporting damaged stored values: the store logs each one and refuses to serve it; this puts a Warning event
//! on the object, so `kubectl get events` and `kubectl describe` show it too.

use crate::rest::{self, admission::FieldValidation, WriteOptions};
use crate::state::ApiServer;
use kumo_api::{meta, ApiError};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

pub const REASON: &str = "StorageCorruption";

/// Polls the store for newly found damage and reports each key once.
pub fn spawn(api: Arc<ApiServer>) {
    tokio::spawn(async move {
        loop {
            let found: Vec<_> = api.objects.stores().iter().flat_map(|s| s.take_corrupt()).collect();
            for (key, detail) in found {
                if let Err(e) = report(&api, &key, &detail).await {
                    tracing::warn!(key = %key, "could not record an event about the corrupt value: {e}");
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
}

/// `/registry/{group}/{plural}/[{namespace}/]{name}` → (namespace, name).
fn place(key: &str, namespaced: bool) -> Option<(Option<&str>, &str)> {
    let rest: Vec<&str> = key.strip_prefix("/registry/")?.splitn(4, '/').collect();
    match (namespaced, rest.as_slice()) {
        (true, [_, _, ns, name]) => Some((Some(*ns), *name)),
        (false, [_, _, name]) => Some((None, *name)),
        _ => None,
    }
}

async fn report(api: &ApiServer, key: &str, detail: &str) -> Result<(), ApiError> {
    let def = api.def_for_key(key).ok_or_else(|| ApiError::internal(format!("no kind is stored under {key}")))?;
    let (ns, name) = place(key, def.namespaced).ok_or_else(|| ApiError::internal(format!("unexpected key {key}")))?;
    let event_ns = ns.unwrap_or("default");
    let now = meta::now_rfc3339();
    let mut involved = json!({"apiVersion": def.api_version(), "kind": def.kind, "name": name});
    if let Some(ns) = ns {
        involved["namespace"] = json!(ns);
    }
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": format!("{name}."), "namespace": event_ns},
        "involvedObject": involved,
        "reason": REASON, "type": "Warning",
        "message": format!("the stored value of this object is corrupt ({detail}); it is not served: restore it from a snapshot, or delete and recreate it"),
        "source": {"component": "kumo-apiserver"},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    });
    let event_def = api.registry.get("", "v1", "events").expect("built-in");
    let mut opts = WriteOptions {
        fv: FieldValidation::Ignore,
        manager: "kumo-apiserver".into(),
        dry_run: false,
        warnings: vec![],
    };
    rest::create(api, &event_def, Some(event_ns), event, &mut opts, None).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_place_objects() {
        assert_eq!(super::place("/registry/core/configmaps/default/c1", true), Some((Some("default"), "c1")));
        assert_eq!(super::place("/registry/core/namespaces/n1", false), Some((None, "n1")));
        assert_eq!(super::place("/registry/core/configmaps/default", true), None);
    }
}
