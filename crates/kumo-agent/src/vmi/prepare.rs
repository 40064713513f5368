//! Making a VMI's resources ready on the host before QEMU starts: disk files (containerDisk overlays,
//! emptyDisk, hostDisk), cloud-init ISOs, and the network namespace with its DHCP answer.

use super::translate::{interfaces, Prepared};
use crate::cloudinit::{self, CloudInitData, SecretData};
use crate::image::{create_empty_disk, create_overlay, ImageCache, PullPolicy, RegistryConfig};
use crate::net::ipam::OutsideRange;
use crate::net::{Binding, GuestLink, Ipam, NodeNet, Proto, VmiNetwork, VmiSpec};
use crate::qemu::{DiskFormat, KernelBoot};
use crate::volumes::{attach::claim_disk, VolumeDirs};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kumo_api::kubevirt::{CloudInitSource, HostDisk, Interface, VirtualMachineInstance};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why preparing failed, in KubeVirt's vocabulary (`reason`) and in words that say what to fix.
#[derive(Debug, Clone, PartialEq)]
pub struct PrepareError {
    pub reason: &'static str,
    pub message: String,
}

impl PrepareError {
    pub(crate) fn new(reason: &'static str, message: impl Into<String>) -> Self {
        PrepareError { reason, message: message.into() }
    }
}

pub struct PrepareCtx<'a> {
    pub client: &'a kube::Client,
    pub images: &'a ImageCache,
    pub registry: &'a RegistryConfig,
    pub node_net: &'a NodeNet,
    pub ipam: &'a Ipam,
    pub tap_owner: Option<(u32, u32)>,
    pub volume_dirs: &'a VolumeDirs,
}

/// The guest's host name, as KubeVirt gives it: `spec.hostname`, else the VMI's name.
fn hostname(vmi: &VirtualMachineInstance) -> &str {
    vmi.spec.hostname.as_deref().or(vmi.metadata.name.as_deref()).unwrap_or("vmi")
}

fn binding(iface: &Interface) -> Binding {
    if iface.bridge.is_some() {
        return Binding::Bridge;
    }
    let mut ports = Vec::new();
    for p in iface.ports.iter().flatten() {
        let proto = match p.protocol.as_deref().unwrap_or("TCP") {
            "UDP" => Proto::Udp,
            _ => Proto::Tcp,
        };
        ports.push((p.port, proto));
    }
    Binding::Masquerade { ports }
}

fn namespace(vmi: &VirtualMachineInstance) -> &str {
    vmi.metadata.namespace.as_deref().unwrap_or("default")
}

fn uid(vmi: &VirtualMachineInstance) -> &str {
    vmi.metadata.uid.as_deref().unwrap_or_default()
}

/// Sets up the VMI's network (one pod-network interface, as in KubeVirt's default).
pub fn network(ctx: &PrepareCtx, vmi: &VirtualMachineInstance) -> Result<Option<(String, VmiNetwork)>, PrepareError> {
    let ifaces = interfaces(&vmi.spec);
    let Some(iface) = ifaces.first() else { return Ok(None) };
    if ifaces.len() > 1 {
        return Err(PrepareError::new(
            "UnsupportedNetwork",
            "kumo supports one interface (on the pod network) per VMI",
        ));
    }
    let uid = uid(vmi);
    let pod_ip = ctx.ipam.allocate(uid).map_err(|e| match e.downcast_ref::<OutsideRange>() {
        // It cannot keep an address that other nodes now route elsewhere; failing lets its VM start it afresh.
        Some(o) => PrepareError::new("PodCIDRChanged", format!("{o}: the VMI cannot keep it")),
        None => PrepareError::new("NetworkError", format!("allocating a pod IP: {e:#}")),
    })?;
    let spec_net = VmiSpec {
        uid: uid.to_string(),
        binding: binding(iface),
        pod_ip,
        mac: iface.mac_address.clone(),
        link: GuestLink::Tap { owner: ctx.tap_owner },
    };
    let mut net = ctx
        .node_net
        .setup_vmi(&spec_net)
        .map_err(|e| PrepareError::new("NetworkError", format!("setting up the VMI network: {e:#}")))?;
    net.dhcp.hostname = Some(hostname(vmi).to_string());
    net.dhcp.dns = host_nameservers();
    Ok(Some((iface.name.clone(), net)))
}

/// IPv4 nameservers from the host's resolv.conf, handed to guests as KubeVirt hands them the pod's.
fn host_nameservers() -> Vec<std::net::Ipv4Addr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse().ok())
        .filter(|a: &std::net::Ipv4Addr| !a.is_loopback())
        .collect()
}

/// Prepares every volume into `dir/disks`, returning what QEMU needs.
pub async fn volumes(ctx: &PrepareCtx<'_>, vmi: &VirtualMachineInstance, dir: &Path) -> Result<Prepared, PrepareError> {
    let disks = dir.join("disks");
    std::fs::create_dir_all(&disks)
        .map_err(|e| PrepareError::new("DiskError", format!("creating {}: {e}", disks.display())))?;
    let mut prepared = Prepared::default();
    // Hot-plugged volumes are attached once the guest runs (crate::agent::hotplug), also after a restart.
    for v in vmi.spec.volumes.iter().flatten().filter(|v| !v.is_hotplugged()) {
        let name = v.name.clone();
        let entry = if let Some(cd) = &v.container_disk {
            let image = cd.image.as_str();
            let policy = PullPolicy::for_image(cd.image_pull_policy.as_deref(), image);
            let base = ctx
                .images
                .disk_for(image, ctx.registry, policy)
                .await
                .map_err(|e| PrepareError::new("ErrImagePull", format!("volume {name}: {e:#}")))?;
            let overlay = disks.join(format!("{name}.qcow2"));
            if !overlay.exists() {
                create_overlay(&base.path, &base.format, &overlay)
                    .await
                    .map_err(|e| PrepareError::new("DiskError", format!("volume {name}: {e:#}")))?;
            }
            (overlay, DiskFormat::Qcow2)
        } else if let Some(ed) = &v.empty_disk {
            let bytes = ed
                .capacity
                .as_ref()
                .map(|q| kumo_api::quantity::parse(&q.0))
                .transpose()
                .map_err(|e| PrepareError::new("DiskError", format!("volume {name}: emptyDisk.capacity: {e}")))?;
            let path = disks.join(format!("{name}.qcow2"));
            if !path.exists() {
                create_empty_disk(&path, bytes.unwrap_or(0))
                    .await
                    .map_err(|e| PrepareError::new("DiskError", format!("volume {name}: {e:#}")))?;
            }
            (path, DiskFormat::Qcow2)
        } else if let Some(hd) = &v.host_disk {
            (host_disk(&name, hd)?, DiskFormat::Raw)
        } else if let Some(src) = v.cloud_init_no_cloud.as_ref().or(v.cloud_init_config_drive.as_ref()) {
            let iso = cloud_init_iso(ctx, vmi, src, v.cloud_init_config_drive.is_some()).await?;
            let path = disks.join(format!("{name}.iso"));
            std::fs::write(&path, iso)
                .map_err(|e| PrepareError::new("DiskError", format!("writing {}: {e}", path.display())))?;
            (path, DiskFormat::Raw)
        } else if let Some(claim) = v.direct_claim() {
            let disk = claim_disk(ctx.client, ctx.volume_dirs, namespace(vmi), claim).await?;
            (disk.path, disk.format)
        } else if let Some(claim) = v.ephemeral.as_ref().and_then(|e| e.persistent_volume_claim.as_ref()) {
            // The claim's image read-only under a throw-away overlay, as KubeVirt's ephemeral volumes.
            let disk = claim_disk(ctx.client, ctx.volume_dirs, namespace(vmi), &claim.claim_name).await?;
            let overlay = disks.join(format!("{name}.qcow2"));
            if !overlay.exists() {
                create_overlay(&disk.path, disk.format.as_str(), &overlay)
                    .await
                    .map_err(|e| PrepareError::new("DiskError", format!("volume {name}: {e:#}")))?;
            }
            (overlay, DiskFormat::Qcow2)
        } else {
            return Err(PrepareError::new("UnsupportedVolume", format!("volume {name}: no supported volume source")));
        };
        prepared.volumes.insert(name, entry);
    }
    Ok(prepared)
}

/// KubeVirt's `firmware.kernelBoot`: the kernel (and initrd) pulled from a container image into the image
/// cache, booted directly by QEMU with `kernelArgs` as its command line.
pub async fn kernel_boot(
    ctx: &PrepareCtx<'_>,
    vmi: &VirtualMachineInstance,
) -> Result<Option<KernelBoot>, PrepareError> {
    let Some(kb) = vmi.spec.domain.firmware.as_ref().and_then(|f| f.kernel_boot.as_ref()) else { return Ok(None) };
    let Some(c) = &kb.container else { return Ok(None) };
    let image = c.image.as_str();
    let field = "spec.domain.firmware.kernelBoot.container";
    let kernel = c
        .kernel_path
        .as_deref()
        .ok_or_else(|| PrepareError::new("InvalidSpec", format!("{field}.kernelPath is required")))?;
    let mut paths = vec![kernel];
    paths.extend(c.initrd_path.as_deref());
    let mut files = ctx
        .images
        .files_for(image, ctx.registry, PullPolicy::for_image(c.image_pull_policy.as_deref(), image), &paths)
        .await
        .map_err(|e| PrepareError::new("ErrImagePull", format!("{field}: {e:#}")))?
        .into_iter();
    Ok(Some(KernelBoot {
        kernel: files.next().expect("the kernel was asked for"),
        initrd: files.next(),
        cmdline: kb.kernel_args.clone().unwrap_or_default(),
    }))
}

fn host_disk(name: &str, hd: &HostDisk) -> Result<PathBuf, PrepareError> {
    let path = PathBuf::from(&hd.path);
    let err = |m: String| PrepareError::new("DiskError", format!("volume {name}: hostDisk: {m}"));
    if !path.is_absolute() {
        return Err(err(format!("path {} must be absolute", path.display())));
    }
    if path.exists() {
        return Ok(path);
    }
    if hd.type_ != "DiskOrCreate" {
        return Err(err(format!(
            "{} does not exist (type Disk needs an existing file; use DiskOrCreate)",
            path.display()
        )));
    }
    let bytes = hd
        .capacity
        .as_ref()
        .map(|q| kumo_api::quantity::parse(&q.0))
        .transpose()
        .map_err(err)?
        .ok_or_else(|| err("capacity is required to create the disk".into()))?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| err(e.to_string()))?;
    }
    // A sparse raw file: KubeVirt's hostDisk images are raw `disk.img` files.
    let f = std::fs::File::create(&path).map_err(|e| err(e.to_string()))?;
    f.set_len(bytes).map_err(|e| err(e.to_string()))?;
    Ok(path)
}

async fn cloud_init_iso(
    ctx: &PrepareCtx<'_>,
    vmi: &VirtualMachineInstance,
    src: &CloudInitSource,
    config_drive: bool,
) -> Result<Vec<u8>, PrepareError> {
    let ns = vmi.metadata.namespace.as_deref().unwrap_or("default");
    let mut secrets: BTreeMap<String, SecretData> = BTreeMap::new();
    for reference in [&src.secret_ref, &src.network_data_secret_ref] {
        // KubeVirt's examples often name one Secret for both: read it once. A reference without a name is
        // not looked up: resolving the source says what is wrong with it.
        let name = reference.as_ref().map(|r| r.name.as_str()).filter(|n| !n.is_empty());
        if let Some(secret) = name.filter(|n| !secrets.contains_key(*n)) {
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
            let got = api
                .get(secret)
                .await
                .map_err(|e| PrepareError::new("CloudInitError", format!("reading Secret {ns}/{secret}: {e}")))?;
            let data = got.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
            secrets.insert(secret.to_string(), data);
        }
    }
    let lookup = |name: &str| -> anyhow::Result<SecretData> {
        secrets.get(name).cloned().ok_or_else(|| anyhow::anyhow!("Secret {name} not found"))
    };
    let (user_data, network_data) =
        cloudinit::resolve_source(src, &lookup).map_err(|e| PrepareError::new("CloudInitError", format!("{e:#}")))?;
    let data = CloudInitData {
        user_data,
        network_data,
        instance_id: uid(vmi).to_string(),
        hostname: hostname(vmi).to_string(),
    };
    Ok(if config_drive { cloudinit::configdrive_iso(&data) } else { cloudinit::nocloud_iso(&data) })
}
