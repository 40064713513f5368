//! Joining hosts, as `kubeadm token create` and `kubeadm join` do: the admin creates a short-lived bootstrap
//! token; a new host fetches the cluster CA from the public `kube-public/cluster-info`, trusts it only if it
//! matches the `--ca-cert-hash` it was given, then asks for its own client certificate with the token (a
//! CertificateSigningRequest the API server signs for valid tokens). The token is never used again, and the
//! host never holds the admin token.

use anyhow::{bail, Context, Result};
use base64::Engine;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use sha2::Digest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";

/// A new bootstrap token (`ID.SECRET`), stored as kubeadm stores it, valid for `ttl`.
pub async fn create_token(client: &kube::Client, ttl: Duration, description: &str) -> Result<(String, String)> {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let mut pick =
        |n: usize| -> String { (0..n).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect() };
    let (id, secret) = (pick(6), pick(16));
    let expires = chrono::Utc::now() + chrono::Duration::from_std(ttl).context("--ttl is too long")?;
    let expiration = expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let data: BTreeMap<String, String> = [
        ("token-id", id.as_str()),
        ("token-secret", secret.as_str()),
        ("expiration", expiration.as_str()),
        ("usage-bootstrap-authentication", "true"),
        ("description", description),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let token = Secret {
        metadata: ObjectMeta { name: Some(format!("bootstrap-token-{id}")), ..Default::default() },
        type_: Some("bootstrap.kubernetes.io/token".into()),
        string_data: Some(data),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), "kube-system")
        .create(&PostParams::default(), &token)
        .await
        .context("storing the bootstrap token (are you using the admin kubeconfig?)")?;
    Ok((format!("{id}.{secret}"), expiration))
}

/// `sha256:<hex>` of the CA certificate's SubjectPublicKeyInfo, as kubeadm's `--discovery-token-ca-cert-hash`.
pub fn ca_cert_hash(ca_pem: &str) -> Result<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).context("the CA is not PEM")?;
    let cert = pem.parse_x509().context("the CA is not an X.509 certificate")?;
    let digest = sha2::Sha256::digest(cert.tbs_certificate.subject_pki.raw);
    Ok(format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// The node kubeconfig in `state_dir`, joining the cluster first if this host has not yet.
pub async fn ensure_joined(
    servers: &[String],
    token: &str,
    ca_hash: &str,
    node: &str,
    state_dir: &Path,
) -> Result<PathBuf> {
    let kubeconfig = state_dir.join("kubeconfig");
    let name_file = state_dir.join("node-name");
    if kubeconfig.exists() {
        let joined = std::fs::read_to_string(&name_file).unwrap_or_default();
        if joined.trim() != node {
            bail!(
                "{} holds the credential of node {:?}, not {node:?}: use that --node-name, or another --state-dir",
                state_dir.display(),
                joined.trim()
            );
        }
        return Ok(kubeconfig);
    }
    let server = servers.iter().flat_map(|s| s.split(',')).next().context("--server is required to join")?.trim();
    eprintln!("join: fetching the cluster CA from {server}");
    let ca_pem = cluster_ca(server).await?;
    let got = ca_cert_hash(&ca_pem)?;
    if !got.eq_ignore_ascii_case(ca_hash.trim()) {
        bail!(
            "the cluster CA at {server} has hash {got}, not the --ca-cert-hash given ({ca_hash}): refusing to trust it"
        );
    }
    eprintln!("join: CA verified; requesting a client certificate for node {node}");
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "system:nodes");
    let request = params.serialize_request(&key)?.pem()?;
    let client = client_for(server, &ca_pem, Auth::Token(token))?;
    let csrs: Api<CertificateSigningRequest> = Api::all(client);
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta { generate_name: Some(format!("node-csr-{node}-")), ..Default::default() },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request.into_bytes()),
            signer_name: KUBELET_CLIENT_SIGNER.into(),
            usages: Some(vec!["digital signature".into(), "client auth".into()]),
            ..Default::default()
        },
        status: None,
    };
    let created = match csrs.create(&PostParams::default(), &csr).await {
        Ok(c) => c,
        Err(kube::Error::Api(e)) if e.code == 401 => {
            bail!("the join token was refused (401: {}): create a new one with `kumo token create`", e.message)
        }
        Err(kube::Error::Api(e)) => bail!("the cluster refused to let this host join ({}): {}", e.code, e.message),
        Err(e) => return Err(e).context("requesting a node certificate"),
    };
    let cert = created.status.and_then(|s| s.certificate).map(|c| c.0);
    let Some(cert) = cert.filter(|c| !c.is_empty()) else {
        bail!(
            "the certificate request {} was not signed at once (was the token usable for authentication?)",
            created.metadata.name.unwrap_or_default()
        )
    };
    let cert = String::from_utf8(cert).context("the issued certificate is not PEM")?;
    std::fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    kumo_apiserver::tls::write_private(&kubeconfig, &node_kubeconfig(server, &ca_pem, &cert, &key.serialize_pem()))?;
    kumo_apiserver::tls::write_private(&name_file, node)?;
    eprintln!("join: node {node} joined; its credential is in {}", kubeconfig.display());
    Ok(kubeconfig)
}

/// The CA in `kube-public/cluster-info`, fetched without trusting the server (the hash check follows).
async fn cluster_ca(server: &str) -> Result<String> {
    let client = client_for(server, "", Auth::None)?;
    let cm = Api::<ConfigMap>::namespaced(client, "kube-public")
        .get("cluster-info")
        .await
        .with_context(|| format!("reading kube-public/cluster-info from {server}"))?;
    cm.data.and_then(|d| d.get("ca.crt").cloned()).context("cluster-info has no ca.crt")
}

enum Auth<'a> {
    None,
    Token(&'a str),
}

fn client_for(server: &str, ca_pem: &str, auth: Auth) -> Result<kube::Client> {
    let mut cfg = kube::Config::new(server.parse().with_context(|| format!("--server {server:?} is not a URL"))?);
    if ca_pem.is_empty() {
        cfg.accept_invalid_certs = true;
    } else {
        let (_, pem) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).context("the CA is not PEM")?;
        cfg.root_cert = Some(vec![pem.contents]);
    }
    if let Auth::Token(t) = auth {
        cfg.auth_info.token = Some(t.to_string().into());
    }
    Ok(kube::Client::try_from(cfg)?)
}

fn node_kubeconfig(server: &str, ca: &str, cert: &str, key: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kumo\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: node\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: kumo\n  context:\n    cluster: kumo\n    user: node\ncurrent-context: kumo\n",
        b64(ca),
        b64(cert),
        b64(key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_hash_is_of_the_public_key_info() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let a = p.clone().self_signed(&key).unwrap().pem();
        let b = p.self_signed(&key).unwrap().pem();
        let h = ca_cert_hash(&a).unwrap();
        assert!(h.starts_with("sha256:") && h.len() == 7 + 64, "{h}");
        assert_eq!(h, ca_cert_hash(&b).unwrap(), "the same key gives the same hash");
        let other = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap()
            .pem();
        assert_ne!(h, ca_cert_hash(&other).unwrap());
    }
}
