//! KubeVirt's VirtualMachineInstanceReplicaSet (`kubevirt.io/v1`, short name `vmirs`): keeps `replicas` VMIs
//! made from its template running, replacing failed ones. Served with the scale subresource, so
//! `kubectl scale vmirs` and a HorizontalPodAutoscaler can drive it.

use super::status::Condition;
use super::vm::VirtualMachineInstanceTemplateSpec;
use super::{col, condition_list, crd, yaml, VMI_SPEC};
use crate::status::Cause;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct VirtualMachineInstanceReplicaSet {
    pub metadata: ObjectMeta,
    pub spec: VirtualMachineInstanceReplicaSetSpec,
    pub status: Option<VirtualMachineInstanceReplicaSetStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VirtualMachineInstanceReplicaSetSpec {
    /// How many VMIs should run; 1 when unset, as in KubeVirt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    pub selector: LabelSelector,
    pub template: VirtualMachineInstanceTemplateSpec,
    /// While true, no VMI is made or removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VirtualMachineInstanceReplicaSetStatus {
    /// VMIs that exist and have not finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// The selector as a string, for the scale subresource (and so for autoscalers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
}

impl VirtualMachineInstanceReplicaSet {
    pub fn replicas(&self) -> i32 {
        self.spec.replicas.unwrap_or(1)
    }
}

/// The CRD, with the scale subresource (`.spec.replicas`, `.status.replicas`, `.status.labelSelector`).
pub fn vmirs_crd() -> Value {
    let spec = json!({"type": "object", "required": ["selector", "template"], "properties": {
        "replicas": {"type": "integer", "format": "int32", "minimum": 0,
            "description": "Number of desired VMIs; defaults to 1."},
        "selector": label_selector_schema(),
        "template": {"type": "object", "required": ["spec"], "properties": {
            "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "spec": yaml(VMI_SPEC)}},
        "paused": {"type": "boolean", "description": "While true, VMIs are neither made nor removed."},
    }});
    let status = json!({"type": "object", "properties": {
        "replicas": {"type": "integer", "format": "int32"},
        "readyReplicas": {"type": "integer", "format": "int32"},
        "labelSelector": {"type": "string"},
        "conditions": condition_list(),
    }});
    let schema = json!({"type": "object", "required": ["spec"],
        "description": "VirtualMachineInstanceReplicaSet keeps a number of VMIs made from a template running.",
        "properties": {"spec": spec, "status": status}});
    let mut crd = crd(
        "VirtualMachineInstanceReplicaSet",
        "virtualmachineinstancereplicasets",
        &["vmirs", "vmirss"],
        schema,
        vec![
            col("Desired", "integer", ".spec.replicas", 0),
            col("Current", "integer", ".status.replicas", 0),
            col("Ready", "integer", ".status.readyReplicas", 0),
            col("Age", "date", ".metadata.creationTimestamp", 0),
        ],
    );
    crd["spec"]["versions"][0]["subresources"]["scale"] = json!({"specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas", "labelSelectorPath": ".status.labelSelector"});
    crd
}

/// A metav1.LabelSelector's schema.
pub fn label_selector_schema() -> Value {
    json!({"type": "object", "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array", "items": {"type": "object", "required": ["key", "operator"],
            "properties": {"key": {"type": "string"}, "operator": {"type": "string",
                "enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                "values": {"type": "array", "items": {"type": "string"}}}}}}})
}

/// A group's selector must select something and match the labels its template gives (otherwise the group
/// would make VMIs it cannot see and make more without end): checked as KubeVirt's webhook does.
pub fn validate_selector(
    selector: Option<&Value>,
    template_labels: Option<&Value>,
    path: &str,
    labels_path: &str,
) -> Vec<Cause> {
    let Some(selector) = selector.filter(|s| s.as_object().is_some_and(|o| !o.is_empty())) else {
        return vec![Cause::required(format!("{path}.selector"))];
    };
    let parsed = match crate::selector::LabelSelector::from_object(selector) {
        Ok(s) if s.is_empty() => {
            return vec![Cause::invalid(format!("{path}.selector"), "empty selector is invalid for a group")]
        }
        Ok(s) => s,
        Err(e) => return vec![Cause::invalid(format!("{path}.selector"), e)],
    };
    let labels = template_labels.and_then(Value::as_object);
    if !parsed.matches(labels) {
        let shown = labels.map(|l| Value::Object(l.clone()).to_string()).unwrap_or_else(|| "{}".into());
        return vec![Cause::invalid(
            format!("{path}.selector"),
            format!("selector does not match labels in {labels_path} ({shown})"),
        )];
    }
    vec![]
}
