//! OpenAPI v3: the index at `/openapi/v3` and one document per group-version, generated from the registry.
//! kubectl reads them to find that PATCH accepts `fieldValidation` (so it validates server-side) and for
//! `kubectl explain`.

use crate::response::{self, Resp};
use crate::state::ApiServer;
use http::StatusCode;
use kumo_api::resource::Builtin;
use kumo_api::{ApiError, ResourceDef};
use serde_json::{json, Map, Value};
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The schema name of a kind, in Kubernetes' reversed-domain style (`io.kubevirt.v1.VirtualMachine`).
fn schema_name(d: &ResourceDef) -> String {
    let rev: Vec<&str> = d.group.split('.').rev().collect();
    format!("{}.{}.{}", rev.join("."), d.version, d.kind)
}

fn object_meta_schema() -> Value {
    let s = |d: &str| json!({"type": "string", "description": d});
    json!({"type": "object", "description": "Standard object metadata.", "properties": {
        "name": s("Name must be unique within a namespace."),
        "generateName": s("Prefix used to generate a unique name when name is empty."),
        "namespace": s("The namespace the object lives in."),
        "uid": s("Unique identifier, set by the server."),
        "resourceVersion": s("Opaque version used for optimistic concurrency and watch."),
        "generation": {"type": "integer", "format": "int64", "description": "Sequence number of spec changes."},
        "creationTimestamp": s("When the object was created (RFC 3339)."),
        "deletionTimestamp": s("When deletion was requested (RFC 3339)."),
        "deletionGracePeriodSeconds": {"type": "integer", "format": "int64"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Labels for selection."},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Unstructured key-value data."},
        "finalizers": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set",
            "description": "Must be empty before the object is deleted from the store."},
        "ownerReferences": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["uid"], "x-kubernetes-patch-merge-key": "uid",
            "x-kubernetes-patch-strategy": "merge", "description": "Objects this object depends on."},
        "managedFields": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "description": "Which manager owns which fields (server-side apply)."}
    }})
}

fn kind_schema(d: &ResourceDef) -> Value {
    let mut schema = d.schema.clone().unwrap_or_else(|| {
        json!({"type": "object", "description": format!("{} ({}).", d.kind, d.api_version()),
            "x-kubernetes-preserve-unknown-fields": true, "properties": {}})
    });
    let props = schema.as_object_mut().expect("object schema").entry("properties").or_insert_with(|| json!({}));
    if let Some(p) = props.as_object_mut() {
        p.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
        p.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
        p.insert(
            "metadata".into(),
            json!({"allOf": [{"$ref": format!("#/components/schemas/{OBJECT_META}")}], "default": {},
            "description": "Standard object's metadata."}),
        );
    }
    schema["x-kubernetes-group-version-kind"] = json!([{"group": d.group, "version": d.version, "kind": d.kind}]);
    schema
}

/// A built-in kind's schema name and the schemas it needs.
type BuiltinSchemas = (String, Map<String, Value>);

/// Generated once, on first use: the schemas of built-in kinds never change while the server runs.
fn builtin_schemas(b: Builtin) -> &'static BuiltinSchemas {
    static CACHE: OnceLock<Vec<(Builtin, BuiltinSchemas)>> = OnceLock::new();
    let all = CACHE.get_or_init(|| {
        kumo_api::builtin::builtin_resources()
            .into_iter()
            .filter_map(|d| d.builtin)
            .map(|b| (b, kumo_api::builtin_schema::schemas(b)))
            .collect()
    });
    &all.iter().find(|(x, _)| *x == b).expect("every built-in has a schema").1
}

fn param(name: &str, desc: &str) -> Value {
    json!({"name": name, "in": "query", "description": desc, "schema": {"type": "string", "uniqueItems": true}})
}

fn operation(d: &ResourceDef, action: &str, params: Vec<Value>, schema_ref: &str) -> Value {
    let body = json!({"content": {"application/json": {"schema": {"$ref": schema_ref}}}});
    let mut op = json!({
        "operationId": format!("{action}{}", d.kind),
        "tags": [d.group.clone()],
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": schema_ref}}}},
                      "401": {"description": "Unauthorized"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": d.group, "version": d.version, "kind": d.kind},
    });
    if matches!(action, "post" | "put" | "patch") {
        op["requestBody"] = body;
    }
    if action == "patch" {
        op["requestBody"] = json!({"content": {
            "application/json-patch+json": {"schema": {"type": "object"}},
            "application/merge-patch+json": {"schema": {"type": "object"}},
            "application/apply-patch+yaml": {"schema": {"type": "object"}}}});
        // Only built-in kinds take a strategic merge patch, as in Kubernetes: kubectl apply reads this list and
        // would otherwise send one for a custom resource, which is refused.
        if d.builtin.is_some() {
            op["requestBody"]["content"]["application/strategic-merge-patch+json"] =
                json!({"schema": {"type": "object"}});
        }
    }
    op
}

fn write_params() -> Vec<Value> {
    vec![
        param("dryRun", "When present, indicates that modifications should not be persisted."),
        param("fieldManager", "A name associated with the actor or entity that is making these changes."),
        param(
            "fieldValidation",
            "How the server handles unknown or duplicate fields: Ignore, Warn (default) or Strict.",
        ),
    ]
}

/// The document for one group-version.
pub fn gv_document(api: &ApiServer, group: &str, version: &str) -> Option<Value> {
    let defs: Vec<_> = api.registry.all().into_iter().filter(|d| d.group == group && d.version == version).collect();
    if defs.is_empty() {
        return None;
    }
    let mut schemas = Map::new();
    let mut paths = Map::new();
    for d in &defs {
        let name = match d.builtin {
            Some(b) => {
                let (name, defs) = builtin_schemas(b);
                schemas.extend(defs.clone());
                let mut kind = schemas[name].clone();
                kind["x-kubernetes-group-version-kind"] =
                    json!([{"group": d.group, "version": d.version, "kind": d.kind}]);
                schemas.insert(name.clone(), kind);
                name.clone()
            }
            None => {
                schemas.entry(OBJECT_META).or_insert_with(object_meta_schema);
                let name = schema_name(d);
                schemas.insert(name.clone(), kind_schema(d));
                name
            }
        };
        let sref = format!("#/components/schemas/{name}");
        let base = format!("/{}", gv_path(&d.group, &d.version));
        let scope = if d.namespaced { "/namespaces/{namespace}" } else { "" };
        let coll = format!("{base}{scope}/{}", d.plural);
        let item = format!("{coll}/{{name}}");
        let mut patch_params = write_params();
        patch_params.push(param("force", "Force is going to \"force\" Apply requests."));
        paths.insert(coll.clone(), json!({
            "get": operation(d, "list", vec![param("labelSelector", ""), param("fieldSelector", ""), param("limit", ""), param("continue", ""), param("resourceVersion", ""), param("watch", "")], &sref),
            "post": operation(d, "post", write_params(), &sref),
            "delete": operation(d, "deletecollection", vec![param("labelSelector", "")], &sref),
        }));
        paths.insert(item.clone(), json!({
            "get": operation(d, "get", vec![], &sref),
            "put": operation(d, "put", write_params(), &sref),
            "patch": operation(d, "patch", patch_params.clone(), &sref),
            "delete": operation(d, "delete", vec![param("dryRun", ""), param("propagationPolicy", ""), param("gracePeriodSeconds", "")], &sref),
        }));
        if d.status_subresource {
            paths.insert(
                format!("{item}/status"),
                json!({
                    "get": operation(d, "get", vec![], &sref),
                    "put": operation(d, "put", write_params(), &sref),
                    "patch": operation(d, "patch", patch_params, &sref),
                }),
            );
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"BearerToken": {"type": "apiKey", "in": "header", "name": "authorization"}}},
        "security": [{"BearerToken": []}],
    }))
}

fn hash(v: &Value) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    format!("{:016X}", h.finish())
}

pub fn serve(api: &ApiServer, path: &str) -> Resp {
    let rest = path.trim_start_matches("/openapi/v3").trim_matches('/');
    if rest.is_empty() {
        let mut paths = Map::new();
        for (group, versions) in api.registry.groups() {
            for v in versions {
                let doc = gv_document(api, &group, &v).unwrap_or_default();
                let p = gv_path(&group, &v);
                paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", hash(&doc))}));
            }
        }
        return response::json_response(StatusCode::OK, &json!({"paths": paths}));
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let (group, version) = match segs.as_slice() {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return response::error(&ApiError::path_not_found(path)),
    };
    match gv_document(api, group, version) {
        Some(doc) => response::json_response(StatusCode::OK, &doc),
        None => response::error(&ApiError::path_not_found(path)),
    }
}
