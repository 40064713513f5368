//! A DataVolume cloned from a claim (`source.pvc`), as CDI's host-assisted clone: the source claim must be
//! bound to a volume kumo made and filled, big enough to fit, and not in use by a running guest (its disk
//! would change under the copy). The source's volume is written into the populate source, so the node that
//! fills the clone knows which image to copy; a clone of a `local` volume is made on that volume's node.

use crate::binder::{volume_name, SELECTED_NODE};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::ResourceExt;
use kumo_api::cdi::DataVolume;
use kumo_api::kubevirt::VirtualMachineInstance;
use kumo_api::provisioning as prov;
use serde_json::{json, Value};

/// The source claim's namespace and name.
pub fn source_of(dv: &DataVolume) -> Option<(String, String)> {
    let pvc = dv.spec.source.get("pvc")?;
    let ns = pvc.get("namespace").and_then(Value::as_str).map(str::to_string).or_else(|| dv.namespace())?;
    Some((ns, pvc.get("name")?.as_str()?.to_string()))
}

/// What the clone's claim carries: the resolved source, and the node it must be filled on (if any).
#[derive(Debug, PartialEq)]
pub struct Resolved {
    pub source: Value,
    pub node: Option<String>,
}

/// Checks the source and resolves it, or says (event reason, message) why the clone waits.
pub fn resolve(
    dv: &DataVolume,
    claim: Option<&PersistentVolumeClaim>,
    volume: Option<&PersistentVolume>,
    users: &[VirtualMachineInstance],
) -> Result<Resolved, (&'static str, String)> {
    let (ns, name) = source_of(dv).ok_or(("CloneSourceInvalid", "source.pvc needs a name".to_string()))?;
    let claim = claim.ok_or(("CloneSourcePVCNotFound", format!("source claim {ns}/{name} not found")))?;
    let bound = volume_name(claim);
    let volume = volume
        .filter(|_| !bound.is_empty())
        .ok_or(("CloneSourcePVCNotReady", format!("source claim {ns}/{name} is not bound yet")))?;
    let (driver, handle) = prov::csi_of(volume).ok_or((
        "CloneSourceUnsupported",
        format!("source volume {bound} was not made by kumo's provisioners: kumo clones only those"),
    ))?;
    if prov::state(volume) != Some(prov::READY) {
        return Err(("CloneSourcePVCNotReady", format!("source claim {ns}/{name} is not filled yet")));
    }
    if let Some(vmi) = users.iter().find(|v| !v.is_final() && v.claim_names().any(|c| c == name)) {
        return Err((
            "CloneSourceInUse",
            format!("source claim {ns}/{name} is in use by VMI {}: stop it to clone a consistent disk", vmi.name_any()),
        ));
    }
    let source_bytes = volume
        .spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref()?.get("storage"))
        .and_then(|q| kumo_api::quantity::parse(&q.0).ok())
        .unwrap_or(0);
    let requested = dv
        .claim_spec()
        .and_then(|s| s.resources.as_ref()?.requests.as_ref()?.get("storage"))
        .and_then(|q| kumo_api::quantity::parse(&q.0).ok())
        .unwrap_or(0);
    if requested < source_bytes {
        return Err((
            "CloneValidationFailed",
            format!("target size {requested} is smaller than the source's {source_bytes}: request at least as much"),
        ));
    }
    let mode = volume.spec.as_ref().and_then(|s| s.volume_mode.clone()).unwrap_or_else(|| "Filesystem".into());
    let node = (driver == prov::LOCAL).then(|| volume.labels().get(prov::VOLUME_NODE_LABEL).cloned()).flatten();
    let source = json!({"pvc": {"namespace": ns, "name": name},
        "volume": {"driver": driver, "volumeHandle": handle, "volumeMode": mode}});
    Ok(Resolved { source, node })
}

/// The clone's claim: [`super::claim_for`], carrying the resolved source and pinned to the source's node.
pub fn claim_for(dv: &DataVolume, resolved: &Resolved) -> PersistentVolumeClaim {
    let mut claim = super::claim_for(dv);
    let annotations = claim.annotations_mut();
    annotations.insert(kumo_api::cdi::POPULATE_SOURCE.into(), resolved.source.to_string());
    annotations.insert("cdi.kubevirt.io/storage.import.source".into(), "pvc".into());
    if let Some(n) = &resolved.node {
        annotations.insert(SELECTED_NODE.into(), n.clone());
    }
    claim
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dv(size: &str) -> DataVolume {
        serde_json::from_value(json!({"metadata": {"name": "copy", "namespace": "ns", "uid": "d2"},
            "spec": {"source": {"pvc": {"name": "golden"}},
                     "storage": {"resources": {"requests": {"storage": size}}}}}))
        .unwrap()
    }

    fn source(state: &str) -> (PersistentVolumeClaim, PersistentVolume) {
        let c = serde_json::from_value(json!({"metadata": {"name": "golden", "namespace": "ns"},
            "spec": {"volumeName": "pvc-g"}}))
        .unwrap();
        let v = serde_json::from_value(json!({"metadata": {"name": "pvc-g",
                "labels": {prov::VOLUME_NODE_LABEL: "n1"}, "annotations": {prov::VOLUME_STATE: state}},
            "spec": {"capacity": {"storage": "1Gi"}, "csi": {"driver": prov::LOCAL, "volumeHandle": "pvc-g"}}}))
        .unwrap();
        (c, v)
    }

    #[test]
    fn a_clone_waits_for_a_ready_idle_source_and_is_made_on_its_node() {
        let (c, v) = source(prov::READY);
        let r = resolve(&dv("1Gi"), Some(&c), Some(&v), &[]).unwrap();
        assert_eq!(r.node.as_deref(), Some("n1"));
        assert_eq!(r.source["volume"]["volumeHandle"], "pvc-g");
        let claim = claim_for(&dv("1Gi"), &r);
        assert_eq!(claim.annotations()[SELECTED_NODE], "n1");
        assert_eq!(resolve(&dv("1Gi"), None, None, &[]).unwrap_err().0, "CloneSourcePVCNotFound");
        let (c2, v2) = source(prov::POPULATING);
        assert_eq!(resolve(&dv("1Gi"), Some(&c2), Some(&v2), &[]).unwrap_err().0, "CloneSourcePVCNotReady");
        assert_eq!(resolve(&dv("512Mi"), Some(&c), Some(&v), &[]).unwrap_err().0, "CloneValidationFailed");
        let user: VirtualMachineInstance =
            serde_json::from_value(json!({"metadata": {"name": "vm", "namespace": "ns"},
            "spec": {"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "golden"}}]}}))
            .unwrap();
        assert_eq!(resolve(&dv("1Gi"), Some(&c), Some(&v), &[user]).unwrap_err().0, "CloneSourceInUse");
    }
}
