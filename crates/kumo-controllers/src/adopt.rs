//! Adoption and release of objects by their groups (replica sets, pools), as Kubernetes' controller ref
//! manager does: each change of owners is a compare-and-swap on the object's resourceVersion.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, Patch, PatchParams};
use kube::Resource;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::runtime::not_found_or_conflict;

/// Rewrites the owners of object `name` (if it is still the one with `uid`) as `change` says, guarded by its
/// resourceVersion; `change` returns false to leave it. True when written. (Adoption and release by groups.)
async fn set_owners<K>(
    api: &Api<K>,
    name: &str,
    uid: &str,
    change: impl FnOnce(&mut Vec<OwnerReference>) -> bool,
) -> Result<bool, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let Some(cur) = api.get_opt(name).await? else { return Ok(false) };
    let mut owners = cur.meta().owner_references.clone().unwrap_or_default();
    if cur.meta().uid.as_deref() != Some(uid) || !change(&mut owners) {
        return Ok(false);
    }
    let patch = json!({"metadata": {"ownerReferences": owners, "resourceVersion": cur.meta().resource_version}});
    match api.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(_) => Ok(true),
        Err(e) if not_found_or_conflict(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A group (replica set, pool) takes the orphans in `adopt` (only while still nobody's: one another controller
/// took meanwhile is left alone) and lets go of `release`, each by (name, uid).
pub(crate) async fn adopt_and_release<K>(
    api: &Api<K>,
    owner: &OwnerReference,
    adopt: &[(String, String)],
    release: &[(String, String)],
) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    for (name, uid) in adopt {
        let take = |owners: &mut Vec<OwnerReference>| {
            if owners.iter().any(|o| o.controller == Some(true)) {
                return false;
            }
            owners.push(owner.clone());
            true
        };
        if set_owners(api, name, uid, take).await? {
            tracing::info!(owner = %owner.name, object = %name, "adopted");
        }
    }
    for (name, uid) in release {
        let give_up = |owners: &mut Vec<OwnerReference>| {
            owners.retain(|o| o.uid != owner.uid);
            true
        };
        if set_owners(api, name, uid, give_up).await? {
            tracing::info!(owner = %owner.name, object = %name, "released");
        }
    }
    Ok(())
}
