//! Which of a pool's VMs go first when it scales in or updates: KubeVirt's `selectionPolicy`. VMs its
//! `selectors` match (labels of the VM, and labels of the node its VMI runs on) come first; then `sortPolicy`
//! orders them: AscendingOrder / DescendingOrder by index, Oldest / Newest by creation, or Random. Without a
//! policy, VMs that are not Ready go first, then Random.

use super::{index_of, is_ready, name, World};
use kumo_api::kubevirt::VirtualMachine;
use kumo_api::pool::{NodeSelectorRequirement, SelectionPolicy, VirtualMachinePool};
use kumo_api::selector::LabelSelector;
use std::cmp::Reverse;
use std::collections::BTreeMap;

/// A random but stable rank for a VM (its uid hashed), so a pass and the next agree.
fn random_rank(vm: &VirtualMachine) -> u64 {
    let uid = vm.metadata.uid.as_deref().unwrap_or_default();
    uid.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

fn requirement_matches(r: &NodeSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let v = labels.get(&r.key);
    let values = r.values.as_deref().unwrap_or_default();
    let num = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => v.is_some_and(|v| values.contains(v)),
        "NotIn" => v.is_none_or(|v| !values.contains(v)),
        "Exists" => v.is_some(),
        "DoesNotExist" => v.is_none(),
        "Gt" => v.and_then(|v| num(v)).zip(values.first().and_then(|x| num(x))).is_some_and(|(a, b)| a > b),
        "Lt" => v.and_then(|v| num(v)).zip(values.first().and_then(|x| num(x))).is_some_and(|(a, b)| a < b),
        _ => false,
    }
}

/// Whether the policy's selectors pick `vm` (both, when both are given).
fn selected(vm: &VirtualMachine, policy: &SelectionPolicy, w: &World) -> bool {
    let Some(s) = &policy.selectors else { return false };
    let by_label = s.label_selector.as_ref().map(|ls| {
        let v = serde_json::to_value(ls).unwrap_or_default();
        LabelSelector::from_object(&v).is_ok_and(|sel| sel.matches_labels(vm.metadata.labels.as_ref()))
    });
    let by_node = s.node_selector_requirement_matcher.as_ref().map(|reqs| {
        let vmi = w.vmis.iter().find(|i| i.metadata.name == vm.metadata.name);
        let node = vmi.and_then(|i| i.status.as_ref()).and_then(|s| s.node_name.as_deref());
        let labels = node.and_then(|n| w.node_labels.get(n));
        labels.is_some_and(|l| reqs.iter().all(|r| requirement_matches(r, l)))
    });
    match (by_label, by_node) {
        (None, None) => false,
        (a, b) => a.unwrap_or(true) && b.unwrap_or(true),
    }
}

/// Orders `vms` so that those to act on first come first.
pub fn order(vms: &mut [&VirtualMachine], pool: &VirtualMachinePool, policy: Option<&SelectionPolicy>, w: &World) {
    let pool_name = name(&pool.metadata);
    let index = |v: &VirtualMachine| index_of(&pool_name, &name(&v.metadata)).unwrap_or(u32::MAX);
    let created = |v: &VirtualMachine| v.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let Some(policy) = policy else {
        vms.sort_by_key(|v| (is_ready(v), random_rank(v)));
        return;
    };
    match policy.sort_policy.as_deref() {
        Some("AscendingOrder") => vms.sort_by_key(|v| index(v)),
        Some("DescendingOrder") => vms.sort_by_key(|v| Reverse(index(v))),
        Some("Oldest") => vms.sort_by_key(|v| (created(v), index(v))),
        Some("Newest") => vms.sort_by_key(|v| (Reverse(created(v)), Reverse(index(v)))),
        _ => vms.sort_by_key(|v| random_rank(v)),
    }
    // Stable: the selected ones first, each group in the sort policy's order.
    vms.sort_by_key(|v| !selected(v, policy, w));
}
