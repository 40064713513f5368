//! Admission of PersistentVolumeClaims, PersistentVolumes and StorageClasses, as Kubernetes' admission plugins
//! do it: the default StorageClass for claims that name none (DefaultStorageClass), the protection finalizers
//! (StorageObjectInUseProtection), and growing a claim only where its class allows (PersistentVolumeClaimResize).
//! The rules that need no other object are in `kumo_api::storage`.

use crate::state::ApiServer;
use kumo_api::resource::Builtin;
use kumo_api::status::Cause;
use kumo_api::{meta, storage, ApiError, ResourceDef};
use serde_json::{json, Value};

fn is_storage(def: &ResourceDef) -> bool {
    matches!(def.builtin, Some(Builtin::PersistentVolumeClaim | Builtin::PersistentVolume | Builtin::StorageClass))
}

fn add_finalizer(obj: &mut Value, finalizer: &str) {
    let mut fins = meta::finalizers(obj);
    if !fins.iter().any(|f| f == finalizer) {
        fins.push(finalizer.to_string());
        meta::set_meta(obj, "finalizers", json!(fins));
    }
}

/// The StorageClasses.
async fn classes(api: &ApiServer) -> Result<Vec<Value>, ApiError> {
    let def = api.registry.get("storage.k8s.io", "v1", "storageclasses").expect("built-in");
    Ok(api.objects.list_all(&def, None).await?.0)
}

/// Defaults and finalizers of a new storage object.
pub async fn on_create(api: &ApiServer, def: &ResourceDef, obj: &mut Value) -> Result<(), ApiError> {
    if !is_storage(def) {
        return Ok(());
    }
    storage::default_new(&def.kind, obj);
    match def.builtin {
        Some(Builtin::PersistentVolumeClaim) => {
            // A claim that names no class (the field absent, not "") gets the default one, the newest if several.
            if obj.pointer("/spec/storageClassName").is_none_or(Value::is_null) {
                let mut defaults: Vec<Value> =
                    classes(api).await?.into_iter().filter(storage::is_default_class).collect();
                let created =
                    |c: &Value| c.pointer("/metadata/creationTimestamp").and_then(Value::as_str).map(String::from);
                defaults.sort_by_key(created);
                if let Some(class) = defaults.last() {
                    obj["spec"]["storageClassName"] = json!(meta::name(class));
                }
            }
            add_finalizer(obj, storage::PVC_PROTECTION);
        }
        Some(Builtin::PersistentVolume) => add_finalizer(obj, storage::PV_PROTECTION),
        _ => {}
    }
    Ok(())
}

/// The rules of an update from `old` to `new`.
pub async fn on_update(api: &ApiServer, def: &ResourceDef, old: &Value, new: &Value) -> Result<(), ApiError> {
    if !is_storage(def) {
        return Ok(());
    }
    let mut causes = storage::validate_update(&def.kind, old, new);
    if causes.is_empty() && def.builtin == Some(Builtin::PersistentVolumeClaim) {
        let size = |o: &Value| serde_json::from_value(o.clone()).ok().as_ref().and_then(storage::requested_bytes);
        if size(new) > size(old) {
            let class = new.pointer("/spec/storageClassName").and_then(Value::as_str).unwrap_or_default();
            let allows = classes(api).await?.iter().any(|c| {
                meta::name(c) == class && c.get("allowVolumeExpansion").and_then(Value::as_bool) == Some(true)
            });
            if !allows {
                causes.push(Cause::invalid(
                    "spec.resources.requests.storage",
                    "Forbidden: only dynamically provisioned pvc can be resized and the storageclass that \
                     provisions the pvc must support resize",
                ));
            }
        }
    }
    if causes.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid(&def.group, &def.kind, meta::name(new), causes))
}
