//! `kumo store`: care of the store: checking it, shrinking its file, and snapshots (as `etcdctl snapshot
//! save/restore/status`).

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use futures::StreamExt;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum StoreAction {
    /// Check a store whole: its structure, every value's checksum, and that its tables agree. The server using
    /// the data directory must be stopped. Exits non-zero when anything is damaged.
    Check {
        /// The server's --data-dir.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Shrink a stopped server's store file to what its data needs, as `etcdctl defrag` does. A running server
    /// does this by itself after a compaction that finds half the file unused for a whole interval.
    Defrag {
        /// The server's --data-dir.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Snapshots: `save FILE` (through the API server, or offline from a data directory), `restore FILE
    /// --data-dir NEW_DIR`, `status FILE`.
    Snapshot {
        #[command(subcommand)]
        action: SnapshotAction,
    },
}

#[derive(Subcommand)]
pub enum SnapshotAction {
    /// Save a consistent snapshot while the server keeps taking writes (through the API server, as an admin),
    /// or from a stopped server's --data-dir.
    Save {
        file: PathBuf,
        /// Admin kubeconfig of the server to snapshot (default: $KUBECONFIG or ~/.kube/config).
        #[arg(long, conflicts_with = "data_dir")]
        kubeconfig: Option<PathBuf>,
        /// Snapshot a stopped server's data directory instead.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Create a new data directory from a snapshot (checked whole first). Start `kumo server --data-dir` on it
    /// with the original server's cluster secret.
    Restore {
        file: PathBuf,
        /// The new data directory (must not hold a store yet).
        #[arg(long)]
        data_dir: PathBuf,
        /// The original server's cluster secret (its data directory's `cluster-secret` file): it unseals the
        /// CA and the Secrets in the snapshot. Copied into the new data directory.
        #[arg(long)]
        cluster_secret_file: Option<PathBuf>,
        /// For an etcd snapshot: arguments for `etcdctl snapshot restore` after `--` (e.g. `-- --name m0
        /// --initial-cluster m0=http://10.0.0.1:2380 --initial-advertise-peer-urls http://10.0.0.1:2380`).
        #[arg(last = true)]
        etcd_args: Vec<String>,
    },
    /// Check a snapshot file and print its revision, number of keys and size.
    Status { file: PathBuf },
}

pub async fn run(action: StoreAction) -> Result<()> {
    match action {
        StoreAction::Check { data_dir } => each_file(&data_dir, check),
        StoreAction::Defrag { data_dir } => each_file(&data_dir, defrag),
        StoreAction::Snapshot { action: SnapshotAction::Save { file, kubeconfig, data_dir } } => {
            save(&file, kubeconfig.as_deref(), data_dir.as_deref()).await
        }
        StoreAction::Snapshot {
            action: SnapshotAction::Restore { file, data_dir, cluster_secret_file, etcd_args },
        } => restore(&file, &data_dir, cluster_secret_file.as_deref(), &etcd_args),
        StoreAction::Snapshot { action: SnapshotAction::Status { file } } => {
            let info = status(&file)?;
            println!("revision {}\nkeys {}\nbytes {}\nsha256 {}", info.revision, info.keys, info.bytes, info.sha256);
            Ok(())
        }
    }
}

/// Runs `f` on the embedded store's file, then on Events' file when there is one (it holds only Events: when
/// it is damaged, deleting it loses nothing else).
fn each_file(data_dir: &Path, f: fn(&Path) -> Result<()>) -> Result<()> {
    f(&data_dir.join(crate::backends::STORE_FILE))?;
    let events = data_dir.join(crate::backends::EVENTS_FILE);
    if events.exists() {
        f(&events)
            .with_context(|| format!("{} holds only Events: deleting it loses nothing else", events.display()))?;
    }
    Ok(())
}

/// Checks a snapshot (kumo's own format, or etcd's, through `etcdctl`) and says what it holds.
fn status(file: &Path) -> Result<kumo_store::snapshot::SnapshotInfo> {
    if is_etcd(file)? {
        return etcd_status(file);
    }
    let f = std::fs::File::open(file).with_context(|| format!("reading {}", file.display()))?;
    kumo_store::snapshot::verify(std::io::BufReader::new(f))
        .with_context(|| format!("{} is not a usable snapshot", file.display()))
}

/// etcd's snapshot is its bbolt database file: the meta page's magic follows the 16-byte page header.
fn is_etcd(file: &Path) -> Result<bool> {
    use std::io::Read;
    let f = std::fs::File::open(file).with_context(|| format!("reading {}", file.display()))?;
    let mut head = Vec::with_capacity(20);
    f.take(20).read_to_end(&mut head).with_context(|| format!("reading {}", file.display()))?;
    Ok(head.get(16..20) == Some(&[0xED, 0xDA, 0x0C, 0xED][..]))
}

fn etcdctl(args: &[&str]) -> Result<std::process::Output> {
    std::process::Command::new("etcdctl").env("ETCDCTL_API", "3").args(args).output().context(
        "running etcdctl, which reads etcd snapshots (install the etcd-client package: apt-get install etcd-client)",
    )
}

fn etcd_status(file: &Path) -> Result<kumo_store::snapshot::SnapshotInfo> {
    let out = etcdctl(&["snapshot", "status", &file.display().to_string(), "-w", "json"])?;
    if !out.status.success() {
        bail!("{} is not a usable etcd snapshot: {}", file.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("etcdctl's answer is not JSON")?;
    Ok(kumo_store::snapshot::SnapshotInfo {
        revision: v["revision"].as_i64().unwrap_or_default(),
        keys: v["totalKey"].as_u64().unwrap_or_default(),
        bytes: std::fs::metadata(file)?.len(),
        sha256: format!("(etcd hash {})", v["hash"]),
    })
}

/// Streams the snapshot into `FILE.part`, checks it, then moves it into place.
async fn save(file: &Path, kubeconfig: Option<&Path>, data_dir: Option<&Path>) -> Result<()> {
    let part = file.with_extension("part");
    let mut out = std::fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?;
    let mut written = 0u64;
    let mut progress = |n: usize, out: &mut std::fs::File, bytes: &[u8]| -> Result<()> {
        out.write_all(bytes)?;
        written += n as u64;
        if written / (8 << 20) != (written - n as u64) / (8 << 20) {
            eprintln!("snapshot: {} MiB…", written >> 20);
        }
        Ok(())
    };
    match data_dir {
        Some(dir) => {
            let store = kumo_store::RedbStore::open(&dir.join("kumo.redb"))
                .with_context(|| format!("opening the store in {} (stop the server using it first)", dir.display()))?;
            let mut stream = kumo_store::Store::snapshot(&store).await?;
            while let Some(piece) = stream.next().await {
                let piece = piece?;
                progress(piece.len(), &mut out, &piece)?;
            }
        }
        None => {
            let client = crate::client_from(kubeconfig).await?;
            let req = http::Request::get(kumo_apiserver::snapshot::PATH).body(Vec::<u8>::new())?;
            let resp = client.send(req.map(Into::into)).await.context("asking the API server for a snapshot")?;
            if !resp.status().is_success() {
                let status = resp.status();
                let body =
                    http_body_util::BodyExt::collect(resp.into_body()).await.map(|b| b.to_bytes()).unwrap_or_default();
                bail!("the API server refused the snapshot ({status}): {}", String::from_utf8_lossy(&body));
            }
            let mut body = resp.into_body();
            while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
                if let Ok(data) = frame.context("reading the snapshot")?.into_data() {
                    progress(data.len(), &mut out, &data)?;
                }
            }
        }
    }
    out.sync_all()?;
    drop(out);
    let info = status(&part).context("the snapshot arrived incomplete or damaged; try again")?;
    std::fs::rename(&part, file)?;
    println!(
        "saved {}: revision {}, {} keys, {} bytes, sha256 {}",
        file.display(),
        info.revision,
        info.keys,
        info.bytes,
        info.sha256
    );
    Ok(())
}

fn restore(file: &Path, data_dir: &Path, secret: Option<&Path>, etcd_args: &[String]) -> Result<()> {
    if is_etcd(file)? {
        // etcd's own restore (it checks the snapshot's hash) into a new etcd data directory.
        etcd_status(file)?;
        let (file, dir) = (file.display().to_string(), data_dir.display().to_string());
        let mut args = vec!["snapshot", "restore", &file, "--data-dir", &dir];
        args.extend(etcd_args.iter().map(String::as_str));
        let out = etcdctl(&args)?;
        if !out.status.success() {
            bail!("etcdctl snapshot restore failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        println!(
            "restored an etcd member into {}: start etcd with --data-dir {} (and the member name and peer URLs given to \
             the restore), then `kumo server --etcd-servers …` with the original cluster secret and --etcd-prefix",
            data_dir.display(),
            data_dir.display()
        );
        return Ok(());
    }
    if !etcd_args.is_empty() {
        bail!("arguments after -- are for restoring etcd snapshots; {} is a kumo snapshot", file.display());
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    std::fs::set_permissions(data_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let db = data_dir.join("kumo.redb");
    let info = kumo_store::restore_embedded(file, &db).with_context(|| format!("restoring {}", file.display()))?;
    std::fs::set_permissions(&db, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    match secret {
        Some(s) => {
            let target = data_dir.join("cluster-secret");
            std::fs::copy(s, &target).with_context(|| format!("copying the cluster secret {}", s.display()))?;
            std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        }
        None => eprintln!(
            "note: start the server with the original cluster secret (--cluster-secret, or its `cluster-secret` file \
             copied into {}): it unseals the CA and the Secrets",
            data_dir.display()
        ),
    }
    println!(
        "restored revision {} ({} keys) into {}; start it with `kumo server --data-dir {}`",
        info.revision,
        info.keys,
        data_dir.display(),
        data_dir.display()
    );
    Ok(())
}

fn defrag(path: &Path) -> Result<()> {
    if !path.exists() {
        bail!("{} does not exist: give the server's --data-dir", path.display());
    }
    eprintln!("defragmenting {} (the server using it must be stopped)…", path.display());
    let (before, after) = kumo_store::defrag_embedded(path)?;
    println!("{} MiB → {} MiB", before >> 20, after >> 20);
    Ok(())
}

fn check(path: &std::path::Path) -> Result<()> {
    if !path.exists() {
        bail!("{} does not exist: give the server's --data-dir", path.display());
    }
    eprintln!("checking {} (structure, then every row)…", path.display());
    let report = kumo_store::RedbStore::check(path)?;
    println!("{} rows verified in {:.1}s", report.rows, report.took.as_secs_f64());
    if report.pages_ok == Some(false) {
        println!("page checksums: a page of the file is damaged (the rows below name any value on it)");
    }
    if report.ok() && report.pages_ok != Some(false) {
        println!("store is intact");
        return Ok(());
    }
    for (key, detail) in &report.corrupt {
        println!("corrupt: {key}: {detail}");
    }
    if report.ok() {
        bail!("the file is damaged outside the rows kumo reads. Restore the store from a snapshot (`kumo store snapshot restore FILE --data-dir NEW_DIR`)");
    }
    bail!(
        "{} damaged row(s). Restore the store from a snapshot (`kumo store snapshot restore FILE --data-dir NEW_DIR`), \
         or recreate the objects named above",
        report.corrupt.len()
    )
}
