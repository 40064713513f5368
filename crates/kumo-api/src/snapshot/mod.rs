//! KubeVirt's `snapshot.kubevirt.io/v1beta1` kinds as kumo serves them: VirtualMachineSnapshot,
//! VirtualMachineSnapshotContent and VirtualMachineRestore (CRDs installed at start with KubeVirt's, with
//! KubeVirt's columns), and the fields the snapshot controller reads as Rust types. kumo snapshots a volume
//! as a qcow2 internal snapshot of its image: no CSI VolumeSnapshot objects are involved (see the README).

use crate::kubevirt::object::custom_kind;
use crate::kubevirt::{col, condition_list, crd_in};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub const GROUP: &str = "snapshot.kubevirt.io";
pub const VERSION: &str = "v1beta1";
/// Held by a VirtualMachineSnapshot until its volumes' snapshots are gone.
pub const PROTECTION_FINALIZER: &str = "snapshot.kubevirt.io/vmsnapshot-protection";

fn target_ref() -> Value {
    json!({"type": "object", "required": ["kind", "name"], "properties": {
        "apiGroup": {"type": "string"}, "kind": {"type": "string", "enum": ["VirtualMachine"]},
        "name": {"type": "string"}}})
}

fn error_schema() -> Value {
    json!({"type": "object", "properties": {"message": {"type": "string"}, "time": {"type": "string"}}})
}

fn schema(spec: Value, status: Value) -> Value {
    json!({"type": "object", "required": ["spec"], "properties": {"spec": spec, "status": status}})
}

/// The three CRDs.
pub fn crds() -> Vec<Value> {
    let names = json!({"type": "object", "properties": {
        "includedVolumes": {"type": "array", "items": {"type": "string"}},
        "excludedVolumes": {"type": "array", "items": {"type": "string"}}}});
    let snapshot = schema(
        json!({"type": "object", "required": ["source"], "properties": {"source": target_ref(),
            "failureDeadline": {"type": "string"}}}),
        json!({"type": "object", "properties": {
            "phase": {"type": "string"}, "readyToUse": {"type": "boolean"}, "creationTime": {"type": "string", "nullable": true},
            "sourceUID": {"type": "string"}, "virtualMachineSnapshotContentName": {"type": "string"},
            "indications": {"type": "array", "items": {"type": "string"}}, "conditions": condition_list(),
            "error": error_schema(), "snapshotVolumes": names}}),
    );
    let content = schema(
        json!({"type": "object", "required": ["source"], "properties": {
            "virtualMachineSnapshotName": {"type": "string"},
            "source": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "volumeBackups": {"type": "array", "items": {"type": "object", "required": ["volumeName"], "properties": {
                "volumeName": {"type": "string"}, "volumeSnapshotName": {"type": "string"},
                "persistentVolumeClaim": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}}),
        json!({"type": "object", "properties": {
            "readyToUse": {"type": "boolean"}, "creationTime": {"type": "string", "nullable": true},
            "error": error_schema(),
            "volumeSnapshotStatus": {"type": "array", "items": {"type": "object", "properties": {
                "volumeSnapshotName": {"type": "string"}, "readyToUse": {"type": "boolean"},
                "creationTime": {"type": "string", "nullable": true}, "error": error_schema()}}}}}),
    );
    let restore = schema(
        json!({"type": "object", "required": ["target", "virtualMachineSnapshotName"], "properties": {
            "target": target_ref(), "virtualMachineSnapshotName": {"type": "string"}}}),
        json!({"type": "object", "properties": {
            "complete": {"type": "boolean"}, "restoreTime": {"type": "string", "nullable": true},
            "conditions": condition_list(),
            "restores": {"type": "array", "items": {"type": "object", "properties": {
                "volumeName": {"type": "string"}, "persistentVolumeClaim": {"type": "string"},
                "volumeSnapshotName": {"type": "string"}}}}}}),
    );
    vec![
        crd_in(
            GROUP,
            VERSION,
            "VirtualMachineSnapshot",
            "virtualmachinesnapshots",
            &["vmsnapshot", "vmsnapshots"],
            snapshot,
            vec![
                col("SourceKind", "string", ".spec.source.kind", 0),
                col("SourceName", "string", ".spec.source.name", 0),
                col("Phase", "string", ".status.phase", 0),
                col("ReadyToUse", "boolean", ".status.readyToUse", 0),
                col("CreationTime", "date", ".status.creationTime", 0),
                col("Error", "string", ".status.error.message", 0),
            ],
        ),
        crd_in(
            GROUP,
            VERSION,
            "VirtualMachineSnapshotContent",
            "virtualmachinesnapshotcontents",
            &["vmsnapshotcontent", "vmsnapshotcontents"],
            content,
            vec![
                col("ReadyToUse", "boolean", ".status.readyToUse", 0),
                col("CreationTime", "date", ".status.creationTime", 0),
                col("Error", "string", ".status.error.message", 0),
            ],
        ),
        crd_in(
            GROUP,
            VERSION,
            "VirtualMachineRestore",
            "virtualmachinerestores",
            &["vmrestore", "vmrestores"],
            restore,
            vec![
                col("TargetKind", "string", ".spec.target.kind", 0),
                col("TargetName", "string", ".spec.target.name", 0),
                col("Complete", "boolean", ".status.complete", 0),
                col("RestoreTime", "date", ".status.restoreTime", 0),
                col("Error", "string", ".status.conditions[?(@.type=='Failure')].message", 0),
            ],
        ),
    ]
}

/// What a snapshot or restore refers to (always a VirtualMachine).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TargetRef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_group: Option<String>,
    pub kind: String,
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct VirtualMachineSnapshot {
    pub metadata: ObjectMeta,
    pub spec: SnapshotSpec,
    pub status: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SnapshotSpec {
    pub source: TargetRef,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct VirtualMachineSnapshotContent {
    pub metadata: ObjectMeta,
    pub spec: Value,
    pub status: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct VirtualMachineRestore {
    pub metadata: ObjectMeta,
    pub spec: RestoreSpec,
    pub status: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RestoreSpec {
    pub target: TargetRef,
    pub virtual_machine_snapshot_name: String,
}

custom_kind!(VirtualMachineSnapshot, "VirtualMachineSnapshot", "virtualmachinesnapshots", GROUP, VERSION);
custom_kind!(
    VirtualMachineSnapshotContent,
    "VirtualMachineSnapshotContent",
    "virtualmachinesnapshotcontents",
    GROUP,
    VERSION
);
custom_kind!(VirtualMachineRestore, "VirtualMachineRestore", "virtualmachinerestores", GROUP, VERSION);
