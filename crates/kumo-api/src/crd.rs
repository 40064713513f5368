//! CustomResourceDefinitions: validating one, and turning it into the kinds it serves.

use crate::jsonpath;
use crate::resource::{PrinterColumn, ResourceDef, ScaleSpec, ALL_VERBS};
use crate::status::Cause;
use crate::validation::{is_dns1123_label, is_dns1123_subdomain};
use serde_json::{json, Value};

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// Checks what serving the CRD needs; each problem names its field.
pub fn validate(crd: &Value) -> Vec<Cause> {
    let mut c = Vec::new();
    let group = s(crd, "/spec/group");
    let plural = s(crd, "/spec/names/plural");
    if group.is_empty() {
        c.push(Cause::required("spec.group"));
    } else if !is_dns1123_subdomain(group) || !group.contains('.') {
        c.push(Cause::invalid(
            "spec.group",
            format!("Invalid value: \"{group}\": should be a domain with at least one dot"),
        ));
    }
    for f in ["plural", "kind"] {
        if s(crd, &format!("/spec/names/{f}")).is_empty() {
            c.push(Cause::required(format!("spec.names.{f}")));
        }
    }
    if !plural.is_empty() && !is_dns1123_label(plural) {
        c.push(Cause::invalid("spec.names.plural", format!("Invalid value: \"{plural}\": a lowercase RFC 1123 label")));
    }
    let name = s(crd, "/metadata/name");
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        c.push(Cause::invalid(
            "metadata.name",
            format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    match s(crd, "/spec/scope") {
        "Namespaced" | "Cluster" => {}
        other => c.push(Cause::not_supported("spec.scope", other, &["Cluster", "Namespaced"])),
    }
    let versions = crd.pointer("/spec/versions").and_then(Value::as_array).cloned().unwrap_or_default();
    if versions.is_empty() {
        c.push(Cause::required("spec.versions"));
    }
    let storage = versions.iter().filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true)).count();
    if !versions.is_empty() && storage != 1 {
        c.push(Cause::invalid("spec.versions", "must have exactly one version marked as storage version"));
    }
    for (i, v) in versions.iter().enumerate() {
        let vn = s(v, "/name");
        if !is_dns1123_label(vn) {
            c.push(Cause::invalid(format!("spec.versions[{i}].name"), format!("Invalid value: \"{vn}\"")));
        }
        match v.pointer("/schema/openAPIV3Schema") {
            Some(schema) if schema.get("type").and_then(Value::as_str) == Some("object") => {}
            Some(_) => {
                c.push(Cause::invalid(format!("spec.versions[{i}].schema.openAPIV3Schema.type"), "must be object"))
            }
            None => c.push(Cause::required(format!("spec.versions[{i}].schema.openAPIV3Schema"))),
        }
        for (j, col) in v.get("additionalPrinterColumns").and_then(Value::as_array).into_iter().flatten().enumerate() {
            if let Err(e) = jsonpath::validate(s(col, "/jsonPath")) {
                c.push(Cause::invalid(format!("spec.versions[{i}].additionalPrinterColumns[{j}].jsonPath"), e));
            }
        }
    }
    c
}

/// One [`ResourceDef`] per served version.
pub fn resource_defs(crd: &Value) -> Vec<ResourceDef> {
    let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let kind = s(&names, "/kind").to_string();
    let plural = s(&names, "/plural").to_string();
    let singular = match s(&names, "/singular") {
        "" => kind.to_lowercase(),
        x => x.to_string(),
    };
    let list_kind = match s(&names, "/listKind") {
        "" => format!("{kind}List"),
        x => x.to_string(),
    };
    let strings = |k: &str| -> Vec<String> {
        names
            .get(k)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    let versions = crd.pointer("/spec/versions").and_then(Value::as_array).cloned().unwrap_or_default();
    let storage_version = versions
        .iter()
        .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .map(|v| s(v, "/name").to_string())
        .unwrap_or_default();
    versions
        .iter()
        .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(true))
        .map(|v| ResourceDef {
            group: s(crd, "/spec/group").into(),
            version: s(v, "/name").into(),
            kind: kind.clone(),
            list_kind: list_kind.clone(),
            plural: plural.clone(),
            singular: singular.clone(),
            namespaced: s(crd, "/spec/scope") == "Namespaced",
            short_names: strings("shortNames"),
            categories: strings("categories"),
            storage_version: storage_version.clone(),
            status_subresource: v.pointer("/subresources/status").is_some(),
            scale: v.pointer("/subresources/scale").map(|sc| ScaleSpec {
                spec_replicas_path: s(sc, "/specReplicasPath").into(),
                status_replicas_path: s(sc, "/statusReplicasPath").into(),
                label_selector_path: sc.get("labelSelectorPath").and_then(Value::as_str).map(String::from),
            }),
            printer_columns: v
                .get("additionalPrinterColumns")
                .and_then(Value::as_array)
                .map(|cols| {
                    cols.iter()
                        .map(|c| PrinterColumn {
                            name: s(c, "/name").into(),
                            type_: s(c, "/type").into(),
                            format: s(c, "/format").into(),
                            description: s(c, "/description").into(),
                            json_path: s(c, "/jsonPath").into(),
                            priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            schema: v.pointer("/schema/openAPIV3Schema").cloned(),
            builtin: None,
            storage_group: None,
            reject_unknown_fields: crd
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(crate::kubevirt::REJECT_UNKNOWN_ANNOTATION))
                .and_then(Value::as_str)
                == Some("true"),
            verbs: ALL_VERBS.to_vec(),
        })
        .collect()
}

/// The status a served CRD reports (`Established`, `NamesAccepted`, `acceptedNames`, `storedVersions`).
pub fn established_status(crd: &Value, now: &str) -> Value {
    let storage: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .filter_map(|v| v.get("name").cloned())
        .collect();
    let cond = |t: &str, reason: &str, msg: &str| json!({"type": t, "status": "True", "lastTransitionTime": now, "reason": reason, "message": msg});
    json!({
        "acceptedNames": crd.pointer("/spec/names").cloned().unwrap_or(json!({})),
        "conditions": [
            cond("NamesAccepted", "NoConflicts", "no conflicts found"),
            cond("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "storedVersions": storage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        json!({"metadata": {"name": "widgets.example.com"}, "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object"}},
                "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                "additionalPrinterColumns": [{"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"}]}]}})
    }

    #[test]
    fn valid_crd_serves_its_version() {
        assert!(validate(&crd()).is_empty());
        let defs = resource_defs(&crd());
        assert_eq!(defs.len(), 1);
        assert_eq!(defs[0].kind, "Widget");
        assert_eq!(defs[0].list_kind, "WidgetList");
        assert!(defs[0].status_subresource);
        assert_eq!(defs[0].scale.as_ref().unwrap().spec_replicas_path, ".spec.replicas");
        assert_eq!(defs[0].printer_columns[0].name, "Replicas");
    }

    #[test]
    fn bad_crd_names_fields() {
        let mut c = crd();
        c["metadata"]["name"] = json!("wrong");
        c["spec"]["scope"] = json!("Galaxy");
        let fields: Vec<String> = validate(&c).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, vec!["metadata.name", "spec.scope"]);
    }
}
