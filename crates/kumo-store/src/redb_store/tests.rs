use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tempfile::TempDir;

use super::*;

pub(super) fn temp() -> (TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kumo.redb");
    (dir, path)
}

pub(super) fn open(path: &Path) -> Arc<RedbStore> {
    Arc::new(RedbStore::open(path).unwrap())
}

async fn keys(store: &RedbStore, req: RangeRequest) -> Vec<String> {
    store.range(req).await.unwrap().kvs.into_iter().map(|kv| kv.key).collect()
}

fn at(prefix: &str, revision: i64) -> RangeRequest {
    RangeRequest { prefix: prefix.into(), revision: Some(revision), ..Default::default() }
}

/// Reads `n` events, failing if the stream errors, ends or stalls.
pub(super) async fn take(stream: &mut BoxStream<'static, Result<Event>>, n: usize) -> Vec<Event> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(30), stream.next()).await;
        out.push(next.expect("watch stalled").expect("watch ended").expect("watch failed"));
    }
    out
}

#[tokio::test]
async fn create_get_update_delete() {
    let (_dir, path) = temp();
    let s = open(&path);
    assert_eq!(s.current_revision().await.unwrap(), 0);
    assert!(s.get("/a").await.unwrap().is_none());

    let a = s.create("/a", b"1".to_vec()).await.unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.value.as_slice()), (1, 1, &b"1"[..]));
    assert!(matches!(s.create("/a", b"x".to_vec()).await, Err(Error::AlreadyExists(k)) if k == "/a"));
    assert_eq!(s.get("/a").await.unwrap(), Some(a.clone()));

    let a2 = s.update("/a", b"2".to_vec(), 1).await.unwrap();
    assert_eq!((a2.create_revision, a2.mod_revision), (1, 2));
    match s.update("/a", b"3".to_vec(), 1).await {
        Err(Error::Conflict { key, current }) => {
            assert_eq!(key, "/a");
            assert_eq!(current, Some(a2.clone()));
        }
        other => panic!("expected conflict, got {other:?}"),
    }
    assert!(matches!(s.update("/missing", vec![], 1).await, Err(Error::NotFound(_))));
    assert!(matches!(s.delete("/missing", None).await, Err(Error::NotFound(_))));
    assert!(matches!(s.delete("/a", Some(1)).await, Err(Error::Conflict { .. })));
    // Failed writes consume no revision.
    assert_eq!(s.current_revision().await.unwrap(), 2);

    let gone = s.delete("/a", Some(2)).await.unwrap();
    assert_eq!((gone.value.as_slice(), gone.create_revision, gone.mod_revision), (&b"2"[..], 1, 3));
    assert!(s.get("/a").await.unwrap().is_none());
    let again = s.create("/a", b"new".to_vec()).await.unwrap();
    assert_eq!((again.create_revision, again.mod_revision), (4, 4));
    let b = s.create("/b", vec![]).await.unwrap();
    assert_eq!(s.delete("/b", None).await.unwrap().mod_revision, b.mod_revision + 1);
    assert_eq!(s.current_revision().await.unwrap(), 6);
}

#[tokio::test]
async fn state_survives_reopen() {
    let (_dir, path) = temp();
    {
        let s = open(&path);
        s.create("/k/a", b"a".to_vec()).await.unwrap();
        s.create("/k/b", b"b".to_vec()).await.unwrap();
        s.update("/k/a", b"a2".to_vec(), 1).await.unwrap();
        s.delete("/k/b", None).await.unwrap();
        s.compact(1).await.unwrap();
    }
    let s = open(&path);
    assert_eq!(s.current_revision().await.unwrap(), 4);
    assert_eq!(s.compacted_revision().await.unwrap(), 1);
    let a = s.get("/k/a").await.unwrap().unwrap();
    assert_eq!((a.value.as_slice(), a.create_revision, a.mod_revision), (&b"a2"[..], 1, 3));
    assert_eq!(keys(&s, at("/k/", 2)).await, vec!["/k/a", "/k/b"]);
    assert_eq!(s.create("/k/c", vec![]).await.unwrap().mod_revision, 5);
    drop(s);
    let s = open(&path);
    assert_eq!(s.current_revision().await.unwrap(), 5);
}

#[tokio::test]
async fn range_prefix_limit_paging_and_revisions() {
    let (_dir, path) = temp();
    let s = open(&path);
    for k in ["/a/1", "/a/2", "/a/3", "/a/4", "/a/5", "/b/1", "/a0"] {
        s.create(k, k.as_bytes().to_vec()).await.unwrap();
    }
    let rev_before_changes = s.current_revision().await.unwrap(); // 7
    s.update("/a/2", b"two".to_vec(), 2).await.unwrap(); // 8
    s.delete("/a/3", None).await.unwrap(); // 9
    s.create("/a/6", vec![]).await.unwrap(); // 10

    let all = |prefix: &str| RangeRequest { prefix: prefix.into(), ..Default::default() };
    assert_eq!(keys(&s, all("/a/")).await, ["/a/1", "/a/2", "/a/4", "/a/5", "/a/6"]);
    assert_eq!(keys(&s, all("")).await.len(), 7);
    assert!(keys(&s, all("/zzz")).await.is_empty());

    // Paging with limit + start_after visits every key exactly once, with correct `more`/`remaining`.
    let mut seen = Vec::new();
    let mut start_after = None;
    loop {
        let req = RangeRequest { prefix: "/a/".into(), start_after: start_after.clone(), limit: 2, revision: None };
        let resp = s.range(req).await.unwrap();
        assert_eq!(resp.revision, 10);
        seen.extend(resp.kvs.iter().map(|kv| kv.key.clone()));
        assert_eq!(resp.remaining, 5 - seen.len() as i64);
        assert_eq!(resp.more, resp.remaining > 0);
        if !resp.more {
            break;
        }
        start_after = seen.last().cloned();
    }
    assert_eq!(seen, ["/a/1", "/a/2", "/a/4", "/a/5", "/a/6"]);

    // At an old revision: deleted key present, updated key has its old value, later key absent.
    let old = s.range(at("/a/", rev_before_changes)).await.unwrap();
    assert_eq!(old.revision, rev_before_changes);
    let got: Vec<_> = old.kvs.iter().map(|kv| (kv.key.as_str(), kv.value.as_slice(), kv.mod_revision)).collect();
    assert_eq!(
        got,
        [
            ("/a/1", &b"/a/1"[..], 1),
            ("/a/2", &b"/a/2"[..], 2),
            ("/a/3", &b"/a/3"[..], 3),
            ("/a/4", &b"/a/4"[..], 4),
            ("/a/5", &b"/a/5"[..], 5),
        ]
    );
    let paged = RangeRequest {
        prefix: "/a/".into(),
        start_after: Some("/a/2".into()),
        limit: 2,
        revision: Some(rev_before_changes),
    };
    let resp = s.range(paged).await.unwrap();
    let got: Vec<_> = resp.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!((got, resp.more, resp.remaining), (vec!["/a/3", "/a/4"], true, 1));
    assert_eq!(keys(&s, at("/a/", 9)).await, ["/a/1", "/a/2", "/a/4", "/a/5"]);
    assert_eq!(keys(&s, at("", 1)).await, ["/a/1"]);
    assert!(matches!(s.range(at("", 11)).await, Err(Error::FutureRevision { requested: 11, current: 10 })));
}

#[tokio::test]
async fn compaction_discards_history_but_keeps_current() {
    let (_dir, path) = temp();
    let s = open(&path);
    s.create("/k/a", b"a1".to_vec()).await.unwrap(); // 1
    s.create("/k/b", b"b1".to_vec()).await.unwrap(); // 2
    s.update("/k/a", b"a2".to_vec(), 1).await.unwrap(); // 3
    s.create("/k/gone", vec![]).await.unwrap(); // 4
    s.delete("/k/gone", None).await.unwrap(); // 5
    s.create("/k/c", b"c1".to_vec()).await.unwrap(); // 6
    s.update("/k/c", b"c2".to_vec(), 6).await.unwrap(); // 7

    assert!(matches!(s.compact(8).await, Err(Error::FutureRevision { requested: 8, current: 7 })));
    s.compact(5).await.unwrap();
    assert_eq!(s.compacted_revision().await.unwrap(), 5);
    // Compacting to an older revision is a no-op.
    s.compact(2).await.unwrap();
    assert_eq!(s.compacted_revision().await.unwrap(), 5);

    for rev in [1, 4, 5] {
        assert!(matches!(s.range(at("", rev)).await, Err(Error::Compacted { compacted: 5, .. })));
        assert!(matches!(s.watch("", rev).await, Err(Error::Compacted { compacted: 5, .. })));
    }
    assert!(matches!(s.watch("", 0).await, Err(Error::Compacted { .. })));

    let current = s.range(RangeRequest::default()).await.unwrap();
    let got: Vec<_> = current.kvs.iter().map(|kv| (kv.key.as_str(), kv.value.as_slice())).collect();
    assert_eq!(got, [("/k/a", &b"a2"[..]), ("/k/b", &b"b1"[..]), ("/k/c", &b"c2"[..])]);
    // Just above the compaction, keys last written below it are still readable; the deleted one stays gone.
    let got: Vec<_> = s.range(at("", 6)).await.unwrap().kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
    assert_eq!(
        got,
        [("/k/a".into(), b"a2".to_vec()), ("/k/b".into(), b"b1".to_vec()), ("/k/c".into(), b"c1".to_vec())]
    );

    // Watch just past the compaction still replays, with the surviving predecessor as prev.
    let mut w = s.watch("", 6).await.unwrap();
    let ev = take(&mut w, 1).await.remove(0);
    assert_eq!((ev.revision(), ev.prev.unwrap().value), (7, b"c1".to_vec()));

    // Compaction physically removed superseded history: only latest-at-or-below-5 non-tombstones remain.
    let db = s.db.clone();
    let history: Vec<(String, i64)> = tokio::task::spawn_blocking(move || {
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(schema::HISTORY).unwrap();
        let rows = t.iter().unwrap().map(|e| {
            let (k, _) = e.unwrap();
            let (key, rev) = k.value();
            (key.to_string(), rev)
        });
        rows.collect()
    })
    .await
    .unwrap();
    let expected = [("/k/a", 3), ("/k/b", 2), ("/k/c", 6), ("/k/c", 7)];
    assert_eq!(history, expected.map(|(k, r)| (k.to_string(), r)));

    s.compact(7).await.unwrap();
    assert_eq!(s.get("/k/c").await.unwrap().unwrap().value, b"c2");
    assert_eq!(keys(&s, RangeRequest::default()).await.len(), 3);
}

#[tokio::test]
async fn unknown_format_version_is_refused() {
    let (_dir, path) = temp();
    drop(open(&path));
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert(META_FORMAT_VERSION, 99).unwrap();
        txn.commit().unwrap();
    }
    match RedbStore::open(&path) {
        Err(Error::Backend(msg)) => assert!(msg.contains("format version 99"), "{msg}"),
        other => panic!("expected refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn store_is_usable_as_dyn_store() {
    let (_dir, path) = temp();
    let s: Arc<dyn Store> = open(&path);
    s.create("/x", vec![1]).await.unwrap();
    assert_eq!(s.get("/x").await.unwrap().unwrap().value, [1]);
}
