use super::*;
use serde_json::json;

fn claim(class: &str, provisioner: &str, selected: Option<&str>) -> PersistentVolumeClaim {
    let mut annotations = json!({STORAGE_PROVISIONER: provisioner});
    if let Some(n) = selected {
        annotations[SELECTED_NODE] = json!(n);
    }
    serde_json::from_value(json!({
        "metadata": {"name": "data", "namespace": "ns", "uid": "u1", "annotations": annotations},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                 "resources": {"requests": {"storage": "2Gi"}}},
    }))
    .unwrap()
}

fn classes() -> Vec<StorageClass> {
    kumo_api::provisioning::seed_classes().into_iter().map(|c| serde_json::from_value(c).unwrap()).collect()
}

fn node(name: &str, shared: bool, ready: bool) -> Node {
    let mut labels = json!({"kubernetes.io/hostname": name});
    if shared {
        labels[prov::SHARED_VOLUMES_LABEL] = json!("true");
    }
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels},
        "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}}))
    .unwrap()
}

fn created(p: Plan) -> PersistentVolume {
    match p {
        Plan::Create(pv) => *pv,
        other => panic!("expected a volume, got {other:?}"),
    }
}

#[test]
fn a_local_volume_is_made_on_the_selected_node_and_pinned_there() {
    let nodes = [node("a", false, true), node("b", false, true)];
    let pv = created(plan(&claim("local", prov::LOCAL, Some("b")), &classes(), &nodes, None));
    assert_eq!(pv.name_any(), "pvc-u1");
    assert_eq!(pv.labels()[VOLUME_NODE_LABEL], "b");
    assert_eq!(prov::state(&pv), Some(prov::PENDING));
    assert_eq!(prov::csi_of(&pv), Some((prov::LOCAL, "pvc-u1")));
    assert!(pv.finalizers().iter().any(|f| f == CLEANUP_FINALIZER));
    let spec = pv.spec.as_ref().unwrap();
    assert_eq!(spec.capacity.as_ref().unwrap()["storage"].0, "2Gi");
    assert_eq!(spec.claim_ref.as_ref().unwrap().uid.as_deref(), Some("u1"));
    assert_eq!(spec.persistent_volume_reclaim_policy.as_deref(), Some("Delete"));
    let term = &spec.node_affinity.as_ref().unwrap().required.as_ref().unwrap().node_selector_terms[0];
    assert!(crate::sched::term_matches(term, &nodes[1]) && !crate::sched::term_matches(term, &nodes[0]));
    // Done once: the volume exists, or the claim is bound.
    assert_eq!(plan(&claim("local", prov::LOCAL, Some("b")), &classes(), &nodes, Some(&pv)), Plan::Nothing);
}

#[test]
fn local_volumes_need_a_first_consumer_and_one_node() {
    let nodes = [node("a", false, true)];
    assert!(matches!(plan(&claim("local", prov::LOCAL, None), &classes(), &nodes, None),
        Plan::Fail(m) if m.contains("WaitForFirstConsumer")));
    assert!(matches!(plan(&claim("local", prov::LOCAL, Some("gone")), &classes(), &nodes, None),
        Plan::Fail(m) if m.contains("\"gone\" does not exist")));
    let mut rwx = claim("local", prov::LOCAL, Some("a"));
    rwx.spec.as_mut().unwrap().access_modes = Some(vec!["ReadWriteMany".into()]);
    assert!(matches!(plan(&rwx, &classes(), &nodes, None), Plan::Fail(m) if m.contains("ReadWriteMany")));
    assert_eq!(plan(&claim("local", "example.com/other", Some("a")), &classes(), &nodes, None), Plan::Nothing);
    assert!(matches!(plan(&claim("fast", prov::LOCAL, Some("a")), &classes(), &nodes, None),
        Plan::Fail(m) if m.contains("\"fast\" not found")));
}

#[test]
fn a_shared_volume_is_kept_by_a_ready_node_that_mounts_the_directory() {
    let c = claim("shared", prov::SHARED, None);
    let none = [node("a", false, true), node("b", true, false)];
    assert!(matches!(plan(&c, &classes(), &none, None), Plan::Fail(m) if m.contains("--shared-volume-dir")));
    let nodes = [node("a", false, true), node("b", true, false), node("c", true, true)];
    let pv = created(plan(&c, &classes(), &nodes, None));
    assert_eq!(pv.labels()[VOLUME_NODE_LABEL], "c");
    assert!(pv.spec.as_ref().unwrap().node_affinity.is_none(), "usable from every node");
    // A keeper that went away hands the volume on; a local volume's files went with their node.
    let alone = [node("d", true, true)];
    assert_eq!(plan_cleanup(&pv, &alone), Cleanup::Relabel("d".into()));
    assert_eq!(plan_cleanup(&pv, &nodes), Cleanup::Nothing);
    let mut local = created(plan(&claim("local", prov::LOCAL, Some("a")), &classes(), &nodes, None));
    assert_eq!(plan_cleanup(&local, &alone), Cleanup::Nothing, "not being deleted");
    local.metadata.deletion_timestamp = serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap();
    assert_eq!(plan_cleanup(&local, &alone), Cleanup::Release);
    assert_eq!(plan_cleanup(&local, &nodes), Cleanup::Nothing, "its node removes the files");
}

#[test]
fn a_local_claim_bigger_than_its_node_can_hold_is_refused_with_the_sizes() {
    let mut n = node("a", false, true);
    n.status.as_mut().unwrap().allocatable = Some(
        [(
            prov::LOCAL_VOLUME_RESOURCE.to_string(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("2147483648".into()),
        )]
        .into(),
    );
    assert!(matches!(plan(&claim("local", prov::LOCAL, Some("a")), &classes(), &[n.clone()], None), Plan::Create(_)));
    let mut big = claim("local", prov::LOCAL, Some("a"));
    big.spec
        .as_mut()
        .unwrap()
        .resources
        .as_mut()
        .unwrap()
        .requests
        .as_mut()
        .unwrap()
        .insert("storage".into(), k8s_openapi::apimachinery::pkg::api::resource::Quantity("3Gi".into()));
    assert!(matches!(plan(&big, &classes(), &[n], None), Plan::Fail(m) if m.contains("holds 2147483648 bytes")));
}
