//! Built-in background work that Kubernetes' controller-manager would do for the kinds kumo serves:
//! garbage collection through ownerReferences (Background, Foreground, Orphan), namespace deletion, and
//! periodic compaction of store history.
//!
//! These run inside the API server and use its own delete/update paths, so they obey the same rules as
//! clients (finalizers, preconditions).

use crate::handlers::body::DeleteOptions;
use crate::handlers::delete::{delete_object, remove_finalizer};
use crate::handlers::ApiServer;
use crate::objects::decode;
use kumo_api::meta;
use kumo_store::RangeRequest;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

pub fn spawn_all(api: Arc<ApiServer>, compaction_interval: Duration) {
    let gc_api = api.clone();
    tokio::spawn(async move {
        loop {
            match collect_once(&gc_api).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => tracing::warn!("garbage collector: {e}"),
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), gc_api.gc_kick.notified()).await;
        }
    });
    tokio::spawn(async move {
        // Keep one interval of history: compact to the revision seen one tick ago.
        let mut previous = None;
        loop {
            tokio::time::sleep(compaction_interval).await;
            let store = &api.objects.store;
            if let Some(rev) = previous {
                match store.compact(rev).await {
                    Ok(()) => api.cache.compacted(rev),
                    Err(e) => tracing::warn!("compaction to {rev}: {e}"),
                }
            }
            previous = store.current_revision().await.ok();
        }
    });
}

struct Entry {
    key: String,
    obj: Value,
}

/// One pass over every object; returns whether it changed anything (so the caller runs another pass).
pub async fn collect_once(api: &ApiServer) -> anyhow::Result<bool> {
    let all = api.objects.store.range(RangeRequest { prefix: "/registry/".into(), ..Default::default() }).await?;
    let entries: Vec<Entry> =
        all.kvs.iter().filter_map(|kv| Some(Entry { key: kv.key.clone(), obj: decode(kv).ok()? })).collect();
    let uids: HashSet<&str> = entries.iter().map(|e| meta::uid(&e.obj)).collect();
    let mut dependents: HashMap<&str, Vec<&Entry>> = HashMap::new();
    for e in &entries {
        for owner in e.obj.pointer("/metadata/ownerReferences").and_then(Value::as_array).into_iter().flatten() {
            if let Some(uid) = owner.get("uid").and_then(Value::as_str) {
                dependents.entry(uid).or_default().push(e);
            }
        }
    }
    let mut changed = false;
    let background = DeleteOptions { propagation: Some("Background".into()), ..Default::default() };
    for e in &entries {
        let Some(def) = api.def_for_key(&e.key) else { continue };
        let uid = meta::uid(&e.obj);
        let deps = dependents.get(uid).map(Vec::as_slice).unwrap_or(&[]);
        if meta::deletion_timestamp(&e.obj).is_some() {
            let fins = meta::finalizers(&e.obj);
            if fins.iter().any(|f| f == "foregroundDeletion") {
                if deps.is_empty() {
                    ignore_gone(remove_finalizer(api, &def, &e.obj, "foregroundDeletion").await)?;
                    changed = true;
                } else {
                    for d in deps.iter().filter(|d| meta::deletion_timestamp(&d.obj).is_none()) {
                        changed |= delete_entry(
                            api,
                            d,
                            &DeleteOptions { propagation: Some("Foreground".into()), ..Default::default() },
                        )
                        .await?;
                    }
                }
            } else if fins.iter().any(|f| f == "orphan") {
                for d in deps {
                    drop_owner(api, d, uid).await?;
                }
                ignore_gone(remove_finalizer(api, &def, &e.obj, "orphan").await)?;
                changed = true;
            }
            if def.kind == "Namespace" && def.group.is_empty() {
                changed |= finish_namespace(api, &entries, &e.obj, &background).await?;
            }
            continue;
        }
        let owners = meta::owner_uids(&e.obj);
        if !owners.is_empty() && owners.iter().all(|o| !uids.contains(o.as_str())) {
            changed |= delete_entry(api, e, &background).await?;
        }
    }
    Ok(changed)
}

fn ignore_gone(r: Result<(), kumo_api::ApiError>) -> anyhow::Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn delete_entry(api: &ApiServer, e: &Entry, opts: &DeleteOptions) -> anyhow::Result<bool> {
    let Some(def) = api.def_for_key(&e.key) else { return Ok(false) };
    match delete_object(api, &def, meta::namespace(&e.obj), meta::name(&e.obj), opts).await {
        Ok(_) => Ok(true),
        Err(err) if err.code == 404 || err.code == 409 => Ok(false),
        Err(err) => Err(err.into()),
    }
}

async fn drop_owner(api: &ApiServer, e: &Entry, owner_uid: &str) -> anyhow::Result<bool> {
    let Some(def) = api.def_for_key(&e.key) else { return Ok(false) };
    let mut next = e.obj.clone();
    let refs: Vec<Value> = meta::owner_refs(&e.obj)
        .into_iter()
        .filter(|r| r.get("uid").and_then(Value::as_str) != Some(owner_uid))
        .collect();
    if refs.is_empty() {
        meta::remove_meta(&mut next, "ownerReferences");
    } else {
        meta::set_meta(&mut next, "ownerReferences", json!(refs));
    }
    let rv = crate::objects::parse_rv(meta::resource_version(&e.obj))?;
    match api.objects.update(&def, &next, rv).await {
        Ok(_) => Ok(true),
        Err(err) if err.code == 404 || err.code == 409 => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// Deletes everything in a terminating namespace, then releases the namespace's own finalizer.
async fn finish_namespace(
    api: &ApiServer,
    entries: &[Entry],
    ns: &Value,
    opts: &DeleteOptions,
) -> anyhow::Result<bool> {
    let name = meta::name(ns);
    let contents: Vec<&Entry> = entries.iter().filter(|e| meta::namespace(&e.obj) == Some(name)).collect();
    let mut changed = false;
    for e in &contents {
        if meta::deletion_timestamp(&e.obj).is_none() {
            changed |= delete_entry(api, e, opts).await?;
        }
    }
    let spec_fins = ns.pointer("/spec/finalizers").and_then(Value::as_array).map(Vec::len).unwrap_or(0);
    if contents.is_empty() && spec_fins > 0 {
        let def = api.registry.get("", "v1", "namespaces").expect("built-in");
        let mut next = ns.clone();
        next["spec"]["finalizers"] = json!([]);
        let rv = crate::objects::parse_rv(meta::resource_version(ns))?;
        let result = if meta::finalizers(ns).is_empty() {
            api.objects.delete(&def, None, name, Some(rv)).await.map(|_| ())
        } else {
            api.objects.update(&def, &next, rv).await.map(|_| ())
        };
        ignore_gone(result)?;
        changed = true;
    }
    Ok(changed)
}
