//! CDI's DataVolume controller, the kumo way: a DataVolume makes a claim of its own name (owned by it,
//! carrying its source in [`POPULATE_SOURCE`]); kumo's provisioner copies the source onto the volume, and the
//! node agent that keeps the volume fills it and reports progress on it. The DataVolume's status is read off
//! the claim and the volume with CDI's phases, progress format and conditions.
//!
//! [`claim_for`] and [`status`] decide; [`run`] applies.

use crate::binder::{class_name, volume_name, SELECTED_NODE};
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::{Resource, ResourceExt};
use kumo_api::cdi::{self, DataVolume, DataVolumeCondition, DataVolumeStatus, BIND_IMMEDIATE, POPULATE_SOURCE};
use kumo_api::provisioning as prov;
use serde_json::json;

pub mod clone;
mod runtime;
pub use runtime::run;

/// The claim a DataVolume makes: its name, owned by it, its size and modes (defaults as CDI's storage API
/// gives them: ReadWriteOnce, Filesystem, the default class), and its source.
pub fn claim_for(dv: &DataVolume) -> PersistentVolumeClaim {
    let mut spec = dv.claim_spec().cloned().unwrap_or_default();
    if spec.access_modes.as_ref().is_none_or(|m| m.is_empty()) {
        spec.access_modes = Some(vec!["ReadWriteOnce".into()]);
    }
    spec.volume_mode.get_or_insert_with(|| "Filesystem".into());
    let kind = dv.source_kind();
    let endpoint = dv.spec.source.pointer(&format!("/{kind}/url")).and_then(|u| u.as_str()).unwrap_or_default();
    let mut claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {
            "name": dv.name_any(), "namespace": dv.namespace(),
            "labels": {"app": "containerized-data-importer", "app.kubernetes.io/component": "storage"},
            "annotations": {
                POPULATE_SOURCE: dv.spec.source.to_string(),
                "cdi.kubevirt.io/storage.import.source": if kind == "blank" { "none" } else { &kind },
                "cdi.kubevirt.io/storage.import.endpoint": endpoint,
                "cdi.kubevirt.io/storage.contentType": "kubevirt",
            },
        },
    }))
    .expect("a well-formed claim");
    if let Some(v) = dv.annotations().get(BIND_IMMEDIATE) {
        claim.annotations_mut().insert(BIND_IMMEDIATE.into(), v.clone());
    }
    claim.metadata.owner_references = dv.controller_owner_ref(&()).map(|mut o| {
        o.block_owner_deletion = Some(true);
        vec![o]
    });
    claim.spec = Some(spec);
    claim
}

/// Whether `claim` is the one `dv` made.
pub fn owns(dv: &DataVolume, claim: &PersistentVolumeClaim) -> bool {
    claim.owner_references().iter().any(|o| o.controller == Some(true) && Some(&o.uid) == dv.uid().as_ref())
}

/// For a DataVolume asked to fill at once although its class waits for a first consumer: the node to fill it
/// on (a Ready, schedulable node, spread by the DataVolume's uid), when its claim has none yet.
pub fn immediate_node(
    dv: &DataVolume,
    claim: &PersistentVolumeClaim,
    class: Option<&StorageClass>,
    nodes: &[Node],
) -> Option<String> {
    // An upload has no consumer to wait for: the upload is it (as CDI's upload pod is).
    let asked = dv.annotations().get(BIND_IMMEDIATE).is_some_and(|v| v == "true") || dv.source_kind() == "upload";
    let waits = class.is_some_and(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"));
    if !asked || !waits || claim.annotations().contains_key(SELECTED_NODE) || !volume_name(claim).is_empty() {
        return None;
    }
    let want = kumo_api::storage::requested_bytes(claim).unwrap_or(0);
    let local = class.is_some_and(|c| c.provisioner == prov::LOCAL);
    let usable: Vec<&Node> = nodes
        .iter()
        .filter(|n| crate::sched::ready(n) && !n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false))
        .filter(|n| !local || prov::node_volume_bytes(n).is_none_or(|have| have >= want))
        .collect();
    let spread = dv.uid().unwrap_or_default().bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
    (!usable.is_empty()).then(|| usable[spread % usable.len()].name_any())
}

/// What the DataVolume's claim and volume say, as CDI's status.
pub struct Observed<'a> {
    pub claim: Option<&'a PersistentVolumeClaim>,
    pub volume: Option<&'a PersistentVolume>,
    pub class: Option<&'a StorageClass>,
}

/// The status `dv` should have, and an event (warning?, reason, message) when its phase changes or a try fails.
pub fn status(dv: &DataVolume, seen: &Observed, now: &str) -> (DataVolumeStatus, Option<(bool, String, String)>) {
    let old = dv.status.clone().unwrap_or_default();
    let name = dv.name_any();
    let annotation = |k: &str| seen.volume.and_then(|v| prov::annotation(v, k));
    let restarts: i64 = annotation(prov::RESTARTS).and_then(|r| r.parse().ok()).unwrap_or(0);
    let message = annotation(prov::VOLUME_MESSAGE).map(str::to_string);
    let bound = seen.claim.is_some_and(|c| !volume_name(c).is_empty());
    let (phase, mut detail) = match (seen.claim, seen.volume) {
        (None, _) => ("Pending", None),
        (Some(c), _) if !owns(dv, c) => {
            ("Pending", Some(format!("PersistentVolumeClaim {name} already exists and is not managed by this DataVolume")))
        }
        (Some(c), _) if !bound => {
            let waits = seen.class.is_some_and(|k| k.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"));
            let now = dv.annotations().contains_key(BIND_IMMEDIATE) || dv.source_kind() == "upload";
            let first = waits && !c.annotations().contains_key(SELECTED_NODE) && !now;
            (if first { "WaitForFirstConsumer" } else { "Pending" }, None)
        }
        (Some(_), None) => ("PVCBound", None),
        (Some(_), Some(v)) => match prov::state(v) {
            None if dv.source_kind() == "blank" => ("Succeeded", None),
            None => ("Failed", Some(format!(
                "volume {} was not made by kumo's provisioners, so it cannot be filled: use a class of kumo.dev/local or kumo.dev/shared",
                v.name_any()
            ))),
            Some(prov::PENDING) => (kind_phases(dv).0, None),
            Some(prov::POPULATING) => (kind_phases(dv).1, None),
            Some(prov::READY) => ("Succeeded", None),
            Some(_) => ("Failed", message.clone()),
        },
    };
    if detail.is_none() && restarts > 0 && phase != "Succeeded" {
        detail = message.clone();
    }
    let running = phase == kind_phases(dv).1;
    let progress = match phase {
        "Succeeded" => cdi::progress(1.0),
        _ if running => annotation(prov::PROGRESS).unwrap_or("N/A").to_string(),
        _ => "N/A".to_string(),
    };
    let cond = |type_: &str, status: bool, reason: &str, message: String| {
        let status = if status { "True" } else { "False" }.to_string();
        let prev = old.conditions.iter().find(|c| c.type_ == type_);
        let since = prev.filter(|p| p.status == status).and_then(|p| p.last_transition_time.clone());
        DataVolumeCondition {
            type_: type_.into(),
            status,
            reason: Some(reason.into()),
            message: Some(message),
            last_transition_time: Some(since.unwrap_or_else(|| now.to_string())),
            last_heartbeat_time: Some(now.to_string()),
        }
    };
    let (run_reason, run_message) = match (phase, &detail) {
        ("Succeeded", _) => ("Completed", "Import Complete".to_string()),
        (_, Some(m)) => ("Error", m.clone()),
        _ if running => ("Pod is running", String::new()),
        _ => ("", String::new()),
    };
    let claim_state = if bound { "Bound" } else { "Pending" };
    let conditions = vec![
        cond("Bound", bound, claim_state, format!("PVC {name} {claim_state}")),
        cond("Running", running && detail.is_none(), run_reason, run_message),
        cond("Ready", phase == "Succeeded", if phase == "Succeeded" { "Completed" } else { "" }, String::new()),
    ];
    let new = DataVolumeStatus {
        phase: Some(phase.into()),
        progress: Some(progress),
        restart_count: Some(restarts),
        claim_name: Some(name.clone()),
        conditions,
    };
    // A failed try is the news even when the phase changed with it.
    let event = if restarts > old.restart_count.unwrap_or(0) {
        Some((true, "Error".to_string(), detail.clone().unwrap_or_else(|| "the import failed; retrying".into())))
    } else if old.phase.as_deref() != Some(phase) {
        let clone = dv.source_kind() == "pvc";
        let (warning, reason) = match phase {
            "Succeeded" if clone => (false, "CloneSucceeded"),
            "Succeeded" => (false, "ImportSucceeded"),
            "Failed" => (true, "ImportFailed"),
            p => (false, p),
        };
        let note = detail.clone().unwrap_or_else(|| format!("DataVolume {name}: {phase}"));
        Some((warning, reason.to_string(), note))
    } else {
        None
    };
    (new, event)
}

/// CDI's phase names while a volume waits to be filled and while it is being filled, by source.
fn kind_phases(dv: &DataVolume) -> (&'static str, &'static str) {
    match dv.source_kind().as_ref() {
        "pvc" => ("CloneScheduled", "CloneInProgress"),
        "upload" => ("UploadScheduled", "UploadReady"),
        _ => ("ImportScheduled", "ImportInProgress"),
    }
}

/// The annotations CDI's upload and import pods leave on the claim, which `virtctl image-upload` waits on:
/// whether the upload server is ready, and the pod's phase.
pub fn pod_annotations(dv: &DataVolume, phase: &str) -> serde_json::Value {
    let (scheduled, running) = kind_phases(dv);
    let pod = match phase {
        "Succeeded" => "Succeeded",
        "Failed" => "Failed",
        p if p == running => "Running",
        p if p == scheduled => "Pending",
        _ => return json!({}),
    };
    json!({"cdi.kubevirt.io/storage.pod.phase": pod,
        "cdi.kubevirt.io/storage.pod.ready": (phase == running).to_string()})
}

/// Whether two statuses differ in more than heartbeat times (so an unchanged DataVolume is not rewritten).
pub fn changed(a: &DataVolumeStatus, b: &DataVolumeStatus) -> bool {
    let strip = |s: &DataVolumeStatus| {
        let mut s = s.clone();
        s.conditions.iter_mut().for_each(|c| c.last_heartbeat_time = None);
        s
    };
    strip(a) != strip(b)
}

/// The class a DataVolume's claim is in (named, or the default one when it names none).
pub(crate) fn class_of<'a>(
    claim: Option<&PersistentVolumeClaim>,
    dv: &DataVolume,
    classes: &'a [StorageClass],
) -> Option<&'a StorageClass> {
    let named = claim.map(class_name).filter(|n| !n.is_empty()).map(str::to_string);
    let named = named.or_else(|| dv.claim_spec()?.storage_class_name.clone());
    match named {
        Some(n) => classes.iter().find(|c| c.name_any() == n),
        None => classes
            .iter()
            .filter(|c| c.annotations().get(kumo_api::storage::DEFAULT_CLASS_ANNOTATION).is_some_and(|v| v == "true"))
            .max_by_key(|c| c.metadata.creation_timestamp.clone()),
    }
}

#[cfg(test)]
mod tests;
