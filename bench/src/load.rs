//! Closed-loop load: N workers, each owning one connection and issuing one request at a time. A phase runs a
//! fixed range of operation indices; worker `w` of `n` takes indices `start + w, start + w + n, …`, so the
//! same worker creates and later updates the same objects (and keeps their resourceVersions to itself).

use crate::http::{Conn, Endpoint};
use crate::procs::CpuMeter;
use crate::report::Phase;
use anyhow::{bail, Context, Result};
use base64::Engine;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Method, StatusCode};
use std::collections::HashMap;
use std::ops::Range;
use std::time::{Duration, Instant};

pub trait Worker: Send + 'static {
    fn op(&mut self, i: usize) -> BoxFuture<'_, Result<()>>;
    fn set_mode(&mut self, mode: Mode);
}

impl Worker for Box<dyn Worker> {
    fn op(&mut self, i: usize) -> BoxFuture<'_, Result<()>> {
        (**self).op(i)
    }

    fn set_mode(&mut self, mode: Mode) {
        (**self).set_mode(mode)
    }
}

/// Runs operations `range` over `workers` (all connections already open) and times them, metering the CPU
/// used by the server (`server_pid`) and by this process.
pub async fn run_phase<W: Worker>(workers: Vec<W>, range: Range<usize>, server_pid: u32) -> Result<(Vec<W>, Phase)> {
    run_phase_metered(workers, range, CpuMeter::start(server_pid)).await
}

/// [`run_phase`] with a meter of one's own (e.g. also metering the server's store).
pub async fn run_phase_metered<W: Worker>(
    workers: Vec<W>,
    range: Range<usize>,
    cpu: CpuMeter,
) -> Result<(Vec<W>, Phase)> {
    let start = Instant::now();
    let n = workers.len();
    let (workers, lats) = run_ops(workers, range).await?;
    Ok((workers, Phase::of(n, lats, start.elapsed().as_secs_f64(), cpu)))
}

/// Runs operations `range` over `workers`; returns them with every operation's latency.
pub async fn run_ops<W: Worker>(workers: Vec<W>, range: Range<usize>) -> Result<(Vec<W>, Vec<Duration>)> {
    let n = workers.len();
    let count = range.len();
    let mut set = tokio::task::JoinSet::new();
    for (w, mut worker) in workers.into_iter().enumerate() {
        let range = range.clone();
        set.spawn(async move {
            let mut lats = Vec::with_capacity(count / n + 1);
            for i in (range.start + w..range.end).step_by(n) {
                let t = Instant::now();
                worker.op(i).await.with_context(|| format!("operation {i} (worker {w})"))?;
                lats.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>((w, worker, lats))
        });
    }
    let mut done = Vec::with_capacity(n);
    let mut lats: Vec<Duration> = Vec::with_capacity(count);
    while let Some(joined) = set.join_next().await {
        let (w, worker, l) = joined.context("worker panicked")??;
        done.push((w, worker));
        lats.extend(l);
    }
    done.sort_by_key(|(w, _)| *w);
    Ok((done.into_iter().map(|(_, w)| w).collect(), lats))
}

/// A ConfigMap whose JSON is exactly `size` bytes (the `payload` value is padded to fit). `version` varies
/// the payload so every update really changes the object.
pub fn configmap_body(name: &str, rv: Option<&str>, version: usize, size: usize) -> Bytes {
    let rv = rv.map(|rv| format!(r#","resourceVersion":"{rv}""#)).unwrap_or_default();
    let head = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}","namespace":"default"{rv}}},"data":{{"payload":""#
    );
    let tail = r#""}}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut body = Vec::with_capacity(head.len() + pad + tail.len());
    body.extend_from_slice(head.as_bytes());
    body.extend((0..pad).map(|k| b'a' + ((k + version) % 26) as u8));
    body.extend_from_slice(tail.as_bytes());
    Bytes::from(body)
}

pub fn resource_version(body: &[u8]) -> Result<String> {
    let v: serde_json::Value = serde_json::from_slice(body).context("response is not JSON")?;
    Ok(v["metadata"]["resourceVersion"].as_str().context("no metadata.resourceVersion in response")?.to_string())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Create,
    Update,
}

/// Creates ConfigMaps (POST) or replaces them (PUT with the resourceVersion last seen) in `default`.
pub struct KumoWorker {
    conn: Conn,
    prefix: String,
    mode: Mode,
    size: usize,
    rvs: HashMap<usize, (String, usize)>,
    /// Size of the last object as kumo returned it (what is stored, plus resourceVersion).
    pub stored_bytes: usize,
}

pub const CONFIGMAPS: &str = "/api/v1/namespaces/default/configmaps";

impl KumoWorker {
    pub async fn open(endpoint: &Endpoint, n: usize, prefix: &str, size: usize) -> Result<Vec<KumoWorker>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let conn = endpoint.connect().await?;
            out.push(KumoWorker {
                conn,
                prefix: prefix.to_string(),
                mode: Mode::Create,
                size,
                rvs: HashMap::new(),
                stored_bytes: 0,
            });
        }
        Ok(out)
    }

    async fn create(&mut self, i: usize) -> Result<()> {
        let name = format!("{}-{i:06}", self.prefix);
        let body = configmap_body(&name, None, 0, self.size);
        let resp = self.conn.expect(Method::POST, CONFIGMAPS, body, StatusCode::CREATED).await?;
        self.stored_bytes = resp.len();
        self.rvs.insert(i, (resource_version(&resp)?, 0));
        Ok(())
    }

    async fn update(&mut self, i: usize) -> Result<()> {
        let name = format!("{}-{i:06}", self.prefix);
        let Some((rv, version)) = self.rvs.get(&i) else { bail!("{name} was not created by this worker") };
        let version = version + 1;
        let body = configmap_body(&name, Some(rv), version, self.size);
        let path = format!("{CONFIGMAPS}/{name}");
        let resp = self.conn.expect(Method::PUT, &path, body, StatusCode::OK).await?;
        self.rvs.insert(i, (resource_version(&resp)?, version));
        Ok(())
    }
}

impl Worker for KumoWorker {
    fn op(&mut self, i: usize) -> BoxFuture<'_, Result<()>> {
        match self.mode {
            Mode::Create => Box::pin(self.create(i)),
            Mode::Update => Box::pin(self.update(i)),
        }
    }

    fn set_mode(&mut self, mode: Mode) {
        self.mode = mode;
    }
}

/// Puts keys through etcd's HTTP/JSON gateway (`POST /v3/kv/put`, base64 key and value). "Create" puts new
/// keys; "update" puts the same keys again with a changed value.
pub struct EtcdWorker {
    conn: Conn,
    prefix: String,
    mode: Mode,
    size: usize,
}

impl EtcdWorker {
    pub async fn open(endpoint: &Endpoint, n: usize, prefix: &str, size: usize) -> Result<Vec<EtcdWorker>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let conn = endpoint.connect().await?;
            out.push(EtcdWorker { conn, prefix: prefix.to_string(), mode: Mode::Create, size });
        }
        Ok(out)
    }

    async fn put(&mut self, i: usize) -> Result<()> {
        let name = format!("{}-{i:06}", self.prefix);
        let key = format!("/registry/configmaps/default/{name}");
        // The value is the same ConfigMap JSON kumo is sent, so both stores persist the same bytes.
        let value = configmap_body(&name, None, usize::from(self.mode == Mode::Update), self.size);
        let b64 = base64::engine::general_purpose::STANDARD;
        let body = serde_json::json!({"key": b64.encode(key), "value": b64.encode(&value)});
        let resp = self.conn.expect(Method::POST, "/v3/kv/put", Bytes::from(body.to_string()), StatusCode::OK).await?;
        let v: serde_json::Value = serde_json::from_slice(&resp).context("etcd response is not JSON")?;
        if v["header"]["revision"].is_null() {
            bail!("unexpected etcd response: {v}");
        }
        Ok(())
    }
}

impl Worker for EtcdWorker {
    fn op(&mut self, i: usize) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.put(i))
    }

    fn set_mode(&mut self, mode: Mode) {
        self.mode = mode;
    }
}
