//! The VMI status the agent reports, as pure functions of the VMI and what happened on the node.

use kumo_api::conditions::set as set_condition;
use kumo_api::kubevirt::status_with_phase;
use serde_json::{json, Value};

pub use kumo_api::meta::now_rfc3339 as now;

fn conditions(vmi: &Value) -> Vec<Value> {
    vmi.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default()
}

/// The guest is up: Running, Ready, with the interface's address.
pub fn running(vmi: &Value, iface: Option<(&str, &str, &str)>, accel: &str, now: &str) -> Value {
    let mut st = status_with_phase(vmi, "Running", now);
    if let Some((name, ip, mac)) = iface {
        st["interfaces"] = json!([{"name": name, "interfaceName": "eth0", "ipAddress": ip, "ipAddresses": [ip],
            "mac": mac, "infoSource": "domain"}]);
    }
    let mut c = conditions(vmi);
    set_condition(&mut c, "Ready", "True", "", "", now);
    set_condition(
        &mut c,
        "LiveMigratable",
        "False",
        "NotMigratable",
        "live migration is not supported by kumo yet",
        now,
    );
    st["conditions"] = json!(c);
    st["qosClass"] = json!("Burstable");
    st["launcherContainerImageVersion"] = json!(format!("kumo-agent/{} ({accel})", env!("CARGO_PKG_VERSION")));
    st
}

/// Something on the node failed: Failed, not Ready, with the reason.
pub fn failed(vmi: &Value, reason: &str, message: &str, now: &str) -> Value {
    let mut st = status_with_phase(vmi, "Failed", now);
    st["reason"] = json!(reason);
    let mut c = conditions(vmi);
    set_condition(&mut c, "Ready", "False", reason, message, now);
    set_condition(&mut c, "Synchronized", "False", reason, message, now);
    st["conditions"] = json!(c);
    st
}

/// QEMU exited on its own: the guest powered off (Succeeded) or QEMU died (Failed).
pub fn finished(vmi: &Value, succeeded: bool, message: &str, now: &str) -> Value {
    if !succeeded {
        return failed(vmi, "QemuExited", message, now);
    }
    let mut st = status_with_phase(vmi, "Succeeded", now);
    let mut c = conditions(vmi);
    set_condition(&mut c, "Ready", "False", "GuestShutdown", message, now);
    st["conditions"] = json!(c);
    st
}

/// Paused or resumed by request.
pub fn paused(vmi: &Value, paused: bool, now: &str) -> Value {
    let mut st = vmi.get("status").cloned().unwrap_or(json!({}));
    let mut c = conditions(vmi);
    if paused {
        set_condition(&mut c, "Paused", "True", "PausedByUser", "VMI was paused by user", now);
        set_condition(&mut c, "Ready", "False", "Paused", "the guest is paused", now);
    } else {
        c.retain(|x| x["type"] != "Paused");
        set_condition(&mut c, "Ready", "True", "", "", now);
    }
    st["conditions"] = json!(c);
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_statuses() {
        let vmi = json!({"status": {"phase": "Scheduled", "nodeName": "n"}});
        let r = running(&vmi, Some(("default", "10.244.0.5", "02:00:00:00:00:01")), "tcg", "t1");
        assert_eq!(r["phase"], "Running");
        assert_eq!(r["nodeName"], "n");
        assert_eq!(r["interfaces"][0]["ipAddress"], "10.244.0.5");
        assert_eq!(r["conditions"][0]["type"], "Ready");
        let v = json!({"status": r});
        let p = paused(&v, true, "t2");
        assert!(p["conditions"].as_array().unwrap().iter().any(|c| c["type"] == "Paused" && c["status"] == "True"));
        let f = failed(&v, "ErrImagePull", "no such image", "t3");
        assert_eq!((f["phase"].as_str(), f["reason"].as_str()), (Some("Failed"), Some("ErrImagePull")));
        assert_eq!(f["conditions"][0]["message"], "no such image");
        assert_eq!(f["phaseTransitionTimestamps"].as_array().unwrap().len(), 2);
        assert_eq!(finished(&v, true, "bye", "t4")["phase"], "Succeeded");
    }
}
