//! The VirtualMachineInstanceReplicaSet controller's decisions: how many VMIs to make or remove so that
//! `replicas` of them run, which ones go first when scaling in, which VMIs it adopts (matching its selector,
//! owned by nobody) or lets go (owned, no longer matching), and its status. Pure: [`run`] applies.
//!
//! A VMI that finished (Failed, Succeeded) is removed and replaced, as KubeVirt's controller does. The plan is
//! made from the controllers' cache of VMIs once it shows the set's own creates and deletes (its expectations,
//! in [`run`]): a cache that lags would make the group make too many.

mod run;

pub use run::run;
pub(crate) use run::set_failure;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kumo_api::kubevirt::{
    Condition, VirtualMachineInstance, VirtualMachineInstanceReplicaSet, VirtualMachineInstanceReplicaSetStatus,
};
use kumo_api::selector::LabelSelector;
use std::cmp::Reverse;

/// At most this many VMIs are made or removed by one pass (the next pass does more), as KubeVirt's burst.
pub const BURST: usize = 250;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// VMIs to make (from the template).
    pub create: Vec<VirtualMachineInstance>,
    /// VMIs to remove, by (name, uid).
    pub delete: Vec<(String, String)>,
    /// Orphan VMIs to take ownership of, by (name, uid).
    pub adopt: Vec<(String, String)>,
    /// Owned VMIs that no longer match, to release, by (name, uid).
    pub release: Vec<(String, String)>,
    pub status: VirtualMachineInstanceReplicaSetStatus,
}

fn owner_ref(rs: &VirtualMachineInstanceReplicaSet) -> OwnerReference {
    OwnerReference {
        api_version: "kubevirt.io/v1".into(),
        kind: "VirtualMachineInstanceReplicaSet".into(),
        name: rs.metadata.name.clone().unwrap_or_default(),
        uid: rs.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The group's selector, as kumo's label selector (the API server checked it on the way in).
pub fn selector(rs: &VirtualMachineInstanceReplicaSet) -> Option<LabelSelector> {
    let v = serde_json::to_value(&rs.spec.selector).ok()?;
    LabelSelector::from_object(&v).ok().filter(|s| !s.is_empty())
}

/// The controlling owner's uid, when a controller owns the object.
pub fn controller_uid(meta: &ObjectMeta) -> Option<&str> {
    meta.owner_references.iter().flatten().find(|o| o.controller == Some(true)).map(|o| o.uid.as_str())
}

fn key(vmi: &VirtualMachineInstance) -> (String, String) {
    (vmi.metadata.name.clone().unwrap_or_default(), vmi.metadata.uid.clone().unwrap_or_default())
}

pub fn is_ready(vmi: &VirtualMachineInstance) -> bool {
    vmi.conditions().iter().any(|c| c.type_ == "Ready" && c.status == "True")
}

/// A new VMI from the group's template: named after the group with a random suffix, owned by it.
pub fn vmi_from_template(rs: &VirtualMachineInstanceReplicaSet) -> VirtualMachineInstance {
    let template = rs.spec.template.metadata.as_ref();
    VirtualMachineInstance {
        metadata: ObjectMeta {
            generate_name: Some(rs.metadata.name.clone().unwrap_or_default()),
            namespace: rs.metadata.namespace.clone(),
            labels: template.and_then(|m| m.labels.clone()),
            annotations: template.and_then(|m| m.annotations.clone()),
            owner_references: Some(vec![owner_ref(rs)]),
            ..Default::default()
        },
        spec: rs.spec.template.spec.clone(),
        status: None,
    }
}

/// Which of `vmis` go first when there are too many: those not yet on a node, then those not Ready, then the
/// youngest (the oldest have served longest and are likeliest to be warm), as Kubernetes' ReplicaSet ranks them.
pub fn scale_in_order(vmis: &mut [&VirtualMachineInstance]) {
    vmis.sort_by_key(|v| {
        let on_node = v.status.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
        let created = v.metadata.creation_timestamp.as_ref().map(|t| t.0);
        (on_node, is_ready(v), Reverse(created), v.metadata.name.clone())
    });
}

/// The `ReplicaPaused` condition of a paused group (`what`: "pool"; `members`: "VMs"), since when it was first
/// paused (`old`: the conditions so far).
pub fn paused_condition(old: Option<&[Condition]>, now: &str, what: &str, members: &str) -> Condition {
    let since = old
        .and_then(|cs| cs.iter().find(|c| c.type_ == "ReplicaPaused"))
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.to_string());
    Condition {
        type_: "ReplicaPaused".into(),
        status: "True".into(),
        reason: Some("Paused".into()),
        message: Some(format!("the {what} is paused: {members} are neither made nor removed")),
        last_probe_time: None,
        last_transition_time: Some(since),
    }
}

/// Decides what the group does, given every VMI in its namespace.
pub fn plan<'a>(
    rs: &VirtualMachineInstanceReplicaSet,
    vmis: impl IntoIterator<Item = &'a VirtualMachineInstance>,
    now: &str,
) -> Plan {
    let mut plan = Plan::default();
    let me = rs.metadata.uid.as_deref().unwrap_or_default();
    let sel = selector(rs);
    let matches =
        |v: &VirtualMachineInstance| sel.as_ref().is_some_and(|s| s.matches_labels(v.metadata.labels.as_ref()));
    let deleting = rs.metadata.deletion_timestamp.is_some();
    let mut mine = Vec::new();
    for v in vmis {
        if v.metadata.deletion_timestamp.is_some() {
            continue;
        }
        match controller_uid(&v.metadata) {
            Some(uid) if uid == me => {
                if matches(v) {
                    mine.push(v);
                } else if !deleting {
                    plan.release.push(key(v));
                }
            }
            None if matches(v) && !deleting => {
                plan.adopt.push(key(v));
                mine.push(v);
            }
            _ => {}
        }
    }
    let (finished, mut active): (Vec<_>, Vec<_>) = mine.into_iter().partition(|v| v.is_final());
    let paused = rs.spec.paused == Some(true);
    let want = rs.replicas().max(0) as usize;
    if !paused && !deleting {
        plan.delete.extend(finished.iter().map(|v| key(v)));
        if active.len() < want {
            let n = (want - active.len()).min(BURST);
            plan.create = (0..n).map(|_| vmi_from_template(rs)).collect();
        } else if active.len() > want {
            scale_in_order(&mut active);
            let n = (active.len() - want).min(BURST);
            plan.delete.extend(active.iter().take(n).map(|v| key(v)));
        }
    }
    let old = rs.status.clone().unwrap_or_default();
    let mut conditions: Vec<Condition> =
        old.conditions.unwrap_or_default().into_iter().filter(|c| c.type_ != "ReplicaPaused").collect();
    if paused {
        conditions.push(paused_condition(
            rs.status.as_ref().and_then(|s| s.conditions.as_deref()),
            now,
            "replica set",
            "VMIs",
        ));
    }
    plan.status = VirtualMachineInstanceReplicaSetStatus {
        replicas: Some(active.len() as i32),
        ready_replicas: Some(active.iter().filter(|v| is_ready(v)).count() as i32),
        label_selector: sel.map(|s| s.to_string()),
        conditions: (!conditions.is_empty()).then_some(conditions),
    };
    plan
}

#[cfg(test)]
mod tests;
