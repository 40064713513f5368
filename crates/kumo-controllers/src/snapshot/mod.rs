//! KubeVirt's VM snapshots and restores, the kumo way. A VirtualMachineSnapshot of a VM (stopped or running)
//! snapshots each of its volumes that kumo made as a qcow2 image (an internal snapshot, asked for on the
//! volume and made by the node that keeps it — through the running guest's QEMU when there is one); a
//! VirtualMachineSnapshotContent records the VM's spec and the claims. A VirtualMachineRestore puts the
//! snapshots back into the stopped VM (each image reverted), or makes a new VM on new claims filled from them.
//!
//! The decisions are pure functions here; [`run`] applies them.

use crate::binder::volume_name;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::ResourceExt;
use kumo_api::kubevirt::VirtualMachine;
use kumo_api::provisioning as prov;
use kumo_api::snapshot::VirtualMachineSnapshot;
use serde_json::{json, Value};

mod restore;
mod runtime;
pub use runtime::run;

/// The name of a snapshot in each volume's image.
pub fn image_snapshot_name(snap: &VirtualMachineSnapshot) -> String {
    format!("vmsnapshot-{}", snap.uid().unwrap_or_default())
}

pub fn content_name(snap: &VirtualMachineSnapshot) -> String {
    format!("vmsnapshot-content-{}", snap.uid().unwrap_or_default())
}

/// A volume of the VM that is snapshotted: the VM's volume name, its claim and the claim's volume.
#[derive(Clone, Debug)]
pub struct Included<'a> {
    pub volume: String,
    pub claim: &'a PersistentVolumeClaim,
    pub pv: &'a PersistentVolume,
}

/// The VM's volumes that can be snapshotted (claims bound to qcow2 volumes kumo made and filled), and the
/// names of those that cannot (container disks, cloud-init, block volumes, volumes kumo did not make).
pub fn volumes<'a>(
    vm: &VirtualMachine,
    claims: &'a [PersistentVolumeClaim],
    pvs: &'a [PersistentVolume],
) -> (Vec<Included<'a>>, Vec<String>) {
    let (mut included, mut excluded) = (vec![], vec![]);
    for v in vm.spec.template.spec.volumes.iter().flatten() {
        let found = v.direct_claim().and_then(|c| {
            let claim = claims.iter().find(|x| x.name_any() == c)?;
            let pv = pvs.iter().find(|p| p.name_any() == volume_name(claim))?;
            let usable = prov::csi_of(pv).is_some() && !prov::is_block(pv) && prov::state(pv) == Some(prov::READY);
            usable.then_some((claim, pv))
        });
        match found {
            Some((claim, pv)) => included.push(Included { volume: v.name.clone(), claim, pv }),
            None => excluded.push(v.name.clone()),
        }
    }
    (included, excluded)
}

/// The VirtualMachineSnapshotContent for `snap` of `vm`: the VM as it is, and each claim with its spec.
pub fn content(snap: &VirtualMachineSnapshot, vm: &VirtualMachine, included: &[Included]) -> Value {
    let backups: Vec<Value> = included
        .iter()
        .map(|i| {
            json!({"volumeName": i.volume, "volumeSnapshotName": format!("{}-{}", image_snapshot_name(snap), i.volume),
                "persistentVolumeClaim": {"metadata": {"name": i.claim.name_any(), "labels": i.claim.metadata.labels,
                    "annotations": {"kumo.dev/snapshot-of": i.pv.name_any()}},
                    "spec": i.claim.spec}})
        })
        .collect();
    let vm_spec = serde_json::to_value(&vm.spec).unwrap_or_default();
    json!({
        "apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineSnapshotContent",
        "metadata": {"name": content_name(snap), "namespace": snap.namespace(),
            "ownerReferences": [{"apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineSnapshot",
                "name": snap.name_any(), "uid": snap.uid(), "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"virtualMachineSnapshotName": snap.name_any(),
            "source": {"virtualMachine": {"metadata": {"name": vm.name_any(), "namespace": vm.namespace(),
                "labels": vm.metadata.labels, "annotations": vm.metadata.annotations}, "spec": vm_spec}},
            "volumeBackups": backups},
    })
}

/// How far the volumes' snapshots got: all made, or the first error.
pub fn progress(name: &str, included: &[Included]) -> (bool, Option<String>) {
    let made = included.iter().all(|i| prov::names(i.pv, prov::SNAPSHOTS_MADE).iter().any(|m| m == name));
    let error = included.iter().find_map(|i| prov::annotation(i.pv, prov::SNAPSHOT_ERROR)).map(str::to_string);
    (made, error)
}

/// What a snapshot's status is made of.
pub struct Observed {
    pub ready: bool,
    /// The VM was running when the snapshot was taken.
    pub online: bool,
    /// The guest's agent was connected, so its filesystems were frozen for the snapshot.
    pub guest_agent: bool,
    pub included: Vec<String>,
    pub excluded: Vec<String>,
    pub error: Option<String>,
}

/// The snapshot's status: KubeVirt's phases (InProgress, Succeeded), readyToUse, indications and conditions.
pub fn status(snap: &VirtualMachineSnapshot, vm: &VirtualMachine, seen: &Observed, now: &str) -> Value {
    let Observed { ready, online, guest_agent, included, excluded, error } = seen;
    let (ready, online) = (*ready, *online);
    let old = snap.status.clone().unwrap_or(json!({}));
    let created = old.get("creationTime").cloned().filter(|t| !t.is_null()).or_else(|| ready.then(|| json!(now)));
    let mut indications = vec![];
    if online {
        // Without a guest agent an online snapshot is only crash-consistent; with one, the node agent froze the
        // guest's filesystems around it.
        indications.extend(["Online", if *guest_agent { "GuestAgent" } else { "NoGuestAgent" }]);
    }
    let cond = |t: &str, on: bool, reason: &str| json!({"type": t, "status": if on {"True"} else {"False"}, "reason": reason, "lastTransitionTime": now});
    json!({
        "phase": if ready { "Succeeded" } else { "InProgress" },
        "readyToUse": ready,
        "creationTime": created,
        "sourceUID": vm.uid(),
        "virtualMachineSnapshotContentName": content_name(snap),
        "indications": indications,
        "snapshotVolumes": {"includedVolumes": included, "excludedVolumes": excluded},
        "error": error.as_ref().map(|m| json!({"message": m, "time": now})),
        "conditions": [cond("Progressing", !ready, if ready { "Operation complete" } else { "Source being snapshotted" }),
            cond("Ready", ready, if ready { "Operation complete" } else { "Not ready" })],
    })
}

#[cfg(test)]
mod tests;
