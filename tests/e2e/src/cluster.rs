//! A whole cluster on one machine, from the real programs: an etcd cluster (Debian `etcd-server`), `kumo
//! server` replicas on it, and hosts — each a network namespace on a shared underlay bridge, running its own
//! `kumo agent` joined with a bootstrap token. Traffic stays inside: loopback, the underlay bridge this harness
//! creates, and the namespaces it creates.

use crate::{free_port, kumo_bin, Server};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Runs a command, failing with its stderr.
pub fn sh(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A short tag unique to this test process, for names that are global on the machine (bridges, namespaces).
pub fn tag() -> String {
    format!("{:04x}", std::process::id() & 0xffff)
}

// ---------------------------------------------------------------------------------------------------- etcd

struct Member {
    name: String,
    client: u16,
    peer: u16,
    data: PathBuf,
    child: Option<Child>,
}

/// An etcd cluster on loopback. Its timeouts are raised (heartbeat 300 ms, election 3 s) so that three
/// members and several QEMU guests on two cores do not flap.
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    initial: String,
}

impl EtcdCluster {
    pub fn start(n: usize) -> Result<EtcdCluster> {
        if Command::new("etcd").arg("--version").output().is_err() {
            bail!("etcd not found: install Debian etcd-server (scripts/setup.sh does)");
        }
        // A free port can be taken by another test between picking and binding it: try again on new ones.
        let mut tries = 0;
        loop {
            match Self::start_on_free_ports(n) {
                Err(e) if tries < 3 && format!("{e:#}").contains("address already in use") => tries += 1,
                other => return other,
            }
        }
    }

    fn start_on_free_ports(n: usize) -> Result<EtcdCluster> {
        let dir = tempfile::Builder::new().prefix("kumo-etcd-").tempdir()?;
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                data: dir.path().join(format!("m{i}")),
                child: None,
            })
            .collect();
        let initial =
            members.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer)).collect::<Vec<_>>().join(",");
        let mut c = EtcdCluster { dir, members, initial };
        for i in 0..n {
            c.spawn(i)?;
        }
        c.wait_healthy()?;
        Ok(c)
    }

    /// One member whose data directory `restore(data_dir, name, initial_cluster, peer_url)` fills (from a
    /// snapshot) before it starts.
    pub fn start_restored(restore: impl FnOnce(&Path, &str, &str, &str) -> Result<()>) -> Result<EtcdCluster> {
        let dir = tempfile::Builder::new().prefix("kumo-etcd-").tempdir()?;
        let m = Member {
            name: "m0".into(),
            client: free_port(),
            peer: free_port(),
            data: dir.path().join("m0"),
            child: None,
        };
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let initial = format!("{}={peer}", m.name);
        restore(&m.data, &m.name, &initial, &peer)?;
        let mut c = EtcdCluster { dir, members: vec![m], initial };
        c.spawn(0)?;
        c.wait_healthy()?;
        Ok(c)
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let m = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", m.name)))?;
        let client = format!("http://127.0.0.1:{}", m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let child = Command::new("etcd")
            .args(["--name", &m.name, "--data-dir"])
            .arg(&m.data)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial, "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &format!("kumo-e2e-{}", tag())])
            .args(["--heartbeat-interval", "300", "--election-timeout", "3000"])
            // kumo accepts 3 MiB request bodies; etcd's default limit is 1.5 MiB.
            .args(["--max-request-bytes", "8388608"])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd")?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// A plain HTTP/1.0 exchange with a member's client port (etcd's JSON gateway); the whole response.
    fn http(port: u16, request: &str) -> String {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(request.as_bytes()).is_err() {
            return String::new();
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body
    }

    fn healthy(port: u16) -> bool {
        Self::http(port, "GET /health HTTP/1.0\r\n\r\n").contains("\"health\":\"true\"")
    }

    /// The index of the member that is the Raft leader now, if one is.
    pub fn leader(&self) -> Option<usize> {
        self.members.iter().position(|m| {
            m.child.is_some() && {
                let r = Self::http(
                    m.client,
                    "POST /v3/maintenance/status HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
                );
                // A member that does not answer (killed, or not yet up) is not the leader.
                let body = r.split("\r\n\r\n").nth(1).unwrap_or("");
                let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else { return false };
                v["leader"].as_str().is_some() && v["leader"] == v["header"]["member_id"]
            }
        })
    }

    fn wait_healthy(&mut self) -> Result<()> {
        let ports: Vec<u16> = self.members.iter().filter(|m| m.child.is_some()).map(|m| m.client).collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !ports.iter().all(|p| Self::healthy(*p)) {
            // A member that exited (a port taken meanwhile) will never be healthy: say so at once.
            let exited = self
                .members
                .iter_mut()
                .enumerate()
                .find_map(|(i, m)| Some((i, m.child.as_mut()?.try_wait().ok().flatten()?)));
            if let Some((i, status)) = exited {
                self.members[i].child = None;
                bail!("etcd member {i} exited ({status}): {}", self.log(i));
            }
            if std::time::Instant::now() > deadline {
                bail!("etcd did not become healthy: {}", self.log(0));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    pub fn log(&self, i: usize) -> String {
        crate::read_log(&self.dir.path().join(format!("m{i}.log")))
    }

    /// Client URLs of every member, comma-separated (for `--etcd-servers`).
    pub fn endpoints(&self) -> String {
        self.members.iter().map(|m| format!("http://127.0.0.1:{}", m.client)).collect::<Vec<_>>().join(",")
    }

    /// SIGKILL one member.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a killed member again on its data directory.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_healthy()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

// ------------------------------------------------------------------------------------------------ underlay

/// The hosts' shared network: a bridge with the control plane's address on it, and a forwarder that makes
/// the local image registry (on loopback) reachable from the hosts at the same port on the bridge address.
pub struct Underlay {
    pub bridge: String,
    /// The /24's first three octets, e.g. "10.77.12".
    pub net: String,
    stop: Arc<AtomicBool>,
}

impl Underlay {
    pub fn create(registry: &str) -> Result<Underlay> {
        let t = tag();
        let third = u16::from_str_radix(&t, 16).unwrap_or(0) % 200 + 20;
        let u = Underlay { bridge: format!("kul{t}"), net: format!("10.77.{third}"), stop: Default::default() };
        let _ = sh("ip", &["link", "del", &u.bridge]);
        sh("ip", &["link", "add", &u.bridge, "type", "bridge"])?;
        // Frames between hosts are not this machine's to filter: without this, br_netfilter would run them
        // through the root namespace's rules (e.g. the NAT of a one-machine kumo agent running there).
        sh("ip", &["link", "set", &u.bridge, "type", "bridge", "nf_call_iptables", "0"])?;
        sh("ip", &["addr", "add", &format!("{}/24", u.gateway()), "dev", &u.bridge])?;
        sh("ip", &["link", "set", &u.bridge, "up"])?;
        forward(&format!("{}:{}", u.gateway(), port_of(registry)), registry, u.stop.clone())?;
        Ok(u)
    }

    /// The control plane's address on the underlay.
    pub fn gateway(&self) -> String {
        format!("{}.1", self.net)
    }

    /// The registry as the hosts reach it.
    pub fn registry(&self, registry: &str) -> String {
        format!("{}:{}", self.gateway(), port_of(registry))
    }
}

fn port_of(addr: &str) -> &str {
    addr.rsplit(':').next().unwrap_or("5000")
}

impl Drop for Underlay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = sh("ip", &["link", "del", &self.bridge]);
    }
}

/// Forwards TCP connections on `listen` to `to` until `stop`.
fn forward(listen: &str, to: &str, stop: Arc<AtomicBool>) -> Result<()> {
    let l = std::net::TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    l.set_nonblocking(true)?;
    let to = to.to_string();
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((a, _)) => {
                    let to = to.clone();
                    std::thread::spawn(move || {
                        let _ = a.set_nonblocking(false);
                        let Ok(b) = std::net::TcpStream::connect(&to) else { return };
                        let (mut a2, mut b2) = (a.try_clone().expect("clone"), b.try_clone().expect("clone"));
                        let t = std::thread::spawn(move || {
                            let _ = std::io::copy(&mut a2, &mut b2);
                            let _ = b2.shutdown(std::net::Shutdown::Write);
                        });
                        let (mut a, mut b) = (a, b);
                        let _ = std::io::copy(&mut b, &mut a);
                        let _ = a.shutdown(std::net::Shutdown::Write);
                        let _ = t.join();
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    Ok(())
}

// --------------------------------------------------------------------------------------------------- hosts

/// One host: a network namespace on the underlay running a joined `kumo agent`.
pub struct Host {
    pub name: String,
    pub netns: String,
    pub ip: String,
    /// The underlay-side end of the host's link (cut it to isolate the host).
    pub link: String,
    pub state: PathBuf,
    _dir: tempfile::TempDir,
    agent: Option<Child>,
}

impl Host {
    pub fn create(u: &Underlay, index: u8) -> Result<Host> {
        let t = tag();
        let name = format!("host{index}");
        let netns = format!("kh{t}-{index}");
        let (outer, inner) = (format!("kh{t}o{index}"), format!("kh{t}i{index}"));
        let ip = format!("{}.{}", u.net, 10 + index);
        let _ = sh("ip", &["netns", "del", &netns]);
        sh("ip", &["netns", "add", &netns])?;
        sh("ip", &["link", "add", &outer, "type", "veth", "peer", "name", &inner])?;
        sh("ip", &["link", "set", &outer, "master", &u.bridge, "up"])?;
        sh("ip", &["link", "set", &inner, "netns", &netns])?;
        let ns = |args: &[&str]| -> Result<String> {
            let mut a = vec!["netns", "exec", &netns];
            a.extend_from_slice(args);
            sh("ip", &a)
        };
        ns(&["ip", "link", "set", "lo", "up"])?;
        ns(&["ip", "link", "set", &inner, "name", "eth0"])?;
        ns(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        ns(&["ip", "link", "set", "eth0", "up"])?;
        ns(&["ip", "route", "add", "default", "via", &u.gateway()])?;
        let dir = tempfile::Builder::new().prefix(&format!("kumo-{name}-")).tempdir()?;
        Ok(Host { name, netns, ip, link: outer, state: dir.path().join("agent"), _dir: dir, agent: None })
    }

    /// Starts (or restarts) the agent with `args` after `kumo agent`.
    pub fn start_agent(&mut self, args: &[String]) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        // nsenter switches the network namespace only: `ip netns exec` would also give the agent a mount
        // namespace of its own, and the per-VMI namespaces it mounts under /run/netns would vanish with it.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg(kumo_bin())
            .arg("agent")
            .args(args)
            .env("KUMO_LOG", std::env::var("KUMO_LOG").unwrap_or_else(|_| "info,kumo_agent=debug".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the agent")?;
        self.agent = Some(child);
        Ok(())
    }

    fn log_path(&self) -> PathBuf {
        self.state.with_file_name("agent.log")
    }

    pub fn log(&self) -> String {
        crate::read_log(&self.log_path())
    }

    /// SIGKILL the agent alone (its guests and watchdog keep running).
    pub fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The host dies: its agent, its watchdog and its guests, all at once.
    pub fn kill_all(&mut self) {
        self.kill_agent();
        let pids = sh("ip", &["netns", "pids", &self.netns]).expect("listing the host's processes");
        for pid in pids.split_whitespace().chain(self.qemu_pids().iter().map(String::as_str)) {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }

    /// PIDs of this host's QEMU guests.
    pub fn qemu_pids(&self) -> Vec<String> {
        guests_of(&self.state).into_iter().map(|(pid, _)| pid.to_string()).collect()
    }

    /// Cuts (or restores) the host's underlay link.
    pub fn set_link(&self, up: bool) -> Result<()> {
        sh("ip", &["link", "set", &self.link, if up { "up" } else { "down" }]).map(|_| ())
    }

    /// Runs a command inside the host's namespace.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut a = vec!["netns", "exec", &self.netns];
        a.extend_from_slice(args);
        sh("ip", &a)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Keep what a failed test needs for a diagnosis: the agent's and the watchdog's logs.
            let keep = std::env::temp_dir().join(format!("kumo-e2e-logs-{}", tag())).join(&self.name);
            let _ = std::fs::create_dir_all(&keep);
            let _ = std::fs::copy(self.log_path(), keep.join("agent.log"));
            let _ = std::fs::copy(self.state.join("fence/watchdog.log"), keep.join("watchdog.log"));
            eprintln!("{} logs kept in {}", self.name, keep.display());
        }
        self.kill_all();
        // The per-VMI namespaces the agent made (named by its node and the VMI), then the host's own.
        let token = kumo_agent::net::node_token(&self.name);
        for uid in std::fs::read_dir(self.state.join("vmis")).into_iter().flatten().flatten() {
            let name = kumo_agent::net::netns_name(&token, &uid.file_name().to_string_lossy());
            let _ = sh("ip", &["netns", "del", &name]);
        }
        let _ = sh("ip", &["netns", "del", &self.netns]);
        let _ = sh("ip", &["link", "del", &self.link]);
    }
}

/// QEMU guests under `state/vmis/`, with the VMI each runs (`namespace_name`, from `-name guest=`).
pub fn guests_of(state: &Path) -> Vec<(u32, String)> {
    let marker = state.join("vmis").to_string_lossy().into_owned();
    // Unreadable /proc would look like "no guests anywhere": the double-run watch must not pass on that.
    let entries = std::fs::read_dir("/proc").expect("reading /proc");
    let mut out = vec![];
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else { continue };
        let argv: Vec<String> = raw.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if !argv.first().is_some_and(|a| a.contains("qemu-system")) || !argv.iter().any(|a| a.contains(&marker)) {
            continue;
        }
        let name = argv
            .windows(2)
            .find(|w| w[0] == "-name")
            .and_then(|w| w[1].strip_prefix("guest=").map(|n| n.split(',').next().unwrap_or("").to_string()))
            .unwrap_or_default();
        out.push((pid, name));
    }
    out
}

/// Watches every host's guests in the background and records any moment at which one VMI ran as two QEMU
/// processes (on one host or across hosts).
pub struct DoubleRunWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<String>>>,
    samples: Arc<Mutex<u64>>,
}

impl DoubleRunWatch {
    pub fn start(states: Vec<(String, PathBuf)>) -> DoubleRunWatch {
        let (stop, seen, samples) =
            (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(vec![])), Arc::new(Mutex::new(0)));
        let (s, v, n) = (stop.clone(), seen.clone(), samples.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let mut by_vmi: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
                for (host, state) in &states {
                    for (pid, vmi) in guests_of(state) {
                        by_vmi.entry(vmi).or_default().insert(format!("{host}:{pid}"));
                    }
                }
                for (vmi, where_) in by_vmi.iter().filter(|(_, w)| w.len() > 1) {
                    v.lock().expect("lock").push(format!("{vmi} ran as {where_:?}"));
                }
                *n.lock().expect("lock") += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        DoubleRunWatch { stop, seen, samples }
    }

    /// Every double run seen so far, and how many samples were taken.
    pub fn report(&self) -> (Vec<String>, u64) {
        (self.seen.lock().expect("lock").clone(), *self.samples.lock().expect("lock"))
    }
}

impl Drop for DoubleRunWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

// ------------------------------------------------------------------------------------------ control plane

/// A replica's id in leader elections (the suffix of the Lease holder it writes). Never empty: an empty id would
/// match every holder.
pub fn server_id(s: &Server) -> String {
    let path = s.data_dir().join("server-id");
    let id = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(!id.trim().is_empty(), "{} is empty", path.display());
    id.trim().to_string()
}

/// A `kumo server` replica on the etcd cluster, listening on the underlay.
pub fn replica(u: &Underlay, etcd: &EtcdCluster, secret_from: Option<&Server>, extra: &[&str]) -> Result<Server> {
    let endpoints = etcd.endpoints();
    // Pod addresses apart from the 10.244.0.0/16 a one-machine kumo on this host (other tests) uses.
    let mut args: Vec<String> =
        vec!["--no-agent".into(), "--etcd-servers".into(), endpoints, "--cluster-cidr".into(), "10.245.0.0/16".into()];
    if let Some(first) = secret_from {
        args.push("--cluster-secret-file".into());
        args.push(first.data_dir().join("cluster-secret").to_string_lossy().into_owned());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_at(&u.gateway(), &refs)
}
