//! `kumo-bench`: in one run, writes through the kumo API next to raw etcd puts (1 KiB objects, 1 and 16
//! connections), store growth to 100,000 objects, watch delivery to 1,000 watchers, and resident memory.
//! Starts the real `kumo server` and a real `etcd` as child processes; only 127.0.0.1 traffic.
//! Run it with `scripts/bench.sh` (installs etcd, builds, raises the open-files limit).

mod cluster;
mod compare;
mod growth;
mod http;
mod load;
mod procs;
mod report;
mod snapshot;
mod watch;

use anyhow::{bail, Context, Result};
use clap::Parser;
use report::{Phase, Results};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "kumo-bench",
    about = "Benchmark kumo's API against raw etcd (see scripts/bench.sh), or a whole cluster (`cluster`)",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// The kumo binary to benchmark.
    #[arg(long, default_value = "target/release/kumo")]
    kumo_bin: PathBuf,
    /// The etcd binary (default: `etcd` on PATH).
    #[arg(long)]
    etcd_bin: Option<PathBuf>,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
    /// Small counts for a smoke run (explicit counts below still win).
    #[arg(long)]
    quick: bool,
    /// Operations per throughput phase [default: 5000; quick: 200].
    #[arg(long)]
    count: Option<usize>,
    /// Rounds of the kumo-vs-etcd phases; each figure is the median round [default: 3; quick: 1].
    #[arg(long)]
    rounds: Option<usize>,
    /// Connection counts for the throughput phases.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    conns: Vec<usize>,
    /// Objects the growth phase fills a fresh kumo with [default: 100000; quick: 5000].
    #[arg(long)]
    growth_objects: Option<usize>,
    /// Objects per growth bucket [default: 10000; quick: 1000].
    #[arg(long)]
    growth_step: Option<usize>,
    /// Seconds to sit idle after filling the store, metering kumo's CPU [default: 20; quick: 2].
    #[arg(long)]
    idle_secs: Option<u64>,
    /// Connections used to fill the store.
    #[arg(long, default_value_t = 16)]
    growth_conns: usize,
    /// Concurrent watches [default: 1000; quick: 100].
    #[arg(long)]
    watchers: Option<usize>,
    /// Updates made while the watchers listen [default: 200; quick: 20].
    #[arg(long)]
    watch_updates: Option<usize>,
    /// Updates per second during the watch phase.
    #[arg(long, default_value_t = 20.0)]
    watch_rate: f64,
    /// Size of each written object: the ConfigMap request body, and the etcd value.
    #[arg(long, default_value_t = 1024)]
    object_bytes: usize,
    /// Untimed creates on one connection before the measured phases of each server.
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// Directory for the servers' temporary data directories (default: the system temp directory).
    #[arg(long)]
    tmp_dir: Option<PathBuf>,
    /// Keep the servers' data directories (and logs) instead of deleting them.
    #[arg(long)]
    keep: bool,
    /// Give up (and clean up) after this many seconds.
    #[arg(long, default_value_t = 3600)]
    timeout_secs: u64,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// A cluster of SIMULATED nodes and VMs grown step by step; see scripts/bench-scale.sh.
    Cluster(cluster::ClusterArgs),
}

/// A duration in seconds, fractions allowed ("2", "0.5"), or with a unit ("500ms", "2s").
pub(crate) fn parse_secs(s: &str) -> Result<Duration, String> {
    let (n, scale) = match s {
        _ if s.ends_with("ms") => (&s[..s.len() - 2], 1e-3),
        _ if s.ends_with('s') => (&s[..s.len() - 1], 1.0),
        _ => (s, 1.0),
    };
    n.parse::<f64>().map(|v| Duration::from_secs_f64(v * scale)).map_err(|e| format!("{s:?}: {e}"))
}

struct Cfg {
    args: Args,
    count: usize,
    rounds: usize,
    idle_secs: u64,
    growth_objects: usize,
    growth_step: usize,
    watchers: usize,
    watch_updates: usize,
    etcd_bin: PathBuf,
    tmp: PathBuf,
}

impl Cfg {
    fn new(args: Args) -> Result<Cfg> {
        let q = |v: Option<usize>, full: usize, quick: usize| v.unwrap_or(if args.quick { quick } else { full });
        let cfg = Cfg {
            count: q(args.count, 5000, 200),
            rounds: q(args.rounds, 3, 1),
            idle_secs: q(args.idle_secs.map(|s| s as usize), 20, 2) as u64,
            growth_objects: q(args.growth_objects, 100_000, 5000),
            growth_step: q(args.growth_step, 10_000, 1000),
            watchers: q(args.watchers, 1000, 100),
            watch_updates: q(args.watch_updates, 200, 20),
            etcd_bin: match &args.etcd_bin {
                Some(p) => p.clone(),
                None => procs::which("etcd").context("etcd not found; install the etcd-server package")?,
            },
            tmp: args.tmp_dir.clone().unwrap_or_else(std::env::temp_dir),
            args,
        };
        if cfg.count == 0
            || cfg.rounds == 0
            || cfg.growth_step == 0
            || cfg.watch_updates == 0
            || cfg.args.watch_rate <= 0.0
        {
            bail!("counts and rates must be positive");
        }
        if cfg.args.conns.contains(&0) || cfg.args.growth_conns == 0 {
            bail!("connection counts must be positive");
        }
        if !cfg.args.kumo_bin.is_file() {
            bail!("{} not found; build it with `cargo build --release -p kumo`", cfg.args.kumo_bin.display());
        }
        Ok(cfg)
    }

    fn json(&self) -> serde_json::Value {
        let a = &self.args;
        json!({
            "quick": a.quick, "count_per_phase": self.count, "rounds": self.rounds, "idle_seconds": self.idle_secs, "connections": a.conns,
            "growth_objects": self.growth_objects, "growth_step": self.growth_step, "growth_connections": a.growth_conns,
            "watchers": self.watchers, "watch_updates": self.watch_updates, "watch_rate": a.watch_rate,
            "object_bytes": a.object_bytes, "warmup": a.warmup, "update_method": "PUT with resourceVersion",
            "kumo_bin": a.kumo_bin, "etcd_bin": self.etcd_bin,
        })
    }
}

pub(crate) fn progress(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

pub(crate) fn show(what: &str, p: &Phase) -> String {
    format!(
        "{what}: {} ops at {} conns in {:.2}s = {:.0}/s, p50 {:?} p99 {:?}, CPU server {:.2}s client {:.2}s",
        p.count, p.conns, p.secs, p.ops_per_sec, p.latency.p50, p.latency.p99, p.server_cpu, p.client_cpu
    )
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

async fn run(cfg: &Cfg) -> Result<Results> {
    let a = &cfg.args;
    let load_before = loadavg();
    let size = a.object_bytes;
    let limit = procs::open_files_limit()?;
    if limit < cfg.watchers as u64 + 256 {
        bail!("open-files limit is {limit}; {} watchers need more: run `ulimit -n 65536` first", cfg.watchers);
    }

    progress(format!("starting etcd ({}) and kumo ({})", cfg.etcd_bin.display(), a.kumo_bin.display()));
    let etcd = procs::start_etcd(&cfg.etcd_bin, &cfg.tmp, a.keep).await?;
    let kumo = procs::start_kumo(&a.kumo_bin, &cfg.tmp, a.keep, &[]).await?;
    let settings =
        compare::Settings { conns: a.conns.clone(), count: cfg.count, rounds: cfg.rounds, warmup: a.warmup, size };
    let throughput = compare::run(&kumo, &etcd, &settings).await?;
    let rss_after_throughput = (kumo.proc.rss_bytes()?, etcd.proc.rss_bytes()?);
    drop(kumo);

    // The same writes through a kumo whose store is that very etcd, next to raw puts on it.
    progress("starting kumo on etcd (--etcd-servers) for the same comparison");
    let backend = vec![
        "--no-agent".to_string(),
        "--etcd-servers".into(),
        format!("http://{}", etcd.endpoint.addr),
        "--etcd-prefix".into(),
        "/kumo-bench".into(),
    ];
    let mut kumo = procs::start_kumo(&a.kumo_bin, &cfg.tmp, a.keep, &backend).await?;
    kumo.backend_pid = Some(etcd.proc.pid());
    let throughput_on_etcd = compare::run(&kumo, &etcd, &settings).await?;
    let etcd_version = etcd.version.clone();
    drop((etcd, kumo));

    progress("starting a fresh kumo for the growth and watch phases");
    let compaction = ["--compaction-interval".to_string(), growth::COMPACTION_INTERVAL.to_string()];
    let mut kumo = procs::start_kumo(&a.kumo_bin, &cfg.tmp, a.keep, &compaction).await?;
    let settings = growth::Settings {
        objects: cfg.growth_objects,
        step: cfg.growth_step,
        conns: a.growth_conns,
        size,
        idle: Duration::from_secs(cfg.idle_secs),
    };
    let (mut growth, stored_bytes) =
        growth::run(&kumo, &settings).await.map_err(|e| e.context(format!("kumo log:\n{}", kumo.proc.log_tail())))?;

    progress(format!("watch: {} watchers, {} updates at {}/s", cfg.watchers, cfg.watch_updates, a.watch_rate));
    let params = watch::Params { watchers: cfg.watchers, updates: cfg.watch_updates, rate: a.watch_rate, size };
    let watch =
        watch::run(&kumo, &params).await.map_err(|e| e.context(format!("kumo log:\n{}", kumo.proc.log_tail())))?;
    progress(format!(
        "watch: {}/{} delivered, p50 {:?} p99 {:?}",
        watch.delivered, watch.expected, watch.from_ack.p50, watch.from_ack.p99
    ));

    progress("restarting kumo on the same data");
    kumo.restart(procs::Stop::Crash).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    growth.rss_after_restart = kumo.proc.rss_bytes()?;
    drop(kumo);

    let kumo_version = std::process::Command::new(&a.kumo_bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let environment = json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "kumo_version": kumo_version,
        "etcd_version": etcd_version,
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "tmp_dir": format!("{} ({})", cfg.tmp.display(), fs_type(&cfg.tmp)),
    });
    Ok(Results {
        config: cfg.json(),
        environment,
        request_bytes: size,
        stored_bytes,
        throughput,
        throughput_on_etcd,
        rss_after_throughput,
        growth,
        watch,
    })
}

/// The filesystem type of the mount holding `path` (from /proc/mounts).
fn fs_type(path: &std::path::Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && path.starts_with(f[1])).then(|| (f[1].len(), f[2].to_string()))
        })
        .max()
        .map_or_else(|| "unknown fs".into(), |(_, t)| t)
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    if let Some(Command::Cluster(c)) = args.command.take() {
        return cluster::run(c).await;
    }
    let cfg = Cfg::new(args)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let limit = Duration::from_secs(cfg.args.timeout_secs);
    // Returning (or unwinding) drops the servers' guards, which kill them and delete their directories.
    let results = tokio::select! {
        r = tokio::time::timeout(limit, run(&cfg)) => r.context("benchmark exceeded --timeout-secs")??,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        _ = term.recv() => bail!("terminated"),
    };
    println!("{}", results.markdown());
    if let Some(dir) = cfg.args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&cfg.args.out, serde_json::to_string_pretty(&results.json())? + "\n")
        .with_context(|| format!("writing {}", cfg.args.out.display()))?;
    progress(format!("results written to {}", cfg.args.out.display()));
    Ok(())
}
