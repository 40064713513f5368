//! Spawning, re-attaching to and stopping QEMU processes, and choosing the accelerator.
//!
//! QEMU must outlive the agent: it runs in its own session (`setsid`), is never `kill_on_drop`, and a
//! [`RunningVm`] tracks it by pid and start time (from `/proc`) rather than through the tokio `Child`, so
//! a handle from [`attach`] after an agent restart behaves exactly like one from [`launch`]. The run
//! directory is the only shared state: pid file, QMP socket, serial socket, logs ([`RunPaths`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::qemu::builder::command_line;
use crate::qemu::config::{Accel, LaunchConfig, QemuVersion, RunPaths};
use crate::qemu::qmp::QmpClient;

/// How long [`launch`] waits for QEMU's QMP socket, and [`attach`] for the QMP greeting.
const QMP_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(25);
/// How long a SIGKILLed QEMU may take to disappear (it may be in uninterruptible I/O).
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// A QEMU process of ours, launched or re-attached. Dropping the handle leaves the process running.
pub struct RunningVm {
    pid: Pid,
    /// `/proc/<pid>/stat` start time: tells our QEMU apart from a later process that reuses the pid.
    start_time: u64,
    paths: RunPaths,
    qmp: QmpClient,
    /// Present when this agent spawned the process: reaps it and yields its exit status.
    child: Mutex<Option<Child>>,
    exit_status: OnceLock<ExitStatus>,
}

/// How [`RunningVm::shutdown`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// The guest powered off within the grace period.
    PoweredOff,
    /// The grace period ran out; QEMU was SIGKILLed.
    Killed,
    /// QEMU was already gone.
    AlreadyExited,
}

/// Start QEMU for `cfg` with `qemu_binary` and connect to its QMP socket.
///
/// Creates `run_dir`, removes stale sockets and pid file, sends QEMU's stdout/stderr to `qemu.log`, and
/// fails with the log's tail if QEMU exits before QMP answers. Refuses to start a second QEMU on a run
/// directory whose QEMU is still alive (use [`attach`]).
pub async fn launch(cfg: &LaunchConfig, qemu_binary: &Path) -> Result<RunningVm> {
    cfg.validate()?;
    let version = qemu_version(qemu_binary).await?;
    let mut cfg = cfg.clone();
    cfg.qemu_version = version;
    let paths = cfg.paths();
    tokio::fs::create_dir_all(paths.dir()).await.with_context(|| format!("creating {}", paths.dir().display()))?;
    if let Ok(pid) = read_pid_file(&paths).await {
        if identify(pid, &paths).is_ok() {
            bail!("QEMU (pid {pid}) is already running in {}", paths.dir().display());
        }
    }
    remove_runtime_files(&paths).await;

    let args = command_line(&cfg);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.qemu_log())
        .with_context(|| format!("opening {}", paths.qemu_log().display()))?;
    {
        use std::io::Write;
        let mut l = &log;
        writeln!(l, "kumo: starting {} {}", qemu_binary.display(), args.join(" "))?;
    }
    let mut cmd = Command::new(qemu_binary);
    cmd.args(&args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).kill_on_drop(false);
    // Opened before forking: the child only calls setns on it.
    let netns = match &cfg.netns {
        Some(p) => Some(std::fs::File::open(p).with_context(|| format!("opening network namespace {}", p.display()))?),
        None => None,
    };
    // SAFETY: setsid and setns are async-signal-safe system calls and touch no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if let Some(ns) = &netns {
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().with_context(|| format!("spawning {}", qemu_binary.display()))?;
    let pid = Pid::from_raw(child.id().context("QEMU exited immediately")? as i32);
    tracing::info!(vm = %cfg.name, pid = pid.as_raw(), %version, "started QEMU");

    // Wait for the QMP socket, noticing an early exit (bad option, image locked, tap busy, ...).
    let deadline = Instant::now() + QMP_CONNECT_TIMEOUT;
    let qmp_path = paths.qmp_socket();
    while !qmp_path.exists() {
        if let Some(status) = child.try_wait()? {
            bail!("QEMU exited with {status} during startup: {}", log_tail(&paths).await);
        }
        if Instant::now() >= deadline {
            let _ = kill(pid, Signal::SIGKILL);
            bail!("QEMU did not create {} within {QMP_CONNECT_TIMEOUT:?}", qmp_path.display());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let qmp = match QmpClient::connect(&qmp_path, deadline.saturating_duration_since(Instant::now())).await {
        Ok(q) => q,
        Err(e) => {
            // QEMU creates its sockets before opening images and taps, so a bad disk shows up as a QMP
            // connection that is reset or never greets: report the exit and QEMU's own words.
            let exited = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
            let tail = log_tail(&paths).await;
            match exited {
                Ok(Ok(status)) => bail!("QEMU exited with {status} during startup: {tail}"),
                _ => {
                    let _ = kill(pid, Signal::SIGKILL);
                    let _ = child.wait().await;
                    bail!("connecting to QMP of pid {pid}: {e}; log: {tail}");
                }
            }
        }
    };
    let start_time = proc_stat(pid).map(|s| s.1).ok_or_else(|| anyhow!("QEMU pid {pid} vanished"))?;
    Ok(RunningVm { pid, start_time, paths, qmp, child: Mutex::new(Some(child)), exit_status: OnceLock::new() })
}

/// Re-attach to the QEMU running in `run_dir` (after an agent restart): read the pid file, check that the
/// process is alive and is this run directory's QEMU, and connect to QMP.
pub async fn attach(run_dir: &Path) -> Result<RunningVm> {
    let paths = RunPaths::new(run_dir);
    let pid = read_pid_file(&paths).await?;
    let start_time = identify(pid, &paths)?;
    let qmp = QmpClient::connect(&paths.qmp_socket(), QMP_CONNECT_TIMEOUT)
        .await
        .with_context(|| format!("connecting to QMP of pid {pid}"))?;
    tracing::info!(pid = pid.as_raw(), run_dir = %run_dir.display(), "attached to QEMU");
    Ok(RunningVm { pid, start_time, paths, qmp, child: Mutex::new(None), exit_status: OnceLock::new() })
}

impl RunningVm {
    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    pub fn qmp(&self) -> &QmpClient {
        &self.qmp
    }

    pub fn paths(&self) -> &RunPaths {
        &self.paths
    }

    /// Whether the QEMU process still exists (a zombie counts as gone). Reaps it if it is our child.
    pub fn is_alive(&self) -> bool {
        if self.exit_status.get().is_some() {
            return false;
        }
        if let Some(child) = self.child.lock().unwrap().as_mut() {
            // Our own child: waitpid is authoritative (and reaps it).
            match child.try_wait() {
                Ok(Some(status)) => {
                    let _ = self.exit_status.set(status);
                    return false;
                }
                Ok(None) => return true,
                Err(e) => tracing::debug!(error = %e, "try_wait failed; falling back to /proc"),
            }
        }
        matches!(proc_stat(self.pid), Some((state, start)) if start == self.start_time && state != 'Z' && state != 'X')
    }

    /// Wait until QEMU has exited. The exit status is known only for a process this handle spawned.
    pub async fn wait_exit(&self) -> Option<ExitStatus> {
        while self.is_alive() {
            tokio::select! {
                _ = self.qmp.closed(), if !self.qmp.is_closed() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
        self.exit_status.get().copied()
    }

    /// Ask the guest to power off (ACPI), wait up to `grace` for QEMU to exit, then SIGKILL it. Removes the
    /// sockets and pid file afterwards; logs stay.
    pub async fn shutdown(&self, grace: Duration) -> Result<ShutdownOutcome> {
        if !self.is_alive() {
            remove_runtime_files(&self.paths).await;
            return Ok(ShutdownOutcome::AlreadyExited);
        }
        let deadline = Instant::now() + grace;
        match tokio::time::timeout(grace, self.qmp.system_powerdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(pid = self.pid.as_raw(), error = %e, "system_powerdown failed"),
            Err(_) => tracing::warn!(pid = self.pid.as_raw(), "system_powerdown got no answer"),
        }
        if tokio::time::timeout_at(deadline, self.wait_exit()).await.is_ok() {
            remove_runtime_files(&self.paths).await;
            return Ok(ShutdownOutcome::PoweredOff);
        }
        tracing::info!(pid = self.pid.as_raw(), ?grace, "guest did not power off in time; killing QEMU");
        self.kill().await?;
        Ok(ShutdownOutcome::Killed)
    }

    /// SIGKILL QEMU, wait for it to disappear, and remove its sockets and pid file.
    pub async fn kill(&self) -> Result<()> {
        if self.is_alive() {
            match kill(self.pid, Signal::SIGKILL) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => bail!("killing QEMU pid {}: {e}", self.pid),
            }
            if tokio::time::timeout(KILL_TIMEOUT, self.wait_exit()).await.is_err() {
                bail!("QEMU pid {} still exists {KILL_TIMEOUT:?} after SIGKILL", self.pid);
            }
        }
        remove_runtime_files(&self.paths).await;
        Ok(())
    }
}

/// The version of `qemu_binary`, from `--version`.
pub async fn qemu_version(qemu_binary: &Path) -> Result<QemuVersion> {
    // Asked once per binary: every launch needs it, and a QEMU process per launch is boot time.
    static KNOWN: OnceLock<Mutex<HashMap<PathBuf, QemuVersion>>> = OnceLock::new();
    let known = KNOWN.get_or_init(Default::default);
    if let Some(v) = known.lock().unwrap().get(qemu_binary) {
        return Ok(*v);
    }
    let out = Command::new(qemu_binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {} --version", qemu_binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = QemuVersion::parse(&text).ok_or_else(|| anyhow!("cannot parse QEMU version from {text:?}"))?;
    known.lock().unwrap().insert(qemu_binary.to_path_buf(), v);
    Ok(v)
}

/// `qemu-system-x86_64` from `PATH`, if installed.
pub fn find_qemu_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("qemu-system-x86_64")).find(|p| p.is_file())
}

/// Choose the accelerator by booting, not by looking at `/dev/kvm`.
///
/// KVM is chosen only if `/dev/kvm` opens read-write **and** `probe_kernel` boots under `-accel kvm -cpu
/// host` (the CPU model the builder uses with KVM) far enough to print `Linux version` on the serial console
/// and reach init or, with no root file system, a kernel panic (`panic=-1 -no-reboot` then makes QEMU exit).
/// Anything else — no device, no probe kernel, a QEMU abort, a hang past the timeout — means TCG.
///
/// Why: some hosts expose a `/dev/kvm` that cannot run a stock kernel. On kumo's development machines (a PVM
/// host) QEMU 7.2 with `-cpu host` aborts at once (`failed to set MSR 0x10a`, `kvm_buf_set_msrs`
/// assertion), and with other CPU models the guest hangs or stops with "KVM internal error".
pub async fn detect_accel(qemu: &Path, probe_kernel: Option<&Path>) -> Accel {
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        tracing::info!(error = %e, "/dev/kvm unusable; using TCG");
        return Accel::Tcg;
    }
    let Some(kernel) = probe_kernel else {
        tracing::info!("no probe kernel to verify KVM with; using TCG");
        return Accel::Tcg;
    };
    match probe_kernel_boot(qemu, kernel, Accel::Kvm, PROBE_TIMEOUT).await {
        Ok(true) => Accel::Kvm,
        Ok(false) => {
            tracing::info!("probe kernel did not boot under KVM; using TCG");
            Accel::Tcg
        }
        Err(e) => {
            tracing::info!(error = %e, "KVM probe failed; using TCG");
            Accel::Tcg
        }
    }
}

/// Boot `kernel` with no disks under `accel`; true if it printed its banner and reached init or a panic
/// within `timeout`.
pub(crate) async fn probe_kernel_boot(qemu: &Path, kernel: &Path, accel: Accel, timeout: Duration) -> Result<bool> {
    let cpu = accel.cpu_model();
    let mut cmd = Command::new(qemu);
    cmd.args(["-machine", "q35", "-accel", accel.as_str(), "-cpu", cpu, "-m", "256M"])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio"])
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().with_context(|| format!("spawning {}", qemu.display()))?;
    // On timeout the future, and with it the child, is dropped: kill_on_drop ends a hung guest.
    let Ok(out) = tokio::time::timeout(timeout, child.wait_with_output()).await else {
        return Ok(false);
    };
    let out = out?;
    let console = String::from_utf8_lossy(&out.stdout);
    let booted = console.contains("Linux version")
        && (console.contains("Kernel panic") || console.contains("Run /init") || console.contains("Run /sbin/init"));
    if !booted {
        tracing::debug!(stderr = %String::from_utf8_lossy(&out.stderr), "probe boot failed");
    }
    Ok(booted)
}

async fn read_pid_file(paths: &RunPaths) -> Result<Pid> {
    let file = paths.pid_file();
    let text = tokio::fs::read_to_string(&file).await.with_context(|| format!("reading {}", file.display()))?;
    let pid: i32 = text.trim().parse().with_context(|| format!("bad pid {:?} in {}", text.trim(), file.display()))?;
    Ok(Pid::from_raw(pid))
}

/// Check that `pid` is alive and is the QEMU of this run directory (its argv names our pid file); returns
/// its start time.
fn identify(pid: Pid, paths: &RunPaths) -> Result<u64> {
    let Some((state, start_time)) = proc_stat(pid) else { bail!("QEMU pid {pid} is not running") };
    if state == 'Z' || state == 'X' {
        bail!("QEMU pid {pid} has exited");
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).with_context(|| format!("reading argv of {pid}"))?;
    let argv: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let is_qemu = argv.first().is_some_and(|a0| a0.rsplit('/').next().unwrap_or(a0).starts_with("qemu"));
    let pid_file = paths.pid_file().to_string_lossy().into_owned();
    let ours = argv.windows(2).any(|w| w[0] == "-pidfile" && w[1] == pid_file);
    if !is_qemu || !ours {
        bail!("pid {pid} is not the QEMU of {} (argv[0] {:?})", paths.dir().display(), argv.first());
    }
    Ok(start_time)
}

/// `(state, start time)` from `/proc/<pid>/stat`, or `None` if there is no such process.
fn proc_stat(pid: Pid) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; the fields after the last ')' do not.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 3 (state) is fields[0], so field 22 (starttime) is fields[19].
    let start_time = fields.get(19)?.parse().ok()?;
    Some((state, start_time))
}

/// Remove what a dead QEMU leaves behind (it cleans up itself on a clean exit, not after SIGKILL, and not
/// after dropping privileges with `-runas`). Logs are kept.
async fn remove_runtime_files(paths: &RunPaths) {
    for f in [paths.qmp_socket(), paths.serial_socket(), paths.pid_file()] {
        match tokio::fs::remove_file(&f).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(file = %f.display(), error = %e, "cannot remove"),
        }
    }
}

async fn log_tail(paths: &RunPaths) -> String {
    let text = tokio::fs::read_to_string(paths.qemu_log()).await.unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("kumo: ")).collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}
