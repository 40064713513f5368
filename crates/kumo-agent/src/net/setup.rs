//! Per-node and per-VMI network plumbing, by shelling out to `ip` and `nft`. Every step checks or replaces
//! what exists, so running [`NodeNet::ensure`] or [`NodeNet::setup_vmi`] again (after an agent restart) converges
//! instead of failing, and [`NodeNet::teardown_vmi`] succeeds when things are already gone.
//!
//! ```text
//! node:  kumo0 (10.244.N.1/24) ── kv<token>-<id> ══ veth ══ eth0 (netns kumo-<token>-<id>)
//! masquerade:  eth0 10.244.N.X/24 ─ nft dnat/masquerade ─ k6t-br 10.0.2.1/24 ─ tap0 ─ guest 10.0.2.2 (DHCP)
//! bridge:      eth0 (no address) ─┬─ k6t-br 169.254.75.10/32 (DHCP server only)
//!                                 └─ tap0 ─ guest 10.244.N.X/24 (DHCP), router 10.244.N.1
//! ```

use std::io;
use std::net::{Ipv4Addr, UdpSocket};
use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};

use super::dhcp::{self, DhcpConfig};
use super::netns::{self, run, succeeds};
use super::nft::{self, Proto};
use super::routes::{self, RoutePlan};
use kumo_api::cidr::Ipv4Cidr;
use std::collections::BTreeMap;

/// The node bridge.
pub const NODE_BRIDGE: &str = "kumo0";
/// The bridge inside each VMI namespace (KubeVirt's name).
pub const INNER_BRIDGE: &str = "k6t-br";
/// The namespace end of the veth pair.
pub const POD_IFACE: &str = "eth0";
/// The guest's link inside the namespace.
pub const TAP: &str = "tap0";
/// Masquerade binding: the inner bridge's address (the guest's gateway and DHCP server).
pub const MASQ_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
/// Masquerade binding: the guest's address.
pub const MASQ_GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const MASQ_PREFIX: u8 = 24;
/// Bridge binding: the inner bridge's placeholder address, the DHCP server identifier.
pub const BRIDGE_PLACEHOLDER: Ipv4Addr = Ipv4Addr::new(169, 254, 75, 10);
/// Default lease handed to guests.
pub const LEASE_SECS: u32 = 86_400;

/// How the guest is connected to the pod network (KubeVirt's interface binding methods).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// The guest sits behind NAT at 10.0.2.2; `ports` arriving at the pod address are forwarded to it (every
    /// TCP/UDP/SCTP port when empty).
    Masquerade { ports: Vec<(u16, Proto)> },
    /// The guest owns the pod address on the node's L2 segment.
    Bridge,
}

/// What the guest's end of the inner bridge is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestLink {
    /// A persistent tap for QEMU, owned by `owner` (uid, gid) so an unprivileged QEMU can open it.
    Tap { owner: Option<(u32, u32)> },
    /// A veth pair whose far end `peer_name` sits in the existing namespace `peer_netns`, with the guest's MAC:
    /// a stand-in guest for tests and debugging.
    Veth { peer_netns: String, peer_name: String },
}

/// One VMI's network request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmiSpec {
    pub uid: String,
    pub binding: Binding,
    /// The VMI's address on the node network (from [`super::Ipam`]).
    pub pod_ip: Ipv4Addr,
    /// The guest MAC; derived from the uid when `None`.
    pub mac: Option<String>,
    pub link: GuestLink,
}

/// The result of [`NodeNet::setup_vmi`]: everything QEMU and the DHCP server need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmiNetwork {
    /// `/run/netns/<netns_name>`.
    pub netns: PathBuf,
    pub netns_name: String,
    /// The node end of the veth pair.
    pub host_veth: String,
    /// The tap QEMU opens (inside `netns`).
    pub tap: String,
    /// The address the guest gets by DHCP.
    pub guest_ip: Ipv4Addr,
    /// The VMI's address on the node network (what status reports).
    pub pod_ip: Ipv4Addr,
    /// The guest MAC (`aa:bb:cc:dd:ee:ff`), for QEMU's `-device virtio-net-pci,mac=`.
    pub mac: String,
    /// The interface the DHCP server binds to (inside `netns`).
    pub dhcp_iface: String,
    /// The DHCP answer; callers may add hostname, DNS servers and search domains before serving.
    pub dhcp: DhcpConfig,
}

impl VmiNetwork {
    /// Binds the DHCP server socket inside this VMI's namespace.
    pub fn bind_dhcp(&self) -> io::Result<UdpSocket> {
        dhcp::bind_in_netns(&self.netns, &self.dhcp_iface)
    }
}

/// The node's pod network: a bridge with the gateway address, forwarding, and masquerade out of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNet {
    /// Where the node side lives: `None` is the agent's own namespace; a name places it in `/run/netns/<name>`
    /// (a simulated node, for tests).
    pub netns: Option<String>,
    /// One per host network namespace, so the name stays `kumo0` whichever node this is.
    pub bridge: String,
    /// This node's block (its Node's `spec.podCIDR`): the bridge holds the first address, guests the rest.
    pub pod_cidr: Ipv4Cidr,
    /// This node's short token ([`node_token`]) in the names of per-VMI namespaces and veths: namespace names
    /// are global to the machine, and several agents may share one.
    pub token: String,
    /// MTU for veths, taps and bridges, and advertised by DHCP; kernel defaults when `None`.
    pub mtu: Option<u16>,
}

/// A short token for a node name: 4 hex digits of its SHA-256. Every agent on a machine names its VMIs'
/// namespaces and veths with it, so two agents never collide even for one VMI uid (a migration's source and
/// target), and each recognizes its own.
pub fn node_token(node: &str) -> String {
    hex::encode(Sha256::digest(node.as_bytes()))[..4].to_string()
}

/// The short id names are derived from: 10 hex digits of the uid (its first ones when it is a UUID, a hash
/// otherwise), so interface names stay within 15 characters.
pub fn short_id(uid: &str) -> String {
    let hex: String = uid.chars().filter(|c| *c != '-').collect();
    if hex.len() >= 10 && hex.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) {
        hex[..10].to_string()
    } else {
        hex::encode(Sha256::digest(uid.as_bytes()))[..10].to_string()
    }
}

/// The VMI's network namespace: `kumo-<node token>-<10 hex of the uid>`.
pub fn netns_name(token: &str, uid: &str) -> String {
    format!("kumo-{token}-{}", short_id(uid))
}

/// The node end of the VMI's veth: `kv<node token>-<8 hex of the uid>`, 15 characters, the kernel's limit.
pub fn host_veth_name(token: &str, uid: &str) -> String {
    format!("kv{token}-{}", &short_id(uid)[..8])
}

/// A stable, locally administered unicast MAC for a uid: `02:4b:56` ("KV") and three hashed bytes.
pub fn mac_for(uid: &str) -> String {
    hashed_mac("02:4b:56", uid)
}

/// `prefix` (three locally administered unicast bytes) and three bytes hashed from `seed`.
fn hashed_mac(prefix: &str, seed: &str) -> String {
    let h = Sha256::digest(seed.as_bytes());
    format!("{prefix}:{:02x}:{:02x}:{:02x}", h[0], h[1], h[2])
}

/// `ip ARGS`, inside namespace `ns` when given.
fn ip(ns: Option<&str>, args: &[&str]) -> Result<String> {
    let mut v = Vec::with_capacity(args.len() + 2);
    if let Some(ns) = ns {
        v.extend_from_slice(&["-n", ns]);
    }
    v.extend_from_slice(args);
    run("ip", &v)
}

fn ip_in(ns: &str, args: &[&str]) -> Result<String> {
    ip(Some(ns), args)
}

fn link_exists(ns: Option<&str>, dev: &str) -> bool {
    let mut v = Vec::with_capacity(6);
    if let Some(ns) = ns {
        v.extend_from_slice(&["-n", ns]);
    }
    v.extend_from_slice(&["link", "show", "dev", dev]);
    succeeds("ip", &v)
}

/// The IPv4 addresses (`a.b.c.d/len`) on `dev`.
fn ipv4_addrs(ns: Option<&str>, dev: &str) -> Result<Vec<String>> {
    let out = ip(ns, &["-4", "-j", "addr", "show", "dev", dev])?;
    let links: serde_json::Value = serde_json::from_str(&out).context("parsing `ip -j addr`")?;
    Ok(links
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"].as_u64()?)))
        .collect())
}

fn del_link(ns: Option<&str>, dev: &str) -> Result<()> {
    if link_exists(ns, dev) {
        ip(ns, &["link", "del", "dev", dev])?;
    }
    Ok(())
}

/// Creates a bridge unless it exists (STP off, no forwarding delay) and pins its MAC to `mac`. Left alone, a
/// Linux bridge takes the lowest MAC of its ports, so the gateway's MAC would change under running guests
/// whenever a VMI's veth came or went.
fn ensure_bridge(ns: Option<&str>, name: &str, mac: &str) -> Result<()> {
    if !link_exists(ns, name) {
        ip(ns, &["link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0"])?;
    }
    ip(ns, &["link", "set", "dev", name, "address", mac])?;
    Ok(())
}

/// A stable locally administered MAC for kumo's own bridges: `02:4b:4e` ("KN") and three hashed bytes of `seed`.
fn infra_mac(seed: &str) -> String {
    hashed_mac("02:4b:4e", seed)
}

impl NodeNet {
    /// The pod network of node `node_name` with block `pod_cidr`, in the agent's own namespace.
    pub fn new(node_name: &str, pod_cidr: Ipv4Cidr) -> Result<NodeNet> {
        // The network address, the gateway, at least one guest, the broadcast address.
        ensure!(pod_cidr.prefix_len() <= 30, "pod CIDR {pod_cidr} is too small for a gateway and a guest");
        Ok(NodeNet { netns: None, bridge: NODE_BRIDGE.into(), pod_cidr, token: node_token(node_name), mtu: None })
    }

    /// The bridge's address: the guests' default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        self.pod_cidr.nth(1).expect("a pod CIDR holds a gateway")
    }

    /// The VMI's namespace name and node-side veth name. A guest started by an agent from before per-node
    /// tokens keeps the names it has (`kumo-<id>`, `kv-<id>`), so an upgraded agent reattaches to it and
    /// cleans it up.
    pub fn vmi_names(&self, uid: &str) -> (String, String) {
        let (ns, legacy) = (netns_name(&self.token, uid), format!("kumo-{}", short_id(uid)));
        if !netns::exists(&ns) && netns::exists(&legacy) {
            return (legacy, format!("kv-{}", short_id(uid)));
        }
        (ns, host_veth_name(&self.token, uid))
    }

    fn ip(&self, args: &[&str]) -> Result<String> {
        ip(self.netns.as_deref(), args)
    }

    /// Node-level setup, once per agent start: the bridge with the gateway address (and no other, should the
    /// pod CIDR have changed), IPv4 forwarding, and the NAT table ([`NodeNet::set_peer_cidrs`]).
    pub fn ensure(&self, peer_cidrs: &[Ipv4Cidr]) -> Result<()> {
        let ns = self.netns.as_deref();
        if let Some(ns) = ns {
            netns::add(ns)?;
        }
        let gateway = self.gateway();
        ensure_bridge(ns, &self.bridge, &infra_mac(&format!("node/{}/{gateway}", self.bridge)))?;
        let cidr = format!("{gateway}/{}", self.pod_cidr.prefix_len());
        for stale in ipv4_addrs(ns, &self.bridge)?.into_iter().filter(|a| *a != cidr) {
            self.ip(&["addr", "del", &stale, "dev", &self.bridge])?;
        }
        self.ip(&["addr", "replace", &cidr, "dev", &self.bridge])?;
        if let Some(mtu) = self.mtu {
            self.ip(&["link", "set", &self.bridge, "mtu", &mtu.to_string()])?;
        }
        self.ip(&["link", "set", &self.bridge, "up"])?;
        // Forwarding carries pod traffic out of the node, to other nodes' pods and back.
        netns::set_sysctl(ns.map(netns::path).as_deref(), "net.ipv4.ip_forward", "1")?;
        self.set_peer_cidrs(peer_cidrs)
    }

    /// Replaces the `ip kumo` table: masquerade pod traffic leaving through anything but the bridge, except
    /// to other nodes' pod CIDRs (`peer_cidrs`), so a pod on another node sees this pod's real address.
    pub fn set_peer_cidrs(&self, peer_cidrs: &[Ipv4Cidr]) -> Result<()> {
        nft::apply(self.netns.as_deref(), "ip", &nft::node_ruleset(self.pod_cidr, &self.bridge, peer_cidrs))
            .context("node nftables table (is the `nftables` package installed?)")
    }

    /// Makes this node's routes to other nodes' pod CIDRs exactly `routes` (block → that node's address), and
    /// leaves every route it did not create alone. See [`super::routes`].
    pub fn sync_routes(&self, routes: &BTreeMap<Ipv4Cidr, Ipv4Addr>) -> Result<RoutePlan> {
        routes::sync(self.netns.as_deref(), routes)
    }

    /// Removes the node-level bridge, table and routes (not the namespace given in `netns`). Forwarding stays
    /// on.
    pub fn remove(&self) -> Result<()> {
        let ns = self.netns.as_deref();
        if ns.is_some_and(|n| !netns::exists(n)) {
            return Ok(());
        }
        routes::sync(ns, &BTreeMap::new())?;
        nft::delete(ns, "ip")?;
        del_link(ns, &self.bridge)
    }

    /// Plumbs one VMI: namespace, veth to the node bridge, the binding's inner bridge and NAT, and the guest
    /// link. Safe to call again for the same VMI. Call [`NodeNet::ensure`] first.
    pub fn setup_vmi(&self, spec: &VmiSpec) -> Result<VmiNetwork> {
        let cidr = self.pod_cidr;
        ensure!(self.is_guest_address(spec.pod_ip), "pod address {} is not a guest address of {cidr}", spec.pod_ip);
        let mac = match &spec.mac {
            Some(m) => {
                let b = dhcp::parse_mac(m).with_context(|| format!("bad MAC {m:?}"))?;
                ensure!(b[0] & 1 == 0, "MAC {m} is multicast");
                // One spelling from here on (QEMU, ip, DHCP): `aa:bb:cc:dd:ee:ff`, whatever was written.
                b.map(|x| format!("{x:02x}")).join(":")
            }
            None => mac_for(&spec.uid),
        };
        let (ns, host_veth) = self.vmi_names(&spec.uid);
        let node_ns = self.netns.as_deref();
        let mtu = self.mtu.map(|m| m.to_string());

        netns::add(&ns).with_context(|| format!("namespace {ns}"))?;
        // The veth pair: reuse a complete one; a half (after a crash) is removed and recreated.
        let have_host = link_exists(node_ns, &host_veth);
        let have_pod = link_exists(Some(&ns), POD_IFACE);
        if have_host != have_pod {
            del_link(node_ns, &host_veth)?;
            del_link(Some(&ns), POD_IFACE)?;
        }
        if !(have_host && have_pod) {
            self.ip(&["link", "add", &host_veth, "type", "veth", "peer", "name", POD_IFACE, "netns", &ns])
                .context("creating the veth pair")?;
        }
        self.ip(&["link", "set", &host_veth, "master", &self.bridge])?;
        ensure_bridge(Some(&ns), INNER_BRIDGE, &infra_mac(&format!("vmi/{}", spec.uid)))?;
        self.ensure_guest_link(&ns, &spec.link, &mac)?;
        if let Some(m) = &mtu {
            self.ip(&["link", "set", &host_veth, "mtu", m])?;
            for dev in [POD_IFACE, TAP, INNER_BRIDGE] {
                ip_in(&ns, &["link", "set", dev, "mtu", m])?;
            }
        }
        self.ip(&["link", "set", &host_veth, "up"])?;

        let (gateway, prefix_len) = (self.gateway(), self.pod_cidr.prefix_len());
        let pod_cidr = format!("{}/{prefix_len}", spec.pod_ip);
        let (guest_ip, dhcp) = match &spec.binding {
            Binding::Masquerade { ports } => {
                ip_in(&ns, &["link", "set", POD_IFACE, "nomaster"])?;
                ip_in(&ns, &["addr", "replace", &pod_cidr, "dev", POD_IFACE])?;
                ip_in(&ns, &["link", "set", POD_IFACE, "up"])?;
                // A previous address (the pod CIDR changed) must not linger beside the new one.
                for stale in ipv4_addrs(Some(&ns), POD_IFACE)?.into_iter().filter(|a| *a != pod_cidr) {
                    ip_in(&ns, &["addr", "del", &stale, "dev", POD_IFACE])?;
                }
                ip_in(&ns, &["route", "replace", "default", "via", &gateway.to_string(), "dev", POD_IFACE])?;
                let br_cidr = format!("{MASQ_GATEWAY}/{MASQ_PREFIX}");
                ip_in(&ns, &["addr", "replace", &br_cidr, "dev", INNER_BRIDGE])?;
                ip_in(&ns, &["link", "set", INNER_BRIDGE, "up"])?;
                ip_in(&ns, &["link", "set", TAP, "master", INNER_BRIDGE, "up"])?;
                netns::set_sysctl(Some(&netns::path(&ns)), "net.ipv4.ip_forward", "1")?;
                let guest_net = Ipv4Addr::from(u32::from(MASQ_GUEST) & u32::from(dhcp::prefix_mask(MASQ_PREFIX)));
                let rules =
                    nft::masquerade_ruleset(POD_IFACE, spec.pod_ip, MASQ_GUEST, (guest_net, MASQ_PREFIX), ports);
                nft::apply(Some(&ns), "ip", &rules).context("masquerade rules")?;
                // The guest's MAC is known: without this entry, connections tried before the guest is up leave
                // the neighbour INCOMPLETE, and the first one after it is up waits for the next ARP retry (up
                // to a second). Permanent is safe here: the entry lives and dies with the namespace.
                let guest = MASQ_GUEST.to_string();
                ip_in(&ns, &["neigh", "replace", &guest, "lladdr", &mac, "dev", INNER_BRIDGE, "nud", "permanent"])?;
                (MASQ_GUEST, self.dhcp_config(MASQ_GATEWAY, MASQ_GUEST, MASQ_PREFIX, MASQ_GATEWAY, &mac))
            }
            Binding::Bridge => {
                ip_in(&ns, &["addr", "flush", "dev", POD_IFACE])?;
                ip_in(&ns, &["link", "set", POD_IFACE, "master", INNER_BRIDGE, "up"])?;
                ip_in(&ns, &["addr", "replace", &format!("{BRIDGE_PLACEHOLDER}/32"), "dev", INNER_BRIDGE])?;
                ip_in(&ns, &["link", "set", INNER_BRIDGE, "up"])?;
                ip_in(&ns, &["link", "set", TAP, "master", INNER_BRIDGE, "up"])?;
                nft::apply(Some(&ns), "bridge", &nft::bridge_isolation_ruleset(POD_IFACE))
                    .context("bridge DHCP isolation rules")?;
                // As for masquerade, but on the node bridge, so not permanent: the kernel re-verifies and ages
                // it out, and the next VMI given this address replaces it.
                let pod = spec.pod_ip.to_string();
                self.ip(&["neigh", "replace", &pod, "lladdr", &mac, "dev", &self.bridge, "nud", "reachable"])?;
                let cfg = self.dhcp_config(BRIDGE_PLACEHOLDER, spec.pod_ip, prefix_len, gateway, &mac);
                (spec.pod_ip, cfg)
            }
        };
        Ok(VmiNetwork {
            netns: netns::path(&ns),
            netns_name: ns,
            host_veth,
            tap: TAP.into(),
            guest_ip,
            pod_ip: spec.pod_ip,
            mac,
            dhcp_iface: INNER_BRIDGE.into(),
            dhcp,
        })
    }

    /// Whether `addr` may be a guest's: inside the pod CIDR, neither its network, broadcast nor gateway address.
    pub fn is_guest_address(&self, addr: Ipv4Addr) -> bool {
        self.pod_cidr.contains(addr)
            && addr != self.pod_cidr.network()
            && addr != self.pod_cidr.last()
            && addr != self.gateway()
    }

    fn dhcp_config(&self, server: Ipv4Addr, client: Ipv4Addr, prefix: u8, router: Ipv4Addr, mac: &str) -> DhcpConfig {
        DhcpConfig {
            server_ip: server,
            client_ip: client,
            prefix_len: prefix,
            router: Some(router),
            dns: Vec::new(),
            domain: None,
            search: Vec::new(),
            hostname: None,
            lease_secs: LEASE_SECS,
            mtu: self.mtu,
            client_mac: dhcp::parse_mac(mac),
        }
    }

    fn ensure_guest_link(&self, ns: &str, link: &GuestLink, mac: &str) -> Result<()> {
        match link {
            GuestLink::Tap { owner } => {
                if link_exists(Some(ns), TAP) {
                    return Ok(()); // persistent, perhaps open by a running QEMU: keep it
                }
                let (uid, gid) = owner.map(|(u, g)| (u.to_string(), g.to_string())).unzip();
                let mut args = vec!["tuntap", "add", "dev", TAP, "mode", "tap"];
                if let (Some(u), Some(g)) = (&uid, &gid) {
                    args.extend_from_slice(&["user", u, "group", g]);
                }
                args.push("vnet_hdr");
                ip_in(ns, &args).context("creating the tap (is the tun module loaded?)")?;
            }
            GuestLink::Veth { peer_netns, peer_name } => {
                if !link_exists(Some(ns), TAP) {
                    ip_in(ns, &["link", "add", TAP, "type", "veth", "peer", "name", peer_name, "netns", peer_netns])?;
                }
                ip_in(peer_netns, &["link", "set", peer_name, "address", mac, "up"])?;
            }
        }
        Ok(())
    }

    /// Removes everything [`NodeNet::setup_vmi`] created for `uid`; succeeds if it is already gone. Stop the
    /// VMI's QEMU and DHCP server first: their file descriptors keep the namespace alive otherwise (the links
    /// are still deleted explicitly, so nothing stays attached to the node bridge either way).
    pub fn teardown_vmi(&self, uid: &str) -> Result<()> {
        let (ns, host_veth) = self.vmi_names(uid);
        let node_ns = self.netns.as_deref();
        if node_ns.is_none_or(netns::exists) {
            del_link(node_ns, &host_veth)?;
        }
        if netns::exists(&ns) {
            // Links go explicitly (an open fd can keep the namespace alive); its nft tables go with it.
            for dev in [TAP, POD_IFACE, INNER_BRIDGE] {
                del_link(Some(&ns), dev)?;
            }
            netns::delete(&ns)?;
        }
        if netns::exists(&ns) {
            bail!("namespace {ns} still exists after deletion");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_are_stable() {
        let uid = "3f2b8c1e-9a7d-4e0f-b1c2-d3e4f5a6b7c8";
        assert_eq!(short_id(uid), "3f2b8c1e9a");
        let token = node_token("node-a");
        assert_eq!(token.len(), 4);
        assert_eq!(token, node_token("node-a"));
        assert_ne!(token, node_token("node-b"));
        assert_eq!(netns_name(&token, uid), format!("kumo-{token}-3f2b8c1e9a"));
        assert_eq!(host_veth_name(&token, uid), format!("kv{token}-3f2b8c1e"));
        assert_eq!(host_veth_name(&token, uid).len(), 15);
        // Two nodes, one uid (a migration's source and target on one machine): nothing shared.
        assert_ne!(netns_name(&token, uid), netns_name(&node_token("node-b"), uid));
        assert_ne!(host_veth_name(&token, uid), host_veth_name(&node_token("node-b"), uid));
        let net = NodeNet::new("node-a", "10.244.3.0/24".parse().unwrap()).unwrap();
        assert_eq!(net.vmi_names(uid), (netns_name(&token, uid), host_veth_name(&token, uid)));
        assert_eq!(net.gateway(), Ipv4Addr::new(10, 244, 3, 1));
        assert!(net.is_guest_address(Ipv4Addr::new(10, 244, 3, 2)));
        for not in [[10, 244, 3, 0], [10, 244, 3, 1], [10, 244, 3, 255], [10, 244, 4, 2]] {
            assert!(!net.is_guest_address(Ipv4Addr::from(not)), "{not:?}");
        }
        assert!(NodeNet::new("n", "10.0.0.0/31".parse().unwrap()).is_err());
        let odd = short_id("My VMI/uid!");
        assert_eq!(odd.len(), 10);
        assert!(odd.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(odd, short_id("My VMI/uid!"));
    }

    #[test]
    fn generated_mac_is_local_unicast_and_stable() {
        let m = mac_for("uid-1");
        assert_eq!(m, mac_for("uid-1"));
        assert_ne!(m, mac_for("uid-2"));
        let b = dhcp::parse_mac(&m).unwrap();
        assert_eq!(b[0] & 0b11, 0b10, "locally administered unicast");
        assert!(m.starts_with("02:4b:56:"));
    }
}
