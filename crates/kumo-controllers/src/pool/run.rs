//! Applying a pool's plan through the API: fresh lists of the namespace's VMs and VMIs and of the pool's
//! revisions, then the finalizer, revisions, adoption, creates, deletes, in-place changes, events and status.

use super::{plan, VmChange, World, PRESERVED_ANNOTATION};
use crate::runtime::{not_found_or_conflict, record};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use kumo_api::kubevirt::{VirtualMachine, VirtualMachineInstance};
use kumo_api::pool::{self as api, VirtualMachinePool};
use kumo_events::Recorder;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

struct Ctx {
    client: Client,
    recorder: Recorder,
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Error(#[from] kube::Error);

/// Runs the controller until the process ends.
pub async fn run(client: Client, vmis: crate::shared::Shared<VirtualMachineInstance>) {
    let reporter = Reporter { controller: "virtualmachinepool-controller".into(), instance: None };
    let ctx = Arc::new(Ctx { recorder: Recorder::new(client.clone(), reporter), client: client.clone() });
    // A pool's guests that finish shutting down make room for a surge: their VMIs carry the pool's label.
    let by_label = |vmi: Arc<VirtualMachineInstance>| {
        let pool = vmi.labels().get(api::POOL_LABEL)?.clone();
        Some(ObjectRef::<VirtualMachinePool>::new(&pool).within(&vmi.namespace()?))
    };
    crate::reflect::slim_controller(Api::<VirtualMachinePool>::all(client.clone()), watcher::Config::default())
        .with_config(crate::runtime::concurrency(crate::runtime::CONCURRENCY))
        .owns(Api::<VirtualMachine>::all(client.clone()), watcher::Config::default())
        .watches_shared_stream(vmis.changes(), by_label)
        .run(
            |pool, ctx| async move { crate::runtime::bounded(&*pool.clone(), reconcile(pool, ctx)).await },
            |_, err: &Error, _| {
                tracing::warn!("pool controller: {err}");
                Action::requeue(Duration::from_secs(2))
            },
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

fn guarded(uid: &str) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions { uid: Some(uid.to_string()), resource_version: None }),
        ..Default::default()
    }
}

/// Sets the pool's finalizers (guarded by its resourceVersion): false when it changed meanwhile.
async fn set_finalizers(api: &Api<VirtualMachinePool>, pool: &VirtualMachinePool, keep: bool) -> Result<bool, Error> {
    let mut fins: Vec<String> = pool.finalizers().iter().filter(|f| *f != api::FINALIZER).cloned().collect();
    if keep {
        fins.push(api::FINALIZER.into());
    }
    let patch = json!({"metadata": {"finalizers": fins, "resourceVersion": pool.resource_version()}});
    match api.patch(&pool.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(_) => Ok(true),
        Err(e) if not_found_or_conflict(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn save_revision(api: &Api<ControllerRevision>, rev: &ControllerRevision) -> Result<(), Error> {
    // One that exists (brought back by an undo) keeps its data and takes its new number.
    let renumber = || async {
        let patch = json!({"revision": rev.revision});
        api.patch(&rev.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await.map(|_| ())
    };
    if rev.metadata.resource_version.is_some() {
        return Ok(renumber().await?);
    }
    match api.create(&PostParams::default(), rev).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(renumber().await?),
        Err(e) => Err(e.into()),
    }
}

async fn reconcile(pool: Arc<VirtualMachinePool>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    let pools = Api::<VirtualMachinePool>::namespaced(ctx.client.clone(), &ns);
    let vms_api = Api::<VirtualMachine>::namespaced(ctx.client.clone(), &ns);
    let vmis_api = Api::<VirtualMachineInstance>::namespaced(ctx.client.clone(), &ns);
    let revs_api = Api::<ControllerRevision>::namespaced(ctx.client.clone(), &ns);
    let vms = vms_api.list(&ListParams::default()).await?.items;
    let vmis = vmis_api.list(&ListParams::default()).await?.items;
    let me = pool.metadata.uid.clone().unwrap_or_default();
    let revisions: Vec<ControllerRevision> = revs_api
        .list(&ListParams::default().labels(&format!("{}={name}", api::REVISION_POOL_LABEL)))
        .await?
        .items
        .into_iter()
        .filter(|r| crate::replicaset::controller_uid(&r.metadata) == Some(me.as_str()))
        .collect();
    let node_labels = if uses_node_selectors(&pool) { node_labels(&ctx.client).await? } else { BTreeMap::new() };
    let world =
        World { vms: &vms, vmis: &vmis, revisions: &revisions, node_labels: &node_labels, now: chrono::Utc::now() };
    let mut plan = plan(&pool, &world);

    if plan.add_finalizer && !set_finalizers(&pools, &pool, true).await? {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    if let Some(rev) = &plan.save_revision {
        save_revision(&revs_api, rev).await?;
    }
    for old in &plan.prune_revisions {
        match revs_api.delete(old, &DeleteParams::default()).await {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    crate::adopt::adopt_and_release(&vms_api, &super::owner_ref(&pool), &plan.adopt, &plan.release).await?;
    let mut failure: Option<(&str, String)> = None;
    for vm in &plan.create {
        match vms_api.create(&PostParams::default(), vm).await {
            Ok(made) => {
                let note = format!("Created virtual machine: {}", made.name_any());
                record(&ctx.recorder, &*pool, EventType::Normal, "SuccessfulCreate", "Create", note).await;
            }
            // The index was taken meanwhile: the next pass picks another.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(kube::Error::Api(e)) if e.code >= 400 && e.code < 500 && e.code != 429 => {
                failure = Some(("FailedCreate", e.message.clone()));
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    for (vm, uid, why) in &plan.delete {
        match vms_api.delete(vm, &guarded(uid)).await {
            Ok(_) => record(&ctx.recorder, &*pool, EventType::Normal, "SuccessfulDelete", "Delete", why.clone()).await,
            Err(e) if not_found_or_conflict(&e) => {}
            Err(kube::Error::Api(e)) if e.code >= 400 && e.code < 500 && e.code != 429 => {
                failure = Some(("FailedDelete", e.message.clone()));
            }
            Err(e) => return Err(e.into()),
        }
    }
    for change in &plan.change {
        apply_change(&ctx, &pool, &vms_api, &vmis_api, change).await?;
    }
    if pool.metadata.deletion_timestamp.is_none() {
        let conditions = plan.status.conditions.get_or_insert_with(Vec::new);
        let before = pool.status.as_ref().and_then(|s| s.conditions.as_deref());
        crate::replicaset::set_failure(conditions, before, failure.as_ref());
        if let Some((reason, message)) = &failure {
            let note = format!("Error creating or deleting a VM: {message}");
            record(&ctx.recorder, &*pool, EventType::Warning, reason, "Reconcile", note).await;
        }
        if conditions.is_empty() {
            plan.status.conditions = None;
        }
        crate::runtime::patch_status(&pools, &name, pool.status.as_ref(), &plan.status, None).await?;
    }
    if plan.remove_finalizer {
        set_finalizers(&pools, &pool, false).await?;
    }
    let acted = !(plan.create.is_empty() && plan.delete.is_empty() && plan.change.is_empty() && plan.adopt.is_empty());
    let next = if acted || failure.is_some() {
        Duration::from_secs(1)
    } else {
        plan.requeue_after.unwrap_or(Duration::from_secs(30)).min(Duration::from_secs(30))
    };
    Ok(Action::requeue(next))
}

async fn apply_change(
    ctx: &Ctx,
    pool: &VirtualMachinePool,
    vms: &Api<VirtualMachine>,
    vmis: &Api<VirtualMachineInstance>,
    change: &VmChange,
) -> Result<(), Error> {
    let (reason, note) = match change {
        VmChange::Update { vm, restart_vmi } => {
            match vms.replace(&vm.name_any(), &PostParams::default(), vm).await {
                Ok(_) => {}
                Err(e) if not_found_or_conflict(&e) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            if let Some((vmi, uid)) = restart_vmi {
                match vmis.delete(vmi, &guarded(uid)).await {
                    Ok(_) => {}
                    Err(e) if not_found_or_conflict(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let rev = vm.labels().get(api::REVISION_LABEL).cloned().unwrap_or_default();
            let how = if restart_vmi.is_some() { ", restarting it" } else { "" };
            ("SuccessfulUpdate", format!("Updated virtual machine {} to revision {rev}{how}", vm.name_any()))
        }
        VmChange::Preserve { name, .. } => {
            let patch = json!({"metadata": {"annotations": {PRESERVED_ANNOTATION: "true"}},
                "spec": {"running": null, "runStrategy": "Halted"}});
            match vms.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await {
                Ok(_) => {}
                Err(e) if not_found_or_conflict(&e) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            ("SuccessfulStop", format!("Stopped virtual machine {name}: the pool scaled in, keeping its state"))
        }
        VmChange::Revive { vm } => {
            match vms.replace(&vm.name_any(), &PostParams::default(), vm).await {
                Ok(_) => {}
                Err(e) if not_found_or_conflict(&e) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            ("SuccessfulStart", format!("Started preserved virtual machine {}: the pool scaled out", vm.name_any()))
        }
    };
    record(&ctx.recorder, pool, EventType::Normal, reason, "Update", note).await;
    Ok(())
}

fn uses_node_selectors(pool: &VirtualMachinePool) -> bool {
    let p = &pool.spec;
    let in_scale =
        p.scale_in_strategy.as_ref().and_then(|s| s.proactive.as_ref()).and_then(|p| p.selection_policy.as_ref());
    let in_update =
        p.update_strategy.as_ref().and_then(|s| s.proactive.as_ref()).and_then(|p| p.selection_policy.as_ref());
    [in_scale, in_update]
        .into_iter()
        .flatten()
        .any(|s| s.selectors.as_ref().is_some_and(|s| s.node_selector_requirement_matcher.is_some()))
}

async fn node_labels(client: &Client) -> Result<BTreeMap<String, BTreeMap<String, String>>, kube::Error> {
    let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await?;
    Ok(nodes.items.into_iter().map(|n| (n.name_any(), n.metadata.labels.unwrap_or_default())).collect())
}
