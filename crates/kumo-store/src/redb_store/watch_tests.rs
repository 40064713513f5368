//! Watch and group-commit tests.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::tests::{open, take, temp};
use super::*;
use crate::EventKind;

/// Asserts the stream yields nothing more for now (no duplicates after the expected events).
async fn assert_no_more(stream: &mut BoxStream<'static, Result<Event>>) {
    let next = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
    assert!(next.is_err(), "unexpected extra item: {:?}", next.unwrap());
}

#[tokio::test]
async fn watch_replays_with_prev_then_follows_live() {
    let (_dir, path) = temp();
    let s = open(&path);
    s.create("/w/a", b"1".to_vec()).await.unwrap(); // 1
    s.create("/x/other", vec![]).await.unwrap(); // 2
    s.update("/w/a", b"2".to_vec(), 1).await.unwrap(); // 3
    s.delete("/w/a", None).await.unwrap(); // 4

    let mut w = s.watch("/w/", 0).await.unwrap();
    let replay = take(&mut w, 3).await;
    assert_eq!(replay.iter().map(Event::revision).collect::<Vec<_>>(), [1, 3, 4]);
    assert!(replay[0].kind == EventKind::Put && replay[0].prev.is_none());
    assert_eq!(replay[1].prev.as_ref().unwrap().value, b"1");
    assert_eq!(replay[2].kind, EventKind::Delete);
    assert_eq!((replay[2].kv.value.as_slice(), replay[2].kv.create_revision), (&b"2"[..], 1));
    assert_eq!(replay[2].prev.as_ref().unwrap().mod_revision, 3);

    s.create("/x/skip", vec![]).await.unwrap(); // 5
    let live = s.create("/w/b", b"live".to_vec()).await.unwrap(); // 6
    let ev = take(&mut w, 1).await.remove(0);
    assert_eq!((ev.kind, ev.kv), (EventKind::Put, live));

    // Watching from the middle only replays newer events.
    let mut w2 = s.watch("", 3).await.unwrap();
    let revs: Vec<_> = take(&mut w2, 3).await.iter().map(Event::revision).collect();
    assert_eq!(revs, [4, 5, 6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_sees_concurrent_writes_in_order() {
    let (_dir, path) = temp();
    let s = open(&path);
    let mut all = s.watch("", 0).await.unwrap();
    let mut only_c = s.watch("/c/", 0).await.unwrap();

    let mut tasks = Vec::new();
    for t in 0..16u8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let prefix = if t == 0 { "/d" } else { "/c" };
            for i in 0..50 {
                s.create(&format!("{prefix}/{t}/{i}"), vec![t]).await.unwrap();
            }
        }));
    }
    // Watchers started while commits are landing must continue seamlessly from their starting revision
    // (this is where the subscribe-vs-replay race would show as gaps or duplicates).
    let mut late: Vec<(i64, BoxStream<'static, Result<Event>>)> = Vec::new();
    loop {
        let start = s.current_revision().await.unwrap();
        if start >= 800 || late.len() >= 40 {
            break;
        }
        if late.last().is_none_or(|(last, _)| start > *last) {
            late.push((start, s.watch("", start).await.unwrap()));
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(s.current_revision().await.unwrap(), 800);
    // A sentinel write: any duplicate delivered before it would shift it out of place.
    s.create("/c/sentinel", vec![]).await.unwrap();

    let revs = |events: Vec<Event>| events.iter().map(Event::revision).collect::<Vec<_>>();
    assert_eq!(revs(take(&mut all, 801).await), (1..=801).collect::<Vec<_>>());
    eprintln!("late starts: {:?}", late.iter().map(|(s, _)| *s).collect::<Vec<_>>());
    for (start, mut w) in late {
        let got = revs(take(&mut w, (801 - start) as usize).await);
        assert_eq!(got, (start + 1..=801).collect::<Vec<_>>(), "watch from {start}");
    }
    let c = take(&mut only_c, 751).await;
    assert!(c.iter().all(|e| e.kv.key.starts_with("/c/")));
    assert!(c.windows(2).all(|w| w[0].revision() < w[1].revision()));
    assert_eq!(c[750].kv.key, "/c/sentinel");
}

#[tokio::test]
async fn commit_between_replay_snapshot_and_return_is_delivered_once() {
    let (_dir, path) = temp();
    let s = open(&path);
    s.create("/a", vec![]).await.unwrap(); // 1
    let racing_write = async { s.create("/b", vec![]).await.map(drop).unwrap() }; // 2
    let mut w = s.watch_with("", 0, racing_write).await.unwrap();
    s.create("/c", vec![]).await.unwrap(); // 3
    let revs: Vec<_> = take(&mut w, 3).await.iter().map(Event::revision).collect();
    assert_eq!(revs, [1, 2, 3]);
}

#[tokio::test]
async fn watch_from_future_revision_skips_until_then() {
    let (_dir, path) = temp();
    let s = open(&path);
    s.create("/a", vec![]).await.unwrap(); // 1
    let mut w = s.watch("", 3).await.unwrap();
    s.create("/b", vec![]).await.unwrap(); // 2
    s.create("/c", vec![]).await.unwrap(); // 3
    s.create("/d", vec![]).await.unwrap(); // 4
    let ev = take(&mut w, 1).await.remove(0);
    assert_eq!((ev.kv.key.as_str(), ev.revision()), ("/d", 4));
    assert_no_more(&mut w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_serializes_conflicting_writes() {
    let (_dir, path) = temp();
    let s = open(&path);
    let creates = (0..64).map(|i| {
        let s = s.clone();
        tokio::spawn(async move { s.create("/same", vec![i]).await })
    });
    let results = futures::future::join_all(creates).await;
    let ok = results.iter().filter(|r| r.as_ref().unwrap().is_ok()).count();
    let exists = results.iter().filter(|r| matches!(r.as_ref().unwrap(), Err(Error::AlreadyExists(_)))).count();
    assert_eq!((ok, exists), (1, 63));
    assert_eq!(s.current_revision().await.unwrap(), 1);

    // Concurrent CAS updates against the same expected revision: exactly one wins.
    let updates = (0..64).map(|i| {
        let s = s.clone();
        tokio::spawn(async move { s.update("/same", vec![i], 1).await })
    });
    let results = futures::future::join_all(updates).await;
    let ok = results.iter().filter(|r| r.as_ref().unwrap().is_ok()).count();
    let conflicts = results.iter().filter(|r| matches!(r.as_ref().unwrap(), Err(Error::Conflict { .. }))).count();
    assert_eq!((ok, conflicts), (1, 63));

    // Distinct keys all succeed with distinct revisions, sharing commits.
    let before = s.shared.commits.load(Ordering::SeqCst);
    let creates = (0..200).map(|i| {
        let s = s.clone();
        tokio::spawn(async move { s.create(&format!("/many/{i}"), vec![]).await.unwrap().mod_revision })
    });
    let mut revs: Vec<i64> = futures::future::join_all(creates).await.into_iter().map(|r| r.unwrap()).collect();
    revs.sort_unstable();
    assert_eq!(revs, (3..203).collect::<Vec<_>>());
    let commits = s.shared.commits.load(Ordering::SeqCst) - before;
    assert!(commits < 200, "expected batching, got {commits} commits for 200 writes");
}

#[tokio::test]
async fn lagging_watcher_ends_with_compacted() {
    let (_dir, path) = temp();
    let s = Arc::new(RedbStore::open_with_capacity(&path, 4).unwrap());
    let mut w = s.watch("", 0).await.unwrap();
    for i in 0..10 {
        s.create(&format!("/k/{i}"), vec![]).await.unwrap();
    }
    let next = w.next().await.unwrap();
    assert!(matches!(next, Err(Error::Compacted { requested: 0, .. })), "{next:?}");
    assert!(w.next().await.is_none());
}
