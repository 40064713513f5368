//! VirtualMachine and VirtualMachineInstance as kube-rs resources (`Api<VirtualMachineInstance>`), and their
//! wire form: `apiVersion` and `kind` are written from the type, as k8s-openapi's types do, so an object
//! built in code (a VMI a controller creates) is complete.

use super::vm::VirtualMachine;
use super::vmi::VirtualMachineInstance;
use super::{GROUP, VERSION};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::ser::{SerializeStruct, Serializer};
use serde::Serialize;
use std::borrow::Cow;

macro_rules! kubevirt_kind {
    ($ty:ident, $kind:literal, $plural:literal) => {
        impl kube_core::Resource for $ty {
            type DynamicType = ();
            type Scope = kube_core::NamespaceResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> Cow<'_, str> {
                GROUP.into()
            }
            fn version(_: &()) -> Cow<'_, str> {
                VERSION.into()
            }
            fn plural(_: &()) -> Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut o = s.serialize_struct($kind, 5)?;
                o.serialize_field("apiVersion", &format!("{GROUP}/{VERSION}"))?;
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

kubevirt_kind!(VirtualMachine, "VirtualMachine", "virtualmachines");
kubevirt_kind!(VirtualMachineInstance, "VirtualMachineInstance", "virtualmachineinstances");

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
