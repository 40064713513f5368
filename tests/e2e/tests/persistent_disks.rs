//! Persistent disks with real guests: claims in kumo's `local` (the default) and `shared` classes are
//! provisioned on the node the VM lands on, what the guest writes stays across stop/start and a restart of
//! the server and its agent, and deleting the claims removes the images. Needs root, QEMU and the test guest +
//! registry that scripts/setup.sh prepares.

use kumo_e2e::{eventually, Server};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn manifests(shared: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data}}
spec:
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 64Mi}}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {shared}}}
spec:
  storageClassName: shared
  volumeMode: Block
  accessModes: [ReadWriteMany]
  resources: {{requests: {{storage: 32Mi}}}}
---
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {{name: keeper}}
spec:
  runStrategy: Always
  template:
    spec:
      terminationGracePeriodSeconds: 5
      domain:
        memory: {{guest: 256Mi}}
        devices:
          disks:
          - {{name: root, disk: {{bus: virtio}}}}
          - {{name: data, serial: data, disk: {{bus: virtio}}}}
          - {{name: scratch, serial: scratch, disk: {{bus: virtio}}}}
      volumes:
      - name: root
        containerDisk: {{image: quay.io/kumo/test-guest:latest}}
      - name: data
        persistentVolumeClaim: {{claimName: data}}
      - name: scratch
        persistentVolumeClaim: {{claimName: {shared}}}
"#
    )
}

fn get(s: &Server, args: &[&str]) -> String {
    s.kubectl_ok(args).unwrap_or_else(|e| panic!("kubectl {args:?} failed (is the server alive?): {e}"))
}

fn wait_running(s: &Server) {
    if let Err(e) = s.wait_vmi_ready("keeper", Duration::from_secs(180)) {
        panic!("not Ready: {e:#}\n{}", get(s, &["describe", "vmi", "keeper"]));
    }
}

/// The guest's device whose virtio serial is `serial`.
const FIND: &str =
    r#"for d in /sys/block/vd*; do [ "$(cat $d/serial 2>/dev/null)" = SERIAL ] && echo /dev/${d##*/}; done"#;

/// Writes `text` at the start of the disk with `serial`, through the guest's console.
fn write_disk(s: &Server, serial: &str, text: &str) {
    let mut c = s.console("keeper");
    let find = FIND.replace("SERIAL", serial);
    let out = c.run(&format!("dev=$({find}); echo $dev; echo {text} > $dev && sync && echo written"), secs(90));
    let seen = c.seen();
    let (_, stderr) = c.close();
    let out = out.unwrap_or_else(|| panic!("the guest did not answer on its console: {stderr}\n{seen}"));
    assert!(out.ends_with("written") && out.starts_with("/dev/vd"), "writing {serial}: {out}");
}

/// The first line of the disk with `serial`, read in the guest.
fn read_disk(s: &Server, serial: &str) -> String {
    in_guest(s, "keeper", &format!("head -n 1 $({})", FIND.replace("SERIAL", serial)))
}

/// What `cmd` prints in `vm`'s guest.
fn in_guest(s: &Server, vm: &str, cmd: &str) -> String {
    s.in_guest(vm, cmd, secs(90))
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn volume_of(s: &Server, claim: &str) -> String {
    get(s, &["get", "pvc", claim, "-o", "jsonpath={.spec.volumeName}"])
}

fn stop_start(s: &Server) {
    assert!(s.kumo(&["stop", "keeper"]).status.success());
    let gone = eventually(secs(60), || get(s, &["get", "vmi", "-o", "name"]).is_empty().then_some(()));
    assert!(gone.is_some(), "the VMI did not go: {}", get(s, &["get", "vmi"]));
    assert!(s.kumo(&["start", "keeper"]).status.success());
    wait_running(s);
}

#[test]
fn what_the_guest_writes_stays_and_deleting_the_claims_leaves_no_image() {
    let shared_dir = tempfile::tempdir().unwrap();
    let shared_arg = shared_dir.path().to_str().unwrap().to_string();
    let mut s = Server::start_with_guests(&["--shared-volume-dir", &shared_arg]).unwrap();
    let classes = get(&s, &["get", "sc"]);
    assert!(classes.contains("local (default)") && classes.contains("kumo.dev/local"), "{classes}");
    assert!(classes.contains("WaitForFirstConsumer") && classes.contains("kumo.dev/shared"), "{classes}");

    s.apply(&manifests("scratch")).unwrap();
    // SIGKILL the server (and its agent) just as the first consumer's node was chosen: the provisioner, the
    // binder and the agent's image making all happen across the restart, each exactly once.
    let selected = eventually(secs(60), || {
        let a = get(&s, &["get", "pvc", "data", "-o", "jsonpath={.metadata.annotations}"]);
        a.contains("volume.kubernetes.io/selected-node").then_some(())
    });
    assert!(selected.is_some(), "no node selected for the claim: {}", get(&s, &["describe", "pvc", "data"]));
    s.restart().unwrap();
    wait_running(&s);
    let table = get(&s, &["get", "pvc"]);
    assert_eq!(table.matches("Bound").count(), 2, "{table}");
    let pvs = get(&s, &["get", "pv", "-o", "name"]);
    assert_eq!(pvs.lines().count(), 2, "one volume per claim: {pvs}");
    let (data_pv, scratch_pv) = (volume_of(&s, "data"), volume_of(&s, "scratch"));
    let node = s.node_name();
    let pinned = get(&s, &["get", "pv", &data_pv, "-o", "jsonpath={.spec.nodeAffinity.required}"]);
    assert!(pinned.contains(&node), "a local volume is pinned to its node: {pinned}");
    let local_image: PathBuf = s.data_dir().join("agent/volumes").join(&data_pv).join("disk.qcow2");
    let shared_image: PathBuf = shared_dir.path().join(&scratch_pv).join("disk.raw");
    for image in [&local_image, &shared_image] {
        assert!(image.exists(), "{} missing", image.display());
    }
    assert_eq!(std::fs::metadata(&shared_image).unwrap().len(), 32 << 20, "raw, sized to the request");

    write_disk(&s, "data", "KUMO-LOCAL-7");
    write_disk(&s, "scratch", "KUMO-SHARED-9");
    stop_start(&s);
    assert_eq!(read_disk(&s, "data"), "KUMO-LOCAL-7", "after stop/start");
    assert_eq!(read_disk(&s, "scratch"), "KUMO-SHARED-9");

    // The server and its agent restarted (the guest keeps running and is reattached), then the VM stopped and
    // started on what is on disk.
    s.restart().unwrap();
    wait_running(&s);
    assert_eq!(read_disk(&s, "data"), "KUMO-LOCAL-7", "after a server restart");
    stop_start(&s);
    assert_eq!(read_disk(&s, "data"), "KUMO-LOCAL-7", "after a server restart and stop/start");
    assert_eq!(read_disk(&s, "scratch"), "KUMO-SHARED-9");

    // A claim in use is held (kubernetes.io/pvc-protection) until its VM is gone; then reclaim Delete removes
    // the volumes and their images.
    get(&s, &["delete", "pvc", "data", "scratch", "--wait=false"]);
    std::thread::sleep(secs(2));
    let held = get(&s, &["get", "pvc", "data", "-o", "jsonpath={.metadata.deletionTimestamp}"]);
    assert!(!held.is_empty(), "deleting: {}", get(&s, &["get", "pvc"]));
    assert_eq!(read_disk(&s, "data"), "KUMO-LOCAL-7", "the guest keeps its disk while the claim is held");
    get(&s, &["delete", "vm", "keeper"]);
    let cleaned = eventually(secs(90), || {
        let left = get(&s, &["get", "pvc,pv", "-o", "name"]);
        (left.is_empty() && !local_image.exists() && !shared_image.exists()).then_some(())
    });
    let dirs: Vec<&Path> = vec![local_image.parent().unwrap(), shared_image.parent().unwrap()];
    assert!(
        cleaned.is_some(),
        "left: {} ({:?} exist: {:?})",
        get(&s, &["get", "pvc,pv"]),
        dirs,
        dirs.iter().map(|d| d.exists()).collect::<Vec<_>>()
    );
}

const GROWING: &str = r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: growing}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 64Mi}}
---
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: grower}
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
          - {name: data, serial: growing, disk: {bus: virtio}}
      volumes:
      - name: root
        containerDisk: {image: quay.io/kumo/test-guest:latest}
      - name: data
        persistentVolumeClaim: {claimName: growing}
"#;

/// Expanding a claim (`kubectl patch pvc`) grows its image under the running guest, which sees the new size
/// (QMP block_resize); the claim's capacity follows; shrinking it back is refused.
#[test]
fn a_running_guest_sees_its_claim_grow() {
    let s = Server::start_with_guests(&[]).unwrap();
    s.apply(GROWING).unwrap();
    if let Err(e) = s.wait_vmi_ready("grower", Duration::from_secs(180)) {
        panic!("{e:#}\n{}", get(&s, &["describe", "vmi", "grower"]));
    }
    let sectors = |s: &Server| {
        let dev = FIND.replace("SERIAL", "growing");
        in_guest(s, "grower", &format!("d=$({dev}); cat /sys/block/${{d##*/}}/size"))
    };
    assert_eq!(sectors(&s), (64u64 << 20 >> 9).to_string(), "64Mi to begin with");
    get(&s, &["patch", "pvc", "growing", "-p", r#"{"spec":{"resources":{"requests":{"storage":"128Mi"}}}}"#]);
    let grown = eventually(secs(60), || {
        (get(&s, &["get", "pvc", "growing", "-o", "jsonpath={.status.capacity.storage}"]) == "128Mi").then_some(())
    });
    assert!(grown.is_some(), "the claim's capacity: {}", get(&s, &["describe", "pvc", "growing"]));
    assert_eq!(sectors(&s), (128u64 << 20 >> 9).to_string(), "the running guest sees 128Mi");
    let events = get(&s, &["get", "events", "--field-selector", "involvedObject.name=growing"]);
    assert!(events.contains("VolumeResizeSuccessful"), "{events}");
    let err = s
        .kubectl_err(&["patch", "pvc", "growing", "-p", r#"{"spec":{"resources":{"requests":{"storage":"64Mi"}}}}"#])
        .unwrap();
    assert!(err.contains("spec.resources.requests.storage"), "shrinking is refused: {err}");
}

const PLUGGER: &str = r#"
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata: {name: hot}
spec:
  source: {blank: {}}
  storage:
    resources: {requests: {storage: 48Mi}}
---
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: plugger}
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
        containerDisk: {image: quay.io/kumo/test-guest:latest}
"#;

/// `kumo addvolume` hot-plugs a DataVolume (of the default class, which waits for a first consumer: the running
/// VMI is it) into a running guest, which sees a new SCSI disk of its size and can write it; `kumo
/// removevolume` takes it out again while the guest keeps running.
#[test]
fn a_hot_plugged_disk_appears_in_and_disappears_from_the_guest() {
    let s = Server::start_with_guests(&[]).unwrap();
    s.apply(PLUGGER).unwrap();
    if let Err(e) = s.wait_vmi_ready("plugger", Duration::from_secs(180)) {
        panic!("{e:#}\n{}", get(&s, &["describe", "vmi", "plugger"]));
    }
    let scsi = |s: &Server| {
        in_guest(s, "plugger", "for d in /sys/block/sd*; do [ -e $d ] && echo ${d##*/}=$(cat $d/size); done; true")
    };
    assert_eq!(scsi(&s), "", "no SCSI disk to begin with");
    let out = s.kumo(&["addvolume", "plugger", "--volume-name=hot", "--serial=hot"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ready = eventually(secs(90), || {
        let st = get(&s, &["get", "vmi", "plugger", "-o", "jsonpath={.status.volumeStatus[0].phase}"]);
        (st == "Ready").then_some(())
    });
    assert!(
        ready.is_some(),
        "not attached: {}\n{}",
        get(&s, &["get", "vmi", "plugger", "-o", "yaml"]),
        get(&s, &["describe", "dv", "hot"])
    );
    let seen = eventually(secs(30), || {
        let d = scsi(&s);
        (!d.is_empty()).then_some(d)
    });
    assert_eq!(seen.as_deref(), Some(format!("sda={}", 48u64 << 20 >> 9).as_str()), "the guest sees the disk");
    let wrote = in_guest(&s, "plugger", "echo HOT-1 > /dev/sda && sync && head -n 1 /dev/sda");
    assert_eq!(wrote, "HOT-1");
    // Plugging in what is already there, or unplugging what was not hot-plugged, is refused by name.
    let again = s.kumo(&["addvolume", "plugger", "--volume-name=hot"]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let root = s.kumo(&["removevolume", "plugger", "--volume-name=root"]);
    assert!(!root.status.success() && String::from_utf8_lossy(&root.stderr).contains("not hotpluggable"));

    let out = s.kumo(&["removevolume", "plugger", "--volume-name=hot"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let gone = eventually(secs(60), || scsi(&s).is_empty().then_some(()));
    assert!(gone.is_some(), "the disk left the guest: {}", scsi(&s));
    let settled = eventually(secs(30), || {
        let st = get(&s, &["get", "vmi", "plugger", "-o", "jsonpath={.status.phase} {.status.volumeStatus}"]);
        (st == "Running ").then_some(())
    });
    assert!(
        settled.is_some(),
        "the guest runs on; no volume status left: {}",
        get(&s, &["get", "vmi", "plugger", "-o", "yaml"])
    );
}

const SNAPPER: &str = r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: snapdisk}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 64Mi}}
---
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: snapper}
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
          - {name: data, serial: snap, disk: {bus: virtio}}
      volumes:
      - name: root
        containerDisk: {image: quay.io/kumo/test-guest:latest}
      - name: data
        persistentVolumeClaim: {claimName: snapdisk}
"#;

fn snapshot_yaml(kind: &str, name: &str, body: &str) -> String {
    format!("apiVersion: snapshot.kubevirt.io/v1beta1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec:\n{body}")
}

fn write_in(s: &Server, vm: &str, text: &str) {
    let find = FIND.replace("SERIAL", "snap");
    let out = in_guest(s, vm, &format!("echo {text} > $({find}) && sync && echo written"));
    assert_eq!(out, "written", "writing in {vm}");
}

fn read_in(s: &Server, vm: &str) -> String {
    in_guest(s, vm, &format!("head -n 1 $({})", FIND.replace("SERIAL", "snap")))
}

fn wait_vmi(s: &Server, vm: &str) {
    if let Err(e) = s.wait_vmi_ready(vm, Duration::from_secs(180)) {
        panic!("{e:#}\n{}", get(s, &["describe", "vmi", vm]));
    }
}

/// A snapshot of a running VM's disk; the disk changed; a restore onto the running VM refused; the VM
/// stopped and restored: the old content is back; restored into a new VM too; deleting the snapshot removes
/// it from the image.
#[test]
fn a_snapshot_brings_old_content_back_in_place_and_in_a_new_vm() {
    let s = Server::start_with_guests(&[]).unwrap();
    s.apply(SNAPPER).unwrap();
    wait_vmi(&s, "snapper");
    write_in(&s, "snapper", "SNAP-A");
    // The guest agent answers, so the snapshot is taken with the guest's filesystems frozen.
    let agent = eventually(secs(120), || {
        let c = get(
            &s,
            &["get", "vmi", "snapper", "-o", r#"jsonpath={.status.conditions[?(@.type=="AgentConnected")].status}"#],
        );
        (c == "True").then_some(())
    });
    assert!(agent.is_some(), "no AgentConnected: {}", get(&s, &["get", "vmi", "snapper", "-o", "yaml"]));
    let os = get(
        &s,
        &["get", "vmi", "snapper", "-o", "jsonpath={.status.guestOSInfo.name} {.status.guestOSInfo.kernelRelease}"],
    );
    assert!(os.split_whitespace().count() >= 2, "guestOSInfo from the agent: {os:?}");
    let source = "  source: {apiGroup: kubevirt.io, kind: VirtualMachine, name: snapper}\n";
    s.apply(&snapshot_yaml("VirtualMachineSnapshot", "s1", source)).unwrap();
    let ready = eventually(secs(60), || {
        (get(&s, &["get", "vmsnapshot", "s1", "-o", "jsonpath={.status.readyToUse}"]) == "true").then_some(())
    });
    assert!(ready.is_some(), "{}", get(&s, &["get", "vmsnapshot", "s1", "-o", "yaml"]));
    let table = get(&s, &["get", "vmsnapshot"]);
    assert!(table.contains("SOURCEKIND") && table.contains("Succeeded") && table.contains("snapper"), "{table}");
    let st = get(&s, &["get", "vmsnapshot", "s1", "-o", "jsonpath={.status.indications} {.status.snapshotVolumes}"]);
    assert!(st.contains("Online") && st.contains("\"includedVolumes\":[\"data\"]") && st.contains("root"), "{st}");
    assert!(st.contains("\"GuestAgent\""), "frozen through the guest agent: {st}");
    assert!(s.log().contains("froze the guest's filesystems"), "the agent froze the guest: {}", s.log());
    // Thawed again: the guest writes on.
    write_in(&s, "snapper", "SNAP-B");

    let target = |vm: &str| {
        format!(
            "  target: {{apiGroup: kubevirt.io, kind: VirtualMachine, name: {vm}}}\n  virtualMachineSnapshotName: s1\n"
        )
    };
    s.apply(&snapshot_yaml("VirtualMachineRestore", "r-running", &target("snapper"))).unwrap();
    let refused = eventually(secs(30), || {
        let m = get(
            &s,
            &["get", "vmrestore", "r-running", "-o", r#"jsonpath={.status.conditions[?(@.type=="Failure")].message}"#],
        );
        m.contains("running").then_some(m)
    });
    assert!(refused.is_some(), "{}", get(&s, &["get", "vmrestore", "r-running", "-o", "yaml"]));
    assert_eq!(read_in(&s, "snapper"), "SNAP-B", "a refused restore changes nothing");
    get(&s, &["delete", "vmrestore", "r-running"]);

    assert!(s.kumo(&["stop", "snapper"]).status.success());
    let gone = eventually(secs(60), || get(&s, &["get", "vmi", "-o", "name"]).is_empty().then_some(()));
    assert!(gone.is_some());
    s.apply(&snapshot_yaml("VirtualMachineRestore", "r-back", &target("snapper"))).unwrap();
    s.apply(&snapshot_yaml("VirtualMachineRestore", "r-new", &target("snapcopy"))).unwrap();
    for r in ["r-back", "r-new"] {
        let done = eventually(secs(60), || {
            (get(&s, &["get", "vmrestore", r, "-o", "jsonpath={.status.complete}"]) == "true").then_some(())
        });
        assert!(done.is_some(), "{}", get(&s, &["get", "vmrestore", r, "-o", "yaml"]));
    }
    assert!(s.kumo(&["start", "snapper"]).status.success());
    wait_vmi(&s, "snapper");
    assert_eq!(read_in(&s, "snapper"), "SNAP-A", "restored in place");
    wait_vmi(&s, "snapcopy");
    assert_eq!(read_in(&s, "snapcopy"), "SNAP-A", "restored into a new VM");
    write_in(&s, "snapcopy", "COPY-C");
    assert_eq!(read_in(&s, "snapper"), "SNAP-A", "the new VM's disk is its own");

    get(&s, &["delete", "vmsnapshot", "s1"]);
    let pv = get(&s, &["get", "pvc", "snapdisk", "-o", "jsonpath={.spec.volumeName}"]);
    let image = s.data_dir().join("agent/volumes").join(&pv).join("disk.qcow2");
    let dropped = eventually(secs(60), || {
        let out = std::process::Command::new("qemu-img").args(["snapshot", "-U", "-l"]).arg(&image).output().ok()?;
        let list = String::from_utf8_lossy(&out.stdout).to_string();
        (out.status.success() && !list.contains("vmsnapshot-")).then_some(())
    });
    assert!(dropped.is_some(), "the image's snapshot is deleted with the VirtualMachineSnapshot");
    let left = get(&s, &["get", "vmsnapshot,vmsnapshotcontent", "-o", "name"]);
    assert!(left.is_empty(), "{left}");
}
