use std::sync::Arc;

use tempfile::TempDir;

use super::*;
use crate::conformance::Fixture;
use redb::ReadableTableMetadata;

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

    // Current values live in `current` alone, so of history at or below 5 nothing remains: a1 is superseded by
    // the current a2@3, /k/gone ended in a tombstone. c1@6 is newer than the compaction.
    let expected = [("/k/c", 6)];
    assert_eq!(history_and_log(&s).await.0, expected.map(|(k, r)| (k.to_string(), r)));
}

/// The history rows (key, revision) and the log's revisions.
async fn history_and_log(s: &RedbStore) -> (Vec<(String, i64)>, Vec<i64>) {
    let db = s.slot.db().unwrap();
    tokio::task::spawn_blocking(move || {
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(schema::HISTORY).unwrap();
        let rows = t.iter().unwrap().map(|e| {
            let (k, _) = e.unwrap();
            let (key, rev) = k.value();
            (key.to_string(), rev)
        });
        let log = txn.open_table(schema::LOG).unwrap();
        (rows.collect(), log.iter().unwrap().map(|e| e.unwrap().0.value()).collect())
    })
    .await
    .unwrap()
}

/// A compaction compacts its revision first and drops history after, so a crash between leaves rows and log
/// behind: the store still opens clean, and the next compaction drops them.
#[tokio::test]
async fn a_compaction_cut_short_is_finished_by_the_next() {
    let (_dir, path) = temp();
    let s = open(&path);
    let a = s.create("/k/a", b"a1".to_vec()).await.unwrap(); // 1
    s.create("/k/b", b"b1".to_vec()).await.unwrap(); // 2
    let a = s.update("/k/a", b"a2".to_vec(), a.mod_revision).await.unwrap(); // 3
    s.update("/k/b", b"b2".to_vec(), 2).await.unwrap(); // 4
    s.update("/k/a", b"a3".to_vec(), a.mod_revision).await.unwrap(); // 5

    // Cut short: compacted to 4, only /k/a's history dropped.
    s.submit(Op::Compact { revision: 4, first: true, last: false }).await.unwrap();
    s.submit(Op::Sweep { keys: vec!["/k/a".into()], upto: 4 }).await.unwrap();
    drop(s);
    let s = open(&path);
    let db = s.slot.db().unwrap();
    let report = tokio::task::spawn_blocking(move || check::rows(&db, &path, None)).await.unwrap().unwrap();
    assert!(report.complete && report.corrupt.is_empty(), "{:?}", report.corrupt);
    assert_eq!(s.compacted_revision().await.unwrap(), 4);
    assert!(matches!(s.range(at("/k/", 4)).await, Err(Error::Compacted { .. })));
    assert_eq!(s.range(at("/k/", 4 + 1)).await.unwrap().kvs.len(), 2);
    // /k/a keeps a2@3 (its version at 4); /k/b's b1@2 is left over, and the log from 1.
    let (history, log) = history_and_log(&s).await;
    assert_eq!(history, [("/k/a", 3), ("/k/b", 2)].map(|(k, r)| (k.to_string(), r)));
    assert_eq!(log, [1, 2, 3, 4, 5]);
    s.compact(5).await.unwrap();
    let (history, log) = history_and_log(&s).await;
    assert!(history.is_empty() && log.is_empty(), "{history:?} {log:?}");
    assert_eq!(s.get("/k/a").await.unwrap().unwrap().value, b"a3");
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
async fn a_format_1_store_is_upgraded_with_checksums() {
    let (_dir, path) = temp();
    drop(open(&path));
    {
        // Rows as format 1 wrote them: no checksums.
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert(META_FORMAT_VERSION, 1).unwrap();
            meta.insert(META_REVISION, 3).unwrap();
            let v1_current = |c: i64, m: i64, v: &[u8]| [&c.to_le_bytes()[..], &m.to_le_bytes(), v].concat();
            let v1_history = |kind: u8, c: i64, v: &[u8]| [&[kind][..], &c.to_le_bytes(), v].concat();
            let mut current = txn.open_table(schema::CURRENT).unwrap();
            current.insert("/k/a", v1_current(1, 2, b"a2").as_slice()).unwrap();
            let mut history = txn.open_table(schema::HISTORY).unwrap();
            history.insert(("/k/a", 1), v1_history(1, 1, b"a1").as_slice()).unwrap();
            history.insert(("/k/a", 2), v1_history(1, 1, b"a2").as_slice()).unwrap();
            history.insert(("/k/b", 3), v1_history(2, 3, b"").as_slice()).unwrap();
            let mut log = txn.open_table(schema::LOG).unwrap();
            for (rev, key) in [(1, "/k/a"), (2, "/k/a"), (3, "/k/b")] {
                log.insert(rev, key).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let s = open(&path);
    let a = s.get("/k/a").await.unwrap().unwrap();
    assert_eq!((a.value.as_slice(), a.create_revision, a.mod_revision), (&b"a2"[..], 1, 2));
    assert_eq!(s.range(at("/k/", 1)).await.unwrap().kvs[0].value, b"a1");
    // History replays, the tombstone included, and new writes follow on.
    let mut w = s.watch("/k/", 0).await.unwrap();
    let mut seen = vec![];
    for _ in 0..3 {
        let e = futures::StreamExt::next(&mut w).await.unwrap().unwrap();
        seen.push((e.kv.key.clone(), e.kv.mod_revision, e.kind == crate::EventKind::Delete));
    }
    assert_eq!(seen, [("/k/a".into(), 1, false), ("/k/a".into(), 2, false), ("/k/b".into(), 3, true)]);
    let a3 = s.update("/k/a", b"a3".to_vec(), 2).await.unwrap();
    assert_eq!(a3.mod_revision, 4);
}

#[tokio::test]
async fn a_garbled_value_is_reported_by_key_and_never_served() {
    let (_dir, path) = temp();
    let s = open(&path);
    let bad = s.create("/k/bad", b"{\"spec\":1}".to_vec()).await.unwrap();
    s.create("/k/good", b"fine".to_vec()).await.unwrap();
    drop(s);
    {
        // A bit flipped in the stored value, as a bad disk would: the row still has the right shape.
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut current = txn.open_table(schema::CURRENT).unwrap();
            let mut row = current.get("/k/bad").unwrap().unwrap().value().to_vec();
            *row.last_mut().unwrap() ^= 0x02;
            current.insert("/k/bad", row.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let s = open(&path);
    match s.get("/k/bad").await {
        Err(Error::Corrupt { key, .. }) => assert_eq!(key, "/k/bad"),
        other => panic!("a garbled value must not be served: {other:?}"),
    }
    assert!(matches!(
        s.range(RangeRequest { prefix: "/k/".into(), ..Default::default() }).await,
        Err(Error::Corrupt { .. })
    ));
    // Nor at a past revision (the current value is its only copy); other keys are fine.
    assert!(matches!(s.range(at("/k/bad", bad.mod_revision)).await, Err(Error::Corrupt { .. })));
    assert_eq!(s.get("/k/good").await.unwrap().unwrap().value, b"fine");
}

/// Deadlines are kept in the file: a key expires after a restart, and a long-expired one right after opening.
/// Expiry deletes in batches; thousands due at once all go, in deadline order.
#[tokio::test]
async fn expiry_survives_reopen_and_deletes_in_batches() {
    let (_dir, path) = temp();
    let n = writer::MAX_EXPIRED + 100;
    {
        let s = open(&path);
        for i in 0..n {
            s.create_expiring(&format!("/e/{i:05}"), vec![], std::time::Duration::from_secs(1)).await.unwrap();
        }
        s.create("/keep", vec![]).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let s = open(&path);
    let start = std::time::Instant::now();
    while !keys(&s, RangeRequest { prefix: "/e/".into(), ..Default::default() }).await.is_empty() {
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "expired keys still there after a reopen");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(s.get("/keep").await.unwrap().is_some());
    // Each expired key took its own revision, as a deletion does.
    assert_eq!(s.current_revision().await.unwrap(), 2 * n as i64 + 1);
    let txn = s.slot.db().unwrap().begin_read().unwrap();
    assert_eq!(txn.open_table(schema::EXPIRY).unwrap().len().unwrap(), 0, "the index is emptied with the keys");
    assert_eq!(txn.open_table(schema::EXPIRES).unwrap().len().unwrap(), 0);
}

#[test]
fn opening_waits_for_a_lock_that_is_let_go() {
    // A killed predecessor's lock can outlive it for a moment (a forked child not yet exec'd holds the file).
    let (_dir, path) = temp();
    let held = Database::create(&path).unwrap();
    let letting_go = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(600));
        drop(held);
    });
    let started = std::time::Instant::now();
    let store = RedbStore::open(&path).expect("opened once the lock went");
    assert!(started.elapsed() >= std::time::Duration::from_millis(500), "it did not wait: the lock was held");
    letting_go.join().unwrap();
    drop(store);
}
