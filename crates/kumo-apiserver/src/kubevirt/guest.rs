//! What is asked of a running guest through the node agent that runs it ([`crate::nodes`]):
//! `GET .../virtualmachineinstances/{name}/guestosinfo|userlist|filesystemlist` (asked live of the guest's
//! agent, what `virtctl guestosinfo|userlist|fslist` call), and `PUT .../softreboot` (a reboot asked of the
//! guest agent) and `PUT .../reset` (QEMU's hard reset).

use super::{conflict, vmi_def};
use crate::response::{self, Resp};
use crate::state::ApiServer;
use http::{Method, StatusCode};
use kumo_api::{meta, ApiError};
use serde_json::Value;
use std::sync::Arc;

/// The read-only subresources this module serves.
pub const SUBRESOURCES: &[&str] = &["guestosinfo", "userlist", "filesystemlist"];

/// The actions this module serves.
pub const ACTIONS: &[&str] = &["softreboot", "reset"];

fn agent_connected(vmi: &Value) -> bool {
    let conditions = vmi.pointer("/status/conditions").and_then(Value::as_array);
    conditions.is_some_and(|cs| cs.iter().any(|c| c["type"] == "AgentConnected" && c["status"] == "True"))
}

/// The VMI `name`, running (and for the guest agent's questions, with its agent connected).
async fn running(api: &Arc<ApiServer>, ns: &str, name: &str, needs_agent: bool) -> Result<Value, ApiError> {
    let def = vmi_def(api)?;
    let vmi = api.objects.get(&def, Some(ns), name).await?;
    if vmi.pointer("/status/phase").and_then(Value::as_str) != Some("Running") {
        return Err(conflict(&def, name, "VMI is not running"));
    }
    if needs_agent && !agent_connected(&vmi) {
        return Err(conflict(&def, name, "VMI does not have guest agent connected"));
    }
    Ok(vmi)
}

/// Asks the agent of the VMI's node; its refusals keep their code and reason.
async fn ask(api: &Arc<ApiServer>, vmi: &Value, method: Method, what: &str) -> Result<bytes::Bytes, ApiError> {
    let node = vmi.pointer("/status/nodeName").and_then(Value::as_str).unwrap_or_default().to_string();
    let path = format!("/guest/{}/{what}", meta::uid(vmi));
    let (status, body) = crate::nodes::request(api, &node, method, &path).await?;
    if !status.is_success() {
        return Err(ApiError::new(
            status.as_u16(),
            "GuestAgentError",
            String::from_utf8_lossy(&body).trim().to_string(),
        ));
    }
    Ok(body)
}

pub async fn get(api: &Arc<ApiServer>, ns: &str, name: &str, what: &str) -> Result<Resp, ApiError> {
    let vmi = running(api, ns, name, true).await?;
    let body = ask(api, &vmi, Method::GET, what).await?;
    let v: Value = serde_json::from_slice(&body).map_err(|e| ApiError::internal(format!("the node's answer: {e}")))?;
    Ok(response::json_response(StatusCode::OK, &v))
}

/// `softreboot` or `reset`. A soft reboot needs the guest agent: kumo has no ACPI reboot (KubeVirt's other
/// way), which would need QEMU kept alive across the guest's power-off.
pub async fn act(api: &Arc<ApiServer>, ns: &str, name: &str, action: &str) -> Result<(), ApiError> {
    let vmi = running(api, ns, name, false).await?;
    if super::paused(&vmi) {
        return Err(conflict(&*vmi_def(api)?, name, "VMI is paused"));
    }
    if action == "softreboot" && !agent_connected(&vmi) {
        let why = "VMI does not have the guest agent connected: kumo soft-reboots through the guest agent only \
                   (use reset for a hard reset)";
        return Err(conflict(&*vmi_def(api)?, name, why));
    }
    ask(api, &vmi, Method::PUT, action).await?;
    Ok(())
}
