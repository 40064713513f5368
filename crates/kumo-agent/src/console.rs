//! The agent's endpoint for the API server: per VMI, WebSockets to the serial console, to QEMU's VNC server and
//! to ports of the guest ([`crate::streams`]), which the API server proxies KubeVirt's `console`, `vnc` and
//! `portforward` subresources to (as kube-apiserver proxies exec to the kubelet); the guest agent's answers,
//! soft reboots and resets; uploads into this node's volumes; and the node's metrics ([`crate::metrics`]). HTTPS with a certificate the agent
//! generates; its SHA-256 fingerprint is published on the Node, so the API server can pin it. Callers must
//! present a client certificate issued by the cluster CA to the API server (`CN=kumo-apiserver`): a node's own
//! certificate, from the same CA, is refused.

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub struct ConsoleEndpoint {
    pub addr: SocketAddr,
    pub fingerprint: String,
}

/// The common name of the API server's client certificate towards nodes.
pub const APISERVER_CLIENT_CN: &str = "kumo-apiserver";

/// The agent, once it is up: what uploads, port forwards and resets need besides the run directories.
pub(crate) type AgentCell = Arc<std::sync::OnceLock<Arc<crate::agent::Agent>>>;

/// Serves the endpoint on `bind` for the VMIs under `vmis_dir/<uid>/run/`, to the API server only.
pub(crate) async fn serve(
    bind: SocketAddr,
    vmis_dir: PathBuf,
    cluster_ca: &str,
    agent: AgentCell,
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
    let ctx = Arc::new((vmis_dir, agent));
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
                        if !is_apiserver {
                            return Ok::<_, std::convert::Infallible>(reply(
                                StatusCode::FORBIDDEN,
                                "only the API server may use this endpoint",
                            ));
                        }
                        Ok(route(req, &ctx.0, ctx.1.get().cloned()).await)
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

/// A path's VMI uid: one plain segment.
fn uid_of(seg: Option<&str>) -> Option<&str> {
    seg.filter(|u| !u.is_empty() && !u.contains("..") && !u.contains('/'))
}

async fn route(
    req: Request<hyper::body::Incoming>,
    vmis_dir: &std::path::Path,
    agent: Option<Arc<crate::agent::Agent>>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if path == "/metrics" && req.method() == http::Method::GET {
        return match agent {
            Some(agent) => Response::builder()
                .header(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")
                .body(Full::new(Bytes::from(crate::metrics::render(&agent).await)))
                .expect("response"),
            None => reply(StatusCode::SERVICE_UNAVAILABLE, "the agent is starting"),
        };
    }
    let mut parts = path.trim_start_matches('/').split('/');
    let (kind, uid) = (parts.next().unwrap_or(""), uid_of(parts.next()));
    let rest: Vec<&str> = parts.collect();
    let Some(uid) = uid else { return reply(StatusCode::NOT_FOUND, "expected /<what>/<uid>/...") };
    let run = vmis_dir.join(uid).join("run");
    match (kind, rest.as_slice()) {
        ("upload", []) => match agent {
            Some(agent) => upload(req, agent, uid).await,
            None => reply(StatusCode::SERVICE_UNAVAILABLE, "the agent is starting"),
        },
        ("guest", [what]) if req.method() == http::Method::GET => guest_info(&run.join("qga.sock"), what).await,
        ("guest", [action @ ("softreboot" | "reset")]) if req.method() == http::Method::PUT => match agent {
            Some(agent) => guest_action(&agent, uid, action).await,
            None => reply(StatusCode::SERVICE_UNAVAILABLE, "the agent is starting"),
        },
        ("console", []) => {
            crate::streams::open(req, agent, uid, crate::streams::Far::Unix(run.join("serial.sock"))).await
        }
        ("vnc", []) => crate::streams::open(req, agent, uid, crate::streams::Far::Unix(run.join("vnc.sock"))).await,
        ("portforward", [port, protocol]) => {
            let (Ok(port), Some(agent)) = (port.parse::<u16>(), agent) else {
                return reply(StatusCode::BAD_REQUEST, "expected /portforward/<uid>/<port>/<tcp|udp>");
            };
            let Some(ip) = agent.vms.lock().await.get(uid).and_then(|l| l.iface.as_ref().map(|i| i.1.clone())) else {
                return reply(StatusCode::NOT_FOUND, "this VMI has no running guest with an address on this node");
            };
            let far = match *protocol {
                "tcp" => crate::streams::Far::Tcp(format!("{ip}:{port}")),
                "udp" => crate::streams::Far::Udp(format!("{ip}:{port}")),
                _ => return reply(StatusCode::BAD_REQUEST, "the protocol is tcp or udp"),
            };
            crate::streams::open(req, Some(agent), uid, far).await
        }
        _ => reply(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}

async fn upload(
    req: Request<hyper::body::Incoming>,
    agent: Arc<crate::agent::Agent>,
    name: &str,
) -> Response<Full<Bytes>> {
    let length = crate::volumes::import::content_length(req.headers());
    match crate::volumes::upload::receive(&agent, name, req.into_body(), length).await {
        Ok(()) => reply(StatusCode::OK, "uploaded"),
        Err((code, why)) => reply(code, &why),
    }
}

/// `GET /guest/<uid>/<what>`: what the guest agent of that VMI says (see [`crate::agent::guest::info`]).
async fn guest_info(socket: &std::path::Path, what: &str) -> Response<Full<Bytes>> {
    if !socket.exists() {
        return reply(StatusCode::NOT_FOUND, "this VMI has no running guest on this node");
    }
    match crate::agent::guest::info(socket, what).await {
        Ok(v) => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(v.to_string())))
            .expect("response"),
        Err(e) => reply(StatusCode::CONFLICT, &format!("the guest agent: {e}")),
    }
}

/// `PUT /guest/<uid>/softreboot|reset`: a reboot asked of the guest agent, or QEMU's hard reset.
async fn guest_action(agent: &crate::agent::Agent, uid: &str, action: &str) -> Response<Full<Bytes>> {
    let Some(local) = agent.vms.lock().await.get(uid).cloned() else {
        return reply(StatusCode::NOT_FOUND, "this VMI has no running guest on this node");
    };
    let done = match action {
        "softreboot" => match crate::agent::guest::agent_of(&local) {
            Some(ga) => ga
                .execute("guest-shutdown", Some(serde_json::json!({"mode": "reboot"})), Duration::from_secs(10))
                .await
                .map(|_| ())
                .map_err(|e| format!("the guest agent: {e}")),
            None => Err("a simulated guest has no guest agent".to_string()),
        },
        _ => match local.qmp() {
            Ok(qmp) => qmp.system_reset().await.map_err(|e| format!("QEMU: {e}")),
            Err(e) => Err(e),
        },
    };
    match done {
        Ok(()) => reply(StatusCode::OK, action),
        Err(e) => reply(StatusCode::CONFLICT, &e),
    }
}
