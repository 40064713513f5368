//! VirtualMachine and VirtualMachineInstance as kube-rs resources (`Api<VirtualMachineInstance>`), and their
//! wire form: `apiVersion` and `kind` are written from the type, as k8s-openapi's types do, so an object
//! built in code (a VMI a controller creates) is complete.

use super::replicaset::VirtualMachineInstanceReplicaSet;
use super::vm::VirtualMachine;
use super::vmi::VirtualMachineInstance;
use super::{GROUP, VERSION};

/// A namespaced custom kind with `spec` and an optional `status`, as a kube-rs resource that writes its own
/// `apiVersion` and `kind`.
macro_rules! custom_kind {
    ($ty:ident, $kind:literal, $plural:literal, $group:expr, $version:expr) => {
        impl kube_core::Resource for $ty {
            type DynamicType = ();
            type Scope = kube_core::NamespaceResourceScope;

            fn kind(_: &()) -> std::borrow::Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> std::borrow::Cow<'_, str> {
                $group.into()
            }
            fn version(_: &()) -> std::borrow::Cow<'_, str> {
                $version.into()
            }
            fn plural(_: &()) -> std::borrow::Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &mut self.metadata
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeStruct;
                let mut o = s.serialize_struct($kind, 5)?;
                o.serialize_field("apiVersion", &format!("{}/{}", $group, $version))?;
                o.serialize_field("kind", $kind)?;
                o.serialize_field("metadata", &self.metadata)?;
                o.serialize_field("spec", &self.spec)?;
                match &self.status {
                    Some(st) => o.serialize_field("status", st)?,
                    None => o.skip_field("status")?,
                }
                o.end()
            }
        }
    };
}

pub(crate) use custom_kind;

custom_kind!(VirtualMachine, "VirtualMachine", "virtualmachines", GROUP, VERSION);
custom_kind!(VirtualMachineInstance, "VirtualMachineInstance", "virtualmachineinstances", GROUP, VERSION);
custom_kind!(
    VirtualMachineInstanceReplicaSet,
    "VirtualMachineInstanceReplicaSet",
    "virtualmachineinstancereplicasets",
    GROUP,
    VERSION
);

#[cfg(test)]
mod tests {
    use super::*;
    use kube_core::Resource;

    #[test]
    fn kinds_address_kubevirt_endpoints() {
        assert_eq!(
            VirtualMachineInstance::url_path(&(), Some("ns")),
            "/apis/kubevirt.io/v1/namespaces/ns/virtualmachineinstances"
        );
        assert_eq!(VirtualMachine::url_path(&(), None), "/apis/kubevirt.io/v1/virtualmachines");
        let mut vmi = VirtualMachineInstance::default();
        vmi.metadata.name = Some("v".into());
        let v = serde_json::to_value(&vmi).unwrap();
        assert_eq!(
            (v["apiVersion"].as_str(), v["kind"].as_str()),
            (Some("kubevirt.io/v1"), Some("VirtualMachineInstance"))
        );
        assert!(v.get("status").is_none(), "no status until one is reported: {v}");
        assert_eq!(vmi.object_ref(&()).kind.as_deref(), Some("VirtualMachineInstance"));
    }
}
