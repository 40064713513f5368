//! Revisioned key-value storage with etcd semantics: everything kumo persists.
//!
//! The [`Store`] trait is the whole interface: one monotonically increasing revision across all keys,
//! compare-and-swap on a key's `mod_revision`, range reads (optionally at a past revision), watch from a
//! revision, and compaction. The API server only ever talks to this trait. Two backends implement it:
//! - [`RedbStore`] (the default): embedded, a single crash-safe file, group commit (`redb_store/`);
//! - [`EtcdStore`]: an etcd v3 cluster, for high availability and several API servers (`etcd_store/`).
//!
//! Both pass the same conformance suite (`conformance/`, behind the `testing` feature for other crates'
//! tests), which is the executable form of the trait's documentation.
//!
//! Newcomers: start with [`Store`] and [`Error`], then `redb_store/schema.rs` for how revisions are
//! kept on disk, or `etcd_store/mod.rs` for how they map onto etcd.

#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod conformance;
mod etcd_store;
mod redb_store;
pub mod snapshot;
mod types;

pub use etcd_store::{EtcdConfig, EtcdStore};
pub use redb_store::{defrag as defrag_embedded, restore as restore_embedded, unusable, CheckReport, RedbStore};
pub use types::*;

use futures::stream::BoxStream;

/// A revisioned key-value store with etcd-like semantics.
///
/// Keys are UTF-8 strings (the API server uses `/registry/{group}/{resource}/{namespace}/{name}`); values are
/// opaque bytes. Every successful write gets a fresh revision, strictly greater than all before it; a failed one
/// changes nothing. Any call may fail with [`Error::Unavailable`] or [`Error::Timeout`] when the backend cannot
/// be reached.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The latest revision written (0 for an empty [`RedbStore`]; etcd starts at 1).
    async fn current_revision(&self) -> Result<i64>;

    /// The oldest revision that can still be read or watched from (everything at or below
    /// `compacted_revision` is gone).
    async fn compacted_revision(&self) -> Result<i64>;

    /// Reads one key at the latest revision.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Reads one key as this store's nearest replica has applied it, without waiting to agree on the latest
    /// revision: it may miss a write acknowledged elsewhere moments ago (never one it acknowledged itself on a
    /// single member). For writers that make their write a compare-and-swap on what they read anyway. The
    /// default is [`Store::get`].
    async fn get_serializable(&self, key: &str) -> Result<Option<KeyValue>> {
        self.get(key).await
    }

    /// Why writes are failing right now (a full disk, an fsync error), while they are; reads may still work.
    /// `/readyz` reports it. Backends whose write failures are per request (etcd) report None.
    fn write_failure(&self) -> Option<String> {
        None
    }

    /// Damaged values found since the last call, each key once per process: `(key, what is wrong)`. The server
    /// reports them as events. Backends that cannot find any (etcd checks its own data) report none.
    fn take_corrupt(&self) -> Vec<(String, String)> {
        vec![]
    }

    /// A consistent snapshot taken while writes go on, as the bytes of a snapshot file: the embedded store's
    /// own format ([`snapshot`]), or etcd's (its maintenance API). Values are as stored (Secrets stay sealed).
    async fn snapshot(&self) -> Result<BoxStream<'static, Result<bytes::Bytes>>> {
        Err(Error::Backend("this store cannot take snapshots".into()))
    }

    /// Reads keys starting with `prefix`, in key order, strictly after `start_after` when given, at most `limit`
    /// of them (0 = no limit), as of `revision` (None = latest). Reading at a compacted revision fails with
    /// [`Error::Compacted`]; at a future revision with [`Error::FutureRevision`].
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse>;

    /// Creates `key`; fails with [`Error::AlreadyExists`] if it exists.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue>;

    /// [`Store::create`] of a key that expires: it is deleted (a Delete event, like any deletion) once `ttl` has
    /// passed since its last write, unless deleted before. Writing it again with a TTL starts a new one; writing
    /// it without one makes it permanent. Expiry is driven by the backend (a time-ordered index, or etcd's
    /// leases), with no scan of the keys; it may lag the deadline by a few seconds.
    async fn create_expiring(&self, key: &str, value: Vec<u8>, ttl: std::time::Duration) -> Result<KeyValue>;

    /// [`Store::update`] of a key that expires `ttl` after this write (see [`Store::create_expiring`]).
    async fn update_expiring(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_revision: i64,
        ttl: std::time::Duration,
    ) -> Result<KeyValue>;

    /// Replaces `key` only if its current `mod_revision` equals `expected_revision`;
    /// [`Error::NotFound`] if absent, [`Error::Conflict`] (with the current value) if it moved on.
    async fn update(&self, key: &str, value: Vec<u8>, expected_revision: i64) -> Result<KeyValue>;

    /// Deletes `key`, only if its `mod_revision` equals `expected_revision` when given. Returns the deleted
    /// value, with `mod_revision` set to the revision of the deletion.
    async fn delete(&self, key: &str, expected_revision: Option<i64>) -> Result<KeyValue>;

    /// Streams every change to keys starting with `prefix` made after `after_revision`, in revision order, then
    /// live changes as they commit. Fails with [`Error::Compacted`] if `after_revision` is at or below the
    /// compacted revision (once anything was compacted). The stream ends with `Err(Error::Compacted)` if the
    /// watcher falls too far behind.
    async fn watch(&self, prefix: &str, after_revision: i64) -> Result<BoxStream<'static, Result<Event>>>;

    /// Discards history at and below `revision` (the latest value of each live key is always kept). Compacting
    /// to a revision at or below the compacted one does nothing; past the current one fails with
    /// [`Error::FutureRevision`].
    async fn compact(&self, revision: i64) -> Result<()>;
}
