//! Disk files through `qemu-img` (Debian `qemu-utils`): inspecting images, copy-on-write qcow2 overlays on top
//! of shared base images, empty disks, and Kubernetes quantities (`10Gi`) for their sizes.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

/// Format of disks made by [`create_empty_disk`].
pub const EMPTY_DISK_FORMAT: &str = "qcow2";
/// Base image formats a containerDisk may carry (what KubeVirt accepts).
pub const BASE_FORMATS: [&str; 2] = ["qcow2", "raw"];
const QEMU_IMG_TIMEOUT: Duration = Duration::from_secs(120);

/// What `qemu-img info` says about an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// `qcow2`, `raw`, `vmdk`, ...
    pub format: String,
    /// Size the guest sees, in bytes.
    pub virtual_size: u64,
    /// The backing file recorded in the image header, if any.
    pub backing_file: Option<String>,
    /// A qcow2 external data file, if any.
    pub data_file: Option<String>,
    /// Whether the image is encrypted (it cannot be used without a secret kumo does not have).
    pub encrypted: bool,
    /// How many internal snapshots the image holds.
    pub snapshots: usize,
}

/// Runs `qemu-img info --output=json -U` on `path`. `-U` allows inspecting an image a running QEMU has open.
pub async fn image_info(path: &Path) -> Result<ImageInfo> {
    #[derive(Deserialize)]
    struct Info {
        format: String,
        #[serde(rename = "virtual-size")]
        virtual_size: u64,
        #[serde(rename = "backing-filename")]
        backing_filename: Option<String>,
        #[serde(rename = "format-specific")]
        format_specific: Option<serde_json::Value>,
        #[serde(default)]
        encrypted: bool,
        #[serde(default)]
        snapshots: Vec<serde_json::Value>,
    }
    let path_arg = path.to_str().ok_or_else(|| anyhow!("{} is not valid UTF-8", path.display()))?;
    let out = qemu_img(&["info", "--output=json", "-U", path_arg])
        .await
        .with_context(|| format!("{} is not a readable disk image", path.display()))?;
    let info: Info = serde_json::from_str(&out).context("parsing qemu-img info output")?;
    let data_file = info
        .format_specific
        .as_ref()
        .and_then(|v| v.pointer("/data/data-file"))
        .and_then(|v| v.as_str())
        .map(str::to_string);
    Ok(ImageInfo {
        format: info.format,
        virtual_size: info.virtual_size,
        backing_file: info.backing_filename,
        data_file,
        encrypted: info.encrypted,
        snapshots: info.snapshots.len(),
    })
}

/// Creates `overlay` as a qcow2 copy-on-write layer over `base` (`qemu-img create -f qcow2 -F <fmt> -b <base>`).
/// The base path is made absolute, so the overlay does not depend on the working directory. Refuses to replace
/// an existing `overlay` (it may hold a guest's writes).
pub async fn create_overlay(base: &Path, base_format: &str, overlay: &Path) -> Result<()> {
    if !BASE_FORMATS.contains(&base_format) {
        bail!("unsupported base image format {base_format:?} (expected one of {BASE_FORMATS:?})");
    }
    let base = std::fs::canonicalize(base).with_context(|| format!("base image {}", base.display()))?;
    if overlay.exists() {
        bail!("overlay {} already exists", overlay.display());
    }
    let base = base.to_str().ok_or_else(|| anyhow!("{} is not valid UTF-8", base.display()))?;
    let overlay_arg = overlay.to_str().ok_or_else(|| anyhow!("{} is not valid UTF-8", overlay.display()))?;
    qemu_img(&["create", "-q", "-f", "qcow2", "-F", base_format, "-b", base, overlay_arg])
        .await
        .with_context(|| format!("creating overlay {} on {base}", overlay.display()))?;
    Ok(())
}

/// Creates an empty disk of `bytes` (rounded up to 512-byte sectors) as **qcow2**, like KubeVirt's
/// `emptyDisk`: it grows on demand on any filesystem, whereas a sparse raw file depends on the filesystem
/// keeping holes and is silently inflated by naive copies; qcow2 also leaves room for snapshots. Refuses to
/// replace an existing file.
pub async fn create_empty_disk(path: &Path, bytes: u64) -> Result<()> {
    if bytes == 0 {
        bail!("empty disk {} must have a non-zero size", path.display());
    }
    if path.exists() {
        bail!("disk {} already exists", path.display());
    }
    let size = bytes.div_ceil(512).checked_mul(512).ok_or_else(|| anyhow!("disk size {bytes} is too large"))?;
    let path_arg = path.to_str().ok_or_else(|| anyhow!("{} is not valid UTF-8", path.display()))?;
    qemu_img(&["create", "-q", "-f", EMPTY_DISK_FORMAT, path_arg, &size.to_string()])
        .await
        .with_context(|| format!("creating empty disk {}", path.display()))?;
    Ok(())
}

async fn qemu_img(args: &[&str]) -> Result<String> {
    let child = tokio::process::Command::new("qemu-img")
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(QEMU_IMG_TIMEOUT, child).await {
        Err(_) => bail!("qemu-img {} timed out after {QEMU_IMG_TIMEOUT:?}", args[0]),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("qemu-img not found: install it (Debian package qemu-utils)")
        }
        Ok(r) => r.context("running qemu-img")?,
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut msg = stderr.trim().trim_start_matches("qemu-img: ");
        // "Could not open '<path>': <reason>": the caller's context already names the file.
        if let Some(rest) = msg.strip_prefix("Could not open '") {
            msg = rest.split_once("': ").map_or(msg, |(_, reason)| reason);
        }
        bail!("qemu-img {}: {msg}", args[0]);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn empty_disks_and_overlays() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        create_empty_disk(&base, 10 << 20).await.unwrap();
        let info = image_info(&base).await.unwrap();
        assert_eq!((info.format.as_str(), info.virtual_size), ("qcow2", 10 << 20));
        assert!(create_empty_disk(&base, 1 << 20).await.unwrap_err().to_string().contains("already exists"));

        let odd = dir.path().join("odd.qcow2");
        create_empty_disk(&odd, 1000).await.unwrap();
        assert_eq!(image_info(&odd).await.unwrap().virtual_size, 1024);

        let overlay = dir.path().join("overlay.qcow2");
        create_overlay(&base, "qcow2", &overlay).await.unwrap();
        let info = image_info(&overlay).await.unwrap();
        assert_eq!(info.format, "qcow2");
        assert_eq!(info.virtual_size, 10 << 20);
        assert_eq!(info.backing_file.as_deref(), Some(base.to_str().unwrap()));
        assert!(create_overlay(&base, "qcow2", &overlay).await.is_err());
        assert!(create_overlay(&base, "vmdk", &dir.path().join("o2")).await.is_err());
        assert!(create_overlay(&dir.path().join("missing"), "raw", &dir.path().join("o3")).await.is_err());

        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"QFI\xfb\0\0\0\x63").unwrap();
        let err = format!("{:#}", image_info(&junk).await.unwrap_err());
        assert!(err.contains("not a readable disk image"), "{err}");
    }
}
