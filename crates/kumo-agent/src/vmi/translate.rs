//! A VirtualMachineInstance spec (KubeVirt JSON) plus what the agent prepared for it (disk files, taps) →
//! the QEMU [`LaunchConfig`]. Pure, so every KubeVirt field mapping is a unit test.

use crate::qemu::{Accel, Bus, CpuTopology, DeviceKind, DiskConfig, DiskFormat, KernelBoot, LaunchConfig, NicConfig};
use kumo_api::quantity;
use serde_json::{json, Value};
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

fn s<'a>(v: &'a Value, p: &str) -> Option<&'a str> {
    v.pointer(p).and_then(Value::as_str)
}

fn u32_at(v: &Value, p: &str) -> u32 {
    v.pointer(p).and_then(Value::as_u64).map(|n| n as u32).unwrap_or(1).max(1)
}

/// Guest memory in MiB: `memory.guest`, else `resources.requests.memory`, else `resources.limits.memory`.
pub fn memory_mib(spec: &Value) -> Result<u64, String> {
    let (path, q) = ["/domain/memory/guest", "/domain/resources/requests/memory", "/domain/resources/limits/memory"]
        .iter()
        .find_map(|p| Some((p, spec.pointer(p)?)))
        .ok_or("spec.domain.memory.guest or spec.domain.resources.requests.memory is required")?;
    let bytes = quantity::from_value(q).map_err(|e| format!("spec{}: {e}", path.replace('/', ".")))?;
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
pub fn interfaces(spec: &Value) -> Vec<Value> {
    let ifaces = spec.pointer("/domain/devices/interfaces").and_then(Value::as_array).cloned().unwrap_or_default();
    let networks = spec.get("networks").and_then(Value::as_array).map(Vec::len).unwrap_or(0);
    if ifaces.is_empty() && networks == 0 {
        return vec![json!({"name": "default", "masquerade": {}})];
    }
    ifaces
}

pub fn launch_config(
    vmi: &Value,
    prepared: &Prepared,
    run_dir: &Path,
    host: &HostSettings,
) -> Result<LaunchConfig, String> {
    let spec = vmi.get("spec").ok_or("the VMI has no spec")?;
    let name =
        format!("{}_{}", s(vmi, "/metadata/namespace").unwrap_or("default"), s(vmi, "/metadata/name").unwrap_or("vmi"));
    let uuid = s(spec, "/domain/firmware/uuid").or(s(vmi, "/metadata/uid")).unwrap_or_default().to_string();
    let mut cfg = LaunchConfig::new(name, uuid, run_dir);
    cfg.smbios_serial = s(spec, "/domain/firmware/serial").map(String::from);
    cfg.cpu = CpuTopology {
        sockets: u32_at(spec, "/domain/cpu/sockets"),
        cores: u32_at(spec, "/domain/cpu/cores"),
        threads: u32_at(spec, "/domain/cpu/threads"),
    };
    cfg.memory_mib = memory_mib(spec)?;
    cfg.rng = spec.pointer("/domain/devices/rng").is_some();
    cfg.accel = host.accel;
    cfg.sandbox = host.sandbox;
    cfg.run_as = host.run_as;
    cfg.kernel_boot = prepared.kernel_boot.clone();
    let disks = spec.pointer("/domain/devices/disks").and_then(Value::as_array).cloned().unwrap_or_default();
    for (i, d) in disks.iter().enumerate() {
        let field = format!("spec.domain.devices.disks[{i}]");
        let dname = s(d, "/name").unwrap_or_default();
        let (path, format) = prepared
            .volumes
            .get(dname)
            .cloned()
            .ok_or_else(|| format!("{field}.name: no prepared volume {dname:?}"))?;
        let (device, bus, readonly) = if let Some(c) = d.get("cdrom") {
            (DeviceKind::Cdrom, bus(s(c, "/bus"), Bus::Sata, &field)?, true)
        } else if let Some(l) = d.get("lun") {
            (
                DeviceKind::Lun,
                bus(s(l, "/bus"), Bus::Scsi, &field)?,
                l.get("readonly").and_then(Value::as_bool).unwrap_or(false),
            )
        } else {
            let dd = d.get("disk").cloned().unwrap_or_default();
            (
                DeviceKind::Disk,
                bus(s(&dd, "/bus"), Bus::Virtio, &field)?,
                dd.get("readonly").and_then(Value::as_bool).unwrap_or(false),
            )
        };
        cfg.disks.push(DiskConfig {
            name: dname.to_string(),
            path,
            format,
            bus,
            device,
            boot_order: d.get("bootOrder").and_then(Value::as_u64).map(|b| b as u32),
            readonly,
            serial: s(d, "/serial").map(String::from),
        });
    }
    for iface in &interfaces(spec) {
        let iname = s(iface, "/name").unwrap_or_default();
        let (tap, mac) =
            prepared.nics.get(iname).cloned().ok_or_else(|| format!("interface {iname:?} has no prepared tap"))?;
        let model = match s(iface, "/model") {
            None | Some("virtio") => "virtio-net-pci".to_string(),
            Some(m) => m.to_string(),
        };
        cfg.nics.push(NicConfig {
            name: iname.to_string(),
            tap,
            mac,
            model,
            boot_order: iface.get("bootOrder").and_then(Value::as_u64).map(|b| b as u32),
        });
    }
    cfg.validate().map_err(|e| e.0)?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let c = launch_config(&vmi(), &prepared(), Path::new("/run/kumo/x"), &host).unwrap();
        assert_eq!(c.memory_mib, 128);
        assert_eq!((c.cpu.sockets, c.cpu.cores, c.cpu.threads), (1, 2, 1));
        assert_eq!(c.uuid, "6f1c2b1e-0000-4000-8000-000000000001");
        assert_eq!(c.smbios_serial.as_deref(), Some("S1"));
        assert!(c.rng);
        assert_eq!(c.disks[0].boot_order, Some(1));
        assert_eq!((c.disks[1].device, c.disks[1].bus, c.disks[1].readonly), (DeviceKind::Cdrom, Bus::Sata, true));
        assert_eq!(c.disks[2].bus, Bus::Scsi);
        assert_eq!(c.nics[0].model, "virtio-net-pci");
        assert_eq!(c.nics[0].tap, "tap0");
        // No interfaces and no networks: KubeVirt's default masquerade NIC is still there.
        let mut bare = vmi();
        bare["spec"]["domain"]["devices"].as_object_mut().unwrap().remove("interfaces");
        let c = launch_config(&bare, &prepared(), Path::new("/run/kumo/x"), &host).unwrap();
        assert_eq!((c.nics.len(), c.nics[0].name.as_str()), (1, "default"));
    }

    #[test]
    fn missing_memory_and_unknown_bus_name_the_field() {
        let host = HostSettings { accel: Accel::Tcg, sandbox: false, run_as: None };
        let mut v = vmi();
        v["spec"]["domain"]["memory"] = json!({});
        assert!(launch_config(&v, &prepared(), Path::new("/r"), &host).unwrap_err().contains("memory"));
        let mut v = vmi();
        v["spec"]["domain"]["devices"]["disks"][0]["disk"]["bus"] = json!("ide");
        assert!(launch_config(&v, &prepared(), Path::new("/r"), &host).unwrap_err().contains("disks[0]"));
        assert_eq!(memory_mib(&json!({"domain": {"resources": {"requests": {"memory": "1Gi"}}}})).unwrap(), 1024);
        let bad = memory_mib(&json!({"domain": {"resources": {"limits": {"memory": "lots"}}}})).unwrap_err();
        assert!(bad.starts_with("spec.domain.resources.limits.memory:"), "{bad}");
    }
}
