//! A real single-node etcd for tests: loopback, free ports, a temp data dir, killed on drop.
//!
//! Each test starts its own (about a second): nextest runs every test in its own process, so a shared one
//! would be started per test anyway, and a process-wide static is never dropped, which would leave etcd
//! running after the tests.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{EtcdConfig, EtcdStore, Store};

/// The request size limit tests run etcd with: the API server's 3 MiB bodies and a transaction around them.
pub const MAX_REQUEST_BYTES: usize = 8 << 20;

/// Certificates for a TLS etcd: the server's, the CA that signed both sides, and the client's.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

pub struct EtcdServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    tls: Option<EtcdTls>,
}

impl EtcdServer {
    /// Starts etcd over plain http and waits until it serves. Panics (failing the test) when the `etcd`
    /// binary is missing.
    pub async fn start() -> EtcdServer {
        EtcdServer::start_with(None).await
    }

    /// Starts etcd, over https requiring client certificates when `tls` is given.
    pub async fn start_with(tls: Option<EtcdTls>) -> EtcdServer {
        let dir = tempfile::tempdir().expect("temp dir for etcd");
        let mut server = EtcdServer { child: None, dir, client_port: free_port(), peer_port: free_port(), tls };
        server.spawn();
        server.wait_ready().await;
        server
    }

    /// The client URL.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// A store configuration for this etcd (with the client certificate when TLS is on).
    pub fn config(&self, prefix: &str) -> EtcdConfig {
        let tls = self.tls.as_ref();
        EtcdConfig {
            endpoints: vec![self.endpoint()],
            ca_file: tls.map(|t| t.ca.clone()),
            cert_file: tls.map(|t| t.client_cert.clone()),
            key_file: tls.map(|t| t.client_key.clone()),
            prefix: prefix.to_string(),
            ..EtcdConfig::default()
        }
    }

    /// SIGKILLs etcd (no clean shutdown, as in a crash) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOPs etcd: its connections stay open but nothing answers, as with a hung host or a partition.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONTs etcd after [`EtcdServer::pause`].
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("etcd is not running").id().to_string();
        let status = Command::new("kill").args([&format!("-{name}"), &pid]).status().expect("running kill");
        assert!(status.success(), "kill -{name} {pid}: {status}");
    }

    /// Starts etcd again on the same data dir and ports (killing it first if it runs).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready().await;
    }

    fn spawn(&mut self) {
        let bin = etcd_binary();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("etcd log file");
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(&bin);
        cmd.arg("--name=kumo-test")
            .arg(format!("--data-dir={}", self.dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=kumo-test={peer}"))
            .arg(format!("--max-request-bytes={MAX_REQUEST_BYTES}"))
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            // etcd 3.4 refuses to start on architectures it does not list (arm64 among them) unless this names
            // the current one; on amd64 it is ignored.
            .env("ETCD_UNSUPPORTED_ARCH", go_arch())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log file"))
            .stderr(log);
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--cert-file={}", tls.server_cert.display()))
                .arg(format!("--key-file={}", tls.server_key.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca.display()))
                .arg("--client-cert-auth");
        }
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("starting {}: {e}", bin.display())));
    }

    /// Waits until a store can read through this etcd (a bound port is not enough: etcd listens before it
    /// has elected itself leader).
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut config = self.config("/kumo-test-probe");
        config.timeout = Duration::from_secs(1);
        loop {
            let last = match EtcdStore::connect(config.clone()).await {
                Ok(store) => match store.current_revision().await {
                    Ok(_) => return,
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("etcd exited with {status} while starting; log:\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                panic!("etcd did not serve within 30 s ({last}); log:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// The end of etcd's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<_> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The directory holding etcd's data and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `$KUMO_ETCD` or `etcd` on the PATH; fails the test with what to install when there is none.
fn etcd_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("KUMO_ETCD") {
        return bin.into();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("etcd not found: install Debian etcd-server (scripts/setup.sh)"))
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// A port nothing listens on right now (the OS picks it; a tiny race with other processes is accepted).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener.local_addr().expect("local address").port()
}
