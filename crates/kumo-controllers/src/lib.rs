//! kumo's controllers. They speak only the Kubernetes API (kube-rs), so they run unchanged inside
//! `kumo server` or as an add-on against a real Kubernetes cluster.
//!
//! Each controller is a pure planning function — `(object, what it owns) → plan` — in its own module
//! ([`vm::plan`], [`vmi::plan`] with [`sched::schedule`], [`nodeipam::plan`], [`nodelifecycle::plan`],
//! [`protection::release_claim`], [`binder::plan_claim`], [`provisioner::plan`], [`replicaset::plan`], [`pool::plan`]), plus a
//! thin runtime that fetches, applies the plan through the API and records events ([`runtime`],
//! [`nodeipam::run`], [`nodelifecycle::run`]). Start reading at [`vm`].

mod adopt;
pub mod binder;
pub mod datavolume;
pub mod flavor;
pub mod leader;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod pool;
pub mod protection;
pub mod provisioner;
pub use kumo_reflect as reflect;
pub mod replicaset;
pub mod resizer;
pub mod runtime;
pub mod sched;
pub mod shared;
pub mod snapshot;
pub mod swept;
pub mod tasks;
pub mod throttle;
pub mod vm;
pub mod vmi;

/// What the controllers need to know about the cluster.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Where Nodes' pod CIDRs come from.
    pub pod_network: nodeipam::Config,
    /// When silent nodes become unreachable and their VMIs fail over.
    pub lifecycle: nodelifecycle::Config,
    pub scheduler: sched::Config,
}

/// Runs every controller until the process ends, each as a task of its own (see [`tasks`]).
pub async fn run(client: kube::Client, cfg: Config) -> anyhow::Result<()> {
    // Every VMI once, for the scheduler and all that own or follow VMIs.
    let (vmis, feed) = shared::Shared::new(kube::Api::all(client.clone()));
    let mut tasks = tasks::Tasks::default();
    tasks.spawn(runtime::run(client.clone(), cfg.scheduler, vmis.clone()));
    tasks.spawn_unit(nodeipam::run(client.clone(), cfg.pod_network));
    tasks.spawn(nodelifecycle::run(client.clone(), cfg.lifecycle, vmis.clone()));
    tasks.spawn_unit(protection::run(client.clone(), vmis.clone()));
    tasks.spawn_unit(binder::run(client.clone(), vmis.clone()));
    tasks.spawn_unit(provisioner::run(client.clone()));
    tasks.spawn_unit(datavolume::run(client.clone()));
    tasks.spawn_unit(resizer::run(client.clone()));
    tasks.spawn_unit(replicaset::run(client.clone(), vmis.clone()));
    tasks.spawn_unit(pool::run(client.clone(), vmis.clone()));
    tasks.spawn_unit(snapshot::run(client));
    tasks.spawn_unit(feed);
    tasks.join().await
}
