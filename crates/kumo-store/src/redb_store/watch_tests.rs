//! redb-specific watch and group-commit tests (the backend-neutral ones are in `crate::conformance`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::StreamExt;

use super::tests::{open, temp};
use super::*;
use crate::conformance::take;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_batches_concurrent_writes() {
    let (_dir, path) = temp();
    let s = open(&path);
    // Distinct keys all succeed with distinct revisions, sharing commits. (The suite checks that conflicting
    // writes serialize; this checks they share commits.)
    let before = s.shared.commits.load(Ordering::SeqCst);
    let creates = (0..200).map(|i| {
        let s = s.clone();
        tokio::spawn(async move { s.create(&format!("/many/{i}"), vec![]).await.unwrap().mod_revision })
    });
    let mut revs: Vec<i64> = futures::future::join_all(creates).await.into_iter().map(|r| r.unwrap()).collect();
    revs.sort_unstable();
    assert_eq!(revs, (1..201).collect::<Vec<_>>());
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
