//! Checking a store file: walking every table (a damaged tree fails the walk: the file cannot be used), every
//! row's own checksum (a damaged value is reported by key), and that the tables agree (each log entry names a
//! current value or a history row). `kumo store check` adds redb's page checksums.
//!
//! The server runs the walk at start within a time budget; `kumo store check` runs it whole. redb's page
//! checksums are not the structure check: a flipped byte in a value fails its page's checksum too, and one bad
//! value must not make the whole store unusable.

use std::path::Path;
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable};

use super::schema::{backend, decode_current, Version, CURRENT, HISTORY, LOG};
use crate::{Error, Result};

/// What a check found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Rows whose checksum was verified (current and history).
    pub rows: u64,
    /// `(key, what is wrong)` for every damaged row found.
    pub corrupt: Vec<(String, String)>,
    /// False when the time budget ran out before every row was read.
    pub complete: bool,
    /// redb's page checksums, when checked (`kumo store check`): false if any page was damaged, in a value
    /// (then named in `corrupt`) or elsewhere.
    pub pages_ok: Option<bool>,
    pub took: Duration,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.corrupt.is_empty()
    }
}

/// The message for a store whose structure is damaged: what to do next.
pub fn unusable(path: &Path, why: &str) -> Error {
    Error::Corrupt {
        key: "(store structure)".into(),
        detail: format!(
            "{} cannot be used: {why}. Restore it from a snapshot: `kumo store snapshot restore FILE --data-dir NEW_DIR`, \
             then start the server on NEW_DIR (`kumo store check --data-dir DIR` lists what is damaged)",
            path.display()
        ),
    }
}

/// redb's page checksums over the whole file (redb reports a mismatch as an error or as false).
pub(crate) fn pages(db: &mut Database) -> bool {
    matches!(db.check_integrity(), Ok(true))
}

/// Walks the tables until `budget` runs out (None: all of them), verifying each row's checksum. A walk that
/// fails (a damaged page of the tree) means the file cannot be used: [`unusable`].
pub(crate) fn rows(db: &Database, path: &Path, budget: Option<Duration>) -> Result<CheckReport> {
    rows_inner(db, budget).map_err(|e| match e {
        Error::Corrupt { .. } => e,
        other => unusable(path, &format!("reading its tables failed: {other}")),
    })
}

fn rows_inner(db: &Database, budget: Option<Duration>) -> Result<CheckReport> {
    let start = Instant::now();
    let out_of_time = || budget.is_some_and(|b| start.elapsed() > b);
    let mut report = CheckReport { complete: true, ..Default::default() };
    let txn = db.begin_read().map_err(backend)?;
    let missing = |e: redb::TableError| match e {
        redb::TableError::TableDoesNotExist(t) => Error::Backend(format!("not a kumo store: it has no {t} table")),
        e => backend(e),
    };
    let current = txn.open_table(CURRENT).map_err(missing)?;
    let history = txn.open_table(HISTORY).map_err(missing)?;
    let log = txn.open_table(LOG).map_err(missing)?;
    let damaged = |e: Error, report: &mut CheckReport| match e {
        Error::Corrupt { key, detail } => {
            report.corrupt.push((key, detail));
            Ok(())
        }
        other => Err(other),
    };
    for entry in current.iter().map_err(backend)? {
        if out_of_time() {
            report.complete = false;
            break;
        }
        let (k, v) = entry.map_err(backend)?;
        report.rows += 1;
        if let Err(e) = decode_current(k.value(), v.value()) {
            damaged(e, &mut report)?;
        }
    }
    for entry in history.iter().map_err(backend)? {
        if out_of_time() {
            report.complete = false;
            break;
        }
        let (k, v) = entry.map_err(backend)?;
        report.rows += 1;
        let (key, rev) = k.value();
        if let Err(e) = Version::decode(key, rev, v.value()) {
            damaged(e, &mut report)?;
        }
    }
    // A compaction cut short leaves the log of its revisions behind, their history already dropped; the next
    // compaction drops that log too.
    let (_, compacted) = super::read::revisions(&txn)?;
    for entry in log.range(compacted.saturating_add(1)..).map_err(backend)? {
        if out_of_time() {
            report.complete = false;
            break;
        }
        let (r, k) = entry.map_err(backend)?;
        let in_current = super::read::current_revision_of(&current, k.value())? == Some(r.value());
        if !in_current && history.get((k.value(), r.value())).map_err(backend)?.is_none() {
            let detail = format!("the log names revision {}, which has no history row", r.value());
            report.corrupt.push((k.value().to_string(), detail));
        }
    }
    report.took = start.elapsed();
    Ok(report)
}
