//! KubeVirt's VirtualMachinePool (`pool.kubevirt.io/v1beta1`, and `v1alpha1` still served; short name `vmpool`):
//! `replicas` VirtualMachines made from a template, named `<pool>-<index>`, with KubeVirt's scale-in, update and
//! autohealing strategies, and kumo's Deployment-grade rollout on top.
//!
//! kumo's additions are all under a `kumo` key, so that a reader sees whose they are: `spec.kumo` (`maxSurge`,
//! `minReadySeconds`, `progressDeadlineSeconds`, `revisionHistoryLimit`) and `status.kumo` (`observedGeneration`,
//! `updatedReplicas`, `currentRevision`, `updateRevision`). The `Progressing` condition is kumo's too.

#[cfg(test)]
mod tests;

use crate::kubevirt::object::custom_kind;
use crate::kubevirt::{col, condition_list, crd_in, Condition, VirtualMachineSpec};
use crate::status::Cause;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub const GROUP: &str = "pool.kubevirt.io";
pub const VERSION: &str = "v1beta1";
/// Served too, with the same schema (stored as v1beta1).
pub const OLD_VERSION: &str = "v1alpha1";
pub const KIND: &str = "VirtualMachinePool";
/// KubeVirt's finalizer: on the pool while it has VMs, so its VMs go before it does.
pub const FINALIZER: &str = "pool.kubevirt.io/finalizer";
/// On each of a pool's VMs (and, through the template, its VMIs): the pool's name.
pub const POOL_LABEL: &str = "kubevirt.io/vmpool";
/// On each of a pool's VMs: the revision (ControllerRevision name) of the template it was made from.
pub const REVISION_LABEL: &str = "kubevirt.io/vmpool-revision-name";
/// On a pool's ControllerRevisions: which pool they belong to (for `kumo rollout history`).
pub const REVISION_POOL_LABEL: &str = POOL_LABEL;
/// KubeVirt's defaults.
pub const DEFAULT_STARTUP_FAILURE_THRESHOLD: u32 = 3;
pub const DEFAULT_MIN_FAILING_TO_START: &str = "5m";
/// Deployment's defaults for kumo's rollout fields.
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: i64 = 600;
pub const DEFAULT_REVISION_HISTORY_LIMIT: usize = 10;

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct VirtualMachinePool {
    pub metadata: ObjectMeta,
    pub spec: VirtualMachinePoolSpec,
    pub status: Option<VirtualMachinePoolStatus>,
}

custom_kind!(VirtualMachinePool, "VirtualMachinePool", "virtualmachinepools", GROUP, VERSION);

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VirtualMachinePoolSpec {
    /// 1 when unset, as in KubeVirt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    pub selector: LabelSelector,
    pub virtual_machine_template: VirtualMachineTemplateSpec,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name_generation: Option<NameGeneration>,
    /// A number or a percentage of `replicas` (rounded down); 100% when unset, as in KubeVirt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_in_strategy: Option<ScaleInStrategy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<UpdateStrategy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autohealing: Option<Autohealing>,
    /// kumo's rollout settings (not in KubeVirt's schema).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kumo: Option<KumoRollout>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VirtualMachineTemplateSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMeta>,
    pub spec: VirtualMachineSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NameGeneration {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub append_index_to_config_map_refs: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub append_index_to_secret_refs: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Empty {}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ScaleInStrategy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unmanaged: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opportunistic: Option<OpportunisticScaleIn>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proactive: Option<ProactiveScaleIn>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct OpportunisticScaleIn {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_preservation: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ProactiveScaleIn {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selection_policy: Option<SelectionPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_preservation: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SelectionPolicy {
    /// AscendingOrder, DescendingOrder (by index), Newest, Oldest (by creation) or Random (the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sort_policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selectors: Option<Selectors>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Selectors {
    /// Matched against the VM's labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
    /// Matched against the labels of the node the VM's VMI runs on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_selector_requirement_matcher: Option<Vec<NodeSelectorRequirement>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeSelectorRequirement {
    pub key: String,
    pub operator: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct UpdateStrategy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unmanaged: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opportunistic: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proactive: Option<ProactiveUpdate>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ProactiveUpdate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selection_policy: Option<SelectionPolicy>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Autohealing {
    /// Consecutive start failures (the VM's `status.startFailure.consecutiveFailCount`) before the VM is replaced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_up_failure_threshold: Option<u32>,
    /// How long a VM must have been failing to start (not Ready) before it is replaced (a Go duration).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_failing_to_start_duration: Option<String>,
}

/// kumo's Deployment-grade rollout (a proactive update that never drops below capacity).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct KumoRollout {
    /// VMs (a number or a percentage of `replicas`, rounded up) made beyond `replicas` during an update. With a
    /// surge, an update makes new VMs and removes old ones once new ones are Ready; without one (the default),
    /// VMs are updated in place (KubeVirt's way), `maxUnavailable` at a time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<Value>,
    /// How long a new VM must have been Ready before it counts as available.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_ready_seconds: Option<i64>,
    /// After this long without progress, the rollout is reported stalled (`Progressing=False`). 600 when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress_deadline_seconds: Option<i64>,
    /// How many old revisions are kept for `kumo rollout undo`. 10 when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision_history_limit: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VirtualMachinePoolStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
    /// kumo's rollout status (not in KubeVirt's schema).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kumo: Option<KumoRolloutStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct KumoRolloutStatus {
    /// The pool generation this status describes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// VMs made from the current template.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_replicas: Option<i32>,
    /// Updated VMs Ready for at least minReadySeconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_replicas: Option<i32>,
    /// The revision every VM had when the last rollout completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    /// The revision of the current template.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_revision: Option<String>,
}

impl VirtualMachinePool {
    pub fn replicas(&self) -> i32 {
        self.spec.replicas.unwrap_or(1).max(0)
    }

    pub fn rollout(&self) -> KumoRollout {
        self.spec.kumo.clone().unwrap_or_default()
    }

    /// How many VMs may be unready during an update (KubeVirt: 100% when unset).
    pub fn max_unavailable(&self) -> i32 {
        let v = self.spec.max_unavailable.clone().unwrap_or(json!("100%"));
        scaled(&v, self.replicas(), false).unwrap_or(self.replicas())
    }

    /// How many VMs an update may make beyond `replicas` (kumo; 0 when unset).
    pub fn max_surge(&self) -> i32 {
        self.rollout().max_surge.map(|v| scaled(&v, self.replicas(), true).unwrap_or(0)).unwrap_or(0)
    }
}

/// An int-or-percentage against `total`: percentages round up (`up`) or down, as Deployment's do.
pub fn scaled(v: &Value, total: i32, up: bool) -> Option<i32> {
    match v {
        Value::Number(n) => n.as_i64().and_then(|n| i32::try_from(n).ok()),
        Value::String(s) => {
            let pct: i64 = s.strip_suffix('%')?.parse().ok()?;
            let x = pct * i64::from(total);
            let r = if up { (x + 99) / 100 } else { x / 100 };
            i32::try_from(r).ok()
        }
        _ => None,
    }
}

/// Parses a Go duration as KubeVirt writes them (`5m`, `1h30m`, `90s`, `1m30.5s`).
pub fn go_duration(s: &str) -> Option<std::time::Duration> {
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        if c == 'm' && chars.peek() == Some(&'s') {
            unit.push(chars.next()?);
        }
        let n: f64 = num.parse().ok()?;
        num.clear();
        total += n * match unit.as_str() {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        any = true;
    }
    (num.is_empty() && any).then(|| std::time::Duration::from_secs_f64(total))
}

/// KubeVirt's webhook checks, and kumo's for its rollout fields.
pub fn validate(kind: &str, obj: &Value) -> Vec<Cause> {
    if kind != KIND {
        return vec![];
    }
    let mut c = crate::kubevirt::validate_selector(
        obj.pointer("/spec/selector"),
        obj.pointer("/spec/virtualMachineTemplate/spec/template/metadata/labels"),
        "spec",
        "spec.virtualMachineTemplate.spec.template.metadata.labels",
    );
    let pool: VirtualMachinePoolSpec = match obj.get("spec").map(|s| serde_json::from_value(s.clone())) {
        Some(Ok(s)) => s,
        Some(Err(e)) => return vec![Cause::invalid("spec", format!("Invalid value: {e}"))],
        None => return vec![Cause::required("spec")],
    };
    let mut vm = obj.pointer("/spec/virtualMachineTemplate").cloned().unwrap_or(json!({}));
    if let Some(o) = vm.as_object_mut() {
        o.remove("metadata");
    }
    c.extend(
        crate::kubevirt::validate("VirtualMachine", &vm)
            .into_iter()
            .map(|cause| cause.prefixed("spec.virtualMachineTemplate")),
    );
    for (path, v) in [("spec.maxUnavailable", &pool.max_unavailable), ("spec.kumo.maxSurge", &pool_surge(&pool))] {
        if let Some(v) = v {
            if scaled(v, 100, true).is_none_or(|n| n < 0) {
                c.push(Cause::invalid(
                    path,
                    format!("Invalid value: {v}: must be a non-negative number or percentage"),
                ));
            }
        }
    }
    let zero = |v: &Option<Value>| v.as_ref().is_some_and(|v| scaled(v, 100, true) == Some(0));
    if zero(&pool.max_unavailable) && (pool_surge(&pool).is_none() || zero(&pool_surge(&pool))) {
        c.push(Cause::invalid(
            "spec.maxUnavailable",
            "may not be 0 when spec.kumo.maxSurge is 0 too: the update could never make progress",
        ));
    }
    if let Some(a) = &pool.autohealing {
        if a.start_up_failure_threshold == Some(0) {
            c.push(Cause::invalid("spec.autohealing.startUpFailureThreshold", "must be at least 1"));
        }
        if let Some(d) = &a.min_failing_to_start_duration {
            if go_duration(d).is_none() {
                c.push(Cause::invalid(
                    "spec.autohealing.minFailingToStartDuration",
                    format!("Invalid value: \"{d}\": not a duration (e.g. 5m, 90s)"),
                ));
            }
        }
    }
    let strategies = |u: bool, o: bool, p: bool| [u, o, p].iter().filter(|x| **x).count();
    if let Some(s) = &pool.scale_in_strategy {
        if strategies(s.unmanaged.is_some(), s.opportunistic.is_some(), s.proactive.is_some()) > 1 {
            c.push(Cause::invalid("spec.scaleInStrategy", "at most one of unmanaged, opportunistic, proactive"));
        }
        let preservation = s
            .proactive
            .as_ref()
            .and_then(|p| p.state_preservation.as_ref())
            .or(s.opportunistic.as_ref().and_then(|o| o.state_preservation.as_ref()));
        if preservation.is_some_and(|p| p == "Online") {
            c.push(Cause::invalid(
                "spec.scaleInStrategy.proactive.statePreservation",
                "Unsupported value: \"Online\": kumo preserves VMs stopped (Offline), not suspended in memory",
            ));
        }
    }
    if let Some(s) = &pool.update_strategy {
        if strategies(s.unmanaged.is_some(), s.opportunistic.is_some(), s.proactive.is_some()) > 1 {
            c.push(Cause::invalid("spec.updateStrategy", "at most one of unmanaged, opportunistic, proactive"));
        }
    }
    c
}

fn pool_surge(p: &VirtualMachinePoolSpec) -> Option<Value> {
    p.kumo.as_ref().and_then(|k| k.max_surge.clone())
}

fn int_or_string(description: &str) -> Value {
    json!({"x-kubernetes-int-or-string": true, "description": description})
}

fn selection_policy_schema() -> Value {
    json!({"type": "object", "properties": {
        "sortPolicy": {"type": "string", "enum": ["AscendingOrder", "DescendingOrder", "Newest", "Oldest", "Random"]},
        "selectors": {"type": "object", "properties": {
            "labelSelector": crate::kubevirt::label_selector_schema(),
            "nodeSelectorRequirementMatcher": {"type": "array", "items": {"type": "object",
                "required": ["key", "operator"], "properties": {"key": {"type": "string"},
                "operator": {"type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]},
                "values": {"type": "array", "items": {"type": "string"}}}}}}}}})
}

fn preservation() -> Value {
    json!({"type": "string", "enum": ["Disabled", "Offline", "Online"]})
}

/// The schema both served versions share.
fn schema() -> Value {
    let empty = json!({"type": "object"});
    let spec = json!({"type": "object", "required": ["selector", "virtualMachineTemplate"], "properties": {
        "replicas": {"type": "integer", "format": "int32", "minimum": 0, "description": "Number of VMs; 1 when unset."},
        "selector": crate::kubevirt::label_selector_schema(),
        "virtualMachineTemplate": {"type": "object", "required": ["spec"], "properties": {
            "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "spec": crate::kubevirt::vm_spec_schema()}},
        "paused": {"type": "boolean"},
        "nameGeneration": {"type": "object", "properties": {
            "appendIndexToConfigMapRefs": {"type": "boolean"}, "appendIndexToSecretRefs": {"type": "boolean"}}},
        "maxUnavailable": int_or_string("VMs (or a percentage) that may be unready during an update; 100% when unset."),
        "scaleInStrategy": {"type": "object", "properties": {
            "unmanaged": empty,
            "opportunistic": {"type": "object", "properties": {"statePreservation": preservation()}},
            "proactive": {"type": "object", "properties": {
                "selectionPolicy": selection_policy_schema(), "statePreservation": preservation()}}}},
        "updateStrategy": {"type": "object", "properties": {
            "unmanaged": empty, "opportunistic": empty,
            "proactive": {"type": "object", "properties": {"selectionPolicy": selection_policy_schema()}}}},
        "autohealing": {"type": "object", "properties": {
            "startUpFailureThreshold": {"type": "integer", "minimum": 1},
            "minFailingToStartDuration": {"type": "string"}}},
        "kumo": {"type": "object", "description": "kumo's rollout settings (not part of KubeVirt's API).",
            "properties": {
            "maxSurge": int_or_string("VMs (or a percentage) made beyond replicas during an update; 0 when unset."),
            "minReadySeconds": {"type": "integer", "minimum": 0},
            "progressDeadlineSeconds": {"type": "integer", "minimum": 1},
            "revisionHistoryLimit": {"type": "integer", "minimum": 0}}},
    }});
    let status = json!({"type": "object", "properties": {
        "replicas": {"type": "integer", "format": "int32"},
        "readyReplicas": {"type": "integer", "format": "int32"},
        "labelSelector": {"type": "string"},
        "conditions": condition_list(),
        "kumo": {"type": "object", "description": "kumo's rollout status (not part of KubeVirt's API).",
            "properties": {
            "observedGeneration": {"type": "integer"}, "updatedReplicas": {"type": "integer"},
            "availableReplicas": {"type": "integer"},
            "currentRevision": {"type": "string"}, "updateRevision": {"type": "string"}}},
    }});
    json!({"type": "object", "required": ["spec"],
        "description": "VirtualMachinePool keeps a number of VirtualMachines made from a template.",
        "properties": {"spec": spec, "status": status}})
}

/// The CRD: v1beta1 (stored) and v1alpha1, each with the status and scale subresources.
pub fn crd() -> Value {
    let mut crd = crd_in(
        GROUP,
        VERSION,
        KIND,
        "virtualmachinepools",
        &["vmpool", "vmpools"],
        schema(),
        vec![
            col("Desired", "integer", ".spec.replicas", 0),
            col("Current", "integer", ".status.replicas", 0),
            col("Ready", "integer", ".status.readyReplicas", 0),
            col("Up-To-Date", "integer", ".status.kumo.updatedReplicas", 0),
            col("Age", "date", ".metadata.creationTimestamp", 0),
        ],
    );
    let beta = &mut crd["spec"]["versions"][0];
    beta["subresources"]["scale"] = json!({"specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas", "labelSelectorPath": ".status.labelSelector"});
    let mut alpha = beta.clone();
    alpha["name"] = json!(OLD_VERSION);
    alpha["storage"] = json!(false);
    crd["spec"]["versions"].as_array_mut().expect("versions").push(alpha);
    crd
}
