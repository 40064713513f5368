//! Filling a volume from an HTTP(S) URL, as CDI's importer does: the download streams to a scratch file next
//! to the image (gzip and xz are undone on the way; nothing is held in memory beyond a few chunks), then
//! `qemu-img convert` writes the volume's format (qcow2, or raw for a block volume) and the image is grown to
//! the volume's size. A qcow2 needs random access, so it cannot be converted while it streams — CDI also
//! goes through scratch space for it. A download already in the volume's format, whole and self-contained,
//! is kept as it is instead of being written a second time.

use crate::image::transport;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The chunks in flight between the download and the writer thread: what bounds the importer's memory.
const IN_FLIGHT: usize = 16;
const QEMU_IMG_TIMEOUT: Duration = Duration::from_secs(3600);

/// What to import into, and how big the volume is.
pub struct Target<'a> {
    /// The volume's image (written under a temporary name, renamed when whole).
    pub image: &'a Path,
    pub bytes: u64,
    pub block: bool,
}

/// Downloads `url` into `target`, calling `progress` with the fraction downloaded (when the size is known).
pub async fn http(url: &str, target: &Target<'_>, progress: &(dyn Fn(f64) + Sync)) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    let (_, resp) = transport::get(&uri, &http::HeaderMap::new()).await.map_err(|e| format!("{e:#}"))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("HTTP {} from {url}", status));
    }
    let total = content_length(resp.headers());
    stream(resp.into_body(), total, &format!("the download of {url}"), target, progress).await
}

/// Writes a body of `total` bytes (when known) into `target`, as [`http`] does: to scratch (gzip and xz
/// undone on the way), then converted. `what` names it in errors ("the download of URL", "the upload").
pub async fn stream(
    mut body: hyper::body::Incoming,
    total: Option<u64>,
    what: &str,
    target: &Target<'_>,
    progress: &(dyn Fn(f64) + Sync),
) -> Result<(), String> {
    let scratch = scratch_of(target.image);
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(IN_FLIGHT);
    let writer = {
        let scratch = scratch.clone();
        tokio::task::spawn_blocking(move || write_decoded(rx, &scratch))
    };
    let mut got = 0u64;
    let mut failed = None;
    loop {
        match transport::next_chunk(&mut body).await {
            Ok(Some(chunk)) => {
                got += chunk.len() as u64;
                if tx.send(chunk).await.is_err() {
                    break; // the writer failed: its error says why
                }
                if let Some(t) = total.filter(|t| *t > 0) {
                    progress(got as f64 / t as f64);
                }
            }
            Ok(None) => break,
            Err(e) => {
                failed = Some(match total {
                    Some(t) if got < t => format!("{what} was cut short at {got} of {t} bytes: {e:#}"),
                    _ => format!("{what}: {e:#} after {got} bytes"),
                });
                break;
            }
        }
    }
    drop(tx);
    let written = writer.await.map_err(|e| e.to_string())?;
    let result = match (failed, written) {
        (Some(e), _) | (None, Err(e)) => Err(e),
        (None, Ok(())) if total.is_some_and(|t| got < t) => {
            Err(format!("{what} was cut short: {got} of {} bytes", total.unwrap_or(0)))
        }
        (None, Ok(())) => adopt_or_convert(&scratch, target).await,
    };
    let _ = std::fs::remove_file(&scratch);
    result
}

/// A message's `Content-Length`, when it has one.
pub fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
}

fn scratch_of(image: &Path) -> PathBuf {
    image.with_extension("download")
}

/// Writes the chunks to `path`, undoing gzip or xz (told by their first bytes).
fn write_decoded(mut rx: tokio::sync::mpsc::Receiver<bytes::Bytes>, path: &Path) -> Result<(), String> {
    let file = std::fs::File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    let file = std::io::BufWriter::with_capacity(1 << 20, file);
    let Some(first) = rx.blocking_recv() else { return Err("the download was empty".into()) };
    let io = |e: std::io::Error| format!("writing {}: {e}", path.display());
    let mut out: Box<dyn Write> = if first.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::write::GzDecoder::new(file))
    } else if first.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Box::new(liblzma::write::XzDecoder::new(file))
    } else {
        Box::new(file)
    };
    out.write_all(&first).map_err(io)?;
    while let Some(chunk) = rx.blocking_recv() {
        out.write_all(&chunk).map_err(|e| format!("{} (a damaged or truncated download?)", io(e)))?;
    }
    out.flush().map_err(io)?;
    drop(out);
    Ok(())
}

/// Converts an image (a download, a cached containerDisk) into the volume's format and size.
pub async fn convert(scratch: &Path, target: &Target<'_>) -> Result<(), String> {
    convert_from(scratch, None, target).await
}

/// Makes a downloaded `scratch` the volume's image. When it already is what [`convert_from`] would write —
/// the volume's format, no internal snapshots (kumo's own snapshots live there), and consistent by
/// `qemu-img check` — it is renamed into place and grown; otherwise it is converted.
async fn adopt_or_convert(scratch: &Path, target: &Target<'_>) -> Result<(), String> {
    let info = checked_info(scratch, target).await?;
    let out_format = if target.block { "raw" } else { "qcow2" };
    if info.format != out_format || info.snapshots > 0 {
        return convert_checked(&info, scratch, None, target).await;
    }
    let src = path_str(scratch)?;
    if out_format == "qcow2" {
        qemu_img(&["check", "-q", "-f", "qcow2", src])
            .await
            .map_err(|e| format!("the downloaded qcow2 is damaged: {e}"))?;
    }
    qemu_img(&["resize", "-q", "-f", out_format, src, &target.bytes.to_string()]).await?;
    std::fs::rename(scratch, target.image).map_err(|e| format!("renaming {}: {e}", scratch.display()))
}

/// The image's `qemu-img info`, refused when kumo cannot use it as a volume of `target`'s size.
async fn checked_info(image: &Path, target: &Target<'_>) -> Result<crate::image::ImageInfo, String> {
    let info = crate::image::image_info(image)
        .await
        .map_err(|e| format!("the downloaded file is not a disk image qemu-img can read: {e:#}"))?;
    if !["qcow2", "raw"].contains(&info.format.as_str()) {
        return Err(format!("unsupported image format {:?} (qcow2, raw and iso are)", info.format));
    }
    if info.backing_file.is_some() || info.data_file.is_some() {
        return Err("the image refers to other files (a backing or data file): import a self-contained one".into());
    }
    if info.encrypted {
        return Err("the image is encrypted: import an unencrypted one".into());
    }
    if info.virtual_size > target.bytes {
        return Err(format!(
            "the image's virtual size ({} bytes) is larger than the volume ({} bytes): request more storage",
            info.virtual_size, target.bytes
        ));
    }
    Ok(info)
}

/// [`convert`], from one of the image's internal snapshots when `snapshot` names one.
pub async fn convert_from(scratch: &Path, snapshot: Option<&str>, target: &Target<'_>) -> Result<(), String> {
    let info = checked_info(scratch, target).await?;
    convert_checked(&info, scratch, snapshot, target).await
}

/// [`convert_from`] of an image whose `qemu-img info` was read and checked already.
async fn convert_checked(
    info: &crate::image::ImageInfo,
    scratch: &Path,
    snapshot: Option<&str>,
    target: &Target<'_>,
) -> Result<(), String> {
    let out_format = if target.block { "raw" } else { "qcow2" };
    let part = target.image.with_extension("part");
    let _ = std::fs::remove_file(&part);
    let (src, dst) = (path_str(scratch)?, path_str(&part)?);
    let mut args = vec!["convert", "-q", "-f", &info.format, "-O", out_format];
    let from = snapshot.map(|s| format!("snapshot.name={s}"));
    if let Some(f) = &from {
        // A snapshot's clusters never change, so it can be read while a guest writes the image.
        args.extend(["-U", "-l", f.as_str()]);
    }
    args.extend([src, dst]);
    qemu_img(&args).await?;
    qemu_img(&["resize", "-q", "-f", out_format, dst, &target.bytes.to_string()]).await?;
    std::fs::rename(&part, target.image).map_err(|e| format!("renaming {}: {e}", part.display()))
}

fn path_str(p: &Path) -> Result<&str, String> {
    p.to_str().ok_or_else(|| format!("{} is not valid UTF-8", p.display()))
}

async fn qemu_img(args: &[&str]) -> Result<(), String> {
    let run = tokio::process::Command::new("qemu-img").args(args).kill_on_drop(true).output();
    let out = tokio::time::timeout(QEMU_IMG_TIMEOUT, run)
        .await
        .map_err(|_| format!("qemu-img {} timed out", args[0]))?
        .map_err(|e| format!("running qemu-img (install qemu-utils): {e}"))?;
    if !out.status.success() {
        return Err(format!("qemu-img {}: {}", args[0], String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}
