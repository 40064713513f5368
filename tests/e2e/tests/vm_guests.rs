//! Real guests: `kumo server` with its node agent boots KubeVirt VMs as QEMU (TCG) processes from a
//! containerDisk in a local registry, with cloud-init and masquerade networking, and cleans up after them.
//! Needs root, QEMU and the test guest + registry that scripts/setup.sh prepares.

use kumo_e2e::{eventually, Server};
use std::io::{Read, Write};
use std::time::Duration;

fn vm(name: &str, image: &str) -> String {
    format!(
        r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  runStrategy: Always
  template:
    metadata:
      labels: {{kubevirt.io/domain: {name}}}
    spec:
      terminationGracePeriodSeconds: 10
      domain:
        memory: {{guest: 256Mi}}
        devices:
          disks:
          - name: containerdisk
            disk: {{bus: virtio}}
          - name: cloudinitdisk
            disk: {{bus: virtio}}
          interfaces:
          - name: default
            masquerade: {{}}
            ports:
            - {{name: http, port: 8080}}
          rng: {{}}
      networks:
      - name: default
        pod: {{}}
      volumes:
      - name: containerdisk
        containerDisk:
          image: {image}
      - name: cloudinitdisk
        cloudInitNoCloud:
          userData: |
            #!/bin/sh
            echo "user-data ran in {name}" > /www/userdata.txt
"#
    )
}

fn server() -> Server {
    Server::start_with_guests(&[]).unwrap()
}

/// One plain HTTP GET; the body, or None if the guest does not answer (yet).
fn http_get(ip: &str, path: &str) -> Option<String> {
    let mut s =
        std::net::TcpStream::connect_timeout(&format!("{ip}:8080").parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    // Only a 200 is the file: the guest's web server answers 404 until the user-data has written it.
    let status = out.split_whitespace().nth(1);
    (out.starts_with("HTTP/1.") && status == Some("200"))
        .then(|| out.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

fn get(s: &Server, args: &[&str]) -> String {
    s.kubectl_ok(args).unwrap_or_else(|e| panic!("kubectl {args:?} failed (is the server alive?): {e}"))
}

/// Host resources of one VMI: QEMU processes, network namespace, node-side veth, state directory.
fn leftovers(s: &Server, uid: &str) -> Vec<String> {
    assert!(!uid.is_empty(), "no uid to look for");
    let mut found = Vec::new();
    let (netns, veth) = s.vmi_net_names(uid);
    if std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
        std::fs::read(p.path().join("cmdline")).map(|c| String::from_utf8_lossy(&c).contains(uid)).unwrap_or(false)
    }) {
        found.push("qemu process".into());
    }
    if std::path::Path::new("/run/netns").join(&netns).exists() {
        found.push("network namespace".into());
    }
    if std::path::Path::new("/sys/class/net").join(&veth).exists() {
        found.push("veth".into());
    }
    if s.data_dir().join("agent/vmis").join(uid).exists() {
        found.push("state directory".into());
    }
    found
}

/// Waits until the VMI is Ready (showing `kubectl describe` if it is not) and returns its IP.
fn wait_ready(s: &Server, name: &str) -> String {
    if let Err(e) = s.wait_vmi_ready(name, Duration::from_secs(180)) {
        panic!("{name} not Ready: {e:#}\n{}", get(s, &["describe", "vmi", name]));
    }
    get(s, &["get", "vmi", name, "-o", "jsonpath={.status.interfaces[0].ipAddress}"])
}

fn uid_of(s: &Server, name: &str) -> String {
    get(s, &["get", "vmi", name, "-o", "jsonpath={.metadata.uid}"])
}

/// Every host resource of the VMI with `uid` is gone within `secs`.
fn assert_cleaned(s: &Server, uid: &str, secs: u64) {
    let left = eventually(Duration::from_secs(secs), || leftovers(s, uid).is_empty().then_some(()));
    assert!(left.is_some(), "left behind by {uid}: {:?}", leftovers(s, uid));
}

/// Waits until no VMI is left.
fn assert_no_vmis(s: &Server) {
    let gone = eventually(Duration::from_secs(60), || get(s, &["get", "vmi", "-o", "name"]).is_empty().then_some(()));
    assert!(gone.is_some(), "VMIs left: {}", get(s, &["get", "vmi", "-o", "name"]));
}

#[test]
fn guest_boots_answers_and_leaves_nothing_behind() {
    let s = server();
    s.apply(&vm("testvm", "quay.io/kumo/test-guest:latest")).unwrap();
    let ip = wait_ready(&s, "testvm");
    assert!(ip.starts_with("10.244.0."), "pod IP in status: {ip:?}");
    let body =
        eventually(Duration::from_secs(90), || http_get(&ip, "/userdata.txt").filter(|b| b.contains("user-data ran")));
    assert_eq!(
        body.as_deref().map(str::trim),
        Some("user-data ran in testvm"),
        "the guest served the user-data's file"
    );
    let table = get(&s, &["get", "vm", "testvm"]);
    assert!(table.contains("Running") && table.contains("True"), "{table}");
    let uid = uid_of(&s, "testvm");
    // Everything the cleanup check looks for exists while the guest runs: the names it checks are the agent's.
    let running = leftovers(&s, &uid);
    for what in ["qemu process", "network namespace", "veth", "state directory"] {
        assert!(running.contains(&what.to_string()), "{what} not found while running: {running:?}");
    }

    // `kumo console` reaches the guest's serial console through the API server; Ctrl-] leaves.
    let mut console = s.console("testvm");
    // Typed before the session is up, the line waits in the pipe; Ctrl-] only once the answer is seen.
    console.send("\necho CONSOLE-$((6*7))");
    let answered = console.wait_for("CONSOLE-42", Duration::from_secs(60));
    let seen = console.seen();
    let (status, stderr) = console.close();
    assert!(status.success(), "{stderr}");
    assert!(answered, "the guest's shell answered on the console: {seen}");
    assert!(stderr.contains("escape sequence is ^]"), "{stderr}");

    // Stop: the guest goes away with everything it had; start brings it back.
    assert!(s.kumo(&["stop", "testvm"]).status.success());
    assert_no_vmis(&s);
    assert_cleaned(&s, &uid, 20);
    assert!(s.kumo(&["start", "testvm"]).status.success());
    let ip = wait_ready(&s, "testvm");
    assert!(eventually(Duration::from_secs(90), || http_get(&ip, "/")).is_some(), "restarted guest answers");
    let uid2 = uid_of(&s, "testvm");

    // A VMI whose image cannot be pulled fails with the reason visible; the running guest is unaffected.
    s.apply(&vm("badimage", "quay.io/kumo/does-not-exist:latest")).unwrap();
    let failed = eventually(Duration::from_secs(60), || {
        let r = get(&s, &["get", "vmi", "badimage", "-o", "jsonpath={.status.phase}/{.status.reason}"]);
        (r == "Failed/ErrImagePull").then_some(r)
    });
    assert!(failed.is_some(), "{}", get(&s, &["describe", "vmi", "badimage"]));
    let describe = get(&s, &["describe", "vmi", "badimage"]);
    assert!(describe.contains("ErrImagePull") && describe.contains("does-not-exist"), "{describe}");
    assert!(http_get(&ip, "/").is_some(), "the other guest keeps running");
    s.kubectl_ok(&["delete", "vm", "badimage", "--timeout=60s"]).unwrap();

    // Deleting the VM deletes its VMI; the agent stops the guest and removes every host resource.
    s.kubectl_ok(&["delete", "vm", "testvm", "--timeout=120s"]).unwrap();
    assert_no_vmis(&s);
    assert_cleaned(&s, &uid2, 20);
}

const VMI_CONFIGDRIVE_BRIDGE: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: cdbridge
spec:
  terminationGracePeriodSeconds: 5
  domain:
    memory: {guest: 256Mi}
    devices:
      disks:
      - {name: root, disk: {bus: virtio}, bootOrder: 1}
      - {name: config, disk: {bus: virtio}}
      - {name: scratch, disk: {bus: virtio}}
      interfaces:
      - {name: default, bridge: {}}
  networks:
  - {name: default, pod: {}}
  volumes:
  - name: root
    containerDisk: {image: quay.io/kumo/test-guest:latest}
  - name: scratch
    emptyDisk: {capacity: 64Mi}
  - name: config
    cloudInitConfigDrive:
      userData: |
        #!/bin/sh
        ls /sys/block > /www/disks.txt
        hostname > /www/host.txt
"#;

#[test]
fn configdrive_bridge_and_empty_disk() {
    let s = server();
    s.apply(VMI_CONFIGDRIVE_BRIDGE).unwrap();
    // Bridge binding: the guest itself holds the pod IP reported in status.
    let ip = wait_ready(&s, "cdbridge");
    let disks = eventually(Duration::from_secs(90), || http_get(&ip, "/disks.txt").filter(|b| b.contains("vd")));
    let disks = disks.expect("the guest at the pod IP served the ConfigDrive user-data's output");
    assert!(disks.contains("vdc"), "the emptyDisk is attached: {disks}");
    // The user-data writes host.txt after disks.txt: it may still be empty a moment after disks.txt shows.
    let host = eventually(Duration::from_secs(30), || http_get(&ip, "/host.txt").filter(|h| !h.trim().is_empty()));
    assert_eq!(host.map(|h| h.trim().to_string()), Some("cdbridge".into()), "hostname from ConfigDrive");
    let uid = uid_of(&s, "cdbridge");
    s.kubectl_ok(&["delete", "vmi", "cdbridge", "--timeout=60s"]).unwrap();
    assert_cleaned(&s, &uid, 20);
}

const VMI_KERNEL_BOOT: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: kboot}
spec:
  domain:
    memory: {guest: 256Mi}
    firmware:
      kernelBoot:
        kernelArgs: console=ttyS0 kumo.test=kernelboot
        container:
          image: quay.io/kumo/test-guest:latest
          kernelPath: /boot/vmlinuz
          initrdPath: /boot/initrd.img
    devices:
      disks: [{name: cloudinit, disk: {bus: virtio}}]
      interfaces: [{name: default, masquerade: {}, ports: [{port: 8080}]}]
  networks: [{name: default, pod: {}}]
  volumes:
  - name: cloudinit
    cloudInitNoCloud:
      userData: |
        #!/bin/sh
        cat /proc/cmdline > /www/cmdline.txt
"#;

#[test]
fn kernel_boot_from_a_container_image() {
    let s = server();
    s.apply(VMI_KERNEL_BOOT).unwrap();
    // No boot disk at all: the guest runs the image's kernel with the VMI's kernelArgs.
    let ip = wait_ready(&s, "kboot");
    let cmdline = eventually(Duration::from_secs(90), || http_get(&ip, "/cmdline.txt").filter(|b| !b.is_empty()));
    let cmdline = cmdline.expect("the guest served its kernel command line");
    assert!(cmdline.contains("kumo.test=kernelboot"), "{cmdline}");
    // A kernel path the image lacks: Failed, naming the path.
    s.apply(&VMI_KERNEL_BOOT.replace("name: kboot", "name: kmissing").replace("/boot/vmlinuz", "/boot/nope")).unwrap();
    let d = wait_failed(&s, "kmissing");
    assert!(d.contains("ErrImagePull") && d.contains("no file /boot/nope"), "{d}");
    let uid = uid_of(&s, "kboot");
    s.kubectl_ok(&["delete", "vmi", "kboot", "kmissing", "--timeout=60s"]).unwrap();
    assert_cleaned(&s, &uid, 20);
}

/// A `kumo agent` process of the test's own, killed when dropped (also when an assertion fails).
struct AgentProcess(std::process::Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `kumo agent` as its own process, so it can be killed while guests run.
fn spawn_agent(s: &Server) -> AgentProcess {
    let log = std::fs::File::create(s.data_dir().join("agent.log")).unwrap();
    let child = std::process::Command::new(kumo_e2e::kumo_bin())
        .args(["agent", "--kubeconfig"])
        .arg(s.kubeconfig())
        .arg("--state-dir")
        .arg(s.data_dir().join("agent"))
        .args(kumo_e2e::registry_args())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    AgentProcess(child)
}

#[test]
fn guests_survive_an_agent_kill_and_are_managed_afterwards() {
    kumo_e2e::assert_registry();
    let s = Server::start().unwrap();
    let agent = spawn_agent(&s);
    for name in ["one", "two"] {
        s.apply(&vm(name, "quay.io/kumo/test-guest:latest")).unwrap();
    }
    let mut ips = Vec::new();
    for name in ["one", "two"] {
        let ip = wait_ready(&s, name);
        assert!(eventually(Duration::from_secs(90), || http_get(&ip, "/")).is_some(), "{name} answers");
        ips.push(ip);
    }
    let uids: Vec<String> = ["one", "two"].iter().map(|n| uid_of(&s, n)).collect();
    drop(agent); // SIGKILL
                 // With the agent dead the guests keep running.
    std::thread::sleep(Duration::from_secs(2));
    for (ip, uid) in ips.iter().zip(&uids) {
        assert!(http_get(ip, "/").is_some(), "guest {ip} still answers");
        assert!(leftovers(&s, uid).contains(&"qemu process".to_string()));
    }
    let _agent = spawn_agent(&s);
    // The restarted agent reattaches: pausing and stopping work on the guests it did not start.
    assert!(s.kumo(&["pause", "vmi", "one"]).status.success());
    let paused = eventually(Duration::from_secs(30), || {
        (get(&s, &["get", "vmi", "one", "-o", "jsonpath={.status.conditions[?(@.type==\"Paused\")].status}"]) == "True")
            .then_some(())
    });
    assert!(paused.is_some(), "paused after reattach");
    assert!(http_get(&ips[0], "/").is_none(), "a paused guest does not answer");
    assert!(s.kumo(&["unpause", "vmi", "one"]).status.success());
    assert!(eventually(Duration::from_secs(30), || http_get(&ips[0], "/")).is_some(), "resumed guest answers");
    assert!(s.kumo(&["stop", "two"]).status.success());
    assert_cleaned(&s, &uids[1], 60);
    assert!(http_get(&ips[0], "/").is_some(), "the other guest still runs");
    s.kubectl_ok(&["delete", "vm", "one", "two", "--timeout=120s"]).unwrap();
    assert_cleaned(&s, &uids[0], 60);
}

fn bare_vmi(name: &str, volume: &str) -> String {
    format!(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {{name: {name}}}\nspec:\n  domain:\n    memory: {{guest: 128Mi}}\n    devices:\n      disks: [{{name: root, disk: {{bus: virtio}}}}]\n  volumes:\n  - name: root\n{volume}\n"
    )
}

fn wait_failed(s: &Server, name: &str) -> String {
    let done = eventually(Duration::from_secs(90), || {
        (get(s, &["get", "vmi", name, "-o", "jsonpath={.status.phase}"]) == "Failed").then_some(())
    });
    let describe = get(s, &["describe", "vmi", name]);
    assert!(done.is_some(), "{name} did not fail: {describe}");
    describe
}

#[test]
fn corrupt_disks_and_qemu_failures_fail_the_vmi_with_the_reason() {
    let s = server();
    // A containerDisk whose qcow2 is corrupt, pushed to the local registry.
    let corrupt = s.data_dir().join("corrupt.qcow2");
    let mut bytes = b"QFI\xfb\x00\x00\x00\x03".to_vec();
    bytes.extend(std::iter::repeat_n(0xA5u8, 4096));
    std::fs::write(&corrupt, bytes).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../images/package-containerdisk.sh");
    // Its own cache dir: the script also writes an OCI layout there, which must not replace the test guest's.
    let out = std::process::Command::new(script)
        .arg("--image")
        .arg(&corrupt)
        .args(["--repo", "kumo/corrupt", "--no-kernel"])
        .env("KUMO_CACHE", s.data_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "pushing the corrupt image: {}", String::from_utf8_lossy(&out.stderr));
    s.apply(&bare_vmi("corrupt", "    containerDisk: {image: quay.io/kumo/corrupt:latest}")).unwrap();
    let d = wait_failed(&s, "corrupt");
    assert!(d.contains("disk/guest.qcow2 is corrupt"), "the reason names the bad disk: {d}");
    assert!(d.contains("Warning"), "an event says so: {d}");

    // QEMU that exits at once (its disk is a directory): Failed, with QEMU's own words.
    let dir = s.data_dir().join("not-a-disk");
    std::fs::create_dir_all(&dir).unwrap();
    s.apply(&bare_vmi("qemufails", &format!("    hostDisk: {{path: {}, type: Disk}}", dir.display()))).unwrap();
    let d = wait_failed(&s, "qemufails");
    assert!(d.contains("QemuFailed") && d.contains("QEMU exited"), "{d}");
    // The agent keeps serving: a good guest still starts.
    s.apply(&vm("stillfine", "quay.io/kumo/test-guest:latest")).unwrap();
    wait_ready(&s, "stillfine");
    let uid = uid_of(&s, "stillfine");
    s.kubectl_ok(&["delete", "vm", "stillfine", "--timeout=120s"]).unwrap();
    s.kubectl_ok(&["delete", "vmi", "corrupt", "qemufails", "--timeout=60s"]).unwrap();
    assert_no_vmis(&s);
    assert_cleaned(&s, &uid, 20);
}
