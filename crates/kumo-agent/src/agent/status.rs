//! The VMI status the agent reports, as pure functions of the VMI and what happened on the node. Each returns
//! the whole status (what was there, changed), which the agent merge-patches.

use kumo_api::conditions::set as set_condition;
use kumo_api::kubevirt::{
    status_with_phase, Condition, InterfaceStatus, VirtualMachineInstance, VirtualMachineInstanceStatus,
};

pub use kumo_api::meta::now_rfc3339 as now;

fn conditions(vmi: &VirtualMachineInstance) -> Vec<Condition> {
    vmi.conditions().to_vec()
}

/// The guest is up: Running, Ready, with the interface's address.
pub fn running(
    vmi: &VirtualMachineInstance,
    iface: Option<(&str, &str, &str)>,
    accel: &str,
    now: &str,
) -> VirtualMachineInstanceStatus {
    let mut st = status_with_phase(vmi, "Running", now);
    if let Some((name, ip, mac)) = iface {
        st.interfaces = Some(vec![InterfaceStatus {
            name: Some(name.into()),
            interface_name: Some("eth0".into()),
            ip_address: Some(ip.into()),
            ip_addresses: Some(vec![ip.into()]),
            mac: Some(mac.into()),
            info_source: Some("domain".into()),
        }]);
    }
    let mut c = conditions(vmi);
    set_ready(vmi, &mut c, now);
    set_condition(
        &mut c,
        "LiveMigratable",
        "False",
        "NotMigratable",
        "live migration is not supported by kumo yet",
        now,
    );
    st.conditions = Some(c);
    st.qos_class = Some("Burstable".into());
    st.launcher_container_image_version = Some(format!("kumo-agent/{} ({accel})", env!("CARGO_PKG_VERSION")));
    st
}

/// A running, unpaused guest is Ready — at once without a readiness probe; with one, once it passes (the
/// agent's prober says so, see [`probed`]).
fn set_ready(vmi: &VirtualMachineInstance, c: &mut Vec<Condition>, now: &str) {
    if vmi.spec.readiness_probe.is_some() {
        set_condition(c, "Ready", "False", "ReadinessProbe", super::probes::WAITING, now);
    } else {
        set_condition(c, "Ready", "True", "", "", now);
    }
}

/// The Ready condition as the readiness probe has it; None when the VMI already shows that.
pub fn probed(vmi: &VirtualMachineInstance, ready: bool, why: &str, now: &str) -> Option<VirtualMachineInstanceStatus> {
    let mut st = vmi.status.clone().unwrap_or_default();
    let mut c = conditions(vmi);
    if c.iter().any(|x| x.type_ == "Paused" && x.status == "True") {
        return None; // a paused guest is not Ready, whatever its probe said last
    }
    if ready {
        set_condition(&mut c, "Ready", "True", "", "", now);
    } else {
        set_condition(&mut c, "Ready", "False", "ReadinessProbeFailed", why, now);
    }
    st.conditions = Some(c);
    (Some(&st) != vmi.status.as_ref()).then_some(st)
}

/// Something on the node failed: Failed, not Ready, with the reason.
pub fn failed(vmi: &VirtualMachineInstance, reason: &str, message: &str, now: &str) -> VirtualMachineInstanceStatus {
    let mut st = status_with_phase(vmi, "Failed", now);
    st.reason = Some(reason.into());
    let mut c = conditions(vmi);
    set_condition(&mut c, "Ready", "False", reason, message, now);
    set_condition(&mut c, "Synchronized", "False", reason, message, now);
    st.conditions = Some(c);
    st
}

/// QEMU exited on its own: the guest powered off (Succeeded) or QEMU died (Failed).
pub fn finished(
    vmi: &VirtualMachineInstance,
    succeeded: bool,
    message: &str,
    now: &str,
) -> VirtualMachineInstanceStatus {
    if !succeeded {
        return failed(vmi, "QemuExited", message, now);
    }
    let mut st = status_with_phase(vmi, "Succeeded", now);
    let mut c = conditions(vmi);
    set_condition(&mut c, "Ready", "False", "GuestShutdown", message, now);
    st.conditions = Some(c);
    st
}

/// Paused or resumed by request.
pub fn paused(vmi: &VirtualMachineInstance, paused: bool, now: &str) -> VirtualMachineInstanceStatus {
    let mut st = vmi.status.clone().unwrap_or_default();
    let mut c = conditions(vmi);
    if paused {
        set_condition(&mut c, "Paused", "True", "PausedByUser", "VMI was paused by user", now);
        set_condition(&mut c, "Ready", "False", "Paused", "the guest is paused", now);
    } else {
        c.retain(|x| x.type_ != "Paused");
        set_ready(vmi, &mut c, now);
    }
    st.conditions = Some(c);
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lifecycle_statuses() {
        let vmi: VirtualMachineInstance =
            serde_json::from_value(json!({"status": {"phase": "Scheduled", "nodeName": "n"}})).unwrap();
        let r = running(&vmi, Some(("default", "10.244.0.5", "02:00:00:00:00:01")), "tcg", "t1");
        let rj = serde_json::to_value(&r).unwrap();
        assert_eq!(rj["phase"], "Running");
        assert_eq!(rj["nodeName"], "n");
        assert_eq!(rj["interfaces"][0]["ipAddress"], "10.244.0.5");
        assert_eq!(rj["conditions"][0]["type"], "Ready");
        let v = VirtualMachineInstance { status: Some(r), ..vmi };
        let p = paused(&v, true, "t2");
        assert!(p.conditions.iter().flatten().any(|c| c.type_ == "Paused" && c.status == "True"));
        let f = serde_json::to_value(failed(&v, "ErrImagePull", "no such image", "t3")).unwrap();
        assert_eq!((f["phase"].as_str(), f["reason"].as_str()), (Some("Failed"), Some("ErrImagePull")));
        assert_eq!(f["conditions"][0]["message"], "no such image");
        assert_eq!(f["phaseTransitionTimestamps"].as_array().unwrap().len(), 2);
        assert_eq!(finished(&v, true, "bye", "t4").phase.as_deref(), Some("Succeeded"));
    }
}
