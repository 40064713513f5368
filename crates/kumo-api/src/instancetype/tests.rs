use super::*;

fn vmi_spec(v: Value) -> VirtualMachineInstanceSpec {
    serde_json::from_value(v).unwrap()
}

#[test]
fn an_instancetype_and_preference_expand_into_the_vmi() {
    let mut spec = vmi_spec(json!({"domain": {"devices": {"disks": [{"name": "root"}, {"name": "cd", "cdrom": {}}],
        "interfaces": [{"name": "default", "masquerade": {}}]}}}));
    let it: InstancetypeSpec =
        serde_json::from_value(json!({"cpu": {"guest": 2}, "memory": {"guest": "300Mi"}})).unwrap();
    let pref: PreferenceSpec = serde_json::from_value(json!({"cpu": {"preferredCPUTopology": "preferCores"},
        "devices": {"preferredDiskBus": "sata", "preferredInterfaceModel": "e1000", "preferredRng": {}}}))
    .unwrap();
    expand(&mut spec, Some(&it), Some(&pref));
    let v = serde_json::to_value(&spec).unwrap();
    assert_eq!(v["domain"]["cpu"], json!({"sockets": 1, "cores": 2, "threads": 1}));
    assert_eq!(v["domain"]["memory"]["guest"], "300Mi");
    assert_eq!(v["domain"]["devices"]["disks"][0]["disk"]["bus"], "sata");
    assert!(v["domain"]["devices"]["disks"][1]["disk"].is_null(), "a cdrom stays a cdrom");
    assert_eq!(v["domain"]["devices"]["interfaces"][0]["model"], "e1000");
    assert_eq!(v["domain"]["devices"]["rng"], json!({}));
    // No preference: vCPUs are sockets.
    let mut plain = vmi_spec(json!({"domain": {"devices": {}}}));
    expand(&mut plain, Some(&it), None);
    assert_eq!(serde_json::to_value(&plain).unwrap()["domain"]["cpu"], json!({"sockets": 2, "cores": 1, "threads": 1}));
}

#[test]
fn a_template_setting_what_the_instancetype_gives_conflicts_by_field() {
    let t = vmi_spec(json!({"domain": {"cpu": {"cores": 2}, "memory": {"guest": "1Gi"}, "devices": {}}}));
    let fields: Vec<String> = conflicts(&t, "spec.template.spec").into_iter().map(|c| c.field).collect();
    assert_eq!(fields, ["spec.template.spec.domain.cpu", "spec.template.spec.domain.memory.guest"]);
    assert!(conflicts(&vmi_spec(json!({"domain": {"devices": {}}})), "p").is_empty());
}

#[test]
fn the_seeded_flavors_pass_their_own_checks_and_schemas() {
    for it in seed_instancetypes() {
        assert!(validate(CLUSTER_INSTANCETYPE, &it).is_empty(), "{it}");
        let _: Flavor<InstancetypeSpec> = serde_json::from_value(it).unwrap();
    }
    assert!(seed_preferences().iter().any(|p| p["metadata"]["name"] == "linux"));
    let crds = crds();
    assert_eq!(crds.iter().filter(|c| c["spec"]["scope"] == "Cluster").count(), 2);
    assert!(validate(INSTANCETYPE, &json!({"spec": {"cpu": {"guest": 0}}})).len() == 2);
    assert!(FlavorRef { name: "x".into(), kind: None, revision_name: None }.cluster_wide(false));
    let ns = FlavorRef { name: "x".into(), kind: Some(INSTANCETYPE.into()), revision_name: None };
    assert!(!ns.cluster_wide(false));
}
