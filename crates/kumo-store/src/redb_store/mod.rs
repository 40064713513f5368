//! [`RedbStore`]: the embedded, single-file backend of [`Store`], built on redb.
//!
//! Every write goes to one writer thread that commits queued requests together (group commit, see
//! `writer.rs`), so a write costs one shared fsync. Reads run on tokio's blocking pool against a redb read
//! snapshot. The table layout is described in `schema.rs`.

mod check;
mod defrag;
mod guard;
mod migrate;
mod read;
mod schema;
mod slot;
mod snapshot;
mod watch;
mod writer;

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod watch_tests;

use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use futures::stream::BoxStream;
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable};
use slot::Slot;
use tokio::sync::{broadcast, oneshot};

use crate::{Error, Event, KeyValue, RangeRequest, RangeResponse, Result, Store};
use schema::{backend, FORMAT_VERSION, META, META_COMPACTED, META_FORMAT_VERSION, META_REVISION};
use writer::{EventBatch, Op, Request};

/// How long opening the store may spend reading rows to verify them (the structure check is always whole).
const START_CHECK_BUDGET: std::time::Duration = std::time::Duration::from_secs(2);

pub use check::{unusable, CheckReport};
pub use defrag::defrag;
pub use snapshot::restore;

/// Live events buffered per watcher before a slow one is cut off (counted in commits, not events).
const BROADCAST_CAPACITY: usize = 4096;

/// Revisions of the log a compaction drops per transaction.
pub(crate) const COMPACT_STEP: i64 = if cfg!(test) { 3 } else { 10_000 };
/// Keys whose history a compaction drops per transaction.
const SWEEP_KEYS: usize = if cfg!(test) { 2 } else { 1_000 };

/// Committed counters, updated by the writer after each commit so they can be read without a transaction.
#[derive(Debug, Default)]
struct Shared {
    revision: AtomicI64,
    compacted: AtomicI64,
    /// Number of committed write transactions (lets tests observe group commit).
    commits: AtomicU64,
}

/// Damaged values seen (at open or by reads), for [`Store::take_corrupt`]: each key reported once.
#[derive(Default)]
struct Corruption {
    seen: std::sync::Mutex<Seen>,
}

/// Every key found damaged, and those not yet taken by [`Store::take_corrupt`].
#[derive(Default)]
struct Seen(std::collections::HashSet<String>, Vec<(String, String)>);

impl Corruption {
    fn note(&self, key: &str, detail: &str) {
        let mut g = self.seen.lock().expect("lock");
        if g.0.insert(key.to_string()) {
            tracing::error!(key = %key, detail = %detail, "corrupt value in the store: it is not served; restore it from a snapshot");
            g.1.push((key.to_string(), detail.to_string()));
        }
    }

    fn note_err<T>(&self, r: &Result<T>) {
        if let Err(Error::Corrupt { key, detail }) = r {
            self.note(key, detail);
        }
    }
}

/// A [`Store`] persisted in a single redb file.
///
/// Share it as `Arc<RedbStore>` (or `Arc<dyn Store>`). Dropping it waits for queued writes to commit and closes
/// the file, after which it may be opened again.
pub struct RedbStore {
    slot: Arc<Slot>,
    corrupt: Arc<Corruption>,
    shared: Arc<Shared>,
    /// None only while dropping, to stop the writer.
    requests: Option<mpsc::Sender<Request>>,
    events: broadcast::Sender<EventBatch>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").field("shared", &self.shared).finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the database at `path`, creating it if missing. Fails with [`Error::Backend`] if the file is not a
    /// redb database or was written by an unknown format version.
    pub fn open(path: &Path) -> Result<RedbStore> {
        Self::open_with_capacity(path, BROADCAST_CAPACITY)
    }

    fn open_with_capacity(path: &Path, capacity: usize) -> Result<RedbStore> {
        // Damage in the file's structure stops the server here, with what to do; damaged values are only
        // reported (a read of one fails naming it). The walk stops at a time budget.
        let opened = guard::guarded(|| -> Result<_> {
            let db = slot::open_db_waiting(path)?;
            let (revision, compacted) = init(&db)?;
            let sample = check::rows(&db, path, Some(START_CHECK_BUDGET))?;
            Ok((db, revision, compacted, sample))
        });
        let (db, revision, compacted, sample) = opened.map_err(|why| unusable(path, &why))??;
        let corrupt = Arc::new(Corruption::default());
        for (key, detail) in &sample.corrupt {
            corrupt.note(key, detail);
        }
        tracing::debug!(rows = sample.rows, complete = sample.complete, took = ?sample.took, "store checked at open");
        let shared = Arc::new(Shared {
            revision: AtomicI64::new(revision),
            compacted: AtomicI64::new(compacted),
            commits: AtomicU64::new(0),
        });
        let slot = Arc::new(Slot::new(path, db));
        let (requests, rx) = mpsc::channel();
        let (events, _) = broadcast::channel(capacity);
        let writer = {
            let (slot, shared, events) = (slot.clone(), shared.clone(), events.clone());
            std::thread::Builder::new()
                .name("kumo-store-writer".into())
                .spawn(move || writer::run(slot, shared, rx, events))
                .map_err(backend)?
        };
        Ok(RedbStore { slot, corrupt, shared, requests: Some(requests), events, writer: Some(writer) })
    }

    /// Checks a store file whole: structure, every row's checksum, and that the tables agree. The file must
    /// not be open elsewhere (stop the server first).
    pub fn check(path: &Path) -> Result<CheckReport> {
        let mut db = redb::Builder::new().open(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::Unavailable(format!(
                "{} is open in another process: stop the kumo server using it, then check again",
                path.display()
            )),
            e => unusable(path, &e.to_string()),
        })?;
        let checked = guard::guarded(|| -> Result<CheckReport> {
            let mut report = check::rows(&db, path, None)?;
            report.pages_ok = Some(check::pages(&mut db));
            Ok(report)
        });
        checked.map_err(|why| unusable(path, &why))?
    }

    /// Queues a write and waits (without blocking the runtime) for its durable commit.
    async fn submit(&self, op: Op) -> Result<Option<KeyValue>> {
        let gone = || Error::Backend("storage writer thread has stopped".into());
        let (reply, rx) = oneshot::channel();
        let requests = self.requests.as_ref().ok_or_else(gone)?;
        requests.send(Request { op, reply }).map_err(|_| gone())?;
        let r = rx.await.map_err(|_| gone())?;
        self.corrupt.note_err(&r);
        r
    }

    async fn submit_kv(&self, op: Op) -> Result<KeyValue> {
        self.submit(op).await?.ok_or_else(|| Error::Backend("write returned no value".into()))
    }

    /// Runs `f` on a fresh read snapshot on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> Result<T> + Send + 'static,
    {
        let db = self.slot.db()?;
        let read = move || guard::guarded(|| f(&db.begin_read().map_err(backend)?));
        let r =
            tokio::task::spawn_blocking(read).await.map_err(backend)?.unwrap_or_else(|why| Err(Error::Backend(why)));
        self.corrupt.note_err(&r);
        r
    }

    /// [`Store::watch`], awaiting `after_snapshot` between taking the replay snapshot and returning, so tests can
    /// commit exactly inside that window.
    async fn watch_with(
        &self,
        prefix: &str,
        after_revision: i64,
        after_snapshot: impl std::future::Future<Output = ()>,
    ) -> Result<BoxStream<'static, Result<Event>>> {
        // Subscribe before taking the replay snapshot: every commit is then either in the snapshot or arrives
        // live (possibly both; the live copy is dropped by revision).
        let rx = self.events.subscribe();
        let p = prefix.to_string();
        let (replay, snapshot) = self.read(move |txn| read::replay(txn, &p, after_revision)).await?;
        after_snapshot.await;
        let replayed_to = snapshot.max(after_revision);
        let prefix = prefix.to_string();
        Ok(watch::stream(replay, replayed_to, rx, prefix, self.shared.clone()))
    }
}

/// Creates the tables on first open, checks the format version and returns `(revision, compacted)`.
fn init(db: &Database) -> Result<(i64, i64)> {
    let txn = db.begin_write().map_err(backend)?;
    let revisions = {
        let mut meta = txn.open_table(META).map_err(backend)?;
        let version = meta.get(META_FORMAT_VERSION).map_err(backend)?.map(|v| v.value());
        match version {
            None => {
                meta.insert(META_FORMAT_VERSION, FORMAT_VERSION).map_err(backend)?;
            }
            Some(FORMAT_VERSION) => {}
            Some(schema::FORMAT_V1) => {
                tracing::info!("upgrading the store from format 1 to {FORMAT_VERSION} (per-value checksums)");
                migrate::v1_to_v2(&txn)?;
                meta.insert(META_FORMAT_VERSION, FORMAT_VERSION).map_err(backend)?;
            }
            Some(other) => {
                return Err(Error::Backend(format!(
                    "unsupported kumo-store format version {other} (this build understands {FORMAT_VERSION})"
                )));
            }
        }
        let get = |name| -> Result<i64> { Ok(meta.get(name).map_err(backend)?.map(|v| v.value()).unwrap_or(0)) };
        (get(META_REVISION)?, get(META_COMPACTED)?)
    };
    // Create the other tables so read transactions can always open them.
    txn.open_table(schema::CURRENT).map_err(backend)?;
    txn.open_table(schema::HISTORY).map_err(backend)?;
    txn.open_table(schema::LOG).map_err(backend)?;
    txn.open_table(schema::EXPIRY).map_err(backend)?;
    txn.open_table(schema::EXPIRES).map_err(backend)?;
    txn.commit().map_err(backend)?;
    Ok(revisions)
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and exit; joining releases the file lock.
        drop(self.requests.take());
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!("kumo-store writer thread panicked");
            }
        }
    }
}

#[async_trait::async_trait]
impl Store for RedbStore {
    async fn current_revision(&self) -> Result<i64> {
        Ok(self.shared.revision.load(Ordering::SeqCst))
    }

    async fn compacted_revision(&self) -> Result<i64> {
        Ok(self.shared.compacted.load(Ordering::SeqCst))
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_string();
        self.read(move |txn| read::get(txn, &key)).await
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        self.read(move |txn| read::range(txn, &req)).await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        self.submit_kv(Op::Create { key: key.to_string(), value, expires: None }).await
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected_revision: i64) -> Result<KeyValue> {
        self.submit_kv(Op::Update { key: key.to_string(), value, expected: expected_revision, expires: None }).await
    }

    async fn create_expiring(&self, key: &str, value: Vec<u8>, ttl: std::time::Duration) -> Result<KeyValue> {
        let expires = Some(writer::deadline(ttl));
        self.submit_kv(Op::Create { key: key.to_string(), value, expires }).await
    }

    async fn update_expiring(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_revision: i64,
        ttl: std::time::Duration,
    ) -> Result<KeyValue> {
        let expires = Some(writer::deadline(ttl));
        self.submit_kv(Op::Update { key: key.to_string(), value, expected: expected_revision, expires }).await
    }

    async fn delete(&self, key: &str, expected_revision: Option<i64>) -> Result<KeyValue> {
        self.submit_kv(Op::Delete { key: key.to_string(), expected: expected_revision }).await
    }

    async fn watch(&self, prefix: &str, after_revision: i64) -> Result<BoxStream<'static, Result<Event>>> {
        self.watch_with(prefix, after_revision, std::future::ready(())).await
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        if revision > self.current_revision().await? {
            // Refused whole (FutureRevision), not after compacting part of the way.
            return self.submit(Op::Compact { revision, first: true, last: true }).await.map(|_| ());
        }
        // As etcd does: the revision is compacted at once (reads at or below it are refused), then the history
        // is dropped in steps, other writes in between. History is kept by key, so it is dropped a key at a time:
        // each key's rows once, however many of its revisions the interval holds. Dropped in revision order, a
        // five-minute interval at ten thousand nodes went back to each Lease's rows every few seconds of
        // revisions, and the pages read had often left the page cache: the writer (every write) waited on the
        // disk for a minute at 57,000 VMIs.
        self.submit(Op::Compact { revision, first: true, last: false }).await?;
        // Every key the log names up to the revision: a compaction cut short (a crash) left its log behind, so
        // this one finishes it too.
        let keys = self.read(move |txn| read::logged_keys(txn, revision)).await?;
        for chunk in keys.chunks(SWEEP_KEYS) {
            self.submit(Op::Sweep { keys: chunk.to_vec(), upto: revision }).await?;
        }
        // Then the log, in revision order (a range of its table).
        let mut from = self.read(read::first_logged).await?.map(|r| r - 1).unwrap_or(revision).min(revision);
        loop {
            let to = if revision - from > COMPACT_STEP { from + COMPACT_STEP } else { revision };
            let last = to == revision;
            self.submit(Op::Compact { revision: to, first: false, last }).await?;
            if last {
                return Ok(());
            }
            from = to;
        }
    }

    async fn snapshot(&self) -> Result<BoxStream<'static, Result<bytes::Bytes>>> {
        let db = self.slot.db()?;
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::task::spawn_blocking(move || {
            let r = guard::guarded(|| snapshot::stream(&db, &tx)).unwrap_or_else(|why| Err(Error::Backend(why)));
            if let Err(e) = r {
                let _ = tx.blocking_send(Err(e));
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    fn take_corrupt(&self) -> Vec<(String, String)> {
        std::mem::take(&mut self.corrupt.seen.lock().expect("lock").1)
    }

    fn write_failure(&self) -> Option<String> {
        self.slot.failure().map(|f| format!("{} (for {}s)", f.error, f.since.elapsed().as_secs()))
    }
}
