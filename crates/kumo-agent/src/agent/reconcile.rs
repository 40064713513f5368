//! One VMI on this node: start it (prepare, DHCP, QEMU), keep its status true, pause/resume on request,
//! stop it on deletion and leave nothing behind.

use super::{status, Agent, LocalVm};
use crate::net::VmiNetwork;
use crate::qemu::{self, RunningVm};
use crate::vmi::prepare::{self, PrepareCtx, PrepareError};
use crate::vmi::translate::{self, HostSettings};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use kumo_api::kubevirt::{VirtualMachineInstance, VirtualMachineInstanceStatus};
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Held on every VMI the agent has started, so deletion waits for the guest to stop and the host to be clean.
pub const FINALIZER: &str = "kumo.dev/agent";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

pub fn error_policy(_obj: Arc<VirtualMachineInstance>, err: &Error, _agent: Arc<Agent>) -> Action {
    tracing::warn!("agent: {err}");
    Action::requeue(Duration::from_secs(3))
}

fn api(agent: &Agent, vmi: &VirtualMachineInstance) -> Api<VirtualMachineInstance> {
    Api::namespaced(agent.client.clone(), &vmi.namespace().unwrap_or_default())
}

fn dir(agent: &Agent, uid: &str) -> PathBuf {
    agent.cfg.state_dir.join("vmis").join(uid)
}

async fn event(agent: &Agent, vmi: &VirtualMachineInstance, warning: bool, reason: &str, note: String) {
    event_of(agent, vmi, warning, reason, reason, note).await
}

/// An event with its own action: events are folded into a series by (reason, action), so two kinds of
/// trouble with one reason (readiness and liveness probes are both `Unhealthy`) need different actions.
async fn event_of(
    agent: &Agent,
    vmi: &VirtualMachineInstance,
    warning: bool,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = Event {
        type_: if warning { EventType::Warning } else { EventType::Normal },
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = agent.recorder.publish(&ev, &vmi.object_ref(&())).await {
        tracing::warn!("recording event {reason}: {e}");
    }
}

async fn patch_status(
    agent: &Agent,
    vmi: &VirtualMachineInstance,
    st: VirtualMachineInstanceStatus,
) -> Result<(), Error> {
    api(agent, vmi)
        .patch_status(&vmi.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": st})))
        .await?;
    Ok(())
}

async fn set_finalizer(agent: &Agent, vmi: &VirtualMachineInstance, present: bool) -> Result<(), Error> {
    let mut fins = vmi.finalizers().to_vec();
    let has = fins.iter().any(|f| f == FINALIZER);
    if has == present {
        return Ok(());
    }
    if present {
        fins.push(FINALIZER.into());
    } else {
        fins.retain(|f| f != FINALIZER);
    }
    // The resourceVersion makes this a compare-and-swap: never drop someone else's finalizer change.
    let patch = json!({"metadata": {"finalizers": fins, "resourceVersion": vmi.resource_version()}});
    match api(agent, vmi).patch(&vmi.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub async fn reconcile(vmi: Arc<VirtualMachineInstance>, agent: Arc<Agent>) -> Result<Action, Error> {
    let uid = vmi.uid().unwrap_or_default();
    let mine = vmi.node_name() == Some(agent.node.as_str());
    let phase = vmi.phase();
    let local = agent.vms.lock().await.get(&uid).cloned();
    if !mine {
        return Ok(Action::await_change());
    }
    if vmi.meta().deletion_timestamp.is_some() {
        let grace = vmi.spec.termination_grace_period_seconds.unwrap_or(30);
        let grace = Duration::from_secs(grace);
        let outcome = match &local {
            Some(l) => {
                l.stopping.store(true, Ordering::SeqCst);
                Some(l.vm.shutdown(grace).await.map_err(Error::Other)?)
            }
            // Deleted while this agent was down: the guest it left running is stopped all the same.
            None => match qemu::attach(&dir(&agent, &uid).join("run")).await {
                Ok(vm) => Some(vm.shutdown(grace).await.map_err(Error::Other)?),
                Err(_) => None,
            },
        };
        if let Some(outcome) = outcome {
            event(&agent, &vmi, false, "Deleted", format!("Signaled deletion; the guest {outcome:?}")).await;
        }
        cleanup(&agent, &uid).await;
        set_finalizer(&agent, &vmi, false).await?;
        return Ok(Action::await_change());
    }
    match (phase, local) {
        ("Scheduled", None) => start(&agent, &vmi).await,
        // The guest runs but writing Running failed: write it again.
        ("Scheduled", Some(l)) => report_running(&agent, &vmi, &l).await,
        ("Running", None) => {
            // After an agent restart: reattach to the guest if it is still running.
            match reattach(&agent, &vmi, &uid).await {
                Ok(l) => {
                    // A pause (or a hotplug) asked for while the agent was away applies now.
                    if sync_pause(&agent, &vmi, &l).await? {
                        return Ok(Action::requeue(Duration::from_millis(300)));
                    }
                    let plugged = super::hotplug::sync(&agent, &vmi, &l).await?;
                    Ok(Action::requeue(Duration::from_secs(if plugged { 60 } else { 3 })))
                }
                Err(e) => {
                    // The Failed arm below then cleans up, on the object this write produces.
                    patch_status(&agent, &vmi, status::failed(&vmi, e.reason, &e.message, &status::now())).await?;
                    event(&agent, &vmi, true, "Failed", e.message).await;
                    Ok(Action::await_change())
                }
            }
        }
        ("Running", Some(l)) => {
            // Each of these writes the status from `vmi`: after one has, the next pass starts from what it wrote.
            if sync_pause(&agent, &vmi, &l).await? {
                return Ok(Action::requeue(Duration::from_millis(300)));
            }
            if kumo_api::conditions::is_true(vmi.conditions(), "Paused") {
                // A paused guest answers nothing: its agent and probes are looked at again once it runs.
                agent.probers.lock().expect("probers lock").remove(&uid);
                return Ok(Action::requeue(Duration::from_secs(PROBE_BEAT)));
            }
            if sync_guest_agent(&agent, &vmi, &l).await? {
                return Ok(Action::requeue(Duration::from_millis(300)));
            }
            let probed = match sync_probes(&agent, &vmi, &l).await? {
                Probed::Dead => return Ok(Action::await_change()),
                Probed::Yes => true,
                Probed::No => false,
            };
            let plugged = super::hotplug::sync(&agent, &vmi, &l).await?;
            // Probe results are reported on this beat: short while the guest has probes, and while its agent is
            // not (yet) connected, so a booting guest's agent shows soon; otherwise often enough to notice an
            // agent that goes away.
            let connected = kumo_api::conditions::is_true(vmi.conditions(), super::guest::AGENT_CONNECTED);
            let beat = match (probed, plugged && connected) {
                (true, _) => PROBE_BEAT,
                (false, true) => GUEST_AGENT_BEAT,
                (false, false) => 3,
            };
            Ok(Action::requeue(Duration::from_secs(beat)))
        }
        // A finished guest: clean the host once, then let deletion go ahead.
        ("Succeeded" | "Failed", _) if vmi.finalizers().iter().any(|f| f == FINALIZER) => {
            cleanup(&agent, &uid).await;
            set_finalizer(&agent, &vmi, false).await?;
            Ok(Action::await_change())
        }
        _ => Ok(Action::await_change()),
    }
}

async fn start(agent: &Arc<Agent>, vmi: &VirtualMachineInstance) -> Result<Action, Error> {
    set_finalizer(agent, vmi, true).await?;
    let uid = vmi.uid().unwrap_or_default();
    match launch(agent, vmi, &uid).await {
        Ok(local) => report_running(agent, vmi, &local).await,
        Err(e) => {
            // The Failed arm of `reconcile` cleans up what was prepared, on the object this write produces.
            tracing::warn!(vmi = %vmi.name_any(), "start failed: {}: {}", e.reason, e.message);
            patch_status(agent, vmi, status::failed(vmi, e.reason, &e.message, &status::now())).await?;
            event(agent, vmi, true, e.reason, e.message).await;
            Ok(Action::await_change())
        }
    }
}

async fn report_running(agent: &Agent, vmi: &VirtualMachineInstance, l: &LocalVm) -> Result<Action, Error> {
    let accel = agent.accel.as_str();
    let iface = l.iface.as_ref().map(|(n, ip, mac)| (n.as_str(), ip.as_str(), mac.as_str()));
    patch_status(agent, vmi, status::running(vmi, iface, accel, &status::now())).await?;
    let note = format!("VirtualMachineInstance started (QEMU pid {}, {accel})", l.vm.pid());
    event(agent, vmi, false, "Started", note).await;
    Ok(Action::requeue(Duration::from_secs(60)))
}

fn prepare_ctx(agent: &Agent) -> PrepareCtx<'_> {
    PrepareCtx {
        client: &agent.client,
        images: &agent.images,
        registry: &agent.cfg.registry,
        node_net: &agent.node_net,
        ipam: &agent.ipam,
        tap_owner: agent.cfg.run_as,
        volume_dirs: &agent.volume_dirs,
    }
}

async fn launch(agent: &Arc<Agent>, vmi: &VirtualMachineInstance, uid: &str) -> Result<Arc<LocalVm>, PrepareError> {
    let dir = dir(agent, uid);
    let ctx = prepare_ctx(agent);
    // The network is plumbed by `ip`/`nft` processes while disks are prepared: both are on the boot path.
    let (net_agent, net_vmi) = (agent.clone(), vmi.clone());
    let net = tokio::task::spawn_blocking(move || prepare::network(&prepare_ctx(&net_agent), &net_vmi));
    let (volumes, kernel) = tokio::join!(prepare::volumes(&ctx, vmi, &dir), prepare::kernel_boot(&ctx, vmi));
    let net = net.await.map_err(|e| PrepareError::new("NetworkError", e.to_string()))?;
    let (mut prepared, net) = (volumes?, net?);
    prepared.kernel_boot = kernel?;
    if let Some((name, n)) = &net {
        prepared.nics.insert(name.clone(), (n.tap.clone(), n.mac.clone()));
    }
    let host = HostSettings { accel: agent.accel, sandbox: agent.cfg.sandbox, run_as: agent.cfg.run_as };
    let mut cfg = translate::launch_config(vmi, &prepared, &dir.join("run"), &host)
        .map_err(|m| PrepareError::new("InvalidSpec", m))?;
    cfg.netns = net.as_ref().map(|(_, n)| n.netns.clone());
    let dhcp_stop = match &net {
        Some((_, n)) => Some(start_dhcp(n).map_err(|m| PrepareError::new("NetworkError", m))?),
        None => None,
    };
    let vm = qemu::launch(&cfg, &agent.qemu).await.map_err(|e| PrepareError::new("QemuFailed", format!("{e:#}")))?;
    Ok(register(agent, vmi, uid, vm, dhcp_stop, guest_iface(&net)).await)
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

/// Remembers a running guest and reports its exit when the guest (not the agent) ends it.
async fn register(
    agent: &Arc<Agent>,
    vmi: &VirtualMachineInstance,
    uid: &str,
    vm: RunningVm,
    dhcp_stop: Option<tokio::sync::oneshot::Sender<()>>,
    iface: Option<(String, String, String)>,
) -> Arc<LocalVm> {
    let local =
        Arc::new(LocalVm { vm, dhcp_stop: std::sync::Mutex::new(dhcp_stop), stopping: Default::default(), iface });
    agent.vms.lock().await.insert(uid.to_string(), local.clone());
    let (agent, vmi, uid, watched) = (agent.clone(), vmi.clone(), uid.to_string(), local.clone());
    tokio::spawn(async move {
        let local = watched;
        let exit = local.vm.wait_exit().await;
        if local.stopping.load(Ordering::SeqCst) {
            return;
        }
        let ok = exit.is_some_and(|s| s.success());
        let msg = match exit {
            Some(s) if s.success() => "the guest shut down".to_string(),
            Some(s) => format!("QEMU exited with {s}"),
            None => "QEMU exited".to_string(),
        };
        // The name may already belong to a newer VMI (a VM restarted it); only report on this one.
        let Ok(Some(current)) = api(&agent, &vmi).get_opt(&vmi.name_any()).await else { return };
        if current.uid().as_deref() != Some(uid.as_str()) {
            return;
        }
        if let Err(e) = patch_status(&agent, &current, status::finished(&current, ok, &msg, &status::now())).await {
            tracing::warn!("reporting guest exit: {e}");
        }
        event(&agent, &current, !ok, if ok { "Stopped" } else { "Failed" }, msg).await;
    });
    local
}

async fn reattach(agent: &Arc<Agent>, vmi: &VirtualMachineInstance, uid: &str) -> Result<Arc<LocalVm>, PrepareError> {
    let vm = qemu::attach(&dir(agent, uid).join("run"))
        .await
        .map_err(|e| PrepareError::new("QemuExited", format!("the guest's QEMU process is gone: {e:#}")))?;
    // Network setup converges on what exists, giving back the DHCP answer to serve again.
    let (a, v) = (agent.clone(), vmi.clone());
    let net = match tokio::task::spawn_blocking(move || prepare::network(&prepare_ctx(&a), &v)).await {
        Ok(r) => r,
        Err(e) => Err(PrepareError::new("NetworkError", e.to_string())),
    };
    let served = net.and_then(|net| {
        let tx = match &net {
            Some((_, n)) => Some(start_dhcp(n).map_err(|m| PrepareError::new("NetworkError", m))?),
            None => None,
        };
        Ok((net, tx))
    });
    let (net, dhcp_stop) = match served {
        Ok(ok) => ok,
        Err(e) => {
            // Not registered, so nothing else would stop this guest: it must not outlive its failed VMI (say,
            // with a pod address that now belongs to another node).
            if let Err(k) = vm.kill().await {
                tracing::warn!(vmi = %vmi.name_any(), "stopping the guest: {k:#}");
            }
            return Err(e);
        }
    };
    tracing::info!(vmi = %vmi.name_any(), pid = vm.pid(), "reattached to running guest");
    Ok(register(agent, vmi, uid, vm, dhcp_stop, guest_iface(&net)).await)
}

/// How often a running VMI is looked at while it has probes (their results are reported then).
const PROBE_BEAT: u64 = 2;
/// How often a settled running VMI's guest agent is asked whether it is still there.
const GUEST_AGENT_BEAT: u64 = 10;

enum Probed {
    No,
    Yes,
    /// The liveness probe failed: the VMI was failed (the guest is stopped by the Failed arm).
    Dead,
}

/// Starts the guest's prober if it has probes, and reports what it found: Ready per the readiness probe, and
/// a failed liveness probe fails the VMI.
async fn sync_probes(agent: &Agent, vmi: &VirtualMachineInstance, l: &LocalVm) -> Result<Probed, Error> {
    let uid = vmi.uid().unwrap_or_default();
    let health = {
        let mut probers = agent.probers.lock().expect("probers lock");
        if !probers.contains_key(&uid) {
            match super::probes::start(vmi, l) {
                Some(p) => {
                    probers.insert(uid.clone(), p);
                }
                None => return Ok(Probed::No),
            }
        }
        let health = probers[&uid].health.lock().expect("health lock").clone();
        health
    };
    if let Some(why) = health.dead_because {
        let message = format!("Liveness probe failed: {why}");
        l.stopping.store(true, Ordering::SeqCst);
        patch_status(agent, vmi, status::failed(vmi, "LivenessProbeFailed", &message, &status::now())).await?;
        event_of(agent, vmi, true, "Unhealthy", "LivenessProbe", message).await;
        return Ok(Probed::Dead);
    }
    if let Some(ready) = health.ready {
        let why = health.not_ready_because.unwrap_or_default();
        if let Some(st) = status::probed(vmi, ready, &why, &status::now()) {
            patch_status(agent, vmi, st).await?;
            if !ready && why != super::probes::WAITING {
                event_of(agent, vmi, true, "Unhealthy", "ReadinessProbe", format!("Readiness probe failed: {why}"))
                    .await;
            }
        }
    }
    Ok(Probed::Yes)
}

/// Reports whether the guest agent answers (`AgentConnected`) and what it says of the guest's OS; true when it
/// changed the status.
async fn sync_guest_agent(agent: &Agent, vmi: &VirtualMachineInstance, l: &LocalVm) -> Result<bool, Error> {
    let seen = super::guest::look(vmi, l).await;
    let Some(st) = super::guest::status_with(vmi, &seen, &status::now()) else { return Ok(false) };
    let was = vmi.conditions().iter().any(|c| c.type_ == super::guest::AGENT_CONNECTED && c.status == "True");
    patch_status(agent, vmi, st).await?;
    if was != seen.connected {
        let (reason, note) = if seen.connected {
            ("AgentConnected", "The guest agent is connected")
        } else {
            ("AgentDisconnected", "The guest agent stopped answering")
        };
        event(agent, vmi, !seen.connected, reason, note.into()).await;
    }
    Ok(true)
}

/// Pauses or resumes the guest to match the VMI's annotation; true when it changed the status.
async fn sync_pause(agent: &Agent, vmi: &VirtualMachineInstance, l: &LocalVm) -> Result<bool, Error> {
    let want = vmi.annotations().get(kumo_api::kubevirt::PAUSE_ANNOTATION).map(String::as_str) == Some("true");
    let is = kumo_api::conditions::is_true(vmi.conditions(), "Paused");
    if want == is {
        return Ok(false);
    }
    let r = if want { l.vm.qmp().stop().await } else { l.vm.qmp().cont().await };
    r.map_err(|e| Error::Other(anyhow::anyhow!("{}: {e}", if want { "pausing" } else { "resuming" })))?;
    patch_status(agent, vmi, status::paused(vmi, want, &status::now())).await?;
    event(
        agent,
        vmi,
        false,
        if want { "Paused" } else { "Unpaused" },
        format!("The guest was {}", if want { "paused" } else { "resumed" }),
    )
    .await;
    Ok(true)
}

/// Removes what VMIs that no longer exist left on this host: their guest (killed: a VMI gone while this agent
/// was away — deleted, or failed over after this host was fenced — must not keep running), network, pod IP and
/// files. The local directories are read before the API is asked, so a VMI created meanwhile is never taken
/// for an orphan.
pub(crate) async fn sweep_orphans(agent: &Agent) -> anyhow::Result<()> {
    let root = agent.cfg.state_dir.join("vmis");
    let local: Vec<String> = match std::fs::read_dir(&root) {
        Ok(d) => d.flatten().filter_map(|e| e.file_name().to_str().map(String::from)).collect(),
        Err(_) => return Ok(()),
    };
    if local.is_empty() {
        return Ok(());
    }
    let mine = format!("{}={}", kumo_api::kubevirt::NODE_NAME_LABEL, agent.node);
    let api = Api::<VirtualMachineInstance>::all(agent.client.clone());
    let listed = api.list(&kube::api::ListParams::default().labels(&mine)).await?;
    let live: std::collections::HashSet<String> = listed.items.iter().filter_map(|v| v.metadata.uid.clone()).collect();
    for uid in local.into_iter().filter(|u| !live.contains(u)) {
        for pid in crate::fence::guests_under(&root.join(&uid)) {
            tracing::warn!(uid = %uid, pid, "killing the guest of a VMI that no longer exists here");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL);
        }
        tracing::info!(uid = %uid, "removing what a VMI that no longer exists left on this host");
        cleanup(agent, &uid).await;
    }
    Ok(())
}

/// Removes everything the VMI had on this host: QEMU, DHCP, network namespace and links, pod IP, files.
async fn cleanup(agent: &Agent, uid: &str) {
    agent.probers.lock().expect("probers lock").remove(uid);
    if let Some(l) = agent.vms.lock().await.remove(uid) {
        l.stopping.store(true, Ordering::SeqCst);
        if l.vm.is_alive() {
            let _ = l.vm.kill().await;
        }
        if let Some(tx) = l.dhcp_stop.lock().expect("lock").take() {
            let _ = tx.send(());
        }
    }
    // `ip` processes: off the async workers, like the setup.
    let (node_net, id) = (agent.node_net.clone(), uid.to_string());
    match tokio::task::spawn_blocking(move || node_net.teardown_vmi(&id)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("tearing down the network of {uid}: {e:#}"),
        Err(e) => tracing::warn!("tearing down the network of {uid}: {e}"),
    }
    if let Err(e) = agent.ipam.release(uid) {
        tracing::warn!("releasing the pod IP of {uid}: {e:#}");
    }
    let d = dir(agent, uid);
    if d.exists() {
        if let Err(e) = std::fs::remove_dir_all(&d) {
            tracing::warn!("removing {}: {e}", d.display());
        }
    }
}
