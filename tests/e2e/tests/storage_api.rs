//! PersistentVolumeClaims, PersistentVolumes and StorageClasses through kubectl, against the real server: the
//! columns `kubectl get pvc,pv,sc` prints, the default class, Kubernetes' validation messages (a claim that
//! shrinks, grows where its class forbids, or changes what is fixed), binding a claim to a volume and releasing
//! it, and the protection finalizers: a claim a VMI uses stays (marked for deletion) until the VMI is gone.

use kumo_e2e::{eventually, Server};
use std::time::Duration;

const CLASSES: &str = r#"
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: example.com/nfs
volumeBindingMode: WaitForFirstConsumer
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: fixed}
provisioner: example.com/nfs
allowVolumeExpansion: false
"#;

fn claim(name: &str, size: &str, class: Option<&str>) -> String {
    let class = match class {
        Some(c) => format!("  storageClassName: {c}\n"),
        None => String::new(),
    };
    format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}}}\nspec:\n  accessModes: [ReadWriteOnce]\n\
         {class}  resources: {{requests: {{storage: {size}}}}}\n"
    )
}

fn lines(out: &str) -> Vec<Vec<String>> {
    out.lines().map(|l| l.split_whitespace().map(String::from).collect()).collect()
}

#[test]
fn claims_volumes_and_classes_as_kubernetes_serves_them() {
    let s = Server::start().unwrap();
    s.apply(CLASSES).unwrap();
    let sc = s.kubectl_ok(&["get", "sc"]).unwrap();
    let sc = lines(&sc);
    assert_eq!(
        sc[0],
        ["NAME", "PROVISIONER", "RECLAIMPOLICY", "VOLUMEBINDINGMODE", "ALLOWVOLUMEEXPANSION", "AGE"],
        "{sc:?}"
    );
    let row = |name: &str| sc.iter().find(|r| r[0] == name).unwrap_or_else(|| panic!("no class {name}: {sc:?}"));
    // kumo's own classes are there from the start; the newest default class wins.
    assert_eq!(row("local")[..6], ["local", "(default)", "kumo.dev/local", "Delete", "WaitForFirstConsumer", "true"]);
    assert_eq!(row("shared")[..5], ["shared", "kumo.dev/shared", "Delete", "Immediate", "true"]);
    assert_eq!(row("standard")[..5], ["standard", "(default)", "example.com/nfs", "Delete", "WaitForFirstConsumer"]);
    assert_eq!(row("fixed")[..5], ["fixed", "example.com/nfs", "Delete", "Immediate", "false"], "{sc:?}");

    // No class named: the default one; the protection finalizer; Pending; kubectl's columns.
    s.apply(&claim("data", "1Gi", None)).unwrap();
    let got = s
        .kubectl_ok(&[
            "get",
            "pvc",
            "data",
            "-o",
            "jsonpath={.spec.storageClassName} {.metadata.finalizers} {.status.phase} {.spec.volumeMode}",
        ])
        .unwrap();
    assert_eq!(got, "standard [\"kubernetes.io/pvc-protection\"] Pending Filesystem");
    let pvc = lines(&s.kubectl_ok(&["get", "pvc"]).unwrap());
    assert_eq!(
        pvc[0],
        ["NAME", "STATUS", "VOLUME", "CAPACITY", "ACCESS", "MODES", "STORAGECLASS", "VOLUMEATTRIBUTESCLASS", "AGE"]
    );
    // Volume, capacity and access modes stay empty until bound.
    assert_eq!(pvc[1][..4], ["data", "Pending", "standard", "<unset>"], "{pvc:?}");

    // Kubernetes' validation, by field.
    let bad = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: bad}\nspec:\n  resources: {requests: {storage: 0}}\n";
    let out = s.kubectl_stdin(&["apply", "-f", "-"], bad).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("spec.accessModes: Required value"), "{err}");
    assert!(err.contains("spec.resources.requests[storage]: Invalid value: \"0\": must be greater than zero"), "{err}");
    let err = s
        .kubectl_err(&["patch", "pvc", "data", "-p", r#"{"spec":{"resources":{"requests":{"storage":"512Mi"}}}}"#])
        .unwrap();
    assert!(err.contains("field can not be less than previous value"), "{err}");
    let err = s.kubectl_err(&["patch", "pvc", "data", "-p", r#"{"spec":{"accessModes":["ReadWriteMany"]}}"#]).unwrap();
    assert!(err.contains("spec is immutable after creation"), "{err}");
    s.apply(&claim("small", "1Gi", Some("fixed"))).unwrap();
    s.kubectl_ok(&["patch", "pvc", "small", "--subresource=status", "-p", r#"{"status":{"phase":"Bound"}}"#]).unwrap();
    let err = s
        .kubectl_err(&["patch", "pvc", "small", "-p", r#"{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}"#])
        .unwrap();
    assert!(err.contains("the storageclass that provisions the pvc must support resize"), "{err}");
    let err = s.kubectl_err(&["patch", "sc", "fixed", "-p", r#"{"provisioner":"other"}"#]).unwrap();
    assert!(err.contains("updates to provisioner are forbidden"), "{err}");

    // A class that waits for its first consumer says so.
    let reasons = || {
        s.kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=data",
            "-o",
            "jsonpath={.items[*].reason}",
        ])
        .unwrap()
    };
    assert!(eventually(Duration::from_secs(20), || reasons().contains("WaitForFirstConsumer").then_some(())).is_some());

    // A volume: exactly one source, its columns; a claim binds to it, and it is Released when the claim goes.
    let pv = "apiVersion: v1\nkind: PersistentVolume\nmetadata: {name: pv1}\nspec:\n  capacity: {storage: 2Gi}\n  \
              accessModes: [ReadWriteOnce, ReadOnlyMany]\n  hostPath: {path: /tmp/pv1}\n  storageClassName: manual\n";
    let err = s.kubectl_stdin(&["apply", "-f", "-"], &pv.replace("  hostPath: {path: /tmp/pv1}\n", "")).unwrap();
    assert!(String::from_utf8_lossy(&err.stderr).contains("must specify a volume type"));
    s.apply(pv).unwrap();
    let phase = |kind: &str, name: &str| s.kubectl_ok(&["get", kind, name, "-o", "jsonpath={.status.phase}"]).unwrap();
    assert!(eventually(Duration::from_secs(20), || (phase("pv", "pv1") == "Available").then_some(())).is_some());
    s.apply(&claim("static", "1Gi", Some("manual"))).unwrap();
    assert!(eventually(Duration::from_secs(20), || (phase("pvc", "static") == "Bound").then_some(())).is_some());
    let pvc = lines(&s.kubectl_ok(&["get", "pvc", "static"]).unwrap());
    assert_eq!(pvc[1][..6], ["static", "Bound", "pv1", "2Gi", "RWO,ROX", "manual"], "{pvc:?}");
    let pvs = lines(&s.kubectl_ok(&["get", "pv"]).unwrap());
    assert_eq!(pvs[1][..7], ["pv1", "2Gi", "RWO,ROX", "Retain", "Bound", "default/static", "manual"], "{pvs:?}");
    s.kubectl_ok(&["delete", "pvc", "static", "--timeout=30s"]).unwrap();
    assert!(eventually(Duration::from_secs(20), || (phase("pv", "pv1") == "Released").then_some(())).is_some());
    s.kubectl_ok(&["delete", "pv", "pv1", "--timeout=30s"]).unwrap();

    // A claim in use by a VMI stays until the VMI is gone.
    let vmi =
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: user}\nspec:\n  domain:\n    \
               devices: {disks: [{name: d, disk: {bus: virtio}}]}\n    resources: {requests: {memory: 64Mi}}\n  \
               volumes: [{name: d, ephemeral: {persistentVolumeClaim: {claimName: data}}}]\n";
    s.apply(vmi).unwrap();
    s.kubectl_ok(&["delete", "pvc", "data", "--wait=false"]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let held = s.kubectl_ok(&["get", "pvc", "data", "-o", "jsonpath={.metadata.deletionTimestamp}"]).unwrap();
    assert!(!held.is_empty(), "the claim is marked for deletion and held");
    s.kubectl_ok(&["delete", "vmi", "user", "--wait=false"]).unwrap();
    let gone = eventually(Duration::from_secs(30), || {
        let out = s.kubectl(&["get", "pvc", "data"]).unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        (!out.status.success()).then(|| assert!(err.contains("NotFound"), "{err}"))
    });
    assert!(gone.is_some(), "the claim went once no VMI used it");
    s.kubectl_ok(&["delete", "pvc", "small", "--timeout=30s"]).unwrap();
}

/// A Ready Node with a fresh Lease, as an agent registers one (nothing runs there: the VMI is only placed).
fn fake_node(s: &Server, name: &str) {
    s.fake_node(name, "4", "8Gi").unwrap();
    let now = s.kubectl_ok(&["get", "node", name, "-o", "jsonpath={.metadata.creationTimestamp}"]).unwrap();
    s.apply(&format!(
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: {name}, namespace: kube-node-lease}}\n\
         spec: {{holderIdentity: {name}, leaseDurationSeconds: 300, renewTime: \"{}\"}}\n",
        now.replace('Z', ".000000Z")
    ))
    .unwrap();
}

/// A claim whose class waits for its first consumer: the VMI that uses it is placed, its node is given to the
/// claim (for the provisioner), and the VMI is bound there only once the claim has its volume.
#[test]
fn a_vmi_waits_for_its_claims_volume_on_the_node_chosen() {
    let s = Server::start().unwrap();
    s.apply(CLASSES).unwrap();
    s.apply(&claim("data", "1Gi", None)).unwrap();
    fake_node(&s, "n1");
    fake_node(&s, "n2");
    let vmi =
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: user}\nspec:\n  domain:\n    \
               devices: {disks: [{name: d, disk: {bus: virtio}}]}\n    resources: {requests: {memory: 64Mi}}\n  \
               volumes: [{name: d, ephemeral: {persistentVolumeClaim: {claimName: data}}}]\n";
    s.apply(vmi).unwrap();
    let get = |args: &[&str]| s.kubectl_ok(args).unwrap();
    let selected = eventually(Duration::from_secs(20), || {
        let n = get(&[
            "get",
            "pvc",
            "data",
            "-o",
            r"jsonpath={.metadata.annotations.volume\.kubernetes\.io/selected-node}",
        ]);
        (!n.is_empty()).then_some(n)
    })
    .expect("the scheduler selected a node for the claim");
    let waiting = get(&[
        "get",
        "vmi",
        "user",
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="PodScheduled")].reason} {.status.nodeName}"#,
    ]);
    assert_eq!(waiting.trim(), "WaitingForVolumes", "not bound before its volume exists");

    // What a provisioner does: a volume on that node, for that claim.
    let uid = get(&["get", "pvc", "data", "-o", "jsonpath={.metadata.uid}"]);
    s.apply(&format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: pv-data}}\nspec:\n  capacity: {{storage: 1Gi}}\n  \
         accessModes: [ReadWriteOnce]\n  storageClassName: standard\n  hostPath: {{path: /tmp/pv-data}}\n  \
         claimRef: {{namespace: default, name: data, uid: {uid}}}\n  nodeAffinity:\n    required:\n      nodeSelectorTerms:\n      \
         - matchExpressions: [{{key: kubernetes.io/hostname, operator: In, values: [{selected}]}}]\n"
    ))
    .unwrap();
    let node = eventually(Duration::from_secs(30), || {
        let n = get(&["get", "vmi", "user", "-o", "jsonpath={.status.nodeName}"]);
        (!n.is_empty()).then_some(n)
    })
    .expect("the VMI was bound once its claim was");
    assert_eq!(node, selected, "on the node its volume is on");
    assert_eq!(get(&["get", "pvc", "data", "-o", "jsonpath={.status.phase} {.spec.volumeName}"]), "Bound pv-data");
}

/// The server (binder included) SIGKILLed while 20 claims bind to 20 volumes, some bindings halfway (the volume
/// names its claim, the claim not yet its volume): after the restart every claim is bound to a volume of its own,
/// and every volume names exactly the claim bound to it.
#[test]
fn bindings_cut_by_a_sigkill_complete_once_and_only_once() {
    let mut s = Server::start().unwrap();
    let n = 20;
    let mut yaml = String::new();
    for i in 0..n {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: pv{i}}}\nspec:\n  capacity: {{storage: 1Gi}}\n  \
             accessModes: [ReadWriteOnce]\n  storageClassName: manual\n  hostPath: {{path: /tmp/pv{i}}}\n"
        ));
    }
    s.apply(&yaml).unwrap();
    let claims: String = (0..n).map(|i| format!("---\n{}", claim(&format!("c{i}"), "1Gi", Some("manual")))).collect();
    s.apply(&claims).unwrap();
    // Mid-binding: some claims are bound, some not yet.
    let bound = |s: &Server| {
        let out = s.kubectl_ok(&["get", "pvc", "-o", "jsonpath={.items[*].status.phase}"]).unwrap();
        out.split_whitespace().filter(|p| *p == "Bound").count()
    };
    let before = eventually(Duration::from_secs(20), || Some(bound(&s)).filter(|b| *b > 0)).expect("binding started");
    s.restart().unwrap();
    if eventually(Duration::from_secs(60), || (bound(&s) == n).then_some(())).is_none() {
        let pvc = s.kubectl_ok(&["get", "pvc", "-o", "wide"]).unwrap();
        let pv = s.kubectl_ok(&["get", "pv", "-o", "wide"]).unwrap();
        panic!("not every claim was bound after the restart:\n{pvc}\n{pv}\n{}", s.log());
    }
    eprintln!("{before} of {n} claims were bound when the server was killed");

    let pairs = s
        .kubectl_ok(&[
            "get",
            "pvc",
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name}={.spec.volumeName}={.metadata.uid}{"\n"}{end}"#,
        ])
        .unwrap();
    let refs = s
        .kubectl_ok(&["get", "pv", "-o", r#"jsonpath={range .items[*]}{.metadata.name}={.spec.claimRef.name}={.spec.claimRef.uid}={.status.phase}{"\n"}{end}"#])
        .unwrap();
    let refs: std::collections::BTreeMap<&str, (&str, &str, &str)> = refs
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('=').collect();
            (f[0], (f[1], f[2], f[3]))
        })
        .collect();
    let mut used = std::collections::BTreeSet::new();
    for line in pairs.lines() {
        let f: Vec<&str> = line.split('=').collect();
        let (claim, volume, uid) = (f[0], f[1], f[2]);
        assert!(used.insert(volume), "volume {volume} given to two claims");
        assert_eq!(refs[volume], (claim, uid, "Bound"), "{volume} names {claim}");
    }
    let named: Vec<_> = refs.iter().filter(|(_, (c, _, _))| !c.is_empty()).collect();
    assert_eq!(named.len(), n, "no volume names a claim that is not bound to it: {refs:?}");
}
