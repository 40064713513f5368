//! Watch: replay from a revision with previous values, then live changes, in order, exactly once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;

use super::{assert_no_more, take, unique_prefix};
use crate::{Event, EventKind, Result, Store};

fn revs(events: &[Event]) -> Vec<i64> {
    events.iter().map(Event::revision).collect()
}

/// History after the start revision is replayed (only under the prefix, with previous values), then live
/// writes follow.
pub async fn watch_replays_with_prev_then_follows_live(s: Arc<dyn Store>) {
    let p = unique_prefix("watch");
    let (w_prefix, k) = (format!("{p}w/"), |n: &str| format!("{p}{n}"));
    let start = s.current_revision().await.unwrap();
    let a1 = s.create(&k("w/a"), b"1".to_vec()).await.unwrap();
    s.create(&k("x/other"), vec![]).await.unwrap();
    let a2 = s.update(&k("w/a"), b"2".to_vec(), a1.mod_revision).await.unwrap();
    let del = s.delete(&k("w/a"), None).await.unwrap();

    let mut w = s.watch(&w_prefix, start).await.unwrap();
    let replay = take(&mut w, 3).await;
    assert_eq!(revs(&replay), [a1.mod_revision, a2.mod_revision, del.mod_revision]);
    assert_eq!((&replay[0].kind, &replay[0].kv, &replay[0].prev), (&EventKind::Put, &a1, &None));
    assert_eq!((&replay[1].kv, &replay[1].prev), (&a2, &Some(a1.clone())));
    assert_eq!((&replay[2].kind, &replay[2].kv, &replay[2].prev), (&EventKind::Delete, &del, &Some(a2.clone())));

    let skip = s.create(&k("x/skip"), vec![]).await.unwrap();
    let live = s.create(&k("w/b"), b"live".to_vec()).await.unwrap();
    let ev = take(&mut w, 1).await.remove(0);
    assert_eq!((ev.kind, ev.kv, ev.prev), (EventKind::Put, live.clone(), None));
    assert_no_more(&mut w).await;

    // Watching from the middle only replays newer events.
    let mut w2 = s.watch(&p, a2.mod_revision).await.unwrap();
    assert_eq!(revs(&take(&mut w2, 3).await), [del.mod_revision, skip.mod_revision, live.mod_revision]);
    assert_no_more(&mut w2).await;
}

/// A delete event carries the last value (with the deletion's revision and the key's create_revision) and
/// that value again as prev; a re-create has no prev.
pub async fn watch_delete_events_carry_the_last_value(s: Arc<dyn Store>) {
    let p = unique_prefix("watch-delete");
    let k = format!("{p}k");
    let v1 = s.create(&k, b"v1".to_vec()).await.unwrap();
    let v2 = s.update(&k, b"v2".to_vec(), v1.mod_revision).await.unwrap();
    let mut w = s.watch(&p, v2.mod_revision).await.unwrap();
    let gone = s.delete(&k, Some(v2.mod_revision)).await.unwrap();
    let again = s.create(&k, b"v3".to_vec()).await.unwrap();
    let gone_again = s.delete(&k, None).await.unwrap();

    let events = take(&mut w, 3).await;
    assert_eq!(events[0].kind, EventKind::Delete);
    assert_eq!(events[0].kv, gone);
    assert_eq!((events[0].kv.value.as_slice(), events[0].kv.create_revision), (&b"v2"[..], v1.create_revision));
    assert_eq!(events[0].prev, Some(v2));
    assert_eq!((&events[1].kind, &events[1].kv, &events[1].prev), (&EventKind::Put, &again, &None));
    assert_eq!((&events[2].kind, &events[2].kv), (&EventKind::Delete, &gone_again));
    assert_eq!(events[2].kv.create_revision, again.create_revision);
    assert_no_more(&mut w).await;
}

/// A watch from a revision not reached yet delivers nothing until writes pass it. Needs no other writer (it
/// counts the revisions in between).
pub async fn watch_from_future_revision_skips_until_then(s: Arc<dyn Store>) {
    let p = unique_prefix("watch-future");
    let start = s.current_revision().await.unwrap();
    let mut w = s.watch(&p, start + 3).await.unwrap();
    for n in ["b", "c", "d"] {
        s.create(&format!("{p}{n}"), vec![]).await.unwrap();
    }
    let d = s.create(&format!("{p}e"), vec![]).await.unwrap();
    assert_eq!(d.mod_revision, start + 4);
    let ev = take(&mut w, 1).await.remove(0);
    assert_eq!(ev.kv, d);
    assert_no_more(&mut w).await;
}

/// Many concurrent writers, watchers started while they write: each watcher sees exactly the writes after
/// its start revision, in order, once.
pub async fn watch_sees_concurrent_writes_in_order(s: Arc<dyn Store>) {
    const TASKS: usize = 16;
    const EACH: usize = 50;
    let p = unique_prefix("watch-concurrent");
    let start = s.current_revision().await.unwrap();
    let mut all = s.watch(&p, start).await.unwrap();
    let mut only_c = s.watch(&format!("{p}c/"), start).await.unwrap();

    let written = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (s, p, written) = (s.clone(), p.clone(), written.clone());
            tokio::spawn(async move {
                let dir = if t == 0 { "d" } else { "c" };
                for i in 0..EACH {
                    s.create(&format!("{p}{dir}/{t}/{i}"), vec![t as u8]).await.unwrap();
                    written.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Watchers started while commits are landing must continue seamlessly from their start revision (where a
    // race between replay and live delivery would show as gaps or duplicates).
    let mut late: Vec<(i64, BoxStream<'static, Result<Event>>)> = Vec::new();
    while written.load(Ordering::Relaxed) < TASKS * EACH && late.len() < 40 {
        let at = s.current_revision().await.unwrap();
        if late.last().is_none_or(|(last, _)| at > *last) {
            late.push((at, s.watch(&p, at).await.unwrap()));
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    for task in tasks {
        task.await.unwrap();
    }
    // A sentinel write: any duplicate delivered before it would shift it out of place.
    let sentinel = s.create(&format!("{p}c/sentinel"), vec![]).await.unwrap();

    let total = TASKS * EACH + 1;
    let events = take(&mut all, total).await;
    assert!(events.windows(2).all(|w| w[0].revision() < w[1].revision()), "out of order");
    assert_eq!(events[total - 1].kv, sentinel);
    assert_no_more(&mut all).await;
    let all_revs = revs(&events);
    assert!(late.len() > 1, "no watcher started during the writes");
    for (from, mut w) in late {
        let expected: Vec<i64> = all_revs.iter().copied().filter(|r| *r > from).collect();
        assert_eq!(revs(&take(&mut w, expected.len()).await), expected, "watch from {from}");
    }
    let c = take(&mut only_c, total - EACH).await;
    assert!(c.iter().all(|e| e.kv.key.starts_with(&format!("{p}c/"))));
    assert!(c.windows(2).all(|w| w[0].revision() < w[1].revision()));
    assert_eq!(c[total - EACH - 1].kv, sentinel);
}
