//! Hot-plugged volumes of a running guest: the VMI's spec says which claims are plugged in (`hotpluggable`
//! volumes, added by the `addvolume` subresource); the guest's QEMU is brought to match — a claim's image
//! opened here and passed to QEMU as a file descriptor (QEMU runs unprivileged and could not open it
//! itself), a block node on it, a SCSI disk on the guest's controller — and `status.volumeStatus` says how
//! it went. What QEMU has attached is read back from QEMU, so this holds across agent restarts.

use super::{Agent, LocalVm};
use crate::qemu::QmpClient;
use crate::volumes::attach::claim_disk;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use kumo_api::kubevirt::{VirtualMachineInstance, VolumeStatus};
use serde_json::{json, Value};
use sha2::Digest;
use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::time::Duration;

/// QEMU's node name for a hot-plugged volume (node names are at most 31 characters; volume names up to 63).
fn node_name(volume: &str) -> String {
    let digest = hex::encode(sha2::Sha256::digest(volume.as_bytes()));
    format!("hp{}", &digest[..16])
}

/// The hot-plugged format nodes QEMU has.
async fn attached(qmp: &QmpClient) -> Result<Vec<String>, String> {
    let nodes = qmp.execute("query-named-block-nodes", None).await.map_err(|e| e.to_string())?;
    Ok(nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.get("node-name")?.as_str())
        .filter(|n| n.starts_with("hp") && !n.ends_with("-file"))
        .map(str::to_string)
        .collect())
}

/// Brings the guest's hot-plugged disks in line with the VMI's spec and reports them. False while some volume
/// could not be attached yet (its claim not bound, its image not made): look again soon.
pub(super) async fn sync(agent: &Agent, vmi: &VirtualMachineInstance, local: &LocalVm) -> Result<bool, kube::Error> {
    let Ok(qmp) = local.qmp() else { return Ok(true) };
    let wanted: BTreeMap<String, (&str, Option<String>)> = vmi
        .spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.is_hotplugged())
        .filter_map(|v| {
            let serial = vmi.spec.domain.devices.disks.iter().flatten().find(|d| d.name == v.name)?.serial.clone();
            Some((node_name(&v.name), (v.claim_name()?, serial)))
        })
        .collect();
    let names: BTreeMap<String, &str> =
        vmi.spec.volumes.iter().flatten().map(|v| (node_name(&v.name), v.name.as_str())).collect();
    let Ok(have) = attached(qmp).await else { return Ok(false) };
    let mut statuses = Vec::new();
    for (node, (claim, serial)) in &wanted {
        let volume = names.get(node).copied().unwrap_or_default();
        let result =
            if have.contains(node) { Ok(()) } else { attach(agent, vmi, qmp, node, claim, serial.as_deref()).await };
        let (phase, reason, message) = match &result {
            Ok(()) => ("Ready", "VolumeReady", format!("Successfully attach hotplugged volume {volume} to VM")),
            Err(e) => ("Pending", "FailedAttachVolume", e.clone()),
        };
        if let Err(e) = &result {
            tracing::warn!(vmi = %vmi.name_any(), volume, "hotplug: {e}");
        }
        statuses.push(VolumeStatus {
            name: volume.to_string(),
            target: None,
            phase: Some(phase.into()),
            reason: Some(reason.into()),
            message: Some(message),
            hotplug_volume: Some(json!({})),
        });
    }
    for node in have.iter().filter(|n| !wanted.contains_key(*n)) {
        if let Err(e) = detach(qmp, node).await {
            tracing::warn!(vmi = %vmi.name_any(), node, "unplugging: {e}");
        }
    }
    let old = vmi.status.as_ref().and_then(|s| s.volume_status.clone()).unwrap_or_default();
    if old != statuses {
        let api: Api<VirtualMachineInstance> =
            Api::namespaced(agent.client.clone(), &vmi.namespace().unwrap_or_default());
        let patch =
            json!({"status": {"volumeStatus": if statuses.is_empty() { Value::Null } else { json!(statuses) }}});
        api.patch_status(&vmi.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
    }
    Ok(statuses.iter().all(|s| s.phase.as_deref() == Some("Ready")))
}

async fn attach(
    agent: &Agent,
    vmi: &VirtualMachineInstance,
    qmp: &QmpClient,
    node: &str,
    claim: &str,
    serial: Option<&str>,
) -> Result<(), String> {
    let ns = vmi.namespace().unwrap_or_default();
    let disk = claim_disk(&agent.client, &agent.volume_dirs, &ns, claim).await.map_err(|e| e.message)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk.path)
        .map_err(|e| format!("opening {}: {e}", disk.path.display()))?;
    let q = |e: crate::qemu::QmpError| e.to_string();
    let set = qmp.execute_with_fd("add-fd", None, file.as_fd()).await.map_err(q)?;
    let fdset = set.get("fdset-id").cloned().unwrap_or(Value::Null);
    let file_node = format!("{node}-file");
    let added = async {
        let path = format!("/dev/fdset/{fdset}");
        qmp.execute("blockdev-add", Some(json!({"driver": "file", "filename": path, "node-name": file_node})))
            .await
            .map_err(q)?;
        let format = disk.format.as_str();
        qmp.execute("blockdev-add", Some(json!({"driver": format, "file": file_node, "node-name": node})))
            .await
            .map_err(q)?;
        let mut dev = json!({"driver": "scsi-hd", "bus": "scsi0.0", "drive": node, "id": format!("{node}-dev")});
        if let Some(s) = serial {
            dev["serial"] = json!(s);
        }
        qmp.execute("device_add", Some(dev)).await.map_err(q)
    }
    .await;
    // QEMU holds its own copies of the descriptor now; the set goes once they are closed.
    let _ = qmp.execute("remove-fd", Some(json!({"fdset-id": fdset}))).await;
    if let Err(e) = added {
        let _ = detach(qmp, node).await;
        return Err(format!("attaching claim {claim}: {e}"));
    }
    tracing::info!(vmi = %vmi.name_any(), claim, "volume hot-plugged");
    Ok(())
}

/// Unplugs the disk and removes its block nodes (each step is skipped when already done).
async fn detach(qmp: &QmpClient, node: &str) -> Result<(), String> {
    let _ = qmp.execute("device_del", Some(json!({"id": format!("{node}-dev")}))).await;
    // The node is in use until the guest has let go of the device.
    let mut last = String::new();
    for _ in 0..50 {
        match qmp.execute("blockdev-del", Some(json!({"node-name": node}))).await {
            Ok(_) => {
                let _ = qmp.execute("blockdev-del", Some(json!({"node-name": format!("{node}-file")}))).await;
                return Ok(());
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("removing block node {node}: {last}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn node_names_fit_qemus_limit_and_differ() {
        let long = "v".repeat(63);
        assert!(super::node_name(&long).len() + "-file".len() <= 31);
        assert_ne!(super::node_name("a"), super::node_name("b"));
    }
}
