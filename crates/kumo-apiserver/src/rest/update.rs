//! Updating an object as the successor of what is stored: subresource rules (status, finalize), system-owned
//! metadata, admission, generation, managed fields, and completing a deletion when the last finalizer goes.

use super::admission::{self, list_types};
use super::create::{after_write, check_size};
use super::WriteOptions;
use crate::objects::{parse_rv, present, to_storage};
use crate::state::ApiServer;
use kumo_api::{apply, meta, ApiError, ResourceDef};
use serde_json::{json, Value};

/// Persists `new` as the successor of `current`. Returns the stored object and whether anything changed.
#[allow(clippy::too_many_arguments)]
pub async fn update(
    api: &ApiServer,
    def: &ResourceDef,
    url_ns: Option<&str>,
    current: &Value,
    mut new: Value,
    sub: Option<&str>,
    opts: &mut WriteOptions,
    applied: bool,
) -> Result<(Value, bool), ApiError> {
    let current_rv = parse_rv(meta::resource_version(current))?;
    // Work in the served representation; the stored one is produced at the end.
    let current = &present(def, current.clone());
    match sub {
        Some("status") => {
            let status = new.get("status").cloned();
            let mut merged = current.clone();
            match status {
                Some(s) => merged["status"] = s,
                None => {
                    merged.as_object_mut().map(|m| m.remove("status"));
                }
            }
            if let Some(mf) = new.pointer("/metadata/managedFields").cloned() {
                meta::set_meta(&mut merged, "managedFields", mf);
            }
            new = merged;
        }
        Some("finalize") => {
            // Only spec.finalizers changes through /finalize.
            let fins = new.pointer("/spec/finalizers").cloned().unwrap_or(json!([]));
            let mut merged = current.clone();
            merged["spec"]["finalizers"] = fins;
            new = merged;
        }
        _ => {
            if def.status_subresource {
                match current.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        new.as_object_mut().map(|m| m.remove("status"));
                    }
                }
            }
            if def.kind == "Namespace" && def.group.is_empty() {
                new["spec"] = current.get("spec").cloned().unwrap_or(json!({}));
            }
        }
    }
    // System-owned metadata never changes through a write.
    for k in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "namespace",
        "name",
    ] {
        match current.pointer(&format!("/metadata/{k}")) {
            Some(v) => meta::set_meta(&mut new, k, v.clone()),
            None => meta::remove_meta(&mut new, k),
        }
    }
    meta::remove_meta(&mut new, "resourceVersion");
    admission::validate(def, &mut new, url_ns, opts.fv, &mut opts.warnings)?;
    admission::common_rules(def, &mut new)?;
    admission::on_update(def, current, &new)?;
    super::storage::on_update(api, def, current, &new).await?;
    if meta::deletion_timestamp(current).is_some() {
        let old: Vec<String> = meta::finalizers(current);
        if let Some(added) = meta::finalizers(&new).into_iter().find(|f| !old.contains(f)) {
            return Err(ApiError::invalid(&def.group, &def.kind, meta::name(current), vec![kumo_api::Cause::invalid(
                "metadata.finalizers",
                format!("Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers [\"{added}\"]"),
            )]));
        }
    }
    if admission::spec_changed(current, &new) {
        meta::set_meta(&mut new, "generation", json!(meta::generation(current) + 1));
    }
    if !applied {
        if let Some(mf) = current.pointer("/metadata/managedFields") {
            if new.pointer("/metadata/managedFields").is_none() {
                meta::set_meta(&mut new, "managedFields", mf.clone());
            }
        }
        apply::track_update(
            Some(current),
            &mut new,
            &opts.manager,
            &meta::now_rfc3339(),
            &def.api_version(),
            &*list_types(def),
        );
    }
    new = to_storage(def, new);
    let mut cur_storage = to_storage(def, current.clone());
    meta::set_meta(&mut cur_storage, "resourceVersion", json!(current_rv.to_string()));
    if admission::same_object(&cur_storage, &new) {
        return Ok((current.clone(), false));
    }
    check_size(&new)?;
    if opts.dry_run {
        return Ok((new, true));
    }
    if meta::deletion_timestamp(&new).is_some()
        && meta::finalizers(&new).is_empty()
        && !namespace_spec_finalizers(def, &new)
    {
        // The last finalizer is gone: the deletion completes now.
        let out = api.objects.delete(def, url_ns, meta::name(&new), Some(current_rv)).await?;
        return Ok((out, true));
    }
    let out = api.objects.update(def, &new, current_rv).await?;
    after_write(api, def, &out);
    Ok((out, true))
}

/// A guess at the object a write of `def`/`ns`/`name` replaces (at exactly `rv` when the client named one):
/// the watch cache's copy, else a serializable store read, either of which may lag the store. The write's
/// compare-and-swap on the guess's revision makes a stale guess fail; callers redo any refusal or no-op from
/// an authoritative read, as Kubernetes' GuaranteedUpdate does with its cached object.
pub async fn current_guess(
    api: &ApiServer,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    rv: Option<i64>,
) -> Result<Option<Value>, ApiError> {
    let wanted = |rv_of: i64| rv.is_none_or(|rv| rv == rv_of);
    let key = def.key(ns, name);
    if let Some(ev) = api.cache_for(&key).newest(&key).filter(|ev| !ev.deleted && wanted(ev.revision)) {
        return Ok(Some((*ev.object()).clone()));
    }
    let read = api.objects.get_serializable(def, ns, name).await?;
    Ok(read.filter(|obj| parse_rv(meta::resource_version(obj)).is_ok_and(wanted)))
}

/// A Namespace is only removed once its `spec.finalizers` (the namespace controller's) are done too.
pub fn namespace_spec_finalizers(def: &ResourceDef, obj: &Value) -> bool {
    def.kind == "Namespace"
        && def.group.is_empty()
        && obj.pointer("/spec/finalizers").and_then(Value::as_array).is_some_and(|a| !a.is_empty())
}
