//! Patch formats: JSON patch (RFC 6902), JSON merge patch (RFC 7396), and strategic merge patch for built-in
//! kinds. Server-side apply lives in [`crate::apply`].

pub mod lists;
pub mod strategic;

use crate::status::ApiError;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    /// From a request's Content-Type.
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" | "application/apply-patch+cbor" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// RFC 6902, `test` included; a failed `test` or a bad path is a 422 like Kubernetes reports it.
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, ApiError> {
    let ops: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    let mut doc = target.clone();
    json_patch::patch(&mut doc, &ops).map_err(|e| {
        ApiError::new(422, "Invalid", format!("the server rejected our request due to an error in our request: {e}"))
    })?;
    Ok(doc)
}

/// RFC 7396: objects merge, `null` deletes, everything else replaces.
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    let mut doc = target.clone();
    json_patch::merge(&mut doc, patch);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_patch_test_op_guards() {
        let doc = json!({"a": 1});
        let ok = json!([{"op": "test", "path": "/a", "value": 1}, {"op": "replace", "path": "/a", "value": 2}]);
        assert_eq!(json_patch(&doc, &ok).unwrap(), json!({"a": 2}));
        let bad = json!([{"op": "test", "path": "/a", "value": 5}, {"op": "replace", "path": "/a", "value": 2}]);
        assert_eq!(json_patch(&doc, &bad).unwrap_err().code, 422);
    }

    #[test]
    fn merge_patch_deletes_with_null() {
        let doc = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        let p = json!({"a": {"b": null}, "l": [3]});
        assert_eq!(merge_patch(&doc, &p), json!({"a": {"c": 2}, "l": [3]}));
    }
}
