//! What a running guest's agent says about it, reported as KubeVirt does: the `AgentConnected` condition while
//! the agent answers `guest-ping`, and `status.guestOSInfo` from `guest-get-osinfo`. Looked at with each
//! reconcile of a running VMI (every few seconds); a guest without an agent costs one short timeout.

use super::LocalVm;
use crate::qemu::GuestAgent;
use kumo_api::conditions::set as set_condition;
use kumo_api::kubevirt::{VirtualMachineInstance, VirtualMachineInstanceStatus};
use serde_json::{json, Value};
use std::time::Duration;

/// A ping must come back within this (the guest may be busy under TCG; the next look tries again).
const PING_TIMEOUT: Duration = Duration::from_secs(2);
const INFO_TIMEOUT: Duration = Duration::from_secs(5);
pub const AGENT_CONNECTED: &str = "AgentConnected";

/// What the guest agent said: whether it answered, and its OS info when asked for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GuestView {
    pub connected: bool,
    pub os_info: Option<Value>,
}

/// The guest agent of a QEMU guest (a simulated one has none).
pub fn agent_of(l: &LocalVm) -> Option<GuestAgent> {
    Some(GuestAgent::new(l.vm.qemu()?.paths().guest_agent_socket()))
}

fn connected(vmi: &VirtualMachineInstance) -> bool {
    vmi.conditions().iter().any(|c| c.type_ == AGENT_CONNECTED && c.status == "True")
}

/// Asks the guest agent; the OS info only when the VMI does not show it yet (it does not change while the
/// guest runs).
pub async fn look(vmi: &VirtualMachineInstance, l: &LocalVm) -> GuestView {
    let Some(agent) = agent_of(l) else { return GuestView::default() };
    if agent.execute("guest-ping", None, PING_TIMEOUT).await.is_err() {
        return GuestView::default();
    }
    let known = vmi.status.as_ref().and_then(|s| s.guest_os_info.as_ref()).is_some_and(|o| o.get("name").is_some());
    let os_info = if known && connected(vmi) {
        None
    } else {
        agent.execute("guest-get-osinfo", None, INFO_TIMEOUT).await.ok().map(|v| os_info(&v))
    };
    GuestView { connected: true, os_info }
}

/// KubeVirt's `guestOSInfo` from the agent's `guest-get-osinfo` (its kebab-case keys in camelCase).
pub fn os_info(reply: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for (from, to) in [
        ("id", "id"),
        ("name", "name"),
        ("pretty-name", "prettyName"),
        ("version", "version"),
        ("version-id", "versionId"),
        ("kernel-release", "kernelRelease"),
        ("kernel-version", "kernelVersion"),
        ("machine", "machine"),
    ] {
        if let Some(v) = reply.get(from).and_then(Value::as_str) {
            out.insert(to.into(), json!(v));
        }
    }
    Value::Object(out)
}

/// What `kumo guestosinfo|userlist|fslist` (as virtctl's) show, asked of the guest agent at `socket` and shaped
/// as KubeVirt's `subresources.kubevirt.io` answers: `guestosinfo` (VirtualMachineInstanceGuestAgentInfo),
/// `userlist` (VirtualMachineInstanceGuestOSUserList), `filesystemlist` (VirtualMachineInstanceFileSystemList).
pub async fn info(socket: &std::path::Path, what: &str) -> Result<Value, String> {
    let agent = GuestAgent::new(socket);
    let ask = |cmd: &'static str| {
        let agent = agent.clone();
        async move { agent.execute(cmd, None, INFO_TIMEOUT).await.map_err(|e| e.to_string()) }
    };
    let items = |v: Value| json!({"metadata": {}, "items": v});
    match what {
        "guestosinfo" => {
            let version = ask("guest-info").await?;
            let os = ask("guest-get-osinfo").await.map(|o| os_info(&o)).unwrap_or(json!({}));
            let host = ask("guest-get-host-name").await.ok();
            let tz = ask("guest-get-timezone").await.ok();
            let zone = tz.as_ref().map(|t| {
                let name = t.get("zone").and_then(Value::as_str).unwrap_or("");
                format!("{name}, {}", t.get("offset").and_then(Value::as_i64).unwrap_or(0))
            });
            Ok(json!({
                "guestAgentVersion": version.get("version"),
                "hostname": host.as_ref().and_then(|h| h.get("host-name")),
                "os": os,
                "timezone": zone,
            }))
        }
        "userlist" => {
            let users = ask("guest-get-users").await?;
            let list: Vec<Value> = users
                .as_array()
                .into_iter()
                .flatten()
                .map(|u| {
                    json!({
                "userName": u.get("user"), "domain": u.get("domain"), "loginTime": u.get("login-time")})
                })
                .collect();
            Ok(items(json!(list)))
        }
        "filesystemlist" => {
            let fs = ask("guest-get-fsinfo").await?;
            let list: Vec<Value> = fs
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| {
                    json!({
                "diskName": f.get("name"), "mountPoint": f.get("mountpoint"), "fileSystemType": f.get("type"),
                "usedBytes": f.get("used-bytes"), "totalBytes": f.get("total-bytes")})
                })
                .collect();
            Ok(items(json!(list)))
        }
        other => Err(format!("no guest information called {other:?}")),
    }
}

/// The VMI's status with what the guest agent said, or None when nothing changes. The condition goes while the
/// agent is silent (as KubeVirt drops it); the OS info stays, as the last the guest told.
pub fn status_with(vmi: &VirtualMachineInstance, seen: &GuestView, now: &str) -> Option<VirtualMachineInstanceStatus> {
    let mut st = vmi.status.clone().unwrap_or_default();
    let mut conditions = st.conditions.clone().unwrap_or_default();
    if seen.connected {
        set_condition(&mut conditions, AGENT_CONNECTED, "True", "", "", now);
    } else {
        conditions.retain(|c| c.type_ != AGENT_CONNECTED);
    }
    st.conditions = Some(conditions);
    if let Some(info) = &seen.os_info {
        st.guest_os_info = Some(info.clone());
    }
    (Some(&st) != vmi.status.as_ref()).then_some(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_condition_follows_the_agent_and_os_info_is_kubevirts() {
        let vmi: VirtualMachineInstance = serde_json::from_value(json!({"status": {"phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}]}}))
        .unwrap();
        let info = os_info(&json!({"id": "kumo", "name": "Kumo Test Guest", "pretty-name": "Kumo Test Guest 1",
            "kernel-release": "6.1.0", "machine": "x86_64", "unexpected": "x"}));
        assert_eq!(
            info,
            json!({"id": "kumo", "name": "Kumo Test Guest", "prettyName": "Kumo Test Guest 1",
            "kernelRelease": "6.1.0", "machine": "x86_64"})
        );
        let up = status_with(&vmi, &GuestView { connected: true, os_info: Some(info.clone()) }, "t1").unwrap();
        assert!(up.conditions.iter().flatten().any(|c| c.type_ == AGENT_CONNECTED && c.status == "True"));
        assert_eq!(up.guest_os_info.as_ref(), Some(&info));
        let vmi = VirtualMachineInstance { status: Some(up), ..vmi };
        assert_eq!(status_with(&vmi, &GuestView { connected: true, os_info: None }, "t2"), None, "no change");
        let down = status_with(&vmi, &GuestView::default(), "t3").unwrap();
        assert!(!down.conditions.iter().flatten().any(|c| c.type_ == AGENT_CONNECTED));
        assert_eq!(down.guest_os_info, Some(info), "the last OS info stays");
    }
}
