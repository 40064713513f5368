//! Node IPAM in the real `kumo server`: every Node gets its own block of `--cluster-cidr` as spec.podCIDR, a
//! block is never given twice (also when Nodes arrive together), a full cluster CIDR says so, and a deleted
//! Node's block is given out again.

use kumo_e2e::{eventually, kumo_bin, Server};
use std::collections::BTreeMap;
use std::time::Duration;

fn node_yaml(names: &[&str]) -> String {
    names.iter().map(|n| format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {n}}}\n---\n")).collect()
}

/// name → spec.podCIDR of every Node ("" when it has none).
fn pod_cidrs(s: &Server) -> BTreeMap<String, String> {
    let out = s
        .kubectl_ok(&["get", "nodes", "-o", r#"jsonpath={range .items[*]}{.metadata.name}={.spec.podCIDR}{"\n"}{end}"#])
        .expect("kubectl get nodes");
    out.lines().filter_map(|l| l.split_once('=')).map(|(n, c)| (n.to_string(), c.to_string())).collect()
}

fn wait_all_assigned(s: &Server, count: usize) -> BTreeMap<String, String> {
    let got = eventually(Duration::from_secs(20), || {
        let m = pod_cidrs(s);
        (m.len() == count && m.values().all(|c| !c.is_empty())).then_some(m)
    });
    got.unwrap_or_else(|| panic!("not every Node got a pod CIDR: {:?}\n{}", pod_cidrs(s), s.log()))
}

#[test]
fn every_node_gets_its_own_block_and_blocks_are_reused_after_deletion() {
    let s = Server::start_with(&["--cluster-cidr", "10.77.0.0/22"]).unwrap();
    // Four Nodes at once, as hosts joining together: four different /24s of the /22.
    s.apply(&node_yaml(&["n1", "n2", "n3", "n4"])).unwrap();
    let m = wait_all_assigned(&s, 4);
    let mut blocks: Vec<&String> = m.values().collect();
    blocks.sort();
    assert_eq!(blocks, ["10.77.0.0/24", "10.77.1.0/24", "10.77.2.0/24", "10.77.3.0/24"], "{m:?}");
    let list = s.kubectl_ok(&["get", "node", "n1", "-o", "jsonpath={.spec.podCIDRs}"]).unwrap();
    assert_eq!(list, format!(r#"["{}"]"#, m["n1"]), "spec.podCIDRs matches spec.podCIDR");

    // A fifth does not fit, and the Node's events say why.
    s.apply(&node_yaml(&["n5"])).unwrap();
    let why = eventually(Duration::from_secs(20), || {
        let ev = s.kubectl_ok(&["get", "events", "-A", "--field-selector", "reason=CIDRNotAvailable"]).ok()?;
        ev.contains("n5").then_some(ev)
    });
    assert!(why.is_some_and(|e| e.contains("no free /24 left")), "no CIDRNotAvailable event\n{}", s.log());
    assert_eq!(pod_cidrs(&s)["n5"], "");

    // n2 leaves: its block is free again, and the waiting Node gets it.
    let freed = m["n2"].clone();
    s.kubectl_ok(&["delete", "node", "n2"]).unwrap();
    let m = wait_all_assigned(&s, 4);
    assert_eq!(m["n5"], freed, "{m:?}");
    // Existing Nodes kept theirs.
    for n in ["n1", "n3", "n4"] {
        assert_ne!(m[n], freed);
    }
}

#[test]
fn a_cluster_cidr_with_host_bits_is_refused() {
    let out = std::process::Command::new(kumo_bin())
        .args(["controllers", "--cluster-cidr", "10.77.1.0/16", "--kubeconfig", "/nonexistent"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("host bits are set"), "{err}");
    let out = std::process::Command::new(kumo_bin())
        .args(["controllers", "--cluster-cidr", "10.77.0.0/16", "--node-cidr-mask-size", "12"])
        .args(["--kubeconfig", "/nonexistent"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--node-cidr-mask-size"), "{err}");
}

/// Patches that name no resourceVersion never fail on a concurrent write (the server re-applies them to the
/// newer object, as Kubernetes does): an agent registering its Node while the allocator writes spec.podCIDR
/// must not get a 409. Ones that name a stale resourceVersion do.
#[test]
fn patches_without_a_resource_version_do_not_conflict() {
    use k8s_openapi::api::core::v1::Node;
    use kube::api::{Api, Patch, PatchParams};
    let s = Server::start_with(&["--no-controllers"]).unwrap();
    s.apply(&node_yaml(&["busy"])).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let nodes: Api<Node> = Api::all(s.client().await.unwrap());
        let writes = (0..24).map(|i| {
            let nodes = nodes.clone();
            async move {
                let label = serde_json::json!({"metadata": {"labels": {format!("l{i}"): "x"}}});
                let status = serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "busy"},
                    "status": {"capacity": {format!("example.com/r{i}"): "1"}}});
                let pp = PatchParams::apply(&format!("manager-{i}")).force();
                if i % 2 == 0 {
                    nodes.patch("busy", &PatchParams::default(), &Patch::Merge(label)).await.map(drop)
                } else {
                    nodes.patch_status("busy", &pp, &Patch::Apply(status)).await.map(drop)
                }
            }
        });
        for (i, r) in futures::future::join_all(writes).await.into_iter().enumerate() {
            assert!(r.is_ok(), "write {i}: {r:?}");
        }
        let node = nodes.get("busy").await.unwrap();
        assert_eq!(node.metadata.labels.unwrap().len(), 12);
        assert_eq!(node.status.unwrap().capacity.unwrap().len(), 12);
        // A stale precondition still conflicts.
        let stale = serde_json::json!({"metadata": {"resourceVersion": "1", "labels": {"late": "x"}}});
        let err = nodes.patch("busy", &PatchParams::default(), &Patch::Merge(stale)).await.unwrap_err();
        assert!(matches!(err, kube::Error::Api(ref e) if e.code == 409), "{err}");
    });
}
