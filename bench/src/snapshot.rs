//! Snapshots of the grown store: one saved through the API server (`kumo store snapshot save --kubeconfig`)
//! while writers keep updating, next to the same writers without a snapshot; then the file restored offline
//! into a new data directory.

use crate::load::{self, KumoWorker};
use crate::procs::{CpuMeter, Kumo};
use crate::report::Phase;
use anyhow::{ensure, Context, Result};
use std::path::Path;
use std::time::Instant;

pub struct Snapshots {
    /// Updates with no snapshot running, then updates while one is saved.
    pub without: Phase,
    pub during: Phase,
    pub save_secs: f64,
    pub file_bytes: u64,
    pub restore_secs: f64,
    pub restored_bytes: u64,
}

/// Updates per chunk and connection: chunks keep going until the save has finished.
const CHUNK_PER_CONN: usize = 50;

fn kumo_cli(bin: &Path, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(bin).args(args).output().with_context(|| format!("running {args:?}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "kumo {} failed: {text}", args.join(" "));
    Ok(text)
}

/// Runs update chunks over `objects` (in update mode) while `more` (given the updates done) says so, at least
/// one chunk.
async fn updates_while(
    workers: Vec<KumoWorker>,
    objects: usize,
    pid: u32,
    more: impl Fn(usize) -> bool,
) -> Result<(Vec<KumoWorker>, Phase)> {
    let n = workers.len();
    let chunk = n * CHUNK_PER_CONN;
    let (cpu, started) = (CpuMeter::start(pid), Instant::now());
    let (mut workers, mut lats, mut at) = (workers, vec![], 0);
    loop {
        // Chunks start at a multiple of the connection count, so each worker updates only its own objects.
        let end = (at + chunk).min(objects);
        let (w, l) = load::run_ops(workers, at..end).await?;
        (workers, at) = (w, if end == objects { 0 } else { end });
        lats.extend(l);
        if !more(lats.len()) {
            break;
        }
    }
    Ok((workers, Phase::of(n, lats, started.elapsed().as_secs_f64(), cpu)))
}

pub async fn run(kumo: &Kumo, workers: Vec<KumoWorker>, objects: usize) -> Result<(Vec<KumoWorker>, Snapshots)> {
    let pid = kumo.proc.pid();
    let dir = kumo.proc.dir();
    let file = dir.join("bench.snapshot");
    let kubeconfig = dir.join("kubeconfig");
    let (file_s, kubeconfig_s) = (file.display().to_string(), kubeconfig.display().to_string());

    // The save runs on its own thread; updates go on until it is done. The baseline runs as many updates.
    let bin = kumo.bin.clone();
    let started = Instant::now();
    let save = std::thread::spawn(move || {
        kumo_cli(&bin, &["store", "snapshot", "save", &file_s, "--kubeconfig", &kubeconfig_s])
            .map(|_| started.elapsed())
    });
    let (workers, during) = updates_while(workers, objects, pid, |_| !save.is_finished()).await?;
    let save_secs =
        save.join().expect("save thread").context("saving a snapshot through the API server")?.as_secs_f64();
    crate::progress(format!("{} while saving a snapshot ({save_secs:.1} s)", crate::show("update", &during)));
    let (workers, without) = updates_while(workers, objects, pid, |done| done < during.count).await?;
    crate::progress(crate::show("update (no snapshot)", &without));

    let restored = tempfile::Builder::new().prefix("kumo-bench-restore-").tempdir_in(dir.parent().unwrap_or(dir))?;
    let target = restored.path().join("data");
    let started = Instant::now();
    kumo_cli(
        &kumo.bin,
        &["store", "snapshot", "restore", &file.display().to_string(), "--data-dir", &target.display().to_string()],
    )?;
    let restore_secs = started.elapsed().as_secs_f64();
    let out = Snapshots {
        without,
        during,
        save_secs,
        file_bytes: std::fs::metadata(&file)?.len(),
        restore_secs,
        restored_bytes: crate::procs::dir_bytes(&target),
    };
    crate::progress(format!("snapshot restored offline in {restore_secs:.1} s"));
    std::fs::remove_file(&file)?;
    Ok((workers, out))
}
