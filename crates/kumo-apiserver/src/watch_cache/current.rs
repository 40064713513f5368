//! Every object as of the cache's revision, held as the store holds it (decoded only while among the newest
//! events), so that lists are answered from memory: at a hundred thousand VMIs a list read from the store at a
//! past revision (each page after the first) walked the history table key by key, and a controller's relist
//! took minutes, longer than the watch history lasts.
//!
//! A paged list is answered from a snapshot of the keys it covers, kept for the pages that follow (as
//! Kubernetes' watch cache keeps snapshots for continue tokens), so every page is at the first page's revision
//! without reading the store.

use super::CachedEvent;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Whether the cache holds copies of the objects under `prefix` (a key, or a prefix of keys). Events are not
/// held: there are several per VMI, hardly any client lists them, and their copies were about 4 KiB a VMI at
/// 150,000 (kube-apiserver keeps no watch cache of Events at all). Lists of Events read the store; watches of
/// them are served from the ring like any other.
pub fn holds(prefix: &str) -> bool {
    !crate::objects::is_event_key(prefix)
}

#[derive(Default)]
pub(super) struct Current {
    objects: BTreeMap<String, Arc<CachedEvent>>,
}

impl Current {
    /// Takes in a change: the object's new state, or its removal.
    pub(super) fn apply(&mut self, ev: &Arc<CachedEvent>) {
        match ev.deleted {
            true => self.objects.remove(&ev.key),
            false => self.objects.insert(ev.key.clone(), ev.clone()),
        };
    }

    /// `old` leaves the ring: when it is still its object's newest change, the copy sheds the state it
    /// replaced (kept only for watchers replayed from the ring), about the object's size again.
    pub(super) fn settle(&mut self, old: &Arc<CachedEvent>) {
        if let Some(copy) = self.objects.get_mut(&old.key).filter(|c| Arc::ptr_eq(c, old) && old.replaced()) {
            *copy = old.settled();
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<&Arc<CachedEvent>> {
        self.objects.get(key)
    }

    /// Every object under `prefix`, in key order.
    pub(super) fn under(&self, prefix: &str) -> Vec<Arc<CachedEvent>> {
        let from = self.objects.range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded));
        from.take_while(|(k, _)| k.starts_with(prefix)).map(|(_, e)| e.clone()).collect()
    }
}

/// The objects under a prefix at one revision, in key order.
#[derive(Clone)]
pub struct Listing {
    pub prefix: String,
    pub revision: i64,
    pub items: Arc<[Arc<CachedEvent>]>,
}

impl Listing {
    /// Where the page after `key` starts.
    pub fn after(&self, key: &str) -> usize {
        self.items.partition_point(|e| e.key.as_str() <= key)
    }
}

/// How long a paged list's snapshot is kept for its next page (kube-apiserver's watch cache keeps 75 s).
const KEPT_FOR: Duration = Duration::from_secs(75);
/// The most objects kept snapshots hold, together: a few full lists of the largest resource.
const KEPT_ITEMS: usize = 2_000_000;

/// Snapshots of paged lists, newest last.
pub(super) struct Kept {
    listings: VecDeque<(Instant, Listing)>,
    items: usize,
    /// The most objects held, together ([`KEPT_ITEMS`]).
    limit: usize,
}

impl Default for Kept {
    fn default() -> Kept {
        Kept { listings: VecDeque::new(), items: 0, limit: KEPT_ITEMS }
    }
}

impl Kept {
    pub(super) fn keep(&mut self, listing: Listing) {
        if self.find(&listing.prefix, listing.revision).is_some() {
            return;
        }
        self.items += listing.items.len();
        self.listings.push_back((Instant::now(), listing));
        self.expire();
    }

    pub(super) fn find(&mut self, prefix: &str, revision: i64) -> Option<Listing> {
        self.expire();
        self.listings.iter().map(|(_, l)| l).find(|l| l.revision == revision && l.prefix == prefix).cloned()
    }

    /// Drops snapshots past their time, and the oldest while over the limit (they hold deleted objects too).
    fn expire(&mut self) {
        while self.items > self.limit || self.listings.front().is_some_and(|(t, _)| t.elapsed() > KEPT_FOR) {
            let Some((_, old)) = self.listings.pop_front() else { break };
            self.items -= old.items.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(key: &str, rev: i64) -> Arc<CachedEvent> {
        let kv =
            kumo_store::KeyValue { key: key.into(), value: b"{}".to_vec(), create_revision: rev, mod_revision: rev };
        CachedEvent::stored(kv)
    }

    #[test]
    fn a_listing_is_the_objects_under_its_prefix_in_key_order() {
        let mut current = Current::default();
        for (i, key) in ["/registry/a/x/2", "/registry/a/x/1", "/registry/a/y/1", "/registry/ab/x/1"].iter().enumerate()
        {
            current.apply(&stored(key, i as i64 + 1));
        }
        let keys = |items: &[Arc<CachedEvent>]| items.iter().map(|e| e.key.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&current.under("/registry/a/")), ["/registry/a/x/1", "/registry/a/x/2", "/registry/a/y/1"]);
        assert_eq!(keys(&current.under("/registry/a/x/")), ["/registry/a/x/1", "/registry/a/x/2"]);
        let listing =
            Listing { prefix: "/registry/a/".into(), revision: 4, items: current.under("/registry/a/").into() };
        assert_eq!(listing.after("/registry/a/x/1"), 1);
        assert_eq!(listing.after("/registry/a/x/25"), 2, "a key that is gone still places the page");
        assert_eq!(listing.after("/registry/a/z"), 3);
        assert_eq!(current.get("/registry/a/x/2").map(|e| e.revision), Some(1));
    }

    #[test]
    fn snapshots_are_found_by_prefix_and_revision_and_bounded() {
        let mut kept = Kept { limit: 10, ..Kept::default() };
        let listing = |prefix: &str, revision: i64, n: usize| Listing {
            prefix: prefix.into(),
            revision,
            items: (0..n).map(|i| stored(&format!("{prefix}{i}"), revision)).collect(),
        };
        kept.keep(listing("/registry/a/", 5, 3));
        kept.keep(listing("/registry/b/", 5, 3));
        assert_eq!(kept.find("/registry/a/", 5).map(|l| l.items.len()), Some(3));
        assert!(kept.find("/registry/a/", 6).is_none() && kept.find("/registry/c/", 5).is_none());
        // Past the bound on items held, the oldest snapshots go first.
        kept.keep(listing("/registry/c/", 7, 6));
        assert!(kept.find("/registry/a/", 5).is_none(), "the oldest went");
        assert!(kept.find("/registry/b/", 5).is_some() && kept.find("/registry/c/", 7).is_some());
        assert_eq!(kept.items, 9);
    }
}
