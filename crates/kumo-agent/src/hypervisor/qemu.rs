//! Guests as QEMU processes: disks, kernel files and the VMI's network prepared on this host, a DHCP server in
//! its namespace, then QEMU (see [`crate::qemu`]). Guests outlive the agent and are found again by their run
//! directory.

use super::{Exit, Guest, Hypervisor, Launched};
use crate::image::{ImageCache, RegistryConfig};
use crate::net::{Ipam, NodeNet, VmiNetwork};
use crate::qemu::{self, Accel, RunningVm, ShutdownOutcome};
use crate::vmi::prepare::{self, PrepareCtx, PrepareError};
use crate::vmi::translate::{self, HostSettings};
use crate::volumes::VolumeDirs;
use kube::ResourceExt;
use kumo_api::kubevirt::VirtualMachineInstance;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub(crate) struct QemuHypervisor {
    pub client: kube::Client,
    /// Each VMI's directory is `vmis/<uid>` under it.
    pub state_dir: PathBuf,
    pub accel: Accel,
    pub qemu: PathBuf,
    pub images: Arc<ImageCache>,
    pub registry: RegistryConfig,
    pub node_net: NodeNet,
    pub ipam: Ipam,
    pub volume_dirs: VolumeDirs,
    pub run_as: Option<(u32, u32)>,
    pub sandbox: bool,
}

impl QemuHypervisor {
    fn dir(&self, uid: &str) -> PathBuf {
        self.state_dir.join("vmis").join(uid)
    }

    fn prepare_ctx(&self) -> PrepareCtx<'_> {
        PrepareCtx {
            client: &self.client,
            images: &self.images,
            registry: &self.registry,
            node_net: &self.node_net,
            ipam: &self.ipam,
            tap_owner: self.run_as,
            volume_dirs: &self.volume_dirs,
        }
    }

    /// The VMI's network, set up (or converged on what exists) off the async workers: `ip`/`nft` processes.
    async fn network(
        self: &Arc<Self>,
        vmi: &VirtualMachineInstance,
    ) -> Result<Option<(String, VmiNetwork)>, PrepareError> {
        let (hv, vmi) = (self.clone(), vmi.clone());
        match tokio::task::spawn_blocking(move || prepare::network(&hv.prepare_ctx(), &vmi)).await {
            Ok(r) => r,
            Err(e) => Err(PrepareError::new("NetworkError", e.to_string())),
        }
    }
}

/// The hypervisor as the agent holds it: an `Arc`, so the network can be set up on a blocking thread.
pub(crate) struct Qemu(pub Arc<QemuHypervisor>);

#[async_trait::async_trait]
impl Hypervisor for Qemu {
    fn accel(&self) -> &str {
        self.0.accel.as_str()
    }

    async fn launch(&self, vmi: &VirtualMachineInstance) -> Result<Launched, PrepareError> {
        let hv = &self.0;
        let dir = hv.dir(&vmi.uid().unwrap_or_default());
        let ctx = hv.prepare_ctx();
        // The network is plumbed while disks are prepared: both are on the boot path.
        let (volumes, kernel, net) =
            tokio::join!(prepare::volumes(&ctx, vmi, &dir), prepare::kernel_boot(&ctx, vmi), hv.network(vmi));
        let (mut prepared, net) = (volumes?, net?);
        prepared.kernel_boot = kernel?;
        if let Some((name, n)) = &net {
            prepared.nics.insert(name.clone(), (n.tap.clone(), n.mac.clone()));
        }
        let host = HostSettings { accel: hv.accel, sandbox: hv.sandbox, run_as: hv.run_as };
        let mut cfg = translate::launch_config(vmi, &prepared, &dir.join("run"), &host)
            .map_err(|m| PrepareError::new("InvalidSpec", m))?;
        cfg.netns = net.as_ref().map(|(_, n)| n.netns.clone());
        let stop_services = match &net {
            Some((_, n)) => Some(start_dhcp(n).map_err(|m| PrepareError::new("NetworkError", m))?),
            None => None,
        };
        let vm = qemu::launch(&cfg, &hv.qemu).await.map_err(|e| PrepareError::new("QemuFailed", format!("{e:#}")))?;
        Ok(Launched { guest: Box::new(vm), iface: guest_iface(&net), stop_services })
    }

    async fn reattach(&self, vmi: &VirtualMachineInstance) -> Result<Launched, PrepareError> {
        let hv = &self.0;
        let vm = qemu::attach(&hv.dir(&vmi.uid().unwrap_or_default()).join("run"))
            .await
            .map_err(|e| PrepareError::new("QemuExited", format!("the guest's QEMU process is gone: {e:#}")))?;
        // Network setup converges on what exists, giving back the DHCP answer to serve again.
        let served = hv.network(vmi).await.and_then(|net| {
            let tx = match &net {
                Some((_, n)) => Some(start_dhcp(n).map_err(|m| PrepareError::new("NetworkError", m))?),
                None => None,
            };
            Ok((net, tx))
        });
        let (net, stop_services) = match served {
            Ok(ok) => ok,
            Err(e) => {
                // Not handed to the agent, so nothing else would stop this guest: it must not outlive its failed
                // VMI (say, with a pod address that now belongs to another node).
                if let Err(k) = vm.kill().await {
                    tracing::warn!(vmi = %vmi.name_any(), "stopping the guest: {k:#}");
                }
                return Err(e);
            }
        };
        tracing::info!(vmi = %vmi.name_any(), pid = vm.pid(), "reattached to running guest");
        Ok(Launched { guest: Box::new(vm), iface: guest_iface(&net), stop_services })
    }

    async fn find(&self, uid: &str) -> Option<Box<dyn Guest>> {
        let vm = qemu::attach(&self.0.dir(uid).join("run")).await.ok()?;
        Some(Box::new(vm))
    }

    async fn cleanup(&self, uid: &str) {
        let hv = &self.0;
        // `ip` processes: off the async workers, like the setup.
        let (node_net, id) = (hv.node_net.clone(), uid.to_string());
        match tokio::task::spawn_blocking(move || node_net.teardown_vmi(&id)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("tearing down the network of {uid}: {e:#}"),
            Err(e) => tracing::warn!("tearing down the network of {uid}: {e}"),
        }
        if let Err(e) = hv.ipam.release(uid) {
            tracing::warn!("releasing the pod IP of {uid}: {e:#}");
        }
        let d = hv.dir(uid);
        if d.exists() {
            if let Err(e) = std::fs::remove_dir_all(&d) {
                tracing::warn!("removing {}: {e}", d.display());
            }
        }
    }

    fn local(&self) -> Vec<String> {
        match std::fs::read_dir(self.0.state_dir.join("vmis")) {
            Ok(d) => d.flatten().filter_map(|e| e.file_name().to_str().map(String::from)).collect(),
            Err(_) => vec![],
        }
    }

    fn kill_orphan(&self, uid: &str) {
        for pid in crate::fence::guests_under(&self.0.dir(uid)) {
            tracing::warn!(uid = %uid, pid, "killing the guest of a VMI that no longer exists here");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL);
        }
    }
}

/// What the VMI's status reports of its interface: name, pod IP, MAC.
fn guest_iface(net: &Option<(String, VmiNetwork)>) -> Option<(String, String, String)> {
    net.as_ref().map(|(name, n)| (name.clone(), n.pod_ip.to_string(), n.mac.clone()))
}

/// The DHCP server must listen before QEMU starts, or the guest's first DISCOVERs are lost.
fn start_dhcp(net: &VmiNetwork) -> Result<tokio::sync::oneshot::Sender<()>, String> {
    let socket = net.bind_dhcp().map_err(|e| format!("binding the DHCP server in {}: {e}", net.netns.display()))?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = net.dhcp.clone();
    tokio::spawn(async move {
        if let Err(e) = crate::net::serve(socket, cfg, async move {
            let _ = rx.await;
        })
        .await
        {
            tracing::warn!("DHCP server stopped: {e}");
        }
    });
    Ok(tx)
}

#[async_trait::async_trait]
impl Guest for RunningVm {
    fn describe(&self) -> String {
        format!("QEMU pid {}", self.pid())
    }

    fn is_alive(&self) -> bool {
        RunningVm::is_alive(self)
    }

    async fn wait_exit(&self) -> Exit {
        match RunningVm::wait_exit(self).await {
            Some(s) if s.success() => Exit { ok: true, message: "the guest shut down".into() },
            Some(s) => Exit { ok: false, message: format!("QEMU exited with {s}") },
            None => Exit { ok: false, message: "QEMU exited".into() },
        }
    }

    async fn shutdown(&self, grace: Duration) -> anyhow::Result<ShutdownOutcome> {
        RunningVm::shutdown(self, grace).await
    }

    async fn kill(&self) -> anyhow::Result<()> {
        RunningVm::kill(self).await
    }

    async fn pause(&self) -> anyhow::Result<()> {
        Ok(self.qmp().stop().await?)
    }

    async fn resume(&self) -> anyhow::Result<()> {
        Ok(self.qmp().cont().await?)
    }

    fn qemu(&self) -> Option<&RunningVm> {
        Some(self)
    }
}
