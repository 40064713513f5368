//! kumo's Kubernetes-compatible API server.
//!
//! A request flows: [`server`] (TLS, HTTP/1.1 and HTTP/2, bearer-token auth) → [`handlers::dispatch`] (path →
//! [`request::Target`]) → discovery/OpenAPI documents, or a verb handler. Handlers parse and respond; what a
//! write does to an object (admission, system fields, finalizers, deletion) is the REST layer, [`rest`], which
//! the background loops in [`gc`] (garbage collection by ownerReferences, namespace deletion, CRD cleanup,
//! compaction) use too. Both work on [`state::ApiServer`]: the store ([`objects::Objects`]), the served kinds
//! ([`registry::Registry`]) and the watch cache ([`watch_cache::WatchCache`]). Nothing is specific to one kind
//! except the small admission hooks in `rest/admission.rs` and the KubeVirt subresources ([`kubevirt`], which
//! reach node agents through [`nodes`]).

pub mod auth;
pub mod corruption;
pub mod crypt;
pub mod csr;
pub mod discovery;
pub mod flowcontrol;
pub mod gc;
pub mod handlers;
pub mod kubevirt;
pub mod metrics;
pub mod nodes;
pub mod objects;
pub mod openapi;
pub mod openapi_v2;
pub mod registry;
pub mod request;
pub mod response;
pub mod rest;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod tls;
pub mod ui;
pub mod upload;
pub mod watch_cache;

pub use server::{run, Config, Running};
