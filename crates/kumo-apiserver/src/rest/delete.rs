//! Deleting an object: preconditions, finalizers, deletionTimestamp, propagation policy; and releasing a
//! finalizer. The HTTP handlers and the built-in controllers (GC, namespaces, CRD cleanup) both go through here.

use super::update::namespace_spec_finalizers;
use super::DeleteOptions;
use crate::objects::parse_rv;
use crate::state::ApiServer;
use kumo_api::{meta, ApiError, ResourceDef};
use serde_json::{json, Value};

/// The outcome of deleting one object.
pub enum Deleted {
    /// Removed from the store now.
    Gone(Value),
    /// Marked with deletionTimestamp; finalizers still to run.
    Pending(Value),
}

/// Deletes one object the way the API does; also used by the garbage collector and namespace deletion.
pub async fn delete(
    api: &ApiServer,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    opts: &DeleteOptions,
) -> Result<Deleted, ApiError> {
    for _ in 0..8 {
        let current = api.objects.get(def, ns, name).await?;
        if let Some(uid) = &opts.precondition_uid {
            if uid != meta::uid(&current) {
                return Err(ApiError::conflict(
                    &def.group,
                    &def.plural,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta::uid(&current)
                    ),
                ));
            }
        }
        if let Some(rv) = &opts.precondition_rv {
            if parse_rv(rv)? != parse_rv(meta::resource_version(&current))? {
                return Err(ApiError::conflict(
                    &def.group,
                    &def.plural,
                    name,
                    &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta::resource_version(&current)
                ),
                ));
            }
        }
        let rv = parse_rv(meta::resource_version(&current))?;
        let mut finalizers = meta::finalizers(&current);
        match opts.propagation.as_deref() {
            Some("Foreground") => add(&mut finalizers, "foregroundDeletion"),
            Some("Orphan") => add(&mut finalizers, "orphan"),
            _ => {}
        }
        let already = meta::deletion_timestamp(&current).is_some();
        if finalizers.is_empty() && !namespace_spec_finalizers(def, &current) {
            if opts.dry_run {
                return Ok(Deleted::Gone(current));
            }
            match api.objects.delete(def, ns, name, Some(rv)).await {
                Ok(obj) => {
                    return Ok(Deleted::Gone(obj));
                }
                Err(e) if e.code == 409 => continue,
                Err(e) => return Err(e),
            }
        }
        if already && finalizers == meta::finalizers(&current) {
            return Ok(Deleted::Pending(current));
        }
        let mut next = current.clone();
        meta::set_meta(&mut next, "finalizers", json!(finalizers));
        if !already {
            meta::set_meta(&mut next, "deletionTimestamp", json!(meta::now_rfc3339()));
            meta::set_meta(&mut next, "deletionGracePeriodSeconds", json!(opts.grace_period.unwrap_or(0).max(0)));
            if def.kind == "Namespace" && def.group.is_empty() {
                next["status"]["phase"] = json!("Terminating");
            }
        }
        if opts.dry_run {
            return Ok(Deleted::Pending(next));
        }
        match api.objects.update(def, &next, rv).await {
            Ok(obj) => {
                return Ok(Deleted::Pending(obj));
            }
            Err(e) if e.code == 409 => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::stale(&def.group, &def.plural, name))
}

fn add(list: &mut Vec<String>, f: &str) {
    if !list.iter().any(|x| x == f) {
        list.push(f.to_string());
    }
}

/// Removes `finalizer` from an object (used by the built-in controllers).
pub async fn remove_finalizer(
    api: &ApiServer,
    def: &ResourceDef,
    obj: &Value,
    finalizer: &str,
) -> Result<(), ApiError> {
    let mut next = obj.clone();
    let rest: Vec<String> = meta::finalizers(obj).into_iter().filter(|f| f != finalizer).collect();
    meta::set_meta(&mut next, "finalizers", json!(rest));
    let rv = parse_rv(meta::resource_version(obj))?;
    if rest.is_empty() && meta::deletion_timestamp(obj).is_some() && !namespace_spec_finalizers(def, &next) {
        api.objects.delete(def, meta::namespace(obj), meta::name(obj), Some(rv)).await?;
    } else {
        api.objects.update(def, &next, rv).await?;
    }
    Ok(())
}
