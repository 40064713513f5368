//! KubeVirt's `kubevirt.io/v1` API as kumo serves it: the VirtualMachine and VirtualMachineInstance CRDs
//! (installed by the server at start-up, and usable as-is on a real Kubernetes cluster), the two kinds as Rust
//! types ([`VirtualMachine`], [`VirtualMachineInstance`]: what validation, the controllers and the node agent
//! all read), and the semantic checks KubeVirt's admission webhooks make ([`validate`]). Fields kumo does not
//! implement are neither in the schemas nor in the types, and the CRDs carry [`REJECT_UNKNOWN_ANNOTATION`], so
//! such a field is refused by name instead of being pruned.

mod defaults;
pub(crate) mod object;
mod probe;
pub mod published;
mod replicaset;
mod status;
#[cfg(test)]
mod tests;
mod validate;
mod vm;
mod vmi;

pub use defaults::{apply_vmi as apply_vmi_defaults, HOOK_SIDECARS_ANNOTATION};
pub use probe::*;
pub use replicaset::*;
pub use status::*;
pub use validate::validate;
pub use vm::*;
pub use vmi::*;

use serde_json::{json, Value};

/// On a CRD: unknown fields are a 422 naming them, whatever the request's fieldValidation.
pub const REJECT_UNKNOWN_ANNOTATION: &str = "kumo.dev/reject-unknown-fields";
pub const GROUP: &str = "kubevirt.io";
pub const VERSION: &str = "v1";
/// On a VMI: the node agent pauses (`"true"`) or resumes the guest to match (set by the pause subresources).
pub const PAUSE_ANNOTATION: &str = "kumo.dev/paused";
/// On a VMI: the node it is bound to (KubeVirt's label, kept equal to `status.nodeName` by the VMI controller), so
/// each node agent lists and watches only its own VMIs.
pub const NODE_NAME_LABEL: &str = "kubevirt.io/nodeName";
/// On a Node: where its agent serves guest consoles, and the SHA-256 of that endpoint's certificate, which the
/// API server pins when it proxies a console.
pub const CONSOLE_ENDPOINT_ANNOTATION: &str = "kumo.dev/console-endpoint";
pub const CONSOLE_FINGERPRINT_ANNOTATION: &str = "kumo.dev/console-cert-sha256";
/// On a Node: how long its agent may go without renewing its Lease before its watchdog kills its guests. The
/// control plane fails the node's VMIs over only after the grace period plus this; a node without it (no
/// fencing) never has its VMIs failed over.
pub const FENCING_PERIOD_ANNOTATION: &str = "kumo.dev/fencing-period-seconds";

const VMI_SPEC: &str = include_str!("../../crds/kubevirt-vmi-spec.yaml");
const VMI_STATUS: &str = include_str!("../../crds/kubevirt-vmi-status.yaml");

pub(crate) fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).expect("embedded CRD schema is valid YAML")
}

pub(crate) fn condition_list() -> Value {
    json!({"type": "array", "items": {"type": "object", "required": ["type", "status"], "properties": {
        "type": {"type": "string"}, "status": {"type": "string"}, "reason": {"type": "string"},
        "message": {"type": "string"}, "lastProbeTime": {"type": "string", "nullable": true},
        "lastTransitionTime": {"type": "string", "nullable": true}}}})
}

pub(crate) fn col(name: &str, type_: &str, path: &str, priority: i64) -> Value {
    json!({"name": name, "type": type_, "jsonPath": path, "priority": priority})
}

fn crd(kind: &str, plural: &str, short: &[&str], schema: Value, columns: Vec<Value>) -> Value {
    crd_in(GROUP, VERSION, kind, plural, short, schema, columns)
}

/// A namespaced CRD kumo serves, with a status subresource, refusing fields it does not implement by name.
pub(crate) fn crd_in(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    short: &[&str],
    schema: Value,
    columns: Vec<Value>,
) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}"), "labels": {"app.kubernetes.io/managed-by": "kumo"},
            "annotations": {REJECT_UNKNOWN_ANNOTATION: "true"}},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": kind, "listKind": format!("{kind}List"), "plural": plural,
                "singular": kind.to_lowercase(), "shortNames": short, "categories": ["all"]},
            "versions": [{"name": version, "served": true, "storage": true,
                "schema": {"openAPIV3Schema": schema},
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns}],
        },
    })
}

/// The VirtualMachineInstance CRD.
pub fn vmi_crd() -> Value {
    let schema = json!({"type": "object", "description": "VirtualMachineInstance is a running virtual machine.",
        "required": ["spec"],
        "properties": {"spec": yaml(VMI_SPEC), "status": yaml(VMI_STATUS)}});
    crd(
        "VirtualMachineInstance",
        "virtualmachineinstances",
        &["vmi", "vmis"],
        schema,
        vec![
            col("Age", "date", ".metadata.creationTimestamp", 0),
            col("Phase", "string", ".status.phase", 0),
            col("IP", "string", ".status.interfaces[0].ipAddress", 0),
            col("NodeName", "string", ".status.nodeName", 0),
            col("Ready", "string", ".status.conditions[?(@.type=='Ready')].status", 0),
            col("Live-Migratable", "string", ".status.conditions[?(@.type=='LiveMigratable')].status", 1),
            col("Paused", "string", ".status.conditions[?(@.type=='Paused')].status", 1),
        ],
    )
}

fn flavor_ref(description: &str) -> Value {
    json!({"type": "object", "required": ["name"], "description": description, "properties": {
        "name": {"type": "string"},
        "kind": {"type": "string", "enum": [crate::instancetype::INSTANCETYPE, crate::instancetype::CLUSTER_INSTANCETYPE,
            crate::instancetype::PREFERENCE, crate::instancetype::CLUSTER_PREFERENCE,
            "virtualmachineinstancetype", "virtualmachineclusterinstancetype",
            "virtualmachinepreference", "virtualmachineclusterpreference"]},
        "revisionName": {"type": "string", "description": "The ControllerRevision holding the flavor in use."}}})
}

/// A VirtualMachine's spec schema (a pool's VM template has it too).
pub fn vm_spec_schema() -> Value {
    json!({"type": "object", "description": "Desired state of the VirtualMachine.", "required": ["template"],
    "properties": {
        "running": {"type": "boolean", "description": "Deprecated: use runStrategy."},
        "runStrategy": {"type": "string", "enum": ["Always", "RerunOnFailure", "Manual", "Halted", "Once"],
            "description": "When the VirtualMachineInstance should run."},
        "template": {"type": "object", "required": ["spec"], "properties": {
            "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "spec": yaml(VMI_SPEC)}},
        "instancetype": flavor_ref("The instancetype (flavor) giving the VM its CPU and memory."),
        "preference": flavor_ref("The preference saying which devices and topology the VM prefers."),
        "dataVolumeTemplates": {"type": "array", "description": "DataVolumes the VM owns.",
            "items": {"type": "object", "required": ["spec"], "properties": {
                "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "spec": crate::cdi::spec_schema()}}},
    }})
}

/// The VirtualMachine CRD.
pub fn vm_crd() -> Value {
    let spec = vm_spec_schema();
    let status = json!({"type": "object", "properties": {
        "printableStatus": {"type": "string"}, "ready": {"type": "boolean"}, "created": {"type": "boolean"},
        "runStrategy": {"type": "string"}, "desiredGeneration": {"type": "integer"},
        "observedGeneration": {"type": "integer"}, "conditions": condition_list(),
        "stateChangeRequests": {"type": "array", "items": {"type": "object", "required": ["action"], "properties": {
            "action": {"type": "string", "enum": ["Start", "Stop"]}, "uid": {"type": "string"},
            "data": {"type": "object", "additionalProperties": {"type": "string"}}}}},
        "printableStatusReason": {"type": "string"},
        "startFailure": {"type": "object", "properties": {"consecutiveFailCount": {"type": "integer"},
            "lastFailedVMIUID": {"type": "string"}, "retryAfterTimestamp": {"type": "string"}}},
    }});
    let schema = json!({"type": "object", "description": "VirtualMachine handles the lifecycle of a VirtualMachineInstance.",
        "required": ["spec"], "properties": {"spec": spec, "status": status}});
    crd(
        "VirtualMachine",
        "virtualmachines",
        &["vm", "vms"],
        schema,
        vec![
            col("Age", "date", ".metadata.creationTimestamp", 0),
            col("Status", "string", ".status.printableStatus", 0),
            col("Ready", "string", ".status.conditions[?(@.type=='Ready')].status", 0),
        ],
    )
}

/// Every CRD kumo installs: KubeVirt's (snapshots and flavors included) and CDI's.
pub fn crds() -> Vec<Value> {
    let mut all = vec![
        vm_crd(),
        vmi_crd(),
        vmirs_crd(),
        crate::cdi::datavolume_crd(),
        crate::cdi::cdiconfig_crd(),
        crate::cdi::upload_token_request_crd(),
    ];
    all.extend(crate::snapshot::crds());
    all.extend(crate::instancetype::crds());
    all.push(crate::pool::crd());
    all
}
