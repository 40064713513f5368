//! The volumes this node keeps (labelled with it by the provisioner; a node may watch only those): their
//! images are made when the volume is new, and removed before the volume object goes.
//!
//! Making an image is atomic: it is written under a temporary name and renamed, so an agent killed midway
//! leaves either no image (made again on restart) or a whole one; only then is the volume marked Ready.

use super::VolumeDirs;
use crate::image::create_empty_disk;
use futures::StreamExt;
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use kumo_api::provisioning::{self as prov, CLEANUP_FINALIZER, VOLUME_NODE_LABEL};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub struct Keeper {
    pub client: Client,
    pub dirs: VolumeDirs,
    pub recorder: Recorder,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Keeps this node's volumes until the process ends.
pub async fn run(keeper: Arc<Keeper>, node: &str) {
    let mine = format!("{VOLUME_NODE_LABEL}={node}");
    let api = Api::<PersistentVolume>::all(keeper.client.clone());
    Controller::new(api, watcher::Config::default().labels(&mine))
        .run(
            reconcile,
            |_, err, _| {
                tracing::warn!("volume keeper: {err}");
                Action::requeue(Duration::from_secs(3))
            },
            keeper,
        )
        .for_each(|_| async {})
        .await;
}

/// What the keeper does about one volume.
#[derive(Debug, PartialEq)]
enum Step {
    Nothing,
    Make,
    Remove,
}

fn step(pv: &PersistentVolume) -> Step {
    if prov::csi_of(pv).is_none() {
        return Step::Nothing;
    }
    if pv.metadata.deletion_timestamp.is_some() {
        return if pv.finalizers().iter().any(|f| f == CLEANUP_FINALIZER) { Step::Remove } else { Step::Nothing };
    }
    if prov::state(pv) == Some(prov::PENDING) {
        Step::Make
    } else {
        Step::Nothing
    }
}

async fn reconcile(pv: Arc<PersistentVolume>, keeper: Arc<Keeper>) -> Result<Action, Error> {
    let api = Api::<PersistentVolume>::all(keeper.client.clone());
    let name = pv.name_any();
    match step(&pv) {
        Step::Nothing => {}
        Step::Make => {
            let (state, message) = match make(&keeper.dirs, &pv).await {
                Ok(()) => (prov::READY, None),
                Err(why) => {
                    event(&keeper, &pv, "VolumeFailed", why.clone()).await;
                    (prov::FAILED, Some(why))
                }
            };
            tracing::info!(volume = %name, state, "volume image");
            let patch = json!({"metadata": {"resourceVersion": pv.resource_version(), "annotations": {
                prov::VOLUME_STATE: state, prov::VOLUME_MESSAGE: message}}});
            conditional(api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await)?;
        }
        Step::Remove => {
            if let Err(why) = remove(&keeper.dirs, &pv) {
                event(&keeper, &pv, "VolumeFailedDelete", why).await;
                return Ok(Action::requeue(Duration::from_secs(10)));
            }
            tracing::info!(volume = %name, "volume files removed");
            let kept: Vec<&String> = pv.finalizers().iter().filter(|f| *f != CLEANUP_FINALIZER).collect();
            let patch = json!({"metadata": {"resourceVersion": pv.resource_version(), "finalizers": kept}});
            conditional(api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await)?;
        }
    }
    Ok(Action::await_change())
}

/// A conflict or a vanished volume: the watch brings the newer state.
fn conditional<T>(r: Result<T, kube::Error>) -> Result<(), Error> {
    match r {
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
        Ok(_) => Ok(()),
    }
}

async fn event(keeper: &Keeper, pv: &PersistentVolume, reason: &str, note: String) {
    let ev = Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(note),
        action: reason.into(),
        secondary: None,
    };
    if let Err(e) = keeper.recorder.publish(&ev, &pv.object_ref(&())).await {
        tracing::warn!("recording event {reason}: {e}");
    }
}

fn capacity(pv: &PersistentVolume) -> Result<u64, String> {
    let q = pv.spec.as_ref().and_then(|s| s.capacity.as_ref()).and_then(|c| c.get("storage"));
    let q = q.ok_or("the volume has no capacity")?;
    kumo_api::quantity::parse(&q.0).map_err(|e| format!("capacity {}: {e}", q.0))
}

/// Makes the volume's empty image, sized to its capacity (an image already there is a finished earlier try).
async fn make(dirs: &VolumeDirs, pv: &PersistentVolume) -> Result<(), String> {
    let dir = dirs.dir_of(pv)?;
    let image = dir.join(prov::image_file(pv));
    if image.exists() {
        return Ok(());
    }
    let bytes = capacity(pv)?;
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let total = filesystem_bytes(&dir)?;
    if bytes > total {
        return Err(format!(
            "the volume needs {bytes} bytes but the filesystem of {} holds {total} bytes",
            dir.display()
        ));
    }
    let part = dir.join(format!("{}.part", prov::image_file(pv)));
    let _ = std::fs::remove_file(&part);
    if prov::is_block(pv) {
        let f = std::fs::File::create(&part).map_err(|e| format!("creating {}: {e}", part.display()))?;
        f.set_len(bytes).map_err(|e| format!("sizing {}: {e}", part.display()))?;
        f.sync_all().map_err(|e| format!("syncing {}: {e}", part.display()))?;
    } else {
        create_empty_disk(&part, bytes).await.map_err(|e| format!("{e:#}"))?;
    }
    std::fs::rename(&part, &image).map_err(|e| format!("renaming {}: {e}", part.display()))?;
    sync_dir(&dir);
    Ok(())
}

/// Makes a rename durable (the directory entry itself).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn filesystem_bytes(dir: &Path) -> Result<u64, String> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| format!("statvfs {}: {e}", dir.display()))?;
    Ok(st.blocks() as u64 * st.fragment_size() as u64)
}

fn remove(dirs: &VolumeDirs, pv: &PersistentVolume) -> Result<(), String> {
    let dir = dirs.dir_of(pv)?;
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("removing {}: {e}", dir.display())),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn volume(mode: &str, state: Option<&str>) -> PersistentVolume {
        let mut annotations = json!({});
        if let Some(s) = state {
            annotations[prov::VOLUME_STATE] = json!(s);
        }
        serde_json::from_value(json!({
            "metadata": {"name": "pvc-1", "annotations": annotations, "finalizers": [CLEANUP_FINALIZER]},
            "spec": {"capacity": {"storage": "64Mi"}, "volumeMode": mode,
                     "csi": {"driver": prov::LOCAL, "volumeHandle": "pvc-1"}},
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn images_are_made_once_sized_to_the_volume_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = VolumeDirs { local: tmp.path().join("local"), shared: None };
        for mode in ["Filesystem", "Block"] {
            let pv = volume(mode, None);
            assert_eq!(step(&pv), Step::Make);
            make(&dirs, &pv).await.unwrap();
            let image = dirs.image_of(&pv).unwrap();
            let info = crate::image::image_info(&image).await.unwrap();
            assert_eq!(info.virtual_size, 64 << 20);
            assert_eq!(info.format, if mode == "Block" { "raw" } else { "qcow2" });
            // Made again (an agent restarted after the rename): the image stays as it is.
            std::fs::write(dirs.dir_of(&pv).unwrap().join("marker"), b"x").unwrap();
            make(&dirs, &pv).await.unwrap();
            assert!(dirs.dir_of(&pv).unwrap().join("marker").exists());
            remove(&dirs, &pv).unwrap();
            assert!(!dirs.dir_of(&pv).unwrap().exists());
            remove(&dirs, &pv).unwrap();
        }
        assert_eq!(step(&volume("Filesystem", Some(prov::READY))), Step::Nothing);
        let mut big = volume("Filesystem", None);
        big.spec
            .as_mut()
            .unwrap()
            .capacity
            .as_mut()
            .unwrap()
            .insert("storage".into(), k8s_openapi::apimachinery::pkg::api::resource::Quantity("1Ei".into()));
        let err = make(&dirs, &big).await.unwrap_err();
        assert!(err.contains("the filesystem of"), "{err}");
        let shared = VolumeDirs { local: tmp.path().into(), shared: None };
        let mut s = volume("Filesystem", None);
        s.spec.as_mut().unwrap().csi.as_mut().unwrap().driver = prov::SHARED.into();
        assert!(shared.dir_of(&s).unwrap_err().contains("--shared-volume-dir"));
        s.spec.as_mut().unwrap().csi.as_mut().unwrap().volume_handle = "../x".into();
        let dirs = VolumeDirs { local: tmp.path().into(), shared: Some(tmp.path().into()) };
        assert!(dirs.dir_of(&s).unwrap_err().contains("not a plain name"));
    }
}
