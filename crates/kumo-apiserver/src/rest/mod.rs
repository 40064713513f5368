//! The REST layer: what create, update, delete and finalizer removal do to an object, whoever asks. The HTTP
//! handlers ([`crate::handlers`]) parse a request into these calls; the built-in controllers ([`crate::gc`])
//! and start-up ([`crate::state::bootstrap`]) call them directly, so every write obeys the same rules.

pub mod admission;
mod create;
mod delete;
mod storage;
mod update;

pub use create::create;
pub use delete::{delete, remove_finalizer, Deleted};
pub use update::{current_guess, namespace_spec_finalizers, update};

use admission::FieldValidation;

/// Options shared by every write, and the warnings it produced.
#[derive(Clone)]
pub struct WriteOptions {
    pub fv: FieldValidation,
    pub manager: String,
    pub dry_run: bool,
    pub warnings: Vec<String>,
}

/// Options of a deletion (a request's DeleteOptions body and query, or a controller's choice).
#[derive(Debug, Default)]
pub struct DeleteOptions {
    pub propagation: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub grace_period: Option<i64>,
    pub dry_run: bool,
}
