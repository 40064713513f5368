//! The watch cache: one store watch fans out to every API watcher, with the recent history kept in memory
//! so that thousands of watchers (and watchers resuming from a recent resourceVersion) never read the store.

use crate::objects::decode;
use futures::stream::{BoxStream, StreamExt};
use kumo_store::Store;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock, Weak};

mod current;
mod event;
mod index;
mod routes;
pub use current::Listing;
use current::{Current, Kept};
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
    /// `events` again, by resource: a resuming watch of one resource is replayed from its own, not from every
    /// change since its revision (at ten thousand nodes the Lease renewals alone are a thousand a second, and
    /// ten thousand agents resume a watch every few minutes).
    by_resource: HashMap<String, VecDeque<Arc<CachedEvent>>>,
    /// `events` again, by the value of an indexed label (see [`index::INDEXED`]) their object has or had: an
    /// agent resuming its watch of the VMIs on its node is replayed its own, not every VMI change since.
    by_label: HashMap<(usize, String), VecDeque<Arc<CachedEvent>>>,
    /// Every event with revision > `start` is in `events` (or the store watch must be used).
    start: i64,
    last: i64,
    /// What the cache knows of every object as of `last`; None when the initial read failed (lists then read
    /// the store, creates read namespaces from it, and writes read the object they replace).
    known: Option<Known>,
}

struct Known {
    /// Every object: lists are served from here, and a write finds the object it replaces here (see
    /// [`WatchCache::newest`]).
    current: Current,
    /// Every namespace, and whether it is terminating, so that creating an object need not read its namespace
    /// from the store (Kubernetes' admission uses an informer alike).
    namespaces: HashMap<String, bool>,
    /// Label indexes.
    index: index::LabelIndex,
}

const NAMESPACES: &str = "/registry/core/namespaces/";
/// Objects per read when the cache starts. etcd walks its index over the whole rest of the range for every
/// page, whatever its limit (to count it): in pages of 1,000, a restart at 100,000 VMIs on etcd (their VMs and
/// Events too) spent 95 s reading. Ten thousand objects of a few KiB are tens of MiB per page.
const READ_PAGE: usize = 10_000;

impl Ring {
    fn new(rev: i64) -> Ring {
        let (events, arrived, by_resource, by_label) = Default::default();
        Ring { events, arrived, by_resource, by_label, start: rev, last: rev, known: None }
    }

    fn push_event(&mut self, ev: &Arc<CachedEvent>) {
        self.events.push_back(ev.clone());
        self.arrived.push_back(std::time::Instant::now());
        if let Some(res) = routes::resource_of(&ev.key) {
            self.by_resource.entry(res.to_string()).or_default().push_back(ev.clone());
        }
        for q in index::queues(&ev.key, ev.labels()) {
            self.by_label.entry(q).or_default().push_back(ev.clone());
        }
    }

    /// Forgets the oldest event.
    fn pop_event(&mut self) -> Option<Arc<CachedEvent>> {
        self.arrived.pop_front();
        let old = self.events.pop_front()?;
        // The oldest of its resource too: both are in revision order.
        if let Some(res) = routes::resource_of(&old.key) {
            if let Some(q) = self.by_resource.get_mut(res) {
                q.pop_front();
                if q.is_empty() {
                    self.by_resource.remove(res);
                }
            }
        }
        for key in index::queues(&old.key, old.labels()) {
            if let Some(q) = self.by_label.get_mut(&key) {
                q.pop_front();
                if q.is_empty() {
                    self.by_label.remove(&key);
                }
            }
        }
        if let Some(known) = self.known.as_mut() {
            known.current.settle(&old);
        }
        Some(old)
    }

    /// The events after `after` that `interest` concerns.
    fn since(&self, interest: &Interest, after: i64) -> Vec<Arc<CachedEvent>> {
        let label = interest.label.as_ref().and_then(|l| index::queue_for(&interest.prefix, l));
        let events = match (label, routes::resource_of(&interest.prefix)) {
            (Some(q), _) => match self.by_label.get(&q) {
                Some(q) => q,
                None => return Vec::new(),
            },
            (None, Some(res)) => match self.by_resource.get(res) {
                Some(q) => q,
                None => return Vec::new(),
            },
            (None, None) => &self.events,
        };
        // In revision order, and up to a quarter million events: start at `after`.
        let from = events.partition_point(|e| e.revision <= after);
        events.range(from..).filter(|e| interest.concerns(e)).cloned().collect()
    }

    /// The ring at `rev`, with every object as of `rev` (events after it keep them current).
    async fn at(store: &dyn Store, rev: i64) -> Ring {
        let known = match Known::read(store, rev).await {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!("watch cache: reading the objects: {e}; lists, creates and writes will read the store");
                None
            }
        };
        Ring { known, ..Ring::new(rev) }
    }
}

impl Known {
    /// Every object at `rev`, read a page at a time.
    async fn read(store: &dyn Store, rev: i64) -> kumo_store::Result<Known> {
        let mut known = Known { current: Current::default(), namespaces: HashMap::new(), index: Default::default() };
        let mut start_after = None;
        loop {
            let req = kumo_store::RangeRequest {
                prefix: "/registry/".into(),
                start_after: start_after.take(),
                limit: READ_PAGE,
                revision: Some(rev),
                // Counting the keys after each page made this read quadratic: 33 s of a restart at 30,000
                // VMIs (200,000 Events in pages of a thousand).
                uncounted: true,
            };
            let page = store.range(req).await?;
            let more = page.more;
            for kv in page.kvs {
                if !current::holds(&kv.key) {
                    // The next read starts past the Events (together in key order) rather than reading them all.
                    start_after = Some(format!("{}\u{7f}", crate::objects::EVENTS_PREFIX));
                    continue;
                }
                if kv.key.starts_with(NAMESPACES) {
                    if let Ok(ns) = decode(&kv) {
                        let (name, terminating) = namespace_entry(&kv.key, &ns);
                        known.namespaces.insert(name, terminating);
                    }
                }
                let ev = CachedEvent::stored(kv);
                known.index.update_labels(&ev.key, ev.labels());
                start_after = Some(ev.key.clone());
                known.current.apply(&ev);
            }
            if !more || start_after.is_none() {
                return Ok(known);
            }
        }
    }

    fn apply(&mut self, ev: &Arc<CachedEvent>) {
        if !current::holds(&ev.key) {
            return;
        }
        self.current.apply(ev);
        let object = ev.object();
        self.index.update(&ev.key, (!ev.deleted).then_some(&*object));
        if ev.key.starts_with(NAMESPACES) {
            let (name, terminating) = namespace_entry(&ev.key, &object);
            match ev.deleted {
                true => self.namespaces.remove(&name),
                false => self.namespaces.insert(name, terminating),
            };
        }
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
    /// Snapshots that paged lists continue from.
    kept: Mutex<Kept>,
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
        let cache =
            Arc::new(WatchCache { store, ring, routes: Default::default(), capacity, fresh, kept: Default::default() });
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
        r.push_event(&ev);
        // Events beyond the newest `capacity` are kept only for watchers resuming from the past: as bytes.
        if let Some(old) = r.events.len().checked_sub(self.capacity + 1).and_then(|i| r.events.get(i)) {
            old.cool();
        }
        if let Some(known) = r.known.as_mut() {
            known.apply(&ev);
        }
        while r.events.len() > self.capacity {
            let fresh = r.arrived.front().is_some_and(|t| t.elapsed() < self.fresh);
            if fresh && r.events.len() <= MAX_EVENTS {
                break;
            }
            if let Some(old) = r.pop_event() {
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
            r.pop_event();
        }
        r.start = r.start.max(rev.min(r.last));
    }

    /// The object at `key` as the cache last saw it. It may lag the store: a caller writing on top of it
    /// must make the write conditional on the event's revision (and go to the store when that fails).
    pub fn newest(&self, key: &str) -> Option<Arc<CachedEvent>> {
        self.ring.read().expect("lock").known.as_ref()?.current.get(key).cloned()
    }

    /// Whether the cache knows namespace `name` to exist and not be terminating. It may lag the store, so only
    /// a yes is an answer; otherwise ask the store.
    pub fn namespace_active(&self, name: &str) -> bool {
        self.ring.read().expect("lock").known.as_ref().is_some_and(|k| k.namespaces.get(name) == Some(&false))
    }

    /// The objects under `prefix` whose `label` is `value`, from the index, in key order.
    pub fn indexed(&self, prefix: &str, label: &str, value: &str) -> Option<Listing> {
        let r = self.ring.read().expect("lock");
        let known = r.known.as_ref().filter(|_| index::covers(prefix, label))?;
        let keys = known.index.keys(prefix, value, None);
        let items = keys.iter().filter_map(|k| known.current.get(k).cloned()).collect();
        Some(Listing { prefix: prefix.to_string(), revision: r.last, items })
    }

    /// Every object under `prefix`, in key order, as of the cache's revision (None: the cache holds no copies
    /// of them, see [`current::holds`]).
    pub fn listing(&self, prefix: &str) -> Option<Listing> {
        if !current::holds(prefix) {
            return None;
        }
        let r = self.ring.read().expect("lock");
        let items = r.known.as_ref()?.current.under(prefix).into();
        Some(Listing { prefix: prefix.to_string(), revision: r.last, items })
    }

    /// Keeps `listing` for the pages that continue it.
    pub fn keep(&self, listing: Listing) {
        self.kept.lock().expect("lock").keep(listing);
    }

    /// The kept listing of `prefix` at `revision`, which a continue token names.
    pub fn kept(&self, prefix: &str, revision: i64) -> Option<Listing> {
        self.kept.lock().expect("lock").find(prefix, revision)
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
            let replay = r.since(&interest, after);
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
        // Any label (replayed from the resource's events), and the indexed one (from that label value's own).
        for label in ["n", kumo_api::kubevirt::NODE_NAME_LABEL] {
            replays_only_what_concerns(label).await;
        }
    }

    async fn replays_only_what_concerns(label: &str) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(kumo_store::RedbStore::open(&dir.path().join("s.redb")).unwrap());
        // Capacity 1: all but the newest event are cold when replayed.
        let cache = WatchCache::start(store.clone(), 1).await.unwrap();
        let from = cache.revision();
        let vmis = "/registry/kubevirt.io/virtualmachineinstances/";
        let on = |node: &str| serde_json::to_vec(&serde_json::json!({"metadata": {"labels": {label: node}}})).unwrap();
        let a1 = store.create(&format!("{vmis}ns/a1"), on("a")).await.unwrap();
        store.create(&format!("{vmis}ns/b1"), on("b")).await.unwrap();
        // Moved from a to b: a's watcher must see it leave.
        let moved = store.update(&a1.key, on("b"), a1.mod_revision).await.unwrap();
        let last = store.create(&format!("{vmis}ns/b2"), on("b")).await.unwrap().mod_revision;
        caught_up(&cache, last).await;
        let interest = Interest { prefix: vmis.into(), label: Some((label.into(), "a".into())) };
        let mut w = cache.watch_with(interest, from).unwrap();
        assert_eq!(next(&mut w).await.unwrap().revision, a1.mod_revision, "{label}");
        assert_eq!(next(&mut w).await.unwrap().revision, moved.mod_revision, "{label}");
        let more = tokio::time::timeout(Duration::from_millis(200), w.next()).await;
        assert!(
            more.is_err(),
            "only a's changes are replayed ({label}), got {:?}",
            more.map(|e| e.map(|e| e.map(|e| e.key.clone())))
        );
        // A watcher of a value with no change since is replayed nothing, and one of another namespace only its own.
        let none = Interest { prefix: vmis.into(), label: Some((label.into(), "c".into())) };
        let mut w = cache.watch_with(none, from).unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(100), w.next()).await.is_err(), "{label}");
        let other = Interest { prefix: format!("{vmis}other/"), label: Some((label.into(), "b".into())) };
        let mut w = cache.watch_with(other, from).unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(100), w.next()).await.is_err(), "{label}");
        // What the ring forgets, the label's queue forgets too.
        cache.compacted(last);
        let r = cache.ring.read().unwrap();
        let by_label: usize = r.by_label.values().map(VecDeque::len).sum();
        assert_eq!(by_label, 0, "{label}: {:?}", r.by_label.keys().collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_resuming_watch_is_replayed_from_its_own_resource() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(kumo_store::RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let cache = WatchCache::start_keeping(store.clone(), 2, Duration::ZERO).await.unwrap();
        let from = cache.revision();
        let (cms, leases) = ("/registry/core/configmaps/", "/registry/coordination.k8s.io/leases/");
        let mut revs = Vec::new();
        for (i, prefix) in [cms, leases, leases, cms].iter().enumerate() {
            revs.push(store.create(&format!("{prefix}ns/o{i}"), b"{}".to_vec()).await.unwrap().mod_revision);
        }
        caught_up(&cache, revs[3]).await;
        // Capacity 2, nothing kept for being fresh: the newest two events remain, one of each resource.
        let after = revs[1];
        let mut w = cache.watch_with(Interest::prefix(&format!("{cms}ns/")), after).unwrap();
        assert_eq!(next(&mut w).await.unwrap().revision, revs[3]);
        let mut w = cache.watch_with(Interest::prefix(leases), after).unwrap();
        assert_eq!(next(&mut w).await.unwrap().revision, revs[2]);
        assert!(cache.watch_with(Interest::prefix(cms), from).is_err(), "older than the ring");
        cache.compacted(revs[2]);
        let r = cache.ring.read().unwrap();
        let by_resource: usize = r.by_resource.values().map(VecDeque::len).sum();
        assert_eq!((r.events.len(), by_resource), (1, 1), "every resource forgets what the ring forgets");
        assert!(!r.by_resource.contains_key(leases));
    }

    #[tokio::test]
    async fn events_are_watched_but_not_copied() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(kumo_store::RedbStore::open(&dir.path().join("s.redb")).unwrap());
        // Read when the cache starts: objects on both sides of the Events in key order.
        for key in ["configmaps/default/a", "events/default/e1", "events/default/e2", "namespaces/zz"] {
            store.create(&format!("/registry/core/{key}"), b"{}".to_vec()).await.unwrap();
        }
        let cache = WatchCache::start(store.clone(), 3).await.unwrap();
        let mut w = cache.watch("/registry/core/events/", cache.revision()).await.unwrap();
        let e3 = store.create("/registry/core/events/default/e3", b"{}".to_vec()).await.unwrap();
        assert_eq!(next(&mut w).await.unwrap().key, e3.key, "Events are watched as any other kind");
        caught_up(&cache, e3.mod_revision).await;
        assert!(cache.listing("/registry/core/events/").is_none(), "lists of Events read the store");
        assert!(cache.newest(&e3.key).is_none());
        let keys: Vec<String> = cache.listing("/registry/").unwrap().items.iter().map(|e| e.key.clone()).collect();
        assert_eq!(keys, ["/registry/core/configmaps/default/a", "/registry/core/namespaces/zz"]);
    }

    #[tokio::test]
    async fn a_copy_sheds_the_state_it_replaced_once_its_change_leaves_the_ring() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(kumo_store::RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let cache = WatchCache::start_keeping(store.clone(), 2, Duration::ZERO).await.unwrap();
        let labelled = |v: &str| serde_json::to_vec(&serde_json::json!({"metadata": {"labels": {"x": v}}})).unwrap();
        let key = "/registry/core/configmaps/default/a";
        let a = store.create(key, labelled("1")).await.unwrap();
        let a = store.update(key, labelled("2"), a.mod_revision).await.unwrap();
        caught_up(&cache, a.mod_revision).await;
        let hot = cache.newest(key).unwrap();
        assert!(hot.replaced() && hot.has_label("x", "1"), "in the ring, the change tells what it replaced");
        let mut last = 0;
        for k in ["b", "c"] {
            let kv = store.create(&format!("/registry/core/configmaps/default/{k}"), b"{}".to_vec()).await.unwrap();
            last = kv.mod_revision;
        }
        caught_up(&cache, last).await;
        let copy = cache.newest(key).unwrap();
        assert!(!copy.replaced() && !copy.has_label("x", "1") && copy.has_label("x", "2"), "{:?}", copy.labels());
        assert_eq!((copy.revision, copy.object()), (a.mod_revision, hot.object()));
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
        // Copies outlive the ring (capacity 3): every object has one, held as its stored bytes once old.
        let mut last = 0;
        for k in ["b", "c", "d", "e", "f", "g"] {
            last = store
                .create(&format!("/registry/core/configmaps/default/{k}"), b"{}".to_vec())
                .await
                .unwrap()
                .mod_revision;
        }
        caught_up(&cache, last).await;
        let copy = cache.newest(&a.key).expect("an object outside the ring keeps its copy");
        assert_eq!(kumo_api::meta::resource_version(&copy.object()), a.mod_revision.to_string());
        let gone = store.delete(&a.key, None).await.unwrap();
        caught_up(&cache, gone.mod_revision).await;
        assert!(cache.newest(&a.key).is_none(), "a deleted object leaves no copy behind");
    }
}
