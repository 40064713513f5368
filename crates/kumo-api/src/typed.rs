//! Validation of built-in kinds against their real Kubernetes Go types (via `k8s-openapi`): wrong types are
//! rejected, and fields the type does not have are reported so the server can warn, drop or refuse them per
//! `fieldValidation`.

use crate::resource::Builtin;
use k8s_openapi::api::{apps, certificates, coordination, core, events, flowcontrol, storage};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Unknown field paths, or a type error message.
pub fn check(builtin: Builtin, obj: &Value) -> Result<Vec<String>, String> {
    match builtin {
        Builtin::Namespace => unknown::<core::v1::Namespace>(obj),
        Builtin::Node => unknown::<core::v1::Node>(obj),
        Builtin::CoreEvent => unknown::<core::v1::Event>(obj),
        Builtin::Event => unknown::<events::v1::Event>(obj),
        Builtin::Lease => unknown::<coordination::v1::Lease>(obj),
        Builtin::ConfigMap => unknown::<core::v1::ConfigMap>(obj),
        Builtin::Secret => unknown::<core::v1::Secret>(obj),
        Builtin::ServiceAccount => unknown::<core::v1::ServiceAccount>(obj),
        Builtin::CustomResourceDefinition => unknown::<CustomResourceDefinition>(obj),
        Builtin::CertificateSigningRequest => unknown::<certificates::v1::CertificateSigningRequest>(obj),
        Builtin::PersistentVolumeClaim => unknown::<core::v1::PersistentVolumeClaim>(obj),
        Builtin::PersistentVolume => unknown::<core::v1::PersistentVolume>(obj),
        Builtin::StorageClass => unknown::<storage::v1::StorageClass>(obj),
        Builtin::ControllerRevision => unknown::<apps::v1::ControllerRevision>(obj),
        Builtin::FlowSchema => unknown::<flowcontrol::v1::FlowSchema>(obj),
        Builtin::PriorityLevelConfiguration => unknown::<flowcontrol::v1::PriorityLevelConfiguration>(obj),
    }
}

fn unknown<T: DeserializeOwned + k8s_openapi::Resource>(obj: &Value) -> Result<Vec<String>, String> {
    // k8s-openapi insists on apiVersion/kind; the server fills them before storing anyway.
    let mut obj = obj.clone();
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), Value::String(T::API_VERSION.into()));
        m.insert("kind".into(), Value::String(T::KIND.into()));
    }
    let mut unknown = Vec::new();
    let result: Result<T, _> = serde_ignored::deserialize(obj, |path| {
        // Option layers show up as `?` segments; they are not part of the field path.
        let p = path.to_string();
        unknown.push(p.split('.').filter(|s| *s != "?").collect::<Vec<_>>().join("."));
    });
    result.map_err(|e| e.to_string())?;
    Ok(unknown)
}

/// Removes the fields at `paths` (dotted, as [`check`] reports them) from `obj`.
pub fn prune(obj: &mut Value, paths: &[String]) {
    for p in paths {
        let parts: Vec<&str> = p.split('.').collect();
        let mut cur = &mut *obj;
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let next = match cur {
                Value::Object(m) if last => {
                    m.remove(*part);
                    break;
                }
                Value::Object(m) => m.get_mut(*part),
                Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
                _ => None,
            };
            match next {
                Some(n) => cur = n,
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn configmap_unknown_and_type_errors() {
        let mut o = json!({"metadata": {"name": "x", "bogus": 1}, "data": {"a": "b"}, "extra": true});
        let mut unknown = check(Builtin::ConfigMap, &o).unwrap();
        unknown.sort();
        assert_eq!(unknown, vec!["extra", "metadata.bogus"]);
        prune(&mut o, &unknown);
        assert_eq!(o, json!({"metadata": {"name": "x"}, "data": {"a": "b"}}));
        assert!(check(Builtin::ConfigMap, &json!({"metadata": {"name": "x"}, "data": {"a": 1}})).is_err());
    }
}
