//! The defaults KubeVirt's mutating webhook gives a new VirtualMachineInstance, applied by the API server on
//! create, so what is stored (and what `kubectl get -o yaml` shows) is what runs:
//! - a disk (`disk: {bus: virtio}`) for every volume that has none, and a device for a disk that names none;
//! - the pod network with one interface when the VMI names neither (masquerade: kumo's default binding);
//! - machine type `q35`;
//! - the firmware UUID (the owning VM's uid, so it stays across the VM's restarts; else the VMI's own) and,
//!   from it, the SMBIOS serial;
//! - `resources.requests.memory` from `memory.guest`, and `memory.guest` from the request.
//!
//! Works on the JSON as it came (after schema checks), so nothing the types do not model is lost.

use serde_json::{json, Value};

/// The annotation of KubeVirt's sidecar hooks, which kumo does not run.
pub const HOOK_SIDECARS_ANNOTATION: &str = "hooks.kubevirt.io/hookSidecars";

fn object<'a>(v: &'a mut Value, key: &str) -> &'a mut Value {
    if !v.get(key).is_some_and(Value::is_object) {
        v[key] = json!({});
    }
    &mut v[key]
}

/// Volumes added live carry their own disk (the hotplug subresource adds both).
fn hotpluggable(vol: &Value) -> bool {
    ["persistentVolumeClaim", "dataVolume"]
        .iter()
        .any(|k| vol.pointer(&format!("/{k}/hotpluggable")) == Some(&json!(true)))
}

/// Applies the defaults to a VMI object about to be created; `firmware_uuid` is used when it sets none.
pub fn apply_vmi(obj: &mut Value, firmware_uuid: &str) {
    let spec = object(obj, "spec");
    let volumes: Vec<Value> = spec.get("volumes").and_then(Value::as_array).cloned().unwrap_or_default();
    {
        let devices = object(object(spec, "domain"), "devices");
        let disks = devices.get("disks").and_then(Value::as_array).cloned().unwrap_or_default();
        let mut disks: Vec<Value> = disks
            .into_iter()
            .map(|mut d| {
                if !["disk", "cdrom", "lun"].iter().any(|k| d.get(*k).is_some_and(|v| !v.is_null())) {
                    d["disk"] = json!({});
                }
                for (k, bus) in [("disk", "virtio"), ("cdrom", "sata"), ("lun", "scsi")] {
                    if let Some(dev) = d.get_mut(k).filter(|v| v.is_object()) {
                        if dev.get("bus").and_then(Value::as_str).is_none_or(str::is_empty) {
                            dev["bus"] = json!(bus);
                        }
                    }
                }
                d
            })
            .collect();
        for vol in &volumes {
            let Some(name) = vol.get("name").and_then(Value::as_str) else { continue };
            if !hotpluggable(vol) && !disks.iter().any(|d| d.get("name").and_then(Value::as_str) == Some(name)) {
                disks.push(json!({"name": name, "disk": {"bus": "virtio"}}));
            }
        }
        if !disks.is_empty() {
            devices["disks"] = json!(disks);
        }
    }
    let has = |v: &Value, k: &str| v.get(k).and_then(Value::as_array).is_some_and(|a| !a.is_empty());
    let no_ifaces = !spec.pointer("/domain/devices").is_some_and(|d| has(d, "interfaces"));
    if no_ifaces && !has(spec, "networks") {
        object(object(spec, "domain"), "devices")["interfaces"] = json!([{"name": "default", "masquerade": {}}]);
        spec["networks"] = json!([{"name": "default", "pod": {}}]);
    }
    let domain = object(spec, "domain");
    let machine = object(domain, "machine");
    if machine.get("type").and_then(Value::as_str).is_none_or(str::is_empty) {
        machine["type"] = json!("q35");
    }
    let firmware = object(domain, "firmware");
    if firmware.get("uuid").and_then(Value::as_str).is_none_or(str::is_empty) {
        firmware["uuid"] = json!(firmware_uuid);
    }
    if firmware.get("serial").and_then(Value::as_str).is_none_or(str::is_empty) {
        firmware["serial"] = firmware["uuid"].clone();
    }
    let guest = domain.pointer("/memory/guest").cloned();
    let request = domain.pointer("/resources/requests/memory").cloned();
    match (guest, request) {
        (Some(g), None) => {
            object(object(domain, "resources"), "requests")["memory"] = g;
        }
        (None, Some(r)) => {
            object(domain, "memory")["guest"] = r;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubevirts_example_without_disks_gets_them_and_the_rest() {
        let mut vmi = json!({"metadata": {"name": "x"}, "spec": {
            "domain": {"devices": {"disks": [{"name": "cd", "cdrom": {}}, {"name": "bare"}]},
                       "resources": {"requests": {"memory": "128Mi"}}},
            "volumes": [{"name": "containerdisk", "containerDisk": {"image": "i"}},
                        {"name": "cd", "containerDisk": {"image": "j"}},
                        {"name": "bare", "emptyDisk": {"capacity": "1Gi"}},
                        {"name": "hot", "persistentVolumeClaim": {"claimName": "c", "hotpluggable": true}}]}});
        apply_vmi(&mut vmi, "u-1");
        let s = &vmi["spec"];
        assert_eq!(
            s["domain"]["devices"]["disks"],
            json!([{"name": "cd", "cdrom": {"bus": "sata"}}, {"name": "bare", "disk": {"bus": "virtio"}},
                   {"name": "containerdisk", "disk": {"bus": "virtio"}}])
        );
        assert_eq!(s["domain"]["devices"]["interfaces"], json!([{"name": "default", "masquerade": {}}]));
        assert_eq!(s["networks"], json!([{"name": "default", "pod": {}}]));
        assert_eq!(s["domain"]["machine"]["type"], "q35");
        assert_eq!(s["domain"]["firmware"], json!({"uuid": "u-1", "serial": "u-1"}));
        assert_eq!(s["domain"]["memory"]["guest"], "128Mi");
        // Applying again changes nothing.
        let once = vmi.clone();
        apply_vmi(&mut vmi, "other");
        assert_eq!(vmi, once);
    }

    #[test]
    fn what_the_user_set_stays() {
        let mut vmi = json!({"spec": {"domain": {"devices": {"interfaces": [{"name": "n", "bridge": {}}],
                "disks": [{"name": "v", "disk": {"bus": "sata"}}]},
            "machine": {"type": "q35"}, "firmware": {"uuid": "mine"}, "memory": {"guest": "64Mi"}},
            "networks": [{"name": "n", "pod": {}}], "volumes": [{"name": "v", "emptyDisk": {"capacity": "1Gi"}}]}});
        apply_vmi(&mut vmi, "u-1");
        let d = &vmi["spec"]["domain"];
        assert_eq!(d["devices"]["interfaces"], json!([{"name": "n", "bridge": {}}]));
        assert_eq!(d["devices"]["disks"], json!([{"name": "v", "disk": {"bus": "sata"}}]));
        assert_eq!((d["machine"]["type"].as_str(), d["firmware"]["uuid"].as_str()), (Some("q35"), Some("mine")));
        assert_eq!(d["resources"]["requests"]["memory"], "64Mi");
    }
}
