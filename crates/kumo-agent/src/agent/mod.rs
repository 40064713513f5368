//! The agent's main loop: register the Node, heartbeat its Lease, and reconcile every VMI scheduled here
//! ([`reconcile`]), watching only those (by the `kubevirt.io/nodeName` label). Guests outlive the agent: on restart it reattaches to running QEMU processes.

pub(crate) mod guest;
pub(crate) use guest::agent_of as guest_agent_of;
mod hotplug;
pub mod podnet;
mod probes;
mod reconcile;
mod status;

use crate::hypervisor::qemu::{Qemu, QemuHypervisor};
use crate::hypervisor::{Guest, Hypervisor};
use crate::image::{ImageCache, RegistryConfig};
use crate::net::{Ipam, NodeNet};
use crate::node::{self, HostInfo};
use crate::qemu;
use crate::volumes::{keeper, VolumeDirs};
use anyhow::{Context, Result};
use futures::StreamExt;
use kube::runtime::controller::Controller;
use kube::runtime::events::Reporter;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use kumo_api::kubevirt::{VirtualMachineInstance, NODE_NAME_LABEL};
use kumo_events::Recorder;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// How this agent runs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The Node name (default: the host name).
    pub node_name: Option<String>,
    /// The address other nodes reach this one at (the Node's InternalIP, the next hop of their routes to this
    /// node's pods); default: [`node::detect_node_ip`].
    pub node_ip: Option<std::net::Ipv4Addr>,
    /// Per-VMI directories (disks, ISOs, QEMU sockets) and the IPAM state live here.
    pub state_dir: PathBuf,
    /// Base images of containerDisks, one per digest.
    pub image_cache: PathBuf,
    /// Where this node's `local` volumes live (default: STATE_DIR/volumes).
    pub volume_dir: PathBuf,
    /// The directory every node mounts from the same place, for `shared` volumes.
    pub shared_volume_dir: Option<PathBuf>,
    pub registry: RegistryConfig,
    pub qemu_binary: Option<PathBuf>,
    /// A kernel to boot under KVM to find out whether KVM really works here.
    pub probe_kernel: Option<PathBuf>,
    /// QEMU drops to this uid/gid after opening its files.
    pub run_as: Option<(u32, u32)>,
    pub sandbox: bool,
    /// Memory kept back for the host when reporting allocatable.
    pub reserved_memory: u64,
    pub heartbeat: Duration,
    /// Kill this host's guests when the node Lease has not been renewed for this long, even if the agent is
    /// dead (see [`crate::fence`]). None: no fencing (a single machine, where nothing can fail over).
    pub fencing_period: Option<Duration>,
    /// Every API server replica's URL (to recognise a control-plane outage; see [`crate::outage`]).
    pub api_servers: Vec<String>,
    /// The cluster CA (PEM): the console endpoint serves only the API server's client certificate, issued by it.
    pub cluster_ca: Option<String>,
}

impl AgentConfig {
    pub fn new(state_dir: PathBuf) -> Self {
        AgentConfig {
            node_name: None,
            node_ip: None,
            image_cache: state_dir.join("images"),
            volume_dir: state_dir.join("volumes"),
            shared_volume_dir: None,
            state_dir,
            registry: RegistryConfig::default(),
            qemu_binary: None,
            probe_kernel: None,
            run_as: Some((65534, 65534)),
            sandbox: true,
            reserved_memory: 512 << 20,
            heartbeat: Duration::from_secs(10),
            fencing_period: None,
            api_servers: vec![],
            cluster_ca: None,
        }
    }
}

/// A guest this agent runs.
pub(crate) struct LocalVm {
    pub vm: Box<dyn Guest>,
    /// Stops what serves the guest besides itself (its DHCP server).
    pub stop_services: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    /// Set while the agent itself stops the guest, so the exit is not reported as a guest shutdown.
    pub stopping: std::sync::atomic::AtomicBool,
    /// The pod-network interface status reports: name, pod IP, MAC.
    pub iface: Option<(String, String, String)>,
}

impl LocalVm {
    /// The QMP connection of a QEMU guest; simulated guests have none.
    pub fn qmp(&self) -> Result<&qemu::QmpClient, String> {
        self.vm.qemu().map(|q| q.qmp()).ok_or_else(|| "a simulated guest has no QMP".to_string())
    }
}

pub(crate) struct Agent {
    pub client: kube::Client,
    pub cfg: AgentConfig,
    pub node: String,
    /// What runs the guests: QEMU, or the simulated hypervisor.
    pub hv: Arc<dyn Hypervisor>,
    /// Base images of containerDisks (also what the volume keeper imports from registries with).
    pub images: Arc<ImageCache>,
    pub vms: Mutex<HashMap<String, Arc<LocalVm>>>,
    /// The probers of guests with readiness or liveness probes, by VMI uid.
    pub probers: std::sync::Mutex<HashMap<String, probes::Prober>>,
    pub recorder: Recorder,
    pub volume_dirs: VolumeDirs,
    /// What this node's watch delivered (simulated nodes report it, so tests can check the server's selection).
    pub seen: Option<Arc<crate::simulate::Seen>>,
    /// This node's VMIs as its watch has them, once it runs (what `/metrics` reports on).
    pub vmi_cache: std::sync::OnceLock<kube::runtime::reflector::Store<VirtualMachineInstance>>,
}

/// Runs the agent until the process ends.
pub async fn run(client: kube::Client, cfg: AgentConfig) -> Result<()> {
    let qemu = match &cfg.qemu_binary {
        Some(p) => p.clone(),
        None => qemu::find_qemu_binary()
            .context("qemu-system-x86_64 not found: install it (apt-get install qemu-system-x86 qemu-utils)")?,
    };
    let version = qemu::qemu_version(&qemu).await?;
    let probe = cfg.probe_kernel.clone().or_else(default_probe_kernel);
    let accel = qemu::detect_accel(&qemu, probe.as_deref()).await;
    let accel_name = accel.as_str();
    let mut host = HostInfo::gather(cfg.node_name.clone(), accel_name, &version.to_string());
    if let Some(ip) = cfg.node_ip {
        host.internal_ip = ip.to_string();
    }
    host.shared_volumes = cfg.shared_volume_dir.is_some();
    std::fs::create_dir_all(&cfg.volume_dir).with_context(|| format!("creating {}", cfg.volume_dir.display()))?;
    host.volume_bytes = crate::volumes::filesystem_bytes(&cfg.volume_dir).ok();
    let bind: std::net::SocketAddr = format!("{}:0", host.internal_ip).parse().context("node address")?;
    let ca = cfg.cluster_ca.clone().context(
        "the console endpoint needs the cluster CA to check the API server by: use a kubeconfig that names it",
    )?;
    let cell: crate::console::AgentCell = Arc::default();
    let console = crate::console::serve(bind, cfg.state_dir.join("vmis"), &ca, cell.clone()).await?;
    host.console = Some((format!("https://{}", console.addr), console.fingerprint));
    // Rounded up: the control plane must never wait less than the watchdog does.
    host.fencing_secs = cfg.fencing_period.map(|p| p.as_secs() + u64::from(p.subsec_nanos() > 0));
    tracing::info!(node = %host.name, accel = accel_name, qemu = %version, "kumo agent starting");
    let ready_since = node::register(&client, &host, cfg.reserved_memory).await?;
    let (fence, every) = match cfg.fencing_period {
        Some(period) => {
            let exe = std::env::current_exe().context("locating the kumo binary for the fencing watchdog")?;
            // Renew often enough that a few lost renewals never reach the fencing period.
            let fence = crate::fence::Fence::arm(&cfg.state_dir, period, &exe, cfg.api_servers.clone(), ca.clone())?;
            (Some(fence), cfg.heartbeat.min(period / 4))
        }
        None => (None, cfg.heartbeat),
    };
    tokio::spawn(node::heartbeat(client.clone(), host.clone(), cfg.reserved_memory, ready_since, every, fence));
    std::fs::create_dir_all(cfg.state_dir.join("vmis"))
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    // The node network (bridge, forwarding, NAT, routes to other nodes' pods) from this Node's pod CIDR, once
    // per start; each VMI's setup then only adds its own part.
    let pod_cidr = podnet::wait_for_pod_cidr(&client, &host.name).await?;
    let node_net = NodeNet::new(&host.name, pod_cidr)?;
    podnet::start(client.clone(), host.name.clone(), node_net.clone()).await?;
    let volume_dirs = VolumeDirs { local: cfg.volume_dir.clone(), shared: cfg.shared_volume_dir.clone() };
    let images = Arc::new(ImageCache::new(cfg.image_cache.clone()));
    let hv = QemuHypervisor {
        client: client.clone(),
        state_dir: cfg.state_dir.clone(),
        accel,
        qemu,
        images: images.clone(),
        registry: cfg.registry.clone(),
        node_net,
        ipam: Ipam::for_cidr(cfg.state_dir.join("ipam"), pod_cidr)?,
        volume_dirs: volume_dirs.clone(),
        run_as: cfg.run_as,
        sandbox: cfg.sandbox,
    };
    let agent = Arc::new(Agent::new(client, host.name.clone(), Arc::new(Qemu(Arc::new(hv))), images, volume_dirs, cfg));
    let _ = cell.set(agent.clone());
    tokio::spawn(keeper::run(agent.clone()));
    serve(agent).await;
    Ok(())
}

impl Agent {
    pub(crate) fn new(
        client: kube::Client,
        node: String,
        hv: Arc<dyn Hypervisor>,
        images: Arc<ImageCache>,
        volume_dirs: VolumeDirs,
        cfg: AgentConfig,
    ) -> Agent {
        let reporter = Reporter { controller: "kumo-agent".into(), instance: Some(node.clone()) };
        Agent {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            node,
            hv,
            images,
            vms: Mutex::new(HashMap::new()),
            probers: Default::default(),
            volume_dirs,
            cfg,
            seen: None,
            vmi_cache: Default::default(),
        }
    }
}

/// What every node runs, real or simulated: sweeping what vanished VMIs left, and reconciling this node's VMIs.
/// A watch of this node's objects, ended by the server after a time of this node's own: watches made together
/// (every agent after an API server restart) would otherwise all end and resume together every five minutes,
/// ten thousand replays at once.
pub(crate) fn watch_config(node: &str) -> watcher::Config {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    node.hash(&mut h);
    // Under kube's 295 s read timeout, as its own default (290 s) is.
    watcher::Config::default().timeout(150 + (h.finish() % 140) as u32)
}

pub(crate) async fn serve(agent: Arc<Agent>) {
    // Only this node's VMIs, selected by the server: KubeVirt's node label, which the scheduler sets when it
    // binds and keeps on the VMI until it is gone (deleting and finished ones included, so their cleanup is
    // seen here). A node's credential may list and watch VMIs only with this selector.
    let mine = format!("{NODE_NAME_LABEL}={}", agent.node);
    let api = Api::<VirtualMachineInstance>::all(agent.client.clone());
    // Cached without managedFields: the agent never reads them, and they were most of a VMI's size (thousands
    // of simulated nodes share one process).
    let (store, writer) = kube::runtime::reflector::store();
    let _ = agent.vmi_cache.set(store.clone());
    // Leftovers of VMIs that vanished while this agent was away, once the cache has its first list and every
    // half minute after (a VMI deleted while this host was cut off never shows up in the watch again, but is
    // gone from the cache once the watch lists again). The cache, not a list: at 10,000 nodes a list each per
    // half minute was hundreds of lists a second.
    // Listed is said by the stream itself: kube's `Store::wait_until_ready` wakes only the last of several
    // waiters, and the controller below waits on it too.
    let (sweeper, cached) = (agent.clone(), store.clone());
    let (listed_tx, mut listed) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if listed.wait_for(|l| *l).await.is_err() {
            return;
        }
        loop {
            reconcile::sweep_orphans(&sweeper, &cached).await;
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    });
    // Listed at any recent revision (resourceVersion=0), as kubelets list their pods: served from the API
    // server's index without waiting for its cache to catch up, which matters when every agent relists at once.
    // With backoff: an error yields nothing below, so a watch failing at once must wait before trying again.
    let vmis = watcher(api, watch_config(&agent.node).labels(&mine).any_semantic())
        .default_backoff()
        .modify(kumo_reflect::slim);
    // Each change once the cache holds it, and every VMI once a (re)list is whole (a VMI bound here while the
    // watch was down would otherwise never start). Listed is said then too: a sweep against a cache still empty
    // would take every guest for an orphan.
    let vmis = kumo_reflect::settled_with(store.clone(), kube::runtime::reflector(writer, vmis), move || {
        listed_tx.send_replace(true);
    });
    Controller::for_shared_stream(vmis, store)
        .run(reconcile::reconcile, reconcile::error_policy, agent)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!("agent reconcile: {e}");
            }
        })
        .await;
}

/// A kernel to probe KVM with: the host's, or the test guest's from the image cache.
fn default_probe_kernel() -> Option<PathBuf> {
    let boot = std::fs::read_dir("/boot").ok().and_then(|d| {
        d.filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz")))
    });
    boot.or_else(|| {
        let home = std::env::var("HOME").ok()?;
        let p = PathBuf::from(home).join(".cache/kumo/images/vmlinuz");
        p.exists().then_some(p)
    })
}
