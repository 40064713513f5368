//! The seed images read by a real guest kernel: Debian's cloud kernel boots under QEMU (TCG) with a busybox
//! initramfs, mounts both images (virtio disks, as KubeVirt attaches them) with its iso9660 driver, and prints a
//! SHA-256 of every file it finds. Useful where the host kernel has no iso9660 driver, so the loop mount in
//! `tests.rs` cannot run. Needs the kernel and busybox-static packages already cached by the guest image build
//! (`$KUMO_CACHE/debs`, default `~/.cache/kumo/debs`); fails, saying what to run, when they or QEMU are missing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::*;

const MODULES: [&str; 9] = [
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_pci_legacy_dev",
    "drivers/virtio/virtio_pci_modern_dev",
    "drivers/virtio/virtio_pci",
    "drivers/block/virtio_blk",
    "drivers/cdrom/cdrom",
    "fs/isofs/isofs",
    "fs/nls/nls_utf8",
];

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
while read -r m; do insmod "/mods/$m.ko" || echo "INSMOD-FAILED $m"; done < /mods/order
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vdb ] && break; sleep 0.2; done
for dev in vda vdb; do
  mkdir -p /m/$dev
  if mount -t iso9660 -o ro /dev/$dev /m/$dev; then
    (cd /m/$dev && find . -type f | while read -r f; do echo "FILE $dev ${f#./} $(sha256sum < "$f" | cut -c1-64)"; done)
    umount /m/$dev
  else
    echo "MOUNT-FAILED $dev"
  fi
done
dmesg | grep -i joliet | sed 's/^/DMESG /'
echo GUEST-DONE
poweroff -f
"#;

fn find_deb(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix) && n.ends_with(".deb"))
        })
        .collect();
    found.sort();
    found.pop()
}

fn sh(script: &str) {
    let out = Command::new("sh").args(["-ec", script]).output().unwrap();
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn guest_kernel_mounts_seed_images() {
    // Where images/build-guest.sh keeps the .debs it downloaded.
    let cache = std::env::var_os("KUMO_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/kumo"))
        .join("debs");
    let (Some(kernel_deb), Some(busybox_deb)) = (find_deb(&cache, "linux-image-"), find_deb(&cache, "busybox-static_"))
    else {
        panic!("no linux-image/busybox-static .deb in {}: run images/build-guest.sh", cache.display());
    };
    for tool in ["qemu-system-x86_64", "dpkg-deb", "cpio", "gzip"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output();
        assert!(found.is_ok_and(|o| o.status.success()), "{tool} is required by this test: run scripts/setup.sh");
    }

    let mut user_data = b"#cloud-config\n".to_vec();
    while user_data.len() < 5000 {
        user_data.extend(b"# a filler line so that user-data spans three sectors\n");
    }
    let d = CloudInitData {
        user_data: Some(user_data),
        network_data: Some(b"version: 2\nethernets: {}\n".to_vec()),
        instance_id: "vm1.default".into(),
        hostname: "vm1".into(),
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("nocloud.iso"), nocloud_iso(&d)).unwrap();
    std::fs::write(dir.join("configdrive.iso"), configdrive_iso(&d)).unwrap();

    // Kernel, modules and busybox into an initramfs.
    let q = |p: &Path| p.to_str().unwrap().to_string();
    sh(&format!(
        "dpkg-deb -x '{}' '{}/k' && dpkg-deb -x '{}' '{}/bb'",
        q(&kernel_deb),
        q(dir),
        q(&busybox_deb),
        q(dir)
    ));
    let root = dir.join("initrd");
    for sub in ["bin", "mods", "proc", "sys", "dev", "m"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::fs::copy(dir.join("bb/bin/busybox"), root.join("bin/busybox")).unwrap();
    let kernel_dir = std::fs::read_dir(dir.join("k/lib/modules")).unwrap().next().unwrap().unwrap().path();
    let mut order = String::new();
    for module in MODULES {
        let name = module.rsplit('/').next().unwrap();
        std::fs::copy(kernel_dir.join(format!("kernel/{module}.ko")), root.join(format!("mods/{name}.ko"))).unwrap();
        order += &format!("{name}\n");
    }
    std::fs::write(root.join("mods/order"), order).unwrap();
    std::fs::write(root.join("init"), INIT).unwrap();
    let pack = "find . | cpio -o -H newc 2>/dev/null | gzip > ../initrd.gz";
    sh(&format!("chmod +x '{0}/init' '{0}/bin/busybox' && cd '{0}' && {pack}", q(&root)));
    let vmlinuz = std::fs::read_dir(dir.join("k/boot"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz")));

    let out = Command::new("timeout")
        .args([
            "300",
            "qemu-system-x86_64",
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-m",
            "256",
            "-nographic",
            "-no-reboot",
        ])
        .args(["-kernel", &q(&vmlinuz.expect("vmlinuz in the kernel package")), "-initrd", &q(&dir.join("initrd.gz"))])
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .args(["-drive", &format!("file={},format=raw,if=virtio,readonly=on", q(&dir.join("nocloud.iso")))])
        .args(["-drive", &format!("file={},format=raw,if=virtio,readonly=on", q(&dir.join("configdrive.iso")))])
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(console.contains("GUEST-DONE"), "guest did not finish: {console}");
    assert!(!console.contains("-FAILED"), "{console}");
    assert_eq!(console.matches("Microsoft Joliet Level 3").count(), 2, "the kernel used the Joliet tree: {console}");

    let seen: BTreeMap<(String, String), String> = console
        .lines()
        .filter_map(|l| l.trim_end().split_once("FILE ").map(|(_, rest)| rest)) // lines may start with escapes
        .map(|l| {
            let parts: Vec<&str> = l.split(' ').collect();
            ((parts[0].to_string(), parts[1].to_string()), parts[2].to_string())
        })
        .collect();
    let hash = |b: &[u8]| Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut expected = BTreeMap::new();
    let meta = b"{\"instance-id\":\"vm1.default\",\"local-hostname\":\"vm1\"}\n";
    for (name, data) in [
        ("user-data", d.user_data.as_deref().unwrap()),
        ("meta-data", meta),
        ("network-config", d.network_data.as_deref().unwrap()),
    ] {
        expected.insert(("vda".to_string(), name.to_string()), hash(data));
    }
    let uuid = instance_uuid("vm1.default");
    let cd_meta =
        format!("{{\"uuid\":\"{uuid}\",\"instance_id\":\"vm1.default\",\"hostname\":\"vm1\",\"name\":\"vm1\"}}\n");
    for version in ["latest", "2012-08-10"] {
        let files = [
            ("user_data", d.user_data.as_deref().unwrap()),
            ("meta_data.json", cd_meta.as_bytes()),
            ("network_data.json", d.network_data.as_deref().unwrap()),
        ];
        for (name, data) in files {
            expected.insert(("vdb".to_string(), format!("openstack/{version}/{name}")), hash(data));
        }
    }
    assert_eq!(seen, expected, "files and contents as the guest kernel reads them; console: {console}");
}
