//! kumo's volume provisioners (`kumo.dev/local`, `kumo.dev/shared`), the control-plane half, as an external
//! provisioner does it in Kubernetes: for a claim the binder handed to one of them, a PersistentVolume named
//! `pvc-<claim uid>` that is pre-bound to the claim. The node agent named on the volume
//! ([`provisioning::VOLUME_NODE_LABEL`]) makes the image and removes it when the volume goes.
//!
//! A local volume lives on the node the claim's first consumer was scheduled to (its class must wait for the
//! first consumer) and is pinned there by node affinity. A shared volume can be used from any node; one node
//! that mounts the shared directory looks after its files.
//!
//! [`plan`] and [`plan_cleanup`] decide; [`run`] applies.

use crate::binder::{class_name, volume_name, SELECTED_NODE, STORAGE_PROVISIONER};
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;
use kumo_api::provisioning::{self as prov, CLEANUP_FINALIZER, VOLUME_NODE_LABEL};
use serde_json::json;

mod runtime;
pub use runtime::run;

/// What to do about a claim.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// Not ours, or already done.
    Nothing,
    /// Cannot provision now: a `ProvisioningFailed` event with this message, and a retry later.
    Fail(String),
    Create(Box<PersistentVolume>),
}

/// The volume name Kubernetes' provisioners give a claim's volume.
pub fn volume_for(claim: &PersistentVolumeClaim) -> String {
    format!("pvc-{}", claim.uid().unwrap_or_default())
}

/// The plan for `claim`: `existing` is the volume named for it, if there is one.
pub fn plan(
    claim: &PersistentVolumeClaim,
    classes: &[StorageClass],
    nodes: &[Node],
    existing: Option<&PersistentVolume>,
) -> Plan {
    let asked = claim.annotations().get(STORAGE_PROVISIONER).map(String::as_str).unwrap_or_default();
    if !prov::is_ours(asked)
        || claim.metadata.deletion_timestamp.is_some()
        || !volume_name(claim).is_empty()
        || existing.is_some()
    {
        return Plan::Nothing;
    }
    let Some(class) = classes.iter().find(|c| c.name_any() == class_name(claim) && c.provisioner == asked) else {
        return Plan::Fail(format!("storageclass.storage.k8s.io \"{}\" not found", class_name(claim)));
    };
    if let Some(key) = class.parameters.iter().flatten().map(|(k, _)| k).next() {
        return Plan::Fail(format!("invalid parameter \"{key}\" for provisioner {asked}: it takes no parameters"));
    }
    let spec = claim.spec.clone().unwrap_or_default();
    let modes = spec.access_modes.clone().unwrap_or_default();
    if asked == prov::LOCAL {
        if let Some(m) = modes.iter().find(|m| *m == "ReadWriteMany" || *m == "ReadOnlyMany") {
            return Plan::Fail(format!(
                "{} volumes are on one node and cannot be {m}: use the shared class",
                prov::LOCAL
            ));
        }
    }
    let selected = claim.annotations().get(SELECTED_NODE);
    let node = match (asked, selected) {
        (prov::LOCAL, None) => {
            return Plan::Fail(format!(
                "{} places a volume on the node of its first consumer: give class {} volumeBindingMode \
                 WaitForFirstConsumer",
                prov::LOCAL,
                class.name_any()
            ))
        }
        (prov::LOCAL, Some(n)) => match nodes.iter().find(|node| node.name_any() == *n) {
            Some(node) => {
                let want = kumo_api::storage::requested_bytes(claim).unwrap_or(0);
                if let Some(have) = prov::node_volume_bytes(node).filter(|have| *have < want) {
                    return Plan::Fail(format!(
                        "node {n} holds {have} bytes of local volumes; the claim asks for {want}: ask for less, or \
                         use a node with a bigger --volume-dir"
                    ));
                }
                node.name_any()
            }
            None => return Plan::Fail(format!("the selected node \"{n}\" does not exist")),
        },
        (_, selected) => match shared_keeper(claim, selected.map(String::as_str), nodes) {
            Some(n) => n,
            None => {
                return Plan::Fail(
                    "no Ready node mounts shared volumes: start agents with --shared-volume-dir pointing at the \
                     same shared directory"
                        .into(),
                )
            }
        },
    };
    let request = spec.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get("storage")).cloned();
    let Some(size) = request else { return Plan::Fail("the claim requests no storage".into()) };
    let name = volume_for(claim);
    let mut pv = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {
            "name": name,
            "labels": {VOLUME_NODE_LABEL: node},
            "annotations": {crate::binder::PROVISIONED_BY: asked, prov::VOLUME_STATE: prov::PENDING},
            "finalizers": [CLEANUP_FINALIZER],
        },
        "spec": {
            "capacity": {"storage": size},
            "accessModes": modes,
            "volumeMode": spec.volume_mode.as_deref().unwrap_or("Filesystem"),
            "persistentVolumeReclaimPolicy": class.reclaim_policy.as_deref().unwrap_or("Delete"),
            "storageClassName": class.name_any(),
            "claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": claim.namespace(),
                         "name": claim.name_any(), "uid": claim.uid(), "resourceVersion": claim.resource_version()},
            "csi": {"driver": asked, "volumeHandle": name},
        },
    });
    if let Some(source) = claim.annotations().get(kumo_api::cdi::POPULATE_SOURCE) {
        pv["metadata"]["annotations"][kumo_api::cdi::POPULATE_SOURCE] = json!(source);
    }
    if asked == prov::LOCAL {
        pv["spec"]["nodeAffinity"] = json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}});
    }
    Plan::Create(Box::new(serde_json::from_value(pv).expect("a well-formed PersistentVolume")))
}

/// The node that looks after a shared volume's files: the selected node if it mounts the shared directory,
/// else one of the Ready nodes that do, spread by the claim's uid.
fn shared_keeper(claim: &PersistentVolumeClaim, selected: Option<&str>, nodes: &[Node]) -> Option<String> {
    let mounts = |n: &&Node| n.labels().get(prov::SHARED_VOLUMES_LABEL).is_some_and(|v| v == "true");
    if let Some(n) = nodes.iter().filter(mounts).find(|n| Some(n.name_any().as_str()) == selected) {
        return Some(n.name_any());
    }
    let ready: Vec<&Node> = nodes.iter().filter(mounts).filter(|n| crate::sched::ready(n)).collect();
    let spread = claim.uid().unwrap_or_default().bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
    (!ready.is_empty()).then(|| ready[spread % ready.len()].name_any())
}

/// What to do about a volume kumo provisioned whose keeper node is gone.
#[derive(Clone, Debug, PartialEq)]
pub enum Cleanup {
    Nothing,
    /// Hand a shared volume to another node that mounts the shared directory.
    Relabel(String),
    /// A local volume being deleted whose node was removed: its files went with the node.
    Release,
}

pub fn plan_cleanup(pv: &PersistentVolume, nodes: &[Node]) -> Cleanup {
    let Some((driver, _)) = prov::csi_of(pv) else { return Cleanup::Nothing };
    let keeper = pv.labels().get(VOLUME_NODE_LABEL).map(String::as_str).unwrap_or_default();
    if nodes.iter().any(|n| n.name_any() == keeper) {
        return Cleanup::Nothing;
    }
    let holds = pv.finalizers().iter().any(|f| f == CLEANUP_FINALIZER);
    if driver == prov::LOCAL {
        return if holds && pv.metadata.deletion_timestamp.is_some() { Cleanup::Release } else { Cleanup::Nothing };
    }
    let claim = PersistentVolumeClaim { metadata: pv.metadata.clone(), ..Default::default() };
    shared_keeper(&claim, None, nodes).map_or(Cleanup::Nothing, Cleanup::Relabel)
}

#[cfg(test)]
mod tests;
