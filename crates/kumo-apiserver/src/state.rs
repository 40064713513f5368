//! The API server's state: the store, the served kinds, the watch cache and credentials, shared by the HTTP
//! handlers, the REST layer and the built-in controllers; and seeding it at start-up.

use crate::objects::Objects;
use crate::registry::Registry;
use crate::rest::admission;
use crate::tls::ClusterCa;
use anyhow::Context;

/// The common name node agents expect of the API server's client certificate (their console endpoint).
pub const NODE_CLIENT_CN: &str = "kumo-apiserver";
use crate::watch_cache::WatchCache;
use kumo_api::{ApiError, ResourceDef};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Everything a handler needs; one per server.
pub struct ApiServer {
    pub objects: Objects,
    pub registry: Arc<Registry>,
    /// The watch cache of the main store.
    pub cache: Arc<WatchCache>,
    /// The watch cache of Events' store: `cache` itself unless Events are stored apart.
    pub events_cache: Arc<WatchCache>,
    pub token: String,
    /// Signs node client certificates (joining hosts) and the API server's own client certificate.
    pub ca: ClusterCa,
    /// This replica's client certificate towards node agents (PEM cert, PEM key): `CN=kumo-apiserver`.
    pub node_client: (String, String),
    pub bookmark_interval: Duration,
    pub metrics: crate::metrics::Metrics,
    /// API Priority and Fairness: seats and queues per priority level.
    pub flowcontrol: crate::flowcontrol::FlowControl,
}

impl ApiServer {
    pub fn new(
        objects: Objects,
        registry: Arc<Registry>,
        (cache, events_cache): (Arc<WatchCache>, Arc<WatchCache>),
        token: String,
        ca: ClusterCa,
        config: &crate::Config,
    ) -> Self {
        let bookmark_interval = config.bookmark_interval;
        let node_client = ca
            .issue_client(NODE_CLIENT_CN, &["system:masters"], 365)
            .expect("the cluster CA signs a client certificate");
        ApiServer {
            objects,
            registry,
            cache,
            events_cache,
            token,
            ca,
            node_client,
            bookmark_interval,
            metrics: Default::default(),
            flowcontrol: crate::flowcontrol::FlowControl::new(
                config.max_requests_inflight + config.max_mutating_requests_inflight,
            ),
        }
    }

    /// The watch cache that follows `key` (or every key under a prefix).
    pub fn cache_for(&self, key: &str) -> &Arc<WatchCache> {
        if crate::objects::is_event_key(key) {
            &self.events_cache
        } else {
            &self.cache
        }
    }

    /// The kind stored under `key` (`/registry/{group}/{plural}/...`), at its storage version.
    pub fn def_for_key(&self, key: &str) -> Option<Arc<ResourceDef>> {
        let mut parts = key.strip_prefix("/registry/")?.splitn(3, '/');
        let group = match parts.next()? {
            "core" => "",
            g => g,
        };
        let plural = parts.next()?;
        let versions = self.registry.versions_of(group, plural);
        versions.iter().find(|d| d.version == d.storage_version).or(versions.first()).cloned()
    }
}

/// Creates the system namespaces and serves every stored CRD.
pub async fn bootstrap(api: &Arc<ApiServer>) -> anyhow::Result<()> {
    let ns_def = api.registry.get("", "v1", "namespaces").expect("built-in");
    for ns in kumo_api::builtin::SYSTEM_NAMESPACES {
        if api.objects.try_get(&ns_def, None, ns).await?.is_none() {
            let mut obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            admission::stamp_new(&mut obj);
            admission::on_create(api, &ns_def, &mut obj)?;
            match api.objects.create(&ns_def, &obj).await {
                Ok(_) => {}
                Err(e) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    publish_cluster_info(api).await?;
    seed_storage_classes(api).await?;
    let crd_def = api.registry.get("apiextensions.k8s.io", "v1", "customresourcedefinitions").expect("built-in");
    install_crds(api, &crd_def).await?;
    let (crds, _) = api.objects.list_all(&crd_def, None).await?;
    for crd in crds {
        api.registry.put_crd(&crd);
    }
    seed_flavors(api).await?;
    drop_stray_events(api).await?;
    Ok(())
}

/// Events left in the main store by a version that kept them there, once Events have a store of their own:
/// they would never be served or expire, so they go (they are only Events; new ones are written apart).
async fn drop_stray_events(api: &ApiServer) -> anyhow::Result<()> {
    if !api.objects.events_apart() {
        return Ok(());
    }
    let store = &api.objects.store;
    let mut dropped = 0;
    loop {
        let req =
            kumo_store::RangeRequest { prefix: crate::objects::EVENTS_PREFIX.into(), limit: 500, ..Default::default() };
        let page = store.range(req).await?;
        for kv in &page.kvs {
            match store.delete(&kv.key, None).await {
                Ok(_) | Err(kumo_store::Error::NotFound(_)) => dropped += 1,
                Err(e) => return Err(e.into()),
            }
        }
        if !page.more {
            break;
        }
    }
    if dropped > 0 {
        tracing::info!(dropped, "deleted Events an earlier version kept in the main store (Events now have their own)");
    }
    Ok(())
}

/// KubeVirt's common cluster instancetypes and preferences, when the cluster has none of a kind (an
/// administrator who replaced them keeps their own).
async fn seed_flavors(api: &Arc<ApiServer>) -> anyhow::Result<()> {
    use kumo_api::instancetype as it;
    let kinds = [
        ("virtualmachineclusterinstancetypes", it::seed_instancetypes()),
        ("virtualmachineclusterpreferences", it::seed_preferences()),
    ];
    for (plural, objects) in kinds {
        let def = api.registry.get(it::GROUP, it::VERSION, plural).context("flavor CRDs are served")?;
        let (existing, _) = api.objects.list_all(&def, None).await?;
        if !existing.is_empty() {
            continue;
        }
        for mut obj in objects {
            admission::stamp_new(&mut obj);
            match api.objects.create(&def, &obj).await {
                Err(e) if e.code != 409 => return Err(e.into()),
                _ => {}
            }
        }
    }
    Ok(())
}

/// `kube-public/cluster-info`, readable without credentials (as kubeadm publishes it): the cluster CA, which a
/// joining host checks against the `--ca-cert-hash` it was given before trusting anything else.
async fn publish_cluster_info(api: &Arc<ApiServer>) -> anyhow::Result<()> {
    let def = api.registry.get("", "v1", "configmaps").expect("built-in");
    if api.objects.try_get(&def, Some("kube-public"), "cluster-info").await?.is_some() {
        return Ok(());
    }
    let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cluster-info", "namespace": "kube-public"},
        "data": {"ca.crt": api.ca.cert_pem}});
    admission::stamp_new(&mut cm);
    match api.objects.create(&def, &cm).await {
        Err(e) if e.code != 409 => Err(e.into()),
        _ => Ok(()),
    }
}

/// `CDIConfig/config` with this replica's upload proxy URL (where `virtctl image-upload` finds it), unless an
/// administrator set `spec.uploadProxyURLOverride`, which is published instead.
pub async fn publish_upload_proxy(api: &Arc<ApiServer>, server_url: &str) -> anyhow::Result<()> {
    let Some(def) = api.registry.get(kumo_api::cdi::GROUP, kumo_api::cdi::VERSION, "cdiconfigs") else {
        return Ok(());
    };
    let current = api.objects.try_get(&def, None, "config").await?;
    let over = current.as_ref().and_then(|c| c.pointer("/spec/uploadProxyURLOverride")).and_then(Value::as_str);
    let url = over.map(str::to_string).unwrap_or_else(|| format!("{server_url}{}", crate::upload::PREFIX));
    match current {
        None => {
            let mut obj = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "CDIConfig",
                "metadata": {"name": "config"}, "spec": {}, "status": {"uploadProxyURL": url}});
            admission::stamp_new(&mut obj);
            match api.objects.create(&def, &obj).await {
                Err(e) if e.code != 409 => return Err(e.into()),
                _ => {}
            }
        }
        Some(mut c) if c.pointer("/status/uploadProxyURL").and_then(Value::as_str) != Some(url.as_str()) => {
            let rv = crate::objects::parse_rv(kumo_api::meta::resource_version(&c))?;
            c["status"] = json!({"uploadProxyURL": url});
            match api.objects.update(&def, &c, rv).await {
                Err(e) if e.code != 409 => return Err(e.into()),
                _ => {}
            }
        }
        Some(_) => {}
    }
    Ok(())
}

/// kumo's storage classes (`local`, the default, and `shared`), when the cluster has no StorageClass at all: a
/// cluster whose administrator replaced them keeps its own.
async fn seed_storage_classes(api: &Arc<ApiServer>) -> anyhow::Result<()> {
    let def = api.registry.get("storage.k8s.io", "v1", "storageclasses").expect("built-in");
    let (existing, _) = api.objects.list_all(&def, None).await?;
    if !existing.is_empty() {
        return Ok(());
    }
    for mut class in kumo_api::provisioning::seed_classes() {
        admission::stamp_new(&mut class);
        match api.objects.create(&def, &class).await {
            Err(e) if e.code != 409 => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}

/// Installs (or upgrades) the CRDs kumo itself serves: KubeVirt's kinds. Replicas starting together race here
/// harmlessly: a write that loses (409) is retried against what the other replica wrote.
async fn install_crds(api: &Arc<ApiServer>, crd_def: &ResourceDef) -> anyhow::Result<()> {
    for want in kumo_api::kubevirt::crds() {
        let mut attempts = 0;
        while let Err(e) = install_crd(api, crd_def, want.clone()).await {
            attempts += 1;
            if e.code != 409 || attempts >= 5 {
                return Err(e.into());
            }
        }
    }
    Ok(())
}

async fn install_crd(api: &Arc<ApiServer>, crd_def: &ResourceDef, mut crd: Value) -> Result<(), ApiError> {
    let name = kumo_api::meta::name(&crd).to_string();
    match api.objects.try_get(crd_def, None, &name).await? {
        None => {
            admission::stamp_new(&mut crd);
            admission::on_create(api, crd_def, &mut crd)?;
            api.objects.create(crd_def, &crd).await?;
        }
        Some(mut current)
            if current.get("spec") != crd.get("spec")
                || current.pointer("/metadata/annotations") != crd.pointer("/metadata/annotations") =>
        {
            let rv = crate::objects::parse_rv(kumo_api::meta::resource_version(&current))?;
            current["spec"] = crd["spec"].clone();
            kumo_api::meta::set_meta(
                &mut current,
                "annotations",
                crd.pointer("/metadata/annotations").cloned().unwrap_or_default(),
            );
            current["status"] = kumo_api::crd::established_status(&current, &kumo_api::meta::now_rfc3339());
            api.objects.update(crd_def, &current, rv).await?;
        }
        Some(_) => {}
    }
    Ok(())
}

/// Keeps this replica's registry in step with the stored CRDs (created or deleted through any replica), for as
/// long as the process runs. Serving a kind never waits for the leader.
pub fn follow_crds(api: Arc<ApiServer>) {
    tokio::spawn(async move {
        let def = api.registry.get("apiextensions.k8s.io", "v1", "customresourcedefinitions").expect("built-in");
        loop {
            if let Err(e) = follow_once(&api, &def).await {
                tracing::warn!("following CRDs (relisting): {e}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

async fn follow_once(api: &ApiServer, def: &ResourceDef) -> anyhow::Result<()> {
    use futures::StreamExt;
    let (crds, rev) = api.objects.list_all(def, None).await?;
    let names: std::collections::HashSet<String> = crds.iter().map(|c| kumo_api::meta::name(c).to_string()).collect();
    for crd in &crds {
        api.registry.put_crd(crd);
    }
    for gone in api.registry.crd_names().into_iter().filter(|n| !names.contains(n)) {
        api.registry.remove_crd(&gone);
    }
    let mut events = api.cache.watch(crate::gc::CRD_PREFIX, rev).await.map_err(|g| anyhow::anyhow!("watch: {g:?}"))?;
    while let Some(ev) = events.next().await {
        let ev = ev.map_err(|g| anyhow::anyhow!("watch fell behind: {g:?}"))?;
        let object = ev.object();
        if ev.deleted {
            api.registry.remove_crd(kumo_api::meta::name(&object));
        } else {
            api.registry.put_crd(&object);
        }
    }
    anyhow::bail!("watch ended")
}
