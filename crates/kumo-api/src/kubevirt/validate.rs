//! KubeVirt's semantic checks (what its validating webhooks refuse), on the typed spec.

use super::replicaset::VirtualMachineInstanceReplicaSetSpec;
use super::vm::VirtualMachineSpec;
use super::vmi::{KernelBoot, VirtualMachineInstanceSpec};
use crate::status::Cause;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::HashSet;

/// Checks a VM or VMI object (as the API server holds it, after schema validation).
pub fn validate(kind: &str, obj: &Value) -> Vec<Cause> {
    match kind {
        "VirtualMachine" => match spec::<VirtualMachineSpec>(obj) {
            Ok(spec) => {
                let mut c = Vec::new();
                if spec.running.is_some() && spec.run_strategy.is_some() {
                    c.push(Cause::invalid("spec.running", "running and runStrategy are mutually exclusive"));
                }
                c.extend(validate_vmi_spec(&spec.template.spec, "spec.template.spec"));
                if spec.instancetype.is_some() {
                    c.extend(crate::instancetype::conflicts(&spec.template.spec, "spec.template.spec"));
                }
                let template_annotations = obj.pointer("/spec/template/metadata/annotations");
                c.extend(no_hook_sidecars(template_annotations, "spec.template.metadata.annotations"));
                for (i, t) in
                    obj.pointer("/spec/dataVolumeTemplates").and_then(Value::as_array).into_iter().flatten().enumerate()
                {
                    let path = format!("spec.dataVolumeTemplates[{i}]");
                    if t.pointer("/metadata/name").and_then(Value::as_str).is_none_or(str::is_empty) {
                        c.push(Cause::required(format!("{path}.metadata.name")));
                    }
                    c.extend(crate::cdi::validate_spec(t.get("spec").unwrap_or(&Value::Null), &format!("{path}.spec")));
                }
                c
            }
            Err(c) => vec![c],
        },
        "VirtualMachineInstance" => match spec::<VirtualMachineInstanceSpec>(obj) {
            Ok(spec) => {
                let mut c = no_hook_sidecars(obj.pointer("/metadata/annotations"), "metadata.annotations");
                c.extend(validate_vmi_spec(&spec, "spec"));
                c
            }
            Err(c) => vec![c],
        },
        "VirtualMachineInstanceReplicaSet" => match spec::<VirtualMachineInstanceReplicaSetSpec>(obj) {
            Ok(spec) => {
                let mut c = super::replicaset::validate_selector(
                    obj.pointer("/spec/selector"),
                    obj.pointer("/spec/template/metadata/labels"),
                    "spec",
                    "spec.template.metadata.labels",
                );
                c.extend(validate_vmi_spec(&spec.template.spec, "spec.template.spec"));
                c
            }
            Err(c) => vec![c],
        },
        _ => vec![],
    }
}

/// The object's spec as `T`. One that does not read as `T` is refused here: the controllers and the node agent
/// read these objects as `T`, so one they cannot read must not be stored. (The schema already catches most
/// such objects; this catches the free-form parts, such as `affinity`, that do not hold what they should.)
fn spec<T: DeserializeOwned + Default>(obj: &Value) -> Result<T, Cause> {
    match obj.get("spec") {
        None | Some(Value::Null) => Ok(T::default()),
        Some(s) => T::deserialize(s).map_err(|e| Cause::invalid("spec", format!("Invalid value: {e}"))),
    }
}

/// Exactly one of `set` (field name, whether it is set) must be set.
fn one_of(set: &[(&str, bool)], path: &str, what: &str, c: &mut Vec<Cause>) {
    let found = set.iter().filter(|(_, is)| *is).count();
    if found != 1 {
        let list = set.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ");
        c.push(Cause::invalid(path, format!("exactly one {what} must be set (one of {list}); found {found}")));
    }
}

/// KubeVirt runs sidecar hooks only with its Sidecar feature gate; kumo has none, so such a VMI is refused
/// rather than run without them.
fn no_hook_sidecars(annotations: Option<&Value>, path: &str) -> Vec<Cause> {
    let key = super::HOOK_SIDECARS_ANNOTATION;
    match annotations.and_then(|a| a.get(key)) {
        Some(_) => vec![Cause::invalid(
            format!("{path}[{key}]"),
            "Forbidden: sidecar hooks need KubeVirt's Sidecar feature gate, which kumo does not implement",
        )],
        None => vec![],
    }
}

fn validate_vmi_spec(spec: &VirtualMachineInstanceSpec, p: &str) -> Vec<Cause> {
    let mut c = super::probe::validate(spec, p);
    if let Some(t) = spec.domain.machine.as_ref().and_then(|m| m.type_.as_deref()) {
        if t != "q35" {
            // A versioned type (pc-q35-7.2) would pin a QEMU release the node may not have: only q35 for now.
            c.push(Cause::invalid(
                format!("{p}.domain.machine.type"),
                format!("Unsupported value: {t:?}: kumo runs the q35 machine type only"),
            ));
        }
    }
    validate_quantities(spec, p, &mut c);
    let volumes: Vec<&str> = spec.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    let networks: Vec<&str> = spec.networks.iter().flatten().map(|n| n.name.as_str()).collect();
    let mut seen = HashSet::new();
    for v in &volumes {
        if !seen.insert(v) {
            c.push(Cause::invalid(format!("{p}.volumes"), format!("Duplicate value: \"{v}\"")));
        }
    }
    let devices = &spec.domain.devices;
    for (i, d) in devices.disks.iter().flatten().enumerate() {
        let name = &d.name;
        if !volumes.contains(&name.as_str()) {
            c.push(Cause::invalid(
                format!("{p}.domain.devices.disks[{i}].name"),
                format!("Invalid value: \"{name}\": no volume of that name (each disk must match a volume)"),
            ));
        }
        let hotplugged = spec.volumes.iter().flatten().any(|v| v.name == *name && v.is_hotplugged());
        if hotplugged && d.disk.as_ref().and_then(|x| x.bus.as_deref()) != Some("scsi") {
            c.push(Cause::invalid(
                format!("{p}.domain.devices.disks[{i}].disk.bus"),
                "a hot-plugged volume's disk must be a disk on bus scsi (the guest's SCSI controller takes it live)",
            ));
        }
        if [d.disk.is_some(), d.cdrom.is_some(), d.lun.is_some()].iter().filter(|set| **set).count() > 1 {
            c.push(Cause::invalid(format!("{p}.domain.devices.disks[{i}]"), "only one of disk, cdrom, lun may be set"));
        }
    }
    for (i, iface) in devices.interfaces.iter().flatten().enumerate() {
        let path = format!("{p}.domain.devices.interfaces[{i}]");
        let name = &iface.name;
        if !networks.contains(&name.as_str()) {
            c.push(Cause::invalid(
                format!("{path}.name"),
                format!("Invalid value: \"{name}\": no network of that name (each interface must match a network)"),
            ));
        }
        let bindings = [("masquerade", iface.masquerade.is_some()), ("bridge", iface.bridge.is_some())];
        one_of(&bindings, &path, "binding method", &mut c);
        if iface.ports.is_some() && iface.masquerade.is_none() {
            c.push(Cause::invalid(format!("{path}.ports"), "ports are only supported with masquerade"));
        }
    }
    for (i, n) in spec.networks.iter().flatten().enumerate() {
        one_of(&[("pod", n.pod.is_some())], &format!("{p}.networks[{i}]"), "network source", &mut c);
    }
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let path = format!("{p}.volumes[{i}]");
        let sources = [
            ("containerDisk", v.container_disk.is_some()),
            ("cloudInitNoCloud", v.cloud_init_no_cloud.is_some()),
            ("cloudInitConfigDrive", v.cloud_init_config_drive.is_some()),
            ("emptyDisk", v.empty_disk.is_some()),
            ("ephemeral", v.ephemeral.is_some()),
            ("hostDisk", v.host_disk.is_some()),
            ("persistentVolumeClaim", v.persistent_volume_claim.is_some()),
            ("dataVolume", v.data_volume.is_some()),
        ];
        one_of(&sources, &path, "volume source", &mut c);
        for (key, cfg) in
            [("cloudInitNoCloud", &v.cloud_init_no_cloud), ("cloudInitConfigDrive", &v.cloud_init_config_drive)]
        {
            let Some(cfg) = cfg else { continue };
            let data = [cfg.user_data.is_some(), cfg.user_data_base64.is_some(), cfg.secret_ref.is_some()];
            if data.iter().filter(|set| **set).count() > 1 {
                c.push(Cause::invalid(
                    format!("{path}.{key}"),
                    "only one of userData, userDataBase64, secretRef may be set",
                ));
            }
        }
    }
    if let Some(kb) = spec.domain.firmware.as_ref().and_then(|f| f.kernel_boot.as_ref()) {
        validate_kernel_boot(kb, &format!("{p}.domain.firmware.kernelBoot"), &mut c);
    }
    let cloud_init = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.cloud_init_no_cloud.is_some() || v.cloud_init_config_drive.is_some())
        .count();
    if cloud_init > 1 {
        c.push(Cause::invalid(format!("{p}.volumes"), "at most one cloud-init volume is supported"));
    }
    c
}

/// Memory and resource quantities must parse (as the schema's quantity pattern requires in Kubernetes): a
/// VM whose `memory.guest` is "lots" is refused when stored, not when its guest first starts.
fn validate_quantities(spec: &VirtualMachineInstanceSpec, p: &str, c: &mut Vec<Cause>) {
    let domain = &spec.domain;
    let mut check = |path: String, q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| {
        if let Err(e) = crate::quantity::milli(&q.0) {
            c.push(Cause::invalid(path, e));
        }
    };
    if let Some(g) = domain.memory.as_ref().and_then(|m| m.guest.as_ref()) {
        check(format!("{p}.domain.memory.guest"), g);
    }
    if let Some(r) = &domain.resources {
        for (kind, map) in [("requests", &r.requests), ("limits", &r.limits)] {
            for (name, q) in map.iter().flatten() {
                check(format!("{p}.domain.resources.{kind}[{name}]"), q);
            }
        }
    }
}

/// KubeVirt's rules for kernelBoot, plus kumo's: QEMU boots the kernel directly, so an initrd alone (which
/// KubeVirt lets through to libvirt) cannot boot and is refused here.
fn validate_kernel_boot(kb: &KernelBoot, p: &str, c: &mut Vec<Cause>) {
    let Some(container) = &kb.container else {
        if kb.kernel_args.is_some() {
            c.push(Cause::invalid(format!("{p}.kernelArgs"), "kernel arguments need a kernel: set container too"));
        }
        return;
    };
    if container.kernel_path.is_none() {
        let why = if container.initrd_path.is_some() {
            "required: kumo boots the kernel directly, and an initrd alone cannot boot"
        } else {
            "required: the path of the kernel in the image"
        };
        c.push(Cause::invalid(format!("{p}.container.kernelPath"), why));
    }
    for (key, file) in [("kernelPath", &container.kernel_path), ("initrdPath", &container.initrd_path)] {
        let Some(f) = file else { continue };
        let parts: Vec<&str> = f.split('/').skip(1).collect();
        if !f.starts_with('/') || parts.iter().any(|part| matches!(*part, "" | "." | "..")) {
            c.push(Cause::invalid(
                format!("{p}.container.{key}"),
                format!("Invalid value: \"{f}\": must be an absolute path to a file, without \".\", \"..\" or \"//\""),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    fn quantities_must_parse() {
        let vmi = json!({"spec": {"domain": {"devices": {}, "memory": {"guest": "lots"},
            "resources": {"requests": {"memory": "128Mi", "cpu": "500m"}, "limits": {"cpu": "two"}}}}});
        let causes = validate("VirtualMachineInstance", &vmi);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, vec!["spec.domain.memory.guest", "spec.domain.resources.limits[cpu]"]);
        assert!(causes[0].message.contains("\"lots\""), "{:?}", causes[0]);
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

    #[test]
    fn messages_and_cloud_init_rules() {
        let vmi = json!({"spec": {"domain": {"devices": {
                "interfaces": [{"name": "default", "bridge": {}, "ports": [{"port": 80}]}]}},
            "networks": [{"name": "default"}],
            "volumes": [{"name": "a", "cloudInitNoCloud": {"userData": "x", "secretRef": {"name": "s"}}},
                {"name": "a", "cloudInitConfigDrive": {"userData": "y"}}]}});
        let got: Vec<(String, String)> =
            validate("VirtualMachineInstance", &vmi).into_iter().map(|c| (c.field, c.message)).collect();
        let want = [
            ("spec.volumes", "Duplicate value: \"a\""),
            ("spec.domain.devices.interfaces[0].ports", "ports are only supported with masquerade"),
            ("spec.networks[0]", "exactly one network source must be set (one of pod); found 0"),
            ("spec.volumes[0].cloudInitNoCloud", "only one of userData, userDataBase64, secretRef may be set"),
            ("spec.volumes", "at most one cloud-init volume is supported"),
        ];
        assert_eq!(got, want.map(|(f, m)| (f.to_string(), m.to_string())));
    }

    #[test]
    fn a_spec_the_typed_api_cannot_read_is_refused() {
        // `affinity` is free-form in the schema; one that is not an Affinity would stall every reader.
        let vmi = json!({"spec": {"domain": {"devices": {}}, "affinity": {"nodeAffinity": "anywhere"}}});
        let causes = validate("VirtualMachineInstance", &vmi);
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(causes[0].field, "spec");
        assert!(causes[0].message.starts_with("Invalid value: invalid type"), "{}", causes[0].message);
        assert!(validate("VirtualMachineInstance", &json!({"metadata": {"name": "x"}})).is_empty());
    }
}
