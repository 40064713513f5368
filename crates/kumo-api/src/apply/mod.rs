//! Server-side apply and field ownership (`metadata.managedFields`), compatible with Kubernetes' FieldsV1.
//!
//! Every write records who owns which fields. [`apply`] merges an applied configuration into the live object,
//! refusing (unless forced) to change fields another manager owns, and removes fields its manager applied
//! before but no longer does. [`track_update`] records ownership for ordinary creates, updates and patches.

pub mod fieldset;
mod walk;

#[cfg(test)]
mod tests;

use crate::patch::lists::ListTypes;
use crate::status::{ApiError, Cause, Details};
pub use fieldset::FieldSet;
use serde_json::{json, Map, Value};
use walk::{Comparison, Walker};

/// The manager Kubernetes gives the fields of an object that had no managedFields when first applied to.
pub const BEFORE_FIRST_APPLY: &str = "before-first-apply";

/// One server-side apply request.
#[derive(Clone, Copy)]
pub struct ApplyOptions<'a> {
    /// The field manager (`?fieldManager=`).
    pub manager: &'a str,
    /// `?force=true`: take conflicting fields from their managers.
    pub force: bool,
    /// The time of the request, RFC 3339.
    pub now: &'a str,
    /// The apiVersion the request was made at; recorded in the managedFields entry.
    pub api_version: &'a str,
    pub lists: &'a dyn ListTypes,
}

/// A field another manager owns and an apply would change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    /// The path as Kubernetes prints it, e.g. `.spec.replicas` or `.spec.containers[name="nginx"].image`.
    pub field: String,
    /// The owning entry's operation, `Apply` or `Update`.
    pub operation: String,
    /// The owning entry's apiVersion.
    pub api_version: String,
    /// The owning entry's subresource, empty for the main resource.
    pub subresource: String,
}

impl Conflict {
    /// The manager as Kubernetes names it in conflicts: `"kubectl-create" using v1`, `"kubectl"`.
    pub fn describe_manager(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == "Update" {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ApplyError {
    /// Fields other managers own would change; retry with force to take them.
    Conflicts(Vec<Conflict>),
    /// The applied configuration is malformed.
    Invalid(String),
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyError::Conflicts(c) => f.write_str(&conflict_message(c)),
            ApplyError::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ApplyError {}

/// Kubernetes' wording: `Apply failed with 1 conflict: conflict with "m" using v1: .data.key`, or for several
/// one `conflicts with "m":` line per manager followed by `- <field>` lines.
fn conflict_message(conflicts: &[Conflict]) -> String {
    if let [c] = conflicts {
        return format!("Apply failed with 1 conflict: conflict with {}: {}", c.describe_manager(), c.field);
    }
    let mut managers: Vec<String> = conflicts.iter().map(Conflict::describe_manager).collect();
    managers.sort();
    managers.dedup();
    let mut lines = Vec::new();
    for m in managers {
        lines.push(format!("conflicts with {m}:"));
        for c in conflicts.iter().filter(|c| c.describe_manager() == m) {
            lines.push(format!("- {}", c.field));
        }
    }
    format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
}

impl ApplyError {
    /// Conflicts are a 409 `Conflict` with one `FieldManagerConflict` cause per field (Kubernetes puts no
    /// name or kind in these details); an invalid configuration is a 422 `Invalid`.
    pub fn to_api_error(&self, group: &str, kind: &str, name: &str) -> ApiError {
        match self {
            ApplyError::Conflicts(conflicts) => {
                let causes = conflicts
                    .iter()
                    .map(|c| Cause {
                        reason: "FieldManagerConflict".into(),
                        message: format!("conflict with {}", c.describe_manager()),
                        field: c.field.clone(),
                    })
                    .collect();
                let mut e = ApiError::new(409, "Conflict", conflict_message(conflicts));
                e.details = Some(Box::new(Details { causes, ..Default::default() }));
                e
            }
            ApplyError::Invalid(message) => {
                let cause =
                    Cause { reason: "FieldValueInvalid".into(), message: message.clone(), field: String::new() };
                ApiError::invalid(group, kind, name, vec![cause])
            }
        }
    }
}

/// One `metadata.managedFields` entry.
#[derive(Clone, Debug, PartialEq)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: Option<String>,
    subresource: String,
    fields: FieldSet,
}

impl Entry {
    fn new(manager: &str, operation: &str, api_version: &str, time: &str, fields: FieldSet) -> Entry {
        Entry {
            manager: manager.into(),
            operation: operation.into(),
            api_version: api_version.into(),
            time: Some(time.into()),
            subresource: String::new(),
            fields,
        }
    }

    /// Kubernetes identifies a manager by name, operation and subresource, and for updates the apiVersion.
    fn is(&self, manager: &str, operation: &str, api_version: &str) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource.is_empty()
            && (operation != "Update" || self.api_version == api_version)
    }

    fn read(v: &Value) -> Option<Entry> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        v.as_object()?;
        Some(Entry {
            manager: s("manager"),
            operation: s("operation"),
            api_version: s("apiVersion"),
            time: v.get("time").and_then(Value::as_str).map(str::to_string),
            subresource: s("subresource"),
            fields: FieldSet::from_fields_v1(v.get("fieldsV1").unwrap_or(&Value::Null)),
        })
    }

    fn write(&self) -> Value {
        let mut o = Map::new();
        o.insert("manager".into(), json!(self.manager));
        o.insert("operation".into(), json!(self.operation));
        o.insert("apiVersion".into(), json!(self.api_version));
        if let Some(t) = &self.time {
            o.insert("time".into(), json!(t));
        }
        o.insert("fieldsType".into(), json!("FieldsV1"));
        o.insert("fieldsV1".into(), self.fields.to_fields_v1());
        if !self.subresource.is_empty() {
            o.insert("subresource".into(), json!(self.subresource));
        }
        Value::Object(o)
    }

    fn seconds(&self) -> i64 {
        let t = self.time.as_deref().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        t.map(|t| t.timestamp()).unwrap_or(0)
    }
}

fn read_entries(obj: &Value) -> Vec<Entry> {
    match obj.pointer("/metadata/managedFields") {
        Some(Value::Array(entries)) => entries.iter().filter_map(Entry::read).collect(),
        _ => Vec::new(),
    }
}

/// Drops empty entries, sorts the rest as Kubernetes does (operation, time, manager, apiVersion,
/// subresource) and stores them in the object.
fn write_entries(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.fields.is_empty());
    entries.sort_by(|a, b| {
        (&a.operation, a.seconds(), &a.manager, &a.api_version, &a.subresource).cmp(&(
            &b.operation,
            b.seconds(),
            &b.manager,
            &b.api_version,
            &b.subresource,
        ))
    });
    let Some(Value::Object(meta)) = obj.get_mut("metadata") else {
        return;
    };
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(entries.iter().map(Entry::write).collect()));
    }
}

/// What changed between two objects, ignoring the fields field management ignores.
fn compare(old: Option<&Value>, new: &Value, lists: &dyn ListTypes) -> Comparison {
    let empty = json!({});
    let old = walk::strip(old.unwrap_or(&empty));
    let new = walk::strip(new);
    let mut c = Comparison::default();
    Walker::new(lists).compare(Some(&old), Some(&new), &mut c);
    // `metadata` itself is never owned, only what is in it.
    let meta = vec![fieldset::field("metadata")];
    for set in [&mut c.added, &mut c.modified, &mut c.removed] {
        set.remove(&meta);
    }
    c
}

/// Applies `config` (the applied configuration, a full object with apiVersion/kind/metadata.name) onto `live`
/// (None = create). Returns the new object with `metadata.managedFields` updated.
pub fn apply(live: Option<&Value>, config: &Value, opts: &ApplyOptions) -> Result<Value, ApplyError> {
    if !config.is_object() {
        return Err(ApplyError::Invalid("the applied configuration must be an object".into()));
    }
    for field in ["apiVersion", "kind"] {
        if config.get(field).and_then(Value::as_str).unwrap_or("").is_empty() {
            return Err(ApplyError::Invalid(format!("{field} must be set in the applied configuration")));
        }
    }
    let mut applied = FieldSet::new();
    Walker::new(opts.lists).field_set(&walk::strip(config), &mut applied).map_err(ApplyError::Invalid)?;
    applied.remove(&[fieldset::field("metadata")]);

    let empty = json!({});
    let live_obj = live.unwrap_or(&empty);
    let mut entries = read_entries(live_obj);
    if live.is_some() && entries.is_empty() {
        // Objects from before field tracking: what is there belongs to "before-first-apply".
        let existing = compare(None, live_obj, opts.lists).added;
        entries.push(Entry::new(BEFORE_FIRST_APPLY, "Update", opts.api_version, opts.now, existing));
    }
    let mine = entries.iter().position(|e| e.is(opts.manager, "Apply", opts.api_version));

    let mut merged = Walker::new(opts.lists).merge(Some(live_obj), &walk::applicable(config));
    if let (Some(i), Value::Object(obj)) = (mine, &mut merged) {
        // Fields this manager applied before and no longer does go, unless someone else has them.
        let others = entries.iter().enumerate().filter(|(j, _)| *j != i);
        let keep = others.fold(applied.clone(), |acc, (_, e)| acc.union(&e.fields));
        let gone = entries[i].fields.difference(&keep);
        Walker::new(opts.lists).prune(obj, &gone, Some(&keep));
    }

    let changes = compare(Some(live_obj), &merged, opts.lists);
    let changed = changes.modified.union(&changes.added);
    let mut conflicts = Vec::new();
    for (j, e) in entries.iter_mut().enumerate() {
        if Some(j) == mine {
            continue;
        }
        let taken = e.fields.intersection(&changed);
        for path in taken.paths() {
            conflicts.push(Conflict {
                manager: e.manager.clone(),
                field: fieldset::path_string(&path),
                operation: e.operation.clone(),
                api_version: e.api_version.clone(),
                subresource: e.subresource.clone(),
            });
        }
        e.fields = e.fields.difference(&taken).difference(&changes.removed);
    }
    if !conflicts.is_empty() && !opts.force {
        return Err(ApplyError::Conflicts(conflicts));
    }
    match mine {
        Some(i) => {
            let e = &mut entries[i];
            if !changes.is_empty() || e.fields != applied {
                e.time = Some(opts.now.into());
            }
            e.fields = applied;
            e.api_version = opts.api_version.into();
        }
        None => entries.push(Entry::new(opts.manager, "Apply", opts.api_version, opts.now, applied)),
    }
    write_entries(&mut merged, entries);
    Ok(merged)
}

/// For create/update/patch (non-apply) writes: records that `manager` (operation "Update") now owns the
/// fields whose values it changed between `old` and `new` (all set fields on create), removing those fields
/// from other managers' sets. Mutates `new.metadata.managedFields`.
///
/// As in Kubernetes, managedFields sent in `new` are used when non-empty (otherwise `old`'s), and
/// `managedFields: [{}]` clears them.
pub fn track_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    now: &str,
    api_version: &str,
    lists: &dyn ListTypes,
) {
    let sent = new.pointer("/metadata/managedFields").cloned();
    if sent == Some(json!([{}])) {
        write_entries(new, Vec::new());
        return;
    }
    let mut entries = read_entries(new);
    if entries.is_empty() {
        entries = old.map(read_entries).unwrap_or_default();
    }
    let changes = compare(old, new, lists);
    let changed = changes.modified.union(&changes.added);
    for e in entries.iter_mut() {
        e.fields = e.fields.difference(&changes.removed);
        if !e.is(manager, "Update", api_version) {
            e.fields = e.fields.difference(&changed);
        }
    }
    if !changed.is_empty() {
        match entries.iter_mut().find(|e| e.is(manager, "Update", api_version)) {
            Some(e) => {
                e.fields = e.fields.union(&changed);
                e.time = Some(now.into());
            }
            None => entries.push(Entry::new(manager, "Update", api_version, now, changed)),
        }
    }
    write_entries(new, entries);
}
