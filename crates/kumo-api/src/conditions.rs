//! `status.conditions` on untyped objects, shared by the controllers and the node agent.

use serde_json::{json, Value};

/// The status ("True"/"False"/"Unknown") of condition `type_`, if present.
pub fn status<'a>(obj: &'a Value, type_: &str) -> Option<&'a str> {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
        .and_then(|c| c.get("status").and_then(Value::as_str))
}

pub fn is_true(obj: &Value, type_: &str) -> bool {
    status(obj, type_) == Some("True")
}

/// Sets a condition in a conditions list, keeping lastTransitionTime when the status does not change.
pub fn set(list: &mut Vec<Value>, type_: &str, status: &str, reason: &str, message: &str, now: &str) {
    let existing = list.iter_mut().find(|c| c.get("type").and_then(Value::as_str) == Some(type_));
    match existing {
        Some(c) => {
            if c.get("status").and_then(Value::as_str) != Some(status) {
                c["lastTransitionTime"] = json!(now);
            }
            c["status"] = json!(status);
            c["reason"] = json!(reason);
            c["message"] = json!(message);
        }
        None => list.push(json!({"type": type_, "status": status, "reason": reason, "message": message,
            "lastProbeTime": null, "lastTransitionTime": now})),
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
        assert_eq!(l[0]["lastTransitionTime"], "t1");
        set(&mut l, "Ready", "True", "Up", "", "t3");
        assert_eq!(l[0]["lastTransitionTime"], "t3");
        assert!(is_true(&json!({"status": {"conditions": l}}), "Ready"));
    }
}
