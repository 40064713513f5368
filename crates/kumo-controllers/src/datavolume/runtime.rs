//! The DataVolume controller's runtime: makes each DataVolume's claim, picks a node for one asked to fill at
//! once, and writes the status [`super::status`] reads off the claim and its volume.

use super::{changed, claim_for, class_of, immediate_node, status, Observed};
use crate::binder::{volume_name, SELECTED_NODE};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use kumo_api::cdi::DataVolume;
use kumo_api::kubevirt::VirtualMachineInstance;
use kumo_events::Recorder;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

struct Ctx {
    client: Client,
    recorder: Recorder,
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct Error(#[from] kube::Error);

pub async fn run(client: Client) {
    let reporter = Reporter { controller: "datavolume-controller".into(), instance: None };
    let ctx = Arc::new(Ctx { recorder: Recorder::new(client.clone(), reporter), client: client.clone() });
    crate::reflect::slim_controller(Api::<DataVolume>::all(client.clone()), watcher::Config::default())
        .owns(Api::<PersistentVolumeClaim>::all(client.clone()), watcher::Config::default())
        // A volume's progress reaches the DataVolume of its claim (same name and namespace).
        .watches(Api::<PersistentVolume>::all(client), watcher::Config::default(), |pv| {
            let r = pv.spec.as_ref()?.claim_ref.clone()?;
            Some(ObjectRef::new(r.name.as_deref()?).within(r.namespace.as_deref()?))
        })
        .run(
            reconcile,
            |_, err: &Error, _| {
                tracing::warn!("datavolume controller: {err}");
                Action::requeue(Duration::from_secs(2))
            },
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

/// The clone source's claim, volume and users, resolved (or why the clone waits).
async fn resolve_clone(
    ctx: &Ctx,
    dv: &DataVolume,
    ns: &str,
    name: &str,
) -> Result<Result<super::clone::Resolved, (&'static str, String)>, Error> {
    let claim = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), ns).get_opt(name).await?;
    let volume = match claim.as_ref().map(volume_name).filter(|v| !v.is_empty()) {
        Some(v) => Api::<PersistentVolume>::all(ctx.client.clone()).get_opt(v).await?,
        None => None,
    };
    let users = Api::<VirtualMachineInstance>::namespaced(ctx.client.clone(), ns).list(&ListParams::default()).await?;
    Ok(super::clone::resolve(dv, claim.as_ref(), volume.as_ref(), &users.items))
}

async fn reconcile(dv: Arc<DataVolume>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if dv.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = dv.namespace().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let mut claim = claims.get_opt(&dv.name_any()).await?;
    if claim.is_none() {
        let new = match super::clone::source_of(&dv) {
            None => claim_for(&dv),
            Some((sns, sname)) => match resolve_clone(&ctx, &dv, &sns, &sname).await? {
                Ok(resolved) => super::clone::claim_for(&dv, &resolved),
                Err((reason, why)) => {
                    crate::runtime::record(&ctx.recorder, &*dv, EventType::Warning, reason, "Clone", why).await;
                    return Ok(Action::requeue(Duration::from_secs(5)));
                }
            },
        };
        match claims.create(&PostParams::default(), &new).await {
            Ok(c) => claim = Some(c),
            Err(kube::Error::Api(s)) if s.code == 409 => return Ok(Action::requeue(Duration::ZERO)),
            Err(e) => return Err(e.into()),
        }
    }
    let classes = Api::<StorageClass>::all(ctx.client.clone()).list(&ListParams::default()).await?.items;
    let class = class_of(claim.as_ref(), &dv, &classes);
    let c = claim.as_ref().expect("found or made above");
    if super::owns(&dv, c) {
        let nodes = Api::<Node>::all(ctx.client.clone()).list(&ListParams::default()).await?.items;
        if let Some(node) = immediate_node(&dv, c, class, &nodes) {
            let patch = json!({"metadata": {"annotations": {SELECTED_NODE: node}}});
            claims.patch(&c.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
            return Ok(Action::requeue(Duration::ZERO));
        }
    }
    let bound = claim.as_ref().map(volume_name).filter(|v| !v.is_empty());
    let volume = match bound {
        Some(v) => Api::<PersistentVolume>::all(ctx.client.clone()).get_opt(v).await?,
        None => None,
    };
    let now = kumo_api::meta::now_rfc3339();
    let seen = Observed { claim: claim.as_ref(), volume: volume.as_ref(), class };
    let (st, event) = status(&dv, &seen, &now);
    let pod = super::pod_annotations(&dv, st.phase.as_deref().unwrap_or_default());
    if let (Some(c), Some(want)) = (claim.as_ref().filter(|c| super::owns(&dv, c)), pod.as_object()) {
        let stale = want.iter().any(|(k, v)| c.annotations().get(k).map(String::as_str) != v.as_str());
        if stale {
            let patch = json!({"metadata": {"annotations": pod}});
            claims.patch(&c.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
        }
    }
    if dv.status.as_ref().is_none_or(|old| changed(old, &st)) {
        let api: Api<DataVolume> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"status": st});
        match api.patch_status(&dv.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Action::await_change()),
            r => r.map(|_| ())?,
        }
    }
    if let Some((warning, reason, note)) = event {
        let type_ = if warning { EventType::Warning } else { EventType::Normal };
        crate::runtime::record(&ctx.recorder, &*dv, type_, &reason, &reason, note).await;
    }
    // A class or node may appear that lets a waiting DataVolume go on.
    Ok(Action::requeue(Duration::from_secs(30)))
}
