//! The `/scale` subresource: an `autoscaling/v1` Scale view of a kind's replica fields.

use super::{body, Call};
use crate::objects::parse_rv;
use crate::response::{self, Resp};
use crate::state::ApiServer;
use http::StatusCode;
use kumo_api::{jsonpath, meta, ApiError, ResourceDef, ScaleSpec};
use serde_json::{json, Value};

fn spec(def: &ResourceDef) -> &ScaleSpec {
    def.scale.as_ref().expect("route checked the scale subresource")
}

fn pointer(path: &str) -> String {
    path.trim_start_matches('.').split('.').fold(String::new(), |acc, p| format!("{acc}/{p}"))
}

fn to_scale(def: &ResourceDef, obj: &Value) -> Value {
    let s = spec(def);
    let get_i = |p: &str| obj.pointer(&pointer(p)).and_then(Value::as_i64).unwrap_or(0);
    let mut status = json!({"replicas": get_i(&s.status_replicas_path)});
    if let Some(sel) = &s.label_selector_path {
        if let Some(v) = jsonpath::query(obj, sel).ok().and_then(|v| v.first().cloned().cloned()) {
            status["selector"] = v;
        }
    }
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": meta::name(obj), "namespace": meta::namespace(obj), "uid": meta::uid(obj),
            "resourceVersion": meta::resource_version(obj), "creationTimestamp": obj.pointer("/metadata/creationTimestamp")},
        "spec": {"replicas": get_i(&s.spec_replicas_path)},
        "status": status,
    })
}

pub async fn get(api: &ApiServer, def: &ResourceDef, call: &Call) -> Result<Resp, ApiError> {
    let obj = api.objects.get(def, call.namespace(), call.name()).await?;
    Ok(response::encode(StatusCode::OK, &to_scale(def, &obj), &call.accept))
}

async fn set_replicas(
    api: &ApiServer,
    def: &ResourceDef,
    call: &Call,
    scale: &Value,
    current: Value,
) -> Result<Resp, ApiError> {
    let replicas = scale.pointer("/spec/replicas").and_then(Value::as_i64).ok_or_else(|| {
        ApiError::invalid("autoscaling", "Scale", call.name(), vec![kumo_api::Cause::required("spec.replicas")])
    })?;
    if replicas < 0 {
        return Err(ApiError::invalid(
            "autoscaling",
            "Scale",
            call.name(),
            vec![kumo_api::Cause::invalid(
                "spec.replicas",
                format!("Invalid value: {replicas}: must be greater than or equal to 0"),
            )],
        ));
    }
    let want_rv = scale.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("");
    let rv = parse_rv(meta::resource_version(&current))?;
    if !want_rv.is_empty() && parse_rv(want_rv)? != rv {
        return Err(ApiError::stale(&def.group, &def.plural, call.name()));
    }
    let mut next = current.clone();
    let ptr = pointer(&spec(def).spec_replicas_path);
    let (parent, leaf) = ptr.rsplit_once('/').unwrap_or(("", &ptr));
    let mut cur = &mut next;
    for part in parent.split('/').filter(|p| !p.is_empty()) {
        if cur.get(part).is_none() {
            cur[part] = json!({});
        }
        cur = &mut cur[part];
    }
    cur[leaf] = json!(replicas);
    if next != current {
        meta::set_meta(&mut next, "generation", json!(meta::generation(&current) + 1));
        next = api.objects.update(def, &next, rv).await?;
    }
    Ok(response::encode(StatusCode::OK, &to_scale(def, &next), &call.accept))
}

pub async fn update(api: &ApiServer, def: &ResourceDef, call: &Call) -> Result<Resp, ApiError> {
    let scale = body::decode_object(call)?;
    let current = api.objects.get(def, call.namespace(), call.name()).await?;
    set_replicas(api, def, call, &scale, current).await
}

pub async fn patch(api: &ApiServer, def: &ResourceDef, call: &Call) -> Result<Resp, ApiError> {
    let current = api.objects.get(def, call.namespace(), call.name()).await?;
    let patch_doc = body::decode(call)?;
    let base = to_scale(def, &current);
    let ct = call.header("content-type").unwrap_or("");
    let scale = match kumo_api::patch::PatchType::from_content_type(ct) {
        Some(kumo_api::patch::PatchType::Json) => kumo_api::patch::json_patch(&base, &patch_doc)?,
        Some(_) => kumo_api::patch::merge_patch(&base, &patch_doc),
        None => return Err(ApiError::unsupported_media_type(format!("unsupported patch type {ct:?}"))),
    };
    set_replicas(api, def, call, &scale, current).await
}
