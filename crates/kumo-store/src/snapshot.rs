//! The snapshot file of the embedded store: every current key at one revision, with a checksum over the whole
//! file, so a truncated or altered snapshot is refused before anything is restored from it.
//!
//! ```text
//! "KUMOSNP1" | revision i64 LE | keys u64 LE
//! keys × ( key_len u32 LE | key | create_rev i64 LE | mod_rev i64 LE | value_len u32 LE | value )
//! "KUMOEND1" | sha256 of every byte before it
//! ```
//! Values are stored as the store holds them (Secrets stay sealed).

use sha2::{Digest, Sha256};
use std::io::Read;

use crate::{Error, KeyValue, Result};

const MAGIC: &[u8; 8] = b"KUMOSNP1";
const END: &[u8; 8] = b"KUMOEND1";

/// Builds a snapshot file piece by piece (so it can be streamed), hashing as it goes.
pub struct SnapshotWriter {
    hash: Sha256,
}

impl SnapshotWriter {
    /// The writer and the file's first bytes.
    pub fn start(revision: i64, keys: u64) -> (SnapshotWriter, Vec<u8>) {
        let mut head = MAGIC.to_vec();
        head.extend_from_slice(&revision.to_le_bytes());
        head.extend_from_slice(&keys.to_le_bytes());
        let mut hash = Sha256::new();
        hash.update(&head);
        (SnapshotWriter { hash }, head)
    }

    /// The bytes of one key.
    pub fn record(&mut self, kv: &KeyValue) -> Vec<u8> {
        let mut out = Vec::with_capacity(28 + kv.key.len() + kv.value.len());
        out.extend_from_slice(&(kv.key.len() as u32).to_le_bytes());
        out.extend_from_slice(kv.key.as_bytes());
        out.extend_from_slice(&kv.create_revision.to_le_bytes());
        out.extend_from_slice(&kv.mod_revision.to_le_bytes());
        out.extend_from_slice(&(kv.value.len() as u32).to_le_bytes());
        out.extend_from_slice(&kv.value);
        self.hash.update(&out);
        out
    }

    /// The file's last bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.hash.update(END);
        let mut out = END.to_vec();
        out.extend_from_slice(&self.hash.finalize());
        out
    }
}

/// What a snapshot holds.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotInfo {
    pub revision: i64,
    pub keys: u64,
    pub bytes: u64,
    /// Hex SHA-256 of the file's contents (checked).
    pub sha256: String,
}

fn bad(why: impl Into<String>) -> Error {
    Error::Corrupt { key: "(snapshot file)".into(), detail: why.into() }
}

/// Longest key and value a record may claim, so a damaged length is refused rather than allocated (objects are
/// limited to 1.5 MiB; sealed ones grow a little).
const MAX_KEY: usize = 64 << 10;
const MAX_VALUE: usize = 64 << 20;

/// Reads a snapshot front to back, one record at a time, hashing as it goes: memory stays at one record.
struct Walk<R> {
    r: R,
    hash: Sha256,
    bytes: u64,
}

impl<R: Read> Walk<R> {
    fn exact(&mut self, n: usize, what: &str) -> Result<Vec<u8>> {
        let mut buf = vec![0; n];
        self.r.read_exact(&mut buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => bad(format!("{what} is cut short")),
            _ => bad(format!("reading it: {e}")),
        })?;
        self.bytes += n as u64;
        Ok(buf)
    }

    fn hashed(&mut self, n: usize, what: &str) -> Result<Vec<u8>> {
        let buf = self.exact(n, what)?;
        self.hash.update(&buf);
        Ok(buf)
    }

    fn u32(&mut self) -> Result<usize> {
        Ok(u32::from_le_bytes(self.hashed(4, "a record")?.try_into().expect("4 bytes")) as usize)
    }

    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.hashed(8, "a record")?.try_into().expect("8 bytes")))
    }

    fn record(&mut self) -> Result<KeyValue> {
        let klen = self.u32()?;
        if klen > MAX_KEY {
            return Err(bad("a record's key length is damaged"));
        }
        let key = String::from_utf8(self.hashed(klen, "a record")?).map_err(|_| bad("a key is not UTF-8"))?;
        let (create_revision, mod_revision) = (self.i64()?, self.i64()?);
        let vlen = self.u32()?;
        if vlen > MAX_VALUE {
            return Err(bad("a record's value length is damaged"));
        }
        let value = self.hashed(vlen, "a record")?;
        Ok(KeyValue { key, value, create_revision, mod_revision })
    }

    /// Reads the whole file, giving each record to `each` as it comes.
    fn run(mut self, mut each: impl FnMut(KeyValue) -> Result<()>) -> Result<SnapshotInfo> {
        let head = self
            .hashed(24, "the header")
            .map_err(|_| bad("not a kumo snapshot (or cut short before its header ended)"))?;
        if &head[..8] != MAGIC {
            return Err(bad("not a kumo snapshot (or cut short before its header ended)"));
        }
        let revision = i64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
        let keys = u64::from_le_bytes(head[16..24].try_into().expect("8 bytes"));
        for _ in 0..keys {
            each(self.record()?)?;
        }
        let trailer =
            self.exact(40, "the end marker").map_err(|_| bad("the end marker is missing: the file was cut short"))?;
        if &trailer[..8] != END {
            return Err(bad(
                "the end marker is missing: the file was cut short (or has more records than its header says)",
            ));
        }
        self.hash.update(END);
        let sum = self.hash.finalize();
        if sum.as_slice() != &trailer[8..] {
            return Err(bad("its checksum does not match: the file was altered or damaged"));
        }
        let mut more = [0u8; 1];
        if self.r.read(&mut more).map_err(|e| bad(format!("reading it: {e}")))? != 0 {
            return Err(bad("bytes after the last record"));
        }
        let sha256 = sum.iter().map(|b| format!("{b:02x}")).collect();
        Ok(SnapshotInfo { revision, keys, bytes: self.bytes, sha256 })
    }
}

fn walk<R: Read>(r: R) -> Walk<R> {
    Walk { r, hash: Sha256::new(), bytes: 0 }
}

/// Checks a snapshot whole (magic, records, trailer, checksum), reading it once without keeping it.
pub fn verify(r: impl Read) -> Result<SnapshotInfo> {
    walk(r).run(|_| Ok(()))
}

/// Verifies the snapshot `open` gives, then reads it again calling `each` for every key in file order, so
/// nothing is restored from a damaged file. The second reading is checked too: if the file changed in between,
/// it fails at the end (the caller discards what it wrote).
pub fn read<R: Read>(
    mut open: impl FnMut() -> Result<R>,
    each: impl FnMut(KeyValue) -> Result<()>,
) -> Result<SnapshotInfo> {
    let checked = verify(open()?)?;
    let info = walk(open()?).run(each)?;
    if info != checked {
        return Err(bad("the file changed while it was being restored"));
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(kvs: &[KeyValue], revision: i64) -> Vec<u8> {
        let (mut w, mut out) = SnapshotWriter::start(revision, kvs.len() as u64);
        for kv in kvs {
            out.extend(w.record(kv));
        }
        out.extend(w.finish());
        out
    }

    #[test]
    fn round_trips_and_refuses_damage() {
        let kvs = vec![
            KeyValue { key: "/a".into(), value: b"1".to_vec(), create_revision: 2, mod_revision: 3 },
            KeyValue { key: "/b".into(), value: vec![], create_revision: 4, mod_revision: 4 },
        ];
        let data = file(&kvs, 9);
        let mut seen = vec![];
        let info = read(
            || Ok(&data[..]),
            |kv| {
                seen.push(kv);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!((info.revision, info.keys, info.bytes), (9, 2, data.len() as u64));
        assert_eq!(seen, kvs);
        for cut in [1, 20, 41, data.len() - 1] {
            assert!(verify(&data[..data.len() - cut]).is_err(), "cut {cut}");
            let mut longer = data.clone();
            longer.push(0);
            assert!(verify(&longer[..]).is_err(), "a byte past the end");
        }
        for i in [0, 10, 30, data.len() - 5] {
            let mut altered = data.clone();
            altered[i] ^= 1;
            assert!(read(|| Ok(&altered[..]), |_| panic!("nothing is read from a damaged file")).is_err(), "byte {i}");
        }
    }
}
