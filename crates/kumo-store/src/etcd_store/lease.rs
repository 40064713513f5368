//! Keys that expire, on etcd's leases: etcd deletes a key when its lease runs out, so expiry needs no scan and
//! no kumo process.
//!
//! A lease per write would double the writes, so writes with the same TTL share one, as Kubernetes does: a
//! lease granted for `ttl + window` serves every such write in the next `window` (5% of the TTL, at least a
//! second). A key then lives between `ttl` and `ttl + window` after its last write.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::EtcdStore;
use crate::{Error, Result};

/// The lease being shared for each TTL (in whole seconds): its id and when it was granted.
#[derive(Default)]
pub(super) struct Leases(Mutex<HashMap<u64, (i64, Instant)>>);

/// How long a granted lease keeps being handed out.
fn window(ttl_secs: u64) -> Duration {
    Duration::from_millis((ttl_secs * 50).max(1000))
}

impl EtcdStore {
    /// Runs `write` with a lease of `ttl`. A lease etcd no longer knows (it expired early, etcd was restored)
    /// is dropped and the write made once more with a fresh one.
    pub(super) async fn with_lease<T, F, Fut>(&self, ttl: Duration, write: F) -> Result<T>
    where
        F: Fn(i64) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let secs = ttl.as_secs_f64().ceil().max(1.0) as u64;
        let lease = self.lease(secs).await?;
        match write(lease).await {
            Err(e) if lease_gone(&e) => {
                self.leases.0.lock().expect("lock").remove(&secs);
                write(self.lease(secs).await?).await
            }
            r => r,
        }
    }

    async fn lease(&self, secs: u64) -> Result<i64> {
        let reuse = window(secs);
        if let Some((id, granted)) = self.leases.0.lock().expect("lock").get(&secs) {
            if granted.elapsed() < reuse {
                return Ok(*id);
            }
        }
        let granted_ttl = (secs + reuse.as_secs().max(1)) as i64;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let resp = self
            .failover(
                |endpoint| {
                    let mut lease = endpoint.lease.clone();
                    tokio::time::timeout_at(deadline, async move { lease.grant(granted_ttl, None).await })
                },
                "lease grant",
            )
            .await?;
        self.leases.0.lock().expect("lock").insert(secs, (resp.id(), Instant::now()));
        Ok(resp.id())
    }
}

fn lease_gone(e: &Error) -> bool {
    matches!(e, Error::Backend(text) if text.contains("lease not found"))
}
