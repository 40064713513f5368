//! The VMI scheduler against the real server, with fake Nodes registered through the API (no agent):
//! schedulers racing on the same VMIs never bind one twice, and a VMI that fits nowhere says why.

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::watcher;
use kumo_e2e::{eventually, kumo_bin, Server};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn fake_node(s: &Server, name: &str, cpu: &str, memory: &str) {
    s.fake_node(name, cpu, memory).unwrap();
}

/// Renews the fake nodes' Leases every second, as their agents would (else the node lifecycle controller
/// marks them unreachable); stops when dropped.
struct Heartbeats(Arc<AtomicBool>, Option<std::thread::JoinHandle<()>>);

impl Heartbeats {
    fn start(s: &Server, nodes: &[&str]) -> Heartbeats {
        let (stop, kubeconfig) = (Arc::new(AtomicBool::new(false)), s.kubeconfig());
        let nodes: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
                let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
                let leases: Api<Lease> = Api::namespaced(kube::Client::try_from(cfg).unwrap(), "kube-node-lease");
                while !flag.load(Ordering::Relaxed) {
                    for n in &nodes {
                        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                            "metadata": {"name": n, "namespace": "kube-node-lease"},
                            "spec": {"holderIdentity": n, "leaseDurationSeconds": 40,
                                "renewTime": MicroTime(k8s_openapi::jiff::Timestamp::now())}});
                        let pp = PatchParams::apply("fake-agent").force();
                        let _ = leases.patch(n, &pp, &Patch::Apply(lease)).await;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            })
        });
        Heartbeats(stop, Some(thread))
    }
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        if let Some(t) = self.1.take() {
            let _ = t.join();
        }
    }
}

/// `kumo controllers` processes acting without leader election; killed when dropped.
struct Schedulers {
    children: Vec<(String, Child)>,
    logs: Vec<std::path::PathBuf>,
}

impl Schedulers {
    fn start(s: &Server, names: &[&str]) -> Schedulers {
        let mut out = Schedulers { children: vec![], logs: vec![] };
        for name in names {
            let log_path = s.data_dir().join(format!("{name}.log"));
            let log = std::fs::File::create(&log_path).unwrap();
            let child = Command::new(kumo_bin())
                .args(["controllers", "--no-leader-elect", "--kubeconfig"])
                .arg(s.kubeconfig())
                // The events' reportingInstance: who bound what.
                .env("HOSTNAME", name)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            out.children.push((name.to_string(), child));
            out.logs.push(log_path);
        }
        out
    }

    fn logs(&self) -> String {
        self.logs.iter().map(|p| std::fs::read_to_string(p).unwrap_or_default()).collect::<Vec<_>>().join("\n")
    }

    /// Until every one of them has its caches (so all of them see the VMIs that come next).
    fn wait_synced(&self) {
        let synced = eventually(Duration::from_secs(30), || {
            self.logs
                .iter()
                .all(|p| std::fs::read_to_string(p).unwrap_or_default().contains("scheduler caches synced"))
                .then_some(())
        });
        assert!(synced.is_some(), "schedulers did not start: {}", self.logs());
    }
}

impl Drop for Schedulers {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- scheduler logs ---\n{}", self.logs());
        }
    }
}

fn vmi_resource() -> ApiResource {
    let gvk = GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachineInstance");
    ApiResource::from_gvk_with_plural(&gvk, "virtualmachineinstances")
}

fn vmi(name: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"domain": {"memory": {"guest": "64Mi"}, "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]}},
            "volumes": [{"name": "root", "containerDisk": {"image": "example/guest"}}]}}))
    .unwrap()
}

fn node_of(o: &DynamicObject) -> Option<String> {
    o.data.pointer("/status/nodeName").and_then(Value::as_str).map(String::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_schedulers_never_bind_a_vmi_twice() {
    const VMIS: usize = 40;
    // The server's own controllers plus two more: three schedulers act on every VMI at once.
    let s = Server::start().unwrap();
    let names = ["n1", "n2", "n3", "n4"];
    for n in names {
        fake_node(&s, n, "4", "8Gi");
    }
    let _alive = Heartbeats::start(&s, &names);
    let racers = Schedulers::start(&s, &["racer-1", "racer-2"]);
    racers.wait_synced();

    let client = s.client().await.unwrap();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &vmi_resource());
    // Every nodeName each VMI is seen with, in order, from a watch opened before the VMIs exist.
    let seen: Arc<Mutex<BTreeMap<String, Vec<Option<String>>>>> = Default::default();
    let recorder = {
        let (seen, api) = (seen.clone(), api.clone());
        tokio::spawn(async move {
            let mut events = Box::pin(watcher(api, watcher::Config::default()));
            while let Some(ev) = events.next().await {
                if let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = ev {
                    let uid = o.metadata.uid.clone().unwrap_or_default();
                    seen.lock().unwrap().entry(uid).or_default().push(node_of(&o));
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let creates = (0..VMIS).map(|i| {
        let api = api.clone();
        async move { api.create(&PostParams::default(), &vmi(&format!("race-{i}"))).await }
    });
    for r in futures::future::join_all(creates).await {
        r.unwrap();
    }
    let all_bound = eventually(Duration::from_secs(60), || {
        let out = s.kubectl_ok(&["get", "vmi", "-o", "jsonpath={.items[*].status.nodeName}"]).ok()?;
        (out.split_whitespace().count() == VMIS).then_some(())
    });
    assert!(all_bound.is_some(), "not all bound: {}", s.kubectl_ok(&["get", "vmi"]).unwrap_or_else(|e| e.to_string()));
    // A scheduler that lost a race would write within milliseconds; give it ample time.
    tokio::time::sleep(Duration::from_secs(3)).await;
    recorder.abort();

    let list = api.list(&ListParams::default()).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for o in &list.items {
        let uid = o.metadata.uid.clone().unwrap();
        let node = node_of(o).expect("bound");
        *per_node.entry(node.clone()).or_default() += 1;
        // The binding, once made, never changes: every observation after the first with a node has that node.
        let history = &seen[&uid];
        let first = history.iter().position(Option::is_some).expect("the watch saw the binding");
        assert!(history[first..].iter().all(|n| n.as_deref() == Some(node.as_str())), "{uid} moved: {history:?}");
        let label = o.metadata.labels.as_ref().and_then(|l| l.get("kubevirt.io/nodeName"));
        assert_eq!(label, Some(&node), "the node label follows the binding");
    }
    assert_eq!(per_node.keys().collect::<Vec<_>>(), names.iter().collect::<Vec<_>>(), "spread: {per_node:?}");

    // Exactly one Scheduled event per VMI, never repeated as a series; and the bindings came from several
    // schedulers, so they really raced.
    let events: Api<DynamicObject> = Api::namespaced_with(
        client,
        "default",
        &ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("events.k8s.io", "v1", "Event"), "events"),
    );
    let events = events.list(&ListParams::default()).await.unwrap();
    let mut scheduled: BTreeMap<String, usize> = BTreeMap::new();
    let mut binders = BTreeSet::new();
    for e in events.items.iter().filter(|e| e.data["reason"] == "Scheduled") {
        let uid = e.data.pointer("/regarding/uid").and_then(Value::as_str).unwrap_or_default().to_string();
        assert!(e.data.get("series").is_none_or(Value::is_null), "a repeated Scheduled event: {:?}", e.data);
        *scheduled.entry(uid).or_default() += 1;
        binders.insert(e.data["reportingInstance"].as_str().unwrap_or_default().to_string());
    }
    let uids: BTreeSet<String> = list.items.iter().filter_map(|o| o.metadata.uid.clone()).collect();
    assert_eq!(scheduled.keys().cloned().collect::<BTreeSet<_>>(), uids);
    assert!(scheduled.values().all(|n| *n == 1), "Scheduled events per VMI: {scheduled:?}");
    assert!(binders.len() >= 2, "only {binders:?} bound VMIs: the schedulers did not race");
}

const BIG_VM: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: big}
spec:
  runStrategy: Always
  template:
    metadata: {labels: {app: web}}
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {app: web}}
            topologyKey: kubernetes.io/hostname
      domain:
        cpu: {cores: 12}
        memory: {guest: 128Mi}
        devices:
          disks: [{name: root, disk: {bus: virtio}}]
      volumes: [{name: root, containerDisk: {image: example/guest}}]
"#;

/// A VMI labelled app=web, pinned to `node`.
fn web_vmi(name: &str, node: &str) -> String {
    format!(
        r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: {name}, labels: {{app: web}}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  domain:
    memory: {{guest: 128Mi}}
    devices:
      disks: [{{name: root, disk: {{bus: virtio}}}}]
  volumes: [{{name: root, containerDisk: {{image: example/guest}}}}]
"#
    )
}

fn wait_for(s: &Server, what: &str, args: &[&str], want: &str) {
    let got = eventually(Duration::from_secs(30), || (s.kubectl_ok(args).ok()? == want).then_some(()));
    assert!(got.is_some(), "{what}: wanted {want:?}, last {:?}", s.kubectl_ok(args));
}

#[test]
fn a_vmi_that_fits_nowhere_says_why_and_is_placed_once_room_appears() {
    let s = Server::start().unwrap();
    // One node with too little cpu for 12 vCPUs (1.2 cpus at the default ratio of 10), two that already run
    // a VMI the new one must not share a host with.
    fake_node(&s, "small", "1", "8Gi");
    fake_node(&s, "b", "4", "8Gi");
    fake_node(&s, "c", "4", "8Gi");
    let _alive = Heartbeats::start(&s, &["small", "b", "c"]);
    s.apply(&web_vmi("web-b", "b")).unwrap();
    s.apply(&web_vmi("web-c", "c")).unwrap();
    for (vmi, node) in [("web-b", "b"), ("web-c", "c")] {
        wait_for(&s, "web VMIs bound", &["get", "vmi", vmi, "-o", "jsonpath={.status.nodeName}"], node);
    }
    s.apply(BIG_VM).unwrap();
    let cond = |field: &str| format!("jsonpath={{.status.conditions[?(@.type==\"PodScheduled\")].{field}}}");
    let why = "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match pod anti-affinity rules.";
    wait_for(&s, "unschedulable message", &["get", "vmi", "big", "-o", &cond("message")], why);
    let state = s.kubectl_ok(&["get", "vmi", "big", "-o", &cond("status")]).unwrap();
    let reason = s.kubectl_ok(&["get", "vmi", "big", "-o", &cond("reason")]).unwrap();
    let phase = s.kubectl_ok(&["get", "vmi", "big", "-o", "jsonpath={.status.phase}"]).unwrap();
    assert_eq!((state.as_str(), reason.as_str(), phase.as_str()), ("False", "Unschedulable", "Scheduling"));
    wait_for(&s, "vm status", &["get", "vm", "big", "-o", "jsonpath={.status.printableStatus}"], "ErrorUnschedulable");
    let table = s.kubectl_ok(&["get", "vm", "big"]).unwrap();
    assert!(table.contains("ErrorUnschedulable"), "{table}");
    let labels = s.kubectl_ok(&["get", "vmi", "big", "-o", "jsonpath={.metadata.labels}"]).unwrap();
    assert!(!labels.contains("kubevirt.io/nodeName"), "no node, no node label: {labels}");
    let events = s
        .kubectl_ok(&["get", "events", "--field-selector", "involvedObject.name=big,reason=FailedScheduling"])
        .unwrap();
    assert!(events.contains("Insufficient cpu"), "{events}");

    // The VMI on "b" goes away: the waiting VMI is looked at again and placed there.
    s.kubectl_ok(&["delete", "vmi", "web-b"]).unwrap();
    wait_for(&s, "placed", &["get", "vmi", "big", "-o", "jsonpath={.status.phase}/{.status.nodeName}"], "Scheduled/b");
    wait_for(&s, "condition", &["get", "vmi", "big", "-o", &cond("status")], "True");
    let on_b = ["get", "vmi", "-l", "kubevirt.io/nodeName=b", "-o", "jsonpath={.items[*].metadata.name}"];
    wait_for(&s, "label", &on_b, "big");
    wait_for(&s, "vm status", &["get", "vm", "big", "-o", "jsonpath={.status.printableStatus}"], "Starting");
}
