//! One HTTP/1.1 connection (plain TCP for etcd, TLS for kumo) driven by hyper's low-level client, so "N
//! connections" in the report means exactly N TCP connections, each carrying one request at a time.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Longest any single request (or connection setup) may take before the benchmark gives up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where to connect and how: TLS (with the CA to trust) and an optional bearer token.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub bearer: Option<String>,
}

impl Endpoint {
    pub fn plain(addr: SocketAddr) -> Self {
        Endpoint { addr, tls: None, bearer: None }
    }

    /// Trusts exactly the CA in `ca_pem`; speaks HTTP/1.1 (ALPN) with the ring crypto provider.
    pub fn tls(addr: SocketAddr, ca_pem: &[u8], bearer: String) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
            roots.add(cert.context("parsing the CA certificate")?)?;
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Endpoint { addr, tls: Some(Arc::new(cfg)), bearer: Some(bearer) })
    }

    pub async fn connect(&self) -> Result<Conn> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.connect_inner())
            .await
            .with_context(|| format!("connecting to {} timed out", self.addr))?
    }

    async fn connect_inner(&self) -> Result<Conn> {
        let sender = match &self.tls {
            Some(cfg) => handshake(self.tls_stream(cfg.clone()).await?).await?,
            None => handshake(self.tcp().await?).await?,
        };
        let auth = match &self.bearer {
            Some(t) => Some(HeaderValue::from_str(&format!("Bearer {t}"))?),
            None => None,
        };
        Ok(Conn { sender, host: HeaderValue::from_str(&self.addr.to_string())?, auth })
    }
}

impl Endpoint {
    async fn tcp(&self) -> Result<TcpStream> {
        let tcp = TcpStream::connect(self.addr).await.with_context(|| format!("connecting to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }

    /// A TLS connection to the server offering `alpn` (HTTP/2 for clients that multiplex, as agents do).
    pub async fn tls_with_alpn(&self, alpn: &[u8]) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let mut cfg = (**self.tls.as_ref().context("the server speaks TLS")?).clone();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        self.tls_stream(Arc::new(cfg)).await
    }

    async fn tls_stream(&self, cfg: Arc<rustls::ClientConfig>) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = self.tcp().await?;
        let name = rustls::pki_types::ServerName::IpAddress(self.addr.ip().into());
        Ok(tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await?)
    }
}

async fn handshake<T>(io: T) -> Result<SendRequest<Full<Bytes>>>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(io)).await?;
    // The connection task ends when the sender (and any streaming response body) is dropped.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    host: HeaderValue,
    auth: Option<HeaderValue>,
}

impl Conn {
    /// Sends one request; returns the response with its body still streaming.
    pub async fn send(&mut self, method: Method, path: &str, body: Bytes) -> Result<Response<Incoming>> {
        self.sender.ready().await.context("connection closed")?;
        let mut req = Request::builder().method(method).uri(path).header(http::header::HOST, self.host.clone());
        if let Some(a) = &self.auth {
            req = req.header(http::header::AUTHORIZATION, a.clone());
        }
        if !body.is_empty() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req.header(http::header::ACCEPT, "application/json").body(Full::new(body))?;
        Ok(self.sender.send_request(req).await?)
    }

    /// Sends one request and reads the whole response, bounded by [`REQUEST_TIMEOUT`].
    pub async fn request(&mut self, method: Method, path: &str, body: Bytes) -> Result<(StatusCode, Bytes)> {
        let fut = async {
            let resp = self.send(method, path, body).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut).await.context("request timed out")?
    }

    /// Like [`Conn::request`] but fails unless the status is `want`.
    pub async fn expect(&mut self, method: Method, path: &str, body: Bytes, want: StatusCode) -> Result<Bytes> {
        let (status, resp) = self.request(method.clone(), path, body).await?;
        if status != want {
            bail!("{method} {path}: HTTP {status} (wanted {want}): {}", String::from_utf8_lossy(&resp));
        }
        Ok(resp)
    }
}
