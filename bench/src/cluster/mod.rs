//! `kumo-bench cluster`: builds a cluster step by step against one real `kumo server` (SIMULATED nodes from
//! `kumo agent --simulate`, VMs through VirtualMachines and VirtualMachineInstanceReplicaSets) and at every
//! step records API latency per verb class, VMI create → Running (simulated boot excluded), the server's CPU,
//! memory and store size, and its restart time (after SIGTERM, and after SIGKILL); then, optionally, the same
//! cluster under an event flood. After the last node step it measures what an agent's watch costs the server.
//! Writes JSON, and a PNG plot through `bench/plot_cluster.py`.

mod api;
mod fleet;
mod watch_cost;

use crate::procs::{self, Kumo, Stop};
use anyhow::{bail, Context, Result};
use api::Api;
use fleet::Simulator;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    /// The kumo binary (server and simulator).
    #[arg(long, default_value = "target/release/kumo")]
    kumo_bin: PathBuf,
    /// Node counts to grow through, in order.
    #[arg(long, value_delimiter = ',', default_value = "1000,2000,5000,10000")]
    nodes: Vec<usize>,
    /// VMI counts to grow through at the last node count, in order: half VirtualMachines, half
    /// VirtualMachineInstanceReplicaSets of 1,000 replicas.
    #[arg(long, value_delimiter = ',', default_value = "30000,100000,300000")]
    vms: Vec<usize>,
    /// How long a simulated guest takes to boot (excluded from create → Running).
    #[arg(long, default_value = "2s", value_parser = crate::parse_secs)]
    boot_delay: Duration,
    /// Seconds of API probing at each step.
    #[arg(long, default_value_t = 60)]
    probe_secs: u64,
    /// VMIs created one by one at each step to time create → Running.
    #[arg(long, default_value_t = 50)]
    samples: usize,
    /// Replicas of each VirtualMachineInstanceReplicaSet.
    #[arg(long, default_value_t = 1000)]
    rs_replicas: usize,
    /// Connections creating VirtualMachines.
    #[arg(long, default_value_t = 16)]
    conns: usize,
    /// At most this many VMIs asked for and not yet Running while growing (0: everything at once): the VMs
    /// and replica sets go in by the thousand as earlier ones run, as Kubernetes' density tests create pods at
    /// a set pace. All at once, the server's controllers spent the run on a backlog of hundreds of thousands.
    #[arg(long, default_value_t = 10000)]
    ahead: usize,
    /// Crash-looping VMs of the flood scenario at the last step (0: no flood).
    #[arg(long, default_value_t = 1000)]
    flood_vms: usize,
    /// How long the flood lasts.
    #[arg(long, default_value_t = 600)]
    flood_secs: u64,
    /// Store on a 3-member etcd instead of the embedded store.
    #[arg(long)]
    etcd: bool,
    /// The etcd binary (default: `etcd` on PATH), with --etcd.
    #[arg(long)]
    etcd_bin: Option<PathBuf>,
    #[arg(long, default_value = "target/bench/cluster.json")]
    out: PathBuf,
    /// The plot (needs python3 with matplotlib; scripts/bench-scale.sh installs it).
    #[arg(long, default_value = "target/bench/cluster.png")]
    plot: PathBuf,
    /// Write no plot (the JSON and the printed table remain).
    #[arg(long)]
    no_plot: bool,
    #[arg(long)]
    tmp_dir: Option<PathBuf>,
    /// Keep the server's data directory and logs.
    #[arg(long)]
    keep: bool,
    /// An argument passed on to `kumo server` (repeatable), e.g. `--server-arg=--compaction-interval=1m`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
}

/// Kubernetes' API call latency SLOs (p99), and the startup one kumo holds itself to.
const SLO_MUTATING: Duration = Duration::from_secs(1);
const SLO_GET: Duration = Duration::from_secs(1);
const SLO_LIST_NAMESPACED: Duration = Duration::from_secs(5);
const SLO_LIST_CLUSTER: Duration = Duration::from_secs(30);
const SLO_STARTUP: Duration = Duration::from_secs(5);

struct Run {
    args: ClusterArgs,
    kumo: Kumo,
    api: Api,
    tracker: std::sync::Arc<std::sync::Mutex<fleet::Tracker>>,
    simulators: Vec<Simulator>,
    nodes: usize,
    vms: usize,
    replica_sets: usize,
    steps: Vec<Value>,
    agent_watches: Option<Value>,
    etcd: Vec<procs::Etcd>,
    started: Instant,
}

pub async fn run(args: ClusterArgs) -> Result<()> {
    if !args.kumo_bin.is_file() {
        bail!("{} not found; build it with `cargo build --release -p kumo`", args.kumo_bin.display());
    }
    if args.nodes.is_empty() || args.nodes.windows(2).any(|w| w[0] >= w[1]) {
        bail!("--nodes must grow: {:?}", args.nodes);
    }
    let tmp = args.tmp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut extra = vec!["--no-agent".to_string(), "--cluster-cidr".into(), "10.0.0.0/8".into()];
    extra.extend(args.server_args.iter().cloned());
    let etcd = if args.etcd {
        let bin = match &args.etcd_bin {
            Some(b) => b.clone(),
            None => procs::which("etcd").context("etcd not found; install the etcd-server package")?,
        };
        let members = procs::start_etcd_cluster(&bin, &tmp, args.keep, 3).await?;
        extra.extend(["--etcd-servers".into(), members.iter().map(|m| m.url()).collect::<Vec<_>>().join(",")]);
        members
    } else {
        Vec::new()
    };
    crate::progress(format!("starting kumo server ({})", if args.etcd { "3-member etcd" } else { "embedded store" }));
    let kumo = procs::start_kumo(&args.kumo_bin, &tmp, args.keep, &extra).await?;
    let api = Api::new(kumo.endpoint.clone());
    let tracker = fleet::track(kumo.endpoint.clone());
    let started = Instant::now();
    let mut run = Run {
        args,
        kumo,
        api,
        tracker,
        simulators: vec![],
        nodes: 0,
        vms: 0,
        replica_sets: 0,
        steps: vec![],
        agent_watches: None,
        etcd,
        started,
    };
    let result = run.all().await;
    let out = run.save()?;
    crate::progress(format!("results written to {}", run.args.out.display()));
    println!("{}", markdown(&out));
    if !run.args.no_plot {
        plot(&run.args.out, &run.args.plot)?;
    }
    result
}

impl Run {
    async fn all(&mut self) -> Result<()> {
        for n in self.args.nodes.clone() {
            self.grow_nodes(n).await?;
            self.step().await?;
        }
        self.agent_watches().await?;
        for v in self.args.vms.clone() {
            self.grow_vms(v).await?;
            self.step().await?;
        }
        if self.args.flood_vms > 0 {
            self.flood().await?;
        }
        Ok(())
    }

    async fn grow_nodes(&mut self, to: usize) -> Result<()> {
        let from = self.nodes;
        crate::progress(format!("adding SIMULATED nodes {from}..{to}"));
        let kubeconfig = self.kumo.proc.dir().join("kubeconfig");
        let log = fleet::sim_log(self.kumo.proc.dir(), self.simulators.len());
        let sim = fleet::simulate(&self.args.kumo_bin, &kubeconfig, from, to - from, self.args.boot_delay, &log)?;
        self.simulators.push(sim);
        // Joins are paced at 32 at a time; allow a generous second per 10 nodes.
        let joined = fleet::wait_nodes(&mut self.api, to, Duration::from_secs(120 + to as u64 / 10)).await?;
        crate::progress(format!("{to} nodes Ready ({:.0}s for {})", joined.as_secs_f64(), to - from));
        self.nodes = to;
        Ok(())
    }

    async fn grow_vms(&mut self, to: usize) -> Result<()> {
        let from = self.vms;
        if to <= from {
            bail!("--vms must grow: {to} after {from}");
        }
        crate::progress(format!("adding VMs {from}..{to} (half VirtualMachines, half replica sets)"));
        let start = Instant::now();
        let vm_target = to / 2;
        let replicas = self.args.rs_replicas.max(1);
        let rs_target = (to - vm_target).div_ceil(replicas);
        let endpoint = self.kumo.endpoint.clone();
        let limit = Duration::from_secs(600 + (vm_target + rs_target * replicas - from) as u64 / 20);
        // The tracker counts every Running VMI, the sampled ones of earlier steps too.
        let sampled = self.args.samples * self.steps.len();
        let (mut vms, mut sets) = (from - self.replica_sets * replicas, self.replica_sets);
        // A replica set or a thousand VMs at a time, whichever kind is behind, each once the VMIs asked for
        // before it are within `ahead` of Running.
        let mut shown = Instant::now();
        while vms < vm_target || sets < rs_target {
            if self.args.ahead > 0 {
                let (asked, left) = (vms + sets * replicas + sampled, limit.saturating_sub(start.elapsed()));
                fleet::wait_ahead(&self.tracker, asked, self.args.ahead, left, &mut shown).await?;
            }
            if sets < rs_target && (vms >= vm_target || sets * replicas <= vms) {
                fleet::create_replica_sets(&mut self.api, sets, sets + 1, replicas).await?;
                sets += 1;
            } else {
                let to = if self.args.ahead > 0 { (vms + replicas).min(vm_target) } else { vm_target };
                fleet::create_vms(&endpoint, vms, to, self.args.conns, "bench-vm", json!({})).await?;
                vms = to;
            }
        }
        self.replica_sets = rs_target;
        self.vms = vm_target + rs_target * replicas;
        let want = self.vms + sampled;
        if let Err(e) = fleet::wait_running(&self.tracker, want, limit).await {
            crate::progress(fleet::diagnose(&mut self.api, self.kumo.proc.dir()).await);
            return Err(e);
        }
        crate::progress(format!("{} VMIs Running ({:.0}s)", self.vms, start.elapsed().as_secs_f64()));
        Ok(())
    }

    /// Measures the cluster as it is now.
    async fn step(&mut self) -> Result<()> {
        crate::progress(format!("measuring: {} nodes, {} VMIs", self.nodes, self.vms));
        let pid = self.kumo.proc.pid();
        let cpu = procs::cpu_secs(pid)?;
        let etcd_cpu = self.etcd_cpu()?;
        let window = Duration::from_secs(self.args.probe_secs);
        let vmi_ns = (self.vms > 0).then_some("bench-vm-0");
        // VMIs to time are created through the window, spread out.
        let ns = format!("bench-sample-{}", self.steps.len());
        self.api.namespace(&ns).await?;
        let (tracker, endpoint, samples) = (self.tracker.clone(), self.kumo.endpoint.clone(), self.args.samples);
        let sampler = tokio::spawn(async move {
            let mut api = Api::new(endpoint);
            for i in 0..samples {
                fleet::sample_vmi(&mut api, &tracker, &ns, &format!("sample-{i}")).await?;
                tokio::time::sleep(window / samples.max(1) as u32).await;
            }
            Ok::<_, anyhow::Error>(())
        });
        let probe = api::probe(&mut self.api, window, vmi_ns, "sim-0").await?;
        sampler.await??;
        let cores = (procs::cpu_secs(pid)? - cpu) / window.as_secs_f64();
        let etcd_cores = (self.etcd_cpu()? - etcd_cpu) / window.as_secs_f64();
        // Every sampled VMI reaches Running (or the step fails).
        let sampled_running = self.vms + samples * (self.steps.len() + 1);
        if let Err(e) = fleet::wait_running(&self.tracker, sampled_running, Duration::from_secs(120)).await {
            crate::progress(fleet::diagnose(&mut self.api, self.kumo.proc.dir()).await);
            return Err(e);
        }
        let startup: Vec<Duration> = {
            let mut t = self.tracker.lock().expect("lock");
            std::mem::take(&mut t.startup).into_iter().map(|d| d.saturating_sub(self.args.boot_delay)).collect()
        };
        let rss = procs::rss_bytes(pid)?;
        let store = procs::dir_bytes(self.kumo.proc.dir());
        // The etcd members' own cost (the store column is the API server's data directory).
        let etcd = match self.etcd.is_empty() {
            true => Value::Null,
            false => json!({
                "members": self.etcd.len(),
                "cpu_cores": (etcd_cores * 100.0).round() / 100.0,
                "rss_bytes": self.etcd.iter().map(|m| procs::rss_bytes(m.proc.pid())).sum::<Result<u64>>()?,
                "data_bytes": self.etcd.iter().map(|m| procs::dir_bytes(m.proc.dir())).sum::<u64>(),
            }),
        };
        let restart = self.restart(Stop::Graceful).await?;
        let crash_restart = self.restart(Stop::Crash).await?;
        let startup = crate::report::Summary::of(startup);
        let [m, g, ln, lc] = probe.p99();
        let slo = m <= SLO_MUTATING
            && g <= SLO_GET
            && ln <= SLO_LIST_NAMESPACED
            && lc <= SLO_LIST_CLUSTER
            && startup.p99 <= SLO_STARTUP
            && probe.errors == 0;
        let step = json!({
            "nodes": self.nodes, "vmis": self.vms + samples * (self.steps.len() + 1),
            "api": probe.json(), "vmi_startup": startup.json(),
            "server": {"cpu_cores": (cores * 100.0).round() / 100.0, "rss_bytes": rss, "store_bytes": store},
            "etcd": etcd,
            "restart_secs": (restart.as_secs_f64() * 100.0).round() / 100.0,
            "crash_restart_secs": (crash_restart.as_secs_f64() * 100.0).round() / 100.0,
            "slo_met": slo,
        });
        crate::progress(format!("step: {step}"));
        self.steps.push(step);
        self.save().map(drop)
    }

    /// What an agent's watch costs the API server, at the full node count (before VMs: no node has any yet).
    async fn agent_watches(&mut self) -> Result<()> {
        // The server holds a connection per simulated node already; the watches on connections of their own
        // stay within its open-files limit (the benchmark's, which it inherits).
        let own_limit = procs::open_files_limit()?.saturating_sub(self.nodes as u64 + 4096) as usize;
        let pid = self.kumo.proc.pid();
        self.agent_watches = Some(watch_cost::measure(&self.kumo.endpoint, pid, self.nodes, own_limit).await?);
        self.save().map(drop)
    }

    /// CPU seconds the etcd members have used (0 on the embedded store).
    fn etcd_cpu(&self) -> Result<f64> {
        self.etcd.iter().map(|m| procs::cpu_secs(m.proc.pid())).sum()
    }

    /// Stops the server (`how`) and times it back to serving: from the signal to ready, and a full list of Nodes
    /// answered.
    async fn restart(&mut self, how: Stop) -> Result<Duration> {
        let start = Instant::now();
        self.kumo.restart(how).await?;
        self.api = Api::new(self.kumo.endpoint.clone());
        self.api.get("/api/v1/nodes").await?;
        let took = start.elapsed();
        crate::progress(format!("restarted ({how:?}) in {:.2}s", took.as_secs_f64()));
        // Let agents and controllers settle back before the next measurement.
        fleet::wait_nodes(&mut self.api, self.nodes, Duration::from_secs(300)).await?;
        Ok(took)
    }

    /// The same cluster, measured again while `flood_vms` VMs crash-loop for `flood_secs`.
    async fn flood(&mut self) -> Result<()> {
        let window = Duration::from_secs(self.args.probe_secs);
        let vmi_ns = (self.vms > 0).then_some("bench-vm-0");
        let before = (
            api::probe(&mut self.api, window, vmi_ns, "sim-0").await?,
            self.api.count("/api/v1/events").await?,
            procs::dir_bytes(self.kumo.proc.dir()),
        );
        crate::progress(format!("flood: {} crash-looping VMs for {}s", self.args.flood_vms, self.args.flood_secs));
        let endpoint = self.kumo.endpoint.clone();
        let crash = json!({"kumo.dev/simulated-crash-after": "3"});
        fleet::create_vms(&endpoint, 0, self.args.flood_vms, self.args.conns, "bench-flood", crash).await?;
        let flood_window = Duration::from_secs(self.args.flood_secs);
        let during = api::probe(&mut self.api, flood_window, vmi_ns, "sim-0").await?;
        let after = (self.api.count("/api/v1/events").await?, procs::dir_bytes(self.kumo.proc.dir()));
        let ratio = |a: Duration, b: Duration| (a.as_secs_f64() / b.as_secs_f64().max(1e-6) * 100.0).round() / 100.0;
        let (b, d) = (before.0.p99(), during.p99());
        let flood = json!({
            "vms": self.args.flood_vms, "seconds": self.args.flood_secs,
            "without": {"api": before.0.json(), "events": before.1, "store_bytes": before.2},
            "with": {"api": during.json(), "events": after.0, "store_bytes": after.1},
            "p99_ratio": {"mutating": ratio(d[0], b[0]), "get": ratio(d[1], b[1]), "list_namespaced": ratio(d[2], b[2]), "list_cluster": ratio(d[3], b[3])},
        });
        crate::progress(format!("flood: {flood}"));
        self.steps.push(json!({"flood": flood}));
        self.save().map(drop)
    }

    /// Writes the report so far: after each step, so a run stopped before its end keeps what it measured.
    fn save(&self) -> Result<Value> {
        let out = self.report(self.started.elapsed());
        std::fs::create_dir_all(self.args.out.parent().unwrap_or(std::path::Path::new(".")))?;
        std::fs::write(&self.args.out, serde_json::to_string_pretty(&out)? + "\n")?;
        Ok(out)
    }

    fn report(&self, took: Duration) -> Value {
        let measured: Vec<&Value> = self.steps.iter().filter(|s| s.get("nodes").is_some()).collect();
        let largest = measured
            .iter()
            .rev()
            .find(|s| s["slo_met"] == true)
            .map(|s| json!({"nodes": s["nodes"], "vmis": s["vmis"]}));
        json!({
            "benchmark": "kumo-bench cluster (SIMULATED nodes: kumo agent --simulate)",
            "store": if self.args.etcd { "etcd (3 members)" } else { "embedded" },
            "boot_delay_secs": self.args.boot_delay.as_secs_f64(),
            "probe_secs": self.args.probe_secs,
            "server_args": self.args.server_args,
            "environment": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
            "slo": {"mutating_p99_ms": 1000, "get_p99_ms": 1000, "list_namespaced_p99_ms": 5000, "list_cluster_p99_ms": 30000, "vmi_startup_p99_ms": 5000},
            "steps": measured,
            "flood": self.steps.iter().find_map(|s| s.get("flood")),
            "largest_step_within_slo": largest,
            "agent_watches": self.agent_watches,
            "total_secs": took.as_secs(),
        })
    }
}

fn markdown(out: &Value) -> String {
    let mut s = String::from("| nodes | VMIs | mutating p99 ms | get p99 ms | list ns p99 ms | list cluster p99 ms | VMI start p99 ms | CPU cores | RSS MiB | store MiB | restart s | after crash s | SLO |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for st in out["steps"].as_array().into_iter().flatten() {
        let p = |k: &str| st["api"][k]["p99_ms"].as_f64().unwrap_or(0.0);
        let mib = |k: &str| st["server"][k].as_f64().unwrap_or(0.0) / 1048576.0;
        s += &format!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.0} | {:.0} | {} | {} | {} |\n",
            st["nodes"],
            st["vmis"],
            p("mutating"),
            p("get"),
            p("list_namespaced"),
            p("list_cluster"),
            st["vmi_startup"]["p99_ms"].as_f64().unwrap_or(0.0),
            st["server"]["cpu_cores"],
            mib("rss_bytes"),
            mib("store_bytes"),
            st["restart_secs"],
            st["crash_restart_secs"],
            if st["slo_met"] == true { "met" } else { "missed" }
        );
    }
    for st in out["steps"].as_array().into_iter().flatten().filter(|st| !st["etcd"].is_null()) {
        let e = &st["etcd"];
        let mib = |k: &str| e[k].as_f64().unwrap_or(0.0) / 1048576.0;
        s += &format!(
            "\netcd at {} nodes, {} VMIs: {} members, {} cores, RSS {:.0} MiB, data {:.0} MiB\n",
            st["nodes"],
            st["vmis"],
            e["members"],
            e["cpu_cores"],
            mib("rss_bytes"),
            mib("data_bytes")
        );
    }
    if let Some(w) = out.get("agent_watches").filter(|w| !w.is_null()) {
        let kib = |k: &str| w[k]["bytes_per_watch"].as_f64().unwrap_or(0.0) / 1024.0;
        s += &format!(
            "\nAPI server memory per agent watch: {:.1} KiB sharing connections ({} watches), {:.1} KiB on a connection of its own ({}); drift without watches {:.1} MiB\n",
            kib("shared_connections"),
            w["shared_connections"]["watches"],
            kib("own_connection"),
            w["own_connection"]["watches"],
            w["drift_without_watches_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
        );
    }
    if let Some(f) = out.get("flood").filter(|f| !f.is_null()) {
        s += &format!(
            "\nflood ({} VMs crash-looping {} s): p99 ratios {}; events {} → {}; store {} → {} bytes\n",
            f["vms"],
            f["seconds"],
            f["p99_ratio"],
            f["without"]["events"],
            f["with"]["events"],
            f["without"]["store_bytes"],
            f["with"]["store_bytes"]
        );
    }
    s
}

/// Renders the plot with matplotlib (the JSON stays the record when it cannot).
fn plot(json: &std::path::Path, png: &std::path::Path) -> Result<()> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plot_cluster.py");
    let out =
        std::process::Command::new("python3").arg(&script).arg(json).arg(png).output().context("running python3")?;
    if !out.status.success() {
        bail!(
            "plotting failed (pip install matplotlib; scripts/bench-scale.sh does): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    crate::progress(format!("plot written to {}", png.display()));
    Ok(())
}
