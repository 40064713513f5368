//! Reads, compare-and-swap writes, ranges, compaction and size limits.

use std::future::Future;
use std::sync::Arc;

use super::{at, keys, take, unique_prefix};
use crate::{Error, RangeRequest, Result, Store};

/// Revisions only grow, and a failed write changes nothing, its revision included. Needs no other writer
/// while it runs (it checks the very next revision).
pub async fn revisions_increase_and_failed_writes_consume_none(s: Arc<dyn Store>) {
    let p = unique_prefix("revisions");
    let k = |n: &str| format!("{p}{n}");
    let start = s.current_revision().await.unwrap();
    let a = s.create(&k("a"), b"1".to_vec()).await.unwrap();
    assert!(a.mod_revision > start, "{} after {start}", a.mod_revision);
    assert_eq!(a.create_revision, a.mod_revision);
    assert_eq!(s.current_revision().await.unwrap(), a.mod_revision);
    let b = s.create(&k("b"), vec![]).await.unwrap();
    assert!(b.mod_revision > a.mod_revision);

    let before = s.current_revision().await.unwrap();
    assert!(matches!(s.create(&k("a"), b"x".to_vec()).await, Err(Error::AlreadyExists(_))));
    assert!(matches!(s.update(&k("a"), b"x".to_vec(), a.mod_revision + 100).await, Err(Error::Conflict { .. })));
    assert!(matches!(s.update(&k("missing"), vec![], a.mod_revision).await, Err(Error::NotFound(_))));
    assert!(matches!(s.delete(&k("missing"), None).await, Err(Error::NotFound(_))));
    assert!(matches!(s.delete(&k("a"), Some(a.mod_revision + 100)).await, Err(Error::Conflict { .. })));
    assert_eq!(s.current_revision().await.unwrap(), before, "a failed write took a revision");
    assert_eq!(s.get(&k("a")).await.unwrap(), Some(a.clone()), "a failed write changed the value");
    let c = s.create(&k("c"), vec![]).await.unwrap();
    assert_eq!(c.mod_revision, before + 1);
}

/// Create, get, update and delete, with every refusal the trait names.
pub async fn create_get_update_delete(s: Arc<dyn Store>) {
    let p = unique_prefix("crud");
    let k = |n: &str| format!("{p}{n}");
    assert!(s.get(&k("a")).await.unwrap().is_none());

    let a = s.create(&k("a"), b"1".to_vec()).await.unwrap();
    assert_eq!((a.key.as_str(), a.value.as_slice()), (k("a").as_str(), &b"1"[..]));
    assert_eq!(a.create_revision, a.mod_revision);
    assert!(matches!(s.create(&k("a"), b"x".to_vec()).await, Err(Error::AlreadyExists(key)) if key == k("a")));
    assert_eq!(s.get(&k("a")).await.unwrap(), Some(a.clone()));

    let a2 = s.update(&k("a"), b"2".to_vec(), a.mod_revision).await.unwrap();
    assert_eq!((a2.create_revision, a2.value.as_slice()), (a.create_revision, &b"2"[..]));
    assert!(a2.mod_revision > a.mod_revision);
    assert_eq!(s.get(&k("a")).await.unwrap(), Some(a2.clone()));
    // One member reads its own acknowledged writes without a linearizable round.
    assert_eq!(s.get_serializable(&k("a")).await.unwrap(), Some(a2.clone()));
    assert!(s.get_serializable(&k("missing")).await.unwrap().is_none());
    match s.update(&k("a"), b"3".to_vec(), a.mod_revision).await {
        Err(Error::Conflict { key, current }) => assert_eq!((key, current), (k("a"), Some(a2.clone()))),
        other => panic!("expected a conflict carrying the current value, got {other:?}"),
    }
    assert!(matches!(s.update(&k("missing"), vec![], 1).await, Err(Error::NotFound(key)) if key == k("missing")));
    assert!(matches!(s.delete(&k("missing"), None).await, Err(Error::NotFound(_))));
    assert!(matches!(s.delete(&k("missing"), Some(1)).await, Err(Error::NotFound(_))));
    match s.delete(&k("a"), Some(a.mod_revision)).await {
        Err(Error::Conflict { current, .. }) => assert_eq!(current, Some(a2.clone())),
        other => panic!("expected a conflict, got {other:?}"),
    }

    // The deleted value comes back, stamped with the deletion's revision.
    let gone = s.delete(&k("a"), Some(a2.mod_revision)).await.unwrap();
    assert_eq!((gone.value.as_slice(), gone.create_revision), (&b"2"[..], a.create_revision));
    assert!(gone.mod_revision > a2.mod_revision);
    assert!(s.get(&k("a")).await.unwrap().is_none());
    assert!(matches!(s.update(&k("a"), vec![], a2.mod_revision).await, Err(Error::NotFound(_))));
    // An update must not resurrect a deleted key even when asked for revision 0.
    assert!(matches!(s.update(&k("a"), vec![], 0).await, Err(Error::NotFound(_))));

    let again = s.create(&k("a"), b"new".to_vec()).await.unwrap();
    assert_eq!(again.create_revision, again.mod_revision);
    assert!(again.create_revision > gone.mod_revision);
    let b = s.create(&k("b"), vec![]).await.unwrap();
    let b_gone = s.delete(&k("b"), None).await.unwrap();
    assert!(b_gone.mod_revision > b.mod_revision);
    assert!(s.current_revision().await.unwrap() >= b_gone.mod_revision);
}

/// Runs 32 copies of a write at once, returning their results.
async fn race<T, F, Fut>(s: &Arc<dyn Store>, key: &str, write: F) -> Vec<Result<T>>
where
    F: Fn(Arc<dyn Store>, String, u8) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let tasks = (0..32u8).map(|i| tokio::spawn(write(s.clone(), key.to_string(), i)));
    futures::future::join_all(tasks).await.into_iter().map(|r| r.unwrap()).collect()
}

/// Racing writers on one key: exactly one create, one update per expected revision and one delete win.
pub async fn concurrent_writers_to_one_key_one_wins(s: Arc<dyn Store>) {
    let key = format!("{}same", unique_prefix("cas"));
    let results = race(&s, &key, |s, k, i| async move { s.create(&k, vec![i]).await }).await;
    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1);
    assert!(results.iter().all(|r| r.is_ok() || matches!(r, Err(Error::AlreadyExists(_)))), "{results:?}");
    let expected = winners[0].mod_revision;

    let results = race(&s, &key, |s, k, i| async move { s.update(&k, vec![i], expected).await }).await;
    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1);
    assert!(results.iter().all(|r| r.is_ok() || matches!(r, Err(Error::Conflict { .. }))), "{results:?}");
    let updated = winners[0].clone();
    assert_eq!(s.get(&key).await.unwrap(), Some(updated.clone()));

    let expected = updated.mod_revision;
    let results = race(&s, &key, |s, k, _| async move { s.delete(&k, Some(expected)).await }).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    let refused = |r: &&Result<_>| matches!(r, Err(Error::NotFound(_)) | Err(Error::Conflict { .. }));
    assert_eq!(results.iter().filter(refused).count(), 31, "{results:?}");
}

/// Prefix ranges (a sibling sharing the prefix's leading bytes stays out), limits and paging.
pub async fn range_prefix_limit_and_paging(s: Arc<dyn Store>) {
    let p = unique_prefix("range");
    for k in ["a/1", "a/2", "a/3", "a/4", "a/5", "b/1", "a0"] {
        s.create(&format!("{p}{k}"), k.as_bytes().to_vec()).await.unwrap();
    }
    let a = format!("{p}a/");
    let last = s.create(&format!("{p}a/6"), vec![]).await.unwrap().mod_revision;
    assert_eq!(keys(&*s, &p, at(&a, None)).await, ["a/1", "a/2", "a/3", "a/4", "a/5", "a/6"]);
    assert_eq!(keys(&*s, &p, at(&p, None)).await.len(), 8);
    assert!(keys(&*s, &p, at(&format!("{p}zzz"), None)).await.is_empty());
    let whole = s.range(at(&a, None)).await.unwrap();
    assert!(whole.revision >= last);
    assert_eq!((whole.more, whole.remaining), (false, 0));

    // Paging with limit + start_after visits every key once, with correct `more` and `remaining`.
    let mut seen = Vec::new();
    let mut start_after = None;
    loop {
        let req = RangeRequest { prefix: a.clone(), start_after: start_after.clone(), limit: 4, ..Default::default() };
        let resp = s.range(req).await.unwrap();
        assert!(resp.revision >= last);
        seen.extend(resp.kvs.iter().map(|kv| kv.key.clone()));
        assert_eq!(resp.remaining, 6 - seen.len() as i64);
        assert_eq!(resp.more, resp.remaining > 0);
        if !resp.more {
            break;
        }
        start_after = seen.last().cloned();
    }
    assert_eq!(seen.len(), 6);
    assert_eq!(seen, keys(&*s, "", at(&a, None)).await);
    // Uncounted, the same pages; `remaining` need only say whether there are more.
    let (mut again, mut start_after) = (Vec::new(), None);
    loop {
        let req = RangeRequest { prefix: a.clone(), start_after, limit: 4, uncounted: true, ..Default::default() };
        let resp = s.range(req).await.unwrap();
        again.extend(resp.kvs.iter().map(|kv| kv.key.clone()));
        assert_eq!(resp.more, again.len() < 6, "after {again:?}");
        assert_eq!(resp.more, resp.remaining > 0);
        if !resp.more {
            break;
        }
        start_after = again.last().cloned();
    }
    assert_eq!(again, seen);

    // A start_after sorting before the prefix starts at the prefix; one past every key finds nothing.
    let req = |after: String, limit| RangeRequest {
        prefix: a.clone(),
        start_after: Some(after),
        limit,
        ..Default::default()
    };
    let resp = s.range(req(format!("{p}0"), 1)).await.unwrap();
    assert_eq!((resp.kvs[0].key.clone(), resp.more, resp.remaining), (format!("{p}a/1"), true, 5));
    assert!(s.range(req(format!("{p}a/6"), 0)).await.unwrap().kvs.is_empty());
    assert!(s.range(req(format!("{p}zz"), 0)).await.unwrap().kvs.is_empty());
}

/// Reads at past revisions see the values of that time; future revisions are refused.
pub async fn range_at_past_and_future_revisions(s: Arc<dyn Store>) {
    let p = unique_prefix("range-at");
    let mut first = Vec::new();
    for k in ["a/1", "a/2", "a/3", "a/4", "a/5"] {
        first.push(s.create(&format!("{p}{k}"), k.as_bytes().to_vec()).await.unwrap());
    }
    let before_changes = first[4].mod_revision;
    s.update(&format!("{p}a/2"), b"two".to_vec(), first[1].mod_revision).await.unwrap();
    let deleted = s.delete(&format!("{p}a/3"), None).await.unwrap().mod_revision;
    s.create(&format!("{p}a/6"), vec![]).await.unwrap();

    let old = s.range(at(&p, Some(before_changes))).await.unwrap();
    assert_eq!(old.revision, before_changes);
    assert_eq!(old.kvs, first, "values, keys and revisions as of {before_changes}");
    let paged_from = |p: &str, rev: i64| RangeRequest {
        prefix: p.to_string(),
        start_after: Some(format!("{p}a/2")),
        limit: 2,
        revision: Some(rev),
        uncounted: false,
    };
    let resp = s.range(paged_from(&p, before_changes)).await.unwrap();
    let got: Vec<_> = resp.kvs.iter().map(|kv| kv.key.strip_prefix(&p).unwrap()).collect();
    assert_eq!((got, resp.more, resp.remaining), (vec!["a/3", "a/4"], true, 1));
    let uncounted = RangeRequest { limit: 1, uncounted: true, ..paged_from(&p, before_changes) };
    let resp = s.range(uncounted).await.unwrap();
    assert_eq!((resp.kvs[0].key.strip_prefix(&p), resp.more), (Some("a/3"), true));
    assert_eq!(keys(&*s, &p, at(&p, Some(deleted))).await, ["a/1", "a/2", "a/4", "a/5"]);
    assert_eq!(keys(&*s, &p, at(&p, Some(first[0].mod_revision))).await, ["a/1"]);
    let now = keys(&*s, &p, at(&p, None)).await;
    assert_eq!(keys(&*s, &p, at(&p, Some(0))).await, now, "revision 0 means latest");

    let current = s.current_revision().await.unwrap();
    match s.range(at(&p, Some(current + 1))).await {
        Err(Error::FutureRevision { requested, current: reported }) => {
            assert_eq!(requested, current + 1);
            assert!(reported >= current);
        }
        other => panic!("expected FutureRevision, got {other:?}"),
    }
}

/// Compaction drops history at and below the revision, keeps every live key's latest value, and makes reads
/// and watches at compacted revisions fail with `Compacted`.
pub async fn compaction_discards_history_but_keeps_current(s: Arc<dyn Store>) {
    let p = unique_prefix("compact");
    let k = |n: &str| format!("{p}{n}");
    let a1 = s.create(&k("a"), b"a1".to_vec()).await.unwrap();
    s.create(&k("b"), b"b1".to_vec()).await.unwrap();
    let a2 = s.update(&k("a"), b"a2".to_vec(), a1.mod_revision).await.unwrap();
    let doomed = s.create(&k("gone"), vec![]).await.unwrap();
    let target = s.delete(&k("gone"), None).await.unwrap().mod_revision;
    let c1 = s.create(&k("c"), b"c1".to_vec()).await.unwrap();
    let c2 = s.update(&k("c"), b"c2".to_vec(), c1.mod_revision).await.unwrap();

    let current = s.current_revision().await.unwrap();
    assert!(
        matches!(s.compact(current + 1).await, Err(Error::FutureRevision { requested, .. }) if requested == current + 1)
    );
    s.compact(target).await.unwrap();
    assert_eq!(s.compacted_revision().await.unwrap(), target);
    // Compacting to an older revision is a no-op.
    s.compact(a1.mod_revision).await.unwrap();
    assert_eq!(s.compacted_revision().await.unwrap(), target);

    for rev in [a1.mod_revision, doomed.mod_revision, target] {
        match s.range(at(&p, Some(rev))).await {
            Err(Error::Compacted { requested, compacted }) => assert_eq!((requested, compacted), (rev, target)),
            other => panic!("range at compacted {rev}: {other:?}"),
        }
        match s.watch(&p, rev).await {
            Err(Error::Compacted { compacted, .. }) => assert_eq!(compacted, target),
            Err(e) => panic!("watch from compacted {rev}: {e:?}"),
            Ok(_) => panic!("watch from compacted {rev} started"),
        }
    }
    assert!(matches!(s.watch(&p, 0).await, Err(Error::Compacted { .. })));

    let now: Vec<_> = s.range(at(&p, None)).await.unwrap().kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
    assert_eq!(now, [(k("a"), b"a2".to_vec()), (k("b"), b"b1".to_vec()), (k("c"), b"c2".to_vec())]);
    assert_eq!(s.get(&k("a")).await.unwrap(), Some(a2));
    // Just above the compaction, keys last written below it are still readable; the deleted one stays gone.
    let got: Vec<_> =
        s.range(at(&p, Some(c1.mod_revision))).await.unwrap().kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
    assert_eq!(got, [(k("a"), b"a2".to_vec()), (k("b"), b"b1".to_vec()), (k("c"), b"c1".to_vec())]);

    // A watch just past the compaction still replays, with the surviving predecessor as prev.
    let mut w = s.watch(&p, c1.mod_revision).await.unwrap();
    let ev = take(&mut w, 1).await.remove(0);
    assert_eq!((ev.revision(), ev.prev.map(|p| p.value)), (c2.mod_revision, Some(b"c1".to_vec())));

    s.compact(c2.mod_revision).await.unwrap();
    assert_eq!(s.compacted_revision().await.unwrap(), c2.mod_revision);
    assert_eq!(s.get(&k("c")).await.unwrap(), Some(c2));
    assert_eq!(keys(&*s, &p, at(&p, None)).await, ["a", "b", "c"]);
}

/// Values of the size the API server accepts (3 MiB bodies) go through every path whole.
pub async fn large_values(s: Arc<dyn Store>) {
    let p = unique_prefix("large");
    let big = |seed: u8| (0..3 << 20).map(|i: u32| (i % 251) as u8 ^ seed).collect::<Vec<u8>>();
    let start = s.current_revision().await.unwrap();
    let a = s.create(&format!("{p}a"), big(1)).await.unwrap();
    let b = s.create(&format!("{p}b"), big(2)).await.unwrap();
    let a2 = s.update(&format!("{p}a"), big(3), a.mod_revision).await.unwrap();
    assert_eq!(s.get(&format!("{p}a")).await.unwrap().unwrap().value, big(3));

    // 6 MiB in one range and, at the old revision, the first versions.
    let now = s.range(at(&p, None)).await.unwrap().kvs;
    assert_eq!(now, [a2.clone(), b.clone()]);
    let then = s.range(at(&p, Some(b.mod_revision))).await.unwrap().kvs;
    assert_eq!(then, [a.clone(), b.clone()]);

    let gone = s.delete(&format!("{p}b"), None).await.unwrap();
    assert_eq!(gone.value, big(2));
    let mut w = s.watch(&p, start).await.unwrap();
    let events = take(&mut w, 4).await;
    assert_eq!(events[2].kv, a2);
    assert_eq!(events[2].prev.as_ref().map(|p| &p.value), Some(&big(1)));
    assert_eq!(events[3].kv, gone);
}

/// A thousand keys written concurrently: all there, in order, pageable at one revision.
pub async fn many_keys(s: Arc<dyn Store>) {
    const N: usize = 1000;
    let p = unique_prefix("many");
    let tasks = (0..8).map(|t| {
        let (s, p) = (s.clone(), p.clone());
        tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in (t..N).step_by(8) {
                revs.push(s.create(&format!("{p}{i:05}"), i.to_string().into_bytes()).await.unwrap().mod_revision);
            }
            revs
        })
    });
    let mut revs: Vec<i64> = futures::future::join_all(tasks).await.into_iter().flat_map(|r| r.unwrap()).collect();
    revs.sort_unstable();
    revs.dedup();
    assert_eq!(revs.len(), N, "every write got its own revision");

    let all = s.range(at(&p, None)).await.unwrap();
    let expected: Vec<String> = (0..N).map(|i| format!("{p}{i:05}")).collect();
    assert_eq!(all.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(), expected);
    assert!(all.kvs.iter().enumerate().all(|(i, kv)| kv.value == i.to_string().into_bytes()));

    // Delete some, then page through the old revision: it still has all of them.
    for i in (0..N).step_by(10) {
        s.delete(&format!("{p}{i:05}"), None).await.unwrap();
    }
    assert_eq!(s.range(at(&p, None)).await.unwrap().kvs.len(), N - N / 10);
    let mut seen = Vec::new();
    let mut start_after = None;
    loop {
        let req = RangeRequest {
            prefix: p.clone(),
            start_after,
            limit: 128,
            revision: Some(all.revision),
            ..Default::default()
        };
        let page = s.range(req).await.unwrap();
        assert_eq!(page.revision, all.revision);
        seen.extend(page.kvs.into_iter().map(|kv| kv.key));
        assert_eq!(page.remaining as usize, N - seen.len());
        if !page.more {
            break;
        }
        start_after = seen.last().cloned();
    }
    assert_eq!(seen, expected);
}
