//! On-disk layout: table definitions and the byte encoding of stored values.
//!
//! | table     | key            | value                                                        |
//! |-----------|----------------|--------------------------------------------------------------|
//! | `meta`    | `&str`         | `i64` (`format_version`, `revision`, `compacted`)            |
//! | `current` | key            | `crc u32 LE, create_rev i64 LE, mod_rev i64 LE, value`       |
//! | `history` | `(key, rev)`   | `kind u8, crc u32 LE, create_rev i64 LE, value` (tombstones carry no value) |
//! | `log`     | `rev`          | key written at that revision                                 |
//! | `expiry`  | `(deadline, key)` | `()`: keys written with a TTL, in deadline order (unix ms) |
//! | `expires` | key            | `i64`: the key's deadline, to find its `expiry` row when it is written again |
//!
//! `current` serves latest reads; `history` holds every superseded version and deletion (not the current value,
//! which is stored once) for reads at a past revision and for watch replay; `log` orders every change by
//! revision so a watch can replay it. `expiry` lets the writer find the keys due for deletion by reading only
//! those (no scan); it is added by a plain open, so it needs no format change.
//!
//! Every row carries a CRC-32 over its key, its revisions and its value, checked on every read: redb's own page
//! checksums are only verified by an integrity check, so a garbled value would otherwise be served.

use redb::TableDefinition;

use crate::{Error, KeyValue};

/// Bumped whenever the layout below changes incompatibly; `open` migrates older versions it knows.
pub(crate) const FORMAT_VERSION: i64 = 2;
/// Format 1: the same tables without checksums (`migrate.rs` adds them).
pub(crate) const FORMAT_V1: i64 = 1;

/// redb page cache size.
pub(crate) const CACHE_BYTES: usize = 64 << 20;

pub(crate) const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
pub(crate) const CURRENT: TableDefinition<&str, &[u8]> = TableDefinition::new("current");
pub(crate) const HISTORY: TableDefinition<(&str, i64), &[u8]> = TableDefinition::new("history");
pub(crate) const LOG: TableDefinition<i64, &str> = TableDefinition::new("log");
pub(crate) const EXPIRY: TableDefinition<(i64, &str), ()> = TableDefinition::new("expiry");
pub(crate) const EXPIRES: TableDefinition<&str, i64> = TableDefinition::new("expires");

pub(crate) const META_FORMAT_VERSION: &str = "format_version";
pub(crate) const META_REVISION: &str = "revision";
pub(crate) const META_COMPACTED: &str = "compacted";

const KIND_PUT: u8 = 1;
const KIND_TOMBSTONE: u8 = 2;

/// Maps a redb (or join) error to the trait's error: a full disk is [`Error::NoSpace`], the rest
/// [`Error::Backend`]. redb wraps the I/O error in layers of its own; their text keeps the OS's words.
pub(crate) fn backend(e: impl std::fmt::Display) -> Error {
    let text = e.to_string();
    if text.contains("No space left on device") || text.contains("Disk quota exceeded") {
        Error::NoSpace(text)
    } else {
        Error::Backend(text)
    }
}

fn corrupt(key: &str, detail: impl Into<String>) -> Error {
    Error::Corrupt { key: key.to_string(), detail: detail.into() }
}

fn read_i64(bytes: &[u8], at: usize) -> Option<i64> {
    Some(i64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// The checksum of one row: its key, the revisions that place it, and its value.
fn crc(key: &str, revs: &[i64], kind: u8, value: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&(key.len() as u64).to_le_bytes());
    h.update(key.as_bytes());
    for r in revs {
        h.update(&r.to_le_bytes());
    }
    h.update(&[kind]);
    h.update(value);
    h.finalize()
}

const CURRENT_HEAD: usize = 20;

/// Encodes a `current` row.
pub(crate) fn encode_current(key: &str, create_rev: i64, mod_rev: i64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(CURRENT_HEAD + value.len());
    out.extend_from_slice(&crc(key, &[create_rev, mod_rev], 0, value).to_le_bytes());
    out.extend_from_slice(&create_rev.to_le_bytes());
    out.extend_from_slice(&mod_rev.to_le_bytes());
    out.extend_from_slice(value);
    out
}

/// The revision of a `current` row, without checking it (compaction must go on past a damaged value).
pub(crate) fn current_mod_revision(bytes: &[u8]) -> Option<i64> {
    read_i64(bytes, 12)
}

/// Decodes and verifies a `current` row into the key's [`KeyValue`].
pub(crate) fn decode_current(key: &str, bytes: &[u8]) -> Result<KeyValue, Error> {
    let short = || corrupt(key, format!("current row of {} bytes is too short", bytes.len()));
    let sum = read_u32(bytes, 0).ok_or_else(short)?;
    let create_revision = read_i64(bytes, 4).ok_or_else(short)?;
    let mod_revision = read_i64(bytes, 12).ok_or_else(short)?;
    let value = &bytes[CURRENT_HEAD..];
    if crc(key, &[create_revision, mod_revision], 0, value) != sum {
        return Err(corrupt(key, format!("checksum mismatch in the current value (revision {mod_revision})")));
    }
    Ok(KeyValue { key: key.to_string(), value: value.to_vec(), create_revision, mod_revision })
}

/// One `history` row: a value written at some revision, or the deletion of the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Version {
    Put { create_rev: i64, value: Vec<u8> },
    Tombstone { create_rev: i64 },
}

const HISTORY_HEAD: usize = 13;

impl Version {
    /// Encodes the row of `key` at `rev`.
    pub(crate) fn encode(&self, key: &str, rev: i64) -> Vec<u8> {
        let (kind, create_rev, value): (u8, i64, &[u8]) = match self {
            Version::Put { create_rev, value } => (KIND_PUT, *create_rev, value),
            Version::Tombstone { create_rev } => (KIND_TOMBSTONE, *create_rev, &[]),
        };
        let mut out = Vec::with_capacity(HISTORY_HEAD + value.len());
        out.push(kind);
        out.extend_from_slice(&crc(key, &[rev, create_rev], kind, value).to_le_bytes());
        out.extend_from_slice(&create_rev.to_le_bytes());
        out.extend_from_slice(value);
        out
    }

    /// Decodes and verifies the row of `key` at `rev`.
    pub(crate) fn decode(key: &str, rev: i64, bytes: &[u8]) -> Result<Version, Error> {
        let short = || corrupt(key, format!("history row at revision {rev} of {} bytes is too short", bytes.len()));
        let kind = *bytes.first().ok_or_else(short)?;
        let sum = read_u32(bytes, 1).ok_or_else(short)?;
        let create_rev = read_i64(bytes, 5).ok_or_else(short)?;
        let value = &bytes[HISTORY_HEAD..];
        if crc(key, &[rev, create_rev], kind, value) != sum {
            return Err(corrupt(key, format!("checksum mismatch in the value at revision {rev}")));
        }
        match kind {
            KIND_PUT => Ok(Version::Put { create_rev, value: value.to_vec() }),
            KIND_TOMBSTONE => Ok(Version::Tombstone { create_rev }),
            other => Err(corrupt(key, format!("unknown history kind {other} at revision {rev}"))),
        }
    }

    /// Whether the encoded row is a tombstone, without copying or checking its value.
    pub(crate) fn is_tombstone(bytes: &[u8]) -> bool {
        bytes.first() == Some(&KIND_TOMBSTONE)
    }

    /// The value as a [`KeyValue`] modified at `rev`; None for a tombstone.
    pub(crate) fn into_kv(self, key: &str, rev: i64) -> Option<KeyValue> {
        match self {
            Version::Put { create_rev, value } => {
                Some(KeyValue { key: key.to_string(), value, create_revision: create_rev, mod_revision: rev })
            }
            Version::Tombstone { .. } => None,
        }
    }
}

/// Format 1 rows, read once to migrate them (`migrate.rs`).
pub(crate) mod v1 {
    use super::{read_i64, KIND_PUT, KIND_TOMBSTONE};

    /// `(create_rev, mod_rev, value)` of a format 1 `current` row.
    pub(crate) fn current(bytes: &[u8]) -> Option<(i64, i64, &[u8])> {
        Some((read_i64(bytes, 0)?, read_i64(bytes, 8)?, bytes.get(16..)?))
    }

    /// `(is_put, create_rev, value)` of a format 1 `history` row.
    pub(crate) fn history(bytes: &[u8]) -> Option<(bool, i64, &[u8])> {
        let put = match *bytes.first()? {
            KIND_PUT => true,
            KIND_TOMBSTONE => false,
            _ => return None,
        };
        Some((put, read_i64(bytes, 1)?, bytes.get(9..)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_round_trips_and_detects_damage() {
        let row = encode_current("k", 3, 7, b"value");
        let kv = decode_current("k", &row).unwrap();
        assert_eq!(
            (kv.key.as_str(), kv.value.as_slice(), kv.create_revision, kv.mod_revision),
            ("k", &b"value"[..], 3, 7)
        );
        assert!(matches!(decode_current("k", &[1, 2, 3]), Err(Error::Corrupt { .. })));
        // Any flipped bit, and the same row under another key, fail the checksum.
        for i in 0..row.len() {
            let mut bad = row.clone();
            bad[i] ^= 0x10;
            assert!(matches!(decode_current("k", &bad), Err(Error::Corrupt { key, .. }) if key == "k"), "byte {i}");
        }
        assert!(decode_current("other", &row).is_err());
    }

    #[test]
    fn version_round_trips_and_detects_damage() {
        let put = Version::Put { create_rev: 4, value: b"abc".to_vec() };
        let row = put.encode("k", 9);
        assert_eq!(Version::decode("k", 9, &row).unwrap(), put);
        assert!(Version::decode("k", 10, &row).is_err(), "a row moved to another revision");
        let tomb = Version::Tombstone { create_rev: 4 };
        let bytes = tomb.encode("k", 11);
        assert!(Version::is_tombstone(&bytes) && !Version::is_tombstone(&row));
        assert_eq!(Version::decode("k", 11, &bytes).unwrap(), tomb);
        let mut bad = row.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(matches!(Version::decode("k", 9, &bad), Err(Error::Corrupt { .. })));
    }
}
