//! What a served kind is: names, scope, subresources, printer columns and schema — the data the generic API
//! server needs to serve it.

use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupVersionResource {
    pub group: String,
    pub version: String,
    pub resource: String,
}

impl GroupVersionResource {
    pub fn new(group: &str, version: &str, resource: &str) -> Self {
        GroupVersionResource { group: group.into(), version: version.into(), resource: resource.into() }
    }
}

/// How `/scale` maps onto an object (a CRD's `subresources.scale`).
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleSpec {
    pub spec_replicas_path: String,
    pub status_replicas_path: String,
    pub label_selector_path: Option<String>,
}

/// One `kubectl get` column (a CRD's `additionalPrinterColumns`).
#[derive(Clone, Debug, PartialEq)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub json_path: String,
    pub priority: i64,
}

impl PrinterColumn {
    pub fn new(name: &str, type_: &str, json_path: &str, description: &str) -> Self {
        PrinterColumn {
            name: name.into(),
            type_: type_.into(),
            format: String::new(),
            description: description.into(),
            json_path: json_path.into(),
            priority: 0,
        }
    }
    pub fn wide(mut self) -> Self {
        self.priority = 1;
        self
    }
}

/// Which built-in Go type a kind corresponds to, for typed validation and strategic merge patch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builtin {
    Namespace,
    Node,
    CoreEvent,
    Event,
    Lease,
    ConfigMap,
    Secret,
    ServiceAccount,
    CustomResourceDefinition,
    CertificateSigningRequest,
    PersistentVolumeClaim,
    PersistentVolume,
    StorageClass,
    ControllerRevision,
    FlowSchema,
    PriorityLevelConfiguration,
}

/// A kind as served at one group/version.
#[derive(Clone, Debug)]
pub struct ResourceDef {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub list_kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// The version objects are stored at (differs from `version` for multi-version CRDs).
    pub storage_version: String,
    pub status_subresource: bool,
    pub scale: Option<ScaleSpec>,
    pub printer_columns: Vec<PrinterColumn>,
    /// The OpenAPI v3 schema of the whole object (a CRD's `openAPIV3Schema`), when one is known.
    pub schema: Option<Value>,
    pub builtin: Option<Builtin>,
    /// Unknown fields are refused (422, naming them) instead of pruned, whatever fieldValidation says.
    pub reject_unknown_fields: bool,
    /// Objects live under another group's keys (events.k8s.io Events are stored as core Events).
    pub storage_group: Option<String>,
    /// False for kinds that only make sense in a subset of verbs (none today); kept for discovery.
    pub verbs: Vec<&'static str>,
}

pub const ALL_VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

impl ResourceDef {
    pub fn gvr(&self) -> GroupVersionResource {
        GroupVersionResource::new(&self.group, &self.version, &self.plural)
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn storage_api_version(&self) -> String {
        if let Some(g) = &self.storage_group {
            return if g.is_empty() { self.storage_version.clone() } else { format!("{g}/{}", self.storage_version) };
        }
        if self.group.is_empty() {
            self.storage_version.clone()
        } else {
            format!("{}/{}", self.group, self.storage_version)
        }
    }

    /// Key prefix of every object of this kind in the store; independent of the served version so all
    /// versions of a kind share storage.
    pub fn key_prefix(&self) -> String {
        let group = self.storage_group.as_deref().unwrap_or(&self.group);
        let group = if group.is_empty() { "core" } else { group };
        format!("/registry/{group}/{}/", self.plural)
    }

    /// Key prefix of this kind in one namespace (or all when `namespace` is None / cluster-scoped).
    pub fn list_prefix(&self, namespace: Option<&str>) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("{}{ns}/", self.key_prefix()),
            _ => self.key_prefix(),
        }
    }

    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("{}{ns}/{name}", self.key_prefix()),
            _ => format!("{}{name}", self.key_prefix()),
        }
    }

    /// Group-qualified resource name used in messages, e.g. `virtualmachines.kubevirt.io`.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}
