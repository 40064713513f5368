//! containerDisks: pulling VM disk images from OCI registries and preparing per-VM disks.
//!
//! A containerDisk is an ordinary OCI image whose one layer holds `disk/<name>` (a qcow2 or raw image, owned by
//! uid 107 in KubeVirt's images). The agent resolves the image reference ([`Reference`]), fetches the manifest
//! and layers from a registry or its configured mirrors ([`RegistryClient`], [`RegistryConfig`]), extracts the
//! disk once per manifest digest into a read-only base image ([`ImageCache::disk_for`] → [`CachedDisk`]), and
//! gives each VM a qcow2 overlay on top of it ([`create_overlay`]). Start at [`ImageCache::disk_for`].
//!
//! Modules: [`mod@reference`] (parsing `quay.io/ns/img:tag@sha256:...`), [`registry`] (the Distribution API
//! client), [`cache`] (the per-digest base image store), [`disk`] (`qemu-img`: info, overlays, empty disks,
//! Kubernetes quantities). HTTPS uses rustls with the ring provider and the system CA bundle; hosts listed in
//! [`RegistryConfig::insecure`] are reached over plain HTTP.

pub mod cache;
pub mod disk;
pub mod reference;
pub mod registry;
pub(crate) mod transport;

#[cfg(test)]
mod tests;

pub use cache::{CachedDisk, ImageCache, PullPolicy};
pub use disk::{create_empty_disk, create_overlay, image_info, ImageInfo};
pub use reference::{Reference, ReferenceError};
pub use registry::{Descriptor, Endpoint, ImageManifest, Pulled, RegistryClient, RegistryConfig};
