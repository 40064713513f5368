//! `kumo server`'s stores: the embedded one (the default) or etcd, and where Events go.

use anyhow::{bail, Context, Result};
use kumo_store::{EtcdConfig, EtcdStore, RedbStore, Store};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct StoreArgs {
    /// Keep everything in etcd v3 at these endpoints (comma-separated or repeated) instead of the embedded
    /// store; several replicas on one etcd form an HA control plane.
    #[arg(long = "etcd-servers", value_name = "URL[,URL...]", value_delimiter = ',')]
    etcd_servers: Vec<String>,
    /// Events in an etcd of their own, as Kubernetes' `/events#URL;URL` (the same TLS files and prefix).
    /// Without it Events share --etcd-servers; on the embedded store they always have a file of their own.
    #[arg(long = "etcd-servers-overrides", value_name = "/events#URL[;URL...]")]
    etcd_servers_overrides: Option<String>,
    /// CA certificate to verify etcd's serving certificates.
    #[arg(long)]
    etcd_cafile: Option<PathBuf>,
    /// Client certificate (and --etcd-keyfile) to authenticate to etcd.
    #[arg(long)]
    etcd_certfile: Option<PathBuf>,
    #[arg(long)]
    etcd_keyfile: Option<PathBuf>,
    /// Key prefix in etcd, so several clusters can share one etcd.
    #[arg(long, default_value = "/kumo")]
    etcd_prefix: String,
    /// Events are deleted this long after their last write, e.g. 1h, 30m.
    #[arg(long, default_value = "1h", value_parser = crate::parse_duration)]
    pub event_ttl: Duration,
}

/// The file of the embedded store, and the one Events are kept in.
pub const STORE_FILE: &str = "kumo.redb";
pub const EVENTS_FILE: &str = "events.redb";

impl StoreArgs {
    /// The main store, and Events' own store when they have one.
    pub async fn open(&self, data_dir: &Path) -> Result<(Arc<dyn Store>, Option<Arc<dyn Store>>)> {
        let overrides = self.events_endpoints()?;
        if self.etcd_servers.is_empty() {
            if overrides.is_some() {
                bail!(
                    "--etcd-servers-overrides needs --etcd-servers (the embedded store keeps Events in {EVENTS_FILE})"
                );
            }
            return Ok((open_embedded(&data_dir.join(STORE_FILE))?, Some(open_embedded(&data_dir.join(EVENTS_FILE))?)));
        }
        let main = self.etcd(self.etcd_servers.clone()).await?;
        let events = match overrides {
            Some(endpoints) => Some(self.etcd(endpoints).await?),
            None => None,
        };
        Ok((main, events))
    }

    /// The endpoints of `--etcd-servers-overrides`, which may only name Events.
    fn events_endpoints(&self) -> Result<Option<Vec<String>>> {
        let Some(spec) = &self.etcd_servers_overrides else { return Ok(None) };
        let Some((resource, urls)) = spec.split_once('#') else {
            bail!("--etcd-servers-overrides {spec:?}: expected /events#URL[;URL...]");
        };
        if !matches!(resource, "/events" | "events" | "events.k8s.io/events") {
            bail!("--etcd-servers-overrides {spec:?}: only Events can be stored apart (/events#URL[;URL...])");
        }
        let urls: Vec<String> = urls.split(';').filter(|u| !u.is_empty()).map(String::from).collect();
        if urls.is_empty() {
            bail!("--etcd-servers-overrides {spec:?}: no etcd URL after '#'");
        }
        Ok(Some(urls))
    }

    async fn etcd(&self, endpoints: Vec<String>) -> Result<Arc<dyn Store>> {
        let list = endpoints.join(",");
        let cfg = EtcdConfig {
            endpoints,
            ca_file: self.etcd_cafile.clone(),
            cert_file: self.etcd_certfile.clone(),
            key_file: self.etcd_keyfile.clone(),
            prefix: self.etcd_prefix.clone(),
            ..Default::default()
        };
        let store = EtcdStore::connect(cfg)
            .await
            .with_context(|| format!("connecting to etcd at {list} (is it running? are the TLS files right?)"))?;
        Ok(Arc::new(store))
    }
}

fn open_embedded(path: &Path) -> Result<Arc<dyn Store>> {
    let started = std::time::Instant::now();
    let store = RedbStore::open(path).with_context(|| format!("opening the store at {}", path.display()))?;
    // After a crash redb checks the whole file before it opens: the first thing to look at in a slow restart.
    tracing::info!("opened the store at {} in {:.2}s", path.display(), started.elapsed().as_secs_f64());
    // The store holds every object, Secrets included (sealed, but still): only this user may read it.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("making {} private", path.display()))?;
    Ok(Arc::new(store))
}
