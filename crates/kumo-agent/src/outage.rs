//! Telling a control-plane outage from this host's own isolation. Fencing exists so that a host the cluster
//! cannot see does not keep guests the cluster restarts elsewhere. When *every* API server replica answers
//! but says its store is unreachable (etcd lost quorum), nobody can restart anything anywhere: the guests are
//! safest left running, as Kubernetes leaves pods running through a control-plane outage. So a renewal that
//! failed that way still holds the fence off; any other failure (a replica unreachable, a timeout) does not.

use std::time::Duration;

/// Whether every replica in `servers` answers `/readyz` with "storage is unavailable".
pub async fn control_plane_without_store(servers: &[String], cluster_ca_pem: &str) -> bool {
    if servers.is_empty() {
        return false;
    }
    for server in servers {
        if !store_down_at(server, cluster_ca_pem).await {
            return false;
        }
    }
    true
}

async fn store_down_at(server: &str, ca_pem: &str) -> bool {
    let Ok(url) = server.parse() else { return false };
    let mut cfg = kube::Config::new(url);
    cfg.root_cert =
        rustls_pemfile::certs(&mut ca_pem.as_bytes()).map(|c| c.map(|c| c.to_vec())).collect::<Result<_, _>>().ok();
    cfg.connect_timeout = Some(Duration::from_secs(2));
    cfg.read_timeout = Some(Duration::from_secs(5));
    let Ok(client) = kube::Client::try_from(cfg) else { return false };
    let req = http::Request::get("/readyz").body(Vec::new()).expect("a valid request");
    match tokio::time::timeout(Duration::from_secs(6), client.request_text(req)).await {
        Ok(Err(kube::Error::Api(e))) => e.code == 503 && e.message.contains("storage is unavailable"),
        _ => false,
    }
}
