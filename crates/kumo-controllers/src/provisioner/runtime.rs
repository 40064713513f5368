//! The provisioners' runtime: claims handed to kumo's provisioners get their volume (created once: the name is
//! the claim's uid, so a second create is a 409), and volumes whose keeper node is gone are handed on.

use super::{plan, plan_cleanup, volume_for, Cleanup, Plan};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use kumo_api::provisioning::{CLEANUP_FINALIZER, VOLUME_NODE_LABEL};
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

/// A claim that could not be provisioned is tried again this often (a node may come, a class be fixed).
const RETRY: Duration = Duration::from_secs(10);

pub async fn run(client: Client) {
    let reporter = Reporter { controller: "kumo-provisioner".into(), instance: None };
    let ctx = Arc::new(Ctx { recorder: Recorder::new(client.clone(), reporter), client: client.clone() });
    let claims =
        crate::reflect::slim_controller(Api::<PersistentVolumeClaim>::all(client.clone()), watcher::Config::default())
            .run(reconcile_claim, retry, ctx.clone())
            .for_each(|_| async {});
    let volumes = crate::reflect::slim_controller(Api::<PersistentVolume>::all(client), watcher::Config::default())
        .run(reconcile_volume, retry, ctx)
        .for_each(|_| async {});
    tokio::join!(claims, volumes);
}

fn retry<K>(_obj: Arc<K>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!("provisioner: {err}");
    Action::requeue(Duration::from_secs(2))
}

async fn event<K: Resource<DynamicType = ()>>(ctx: &Ctx, obj: &K, type_: EventType, reason: &str, note: String) {
    crate::runtime::record(&ctx.recorder, obj, type_, reason, "Provision", note).await;
}

async fn reconcile_claim(claim: Arc<PersistentVolumeClaim>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let asked = claim.annotations().get(crate::binder::STORAGE_PROVISIONER);
    if !asked.is_some_and(|p| kumo_api::provisioning::is_ours(p)) {
        return Ok(Action::await_change());
    }
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let existing = volumes.get_opt(&volume_for(&claim)).await?;
    let classes = Api::<StorageClass>::all(ctx.client.clone()).list(&ListParams::default()).await?.items;
    let nodes = Api::<Node>::all(ctx.client.clone()).list(&ListParams::default()).await?.items;
    match plan(&claim, &classes, &nodes, existing.as_ref()) {
        Plan::Nothing => Ok(Action::await_change()),
        Plan::Fail(why) => {
            event(&ctx, &*claim, EventType::Warning, "ProvisioningFailed", why).await;
            Ok(Action::requeue(RETRY))
        }
        Plan::Create(pv) => {
            let name = pv.name_any();
            match volumes.create(&PostParams::default(), &pv).await {
                Ok(_) => {
                    let node = pv.labels().get(VOLUME_NODE_LABEL).cloned().unwrap_or_default();
                    let note = format!("Successfully provisioned volume {name} (kept by node {node})");
                    event(&ctx, &*claim, EventType::Normal, "ProvisioningSucceeded", note).await;
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            Ok(Action::await_change())
        }
    }
}

async fn reconcile_volume(pv: Arc<PersistentVolume>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if kumo_api::provisioning::csi_of(&pv).is_none() {
        return Ok(Action::await_change());
    }
    let nodes = Api::<Node>::all(ctx.client.clone()).list(&ListParams::default()).await?.items;
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let patch = match plan_cleanup(&pv, &nodes) {
        Cleanup::Nothing => return Ok(Action::requeue(Duration::from_secs(60))),
        Cleanup::Relabel(node) => {
            tracing::info!(volume = %pv.name_any(), node, "shared volume handed to another node");
            json!({"metadata": {"resourceVersion": pv.resource_version(), "labels": {VOLUME_NODE_LABEL: node}}})
        }
        Cleanup::Release => {
            tracing::info!(volume = %pv.name_any(), "the volume's node is gone: nothing left to clean up");
            let kept: Vec<&String> = pv.finalizers().iter().filter(|f| *f != CLEANUP_FINALIZER).collect();
            json!({"metadata": {"resourceVersion": pv.resource_version(), "finalizers": kept}})
        }
    };
    match volumes.patch(&pv.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Ok(_) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}
