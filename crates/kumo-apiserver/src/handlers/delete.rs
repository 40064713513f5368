//! delete and deletecollection over HTTP; the deletion itself is [`crate::rest::delete`].

use super::body::delete_options;
use super::read::Selectors;
use super::{list_object, Call};
use crate::objects::present;
use crate::response::{self, Resp};
use crate::rest::{self, Deleted};
use crate::state::ApiServer;
use http::StatusCode;
use kumo_api::{meta, status::success_status, ApiError, ResourceDef};
use serde_json::json;

pub async fn delete(api: &ApiServer, def: &ResourceDef, call: &Call) -> Result<Resp, ApiError> {
    if call.path.subresource.is_some() {
        return Err(ApiError::method_not_allowed(
            "delete",
            &format!("{}/{}", def.plural, call.path.subresource.as_deref().unwrap_or("")),
        ));
    }
    let opts = delete_options(call)?;
    match rest::delete(api, def, call.namespace(), call.name(), &opts).await? {
        Deleted::Gone(obj) if def.builtin.is_some() => {
            let details = json!({"name": call.name(), "group": def.group, "kind": def.plural, "uid": meta::uid(&obj)});
            Ok(response::encode(StatusCode::OK, &success_status(details), &call.accept))
        }
        Deleted::Gone(obj) => Ok(response::encode(StatusCode::OK, &present(def, obj), &call.accept)),
        Deleted::Pending(obj) => Ok(response::encode(StatusCode::ACCEPTED, &present(def, obj), &call.accept)),
    }
}

pub async fn delete_collection(api: &ApiServer, def: &ResourceDef, call: &Call) -> Result<Resp, ApiError> {
    let sel = Selectors::from_call(def, call)?;
    let opts = delete_options(call)?;
    let (objs, rev) = api.objects.list_all(def, call.namespace()).await?;
    let mut deleted = Vec::new();
    for obj in objs.into_iter().map(|o| present(def, o)).filter(|o| sel.matches(o)) {
        match rest::delete(api, def, meta::namespace(&obj), meta::name(&obj), &opts).await {
            Ok(Deleted::Gone(o)) | Ok(Deleted::Pending(o)) => deleted.push(present(def, o)),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let list = list_object(def, deleted, json!({"resourceVersion": rev.to_string()}));
    Ok(response::encode(StatusCode::OK, &list, &call.accept))
}
