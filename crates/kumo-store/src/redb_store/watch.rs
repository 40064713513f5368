//! Live half of a watch: follows the writer's broadcast after the replay.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::broadcast::{self, error::RecvError};

use super::writer::EventBatch;
use super::Shared;
use crate::{Error, Event, Result};

struct Live {
    rx: broadcast::Receiver<EventBatch>,
    prefix: String,
    /// Events at or below this were replayed (or predate the watch) and are skipped.
    last: i64,
    pending: VecDeque<Event>,
    shared: Arc<Shared>,
    done: bool,
}

/// Chains `replay` with live events newer than `replayed_to` for keys under `prefix`. `rx` must have been
/// subscribed before the replay snapshot was taken, so nothing falls between the two.
pub(crate) fn stream(
    replay: Vec<Event>,
    replayed_to: i64,
    rx: broadcast::Receiver<EventBatch>,
    prefix: String,
    shared: Arc<Shared>,
) -> BoxStream<'static, Result<Event>> {
    let live = Live { rx, prefix, last: replayed_to, pending: VecDeque::new(), shared, done: false };
    let live = stream::unfold(live, |mut l| async move {
        loop {
            if l.done {
                return None;
            }
            if let Some(event) = l.pending.pop_front() {
                l.last = event.revision();
                return Some((Ok(event), l));
            }
            match l.rx.recv().await {
                Ok(batch) => {
                    let fresh = batch.iter().filter(|e| e.revision() > l.last && e.kv.key.starts_with(&l.prefix));
                    l.pending.extend(fresh.cloned());
                }
                Err(RecvError::Lagged(_)) => {
                    // Missed events cannot be recovered from the channel; the consumer must relist, so report
                    // everything up to the current revision as gone.
                    l.done = true;
                    let compacted = l.shared.revision.load(Ordering::SeqCst);
                    return Some((Err(Error::Compacted { requested: l.last, compacted }), l));
                }
                // The store was dropped.
                Err(RecvError::Closed) => return None,
            }
        }
    });
    stream::iter(replay.into_iter().map(Ok)).chain(live).boxed()
}
