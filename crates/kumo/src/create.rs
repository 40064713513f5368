//! `kumo create vm` (as `virtctl create vm`): prints a VirtualMachine manifest to apply, built from flags —
//! a flavor (`--instancetype`, `--preference`), volumes (`--volume-containerdisk`, `--volume-pvc`), the run
//! strategy. Nothing is sent to the cluster.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

#[derive(clap::Args, Debug, Default)]
pub struct CreateVmArgs {
    /// The VM's name (default: vm- and a random suffix).
    #[arg(long)]
    pub name: Option<String>,
    /// `[KIND/]NAME` of the instancetype; KIND is virtualmachineclusterinstancetype (the default) or
    /// virtualmachineinstancetype.
    #[arg(long)]
    pub instancetype: Option<String>,
    /// `[KIND/]NAME` of the preference; KIND is virtualmachineclusterpreference (the default) or
    /// virtualmachinepreference.
    #[arg(long)]
    pub preference: Option<String>,
    /// `src:IMAGE[,name:NAME]`: a containerDisk volume (repeatable; the first one boots).
    #[arg(long = "volume-containerdisk")]
    pub containerdisks: Vec<String>,
    /// `src:CLAIM[,name:NAME]`: a PersistentVolumeClaim volume (repeatable).
    #[arg(long = "volume-pvc")]
    pub pvcs: Vec<String>,
    #[arg(long, default_value = "Always")]
    pub run_strategy: String,
    /// Guest memory, when no instancetype gives it.
    #[arg(long)]
    pub memory: Option<String>,
    #[arg(long, default_value_t = 180)]
    pub termination_grace_period: u64,
}

/// `src:X,name:Y` → (X, Y or the default).
fn volume_flag(flag: &str, value: &str, default_name: String) -> Result<(String, String)> {
    let (mut src, mut name) = (None, None);
    for part in value.split(',') {
        match part.split_once(':') {
            Some(("src", v)) => src = Some(v.to_string()),
            Some(("name", v)) => name = Some(v.to_string()),
            _ => bail!("--{flag} {value:?}: expected src:VALUE[,name:NAME]"),
        }
    }
    let src = src.filter(|s| !s.is_empty()).with_context(|| format!("--{flag} {value:?}: src: is required"))?;
    Ok((src, name.unwrap_or(default_name)))
}

/// `[KIND/]NAME` → the VM's reference.
fn flavor_flag(value: &str, namespaced_kind: &str, cluster_kind: &str) -> Result<Value> {
    let (kind, name) = match value.split_once('/') {
        Some((k, n)) => (Some(k), n),
        None => (None, value),
    };
    let kind = match kind.map(str::to_ascii_lowercase).as_deref() {
        None => None,
        Some(k) if k == namespaced_kind.to_ascii_lowercase() => Some(namespaced_kind),
        Some(k) if k == cluster_kind.to_ascii_lowercase() => Some(cluster_kind),
        Some(k) => bail!(
            "{value:?}: unknown kind {k:?} (use {} or {})",
            namespaced_kind.to_lowercase(),
            cluster_kind.to_lowercase()
        ),
    };
    let mut r = json!({"name": name});
    if let Some(k) = kind {
        r["kind"] = json!(k);
    }
    Ok(r)
}

/// The manifest the flags describe.
pub fn manifest(a: &CreateVmArgs, random: &str) -> Result<Value> {
    use kumo_api::instancetype as it;
    let name = a.name.clone().unwrap_or_else(|| format!("vm-{random}"));
    let mut volumes = Vec::new();
    for (i, v) in a.containerdisks.iter().enumerate() {
        let (image, vol) = volume_flag("volume-containerdisk", v, format!("{name}-containerdisk-{i}"))?;
        volumes.push(json!({"name": vol, "containerDisk": {"image": image}}));
    }
    for (i, v) in a.pvcs.iter().enumerate() {
        let (claim, vol) = volume_flag("volume-pvc", v, format!("{name}-pvc-{i}"))?;
        volumes.push(json!({"name": vol, "persistentVolumeClaim": {"claimName": claim}}));
    }
    let mut domain = json!({"devices": {}});
    if a.instancetype.is_none() {
        domain["memory"] = json!({"guest": a.memory.clone().unwrap_or_else(|| "512Mi".into())});
    } else if a.memory.is_some() {
        bail!("--memory conflicts with --instancetype: the instancetype gives the memory");
    }
    let mut spec = json!({"runStrategy": a.run_strategy, "template": {"spec": {"domain": domain,
        "terminationGracePeriodSeconds": a.termination_grace_period, "volumes": volumes}}});
    if let Some(v) = &a.instancetype {
        spec["instancetype"] = flavor_flag(v, it::INSTANCETYPE, it::CLUSTER_INSTANCETYPE)?;
    }
    if let Some(v) = &a.preference {
        spec["preference"] = flavor_flag(v, it::PREFERENCE, it::CLUSTER_PREFERENCE)?;
    }
    Ok(json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": name}, "spec": spec}))
}

/// Prints the manifest as YAML.
pub fn create_vm(a: &CreateVmArgs) -> Result<()> {
    let random: String = {
        use rand::Rng;
        let mut rng = rand::rng();
        (0..5).map(|_| (b'a' + rng.random_range(0..26u8)) as char).collect()
    };
    let m = manifest(a, &random)?;
    print!("{}", serde_saphyr::to_string(&m).context("writing the manifest as YAML")?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_make_virtctls_manifest() {
        let a = CreateVmArgs {
            instancetype: Some("virtualmachineinstancetype/small".into()),
            preference: Some("linux".into()),
            containerdisks: vec!["src:quay.io/kumo/test-guest:latest".into()],
            pvcs: vec!["src:data,name:disk2".into()],
            run_strategy: "Always".into(),
            termination_grace_period: 180,
            ..Default::default()
        };
        let m = manifest(&a, "abcde").unwrap();
        assert_eq!(m["metadata"]["name"], "vm-abcde");
        assert_eq!(m["spec"]["instancetype"], json!({"name": "small", "kind": "VirtualMachineInstancetype"}));
        assert_eq!(m["spec"]["preference"], json!({"name": "linux"}));
        let vols = &m["spec"]["template"]["spec"]["volumes"];
        assert_eq!(
            vols[0],
            json!({"name": "vm-abcde-containerdisk-0", "containerDisk": {"image": "quay.io/kumo/test-guest:latest"}})
        );
        assert_eq!(vols[1], json!({"name": "disk2", "persistentVolumeClaim": {"claimName": "data"}}));
        assert!(m["spec"]["template"]["spec"]["domain"].get("memory").is_none(), "the instancetype gives it");
        let yaml = serde_saphyr::to_string(&m).unwrap();
        assert!(yaml.contains("kind: VirtualMachine"), "{yaml}");
    }

    #[test]
    fn bad_flags_say_what_is_wrong() {
        let bad = |a: CreateVmArgs| manifest(&a, "x").unwrap_err().to_string();
        assert!(bad(CreateVmArgs { containerdisks: vec!["image:x".into()], ..Default::default() }).contains("src:"));
        assert!(
            bad(CreateVmArgs { instancetype: Some("flavor/x".into()), ..Default::default() }).contains("unknown kind")
        );
        let both =
            CreateVmArgs { instancetype: Some("u1.small".into()), memory: Some("1Gi".into()), ..Default::default() };
        assert!(bad(both).contains("--memory conflicts"));
    }
}
