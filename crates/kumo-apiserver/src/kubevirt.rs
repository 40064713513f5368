//! KubeVirt's `subresources.kubevirt.io/v1` API (what KubeVirt's virt-api serves and virtctl calls):
//! VM start/stop/restart, VMI pause/unpause and volume hotplug ([`crate::hotplug`]). They translate into ordinary writes the controllers and the
//! node agent act on — a runStrategy change or a stateChangeRequest on the VM, a pause annotation on the VMI.

use crate::handlers::Call;
use crate::objects::parse_rv;
use crate::response::{self, Resp};
use crate::state::ApiServer;
use http::{Method, StatusCode};
use kumo_api::{meta, ApiError, ResourceDef};
use serde_json::{json, Value};
use std::sync::Arc;

pub const GROUP: &str = "subresources.kubevirt.io";
use kumo_api::kubevirt::PAUSE_ANNOTATION;

const VERBS: &[(&str, &[&str])] = &[
    ("virtualmachines", &["start", "stop", "restart", "addvolume", "removevolume"]),
    ("virtualmachineinstances", &["pause", "unpause", "addvolume", "removevolume"]),
];

/// The discovery document for `subresources.kubevirt.io/v1`.
pub fn discovery() -> Value {
    let mut resources = Vec::new();
    for (plural, subs) in VERBS {
        for s in *subs {
            resources.push(json!({"name": format!("{plural}/{s}"), "singularName": "", "namespaced": true,
                "kind": "", "verbs": ["update"]}));
        }
    }
    // The console is a WebSocket GET, proxied to the node agent (crate::console); the guest's agent is asked
    // through it too (crate::guestinfo).
    for sub in std::iter::once(&"console").chain(crate::guestinfo::SUBRESOURCES) {
        resources.push(json!({"name": format!("virtualmachineinstances/{sub}"), "singularName": "",
            "namespaced": true, "kind": "", "verbs": ["get"]}));
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/v1"), "resources": resources})
}

/// Whether `resource/sub` is one of the subresources this group serves.
pub fn serves(resource: &str, sub: &str) -> bool {
    let vmi_get =
        resource == "virtualmachineinstances" && (sub == "console" || crate::guestinfo::SUBRESOURCES.contains(&sub));
    vmi_get || VERBS.iter().any(|(plural, subs)| *plural == resource && subs.contains(&sub))
}

fn conflict(def: &ResourceDef, name: &str, why: &str) -> ApiError {
    ApiError::conflict(&def.group, &def.plural, name, why)
}

pub async fn serve(api: &Arc<ApiServer>, call: &Call) -> Result<Resp, ApiError> {
    let p = &call.path;
    let sub = p.subresource.as_deref().unwrap_or("");
    if p.resource == "virtualmachineinstances" && crate::guestinfo::SUBRESOURCES.contains(&sub) && p.version == "v1" {
        if call.method != Method::GET {
            return Err(ApiError::method_not_allowed(call.method.as_str(), &format!("{}/{sub}", p.resource)));
        }
        return match (p.namespace.as_deref(), p.name.as_deref()) {
            (Some(ns), Some(name)) => crate::guestinfo::get(api, ns, name, sub).await,
            _ => Err(ApiError::path_not_found(&format!("{GROUP}/v1/{}/{sub}", p.resource))),
        };
    }
    if !serves(&p.resource, sub) || p.name.is_none() || p.namespace.is_none() || p.version != "v1" {
        return Err(ApiError::path_not_found(&format!("{GROUP}/{}/{}/{sub}", p.version, p.resource)));
    }
    if call.method != Method::PUT {
        return Err(ApiError::method_not_allowed(call.method.as_str(), &format!("{}/{sub}", p.resource)));
    }
    let vm_def = api
        .registry
        .get("kubevirt.io", "v1", "virtualmachines")
        .ok_or_else(|| ApiError::internal("kubevirt.io CRDs missing"))?;
    let vmi_def = api
        .registry
        .get("kubevirt.io", "v1", "virtualmachineinstances")
        .ok_or_else(|| ApiError::internal("kubevirt.io CRDs missing"))?;
    let (ns, name) = (call.namespace(), call.name());
    match sub {
        "addvolume" | "removevolume" => {
            let vmi = api.objects.try_get(&vmi_def, ns, name).await?;
            let running =
                vmi.as_ref().filter(|i| i.pointer("/status/phase").and_then(Value::as_str) == Some("Running"));
            if p.resource == "virtualmachines" {
                // The VM's template keeps the volume; a running instance gets it now too.
                let mut vm = api.objects.get(&vm_def, ns, name).await?;
                crate::hotplug::apply(sub, &mut vm["spec"]["template"]["spec"], &call.body)?;
                crate::hotplug::check("VirtualMachine", name, &vm)?;
                api.objects.update(&vm_def, &vm, parse_rv(meta::resource_version(&vm))?).await?;
            } else if running.is_none() {
                return Err(conflict(&vmi_def, name, "VMI is not running"));
            }
            if let Some(i) = running {
                let mut next = i.clone();
                crate::hotplug::apply(sub, &mut next["spec"], &call.body)?;
                crate::hotplug::check("VirtualMachineInstance", name, &next)?;
                api.objects.update(&vmi_def, &next, parse_rv(meta::resource_version(i))?).await?;
            }
        }
        "start" | "stop" | "restart" => {
            let vm = api.objects.get(&vm_def, ns, name).await?;
            let vmi = api.objects.try_get(&vmi_def, ns, name).await?;
            let next = vm_transition(&vm_def, &vm, vmi.as_ref(), sub)?;
            let rv = parse_rv(meta::resource_version(&vm))?;
            api.objects.update(&vm_def, &next, rv).await?;
        }
        _ => {
            let vmi = api.objects.get(&vmi_def, ns, name).await?;
            if vmi.pointer("/status/phase").and_then(Value::as_str) != Some("Running") {
                return Err(conflict(&vmi_def, name, "VMI is not running"));
            }
            let paused = vmi
                .pointer(&format!("/metadata/annotations/{}", PAUSE_ANNOTATION.replace('/', "~1")))
                .and_then(Value::as_str)
                == Some("true");
            let want = sub == "pause";
            if paused == want {
                return Err(conflict(&vmi_def, name, if want { "VMI is already paused" } else { "VMI is not paused" }));
            }
            let mut next = vmi.clone();
            let mut ann = vmi.pointer("/metadata/annotations").cloned().unwrap_or(json!({}));
            if want {
                ann[PAUSE_ANNOTATION] = json!("true");
            } else if let Some(m) = ann.as_object_mut() {
                m.remove(PAUSE_ANNOTATION);
            }
            meta::set_meta(&mut next, "annotations", ann);
            api.objects.update(&vmi_def, &next, parse_rv(meta::resource_version(&vmi))?).await?;
        }
    }
    Ok(response::json_response(StatusCode::ACCEPTED, &json!({})))
}

/// The VM after a start/stop/restart request, following KubeVirt: strategies that decide on their own
/// (Always, RerunOnFailure, Halted, legacy running) flip to the opposite state; Manual and restarts queue
/// stateChangeRequests for the VM controller.
pub fn vm_transition(def: &ResourceDef, vm: &Value, vmi: Option<&Value>, verb: &str) -> Result<Value, ApiError> {
    let name = meta::name(vm);
    let strategy = vm.pointer("/spec/runStrategy").and_then(Value::as_str);
    let legacy = vm.pointer("/spec/running").and_then(Value::as_bool);
    let vmi_live = vmi.filter(|i| {
        meta::deletion_timestamp(i).is_none()
            && !matches!(i.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"))
    });
    let mut next = vm.clone();
    let mut requests = vm.pointer("/status/stateChangeRequests").and_then(Value::as_array).cloned().unwrap_or_default();
    if !requests.is_empty() {
        return Err(conflict(def, name, "a previous start/stop request is still being processed; try again shortly"));
    }
    let set_running = |next: &mut Value, on: bool| match legacy {
        Some(_) if strategy.is_none() => next["spec"]["running"] = json!(on),
        _ => next["spec"]["runStrategy"] = json!(if on { "Always" } else { "Halted" }),
    };
    match verb {
        "start" => {
            if vmi_live.is_some() {
                return Err(conflict(def, name, "VM is already running"));
            }
            match strategy {
                Some("Manual") | Some("Once") => requests.push(json!({"action": "Start"})),
                Some("RerunOnFailure") if vmi.is_some() => requests.push(json!({"action": "Start"})),
                _ => set_running(&mut next, true),
            }
        }
        "stop" => {
            let Some(i) = vmi_live else { return Err(conflict(def, name, "VM is not running")) };
            match strategy {
                Some("Manual") | Some("Once") => requests.push(json!({"action": "Stop", "uid": meta::uid(i)})),
                _ => set_running(&mut next, false),
            }
        }
        _ => {
            let Some(i) = vmi_live else { return Err(conflict(def, name, "VM is not running, cannot restart it")) };
            if strategy == Some("Halted") || legacy == Some(false) {
                return Err(conflict(def, name, "RunStrategy Halted does not support manual restart requests"));
            }
            requests.push(json!({"action": "Stop", "uid": meta::uid(i)}));
            requests.push(json!({"action": "Start"}));
        }
    }
    if !requests.is_empty() {
        next["status"]["stateChangeRequests"] = json!(requests);
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> ResourceDef {
        kumo_api::crd::resource_defs(&kumo_api::kubevirt::vm_crd()).remove(0)
    }

    fn vm(strategy: &str) -> Value {
        json!({"metadata": {"name": "v"}, "spec": {"runStrategy": strategy}, "status": {}})
    }

    #[test]
    fn start_stop_restart() {
        let running = json!({"metadata": {"uid": "i1"}, "status": {"phase": "Running"}});
        let d = def();
        assert_eq!(vm_transition(&d, &vm("Halted"), None, "start").unwrap()["spec"]["runStrategy"], "Always");
        assert_eq!(vm_transition(&d, &vm("Always"), Some(&running), "stop").unwrap()["spec"]["runStrategy"], "Halted");
        assert_eq!(vm_transition(&d, &vm("Always"), Some(&running), "start").unwrap_err().code, 409);
        assert_eq!(vm_transition(&d, &vm("Halted"), None, "stop").unwrap_err().code, 409);
        let manual = vm_transition(&d, &vm("Manual"), None, "start").unwrap();
        assert_eq!(manual["status"]["stateChangeRequests"], json!([{"action": "Start"}]));
        let r = vm_transition(&d, &vm("Always"), Some(&running), "restart").unwrap();
        assert_eq!(r["status"]["stateChangeRequests"], json!([{"action": "Stop", "uid": "i1"}, {"action": "Start"}]));
        let legacy = json!({"metadata": {"name": "v"}, "spec": {"running": false}});
        assert_eq!(vm_transition(&d, &legacy, None, "start").unwrap()["spec"]["running"], true);
    }
}
