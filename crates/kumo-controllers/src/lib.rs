//! kumo's controllers. They speak only the Kubernetes API (kube-rs), so they run unchanged inside
//! `kumo server` or as an add-on against a real Kubernetes cluster.
//!
//! Each controller is a pure planning function — `(object, what it owns) → plan` — in its own module
//! ([`vm::plan`], [`vmi::plan`] with [`sched::schedule`]), plus a thin runtime that fetches, applies the plan
//! through the API and records events ([`runtime`]). Start reading at [`vm`].

pub mod leader;
pub mod nodelifecycle;
pub mod runtime;
pub mod sched;
pub mod vm;
pub mod vmi;

/// What the controllers need to know about the cluster.
#[derive(Clone, Debug, Default)]
pub struct Config {
    pub scheduler: sched::Config,
}

/// Runs every controller until the process ends.
pub async fn run(client: kube::Client, cfg: Config) -> anyhow::Result<()> {
    runtime::run(client, cfg.scheduler).await
}
