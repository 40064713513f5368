//! The open database, and opening it again after a failed write. Once a write to the file fails (a full disk,
//! an fsync error) redb refuses every later operation, reads included, until the database is opened anew; the
//! last committed state is then intact, so nothing acknowledged is lost and nothing unacknowledged appears.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redb::Database;

use super::schema::CACHE_BYTES;
use crate::{Error, Result};

pub(crate) struct Slot {
    path: PathBuf,
    /// None while the database is being opened again.
    db: RwLock<Option<Arc<Database>>>,
    failure: Mutex<Option<Failure>>,
}

/// Why writes are failing, since when, and when the writer last tried again.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub(crate) error: Error,
    pub(crate) since: Instant,
    pub(crate) tried: Instant,
}

/// How long writes are refused outright after a failure before one is tried again.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(1);

pub(crate) fn open_db(path: &Path) -> Result<Database> {
    // redb's default page cache is 1 GiB; the API server's watch cache already keeps hot data in memory, so a
    // smaller cache keeps resident memory proportional to what is actually used.
    redb::Builder::new().set_cache_size(CACHE_BYTES).create(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => Error::Backend(format!(
            "opening {}: {e} (is another kumo server using this data directory?)",
            path.display()
        )),
        e => super::check::unusable(path, &e.to_string()),
    })
}

impl Slot {
    pub(crate) fn new(path: &Path, db: Database) -> Slot {
        Slot { path: path.to_path_buf(), db: RwLock::new(Some(Arc::new(db))), failure: Mutex::new(None) }
    }

    /// The database, unless it is being opened again.
    pub(crate) fn db(&self) -> Result<Arc<Database>> {
        if let Some(db) = self.db.read().expect("lock").as_ref() {
            return Ok(db.clone());
        }
        let why = self.failure().map(|f| f.error.to_string()).unwrap_or_else(|| "a write failed".into());
        Err(Error::Unavailable(format!("the store is being opened again after a failed write ({why})")))
    }

    pub(crate) fn failure(&self) -> Option<Failure> {
        self.failure.lock().expect("lock").clone()
    }

    /// Records that writes fail with `error` (keeping the time of the first failure).
    pub(crate) fn fail(&self, error: &Error) {
        let now = Instant::now();
        let mut f = self.failure.lock().expect("lock");
        let since = f.as_ref().map_or(now, |f| f.since);
        if f.is_none() {
            tracing::error!(error = %error, "store writes are failing; reads go on, writes are refused until this clears");
        }
        *f = Some(Failure { error: error.clone(), since, tried: now });
    }

    /// A write committed: writes work again.
    pub(crate) fn healthy(&self) {
        if let Some(f) = self.failure.lock().expect("lock").take() {
            tracing::info!(after = ?f.since.elapsed(), "store writes work again");
        }
    }

    /// Closes the database and opens it again, waiting for in-flight reads to let go of it first. On failure the
    /// slot stays empty (reads answer Unavailable) until a later call succeeds.
    pub(crate) fn reopen(&self) -> Result<Arc<Database>> {
        let old = self.db.write().expect("lock").take();
        if let Some(mut old) = old {
            let deadline = Instant::now() + Duration::from_secs(10);
            // Reads hold the database only for one transaction.
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(still) if Instant::now() < deadline => {
                        old = still;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(still) => {
                        *self.db.write().expect("lock") = Some(still);
                        return Err(Error::Unavailable("reads kept the store open; will try again".into()));
                    }
                }
            }
        }
        let db = Arc::new(open_db(&self.path)?);
        *self.db.write().expect("lock") = Some(db.clone());
        tracing::info!(path = %self.path.display(), "store opened again after a failed write");
        Ok(db)
    }
}
