//! kube-rs clients for kumo's own processes: from a kubeconfig, and able to fail over between several API
//! server replicas (`--server URL,URL…`). A replica that refuses connections, times out, or answers 503 (its
//! store is unreachable) makes the client move to the next one; the caller's retry (kube-rs watchers relist,
//! controllers requeue, the agent loops) then lands on a live replica.

use anyhow::{bail, Context, Result};
use http::{Request, Response, StatusCode, Uri};
use kube::client::{Body, ConfigExt};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tower::{BoxError, Service, ServiceBuilder};

/// A client for `config`, spreading over `servers` (the kubeconfig's own server when empty).
pub fn client(config: kube::Config, servers: &[String]) -> Result<kube::Client> {
    if servers.is_empty() {
        return Ok(kube::Client::try_from(config)?);
    }
    let servers: Vec<Uri> = servers
        .iter()
        .flat_map(|s| s.split(','))
        .map(|s| s.trim().parse::<Uri>().with_context(|| format!("--server {s:?} is not a URL")))
        .collect::<Result<_>>()?;
    if servers.iter().any(|u| u.scheme_str() != Some("https") || u.authority().is_none()) {
        bail!("--server takes https://HOST:PORT URLs");
    }
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    // A replica whose host is gone drops packets: give up quickly and try the next one.
    http.set_connect_timeout(Some(Duration::from_secs(3)));
    let https = config.rustls_https_connector_with_connector(http)?;
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
    let service = ServiceBuilder::new()
        .layer_fn(|inner| Failover { inner, servers: Arc::new(servers.clone()), current: Default::default() })
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(hyper);
    Ok(kube::Client::new(service, config.default_namespace))
}

#[derive(Clone)]
struct Failover<S> {
    inner: S,
    servers: Arc<Vec<Uri>>,
    current: Arc<AtomicUsize>,
}

impl<S, B> Service<Request<Body>> for Failover<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let used = self.current.load(Ordering::Relaxed) % self.servers.len();
        *req.uri_mut() = on_server(&self.servers[used], req.uri());
        let next = (used + 1) % self.servers.len();
        let current = self.current.clone();
        let advance = move || {
            let _ = current.compare_exchange(used, next, Ordering::Relaxed, Ordering::Relaxed);
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            match fut.await {
                Err(e) => {
                    advance();
                    Err(e)
                }
                Ok(resp) => {
                    if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
                        advance();
                    }
                    Ok(resp)
                }
            }
        })
    }
}

/// `path` (a request's path and query) on `server`, keeping any base path the server URL has.
fn on_server(server: &Uri, path: &Uri) -> Uri {
    let base = server.path().trim_end_matches('/');
    let pq = path.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    Uri::builder()
        .scheme(server.scheme_str().unwrap_or("https"))
        .authority(server.authority().map(|a| a.as_str()).unwrap_or_default())
        .path_and_query(format!("{base}{pq}"))
        .build()
        .expect("a valid server URL and request path make a valid URL")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_go_to_the_chosen_server() {
        let s: Uri = "https://10.0.0.2:6443".parse().unwrap();
        assert_eq!(
            on_server(&s, &"/api/v1/nodes?watch=1".parse().unwrap()).to_string(),
            "https://10.0.0.2:6443/api/v1/nodes?watch=1"
        );
        let s: Uri = "https://lb.example/k8s/".parse().unwrap();
        assert_eq!(on_server(&s, &"/version".parse().unwrap()).to_string(), "https://lb.example/k8s/version");
    }
}
