//! Successful pulls: direct, cached, by digest, through a mirror, concurrently, offline, from an index.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use super::*;
use crate::image::registry::{Platform, OCI_INDEX};
use crate::image::{create_overlay, image_info, ImageCache};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_caches_mirrors_and_survives_registry_outage() {
    let mut reg = TestRegistry::start();
    let disk = qcow2("64M");
    let digest = reg.push_image("kubevirt/test", "latest", vec![disk_layer(disk.clone())]).await;
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(cache_dir.path());
    let cfg = reg.config();
    let reference = format!("{}/kubevirt/test:latest", reg.host);

    // First pull: downloaded, extracted, verified, read-only.
    let got = cache.disk_for(&reference, &cfg, PullPolicy::Always).await.unwrap();
    assert_eq!(got.digest, digest);
    assert_eq!(got.format, "qcow2");
    assert_eq!(got.virtual_size, 64 << 20);
    assert_eq!(got.path, cache_dir.path().join(digest.replace(':', "-")).join("disk.img"));
    assert_eq!(std::fs::read(&got.path).unwrap(), disk);
    assert_eq!(std::fs::metadata(&got.path).unwrap().permissions().mode() & 0o777, 0o444);
    assert!(stray_files(cache_dir.path()).is_empty(), "{:?}", stray_files(cache_dir.path()));

    // Same image again, by tag and by digest: same file.
    assert_eq!(cache.disk_for(&reference, &cfg, PullPolicy::Always).await.unwrap(), got);
    let by_digest = format!("{}/kubevirt/test@{digest}", reg.host);
    assert_eq!(cache.disk_for(&by_digest, &cfg, PullPolicy::Always).await.unwrap(), got);

    // A mirror: quay.io/kubevirt/test is served by the local registry.
    let mirrored = RegistryConfig {
        mirrors: [("quay.io".to_string(), vec![reg.host.clone()])].into(),
        insecure: [reg.host.clone()].into(),
    };
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = Arc::new(ImageCache::new(fresh_dir.path()));
    let via_mirror = fresh.disk_for("quay.io/kubevirt/test:latest", &mirrored, PullPolicy::Always).await.unwrap();
    assert_eq!(via_mirror.digest, digest);
    assert_eq!(std::fs::read(&via_mirror.path).unwrap(), disk);

    // Concurrent pulls of one digest into an empty cache: one download, every caller gets the same file.
    let blob_gets = || reg.log().lines().filter(|l| l.contains("response completed") && l.contains("/blobs/")).count();
    let before = blob_gets();
    let racing_dir = tempfile::tempdir().unwrap();
    let racing = Arc::new(ImageCache::new(racing_dir.path()));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (c, r, cfg) = (racing.clone(), reference.clone(), cfg.clone());
            tokio::spawn(async move { c.disk_for(&r, &cfg, PullPolicy::Always).await })
        })
        .collect();
    for t in tasks {
        let d = t.await.unwrap().unwrap();
        assert_eq!(d.digest, digest);
        assert_eq!(std::fs::read(&d.path).unwrap(), disk);
    }
    assert!(stray_files(racing_dir.path()).is_empty());
    assert_eq!(blob_gets() - before, 1, "one layer download for four callers:\n{}", reg.log());

    // An overlay on the shared base: nothing written, backing file recorded.
    let overlay = cache_dir.path().join("vm-overlay.qcow2");
    create_overlay(&got.path, &got.format, &overlay).await.unwrap();
    let info = image_info(&overlay).await.unwrap();
    assert_eq!(info.format, "qcow2");
    assert_eq!(info.virtual_size, 64 << 20);
    assert_eq!(info.backing_file.as_deref(), Some(got.path.to_str().unwrap()));

    // Registry gone: tag and digest still resolve from the cache; an image never pulled fails clearly.
    reg.stop();
    assert_eq!(cache.disk_for(&reference, &cfg, PullPolicy::Always).await.unwrap(), got);
    assert_eq!(cache.disk_for(&by_digest, &cfg, PullPolicy::Always).await.unwrap(), got);
    assert_eq!(
        fresh.disk_for("quay.io/kubevirt/test:latest", &mirrored, PullPolicy::Always).await.unwrap(),
        via_mirror
    );
    let err = format!(
        "{:#}",
        cache.disk_for(&format!("{}/kubevirt/other:v1", reg.host), &cfg, PullPolicy::Always).await.unwrap_err()
    );
    assert!(err.contains("connecting to") && err.contains(&reg.host), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolves_indexes_raw_disks_and_plain_tar_layers() {
    let reg = TestRegistry::start();
    let cfg = reg.config();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(cache_dir.path());

    // A raw disk (random data, then a zero hole that stays sparse) in an uncompressed layer, owned by 107.
    let mut raw: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    raw.resize(8 << 20, 0);
    let plain = layer(&[Entry::File("./disk/raw.img", raw.clone()), Entry::File("etc/readme", b"hi".to_vec())], false);
    let amd64 = reg.push_image("kubevirt/multi", "amd64-only", vec![(OCI_LAYER_TAR, plain)]).await;
    let other = reg.push_image("kubevirt/multi", "arm64-only", vec![disk_layer(qcow2("1M"))]).await;

    let entry = |digest: &str, arch: &str| {
        let mut d = Descriptor { media_type: OCI_MANIFEST.into(), digest: digest.into(), size: 0, platform: None };
        d.size = std::fs::metadata(reg.blob_path(digest)).unwrap().len();
        d.platform = Some(Platform { architecture: arch.into(), os: "linux".into(), variant: None });
        d
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [entry(&other, "arm64"), entry(&amd64, "amd64")],
    });
    reg.push_manifest("kubevirt/multi", "latest", OCI_INDEX, serde_json::to_vec(&index).unwrap()).await;

    let got = cache.disk_for(&format!("{}/kubevirt/multi", reg.host), &cfg, PullPolicy::Always).await.unwrap();
    assert_eq!(got.digest, amd64, "the index resolves to the linux/amd64 manifest");
    assert_eq!(got.format, "raw");
    assert_eq!(got.virtual_size, 8 << 20);
    assert_eq!(std::fs::read(&got.path).unwrap(), raw);
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(&got.path).unwrap().blocks() * 512;
    assert!(allocated < 4 << 20, "zero blocks should stay holes ({allocated} bytes allocated)");

    // An index without linux/amd64.
    let arm_only =
        serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry(&other, "arm64")]});
    reg.push_manifest("kubevirt/multi", "arm", OCI_INDEX, serde_json::to_vec(&arm_only).unwrap()).await;
    let err = format!(
        "{:#}",
        cache.disk_for(&format!("{}/kubevirt/multi:arm", reg.host), &cfg, PullPolicy::Always).await.unwrap_err()
    );
    assert!(err.contains("no linux/amd64 manifest") && err.contains("linux/arm64"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_boot_files_are_extracted_by_path() {
    let mut reg = TestRegistry::start();
    let (kernel, initrd) = (b"not really a kernel".to_vec(), b"initramfs bytes".to_vec());
    let layers = vec![
        (OCI_LAYER_GZIP, layer(&[Entry::Dir("boot"), Entry::File("boot/vmlinuz", b"old".to_vec())], true)),
        (
            OCI_LAYER_GZIP,
            layer(
                &[
                    Entry::File("boot/vmlinuz", kernel.clone()),
                    Entry::File("boot/initrd.img", initrd.clone()),
                    Entry::File("vmlinuz", kernel.clone()),
                    Entry::Symlink("boot/vmlinuz-link", "vmlinuz"),
                ],
                true,
            ),
        ),
    ];
    let digest = reg.push_image("kubevirt/kernel", "latest", layers).await;
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(cache_dir.path());
    let (cfg, reference) = (reg.config(), format!("{}/kubevirt/kernel:latest", reg.host));

    // The upper layer's kernel wins; files land read-only under the digest's directory, in the order asked.
    let got =
        cache.files_for(&reference, &cfg, PullPolicy::Always, &["/boot/vmlinuz", "/boot/initrd.img"]).await.unwrap();
    let dir = cache_dir.path().join(digest.replace(':', "-")).join("files");
    assert_eq!(got, vec![dir.join("boot/vmlinuz"), dir.join("boot/initrd.img")]);
    assert_eq!(std::fs::read(&got[0]).unwrap(), kernel);
    assert_eq!(std::fs::read(&got[1]).unwrap(), initrd);
    assert_eq!(std::fs::metadata(&got[0]).unwrap().permissions().mode() & 0o777, 0o444);
    assert!(stray_files(cache_dir.path()).is_empty(), "{:?}", stray_files(cache_dir.path()));
    let at_root = cache.files_for(&reference, &cfg, PullPolicy::Always, &["/vmlinuz"]).await.unwrap();
    assert_eq!(std::fs::read(&at_root[0]).unwrap(), kernel, "a file at the image root");

    // What is missing, linked or not a path is named.
    let err = |paths: &'static [&'static str]| {
        let (cache, cfg, reference) = (&cache, &cfg, &reference);
        async move { format!("{:#}", cache.files_for(reference, cfg, PullPolicy::Always, paths).await.unwrap_err()) }
    };
    let e = err(&["/boot/vmlinuz", "/boot/nope"]).await;
    assert!(e.contains("the image has no file /boot/nope"), "{e}");
    let e = err(&["/boot/vmlinuz-link"]).await;
    assert!(e.contains("boot/vmlinuz-link is a link") && e.contains("\"vmlinuz\""), "{e}");
    let e = err(&["boot/vmlinuz"]).await;
    assert!(e.contains("not an absolute path"), "{e}");
    assert!(stray_files(cache_dir.path()).is_empty(), "{:?}", stray_files(cache_dir.path()));

    // With the registry gone, the files the tag last resolved to are still served.
    reg.stop();
    let again =
        cache.files_for(&reference, &cfg, PullPolicy::Always, &["/boot/vmlinuz", "/boot/initrd.img"]).await.unwrap();
    assert_eq!(again, got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_policies_decide_when_the_registry_is_asked() {
    let mut reg = TestRegistry::start();
    let v1 = reg.push_image("kubevirt/pol", "stable", vec![disk_layer(qcow2("1M"))]).await;
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(cache_dir.path());
    let (cfg, reference) = (reg.config(), format!("{}/kubevirt/pol:stable", reg.host));
    let never = format!("{:#}", cache.disk_for(&reference, &cfg, PullPolicy::Never).await.unwrap_err());
    assert!(never.contains("not in the node's image cache") && never.contains("Never"), "{never}");
    assert_eq!(cache.disk_for(&reference, &cfg, PullPolicy::IfNotPresent).await.unwrap().digest, v1);

    // The tag moves: IfNotPresent and Never keep the cached image, Always follows the tag.
    let v2 = reg.push_image("kubevirt/pol", "stable", vec![disk_layer(qcow2("2M"))]).await;
    assert_ne!(v1, v2);
    assert_eq!(cache.disk_for(&reference, &cfg, PullPolicy::IfNotPresent).await.unwrap().digest, v1);
    assert_eq!(cache.disk_for(&reference, &cfg, PullPolicy::Never).await.unwrap().digest, v1);
    assert_eq!(cache.disk_for(&reference, &cfg, PullPolicy::Always).await.unwrap().digest, v2);
    reg.stop();
    assert_eq!(cache.disk_for(&reference, &cfg, PullPolicy::IfNotPresent).await.unwrap().digest, v2);

    // Kubernetes' defaults.
    assert_eq!(PullPolicy::for_image(None, "quay.io/x/y:latest"), PullPolicy::Always);
    assert_eq!(PullPolicy::for_image(None, "quay.io/x/y"), PullPolicy::Always);
    assert_eq!(PullPolicy::for_image(None, "quay.io/x/y:v1"), PullPolicy::IfNotPresent);
    assert_eq!(PullPolicy::for_image(Some("Always"), "quay.io/x/y:v1"), PullPolicy::Always);
    assert_eq!(PullPolicy::for_image(Some("Never"), "quay.io/x/y:latest"), PullPolicy::Never);
}
