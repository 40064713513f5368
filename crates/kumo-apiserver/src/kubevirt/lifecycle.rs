//! VM start/stop/restart and VMI pause/unpause: ordinary writes the controllers and the node agent act on — a
//! runStrategy change or a stateChangeRequest on the VM, a pause annotation on the VMI. Their bodies are
//! KubeVirt's options ([`super::options`]): `dryRun`, and a stop's or restart's grace period, which (as in
//! KubeVirt) becomes the running VMI's `terminationGracePeriodSeconds` before it is stopped.

use super::{conflict, vm_def, vmi_def};
use crate::handlers::Call;
use crate::objects::parse_rv;
use crate::state::ApiServer;
use kumo_api::kubevirt::PAUSE_ANNOTATION;
use kumo_api::{meta, ApiError, ResourceDef};
use serde_json::{json, Value};
use std::sync::Arc;

/// `PUT virtualmachines/{name}/start|stop|restart`.
pub async fn vm_state(api: &Arc<ApiServer>, call: &Call, sub: &str) -> Result<(), ApiError> {
    let (vm_def, vmi_def) = (vm_def(api)?, vmi_def(api)?);
    let (ns, name) = (call.namespace(), call.name());
    let opts = super::options::read(sub, &call.body)?;
    if sub == "start" {
        super::options::refuse_paused_start(&opts)?;
    }
    let grace = if sub == "start" { None } else { super::options::grace_period(sub, &opts)? };
    let vm = api.objects.get(&vm_def, ns, name).await?;
    let vmi = api.objects.try_get(&vmi_def, ns, name).await?;
    let next = vm_transition(&vm_def, &vm, vmi.as_ref(), sub)?;
    if opts.dry_run {
        return Ok(());
    }
    if let (Some(g), Some(i)) = (grace, vmi.as_ref().filter(|i| meta::deletion_timestamp(i).is_none())) {
        let mut shorter = i.clone();
        shorter["spec"]["terminationGracePeriodSeconds"] = json!(g);
        api.objects.update(&vmi_def, &shorter, parse_rv(meta::resource_version(i))?).await?;
    }
    let rv = parse_rv(meta::resource_version(&vm))?;
    api.objects.update(&vm_def, &next, rv).await?;
    Ok(())
}

/// `PUT virtualmachineinstances/{name}/pause|unpause`.
pub async fn pause(api: &Arc<ApiServer>, call: &Call, sub: &str) -> Result<(), ApiError> {
    let vmi_def = vmi_def(api)?;
    let (ns, name) = (call.namespace(), call.name());
    let opts = super::options::read(sub, &call.body)?;
    let vmi = api.objects.get(&vmi_def, ns, name).await?;
    if vmi.pointer("/status/phase").and_then(Value::as_str) != Some("Running") {
        return Err(conflict(&vmi_def, name, "VMI is not running"));
    }
    let paused =
        vmi.pointer(&format!("/metadata/annotations/{}", PAUSE_ANNOTATION.replace('/', "~1"))).and_then(Value::as_str)
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
    if opts.dry_run {
        return Ok(());
    }
    api.objects.update(&vmi_def, &next, parse_rv(meta::resource_version(&vmi))?).await?;
    Ok(())
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
