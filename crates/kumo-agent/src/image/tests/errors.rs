//! Pulls that must fail, each with a message that says what is wrong, and leave nothing half-written behind.

use super::*;
use crate::image::ImageCache;

async fn pull_err(cache: &ImageCache, reference: &str, cfg: &RegistryConfig) -> String {
    match cache.disk_for(reference, cfg, PullPolicy::Always).await {
        Ok(d) => panic!("pulling {reference} should fail, got {d:?}"),
        Err(e) => {
            let e = format!("{e:#}");
            eprintln!("{reference}: {e}");
            e
        }
    }
}

fn assert_contains(err: &str, parts: &[&str]) {
    for p in parts {
        assert!(err.contains(p), "error should mention {p:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_images_name_every_endpoint_tried() {
    let reg = TestRegistry::start();
    reg.push_image("kubevirt/known", "v1", vec![disk_layer(qcow2("1M"))]).await;
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(cache_dir.path());

    let err = pull_err(&cache, &format!("{}/kubevirt/known:v2", reg.host), &reg.config()).await;
    assert_contains(&err, &["pulling", "kubevirt/known:v2", "manifest unknown", &reg.host, "push the image"]);
    let err = pull_err(&cache, &format!("{}/kubevirt/nope", reg.host), &reg.config()).await;
    assert_contains(&err, &["manifest unknown", "kubevirt/nope:latest", &reg.host]);

    // Through a mirror of a registry that does not resolve: both attempts are reported.
    let cfg = RegistryConfig {
        mirrors: [("mirrored.invalid".to_string(), vec![reg.host.clone()])].into(),
        insecure: [reg.host.clone()].into(),
    };
    let err = pull_err(&cache, "mirrored.invalid/kubevirt/x:latest", &cfg).await;
    assert_contains(
        &err,
        &[
            "pulling mirrored.invalid/kubevirt/x:latest",
            &format!("at {} (mirror of mirrored.invalid)", reg.host),
            "at mirrored.invalid",
            "configure a mirror or push the image",
        ],
    );

    // A registry that is not running.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let down = format!("127.0.0.1:{port}");
    let cfg = RegistryConfig { insecure: [down.clone()].into(), ..Default::default() };
    let err = pull_err(&cache, &format!("{down}/a/b"), &cfg).await;
    assert_contains(&err, &["connecting to", &down]);
    // A bad reference never reaches the network.
    assert_contains(&pull_err(&cache, "quay.io/UPPER", &cfg).await, &["invalid image reference"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_container_disks_are_rejected() {
    let reg = TestRegistry::start();
    let cfg = reg.config();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(cache_dir.path());
    let good = qcow2("1M");
    let gz = |entries: &[Entry]| (OCI_LAYER_GZIP, layer(entries, true));

    let cases: Vec<(&str, Layers, Vec<&str>)> = vec![
        (
            "two",
            vec![gz(&[Entry::File("disk/a.qcow2", good.clone()), Entry::File("disk/b.qcow2", good.clone())])],
            vec!["2 files under disk/", "disk/a.qcow2", "disk/b.qcow2", "exactly one"],
        ),
        ("none", vec![gz(&[Entry::Dir("disk"), Entry::File("etc/motd", b"hi".to_vec())])], vec!["no disk file"]),
        ("nolayers", vec![], vec!["no disk file"]),
        (
            "symlink",
            vec![gz(&[Entry::Symlink("disk/x.qcow2", "/etc/shadow")])],
            vec!["disk/x.qcow2 is a link", "regular file"],
        ),
        (
            "traversal",
            vec![gz(&[Entry::RawName("disk/../../etc/evil", good.clone())])],
            vec!["escapes the image root", "path traversal"],
        ),
        (
            "corrupt",
            vec![gz(&[Entry::File("disk/x.qcow2", {
                let mut bad = good.clone();
                bad[4..8].copy_from_slice(&99u32.to_be_bytes()); // qcow2 version 99
                bad
            })])],
            vec!["disk/x.qcow2 is corrupt or unsupported", "Unsupported qcow2 version 99"],
        ),
        (
            "backing",
            vec![gz(&[Entry::File(
                "disk/x.qcow2",
                made_by_qemu_img(&["-f", "qcow2", "-F", "raw", "-b", "/etc/hostname", "-u"]),
            )])],
            vec!["external file", "/etc/hostname"],
        ),
        (
            "vmdk",
            vec![gz(&[Entry::File("disk/x.vmdk", made_by_qemu_img(&["-f", "vmdk"]))])],
            vec!["disk/x.vmdk is a vmdk image", "qcow2 or raw"],
        ),
        ("zstd", vec![("application/vnd.oci.image.layer.v1.tar+zstd", vec![0x28, 0xb5, 0x2f, 0xfd])], vec!["zstd"]),
        (
            "whiteout",
            vec![disk_layer(good.clone()), gz(&[Entry::File("disk/.wh.test.qcow2", vec![])])],
            vec!["no disk file"],
        ),
    ];
    for (tag, layers, expect) in cases {
        reg.push_image("kubevirt/bad", tag, layers).await;
        let err = pull_err(&cache, &format!("{}/kubevirt/bad:{tag}", reg.host), &cfg).await;
        assert_contains(&err, &expect);
        assert!(stray_files(cache_dir.path()).is_empty(), "{tag}: {:?}", stray_files(cache_dir.path()));
    }
    // A later layer replacing the disk is fine: the last copy wins.
    let replaced = qcow2("2M");
    reg.push_image("kubevirt/bad", "replaced", vec![disk_layer(good.clone()), disk_layer(replaced.clone())]).await;
    let got = cache.disk_for(&format!("{}/kubevirt/bad:replaced", reg.host), &cfg, PullPolicy::Always).await.unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), replaced);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_blobs_fail_digest_verification() {
    let reg = TestRegistry::start();
    let cfg = reg.config();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(cache_dir.path());
    let (media_type, layer_bytes) = disk_layer(qcow2("1M"));
    let layer_digest = sha256_digest(&layer_bytes);
    let digest = reg.push_image("kubevirt/tamper", "latest", vec![(media_type, layer_bytes)]).await;

    // Flip bytes in the stored layer, keeping its size.
    let path = reg.blob_path(&layer_digest);
    let mut stored = std::fs::read(&path).unwrap();
    let mid = stored.len() / 2;
    stored[mid] ^= 0xff;
    std::fs::write(&path, stored).unwrap();

    let err = pull_err(&cache, &format!("{}/kubevirt/tamper:latest", reg.host), &cfg).await;
    assert_contains(&err, &["digest mismatch", &layer_digest, &reg.host]);
    assert!(!cache_dir.path().join(digest.replace(':', "-")).join("disk.img").exists());
    assert!(stray_files(cache_dir.path()).is_empty(), "{:?}", stray_files(cache_dir.path()));

    // A digest reference whose manifest does not hash to it is refused. The registry's copy is altered, still
    // valid JSON of the same length (the registry parses what it serves): one digit of a size changes.
    let manifest = reg.blob_path(&digest);
    let mut stored = std::fs::read(&manifest).unwrap();
    let at = stored.windows(7).position(|w| w == b"\"size\":").unwrap() + 7;
    stored[at] = if stored[at] == b'9' { b'8' } else { stored[at] + 1 };
    std::fs::write(&manifest, stored).unwrap();
    let err = pull_err(&cache, &format!("{}/kubevirt/tamper@{digest}", reg.host), &cfg).await;
    assert_contains(&err, &["manifest digest mismatch", &digest]);
}

/// An image made by `qemu-img create -q <args> x 1M`.
fn made_by_qemu_img(args: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x");
    let out = Command::new("qemu-img").arg("create").arg("-q").args(args).arg(&path).arg("1M").output().unwrap();
    assert!(out.status.success(), "qemu-img create: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::read(path).unwrap()
}
