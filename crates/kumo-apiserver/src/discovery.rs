//! Discovery documents (`/version`, `/api`, `/apis`, `/api/v1`, `/apis/{group}[/{version}]`) in the legacy
//! (unaggregated) format, built from the registry.

use crate::request::Target;
use crate::response::{self, Resp};
use crate::state::ApiServer;
use http::StatusCode;
use kumo_api::ApiError;
use serde_json::{json, Value};

pub fn version() -> Value {
    json!({
        "major": "1", "minor": "32", "gitVersion": concat!("v1.32.0-kumo.", env!("CARGO_PKG_VERSION")),
        "gitCommit": "", "gitTreeState": "clean", "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "n/a", "compiler": "rustc", "platform": "linux/amd64"
    })
}

fn group_doc(name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> =
        versions.iter().map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v})).collect();
    json!({"name": name, "versions": vs, "preferredVersion": vs.first().cloned().unwrap_or(json!({}))})
}

pub fn serve(api: &ApiServer, target: &Target) -> Resp {
    let groups = api.registry.groups();
    let doc = match target {
        Target::Root { legacy: true } => json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]}),
        Target::Root { legacy: false } => {
            let list: Vec<Value> =
                groups.iter().filter(|(g, _)| !g.is_empty()).map(|(g, vs)| group_doc(g, vs)).collect();
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": list})
        }
        Target::Group(g) if g == crate::kubevirt::GROUP => {
            let mut d = group_doc(g, &["v1".to_string()]);
            d["kind"] = json!("APIGroup");
            d["apiVersion"] = json!("v1");
            d
        }
        Target::GroupVersion { group, version } if group == crate::kubevirt::GROUP && version == "v1" => {
            crate::kubevirt::discovery()
        }
        Target::Group(g) => match groups.get(g) {
            Some(vs) if !g.is_empty() => {
                let mut d = group_doc(g, vs);
                d["kind"] = json!("APIGroup");
                d["apiVersion"] = json!("v1");
                d
            }
            _ => return response::error(&ApiError::path_not_found(&format!("/apis/{g}"))),
        },
        Target::GroupVersion { group, version } => {
            let defs: Vec<_> =
                api.registry.all().into_iter().filter(|d| &d.group == group && &d.version == version).collect();
            if defs.is_empty() {
                return response::error(&ApiError::path_not_found(&format!("{group}/{version}")));
            }
            let mut resources = Vec::new();
            for d in &defs {
                resources.push(json!({
                    "name": d.plural, "singularName": d.singular, "namespaced": d.namespaced, "kind": d.kind,
                    "verbs": d.verbs, "shortNames": d.short_names, "categories": d.categories,
                }));
                if d.status_subresource {
                    resources.push(
                        json!({"name": format!("{}/status", d.plural), "singularName": "", "namespaced": d.namespaced,
                        "kind": d.kind, "verbs": ["get", "patch", "update"]}),
                    );
                }
                if d.scale.is_some() {
                    resources.push(
                        json!({"name": format!("{}/scale", d.plural), "singularName": "", "namespaced": d.namespaced,
                        "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}),
                    );
                }
                if d.kind == "Namespace" && d.group.is_empty() {
                    resources.push(json!({"name": "namespaces/finalize", "singularName": "", "namespaced": false,
                        "kind": "Namespace", "verbs": ["update"]}));
                }
            }
            let gv = if group.is_empty() { version.clone() } else { format!("{group}/{version}") };
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
        }
        Target::Resource(_) => unreachable!("resources are not discovery documents"),
    };
    response::json_response(StatusCode::OK, &doc)
}
