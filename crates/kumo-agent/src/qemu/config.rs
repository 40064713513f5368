//! The API-facing launch configuration of one QEMU guest, kept apart from runtime state (Firecracker's
//! `vmm_config/` vs `vstate/`).
//!
//! A [`LaunchConfig`] is plain data: what the guest looks like (CPU, memory, disks, NICs, boot), where its
//! runtime files live ([`RunPaths`]), and how the process is confined. It knows nothing about KubeVirt JSON —
//! the VMI → `LaunchConfig` translation lives elsewhere — and nothing about a running process.
//! [`crate::qemu::builder::command_line`] is the one place it becomes a QEMU argv.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// Everything needed to start one guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchConfig {
    /// Guest name (shown in `ps` thread names and QMP); usually `<namespace>_<name>` of the VMI.
    pub name: String,
    /// SMBIOS system UUID (`-uuid`); KubeVirt's `spec.domain.firmware.uuid`.
    pub uuid: String,
    /// SMBIOS type 1 serial number; KubeVirt's `spec.domain.firmware.serial`.
    pub smbios_serial: Option<String>,
    pub cpu: CpuTopology,
    pub memory_mib: u64,
    pub disks: Vec<DiskConfig>,
    pub nics: Vec<NicConfig>,
    /// Attach a virtio-rng device fed from the host's `/dev/urandom`.
    pub rng: bool,
    /// A graphics device, its screen served by QEMU's VNC server on `vnc.sock` (KubeVirt's
    /// `autoattachGraphicsDevice`, on unless set false).
    pub graphics: bool,
    /// Direct kernel boot instead of firmware boot from a disk.
    pub kernel_boot: Option<KernelBoot>,
    pub accel: Accel,
    /// Start with the vCPUs stopped (`-S`); QMP `cont` starts the guest (KubeVirt's `startStrategy: Paused`).
    pub start_paused: bool,
    /// Directory holding `qmp.sock`, `serial.sock`, `qemu.pid`, `qemu.log`, `console.log` (see [`RunPaths`]).
    pub run_dir: PathBuf,
    /// Confine QEMU with its seccomp filter (`-sandbox on,...`).
    pub sandbox: bool,
    /// Drop to this `(uid, gid)` once QEMU has opened its devices, sockets and images.
    pub run_as: Option<(u32, u32)>,
    /// Version of the QEMU the command line is for; decides version-dependent options (`-runas` before 9.1,
    /// `-run-with user=` from 9.1). [`crate::qemu::launch`] replaces it with the version of the binary it runs.
    pub qemu_version: QemuVersion,
    /// Network namespace QEMU runs in (`/run/netns/...`): its taps live there, so QEMU must open them from inside.
    pub netns: Option<PathBuf>,
}

impl LaunchConfig {
    /// A diskless, NIC-less 1-vCPU/128 MiB TCG guest; callers fill in the rest.
    pub fn new(name: impl Into<String>, uuid: impl Into<String>, run_dir: impl Into<PathBuf>) -> Self {
        LaunchConfig {
            name: name.into(),
            uuid: uuid.into(),
            smbios_serial: None,
            cpu: CpuTopology::default(),
            memory_mib: 128,
            disks: Vec::new(),
            nics: Vec::new(),
            rng: false,
            graphics: false,
            kernel_boot: None,
            accel: Accel::Tcg,
            start_paused: false,
            run_dir: run_dir.into(),
            sandbox: true,
            run_as: None,
            qemu_version: QemuVersion::DEBIAN_BOOKWORM,
            netns: None,
        }
    }

    /// The runtime files of this guest.
    pub fn paths(&self) -> RunPaths {
        RunPaths::new(&self.run_dir)
    }

    /// Reject configurations QEMU would refuse (or silently misinterpret) before a process is spawned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError(msg));
        if self.name.is_empty() || self.name.chars().any(|c| c.is_control()) {
            return bad(format!("invalid guest name {:?}", self.name));
        }
        if uuid::Uuid::parse_str(&self.uuid).is_err() {
            return bad(format!("invalid uuid {:?}", self.uuid));
        }
        let CpuTopology { sockets, cores, threads } = self.cpu;
        if sockets == 0 || cores == 0 || threads == 0 {
            return bad(format!("cpu topology must be at least 1/1/1, got {sockets}/{cores}/{threads}"));
        }
        if self.memory_mib == 0 {
            return bad("memory_mib must be > 0".into());
        }
        if !self.run_dir.is_absolute() {
            return bad(format!("run_dir {} must be absolute", self.run_dir.display()));
        }
        // sun_path is 108 bytes including the terminating NUL.
        let longest = self.paths().serial_socket();
        if longest.as_os_str().len() > 107 {
            return bad(format!("run_dir {} is too long for a unix socket path", self.run_dir.display()));
        }
        let mut names = HashSet::new();
        let mut boot_orders = HashSet::new();
        let mut sata = 0;
        for d in &self.disks {
            check_id(&d.name, "disk")?;
            if !names.insert(&d.name) {
                return bad(format!("duplicate disk name {:?}", d.name));
            }
            match (d.bus, d.device) {
                (Bus::Virtio, DeviceKind::Cdrom) => {
                    return bad(format!("disk {:?}: a cdrom needs bus sata or scsi, not virtio", d.name));
                }
                (Bus::Sata, DeviceKind::Disk | DeviceKind::Lun) if d.readonly => {
                    return bad(format!("disk {:?}: QEMU's IDE/SATA hard disks cannot be read-only", d.name));
                }
                (Bus::Sata, _) => sata += 1,
                _ => {}
            }
            if let Some(n) = d.boot_order {
                if n == 0 || !boot_orders.insert(n) {
                    return bad(format!("disk {:?}: bootOrder {n} is zero or used twice", d.name));
                }
            }
        }
        if sata > SATA_PORTS {
            return bad(format!("{sata} sata devices, but q35's AHCI controller has {SATA_PORTS} ports"));
        }
        let mut nic_names = HashSet::new();
        for n in &self.nics {
            check_id(&n.name, "nic")?;
            if !nic_names.insert(&n.name) {
                return bad(format!("duplicate nic name {:?}", n.name));
            }
            if n.tap.is_empty() || n.tap.len() > 15 || n.tap.contains([',', '/', ' ']) {
                return bad(format!("nic {:?}: invalid tap device name {:?}", n.name, n.tap));
            }
            if !is_mac(&n.mac) {
                return bad(format!("nic {:?}: invalid mac {:?}", n.name, n.mac));
            }
            if !NIC_MODELS.contains(&n.model.as_str()) {
                return bad(format!("nic {:?}: unsupported model {:?} (one of {NIC_MODELS:?})", n.name, n.model));
            }
            if let Some(o) = n.boot_order {
                if o == 0 || !boot_orders.insert(o) {
                    return bad(format!("nic {:?}: bootOrder {o} is zero or used twice", n.name));
                }
            }
        }
        Ok(())
    }
}

/// Number of SATA ports on q35's built-in ICH9 AHCI controller (buses `ide.0` … `ide.5`).
pub const SATA_PORTS: usize = 6;

/// NIC models accepted in [`NicConfig::model`]; `virtio` is KubeVirt's name for `virtio-net-pci`.
pub const NIC_MODELS: &[&str] = &["virtio-net-pci", "virtio", "e1000", "e1000e", "rtl8139", "ne2k_pci", "pcnet"];

/// Names become QEMU ids (`disk-<name>`, `net-<name>`), which allow only letters, digits, `-`, `.` and `_`.
fn check_id(name: &str, what: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError(format!("invalid {what} name {name:?}")))
    }
}

fn is_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// A configuration QEMU cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid launch configuration: {0}")]
pub struct ConfigError(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTopology {
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
}

impl CpuTopology {
    pub fn vcpus(&self) -> u32 {
        self.sockets * self.cores * self.threads
    }
}

impl Default for CpuTopology {
    fn default() -> Self {
        CpuTopology { sockets: 1, cores: 1, threads: 1 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelBoot {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
}

/// The accelerator. Use [`crate::qemu::detect_accel`] to choose: `/dev/kvm` existing is not enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// The CPU model used with this accelerator: the host's CPU under KVM, QEMU's most capable one under TCG.
    pub fn cpu_model(self) -> &'static str {
        match self {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// The VMI's disk name; the QEMU device id is `disk-<name>`.
    pub name: String,
    /// Image file (a qcow2 overlay, a raw file, an ISO).
    pub path: PathBuf,
    pub format: DiskFormat,
    pub bus: Bus,
    pub device: DeviceKind,
    pub boot_order: Option<u32>,
    /// Cdroms are always read-only, whatever this says.
    pub readonly: bool,
    pub serial: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Qcow2,
    Raw,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bus {
    Virtio,
    Sata,
    Scsi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Disk,
    Cdrom,
    Lun,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicConfig {
    /// The VMI's interface name; the QEMU device id is `net-<name>`, the netdev id `netdev-<name>`.
    pub name: String,
    /// Host tap device, created beforehand (in the VMI's network namespace).
    pub tap: String,
    pub mac: String,
    /// One of [`NIC_MODELS`]; [`DEFAULT_NIC_MODEL`] unless the VMI asks otherwise.
    pub model: String,
    pub boot_order: Option<u32>,
}

pub const DEFAULT_NIC_MODEL: &str = "virtio-net-pci";

/// A QEMU release, as printed by `qemu-system-x86_64 --version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct QemuVersion {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

impl QemuVersion {
    /// Debian 12's QEMU, the baseline kumo targets.
    pub const DEBIAN_BOOKWORM: QemuVersion = QemuVersion { major: 7, minor: 2, micro: 0 };
    /// First release with `-run-with user=` (and the one that deprecated `-runas`).
    pub const RUN_WITH_USER: QemuVersion = QemuVersion { major: 9, minor: 1, micro: 0 };

    /// Parse the first line of `--version` output: `QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7...)`.
    pub fn parse(version_output: &str) -> Option<QemuVersion> {
        let rest = version_output.split("version ").nth(1)?;
        let token: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
        let mut nums = token.split('.').map(|n| n.parse::<u32>().ok());
        let major = nums.next()??;
        let minor = nums.next().flatten().unwrap_or(0);
        let micro = nums.next().flatten().unwrap_or(0);
        Some(QemuVersion { major, minor, micro })
    }

    pub fn has_run_with_user(self) -> bool {
        self >= Self::RUN_WITH_USER
    }
}

impl fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// The files of one guest inside its run directory. The agent owns the directory; QEMU creates the sockets
/// and the pid file, and writes the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPaths {
    dir: PathBuf,
}

impl RunPaths {
    pub fn new(dir: impl AsRef<Path>) -> Self {
        RunPaths { dir: dir.as_ref().to_path_buf() }
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// QMP control socket (one client at a time).
    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    /// The guest agent's virtio-serial port (`org.qemu.guest_agent.0`), one client at a time.
    pub fn guest_agent_socket(&self) -> PathBuf {
        self.dir.join("qga.sock")
    }
    /// Serial console socket, for interactive `virtctl console`.
    pub fn serial_socket(&self) -> PathBuf {
        self.dir.join("serial.sock")
    }
    /// QEMU's VNC server (RFB), for `virtctl vnc`: a unix socket, never a TCP port.
    pub fn vnc_socket(&self) -> PathBuf {
        self.dir.join("vnc.sock")
    }
    /// Everything the guest wrote to its serial console, whether or not anyone was connected.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("qemu.pid")
    }
    /// QEMU's own stdout/stderr.
    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }
}
