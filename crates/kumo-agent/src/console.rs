//! The agent's console endpoint: a WebSocket per VMI serial console, which the API server proxies
//! `subresources.kubevirt.io/.../virtualmachineinstances/{name}/console` to (as kube-apiserver proxies exec to
//! the kubelet). HTTPS with a certificate the agent generates; its SHA-256 fingerprint is published on the
//! Node, so the API server can pin it. Callers must present a client certificate issued by the cluster CA to
//! the API server (`CN=kumo-apiserver`): a node's own certificate, from the same CA, is refused.

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, protocol::Role, Message};

pub struct ConsoleEndpoint {
    pub addr: SocketAddr,
    pub fingerprint: String,
}

/// The common name of the API server's client certificate towards nodes.
pub const APISERVER_CLIENT_CN: &str = "kumo-apiserver";

/// Where uploads into volumes go once the agent is up (`POST /upload/<volume>`).
pub(crate) type Uploads = Arc<std::sync::OnceLock<Arc<crate::agent::Agent>>>;

/// Serves consoles of the VMIs under `vmis_dir/<uid>/run/serial.sock` on `bind`, and uploads into this node's
/// volumes, to the API server only.
pub(crate) async fn serve(
    bind: SocketAddr,
    vmis_dir: PathBuf,
    cluster_ca: &str,
    uploads: Uploads,
) -> Result<ConsoleEndpoint> {
    let key = rcgen::KeyPair::generate()?;
    let params = rcgen::CertificateParams::new(vec!["kumo-agent".to_string()])?;
    let cert = params.self_signed(&key)?;
    let fingerprint = hex::encode(Sha256::digest(cert.der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls_pemfile::certs(&mut cluster_ca.as_bytes()) {
        roots.add(ca.context("the cluster CA")?)?;
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener =
        tokio::net::TcpListener::bind(bind).await.with_context(|| format!("binding the console endpoint {bind}"))?;
    let addr = listener.local_addr()?;
    let ctx = Arc::new((vmis_dir, uploads));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let (acceptor, ctx) = (acceptor.clone(), ctx.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                // The CA also issues node certificates: only the API server's may open consoles.
                let peer = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
                let is_apiserver = peer.as_deref().is_some_and(is_apiserver_cert);
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let ctx = ctx.clone();
                    async move {
                        if req.uri().path().starts_with("/guest/") {
                            return Ok::<_, std::convert::Infallible>(
                                guest_info(req.uri().path(), &ctx.0, is_apiserver).await,
                            );
                        }
                        if !req.uri().path().starts_with("/upload/") {
                            return Ok::<_, std::convert::Infallible>(handle(req, &ctx.0, is_apiserver));
                        }
                        Ok(upload(req, ctx.1.get().cloned(), is_apiserver).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Ok(ConsoleEndpoint { addr, fingerprint })
}

fn reply(code: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    Response::builder().status(code).body(Full::new(Bytes::from(msg.to_string()))).expect("response")
}

fn is_apiserver_cert(der: &[u8]) -> bool {
    x509_parser::parse_x509_certificate(der).is_ok_and(|(_, c)| {
        c.subject().iter_common_name().next().and_then(|n| n.as_str().ok()) == Some(APISERVER_CLIENT_CN)
    })
}

async fn upload(
    req: Request<hyper::body::Incoming>,
    agent: Option<Arc<crate::agent::Agent>>,
    is_apiserver: bool,
) -> Response<Full<Bytes>> {
    if !is_apiserver {
        return reply(StatusCode::FORBIDDEN, "only the API server may upload");
    }
    let Some(agent) = agent else { return reply(StatusCode::SERVICE_UNAVAILABLE, "the agent is starting") };
    let name = req.uri().path().trim_start_matches("/upload/").to_string();
    let length = crate::volumes::import::content_length(req.headers());
    match crate::volumes::upload::receive(&agent, &name, req.into_body(), length).await {
        Ok(()) => reply(StatusCode::OK, "uploaded"),
        Err((code, why)) => reply(code, &why),
    }
}

/// `GET /guest/<uid>/<what>`: what the guest agent of that VMI says (see [`crate::agent::guest::info`]).
async fn guest_info(path: &str, vmis_dir: &std::path::Path, is_apiserver: bool) -> Response<Full<Bytes>> {
    if !is_apiserver {
        return reply(StatusCode::FORBIDDEN, "only the API server may ask guests");
    }
    let mut parts = path.trim_start_matches("/guest/").splitn(2, '/');
    let (Some(uid), Some(what)) = (parts.next(), parts.next()) else {
        return reply(StatusCode::NOT_FOUND, "expected /guest/<uid>/<what>");
    };
    if uid.is_empty() || uid.contains("..") || what.contains('/') {
        return reply(StatusCode::NOT_FOUND, "no such guest");
    }
    let socket = vmis_dir.join(uid).join("run").join("qga.sock");
    if !socket.exists() {
        return reply(StatusCode::NOT_FOUND, "this VMI has no running guest on this node");
    }
    match crate::agent::guest::info(&socket, what).await {
        Ok(v) => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(v.to_string())))
            .expect("response"),
        Err(e) => reply(StatusCode::CONFLICT, &format!("the guest agent: {e}")),
    }
}

fn handle(
    mut req: Request<hyper::body::Incoming>,
    vmis_dir: &std::path::Path,
    is_apiserver: bool,
) -> Response<Full<Bytes>> {
    if !is_apiserver {
        return reply(StatusCode::FORBIDDEN, "only the API server may open consoles");
    }
    let Some(uid) =
        req.uri().path().strip_prefix("/console/").filter(|u| !u.is_empty() && !u.contains('/') && !u.contains(".."))
    else {
        return reply(StatusCode::NOT_FOUND, "no such console");
    };
    let socket = vmis_dir.join(uid).join("run").join("serial.sock");
    if !socket.exists() {
        return reply(StatusCode::NOT_FOUND, "this VMI has no running console on this node");
    }
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return reply(StatusCode::BAD_REQUEST, "a WebSocket upgrade is required");
    };
    let protocol = req.headers().get("sec-websocket-protocol").cloned();
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        if let Err(e) = pipe(ws, &socket).await {
            tracing::debug!("console session ended: {e}");
        }
    });
    let mut resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()));
    if let Some(p) = protocol {
        // KubeVirt's clients ask for "plain.kubevirt.io"; echo the first offered protocol.
        let first = p.to_str().unwrap_or("").split(',').next().unwrap_or("").trim().to_string();
        resp = resp.header("sec-websocket-protocol", first);
    }
    resp.body(Full::new(Bytes::new())).expect("response")
}

/// Console bytes both ways: WebSocket binary/text messages ⇄ the serial socket.
async fn pipe<S>(ws: tokio_tungstenite::WebSocketStream<S>, socket: &std::path::Path) -> Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let serial =
        tokio::net::UnixStream::connect(socket).await.with_context(|| format!("connecting {}", socket.display()))?;
    let (mut sr, mut sw) = serial.into_split();
    let (mut wtx, mut wrx) = ws.split();
    let to_ws = async {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = sr.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            wtx.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await?;
        }
        anyhow::Ok(())
    };
    let to_serial = async {
        while let Some(msg) = wrx.next().await {
            match msg? {
                Message::Binary(b) => sw.write_all(&b).await?,
                Message::Text(t) => sw.write_all(t.as_bytes()).await?,
                Message::Close(_) => break,
                _ => {}
            }
        }
        anyhow::Ok(())
    };
    tokio::select! {
        r = to_ws => r,
        r = to_serial => r,
    }
}
