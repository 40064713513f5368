//! This node, as the API sees it: the Node object (capacity, labels, addresses, which accelerator QEMU uses)
//! and the Lease in `kube-node-lease` that the agent renews as its heartbeat.

use anyhow::{Context, Result};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{json, Value};
use std::time::Duration;

/// Facts about the host, gathered once at start-up.
#[derive(Clone, Debug)]
pub struct HostInfo {
    pub name: String,
    pub cpus: u64,
    pub memory_bytes: u64,
    pub kernel: String,
    pub os_image: String,
    pub machine_id: String,
    pub boot_id: String,
    pub internal_ip: String,
    /// "kvm" or "tcg": what QEMU runs guests with here (KVM only when a guest really booted under it).
    pub accel: String,
    pub qemu_version: String,
    /// The console endpoint (`https://ip:port`) and its certificate's SHA-256, published on the Node.
    pub console: Option<(String, String)>,
    /// The fencing period (seconds), published so the control plane knows when failing over is safe.
    pub fencing_secs: Option<u64>,
    /// The agent mounts the shared volume directory.
    pub shared_volumes: bool,
    /// The size of the filesystem that holds this node's `local` volumes (bytes), reported as the extended
    /// resource [`kumo_api::provisioning::LOCAL_VOLUME_RESOURCE`] so no claim bigger than it lands here.
    pub volume_bytes: Option<u64>,
}

/// VMIs one node runs at most, reported as `pods` capacity (a VMI is KubeVirt's virt-launcher pod): one per
/// pod address of a /24 block, less the gateway, as the scheduler's "Too many pods" filter counts.
const MAX_VMIS: &str = "253";

fn read(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default()
}

/// MemTotal from /proc/meminfo, in bytes.
fn mem_total() -> u64 {
    read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

fn os_image() -> String {
    read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into())
}

/// The interface of the default route with the lowest metric, from `/proc/net/route` (this process's
/// network namespace).
pub fn default_route_interface(proc_net_route: &str) -> Option<String> {
    proc_net_route
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Iface Destination Gateway Flags RefCnt Use Metric Mask …; flag 1 is RTF_UP.
            let up = u16::from_str_radix(f.get(3)?, 16).ok()? & 1 == 1;
            let default = *f.get(1)? == "00000000" && *f.get(7)? == "00000000";
            if !(up && default) {
                return None;
            }
            Some((f.get(6)?.parse::<u32>().ok()?, f[0].to_string()))
        })
        .min()
        .map(|(_, iface)| iface)
}

/// The node's address as other nodes reach it: the first IPv4 address of the default route's interface (as the
/// kubelet chooses), else the first non-loopback IPv4 address outside kumo's bridges, else 127.0.0.1.
pub fn detect_node_ip() -> String {
    let addrs: Vec<(String, std::net::Ipv4Addr)> = nix::ifaddrs::getifaddrs()
        .map(|all| {
            all.filter_map(|a| Some((a.interface_name.clone(), a.address?.as_sockaddr_in()?.ip())))
                .filter(|(name, ip)| !ip.is_loopback() && !name.starts_with("kumo"))
                .collect()
        })
        .unwrap_or_default();
    let via_default = default_route_interface(&read("/proc/net/route"))
        .and_then(|iface| addrs.iter().find(|(name, _)| *name == iface).map(|(_, ip)| *ip));
    via_default.or_else(|| addrs.first().map(|(_, ip)| *ip)).map_or_else(|| "127.0.0.1".into(), |ip| ip.to_string())
}

/// The Node name an agent uses unless told otherwise: the host name, lower-cased.
pub fn default_node_name() -> String {
    read("/proc/sys/kernel/hostname").to_lowercase()
}

impl HostInfo {
    pub fn gather(name: Option<String>, accel: &str, qemu_version: &str) -> HostInfo {
        HostInfo {
            name: name.unwrap_or_else(default_node_name),
            cpus: std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1),
            memory_bytes: mem_total(),
            kernel: read("/proc/sys/kernel/osrelease"),
            os_image: os_image(),
            machine_id: read("/etc/machine-id"),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            internal_ip: detect_node_ip(),
            accel: accel.into(),
            qemu_version: qemu_version.into(),
            console: None,
            fencing_secs: None,
            shared_volumes: false,
            volume_bytes: None,
        }
    }
}

/// The Node's metadata and spec as the agent applies them.
pub fn node_object(h: &HostInfo) -> Value {
    let mut node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": h.name, "labels": {
            "kubernetes.io/hostname": h.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            "kubevirt.io/schedulable": "true", "kumo.dev/accel": h.accel},
            "annotations": {"kumo.dev/accel": h.accel, "kumo.dev/qemu-version": h.qemu_version}},
    });
    if h.accel == crate::hypervisor::simulated::ACCEL {
        node["metadata"]["labels"][crate::simulate::SIMULATED_LABEL] = json!("true");
    }
    if h.shared_volumes {
        node["metadata"]["labels"][kumo_api::provisioning::SHARED_VOLUMES_LABEL] = json!("true");
    }
    if let Some(secs) = h.fencing_secs {
        node["metadata"]["annotations"][kumo_api::kubevirt::FENCING_PERIOD_ANNOTATION] = json!(secs.to_string());
    }
    if let Some((endpoint, fingerprint)) = &h.console {
        node["metadata"]["annotations"][kumo_api::kubevirt::CONSOLE_ENDPOINT_ANNOTATION] = json!(endpoint);
        node["metadata"]["annotations"][kumo_api::kubevirt::CONSOLE_FINGERPRINT_ANNOTATION] = json!(fingerprint);
    }
    node
}

/// The Node's status: capacity, Ready (since `ready_since`, when the agent started), addresses, node info.
/// Memory reserved for the host is not allocatable.
pub fn node_status(h: &HostInfo, reserved_bytes: u64, ready_since: &str) -> Value {
    let ts = kumo_api::meta::now_rfc3339();
    let kvm = if h.accel == "kvm" { "1k" } else { "0" };
    let mut status = json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": h.name},
        "status": {
            "capacity": {"cpu": h.cpus.to_string(), "memory": format!("{}Ki", h.memory_bytes / 1024),
                "pods": MAX_VMIS, "devices.kubevirt.io/kvm": kvm},
            "allocatable": {"cpu": h.cpus.to_string(),
                "memory": format!("{}Ki", h.memory_bytes.saturating_sub(reserved_bytes) / 1024),
                "pods": MAX_VMIS, "devices.kubevirt.io/kvm": kvm},
            "conditions": [{"type": "Ready", "status": "True", "reason": READY_REASON,
                "message": format!("kumo agent is posting ready status; guests run with {}", h.accel.to_uppercase()),
                "lastHeartbeatTime": ts, "lastTransitionTime": ready_since}],
            "addresses": [{"type": "InternalIP", "address": h.internal_ip}, {"type": "Hostname", "address": h.name}],
            "nodeInfo": {"kubeletVersion": concat!("kumo-agent/", env!("CARGO_PKG_VERSION")), "kubeProxyVersion": "",
                "kernelVersion": h.kernel, "osImage": h.os_image, "operatingSystem": "linux", "architecture": "amd64",
                "containerRuntimeVersion": format!("qemu://{}", h.qemu_version), "machineID": h.machine_id,
                "systemUUID": h.machine_id, "bootID": h.boot_id},
        }
    });
    if let Some(bytes) = h.volume_bytes {
        for list in ["capacity", "allocatable"] {
            status["status"][list][kumo_api::provisioning::LOCAL_VOLUME_RESOURCE] = json!(bytes.to_string());
        }
    }
    status
}

const MANAGER: &str = "kumo-agent";

/// Registers (or re-registers) the Node and reports its status; returns when the Node became Ready.
pub async fn register(client: &kube::Client, h: &HostInfo, reserved: u64) -> Result<String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let pp = PatchParams::apply(MANAGER).force();
    nodes.patch(&h.name, &pp, &Patch::Apply(node_object(h))).await.context("registering the Node")?;
    let ready_since = kumo_api::meta::now_rfc3339();
    report_status(&nodes, h, reserved, &ready_since).await?;
    Ok(ready_since)
}

async fn report_status(nodes: &Api<Node>, h: &HostInfo, reserved: u64, ready_since: &str) -> Result<()> {
    let status = Patch::Apply(node_status(h, reserved, ready_since));
    nodes
        .patch_status(&h.name, &PatchParams::apply(MANAGER).force(), &status)
        .await
        .context("reporting Node status")?;
    Ok(())
}

/// Renews the node Lease every `every`. The Node status is written at start, after renewals had a gap (the node
/// lifecycle controller may have marked the Node `Ready=Unknown`), and when a read every few minutes shows the
/// Node not Ready: never on a timer of its own, as the kubelet's status updates were before Leases. Each accepted renewal is recorded with `fence` (the dead-man switch),
/// stamped with when it was sent.
pub async fn heartbeat(
    client: kube::Client,
    h: HostInfo,
    reserved: u64,
    ready_since: String,
    every: Duration,
    fence: Option<crate::fence::Fence>,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut lease = LeaseRenewer::new(client, &h.name, (every.as_secs() * 4).max(40));
    let mut last_ok = tokio::time::Instant::now();
    let mut status_due = false;
    let mut next_check = tokio::time::Instant::now() + STATUS_CHECK;
    let mut failures = 0u32;
    loop {
        let sent = crate::fence::boottime_ms();
        match lease.renew().await {
            Ok(()) => {
                failures = 0;
                if let Some(f) = &fence {
                    f.renewed(sent);
                }
                // A gap long enough for the lifecycle controller to have noticed: say Ready again.
                status_due |= last_ok.elapsed() > every * 2;
                last_ok = tokio::time::Instant::now();
            }
            Err(e) => {
                tracing::warn!("renewing node lease: {e:#}");
                failures += 1;
                status_due = true;
                if let Some(f) = &fence {
                    f.renewal_failed(sent).await;
                }
            }
        }
        if tokio::time::Instant::now() >= next_check {
            next_check = tokio::time::Instant::now() + STATUS_CHECK;
            status_due |= match nodes.get_opt(&h.name).await {
                Ok(Some(n)) => !reports_ready(&n),
                Ok(None) => true,
                Err(_) => false,
            };
        }
        // Only once renewals go through again: failed renewals are retried within a second or so, and a status
        // write beside each would double what a node asks of a struggling server.
        if status_due && failures == 0 {
            match report_status(&nodes, &h, reserved, &ready_since).await {
                Ok(()) => status_due = false,
                Err(e) => tracing::warn!("node status: {e:#}"),
            }
        }
        tokio::time::sleep(next_renewal(every, failures, rand::random::<f64>())).await;
    }
}

/// When to renew next: after `every`, or sooner after `failures` failed renewals in a row — 200 ms, doubling,
/// at most half of `every` — so a node whose renewals failed while the API server restarted (or refused them
/// while it relisted) renews within half an interval of its return, well inside the grace period, not a whole
/// interval later and then another. `jitter` (0..1) spreads a fleet's retries by up to a fifth.
fn next_renewal(every: Duration, failures: u32, jitter: f64) -> Duration {
    if failures == 0 {
        return every;
    }
    let cap = every / 2;
    let base = (Duration::from_millis(200) * 2u32.saturating_pow(failures - 1)).min(cap);
    base.mul_f64(1.0 + jitter.clamp(0.0, 1.0) / 5.0).min(cap)
}

/// How often the agent reads its Node to check that it still shows Ready (its status is not rewritten else).
const STATUS_CHECK: Duration = Duration::from_secs(300);

fn reports_ready(node: &Node) -> bool {
    let conds = node.status.as_ref().and_then(|s| s.conditions.as_ref());
    conds
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True" && c.reason.as_deref() == Some(READY_REASON))
}

const READY_REASON: &str = "KumoAgentReady";

/// Renews the node Lease as the kubelet does: an update of the Lease it last saw (one write, no apply), read
/// again or created only when that fails.
struct LeaseRenewer {
    leases: Api<Lease>,
    name: String,
    duration_secs: u64,
    last: Option<Lease>,
}

impl LeaseRenewer {
    fn new(client: kube::Client, name: &str, duration_secs: u64) -> Self {
        LeaseRenewer {
            leases: Api::namespaced(client, "kube-node-lease"),
            name: name.into(),
            duration_secs,
            last: None,
        }
    }

    async fn renew(&mut self) -> Result<()> {
        let now = kumo_api::meta::now_micro();
        if let Some(mut lease) = self.last.take() {
            if let Some(spec) = lease.spec.as_mut() {
                spec.renew_time = Some(serde_json::from_value(json!(now)).context("renewTime")?);
            }
            match self.leases.replace(&self.name, &Default::default(), &lease).await {
                Ok(l) => {
                    self.last = Some(l);
                    return Ok(());
                }
                // Changed or removed by someone else: start again from what is there.
                Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
                // Anything else (429, a server error, the network) leaves the Lease as it was: the next
                // renewal is the same light update, not an apply.
                Err(e) => {
                    self.last = Some(lease);
                    return Err(e).context("updating the node Lease");
                }
            }
        }
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": self.name, "leaseDurationSeconds": self.duration_secs, "renewTime": now}});
        let pp = PatchParams::apply(MANAGER).force();
        let l = self.leases.patch(&self.name, &pp, &Patch::Apply(lease)).await.context("applying the node Lease")?;
        self.last = Some(l);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_renewals_retry_sooner_backing_off_to_half_the_interval() {
        let every = Duration::from_secs(10);
        assert_eq!(next_renewal(every, 0, 0.0), every);
        assert_eq!(next_renewal(every, 0, 1.0), every, "never later than the interval");
        assert_eq!(next_renewal(every, 1, 0.0), Duration::from_millis(200));
        assert_eq!(next_renewal(every, 1, 1.0), Duration::from_millis(240));
        assert_eq!(next_renewal(every, 4, 0.0), Duration::from_millis(1600));
        assert_eq!(next_renewal(every, 6, 0.0), every / 2);
        assert_eq!(next_renewal(every, 40, 0.5), every / 2, "a long outage: half an interval, no more");
    }

    #[test]
    fn node_reports_accelerator_and_capacity() {
        let h = HostInfo {
            name: "n1".into(),
            cpus: 2,
            memory_bytes: 4 << 30,
            kernel: "6.1".into(),
            os_image: "Debian".into(),
            machine_id: "m".into(),
            boot_id: "b".into(),
            internal_ip: "10.0.0.5".into(),
            accel: "tcg".into(),
            qemu_version: "7.2.0".into(),
            console: Some(("https://10.0.0.5:1234".into(), "ab".into())),
            fencing_secs: Some(20),
            shared_volumes: true,
            volume_bytes: Some(1 << 30),
        };
        let o = node_object(&h);
        assert_eq!(o["metadata"]["labels"]["kumo.dev/accel"], "tcg");
        assert_eq!(o["metadata"]["labels"][kumo_api::provisioning::SHARED_VOLUMES_LABEL], "true");
        assert_eq!(o["metadata"]["annotations"]["kumo.dev/console-endpoint"], "https://10.0.0.5:1234");
        let s = node_status(&h, 1 << 30, "2026-01-01T00:00:00Z");
        assert_eq!(s["status"]["capacity"]["memory"], "4194304Ki");
        assert_eq!(s["status"]["allocatable"]["pods"], "253");
        assert_eq!(s["status"]["allocatable"]["memory"], "3145728Ki");
        assert_eq!(s["status"]["conditions"][0]["type"], "Ready");
        assert_eq!(s["status"]["conditions"][0]["lastTransitionTime"], "2026-01-01T00:00:00Z");
        assert!(s["status"]["conditions"][0]["message"].as_str().unwrap().contains("TCG"));
        assert!(HostInfo::gather(None, "tcg", "x").memory_bytes > 0);
    }

    #[test]
    fn default_route_interface_is_the_lowest_metric_up_default() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth1\t00000000\t0100A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0\n\
            eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
            down0\t00000000\t0200000A\t0002\t0\t0\t0\t00000000\t0\t0\t0\n\
            eth2\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n";
        assert_eq!(default_route_interface(table).as_deref(), Some("eth0"));
        assert_eq!(default_route_interface("Iface\tDestination\n"), None);
        let ip: std::net::Ipv4Addr = detect_node_ip().parse().unwrap();
        assert!(!ip.is_unspecified());
    }
}
