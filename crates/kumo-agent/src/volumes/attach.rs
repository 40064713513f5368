//! The disk behind a VMI's PersistentVolumeClaim: the claim (it must be bound), its volume (made, when kumo
//! provisioned it), and the image file with its format.

use super::VolumeDirs;
use crate::qemu::DiskFormat;
use crate::vmi::prepare::PrepareError;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::{Api, Client};
use kumo_api::provisioning as prov;
use std::path::PathBuf;

/// A claim's disk image.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimDisk {
    pub path: PathBuf,
    pub format: DiskFormat,
}

fn not_ready(message: String) -> PrepareError {
    PrepareError::new("VolumeNotReady", message)
}

/// Looks up `claim` in `ns` and the image of its volume.
pub async fn claim_disk(client: &Client, dirs: &VolumeDirs, ns: &str, claim: &str) -> Result<ClaimDisk, PrepareError> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let got = claims
        .get_opt(claim)
        .await
        .map_err(|e| not_ready(format!("reading PersistentVolumeClaim {ns}/{claim}: {e}")))?
        .ok_or_else(|| not_ready(format!("PersistentVolumeClaim {ns}/{claim} not found")))?;
    let volume = got.spec.as_ref().and_then(|s| s.volume_name.clone()).filter(|v| !v.is_empty());
    let volume = volume.ok_or_else(|| not_ready(format!("PersistentVolumeClaim {ns}/{claim} is not bound yet")))?;
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&volume)
        .await
        .map_err(|e| not_ready(format!("reading PersistentVolume {volume}: {e}")))?;
    disk_of(dirs, &pv).map_err(|m| not_ready(format!("claim {claim}: volume {volume}: {m}")))
}

/// The image of `pv` on this node.
pub fn disk_of(dirs: &VolumeDirs, pv: &PersistentVolume) -> Result<ClaimDisk, String> {
    if let Some(path) = super::static_image(pv) {
        if !path.exists() {
            return Err(format!("{} does not exist on this node", path.display()));
        }
        return Ok(ClaimDisk { path, format: DiskFormat::Raw });
    }
    match prov::state(pv) {
        None => return Err("kumo cannot attach this kind of volume (only kumo's, local and hostPath)".into()),
        Some(prov::READY) => {}
        Some(state) => return Err(format!("its image is not made yet ({state})")),
    }
    let path = dirs.image_of(pv)?;
    if !path.exists() {
        // Never made afresh here: an empty disk in place of a lost one would hide the loss.
        return Err(format!("its image {} is missing on this node", path.display()));
    }
    let format = if prov::is_block(pv) { DiskFormat::Raw } else { DiskFormat::Qcow2 };
    Ok(ClaimDisk { path, format })
}
