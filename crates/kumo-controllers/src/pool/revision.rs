//! A pool's revision history, as a Deployment keeps it but in ControllerRevisions: each template the pool has had
//! is one revision named `<pool>-<hash of the template>`, numbered in the order they were last in use. Going
//! back to an earlier template (`kumo rollout undo`) reuses its revision with a new number, so VMs made from it
//! count as up to date again.

use super::{name, owner_ref};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kumo_api::pool::{self as api, VirtualMachinePool};
use serde_json::json;
use std::collections::HashSet;

/// Kubernetes' annotation saying why a revision was made (copied from the pool, shown by `rollout history`).
pub const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

/// A stable hash of the pool's template (FNV-1a over its canonical JSON), ten hex digits.
pub fn template_hash(pool: &VirtualMachinePool) -> String {
    let text = serde_json::to_string(&pool.spec.virtual_machine_template).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:010x}", h & 0xff_ffff_ffff)
}

/// The revision holding the pool's current template, numbered `number`.
pub fn revision_for(pool: &VirtualMachinePool, number: i64) -> ControllerRevision {
    let pool_name = name(&pool.metadata);
    let cause = pool.metadata.annotations.as_ref().and_then(|a| a.get(CHANGE_CAUSE)).cloned();
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(format!("{pool_name}-{}", template_hash(pool))),
            namespace: pool.metadata.namespace.clone(),
            labels: Some([(api::REVISION_POOL_LABEL.to_string(), pool_name)].into()),
            annotations: cause.map(|c| [(CHANGE_CAUSE.to_string(), c)].into()),
            owner_references: Some(vec![owner_ref(pool)]),
            ..Default::default()
        },
        data: RawExtension(json!({"spec": {"virtualMachineTemplate": pool.spec.virtual_machine_template}})),
        revision: Some(number),
    }
}

pub struct History {
    /// The current revision must be written (it is new, or an old one brought back with a new number).
    pub save: bool,
    /// Revisions to delete: the oldest beyond the history limit that no VM uses.
    pub prune: Vec<String>,
}

/// The current revision (as it should be stored) and what to do with the history.
pub fn current(
    pool: &VirtualMachinePool,
    revisions: &[ControllerRevision],
    in_use: &HashSet<&str>,
) -> (ControllerRevision, History) {
    let newest = revisions.iter().filter_map(|r| r.revision).max().unwrap_or(0);
    let fresh = revision_for(pool, newest + 1);
    let target = name(&fresh.metadata);
    let (rev, save) = match revisions.iter().find(|r| r.metadata.name.as_deref() == Some(target.as_str())) {
        Some(r) if r.revision == Some(newest) => (r.clone(), false),
        Some(r) => {
            // Brought back (an undo): the same revision, numbered newest again.
            let mut r = r.clone();
            r.revision = Some(newest + 1);
            (r, true)
        }
        None => (fresh, true),
    };
    let limit =
        pool.rollout().revision_history_limit.map_or(api::DEFAULT_REVISION_HISTORY_LIMIT, |l| l.max(0) as usize);
    let mut old: Vec<&ControllerRevision> =
        revisions.iter().filter(|r| r.metadata.name.as_deref() != Some(target.as_str())).collect();
    old.sort_by_key(|r| r.revision.unwrap_or(0));
    let excess = old.len().saturating_sub(limit);
    let prune = old
        .into_iter()
        .filter(|r| !in_use.contains(r.metadata.name.as_deref().unwrap_or_default()))
        .take(excess)
        .map(|r| name(&r.metadata))
        .collect();
    (rev, History { save, prune })
}
