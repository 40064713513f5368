//! `GET /kumo/snapshot`: a consistent snapshot of the store, streamed while the server keeps taking writes
//! (`kumo store snapshot save --kubeconfig`). Admins only: it holds every object (Secrets still sealed).

use crate::auth::User;
use crate::response::{self, Resp};
use crate::state::ApiServer;
use futures::StreamExt;
use http::StatusCode;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use kumo_api::ApiError;

pub const PATH: &str = "/kumo/snapshot";

pub async fn serve(api: &ApiServer, user: &User, method: &http::Method) -> Resp {
    if *user != User::Admin {
        return response::error(&ApiError::forbidden(format!(
            "User \"{}\" cannot take snapshots of the store",
            user.name()
        )));
    }
    if method != http::Method::GET {
        return response::error(&ApiError::method_not_allowed("snapshot", "store"));
    }
    let stream = match api.objects.store.snapshot().await {
        Ok(s) => s,
        Err(kumo_store::Error::Unavailable(m)) => {
            return response::error(&ApiError::unavailable(format!("taking a snapshot: {m}")))
        }
        Err(e) => return response::error(&ApiError::internal(format!("taking a snapshot: {e}"))),
    };
    // A failure mid-way ends the body early: the client's check of the file's checksum then refuses it.
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
    tokio::spawn(async move {
        let mut stream = stream;
        while let Some(piece) = stream.next().await {
            match piece {
                Ok(b) => {
                    if tx.send(b).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!("snapshot failed part way: {e}");
                    return;
                }
            }
        }
    });
    let body = StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx).map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b))),
    );
    http::Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/octet-stream")
        .body(BodyExt::boxed(body))
        .expect("response")
}

/// Scheduled snapshots: one every `every` into `dir`, keeping the newest `keep`.
pub struct Schedule {
    pub dir: std::path::PathBuf,
    pub every: std::time::Duration,
    pub keep: usize,
}

const PREFIX: &str = "kumo-snapshot-";
const SUFFIX: &str = ".kumo";

/// Starts taking scheduled snapshots (the directory is created private, as the store is).
pub fn spawn_schedule(store: std::sync::Arc<dyn kumo_store::Store>, s: Schedule) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(&s.dir).with_context(|| format!("creating the snapshot directory {}", s.dir.display()))?;
    std::fs::set_permissions(&s.dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(s.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match take(&*store, &s.dir).await {
                Ok(path) => tracing::info!(path = %path.display(), "scheduled snapshot saved"),
                Err(e) => tracing::error!("scheduled snapshot failed: {e:#}"),
            }
            if let Err(e) = prune(&s.dir, s.keep) {
                tracing::warn!("pruning old snapshots in {}: {e}", s.dir.display());
            }
        }
    });
    Ok(())
}

/// Writes one snapshot as `kumo-snapshot-{UTC time}.kumo` (via a `.part` file, checked before it is renamed;
/// removed if anything fails).
async fn take(store: &dyn kumo_store::Store, dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let name = format!("{PREFIX}{}{SUFFIX}", chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"));
    let part = dir.join(format!("{name}.part"));
    let written = write_checked(store, &part).await;
    if written.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    written?;
    let path = dir.join(name);
    std::fs::rename(&part, &path)?;
    Ok(path)
}

async fn write_checked(store: &dyn kumo_store::Store, part: &std::path::Path) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut out = tokio::fs::File::create(part).await?;
    let mut stream = store.snapshot().await?;
    while let Some(piece) = stream.next().await {
        out.write_all(&piece?).await?;
    }
    out.sync_all().await?;
    drop(out);
    let part = part.to_path_buf();
    tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        Ok(kumo_store::snapshot::verify(std::io::BufReader::new(std::fs::File::open(part)?))?)
    })
    .await??;
    Ok(())
}

/// Deletes all but the newest `keep` scheduled snapshots (names sort by time).
fn prune(dir: &std::path::Path, keep: usize) -> std::io::Result<()> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(keep);
    for n in &names[..excess] {
        std::fs::remove_file(dir.join(n))?;
    }
    Ok(())
}
