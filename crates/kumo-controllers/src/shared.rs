//! One watch of a kind for every controller in the process: a store they all read, and a fan-out of the objects
//! it sees change, deleted ones included. Each controller watching VMIs on its own would keep its own copy of
//! every VMI and decode every change again (six watches of 300,000 VMIs in one server).
//!
//! kube-rs' own shared streams hand out references looked up in the store when polled, so a deleted object
//! never reaches its owner's controller; this one hands out the objects themselves.

use crate::swept::Swept;
use futures::{stream, Stream, StreamExt};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast::{self, error::RecvError};

/// Changes buffered per subscriber before it counts as fallen behind (and is handed every object again): a
/// burst of thousands of VMIs must fit, each entry being one pointer.
const BUFFER: usize = 1 << 16;

#[derive(Clone)]
pub struct Shared<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    tx: broadcast::Sender<Update<K>>,
    owners: Arc<Mutex<Owners<K>>>,
    /// Whether the store holds a whole list. Wait on this, not on `Store::wait_until_ready`: that wakes only the
    /// last of several waiters (a oneshot underneath), and the controllers' runners wait on it too.
    synced: tokio::sync::watch::Receiver<bool>,
}

/// The objects of each controller (by its uid), and those of none by namespace: a replica set reads its own
/// VMIs and the orphans it may adopt instead of every VMI (quadratic at 300,000 VMIs).
struct Owners<K: Resource<DynamicType = ()>> {
    by_owner: HashMap<String, HashSet<ObjectRef<K>>>,
    orphans: HashMap<String, HashSet<ObjectRef<K>>>,
    /// Where each object is filed: its controller's uid, or None (an orphan).
    filed: HashMap<ObjectRef<K>, Option<String>>,
}

impl<K: Resource<DynamicType = ()>> Default for Owners<K> {
    fn default() -> Self {
        Owners { by_owner: HashMap::new(), orphans: HashMap::new(), filed: HashMap::new() }
    }
}

fn controller_of(meta: &kube::api::ObjectMeta) -> Option<String> {
    meta.owner_references.iter().flatten().find(|o| o.controller == Some(true)).map(|o| o.uid.clone())
}

impl<K: Resource<DynamicType = ()>> Owners<K> {
    /// Every object again, from a full list.
    fn refile(&mut self, all: Vec<Arc<K>>) {
        *self = Owners::default();
        all.iter().for_each(|o| self.file(ObjectRef::from_obj(&**o), Some(o)));
    }

    /// Files `r` under `current` (its newest state; None: gone).
    fn file(&mut self, r: ObjectRef<K>, current: Option<&K>) {
        let ns = r.namespace.clone().unwrap_or_default();
        match self.filed.remove(&r) {
            Some(Some(owner)) => {
                if let Some(set) = self.by_owner.get_mut(&owner) {
                    set.remove(&r);
                    if set.is_empty() {
                        self.by_owner.remove(&owner);
                    }
                }
            }
            Some(None) => {
                if let Some(set) = self.orphans.get_mut(&ns) {
                    set.remove(&r);
                    if set.is_empty() {
                        self.orphans.remove(&ns);
                    }
                }
            }
            None => {}
        }
        let Some(current) = current else { return };
        let owner = controller_of(current.meta());
        match &owner {
            Some(o) => self.by_owner.entry(o.clone()).or_default().insert(r.clone()),
            None => self.orphans.entry(ns).or_default().insert(r.clone()),
        };
        self.filed.insert(r, owner);
    }
}

impl<K> Shared<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    /// The shared watch of every `K` in `api`, and the future that feeds it (poll it with the controllers that
    /// subscribe; subscribe before it first runs to see the initial list).
    pub fn new(api: Api<K>) -> (Self, impl Future<Output = ()> + Send) {
        let (store, writer) = reflector::store();
        let (tx, _) = broadcast::channel(BUFFER);
        let owners: Arc<Mutex<Owners<K>>> = Default::default();
        let (feed_tx, feed_owners, feed_store) = (tx.clone(), owners.clone(), store.clone());
        let (synced_tx, synced) = tokio::sync::watch::channel(false);
        // Changes reach subscribers once the store holds them. During a (re)list the store still holds what it
        // had until the list is whole: then subscribers are told to look at the store afresh, and the owner
        // index is rebuilt from it (what a relist no longer shows was deleted unseen).
        let feed = watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(crate::reflect::slim)
            .reflect(writer)
            .for_each(move |ev| {
                match ev {
                    // Neither sent nor filed: the list's end sends every subscriber to the store and refiles
                    // it (the store itself takes the list only then). Sent one by one as well, a restart at
                    // 150,000 VMIs put them all through the fan-out, left a subscriber 84,505 behind, and so
                    // had it read the store twice.
                    Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                    Ok(watcher::Event::Apply(o)) => {
                        let r = ObjectRef::from_obj(&o);
                        feed_owners.lock().expect("lock").file(r.clone(), Some(&o));
                        // The store's own copy when it holds this version: shared instead of one more.
                        let held =
                            feed_store.get(&r).filter(|c| c.meta().resource_version == o.meta().resource_version);
                        let _ = feed_tx.send(Update::Changed(held.unwrap_or_else(|| Arc::new(o))));
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        feed_owners.lock().expect("lock").file(ObjectRef::from_obj(&o), None);
                        let _ = feed_tx.send(Update::Changed(Arc::new(o)));
                    }
                    Ok(watcher::Event::InitDone) => {
                        let all = feed_store.state();
                        tracing::info!(kind = K::kind(&()).as_ref(), objects = all.len(), "shared cache listed");
                        feed_owners.lock().expect("lock").refile(all);
                        synced_tx.send_replace(true);
                        let _ = feed_tx.send(Update::Relist);
                    }
                    // The watcher retries with backoff; said, since every controller of the kind waits meanwhile.
                    Err(e) => tracing::warn!(kind = K::kind(&()).as_ref(), "shared cache watch: {e}; retrying"),
                }
                std::future::ready(())
            });
        (Shared { store, tx, owners, synced }, feed)
    }

    /// Waits until the store holds a whole list (any number of waiters).
    pub async fn synced(&self) {
        wait_synced(self.synced.clone()).await
    }

    /// What [`Shared::synced`] waits on, for a context that keeps no `Shared`.
    pub fn synced_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.synced.clone()
    }

    /// The objects whose controller is `owner` (a uid), and those in `namespace` with no controller, as the
    /// store holds them.
    pub fn owned_or_orphaned(&self, owner: &str, namespace: &str) -> Vec<Arc<K>> {
        let mut owners = self.owners.lock().expect("lock");
        let (mut found, mut gone) = (vec![], vec![]);
        let mine = owners.by_owner.get(owner).into_iter().flatten();
        for r in mine.chain(owners.orphans.get(namespace).into_iter().flatten()) {
            match self.store.get(r) {
                Some(o) => found.push(o),
                None => gone.push(r.clone()),
            }
        }
        // Filed but no longer in the store (the index is rebuilt at each relist; this only tidies between).
        gone.into_iter().for_each(|r| owners.file(r, None));
        found
    }

    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// The objects seen changing from now on. A subscriber that fell behind gets every object in the store
    /// again, as after a relist (reconciles are idempotent; a missed change would be lost instead).
    pub fn changes(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let store = self.store.clone();
        self.updates()
            .map(move |u| match u {
                Update::Changed(o) => vec![o],
                Update::Relist => store.state(),
            })
            .flat_map(stream::iter)
    }

    /// The owners of kind `O` of the objects seen changing, each at most once per `every` (see
    /// [`crate::throttle`]): for a controller whose reconcile reads all its objects, as a replica set does.
    pub fn owner_changes<O>(&self, every: std::time::Duration) -> impl Stream<Item = ObjectRef<O>> + Send + 'static
    where
        O: Resource<DynamicType = ()> + Send + 'static,
    {
        let owners = self.changes().flat_map(|o| {
            let ns = o.meta().namespace.as_deref();
            let refs: Vec<ObjectRef<O>> =
                o.owner_references().iter().filter_map(|r| ObjectRef::from_owner_ref(ns, r, ())).collect();
            stream::iter(refs)
        });
        crate::throttle::throttled(owners, every)
    }

    /// The changes from now on, and when this subscriber fell behind and missed some (deletions among them),
    /// for a subscriber that keeps its own view of the objects. A subscriber that comes after the first list
    /// (its controller's task started after the feed's) starts by reading the store, as it would have at the
    /// end of that list.
    pub fn updates(&self) -> impl Stream<Item = Update<K>> + Send + 'static {
        let rx = self.tx.subscribe();
        let listed = *self.synced.borrow();
        let first = stream::iter(listed.then_some(Update::Relist));
        first.chain(stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(u) => Some((u, rx)),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!("a controller fell {missed} changes behind; it looks at every object again");
                    Some((Update::Relist, rx))
                }
                Err(RecvError::Closed) => None,
            }
        }))
    }
}

/// What a subscriber hears.
pub enum Update<K> {
    /// The object changed (or was deleted: the store no longer has it).
    Changed(Arc<K>),
    /// The store was listed afresh, or this subscriber missed changes: read the store afresh.
    Relist,
}

impl<K> Clone for Update<K> {
    fn clone(&self) -> Self {
        match self {
            Update::Changed(o) => Update::Changed(o.clone()),
            Update::Relist => Update::Relist,
        }
    }
}

/// Versions of objects this process wrote, which its cache may not show yet. A change to an object wakes its
/// reconcile again while the write the reconcile made is still on its way back through the watch: planned from
/// the older version, the next write met a 409 and the object was read back (two requests more per VMI). A
/// reconcile of a version older than one written waits for the watch to bring the newer one instead.
pub struct Written {
    by_uid: Mutex<Swept<String, Wrote>>,
}

impl Default for Written {
    fn default() -> Self {
        Written { by_uid: Mutex::new(Swept::new(10_000)) }
    }
}

/// The newest resourceVersion written to one object, when, and whether another write of this process is on
/// its way (then that version is stale as well).
struct Wrote {
    version: u64,
    at: std::time::Instant,
    more_to_come: bool,
}

/// How long a written version is awaited: the watch brings it in far less, unless it broke (a relist then shows
/// at least that version anyway).
const WRITTEN_TTL: std::time::Duration = std::time::Duration::from_secs(30);

fn uid_and_version(meta: &kube::api::ObjectMeta) -> Option<(&String, u64)> {
    Some((meta.uid.as_ref()?, meta.resource_version.as_ref()?.parse().ok()?))
}

impl Written {
    /// Notes that `meta` (an object as a write returned it) is in the store.
    pub fn wrote(&self, meta: &kube::api::ObjectMeta) {
        self.note(meta, false);
    }

    /// Notes that `meta` is in the store and that this process is about to write the object again: until
    /// then `meta`'s own version counts as stale too, so no other reconcile plans from it (the scheduler's
    /// label follows its status write, and the lifecycle controller woken by the status would label it as
    /// well and meet a conflict). [`Written::wrote`] of the next write, or [`Written::withdraw`], ends it.
    pub fn wrote_more_to_come(&self, meta: &kube::api::ObjectMeta) {
        self.note(meta, true);
    }

    fn note(&self, meta: &kube::api::ObjectMeta, more_to_come: bool) {
        let Some((uid, version)) = uid_and_version(meta) else { return };
        let mut by_uid = self.by_uid.lock().expect("lock");
        by_uid.sweep(|_, w| w.at.elapsed() < WRITTEN_TTL);
        let at = std::time::Instant::now();
        let e = by_uid.entry(uid.clone()).or_insert(Wrote { version, at, more_to_come });
        if version >= e.version {
            *e = Wrote { version, at, more_to_come };
        }
    }

    /// The write promised by [`Written::wrote_more_to_come`] for `meta` will not come: `meta` is current again.
    pub fn withdraw(&self, meta: &kube::api::ObjectMeta) {
        let Some((uid, version)) = uid_and_version(meta) else { return };
        if let Some(e) = self.by_uid.lock().expect("lock").get_mut(uid).filter(|w| w.version == version) {
            e.more_to_come = false;
        }
    }

    /// Whether `meta` is older than a version this process wrote (and forgets versions the cache has shown).
    pub fn is_stale(&self, meta: &kube::api::ObjectMeta) -> bool {
        let Some((uid, version)) = uid_and_version(meta) else { return false };
        let mut by_uid = self.by_uid.lock().expect("lock");
        match by_uid.get(uid) {
            Some(w)
                if w.at.elapsed() < WRITTEN_TTL
                    && (version < w.version || (version == w.version && w.more_to_come)) =>
            {
                true
            }
            Some(_) => {
                by_uid.remove(uid);
                false
            }
            None => false,
        }
    }
}

/// Waits until `store` holds a whole list, for any number of waiters at once. kube-rs'
/// `Store::wait_until_ready` wakes only the last of several waiting on it (the scheduler's concurrent reconciles
/// after a restart: the others hung until their deadline); asking again each moment finds it ready.
pub async fn store_ready<K>(store: &Store<K>) -> Result<(), reflector::store::WriterDropped>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    loop {
        if let Ok(r) = tokio::time::timeout(std::time::Duration::from_millis(100), store.wait_until_ready()).await {
            return r;
        }
    }
}

/// Waits until `synced` says true (a feed gone counts as never).
pub async fn wait_synced(mut synced: tokio::sync::watch::Receiver<bool>) {
    if synced.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kumo_api::kubevirt::VirtualMachineInstance;
    use serde_json::json;

    fn vmi(name: &str, owner: Option<&str>) -> VirtualMachineInstance {
        let refs = owner.map(|o| {
            json!([{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceReplicaSet",
            "name": "rs", "uid": o, "controller": true}])
        });
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "ns", "ownerReferences": refs},
            "spec": {"domain": {"devices": {}}}}))
        .unwrap()
    }

    fn filed(o: &Owners<VirtualMachineInstance>) -> (usize, usize) {
        (o.by_owner.values().map(HashSet::len).sum(), o.orphans.values().map(HashSet::len).sum())
    }

    fn meta(uid: &str, rv: &str) -> kube::api::ObjectMeta {
        kube::api::ObjectMeta { uid: Some(uid.into()), resource_version: Some(rv.into()), ..Default::default() }
    }

    #[test]
    fn a_version_older_than_one_written_is_stale_until_the_cache_shows_it() {
        let w = Written::default();
        assert!(!w.is_stale(&meta("a", "5")), "nothing written");
        w.wrote(&meta("a", "7"));
        w.wrote(&meta("a", "6"));
        assert!(w.is_stale(&meta("a", "5")) && w.is_stale(&meta("a", "6")), "older than the newest write");
        assert!(!w.is_stale(&meta("b", "5")), "another object");
        assert!(!w.is_stale(&meta("a", "7")), "the cache shows the write");
        assert!(!w.is_stale(&meta("a", "5")), "forgotten once shown");
        assert!(!w.is_stale(&meta("a", "x")), "an unreadable version is never stale");
    }

    #[test]
    fn a_version_with_a_write_to_follow_is_stale_until_that_write_or_its_withdrawal() {
        let w = Written::default();
        w.wrote_more_to_come(&meta("a", "7"));
        assert!(w.is_stale(&meta("a", "7")), "its own write is on the way");
        w.wrote(&meta("a", "9"));
        assert!(w.is_stale(&meta("a", "8")) && !w.is_stale(&meta("a", "9")), "the next write ends the wait");
        w.wrote_more_to_come(&meta("b", "3"));
        w.withdraw(&meta("b", "3"));
        assert!(!w.is_stale(&meta("b", "3")), "withdrawn: the version is current again");
        w.wrote_more_to_come(&meta("c", "4"));
        w.wrote(&meta("c", "6"));
        w.withdraw(&meta("c", "4"));
        assert!(w.is_stale(&meta("c", "4")), "a withdrawal leaves a newer write alone");
    }

    #[test]
    fn objects_are_filed_under_their_controller_or_as_orphans_and_refiled_on_change() {
        let mut o = Owners::<VirtualMachineInstance>::default();
        let (a, b) = (vmi("a", Some("rs1")), vmi("b", None));
        o.file(ObjectRef::from_obj(&a), Some(&a));
        o.file(ObjectRef::from_obj(&b), Some(&b));
        assert_eq!(filed(&o), (1, 1));
        // Adopted: moves from the orphans to its owner; released: back.
        let adopted = vmi("b", Some("rs1"));
        o.file(ObjectRef::from_obj(&adopted), Some(&adopted));
        assert_eq!((filed(&o), o.by_owner["rs1"].len()), ((2, 0), 2));
        o.file(ObjectRef::from_obj(&b), Some(&b));
        assert_eq!(filed(&o), (1, 1));
        o.file(ObjectRef::from_obj(&a), None);
        o.file(ObjectRef::from_obj(&b), None);
        assert_eq!(filed(&o), (0, 0));
        assert!(o.by_owner.is_empty() && o.orphans.is_empty() && o.filed.is_empty(), "nothing left behind");
    }

    #[tokio::test]
    async fn a_subscriber_after_the_first_list_starts_by_reading_the_store() {
        let (store, _writer) = reflector::store();
        let (tx, _) = broadcast::channel(4);
        let (synced_tx, synced) = tokio::sync::watch::channel(false);
        let shared = Shared::<VirtualMachineInstance> { store, tx: tx.clone(), owners: Default::default(), synced };
        let early = shared.updates();
        synced_tx.send_replace(true);
        let late = shared.updates();
        let _ = tx.send(Update::Changed(Arc::new(vmi("a", None))));
        drop((tx, shared));
        let kinds = |u: Vec<Update<VirtualMachineInstance>>| -> Vec<bool> {
            u.iter().map(|u| matches!(u, Update::Relist)).collect()
        };
        assert_eq!(kinds(early.collect().await), [false], "before the list: its changes only (the feed relists)");
        assert_eq!(kinds(late.collect().await), [true, false], "after it: the store, then the changes");
    }
}
