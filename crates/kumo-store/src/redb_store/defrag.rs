//! Giving disk space back. redb reuses the pages that compaction frees, so a store with steady updates stays at
//! the size its busiest interval needed; but the file never shrinks by itself. After a compaction the writer
//! measures how much of the file the last interval actually used, and when that is under half the file (and the
//! rest is worth having back) it moves the live pages down and truncates the file, as `etcdctl defrag` does.
//! Reads and writes wait meanwhile (about 3 s for a 500 MiB file on a slow machine), which is why it is done only
//! when the space has gone unused for a whole interval, not after every compaction.

use std::path::Path;
use std::time::{Duration, Instant};

use redb::Database;

use super::schema::backend;
use super::slot::Slot;
use crate::Result;

/// Free space below this is not worth pausing for (tests use a small store).
const MIN_RECLAIM: u64 = if cfg!(test) { 1 << 20 } else { 64 << 20 };

/// How long the writer waits for in-flight reads (a snapshot being streamed, say) to finish before giving up
/// until the next compaction.
const READ_PATIENCE: Duration = Duration::from_secs(2);

/// Bytes of the file in use by committed data (allocated pages), when the file is big enough for the answer to
/// matter: finding out walks every page (about 0.3 s at 100,000 objects), and holds up writes meanwhile.
pub(crate) fn in_use(slot: &Slot) -> Option<u64> {
    if file_len(slot.path()) < MIN_RECLAIM {
        return None;
    }
    allocated(&*slot.db().ok()?).ok()
}

fn allocated(db: &Database) -> Result<u64> {
    let txn = db.begin_write().map_err(backend)?;
    let stats = txn.stats().map_err(backend)?;
    txn.abort().map_err(backend)?;
    Ok(stats.allocated_pages() * stats.page_size() as u64)
}

/// Bytes the file takes on disk. Not its length: redb extends a file by doubling it, and the extension takes no
/// space until written, so a freshly shrunk file that grew again by one page would look half empty.
fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512).unwrap_or(0)
}

/// Whether a file of `len` bytes, of which the interval before a compaction used `used`, should be shrunk.
pub(crate) fn worth_it(len: u64, used: u64) -> bool {
    len > used.saturating_mul(2) && len - used >= MIN_RECLAIM
}

/// Called by the writer after a compaction, with what was in use just before it.
pub(crate) fn after_compaction(slot: &Slot, used_before: u64) {
    let len = file_len(slot.path());
    if !worth_it(len, used_before) {
        return;
    }
    let started = Instant::now();
    match slot.exclusive(READ_PATIENCE, |db| super::guard::guarded(|| db.compact())) {
        None => tracing::info!("store defragmentation put off: reads kept the file busy"),
        Some(Ok(Ok(_))) => tracing::info!(
            before_mib = len >> 20,
            after_mib = file_len(slot.path()) >> 20,
            took = ?started.elapsed(),
            "store file shrunk after compaction"
        ),
        Some(Ok(Err(e))) => tracing::warn!(error = %e, "store defragmentation failed; the data is unaffected"),
        Some(Err(why)) => tracing::warn!(error = %why, "store defragmentation failed; the data is unaffected"),
    }
}

/// Shrinks a stopped server's store file; returns its size before and after.
pub fn defrag(path: &Path) -> Result<(u64, u64)> {
    let before = file_len(path);
    let mut db = super::slot::open_db(path)?;
    super::guard::guarded(|| db.compact()).map_err(crate::Error::Backend)?.map_err(backend)?;
    drop(db);
    Ok((before, file_len(path)))
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::sync::Arc;

    use super::super::tests::{open, temp};
    use super::*;
    use crate::Store;

    fn value(i: usize, round: usize) -> Vec<u8> {
        format!("{i}/{round}/").repeat(4096 / 8).into_bytes()
    }

    /// Writes `n` keys and updates each twice, leaving history worth shrinking after a compaction. Writes are
    /// issued together so they share commits.
    async fn churned(path: &Path, n: usize) -> Arc<super::super::RedbStore> {
        let s = open(path);
        for round in 0..3 {
            let writes = (0..n).map(|i| {
                let s = s.clone();
                async move {
                    let key = format!("/k/{i:05}");
                    match s.get(&key).await.unwrap() {
                        None => s.create(&key, value(i, round)).await.unwrap(),
                        Some(cur) => s.update(&key, value(i, round), cur.mod_revision).await.unwrap(),
                    }
                }
            });
            futures::future::join_all(writes).await;
        }
        s
    }

    async fn assert_latest(s: &super::super::RedbStore, n: usize) {
        for i in 0..n {
            let kv = s.get(&format!("/k/{i:05}")).await.unwrap().expect("key present");
            assert_eq!(kv.value, value(i, 2), "key {i}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_store_gives_space_back_while_reads_wait() {
        let (_dir, path) = temp();
        let n = 600;
        let s = churned(&path, n).await;
        let rev = s.current_revision().await.unwrap();
        // The first compaction follows a busy interval: its space is still wanted.
        s.compact(rev).await.unwrap();
        let busy = file_len(&path);
        // Readers run throughout the next one, which finds the space unused and shrinks the file.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..4)
            .map(|r| {
                let (s, stop) = (s.clone(), stop.clone());
                tokio::spawn(async move {
                    // At least one read each, even when a busy machine starts this task only after the shrink.
                    let mut reads = 0;
                    loop {
                        let i = (r * 131 + reads * 7) % n;
                        let kv = s.get(&format!("/k/{i:05}")).await.expect("reads wait, never fail");
                        assert_eq!(kv.expect("present").value, value(i, 2));
                        reads += 1;
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break reads;
                        }
                    }
                })
            })
            .collect();
        // (redb returns the pages a commit frees only after a later one, so it may take another interval.)
        for _ in 0..3 {
            if file_len(&path) * 2 < busy {
                break;
            }
            s.compact(rev).await.unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for r in readers {
            assert!(r.await.unwrap() > 0);
        }
        let idle = file_len(&path);
        assert!(idle * 2 < busy, "the file shrank: {busy} → {idle} bytes");
        assert_latest(&s, n).await;
        // Writes go on in the smaller file.
        s.create("/k/after", b"x".to_vec()).await.unwrap();
        drop(s);
        let s = open(&path);
        assert_latest(&s, n).await;
        assert_eq!(s.current_revision().await.unwrap(), rev + 1);
    }

    /// Run by `killed_midway_loses_nothing` in a child process, which it SIGKILLs while the file is shrinking.
    #[test]
    #[ignore]
    fn defrag_child() {
        let Ok(path) = std::env::var("KUMO_DEFRAG_CHILD") else { return };
        eprintln!("defragmenting");
        defrag(Path::new(&path)).unwrap();
        eprintln!("defragmented");
    }

    #[tokio::test]
    async fn killed_midway_loses_nothing() {
        let n = 1500;
        let mut midway = 0;
        for delay_ms in [1, 10] {
            let (_dir, path) = temp();
            let s = churned(&path, n).await;
            s.compact(s.current_revision().await.unwrap()).await.unwrap();
            drop(s);
            let mut child = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--ignored", "--exact", "redb_store::defrag::tests::defrag_child", "--nocapture"])
                .env("KUMO_DEFRAG_CHILD", &path)
                .stderr(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
            let started = lines.by_ref().map_while(|l| l.ok()).any(|l| l == "defragmenting");
            assert!(started, "the child never started defragmenting");
            std::thread::sleep(Duration::from_millis(delay_ms));
            child.kill().unwrap();
            child.wait().unwrap();
            let finished = lines.map_while(|l| l.ok()).any(|l| l == "defragmented");
            eprintln!("killed {delay_ms} ms in: {}", if finished { "after it finished" } else { "midway" });
            midway += usize::from(!finished);
            let s = open(&path);
            assert_latest(&s, n).await;
            drop(s);
            let report = super::super::RedbStore::check(&path).unwrap();
            assert!(report.corrupt.is_empty() && report.pages_ok != Some(false), "{report:?}");
        }
        assert!(midway > 0, "every kill came after the defragmentation had finished: nothing was tested");
    }

    #[test]
    fn shrinks_only_space_unused_for_an_interval() {
        let m = MIN_RECLAIM;
        assert!(worth_it(8 * m, 4 * m - 1), "half the file unused");
        assert!(!worth_it(8 * m, 7 * m), "the interval used the file: it would only grow back");
        assert!(!worth_it(m + m / 4, m / 2), "too little to be worth a pause");
        assert!(!worth_it(0, 0));
    }
}
