//! A pool's status, with kumo's rollout status and `Progressing` condition as a Deployment reports them: True
//! while VMs get updated or become available (`lastProbeTime` is the last time that happened), True with reason
//! `NewRevisionAvailable` once every VM runs the current template, and False with `ProgressDeadlineExceeded`
//! when nothing moved for `progressDeadlineSeconds`.

use chrono::{DateTime, Utc};
use kumo_api::conditions;
use kumo_api::kubevirt::Condition;
use kumo_api::pool::{self as api, KumoRolloutStatus, VirtualMachinePool, VirtualMachinePoolStatus};
use std::time::Duration;

pub const PROGRESSING: &str = "Progressing";
pub const DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
pub const COMPLETE: &str = "NewRevisionAvailable";

/// What the pool's VMs came to in this pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RolloutState {
    pub replicas: i32,
    pub ready: i32,
    pub updated: i32,
    /// Updated and available (Ready for minReadySeconds).
    pub available: i32,
    pub want: i32,
}

fn parse(t: Option<&str>) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(t?).ok().map(|t| t.with_timezone(&Utc))
}

/// The pool's status, and when to look again for the progress deadline.
pub fn status(
    pool: &VirtualMachinePool,
    s: &RolloutState,
    revision: &str,
    label_selector: Option<String>,
    paused: bool,
    now: DateTime<Utc>,
) -> (VirtualMachinePoolStatus, Option<Duration>) {
    let name = pool.metadata.name.clone().unwrap_or_default();
    let old = pool.status.clone().unwrap_or_default();
    let prev = old.kumo.clone().unwrap_or_default();
    let now_s = now.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut conds = old.conditions.clone().unwrap_or_default();
    conds.retain(|c| c.type_ != "ReplicaPaused");
    if paused {
        conds.push(crate::replicaset::paused_condition(old.conditions.as_deref(), &now_s, "pool", "VMs"));
    }
    let complete = s.updated == s.want && s.available == s.want && s.replicas == s.want;
    let progressed = prev.updated_replicas != Some(s.updated)
        || prev.available_replicas != Some(s.available)
        || old.replicas != Some(s.replicas)
        || prev.update_revision.as_deref() != Some(revision);
    let was = conds.iter().find(|c| c.type_ == PROGRESSING).cloned();
    let deadline = Duration::from_secs(
        pool.rollout().progress_deadline_seconds.unwrap_or(api::DEFAULT_PROGRESS_DEADLINE_SECONDS).max(1) as u64,
    );
    let mut wake = None;
    let mut set = |status: &str, reason: &str, message: String, probe: Option<String>| {
        conditions::set(&mut conds, PROGRESSING, status, reason, &message, &now_s);
        if let Some(c) = conds.iter_mut().find(|c| c.type_ == PROGRESSING) {
            c.last_probe_time = probe;
        }
    };
    let last_progress = was.as_ref().and_then(|c| c.last_probe_time.clone());
    if paused {
        set("Unknown", "PoolPaused", format!("VirtualMachinePool \"{name}\" is paused"), last_progress);
    } else if complete {
        let probe = if progressed { Some(now_s.clone()) } else { last_progress.or(Some(now_s.clone())) };
        set("True", COMPLETE, format!("VirtualMachinePool \"{name}\" has successfully progressed."), probe);
    } else if !progressed && was.as_ref().is_some_and(|c| c.reason.as_deref() == Some(DEADLINE_EXCEEDED)) {
        // Stalled: it stays so until something moves.
    } else if progressed || was.as_ref().is_none_or(|c| c.reason.as_deref() == Some(COMPLETE) || c.status != "True") {
        let message = format!(
            "VirtualMachinePool \"{name}\" is progressing: {} of {} VMs updated, {} available",
            s.updated, s.want, s.available
        );
        set("True", "PoolProgressing", message, Some(now_s.clone()));
        wake = Some(deadline);
    } else {
        let since = parse(last_progress.as_deref()).unwrap_or(now);
        let idle = (now - since).to_std().unwrap_or_default();
        if idle >= deadline {
            let message = format!("VirtualMachinePool \"{name}\" has timed out progressing.");
            set("False", DEADLINE_EXCEEDED, message, last_progress);
        } else {
            wake = Some(deadline - idle + Duration::from_secs(1));
        }
    }
    let current = if complete { Some(revision.to_string()) } else { prev.current_revision.or(Some(revision.into())) };
    let status = VirtualMachinePoolStatus {
        replicas: Some(s.replicas),
        ready_replicas: Some(s.ready),
        conditions: (!conds.is_empty()).then_some(conds),
        label_selector,
        kumo: Some(KumoRolloutStatus {
            observed_generation: pool.metadata.generation,
            updated_replicas: Some(s.updated),
            available_replicas: Some(s.available),
            current_revision: current,
            update_revision: Some(revision.into()),
        }),
    };
    (status, wake)
}

fn condition<'a>(pool: &'a VirtualMachinePool, type_: &str) -> Option<&'a Condition> {
    pool.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_)
}

/// For `kumo rollout status`: Ok(true) when done, Ok(false) while going on (with what it waits for in
/// `waiting`), Err when stalled.
pub fn rollout_done(pool: &VirtualMachinePool, waiting: &mut String) -> Result<bool, String> {
    let name = pool.metadata.name.clone().unwrap_or_default();
    let st = pool.status.clone().unwrap_or_default();
    let k = st.kumo.clone().unwrap_or_default();
    if k.observed_generation < pool.metadata.generation {
        *waiting = "Waiting for the pool's new template to be observed...".into();
        return Ok(false);
    }
    if let Some(c) = condition(pool, PROGRESSING) {
        if c.reason.as_deref() == Some(DEADLINE_EXCEEDED) {
            return Err(format!("vmpool \"{name}\" exceeded its progress deadline"));
        }
    }
    let want = pool.replicas();
    let (updated, available, total) =
        (k.updated_replicas.unwrap_or(0), k.available_replicas.unwrap_or(0), st.replicas.unwrap_or(0));
    *waiting = if updated < want {
        format!("Waiting for vmpool \"{name}\" rollout to finish: {updated} out of {want} new VMs have been updated...")
    } else if total > updated {
        format!(
            "Waiting for vmpool \"{name}\" rollout to finish: {} old VMs are pending termination...",
            total - updated
        )
    } else if available < updated {
        format!(
            "Waiting for vmpool \"{name}\" rollout to finish: {available} of {updated} updated VMs are available..."
        )
    } else {
        String::new()
    };
    Ok(waiting.is_empty())
}
