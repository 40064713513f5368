//! Watch fan-out: open many watches on ConfigMaps in `default` (HTTP/1.1, one TLS connection each), update
//! one ConfigMap at a steady rate from another connection, and measure, for every watcher and every update,
//! the delay from the writer receiving its response to the watcher receiving the event.

use crate::http::{Conn, Endpoint, REQUEST_TIMEOUT};
use crate::load::{configmap_body, resource_version, CONFIGMAPS};
use crate::procs::{CpuMeter, Kumo};
use crate::report::{Summary, Watch};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::watch as signal;

/// How long watchers wait for stragglers after the last update was acknowledged.
const GRACE: Duration = Duration::from_secs(15);
/// Watches being opened at once.
const OPEN_CONCURRENCY: usize = 32;

pub struct Params {
    pub watchers: usize,
    pub updates: usize,
    pub rate: f64,
    pub size: usize,
}

pub async fn run(kumo: &Kumo, p: &Params) -> Result<Watch> {
    let ep = &kumo.endpoint;
    let mut writer = ep.connect().await?;
    let name = "watch-target";
    let body = configmap_body(name, None, 0, p.size);
    let resp = writer.expect(Method::POST, CONFIGMAPS, body, StatusCode::CREATED).await?;
    let mut rv = resource_version(&resp)?;

    let rss_before = kumo.proc.rss_bytes()?;
    let t0 = Instant::now();
    let path = format!("{CONFIGMAPS}?watch=true&resourceVersion={rv}");
    let opened: Vec<Result<(Conn, Incoming)>> = futures::stream::iter(0..p.watchers)
        .map(|_| open(ep, &path))
        .buffer_unordered(OPEN_CONCURRENCY)
        .collect()
        .await;
    let connect_secs = t0.elapsed().as_secs_f64();
    let (stop_tx, stop_rx) = signal::channel(false);
    let mut readers = tokio::task::JoinSet::new();
    for (i, w) in opened.into_iter().enumerate() {
        let (conn, body) = w.with_context(|| format!("opening watch {i} of {}", p.watchers))?;
        readers.spawn(read_events(conn, body, p.updates, stop_rx.clone()));
    }
    // Watches replay from `rv`, so none can miss an event; the pause lets every server-side watch settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_with_watchers = kumo.proc.rss_bytes()?;

    let cpu = CpuMeter::start(kumo.proc.pid());
    let t_updates = Instant::now();
    let mut acks: HashMap<i64, (Instant, Instant)> = HashMap::new();
    let mut write_lat = Vec::with_capacity(p.updates);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / p.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for version in 1..=p.updates {
        tick.tick().await;
        let body = configmap_body(name, Some(&rv), version, p.size);
        let sent = Instant::now();
        let resp = writer.expect(Method::PUT, &format!("{CONFIGMAPS}/{name}"), body, StatusCode::OK).await?;
        let acked = Instant::now();
        write_lat.push(acked - sent);
        rv = resource_version(&resp)?;
        acks.insert(rv.parse()?, (sent, acked));
    }

    let deadline = tokio::time::Instant::now() + GRACE;
    let mut from_ack = Vec::with_capacity(p.watchers * p.updates);
    let mut from_send = Vec::with_capacity(p.watchers * p.updates);
    let mut before_ack = 0;
    let mut stopped = false;
    loop {
        let joined = if stopped {
            readers.join_next().await
        } else {
            match tokio::time::timeout_at(deadline, readers.join_next()).await {
                Ok(j) => j,
                Err(_) => {
                    // Stragglers: stop every reader, keep what they saw.
                    let _ = stop_tx.send(true);
                    stopped = true;
                    continue;
                }
            }
        };
        let Some(joined) = joined else { break };
        for (event_rv, arrived) in joined.context("watch reader panicked")?? {
            if let Some((sent, acked)) = acks.get(&event_rv) {
                if arrived < *acked {
                    before_ack += 1;
                }
                from_ack.push(arrived.saturating_duration_since(*acked));
                from_send.push(arrived.saturating_duration_since(*sent));
            }
        }
    }
    let cpu = cpu.stop();
    Ok(Watch {
        cpu,
        secs: t_updates.elapsed().as_secs_f64(),
        watchers: p.watchers,
        updates: p.updates,
        rate: p.rate,
        connect_secs,
        expected: p.watchers * p.updates,
        delivered: from_ack.len(),
        before_ack,
        from_ack: Summary::of(from_ack),
        from_send: Summary::of(from_send),
        write_latency: Summary::of(write_lat),
        rss_before,
        rss_with_watchers,
    })
}

async fn open(ep: &Endpoint, path: &str) -> Result<(Conn, Incoming)> {
    let mut conn = ep.connect().await?;
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, conn.send(Method::GET, path, Bytes::new()))
        .await
        .context("opening a watch timed out")??;
    if resp.status() != StatusCode::OK {
        let status = resp.status();
        let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        bail!("watch: HTTP {status}: {}", String::from_utf8_lossy(&body));
    }
    // The sender stays alive with the body so the connection is not closed under it.
    Ok((conn, resp.into_body()))
}

/// Reads newline-delimited watch events until `expected` MODIFIED events arrived, the stream ends, or `stop`.
/// Returns each event's resourceVersion and the instant its bytes arrived.
async fn read_events(
    conn: Conn,
    mut body: Incoming,
    expected: usize,
    mut stop: signal::Receiver<bool>,
) -> Result<Vec<(i64, Instant)>> {
    let _conn = conn;
    let mut seen = Vec::with_capacity(expected);
    let mut buf: Vec<u8> = Vec::new();
    while seen.len() < expected {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = stop.changed() => break,
        };
        let Some(frame) = frame else { break };
        let arrived = Instant::now();
        let Ok(data) = frame?.into_data() else { continue };
        buf.extend_from_slice(&data);
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            // Scanned rather than parsed, to keep the client's share of the 1,000-watcher CPU load small. The
            // benchmark's objects hold only letters, so these markers cannot occur inside their data.
            if find(&line, br#""type":"MODIFIED""#).is_some() {
                let rv = string_after(&line, br#""resourceVersion":""#).context("MODIFIED event without rv")?;
                seen.push((rv.parse()?, arrived));
            } else if find(&line, br#""type":"ERROR""#).is_some() {
                bail!("watch error event: {}", String::from_utf8_lossy(&line));
            }
        }
    }
    Ok(seen)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The JSON string value that follows `key` (which ends with the opening quote).
fn string_after<'a>(line: &'a [u8], key: &[u8]) -> Option<&'a str> {
    let start = find(line, key)? + key.len();
    let len = line[start..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&line[start..start + len]).ok()
}
