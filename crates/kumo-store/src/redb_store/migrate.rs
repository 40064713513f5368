//! Upgrading a store written by an older format in place, inside the opening transaction (all or nothing).

use redb::{ReadableTable, WriteTransaction};

use super::schema::{backend, encode_current, v1, Version, CURRENT, HISTORY};
use crate::{Error, Result};

/// Format 1 → 2: every `current` and `history` row gains its checksum, and history stops holding a second copy
/// of each current value.
pub(crate) fn v1_to_v2(txn: &WriteTransaction) -> Result<()> {
    let bad = |what: &str, key: &str| Error::Corrupt {
        key: key.to_string(),
        detail: format!("unreadable format 1 {what} row"),
    };
    let mut current = txn.open_table(CURRENT).map_err(backend)?;
    let mut rows = Vec::new();
    let mut current_revs = std::collections::HashMap::new();
    for entry in current.iter().map_err(backend)? {
        let (k, v) = entry.map_err(backend)?;
        let key = k.value().to_string();
        let (create_rev, mod_rev, value) = v1::current(v.value()).ok_or_else(|| bad("current", &key))?;
        current_revs.insert(key.clone(), mod_rev);
        rows.push((encode_current(&key, create_rev, mod_rev, value), key));
    }
    for (row, key) in rows {
        current.insert(key.as_str(), row.as_slice()).map_err(backend)?;
    }
    let mut history = txn.open_table(HISTORY).map_err(backend)?;
    let mut rows = Vec::new();
    let mut copies = Vec::new();
    for entry in history.iter().map_err(backend)? {
        let (k, v) = entry.map_err(backend)?;
        let (key, rev) = (k.value().0.to_string(), k.value().1);
        if current_revs.get(&key) == Some(&rev) {
            copies.push((key, rev));
            continue;
        }
        let (put, create_rev, value) = v1::history(v.value()).ok_or_else(|| bad("history", &key))?;
        let version =
            if put { Version::Put { create_rev, value: value.to_vec() } } else { Version::Tombstone { create_rev } };
        rows.push((version.encode(&key, rev), key, rev));
    }
    for (row, key, rev) in rows {
        history.insert((key.as_str(), rev), row.as_slice()).map_err(backend)?;
    }
    for (key, rev) in copies {
        history.remove((key.as_str(), rev)).map_err(backend)?;
    }
    Ok(())
}
