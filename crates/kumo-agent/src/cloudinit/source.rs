//! Turning a KubeVirt `cloudInitNoCloud` / `cloudInitConfigDrive` volume source into user and network data.
//!
//! Each of the two parts comes from at most one of: an inline string (`userData`), base64 (`userDataBase64`),
//! or a Secret (`secretRef`, read under the key `userdata`, else `userData`); likewise `networkData`,
//! `networkDataBase64`, `networkDataSecretRef` (keys `networkdata`, `networkData`). As in KubeVirt, empty strings
//! count as unset, base64 may be wrapped across lines, and at least one part must end up with data.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use base64::Engine;
use k8s_openapi::api::core::v1::LocalObjectReference;
use kumo_api::kubevirt::CloudInitSource;

/// A Secret's data: key → bytes.
pub type SecretData = BTreeMap<String, Vec<u8>>;
/// Looks a Secret up by name (in the VMI's namespace).
pub type SecretLookup<'a> = dyn Fn(&str) -> Result<SecretData> + 'a;
/// `(user_data, network_data)`.
pub type UserAndNetworkData = (Option<Vec<u8>>, Option<Vec<u8>>);

/// One part (user data or network data): its three possible sources, with their field names, and the keys
/// its Secret may hold it under.
struct Part<'a> {
    raw: (&'static str, Option<&'a str>),
    base64: (&'static str, Option<&'a str>),
    secret_ref: (&'static str, Option<&'a LocalObjectReference>),
    keys: [&'static str; 2],
}

enum Resolved {
    Data(Vec<u8>),
    Unset,
    /// The referenced Secret exists but has none of the part's keys (an error only if nothing else has data).
    MissingKey(String),
}

/// Resolves a `cloudInitNoCloud` or `cloudInitConfigDrive` volume source into `(user_data, network_data)`.
///
/// `secret` maps a Secret name (from `secretRef.name` / `networkDataSecretRef.name`) to its data.
/// Errors name the offending field: two sources for one part, invalid base64, a reference without a name, a
/// failed Secret lookup, or no data at all.
pub fn resolve_source(source: &CloudInitSource, secret: &SecretLookup) -> Result<UserAndNetworkData> {
    let user = Part {
        raw: ("userData", source.user_data.as_deref()),
        base64: ("userDataBase64", source.user_data_base64.as_deref()),
        secret_ref: ("secretRef", source.secret_ref.as_ref()),
        keys: ["userdata", "userData"],
    };
    let network = Part {
        raw: ("networkData", source.network_data.as_deref()),
        base64: ("networkDataBase64", source.network_data_base64.as_deref()),
        secret_ref: ("networkDataSecretRef", source.network_data_secret_ref.as_ref()),
        keys: ["networkdata", "networkData"],
    };
    let user = resolve_part(&user, secret)?;
    let network = resolve_part(&network, secret)?;
    match (user, network) {
        (Resolved::Data(u), n) => Ok((Some(u), data(n))),
        (u, Resolved::Data(n)) => Ok((data(u), Some(n))),
        (Resolved::MissingKey(why), _) | (_, Resolved::MissingKey(why)) => bail!(why),
        _ => bail!(
            "cloud-init volume source has no data: set one of userData, userDataBase64, secretRef, networkData, \
             networkDataBase64 or networkDataSecretRef"
        ),
    }
}

fn data(r: Resolved) -> Option<Vec<u8>> {
    match r {
        Resolved::Data(d) => Some(d),
        _ => None,
    }
}

fn resolve_part(part: &Part, secret: &SecretLookup) -> Result<Resolved> {
    // Empty strings count as unset, as in KubeVirt.
    let raw = part.raw.1.filter(|s| !s.is_empty());
    let b64 = part.base64.1.filter(|s| !s.is_empty());
    let secret_name = match part.secret_ref.1 {
        None => None,
        Some(reference) if !reference.name.is_empty() => Some(reference.name.as_str()),
        Some(_) => bail!("{}.name must be a non-empty string", part.secret_ref.0),
    };
    let set: Vec<&str> =
        [(raw.is_some(), part.raw.0), (b64.is_some(), part.base64.0), (secret_name.is_some(), part.secret_ref.0)]
            .into_iter()
            .filter_map(|(present, name)| present.then_some(name))
            .collect();
    if set.len() > 1 {
        bail!("{} are mutually exclusive: set only one of them", set.join(" and "));
    }
    if let Some(raw) = raw {
        return Ok(Resolved::Data(raw.as_bytes().to_vec()));
    }
    if let Some(b64) = b64 {
        let compact: Vec<u8> = b64.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(compact)
            .with_context(|| format!("{} is not valid base64", part.base64.0))?;
        return Ok(if decoded.is_empty() { Resolved::Unset } else { Resolved::Data(decoded) });
    }
    if let Some(name) = secret_name {
        let field = part.secret_ref.0;
        let values = secret(name).with_context(|| format!("reading Secret {name:?} named by {field}"))?;
        return Ok(match part.keys.iter().find_map(|k| values.get(*k)) {
            Some(value) if !value.is_empty() => Resolved::Data(value.clone()),
            Some(_) => Resolved::Unset,
            None => Resolved::MissingKey(format!(
                "Secret {name:?} named by {field} has neither a {:?} nor a {:?} key",
                part.keys[0], part.keys[1]
            )),
        });
    }
    Ok(Resolved::Unset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn secrets(name: &str) -> Result<SecretData> {
        match name {
            "lower" => Ok([("userdata", "#cloud-config\nfrom: lower\n"), ("networkdata", "version: 2\n")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect()),
            "camel" => Ok([("userData".to_string(), b"camel user".to_vec())].into_iter().collect()),
            "netonly" => Ok([("networkData".to_string(), b"net only".to_vec())].into_iter().collect()),
            _ => bail!("secrets {name:?} not found"),
        }
    }

    fn resolve(v: Value) -> Result<UserAndNetworkData> {
        resolve_source(&serde_json::from_value(v)?, &secrets)
    }

    fn text(v: Option<Vec<u8>>) -> Option<String> {
        v.map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn inline_and_base64() {
        let (u, n) = resolve(json!({"userData": "#cloud-config\n", "networkDataBase64": "dmVyc2lvbjogMgo="})).unwrap();
        assert_eq!(text(u).as_deref(), Some("#cloud-config\n"));
        assert_eq!(text(n).as_deref(), Some("version: 2\n"));
        // Wrapped base64 (as `base64` prints it) is accepted, like Go's decoder does.
        let (u, n) = resolve(json!({"userDataBase64": "I2Nsb3VkLWNv\nbmZpZwo=\n"})).unwrap();
        assert_eq!(text(u).as_deref(), Some("#cloud-config\n"));
        assert_eq!(n, None);
    }

    #[test]
    fn secret_refs_use_kubevirt_keys() {
        let (u, n) =
            resolve(json!({"secretRef": {"name": "lower"}, "networkDataSecretRef": {"name": "lower"}})).unwrap();
        assert_eq!(text(u).as_deref(), Some("#cloud-config\nfrom: lower\n"));
        assert_eq!(text(n).as_deref(), Some("version: 2\n"));
        let (u, n) = resolve(json!({"secretRef": {"name": "camel"}})).unwrap();
        assert_eq!((text(u).as_deref(), n), (Some("camel user"), None));
        let (u, n) = resolve(json!({"userData": "x", "networkDataSecretRef": {"name": "netonly"}})).unwrap();
        assert_eq!((text(u).as_deref(), text(n).as_deref()), (Some("x"), Some("net only")));
        // A Secret shared by both refs that only holds network data is fine (KubeVirt tolerates it) ...
        let (u, n) =
            resolve(json!({"secretRef": {"name": "netonly"}, "networkDataSecretRef": {"name": "netonly"}})).unwrap();
        assert_eq!((u, text(n).as_deref()), (None, Some("net only")));
        // ... but not when nothing else yields data.
        let err = resolve(json!({"secretRef": {"name": "netonly"}})).unwrap_err().to_string();
        assert!(err.contains("\"userdata\"") && err.contains("secretRef"), "{err}");
    }

    #[test]
    fn errors_name_the_field() {
        let err = resolve(json!({"userData": "a", "userDataBase64": "YQ=="})).unwrap_err().to_string();
        assert!(err.contains("userData and userDataBase64"), "{err}");
        let err = resolve(json!({"networkData": "a", "networkDataSecretRef": {"name": "lower"}})).unwrap_err();
        assert!(err.to_string().contains("networkData and networkDataSecretRef"), "{err}");
        let err = format!("{:#}", resolve(json!({"userDataBase64": "not base64!"})).unwrap_err());
        assert!(err.contains("userDataBase64 is not valid base64"), "{err}");
        let err = format!("{:#}", resolve(json!({"networkDataBase64": "YQ="})).unwrap_err());
        assert!(err.contains("networkDataBase64"), "{err}");
        let err = format!("{:#}", resolve(json!({"secretRef": {"name": "absent"}})).unwrap_err());
        assert!(err.contains("\"absent\"") && err.contains("secretRef") && err.contains("not found"), "{err}");
        let err = resolve(json!({"secretRef": {}})).unwrap_err().to_string();
        assert!(err.contains("secretRef.name"), "{err}");
        // A value of the wrong type does not read as a volume source at all.
        let err = resolve(json!({"userData": 5})).unwrap_err().to_string();
        assert!(err.contains("invalid type: integer `5`, expected a string"), "{err}");
        let err = resolve(json!({"userData": ""})).unwrap_err().to_string();
        assert!(err.contains("no data"), "{err}");
        assert!(resolve(json!("userData")).is_err());
    }
}
