//! The VirtualMachineInstance controller's decisions: move a new VMI through Pending and Scheduling to a node
//! ([`crate::sched`] picks it), say why when none fits, and keep KubeVirt's `kubevirt.io/nodeName` label equal
//! to `status.nodeName` (node agents watch their VMIs by it). Pure: no I/O.

use crate::sched::{self, Cluster};
use crate::vm::Event;
use kumo_api::conditions;
use kumo_api::kubevirt::{VirtualMachineInstance, VirtualMachineInstanceStatus, NODE_NAME_LABEL};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// The VMI's new status, when it changes. The runtime writes it as a compare-and-swap on the
    /// resourceVersion the plan was made from, so a binding is never made twice or on a stale view.
    pub status: Option<VirtualMachineInstanceStatus>,
    /// The node label to write after the status, when it differs from `status.nodeName`.
    pub label: Option<LabelChange>,
    pub events: Vec<Event>,
    /// Try again later (no node fits yet).
    pub retry: bool,
    /// Claims waiting for their first consumer get this node (their volumes are made there) before the VMI is
    /// bound to it.
    pub select_node: Option<(String, Vec<String>)>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum LabelChange {
    Set(String),
    /// An unscheduled VMI carries no node label, so no node's agent lists it.
    Remove,
}

/// Whether the VMI is waiting for a node (the only case where [`plan`] reads the [`Cluster`]).
pub fn wants_node(vmi: &VirtualMachineInstance) -> bool {
    vmi.metadata.deletion_timestamp.is_none()
        && vmi.node_name().is_none()
        && matches!(vmi.phase(), "" | "Pending" | "Scheduling")
}

/// The change that makes the node label say `node`.
fn label_for(vmi: &VirtualMachineInstance, node: Option<&str>) -> Option<LabelChange> {
    let have = vmi.metadata.labels.as_ref().and_then(|l| l.get(NODE_NAME_LABEL)).map(String::as_str);
    match node {
        _ if have == node => None,
        Some(n) => Some(LabelChange::Set(n.to_string())),
        None => Some(LabelChange::Remove),
    }
}

/// `cluster` is read only when [`wants_node`] holds.
pub fn plan(vmi: &VirtualMachineInstance, cluster: &Cluster, now: &str) -> Plan {
    let mut p = Plan::default();
    // Every VMI with a node keeps the label, deleting and finished ones too: their agent finds the VMIs it
    // must stop or clean up by it.
    if !wants_node(vmi) {
        p.label = label_for(vmi, vmi.node_name());
        return p;
    }
    let phase = vmi.phase();
    // A new VMI moves Pending → Scheduling → Scheduled in one write when a node fits (each transition is
    // still in its status): fewer round trips between creation and the agent starting the guest. Entering
    // Pending and Scheduling is an event only for a VMI that has to wait; one placed at once has just its
    // Scheduled event, as kube-scheduler records one per pod bound (two events more per VMI were a fifth of
    // the API server's writes while a large cluster filled).
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
    let unschedulable = |why: String, reason: &'static str, p: &mut Plan| {
        p.retry = true;
        p.label = label_for(vmi, None);
        let same = vmi.conditions().iter().find(|c| c.type_ == "PodScheduled").is_some_and(|c| {
            c.status == "False" && c.reason.as_deref() == Some(reason) && c.message.as_deref() == Some(why.as_str())
        });
        if !same || phase != "Scheduling" {
            let mut st = through("Scheduling", &mut p.events);
            let mut conds = st.conditions.take().unwrap_or_default();
            conditions::set(&mut conds, "PodScheduled", "False", reason, &why, now);
            st.conditions = Some(conds);
            p.status = Some(st);
            let event = if reason == "Unschedulable" { "FailedScheduling" } else { reason };
            p.events.push(Event { warning: reason == "Unschedulable", reason: event, note: why });
        }
    };
    match sched::place(vmi, cluster) {
        // Its volumes are made on the node first (kube-scheduler's PreBind waits the same way).
        Ok(place) if !place.provision.is_empty() || place.waiting => {
            let node = &place.node;
            let why = format!("waiting for the volumes of its PersistentVolumeClaims to be made on node {node}");
            p.select_node = Some((node.clone(), place.provision.clone()));
            unschedulable(why, "WaitingForVolumes", &mut p);
        }
        Ok(place) => {
            let node = place.node;
            let mut st = through("Scheduled", &mut vec![]);
            st.node_name = Some(node.clone());
            let mut conds = st.conditions.take().unwrap_or_default();
            conditions::set(&mut conds, "PodScheduled", "True", "", "", now);
            st.conditions = Some(conds);
            p.status = Some(st);
            p.label = label_for(vmi, Some(&node));
            p.events.push(Event {
                warning: false,
                reason: "Scheduled",
                note: format!("Successfully assigned to node {node}"),
            });
        }
        Err(why) => unschedulable(why, "Unschedulable", &mut p),
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;
    use serde_json::{json, Value};

    fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).expect("a valid object")
    }

    fn node(name: &str) -> Node {
        typed(json!({"metadata": {"name": name},
            "status": {"allocatable": {"memory": "1Gi", "cpu": "1"}, "conditions": [{"type": "Ready", "status": "True"}]}}))
    }

    fn vmi_json(phase: &str) -> Value {
        json!({"metadata": {"name": "v"}, "spec": {"domain": {"memory": {"guest": "256Mi"}}}, "status": {"phase": phase}})
    }

    fn vmi(phase: &str) -> VirtualMachineInstance {
        typed(vmi_json(phase))
    }

    fn cluster(nodes: &[Node]) -> Cluster<'_> {
        Cluster { nodes: nodes.iter().collect(), ..Default::default() }
    }

    fn phase(p: &Plan) -> Option<&str> {
        p.status.as_ref().and_then(|s| s.phase.as_deref())
    }

    fn node_name(p: &Plan) -> Option<&str> {
        p.status.as_ref().and_then(|s| s.node_name.as_deref())
    }

    #[test]
    fn phases_advance_to_scheduled() {
        let nodes = [node("n1")];
        let c = cluster(&nodes);
        // A new VMI goes straight to Scheduled, every transition in its status, one event.
        let p = plan(&typed(json!({"metadata": {}, "spec": {}})), &c, "t");
        assert_eq!(phase(&p), Some("Scheduled"));
        let st = p.status.as_ref().unwrap();
        let phases: Vec<&str> =
            st.phase_transition_timestamps.iter().flatten().map(|t| t.phase.as_deref().unwrap()).collect();
        assert_eq!(phases, vec!["Pending", "Scheduling", "Scheduled"]);
        let reasons: Vec<&str> = p.events.iter().map(|e| e.reason).collect();
        assert_eq!(reasons, vec!["Scheduled"], "placed at once: the one event kube-scheduler records too");
        assert_eq!(phase(&plan(&vmi("Pending"), &c, "t")), Some("Scheduled"));
        // Without a node it waits in Scheduling, and says how it got there.
        let waits = plan(&typed(json!({"metadata": {}})), &cluster(&[]), "t");
        assert_eq!(phase(&waits), Some("Scheduling"));
        let reasons: Vec<&str> = waits.events.iter().map(|e| e.reason).collect();
        assert_eq!(reasons, vec!["Pending", "Scheduling", "FailedScheduling"]);
        let p = plan(&vmi("Scheduling"), &c, "t");
        assert_eq!((phase(&p), node_name(&p)), (Some("Scheduled"), Some("n1")));
        assert_eq!(p.events.iter().map(|e| e.reason).collect::<Vec<_>>(), vec!["Scheduled"]);
        let cond = p.status.as_ref().unwrap().conditions.as_ref().unwrap();
        assert_eq!((cond[0].type_.as_str(), cond[0].status.as_str()), ("PodScheduled", "True"));
        assert_eq!(plan(&vmi("Running"), &c, "t"), Plan::default(), "a running VMI is not the scheduler's");
    }

    #[test]
    fn binding_sets_the_node_label_and_a_missing_one_is_added_later() {
        let nodes = [node("n1")];
        let c = cluster(&nodes);
        let p = plan(&vmi(""), &c, "t");
        assert_eq!(p.label, Some(LabelChange::Set("n1".into())));
        // Bound, but the label write did not happen (a crash, a conflict): every later pass adds it, whatever
        // the phase, deletion included (the agent finds VMIs to clean up by it).
        for phase in ["Scheduled", "Running", "Failed", "Succeeded"] {
            let mut v = vmi_json(phase);
            v["status"]["nodeName"] = json!("n1");
            let p = plan(&typed(v.clone()), &c, "t");
            assert_eq!((p.status, p.label), (None, Some(LabelChange::Set("n1".into()))), "{phase}");
            v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
            assert_eq!(plan(&typed(v.clone()), &c, "t").label, Some(LabelChange::Set("n1".into())), "{phase}");
            // Present and right: nothing to do.
            v["metadata"]["labels"] = json!({NODE_NAME_LABEL: "n1"});
            assert_eq!(plan(&typed(v), &c, "t"), Plan::default(), "{phase}");
        }
        // A wrong label is corrected; one on a VMI that has no node is removed (else a node's agent would list
        // a VMI that is not its own).
        let mut v = vmi_json("Running");
        v["status"]["nodeName"] = json!("n1");
        v["metadata"]["labels"] = json!({NODE_NAME_LABEL: "n2"});
        assert_eq!(plan(&typed(v), &c, "t").label, Some(LabelChange::Set("n1".into())));
        let mut v = vmi_json("Scheduling");
        v["metadata"]["labels"] = json!({NODE_NAME_LABEL: "n2"});
        assert_eq!(plan(&typed(v.clone()), &cluster(&[]), "t").label, Some(LabelChange::Remove));
        assert_eq!(plan(&typed(v), &c, "t").label, Some(LabelChange::Set("n1".into())));
    }

    #[test]
    fn unschedulable_is_a_condition_written_once_per_reason() {
        let p = plan(&vmi("Scheduling"), &cluster(&[]), "t");
        assert!(p.retry);
        let st = p.status.clone().unwrap();
        let cond = &st.conditions.as_ref().unwrap()[0];
        assert_eq!(
            (cond.type_.as_str(), cond.status.as_str(), cond.reason.as_deref(), cond.message.as_deref()),
            ("PodScheduled", "False", Some("Unschedulable"), Some("0/0 nodes are available."))
        );
        assert_eq!(
            p.events.iter().map(|e| (e.reason, e.warning)).collect::<Vec<_>>(),
            vec![("FailedScheduling", true)]
        );
        // The same reason again: no write, no event, but look again later.
        let mut again = vmi("Scheduling");
        again.status = Some(st);
        let p = plan(&again, &cluster(&[]), "t");
        assert_eq!((p.status.is_none(), p.events.is_empty(), p.retry), (true, true, true));
        // A different reason is written.
        let mut down = node("n1");
        down.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "False".into();
        let nodes = [down];
        let p = plan(&again, &cluster(&nodes), "t");
        assert_eq!(p.events[0].note, "0/1 nodes are available: 1 node(s) were not ready.");
    }

    #[test]
    fn a_vmi_waits_for_the_volume_of_its_first_consumer_claim() {
        let ns = [node("n1")];
        let classes: Vec<k8s_openapi::api::storage::v1::StorageClass> =
            vec![typed(json!({"metadata": {"name": "local"},
            "provisioner": "kumo.dev/local", "volumeBindingMode": "WaitForFirstConsumer"}))];
        let claims: Vec<k8s_openapi::api::core::v1::PersistentVolumeClaim> = vec![typed(json!({
            "metadata": {"name": "data", "namespace": "default"}, "spec": {"storageClassName": "local"}}))];
        let mut v = vmi_json("Pending");
        v["metadata"]["namespace"] = json!("default");
        v["spec"]["volumes"] = json!([{"name": "d", "ephemeral": {"persistentVolumeClaim": {"claimName": "data"}}}]);
        let cluster = Cluster {
            nodes: ns.iter().collect(),
            claims: claims.iter().collect(),
            classes: classes.iter().collect(),
            ..Default::default()
        };
        let p = plan(&typed(v), &cluster, "2026-12-04T00:00:00Z");
        assert_eq!(p.select_node, Some(("n1".to_string(), vec!["data".to_string()])));
        let st = p.status.expect("a status");
        assert_eq!(st.node_name, None, "not bound before its volume exists");
        let cond = st.conditions.unwrap().into_iter().find(|c| c.type_ == "PodScheduled").unwrap();
        assert_eq!((cond.status.as_str(), cond.reason.as_deref()), ("False", Some("WaitingForVolumes")));
        assert!(p.retry);
    }
}
