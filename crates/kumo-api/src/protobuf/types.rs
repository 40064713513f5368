//! Descriptor tables for the kinds [`super::decode`] understands.
//!
//! Field numbers come from Kubernetes' `generated.proto` files (k8s.io/api core/v1, coordination/v1, events/v1;
//! k8s.io/apimachinery meta/v1, runtime, api/resource, util/intstr). JSON names and the `omitempty` choice
//! follow the Go struct tags, so a decoded object looks like what Go's `encoding/json` would print for it:
//!
//! * [`omit`] marks a scalar, map or list field tagged `omitempty` that is not a pointer in Go: the protobuf
//!   encoder always writes it, and JSON drops it when it is `""`, `0`, `false` or empty.
//! * [`keep`] marks everything else: pointer fields (on the wire only when set, printed even when zero),
//!   fields without `omitempty`, and nested structs and times (Go never omits a struct; a zero time is `null`).

/// How one field is encoded on the wire and printed in JSON.
#[derive(Clone, Copy, Debug)]
pub(super) enum Kind {
    /// `string` → JSON string.
    String,
    /// `bytes` → base64 JSON string.
    Bytes,
    /// `int32` varint → JSON number.
    Int32,
    /// `int64` varint → JSON number.
    Int64,
    /// `bool` varint → JSON bool.
    Bool,
    /// A nested message → JSON object.
    Message(&'static Msg),
    /// `map<string, string>` → JSON object of strings.
    Map,
    /// `map<string, bytes>` → JSON object of base64 strings.
    MapBytes,
    /// `map<string, resource.Quantity>` → JSON object of quantity strings.
    MapQuantity,
    /// `repeated string` → JSON array of strings.
    RepeatedString,
    /// `repeated` message → JSON array of objects.
    RepeatedMessage(&'static Msg),
    /// `meta/v1.Time` (seconds = 1, nanos = 2) → RFC 3339 at second precision, or `null` when zero.
    Time,
    /// `meta/v1.MicroTime` → RFC 3339 with six fractional digits, or `null` when zero.
    MicroTime,
    /// `resource.Quantity` (string = 1) → JSON string.
    Quantity,
    /// A message whose field 1 holds raw JSON (`runtime.RawExtension`, `meta/v1.FieldsV1`) → that JSON.
    RawJson,
    /// `intstr.IntOrString` (type = 1, intVal = 2, strVal = 3) → JSON number or string.
    IntOrString,
}

/// One field of a message.
#[derive(Debug)]
pub(super) struct Field {
    pub num: u32,
    pub name: &'static str,
    pub kind: Kind,
    /// Drop the field from the JSON when its value is empty (Go `omitempty` on a non-pointer scalar, map or list).
    pub omit_empty: bool,
}

/// A message type: its name (for error messages) and fields.
#[derive(Debug)]
pub(super) struct Msg {
    pub name: &'static str,
    pub fields: &'static [Field],
}

/// A field printed whenever it is on the wire.
const fn keep(num: u32, name: &'static str, kind: Kind) -> Field {
    Field { num, name, kind, omit_empty: false }
}

/// A field dropped from the JSON when empty.
const fn omit(num: u32, name: &'static str, kind: Kind) -> Field {
    Field { num, name, kind, omit_empty: true }
}

use Kind::*;

// ---- k8s.io/apimachinery/pkg/apis/meta/v1 ----

pub(super) static OBJECT_META: Msg = Msg {
    name: "ObjectMeta",
    fields: &[
        omit(1, "name", String),
        omit(2, "generateName", String),
        omit(3, "namespace", String),
        omit(4, "selfLink", String),
        omit(5, "uid", String),
        omit(6, "resourceVersion", String),
        omit(7, "generation", Int64),
        keep(8, "creationTimestamp", Time),
        keep(9, "deletionTimestamp", Time),
        keep(10, "deletionGracePeriodSeconds", Int64),
        omit(11, "labels", Map),
        omit(12, "annotations", Map),
        omit(13, "ownerReferences", RepeatedMessage(&OWNER_REFERENCE)),
        omit(14, "finalizers", RepeatedString),
        omit(17, "managedFields", RepeatedMessage(&MANAGED_FIELDS_ENTRY)),
    ],
};

static OWNER_REFERENCE: Msg = Msg {
    name: "OwnerReference",
    fields: &[
        keep(1, "kind", String),
        keep(3, "name", String),
        keep(4, "uid", String),
        keep(5, "apiVersion", String),
        keep(6, "controller", Bool),
        keep(7, "blockOwnerDeletion", Bool),
    ],
};

static MANAGED_FIELDS_ENTRY: Msg = Msg {
    name: "ManagedFieldsEntry",
    fields: &[
        omit(1, "manager", String),
        omit(2, "operation", String),
        omit(3, "apiVersion", String),
        keep(4, "time", Time),
        omit(6, "fieldsType", String),
        keep(7, "fieldsV1", RawJson),
        omit(8, "subresource", String),
    ],
};

static CONDITION: Msg = Msg {
    name: "Condition",
    fields: &[
        keep(1, "type", String),
        keep(2, "status", String),
        omit(3, "observedGeneration", Int64),
        keep(4, "lastTransitionTime", Time),
        keep(5, "reason", String),
        keep(6, "message", String),
    ],
};

// ---- k8s.io/api/core/v1 ----

static CONFIG_MAP: Msg = Msg {
    name: "ConfigMap",
    fields: &[
        keep(1, "metadata", Message(&OBJECT_META)),
        omit(2, "data", Map),
        omit(3, "binaryData", MapBytes),
        keep(4, "immutable", Bool),
    ],
};

static SECRET: Msg = Msg {
    name: "Secret",
    fields: &[
        keep(1, "metadata", Message(&OBJECT_META)),
        omit(2, "data", MapBytes),
        omit(3, "type", String),
        omit(4, "stringData", Map),
        keep(5, "immutable", Bool),
    ],
};

static NAMESPACE: Msg = Msg {
    name: "Namespace",
    fields: &[
        keep(1, "metadata", Message(&OBJECT_META)),
        keep(2, "spec", Message(&NAMESPACE_SPEC)),
        keep(3, "status", Message(&NAMESPACE_STATUS)),
    ],
};

static NAMESPACE_SPEC: Msg = Msg { name: "NamespaceSpec", fields: &[omit(1, "finalizers", RepeatedString)] };

static NAMESPACE_STATUS: Msg = Msg {
    name: "NamespaceStatus",
    fields: &[omit(1, "phase", String), omit(2, "conditions", RepeatedMessage(&NAMESPACE_CONDITION))],
};

static NAMESPACE_CONDITION: Msg = Msg {
    name: "NamespaceCondition",
    fields: &[
        keep(1, "type", String),
        keep(2, "status", String),
        keep(4, "lastTransitionTime", Time),
        omit(5, "reason", String),
        omit(6, "message", String),
    ],
};

static SERVICE_ACCOUNT: Msg = Msg {
    name: "ServiceAccount",
    fields: &[
        keep(1, "metadata", Message(&OBJECT_META)),
        omit(2, "secrets", RepeatedMessage(&OBJECT_REFERENCE)),
        omit(3, "imagePullSecrets", RepeatedMessage(&LOCAL_OBJECT_REFERENCE)),
        keep(4, "automountServiceAccountToken", Bool),
    ],
};

static OBJECT_REFERENCE: Msg = Msg {
    name: "ObjectReference",
    fields: &[
        omit(1, "kind", String),
        omit(2, "namespace", String),
        omit(3, "name", String),
        omit(4, "uid", String),
        omit(5, "apiVersion", String),
        omit(6, "resourceVersion", String),
        omit(7, "fieldPath", String),
    ],
};

static LOCAL_OBJECT_REFERENCE: Msg = Msg { name: "LocalObjectReference", fields: &[omit(1, "name", String)] };

static CORE_EVENT: Msg = Msg {
    name: "Event",
    fields: &[
        keep(1, "metadata", Message(&OBJECT_META)),
        keep(2, "involvedObject", Message(&OBJECT_REFERENCE)),
        omit(3, "reason", String),
        omit(4, "message", String),
        keep(5, "source", Message(&EVENT_SOURCE)),
        keep(6, "firstTimestamp", Time),
        keep(7, "lastTimestamp", Time),
        omit(8, "count", Int32),
        omit(9, "type", String),
        keep(10, "eventTime", MicroTime),
        keep(11, "series", Message(&CORE_EVENT_SERIES)),
        omit(12, "action", String),
        keep(13, "related", Message(&OBJECT_REFERENCE)),
        keep(14, "reportingComponent", String),
        keep(15, "reportingInstance", String),
    ],
};

static EVENT_SOURCE: Msg =
    Msg { name: "EventSource", fields: &[omit(1, "component", String), omit(2, "host", String)] };

static CORE_EVENT_SERIES: Msg =
    Msg { name: "EventSeries", fields: &[omit(1, "count", Int32), keep(2, "lastObservedTime", MicroTime)] };

static SERVICE: Msg = Msg {
    name: "Service",
    fields: &[
        keep(1, "metadata", Message(&OBJECT_META)),
        keep(2, "spec", Message(&SERVICE_SPEC)),
        keep(3, "status", Message(&SERVICE_STATUS)),
    ],
};

static SERVICE_SPEC: Msg = Msg {
    name: "ServiceSpec",
    fields: &[
        omit(1, "ports", RepeatedMessage(&SERVICE_PORT)),
        omit(2, "selector", Map),
        omit(3, "clusterIP", String),
        omit(4, "type", String),
        omit(5, "externalIPs", RepeatedString),
        omit(7, "sessionAffinity", String),
        omit(8, "loadBalancerIP", String),
        omit(9, "loadBalancerSourceRanges", RepeatedString),
        omit(10, "externalName", String),
        omit(11, "externalTrafficPolicy", String),
        omit(12, "healthCheckNodePort", Int32),
        omit(13, "publishNotReadyAddresses", Bool),
        keep(14, "sessionAffinityConfig", Message(&SESSION_AFFINITY_CONFIG)),
        keep(17, "ipFamilyPolicy", String),
        omit(18, "clusterIPs", RepeatedString),
        omit(19, "ipFamilies", RepeatedString),
        keep(20, "allocateLoadBalancerNodePorts", Bool),
        keep(21, "loadBalancerClass", String),
        keep(22, "internalTrafficPolicy", String),
        keep(23, "trafficDistribution", String),
    ],
};

static SERVICE_PORT: Msg = Msg {
    name: "ServicePort",
    fields: &[
        omit(1, "name", String),
        omit(2, "protocol", String),
        keep(3, "port", Int32),
        keep(4, "targetPort", IntOrString),
        omit(5, "nodePort", Int32),
        keep(6, "appProtocol", String),
    ],
};

static SESSION_AFFINITY_CONFIG: Msg =
    Msg { name: "SessionAffinityConfig", fields: &[keep(1, "clientIP", Message(&CLIENT_IP_CONFIG))] };

static CLIENT_IP_CONFIG: Msg = Msg { name: "ClientIPConfig", fields: &[keep(1, "timeoutSeconds", Int32)] };

static SERVICE_STATUS: Msg = Msg {
    name: "ServiceStatus",
    fields: &[
        keep(1, "loadBalancer", Message(&LOAD_BALANCER_STATUS)),
        omit(2, "conditions", RepeatedMessage(&CONDITION)),
    ],
};

static LOAD_BALANCER_STATUS: Msg =
    Msg { name: "LoadBalancerStatus", fields: &[omit(1, "ingress", RepeatedMessage(&LOAD_BALANCER_INGRESS))] };

static LOAD_BALANCER_INGRESS: Msg = Msg {
    name: "LoadBalancerIngress",
    fields: &[
        omit(1, "ip", String),
        omit(2, "hostname", String),
        keep(3, "ipMode", String),
        omit(4, "ports", RepeatedMessage(&PORT_STATUS)),
    ],
};

static PORT_STATUS: Msg = Msg {
    name: "PortStatus",
    fields: &[keep(1, "port", Int32), keep(2, "protocol", String), keep(3, "error", String)],
};

static NODE: Msg = Msg {
    name: "Node",
    fields: &[
        keep(1, "metadata", Message(&OBJECT_META)),
        keep(2, "spec", Message(&NODE_SPEC)),
        keep(3, "status", Message(&NODE_STATUS)),
    ],
};

static NODE_SPEC: Msg = Msg {
    name: "NodeSpec",
    fields: &[
        omit(1, "podCIDR", String),
        omit(2, "externalID", String),
        omit(3, "providerID", String),
        omit(4, "unschedulable", Bool),
        omit(5, "taints", RepeatedMessage(&TAINT)),
        keep(6, "configSource", Message(&NODE_CONFIG_SOURCE)),
        omit(7, "podCIDRs", RepeatedString),
    ],
};

static TAINT: Msg = Msg {
    name: "Taint",
    fields: &[keep(1, "key", String), omit(2, "value", String), keep(3, "effect", String), keep(4, "timeAdded", Time)],
};

static NODE_CONFIG_SOURCE: Msg =
    Msg { name: "NodeConfigSource", fields: &[keep(2, "configMap", Message(&CONFIG_MAP_NODE_CONFIG_SOURCE))] };

static CONFIG_MAP_NODE_CONFIG_SOURCE: Msg = Msg {
    name: "ConfigMapNodeConfigSource",
    fields: &[
        keep(1, "namespace", String),
        keep(2, "name", String),
        omit(3, "uid", String),
        omit(4, "resourceVersion", String),
        keep(5, "kubeletConfigKey", String),
    ],
};

static NODE_STATUS: Msg = Msg {
    name: "NodeStatus",
    fields: &[
        omit(1, "capacity", MapQuantity),
        omit(2, "allocatable", MapQuantity),
        omit(3, "phase", String),
        omit(4, "conditions", RepeatedMessage(&NODE_CONDITION)),
        omit(5, "addresses", RepeatedMessage(&NODE_ADDRESS)),
        keep(6, "daemonEndpoints", Message(&NODE_DAEMON_ENDPOINTS)),
        keep(7, "nodeInfo", Message(&NODE_SYSTEM_INFO)),
        omit(8, "images", RepeatedMessage(&CONTAINER_IMAGE)),
        omit(9, "volumesInUse", RepeatedString),
        omit(10, "volumesAttached", RepeatedMessage(&ATTACHED_VOLUME)),
        keep(11, "config", Message(&NODE_CONFIG_STATUS)),
        omit(12, "runtimeHandlers", RepeatedMessage(&NODE_RUNTIME_HANDLER)),
        keep(13, "features", Message(&NODE_FEATURES)),
        omit(14, "declaredFeatures", RepeatedString),
    ],
};

static NODE_CONDITION: Msg = Msg {
    name: "NodeCondition",
    fields: &[
        keep(1, "type", String),
        keep(2, "status", String),
        keep(3, "lastHeartbeatTime", Time),
        keep(4, "lastTransitionTime", Time),
        omit(5, "reason", String),
        omit(6, "message", String),
    ],
};

static NODE_ADDRESS: Msg = Msg { name: "NodeAddress", fields: &[keep(1, "type", String), keep(2, "address", String)] };

static NODE_DAEMON_ENDPOINTS: Msg =
    Msg { name: "NodeDaemonEndpoints", fields: &[keep(1, "kubeletEndpoint", Message(&DAEMON_ENDPOINT))] };

static DAEMON_ENDPOINT: Msg = Msg { name: "DaemonEndpoint", fields: &[keep(1, "Port", Int32)] };

static NODE_SYSTEM_INFO: Msg = Msg {
    name: "NodeSystemInfo",
    fields: &[
        keep(1, "machineID", String),
        keep(2, "systemUUID", String),
        keep(3, "bootID", String),
        keep(4, "kernelVersion", String),
        keep(5, "osImage", String),
        keep(6, "containerRuntimeVersion", String),
        keep(7, "kubeletVersion", String),
        keep(8, "kubeProxyVersion", String),
        keep(9, "operatingSystem", String),
        keep(10, "architecture", String),
        keep(11, "swap", Message(&NODE_SWAP_STATUS)),
    ],
};

static NODE_SWAP_STATUS: Msg = Msg { name: "NodeSwapStatus", fields: &[keep(1, "capacity", Int64)] };

static CONTAINER_IMAGE: Msg =
    Msg { name: "ContainerImage", fields: &[keep(1, "names", RepeatedString), omit(2, "sizeBytes", Int64)] };

static ATTACHED_VOLUME: Msg =
    Msg { name: "AttachedVolume", fields: &[keep(1, "name", String), keep(2, "devicePath", String)] };

static NODE_CONFIG_STATUS: Msg = Msg {
    name: "NodeConfigStatus",
    fields: &[
        keep(1, "assigned", Message(&NODE_CONFIG_SOURCE)),
        keep(2, "active", Message(&NODE_CONFIG_SOURCE)),
        keep(3, "lastKnownGood", Message(&NODE_CONFIG_SOURCE)),
        omit(4, "error", String),
    ],
};

static NODE_RUNTIME_HANDLER: Msg = Msg {
    name: "NodeRuntimeHandler",
    fields: &[keep(1, "name", String), keep(2, "features", Message(&NODE_RUNTIME_HANDLER_FEATURES))],
};

static NODE_RUNTIME_HANDLER_FEATURES: Msg = Msg {
    name: "NodeRuntimeHandlerFeatures",
    fields: &[keep(1, "recursiveReadOnlyMounts", Bool), keep(2, "userNamespaces", Bool)],
};

static NODE_FEATURES: Msg = Msg {
    name: "NodeFeatures",
    fields: &[keep(1, "supplementalGroupsPolicy", Bool), keep(2, "containerUlimits", Bool)],
};

// ---- k8s.io/api/coordination/v1 ----

static LEASE: Msg =
    Msg { name: "Lease", fields: &[keep(1, "metadata", Message(&OBJECT_META)), keep(2, "spec", Message(&LEASE_SPEC))] };

static LEASE_SPEC: Msg = Msg {
    name: "LeaseSpec",
    fields: &[
        keep(1, "holderIdentity", String),
        keep(2, "leaseDurationSeconds", Int32),
        keep(3, "acquireTime", MicroTime),
        keep(4, "renewTime", MicroTime),
        keep(5, "leaseTransitions", Int32),
        keep(6, "strategy", String),
        keep(7, "preferredHolder", String),
    ],
};

// ---- k8s.io/api/events/v1 ----

static EVENTS_EVENT: Msg = Msg {
    name: "Event",
    fields: &[
        keep(1, "metadata", Message(&OBJECT_META)),
        keep(2, "eventTime", MicroTime),
        keep(3, "series", Message(&EVENTS_EVENT_SERIES)),
        omit(4, "reportingController", String),
        omit(5, "reportingInstance", String),
        omit(6, "action", String),
        omit(7, "reason", String),
        keep(8, "regarding", Message(&OBJECT_REFERENCE)),
        keep(9, "related", Message(&OBJECT_REFERENCE)),
        omit(10, "note", String),
        omit(11, "type", String),
        keep(12, "deprecatedSource", Message(&EVENT_SOURCE)),
        keep(13, "deprecatedFirstTimestamp", Time),
        keep(14, "deprecatedLastTimestamp", Time),
        omit(15, "deprecatedCount", Int32),
    ],
};

static EVENTS_EVENT_SERIES: Msg =
    Msg { name: "EventSeries", fields: &[keep(1, "count", Int32), keep(2, "lastObservedTime", MicroTime)] };

/// The top-level kinds, by `(apiVersion, kind)`.
static TOP_LEVEL: &[(&str, &str, &Msg)] = &[
    ("v1", "ConfigMap", &CONFIG_MAP),
    ("v1", "Secret", &SECRET),
    ("v1", "Namespace", &NAMESPACE),
    ("v1", "ServiceAccount", &SERVICE_ACCOUNT),
    ("v1", "Event", &CORE_EVENT),
    ("v1", "Node", &NODE),
    ("v1", "Service", &SERVICE),
    ("coordination.k8s.io/v1", "Lease", &LEASE),
    ("events.k8s.io/v1", "Event", &EVENTS_EVENT),
];

/// The descriptor of a top-level kind, if it is one we decode.
pub(super) fn lookup(api_version: &str, kind: &str) -> Option<&'static Msg> {
    TOP_LEVEL.iter().find(|(v, k, _)| *v == api_version && *k == kind).map(|(_, _, m)| *m)
}

/// Every `(apiVersion, kind)` with a descriptor.
pub(super) fn kinds() -> impl Iterator<Item = (&'static str, &'static str)> {
    TOP_LEVEL.iter().map(|(v, k, _)| (*v, *k))
}
