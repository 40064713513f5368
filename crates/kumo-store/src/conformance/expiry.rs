//! Keys written with a TTL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::unique_prefix;
use crate::{Error, EventKind, Store};

/// Polls until `key` is gone, failing after `limit`.
async fn gone_within(s: &dyn Store, key: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    while s.get(key).await.unwrap().is_some() {
        assert!(start.elapsed() < limit, "{key} still there {limit:?} after its TTL ran out");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    start.elapsed()
}

/// A key written with a TTL is deleted (with a Delete event) once the TTL has passed since its last write; a
/// plain write makes it permanent; an explicit deletion before the deadline is the only one.
pub async fn keys_expire_after_their_ttl(s: Arc<dyn Store>) {
    let p = unique_prefix("expiry");
    let k = |n: &str| format!("{p}{n}");
    let ttl = Duration::from_secs(2);
    let mut watch = s.watch(&p, s.current_revision().await.unwrap()).await.unwrap();
    let start = Instant::now();

    s.create_expiring(&k("a"), b"a".to_vec(), ttl).await.unwrap();
    assert!(matches!(s.create_expiring(&k("a"), vec![], ttl).await, Err(Error::AlreadyExists(_))));
    assert!(matches!(s.update_expiring(&k("missing"), vec![], 1, ttl).await, Err(Error::NotFound(_))));
    let b = s.create_expiring(&k("b"), b"b".to_vec(), ttl).await.unwrap();
    s.update(&k("b"), b"permanent".to_vec(), b.mod_revision).await.unwrap();
    s.create_expiring(&k("c"), b"c".to_vec(), Duration::from_secs(120)).await.unwrap();
    let d = s.create_expiring(&k("d"), b"d".to_vec(), ttl).await.unwrap();
    s.delete(&k("d"), Some(d.mod_revision)).await.unwrap();
    let e = s.create_expiring(&k("e"), b"e".to_vec(), ttl).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let e = s.update_expiring(&k("e"), b"e2".to_vec(), e.mod_revision, Duration::from_secs(6)).await.unwrap();
    assert_eq!(e.value, b"e2");

    // Backends may keep a key a little past its TTL (etcd's leases are shared for a moment, and tick in
    // seconds), never much longer.
    gone_within(&*s, &k("a"), Duration::from_secs(12)).await;
    let a_gone = start.elapsed();
    assert!(a_gone >= ttl, "a expired after {a_gone:?}, before its TTL");
    assert!(s.get(&k("e")).await.unwrap().is_some(), "e was written again with a longer TTL");
    assert_eq!(s.get(&k("b")).await.unwrap().map(|kv| kv.value), Some(b"permanent".to_vec()));
    assert!(s.get(&k("c")).await.unwrap().is_some());
    gone_within(&*s, &k("e"), Duration::from_secs(15)).await;
    assert!(start.elapsed() >= Duration::from_millis(1200) + Duration::from_secs(6), "e outlived its new TTL");
    assert!(s.get(&k("b")).await.unwrap().is_some(), "a plain write made b permanent");

    // The watch saw each deletion once, carrying the last value.
    let mut deletes = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(500), watch.next()).await {
        let ev = ev.expect("watch failed");
        if ev.kind == EventKind::Delete {
            deletes.push((ev.kv.key.strip_prefix(&p).unwrap_or(&ev.kv.key).to_string(), ev.kv.value));
        }
    }
    let want = [("d", &b"d"[..]), ("a", b"a"), ("e", b"e2")].map(|(k, v)| (k.to_string(), v.to_vec()));
    assert_eq!(deletes, want.to_vec());
}
