//! API Priority and Fairness' configuration: the built-in FlowSchemas and PriorityLevelConfigurations
//! (`flowcontrol.apiserver.k8s.io/v1`), and classifying a request by them. Pure: the API server's
//! `flowcontrol` module queues and dispatches by what this decides.
//!
//! The built-ins follow Kubernetes' own names and meaning, for the identities kumo has: `system:masters`
//! (the admin, and the in-process controllers) are exempt; nodes' heartbeats (their Node and Lease) have
//! `node-high`; the rest of what nodes do has `system`; anyone else authenticated `global-default`; what is
//! left (bootstrap tokens joining, anonymous reads of cluster-info) `catch-all`.

use k8s_openapi::api::flowcontrol::v1::{
    FlowSchema, NonResourcePolicyRule, PolicyRulesWithSubjects, PriorityLevelConfiguration, ResourcePolicyRule, Subject,
};
use serde_json::{json, Value};

pub const GROUP: &str = "flowcontrol.apiserver.k8s.io";

/// What a request is, as FlowSchemas match it.
#[derive(Clone, Debug, Default)]
pub struct RequestDigest<'a> {
    pub user: &'a str,
    pub groups: &'a [&'a str],
    pub verb: &'a str,
    /// A resource request (`/api`, `/apis`) or not (`/healthz`, `/metrics`, discovery roots).
    pub is_resource: bool,
    pub api_group: &'a str,
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub path: &'a str,
}

/// Which schema matched and where it sends the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classification {
    pub flow_schema: String,
    pub priority_level: String,
    /// Requests with the same schema and distinguisher are one flow (queued together, served fairly
    /// against other flows).
    pub flow: String,
}

/// How a priority level limits its requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Limit {
    Exempt,
    Limited { shares: u32, queuing: Option<Queuing> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Queuing {
    pub queues: usize,
    pub hand_size: usize,
    pub queue_length_limit: usize,
}

/// A priority level's name and limit, from its PriorityLevelConfiguration.
pub fn level_limit(plc: &PriorityLevelConfiguration) -> (String, Limit) {
    let name = plc.metadata.name.clone().unwrap_or_default();
    let spec = Some(&plc.spec);
    if spec.is_some_and(|s| s.type_ == "Exempt") {
        return (name, Limit::Exempt);
    }
    let limited = spec.and_then(|s| s.limited.as_ref());
    // Kubernetes' defaults: 30 shares; queuing with 64 queues, hands of 8, 50 requests a queue.
    let shares = limited.and_then(|l| l.nominal_concurrency_shares).unwrap_or(30).max(0) as u32;
    let response = limited.map(|l| &l.limit_response);
    let queuing = match response {
        Some(r) if r.type_ == "Reject" => None,
        _ => {
            let q = response.and_then(|r| r.queuing.as_ref());
            let queues = q.and_then(|q| q.queues).unwrap_or(64).max(1) as usize;
            Some(Queuing {
                queues,
                hand_size: (q.and_then(|q| q.hand_size).unwrap_or(8).max(1) as usize).min(queues),
                queue_length_limit: q.and_then(|q| q.queue_length_limit).unwrap_or(50).max(1) as usize,
            })
        }
    };
    (name, Limit::Limited { shares, queuing })
}

/// The schema that matches `r` first (lowest matchingPrecedence, then name), among `schemas`.
pub fn classify(schemas: &[FlowSchema], r: &RequestDigest) -> Option<Classification> {
    let mut ordered: Vec<&FlowSchema> = schemas.iter().collect();
    ordered.sort_by_key(|fs| (precedence(fs), fs.metadata.name.clone()));
    ordered.into_iter().find_map(|fs| {
        let spec = &fs.spec;
        if !spec.rules.iter().flatten().any(|rule| rule_matches(rule, r)) {
            return None;
        }
        let distinguisher = match spec.distinguisher_method.as_ref().map(|d| d.type_.as_str()) {
            Some("ByUser") => r.user.to_string(),
            Some("ByNamespace") => r.namespace.unwrap_or("").to_string(),
            _ => String::new(),
        };
        let name = fs.metadata.name.clone().unwrap_or_default();
        Some(Classification {
            flow: format!("{name}/{distinguisher}"),
            flow_schema: name,
            priority_level: spec.priority_level_configuration.name.clone(),
        })
    })
}

/// Sorts schemas as [`classify`] tries them (Kubernetes defaults a missing precedence to 1000).
fn precedence(fs: &FlowSchema) -> i32 {
    fs.spec.matching_precedence.unwrap_or(1000)
}

fn rule_matches(rule: &PolicyRulesWithSubjects, r: &RequestDigest) -> bool {
    if !rule.subjects.iter().any(|s| subject_matches(s, r)) {
        return false;
    }
    if r.is_resource {
        rule.resource_rules.iter().flatten().any(|rr| resource_rule_matches(rr, r))
    } else {
        rule.non_resource_rules.iter().flatten().any(|nr| non_resource_rule_matches(nr, r))
    }
}

fn subject_matches(s: &Subject, r: &RequestDigest) -> bool {
    match s.kind.as_str() {
        "User" => s.user.as_ref().is_some_and(|u| u.name == "*" || u.name == r.user),
        "Group" => s.group.as_ref().is_some_and(|g| g.name == "*" || r.groups.contains(&g.name.as_str())),
        "ServiceAccount" => s.service_account.as_ref().is_some_and(|sa| {
            let (ns, name) = r.user.strip_prefix("system:serviceaccount:").and_then(|x| x.split_once(':')).unzip();
            ns.is_some_and(|ns| sa.namespace == ns) && name.is_some_and(|n| sa.name == "*" || sa.name == n)
        }),
        _ => false,
    }
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

fn resource_rule_matches(rr: &ResourcePolicyRule, r: &RequestDigest) -> bool {
    let scope = match r.namespace {
        Some(ns) => rr.namespaces.as_deref().is_some_and(|n| has(n, ns)),
        None => rr.cluster_scope == Some(true),
    };
    scope && has(&rr.verbs, r.verb) && has(&rr.api_groups, r.api_group) && resource_matches(&rr.resources, r)
}

/// Rules name a subresource as `plural/sub`.
fn resource_matches(list: &[String], r: &RequestDigest) -> bool {
    list.iter().any(|x| match r.subresource {
        _ if x == "*" => true,
        None => x == r.resource,
        Some(sub) => x.split_once('/') == Some((r.resource, sub)),
    })
}

fn non_resource_rule_matches(nr: &NonResourcePolicyRule, r: &RequestDigest) -> bool {
    has(&nr.verbs, r.verb)
        && nr
            .non_resource_urls
            .iter()
            .any(|u| u == "*" || u == r.path || u.strip_suffix('*').is_some_and(|prefix| r.path.starts_with(prefix)))
}

/// Kubernetes' validation of the two kinds, field by field.
pub fn validate(kind: &str, obj: &Value) -> Vec<crate::status::Cause> {
    use crate::status::Cause;
    let mut causes = Vec::new();
    let get = |p: &str| obj.pointer(p);
    let int = |p: &str| get(p).and_then(Value::as_i64);
    let one_of = |causes: &mut Vec<Cause>, p: &str, field: &str, allowed: &[&str]| match get(p).and_then(Value::as_str)
    {
        None => causes.push(Cause::required(field)),
        Some(v) if !allowed.contains(&v) => causes.push(Cause::not_supported(field, v, allowed)),
        Some(_) => {}
    };
    match kind {
        "FlowSchema" => {
            if get("/spec/priorityLevelConfiguration/name").and_then(Value::as_str).is_none_or(str::is_empty) {
                causes.push(Cause::required("spec.priorityLevelConfiguration.name"));
            }
            if let Some(p) = int("/spec/matchingPrecedence").filter(|p| !(1..=10000).contains(p)) {
                causes.push(Cause::invalid(
                    "spec.matchingPrecedence",
                    format!("Invalid value: {p}: must be between 1 and 10000"),
                ));
            }
            if get("/spec/distinguisherMethod").is_some() {
                one_of(
                    &mut causes,
                    "/spec/distinguisherMethod/type",
                    "spec.distinguisherMethod.type",
                    &["ByUser", "ByNamespace"],
                );
            }
            for (i, rule) in get("/spec/rules").and_then(Value::as_array).into_iter().flatten().enumerate() {
                let subjects = rule.get("subjects").and_then(Value::as_array);
                if subjects.is_none_or(|s| s.is_empty()) {
                    causes.push(Cause::required(format!("spec.rules[{i}].subjects")));
                }
                for (j, subject) in subjects.into_iter().flatten().enumerate() {
                    let kind = subject.get("kind").and_then(Value::as_str).unwrap_or("");
                    let field = match kind {
                        "User" => "user",
                        "Group" => "group",
                        "ServiceAccount" => "serviceAccount",
                        _ => {
                            let field = format!("spec.rules[{i}].subjects[{j}].kind");
                            causes.push(Cause::not_supported(field, kind, &["Group", "ServiceAccount", "User"]));
                            continue;
                        }
                    };
                    if subject.pointer(&format!("/{field}/name")).and_then(Value::as_str).is_none_or(str::is_empty) {
                        causes.push(Cause::required(format!("spec.rules[{i}].subjects[{j}].{field}.name")));
                    }
                }
            }
        }
        "PriorityLevelConfiguration" => {
            one_of(&mut causes, "/spec/type", "spec.type", &["Exempt", "Limited"]);
            if get("/spec/type").and_then(Value::as_str) == Some("Limited") {
                if get("/spec/limited").is_none() {
                    causes.push(Cause::required("spec.limited"));
                }
                if let Some(s) = int("/spec/limited/nominalConcurrencyShares").filter(|s| *s < 0) {
                    causes.push(Cause::invalid(
                        "spec.limited.nominalConcurrencyShares",
                        format!("Invalid value: {s}: must be non-negative"),
                    ));
                }
                let response = "/spec/limited/limitResponse";
                if get(response).is_some() {
                    one_of(
                        &mut causes,
                        &format!("{response}/type"),
                        "spec.limited.limitResponse.type",
                        &["Queue", "Reject"],
                    );
                }
                let q = |f: &str| int(&format!("{response}/queuing/{f}"));
                for f in ["queues", "handSize", "queueLengthLimit"] {
                    if let Some(v) = q(f).filter(|v| *v < 1) {
                        causes.push(Cause::invalid(
                            format!("spec.limited.limitResponse.queuing.{f}"),
                            format!("Invalid value: {v}: must be positive"),
                        ));
                    }
                }
                if let (Some(hand), Some(queues)) = (q("handSize"), q("queues")) {
                    if hand > queues {
                        causes.push(Cause::invalid(
                            "spec.limited.limitResponse.queuing.handSize",
                            format!("Invalid value: {hand}: should not be greater than queues ({queues})"),
                        ));
                    }
                }
            }
        }
        _ => {}
    }
    causes
}

/// Every resource and non-resource URL, for every verb.
fn everything() -> Value {
    json!({
        "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "clusterScope": true, "namespaces": ["*"]}],
        "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
    })
}

fn groups(names: &[&str]) -> Value {
    Value::Array(names.iter().map(|g| json!({"kind": "Group", "group": {"name": g}})).collect())
}

fn flow_schema(name: &str, level: &str, precedence: i32, subjects: Value, rules: Vec<Value>) -> Value {
    let rules: Vec<Value> = rules
        .into_iter()
        .map(|mut r| {
            r["subjects"] = subjects.clone();
            r
        })
        .collect();
    json!({
        "apiVersion": format!("{GROUP}/v1"), "kind": "FlowSchema",
        "metadata": {"name": name, "annotations": {"apf.kubernetes.io/autoupdate-spec": "true"}},
        "spec": {"priorityLevelConfiguration": {"name": level}, "matchingPrecedence": precedence,
                 "distinguisherMethod": {"type": "ByUser"}, "rules": rules},
    })
}

fn limited(name: &str, shares: i32, queuing: Option<(i32, i32, i32)>) -> Value {
    let response = match queuing {
        Some((queues, hand, len)) => json!({"type": "Queue",
            "queuing": {"queues": queues, "handSize": hand, "queueLengthLimit": len}}),
        None => json!({"type": "Reject"}),
    };
    json!({
        "apiVersion": format!("{GROUP}/v1"), "kind": "PriorityLevelConfiguration",
        "metadata": {"name": name, "annotations": {"apf.kubernetes.io/autoupdate-spec": "true"}},
        "spec": {"type": "Limited", "limited": {"nominalConcurrencyShares": shares, "lendablePercent": 0,
                 "limitResponse": response}},
    })
}

/// The built-in PriorityLevelConfigurations, as Kubernetes ships those of the same names.
pub fn builtin_priority_levels() -> Vec<Value> {
    vec![
        json!({
            "apiVersion": format!("{GROUP}/v1"), "kind": "PriorityLevelConfiguration",
            "metadata": {"name": "exempt", "annotations": {"apf.kubernetes.io/autoupdate-spec": "true"}},
            "spec": {"type": "Exempt", "exempt": {}},
        }),
        limited("node-high", 40, Some((64, 6, 50))),
        limited("system", 30, Some((64, 6, 50))),
        limited("global-default", 20, Some((128, 6, 50))),
        limited("catch-all", 5, None),
    ]
}

/// The built-in FlowSchemas.
pub fn builtin_flow_schemas() -> Vec<Value> {
    let heartbeats = vec![json!({
        "resourceRules": [
            {"verbs": ["*"], "apiGroups": [""], "resources": ["nodes", "nodes/status"], "clusterScope": true},
            {"verbs": ["*"], "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "namespaces": ["*"]},
        ],
    })];
    vec![
        {
            // Exempt requests are not queued: no flows to tell apart.
            let mut exempt = flow_schema("exempt", "exempt", 1, groups(&["system:masters"]), vec![everything()]);
            exempt["spec"].as_object_mut().map(|s| s.remove("distinguisherMethod"));
            exempt
        },
        flow_schema("system-node-high", "node-high", 400, groups(&["system:nodes"]), heartbeats),
        flow_schema("system-nodes", "system", 500, groups(&["system:nodes"]), vec![everything()]),
        flow_schema("global-default", "global-default", 9900, groups(&["system:authenticated"]), vec![everything()]),
        flow_schema(
            "catch-all",
            "catch-all",
            10000,
            groups(&["system:authenticated", "system:unauthenticated"]),
            vec![everything()],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schemas() -> Vec<FlowSchema> {
        builtin_flow_schemas().into_iter().map(|v| serde_json::from_value(v).unwrap()).collect()
    }

    fn digest<'a>(user: &'a str, groups: &'a [&'a str], verb: &'a str, resource: &'a str) -> RequestDigest<'a> {
        RequestDigest { user, groups, verb, is_resource: true, resource, ..Default::default() }
    }

    #[test]
    fn built_in_schemas_send_each_identity_to_its_level() {
        let fs = schemas();
        let node = ["system:nodes", "system:authenticated"];
        let level = |r: &RequestDigest| classify(&fs, r).map(|c| c.priority_level);
        let admin = digest("kumo-admin", &["system:masters", "system:authenticated"], "create", "configmaps");
        assert_eq!(level(&admin).as_deref(), Some("exempt"));
        let lease = RequestDigest {
            api_group: "coordination.k8s.io",
            namespace: Some("kube-node-lease"),
            ..digest("system:node:a", &node, "update", "leases")
        };
        assert_eq!(level(&lease).as_deref(), Some("node-high"));
        let status = RequestDigest { subresource: Some("status"), ..digest("system:node:a", &node, "patch", "nodes") };
        assert_eq!(level(&status).as_deref(), Some("node-high"));
        let event = RequestDigest { namespace: Some("default"), ..digest("system:node:a", &node, "create", "events") };
        let c = classify(&fs, &event).unwrap();
        assert_eq!((c.flow_schema.as_str(), c.priority_level.as_str()), ("system-nodes", "system"));
        assert_eq!(c.flow, "system-nodes/system:node:a", "each node is a flow of its own");
        let joining = digest("system:bootstrap:abc", &["system:bootstrappers", "system:authenticated"], "create", "x");
        assert_eq!(level(&joining).as_deref(), Some("global-default"));
        let anonymous = RequestDigest {
            is_resource: false,
            path: "/version",
            ..digest("system:anonymous", &["system:unauthenticated"], "get", "")
        };
        assert_eq!(level(&anonymous).as_deref(), Some("catch-all"));
    }

    #[test]
    fn precedence_then_name_decides_and_rules_must_match_scope() {
        let mut fs = schemas();
        // A namespaced rule without namespaces never matches; clusterScope is needed for cluster-scoped kinds.
        let narrow = json!({"metadata": {"name": "a-narrow"}, "spec": {"priorityLevelConfiguration": {"name": "low"},
            "matchingPrecedence": 2, "rules": [{"subjects": [{"kind": "User", "user": {"name": "kumo-admin"}}],
            "resourceRules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"], "namespaces": ["team"]}]}]}});
        fs.push(serde_json::from_value(narrow).unwrap());
        let admin = ["system:masters", "system:authenticated"];
        let in_team = RequestDigest { namespace: Some("team"), ..digest("kumo-admin", &admin, "get", "configmaps") };
        assert_eq!(classify(&fs, &in_team).unwrap().priority_level, "exempt", "precedence 1 wins over 2");
        fs.retain(|f| f.metadata.name.as_deref() != Some("exempt"));
        assert_eq!(classify(&fs, &in_team).unwrap().priority_level, "low");
        let elsewhere = RequestDigest { namespace: Some("other"), ..in_team.clone() };
        assert_ne!(classify(&fs, &elsewhere).unwrap().priority_level, "low");
        let cluster = RequestDigest { namespace: None, ..in_team };
        assert_ne!(classify(&fs, &cluster).unwrap().priority_level, "low");
    }

    #[test]
    fn validation_names_the_offending_fields() {
        let fields = |kind: &str, obj: Value| validate(kind, &obj).into_iter().map(|c| c.field).collect::<Vec<_>>();
        for obj in builtin_flow_schemas() {
            assert_eq!(fields("FlowSchema", obj), Vec::<String>::new());
        }
        for obj in builtin_priority_levels() {
            assert_eq!(fields("PriorityLevelConfiguration", obj), Vec::<String>::new());
        }
        let fs = json!({"spec": {"matchingPrecedence": 0, "distinguisherMethod": {"type": "ByColour"},
            "rules": [{"subjects": [{"kind": "Robot"}, {"kind": "User"}]}]}});
        assert_eq!(
            fields("FlowSchema", fs),
            [
                "spec.priorityLevelConfiguration.name",
                "spec.matchingPrecedence",
                "spec.distinguisherMethod.type",
                "spec.rules[0].subjects[0].kind",
                "spec.rules[0].subjects[1].user.name"
            ]
        );
        let plc = json!({"spec": {"type": "Limited", "limited": {"limitResponse": {"type": "Queue",
            "queuing": {"queues": 4, "handSize": 8, "queueLengthLimit": 0}}}}});
        assert_eq!(
            fields("PriorityLevelConfiguration", plc),
            ["spec.limited.limitResponse.queuing.queueLengthLimit", "spec.limited.limitResponse.queuing.handSize"]
        );
    }

    #[test]
    fn level_limits_follow_the_spec_with_kubernetes_defaults() {
        let levels: Vec<PriorityLevelConfiguration> =
            builtin_priority_levels().into_iter().map(|v| serde_json::from_value(v).unwrap()).collect();
        let limits: Vec<(String, Limit)> = levels.iter().map(level_limit).collect();
        assert_eq!(limits[0], ("exempt".into(), Limit::Exempt));
        let q = Queuing { queues: 64, hand_size: 6, queue_length_limit: 50 };
        assert_eq!(limits[1], ("node-high".into(), Limit::Limited { shares: 40, queuing: Some(q) }));
        assert_eq!(limits[4], ("catch-all".into(), Limit::Limited { shares: 5, queuing: None }));
        let bare: PriorityLevelConfiguration =
            serde_json::from_value(json!({"metadata": {"name": "x"}, "spec": {"type": "Limited"}})).unwrap();
        let q = Queuing { queues: 64, hand_size: 8, queue_length_limit: 50 };
        assert_eq!(level_limit(&bare).1, Limit::Limited { shares: 30, queuing: Some(q) });
    }
}
