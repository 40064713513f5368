//! CDI DataVolumes with real imports and guests: the test guest, served by a local HTTP server this test
//! starts, is imported into a `local` volume with its progress in the DataVolume's status, and a VM boots
//! from it; bad sources (404, a host that does not answer, a garbled image, a cut-off download) are retried
//! with the reason in the status and events, and hurt nothing else. Needs root, QEMU and the test guest +
//! registry that scripts/setup.sh prepares.

use kumo_e2e::files::HttpFiles;
use kumo_e2e::{eventually, Server};
use std::path::PathBuf;
use std::time::Duration;

fn guest_image() -> PathBuf {
    let home = std::env::var("HOME").expect("HOME");
    let p = PathBuf::from(home).join(".cache/kumo/images/guest.qcow2");
    assert!(p.exists(), "{} missing: run scripts/setup.sh (it builds the test guest)", p.display());
    p
}

fn datavolume(name: &str, url: &str, size: &str, immediate: bool) -> String {
    let annotations =
        if immediate { "\n  annotations: {cdi.kubevirt.io/storage.bind.immediate.requested: \"true\"}" } else { "" };
    format!(
        "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: {name}{annotations}\nspec:\n  \
         source:\n    http:\n      url: {url}\n  storage:\n    resources:\n      requests:\n        storage: {size}\n"
    )
}

const VM: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: imported}
spec:
  runStrategy: Always
  template:
    spec:
      terminationGracePeriodSeconds: 5
      domain:
        memory: {guest: 256Mi}
        devices:
          disks:
          - {name: root, disk: {bus: virtio}}
      volumes:
      - name: root
        dataVolume: {name: guest}
"#;

fn get(s: &Server, args: &[&str]) -> String {
    s.kubectl_ok(args).unwrap_or_else(|e| panic!("kubectl {args:?} failed (is the server alive?): {e}"))
}

fn field(s: &Server, dv: &str, path: &str) -> String {
    get(s, &["get", "dv", dv, "-o", &format!("jsonpath={path}")])
}

#[test]
fn an_http_import_shows_progress_and_a_vm_boots_from_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guest_image(), dir.path().join("guest.qcow2")).unwrap();
    // ~19 MiB at 4 MiB/s: a few seconds of progress to watch.
    let http = HttpFiles::start(dir.path(), 4 << 20);
    let mut s = Server::start_with_guests(&[]).unwrap();
    s.apply(&datavolume("guest", &http.url("guest.qcow2"), "256Mi", false)).unwrap();
    // The default class waits for a first consumer: nothing is imported before a VM uses it.
    let waiting = eventually(Duration::from_secs(20), || {
        (field(&s, "guest", "{.status.phase}") == "WaitForFirstConsumer").then_some(())
    });
    assert!(waiting.is_some(), "{}", get(&s, &["get", "dv", "guest", "-o", "yaml"]));
    let header = get(&s, &["get", "dv"]);
    assert!(header.starts_with("NAME") && header.contains("PHASE") && header.contains("PROGRESS"), "{header}");
    assert!(header.contains("RESTARTS") && header.contains("N/A"), "{header}");

    s.apply(VM).unwrap();
    // Midway through the import the server and its agent are SIGKILLed: the half-written image is never
    // marked done, and the import starts again after the restart.
    let mut seen: Vec<String> = Vec::new();
    let mut killed = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let now = field(&s, "guest", "{.status.phase} {.status.progress}");
        if seen.last() != Some(&now) {
            seen.push(now.clone());
        }
        if now.starts_with("Succeeded") {
            break;
        }
        if !killed && now.starts_with("ImportInProgress") && now != "ImportInProgress 0.00%" {
            s.restart().unwrap();
            killed = true;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not imported: {seen:?}\n{}",
            get(&s, &["describe", "dv", "guest"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(killed, "the import was seen in progress (and the server killed then): {seen:?}");
    assert!(
        seen.iter().any(|p| p.starts_with("ImportInProgress") && p.ends_with('%') && !p.ends_with(" 100.00%")),
        "progress was seen midway: {seen:?}"
    );
    assert_eq!(seen.last().unwrap(), "Succeeded 100.00%");
    let ready = field(&s, "guest", r#"{.status.conditions[?(@.type=="Ready")].status}"#);
    assert_eq!(ready, "True");

    // The VM boots from the imported disk: its shell answers on the console.
    if let Err(e) = s.wait_vmi_ready("imported", Duration::from_secs(180)) {
        panic!("{e:#}\n{}", get(&s, &["describe", "vmi", "imported"]));
    }
    let mut console = s.console("imported");
    let answer = console.run("echo booted-$((40+2))", Duration::from_secs(90));
    let (_, stderr) = console.close();
    assert_eq!(answer.as_deref(), Some("booted-42"), "the imported guest's console: {stderr}");
    // The volume holds the image as qcow2, grown to what was asked.
    let pv = get(&s, &["get", "pvc", "guest", "-o", "jsonpath={.spec.volumeName}"]);
    let image = s.data_dir().join("agent/volumes").join(&pv).join("disk.qcow2");
    let info =
        std::process::Command::new("qemu-img").args(["info", "-U", "--output=json"]).arg(&image).output().unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("qemu-img info of the volume");
    assert_eq!((info["format"].as_str(), info["virtual-size"].as_u64()), (Some("qcow2"), Some(256 << 20)));
    let check = std::process::Command::new("qemu-img").args(["check", "-U"]).arg(&image).output().unwrap();
    assert!(check.status.success(), "a whole image: {}", String::from_utf8_lossy(&check.stdout));
    let files: Vec<_> = std::fs::read_dir(image.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(files, ["disk.qcow2"], "no scratch or partial files left");

    // Deleting the VM leaves the DataVolume (it is not the VM's); deleting the DataVolume removes its claim,
    // volume and image.
    get(&s, &["delete", "vm", "imported"]);
    get(&s, &["delete", "dv", "guest"]);
    let gone = eventually(Duration::from_secs(60), || {
        (get(&s, &["get", "pvc,pv", "-o", "name"]).is_empty() && !image.exists()).then_some(())
    });
    assert!(gone.is_some(), "left: {} image exists: {}", get(&s, &["get", "pvc,pv"]), image.exists());
}

#[test]
fn bad_sources_are_retried_with_the_reason_and_hurt_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guest_image(), dir.path().join("guest.qcow2")).unwrap();
    // A qcow2 whose header is garbled past its magic: qemu-img cannot read it.
    let mut garbled = std::fs::read(guest_image()).unwrap();
    garbled[4..64].fill(0xff);
    std::fs::write(dir.path().join("garbled.qcow2"), garbled).unwrap();
    let http = HttpFiles::start(dir.path(), 64 << 20);
    let s = Server::start_with_guests(&[]).unwrap();
    // A port nothing listens on: the connection is refused at once, as from a host that is down.
    let dead = format!("http://127.0.0.1:{}/guest.qcow2", kumo_e2e::free_port());
    let cases = [
        ("missing", http.url("nothing-here.qcow2"), "404"),
        ("unreachable", dead, "connecting to"),
        ("garbled", http.url("garbled.qcow2"), "qemu-img"),
        ("cutoff", http.url("truncated/guest.qcow2"), "cut short"),
        ("toosmall", http.url("guest.qcow2"), "larger than the volume"),
    ];
    for (name, url, _) in &cases {
        let size = if *name == "toosmall" { "8Mi" } else { "64Mi" };
        s.apply(&datavolume(name, url, size, true)).unwrap();
    }
    s.apply(&datavolume("good", &http.url("guest.qcow2"), "64Mi", true)).unwrap();
    for (name, _, why) in &cases {
        let failed = eventually(Duration::from_secs(90), || {
            let restarts: u32 = field(&s, name, "{.status.restartCount}").parse().unwrap_or(0);
            let running = field(&s, name, r#"{.status.conditions[?(@.type=="Running")].message}"#);
            (restarts >= 1 && running.contains(why)).then_some(running)
        });
        let describe = get(&s, &["describe", "dv", name]);
        assert!(failed.is_some(), "{name}: no retry saying {why:?}: {describe}");
        assert_eq!(field(&s, name, "{.status.phase}"), "ImportInProgress", "{name}: still being tried");
        let events = get(&s, &["get", "events", "--field-selector", &format!("involvedObject.name={name}")]);
        assert!(events.contains("Error") && events.contains(why), "{name}: a warning event says why: {events}");
    }
    // A failing try comes again, later each time (restartCount grows).
    let again = eventually(Duration::from_secs(60), || {
        (field(&s, "missing", "{.status.restartCount}").parse::<u32>().unwrap_or(0) >= 2).then_some(())
    });
    assert!(again.is_some(), "retried: {}", get(&s, &["describe", "dv", "missing"]));
    let good =
        eventually(Duration::from_secs(60), || (field(&s, "good", "{.status.phase}") == "Succeeded").then_some(()));
    assert!(good.is_some(), "the good import is unaffected: {}", get(&s, &["describe", "dv", "good"]));
    assert!(s.kubectl(&["get", "--raw", "/readyz"]).unwrap().status.success(), "the server is fine");
}

const TEMPLATED: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: templated}
spec:
  runStrategy: Always
  dataVolumeTemplates:
  - metadata: {name: templated-root}
    spec:
      source:
        registry: {url: "docker://quay.io/kumo/test-guest:latest"}
      storage:
        resources: {requests: {storage: 128Mi}}
  template:
    spec:
      terminationGracePeriodSeconds: 5
      domain:
        memory: {guest: 256Mi}
        devices:
          disks:
          - {name: root, disk: {bus: virtio}}
      volumes:
      - name: root
        dataVolume: {name: templated-root}
"#;

/// A VM's `dataVolumeTemplates` with a registry source (a containerDisk, through the local registry): the VM
/// makes and owns the DataVolume, boots from it, and takes it, its claim and its image along when deleted.
#[test]
fn a_vm_boots_from_its_registry_datavolume_template_and_takes_it_along() {
    let s = Server::start_with_guests(&[]).unwrap();
    s.apply(TEMPLATED).unwrap();
    if let Err(e) = s.wait_vmi_ready("templated", Duration::from_secs(180)) {
        panic!("{e:#}\n{}\n{}", get(&s, &["describe", "vmi", "templated"]), get(&s, &["describe", "dv"]));
    }
    assert_eq!(field(&s, "templated-root", "{.status.phase} {.status.progress}"), "Succeeded 100.00%");
    let owner = field(&s, "templated-root", "{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}");
    assert_eq!(owner, "VirtualMachine/templated");
    let mut console = s.console("templated");
    let answer = console.run("echo registry-$((40+2))", Duration::from_secs(90));
    let (_, stderr) = console.close();
    assert_eq!(answer.as_deref(), Some("registry-42"), "the guest's console: {stderr}");
    let pv = get(&s, &["get", "pvc", "templated-root", "-o", "jsonpath={.spec.volumeName}"]);
    let image = s.data_dir().join("agent/volumes").join(&pv).join("disk.qcow2");
    assert!(image.exists(), "{} missing", image.display());

    get(&s, &["delete", "vm", "templated"]);
    let gone = eventually(Duration::from_secs(90), || {
        (get(&s, &["get", "dv,pvc,pv", "-o", "name"]).is_empty() && !image.exists()).then_some(())
    });
    assert!(gone.is_some(), "left: {} image exists: {}", get(&s, &["get", "dv,pvc,pv"]), image.exists());
}

fn sha256_of(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum").arg(path).output().expect("sha256sum");
    assert!(out.status.success(), "sha256sum {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    let sum = String::from_utf8_lossy(&out.stdout).split_whitespace().next().map(str::to_string);
    sum.unwrap_or_else(|| panic!("sha256sum printed no sum for {}", path.display()))
}

/// A DataVolume cloned from another's claim (`source.pvc`) is a copy a VM boots from; what that guest writes
/// changes the copy only.
#[test]
fn a_clone_boots_an_independent_copy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guest_image(), dir.path().join("guest.qcow2")).unwrap();
    let http = HttpFiles::start(dir.path(), 64 << 20);
    let s = Server::start_with_guests(&[]).unwrap();
    s.apply(&datavolume("golden", &http.url("guest.qcow2"), "64Mi", true)).unwrap();
    let done = |name: &str| {
        eventually(Duration::from_secs(120), || (field(&s, name, "{.status.phase}") == "Succeeded").then_some(()))
            .is_some()
    };
    assert!(done("golden"), "{}", get(&s, &["describe", "dv", "golden"]));
    s.apply(
        "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata: {name: copy}\nspec:\n  source:\n    \
         pvc: {name: golden}\n  storage:\n    resources: {requests: {storage: 64Mi}}\n",
    )
    .unwrap();
    assert!(done("copy"), "{}", get(&s, &["describe", "dv", "copy"]));
    let events = get(&s, &["get", "events", "--field-selector", "involvedObject.name=copy"]);
    assert!(events.contains("CloneSucceeded"), "{events}");
    let image = |claim: &str| {
        let pv = get(&s, &["get", "pvc", claim, "-o", "jsonpath={.spec.volumeName}"]);
        s.data_dir().join("agent/volumes").join(pv).join("disk.qcow2")
    };
    let golden_before = sha256_of(&image("golden"));
    s.apply(&VM.replace("name: imported", "name: cloned").replace("name: guest}", "name: copy}")).unwrap();
    if let Err(e) = s.wait_vmi_ready("cloned", Duration::from_secs(180)) {
        panic!("{e:#}\n{}", get(&s, &["describe", "vmi", "cloned"]));
    }
    // Past the guest's own files (about 19 MiB), near the end of the 64 MiB disk.
    let mut console = s.console("cloned");
    let wrote = console.run(
        "echo CLONE-WRITE | dd of=/dev/vda bs=512 seek=120000 2>/dev/null && sync && echo ok",
        Duration::from_secs(90),
    );
    let (_, stderr) = console.close();
    assert_eq!(wrote.as_deref(), Some("ok"), "{stderr}");
    get(&s, &["delete", "vm", "cloned"]);
    let stopped =
        eventually(Duration::from_secs(60), || get(&s, &["get", "vmi", "-o", "name"]).is_empty().then_some(()));
    assert!(stopped.is_some());
    assert_eq!(sha256_of(&image("golden")), golden_before, "the source is untouched");
    let copy = std::process::Command::new("qemu-img")
        .args(["compare", "-U"])
        .arg(image("golden"))
        .arg(image("copy"))
        .output()
        .unwrap();
    assert_eq!(copy.status.code(), Some(1), "the copy differs now: {}", String::from_utf8_lossy(&copy.stdout));
}

/// `kumo image-upload` (as `virtctl image-upload`): a DataVolume taking an upload, a token from an
/// UploadTokenRequest, the file streamed through the upload proxy CDIConfig names, with a progress bar. A
/// garbled image is refused and the DataVolume waits for another upload; the real one boots.
#[test]
fn an_uploaded_image_boots_and_a_bad_upload_can_be_redone() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("guest.qcow2");
    std::fs::copy(guest_image(), &good).unwrap();
    let bad = dir.path().join("garbled.qcow2");
    let mut garbled = std::fs::read(&good).unwrap();
    garbled[4..64].fill(0xff);
    std::fs::write(&bad, garbled).unwrap();
    let s = Server::start_with_guests(&[]).unwrap();
    let proxy = get(&s, &["get", "cdiconfig", "config", "-o", "jsonpath={.status.uploadProxyURL}"]);
    assert!(proxy.starts_with("https://") && proxy.ends_with("/kumo/upload-proxy"), "{proxy}");

    let upload = |image: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["image-upload", "dv", "uploaded", "--image-path", image.to_str().unwrap()];
        args.extend_from_slice(extra);
        s.kumo(&args)
    };
    let out = upload(&bad, &["--size", "128Mi"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && text.contains("qemu-img"), "a garbled image is refused: {text}");
    assert_eq!(field(&s, "uploaded", "{.status.phase}"), "UploadReady", "and the DataVolume waits for another");
    // Without a token the proxy answers 401; a token is for one claim and comes from an UploadTokenRequest.
    let post = "import ssl, sys, urllib.request, urllib.error\n\
        req = urllib.request.Request(sys.argv[1], data=b'x', method='POST')\n\
        try:\n    urllib.request.urlopen(req, context=ssl._create_unverified_context()); print(200)\n\
        except urllib.error.HTTPError as e:\n    print(e.code)\n";
    let anonymous = std::process::Command::new("python3")
        .args(["-c", post, &format!("{proxy}/v1beta1/upload")])
        .output()
        .expect("python3");
    assert_eq!(
        String::from_utf8_lossy(&anonymous.stdout).trim(),
        "401",
        "{}",
        String::from_utf8_lossy(&anonymous.stderr)
    );
    let token = s
        .kubectl_stdin(
            &["create", "-f", "-", "-o", "jsonpath={.status.token}"],
            "apiVersion: upload.cdi.kubevirt.io/v1beta1\nkind: UploadTokenRequest\nmetadata: {name: t}\nspec: {pvcName: uploaded}\n",
        )
        .unwrap();
    assert!(token.status.success() && token.stdout.len() > 40, "{}", String::from_utf8_lossy(&token.stderr));

    let out = upload(&good, &["--no-create"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("Processing completed successfully"), "{stdout}");
    assert!(stderr.contains("100.00%") && stderr.contains("MiB/s"), "a progress bar: {stderr}");
    assert_eq!(field(&s, "uploaded", "{.status.phase} {.status.progress}"), "Succeeded 100.00%");
    s.apply(&VM.replace("name: imported", "name: fromupload").replace("name: guest}", "name: uploaded}")).unwrap();
    if let Err(e) = s.wait_vmi_ready("fromupload", Duration::from_secs(180)) {
        panic!("{e:#}\n{}", get(&s, &["describe", "vmi", "fromupload"]));
    }
    let mut console = s.console("fromupload");
    let answer = console.run("echo uploaded-$((40+2))", Duration::from_secs(90));
    let (_, stderr) = console.close();
    assert_eq!(answer.as_deref(), Some("uploaded-42"), "{stderr}");

    // virtctl's own sequence (UploadTokenRequest, CDIConfig, HEAD upload-async, POST, the claim's pod phase),
    // spoken by the Python kubernetes client.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/virtctl_upload.py");
    let out = std::process::Command::new("python3")
        .args([script, s.kubeconfig().to_str().unwrap(), "by-virtctl", good.to_str().unwrap(), "64Mi"])
        .output()
        .expect("python3 with the kubernetes client (scripts/setup.sh installs python3-kubernetes)");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(field(&s, "by-virtctl", "{.status.phase}"), "Succeeded");
}

/// A small filesystem, mounted for one test (tmpfs) and unmounted after it.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(dir: &std::path::Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "kumo-test", dir.to_str().unwrap()])
            .output()
            .expect("mount (the test runs as root)");
        assert!(out.status.success(), "mounting a tmpfs: {}", String::from_utf8_lossy(&out.stderr));
        SmallFs(dir.to_path_buf())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A claim bigger than any node can hold stays Pending, and the VM that wants it says why (kube-scheduler's
/// words); an import onto a class whose filesystem fills up is retried with "No space left on device" in its
/// status and events. The server and other volumes carry on.
#[test]
fn a_claim_too_big_for_any_node_and_a_full_filesystem_say_why() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guest_image(), dir.path().join("guest.qcow2")).unwrap();
    let http = HttpFiles::start(dir.path(), 64 << 20);
    // Smaller than the downloaded image itself (a qcow2 download is kept as it is, not written twice).
    let small = SmallFs::mount(&dir.path().join("shared"), "12m");
    let s = Server::start_with_guests(&["--shared-volume-dir", small.0.to_str().unwrap()]).unwrap();
    let capacity = eventually(Duration::from_secs(30), || {
        let c = get(&s, &["get", "node", "-o", r"jsonpath={.items[*].status.allocatable.kumo\.dev/local-volumes}"]);
        c.parse::<u64>().ok().filter(|b| *b > 0)
    });
    assert!(capacity.is_some(), "the node says how much it holds: {}", get(&s, &["get", "node", "-o", "yaml"]));

    s.apply(&datavolume("huge", &http.url("guest.qcow2"), "1Ei", false)).unwrap();
    s.apply(&VM.replace("name: imported", "name: toobig").replace("name: guest}", "name: huge}")).unwrap();
    let why = eventually(Duration::from_secs(30), || {
        let m = get(
            &s,
            &["get", "vmi", "toobig", "-o", r#"jsonpath={.status.conditions[?(@.type=="PodScheduled")].message}"#],
        );
        m.contains("did not have enough free storage").then_some(m)
    });
    assert!(why.is_some(), "{}", get(&s, &["describe", "vmi", "toobig"]));
    assert_eq!(get(&s, &["get", "pvc", "huge", "-o", "jsonpath={.status.phase}"]), "Pending");

    s.apply(
        &datavolume("filling", &http.url("guest.qcow2"), "64Mi", false)
            .replace("  storage:\n", "  storage:\n    storageClassName: shared\n"),
    )
    .unwrap();
    let full = eventually(Duration::from_secs(90), || {
        let m = field(&s, "filling", r#"{.status.conditions[?(@.type=="Running")].message}"#);
        m.contains("No space left on device").then_some(m)
    });
    assert!(full.is_some(), "{}", get(&s, &["describe", "dv", "filling"]));
    let events = get(&s, &["get", "events", "--field-selector", "involvedObject.name=filling"]);
    assert!(events.contains("No space left on device"), "{events}");
    // A small volume on the same filesystem still works.
    s.apply(
        "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata: {name: tiny}\nspec:\n  source: {blank: {}}\n  \
         storage:\n    storageClassName: shared\n    resources: {requests: {storage: 1Mi}}\n",
    )
    .unwrap();
    let tiny =
        eventually(Duration::from_secs(60), || (field(&s, "tiny", "{.status.phase}") == "Succeeded").then_some(()));
    assert!(tiny.is_some(), "{}", get(&s, &["describe", "dv", "tiny"]));
}

/// gzip- and xz-compressed images are undone while they stream, and hold what the image holds.
#[test]
fn compressed_images_are_imported_as_they_stream() {
    let dir = tempfile::tempdir().unwrap();
    let image = guest_image();
    let compress = "import gzip, lzma, shutil, sys\n\
        src = open(sys.argv[1], 'rb').read()\n\
        open(sys.argv[2] + '/guest.qcow2.gz', 'wb').write(gzip.compress(src))\n\
        open(sys.argv[2] + '/guest.qcow2.xz', 'wb').write(lzma.compress(src))\n";
    let out = std::process::Command::new("python3")
        .args(["-c", compress, image.to_str().unwrap(), dir.path().to_str().unwrap()])
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let http = HttpFiles::start(dir.path(), 64 << 20);
    let s = Server::start_with_guests(&[]).unwrap();
    for (name, file) in [("gz", "guest.qcow2.gz"), ("xz", "guest.qcow2.xz")] {
        s.apply(&datavolume(name, &http.url(file), "64Mi", true)).unwrap();
    }
    for name in ["gz", "xz"] {
        let done =
            eventually(Duration::from_secs(90), || (field(&s, name, "{.status.phase}") == "Succeeded").then_some(()));
        assert!(done.is_some(), "{}", get(&s, &["describe", "dv", name]));
        let pv = get(&s, &["get", "pvc", name, "-o", "jsonpath={.spec.volumeName}"]);
        let imported = s.data_dir().join("agent/volumes").join(pv).join("disk.qcow2");
        let same =
            std::process::Command::new("qemu-img").args(["compare", "-U"]).arg(&image).arg(&imported).output().unwrap();
        assert!(same.status.success(), "{name}: {}", String::from_utf8_lossy(&same.stdout));
    }
}

/// Manifests written as CDI's and KubeVirt's guides write them apply unchanged (only the image URLs point at
/// the test's servers): standalone DataVolumes wait for a first consumer as CDI's do on such a class, one
/// asked to bind at once is filled, and a halted VM's template makes its DataVolume.
#[test]
fn documented_manifests_apply_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guest_image(), dir.path().join("guest.qcow2")).unwrap();
    let http = HttpFiles::start(dir.path(), 64 << 20);
    let s = Server::start_with_guests(&[]).unwrap();
    let manifests = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/storage-manifests.yaml"))
        .unwrap()
        .replace("HTTP_URL", &http.url("guest.qcow2"))
        .replace("REGISTRY_URL", "docker://quay.io/kumo/test-guest:latest");
    let out = s.apply(&manifests).unwrap();
    for created in ["docs-http-dv", "docs-registry-dv", "docs-blank-dv", "docs-pvc", "docs-vm-datavolume"] {
        assert!(out.contains(&format!("{created} created")), "{out}");
    }
    let phases = |want: &[(&str, &str)]| {
        eventually(Duration::from_secs(90), || {
            want.iter().all(|(dv, phase)| field(&s, dv, "{.status.phase}") == *phase).then_some(())
        })
        .is_some()
    };
    let want = [
        ("docs-http-dv", "WaitForFirstConsumer"),
        ("docs-blank-dv", "WaitForFirstConsumer"),
        ("docs-template-dv", "WaitForFirstConsumer"),
        ("docs-registry-dv", "Succeeded"),
    ];
    assert!(phases(&want), "{}", get(&s, &["get", "dv"]));
    let owner = field(&s, "docs-template-dv", "{.metadata.ownerReferences[0].name}");
    assert_eq!(owner, "docs-vm-datavolume");
    assert_eq!(get(&s, &["get", "vm", "docs-vm-datavolume", "-o", "jsonpath={.status.printableStatus}"]), "Stopped");
}
