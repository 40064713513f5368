//! Store growth: fill a fresh kumo with ConfigMaps bucket by bucket, recording create throughput, latency,
//! server CPU, resident memory and data-directory size after each bucket; then sit idle for a while to see
//! what the server does with a full store on its own.

use crate::load::{self, KumoWorker};
use crate::procs::{self, CpuMeter, Kumo};
use crate::report::{Bucket, Growth};
use anyhow::Result;
use std::time::Duration;

/// The growth server compacts this often, so that what compaction gives back shows within the run (the default
/// is 5 minutes, as in Kubernetes).
pub const COMPACTION_INTERVAL: &str = "5s";

/// How long to wait, after the updates, for compaction to give the space of the superseded versions back.
const RECLAIM_WAIT: Duration = Duration::from_secs(120);
/// The data directory counts as settled once unchanged this long.
const SETTLED: Duration = Duration::from_secs(20);

/// Polls the data directory until its size has not changed for [`SETTLED`] (several compaction intervals, so a
/// shrink would have shown); returns its size and the seconds since the updates.
async fn wait_for_reclaim(kumo: &Kumo, from: u64) -> (u64, f64) {
    crate::progress("waiting for compaction (and, if it pays, shrinking the file) to settle");
    let started = std::time::Instant::now();
    let (mut last, mut since) = (from, std::time::Instant::now());
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = procs::dir_bytes(kumo.proc.dir());
        if now != last {
            (last, since) = (now, std::time::Instant::now());
        }
        if since.elapsed() >= SETTLED || started.elapsed() > RECLAIM_WAIT {
            crate::progress(format!("data dir {} MiB after {:.0?}", now >> 20, started.elapsed()));
            return (now, started.elapsed().as_secs_f64());
        }
    }
}

pub struct Settings {
    pub objects: usize,
    pub step: usize,
    pub conns: usize,
    pub size: usize,
    pub idle: Duration,
}

/// Returns the growth results and the size of one stored object as kumo returns it.
pub async fn run(kumo: &Kumo, s: &Settings) -> Result<(Growth, usize)> {
    let pid = kumo.proc.pid();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = kumo.proc.rss_bytes()?;
    let (probe, _) = load::run_phase(KumoWorker::open(&kumo.endpoint, 1, "probe", s.size).await?, 0..1, pid).await?;
    let stored_bytes = probe[0].stored_bytes;

    let mut workers = KumoWorker::open(&kumo.endpoint, s.conns, "grow", s.size).await?;
    let mut buckets = vec![];
    for from in (0..s.objects).step_by(s.step) {
        let to = (from + s.step).min(s.objects);
        let (w, phase) = load::run_phase(workers, from..to, pid).await?;
        workers = w;
        let rss_after = kumo.proc.rss_bytes()?;
        let disk_after = procs::dir_bytes(kumo.proc.dir());
        crate::progress(format!(
            "{} (store {to} objects, RSS {} MiB, data dir {} MiB)",
            crate::show("grow", &phase),
            rss_after >> 20,
            disk_after >> 20
        ));
        buckets.push(Bucket { from, to, phase, rss_after, disk_after });
    }
    // Every object updated once: what the history of one version each costs on disk.
    workers.iter_mut().for_each(|w| load::Worker::set_mode(w, load::Mode::Update));
    let (workers, update_all) = load::run_phase(workers, 0..s.objects, pid).await?;
    let disk_after_updates = procs::dir_bytes(kumo.proc.dir());
    crate::progress(format!("{} (data dir {} MiB)", crate::show("update all", &update_all), disk_after_updates >> 20));
    let (disk_after_reclaim, reclaim_secs) = wait_for_reclaim(kumo, disk_after_updates).await;
    let (workers, snapshots) = crate::snapshot::run(kumo, workers, s.objects).await?;
    drop(workers);

    crate::progress(format!("idle for {:?} at {} objects", s.idle, s.objects));
    let cpu = CpuMeter::start(pid);
    tokio::time::sleep(s.idle).await;
    let idle_cpu = cpu.stop().0;
    let rss_after_idle = kumo.proc.rss_bytes()?;
    Ok((
        Growth {
            conns: s.conns,
            rss_before,
            buckets,
            idle_secs: s.idle.as_secs_f64(),
            idle_cpu,
            rss_after_idle,
            rss_after_restart: 0,
            update_all,
            disk_after_updates,
            disk_after_reclaim,
            len_after_reclaim: procs::dir_len(kumo.proc.dir()),
            reclaim_secs,
            snapshots,
            live_bytes: (s.objects * stored_bytes) as u64,
        },
        stored_bytes,
    ))
}
