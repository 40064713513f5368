//! Node lifecycle, as Kubernetes' node lifecycle controller does it, plus failover with fencing: a node whose
//! Lease stops being renewed for the grace period becomes `Ready=Unknown` with the
//! `node.kubernetes.io/unreachable` taint; once the fencing period has passed too — by then the host's own
//! watchdog has killed its guests (see `kumo_agent::fence`) — its VMIs are marked Failed with KubeVirt's reason
//! `NodeUnresponsive` and their agent finalizer is released, so their VMs start elsewhere per runStrategy.
//!
//! Silence is measured from when *this* controller last saw the Lease (or the agent's own `Ready=True`
//! heartbeat) change, by its own monotonic clock, never from the holder's `renewTime`: clock skew cannot
//! shorten it. A new leader starts counting afresh, which only delays a failover.

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Taint};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use kumo_api::kubevirt::VirtualMachineInstance;
use serde_json::json;
use std::borrow::Borrow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
pub const NODE_UNRESPONSIVE: &str = "NodeUnresponsive";
/// The node agent's finalizer on VMIs it runs.
pub const AGENT_FINALIZER: &str = "kumo.dev/agent";

#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Lease silence after which a node is unreachable (Kubernetes' node-monitor-grace-period). Its VMIs fail
    /// over after this plus the node's own fencing period (published on the Node by its agent).
    pub grace_period: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config { grace_period: Duration::from_secs(20) }
    }
}

/// The fencing period a node's agent published; None when it does not fence (then nothing fails over).
pub fn fencing_period(node: &Node) -> Option<Duration> {
    let ann = node.metadata.annotations.as_ref()?.get(kumo_api::kubevirt::FENCING_PERIOD_ANNOTATION)?;
    ann.parse::<u64>().ok().filter(|s| *s > 0).map(Duration::from_secs)
}

/// What the controller knows of one node's signs of life.
#[derive(Clone, Debug)]
pub struct Seen {
    record: Option<(String, String, String)>,
    since: Instant,
}

#[derive(Debug, PartialEq)]
pub enum NodeAction {
    /// Lease silent past the grace period: Ready=Unknown and the unreachable taint.
    MarkUnreachable,
    /// Renewing again: drop the unreachable taint (the agent reports Ready itself).
    MarkReachable,
    /// Fenced: fail these VMIs over (by name, namespace, uid).
    FailOver(Vec<(String, String, String)>),
}

/// A node's signs of life, for change detection: its Lease (resourceVersion, renewTime) and, as Kubernetes'
/// node lifecycle controller counts it too, the heartbeat of a `Ready=True` its agent wrote. Without the
/// latter, an agent back from the dead (Ready written, first renewal not yet seen: Nodes and Leases come by
/// separate watches) was marked unreachable again over its own fresh status, which then stayed NotReady.
fn record(lease: Option<&Lease>, node: &Node) -> Option<(String, String, String)> {
    let conds = node.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    let ready = conds.iter().find(|c| c.type_ == "Ready" && c.status == "True");
    let beat = ready.and_then(|c| c.last_heartbeat_time.as_ref()).map(|t| t.0.to_string()).unwrap_or_default();
    let Some(l) = lease else { return (!beat.is_empty()).then(|| (String::new(), String::new(), beat)) };
    let renew = l.spec.as_ref().and_then(|s| s.renew_time.as_ref()).map(|t| t.0.to_string()).unwrap_or_default();
    Some((l.metadata.resource_version.clone().unwrap_or_default(), renew, beat))
}

/// Pure decision for one node. `vmis` gives the VMIs on the node, asked for only when they are to fail over.
pub fn plan<V: Borrow<VirtualMachineInstance>>(
    node: &Node,
    lease: Option<&Lease>,
    seen: &mut Seen,
    vmis: impl FnOnce() -> Vec<V>,
    now: Instant,
    cfg: &Config,
) -> Vec<NodeAction> {
    let rec = record(lease, node);
    if rec != seen.record {
        seen.record = rec;
        seen.since = now;
    }
    let silent = now.duration_since(seen.since);
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == UNREACHABLE_TAINT));
    let mut actions = vec![];
    if silent >= cfg.grace_period {
        let ready_unknown = ready_status(node) == Some("Unknown");
        if !tainted || !ready_unknown {
            actions.push(NodeAction::MarkUnreachable);
        }
        let fenced = fencing_period(node).is_some_and(|f| silent >= cfg.grace_period + f);
        if fenced {
            let victims: Vec<_> = vmis()
                .iter()
                .map(Borrow::borrow)
                .filter(|v: &&VirtualMachineInstance| !matches!(v.phase(), "Succeeded" | "Failed"))
                .map(|v| {
                    let m = &v.metadata;
                    (
                        m.name.clone().unwrap_or_default(),
                        m.namespace.clone().unwrap_or_default(),
                        m.uid.clone().unwrap_or_default(),
                    )
                })
                .collect();
            if !victims.is_empty() {
                actions.push(NodeAction::FailOver(victims));
            }
        }
    } else if tainted {
        actions.push(NodeAction::MarkReachable);
    }
    actions
}

fn ready_status(node: &Node) -> Option<&str> {
    let conds = node.status.as_ref()?.conditions.as_ref()?;
    conds.iter().find(|c| c.type_ == "Ready").map(|c| c.status.as_str())
}

/// Runs the controller until the process ends (call it under leader election). Nodes and Leases come from
/// watches and VMIs from the controllers' shared cache: listing them all every second cost the API server a
/// full read of every VMI a second.
pub async fn run(
    client: Client,
    cfg: Config,
    vmis: crate::shared::Shared<VirtualMachineInstance>,
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    // A watch that failed (the API or its store down) is a gap in observation: a Lease not seen to change
    // then says nothing about its node.
    let gap = Arc::new(AtomicBool::new(false));
    let (node_store, node_feed) = watch(nodes.clone(), gap.clone());
    let leases = Api::<Lease>::namespaced(client.clone(), "kube-node-lease");
    let (lease_store, lease_feed) = watch(leases.clone(), gap.clone());
    let vmis = vmis.store();
    let observe = async {
        let mut seen: HashMap<String, Seen> = HashMap::new();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if node_store.wait_until_ready().await.is_err() || lease_store.wait_until_ready().await.is_err() {
                continue;
            }
            if gap.swap(false, Ordering::SeqCst) {
                seen.clear();
                continue;
            }
            let stores = Stores { nodes: &node_store, leases: &lease_store, vmis: &vmis };
            if let Err(e) = pass(&client, &nodes, &leases, &stores, &mut seen, &cfg).await {
                // What was seen before a gap in observation (e.g. the store was down, and agents could not
                // renew either) says nothing about silence: count afresh once the API answers again.
                tracing::warn!("node lifecycle: {e}; restarting observation");
                seen.clear();
            }
        }
    };
    tokio::join!(node_feed, lease_feed, observe);
    Ok(())
}

/// A watch of every `K` in `api` into a store; failures of the watch raise `gap`.
fn watch<K>(api: Api<K>, gap: Arc<AtomicBool>) -> (Store<K>, impl std::future::Future<Output = ()>)
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let feed = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(crate::reflect::slim)
        .reflect(writer)
        .for_each(move |e| {
            if e.is_err() {
                gap.store(true, Ordering::SeqCst);
            }
            std::future::ready(())
        });
    (store, feed)
}

struct Stores<'a> {
    nodes: &'a Store<Node>,
    leases: &'a Store<Lease>,
    vmis: &'a Store<VirtualMachineInstance>,
}

async fn pass(
    client: &Client,
    nodes: &Api<Node>,
    leases: &Api<Lease>,
    stores: &Stores<'_>,
    seen: &mut HashMap<String, Seen>,
    cfg: &Config,
) -> Result<(), kube::Error> {
    let now = Instant::now();
    let all_nodes = stores.nodes.state();
    let by_name: HashMap<String, Arc<Lease>> =
        stores.leases.state().into_iter().map(|l| (l.metadata.name.clone().unwrap_or_default(), l)).collect();
    let names: std::collections::HashSet<&str> = all_nodes.iter().filter_map(|n| n.metadata.name.as_deref()).collect();
    seen.retain(|n, _| names.contains(n.as_str()));
    for node in &all_nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        let s = seen.entry(name.clone()).or_insert(Seen { record: None, since: now });
        let on_node = || {
            let all = stores.vmis.state();
            all.into_iter().filter(|v| v.node_name() == Some(name.as_str())).collect::<Vec<_>>()
        };
        let mut actions = plan(node, by_name.get(&name).map(|l| &**l), s, on_node, now, cfg);
        if actions.iter().any(|a| !matches!(a, NodeAction::MarkReachable)) {
            // Under load the watch can run well behind (a burst of other changes queued ahead of the Lease's):
            // silence is confirmed by reading the Lease itself before anything is done about it. Only once per
            // node going silent, and once at its failover.
            let fresh = leases.get_opt(&name).await?;
            actions = plan(node, fresh.as_ref(), s, on_node, now, cfg);
        }
        for action in actions {
            apply(client, nodes, node, &name, action).await?;
        }
    }
    Ok(())
}

async fn apply(
    client: &Client,
    nodes: &Api<Node>,
    node: &Node,
    name: &str,
    action: NodeAction,
) -> Result<(), kube::Error> {
    let now = kumo_api::meta::now_rfc3339();
    match action {
        NodeAction::MarkUnreachable => {
            tracing::warn!(node = name, "node stopped renewing its Lease: marking it unreachable");
            let ready = node.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
            let mut conds: Vec<NodeCondition> = ready.to_vec();
            conds.retain(|c| c.type_ != "Ready");
            // The heartbeat stays the agent's last: this write is no sign of the node's life.
            let beat = ready.iter().find(|c| c.type_ == "Ready").and_then(|c| c.last_heartbeat_time.clone());
            let cond = json!({"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                "message": "The node agent stopped renewing its Lease.", "lastTransitionTime": now,
                "lastHeartbeatTime": beat});
            let mut list = serde_json::to_value(&conds).unwrap_or(json!([]));
            if let Some(a) = list.as_array_mut() {
                a.push(cond);
            }
            // Both writes are compare-and-swaps on the Node as seen: an agent that wrote Ready meanwhile (back
            // from the dead, its first renewal not seen yet) must not have it overwritten; the next pass decides
            // again on what it wrote.
            let status = json!({"metadata": {"resourceVersion": node.metadata.resource_version},
                "status": {"conditions": list}});
            let written = match nodes.patch_status(name, &PatchParams::default(), &Patch::Merge(status)).await {
                Ok(n) => n,
                Err(kube::Error::Api(e)) if e.code == 409 => return Ok(()),
                Err(e) => return Err(e),
            };
            let mut taints: Vec<Taint> = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
            taints.retain(|t| t.key != UNREACHABLE_TAINT);
            for effect in ["NoSchedule", "NoExecute"] {
                taints.push(Taint { key: UNREACHABLE_TAINT.into(), effect: effect.into(), ..Default::default() });
            }
            let spec = json!({"metadata": {"resourceVersion": written.metadata.resource_version},
                "spec": {"taints": taints}});
            match nodes.patch(name, &PatchParams::default(), &Patch::Merge(spec)).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        NodeAction::MarkReachable => {
            tracing::info!(node = name, "node renews its Lease again");
            let mut taints: Vec<Taint> = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
            taints.retain(|t| t.key != UNREACHABLE_TAINT);
            nodes.patch(name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"taints": taints}}))).await?;
        }
        NodeAction::FailOver(victims) => {
            for (vmi, ns, uid) in victims {
                fail_vmi(client, &ns, &vmi, &uid, name).await?;
            }
        }
    }
    Ok(())
}

/// Marks a VMI of a fenced node Failed (NodeUnresponsive) and releases the agent's finalizer.
async fn fail_vmi(client: &Client, ns: &str, name: &str, uid: &str, node: &str) -> Result<(), kube::Error> {
    let api: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    let Some(current) = api.get_opt(name).await? else { return Ok(()) };
    if current.metadata.uid.as_deref() != Some(uid) {
        return Ok(());
    }
    tracing::warn!(vmi = name, namespace = ns, node, "failing over: its node is fenced");
    let now = kumo_api::meta::now_rfc3339();
    let mut status = kumo_api::kubevirt::status_with_phase(&current, "Failed", &now);
    status.reason = Some(NODE_UNRESPONSIVE.into());
    let rv = current.metadata.resource_version.clone();
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"resourceVersion": rv}, "status": status})),
    )
    .await?;
    let fins: Vec<String> =
        current.metadata.finalizers.clone().unwrap_or_default().into_iter().filter(|f| f != AGENT_FINALIZER).collect();
    api.patch(name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": fins}}))).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;

    fn node(tainted: bool) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some("n".into());
        n.metadata.annotations =
            Some([(kumo_api::kubevirt::FENCING_PERIOD_ANNOTATION.to_string(), "5".to_string())].into());
        if tainted {
            n.spec = Some(NodeSpec {
                taints: Some(vec![Taint {
                    key: UNREACHABLE_TAINT.into(),
                    effect: "NoExecute".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            });
        }
        n
    }

    fn lease(rv: &str) -> Lease {
        let mut l = Lease::default();
        l.metadata.resource_version = Some(rv.into());
        l
    }

    fn vmi(phase: &str) -> VirtualMachineInstance {
        serde_json::from_value(json!({"metadata": {"name": "v", "namespace": "d", "uid": "u"},
            "status": {"phase": phase, "nodeName": "n"}}))
        .unwrap()
    }

    #[test]
    fn silence_leads_to_unreachable_then_failover() {
        let cfg = Config { grace_period: Duration::from_secs(10) };
        let t0 = Instant::now();
        let mut seen = Seen { record: None, since: t0 };
        let running = vmi("Running");
        let done = vmi("Succeeded");
        let vmis = [&running, &done];
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(plan(&node(false), Some(&lease("1")), &mut seen, || vmis.to_vec(), at(0), &cfg).is_empty());
        assert!(plan(&node(false), Some(&lease("1")), &mut seen, || vmis.to_vec(), at(9), &cfg).is_empty());
        assert_eq!(
            plan(&node(false), Some(&lease("1")), &mut seen, || vmis.to_vec(), at(10), &cfg),
            vec![NodeAction::MarkUnreachable]
        );
        // Still within the fencing period: no failover, however the node looks.
        assert_eq!(
            plan(&node(true), Some(&lease("1")), &mut seen, || vmis.to_vec(), at(14), &cfg),
            vec![NodeAction::MarkUnreachable]
        );
        let acts = plan(&node(true), Some(&lease("1")), &mut seen, || vmis.to_vec(), at(15), &cfg);
        assert_eq!(acts[1], NodeAction::FailOver(vec![("v".into(), "d".into(), "u".into())]), "only unfinished VMIs");
        // A renewal (the Lease changed) makes it reachable again, and restarts the count.
        assert_eq!(
            plan(&node(true), Some(&lease("2")), &mut seen, || vmis.to_vec(), at(16), &cfg),
            vec![NodeAction::MarkReachable]
        );
        assert!(plan(&node(false), Some(&lease("2")), &mut seen, || vmis.to_vec(), at(25), &cfg).is_empty());
        // An agent back from the dead writes Ready before its first renewal shows: that is a sign of life too.
        let mut back = node(true);
        back.status = serde_json::from_value(json!({"conditions": [{"type": "Ready", "status": "True",
            "lastHeartbeatTime": "2026-12-06T00:00:00Z"}]}))
        .unwrap();
        let silent = plan(&node(false), Some(&lease("2")), &mut seen, || vmis.to_vec(), at(40), &cfg);
        assert_eq!(silent.first(), Some(&NodeAction::MarkUnreachable));
        assert_eq!(
            plan(&back, Some(&lease("2")), &mut seen, || vmis.to_vec(), at(41), &cfg),
            vec![NodeAction::MarkReachable]
        );
        // A node that does not fence never has its VMIs failed over, however long it is silent.
        let mut unfenced = node(true);
        unfenced.metadata.annotations = None;
        let acts = plan(&unfenced, Some(&lease("2")), &mut seen, || vmis.to_vec(), at(1000), &cfg);
        assert!(acts.iter().all(|a| !matches!(a, NodeAction::FailOver(_))), "{acts:?}");
    }
    #[test]
    fn a_renewal_the_watch_has_not_shown_yet_is_life() {
        // `pass` reads the Lease afresh before acting on silence: the fresh one replans with no action.
        let cfg = Config { grace_period: Duration::from_secs(10) };
        let t0 = Instant::now();
        let mut seen = Seen { record: None, since: t0 };
        let none = Vec::<VirtualMachineInstance>::new;
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(plan(&node(false), Some(&lease("1")), &mut seen, none, at(0), &cfg).is_empty());
        let lagging = plan(&node(false), Some(&lease("1")), &mut seen, none, at(10), &cfg);
        assert_eq!(lagging, vec![NodeAction::MarkUnreachable]);
        assert!(plan(&node(false), Some(&lease("7")), &mut seen, none, at(10), &cfg).is_empty(), "read fresh");
        // The watch still shows the old one, then catches up: neither is silence.
        assert!(plan(&node(false), Some(&lease("1")), &mut seen, none, at(11), &cfg).is_empty());
        assert!(plan(&node(false), Some(&lease("7")), &mut seen, none, at(12), &cfg).is_empty());
    }
}
