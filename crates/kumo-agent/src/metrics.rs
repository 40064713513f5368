//! The agent's `/metrics`: this node's VMIs under KubeVirt's metric names and labels, so dashboards and
//! recording rules written for KubeVirt's virt-handler work unchanged. Gathered at each scrape from the VMI
//! cache, `/proc` and QMP, and encoded into a registry made for that scrape: a deleted VMI's series are gone
//! at the next scrape, with nothing to forget.
//!
//! - `kubevirt_vmi_info`: one series per VMI on this node, whatever its phase (KubeVirt's labels).
//! - `kubevirt_vmi_memory_resident_bytes`: the QEMU process's resident set.
//! - `kubevirt_vmi_vcpu_seconds_total`: CPU time of each vCPU thread from `/proc` (QMP `query-stats` reports
//!   nothing under TCG), the threads found with `query-cpus-fast`.
//! - `kubevirt_vmi_network_*_total`: the tap's counters, as the guest sees them (what the tap transmits, the
//!   guest receives).
//! - `kubevirt_vmi_storage_*_total`: QMP `query-blockstats`, by disk name.

use crate::agent::{Agent, LocalVm};
use kumo_api::kubevirt::VirtualMachineInstance;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::Value;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// A slow QMP answer leaves that VMI's usage out of one scrape rather than stalling it.
const QMP_TIMEOUT: Duration = Duration::from_secs(2);

/// What `kubevirt_vmi_info` says of a VMI, besides its name.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Info {
    pub phase: String,
    pub os: String,
    pub workload: String,
    pub flavor: String,
    pub instance_type: String,
    pub preference: String,
    pub guest_os_kernel_release: String,
    pub guest_os_machine: String,
    pub guest_os_arch: String,
    pub guest_os_name: String,
    pub guest_os_version_id: String,
    pub evictable: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Nic {
    pub interface: String,
    /// As the guest sees them.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Drive {
    pub drive: String,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
}

/// What a running QEMU guest uses; each part is left out when it could not be read.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Usage {
    pub resident_bytes: Option<u64>,
    /// (vCPU index, seconds).
    pub vcpu_seconds: Vec<(u32, f64)>,
    pub nics: Vec<Nic>,
    pub drives: Vec<Drive>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Sample {
    pub namespace: String,
    pub name: String,
    pub info: Info,
    pub usage: Option<Usage>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    node: String,
    namespace: String,
    name: String,
    phase: String,
    os: String,
    workload: String,
    flavor: String,
    instance_type: String,
    preference: String,
    guest_os_kernel_release: String,
    guest_os_machine: String,
    guest_os_arch: String,
    guest_os_name: String,
    guest_os_version_id: String,
    evictable: String,
    outdated: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VmiLabels {
    node: String,
    namespace: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VcpuLabels {
    node: String,
    namespace: String,
    name: String,
    id: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NicLabels {
    node: String,
    namespace: String,
    name: String,
    interface: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriveLabels {
    node: String,
    namespace: String,
    name: String,
    drive: String,
}

type Counters<L> = Family<L, Counter>;

/// Registers a family under `name` and hands it back to be filled.
fn family<L, M>(r: &mut Registry, name: &str, help: &str) -> Family<L, M>
where
    Family<L, M>: Default + prometheus_client::registry::Metric + Clone,
{
    let f = Family::<L, M>::default();
    r.register(name, help, f.clone());
    f
}

/// `<none>` for what is not set, as KubeVirt labels it.
fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s.to_string()
    }
}

/// The samples in Prometheus' text format (OpenMetrics).
pub(crate) fn encode(node: &str, samples: &[Sample]) -> String {
    let mut r = Registry::default();
    let info: Family<InfoLabels, Gauge> =
        family(&mut r, "kubevirt_vmi_info", "Information about VirtualMachineInstances (always 1)");
    let resident: Family<VmiLabels, Gauge> = family(
        &mut r,
        "kubevirt_vmi_memory_resident_bytes",
        "Resident set size of the process running the VirtualMachineInstance",
    );
    let vcpu: Family<VcpuLabels, Counter<f64, AtomicU64>> =
        family(&mut r, "kubevirt_vmi_vcpu_seconds", "Seconds each vCPU has spent, by state");
    let nic = |r: &mut Registry, name: &str, help: &str| -> Counters<NicLabels> { family(r, name, help) };
    let rx_bytes = nic(&mut r, "kubevirt_vmi_network_receive_bytes", "Bytes the guest received, by interface");
    let tx_bytes = nic(&mut r, "kubevirt_vmi_network_transmit_bytes", "Bytes the guest sent, by interface");
    let rx_packets = nic(&mut r, "kubevirt_vmi_network_receive_packets", "Packets the guest received");
    let tx_packets = nic(&mut r, "kubevirt_vmi_network_transmit_packets", "Packets the guest sent");
    let disk = |r: &mut Registry, name: &str, help: &str| -> Counters<DriveLabels> { family(r, name, help) };
    let rd_bytes = disk(&mut r, "kubevirt_vmi_storage_read_traffic_bytes", "Bytes read from each disk");
    let wr_bytes = disk(&mut r, "kubevirt_vmi_storage_write_traffic_bytes", "Bytes written to each disk");
    let rd_ops = disk(&mut r, "kubevirt_vmi_storage_iops_read", "Read operations on each disk");
    let wr_ops = disk(&mut r, "kubevirt_vmi_storage_iops_write", "Write operations on each disk");
    for s in samples {
        let (ns, name, node) = (s.namespace.clone(), s.name.clone(), node.to_string());
        let i = &s.info;
        let labels = InfoLabels {
            node: node.clone(),
            namespace: ns.clone(),
            name: name.clone(),
            phase: i.phase.to_lowercase(),
            os: or_none(&i.os),
            workload: or_none(&i.workload),
            flavor: or_none(&i.flavor),
            instance_type: or_none(&i.instance_type),
            preference: or_none(&i.preference),
            guest_os_kernel_release: or_none(&i.guest_os_kernel_release),
            guest_os_machine: or_none(&i.guest_os_machine),
            guest_os_arch: or_none(&i.guest_os_arch),
            guest_os_name: or_none(&i.guest_os_name),
            guest_os_version_id: or_none(&i.guest_os_version_id),
            evictable: i.evictable.to_string(),
            outdated: "false".into(),
        };
        info.get_or_create(&labels).set(1);
        let Some(u) = &s.usage else { continue };
        let vmi = VmiLabels { node: node.clone(), namespace: ns.clone(), name: name.clone() };
        if let Some(b) = u.resident_bytes {
            resident.get_or_create(&vmi).set(i64::try_from(b).unwrap_or(i64::MAX));
        }
        for (id, secs) in &u.vcpu_seconds {
            let l = VcpuLabels {
                node: node.clone(),
                namespace: ns.clone(),
                name: name.clone(),
                id: id.to_string(),
                state: "running".into(),
            };
            vcpu.get_or_create(&l).inc_by(*secs);
        }
        for n in &u.nics {
            let l = NicLabels {
                node: node.clone(),
                namespace: ns.clone(),
                name: name.clone(),
                interface: n.interface.clone(),
            };
            rx_bytes.get_or_create(&l).inc_by(n.rx_bytes);
            tx_bytes.get_or_create(&l).inc_by(n.tx_bytes);
            rx_packets.get_or_create(&l).inc_by(n.rx_packets);
            tx_packets.get_or_create(&l).inc_by(n.tx_packets);
        }
        for d in &u.drives {
            let l =
                DriveLabels { node: node.clone(), namespace: ns.clone(), name: name.clone(), drive: d.drive.clone() };
            rd_bytes.get_or_create(&l).inc_by(d.read_bytes);
            wr_bytes.get_or_create(&l).inc_by(d.write_bytes);
            rd_ops.get_or_create(&l).inc_by(d.read_ops);
            wr_ops.get_or_create(&l).inc_by(d.write_ops);
        }
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &r).expect("writing to a String");
    out
}

/// `kubevirt_vmi_info`'s labels from the VMI: KubeVirt's template annotations and flavor labels, and what the
/// guest agent reported.
pub(crate) fn info_of(vmi: &VirtualMachineInstance) -> Info {
    let md = &vmi.metadata;
    let ann = |k: &str| md.annotations.as_ref().and_then(|a| a.get(k)).cloned().unwrap_or_default();
    let either = |a: &str, b: &str| {
        let l = |k: &str| md.labels.as_ref().and_then(|l| l.get(k)).cloned().or_else(|| Some(ann(k)));
        l(a).filter(|v| !v.is_empty()).or_else(|| l(b)).unwrap_or_default()
    };
    let os = vmi.status.as_ref().and_then(|s| s.guest_os_info.as_ref());
    let guest = |k: &str| os.and_then(|o| o.get(k)).and_then(Value::as_str).unwrap_or_default().to_string();
    Info {
        phase: vmi.phase().to_string(),
        os: ann("vm.kubevirt.io/os"),
        workload: ann("vm.kubevirt.io/workload"),
        flavor: ann("vm.kubevirt.io/flavor"),
        instance_type: either("kubevirt.io/instancetype-name", "kubevirt.io/cluster-instancetype-name"),
        preference: either("kubevirt.io/preference-name", "kubevirt.io/cluster-preference-name"),
        guest_os_kernel_release: guest("kernelRelease"),
        guest_os_machine: guest("machine"),
        // Guests run only under qemu-system-x86_64; KubeVirt names that architecture so.
        guest_os_arch: "amd64".into(),
        guest_os_name: guest("name"),
        guest_os_version_id: guest("versionId"),
        // kumo refuses evictionStrategy (nothing migrates yet).
        evictable: false,
    }
}

/// `VmRSS` of `/proc/<pid>/status`, in bytes.
pub(crate) fn resident_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User plus system time of `/proc/<pid>/task/<tid>/stat`, in clock ticks.
pub(crate) fn cpu_ticks(stat: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses: the fields start after its last ')'.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    // utime and stime are fields 14 and 15; after the name, state is the first (field 3).
    let (utime, stime) = (fields.get(11)?.parse::<u64>().ok()?, fields.get(12)?.parse::<u64>().ok()?);
    Some(utime + stime)
}

/// The counters of `dev` in `/proc/<pid>/net/dev`, as the guest behind the tap sees them.
pub(crate) fn tap_counters(net_dev: &str, dev: &str, interface: &str) -> Option<Nic> {
    let line = net_dev.lines().find(|l| l.trim_start().split(':').next() == Some(dev))?;
    let v: Vec<u64> = line.split_once(':')?.1.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // Receive: bytes packets errs drop fifo frame compressed multicast; transmit: bytes packets ...
    let (tap_rx_bytes, tap_rx_packets, tap_tx_bytes, tap_tx_packets) =
        (*v.first()?, *v.get(1)?, *v.get(8)?, *v.get(9)?);
    Some(Nic {
        interface: interface.to_string(),
        rx_bytes: tap_tx_bytes,
        tx_bytes: tap_rx_bytes,
        rx_packets: tap_tx_packets,
        tx_packets: tap_rx_packets,
    })
}

/// Disks from QMP's `query-blockstats`, named as the VMI names them (the device id is `disk-<name>`).
pub(crate) fn drives(blockstats: &Value) -> Vec<Drive> {
    let mut out = Vec::new();
    for dev in blockstats.as_array().into_iter().flatten() {
        let qdev = dev.get("qdev").and_then(Value::as_str).unwrap_or_default();
        let Some(name) = qdev.split('/').find_map(|seg| seg.strip_prefix("disk-")) else { continue };
        let stats = dev.get("stats").cloned().unwrap_or_default();
        let n = |k: &str| stats.get(k).and_then(Value::as_u64).unwrap_or(0);
        out.push(Drive {
            drive: name.to_string(),
            read_bytes: n("rd_bytes"),
            write_bytes: n("wr_bytes"),
            read_ops: n("rd_operations"),
            write_ops: n("wr_operations"),
        });
    }
    out
}

/// The vCPUs' host threads from QMP's `query-cpus-fast`: (vCPU index, thread id).
pub(crate) fn vcpu_threads(cpus: &Value) -> Vec<(u32, u32)> {
    let field = |c: &Value, k: &str| c.get(k).and_then(Value::as_u64).and_then(|v| u32::try_from(v).ok());
    cpus.as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some((field(c, "cpu-index")?, field(c, "thread-id")?)))
        .collect()
}

/// What a running QEMU guest uses now.
async fn usage(local: &LocalVm) -> Option<Usage> {
    let q = local.vm.qemu()?;
    let proc = std::path::PathBuf::from(format!("/proc/{}", q.pid()));
    let read = |p: &str| std::fs::read_to_string(proc.join(p)).ok();
    let mut u = Usage { resident_bytes: read("status").as_deref().and_then(resident_bytes), ..Default::default() };
    let qmp = q.qmp();
    if let Ok(Ok(cpus)) = tokio::time::timeout(QMP_TIMEOUT, qmp.execute("query-cpus-fast", None)).await {
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
        for (id, tid) in vcpu_threads(&cpus) {
            if let Some(t) = read(&format!("task/{tid}/stat")).as_deref().and_then(cpu_ticks) {
                u.vcpu_seconds.push((id, t as f64 / ticks));
            }
        }
    }
    if let (Some((iface, ..)), Some(dev)) = (&local.iface, read("net/dev")) {
        u.nics.extend(tap_counters(&dev, crate::net::setup::TAP, iface));
    }
    if let Ok(Ok(stats)) = tokio::time::timeout(QMP_TIMEOUT, qmp.execute("query-blockstats", None)).await {
        u.drives = drives(&stats);
    }
    Some(u)
}

/// This node's metrics, gathered now.
pub(crate) async fn render(agent: &Agent) -> String {
    let vmis = agent.vmi_cache.get().map(|s| s.state()).unwrap_or_default();
    let running = agent.vms.lock().await.clone();
    let mut samples = Vec::with_capacity(vmis.len());
    for vmi in vmis {
        let uid = vmi.metadata.uid.clone().unwrap_or_default();
        let usage = match running.get(&uid) {
            Some(local) => usage(local).await,
            None => None,
        };
        samples.push(Sample {
            namespace: vmi.metadata.namespace.clone().unwrap_or_default(),
            name: vmi.metadata.name.clone().unwrap_or_default(),
            info: info_of(&vmi),
            usage,
        });
    }
    encode(&agent.node, &samples)
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
