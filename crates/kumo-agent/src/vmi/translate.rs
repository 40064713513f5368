//! A VirtualMachineInstance plus what the agent prepared for it (disk files, taps) → the QEMU
//! [`LaunchConfig`]. Pure, so every KubeVirt field mapping is a unit test.

use crate::qemu::{Accel, Bus, CpuTopology, DeviceKind, DiskConfig, DiskFormat, KernelBoot, LaunchConfig, NicConfig};
use kumo_api::kubevirt::{Empty, Interface, VirtualMachineInstance, VirtualMachineInstanceSpec};
use kumo_api::quantity;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What the agent made ready on the host for one VMI.
#[derive(Clone, Debug, Default)]
pub struct Prepared {
    /// Volume name → image file and its format.
    pub volumes: HashMap<String, (PathBuf, DiskFormat)>,
    /// Interface name → (tap device, MAC address).
    pub nics: HashMap<String, (String, String)>,
    pub kernel_boot: Option<KernelBoot>,
}

/// Host-side settings that are not part of the VMI.
#[derive(Clone, Debug)]
pub struct HostSettings {
    pub accel: Accel,
    pub sandbox: bool,
    pub run_as: Option<(u32, u32)>,
}

/// A CPU topology count: 1 when unset (the schema's minimum is 1 too).
fn count(n: Option<u64>) -> u32 {
    n.map(|n| n as u32).unwrap_or(1).max(1)
}

/// Guest memory in MiB: `memory.guest`, else `resources.requests.memory`, else `resources.limits.memory`.
pub fn memory_mib(spec: &VirtualMachineInstanceSpec) -> Result<u64, String> {
    let d = &spec.domain;
    let resources = d.resources.as_ref();
    let (path, q) = [
        ("domain.memory.guest", d.memory.as_ref().and_then(|m| m.guest.as_ref())),
        ("domain.resources.requests.memory", resources.and_then(|r| r.requests.as_ref()?.get("memory"))),
        ("domain.resources.limits.memory", resources.and_then(|r| r.limits.as_ref()?.get("memory"))),
    ]
    .into_iter()
    .find_map(|(path, q)| Some((path, q?)))
    .ok_or("spec.domain.memory.guest or spec.domain.resources.requests.memory is required")?;
    let bytes = quantity::parse(&q.0).map_err(|e| format!("spec.{path}: {e}"))?;
    Ok(bytes.div_ceil(1 << 20).max(16))
}

fn bus(name: Option<&str>, default: Bus, field: &str) -> Result<Bus, String> {
    match name.unwrap_or("") {
        "" => Ok(default),
        "virtio" => Ok(Bus::Virtio),
        "sata" => Ok(Bus::Sata),
        "scsi" => Ok(Bus::Scsi),
        other => Err(format!("{field}: unsupported bus {other:?} (virtio, sata or scsi)")),
    }
}

/// The interfaces a VMI gets: its own, or (KubeVirt's default) one masquerade NIC on the pod network.
pub fn interfaces(spec: &VirtualMachineInstanceSpec) -> Vec<Interface> {
    let ifaces = spec.domain.devices.interfaces.clone().unwrap_or_default();
    let networks = spec.networks.as_ref().map_or(0, Vec::len);
    if ifaces.is_empty() && networks == 0 {
        return vec![Interface { name: "default".into(), masquerade: Some(Empty {}), ..Default::default() }];
    }
    ifaces
}

pub fn launch_config(
    vmi: &VirtualMachineInstance,
    prepared: &Prepared,
    run_dir: &Path,
    host: &HostSettings,
) -> Result<LaunchConfig, String> {
    let (meta, spec) = (&vmi.metadata, &vmi.spec);
    let name = format!("{}_{}", meta.namespace.as_deref().unwrap_or("default"), meta.name.as_deref().unwrap_or("vmi"));
    let firmware = spec.domain.firmware.as_ref();
    let uuid = firmware.and_then(|f| f.uuid.clone()).or(meta.uid.clone()).unwrap_or_default();
    let mut cfg = LaunchConfig::new(name, uuid, run_dir);
    cfg.smbios_serial = firmware.and_then(|f| f.serial.clone());
    let cpu = spec.domain.cpu.clone().unwrap_or_default();
    cfg.cpu = CpuTopology { sockets: count(cpu.sockets), cores: count(cpu.cores), threads: count(cpu.threads) };
    cfg.memory_mib = memory_mib(spec)?;
    cfg.rng = spec.domain.devices.rng.is_some();
    cfg.graphics = spec.domain.devices.autoattach_graphics_device != Some(false);
    cfg.accel = host.accel;
    cfg.sandbox = host.sandbox;
    cfg.run_as = host.run_as;
    cfg.kernel_boot = prepared.kernel_boot.clone();
    for (i, d) in spec.domain.devices.disks.iter().flatten().enumerate() {
        if spec.volumes.iter().flatten().any(|v| v.name == d.name && v.is_hotplugged()) {
            continue; // attached to the running guest instead
        }
        let field = format!("spec.domain.devices.disks[{i}]");
        let dname = d.name.as_str();
        let (path, format) = prepared
            .volumes
            .get(dname)
            .cloned()
            .ok_or_else(|| format!("{field}.name: no prepared volume {dname:?}"))?;
        let (device, bus, readonly) = if let Some(c) = &d.cdrom {
            (DeviceKind::Cdrom, bus(c.bus.as_deref(), Bus::Sata, &field)?, true)
        } else if let Some(l) = &d.lun {
            (DeviceKind::Lun, bus(l.bus.as_deref(), Bus::Scsi, &field)?, l.readonly.unwrap_or(false))
        } else {
            let dd = d.disk.clone().unwrap_or_default();
            (DeviceKind::Disk, bus(dd.bus.as_deref(), Bus::Virtio, &field)?, dd.readonly.unwrap_or(false))
        };
        // A claim mounted readOnly is read-only whatever the disk says.
        let claim_ro = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == dname)
            .is_some_and(|v| v.persistent_volume_claim.as_ref().is_some_and(|c| c.read_only == Some(true)));
        let readonly = readonly || claim_ro;
        cfg.disks.push(DiskConfig {
            name: dname.to_string(),
            path,
            format,
            bus,
            device,
            boot_order: d.boot_order.map(|b| b as u32),
            readonly,
            serial: d.serial.clone(),
        });
    }
    for iface in &interfaces(spec) {
        let iname = iface.name.as_str();
        let (tap, mac) =
            prepared.nics.get(iname).cloned().ok_or_else(|| format!("interface {iname:?} has no prepared tap"))?;
        let model = match iface.model.as_deref() {
            None | Some("virtio") => "virtio-net-pci".to_string(),
            Some(m) => m.to_string(),
        };
        // kumo does not serve an interface's bootOrder (the schema refuses it), so NICs never boot first.
        cfg.nics.push(NicConfig { name: iname.to_string(), tap, mac, model, boot_order: None });
    }
    cfg.validate().map_err(|e| e.0)?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn typed(v: Value) -> VirtualMachineInstance {
        serde_json::from_value(v).expect("a valid VMI")
    }

    fn vmi() -> Value {
        json!({"metadata": {"name": "vm1", "namespace": "ns", "uid": "6f1c2b1e-0000-4000-8000-000000000001"},
            "spec": {"domain": {"cpu": {"cores": 2}, "memory": {"guest": "128Mi"},
                "firmware": {"serial": "S1"},
                "devices": {"rng": {}, "disks": [
                    {"name": "root", "disk": {"bus": "virtio"}, "bootOrder": 1},
                    {"name": "ci", "cdrom": {}},
                    {"name": "data", "disk": {"bus": "scsi"}}],
                    "interfaces": [{"name": "default", "masquerade": {}}]}}}})
    }

    fn prepared() -> Prepared {
        let mut p = Prepared::default();
        p.volumes.insert("root".into(), ("/d/root.qcow2".into(), DiskFormat::Qcow2));
        p.volumes.insert("ci".into(), ("/d/ci.iso".into(), DiskFormat::Raw));
        p.volumes.insert("data".into(), ("/d/data.qcow2".into(), DiskFormat::Qcow2));
        p.nics.insert("default".into(), ("tap0".into(), "02:00:00:00:00:01".into()));
        p
    }

    #[test]
    fn maps_kubevirt_fields() {
        let host = HostSettings { accel: Accel::Tcg, sandbox: true, run_as: None };
        let c = launch_config(&typed(vmi()), &prepared(), Path::new("/run/kumo/x"), &host).unwrap();
        assert_eq!(c.memory_mib, 128);
        assert_eq!((c.cpu.sockets, c.cpu.cores, c.cpu.threads), (1, 2, 1));
        assert_eq!(c.uuid, "6f1c2b1e-0000-4000-8000-000000000001");
        assert_eq!(c.smbios_serial.as_deref(), Some("S1"));
        assert!(c.rng);
        assert!(c.graphics, "KubeVirt attaches a graphics device unless told not to");
        assert_eq!(c.disks[0].boot_order, Some(1));
        assert_eq!((c.disks[1].device, c.disks[1].bus, c.disks[1].readonly), (DeviceKind::Cdrom, Bus::Sata, true));
        assert_eq!(c.disks[2].bus, Bus::Scsi);
        assert_eq!(c.nics[0].model, "virtio-net-pci");
        assert_eq!(c.nics[0].tap, "tap0");
        // No interfaces and no networks: KubeVirt's default masquerade NIC is still there.
        let mut bare = vmi();
        bare["spec"]["domain"]["devices"].as_object_mut().unwrap().remove("interfaces");
        let c = launch_config(&typed(bare), &prepared(), Path::new("/run/kumo/x"), &host).unwrap();
        assert_eq!((c.nics.len(), c.nics[0].name.as_str()), (1, "default"));
    }

    #[test]
    fn missing_memory_and_unknown_bus_name_the_field() {
        let host = HostSettings { accel: Accel::Tcg, sandbox: false, run_as: None };
        let mut v = vmi();
        v["spec"]["domain"]["memory"] = json!({});
        assert!(launch_config(&typed(v), &prepared(), Path::new("/r"), &host).unwrap_err().contains("memory"));
        let mut v = vmi();
        v["spec"]["domain"]["devices"]["disks"][0]["disk"]["bus"] = json!("ide");
        assert!(launch_config(&typed(v), &prepared(), Path::new("/r"), &host).unwrap_err().contains("disks[0]"));
        let spec = |v: Value| typed(json!({"spec": v})).spec;
        assert_eq!(memory_mib(&spec(json!({"domain": {"resources": {"requests": {"memory": "1Gi"}}}}))).unwrap(), 1024);
        // A quantity written as a number reads as it did.
        assert_eq!(memory_mib(&spec(json!({"domain": {"memory": {"guest": 268435456}}}))).unwrap(), 256);
        let bad = memory_mib(&spec(json!({"domain": {"resources": {"limits": {"memory": "lots"}}}}))).unwrap_err();
        assert!(bad.starts_with("spec.domain.resources.limits.memory:"), "{bad}");
    }
}
