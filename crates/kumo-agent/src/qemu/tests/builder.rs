//! `command_line` for a typical VMI, checked fragment by fragment.

use std::path::PathBuf;

use crate::qemu::builder::{command_line, escape, run_as_args};
use crate::qemu::config::*;

/// A VMI like KubeVirt's examples: virtio root disk (boot 1), SATA cloud-init cdrom, SCSI data disk and LUN,
/// two NICs (virtio boot 2, e1000), rng, direct kernel boot.
fn typical() -> LaunchConfig {
    let mut cfg = LaunchConfig::new("default_testvm", "5e5c1c4a-0d1a-4c56-9a47-3b4a1de1b7a1", "/run/kumo/vms/abc");
    cfg.smbios_serial = Some("serial,1".into());
    cfg.cpu = CpuTopology { sockets: 1, cores: 2, threads: 1 };
    cfg.memory_mib = 512;
    let disk = |name: &str, path: &str, format, bus, device| DiskConfig {
        name: name.into(),
        path: PathBuf::from(path),
        format,
        bus,
        device,
        boot_order: None,
        readonly: false,
        serial: None,
    };
    cfg.disks = vec![
        DiskConfig {
            boot_order: Some(1),
            serial: Some("root-1".into()),
            ..disk("rootdisk", "/var/lib/kumo/root.qcow2", DiskFormat::Qcow2, Bus::Virtio, DeviceKind::Disk)
        },
        disk("cloudinit", "/run/kumo/vms/abc/ci.iso", DiskFormat::Raw, Bus::Sata, DeviceKind::Cdrom),
        disk("data", "/var/lib/kumo/data.raw", DiskFormat::Raw, Bus::Scsi, DeviceKind::Disk),
        DiskConfig {
            readonly: true,
            ..disk("lun0", "/var/lib/kumo/lun.raw", DiskFormat::Raw, Bus::Scsi, DeviceKind::Lun)
        },
    ];
    cfg.nics = vec![
        NicConfig {
            name: "default".into(),
            tap: "tap0".into(),
            mac: "02:00:00:aa:bb:01".into(),
            model: DEFAULT_NIC_MODEL.into(),
            boot_order: Some(2),
        },
        NicConfig {
            name: "second".into(),
            tap: "tap1".into(),
            mac: "02:00:00:aa:bb:02".into(),
            model: "e1000".into(),
            boot_order: None,
        },
    ];
    cfg.rng = true;
    cfg.kernel_boot = Some(KernelBoot {
        kernel: "/boot/vmlinuz".into(),
        initrd: Some("/boot/initrd.img".into()),
        cmdline: "console=ttyS0 root=/dev/vda".into(),
    });
    cfg
}

/// Whether `flag value` appears as two consecutive argv elements.
fn has(argv: &[String], flag: &str, value: &str) -> bool {
    argv.windows(2).any(|w| w[0] == flag && w[1] == value)
}

fn assert_has(argv: &[String], flag: &str, value: &str) {
    assert!(has(argv, flag, value), "missing `{flag} {value}` in {argv:#?}");
}

/// Position of `flag value` in argv.
fn pos(argv: &[String], flag: &str, value: &str) -> usize {
    argv.windows(2).position(|w| w[0] == flag && w[1] == value).unwrap_or_else(|| panic!("no `{flag} {value}`"))
}

#[test]
fn typical_vmi_base_options() {
    let cfg = typical();
    cfg.validate().unwrap();
    let a = command_line(&cfg);
    assert_has(&a, "-machine", "q35");
    assert_has(&a, "-accel", "tcg,thread=multi");
    assert_has(&a, "-cpu", "max");
    assert_has(&a, "-smp", "2,sockets=1,cores=2,threads=1");
    assert_has(&a, "-m", "512M");
    assert_has(&a, "-name", "guest=default_testvm,debug-threads=on");
    assert_has(&a, "-uuid", "5e5c1c4a-0d1a-4c56-9a47-3b4a1de1b7a1");
    assert_has(&a, "-smbios", "type=1,serial=serial,,1");
    for f in ["-nodefaults", "-no-user-config", "-nographic"] {
        assert!(a.iter().any(|x| x == f), "missing {f}");
    }
    assert_has(&a, "-display", "none");
    assert_has(&a, "-boot", "strict=on");
    assert!(!a.iter().any(|x| x == "-daemonize" || x == "-S"));
    assert!(!a.iter().any(|x| x.contains("kvm-pit")));
}

#[test]
fn qmp_serial_and_pidfile_live_in_run_dir() {
    let a = command_line(&typical());
    assert_has(&a, "-chardev", "socket,id=qmp,path=/run/kumo/vms/abc/qmp.sock,server=on,wait=off");
    assert_has(&a, "-mon", "chardev=qmp,mode=control");
    assert_has(
        &a,
        "-chardev",
        "socket,id=serial0,path=/run/kumo/vms/abc/serial.sock,server=on,wait=off,\
         logfile=/run/kumo/vms/abc/console.log,logappend=on",
    );
    assert_has(&a, "-serial", "chardev:serial0");
    assert_has(&a, "-pidfile", "/run/kumo/vms/abc/qemu.pid");
}

#[test]
fn virtio_disk_with_boot_order_and_serial() {
    let a = command_line(&typical());
    assert_has(
        &a,
        "-blockdev",
        "driver=file,filename=/var/lib/kumo/root.qcow2,node-name=drive0-file,read-only=off,discard=unmap",
    );
    assert_has(&a, "-blockdev", "driver=qcow2,file=drive0-file,node-name=drive0,read-only=off,discard=unmap");
    assert_has(&a, "-device", "virtio-blk-pci,id=disk-rootdisk,drive=drive0,bootindex=1,serial=root-1");
    // Nodes are defined before the device that uses them.
    let node = pos(&a, "-blockdev", "driver=qcow2,file=drive0-file,node-name=drive0,read-only=off,discard=unmap");
    assert!(node < pos(&a, "-device", "virtio-blk-pci,id=disk-rootdisk,drive=drive0,bootindex=1,serial=root-1"));
}

#[test]
fn sata_cdrom_is_read_only_ide_cd_on_builtin_ahci() {
    let a = command_line(&typical());
    assert_has(
        &a,
        "-blockdev",
        "driver=file,filename=/run/kumo/vms/abc/ci.iso,node-name=drive1-file,read-only=on,discard=unmap",
    );
    assert_has(&a, "-blockdev", "driver=raw,file=drive1-file,node-name=drive1,read-only=on,discard=unmap");
    assert_has(&a, "-device", "ide-cd,bus=ide.0,id=disk-cloudinit,drive=drive1");
}

#[test]
fn scsi_disks_share_one_virtio_scsi_controller() {
    let a = command_line(&typical());
    let controller = pos(&a, "-device", "virtio-scsi-pci,id=scsi0");
    assert_eq!(a.iter().filter(|x| x.starts_with("virtio-scsi-pci")).count(), 1);
    let data = pos(&a, "-device", "scsi-hd,bus=scsi0.0,channel=0,scsi-id=0,lun=0,id=disk-data,drive=drive2");
    let lun = pos(&a, "-device", "scsi-hd,bus=scsi0.0,channel=0,scsi-id=0,lun=1,id=disk-lun0,drive=drive3");
    assert!(controller < data && data < lun);
    assert_has(&a, "-blockdev", "driver=raw,file=drive3-file,node-name=drive3,read-only=on,discard=unmap");
}

#[test]
fn two_nics_on_taps() {
    let a = command_line(&typical());
    assert_has(&a, "-netdev", "tap,id=netdev-default,ifname=tap0,script=no,downscript=no");
    assert_has(&a, "-device", "virtio-net-pci,id=net-default,netdev=netdev-default,mac=02:00:00:aa:bb:01,bootindex=2");
    assert_has(&a, "-netdev", "tap,id=netdev-second,ifname=tap1,script=no,downscript=no");
    assert_has(&a, "-device", "e1000,id=net-second,netdev=netdev-second,mac=02:00:00:aa:bb:02,romfile=");
}

#[test]
fn kubevirt_virtio_model_alias() {
    let mut cfg = typical();
    cfg.nics[1].model = "virtio".into();
    cfg.validate().unwrap();
    let a = command_line(&cfg);
    assert_has(&a, "-device", "virtio-net-pci,id=net-second,netdev=netdev-second,mac=02:00:00:aa:bb:02,romfile=");
}

#[test]
fn rng_and_kernel_boot() {
    let a = command_line(&typical());
    assert_has(&a, "-object", "rng-random,filename=/dev/urandom,id=rng0");
    assert_has(&a, "-device", "virtio-rng-pci,rng=rng0");
    assert_has(&a, "-kernel", "/boot/vmlinuz");
    assert_has(&a, "-initrd", "/boot/initrd.img");
    assert_has(&a, "-append", "console=ttyS0 root=/dev/vda");

    let mut paused = typical();
    paused.start_paused = true;
    assert!(command_line(&paused).iter().any(|x| x == "-S"));

    let mut bare = LaunchConfig::new("bare", "5e5c1c4a-0d1a-4c56-9a47-3b4a1de1b7a1", "/run/x");
    bare.sandbox = false;
    let a = command_line(&bare);
    for absent in ["-kernel", "-initrd", "-append", "-object", "-smbios", "-boot", "-sandbox", "-runas"] {
        assert!(!a.iter().any(|x| x == absent), "{absent} in {a:?}");
    }
}

#[test]
fn kvm_uses_host_cpu_and_delayed_pit_ticks() {
    let mut cfg = typical();
    cfg.accel = Accel::Kvm;
    let a = command_line(&cfg);
    assert_has(&a, "-accel", "kvm");
    assert_has(&a, "-cpu", "host");
    assert_has(&a, "-global", "kvm-pit.lost_tick_policy=delay");
    assert!(!a.iter().any(|x| x.contains("tcg")));
    // QEMU rejects -machine accel= together with -accel.
    assert!(!a.iter().any(|x| x.contains("accel=")));
}

#[test]
fn sandbox_and_run_as() {
    let mut cfg = typical();
    assert_has(
        &command_line(&cfg),
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    );
    cfg.run_as = Some((107, 107));
    let a = command_line(&cfg);
    // set*id must stay allowed for QEMU's own privilege drop (seccomp is installed first).
    assert_has(&a, "-sandbox", "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny");
    assert_has(&a, "-runas", "107:107");

    cfg.qemu_version = QemuVersion { major: 9, minor: 2, micro: 0 };
    let a = command_line(&cfg);
    assert_has(&a, "-run-with", "user=107:107");
    assert!(!a.iter().any(|x| x == "-runas"));
}

#[test]
fn run_as_depends_on_version() {
    let v = |s| QemuVersion::parse(s).unwrap();
    assert_eq!(
        run_as_args(1, 2, v("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)")),
        ["-runas", "1:2"]
    );
    assert_eq!(run_as_args(1, 2, v("QEMU emulator version 9.0.2")), ["-runas", "1:2"]);
    assert_eq!(run_as_args(1, 2, v("QEMU emulator version 9.1.0")), ["-run-with", "user=1:2"]);
    assert_eq!(run_as_args(1, 2, v("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)")), ["-run-with", "user=1:2"]);
    assert_eq!(v("QEMU emulator version 8.2"), QemuVersion { major: 8, minor: 2, micro: 0 });
    assert_eq!(QemuVersion::parse("nonsense"), None);
}

#[test]
fn commas_are_escaped_in_option_values() {
    assert_eq!(escape("a,b,,c"), "a,,b,,,,c");
    let mut cfg = typical();
    cfg.disks[0].path = "/images/a,b.qcow2".into();
    cfg.name = "ns_a,b".into();
    let a = command_line(&cfg);
    assert_has(&a, "-name", "guest=ns_a,,b,debug-threads=on");
    assert!(a.iter().any(|x| x.starts_with("driver=file,filename=/images/a,,b.qcow2,node-name=drive0-file")));
}

#[test]
fn validation_rejects_what_qemu_would() {
    let bad = |f: &dyn Fn(&mut LaunchConfig)| {
        let mut cfg = typical();
        f(&mut cfg);
        cfg.validate().expect_err("should be invalid")
    };
    bad(&|c| c.uuid = "not-a-uuid".into());
    bad(&|c| c.cpu.cores = 0);
    bad(&|c| c.memory_mib = 0);
    bad(&|c| c.run_dir = "relative".into());
    bad(&|c| c.run_dir = PathBuf::from("/").join("x".repeat(100)));
    bad(&|c| c.disks[1].name = "rootdisk".into());
    bad(&|c| c.disks[0].name = "has space".into());
    bad(&|c| c.disks[1].bus = Bus::Virtio);
    bad(&|c| c.disks[2].boot_order = Some(1));
    bad(&|c| c.nics[1].boot_order = Some(1));
    bad(&|c| {
        c.disks[2].bus = Bus::Sata;
        c.disks[2].readonly = true;
    });
    bad(&|c| c.nics[0].mac = "02:00:00:aa:bb".into());
    bad(&|c| c.nics[0].model = "vmxnet3".into());
    bad(&|c| c.nics[0].tap = "a-very-long-tap-name".into());
    let e = bad(&|c| {
        let d = c.disks[1].clone();
        for i in 0..6 {
            c.disks.push(DiskConfig { name: format!("cd{i}"), boot_order: None, ..d.clone() });
        }
    });
    assert!(e.to_string().contains("AHCI"), "{e}");
}
