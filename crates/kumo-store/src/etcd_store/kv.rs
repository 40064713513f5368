//! Reads, compare-and-swap writes and compaction, each one etcd request (a transaction where the trait needs a
//! check and a change to happen together).

use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, GetResponse, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};

use std::time::Duration;

use super::{errors, prefix_end, EtcdStore};
use crate::{Error, KeyValue, RangeRequest, RangeResponse, Result};

impl EtcdStore {
    /// `(current revision, recorded compacted revision)` in one read.
    pub(super) async fn read_compacted(&self) -> Result<(i64, i64)> {
        self.read_compacted_as(false).await
    }

    /// [`Self::read_compacted`], `serializable`: from what the member has applied, without waiting for it to
    /// apply everything committed (which, while etcd is behind, takes longer than a request may).
    pub(super) async fn read_compacted_as(&self, serializable: bool) -> Result<(i64, i64)> {
        let key = self.keys.compact.clone();
        let options = serializable.then(|| GetOptions::new().with_serializable());
        let resp = self
            .call("read", |mut kv| {
                let (key, options) = (key.clone(), options.clone());
                async move { kv.get(key, options).await }
            })
            .await?;
        let (_, compacted) = parse_compacted(&resp)?;
        Ok((revision(&resp), compacted))
    }

    /// `serializable`: answered from the member's applied state, without a read index round.
    pub(super) async fn get_key(&self, key: &str, serializable: bool) -> Result<Option<KeyValue>> {
        let k = self.keys.data(key);
        let options = serializable.then(|| GetOptions::new().with_serializable());
        let resp = self
            .call("get", |mut kv| {
                let (k, options) = (k.clone(), options.clone());
                async move { kv.get(k, options).await }
            })
            .await?;
        resp.kvs().first().map(|kv| self.keys.kv(kv)).transpose()
    }

    pub(super) async fn range_keys(&self, req: RangeRequest) -> Result<RangeResponse> {
        let prefix = self.keys.data(&req.prefix).into_bytes();
        let end = prefix_end(&prefix);
        // Just past `start_after` ("\0" is the smallest suffix), when that sorts after the prefix.
        let start = match &req.start_after {
            Some(after) if after.as_str() >= req.prefix.as_str() => {
                let mut k = self.keys.data(after).into_bytes();
                k.push(0);
                k
            }
            _ => prefix,
        };
        let limit = i64::try_from(req.limit).unwrap_or(i64::MAX);
        let options = GetOptions::new().with_range(end).with_limit(limit);
        let at = req.revision.filter(|r| *r > 0);
        let Some(at) = at else {
            let resp = self
                .call("range", |mut kv| {
                    let (start, options) = (start.clone(), options.clone());
                    async move { kv.get(start, Some(options)).await }
                })
                .await?;
            return self.page(&resp, revision(&resp));
        };
        // A past revision: read our compaction record in the same transaction, because etcd still serves the
        // compacted revision itself while the trait calls it gone.
        let txn = Txn::new().and_then([
            TxnOp::get(self.keys.compact.clone(), None),
            TxnOp::get(start, Some(options.with_revision(at))),
        ]);
        let resp = match self.txn("range", txn).await {
            Ok(resp) => resp,
            Err(Error::Compacted { .. }) => {
                let (_, compacted) = self.read_compacted().await?;
                // etcd compacted past `at` (perhaps by its own auto-compaction): at least `at` is gone.
                return Err(Error::Compacted { requested: at, compacted: compacted.max(at) });
            }
            Err(Error::FutureRevision { .. }) => {
                let (current, _) = self.read_compacted().await?;
                return Err(Error::FutureRevision { requested: at, current });
            }
            Err(e) => return Err(e),
        };
        let [compact, range] = gets(&resp)?;
        let (_, compacted) = parse_compacted(&compact)?;
        if compacted > 0 && at <= compacted {
            return Err(Error::Compacted { requested: at, compacted });
        }
        self.page(&range, at)
    }

    /// A start past the end (a `start_after` beyond the prefix) is fine: etcd finds nothing in that range.
    fn page(&self, resp: &GetResponse, revision: i64) -> Result<RangeResponse> {
        let kvs = resp.kvs().iter().map(|kv| self.keys.kv(kv)).collect::<Result<Vec<_>>>()?;
        // etcd counts every key in the range, returned or not.
        let remaining = (resp.count() - kvs.len() as i64).max(0);
        Ok(RangeResponse { kvs, revision, more: resp.more(), remaining })
    }

    /// `lease`: the etcd lease the key is attached to (it is deleted when that expires).
    pub(super) async fn create_key(&self, key: &str, value: Vec<u8>, lease: Option<i64>) -> Result<KeyValue> {
        let k = self.keys.data(key);
        let txn = Txn::new().when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
            k,
            value.clone(),
            put_options(lease),
        )]);
        let resp = self.write_txn("create", txn).await?;
        if !resp.succeeded() {
            return Err(Error::AlreadyExists(key.to_string()));
        }
        let rev = txn_revision(&resp);
        Ok(KeyValue { key: key.to_string(), value, create_revision: rev, mod_revision: rev })
    }

    pub(super) async fn update_key(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: i64,
        lease: Option<i64>,
    ) -> Result<KeyValue> {
        let k = self.keys.data(key);
        // A missing key has mod_revision 0, so also require that it exists.
        let txn = Txn::new()
            .when([
                Compare::create_revision(k.clone(), CompareOp::Greater, 0),
                Compare::mod_revision(k.clone(), CompareOp::Equal, expected),
            ])
            // Reading the key back (without its value) gives its create_revision without shipping the old
            // value, which prev_kv would.
            .and_then([
                TxnOp::put(k.clone(), value.clone(), put_options(lease)),
                TxnOp::get(k.clone(), Some(GetOptions::new().with_keys_only())),
            ])
            .or_else([TxnOp::get(k, None)]);
        let resp = self.write_txn("update", txn).await?;
        let read = last_get(&resp)?;
        if !resp.succeeded() {
            return Err(self.missing_or_conflict(key, &read)?);
        }
        let written = read.kvs().first().ok_or_else(|| Error::Backend("updated key read back empty".into()))?;
        Ok(KeyValue {
            key: key.to_string(),
            value,
            create_revision: written.create_revision(),
            mod_revision: written.mod_revision(),
        })
    }

    pub(super) async fn delete_key(&self, key: &str, expected: Option<i64>) -> Result<KeyValue> {
        let k = self.keys.data(key);
        let mut when = vec![Compare::create_revision(k.clone(), CompareOp::Greater, 0)];
        if let Some(expected) = expected {
            when.push(Compare::mod_revision(k.clone(), CompareOp::Equal, expected));
        }
        let txn = Txn::new()
            .when(when)
            .and_then([TxnOp::delete(k.clone(), Some(DeleteOptions::new().with_prev_key()))])
            .or_else([TxnOp::get(k, None)]);
        let resp = self.write_txn("delete", txn).await?;
        let ops = resp.op_responses();
        if !resp.succeeded() {
            return Err(self.missing_or_conflict(key, &last_get(&resp)?)?);
        }
        let prev = match ops.first() {
            Some(TxnOpResponse::Delete(d)) => d.prev_kvs().first().map(|kv| self.keys.kv(kv)).transpose()?,
            _ => None,
        };
        let prev = prev.ok_or_else(|| Error::Backend(format!("deleting {key}: etcd returned no previous value")))?;
        Ok(KeyValue { mod_revision: txn_revision(&resp), ..prev })
    }

    /// The error for a failed compare: the key is gone, or it moved on (with its current value).
    fn missing_or_conflict(&self, key: &str, read: &GetResponse) -> Result<Error> {
        Ok(match read.kvs().first() {
            None => Error::NotFound(key.to_string()),
            Some(kv) => Error::Conflict { key: key.to_string(), current: Some(self.keys.kv(kv)?) },
        })
    }

    /// Compacts etcd, then records the revision for [`crate::Store::compacted_revision`]. In that order a crash
    /// in between leaves the record behind etcd (reads fail as compacted all the same, and the next compaction
    /// moves the record on), never ahead of it, which would make a later `compact` skip etcd's compaction.
    pub(super) async fn compact_to(&self, revision: i64) -> Result<()> {
        let (current, recorded) = self.read_compacted().await?;
        if revision > current {
            return Err(Error::FutureRevision { requested: revision, current });
        }
        if revision <= recorded {
            return Ok(());
        }
        match self.call("compact", |mut kv| async move { kv.compact(revision, None).await }).await {
            // Already compacted past it by someone else sharing this etcd: fine, just record.
            Ok(_) | Err(Error::Compacted { .. }) => {}
            Err(e) => return Err(e),
        }
        self.record_compacted(revision).await
    }

    /// Moves the record up to `revision` (never down, also when several compactions race).
    async fn record_compacted(&self, revision: i64) -> Result<()> {
        let key = self.keys.compact.clone();
        loop {
            let resp = self
                .call("compact", |mut kv| {
                    let key = key.clone();
                    async move { kv.get(key, None).await }
                })
                .await?;
            let (mod_revision, recorded) = parse_compacted(&resp)?;
            if recorded >= revision {
                return Ok(());
            }
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, mod_revision)])
                .and_then([TxnOp::put(key.clone(), revision.to_string(), Some(PutOptions::new()))]);
            if self.write_txn("compact", txn).await?.succeeded() {
                return Ok(());
            }
        }
    }

    /// A transaction that writes, through the gate on writes in flight. One etcd refuses as too many is sent
    /// again (etcd refuses before proposing, so it cannot apply twice) until the request's deadline.
    async fn write_txn(&self, what: &str, txn: Txn) -> Result<TxnResponse> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(50);
        loop {
            let pass = self.writes.enter(deadline, what).await?;
            let result = self
                .call_by(deadline, what, |mut kv| {
                    let txn = txn.clone();
                    async move { kv.txn(txn).await }
                })
                .await;
            match result {
                Err(e) if errors::is_behind(&e) => {
                    self.writes.refused();
                    drop(pass);
                    let wake = (tokio::time::Instant::now() + pause).min(deadline);
                    if wake >= deadline {
                        return Err(e);
                    }
                    tokio::time::sleep_until(wake).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                result => {
                    if result.is_ok() {
                        self.writes.succeeded();
                    }
                    return result;
                }
            }
        }
    }

    /// A transaction that only reads.
    async fn txn(&self, what: &str, txn: Txn) -> Result<TxnResponse> {
        self.call(what, |mut kv| {
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await
    }
}

/// A put attached to `lease`, or to none (which also detaches the key from a lease it had).
fn put_options(lease: Option<i64>) -> Option<PutOptions> {
    lease.map(|id| PutOptions::new().with_lease(id))
}

/// `(mod_revision, value)` of the compaction record; `(0, 0)` before the first compaction.
fn parse_compacted(resp: &GetResponse) -> Result<(i64, i64)> {
    let Some(kv) = resp.kvs().first() else { return Ok((0, 0)) };
    let text = std::str::from_utf8(kv.value()).unwrap_or_default();
    let rev = text.parse().map_err(|_| Error::Backend(format!("compaction record holds {text:?}, not a revision")))?;
    Ok((kv.mod_revision(), rev))
}

fn revision(resp: &GetResponse) -> i64 {
    resp.header().map(|h| h.revision()).unwrap_or_default()
}

/// The revision of a transaction: for a successful write, the write's own.
fn txn_revision(resp: &TxnResponse) -> i64 {
    resp.header().map(|h| h.revision()).unwrap_or_default()
}

/// The transaction's range results, in order, when it ran exactly `N` ranges.
fn gets<const N: usize>(resp: &TxnResponse) -> Result<[GetResponse; N]> {
    let all: Vec<GetResponse> = resp
        .op_responses()
        .into_iter()
        .map(|op| match op {
            TxnOpResponse::Get(g) => Ok(g),
            other => Err(Error::Backend(format!("unexpected etcd transaction result {other:?}"))),
        })
        .collect::<Result<_>>()?;
    let n = all.len();
    all.try_into().map_err(|_| Error::Backend(format!("etcd transaction returned {n} results, expected {N}")))
}

/// The last range result of a transaction (an update's read-back after its put, or a failed compare's read).
fn last_get(resp: &TxnResponse) -> Result<GetResponse> {
    let last = resp.op_responses().into_iter().rev().find_map(|op| match op {
        TxnOpResponse::Get(g) => Some(g),
        _ => None,
    });
    last.ok_or_else(|| Error::Backend("etcd transaction returned no read".into()))
}
