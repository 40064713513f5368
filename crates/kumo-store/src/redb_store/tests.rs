use std::sync::Arc;

use tempfile::TempDir;

use super::*;
use crate::conformance::Fixture;

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

async fn fixture() -> Fixture {
    let (dir, path) = temp();
    Fixture::new(open(&path), dir)
}

crate::conformance_tests!(fixture);

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

/// The suite checks what compaction means to readers; this checks that redb really dropped the rows.
#[tokio::test]
async fn compaction_removes_superseded_history() {
    let (_dir, path) = temp();
    let s = open(&path);
    s.create("/k/a", b"a1".to_vec()).await.unwrap(); // 1
    s.create("/k/b", b"b1".to_vec()).await.unwrap(); // 2
    s.update("/k/a", b"a2".to_vec(), 1).await.unwrap(); // 3
    s.create("/k/gone", vec![]).await.unwrap(); // 4
    s.delete("/k/gone", None).await.unwrap(); // 5
    s.create("/k/c", b"c1".to_vec()).await.unwrap(); // 6
    s.update("/k/c", b"c2".to_vec(), 6).await.unwrap(); // 7
    s.compact(5).await.unwrap();

    // Only each key's latest non-tombstone at or below 5 remains of the compacted history.
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
