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
    let items = |v: Vec<Value>| json!({"metadata": {}, "items": v});
    match what {
        "guestosinfo" => {
            let version = ask("guest-info").await?;
            let replies = AgentReplies {
                os: ask("guest-get-osinfo").await.ok(),
                host: ask("guest-get-host-name").await.ok(),
                timezone: ask("guest-get-timezone").await.ok(),
                users: ask("guest-get-users").await.ok(),
                filesystems: ask("guest-get-fsinfo").await.ok(),
                freeze: ask("guest-fsfreeze-status").await.ok(),
            };
            Ok(agent_info(&version, &replies))
        }
        "userlist" => Ok(items(users(&ask("guest-get-users").await?))),
        "filesystemlist" => Ok(items(filesystems(&ask("guest-get-fsinfo").await?))),
        other => Err(format!("no guest information called {other:?}")),
    }
}

/// The guest agent's answers besides `guest-info`, each None when it had none.
#[derive(Default)]
pub struct AgentReplies {
    pub os: Option<Value>,
    pub host: Option<Value>,
    pub timezone: Option<Value>,
    pub users: Option<Value>,
    pub filesystems: Option<Value>,
    pub freeze: Option<Value>,
}

/// An object of the pairs whose value is known (KubeVirt omits empty fields rather than sending nulls).
fn known<'a>(pairs: impl IntoIterator<Item = (&'a str, Option<Value>)>) -> Value {
    Value::Object(pairs.into_iter().filter_map(|(k, v)| Some((k.to_string(), v.filter(|v| !v.is_null())?))).collect())
}

/// KubeVirt's VirtualMachineInstanceGuestAgentInfo from `guest-info` and the other answers.
pub fn agent_info(version: &Value, r: &AgentReplies) -> Value {
    let commands: Vec<Value> = version
        .get("supported_commands")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| known([("name", c.get("name").cloned()), ("enabled", c.get("enabled").cloned())]))
        .collect();
    let zone = r.timezone.as_ref().map(|t| {
        let name = t.get("zone").and_then(Value::as_str).unwrap_or("");
        json!(format!("{name}, {}", t.get("offset").and_then(Value::as_i64).unwrap_or(0)))
    });
    known([
        ("guestAgentVersion", version.get("version").cloned()),
        ("supportedCommands", Some(json!(commands))),
        ("hostname", r.host.as_ref().and_then(|h| h.get("host-name").cloned())),
        ("os", Some(r.os.as_ref().map(os_info).unwrap_or_else(|| json!({})))),
        ("timezone", zone),
        ("fsFreezeStatus", r.freeze.clone()),
        ("userList", r.users.as_ref().map(|u| json!(users(u)))),
        ("fsInfo", r.filesystems.as_ref().map(|f| json!({"disks": filesystems(f)}))),
    ])
}

/// KubeVirt's VirtualMachineInstanceGuestOSUser items from `guest-get-users`.
pub fn users(reply: &Value) -> Vec<Value> {
    let list = reply.as_array().into_iter().flatten();
    list.map(|u| {
        known([
            ("userName", Some(u.get("user").cloned().unwrap_or(json!("")))),
            ("domain", u.get("domain").cloned()),
            ("loginTime", u.get("login-time").cloned()),
        ])
    })
    .collect()
}

/// KubeVirt's VirtualMachineInstanceFileSystem items from `guest-get-fsinfo` (sizes 0 when the agent has none).
pub fn filesystems(reply: &Value) -> Vec<Value> {
    let list = reply.as_array().into_iter().flatten();
    list.map(|f| {
        let disks: Vec<Value> = f
            .get("disk")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|d| {
                known([
                    ("busType", Some(d.get("bus-type").cloned().unwrap_or(json!("")))),
                    ("serial", d.get("serial").cloned()),
                ])
            })
            .collect();
        let text = |k: &str| Some(f.get(k).cloned().unwrap_or(json!("")));
        let bytes = |k: &str| Some(f.get(k).cloned().unwrap_or(json!(0)));
        known([
            ("diskName", text("name")),
            ("mountPoint", text("mountpoint")),
            ("fileSystemType", text("type")),
            ("usedBytes", bytes("used-bytes")),
            ("totalBytes", bytes("total-bytes")),
            ("disk", Some(json!(disks))),
        ])
    })
    .collect()
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
    use kumo_api::kubevirt::published::mismatches;

    #[test]
    fn answers_are_kubevirts_published_definitions() {
        let version = json!({"version": "7.2.0", "supported_commands": [
            {"enabled": true, "name": "guest-ping", "success-response": true},
            {"enabled": false, "name": "guest-exec", "success-response": true}]});
        let users_reply = json!([{"user": "root", "login-time": 1733470000.25}, {"user": "kumo", "domain": "LOCAL",
            "login-time": 1733470001.0}]);
        let fs_reply = json!([{"name": "vda1", "mountpoint": "/", "type": "ext4", "used-bytes": 1048576,
            "total-bytes": 8388608, "disk": [{"bus-type": "virtio", "serial": "root", "bus": 0, "target": 0,
            "unit": 0, "dev": "/dev/vda1"}]}, {"name": "tmpfs", "mountpoint": "/tmp", "type": "tmpfs", "disk": []}]);
        let replies = AgentReplies {
            os: Some(json!({"id": "kumo", "name": "Kumo Test Guest", "kernel-release": "6.1.0", "machine": "x86_64"})),
            host: Some(json!({"host-name": "webvm"})),
            timezone: Some(json!({"zone": "UTC", "offset": 0})),
            users: Some(users_reply.clone()),
            filesystems: Some(fs_reply.clone()),
            freeze: Some(json!("thawed")),
        };
        let info = agent_info(&version, &replies);
        assert_eq!(mismatches("v1.VirtualMachineInstanceGuestAgentInfo", &info), Vec::<String>::new(), "{info}");
        assert_eq!(info["timezone"], "UTC, 0");
        assert_eq!(info["supportedCommands"][1], json!({"name": "guest-exec", "enabled": false}));
        assert_eq!(info["fsInfo"]["disks"][0]["disk"][0], json!({"busType": "virtio", "serial": "root"}));
        // An agent that answers only guest-info still gives a conforming answer, without nulls.
        let bare = agent_info(&json!({"version": "7.2.0"}), &AgentReplies::default());
        assert_eq!(mismatches("v1.VirtualMachineInstanceGuestAgentInfo", &bare), Vec::<String>::new(), "{bare}");
        assert!(!bare.to_string().contains("null"), "{bare}");
        let list = json!({"metadata": {}, "items": users(&users_reply)});
        assert_eq!(mismatches("v1.VirtualMachineInstanceGuestOSUserList", &list), Vec::<String>::new(), "{list}");
        let list = json!({"metadata": {}, "items": filesystems(&fs_reply)});
        assert_eq!(mismatches("v1.VirtualMachineInstanceFileSystemList", &list), Vec::<String>::new(), "{list}");
        assert_eq!(list["items"][1]["usedBytes"], 0, "sizes the agent did not give are 0");
    }

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
