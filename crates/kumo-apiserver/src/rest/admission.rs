//! What happens to an object on its way into the store: schema/type validation with `fieldValidation`,
//! metadata checks, system-managed fields, and the few kind-specific rules (Namespace, Secret, CRD).

use crate::state::ApiServer;
use kumo_api::patch::lists::{BuiltinLists, ListTypes, SchemaLists};
use kumo_api::{meta, schema, typed, validation, ApiError, Cause, ResourceDef};
use serde_json::{json, Value};

/// `fieldValidation`: what to do with fields the kind does not have.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(v: Option<&str>) -> Result<Self, ApiError> {
        match v {
            None | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(o) => {
                Err(ApiError::bad_request(format!("fieldValidation must be one of Ignore, Warn, Strict (got {o:?})")))
            }
        }
    }
}

const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// The list semantics of a kind, for strategic merge patch and server-side apply.
pub fn list_types(def: &ResourceDef) -> Box<dyn ListTypes + Send + Sync + '_> {
    match def.builtin {
        Some(b) => Box::new(BuiltinLists(b)),
        None => Box::new(SchemaLists(def.schema.as_ref())),
    }
}

/// Validates `obj` for `def`, pruning unknown fields per `fv` (collecting warnings) and applying schema
/// defaults. Fills in apiVersion/kind.
pub fn validate(
    def: &ResourceDef,
    obj: &mut Value,
    url_ns: Option<&str>,
    fv: FieldValidation,
    warnings: &mut Vec<String>,
) -> Result<(), ApiError> {
    let name = meta::name(obj).to_string();
    let tm = validation::validate_type_meta(def, obj);
    if !tm.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{}: the object's apiVersion/kind do not match the endpoint ({} {})",
            tm.iter().map(Cause::describe).collect::<Vec<_>>().join(", "),
            def.api_version(),
            def.kind
        )));
    }
    obj["apiVersion"] = json!(def.api_version());
    obj["kind"] = json!(def.kind);
    let mut unknown: Vec<String> = obj
        .get("metadata")
        .and_then(Value::as_object)
        .map(|m| {
            m.keys().filter(|k| !OBJECT_META_FIELDS.contains(&k.as_str())).map(|k| format!("metadata.{k}")).collect()
        })
        .unwrap_or_default();
    let mut causes = Vec::new();
    if let Some(b) = def.builtin {
        match typed::check(b, obj) {
            Ok(u) => unknown.extend(u.into_iter().filter(|p| !p.starts_with("metadata."))),
            Err(e) => {
                return Err(ApiError::bad_request(format!(
                    "{} in version \"{}\" cannot be handled as a {}: {e}",
                    def.kind, def.version, def.kind
                )))
            }
        }
    } else if let Some(s) = &def.schema {
        let f = schema::process(obj, s);
        unknown.extend(f.unknown);
        causes.extend(f.causes);
    }
    unknown.sort();
    unknown.dedup();
    if def.reject_unknown_fields && !unknown.is_empty() {
        let causes = unknown
            .iter()
            .map(|u| Cause {
                reason: "FieldValueForbidden".into(),
                message: format!("Forbidden: field \"{u}\" is not supported by kumo"),
                field: u.clone(),
            })
            .collect();
        return Err(ApiError::invalid(&def.group, &def.kind, &name, causes));
    }
    if !unknown.is_empty() {
        match fv {
            FieldValidation::Strict => {
                return Err(ApiError::strict_decoding(unknown.iter().map(|u| Cause::unknown(u.clone())).collect()))
            }
            FieldValidation::Warn => warnings.extend(unknown.iter().map(|u| format!("unknown field \"{u}\""))),
            FieldValidation::Ignore => {}
        }
        typed::prune(obj, &unknown);
    }
    causes.extend(validation::validate_metadata(def, obj, url_ns));
    if def.builtin == Some(kumo_api::resource::Builtin::CustomResourceDefinition) {
        causes.extend(kumo_api::crd::validate(obj));
    }
    if def.group == kumo_api::kubevirt::GROUP {
        causes.extend(kumo_api::kubevirt::validate(&def.kind, obj));
    }
    if def.group == kumo_api::pool::GROUP {
        causes.extend(kumo_api::pool::validate(&def.kind, obj));
    }
    if def.group == kumo_api::instancetype::GROUP {
        causes.extend(kumo_api::instancetype::validate(&def.kind, obj));
    }
    if def.group == kumo_api::cdi::GROUP && def.kind == "DataVolume" {
        causes.extend(kumo_api::cdi::validate(obj));
    }
    if def.builtin.is_some() {
        causes.extend(kumo_api::storage::validate(&def.kind, obj));
    }
    if def.group == kumo_api::flowcontrol::GROUP {
        causes.extend(kumo_api::flowcontrol::validate(&def.kind, obj));
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid(&def.group, &def.kind, &name, causes));
    }
    Ok(())
}

/// System fields of a brand-new object.
pub fn stamp_new(obj: &mut Value) {
    let md = meta::metadata_mut(obj);
    md.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    md.insert("creationTimestamp".into(), json!(meta::now_rfc3339()));
    md.insert("generation".into(), json!(1));
    for k in ["deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion", "selfLink"] {
        md.remove(k);
    }
}

/// Kind-specific rules on create.
pub fn on_create(_api: &ApiServer, def: &ResourceDef, obj: &mut Value) -> Result<(), ApiError> {
    match def.kind.as_str() {
        "Namespace" if def.group.is_empty() => {
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
            obj["status"] = json!({"phase": "Active"});
        }
        "CustomResourceDefinition" => {
            obj["status"] = kumo_api::crd::established_status(obj, &meta::now_rfc3339());
            let mut fins = meta::finalizers(obj);
            if !fins.iter().any(|f| f == crate::gc::CRD_CLEANUP) {
                fins.push(crate::gc::CRD_CLEANUP.to_string());
            }
            meta::set_meta(obj, "finalizers", json!(fins));
        }
        "VirtualMachineInstance" if def.group == kumo_api::kubevirt::GROUP => {
            // The node label is the scheduler's to set when it binds: a node may list the VMIs carrying its
            // name, so a label set at creation would show a VMI to a node it was never bound to.
            let label = kumo_api::kubevirt::NODE_NAME_LABEL;
            if obj.pointer("/metadata/labels").and_then(|l| l.get(label)).is_some() {
                return Err(ApiError::invalid(
                    &def.group,
                    &def.kind,
                    meta::name(obj),
                    vec![Cause::invalid(
                        format!("metadata.labels[{label}]"),
                        "Forbidden: set by the scheduler when it binds the VirtualMachineInstance to a node",
                    )],
                ));
            }
            // KubeVirt's mutating webhook's defaults. The firmware UUID is the owning VM's uid, so a VM keeps
            // its UUID across restarts; a VMI of its own gets its own uid.
            let vm_uid = obj
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|o| o.get("kind").and_then(Value::as_str) == Some("VirtualMachine"))
                .and_then(|o| o.get("uid").and_then(Value::as_str))
                .map(str::to_string);
            let uuid = vm_uid.unwrap_or_else(|| meta::uid(obj).to_string());
            kumo_api::kubevirt::apply_vmi_defaults(obj, &uuid);
        }
        _ => {}
    }
    common_rules(def, obj)
}

/// Kind-specific rules on an update from `old` to `new`.
pub fn on_update(def: &ResourceDef, old: &Value, new: &Value) -> Result<(), ApiError> {
    if def.kind == "Node" && def.group.is_empty() {
        // As in Kubernetes: once the node IPAM controller gave a Node its pod CIDR, nobody changes it (a node
        // moving its own block would take over another node's pod addresses).
        let was = old.pointer("/spec/podCIDR").and_then(Value::as_str).unwrap_or("");
        let is = new.pointer("/spec/podCIDR").and_then(Value::as_str).unwrap_or("");
        if !was.is_empty() && was != is {
            return Err(ApiError::invalid(
                "",
                "Node",
                meta::name(old),
                vec![Cause::invalid(
                    "spec.podCIDR",
                    format!(
                        "Forbidden: node updates may not change podCIDR except from \"\" to a valid CIDR (it is {was})"
                    ),
                )],
            ));
        }
    }
    Ok(())
}

/// Kind-specific rules on every write.
pub fn common_rules(def: &ResourceDef, obj: &mut Value) -> Result<(), ApiError> {
    if def.kind == "Secret" && def.group.is_empty() {
        // stringData is write-only: fold it into data, base64-encoded, as Kubernetes does.
        if let Some(Value::Object(sd)) = obj.as_object_mut().and_then(|m| m.remove("stringData")) {
            use base64::Engine;
            let data = obj.as_object_mut().expect("object").entry("data").or_insert_with(|| json!({}));
            for (k, v) in sd {
                let s = v.as_str().unwrap_or_default();
                data[k] = json!(base64::engine::general_purpose::STANDARD.encode(s));
            }
        }
    }
    Ok(())
}

/// Everything but metadata and status is "spec" for generation purposes.
pub fn spec_changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| -> Value {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            for k in ["metadata", "status", "apiVersion", "kind"] {
                m.remove(k);
            }
        }
        v
    };
    strip(old) != strip(new)
}

/// Are `a` and `b` the same object apart from resourceVersion and managedFields timestamps?
pub fn same_object(a: &Value, b: &Value) -> bool {
    let norm = |v: &Value| -> Value {
        let mut v = v.clone();
        if let Some(md) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            md.remove("resourceVersion");
            if let Some(Value::Array(mf)) = md.get_mut("managedFields") {
                for e in mf.iter_mut() {
                    if let Some(m) = e.as_object_mut() {
                        m.remove("time");
                    }
                }
            }
        }
        v
    };
    norm(a) == norm(b)
}

/// Checks the target namespace exists and is not being deleted.
pub async fn check_namespace(api: &ApiServer, def: &ResourceDef, ns: Option<&str>) -> Result<(), ApiError> {
    let Some(ns) = ns.filter(|_| def.namespaced) else { return Ok(()) };
    if api.cache.namespace_active(ns) {
        return Ok(());
    }
    let ns_def = api.registry.get("", "v1", "namespaces").expect("built-in");
    match api.objects.try_get(&ns_def, None, ns).await? {
        None => Err(ApiError::not_found("", "namespaces", ns)),
        Some(n) if meta::deletion_timestamp(&n).is_some() => Err(ApiError::forbidden(format!(
            "{} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
            def.qualified(),
        ))),
        Some(_) => Ok(()),
    }
}
