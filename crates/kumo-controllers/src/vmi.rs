//! The VirtualMachineInstance controller's decisions: move a new VMI through Pending and Scheduling, and pick
//! the node it runs on (Ready, schedulable, matching nodeSelector and required node affinity, tolerating
//! taints, with memory to spare). Pure: no I/O.

use crate::vm::Event;
use kumo_api::conditions;
use kumo_api::kubevirt::status_with_phase;
use kumo_api::quantity;
use serde_json::{json, Value};
use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The VMI's new status, when it changes.
    pub status: Option<Value>,
    pub events: Vec<Event>,
    /// Try again later (e.g. no node fits yet).
    pub retry: bool,
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

/// Memory a VMI asks for: `resources.requests.memory`, else `memory.guest`, else 0.
pub fn memory_request(vmi: &Value) -> u64 {
    ["/spec/domain/resources/requests/memory", "/spec/domain/memory/guest"]
        .iter()
        .find_map(|p| vmi.pointer(p))
        .and_then(|q| quantity::from_value(q).ok())
        .unwrap_or(0)
}

/// `used`: memory already requested by VMIs on each node.
pub fn plan(vmi: &Value, nodes: &[Value], used: &HashMap<String, u64>, now: &str) -> Plan {
    let mut p = Plan { status: None, events: vec![], retry: false };
    if vmi.pointer("/metadata/deletionTimestamp").is_some() {
        return p;
    }
    let phase = s(vmi, "/status/phase");
    if !matches!(phase, "" | "Pending" | "Scheduling") {
        return p;
    }
    // A new VMI moves Pending → Scheduling → Scheduled in one write when a node fits (each transition is
    // still recorded): fewer round trips between creation and the agent starting the guest.
    // Entering Pending and Scheduling is an event too (Scheduled has its own, with the node).
    let through = |to: &str, events: &mut Vec<Event>| -> Value {
        const ORDER: [&str; 3] = ["Pending", "Scheduling", "Scheduled"];
        let from = ORDER.iter().position(|p| *p == phase).map_or(0, |i| i + 1);
        let until = ORDER.iter().position(|p| *p == to).expect("a scheduling phase");
        let mut v = vmi.clone();
        for step in ORDER.iter().take(until + 1).skip(from) {
            v["status"] = status_with_phase(&v, step, now);
            let note = match *step {
                "Pending" => "The VirtualMachineInstance was accepted",
                "Scheduling" => "Looking for a node to run the VirtualMachineInstance",
                _ => continue,
            };
            events.push(Event { warning: false, reason: step, note: note.into() });
        }
        v.get("status").cloned().unwrap_or(json!({}))
    };
    match pick_node(vmi, nodes, used) {
        Ok(node) => {
            let mut st = through("Scheduled", &mut p.events);
            st["nodeName"] = json!(node);
            let mut conds = st.get("conditions").and_then(Value::as_array).cloned().unwrap_or_default();
            conditions::set(&mut conds, "PodScheduled", "True", "", "", now);
            st["conditions"] = json!(conds);
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
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled"))
                .is_some_and(|c| c["status"] == "False" && c["message"] == json!(why));
            if !same || phase != "Scheduling" {
                let mut st = through("Scheduling", &mut p.events);
                let mut conds = st.get("conditions").and_then(Value::as_array).cloned().unwrap_or_default();
                conditions::set(&mut conds, "PodScheduled", "False", "Unschedulable", &why, now);
                st["conditions"] = json!(conds);
                p.status = Some(st);
                p.events.push(Event { warning: true, reason: "FailedScheduling", note: why });
            }
        }
    }
    p
}

fn pick_node(vmi: &Value, nodes: &[Value], used: &HashMap<String, u64>) -> Result<String, String> {
    let want = memory_request(vmi);
    let mut reasons: HashMap<&'static str, usize> = HashMap::new();
    let mut best: Option<(u64, String)> = None;
    for n in nodes {
        let name = s(n, "/metadata/name").to_string();
        let free = n
            .pointer("/status/allocatable/memory")
            .and_then(|q| quantity::from_value(q).ok())
            .map(|a| a.saturating_sub(*used.get(&name).unwrap_or(&0)));
        let why = if !conditions::is_true(n, "Ready") {
            Some("node(s) were not ready")
        } else if n.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
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

fn selector_matches(vmi: &Value, node: &Value) -> bool {
    let labels = node.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
    let selector_ok = vmi
        .pointer("/spec/nodeSelector")
        .and_then(Value::as_object)
        .is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let terms = vmi
        .pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
        .and_then(Value::as_array);
    // Terms are ORed; expressions within a term are ANDed.
    let affinity_ok = terms.is_none_or(|ts| ts.is_empty() || ts.iter().any(|t| term_matches(t, &labels)));
    selector_ok && affinity_ok
}

fn term_matches(term: &Value, labels: &Value) -> bool {
    term.get("matchExpressions").and_then(Value::as_array).into_iter().flatten().all(|e| {
        let key = s(e, "/key");
        let have = labels.get(key).and_then(Value::as_str);
        let values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        match s(e, "/operator") {
            "In" => have.is_some_and(|h| values.contains(&h)),
            "NotIn" => have.is_none_or(|h| !values.contains(&h)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            "Gt" | "Lt" => {
                let (Some(h), Some(v)) =
                    (have.and_then(|h| h.parse::<i64>().ok()), values.first().and_then(|v| v.parse::<i64>().ok()))
                else {
                    return false;
                };
                if s(e, "/operator") == "Gt" {
                    h > v
                } else {
                    h < v
                }
            }
            _ => false,
        }
    })
}

fn tolerates(vmi: &Value, node: &Value) -> bool {
    let tolerations = vmi.pointer("/spec/tolerations").and_then(Value::as_array).cloned().unwrap_or_default();
    node.pointer("/spec/taints").and_then(Value::as_array).into_iter().flatten().all(|taint| {
        let effect = s(taint, "/effect");
        if effect == "PreferNoSchedule" {
            return true;
        }
        tolerations.iter().any(|t| {
            let key_ok = s(t, "/key").is_empty() && s(t, "/operator") == "Exists" || s(t, "/key") == s(taint, "/key");
            let value_ok = s(t, "/operator") == "Exists" || s(t, "/value") == s(taint, "/value");
            let effect_ok = s(t, "/effect").is_empty() || s(t, "/effect") == effect;
            key_ok && value_ok && effect_ok
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ready: bool) -> Value {
        json!({"metadata": {"name": name, "labels": {"zone": "a"}},
            "status": {"allocatable": {"memory": "1Gi"}, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
    }

    fn vmi(phase: &str) -> Value {
        json!({"metadata": {"name": "v"}, "spec": {"domain": {"memory": {"guest": "256Mi"}}}, "status": {"phase": phase}})
    }

    #[test]
    fn phases_advance_to_scheduled() {
        let nodes = vec![node("n1", true)];
        let used = HashMap::new();
        // A new VMI goes straight to Scheduled, recording every transition.
        let p = plan(&json!({"metadata": {}, "spec": {}}), &nodes, &used, "t");
        let st = p.status.unwrap();
        assert_eq!(st["phase"], "Scheduled");
        let phases: Vec<&str> =
            st["phaseTransitionTimestamps"].as_array().unwrap().iter().map(|t| t["phase"].as_str().unwrap()).collect();
        assert_eq!(phases, vec!["Pending", "Scheduling", "Scheduled"]);
        let reasons: Vec<&str> = p.events.iter().map(|e| e.reason).collect();
        assert_eq!(reasons, vec!["Pending", "Scheduling", "Scheduled"], "an event per transition");
        assert_eq!(plan(&vmi("Pending"), &nodes, &used, "t").status.unwrap()["phase"], "Scheduled");
        // Without a node it waits in Scheduling.
        assert_eq!(plan(&json!({"metadata": {}}), &[], &used, "t").status.unwrap()["phase"], "Scheduling");
        let p = plan(&vmi("Scheduling"), &nodes, &used, "t");
        let st = p.status.unwrap();
        assert_eq!((st["phase"].as_str(), st["nodeName"].as_str()), (Some("Scheduled"), Some("n1")));
        assert_eq!(p.events.iter().map(|e| e.reason).collect::<Vec<_>>(), vec!["Scheduled"]);
        assert!(plan(&vmi("Running"), &nodes, &used, "t").status.is_none());
    }

    #[test]
    fn filters_explain_why_nothing_fits() {
        let mut tainted = node("t", true);
        tainted["spec"] = json!({"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]});
        let nodes = vec![node("down", false), tainted.clone(), node("full", true)];
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
        let mut tolerant = vmi("Scheduling");
        tolerant["spec"]["tolerations"] =
            json!([{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]);
        assert_eq!(plan(&tolerant, &nodes, &used, "t").status.unwrap()["nodeName"], "t");
        let mut picky = vmi("Scheduling");
        picky["spec"]["nodeSelector"] = json!({"zone": "b"});
        assert!(plan(&picky, &[node("n", true)], &HashMap::new(), "t").retry);
        let mut affine = vmi("Scheduling");
        affine["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}});
        assert_eq!(plan(&affine, &[node("n", true)], &HashMap::new(), "t").status.unwrap()["nodeName"], "n");
    }
}
