//! Snapshots of a volume's image, as qcow2 internal snapshots: made and deleted to match what the volume's
//! annotations want (through the running guest's QEMU when a guest on this node has the image open, its
//! filesystems frozen by its guest agent meanwhile when it has one, else with `qemu-img`), and a revert to one
//! of them (only while no guest uses the volume).

use crate::agent::Agent;
use crate::qemu::GuestAgent;
use k8s_openapi::api::core::v1::PersistentVolume;
use kumo_api::provisioning as prov;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

/// How long a freeze or thaw may take (the guest flushes its caches first).
const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the volume's snapshots or a revert need work.
pub fn pending(pv: &PersistentVolume) -> bool {
    let (wanted, made) = (prov::names(pv, prov::SNAPSHOTS_WANTED), prov::names(pv, prov::SNAPSHOTS_MADE));
    wanted.iter().any(|w| !made.contains(w)) || made.iter().any(|m| !wanted.contains(m)) || revert_of(pv).is_some()
}

/// The revert asked for and not done yet: (restore uid, snapshot).
fn revert_of(pv: &PersistentVolume) -> Option<(String, String)> {
    let (uid, snap) = prov::annotation(pv, prov::REVERT)?.split_once('/')?;
    (prov::annotation(pv, prov::REVERTED) != Some(uid)).then(|| (uid.to_string(), snap.to_string()))
}

/// Brings the image's snapshots in line; returns the annotations to record.
pub(crate) async fn sync(agent: &Agent, pv: &PersistentVolume, image: &Path) -> Value {
    let path = image.to_string_lossy().to_string();
    let wanted = prov::names(pv, prov::SNAPSHOTS_WANTED);
    let mut made = prov::names(pv, prov::SNAPSHOTS_MADE);
    let mut error = None;
    let running = super::grow::running_node(agent, &path).await;
    let to_make: Vec<String> = wanted.iter().filter(|w| !made.contains(w)).cloned().collect();
    let frozen = match &running {
        Some((vm, _)) if !to_make.is_empty() => match crate::agent::guest_agent_of(vm) {
            Some(ga) => freeze(&ga).await,
            None => None,
        },
        _ => None,
    };
    for name in to_make {
        let done = match &running {
            Some((vm, node)) => {
                qmp_do(vm, "blockdev-snapshot-internal-sync", json!({"device": node, "name": name})).await
            }
            None => qemu_img(&["snapshot", "-c", &name, &path]).await,
        };
        match done {
            Ok(()) => made.push(name),
            Err(e) => error = Some(format!("snapshot {name}: {e}")),
        }
    }
    if let Some(agent) = frozen {
        thaw(&agent).await;
    }
    for name in made.clone().iter().filter(|m| !wanted.contains(m)) {
        let done = match &running {
            Some((vm, node)) => {
                qmp_do(vm, "blockdev-snapshot-delete-internal-sync", json!({"device": node, "name": name})).await
            }
            None => qemu_img(&["snapshot", "-d", name, &path]).await,
        };
        match done {
            Ok(()) => made.retain(|m| m != name),
            Err(e) => error = Some(format!("deleting snapshot {name}: {e}")),
        }
    }
    let mut out = json!({prov::SNAPSHOTS_MADE: serde_json::to_string(&made).unwrap_or_default(),
        prov::SNAPSHOT_ERROR: error});
    if let Some((uid, snap)) = revert_of(pv) {
        let reverted = match &running {
            Some(_) => Err("the volume is in use by a running guest: stop it to restore".to_string()),
            None => qemu_img(&["snapshot", "-a", &snap, &path]).await,
        };
        match reverted {
            Ok(()) => out[prov::REVERTED] = json!(uid),
            Err(e) => out[prov::SNAPSHOT_ERROR] = json!(format!("restoring snapshot {snap}: {e}")),
        }
    }
    out
}

/// Runs a QMP command on a guest [`super::grow::running_node`] found.
async fn qmp_do(vm: &crate::agent::LocalVm, command: &str, args: Value) -> Result<(), String> {
    vm.qmp()?.execute(command, Some(args)).await.map(|_| ()).map_err(|e| e.to_string())
}

/// Freezes the guest's filesystems through its agent, so the snapshot holds them consistent; None when the guest
/// has no agent answering (the snapshot is then crash-consistent, as KubeVirt's `NoGuestAgent` says).
async fn freeze(agent: &GuestAgent) -> Option<GuestAgent> {
    match agent.execute("guest-fsfreeze-freeze", None, FREEZE_TIMEOUT).await {
        Ok(n) => {
            tracing::info!(filesystems = %n, "froze the guest's filesystems for a snapshot");
            Some(agent.clone())
        }
        Err(e) => {
            tracing::info!("snapshot without freezing the guest: {e}");
            // A freeze that timed out may still happen in the guest: thawing is harmless when nothing froze.
            if matches!(e, crate::qemu::QgaError::Timeout(..)) {
                thaw(agent).await;
            }
            None
        }
    }
}

/// Thaws the guest's filesystems, trying a few times: a guest left frozen would hang every writer in it.
async fn thaw(agent: &GuestAgent) {
    for _ in 0..3 {
        match agent.execute("guest-fsfreeze-thaw", None, FREEZE_TIMEOUT).await {
            Ok(_) => return,
            Err(e) => tracing::warn!("thawing the guest's filesystems: {e}"),
        }
    }
}

async fn qemu_img(args: &[&str]) -> Result<(), String> {
    let out = tokio::process::Command::new("qemu-img")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("running qemu-img (install qemu-utils): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}
