//! Credentials other than the admin's, got the way their holders get them.

use crate::Server;
use anyhow::{bail, ensure, Context, Result};
use base64::Engine;
use std::path::PathBuf;

impl Server {
    /// One field of the admin kubeconfig, by JSONPath (e.g. `.users[0].user.token`).
    fn kubeconfig_field(&self, path: &str) -> Result<String> {
        let v = self.kubectl_ok(&["config", "view", "--raw", "-o", &format!("jsonpath={{{path}}}")])?;
        ensure!(!v.trim().is_empty(), "the kubeconfig has no {path}");
        Ok(v.trim().to_string())
    }

    /// The admin's bearer token, as the kubeconfig holds it.
    pub fn admin_token(&self) -> Result<String> {
        self.kubeconfig_field(".users[0].user.token")
    }

    /// The cluster CA (PEM), as the kubeconfig holds it: what clients other than kubectl trust the server by.
    pub fn ca_pem(&self) -> Result<Vec<u8>> {
        let b64 = self.kubeconfig_field(".clusters[0].cluster.certificate-authority-data")?;
        base64::engine::general_purpose::STANDARD.decode(b64).context("the kubeconfig's CA is not base64")
    }

    /// A kubeconfig holding node `node`'s own credential (`CN=system:node:NODE, O=system:nodes`), obtained as a
    /// joining host obtains it: a bootstrap token from `kumo token create`, and a CSR made with it, which the
    /// server signs.
    pub fn node_kubeconfig(&self, node: &str) -> Result<PathBuf> {
        let out = self.kumo(&["token", "create"]);
        ensure!(out.status.success(), "kumo token create: {}", String::from_utf8_lossy(&out.stderr));
        let token = String::from_utf8(out.stdout)?.trim().to_string();
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("system:node:{node}"));
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "system:nodes");
        let request = params.serialize_request(&key)?.pem()?;
        let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
        let csr = serde_json::json!({
            "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"name": format!("node-{node}")},
            "spec": {"request": b64(request.as_bytes()), "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                     "usages": ["digital signature", "client auth"]},
        });
        let out = self.kubectl_stdin(&["--token", &token, "create", "-f", "-"], &csr.to_string())?;
        ensure!(
            out.status.success(),
            "creating the CSR with the bootstrap token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cert = self.kubectl_ok(&["get", "csr", &format!("node-{node}"), "-o", "jsonpath={.status.certificate}"])?;
        if cert.trim().is_empty() {
            bail!("the server did not sign node {node}'s CSR");
        }
        let ca = self.kubeconfig_field(".clusters[0].cluster.certificate-authority-data")?;
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kumo\n  cluster:\n    server: {}\n    certificate-authority-data: {}\n\
             users:\n- name: {node}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n\
             contexts:\n- name: {node}\n  context: {{cluster: kumo, user: {node}}}\ncurrent-context: {node}\n",
            self.url(),
            ca.trim(),
            cert.trim(),
            b64(key.serialize_pem().as_bytes()),
        );
        let path = self.dir.path().join(format!("node-{node}.kubeconfig"));
        std::fs::write(&path, kubeconfig).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}
