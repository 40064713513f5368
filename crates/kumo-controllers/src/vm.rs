//! The VirtualMachine controller's decisions: which VirtualMachineInstance should exist given the VM's
//! `runStrategy` (or legacy `running`) and pending start/stop requests, and what the VM's status says.
//! Pure: no I/O, so every case is a unit test.

use kumo_api::conditions;
use serde_json::{json, Value};

/// One thing to do through the API.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create this VMI (owned by the VM).
    CreateVmi(Value),
    /// Delete the VMI with this uid (graceful; the agent shuts the guest down).
    DeleteVmi { uid: String },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Look again after this long (e.g. when a crash-loop backoff ends).
    pub requeue_after: Option<std::time::Duration>,
    /// The VM's status as it should be after the actions.
    pub status: Value,
    pub events: Vec<Event>,
}

/// `runStrategy`, or what legacy `running` means (absent both: Halted).
pub fn run_strategy(vm: &Value) -> &str {
    if let Some(s) = vm.pointer("/spec/runStrategy").and_then(Value::as_str) {
        return s;
    }
    match vm.pointer("/spec/running").and_then(Value::as_bool) {
        Some(true) => "Always",
        _ => "Halted",
    }
}

fn phase(vmi: &Value) -> &str {
    vmi.pointer("/status/phase").and_then(Value::as_str).unwrap_or("")
}

fn finished(vmi: &Value) -> bool {
    matches!(phase(vmi), "Succeeded" | "Failed")
}

fn deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some()
}

fn uid(obj: &Value) -> String {
    obj.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("").to_string()
}

/// The VMI a VM's template describes, owned by the VM.
pub fn vmi_from_template(vm: &Value) -> Value {
    let name = vm.pointer("/metadata/name").cloned().unwrap_or(json!(""));
    let mut labels = vm.pointer("/spec/template/metadata/labels").cloned().unwrap_or(json!({}));
    labels["kubevirt.io/vm"] = name.clone();
    let mut metadata = json!({
        "name": name,
        "namespace": vm.pointer("/metadata/namespace"),
        "labels": labels,
        "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "name": name,
            "uid": uid(vm), "controller": true, "blockOwnerDeletion": true}],
    });
    if let Some(a) = vm.pointer("/spec/template/metadata/annotations") {
        metadata["annotations"] = a.clone();
    }
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "metadata": metadata,
        "spec": vm.pointer("/spec/template/spec").cloned().unwrap_or(json!({}))})
}

/// What should happen for `vm`, whose VMI (same name) is `vmi`.
pub fn plan(vm: &Value, vmi: Option<&Value>, now: &str) -> Plan {
    let strategy = run_strategy(vm);
    let mut actions = Vec::new();
    let mut events = Vec::new();
    let mut requests: Vec<Value> =
        vm.pointer("/status/stateChangeRequests").and_then(Value::as_array).cloned().unwrap_or_default();
    // A VMI not owned by this VM (e.g. a stale one from a deleted VM of the same name) is left alone.
    let vmi = vmi.filter(|i| {
        i.pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .is_some_and(|refs| refs.iter().any(|r| r.get("uid").and_then(Value::as_str) == Some(&uid(vm))))
    });
    let vm_deleting = deleting(vm);

    // Pending start/stop requests (from the start/stop/restart subresources) come first, in order.
    let mut want: Option<bool> = None;
    let mut stop_requested = false;
    while let Some(req) = requests.first().cloned() {
        match req.get("action").and_then(Value::as_str) {
            Some("Stop") => {
                let target = req.get("uid").and_then(Value::as_str);
                match vmi {
                    Some(i) if target.is_none_or(|t| t == uid(i)) => {
                        want = Some(false);
                        stop_requested = true;
                        break; // stays queued until the VMI is gone
                    }
                    _ => {
                        requests.remove(0);
                    }
                }
            }
            Some("Start") => {
                if vmi.is_some_and(|i| !finished(i)) {
                    requests.remove(0);
                    continue;
                }
                want = Some(true);
                if vmi.is_none() {
                    requests.remove(0);
                }
                break;
            }
            _ => {
                requests.remove(0);
            }
        }
    }
    // Consecutive failures drive the crash-loop backoff (KubeVirt's status.startFailure).
    let mut start_failure = vm.pointer("/status/startFailure").cloned();
    let mut requeue_after = None;
    if let Some(i) = vmi.filter(|i| phase(i) == "Failed") {
        let seen = start_failure.as_ref().and_then(|f| f.get("lastFailedVMIUID")).and_then(Value::as_str)
            == Some(uid(i).as_str());
        if !seen {
            let count =
                start_failure.as_ref().and_then(|f| f.get("consecutiveFailCount")).and_then(Value::as_u64).unwrap_or(0)
                    + 1;
            let delay = BACKOFF_BASE_SECS.saturating_mul(1 << (count - 1).min(10)).min(BACKOFF_MAX_SECS);
            let retry = chrono::DateTime::parse_from_rfc3339(now)
                .map(|t| (t + chrono::Duration::seconds(delay as i64)).format("%Y-%m-%dT%H:%M:%SZ").to_string())
                .unwrap_or_else(|_| now.to_string());
            start_failure =
                Some(json!({"consecutiveFailCount": count, "lastFailedVMIUID": uid(i), "retryAfterTimestamp": retry}));
        }
    } else if vmi.is_some_and(|i| phase(i) == "Running") {
        start_failure = None;
    }
    let want = want.unwrap_or(match strategy {
        "Always" => true,
        "RerunOnFailure" => vmi.is_none_or(|i| phase(i) != "Succeeded"),
        "Once" => vmi.is_some() || vm.pointer("/status/created").and_then(Value::as_bool) != Some(true),
        "Manual" => vmi.is_some_and(|i| !finished(i)),
        _ => false,
    }) && !vm_deleting;

    match (want, vmi) {
        (true, None) => {
            actions.push(Action::CreateVmi(vmi_from_template(vm)));
            events.push(Event {
                warning: false,
                reason: "SuccessfulCreate",
                note: "Started the virtual machine by creating the new virtual machine instance".into(),
            });
        }
        (true, Some(i)) if finished(i) && !deleting(i) && strategy != "Once" => {
            // A finished VMI is replaced: delete now, create on the next pass once it is gone — after a
            // growing backoff when it failed, so a broken VM does not restart in a tight loop.
            let rerun =
                strategy == "Always" || (strategy == "RerunOnFailure" && phase(i) == "Failed") || !requests.is_empty();
            let wait = if phase(i) == "Failed" { backoff_remaining(&start_failure, now) } else { None };
            if let Some(w) = wait {
                requeue_after = Some(w);
            } else if rerun {
                actions.push(Action::DeleteVmi { uid: uid(i) });
                events.push(Event {
                    warning: phase(i) == "Failed",
                    reason: "SuccessfulDelete",
                    note: format!("Restarting the virtual machine: its instance {}", phase(i).to_lowercase()),
                });
            }
        }
        // A finished VMI stays as a record unless the VM is halted or a stop was asked for.
        (false, Some(i)) if !deleting(i) && (!finished(i) || strategy == "Halted" || stop_requested || vm_deleting) => {
            actions.push(Action::DeleteVmi { uid: uid(i) });
            events.push(Event {
                warning: false,
                reason: "SuccessfulDelete",
                note: "Stopped the virtual machine by deleting the virtual machine instance".into(),
            });
        }
        _ => {}
    }

    let creating = actions.iter().any(|a| matches!(a, Action::CreateVmi(_)));
    let printable = printable_status(vm_deleting, vmi, creating, strategy);
    let mut conds: Vec<Value> = vm.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    let ready = vmi.is_some_and(|i| conditions::is_true(i, "Ready") && !deleting(i));
    let (reason, msg) = match vmi {
        None => ("VMINotExists", "VMI does not exist"),
        Some(_) if ready => ("", ""),
        Some(_) => ("VMINotReady", "the virtual machine instance is not ready"),
    };
    conditions::set(&mut conds, "Ready", if ready { "True" } else { "False" }, reason, msg, now);
    let paused = vmi.is_some_and(|i| conditions::is_true(i, "Paused"));
    if paused {
        conditions::set(&mut conds, "Paused", "True", "PausedByUser", "VMI was paused by user", now);
    } else {
        conds.retain(|c| c.get("type").and_then(Value::as_str) != Some("Paused"));
    }
    // Every change of printableStatus is an event, so `kubectl describe vm` tells the VM's story.
    let before = vm.pointer("/status/printableStatus").and_then(Value::as_str);
    if before != Some(printable) && !vm_deleting {
        let warning = matches!(printable, "CrashLoopBackOff" | "ErrImagePull" | "ErrorUnschedulable");
        let note = match before {
            Some(b) => format!("Status changed from {b} to {printable}"),
            None => format!("Status is {printable}"),
        };
        events.push(Event { warning, reason: printable, note });
    }
    let mut status = json!({
        "printableStatus": printable,
        "ready": ready,
        "created": vmi.is_some() || creating,
        "runStrategy": strategy,
        "conditions": conds,
        "observedGeneration": vm.pointer("/metadata/generation"),
        "desiredGeneration": vm.pointer("/metadata/generation"),
    });
    if !requests.is_empty() {
        status["stateChangeRequests"] = json!(requests);
    }
    if let Some(f) = start_failure {
        status["startFailure"] = f;
    }
    Plan { actions, requeue_after, status, events }
}

const BACKOFF_BASE_SECS: u64 = 10;
const BACKOFF_MAX_SECS: u64 = 300;

/// Time left before a failed VMI may be restarted, if any.
fn backoff_remaining(start_failure: &Option<Value>, now: &str) -> Option<std::time::Duration> {
    let retry = start_failure.as_ref()?.get("retryAfterTimestamp")?.as_str()?;
    let (retry, now) =
        (chrono::DateTime::parse_from_rfc3339(retry).ok()?, chrono::DateTime::parse_from_rfc3339(now).ok()?);
    (retry > now).then(|| (retry - now).to_std().ok()).flatten()
}

fn printable_status(vm_deleting: bool, vmi: Option<&Value>, creating: bool, strategy: &str) -> &'static str {
    if vm_deleting {
        return "Terminating";
    }
    let Some(i) = vmi else {
        return if creating { "Starting" } else { "Stopped" };
    };
    if deleting(i) {
        return "Stopping";
    }
    match phase(i) {
        "" | "Pending" | "Scheduling" | "Scheduled" => {
            if conditions::status(i, "PodScheduled") == Some("False") {
                "ErrorUnschedulable"
            } else {
                "Starting"
            }
        }
        "Running" if conditions::is_true(i, "Paused") => "Paused",
        "Running" => "Running",
        "Failed" if strategy == "Always" || strategy == "RerunOnFailure" => "CrashLoopBackOff",
        "Failed" => match i.pointer("/status/reason").and_then(Value::as_str) {
            Some("ErrImagePull") => "ErrImagePull",
            _ => "Stopped",
        },
        "Succeeded" => "Stopped",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(strategy: &str) -> Value {
        json!({"metadata": {"name": "vm1", "namespace": "default", "uid": "vm-uid", "generation": 1},
            "spec": {"runStrategy": strategy, "template": {"metadata": {"labels": {"app": "x"}},
                "spec": {"domain": {"devices": {}}}}}})
    }

    fn vmi(phase: &str) -> Value {
        json!({"metadata": {"name": "vm1", "uid": "vmi-uid", "ownerReferences": [{"uid": "vm-uid"}]},
            "status": {"phase": phase}})
    }

    fn kinds(p: &Plan) -> Vec<&'static str> {
        p.actions
            .iter()
            .map(|a| match a {
                Action::CreateVmi(_) => "create",
                Action::DeleteVmi { .. } => "delete",
            })
            .collect()
    }

    #[test]
    fn printable_status_changes_are_events() {
        let reasons = |p: &Plan| p.events.iter().map(|e| (e.reason, e.warning)).collect::<Vec<_>>();
        let p = plan(&vm("Always"), None, "t");
        assert_eq!(reasons(&p), vec![("SuccessfulCreate", false), ("Starting", false)]);
        let mut starting = vm("Always");
        starting["status"] = p.status.clone();
        let p = plan(&starting, Some(&vmi("Running")), "t");
        assert_eq!(reasons(&p), vec![("Running", false)]);
        assert_eq!(p.events[0].note, "Status changed from Starting to Running");
        let mut running = vm("Always");
        running["status"] = p.status.clone();
        assert!(plan(&running, Some(&vmi("Running")), "t").events.is_empty(), "no change, no event");
        let p = plan(&running, Some(&vmi("Failed")), "t");
        assert!(reasons(&p).contains(&("CrashLoopBackOff", true)), "{:?}", reasons(&p));
    }

    #[test]
    fn run_strategies() {
        assert_eq!(kinds(&plan(&vm("Always"), None, "t")), vec!["create"]);
        assert_eq!(kinds(&plan(&vm("Halted"), None, "t")), Vec::<&str>::new());
        assert_eq!(kinds(&plan(&vm("Halted"), Some(&vmi("Running")), "t")), vec!["delete"]);
        assert_eq!(kinds(&plan(&vm("Always"), Some(&vmi("Running")), "t")), Vec::<&str>::new());
        assert_eq!(kinds(&plan(&vm("Always"), Some(&vmi("Succeeded")), "t")), vec!["delete"]);
        assert_eq!(kinds(&plan(&vm("RerunOnFailure"), Some(&vmi("Succeeded")), "t")), Vec::<&str>::new());
        assert_eq!(kinds(&plan(&vm("Manual"), None, "t")), Vec::<&str>::new());
        assert_eq!(kinds(&plan(&vm("Once"), None, "t")), vec!["create"]);
        assert_eq!(kinds(&plan(&vm("Once"), Some(&vmi("Failed")), "t")), Vec::<&str>::new());
        let mut legacy = vm("x");
        legacy["spec"] = json!({"running": true, "template": {"spec": {}}});
        assert_eq!(kinds(&plan(&legacy, None, "t")), vec!["create"]);
    }

    #[test]
    fn failed_vmis_restart_after_a_growing_backoff() {
        let t0 = "2026-01-01T00:00:00Z";
        let p = plan(&vm("RerunOnFailure"), Some(&vmi("Failed")), t0);
        assert!(kinds(&p).is_empty(), "first failure waits");
        assert_eq!(p.requeue_after, Some(std::time::Duration::from_secs(10)));
        assert_eq!(p.status["startFailure"]["consecutiveFailCount"], 1);
        assert_eq!(p.status["printableStatus"], "CrashLoopBackOff");
        let mut later = vm("RerunOnFailure");
        later["status"] = p.status.clone();
        assert_eq!(kinds(&plan(&later, Some(&vmi("Failed")), "2026-01-01T00:00:11Z")), vec!["delete"]);
        // The next failed VMI (new uid) doubles the wait.
        let mut next = vmi("Failed");
        next["metadata"]["uid"] = json!("vmi-2");
        let p2 = plan(&later, Some(&next), "2026-01-01T00:01:00Z");
        assert_eq!(
            (p2.status["startFailure"]["consecutiveFailCount"].as_u64(), p2.requeue_after),
            (Some(2), Some(std::time::Duration::from_secs(20)))
        );
    }

    #[test]
    fn created_vmi_is_owned_and_labelled() {
        let p = plan(&vm("Always"), None, "t");
        let Action::CreateVmi(v) = &p.actions[0] else { panic!() };
        assert_eq!(v["metadata"]["ownerReferences"][0]["uid"], "vm-uid");
        assert_eq!(v["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(v["metadata"]["labels"]["app"], "x");
        assert_eq!(v["metadata"]["labels"]["kubevirt.io/vm"], "vm1");
        assert_eq!(p.status["printableStatus"], "Starting");
        assert_eq!(p.events[0].reason, "SuccessfulCreate");
    }

    #[test]
    fn state_change_requests_restart_a_manual_vm() {
        let mut v = vm("Manual");
        v["status"] = json!({"stateChangeRequests": [{"action": "Stop", "uid": "vmi-uid"}, {"action": "Start"}]});
        let p = plan(&v, Some(&vmi("Running")), "t");
        assert_eq!(kinds(&p), vec!["delete"]);
        assert_eq!(p.status["stateChangeRequests"].as_array().unwrap().len(), 2, "stop stays until the VMI is gone");
        let mut gone = v.clone();
        gone["status"] = p.status.clone();
        let p = plan(&gone, None, "t");
        assert_eq!(kinds(&p), vec!["create"]);
        assert!(p.status.get("stateChangeRequests").is_none());
    }

    #[test]
    fn printable_statuses() {
        let mut running = vmi("Running");
        running["status"]["conditions"] = json!([{"type": "Ready", "status": "True"}]);
        let p = plan(&vm("Always"), Some(&running), "t");
        assert_eq!((p.status["printableStatus"].as_str(), p.status["ready"].as_bool()), (Some("Running"), Some(true)));
        let mut stopping = running.clone();
        stopping["metadata"]["deletionTimestamp"] = json!("t");
        assert_eq!(plan(&vm("Halted"), Some(&stopping), "t").status["printableStatus"], "Stopping");
        assert_eq!(plan(&vm("Halted"), None, "t").status["printableStatus"], "Stopped");
        let mut paused = running.clone();
        paused["status"]["conditions"] =
            json!([{"type": "Ready", "status": "True"}, {"type": "Paused", "status": "True"}]);
        assert_eq!(plan(&vm("Always"), Some(&paused), "t").status["printableStatus"], "Paused");
        let mut deleting_vm = vm("Always");
        deleting_vm["metadata"]["deletionTimestamp"] = json!("t");
        let p = plan(&deleting_vm, Some(&running), "t");
        assert_eq!((p.status["printableStatus"].as_str(), kinds(&p)), (Some("Terminating"), vec!["delete"]));
    }

    #[test]
    fn foreign_vmi_is_ignored() {
        let mut other = vmi("Running");
        other["metadata"]["ownerReferences"] = json!([{"uid": "someone-else"}]);
        assert_eq!(kinds(&plan(&vm("Halted"), Some(&other), "t")), Vec::<&str>::new());
    }
}
