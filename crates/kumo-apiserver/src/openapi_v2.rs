//! OpenAPI v2 (Swagger 2.0) at `/openapi/v2`, made from the same schemas as v3 ([`crate::openapi`]), for the
//! clients that still read it: kubectl validates a `kind: List` (what `kubectl get -o yaml` prints for several
//! objects) and a multi-object `kubectl edit` against v2's definitions, fetched as protobuf (gnostic's
//! `openapi.v2.Document`); Helm and older clients read it too. JSON is served when asked for.
//!
//! Only definitions are carried, not paths: kubectl finds `fieldValidation` support in v3. Each definition
//! keeps what kubectl's v2 validator checks (types, properties, required, items, maps, `$ref`) and drops what
//! it cannot read or would check more strictly than the server does (defaults, enums, `number`, properties of
//! objects that keep unknown fields).

use crate::response::{self, Resp};
use crate::state::ApiServer;
use bytes::Bytes;
use http::{header, HeaderMap, StatusCode};
use serde_json::{json, Map, Value};

/// The media type kubectl asks for (with `@`) and the one to answer with (with `.`: Go's MIME parser refuses
/// `@` in a Content-Type).
const PROTOBUF_ASKED: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
const PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// The whole v2 document, as JSON.
pub fn document(api: &ApiServer) -> Value {
    let mut definitions = Map::new();
    for (group, versions) in api.registry.groups() {
        for v in versions {
            let Some(doc) = crate::openapi::gv_document(api, &group, &v) else { continue };
            let Some(schemas) = doc.pointer("/components/schemas").and_then(Value::as_object) else { continue };
            for (name, schema) in schemas {
                definitions.entry(name.clone()).or_insert_with(|| {
                    let mut d = to_v2(schema);
                    if let Some(gvk) = schema.get("x-kubernetes-group-version-kind") {
                        d["x-kubernetes-group-version-kind"] = gvk.clone();
                    }
                    d
                });
            }
        }
    }
    json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": {}, "definitions": definitions})
}

const PRIMITIVES: &[&str] = &["string", "integer", "boolean"];

/// A v3 schema as v2 carries it (see the module's doc for what is kept).
fn to_v2(s: &Value) -> Value {
    let Some(o) = s.as_object() else { return json!({}) };
    let reference = o.get("$ref").or_else(|| {
        // v3 wraps a reference that has its own description or default in a one-element allOf.
        o.get("allOf").and_then(Value::as_array).filter(|a| a.len() == 1).and_then(|a| a[0].get("$ref"))
    });
    if let Some(r) = reference.and_then(Value::as_str) {
        return json!({"$ref": r.replace("#/components/schemas/", "#/definitions/")});
    }
    let mut out = Map::new();
    for k in ["description", "format"] {
        if let Some(v) = o.get(k).filter(|v| v.is_string()) {
            out.insert(k.into(), v.clone());
        }
    }
    let open = o.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
        || o.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    match o.get("type").and_then(Value::as_str) {
        Some("object") => {
            out.insert("type".into(), json!("object"));
            let props = o.get("properties").and_then(Value::as_object).filter(|p| !p.is_empty() && !open);
            if let Some(props) = props {
                let p: Map<String, Value> = props.iter().map(|(k, v)| (k.clone(), to_v2(v))).collect();
                out.insert("properties".into(), Value::Object(p));
                if let Some(req) = o.get("required").filter(|r| r.is_array()) {
                    out.insert("required".into(), req.clone());
                }
            } else if let Some(ap) = o.get("additionalProperties").filter(|_| !open) {
                out.insert("additionalProperties".into(), if ap.is_boolean() { ap.clone() } else { to_v2(ap) });
            }
        }
        // An array needs exactly one item schema; without one it is left untyped (anything passes).
        Some("array") => {
            if let Some(items) = o.get("items").filter(|i| i.is_object()) {
                out.insert("type".into(), json!("array"));
                out.insert("items".into(), to_v2(items));
            }
        }
        Some(t) if PRIMITIVES.contains(&t) && !open => {
            out.insert("type".into(), json!(t));
        }
        // `number` accepts only floats there, though JSON's 1 is a number; int-or-string has no one type.
        _ => {}
    }
    Value::Object(out)
}

/// `GET /openapi/v2`: protobuf when asked (kubectl always asks), else JSON; an ETag, and 304 when it matches.
pub fn serve(api: &ApiServer, headers: &HeaderMap) -> Resp {
    let doc = document(api);
    let json_bytes = serde_json::to_vec(&doc).expect("a JSON value encodes");
    let etag = format!("\"{}\"", hex::encode_upper(<sha2::Sha512 as sha2::Digest>::digest(&json_bytes)));
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("*/*");
    let protobuf = accept.split(',').map(|a| a.split(';').next().unwrap_or("").trim()).find_map(|a| match a {
        PROTOBUF | PROTOBUF_ASKED => Some(true),
        "application/json" | "*/*" | "application/*" => Some(false),
        _ => None,
    });
    let Some(protobuf) = protobuf else {
        return response::error(&kumo_api::ApiError::not_acceptable(format!(
            "/openapi/v2 is served as application/json or {PROTOBUF}"
        )));
    };
    let matches = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str());
    let (status, body, content_type) = match (matches, protobuf) {
        (true, _) => (StatusCode::NOT_MODIFIED, Bytes::new(), if protobuf { PROTOBUF } else { "application/json" }),
        (false, true) => (StatusCode::OK, Bytes::from(proto::document(&doc)), PROTOBUF),
        (false, false) => (StatusCode::OK, Bytes::from(json_bytes), "application/json"),
    };
    http::Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::ETAG, etag)
        .header(header::VARY, "Accept")
        .body(response::full(body))
        .expect("response")
}

/// gnostic's `openapi.v2` protobuf messages, the fields this document uses (numbers from its OpenAPIv2.proto).
mod proto {
    use serde_json::Value;

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// A length-delimited field (string, bytes, message).
    fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
        varint(out, (u64::from(field) << 3) | 2);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }

    fn boolean(out: &mut Vec<u8>, field: u32, b: bool) {
        varint(out, u64::from(field) << 3);
        varint(out, u64::from(b));
    }

    /// `Document`: swagger = 1, info = 2 (title = 1, version = 2), definitions = 9.
    pub fn document(doc: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        bytes(&mut out, 1, doc["swagger"].as_str().unwrap_or("2.0").as_bytes());
        let mut info = Vec::new();
        bytes(&mut info, 1, doc["info"]["title"].as_str().unwrap_or_default().as_bytes());
        bytes(&mut info, 2, doc["info"]["version"].as_str().unwrap_or_default().as_bytes());
        bytes(&mut out, 2, &info);
        if let Some(defs) = doc["definitions"].as_object() {
            bytes(&mut out, 9, &named_schemas(defs));
        }
        out
    }

    /// `Definitions` and `Properties` alike: additional_properties = 1, each a `NamedSchema` (name = 1,
    /// value = 2).
    fn named_schemas(m: &serde_json::Map<String, Value>) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, s) in m {
            let mut named = Vec::new();
            bytes(&mut named, 1, name.as_bytes());
            bytes(&mut named, 2, &schema(s));
            bytes(&mut out, 1, &named);
        }
        out
    }

    /// `Schema`: _ref = 1, format = 2, description = 4, required = 19, additional_properties = 21 (schema = 1
    /// or boolean = 2), type = 22 (value = 1), items = 23 (schema = 1), properties = 25,
    /// vendor_extension = 31 (`NamedAny`: name = 1, value = 2, an `Any` whose yaml = 2).
    fn schema(s: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        let text = |k: &str| s.get(k).and_then(Value::as_str);
        if let Some(r) = text("$ref") {
            bytes(&mut out, 1, r.as_bytes());
        }
        if let Some(f) = text("format") {
            bytes(&mut out, 2, f.as_bytes());
        }
        if let Some(d) = text("description") {
            bytes(&mut out, 4, d.as_bytes());
        }
        for r in s.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            bytes(&mut out, 19, r.as_bytes());
        }
        match s.get("additionalProperties") {
            Some(Value::Bool(b)) => {
                let mut ap = Vec::new();
                boolean(&mut ap, 2, *b);
                bytes(&mut out, 21, &ap);
            }
            Some(v @ Value::Object(_)) => {
                let mut ap = Vec::new();
                bytes(&mut ap, 1, &schema(v));
                bytes(&mut out, 21, &ap);
            }
            _ => {}
        }
        if let Some(t) = text("type") {
            let mut ty = Vec::new();
            bytes(&mut ty, 1, t.as_bytes());
            bytes(&mut out, 22, &ty);
        }
        if let Some(items) = s.get("items") {
            let mut it = Vec::new();
            bytes(&mut it, 1, &schema(items));
            bytes(&mut out, 23, &it);
        }
        if let Some(props) = s.get("properties").and_then(Value::as_object) {
            bytes(&mut out, 25, &named_schemas(props));
        }
        if let Some(gvk) = s.get("x-kubernetes-group-version-kind") {
            // YAML for kubectl's reader; JSON is YAML, and keeps the core group a quoted "".
            let mut any = Vec::new();
            bytes(&mut any, 2, gvk.to_string().as_bytes());
            let mut named = Vec::new();
            bytes(&mut named, 1, b"x-kubernetes-group-version-kind");
            bytes(&mut named, 2, &any);
            bytes(&mut out, 31, &named);
        }
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use serde_json::json;

        #[test]
        fn encodes_fields_with_their_numbers() {
            let doc = json!({"swagger": "2.0", "info": {"title": "K", "version": "v"},
                "definitions": {"A": {"type": "object", "required": ["x"], "properties": {"x": {"$ref": "#/definitions/B"}}}}});
            let b = document(&doc);
            // swagger: field 1, wire type 2, length 3.
            assert_eq!(&b[..5], &[0x0a, 3, b'2', b'.', b'0']);
            // info: field 2 holding title "K" (field 1) and version "v" (field 2).
            assert_eq!(&b[5..11], &[0x12, 6, 0x0a, 1, b'K', 0x12][..]);
            // definitions is field 9 (tag 0x4a).
            assert_eq!(b[13], 0x4a);
            let mut v = Vec::new();
            varint(&mut v, 300);
            assert_eq!(v, vec![0xac, 0x02]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v3_schemas_become_what_kubectl_v2_reads() {
        let v3 = json!({"type": "object", "required": ["spec"], "properties": {
            "metadata": {"allOf": [{"$ref": "#/components/schemas/io.k8s.Meta"}], "default": {}},
            "spec": {"type": "object", "properties": {
                "size": {"x-kubernetes-int-or-string": true},
                "ratio": {"type": "number"},
                "tags": {"type": "array", "items": {"type": "string", "enum": ["a"]}},
                "any": {"type": "array"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true, "properties": {"a": {"type": "string"}}}}}}});
        let v2 = to_v2(&v3);
        assert_eq!(v2["properties"]["metadata"], json!({"$ref": "#/definitions/io.k8s.Meta"}));
        let spec = &v2["properties"]["spec"]["properties"];
        assert_eq!(spec["size"], json!({}));
        assert_eq!(spec["ratio"], json!({}));
        assert_eq!(spec["tags"], json!({"type": "array", "items": {"type": "string"}}));
        assert_eq!(spec["any"], json!({}));
        assert_eq!(spec["labels"], json!({"type": "object", "additionalProperties": {"type": "string"}}));
        assert_eq!(spec["free"], json!({"type": "object"}));
        assert_eq!(v2["required"], json!(["spec"]));
    }
}
