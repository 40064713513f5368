//! One watch of a kind for every controller in the process: a store they all read, and a fan-out of the objects
//! it sees change, deleted ones included. Each controller watching VMIs on its own would keep its own copy of
//! every VMI and decode every change again (six watches of 300,000 VMIs in one server).
//!
//! kube-rs' own shared streams hand out references looked up in the store when polled, so a deleted object
//! never reaches its owner's controller; this one hands out the objects themselves.

use futures::{stream, Stream, StreamExt};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::broadcast::{self, error::RecvError};

/// Changes buffered per subscriber before it counts as fallen behind (and is handed every object again): a
/// burst of thousands of VMIs must fit, each entry being one pointer.
const BUFFER: usize = 1 << 16;

#[derive(Clone)]
pub struct Shared<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    tx: broadcast::Sender<Arc<K>>,
}

impl<K> Shared<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    /// The shared watch of every `K` in `api`, and the future that feeds it (poll it with the controllers that
    /// subscribe; subscribe before it first runs to see the initial list).
    pub fn new(api: Api<K>) -> (Self, impl Future<Output = ()> + Send) {
        let (store, writer) = reflector::store();
        let (tx, _) = broadcast::channel(BUFFER);
        let feed_tx = tx.clone();
        let feed =
            watcher(api, watcher::Config::default()).default_backoff().reflect(writer).touched_objects().for_each(
                move |o| {
                    // The store already holds the change when subscribers hear of it. Nobody subscribed: nothing to do.
                    if let Ok(o) = o {
                        let _ = feed_tx.send(Arc::new(o));
                    }
                    std::future::ready(())
                },
            );
        (Shared { store, tx }, feed)
    }

    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// The objects seen changing from now on. A subscriber that fell behind gets every object in the store
    /// again, as after a relist (reconciles are idempotent; a missed change would be lost instead).
    pub fn changes(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let (rx, store) = (self.tx.subscribe(), self.store.clone());
        stream::unfold((rx, store), |(mut rx, store)| async move {
            match rx.recv().await {
                Ok(o) => Some((vec![o], (rx, store))),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!("a controller fell {missed} changes behind; it looks at every object again");
                    let all = store.state();
                    Some((all, (rx, store)))
                }
                Err(RecvError::Closed) => None,
            }
        })
        .flat_map(stream::iter)
    }
}
