//! Built-in background work that Kubernetes' controller-manager would do for the kinds kumo serves:
//! garbage collection through ownerReferences (Background, Foreground, Orphan), namespace deletion, CRD
//! cleanup, and periodic compaction of store history — on the elected leader only. Serving CRDs is not here:
//! every replica follows them itself ([`crate::state::follow_crds`]).
//!
//! The collector keeps a small index (key → uid, owner → dependents, objects being deleted) fed by the watch
//! cache, so it only looks at objects a change concerns: cost follows the rate of change, not store size.
//! It acts through the API server's own delete/update paths, so it obeys the same rules as clients.

use crate::objects::decode;
use crate::rest::{self, remove_finalizer, DeleteOptions};
use crate::state::ApiServer;
use futures::StreamExt;
use kumo_api::meta;
use kumo_store::RangeRequest;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Starts the loops. They act only while `leader` is true (one replica of a cluster runs them; see
/// `kumo_controllers::leader`), and stop acting as soon as it turns false.
pub fn spawn_all(api: Arc<ApiServer>, compaction_interval: Duration, leader: watch::Receiver<bool>) {
    let gc_api = api.clone();
    let mut gc_leader = leader.clone();
    tokio::spawn(async move {
        // A collector that keeps failing (an unreadable object, a store that refuses writes) retries slower.
        let mut pause = Duration::from_millis(200);
        loop {
            if gc_leader.wait_for(|l| *l).await.map(|_| ()).is_err() {
                return;
            }
            let started = tokio::time::Instant::now();
            tokio::select! {
                r = run_collector(&gc_api) => match r {
                    Err(e) => {
                        if started.elapsed() > Duration::from_secs(60) {
                            pause = Duration::from_millis(200);
                        }
                        tracing::warn!("garbage collector restarting in {pause:?}: {e}");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(30));
                    }
                    Ok(()) => pause = Duration::from_millis(200),
                },
                _ = async { gc_leader.wait_for(|l| !*l).await.map(|_| ()) } => tracing::info!("garbage collector paused: not the leader"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    tokio::spawn(async move {
        // Keep one interval of history: compact to the revision seen one tick ago.
        let mut previous: Option<(i64, Option<i64>)> = None;
        loop {
            tokio::time::sleep(compaction_interval).await;
            if !*leader.borrow() {
                previous = None;
                continue;
            }
            let (store, events) = (&api.objects.store, &api.objects.events);
            if let Some((rev, events_rev)) = previous {
                match store.compact(rev).await {
                    Ok(()) => api.cache.compacted(rev),
                    Err(e) => tracing::warn!("compaction to {rev}: {e}"),
                }
                if let Some(rev) = events_rev.filter(|_| api.objects.events_apart()) {
                    match events.compact(rev).await {
                        Ok(()) => api.events_cache.compacted(rev),
                        Err(e) => tracing::warn!("compaction of the events store to {rev}: {e}"),
                    }
                }
            }
            previous = match store.current_revision().await {
                Ok(rev) => Some((rev, events.current_revision().await.ok())),
                Err(_) => None,
            };
        }
    });
}

/// What the collector knows about every object: enough to find dependents and missing owners.
#[derive(Default)]
struct Index {
    uid_of: HashMap<String, String>,
    key_of: HashMap<String, String>,
    /// owner uid → keys of objects naming it in ownerReferences.
    dependents: HashMap<String, BTreeSet<String>>,
    /// key → owner uids.
    owners: HashMap<String, Vec<String>>,
    /// Namespaces being deleted.
    terminating: HashSet<String>,
    /// Keys of objects with a deletionTimestamp (finalizers pending), re-checked periodically.
    deleting: BTreeSet<String>,
}

impl Index {
    fn put(&mut self, key: &str, obj: &Value) {
        self.remove(key);
        let uid = meta::uid(obj).to_string();
        self.uid_of.insert(key.to_string(), uid.clone());
        self.key_of.insert(uid, key.to_string());
        let owners = meta::owner_uids(obj);
        for o in &owners {
            self.dependents.entry(o.clone()).or_default().insert(key.to_string());
        }
        if !owners.is_empty() {
            self.owners.insert(key.to_string(), owners);
        }
        if meta::deletion_timestamp(obj).is_some() {
            self.deleting.insert(key.to_string());
            if is_namespace_key(key) {
                self.terminating.insert(meta::name(obj).to_string());
            }
        }
    }

    fn remove(&mut self, key: &str) {
        self.deleting.remove(key);
        if let Some(uid) = self.uid_of.remove(key) {
            if self.key_of.get(&uid).is_some_and(|k| k == key) {
                self.key_of.remove(&uid);
            }
        }
        for o in self.owners.remove(key).unwrap_or_default() {
            if let Some(d) = self.dependents.get_mut(&o) {
                d.remove(key);
                if d.is_empty() {
                    self.dependents.remove(&o);
                }
            }
        }
        if is_namespace_key(key) {
            self.terminating.remove(key.rsplit('/').next().unwrap_or(""));
        }
    }

    fn orphaned(&self, key: &str) -> bool {
        self.owners.get(key).is_some_and(|os| os.iter().all(|o| !self.key_of.contains_key(o)))
    }
}

fn is_namespace_key(key: &str) -> bool {
    key.starts_with("/registry/core/namespaces/")
}

/// Namespace of a namespaced key `/registry/{group}/{plural}/{ns}/{name}`.
fn key_namespace(key: &str) -> Option<&str> {
    let parts: Vec<&str> = key.strip_prefix("/registry/")?.split('/').collect();
    (parts.len() == 4).then(|| parts[2])
}

async fn run_collector(api: &ApiServer) -> anyhow::Result<()> {
    let mut index = Index::default();
    let mut dirty: BTreeSet<String> = BTreeSet::new();
    let mut take = |key: &str, obj: &Value| {
        index.put(key, obj);
        if meta::deletion_timestamp(obj).is_some() {
            dirty.insert(key.to_string());
        }
    };
    let revision = match api.cache.listing("/registry/") {
        // The watch cache holds every object: one at a time decoded, the index is all that stays.
        Some(listing) => {
            for (i, ev) in listing.items.iter().enumerate() {
                take(&ev.key, &ev.object());
                if i % 1000 == 999 {
                    // Hundreds of thousands of objects: the other tasks of this thread go on meanwhile.
                    tokio::task::yield_now().await;
                }
            }
            listing.revision
        }
        None => {
            // Read a page at a time at one revision, never every object at once.
            let (mut revision, mut start_after) = (None, None);
            loop {
                let req =
                    RangeRequest { prefix: "/registry/".into(), start_after, limit: 1000, revision, uncounted: true };
                let page = api.objects.store.range(req).await?;
                revision = Some(page.revision);
                for kv in &page.kvs {
                    if let Ok(obj) = decode(kv) {
                        take(&kv.key, &obj);
                    }
                }
                start_after = page.kvs.last().map(|kv| kv.key.clone());
                if !page.more || start_after.is_none() {
                    break;
                }
            }
            revision.unwrap_or(0)
        }
    };
    dirty.extend(index.owners.keys().filter(|k| index.orphaned(k)).cloned());
    let mut events = api.cache.watch("/registry/", revision).await.map_err(|g| anyhow::anyhow!("watch: {g:?}"))?;
    // The newest change taken in: where the watch resumes when it falls behind.
    let mut seen = revision;
    loop {
        for key in std::mem::take(&mut dirty) {
            if let Err(e) = collect_key(api, &index, &key).await {
                tracing::warn!("garbage collector on {key}: {e}");
            }
        }
        // Wait for a change; re-check everything pending now and then in case an action raced a write.
        let ev = match tokio::time::timeout(Duration::from_secs(10), events.next()).await {
            Ok(Some(Ok(ev))) => ev,
            // Dropped for falling behind (a burst): resume from what was taken in, from the cache's history or
            // the store's. Listing every object again instead cost seconds of CPU at the worst moment, and fell
            // behind again under the same burst.
            Ok(Some(Err(g))) => {
                events = api
                    .cache
                    .watch("/registry/", seen)
                    .await
                    .map_err(|_| anyhow::anyhow!("watch fell behind: {g:?}"))?;
                tracing::info!("garbage collector's watch fell behind at revision {seen}: resumed");
                continue;
            }
            Ok(None) => anyhow::bail!("watch ended"),
            Err(_) => {
                dirty.extend(index.owners.keys().filter(|k| index.orphaned(k)).cloned());
                dirty.extend(index.deleting.iter().cloned());
                continue;
            }
        };
        seen = ev.revision;
        let object = ev.object();
        let uid = meta::uid(&object).to_string();
        if ev.deleted {
            index.remove(&ev.key);
            // Dependents of a vanished owner may now be orphans; owners waiting in foreground may be done.
            dirty.extend(index.dependents.get(&uid).into_iter().flatten().cloned());
            for o in meta::owner_uids(&object) {
                if let Some(k) = index.key_of.get(&o) {
                    dirty.insert(k.clone());
                }
            }
            if let Some(ns) = key_namespace(&ev.key).filter(|ns| index.terminating.contains(*ns)) {
                dirty.insert(format!("/registry/core/namespaces/{ns}"));
            }
            // The last custom resource of a CRD being deleted releases the CRD.
            if let Some(crd_key) = crd_key_for(&ev.key).filter(|k| index.deleting.contains(k)) {
                dirty.insert(crd_key);
            }
        } else {
            index.put(&ev.key, &object);
            if meta::deletion_timestamp(&object).is_some() || index.orphaned(&ev.key) {
                dirty.insert(ev.key.clone());
            }
            if let Some(ns) = key_namespace(&ev.key).filter(|ns| index.terminating.contains(*ns)) {
                // Content appearing in (or changing within) a terminating namespace is deleted too.
                dirty.insert(format!("/registry/core/namespaces/{ns}"));
            }
        }
    }
}

/// Acts on one object: finalizers of an object being deleted, or deletion of an orphan.
async fn collect_key(api: &ApiServer, index: &Index, key: &str) -> anyhow::Result<()> {
    let Some(def) = api.def_for_key(key) else { return Ok(()) };
    let Some(kv) = api.objects.store_for(key).get(key).await? else { return Ok(()) };
    let obj = decode(&kv)?;
    let uid = meta::uid(&obj);
    let deps: Vec<String> = index.dependents.get(uid).map(|d| d.iter().cloned().collect()).unwrap_or_default();
    if meta::deletion_timestamp(&obj).is_none() {
        if index.orphaned(key) {
            delete_key(api, key, "Background").await?;
        }
        return Ok(());
    }
    let fins = meta::finalizers(&obj);
    if fins.iter().any(|f| f == "foregroundDeletion") {
        if deps.is_empty() {
            ignore_gone(remove_finalizer(api, &def, &obj, "foregroundDeletion").await)?;
        } else {
            for d in &deps {
                delete_key(api, d, "Foreground").await?;
            }
        }
    } else if fins.iter().any(|f| f == "orphan") {
        for d in &deps {
            drop_owner(api, d, uid).await?;
        }
        ignore_gone(remove_finalizer(api, &def, &obj, "orphan").await)?;
    }
    if def.kind == "Namespace" && def.group.is_empty() {
        finish_namespace(api, &obj).await?;
    }
    if key.starts_with(CRD_PREFIX) && fins.iter().any(|f| f == CRD_CLEANUP) {
        // Deleting a CRD deletes every object of its kind first, as Kubernetes does.
        let group = obj.pointer("/spec/group").and_then(Value::as_str).unwrap_or_default();
        let plural = obj.pointer("/spec/names/plural").and_then(Value::as_str).unwrap_or_default();
        let prefix = format!("/registry/{group}/{plural}/");
        let r = api.objects.store.range(RangeRequest { prefix, ..Default::default() }).await?;
        for kv in &r.kvs {
            delete_key(api, &kv.key, "Background").await?;
        }
        if r.kvs.is_empty() {
            ignore_gone(remove_finalizer(api, &def, &obj, CRD_CLEANUP).await)?;
        }
    }
    Ok(())
}

pub(crate) const CRD_PREFIX: &str = "/registry/apiextensions.k8s.io/customresourcedefinitions/";
/// The finalizer Kubernetes puts on CRDs so their custom resources are deleted first.
pub const CRD_CLEANUP: &str = "customresourcecleanup.apiextensions.k8s.io";

/// For a custom resource's key, the key of its CRD (`{plural}.{group}`).
fn crd_key_for(key: &str) -> Option<String> {
    let parts: Vec<&str> = key.strip_prefix("/registry/")?.split('/').collect();
    let (group, plural) = (parts.first()?, parts.get(1)?);
    group.contains('.').then(|| format!("{CRD_PREFIX}{plural}.{group}"))
}

fn ignore_gone(r: Result<(), kumo_api::ApiError>) -> anyhow::Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn delete_key(api: &ApiServer, key: &str, policy: &str) -> anyhow::Result<()> {
    let Some(def) = api.def_for_key(key) else { return Ok(()) };
    let Some(kv) = api.objects.store_for(key).get(key).await? else { return Ok(()) };
    let obj = decode(&kv)?;
    if meta::deletion_timestamp(&obj).is_some() {
        return Ok(());
    }
    let opts = DeleteOptions { propagation: Some(policy.into()), ..Default::default() };
    match rest::delete(api, &def, meta::namespace(&obj), meta::name(&obj), &opts).await {
        Ok(_) => Ok(()),
        Err(err) if err.code == 404 || err.code == 409 => Ok(()),
        Err(err) => Err(err.into()),
    }
}

async fn drop_owner(api: &ApiServer, key: &str, owner_uid: &str) -> anyhow::Result<()> {
    let Some(def) = api.def_for_key(key) else { return Ok(()) };
    let Some(kv) = api.objects.store_for(key).get(key).await? else { return Ok(()) };
    let obj = decode(&kv)?;
    let mut next = obj.clone();
    let refs: Vec<Value> = meta::owner_refs(&obj)
        .into_iter()
        .filter(|r| r.get("uid").and_then(Value::as_str) != Some(owner_uid))
        .collect();
    if refs.is_empty() {
        meta::remove_meta(&mut next, "ownerReferences");
    } else {
        meta::set_meta(&mut next, "ownerReferences", json!(refs));
    }
    ignore_gone(api.objects.update(&def, &next, kv.mod_revision).await.map(|_| ()))
}

/// Deletes everything in a terminating namespace, then releases the namespace's own finalizer.
async fn finish_namespace(api: &ApiServer, ns: &Value) -> anyhow::Result<()> {
    let name = meta::name(ns);
    let mut remaining = 0;
    let mut seen = HashSet::new();
    for def in api.registry.all().into_iter().filter(|d| d.namespaced) {
        if !seen.insert(def.list_prefix(Some(name))) {
            continue;
        }
        let prefix = def.list_prefix(Some(name));
        let r = api.objects.store_for(&prefix).range(RangeRequest { prefix, ..Default::default() }).await?;
        remaining += r.kvs.len();
        for kv in &r.kvs {
            delete_key(api, &kv.key, "Background").await?;
        }
    }
    let spec_fins = ns.pointer("/spec/finalizers").and_then(Value::as_array).map(Vec::len).unwrap_or(0);
    if remaining == 0 && spec_fins > 0 {
        let def = api.registry.get("", "v1", "namespaces").expect("built-in");
        let rv = crate::objects::parse_rv(meta::resource_version(ns))?;
        let result = if meta::finalizers(ns).is_empty() {
            api.objects.delete(&def, None, name, Some(rv)).await.map(|_| ())
        } else {
            let mut next = ns.clone();
            next["spec"]["finalizers"] = json!([]);
            api.objects.update(&def, &next, rv).await.map(|_| ())
        };
        ignore_gone(result)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_tracks_owners_and_orphans() {
        let mut ix = Index::default();
        let owner = json!({"metadata": {"name": "o", "uid": "u1"}});
        let dep = json!({"metadata": {"name": "d", "uid": "u2", "ownerReferences": [{"uid": "u1"}]}});
        ix.put("/registry/core/configmaps/default/o", &owner);
        ix.put("/registry/core/configmaps/default/d", &dep);
        assert!(!ix.orphaned("/registry/core/configmaps/default/d"));
        ix.remove("/registry/core/configmaps/default/o");
        assert!(ix.orphaned("/registry/core/configmaps/default/d"));
        assert_eq!(ix.dependents["u1"].len(), 1);
        ix.remove("/registry/core/configmaps/default/d");
        assert!(ix.dependents.is_empty());
        assert_eq!(key_namespace("/registry/core/configmaps/default/d"), Some("default"));
        assert_eq!(key_namespace("/registry/core/namespaces/default"), None);
    }
}
