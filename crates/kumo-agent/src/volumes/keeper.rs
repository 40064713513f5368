//! The volumes this node keeps (labelled with it by the provisioner; a node may watch only those): their
//! images are made when the volume is new, and removed before the volume object goes.
//!
//! Making an image is atomic: it is written under a temporary name and renamed, so an agent killed midway
//! leaves either no image (made again on restart) or a whole one; only then is the volume marked Ready. A
//! volume whose capacity grew (its claim was expanded) has its image grown ([`super::grow`]).

use super::{grow, import, snapshots, VolumeDirs};
use crate::agent::Agent as Keeper;
use crate::image::{create_empty_disk, PullPolicy};
use futures::StreamExt;
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use kumo_api::cdi::POPULATE_SOURCE;
use kumo_api::provisioning::{self as prov, CLEANUP_FINALIZER, VOLUME_NODE_LABEL};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Other(String),
}

/// Keeps this node's volumes until the process ends.
pub(crate) async fn run(keeper: Arc<Keeper>) {
    let mine = format!("{VOLUME_NODE_LABEL}={}", keeper.node);
    let api = Api::<PersistentVolume>::all(keeper.client.clone());
    // Each volume once the cache holds it, and all again after a relist (`Controller::new` drops objects a
    // relist brings until the list is whole).
    kumo_reflect::slim_controller(api, crate::agent::watch_config(&keeper.node).labels(&mine))
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
    /// The volume's capacity grew past its image's size (bytes).
    Grow(u64),
    /// Snapshots to make or delete, or a revert.
    Snapshots,
}

fn step(pv: &PersistentVolume) -> Step {
    if prov::csi_of(pv).is_none() {
        return Step::Nothing;
    }
    if pv.metadata.deletion_timestamp.is_some() {
        return if pv.finalizers().iter().any(|f| f == CLEANUP_FINALIZER) { Step::Remove } else { Step::Nothing };
    }
    // Populating: an agent stopped midway; the import starts again.
    match prov::state(pv) {
        Some(prov::PENDING | prov::POPULATING) => Step::Make,
        Some(prov::READY) => {
            let made: Option<u64> = prov::annotation(pv, prov::IMAGE_BYTES).and_then(|b| b.parse().ok());
            match (capacity(pv), made) {
                (Ok(want), Some(have)) if want > have => Step::Grow(want),
                _ if snapshots::pending(pv) => Step::Snapshots,
                _ => Step::Nothing,
            }
        }
        _ => Step::Nothing,
    }
}

async fn reconcile(cached: Arc<PersistentVolume>, keeper: Arc<Keeper>) -> Result<Action, Error> {
    let api = Api::<PersistentVolume>::all(keeper.client.clone());
    let name = cached.name_any();
    if step(&cached) == Step::Nothing {
        return Ok(Action::await_change());
    }
    // The work below (an import, a snapshot, a revert) must not be redone from an older copy of the volume
    // than this agent's own last write: read it afresh.
    let Some(pv) = api.get_opt(&name).await? else { return Ok(Action::await_change()) };
    match step(&pv) {
        Step::Nothing => {}
        Step::Make if populate_source(&pv).is_some() => return populate(&keeper, &pv).await,
        Step::Snapshots => {
            let image = keeper.volume_dirs.image_of(&pv).map_err(Error::Other)?;
            let annotations = snapshots::sync(&keeper, &pv, &image).await;
            let failed = annotations.get(prov::SNAPSHOT_ERROR).is_some_and(|e| !e.is_null());
            let patch = json!({"metadata": {"annotations": annotations}});
            conditional(api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await)?;
            if failed {
                return Ok(Action::requeue(Duration::from_secs(5)));
            }
        }
        Step::Grow(bytes) => {
            let image = keeper.volume_dirs.image_of(&pv).map_err(Error::Other)?;
            match grow::grow(&keeper, &image, bytes).await {
                Ok(how) => {
                    tracing::info!(volume = %name, bytes, how, "volume image grown");
                    let patch = json!({"metadata": {"annotations": {prov::IMAGE_BYTES: bytes.to_string()}}});
                    conditional(api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await)?;
                }
                Err(why) => {
                    event(&keeper, &pv, "VolumeResizeFailed", why).await;
                    return Ok(Action::requeue(Duration::from_secs(15)));
                }
            }
        }
        Step::Make => {
            let (state, message) = match make(&keeper.volume_dirs, &pv).await {
                Ok(()) => (prov::READY, None),
                Err(why) => {
                    event(&keeper, &pv, "VolumeFailed", why.clone()).await;
                    (prov::FAILED, Some(why))
                }
            };
            tracing::info!(volume = %name, state, "volume image");
            let bytes = (state == prov::READY).then(|| capacity(&pv).ok()).flatten().map(|b| b.to_string());
            let patch = json!({"metadata": {"resourceVersion": pv.resource_version(), "annotations": {
                prov::VOLUME_STATE: state, prov::VOLUME_MESSAGE: message, prov::IMAGE_BYTES: bytes}}});
            conditional(api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await)?;
        }
        Step::Remove => {
            if let Err(why) = remove(&keeper.volume_dirs, &pv) {
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

/// The source a volume is filled from (a DataVolume's), unless it is blank.
pub(super) fn populate_source(pv: &PersistentVolume) -> Option<serde_json::Value> {
    let source: serde_json::Value = serde_json::from_str(prov::annotation(pv, POPULATE_SOURCE)?).ok()?;
    source.get("blank").is_none().then_some(source)
}

/// How long a failed import waits before its next try, after `restarts` failures (as a crash-looping
/// importer pod backs off in CDI).
fn backoff(restarts: u32) -> Duration {
    Duration::from_secs(10u64.saturating_mul(1 << restarts.saturating_sub(1).min(5)).min(300))
}

/// Fills the volume from its source, reporting progress on it; a failure is counted and tried again later.
async fn populate(keeper: &Keeper, pv: &PersistentVolume) -> Result<Action, Error> {
    let name = pv.name_any();
    let now = chrono::Utc::now();
    if let Some(at) = prov::annotation(pv, prov::RETRY_AFTER).and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    {
        if let Ok(wait) = (at.with_timezone(&chrono::Utc) - now).to_std() {
            return Ok(Action::requeue(wait));
        }
    }
    let set = annotator(keeper, &name);
    let upload = populate_source(pv).is_some_and(|s| s.get("upload").is_some());
    if upload && !keeper.volume_dirs.image_of(pv).map_err(Error::Other)?.exists() {
        // Filled by whoever uploads (through the API server's upload proxy, to crate::volumes::upload).
        if prov::state(pv) != Some(prov::POPULATING) {
            starting(keeper, pv, json!({prov::VOLUME_STATE: prov::POPULATING, prov::PROGRESS: "N/A"})).await?;
        }
        return Ok(Action::await_change());
    }
    // Only from the volume as read: a reconcile of an older copy (the volume was filled since) stops here.
    if !starting(keeper, pv, json!({prov::VOLUME_STATE: prov::POPULATING, prov::PROGRESS: "0.00%"})).await? {
        return Ok(Action::await_change());
    }
    let result = fill(keeper, pv, &set).await;
    let restarts: u32 = prov::annotation(pv, prov::RESTARTS).and_then(|r| r.parse().ok()).unwrap_or(0);
    match result {
        Ok(()) => {
            tracing::info!(volume = %name, "volume filled from its source");
            set(filled(pv)).await?;
            Ok(Action::await_change())
        }
        Err(why) => {
            let wait = backoff(restarts + 1);
            tracing::warn!(volume = %name, "filling the volume failed (try {}): {why}", restarts + 1);
            let at = (now + chrono::Duration::from_std(wait).unwrap_or_default()).to_rfc3339();
            set(json!({prov::RESTARTS: (restarts + 1).to_string(), prov::VOLUME_MESSAGE: why,
                prov::RETRY_AFTER: at}))
            .await?;
            Ok(Action::requeue(wait))
        }
    }
}

/// Writes `annotations` on `pv` only if it is unchanged since it was read; false when it was not.
async fn starting(keeper: &Keeper, pv: &PersistentVolume, annotations: serde_json::Value) -> Result<bool, Error> {
    let patch = json!({"metadata": {"resourceVersion": pv.resource_version(), "annotations": annotations}});
    let api = Api::<PersistentVolume>::all(keeper.client.clone());
    match api.patch(&pv.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Merge-patches annotations of the volume `name` (a conflict or a vanished volume is left to the watch).
pub(super) fn annotator(
    keeper: &Keeper,
    name: &str,
) -> impl Fn(serde_json::Value) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Error>> + Send>> {
    let api = Api::<PersistentVolume>::all(keeper.client.clone());
    let name = name.to_string();
    move |annotations| {
        let (api, name) = (api.clone(), name.clone());
        Box::pin(async move {
            let patch = json!({"metadata": {"annotations": annotations}});
            conditional(api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await)
        })
    }
}

/// The annotations of a volume whose image is whole.
pub(super) fn filled(pv: &PersistentVolume) -> serde_json::Value {
    let bytes = capacity(pv).ok().map(|b| b.to_string());
    json!({prov::VOLUME_STATE: prov::READY, prov::PROGRESS: kumo_api::cdi::progress(1.0),
        prov::VOLUME_MESSAGE: null, prov::RETRY_AFTER: null, prov::IMAGE_BYTES: bytes})
}

/// One try at filling the volume, with its progress written on the volume at most once a second.
async fn fill<F, Fut>(keeper: &Keeper, pv: &PersistentVolume, set: &F) -> Result<(), String>
where
    F: Fn(serde_json::Value) -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let image = keeper.volume_dirs.image_of(pv)?;
    if image.exists() {
        return Ok(()); // filled before the agent stopped, not yet marked
    }
    let source = populate_source(pv).unwrap_or_default();
    let dir = keeper.volume_dirs.dir_of(pv)?;
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let target = import::Target { image: &image, bytes: capacity(pv)?, block: prov::is_block(pv) };
    if let Some(from) = source.get("volume") {
        // A clone: the source volume's image (kept by this node, or in the shared directory), copied whole.
        let pv: PersistentVolume = serde_json::from_value(json!({"spec": {"csi": {
            "driver": from["driver"], "volumeHandle": from["volumeHandle"]}, "volumeMode": from["volumeMode"]}}))
        .map_err(|e| format!("the clone source {from}: {e}"))?;
        let src = keeper.volume_dirs.image_of(&pv)?;
        let snapshot = source.get("snapshot").and_then(|s| s.as_str());
        return import::convert_from(&src, snapshot, &target).await;
    }
    if let Some(url) = source.pointer("/registry/url").and_then(|u| u.as_str()) {
        // A containerDisk: pulled into the image cache as a VMI's would be, then converted from there.
        let reference = url.strip_prefix("docker://").unwrap_or(url);
        let policy = PullPolicy::for_image(None, reference);
        let disk = keeper.images.disk_for(reference, &keeper.cfg.registry, policy).await;
        let disk = disk.map_err(|e| format!("pulling {reference}: {e:#}"))?;
        return import::convert(&disk.path, &target).await;
    }
    let url = source.pointer("/http/url").and_then(|u| u.as_str());
    let url = url.ok_or_else(|| format!("unsupported DataVolume source {source}: kumo imports http and registry"))?;
    let fraction = std::sync::Mutex::new(None::<f64>);
    let report = |f: f64| *fraction.lock().unwrap() = Some(f);
    with_progress(import::http(url, &target, &report), &fraction, set).await
}

/// Runs `work`, writing the fraction it reports on the volume at most once a second.
pub(super) async fn with_progress<W, F, Fut>(
    work: W,
    fraction: &std::sync::Mutex<Option<f64>>,
    set: &F,
) -> Result<(), String>
where
    W: std::future::Future<Output = Result<(), String>>,
    F: Fn(serde_json::Value) -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    tokio::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut shown = None;
    loop {
        tokio::select! {
            r = &mut work => return r,
            _ = tick.tick() => {
                let now = *fraction.lock().unwrap();
                if let Some(f) = now.filter(|_| now != shown) {
                    shown = now;
                    if let Err(e) = set(json!({prov::PROGRESS: kumo_api::cdi::progress(f)})).await {
                        tracing::debug!("reporting progress: {e}");
                    }
                }
            }
        }
    }
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

pub(super) fn capacity(pv: &PersistentVolume) -> Result<u64, String> {
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
    let total = super::filesystem_bytes(&dir)?;
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
