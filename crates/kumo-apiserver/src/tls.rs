//! The control plane's PKI and the admin kubeconfig: a CA and admin token created by the first replica and
//! shared with the others through the store (sealed with the cluster secret), and a serving certificate per
//! replica signed by that CA — so one kubeconfig works against every replica.

use crate::crypt::ClusterSecret;
use anyhow::{Context, Result};
use kumo_store::Store;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct Pki {
    pub ca_pem: String,
    /// The CA's private key: it signs serving certificates and, for joined nodes, client certificates.
    pub ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub token: String,
}

/// Where the cluster's shared credentials live in the store (outside `/registry/`: never served or watched).
pub const BOOTSTRAP_KEY: &str = "/bootstrap/pki";

/// What every replica shares: sealed in the store with a key derived from the cluster secret.
#[derive(serde::Serialize, serde::Deserialize)]
struct Shared {
    ca_cert: String,
    ca_key: String,
    admin_token: String,
}

/// Writes a file only its owner may read (mode 0600): keys, tokens, kubeconfigs.
pub fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut f, contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// The cluster's CA and admin token, from the store (created by the first replica to start), and a serving
/// certificate for this replica signed by that CA with `hosts` as extra names. A server upgraded from a
/// version that kept its PKI in `data_dir/pki` brings that CA and token into the store, so its existing
/// kubeconfigs keep working.
pub async fn load_or_create(
    store: &dyn Store,
    secret: &ClusterSecret,
    data_dir: &Path,
    hosts: &[String],
) -> Result<Pki> {
    let key = secret.derive("bootstrap");
    let shared = loop {
        if let Some(kv) = store.get(BOOTSTRAP_KEY).await.context("reading the cluster's credentials from the store")? {
            let plain = key.open(&kv.value, BOOTSTRAP_KEY.as_bytes()).map_err(|_| {
                anyhow::anyhow!(
                    "the cluster in this store was created with another cluster secret: start this server with \
                     that secret (--cluster-secret-file FILE, e.g. the cluster-secret file in the first server's \
                     data directory)"
                )
            })?;
            break serde_json::from_slice::<Shared>(&plain).context("decoding the cluster's credentials")?;
        }
        let fresh = match legacy_pki(data_dir)? {
            Some(s) => s,
            None => new_ca()?,
        };
        let sealed = key.seal(&serde_json::to_vec(&fresh)?, BOOTSTRAP_KEY.as_bytes());
        match store.create(BOOTSTRAP_KEY, sealed).await {
            Ok(_) => break fresh,
            // Another replica created the cluster first: use its credentials.
            Err(kumo_store::Error::AlreadyExists(_)) => continue,
            Err(e) => return Err(e).context("storing the cluster's credentials"),
        }
    };
    let ca_key = KeyPair::from_pem(&shared.ca_key).context("the cluster CA key")?;
    let issuer = Issuer::from_ca_cert_pem(&shared.ca_cert, &ca_key).context("the cluster CA certificate")?;
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into(), "kumo".into()];
    names.extend(hosts.iter().cloned());
    names.sort();
    names.dedup();
    let server_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, "kumo-apiserver");
    params.not_after = rcgen::date_time_ymd(2046, 1, 1);
    let server_cert = params.signed_by(&server_key, &issuer)?;
    Ok(Pki {
        ca_pem: shared.ca_cert,
        ca_key_pem: shared.ca_key,
        cert_pem: server_cert.pem(),
        key_pem: server_key.serialize_pem(),
        token: shared.admin_token,
    })
}

/// The cluster CA as a signer of client certificates (joined nodes; the API server itself towards nodes).
#[derive(Clone)]
pub struct ClusterCa {
    pub cert_pem: String,
    key_pem: String,
}

impl ClusterCa {
    pub fn new(pki: &Pki) -> Self {
        ClusterCa { cert_pem: pki.ca_pem.clone(), key_pem: pki.ca_key_pem.clone() }
    }

    /// Signs a PEM certificate request as a client certificate with exactly `cn` and `orgs` as its subject
    /// (whatever else the request asked for), valid for `days`.
    pub fn sign_client_request(&self, csr_pem: &str, cn: &str, orgs: &[&str], days: i64) -> Result<String> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).context("parsing the request")?;
        csr.params = client_params(cn, orgs, days)?;
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &ca_key)?;
        Ok(csr.signed_by(&issuer)?.pem())
    }

    /// A new key and client certificate (PEM cert, PEM key).
    pub fn issue_client(&self, cn: &str, orgs: &[&str], days: i64) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &ca_key)?;
        let cert = client_params(cn, orgs, days)?.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn client_params(cn: &str, orgs: &[&str], days: i64) -> Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    for o in orgs {
        p.distinguished_name.push(DnType::OrganizationName, *o);
    }
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time_now();
    p.not_before = now - std::time::Duration::from_secs(300);
    p.not_after = now + std::time::Duration::from_secs(days.max(1) as u64 * 86_400);
    Ok(p)
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn new_ca() -> Result<Shared> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::CommonName, "kumo-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca_params.not_after = rcgen::date_time_ymd(2046, 1, 1);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    Ok(Shared { ca_cert: ca_cert.pem(), ca_key: ca_key.serialize_pem(), admin_token: random_token() })
}

/// The CA and token an earlier kumo kept in `data_dir/pki`, if any.
fn legacy_pki(data_dir: &Path) -> Result<Option<Shared>> {
    let pki = data_dir.join("pki");
    let files = ["ca.crt", "ca.key", "token"].map(|f| pki.join(f));
    if !files.iter().all(|f| f.exists()) {
        return Ok(None);
    }
    let read = |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    Ok(Some(Shared {
        ca_cert: read(&files[0])?,
        ca_key: read(&files[1])?,
        admin_token: read(&files[2])?.trim().into(),
    }))
}

fn random_token() -> String {
    use rand::Rng;
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// TLS for the API: this replica's serving certificate; client certificates are optional (bearer tokens are
/// the other way in) but, when presented, must chain to the cluster CA.
pub fn server_config(pki: &Pki) -> Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut pki.cert_pem.as_bytes()).collect::<Result<_, _>>()?;
    let key = rustls_pemfile::private_key(&mut pki.key_pem.as_bytes())?.context("no private key in server.key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls_pemfile::certs(&mut pki.ca_pem.as_bytes()) {
        roots.add(ca?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// An admin kubeconfig for `server` (e.g. `https://127.0.0.1:6443`).
pub fn kubeconfig(pki: &Pki, server: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(pki.ca_pem.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kumo\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: kumo-admin\n  user:\n    token: {token}\ncontexts:\n- name: kumo\n  context:\n    cluster: kumo\n    user: kumo-admin\n    namespace: default\ncurrent-context: kumo\n",
        token = pki.token
    )
}

pub fn write_kubeconfig(dir: &Path, pki: &Pki, server: &str) -> Result<PathBuf> {
    let path = dir.join("kubeconfig");
    let tmp = dir.join("kubeconfig.tmp");
    write_private(&tmp, &kubeconfig(pki, server))?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}
