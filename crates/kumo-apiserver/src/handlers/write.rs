//! create, update (PUT), patch (JSON, merge, strategic) and server-side apply.

use super::admission::{self, list_types, FieldValidation};
use super::{body, ApiServer, Call};
use crate::objects::{parse_rv, present, to_storage};
use crate::response::{self, Resp};
use http::StatusCode;
use kumo_api::patch::{self, PatchType};
use kumo_api::{apply, meta, validation::MAX_OBJECT_BYTES, ApiError, ResourceDef};
use serde_json::{json, Value};

/// Options shared by every write.
struct WriteOpts {
    fv: FieldValidation,
    manager: String,
    dry_run: bool,
    warnings: Vec<String>,
}

impl WriteOpts {
    fn from_call(call: &Call) -> Result<Self, ApiError> {
        Ok(WriteOpts {
            fv: FieldValidation::parse(call.query.get("fieldValidation"))?,
            manager: call.manager(),
            dry_run: call.dry_run()?,
            warnings: vec![],
        })
    }
}

fn check_size(obj: &Value) -> Result<(), ApiError> {
    let n = serde_json::to_vec(obj).map(|v| v.len()).unwrap_or(0);
    if n > MAX_OBJECT_BYTES {
        return Err(ApiError::too_large(format!(
            "the object is {n} bytes; objects are limited to {MAX_OBJECT_BYTES} bytes (1.5 MiB)"
        )));
    }
    Ok(())
}

fn respond(code: StatusCode, def: &ResourceDef, obj: Value, call: &Call, warnings: &[String]) -> Resp {
    response::with_warnings(response::encode(code, &present(def, obj), &call.accept), warnings)
}

fn generate_name(prefix: &str) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    let suffix: String = (0..5).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect();
    format!("{prefix}{suffix}")
}

pub async fn create(api: &ApiServer, def: &ResourceDef, call: &Call) -> Result<Resp, ApiError> {
    if call.path.subresource.is_some() {
        return Err(ApiError::method_not_allowed("create", &def.plural));
    }
    let mut opts = WriteOpts::from_call(call)?;
    let obj = body::decode_object(call)?;
    let out = create_object(api, def, call.namespace(), obj, &mut opts, None).await?;
    Ok(respond(StatusCode::CREATED, def, out, call, &opts.warnings))
}

/// Creates `obj`; with `applied` (server-side apply onto nothing) the managed fields come from the apply.
async fn create_object(
    api: &ApiServer,
    def: &ResourceDef,
    url_ns: Option<&str>,
    mut obj: Value,
    opts: &mut WriteOpts,
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

fn after_write(api: &ApiServer, def: &ResourceDef, obj: &Value) {
    if def.builtin == Some(kumo_api::resource::Builtin::CustomResourceDefinition) {
        api.registry.put_crd(obj);
    }
}

pub async fn update(api: &ApiServer, def: &ResourceDef, call: &Call) -> Result<Resp, ApiError> {
    let mut opts = WriteOpts::from_call(call)?;
    let mut obj = body::decode_object(call)?;
    let body_name = meta::name(&obj).to_string();
    if !body_name.is_empty() && body_name != call.name() {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({})",
            call.name()
        )));
    }
    meta::set_meta(&mut obj, "name", json!(call.name()));
    let current = api.objects.get(def, call.namespace(), call.name()).await?;
    let want_rv = meta::resource_version(&obj).to_string();
    if !want_rv.is_empty() && parse_rv(&want_rv)? != parse_rv(meta::resource_version(&current))? {
        return Err(ApiError::stale(&def.group, &def.plural, call.name()));
    }
    let sub = call.path.subresource.clone();
    let (out, _) = commit_update(api, def, call.namespace(), &current, obj, sub.as_deref(), &mut opts, false).await?;
    Ok(respond(StatusCode::OK, def, out, call, &opts.warnings))
}

/// Persists `new` as the successor of `current`. Returns the stored object and whether anything changed.
#[allow(clippy::too_many_arguments)]
async fn commit_update(
    api: &ApiServer,
    def: &ResourceDef,
    url_ns: Option<&str>,
    current: &Value,
    mut new: Value,
    sub: Option<&str>,
    opts: &mut WriteOpts,
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

/// A Namespace is only removed once its `spec.finalizers` (the namespace controller's) are done too.
pub fn namespace_spec_finalizers(def: &ResourceDef, obj: &Value) -> bool {
    def.kind == "Namespace"
        && def.group.is_empty()
        && obj.pointer("/spec/finalizers").and_then(Value::as_array).is_some_and(|a| !a.is_empty())
}

pub async fn patch(api: &ApiServer, def: &ResourceDef, call: &Call) -> Result<Resp, ApiError> {
    let ct = call.header("content-type").unwrap_or("");
    let pt = PatchType::from_content_type(ct).ok_or_else(|| {
        ApiError::unsupported_media_type(format!(
            "the media type {ct:?} is not a patch type: use application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json or application/apply-patch+yaml"
        ))
    })?;
    if pt == PatchType::Strategic && def.builtin.is_none() {
        return Err(ApiError::unsupported_media_type(
            "strategic merge patch is not supported for custom resources: use a merge patch (--type=merge) or a JSON patch",
        ));
    }
    let mut opts = WriteOpts::from_call(call)?;
    let patch_doc = body::decode(call)?;
    let sub = call.path.subresource.clone();
    let force = call.query.flag("force");
    if pt != PatchType::Apply && force {
        return Err(ApiError::bad_request(
            "force is only allowed with server-side apply (application/apply-patch+yaml)",
        ));
    }
    if pt == PatchType::Apply && call.query.get("fieldManager").is_none() {
        return Err(ApiError::bad_request(
            "PATCH with application/apply-patch+yaml requires the fieldManager parameter",
        ));
    }
    let (now, api_version, lists, manager) =
        (meta::now_rfc3339(), def.api_version(), list_types(def), opts.manager.clone());
    let aopts = apply::ApplyOptions { manager: &manager, force, now: &now, api_version: &api_version, lists: &*lists };
    // Retry on a concurrent write, as Kubernetes does for patches without a resourceVersion precondition.
    for attempt in 0..8 {
        let current = match api.objects.try_get(def, call.namespace(), call.name()).await? {
            Some(c) => c,
            None if pt == PatchType::Apply && sub.is_none() => {
                let mut config = patch_doc.clone();
                check_apply_identity(def, call, &config)?;
                let applied = apply::apply(None, &config, &aopts)
                    .map_err(|e| e.to_api_error(&def.group, &def.kind, call.name()))?;
                config = applied;
                let out = create_object(api, def, call.namespace(), config, &mut opts, Some("apply")).await?;
                return Ok(respond(StatusCode::CREATED, def, out, call, &opts.warnings));
            }
            None => return Err(ApiError::not_found(&def.group, &def.plural, call.name())),
        };
        let presented = present(def, current.clone());
        let new = match pt {
            PatchType::Json => patch::json_patch(&presented, &patch_doc)?,
            PatchType::Merge => patch::merge_patch(&presented, &patch_doc),
            PatchType::Strategic => patch::strategic::strategic_merge(&presented, &patch_doc, &*list_types(def))
                .map_err(|e| ApiError::bad_request(format!("invalid strategic merge patch: {e}")))?,
            PatchType::Apply => {
                check_apply_identity(def, call, &patch_doc)?;
                let mut live = presented.clone();
                if sub.as_deref() == Some("status") {
                    // Applying to /status only touches status.
                    let mut cfg = patch_doc.clone();
                    if let Some(m) = cfg.as_object_mut() {
                        m.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status"));
                    }
                    live = apply::apply(Some(&live), &cfg, &aopts)
                        .map_err(|e| e.to_api_error(&def.group, &def.kind, call.name()))?;
                    live
                } else {
                    apply::apply(Some(&live), &patch_doc, &aopts)
                        .map_err(|e| e.to_api_error(&def.group, &def.kind, call.name()))?
                }
            }
        };
        if !new.is_object() {
            return Err(ApiError::bad_request("the patch did not produce an object"));
        }
        let mut new = new;
        let precondition = meta::resource_version(&new).to_string();
        if !precondition.is_empty() && precondition != meta::resource_version(&current) {
            return Err(ApiError::stale(&def.group, &def.plural, call.name()));
        }
        if meta::name(&new) != call.name() {
            return Err(ApiError::invalid(
                &def.group,
                &def.kind,
                call.name(),
                vec![kumo_api::Cause::invalid("metadata.name", "field is immutable")],
            ));
        }
        meta::set_meta(&mut new, "resourceVersion", json!(meta::resource_version(&current)));
        match commit_update(
            api,
            def,
            call.namespace(),
            &current,
            new,
            sub.as_deref(),
            &mut opts,
            pt == PatchType::Apply,
        )
        .await
        {
            Ok((out, _)) => return Ok(respond(StatusCode::OK, def, out, call, &opts.warnings)),
            Err(e) if e.code == 409 && e.reason == "Conflict" && precondition.is_empty() && attempt < 7 => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::stale(&def.group, &def.plural, call.name()))
}

/// An applied configuration must name the object being patched and its kind.
fn check_apply_identity(def: &ResourceDef, call: &Call, config: &Value) -> Result<(), ApiError> {
    if !config.is_object() {
        return Err(ApiError::bad_request("the applied configuration must be an object"));
    }
    let name = meta::name(config);
    if name != call.name() {
        return Err(ApiError::bad_request(format!(
            "the name of the applied configuration ({name:?}) does not match the name on the URL ({:?})",
            call.name()
        )));
    }
    for (field, want) in [("apiVersion", def.api_version()), ("kind", def.kind.clone())] {
        match config.get(field).and_then(Value::as_str) {
            Some(v) if v == want => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "the applied configuration must set {field}: {want} (got {other:?})"
                )))
            }
        }
    }
    Ok(())
}
