//! Creating an object: naming, admission, system fields, managed fields, storage form, size limit.

use super::admission::{self, list_types};
use super::WriteOptions;
use crate::objects::to_storage;
use crate::state::ApiServer;
use kumo_api::{apply, meta, validation::MAX_OBJECT_BYTES, ApiError, ResourceDef};
use serde_json::{json, Value};

/// Creates `obj`; with `applied` (server-side apply onto nothing) the managed fields come from the apply.
pub async fn create(
    api: &ApiServer,
    def: &ResourceDef,
    url_ns: Option<&str>,
    mut obj: Value,
    opts: &mut WriteOptions,
    applied: Option<&str>,
) -> Result<Value, ApiError> {
    if def.namespaced && url_ns.is_none() {
        return Err(ApiError::bad_request(format!(
            "{} is namespaced: create it under /namespaces/{{namespace}}/",
            def.plural
        )));
    }
    if !meta::resource_version(&obj).is_empty() {
        return Err(ApiError::bad_request("metadata.resourceVersion must not be set on objects to be created"));
    }
    if meta::name(&obj).is_empty() {
        if let Some(prefix) = obj.pointer("/metadata/generateName").and_then(Value::as_str).map(String::from) {
            meta::set_meta(&mut obj, "name", json!(generate_name(&prefix)));
        }
    }
    if def.namespaced {
        meta::set_meta(&mut obj, "namespace", json!(url_ns.unwrap_or_default()));
    } else {
        meta::remove_meta(&mut obj, "namespace");
    }
    admission::validate(def, &mut obj, url_ns, opts.fv, &mut opts.warnings)?;
    admission::check_namespace(api, def, url_ns).await?;
    admission::stamp_new(&mut obj);
    if def.status_subresource && def.builtin.is_none() {
        // Status belongs to the status subresource; Kubernetes drops it on create.
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
    }
    admission::on_create(api, def, &mut obj)?;
    super::storage::on_create(api, def, &mut obj).await?;
    if applied.is_none() {
        meta::remove_meta(&mut obj, "managedFields");
        apply::track_update(None, &mut obj, &opts.manager, &meta::now_rfc3339(), &def.api_version(), &*list_types(def));
    }
    obj = to_storage(def, obj);
    check_size(&obj)?;
    if opts.dry_run {
        return Ok(obj);
    }
    let out = api.objects.create(def, &obj).await?;
    after_write(api, def, &out);
    Ok(out)
}

pub(crate) fn after_write(api: &ApiServer, def: &ResourceDef, obj: &Value) {
    if def.builtin == Some(kumo_api::resource::Builtin::CustomResourceDefinition) {
        api.registry.put_crd(obj);
    }
}

fn generate_name(prefix: &str) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    let suffix: String = (0..5).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect();
    format!("{prefix}{suffix}")
}

pub(crate) fn check_size(obj: &Value) -> Result<(), ApiError> {
    let n = serde_json::to_vec(obj).map(|v| v.len()).unwrap_or(0);
    if n > MAX_OBJECT_BYTES {
        return Err(ApiError::too_large(format!(
            "the object is {n} bytes; objects are limited to {MAX_OBJECT_BYTES} bytes (1.5 MiB)"
        )));
    }
    Ok(())
}
