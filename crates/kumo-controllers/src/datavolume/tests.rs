use super::*;
use serde_json::{json, Value};

fn dv(source: Value) -> DataVolume {
    serde_json::from_value(json!({
        "metadata": {"name": "disk", "namespace": "ns", "uid": "d1"},
        "spec": {"source": source, "storage": {"resources": {"requests": {"storage": "1Gi"}}}},
    }))
    .unwrap()
}

fn http() -> DataVolume {
    dv(json!({"http": {"url": "http://127.0.0.1:8000/guest.qcow2"}}))
}

fn volume(state: &str, extra: Value) -> PersistentVolume {
    let mut annotations = json!({prov::VOLUME_STATE: state});
    annotations.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    serde_json::from_value(json!({"metadata": {"name": "pvc-c1", "annotations": annotations},
        "spec": {"csi": {"driver": prov::LOCAL, "volumeHandle": "pvc-c1"}}}))
    .unwrap()
}

fn wffc() -> StorageClass {
    serde_json::from_value(json!({"metadata": {"name": "local"}, "provisioner": prov::LOCAL,
        "volumeBindingMode": "WaitForFirstConsumer"}))
    .unwrap()
}

fn bound(mut c: PersistentVolumeClaim) -> PersistentVolumeClaim {
    c.spec.as_mut().unwrap().volume_name = Some("pvc-c1".into());
    c
}

fn phase(d: &DataVolume, claim: Option<&PersistentVolumeClaim>, volume: Option<&PersistentVolume>) -> (String, String) {
    let class = wffc();
    let (st, _) = status(d, &Observed { claim, volume, class: Some(&class) }, "t");
    (st.phase.unwrap(), st.progress.unwrap())
}

#[test]
fn the_claim_carries_the_source_and_belongs_to_the_datavolume() {
    let d = http();
    let c = claim_for(&d);
    assert_eq!(c.name_any(), "disk");
    assert!(owns(&d, &c));
    let spec = c.spec.as_ref().unwrap();
    assert_eq!(spec.access_modes.as_deref(), Some(&["ReadWriteOnce".to_string()][..]));
    assert_eq!(spec.volume_mode.as_deref(), Some("Filesystem"));
    let source: Value = serde_json::from_str(&c.annotations()[POPULATE_SOURCE]).unwrap();
    assert_eq!(source["http"]["url"], "http://127.0.0.1:8000/guest.qcow2");
    assert_eq!(c.annotations()["cdi.kubevirt.io/storage.import.source"], "http");
}

#[test]
fn phases_and_progress_follow_the_claim_and_the_volume() {
    let d = http();
    let c = claim_for(&d);
    assert_eq!(phase(&d, None, None).0, "Pending");
    assert_eq!(phase(&d, Some(&c), None), ("WaitForFirstConsumer".into(), "N/A".into()));
    let mut selected = c.clone();
    selected.annotations_mut().insert(SELECTED_NODE.into(), "n1".into());
    assert_eq!(phase(&d, Some(&selected), None).0, "Pending");
    let b = bound(selected);
    assert_eq!(phase(&d, Some(&b), None).0, "PVCBound");
    assert_eq!(phase(&d, Some(&b), Some(&volume(prov::PENDING, json!({})))).0, "ImportScheduled");
    let going = volume(prov::POPULATING, json!({prov::PROGRESS: "47.30%"}));
    assert_eq!(phase(&d, Some(&b), Some(&going)), ("ImportInProgress".into(), "47.30%".into()));
    assert_eq!(phase(&d, Some(&b), Some(&volume(prov::READY, json!({})))), ("Succeeded".into(), "100.00%".into()));
    // A claim of that name that the DataVolume did not make is not taken over.
    let mut foreign = b.clone();
    foreign.metadata.owner_references = None;
    assert_eq!(phase(&d, Some(&foreign), None).0, "Pending");
}

#[test]
fn failed_tries_count_as_restarts_with_the_reason_in_running_and_an_event() {
    let d = http();
    let b = bound(claim_for(&d));
    let class = wffc();
    let failing = volume(prov::POPULATING, json!({prov::RESTARTS: "2", prov::VOLUME_MESSAGE: "HTTP 404 Not Found"}));
    let (st, event) = status(&d, &Observed { claim: Some(&b), volume: Some(&failing), class: Some(&class) }, "t");
    assert_eq!(st.restart_count, Some(2));
    let running = st.conditions.iter().find(|c| c.type_ == "Running").unwrap();
    assert_eq!((running.status.as_str(), running.reason.as_deref()), ("False", Some("Error")));
    assert_eq!(running.message.as_deref(), Some("HTTP 404 Not Found"));
    assert!(matches!(&event, Some((true, r, m)) if r == "Error" && m.contains("404")), "{event:?}");
    let mut again = d.clone();
    again.status = Some(st.clone());
    let (st2, event) = status(&again, &Observed { claim: Some(&b), volume: Some(&failing), class: Some(&class) }, "u");
    assert!(event.is_none() && !changed(&st, &st2), "nothing new: no event, no write");
    let more = volume(prov::POPULATING, json!({prov::RESTARTS: "3", prov::VOLUME_MESSAGE: "HTTP 404 Not Found"}));
    let (_, event) = status(&again, &Observed { claim: Some(&b), volume: Some(&more), class: Some(&class) }, "u");
    assert!(matches!(event, Some((true, r, _)) if r == "Error"));
}

#[test]
fn a_datavolume_asked_to_fill_at_once_gets_a_node() {
    let mut d = dv(json!({"blank": {}}));
    d.annotations_mut().insert(BIND_IMMEDIATE.into(), "true".into());
    let nodes: Vec<Node> = ["a", "b"]
        .iter()
        .map(|n| {
            serde_json::from_value(json!({"metadata": {"name": n},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]}}))
            .unwrap()
        })
        .collect();
    let c = claim_for(&d);
    assert!(immediate_node(&d, &c, Some(&wffc()), &nodes).is_some());
    assert_eq!(immediate_node(&d, &c, Some(&wffc()), &[]), None);
    assert_eq!(immediate_node(&http(), &claim_for(&http()), Some(&wffc()), &nodes), None, "not asked");
    assert_eq!(phase(&d, Some(&c), None).0, "Pending", "not waiting for a consumer");
}
