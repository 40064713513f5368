//! The kinds kumo serves, as data, and everything about them that needs no I/O.
//!
//! The API server is generic: it serves whatever [`ResourceDef`]s the registry holds. This crate says what a
//! kind is ([`resource`]), which kinds are built in ([`builtin`]), how a CustomResourceDefinition becomes served
//! kinds ([`crd`]), how objects are validated, pruned and defaulted ([`validation`], [`schema`], [`typed`]),
//! how patches apply ([`patch`], [`apply`]), how `kubectl get` columns are printed ([`table`]), and how errors
//! are reported ([`status`]).
//!
//! Newcomers: start with [`resource::ResourceDef`] and [`builtin::builtin_resources`].

pub mod apply;
pub mod bearer;
pub mod builtin;
pub mod builtin_schema;
pub mod cdi;
pub mod cidr;
pub mod conditions;
pub mod convert;
pub mod crd;
pub mod flowcontrol;
pub mod instancetype;
pub mod jsonpath;
pub mod kubevirt;
pub mod meta;
pub mod patch;
pub mod pool;
pub mod protobuf;
pub mod provisioning;
pub mod quantity;
pub mod resource;
pub mod schema;
pub mod selector;
pub mod snapshot;
pub mod status;
pub mod storage;
pub mod table;
pub mod typed;
pub mod validation;

pub use resource::{GroupVersionResource, PrinterColumn, ResourceDef, ScaleSpec};
pub use status::{ApiError, Cause};
