//! CDI's `cdi.kubevirt.io/v1beta1` API as kumo serves it: the DataVolume CRD (installed at start with
//! KubeVirt's) and the kind as a Rust type the controllers read. A DataVolume is a claim plus where its content
//! comes from; kumo's DataVolume controller makes the claim, and the node agent that keeps the volume fills it.

use crate::kubevirt::object::custom_kind;
use crate::kubevirt::{col, crd_in, yaml};
use k8s_openapi::api::core::v1::PersistentVolumeClaimSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;

pub const GROUP: &str = "cdi.kubevirt.io";
pub const VERSION: &str = "v1beta1";
/// On a DataVolume whose class waits for a first consumer: fill it now, on a node the controller picks.
pub const BIND_IMMEDIATE: &str = "cdi.kubevirt.io/storage.bind.immediate.requested";
/// On the claim a DataVolume made: the source its volume is to be filled from (the DataVolume's
/// `spec.source`, as JSON). The provisioner copies it onto the volume for the node that fills it.
pub const POPULATE_SOURCE: &str = "kumo.dev/populate-source";

const SCHEMA: &str = include_str!("../../crds/cdi-datavolume.yaml");

/// The schema of a DataVolume's spec (also a VM's `dataVolumeTemplates[].spec`).
pub fn spec_schema() -> Value {
    yaml(SCHEMA)["properties"]["spec"].clone()
}

/// CDI's cluster-wide settings (`CDIConfig` named `config`): kumo publishes its upload proxy's URL in
/// `status.uploadProxyURL`, where `virtctl image-upload` looks for it.
pub fn cdiconfig_crd() -> Value {
    let schema = serde_json::json!({"type": "object", "properties": {
        "spec": {"type": "object", "properties": {"uploadProxyURLOverride": {"type": "string"}}},
        "status": {"type": "object", "properties": {"uploadProxyURL": {"type": "string"}}}}});
    let mut crd = crd_in(
        GROUP,
        VERSION,
        "CDIConfig",
        "cdiconfigs",
        &[],
        schema,
        vec![col("Age", "date", ".metadata.creationTimestamp", 0)],
    );
    crd["spec"]["scope"] = serde_json::json!("Cluster");
    crd
}

/// `UploadTokenRequest` (upload.cdi.kubevirt.io): asks for a token to upload into one claim; the answer
/// carries it in `status.token` and nothing is stored.
pub fn upload_token_request_crd() -> Value {
    let schema = serde_json::json!({"type": "object", "required": ["spec"], "properties": {
        "spec": {"type": "object", "required": ["pvcName"], "properties": {"pvcName": {"type": "string"}}},
        "status": {"type": "object", "properties": {"token": {"type": "string"}}}}});
    crd_in("upload.cdi.kubevirt.io", VERSION, "UploadTokenRequest", "uploadtokenrequests", &[], schema, vec![])
}

/// The DataVolume CRD.
pub fn datavolume_crd() -> Value {
    crd_in(
        GROUP,
        VERSION,
        "DataVolume",
        "datavolumes",
        &["dv", "dvs"],
        yaml(SCHEMA),
        vec![
            col("Phase", "string", ".status.phase", 0),
            col("Progress", "string", ".status.progress", 0),
            col("Restarts", "integer", ".status.restartCount", 0),
            col("Age", "date", ".metadata.creationTimestamp", 0),
        ],
    )
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct DataVolume {
    pub metadata: ObjectMeta,
    pub spec: DataVolumeSpec,
    pub status: Option<DataVolumeStatus>,
}

custom_kind!(DataVolume, "DataVolume", "datavolumes", GROUP, VERSION);

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DataVolumeSpec {
    /// Kept as JSON: it is handed on to the node that fills the volume as it is.
    pub source: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<PersistentVolumeClaimSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PersistentVolumeClaimSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DataVolumeStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_count: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<DataVolumeCondition>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DataVolumeCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<String>,
}

/// The semantic checks CDI's webhook makes: one source, one of `storage`/`pvc`, a size.
pub fn validate(obj: &Value) -> Vec<crate::status::Cause> {
    validate_spec(obj.get("spec").unwrap_or(&Value::Null), "spec")
}

/// [`validate`] for a spec at `path` (a DataVolume's, or a VM's template's).
pub fn validate_spec(spec: &Value, path: &str) -> Vec<crate::status::Cause> {
    use crate::status::Cause;
    let obj = &serde_json::json!({"spec": spec});
    let mut c = Vec::new();
    let sources: Vec<&String> =
        obj.pointer("/spec/source").and_then(Value::as_object).into_iter().flatten().map(|(k, _)| k).collect();
    if sources.len() != 1 {
        c.push(Cause::invalid(
            format!("{path}.source"),
            "exactly one source must be set (http, registry, pvc, upload or blank)",
        ));
    }
    let storage = obj.pointer("/spec/storage");
    let pvc = obj.pointer("/spec/pvc");
    let (claim, field) = match (storage, pvc) {
        (Some(_), Some(_)) => {
            c.push(Cause::invalid(path, "only one of storage and pvc may be set"));
            return c;
        }
        (Some(s), None) => (s, format!("{path}.storage")),
        (None, Some(p)) => (p, format!("{path}.pvc")),
        (None, None) => {
            c.push(Cause::invalid(format!("{path}.storage"), "one of storage and pvc is required"));
            return c;
        }
    };
    let size = claim.pointer("/resources/requests/storage");
    match size.map(crate::quantity::from_value) {
        None => c.push(Cause::required(format!("{field}.resources.requests.storage"))),
        Some(Err(e)) => c.push(Cause::invalid(format!("{field}.resources.requests.storage"), e)),
        Some(Ok(0)) => {
            c.push(Cause::invalid(format!("{field}.resources.requests.storage"), "must be greater than zero"))
        }
        Some(Ok(_)) => {}
    }
    if field.ends_with(".pvc") && claim.get("accessModes").and_then(Value::as_array).is_none_or(|m| m.is_empty()) {
        c.push(Cause::invalid(format!("{field}.accessModes"), "at least 1 access mode is required"));
    }
    c
}

/// CDI's progress format: a percentage with two decimals.
pub fn progress(fraction: f64) -> String {
    format!("{:.2}%", (fraction * 100.0).clamp(0.0, 100.0))
}

impl DataVolume {
    /// The claim's spec, whichever of `storage` and `pvc` gives it.
    pub fn claim_spec(&self) -> Option<&PersistentVolumeClaimSpec> {
        self.spec.storage.as_ref().or(self.spec.pvc.as_ref())
    }

    /// The source's kind (`http`, `blank`, ...).
    pub fn source_kind(&self) -> Cow<'_, str> {
        self.spec.source.as_object().and_then(|o| o.keys().next()).map_or("".into(), |k| k.as_str().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn datavolumes_are_checked_as_cdi_checks_them() {
        let dv = |spec: Value| json!({"spec": spec});
        let ok = dv(json!({"source": {"http": {"url": "http://x/d.qcow2"}},
            "storage": {"resources": {"requests": {"storage": "1Gi"}}}}));
        assert!(validate(&ok).is_empty(), "{:?}", validate(&ok));
        let two = dv(json!({"source": {"http": {"url": "u"}, "blank": {}},
            "storage": {"resources": {"requests": {"storage": "1Gi"}}}}));
        assert_eq!(validate(&two)[0].field, "spec.source");
        let no_size = dv(json!({"source": {"blank": {}}, "storage": {}}));
        assert_eq!(validate(&no_size)[0].field, "spec.storage.resources.requests.storage");
        let pvc = dv(json!({"source": {"blank": {}}, "pvc": {"resources": {"requests": {"storage": "1Gi"}}}}));
        assert_eq!(validate(&pvc)[0].field, "spec.pvc.accessModes");
        assert_eq!(progress(0.473), "47.30%");
        assert_eq!(progress(1.0), "100.00%");
    }
}
