//! Networking for VMIs: each VMI's QEMU runs in its own network namespace, wired to the node like a pod.
//!
//! Where to start: [`NodeNet::new`] takes this node's pod CIDR (its Node's `spec.podCIDR`) and
//! [`NodeNet::ensure`] sets up the node once; [`NodeNet::setup_vmi`] plumbs one VMI (namespace
//! `kumo-<node token>-<id>`, veth `kv<node token>-<id>` to the node bridge `kumo0`, the inner bridge `k6t-br`
//! with the guest's tap, NAT for the masquerade binding) and returns a [`VmiNetwork`];
//! [`VmiNetwork::bind_dhcp`] then creates the DHCP socket inside that namespace and [`dhcp::serve`] answers the
//! guest — start it before QEMU. [`NodeNet::teardown_vmi`] removes it all. [`Ipam`] hands out the pod
//! addresses; [`routes`] carries traffic to other nodes' pod CIDRs (host-gateway routes).
//!
//! Topology (verified on these machines, see DESIGN.md), with this node's pod CIDR 10.244.N.0/24:
//!
//! ```text
//! node ns:   kumo0 10.244.N.1/24 ── kv<t>-<id>     nft `ip kumo`: masquerade 10.244.N.0/24 out of !kumo0,
//!                                     ║ veth                        except to any node's pod CIDR
//!            10.244.M.0/24 via <node M's InternalIP> proto 75   (one route per other Ready node)
//! kumo-<t>-<id>: eth0 10.244.N.X/24 ── nft `ip kumo`: dnat ports → 10.0.2.2, masquerade 10.0.2.0/24 out of eth0
//!            k6t-br 10.0.2.1/24 ── tap0 ── guest 10.0.2.2 (DHCP from k6t-br)            [masquerade]
//!            k6t-br ⊃ {eth0, tap0}, 169.254.75.10/32 ── guest 10.244.N.X (DHCP)          [bridge]
//! ```
//!
//! Everything is done by shelling out to `ip` (iproute2) and `nft` (nftables), as root. [`NodeNet`] carries the
//! node-level parameters; its `netns` field lets tests put the "node" itself in a namespace. One agent per host
//! network namespace: the bridge, the `ip kumo` table and the routes are the namespace's.

pub mod dhcp;
pub mod ipam;
pub mod netns;
pub mod nft;
pub mod routes;
pub mod setup;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_hosts;

pub use dhcp::{bind_in_netns, serve, DhcpConfig};
pub use ipam::Ipam;
pub use nft::Proto;
pub use routes::{RoutePlan, ROUTE_PROTO};
pub use setup::{host_veth_name, mac_for, netns_name, node_token, Binding, GuestLink, NodeNet, VmiNetwork, VmiSpec};
