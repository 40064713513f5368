//! On-disk layout: table definitions and the byte encoding of stored values.
//!
//! | table     | key            | value                                          |
//! |-----------|----------------|------------------------------------------------|
//! | `meta`    | `&str`         | `i64` (`format_version`, `revision`, `compacted`) |
//! | `current` | key            | `create_rev i64 LE, mod_rev i64 LE, value`     |
//! | `history` | `(key, rev)`   | `kind u8, create_rev i64 LE, value` (tombstones carry no value) |
//! | `log`     | `rev`          | key written at that revision                   |
//!
//! `current` serves latest reads; `history` holds every version (including the current one) for reads at a past
//! revision and for watch replay; `log` orders the history by revision so a watch can replay it.

use redb::TableDefinition;

use crate::{Error, KeyValue};

/// Bumped whenever the layout below changes incompatibly; `open` refuses any other version.
pub(crate) const FORMAT_VERSION: i64 = 1;

pub(crate) const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
pub(crate) const CURRENT: TableDefinition<&str, &[u8]> = TableDefinition::new("current");
pub(crate) const HISTORY: TableDefinition<(&str, i64), &[u8]> = TableDefinition::new("history");
pub(crate) const LOG: TableDefinition<i64, &str> = TableDefinition::new("log");

pub(crate) const META_FORMAT_VERSION: &str = "format_version";
pub(crate) const META_REVISION: &str = "revision";
pub(crate) const META_COMPACTED: &str = "compacted";

const KIND_PUT: u8 = 1;
const KIND_TOMBSTONE: u8 = 2;

/// Maps any redb (or join) error to [`Error::Backend`].
pub(crate) fn backend(e: impl std::fmt::Display) -> Error {
    Error::Backend(e.to_string())
}

fn corrupt(what: &str) -> Error {
    Error::Backend(format!("corrupt {what} record"))
}

fn read_i64(bytes: &[u8], at: usize) -> Option<i64> {
    Some(i64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// Encodes a `current` row.
pub(crate) fn encode_current(create_rev: i64, mod_rev: i64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + value.len());
    out.extend_from_slice(&create_rev.to_le_bytes());
    out.extend_from_slice(&mod_rev.to_le_bytes());
    out.extend_from_slice(value);
    out
}

/// Decodes a `current` row into the key's [`KeyValue`].
pub(crate) fn decode_current(key: &str, bytes: &[u8]) -> Result<KeyValue, Error> {
    let create_revision = read_i64(bytes, 0).ok_or_else(|| corrupt("current"))?;
    let mod_revision = read_i64(bytes, 8).ok_or_else(|| corrupt("current"))?;
    Ok(KeyValue { key: key.to_string(), value: bytes[16..].to_vec(), create_revision, mod_revision })
}

/// One `history` row: a value written at some revision, or the deletion of the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Version {
    Put { create_rev: i64, value: Vec<u8> },
    Tombstone { create_rev: i64 },
}

impl Version {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let (kind, create_rev, value): (u8, i64, &[u8]) = match self {
            Version::Put { create_rev, value } => (KIND_PUT, *create_rev, value),
            Version::Tombstone { create_rev } => (KIND_TOMBSTONE, *create_rev, &[]),
        };
        let mut out = Vec::with_capacity(9 + value.len());
        out.push(kind);
        out.extend_from_slice(&create_rev.to_le_bytes());
        out.extend_from_slice(value);
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Version, Error> {
        let create_rev = read_i64(bytes, 1).ok_or_else(|| corrupt("history"))?;
        match bytes[0] {
            KIND_PUT => Ok(Version::Put { create_rev, value: bytes[9..].to_vec() }),
            KIND_TOMBSTONE => Ok(Version::Tombstone { create_rev }),
            _ => Err(corrupt("history")),
        }
    }

    /// Whether the encoded row is a tombstone, without copying its value.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_round_trips() {
        let kv = decode_current("k", &encode_current(3, 7, b"v")).unwrap();
        assert_eq!((kv.key.as_str(), kv.value.as_slice(), kv.create_revision, kv.mod_revision), ("k", &b"v"[..], 3, 7));
        assert!(decode_current("k", &[1, 2, 3]).is_err());
    }

    #[test]
    fn version_round_trips() {
        let put = Version::Put { create_rev: 4, value: b"abc".to_vec() };
        assert_eq!(Version::decode(&put.encode()).unwrap(), put);
        let tomb = Version::Tombstone { create_rev: 4 };
        let bytes = tomb.encode();
        assert!(Version::is_tombstone(&bytes) && !Version::is_tombstone(&put.encode()));
        assert_eq!(Version::decode(&bytes).unwrap(), tomb);
        assert!(Version::decode(&[9, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
