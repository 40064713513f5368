//! `metav1.Status` errors: every failure the API reports carries a code, a reason and, where a field is at
//! fault, a cause naming it.

use serde_json::{json, Value};

/// One offending field, as in `status.details.causes[]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Cause {
    /// Kubernetes cause type, e.g. `FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`.
    pub reason: String,
    pub message: String,
    pub field: String,
}

impl Cause {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Cause { reason: "FieldValueInvalid".into(), message: message.into(), field: field.into() }
    }
    pub fn required(field: impl Into<String>) -> Self {
        Cause { reason: "FieldValueRequired".into(), message: "Required value".into(), field: field.into() }
    }
    pub fn unknown(field: impl Into<String>) -> Self {
        let field = field.into();
        Cause { reason: "FieldValueInvalid".into(), message: format!("unknown field \"{field}\""), field }
    }
    pub fn not_supported(field: impl Into<String>, value: &str, allowed: &[&str]) -> Self {
        let quoted: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
        Cause {
            reason: "FieldValueNotSupported".into(),
            message: format!("Unsupported value: \"{value}\": supported values: {}", quoted.join(", ")),
            field: field.into(),
        }
    }
    /// `field: message`, the way the API server words causes in a Status message.
    /// The same cause for a field nested under `prefix` (e.g. a VM's checks applied to a pool's template).
    pub fn prefixed(mut self, prefix: &str) -> Self {
        self.field = if self.field.is_empty() { prefix.to_string() } else { format!("{prefix}.{}", self.field) };
        self
    }
    pub fn describe(&self) -> String {
        if self.field.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.field, self.message)
        }
    }
}

/// An API error that becomes a `metav1.Status` response.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: String,
    pub message: String,
    pub details: Option<Box<Details>>,
    pub retry_after_seconds: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct Details {
    pub name: String,
    pub group: String,
    pub kind: String,
    pub causes: Vec<Cause>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.reason, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        ApiError { code, reason: reason.into(), message: message.into(), details: None, retry_after_seconds: None }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }
    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        let qualified = qualify(group, resource);
        let mut e = Self::new(404, "NotFound", format!("{qualified} \"{name}\" not found"));
        e.details =
            Some(Box::new(Details { name: name.into(), group: group.into(), kind: resource.into(), causes: vec![] }));
        e
    }
    pub fn path_not_found(path: &str) -> Self {
        Self::new(404, "NotFound", format!("the server could not find the requested resource ({path})"))
    }
    pub fn method_not_allowed(verb: &str, resource: &str) -> Self {
        Self::new(405, "MethodNotAllowed", format!("{verb} is not supported on resources of kind \"{resource}\""))
    }
    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        let qualified = qualify(group, resource);
        let mut e = Self::new(409, "AlreadyExists", format!("{qualified} \"{name}\" already exists"));
        e.details =
            Some(Box::new(Details { name: name.into(), group: group.into(), kind: resource.into(), causes: vec![] }));
        e
    }
    pub fn conflict(group: &str, resource: &str, name: &str, why: &str) -> Self {
        let qualified = qualify(group, resource);
        let mut e =
            Self::new(409, "Conflict", format!("Operation cannot be fulfilled on {qualified} \"{name}\": {why}"));
        e.details =
            Some(Box::new(Details { name: name.into(), group: group.into(), kind: resource.into(), causes: vec![] }));
        e
    }
    pub fn stale(group: &str, resource: &str, name: &str) -> Self {
        Self::conflict(
            group,
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(413, "RequestEntityTooLarge", message)
    }
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }
    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self::new(406, "NotAcceptable", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "Timeout", message)
    }
    /// 429 with `Retry-After`: the server is busy with this client's (or its kind's) requests.
    pub fn too_many_requests(message: impl Into<String>, retry_after_seconds: u32) -> Self {
        let mut e = Self::new(429, "TooManyRequests", message);
        e.retry_after_seconds = Some(retry_after_seconds);
        e
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    /// 507: the server cannot store the write (its disk is full); nothing was written.
    pub fn insufficient_storage(message: impl Into<String>) -> Self {
        Self::new(507, "InsufficientStorage", message)
    }

    /// 422 Invalid, with one cause per offending field: `Kind.group "name" is invalid: field: message, ...`.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let qualified = if group.is_empty() { kind.to_string() } else { format!("{kind}.{group}") };
        let list: Vec<String> = causes.iter().map(Cause::describe).collect();
        let message = if list.len() == 1 {
            format!("{qualified} \"{name}\" is invalid: {}", list[0])
        } else {
            format!("{qualified} \"{name}\" is invalid: [{}]", list.join(", "))
        };
        let mut e = Self::new(422, "Invalid", message);
        e.details = Some(Box::new(Details { name: name.into(), group: group.into(), kind: kind.into(), causes }));
        e
    }

    /// Strict field validation failures are 400 BadRequest in Kubernetes, listing each unknown field.
    pub fn strict_decoding(causes: Vec<Cause>) -> Self {
        let list: Vec<String> = causes.iter().map(|c| c.message.clone()).collect();
        let mut e = Self::bad_request(format!("strict decoding error: {}", list.join(", ")));
        e.details = Some(Box::new(Details { causes, ..Default::default() }));
        e
    }

    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            let mut details = serde_json::Map::new();
            if !d.name.is_empty() {
                details.insert("name".into(), json!(d.name));
            }
            if !d.group.is_empty() {
                details.insert("group".into(), json!(d.group));
            }
            if !d.kind.is_empty() {
                details.insert("kind".into(), json!(d.kind));
            }
            if !d.causes.is_empty() {
                let causes: Vec<Value> = d
                    .causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect();
                details.insert("causes".into(), Value::Array(causes));
            }
            if let Some(r) = self.retry_after_seconds {
                details.insert("retryAfterSeconds".into(), json!(r));
            }
            s["details"] = Value::Object(details);
        }
        s
    }
}

fn qualify(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

/// A successful deletion of a collection or an object without finalizers answers with this.
pub fn success_status(details: Value) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
}
