//! kumo's Kubernetes-compatible API server.
//!
//! A request flows: [`server`] (TLS, HTTP/1.1 and HTTP/2, bearer-token auth) → [`handlers::dispatch`] (path →
//! [`request::Target`]) → discovery/OpenAPI documents, or a verb handler working on [`objects::Objects`] (the
//! store) and [`watch_cache::WatchCache`] (watches). Kinds come from [`registry::Registry`]; nothing in the
//! handlers is specific to one kind except the small admission hooks in `handlers/admission.rs`.
//! Background loops that act like Kubernetes' controller-manager for built-in semantics (garbage collection by
//! ownerReferences, namespace deletion, CRD establishment, compaction) live in [`gc`].

pub mod console;
pub mod discovery;
pub mod gc;
pub mod handlers;
pub mod kubevirt;
pub mod objects;
pub mod openapi;
pub mod registry;
pub mod request;
pub mod response;
pub mod server;
pub mod tls;
pub mod watch_cache;

pub use server::{run, Config, Running};
