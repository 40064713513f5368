//! PersistentVolumeClaims, PersistentVolumes and StorageClasses: the rules Kubernetes' API server applies to them
//! (validation on create and update, the protection finalizers, the default class), on k8s-openapi's types.
//! Binding and provisioning are controllers' work; this module only decides what may be written.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::quantity;
use crate::status::Cause;

/// Held on a claim while a VMI uses it (Kubernetes' StorageObjectInUseProtection).
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
/// Held on a volume while a claim is bound to it.
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";
/// The annotation that makes a StorageClass the default for claims that name none.
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";

const ACCESS_MODES: &[&str] = &["ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"];
const VOLUME_MODES: &[&str] = &["Block", "Filesystem"];
const PV_RECLAIM: &[&str] = &["Delete", "Recycle", "Retain"];
const SC_RECLAIM: &[&str] = &["Delete", "Retain"];
const BINDING_MODES: &[&str] = &["Immediate", "WaitForFirstConsumer"];
/// Kubernetes' words for a claim update that changes more than it may.
const CLAIM_SPEC_FIXED: &str =
    "Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims";

fn typed<T: DeserializeOwned>(obj: &Value) -> Option<T> {
    serde_json::from_value(obj.clone()).ok()
}

/// Causes for a new object of `kind` (empty when valid, or not a storage kind).
pub fn validate(kind: &str, obj: &Value) -> Vec<Cause> {
    match kind {
        "PersistentVolumeClaim" => typed(obj).map(|c| validate_claim(&c)).unwrap_or_default(),
        "PersistentVolume" => typed(obj).map(|v| validate_volume(&v)).unwrap_or_default(),
        "StorageClass" => typed(obj).map(|c| validate_class(&c)).unwrap_or_default(),
        _ => vec![],
    }
}

/// Causes for an update of `kind` from `old` to `new` (on top of [`validate`] of `new`).
pub fn validate_update(kind: &str, old: &Value, new: &Value) -> Vec<Cause> {
    match kind {
        "PersistentVolumeClaim" => match (typed(old), typed(new)) {
            (Some(o), Some(n)) => claim_update(&o, &n),
            _ => vec![],
        },
        "PersistentVolume" => match (typed(old), typed(new)) {
            (Some(o), Some(n)) => volume_update(&o, &n),
            _ => vec![],
        },
        "StorageClass" => match (typed(old), typed(new)) {
            (Some(o), Some(n)) => class_update(&o, &n),
            _ => vec![],
        },
        _ => vec![],
    }
}

fn access_modes(field: &str, modes: Option<&Vec<String>>, out: &mut Vec<Cause>) {
    let modes = modes.map(Vec::as_slice).unwrap_or_default();
    if modes.is_empty() {
        out.push(Cause {
            message: "Required value: at least 1 access mode is required".into(),
            ..Cause::required(field)
        });
    }
    for (i, m) in modes.iter().enumerate() {
        if !ACCESS_MODES.contains(&m.as_str()) {
            out.push(Cause::not_supported(format!("{field}[{i}]"), m, ACCESS_MODES));
        }
    }
    if modes.iter().any(|m| m == "ReadWriteOncePod") && modes.len() > 1 {
        out.push(Cause::invalid(field, "Forbidden: may not use ReadWriteOncePod with other access modes"));
    }
}

fn one_of(field: &str, value: Option<&String>, allowed: &[&str], out: &mut Vec<Cause>) {
    if let Some(v) = value.filter(|v| !allowed.contains(&v.as_str())) {
        out.push(Cause::not_supported(field, v, allowed));
    }
}

/// A positive storage size at `field`, or the cause why not.
fn storage(field: &str, q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>, out: &mut Vec<Cause>) {
    match q {
        None => out.push(Cause::required(field)),
        Some(q) => match quantity::parse(&q.0) {
            Ok(0) => out.push(Cause::invalid(field, format!("Invalid value: \"{}\": must be greater than zero", q.0))),
            Ok(_) => {}
            Err(e) => out.push(Cause::invalid(field, format!("Invalid value: \"{}\": {e}", q.0))),
        },
    }
}

/// The requested size of a claim in bytes, if it parses.
pub fn requested_bytes(claim: &PersistentVolumeClaim) -> Option<u64> {
    let q = claim.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?.get("storage")?;
    quantity::parse(&q.0).ok()
}

/// What claims and volumes share: their access modes and volume mode.
fn modes(access: Option<&Vec<String>>, volume_mode: Option<&String>) -> Vec<Cause> {
    let mut out = vec![];
    access_modes("spec.accessModes", access, &mut out);
    one_of("spec.volumeMode", volume_mode, VOLUME_MODES, &mut out);
    out
}

fn validate_claim(c: &PersistentVolumeClaim) -> Vec<Cause> {
    let Some(spec) = &c.spec else { return vec![Cause::required("spec")] };
    let mut out = modes(spec.access_modes.as_ref(), spec.volume_mode.as_ref());
    let requests = spec.resources.as_ref().and_then(|r| r.requests.as_ref());
    storage("spec.resources.requests[storage]", requests.and_then(|r| r.get("storage")), &mut out);
    out
}

fn claim_update(old: &PersistentVolumeClaim, new: &PersistentVolumeClaim) -> Vec<Cause> {
    let (Some(o), Some(n)) = (&old.spec, &new.spec) else { return vec![] };
    let mut out = vec![];
    // Only the requested size may change (and a volume name set once, by the binder); the rest is fixed.
    let mut o_cmp = o.clone();
    if o.volume_name.as_deref().unwrap_or_default().is_empty() {
        o_cmp.volume_name = n.volume_name.clone();
    }
    o_cmp.resources = n.resources.clone();
    o_cmp.volume_attributes_class_name = n.volume_attributes_class_name.clone();
    if o_cmp != *n {
        out.push(Cause::invalid("spec", CLAIM_SPEC_FIXED));
    }
    match (requested_bytes(old), requested_bytes(new)) {
        (Some(was), Some(is)) if is < was => out.push(Cause::invalid(
            "spec.resources.requests.storage",
            "Forbidden: field can not be less than previous value",
        )),
        (Some(was), Some(is)) if is > was && old.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") => {
            out.push(Cause::invalid("spec", CLAIM_SPEC_FIXED))
        }
        _ => {}
    }
    out
}

/// The volume sources a PersistentVolume spec sets, by field name.
fn volume_sources(spec: &Value) -> Vec<String> {
    const NOT_SOURCES: &[&str] = &[
        "accessModes",
        "capacity",
        "claimRef",
        "mountOptions",
        "nodeAffinity",
        "persistentVolumeReclaimPolicy",
        "storageClassName",
        "volumeAttributesClassName",
        "volumeMode",
    ];
    spec.as_object()
        .map(|m| m.keys().filter(|k| !NOT_SOURCES.contains(&k.as_str())).cloned().collect())
        .unwrap_or_default()
}

fn validate_volume(v: &PersistentVolume) -> Vec<Cause> {
    let Some(spec) = &v.spec else { return vec![Cause::required("spec")] };
    let mut out = modes(spec.access_modes.as_ref(), spec.volume_mode.as_ref());
    one_of("spec.persistentVolumeReclaimPolicy", spec.persistent_volume_reclaim_policy.as_ref(), PV_RECLAIM, &mut out);
    match spec.capacity.as_ref() {
        None => out.push(Cause::required("spec.capacity")),
        Some(c) => storage("spec.capacity[storage]", c.get("storage"), &mut out),
    }
    let sources = volume_sources(&serde_json::to_value(spec).unwrap_or_default());
    match sources.len() {
        0 => {
            out.push(Cause { message: "Required value: must specify a volume type".into(), ..Cause::required("spec") })
        }
        1 => {}
        _ => out.push(Cause::invalid("spec", "Forbidden: may not specify more than 1 volume type")),
    }
    out
}

fn volume_update(old: &PersistentVolume, new: &PersistentVolume) -> Vec<Cause> {
    let source = |v: &PersistentVolume| {
        let spec = serde_json::to_value(&v.spec).unwrap_or_default();
        volume_sources(&spec).into_iter().map(|k| (spec[&k].clone(), k)).collect::<Vec<_>>()
    };
    let mut out = vec![];
    if source(old) != source(new) {
        out.push(Cause::invalid(
            "spec.persistentvolumesource",
            "Forbidden: spec.persistentvolumesource is immutable after creation",
        ));
    }
    let mode = |v: &PersistentVolume| v.spec.as_ref().and_then(|s| s.volume_mode.clone());
    if mode(old) != mode(new) {
        out.push(Cause::invalid("spec.volumeMode", "Invalid value: field is immutable"));
    }
    let affinity = |v: &PersistentVolume| v.spec.as_ref().and_then(|s| s.node_affinity.clone());
    if affinity(old).is_some() && affinity(old) != affinity(new) {
        out.push(Cause::invalid("spec.nodeAffinity", "Invalid value: field is immutable"));
    }
    out
}

fn validate_class(c: &StorageClass) -> Vec<Cause> {
    let mut out = vec![];
    if c.provisioner.is_empty() {
        out.push(Cause::required("provisioner"));
    }
    one_of("reclaimPolicy", c.reclaim_policy.as_ref(), SC_RECLAIM, &mut out);
    one_of("volumeBindingMode", c.volume_binding_mode.as_ref(), BINDING_MODES, &mut out);
    out
}

fn class_update(old: &StorageClass, new: &StorageClass) -> Vec<Cause> {
    let mut out = vec![];
    if old.parameters != new.parameters {
        out.push(Cause::invalid("parameters", "Forbidden: updates to parameters are forbidden."));
    }
    if old.provisioner != new.provisioner {
        out.push(Cause::invalid("provisioner", "Forbidden: updates to provisioner are forbidden."));
    }
    if old.reclaim_policy.as_deref().unwrap_or("Delete") != new.reclaim_policy.as_deref().unwrap_or("Delete") {
        out.push(Cause::invalid("reclaimPolicy", "Forbidden: updates to reclaimPolicy are forbidden."));
    }
    let mode = |c: &StorageClass| c.volume_binding_mode.clone().unwrap_or_else(|| "Immediate".into());
    if mode(old) != mode(new) {
        out.push(Cause::invalid("volumeBindingMode", "Invalid value: field is immutable"));
    }
    out
}

/// Whether a StorageClass object is marked the default.
pub fn is_default_class(obj: &Value) -> bool {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
        .and_then(Value::as_str)
        .is_some_and(|v| v == "true")
}

/// Access modes as kubectl abbreviates them (`RWO,ROX`).
pub fn short_access_modes(modes: &[Value]) -> String {
    let short = |m: &str| match m {
        "ReadWriteOnce" => "RWO",
        "ReadOnlyMany" => "ROX",
        "ReadWriteMany" => "RWX",
        "ReadWriteOncePod" => "RWOP",
        _ => "",
    };
    modes.iter().filter_map(Value::as_str).map(short).filter(|s| !s.is_empty()).collect::<Vec<_>>().join(",")
}

/// Defaults Kubernetes fills in on create: a claim's `volumeMode` and `status.phase`, a volume's reclaim
/// policy, `volumeMode` and phase, a class's reclaim policy and binding mode.
pub fn default_new(kind: &str, obj: &mut Value) {
    let set = |obj: &mut Value, path: &[&str], v: &str| {
        let mut cur = &mut *obj;
        for p in &path[..path.len() - 1] {
            if !cur.get(*p).is_some_and(Value::is_object) {
                cur[*p] = serde_json::json!({});
            }
            cur = &mut cur[*p];
        }
        let last = path[path.len() - 1];
        if cur.get(last).is_none_or(Value::is_null) {
            cur[last] = Value::String(v.into());
        }
    };
    match kind {
        "PersistentVolumeClaim" => {
            set(obj, &["spec", "volumeMode"], "Filesystem");
            obj["status"] = serde_json::json!({"phase": "Pending"});
        }
        "PersistentVolume" => {
            set(obj, &["spec", "volumeMode"], "Filesystem");
            set(obj, &["spec", "persistentVolumeReclaimPolicy"], "Retain");
            obj["status"] = serde_json::json!({"phase": "Pending"});
        }
        "StorageClass" => {
            set(obj, &["reclaimPolicy"], "Delete");
            set(obj, &["volumeBindingMode"], "Immediate");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(size: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "c"},
               "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}})
    }

    fn fields(causes: &[Cause]) -> Vec<&str> {
        causes.iter().map(|c| c.field.as_str()).collect()
    }

    #[test]
    fn claims_need_modes_and_a_positive_size() {
        assert!(validate("PersistentVolumeClaim", &claim("1Gi")).is_empty());
        let mut c = claim("0");
        c["spec"]["accessModes"] = json!(["ReadWriteSometimes"]);
        let causes = validate("PersistentVolumeClaim", &c);
        assert_eq!(fields(&causes), vec!["spec.accessModes[0]", "spec.resources.requests[storage]"], "{causes:?}");
        c["spec"] = json!({"resources": {}});
        assert_eq!(
            fields(&validate("PersistentVolumeClaim", &c)),
            vec!["spec.accessModes", "spec.resources.requests[storage]"]
        );
    }

    #[test]
    fn claims_grow_when_bound_and_never_shrink() {
        let mut old = claim("2Gi");
        let causes = validate_update("PersistentVolumeClaim", &old, &claim("1Gi"));
        assert!(causes.iter().any(|c| c.message.contains("can not be less than previous value")), "{causes:?}");
        assert!(!validate_update("PersistentVolumeClaim", &old, &claim("3Gi")).is_empty(), "pending: immutable");
        old["status"] = json!({"phase": "Bound"});
        assert!(validate_update("PersistentVolumeClaim", &old, &claim("3Gi")).is_empty());
        let mut other = claim("2Gi");
        other["spec"]["accessModes"] = json!(["ReadWriteMany"]);
        assert_eq!(fields(&validate_update("PersistentVolumeClaim", &old, &other)), vec!["spec"]);
        // The binder sets the volume name once.
        let mut bound = claim("2Gi");
        bound["spec"]["volumeName"] = json!("pv-1");
        assert!(validate_update("PersistentVolumeClaim", &old, &bound).is_empty());
        let mut rebound = bound.clone();
        rebound["spec"]["volumeName"] = json!("pv-2");
        assert!(!validate_update("PersistentVolumeClaim", &bound, &rebound).is_empty());
    }

    #[test]
    fn volumes_need_exactly_one_source_and_keep_it() {
        let pv = json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "v"},
            "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"}, "hostPath": {"path": "/x"}}});
        assert!(validate("PersistentVolume", &pv).is_empty());
        let mut none = pv.clone();
        none["spec"].as_object_mut().unwrap().remove("hostPath");
        assert_eq!(validate("PersistentVolume", &none)[0].message, "Required value: must specify a volume type");
        let mut two = pv.clone();
        two["spec"]["nfs"] = json!({"server": "s", "path": "/p"});
        assert!(validate("PersistentVolume", &two)[0].message.contains("more than 1"));
        let mut moved = pv.clone();
        moved["spec"]["hostPath"]["path"] = json!("/y");
        assert_eq!(fields(&validate_update("PersistentVolume", &pv, &moved)), vec!["spec.persistentvolumesource"]);
    }

    #[test]
    fn classes_are_fixed_but_for_expansion_and_metadata() {
        let sc = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "s"},
                        "provisioner": "kumo.dev/local", "volumeBindingMode": "WaitForFirstConsumer"});
        assert!(validate("StorageClass", &sc).is_empty());
        let mut bad = sc.clone();
        bad["volumeBindingMode"] = json!("Later");
        assert_eq!(fields(&validate("StorageClass", &bad)), vec!["volumeBindingMode"]);
        let mut grown = sc.clone();
        grown["allowVolumeExpansion"] = json!(true);
        assert!(validate_update("StorageClass", &sc, &grown).is_empty());
        let mut moved = sc.clone();
        moved["provisioner"] = json!("other");
        moved["volumeBindingMode"] = json!("Immediate");
        assert_eq!(fields(&validate_update("StorageClass", &sc, &moved)), vec!["provisioner", "volumeBindingMode"]);
    }

    #[test]
    fn defaults_and_columns() {
        let mut c = claim("1Gi");
        default_new("PersistentVolumeClaim", &mut c);
        assert_eq!(
            (c["spec"]["volumeMode"].as_str(), c["status"]["phase"].as_str()),
            (Some("Filesystem"), Some("Pending"))
        );
        let mut sc = json!({"provisioner": "p", "metadata": {"annotations": {DEFAULT_CLASS_ANNOTATION: "true"}}});
        default_new("StorageClass", &mut sc);
        assert_eq!(
            (sc["reclaimPolicy"].as_str(), sc["volumeBindingMode"].as_str()),
            (Some("Delete"), Some("Immediate"))
        );
        assert!(is_default_class(&sc));
        assert_eq!(short_access_modes(&[json!("ReadWriteOnce"), json!("ReadOnlyMany")]), "RWO,ROX");
    }
}
