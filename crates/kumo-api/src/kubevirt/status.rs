//! What kumo reports on a VirtualMachineInstance (`crds/kubevirt-vmi-status.yaml`, every field of it: the
//! controllers and the agent write the whole status back, so a field left out here would be lost), and the
//! condition type VMs and VMIs share.

use super::vmi::VirtualMachineInstance;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VirtualMachineInstanceStatus {
    /// `""`, Pending, Scheduling, Scheduled, Running, Succeeded, Failed or Unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launcher_container_image_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos_class: Option<String>,
    /// Free-form in the schema; kept as it came.
    #[serde(rename = "guestOSInfo", skip_serializing_if = "Option::is_none")]
    pub guest_os_info: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase_transition_timestamps: Option<Vec<PhaseTransition>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<InterfaceStatus>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
    /// Hot-plugged volumes and how far their attachment got (the node agent reports them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_status: Option<Vec<VolumeStatus>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VolumeStatus {
    pub name: String,
    /// The guest device (e.g. `sda`), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Present (empty) for a hot-plugged volume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hotplug_volume: Option<Value>,
}

impl VirtualMachineInstanceStatus {
    /// Moves to `phase`, recording the transition in `phaseTransitionTimestamps` (only when the phase
    /// changes), as KubeVirt reports it.
    pub fn set_phase(&mut self, phase: &str, now: &str) {
        if self.phase.as_deref() != Some(phase) {
            self.phase_transition_timestamps
                .get_or_insert_with(Vec::new)
                .push(PhaseTransition { phase: Some(phase.into()), phase_transition_timestamp: Some(now.into()) });
        }
        self.phase = Some(phase.into());
    }
}

/// A VMI's status moved to `phase` (see [`VirtualMachineInstanceStatus::set_phase`]).
pub fn status_with_phase(vmi: &VirtualMachineInstance, phase: &str, now: &str) -> VirtualMachineInstanceStatus {
    let mut st = vmi.status.clone().unwrap_or_default();
    st.set_phase(phase, now);
    st
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PhaseTransition {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase_transition_timestamp: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct InterfaceStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_addresses: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info_source: Option<String>,
}

/// A condition of a VM or VMI, as KubeVirt writes one. Times are kept as the strings they were (not
/// k8s-openapi's `Time`), so a status reads and writes back unchanged; both are always written, `null` when
/// unset, as KubeVirt's Go types marshal them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub last_probe_time: Option<String>,
    pub last_transition_time: Option<String>,
}
