//! Startup and the connection loop: open the store, load the PKI, seed system namespaces, load CRDs, start
//! the watch cache and background loops, then serve HTTPS.

use crate::auth;
use crate::crypt::{ClusterSecret, EncryptedStore, EncryptionConfig};
use crate::handlers;
use crate::objects::Objects;
use crate::registry::Registry;
use crate::state::{self, ApiServer};
use crate::tls;
use crate::watch_cache::WatchCache;
use anyhow::{Context, Result};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kumo_store::Store;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Extra names/IPs for the serving certificate.
    pub hosts: Vec<String>,
    /// How often history older than the previous tick is compacted.
    pub compaction_interval: Duration,
    /// Events kept in the watch cache.
    pub watch_cache_size: usize,
    pub bookmark_interval: Duration,
    /// Seats API Priority and Fairness shares among its priority levels: the sum of these two, as Kubernetes'
    /// `--max-requests-inflight` and `--max-mutating-requests-inflight`.
    pub max_requests_inflight: usize,
    pub max_mutating_requests_inflight: usize,
    /// Events are deleted this long after their last write (Kubernetes' `--event-ttl`).
    pub event_ttl: Duration,
    /// The secret every replica of this cluster shares (None: the one in the data directory, or a new one).
    pub cluster_secret: Option<String>,
    /// Kubernetes' EncryptionConfiguration for data at rest (None: Secrets sealed with the cluster secret).
    pub encryption_config: Option<PathBuf>,
}

impl Config {
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Self {
        Config {
            data_dir,
            listen,
            hosts: vec![],
            compaction_interval: Duration::from_secs(300),
            watch_cache_size: 5_000,
            bookmark_interval: Duration::from_secs(30),
            event_ttl: Duration::from_secs(3600),
            max_requests_inflight: 400,
            max_mutating_requests_inflight: 200,
            cluster_secret: None,
            encryption_config: None,
        }
    }
}

/// A started server: where it listens and where its kubeconfig is.
pub struct Running {
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    pub api: Arc<ApiServer>,
}

/// Starts serving with `store` (and `events`, a store for Events alone, when given); returns once the listener
/// is bound (serving continues in the background).
pub async fn run(config: Config, store: Arc<dyn Store>, events: Option<Arc<dyn Store>>) -> Result<Running> {
    private_dir(&config.data_dir)?;
    let mut phases = Phases::new();
    let mut secret = ClusterSecret::resolve(&config.data_dir, config.cluster_secret.as_deref())?;
    let encryption = match &config.encryption_config {
        Some(path) => EncryptionConfig::load(path)?,
        None => EncryptionConfig::from_cluster_secret(&secret),
    };
    let store: Arc<dyn Store> = Arc::new(EncryptedStore::new(store, encryption.clone()));
    let events: Option<Arc<dyn Store>> = events.map(|e| Arc::new(EncryptedStore::new(e, encryption)) as _);
    // Clients reach a replica at the address it listens on: that is always one of its certificate's names.
    let mut hosts = config.hosts.clone();
    if !config.listen.ip().is_unspecified() {
        hosts.push(config.listen.ip().to_string());
    }
    let pki = tls::load_or_create(&*store, &secret, &config.data_dir, &hosts).await?;
    secret.persist()?;
    let tls_config = tls::server_config(&pki)?;
    phases.mark("pki");
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {} (is another kumo server running?)", config.listen))?;
    let addr = listener.local_addr()?;
    let server_url = format!("https://{addr}");
    let kubeconfig = tls::write_kubeconfig(&config.data_dir, &pki, &server_url)?;

    let cache = WatchCache::start(store.clone(), config.watch_cache_size).await?;
    let events_cache = match &events {
        Some(e) => WatchCache::start(e.clone(), config.watch_cache_size).await?,
        None => cache.clone(),
    };
    phases.mark("watch cache");
    let objects = Objects { events: events.unwrap_or_else(|| store.clone()), store, event_ttl: config.event_ttl };
    let ca = tls::ClusterCa::new(&pki);
    let registry = Arc::new(Registry::with_builtins());
    let api = Arc::new(ApiServer::new(objects, registry, (cache, events_cache), pki.token.clone(), ca, &config));
    state::bootstrap(&api).await?;
    phases.mark("bootstrap");
    crate::flowcontrol::start(&api).await?;
    state::publish_upload_proxy(&api, &server_url).await?;
    state::follow_crds(api.clone());
    crate::corruption::spawn(api.clone());
    phases.mark("flow control and CRDs");

    let acceptor = tokio_rustls::TlsAcceptor::from(tls_config);
    let serve_api = api.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let api = serve_api.clone();
            tokio::spawn(async move {
                let stream = match acceptor.accept(tcp).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!("TLS handshake with {peer}: {e}");
                        return;
                    }
                };
                // The verified client certificate, if any, names the caller for the whole connection.
                let cert_user = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| auth::user_from_cert(c));
                let svc = hyper::service::service_fn(move |req| {
                    let (api, user) = (api.clone(), cert_user.clone());
                    // Boxed: hyper keeps a request's future inside its stream's task until the response body
                    // ends, so unboxed every open watch held the whole dispatch future (~7 KiB) for its life.
                    let fut = Box::pin(handlers::dispatch(api, req, user));
                    async move { Ok::<_, std::convert::Infallible>(fut.await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await {
                    tracing::debug!("connection from {peer}: {e}");
                }
            });
        }
    });
    tracing::info!(
        "kumo API server listening on {server_url}; kubeconfig at {}; started in {phases}",
        kubeconfig.display()
    );
    Ok(Running { addr, kubeconfig, api })
}

/// Creates the data directory private to this user: it holds the store, the cluster secret and credentials.
fn private_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating data directory {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private (mode 0700)", dir.display()))
}

/// How long each start-up phase took, for the log: a slow restart says where its time went.
struct Phases {
    last: std::time::Instant,
    took: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn new() -> Phases {
        Phases { last: std::time::Instant::now(), took: Vec::new() }
    }

    fn mark(&mut self, phase: &'static str) {
        let now = std::time::Instant::now();
        self.took.push((phase, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all: Duration = self.took.iter().map(|(_, d)| *d).sum();
        write!(f, "{:.2}s (", all.as_secs_f64())?;
        for (i, (phase, d)) in self.took.iter().enumerate() {
            write!(f, "{}{phase} {:.2}s", if i > 0 { ", " } else { "" }, d.as_secs_f64())?;
        }
        write!(f, ")")
    }
}
