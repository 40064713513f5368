//! The one place a [`LaunchConfig`] becomes a `qemu-system-x86_64` argv.
//!
//! Pure: no I/O, no probing. Everything version- or host-dependent arrives in the config ([`Accel`],
//! [`QemuVersion`](crate::qemu::QemuVersion)). The layout follows what libvirt would generate for a KubeVirt
//! domain, minus libvirt: `-nodefaults` q35, `-blockdev` nodes under each disk device, tap netdevs, QMP and
//! the serial console on unix sockets in the run directory.
//!
//! Ids, so QMP callers can find devices again: a disk is device `disk-<name>` over format node `drive<i>`
//! over protocol node `drive<i>-file` (`i` = position in [`LaunchConfig::disks`]; node names are limited to
//! 31 bytes, so they cannot carry the disk name); a NIC is device `net-<name>` over netdev `netdev-<name>`.

use crate::qemu::config::{Accel, Bus, DeviceKind, DiskConfig, LaunchConfig, NicConfig, QemuVersion};

/// The QEMU arguments (without the program name) that start `cfg`. Run [`LaunchConfig::validate`] first.
pub fn command_line(cfg: &LaunchConfig) -> Vec<String> {
    let mut a = Args::default();
    machine(&mut a, cfg);
    identity(&mut a, cfg);
    control_and_console(&mut a, cfg);
    confinement(&mut a, cfg);
    disks(&mut a, &cfg.disks);
    nics(&mut a, &cfg.nics);
    if cfg.rng {
        rng(&mut a);
    }
    kernel_boot(&mut a, cfg);
    a.0
}

/// Format node name of the disk at `index` in [`LaunchConfig::disks`] (what QMP block commands take).
pub fn disk_node_name(index: usize) -> String {
    format!("drive{index}")
}

/// Device id of a disk (what `device_del`, `eject` and `qom-get` take).
pub fn disk_device_id(disk: &DiskConfig) -> String {
    format!("disk-{}", disk.name)
}

/// Device id of a NIC.
pub fn nic_device_id(nic: &NicConfig) -> String {
    format!("net-{}", nic.name)
}

/// `-runas` until QEMU 9.0, `-run-with user=` from 9.1 (which deprecated `-runas`). Both take `uid:gid`.
pub fn run_as_args(uid: u32, gid: u32, version: QemuVersion) -> Vec<String> {
    if version.has_run_with_user() {
        vec!["-run-with".into(), format!("user={uid}:{gid}")]
    } else {
        vec!["-runas".into(), format!("{uid}:{gid}")]
    }
}

/// Escape a value inside a QEMU option list (`key=value,key=value`): a literal comma is written twice.
pub fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

#[derive(Default)]
struct Args(Vec<String>);

impl Args {
    fn push(&mut self, flag: &str, value: impl Into<String>) {
        self.0.push(flag.to_string());
        self.0.push(value.into());
    }
    fn flag(&mut self, flag: &str) {
        self.0.push(flag.to_string());
    }
}

fn path_str(p: &std::path::Path) -> String {
    escape(&p.to_string_lossy())
}

/// Machine, accelerator, CPU, memory and the no-defaults baseline.
///
/// `-machine q35` + `-accel …` rather than `-machine q35,accel=…`: QEMU rejects the two spellings together
/// and only `-accel` takes accelerator properties (`thread=multi`: one host thread per vCPU under TCG).
fn machine(a: &mut Args, cfg: &LaunchConfig) {
    a.push("-machine", "q35");
    match cfg.accel {
        Accel::Kvm => {
            a.push("-accel", "kvm");
            // The PIT injects missed ticks late instead of dropping them (libvirt's tickpolicy=delay, which
            // KubeVirt asks for); the device exists only with KVM's in-kernel irqchip.
            a.push("-global", "kvm-pit.lost_tick_policy=delay");
        }
        Accel::Tcg => a.push("-accel", "tcg,thread=multi"),
    }
    a.push("-cpu", cfg.accel.cpu_model());
    let c = cfg.cpu;
    a.push("-smp", format!("{},sockets={},cores={},threads={}", c.vcpus(), c.sockets, c.cores, c.threads));
    a.push("-m", format!("{}M", cfg.memory_mib));
    a.flag("-nodefaults");
    a.flag("-no-user-config");
    a.flag("-nographic");
    a.push("-display", "none");
    a.push("-msg", "timestamp=on");
    if cfg.start_paused {
        a.flag("-S");
    }
    let any_boot_order =
        cfg.disks.iter().any(|d| d.boot_order.is_some()) || cfg.nics.iter().any(|n| n.boot_order.is_some());
    if any_boot_order {
        // Boot only from devices with a bootindex, as libvirt does.
        a.push("-boot", "strict=on");
    }
}

fn identity(a: &mut Args, cfg: &LaunchConfig) {
    a.push("-name", format!("guest={},debug-threads=on", escape(&cfg.name)));
    a.push("-uuid", cfg.uuid.clone());
    if let Some(serial) = &cfg.smbios_serial {
        a.push("-smbios", format!("type=1,serial={}", escape(serial)));
    }
}

/// QMP, the serial console and the guest agent's channel on unix sockets in the run directory, the pid file. The console chardev also
/// logs to `console.log`, so output is kept while nobody is attached.
fn control_and_console(a: &mut Args, cfg: &LaunchConfig) {
    let p = cfg.paths();
    a.push("-chardev", format!("socket,id=qmp,path={},server=on,wait=off", path_str(&p.qmp_socket())));
    a.push("-mon", "chardev=qmp,mode=control");
    a.push(
        "-chardev",
        format!(
            "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=on",
            path_str(&p.serial_socket()),
            path_str(&p.console_log())
        ),
    );
    a.push("-serial", "chardev:serial0");
    if cfg.graphics {
        // The screen is served on a unix socket only, never a TCP port: `virtctl vnc` reaches it through the
        // API server and the node agent.
        a.push("-device", "VGA");
        a.push("-vnc", format!("unix:{}", path_str(&p.vnc_socket())));
    }
    a.push("-pidfile", p.pid_file().to_string_lossy());
    // The guest agent's channel, on every VM as KubeVirt gives it: probes, freezes and guest info use it.
    a.push("-chardev", format!("socket,id=qga0,path={},server=on,wait=off", path_str(&p.guest_agent_socket())));
    a.push("-device", "virtio-serial-pci,id=virtio-serial0");
    a.push("-device", format!("virtserialport,bus=virtio-serial0.0,chardev=qga0,name={}", super::qga::PORT_NAME));
}

/// Seccomp sandbox and privilege drop.
///
/// QEMU installs its seccomp filter before it drops privileges, so `elevateprivileges=deny` together with
/// `-runas` kills QEMU with SIGSYS at the `setgid` (verified with QEMU 7.2). With `run_as`, set*id calls are
/// therefore allowed: after the drop QEMU holds no capability, so they cannot regain root anyway.
fn confinement(a: &mut Args, cfg: &LaunchConfig) {
    if cfg.sandbox {
        let elevate = if cfg.run_as.is_some() { "allow" } else { "deny" };
        a.push("-sandbox", format!("on,obsolete=deny,elevateprivileges={elevate},spawn=deny,resourcecontrol=deny"));
    }
    if let Some((uid, gid)) = cfg.run_as {
        a.0.extend(run_as_args(uid, gid, cfg.qemu_version));
    }
}

/// Disks: a protocol node (`file`) and a format node per disk, then a frontend device by bus. SATA devices
/// sit on q35's built-in AHCI ports `ide.0`…`ide.5`; SCSI devices share one `virtio-scsi-pci` controller,
/// which every guest has (as KubeVirt gives every guest one): volumes are hot-plugged onto it.
fn disks(a: &mut Args, disks: &[DiskConfig]) {
    a.push("-device", "virtio-scsi-pci,id=scsi0");
    let (mut sata_port, mut scsi_lun) = (0, 0);
    for (i, d) in disks.iter().enumerate() {
        blockdev(a, i, d);
        let mut dev = match d.bus {
            Bus::Virtio => "virtio-blk-pci".to_string(),
            Bus::Sata => {
                let kind = if d.device == DeviceKind::Cdrom { "ide-cd" } else { "ide-hd" };
                sata_port += 1;
                format!("{kind},bus=ide.{}", sata_port - 1)
            }
            Bus::Scsi => {
                // A LUN backed by a file is an ordinary scsi-hd; scsi-block needs a host SCSI device.
                let kind = if d.device == DeviceKind::Cdrom { "scsi-cd" } else { "scsi-hd" };
                scsi_lun += 1;
                format!("{kind},bus=scsi0.0,channel=0,scsi-id=0,lun={}", scsi_lun - 1)
            }
        };
        dev.push_str(&format!(",id={},drive={}", disk_device_id(d), disk_node_name(i)));
        if let Some(n) = d.boot_order {
            dev.push_str(&format!(",bootindex={n}"));
        }
        if let Some(serial) = &d.serial {
            dev.push_str(&format!(",serial={}", escape(serial)));
        }
        a.push("-device", dev);
    }
}

fn blockdev(a: &mut Args, index: usize, d: &DiskConfig) {
    let node = disk_node_name(index);
    let ro = if d.readonly || d.device == DeviceKind::Cdrom { "on" } else { "off" };
    // discard=unmap lets guest TRIM shrink qcow2 overlays; harmless on read-only nodes.
    a.push(
        "-blockdev",
        format!("driver=file,filename={},node-name={node}-file,read-only={ro},discard=unmap", path_str(&d.path)),
    );
    a.push(
        "-blockdev",
        format!("driver={},file={node}-file,node-name={node},read-only={ro},discard=unmap", d.format.as_str()),
    );
}

/// NICs: a tap netdev (the tap exists already; QEMU must not run scripts) and a frontend. A NIC without a
/// boot order gets no option ROM (`romfile=`), as KubeVirt does: no iPXE to load, nothing to boot from it.
fn nics(a: &mut Args, nics: &[NicConfig]) {
    for n in nics {
        let netdev = format!("netdev-{}", n.name);
        a.push("-netdev", format!("tap,id={netdev},ifname={},script=no,downscript=no", escape(&n.tap)));
        let model = if n.model == "virtio" { "virtio-net-pci" } else { n.model.as_str() };
        let mut dev = format!("{model},id={},netdev={netdev},mac={}", nic_device_id(n), n.mac);
        match n.boot_order {
            Some(o) => dev.push_str(&format!(",bootindex={o}")),
            None => dev.push_str(",romfile="),
        }
        a.push("-device", dev);
    }
}

fn rng(a: &mut Args) {
    a.push("-object", "rng-random,filename=/dev/urandom,id=rng0");
    a.push("-device", "virtio-rng-pci,rng=rng0");
}

/// Direct kernel boot. These are whole argv elements, not option lists: no comma escaping.
fn kernel_boot(a: &mut Args, cfg: &LaunchConfig) {
    if let Some(k) = &cfg.kernel_boot {
        a.push("-kernel", k.kernel.to_string_lossy());
        if let Some(initrd) = &k.initrd {
            a.push("-initrd", initrd.to_string_lossy());
        }
        if !k.cmdline.is_empty() {
            a.push("-append", k.cmdline.clone());
        }
    }
}
