//! The control plane's PKI and the admin kubeconfig: a CA generated on first start, a serving certificate
//! signed by it, and a bearer token — all kept in the data directory so restarts keep them.

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub token: String,
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
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

/// Loads the PKI from `dir/pki`, generating it on first start. `hosts` are the serving certificate's names.
pub fn load_or_create(dir: &Path, hosts: &[String]) -> Result<Pki> {
    let pki = dir.join("pki");
    let files = ["ca.crt", "ca.key", "server.crt", "server.key", "token"].map(|f| pki.join(f));
    if files.iter().all(|f| f.exists()) {
        let read = |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
        return Ok(Pki {
            ca_pem: read(&files[0])?,
            cert_pem: read(&files[2])?,
            key_pem: read(&files[3])?,
            token: read(&files[4])?.trim().to_string(),
        });
    }
    std::fs::create_dir_all(&pki).with_context(|| format!("creating {}", pki.display()))?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::CommonName, "kumo-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca_params.not_after = rcgen::date_time_ymd(2046, 1, 1);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into(), "kumo".into()];
    names.extend(hosts.iter().cloned());
    names.sort();
    names.dedup();
    let server_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, "kumo-apiserver");
    params.not_after = rcgen::date_time_ymd(2046, 1, 1);
    let server_cert = params.signed_by(&server_key, &issuer)?;
    let token = random_token();

    let out = Pki { ca_pem: ca_cert.pem(), cert_pem: server_cert.pem(), key_pem: server_key.serialize_pem(), token };
    write_private(&files[1], &ca_key.serialize_pem())?;
    write_private(&files[3], &out.key_pem)?;
    write_private(&files[4], &out.token)?;
    write_private(&files[2], &out.cert_pem)?;
    // The CA certificate is written last: its presence marks the PKI complete.
    write_private(&files[0], &out.ca_pem)?;
    Ok(out)
}

fn random_token() -> String {
    use rand::Rng;
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn server_config(pki: &Pki) -> Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut pki.cert_pem.as_bytes()).collect::<Result<_, _>>()?;
    let key = rustls_pemfile::private_key(&mut pki.key_pem.as_bytes())?.context("no private key in server.key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
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
