//! KubeVirt's `subresources.kubevirt.io/v1` API (what KubeVirt's virt-api serves and virtctl calls), with
//! KubeVirt's paths, verbs and payloads: [`SUBRESOURCES`] is the whole table. VM lifecycle ([`lifecycle`]) and
//! volume hotplug ([`hotplug`]) are writes the controllers and node agent act on; guest questions and resets
//! ([`guest`]) and the WebSocket streams ([`stream`]) reach the node agent running the VMI. Paths whose
//! capability kumo does not have yet answer a 4xx naming it, never a 404.

pub mod expand;
pub mod guest;
pub mod hotplug;
pub mod lifecycle;
pub mod options;
pub mod stream;

pub use lifecycle::vm_transition;

use crate::handlers::Call;
use crate::request::ResourcePath;
use crate::response::{self, Resp};
use crate::state::ApiServer;
use http::{Method, StatusCode};
use kumo_api::kubevirt::PAUSE_ANNOTATION;
use kumo_api::{meta, ApiError, ResourceDef};
use serde_json::{json, Value};
use std::sync::Arc;

pub const GROUP: &str = "subresources.kubevirt.io";

const VMI: &str = "virtualmachineinstances";
const VM: &str = "virtualmachines";

/// How a subresource is called.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verb {
    Put,
    Get,
    /// A GET upgraded to a WebSocket.
    Stream,
}

/// Whether kumo serves a subresource.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Served {
    Yes,
    /// Not yet: the capability named is still to come (a 501 saying so).
    Later(&'static str),
    /// Never on kumo, as a KubeVirt cluster configured without it answers (a 409 saying why).
    Refused(&'static str),
}

/// Every subresource of KubeVirt's API: (resource, path below the object, verb, served). A namespace-level
/// path has the resource "" (`namespaces/{ns}/expand-vm-spec`).
pub const SUBRESOURCES: &[(&str, &str, Verb, Served)] = &[
    (VM, "start", Verb::Put, Served::Yes),
    (VM, "stop", Verb::Put, Served::Yes),
    (VM, "restart", Verb::Put, Served::Yes),
    (VM, "addvolume", Verb::Put, Served::Yes),
    (VM, "removevolume", Verb::Put, Served::Yes),
    (VM, "portforward", Verb::Stream, Served::Yes),
    (VM, "migrate", Verb::Put, Served::Later("live migration")),
    (VM, "evacuate/cancel", Verb::Put, Served::Later("live migration")),
    (VM, "memorydump", Verb::Put, Served::Later("memory dumps")),
    (VM, "removememorydump", Verb::Put, Served::Later("memory dumps")),
    (VM, "expand-spec", Verb::Get, Served::Yes),
    (VM, "objectgraph", Verb::Get, Served::Later("object graphs")),
    (VMI, "pause", Verb::Put, Served::Yes),
    (VMI, "unpause", Verb::Put, Served::Yes),
    (VMI, "addvolume", Verb::Put, Served::Yes),
    (VMI, "removevolume", Verb::Put, Served::Yes),
    (VMI, "softreboot", Verb::Put, Served::Yes),
    (VMI, "reset", Verb::Put, Served::Yes),
    (VMI, "guestosinfo", Verb::Get, Served::Yes),
    (VMI, "userlist", Verb::Get, Served::Yes),
    (VMI, "filesystemlist", Verb::Get, Served::Yes),
    (VMI, "console", Verb::Stream, Served::Yes),
    (VMI, "vnc", Verb::Stream, Served::Yes),
    (VMI, "portforward", Verb::Stream, Served::Yes),
    (VMI, "freeze", Verb::Put, Served::Later("guest filesystem freezes on request")),
    (VMI, "unfreeze", Verb::Put, Served::Later("guest filesystem freezes on request")),
    (VMI, "evacuate/cancel", Verb::Put, Served::Later("live migration")),
    (VMI, "vnc/screenshot", Verb::Get, Served::Later("VNC screenshots (the vnc stream works)")),
    (VMI, "objectgraph", Verb::Get, Served::Later("object graphs")),
    (VMI, "backup", Verb::Put, Served::Later("VM backups")),
    (VMI, "redefine-checkpoint", Verb::Put, Served::Later("VM backups")),
    (
        VMI,
        "usbredir",
        Verb::Stream,
        Served::Refused("Not configured with USB Redirection: kumo has no USB redirection"),
    ),
    (VMI, "vsock", Verb::Stream, Served::Refused("Not configured with VSOCK: kumo gives guests no VSOCK device")),
    (VMI, "sev/fetchcertchain", Verb::Get, Served::Refused("SEV is not enabled: kumo runs no confidential guests")),
    (
        VMI,
        "sev/querylaunchmeasurement",
        Verb::Get,
        Served::Refused("SEV is not enabled: kumo runs no confidential guests"),
    ),
    (VMI, "sev/setupsession", Verb::Put, Served::Refused("SEV is not enabled: kumo runs no confidential guests")),
    (VMI, "sev/injectlaunchsecret", Verb::Put, Served::Refused("SEV is not enabled: kumo runs no confidential guests")),
    ("", "expand-vm-spec", Verb::Put, Served::Yes),
];

/// The discovery document for `subresources.kubevirt.io/v1`: each subresource by name, as virt-api lists them.
pub fn discovery() -> Value {
    let mut resources = Vec::new();
    for (plural, sub, verb, _) in SUBRESOURCES {
        let name = if plural.is_empty() { sub.to_string() } else { format!("{plural}/{sub}") };
        let verbs = match verb {
            Verb::Put => vec!["update"],
            Verb::Get | Verb::Stream => vec!["get"],
        };
        resources.push(json!({"name": name, "singularName": "", "namespaced": true, "kind": "", "verbs": verbs}));
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/v1"), "resources": resources})
}

/// The table's row for a request path, if the path is one of KubeVirt's subresources.
fn row(p: &ResourcePath) -> Option<&'static (&'static str, &'static str, Verb, Served)> {
    if p.name.is_none() && p.subresource.is_none() {
        // `namespaces/{ns}/expand-vm-spec` parses as a resource of that name.
        return SUBRESOURCES.iter().find(|(plural, name, _, _)| plural.is_empty() && *name == p.resource);
    }
    let sub = p.subresource.as_deref()?;
    let full = std::iter::once(sub).chain(p.subpath.iter().map(String::as_str)).collect::<Vec<_>>().join("/");
    SUBRESOURCES.iter().find(|(plural, name, verb, _)| {
        *plural == p.resource
            && (*name == full
                // Port forwards carry their port (and protocol) below the subresource.
                || (*verb == Verb::Stream && *name == sub && sub == "portforward"))
    })
}

/// Whether `resource/sub` is one of the subresources this group has (for request metrics).
pub fn serves(resource: &str, sub: &str) -> bool {
    SUBRESOURCES.iter().any(|(plural, name, _, _)| *plural == resource && name.split('/').next() == Some(sub))
        || CLUSTER_PATHS.iter().any(|(path, _)| *path == resource)
        || (resource == "expand-vm-spec" && sub.is_empty())
}

/// Paths of the group that name no object (`/apis/subresources.kubevirt.io/v1/{path}`), all GETs.
const CLUSTER_PATHS: &[(&str, Served)] = &[
    ("version", Served::Yes),
    ("healthz", Served::Yes),
    ("guestfs", Served::Refused("kumo ships no libguestfs image")),
    ("start-cluster-profiler", Served::Refused("kumo has no cluster profiler")),
    ("stop-cluster-profiler", Served::Refused("kumo has no cluster profiler")),
    ("dump-cluster-profiler", Served::Refused("kumo has no cluster profiler")),
];

/// Whether the request is one of the WebSocket subresources, which are proxied before their body is read.
pub fn is_stream(p: &ResourcePath) -> bool {
    p.group == GROUP && row(p).is_some_and(|(_, _, verb, served)| *verb == Verb::Stream && *served == Served::Yes)
}

pub(crate) fn vm_def(api: &ApiServer) -> Result<Arc<ResourceDef>, ApiError> {
    api.registry.get("kubevirt.io", "v1", VM).ok_or_else(|| ApiError::internal("kubevirt.io CRDs missing"))
}

pub(crate) fn vmi_def(api: &ApiServer) -> Result<Arc<ResourceDef>, ApiError> {
    api.registry.get("kubevirt.io", "v1", VMI).ok_or_else(|| ApiError::internal("kubevirt.io CRDs missing"))
}

pub(crate) fn conflict(def: &ResourceDef, name: &str, why: &str) -> ApiError {
    ApiError::conflict(&def.group, &def.plural, name, why)
}

pub(crate) fn paused(vmi: &Value) -> bool {
    vmi.pointer(&format!("/metadata/annotations/{}", PAUSE_ANNOTATION.replace('/', "~1"))).and_then(Value::as_str)
        == Some("true")
}

/// The VMI of VM `name`, as virt-api finds it: the VM must have started one, and the VMI of the same name must
/// be the VM's own.
pub(crate) async fn vmi_of_vm(api: &Arc<ApiServer>, ns: &str, name: &str) -> Result<Value, ApiError> {
    let vm = api.objects.get(&*vm_def(api)?, Some(ns), name).await?;
    let def = vmi_def(api)?;
    let Some(vmi) = api.objects.try_get(&def, Some(ns), name).await? else {
        return Err(conflict(&*vm_def(api)?, name, "VMI is not started"));
    };
    let owned = vmi
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| refs.iter().any(|r| r["uid"].as_str() == Some(meta::uid(&vm))));
    if !owned {
        return Err(conflict(&def, name, &format!("VMI {name} does not belong to VirtualMachine {name}")));
    }
    Ok(vmi)
}

/// `GET /apis/subresources.kubevirt.io/v1/version`: KubeVirt's version info. `virtctl version` prints it, and
/// virtctl compares its major.minor with its own after any failed command, so this names the KubeVirt API
/// release kumo serves.
pub fn version() -> Value {
    json!({
        "gitVersion": concat!("v1.5.0-kumo.", env!("CARGO_PKG_VERSION")), "gitCommit": "", "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z", "goVersion": "n/a", "compiler": "rustc", "platform": "linux/amd64"
    })
}

/// Serves a path of the group that is not a WebSocket.
pub async fn serve(api: &Arc<ApiServer>, call: &Call) -> Result<Resp, ApiError> {
    let p = &call.path;
    if p.version != "v1" {
        return Err(ApiError::path_not_found(&format!("{GROUP}/{}", p.version)));
    }
    let cluster = CLUSTER_PATHS.iter().find(|(path, _)| *path == p.resource);
    if let (Some((path, served)), None, None) = (cluster, &p.namespace, &p.name) {
        if call.method != Method::GET {
            return Err(ApiError::method_not_allowed(call.method.as_str(), path));
        }
        let body = match (path, served) {
            (_, Served::Refused(why) | Served::Later(why)) => {
                return Err(ApiError::new(501, "NotImplemented", format!("{path}: {why}")))
            }
            (&"version", _) => version(),
            _ => json!({"apiserver": {"connectivity": "ok", "version": crate::discovery::version()}}),
        };
        return Ok(response::json_response(StatusCode::OK, &body));
    }
    let (Some((_, sub, verb, served)), Some(_)) = (row(p), p.namespace.as_deref()) else {
        let sub = p.subresource.as_deref().unwrap_or("");
        return Err(ApiError::path_not_found(&format!("{GROUP}/v1/{}/{sub}", p.resource)));
    };
    let want = match verb {
        Verb::Put => Method::PUT,
        Verb::Get | Verb::Stream => Method::GET,
    };
    if call.method != want {
        return Err(ApiError::method_not_allowed(call.method.as_str(), &format!("{}/{sub}", p.resource)));
    }
    match served {
        Served::Later(what) => {
            return Err(ApiError::new(
                501,
                "NotImplemented",
                format!("{}/{sub}: kumo does not have {what} yet", p.resource),
            ))
        }
        Served::Refused(why) => return Err(conflict(&*vmi_def(api)?, call.name(), why)),
        Served::Yes => {}
    }
    let (ns, name) = (call.namespace().unwrap_or_default(), call.name());
    match (p.resource.as_str(), *sub, verb) {
        (_, "console" | "vnc" | "portforward", _) => {
            return Err(ApiError::bad_request(format!("{sub} is a WebSocket: send a GET with Upgrade: websocket")))
        }
        (VMI, what, Verb::Get) => return guest::get(api, ns, name, what).await,
        (VM, "expand-spec", _) => {
            let vm = api.objects.get(&*vm_def(api)?, Some(ns), name).await?;
            return Ok(response::json_response(StatusCode::OK, &expand::expand(api, ns, &vm).await?));
        }
        (_, "expand-vm-spec", _) => {
            let vm: Value = serde_json::from_slice(&call.body)
                .map_err(|e| ApiError::bad_request(format!("the body is not a VirtualMachine: {e}")))?;
            if vm.get("kind").and_then(Value::as_str) != Some("VirtualMachine") {
                return Err(ApiError::bad_request("Object is not a valid VirtualMachine: kind must be VirtualMachine"));
            }
            let vm_ns = vm.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or(ns);
            if vm_ns != ns {
                return Err(ApiError::bad_request(format!(
                    "VM namespace {vm_ns:?} must be empty or match the namespace of the request, {ns:?}"
                )));
            }
            return Ok(response::json_response(StatusCode::OK, &expand::expand(api, ns, &vm).await?));
        }
        (_, "addvolume" | "removevolume", _) => hotplug::serve(api, call, sub).await?,
        (VM, "start" | "stop" | "restart", _) => lifecycle::vm_state(api, call, sub).await?,
        (VMI, "pause" | "unpause", _) => lifecycle::pause(api, call, sub).await?,
        (VMI, "softreboot" | "reset", _) => guest::act(api, ns, name, sub).await?,
        (resource, sub, _) => return Err(ApiError::internal(format!("{resource}/{sub} has no handler"))),
    }
    Ok(response::json_response(StatusCode::ACCEPTED, &json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(resource: &str, sub: &str) -> ResourcePath {
        let mut parts = sub.split('/').map(String::from);
        ResourcePath {
            group: GROUP.into(),
            version: "v1".into(),
            resource: resource.into(),
            name: Some("x".into()),
            subresource: parts.next(),
            subpath: parts.collect(),
            ..Default::default()
        }
    }

    #[test]
    fn every_path_finds_its_row() {
        for (plural, sub, _, _) in SUBRESOURCES.iter().filter(|r| !r.0.is_empty()) {
            assert_eq!(row(&path(plural, sub)).map(|r| r.1), Some(*sub), "{plural}/{sub}");
            assert!(serves(plural, sub.split('/').next().unwrap()), "{plural}/{sub}");
        }
        assert_eq!(row(&path(VMI, "portforward/22/tcp")).map(|r| r.1), Some("portforward"));
        assert!(row(&path(VMI, "start")).is_none());
        assert!(row(&path(VM, "evacuate/other")).is_none());
        assert!(is_stream(&path(VM, "portforward/22")));
        assert!(!is_stream(&path(VMI, "usbredir")), "refused before any upgrade");
    }

    /// Every operation KubeVirt publishes in its OpenAPI document has a row with its method, and every row is
    /// one KubeVirt publishes: kumo invents no path and misses none.
    #[test]
    fn the_table_is_kubevirts_published_api() {
        let published = include_str!("published-paths.txt");
        let mut seen = std::collections::HashSet::new();
        for line in published.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let mut words = line.split_whitespace();
            let (method, path) = (words.next().unwrap(), words.next().unwrap());
            let rest = path.trim_start_matches("/apis/subresources.kubevirt.io").trim_start_matches("/v1");
            let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
            let found = match segs.as_slice() {
                [] => continue, // the group and version documents (discovery)
                [cluster] => {
                    assert!(CLUSTER_PATHS.iter().any(|(p, _)| p == cluster), "{line}: no cluster path {cluster}");
                    assert_eq!(method, "GET", "{line}");
                    continue;
                }
                ["namespaces", _, plural, _, sub @ ..] => {
                    let sub = sub.iter().copied().filter(|s| !s.starts_with('{')).collect::<Vec<_>>().join("/");
                    SUBRESOURCES.iter().find(|(p, n, _, _)| p == plural && *n == sub)
                }
                ["namespaces", _, sub] => SUBRESOURCES.iter().find(|(p, n, _, _)| p.is_empty() && n == sub),
                _ => panic!("{line}: a path of a shape kumo does not route"),
            };
            let (plural, sub, verb, _) = found.unwrap_or_else(|| panic!("{line}: no row"));
            let want = if *verb == Verb::Put { "PUT" } else { "GET" };
            assert_eq!(method, want, "{line}: kumo serves it with {want}");
            seen.insert((*plural, *sub));
        }
        for (plural, sub, _, _) in SUBRESOURCES {
            assert!(seen.contains(&(*plural, *sub)), "{plural}/{sub} is not in KubeVirt's published API");
        }
    }

    #[test]
    fn discovery_names_each_once() {
        let d = discovery();
        let names: Vec<&str> = d["resources"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        assert!(names.contains(&"virtualmachineinstances/vnc") && names.contains(&"expand-vm-spec"));
    }
}
