//! The kinds the controllers handle, as kube-rs dynamic resources.

use kube::core::{ApiResource, GroupVersionKind};

pub fn vm() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachine"), "virtualmachines")
}

pub fn vmi() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachineInstance"),
        "virtualmachineinstances",
    )
}
