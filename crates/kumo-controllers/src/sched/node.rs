//! What a node alone decides: whether it is Ready and schedulable, whether the VMI tolerates its taints,
//! matches it by `nodeSelector` and node affinity, and has room; and the node's share of the score.

use super::{NodeInfo, Request};
use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, NodeSelectorTerm, Taint, Toleration};
use kumo_api::kubevirt::VirtualMachineInstance;
use kumo_api::quantity;
use std::collections::BTreeMap;

/// A cordoned node carries this taint in Kubernetes' eyes; a VMI tolerating it may still go there.
const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// Why the node cannot take the VMI (several reasons only for resources, as kube-scheduler reports them), or
/// None when it can.
pub(super) fn filter(vmi: &VirtualMachineInstance, n: &NodeInfo, want: Request) -> Option<Vec<String>> {
    let one = |r: &str| Some(vec![r.to_string()]);
    if !ready(n.node) {
        return one("node(s) were not ready");
    }
    let tolerations = vmi.spec.tolerations.as_deref().unwrap_or_default();
    let cordoned = n.node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
    let cordon = Taint { key: UNSCHEDULABLE_TAINT.into(), effect: "NoSchedule".into(), ..Default::default() };
    if cordoned && !tolerations.iter().any(|t| tolerates(t, &cordon)) {
        return one("node(s) were unschedulable");
    }
    let hard = |t: &&Taint| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute");
    if let Some(t) = taints(n.node).iter().filter(hard).find(|t| !tolerations.iter().any(|tol| tolerates(tol, t))) {
        return one(&format!("node(s) had untolerated taint {{{}: {}}}", t.key, t.value.as_deref().unwrap_or("")));
    }
    if !selector_matches(vmi, n.node) {
        return one("node(s) didn't match Pod's node affinity/selector");
    }
    let mut short = vec![];
    let alloc = n.alloc;
    if n.used.cpu_milli.saturating_add(want.cpu_milli) > alloc.cpu_milli {
        short.push("Insufficient cpu".to_string());
    }
    if n.used.memory.saturating_add(want.memory) > alloc.memory {
        short.push("Insufficient memory".to_string());
    }
    // Only when the Node reports a pod limit: each VMI is one pod in KubeVirt.
    if allocatable_pods(n.node).is_some_and(|max| n.count as u64 >= max) {
        short.push("Too many pods".to_string());
    }
    (!short.is_empty()).then_some(short)
}

pub(crate) fn ready(n: &Node) -> bool {
    let conds = n.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    conds.iter().find(|c| c.type_ == "Ready").is_some_and(|c| c.status == "True")
}

fn taints(n: &Node) -> &[Taint] {
    n.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or_default()
}

/// Kubernetes' rule: an empty effect or key in the toleration matches any; `Exists` ignores the value.
pub(super) fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    let effect = t.effect.as_deref().unwrap_or("");
    let key = t.key.as_deref().unwrap_or("");
    if !effect.is_empty() && effect != taint.effect || !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("") {
        "" | "Equal" => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        "Exists" => true,
        _ => false,
    }
}

/// `PreferNoSchedule` taints the VMI does not tolerate (fewer is better).
pub(super) fn untolerated_soft_taints(vmi: &VirtualMachineInstance, n: &NodeInfo) -> i64 {
    let tolerations = vmi.spec.tolerations.as_deref().unwrap_or_default();
    let soft = taints(n.node).iter().filter(|t| t.effect == "PreferNoSchedule");
    soft.filter(|t| !tolerations.iter().any(|tol| tolerates(tol, t))).count() as i64
}

fn selector_matches(vmi: &VirtualMachineInstance, node: &Node) -> bool {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let selector_ok =
        vmi.spec.node_selector.as_ref().is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let required = vmi
        .spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| na.required_during_scheduling_ignored_during_execution.as_ref());
    // Terms are ORed; requirements within a term are ANDed.
    let affinity_ok = required.is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, node)));
    selector_ok && affinity_ok
}

/// A node selector term; an empty one matches no node (as in Kubernetes).
pub(crate) fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.metadata.labels.as_ref();
    let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    // `metadata.name` is the one field Kubernetes lets a node selector match.
    let field = |k: &str| if k == "metadata.name" { node.metadata.name.as_deref() } else { None };
    exprs.iter().all(|e| requirement_matches(e, label(&e.key)))
        && fields.iter().all(|e| requirement_matches(e, field(&e.key)))
}

fn requirement_matches(e: &NodeSelectorRequirement, have: Option<&str>) -> bool {
    let values: Vec<&str> = e.values.iter().flatten().map(String::as_str).collect();
    match e.operator.as_str() {
        "In" => have.is_some_and(|h| values.contains(&h)),
        "NotIn" => have.is_none_or(|h| !values.contains(&h)),
        "Exists" => have.is_some(),
        "DoesNotExist" => have.is_none(),
        op @ ("Gt" | "Lt") => {
            let (Some(h), Some(v)) =
                (have.and_then(|h| h.parse::<i64>().ok()), values.first().and_then(|v| v.parse::<i64>().ok()))
            else {
                return false;
            };
            if op == "Gt" {
                h > v
            } else {
                h < v
            }
        }
        _ => false,
    }
}

/// Sum of the weights of the preferred node-affinity terms the node matches.
pub(super) fn preferred_affinity(vmi: &VirtualMachineInstance, n: &NodeInfo) -> i64 {
    let preferred = vmi
        .spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| na.preferred_during_scheduling_ignored_during_execution.as_deref())
        .unwrap_or_default();
    preferred.iter().filter(|p| term_matches(&p.preference, n.node)).map(|p| i64::from(p.weight)).sum()
}

fn allocatable_quantity(n: &Node, name: &str, milli: bool) -> Option<u64> {
    let q = n.status.as_ref()?.allocatable.as_ref()?.get(name)?;
    if milli { quantity::milli(&q.0) } else { quantity::parse(&q.0) }.ok()
}

/// cpu and memory the node offers; absent counts as none, as in Kubernetes.
pub(super) fn allocatable(n: &Node) -> Request {
    Request {
        cpu_milli: allocatable_quantity(n, "cpu", true).unwrap_or(0),
        memory: allocatable_quantity(n, "memory", false).unwrap_or(0),
    }
}

fn allocatable_pods(n: &Node) -> Option<u64> {
    allocatable_quantity(n, "pods", false)
}

/// kube-scheduler's LeastAllocated: the mean over cpu and memory of the share left free after placing the VMI,
/// 0–100. It spreads VMIs over nodes in proportion to their size.
pub(super) fn least_allocated(n: &NodeInfo, want: Request) -> i64 {
    let alloc = n.alloc;
    let free = |total: u64, used: u64, more: u64| -> i64 {
        if total == 0 {
            return 0;
        }
        let after = used.saturating_add(more).min(total);
        ((total - after) as u128 * 100 / total as u128) as i64
    };
    (free(alloc.cpu_milli, n.used.cpu_milli, want.cpu_milli) + free(alloc.memory, n.used.memory, want.memory)) / 2
}
