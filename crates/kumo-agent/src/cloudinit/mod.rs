//! cloud-init seed images for KubeVirt's `cloudInitNoCloud` and `cloudInitConfigDrive` volumes, written in Rust.
//!
//! Start at [`resolve_source`], which turns a volume source (inline, base64 or Secret) into user and network data;
//! fill a [`CloudInitData`]; then [`nocloud_iso`] or [`configdrive_iso`] gives the bytes of an ISO 9660 image
//! (with a Joliet tree, so names keep their case, `-` and `_`) that the agent attaches to the guest (as a disk or CD-ROM).
//! [`IsoBuilder`] in [`iso9660`] is the image writer both use.

pub mod iso9660;
mod source;

pub use iso9660::{IsoBuilder, IsoError};
pub use source::{resolve_source, SecretData, SecretLookup, UserAndNetworkData};

/// Volume label cloud-init's NoCloud datasource looks for (it also accepts `CIDATA`).
pub const NOCLOUD_LABEL: &str = "cidata";
/// Volume label of an OpenStack config drive.
pub const CONFIGDRIVE_LABEL: &str = "config-2";
/// OpenStack metadata versions written on a config drive; every one holds the same files (stored once).
const CONFIGDRIVE_VERSIONS: [&str; 2] = ["latest", "2012-08-10"];

/// What goes into a seed image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudInitData {
    pub user_data: Option<Vec<u8>>,
    pub network_data: Option<Vec<u8>>,
    /// cloud-init's instance-id; a new value makes cloud-init run its per-instance modules again.
    pub instance_id: String,
    pub hostname: String,
}

/// A NoCloud seed (label `cidata`): `user-data` (empty if unset), `meta-data` (`instance-id`, `local-hostname`,
/// as JSON, which is YAML) and `network-config` if there is network data.
pub fn nocloud_iso(d: &CloudInitData) -> Vec<u8> {
    let meta = NoCloudMeta { instance_id: &d.instance_id, local_hostname: non_empty(&d.hostname) };
    let mut files = vec![
        ("user-data".to_string(), d.user_data.clone().unwrap_or_default()),
        ("meta-data".to_string(), json_file(&meta)),
    ];
    if let Some(network) = &d.network_data {
        files.push(("network-config".to_string(), network.clone()));
    }
    image(NOCLOUD_LABEL, files)
}

/// A config drive (label `config-2`): `openstack/{latest,2012-08-10}/` each with `meta_data.json`, `user_data`
/// (empty if unset) and `network_data.json` if there is network data.
///
/// `meta_data.json` carries `uuid` (cloud-init's instance-id on this datasource: `instance_id` itself when it is a
/// UUID, else a UUID derived from it), `instance_id`, `hostname` and `name`.
pub fn configdrive_iso(d: &CloudInitData) -> Vec<u8> {
    let uuid = instance_uuid(&d.instance_id);
    let hostname = non_empty(&d.hostname);
    let meta = json_file(&ConfigDriveMeta { uuid: &uuid, instance_id: &d.instance_id, hostname, name: hostname });
    let mut files = Vec::new();
    for version in CONFIGDRIVE_VERSIONS {
        files.push((format!("openstack/{version}/meta_data.json"), meta.clone()));
        files.push((format!("openstack/{version}/user_data"), d.user_data.clone().unwrap_or_default()));
        if let Some(network) = &d.network_data {
            files.push((format!("openstack/{version}/network_data.json"), network.clone()));
        }
    }
    image(CONFIGDRIVE_LABEL, files)
}

fn image(label: &str, files: Vec<(String, Vec<u8>)>) -> Vec<u8> {
    let mut iso = IsoBuilder::new(label);
    for (path, data) in files {
        // The paths are fixed here and valid; only a file over 4 GiB could fail.
        iso.add_file(&path, data).expect("cloud-init seed file fits an ISO 9660 image");
    }
    iso.build()
}

/// NoCloud `meta-data` (KubeVirt writes the same keys, as JSON).
#[derive(serde::Serialize)]
#[serde(rename_all = "kebab-case")]
struct NoCloudMeta<'a> {
    instance_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    local_hostname: Option<&'a str>,
}

/// OpenStack `meta_data.json`; cloud-init takes its instance-id from `uuid` and its hostname from `hostname`.
#[derive(serde::Serialize)]
struct ConfigDriveMeta<'a> {
    uuid: &'a str,
    instance_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

fn json_file(value: &impl serde::Serialize) -> Vec<u8> {
    let mut out = serde_json::to_vec(value).expect("JSON values serialize");
    out.push(b'\n');
    out
}

/// `id` if it is a UUID, else a stable UUID (version 8) made from its SHA-256.
fn instance_uuid(id: &str) -> String {
    use sha2::Digest;
    if let Ok(uuid) = uuid::Uuid::parse_str(id) {
        return uuid.hyphenated().to_string();
    }
    let digest = sha2::Sha256::digest(id.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid().hyphenated().to_string()
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_guest;
