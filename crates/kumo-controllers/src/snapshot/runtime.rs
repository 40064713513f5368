//! The snapshot and restore controllers' runtime: reads the VM, its claims and volumes through the API, asks
//! the volumes for their snapshots (or reverts), and writes KubeVirt's statuses.

use super::restore::{self, Plan};
use super::{content, content_name, image_snapshot_name, progress, status, volumes, Observed};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use kumo_api::kubevirt::{VirtualMachine, VirtualMachineInstance};
use kumo_api::provisioning as prov;
use kumo_api::snapshot::{VirtualMachineRestore, VirtualMachineSnapshot, PROTECTION_FINALIZER};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

struct Ctx {
    client: Client,
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct Error(#[from] kube::Error);

/// While a snapshot or restore is under way, it is looked at this often (its volumes' nodes do the work).
const POLL: Duration = Duration::from_secs(2);

pub async fn run(client: Client) {
    let ctx = Arc::new(Ctx { client: client.clone() });
    let on_error = |_: Arc<_>, err: &Error, _: Arc<Ctx>| {
        tracing::warn!("snapshot controller: {err}");
        Action::requeue(Duration::from_secs(2))
    };
    let snapshots =
        crate::reflect::slim_controller(Api::<VirtualMachineSnapshot>::all(client.clone()), watcher::Config::default())
            .run(reconcile_snapshot, on_error, ctx.clone())
            .for_each(|_| async {});
    let restores =
        crate::reflect::slim_controller(Api::<VirtualMachineRestore>::all(client), watcher::Config::default())
            .run(
                reconcile_restore,
                |_, err: &Error, _| {
                    tracing::warn!("restore controller: {err}");
                    Action::requeue(Duration::from_secs(2))
                },
                ctx,
            )
            .for_each(|_| async {});
    tokio::join!(snapshots, restores);
}

fn contents(client: &Client, ns: &str) -> Api<DynamicObject> {
    let gvk =
        GroupVersionKind::gvk(kumo_api::snapshot::GROUP, kumo_api::snapshot::VERSION, "VirtualMachineSnapshotContent");
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk_with_plural(&gvk, "virtualmachinesnapshotcontents"))
}

/// A create that found the object there already (made on an earlier pass) is as good as done.
fn created<T>(r: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match r {
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        r => r.map(|_| ()),
    }
}

/// Adds or removes `name` in a volume's wanted snapshots.
async fn want(client: &Client, pv: &PersistentVolume, name: &str, wanted: bool) -> Result<(), kube::Error> {
    let mut list = prov::names(pv, prov::SNAPSHOTS_WANTED);
    if list.iter().any(|n| n == name) == wanted {
        return Ok(());
    }
    if wanted {
        list.push(name.to_string());
    } else {
        list.retain(|n| n != name);
    }
    let patch = json!({"metadata": {"resourceVersion": pv.resource_version(),
        "annotations": {prov::SNAPSHOTS_WANTED: serde_json::to_string(&list).unwrap_or_default()}}});
    Api::<PersistentVolume>::all(client.clone())
        .patch(&pv.name_any(), &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    Ok(())
}

async fn reconcile_snapshot(snap: Arc<VirtualMachineSnapshot>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = snap.namespace().unwrap_or_default();
    let client = &ctx.client;
    let snaps: Api<VirtualMachineSnapshot> = Api::namespaced(client.clone(), &ns);
    let name = image_snapshot_name(&snap);
    let pvs = Api::<PersistentVolume>::all(client.clone()).list(&ListParams::default()).await?.items;
    let ours: Vec<&PersistentVolume> = pvs
        .iter()
        .filter(|p| {
            prov::names(p, prov::SNAPSHOTS_WANTED).contains(&name)
                || prov::names(p, prov::SNAPSHOTS_MADE).contains(&name)
        })
        .collect();
    if snap.metadata.deletion_timestamp.is_some() {
        // The images' snapshots go first; then the finalizer.
        for pv in &ours {
            want(client, pv, &name, false).await?;
        }
        if ours.iter().any(|p| prov::names(p, prov::SNAPSHOTS_MADE).contains(&name)) {
            return Ok(Action::requeue(POLL));
        }
        let kept: Vec<&String> = snap.finalizers().iter().filter(|f| *f != PROTECTION_FINALIZER).collect();
        let patch = json!({"metadata": {"finalizers": kept, "resourceVersion": snap.resource_version()}});
        snaps.patch(&snap.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
        return Ok(Action::await_change());
    }
    if !snap.finalizers().iter().any(|f| f == PROTECTION_FINALIZER) {
        let mut fins = snap.finalizers().to_vec();
        fins.push(PROTECTION_FINALIZER.into());
        let patch = json!({"metadata": {"finalizers": fins, "resourceVersion": snap.resource_version()}});
        snaps.patch(&snap.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
        return Ok(Action::await_change());
    }
    let done = snap.status.as_ref().and_then(|s| s.get("readyToUse")).and_then(Value::as_bool) == Some(true);
    if done {
        return Ok(Action::await_change());
    }
    let vm_name = &snap.spec.source.name;
    let Some(vm) = Api::<VirtualMachine>::namespaced(client.clone(), &ns).get_opt(vm_name).await? else {
        let st = json!({"phase": "InProgress", "readyToUse": false,
            "error": {"message": format!("VirtualMachine {vm_name} does not exist"), "time": kumo_api::meta::now_rfc3339()}});
        snaps.patch_status(&snap.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": st}))).await?;
        return Ok(Action::requeue(Duration::from_secs(5)));
    };
    let claims =
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns).list(&ListParams::default()).await?.items;
    let (included, excluded) = volumes(&vm, &claims, &pvs);
    let contents = contents(client, &ns);
    if contents.get_opt(&content_name(&snap)).await?.is_none() {
        let obj: DynamicObject =
            serde_json::from_value(content(&snap, &vm, &included)).map_err(kube::Error::SerdeError)?;
        created(contents.create(&PostParams::default(), &obj).await)?;
    }
    for i in &included {
        want(client, i.pv, &name, true).await?;
    }
    let (ready, error) = progress(&name, &included);
    let vmi = Api::<VirtualMachineInstance>::namespaced(client.clone(), &ns).get_opt(vm_name).await?;
    // What the snapshot was taken from is fixed at its start: indications once written stay.
    let said: Vec<&str> = snap
        .status
        .as_ref()
        .and_then(|s| s.get("indications"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let (online, guest_agent) = if said.is_empty() {
        let running = vmi.as_ref().is_some_and(|i| i.phase() == "Running");
        let agent = vmi
            .as_ref()
            .is_some_and(|i| i.conditions().iter().any(|c| c.type_ == "AgentConnected" && c.status == "True"));
        (running, running && agent)
    } else {
        (true, said.contains(&"GuestAgent"))
    };
    let included_names = included.iter().map(|i| i.volume.clone()).collect();
    let seen = Observed { ready, online, guest_agent, included: included_names, excluded, error };
    let now = kumo_api::meta::now_rfc3339();
    let st = status(&snap, &vm, &seen, &now);
    snaps.patch_status(&snap.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": st}))).await?;
    if ready {
        let cst = json!({"status": {"readyToUse": true, "creationTime": now,
            "volumeSnapshotStatus": seen.included.iter().map(|v| json!({"volumeSnapshotName": format!("{name}-{v}"),
                "readyToUse": true, "creationTime": now})).collect::<Vec<_>>()}});
        contents.patch_status(&content_name(&snap), &PatchParams::default(), &Patch::Merge(cst)).await?;
        tracing::info!(snapshot = %snap.name_any(), vm = %vm_name, volumes = seen.included.len(), "VM snapshot ready");
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(POLL))
}

async fn reconcile_restore(restore: Arc<VirtualMachineRestore>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = restore.namespace().unwrap_or_default();
    let client = &ctx.client;
    let restores: Api<VirtualMachineRestore> = Api::namespaced(client.clone(), &ns);
    if restore.status.as_ref().and_then(|s| s.get("complete")).and_then(Value::as_bool) == Some(true)
        || restore.metadata.deletion_timestamp.is_some()
    {
        return Ok(Action::await_change());
    }
    let now = kumo_api::meta::now_rfc3339();
    let set = |complete: bool, failure: Option<String>, restores_list: Value| {
        let cond = |t: &str, on: bool, reason: &str| {
            json!({"type": t, "status": if on {"True"} else {"False"},
            "reason": reason, "lastTransitionTime": now})
        };
        let mut conditions = vec![cond("Progressing", !complete, ""), cond("Ready", complete, "")];
        if let Some(m) = &failure {
            let mut f = cond("Failure", true, "RestoreFailed");
            f["message"] = json!(m);
            conditions.push(f);
        }
        json!({"status": {"complete": complete, "restoreTime": complete.then(|| now.clone()),
            "conditions": conditions, "restores": restores_list}})
    };
    let snap = Api::<VirtualMachineSnapshot>::namespaced(client.clone(), &ns)
        .get_opt(&restore.spec.virtual_machine_snapshot_name)
        .await?;
    let ready = snap.as_ref().and_then(|s| s.status.as_ref()?.get("readyToUse")?.as_bool()) == Some(true);
    let Some(snap) = snap.filter(|_| ready) else {
        let why = format!("VirtualMachineSnapshot {} is not ready to use", restore.spec.virtual_machine_snapshot_name);
        restores
            .patch_status(&restore.name_any(), &PatchParams::default(), &Patch::Merge(set(false, Some(why), json!([]))))
            .await?;
        return Ok(Action::requeue(Duration::from_secs(5)));
    };
    let Some(content) = contents(client, &ns).get_opt(&content_name(&snap)).await? else {
        return Ok(Action::requeue(POLL));
    };
    let content = serde_json::to_value(&content).map_err(kube::Error::SerdeError)?;
    let target = &restore.spec.target.name;
    let vm = Api::<VirtualMachine>::namespaced(client.clone(), &ns).get_opt(target).await?;
    let vmi = Api::<VirtualMachineInstance>::namespaced(client.clone(), &ns).get_opt(target).await?;
    let pvs = Api::<PersistentVolume>::all(client.clone()).list(&ListParams::default()).await?.items;
    let restored: Value = restore::backups(&content)
        .iter()
        .map(|(volume, claim, _, snap_name)| {
            json!({"volumeName": volume, "persistentVolumeClaim": claim,
            "volumeSnapshotName": format!("{snap_name}-{volume}")})
        })
        .collect();
    let uid = restore.uid().unwrap_or_default();
    let (complete, failure) = match restore::plan(&restore, &content, vm.as_ref(), vmi.as_ref(), &pvs) {
        Plan::Refuse(why) => (false, Some(why)),
        Plan::Revert(volumes) => {
            let mut all = true;
            let mut failure = None;
            for (pv_name, snap_name) in volumes {
                let Some(pv) = pvs.iter().find(|p| p.name_any() == pv_name) else {
                    failure = Some(format!("the volume {pv_name} of the snapshot is gone"));
                    all = false;
                    continue;
                };
                if prov::annotation(pv, prov::REVERTED) == Some(uid.as_str()) {
                    continue;
                }
                all = false;
                failure = failure.or(prov::annotation(pv, prov::SNAPSHOT_ERROR).map(str::to_string));
                let patch = json!({"metadata": {"annotations": {prov::REVERT: format!("{uid}/{snap_name}")}}});
                Api::<PersistentVolume>::all(client.clone())
                    .patch(&pv_name, &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
            }
            (all, failure)
        }
        Plan::NewVm { claims, vm } => {
            let api = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns);
            for c in claims {
                let c: PersistentVolumeClaim = serde_json::from_value(c).map_err(kube::Error::SerdeError)?;
                created(api.create(&PostParams::default(), &c).await)?;
            }
            let vm: VirtualMachine = serde_json::from_value(vm).map_err(kube::Error::SerdeError)?;
            created(Api::<VirtualMachine>::namespaced(client.clone(), &ns).create(&PostParams::default(), &vm).await)?;
            (true, None)
        }
    };
    restores
        .patch_status(&restore.name_any(), &PatchParams::default(), &Patch::Merge(set(complete, failure, restored)))
        .await?;
    Ok(if complete { Action::await_change() } else { Action::requeue(POLL) })
}
