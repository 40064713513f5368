//! Running the controllers with kube-rs: watch, fetch what a plan needs, apply the plan through the API,
//! record events. All decisions live in [`crate::vm`] and [`crate::vmi`].

use crate::{vm, vmi};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use kumo_api::kubevirt::{VirtualMachine, VirtualMachineInstance};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("encoding: {0}")]
    Json(#[from] serde_json::Error),
}

pub struct Ctx {
    client: Client,
    recorder: Recorder,
}

use kumo_api::meta::now_rfc3339 as now;

/// Runs every controller until the process ends.
pub async fn run(client: Client) -> anyhow::Result<()> {
    let reporter = Reporter { controller: "kumo-controllers".into(), instance: std::env::var("HOSTNAME").ok() };
    let ctx = Arc::new(Ctx { client: client.clone(), recorder: Recorder::new(client.clone(), reporter) });
    let vms = Api::<VirtualMachine>::all(client.clone());
    let vmis = Api::<VirtualMachineInstance>::all(client.clone());
    let vm_controller = Controller::new(vms, watcher::Config::default())
        .owns(vmis.clone(), watcher::Config::default())
        .run(reconcile_vm, error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!("vm controller: {e}");
            }
        });
    let vmi_controller = Controller::new(vmis, watcher::Config::default())
        .run(reconcile_vmi, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!("vmi controller: {e}");
            }
        });
    tokio::join!(vm_controller, vmi_controller);
    Ok(())
}

fn error_policy<K>(_obj: Arc<K>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!("reconcile failed: {err}");
    Action::requeue(Duration::from_secs(2))
}

async fn publish(ctx: &Ctx, reference: &ObjectReference, events: &[vm::Event]) {
    for e in events {
        let ev = KEvent {
            type_: if e.warning { EventType::Warning } else { EventType::Normal },
            reason: e.reason.into(),
            note: Some(e.note.clone()),
            action: e.reason.into(),
            secondary: None,
        };
        if let Err(err) = ctx.recorder.publish(&ev, reference).await {
            tracing::warn!("recording event {}: {err}", e.reason);
        }
    }
}

/// Merge-patches `status` from `old` to `new`, nulling keys that disappeared (a merge patch only removes what
/// it names).
async fn patch_status<K, S>(api: &Api<K>, name: &str, old: Option<&S>, new: &S) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let old = old.map(serde_json::to_value).transpose()?.unwrap_or(json!({}));
    let mut patch = serde_json::to_value(new)?;
    if old == patch {
        return Ok(());
    }
    if let (Some(o), Some(p)) = (old.as_object(), patch.as_object_mut()) {
        for k in o.keys() {
            p.entry(k.clone()).or_insert(Value::Null);
        }
    }
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": patch}))).await?;
    Ok(())
}

async fn reconcile_vm(vm_obj: Arc<VirtualMachine>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = vm_obj.namespace().unwrap_or_default();
    let name = vm_obj.name_any();
    let vms = Api::<VirtualMachine>::namespaced(ctx.client.clone(), &ns);
    let vmis = Api::<VirtualMachineInstance>::namespaced(ctx.client.clone(), &ns);
    let vmi = vmis.get_opt(&name).await?;
    let plan = vm::plan(&vm_obj, vmi.as_ref(), &now());
    for action in &plan.actions {
        match action {
            vm::Action::CreateVmi(obj) => match vmis.create(&PostParams::default(), obj).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            },
            vm::Action::DeleteVmi { uid } => {
                let dp = DeleteParams {
                    preconditions: Some(Preconditions { uid: Some(uid.clone()), resource_version: None }),
                    ..Default::default()
                };
                match vmis.delete(&name, &dp).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    publish(&ctx, &vm_obj.object_ref(&()), &plan.events).await;
    if vm_obj.meta().deletion_timestamp.is_none() {
        patch_status(&vms, &name, vm_obj.status.as_ref(), &plan.status).await?;
    }
    // Act again soon after changing something, so e.g. a replaced VMI is recreated once the old one is gone;
    // when a crash-loop backoff ends; otherwise now and then.
    Ok(match plan.requeue_after {
        _ if !plan.actions.is_empty() => Action::requeue(Duration::from_secs(1)),
        Some(after) => Action::requeue(after),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

async fn reconcile_vmi(vmi_obj: Arc<VirtualMachineInstance>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = vmi_obj.namespace().unwrap_or_default();
    let vmis = Api::<VirtualMachineInstance>::namespaced(ctx.client.clone(), &ns);
    let (nodes, used) = if matches!(vmi_obj.phase(), "" | "Pending" | "Scheduling") {
        let nodes = Api::<Node>::all(ctx.client.clone()).list(&ListParams::default()).await?.items;
        let mut used: HashMap<String, u64> = HashMap::new();
        let all = Api::<VirtualMachineInstance>::all(ctx.client.clone()).list(&ListParams::default()).await?;
        for other in &all.items {
            if let Some(n) = other.node_name() {
                *used.entry(n.to_string()).or_default() += vmi::memory_request(other);
            }
        }
        (nodes, used)
    } else {
        (vec![], HashMap::new())
    };
    let plan = vmi::plan(&vmi_obj, &nodes, &used, &now());
    // Status first: the agent waits for it, and an event should describe what was written.
    if let Some(status) = &plan.status {
        patch_status(&vmis, &vmi_obj.name_any(), vmi_obj.status.as_ref(), status).await?;
    }
    publish(&ctx, &vmi_obj.object_ref(&()), &plan.events).await;
    Ok(if plan.retry { Action::requeue(Duration::from_secs(3)) } else { Action::requeue(Duration::from_secs(300)) })
}
