//! Turning a request path and query into what is being asked: which group/version/resource, namespace,
//! name and subresource, and the list/watch/write options.

use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq, Default)]
pub struct ResourcePath {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// Path segments after the subresource, which only KubeVirt's subresources have (`portforward/22/tcp`,
    /// `evacuate/cancel`, `vnc/screenshot`).
    pub subpath: Vec<String>,
    /// The deprecated `/watch/` path prefix was used.
    pub legacy_watch: bool,
}

/// What a path names: discovery documents or a resource path.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// `/api` or `/apis`.
    Root {
        legacy: bool,
    },
    /// `/apis/{group}`.
    Group(String),
    /// `/api/v1` or `/apis/{group}/{version}`.
    GroupVersion {
        group: String,
        version: String,
    },
    Resource(ResourcePath),
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

pub fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<String> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).map(decode).collect();
    let (group, version, rest) = match segs.first().map(String::as_str) {
        Some("api") => match segs.len() {
            1 => return Some(Target::Root { legacy: true }),
            _ => (String::new(), segs[1].clone(), &segs[2..]),
        },
        Some("apis") => match segs.len() {
            1 => return Some(Target::Root { legacy: false }),
            2 => return Some(Target::Group(segs[1].clone())),
            _ => (segs[1].clone(), segs[2].clone(), &segs[3..]),
        },
        _ => return None,
    };
    if rest.is_empty() {
        return Some(Target::GroupVersion { group, version });
    }
    let (legacy_watch, rest) = match rest.first().map(String::as_str) {
        Some("watch") => (true, &rest[1..]),
        _ => (false, rest),
    };
    let mut p = ResourcePath { group, version, legacy_watch, ..Default::default() };
    match rest {
        [ns, name] if ns == "namespaces" => {
            p.resource = "namespaces".into();
            p.name = Some(name.clone());
        }
        [ns, name, sub] if ns == "namespaces" && (sub == "status" || sub == "finalize") => {
            p.resource = "namespaces".into();
            p.name = Some(name.clone());
            p.subresource = Some(sub.clone());
        }
        [ns, nsname, res, tail @ ..] if ns == "namespaces" => {
            p.namespace = Some(nsname.clone());
            p.resource = res.clone();
            set_name(&mut p, tail)?;
        }
        [res, tail @ ..] => {
            p.resource = res.clone();
            set_name(&mut p, tail)?;
        }
        [] => return None,
    }
    Some(Target::Resource(p))
}

fn set_name(p: &mut ResourcePath, tail: &[String]) -> Option<()> {
    match tail {
        [] => {}
        [name] => p.name = Some(name.clone()),
        [name, sub] => {
            p.name = Some(name.clone());
            p.subresource = Some(sub.clone());
        }
        [name, sub, rest @ ..] if p.group == crate::kubevirt::GROUP || node_proxy(p, sub) => {
            p.name = Some(name.clone());
            p.subresource = Some(sub.clone());
            p.subpath = rest.to_vec();
        }
        _ => return None,
    }
    Some(())
}

/// Whether `sub` of this path is a Node's `proxy`: `nodes/{name}/proxy/{path}` reaches the node agent's
/// endpoints (see [`crate::nodes::proxy`]).
fn node_proxy(p: &ResourcePath, sub: &str) -> bool {
    p.group.is_empty() && p.resource == "nodes" && sub == "proxy"
}

impl ResourcePath {
    /// `nodes/{name}/proxy/...`.
    pub fn is_node_proxy(&self) -> bool {
        self.subresource.as_deref().is_some_and(|s| node_proxy(self, s))
    }
}

/// Query parameters (the last value wins, as in Kubernetes).
#[derive(Clone, Debug, Default)]
pub struct Query(pub HashMap<String, String>);

impl Query {
    pub fn parse(q: Option<&str>) -> Self {
        Query(url::form_urlencoded::parse(q.unwrap_or("").as_bytes()).into_owned().collect())
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|s| !s.is_empty())
    }
    pub fn flag(&self, k: &str) -> bool {
        matches!(self.0.get(k).map(String::as_str), Some("true" | "1"))
    }
    pub fn int(&self, k: &str) -> Result<Option<i64>, String> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| format!("invalid value for {k}: {v:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(p: &str) -> ResourcePath {
        match parse_path(p) {
            Some(Target::Resource(r)) => r,
            other => panic!("{p}: {other:?}"),
        }
    }

    #[test]
    fn paths() {
        assert_eq!(parse_path("/api"), Some(Target::Root { legacy: true }));
        assert_eq!(parse_path("/apis/x.io"), Some(Target::Group("x.io".into())));
        assert_eq!(parse_path("/api/v1"), Some(Target::GroupVersion { group: "".into(), version: "v1".into() }));
        let r = res("/api/v1/namespaces/default/configmaps/a");
        assert_eq!(
            (r.namespace.as_deref(), r.resource.as_str(), r.name.as_deref()),
            (Some("default"), "configmaps", Some("a"))
        );
        let r = res("/api/v1/namespaces/foo");
        assert_eq!((r.namespace, r.resource.as_str(), r.name.as_deref()), (None, "namespaces", Some("foo")));
        let r = res("/api/v1/namespaces/foo/finalize");
        assert_eq!((r.resource.as_str(), r.subresource.as_deref()), ("namespaces", Some("finalize")));
        let r = res("/apis/kubevirt.io/v1/namespaces/d/virtualmachines/vm/status");
        assert_eq!((r.group.as_str(), r.subresource.as_deref()), ("kubevirt.io", Some("status")));
        let r = res("/api/v1/watch/namespaces/d/configmaps");
        assert!(r.legacy_watch);
        assert_eq!(r.resource, "configmaps");
        let r = res("/api/v1/nodes");
        assert_eq!((r.namespace, r.name), (None, None));
        assert!(parse_path("/healthz").is_none());
        let r = res("/apis/subresources.kubevirt.io/v1/namespaces/d/virtualmachineinstances/v/portforward/22/tcp");
        assert_eq!(
            (r.subresource.as_deref(), r.subpath.as_slice()),
            (Some("portforward"), &["22".into(), "tcp".into()][..])
        );
        assert!(parse_path("/api/v1/namespaces/d/pods/p/status/extra").is_none(), "only KubeVirt's have sub-paths");
        let r = res("/api/v1/nodes/n1/proxy/metrics");
        assert_eq!((r.subresource.as_deref(), r.subpath.as_slice()), (Some("proxy"), &["metrics".into()][..]));
    }

    #[test]
    fn query_flags() {
        let q = Query::parse(Some("watch=true&limit=5&labelSelector=a%3Db"));
        assert!(q.flag("watch"));
        assert_eq!(q.int("limit").unwrap(), Some(5));
        assert_eq!(q.get("labelSelector"), Some("a=b"));
        assert!(!Query::parse(Some("watch=false")).flag("watch"));
        assert!(Query::parse(Some("watch=1")).flag("watch"));
    }
}
