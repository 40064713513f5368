//! KubeVirt's kubevirt.io/v1 API as served by kumo: KubeVirt-format manifests apply unchanged, kubectl prints
//! KubeVirt's columns, and fields kumo does not implement are refused by name.

use kumo_e2e::Server;

const VM: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: testvm
  labels: {kubevirt.io/vm: testvm}
spec:
  runStrategy: Halted
  template:
    metadata:
      labels: {kubevirt.io/domain: testvm}
    spec:
      domain:
        cpu: {cores: 1}
        memory: {guest: 128Mi}
        resources:
          requests: {memory: 128Mi}
        devices:
          disks:
          - name: containerdisk
            disk: {bus: virtio}
          - name: cloudinitdisk
            disk: {bus: virtio}
          interfaces:
          - name: default
            masquerade: {}
            ports:
            - {name: http, port: 8080}
          rng: {}
      networks:
      - name: default
        pod: {}
      terminationGracePeriodSeconds: 30
      volumes:
      - name: containerdisk
        containerDisk:
          image: quay.io/kubevirt/cirros-container-disk-demo
      - name: cloudinitdisk
        cloudInitNoCloud:
          userData: |
            #!/bin/sh
            echo hello > /www/index.html
"#;

#[test]
fn kubevirt_manifests_apply_and_print_kubevirt_columns() {
    let s = Server::start().unwrap();
    assert!(s.apply(VM).unwrap().contains("virtualmachine.kubevirt.io/testvm created"));
    let out = s.kubectl_ok(&["get", "vm"]).unwrap();
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, vec!["NAME", "AGE", "STATUS", "READY"]);
    // A bare VMI, made from the VM's template, prints KubeVirt's VMI columns.
    let vmi = VM.split("\n  template:\n").nth(1).unwrap().replace("\n    ", "\n");
    let vmi = format!(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata:\n  name: bare\n{}",
        vmi.split_once("\nspec:").map(|(_, r)| format!("spec:{r}")).unwrap()
    );
    s.apply(&vmi).unwrap();
    let vmis = s.kubectl_ok(&["get", "vmi"]).unwrap();
    let header: Vec<&str> = vmis.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, vec!["NAME", "AGE", "PHASE", "IP", "NODENAME", "READY"]);
    assert!(s.kubectl_ok(&["api-resources", "--api-group=kubevirt.io"]).unwrap().contains("vmi"));
    let got = s
        .kubectl_ok(&[
            "get",
            "vm",
            "testvm",
            "-o",
            "jsonpath={.spec.template.spec.volumes[1].cloudInitNoCloud.userData}",
        ])
        .unwrap();
    assert!(got.contains("echo hello"), "{got}");
    let explain = s.kubectl_ok(&["explain", "vmi.spec.volumes.containerDisk"]).unwrap();
    assert!(explain.contains("image"), "{explain}");
}

#[test]
fn readme_example_is_valid() {
    let s = Server::start().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/vm.yaml");
    let out = s.kubectl_ok(&["apply", "--dry-run=server", "-f", example]).unwrap();
    assert!(out.contains("virtualmachine.kubevirt.io/testvm created (server dry run)"), "{out}");
    assert!(s.kubectl_ok(&["get", "vm", "-o", "name"]).unwrap().trim().is_empty(), "dry run stores nothing");
}

#[test]
fn unimplemented_kubevirt_fields_are_refused_by_name() {
    let s = Server::start().unwrap();
    let clock = VM.replace("        cpu: {cores: 1}\n", "        cpu: {cores: 1}\n        clock: {utc: {}}\n");
    // kernelBoot arguments without a kernel to boot: refused, naming the field.
    let kernel = VM.replace(
        "        cpu: {cores: 1}\n",
        "        cpu: {cores: 1}\n        firmware: {kernelBoot: {kernelArgs: x}}\n",
    );
    let err = String::from_utf8_lossy(&s.kubectl_stdin(&["apply", "-f", "-"], &kernel).unwrap().stderr).into_owned();
    assert!(err.contains("spec.template.spec.domain.firmware.kernelBoot.kernelArgs"), "{err}");
    // Even with client-side validation off (fieldValidation=Ignore) the field is refused, not dropped.
    let out = s.kubectl_stdin(&["apply", "--validate=false", "-f", "-"], &clock).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec.template.spec.domain.clock") && err.contains("not supported by kumo"), "{err}");
    // Semantic checks name the field too.
    let mismatch = VM.replace("- name: containerdisk\n            disk", "- name: rootdisk\n            disk");
    let out = s.kubectl_stdin(&["apply", "-f", "-"], &mismatch).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec.template.spec.domain.devices.disks[0].name"), "{err}");
    let both = VM.replace("  runStrategy: Halted\n", "  runStrategy: Halted\n  running: false\n");
    let err = String::from_utf8_lossy(&s.kubectl_stdin(&["apply", "-f", "-"], &both).unwrap().stderr).into_owned();
    assert!(err.contains("spec.running") && err.contains("mutually exclusive"), "{err}");
    assert!(s.kubectl_ok(&["get", "vm", "-o", "name"]).unwrap().trim().is_empty(), "nothing stored");
}

#[test]
fn scheduler_owned_fields_are_refused() {
    let s = Server::start().unwrap();
    // The node label on a new VMI is the scheduler's to set.
    let vmi = r#"{"apiVersion":"kubevirt.io/v1","kind":"VirtualMachineInstance","metadata":{"name":"v","labels":{"kubevirt.io/nodeName":"n1"}},
        "spec":{"domain":{"devices":{}}}}"#;
    let out = s.kubectl_stdin(&["create", "-f", "-"], vmi).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("metadata.labels[kubevirt.io/nodeName]"), "{err}");
    // A Node's pod CIDR, once given, does not change.
    let node = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"n1"},"spec":{"podCIDR":"10.244.9.0/24"}}"#;
    s.kubectl_stdin(&["create", "-f", "-"], node).unwrap();
    let out =
        s.kubectl(&["patch", "node", "n1", "--type=merge", "-p", r#"{"spec":{"podCIDR":"10.244.10.0/24"}}"#]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("spec.podCIDR"), "{err}");
    let cidr = s.kubectl_ok(&["get", "node", "n1", "-o", "jsonpath={.spec.podCIDR}"]).unwrap();
    assert_eq!(cidr, "10.244.9.0/24");
}
