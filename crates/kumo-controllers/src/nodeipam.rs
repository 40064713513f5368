//! Node IPAM: gives every Node a `spec.podCIDR` (and `spec.podCIDRs`) carved out of the cluster CIDR, as
//! Kubernetes' node IPAM controller (range allocator) does. The node agent waits for it and builds its pod
//! network from it.
//!
//! The decision is [`plan`], a pure function of the Node, every Node, and the cluster CIDR. The runtime
//! ([`run`]) never keeps allocations of its own: it recomputes from a fresh list of Nodes, one Node at a time,
//! and writes with the Node's resourceVersion as a precondition, so a /24 is never handed to two Nodes and a
//! block is free again as soon as its Node is deleted. It runs on the elected controllers replica only.

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::events::{Event, EventType, Reporter};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use kumo_api::cidr::node_pod_cidrs as pod_cidrs;
pub use kumo_api::cidr::Ipv4Cidr;
use kumo_events::Recorder;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where pod addresses come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The whole pod network (`--cluster-cidr`).
    pub cluster_cidr: Ipv4Cidr,
    /// Prefix length of each Node's block (`--node-cidr-mask-size`).
    pub node_prefix_len: u8,
}

impl Default for Config {
    /// Kubernetes' (and flannel's) usual choice: 10.244.0.0/16, a /24 per node.
    fn default() -> Self {
        Config { cluster_cidr: "10.244.0.0/16".parse().expect("valid CIDR"), node_prefix_len: 24 }
    }
}

impl Config {
    /// A configuration whose node blocks fit in the cluster CIDR and still hold a gateway and guests.
    pub fn new(cluster_cidr: Ipv4Cidr, node_prefix_len: u8) -> Result<Self, String> {
        if node_prefix_len < cluster_cidr.prefix_len() || node_prefix_len > 29 {
            return Err(format!(
                "node CIDR mask size {node_prefix_len} must be between the cluster CIDR's ({}) and 29",
                cluster_cidr.prefix_len()
            ));
        }
        Ok(Config { cluster_cidr, node_prefix_len })
    }
}

/// The Node has none and none is free.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no free /{node_prefix_len} left in the cluster CIDR {cluster_cidr} for Node {node}")]
pub struct Exhausted {
    pub node: String,
    pub cluster_cidr: Ipv4Cidr,
    pub node_prefix_len: u8,
}

/// The block to give `node`: `None` when it already has one (whatever it is: a Node's podCIDR never changes
/// once set), else the lowest block of the cluster CIDR that overlaps no other Node's.
pub fn plan(node: &Node, nodes: &[Node], cfg: &Config) -> Result<Option<Ipv4Cidr>, Exhausted> {
    let blocks: HashMap<String, Vec<String>> = nodes.iter().map(|n| (n.name_any(), pod_cidrs(n).to_vec())).collect();
    plan_with(node, &blocks, cfg)
}

/// [`plan`] over every Node's pod CIDRs by name; linear in the Nodes, so allocating for ten thousand stays cheap.
pub fn plan_with(
    node: &Node,
    blocks: &HashMap<String, Vec<String>>,
    cfg: &Config,
) -> Result<Option<Ipv4Cidr>, Exhausted> {
    if !pod_cidrs(node).is_empty() {
        return Ok(None);
    }
    let name = node.name_any();
    // Anything unparsable (IPv6, a typo) is no IPv4 block of ours; what overlaps the cluster CIDR is taken.
    let mut taken: Vec<(u32, u32)> = blocks
        .iter()
        .filter(|(n, _)| **n != name)
        .flat_map(|(_, cidrs)| cidrs.iter())
        .filter_map(|c| c.parse::<Ipv4Cidr>().ok())
        .filter(|c| c.overlaps(&cfg.cluster_cidr))
        .map(|c| (u32::from(c.network()), u32::from(c.last())))
        .collect();
    taken.sort_unstable();
    let count = cfg.cluster_cidr.subnet_count(cfg.node_prefix_len).unwrap_or(0);
    // Walk the blocks and the taken ranges together, both in address order.
    let mut next = 0;
    let free = (0..count).filter_map(|i| cfg.cluster_cidr.subnet(cfg.node_prefix_len, i)).find(|b| {
        let (start, end) = (u32::from(b.network()), u32::from(b.last()));
        while next < taken.len() && taken[next].1 < start {
            next += 1;
        }
        // Ranges starting before this block and ending inside it were passed over only if they ended before it.
        !taken[next..].iter().take_while(|t| t.0 <= end).any(|t| t.1 >= start)
    });
    match free {
        Some(b) => Ok(Some(b)),
        None => Err(Exhausted { node: name, cluster_cidr: cfg.cluster_cidr, node_prefix_len: cfg.node_prefix_len }),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

struct Ctx {
    client: Client,
    cfg: Config,
    recorder: Recorder,
    /// Every Node's pod CIDRs as a fresh list showed them, plus what this allocator gave since; read again
    /// when older than [`KNOWN_FOR`], after a conflict and after a Node is deleted.
    known: std::sync::Mutex<Option<Known>>,
}

/// When the Nodes were listed, and each Node's pod CIDRs by name.
type Known = (Instant, HashMap<String, Vec<String>>);

/// How long the allocator plans from its own record before listing the Nodes again.
const KNOWN_FOR: Duration = Duration::from_secs(30);

/// Allocates pod CIDRs until the process ends.
pub async fn run(client: Client, cfg: Config) {
    let reporter = Reporter { controller: "kumo-node-ipam".into(), instance: std::env::var("HOSTNAME").ok() };
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        cfg,
        known: Default::default(),
    });
    tracing::info!(cluster_cidr = %ctx.cfg.cluster_cidr, node_mask = ctx.cfg.node_prefix_len, "node IPAM running");
    let api = Api::<Node>::all(client);
    // A deleted Node frees its block: look at every Node again, so one that found the cluster CIDR full gets it.
    let forget = ctx.clone();
    let deletions = watcher(api.clone(), watcher::Config::default()).default_backoff().filter_map(move |ev| {
        let deleted = matches!(ev, Ok(watcher::Event::Delete(_)));
        if deleted {
            *forget.known.lock().expect("known blocks") = None;
        }
        async move { deleted.then_some(()) }
    });
    // One reconcile at a time: two Nodes planned concurrently from the same list would get the same block.
    crate::reflect::slim_controller(api, watcher::Config::default())
        .with_config(controller::Config::default().concurrency(1))
        .reconcile_all_on(deletions)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!("node ipam: {e}");
            }
        })
        .await;
}

fn error_policy(_node: Arc<Node>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!("node ipam: {err}");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if !pod_cidrs(&node).is_empty() || node.meta().deletion_timestamp.is_some() {
        // A block set otherwise (at registration, by hand, by an earlier leader) after the last list is taken
        // all the same: the list is trusted for a while, and must not hand it out again meanwhile.
        if let Some((_, blocks)) = ctx.known.lock().expect("known blocks").as_mut() {
            blocks.insert(node.name_any(), pod_cidrs(&node).to_vec());
        }
        return Ok(Action::await_change());
    }
    let api = Api::<Node>::all(ctx.client.clone());
    let name = node.name_any();
    let fresh = ctx.known.lock().expect("known blocks").as_ref().is_some_and(|(at, _)| at.elapsed() < KNOWN_FOR);
    if !fresh {
        // A fresh list (a consistent read), not the watch cache: a block given away a moment ago must be in it.
        let nodes = api.list(&ListParams::default()).await?.items;
        let blocks = nodes.iter().map(|n| (n.name_any(), pod_cidrs(n).to_vec())).collect();
        *ctx.known.lock().expect("known blocks") = Some((Instant::now(), blocks));
    }
    // The Node as the watch showed it: the write below is a compare-and-swap on its resourceVersion.
    let current = node.as_ref();
    let planned = match ctx.known.lock().expect("known blocks").as_ref() {
        Some((_, blocks)) => plan_with(current, blocks, &ctx.cfg),
        None => return Ok(Action::requeue(Duration::ZERO)),
    };
    match planned {
        Ok(None) => Ok(Action::await_change()),
        Ok(Some(block)) => {
            let cidr = block.to_string();
            // The precondition makes this a compare-and-swap on the Node as listed: if anything changed it
            // since (its agent, another allocator), the write fails and the next attempt plans again.
            let patch = json!({
                "metadata": {"resourceVersion": current.resource_version()},
                "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
            });
            match api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
                Ok(_) => {
                    if let Some((_, blocks)) = ctx.known.lock().expect("known blocks").as_mut() {
                        blocks.insert(name.clone(), vec![cidr.clone()]);
                    }
                    tracing::info!(node = %name, pod_cidr = %cidr, "allocated the Node's pod CIDR");
                    publish(&ctx, current, EventType::Normal, "CIDRAssigned", format!("Node {name} got {cidr}")).await;
                    Ok(Action::await_change())
                }
                Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
                    // Someone else changed the Node (or took the block): plan again from a fresh list.
                    *ctx.known.lock().expect("known blocks") = None;
                    Ok(Action::requeue(Duration::ZERO))
                }
                Err(e) => Err(e.into()),
            }
        }
        Err(full) => {
            // Kubernetes' reason. A Node deleted later frees a block and triggers every Node; this retry is a
            // backstop.
            tracing::warn!("{full}");
            publish(&ctx, current, EventType::Warning, "CIDRNotAvailable", full.to_string()).await;
            Ok(Action::requeue(Duration::from_secs(30)))
        }
    }
}

async fn publish(ctx: &Ctx, node: &Node, type_: EventType, reason: &str, note: String) {
    let ev = Event { type_, reason: reason.into(), note: Some(note), action: reason.into(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&ev, &node.object_ref(&())).await {
        tracing::warn!("recording event {reason}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use std::collections::BTreeSet;

    /// Two thousand Nodes, each planned against all before it: every block distinct, lowest first.
    #[test]
    fn thousands_of_nodes_get_distinct_blocks() {
        let c = cfg("10.0.0.0/8", 24);
        let mut blocks: HashMap<String, Vec<String>> = HashMap::new();
        // One odd, bigger block someone set by hand in the middle.
        blocks.insert("manual".into(), vec!["10.0.16.0/20".into()]);
        for i in 0..2_000 {
            let n = node(&format!("n{i}"), None);
            let b = plan_with(&n, &blocks, &c).unwrap().unwrap().to_string();
            blocks.insert(format!("n{i}"), vec![b]);
        }
        let all: BTreeSet<&String> = blocks.values().flatten().collect();
        assert_eq!(all.len(), 2_001);
        assert_eq!(blocks["n0"], ["10.0.0.0/24"]);
        assert_eq!(blocks["n16"], ["10.0.32.0/24"], "the manual /20 is skipped whole");
    }

    fn node(name: &str, cidr: Option<&str>) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        if let Some(c) = cidr {
            n.spec = Some(NodeSpec { pod_cidr: Some(c.into()), pod_cidrs: Some(vec![c.into()]), ..Default::default() });
        }
        n
    }

    fn cfg(cluster: &str, len: u8) -> Config {
        Config::new(cluster.parse().unwrap(), len).unwrap()
    }

    fn plan_str(n: &Node, all: &[Node], c: &Config) -> Option<String> {
        plan(n, all, c).unwrap().map(|b| b.to_string())
    }

    #[test]
    fn first_node_gets_the_first_block() {
        let a = node("a", None);
        assert_eq!(plan_str(&a, std::slice::from_ref(&a), &Config::default()).as_deref(), Some("10.244.0.0/24"));
    }

    #[test]
    fn a_node_with_a_block_keeps_it() {
        let a = node("a", Some("10.244.9.0/24"));
        assert_eq!(plan(&a, std::slice::from_ref(&a), &Config::default()), Ok(None));
        // Even one outside the cluster CIDR, set by someone else: podCIDR never changes once set.
        let b = node("b", Some("192.168.0.0/24"));
        assert_eq!(plan(&b, &[a, b.clone()], &Config::default()), Ok(None));
        // The older single field alone counts too.
        let mut c = node("c", None);
        c.spec = Some(NodeSpec { pod_cidr: Some("10.244.1.0/24".into()), ..Default::default() });
        assert_eq!(pod_cidrs(&c), vec!["10.244.1.0/24".to_string()]);
        assert_eq!(plan(&c, &[], &Config::default()), Ok(None));
    }

    #[test]
    fn blocks_in_use_are_skipped_and_deleted_nodes_free_theirs() {
        let all = vec![node("a", Some("10.244.0.0/24")), node("b", Some("10.244.2.0/24")), node("c", None)];
        assert_eq!(plan_str(&all[2], &all, &Config::default()).as_deref(), Some("10.244.1.0/24"));
        // Node a deleted: its block is the lowest free one again.
        let rest = &all[1..];
        assert_eq!(plan_str(&all[2], rest, &Config::default()).as_deref(), Some("10.244.0.0/24"));
    }

    #[test]
    fn sequential_allocation_never_repeats_a_block() {
        let c = cfg("10.10.0.0/22", 24);
        let mut nodes: Vec<Node> = (0..4).map(|i| node(&format!("n{i}"), None)).collect();
        for i in 0..4 {
            let b = plan(&nodes[i], &nodes, &c).unwrap().unwrap().to_string();
            nodes[i] = node(&format!("n{i}"), Some(&b));
        }
        let blocks: BTreeSet<String> = nodes.iter().flat_map(pod_cidrs).collect();
        assert_eq!(blocks.len(), 4, "{blocks:?}");
        let extra = node("n4", None);
        nodes.push(extra.clone());
        let err = plan(&extra, &nodes, &c).unwrap_err();
        assert!(err.to_string().contains("no free /24 left in the cluster CIDR 10.10.0.0/22"), "{err}");
    }

    #[test]
    fn foreign_and_overlapping_blocks_are_respected() {
        // A hand-made /23 covers two of our /24s; an IPv6 or garbage entry is ignored.
        let mut odd = node("odd", None);
        odd.spec = Some(NodeSpec {
            pod_cidrs: Some(vec!["10.244.0.0/23".into(), "fd00::/64".into(), "nonsense".into()]),
            ..Default::default()
        });
        let new = node("new", None);
        let all = vec![odd, node("out", Some("192.168.0.0/24")), new.clone()];
        assert_eq!(plan_str(&new, &all, &Config::default()).as_deref(), Some("10.244.2.0/24"));
        // Another node's block counts, this node's own (absent) does not.
        assert_eq!(plan_str(&new, std::slice::from_ref(&new), &cfg("10.1.0.0/16", 26)).as_deref(), Some("10.1.0.0/26"));
    }

    #[test]
    fn config_bounds() {
        assert!(Config::new("10.244.0.0/16".parse().unwrap(), 15).is_err());
        assert!(Config::new("10.244.0.0/16".parse().unwrap(), 30).is_err());
        assert!(Config::new("10.244.0.0/16".parse().unwrap(), 16).is_ok());
    }
}
