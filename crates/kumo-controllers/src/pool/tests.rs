use super::*;
use serde_json::{json, Value};

const NOW: i64 = 1_700_000_000;

fn at(secs_ago: i64) -> String {
    chrono::DateTime::from_timestamp(NOW - secs_ago, 0).unwrap().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn pool(extra: Value) -> VirtualMachinePool {
    let base = json!({"metadata": {"name": "web", "namespace": "ns", "uid": "pool-1", "generation": 1,
            "finalizers": [api::FINALIZER]},
        "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "web"}},
            "virtualMachineTemplate": {"metadata": {"labels": {"app": "web"}}, "spec": {"runStrategy": "Always",
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"domain": {"devices": {}}}}}}}});
    serde_json::from_value(kumo_api::patch::merge_patch(&base, &extra)).unwrap()
}

/// The pool's VM `web-<index>` at `rev`, Ready for `ready` seconds (None: not Ready), `age` seconds old.
fn vm(index: u32, rev: &str, ready: Option<i64>, age: i64) -> VirtualMachine {
    let cond = match ready {
        Some(s) => json!({"type": "Ready", "status": "True", "lastTransitionTime": at(s)}),
        None => json!({"type": "Ready", "status": "False", "lastTransitionTime": at(age)}),
    };
    serde_json::from_value(json!({"metadata": {"name": format!("web-{index}"), "namespace": "ns",
            "uid": format!("vm-{index}"), "creationTimestamp": at(age),
            "labels": {"app": "web", api::POOL_LABEL: "web", api::REVISION_LABEL: rev},
            "ownerReferences": [{"apiVersion": "pool.kubevirt.io/v1beta1", "kind": "VirtualMachinePool",
                "name": "web", "uid": "pool-1", "controller": true}]},
        "spec": {"template": {"spec": {"domain": {"devices": {}}}}},
        "status": {"conditions": [cond]}}))
    .unwrap()
}

fn vmi(name: &str, phase: &str) -> VirtualMachineInstance {
    serde_json::from_value(json!({"metadata": {"name": name, "uid": format!("i-{name}"),
        "labels": {api::POOL_LABEL: "web"}}, "spec": {"domain": {"devices": {}}}, "status": {"phase": phase}}))
    .unwrap()
}

fn rev_of(p: &VirtualMachinePool) -> String {
    format!("web-{}", template_hash(p))
}

fn run(p: &VirtualMachinePool, vms: &[VirtualMachine], vmis: &[VirtualMachineInstance]) -> Plan {
    run_with(p, vms, vmis, &[])
}

fn run_with(
    p: &VirtualMachinePool,
    vms: &[VirtualMachine],
    vmis: &[VirtualMachineInstance],
    revisions: &[ControllerRevision],
) -> Plan {
    let nodes = BTreeMap::new();
    let now = chrono::DateTime::from_timestamp(NOW, 0).unwrap();
    plan(p, &World { vms, vmis, revisions, node_labels: &nodes, now })
}

fn deleted(plan: &Plan) -> Vec<&str> {
    plan.delete.iter().map(|d| d.0.as_str()).collect()
}

fn created(plan: &Plan) -> Vec<String> {
    plan.create.iter().map(|v| v.metadata.name.clone().unwrap()).collect()
}

#[test]
fn a_new_pool_makes_indexed_vms_from_a_first_revision() {
    let p = pool(json!({"metadata": {"finalizers": null}, "spec": {"replicas": 3}}));
    let plan = run(&p, &[], &[]);
    assert!(plan.add_finalizer);
    assert_eq!(created(&plan), ["web-0", "web-1", "web-2"]);
    let rev = plan.save_revision.as_ref().unwrap();
    assert_eq!((rev.revision, rev.metadata.name.clone()), (Some(1), Some(rev_of(&p))));
    let made = &plan.create[0];
    let labels = made.metadata.labels.as_ref().unwrap();
    assert_eq!(labels.get(api::REVISION_LABEL), Some(&rev_of(&p)));
    let vmi_labels = made.spec.template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    assert_eq!(vmi_labels.get(api::POOL_LABEL).map(String::as_str), Some("web"), "its VMIs are the pool's");
}

#[test]
fn a_surge_rollout_adds_first_and_removes_only_what_stays_covered() {
    let p = pool(json!({"spec": {"maxUnavailable": 0, "kumo": {"maxSurge": 1}}}));
    let old: Vec<_> = (0..4).map(|i| vm(i, "web-old", Some(600), 900)).collect();
    let plan = run(&p, &old, &[]);
    assert_eq!(created(&plan), ["web-4"], "one new VM beyond replicas");
    assert!(plan.delete.is_empty(), "no old VM goes before a new one is available");

    // The new VM is not Ready yet: nothing more.
    let mut vms = old.clone();
    vms.push(vm(4, &rev_of(&p), None, 10));
    let plan = run(&p, &vms, &[]);
    assert!(plan.create.is_empty() && plan.delete.is_empty(), "{:?}", plan.delete);

    // Ready: one old VM goes.
    vms[4] = vm(4, &rev_of(&p), Some(5), 10);
    let plan = run(&p, &vms, &[]);
    assert_eq!(deleted(&plan).len(), 1);
    assert!(plan.create.is_empty());

    // While the old guest still shuts down, it counts: no new VM yet (5 guests at most).
    vms.remove(0);
    let plan = run(&p, &vms, &[vmi("web-0", "Running")]);
    assert!(plan.create.is_empty(), "{:?}", created(&plan));
    let plan = run(&p, &vms, &[vmi("web-0", "Succeeded")]);
    assert_eq!(created(&plan), ["web-5"], "a finished guest does not count, but its name is not reused yet");
    let plan = run(&p, &vms, &[]);
    assert_eq!(created(&plan), ["web-0"], "the freed index is reused");
}

#[test]
fn min_ready_seconds_holds_old_vms_back() {
    let p = pool(json!({"spec": {"maxUnavailable": 0, "kumo": {"maxSurge": 1, "minReadySeconds": 30}}}));
    let mut vms: Vec<_> = (0..4).map(|i| vm(i, "web-old", Some(600), 900)).collect();
    vms.push(vm(4, &rev_of(&p), Some(10), 20));
    let plan = run(&p, &vms, &[]);
    assert!(plan.delete.is_empty(), "Ready for 10 s is not available yet");
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(20)));
}

#[test]
fn without_a_surge_vms_update_in_place_max_unavailable_at_a_time() {
    let p = pool(json!({"spec": {"maxUnavailable": 1}}));
    let vms: Vec<_> = (0..4).map(|i| vm(i, "web-old", Some(600), 900)).collect();
    let vmis: Vec<_> = (0..4).map(|i| vmi(&format!("web-{i}"), "Running")).collect();
    let plan = run(&p, &vms, &vmis);
    assert!(plan.create.is_empty() && plan.delete.is_empty());
    assert_eq!(plan.change.len(), 1);
    let VmChange::Update { vm: updated, restart_vmi } = &plan.change[0] else { panic!("{:?}", plan.change) };
    assert_eq!(updated.metadata.labels.as_ref().unwrap().get(api::REVISION_LABEL), Some(&rev_of(&p)));
    assert_eq!(
        updated.metadata.uid,
        vms.iter().find(|v| v.metadata.name == updated.metadata.name).unwrap().metadata.uid
    );
    assert!(restart_vmi.is_some(), "its guest restarts on the new template");
}

#[test]
fn opportunistic_updates_touch_only_the_vm_and_unmanaged_nothing() {
    let vms: Vec<_> = (0..4).map(|i| vm(i, "web-old", Some(600), 900)).collect();
    let vmis: Vec<_> = (0..4).map(|i| vmi(&format!("web-{i}"), "Running")).collect();
    let p = pool(json!({"spec": {"updateStrategy": {"opportunistic": {}}}}));
    let plan = run(&p, &vms, &vmis);
    assert_eq!(plan.change.len(), 4);
    assert!(plan.change.iter().all(|c| matches!(c, VmChange::Update { restart_vmi: None, .. })));
    let p = pool(json!({"spec": {"updateStrategy": {"unmanaged": {}}}}));
    assert!(run(&p, &vms, &vmis).change.is_empty());
}

#[test]
fn scale_in_follows_the_selection_policy() {
    let vms: Vec<_> = (0..5).map(|i| vm(i, "r", Some(600), 900 - i64::from(i))).collect();
    let p = pool(json!({"spec": {"replicas": 3,
        "scaleInStrategy": {"proactive": {"selectionPolicy": {"sortPolicy": "DescendingOrder"}}}}}));
    assert_eq!(deleted(&run(&p, &vms, &[])), ["web-4", "web-3"]);
    let p = pool(json!({"spec": {"replicas": 3,
        "scaleInStrategy": {"proactive": {"selectionPolicy": {"sortPolicy": "Oldest"}}}}}));
    assert_eq!(deleted(&run(&p, &vms, &[])), ["web-0", "web-1"]);
    // Selected VMs go first, then the sort policy.
    let mut marked = vms.clone();
    marked[1].metadata.labels.as_mut().unwrap().insert("drain".into(), "yes".into());
    let p = pool(json!({"spec": {"replicas": 3, "scaleInStrategy": {"proactive": {"selectionPolicy": {
        "sortPolicy": "DescendingOrder", "selectors": {"labelSelector": {"matchLabels": {"drain": "yes"}}}}}}}}));
    assert_eq!(deleted(&run(&p, &marked, &[])), ["web-1", "web-4"]);
    // Unmanaged and opportunistic scale-in leave VMs to others.
    let p = pool(json!({"spec": {"replicas": 3, "scaleInStrategy": {"opportunistic": {}}}}));
    assert!(run(&p, &vms, &[]).delete.is_empty());
}

#[test]
fn offline_state_preservation_stops_and_later_revives() {
    let p = pool(json!({"spec": {"replicas": 2, "scaleInStrategy": {"proactive": {"statePreservation": "Offline",
        "selectionPolicy": {"sortPolicy": "DescendingOrder"}}}}}));
    let rev = rev_of(&p);
    let vms: Vec<_> = (0..3).map(|i| vm(i, &rev, Some(600), 900)).collect();
    let plan = run(&p, &vms, &[]);
    assert_eq!(plan.change, [VmChange::Preserve { name: "web-2".into(), uid: "vm-2".into() }]);
    let mut kept = vms.clone();
    kept[2].metadata.annotations = Some([(PRESERVED_ANNOTATION.to_string(), "true".to_string())].into());
    let p = pool(json!({"spec": {"replicas": 3}}));
    let plan = run(&p, &kept, &[]);
    assert!(plan.create.is_empty());
    let [VmChange::Revive { vm }] = plan.change.as_slice() else { panic!("{:?}", plan.change) };
    assert!(!vm.metadata.annotations.as_ref().unwrap().contains_key(PRESERVED_ANNOTATION));
}

#[test]
fn autohealing_replaces_a_vm_that_keeps_failing_to_start() {
    let p = pool(json!({"spec": {"autohealing": {"startUpFailureThreshold": 2, "minFailingToStartDuration": "1m"}}}));
    let rev = rev_of(&p);
    let mut vms: Vec<_> = (0..4).map(|i| vm(i, &rev, Some(600), 900)).collect();
    let mut bad = vm(1, &rev, None, 30);
    bad.status.as_mut().unwrap().start_failure =
        Some(kumo_api::kubevirt::StartFailure { consecutive_fail_count: Some(2), ..Default::default() });
    vms[1] = bad;
    let plan = run(&p, &vms, &[]);
    assert_eq!(deleted(&plan), ["web-1"]);
    assert!(plan.delete[0].2.contains("failed to start 2 times"), "{}", plan.delete[0].2);
    // Failing for a while (under the threshold) counts too; without autohealing nothing happens.
    let mut slow = vm(2, &rev, None, 90);
    slow.status.as_mut().unwrap().printable_status = Some("CrashLoopBackOff".into());
    vms[1] = vm(1, &rev, Some(600), 900);
    vms[2] = slow;
    assert_eq!(deleted(&run(&p, &vms, &[])), ["web-2"]);
    assert!(run(&pool(json!({})), &vms, &[]).delete.is_empty());
}

#[test]
fn a_rollout_without_progress_stalls_after_its_deadline() {
    let p0 = pool(json!({"spec": {"maxUnavailable": 0, "kumo": {"maxSurge": 1, "progressDeadlineSeconds": 60}}}));
    let rev = rev_of(&p0);
    let mut vms: Vec<_> = (0..4).map(|i| vm(i, "web-old", Some(600), 900)).collect();
    vms.push(vm(4, &rev, None, 100));
    let status = json!({"status": {"replicas": 5, "kumo": {"updatedReplicas": 1, "availableReplicas": 0,
        "updateRevision": rev}, "conditions": [{"type": "Progressing", "status": "True", "reason": "PoolProgressing",
        "lastProbeTime": at(61), "lastTransitionTime": at(100)}]}});
    let p = pool(kumo_api::patch::merge_patch(
        &json!({"spec": {"maxUnavailable": 0,
        "kumo": {"maxSurge": 1, "progressDeadlineSeconds": 60}}}),
        &status,
    ));
    let plan = run(&p, &vms, &[]);
    let c = plan.status.conditions.as_ref().unwrap().iter().find(|c| c.type_ == "Progressing").unwrap();
    assert_eq!((c.status.as_str(), c.reason.as_deref()), ("False", Some(progress::DEADLINE_EXCEEDED)));
    let mut why = String::new();
    let mut stalled = p.clone();
    stalled.status = Some(plan.status);
    assert!(rollout_done(&stalled, &mut why).is_err());
    // Old VMs keep serving: none was deleted.
    assert!(run(&stalled, &vms, &[]).delete.is_empty());
}

#[test]
fn going_back_to_an_old_template_renumbers_its_revision_and_prunes_history() {
    let p = pool(json!({"spec": {"kumo": {"revisionHistoryLimit": 1}}}));
    let a = revision_for(&p, 1);
    let mut b = revision_for(
        &pool(json!({"spec": {"replicas": 4, "paused": false,
        "virtualMachineTemplate": {"spec": {"runStrategy": "Manual"}}}})),
        2,
    );
    b.metadata.name = Some("web-bbbb".into());
    let mut c = b.clone();
    c.metadata.name = Some("web-cccc".into());
    c.revision = Some(3);
    let plan = run_with(&p, &[], &[], &[a.clone(), b, c]);
    let saved = plan.save_revision.unwrap();
    assert_eq!((saved.metadata.name, saved.revision), (a.metadata.name, Some(4)));
    assert_eq!(plan.prune_revisions, ["web-bbbb"], "one old revision is kept");
}

#[test]
fn a_deleted_pool_removes_its_vms_then_its_finalizer() {
    let p = pool(json!({"metadata": {"deletionTimestamp": at(5)}}));
    let vms: Vec<_> = (0..2).map(|i| vm(i, "r", Some(600), 900)).collect();
    let plan = run(&p, &vms, &[]);
    assert_eq!(deleted(&plan), ["web-0", "web-1"]);
    assert!(!plan.remove_finalizer && plan.create.is_empty());
    assert!(run(&p, &[], &[]).remove_finalizer);
}
