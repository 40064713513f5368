//! Watches as kumo's controllers and node agents hold them: a cache of every object of a kind (or of those a
//! selector picks), slimmed of what no controller reads, and the objects to reconcile from it.

use futures::StreamExt;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// A watch cache of every `K`, and the stream of the objects it sees change.
pub fn cache<K>(client: &Client) -> (Store<K>, impl futures::Stream<Item = Result<K, watcher::Error>>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let events = watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(slim)
        .reflect(writer)
        .touched_objects();
    (store, events)
}

/// Drops what no controller reads before an object is cached: its managedFields, which were most of a cached
/// VMI's size (a few entries of field sets per writer, about 13 KiB a VMI).
pub fn slim<K: Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
}

/// A controller of every `K` in `api`, as `Controller::new` makes one, whose cache is [`slim`].
pub fn slim_controller<K>(api: Api<K>, wc: watcher::Config) -> Controller<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    // Backoff, as `Controller::new` has: `settled` yields nothing for an error, so a watch failing at once (the
    // server gone, the runtime shutting down) would otherwise spin without ever yielding.
    let events = reflector::reflector(writer, watcher(api, wc).default_backoff().modify(slim));
    Controller::for_shared_stream(settled(store.clone(), events), store)
}

/// What a controller reconciles from a reflected watch: each change once the store holds it, and every object
/// in the store once a (re)list is whole. kube-rs' `applied_objects` hands out a relist's objects while the
/// store still holds the old list (it swaps the new one in at the end), so an object made while the watch was
/// down was looked up, not found and dropped: never reconciled until it changed again (127 VirtualMachines
/// without a VMI after a relist at 30,000).
pub fn settled<K>(
    store: Store<K>,
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> impl futures::Stream<Item = Arc<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    settled_with(store, events, || {})
}

/// [`settled`], calling `listed` each time a (re)list is whole, before its objects are handed out.
pub fn settled_with<K>(
    store: Store<K>,
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    listed: impl Fn() + Send + 'static,
) -> impl futures::Stream<Item = Arc<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    events
        .map(move |ev| match ev {
            Ok(watcher::Event::Apply(o)) => vec![store.get(&ObjectRef::from_obj(&o)).unwrap_or_else(|| Arc::new(o))],
            Ok(watcher::Event::InitDone) => {
                listed();
                store.state()
            }
            Ok(_) => vec![],
            Err(e) => {
                tracing::debug!("{} watch: {e}", K::kind(&()));
                vec![]
            }
        })
        .flat_map(futures::stream::iter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    fn cm(name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some("ns".into()), ..Default::default() },
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn objects_are_handed_out_once_the_store_holds_them_and_all_again_after_a_relist() {
        use watcher::Event::*;
        let (store, writer) = reflector::store::<ConfigMap>();
        // A first list, a change, then a relist that brings an object made while the watch was down.
        let events = vec![
            Init,
            InitApply(cm("a")),
            InitDone,
            Apply(cm("b")),
            Init,
            InitApply(cm("a")),
            InitApply(cm("b")),
            InitApply(cm("new")),
            InitDone,
        ];
        let reflected = reflector::reflector(writer, futures::stream::iter(events.into_iter().map(Ok)));
        let check = store.clone();
        let seen: Vec<(String, bool)> = settled(store, reflected)
            .map(|o| {
                let name = o.metadata.name.clone().unwrap_or_default();
                // Looked up as the controller's runner does, at the moment it is handed out.
                (name, check.get(&ObjectRef::from_obj(&*o)).is_some())
            })
            .collect()
            .await;
        assert!(seen.iter().all(|(_, held)| *held), "every object handed out is in the store: {seen:?}");
        let mut names: Vec<_> = seen.into_iter().map(|(n, _)| n).collect();
        names.sort();
        assert_eq!(names, ["a", "a", "b", "b", "new"], "the first list, the change, then the whole relist");
    }
}
