//! The binder's runtime: reads what [`super::plan_claim`] and [`super::plan_volume`] need through the API, and
//! applies their plans (volume before claim, each write conditional on the resourceVersion it was planned from).

use super::{plan_claim, plan_volume, ClaimPlan, VolumePlan, BIND_COMPLETED, BOUND_BY_CONTROLLER, STORAGE_PROVISIONER};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use kumo_api::kubevirt::VirtualMachineInstance;
use kumo_events::Recorder;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

struct Ctx {
    client: Client,
    recorder: Recorder,
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct Error(#[from] kube::Error);

/// How often a waiting claim is looked at again even when nothing it depends on changed (as Kubernetes' PV
/// controller resyncs).
const RESYNC: Duration = Duration::from_secs(15);

/// Runs the claim and volume loops until the process ends.
pub async fn run(client: Client, vmis: crate::shared::Shared<VirtualMachineInstance>) {
    let reporter = Reporter { controller: "persistentvolume-controller".into(), instance: None };
    let ctx = Arc::new(Ctx { recorder: Recorder::new(client.clone(), reporter), client: client.clone() });
    let claims =
        crate::reflect::slim_controller(Api::<PersistentVolumeClaim>::all(client.clone()), watcher::Config::default())
            // A volume that names a claim wakes it; any other volume change may let a waiting claim bind.
            .watches(Api::<PersistentVolume>::all(client.clone()), watcher::Config::default(), |pv| {
                let r = pv.spec.as_ref().and_then(|s| s.claim_ref.clone());
                r.and_then(|r| Some(ObjectRef::new(r.name.as_deref()?).within(r.namespace.as_deref()?)))
            })
            // A VMI that starts using a claim (hot-plugged into a running guest) may be its first consumer.
            .watches_shared_stream(vmis.changes(), |vmi| {
                let ns = vmi.metadata.namespace.clone().unwrap_or_default();
                vmi.claim_names().map(|c| ObjectRef::new(c).within(&ns)).collect::<Vec<_>>()
            })
            .run(reconcile_claim, retry, ctx.clone())
            .for_each(|_| async {});
    let volumes =
        crate::reflect::slim_controller(Api::<PersistentVolume>::all(client.clone()), watcher::Config::default())
            .watches(Api::<PersistentVolumeClaim>::all(client), watcher::Config::default(), |pvc| {
                pvc.spec
                    .as_ref()
                    .and_then(|s| s.volume_name.clone())
                    .filter(|v| !v.is_empty())
                    .map(|v| ObjectRef::new(&v))
            })
            .run(reconcile_volume, retry, ctx)
            .for_each(|_| async {});
    tokio::join!(claims, volumes);
}

fn retry<K>(_obj: Arc<K>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!("persistent volume binder: {err}");
    Action::requeue(Duration::from_secs(2))
}

async fn event<K: Resource<DynamicType = ()>>(ctx: &Ctx, obj: &K, type_: EventType, reason: &str, note: String) {
    crate::runtime::record(&ctx.recorder, obj, type_, reason, reason, note).await;
}

/// A conflict or a vanished object means the plan was made from stale reads: plan again now.
fn stale(e: kube::Error) -> Result<Action, Error> {
    match e {
        kube::Error::Api(s) if s.code == 409 || s.code == 404 => Ok(Action::requeue(Duration::ZERO)),
        e => Err(e.into()),
    }
}

async fn reconcile_claim(claim: Arc<PersistentVolumeClaim>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = claim.namespace().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let volumes = Api::<PersistentVolume>::all(ctx.client.clone()).list(&ListParams::default()).await?.items;
    let classes = Api::<StorageClass>::all(ctx.client.clone()).list(&ListParams::default()).await?.items;
    let classes_wait = classes.iter().any(|c| {
        c.name_any() == super::class_name(&claim) && c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer")
    });
    if classes_wait && !claim.annotations().contains_key(super::SELECTED_NODE) {
        let vmis =
            Api::<VirtualMachineInstance>::namespaced(ctx.client.clone(), &ns).list(&ListParams::default()).await?;
        if let Some(node) = super::hotplug_consumer_node(&claim, &vmis.items) {
            let patch = json!({"metadata": {"annotations": {super::SELECTED_NODE: node}}});
            if let Err(e) = claims.patch(&claim.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
                return stale(e);
            }
            return Ok(Action::requeue(Duration::ZERO));
        }
    }
    let node = match claim.annotations().get(super::SELECTED_NODE) {
        Some(n) => Api::<Node>::all(ctx.client.clone()).get_opt(n).await?,
        None => None,
    };
    match plan_claim(&claim, &volumes, &classes, node.as_ref()) {
        ClaimPlan::Wait(None) => Ok(Action::await_change()),
        ClaimPlan::Wait(Some((reason, note))) => {
            let type_ = if reason == "FailedBinding" || reason == "ProvisioningFailed" {
                EventType::Warning
            } else {
                EventType::Normal
            };
            event(&ctx, &*claim, type_, reason, note).await;
            Ok(Action::requeue(RESYNC))
        }
        ClaimPlan::Provision(provisioner) => {
            let patch = json!({"metadata": {"resourceVersion": claim.resource_version(), "annotations": {
                STORAGE_PROVISIONER: provisioner, "volume.beta.kubernetes.io/storage-provisioner": provisioner}}});
            if let Err(e) = claims.patch(&claim.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
                return stale(e);
            }
            Ok(Action::await_change())
        }
        ClaimPlan::Lost(note) => {
            let patch = json!({"status": {"phase": "Lost"}});
            if let Err(e) = claims.patch_status(&claim.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await
            {
                return stale(e);
            }
            event(&ctx, &*claim, EventType::Warning, "ClaimLost", note).await;
            Ok(Action::await_change())
        }
        ClaimPlan::Bind(name) => bind(&ctx, &claim, &name).await,
    }
}

/// Binds `claim` to the volume `name`: the volume's claimRef (conditional on the volume as read), its phase,
/// then the claim's volumeName and status.
async fn bind(ctx: &Ctx, claim: &PersistentVolumeClaim, name: &str) -> Result<Action, Error> {
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let Some(volume) = volumes.get_opt(name).await? else { return Ok(Action::requeue(Duration::ZERO)) };
    let claimed = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_some();
    if claimed && !super::refers_to(&volume, claim) {
        // Another claim took it since the plan was made (claims are reconciled concurrently): plan again.
        return Ok(Action::requeue(Duration::ZERO));
    }
    if !claimed {
        let patch = json!({
            "metadata": {"resourceVersion": volume.resource_version(),
                         "annotations": {BOUND_BY_CONTROLLER: "yes"}},
            "spec": {"claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1",
                "namespace": claim.namespace(), "name": claim.name_any(), "uid": claim.uid(),
                "resourceVersion": claim.resource_version()}},
        });
        if let Err(e) = volumes.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await {
            return stale(e);
        }
    }
    let status = json!({"status": {"phase": "Bound"}});
    volumes.patch_status(name, &PatchParams::default(), &Patch::Merge(status)).await?;
    let claims: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &claim.namespace().unwrap_or_default());
    let spec = volume.spec.clone().unwrap_or_default();
    let patch = json!({
        "metadata": {"annotations": {BIND_COMPLETED: "yes", BOUND_BY_CONTROLLER: "yes"}},
        "spec": {"volumeName": name},
    });
    if let Err(e) = claims.patch(&claim.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
        return stale(e);
    }
    let status = json!({"status": {"phase": "Bound", "accessModes": spec.access_modes, "capacity": spec.capacity}});
    claims.patch_status(&claim.name_any(), &PatchParams::default(), &Patch::Merge(status)).await?;
    tracing::info!(claim = %claim.name_any(), volume = name, "bound");
    Ok(Action::await_change())
}

async fn reconcile_volume(volume: Arc<PersistentVolume>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let claim = match volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) {
        Some(r) => match (r.namespace.as_deref(), r.name.as_deref()) {
            (Some(ns), Some(n)) => Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), ns).get_opt(n).await?,
            _ => None,
        },
        None => None,
    };
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    match plan_volume(&volume, claim.as_ref()) {
        VolumePlan::Nothing => Ok(Action::await_change()),
        VolumePlan::Phase(phase, message) => {
            let patch = json!({"status": {"phase": phase, "message": message}});
            if let Err(e) =
                volumes.patch_status(&volume.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await
            {
                return stale(e);
            }
            if let Some(m) = message {
                event(&ctx, &*volume, EventType::Warning, "VolumeFailedDelete", m).await;
            }
            Ok(Action::await_change())
        }
        VolumePlan::Delete => {
            match volumes.delete(&volume.name_any(), &DeleteParams::default()).await {
                Ok(_) => tracing::info!(volume = %volume.name_any(), "released volume deleted (reclaim policy Delete)"),
                Err(e) => return stale(e),
            }
            Ok(Action::await_change())
        }
    }
}
