//! The built-in kinds every kumo control plane serves.

use crate::resource::{Builtin, PrinterColumn, ResourceDef, ALL_VERBS};

fn age() -> PrinterColumn {
    let mut c = PrinterColumn::new("Age", "date", ".metadata.creationTimestamp", "Time since creation");
    c.format = String::new();
    c
}

#[allow(clippy::too_many_arguments)]
fn def(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
    short_names: &[&str],
    builtin: Builtin,
    columns: Vec<PrinterColumn>,
) -> ResourceDef {
    ResourceDef {
        group: group.into(),
        version: version.into(),
        kind: kind.into(),
        list_kind: format!("{kind}List"),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        namespaced,
        short_names: short_names.iter().map(|s| s.to_string()).collect(),
        categories: vec![],
        storage_version: version.into(),
        status_subresource: false,
        scale: None,
        printer_columns: columns,
        schema: None,
        builtin: Some(builtin),
        storage_group: None,
        reject_unknown_fields: false,
        verbs: ALL_VERBS.to_vec(),
    }
}

/// Every built-in kind, at every version served.
pub fn builtin_resources() -> Vec<ResourceDef> {
    let mut namespace = def(
        "",
        "v1",
        "Namespace",
        "namespaces",
        false,
        &["ns"],
        Builtin::Namespace,
        vec![PrinterColumn::new("Status", "string", ".status.phase", "The phase of the namespace"), age()],
    );
    namespace.status_subresource = true;
    let mut node = def(
        "",
        "v1",
        "Node",
        "nodes",
        false,
        &["no"],
        Builtin::Node,
        vec![
            PrinterColumn::new("Status", "string", "nodeReady(.)", "Whether the node is Ready"),
            PrinterColumn::new("Roles", "string", "nodeRoles(.)", "Node roles"),
            age(),
            PrinterColumn::new("Version", "string", ".status.nodeInfo.kubeletVersion", "Agent version"),
            PrinterColumn::new("Internal-IP", "string", ".status.addresses[?(@.type==\"InternalIP\")].address", "")
                .wide(),
        ],
    );
    node.status_subresource = true;
    let core_event = def(
        "",
        "v1",
        "Event",
        "events",
        true,
        &["ev"],
        Builtin::CoreEvent,
        vec![
            PrinterColumn::new("Last Seen", "date", "eventLastSeen(.)", "Time of the last occurrence"),
            PrinterColumn::new("Type", "string", ".type", ""),
            PrinterColumn::new("Reason", "string", ".reason", ""),
            PrinterColumn::new("Object", "string", "eventObject(.involvedObject)", ""),
            PrinterColumn::new("Message", "string", ".message", ""),
        ],
    );
    let mut event = def(
        "events.k8s.io",
        "v1",
        "Event",
        "events",
        true,
        &["ev"],
        Builtin::Event,
        vec![
            PrinterColumn::new("Last Seen", "date", "eventLastSeen(.)", "Time of the last occurrence"),
            PrinterColumn::new("Type", "string", ".type", ""),
            PrinterColumn::new("Reason", "string", ".reason", ""),
            PrinterColumn::new("Object", "string", "eventObject(.regarding)", ""),
            PrinterColumn::new("Message", "string", ".note", ""),
        ],
    );
    event.storage_group = Some(String::new());
    let lease = def(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        true,
        &[],
        Builtin::Lease,
        vec![PrinterColumn::new("Holder", "string", ".spec.holderIdentity", ""), age()],
    );
    let configmap = def(
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        true,
        &["cm"],
        Builtin::ConfigMap,
        vec![PrinterColumn::new("Data", "integer", "count(.data,.binaryData)", "Number of keys"), age()],
    );
    let secret = def(
        "",
        "v1",
        "Secret",
        "secrets",
        true,
        &[],
        Builtin::Secret,
        vec![
            PrinterColumn::new("Type", "string", ".type", ""),
            PrinterColumn::new("Data", "integer", "count(.data)", "Number of keys"),
            age(),
        ],
    );
    let sa = def(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        true,
        &["sa"],
        Builtin::ServiceAccount,
        vec![PrinterColumn::new("Secrets", "integer", "count(.secrets)", ""), age()],
    );
    let mut crd = def(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
        &["crd", "crds"],
        Builtin::CustomResourceDefinition,
        vec![PrinterColumn::new("Created At", "date", ".metadata.creationTimestamp", "")],
    );
    crd.status_subresource = true;
    crd.categories = vec!["api-extensions".into()];
    let mut csr = def(
        "certificates.k8s.io",
        "v1",
        "CertificateSigningRequest",
        "certificatesigningrequests",
        false,
        &["csr"],
        Builtin::CertificateSigningRequest,
        vec![
            age(),
            PrinterColumn::new("SignerName", "string", ".spec.signerName", ""),
            PrinterColumn::new("Requestor", "string", ".spec.username", ""),
            PrinterColumn::new("RequestedDuration", "string", ".spec.expirationSeconds", ""),
            PrinterColumn::new("Condition", "string", ".status.conditions[*].type", ""),
        ],
    );
    csr.status_subresource = true;
    let mut defs = vec![namespace, node, core_event, event, lease, configmap, secret, sa, crd, csr];
    defs.extend(storage_resources());
    defs.extend(flowcontrol_resources());
    // Revisions of what a controller was given (kumo keeps a VM's instancetype and preference in them).
    defs.push(def(
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        true,
        &[],
        Builtin::ControllerRevision,
        vec![PrinterColumn::new("Revision", "integer", ".revision", ""), age()],
    ));
    defs
}

/// PersistentVolumeClaims, PersistentVolumes and StorageClasses, with the columns `kubectl get pvc,pv,sc` prints.
fn storage_resources() -> Vec<ResourceDef> {
    // A claim shows the modes it got (its status), a volume those it offers.
    let modes = |at: &str| PrinterColumn::new("Access Modes", "string", &format!("accessModes({at})"), "");
    let attrs =
        || PrinterColumn::new("VolumeAttributesClass", "string", "orUnset(.spec.volumeAttributesClassName)", "");
    let volume_mode = || PrinterColumn::new("VolumeMode", "string", ".spec.volumeMode", "").wide();
    let mut pvc = def(
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        true,
        &["pvc"],
        Builtin::PersistentVolumeClaim,
        vec![
            PrinterColumn::new("Status", "string", ".status.phase", ""),
            PrinterColumn::new("Volume", "string", "orEmpty(.spec.volumeName)", ""),
            PrinterColumn::new("Capacity", "string", "orEmpty(.status.capacity.storage)", ""),
            modes(".status.accessModes"),
            PrinterColumn::new("StorageClass", "string", "orEmpty(.spec.storageClassName)", ""),
            attrs(),
            age(),
            volume_mode(),
        ],
    );
    pvc.status_subresource = true;
    let mut pv = def(
        "",
        "v1",
        "PersistentVolume",
        "persistentvolumes",
        false,
        &["pv"],
        Builtin::PersistentVolume,
        vec![
            PrinterColumn::new("Capacity", "string", "orEmpty(.spec.capacity.storage)", ""),
            modes(".spec.accessModes"),
            PrinterColumn::new("Reclaim Policy", "string", ".spec.persistentVolumeReclaimPolicy", ""),
            PrinterColumn::new("Status", "string", ".status.phase", ""),
            PrinterColumn::new("Claim", "string", "claimRef(.spec.claimRef)", ""),
            PrinterColumn::new("StorageClass", "string", "orEmpty(.spec.storageClassName)", ""),
            attrs(),
            PrinterColumn::new("Reason", "string", "orEmpty(.status.reason)", ""),
            age(),
            volume_mode(),
        ],
    );
    pv.status_subresource = true;
    let sc = def(
        "storage.k8s.io",
        "v1",
        "StorageClass",
        "storageclasses",
        false,
        &["sc"],
        Builtin::StorageClass,
        vec![
            PrinterColumn::new("Provisioner", "string", ".provisioner", ""),
            PrinterColumn::new("ReclaimPolicy", "string", ".reclaimPolicy", ""),
            PrinterColumn::new("VolumeBindingMode", "string", ".volumeBindingMode", ""),
            PrinterColumn::new("AllowVolumeExpansion", "string", "orFalse(.allowVolumeExpansion)", ""),
            age(),
        ],
    );
    vec![pvc, pv, sc]
}

/// API Priority and Fairness' configuration (`flowcontrol.apiserver.k8s.io/v1`).
pub fn flowcontrol_resources() -> Vec<ResourceDef> {
    let group = crate::flowcontrol::GROUP;
    let mut flow_schema = def(
        group,
        "v1",
        "FlowSchema",
        "flowschemas",
        false,
        &[],
        Builtin::FlowSchema,
        vec![
            PrinterColumn::new("PriorityLevel", "string", ".spec.priorityLevelConfiguration.name", ""),
            PrinterColumn::new("MatchingPrecedence", "integer", ".spec.matchingPrecedence", ""),
            PrinterColumn::new("DistinguisherMethod", "string", ".spec.distinguisherMethod.type", ""),
            age(),
        ],
    );
    flow_schema.status_subresource = true;
    let mut level = def(
        group,
        "v1",
        "PriorityLevelConfiguration",
        "prioritylevelconfigurations",
        false,
        &[],
        Builtin::PriorityLevelConfiguration,
        vec![
            PrinterColumn::new("Type", "string", ".spec.type", ""),
            PrinterColumn::new("NominalConcurrencyShares", "integer", ".spec.limited.nominalConcurrencyShares", ""),
            PrinterColumn::new("Queues", "integer", ".spec.limited.limitResponse.queuing.queues", ""),
            PrinterColumn::new("HandSize", "integer", ".spec.limited.limitResponse.queuing.handSize", ""),
            PrinterColumn::new(
                "QueueLengthLimit",
                "integer",
                ".spec.limited.limitResponse.queuing.queueLengthLimit",
                "",
            ),
            age(),
        ],
    );
    level.status_subresource = true;
    vec![flow_schema, level]
}

/// Namespaces that always exist.
pub const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plural_and_kind_are_unique_per_group_version() {
        let defs = builtin_resources();
        let mut seen = std::collections::HashSet::new();
        for d in &defs {
            assert!(seen.insert((d.group.clone(), d.version.clone(), d.plural.clone())), "{}", d.plural);
        }
        assert!(defs.iter().any(|d| d.kind == "Namespace" && !d.namespaced));
        assert!(defs.iter().any(|d| d.group == "events.k8s.io" && d.namespaced));
    }
}
