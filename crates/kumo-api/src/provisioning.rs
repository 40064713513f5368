//! kumo's own volume provisioners, as a contract between the parts that play a role in them: the control
//! plane creates a PersistentVolume for a claim (a CSI volume of driver [`LOCAL`] or [`SHARED`], labelled with
//! the node that keeps its files), the node agent named by [`VOLUME_NODE_LABEL`] makes the disk image and says
//! so in [`VOLUME_STATE`], and removes the files before the volume object goes ([`CLEANUP_FINALIZER`]).

use k8s_openapi::api::core::v1::PersistentVolume;
use serde_json::{json, Value};

/// Disk images on the node a volume's first consumer was scheduled to; the volume is pinned there.
pub const LOCAL: &str = "kumo.dev/local";
/// Disk images in a directory every node mounts from the same place (NFS, CephFS; one directory in tests).
pub const SHARED: &str = "kumo.dev/shared";
/// On a volume: the node whose agent makes, fills and removes its files. Nodes may watch only theirs.
pub const VOLUME_NODE_LABEL: &str = "kumo.dev/volume-node";
/// On a Node (capacity and allocatable): the size of the filesystem holding its `local` volumes, in bytes.
pub const LOCAL_VOLUME_RESOURCE: &str = "kumo.dev/local-volumes";
/// On a Node: its agent mounts the shared volume directory.
pub const SHARED_VOLUMES_LABEL: &str = "kumo.dev/shared-volumes";
/// On a volume kumo provisioned: `Pending` until its agent made the image, then `Ready` (or `Failed`).
pub const VOLUME_STATE: &str = "kumo.dev/volume-state";
/// On a volume whose state is `Failed`: why.
pub const VOLUME_MESSAGE: &str = "kumo.dev/volume-message";
/// Held by a volume kumo provisioned until its agent removed the files.
pub const CLEANUP_FINALIZER: &str = "kumo.dev/volume-cleanup";

/// On a volume being filled from a source: how far (CDI's format, "47.30%"), how many tries failed, and when
/// the next try may start (RFC 3339).
pub const PROGRESS: &str = "kumo.dev/populate-progress";
pub const RESTARTS: &str = "kumo.dev/populate-restarts";
pub const RETRY_AFTER: &str = "kumo.dev/populate-retry-after";

/// On a volume kumo provisioned: the size its image was made or grown to (bytes); less than the capacity
/// when the claim was expanded and the image not yet grown.
pub const IMAGE_BYTES: &str = "kumo.dev/image-bytes";

/// On a volume kumo provisioned: the snapshots of its image wanted (by VirtualMachineSnapshots) and made (by
/// its node), as JSON lists of names; the last snapshot error; and a revert asked for
/// (`RESTORE-UID/SNAPSHOT`) and done (`RESTORE-UID`).
pub const SNAPSHOTS_WANTED: &str = "kumo.dev/snapshots";
pub const SNAPSHOTS_MADE: &str = "kumo.dev/snapshots-made";
pub const SNAPSHOT_ERROR: &str = "kumo.dev/snapshot-error";
pub const REVERT: &str = "kumo.dev/revert";
pub const REVERTED: &str = "kumo.dev/reverted";

pub const PENDING: &str = "Pending";
/// Being filled from its source (a DataVolume's).
pub const POPULATING: &str = "Populating";
pub const READY: &str = "Ready";
pub const FAILED: &str = "Failed";

/// How many bytes of `local` volumes a Node can hold, when its agent says.
pub fn node_volume_bytes(node: &k8s_openapi::api::core::v1::Node) -> Option<u64> {
    let q = node.status.as_ref()?.allocatable.as_ref()?.get(LOCAL_VOLUME_RESOURCE)?;
    crate::quantity::parse(&q.0).ok()
}

/// Whether a provisioner name is one of kumo's.
pub fn is_ours(provisioner: &str) -> bool {
    provisioner == LOCAL || provisioner == SHARED
}

/// The CSI driver and handle of a volume kumo provisioned.
pub fn csi_of(pv: &PersistentVolume) -> Option<(&str, &str)> {
    let csi = pv.spec.as_ref()?.csi.as_ref()?;
    is_ours(&csi.driver).then_some((csi.driver.as_str(), csi.volume_handle.as_str()))
}

/// The state annotation of a volume kumo provisioned (None for any other volume, which is ready as it is).
pub fn state(pv: &PersistentVolume) -> Option<&str> {
    csi_of(pv)?;
    Some(annotation(pv, VOLUME_STATE).unwrap_or(PENDING))
}

/// One of a volume's annotations.
pub fn annotation<'a>(pv: &'a PersistentVolume, key: &str) -> Option<&'a str> {
    pv.metadata.annotations.as_ref()?.get(key).map(String::as_str)
}

/// A JSON list of names in one of a volume's annotations (empty when absent or unreadable).
pub fn names(pv: &PersistentVolume, key: &str) -> Vec<String> {
    annotation(pv, key).and_then(|v| serde_json::from_str(v).ok()).unwrap_or_default()
}

/// The image file inside a volume's directory: qcow2 for a filesystem volume, raw for a block volume.
pub fn image_file(pv: &PersistentVolume) -> &'static str {
    if is_block(pv) {
        "disk.raw"
    } else {
        "disk.qcow2"
    }
}

pub fn is_block(pv: &PersistentVolume) -> bool {
    pv.spec.as_ref().and_then(|s| s.volume_mode.as_deref()) == Some("Block")
}

/// The classes a server offers from its first start: `local` (the default) and `shared`.
pub fn seed_classes() -> Vec<Value> {
    let class = |name: &str, provisioner: &str, mode: &str| {
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name},
               "provisioner": provisioner, "reclaimPolicy": "Delete", "volumeBindingMode": mode,
               "allowVolumeExpansion": true})
    };
    let mut local = class("local", LOCAL, "WaitForFirstConsumer");
    local["metadata"]["annotations"] = json!({crate::storage::DEFAULT_CLASS_ANNOTATION: "true"});
    vec![local, class("shared", SHARED, "Immediate")]
}
