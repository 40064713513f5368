//! Bearer-token auth and redirects: a small front end in front of the real registry that demands a token
//! (Docker token auth, as Docker Hub and quay.io do), issues one anonymously, and redirects blob downloads
//! to the registry itself (as registries do to object storage).

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::*;
use crate::image::ImageCache;

struct Front {
    host: String,
    upstream: String,
    tokens_issued: AtomicUsize,
    redirects: AtomicUsize,
}

async fn start_front(upstream: &str) -> Arc<Front> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = Arc::new(Front {
        host: listener.local_addr().unwrap().to_string(),
        upstream: upstream.to_string(),
        tokens_issued: AtomicUsize::new(0),
        redirects: AtomicUsize::new(0),
    });
    let f = front.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let f = f.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(f.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    front
}

fn reply(status: StatusCode, headers: &[(&str, String)], body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    b.body(Full::new(body.into())).unwrap()
}

async fn handle(f: Arc<Front>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/token" {
        let query = req.uri().query().unwrap_or("");
        if !query.contains("scope=repository%3Akubevirt%2Ftest%3Apull") || !query.contains("service=fake") {
            return Ok(reply(StatusCode::BAD_REQUEST, &[], format!("bad token query {query}")));
        }
        f.tokens_issued.fetch_add(1, Ordering::SeqCst);
        return Ok(reply(StatusCode::OK, &[("content-type", "application/json".into())], r#"{"token":"s3cret"}"#));
    }
    if path.starts_with("/v2/kubevirt/private/") {
        return Ok(reply(StatusCode::UNAUTHORIZED, &[("www-authenticate", r#"Basic realm="x""#.into())], ""));
    }
    let authorized = req.headers().get(header::AUTHORIZATION).is_some_and(|v| v == "Bearer s3cret");
    if !authorized {
        let challenge =
            format!(r#"Bearer realm="http://{}/token",service="fake",scope="repository:kubevirt/test:pull""#, f.host);
        let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
        return Ok(reply(StatusCode::UNAUTHORIZED, &[("www-authenticate", challenge)], body));
    }
    if path.contains("/blobs/") {
        f.redirects.fetch_add(1, Ordering::SeqCst);
        let location = format!("http://{}{path}", f.upstream);
        return Ok(reply(StatusCode::TEMPORARY_REDIRECT, &[("location", location)], ""));
    }
    // Manifests: proxied.
    let url: Uri = format!("http://{}{path}", f.upstream).parse().unwrap();
    let mut headers = HeaderMap::new();
    if let Some(accept) = req.headers().get(header::ACCEPT) {
        headers.insert(header::ACCEPT, accept.clone());
    }
    let resp = transport::send(Method::GET, &url, &headers, Bytes::new()).await.unwrap();
    let status = resp.status();
    let content_type = resp.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_string());
    let body = transport::read_body(resp, 1 << 20).await.unwrap();
    Ok(reply(status, &[("content-type", content_type.unwrap_or_default())], body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_challenge_is_answered_and_redirects_followed() {
    let reg = TestRegistry::start();
    let disk = qcow2("1M");
    let digest = reg.push_image("kubevirt/test", "latest", vec![disk_layer(disk.clone())]).await;
    let front = start_front(&reg.host).await;
    let cfg = RegistryConfig { insecure: [front.host.clone()].into(), ..Default::default() };
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(cache_dir.path());

    let got = cache.disk_for(&format!("{}/kubevirt/test:latest", front.host), &cfg, PullPolicy::Always).await.unwrap();
    assert_eq!(got.digest, digest);
    assert_eq!(std::fs::read(&got.path).unwrap(), disk);
    assert_eq!(front.tokens_issued.load(Ordering::SeqCst), 1, "one token, reused for every request of the pull");
    assert_eq!(front.redirects.load(Ordering::SeqCst), 1, "the layer blob was fetched through a redirect");

    let err = format!(
        "{:#}",
        cache.disk_for(&format!("{}/kubevirt/private:latest", front.host), &cfg, PullPolicy::Always).await.unwrap_err()
    );
    assert!(err.contains("HTTP 401") && err.contains("basic-auth credentials"), "{err}");
}
