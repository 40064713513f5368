//! Applying the replica set's plan through the API: a fresh list of the namespace's VMIs, creates, deletes,
//! adoption (a merge patch guarded by the VMI's uid and resourceVersion), events and the status.

use super::plan;
use crate::runtime::not_found_or_conflict;
use futures::StreamExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use kumo_api::kubevirt::{Condition, VirtualMachineInstance, VirtualMachineInstanceReplicaSet};
use std::sync::Arc;
use std::time::Duration;

struct Ctx {
    client: Client,
    recorder: Recorder,
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Error(#[from] kube::Error);

/// Sets (or clears) the `ReplicaFailure` condition for `failure` (reason, message), keeping its first time.
pub(crate) fn set_failure(
    conditions: &mut Vec<Condition>,
    before: Option<&[Condition]>,
    failure: Option<&(&str, String)>,
) {
    let old_failure = before.and_then(|cs| cs.iter().find(|c| c.type_ == "ReplicaFailure"));
    conditions.retain(|c| c.type_ != "ReplicaFailure");
    if let Some((reason, message)) = failure {
        let since = old_failure.and_then(|c| c.last_transition_time.clone());
        conditions.push(Condition {
            type_: "ReplicaFailure".into(),
            status: "True".into(),
            reason: Some(reason.to_string()),
            message: Some(message.clone()),
            last_probe_time: None,
            last_transition_time: since.or_else(|| Some(kumo_api::meta::now_rfc3339())),
        });
    }
}

/// Runs the controller until the process ends.
pub async fn run(client: Client) {
    let reporter = Reporter { controller: "virtualmachineinstancereplicaset-controller".into(), instance: None };
    let ctx = Arc::new(Ctx { recorder: Recorder::new(client.clone(), reporter), client: client.clone() });
    Controller::new(Api::<VirtualMachineInstanceReplicaSet>::all(client.clone()), watcher::Config::default())
        .owns(Api::<VirtualMachineInstance>::all(client), watcher::Config::default())
        .run(
            reconcile,
            |_, err: &Error, _| {
                tracing::warn!("replica set controller: {err}");
                Action::requeue(Duration::from_secs(2))
            },
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

async fn reconcile(rs: Arc<VirtualMachineInstanceReplicaSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = rs.namespace().unwrap_or_default();
    let api = Api::<VirtualMachineInstance>::namespaced(ctx.client.clone(), &ns);
    let vmis = api.list(&ListParams::default()).await?.items;
    let mut plan = plan(&rs, &vmis, &kumo_api::meta::now_rfc3339());
    let mut failure: Option<(&str, String)> = None;
    crate::runtime::adopt_and_release(&api, &super::owner_ref(&rs), &plan.adopt, &plan.release).await?;
    for vmi in &plan.create {
        match api.create(&PostParams::default(), vmi).await {
            Ok(made) => {
                let note = format!("Created virtual machine instance: {}", made.name_any());
                crate::runtime::record(&ctx.recorder, &*rs, EventType::Normal, "SuccessfulCreate", "Create", note)
                    .await;
            }
            Err(kube::Error::Api(e)) if e.code >= 400 && e.code < 500 && e.code != 409 && e.code != 429 => {
                // Refused (the template no longer passes admission, a quota): say so and try again later.
                failure = Some(("FailedCreate", e.message.clone()));
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    for (name, uid) in &plan.delete {
        let dp = DeleteParams {
            preconditions: Some(Preconditions { uid: Some(uid.clone()), resource_version: None }),
            ..Default::default()
        };
        match api.delete(name, &dp).await {
            Ok(_) => {
                let note = format!("Deleted virtual machine instance: {name}");
                crate::runtime::record(&ctx.recorder, &*rs, EventType::Normal, "SuccessfulDelete", "Delete", note)
                    .await;
            }
            Err(e) if not_found_or_conflict(&e) => {}
            Err(kube::Error::Api(e)) if e.code >= 400 && e.code < 500 && e.code != 429 => {
                failure = Some(("FailedDelete", e.message.clone()));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let conditions = plan.status.conditions.get_or_insert_with(Vec::new);
    let before = rs.status.as_ref().and_then(|s| s.conditions.as_deref());
    set_failure(conditions, before, failure.as_ref());
    if let Some((reason, message)) = &failure {
        let note = format!("Error creating or deleting a VMI: {message}");
        crate::runtime::record(&ctx.recorder, &*rs, EventType::Warning, reason, "Reconcile", note).await;
    }
    if conditions.is_empty() {
        plan.status.conditions = None;
    }
    if rs.metadata.deletion_timestamp.is_none() {
        let rss = Api::<VirtualMachineInstanceReplicaSet>::namespaced(ctx.client.clone(), &ns);
        crate::runtime::patch_status(&rss, &rs.name_any(), rs.status.as_ref(), &plan.status, None).await?;
    }
    let acted = !(plan.create.is_empty() && plan.delete.is_empty() && plan.adopt.is_empty());
    // Soon after acting (to see the result) or failing; otherwise now and then, which also finds orphans.
    Ok(Action::requeue(Duration::from_secs(if acted || failure.is_some() { 1 } else { 30 })))
}
