use super::*;
use serde_json::json;

fn rs(replicas: i32, paused: bool) -> VirtualMachineInstanceReplicaSet {
    serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "ns", "uid": "rs-1"},
        "spec": {"replicas": replicas, "paused": paused, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"domain": {"devices": {}}}}}}))
    .unwrap()
}

/// A VMI named `name`, owned by `owner` (a uid) or nobody, with labels app=`app`.
fn vmi(
    name: &str,
    owner: Option<&str>,
    app: &str,
    phase: &str,
    node: bool,
    ready: bool,
    age: i64,
) -> VirtualMachineInstance {
    let owners: Vec<_> = owner
        .map(|uid| {
            json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceReplicaSet", "name": "x",
            "uid": uid, "controller": true})
        })
        .into_iter()
        .collect();
    let created = chrono::DateTime::from_timestamp(1_700_000_000 - age, 0).unwrap().to_rfc3339();
    serde_json::from_value(json!({"metadata": {"name": name, "uid": format!("u-{name}"), "labels": {"app": app},
            "ownerReferences": owners, "creationTimestamp": created},
        "spec": {"domain": {"devices": {}}},
        "status": {"phase": phase, "nodeName": if node { Some("n1") } else { None },
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}}))
    .unwrap()
}

fn names(keys: &[(String, String)]) -> Vec<&str> {
    keys.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn it_makes_what_is_missing_from_its_template() {
    let p = plan(&rs(3, false), &[vmi("a", Some("rs-1"), "web", "Running", true, true, 10)], "now");
    assert_eq!(p.create.len(), 2);
    let made = &p.create[0];
    assert_eq!(made.metadata.generate_name.as_deref(), Some("web"));
    assert_eq!(made.metadata.labels.as_ref().unwrap()["app"], "web");
    assert_eq!(controller_uid(&made.metadata), Some("rs-1"));
    assert_eq!(p.status.replicas, Some(1));
    assert_eq!(p.status.ready_replicas, Some(1));
    assert_eq!(p.status.label_selector.as_deref(), Some("app=web"));
}

#[test]
fn scaling_in_removes_unplaced_then_unready_then_youngest() {
    let vmis = [
        vmi("old-ready", Some("rs-1"), "web", "Running", true, true, 100),
        vmi("young-ready", Some("rs-1"), "web", "Running", true, true, 5),
        vmi("unready", Some("rs-1"), "web", "Running", true, false, 50),
        vmi("pending", Some("rs-1"), "web", "Pending", false, false, 60),
    ];
    let p = plan(&rs(1, false), &vmis, "now");
    assert_eq!(names(&p.delete), ["pending", "unready", "young-ready"]);
    assert!(p.create.is_empty());
}

#[test]
fn finished_vmis_are_replaced() {
    let vmis = [
        vmi("a", Some("rs-1"), "web", "Running", true, true, 10),
        vmi("dead", Some("rs-1"), "web", "Failed", true, false, 10),
    ];
    let p = plan(&rs(2, false), &vmis, "now");
    assert_eq!(names(&p.delete), ["dead"]);
    assert_eq!(p.create.len(), 1, "the failed one does not count");
    assert_eq!(p.status.replicas, Some(1));
}

#[test]
fn orphans_are_adopted_and_strays_released_and_others_left_alone() {
    let vmis = [
        vmi("orphan", None, "web", "Running", true, true, 10),
        vmi("stray", Some("rs-1"), "db", "Running", true, true, 10),
        vmi("theirs", Some("other"), "web", "Running", true, true, 10),
    ];
    let p = plan(&rs(1, false), &vmis, "now");
    assert_eq!(names(&p.adopt), ["orphan"]);
    assert_eq!(names(&p.release), ["stray"]);
    assert!(p.create.is_empty() && p.delete.is_empty(), "the orphan makes up the count: {p:?}");
}

#[test]
fn a_paused_set_changes_nothing_and_says_so() {
    let p = plan(&rs(3, true), &[vmi("dead", Some("rs-1"), "web", "Failed", true, false, 1)], "t0");
    assert!(p.create.is_empty() && p.delete.is_empty());
    let c = p.status.conditions.unwrap();
    assert_eq!((c[0].type_.as_str(), c[0].status.as_str()), ("ReplicaPaused", "True"));
    // Resumed: the condition goes and the work is done.
    let p = plan(&rs(3, false), &[], "t1");
    assert_eq!(p.create.len(), 3);
    assert!(p.status.conditions.is_none());
}

#[test]
fn a_deleted_set_only_reports() {
    let mut set = rs(0, false);
    set.metadata.deletion_timestamp = serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap();
    let p = plan(&set, &[vmi("a", Some("rs-1"), "web", "Running", true, true, 1)], "now");
    assert!(p.delete.is_empty() && p.create.is_empty() && p.adopt.is_empty());
}
