//! What a VirtualMachineRestore does: into the snapshot's own VM (stopped), each volume's image is reverted to
//! its snapshot; into a VM that does not exist yet, new claims are filled from the snapshots and a VM like the
//! snapshotted one is made on them. A running target is refused, as KubeVirt refuses it.

use crate::binder::SELECTED_NODE;
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::ResourceExt;
use kumo_api::kubevirt::{VirtualMachine, VirtualMachineInstance};
use kumo_api::provisioning as prov;
use kumo_api::snapshot::VirtualMachineRestore;
use serde_json::{json, Value};

#[derive(Debug, PartialEq)]
pub enum Plan {
    /// Cannot restore: why.
    Refuse(String),
    /// Revert these volumes (volume name, image snapshot name) of the stopped VM.
    Revert(Vec<(String, String)>),
    /// Make these claims and this VM.
    NewVm { claims: Vec<Value>, vm: Value },
}

/// Each backup in the content: (VM volume name, claim name, its volume, the image snapshot name).
pub fn backups(content: &Value) -> Vec<(String, String, String, String)> {
    let list = content.pointer("/spec/volumeBackups").and_then(Value::as_array).cloned().unwrap_or_default();
    list.iter()
        .filter_map(|b| {
            let s = |p: &str| b.pointer(p).and_then(Value::as_str).map(str::to_string);
            let snapshot = s("/volumeSnapshotName")?;
            let volume = s("/volumeName")?;
            // The image's snapshot is named for the VM snapshot; the per-volume name adds the volume.
            let image_snapshot = snapshot.strip_suffix(&format!("-{volume}"))?.to_string();
            Some((
                volume,
                s("/persistentVolumeClaim/metadata/name")?,
                s("/persistentVolumeClaim/spec/volumeName")?,
                image_snapshot,
            ))
        })
        .collect()
}

pub fn plan(
    restore: &VirtualMachineRestore,
    content: &Value,
    target: Option<&VirtualMachine>,
    running: Option<&VirtualMachineInstance>,
    volumes: &[PersistentVolume],
) -> Plan {
    let source = content.pointer("/spec/source/virtualMachine").cloned().unwrap_or_default();
    let source_name = source.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    let target_name = restore.spec.target.name.as_str();
    match target {
        Some(_) if target_name != source_name => Plan::Refuse(format!(
            "VirtualMachine {target_name} exists and is not the snapshot's source ({source_name}): restore into it or \
             into a new name"
        )),
        Some(_) if running.is_some_and(|i| !i.is_final()) => {
            Plan::Refuse(format!("VirtualMachine {target_name} is running: stop it before restoring"))
        }
        Some(_) => Plan::Revert(backups(content).into_iter().map(|(_, _, pv, snap)| (pv, snap)).collect()),
        None => new_vm(restore, content, &source, volumes),
    }
}

fn new_vm(restore: &VirtualMachineRestore, content: &Value, source: &Value, volumes: &[PersistentVolume]) -> Plan {
    let uid = restore.uid().unwrap_or_default();
    let short = &uid[..uid.len().min(8)];
    let ns = restore.namespace();
    let mut spec = source.get("spec").cloned().unwrap_or_default();
    if let Some(o) = spec.as_object_mut() {
        o.remove("dataVolumeTemplates");
    }
    let mut claims = vec![];
    for b in content.pointer("/spec/volumeBackups").and_then(Value::as_array).into_iter().flatten() {
        let Some((volume, _, pv_name, snap)) = backups(&json!({"spec": {"volumeBackups": [b]}})).pop() else {
            continue;
        };
        let Some(pv) = volumes.iter().find(|p| p.name_any() == pv_name) else {
            return Plan::Refuse(format!("the volume {pv_name} of the snapshot is gone"));
        };
        let Some((driver, handle)) = prov::csi_of(pv) else { continue };
        let name = format!("restore-{short}-{volume}");
        let mut claim_spec = b.pointer("/persistentVolumeClaim/spec").cloned().unwrap_or_default();
        if let Some(o) = claim_spec.as_object_mut() {
            o.remove("volumeName");
        }
        let populate = json!({"volume": {"driver": driver, "volumeHandle": handle,
            "volumeMode": pv.spec.as_ref().and_then(|s| s.volume_mode.clone())}, "snapshot": snap});
        let mut annotations = json!({kumo_api::cdi::POPULATE_SOURCE: populate.to_string(),
            "restore.kubevirt.io/name": restore.name_any()});
        if driver == prov::LOCAL {
            annotations[SELECTED_NODE] = json!(pv.labels().get(prov::VOLUME_NODE_LABEL));
        }
        claims.push(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": ns, "annotations": annotations}, "spec": claim_spec}));
        for v in spec.pointer_mut("/template/spec/volumes").and_then(Value::as_array_mut).into_iter().flatten() {
            if v["name"] == json!(volume) {
                *v = json!({"name": volume, "persistentVolumeClaim": {"claimName": name}});
            }
        }
    }
    let vm = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": restore.spec.target.name, "namespace": ns,
            "annotations": {"restore.kubevirt.io/lastRestoreUID": format!("{}-{uid}", restore.name_any())}},
        "spec": spec});
    Plan::NewVm { claims, vm }
}
