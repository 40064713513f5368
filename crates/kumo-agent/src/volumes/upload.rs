//! Receiving an upload (the API server's upload proxy streams it here): into a volume this node keeps whose
//! source is `upload` and that waits for one. The body is written as an import is ([`super::import::stream`]),
//! the progress shown on the volume, and the volume marked filled only once the image is whole; a failed
//! upload leaves it waiting for the next.

use super::import;
use super::keeper::{annotator, capacity, filled, populate_source, with_progress};
use crate::agent::Agent;
use http::StatusCode;
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::Api;
use kumo_api::provisioning as prov;
use std::collections::HashSet;
use std::sync::Mutex;

/// Volumes being uploaded into now: one upload at a time each.
static BUSY: Mutex<Option<HashSet<String>>> = Mutex::new(None);

struct Busy(String);

impl Busy {
    fn take(name: &str) -> Option<Busy> {
        let mut set = BUSY.lock().unwrap();
        set.get_or_insert_with(HashSet::new).insert(name.to_string()).then(|| Busy(name.to_string()))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(set) = BUSY.lock().unwrap().as_mut() {
            set.remove(&self.0);
        }
    }
}

/// Takes the upload of `body` into volume `name`.
pub(crate) async fn receive(
    agent: &Agent,
    name: &str,
    body: hyper::body::Incoming,
    length: Option<u64>,
) -> Result<(), (StatusCode, String)> {
    let pv: PersistentVolume = Api::all(agent.client.clone())
        .get(name)
        .await
        .map_err(|e| (StatusCode::NOT_FOUND, format!("volume {name}: {e}")))?;
    let keeper = pv.metadata.labels.as_ref().and_then(|l| l.get(prov::VOLUME_NODE_LABEL));
    let upload = populate_source(&pv).is_some_and(|s| s.get("upload").is_some());
    if keeper != Some(&agent.node) || !upload || prov::state(&pv) != Some(prov::POPULATING) {
        return Err((StatusCode::CONFLICT, format!("volume {name} does not wait for an upload on this node")));
    }
    let _busy = Busy::take(name).ok_or((StatusCode::CONFLICT, format!("volume {name} is being uploaded already")))?;
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let image = agent.volume_dirs.image_of(&pv).map_err(bad)?;
    let dir = agent.volume_dirs.dir_of(&pv).map_err(bad)?;
    std::fs::create_dir_all(&dir).map_err(|e| bad(format!("creating {}: {e}", dir.display())))?;
    let target = import::Target { image: &image, bytes: capacity(&pv).map_err(bad)?, block: prov::is_block(&pv) };
    let set = annotator(agent, name);
    let fraction = Mutex::new(None::<f64>);
    let report = |f: f64| *fraction.lock().unwrap() = Some(f);
    let result = with_progress(import::stream(body, length, "the upload", &target, &report), &fraction, &set).await;
    match result {
        Ok(()) => {
            tracing::info!(volume = name, "upload written");
            set(filled(&pv)).await.map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            Ok(())
        }
        Err(why) => {
            tracing::warn!(volume = name, "upload failed: {why}");
            let _ = set(serde_json::json!({prov::VOLUME_MESSAGE: why.clone(), prov::PROGRESS: "N/A"})).await;
            Err((StatusCode::BAD_REQUEST, why))
        }
    }
}
