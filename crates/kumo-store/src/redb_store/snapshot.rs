//! Snapshots of the embedded store: taken from one read transaction (redb keeps it consistent while the writer
//! goes on), and restored into a new file whose history starts at the snapshot's revision.

use std::path::Path;

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use tokio::sync::mpsc;

use super::read::revisions;
use super::schema::{
    backend, decode_current, encode_current, CURRENT, FORMAT_VERSION, HISTORY, LOG, META, META_COMPACTED,
    META_FORMAT_VERSION, META_REVISION,
};
use crate::snapshot::{self, SnapshotInfo, SnapshotWriter};
use crate::{Error, KeyValue, Result};

/// Bytes gathered before a piece of the file is sent.
const CHUNK: usize = 256 << 10;

/// Streams the snapshot of `db` into `out`, piece by piece (run on a blocking thread).
pub(crate) fn stream(db: &Database, out: &mpsc::Sender<Result<Bytes>>) -> Result<()> {
    let txn = db.begin_read().map_err(backend)?;
    let (revision, _) = revisions(&txn)?;
    let current = txn.open_table(CURRENT).map_err(backend)?;
    let (mut w, mut buf) = SnapshotWriter::start(revision, current.len().map_err(backend)?);
    let send = |buf: &mut Vec<u8>| -> Result<()> {
        let piece = Bytes::from(std::mem::take(buf));
        out.blocking_send(Ok(piece)).map_err(|_| Error::Backend("the snapshot's reader went away".into()))
    };
    for entry in current.iter().map_err(backend)? {
        let (k, v) = entry.map_err(backend)?;
        buf.extend(w.record(&decode_current(k.value(), v.value())?));
        if buf.len() >= CHUNK {
            send(&mut buf)?;
        }
    }
    buf.extend(w.finish());
    send(&mut buf)
}

/// Keys written per transaction while restoring, so memory stays bounded however big the snapshot is.
const RESTORE_BATCH: usize = 10_000;

/// Creates the store file `path` from the snapshot file `file`, which is verified whole first (then read again
/// record by record: memory stays at one batch). The new store is at the snapshot's revision with history only
/// from there: reads and watches from before it get 410 and relist. (The trait calls the compacted revision
/// itself gone, so the record is one below the snapshot's, and the snapshot's own revision is in the log: a
/// watch from just before it replays that last write.) Nothing is left behind on failure.
pub fn restore(file: &Path, path: &Path) -> Result<SnapshotInfo> {
    if path.exists() {
        return Err(Error::AlreadyExists(format!("{} (restore into a new data directory)", path.display())));
    }
    let open = || {
        let f = std::fs::File::open(file).map_err(|e| Error::Backend(format!("opening {}: {e}", file.display())))?;
        Ok(std::io::BufReader::new(f))
    };
    // The revision is in the header; the checked reading below confirms it.
    let revision = snapshot::verify(open()?)?.revision;
    let written = (|| -> Result<SnapshotInfo> {
        let db = super::slot::open_db(path)?;
        let mut batch = Vec::with_capacity(RESTORE_BATCH);
        let info = snapshot::read(open, |kv| {
            if kv.mod_revision > revision {
                return Err(Error::Corrupt {
                    key: kv.key.clone(),
                    detail: format!("revision {} is past the snapshot's {revision}", kv.mod_revision),
                });
            }
            batch.push(kv);
            if batch.len() == RESTORE_BATCH {
                write_batch(&db, &std::mem::take(&mut batch), revision, false)?;
            }
            Ok(())
        })?;
        write_batch(&db, &batch, revision, true)?;
        Ok(info)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(path);
    }
    written
}

/// Writes restored keys; the last batch also records the revisions and is the one made durable.
fn write_batch(db: &Database, kvs: &[KeyValue], revision: i64, last: bool) -> Result<()> {
    let mut txn = db.begin_write().map_err(backend)?;
    if !last {
        // A restore that stops midway is deleted anyway: only the last commit needs to reach the disk.
        txn.set_durability(redb::Durability::None).map_err(backend)?;
    }
    {
        let mut current = txn.open_table(CURRENT).map_err(backend)?;
        let mut log = txn.open_table(LOG).map_err(backend)?;
        txn.open_table(HISTORY).map_err(backend)?;
        for kv in kvs {
            let row = encode_current(&kv.key, kv.create_revision, kv.mod_revision, &kv.value);
            current.insert(kv.key.as_str(), row.as_slice()).map_err(backend)?;
            if kv.mod_revision == revision {
                log.insert(kv.mod_revision, kv.key.as_str()).map_err(backend)?;
            }
        }
        if last {
            let mut meta = txn.open_table(META).map_err(backend)?;
            meta.insert(META_FORMAT_VERSION, FORMAT_VERSION).map_err(backend)?;
            meta.insert(META_REVISION, revision).map_err(backend)?;
            meta.insert(META_COMPACTED, (revision - 1).max(0)).map_err(backend)?;
        }
    }
    txn.commit().map_err(backend)
}
