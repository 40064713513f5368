use super::*;

fn pool(extra: Value) -> Value {
    let p = json!({"apiVersion": "pool.kubevirt.io/v1beta1", "kind": "VirtualMachinePool",
        "metadata": {"name": "web"},
        "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "web"}},
            "virtualMachineTemplate": {"metadata": {"labels": {"app": "web"}}, "spec": {"runStrategy": "Always",
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"domain": {"devices": {}}}}}}}});
    crate::patch::merge_patch(&p, &extra)
}

#[test]
fn percentages_round_as_deployments_do() {
    assert_eq!(scaled(&json!("25%"), 5, true), Some(2));
    assert_eq!(scaled(&json!("25%"), 5, false), Some(1));
    assert_eq!(scaled(&json!(3), 5, false), Some(3));
    assert_eq!(scaled(&json!("x"), 5, false), None);
    let p: VirtualMachinePool = serde_json::from_value(pool(json!({}))).unwrap();
    assert_eq!((p.max_unavailable(), p.max_surge()), (4, 0), "KubeVirt's 100% and no surge by default");
}

#[test]
fn go_durations_parse() {
    assert_eq!(go_duration("5m"), Some(std::time::Duration::from_secs(300)));
    assert_eq!(go_duration("1h30m"), Some(std::time::Duration::from_secs(5400)));
    assert_eq!(go_duration("1.5s"), Some(std::time::Duration::from_millis(1500)));
    assert_eq!(go_duration("5"), None);
    assert_eq!(go_duration("5d"), None);
}

#[test]
fn a_selector_the_vm_template_does_not_match_is_refused_by_name() {
    let p = pool(json!({"spec": {"selector": {"matchLabels": {"app": "other"}}}}));
    let c = validate(KIND, &p);
    assert!(c.iter().any(|c| c.field == "spec.selector" && c.message.contains("does not match")), "{c:?}");
    assert!(validate(KIND, &pool(json!({}))).is_empty());
}

#[test]
fn template_checks_and_rollout_fields_are_named() {
    let p = pool(json!({"spec": {"maxUnavailable": 0, "kumo": {"maxSurge": "0%"},
        "virtualMachineTemplate": {"spec": {"running": true}}}}));
    let c = validate(KIND, &p);
    assert!(c.iter().any(|c| c.field == "spec.maxUnavailable"), "{c:?}");
    assert!(c.iter().any(|c| c.field == "spec.virtualMachineTemplate.spec.running"), "{c:?}");
    let online = pool(json!({"spec": {"scaleInStrategy": {"proactive": {"statePreservation": "Online"}}}}));
    assert!(validate(KIND, &online).iter().any(|c| c.field.ends_with("statePreservation")));
}

#[test]
fn both_versions_are_served_and_v1beta1_is_stored() {
    let defs = crate::crd::resource_defs(&crd());
    let versions: Vec<_> = defs.iter().map(|d| (d.version.as_str(), d.storage_version.as_str())).collect();
    assert_eq!(versions, [("v1beta1", "v1beta1"), ("v1alpha1", "v1beta1")]);
    assert!(defs.iter().all(|d| d.scale.is_some() && d.short_names.contains(&"vmpool".to_string())));
}
