//! The single writer thread: group commit of queued write requests.
//!
//! redb allows one write transaction at a time and every durable commit costs an fsync, so all writes funnel
//! through one thread that drains whatever is queued, applies it in one transaction, commits once and then
//! answers every request. Each request keeps its own revision and its own result.
//!
//! The same thread deletes expired keys: about once a second it looks at the first row of the `expiry` index
//! and, when that is due, deletes every due key in one transaction.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, Table};
use tokio::sync::{broadcast, oneshot};

use super::schema::{
    backend, current_mod_revision, decode_current, encode_current, Version, CURRENT, EXPIRES, EXPIRY, HISTORY, LOG,
    META, META_COMPACTED, META_REVISION,
};
use super::slot::{Slot, RETRY_AFTER};
use super::Shared;
use crate::{Error, Event, EventKind, KeyValue, Result};

/// Upper bound on requests per transaction, so one commit never grows without limit.
const MAX_BATCH: usize = 1024;

/// How often the writer looks for expired keys.
const EXPIRY_TICK: Duration = Duration::from_secs(1);
/// Most keys one expiry transaction deletes (the rest go in the next, a moment later).
pub(crate) const MAX_EXPIRED: usize = 2048;

/// A write operation, applied in submission order. `expires` is a deadline in unix milliseconds.
#[derive(Debug)]
pub(crate) enum Op {
    Create {
        key: String,
        value: Vec<u8>,
        expires: Option<i64>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: i64,
        expires: Option<i64>,
    },
    Delete {
        key: String,
        expected: Option<i64>,
    },
    /// One step of a compaction: the `first` sets the compacted revision (reads at or below it are refused from
    /// then on), later ones drop the log up to `revision` ([`super::COMPACT_STEP`] revisions at most), after
    /// the [`Op::Sweep`]s. What the interval used is measured before the first, space is given back after the
    /// `last`.
    Compact {
        revision: i64,
        first: bool,
        last: bool,
    },
    /// Drops the history of `keys` at or below `upto` (a compacted revision), keeping each key's version as of
    /// `upto`.
    Sweep {
        keys: Vec<String>,
        upto: i64,
    },
    /// Deletes keys whose deadline is at or before `now`.
    Expire {
        now: i64,
    },
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The deadline of a key written now with `ttl`.
pub(crate) fn deadline(ttl: Duration) -> i64 {
    now_ms().saturating_add(ttl.as_millis().min(i64::MAX as u128) as i64)
}

/// What a request gets back: the written value for puts and deletes, None for a compaction.
pub(crate) type Outcome = Result<Option<KeyValue>>;

pub(crate) struct Request {
    pub(crate) op: Op,
    pub(crate) reply: oneshot::Sender<Outcome>,
}

/// Live events of one commit, in revision order.
pub(crate) type EventBatch = Arc<Vec<Event>>;

/// Runs until every request sender is dropped.
pub(crate) fn run(
    slot: Arc<Slot>,
    shared: Arc<Shared>,
    requests: mpsc::Receiver<Request>,
    events: broadcast::Sender<EventBatch>,
) {
    let mut expiry_checked = Instant::now();
    // What the file used before the compaction under way began.
    let mut used_before = None;
    loop {
        if expiry_checked.elapsed() >= EXPIRY_TICK {
            expiry_checked = Instant::now();
            expire_due(&slot, &shared, &events);
        }
        let first = match requests.recv_timeout(RETRY_AFTER.min(EXPIRY_TICK)) {
            Ok(req) => req,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Reads need the database open even when nobody writes (and writes, opened for writing).
                if slot.writable_db().is_err() {
                    let _ = slot.reopen();
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(req) => batch.push(req),
                Err(_) => break,
            }
        }
        let (ops, replies): (Vec<Op>, Vec<_>) = batch.into_iter().map(|r| (r.op, r.reply)).unzip();
        // What the interval before a compaction used decides whether the file is worth shrinking after it. Even a
        // compaction with nothing to drop counts: it is how an idle store notices its space has gone unused.
        if ops.iter().any(|op| matches!(op, Op::Compact { first: true, .. })) {
            used_before = super::defrag::in_use(&slot);
        }
        let compacted = ops.iter().any(|op| matches!(op, Op::Compact { last: true, .. }));
        let outcomes = write(&slot, &shared, &events, &ops);
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            // The caller may have given up waiting; the write stands regardless.
            let _ = reply.send(outcome);
        }
        if let (true, Some(used), None) = (compacted, used_before, slot.failure()) {
            used_before = None;
            super::defrag::after_compaction(&slot, used);
        }
    }
}

/// Deletes the keys whose deadline has passed, when the first row of the index says any has: an idle store
/// with nothing due costs one read a second, no write.
fn expire_due(slot: &Slot, shared: &Shared, events: &broadcast::Sender<EventBatch>) {
    let now = now_ms();
    let first = || -> Result<Option<i64>> {
        let txn = slot.db()?.begin_read().map_err(backend)?;
        let expiry = txn.open_table(EXPIRY).map_err(backend)?;
        let first = expiry.first().map_err(backend)?.map(|(k, _)| k.value().0);
        Ok(first)
    };
    let due = super::guard::guarded(first).unwrap_or_else(|why| Err(Error::Backend(why)));
    if !matches!(due, Ok(Some(deadline)) if deadline <= now) {
        return;
    }
    if let Some(Err(e)) = write(slot, shared, events, &[Op::Expire { now }]).pop() {
        tracing::warn!(error = %e, "deleting expired keys failed; retrying in a second");
    }
}

/// One outcome per op. While writes are failing they are refused outright, and tried again (after opening
/// the database anew) once [`RETRY_AFTER`] has passed, so the store recovers by itself when space returns.
fn write(slot: &Slot, shared: &Shared, events: &broadcast::Sender<EventBatch>, ops: &[Op]) -> Vec<Outcome> {
    let refuse = |e: &Error| ops.iter().map(|_| Err(refusal(e))).collect::<Vec<_>>();
    if let Some(f) = slot.failure() {
        if f.tried.elapsed() < RETRY_AFTER {
            return refuse(&f.error);
        }
    }
    let db = match slot.writable_db().or_else(|_| slot.reopen()) {
        Ok(db) => db,
        Err(e) => {
            slot.fail(&e);
            return refuse(&e);
        }
    };
    // A damaged file can make redb panic mid-commit: that is an error for these requests, not a dead writer.
    let guarded_commit = |ops: &[Op]| {
        super::guard::guarded(|| commit(&db, shared, events, ops))
            .unwrap_or_else(|why| Err(Failed { error: Error::Backend(why), staged: None }))
    };
    match guarded_commit(ops) {
        Ok(outcomes) => {
            slot.healthy();
            outcomes
        }
        // The file could not be written: redb now refuses everything until it is opened again.
        Err(Failed { error, staged }) if poisons(&error) => {
            drop(db);
            slot.fail(&error);
            if let Err(e) = slot.reopen() {
                tracing::warn!(error = %e, "opening the store again for writes failed; retrying");
            }
            // Opened for writing or, while the disk still fails, for reads only: either shows what the file holds.
            let db = slot.db().ok();
            if let Some(applied) = staged.filter(|a| db.is_some_and(|db| landed(&db, a.revision))) {
                return unknown_outcome(shared, events, *applied, &error);
            }
            refuse(&error)
        }
        // Anything else aborts this transaction only; retry one by one so only the culprit fails.
        Err(Failed { error, .. }) if ops.len() > 1 => {
            tracing::warn!(error = %error, requests = ops.len(), "group commit failed, retrying singly");
            ops.chunks(1)
                .map(|op| guarded_commit(op).map_err(|f| f.error).unwrap_or_else(|e| vec![Err(e)]).remove(0))
                .collect()
        }
        Err(Failed { error, .. }) => vec![Err(error)],
    }
}

/// Whether the file, opened again, holds the commit that reached `revision`.
fn landed(db: &Database, revision: i64) -> bool {
    let stored = || -> Result<i64> {
        let txn = db.begin_read().map_err(backend)?;
        let meta = txn.open_table(META).map_err(backend)?;
        Ok(meta.get(META_REVISION).map_err(backend)?.map(|v| v.value()).unwrap_or(0))
    };
    stored().is_ok_and(|r| r >= revision)
}

/// A commit that failed at the disk (an fsync error) yet is in the file once opened again: its writes stand, so
/// watchers get their events like any others; but the disk said it may not have kept them, so each writer hears
/// that the outcome is unknown (as after a timeout) rather than that it succeeded.
fn unknown_outcome(
    shared: &Shared,
    events: &broadcast::Sender<EventBatch>,
    applied: Applied,
    error: &Error,
) -> Vec<Outcome> {
    tracing::warn!(error = %error, revision = applied.revision, "a failed commit reached the file: its writes stand, their writers are told the outcome is unknown");
    let outcomes = publish(shared, events, applied);
    let unknown = || {
        Error::Timeout(format!("the disk reported an error while storing this write ({error}); it may have been stored: read before retrying"))
    };
    outcomes.into_iter().map(|o| o.and_then(|_| Err(unknown()))).collect()
}

/// Whether a failed commit means the file could not be written (so redb must be opened again), rather than a
/// problem with one request's data.
fn poisons(e: &Error) -> bool {
    match e {
        Error::NoSpace(_) => true,
        Error::Backend(text) => text.contains("I/O") || text.contains("os error") || text.contains("Previous"),
        _ => false,
    }
}

/// What a refused write answers: a full disk stays [`Error::NoSpace`], other write failures are retryable
/// [`Error::Unavailable`]. Either way the write was not applied.
fn refusal(e: &Error) -> Error {
    match e {
        Error::NoSpace(_) | Error::Unavailable(_) => e.clone(),
        other => Error::Unavailable(format!("writes are failing: {other}")),
    }
}

/// Why a commit failed, and what it was committing when the failure came from the commit itself (whether that
/// reached the file is then known only once it is opened again).
struct Failed {
    error: Error,
    staged: Option<Box<Applied>>,
}

impl From<Error> for Failed {
    fn from(error: Error) -> Failed {
        Failed { error, staged: None }
    }
}

/// Applies `ops` in one durable transaction, then publishes the events.
fn commit(
    db: &Database,
    shared: &Shared,
    events: &broadcast::Sender<EventBatch>,
    ops: &[Op],
) -> Result<Vec<Outcome>, Failed> {
    let mut txn = db.begin_write().map_err(backend)?;
    txn.set_durability(Durability::Immediate).map_err(backend)?;
    // Not redb's quick repair (the allocator's state recorded at each commit, in two phases): it would spare the
    // walk of the file after a crash (35 s at 30,000 VMIs), but made writes slower under load (VMIs created at
    // 29 a second against 43 at 10,000 nodes, and a node's heartbeats past 1 s p99 under another's flood).
    let mut applied = Applied::default();
    {
        let mut t = Tables {
            meta: txn.open_table(META).map_err(backend)?,
            current: txn.open_table(CURRENT).map_err(backend)?,
            history: txn.open_table(HISTORY).map_err(backend)?,
            log: txn.open_table(LOG).map_err(backend)?,
            expiry: txn.open_table(EXPIRY).map_err(backend)?,
            expires: txn.open_table(EXPIRES).map_err(backend)?,
        };
        applied.revision = t.meta_get(META_REVISION)?;
        applied.compacted = t.meta_get(META_COMPACTED)?;
        for op in ops {
            let outcome = t.apply(op, &mut applied)?;
            applied.outcomes.push(outcome);
        }
        t.meta.insert(META_REVISION, applied.revision).map_err(backend)?;
        t.meta.insert(META_COMPACTED, applied.compacted).map_err(backend)?;
    }
    if let Err(e) = txn.commit() {
        return Err(Failed { error: backend(e), staged: Some(Box::new(applied)) });
    }
    Ok(publish(shared, events, applied))
}

/// Makes a committed transaction visible: counters, then live events.
fn publish(shared: &Shared, events: &broadcast::Sender<EventBatch>, applied: Applied) -> Vec<Outcome> {
    shared.revision.store(applied.revision, Ordering::SeqCst);
    shared.compacted.store(applied.compacted, Ordering::SeqCst);
    shared.commits.fetch_add(1, Ordering::Relaxed);
    if !applied.events.is_empty() {
        // No receivers is fine: nobody is watching.
        let _ = events.send(Arc::new(applied.events));
    }
    applied.outcomes
}

#[derive(Default)]
struct Applied {
    revision: i64,
    compacted: i64,
    events: Vec<Event>,
    outcomes: Vec<Outcome>,
}

struct Tables<'t> {
    meta: Table<'t, &'static str, i64>,
    current: Table<'t, &'static str, &'static [u8]>,
    history: Table<'t, (&'static str, i64), &'static [u8]>,
    log: Table<'t, i64, &'static str>,
    expiry: Table<'t, (i64, &'static str), ()>,
    expires: Table<'t, &'static str, i64>,
}

impl Tables<'_> {
    fn meta_get(&self, name: &str) -> Result<i64> {
        Ok(self.meta.get(name).map_err(backend)?.map(|v| v.value()).unwrap_or(0))
    }

    fn current(&self, key: &str) -> Result<Option<KeyValue>> {
        match self.current.get(key).map_err(backend)? {
            Some(bytes) => decode_current(key, bytes.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Applies one op. `Err` is a storage failure (aborts the batch); `Ok(Err)` is this request's own failure.
    fn apply(&mut self, op: &Op, a: &mut Applied) -> Result<Outcome> {
        match op {
            Op::Create { key, value, expires } => {
                if self.current(key)?.is_some() {
                    return Ok(Err(Error::AlreadyExists(key.clone())));
                }
                let rev = a.revision + 1;
                let kv = KeyValue { key: key.clone(), value: value.clone(), create_revision: rev, mod_revision: rev };
                self.put(&kv, None)?;
                self.set_expiry(key, *expires)?;
                a.revision = rev;
                a.events.push(Event { kind: EventKind::Put, kv: kv.clone(), prev: None });
                Ok(Ok(Some(kv)))
            }
            Op::Update { key, value, expected, expires } => {
                let Some(prev) = self.current(key)? else {
                    return Ok(Err(Error::NotFound(key.clone())));
                };
                if prev.mod_revision != *expected {
                    return Ok(Err(Error::Conflict { key: key.clone(), current: Some(prev) }));
                }
                let rev = a.revision + 1;
                let kv = KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                    create_revision: prev.create_revision,
                    mod_revision: rev,
                };
                self.put(&kv, Some(&prev))?;
                self.set_expiry(key, *expires)?;
                a.revision = rev;
                a.events.push(Event { kind: EventKind::Put, kv: kv.clone(), prev: Some(prev) });
                Ok(Ok(Some(kv)))
            }
            Op::Delete { key, expected } => {
                let Some(prev) = self.current(key)? else {
                    return Ok(Err(Error::NotFound(key.clone())));
                };
                if expected.is_some_and(|e| e != prev.mod_revision) {
                    return Ok(Err(Error::Conflict { key: key.clone(), current: Some(prev) }));
                }
                self.remove(prev, a).map(|kv| Ok(Some(kv)))
            }
            Op::Expire { now } => {
                let mut due = Vec::new();
                for entry in self.expiry.range(..(*now + 1, "")).map_err(backend)?.take(MAX_EXPIRED) {
                    due.push(entry.map_err(backend)?.0.value().1.to_string());
                }
                for key in due {
                    match self.current(&key) {
                        Ok(Some(prev)) => {
                            self.remove(prev, a)?;
                        }
                        // A damaged value is reported, not deleted unread; its index rows go, so expiry moves on.
                        Ok(None) | Err(Error::Corrupt { .. }) => self.set_expiry(&key, None)?,
                        Err(e) => return Err(e),
                    }
                }
                Ok(Ok(None))
            }
            Op::Compact { revision, first, .. } => {
                if *revision > a.revision {
                    return Ok(Err(Error::FutureRevision { requested: *revision, current: a.revision }));
                }
                if *first {
                    a.compacted = a.compacted.max(*revision);
                } else {
                    // Only what the sweeps before it covered: never the log of a revision not yet compacted.
                    let upto = (*revision).min(a.compacted);
                    self.log.retain_in(..=upto, |_, _| false).map_err(backend)?;
                }
                Ok(Ok(None))
            }
            Op::Sweep { keys, upto } => {
                let upto = (*upto).min(a.compacted);
                for key in keys {
                    self.sweep(key, upto)?;
                }
                Ok(Ok(None))
            }
        }
    }

    /// Writes `kv` as the key's current value (moving the one it replaces, `prev`, into history) and logs it.
    fn put(&mut self, kv: &KeyValue, prev: Option<&KeyValue>) -> Result<()> {
        let (key, rev) = (kv.key.as_str(), kv.mod_revision);
        if let Some(prev) = prev {
            self.supersede(prev)?;
        }
        let row = encode_current(key, kv.create_revision, rev, &kv.value);
        self.current.insert(key, row.as_slice()).map_err(backend)?;
        self.log.insert(rev, key).map_err(backend)?;
        Ok(())
    }

    /// Deletes the key whose current value is `prev`, at the next revision.
    fn remove(&mut self, prev: KeyValue, a: &mut Applied) -> Result<KeyValue> {
        let key = prev.key.as_str();
        let rev = a.revision + 1;
        self.current.remove(key).map_err(backend)?;
        self.supersede(&prev)?;
        let tomb = Version::Tombstone { create_rev: prev.create_revision };
        self.history.insert((key, rev), tomb.encode(key, rev).as_slice()).map_err(backend)?;
        self.log.insert(rev, key).map_err(backend)?;
        self.set_expiry(key, None)?;
        a.revision = rev;
        let kv = KeyValue { mod_revision: rev, ..prev.clone() };
        a.events.push(Event { kind: EventKind::Delete, kv: kv.clone(), prev: Some(prev) });
        Ok(kv)
    }

    /// Records the key's new deadline (None: it no longer expires), dropping its old index row.
    fn set_expiry(&mut self, key: &str, deadline: Option<i64>) -> Result<()> {
        let old = self.expires.remove(key).map_err(backend)?.map(|d| d.value());
        if let Some(old) = old {
            self.expiry.remove((old, key)).map_err(backend)?;
        }
        if let Some(d) = deadline {
            self.expires.insert(key, d).map_err(backend)?;
            self.expiry.insert((d, key), ()).map_err(backend)?;
        }
        Ok(())
    }

    /// Keeps a replaced current value in history, at its own revision (the current value is stored once).
    fn supersede(&mut self, prev: &KeyValue) -> Result<()> {
        let (key, rev) = (prev.key.as_str(), prev.mod_revision);
        let version = Version::Put { create_rev: prev.create_revision, value: prev.value.clone() };
        self.history.insert((key, rev), version.encode(key, rev).as_slice()).map_err(backend)?;
        Ok(())
    }

    /// Drops `key`'s history at or below `upto`, but for its version as of `upto` when that is in history (the
    /// current value is newer) and not a deletion.
    fn sweep(&mut self, key: &str, upto: i64) -> Result<()> {
        let mut doomed = Vec::new();
        for entry in self.history.range((key, i64::MIN)..=(key, upto)).map_err(backend)? {
            let (k, v) = entry.map_err(backend)?;
            doomed.push((k.value().1, Version::is_tombstone(v.value())));
        }
        // When the current value is at or below `upto` it is the version to keep, and history has none.
        let current_rev = self.current.get(key).map_err(backend)?.and_then(|r| current_mod_revision(r.value()));
        let current_is_kept = current_rev.is_some_and(|r| r <= upto);
        if let Some(&(_, tombstone)) = doomed.last() {
            if !tombstone && !current_is_kept {
                doomed.pop();
            }
        }
        for (rev, _) in doomed {
            self.history.remove((key, rev)).map_err(backend)?;
        }
        Ok(())
    }
}
