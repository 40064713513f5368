//! Who may do what: the admin may do everything; a node only what running its own guests needs (as
//! Kubernetes' Node authorizer limits kubelets); a bootstrap token only asking to join. Pure: decisions that
//! depend on stored objects come back as a [`Decision`] naming the check to make.

use super::User;

/// One request, as the authorizer sees it.
#[derive(Clone, Debug, Default)]
pub struct Attributes<'a> {
    /// get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
    /// The request's label selector (list and watch).
    pub label_selector: Option<&'a str>,
}

#[derive(Debug, PartialEq)]
pub enum Decision {
    Allow,
    Deny(String),
    /// Allowed if the named VMI is bound to `node`.
    IfVmiOnNode {
        node: String,
    },
    /// Allowed if a VMI bound to `node`, in the request's namespace, refers to the named Secret or ConfigMap.
    IfUsedOnNode {
        node: String,
    },
    /// Allowed if the event in the body is about `node` or a VMI bound to it.
    IfEventAboutNode {
        node: String,
    },
    /// Allowed if the named PersistentVolume is kept by `node` (its files are there), or, when `or_used`, a VMI
    /// bound to `node` uses its claim.
    IfVolumeOfNode {
        node: String,
        or_used: bool,
    },
}

/// The label KubeVirt puts on a VMI naming its node; nodes may only list and watch VMIs selected by it.
pub use kumo_api::kubevirt::NODE_NAME_LABEL;
use kumo_api::provisioning::VOLUME_NODE_LABEL;
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

pub fn decide(user: &User, a: &Attributes) -> Decision {
    match user {
        User::Admin => Decision::Allow,
        User::Node(node) => node_rules(node, a),
        User::Bootstrap(_) => bootstrap_rules(a),
        User::Anonymous if is_cluster_info(a) => Decision::Allow,
        User::Anonymous => Decision::Deny(denial("system:anonymous", a, "authenticate first")),
    }
}

/// `kube-public/cluster-info`: public, as kubeadm publishes it, so a joining host can fetch the CA to check
/// against the hash it was given.
pub fn is_cluster_info(a: &Attributes) -> bool {
    a.verb == "get"
        && a.group.is_empty()
        && a.resource == "configmaps"
        && a.namespace == Some("kube-public")
        && a.name == Some("cluster-info")
}

fn read(verb: &str) -> bool {
    matches!(verb, "get" | "list" | "watch")
}

fn node_rules(node: &str, a: &Attributes) -> Decision {
    let own = a.name == Some(node);
    let write = matches!(a.verb, "create" | "update" | "patch");
    let allowed = match (a.group, a.resource) {
        // Its own Node object (and status); every Node may be read (routes to the others' pod networks).
        ("", "nodes") => read(a.verb) || (write && own),
        ("coordination.k8s.io", "leases") => {
            a.namespace == Some(NODE_LEASE_NAMESPACE) && own && (write || a.verb == "get")
        }
        ("kubevirt.io", "virtualmachineinstances") => match a.verb {
            "list" | "watch" => selects(a.label_selector, NODE_NAME_LABEL, node),
            "get" | "update" | "patch" => return Decision::IfVmiOnNode { node: node.into() },
            _ => false,
        },
        ("", "secrets") | ("", "configmaps") | ("", "persistentvolumeclaims") if a.verb == "get" => {
            return Decision::IfUsedOnNode { node: node.into() }
        }
        // The volumes whose files it keeps (it makes and removes them), and those its guests use.
        ("", "persistentvolumes") => match a.verb {
            "list" | "watch" => selects(a.label_selector, VOLUME_NODE_LABEL, node),
            "get" => return Decision::IfVolumeOfNode { node: node.into(), or_used: true },
            "update" | "patch" => return Decision::IfVolumeOfNode { node: node.into(), or_used: false },
            _ => false,
        },
        ("", "events") | ("events.k8s.io", "events") if write => {
            return Decision::IfEventAboutNode { node: node.into() }
        }
        ("", "namespaces") => a.verb == "get",
        ("apiextensions.k8s.io", "customresourcedefinitions") => read(a.verb),
        ("certificates.k8s.io", "certificatesigningrequests") => a.verb == "create" || read(a.verb),
        _ => false,
    };
    if allowed {
        Decision::Allow
    } else {
        Decision::Deny(denial(&format!("system:node:{node}"), a, &format!("node '{node}' may not do this")))
    }
}

fn bootstrap_rules(a: &Attributes) -> Decision {
    let allowed = match (a.group, a.resource) {
        ("certificates.k8s.io", "certificatesigningrequests") => a.verb == "create" || read(a.verb),
        ("", "configmaps") => is_cluster_info(a),
        _ => false,
    };
    if allowed {
        Decision::Allow
    } else {
        Decision::Deny(denial("system:bootstrap", a, "a bootstrap token may only request a node certificate"))
    }
}

/// Whether `selector` requires `label=node` (as `=` or `==`).
fn selects(selector: Option<&str>, label: &str, node: &str) -> bool {
    selector.into_iter().flat_map(|s| s.split(',')).any(|req| {
        let req = req.trim();
        let (k, v) = match req.split_once("==").or_else(|| req.split_once('=')) {
            Some(kv) => kv,
            None => return false,
        };
        k.trim() == label && v.trim() == node
    })
}

/// Kubernetes' wording: `User "X" cannot VERB resource "R" in API group "G" in the namespace "N": why`.
pub fn denial(user: &str, a: &Attributes, why: &str) -> String {
    let resource = match a.subresource {
        Some(s) => format!("{}/{s}", a.resource),
        None => a.resource.to_string(),
    };
    let scope = match a.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".into(),
    };
    format!("User \"{user}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}: {why}", a.verb, a.group)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at<'a>(
        verb: &'a str,
        group: &'a str,
        resource: &'a str,
        ns: Option<&'a str>,
        name: Option<&'a str>,
    ) -> Attributes<'a> {
        Attributes { verb, group, resource, namespace: ns, name, ..Default::default() }
    }

    #[test]
    fn nodes_touch_only_their_own() {
        let n = User::Node("a".into());
        assert_eq!(decide(&n, &at("patch", "", "nodes", None, Some("a"))), Decision::Allow);
        assert!(
            matches!(decide(&n, &at("patch", "", "nodes", None, Some("b"))), Decision::Deny(m) if m.contains("system:node:a"))
        );
        assert!(matches!(decide(&n, &at("delete", "", "nodes", None, Some("a"))), Decision::Deny(_)));
        assert_eq!(decide(&n, &at("list", "", "nodes", None, None)), Decision::Allow);
        assert_eq!(
            decide(&n, &at("update", "coordination.k8s.io", "leases", Some("kube-node-lease"), Some("a"))),
            Decision::Allow
        );
        assert!(matches!(
            decide(&n, &at("update", "coordination.k8s.io", "leases", Some("kube-node-lease"), Some("b"))),
            Decision::Deny(_)
        ));
        assert!(matches!(
            decide(&n, &at("update", "coordination.k8s.io", "leases", Some("kube-system"), Some("kumo-gc"))),
            Decision::Deny(_)
        ));
        let mut watch = at("watch", "kubevirt.io", "virtualmachineinstances", None, None);
        assert!(matches!(decide(&n, &watch), Decision::Deny(_)), "watching every VMI is refused");
        watch.label_selector = Some("kubevirt.io/nodeName=b");
        assert!(matches!(decide(&n, &watch), Decision::Deny(_)));
        watch.label_selector = Some("app=x,kubevirt.io/nodeName==a");
        assert_eq!(decide(&n, &watch), Decision::Allow);
        assert_eq!(
            decide(&n, &at("patch", "kubevirt.io", "virtualmachineinstances", Some("d"), Some("v"))),
            Decision::IfVmiOnNode { node: "a".into() }
        );
        assert!(matches!(
            decide(&n, &at("delete", "kubevirt.io", "virtualmachineinstances", Some("d"), Some("v"))),
            Decision::Deny(_)
        ));
        assert!(matches!(
            decide(&n, &at("create", "kubevirt.io", "virtualmachines", Some("d"), None)),
            Decision::Deny(_)
        ));
        assert!(matches!(decide(&n, &at("list", "", "secrets", Some("d"), None)), Decision::Deny(_)));
        assert_eq!(
            decide(&n, &at("get", "", "secrets", Some("d"), Some("s"))),
            Decision::IfUsedOnNode { node: "a".into() }
        );
        assert_eq!(
            decide(&n, &at("get", "", "persistentvolumeclaims", Some("d"), Some("c"))),
            Decision::IfUsedOnNode { node: "a".into() }
        );
        assert!(matches!(decide(&n, &at("list", "", "persistentvolumeclaims", Some("d"), None)), Decision::Deny(_)));
        let mut volumes = at("watch", "", "persistentvolumes", None, None);
        assert!(matches!(decide(&n, &volumes), Decision::Deny(_)), "watching every volume is refused");
        volumes.label_selector = Some("kumo.dev/volume-node=a");
        assert_eq!(decide(&n, &volumes), Decision::Allow);
        assert_eq!(
            decide(&n, &at("patch", "", "persistentvolumes", None, Some("pvc-1"))),
            Decision::IfVolumeOfNode { node: "a".into(), or_used: false }
        );
        assert!(matches!(decide(&n, &at("delete", "", "persistentvolumes", None, Some("pvc-1"))), Decision::Deny(_)));
    }

    #[test]
    fn bootstrap_tokens_may_only_ask_to_join() {
        let b = User::Bootstrap("abcdef".into());
        assert_eq!(
            decide(&b, &at("create", "certificates.k8s.io", "certificatesigningrequests", None, None)),
            Decision::Allow
        );
        assert_eq!(
            decide(&b, &at("get", "", "configmaps", Some("kube-public"), Some("cluster-info"))),
            Decision::Allow
        );
        assert!(matches!(decide(&b, &at("get", "", "configmaps", Some("kube-system"), Some("x"))), Decision::Deny(_)));
        assert!(matches!(decide(&b, &at("create", "", "nodes", None, None)), Decision::Deny(_)));
        assert_eq!(decide(&User::Admin, &at("delete", "", "nodes", None, Some("x"))), Decision::Allow);
    }
}
