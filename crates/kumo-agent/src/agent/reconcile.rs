//! One VMI on this node: start it (prepare, DHCP, QEMU), keep its status true, pause/resume on request,
//! stop it on deletion and leave nothing behind.

use super::{status, Agent, LocalVm};
use crate::hypervisor::{Exit, Launched};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use kumo_api::kubevirt::{VirtualMachineInstance, VirtualMachineInstanceStatus};
use serde_json::json;
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
    if let Some(seen) = &agent.seen {
        seen.record(&uid, mine);
    }
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
            None => match agent.hv.find(&uid).await {
                Some(vm) => Some(vm.shutdown(grace).await.map_err(Error::Other)?),
                None => None,
            },
        };
        // A guest that had already ended (crashed, powered off) was reported then: nothing to say now.
        if let Some(outcome) = outcome.filter(|o| *o != crate::qemu::ShutdownOutcome::AlreadyExited) {
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
            if l.vm.qemu().is_none() {
                // A simulated guest has no guest agent or disks to plug, and its readiness probe passes at once.
                let probed = vmi.spec.readiness_probe.is_some();
                if let Some(st) = probed.then(|| status::probed(&vmi, true, "", &status::now())).flatten() {
                    patch_status(&agent, &vmi, st).await?;
                }
                return Ok(Action::await_change());
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
    match agent.hv.launch(vmi).await {
        Ok(launched) => {
            let local = register(agent, vmi, &uid, launched).await;
            report_running(agent, vmi, &local).await
        }
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
    let accel = agent.hv.accel();
    let iface = l.iface.as_ref().map(|(n, ip, mac)| (n.as_str(), ip.as_str(), mac.as_str()));
    patch_status(agent, vmi, status::running(vmi, iface, accel, &status::now())).await?;
    let note = format!("VirtualMachineInstance started ({}, {accel})", l.vm.describe());
    event(agent, vmi, false, "Started", note).await;
    Ok(Action::requeue(Duration::from_secs(60)))
}

/// Remembers a running guest and reports its exit when the guest (not the agent) ends it.
async fn register(agent: &Arc<Agent>, vmi: &VirtualMachineInstance, uid: &str, launched: Launched) -> Arc<LocalVm> {
    let Launched { guest, iface, stop_services } = launched;
    let local = Arc::new(LocalVm {
        vm: guest,
        stop_services: std::sync::Mutex::new(stop_services),
        stopping: Default::default(),
        iface,
    });
    agent.vms.lock().await.insert(uid.to_string(), local.clone());
    // The task waits as long as the guest runs, one per guest: it keeps only what names the VMI (not a copy of
    // it), and the report after the exit is boxed, so the waiting task is small (a copy of the VMI and room for
    // the requests' futures were most of a simulated node's memory per VMI).
    let api = api(agent, vmi);
    let (agent, name, uid, watched) = (agent.clone(), vmi.name_any(), uid.to_string(), local.clone());
    tokio::spawn(async move {
        let local = watched;
        let exit = local.vm.wait_exit().await;
        if local.stopping.load(Ordering::SeqCst) {
            return;
        }
        Box::pin(report_exit(&agent, &api, &name, &uid, exit)).await;
    });
    local
}

/// Reports a guest's own exit on its VMI `name` (if that is still the one with `uid`).
async fn report_exit(agent: &Agent, api: &Api<VirtualMachineInstance>, name: &str, uid: &str, exit: Exit) {
    // The name may already belong to a newer VMI (a VM restarted it); only report on this one.
    let Ok(Some(current)) = api.get_opt(name).await else { return };
    if current.uid().as_deref() != Some(uid) {
        return;
    }
    let st = status::finished(&current, exit.ok, &exit.message, &status::now());
    if let Err(e) = patch_status(agent, &current, st).await {
        tracing::warn!("reporting guest exit: {e}");
    }
    event(agent, &current, !exit.ok, if exit.ok { "Stopped" } else { "Failed" }, exit.message).await;
}

async fn reattach(
    agent: &Arc<Agent>,
    vmi: &VirtualMachineInstance,
    uid: &str,
) -> Result<Arc<LocalVm>, crate::vmi::prepare::PrepareError> {
    let launched = agent.hv.reattach(vmi).await?;
    Ok(register(agent, vmi, uid, launched).await)
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
    let r = if want { l.vm.pause().await } else { l.vm.resume().await };
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
/// files. The local directories are read before the cache of this node's VMIs, so a VMI created meanwhile
/// (in the cache before any of its files exist) is never taken for an orphan.
pub(crate) async fn sweep_orphans(agent: &Agent, cached: &kube::runtime::reflector::Store<VirtualMachineInstance>) {
    let local = agent.hv.local();
    if local.is_empty() {
        return;
    }
    let live: std::collections::HashSet<String> =
        cached.state().iter().filter_map(|v| v.metadata.uid.clone()).collect();
    for uid in local.into_iter().filter(|u| !live.contains(u)) {
        agent.hv.kill_orphan(&uid);
        tracing::info!(uid = %uid, "removing what a VMI that no longer exists left on this host");
        cleanup(agent, &uid).await;
    }
}

/// Removes everything the VMI had on this host: its guest, what served it, and what the hypervisor prepared.
async fn cleanup(agent: &Agent, uid: &str) {
    agent.probers.lock().expect("probers lock").remove(uid);
    if let Some(l) = agent.vms.lock().await.remove(uid) {
        l.stopping.store(true, Ordering::SeqCst);
        if l.vm.is_alive() {
            let _ = l.vm.kill().await;
        }
        if let Some(tx) = l.stop_services.lock().expect("lock").take() {
            let _ = tx.send(());
        }
    }
    agent.hv.cleanup(uid).await;
}
