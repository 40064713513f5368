//! Networking for VMIs: each VMI's QEMU runs in its own network namespace, wired to the node like a pod.
//!
//! Where to start: [`NodeNet::ensure`] sets up the node once; [`NodeNet::setup_vmi`] plumbs one VMI (namespace
//! `kumo-<id>`, veth to the node bridge `kumo0`, the inner bridge `k6t-br` with the guest's tap, NAT for the
//! masquerade binding) and returns a [`VmiNetwork`]; [`VmiNetwork::bind_dhcp`] then creates the DHCP socket
//! inside that namespace and [`dhcp::serve`] answers the guest — start it before QEMU.
//! [`NodeNet::teardown_vmi`] removes it all. [`Ipam`] hands out the pod addresses.
//!
//! Topology (verified on these machines, see DESIGN.md):
//!
//! ```text
//! node ns:   kumo0 10.244.0.1/24 ── kv-<id>        nft `ip kumo`: masquerade 10.244.0.0/24 out of !kumo0
//!                                     ║ veth
//! kumo-<id>: eth0 10.244.0.X/24 ── nft `ip kumo`: dnat ports → 10.0.2.2, masquerade 10.0.2.0/24 out of eth0
//!            k6t-br 10.0.2.1/24 ── tap0 ── guest 10.0.2.2 (DHCP from k6t-br)            [masquerade]
//!            k6t-br ⊃ {eth0, tap0}, 169.254.75.10/32 ── guest 10.244.0.X (DHCP)          [bridge]
//! ```
//!
//! Everything is done by shelling out to `ip` (iproute2) and `nft` (nftables), as root. [`NodeNet`] carries the
//! node-level parameters; its `netns` field lets tests put the "node" itself in a namespace.

pub mod dhcp;
pub mod ipam;
pub mod netns;
pub mod nft;
pub mod setup;

#[cfg(test)]
mod tests;

pub use dhcp::{bind_in_netns, serve, DhcpConfig};
pub use ipam::Ipam;
pub use nft::Proto;
pub use setup::{host_veth_name, mac_for, netns_name, Binding, GuestLink, NodeNet, VmiNetwork, VmiSpec};
