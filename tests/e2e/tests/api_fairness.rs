//! API Priority and Fairness: one node flooding the API server with writes (with its own credential) is queued
//! and then refused with 429 and Retry-After, while another node's heartbeats in the same priority level, and
//! the admin, are served as before.

use anyhow::{ensure, Result};
use kumo_e2e::Server;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn node_client(s: &Server, node: &str) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(s.node_kubeconfig(node)?)?;
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    // The flood must see every 429 itself.
    cfg.default_retry = false;
    Ok(kube::Client::try_from(cfg)?)
}

/// A merge patch of the node's own labels: a store write, through the node-high level (as heartbeats are).
fn beat(node: &str, n: usize) -> http::Request<kube::client::Body> {
    let body = format!(r#"{{"metadata":{{"labels":{{"beat":"b{n}"}}}}}}"#);
    http::Request::patch(format!("/api/v1/nodes/{node}"))
        .header("content-type", "application/merge-patch+json")
        .body(kube::client::Body::from(body.into_bytes()))
        .expect("request")
}

/// `n` heartbeats one after another: their latencies, failing on any error.
async fn heartbeats(client: &kube::Client, node: &str, n: usize) -> Result<Vec<Duration>> {
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        let resp = client.send(beat(node, i)).await?;
        ensure!(resp.status().is_success(), "heartbeat {i} of {node}: {}", resp.status());
        took.push(start.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    took.sort();
    Ok(took)
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_flooding_writes_gets_429_while_another_nodes_heartbeats_keep_their_latency() -> Result<()> {
    // A small server (6 seats: 3 for node-high), so a flood of a few hundred requests fills its queues.
    let s = Server::start_with(&["--max-requests-inflight", "4", "--max-mutating-requests-inflight", "2"])?;
    // Credentials first: a node name already registered cannot be joined again.
    let (flood, quiet) = (node_client(&s, "flood").await?, node_client(&s, "quiet").await?);
    for n in ["flood", "quiet"] {
        s.fake_node(n, "4", "8Gi")?;
    }
    let baseline = heartbeats(&quiet, "quiet", 40).await?;

    // 400 requests at once, each sent again as soon as it is answered; a refused one waits its Retry-After,
    // as Kubernetes clients do.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, refused, failed) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let refusal = Arc::new(std::sync::Mutex::new(None::<(Option<String>, String)>));
    let mut tasks = Vec::new();
    for t in 0..400 {
        let (client, stop, served, refused, failed, refusal) =
            (flood.clone(), stop.clone(), served.clone(), refused.clone(), failed.clone(), refusal.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let Ok(resp) = client.send(beat("flood", t * 100_000 + i)).await else {
                    // Not answered at all (counted: the server must not drop the flood's connections).
                    failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                if resp.status() == http::StatusCode::TOO_MANY_REQUESTS {
                    refused.fetch_add(1, Ordering::Relaxed);
                    let retry = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(String::from);
                    let body = http_body_util::BodyExt::collect(resp.into_body()).await.expect("reading a 429's body");
                    let body = String::from_utf8_lossy(&body.to_bytes()).into_owned();
                    let wait = retry.as_deref().and_then(|r| r.parse().ok()).unwrap_or(1);
                    refusal.lock().unwrap().get_or_insert((retry, body));
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                } else if resp.status().is_success() {
                    served.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let saturated = Instant::now();
    while refused.load(Ordering::Relaxed) == 0 {
        ensure!(saturated.elapsed() < Duration::from_secs(60), "no 429 after 60 s of flood");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let under_flood = heartbeats(&quiet, "quiet", 40).await;
    let admin = s.kubectl_ok(&["get", "node", "quiet", "-o", "jsonpath={.metadata.labels.beat}"]);
    let metrics = s.kubectl_ok(&["get", "--raw", "/metrics"]);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let under_flood = under_flood?;
    let (served, refused) = (served.load(Ordering::Relaxed), refused.load(Ordering::Relaxed));
    let (b, f) = (p99(&baseline), p99(&under_flood));
    println!("flood: {served} served, {refused} refused; quiet node p99 {b:?} alone, {f:?} under the flood");

    let (retry, body) = refusal.lock().unwrap().clone().expect("a refusal was recorded");
    assert_eq!(retry.as_deref(), Some("1"), "429 carries Retry-After");
    assert!(body.contains("TooManyRequests") && body.contains("\"code\":429"), "a Status: {body}");
    assert!(served > 0, "the flood is served too, at its share");
    let failed = failed.load(Ordering::Relaxed);
    assert!(
        failed <= 10.max(served / 100),
        "{failed} flood requests got no answer at all ({served} served, {refused} refused)"
    );
    // Another node's heartbeats all succeeded (checked in heartbeats) within the API SLO.
    assert!(f <= Duration::from_secs(1), "quiet node p99 {f:?} under the flood (alone: {b:?})");
    assert!(admin?.starts_with('b'), "the admin (exempt) is served");
    let rejected = metrics?
        .lines()
        .filter(|l| l.starts_with("apiserver_flowcontrol_rejected_requests_total{"))
        .filter(|l| l.contains(r#"priority_level="node-high""#) && l.contains(r#"flow_schema="system-node-high""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert!(rejected >= 1.0, "the refusals are counted by schema and level");
    Ok(())
}

/// The configuration is served as Kubernetes serves it, and a request's schema and level are named in its
/// response headers.
#[test]
fn built_in_flow_schemas_and_priority_levels_are_served() -> Result<()> {
    let s = Server::start()?;
    let schemas = s.kubectl_ok(&["get", "flowschemas", "-o", "jsonpath={.items[*].metadata.name}"])?;
    for name in ["exempt", "system-node-high", "system-nodes", "global-default", "catch-all"] {
        assert!(schemas.split(' ').any(|n| n == name), "{name} in {schemas}");
    }
    let level = s.kubectl_ok(&["get", "prioritylevelconfiguration", "node-high", "-o", "jsonpath={.spec.type}"])?;
    assert_eq!(level, "Limited");
    let out = s.kubectl(&["get", "--raw", "/api/v1/namespaces/default", "-v=8"])?;
    let log = String::from_utf8_lossy(&out.stderr);
    let exempt_uid = s.kubectl_ok(&["get", "flowschema", "exempt", "-o", "jsonpath={.metadata.uid}"])?;
    assert!(log.contains(&format!("X-Kubernetes-Pf-Flowschema-Uid: {exempt_uid}")), "{log}");
    // A FlowSchema naming no priority level is refused by name.
    let bad = "apiVersion: flowcontrol.apiserver.k8s.io/v1\nkind: FlowSchema\nmetadata: {name: bad}\nspec: {matchingPrecedence: 5}\n";
    let out = s.kubectl_stdin(&["create", "-f", "-"], bad)?;
    assert!(!out.status.success(), "a FlowSchema without priorityLevelConfiguration was accepted");
    assert!(String::from_utf8_lossy(&out.stderr).contains("priorityLevelConfiguration"));
    Ok(())
}
