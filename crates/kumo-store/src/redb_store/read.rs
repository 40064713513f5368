//! Read paths, each run inside one read transaction so it sees a single consistent snapshot.

use std::ops::Bound;

use redb::{ReadTransaction, ReadableTable};

use super::schema::{
    backend, current_mod_revision, decode_current, Version, CURRENT, HISTORY, LOG, META, META_COMPACTED, META_REVISION,
};
use crate::{Error, Event, EventKind, KeyValue, RangeRequest, RangeResponse, Result};

/// The snapshot's `(revision, compacted)`.
pub(crate) fn revisions(txn: &ReadTransaction) -> Result<(i64, i64)> {
    let meta = txn.open_table(META).map_err(backend)?;
    let get = |name| -> Result<i64> { Ok(meta.get(name).map_err(backend)?.map(|v| v.value()).unwrap_or(0)) };
    Ok((get(META_REVISION)?, get(META_COMPACTED)?))
}

/// Fails with [`Error::Compacted`] when `revision` is at or below a compaction.
pub(crate) fn check_compacted(revision: i64, compacted: i64) -> Result<()> {
    if compacted > 0 && revision <= compacted {
        return Err(Error::Compacted { requested: revision, compacted });
    }
    Ok(())
}

/// The keys the log names at or below `upto`, in key order: those with history a compaction to `upto` drops.
pub(crate) fn logged_keys(txn: &ReadTransaction, upto: i64) -> Result<Vec<String>> {
    let log = txn.open_table(LOG).map_err(backend)?;
    let mut keys = std::collections::BTreeSet::new();
    for entry in log.range(..=upto).map_err(backend)? {
        keys.insert(entry.map_err(backend)?.1.value().to_string());
    }
    Ok(keys.into_iter().collect())
}

/// The oldest revision the log still names.
pub(crate) fn first_logged(txn: &ReadTransaction) -> Result<Option<i64>> {
    let log = txn.open_table(LOG).map_err(backend)?;
    let first = log.first().map_err(backend)?;
    Ok(first.map(|(r, _)| r.value()))
}

pub(crate) fn get(txn: &ReadTransaction, key: &str) -> Result<Option<KeyValue>> {
    let current = txn.open_table(CURRENT).map_err(backend)?;
    let row = current.get(key).map_err(backend)?;
    row.map(|v| decode_current(key, v.value())).transpose()
}

/// Collects up to `limit` values and counts the rest.
struct Page {
    limit: usize,
    kvs: Vec<KeyValue>,
    remaining: i64,
    uncounted: bool,
}

impl Page {
    /// `make` is only called for values that are returned, so counting the tail decodes nothing.
    fn push(&mut self, make: impl FnOnce() -> Result<KeyValue>) -> Result<()> {
        if self.limit == 0 || self.kvs.len() < self.limit {
            self.kvs.push(make()?);
        } else {
            self.remaining += 1;
        }
        Ok(())
    }

    /// Whether reading on would only count keys no one asked to count.
    fn done(&self) -> bool {
        self.uncounted && self.remaining > 0
    }
}

pub(crate) fn range(txn: &ReadTransaction, req: &RangeRequest) -> Result<RangeResponse> {
    let (current_rev, compacted) = revisions(txn)?;
    // Like etcd, a non-positive revision means "latest".
    let at = match req.revision {
        Some(r) if r > 0 => {
            if r > current_rev {
                return Err(Error::FutureRevision { requested: r, current: current_rev });
            }
            check_compacted(r, compacted)?;
            r
        }
        _ => current_rev,
    };
    let prefix = req.prefix.as_str();
    // Start at the prefix, or just past `start_after` when that sorts later.
    let start = match req.start_after.as_deref() {
        Some(after) if after >= prefix => Bound::Excluded(after),
        _ => Bound::Included(prefix),
    };
    let mut page = Page { limit: req.limit, kvs: Vec::new(), remaining: 0, uncounted: req.uncounted };
    if at == current_rev {
        let table = txn.open_table(CURRENT).map_err(backend)?;
        for entry in table.range::<&str>((start, Bound::Unbounded)).map_err(backend)? {
            let (k, v) = entry.map_err(backend)?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            page.push(|| decode_current(key, v.value()))?;
            if page.done() {
                break;
            }
        }
    } else {
        range_history(txn, prefix, start, at, &mut page)?;
    }
    Ok(RangeResponse { more: page.remaining > 0, remaining: page.remaining, kvs: page.kvs, revision: at })
}

/// Walks the keys of both tables in order, taking each key's version at `at`: its current value when that is
/// not newer, else its latest history entry at or below `at` unless that is a tombstone.
fn range_history(txn: &ReadTransaction, prefix: &str, start: Bound<&str>, at: i64, page: &mut Page) -> Result<()> {
    let history = txn.open_table(HISTORY).map_err(backend)?;
    let current = txn.open_table(CURRENT).map_err(backend)?;
    let mut after: Option<String> = match start {
        Bound::Excluded(k) => Some(k.to_string()),
        _ => None,
    };
    loop {
        let hbound = match &after {
            Some(k) => Bound::Excluded((k.as_str(), i64::MAX)),
            None => Bound::Included((prefix, i64::MIN)),
        };
        let hnext = match history.range::<(&str, i64)>((hbound, Bound::Unbounded)).map_err(backend)?.next() {
            Some(e) => Some(e.map_err(backend)?.0.value().0.to_string()),
            None => None,
        };
        let cbound = match &after {
            Some(k) => Bound::Excluded(k.as_str()),
            None => Bound::Included(prefix),
        };
        let cnext = match current.range::<&str>((cbound, Bound::Unbounded)).map_err(backend)?.next() {
            Some(e) => Some(e.map_err(backend)?.0.value().to_string()),
            None => None,
        };
        let key = match (hnext.filter(|k| k.starts_with(prefix)), cnext.filter(|k| k.starts_with(prefix))) {
            (Some(h), Some(c)) => h.min(c),
            (Some(k), None) | (None, Some(k)) => k,
            (None, None) => break,
        };
        let row = current.get(key.as_str()).map_err(backend)?;
        match row {
            Some(row) if current_mod_revision(row.value()).is_some_and(|r| r <= at) => {
                page.push(|| decode_current(&key, row.value()))?;
            }
            _ => {
                let latest = history.range((key.as_str(), i64::MIN)..=(key.as_str(), at)).map_err(backend)?.next_back();
                if let Some(entry) = latest {
                    let (k, v) = entry.map_err(backend)?;
                    if !Version::is_tombstone(v.value()) {
                        let rev = k.value().1;
                        page.push(|| {
                            let kv = Version::decode(&key, rev, v.value())?.into_kv(&key, rev);
                            kv.ok_or_else(|| Error::Backend("tombstone decoded as value".into()))
                        })?;
                    }
                }
            }
        }
        after = Some(key);
        if page.done() {
            break;
        }
    }
    Ok(())
}

/// Events for keys under `prefix` with revision above `after`, plus the snapshot revision they run up to.
pub(crate) fn replay(txn: &ReadTransaction, prefix: &str, after: i64) -> Result<(Vec<Event>, i64)> {
    let (current_rev, compacted) = revisions(txn)?;
    check_compacted(after, compacted)?;
    let log = txn.open_table(LOG).map_err(backend)?;
    let history = txn.open_table(HISTORY).map_err(backend)?;
    let current = txn.open_table(CURRENT).map_err(backend)?;
    let mut events = Vec::new();
    for entry in log.range(after.saturating_add(1)..).map_err(backend)? {
        let (r, k) = entry.map_err(backend)?;
        let (rev, key) = (r.value(), k.value());
        if !key.starts_with(prefix) {
            continue;
        }
        let version = match history.get((key, rev)).map_err(backend)? {
            Some(v) => Version::decode(key, rev, v.value())?,
            // The key's current value is only in `current`.
            None if current_revision_of(&current, key)? == Some(rev) => {
                let row = current.get(key).map_err(backend)?.expect("just read");
                let kv = decode_current(key, row.value())?;
                Version::Put { create_rev: kv.create_revision, value: kv.value }
            }
            None => {
                return Err(Error::Corrupt {
                    key: key.to_string(),
                    detail: format!("the log names revision {rev}, which has no history row"),
                })
            }
        };
        // Compaction keeps the latest non-tombstone version at or below it, so the predecessor of any
        // uncompacted event survives; None means a create.
        let prev = match history.range((key, i64::MIN)..(key, rev)).map_err(backend)?.next_back() {
            Some(entry) => {
                let (pk, pv) = entry.map_err(backend)?;
                let prev_rev = pk.value().1;
                Version::decode(key, prev_rev, pv.value())?.into_kv(key, prev_rev)
            }
            None => None,
        };
        let event = match version {
            Version::Put { create_rev, value } => {
                let kv = KeyValue { key: key.to_string(), value, create_revision: create_rev, mod_revision: rev };
                Event { kind: EventKind::Put, kv, prev }
            }
            Version::Tombstone { create_rev } => {
                let value = prev.as_ref().map(|p| p.value.clone()).unwrap_or_default();
                let kv = KeyValue { key: key.to_string(), value, create_revision: create_rev, mod_revision: rev };
                Event { kind: EventKind::Delete, kv, prev }
            }
        };
        events.push(event);
    }
    Ok((events, current_rev))
}

/// The revision of `key`'s current value, if it has one.
pub(crate) fn current_revision_of(
    current: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<i64>> {
    Ok(current.get(key).map_err(backend)?.and_then(|row| current_mod_revision(row.value())))
}
