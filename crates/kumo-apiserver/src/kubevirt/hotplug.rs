//! KubeVirt's `addvolume` and `removevolume` subresources (what `virtctl addvolume`/`removevolume` call): a
//! claim or DataVolume is added to a running VMI's spec as a hot-pluggable volume with its disk (or taken
//! out), and the node agent attaches it to the guest (or detaches it). On a VM they change its template too,
//! so the volume stays across restarts.

use crate::handlers::Call;
use crate::objects::parse_rv;
use crate::state::ApiServer;
use kumo_api::status::Cause;
use kumo_api::{meta, ApiError};
use serde_json::{json, Value};
use std::sync::Arc;

/// `PUT virtualmachines|virtualmachineinstances/{name}/addvolume|removevolume`.
pub async fn serve(api: &Arc<ApiServer>, call: &Call, sub: &str) -> Result<(), ApiError> {
    let (vm_def, vmi_def) = (super::vm_def(api)?, super::vmi_def(api)?);
    let (ns, name, p) = (call.namespace(), call.name(), &call.path);
    let opts = super::options::read(sub, &call.body)?;
    let body = Value::Object(opts.fields.clone());
    let vmi = api.objects.try_get(&vmi_def, ns, name).await?;
    let running = vmi.as_ref().filter(|i| i.pointer("/status/phase").and_then(Value::as_str) == Some("Running"));
    if p.resource == "virtualmachines" {
        // The VM's template keeps the volume; a running instance gets it now too.
        let mut vm = api.objects.get(&vm_def, ns, name).await?;
        apply(sub, &mut vm["spec"]["template"]["spec"], &body)?;
        check("VirtualMachine", name, &vm)?;
        if !opts.dry_run {
            api.objects.update(&vm_def, &vm, parse_rv(meta::resource_version(&vm))?).await?;
        }
    } else if running.is_none() {
        return Err(super::conflict(&vmi_def, name, "VMI is not running"));
    }
    if let Some(i) = running {
        let mut next = i.clone();
        apply(sub, &mut next["spec"], &body)?;
        check("VirtualMachineInstance", name, &next)?;
        if !opts.dry_run {
            api.objects.update(&vmi_def, &next, parse_rv(meta::resource_version(i))?).await?;
        }
    }
    Ok(())
}

/// Adds the volume `opts` (KubeVirt's AddVolumeOptions) to a VMI spec.
pub fn add(spec: &mut Value, opts: &Value) -> Result<(), String> {
    let name = opts.get("name").and_then(Value::as_str).filter(|n| !n.is_empty());
    let name = name.ok_or("AddVolumeOptions requires name to be set")?.to_string();
    let source = opts.get("volumeSource").and_then(Value::as_object).ok_or("AddVolumeOptions requires volumeSource")?;
    let mut volume = json!({"name": name});
    match (source.get("persistentVolumeClaim"), source.get("dataVolume")) {
        (Some(pvc), None) => {
            let mut pvc = pvc.clone();
            pvc["hotpluggable"] = json!(true);
            volume["persistentVolumeClaim"] = pvc;
        }
        (None, Some(dv)) => {
            let mut dv = dv.clone();
            dv["hotpluggable"] = json!(true);
            volume["dataVolume"] = dv;
        }
        _ => return Err("volumeSource must be one of persistentVolumeClaim and dataVolume".into()),
    }
    let has =
        |list: &str| spec.get(list).and_then(Value::as_array).into_iter().flatten().any(|v| v["name"] == json!(name));
    if has("volumes") {
        return Err(format!("Unable to add volume [{name}] because volume with that name already exists"));
    }
    let mut disk = opts.get("disk").cloned().unwrap_or_else(|| json!({"disk": {"bus": "scsi"}}));
    disk["name"] = json!(name);
    if disk.get("disk").is_none() && disk.get("lun").is_none() && disk.get("cdrom").is_none() {
        disk["disk"] = json!({"bus": "scsi"});
    }
    push(&mut spec["volumes"], volume);
    push(&mut spec["domain"]["devices"]["disks"], disk);
    Ok(())
}

/// Removes the hot-plugged volume `name` (and its disk) from a VMI spec.
pub fn remove(spec: &mut Value, name: &str) -> Result<(), String> {
    let volumes = spec.get("volumes").and_then(Value::as_array).cloned().unwrap_or_default();
    let Some(v) = volumes.iter().find(|v| v["name"] == json!(name)) else {
        return Err(format!("Unable to remove volume [{name}] because it does not exist"));
    };
    let hot = ["persistentVolumeClaim", "dataVolume"].iter().any(|k| v[k]["hotpluggable"] == json!(true));
    if !hot {
        return Err(format!("Unable to remove volume [{name}] because it is not hotpluggable"));
    }
    for list in ["/volumes", "/domain/devices/disks"] {
        if let Some(items) = spec.pointer_mut(list).and_then(Value::as_array_mut) {
            items.retain(|i| i["name"] != json!(name));
        }
    }
    Ok(())
}

fn push(list: &mut Value, item: Value) {
    if !list.is_array() {
        *list = json!([]);
    }
    if let Some(a) = list.as_array_mut() {
        a.push(item);
    }
}

/// `add` or `remove` per the subresource (`opts`: the body, read by [`super::options::read`]), as an API
/// error naming what is wrong.
pub fn apply(sub: &str, spec: &mut Value, opts: &Value) -> Result<(), ApiError> {
    let done = if sub == "addvolume" {
        add(spec, opts)
    } else {
        let name = opts.get("name").and_then(Value::as_str).unwrap_or_default();
        remove(spec, name)
    };
    done.map_err(ApiError::bad_request)
}

/// The VMI's checks on the changed spec, as a 422.
pub fn check(kind: &str, name: &str, obj: &Value) -> Result<(), ApiError> {
    let causes: Vec<Cause> = kumo_api::kubevirt::validate(kind, obj);
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(kumo_api::kubevirt::GROUP, kind, name, causes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_are_added_hotpluggable_and_only_those_removed() {
        let mut spec = json!({"domain": {"devices": {"disks": [{"name": "root", "disk": {}}]}},
            "volumes": [{"name": "root", "containerDisk": {"image": "x"}}]});
        let opts = json!({"name": "data", "volumeSource": {"dataVolume": {"name": "data"}}});
        add(&mut spec, &opts).unwrap();
        assert_eq!(spec["volumes"][1], json!({"name": "data", "dataVolume": {"name": "data", "hotpluggable": true}}));
        assert_eq!(spec["domain"]["devices"]["disks"][1], json!({"name": "data", "disk": {"bus": "scsi"}}));
        assert!(add(&mut spec, &opts).unwrap_err().contains("already exists"));
        assert!(remove(&mut spec, "root").unwrap_err().contains("not hotpluggable"));
        assert!(remove(&mut spec, "nope").unwrap_err().contains("does not exist"));
        remove(&mut spec, "data").unwrap();
        assert_eq!(spec["volumes"].as_array().unwrap().len(), 1);
        assert_eq!(spec["domain"]["devices"]["disks"].as_array().unwrap().len(), 1);
        let mut bare = json!({"domain": {"devices": {}}});
        let pvc = json!({"name": "c", "volumeSource": {"persistentVolumeClaim": {"claimName": "c"}}});
        add(&mut bare, &pvc).unwrap();
        assert_eq!(bare["volumes"][0]["persistentVolumeClaim"]["hotpluggable"], true);
    }
}
