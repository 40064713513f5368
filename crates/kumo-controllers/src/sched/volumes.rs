//! A VMI's PersistentVolumeClaims in scheduling, as kube-scheduler's VolumeBinding plugin weighs a Pod's:
//! a claim that is missing, being deleted, or unbound in a class that binds at once keeps the VMI off every node;
//! a bound claim's volume may pin it to some nodes (its node affinity); a claim whose class waits for its first
//! consumer is provisioned on the node chosen for the VMI, so the VMI waits for that before it is bound; and a
//! volume kumo provisioned is used once its node made the image.

use super::Cluster;
use crate::binder::{class_name, volume_name, SELECTED_NODE};
use k8s_openapi::api::core::v1::{Node, NodeSelector};
use kube::ResourceExt;
use kumo_api::kubevirt::VirtualMachineInstance;
use kumo_api::provisioning as prov;

/// What a VMI's claims require of a node.
#[derive(Default)]
pub(crate) struct Volumes<'a> {
    /// Node affinity of the volumes bound to its claims.
    pins: Vec<&'a NodeSelector>,
    /// The node already selected for a claim still waiting for its volume.
    selected: Option<&'a str>,
    /// Claims waiting for their first consumer (and no node selected yet).
    pub(crate) waiting: Vec<String>,
    /// A bound volume whose image its node has not made yet.
    unmade: bool,
    /// The largest `local` volume still to be made on the chosen node (bytes).
    local_bytes: u64,
}

/// The requirements of `vmi`'s claims, or why no node can do (kube-scheduler's words).
pub(crate) fn resolve<'a>(vmi: &VirtualMachineInstance, cluster: &Cluster<'a>) -> Result<Volumes<'a>, String> {
    let ns = vmi.metadata.namespace.as_deref().unwrap_or_default();
    let mut out = Volumes::default();
    for name in vmi.claim_names() {
        let claim = cluster
            .claims
            .iter()
            .find(|c| c.metadata.namespace.as_deref() == Some(ns) && c.name_any() == name)
            .ok_or_else(|| format!("persistentvolumeclaim \"{name}\" not found"))?;
        if claim.metadata.deletion_timestamp.is_some() {
            return Err(format!("persistentvolumeclaim \"{name}\" is being deleted"));
        }
        let bound = volume_name(claim);
        if !bound.is_empty() {
            let volume = cluster.volumes.iter().find(|v| v.name_any() == bound);
            let pin = volume.and_then(|v| v.spec.as_ref()?.node_affinity.as_ref()?.required.as_ref());
            out.pins.extend(pin);
            match volume.and_then(|v| prov::state(v)) {
                Some(prov::FAILED) => {
                    let why = volume.and_then(|v| v.annotations().get(prov::VOLUME_MESSAGE)).cloned();
                    return Err(format!(
                        "persistentvolume \"{bound}\" of claim \"{name}\" could not be made: {}",
                        why.unwrap_or_default()
                    ));
                }
                Some(state) if state != prov::READY => out.unmade = true,
                _ => {}
            }
            continue;
        }
        let class = cluster.classes.iter().find(|c| c.name_any() == class_name(claim));
        if class.is_none_or(|c| c.volume_binding_mode.as_deref() != Some("WaitForFirstConsumer")) {
            return Err("pod has unbound immediate PersistentVolumeClaims".into());
        }
        if class.is_some_and(|c| c.provisioner == prov::LOCAL) {
            out.local_bytes = out.local_bytes.max(kumo_api::storage::requested_bytes(claim).unwrap_or(0));
        }
        match claim.annotations().get(SELECTED_NODE) {
            Some(node) => out.selected = Some(node.as_str()),
            None => out.waiting.push(name.to_string()),
        }
    }
    Ok(out)
}

impl Volumes<'_> {
    /// Why `node` cannot serve these volumes, if it cannot.
    pub(crate) fn filter(&self, node: &Node) -> Option<&'static str> {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        if self.selected.is_some_and(|s| s != name) {
            return Some("node(s) did not match the node selected for the pod's volumes");
        }
        // kube-scheduler's words when a CSI driver's published capacity is too small.
        if prov::node_volume_bytes(node).is_some_and(|have| have < self.local_bytes) {
            return Some("node(s) did not have enough free storage");
        }
        let reachable = |sel: &&NodeSelector| sel.node_selector_terms.iter().any(|t| super::term_matches(t, node));
        (!self.pins.iter().all(reachable)).then_some("node(s) had volume node affinity conflict")
    }

    /// Whether some claim still waits for a volume on the node picked (the VMI is bound once it is there).
    pub(crate) fn pending(&self) -> bool {
        !self.waiting.is_empty() || self.selected.is_some() || self.unmade
    }
}
