//! `GET .../virtualmachineinstances/{name}/guestosinfo|userlist|filesystemlist` (KubeVirt's
//! `subresources.kubevirt.io/v1`, what `virtctl guestosinfo|userlist|fslist` call): asked live of the guest's
//! agent through the node agent that runs the VMI, over its pinned TLS endpoint (as consoles are).

use crate::response::{self, Resp};
use crate::state::ApiServer;
use bytes::Bytes;
use http::{header, Request, StatusCode};
use kumo_api::{meta, ApiError};
use serde_json::Value;
use std::sync::Arc;

/// The read-only subresources this module serves.
pub const SUBRESOURCES: &[&str] = &["guestosinfo", "userlist", "filesystemlist"];

pub async fn get(api: &Arc<ApiServer>, ns: &str, name: &str, what: &str) -> Result<Resp, ApiError> {
    let def = api
        .registry
        .get("kubevirt.io", "v1", "virtualmachineinstances")
        .ok_or_else(|| ApiError::internal("kubevirt.io CRDs missing"))?;
    let vmi = api.objects.get(&def, Some(ns), name).await?;
    let conflict = |why: &str| ApiError::conflict(&def.group, &def.plural, name, why);
    if vmi.pointer("/status/phase").and_then(Value::as_str) != Some("Running") {
        return Err(conflict("VMI is not running"));
    }
    let conditions = vmi.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    let agent = conditions.iter().any(|c| c["type"] == "AgentConnected" && c["status"] == "True");
    if !agent {
        return Err(conflict("VMI does not have guest agent connected"));
    }
    let node = vmi.pointer("/status/nodeName").and_then(Value::as_str).unwrap_or_default().to_string();
    let uid = meta::uid(&vmi).to_string();
    let mut sender = crate::console::connect_agent::<http_body_util::Empty<Bytes>>(api, &node).await?;
    let req = Request::get(format!("/guest/{uid}/{what}"))
        .header(header::HOST, "kumo-agent")
        .body(http_body_util::Empty::new())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| crate::console::unavailable(format!("asking node {node} about {name}'s guest: {e}")))?;
    let status = resp.status();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| crate::console::unavailable(format!("reading node {node}'s answer: {e}")))?;
    if !status.is_success() {
        return Err(ApiError::new(status.as_u16(), "GuestAgentError", String::from_utf8_lossy(&body).to_string()));
    }
    let v: Value = serde_json::from_slice(&body).map_err(|e| ApiError::internal(format!("node {node}: {e}")))?;
    Ok(response::json_response(StatusCode::OK, &v))
}
