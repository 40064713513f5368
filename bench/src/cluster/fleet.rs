//! The cluster under test: SIMULATED nodes (`kumo agent --simulate`, clearly a simulated hypervisor), and the
//! VMs they run, created through VirtualMachines and VirtualMachineInstanceReplicaSets; and a tracker that
//! follows every VMI's phase through one watch.

use super::api::{vmi_spec, Api};
use crate::http::Endpoint;
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use http::Method;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One `kumo agent --simulate` process (SIMULATED nodes); killed when dropped.
pub struct Simulator(Child);

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts simulated nodes `first..first + n` against the server whose admin kubeconfig is `kubeconfig`.
pub fn simulate(
    bin: &Path,
    kubeconfig: &Path,
    first: usize,
    n: usize,
    boot_delay: Duration,
    log: &Path,
) -> Result<Simulator> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let child = Command::new(bin)
        .args(["agent", "--simulate", "--nodes", &n.to_string(), "--first-node", &first.to_string()])
        .arg("--boot-delay")
        .arg(format!("{}ms", boot_delay.as_millis()))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting kumo agent --simulate")?;
    Ok(Simulator(child))
}

/// Waits until `want` simulated nodes are Ready (with their pod CIDR), printing progress.
pub async fn wait_nodes(api: &mut Api, want: usize, limit: Duration) -> Result<Duration> {
    let start = Instant::now();
    let mut last = 0;
    loop {
        let list = api.get("/api/v1/nodes?labelSelector=kumo.dev%2Fsimulated%3Dtrue").await?;
        let ready = super::api::items(&list)
            .iter()
            .filter(|n| n["spec"]["podCIDR"].is_string())
            .filter(|n| {
                n["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
            .count();
        if ready != last {
            crate::progress(format!("{ready} of {want} simulated nodes Ready ({:.0}s)", start.elapsed().as_secs_f64()));
            last = ready;
        }
        if ready >= want {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!("only {ready} of {want} simulated nodes Ready after {limit:?}");
        }
        tokio::time::sleep(Duration::from_secs(if want > 2000 { 5 } else { 1 })).await;
    }
}

/// Every VMI's phase, as one watch over all namespaces sees it; and how long sampled VMIs took to run.
#[derive(Default)]
pub struct Tracker {
    phase: HashMap<String, String>,
    running: usize,
    /// `namespace/name` of sampled VMIs → when they were created.
    sampled: HashMap<String, Instant>,
    pub startup: Vec<Duration>,
}

impl Tracker {
    pub fn running(&self) -> usize {
        self.running
    }

    fn apply(&mut self, kind: &str, obj: &Value) {
        let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let phase = obj["status"]["phase"].as_str().unwrap_or("").to_string();
        let was_running = self.phase.get(&uid).is_some_and(|p| p == "Running");
        let is_running = kind != "DELETED" && phase == "Running";
        if kind == "DELETED" {
            self.phase.remove(&uid);
        } else {
            self.phase.insert(uid, phase);
        }
        match (was_running, is_running) {
            (false, true) => self.running += 1,
            (true, false) => self.running -= 1,
            _ => {}
        }
        if is_running {
            let key = format!(
                "{}/{}",
                obj["metadata"]["namespace"].as_str().unwrap_or(""),
                obj["metadata"]["name"].as_str().unwrap_or("")
            );
            if let Some(t) = self.sampled.remove(&key) {
                self.startup.push(t.elapsed());
            }
        }
    }
}

/// Follows every VMI, re-watching (from a fresh list) whenever the watch ends.
pub fn track(endpoint: Endpoint) -> Arc<Mutex<Tracker>> {
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let t = tracker.clone();
    tokio::spawn(async move {
        loop {
            if let Err(e) = follow(&endpoint, &t).await {
                crate::progress(format!("VMI watch: {e:#}; watching again"));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    tracker
}

async fn follow(endpoint: &Endpoint, tracker: &Arc<Mutex<Tracker>>) -> Result<()> {
    let mut conn = endpoint.connect().await?;
    let resp = conn.send(Method::GET, "/apis/kubevirt.io/v1/virtualmachineinstances?watch=1", Bytes::new()).await?;
    if !resp.status().is_success() {
        bail!("watch: HTTP {}", resp.status());
    }
    // A fresh watch starts with every VMI as ADDED: forget what the last one saw.
    {
        let mut t = tracker.lock().expect("lock");
        t.phase.clear();
        t.running = 0;
    }
    let mut body = resp.into_body().into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = body.next().await {
        buf.extend_from_slice(&chunk?);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let Ok(ev) = serde_json::from_slice::<Value>(&line) else { continue };
            let kind = ev["type"].as_str().unwrap_or("");
            if kind == "ERROR" {
                bail!("watch ended: {}", ev["object"]);
            }
            tracker.lock().expect("lock").apply(kind, &ev["object"]);
        }
    }
    Ok(())
}

/// Creates a standalone VMI in `ns` and starts timing it to Running.
pub async fn sample_vmi(api: &mut Api, tracker: &Arc<Mutex<Tracker>>, ns: &str, name: &str) -> Result<()> {
    let vmi = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "labels": {"bench.kumo.dev/sample": "true"}}, "spec": vmi_spec()});
    tracker.lock().expect("lock").sampled.insert(format!("{ns}/{name}"), Instant::now());
    api.create(&format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances"), &vmi).await
}

/// Objects per namespace: a namespaced list of one stays a few MB.
pub const PER_NAMESPACE: usize = 3000;

/// VirtualMachines `from..to` (runStrategy Always), over `conns` connections; `annotations` go on their VMIs.
pub async fn create_vms(
    endpoint: &Endpoint,
    from: usize,
    to: usize,
    conns: usize,
    prefix: &str,
    annotations: Value,
) -> Result<()> {
    let mut api = Api::new(endpoint.clone());
    for k in from / PER_NAMESPACE..=to.saturating_sub(1) / PER_NAMESPACE {
        api.namespace(&format!("{prefix}-{k}")).await?;
    }
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(from));
    let started = Instant::now();
    let workers = (0..conns.max(1)).map(|_| {
        let (endpoint, next, prefix, annotations) = (endpoint.clone(), next.clone(), prefix.to_string(), annotations.clone());
        tokio::spawn(async move {
            let mut api = Api::new(endpoint);
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= to {
                    return Ok::<_, anyhow::Error>(());
                }
                let vm = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": format!("vm-{i}")},
                    "spec": {"runStrategy": "Always", "template": {"metadata": {"annotations": annotations}, "spec": vmi_spec()}}});
                let ns = format!("{prefix}-{}", i / PER_NAMESPACE);
                api.create(&format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines"), &vm).await?;
                if i % 5000 == 0 && i > from {
                    crate::progress(format!("{} VirtualMachines created ({:.0}/s)", i - from, (i - from) as f64 / started.elapsed().as_secs_f64()));
                }
            }
        })
    });
    for w in futures::future::join_all(workers).await {
        w??;
    }
    Ok(())
}

/// VirtualMachineInstanceReplicaSets `from..to` of `replicas` each.
pub async fn create_replica_sets(api: &mut Api, from: usize, to: usize, replicas: usize) -> Result<()> {
    let per_ns = (PER_NAMESPACE / replicas).max(1);
    for i in from..to {
        let ns = format!("bench-rs-{}", i / per_ns);
        api.namespace(&ns).await?;
        let labels = json!({"bench.kumo.dev/rs": format!("rs-{i}")});
        let rs = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceReplicaSet", "metadata": {"name": format!("rs-{i}")},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": vmi_spec()}}});
        api.create(&format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachineinstancereplicasets"), &rs).await?;
    }
    Ok(())
}

/// Waits until at most `ahead` of the `asked` VMIs are not Running yet, printing progress every 10 s (`shown`:
/// when it last did).
pub async fn wait_ahead(
    tracker: &Arc<Mutex<Tracker>>,
    asked: usize,
    ahead: usize,
    limit: Duration,
    shown: &mut Instant,
) -> Result<()> {
    let start = Instant::now();
    loop {
        let running = tracker.lock().expect("lock").running();
        if asked.saturating_sub(running) <= ahead {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!("only {running} of {asked} VMIs Running after {limit:?}");
        }
        if shown.elapsed() > Duration::from_secs(10) {
            crate::progress(format!("{asked} VMIs asked for, {running} Running"));
            *shown = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the tracker counts `want` Running VMIs, printing progress.
pub async fn wait_running(tracker: &Arc<Mutex<Tracker>>, want: usize, limit: Duration) -> Result<Duration> {
    let start = Instant::now();
    let mut shown = Instant::now();
    loop {
        let running = tracker.lock().expect("lock").running();
        if running >= want {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!("only {running} of {want} VMIs Running after {limit:?}");
        }
        if shown.elapsed() > Duration::from_secs(10) {
            crate::progress(format!("{running} of {want} VMIs Running ({:.0}s)", start.elapsed().as_secs_f64()));
            shown = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What stands between the VMIs there are and the ones wanted: replica sets and VMs short of theirs, VMIs by
/// phase, and the warnings the server and simulators logged. For a run that failed on a machine no one can log
/// in to (CI).
pub async fn diagnose(api: &mut Api, dir: &Path) -> String {
    let mut out = vec!["diagnosis:".to_string()];
    match api.get("/apis/kubevirt.io/v1/virtualmachineinstancereplicasets").await {
        Ok(list) => {
            for rs in super::api::items(&list) {
                out.push(format!(
                    "  replica set {}/{}: spec {} status {} conditions {}",
                    rs["metadata"]["namespace"].as_str().unwrap_or("?"),
                    rs["metadata"]["name"].as_str().unwrap_or("?"),
                    rs["spec"]["replicas"],
                    rs["status"]["replicas"],
                    rs["status"]["conditions"]
                ));
            }
        }
        Err(e) => out.push(format!("  listing replica sets: {e:#}")),
    }
    match api.get("/apis/kubevirt.io/v1/virtualmachineinstances").await {
        Ok(list) => {
            let mut by: std::collections::BTreeMap<(String, String), usize> = Default::default();
            let mut shown = 0;
            for v in super::api::items(&list) {
                let owner = v["metadata"]["ownerReferences"][0]["kind"].as_str().unwrap_or("none").to_string();
                let phase = v["status"]["phase"].as_str().unwrap_or("(none)").to_string();
                if phase != "Running" && shown < 5 {
                    shown += 1;
                    out.push(format!(
                        "  not running: {}",
                        serde_json::json!({"metadata": v["metadata"], "status": v["status"]})
                    ));
                }
                *by.entry((owner, phase)).or_default() += 1;
            }
            for ((owner, phase), n) in by {
                out.push(format!("  VMIs owned by {owner}, phase {phase}: {n}"));
            }
        }
        Err(e) => out.push(format!("  listing VMIs: {e:#}")),
    }
    match api.get("/apis/kubevirt.io/v1/virtualmachines").await {
        Ok(list) => {
            let idle = super::api::items(&list).iter().filter(|vm| vm["status"]["created"] != true).count();
            out.push(format!("  VirtualMachines without a VMI: {idle}"));
        }
        Err(e) => out.push(format!("  listing VMs: {e:#}")),
    }
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).collect();
    logs.retain(|p| p.extension().is_some_and(|x| x == "log"));
    logs.sort();
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_else(|e| format!("(unreadable: {e})"));
        let warnings: Vec<&str> = text.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
        out.push(format!("  {}: {} warnings, the last ones:", log.display(), warnings.len()));
        out.extend(warnings.iter().rev().take(15).rev().map(|l| format!("    {l}")));
    }
    out.join("\n")
}

/// The log file of simulator `i` in the server's directory.
pub fn sim_log(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("simulator-{i}.log"))
}
