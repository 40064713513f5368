//! Authentication and authorization. Who is calling: the admin (the cluster's admin token), a joined node (a
//! client certificate the cluster CA issued, `CN=system:node:NAME, O=system:nodes`), or a host joining with a
//! bootstrap token (`ID.SECRET`, a `bootstrap.kubernetes.io/token` Secret in kube-system, as kubeadm has). What
//! each may do is [`authorize`].

pub mod authorize;

pub use authorize::{decide, Attributes, Decision};

use crate::state::ApiServer;
use base64::Engine;
use kumo_api::kubevirt::VirtualMachineInstance;
use kumo_api::{meta, ApiError};
use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
pub enum User {
    Admin,
    /// A joined node, by name.
    Node(String),
    /// A bootstrap token, by its id.
    Bootstrap(String),
    /// No credentials: may only read the public cluster-info (the CA a joining host pins by its hash).
    Anonymous,
}

impl User {
    /// The user name Kubernetes would report.
    pub fn name(&self) -> String {
        match self {
            User::Admin => "kumo-admin".into(),
            User::Node(n) => format!("system:node:{n}"),
            User::Bootstrap(id) => format!("system:bootstrap:{id}"),
            User::Anonymous => "system:anonymous".into(),
        }
    }

    /// The groups Kubernetes would report.
    pub fn groups(&self) -> Vec<&'static str> {
        match self {
            User::Admin => vec!["system:masters", "system:authenticated"],
            User::Node(_) => vec!["system:nodes", "system:authenticated"],
            User::Bootstrap(_) => vec!["system:bootstrappers", "system:authenticated"],
            User::Anonymous => vec!["system:unauthenticated"],
        }
    }
}

/// Authorizes `a` for `user`, looking up what the node rules depend on. `body` is the request's (for events).
pub async fn check(api: &ApiServer, user: &User, a: &Attributes<'_>, body: &[u8]) -> Result<(), ApiError> {
    let allowed = match decide(user, a) {
        Decision::Allow => true,
        Decision::Deny(why) => return Err(ApiError::forbidden(why)),
        Decision::IfVmiOnNode { node } => vmi_on_node(api, a.namespace, a.name.unwrap_or(""), &node).await?,
        Decision::IfUsedOnNode { node } => used_on_node(api, a, &node).await?,
        Decision::IfEventAboutNode { node } => event_about_node(api, a, body, &node).await?,
        Decision::IfVolumeOfNode { node, or_used } => volume_of_node(api, a, &node, or_used).await?,
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::forbidden(authorize::denial(
            &user.name(),
            a,
            "no relationship found between this node and this object",
        )))
    }
}

fn vmis(api: &ApiServer) -> Result<std::sync::Arc<kumo_api::ResourceDef>, ApiError> {
    api.registry
        .get("kubevirt.io", "v1", "virtualmachineinstances")
        .ok_or_else(|| ApiError::internal("kubevirt.io CRDs missing"))
}

async fn vmi_on_node(api: &ApiServer, ns: Option<&str>, name: &str, node: &str) -> Result<bool, ApiError> {
    let Some(vmi) = api.objects.try_get(&*vmis(api)?, ns, name).await? else { return Ok(false) };
    let vmi: VirtualMachineInstance = serde_json::from_value(vmi).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(vmi.node_name() == Some(node))
}

/// A Secret or ConfigMap that a VMI bound to `node` (in the same namespace) uses for cloud-init, or a
/// PersistentVolumeClaim it uses.
async fn used_on_node(api: &ApiServer, a: &Attributes<'_>, node: &str) -> Result<bool, ApiError> {
    let name = a.name.unwrap_or("");
    let claims = a.resource == "persistentvolumeclaims";
    let (all, _) = api.objects.list_all(&*vmis(api)?, a.namespace).await?;
    Ok(all.into_iter().filter_map(|v| serde_json::from_value::<VirtualMachineInstance>(v).ok()).any(|vmi| {
        vmi.node_name() == Some(node)
            && vmi.spec.volumes.iter().flatten().any(|vol| {
                if claims {
                    return vol.claim_name() == Some(name);
                }
                [&vol.cloud_init_no_cloud, &vol.cloud_init_config_drive].into_iter().flatten().any(|src| {
                    [&src.secret_ref, &src.network_data_secret_ref].into_iter().flatten().any(|r| r.name == name)
                })
            })
    }))
}

/// A PersistentVolume whose files `node` keeps, or (`or_used`) whose claim a VMI bound to `node` uses.
async fn volume_of_node(api: &ApiServer, a: &Attributes<'_>, node: &str, or_used: bool) -> Result<bool, ApiError> {
    let def = api.registry.get("", "v1", "persistentvolumes").ok_or_else(|| ApiError::internal("no volumes"))?;
    let Some(pv) = api.objects.try_get(&def, None, a.name.unwrap_or("")).await? else { return Ok(false) };
    let label = pv.pointer("/metadata/labels").and_then(|l| l.get(kumo_api::provisioning::VOLUME_NODE_LABEL));
    if label.and_then(Value::as_str) == Some(node) {
        return Ok(true);
    }
    let claim_ref = pv.pointer("/spec/claimRef");
    let field = |k: &str| claim_ref.and_then(|r| r.get(k)).and_then(Value::as_str);
    let (Some(ns), Some(claim), true) = (field("namespace"), field("name"), or_used) else { return Ok(false) };
    let claim_attrs = Attributes {
        verb: "get",
        resource: "persistentvolumeclaims",
        namespace: Some(ns),
        name: Some(claim),
        ..Default::default()
    };
    used_on_node(api, &claim_attrs, node).await
}

/// An event (new, or the stored one being patched) about `node` or a VMI bound to it.
async fn event_about_node(api: &ApiServer, a: &Attributes<'_>, body: &[u8], node: &str) -> Result<bool, ApiError> {
    let mut event: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if a.verb != "create" {
        let def = api.registry.get(a.group, "v1", "events").ok_or_else(|| ApiError::internal("events missing"))?;
        event = api.objects.try_get(&def, a.namespace, a.name.unwrap_or("")).await?.unwrap_or(Value::Null);
    }
    // core/v1 names it involvedObject, events.k8s.io/v1 regarding; stored events are core/v1.
    let about = event.get("involvedObject").or_else(|| event.get("regarding")).cloned().unwrap_or(Value::Null);
    let field = |k: &str| about.get(k).and_then(Value::as_str).unwrap_or("");
    Ok(match field("kind") {
        "Node" => field("name") == node,
        "VirtualMachineInstance" => {
            let ns = Some(field("namespace")).filter(|n| !n.is_empty()).or(a.namespace);
            vmi_on_node(api, ns, field("name"), node).await?
        }
        _ => false,
    })
}

/// The identity in a verified client certificate's subject: a node when it says `system:node:NAME` in the
/// `system:nodes` organization.
pub fn user_from_cert(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject.iter_common_name().next()?.as_str().ok()?;
    let in_nodes = subject.iter_organization().any(|o| o.as_str().ok() == Some("system:nodes"));
    let name = cn.strip_prefix("system:node:")?;
    (in_nodes && !name.is_empty()).then(|| User::Node(name.to_string()))
}

/// The user a bearer token names, if any: the admin token, or a valid, unexpired bootstrap token.
pub async fn user_from_token(api: &ApiServer, token: &str) -> Option<User> {
    if kumo_api::bearer::matches(Some(&format!("Bearer {token}")), &api.token) {
        return Some(User::Admin);
    }
    let (id, secret) = parse_bootstrap_token(token)?;
    let def = api.registry.get("", "v1", "secrets")?;
    let stored = api.objects.try_get(&def, Some("kube-system"), &format!("bootstrap-token-{id}")).await.ok()??;
    bootstrap_token_valid(&stored, id, secret, &meta::now_rfc3339()).then(|| User::Bootstrap(id.to_string()))
}

/// `ID.SECRET` with Kubernetes' shape: 6 and 16 characters of `[a-z0-9]`.
pub fn parse_bootstrap_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

/// Whether a bootstrap-token Secret accepts `secret` for authentication at `now` (RFC 3339).
pub fn bootstrap_token_valid(stored: &Value, id: &str, secret: &str, now: &str) -> bool {
    let field = |k: &str| -> Option<String> {
        let b64 = stored.pointer(&format!("/data/{k}"))?.as_str()?;
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).ok()?).ok()
    };
    let expired = field("expiration").is_some_and(|exp| {
        match (chrono::DateTime::parse_from_rfc3339(&exp), chrono::DateTime::parse_from_rfc3339(now)) {
            (Ok(exp), Ok(now)) => exp <= now,
            _ => true, // an expiration we cannot read is not honoured as "never"
        }
    });
    stored["type"] == "bootstrap.kubernetes.io/token"
        && field("token-id").as_deref() == Some(id)
        && field("usage-bootstrap-authentication").as_deref() == Some("true")
        && field("token-secret").is_some_and(|s| kumo_api::bearer::matches(Some(&format!("Bearer {secret}")), &s))
        && !expired
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn bootstrap_tokens_are_checked_like_kubeadms() {
        assert_eq!(parse_bootstrap_token("abcdef.0123456789abcdef"), Some(("abcdef", "0123456789abcdef")));
        for bad in ["abcdef0123456789abcdef", "ABCDEF.0123456789abcdef", "abcde.0123456789abcdef", "abcdef.0123"] {
            assert_eq!(parse_bootstrap_token(bad), None, "{bad}");
        }
        let secret = |exp: Option<&str>| {
            let mut data = json!({"token-id": b64("abcdef"), "token-secret": b64("0123456789abcdef"),
                "usage-bootstrap-authentication": b64("true")});
            if let Some(e) = exp {
                data["expiration"] = json!(b64(e));
            }
            json!({"type": "bootstrap.kubernetes.io/token", "data": data})
        };
        let now = "2026-01-02T00:00:00Z";
        assert!(bootstrap_token_valid(&secret(None), "abcdef", "0123456789abcdef", now));
        assert!(bootstrap_token_valid(&secret(Some("2026-01-03T00:00:00Z")), "abcdef", "0123456789abcdef", now));
        assert!(!bootstrap_token_valid(&secret(Some("2026-01-01T00:00:00Z")), "abcdef", "0123456789abcdef", now));
        assert!(!bootstrap_token_valid(&secret(None), "abcdef", "0123456789abcdeX", now));
        let mut wrong_type = secret(None);
        wrong_type["type"] = json!("Opaque");
        assert!(!bootstrap_token_valid(&wrong_type, "abcdef", "0123456789abcdef", now));
    }

    #[test]
    fn node_certificates_name_their_node() {
        let cert = |cn: &str, org: &str| {
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            p.distinguished_name.push(rcgen::DnType::OrganizationName, org);
            p.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().der().to_vec()
        };
        assert_eq!(user_from_cert(&cert("system:node:a", "system:nodes")), Some(User::Node("a".into())));
        assert_eq!(user_from_cert(&cert("system:node:a", "system:masters")), None);
        assert_eq!(user_from_cert(&cert("alice", "system:nodes")), None);
    }
}
