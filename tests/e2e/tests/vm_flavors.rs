//! Flavors on real guests: a VM with an instancetype and a preference boots with the flavor's CPUs and memory
//! as the guest sees them; the flavor is pinned in a ControllerRevision, so editing or deleting it changes
//! nothing for the VM, across a restart too; a template that sets what the instancetype gives is refused by
//! field; the common cluster flavors are installed. Needs root, QEMU and the test guest + registry that
//! scripts/setup.sh prepares.

use kumo_e2e::{eventually, Server};
use std::time::Duration;

/// KubeVirt's documented examples, sized for the test guest.
const FLAVORS: &str = r#"
apiVersion: instancetype.kubevirt.io/v1beta1
kind: VirtualMachineInstancetype
metadata:
  name: example-instancetype
spec:
  cpu:
    guest: 2
  memory:
    guest: 320Mi
---
apiVersion: instancetype.kubevirt.io/v1beta1
kind: VirtualMachinePreference
metadata:
  name: example-preference
spec:
  devices:
    preferredDiskBus: virtio
"#;

const VM: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: flavored
spec:
  instancetype:
    kind: VirtualMachineInstancetype
    name: example-instancetype
  preference:
    kind: VirtualMachinePreference
    name: example-preference
  runStrategy: Always
  template:
    spec:
      terminationGracePeriodSeconds: 2
      domain:
        devices:
          disks:
          - name: containerdisk
      volumes:
      - name: containerdisk
        containerDisk:
          image: quay.io/kumo/test-guest:latest
"#;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn get(s: &Server, args: &[&str]) -> String {
    s.kubectl_ok(args).unwrap_or_else(|e| panic!("kubectl {args:?} failed (is the server alive?): {e}"))
}

/// (vCPUs, MemTotal in MiB) as the guest sees them.
fn guest_size(s: &Server) -> (u32, u64) {
    if let Err(e) = s.wait_vmi_ready("flavored", Duration::from_secs(180)) {
        panic!("{e:#}\n{}", get(s, &["describe", "vmi", "flavored"]));
    }
    let text = s.in_guest("flavored", "echo $(nproc) $(sed -n 's/^MemTotal: *//p' /proc/meminfo)", secs(120));
    let f: Vec<&str> = text.split_whitespace().collect();
    (f[0].parse().unwrap(), f[1].parse::<u64>().unwrap() / 1024)
}

#[test]
fn a_flavored_vm_gets_its_cpus_and_memory_and_keeps_them_when_the_flavor_changes() {
    let s = Server::start_with_guests(&[]).unwrap();
    let common = get(&s, &["get", "virtualmachineclusterinstancetypes,virtualmachineclusterpreferences", "-o", "name"]);
    assert!(common.contains("u1.small") && common.contains("u1.medium") && common.contains("/linux"), "{common}");
    s.apply(FLAVORS).unwrap();
    s.apply(VM).unwrap();
    let (cpus, mem) = guest_size(&s);
    assert_eq!(cpus, 2, "the instancetype's vCPUs");
    assert!((240..=320).contains(&mem), "the instancetype's memory, less what the kernel keeps: {mem} MiB");
    let rev = get(&s, &["get", "vm", "flavored", "-o", "jsonpath={.spec.instancetype.revisionName}"]);
    assert!(!rev.is_empty(), "the instancetype is pinned");
    let data = get(&s, &["get", "controllerrevision", &rev, "-o", "jsonpath={.data.spec.cpu.guest}"]);
    assert_eq!(data, "2");
    let bus = get(&s, &["get", "vmi", "flavored", "-o", "jsonpath={.spec.domain.devices.disks[0].disk.bus}"]);
    assert_eq!(bus, "virtio", "the preference's disk bus");

    // The flavor is edited, then deleted: the VM, restarted, is as it was.
    get(
        &s,
        &["patch", "vminstancetype", "example-instancetype", "--type=merge", "-p", r#"{"spec":{"cpu":{"guest":1}}}"#],
    );
    get(&s, &["delete", "vminstancetype", "example-instancetype"]);
    let uid = get(&s, &["get", "vmi", "flavored", "-o", "jsonpath={.metadata.uid}"]);
    let out = s.kumo(&["restart", "flavored"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let new = eventually(secs(120), || {
        let now = get(&s, &["get", "vmi", "flavored", "-o", "jsonpath={.metadata.uid}", "--ignore-not-found"]);
        (!now.is_empty() && now != uid).then_some(now)
    });
    assert!(new.is_some(), "not restarted: {}", get(&s, &["describe", "vm", "flavored"]));
    assert_eq!(guest_size(&s).0, 2, "still the pinned instancetype's vCPUs");

    // The flavor comes back with 1 vCPU; asked to update, the VM takes it at its next restart.
    s.apply(&FLAVORS.replace("guest: 2", "guest: 1")).unwrap();
    let out = s.kumo(&["update-flavor", "flavored"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let newer = eventually(secs(30), || {
        let r = get(&s, &["get", "vm", "flavored", "-o", "jsonpath={.spec.instancetype.revisionName}"]);
        (!r.is_empty() && r != rev).then_some(r)
    });
    assert!(newer.is_some(), "the flavor is pinned anew: {}", get(&s, &["get", "vm", "flavored", "-o", "yaml"]));
    assert_eq!(guest_size(&s).0, 2, "nothing changes before the restart");
    let uid = get(&s, &["get", "vmi", "flavored", "-o", "jsonpath={.metadata.uid}"]);
    let out = s.kumo(&["restart", "flavored"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let restarted = eventually(secs(120), || {
        let now = get(&s, &["get", "vmi", "flavored", "-o", "jsonpath={.metadata.uid}", "--ignore-not-found"]);
        (!now.is_empty() && now != uid).then_some(())
    });
    assert!(restarted.is_some(), "not restarted: {}", get(&s, &["describe", "vm", "flavored"]));
    assert_eq!(guest_size(&s).0, 1, "the updated instancetype's vCPUs");
}

#[test]
fn a_template_that_sets_what_its_instancetype_gives_is_refused_by_field() {
    let s = Server::start().unwrap();
    s.apply(FLAVORS).unwrap();
    let bad = VM.replace("      domain:\n", "      domain:\n        cpu: {cores: 4}\n        memory: {guest: 1Gi}\n");
    let out = s.kubectl_stdin(&["apply", "-f", "-"], &bad).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted");
    assert!(
        stderr.contains("spec.template.spec.domain.cpu") && stderr.contains("spec.template.spec.domain.memory.guest"),
        "{stderr}"
    );
    assert!(stderr.contains("conflicts with selected instance type"), "{stderr}");
    let bad_it = "apiVersion: instancetype.kubevirt.io/v1beta1\nkind: VirtualMachineInstancetype\nmetadata: {name: nocpu}\nspec:\n  memory: {guest: 1Gi}\n";
    let out = s.kubectl_stdin(&["apply", "-f", "-"], bad_it).unwrap();
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("spec.cpu"),
        "an instancetype without CPUs"
    );
    // A VM naming a flavor that does not exist waits, saying why.
    s.apply(&VM.replace("name: example-instancetype", "name: missing")).unwrap();
    let why = eventually(secs(30), || {
        let ev = get(&s, &["get", "events", "--field-selector", "involvedObject.name=flavored"]);
        ev.contains("missing not found").then_some(ev)
    });
    assert!(why.is_some(), "{}", get(&s, &["get", "events"]));
    assert!(get(&s, &["get", "vmi", "-o", "name"]).is_empty(), "no VMI without its flavor");

    // `kumo create vm` (as virtctl's) prints a manifest that applies as it is, with a common flavor.
    let (ok, manifest) = kumo_e2e::kumo_cli(&[
        "create",
        "vm",
        "--name",
        "made",
        "--instancetype",
        "u1.nano",
        "--preference",
        "linux",
        "--volume-containerdisk",
        "src:quay.io/kumo/test-guest:latest",
    ]);
    assert!(ok, "{manifest}");
    s.apply(&manifest).unwrap_or_else(|e| panic!("{e}\n{manifest}"));
    let vmi = eventually(secs(30), || {
        let out = s.kubectl(&["get", "vmi", "made", "-o",
            "jsonpath={.spec.domain.cpu.sockets} {.spec.domain.memory.guest} {.spec.domain.devices.interfaces[0].model}"]).ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).to_string())
    });
    assert_eq!(vmi.as_deref(), Some("1 512Mi virtio"), "u1.nano and the linux preference");
}
