//! KubeVirt's defaulting, as its mutating webhook does it: KubeVirt's own example of a VMI with a volume and
//! no disk boots (the volume gets a disk), the stored object shows the defaults, a VM's guests keep its
//! firmware UUID across restarts, and what kumo cannot honour (sidecar hooks, other machine types) is refused
//! by name. Needs root, QEMU and the test guest + registry that scripts/setup.sh prepares.

use kumo_e2e::{eventually, Server};
use std::time::Duration;

/// KubeVirt's documented minimal VMI: a containerDisk volume, no disks, no interfaces, no networks.
const NO_DISK: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: testvmi-nocloud
spec:
  terminationGracePeriodSeconds: 2
  domain:
    resources:
      requests:
        memory: 192M
    devices: {}
  volumes:
  - name: containerdisk
    containerDisk:
      image: quay.io/kumo/test-guest:latest
"#;

/// `kubectl get`'s output, or None while the object does not exist (any other failure panics).
fn get_opt(s: &Server, args: &[&str]) -> Option<String> {
    let out = s.kubectl(args).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        assert!(stderr.contains("NotFound") || stderr.contains("not found"), "kubectl {args:?}: {stderr}");
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn get(s: &Server, args: &[&str]) -> String {
    s.kubectl_ok(args).unwrap_or_else(|e| panic!("kubectl {args:?} failed (is the server alive?): {e}"))
}

#[test]
fn a_volume_without_a_disk_boots_and_the_defaults_are_stored() {
    let s = Server::start_with_guests(&[]).unwrap();
    s.apply(NO_DISK).unwrap();
    let path = "jsonpath={.spec.domain.devices.disks} {.spec.networks} {.spec.domain.machine.type} \
                {.spec.domain.firmware.uuid} {.spec.domain.memory.guest} {.metadata.uid}";
    let stored = get(&s, &["get", "vmi", "testvmi-nocloud", "-o", path]);
    let f: Vec<&str> = stored.split(' ').collect();
    assert_eq!(f[0], r#"[{"disk":{"bus":"virtio"},"name":"containerdisk"}]"#, "{stored}");
    assert_eq!(f[1], r#"[{"name":"default","pod":{}}]"#, "{stored}");
    assert_eq!((f[2], f[4]), ("q35", "192M"), "{stored}");
    assert_eq!(f[3], f[5], "a VMI of its own gets its own uid as firmware UUID: {stored}");
    // It boots from the volume: its shell answers, and its guest agent reports the OS.
    if let Err(e) = s.wait_vmi_ready("testvmi-nocloud", Duration::from_secs(180)) {
        panic!("{e:#}\n{}", get(&s, &["describe", "vmi", "testvmi-nocloud"]));
    }
    assert_eq!(s.in_guest("testvmi-nocloud", "echo booted", Duration::from_secs(120)), "booted");
    let os = eventually(Duration::from_secs(60), || {
        let n = get(&s, &["get", "vmi", "testvmi-nocloud", "-o", "jsonpath={.status.guestOSInfo.name}"]);
        (!n.is_empty()).then_some(n)
    });
    assert_eq!(os.as_deref(), Some("Kumo Test Guest"));

    // virtctl's guest-agent verbs, asked live of the guest.
    let run = |verb: &str| {
        let out = s.kumo(&[verb, "testvmi-nocloud"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "kumo {verb}: {}{text}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_str::<serde_json::Value>(&text).unwrap_or_else(|e| panic!("kumo {verb}: {e}: {text}"))
    };
    let info = run("guestosinfo");
    assert_eq!(info["os"]["name"], "Kumo Test Guest", "{info}");
    assert!(info["os"]["kernelRelease"].as_str().is_some_and(|k| !k.is_empty()), "{info}");
    assert!(info["guestAgentVersion"].as_str().is_some_and(|v| !v.is_empty()), "{info}");
    assert!(info["hostname"].as_str().is_some_and(|h| !h.is_empty()), "{info}");
    // The test guest has user kumo logged in on its VGA console. (It runs from its initramfs and mounts no
    // disk, so its agent lists no filesystems: qemu-ga lists only those on block devices.)
    let users = run("userlist");
    let names: Vec<&str> =
        users["items"].as_array().into_iter().flatten().filter_map(|u| u["userName"].as_str()).collect();
    assert!(names.contains(&"kumo"), "kumo userlist: {users}");
    let fs = run("fslist");
    assert!(fs["items"].is_array(), "kumo fslist: {fs}");
    // Each answer is KubeVirt's published definition, field for field.
    use kumo_api::kubevirt::published::mismatches;
    for (def, v) in [
        ("v1.VirtualMachineInstanceGuestAgentInfo", &info),
        ("v1.VirtualMachineInstanceGuestOSUserList", &users),
        ("v1.VirtualMachineInstanceFileSystemList", &fs),
    ] {
        assert_eq!(mismatches(def, v), Vec::<String>::new(), "{v}");
    }
    assert!(info["supportedCommands"].as_array().is_some_and(|c| !c.is_empty()), "{info}");
    // Without a running guest there is nothing to ask: a clear error, not an empty answer.
    let out = s.kumo(&["guestosinfo", "no-such-vmi"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not found"));
}

#[test]
fn a_vms_guests_keep_its_firmware_uuid_and_unsupported_things_are_refused() {
    let s = Server::start().unwrap();
    let vm = "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {name: uuidvm}\nspec:\n  \
              runStrategy: Always\n  template:\n    spec:\n      domain: {devices: {}, memory: {guest: 128Mi}}\n      \
              volumes: [{name: root, containerDisk: {image: quay.io/kumo/test-guest:latest}}]\n";
    s.apply(vm).unwrap_or_else(|e| panic!("{e}\n{vm}"));
    // No agent here: the VMI is only made and defaulted.
    let first = eventually(Duration::from_secs(30), || {
        get_opt(&s, &["get", "vmi", "uuidvm", "-o", "jsonpath={.spec.domain.firmware.uuid}"]).filter(|u| !u.is_empty())
    })
    .expect("the VM's VMI");
    let vm_uid = get(&s, &["get", "vm", "uuidvm", "-o", "jsonpath={.metadata.uid}"]);
    assert_eq!(first, vm_uid, "the firmware UUID is the VM's");
    let old = get(&s, &["get", "vmi", "uuidvm", "-o", "jsonpath={.metadata.uid}"]);
    get(&s, &["delete", "vmi", "uuidvm", "--wait=false"]);
    let again = eventually(Duration::from_secs(60), || {
        let now =
            get_opt(&s, &["get", "vmi", "uuidvm", "-o", "jsonpath={.metadata.uid} {.spec.domain.firmware.uuid}"])?;
        // A new VMI (another uid) showing its firmware UUID.
        let (uid, firmware) = now.split_once(' ')?;
        (!uid.is_empty() && uid != old && !firmware.is_empty()).then(|| firmware.to_string())
    });
    assert_eq!(again, Some(vm_uid), "kept across restarts");

    let hooks = NO_DISK.replace(
        "  name: testvmi-nocloud\n",
        "  name: hooked\n  annotations:\n    hooks.kubevirt.io/hookSidecars: '[{\"image\": \"x\"}]'\n",
    );
    let out = s.kubectl_stdin(&["apply", "-f", "-"], &hooks).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("hooks.kubevirt.io/hookSidecars") && stderr.contains("Sidecar"),
        "{stderr}"
    );
    let pc = NO_DISK.replace("  domain:\n", "  domain:\n    machine: {type: pc}\n");
    let out = s.kubectl_stdin(&["apply", "-f", "-"], &pc).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("spec.domain.machine.type"), "{stderr}");
}
