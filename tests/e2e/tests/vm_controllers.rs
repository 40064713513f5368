//! The VM and VMI controllers inside the real `kumo server`, driven with kubectl: runStrategy creates and
//! deletes the owned VMI, scheduling waits for a Ready node, statuses and events follow.
//! (Booting guests is the node agent's job and is tested with real QEMU elsewhere.)

use kumo_e2e::{eventually, Server};
use std::time::Duration;

const VM: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: ctl}
spec:
  runStrategy: Always
  template:
    metadata: {labels: {app: ctl}}
    spec:
      domain:
        memory: {guest: 128Mi}
        devices:
          disks: [{name: root, disk: {bus: virtio}}]
      volumes: [{name: root, containerDisk: {image: example/guest}}]
"#;

/// A field of an object; empty while the object does not exist yet (controllers create some of them), but any
/// other kubectl failure (a dead server) fails the test.
fn jsonpath(s: &Server, args: &[&str]) -> String {
    match s.kubectl_ok(args) {
        Ok(out) => out,
        Err(e) if e.to_string().contains("NotFound") => String::new(),
        Err(e) => panic!("kubectl {args:?} failed (is the server alive?): {e}"),
    }
}

fn wait_for(s: &Server, what: &str, args: &[&str], want: &str) {
    let got = eventually(Duration::from_secs(20), || {
        let v = jsonpath(s, args);
        (v == want).then_some(v)
    });
    assert!(got.is_some(), "{what}: wanted {want:?}, last {:?}\n{}", jsonpath(s, args), s.log());
}

#[test]
fn run_strategy_drives_the_vmi_and_scheduling_waits_for_a_node() {
    let s = Server::start().unwrap();
    s.apply(VM).unwrap();
    wait_for(
        &s,
        "VMI created",
        &["get", "vmi", "ctl", "-o", "jsonpath={.metadata.ownerReferences[0].kind}"],
        "VirtualMachine",
    );
    // No node yet: the VMI cannot be scheduled and says why.
    wait_for(&s, "unschedulable", &["get", "vmi", "ctl", "-o", "jsonpath={.status.phase}"], "Scheduling");
    wait_for(&s, "vm status", &["get", "vm", "ctl", "-o", "jsonpath={.status.printableStatus}"], "ErrorUnschedulable");
    let describe = s.kubectl_ok(&["describe", "vmi", "ctl"]).unwrap();
    assert!(describe.contains("FailedScheduling") && describe.contains("0/0 nodes are available"), "{describe}");
    // A Ready node with room appears: the VMI is scheduled there.
    s.apply("apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n").unwrap();
    s.kubectl_ok(&[
        "patch",
        "node",
        "node-a",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"allocatable":{"memory":"1Gi","cpu":"2"},"conditions":[{"type":"Ready","status":"True"}]}}"#,
    ])
    .unwrap();
    wait_for(
        &s,
        "scheduled",
        &["get", "vmi", "ctl", "-o", "jsonpath={.status.phase}/{.status.nodeName}"],
        "Scheduled/node-a",
    );
    wait_for(&s, "vm starting", &["get", "vm", "ctl", "-o", "jsonpath={.status.printableStatus}"], "Starting");
    let events = s.kubectl_ok(&["describe", "vm", "ctl"]).unwrap();
    assert!(events.contains("SuccessfulCreate"), "{events}");
    // Every transition is an event: the VMI's phases, the VM's printableStatus changes.
    let reasons = |kind: &str| {
        let sel = format!("involvedObject.kind={kind},involvedObject.name=ctl");
        jsonpath(&s, &["get", "events", "--field-selector", &sel, "-o", "jsonpath={.items[*].reason}"])
    };
    let all_there = eventually(Duration::from_secs(10), || {
        let (vmi, vm) = (reasons("VirtualMachineInstance"), reasons("VirtualMachine"));
        let want_vmi = ["Pending", "Scheduling", "FailedScheduling", "Scheduled"];
        let want_vm = ["ErrorUnschedulable", "Starting"];
        (want_vmi.iter().all(|r| vmi.split(' ').any(|x| x == *r))
            && want_vm.iter().all(|r| vm.split(' ').any(|x| x == *r)))
        .then_some(())
    });
    assert!(
        all_there.is_some(),
        "VMI events: {}; VM events: {}",
        reasons("VirtualMachineInstance"),
        reasons("VirtualMachine")
    );
    // Halting deletes the VMI; the VM reports Stopped.
    s.kubectl_ok(&["patch", "vm", "ctl", "--type=merge", "-p", r#"{"spec":{"runStrategy":"Halted"}}"#]).unwrap();
    wait_for(&s, "vmi deleted", &["get", "vmi", "-o", "name"], "");
    wait_for(&s, "vm stopped", &["get", "vm", "ctl", "-o", "jsonpath={.status.printableStatus}"], "Stopped");
    // Deleting the VM with a VMI running removes both (ownerReferences).
    s.kubectl_ok(&["patch", "vm", "ctl", "--type=merge", "-p", r#"{"spec":{"runStrategy":"Always"}}"#]).unwrap();
    wait_for(&s, "vmi again", &["get", "vmi", "ctl", "-o", "jsonpath={.status.nodeName}"], "node-a");
    s.kubectl_ok(&["delete", "vm", "ctl", "--timeout=30s"]).unwrap();
    wait_for(&s, "all gone", &["get", "vm,vmi", "-o", "name"], "");
}

#[test]
fn kumo_start_stop_restart_use_kubevirt_subresources() {
    let s = Server::start().unwrap();
    s.apply(&VM.replace("runStrategy: Always", "runStrategy: Halted")).unwrap();
    wait_for(&s, "stopped", &["get", "vm", "ctl", "-o", "jsonpath={.status.printableStatus}"], "Stopped");
    let out = s.kumo(&["stop", "ctl"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("VM is not running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = s.kumo(&["start", "ctl"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("VM ctl was scheduled to start"));
    assert_eq!(jsonpath(&s, &["get", "vm", "ctl", "-o", "jsonpath={.spec.runStrategy}"]), "Always");
    wait_for(&s, "vmi exists", &["get", "vmi", "ctl", "-o", "jsonpath={.metadata.name}"], "ctl");
    let first_uid = jsonpath(&s, &["get", "vmi", "ctl", "-o", "jsonpath={.metadata.uid}"]);
    // Restart replaces the VMI (new uid) through stateChangeRequests.
    let out = s.kumo(&["restart", "ctl"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let replaced = eventually(Duration::from_secs(20), || {
        let uid = jsonpath(&s, &["get", "vmi", "ctl", "-o", "jsonpath={.metadata.uid}"]);
        (!uid.is_empty() && uid != first_uid).then_some(uid)
    });
    assert!(replaced.is_some(), "restart created a new VMI");
    wait_for(&s, "requests drained", &["get", "vm", "ctl", "-o", "jsonpath={.status.stateChangeRequests}"], "");
    // Pausing needs a running guest; this one is not scheduled anywhere.
    let out = s.kumo(&["pause", "vmi", "ctl"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("VMI is not running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = s.kumo(&["stop", "ctl"]);
    assert!(out.status.success());
    assert_eq!(jsonpath(&s, &["get", "vm", "ctl", "-o", "jsonpath={.spec.runStrategy}"]), "Halted");
    wait_for(&s, "vmi gone", &["get", "vmi", "-o", "name"], "");
}
