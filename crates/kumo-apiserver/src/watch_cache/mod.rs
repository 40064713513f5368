//! The watch cache: one store watch fans out to every API watcher, with the recent history kept in memory
//! so that thousands of watchers (and watchers resuming from a recent resourceVersion) never read the store.

use crate::objects::decode;
use futures::stream::{BoxStream, StreamExt};
use kumo_store::Store;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock, Weak};

mod event;
mod index;
mod routes;
pub use event::CachedEvent;
pub use index::covers as index_covers;
pub use routes::Interest;
use routes::Routes;

/// Why a watch cannot continue: the client must relist.
#[derive(Debug, Clone, PartialEq)]
pub struct Gone {
    pub requested: i64,
    pub oldest: i64,
}

/// How many times the ring's length of events the copies for writes cover.
const RECENT_PER_EVENT: usize = 2;

/// History the ring keeps however many events that is (up to [`MAX_EVENTS`]), as kube-apiserver's watch cache
/// keeps 75 s: a client's watch starts from the revision of the list it just made, and at ten thousand nodes the
/// Lease renewals alone are a thousand events a second. With only the last `capacity` events (seconds), any
/// list taking longer was followed by 410 Gone and a relist, over and over.
const FRESH: std::time::Duration = std::time::Duration::from_secs(75);
/// The most events the ring keeps to cover [`FRESH`].
const MAX_EVENTS: usize = 250_000;

struct Ring {
    events: VecDeque<Arc<CachedEvent>>,
    /// When each of `events` arrived.
    arrived: VecDeque<std::time::Instant>,
    /// Every event with revision > `start` is in `events` (or the store watch must be used).
    start: i64,
    last: i64,
    /// The newest event of each recently changed key: a write finds the object it replaces here instead of
    /// reading the store (see [`WatchCache::newest`]).
    newest: Recent,
    /// Every namespace, and whether it is terminating (None: the initial read failed), so that creating an
    /// object need not read its namespace from the store (Kubernetes' admission uses an informer alike).
    namespaces: Option<HashMap<String, bool>>,
    /// Label indexes as of `last` (None: the initial read failed; lists scan the store instead).
    index: Option<index::LabelIndex>,
}

const NAMESPACES: &str = "/registry/core/namespaces/";

/// The newest event of each key among the last `capacity` events: more than the ring keeps, so that a burst
/// of changes to many objects can still be followed by writes to each, without holding every object.
#[derive(Default)]
struct Recent {
    order: VecDeque<(String, i64)>,
    by_key: HashMap<String, Arc<CachedEvent>>,
}

impl Recent {
    fn note(&mut self, ev: &Arc<CachedEvent>, capacity: usize) {
        self.order.push_back((ev.key.clone(), ev.revision));
        self.by_key.insert(ev.key.clone(), ev.clone());
        while self.order.len() > capacity {
            let Some((key, rev)) = self.order.pop_front() else { break };
            if self.by_key.get(&key).is_some_and(|e| e.revision == rev) {
                self.by_key.remove(&key);
            }
        }
    }
}

impl Ring {
    fn new(rev: i64) -> Ring {
        Ring {
            events: VecDeque::new(),
            arrived: VecDeque::new(),
            start: rev,
            last: rev,
            newest: Recent::default(),
            namespaces: None,
            index: None,
        }
    }

    /// The ring at `rev`, with the namespaces as of `rev` (events after it keep them current).
    async fn at(store: &dyn Store, rev: i64) -> Ring {
        let req = kumo_store::RangeRequest { prefix: NAMESPACES.into(), revision: Some(rev), ..Default::default() };
        let namespaces = match store.range(req).await {
            Ok(r) => {
                Some(r.kvs.iter().filter_map(|kv| decode(kv).ok().map(|ns| namespace_entry(&kv.key, &ns))).collect())
            }
            Err(e) => {
                tracing::warn!("watch cache: reading namespaces: {e}; creates will read them from the store");
                None
            }
        };
        let index = match build_index(store, rev).await {
            Ok(ix) => Some(ix),
            Err(e) => {
                tracing::warn!("watch cache: building label indexes: {e}; selected lists will scan the store");
                None
            }
        };
        Ring { namespaces, index, ..Ring::new(rev) }
    }
}

pub struct WatchCache {
    store: Arc<dyn Store>,
    ring: RwLock<Ring>,
    /// Live watchers, filed so a change reaches only those it concerns. Emptied on a reset, which ends every
    /// live watch: they end with 410 and relist rather than silently missing what the cache could not follow.
    routes: Mutex<Routes>,
    capacity: usize,
    /// Events younger than this stay beyond `capacity` ([`FRESH`]; zero in tests of eviction).
    fresh: std::time::Duration,
}

/// The label indexes as of `rev`, read a page at a time (never the whole resource in memory at once).
async fn build_index(store: &dyn Store, rev: i64) -> kumo_store::Result<index::LabelIndex> {
    let mut ix = index::LabelIndex::default();
    for (prefix, _) in index::INDEXED {
        let mut start_after = None;
        loop {
            let req = kumo_store::RangeRequest {
                prefix: prefix.to_string(),
                start_after: start_after.clone(),
                limit: 1000,
                revision: Some(rev),
            };
            let page = store.range(req).await?;
            for kv in &page.kvs {
                ix.update_raw(&kv.key, &kv.value);
            }
            start_after = page.kvs.last().map(|kv| kv.key.clone());
            if !page.more || start_after.is_none() {
                break;
            }
        }
    }
    Ok(ix)
}

fn namespace_entry(key: &str, ns: &Value) -> (String, bool) {
    let name = key.strip_prefix(NAMESPACES).unwrap_or(key).to_string();
    (name, kumo_api::meta::deletion_timestamp(ns).is_some())
}

impl WatchCache {
    /// Starts following the store from its current revision.
    pub async fn start(store: Arc<dyn Store>, capacity: usize) -> anyhow::Result<Arc<Self>> {
        Self::start_keeping(store, capacity, FRESH).await
    }

    /// [`WatchCache::start`], keeping events younger than `fresh` beyond `capacity`.
    pub async fn start_keeping(
        store: Arc<dyn Store>,
        capacity: usize,
        fresh: std::time::Duration,
    ) -> anyhow::Result<Arc<Self>> {
        let rev = store.current_revision().await?;
        let ring = RwLock::new(Ring::at(&*store, rev).await);
        let capacity = capacity.max(1);
        let cache = Arc::new(WatchCache { store, ring, routes: Default::default(), capacity, fresh });
        let c = cache.clone();
        tokio::spawn(async move { c.pump().await });
        Ok(cache)
    }

    async fn pump(self: Arc<Self>) {
        loop {
            let from = self.ring.read().expect("lock").last;
            let mut stream = match self.store.watch("/registry/", from).await {
                Ok(s) => s,
                Err(kumo_store::Error::Compacted { .. }) => {
                    tracing::warn!("watch cache: history after {from} is compacted; resetting (watchers relist)");
                    self.reset().await;
                    continue;
                }
                Err(e) => {
                    // The store is unreachable: resume from the same revision once it answers again.
                    tracing::warn!("watch cache: store watch from {from} failed: {e}; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    continue;
                }
            };
            while let Some(item) = stream.next().await {
                match item {
                    Ok(e) => {
                        let before = self.newest(&e.kv.key);
                        if let Some(ev) = CachedEvent::new(e, before) {
                            self.push(ev);
                        }
                    }
                    Err(e) => {
                        tracing::warn!("watch cache: store watch ended: {e}");
                        break;
                    }
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// After losing events the cache can no longer vouch for history: start over at the store's revision, and
    /// end every live watch with 410 so its client relists.
    async fn reset(&self) {
        match self.store.current_revision().await {
            Ok(rev) => {
                let ring = Ring::at(&*self.store, rev).await;
                let mut r = self.ring.write().expect("lock");
                *r = ring;
                self.routes.lock().expect("lock").clear();
            }
            Err(e) => tracing::warn!("watch cache: reading the store's revision: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    fn push(&self, ev: Arc<CachedEvent>) {
        let mut r = self.ring.write().expect("lock");
        if ev.revision <= r.last {
            return;
        }
        r.last = ev.revision;
        r.events.push_back(ev.clone());
        r.arrived.push_back(std::time::Instant::now());
        r.newest.note(&ev, self.capacity * RECENT_PER_EVENT);
        // Events beyond the newest `capacity` are kept only for watchers resuming from the past: as bytes.
        if let Some(old) = r.events.len().checked_sub(self.capacity + 1).and_then(|i| r.events.get(i)) {
            old.cool();
        }
        let object = ev.object();
        if let Some(ix) = r.index.as_mut() {
            ix.update(&ev.key, (!ev.deleted).then_some(&*object));
        }
        if let Some(namespaces) = r.namespaces.as_mut().filter(|_| ev.key.starts_with(NAMESPACES)) {
            let (name, terminating) = namespace_entry(&ev.key, &object);
            match ev.deleted {
                true => namespaces.remove(&name),
                false => namespaces.insert(name, terminating),
            };
        }
        while r.events.len() > self.capacity {
            let fresh = r.arrived.front().is_some_and(|t| t.elapsed() < self.fresh);
            if fresh && r.events.len() <= MAX_EVENTS {
                break;
            }
            r.arrived.pop_front();
            if let Some(old) = r.events.pop_front() {
                r.start = old.revision;
            }
        }
        // Sent under the lock so a new watcher sees either the ring entry or the live event, never neither.
        self.routes.lock().expect("lock").send(&ev);
    }

    /// History at or below `rev` was compacted in the store; the cache forgets it too, so that resuming from a
    /// compacted version is a 410 whichever path serves it.
    pub fn compacted(&self, rev: i64) {
        let mut r = self.ring.write().expect("lock");
        while r.events.front().is_some_and(|e| e.revision <= rev) {
            r.events.pop_front();
            r.arrived.pop_front();
        }
        r.start = r.start.max(rev.min(r.last));
    }

    /// The newest change to `key` the cache still holds. It may lag the store: a caller writing on top of it
    /// must make the write conditional on the event's revision (and go to the store when that fails).
    pub fn newest(&self, key: &str) -> Option<Arc<CachedEvent>> {
        self.ring.read().expect("lock").newest.by_key.get(key).cloned()
    }

    /// Whether the cache knows namespace `name` to exist and not be terminating. It may lag the store, so only
    /// a yes is an answer; otherwise ask the store.
    pub fn namespace_active(&self, name: &str) -> bool {
        self.ring.read().expect("lock").namespaces.as_ref().is_some_and(|n| n.get(name) == Some(&false))
    }

    /// Keys under `prefix` whose `label` is `value`, from the index, and the revision they are as of.
    pub fn indexed_keys(&self, prefix: &str, label: &str, value: &str) -> Option<(Vec<String>, i64)> {
        let r = self.ring.read().expect("lock");
        let ix = r.index.as_ref().filter(|_| index::covers(prefix, label))?;
        Some((ix.keys(prefix, value, None), r.last))
    }

    /// Live watches per resource key prefix (None: over several resources), for the metrics.
    pub fn watchers(&self) -> std::collections::HashMap<Option<String>, usize> {
        self.routes.lock().expect("lock").per_resource()
    }

    /// The newest revision the cache has seen.
    pub fn revision(&self) -> i64 {
        self.ring.read().expect("lock").last
    }

    /// Waits (briefly) until the cache has caught up with `rev`, so a watch started right after a write sees
    /// the write's successors in order.
    pub async fn wait_for(&self, rev: i64, max: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + max;
        while self.revision() < rev {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        true
    }

    /// Every change under `prefix` after revision `after`, then live changes; history older than the cache's is
    /// read from the store (for the server's own few followers, which start from a list of their own). The
    /// stream yields `Err(Gone)` and ends when history is no longer available (compacted) or the watcher fell
    /// too far behind.
    pub async fn watch(
        self: &Arc<Self>,
        prefix: &str,
        after: i64,
    ) -> Result<BoxStream<'static, Result<Arc<CachedEvent>, Gone>>, Gone> {
        if let Some(live) = self.live(Interest::prefix(prefix), after) {
            return Ok(live);
        }
        let s = self.store.watch(prefix, after).await.map_err(|e| match e {
            kumo_store::Error::Compacted { requested, compacted } => Gone { requested, oldest: compacted },
            _ => Gone { requested: after, oldest: after + 1 },
        })?;
        Ok(s.filter_map(move |item| async move {
            match item {
                Ok(e) => CachedEvent::new(e, None).map(Ok),
                Err(_) => Some(Err(Gone { requested: after, oldest: after + 1 })),
            }
        })
        .boxed())
    }

    /// A client's watch of what `interest` names, served from the cache alone: with a label, live changes come
    /// only for objects that have or had it (the caller still applies its whole selector). A revision older
    /// than the cache holds is `Gone` and the client relists, as from Kubernetes' watch cache: otherwise each
    /// such watch would follow the store itself and decode every change again (thousands of agents resuming
    /// after a restart).
    pub fn watch_with(
        self: &Arc<Self>,
        interest: Interest,
        after: i64,
    ) -> Result<BoxStream<'static, Result<Arc<CachedEvent>, Gone>>, Gone> {
        let oldest = self.ring.read().expect("lock").start + 1;
        self.live(interest, after).ok_or(Gone { requested: after, oldest })
    }

    /// The ring's events after `after`, then live ones; None when `after` is older than the ring.
    fn live(
        self: &Arc<Self>,
        interest: Interest,
        after: i64,
    ) -> Option<BoxStream<'static, Result<Arc<CachedEvent>, Gone>>> {
        let (replay, rx, guard) = {
            let r = self.ring.read().expect("lock");
            if after < r.start {
                return None;
            }
            // The ring is in revision order and may hold a quarter million events: start at `after`.
            let from = r.events.partition_point(|e| e.revision <= after);
            let replay: Vec<_> = r.events.range(from..).filter(|e| interest.concerns(e)).cloned().collect();
            // A watcher is dropped only once as far behind as the ring is long: its queue holds the ring's own
            // events (pointers), and a watcher dropped must relist, which at 100,000 VMIs takes longer than the
            // history lasts (the controllers' shared watch, dropped in a burst of 500 VMs a second, relisted
            // over and over).
            let (id, rx) = self.routes.lock().expect("lock").add(&interest, MAX_EVENTS);
            (replay, rx, RouteGuard { cache: Arc::downgrade(self), id })
        };
        let last = replay.last().map(|e| e.revision).unwrap_or(after);
        let live = futures::stream::unfold((rx, last, guard, false), |(mut rx, last, guard, done)| async move {
            if done {
                return None;
            }
            loop {
                match rx.recv().await {
                    Some(e) if e.revision > last => {
                        let rev = e.revision;
                        return Some((Ok(e), (rx, rev, guard, false)));
                    }
                    Some(_) => continue,
                    // Dropped for falling behind, or the cache was reset.
                    None => return Some((Err(Gone { requested: last, oldest: last + 1 }), (rx, last, guard, true))),
                }
            }
        });
        Some(futures::stream::iter(replay.into_iter().map(Ok)).chain(live).boxed())
    }
}

/// Takes a watcher off the routes when its stream is dropped.
struct RouteGuard {
    cache: Weak<WatchCache>,
    id: u64,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        if let Some(cache) = self.cache.upgrade() {
            cache.routes.lock().expect("lock").remove(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn next(s: &mut BoxStream<'static, Result<Arc<CachedEvent>, Gone>>) -> Result<Arc<CachedEvent>, Gone> {
        tokio::time::timeout(Duration::from_secs(10), s.next()).await.expect("watch stalled").expect("watch ended")
    }

    #[tokio::test]
    async fn a_reset_ends_live_watches_with_gone() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(kumo_store::RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let cache = WatchCache::start(store.clone(), 100).await.unwrap();
        let mut w = cache.watch("/registry/", cache.revision()).await.unwrap();
        let kv = store.create("/registry/core/configmaps/default/a", b"{}".to_vec()).await.unwrap();
        assert_eq!(next(&mut w).await.unwrap().revision, kv.mod_revision);
        cache.reset().await;
        assert!(next(&mut w).await.is_err(), "a watcher must learn the cache lost its place");
        // New watchers follow the store again.
        let mut w2 = cache.watch("/registry/", cache.revision()).await.unwrap();
        let kv = store.create("/registry/core/configmaps/default/b", b"{}".to_vec()).await.unwrap();
        assert_eq!(next(&mut w2).await.unwrap().revision, kv.mod_revision);
    }

    #[tokio::test]
    async fn recent_history_outlives_the_capacity() {
        // A watch from the revision of a list that took a while resumes, however many events came meanwhile.
        for (fresh, resumes) in [(FRESH, true), (Duration::ZERO, false)] {
            let dir = tempfile::tempdir().unwrap();
            let store: Arc<dyn Store> = Arc::new(kumo_store::RedbStore::open(&dir.path().join("s.redb")).unwrap());
            let cache = WatchCache::start_keeping(store.clone(), 3, fresh).await.unwrap();
            let listed_at = cache.revision();
            let mut last = 0;
            for i in 0..10 {
                let key = format!("/registry/core/configmaps/default/c{i}");
                last = store.create(&key, b"{}".to_vec()).await.unwrap().mod_revision;
            }
            caught_up(&cache, last).await;
            match cache.watch_with(Interest::prefix("/registry/core/configmaps/"), listed_at) {
                Ok(mut w) => {
                    assert!(resumes, "kept {fresh:?}: the events beyond capacity should be gone");
                    for i in 1..=10 {
                        // The older seven are held only as bytes by now: they decode again, the same.
                        let ev = next(&mut w).await.unwrap();
                        assert_eq!(ev.revision, listed_at + i);
                        assert_eq!(kumo_api::meta::resource_version(&ev.object()), ev.revision.to_string());
                    }
                }
                Err(gone) => assert!(!resumes, "kept {fresh:?}: {gone:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_replay_passes_on_only_the_changes_a_watcher_is_filed_for() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(kumo_store::RedbStore::open(&dir.path().join("s.redb")).unwrap());
        // Capacity 1: all but the newest event are cold when replayed.
        let cache = WatchCache::start(store.clone(), 1).await.unwrap();
        let from = cache.revision();
        let vmis = "/registry/kubevirt.io/virtualmachineinstances/";
        let on = |node: &str| serde_json::to_vec(&serde_json::json!({"metadata": {"labels": {"n": node}}})).unwrap();
        let a1 = store.create(&format!("{vmis}ns/a1"), on("a")).await.unwrap();
        store.create(&format!("{vmis}ns/b1"), on("b")).await.unwrap();
        // Moved from a to b: a's watcher must see it leave.
        let moved = store.update(&a1.key, on("b"), a1.mod_revision).await.unwrap();
        let last = store.create(&format!("{vmis}ns/b2"), on("b")).await.unwrap().mod_revision;
        caught_up(&cache, last).await;
        let interest = Interest { prefix: vmis.into(), label: Some(("n".into(), "a".into())) };
        let mut w = cache.watch_with(interest, from).unwrap();
        assert_eq!(next(&mut w).await.unwrap().revision, a1.mod_revision);
        assert_eq!(next(&mut w).await.unwrap().revision, moved.mod_revision);
        let more = tokio::time::timeout(Duration::from_millis(200), w.next()).await;
        assert!(
            more.is_err(),
            "only a's changes are replayed, got {:?}",
            more.map(|e| e.map(|e| e.map(|e| e.key.clone())))
        );
    }

    async fn caught_up(cache: &WatchCache, rev: i64) {
        assert!(cache.wait_for(rev, Duration::from_secs(10)).await, "the cache never reached {rev}");
    }

    #[tokio::test]
    async fn newest_copies_follow_the_ring_and_namespaces_stay_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(kumo_store::RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let ns = |name: &str, terminating: bool| {
            let mut v = serde_json::json!({"metadata": {"name": name}});
            if terminating {
                v["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
            }
            serde_json::to_vec(&v).unwrap()
        };
        // Namespaces from before the cache started are known too.
        store.create("/registry/core/namespaces/old", ns("old", false)).await.unwrap();
        let cache = WatchCache::start(store.clone(), 3).await.unwrap();
        assert!(cache.namespace_active("old"));
        assert!(!cache.namespace_active("new"));
        let kv = store.create("/registry/core/namespaces/new", ns("new", false)).await.unwrap();
        let kv = store.update(&kv.key, ns("new", true), kv.mod_revision).await.unwrap();
        caught_up(&cache, kv.mod_revision).await;
        assert!(!cache.namespace_active("new"), "a terminating namespace takes no new content");
        let kv = store.delete("/registry/core/namespaces/old", None).await.unwrap();
        caught_up(&cache, kv.mod_revision).await;
        assert!(!cache.namespace_active("old"));

        let a = store.create("/registry/core/configmaps/default/a", b"{}".to_vec()).await.unwrap();
        caught_up(&cache, a.mod_revision).await;
        let newest = cache.newest(&a.key).expect("a was just written");
        assert_eq!((newest.revision, newest.deleted), (a.mod_revision, false));
        assert_eq!(kumo_api::meta::resource_version(&newest.object()), a.mod_revision.to_string());
        // The copies cover twice the ring (capacity 3): six more events push `a`'s out.
        let mut last = 0;
        for k in ["b", "c", "d", "e", "f", "g"] {
            last = store
                .create(&format!("/registry/core/configmaps/default/{k}"), b"{}".to_vec())
                .await
                .unwrap()
                .mod_revision;
        }
        caught_up(&cache, last).await;
        assert!(cache.newest(&a.key).is_none(), "an evicted event leaves no copy behind");
        assert!(cache.newest("/registry/core/configmaps/default/b").is_some(), "copies outlive the ring");
    }
}
