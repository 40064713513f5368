//! A VM's flavor (instancetype and preference), as KubeVirt keeps it: at the VM's first start the flavor is
//! copied into a ControllerRevision the VM owns and the VM's `spec.instancetype.revisionName` (or
//! `preference`) names it; from then on its VMIs are expanded from that copy. Editing or deleting the flavor
//! changes nothing for the VM until its revisionName is cleared (the next start pins the flavor as it is then).
//!
//! [`revision`] and [`expanded`] decide; [`resolve`] reads and writes through the API.

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use kumo_api::instancetype::{self as it, Flavor, FlavorRef, InstancetypeSpec, PreferenceSpec};
use kumo_api::kubevirt::VirtualMachine;
use serde_json::{json, Value};

/// What the VM's flavor references came to.
#[derive(Debug)]
pub enum Resolved {
    /// The VM with its template expanded by its flavor (unchanged without one).
    Ready(Box<VirtualMachine>),
    /// A flavor was pinned into a new revision and the VM's spec now names it: look again.
    Pinned,
    /// A flavor or its revision is missing: why.
    Missing(String),
}

/// The ControllerRevision that pins `flavor` (an instancetype or preference object as read) for `vm`.
pub fn revision(vm: &VirtualMachine, flavor: &Value) -> ControllerRevision {
    let name = flavor.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    let uid = flavor.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default();
    let generation = flavor.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
    let short: String = uid.chars().filter(|c| *c != '-').take(8).collect();
    let data = json!({"apiVersion": flavor.get("apiVersion"), "kind": flavor.get("kind"),
        "metadata": {"name": name, "uid": uid, "generation": generation}, "spec": flavor.get("spec")});
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(format!("{}-{name}-{short}-{generation}", vm.name_any())),
            namespace: vm.metadata.namespace.clone(),
            labels: Some(
                [(
                    "instancetype.kubevirt.io/object-kind".to_string(),
                    flavor["kind"].as_str().unwrap_or_default().to_string(),
                )]
                .into(),
            ),
            owner_references: Some(vec![OwnerReference {
                api_version: "kubevirt.io/v1".into(),
                kind: "VirtualMachine".into(),
                name: vm.name_any(),
                uid: vm.metadata.uid.clone().unwrap_or_default(),
                controller: Some(false),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        data: RawExtension(data),
        revision: Some(generation),
    }
}

/// The VM whose template its pinned flavors have expanded.
pub fn expanded(vm: &VirtualMachine, it: Option<&InstancetypeSpec>, pref: Option<&PreferenceSpec>) -> VirtualMachine {
    let mut vm = vm.clone();
    it::expand(&mut vm.spec.template.spec, it, pref);
    vm
}

fn spec_of<S: serde::de::DeserializeOwned + Default>(rev: &ControllerRevision) -> Option<S> {
    let data = rev.data.0.clone();
    serde_json::from_value::<Flavor<S>>(data).ok().map(|f| f.spec)
}

/// Reads (and at first, pins) the VM's flavors.
pub async fn resolve(client: &Client, vm: &VirtualMachine) -> Result<Resolved, kube::Error> {
    let ns = vm.namespace().unwrap_or_default();
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns);
    let refs =
        [("instancetype", vm.spec.instancetype.as_ref(), false), ("preference", vm.spec.preference.as_ref(), true)];
    let mut pinned: Vec<Option<ControllerRevision>> = Vec::new();
    for (field, r, preference) in refs {
        let Some(r) = r else {
            pinned.push(None);
            continue;
        };
        if let Some(rev) = r.revision_name.as_deref().filter(|n| !n.is_empty()) {
            match revisions.get_opt(rev).await? {
                Some(rev) => pinned.push(Some(rev)),
                None => return Ok(Resolved::Missing(format!("the {field}'s ControllerRevision {rev} is gone"))),
            }
            continue;
        }
        let Some(flavor) = read_flavor(client, &ns, r, preference).await? else {
            let kind = r
                .kind
                .clone()
                .unwrap_or_else(|| (if preference { it::CLUSTER_PREFERENCE } else { it::CLUSTER_INSTANCETYPE }).into());
            return Ok(Resolved::Missing(format!("{kind} {} not found", r.name)));
        };
        let rev = revision(vm, &flavor);
        match revisions.create(&PostParams::default(), &rev).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
        let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), &ns);
        let patch = json!({"spec": {field: {"revisionName": rev.metadata.name}}});
        vms.patch(&vm.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
        return Ok(Resolved::Pinned);
    }
    let it = pinned[0].as_ref().and_then(spec_of::<InstancetypeSpec>);
    let pref = pinned[1].as_ref().and_then(spec_of::<PreferenceSpec>);
    Ok(Resolved::Ready(Box::new(expanded(vm, it.as_ref(), pref.as_ref()))))
}

async fn read_flavor(client: &Client, ns: &str, r: &FlavorRef, preference: bool) -> Result<Option<Value>, kube::Error> {
    let (cluster, kind) = (r.cluster_wide(preference), r.object_kind(preference));
    let ar = ApiResource {
        group: it::GROUP.into(),
        version: it::VERSION.into(),
        api_version: format!("{}/{}", it::GROUP, it::VERSION),
        kind: kind.into(),
        plural: it::plural(kind).into(),
    };
    let api: Api<DynamicObject> =
        if cluster { Api::all_with(client.clone(), &ar) } else { Api::namespaced_with(client.clone(), ns, &ar) };
    let obj = api.get_opt(&r.name).await?;
    Ok(obj.map(|o| serde_json::to_value(o).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revision_copies_the_flavor_and_names_the_vm_flavor_and_generation() {
        let vm: VirtualMachine =
            serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "ns", "uid": "vm-1"},
            "spec": {"template": {"spec": {"domain": {"devices": {}}}}}}))
            .unwrap();
        let flavor = json!({"apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": "VirtualMachineClusterInstancetype",
            "metadata": {"name": "u1.small", "uid": "abcd-ef01-2345", "generation": 3, "resourceVersion": "9"},
            "spec": {"cpu": {"guest": 2}, "memory": {"guest": "300Mi"}}});
        let rev = revision(&vm, &flavor);
        assert_eq!(rev.metadata.name.as_deref(), Some("web-u1.small-abcdef01-3"));
        assert_eq!(rev.revision, Some(3));
        let it: InstancetypeSpec = spec_of(&rev).unwrap();
        assert_eq!(it.cpu.guest, 2);
        let out = expanded(&vm, Some(&it), None);
        assert_eq!(out.spec.template.spec.domain.cpu.and_then(|c| c.sockets), Some(2));
        assert!(rev.data.0["metadata"].get("resourceVersion").is_none(), "only what identifies it");
    }
}
