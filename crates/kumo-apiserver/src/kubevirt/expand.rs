//! `GET .../virtualmachines/{name}/expand-spec` and `PUT .../namespaces/{ns}/expand-vm-spec` (what `virtctl
//! expand` calls): a VM with its instancetype and preference applied to its template and the references to them
//! removed, as its VMIs get it. A stored VM whose flavor is pinned (`revisionName`) is expanded from that
//! ControllerRevision, as the VM controller does; otherwise from the flavor as it is now.

use crate::state::ApiServer;
use kumo_api::instancetype::{self as it, Flavor, FlavorRef, InstancetypeSpec, PreferenceSpec};
use kumo_api::kubevirt::VirtualMachine;
use kumo_api::status::Cause;
use kumo_api::ApiError;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::sync::Arc;

/// The VM `vm` (as JSON) expanded, for namespace `ns`.
pub async fn expand(api: &Arc<ApiServer>, ns: &str, vm: &Value) -> Result<Value, ApiError> {
    let name = vm.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    let mut typed: VirtualMachine = serde_json::from_value(vm.clone()).map_err(|e| {
        ApiError::invalid("kubevirt.io", "VirtualMachine", &name, vec![Cause::invalid("spec", e.to_string())])
    })?;
    let it: Option<InstancetypeSpec> = match &typed.spec.instancetype {
        Some(r) => Some(spec(api, ns, r, false).await?),
        None => None,
    };
    let pref: Option<PreferenceSpec> = match &typed.spec.preference {
        Some(r) => Some(spec(api, ns, r, true).await?),
        None => None,
    };
    it::expand(&mut typed.spec.template.spec, it.as_ref(), pref.as_ref());
    typed.spec.instancetype = None;
    typed.spec.preference = None;
    serde_json::to_value(&typed).map_err(|e| ApiError::internal(e.to_string()))
}

/// The spec of the flavor `r` names: from its pinned revision, else the flavor object now.
async fn spec<S: DeserializeOwned + Default>(
    api: &Arc<ApiServer>,
    ns: &str,
    r: &FlavorRef,
    preference: bool,
) -> Result<S, ApiError> {
    let field = if preference { "preference" } else { "instancetype" };
    let missing = |what: String| {
        ApiError::invalid("kubevirt.io", "VirtualMachine", "", vec![Cause::invalid(format!("spec.{field}"), what)])
    };
    if let Some(rev) = r.revision_name.as_deref().filter(|n| !n.is_empty()) {
        let def =
            api.registry.get("apps", "v1", "controllerrevisions").ok_or_else(|| ApiError::internal("no apps/v1"))?;
        let Some(obj) = api.objects.try_get(&def, Some(ns), rev).await? else {
            return Err(missing(format!("its ControllerRevision {rev} is gone")));
        };
        return flavor_spec(obj.get("data").cloned().unwrap_or_default());
    }
    let (cluster, kind) = (r.cluster_wide(preference), r.object_kind(preference));
    let def =
        api.registry.get(it::GROUP, it::VERSION, it::plural(kind)).ok_or_else(|| ApiError::internal("no flavors"))?;
    let obj = api.objects.try_get(&def, if cluster { None } else { Some(ns) }, &r.name).await?;
    let Some(obj) = obj else { return Err(missing(format!("{kind} {} not found", r.name))) };
    flavor_spec(obj)
}

fn flavor_spec<S: DeserializeOwned + Default>(obj: Value) -> Result<S, ApiError> {
    serde_json::from_value::<Flavor<S>>(obj)
        .map(|f| f.spec)
        .map_err(|e| ApiError::internal(format!("reading the flavor: {e}")))
}
