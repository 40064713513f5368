//! Running the controllers with kube-rs: watch, fetch what a plan needs, apply the plan through the API,
//! record events. All decisions live in [`crate::vm`], [`crate::vmi`] and [`crate::sched`].
//!
//! The scheduler reads nodes, VMIs and namespaces from watch caches. Its caches may lag, and other schedulers
//! may run (two `kumo controllers`, or two replicas during a leader change), so each VMI status write is a
//! compare-and-swap on the resourceVersion the plan was made from: a 409 means someone acted first, and the
//! VMI is read again and planned again. Within this process, choices are made one at a time, and each binding
//! counts (as "assumed", like kube-scheduler's) until the cache shows it.

use crate::reflect::{cache, slim_controller};
use crate::sched::{self, Cluster};
use crate::shared::Update;
use crate::{vm, vmi};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, ObjectReference, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KEvent, EventType, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use kumo_api::cdi::DataVolume;
use kumo_api::kubevirt::{VirtualMachine, VirtualMachineInstance, NODE_NAME_LABEL};
use kumo_events::Recorder;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("encoding: {0}")]
    Json(#[from] serde_json::Error),
    #[error("watch cache: {0}")]
    Cache(#[from] reflector::store::WriterDropped),
}

pub struct Ctx {
    client: Client,
    recorder: Recorder,
    sched: sched::Config,
    vmis: Store<VirtualMachineInstance>,
    /// Whether `vmis` holds a whole list (see [`crate::shared::Shared::synced`]).
    vmis_synced: tokio::sync::watch::Receiver<bool>,
    nodes: Store<Node>,
    namespaces: Store<Namespace>,
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    classes: Store<StorageClass>,
    /// What is placed where, with the bindings this process made that the VMI cache has not shown yet. Held
    /// while choosing a node and binding, so this process's choices see each other.
    placed: tokio::sync::Mutex<sched::Placed>,
    /// VMIs that fit nowhere when last planned: what a Node, Namespace or storage change may let in.
    unschedulable: Unschedulable,
    /// VMIs the VM controller created that the cache may not show yet, by namespace/name, with when.
    made: std::sync::Mutex<crate::swept::Swept<(String, String), std::time::Instant>>,
    /// VM and VMI versions this process wrote that the cache may not show yet.
    written: crate::shared::Written,
}

/// How long a VMI the VM controller created may stay out of the cache before it is taken as never made.
const MADE_TTL: Duration = Duration::from_secs(30);

impl Ctx {
    /// Notes that the VM `ns/name` has its VMI in the store (see [`Ctx::awaiting_vmi`]).
    fn note_made(&self, ns: &str, name: &str) {
        let mut made = self.made.lock().expect("made lock");
        made.sweep(|_, at| at.elapsed() < MADE_TTL);
        made.insert((ns.to_string(), name.to_string()), std::time::Instant::now());
    }

    /// Whether the VM `ns/name` made a VMI the cache does not show yet (`seen`: whether it shows one now).
    /// Creating it again would only be refused (409): under load the cache lags, and every VM reconciled in
    /// that lag asked again each second.
    fn awaiting_vmi(&self, ns: &str, name: &str, seen: bool) -> bool {
        let mut made = self.made.lock().expect("made lock");
        let key = (ns.to_string(), name.to_string());
        match made.get(&key) {
            Some(at) if !seen && at.elapsed() < MADE_TTL => true,
            Some(_) => {
                made.remove(&key);
                false
            }
            None => false,
        }
    }
}

/// The VMIs a change elsewhere may let in, as kube-scheduler's unschedulable queue. Only these are looked at
/// again on such a change: mapping every Node change (a thousand a second in a large cluster, ten thousand at
/// a relist) to every pending VMI stalled the scheduler.
type Unschedulable = Arc<std::sync::Mutex<std::collections::HashSet<ObjectRef<VirtualMachineInstance>>>>;

use kumo_api::meta::now_rfc3339 as now;

/// How often a VMI that fits nowhere is looked at again (also whenever a Node or Namespace changes).
const UNSCHEDULABLE_RETRY: Duration = Duration::from_secs(5);
/// Conflicts (409) in a row before giving the VMI back to the queue.
const CONFLICT_RETRIES: usize = 5;

/// Runs the VM and VMI controllers until the process ends.
pub async fn run(
    client: Client,
    sched: sched::Config,
    shared: crate::shared::Shared<VirtualMachineInstance>,
) -> anyhow::Result<()> {
    let reporter = Reporter { controller: "kumo-controllers".into(), instance: std::env::var("HOSTNAME").ok() };
    let vms = Api::<VirtualMachine>::all(client.clone());
    let (nodes, node_events) = cache::<Node>(&client);
    let (namespaces, ns_events) = cache::<Namespace>(&client);
    // Claims and volumes: a claim bound (or a volume made) may let a VMI waiting for it be placed.
    let (claims, claim_events) = cache::<PersistentVolumeClaim>(&client);
    let (volumes, volume_events) = cache::<PersistentVolume>(&client);
    let (classes, class_events) = cache::<StorageClass>(&client);
    let vmi_store = shared.store();
    let unschedulable = Unschedulable::default();
    // Two queues over the same VMIs, as kube-scheduler watches only unscheduled pods: VMIs that want a node
    // (the scheduler), and the rest (their lifecycle). A new VMI must not wait behind the status changes of
    // thousands just started. Choices are serialized by `placed` anyway: a few placements at a time, so a
    // burst of ten thousand VMIs queues in the controller (their deadlines not yet running) instead of piling
    // up on the lock.
    let wanting = |want: bool| shared.changes().filter(move |v| std::future::ready(vmi::wants_node(v) == want));
    let vmi_controller =
        Controller::for_shared_stream(wanting(true), vmi_store.clone()).with_config(concurrency(SCHEDULER_CONCURRENCY));
    let lifecycle_controller =
        Controller::for_shared_stream(wanting(false), vmi_store.clone()).with_config(concurrency(CONCURRENCY));
    // Said once the scheduler sees the cluster (tests wait for it before racing schedulers).
    let synced = {
        let (nodes, vmis, vmis_synced) = (nodes.clone(), vmi_store.clone(), shared.synced_signal());
        async move {
            crate::shared::wait_synced(vmis_synced).await;
            if crate::shared::store_ready(&nodes).await.is_ok() {
                tracing::info!("scheduler caches synced: {} nodes, {} VMIs", nodes.len(), vmis.len());
            }
        }
    };
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        sched: sched.clone(),
        vmis: vmi_store.clone(),
        vmis_synced: shared.synced_signal(),
        nodes,
        namespaces,
        claims,
        volumes,
        classes,
        placed: tokio::sync::Mutex::new(sched::Placed::new(sched.clone())),
        unschedulable: unschedulable.clone(),
        made: std::sync::Mutex::new(crate::swept::Swept::new(1024)),
        written: Default::default(),
    });
    let placed_feed = feed_placed(ctx.clone(), &shared);
    let vm_controller = slim_controller(vms, watcher::Config::default())
        .with_config(concurrency(CONCURRENCY))
        .owns_shared_stream(shared.changes())
        .run(|vm, ctx| async move { bounded(&*vm.clone(), reconcile_vm(vm, ctx)).await }, error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!("vm controller: {e}");
            }
        });
    let vmi_controller = vmi_controller
        .watches_stream(node_events, waiting(vmi_store.clone(), unschedulable.clone()))
        .watches_stream(ns_events, waiting(vmi_store.clone(), unschedulable.clone()))
        .watches_stream(claim_events, waiting(vmi_store.clone(), unschedulable.clone()))
        .watches_stream(volume_events, waiting(vmi_store.clone(), unschedulable.clone()))
        .watches_stream(class_events, waiting(vmi_store.clone(), unschedulable.clone()))
        .reconcile_on(unplaced(vmi_store, unschedulable))
        .run(
            |vmi, ctx| async move { bounded(&*vmi.clone(), reconcile_vmi(vmi, ctx, Queue::Scheduler)).await },
            error_policy,
            ctx.clone(),
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!("vmi controller: {e}");
            }
        });
    // Started once the VMI cache is whole: a controller's runner waits for its store with kube-rs'
    // `Store::wait_until_ready`, which wakes only the last of several waiters, and the scheduler's runner above
    // already waits on this store (two runners waiting at once left one asleep for good).
    let lifecycle_synced = shared.synced_signal();
    let lifecycle_controller = async move {
        crate::shared::wait_synced(lifecycle_synced).await;
        lifecycle_controller
            .run(
                |vmi, ctx| async move { bounded(&*vmi.clone(), reconcile_vmi(vmi, ctx, Queue::Lifecycle)).await },
                error_policy,
                ctx,
            )
            .for_each(|r| async move {
                if let Err(e) = r {
                    tracing::debug!("vmi lifecycle controller: {e}");
                }
            })
            .await
    };
    // Each its own task: the scheduler's placements must not hold up the lifecycle of VMIs already placed.
    let mut tasks = crate::tasks::Tasks::default();
    tasks.spawn_unit(vm_controller);
    tasks.spawn_unit(vmi_controller);
    tasks.spawn_unit(lifecycle_controller);
    tasks.spawn_unit(synced);
    tasks.spawn_unit(placed_feed);
    tasks.join().await
}

/// Changes taken into `ctx.placed` under one hold of its lock.
const PLACED_BATCH: usize = 4096;

/// Keeps `ctx.placed` current with each VMI change: the newest state in the cache, or gone. The changes that
/// have arrived go in together: taking the lock once per change, in line behind every placement waiting for
/// it (each about a millisecond among 10,000 nodes), it fell behind hundreds of changes a second, and bindings
/// it had not taken in yet sent the scheduler to read their VMIs again and again.
fn feed_placed(
    ctx: Arc<Ctx>,
    shared: &crate::shared::Shared<VirtualMachineInstance>,
) -> impl std::future::Future<Output = ()> {
    shared.updates().ready_chunks(PLACED_BATCH).for_each(move |updates| {
        let ctx = ctx.clone();
        async move {
            let mut placed = ctx.placed.lock().await;
            for update in updates {
                match update {
                    Update::Changed(o) => match newest(&ctx.vmis, &o) {
                        Some(current) => placed.set(current),
                        None => placed.remove(&sched::placed_key(&o)),
                    },
                    Update::Relist => placed.relist(ctx.vmis.state()),
                }
            }
        }
    })
}

/// The cache's state of `vmi` (None: it is gone, or its name now belongs to another VMI).
fn newest(cache: &Store<VirtualMachineInstance>, vmi: &VirtualMachineInstance) -> Option<Arc<VirtualMachineInstance>> {
    cache.get(&ObjectRef::from_obj(vmi)).filter(|c| c.metadata.uid == vmi.metadata.uid)
}

/// A Node, Namespace or storage change may make room (or a match) for the VMIs that fit nowhere: look at those
/// again. VMIs gone or placed meanwhile leave the set here.
fn waiting<T>(
    vmis: Store<VirtualMachineInstance>,
    unschedulable: Unschedulable,
) -> impl Fn(T) -> Vec<ObjectRef<VirtualMachineInstance>> {
    move |_| {
        let mut set = unschedulable.lock().expect("unschedulable lock");
        set.retain(|r| vmis.get(r).is_some_and(|v| vmi::wants_node(&v)));
        set.iter().cloned().collect()
    }
}

/// How often VMIs still wanting a node that the scheduler has not marked unschedulable are queued again.
const UNPLACED_RESYNC: Duration = Duration::from_secs(10);

/// VMIs that want a node, were made over [`UNPLACED_RESYNC`] ago and are not known to fit nowhere, queued again
/// each period, as kube-scheduler flushes pods left in its queues: a change that never reached the scheduler's
/// queue must not leave its VMI without a phase for good. Said in the log when it finds any.
fn unplaced(
    vmis: Store<VirtualMachineInstance>,
    unschedulable: Unschedulable,
) -> impl futures::Stream<Item = ObjectRef<VirtualMachineInstance>> {
    futures::stream::unfold((), move |()| {
        let (vmis, unschedulable) = (vmis.clone(), unschedulable.clone());
        async move {
            tokio::time::sleep(UNPLACED_RESYNC).await;
            let now = k8s_openapi::jiff::Timestamp::now();
            let old = |v: &VirtualMachineInstance| {
                let made = v.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or(now);
                now.duration_since(made).as_secs() >= UNPLACED_RESYNC.as_secs() as i64
            };
            let waiting = unschedulable.lock().expect("unschedulable lock").clone();
            let all = vmis.state();
            tracing::debug!(cached = all.len(), unschedulable = waiting.len(), "scheduler resync");
            let stale: Vec<_> = all
                .into_iter()
                .filter(|v| vmi::wants_node(v) && old(v))
                .map(|v| ObjectRef::from_obj(&*v))
                .filter(|r| !waiting.contains(r))
                .collect();
            if !stale.is_empty() {
                // Info, not a warning: during a burst most of them are simply still in the scheduler's queue.
                tracing::info!(
                    count = stale.len(),
                    "VMIs waiting over 10s for a node (a backlog, or a missed change): queued again"
                );
            }
            Some((futures::stream::iter(stale), ()))
        }
    })
    .flatten()
}

/// Reconciles a controller runs at once, as kube-controller-manager's workers per controller: unbounded, a
/// burst of changes (a relist, thousands of VMIs created) starts them all at once and none finishes in time.
pub const CONCURRENCY: u16 = 16;
/// The scheduler's. Placements take a lock in turn, but only for the choice (about a millisecond among
/// 10,000 nodes); the writes after it (status, label, event) are round trips of their own. With 4 at a time a
/// large cluster placed ~40 VMIs a second, every one of them waiting on requests, whatever the CPU left.
const SCHEDULER_CONCURRENCY: u16 = 16;

pub fn concurrency(n: u16) -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(n)
}

/// How long one reconcile may take before it is abandoned and the object queued again.
const RECONCILE_DEADLINE: Duration = Duration::from_secs(30);

/// Runs `reconcile` for `obj` with a deadline. A reconcile waiting on something that never answers would hold
/// its object forever (and the scheduler's, every VMI behind its lock); reconciles are idempotent, so one cut
/// short is simply done again. Said in the log, since it should not happen.
pub async fn bounded<K, E>(
    obj: &K,
    reconcile: impl std::future::Future<Output = Result<Action, E>>,
) -> Result<Action, E>
where
    K: Resource<DynamicType = ()>,
{
    match tokio::time::timeout(RECONCILE_DEADLINE, reconcile).await {
        Ok(r) => r,
        Err(_) => {
            let what = ObjectRef::from_obj(obj);
            tracing::warn!("reconciling {what} took over {RECONCILE_DEADLINE:?}: abandoned, trying again");
            Ok(Action::requeue(Duration::from_secs(1)))
        }
    }
}

fn error_policy<K>(_obj: Arc<K>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!("reconcile failed: {err}");
    Action::requeue(Duration::from_secs(2))
}

async fn publish(ctx: &Ctx, reference: &ObjectReference, events: &[vm::Event]) {
    for e in events {
        let ev = KEvent {
            type_: if e.warning { EventType::Warning } else { EventType::Normal },
            reason: e.reason.into(),
            note: Some(e.note.clone()),
            action: e.reason.into(),
            secondary: None,
        };
        if let Err(err) = ctx.recorder.publish(&ev, reference).await {
            tracing::warn!("recording event {}: {err}", e.reason);
        }
    }
}

/// The widest batch [`slow_start`] sends at once.
const SLOW_START_MAX: usize = 32;

/// Runs `make` on the items in batches of 1, 2, 4, … (at most 32) at a time, each batch concurrently, as
/// Kubernetes' controllers create replicas: a burst the server refuses stops after a small batch, and one it
/// takes is sent many at a time rather than one round trip after another. Stops after the first batch with an
/// error; the results are in item order, the untried items have none.
pub(crate) async fn slow_start<'a, T, R, E, F, Fut>(items: &'a [T], make: F) -> Vec<Result<R, E>>
where
    F: Fn(&'a T) -> Fut,
    Fut: std::future::Future<Output = Result<R, E>>,
{
    let mut out = Vec::with_capacity(items.len());
    let (mut rest, mut size) = (items, 1);
    while !rest.is_empty() {
        let (batch, tail) = rest.split_at(size.min(rest.len()));
        let results = futures::future::join_all(batch.iter().map(&make)).await;
        let failed = results.iter().any(Result::is_err);
        out.extend(results);
        if failed {
            break;
        }
        rest = tail;
        size = (size * 2).min(SLOW_START_MAX);
    }
    out
}

/// Records an event about `obj` (a failure to record is logged: an event is never worth failing the work for).
pub(crate) async fn record<K: Resource<DynamicType = ()>>(
    recorder: &Recorder,
    obj: &K,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = KEvent { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
    if let Err(e) = recorder.publish(&ev, &obj.object_ref(&())).await {
        tracing::warn!("recording event {reason}: {e}");
    }
}

pub(crate) fn not_found_or_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(a) if a.code == 404 || a.code == 409)
}

/// Merge-patches `status` from `old` to `new`, nulling keys that disappeared (a merge patch only removes what
/// it names). With `resource_version`, the write is a compare-and-swap: 409 if the object changed since.
/// Returns the object written, or None when there was nothing to write.
pub(crate) async fn patch_status<K, S>(
    api: &Api<K>,
    name: &str,
    old: Option<&S>,
    new: &S,
    resource_version: Option<&str>,
) -> Result<Option<K>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let old = old.map(serde_json::to_value).transpose().map_err(kube::Error::SerdeError)?.unwrap_or(json!({}));
    let mut patch = serde_json::to_value(new).map_err(kube::Error::SerdeError)?;
    if old == patch {
        return Ok(None);
    }
    if let (Some(o), Some(p)) = (old.as_object(), patch.as_object_mut()) {
        for k in o.keys() {
            p.entry(k.clone()).or_insert(Value::Null);
        }
    }
    let mut body = json!({"status": patch});
    if let Some(rv) = resource_version {
        body["metadata"] = json!({"resourceVersion": rv});
    }
    Ok(Some(api.patch_status(name, &PatchParams::default(), &Patch::Merge(body)).await?))
}

async fn reconcile_vm(vm_obj: Arc<VirtualMachine>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    // Woken (by its VMI) while its own status write was on the way: planned from the older status, it would
    // write that status and its events again. The write's event wakes it.
    if ctx.written.is_stale(&vm_obj.metadata) {
        return Ok(Action::await_change());
    }
    let ns = vm_obj.namespace().unwrap_or_default();
    let name = vm_obj.name_any();
    let vms = Api::<VirtualMachine>::namespaced(ctx.client.clone(), &ns);
    let vmis = Api::<VirtualMachineInstance>::namespaced(ctx.client.clone(), &ns);
    // From the shared cache, not a read per reconcile (one for each VM change, most of the server's reads at
    // scale). A cache behind the store is safe here: a create of a VMI that exists is refused (409, same name),
    // a delete is conditional on the uid, and the VMI's next change reconciles the VM again.
    crate::shared::wait_synced(ctx.vmis_synced.clone()).await;
    let vmi = ctx.vmis.get(&ObjectRef::new(&name).within(&ns));
    if ctx.awaiting_vmi(&ns, &name, vmi.is_some()) {
        // Its change in the cache reconciles the VM again; this is for a create that never shows.
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let dvs = Api::<DataVolume>::namespaced(ctx.client.clone(), &ns);
    let mut existing = std::collections::HashSet::new();
    for t in vm_obj.spec.data_volume_templates.iter().flatten() {
        let Some(n) = t.metadata.as_ref().and_then(|m| m.name.clone()) else { continue };
        if dvs.get_opt(&n).await?.is_some() {
            existing.insert(n);
        }
    }
    for dv in vm::missing_data_volumes(&vm_obj, |n| existing.contains(n)) {
        match dvs.create(&PostParams::default(), &dv).await {
            Ok(_) => tracing::info!(vm = %name, datavolume = %dv.name_any(), "created the VM's DataVolume"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    // The VMI is made from the template as the VM's pinned flavor expands it.
    let flavored = if vm_obj.spec.instancetype.is_some() || vm_obj.spec.preference.is_some() {
        match crate::flavor::resolve(&ctx.client, &vm_obj).await? {
            crate::flavor::Resolved::Ready(vm) => vm,
            crate::flavor::Resolved::Pinned => return Ok(Action::requeue(Duration::from_millis(200))),
            crate::flavor::Resolved::Missing(why) => {
                let ev = vm::Event { warning: true, reason: "FailedCreate", note: format!("Cannot start: {why}") };
                publish(&ctx, &vm_obj.object_ref(&()), &[ev]).await;
                return Ok(Action::requeue(Duration::from_secs(10)));
            }
        }
    } else {
        Box::new((*vm_obj).clone())
    };
    let plan = vm::plan(&flavored, vmi.as_deref(), &now());
    for action in &plan.actions {
        match action {
            vm::Action::CreateVmi(obj) => match vmis.create(&PostParams::default(), obj).await {
                Ok(_) => ctx.note_made(&ns, &name),
                // It exists: made by an earlier reconcile that the cache does not show yet. Wait for it as for
                // one just made; this plan, from a view without it, has no event or status worth writing (a
                // lagging cache had VMs "create" theirs again every second, each a SuccessfulCreate).
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    ctx.note_made(&ns, &name);
                    return Ok(Action::requeue(Duration::from_secs(5)));
                }
                Err(e) => return Err(e.into()),
            },
            vm::Action::DeleteVmi { uid } => {
                let dp = DeleteParams {
                    preconditions: Some(Preconditions { uid: Some(uid.clone()), resource_version: None }),
                    ..Default::default()
                };
                match vmis.delete(&name, &dp).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    publish(&ctx, &vm_obj.object_ref(&()), &plan.events).await;
    if vm_obj.meta().deletion_timestamp.is_none() {
        if let Some(written) = patch_status(&vms, &name, vm_obj.status.as_ref(), &plan.status, None).await? {
            ctx.written.wrote(&written.metadata);
        }
    }
    // Act again soon after changing something, so e.g. a replaced VMI is recreated once the old one is gone;
    // when a crash-loop backoff ends; otherwise now and then.
    Ok(match plan.requeue_after {
        _ if !plan.actions.is_empty() => Action::requeue(Duration::from_secs(1)),
        Some(after) => Action::requeue(after),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

/// Which of the two VMI queues a reconcile runs for.
#[derive(Clone, Copy, PartialEq)]
enum Queue {
    /// VMIs that want a node; one placed leaves it for good.
    Scheduler,
    /// The rest, looked at again every few minutes too.
    Lifecycle,
}

async fn reconcile_vmi(vmi_obj: Arc<VirtualMachineInstance>, ctx: Arc<Ctx>, queue: Queue) -> Result<Action, Error> {
    let api = Api::<VirtualMachineInstance>::namespaced(ctx.client.clone(), &vmi_obj.namespace().unwrap_or_default());
    // Woken by a change while its own last write was on the way: that write's event wakes it again.
    if ctx.written.is_stale(&vmi_obj.metadata) {
        return Ok(Action::await_change());
    }
    let mut current = vmi_obj;
    for _ in 0..CONFLICT_RETRIES {
        match apply_vmi_plan(&ctx, &api, &current, queue).await? {
            Some(action) => return Ok(action),
            // Someone wrote the VMI since it was read (another scheduler, the agent): read it and plan again.
            None => match api.get_opt(&current.name_any()).await? {
                Some(fresh) if fresh.uid() == current.uid() => current = Arc::new(fresh),
                _ => return Ok(Action::await_change()),
            },
        }
    }
    Ok(Action::requeue(Duration::from_secs(1)))
}

fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Plans `vmi` and writes the plan: Some(next action), or None when a write met a newer version (409).
async fn apply_vmi_plan(
    ctx: &Ctx,
    api: &Api<VirtualMachineInstance>,
    vmi: &Arc<VirtualMachineInstance>,
    queue: Queue,
) -> Result<Option<Action>, Error> {
    let key = sched::placed_key(vmi);
    let plan = if vmi::wants_node(vmi) {
        crate::shared::store_ready(&ctx.nodes).await?;
        crate::shared::store_ready(&ctx.namespaces).await?;
        crate::shared::store_ready(&ctx.claims).await?;
        crate::shared::store_ready(&ctx.volumes).await?;
        crate::shared::store_ready(&ctx.classes).await?;
        crate::shared::wait_synced(ctx.vmis_synced.clone()).await;
        let (nodes, namespaces) = (ctx.nodes.state(), ctx.namespaces.state());
        let (mut claims, mut volumes, classes) = (ctx.claims.state(), ctx.volumes.state(), ctx.classes.state());
        // The VMI's own claims and their volumes, read afresh: a claim bound or a volume made since the caches
        // last heard of it must not keep the VMI waiting (they have been seen lagging after a restart).
        let ns = vmi.metadata.namespace.clone().unwrap_or_default();
        let names: Vec<String> = vmi.claim_names().map(str::to_string).collect();
        for name in &names {
            let Some(claim) = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns).get_opt(name).await?
            else {
                continue;
            };
            let bound = crate::binder::volume_name(&claim).to_string();
            claims.retain(|c| !(c.metadata.namespace.as_deref() == Some(ns.as_str()) && c.name_any() == *name));
            claims.push(Arc::new(claim));
            if bound.is_empty() {
                continue;
            }
            if let Some(pv) = Api::<PersistentVolume>::all(ctx.client.clone()).get_opt(&bound).await? {
                volumes.retain(|v| v.metadata.name.as_deref() != Some(bound.as_str()));
                volumes.push(Arc::new(pv));
            }
        }
        // Held from the choice to the assumption, and never across a request.
        let mut placed = ctx.placed.lock().await;
        if placed.is_assumed(&key, || newest(&ctx.vmis, vmi)) {
            // Bound by this process already; the cache is behind. Read it instead of choosing again.
            return Ok(None);
        }
        if !placed.synced() {
            placed.relist(ctx.vmis.state());
        }
        let cluster = Cluster {
            nodes: nodes.iter().map(AsRef::as_ref).collect(),
            placed: Some(&placed),
            namespaces: namespaces.iter().map(|n| (n.name_any(), n.labels().clone())).collect(),
            config: ctx.sched.clone(),
            tiebreak: rand::random(),
            claims: claims.iter().map(AsRef::as_ref).collect(),
            volumes: volumes.iter().map(AsRef::as_ref).collect(),
            classes: classes.iter().map(AsRef::as_ref).collect(),
        };
        let plan = vmi::plan(vmi, &cluster, &now());
        let mut waiting = ctx.unschedulable.lock().expect("unschedulable lock");
        if plan.retry {
            waiting.insert(ObjectRef::from_obj(&**vmi));
        } else {
            waiting.remove(&ObjectRef::from_obj(&**vmi));
        }
        drop(waiting);
        // Counted from now on by this process's later choices; forgotten again if the write fails, or when the
        // watch has not shown it after a while (a write that never finished: cancelled at its deadline).
        if let Some(st) = plan.status.as_ref().filter(|s| s.node_name.is_some()) {
            let mut bound = (**vmi).clone();
            bound.status = Some(st.clone());
            placed.assume(Arc::new(bound));
        }
        plan
    } else {
        vmi::plan(vmi, &Cluster::default(), &now())
    };
    if let Some((node, names)) = &plan.select_node {
        select_node(ctx, vmi, node, names).await?;
    }
    let mut latest = vmi.clone();
    if let Some(status) = &plan.status {
        let rv = vmi.resource_version();
        match patch_status(api, &vmi.name_any(), vmi.status.as_ref(), status, rv.as_deref()).await {
            Ok(written) => {
                match &written {
                    Some(w) if plan.label.is_some() => ctx.written.wrote_more_to_come(&w.metadata),
                    Some(w) => ctx.written.wrote(&w.metadata),
                    None => {}
                }
                latest = written.map(Arc::new).unwrap_or(latest)
            }
            Err(e) => {
                ctx.placed.lock().await.forget(&key, newest(&ctx.vmis, vmi));
                return match code(&e) {
                    Some(409) => Ok(None),
                    Some(404) => Ok(Some(Action::await_change())),
                    _ => Err(e.into()),
                };
            }
        }
    }
    let mut label_failed = None;
    if let Some(change) = &plan.label {
        // A compare-and-swap as well: the label must follow the status of the very object it was planned from
        // (not, say, a newer VMI of the same name).
        let value = match change {
            vmi::LabelChange::Set(node) => json!(node),
            vmi::LabelChange::Remove => Value::Null,
        };
        let patch =
            json!({"metadata": {"resourceVersion": latest.resource_version(), "labels": {NODE_NAME_LABEL: value}}});
        match api.patch(&latest.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
            Ok(labelled) => ctx.written.wrote(&labelled.metadata),
            Err(e) => {
                ctx.written.withdraw(&latest.metadata);
                label_failed = Some(e);
            }
        }
    }
    // After the writes: an event should describe what was written, and only the writer tells. After the label
    // too: the agent (watching by the label) starts the guest while these are written.
    publish(ctx, &vmi.object_ref(&()), &plan.events).await;
    if let Some(e) = label_failed {
        return match code(&e) {
            Some(409) => Ok(None),
            Some(404) => Ok(Some(Action::await_change())),
            _ => Err(e.into()),
        };
    }
    Ok(Some(match queue {
        _ if plan.retry => Action::requeue(UNSCHEDULABLE_RETRY),
        // Placed (or no longer wanting a node): the lifecycle queue has it now. Asking to come back in five
        // minutes here as well kept every VMI in both queues for good (a thousand idle reconciles a second at
        // 150,000 VMIs).
        Queue::Scheduler => Action::await_change(),
        Queue::Lifecycle => Action::requeue(Duration::from_secs(300)),
    }))
}

/// Tells the provisioner of each claim in `names` (the VMI's, waiting for their first consumer) to make its
/// volume on `node`, unless a node was selected for it meanwhile.
async fn select_node(ctx: &Ctx, vmi: &VirtualMachineInstance, node: &str, names: &[String]) -> Result<(), Error> {
    let api = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &vmi.namespace().unwrap_or_default());
    for name in names {
        let Some(claim) = api.get_opt(name).await? else { continue };
        if claim.annotations().contains_key(crate::binder::SELECTED_NODE) {
            continue;
        }
        let patch = json!({"metadata": {"resourceVersion": claim.resource_version(),
                                        "annotations": {crate::binder::SELECTED_NODE: node}}});
        match api.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await {
            Ok(_) => tracing::info!(claim = %name, node, "selected the node for a claim's first consumer"),
            // Changed meanwhile: the next pass sees it.
            Err(e) if matches!(code(&e), Some(409 | 404)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod slow_start_tests {
    use super::slow_start;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn batches_double_and_stop_at_the_first_failing_one() {
        let items: Vec<usize> = (0..100).collect();
        let (live, peak) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let all = slow_start(&items, |i| {
            let (live, peak) = (&live, &peak);
            async move {
                peak.fetch_max(live.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                tokio::task::yield_now().await;
                live.fetch_sub(1, Ordering::SeqCst);
                Ok::<usize, ()>(*i)
            }
        })
        .await;
        assert_eq!(all.into_iter().map(Result::unwrap).collect::<Vec<_>>(), items, "all made, in order");
        assert_eq!(peak.load(Ordering::SeqCst), 32, "at most 32 at once, and that many");
        // Item 5 fails: batches 1 (0), 2 (1-2), 4 (3-6); nothing after the failing batch is tried.
        let tried = slow_start(&items, |i| {
            let i = *i;
            async move {
                if i == 5 {
                    Err(())
                } else {
                    Ok(i)
                }
            }
        })
        .await;
        assert_eq!(tried.len(), 7);
        assert!(tried[5].is_err() && tried[6].is_ok());
    }
}
