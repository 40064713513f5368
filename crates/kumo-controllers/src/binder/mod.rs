//! The PersistentVolume binder, as Kubernetes' PV controller does it: a claim is bound to the smallest
//! Available volume that fits it (class, volume mode, access modes, size, label selector, and for a class that
//! waits for its first consumer, the node chosen for it), or handed to its class's provisioner; a volume's
//! phase follows its claim (Available, Bound, Released), and a released volume is deleted when its reclaim
//! policy says so and kumo provisioned it.
//!
//! The decisions are [`plan_claim`] and [`plan_volume`], pure functions of the objects. The runtime binds the
//! volume first (its `claimRef`, with the volume's resourceVersion as a precondition, so two claims never get
//! one volume), then the claim.

use k8s_openapi::api::core::v1::{Node, ObjectReference, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;
use kumo_api::{quantity, storage};
use std::collections::BTreeSet;

mod runtime;
pub use runtime::run;

/// The node a claim's first consumer was scheduled to (set by the scheduler, read by provisioners).
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// The provisioner asked to create a volume for a claim.
pub const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
/// On a volume: the provisioner that created it (and so can delete it).
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
pub const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
pub const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";

/// What to do about a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimPlan {
    /// Nothing now; with an event (reason, message) saying why it waits, if any.
    Wait(Option<(&'static str, String)>),
    /// Bind the claim to this volume (the volume first).
    Bind(String),
    /// Ask the class's provisioner for a volume (the claim's annotation).
    Provision(String),
    /// The claim's volume is gone or bound elsewhere: phase Lost.
    Lost(String),
}

pub(crate) fn class_name(claim: &PersistentVolumeClaim) -> &str {
    claim.spec.as_ref().and_then(|s| s.storage_class_name.as_deref()).unwrap_or_default()
}

pub(crate) fn volume_name(claim: &PersistentVolumeClaim) -> &str {
    claim.spec.as_ref().and_then(|s| s.volume_name.as_deref()).unwrap_or_default()
}

fn claim_phase(claim: &PersistentVolumeClaim) -> &str {
    claim.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default()
}

fn claim_ref(volume: &PersistentVolume) -> Option<&ObjectReference> {
    volume.spec.as_ref()?.claim_ref.as_ref()
}

/// Whether `volume`'s claimRef names `claim` (and, when it records a uid, this very claim).
fn refers_to(volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    claim_ref(volume).is_some_and(|r| {
        r.name.as_deref() == claim.metadata.name.as_deref()
            && r.namespace.as_deref() == claim.metadata.namespace.as_deref()
            && r.uid.as_deref().is_none_or(|u| Some(u) == claim.metadata.uid.as_deref())
    })
}

fn volume_bytes(volume: &PersistentVolume) -> Option<u64> {
    let q = volume.spec.as_ref()?.capacity.as_ref()?.get("storage")?;
    quantity::parse(&q.0).ok()
}

/// Whether `volume` can hold `claim`: unclaimed, same class and volume mode, every access mode the claim asks
/// for, at least its size, selected by its label selector, and reachable from the selected node if any.
fn fits(volume: &PersistentVolume, claim: &PersistentVolumeClaim, node: Option<&Node>) -> bool {
    let (Some(vs), Some(cs)) = (&volume.spec, &claim.spec) else { return false };
    let mode = |m: &Option<String>| m.clone().unwrap_or_else(|| "Filesystem".into());
    let have: BTreeSet<&String> = vs.access_modes.iter().flatten().collect();
    let selected = cs.selector.as_ref().is_none_or(|s| crate::sched::selects(s, volume.metadata.labels.as_ref()));
    let reachable = match (node, vs.node_affinity.as_ref().and_then(|a| a.required.as_ref())) {
        (Some(n), Some(req)) => req.node_selector_terms.iter().any(|t| crate::sched::term_matches(t, n)),
        _ => true,
    };
    claim_ref(volume).is_none()
        && volume.metadata.deletion_timestamp.is_none()
        && vs.storage_class_name.as_deref().unwrap_or_default() == class_name(claim)
        && mode(&vs.volume_mode) == mode(&cs.volume_mode)
        && cs.access_modes.iter().flatten().all(|m| have.contains(m))
        && volume_bytes(volume) >= storage::requested_bytes(claim)
        && selected
        && reachable
}

/// The plan for `claim`, given every volume, every class, and the node its first consumer was scheduled to
/// (when the claim names one).
pub fn plan_claim(
    claim: &PersistentVolumeClaim,
    volumes: &[PersistentVolume],
    classes: &[StorageClass],
    selected_node: Option<&Node>,
) -> ClaimPlan {
    if claim.metadata.deletion_timestamp.is_some() {
        return ClaimPlan::Wait(None);
    }
    let named = volume_name(claim);
    if !named.is_empty() {
        let volume = volumes.iter().find(|v| v.name_any() == named);
        return match volume {
            Some(v) if refers_to(v, claim) => {
                if claim_phase(claim) == "Bound" {
                    ClaimPlan::Wait(None)
                } else {
                    ClaimPlan::Bind(named.to_string())
                }
            }
            Some(v) if claim_ref(v).is_none() => ClaimPlan::Bind(named.to_string()),
            _ if claim_phase(claim) == "Bound" => ClaimPlan::Lost(format!(
                "Bound claim has lost its PersistentVolume {named}: data on the volume is lost!"
            )),
            Some(_) => ClaimPlan::Wait(Some((
                "FailedBinding",
                format!("volume \"{named}\" already bound to a different claim."),
            ))),
            None => ClaimPlan::Wait(Some(("FailedBinding", format!("volume \"{named}\" not found")))),
        };
    }
    // A volume created for this claim (or pre-bound to it by an administrator).
    if let Some(v) = volumes.iter().find(|v| refers_to(v, claim)) {
        return ClaimPlan::Bind(v.name_any());
    }
    let class = classes.iter().find(|c| c.name_any() == class_name(claim));
    let waits = class.is_some_and(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"));
    let selected = claim.annotations().get(SELECTED_NODE);
    if waits && selected.is_none() {
        return ClaimPlan::Wait(Some((
            "WaitForFirstConsumer",
            "waiting for first consumer to be created before binding".into(),
        )));
    }
    let best = volumes.iter().filter(|v| fits(v, claim, selected_node)).min_by_key(|v| (volume_bytes(v), v.name_any()));
    if let Some(v) = best {
        return ClaimPlan::Bind(v.name_any());
    }
    match class {
        Some(c) if claim.spec.as_ref().is_none_or(|s| s.selector.is_none()) => {
            if claim.annotations().get(STORAGE_PROVISIONER) == Some(&c.provisioner) {
                ClaimPlan::Wait(Some((
                    "ExternalProvisioning",
                    format!(
                        "Waiting for a volume to be created either by the external provisioner '{}' or manually by \
                         the system administrator. If volume creation is delayed, please verify that the \
                         provisioner is running and correctly registered.",
                        c.provisioner
                    ),
                )))
            } else {
                ClaimPlan::Provision(c.provisioner.clone())
            }
        }
        Some(_) => ClaimPlan::Wait(Some((
            "FailedBinding",
            "no persistent volumes available for this claim and a claim with a selector is not provisioned".into(),
        ))),
        None if class_name(claim).is_empty() => ClaimPlan::Wait(Some((
            "FailedBinding",
            "no persistent volumes available for this claim and no storage class is set".into(),
        ))),
        None => ClaimPlan::Wait(Some((
            "ProvisioningFailed",
            format!("storageclass.storage.k8s.io \"{}\" not found", class_name(claim)),
        ))),
    }
}

/// The node of a running consumer of `claim` that was scheduled before the claim was added (a hot-plugged
/// claim): a claim waiting for its first consumer gets that VMI's node, as the scheduler gives it a new VMI's.
pub fn hotplug_consumer_node(
    claim: &PersistentVolumeClaim,
    vmis: &[kumo_api::kubevirt::VirtualMachineInstance],
) -> Option<String> {
    if claim.annotations().contains_key(SELECTED_NODE) || !volume_name(claim).is_empty() {
        return None;
    }
    let name = claim.metadata.name.as_deref()?;
    vmis.iter()
        .filter(|v| !v.is_final() && v.metadata.namespace == claim.metadata.namespace)
        .filter(|v| v.claim_names().any(|c| c == name))
        .find_map(|v| v.node_name().map(str::to_string))
}

/// What to do about a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumePlan {
    Nothing,
    /// Set `status.phase` (and a message for Failed).
    Phase(&'static str, Option<String>),
    /// Released with reclaim policy Delete, and kumo made it: delete the object (its provisioner's finalizer
    /// removes the storage first).
    Delete,
}

/// The plan for `volume`, given the claim its claimRef names (None when there is no such claim).
pub fn plan_volume(volume: &PersistentVolume, claim: Option<&PersistentVolumeClaim>) -> VolumePlan {
    let phase = volume.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default();
    let want = |p: &'static str| if phase == p { VolumePlan::Nothing } else { VolumePlan::Phase(p, None) };
    if volume.metadata.deletion_timestamp.is_some() {
        return VolumePlan::Nothing;
    }
    let Some(r) = claim_ref(volume) else { return want("Available") };
    match claim {
        Some(c) if refers_to(volume, c) => want("Bound"),
        // A claimRef without a uid waits for its claim (pre-bound by an administrator).
        None if r.uid.is_none() => want("Available"),
        _ => {
            let policy = volume.spec.as_ref().and_then(|s| s.persistent_volume_reclaim_policy.as_deref());
            match policy {
                Some("Delete") if volume.annotations().contains_key(PROVISIONED_BY) => {
                    if phase == "Released" {
                        VolumePlan::Delete
                    } else {
                        VolumePlan::Phase("Released", None)
                    }
                }
                Some("Delete") if phase != "Failed" => VolumePlan::Phase(
                    "Failed",
                    Some("error getting deleter volume plugin for volume: no deletable volume plugin matched".into()),
                ),
                Some("Delete") => VolumePlan::Nothing,
                _ => want("Released"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(size: &str, class: &str) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "data", "namespace": "ns", "uid": "c1"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                     "resources": {"requests": {"storage": size}}},
        }))
        .unwrap()
    }

    fn volume(name: &str, size: &str, class: &str) -> PersistentVolume {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce", "ReadOnlyMany"], "capacity": {"storage": size},
                     "storageClassName": class, "hostPath": {"path": "/x"}},
        }))
        .unwrap()
    }

    fn class(name: &str, mode: &str) -> StorageClass {
        serde_json::from_value(json!({"metadata": {"name": name}, "provisioner": "kumo.dev/local",
                                      "volumeBindingMode": mode}))
        .unwrap()
    }

    fn bound_to(mut v: PersistentVolume, uid: Option<&str>) -> PersistentVolume {
        v.spec.as_mut().unwrap().claim_ref =
            Some(serde_json::from_value(json!({"namespace": "ns", "name": "data", "uid": uid})).unwrap());
        v
    }

    #[test]
    fn the_smallest_volume_that_fits_is_chosen() {
        let vols = [volume("big", "10Gi", "manual"), volume("small", "2Gi", "manual"), volume("tiny", "1Gi", "manual")];
        assert_eq!(plan_claim(&claim("2Gi", "manual"), &vols, &[], None), ClaimPlan::Bind("small".into()));
        let other = [volume("x", "5Gi", "other")];
        assert!(matches!(
            plan_claim(&claim("2Gi", "manual"), &other, &[], None),
            ClaimPlan::Wait(Some(("ProvisioningFailed", _)))
        ));
        let mut rwx = claim("1Gi", "manual");
        rwx.spec.as_mut().unwrap().access_modes = Some(vec!["ReadWriteMany".into()]);
        assert!(matches!(plan_claim(&rwx, &vols, &[], None), ClaimPlan::Wait(_)));
        let taken = [bound_to(volume("small", "2Gi", "manual"), Some("someone-else"))];
        assert!(matches!(plan_claim(&claim("2Gi", "manual"), &taken, &[], None), ClaimPlan::Wait(_)));
    }

    #[test]
    fn classes_provision_and_first_consumers_are_waited_for() {
        let immediate = [class("std", "Immediate")];
        assert_eq!(
            plan_claim(&claim("1Gi", "std"), &[], &immediate, None),
            ClaimPlan::Provision("kumo.dev/local".into())
        );
        let mut asked = claim("1Gi", "std");
        asked.metadata.annotations = Some([(STORAGE_PROVISIONER.to_string(), "kumo.dev/local".to_string())].into());
        assert!(matches!(
            plan_claim(&asked, &[], &immediate, None),
            ClaimPlan::Wait(Some(("ExternalProvisioning", _)))
        ));
        let wffc = [class("std", "WaitForFirstConsumer")];
        assert!(matches!(
            plan_claim(&claim("1Gi", "std"), &[], &wffc, None),
            ClaimPlan::Wait(Some(("WaitForFirstConsumer", _)))
        ));
        // The provisioner's volume names the claim: bind to it.
        let made = [bound_to(volume("pvc-c1", "1Gi", "std"), Some("c1"))];
        assert_eq!(plan_claim(&asked, &made, &immediate, None), ClaimPlan::Bind("pvc-c1".into()));
    }

    #[test]
    fn a_bound_claim_whose_volume_went_is_lost() {
        let mut c = claim("1Gi", "manual");
        c.spec.as_mut().unwrap().volume_name = Some("gone".into());
        c.status = Some(serde_json::from_value(json!({"phase": "Bound"})).unwrap());
        assert!(matches!(plan_claim(&c, &[], &[], None), ClaimPlan::Lost(_)));
        let v = [bound_to(volume("gone", "1Gi", "manual"), Some("c1"))];
        assert_eq!(plan_claim(&c, &v, &[], None), ClaimPlan::Wait(None));
    }

    #[test]
    fn volume_phases_follow_their_claims() {
        let v = volume("v", "1Gi", "manual");
        assert_eq!(plan_volume(&v, None), VolumePlan::Phase("Available", None));
        let b = bound_to(v.clone(), Some("c1"));
        assert_eq!(plan_volume(&b, Some(&claim("1Gi", "manual"))), VolumePlan::Phase("Bound", None));
        assert_eq!(
            plan_volume(&b, None),
            VolumePlan::Phase("Released", None),
            "Retain (the default for static volumes)"
        );
        let mut d = b.clone();
        d.spec.as_mut().unwrap().persistent_volume_reclaim_policy = Some("Delete".into());
        assert!(matches!(plan_volume(&d, None), VolumePlan::Phase("Failed", Some(_))), "not ours to delete");
        d.metadata.annotations = Some([(PROVISIONED_BY.to_string(), "kumo.dev/local".to_string())].into());
        assert_eq!(plan_volume(&d, None), VolumePlan::Phase("Released", None));
        d.status = Some(serde_json::from_value(json!({"phase": "Released"})).unwrap());
        assert_eq!(plan_volume(&d, None), VolumePlan::Delete);
        assert_eq!(plan_volume(&bound_to(v, None), None), VolumePlan::Phase("Available", None), "pre-bound");
    }
}
