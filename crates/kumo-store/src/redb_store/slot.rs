//! The open database, and opening it again after a failed write. Once a write to the file fails (a full disk,
//! an fsync error) redb refuses every later operation, reads included, until the database is opened anew; the
//! last committed state is then intact, so nothing acknowledged is lost and nothing unacknowledged appears.
//!
//! The writer may also take the database for itself a moment to shrink the file (`defrag.rs`): reads then wait
//! for it rather than fail.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use redb::Database;

use super::schema::CACHE_BYTES;
use crate::{Error, Result};

pub(crate) struct Slot {
    path: PathBuf,
    state: Mutex<State>,
    /// Signalled when the database is handed back after exclusive use.
    returned: Condvar,
    failure: Mutex<Option<Failure>>,
}

#[derive(Default)]
struct State {
    /// None while the database is being opened again, or is in exclusive use.
    db: Option<Arc<Database>>,
    /// In exclusive use for a short while (reads wait instead of failing).
    lent: bool,
    /// False when `db` was opened for reads only, because the disk still fails syncs (see [`ReadsOnly`]).
    writable: bool,
}

/// How long a read waits for the database to come back from exclusive use before failing as unavailable.
const LENT_WAIT: Duration = Duration::from_secs(60);

/// Why writes are failing, since when, and when the writer last tried again.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub(crate) error: Error,
    pub(crate) since: Instant,
    pub(crate) tried: Instant,
}

/// How long writes are refused outright after a failure before one is tried again.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How long opening at start waits for the file's lock. A predecessor that was just killed can leave it held
/// for a moment: by a child it had forked and not yet exec'd (the lock belongs to the open file, which the
/// child shares until exec closes it).
const LOCK_WAIT: Duration = Duration::from_secs(15);

/// Opens the database at start, waiting up to [`LOCK_WAIT`] for another process's lock on it to go.
pub(crate) fn open_db_waiting(path: &Path) -> Result<Database> {
    let deadline = Instant::now() + LOCK_WAIT;
    let mut logged = false;
    loop {
        match try_open(path) {
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                if !logged {
                    let holders = lock_holders(path);
                    tracing::warn!(path = %path.display(), ?holders, "the store file is locked by another process; waiting for it to let go");
                    logged = true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            r => return r.map_err(|e| open_error(path, e)),
        }
    }
}

/// The processes holding a lock on `path`, with their command lines, from `/proc/locks` (for the log only).
fn lock_holders(path: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let (Ok(meta), Ok(locks)) = (std::fs::metadata(path), std::fs::read_to_string("/proc/locks")) else {
        return Vec::new();
    };
    let inode = format!(":{}", meta.ino());
    locks
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
            let (pid, dev_ino) = (f.get(4)?, f.get(5)?);
            dev_ino.ends_with(&inode).then(|| {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                format!("{pid} {}", String::from_utf8_lossy(&cmd).replace('\0', " ").trim())
            })
        })
        .collect()
}

pub(crate) fn open_db(path: &Path) -> Result<Database> {
    try_open(path).map_err(|e| open_error(path, e))
}

fn try_open(path: &Path) -> std::result::Result<Database, redb::DatabaseError> {
    // redb's default page cache is 1 GiB; the API server's watch cache already keeps hot data in memory, so a
    // smaller cache keeps resident memory proportional to what is actually used.
    let (name, logged) = (path.display().to_string(), std::sync::atomic::AtomicU64::new(u64::MAX));
    redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .set_repair_callback(move |session| {
            // After a crash redb walks all of the file, which takes a while for a large one.
            let tenth = (session.progress() * 10.0) as u64;
            if logged.swap(tenth, std::sync::atomic::Ordering::Relaxed) != tenth {
                tracing::warn!("repairing {name} after an unclean shutdown: {}%", tenth * 10);
            }
        })
        .create(path)
}

fn open_error(path: &Path, e: redb::DatabaseError) -> Error {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => Error::Backend(format!(
            "opening {}: {e} (is another kumo server using this data directory?)",
            path.display()
        )),
        e => super::check::unusable(path, &e.to_string()),
    }
}

impl Slot {
    pub(crate) fn new(path: &Path, db: Database) -> Slot {
        let state = State { db: Some(Arc::new(db)), lent: false, writable: true };
        Slot { path: path.to_path_buf(), state: Mutex::new(state), returned: Condvar::new(), failure: Mutex::new(None) }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The database, unless it is being opened again (waiting while it is in exclusive use).
    pub(crate) fn db(&self) -> Result<Arc<Database>> {
        let state = self.state.lock().expect("lock");
        let (state, _) =
            self.returned.wait_timeout_while(state, LENT_WAIT, |s| s.db.is_none() && s.lent).expect("lock");
        if let Some(db) = state.db.as_ref() {
            return Ok(db.clone());
        }
        let why = self.failure().map(|f| f.error.to_string()).unwrap_or_else(|| "a write failed".into());
        Err(Error::Unavailable(format!("the store is being opened again after a failed write ({why})")))
    }

    /// The database, for writing: not one opened for reads only.
    pub(crate) fn writable_db(&self) -> Result<Arc<Database>> {
        let db = self.db()?;
        if self.state.lock().expect("lock").writable {
            return Ok(db);
        }
        Err(Error::Unavailable("the store is open for reads only until the disk takes writes again".into()))
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

    /// Gives `f` the database for itself, once in-flight reads have let go of it (new reads wait meanwhile).
    /// None when reads kept it past `patience`: the database is handed back untouched.
    pub(crate) fn exclusive<T>(&self, patience: Duration, f: impl FnOnce(&mut Database) -> T) -> Option<T> {
        let mut db = self.take_sole(patience).ok()??;
        let out = f(&mut db);
        let writable = self.state.lock().expect("lock").writable;
        self.hand_back(Some(Arc::new(db)), writable);
        Some(out)
    }

    /// Takes the database out of the slot once nothing else holds it, leaving readers waiting until
    /// [`Slot::hand_back`]. `Ok(None)` when the slot was empty; `Err` when reads kept it past `patience`. Reads
    /// are not held up while this waits for them: only once the database is taken.
    fn take_sole(&self, patience: Duration) -> std::result::Result<Option<Database>, ()> {
        let deadline = Instant::now() + patience;
        loop {
            {
                let mut state = self.state.lock().expect("lock");
                // Readers clone the database under this lock, so a sole owner here stays the sole owner.
                match state.db.take().map(Arc::try_unwrap) {
                    None => {
                        state.lent = true;
                        return Ok(None);
                    }
                    Some(Ok(db)) => {
                        state.lent = true;
                        return Ok(Some(db));
                    }
                    Some(Err(shared)) => state.db = Some(shared),
                }
            }
            if Instant::now() >= deadline {
                return Err(());
            }
            // Reads hold the database only for one transaction (a snapshot for its whole stream).
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn hand_back(&self, db: Option<Arc<Database>>, writable: bool) {
        let mut state = self.state.lock().expect("lock");
        state.db = db;
        state.lent = false;
        state.writable = writable;
        self.returned.notify_all();
    }

    /// Closes the database and opens it again, waiting for in-flight reads to let go of it first. When it cannot
    /// be opened for writing because the disk still fails (opening after a failed write repairs the file, which
    /// syncs), it is opened for reads only and this fails; a later call tries again.
    pub(crate) fn reopen(&self) -> Result<Arc<Database>> {
        let old = self
            .take_sole(Duration::from_secs(10))
            .map_err(|()| Error::Unavailable("reads kept the store open; will try again".into()))?;
        drop(old);
        match open_db(&self.path) {
            Ok(db) => {
                let db = Arc::new(db);
                self.hand_back(Some(db.clone()), true);
                tracing::info!(path = %self.path.display(), "store opened again after a failed write");
                Ok(db)
            }
            Err(e) => {
                let reads = ReadsOnly::open(&self.path).map(Arc::new);
                if let Err(why) = &reads {
                    tracing::warn!(error = %why, "the store cannot be opened even for reads");
                }
                self.hand_back(reads.ok(), false);
                Err(e)
            }
        }
    }
}

/// A file whose syncs always succeed, to open the store for reads alone while the disk fails them: redb
/// repairs a file left by a failed write when opening it, and that commits. The repair only rebuilds
/// bookkeeping from what is in the file, and kumo writes nothing else through this handle, so a sync skipped
/// here loses nothing.
#[derive(Debug)]
struct ReadsOnly(redb::backends::FileBackend);

impl ReadsOnly {
    fn open(path: &Path) -> Result<Database> {
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(super::schema::backend)?;
        let backend = redb::backends::FileBackend::new(file).map_err(super::schema::backend)?;
        redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create_with_backend(ReadsOnly(backend))
            .map_err(super::schema::backend)
    }
}

impl redb::StorageBackend for ReadsOnly {
    fn len(&self) -> std::result::Result<u64, std::io::Error> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::result::Result<(), std::io::Error> {
        self.0.read(offset, out)
    }

    fn set_len(&self, len: u64) -> std::result::Result<(), std::io::Error> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> std::result::Result<(), std::io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::result::Result<(), std::io::Error> {
        self.0.write(offset, data)
    }

    fn close(&self) -> std::result::Result<(), std::io::Error> {
        self.0.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> std::result::Result<bool, redb::BackendError> {
        self.0.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> std::result::Result<bool, redb::BackendError> {
        self.0.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> std::result::Result<(), redb::BackendError> {
        self.0.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> std::result::Result<(), redb::BackendError> {
        self.0.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> std::result::Result<(), redb::BackendError> {
        self.0.unlock_range(start, end)
    }
}
