//! End-to-end test support: start the real `kumo` binary on a temporary data directory and drive it with
//! real clients (`kubectl`, kube-rs, the Python `kubernetes` client). Nothing here is a mock.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `kumo` binary built alongside these tests (or `$KUMO_BIN`).
pub fn kumo_bin() -> PathBuf {
    if let Ok(p) = std::env::var("KUMO_BIN") {
        return PathBuf::from(p);
    }
    // Test binaries live in target/<profile>/deps; the kumo binary in target/<profile>.
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    profile_dir.join("kumo")
}

/// A free loopback port (bound and released; fine for tests that restart a server on a fixed port).
/// Runs the kumo binary with `args`: whether it succeeded, and its stdout and stderr together.
pub fn kumo_cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(kumo_bin()).args(args).output().expect("running kumo");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A log for a diagnosis, saying why when there is none.
pub(crate) fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("(no log at {}: {e})", path.display()))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The local registry scripts/setup.sh starts, holding the test guest as `quay.io/kumo/...`.
pub use fleet::REGISTRY;

/// Fails (saying what to run) unless the local registry answers.
pub fn assert_registry() {
    assert!(
        std::net::TcpStream::connect(REGISTRY).is_ok(),
        "no registry at {REGISTRY}: run scripts/setup.sh (it builds the test guest and starts the registry)"
    );
}

/// Agent flags that pull `quay.io` images from the local registry.
pub fn registry_args() -> Vec<String> {
    ["--insecure-registry", REGISTRY, "--registry-mirror", &format!("quay.io={REGISTRY}")].map(String::from).to_vec()
}

pub mod cluster;
pub mod console;
pub mod credentials;
pub mod files;
pub mod fleet;

pub struct Server {
    pub dir: tempfile::TempDir,
    /// The address it listens on (loopback, or an underlay address in cluster tests).
    pub ip: String,
    pub port: u16,
    pub extra_args: Vec<String>,
    /// Environment of the server process beyond this one's.
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    /// With `KUMO_E2E_STORE=etcd`, the etcd this server stores into (started per server, gone with it).
    _etcd: Option<cluster::EtcdCluster>,
}

impl Server {
    pub fn start() -> Result<Server> {
        Self::start_with(&[])
    }

    /// A control plane without a node agent (most API tests need no guests).
    pub fn start_with(args: &[&str]) -> Result<Server> {
        let mut all = vec!["--no-agent"];
        all.extend_from_slice(args);
        Self::start_raw(&all)
    }

    /// The all-in-one server, node agent included (needs root and QEMU).
    pub fn start_with_agent(args: &[&str]) -> Result<Server> {
        Self::start_raw(args)
    }

    /// The all-in-one server whose agent pulls containerDisks from the local registry (as `quay.io`), with
    /// `args` besides.
    pub fn start_with_guests(args: &[&str]) -> Result<Server> {
        assert_registry();
        let mut all: Vec<String> = registry_args();
        all.extend(args.iter().map(|a| a.to_string()));
        Self::start_raw(&all.iter().map(String::as_str).collect::<Vec<_>>())
    }

    fn start_raw(args: &[&str]) -> Result<Server> {
        Self::start_at("127.0.0.1", args)
    }

    /// A server listening on `ip` (an address of this machine), with exactly `args` — on the embedded store,
    /// or, when `KUMO_E2E_STORE=etcd` (and `args` name no store), on an etcd of its own: the same API tests
    /// then run against both backends.
    pub fn start_at(ip: &str, args: &[&str]) -> Result<Server> {
        Self::start_prepared(ip, args, |_| Ok(()))
    }

    /// [`Server::start_at`], after `prepare` has set up the (empty) data directory, e.g. put the store file on a
    /// small filesystem.
    pub fn start_prepared(ip: &str, args: &[&str], prepare: impl FnOnce(&Path) -> Result<()>) -> Result<Server> {
        Self::start_custom(ip, args, &[], prepare)
    }

    /// [`Server::start_prepared`] with extra environment for the server process (e.g. `LD_PRELOAD`).
    pub fn start_custom(
        ip: &str,
        args: &[&str],
        env: &[(&str, &str)],
        prepare: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Server> {
        let mut extra_args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let etcd = match std::env::var("KUMO_E2E_STORE").as_deref() {
            Ok("etcd") if !args.contains(&"--etcd-servers") => {
                let etcd = cluster::EtcdCluster::start(1)?;
                extra_args.extend(["--etcd-servers".to_string(), etcd.endpoints()]);
                Some(etcd)
            }
            Ok("etcd") | Ok("embedded") | Err(_) => None,
            Ok(other) => bail!("KUMO_E2E_STORE={other}: use etcd or embedded"),
        };
        let mut s = Server {
            dir: tempfile::Builder::new().prefix("kumo-e2e-").tempdir()?,
            ip: ip.to_string(),
            port: free_port(),
            extra_args,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            child: None,
            _etcd: etcd,
        };
        prepare(s.dir.path())?;
        s.spawn()?;
        Ok(s)
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    pub fn url(&self) -> String {
        format!("https://{}:{}", self.ip, self.port)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("server.log"))?;
        let child = Command::new(kumo_bin())
            .arg("server")
            .arg("--data-dir")
            .arg(self.dir.path())
            .arg("--listen")
            .arg(format!("{}:{}", self.ip, self.port))
            .args(&self.extra_args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", kumo_bin().display()))?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!("kumo server exited with {status}: {}", self.log());
                }
            }
            if self.kubeconfig().exists() && std::net::TcpStream::connect((self.ip.as_str(), self.port)).is_ok() {
                let out = self.kubectl(&["get", "--raw", "/readyz"])?;
                if out.status.success() {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("kumo server did not become ready: {}", self.log())
    }

    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("server.log"))
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// SIGTERM, and wait for the server to exit (it closes its store cleanly).
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            let status = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status()?;
            anyhow::ensure!(status.success(), "kill -TERM failed");
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.try_wait()?.is_none() {
                anyhow::ensure!(Instant::now() < deadline, "kumo server did not stop on SIGTERM: {}", self.log());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Starts a stopped server again on the same data directory (an error if it exits or never gets ready).
    pub fn start_again(&mut self) -> Result<()> {
        self.spawn()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.env("KUBECONFIG", self.kubeconfig()).env_remove("KUBERNETES_SERVICE_HOST").args(args);
        c.stdin(Stdio::null());
        c
    }

    pub fn kubectl(&self, args: &[&str]) -> Result<Output> {
        Ok(self.kubectl_cmd(args).output()?)
    }

    /// Waits until VMI `name` exists and then until it is Ready. A VM's VMI is made by its controller after
    /// `kumo start` or an apply returns, and `kubectl wait` on a VMI not made yet fails at once with NotFound.
    /// Err: kubectl's complaint.
    pub fn wait_vmi_ready(&self, name: &str, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        let made = eventually(timeout, || {
            let out = self.kubectl(&["get", "vmi", name, "-o", "name", "--ignore-not-found"]).ok()?;
            (out.status.success() && !out.stdout.is_empty()).then_some(())
        });
        if made.is_none() {
            bail!("VMI {name} was not made within {timeout:?}");
        }
        let left = timeout.saturating_sub(started.elapsed()).max(Duration::from_secs(1));
        let limit = format!("--timeout={}s", left.as_secs());
        self.kubectl_ok(&["wait", "vmi", name, "--for=condition=Ready", &limit]).map(|_| ())
    }

    /// Runs kubectl, failing with its stderr unless it succeeds; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl(args)?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs kubectl expecting failure; returns stderr.
    pub fn kubectl_err(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl(args)?;
        if out.status.success() {
            bail!("kubectl {} unexpectedly succeeded: {}", args.join(" "), String::from_utf8_lossy(&out.stdout));
        }
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Runs kubectl with `stdin` as standard input.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Result<Output> {
        use std::io::Write;
        let mut c = self.kubectl_cmd(args);
        c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn()?;
        child.stdin.take().expect("stdin").write_all(stdin.as_bytes())?;
        Ok(child.wait_with_output()?)
    }

    pub fn apply(&self, yaml: &str) -> Result<String> {
        let out = self.kubectl_stdin(&["apply", "-f", "-"], yaml)?;
        if !out.status.success() {
            bail!("kubectl apply failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Registers a Ready Node with this much allocatable cpu and memory, as an agent would (nothing runs there).
    pub fn fake_node(&self, name: &str, cpu: &str, memory: &str) -> Result<()> {
        self.apply(&format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {{kubernetes.io/hostname: {name}}}}}\n"
        ))?;
        let status = serde_json::json!({"status": {"allocatable": {"cpu": cpu, "memory": memory},
            "conditions": [{"type": "Ready", "status": "True"}]}});
        self.kubectl_ok(&["patch", "node", name, "--subresource=status", "--type=merge", "-p", &status.to_string()])?;
        Ok(())
    }

    /// Runs the `kumo` CLI against this server.
    pub fn kumo(&self, args: &[&str]) -> Output {
        Command::new(kumo_bin()).args(args).arg("--kubeconfig").arg(self.kubeconfig()).output().expect("running kumo")
    }

    /// A kube-rs client for this server.
    pub async fn client(&self) -> Result<kube::Client> {
        self.client_with(true).await
    }

    /// A client that does not retry 503/504 answers itself (kube-rs does by default), for tests that count them.
    pub async fn client_without_retries(&self) -> Result<kube::Client> {
        self.client_with(false).await
    }

    async fn client_with(&self, retries: bool) -> Result<kube::Client> {
        let kc = kube::config::Kubeconfig::read_from(self.kubeconfig())?;
        let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        cfg.default_retry = retries;
        Ok(kube::Client::try_from(cfg)?)
    }
}

impl Server {
    /// The Node name of this server's agent: `--node-name`, else the agent's default.
    pub fn node_name(&self) -> String {
        let args = &self.extra_args;
        let flag = args.windows(2).find(|w| w[0] == "--node-name").map(|w| w[1].clone());
        flag.or_else(|| args.iter().find_map(|a| a.strip_prefix("--node-name=").map(str::to_string)))
            .unwrap_or_else(kumo_agent::node::default_node_name)
    }

    /// The network namespace and the node-side veth this server's agent gives the VMI `uid` (the agent's own
    /// naming functions, not a guess).
    pub fn vmi_net_names(&self, uid: &str) -> (String, String) {
        let token = kumo_agent::net::node_token(&self.node_name());
        (kumo_agent::net::netns_name(&token, uid), kumo_agent::net::host_veth_name(&token, uid))
    }

    /// Test hygiene when a test failed midway: guests outlive their agent by design, so stop the QEMU
    /// processes and network namespaces this server's agent left (they would collide with later tests).
    fn reap_guests(&self) {
        let Ok(vmis) = std::fs::read_dir(self.dir.path().join("agent/vmis")) else { return };
        let data = self.dir.path().to_string_lossy().into_owned();
        for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&data)
                && String::from_utf8_lossy(&cmdline).contains("qemu-system")
            {
                let _ = Command::new("kill").arg("-9").arg(p.file_name()).status();
            }
        }
        for vmi in vmis.flatten() {
            let (netns, veth) = self.vmi_net_names(&vmi.file_name().to_string_lossy());
            let _ = Command::new("ip").args(["netns", "del", &netns]).stderr(Stdio::null()).status();
            let _ = Command::new("ip").args(["link", "del", &veth]).stderr(Stdio::null()).status();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        self.reap_guests();
        if std::thread::panicking() {
            eprintln!("--- kumo server log ---\n{}", self.log());
        }
    }
}

/// A child process killed (and reaped) when the guard goes, so a failing test leaves none behind.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` until it returns Some or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
