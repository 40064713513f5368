//! Expanding claims, as Kubernetes' external resizer does for a CSI driver: a bound claim of one of kumo's
//! volumes that asks for more than its volume holds gets the volume's capacity raised (the claim shows
//! `Resizing`); the node agent that keeps the volume grows the image (in the running guest when one has it
//! open) and records the size; then the claim's `status.capacity` says the new size.
//!
//! [`plan`] decides; [`run`] applies.

use crate::binder::volume_name;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use kumo_api::provisioning as prov;
use kumo_api::{quantity, storage};
use kumo_events::Recorder;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    Nothing,
    /// Raise the volume's capacity to the claim's request.
    GrowVolume(Quantity),
    /// The image has grown: the claim's capacity becomes the volume's.
    Finish(Quantity),
}

fn bytes(q: Option<&Quantity>) -> u64 {
    q.and_then(|q| quantity::parse(&q.0).ok()).unwrap_or(0)
}

pub fn plan(claim: &PersistentVolumeClaim, volume: &PersistentVolume) -> Plan {
    if prov::csi_of(volume).is_none()
        || volume_name(claim) != volume.name_any()
        || prov::state(volume) != Some(prov::READY)
    {
        return Plan::Nothing;
    }
    let request = claim.spec.as_ref().and_then(|s| s.resources.as_ref()?.requests.as_ref()?.get("storage").cloned());
    let capacity = volume.spec.as_ref().and_then(|s| s.capacity.as_ref()?.get("storage").cloned());
    let want = storage::requested_bytes(claim).unwrap_or(0);
    match (request, capacity) {
        (Some(r), Some(c)) if want > bytes(Some(&c)) => Plan::GrowVolume(r),
        (_, Some(c)) => {
            let grown = prov::annotation(volume, prov::IMAGE_BYTES).and_then(|b| b.parse::<u64>().ok()).unwrap_or(0);
            let shown = claim.status.as_ref().and_then(|s| s.capacity.as_ref()?.get("storage"));
            if grown >= bytes(Some(&c)) && bytes(shown) < bytes(Some(&c)) {
                Plan::Finish(c)
            } else {
                Plan::Nothing
            }
        }
        _ => Plan::Nothing,
    }
}

struct Ctx {
    client: Client,
    recorder: Recorder,
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct Error(#[from] kube::Error);

pub async fn run(client: Client) {
    let reporter = Reporter { controller: "external-resizer kumo.dev".into(), instance: None };
    let ctx = Arc::new(Ctx { recorder: Recorder::new(client.clone(), reporter), client: client.clone() });
    crate::reflect::slim_controller(Api::<PersistentVolumeClaim>::all(client.clone()), watcher::Config::default())
        .watches(Api::<PersistentVolume>::all(client), watcher::Config::default(), |pv| {
            let r = pv.spec.as_ref()?.claim_ref.clone()?;
            Some(ObjectRef::new(r.name.as_deref()?).within(r.namespace.as_deref()?))
        })
        .run(
            reconcile,
            |_, err: &Error, _| {
                tracing::warn!("resizer: {err}");
                Action::requeue(Duration::from_secs(2))
            },
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

async fn reconcile(claim: Arc<PersistentVolumeClaim>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let name = volume_name(&claim);
    if name.is_empty() {
        return Ok(Action::await_change());
    }
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let Some(volume) = volumes.get_opt(name).await? else { return Ok(Action::await_change()) };
    let claims: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &claim.namespace().unwrap_or_default());
    let now = kumo_api::meta::now_rfc3339();
    let (reason, note) = match plan(&claim, &volume) {
        Plan::Nothing => return Ok(Action::await_change()),
        Plan::GrowVolume(q) => {
            let patch = json!({"spec": {"capacity": {"storage": q}}});
            volumes.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await?;
            let status = json!({"status": {"allocatedResources": {"storage": q}, "conditions": [
                {"type": "Resizing", "status": "True", "lastTransitionTime": now}]}});
            claims.patch_status(&claim.name_any(), &PatchParams::default(), &Patch::Merge(status)).await?;
            ("Resizing", format!("External resizer is resizing volume {name}"))
        }
        Plan::Finish(q) => {
            let status = json!({"status": {"capacity": {"storage": q}, "conditions": null}});
            claims.patch_status(&claim.name_any(), &PatchParams::default(), &Patch::Merge(status)).await?;
            (
                "VolumeResizeSuccessful",
                format!("resize volume \"{name}\" by resizer \"kumo.dev\" finished successfully"),
            )
        }
    };
    crate::runtime::record(&ctx.recorder, &*claim, EventType::Normal, reason, "Resize", note).await;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(request: &str, shown: &str) -> PersistentVolumeClaim {
        serde_json::from_value(json!({"metadata": {"name": "c", "namespace": "ns"},
            "spec": {"volumeName": "pvc-1", "resources": {"requests": {"storage": request}}},
            "status": {"phase": "Bound", "capacity": {"storage": shown}}}))
        .unwrap()
    }

    fn volume(capacity: &str, grown: &str) -> PersistentVolume {
        serde_json::from_value(json!({"metadata": {"name": "pvc-1", "annotations": {
                prov::VOLUME_STATE: prov::READY, prov::IMAGE_BYTES: grown}},
            "spec": {"capacity": {"storage": capacity}, "csi": {"driver": prov::LOCAL, "volumeHandle": "pvc-1"}}}))
        .unwrap()
    }

    #[test]
    fn a_grown_claim_grows_its_volume_then_shows_the_new_size() {
        let mib = |n: u64| (n << 20).to_string();
        assert_eq!(plan(&claim("64Mi", "64Mi"), &volume("64Mi", &mib(64))), Plan::Nothing);
        assert_eq!(
            plan(&claim("128Mi", "64Mi"), &volume("64Mi", &mib(64))),
            Plan::GrowVolume(Quantity("128Mi".into()))
        );
        assert_eq!(plan(&claim("128Mi", "64Mi"), &volume("128Mi", &mib(64))), Plan::Nothing, "image not grown yet");
        assert_eq!(plan(&claim("128Mi", "64Mi"), &volume("128Mi", &mib(128))), Plan::Finish(Quantity("128Mi".into())));
        assert_eq!(plan(&claim("128Mi", "128Mi"), &volume("128Mi", &mib(128))), Plan::Nothing);
    }
}
