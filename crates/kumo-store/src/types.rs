//! Values, events and errors shared by every [`crate::Store`] backend.

/// One key's value and its revisions, as etcd reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision at which the key was (last) created.
    pub create_revision: i64,
    /// Revision of the last change (for a deleted value: the revision of the deletion).
    pub mod_revision: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// A change to one key. For `Delete`, `kv.value` is the last value before deletion and `kv.mod_revision` is the
/// revision of the deletion. `prev` is the value before the change (None for a create).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    pub prev: Option<KeyValue>,
}

impl Event {
    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }
}

#[derive(Clone, Debug, Default)]
pub struct RangeRequest {
    pub prefix: String,
    /// Continue strictly after this key (for paging).
    pub start_after: Option<String>,
    /// Maximum number of keys; 0 means all.
    pub limit: usize,
    /// Read as of this revision; None means latest.
    pub revision: Option<i64>,
    /// Whether the keys after a page need not be counted (`remaining` is then only at least 1 when `more`):
    /// counting walks all of them, which makes reading everything in pages quadratic.
    pub uncounted: bool,
}

#[derive(Clone, Debug)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// The revision the read was served at.
    pub revision: i64,
    /// True when `limit` cut the result short.
    pub more: bool,
    /// How many keys remain after the returned ones (when `more`).
    pub remaining: i64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("key {0} not found")]
    NotFound(String),
    #[error("key {0} already exists")]
    AlreadyExists(String),
    #[error("key {key} was modified (current revision {})", current.as_ref().map(|c| c.mod_revision).unwrap_or(0))]
    Conflict { key: String, current: Option<KeyValue> },
    #[error("revision {requested} has been compacted (oldest available is {compacted})")]
    Compacted { requested: i64, compacted: i64 },
    #[error("revision {requested} is in the future (current is {current})")]
    FutureRevision { requested: i64, current: i64 },
    /// The backend cannot be reached or cannot serve right now (etcd down, no leader, quorum lost); retrying
    /// later may succeed. A write refused this way was not applied, but one whose connection broke mid-flight
    /// may have been: a retry can then meet its own write (AlreadyExists, Conflict), as after a timeout.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// No answer within the deadline. A write may or may not have been applied.
    #[error("storage timed out: {0}")]
    Timeout(String),
    /// A stored value failed its checksum (or does not decode): it is reported by key and never returned.
    #[error("stored value of {key} is corrupt: {detail}")]
    Corrupt { key: String, detail: String },
    /// The disk is full: writes fail (and are not applied) until space is freed; reads go on.
    #[error("storage is out of space: {0}")]
    NoSpace(String),
    #[error("storage backend: {0}")]
    Backend(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
