//! What an agent's watch costs the API server: watches opened as a node agent opens its own (its VMIs by the
//! `kubevirt.io/nodeName` label, bookmarks on) over TLS connections speaking HTTP/2, as each simulated node's
//! client does; the server's resident memory before and with them, divided by their number. Measured twice:
//! each watch on a connection of its own (an agent's connection counted with its watch: an upper bound), and
//! watches sharing connections (the watch alone, as an agent's watch shares its connection with its Lease).

use crate::http::{Endpoint, REQUEST_TIMEOUT};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::task::JoinHandle;

/// Connections or watches being opened at once.
const OPEN_CONCURRENCY: usize = 64;
/// Watches per connection when they share (HTTP/2 streams; servers commonly allow 100 or more at once).
const SHARED: usize = 50;
/// How long the server is left alone before measuring.
const SETTLE: Duration = Duration::from_secs(80);
/// The server's RSS is read this many times, a second apart, and the median kept (Lease renewals keep it moving).
const RSS_SAMPLES: usize = 5;

/// One watch per node (`sim-0`…) sharing connections, then, with those still open (so memory they would free
/// is not reused), one per node on connections of its own (at most `own_limit` of them: open files).
pub async fn measure(ep: &Endpoint, pid: u32, nodes: usize, own_limit: usize) -> Result<Value> {
    // Right after a restart the server's memory still grows by itself (its watch cache keeps the last 75 s of
    // changes: at 10,000 nodes, Lease renewals fill it at 1,000 a second): wait that out, then see what it
    // still drifts over a measurement's time, without watches.
    crate::progress(format!("agent-like watches: waiting {}s for the server's memory to settle", SETTLE.as_secs()));
    tokio::time::sleep(SETTLE).await;
    let settled = median_rss(pid).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = median_rss(pid).await?;
    let shared = Set::open(ep, nodes, SHARED).await?;
    let (with_shared, shared_json) = shared.measure(pid, before).await?;
    let own_json = match nodes.min(own_limit) {
        0 => {
            crate::progress("agent-like watches: no open files left for a connection each; not measured");
            Value::Null
        }
        n => Set::open(ep, n, 1).await?.measure(pid, with_shared).await?.1,
    };
    let drift = before as i64 - settled as i64;
    Ok(json!({"shared_connections": shared_json, "own_connection": own_json, "drift_without_watches_bytes": drift}))
}

/// Watches held open on their connections; all closed when dropped.
struct Set {
    conns: Vec<Conn>,
    watches: Vec<Watch>,
    per_conn: usize,
}

impl Set {
    async fn open(ep: &Endpoint, watches: usize, per_conn: usize) -> Result<Set> {
        let conns = futures::stream::iter(0..watches.div_ceil(per_conn))
            .map(|_| connect(ep))
            .buffer_unordered(OPEN_CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        let watches = futures::stream::iter(0..watches)
            .map(|i| open(ep, conns[i / per_conn].sender.clone(), format!("sim-{i}")))
            .buffer_unordered(OPEN_CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        Ok(Set { conns, watches, per_conn })
    }

    /// The server's RSS with these open, and the figures against `before` (taken without them).
    async fn measure(&self, pid: u32, before: u64) -> Result<(u64, Value)> {
        // Each has sent its initial state by now; what the server holds for it is what stays while it is open.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let with = median_rss(pid).await?;
        let n = self.watches.len();
        let ended = self.watches.iter().filter(|w| w.0.is_finished()).count();
        if ended > 0 {
            bail!("{ended} of {n} agent-like watches ended while being measured");
        }
        let per = with.saturating_sub(before) / n.max(1) as u64;
        crate::progress(format!(
            "agent-like watches: {n} on {} connections: API server RSS {} → {} MiB, {:.1} KiB a watch",
            self.conns.len(),
            before >> 20,
            with >> 20,
            per as f64 / 1024.0
        ));
        let figures = json!({"watches": n, "per_connection": self.per_conn, "rss_before_bytes": before,
            "rss_with_bytes": with, "bytes_per_watch": per});
        Ok((with, figures))
    }
}

/// One HTTP/2 connection, closed when dropped.
struct Conn {
    sender: SendRequest<Empty<Bytes>>,
    task: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A watch whose body is read until dropped.
struct Watch(JoinHandle<()>);

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn connect(ep: &Endpoint) -> Result<Conn> {
    let fut = async {
        let tls = ep.tls_with_alpn(b"h2").await?;
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender, task })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut).await.context("connecting timed out")?
}

async fn open(ep: &Endpoint, mut sender: SendRequest<Empty<Bytes>>, node: String) -> Result<Watch> {
    let fut = async {
        let path = format!(
            "https://{}/apis/kubevirt.io/v1/virtualmachineinstances?watch=true&allowWatchBookmarks=true\
             &timeoutSeconds=600&labelSelector=kubevirt.io%2FnodeName%3D{node}",
            ep.addr
        );
        let mut req = Request::get(path).header(http::header::ACCEPT, "application/json");
        if let Some(t) = &ep.bearer {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        sender.ready().await.context("connection closed")?;
        let resp = sender.send_request(req.body(Empty::new())?).await?;
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            bail!("watch of {node}: HTTP {status}: {}", String::from_utf8_lossy(&body));
        }
        let mut body = resp.into_body();
        Ok(Watch(tokio::spawn(async move { while let Some(Ok(_)) = body.frame().await {} })))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut).await.context("opening a watch timed out")?
}

async fn median_rss(pid: u32) -> Result<u64> {
    let mut v = Vec::with_capacity(RSS_SAMPLES);
    for i in 0..RSS_SAMPLES {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        v.push(crate::procs::rss_bytes(pid)?);
    }
    v.sort_unstable();
    Ok(v[v.len() / 2])
}
