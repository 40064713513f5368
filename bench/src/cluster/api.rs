//! JSON calls to the API server, and the probe: a steady trickle of requests of each verb class whose
//! latencies are what the step reports (as Kubernetes' API call latency SLOs measure them).

use crate::http::{Conn, Endpoint};
use crate::report::Summary;
use anyhow::{bail, Result};
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// How long setup calls keep retrying what the server asks to retry.
const RETRY_FOR: Duration = Duration::from_secs(120);

/// One connection that speaks JSON, reconnecting when the server went away (it is restarted mid-run).
pub struct Api {
    endpoint: Endpoint,
    conn: Option<Conn>,
}

impl Api {
    pub fn new(endpoint: Endpoint) -> Api {
        Api { endpoint, conn: None }
    }

    pub async fn call(&mut self, method: Method, path: &str, body: Option<&Value>) -> Result<(StatusCode, Value)> {
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        for attempt in 0..2 {
            if self.conn.is_none() {
                self.conn = Some(self.endpoint.connect().await?);
            }
            let conn = self.conn.as_mut().expect("connected");
            match conn.request(method.clone(), path, body.clone()).await {
                Ok((status, bytes)) => {
                    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    return Ok((status, v));
                }
                // A connection the server closed (restart, idle): once more on a fresh one.
                Err(e) if attempt == 0 => {
                    crate::progress(format!("reconnecting after: {e:#}"));
                    self.conn = None;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!()
    }

    /// The call, again while the server says to retry (429, 503, 504: a store slow after a restart), for up
    /// to [`RETRY_FOR`], as Kubernetes' clients do. For the run's own setup; the probe times single calls.
    async fn call_retrying(&mut self, method: Method, path: &str, body: Option<&Value>) -> Result<(StatusCode, Value)> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(500);
        loop {
            let (status, v) = self.call(method.clone(), path, body).await?;
            let later = [StatusCode::TOO_MANY_REQUESTS, StatusCode::SERVICE_UNAVAILABLE, StatusCode::GATEWAY_TIMEOUT];
            if !later.contains(&status) || start.elapsed() > RETRY_FOR {
                return Ok((status, v));
            }
            crate::progress(format!("{method} {path}: HTTP {status}; retrying in {pause:?}"));
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// The call, failing unless it answered `want`.
    pub async fn expect(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        want: StatusCode,
    ) -> Result<Value> {
        let (status, v) = self.call_retrying(method.clone(), path, body).await?;
        if status != want {
            bail!("{method} {path}: HTTP {status} (wanted {want}): {v}");
        }
        Ok(v)
    }

    pub async fn get(&mut self, path: &str) -> Result<Value> {
        self.expect(Method::GET, path, None, StatusCode::OK).await
    }

    /// Creates `obj` at `path`; an existing one is fine (a rerun, or a retry that had landed).
    pub async fn create(&mut self, path: &str, obj: &Value) -> Result<()> {
        let (status, v) = self.call_retrying(Method::POST, path, Some(obj)).await?;
        if !status.is_success() && status != StatusCode::CONFLICT {
            bail!("POST {path}: HTTP {status}: {v}");
        }
        Ok(())
    }

    pub async fn namespace(&mut self, name: &str) -> Result<()> {
        self.create("/api/v1/namespaces", &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
            .await
    }

    /// How many objects a list holds, read a page at a time.
    pub async fn count(&mut self, path: &str) -> Result<usize> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let (mut n, mut cont) = (0, String::new());
        loop {
            let page = self.get(&format!("{path}{sep}limit=5000{cont}")).await?;
            n += page["items"].as_array().map_or(0, Vec::len);
            match page["metadata"]["continue"].as_str().filter(|c| !c.is_empty()) {
                Some(c) => cont = format!("&continue={c}"),
                None => return Ok(n),
            }
        }
    }
}

/// Latencies of each verb class over one probe window.
#[derive(Default)]
pub struct Probe {
    pub mutating: Vec<Duration>,
    pub get: Vec<Duration>,
    pub list_namespaced: Vec<Duration>,
    pub list_cluster: Vec<Duration>,
    pub errors: usize,
}

impl Probe {
    pub fn json(&self) -> Value {
        let s = |v: &Vec<Duration>| Summary::of(v.clone()).json();
        json!({"mutating": s(&self.mutating), "get": s(&self.get), "list_namespaced": s(&self.list_namespaced),
               "list_cluster": s(&self.list_cluster), "errors": self.errors})
    }

    pub fn p99(&self) -> [Duration; 4] {
        [&self.mutating, &self.get, &self.list_namespaced, &self.list_cluster].map(|v| Summary::of(v.clone()).p99)
    }
}

pub const PROBE_NS: &str = "bench-probe";

/// Requests of every class, one after another with a pause between rounds, for `window`. `vmi_ns` is a
/// namespace full of VMIs for the namespaced list (None before there are any); `node` a node to get.
pub async fn probe(api: &mut Api, window: Duration, vmi_ns: Option<&str>, node: &str) -> Result<Probe> {
    api.namespace(PROBE_NS).await?;
    let mut p = Probe::default();
    let start = Instant::now();
    let mut i = 0u64;
    let cms = format!("/api/v1/namespaces/{PROBE_NS}/configmaps");
    while start.elapsed() < window {
        i += 1;
        let name = format!("probe-{i}");
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"round": i.to_string()}});
        let timed = |v: &mut Vec<Duration>, t: Instant, ok: bool, errors: &mut usize| {
            if ok {
                v.push(t.elapsed());
            } else {
                *errors += 1;
            }
        };
        let t = Instant::now();
        let created = api.call(Method::POST, &cms, Some(&cm)).await;
        let created = created.ok().filter(|(s, _)| *s == StatusCode::CREATED).map(|(_, v)| v);
        timed(&mut p.mutating, t, created.is_some(), &mut p.errors);
        let t = Instant::now();
        let got = api.call(Method::GET, &format!("{cms}/{name}"), None).await;
        let got = got.ok().filter(|(s, _)| *s == StatusCode::OK).map(|(_, v)| v);
        timed(&mut p.get, t, got.is_some(), &mut p.errors);
        if let Some(mut obj) = got {
            obj["data"]["updated"] = json!("yes");
            let t = Instant::now();
            let ok = api
                .call(Method::PUT, &format!("{cms}/{name}"), Some(&obj))
                .await
                .is_ok_and(|(s, _)| s == StatusCode::OK);
            timed(&mut p.mutating, t, ok, &mut p.errors);
        }
        let t = Instant::now();
        let ok = api.call(Method::DELETE, &format!("{cms}/{name}"), None).await.is_ok_and(|(s, _)| s.is_success());
        timed(&mut p.mutating, t, ok, &mut p.errors);
        let t = Instant::now();
        let ok =
            api.call(Method::GET, &format!("/api/v1/nodes/{node}"), None).await.is_ok_and(|(s, _)| s == StatusCode::OK);
        timed(&mut p.get, t, ok, &mut p.errors);
        // Lists: a namespace's VMIs (unpaged, as kubectl lists one namespace); cluster-wide, every Node unpaged
        // and the first page of every VMI (as clients page large lists).
        let mut lists: Vec<(String, bool)> = vec![(cms.clone(), true)];
        if let Some(ns) = vmi_ns {
            lists.push((format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances"), true));
        }
        lists.push(("/api/v1/nodes".into(), false));
        lists.push(("/apis/kubevirt.io/v1/virtualmachineinstances?limit=500".into(), false));
        for (path, namespaced) in lists {
            let t = Instant::now();
            let ok = api.call(Method::GET, &path, None).await.is_ok_and(|(s, _)| s == StatusCode::OK);
            let into = if namespaced { &mut p.list_namespaced } else { &mut p.list_cluster };
            timed(into, t, ok, &mut p.errors);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if p.mutating.is_empty() {
        bail!("the probe made no successful request in {window:?}");
    }
    Ok(p)
}

/// A VirtualMachineInstance spec the simulated nodes run (the image is never pulled by them).
pub fn vmi_spec() -> Value {
    json!({
        "domain": {"devices": {}, "resources": {"requests": {"memory": "64Mi", "cpu": "10m"}}},
        "volumes": [{"name": "root", "containerDisk": {"image": "quay.io/kumo/bench:latest"}}],
    })
}

/// The items of a list answer.
pub fn items(v: &Value) -> &[Value] {
    v["items"].as_array().map(Vec::as_slice).unwrap_or(&[])
}
