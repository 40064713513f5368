//! Real-network tests (root, namespaces, no mocks). The "node" is a namespace of its own so the host's
//! interfaces and sysctls are never touched; a second namespace plays the guest, joined to `k6t-br` by a veth
//! standing in for the tap; a third is "the outside world" behind the node's masquerade.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::netns::{self, in_netns, run};
use super::*;

/// Fails the test (never skips it) unless it runs as root with `ip`, `nft` and `busybox` installed.
pub(super) fn prerequisites(test: &str) -> bool {
    let have = |p: &str| {
        Command::new("sh").args(["-c", &format!("command -v {p}")]).output().is_ok_and(|o| o.status.success())
    };
    let missing: Vec<&str> = ["ip", "nft", "busybox"].into_iter().filter(|p| !have(p)).collect();
    assert!(
        nix::unistd::Uid::effective().is_root() && missing.is_empty(),
        "{test} needs root and iproute2, nftables and busybox (missing: {missing:?}): apt-get install iproute2 \
         nftables busybox, and run the tests as root"
    );
    true
}

/// The pod CIDR of the simulated node.
const POD_CIDR: &str = "10.244.0.0/24";

pub(super) fn unique(prefix: &str) -> String {
    format!("{prefix}{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// Owns every namespace and VMI a test creates; removes them on drop, also when the test panics.
struct Env {
    node: NodeNet,
    guest_ns: String,
    outside_ns: String,
    uids: Vec<String>,
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let env = Env {
            node: NodeNet {
                netns: Some(unique("kt-node-")),
                ..NodeNet::new("test-node", POD_CIDR.parse().unwrap()).unwrap()
            },
            guest_ns: unique("kt-guest-"),
            outside_ns: unique("kt-out-"),
            uids: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        env.node.ensure(&[]).unwrap();
        netns::add(&env.guest_ns).unwrap();
        netns::add(&env.outside_ns).unwrap();
        // The node's uplink to "the outside": node up0 198.18.0.1/24 ⇄ outside out0 198.18.0.2/24.
        let node = env.node.netns.as_deref().unwrap();
        run(
            "ip",
            &["-n", node, "link", "add", "up0", "type", "veth", "peer", "name", "out0", "netns", &env.outside_ns],
        )
        .unwrap();
        run("ip", &["-n", node, "addr", "add", "198.18.0.1/24", "dev", "up0"]).unwrap();
        run("ip", &["-n", node, "link", "set", "up0", "up"]).unwrap();
        run("ip", &["-n", &env.outside_ns, "addr", "add", "198.18.0.2/24", "dev", "out0"]).unwrap();
        run("ip", &["-n", &env.outside_ns, "link", "set", "out0", "up"]).unwrap();
        env
    }

    fn ns_path(name: &str) -> PathBuf {
        netns::path(name)
    }

    fn node_path(&self) -> PathBuf {
        netns::path(self.node.netns.as_deref().unwrap())
    }

    /// A new VMI whose stand-in guest is `peer` in the guest namespace.
    fn spec(&mut self, binding: Binding, peer: &str) -> VmiSpec {
        let uid = uuid::Uuid::new_v4().to_string();
        self.uids.push(uid.clone());
        let pod_ip = Ipam::for_cidr(self.dir.path(), self.node.pod_cidr).unwrap().allocate(&uid).unwrap();
        let link = GuestLink::Veth { peer_netns: self.guest_ns.clone(), peer_name: peer.into() };
        VmiSpec { uid, binding, pod_ip, mac: None, link }
    }

    /// Runs busybox udhcpc on the guest's `iface`, sending up to `tries` DISCOVERs one second apart; the script
    /// configures the lease and records its variables. `None` when no lease came.
    fn lease(&self, iface: &str, tries: u32) -> Option<(Duration, String)> {
        let ip = String::from_utf8(Command::new("sh").args(["-c", "command -v ip"]).output().unwrap().stdout).unwrap();
        let out = self.dir.path().join("lease.env");
        let script = self.dir.path().join("udhcpc.sh");
        let _ = std::fs::remove_file(&out);
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ncase \"$1\" in bound|renew)\n  {ip} addr add \"$ip/$mask\" dev \"$interface\"\n  \
                 [ -n \"$router\" ] && {ip} route add default via \"$router\"\n  \
                 env | grep -E '^(interface|ip|mask|subnet|broadcast|router|serverid|lease|dns|domain|mtu|staticroutes)=' \
                 > {out}\nesac\nexit 0\n",
                ip = ip.trim(),
                out = out.display()
            ),
        )
        .unwrap();
        run("chmod", &["+x", script.to_str().unwrap()]).unwrap();
        let start = Instant::now();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.guest_ns, "busybox", "udhcpc", "-f", "-q", "-n", "-T", "1"])
            .args(["-t", &tries.to_string(), "-i", iface, "-s", script.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                if !status.success() {
                    return None;
                }
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("udhcpc timed out");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some((start.elapsed(), std::fs::read_to_string(&out).expect("udhcpc script did not run")))
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for uid in &self.uids {
            if let Err(e) = self.node.teardown_vmi(uid) {
                eprintln!("cleanup of VMI {uid}: {e:#}");
            }
        }
        for ns in [&self.guest_ns, &self.outside_ns] {
            let _ = netns::delete(ns);
        }
        let _ = netns::delete(self.node.netns.as_deref().unwrap());
    }
}

fn env_var<'a>(env: &'a str, key: &str) -> Option<&'a str> {
    env.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// Listens on `addr` inside `ns`; a thread answers the first connection with "hello <peer>" and returns the peer.
pub(super) fn answer_once(ns: &Path, addr: SocketAddrV4) -> std::thread::JoinHandle<Option<SocketAddr>> {
    let listener = in_netns(ns, || TcpListener::bind(addr)).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, peer)) => {
                    s.set_nonblocking(false).unwrap();
                    s.write_all(format!("hello {peer}\n").as_bytes()).unwrap();
                    return Some(peer);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        None
    })
}

/// Connects to `addr` from inside `ns` and reads the answer.
pub(super) fn fetch(ns: &Path, addr: SocketAddrV4) -> std::io::Result<String> {
    in_netns(ns, || {
        let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
}

/// Runs the DHCP server for `net` on a runtime of its own; dropping the handle stops it.
struct Dhcp {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    rt: tokio::runtime::Runtime,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Dhcp {
    fn start(net: &VmiNetwork) -> Dhcp {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let socket = net.bind_dhcp().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = rt.spawn(serve(socket, net.dhcp.clone(), rx));
        Dhcp { stop: Some(tx), rt, task: Some(task) }
    }

    fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        self.rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await }).unwrap().unwrap().unwrap();
    }
}

/// The VMI's namespace (with its rules) and both veths are gone. The node's own table is the node's, not the VMI's.
fn assert_gone(env: &Env, net: &VmiNetwork) {
    let node = env.node.netns.as_deref().unwrap();
    assert!(!netns::exists(&net.netns_name));
    let links = run("ip", &["-n", node, "link"]).unwrap() + &run("ip", &["link"]).unwrap();
    assert!(!links.contains(&net.host_veth), "{links}");
    assert!(!run("ip", &["-n", &env.guest_ns, "link"]).unwrap().contains("g0"), "guest end of the veth remains");
}

#[test]
fn masquerade_vmi_end_to_end() {
    if !prerequisites("masquerade_vmi_end_to_end") {
        return;
    }
    let mut env = Env::new();
    let spec = env.spec(Binding::Masquerade { ports: vec![(8080, Proto::Tcp)] }, "g0");
    let t = Instant::now();
    let net = env.node.setup_vmi(&spec).unwrap();
    eprintln!("masquerade setup_vmi took {:?}", t.elapsed());
    assert_eq!(env.node.setup_vmi(&spec).unwrap(), net, "setup is idempotent");
    assert_eq!(net.guest_ip, Ipv4Addr::new(10, 0, 2, 2));
    assert_eq!(net.dhcp_iface, "k6t-br");

    let dhcp = Dhcp::start(&net);
    let (took, lease) = env.lease("g0", 5).expect("no lease");
    eprintln!("masquerade lease after {took:?}:\n{lease}");
    assert_eq!(env_var(&lease, "ip"), Some("10.0.2.2"));
    assert_eq!(env_var(&lease, "router"), Some("10.0.2.1"));
    assert_eq!(env_var(&lease, "mask"), Some("24"));
    assert_eq!(env_var(&lease, "serverid"), Some("10.0.2.1"));
    assert!(took < Duration::from_secs(3), "lease took {took:?}: the first OFFER was lost");
    dhcp.stop();

    let guest = Env::ns_path(&env.guest_ns);
    let node = env.node_path();
    // Ingress: node → pod_ip:8080 is DNATed to the guest.
    let srv = answer_once(&guest, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8080));
    let got = fetch(&node, SocketAddrV4::new(net.pod_ip, 8080)).unwrap();
    assert!(got.starts_with("hello 10.244.0.1:"), "{got}");
    assert!(srv.join().unwrap().is_some());
    // An undeclared port is not forwarded: the namespace itself refuses it.
    let stray = answer_once(&guest, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8081));
    assert!(fetch(&node, SocketAddrV4::new(net.pod_ip, 8081)).is_err());
    drop(stray);
    // Egress to the node: masqueraded to the pod address by the VMI namespace.
    let srv = answer_once(&node, SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, 1), 9091));
    fetch(&guest, SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, 1), 9091)).unwrap();
    assert_eq!(srv.join().unwrap().map(|p| p.ip()), Some(net.pod_ip.into()));
    // Egress beyond the node: masqueraded again, to the node's uplink address.
    let outside = Env::ns_path(&env.outside_ns);
    let srv = answer_once(&outside, SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 9092));
    fetch(&guest, SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 9092)).unwrap();
    assert_eq!(srv.join().unwrap().map(|p| p.ip()), Some(Ipv4Addr::new(198, 18, 0, 1).into()));

    env.node.teardown_vmi(&spec.uid).unwrap();
    assert_gone(&env, &net);
    env.node.teardown_vmi(&spec.uid).unwrap(); // already gone: fine
}

#[test]
fn bridge_vmi_gets_pod_ip() {
    if !prerequisites("bridge_vmi_gets_pod_ip") {
        return;
    }
    let mut env = Env::new();
    let spec = env.spec(Binding::Bridge, "g0");
    let t = Instant::now();
    let net = env.node.setup_vmi(&spec).unwrap();
    eprintln!("bridge setup_vmi took {:?}", t.elapsed());
    assert_eq!(env.node.setup_vmi(&spec).unwrap(), net, "setup is idempotent");
    assert_eq!(net.guest_ip, spec.pod_ip);
    let eth0 = run("ip", &["-n", &net.netns_name, "-4", "addr", "show", "dev", "eth0"]).unwrap();
    assert!(!eth0.contains("inet "), "eth0 keeps an address: {eth0}");

    let dhcp = Dhcp::start(&net);
    let (took, lease) = env.lease("g0", 5).expect("no lease");
    eprintln!("bridge lease after {took:?}:\n{lease}");
    assert_eq!(env_var(&lease, "ip"), Some(spec.pod_ip.to_string().as_str()));
    assert_eq!(env_var(&lease, "router"), Some("10.244.0.1"));
    assert_eq!(env_var(&lease, "mask"), Some("24"));
    assert!(took < Duration::from_secs(3), "lease took {took:?}");
    dhcp.stop();

    let guest = Env::ns_path(&env.guest_ns);
    let node = env.node_path();
    // The guest owns the pod address on the node segment: reachable directly, on any port.
    let srv = answer_once(&guest, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8080));
    let got = fetch(&node, SocketAddrV4::new(spec.pod_ip, 8080)).unwrap();
    assert!(got.starts_with("hello 10.244.0.1:"), "{got}");
    assert!(srv.join().unwrap().is_some());
    // Its traffic leaves the node masqueraded.
    let outside = Env::ns_path(&env.outside_ns);
    let srv = answer_once(&outside, SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 9092));
    fetch(&guest, SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 9092)).unwrap();
    assert_eq!(srv.join().unwrap().map(|p| p.ip()), Some(Ipv4Addr::new(198, 18, 0, 1).into()));

    env.node.teardown_vmi(&spec.uid).unwrap();
    assert_gone(&env, &net);
}

#[test]
fn tap_is_owned_single_queue_and_torn_down() {
    if !prerequisites("tap_is_owned_single_queue_and_torn_down") {
        return;
    }
    let mut env = Env::new();
    let mut spec = env.spec(Binding::Masquerade { ports: vec![] }, "g0");
    // Ids no account has: `ip` prints names for ids it can resolve (installing prometheus made group 108).
    spec.link = GuestLink::Tap { owner: Some((61107, 61108)) };
    spec.mac = Some("02:4B:56:00:00:2A".into());
    let net = env.node.setup_vmi(&spec).unwrap();
    assert_eq!(net.mac, "02:4b:56:00:00:2a");
    assert_eq!(env.node.setup_vmi(&spec).unwrap(), net, "setup is idempotent with a live tap");
    let tap = run("ip", &["-n", &net.netns_name, "-d", "link", "show", "dev", "tap0"]).unwrap();
    assert!(tap.contains("tun type tap") && tap.contains("user 61107") && tap.contains("group 61108"), "{tap}");
    assert!(tap.contains("vnet_hdr") && !tap.contains("multi_queue"), "{tap}");
    assert!(tap.contains("master k6t-br"), "{tap}");
    let rules = nft::list_ruleset(Some(&net.netns_name)).unwrap();
    assert!(rules.contains("meta l4proto { tcp, udp, sctp } dnat to 10.0.2.2"), "{rules}");
    env.node.teardown_vmi(&spec.uid).unwrap();
    assert_gone(&env, &net);
    // Node level: removing it leaves neither bridge nor table (and is idempotent).
    let node = env.node.netns.clone().unwrap();
    env.node.remove().unwrap();
    env.node.remove().unwrap();
    assert!(!run("ip", &["-n", &node, "link"]).unwrap().contains("kumo0"));
    assert!(!nft::list_ruleset(Some(&node)).unwrap().contains("kumo"));
}

/// Bridge-mode VMIs share the node's L2 segment: a guest must never get another VMI's DHCP answer, even from a
/// server that (unlike ours) would answer any MAC.
#[test]
fn bridge_dhcp_stays_inside_the_vmi() {
    if !prerequisites("bridge_dhcp_stays_inside_the_vmi") {
        return;
    }
    let mut env = Env::new();
    let node = env.node.netns.clone().unwrap();
    let bridge_mac = || run("ip", &["-n", &node, "-br", "link", "show", "dev", "kumo0"]).unwrap();
    let before = bridge_mac();
    assert!(before.split_whitespace().nth(2).is_some_and(|m| m.starts_with("02:4b:4e:")), "{before}");
    let a = env.spec(Binding::Bridge, "g0");
    let b = env.spec(Binding::Bridge, "g1");
    let net_a = env.node.setup_vmi(&a).unwrap();
    let mut net_b = env.node.setup_vmi(&b).unwrap();
    assert_eq!(bridge_mac().split_whitespace().nth(2), before.split_whitespace().nth(2), "gateway MAC changed");
    net_b.dhcp.client_mac = None; // promiscuous: answers whoever asks
    let dhcp_b = Dhcp::start(&net_b);
    assert!(env.lease("g0", 2).is_none(), "guest A got a lease from VMI B's server");
    let dhcp_a = Dhcp::start(&net_a);
    let (_, lease) = env.lease("g0", 3).expect("no lease from its own server");
    assert_eq!(env_var(&lease, "ip"), Some(a.pod_ip.to_string().as_str()));
    dhcp_a.stop();
    dhcp_b.stop();
}

/// A guest plumbed by an agent from before per-node tokens keeps its names, so the upgraded agent reattaches
/// to it and cleans it up; new guests get the token names.
#[test]
fn names_from_an_older_agent_are_kept() {
    if !prerequisites("names_from_an_older_agent_are_kept") {
        return;
    }
    let mut env = Env::new();
    let spec = env.spec(Binding::Masquerade { ports: vec![] }, "g0");
    let short = super::setup::short_id(&spec.uid);
    let legacy = format!("kumo-{short}");
    netns::add(&legacy).unwrap();
    let net = env.node.setup_vmi(&spec).unwrap();
    assert_eq!((net.netns_name.as_str(), net.host_veth.as_str()), (legacy.as_str(), format!("kv-{short}").as_str()));
    assert!(!netns::exists(&netns_name(&env.node.token, &spec.uid)), "a second namespace for the same guest");
    env.node.teardown_vmi(&spec.uid).unwrap();
    assert_gone(&env, &net);
    assert_eq!(env.node.vmi_names(&spec.uid).0, netns_name(&env.node.token, &spec.uid));
}
