//! Two hosts on one machine (root, namespaces, no mocks): each "host" is a network namespace with its own node
//! bridge and pod CIDR, joined by an underlay bridge in a third namespace, the way the cluster end-to-end tests
//! simulate hosts. The host-gateway routes and NAT exemptions come from the agent's own code
//! ([`crate::agent::podnet::peers`], [`NodeNet::set_peer_cidrs`], [`NodeNet::sync_routes`]).
//!
//! ```text
//! kt-ha-*: up0 198.19.0.1/24 ─┐                    ┌─ up0 198.19.0.2/24 :kt-hb-*
//!   kumo0 10.244.1.1/24       └── ul0 (kt-ul-*) ───┘   kumo0 10.244.2.1/24
//!   VMI A (masquerade) 10.244.1.2 → guest 10.0.2.2       VMI B (bridge) guest 10.244.2.2
//! ```

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use k8s_openapi::api::core::v1::Node;

use super::netns::{self, run};
use super::tests::{answer_once, fetch, prerequisites, unique};
use super::*;
use crate::agent::podnet::{peers, tests::node};

const A_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);

struct Host {
    name: &'static str,
    net: NodeNet,
    /// The namespace standing in for the guest of this host's VMI.
    guest_ns: String,
    uid: String,
}

impl Host {
    fn ns(&self) -> &str {
        self.net.netns.as_deref().unwrap()
    }

    /// Programs this host from `nodes` as the agent does: NAT exemptions, then routes.
    fn program(&self, nodes: &[Node]) -> RoutePlan {
        let p = peers(self.name, self.net.pod_cidr, nodes);
        self.net.set_peer_cidrs(&p.cidrs.iter().copied().collect::<Vec<_>>()).unwrap();
        self.net.sync_routes(&p.routes).unwrap()
    }

    fn routes(&self) -> String {
        run("ip", &["-n", self.ns(), "route", "show"]).unwrap()
    }
}

/// Every namespace and VMI of the test; all removed on drop, also when the test panics.
struct TwoHosts {
    underlay: String,
    a: Host,
    b: Host,
    _dir: tempfile::TempDir,
}

impl TwoHosts {
    fn new() -> TwoHosts {
        let underlay = unique("kt-ul-");
        let host = |name: &'static str, cidr: &str| Host {
            name,
            net: NodeNet {
                netns: Some(unique(&format!("kt-h{}-", &name[5..]))),
                ..NodeNet::new(name, cidr.parse().unwrap()).unwrap()
            },
            guest_ns: unique(&format!("kt-g{}-", &name[5..])),
            uid: uuid::Uuid::new_v4().to_string(),
        };
        let env = TwoHosts {
            underlay,
            a: host("host-a", "10.244.1.0/24"),
            b: host("host-b", "10.244.2.0/24"),
            _dir: tempfile::tempdir().unwrap(),
        };
        netns::add(&env.underlay).unwrap();
        let ul = |args: &[&str]| run("ip", &[&["-n", &env.underlay], args].concat()).unwrap();
        ul(&["link", "add", "ul0", "type", "bridge"]);
        ul(&["link", "set", "ul0", "up"]);
        for (h, ip, port) in [(&env.a, A_IP, "pa"), (&env.b, B_IP, "pb")] {
            netns::add(h.ns()).unwrap();
            netns::add(&h.guest_ns).unwrap();
            run(
                "ip",
                &["-n", h.ns(), "link", "add", "up0", "type", "veth", "peer", "name", port, "netns", &env.underlay],
            )
            .unwrap();
            ul(&["link", "set", port, "master", "ul0", "up"]);
            run("ip", &["-n", h.ns(), "addr", "add", &format!("{ip}/24"), "dev", "up0"]).unwrap();
            run("ip", &["-n", h.ns(), "link", "set", "up0", "up"]).unwrap();
        }
        env
    }

    fn nodes(&self, with_b: bool) -> Vec<Node> {
        let mut v = vec![node("host-a", Some("10.244.1.0/24"), Some("198.19.0.1"), "True")];
        if with_b {
            v.push(node("host-b", Some("10.244.2.0/24"), Some("198.19.0.2"), "True"));
        }
        v
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        for h in [&self.a, &self.b] {
            if let Err(e) = h.net.teardown_vmi(&h.uid) {
                eprintln!("cleanup of VMI {}: {e:#}", h.uid);
            }
            let _ = netns::delete(&h.guest_ns);
            let _ = netns::delete(h.ns());
        }
        let _ = netns::delete(&self.underlay);
    }
}

/// Sets up the host's VMI with its stand-in guest `g0` configured statically (DHCP is tested elsewhere).
fn vmi(h: &Host, binding: Binding) -> VmiNetwork {
    let pod_ip = h.net.pod_cidr.nth(2).unwrap();
    let link = GuestLink::Veth { peer_netns: h.guest_ns.clone(), peer_name: "g0".into() };
    let net = h.net.setup_vmi(&VmiSpec { uid: h.uid.clone(), binding, pod_ip, mac: None, link }).unwrap();
    let (addr, router) = match net.dhcp.router {
        Some(r) => (format!("{}/{}", net.guest_ip, net.dhcp.prefix_len), r),
        None => panic!("no router in {:?}", net.dhcp),
    };
    run("ip", &["-n", &h.guest_ns, "addr", "add", &addr, "dev", "g0"]).unwrap();
    run("ip", &["-n", &h.guest_ns, "route", "add", "default", "via", &router.to_string()]).unwrap();
    net
}

fn peer_ip(peer: Option<SocketAddr>) -> Option<std::net::IpAddr> {
    peer.map(|p| p.ip())
}

#[test]
fn pods_on_two_hosts_reach_each_other_by_pod_ip() {
    prerequisites("pods_on_two_hosts_reach_each_other_by_pod_ip");
    let env = TwoHosts::new();
    let (a, b) = (&env.a, &env.b);
    assert_ne!(a.net.vmi_names(&a.uid), b.net.vmi_names(&a.uid), "per-node names");
    let nodes = env.nodes(true);
    for h in [a, b] {
        let p = peers(h.name, h.net.pod_cidr, &nodes);
        h.net.ensure(&p.cidrs.iter().copied().collect::<Vec<_>>()).unwrap();
    }
    let net_a = vmi(a, Binding::Masquerade { ports: vec![(8080, Proto::Tcp)] });
    let net_b = vmi(b, Binding::Bridge);
    assert_eq!((net_a.pod_ip, net_b.pod_ip), (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 2, 2)));
    // Someone else's route inside the cluster CIDR, which kumo must never touch.
    run("ip", &["-n", a.ns(), "route", "add", "10.244.9.0/24", "via", "198.19.0.2", "proto", "static"]).unwrap();

    let plan_a = a.program(&nodes);
    assert_eq!(plan_a.replace, vec![("10.244.2.0/24".parse().unwrap(), B_IP)]);
    assert_eq!(b.program(&nodes).replace, vec![("10.244.1.0/24".parse().unwrap(), A_IP)]);
    assert!(a.program(&nodes).is_empty(), "a second sync changes nothing");
    assert!(a.routes().contains("10.244.2.0/24 via 198.19.0.2 dev up0 proto 75"), "{}", a.routes());

    let (guest_a, guest_b) = (netns::path(&a.guest_ns), netns::path(&b.guest_ns));
    // A's guest (behind masquerade) → B's guest at its pod IP: B sees A's pod IP, not host A's address.
    let srv = answer_once(&guest_b, SocketAddrV4::new(net_b.pod_ip, 8080));
    let got = fetch(&guest_a, SocketAddrV4::new(net_b.pod_ip, 8080)).expect("A's guest reaches B's pod IP");
    assert!(got.starts_with("hello 10.244.1.2:"), "{got}");
    assert_eq!(peer_ip(srv.join().unwrap()), Some(net_a.pod_ip.into()), "source preserved from A to B");
    // And back: B's guest → A's pod IP:8080, forwarded to A's guest, which sees B's guest's pod IP.
    let srv = answer_once(&guest_a, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8080));
    fetch(&guest_b, SocketAddrV4::new(net_a.pod_ip, 8080)).expect("B's guest reaches A's pod IP");
    assert_eq!(peer_ip(srv.join().unwrap()), Some(net_b.pod_ip.into()), "source preserved from B to A");
    // The exemption is what preserves it: without B's block in A's set, host A masquerades to its own address.
    a.net.set_peer_cidrs(&[]).unwrap();
    let srv = answer_once(&guest_b, SocketAddrV4::new(net_b.pod_ip, 8081));
    fetch(&guest_a, SocketAddrV4::new(net_b.pod_ip, 8081)).unwrap();
    assert_eq!(peer_ip(srv.join().unwrap()), Some(A_IP.into()));

    // Node B goes away: A's route to its block goes, the foreign route stays, and B's pods are unreachable.
    let plan = a.program(&env.nodes(false));
    assert_eq!(plan.delete, vec!["10.244.2.0/24".to_string()]);
    let routes = a.routes();
    assert!(!routes.contains("10.244.2.0/24"), "{routes}");
    assert!(routes.contains("10.244.9.0/24 via 198.19.0.2 dev up0 proto static"), "{routes}");
    assert!(routes::ours(Some(a.ns())).unwrap().is_empty());
    assert!(fetch(&guest_a, SocketAddrV4::new(net_b.pod_ip, 8080)).is_err(), "B's pod still reachable");
    let rules = nft::list_ruleset(Some(a.ns())).unwrap();
    assert!(rules.contains("elements = { 10.244.1.0/24 }"), "B's block is no longer exempt: {rules}");
}
