//! Storage object protection, as Kubernetes' pvc-protection and pv-protection controllers do it: the API server
//! puts `kubernetes.io/pvc-protection` on every claim and `kubernetes.io/pv-protection` on every volume at
//! creation; these controllers take the finalizer off a claim being deleted once no running VMI uses it, and off
//! a volume being deleted once no claim is bound to it. Until then the object stays, marked for deletion.
//!
//! The decisions are [`release_claim`] and [`release_volume`], pure functions; [`run`] watches claims, volumes
//! and the VMIs that use claims, and removes the finalizer with the object's resourceVersion as a precondition.

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use kumo_api::kubevirt::VirtualMachineInstance;
use kumo_api::storage::{PVC_PROTECTION, PV_PROTECTION};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Whether a claim's protection finalizer can go: it is being deleted, holds the finalizer, and none of
/// `vmis` (its namespace's) that has not ended uses it.
pub fn release_claim(claim: &PersistentVolumeClaim, vmis: &[VirtualMachineInstance]) -> bool {
    let name = claim.name_any();
    claim.meta().deletion_timestamp.is_some()
        && claim.finalizers().iter().any(|f| f == PVC_PROTECTION)
        && !vmis.iter().any(|v| !v.is_final() && v.claim_names().any(|c| c == name))
}

/// Whether a volume's protection finalizer can go: it is being deleted, holds the finalizer, and is not bound.
pub fn release_volume(volume: &PersistentVolume) -> bool {
    volume.meta().deletion_timestamp.is_some()
        && volume.finalizers().iter().any(|f| f == PV_PROTECTION)
        && volume.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound")
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct Error(#[from] kube::Error);

/// Removes `finalizer` from `obj`, on the condition that it is unchanged since read.
async fn remove_finalizer<K>(api: &Api<K>, obj: &K, finalizer: &str) -> Result<Action, Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let rest: Vec<&String> = obj.finalizers().iter().filter(|f| *f != finalizer).collect();
    let patch = json!({"metadata": {"resourceVersion": obj.resource_version(), "finalizers": rest}});
    match api.patch(&obj.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(_) => {
            tracing::info!(object = %obj.name_any(), finalizer, "released: nothing uses it any more");
            Ok(Action::await_change())
        }
        // Changed meanwhile (read again), or gone already.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Action::requeue(Duration::ZERO)),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

async fn reconcile_claim(claim: Arc<PersistentVolumeClaim>, client: Arc<Client>) -> Result<Action, Error> {
    if claim.meta().deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let ns = claim.namespace().unwrap_or_default();
    // A fresh list, not a cache: a VMI created a moment ago must count.
    let vmis = Api::<VirtualMachineInstance>::namespaced((*client).clone(), &ns).list(&ListParams::default()).await?;
    if !release_claim(&claim, &vmis.items) {
        return Ok(Action::await_change());
    }
    remove_finalizer(&Api::namespaced((*client).clone(), &ns), &*claim, PVC_PROTECTION).await
}

async fn reconcile_volume(volume: Arc<PersistentVolume>, client: Arc<Client>) -> Result<Action, Error> {
    if !release_volume(&volume) {
        return Ok(Action::await_change());
    }
    remove_finalizer(&Api::all((*client).clone()), &*volume, PV_PROTECTION).await
}

fn retry<K>(_obj: Arc<K>, err: &Error, _client: Arc<Client>) -> Action {
    tracing::warn!("storage protection: {err}");
    Action::requeue(Duration::from_secs(2))
}

/// Runs both controllers until the process ends.
pub async fn run(client: Client, vmis: crate::shared::Shared<VirtualMachineInstance>) {
    let ctx = Arc::new(client.clone());
    // A VMI that ends or goes away may free the claims it used.
    let claims =
        crate::reflect::slim_controller(Api::<PersistentVolumeClaim>::all(client.clone()), watcher::Config::default())
            .watches_shared_stream(vmis.changes(), |vmi| {
                let ns = vmi.namespace().unwrap_or_default();
                vmi.claim_names().map(|c| ObjectRef::new(c).within(&ns)).collect::<Vec<_>>()
            })
            .run(reconcile_claim, retry, ctx.clone())
            .for_each(|_| async {});
    let volumes = crate::reflect::slim_controller(Api::<PersistentVolume>::all(client), watcher::Config::default())
        .run(reconcile_volume, retry, ctx)
        .for_each(|_| async {});
    tokio::join!(claims, volumes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(deleting: bool) -> PersistentVolumeClaim {
        let mut c = json!({"metadata": {"name": "data", "namespace": "ns", "finalizers": [PVC_PROTECTION]}});
        if deleting {
            c["metadata"]["deletionTimestamp"] = json!("2026-12-04T00:00:00Z");
        }
        serde_json::from_value(c).unwrap()
    }

    fn vmi(claim: &str, phase: &str) -> VirtualMachineInstance {
        serde_json::from_value(json!({
            "metadata": {"name": "vm", "namespace": "ns"},
            "spec": {"volumes": [{"name": "d", "ephemeral": {"persistentVolumeClaim": {"claimName": claim}}}]},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    #[test]
    fn a_claim_is_held_while_a_running_vmi_uses_it() {
        assert!(!release_claim(&claim(false), &[]), "not being deleted");
        assert!(!release_claim(&claim(true), &[vmi("data", "Running")]));
        assert!(!release_claim(&claim(true), &[vmi("data", "")]), "a VMI not yet started counts");
        assert!(release_claim(&claim(true), &[vmi("data", "Succeeded"), vmi("other", "Running")]));
        assert!(release_claim(&claim(true), &[]));
    }

    #[test]
    fn a_volume_is_held_while_bound() {
        let mut v = json!({"metadata": {"name": "pv", "finalizers": [PV_PROTECTION],
                                        "deletionTimestamp": "2026-12-04T00:00:00Z"},
                           "status": {"phase": "Bound"}});
        assert!(!release_volume(&serde_json::from_value(v.clone()).unwrap()));
        v["status"]["phase"] = json!("Released");
        assert!(release_volume(&serde_json::from_value(v).unwrap()));
    }
}
