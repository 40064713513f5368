//! The backend-neutral conformance suite: what every [`Store`] must do, as tests.
//!
//! Each suite function takes an `Arc<dyn Store>` and panics on a violation. They work under a key prefix of
//! their own and count revisions from `current_revision()` at their start, so they hold on a store that is not
//! empty, does not start at revision 0 (etcd starts at 1) and is shared with other writers, except where a
//! test needs to see every revision (noted on it).
//!
//! A backend runs all of them with [`conformance_tests!`](crate::conformance_tests), given an async function
//! returning a [`Fixture`]. [`EtcdServer`] starts a real etcd for tests.

mod etcd_server;
mod expiry;
mod kv;
mod small_fs;
mod watch;

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;

pub use etcd_server::{free_port, EtcdServer, EtcdTls};
pub use expiry::*;
pub use kv::*;
pub use small_fs::SmallFs;
pub use watch::*;

use crate::{Event, RangeRequest, Result, Store};

/// A store under test and whatever must outlive it (a temp dir, an etcd process).
pub struct Fixture {
    pub store: Arc<dyn Store>,
    _keep: Box<dyn Any + Send>,
}

impl Fixture {
    pub fn new(store: Arc<dyn Store>, keep: impl Any + Send) -> Fixture {
        Fixture { store, _keep: Box::new(keep) }
    }
}

/// Generates one `#[tokio::test]` per suite function, each calling `$fixture().await` for a fresh store.
#[macro_export]
#[doc(hidden)]
macro_rules! conformance_tests {
    ($fixture:path) => {
        $crate::conformance_tests!(@each $fixture;
            revisions_increase_and_failed_writes_consume_none,
            create_get_update_delete,
            concurrent_writers_to_one_key_one_wins,
            range_prefix_limit_and_paging,
            range_at_past_and_future_revisions,
            compaction_discards_history_but_keeps_current,
            large_values,
            many_keys,
            watch_replays_with_prev_then_follows_live,
            watch_delete_events_carry_the_last_value,
            watch_from_future_revision_skips_until_then,
            watch_sees_concurrent_writes_in_order,
            keys_expire_after_their_ttl,
        );
    };
    (@each $fixture:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let fixture = $fixture().await;
                $crate::conformance::$name(fixture.store.clone()).await;
            }
        )*
    };
}

/// A key prefix no other test (in this process or another sharing the store) uses.
pub fn unique_prefix(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("/conformance/{name}-{}-{nanos}-{n}/", std::process::id())
}

/// Reads `n` events, failing if the stream errors, ends or stalls.
pub async fn take(stream: &mut BoxStream<'static, Result<Event>>, n: usize) -> Vec<Event> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(30), stream.next()).await;
        let next = next.unwrap_or_else(|_| panic!("watch stalled after {} of {n} events", out.len()));
        out.push(next.expect("watch ended").expect("watch failed"));
    }
    out
}

/// Asserts the stream yields nothing more for now (no duplicates after the expected events).
pub async fn assert_no_more(stream: &mut BoxStream<'static, Result<Event>>) {
    let next = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
    assert!(next.is_err(), "unexpected extra item: {:?}", next.unwrap());
}

/// The keys of a range, with the prefix `p` removed for readable assertions.
pub async fn keys(store: &dyn Store, p: &str, req: RangeRequest) -> Vec<String> {
    let resp = store.range(req).await.unwrap();
    resp.kvs.into_iter().map(|kv| kv.key.strip_prefix(p).unwrap_or(&kv.key).to_string()).collect()
}

/// A range over `prefix` as of `revision` (None = latest).
pub fn at(prefix: &str, revision: Option<i64>) -> RangeRequest {
    RangeRequest { prefix: prefix.into(), revision, ..Default::default() }
}
