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

/// Reads a whole snapshot, verifying its checksum and structure, calling `each` for every key (in file
/// order) only after the checksum matched — so nothing is restored from a damaged file.
pub fn read(mut file: impl Read, mut each: impl FnMut(KeyValue) -> Result<()>) -> Result<SnapshotInfo> {
    let mut data = Vec::new();
    file.read_to_end(&mut data).map_err(|e| bad(format!("reading it: {e}")))?;
    let info = verify(&data)?;
    let mut at = 24;
    for _ in 0..info.keys {
        let (kv, next) = record(&data, at).ok_or_else(|| bad("a record is cut short"))?;
        each(kv)?;
        at = next;
    }
    Ok(info)
}

/// Checks the magic, the trailer and the checksum, and that the records fill the file exactly.
pub fn verify(data: &[u8]) -> Result<SnapshotInfo> {
    if data.len() < 24 + 40 || &data[..8] != MAGIC {
        return Err(bad("not a kumo snapshot (or cut short before its header ended)"));
    }
    let (body, trailer) = data.split_at(data.len() - 40);
    if &trailer[..8] != END {
        return Err(bad("the end marker is missing: the file was cut short"));
    }
    let mut hash = Sha256::new();
    hash.update(body);
    hash.update(END);
    let sum = hash.finalize();
    if sum.as_slice() != &trailer[8..] {
        return Err(bad("its checksum does not match: the file was altered or damaged"));
    }
    let revision = i64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
    let keys = u64::from_le_bytes(data[16..24].try_into().expect("8 bytes"));
    let mut at = 24;
    for _ in 0..keys {
        at = record(body, at).ok_or_else(|| bad("fewer records than its header says"))?.1;
    }
    if at != body.len() {
        return Err(bad("bytes after the last record"));
    }
    let sha256 = sum.iter().map(|b| format!("{b:02x}")).collect();
    Ok(SnapshotInfo { revision, keys, bytes: data.len() as u64, sha256 })
}

fn record(data: &[u8], at: usize) -> Option<(KeyValue, usize)> {
    let u32_at = |i: usize| Some(u32::from_le_bytes(data.get(i..i + 4)?.try_into().ok()?) as usize);
    let i64_at = |i: usize| Some(i64::from_le_bytes(data.get(i..i + 8)?.try_into().ok()?));
    let klen = u32_at(at)?;
    let key = std::str::from_utf8(data.get(at + 4..at + 4 + klen)?).ok()?.to_string();
    let mut i = at + 4 + klen;
    let (create_revision, mod_revision) = (i64_at(i)?, i64_at(i + 8)?);
    i += 16;
    let vlen = u32_at(i)?;
    let value = data.get(i + 4..i + 4 + vlen)?.to_vec();
    Some((KeyValue { key, value, create_revision, mod_revision }, i + 4 + vlen))
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
        let info = read(&data[..], |kv| {
            seen.push(kv);
            Ok(())
        })
        .unwrap();
        assert_eq!((info.revision, info.keys, info.bytes), (9, 2, data.len() as u64));
        assert_eq!(seen, kvs);
        for cut in [1, 20, 41, data.len() - 1] {
            assert!(verify(&data[..data.len() - cut]).is_err(), "cut {cut}");
        }
        for i in [0, 10, 30, data.len() - 5] {
            let mut altered = data.clone();
            altered[i] ^= 1;
            assert!(read(&altered[..], |_| panic!("nothing is read from a damaged file")).is_err(), "byte {i}");
        }
    }
}
