//! This node's part of the cluster's pod network. The control plane gives every Node a block of the cluster
//! CIDR (`spec.podCIDR`); the agent waits for its own ([`wait_for_pod_cidr`]), builds the node bridge and the
//! VMIs' addresses from it alone, and keeps a host-gateway route to every other Ready Node's block via that
//! Node's InternalIP ([`peers`] decides, [`start`] applies and then follows the Nodes with a watch).
//!
//! The pod CIDR is read once per agent start. If the Node is deleted and re-created while the agent runs, its
//! new block is used only after a restart (logged as an error until then); on that restart, guests whose
//! addresses are outside the new block fail with `PodCIDRChanged` (their VMs start them again, with new
//! addresses), and the others keep theirs.

use crate::net::NodeNet;
use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::{self, reflector};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use kumo_api::cidr::{node_pod_cidrs, Ipv4Cidr};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

/// How often the routes are compared with what the kernel has even when no Node changed, repairing any that
/// someone removed.
const RESYNC: Duration = Duration::from_secs(60);

/// What this node needs to reach the other nodes' pods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peers {
    /// Block → the address of the Ready node that holds it.
    pub routes: BTreeMap<Ipv4Cidr, Ipv4Addr>,
    /// Every other node's block, Ready or not: traffic to them is never masqueraded.
    pub cidrs: BTreeSet<Ipv4Cidr>,
}

fn is_ready(node: &Node) -> bool {
    let conditions = node.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.into_iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True")
}

fn internal_ip(node: &Node) -> Option<Ipv4Addr> {
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    addresses.into_iter().flatten().filter(|a| a.type_ == "InternalIP").find_map(|a| a.address.parse().ok())
}

/// The pod CIDR of `node` that is IPv4, if any.
pub fn pod_cidr(node: &Node) -> Option<Ipv4Cidr> {
    node_pod_cidrs(node).iter().find_map(|c| c.parse().ok())
}

/// The routes and NAT exemptions node `me` (block `own`) wants, from every Node. A block overlapping `own` is
/// ignored (it would capture this node's own pods' traffic); of two nodes claiming one block, the first by name
/// wins.
pub fn peers<'a>(me: &str, own: Ipv4Cidr, nodes: impl IntoIterator<Item = &'a Node>) -> Peers {
    // Simulated nodes have no pods to reach (and made-up addresses).
    let simulated = |n: &Node| n.labels().contains_key(crate::simulate::SIMULATED_LABEL);
    let mut sorted: Vec<&Node> = nodes.into_iter().filter(|n| n.name_any() != me && !simulated(n)).collect();
    sorted.sort_by_key(|n| n.name_any());
    let mut out = Peers::default();
    for node in sorted {
        let Some(block) = pod_cidr(node).filter(|b| !b.overlaps(&own)) else { continue };
        out.cidrs.insert(block);
        if let (true, Some(ip)) = (is_ready(node), internal_ip(node)) {
            out.routes.entry(block).or_insert(ip);
        }
    }
    out
}

/// Waits until the control plane has given Node `name` a pod CIDR, saying why it waits. It watches the one Node
/// (thousands of joining nodes polling would be a load of their own).
pub async fn wait_for_pod_cidr(client: &kube::Client, name: &str) -> Result<Ipv4Cidr> {
    use futures::StreamExt;
    let nodes: Api<Node> = Api::all(client.clone());
    let mut stream = Box::pin(kube::runtime::watcher::watch_object(nodes, name));
    let mut said = None::<tokio::time::Instant>;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), stream.next()).await;
        match next {
            Ok(Some(Ok(Some(node)))) => {
                if let Some(block) = pod_cidr(&node) {
                    return Ok(block);
                }
                if let Some(other) = node_pod_cidrs(&node).first() {
                    anyhow::bail!("Node {name} has pod CIDR {other:?}, which is no IPv4 CIDR kumo can use");
                }
            }
            Ok(Some(Ok(None))) | Err(_) => {}
            Ok(Some(Err(e))) => {
                tracing::warn!("watching Node {name}: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(None) => anyhow::bail!("the watch of Node {name} ended"),
        }
        if said.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
            tracing::info!(
                node = name,
                "waiting for the control plane to give this Node a spec.podCIDR (the node IPAM controller runs \
                 with the controllers: `kumo server` without --no-controllers, or `kumo controllers`)"
            );
            said = Some(tokio::time::Instant::now());
        }
    }
}

/// Sets up the node network of `net` (bridge, forwarding, NAT, routes to the Nodes listed now), then keeps
/// the routes in step with the Nodes in the background.
pub async fn start(client: kube::Client, me: String, net: NodeNet) -> Result<()> {
    let api: Api<Node> = Api::all(client);
    let nodes = api.list(&ListParams::default()).await.context("listing Nodes")?.items;
    let first = peers(&me, net.pod_cidr, &nodes);
    // The NAT exemptions are in place before the first pod sends: a connection masqueraded once stays so.
    let (n, cidrs) = (net.clone(), first.cidrs.iter().copied().collect::<Vec<_>>());
    tokio::task::spawn_blocking(move || n.ensure(&cidrs)).await?.context("setting up the node network")?;
    apply(&net, &first, false).await.context("routes to the other nodes' pods")?;
    tracing::info!(node = %me, pod_cidr = %net.pod_cidr, gateway = %net.gateway(), "node pod network ready");
    tokio::spawn(follow(api, me, net, first));
    Ok(())
}

/// Applies `want` (the NAT set only if `nat` says it changed), logging each route change.
async fn apply(net: &NodeNet, want: &Peers, nat: bool) -> Result<()> {
    let (n, w) = (net.clone(), want.clone());
    let plan = tokio::task::spawn_blocking(move || {
        if nat {
            n.set_peer_cidrs(&w.cidrs.iter().copied().collect::<Vec<_>>())?;
        }
        n.sync_routes(&w.routes)
    })
    .await??;
    for (dst, via) in &plan.replace {
        tracing::info!("route to pod CIDR {dst} via {via}");
    }
    for dst in &plan.delete {
        tracing::info!("removed the route to pod CIDR {dst}");
    }
    for (dst, proto) in &plan.foreign {
        tracing::warn!(
            "a route kumo did not make (protocol {proto}) already leads to pod CIDR {dst}: kumo leaves it alone"
        );
    }
    Ok(())
}

/// Follows the Nodes and re-applies whenever what this node wants changes, and every [`RESYNC`].
async fn follow(api: Api<Node>, me: String, net: NodeNet, mut applied: Peers) {
    let (reader, writer) = reflector::store();
    let mut events = Box::pin(reflector(writer, watcher(api, super::watch_config(&me)).default_backoff()));
    // `start` has just applied: the first resync is one period away.
    let mut resync = tokio::time::interval_at(tokio::time::Instant::now() + RESYNC, RESYNC);
    let (mut ready, mut warned_cidr) = (false, false);
    loop {
        let forced = tokio::select! {
            ev = events.next() => match ev {
                None => return,
                Some(Err(e)) => {
                    tracing::warn!("watching Nodes for pod routes: {e}");
                    continue;
                }
                Some(Ok(ev)) => {
                    ready |= matches!(ev, watcher::Event::InitDone);
                    false
                }
            },
            _ = resync.tick() => true,
        };
        if !ready {
            continue;
        }
        let nodes = reader.state();
        let own = nodes.iter().find(|n| n.name_any() == me).and_then(|n| pod_cidr(n));
        if let Some(now) = own.filter(|c| *c != net.pod_cidr && !warned_cidr) {
            let was = net.pod_cidr;
            tracing::error!(
                "this Node's pod CIDR is now {now} but this agent uses {was}: restart the agent to take it"
            );
            warned_cidr = true;
        }
        let want = peers(&me, net.pod_cidr, nodes.iter().map(|n| n.as_ref()));
        if want == applied && !forced {
            continue;
        }
        match apply(&net, &want, want.cidrs != applied.cidrs || forced).await {
            Ok(()) => applied = want,
            // Retried on the next event or resync.
            Err(e) => tracing::warn!("pod routes: {e:#}"),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeCondition, NodeSpec, NodeStatus};

    /// A Node as an agent and the IPAM controller leave it.
    pub(crate) fn node(name: &str, cidr: Option<&str>, ip: Option<&str>, ready: &str) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.spec =
            cidr.map(|c| NodeSpec { pod_cidr: Some(c.into()), pod_cidrs: Some(vec![c.into()]), ..Default::default() });
        n.status = Some(NodeStatus {
            addresses: Some(
                ip.into_iter()
                    .map(|a| NodeAddress { type_: "InternalIP".into(), address: a.into() })
                    .chain([NodeAddress { type_: "Hostname".into(), address: name.into() }])
                    .collect(),
            ),
            conditions: Some(vec![NodeCondition { type_: "Ready".into(), status: ready.into(), ..Default::default() }]),
            ..Default::default()
        });
        n
    }

    fn c(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn routes_to_every_other_ready_node() {
        let own = c("10.244.0.0/24");
        let nodes = [
            node("a", Some("10.244.0.0/24"), Some("198.19.0.1"), "True"),
            node("b", Some("10.244.1.0/24"), Some("198.19.0.2"), "True"),
            node("c", Some("10.244.2.0/24"), Some("198.19.0.3"), "Unknown"), // not Ready: no route, no NAT
            node("d", None, Some("198.19.0.4"), "True"),                     // no block yet
            node("e", Some("10.244.4.0/24"), None, "True"),                  // no address to route via
            node("f", Some("fd00::/64"), Some("198.19.0.6"), "True"),        // not IPv4
        ];
        let p = peers("a", own, &nodes);
        assert_eq!(p.routes, BTreeMap::from([(c("10.244.1.0/24"), Ipv4Addr::new(198, 19, 0, 2))]));
        assert_eq!(p.cidrs, BTreeSet::from([c("10.244.1.0/24"), c("10.244.2.0/24"), c("10.244.4.0/24")]));
        // Node b goes away: its route and exemption with it.
        let p = peers("a", own, nodes.iter().filter(|n| n.name_any() != "b"));
        assert!(p.routes.is_empty());
        assert!(!p.cidrs.contains(&c("10.244.1.0/24")));
    }

    #[test]
    fn conflicting_blocks() {
        let own = c("10.244.0.0/24");
        let nodes = [
            node("z", Some("10.244.1.0/24"), Some("198.19.0.26"), "True"),
            node("y", Some("10.244.1.0/24"), Some("198.19.0.25"), "True"),
            node("x", Some("10.244.0.0/23"), Some("198.19.0.24"), "True"), // covers our own block
        ];
        let p = peers("me", own, &nodes);
        assert_eq!(p.routes, BTreeMap::from([(c("10.244.1.0/24"), Ipv4Addr::new(198, 19, 0, 25))]));
        assert_eq!(p.cidrs, BTreeSet::from([c("10.244.1.0/24")]));
        assert_eq!(pod_cidr(&nodes[2]), Some(c("10.244.0.0/23")));
    }
}
