//! OpenAPI v3 schemas of the built-in kinds, generated from their real Kubernetes types (`k8s-openapi`), named
//! as Kubernetes names them (`io.k8s.api.core.v1.ConfigMap`), for the OpenAPI documents kubectl reads.

use crate::resource::Builtin;
use k8s_openapi::api::{apps, certificates, coordination, core, events, flowcontrol, storage};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use schemars::JsonSchema;
use serde_json::{Map, Value};

/// The kind's schema name and every schema it refers to (including itself), keyed by name.
pub fn schemas(builtin: Builtin) -> (String, Map<String, Value>) {
    match builtin {
        Builtin::Namespace => collect::<core::v1::Namespace>(),
        Builtin::Node => collect::<core::v1::Node>(),
        Builtin::CoreEvent => collect::<core::v1::Event>(),
        Builtin::Event => collect::<events::v1::Event>(),
        Builtin::Lease => collect::<coordination::v1::Lease>(),
        Builtin::ConfigMap => collect::<core::v1::ConfigMap>(),
        Builtin::Secret => collect::<core::v1::Secret>(),
        Builtin::ServiceAccount => collect::<core::v1::ServiceAccount>(),
        Builtin::CustomResourceDefinition => collect::<CustomResourceDefinition>(),
        Builtin::CertificateSigningRequest => collect::<certificates::v1::CertificateSigningRequest>(),
        Builtin::PersistentVolumeClaim => collect::<core::v1::PersistentVolumeClaim>(),
        Builtin::PersistentVolume => collect::<core::v1::PersistentVolume>(),
        Builtin::StorageClass => collect::<storage::v1::StorageClass>(),
        Builtin::ControllerRevision => collect::<apps::v1::ControllerRevision>(),
        Builtin::FlowSchema => collect::<flowcontrol::v1::FlowSchema>(),
        Builtin::PriorityLevelConfiguration => collect::<flowcontrol::v1::PriorityLevelConfiguration>(),
    }
}

fn collect<T: JsonSchema>() -> (String, Map<String, Value>) {
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let _ = generator.subschema_for::<T>();
    (T::schema_name().into_owned(), generator.take_definitions(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configmap_schema_has_fields_and_refs() {
        let (name, defs) = schemas(Builtin::ConfigMap);
        assert_eq!(name, "io.k8s.api.core.v1.ConfigMap");
        let cm = &defs[&name];
        assert!(cm.pointer("/properties/data/additionalProperties").is_some());
        let meta_ref = cm.pointer("/properties/metadata").unwrap().to_string();
        assert!(
            meta_ref.contains("#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"),
            "{meta_ref}"
        );
        assert!(defs.contains_key("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"));
    }
}
