//! KubeVirt's flavors (`instancetype.kubevirt.io/v1beta1`): instancetypes say how much CPU and memory a VM gets,
//! preferences which devices and topology it prefers. Namespaced and cluster-wide kinds of each, the VM's
//! `spec.instancetype` / `spec.preference` references, and [`expand`]: what the VMI of a VM with a flavor
//! looks like. A VM keeps the flavor it started with in a ControllerRevision (see the VM controller), so an
//! edited or deleted flavor changes nothing until the VM is told to take the new one.

mod seed;

pub use seed::{seed_instancetypes, seed_preferences};

use crate::kubevirt::{col, crd_in, VirtualMachineInstanceSpec};
use crate::status::Cause;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub const GROUP: &str = "instancetype.kubevirt.io";
pub const VERSION: &str = "v1beta1";
pub const CLUSTER_INSTANCETYPE: &str = "VirtualMachineClusterInstancetype";
pub const INSTANCETYPE: &str = "VirtualMachineInstancetype";
pub const CLUSTER_PREFERENCE: &str = "VirtualMachineClusterPreference";
pub const PREFERENCE: &str = "VirtualMachinePreference";

/// A VM's `spec.instancetype` or `spec.preference`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct FlavorRef {
    pub name: String,
    /// The cluster-wide kind when unset, as in KubeVirt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The ControllerRevision holding the flavor the VM uses (set by the VM controller at first start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision_name: Option<String>,
}

impl FlavorRef {
    /// Whether it names a cluster-wide kind (the default).
    pub fn cluster_wide(&self, preference: bool) -> bool {
        let kind = self.kind.as_deref().unwrap_or(if preference { CLUSTER_PREFERENCE } else { CLUSTER_INSTANCETYPE });
        kind.to_ascii_lowercase().contains("cluster")
    }

    /// The kind of object it names, as served: one of the four flavor kinds.
    pub fn object_kind(&self, preference: bool) -> &'static str {
        match (preference, self.cluster_wide(preference)) {
            (false, true) => CLUSTER_INSTANCETYPE,
            (false, false) => INSTANCETYPE,
            (true, true) => CLUSTER_PREFERENCE,
            (true, false) => PREFERENCE,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstancetypeSpec {
    pub cpu: InstancetypeCpu,
    pub memory: InstancetypeMemory,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstancetypeCpu {
    /// vCPUs the guest sees.
    pub guest: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstancetypeMemory {
    pub guest: Option<Quantity>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PreferenceSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<PreferenceCpu>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<PreferenceDevices>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PreferenceCpu {
    /// preferSockets (the default), preferCores, preferThreads, preferSpread or preferAny.
    #[serde(rename = "preferredCPUTopology", skip_serializing_if = "Option::is_none")]
    pub preferred_cpu_topology: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PreferenceDevices {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preferred_disk_bus: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preferred_interface_model: Option<String>,
    /// Present: the guest gets a virtio-rng device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preferred_rng: Option<Value>,
}

/// An instancetype or preference object as stored (either scope), for reading its spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Flavor<S> {
    pub metadata: ObjectMeta,
    pub spec: S,
}

/// The VMI spec of a VM with `instancetype` and `preference`: the instancetype's CPU (as sockets, cores or
/// threads per the preferred topology) and memory, and the preferred devices where the template chose none.
pub fn expand(spec: &mut VirtualMachineInstanceSpec, it: Option<&InstancetypeSpec>, pref: Option<&PreferenceSpec>) {
    let domain = &mut spec.domain;
    if let Some(it) = it {
        let n = u64::from(it.cpu.guest.max(1));
        let topology = pref.and_then(|p| p.cpu.as_ref()).and_then(|c| c.preferred_cpu_topology.as_deref());
        let (sockets, cores, threads) = match topology {
            Some("preferCores") => (1, n, 1),
            Some("preferThreads") => (1, 1, n),
            _ => (n, 1, 1),
        };
        domain.cpu = Some(crate::kubevirt::Cpu { sockets: Some(sockets), cores: Some(cores), threads: Some(threads) });
        if let Some(m) = &it.memory.guest {
            domain.memory = Some(crate::kubevirt::Memory { guest: Some(m.clone()) });
        }
    }
    let Some(devices) = pref.and_then(|p| p.devices.as_ref()) else { return };
    if let Some(bus) = &devices.preferred_disk_bus {
        for d in spec.domain.devices.disks.iter_mut().flatten() {
            if let Some(disk) = d.disk.as_mut().filter(|x| x.bus.as_deref().is_none_or(str::is_empty)) {
                disk.bus = Some(bus.clone());
            }
            if d.disk.is_none() && d.cdrom.is_none() && d.lun.is_none() {
                d.disk = Some(crate::kubevirt::DiskTarget { bus: Some(bus.clone()), ..Default::default() });
            }
        }
    }
    if let Some(model) = &devices.preferred_interface_model {
        // The pod-network interface a VMI gets by default takes the preferred model too.
        let none = spec.domain.devices.interfaces.as_ref().is_none_or(Vec::is_empty);
        if none && spec.networks.as_ref().is_none_or(Vec::is_empty) {
            let default = "default".to_string();
            spec.domain.devices.interfaces = Some(vec![crate::kubevirt::Interface {
                name: default.clone(),
                masquerade: Some(crate::kubevirt::Empty {}),
                ..Default::default()
            }]);
            spec.networks =
                Some(vec![crate::kubevirt::Network { name: default, pod: Some(crate::kubevirt::Empty {}) }]);
        }
        for i in spec.domain.devices.interfaces.iter_mut().flatten() {
            if i.model.as_deref().is_none_or(str::is_empty) {
                i.model = Some(model.clone());
            }
        }
    }
    if devices.preferred_rng.is_some() && spec.domain.devices.rng.is_none() {
        spec.domain.devices.rng = Some(crate::kubevirt::Empty {});
    }
}

/// A VM whose instancetype gives CPU and memory must not set them in its template: KubeVirt's 422 naming the
/// field.
pub fn conflicts(template: &VirtualMachineInstanceSpec, path: &str) -> Vec<Cause> {
    let mut c = Vec::new();
    let d = &template.domain;
    if d.cpu.is_some() {
        c.push(Cause::invalid(format!("{path}.domain.cpu"), "VM field conflicts with selected instance type"));
    }
    if d.memory.as_ref().is_some_and(|m| m.guest.is_some()) {
        c.push(Cause::invalid(format!("{path}.domain.memory.guest"), "VM field conflicts with selected instance type"));
    }
    if d.resources.as_ref().and_then(|r| r.requests.as_ref()).is_some_and(|r| r.contains_key("memory")) {
        c.push(Cause::invalid(
            format!("{path}.domain.resources.requests.memory"),
            "VM field conflicts with selected instance type",
        ));
    }
    c
}

/// The checks on an instancetype or preference object.
pub fn validate(kind: &str, obj: &Value) -> Vec<Cause> {
    if kind.ends_with("Instancetype") {
        let mut c = Vec::new();
        if obj.pointer("/spec/cpu/guest").and_then(Value::as_u64).is_none_or(|g| g == 0) {
            c.push(Cause::required("spec.cpu.guest"));
        }
        if obj.pointer("/spec/memory/guest").is_none() {
            c.push(Cause::required("spec.memory.guest"));
        }
        return c;
    }
    vec![]
}

fn instancetype_schema() -> Value {
    json!({"type": "object", "required": ["cpu", "memory"], "properties": {
        "cpu": {"type": "object", "required": ["guest"], "properties": {
            "guest": {"type": "integer", "minimum": 1, "description": "vCPUs the guest sees."}}},
        "memory": {"type": "object", "required": ["guest"], "properties": {
            "guest": {"x-kubernetes-int-or-string": true, "description": "Memory the guest sees."}}}}})
}

fn preference_schema() -> Value {
    json!({"type": "object", "properties": {
        "cpu": {"type": "object", "properties": {"preferredCPUTopology": {"type": "string",
            "enum": ["preferSockets", "preferCores", "preferThreads", "preferSpread", "preferAny",
                     "sockets", "cores", "threads", "spread", "any"]}}},
        "devices": {"type": "object", "properties": {
            "preferredDiskBus": {"type": "string", "enum": ["virtio", "sata", "scsi"]},
            "preferredInterfaceModel": {"type": "string"},
            "preferredRng": {"type": "object"}}}}})
}

/// A CRD for one of the four kinds (`cluster`: cluster-scoped).
fn crd(kind: &str, plural: &str, short: &[&str], spec: Value, cluster: bool) -> Value {
    let schema = json!({"type": "object", "required": ["spec"], "properties": {"spec": spec}});
    let mut c =
        crd_in(GROUP, VERSION, kind, plural, short, schema, vec![col("Age", "date", ".metadata.creationTimestamp", 0)]);
    if cluster {
        c["spec"]["scope"] = json!("Cluster");
    }
    // No status: these are plain descriptions.
    c["spec"]["versions"][0]["subresources"] = json!({});
    c
}

/// The four flavor CRDs.
pub fn crds() -> Vec<Value> {
    vec![
        crd(
            INSTANCETYPE,
            "virtualmachineinstancetypes",
            &["vminstancetype", "vminstancetypes", "vmf", "vmfs"],
            instancetype_schema(),
            false,
        ),
        crd(
            CLUSTER_INSTANCETYPE,
            "virtualmachineclusterinstancetypes",
            &["vmclusterinstancetype", "vmclusterinstancetypes", "vmcf", "vmcfs"],
            instancetype_schema(),
            true,
        ),
        crd(PREFERENCE, "virtualmachinepreferences", &["vmpref", "vmprefs", "vmp", "vmps"], preference_schema(), false),
        crd(CLUSTER_PREFERENCE, "virtualmachineclusterpreferences", &["vmcp", "vmcps"], preference_schema(), true),
    ]
}

/// The plural of a flavor kind (for API paths).
pub fn plural(kind: &str) -> &'static str {
    match kind {
        INSTANCETYPE => "virtualmachineinstancetypes",
        PREFERENCE => "virtualmachinepreferences",
        CLUSTER_PREFERENCE => "virtualmachineclusterpreferences",
        _ => "virtualmachineclusterinstancetypes",
    }
}

#[cfg(test)]
mod tests;
