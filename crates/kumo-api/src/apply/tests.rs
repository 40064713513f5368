use super::*;
use crate::patch::lists::{BuiltinLists, ListType};
use crate::resource::Builtin;
use serde_json::json;

const T0: &str = "2024-01-01T00:00:00Z";
const T1: &str = "2024-01-01T00:01:00Z";
const T2: &str = "2024-01-01T00:02:00Z";

/// Lists of a pod-like test kind: containers keyed by name, ports by (containerPort, protocol).
struct PodLists;
impl ListTypes for PodLists {
    fn list_type(&self, path: &[&str]) -> ListType {
        match path {
            ["spec", "containers"] => ListType::Map(vec!["name".into()]),
            ["spec", "containers", "ports"] => ListType::Map(vec!["containerPort".into(), "protocol".into()]),
            ["metadata", "finalizers"] => ListType::Set,
            _ => ListType::Atomic,
        }
    }
}

static CM: BuiltinLists = BuiltinLists(Builtin::ConfigMap);

fn opts<'a>(manager: &'a str, now: &'a str) -> ApplyOptions<'a> {
    ApplyOptions { manager, force: false, now, api_version: "v1", lists: &CM }
}

fn cm(data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "default"}, "data": data})
}

fn managed(obj: &Value) -> Vec<Value> {
    obj["metadata"]["managedFields"].as_array().cloned().unwrap_or_default()
}

fn entry<'a>(obj: &'a Value, manager: &str, op: &str) -> Option<&'a Value> {
    obj["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find(|e| e["manager"] == json!(manager) && e["operation"] == json!(op))
}

/// What an object looks like once stored: the server's metadata added.
fn stored(mut obj: Value) -> Value {
    obj["metadata"]["uid"] = json!("u1");
    obj["metadata"]["resourceVersion"] = json!("1");
    obj["metadata"]["creationTimestamp"] = json!(T0);
    obj
}

#[test]
fn a_create_then_reapply_changed_value_same_manager() {
    let created = stored(apply(None, &cm(json!({"key": "v1", "other": "x"})), &opts("kubectl", T0)).unwrap());
    assert_eq!(created["data"], json!({"key": "v1", "other": "x"}));
    assert_eq!(created["metadata"]["name"], json!("c"));
    assert_eq!(
        managed(&created),
        vec![json!({
            "manager": "kubectl", "operation": "Apply", "apiVersion": "v1", "time": T0,
            "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:key": {}, "f:other": {}}}
        })]
    );
    let updated = apply(Some(&created), &cm(json!({"key": "v2", "other": "x"})), &opts("kubectl", T1)).unwrap();
    assert_eq!(updated["data"], json!({"key": "v2", "other": "x"}));
    assert_eq!(updated["metadata"]["uid"], json!("u1"));
    let entries = managed(&updated);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["time"], json!(T1));
    // A no-op re-apply keeps the time.
    let again = apply(Some(&updated), &cm(json!({"key": "v2", "other": "x"})), &opts("kubectl", T2)).unwrap();
    assert_eq!(managed(&again)[0]["time"], json!(T1));
}

#[test]
fn server_metadata_is_not_taken_from_the_config_but_resource_version_is_kept() {
    let live = stored(apply(None, &cm(json!({"k": "v"})), &opts("m", T0)).unwrap());
    let mut cfg = cm(json!({"k": "v"}));
    cfg["metadata"]["uid"] = json!("other");
    cfg["metadata"]["resourceVersion"] = json!("7");
    cfg["metadata"]["managedFields"] = json!([{"manager": "x", "operation": "Apply", "fieldsV1": {"f:data": {}}}]);
    let out = apply(Some(&live), &cfg, &opts("m", T1)).unwrap();
    assert_eq!(out["metadata"]["uid"], json!("u1"));
    // Left for the caller to check as a precondition.
    assert_eq!(out["metadata"]["resourceVersion"], json!("7"));
    assert_eq!(managed(&out).len(), 1);
    assert_eq!(managed(&out)[0]["manager"], json!("m"));
}

#[test]
fn b_conflict_with_kubectl_create_and_force() {
    let mut created = stored(cm(json!({"key": "v1", "keep": "k"})));
    track_update(None, &mut created, "kubectl-create", T0, "v1", &CM);
    let owner = entry(&created, "kubectl-create", "Update").unwrap();
    assert_eq!(owner["fieldsV1"], json!({"f:data": {".": {}, "f:key": {}, "f:keep": {}}}));

    let err = apply(Some(&created), &cm(json!({"key": "v2"})), &opts("kubectl", T1)).unwrap_err();
    let ApplyError::Conflicts(conflicts) = &err else { panic!("{err:?}") };
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].manager, "kubectl-create");
    assert_eq!(conflicts[0].field, ".data.key");
    let status = err.to_api_error("", "ConfigMap", "c");
    assert_eq!(status.code, 409);
    assert_eq!(status.reason, "Conflict");
    assert_eq!(status.message, "Apply failed with 1 conflict: conflict with \"kubectl-create\" using v1: .data.key");
    let causes = &status.details.as_ref().unwrap().causes;
    assert_eq!(causes[0].reason, "FieldManagerConflict");
    assert_eq!(causes[0].message, "conflict with \"kubectl-create\" using v1");
    assert_eq!(causes[0].field, ".data.key");

    let forced = ApplyOptions { force: true, ..opts("kubectl", T1) };
    let out = apply(Some(&created), &cm(json!({"key": "v2"})), &forced).unwrap();
    assert_eq!(out["data"], json!({"key": "v2", "keep": "k"}));
    let loser = entry(&out, "kubectl-create", "Update").unwrap();
    assert_eq!(loser["fieldsV1"], json!({"f:data": {".": {}, "f:keep": {}}}));
    assert_eq!(entry(&out, "kubectl", "Apply").unwrap()["fieldsV1"], json!({"f:data": {"f:key": {}}}));
    // Kubernetes' order: Apply entries before Update entries.
    assert_eq!(managed(&out)[0]["operation"], json!("Apply"));
}

#[test]
fn applying_the_same_value_as_the_owner_is_no_conflict() {
    let mut created = stored(cm(json!({"key": "v1"})));
    track_update(None, &mut created, "kubectl-create", T0, "v1", &CM);
    let out = apply(Some(&created), &cm(json!({"key": "v1"})), &opts("kubectl", T1)).unwrap();
    // Shared: both own it.
    assert!(entry(&out, "kubectl-create", "Update").unwrap()["fieldsV1"]["f:data"]["f:key"].is_object());
    assert!(entry(&out, "kubectl", "Apply").unwrap()["fieldsV1"]["f:data"]["f:key"].is_object());
}

#[test]
fn c_two_appliers_same_value_share_ownership() {
    let first = stored(apply(None, &cm(json!({"key": "v", "a": "1"})), &opts("one", T0)).unwrap());
    let second = apply(Some(&first), &cm(json!({"key": "v"})), &opts("two", T1)).unwrap();
    assert_eq!(entry(&second, "one", "Apply").unwrap()["fieldsV1"], json!({"f:data": {"f:key": {}, "f:a": {}}}));
    assert_eq!(entry(&second, "two", "Apply").unwrap()["fieldsV1"], json!({"f:data": {"f:key": {}}}));
    // A different value from the second applier conflicts with the first (an applier: no "using").
    let err = apply(Some(&second), &cm(json!({"key": "w"})), &opts("two", T2)).unwrap_err();
    assert_eq!(
        err.to_api_error("", "ConfigMap", "c").message,
        "Apply failed with 1 conflict: conflict with \"one\": .data.key"
    );
}

#[test]
fn d_removing_a_field_from_the_config_removes_it() {
    let first = stored(apply(None, &cm(json!({"key": "v", "gone": "x"})), &opts("kubectl", T0)).unwrap());
    let out = apply(Some(&first), &cm(json!({"key": "v"})), &opts("kubectl", T1)).unwrap();
    assert_eq!(out["data"], json!({"key": "v"}));
    assert_eq!(managed(&out)[0]["fieldsV1"], json!({"f:data": {"f:key": {}}}));
    // Dropping everything removes the emptied map and the entry.
    let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
    let empty = apply(Some(&out), &cfg, &opts("kubectl", T2)).unwrap();
    assert!(empty.get("data").is_none(), "{empty}");
    assert!(empty["metadata"].get("managedFields").is_none());
    assert_eq!(empty["metadata"]["uid"], json!("u1"));
}

#[test]
fn removed_field_stays_when_another_manager_owns_it() {
    let first = stored(apply(None, &cm(json!({"key": "v", "shared": "s"})), &opts("one", T0)).unwrap());
    let second = apply(Some(&first), &cm(json!({"shared": "s"})), &opts("two", T1)).unwrap();
    let out = apply(Some(&second), &cm(json!({"key": "v"})), &opts("one", T2)).unwrap();
    assert_eq!(out["data"], json!({"key": "v", "shared": "s"}));
    assert_eq!(entry(&out, "one", "Apply").unwrap()["fieldsV1"], json!({"f:data": {"f:key": {}}}));
}

fn pod(containers: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": containers}})
}

fn pod_opts<'a>(manager: &'a str, now: &'a str) -> ApplyOptions<'a> {
    ApplyOptions { manager, force: false, now, api_version: "v1", lists: &PodLists }
}

#[test]
fn keyed_list_items_are_encoded_merged_and_pruned() {
    let cfg = pod(json!([
        {"name": "a", "image": "a:1", "ports": [{"containerPort": 80, "protocol": "TCP"}]},
        {"name": "b", "image": "b:1"}
    ]));
    let first = stored(apply(None, &cfg, &pod_opts("mgr", T0)).unwrap());
    assert_eq!(
        managed(&first)[0]["fieldsV1"],
        json!({"f:spec": {"f:containers": {
            "k:{\"name\":\"a\"}": {".": {}, "f:name": {}, "f:image": {}, "f:ports": {
                "k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}, "f:protocol": {}}
            }},
            "k:{\"name\":\"b\"}": {".": {}, "f:name": {}, "f:image": {}}
        }}})
    );
    // Another manager adds its own container; the first drops "b" and changes "a".
    let other = apply(Some(&first), &pod(json!([{"name": "c", "image": "c:1"}])), &pod_opts("other", T1)).unwrap();
    assert_eq!(other["spec"]["containers"].as_array().unwrap().len(), 3);
    let out = apply(Some(&other), &pod(json!([{"name": "a", "image": "a:2"}])), &pod_opts("mgr", T2)).unwrap();
    assert_eq!(out["spec"]["containers"], json!([{"name": "a", "image": "a:2"}, {"name": "c", "image": "c:1"}]));
    // Changing another manager's item field names the item in the conflict.
    let err = apply(Some(&out), &pod(json!([{"name": "c", "image": "c:2"}])), &pod_opts("mgr", T2)).unwrap_err();
    let ApplyError::Conflicts(c) = err else { panic!() };
    assert_eq!(c[0].field, ".spec.containers[name=\"c\"].image");
    assert_eq!(c[0].manager, "other");
}

#[test]
fn set_values_are_encoded_and_merged_as_union() {
    let cfg = |f: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "finalizers": f}});
    let first = stored(apply(None, &cfg(json!(["a/x"])), &opts("one", T0)).unwrap());
    assert_eq!(managed(&first)[0]["fieldsV1"], json!({"f:metadata": {"f:finalizers": {"v:\"a/x\"": {}}}}));
    let second = apply(Some(&first), &cfg(json!(["b/y"])), &opts("two", T1)).unwrap();
    assert_eq!(second["metadata"]["finalizers"], json!(["a/x", "b/y"]));
    let third = apply(Some(&second), &cfg(json!([])), &opts("one", T2)).unwrap();
    assert_eq!(third["metadata"]["finalizers"], json!(["b/y"]));
}

#[test]
fn invalid_configurations() {
    let dup = pod(json!([{"name": "a"}, {"name": "a"}]));
    let err = apply(None, &dup, &pod_opts("m", T0)).unwrap_err();
    assert!(matches!(&err, ApplyError::Invalid(m) if m.contains("duplicate")), "{err:?}");
    assert_eq!(err.to_api_error("", "Pod", "p").code, 422);
    let keyless = pod(json!([{"image": "x"}]));
    assert!(matches!(apply(None, &keyless, &pod_opts("m", T0)), Err(ApplyError::Invalid(_))));
    assert!(matches!(
        apply(None, &json!({"metadata": {"name": "x"}}), &pod_opts("m", T0)),
        Err(ApplyError::Invalid(_))
    ));
}

#[test]
fn objects_without_managed_fields_belong_to_before_first_apply() {
    let legacy = stored(cm(json!({"key": "v1", "old": "o"})));
    let err = apply(Some(&legacy), &cm(json!({"key": "v2"})), &opts("kubectl", T1)).unwrap_err();
    let ApplyError::Conflicts(c) = &err else { panic!() };
    assert_eq!((c[0].manager.as_str(), c[0].field.as_str()), (BEFORE_FIRST_APPLY, ".data.key"));
    let out = apply(Some(&legacy), &cm(json!({"key": "v1", "new": "n"})), &opts("kubectl", T1)).unwrap();
    let bfa = entry(&out, BEFORE_FIRST_APPLY, "Update").unwrap();
    assert_eq!(bfa["fieldsV1"], json!({"f:data": {".": {}, "f:key": {}, "f:old": {}}}));
}

#[test]
fn multiple_conflicts_message() {
    let mut created = stored(cm(json!({"a": "1", "b": "2"})));
    track_update(None, &mut created, "kubectl-create", T0, "v1", &CM);
    let err = apply(Some(&created), &cm(json!({"a": "x", "b": "y"})), &opts("kubectl", T1)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Apply failed with 2 conflicts: conflicts with \"kubectl-create\" using v1:\n- .data.a\n- .data.b"
    );
    assert_eq!(err.to_api_error("", "ConfigMap", "c").details.unwrap().causes.len(), 2);
}

#[test]
fn track_update_transfers_ownership() {
    let mut created = stored(cm(json!({"a": "1", "b": "2"})));
    created["metadata"]["labels"] = json!({"app": "x"});
    track_update(None, &mut created, "creator", T0, "v1", &CM);
    assert_eq!(
        entry(&created, "creator", "Update").unwrap()["fieldsV1"],
        json!({"f:data": {".": {}, "f:a": {}, "f:b": {}}, "f:metadata": {"f:labels": {".": {}, "f:app": {}}}})
    );

    let mut edited = created.clone();
    edited["data"]["a"] = json!("changed");
    edited["data"]["c"] = json!("new");
    edited["data"].as_object_mut().unwrap().remove("b");
    track_update(Some(&created), &mut edited, "editor", T1, "v1", &CM);
    assert_eq!(
        entry(&edited, "creator", "Update").unwrap()["fieldsV1"],
        // `data` itself stays the creator's: a member without children is `{}`.
        json!({"f:data": {}, "f:metadata": {"f:labels": {".": {}, "f:app": {}}}})
    );
    assert_eq!(entry(&edited, "editor", "Update").unwrap()["fieldsV1"], json!({"f:data": {"f:a": {}, "f:c": {}}}));
    // Sorted by time within the same operation.
    let names: Vec<Value> = managed(&edited).iter().map(|e| e["manager"].clone()).collect();
    assert_eq!(names, vec![json!("creator"), json!("editor")]);

    // An update that changes nothing keeps the entry's time.
    let mut same = edited.clone();
    track_update(Some(&edited), &mut same, "editor", T2, "v1", &CM);
    assert_eq!(entry(&same, "editor", "Update").unwrap()["time"], json!(T1));

    // Changing every leaf leaves the creator only the maps themselves.
    let mut leaves = edited.clone();
    leaves["data"] = json!({"a": "z"});
    leaves["metadata"]["labels"] = json!({"app": "y"});
    track_update(Some(&edited), &mut leaves, "editor", T2, "v1", &CM);
    assert_eq!(
        entry(&leaves, "creator", "Update").unwrap()["fieldsV1"],
        json!({"f:data": {}, "f:metadata": {"f:labels": {}}})
    );
    // Removing what the creator owned drops its entry; [{}] clears managedFields.
    let mut all = leaves.clone();
    all.as_object_mut().unwrap().remove("data");
    all["metadata"].as_object_mut().unwrap().remove("labels");
    all["metadata"]["annotations"] = json!({"n": "1"});
    track_update(Some(&leaves), &mut all, "editor", T2, "v1", &CM);
    assert_eq!(managed(&all).len(), 1);
    assert_eq!(managed(&all)[0]["fieldsV1"], json!({"f:metadata": {"f:annotations": {".": {}, "f:n": {}}}}));
    let mut reset = all.clone();
    reset["metadata"]["managedFields"] = json!([{}]);
    track_update(Some(&all), &mut reset, "editor", T2, "v1", &CM);
    assert!(reset["metadata"].get("managedFields").is_none());
}

#[test]
fn update_after_apply_takes_fields_from_the_applier() {
    let applied = stored(apply(None, &cm(json!({"key": "v1"})), &opts("kubectl", T0)).unwrap());
    let mut edited = applied.clone();
    edited["data"]["key"] = json!("v2");
    track_update(Some(&applied), &mut edited, "kubectl-edit", T1, "v1", &CM);
    assert!(entry(&edited, "kubectl", "Apply").is_none());
    // The applier now conflicts with the editor when re-applying its old value.
    let err = apply(Some(&edited), &cm(json!({"key": "v1"})), &opts("kubectl", T2)).unwrap_err();
    assert!(err.to_string().contains("conflict with \"kubectl-edit\" using v1: .data.key"), "{err}");
}
