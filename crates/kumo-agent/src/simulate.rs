//! SIMULATED nodes, for measuring the control plane: `kumo agent --simulate --nodes N` runs N of them in one
//! process. Each is a real Node (labelled [`SIMULATED_LABEL`]) with its own API connection, Lease heartbeat,
//! capacity and pod CIDR, watching only its own VMIs through the agent's real reconcile loop; only the
//! hypervisor is simulated ([`crate::hypervisor::simulated`]).

use crate::agent::{serve, Agent, AgentConfig};
use crate::hypervisor::simulated::{SimulatedHypervisor, ACCEL};
use crate::image::ImageCache;
use crate::node::{self, HostInfo};
use crate::volumes::VolumeDirs;
use anyhow::Result;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Set on every simulated Node: real agents route to no simulated node's pods, and tools can tell them apart.
pub const SIMULATED_LABEL: &str = "kumo.dev/simulated";

#[derive(Clone, Debug)]
pub struct Simulation {
    pub nodes: usize,
    /// Nodes are named `<prefix><index>`, index from `first`.
    pub prefix: String,
    pub first: usize,
    /// How long a simulated guest takes to "boot".
    pub boot_delay: Duration,
    pub cpus: u64,
    pub memory_bytes: u64,
    pub heartbeat: Duration,
    /// Nodes registering at once (start-up is paced, as a fleet's agents do not all start in one instant).
    pub joining: usize,
    /// Where to write, every second, what each node's watch delivered (JSON: node → VMI uids, and how many
    /// VMIs bound elsewhere it was sent).
    pub report: Option<std::path::PathBuf>,
}

/// The VMIs one node's watch delivered.
#[derive(Default, Debug)]
pub struct Seen(std::sync::Mutex<(std::collections::BTreeSet<String>, u64)>);

impl Seen {
    pub fn record(&self, uid: &str, own: bool) {
        let mut s = self.0.lock().expect("seen");
        if own {
            s.0.insert(uid.to_string());
        } else {
            s.1 += 1;
        }
    }

    fn json(&self) -> serde_json::Value {
        let s = self.0.lock().expect("seen");
        serde_json::json!({"vmis": s.0, "foreign": s.1})
    }
}

impl Default for Simulation {
    fn default() -> Self {
        Simulation {
            nodes: 1,
            prefix: "sim-".into(),
            first: 0,
            boot_delay: Duration::from_secs(1),
            cpus: 64,
            memory_bytes: 256 << 30,
            heartbeat: Duration::from_secs(10),
            joining: 32,
            report: None,
        }
    }
}

/// A simulated host: made-up facts, and an InternalIP from the benchmarking range 198.18.0.0/15 (RFC 2544),
/// which nothing is ever sent to.
pub fn host(sim: &Simulation, index: usize) -> HostInfo {
    let name = format!("{}{index}", sim.prefix);
    HostInfo {
        cpus: sim.cpus,
        memory_bytes: sim.memory_bytes,
        kernel: "simulated".into(),
        os_image: "kumo simulated node".into(),
        machine_id: format!("{:032x}", index),
        boot_id: format!("{:032x}", index),
        internal_ip: format!("198.18.{}.{}", (index >> 8) & 0xff, index & 0xff),
        accel: ACCEL.into(),
        qemu_version: "simulated".into(),
        console: None,
        fencing_secs: None,
        shared_volumes: false,
        volume_bytes: None,
        name,
    }
}

/// Runs the simulated nodes until the process ends, saying how many have joined as they do.
/// A client of one HTTP/2 connection. kube's own speaks HTTP/1.1, where a node's watch holds a connection and
/// its other requests another: two or more descriptors a node on the server, past the 20,000 a process may
/// hold on these machines at 10,000 simulated nodes.
fn h2_client(config: &kube::Config) -> Result<kube::Client> {
    use kube::client::ConfigExt;
    // The connector offers h2 by ALPN itself (and refuses a config that already names protocols).
    let tls = config.rustls_client_config()?;
    let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http2().build();
    let http =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).http2_only(true).build(https);
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .map_err(tower::BoxError::from)
        .service(http);
    Ok(kube::Client::new(service, config.default_namespace.clone()))
}

pub async fn run(config: kube::Config, sim: Simulation) -> Result<()> {
    let joined = Arc::new(AtomicUsize::new(0));
    let seen: Vec<(String, Arc<Seen>)> =
        (sim.first..sim.first + sim.nodes).map(|i| (format!("{}{i}", sim.prefix), Arc::default())).collect();
    if let Some(path) = sim.report.clone() {
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                let all: serde_json::Map<String, serde_json::Value> =
                    seen.iter().map(|(n, s)| (n.clone(), s.json())).collect();
                // Written whole, then renamed: a reader never sees half a report.
                let tmp = path.with_extension("tmp");
                let write = std::fs::write(&tmp, serde_json::Value::Object(all).to_string())
                    .and_then(|()| std::fs::rename(&tmp, &path));
                if let Err(e) = write {
                    tracing::warn!("writing {}: {e}", path.display());
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    let gate = Arc::new(tokio::sync::Semaphore::new(sim.joining.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, (_, seen)) in (sim.first..).zip(seen) {
        // A client each: every node has its own connection, as separate hosts would.
        let client = h2_client(&config)?;
        let (sim, joined, gate) = (sim.clone(), joined.clone(), gate.clone());
        tasks.spawn(async move {
            let h = host(&sim, index);
            let name = h.name.clone();
            if let Err(e) = node(client, h, &sim, &joined, &gate, seen).await {
                tracing::error!(node = %name, "simulated node stopped: {e:#}");
            }
        });
    }
    let total = sim.nodes;
    let mut said = 0;
    loop {
        tokio::select! {
            done = tasks.join_next() => {
                if done.is_none() {
                    anyhow::bail!("every simulated node stopped");
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(2)) => {
                let now = joined.load(Ordering::Relaxed);
                if now != said {
                    said = now;
                    eprintln!("simulated nodes: {now}/{total} joined");
                }
            }
        }
    }
}

async fn node(
    client: kube::Client,
    h: HostInfo,
    sim: &Simulation,
    joined: &AtomicUsize,
    gate: &tokio::sync::Semaphore,
    seen: Arc<Seen>,
) -> Result<()> {
    let permit = gate.acquire().await?;
    let ready_since = node::register(&client, &h, 0).await?;
    tokio::spawn(node::heartbeat(client.clone(), h.clone(), 0, ready_since, sim.heartbeat, None));
    let pod_cidr = crate::agent::podnet::wait_for_pod_cidr(&client, &h.name).await?;
    drop(permit);
    joined.fetch_add(1, Ordering::Relaxed);
    let hv = Arc::new(SimulatedHypervisor::new(sim.boot_delay, pod_cidr));
    // Nothing is kept on disk: the directories are never made.
    let nowhere = std::path::PathBuf::from("/nonexistent/kumo-simulated").join(&h.name);
    let volume_dirs = VolumeDirs { local: nowhere.join("volumes"), shared: None };
    let images = Arc::new(ImageCache::new(nowhere.join("images")));
    let mut agent = Agent::new(client, h.name.clone(), hv, images, volume_dirs, AgentConfig::new(nowhere));
    agent.seen = Some(seen);
    serve(Arc::new(agent)).await;
    Ok(())
}
