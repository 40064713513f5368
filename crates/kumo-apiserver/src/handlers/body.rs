//! Decoding request bodies (JSON or YAML) into objects, with errors that say what was wrong.

use super::Call;
use crate::rest::DeleteOptions;
use kumo_api::ApiError;
use serde_json::Value;

/// Decodes the body as JSON, or YAML when the Content-Type says so (apply patches are YAML).
pub fn decode(call: &Call) -> Result<Value, ApiError> {
    let ct = call.header("content-type").unwrap_or("application/json");
    let base = ct.split(';').next().unwrap_or("").trim();
    if base == kumo_api::protobuf::CONTENT_TYPE {
        // kubectl's generators (create namespace/configmap/secret/...) send built-in kinds as protobuf.
        return kumo_api::protobuf::decode(&call.body).map_err(|e| {
            if e.starts_with("protobuf bodies are not supported") {
                ApiError::unsupported_media_type(e)
            } else {
                ApiError::bad_request(e)
            }
        });
    }
    if base.contains("protobuf") || base.contains("cbor") {
        return Err(ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {base})"
        )));
    }
    if call.body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty; expected an object"));
    }
    let yaml = base.ends_with("yaml");
    let v: Value = if yaml {
        let text = std::str::from_utf8(&call.body).map_err(|_| ApiError::bad_request("the YAML body is not UTF-8"))?;
        serde_saphyr::from_str(text).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
    } else {
        serde_json::from_slice(&call.body).map_err(|e| {
            ApiError::bad_request(format!("error decoding JSON: {e} (the request body must be a JSON object)"))
        })?
    };
    Ok(v)
}

pub fn decode_object(call: &Call) -> Result<Value, ApiError> {
    let v = decode(call)?;
    if !v.is_object() {
        return Err(ApiError::bad_request("the request body must be a JSON or YAML object"));
    }
    if let Some(md) = v.get("metadata") {
        if !md.is_object() && !md.is_null() {
            return Err(ApiError::bad_request("metadata must be an object"));
        }
    }
    Ok(v)
}

/// The options of a deletion, from the body (DeleteOptions) and the query.
pub fn delete_options(call: &Call) -> Result<DeleteOptions, ApiError> {
    let body: Value = if call.body.iter().all(u8::is_ascii_whitespace) { Value::Null } else { decode(call)? };
    let s = |p: &str| body.pointer(p).and_then(Value::as_str).map(String::from);
    let mut o = DeleteOptions {
        propagation: s("/propagationPolicy").or_else(|| call.query.get("propagationPolicy").map(String::from)),
        precondition_uid: s("/preconditions/uid"),
        precondition_rv: s("/preconditions/resourceVersion"),
        grace_period: body.get("gracePeriodSeconds").and_then(Value::as_i64),
        dry_run: call.dry_run()?
            || body.get("dryRun").and_then(Value::as_array).is_some_and(|a| a.iter().any(|x| x == "All")),
    };
    if o.grace_period.is_none() {
        o.grace_period = call.query.int("gracePeriodSeconds").map_err(ApiError::bad_request)?;
    }
    if o.propagation.is_none() {
        let orphan = body
            .get("orphanDependents")
            .and_then(Value::as_bool)
            .or_else(|| call.query.get("orphanDependents").map(|v| v == "true"));
        if orphan == Some(true) {
            o.propagation = Some("Orphan".into());
        }
    }
    if let Some(p) = &o.propagation {
        if !matches!(p.as_str(), "Background" | "Foreground" | "Orphan") {
            return Err(ApiError::invalid(
                "",
                "DeleteOptions",
                "",
                vec![kumo_api::Cause::not_supported("propagationPolicy", p, &["Background", "Foreground", "Orphan"])],
            ));
        }
    }
    Ok(o)
}
