//! Watch: one etcd watch per call, with previous values, turned into the trait's events.
//!
//! A watch never reconnects by itself: etcd-client's stream is one gRPC call, so when the connection is lost the
//! stream ends with [`Error::Unavailable`] and the caller relists, instead of a silent resume that could skip
//! events.

use std::collections::VecDeque;

use etcd_client::{EventType, WatchOptions, WatchResponse, WatchStream};
use futures::stream::{self, BoxStream, StreamExt};

use super::{errors, prefix_end, Endpoint, EtcdStore, Keys};
use crate::{Error, Event, EventKind, KeyValue, Result};

/// The least time a watch is given to start.
const WATCH_START: std::time::Duration = std::time::Duration::from_secs(15);

struct Live {
    /// Holds the request side open too: etcd ends the watch when the client half-closes.
    stream: WatchStream,
    keys: Keys,
    pending: VecDeque<Event>,
    /// The last revision delivered (or the starting point), for a compaction error.
    last: i64,
    /// The compaction record when the watch started, the best known compacted revision.
    recorded: i64,
    done: bool,
}

impl EtcdStore {
    pub(super) async fn watch_prefix(
        &self,
        prefix: &str,
        after_revision: i64,
    ) -> Result<BoxStream<'static, Result<Event>>> {
        // The record as this member has applied it: a watch set up again while etcd is behind must not wait
        // for it to catch up first (etcd itself refuses a start before its own compaction all the same).
        let (_, recorded) = self.read_compacted_as(true).await?;
        if recorded > 0 && after_revision <= recorded {
            return Err(Error::Compacted { requested: after_revision, compacted: recorded });
        }
        let key = self.keys.data(prefix).into_bytes();
        let options = WatchOptions::new()
            .with_range(prefix_end(&key))
            .with_start_revision(after_revision.max(0) + 1)
            .with_prev_key();
        // Wait for etcd to confirm the watch, so a watch that could not be set up fails here. Longer than a
        // request may take: a loaded etcd confirms late, and the caller would only try again (the API server's
        // watch cache, which meanwhile serves nothing newer).
        let deadline = tokio::time::Instant::now() + self.timeout.max(WATCH_START);
        let start = |endpoint: &Endpoint| {
            let (mut client, key, options) = (endpoint.watch.clone(), key.clone(), options.clone());
            tokio::time::timeout_at(deadline, async move {
                let mut stream = client.watch(key, Some(options)).await?;
                let first = stream.message().await?;
                Ok::<_, etcd_client::Error>((stream, first))
            })
        };
        let (stream, first) = self.failover(start, "watch").await?;
        let mut live = Live {
            stream,
            keys: self.keys.clone(),
            pending: VecDeque::new(),
            last: after_revision,
            recorded,
            done: false,
        };
        let first = match first {
            Some(resp) => live.take(resp),
            None => Some(Error::Unavailable("etcd closed the watch stream as it started".into())),
        };
        if let Some(err) = first {
            return Err(err);
        }
        Ok(stream::unfold(live, next).boxed())
    }
}

async fn next(mut l: Live) -> Option<(Result<Event>, Live)> {
    loop {
        if l.done {
            return None;
        }
        if let Some(event) = l.pending.pop_front() {
            l.last = event.revision();
            return Some((Ok(event), l));
        }
        let err = match l.stream.message().await {
            Ok(Some(resp)) => l.take(resp),
            Ok(None) => Some(Error::Unavailable("etcd closed the watch stream".into())),
            Err(e) => Some(match errors::map(e) {
                // Whatever broke the stream (a reset connection often surfaces as a bare HTTP/2 error), the
                // watch is gone and etcd may be fine: the caller should retry, not report a fault.
                Error::Backend(m) => Error::Unavailable(format!("watch stream lost: {m}")),
                other => other,
            }),
        };
        if let Some(err) = err {
            l.done = true;
            return Some((Err(err), l));
        }
    }
}

impl Live {
    /// Queues the response's events; returns the error that ends the watch, if it does.
    fn take(&mut self, resp: WatchResponse) -> Option<Error> {
        if resp.compact_revision() > 0 {
            // The watch fell behind a compaction (or started before one etcd made by itself).
            let compacted = resp.compact_revision().max(self.recorded);
            return Some(Error::Compacted { requested: self.last, compacted });
        }
        if resp.canceled() {
            let reason = resp.cancel_reason();
            return Some(if reason.contains("no leader") {
                Error::Unavailable(format!("etcd canceled the watch: {reason}"))
            } else {
                Error::Backend(format!("etcd canceled the watch: {reason}"))
            });
        }
        for e in resp.events() {
            match event(&self.keys, e) {
                Ok(ev) => self.pending.push_back(ev),
                Err(err) => return Some(err),
            }
        }
        None
    }
}

fn event(keys: &Keys, e: &etcd_client::Event) -> Result<Event> {
    let kv = e.kv().ok_or_else(|| Error::Backend("etcd watch event without a key".into()))?;
    let prev = e.prev_kv().map(|p| keys.kv(p)).transpose()?;
    match e.event_type() {
        EventType::Put => Ok(Event { kind: EventKind::Put, kv: keys.kv(kv)?, prev }),
        EventType::Delete => {
            // etcd's delete event carries only the key and the deletion's revision; the trait's carries the last
            // value, which is the previous one.
            let last = prev.ok_or_else(|| {
                Error::Backend(format!("etcd delete event at {} without the previous value", kv.mod_revision()))
            })?;
            let kv = KeyValue { mod_revision: kv.mod_revision(), ..last.clone() };
            Ok(Event { kind: EventKind::Delete, kv, prev: Some(last) })
        }
    }
}
