//! CDI's upload path, served by the API server: `UploadTokenRequest` (upload.cdi.kubevirt.io) hands out a
//! token for one claim; the upload proxy (`CDIConfig.status.uploadProxyURL`, here `/kumo/upload-proxy`) takes
//! `POST /v1beta1/upload` (and `upload-async`; `HEAD` says it is there) with that token as the bearer, and
//! streams the body to the agent of the node that keeps the claim's volume, which writes the image.

use crate::response::{self, Resp};
use crate::state::ApiServer;
use base64::Engine;
use http::{header, Method, Request, StatusCode};
use kumo_api::provisioning as prov;
use kumo_api::ApiError;
use serde_json::{json, Value};
use std::sync::Arc;

pub const PREFIX: &str = "/kumo/upload-proxy";
pub const GROUP: &str = "upload.cdi.kubevirt.io";
/// How long a token is good for (CDI's are short-lived too).
const TOKEN_SECS: i64 = 300;

/// `secret`: the admin token, which every replica has, so a token any of them issued is good at all of them.
fn key(secret: &str) -> ring::hmac::Key {
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, format!("kumo upload tokens\0{secret}").as_bytes())
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

/// A token for uploading into claim `ns/pvc`, good until `now + TOKEN_SECS`.
pub fn issue(secret: &str, ns: &str, pvc: &str) -> String {
    let claims = json!({"namespace": ns, "pvc": pvc, "exp": chrono::Utc::now().timestamp() + TOKEN_SECS});
    let body = b64().encode(claims.to_string());
    let sig = b64().encode(ring::hmac::sign(&key(secret), body.as_bytes()).as_ref());
    format!("{body}.{sig}")
}

/// The claim a valid, unexpired token is for.
pub fn verify(secret: &str, token: &str) -> Option<(String, String)> {
    let (body, sig) = token.split_once('.')?;
    ring::hmac::verify(&key(secret), body.as_bytes(), &b64().decode(sig).ok()?).ok()?;
    let claims: Value = serde_json::from_slice(&b64().decode(body).ok()?).ok()?;
    if claims["exp"].as_i64()? < chrono::Utc::now().timestamp() {
        return None;
    }
    Some((claims["namespace"].as_str()?.to_string(), claims["pvc"].as_str()?.to_string()))
}

/// The answer to creating an UploadTokenRequest: the object with `status.token` (nothing is stored).
pub fn token_request(secret: &str, ns: &str, mut obj: Value) -> Result<Value, ApiError> {
    let pvc = obj.pointer("/spec/pvcName").and_then(Value::as_str).filter(|p| !p.is_empty());
    let pvc = pvc.ok_or_else(|| {
        ApiError::invalid(GROUP, "UploadTokenRequest", "", vec![kumo_api::status::Cause::required("spec.pvcName")])
    })?;
    obj["status"] = json!({"token": issue(secret, ns, pvc)});
    obj["metadata"]["namespace"] = json!(ns);
    Ok(obj)
}

pub async fn serve(api: &Arc<ApiServer>, req: Request<hyper::body::Incoming>) -> Resp {
    match proxy(api, req).await {
        Ok(r) => r,
        Err(e) => response::error(&e),
    }
}

async fn proxy(api: &Arc<ApiServer>, req: Request<hyper::body::Incoming>) -> Result<Resp, ApiError> {
    let path = req.uri().path().strip_prefix(PREFIX).unwrap_or_default();
    if !matches!(path, "/v1beta1/upload" | "/v1beta1/upload-async") {
        return Err(ApiError::path_not_found(req.uri().path()));
    }
    let bearer =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let Some((ns, pvc)) = bearer.and_then(|t| verify(&api.token, t)) else {
        return Err(ApiError::unauthorized());
    };
    let (pv, node) = upload_target(api, &ns, &pvc).await?;
    if req.method() == Method::HEAD {
        return Ok(response::json_response(StatusCode::OK, &json!({})));
    }
    if req.method() != Method::POST {
        return Err(ApiError::method_not_allowed(req.method().as_str(), "upload"));
    }
    let length = req.headers().get(header::CONTENT_LENGTH).cloned();
    let mut sender = crate::nodes::connect_agent::<hyper::body::Incoming>(api, &node).await?;
    let mut upstream = Request::post(format!("/upload/{pv}")).header(header::HOST, "kumo-agent");
    if let Some(l) = length {
        upstream = upstream.header(header::CONTENT_LENGTH, l);
    }
    let upstream = upstream.body(req.into_body()).map_err(|e| ApiError::internal(e.to_string()))?;
    let resp = sender
        .send_request(upstream)
        .await
        .map_err(|e| crate::nodes::unavailable(format!("sending the upload to node {node}: {e}")))?;
    let status = resp.status();
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.map(|b| b.to_bytes()).unwrap_or_default();
    if !status.is_success() {
        return Err(ApiError::new(status.as_u16(), "UploadFailed", String::from_utf8_lossy(&body).to_string()));
    }
    tracing::info!(claim = %format!("{ns}/{pvc}"), volume = %pv, node = %node, "upload received");
    Ok(response::json_response(StatusCode::OK, &json!({})))
}

/// The volume of claim `ns/pvc` and the node that keeps it, when it waits for an upload.
async fn upload_target(api: &ApiServer, ns: &str, pvc: &str) -> Result<(String, String), ApiError> {
    let claims = api.registry.get("", "v1", "persistentvolumeclaims").ok_or_else(|| ApiError::internal("no claims"))?;
    let volumes = api.registry.get("", "v1", "persistentvolumes").ok_or_else(|| ApiError::internal("no volumes"))?;
    let claim = api.objects.get(&claims, Some(ns), pvc).await?;
    let not_ready = |why: String| {
        let mut e = ApiError::new(503, "ServiceUnavailable", why);
        e.retry_after_seconds = Some(2);
        e
    };
    let pv_name = claim.pointer("/spec/volumeName").and_then(Value::as_str).filter(|v| !v.is_empty());
    let pv_name = pv_name.ok_or_else(|| not_ready(format!("claim {ns}/{pvc} is not bound yet")))?;
    let pv: k8s_openapi::api::core::v1::PersistentVolume =
        serde_json::from_value(api.objects.get(&volumes, None, pv_name).await?)
            .map_err(|e| ApiError::internal(e.to_string()))?;
    let source = prov::annotation(&pv, kumo_api::cdi::POPULATE_SOURCE).unwrap_or_default();
    if !source.contains("\"upload\"") {
        return Err(ApiError::bad_request(format!(
            "claim {ns}/{pvc} does not take uploads (its source is not upload)"
        )));
    }
    if prov::state(&pv) != Some(prov::POPULATING) {
        return Err(not_ready(format!("volume {pv_name} is not ready for an upload ({:?})", prov::state(&pv))));
    }
    let node = pv.metadata.labels.as_ref().and_then(|l| l.get(prov::VOLUME_NODE_LABEL)).cloned().unwrap_or_default();
    Ok((pv_name.to_string(), node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_claim_and_cannot_be_forged() {
        let api = "admin-token";
        let t = issue(api, "ns", "disk");
        assert_eq!(verify(api, &t), Some(("ns".into(), "disk".into())));
        assert_eq!(verify("another-cluster", &t), None);
        let (body, _) = t.split_once('.').unwrap();
        let forged = format!(
            "{}.{}",
            b64().encode(r#"{"namespace":"ns","pvc":"other","exp":9999999999}"#),
            t.split_once('.').unwrap().1
        );
        assert_eq!(verify(api, &forged), None);
        assert_eq!(verify(api, &format!("{body}.AAAA")), None);
        let r = token_request(api, "ns", json!({"spec": {"pvcName": "disk"}})).unwrap();
        assert!(verify(api, r["status"]["token"].as_str().unwrap()).is_some());
        assert_eq!(token_request(api, "ns", json!({"spec": {}})).unwrap_err().code, 422);
    }
}
