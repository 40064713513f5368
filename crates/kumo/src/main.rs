//! The `kumo` binary. It holds no logic of its own: each subcommand wires crates together.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

// mimalloc: less CPU than glibc's on the many small JSON values (scripts/bench.sh); system-allocator: for heaptrack.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "kumo", version, about = "Virtual machines as a service, managed the Kubernetes way")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

mod access;
mod backends;
mod client;
mod create;
mod drain;
mod join;
mod rollout;
mod store;
mod upload;
mod virtctl;

use kumo_controllers::leader;

/// The Leases (in kube-system) electing the replica that runs the API server's loops, and the controllers.
const GC_LEASE: &str = "kumo-gc";
const CONTROLLERS_LEASE: &str = "kumo-controllers";

#[derive(clap::Args)]
struct Target {
    /// Namespace (default: the kubeconfig context's).
    #[arg(short, long)]
    namespace: Option<String>,
    /// Kubeconfig to use (default: $KUBECONFIG or ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Start a VirtualMachine.
    Start {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Stop a VirtualMachine (the guest gets an ACPI shutdown, then is killed after its grace period).
    Stop {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Restart a VirtualMachine.
    Restart {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Pause a running guest: `kumo pause vmi NAME` (or `vm NAME`).
    Pause {
        kind: String,
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Open a VMI's serial console (interactive; Ctrl-] leaves).
    Console {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Upload a local disk image into a new DataVolume, with a progress bar (as `virtctl image-upload`):
    /// `kumo image-upload dv NAME --image-path FILE --size 10Gi`.
    ImageUpload {
        #[command(flatten)]
        args: upload::UploadArgs,
        #[command(flatten)]
        target: Target,
    },
    /// Hot-plug a DataVolume or PersistentVolumeClaim into a running VMI (as `virtctl addvolume`).
    Addvolume {
        /// The VMI (and with --persist, its VM).
        name: String,
        /// The DataVolume or claim to plug in.
        #[arg(long)]
        volume_name: String,
        /// The disk's serial number in the guest.
        #[arg(long)]
        serial: Option<String>,
        /// Add it to the VM's template too, so it stays across restarts.
        #[arg(long)]
        persist: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Print a VirtualMachine manifest (as `virtctl create vm`):
    /// `kumo create vm --instancetype u1.small --preference linux --volume-containerdisk src:IMAGE`.
    Create {
        /// What to create: `vm`.
        kind: String,
        #[command(flatten)]
        args: create::CreateVmArgs,
    },
    /// Follow, list, undo, pause or resume a VirtualMachinePool's rollout: `kumo rollout status vmpool/NAME`.
    Rollout {
        #[command(subcommand)]
        action: rollout::RolloutAction,
        #[command(flatten)]
        target: Target,
    },
    /// Let a VM take its instancetype and preference as they are now, at its next restart (clears the
    /// revisionNames that pin the flavor it started with, as `kubectl patch` would).
    UpdateFlavor {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// What a running guest's agent says of its OS, host name and time zone (as `virtctl guestosinfo`).
    Guestosinfo {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// The users logged in to a running guest (as `virtctl userlist`).
    Userlist {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// A running guest's filesystems (as `virtctl fslist`).
    Fslist {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Unplug a hot-plugged volume from a running VMI (as `virtctl removevolume`).
    Removevolume {
        name: String,
        #[arg(long)]
        volume_name: String,
        #[arg(long)]
        persist: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Resume a paused guest: `kumo unpause vmi NAME`.
    Unpause {
        kind: String,
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Reboot a guest through its guest agent (as `virtctl soft-reboot`).
    SoftReboot {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Hard-reset a guest, as pressing its reset button (as `virtctl reset`).
    Reset {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Forward local ports to a guest: `kumo port-forward vmi/NAME[/NS] 8080:80` (as `virtctl port-forward`).
    PortForward {
        /// The guest: vmi/NAME[/NAMESPACE] or vm/NAME[/NAMESPACE].
        guest: String,
        /// LOCAL:REMOTE or REMOTE (the same port locally).
        ports: Vec<String>,
        /// Carry one port over stdin and stdout (for ssh's ProxyCommand).
        #[arg(long)]
        stdio: bool,
        /// The local address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        address: String,
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// A local port for a VNC viewer, carrying the guest's screen: `kumo vnc vmi/NAME` (as `virtctl vnc --proxy-only`).
    Vnc {
        /// The guest: vmi/NAME[/NAMESPACE] or NAME.
        guest: String,
        /// The local port (0: any free one, printed).
        #[arg(long, default_value_t = 0)]
        port: u16,
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// SSH into a guest with OpenSSH: `kumo ssh USER@vmi/NAME[/NS] [COMMAND]` (as `virtctl ssh --local-ssh`).
    Ssh {
        /// The guest's SSH port.
        #[arg(long = "port", short = 'p', default_value_t = 22)]
        port: u16,
        #[command(flatten)]
        target: Target,
        /// [OPTIONS...] USER@vmi/NAME[/NS] [COMMAND...], passed to ssh.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
    /// Copy files to or from a guest with OpenSSH's scp: `kumo scp FILE USER@vmi/NAME:PATH` (as `virtctl scp`).
    Scp {
        /// The guest's SSH port.
        #[arg(long = "port", short = 'P', default_value_t = 22)]
        port: u16,
        #[command(flatten)]
        target: Target,
        /// [OPTIONS...] SOURCE... TARGET, passed to scp.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
    /// The KubeVirt API version the server speaks (as `virtctl version`).
    Version {
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Run the control plane (API server on an embedded store, and the controllers) on this machine.
    Server(Box<ServerArgs>),
    /// Run a node agent: this machine runs the guests scheduled to it.
    Agent {
        /// Kubeconfig to use (default: $KUBECONFIG or ~/.kube/config).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// API server replicas to use, failing over between them (default: the kubeconfig's server).
        #[arg(long = "server", value_name = "URL[,URL...]")]
        servers: Vec<String>,
        /// Join the cluster with this bootstrap token (from `kumo token create`) unless this host already has
        /// its credential in --state-dir; needs --server and --ca-cert-hash.
        #[arg(long, requires_all = ["ca_cert_hash", "servers"], conflicts_with = "kubeconfig")]
        token: Option<String>,
        /// The cluster CA's hash (`sha256:…`, printed by `kumo token create --print-join-command`).
        #[arg(long)]
        ca_cert_hash: Option<String>,
        /// Where VMI disks, sockets and the image cache live.
        #[arg(long, default_value = "/var/lib/kumo/agent")]
        state_dir: PathBuf,
        #[command(flatten)]
        agent: AgentArgs,
        #[command(flatten)]
        simulate: SimulateArgs,
    },
    /// Cordon a node and move every VMI off it (stopped here, started elsewhere by its VM), with progress.
    Drain {
        node: String,
        /// Also delete VMIs that no VirtualMachine owns (they are not started again anywhere).
        #[arg(long)]
        force: bool,
        /// Give up after this long, e.g. 5m.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        target: Target,
    },
    /// Care of the store: `kumo store check`, `kumo store snapshot save|restore|status`.
    Store {
        #[command(subcommand)]
        action: store::StoreAction,
    },
    /// Bootstrap tokens for joining hosts: `kumo token create` (as `kubeadm token create`).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// The fencing watchdog a node agent starts (internal): kills the agent's guests when it stops renewing.
    #[command(hide = true)]
    FenceWatchdog {
        #[arg(long)]
        state_dir: PathBuf,
    },
    /// Run only the controllers, against any Kubernetes-compatible API server (kumo's or a real cluster's).
    Controllers {
        /// Kubeconfig to use (default: $KUBECONFIG or ~/.kube/config).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// API server replicas to use, failing over between them (default: the kubeconfig's server).
        #[arg(long = "server", value_name = "URL[,URL...]")]
        servers: Vec<String>,
        /// Act at once, without electing a leader among `kumo controllers` processes: for tests (racing
        /// schedulers), and for clusters that elect by other means. Writes stay safe (compare-and-swap), but
        /// every process acts, and events may be doubled.
        #[arg(long)]
        no_leader_elect: bool,
        #[command(flatten)]
        pod_network: PodNetworkArgs,
        #[command(flatten)]
        scheduler: SchedulerArgs,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Create a bootstrap token; prints it (or, with --print-join-command, the `kumo agent` line to run).
    Create {
        /// How long the token may be used to join, e.g. 24h, 30m.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        #[arg(long, default_value = "kumo token create")]
        description: String,
        /// Print the whole join command (server URL, token, CA hash) instead of the token alone.
        #[arg(long)]
        print_join_command: bool,
        /// Admin kubeconfig (default: $KUBECONFIG or ~/.kube/config).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
}

/// The controllers' view of the cluster: the pod network each Node gets a block of, and node liveness.
#[derive(clap::Args, Clone)]
struct PodNetworkArgs {
    /// Pod addresses of the whole cluster; each Node gets a block of it as its spec.podCIDR.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: kumo_controllers::nodeipam::Ipv4Cidr,
    /// Prefix length of each Node's block.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// How long a node's Lease may go unrenewed before it is unreachable (Kubernetes uses 40s). Its VMIs
    /// fail over once the node's own fencing period has passed too.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    node_monitor_grace_period: Duration,
}

impl PodNetworkArgs {
    fn config(&self) -> Result<kumo_controllers::Config> {
        let pod_network = kumo_controllers::nodeipam::Config::new(self.cluster_cidr, self.node_cidr_mask_size)
            .map_err(|e| anyhow::anyhow!("--node-cidr-mask-size: {e}"))?;
        let lifecycle = kumo_controllers::nodelifecycle::Config { grace_period: self.node_monitor_grace_period };
        Ok(kumo_controllers::Config { pod_network, lifecycle, scheduler: Default::default() })
    }
}

#[derive(clap::Args, Clone)]
struct SchedulerArgs {
    /// vCPUs per physical CPU when placing VMIs: a VMI without a cpu request takes 1/RATIO of a node's cpu per
    /// vCPU (KubeVirt's cpuAllocationRatio).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    cpu_allocation_ratio: u32,
}

impl SchedulerArgs {
    /// Fills in the scheduler's part of `cfg`.
    fn apply(&self, cfg: &mut kumo_controllers::Config) {
        cfg.scheduler = kumo_controllers::sched::Config { cpu_allocation_ratio: self.cpu_allocation_ratio };
    }
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Where the store, the PKI and the admin kubeconfig live.
    #[arg(long, default_value = "/var/lib/kumo")]
    data_dir: PathBuf,
    /// Address to serve the Kubernetes API on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Extra DNS names or IPs for the serving certificate (repeatable).
    #[arg(long = "tls-san")]
    tls_san: Vec<String>,
    /// How long history is kept before compaction, e.g. 5m, 30s.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    compaction_interval: Duration,
    /// Take a snapshot of the store this often, e.g. 6h (off when not given), as k3s does for etcd.
    #[arg(long, value_parser = parse_duration)]
    snapshot_interval: Option<Duration>,
    /// How many scheduled snapshots to keep; older ones are deleted.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    snapshot_retention: u32,
    /// Where scheduled snapshots go (default: DATA_DIR/snapshots).
    #[arg(long)]
    snapshot_dir: Option<PathBuf>,
    /// Events the watch cache keeps at least (those of the last 75 s stay beyond it, up to 250,000).
    #[arg(long, default_value_t = 5_000)]
    watch_cache_size: usize,
    /// How often watchers that asked for bookmarks get one.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    bookmark_interval: Duration,
    #[command(flatten)]
    backends: backends::StoreArgs,
    /// Requests served at once, shared by API Priority and Fairness' priority levels with
    /// --max-mutating-requests-inflight (as Kubernetes; the admin is exempt). Past them requests queue per
    /// client, then get 429.
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u32).range(1..))]
    max_requests_inflight: u32,
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(0..))]
    max_mutating_requests_inflight: u32,
    /// The secret shared by every API server replica of this cluster (default: DATA_DIR/cluster-secret,
    /// created on first start). Another replica joins with the same secret and store.
    #[arg(long, env = "KUMO_CLUSTER_SECRET", hide_env_values = true, conflicts_with = "cluster_secret_file")]
    cluster_secret: Option<String>,
    /// A file holding the cluster secret (e.g. the first server's DATA_DIR/cluster-secret).
    #[arg(long)]
    cluster_secret_file: Option<PathBuf>,
    /// Kubernetes' EncryptionConfiguration (aesgcm or identity providers) for data at rest (default: Secrets
    /// sealed with AES-GCM under a key derived from the cluster secret).
    #[arg(long)]
    encryption_provider_config: Option<PathBuf>,
    /// Do not run the controllers in this process (run `kumo controllers` elsewhere instead).
    #[arg(long)]
    no_controllers: bool,
    #[command(flatten)]
    pod_network: PodNetworkArgs,
    #[command(flatten)]
    scheduler: SchedulerArgs,
    /// Do not run a node agent in this process (this machine runs no guests).
    #[arg(long)]
    no_agent: bool,
    #[command(flatten)]
    agent: AgentArgs,
}

#[derive(clap::Args, Clone)]
struct AgentArgs {
    /// Node name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// This node's address for the other nodes (its InternalIP; they route to its pods through it). Default:
    /// the address of the default route's interface, else the first non-loopback IPv4 address.
    #[arg(long)]
    node_ip: Option<std::net::Ipv4Addr>,
    /// Registry mirror, e.g. quay.io=127.0.0.1:5000 (repeatable).
    #[arg(long = "registry-mirror", value_name = "REGISTRY=MIRROR")]
    registry_mirrors: Vec<String>,
    /// A registry reached over plain HTTP, e.g. 127.0.0.1:5000 (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    insecure_registries: Vec<String>,
    /// Kill this host's guests when the agent has not renewed its node Lease for this long — also when the
    /// agent itself is dead — so the cluster can restart them elsewhere without two copies running. 0 turns
    /// fencing off (default: 20s for `kumo agent`; off for the all-in-one `kumo server`).
    #[arg(long, value_parser = parse_duration)]
    fencing_period: Option<Duration>,
    /// Kernel booted once under KVM to find out whether KVM really works here.
    #[arg(long)]
    probe_kernel: Option<PathBuf>,
    /// Where this node's `local` volumes (disk images) live (default: STATE_DIR/volumes).
    #[arg(long)]
    volume_dir: Option<PathBuf>,
    /// A directory every node mounts from the same place (NFS, CephFS), for volumes of the `shared` class.
    #[arg(long)]
    shared_volume_dir: Option<PathBuf>,
}

impl AgentArgs {
    /// `default_fencing`: the fencing period when --fencing-period is not given.
    fn config(&self, state_dir: PathBuf, default_fencing: Duration) -> Result<kumo_agent::agent::AgentConfig> {
        let mut cfg = kumo_agent::agent::AgentConfig::new(state_dir);
        cfg.node_name = self.node_name.clone();
        cfg.fencing_period = Some(self.fencing_period.unwrap_or(default_fencing)).filter(|p| !p.is_zero());
        cfg.node_ip = self.node_ip;
        cfg.probe_kernel = self.probe_kernel.clone();
        if let Some(dir) = &self.volume_dir {
            cfg.volume_dir = dir.clone();
        }
        cfg.shared_volume_dir = self.shared_volume_dir.clone();
        for m in &self.registry_mirrors {
            let (registry, mirror) = m.split_once('=').with_context(|| {
                format!("--registry-mirror {m:?}: expected REGISTRY=MIRROR, e.g. quay.io=127.0.0.1:5000")
            })?;
            cfg.registry.mirrors.entry(registry.to_string()).or_default().push(mirror.to_string());
        }
        cfg.registry.insecure.extend(self.insecure_registries.iter().cloned());
        Ok(cfg)
    }
}

/// SIMULATED nodes, for measuring the control plane: no guest really runs.
#[derive(clap::Args, Clone)]
struct SimulateArgs {
    /// Run SIMULATED nodes instead of this host: real Nodes, Leases and VMI watches, but guests that only
    /// pretend to boot (for control-plane benchmarks; never for real workloads).
    #[arg(long)]
    simulate: bool,
    /// How many simulated nodes this process runs.
    #[arg(long, default_value_t = 1, requires = "simulate")]
    nodes: usize,
    /// Simulated nodes are named PREFIX0, PREFIX1, …
    #[arg(long, default_value = "sim-", requires = "simulate")]
    node_prefix: String,
    /// The index of the first simulated node (to spread nodes over several processes).
    #[arg(long, default_value_t = 0, requires = "simulate")]
    first_node: usize,
    /// How long a simulated guest takes to boot.
    #[arg(long, default_value = "1s", value_parser = parse_duration, requires = "simulate")]
    boot_delay: Duration,
    /// Write what each simulated node's watch delivered to this file (JSON, every second).
    #[arg(long, requires = "simulate")]
    report: Option<PathBuf>,
}

impl SimulateArgs {
    fn simulation(&self) -> kumo_agent::simulate::Simulation {
        kumo_agent::simulate::Simulation {
            nodes: self.nodes,
            prefix: self.node_prefix.clone(),
            first: self.first_node,
            boot_delay: self.boot_delay,
            report: self.report.clone(),
            ..Default::default()
        }
    }
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}: expected e.g. 30s, 5m, 1h, 500ms"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration unit in {s:?}: use ms, s, m or h")),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("KUMO_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Server(args) => server(*args).await,
        Command::Store { action } => store::run(action).await,
        Command::Start { name, target } => vm_verb(&target, "virtualmachines", &name, "start").await,
        Command::Stop { name, target } => vm_verb(&target, "virtualmachines", &name, "stop").await,
        Command::Restart { name, target } => vm_verb(&target, "virtualmachines", &name, "restart").await,
        Command::ImageUpload { args, target } => {
            let config = kube_config(target.kubeconfig.as_deref()).await?;
            let ns = target.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
            upload::image_upload(config, &ns, &args).await
        }
        Command::Addvolume { name, volume_name, serial, persist, target } => {
            let (client, ns) = target_client(&target).await?;
            virtctl::add_volume(&client, &ns, &name, &volume_name, serial.as_deref(), persist).await?;
            println!("Successfully submitted add volume request to VM {name} for volume {volume_name}");
            Ok(())
        }
        Command::Removevolume { name, volume_name, persist, target } => {
            let (client, ns) = target_client(&target).await?;
            virtctl::remove_volume(&client, &ns, &name, &volume_name, persist).await?;
            println!("Successfully submitted remove volume request to VM {name} for volume {volume_name}");
            Ok(())
        }
        Command::Create { kind, args } => match kind.as_str() {
            "vm" | "virtualmachine" => create::create_vm(&args),
            other => anyhow::bail!("kumo create {other}: only `vm` can be created this way"),
        },
        Command::Rollout { action, target } => {
            let (client, ns) = target_client(&target).await?;
            rollout::run(client, &ns, action).await
        }
        Command::UpdateFlavor { name, target } => {
            let (client, ns) = target_client(&target).await?;
            virtctl::update_flavor(&client, &ns, &name).await?;
            println!("VM {name} will take its instancetype and preference as they are now at its next restart");
            Ok(())
        }
        Command::Guestosinfo { name, target } => guest_info(&target, &name, "guestosinfo").await,
        Command::Userlist { name, target } => guest_info(&target, &name, "userlist").await,
        Command::Fslist { name, target } => guest_info(&target, &name, "filesystemlist").await,
        Command::SoftReboot { name, target } => vm_verb(&target, "virtualmachineinstances", &name, "softreboot").await,
        Command::Reset { name, target } => vm_verb(&target, "virtualmachineinstances", &name, "reset").await,
        Command::PortForward { guest, ports, stdio, address, kubeconfig } => {
            access::port_forward(kube_config(kubeconfig.as_deref()).await?, &guest, &ports, stdio, &address).await
        }
        Command::Vnc { guest, port, kubeconfig } => {
            let guest = if guest.contains('/') { guest } else { format!("vmi/{guest}") };
            access::vnc(kube_config(kubeconfig.as_deref()).await?, &guest, port).await
        }
        Command::Ssh { port, target, args } => openssh("ssh", port, &target, &args).await,
        Command::Scp { port, target, args } => openssh("scp", port, &target, &args).await,
        Command::Version { kubeconfig } => {
            println!("Client Version: kumo {}", env!("CARGO_PKG_VERSION"));
            let client = client_from(kubeconfig.as_deref()).await?;
            let req = http::Request::get("/apis/subresources.kubevirt.io/v1/version").body(Vec::new())?;
            let v: serde_json::Value =
                serde_json::from_str(&client.request_text(req).await.context("asking the server's version")?)?;
            println!("Server Version: {}", v["gitVersion"].as_str().unwrap_or("unknown"));
            Ok(())
        }
        Command::Pause { kind, name, target } => {
            virtctl::kind_plural(&kind)?;
            vm_verb(&target, "virtualmachineinstances", &name, "pause").await
        }
        Command::Unpause { kind, name, target } => {
            virtctl::kind_plural(&kind)?;
            vm_verb(&target, "virtualmachineinstances", &name, "unpause").await
        }
        Command::Agent { kubeconfig, servers, token: _, ca_cert_hash: _, state_dir: _, agent: _, simulate }
            if simulate.simulate =>
        {
            let mut config = kube_config(kubeconfig.as_deref()).await?;
            if let Some(first) = servers.iter().flat_map(|s| s.split(',')).next() {
                config.cluster_url = first.trim().parse().context("--server")?;
            }
            kumo_agent::simulate::run(config, simulate.simulation()).await
        }
        Command::Agent { kubeconfig, servers, token, ca_cert_hash, state_dir, mut agent, simulate: _ } => {
            let kubeconfig = match token {
                Some(token) => {
                    let node = agent.node_name.clone().unwrap_or_else(host_name);
                    let hash = ca_cert_hash.as_deref().unwrap_or_default();
                    agent.node_name = Some(node.clone());
                    Some(join::ensure_joined(&servers, &token, hash, &node, &state_dir).await?)
                }
                None => kubeconfig,
            };
            let config = kube_config(kubeconfig.as_deref()).await?;
            let mut cfg = agent.config(state_dir, Duration::from_secs(20))?;
            // The console endpoint serves the API server, whose client certificate the cluster CA issued.
            cfg.cluster_ca = Some(cluster_ca_pem(&config)?);
            cfg.api_servers = servers.iter().flat_map(|s| s.split(',')).map(|s| s.trim().to_string()).collect();
            if cfg.api_servers.is_empty() {
                cfg.api_servers.push(config.cluster_url.to_string());
            }
            kumo_agent::agent::run(client::client(config, &servers)?, cfg).await
        }
        Command::Token { action: TokenAction::Create { ttl, description, print_join_command, kubeconfig } } => {
            let config = kube_config(kubeconfig.as_deref()).await?;
            let server = config.cluster_url.to_string();
            let ca = cluster_ca_pem(&config)?;
            let (token, expires) = join::create_token(&kube::Client::try_from(config)?, ttl, &description).await?;
            if print_join_command {
                let hash = join::ca_cert_hash(&ca)?;
                println!("kumo agent --server {} --token {token} --ca-cert-hash {hash}", server.trim_end_matches('/'));
            } else {
                println!("{token}");
            }
            eprintln!("token expires at {expires}");
            Ok(())
        }
        Command::Drain { node, force, timeout, target } => {
            let client = client_from(target.kubeconfig.as_deref()).await?;
            drain::drain(client, &node, drain::Options { force, timeout }).await
        }
        Command::FenceWatchdog { state_dir } => kumo_agent::fence::run_watchdog(&state_dir),
        Command::Console { name, target } => {
            let config = kube_config(target.kubeconfig.as_deref()).await?;
            let ns = target.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
            virtctl::console(config, &ns, &name).await
        }
        Command::Controllers { kubeconfig, servers, no_leader_elect, pod_network, scheduler } => {
            let mut cfg = pod_network.config()?;
            scheduler.apply(&mut cfg);
            let client = client::client(kube_config(kubeconfig.as_deref()).await?, &servers)?;
            if no_leader_elect {
                return kumo_controllers::run(client, cfg).await;
            }
            // Several `kumo controllers` may run for availability; one acts at a time.
            let leading = leader::elect(client.clone(), leader::Config::new(CONTROLLERS_LEASE));
            leader::while_leading(leading, || kumo_controllers::run(client.clone(), cfg.clone())).await;
            Ok(())
        }
    }
}

async fn openssh(program: &str, port: u16, target: &Target, args: &[String]) -> Result<()> {
    let config = kube_config(target.kubeconfig.as_deref()).await?;
    let ns = target.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    access::openssh(program, target.kubeconfig.as_deref(), &ns, port, args)
}

/// The client and namespace a virtctl-like verb works in.
async fn target_client(target: &Target) -> Result<(kube::Client, String)> {
    let client = client_from(target.kubeconfig.as_deref()).await?;
    let ns = target.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
    Ok((client, ns))
}

async fn vm_verb(target: &Target, plural: &str, name: &str, verb: &str) -> Result<()> {
    let (client, ns) = target_client(target).await?;
    virtctl::put_subresource(&client, &ns, plural, name, verb).await?;
    let what = if plural == "virtualmachines" { "VM" } else { "VMI" };
    println!("{what} {name} was scheduled to {verb}");
    Ok(())
}

/// A kube-rs client from a kubeconfig file, or the default configuration.
async fn client_from(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client> {
    Ok(kube::Client::try_from(kube_config(kubeconfig).await?)?)
}

async fn kube_config(kubeconfig: Option<&std::path::Path>) -> Result<kube::Config> {
    Ok(match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer().await.context("no kubeconfig: pass --kubeconfig or set KUBECONFIG")?,
    })
}

async fn server(args: ServerArgs) -> Result<()> {
    let mut controllers_cfg = args.pod_network.config()?;
    args.scheduler.apply(&mut controllers_cfg);
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating --data-dir {} (choose a writable directory)", args.data_dir.display()))?;
    let (store, events) = args.backends.open(&args.data_dir).await?;
    let mut config = kumo_apiserver::Config::new(args.data_dir.clone(), args.listen);
    config.hosts = args.tls_san;
    config.compaction_interval = args.compaction_interval;
    config.watch_cache_size = args.watch_cache_size;
    config.bookmark_interval = args.bookmark_interval;
    config.event_ttl = args.backends.event_ttl;
    config.max_requests_inflight = args.max_requests_inflight as usize;
    config.max_mutating_requests_inflight = args.max_mutating_requests_inflight as usize;
    config.encryption_config = args.encryption_provider_config;
    config.cluster_secret = match (&args.cluster_secret, &args.cluster_secret_file) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(f)) => {
            Some(std::fs::read_to_string(f).with_context(|| format!("reading --cluster-secret-file {}", f.display()))?)
        }
        (None, None) => None,
    };
    let compaction_interval = config.compaction_interval;
    let running = kumo_apiserver::run(config, store, events).await?;
    // Loops that must run once per cluster (GC, compaction; the controllers) run on the elected replica only.
    let self_client = client_from(Some(&running.kubeconfig)).await?;
    let id = server_identity(&args.data_dir)?;
    let gc_leader = leader::elect(self_client.clone(), leader::Config::new(GC_LEASE).identity(&id));
    kumo_apiserver::gc::spawn_all(running.api.clone(), compaction_interval, gc_leader);
    if let Some(every) = args.snapshot_interval {
        let dir = args.snapshot_dir.clone().unwrap_or_else(|| args.data_dir.join("snapshots"));
        let schedule = kumo_apiserver::snapshot::Schedule { dir, every, keep: args.snapshot_retention as usize };
        kumo_apiserver::snapshot::spawn_schedule(running.api.objects.store.clone(), schedule)?;
    }
    if !args.no_controllers {
        // The controllers talk to this server through the API like any other client.
        let leading = leader::elect(self_client.clone(), leader::Config::new(CONTROLLERS_LEASE).identity(&id));
        let cfg = controllers_cfg;
        tokio::spawn(leader::while_leading(leading, move || kumo_controllers::run(self_client.clone(), cfg.clone())));
    }
    if !args.no_agent {
        let client = client_from(Some(&running.kubeconfig)).await?;
        let mut cfg = args.agent.config(args.data_dir.join("agent"), Duration::ZERO)?;
        cfg.cluster_ca = Some(running.api.ca.cert_pem.clone());
        tokio::spawn(async move {
            if let Err(e) = kumo_agent::agent::run(client, cfg).await {
                tracing::error!("node agent stopped: {e:#} (the API keeps serving; fix the cause or pass --no-agent)");
            }
        });
    }
    eprintln!("kumo server ready at https://{}\n  export KUBECONFIG={}", running.addr, running.kubeconfig.display());
    // Every acknowledged write is already durable, so stopping needs no flush: just exit on INT or TERM.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("kumo server: shutting down");
    Ok(())
}

/// This replica's name in leader elections: the host name and an id kept in the data directory, so a replica
/// restarted after a crash takes its Leases back at once instead of waiting for them to expire. (Two live
/// processes never share a data directory: the embedded store locks it, and each replica has its own.)
fn server_identity(data_dir: &std::path::Path) -> Result<String> {
    let path = data_dir.join("server-id");
    let id = match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => id.trim().to_string(),
        _ => {
            let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
            std::fs::write(&path, &id).with_context(|| format!("writing {}", path.display()))?;
            id
        }
    };
    Ok(format!("{}_{id}", host_name()))
}

/// The CA a kubeconfig trusts for its server, as PEM.
fn cluster_ca_pem(config: &kube::Config) -> Result<String> {
    use base64::Engine;
    let der = config.root_cert.as_ref().and_then(|c| c.first()).context("the kubeconfig names no CA certificate")?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> =
        b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64 is ASCII")).collect();
    Ok(format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n")))
}

/// The node name a host joins under by default, as the agent registers it.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_lowercase()
}

/// Prints a guest-agent subresource of the VMI as indented JSON, as virtctl does.
async fn guest_info(target: &Target, name: &str, what: &str) -> anyhow::Result<()> {
    let (client, ns) = target_client(target).await?;
    let v = virtctl::get_subresource(&client, &ns, "virtualmachineinstances", name, what).await?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}
