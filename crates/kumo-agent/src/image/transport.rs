//! A minimal HTTP/1.1 client for registry traffic: one connection per request (pulls are a handful of large
//! transfers, so pooling buys nothing), plain TCP for hosts configured as insecure, otherwise rustls (ring
//! provider) trusting the system CA bundle. Redirects are followed, dropping `Authorization` when the host
//! changes (blob downloads are commonly redirected to pre-signed object-store URLs).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long connecting (TCP + TLS) and waiting for response headers may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a body may stall between two chunks.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_REDIRECTS: usize = 5;
const USER_AGENT: &str = concat!("kumo-agent/", env!("CARGO_PKG_VERSION"));
/// CA bundle read for HTTPS registries (Debian `ca-certificates`); `SSL_CERT_FILE` overrides it.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Sends one request and returns the response with its body still streaming.
pub(crate) async fn send(method: Method, url: &Uri, headers: &HeaderMap, body: Bytes) -> Result<Response<Incoming>> {
    let scheme = url.scheme_str().unwrap_or("http");
    let authority = url.authority().ok_or_else(|| anyhow!("URL {url} has no host"))?.clone();
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
    let tls = match scheme {
        "http" => false,
        "https" => true,
        other => bail!("unsupported URL scheme {other:?} in {url}"),
    };
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });

    let mut req = Request::builder().method(method).uri(url.path_and_query().map_or("/", |p| p.as_str()));
    let h = req.headers_mut().expect("fresh builder");
    h.extend(headers.clone());
    h.insert(header::HOST, HeaderValue::from_str(authority.as_str())?);
    h.entry(header::USER_AGENT).or_insert(HeaderValue::from_static(USER_AGENT));
    let req = req.body(Full::new(body))?;

    let connect = async {
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        tcp.set_nodelay(true)?;
        anyhow::Ok(tcp)
    };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| anyhow!("connecting to {authority}: timed out after {CONNECT_TIMEOUT:?}"))?
        .with_context(|| format!("connecting to {authority}"))?;
    let exchange = async {
        if tls {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .with_context(|| format!("{host:?} is not a valid TLS server name"))?;
            let stream = tokio_rustls::TlsConnector::from(tls_config()?)
                .connect(name, tcp)
                .await
                .with_context(|| format!("TLS handshake with {authority}"))?;
            exchange(TokioIo::new(stream), req).await
        } else {
            exchange(TokioIo::new(tcp), req).await
        }
    };
    tokio::time::timeout(HEADER_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("{authority}: no response within {HEADER_TIMEOUT:?}"))?
        .with_context(|| format!("request to {authority}"))
}

async fn exchange<IO>(io: IO, req: Request<Full<Bytes>>) -> Result<Response<Incoming>>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "registry connection closed with error");
        }
    });
    Ok(sender.send_request(req).await?)
}

/// GET following redirects. `Authorization` is only sent to the original host.
pub(crate) async fn get(url: &Uri, headers: &HeaderMap) -> Result<(Uri, Response<Incoming>)> {
    let mut url = url.clone();
    let mut headers = headers.clone();
    let origin = url.authority().cloned();
    for _ in 0..=MAX_REDIRECTS {
        let resp = send(Method::GET, &url, &headers, Bytes::new()).await?;
        if !matches!(
            resp.status(),
            StatusCode::MOVED_PERMANENTLY
                | StatusCode::FOUND
                | StatusCode::SEE_OTHER
                | StatusCode::TEMPORARY_REDIRECT
                | StatusCode::PERMANENT_REDIRECT
        ) {
            return Ok((url, resp));
        }
        let location = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| anyhow!("{url}: redirect without a Location header"))?;
        url = join(&url, location)?;
        if url.authority() != origin.as_ref() {
            headers.remove(header::AUTHORIZATION);
        }
    }
    bail!("{url}: more than {MAX_REDIRECTS} redirects")
}

/// Resolves a `Location` header against the URL that returned it.
pub(crate) fn join(base: &Uri, location: &str) -> Result<Uri> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.parse().with_context(|| format!("bad redirect location {location:?}"));
    }
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = base.authority().map_or("", |a| a.as_str());
    let path = if let Some(rest) = location.strip_prefix("//") {
        return format!("{scheme}://{rest}").parse().with_context(|| format!("bad redirect location {location:?}"));
    } else if location.starts_with('/') {
        location.to_string()
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(d, _)| d);
        format!("{dir}/{location}")
    };
    format!("{scheme}://{authority}{path}").parse().with_context(|| format!("bad redirect location {location:?}"))
}

/// Reads a whole body, refusing more than `limit` bytes.
pub(crate) async fn read_body(resp: Response<Incoming>, limit: usize) -> Result<Bytes> {
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    while let Some(chunk) = next_chunk(&mut body).await? {
        if buf.len() + chunk.len() > limit {
            bail!("response body larger than {limit} bytes");
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// The next data chunk of a body, or `None` at its end; fails if the body stalls for [`IDLE_TIMEOUT`].
pub(crate) async fn next_chunk(body: &mut Incoming) -> Result<Option<Bytes>> {
    loop {
        let frame = tokio::time::timeout(IDLE_TIMEOUT, body.frame())
            .await
            .map_err(|_| anyhow!("transfer stalled for {IDLE_TIMEOUT:?}"))?;
        match frame {
            None => return Ok(None),
            Some(frame) => {
                if let Ok(data) = frame?.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// The client TLS configuration: ring provider, system roots, HTTP/1.1 ALPN. Built once it can be (a failure,
/// such as a missing CA bundle, is retried on the next pull, so installing ca-certificates needs no restart).
fn tls_config() -> Result<Arc<rustls::ClientConfig>> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    if let Some(c) = CONFIG.get() {
        return Ok(c.clone());
    }
    let built = Arc::new(build_tls_config()?);
    Ok(CONFIG.get_or_init(|| built).clone())
}

fn build_tls_config() -> Result<rustls::ClientConfig> {
    let path = std::env::var("SSL_CERT_FILE").unwrap_or_else(|_| CA_BUNDLE.to_string());
    let pem = std::fs::read(&path)
        .with_context(|| format!("reading CA bundle {path} for HTTPS registries (install ca-certificates)"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        // Bundles can hold certificates rustls rejects; skip those rather than failing every pull.
        let _ = roots.add(cert.with_context(|| format!("parsing {path}"))?);
    }
    if roots.is_empty() {
        bail!("no usable CA certificates in {path}");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_redirect_locations() {
        let base: Uri = "http://reg:5000/v2/a/blobs/sha256:x?y=1".parse().unwrap();
        assert_eq!(join(&base, "https://s3.example/o?sig=1").unwrap().to_string(), "https://s3.example/o?sig=1");
        assert_eq!(join(&base, "/other/path?q").unwrap().to_string(), "http://reg:5000/other/path?q");
        assert_eq!(join(&base, "//cdn.example/p").unwrap().to_string(), "http://cdn.example/p");
        assert_eq!(join(&base, "sibling").unwrap().to_string(), "http://reg:5000/v2/a/blobs/sibling");
    }

    #[test]
    fn tls_config_loads_system_roots() {
        if std::path::Path::new(CA_BUNDLE).exists() {
            tls_config().expect("system CA bundle should load");
        }
    }
}
