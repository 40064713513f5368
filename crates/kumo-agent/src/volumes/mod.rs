//! Persistent volumes on this host: where a volume's disk image lives ([`VolumeDirs`]), making and removing
//! the images of the volumes this node keeps ([`keeper`]), and finding the disk behind a VMI's claim
//! ([`attach`]).
//!
//! A volume kumo provisioned is a directory named after its volume handle, under this node's volume directory
//! (`kumo.dev/local`) or the shared one every node mounts (`kumo.dev/shared`), holding one image:
//! `disk.qcow2` (volumeMode Filesystem) or `disk.raw` (Block). A volume an administrator made with a `local`
//! or `hostPath` source is used as KubeVirt uses one: the file itself, or `disk.img` in the directory.

pub mod attach;
mod grow;
pub mod import;
pub mod keeper;
mod snapshots;
pub(crate) mod upload;

use k8s_openapi::api::core::v1::PersistentVolume;
use kumo_api::provisioning as prov;
use std::path::{Path, PathBuf};

/// Where this node keeps volumes.
#[derive(Clone, Debug)]
pub struct VolumeDirs {
    /// `kumo.dev/local` volumes.
    pub local: PathBuf,
    /// `kumo.dev/shared` volumes: the same directory on every node that has it (None: this node has none).
    pub shared: Option<PathBuf>,
}

impl VolumeDirs {
    /// The directory holding a kumo-provisioned volume's image.
    pub fn dir_of(&self, pv: &PersistentVolume) -> Result<PathBuf, String> {
        let (driver, handle) = prov::csi_of(pv).ok_or_else(|| "not a volume kumo provisioned".to_string())?;
        // The handle names a directory: nothing that could climb out of the base.
        if handle.is_empty() || handle.contains('/') || handle.starts_with('.') {
            return Err(format!("volume handle {handle:?} is not a plain name"));
        }
        let base = match driver {
            prov::LOCAL => &self.local,
            _ => self.shared.as_ref().ok_or_else(|| {
                "this node has no shared volume directory: start its agent with --shared-volume-dir".to_string()
            })?,
        };
        Ok(base.join(handle))
    }

    /// The disk image of a kumo-provisioned volume.
    pub fn image_of(&self, pv: &PersistentVolume) -> Result<PathBuf, String> {
        Ok(self.dir_of(pv)?.join(prov::image_file(pv)))
    }
}

/// The disk file of a volume an administrator made (`local` or `hostPath`): the path itself when it is a file,
/// else KubeVirt's `disk.img` inside it.
pub fn static_image(pv: &PersistentVolume) -> Option<PathBuf> {
    let spec = pv.spec.as_ref()?;
    let path = spec.local.as_ref().map(|l| &l.path).or(spec.host_path.as_ref().map(|h| &h.path))?;
    let path = Path::new(path);
    Some(if path.is_dir() { path.join("disk.img") } else { path.to_path_buf() })
}

/// The size of the filesystem holding `dir`, in bytes.
pub fn filesystem_bytes(dir: &Path) -> Result<u64, String> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| format!("statvfs {}: {e}", dir.display()))?;
    Ok(st.blocks() as u64 * st.fragment_size() as u64)
}
