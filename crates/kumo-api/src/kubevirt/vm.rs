//! The VirtualMachine: which VMI should exist (`vm_crd()` lists the fields served), and the status its
//! controller reports (every field of it, as the controller writes the whole status).

use super::status::Condition;
use super::vmi::VirtualMachineInstanceSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A virtual machine that keeps a VirtualMachineInstance running (or not) per its `runStrategy`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct VirtualMachine {
    pub metadata: ObjectMeta,
    pub spec: VirtualMachineSpec,
    pub status: Option<VirtualMachineStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VirtualMachineSpec {
    /// Deprecated: `runStrategy` says more. The two are mutually exclusive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<bool>,
    /// Always, RerunOnFailure, Manual, Halted or Once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<String>,
    pub template: VirtualMachineInstanceTemplateSpec,
    /// DataVolumes the VM owns (made with it, deleted with it), named by their metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_volume_templates: Option<Vec<DataVolumeTemplateSpec>>,
    /// The flavor giving the VM its CPU and memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instancetype: Option<crate::instancetype::FlavorRef>,
    /// The devices and topology the VM prefers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preference: Option<crate::instancetype::FlavorRef>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DataVolumeTemplateSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMeta>,
    pub spec: crate::cdi::DataVolumeSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VirtualMachineInstanceTemplateSpec {
    /// Labels and annotations the VMI gets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMeta>,
    pub spec: VirtualMachineInstanceSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VirtualMachineStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub printable_status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub printable_status_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desired_generation: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
    /// Start/stop requests queued by the start/stop/restart subresources, oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_change_requests: Option<Vec<StateChangeRequest>>,
    /// The crash-loop backoff of a VM whose VMIs keep failing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_failure: Option<StartFailure>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StateChangeRequest {
    /// Start or Stop.
    pub action: String,
    /// For a Stop: the VMI it is meant for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct StartFailure {
    /// Signed as in the schema, so a stored negative count still reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_fail_count: Option<i64>,
    #[serde(rename = "lastFailedVMIUID", skip_serializing_if = "Option::is_none")]
    pub last_failed_vmi_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_timestamp: Option<String>,
}
