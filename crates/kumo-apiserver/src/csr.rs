//! CertificateSigningRequests (`certificates.k8s.io/v1`) as joining hosts use them: who asked is recorded by
//! the server, and a kubelet-client request made with a valid bootstrap token for a node name nobody holds yet
//! is approved and signed by the cluster CA at once (what Kubernetes' csrapprover and csrsigner do in turn).

use crate::auth::User;
use crate::state::ApiServer;
use base64::Engine;
use kumo_api::ApiError;
use serde_json::{json, Value};
use x509_parser::prelude::FromDer;

/// The signer for node client certificates (`CN=system:node:NAME, O=system:nodes`).
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// How long a node's client certificate is valid.
const NODE_CERT_DAYS: i64 = 365;

/// Admission for a new CSR from `user`.
pub async fn admit(api: &ApiServer, user: &User, obj: &mut Value) -> Result<(), ApiError> {
    // Status (approval, the certificate) is the server's to write, never the requester's.
    if let Some(m) = obj.as_object_mut() {
        m.remove("status");
    }
    obj["spec"]["username"] = json!(user.name());
    obj["spec"]["groups"] = json!(user.groups());
    let signer = obj.pointer("/spec/signerName").and_then(Value::as_str).unwrap_or("").to_string();
    let pem = request_pem(obj)?;
    let (cn, orgs) = subject(&pem)?;
    let User::Bootstrap(_) = user else { return Ok(()) };
    if signer != KUBELET_CLIENT_SIGNER {
        return Err(ApiError::forbidden(format!(
            "a bootstrap token may only request signer {KUBELET_CLIENT_SIGNER}, not {signer:?}"
        )));
    }
    let node = cn.strip_prefix("system:node:").filter(|n| !n.is_empty() && orgs == ["system:nodes"]);
    let Some(node) = node else {
        return Err(ApiError::forbidden(format!(
            "a node certificate must name CN=system:node:NAME, O=system:nodes (the request names CN={cn:?}, O={orgs:?})"
        )));
    };
    let nodes = api.registry.get("", "v1", "nodes").expect("built-in");
    if api.objects.try_get(&nodes, None, node).await?.is_some() {
        return Err(ApiError::forbidden(format!(
            "node {node:?} is already registered with its own credential: join under another --node-name, or, if \
             this host replaces it, delete it first (kubectl delete node {node})"
        )));
    }
    let cert = api
        .ca
        .sign_client_request(&pem, &cn, &["system:nodes"], NODE_CERT_DAYS)
        .map_err(|e| ApiError::bad_request(format!("spec.request: {e:#}")))?;
    let now = kumo_api::meta::now_rfc3339();
    obj["status"] = json!({
        "conditions": [{"type": "Approved", "status": "True", "reason": "AutoApproved",
            "message": "Auto approving a node client certificate after bootstrap token authentication",
            "lastUpdateTime": now, "lastTransitionTime": now}],
        "certificate": base64::engine::general_purpose::STANDARD.encode(cert),
    });
    Ok(())
}

fn request_pem(obj: &Value) -> Result<String, ApiError> {
    let b64 = obj.pointer("/spec/request").and_then(Value::as_str).unwrap_or("");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| ApiError::bad_request("spec.request must be a base64-encoded PEM certificate request"))?;
    String::from_utf8(bytes).map_err(|_| ApiError::bad_request("spec.request is not a PEM certificate request"))
}

/// The common name and organizations a PEM certificate request asks for.
fn subject(pem: &str) -> Result<(String, Vec<String>), ApiError> {
    let bad = |why: &str| ApiError::bad_request(format!("spec.request: {why}"));
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|_| bad("not PEM"))?;
    let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
        .map_err(|_| bad("not a certificate request"))?;
    let subject = &req.certification_request_info.subject;
    let cn = subject.iter_common_name().next().and_then(|c| c.as_str().ok()).unwrap_or("").to_string();
    let orgs = subject.iter_organization().filter_map(|o| o.as_str().ok().map(String::from)).collect();
    Ok((cn, orgs))
}
