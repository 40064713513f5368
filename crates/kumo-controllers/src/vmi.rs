//! The VirtualMachineInstance controller's decisions: move a new VMI through Pending and Scheduling, and pick
//! the node it runs on (Ready, schedulable, matching nodeSelector and required node affinity, tolerating
//! taints, with memory to spare). Pure: no I/O.

use crate::vm::Event;
use k8s_openapi::api::core::v1::{Node, NodeSelectorTerm};
use kumo_api::conditions;
use kumo_api::kubevirt::{VirtualMachineInstance, VirtualMachineInstanceStatus};
use kumo_api::quantity;
use std::collections::{BTreeMap, HashMap};

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The VMI's new status, when it changes.
    pub status: Option<VirtualMachineInstanceStatus>,
    pub events: Vec<Event>,
    /// Try again later (e.g. no node fits yet).
    pub retry: bool,
}

/// Memory a VMI asks for: `resources.requests.memory`, else `memory.guest`, else 0.
pub fn memory_request(vmi: &VirtualMachineInstance) -> u64 {
    let domain = &vmi.spec.domain;
    let requested = domain.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get("memory"));
    requested
        .or(domain.memory.as_ref().and_then(|m| m.guest.as_ref()))
        .and_then(|q| quantity::parse(&q.0).ok())
        .unwrap_or(0)
}

/// `used`: memory already requested by VMIs on each node.
pub fn plan(vmi: &VirtualMachineInstance, nodes: &[Node], used: &HashMap<String, u64>, now: &str) -> Plan {
    let mut p = Plan { status: None, events: vec![], retry: false };
    if vmi.metadata.deletion_timestamp.is_some() {
        return p;
    }
    let phase = vmi.phase();
    if !matches!(phase, "" | "Pending" | "Scheduling") {
        return p;
    }
    // A new VMI moves Pending → Scheduling → Scheduled in one write when a node fits (each transition is
    // still recorded): fewer round trips between creation and the agent starting the guest.
    // Entering Pending and Scheduling is an event too (Scheduled has its own, with the node).
    let through = |to: &str, events: &mut Vec<Event>| -> VirtualMachineInstanceStatus {
        const ORDER: [&str; 3] = ["Pending", "Scheduling", "Scheduled"];
        let from = ORDER.iter().position(|p| *p == phase).map_or(0, |i| i + 1);
        let until = ORDER.iter().position(|p| *p == to).expect("a scheduling phase");
        let mut st = vmi.status.clone().unwrap_or_default();
        for step in ORDER.iter().take(until + 1).skip(from) {
            st.set_phase(step, now);
            let note = match *step {
                "Pending" => "The VirtualMachineInstance was accepted",
                "Scheduling" => "Looking for a node to run the VirtualMachineInstance",
                _ => continue,
            };
            events.push(Event { warning: false, reason: step, note: note.into() });
        }
        st
    };
    match pick_node(vmi, nodes, used) {
        Ok(node) => {
            let mut st = through("Scheduled", &mut p.events);
            st.node_name = Some(node.clone());
            let mut conds = st.conditions.take().unwrap_or_default();
            conditions::set(&mut conds, "PodScheduled", "True", "", "", now);
            st.conditions = Some(conds);
            p.status = Some(st);
            p.events.push(Event {
                warning: false,
                reason: "Scheduled",
                note: format!("Successfully assigned to node {node}"),
            });
        }
        Err(why) => {
            p.retry = true;
            let same = vmi
                .conditions()
                .iter()
                .find(|c| c.type_ == "PodScheduled")
                .is_some_and(|c| c.status == "False" && c.message.as_deref() == Some(why.as_str()));
            if !same || phase != "Scheduling" {
                let mut st = through("Scheduling", &mut p.events);
                let mut conds = st.conditions.take().unwrap_or_default();
                conditions::set(&mut conds, "PodScheduled", "False", "Unschedulable", &why, now);
                st.conditions = Some(conds);
                p.status = Some(st);
                p.events.push(Event { warning: true, reason: "FailedScheduling", note: why });
            }
        }
    }
    p
}

fn node_ready(n: &Node) -> bool {
    let conds = n.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    conds.iter().find(|c| c.type_ == "Ready").is_some_and(|c| c.status == "True")
}

fn pick_node(vmi: &VirtualMachineInstance, nodes: &[Node], used: &HashMap<String, u64>) -> Result<String, String> {
    let want = memory_request(vmi);
    let mut reasons: HashMap<&'static str, usize> = HashMap::new();
    let mut best: Option<(u64, String)> = None;
    for n in nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        let free = n
            .status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref())
            .and_then(|a| a.get("memory"))
            .and_then(|q| quantity::parse(&q.0).ok())
            .map(|a| a.saturating_sub(*used.get(&name).unwrap_or(&0)));
        let why = if !node_ready(n) {
            Some("node(s) were not ready")
        } else if n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
            Some("node(s) were unschedulable")
        } else if !selector_matches(vmi, n) {
            Some("node(s) didn't match Pod's node affinity/selector")
        } else if !tolerates(vmi, n) {
            Some("node(s) had untolerated taint")
        } else if free.is_some_and(|f| f < want) {
            Some("Insufficient memory")
        } else {
            None
        };
        match why {
            Some(r) => *reasons.entry(r).or_default() += 1,
            None => {
                let score = free.unwrap_or(u64::MAX);
                if best.as_ref().is_none_or(|(b, _)| score > *b) {
                    best = Some((score, name));
                }
            }
        }
    }
    best.map(|(_, n)| n).ok_or_else(|| {
        let mut parts: Vec<String> = reasons.iter().map(|(r, c)| format!("{c} {r}")).collect();
        parts.sort();
        format!("0/{} nodes are available: {}.", nodes.len(), parts.join(", "))
    })
}

fn selector_matches(vmi: &VirtualMachineInstance, node: &Node) -> bool {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let selector_ok =
        vmi.spec.node_selector.as_ref().is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let terms = vmi
        .spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| na.required_during_scheduling_ignored_during_execution.as_ref())
        .map(|required| &required.node_selector_terms);
    // Terms are ORed; expressions within a term are ANDed.
    let affinity_ok = terms.is_none_or(|ts| ts.is_empty() || ts.iter().any(|t| term_matches(t, labels)));
    selector_ok && affinity_ok
}

fn term_matches(term: &NodeSelectorTerm, labels: &BTreeMap<String, String>) -> bool {
    term.match_expressions.iter().flatten().all(|e| {
        let have = labels.get(&e.key).map(String::as_str);
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
    })
}

/// An unset field matches as `""`, as in Kubernetes' taint rules.
fn or_empty(f: &Option<String>) -> &str {
    f.as_deref().unwrap_or("")
}

fn tolerates(vmi: &VirtualMachineInstance, node: &Node) -> bool {
    let tolerations = vmi.spec.tolerations.as_deref().unwrap_or_default();
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or_default();
    taints.iter().all(|taint| {
        let effect = taint.effect.as_str();
        if effect == "PreferNoSchedule" {
            return true;
        }
        tolerations.iter().any(|t| {
            let (key, op) = (or_empty(&t.key), or_empty(&t.operator));
            let key_ok = key.is_empty() && op == "Exists" || key == taint.key;
            let value_ok = op == "Exists" || or_empty(&t.value) == or_empty(&taint.value);
            let effect_ok = or_empty(&t.effect).is_empty() || or_empty(&t.effect) == effect;
            key_ok && value_ok && effect_ok
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).expect("a valid object")
    }

    fn node_json(name: &str, ready: bool) -> Value {
        json!({"metadata": {"name": name, "labels": {"zone": "a"}},
            "status": {"allocatable": {"memory": "1Gi"}, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
    }

    fn node(name: &str, ready: bool) -> Node {
        typed(node_json(name, ready))
    }

    fn vmi_json(phase: &str) -> Value {
        json!({"metadata": {"name": "v"}, "spec": {"domain": {"memory": {"guest": "256Mi"}}}, "status": {"phase": phase}})
    }

    fn vmi(phase: &str) -> VirtualMachineInstance {
        typed(vmi_json(phase))
    }

    fn phase(p: &Plan) -> Option<&str> {
        p.status.as_ref().and_then(|s| s.phase.as_deref())
    }

    fn node_name(p: &Plan) -> Option<&str> {
        p.status.as_ref().and_then(|s| s.node_name.as_deref())
    }

    #[test]
    fn phases_advance_to_scheduled() {
        let nodes = vec![node("n1", true)];
        let used = HashMap::new();
        // A new VMI goes straight to Scheduled, recording every transition.
        let p = plan(&typed(json!({"metadata": {}, "spec": {}})), &nodes, &used, "t");
        assert_eq!(phase(&p), Some("Scheduled"));
        let st = p.status.as_ref().unwrap();
        let phases: Vec<&str> =
            st.phase_transition_timestamps.iter().flatten().map(|t| t.phase.as_deref().unwrap()).collect();
        assert_eq!(phases, vec!["Pending", "Scheduling", "Scheduled"]);
        let reasons: Vec<&str> = p.events.iter().map(|e| e.reason).collect();
        assert_eq!(reasons, vec!["Pending", "Scheduling", "Scheduled"], "an event per transition");
        assert_eq!(phase(&plan(&vmi("Pending"), &nodes, &used, "t")), Some("Scheduled"));
        // Without a node it waits in Scheduling.
        assert_eq!(phase(&plan(&typed(json!({"metadata": {}})), &[], &used, "t")), Some("Scheduling"));
        let p = plan(&vmi("Scheduling"), &nodes, &used, "t");
        assert_eq!((phase(&p), node_name(&p)), (Some("Scheduled"), Some("n1")));
        assert_eq!(p.events.iter().map(|e| e.reason).collect::<Vec<_>>(), vec!["Scheduled"]);
        assert!(plan(&vmi("Running"), &nodes, &used, "t").status.is_none());
    }

    #[test]
    fn filters_explain_why_nothing_fits() {
        let mut tainted = node_json("t", true);
        tainted["spec"] = json!({"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]});
        let nodes = vec![node("down", false), typed(tainted), node("full", true)];
        let used = HashMap::from([("full".to_string(), 900u64 << 20)]);
        let p = plan(&vmi("Scheduling"), &nodes, &used, "t");
        assert!(p.retry);
        let msg = p.events.last().unwrap().note.clone();
        assert!(
            msg.starts_with("0/3 nodes are available")
                && msg.contains("untolerated taint")
                && msg.contains("Insufficient memory")
                && msg.contains("not ready"),
            "{msg}"
        );
        let mut tolerant = vmi_json("Scheduling");
        tolerant["spec"]["tolerations"] =
            json!([{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]);
        assert_eq!(node_name(&plan(&typed(tolerant), &nodes, &used, "t")), Some("t"));
        let mut picky = vmi_json("Scheduling");
        picky["spec"]["nodeSelector"] = json!({"zone": "b"});
        assert!(plan(&typed(picky), &[node("n", true)], &HashMap::new(), "t").retry);
        let mut affine = vmi_json("Scheduling");
        affine["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}});
        assert_eq!(node_name(&plan(&typed(affine), &[node("n", true)], &HashMap::new(), "t")), Some("n"));
    }
}
