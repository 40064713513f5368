use super::restore::{backups, plan, Plan};
use super::*;
use kumo_api::kubevirt::VirtualMachineInstance;
use kumo_api::snapshot::VirtualMachineRestore;

fn vm() -> VirtualMachine {
    serde_json::from_value(json!({"metadata": {"name": "vm", "namespace": "ns", "uid": "vm-1"},
        "spec": {"runStrategy": "Halted", "template": {"spec": {"volumes": [
            {"name": "root", "containerDisk": {"image": "x"}},
            {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
            {"name": "raw", "persistentVolumeClaim": {"claimName": "raw"}}]}}}}))
    .unwrap()
}

fn claim(name: &str) -> PersistentVolumeClaim {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "ns"},
        "spec": {"volumeName": format!("pvc-{name}"), "resources": {"requests": {"storage": "64Mi"}}}}))
    .unwrap()
}

fn pv(name: &str, mode: &str, made: &[&str]) -> PersistentVolume {
    serde_json::from_value(json!({"metadata": {"name": format!("pvc-{name}"),
            "labels": {prov::VOLUME_NODE_LABEL: "n1"},
            "annotations": {prov::VOLUME_STATE: prov::READY, prov::SNAPSHOTS_MADE: serde_json::to_string(made).unwrap()}},
        "spec": {"volumeMode": mode, "csi": {"driver": prov::LOCAL, "volumeHandle": format!("pvc-{name}")}}}))
    .unwrap()
}

fn snap() -> VirtualMachineSnapshot {
    serde_json::from_value(json!({"metadata": {"name": "s1", "namespace": "ns", "uid": "u1"},
        "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "vm"}}}))
    .unwrap()
}

#[test]
fn qcow2_claims_are_snapshotted_and_the_rest_listed_as_excluded() {
    let claims = [claim("data"), claim("raw")];
    let pvs = [pv("data", "Filesystem", &[]), pv("raw", "Block", &[])];
    let (inc, exc) = volumes(&vm(), &claims, &pvs);
    assert_eq!(inc.iter().map(|i| i.volume.as_str()).collect::<Vec<_>>(), ["data"]);
    assert_eq!(exc, ["root", "raw"]);
    assert_eq!(progress("vmsnapshot-u1", &inc), (false, None));
    let made = [pv("data", "Filesystem", &["vmsnapshot-u1"])];
    let (inc, _) = volumes(&vm(), &claims, &made);
    assert!(progress("vmsnapshot-u1", &inc).0);
    let c = content(&snap(), &vm(), &inc);
    assert_eq!(c["spec"]["volumeBackups"][0]["volumeSnapshotName"], "vmsnapshot-u1-data");
    assert_eq!(backups(&c), [("data".into(), "data".into(), "pvc-data".into(), "vmsnapshot-u1".into())]);
    let seen = Observed {
        ready: true,
        online: true,
        guest_agent: false,
        included: vec!["data".into()],
        excluded: vec![],
        error: None,
    };
    let st = status(&snap(), &vm(), &seen, "t");
    assert_eq!((st["phase"].as_str(), st["readyToUse"].as_bool()), (Some("Succeeded"), Some(true)));
    assert_eq!(st["indications"], json!(["Online", "NoGuestAgent"]));
    let frozen = Observed { guest_agent: true, ..seen };
    assert_eq!(status(&snap(), &vm(), &frozen, "t")["indications"], json!(["Online", "GuestAgent"]));
    let offline = Observed { online: false, guest_agent: false, ..frozen };
    assert_eq!(status(&snap(), &vm(), &offline, "t")["indications"], json!([]));
}

#[test]
fn restores_revert_a_stopped_vm_make_a_new_one_and_refuse_a_running_one() {
    let claims = [claim("data")];
    let pvs = [pv("data", "Filesystem", &["vmsnapshot-u1"])];
    let (inc, _) = volumes(&vm(), &claims, &pvs);
    let c = content(&snap(), &vm(), &inc);
    let restore = |target: &str| -> VirtualMachineRestore {
        serde_json::from_value(json!({"metadata": {"name": "r", "namespace": "ns", "uid": "r1234567-x"},
            "spec": {"target": {"kind": "VirtualMachine", "name": target}, "virtualMachineSnapshotName": "s1"}}))
        .unwrap()
    };
    assert_eq!(
        plan(&restore("vm"), &c, Some(&vm()), None, &pvs),
        Plan::Revert(vec![("pvc-data".into(), "vmsnapshot-u1".into())])
    );
    let running: VirtualMachineInstance =
        serde_json::from_value(json!({"metadata": {"name": "vm"}, "status": {"phase": "Running"}})).unwrap();
    assert!(
        matches!(plan(&restore("vm"), &c, Some(&vm()), Some(&running), &pvs), Plan::Refuse(m) if m.contains("running"))
    );
    let mut other = vm();
    other.metadata.name = Some("other".into());
    assert!(matches!(plan(&restore("other"), &c, Some(&other), None, &pvs), Plan::Refuse(_)));
    let Plan::NewVm { claims, vm } = plan(&restore("copy"), &c, None, None, &pvs) else { panic!("a new VM") };
    assert_eq!(claims[0]["metadata"]["name"], "restore-r1234567-data");
    assert_eq!(claims[0]["metadata"]["annotations"][crate::binder::SELECTED_NODE], "n1");
    assert!(claims[0]["spec"].get("volumeName").is_none());
    assert_eq!(vm["metadata"]["name"], "copy");
    assert_eq!(
        vm["spec"]["template"]["spec"]["volumes"][1]["persistentVolumeClaim"]["claimName"],
        "restore-r1234567-data"
    );
}
