//! The flavors a new cluster gets: KubeVirt's common-instancetypes `u1` sizes (general purpose, one vCPU per
//! 2 GiB from `u1.small` up) and preferences for Linux guests. Installed once, when the cluster has none, so an
//! administrator's changes stay.

use serde_json::{json, Value};

const MANAGED: &str = "app.kubernetes.io/managed-by";

fn flavor(kind: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": format!("{}/{}", super::GROUP, super::VERSION), "kind": kind,
        "metadata": {"name": name, "labels": {MANAGED: "kumo", "instancetype.kubevirt.io/vendor": "kumo"}},
        "spec": spec})
}

/// `u1.nano` … `u1.2xlarge`: (vCPUs, memory).
pub fn seed_instancetypes() -> Vec<Value> {
    [
        ("u1.nano", 1, "512Mi"),
        ("u1.micro", 1, "1Gi"),
        ("u1.small", 1, "2Gi"),
        ("u1.medium", 1, "4Gi"),
        ("u1.large", 2, "8Gi"),
        ("u1.xlarge", 4, "16Gi"),
        ("u1.2xlarge", 8, "32Gi"),
    ]
    .into_iter()
    .map(|(name, cpus, mem)| {
        flavor(super::CLUSTER_INSTANCETYPE, name, json!({"cpu": {"guest": cpus}, "memory": {"guest": mem}}))
    })
    .collect()
}

/// Preferences for Linux guests: virtio disks and NICs, an RNG, vCPUs as sockets.
pub fn seed_preferences() -> Vec<Value> {
    ["linux", "fedora", "ubuntu", "centos.stream9", "debian", "alpine", "cirros"]
        .into_iter()
        .map(|name| {
            flavor(
                super::CLUSTER_PREFERENCE,
                name,
                json!({"cpu": {"preferredCPUTopology": "preferSockets"},
                    "devices": {"preferredDiskBus": "virtio", "preferredInterfaceModel": "virtio", "preferredRng": {}}}),
            )
        })
        .collect()
}
