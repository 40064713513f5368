//! What runs guests on a node, behind one trait: [`qemu::QemuHypervisor`] (real QEMU processes) and
//! [`simulated::SimulatedHypervisor`] (no process at all: a guest "boots" after a delay), which exists only to
//! measure the control plane with thousands of nodes. The agent's watch, reconcile, status, Lease and events
//! are the same code for both.

pub mod qemu;
pub mod simulated;

use crate::qemu::ShutdownOutcome;
use crate::vmi::prepare::PrepareError;
use kumo_api::kubevirt::VirtualMachineInstance;
use std::time::Duration;

/// A guest started (or found again after an agent restart).
pub(crate) struct Launched {
    pub guest: Box<dyn Guest>,
    /// The pod-network interface status reports: name, pod IP, MAC.
    pub iface: Option<(String, String, String)>,
    /// Stops what serves the guest besides itself (its DHCP server).
    pub stop_services: Option<tokio::sync::oneshot::Sender<()>>,
}

/// How a guest ended on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Exit {
    /// The guest powered off (Succeeded) rather than crashing (Failed).
    pub ok: bool,
    pub message: String,
}

#[async_trait::async_trait]
pub(crate) trait Hypervisor: Send + Sync + 'static {
    /// What guests run with here ("kvm", "tcg" or "simulated"), as status and events say it.
    fn accel(&self) -> &str;
    /// Prepares what the VMI needs on this host and starts its guest.
    async fn launch(&self, vmi: &VirtualMachineInstance) -> Result<Launched, PrepareError>;
    /// Takes a guest a previous agent started under its control again; an error fails the VMI.
    async fn reattach(&self, vmi: &VirtualMachineInstance) -> Result<Launched, PrepareError>;
    /// The guest a previous agent left running for `uid`, if any (so a VMI deleted meanwhile still stops it).
    async fn find(&self, uid: &str) -> Option<Box<dyn Guest>>;
    /// Removes everything the VMI had on this host (network, addresses, files); its guest is already gone.
    async fn cleanup(&self, uid: &str);
    /// The VMIs (by uid) with something left on this host.
    fn local(&self) -> Vec<String>;
    /// Kills the guest of a VMI that no longer exists, found by [`Hypervisor::local`].
    fn kill_orphan(&self, uid: &str);
}

#[async_trait::async_trait]
pub(crate) trait Guest: Send + Sync + 'static {
    /// How events name it: "QEMU pid 123", "simulated".
    fn describe(&self) -> String;
    fn is_alive(&self) -> bool;
    /// Waits until the guest has ended.
    async fn wait_exit(&self) -> Exit;
    /// Powers off within `grace`, else kills.
    async fn shutdown(&self, grace: Duration) -> anyhow::Result<ShutdownOutcome>;
    async fn kill(&self) -> anyhow::Result<()>;
    async fn pause(&self) -> anyhow::Result<()>;
    async fn resume(&self) -> anyhow::Result<()>;
    /// The QEMU process, for what only a real guest has: probes, the guest agent, hotplug, live resizes.
    fn qemu(&self) -> Option<&crate::qemu::RunningVm> {
        None
    }
}
