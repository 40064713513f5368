//! `GET .../virtualmachineinstances/{name}/console`: the serial console as a WebSocket. The API server finds
//! the node running the VMI, connects to that node agent's console endpoint (TLS pinned to the certificate
//! fingerprint the agent published on its Node), forwards the client's WebSocket upgrade, and then splices the
//! two upgraded connections — as kube-apiserver proxies exec/attach to the kubelet.

use crate::request::ResourcePath;
use crate::response::{self, Resp};
use crate::state::ApiServer;
use http::{header, Request, StatusCode};
use hyper_util::rt::TokioIo;
use kumo_api::{ApiError, ResourceDef};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::Arc;

use kumo_api::kubevirt::{
    CONSOLE_ENDPOINT_ANNOTATION as ENDPOINT_ANNOTATION, CONSOLE_FINGERPRINT_ANNOTATION as FINGERPRINT_ANNOTATION,
};

pub async fn proxy(api: &Arc<ApiServer>, req: Request<hyper::body::Incoming>, p: ResourcePath) -> Resp {
    match open(api, req, p).await {
        Ok(r) => r,
        Err(e) => response::error(&e),
    }
}

fn def(api: &ApiServer, group: &str, plural: &str) -> Result<Arc<ResourceDef>, ApiError> {
    api.registry.get(group, "v1", plural).ok_or_else(|| ApiError::internal(format!("{plural} are not served")))
}

async fn open(
    api: &Arc<ApiServer>,
    mut req: Request<hyper::body::Incoming>,
    p: ResourcePath,
) -> Result<Resp, ApiError> {
    if p.resource != "virtualmachineinstances" || p.name.is_none() {
        return Err(ApiError::path_not_found(&format!("{}/console", p.resource)));
    }
    let key = req
        .headers()
        .get("sec-websocket-key")
        .cloned()
        .ok_or_else(|| ApiError::bad_request("the console is a WebSocket: send an Upgrade: websocket request"))?;
    let name = p.name.as_deref().unwrap_or_default();
    let vmi =
        api.objects.get(&*def(api, "kubevirt.io", "virtualmachineinstances")?, p.namespace.as_deref(), name).await?;
    let phase = vmi.pointer("/status/phase").and_then(Value::as_str).unwrap_or("");
    if phase != "Running" {
        return Err(ApiError::conflict(
            "kubevirt.io",
            "virtualmachineinstances",
            name,
            &format!("VMI is not running (phase {phase:?})"),
        ));
    }
    let node_name = vmi.pointer("/status/nodeName").and_then(Value::as_str).unwrap_or_default();
    let mut sender = connect_agent::<http_body_util::Empty<bytes::Bytes>>(api, node_name).await?;
    let uid = vmi.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default();
    let mut upstream = Request::get(format!("/console/{uid}"))
        .header(header::HOST, "kumo-agent")
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", key);
    if let Some(proto) = req.headers().get("sec-websocket-protocol") {
        upstream = upstream.header("sec-websocket-protocol", proto.clone());
    }
    let upstream = upstream.body(http_body_util::Empty::<bytes::Bytes>::new()).expect("request");
    let resp = sender.send_request(upstream).await.map_err(|e| unavailable(format!("agent console request: {e}")))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(ApiError::new(
            502,
            "BadGateway",
            format!("the agent of node {node_name} refused the console: {}", resp.status()),
        ));
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

pub(crate) fn unavailable(m: String) -> ApiError {
    let mut e = ApiError::new(503, "ServiceUnavailable", m);
    e.retry_after_seconds = Some(1);
    e
}

/// An HTTP/1.1 connection to the agent of `node_name`: TLS pinned to the certificate fingerprint the agent
/// published on its Node, authenticated with the API server's client certificate (upgrades allowed).
pub(crate) async fn connect_agent<B>(
    api: &Arc<ApiServer>,
    node_name: &str,
) -> Result<hyper::client::conn::http1::SendRequest<B>, ApiError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let node = api.objects.get(&*def(api, "", "nodes")?, None, node_name).await?;
    let ann = |k: &str| {
        node.pointer(&format!("/metadata/annotations/{}", k.replace('/', "~1")))
            .and_then(Value::as_str)
            .map(String::from)
    };
    let (Some(endpoint), Some(fingerprint)) = (ann(ENDPOINT_ANNOTATION), ann(FINGERPRINT_ANNOTATION)) else {
        return Err(unavailable(format!("node {node_name} publishes no agent endpoint; is its agent running?")));
    };
    let addr = endpoint.strip_prefix("https://").unwrap_or(&endpoint).to_string();
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| unavailable(format!("connecting to the agent of node {node_name} at {addr}: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiError::internal(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { fingerprint, provider }))
        .with_client_auth_cert(client_certs(api)?, client_key(api)?)
        .map_err(|e| ApiError::internal(format!("the API server's client certificate: {e}")))?;
    let server_name = rustls::pki_types::ServerName::try_from("kumo-agent").expect("valid name");
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(server_name, tcp)
        .await
        .map_err(|e| unavailable(format!("TLS to the agent of node {node_name}: {e}")))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unavailable(format!("talking to the agent of node {node_name}: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

/// Trusts exactly the certificate whose SHA-256 the agent published on its Node (a Node only the agent
/// writes), while still checking the handshake signatures.
#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if hex::encode(Sha256::digest(end_entity.as_ref())) == self.fingerprint {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("the agent's certificate does not match the fingerprint on its Node".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

fn client_certs(api: &ApiServer) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ApiError> {
    rustls_pemfile::certs(&mut api.node_client.0.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| ApiError::internal(format!("the API server's client certificate: {e}")))
}

fn client_key(api: &ApiServer) -> Result<rustls::pki_types::PrivateKeyDer<'static>, ApiError> {
    rustls_pemfile::private_key(&mut api.node_client.1.as_bytes())
        .ok()
        .flatten()
        .ok_or_else(|| ApiError::internal("the API server's client key is unreadable"))
}
