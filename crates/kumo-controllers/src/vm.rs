//! The VirtualMachine controller's decisions: which VirtualMachineInstance should exist given the VM's
//! `runStrategy` (or legacy `running`) and pending start/stop requests, and what the VM's status says.
//! Pure: no I/O, so every case is a unit test.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kumo_api::cdi::DataVolume;
use kumo_api::conditions;
use kumo_api::kubevirt::{StartFailure, VirtualMachine, VirtualMachineInstance, VirtualMachineStatus};

/// One thing to do through the API.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create this VMI (owned by the VM).
    CreateVmi(Box<VirtualMachineInstance>),
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
    /// The VM's status as it should be after the actions (all of it: the controller owns the VM's status).
    pub status: VirtualMachineStatus,
    pub events: Vec<Event>,
}

/// `runStrategy`, or what legacy `running` means (absent both: Halted).
pub fn run_strategy(vm: &VirtualMachine) -> &str {
    if let Some(s) = &vm.spec.run_strategy {
        return s;
    }
    match vm.spec.running {
        Some(true) => "Always",
        _ => "Halted",
    }
}

fn finished(vmi: &VirtualMachineInstance) -> bool {
    vmi.is_final()
}

fn deleting(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
}

fn uid(meta: &ObjectMeta) -> String {
    meta.uid.clone().unwrap_or_default()
}

/// The VMI a VM's template describes, owned by the VM.
pub fn vmi_from_template(vm: &VirtualMachine) -> VirtualMachineInstance {
    let name = vm.metadata.name.clone().unwrap_or_default();
    let template = vm.spec.template.metadata.as_ref();
    let mut labels = template.and_then(|m| m.labels.clone()).unwrap_or_default();
    labels.insert("kubevirt.io/vm".into(), name.clone());
    let owner = OwnerReference {
        api_version: "kubevirt.io/v1".into(),
        kind: "VirtualMachine".into(),
        name: name.clone(),
        uid: uid(&vm.metadata),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    VirtualMachineInstance {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: vm.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: template.and_then(|m| m.annotations.clone()),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: vm.spec.template.spec.clone(),
        status: None,
    }
}

/// The DataVolumes of `vm`'s `dataVolumeTemplates` that do not exist yet (`exists` says which do), owned by
/// the VM so they go with it. Made whatever the run strategy, as KubeVirt makes them.
pub fn missing_data_volumes(vm: &VirtualMachine, exists: impl Fn(&str) -> bool) -> Vec<DataVolume> {
    if deleting(&vm.metadata) {
        return vec![];
    }
    let owner = OwnerReference {
        api_version: "kubevirt.io/v1".into(),
        kind: "VirtualMachine".into(),
        name: vm.metadata.name.clone().unwrap_or_default(),
        uid: uid(&vm.metadata),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let templates = vm.spec.data_volume_templates.iter().flatten();
    templates
        .filter_map(|t| {
            let meta = t.metadata.clone().unwrap_or_default();
            let name = meta.name.clone().filter(|n| !exists(n))?;
            Some(DataVolume {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: vm.metadata.namespace.clone(),
                    labels: meta.labels,
                    annotations: meta.annotations,
                    owner_references: Some(vec![owner.clone()]),
                    ..Default::default()
                },
                spec: t.spec.clone(),
                status: None,
            })
        })
        .collect()
}

/// What should happen for `vm`, whose VMI (same name) is `vmi`.
pub fn plan(vm: &VirtualMachine, vmi: Option<&VirtualMachineInstance>, now: &str) -> Plan {
    let strategy = run_strategy(vm);
    let vm_status = vm.status.clone().unwrap_or_default();
    let mut actions = Vec::new();
    let mut events = Vec::new();
    let mut requests = vm_status.state_change_requests.unwrap_or_default();
    // A VMI not owned by this VM (e.g. a stale one from a deleted VM of the same name) is left alone.
    let vm_uid = uid(&vm.metadata);
    let vmi = vmi.filter(|i| i.metadata.owner_references.iter().flatten().any(|r| r.uid == vm_uid));
    let vm_deleting = deleting(&vm.metadata);

    // Pending start/stop requests (from the start/stop/restart subresources) come first, in order.
    let mut want: Option<bool> = None;
    let mut stop_requested = false;
    while let Some(req) = requests.first().cloned() {
        match req.action.as_str() {
            "Stop" => {
                let target = req.uid.as_deref();
                match vmi {
                    Some(i) if target.is_none_or(|t| t == uid(&i.metadata)) => {
                        want = Some(false);
                        stop_requested = true;
                        break; // stays queued until the VMI is gone
                    }
                    _ => {
                        requests.remove(0);
                    }
                }
            }
            "Start" => {
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
    let mut start_failure = vm_status.start_failure;
    let mut requeue_after = None;
    // A VMI lost with its node (NodeUnresponsive) did not crash: it restarts elsewhere at once, uncounted.
    let node_lost = |i: &VirtualMachineInstance| {
        i.status.as_ref().and_then(|s| s.reason.as_deref()) == Some(crate::nodelifecycle::NODE_UNRESPONSIVE)
    };
    if let Some(i) = vmi.filter(|i| i.phase() == "Failed" && !node_lost(i)) {
        let failed_uid = uid(&i.metadata);
        let seen = start_failure.as_ref().and_then(|f| f.last_failed_vmi_uid.as_deref()) == Some(failed_uid.as_str());
        if !seen {
            // A count that is not a non-negative number starts over, as an absent one does.
            let count = start_failure
                .as_ref()
                .and_then(|f| f.consecutive_fail_count)
                .and_then(|c| u64::try_from(c).ok())
                .unwrap_or(0)
                + 1;
            let delay = BACKOFF_BASE_SECS.saturating_mul(1 << (count - 1).min(10)).min(BACKOFF_MAX_SECS);
            let retry = chrono::DateTime::parse_from_rfc3339(now)
                .map(|t| (t + chrono::Duration::seconds(delay as i64)).format("%Y-%m-%dT%H:%M:%SZ").to_string())
                .unwrap_or_else(|_| now.to_string());
            start_failure = Some(StartFailure {
                consecutive_fail_count: Some(i64::try_from(count).unwrap_or(i64::MAX)),
                last_failed_vmi_uid: Some(failed_uid),
                retry_after_timestamp: Some(retry),
            });
        }
    } else if vmi.is_some_and(|i| i.phase() == "Running") {
        start_failure = None;
    }
    let want = want.unwrap_or(match strategy {
        "Always" => true,
        "RerunOnFailure" => vmi.is_none_or(|i| i.phase() != "Succeeded"),
        "Once" => vmi.is_some() || vm_status.created != Some(true),
        "Manual" => vmi.is_some_and(|i| !finished(i)),
        _ => false,
    }) && !vm_deleting;

    match (want, vmi) {
        (true, None) => {
            actions.push(Action::CreateVmi(Box::new(vmi_from_template(vm))));
            events.push(Event {
                warning: false,
                reason: "SuccessfulCreate",
                note: "Started the virtual machine by creating the new virtual machine instance".into(),
            });
        }
        (true, Some(i)) if finished(i) && !deleting(&i.metadata) && strategy != "Once" => {
            // A finished VMI is replaced: delete now, create on the next pass once it is gone — after a
            // growing backoff when it failed, so a broken VM does not restart in a tight loop.
            let phase = i.phase();
            let rerun =
                strategy == "Always" || (strategy == "RerunOnFailure" && phase == "Failed") || !requests.is_empty();
            let wait =
                if phase == "Failed" && !node_lost(i) { backoff_remaining(start_failure.as_ref(), now) } else { None };
            if let Some(w) = wait {
                requeue_after = Some(w);
            } else if rerun {
                actions.push(Action::DeleteVmi { uid: uid(&i.metadata) });
                events.push(Event {
                    warning: phase == "Failed",
                    reason: "SuccessfulDelete",
                    note: format!("Restarting the virtual machine: its instance {}", phase.to_lowercase()),
                });
            }
        }
        // A finished VMI stays as a record unless the VM is halted or a stop was asked for.
        (false, Some(i))
            if !deleting(&i.metadata) && (!finished(i) || strategy == "Halted" || stop_requested || vm_deleting) =>
        {
            actions.push(Action::DeleteVmi { uid: uid(&i.metadata) });
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
    let mut conds = vm_status.conditions.unwrap_or_default();
    let ready = vmi.is_some_and(|i| conditions::is_true(i.conditions(), "Ready") && !deleting(&i.metadata));
    // The VMI this pass creates exists once the status is written: saying so spares a second status write.
    let (reason, msg) = match vmi {
        _ if ready => ("", ""),
        None if !creating => ("VMINotExists", "VMI does not exist"),
        _ => ("VMINotReady", "the virtual machine instance is not ready"),
    };
    conditions::set(&mut conds, "Ready", if ready { "True" } else { "False" }, reason, msg, now);
    let paused = vmi.is_some_and(|i| conditions::is_true(i.conditions(), "Paused"));
    if paused {
        conditions::set(&mut conds, "Paused", "True", "PausedByUser", "VMI was paused by user", now);
    } else {
        conds.retain(|c| c.type_ != "Paused");
    }
    // Every change of printableStatus is an event, so `kubectl describe vm` tells the VM's story.
    let before = vm_status.printable_status.as_deref();
    if before != Some(printable) && !vm_deleting {
        let warning = matches!(printable, "CrashLoopBackOff" | "ErrImagePull" | "ErrorUnschedulable");
        let note = match before {
            Some(b) => format!("Status changed from {b} to {printable}"),
            None => format!("Status is {printable}"),
        };
        events.push(Event { warning, reason: printable, note });
    }
    let status = VirtualMachineStatus {
        printable_status: Some(printable.into()),
        printable_status_reason: None,
        ready: Some(ready),
        created: Some(vmi.is_some() || creating),
        run_strategy: Some(strategy.into()),
        desired_generation: vm.metadata.generation,
        observed_generation: vm.metadata.generation,
        conditions: Some(conds),
        state_change_requests: (!requests.is_empty()).then_some(requests),
        start_failure,
    };
    Plan { actions, requeue_after, status, events }
}

const BACKOFF_BASE_SECS: u64 = 10;
const BACKOFF_MAX_SECS: u64 = 300;

/// Time left before a failed VMI may be restarted, if any.
fn backoff_remaining(start_failure: Option<&StartFailure>, now: &str) -> Option<std::time::Duration> {
    let retry = start_failure?.retry_after_timestamp.as_deref()?;
    let (retry, now) =
        (chrono::DateTime::parse_from_rfc3339(retry).ok()?, chrono::DateTime::parse_from_rfc3339(now).ok()?);
    (retry > now).then(|| (retry - now).to_std().ok()).flatten()
}

fn printable_status(
    vm_deleting: bool,
    vmi: Option<&VirtualMachineInstance>,
    creating: bool,
    strategy: &str,
) -> &'static str {
    if vm_deleting {
        return "Terminating";
    }
    let Some(i) = vmi else {
        return if creating { "Starting" } else { "Stopped" };
    };
    if deleting(&i.metadata) {
        return "Stopping";
    }
    match i.phase() {
        "" | "Pending" | "Scheduling" | "Scheduled" => {
            if conditions::status(i.conditions(), "PodScheduled") == Some("False") {
                "ErrorUnschedulable"
            } else {
                "Starting"
            }
        }
        "Running" if conditions::is_true(i.conditions(), "Paused") => "Paused",
        "Running" => "Running",
        "Failed" if strategy == "Always" || strategy == "RerunOnFailure" => "CrashLoopBackOff",
        "Failed" => match i.status.as_ref().and_then(|s| s.reason.as_deref()) {
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
    use serde_json::{json, Value};

    fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).expect("a valid object")
    }

    fn vm_json(strategy: &str) -> Value {
        json!({"metadata": {"name": "vm1", "namespace": "default", "uid": "vm-uid", "generation": 1},
            "spec": {"runStrategy": strategy, "template": {"metadata": {"labels": {"app": "x"}},
                "spec": {"domain": {"devices": {}}}}}})
    }

    fn vm(strategy: &str) -> VirtualMachine {
        typed(vm_json(strategy))
    }

    fn vmi_json(phase: &str) -> Value {
        json!({"metadata": {"name": "vm1", "uid": "vmi-uid", "ownerReferences": [{"uid": "vm-uid"}]},
            "status": {"phase": phase}})
    }

    fn vmi(phase: &str) -> VirtualMachineInstance {
        typed(vmi_json(phase))
    }

    #[test]
    fn data_volume_templates_become_datavolumes_the_vm_owns() {
        let mut v = vm_json("Halted");
        v["spec"]["dataVolumeTemplates"] = json!([
            {"metadata": {"name": "root", "labels": {"a": "b"}},
             "spec": {"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": "1Gi"}}}}},
            {"metadata": {"name": "data"}, "spec": {"source": {"blank": {}}}}]);
        let v: VirtualMachine = typed(v);
        let made = missing_data_volumes(&v, |n| n == "data");
        assert_eq!(made.len(), 1, "only the missing one, even for a halted VM");
        let dv = &made[0];
        assert_eq!(dv.metadata.name.as_deref(), Some("root"));
        assert_eq!(dv.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(dv.metadata.owner_references.as_ref().unwrap()[0].uid, "vm-uid");
        assert_eq!(dv.metadata.labels.as_ref().unwrap()["a"], "b");
        let mut gone = v.clone();
        gone.metadata.deletion_timestamp = typed(json!("2026-01-01T00:00:00Z"));
        assert!(missing_data_volumes(&gone, |_| false).is_empty(), "not for a VM being deleted");
    }

    /// `vm` with the status a previous plan wrote.
    fn with_status(mut vm: VirtualMachine, p: &Plan) -> VirtualMachine {
        vm.status = Some(p.status.clone());
        vm
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

    fn fail_count(p: &Plan) -> Option<i64> {
        p.status.start_failure.as_ref().and_then(|f| f.consecutive_fail_count)
    }

    #[test]
    fn printable_status_changes_are_events() {
        let reasons = |p: &Plan| p.events.iter().map(|e| (e.reason, e.warning)).collect::<Vec<_>>();
        let p = plan(&vm("Always"), None, "t");
        assert_eq!(reasons(&p), vec![("SuccessfulCreate", false), ("Starting", false)]);
        let starting = with_status(vm("Always"), &p);
        let p = plan(&starting, Some(&vmi("Running")), "t");
        assert_eq!(reasons(&p), vec![("Running", false)]);
        assert_eq!(p.events[0].note, "Status changed from Starting to Running");
        let running = with_status(vm("Always"), &p);
        assert!(plan(&running, Some(&vmi("Running")), "t").events.is_empty(), "no change, no event");
        let p = plan(&running, Some(&vmi("Failed")), "t");
        assert!(reasons(&p).contains(&("CrashLoopBackOff", true)), "{:?}", reasons(&p));
    }

    #[test]
    fn the_status_written_with_a_new_vmi_holds_until_it_runs() {
        let p = plan(&vm("Always"), None, "t");
        let starting = with_status(vm("Always"), &p);
        let json = |p: &Plan| serde_json::to_value(&p.status).expect("a status");
        for phase in ["Pending", "Scheduled"] {
            assert_eq!(json(&plan(&starting, Some(&vmi(phase)), "t2")), json(&p), "{phase}: nothing to write");
        }
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
        let mut legacy = vm_json("x");
        legacy["spec"] = json!({"running": true, "template": {"spec": {}}});
        assert_eq!(kinds(&plan(&typed(legacy), None, "t")), vec!["create"]);
    }

    #[test]
    fn failed_vmis_restart_after_a_growing_backoff() {
        let t0 = "2026-01-01T00:00:00Z";
        let p = plan(&vm("RerunOnFailure"), Some(&vmi("Failed")), t0);
        assert!(kinds(&p).is_empty(), "first failure waits");
        assert_eq!(p.requeue_after, Some(std::time::Duration::from_secs(10)));
        assert_eq!(fail_count(&p), Some(1));
        assert_eq!(p.status.printable_status.as_deref(), Some("CrashLoopBackOff"));
        let later = with_status(vm("RerunOnFailure"), &p);
        assert_eq!(kinds(&plan(&later, Some(&vmi("Failed")), "2026-01-01T00:00:11Z")), vec!["delete"]);
        // The next failed VMI (new uid) doubles the wait.
        let mut next = vmi("Failed");
        next.metadata.uid = Some("vmi-2".into());
        let p2 = plan(&later, Some(&next), "2026-01-01T00:01:00Z");
        assert_eq!((fail_count(&p2), p2.requeue_after), (Some(2), Some(std::time::Duration::from_secs(20))));
    }

    #[test]
    fn created_vmi_is_owned_and_labelled() {
        let p = plan(&vm("Always"), None, "t");
        let Action::CreateVmi(v) = &p.actions[0] else { panic!() };
        let v = serde_json::to_value(v).unwrap();
        assert_eq!(v["metadata"]["ownerReferences"][0]["uid"], "vm-uid");
        assert_eq!(v["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(v["metadata"]["labels"]["app"], "x");
        assert_eq!(v["metadata"]["labels"]["kubevirt.io/vm"], "vm1");
        assert_eq!(
            (v["apiVersion"].as_str(), v["kind"].as_str()),
            (Some("kubevirt.io/v1"), Some("VirtualMachineInstance"))
        );
        assert_eq!(v["spec"], vm_json("Always")["spec"]["template"]["spec"], "the template's spec, as written");
        assert!(v.get("status").is_none());
        assert_eq!(p.status.printable_status.as_deref(), Some("Starting"));
        assert_eq!(p.events[0].reason, "SuccessfulCreate");
    }

    #[test]
    fn state_change_requests_restart_a_manual_vm() {
        let mut v = vm_json("Manual");
        v["status"] = json!({"stateChangeRequests": [{"action": "Stop", "uid": "vmi-uid"}, {"action": "Start"}]});
        let v: VirtualMachine = typed(v);
        let p = plan(&v, Some(&vmi("Running")), "t");
        assert_eq!(kinds(&p), vec!["delete"]);
        assert_eq!(p.status.state_change_requests.as_ref().map(Vec::len), Some(2), "stop stays until the VMI is gone");
        let gone = with_status(v.clone(), &p);
        let p = plan(&gone, None, "t");
        assert_eq!(kinds(&p), vec!["create"]);
        assert!(p.status.state_change_requests.is_none());
    }

    #[test]
    fn printable_statuses() {
        let printable = |p: Plan| p.status.printable_status.unwrap_or_default();
        let mut running = vmi_json("Running");
        running["status"]["conditions"] = json!([{"type": "Ready", "status": "True"}]);
        let p = plan(&vm("Always"), Some(&typed(running.clone())), "t");
        assert_eq!((p.status.printable_status.as_deref(), p.status.ready), (Some("Running"), Some(true)));
        let mut stopping = running.clone();
        stopping["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert_eq!(printable(plan(&vm("Halted"), Some(&typed(stopping)), "t")), "Stopping");
        assert_eq!(printable(plan(&vm("Halted"), None, "t")), "Stopped");
        let mut paused = running.clone();
        paused["status"]["conditions"] =
            json!([{"type": "Ready", "status": "True"}, {"type": "Paused", "status": "True"}]);
        assert_eq!(printable(plan(&vm("Always"), Some(&typed(paused)), "t")), "Paused");
        let mut deleting_vm = vm_json("Always");
        deleting_vm["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let p = plan(&typed(deleting_vm), Some(&typed(running)), "t");
        assert_eq!((p.status.printable_status.as_deref(), kinds(&p)), (Some("Terminating"), vec!["delete"]));
    }

    #[test]
    fn foreign_vmi_is_ignored() {
        let mut other = vmi_json("Running");
        other["metadata"]["ownerReferences"] = json!([{"uid": "someone-else"}]);
        assert_eq!(kinds(&plan(&vm("Halted"), Some(&typed(other)), "t")), Vec::<&str>::new());
    }
}
