//! kumo's controllers. They speak only the Kubernetes API (kube-rs), so they run unchanged inside
//! `kumo server` or as an add-on against a real Kubernetes cluster.
//!
//! Each controller is a pure planning function — `(object, what it owns) → plan` — in its own module
//! ([`vm::plan`], [`vmi::plan`]), plus a thin runtime that fetches, applies the plan through the API and records
//! events ([`runtime`]). Start reading at [`vm`].

pub mod leader;
pub mod nodelifecycle;
pub mod runtime;
pub mod vm;
pub mod vmi;

pub use runtime::run;
