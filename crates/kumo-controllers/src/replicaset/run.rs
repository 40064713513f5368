//! Applying the replica set's plan through the API: creates, deletes, adoption (a merge patch guarded by the
//! VMI's uid and resourceVersion), events and the status.
//!
//! The VMIs come from the controllers' shared cache of every VMI, not a list per reconcile (a list per VMI change is
//! quadratic in a replica set's size). A cache lags its writes, so, as Kubernetes' controllers do, each set
//! remembers what it created and deleted (its expectations) and plans again only once the cache shows them.

use super::plan;
use crate::runtime::not_found_or_conflict;
use futures::StreamExt;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Reporter};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use kumo_api::kubevirt::{Condition, VirtualMachineInstance, VirtualMachineInstanceReplicaSet};
use kumo_events::Recorder;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Ctx {
    client: Client,
    recorder: Recorder,
    vmis: crate::shared::Shared<VirtualMachineInstance>,
    /// Per replica set (by uid): VMIs it created and deleted that the cache may not show yet.
    expected: Mutex<HashMap<String, Expected>>,
}

/// Changes a replica set made that its next plan must see in the cache first.
struct Expected {
    created: HashSet<String>,
    deleted: HashSet<String>,
    at: Instant,
}

/// How long to wait for the cache to show a set's own changes before planning anyway (a create whose answer
/// was lost, an object deleted and gone before the cache saw it). Kubernetes' five minutes: with 30 s, sets
/// whose cache was relisting for minutes at 100,000 VMIs planned from it and made 130,000 VMIs, then deleted
/// the extra ones.
const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(300);

impl Ctx {
    /// Whether the cache shows every change `uid` made (forgetting them once it does, or once they are old).
    fn satisfied(&self, uid: &str, vmis: &[Arc<VirtualMachineInstance>]) -> bool {
        let mut expected = self.expected.lock().expect("lock");
        let Some(e) = expected.get(uid) else { return true };
        // By name, once: a set of a thousand replicas checks a thousand names against a thousand VMIs.
        let names: HashMap<&str, bool> = vmis
            .iter()
            .filter_map(|v| Some((v.metadata.name.as_deref()?, v.metadata.deletion_timestamp.is_none())))
            .collect();
        let seen = e.created.iter().all(|n| names.contains_key(n.as_str()))
            && !e.deleted.iter().any(|n| names.get(n.as_str()) == Some(&true));
        if seen || e.at.elapsed() > EXPECTATIONS_TIMEOUT {
            expected.remove(uid);
            return true;
        }
        false
    }

    /// Notes a create (or a delete) of `name` by `uid` as soon as it succeeded: a reconcile that fails or is
    /// cancelled after some writes must not let the next one plan them again from a cache that lags.
    fn expect(&self, uid: &str, name: &str, created: bool) {
        let mut expected = self.expected.lock().expect("lock");
        let e = expected.entry(uid.to_string()).or_insert_with(|| Expected {
            created: HashSet::new(),
            deleted: HashSet::new(),
            at: Instant::now(),
        });
        e.at = Instant::now();
        if created { &mut e.created } else { &mut e.deleted }.insert(name.to_string());
    }
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
pub async fn run(client: Client, shared: crate::shared::Shared<VirtualMachineInstance>) {
    let reporter = Reporter { controller: "virtualmachineinstancereplicaset-controller".into(), instance: None };
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        vmis: shared.clone(),
        expected: Default::default(),
    });
    crate::reflect::slim_controller(
        Api::<VirtualMachineInstanceReplicaSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(crate::runtime::concurrency(crate::runtime::CONCURRENCY))
    // Its status follows its VMIs within a second; reconciled once per change of each, a set of a thousand
    // starting VMIs was read whole and its status written thousands of times.
    .reconcile_on(shared.owner_changes(Duration::from_secs(1)))
    .run(
        |rs, ctx| async move { crate::runtime::bounded(&*rs.clone(), reconcile(rs, ctx)).await },
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
    ctx.vmis.synced().await;
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    // Its own VMIs and the orphans it may adopt: the plan looks at no others.
    let vmis = ctx.vmis.owned_or_orphaned(&uid, &ns);
    if !ctx.satisfied(&uid, &vmis) {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let mut plan = plan(&rs, vmis.iter().map(|v| &**v), &kumo_api::meta::now_rfc3339());
    let mut failure: Option<(&str, String)> = None;
    crate::adopt::adopt_and_release(&api, &super::owner_ref(&rs), &plan.adopt, &plan.release).await?;
    let pp = PostParams::default();
    let created = crate::runtime::slow_start(&plan.create, |vmi| api.create(&pp, vmi)).await;
    for made in created {
        match made {
            Ok(made) => {
                ctx.expect(&uid, &made.name_any(), true);
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
    for (name, vmi_uid) in &plan.delete {
        let dp = DeleteParams {
            preconditions: Some(Preconditions { uid: Some(vmi_uid.clone()), resource_version: None }),
            ..Default::default()
        };
        match api.delete(name, &dp).await {
            Ok(_) => {
                ctx.expect(&uid, name, false);
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
