//! [`EtcdStore`]: the [`Store`] backend on an etcd v3 cluster, for high availability and scale-out.
//!
//! etcd already has the model the trait describes (one revision across all keys, MVCC history, watch from a
//! revision, compaction), so most methods are one etcd transaction: `kv.rs` has reads and writes, `watch.rs`
//! the watch, `errors.rs` how failures become [`Error::Unavailable`] / [`Error::Timeout`], `gate.rs` how many
//! writes are in flight while etcd is behind applying them.
//!
//! Layout under the configured prefix `P` (so several kumo clusters or tests can share one etcd):
//! - `P/kv` + key: the values (`/kumo/kv/registry/...`);
//! - `P/compact_rev`: the revision kumo last compacted to. etcd does not report its compacted revision, so,
//!   as Kubernetes does, the store keeps its own record next to the data.
//!
//! Differences from the embedded store, all within the trait's contract: revisions are etcd's, shared with
//! anything else in that etcd (they start at 1 and may jump); [`Store::compact`] compacts the whole etcd and
//! writes its record, which takes one revision.
//!
//! etcd limits a request to 1.5 MiB by default; the API server accepts 3 MiB bodies, so production etcd needs
//! `--max-request-bytes=8388608` (8 MiB: a 3 MiB value plus the transaction around it, with room to spare).

mod errors;
mod gate;
mod kv;
mod lease;
mod watch;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, Identity, KvClient, LeaseClient, MaintenanceClient, TlsOptions, WatchClient,
};
use futures::stream::BoxStream;

use crate::{Error, Event, KeyValue, RangeRequest, RangeResponse, Result, Store};

/// How to reach etcd and where kumo's keys live in it.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// Client URLs, `http://host:port` or `https://host:port` (all of one scheme).
    pub endpoints: Vec<String>,
    /// CA bundle that signed the etcd servers' certificates; required for https.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key, for etcd started with `--client-cert-auth`.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Everything kumo writes lives under this key prefix.
    pub prefix: String,
    /// Deadline for each request (and for starting a watch); past it the call fails with [`Error::Timeout`].
    pub timeout: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            ca_file: None,
            cert_file: None,
            key_file: None,
            prefix: "/kumo".into(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Largest response accepted, as etcd's own server-side send limit (and Kubernetes' client): a full range of
/// large objects can be big, and failing it would make a list impossible rather than slow.
const MAX_RESPONSE_BYTES: usize = i32::MAX as usize;

/// HTTP/2 pings notice a peer that vanished without closing the connection (host down, partition), which
/// would otherwise leave a watch waiting forever. kube-apiserver's values: a ping after 30 s of silence, 10 s
/// for its answer (a member busy applying can take seconds, and a connection given up ends every watch on it).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A [`Store`] on etcd. Cheap to share as `Arc<EtcdStore>` (or `Arc<dyn Store>`).
///
/// Calls go to one endpoint while it answers; one that cannot be connected to is skipped for the next. When
/// no endpoint can be reached calls fail with [`Error::Unavailable`] (or [`Error::Timeout`] when etcd accepts
/// connections but does not answer), and once etcd is back the next call reconnects by itself: each failed
/// connection is dialed anew on the next call, nothing stays pinned to a dead one.
pub struct EtcdStore {
    /// One client per endpoint. etcd-client can balance over several endpoints itself, but its balancer keeps
    /// handing calls to an endpoint that refuses connections, so failover is done here, in order.
    endpoints: Vec<Endpoint>,
    /// The endpoint that answered last, tried first.
    preferred: AtomicUsize,
    keys: Keys,
    timeout: Duration,
    leases: lease::Leases,
    /// Writes in flight, narrowed while etcd is behind applying them.
    writes: gate::Gate,
}

struct Endpoint {
    kv: KvClient,
    watch: WatchClient,
    maintenance: MaintenanceClient,
    lease: LeaseClient,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("prefix", &self.keys.root).finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects and checks that etcd answers (so a wrong address or certificate fails here, not on the first
    /// request). Fails with [`Error::Backend`] for a bad configuration, [`Error::Unavailable`] or
    /// [`Error::Timeout`] when etcd does not answer.
    pub async fn connect(config: EtcdConfig) -> Result<EtcdStore> {
        let options = connect_options(&config)?;
        let mut endpoints = Vec::new();
        for url in &config.endpoints {
            // Connecting only builds the channel; nothing is dialed until the first call.
            let client = Client::connect([url], Some(options.clone())).await.map_err(errors::map)?;
            endpoints.push(Endpoint {
                kv: client.kv_client().max_decoding_message_size(MAX_RESPONSE_BYTES),
                watch: client.watch_client().max_decoding_message_size(MAX_RESPONSE_BYTES),
                maintenance: client.maintenance_client(),
                lease: client.lease_client(),
            });
        }
        let store = EtcdStore {
            endpoints,
            preferred: AtomicUsize::new(0),
            keys: Keys::new(&config.prefix),
            timeout: config.timeout,
            leases: Default::default(),
            writes: gate::Gate::new(gate::MAX_IN_FLIGHT),
        };
        store.current_revision().await?;
        Ok(store)
    }

    /// Runs one etcd call under the request deadline, on the preferred endpoint or, when it cannot be
    /// connected to (so the call never reached etcd, and even a write is safe to repeat), on the next ones.
    async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: Fn(KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call_by(tokio::time::Instant::now() + self.timeout, what, f).await
    }

    /// [`Self::call`] with a deadline of the caller's.
    async fn call_by<T, F, Fut>(&self, deadline: tokio::time::Instant, what: &str, f: F) -> Result<T>
    where
        F: Fn(KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.failover(|endpoint| tokio::time::timeout_at(deadline, f(endpoint.kv.clone())), what).await
    }

    /// Tries `f` on each endpoint in turn, starting with the preferred one, until one can be connected to;
    /// `f`'s own deadline elapsing ends the call as [`Error::Timeout`].
    async fn failover<'a, T, F, Fut>(&'a self, f: F, what: &str) -> Result<T>
    where
        F: Fn(&'a Endpoint) -> Fut,
        Fut: Future<Output = Result<Result<T, etcd_client::Error>, tokio::time::error::Elapsed>>,
    {
        let n = self.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last = None;
        for i in (first..first + n).map(|i| i % n) {
            match f(&self.endpoints[i]).await {
                Ok(Ok(v)) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Ok(Err(e)) if errors::is_connect_failure(&e) => {
                    tracing::debug!(error = %e, what, endpoint = i, "etcd endpoint unreachable");
                    last = Some(e);
                }
                Ok(Err(e)) => return Err(errors::map(e)),
                Err(_) => return Err(self.timed_out(what)),
            }
        }
        Err(last.map(errors::map).unwrap_or_else(|| Error::Unavailable("no etcd endpoint".into())))
    }

    fn timed_out(&self, what: &str) -> Error {
        Error::Timeout(format!("etcd {what}: no answer within {:?}", self.timeout))
    }
}

fn connect_options(config: &EtcdConfig) -> Result<ConnectOptions> {
    let bad = |m: String| Error::Backend(format!("etcd configuration: {m}"));
    if config.endpoints.is_empty() {
        return Err(bad("no endpoints".into()));
    }
    let https = config.endpoints.iter().filter(|e| e.starts_with("https://")).count();
    let http = config.endpoints.iter().filter(|e| e.starts_with("http://")).count();
    if https + http != config.endpoints.len() || (https > 0 && http > 0) {
        return Err(bad(format!("endpoints must all be http:// or all https://, got {:?}", config.endpoints)));
    }
    let mut options = ConnectOptions::new()
        .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
        .with_keep_alive_while_idle(true)
        .with_connect_timeout(config.timeout)
        // Without a leader etcd cannot serve linearizable reads or writes; this makes it say so (and cancel
        // watches) instead of letting calls wait.
        .with_require_leader(true);
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| bad(format!("reading {}: {e}", p.display())));
    if https > 0 {
        let ca = config.ca_file.as_ref().ok_or_else(|| bad("https endpoints need ca_file".into()))?;
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?));
        match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?)),
            (None, None) => {}
            _ => return Err(bad("cert_file and key_file go together".into())),
        }
        options = options.with_tls(tls);
    } else if config.ca_file.is_some() || config.cert_file.is_some() || config.key_file.is_some() {
        return Err(bad("TLS files given for http:// endpoints; use https://".into()));
    }
    Ok(options)
}

/// Where things live in etcd.
#[derive(Clone, Debug)]
struct Keys {
    root: String,
    /// `root/kv`, prepended to every kumo key.
    data: String,
    compact: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        let root = prefix.trim_end_matches('/').to_string();
        Keys { data: format!("{root}/kv"), compact: format!("{root}/compact_rev"), root }
    }

    fn data(&self, key: &str) -> String {
        format!("{}{key}", self.data)
    }

    /// The kumo key of an etcd key under `data`.
    fn strip(&self, etcd_key: &[u8]) -> Result<String> {
        let key = etcd_key
            .strip_prefix(self.data.as_bytes())
            .ok_or_else(|| Error::Backend(format!("etcd key {:?} outside kumo's prefix", etcd_key)))?;
        String::from_utf8(key.to_vec()).map_err(|_| Error::Backend("etcd key is not UTF-8".into()))
    }

    fn kv(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
        Ok(KeyValue {
            key: self.strip(kv.key())?,
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
        })
    }
}

/// The first key after every key starting with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: no key sorts after them all, so range to the end of the keyspace.
    vec![0]
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn current_revision(&self) -> Result<i64> {
        self.read_compacted().await.map(|(current, _)| current)
    }

    async fn compacted_revision(&self) -> Result<i64> {
        self.read_compacted().await.map(|(_, compacted)| compacted)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.get_key(key, false).await
    }

    async fn get_serializable(&self, key: &str) -> Result<Option<KeyValue>> {
        // Linearizable reads wait for the read index to be applied, which under a stream of writes queues them
        // behind the writes; a serializable read answers from what the member has applied.
        self.get_key(key, true).await
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        self.range_keys(req).await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        self.create_key(key, value, None).await
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected_revision: i64) -> Result<KeyValue> {
        self.update_key(key, value, expected_revision, None).await
    }

    async fn create_expiring(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<KeyValue> {
        self.with_lease(ttl, |lease| self.create_key(key, value.clone(), Some(lease))).await
    }

    async fn update_expiring(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_revision: i64,
        ttl: Duration,
    ) -> Result<KeyValue> {
        self.with_lease(ttl, |lease| self.update_key(key, value.clone(), expected_revision, Some(lease))).await
    }

    async fn delete(&self, key: &str, expected_revision: Option<i64>) -> Result<KeyValue> {
        self.delete_key(key, expected_revision).await
    }

    async fn watch(&self, prefix: &str, after_revision: i64) -> Result<BoxStream<'static, Result<Event>>> {
        self.watch_prefix(prefix, after_revision).await
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        self.compact_to(revision).await
    }

    /// etcd's own snapshot (its maintenance API) of the whole member, the file `etcdctl snapshot save` writes.
    async fn snapshot(&self) -> Result<BoxStream<'static, Result<bytes::Bytes>>> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let stream = self
            .failover(
                |endpoint| {
                    let mut m = endpoint.maintenance.clone();
                    tokio::time::timeout_at(deadline, async move { m.snapshot().await })
                },
                "snapshot",
            )
            .await?;
        let pieces = futures::stream::unfold(Some(stream), |stream| async move {
            let mut stream = stream?;
            match stream.message().await {
                Ok(Some(piece)) => Some((Ok(bytes::Bytes::copy_from_slice(piece.blob())), Some(stream))),
                Ok(None) => None,
                Err(e) => Some((Err(errors::map(e)), None)),
            }
        });
        Ok(Box::pin(pieces))
    }
}
