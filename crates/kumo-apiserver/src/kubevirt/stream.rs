//! KubeVirt's WebSocket subresources: `console` (the serial console), `vnc` (RFB from QEMU's VNC server) and
//! `portforward/{port}[/{protocol}]` (a stream to a port of the guest) of a VMI, and `portforward` of a VM
//! (its VMI's). The API server finds the node running the VMI, connects to that node's agent
//! ([`crate::nodes`]), forwards the client's WebSocket upgrade and then splices the two upgraded connections,
//! as kube-apiserver proxies exec to the kubelet. The agent speaks the WebSocket side: binary frames, the
//! `plain.kubevirt.io` subprotocol, and a close frame saying why a session ended.

use super::{conflict, vmi_of_vm};
use crate::request::ResourcePath;
use crate::response::{self, Resp};
use crate::state::ApiServer;
use http::{header, Request, StatusCode};
use hyper_util::rt::TokioIo;
use kumo_api::ApiError;
use serde_json::Value;
use std::sync::Arc;

/// The WebSocket subresources.
pub const SUBRESOURCES: &[&str] = &["console", "vnc", "portforward"];

/// What a WebSocket subresource reaches on the node.
#[derive(Debug, PartialEq)]
enum Stream {
    Console,
    Vnc,
    PortForward { port: u16, protocol: &'static str },
}

impl Stream {
    fn parse(p: &ResourcePath) -> Result<Stream, ApiError> {
        let sub = p.subresource.as_deref().unwrap_or_default();
        let vm = p.resource == "virtualmachines";
        match (sub, p.subpath.as_slice()) {
            ("console", []) if !vm => Ok(Stream::Console),
            ("vnc", []) if !vm => Ok(Stream::Vnc),
            ("portforward", [port, rest @ ..]) if rest.len() <= 1 => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| ApiError::bad_request(format!("invalid port {port:?}: a port is 1 to 65535")))?;
                let protocol = match rest.first().map(String::as_str) {
                    None | Some("tcp") => "tcp",
                    Some("udp") => "udp",
                    Some(other) => {
                        return Err(ApiError::bad_request(format!("invalid protocol {other:?}: tcp or udp")))
                    }
                };
                Ok(Stream::PortForward { port, protocol })
            }
            ("portforward", []) => {
                Err(ApiError::bad_request("portforward needs a port: portforward/{port}[/{protocol}]"))
            }
            _ => Err(ApiError::path_not_found(&format!(
                "{}/{}",
                p.resource,
                [sub].iter().copied().chain(p.subpath.iter().map(String::as_str)).collect::<Vec<_>>().join("/")
            ))),
        }
    }

    /// Where the agent serves it, for the VMI with `uid`.
    fn agent_path(&self, uid: &str) -> String {
        match self {
            Stream::Console => format!("/console/{uid}"),
            Stream::Vnc => format!("/vnc/{uid}"),
            Stream::PortForward { port, protocol } => format!("/portforward/{uid}/{port}/{protocol}"),
        }
    }
}

pub async fn proxy(api: &Arc<ApiServer>, req: Request<hyper::body::Incoming>, p: ResourcePath) -> Resp {
    match open(api, req, p).await {
        Ok(r) => r,
        Err(e) => response::error(&e),
    }
}

async fn open(
    api: &Arc<ApiServer>,
    mut req: Request<hyper::body::Incoming>,
    p: ResourcePath,
) -> Result<Resp, ApiError> {
    let stream = Stream::parse(&p)?;
    if req.method() != http::Method::GET {
        let sub = p.subresource.as_deref().unwrap_or_default();
        return Err(ApiError::method_not_allowed(req.method().as_str(), &format!("{}/{sub}", p.resource)));
    }
    let (Some(ns), Some(name)) = (p.namespace.as_deref(), p.name.as_deref()) else {
        return Err(ApiError::path_not_found(&p.resource));
    };
    let vmi_def = super::vmi_def(api)?;
    let vmi = match p.resource.as_str() {
        "virtualmachines" => vmi_of_vm(api, ns, name).await?,
        _ => api.objects.get(&vmi_def, Some(ns), name).await?,
    };
    let vmi_name = kumo_api::meta::name(&vmi).to_string();
    let phase = vmi.pointer("/status/phase").and_then(Value::as_str).unwrap_or("");
    if phase != "Running" {
        return Err(conflict(&vmi_def, &vmi_name, &format!("VMI is not running (phase {phase:?})")));
    }
    if matches!(stream, Stream::PortForward { .. }) && super::paused(&vmi) {
        return Err(conflict(&vmi_def, &vmi_name, "VMI is paused"));
    }
    if stream == Stream::Vnc
        && vmi.pointer("/spec/domain/devices/autoattachGraphicsDevice") == Some(&Value::Bool(false))
    {
        return Err(ApiError::bad_request(
            "No graphics devices are present: the VMI sets autoattachGraphicsDevice: false",
        ));
    }
    // Checked after the VMI, so that a plain GET learns what is wrong with it too.
    let key =
        req.headers().get("sec-websocket-key").cloned().ok_or_else(|| {
            ApiError::bad_request("this subresource is a WebSocket: send a GET with Upgrade: websocket")
        })?;
    let node_name = vmi.pointer("/status/nodeName").and_then(Value::as_str).unwrap_or_default();
    let mut sender = crate::nodes::connect_agent::<http_body_util::Empty<bytes::Bytes>>(api, node_name).await?;
    let uid = kumo_api::meta::uid(&vmi);
    let mut upstream = Request::get(stream.agent_path(uid))
        .header(header::HOST, "kumo-agent")
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", key);
    if let Some(proto) = req.headers().get("sec-websocket-protocol").and_then(|p| p.to_str().ok()) {
        // The bearer token a browser sent as a subprotocol is the API server's, not the node's.
        let prefix = crate::handlers::WS_BEARER_PREFIX;
        let kept: Vec<&str> = proto.split(',').map(str::trim).filter(|p| !p.starts_with(prefix)).collect();
        if !kept.is_empty() {
            upstream = upstream.header("sec-websocket-protocol", kept.join(", "));
        }
    }
    let upstream = upstream.body(http_body_util::Empty::<bytes::Bytes>::new()).expect("request");
    let resp = sender
        .send_request(upstream)
        .await
        .map_err(|e| crate::nodes::unavailable(format!("the agent of node {node_name}: {e}")))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let code = resp.status();
        let body = http_body_util::BodyExt::collect(resp.into_body()).await.map(|b| b.to_bytes()).unwrap_or_default();
        let why = String::from_utf8_lossy(&body).trim().to_string();
        // The agent's 4xx are the client's to fix (no such port, nothing listening); anything else is ours.
        return Err(match code.as_u16() {
            400..=499 => ApiError::new(code.as_u16(), "BadRequest", why),
            _ => ApiError::new(502, "BadGateway", format!("the agent of node {node_name} refused: {code} {why}")),
        });
    }
    let mut answer = http::Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket");
    for h in ["sec-websocket-accept", "sec-websocket-protocol"] {
        if let Some(v) = resp.headers().get(h) {
            answer = answer.header(h, v.clone());
        }
    }
    let agent_side = hyper::upgrade::on(resp);
    let client_side = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let (Ok(a), Ok(c)) = (agent_side.await, client_side.await) else { return };
        let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(a), &mut TokioIo::new(c)).await;
    });
    Ok(answer.body(response::full(bytes::Bytes::new())).expect("response"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(resource: &str, sub: &str, rest: &[&str]) -> ResourcePath {
        ResourcePath {
            resource: resource.into(),
            subresource: Some(sub.into()),
            subpath: rest.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn paths_name_streams_and_bad_ports_are_refused() {
        let vmi = "virtualmachineinstances";
        assert_eq!(Stream::parse(&path(vmi, "console", &[])).unwrap(), Stream::Console);
        assert_eq!(Stream::parse(&path(vmi, "vnc", &[])).unwrap(), Stream::Vnc);
        let pf = Stream::parse(&path("virtualmachines", "portforward", &["22"])).unwrap();
        assert_eq!(pf, Stream::PortForward { port: 22, protocol: "tcp" });
        assert_eq!(pf.agent_path("u"), "/portforward/u/22/tcp");
        let udp = Stream::parse(&path(vmi, "portforward", &["53", "udp"])).unwrap();
        assert_eq!(udp, Stream::PortForward { port: 53, protocol: "udp" });
        for bad in [&["0"][..], &["70000"], &["ssh"], &["22", "sctp"], &[]] {
            let e = Stream::parse(&path(vmi, "portforward", bad)).unwrap_err();
            assert_eq!(e.code, 400, "{bad:?}: {}", e.message);
        }
        assert_eq!(Stream::parse(&path("virtualmachines", "console", &[])).unwrap_err().code, 404);
    }
}
