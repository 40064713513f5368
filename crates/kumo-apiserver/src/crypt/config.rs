//! Which stored kinds are encrypted, and with what: Kubernetes' EncryptionConfiguration
//! (`apiserver.config.k8s.io/v1`), with the `aesgcm` and `identity` providers. Without a file, Secrets are
//! encrypted with a key derived from the cluster secret.

use super::{AeadKey, ClusterSecret};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

/// One way to store a value.
#[derive(Clone, Debug)]
pub enum Provider {
    Identity,
    AesGcm { name: String, key: AeadKey },
}

/// The providers for the keys under some prefixes: the first writes, all of them read.
#[derive(Clone, Debug)]
pub struct Rule {
    pub prefixes: Vec<String>,
    pub providers: Vec<Provider>,
}

#[derive(Clone, Debug, Default)]
pub struct EncryptionConfig {
    pub rules: Vec<Rule>,
}

/// The name of the key derived from the cluster secret, as it appears in stored values.
pub const CLUSTER_KEY_NAME: &str = "kumo-cluster-secret";

impl EncryptionConfig {
    /// kumo's default: Secrets sealed with a key derived from the cluster secret.
    pub fn from_cluster_secret(secret: &ClusterSecret) -> Self {
        let key = Provider::AesGcm { name: CLUSTER_KEY_NAME.into(), key: secret.derive("secrets at rest") };
        EncryptionConfig {
            rules: vec![Rule { prefixes: vec!["/registry/core/secrets/".into()], providers: vec![key] }],
        }
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in the encryption configuration {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let doc: Value = serde_saphyr::from_str(text).context("not valid YAML")?;
        if doc["kind"] != "EncryptionConfiguration" {
            bail!("kind must be EncryptionConfiguration (apiVersion apiserver.config.k8s.io/v1)");
        }
        let mut rules = Vec::new();
        for (i, r) in doc["resources"].as_array().into_iter().flatten().enumerate() {
            let mut prefixes = Vec::new();
            for res in r["resources"].as_array().into_iter().flatten() {
                let res = res.as_str().unwrap_or_default();
                prefixes.push(prefix_of(res).with_context(|| format!("resources[{i}].resources: {res:?}"))?);
            }
            let mut providers = Vec::new();
            for (j, p) in r["providers"].as_array().into_iter().flatten().enumerate() {
                providers.push(provider(p).with_context(|| format!("resources[{i}].providers[{j}]"))?);
            }
            if prefixes.is_empty() || providers.is_empty() {
                bail!("resources[{i}] needs at least one resource and one provider");
            }
            rules.push(Rule { prefixes, providers });
        }
        if rules.is_empty() {
            bail!("resources is empty: list what to encrypt, e.g. secrets, with an aesgcm provider");
        }
        Ok(EncryptionConfig { rules })
    }

    /// The rule for a storage key: the first whose prefix matches, as Kubernetes picks the first listed.
    pub fn rule_for(&self, key: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.prefixes.iter().any(|p| key.starts_with(p.as_str())))
    }
}

/// The storage key prefix of a resource named as EncryptionConfiguration does (`secrets`, `widgets.example.com`,
/// `*.example.com`, `*.` for every core kind, `*.*` for everything).
fn prefix_of(res: &str) -> Result<String> {
    Ok(match res.split_once('.') {
        _ if res == "*.*" => "/registry/".into(),
        None if !res.is_empty() && res != "*" => format!("/registry/core/{res}/"),
        Some(("*", "")) => "/registry/core/".into(),
        Some(("*", group)) => format!("/registry/{group}/"),
        Some((plural, group)) if !plural.is_empty() && !plural.contains('*') => format!("/registry/{group}/{plural}/"),
        _ => bail!("expected a resource (secrets), resource.group, *.group, *. or *.*"),
    })
}

fn provider(p: &Value) -> Result<Provider> {
    let obj = p.as_object().context("a provider must be an object")?;
    let (name, body) = match obj.iter().next() {
        Some(x) if obj.len() == 1 => x,
        _ => bail!("a provider names exactly one of aesgcm, identity"),
    };
    match name.as_str() {
        "identity" => Ok(Provider::Identity),
        "aesgcm" => {
            let key = body["keys"].as_array().and_then(|k| k.first()).context("aesgcm.keys needs a key")?;
            let kname = key["name"].as_str().filter(|n| !n.is_empty()).context("aesgcm.keys[0].name is required")?;
            use base64::Engine;
            let secret = key["secret"].as_str().context("aesgcm.keys[0].secret is required (base64)")?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(secret.trim())
                .context("aesgcm.keys[0].secret is not valid base64")?;
            let key = AeadKey::new(&bytes).map_err(|e| anyhow::anyhow!("aesgcm.keys[0].secret: {e}"))?;
            Ok(Provider::AesGcm { name: kname.to_string(), key })
        }
        other @ ("aescbc" | "secretbox" | "kms") => {
            bail!("provider {other} is not supported by kumo: use aesgcm (or identity)")
        }
        other => bail!("unknown provider {other:?}: use aesgcm or identity"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_encryption_configuration() {
        let cfg = EncryptionConfig::parse(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets, widgets.example.com]\n  providers:\n  - aesgcm:\n      keys:\n      - name: key1\n        secret: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n  - identity: {}\n",
        )
        .unwrap();
        let r = cfg.rule_for("/registry/core/secrets/default/s").unwrap();
        assert!(matches!(&r.providers[0], Provider::AesGcm { name, .. } if name == "key1"));
        assert!(matches!(r.providers[1], Provider::Identity));
        assert!(cfg.rule_for("/registry/example.com/widgets/ns/w").is_some());
        assert!(cfg.rule_for("/registry/core/configmaps/default/c").is_none());
        for (bad, why) in [
            ("kind: Other\n", "EncryptionConfiguration"),
            ("kind: EncryptionConfiguration\nresources: []\n", "resources is empty"),
            (
                "kind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aescbc: {keys: []}\n",
                "aescbc is not supported",
            ),
            (
                "kind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aesgcm: {keys: [{name: k, secret: AAAA}]}\n",
                "16 or 32 bytes",
            ),
        ] {
            let err = format!("{:#}", EncryptionConfig::parse(bad).unwrap_err());
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
