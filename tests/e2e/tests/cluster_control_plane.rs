//! The HA control plane: two `kumo server` replicas on a three-member etcd cluster serve one cluster (one
//! kubeconfig, writes through one seen by watches on the other); killing the leader hands the singletons (GC,
//! controllers) to the other within 15 s while clients keep working; killing an etcd member in the middle of
//! a stream of writes loses no acknowledged write.

use anyhow::{bail, Result};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kumo_e2e::cluster::{replica, EtcdCluster, Underlay};
use kumo_e2e::{eventually, Server};
use std::time::{Duration, Instant};

const REGISTRY: &str = "127.0.0.1:5000";

fn holder(s: &Server, lease: &str) -> Result<String> {
    s.kubectl_ok(&["-n", "kube-system", "get", "lease", lease, "-o", "jsonpath={.spec.holderIdentity}"])
}

use kumo_e2e::cluster::server_id;

/// kubectl against `s` with another replica's kubeconfig (the same credentials serve every replica).
fn kubectl_via(kubeconfig: &std::path::Path, s: &Server, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .arg("--server")
        .arg(s.url())
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!("kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cm(name: &str) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.into());
    c.data = Some([("n".to_string(), name.to_string())].into());
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_serve_one_cluster_through_leader_and_etcd_member_loss() -> Result<()> {
    let mut etcd = EtcdCluster::start(3)?;
    let u = Underlay::create(REGISTRY)?;
    let a = replica(&u, &etcd, None, &[])?;
    let b = replica(&u, &etcd, Some(&a), &[])?;
    let kc = a.kubeconfig();

    // One kubeconfig for both; a write through A is seen by a watch on B.
    assert!(kubectl_via(&kc, &b, &["get", "ns", "default", "-o", "name"])?.contains("namespace/default"));
    let mut watch = std::process::Command::new("kubectl")
        .env("KUBECONFIG", &kc)
        .args(["--server", &b.url(), "get", "configmaps", "-w", "-o", "name"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(1));
    a.kubectl_ok(&["create", "configmap", "through-a", "--from-literal=k=v"])?;
    let mut out = watch.stdout.take().expect("stdout");
    let seen = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(&mut out).lines().map_while(Result::ok).any(|l| l.contains("through-a"))
    });
    let seen = tokio::time::timeout(Duration::from_secs(15), seen).await;
    let _ = watch.kill();
    assert!(matches!(seen, Ok(Ok(true))), "B's watch must see A's write");

    // Both singletons run on one replica; kill it and the other takes both over within 15 s.
    let leases = ["kumo-gc", "kumo-controllers"];
    let on = |s: &Server, l: &str| holder(s, l).expect("reading the Lease").ends_with(&server_id(s));
    let elected = eventually(Duration::from_secs(20), || {
        let h = holder(&b, "kumo-gc").ok()?;
        (!h.is_empty()).then_some(h)
    });
    assert!(elected.is_some(), "nobody was elected");
    let (mut leader, follower) = if on(&a, "kumo-gc") { (a, b) } else { (b, a) };
    let killed = Instant::now();
    leader.kill();
    let took = eventually(Duration::from_secs(30), || {
        leases
            .iter()
            .all(|l| holder(&follower, l).is_ok_and(|h| h.ends_with(&server_id(&follower))))
            .then(|| killed.elapsed())
    });
    let took = took.expect("the surviving replica never took the leases over");
    eprintln!("leader failover took {took:?}");
    assert!(took <= Duration::from_secs(15), "failover took {took:?}");
    // The garbage collector now runs on the survivor: a dependent of a deleted owner goes away.
    let kc_follower = follower.kubeconfig();
    let owner_uid = {
        follower.kubectl_ok(&["create", "configmap", "owner"])?;
        follower.kubectl_ok(&["get", "configmap", "owner", "-o", "jsonpath={.metadata.uid}"])?
    };
    let dependent = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"dependent","ownerReferences":[{{"apiVersion":"v1","kind":"ConfigMap","name":"owner","uid":"{owner_uid}"}}]}}}}"#
    );
    follower.kubectl_stdin(&["create", "-f", "-"], &dependent)?;
    follower.kubectl_ok(&["delete", "configmap", "owner"])?;
    let collected = eventually(Duration::from_secs(20), || {
        follower.kubectl(&["get", "configmap", "dependent"]).ok().filter(|o| !o.status.success()).map(|_| ())
    });
    assert!(collected.is_some(), "the new leader's GC must collect the dependent");
    drop(leader);

    // A stream of writes through the survivor; an etcd member dies in the middle. Every acknowledged write
    // must be there afterwards (failed ones may or may not be).
    let client = follower.client().await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let writer = {
        let cms = cms.clone();
        tokio::spawn(async move {
            let mut acked = vec![];
            let mut failed = 0;
            let start = Instant::now();
            let mut i = 0;
            while start.elapsed() < Duration::from_secs(12) {
                let name = format!("w-{i:05}");
                match cms.create(&PostParams::default(), &cm(&name)).await {
                    Ok(_) => acked.push(name),
                    Err(_) => failed += 1,
                }
                i += 1;
            }
            (acked, failed)
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The Raft leader, so an election happens under the writes.
    let victim = etcd.leader().expect("etcd has a leader");
    etcd.kill(victim);
    let (acked, failed) = writer.await?;
    eprintln!("{} writes acknowledged, {failed} failed while an etcd member was down", acked.len());
    assert!(acked.len() > 20, "writes must go on with two of three members");
    let stored: std::collections::HashSet<String> =
        cms.list(&ListParams::default()).await?.items.into_iter().filter_map(|c| c.metadata.name).collect();
    let lost: Vec<&String> = acked.iter().filter(|n| !stored.contains(*n)).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    etcd.restart(victim)?;
    // The cluster keeps working with the member back.
    cms.delete("through-a", &DeleteParams::default()).await?;
    kubectl_via(&kc_follower, &follower, &["get", "configmaps", "-o", "name"])?;
    Ok(())
}
