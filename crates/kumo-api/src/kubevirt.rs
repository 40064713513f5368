//! KubeVirt's `kubevirt.io/v1` API as kumo serves it: the VirtualMachine and VirtualMachineInstance CRDs
//! (installed by the server at start-up, and usable as-is on a real Kubernetes cluster), and the semantic
//! checks KubeVirt's admission webhooks make. Fields kumo does not implement are not in the schemas, and the
//! CRDs carry [`REJECT_UNKNOWN_ANNOTATION`], so such a field is refused by name instead of being pruned.

use crate::status::Cause;
use serde_json::{json, Value};
use std::collections::HashSet;

/// On a CRD: unknown fields are a 422 naming them, whatever the request's fieldValidation.
pub const REJECT_UNKNOWN_ANNOTATION: &str = "kumo.dev/reject-unknown-fields";
pub const GROUP: &str = "kubevirt.io";
/// On a VMI: the node agent pauses (`"true"`) or resumes the guest to match (set by the pause subresources).
pub const PAUSE_ANNOTATION: &str = "kumo.dev/paused";
/// On a Node: where its agent serves guest consoles, and the SHA-256 of that endpoint's certificate, which the
/// API server pins when it proxies a console.
pub const CONSOLE_ENDPOINT_ANNOTATION: &str = "kumo.dev/console-endpoint";
pub const CONSOLE_FINGERPRINT_ANNOTATION: &str = "kumo.dev/console-cert-sha256";

const VMI_SPEC: &str = include_str!("../crds/kubevirt-vmi-spec.yaml");
const VMI_STATUS: &str = include_str!("../crds/kubevirt-vmi-status.yaml");

fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).expect("embedded CRD schema is valid YAML")
}

fn condition_list() -> Value {
    json!({"type": "array", "items": {"type": "object", "required": ["type", "status"], "properties": {
        "type": {"type": "string"}, "status": {"type": "string"}, "reason": {"type": "string"},
        "message": {"type": "string"}, "lastProbeTime": {"type": "string", "nullable": true},
        "lastTransitionTime": {"type": "string", "nullable": true}}}})
}

fn col(name: &str, type_: &str, path: &str, priority: i64) -> Value {
    json!({"name": name, "type": type_, "jsonPath": path, "priority": priority})
}

fn crd(kind: &str, plural: &str, short: &[&str], schema: Value, columns: Vec<Value>) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{GROUP}"), "labels": {"app.kubernetes.io/managed-by": "kumo"},
            "annotations": {REJECT_UNKNOWN_ANNOTATION: "true"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "listKind": format!("{kind}List"), "plural": plural,
                "singular": kind.to_lowercase(), "shortNames": short, "categories": ["all"]},
            "versions": [{"name": "v1", "served": true, "storage": true,
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

/// The VirtualMachine CRD.
pub fn vm_crd() -> Value {
    let spec = json!({"type": "object", "description": "Desired state of the VirtualMachine.", "required": ["template"],
    "properties": {
        "running": {"type": "boolean", "description": "Deprecated: use runStrategy."},
        "runStrategy": {"type": "string", "enum": ["Always", "RerunOnFailure", "Manual", "Halted", "Once"],
            "description": "When the VirtualMachineInstance should run."},
        "template": {"type": "object", "required": ["spec"], "properties": {
            "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "spec": yaml(VMI_SPEC)}},
    }});
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

/// A VMI's status moved to `phase`, with the transition recorded in `phaseTransitionTimestamps` (only when
/// the phase changes), as KubeVirt reports it.
pub fn status_with_phase(vmi: &Value, phase: &str, now: &str) -> Value {
    let mut st = vmi.get("status").cloned().unwrap_or(json!({}));
    if st["phase"] != phase {
        let mut ts = st.get("phaseTransitionTimestamps").and_then(Value::as_array).cloned().unwrap_or_default();
        ts.push(json!({"phase": phase, "phaseTransitionTimestamp": now}));
        st["phaseTransitionTimestamps"] = json!(ts);
    }
    st["phase"] = json!(phase);
    st
}

pub fn crds() -> Vec<Value> {
    vec![vm_crd(), vmi_crd()]
}

/// KubeVirt's semantic checks (what its validating webhooks refuse), for a VM or VMI object.
pub fn validate(kind: &str, obj: &Value) -> Vec<Cause> {
    match kind {
        "VirtualMachine" => {
            let mut c = Vec::new();
            let spec = obj.get("spec").cloned().unwrap_or(json!({}));
            if spec.get("running").is_some() && spec.get("runStrategy").is_some() {
                c.push(Cause::invalid("spec.running", "running and runStrategy are mutually exclusive"));
            }
            if let Some(t) = spec.pointer("/template/spec") {
                c.extend(validate_vmi_spec(t, "spec.template.spec"));
            }
            c
        }
        "VirtualMachineInstance" => validate_vmi_spec(obj.get("spec").unwrap_or(&json!({})), "spec"),
        _ => vec![],
    }
}

fn names(list: Option<&Value>) -> Vec<String> {
    list.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|x| x.get("name").and_then(Value::as_str).map(String::from)).collect())
        .unwrap_or_default()
}

/// Exactly one of `keys` must be set on `item`.
fn one_of(item: &Value, keys: &[&str], path: &str, what: &str, c: &mut Vec<Cause>) {
    let set: Vec<&&str> = keys.iter().filter(|k| item.get(**k).is_some()).collect();
    if set.len() != 1 {
        let list = keys.join(", ");
        c.push(Cause::invalid(path, format!("exactly one {what} must be set (one of {list}); found {}", set.len())));
    }
}

fn validate_vmi_spec(spec: &Value, p: &str) -> Vec<Cause> {
    let mut c = Vec::new();
    let volumes = names(spec.get("volumes"));
    let networks = names(spec.get("networks"));
    let mut seen = HashSet::new();
    for v in &volumes {
        if !seen.insert(v) {
            c.push(Cause::invalid(format!("{p}.volumes"), format!("Duplicate value: \"{v}\"")));
        }
    }
    let disks = spec.pointer("/domain/devices/disks").and_then(Value::as_array).cloned().unwrap_or_default();
    for (i, d) in disks.iter().enumerate() {
        let name = d.get("name").and_then(Value::as_str).unwrap_or("");
        if !volumes.iter().any(|v| v == name) {
            c.push(Cause::invalid(
                format!("{p}.domain.devices.disks[{i}].name"),
                format!("Invalid value: \"{name}\": no volume of that name (each disk must match a volume)"),
            ));
        }
        if ["disk", "cdrom", "lun"].iter().filter(|k| d.get(**k).is_some()).count() > 1 {
            c.push(Cause::invalid(format!("{p}.domain.devices.disks[{i}]"), "only one of disk, cdrom, lun may be set"));
        }
    }
    let ifaces = spec.pointer("/domain/devices/interfaces").and_then(Value::as_array).cloned().unwrap_or_default();
    for (i, iface) in ifaces.iter().enumerate() {
        let path = format!("{p}.domain.devices.interfaces[{i}]");
        let name = iface.get("name").and_then(Value::as_str).unwrap_or("");
        if !networks.iter().any(|n| n == name) {
            c.push(Cause::invalid(
                format!("{path}.name"),
                format!("Invalid value: \"{name}\": no network of that name (each interface must match a network)"),
            ));
        }
        one_of(iface, &["masquerade", "bridge"], &path, "binding method", &mut c);
        if iface.get("ports").is_some() && iface.get("masquerade").is_none() {
            c.push(Cause::invalid(format!("{path}.ports"), "ports are only supported with masquerade"));
        }
    }
    for (i, n) in spec.get("networks").and_then(Value::as_array).into_iter().flatten().enumerate() {
        one_of(n, &["pod"], &format!("{p}.networks[{i}]"), "network source", &mut c);
    }
    let sources = ["containerDisk", "cloudInitNoCloud", "cloudInitConfigDrive", "emptyDisk", "ephemeral", "hostDisk"];
    for (i, v) in spec.get("volumes").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let path = format!("{p}.volumes[{i}]");
        one_of(v, &sources, &path, "volume source", &mut c);
        for ci in ["cloudInitNoCloud", "cloudInitConfigDrive"] {
            if let Some(cfg) = v.get(ci) {
                let data =
                    ["userData", "userDataBase64", "secretRef"].iter().filter(|k| cfg.get(**k).is_some()).count();
                if data > 1 {
                    c.push(Cause::invalid(
                        format!("{path}.{ci}"),
                        "only one of userData, userDataBase64, secretRef may be set",
                    ));
                }
            }
        }
    }
    if let Some(kb) = spec.pointer("/domain/firmware/kernelBoot") {
        validate_kernel_boot(kb, &format!("{p}.domain.firmware.kernelBoot"), &mut c);
    }
    let cloud_init = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v.get("cloudInitNoCloud").is_some() || v.get("cloudInitConfigDrive").is_some())
        .count();
    if cloud_init > 1 {
        c.push(Cause::invalid(format!("{p}.volumes"), "at most one cloud-init volume is supported"));
    }
    c
}

/// KubeVirt's rules for kernelBoot, plus kumo's: QEMU boots the kernel directly, so an initrd alone (which
/// KubeVirt lets through to libvirt) cannot boot and is refused here.
fn validate_kernel_boot(kb: &Value, p: &str, c: &mut Vec<Cause>) {
    let Some(container) = kb.get("container") else {
        if kb.get("kernelArgs").is_some() {
            c.push(Cause::invalid(format!("{p}.kernelArgs"), "kernel arguments need a kernel: set container too"));
        }
        return;
    };
    let path = |key: &str| container.get(key).and_then(Value::as_str);
    if path("kernelPath").is_none() {
        let why = if path("initrdPath").is_some() {
            "required: kumo boots the kernel directly, and an initrd alone cannot boot"
        } else {
            "required: the path of the kernel in the image"
        };
        c.push(Cause::invalid(format!("{p}.container.kernelPath"), why));
    }
    for key in ["kernelPath", "initrdPath"] {
        if let Some(f) = path(key) {
            let parts: Vec<&str> = f.split('/').skip(1).collect();
            if !f.starts_with('/') || parts.iter().any(|part| matches!(*part, "" | "." | "..")) {
                c.push(Cause::invalid(
                    format!("{p}.container.{key}"),
                    format!(
                        "Invalid value: \"{f}\": must be an absolute path to a file, without \".\", \"..\" or \"//\""
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_are_valid_and_serve_v1() {
        for c in crds() {
            assert!(crate::crd::validate(&c).is_empty(), "{:?}", crate::crd::validate(&c));
            let defs = crate::crd::resource_defs(&c);
            assert_eq!(defs[0].version, "v1");
            assert!(defs[0].reject_unknown_fields);
        }
        // The YAML anchor for cloud-init sources resolved into both volume kinds.
        let vmi = vmi_crd();
        let vol = vmi
            .pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/volumes/items/properties")
            .unwrap();
        assert_eq!(vol["cloudInitConfigDrive"], vol["cloudInitNoCloud"]);
    }

    #[test]
    fn semantic_checks_name_fields() {
        let vm = json!({"spec": {"running": true, "runStrategy": "Always", "template": {"spec": {
            "domain": {"devices": {"disks": [{"name": "nope", "disk": {}}],
                "interfaces": [{"name": "default", "masquerade": {}, "bridge": {}}]}},
            "networks": [{"name": "default", "pod": {}}],
            "volumes": [{"name": "root", "containerDisk": {"image": "x"}, "emptyDisk": {"capacity": "1Gi"}}]}}}});
        let fields: Vec<String> = validate("VirtualMachine", &vm).into_iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            vec![
                "spec.running",
                "spec.template.spec.domain.devices.disks[0].name",
                "spec.template.spec.domain.devices.interfaces[0]",
                "spec.template.spec.volumes[0]",
            ]
        );
    }

    #[test]
    fn kernel_boot_needs_a_kernel_at_an_absolute_path() {
        let vmi = |kb: Value| json!({"spec": {"domain": {"firmware": {"kernelBoot": kb}}}});
        let fields = |kb: Value| -> Vec<String> {
            validate("VirtualMachineInstance", &vmi(kb)).into_iter().map(|c| c.field).collect()
        };
        let kb = "spec.domain.firmware.kernelBoot";
        let ok = json!({"kernelArgs": "console=ttyS0", "container": {"image": "i", "kernelPath": "/boot/vmlinuz",
            "initrdPath": "/boot/initrd.img"}});
        assert!(fields(ok).is_empty());
        assert_eq!(fields(json!({"kernelArgs": "quiet"})), vec![format!("{kb}.kernelArgs")]);
        assert_eq!(
            fields(json!({"container": {"image": "i", "initrdPath": "/boot/initrd"}})),
            vec![format!("{kb}.container.kernelPath")]
        );
        assert_eq!(
            fields(json!({"container": {"image": "i", "kernelPath": "boot/vmlinuz", "initrdPath": "/a/../b"}})),
            vec![format!("{kb}.container.kernelPath"), format!("{kb}.container.initrdPath")]
        );
        for odd in ["/boot//vmlinuz", "/boot/./vmlinuz", "/boot/", "/"] {
            let got = fields(json!({"container": {"image": "i", "kernelPath": odd}}));
            assert_eq!(got, vec![format!("{kb}.container.kernelPath")], "{odd}");
        }
    }
}
