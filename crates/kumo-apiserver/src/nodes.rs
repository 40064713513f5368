//! Connections from the API server to node agents: HTTPS to the endpoint an agent published on its Node, the
//! agent's certificate pinned to the fingerprint published beside it, the API server authenticated by its
//! client certificate. Consoles, VNC, port forwarding, guest-agent questions and uploads go this way, as
//! kube-apiserver reaches the kubelet for exec and logs.

use hyper_util::rt::TokioIo;
use kumo_api::{ApiError, ResourceDef};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::Arc;

use crate::state::ApiServer;
use kumo_api::kubevirt::{
    CONSOLE_ENDPOINT_ANNOTATION as ENDPOINT_ANNOTATION, CONSOLE_FINGERPRINT_ANNOTATION as FINGERPRINT_ANNOTATION,
};

fn def(api: &ApiServer, group: &str, plural: &str) -> Result<Arc<ResourceDef>, ApiError> {
    api.registry.get(group, "v1", plural).ok_or_else(|| ApiError::internal(format!("{plural} are not served")))
}

pub fn unavailable(m: String) -> ApiError {
    let mut e = ApiError::new(503, "ServiceUnavailable", m);
    e.retry_after_seconds = Some(1);
    e
}

/// `GET /api/v1/nodes/{name}/proxy/metrics`: the node agent's metrics, proxied as kube-apiserver proxies to
/// the kubelet (the path Prometheus' usual node scrape configuration uses). Nothing else of the agent is
/// reachable this way: its other endpoints are KubeVirt's subresources.
pub async fn proxy(
    api: &Arc<ApiServer>,
    method: &http::Method,
    p: &crate::request::ResourcePath,
) -> crate::response::Resp {
    let node = p.name.as_deref().unwrap_or_default();
    if method != http::Method::GET {
        return crate::response::error(&ApiError::new(405, "MethodNotAllowed", "a node's proxy serves only GET"));
    }
    if p.subpath != ["metrics"] {
        let why = format!("a node's proxy serves only metrics, not {:?}", p.subpath.join("/"));
        return crate::response::error(&ApiError::new(404, "NotFound", why));
    }
    match request(api, node, http::Method::GET, "/metrics").await {
        Ok((status, body)) if status.is_success() => http::Response::builder()
            .header(http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)
            .body(crate::response::full(body))
            .expect("response"),
        Ok((status, body)) => crate::response::error(&unavailable(format!(
            "the agent of node {node} answered {status}: {}",
            String::from_utf8_lossy(&body)
        ))),
        Err(e) => crate::response::error(&e),
    }
}

/// One bodiless request to the agent of `node`: its status and body.
pub async fn request(
    api: &Arc<ApiServer>,
    node: &str,
    method: http::Method,
    path: &str,
) -> Result<(http::StatusCode, bytes::Bytes), ApiError> {
    let mut sender = connect_agent::<http_body_util::Empty<bytes::Bytes>>(api, node).await?;
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "kumo-agent")
        .body(http_body_util::Empty::new())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(|e| unavailable(format!("asking node {node}: {e}")))?;
    let status = resp.status();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| unavailable(format!("reading node {node}'s answer: {e}")))?;
    Ok((status, body))
}

/// An HTTP/1.1 connection to the agent of `node_name`: TLS pinned to the certificate fingerprint the agent
/// published on its Node, authenticated with the API server's client certificate (upgrades allowed).
pub async fn connect_agent<B>(
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
