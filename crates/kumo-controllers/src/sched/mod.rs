//! Choosing a node for a VMI, the way kube-scheduler chooses one for a Pod: drop the nodes the VMI cannot run
//! on (each for one reason, which the "0/N nodes are available: …" message counts), score the rest, take the
//! best. Pure: the caller passes the cluster as it sees it ([`Cluster`]).
//!
//! - Filters, in kube-scheduler's order: Ready, `spec.unschedulable`, taints ([`node`]), `nodeSelector` and
//!   required node affinity, room for the VMI's cpu and memory (and pod count when the Node reports one), then
//!   pod affinity and anti-affinity against the VMIs already on each node ([`affinity`]).
//! - Score (higher wins): the free share of cpu and memory left after placing the VMI (kube-scheduler's
//!   LeastAllocated, so VMIs spread), preferred node affinity, preferred pod (anti-)affinity, and untolerated
//!   `PreferNoSchedule` taints, each normalised to 0–100 and weighted as kube-scheduler's default profile
//!   weighs them. Ties go to the node with fewer VMIs, then to a random pick ([`Cluster::tiebreak`]), so
//!   schedulers racing on one VMI rarely agree by accident.

mod affinity;
mod node;
mod placed;
mod volumes;

pub use placed::{key as placed_key, Placed};

pub(crate) use affinity::selects;
pub(crate) use node::{ready, term_matches};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
#[cfg(test)]
mod tests;

use k8s_openapi::api::core::v1::Node;
use kumo_api::kubevirt::VirtualMachineInstance;
use kumo_api::quantity;
use std::collections::BTreeMap;

/// How the scheduler counts.
#[derive(Clone, Debug)]
pub struct Config {
    /// vCPUs per physical CPU: a VMI without an explicit cpu request asks for `vCPUs / ratio` of a node's
    /// allocatable cpu (KubeVirt's `cpuAllocationRatio`, 10 by default there and here).
    pub cpu_allocation_ratio: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config { cpu_allocation_ratio: 10 }
    }
}

/// What a VMI takes of a node.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Request {
    pub cpu_milli: u64,
    pub memory: u64,
}

impl std::ops::AddAssign for Request {
    fn add_assign(&mut self, o: Request) {
        self.cpu_milli = self.cpu_milli.saturating_add(o.cpu_milli);
        self.memory = self.memory.saturating_add(o.memory);
    }
}

fn parse_quantity(q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>, milli: bool) -> Option<u64> {
    let q = &q?.0;
    if milli { quantity::milli(q) } else { quantity::parse(q) }.ok()
}

/// What KubeVirt would request for the VMI's pod. CPU: `resources.requests.cpu`, else `resources.limits.cpu`,
/// else one `1/ratio` share per vCPU (sockets × cores × threads, each 1 when unset), rounded up to a millicore.
/// Memory: `resources.requests.memory`, else `memory.guest` (KubeVirt's overhead is not added).
pub fn request(vmi: &VirtualMachineInstance, cfg: &Config) -> Request {
    let domain = &vmi.spec.domain;
    let resources = domain.resources.as_ref();
    let requests = resources.and_then(|r| r.requests.as_ref());
    let limits = resources.and_then(|r| r.limits.as_ref());
    let cpu = parse_quantity(requests.and_then(|r| r.get("cpu")), true)
        .or_else(|| parse_quantity(limits.and_then(|l| l.get("cpu")), true))
        .unwrap_or_else(|| {
            let c = domain.cpu.as_ref();
            let vcpus = [c.and_then(|c| c.sockets), c.and_then(|c| c.cores), c.and_then(|c| c.threads)]
                .iter()
                .fold(1u64, |n, x| n.saturating_mul(x.unwrap_or(1).max(1)));
            vcpus.saturating_mul(1000).div_ceil(u64::from(cfg.cpu_allocation_ratio.max(1)))
        });
    let memory = parse_quantity(requests.and_then(|r| r.get("memory")), false)
        .or_else(|| parse_quantity(domain.memory.as_ref().and_then(|m| m.guest.as_ref()), false))
        .unwrap_or(0);
    Request { cpu_milli: cpu, memory }
}

/// Whether a VMI is done with its node: finished VMIs take no room.
pub fn finished(vmi: &VirtualMachineInstance) -> bool {
    matches!(vmi.phase(), "Succeeded" | "Failed")
}

/// The cluster as the scheduler sees it.
#[derive(Clone, Debug, Default)]
pub struct Cluster<'a> {
    pub nodes: Vec<&'a Node>,
    /// The VMIs bound to nodes and not finished: they take room there and count for pod affinity (None: none).
    pub placed: Option<&'a Placed>,
    /// Each namespace's labels, for pod-affinity terms with a `namespaceSelector`.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub config: Config,
    /// Picks among equally good nodes (random in the runtime; fixed in tests).
    pub tiebreak: u64,
    /// PersistentVolumeClaims, PersistentVolumes and StorageClasses, for the VMIs' volumes.
    pub claims: Vec<&'a PersistentVolumeClaim>,
    pub volumes: Vec<&'a PersistentVolume>,
    pub classes: Vec<&'a StorageClass>,
}

/// Where a VMI goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub node: String,
    /// Claims that wait for their first consumer: their volumes are to be made on `node`, and the VMI is bound
    /// there once they are (empty: bind now).
    pub provision: Vec<String>,
    /// A claim already waits for its volume on `node`: bind once it is bound.
    pub waiting: bool,
}

/// A node with what is already placed on it.
pub(crate) struct NodeInfo<'a> {
    pub node: &'a Node,
    pub name: &'a str,
    /// How many VMIs are placed here, and what they take.
    pub count: usize,
    pub used: Request,
    /// What the node offers, parsed once per placement (the filter and the score both read it).
    pub alloc: Request,
}

impl<'a> NodeInfo<'a> {
    fn new(node: &'a Node, placed: &Placed) -> Self {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let load = placed.load(name);
        let (count, used) = (load.map_or(0, |l| l.vmis.len()), load.map(|l| l.used).unwrap_or_default());
        NodeInfo { node, name, count, used, alloc: node::allocatable(node) }
    }
}

/// How many feasible nodes end the search, as kube-scheduler's `percentageOfNodesToScore` (adaptive) decides:
/// every node in small clusters; in large ones a share falling from 50% to 5% (at least 100 nodes), so a
/// placement among 10,000 nodes looks at about 500 of them. The search starts at a random node.
fn feasible_to_find(nodes: usize) -> usize {
    if nodes < 100 {
        return nodes;
    }
    let percent = 50usize.saturating_sub(nodes / 125).max(5);
    (nodes * percent / 100).max(100)
}

/// The node for `vmi`, or why none fits (Kubernetes' "0/N nodes are available: …" message).
pub fn schedule(vmi: &VirtualMachineInstance, cluster: &Cluster) -> Result<String, String> {
    place(vmi, cluster).map(|p| p.node)
}

/// [`schedule`], with what the VMI's volumes still need on the node chosen.
pub fn place(vmi: &VirtualMachineInstance, cluster: &Cluster) -> Result<Placement, String> {
    let n = cluster.nodes.len();
    let volumes = volumes::resolve(vmi, cluster).map_err(|why| format!("0/{n} nodes are available: {why}."))?;
    let want = request(vmi, &cluster.config);
    let empty = Placed::default();
    let placed = cluster.placed.unwrap_or(&empty);
    let pods = affinity::Placement::new(vmi, placed, &cluster.nodes, &cluster.namespaces);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut feasible: Vec<NodeInfo> = vec![];
    let (find, start) = (feasible_to_find(n), (cluster.tiebreak % n.max(1) as u64) as usize);
    for i in 0..n {
        let info = NodeInfo::new(cluster.nodes[(start + i) % n], placed);
        let failed = node::filter(vmi, &info, want)
            .or_else(|| pods.filter(&info).map(|r| vec![r.to_string()]))
            .or_else(|| volumes.filter(info.node).map(|r| vec![r.to_string()]));
        match failed {
            Some(why) => why.into_iter().for_each(|r| *reasons.entry(r).or_default() += 1),
            None => feasible.push(info),
        }
        if feasible.len() >= find {
            break;
        }
    }
    if feasible.is_empty() {
        let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
        parts.sort();
        let detail = if parts.is_empty() { String::new() } else { format!(": {}", parts.join(", ")) };
        return Err(format!("0/{n} nodes are available{detail}."));
    }
    let node = best(vmi, want, &feasible, &pods, cluster.tiebreak).to_string();
    Ok(Placement { node, waiting: volumes.pending() && volumes.waiting.is_empty(), provision: volumes.waiting })
}

/// Kubernetes' default weights for the scores kumo computes.
const WEIGHT_RESOURCES: i64 = 1;
const WEIGHT_NODE_AFFINITY: i64 = 2;
const WEIGHT_POD_AFFINITY: i64 = 2;
const WEIGHT_TAINTS: i64 = 3;

fn best<'a>(
    vmi: &VirtualMachineInstance,
    want: Request,
    feasible: &[NodeInfo<'a>],
    pods: &affinity::Placement,
    tiebreak: u64,
) -> &'a str {
    let node_aff: Vec<i64> = feasible.iter().map(|n| node::preferred_affinity(vmi, n)).collect();
    let pod_aff: Vec<i64> = feasible.iter().map(|n| pods.preferred(n)).collect();
    let taints: Vec<i64> = feasible.iter().map(|n| node::untolerated_soft_taints(vmi, n)).collect();
    let node_aff = normalise(&node_aff, Scale::Max);
    let pod_aff = normalise(&pod_aff, Scale::MinMax);
    let taints = normalise(&taints, Scale::ReverseMax);
    let key = |i: usize| {
        let n = &feasible[i];
        let score = WEIGHT_RESOURCES * node::least_allocated(n, want)
            + WEIGHT_NODE_AFFINITY * node_aff[i]
            + WEIGHT_POD_AFFINITY * pod_aff[i]
            + WEIGHT_TAINTS * taints[i];
        (score, std::cmp::Reverse(n.count), mix(tiebreak, n.name))
    };
    let winner = (0..feasible.len()).max_by_key(|&i| key(i)).expect("at least one feasible node");
    feasible[winner].name
}

/// How raw scores become 0–100 over the candidates, as kube-scheduler normalises each plugin's.
#[derive(Clone, Copy)]
enum Scale {
    /// `raw × 100 / max` (node affinity).
    Max,
    /// `100 − raw × 100 / max`: fewer is better (untolerated soft taints).
    ReverseMax,
    /// `(raw − min) × 100 / (max − min)`: raw may be negative (pod affinity).
    MinMax,
}

fn normalise(raw: &[i64], scale: Scale) -> Vec<i64> {
    let (min, max) = (raw.iter().copied().min().unwrap_or(0), raw.iter().copied().max().unwrap_or(0));
    raw.iter()
        .map(|&r| match scale {
            Scale::Max if max > 0 => r * 100 / max,
            Scale::ReverseMax if max > 0 => 100 - r * 100 / max,
            Scale::ReverseMax => 100,
            Scale::MinMax if max > min => (r - min) * 100 / (max - min),
            _ => 0,
        })
        .collect()
}

/// A stable per-(tiebreak, node) number, so one tiebreak value orders nodes one way.
fn mix(tiebreak: u64, name: &str) -> u64 {
    // FNV-1a over the name, seeded with the tiebreak: cheap and well spread.
    name.bytes().fold(tiebreak ^ 0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
