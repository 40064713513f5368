//! The servers under test as child processes: a real `kumo server` and a real `etcd`, each on a fresh
//! temporary directory and free loopback ports. Dropping a [`Proc`] kills the process and removes its directory
//! (also on error and panic unwinding).

use crate::http::{Conn, Endpoint};
use anyhow::{bail, Context, Result};
use base64::Engine;
use bytes::Bytes;
use http::{Method, StatusCode};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Generous: after a crash the embedded store walks its whole file before serving (minutes for a large one), and
/// the benchmark records how long that took rather than failing.
const START_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a stopped server may take to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Proc {
    pub name: &'static str,
    child: Child,
    dir: Option<tempfile::TempDir>,
    keep: bool,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("dir").path()
    }

    /// Last lines of the process's log (for error messages).
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Resident memory (VmRSS) in bytes, from /proc/PID/status.
    pub fn rss_bytes(&self) -> Result<u64> {
        rss_bytes(self.pid())
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited with {status}:\n{}", self.name, self.log_tail());
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let (true, Some(dir)) = (self.keep, self.dir.take()) {
            eprintln!("bench: kept {} directory {}", self.name, dir.keep().display());
        }
    }
}

pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS in /proc/PID/status")?;
    let kb: u64 = line.split_whitespace().nth(1).context("malformed VmRSS")?.parse()?;
    Ok(kb * 1024)
}

/// CPU time (user + system, all threads) a process has used, in seconds. Linux reports it in USER_HZ ticks,
/// which are 1/100 s on every architecture the benchmark runs on.
pub fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name, starting with field 3 (state); utime and stime are 14, 15.
    let rest = &stat[stat.rfind(')').context("malformed /proc/PID/stat")? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).context("no utime")?.parse::<u64>()? + f.get(12).context("no stime")?.parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

/// CPU used by a server and by this benchmark process over an interval.
pub struct CpuMeter {
    pid: u32,
    server: f64,
    client: f64,
    /// The store process behind the server (etcd behind kumo), and its CPU at the start.
    backend: Option<(u32, f64)>,
}

impl CpuMeter {
    pub fn start(server_pid: u32) -> CpuMeter {
        let own = std::process::id();
        CpuMeter {
            pid: server_pid,
            server: cpu_secs(server_pid).unwrap_or(0.0),
            client: cpu_secs(own).unwrap_or(0.0),
            backend: None,
        }
    }

    /// Also meters `backend_pid`, the store the server writes to.
    pub fn with_backend(mut self, backend_pid: Option<u32>) -> CpuMeter {
        self.backend = backend_pid.map(|p| (p, cpu_secs(p).unwrap_or(0.0)));
        self
    }

    /// (server, client) CPU seconds since `start`.
    pub fn stop(&self) -> (f64, f64) {
        let own = std::process::id();
        (cpu_secs(self.pid).unwrap_or(self.server) - self.server, cpu_secs(own).unwrap_or(self.client) - self.client)
    }

    /// The backend's CPU seconds since `start`.
    pub fn backend(&self) -> Option<f64> {
        self.backend.map(|(pid, at)| cpu_secs(pid).unwrap_or(at) - at)
    }
}

/// Bytes under `dir` (the server's data directory).
/// Bytes a directory takes on disk: allocated blocks, as `du` counts them. redb extends its file by doubling,
/// and an extension takes no disk until pages are written to it, so the files' lengths overstate it.
pub fn dir_bytes(dir: &Path) -> u64 {
    dir_sum(dir, &|m| std::os::unix::fs::MetadataExt::blocks(m) * 512)
}

/// The sum of the lengths of a directory's files.
pub fn dir_len(dir: &Path) -> u64 {
    dir_sum(dir, &|m| m.len())
}

fn dir_sum(dir: &Path, size: &dyn Fn(&std::fs::Metadata) -> u64) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_sum(&e.path(), size),
            Ok(m) => size(&m),
            Err(_) => 0,
        })
        .sum()
}

/// The soft limit on open files of this process (inherited by the servers it starts).
pub fn open_files_limit() -> Result<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let line = limits.lines().find(|l| l.starts_with("Max open files")).context("no open-files limit")?;
    let soft = line.split_whitespace().nth(3).context("malformed limits")?;
    Ok(if soft == "unlimited" { u64::MAX } else { soft.parse()? })
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn spawn(name: &'static str, cmd: Command, dir: tempfile::TempDir, keep: bool) -> Result<Proc> {
    let child = spawn_child(name, cmd, dir.path())?;
    Ok(Proc { name, child, dir: Some(dir), keep })
}

/// Starts `cmd` with stdout and stderr appended to `dir/server.log`.
fn spawn_child(name: &str, mut cmd: Command, dir: &Path) -> Result<Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("server.log"))?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))
}

pub struct Kumo {
    pub proc: Proc,
    pub endpoint: Endpoint,
    /// The etcd this kumo stores into (`--etcd-servers`), metered alongside it.
    pub backend_pid: Option<u32>,
    pub bin: PathBuf,
    extra: Vec<String>,
    /// Kept across restarts, so clients holding its kubeconfig (simulated nodes) reconnect.
    port: u16,
}

fn kumo_cmd(bin: &Path, dir: &Path, port: u16, extra: &[String]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("server").arg("--data-dir").arg(dir).arg("--listen").arg(format!("127.0.0.1:{port}"));
    cmd.args(extra);
    cmd
}

/// Starts `kumo server` (with `extra` arguments, e.g. `--etcd-servers`) on a fresh data directory under `tmp`
/// and waits until `/readyz` answers 200.
pub async fn start_kumo(bin: &Path, tmp: &Path, keep: bool, extra: &[String]) -> Result<Kumo> {
    let dir = tempfile::Builder::new().prefix("kumo-bench-kumo-").tempdir_in(tmp)?;
    let port = free_port()?;
    let mut proc = spawn("kumo", kumo_cmd(bin, dir.path(), port, extra), dir, keep)?;
    let endpoint = wait_kumo(&mut proc).await?;
    Ok(Kumo { proc, endpoint, backend_pid: None, bin: bin.to_path_buf(), extra: extra.to_vec(), port })
}

/// How a restarted server is stopped.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stop {
    /// SIGTERM, and the server exits by itself (an upgrade, a rolling restart).
    Graceful,
    /// SIGKILL (a crash, a power cut).
    Crash,
}

impl Kumo {
    /// Stops the server as `how` says and starts it again on the same data directory and port.
    pub async fn restart(&mut self, how: Stop) -> Result<()> {
        match how {
            Stop::Crash => {
                let _ = self.proc.child.kill();
            }
            Stop::Graceful => {
                let pid = self.proc.pid().to_string();
                let sent = Command::new("kill").args(["-TERM", &pid]).status().context("running kill -TERM")?;
                anyhow::ensure!(sent.success(), "kill -TERM {pid} failed");
                let deadline = Instant::now() + STOP_TIMEOUT;
                while self.proc.child.try_wait()?.is_none() {
                    if Instant::now() > deadline {
                        let _ = self.proc.child.kill();
                        bail!("kumo did not exit within {STOP_TIMEOUT:?} of SIGTERM:\n{}", self.proc.log_tail());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let _ = self.proc.child.wait();
        std::fs::remove_file(self.proc.dir().join("kubeconfig"))?;
        self.proc.child =
            spawn_child("kumo", kumo_cmd(&self.bin, self.proc.dir(), self.port, &self.extra), self.proc.dir())?;
        self.endpoint = wait_kumo(&mut self.proc).await?;
        Ok(())
    }
}

async fn wait_kumo(proc: &mut Proc) -> Result<Endpoint> {
    let kubeconfig = proc.dir().join("kubeconfig");
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        proc.check_alive()?;
        if Instant::now() > deadline {
            bail!("kumo did not become ready within {START_TIMEOUT:?}:\n{}", proc.log_tail());
        }
        if kubeconfig.exists() {
            let endpoint = read_kubeconfig(&kubeconfig)?;
            if let Ok(mut conn) = endpoint.connect().await {
                if let Ok((StatusCode::OK, _)) = conn.request(Method::GET, "/readyz", Bytes::new()).await {
                    return Ok(endpoint);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Server URL, CA and bearer token from the admin kubeconfig kumo writes into its data directory.
fn read_kubeconfig(path: &PathBuf) -> Result<Endpoint> {
    let text = std::fs::read_to_string(path)?;
    let field = |key: &str| -> Result<String> {
        let prefix = format!("{key}:");
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().trim_matches('"').to_string()))
            .with_context(|| format!("no {key} in {}", path.display()))
    };
    let server = field("server")?;
    let addr: SocketAddr = server.trim_start_matches("https://").trim_end_matches('/').parse()?;
    let ca = base64::engine::general_purpose::STANDARD.decode(field("certificate-authority-data")?)?;
    Endpoint::tls(addr, &ca, field("token")?)
}

pub struct Etcd {
    pub proc: Proc,
    pub endpoint: Endpoint,
    pub version: String,
}

/// Starts a single-member `etcd` (default durability: fsync per commit) and waits until `/health` is true.
pub async fn start_etcd(bin: &Path, tmp: &Path, keep: bool) -> Result<Etcd> {
    Ok(start_etcd_cluster(bin, tmp, keep, 1).await?.remove(0))
}

/// Starts an `n`-member etcd cluster on loopback and waits until every member reports healthy.
pub async fn start_etcd_cluster(bin: &Path, tmp: &Path, keep: bool, n: usize) -> Result<Vec<Etcd>> {
    let ports: Vec<(u16, u16)> =
        (0..n).map(|_| Ok::<_, anyhow::Error>((free_port()?, free_port()?))).collect::<Result<_>>()?;
    let initial: Vec<String> =
        ports.iter().enumerate().map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}")).collect();
    let version = Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string())
        .unwrap_or_default();
    let mut members = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let dir = tempfile::Builder::new().prefix("kumo-bench-etcd-").tempdir_in(tmp)?;
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--name=m{i}"))
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster={}", initial.join(",")))
            .arg("--initial-cluster-state=new")
            // Large clusters raise etcd's 2 GiB default quota; so does the benchmark (8 GiB).
            .arg("--quota-backend-bytes=8589934592")
            .arg("--max-request-bytes=8388608");
        // Only the flags above configure it (etcd also reads ETCD_* variables).
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        let proc = spawn("etcd", cmd, dir, keep)?;
        let endpoint = Endpoint::plain(SocketAddr::from(([127, 0, 0, 1], *client)));
        members.push(Etcd { proc, endpoint, version: version.clone() });
    }
    let deadline = Instant::now() + START_TIMEOUT;
    for m in members.iter_mut() {
        loop {
            m.proc.check_alive()?;
            if Instant::now() > deadline {
                bail!("etcd did not become healthy within {START_TIMEOUT:?}:\n{}", m.proc.log_tail());
            }
            if let Ok(mut conn) = m.endpoint.connect().await {
                if let Ok((StatusCode::OK, body)) = conn.request(Method::GET, "/health", Bytes::new()).await {
                    if is_healthy(&body) && gateway_works(&mut conn).await {
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(members)
}

impl Etcd {
    /// The member's client URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.endpoint.addr)
    }
}

fn is_healthy(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body).ok().and_then(|v| v["health"].as_str().map(|h| h == "true"))
        == Some(true)
}

async fn gateway_works(conn: &mut Conn) -> bool {
    let body = Bytes::from_static(br#"{"key":"X19iZW5jaF9wcm9iZQ==","value":"MQ=="}"#);
    matches!(conn.request(Method::POST, "/v3/kv/put", body).await, Ok((StatusCode::OK, _)))
}

/// Executable `name` on PATH, or in the usual system directories.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
