//! A SIMULATED hypervisor, for measuring the control plane only: no process, disk or network is made. A
//! guest "boots" after a delay, gets an address from the node's pod CIDR (in memory) and runs until it is
//! stopped — or, with the annotation [`CRASH_AFTER_ANNOTATION`], crashes after that many seconds, so crash
//! loops can be simulated. Guests live in the agent's memory; a restarted simulator finds the VMIs it ran
//! running again, as a real host's guests would be.

use super::{Exit, Guest, Hypervisor, Launched};
use crate::qemu::ShutdownOutcome;
use crate::vmi::prepare::PrepareError;
use kube::ResourceExt;
use kumo_api::cidr::Ipv4Cidr;
use kumo_api::kubevirt::VirtualMachineInstance;
use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Seconds after which a simulated guest crashes (QEMU's "exited with signal" as a simulated Failed).
pub const CRASH_AFTER_ANNOTATION: &str = "kumo.dev/simulated-crash-after";
/// What `accel` reports for simulated guests, on the Node and in VMI status.
pub const ACCEL: &str = "simulated";

pub(crate) struct SimulatedHypervisor {
    boot_delay: Duration,
    pod_cidr: Ipv4Cidr,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    guests: HashMap<String, Arc<SimGuest>>,
    /// Host numbers of the pod CIDR in use, by uid.
    addresses: HashMap<String, u32>,
    used: BTreeSet<u32>,
}

impl SimulatedHypervisor {
    pub fn new(boot_delay: Duration, pod_cidr: Ipv4Cidr) -> Self {
        SimulatedHypervisor { boot_delay, pod_cidr, state: Mutex::default() }
    }

    /// The guest's address: the one it had (a reattach), else the lowest free host after the gateway (.1).
    fn address(&self, uid: &str, had: Option<Ipv4Addr>) -> Result<Ipv4Addr, PrepareError> {
        let mut st = self.state.lock().expect("simulated state");
        let base = u32::from(self.pod_cidr.network());
        if let Some(n) = st.addresses.get(uid) {
            return Ok(Ipv4Addr::from(base + n));
        }
        // A /0 holds 2^32 addresses: counted in u64, capped to what a u32 host number reaches.
        let size = (1u64 << (32 - u32::from(self.pod_cidr.prefix_len()))).min(u64::from(u32::MAX)) as u32;
        let wanted = had.map(|ip| u32::from(ip).wrapping_sub(base)).filter(|n| *n >= 2 && *n < size - 1);
        let n = match wanted.filter(|n| !st.used.contains(n)) {
            Some(n) => n,
            None => (2..size - 1)
                .find(|n| !st.used.contains(n))
                .ok_or_else(|| PrepareError::new("NetworkError", format!("no free address in {}", self.pod_cidr)))?,
        };
        st.used.insert(n);
        st.addresses.insert(uid.to_string(), n);
        Ok(Ipv4Addr::from(base + n))
    }

    fn start(&self, vmi: &VirtualMachineInstance, had: Option<Ipv4Addr>) -> Result<Launched, PrepareError> {
        let uid = vmi.uid().unwrap_or_default();
        let ip = self.address(&uid, had)?;
        let crash = vmi
            .annotations()
            .get(CRASH_AFTER_ANNOTATION)
            .map(|s| s.parse::<f64>().map_err(|_| format!("{CRASH_AFTER_ANNOTATION}: {s:?} is no number of seconds")))
            .transpose()
            .map_err(|m| PrepareError::new("InvalidSpec", m))?;
        let guest = SimGuest::start(crash.map(Duration::from_secs_f64));
        self.state.lock().expect("simulated state").guests.insert(uid.clone(), guest.clone());
        Ok(launched(vmi, guest, ip))
    }
}

/// What the agent gets of a simulated guest: its interface has the first network's name, the address, and a
/// MAC made from the uid.
fn launched(vmi: &VirtualMachineInstance, guest: Arc<SimGuest>, ip: Ipv4Addr) -> Launched {
    let hex: Vec<char> = vmi.uid().unwrap_or_default().chars().filter(char::is_ascii_hexdigit).take(8).collect();
    let mac = format!("02:5e:{}", hex.chunks(2).map(|c| c.iter().collect::<String>()).collect::<Vec<_>>().join(":"));
    let iface = vmi.spec.networks.iter().flatten().next().map(|n| (n.name.clone(), ip.to_string(), mac));
    Launched { guest: Box::new(Handle(guest)), iface, stop_services: None }
}

fn first_interface(vmi: &VirtualMachineInstance) -> Option<&kumo_api::kubevirt::InterfaceStatus> {
    vmi.status.as_ref()?.interfaces.as_ref()?.first()
}

#[async_trait::async_trait]
impl Hypervisor for SimulatedHypervisor {
    fn accel(&self) -> &str {
        ACCEL
    }

    async fn launch(&self, vmi: &VirtualMachineInstance) -> Result<Launched, PrepareError> {
        tokio::time::sleep(self.boot_delay).await;
        self.start(vmi, None)
    }

    async fn reattach(&self, vmi: &VirtualMachineInstance) -> Result<Launched, PrepareError> {
        let uid = vmi.uid().unwrap_or_default();
        let known = self.state.lock().expect("simulated state").guests.get(&uid).cloned();
        if let Some(g) = known.filter(|g| g.alive()) {
            let ip = self.address(&uid, None)?;
            return Ok(launched(vmi, g, ip));
        }
        // A new simulator process: the guest "survived" on its host, with the address its status shows.
        let had = first_interface(vmi).and_then(|i| i.ip_address.as_deref()).and_then(|s| s.parse().ok());
        self.start(vmi, had)
    }

    async fn find(&self, uid: &str) -> Option<Box<dyn Guest>> {
        let g = self.state.lock().expect("simulated state").guests.get(uid).cloned()?;
        Some(Box::new(Handle(g)))
    }

    async fn cleanup(&self, uid: &str) {
        let mut st = self.state.lock().expect("simulated state");
        if let Some(g) = st.guests.remove(uid) {
            g.end(Exit { ok: false, message: "removed".into() });
        }
        if let Some(n) = st.addresses.remove(uid) {
            st.used.remove(&n);
        }
    }

    fn local(&self) -> Vec<String> {
        self.state.lock().expect("simulated state").guests.keys().cloned().collect()
    }

    fn kill_orphan(&self, uid: &str) {
        if let Some(g) = self.state.lock().expect("simulated state").guests.get(uid) {
            g.end(Exit { ok: false, message: "killed".into() });
        }
    }
}

/// A simulated guest: running until it is ended; paused or not.
pub(crate) struct SimGuest {
    exit: watch::Sender<Option<Exit>>,
    paused: Mutex<bool>,
}

impl SimGuest {
    fn start(crash_after: Option<Duration>) -> Arc<SimGuest> {
        let g = Arc::new(SimGuest { exit: watch::channel(None).0, paused: Mutex::new(false) });
        if let Some(after) = crash_after {
            let weak = Arc::downgrade(&g);
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                if let Some(g) = weak.upgrade() {
                    g.end(Exit { ok: false, message: "the simulated guest crashed".into() });
                }
            });
        }
        g
    }

    fn alive(&self) -> bool {
        self.exit.borrow().is_none()
    }

    /// Ends the guest unless it already ended.
    fn end(&self, how: Exit) {
        self.exit.send_if_modified(|e| {
            if e.is_some() {
                return false;
            }
            *e = Some(how);
            true
        });
    }
}

/// What the agent holds of a simulated guest.
struct Handle(Arc<SimGuest>);

#[async_trait::async_trait]
impl Guest for Handle {
    fn describe(&self) -> String {
        "a simulated guest".into()
    }

    fn is_alive(&self) -> bool {
        self.0.alive()
    }

    async fn wait_exit(&self) -> Exit {
        let mut rx = self.0.exit.subscribe();
        let exit = match rx.wait_for(Option::is_some).await {
            Ok(e) => e.clone(),
            Err(_) => None,
        };
        exit.unwrap_or_else(|| Exit { ok: false, message: "the simulated guest vanished".into() })
    }

    async fn shutdown(&self, _grace: Duration) -> anyhow::Result<ShutdownOutcome> {
        if !self.0.alive() {
            return Ok(ShutdownOutcome::AlreadyExited);
        }
        self.0.end(Exit { ok: true, message: "the guest shut down".into() });
        Ok(ShutdownOutcome::PoweredOff)
    }

    async fn kill(&self) -> anyhow::Result<()> {
        self.0.end(Exit { ok: false, message: "killed".into() });
        Ok(())
    }

    async fn pause(&self) -> anyhow::Result<()> {
        *self.0.paused.lock().expect("paused") = true;
        Ok(())
    }

    async fn resume(&self) -> anyhow::Result<()> {
        *self.0.paused.lock().expect("paused") = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vmi(uid: &str, annotations: serde_json::Value) -> VirtualMachineInstance {
        serde_json::from_value(json!({"metadata": {"name": "v", "uid": uid, "annotations": annotations},
            "spec": {"domain": {"devices": {}}, "networks": [{"name": "default", "pod": {}}]}}))
        .unwrap()
    }

    #[tokio::test]
    async fn guests_get_addresses_run_and_crash_when_told() {
        let hv = SimulatedHypervisor::new(Duration::ZERO, "10.244.3.0/24".parse().unwrap());
        let a = hv.launch(&vmi("aaaa-1", json!({}))).await.unwrap();
        let b = hv.launch(&vmi("bbbb-2", json!({CRASH_AFTER_ANNOTATION: "0.05"}))).await.unwrap();
        assert_eq!(a.iface.as_ref().unwrap().1, "10.244.3.2");
        assert_eq!(b.iface.as_ref().unwrap().1, "10.244.3.3");
        let exit = tokio::time::timeout(Duration::from_secs(5), b.guest.wait_exit()).await.unwrap();
        assert!(!exit.ok, "{exit:?}");
        assert!(a.guest.is_alive());
        let mut locals = hv.local();
        locals.sort();
        assert_eq!(locals, ["aaaa-1", "bbbb-2"]);
        assert_eq!(a.guest.shutdown(Duration::ZERO).await.unwrap(), ShutdownOutcome::PoweredOff);
        assert!(a.guest.wait_exit().await.ok);
        hv.cleanup("aaaa-1").await;
        // The freed address is handed out again.
        let c = hv.launch(&vmi("cccc-3", json!({}))).await.unwrap();
        assert_eq!(c.iface.unwrap().1, "10.244.3.2");
        let bad = hv.launch(&vmi("dddd-4", json!({CRASH_AFTER_ANNOTATION: "soon"}))).await;
        assert!(bad.is_err_and(|e| e.message.contains(CRASH_AFTER_ANNOTATION)));
    }
}
