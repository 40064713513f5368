//! `status.conditions` of VirtualMachines and VirtualMachineInstances, shared by the controllers and the node
//! agent.

use crate::kubevirt::Condition;

/// The status ("True"/"False"/"Unknown") of condition `type_`, if present.
pub fn status<'a>(list: &'a [Condition], type_: &str) -> Option<&'a str> {
    list.iter().find(|c| c.type_ == type_).map(|c| c.status.as_str())
}

pub fn is_true(list: &[Condition], type_: &str) -> bool {
    status(list, type_) == Some("True")
}

/// Sets a condition in a conditions list, keeping lastTransitionTime when the status does not change.
pub fn set(list: &mut Vec<Condition>, type_: &str, status: &str, reason: &str, message: &str, now: &str) {
    match list.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Some(now.into());
            }
            c.status = status.into();
            c.reason = Some(reason.into());
            c.message = Some(message.into());
        }
        None => list.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_probe_time: None,
            last_transition_time: Some(now.into()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_kept_when_status_unchanged() {
        let mut l = vec![];
        set(&mut l, "Ready", "False", "Booting", "", "t1");
        set(&mut l, "Ready", "False", "StillBooting", "", "t2");
        assert_eq!(l[0].last_transition_time.as_deref(), Some("t1"));
        set(&mut l, "Ready", "True", "Up", "", "t3");
        assert_eq!(l[0].last_transition_time.as_deref(), Some("t3"));
        assert!(is_true(&l, "Ready"));
        // Written as KubeVirt writes a new condition: lastProbeTime null, never left out.
        let v = serde_json::to_value(&l[0]).unwrap();
        assert_eq!(v["lastProbeTime"], serde_json::Value::Null);
        assert!(v.as_object().unwrap().contains_key("lastProbeTime"));
    }
}
