//! Snapshots of the embedded store through the real server: saved while 8 writers run, restored into a new
//! data directory and started, they hold exactly the writes acknowledged up to their revision, with the same
//! uids and resourceVersions; older watches get 410; a damaged snapshot file is refused at restore.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use kumo_e2e::cluster::EtcdCluster;
use kumo_e2e::{kumo_cli, Server};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "data": {"k": name}})).unwrap()
}

/// `kumo store snapshot restore FILE --data-dir DIR EXTRA…`, which must succeed.
fn restore(file: &std::path::Path, dir: &std::path::Path, extra: &[&str]) -> anyhow::Result<()> {
    let (file, dir) = (file.display().to_string(), dir.display().to_string());
    let mut args = vec!["store", "snapshot", "restore", &file, "--data-dir", &dir];
    args.extend_from_slice(extra);
    let (ok, out) = kumo_cli(&args);
    anyhow::ensure!(ok, "restore: {out}");
    Ok(())
}

/// What a snapshot saved while 8 writers ran must hold: name → (uid, resourceVersion) of every create
/// acknowledged, and the snapshot's revision.
struct Saved {
    _dir: tempfile::TempDir,
    file: std::path::PathBuf,
    acked: HashMap<String, (String, i64)>,
    revision: i64,
}

async fn save_under_load(s: &Server) -> Saved {
    let api: Api<ConfigMap> = Api::namespaced(s.client().await.unwrap(), "default");
    let acked = Arc::new(Mutex::new(HashMap::<String, (String, i64)>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = vec![];
    for w in 0..8 {
        let (api, acked, stop) = (api.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = format!("w{w}-{i}");
                let c = api.create(&PostParams::default(), &cm(&name)).await.expect("create");
                let rv = c.metadata.resource_version.unwrap().parse().unwrap();
                acked.lock().unwrap().insert(name, (c.metadata.uid.unwrap(), rv));
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snap");
    let (file_s, kubeconfig) = (file.display().to_string(), s.kubeconfig().display().to_string());
    let (ok, out) = tokio::task::spawn_blocking(move || {
        kumo_cli(&["store", "snapshot", "save", &file_s, "--kubeconfig", &kubeconfig])
    })
    .await
    .unwrap();
    assert!(ok, "snapshot save: {out}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let (ok, status) = kumo_cli(&["store", "snapshot", "status", &file.display().to_string()]);
    assert!(ok, "{status}");
    let revision: i64 = status.lines().find_map(|l| l.strip_prefix("revision ")).unwrap().trim().parse().unwrap();
    Saved { _dir: dir, file, acked, revision }
}

/// The restored server holds exactly the acknowledged creates up to the snapshot's revision, unchanged.
async fn check_restored(restored: &Server, saved: &Saved) -> Api<ConfigMap> {
    let before: Vec<_> = saved.acked.iter().filter(|(_, (_, rv))| *rv <= saved.revision).collect();
    let after = saved.acked.len() - before.len();
    assert!(!before.is_empty() && after > 0, "writes ran on both sides of the snapshot: {} / {after}", before.len());
    let rapi: Api<ConfigMap> = Api::namespaced(restored.client().await.unwrap(), "default");
    let got: HashMap<String, (String, i64)> = rapi
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|c| c.metadata.name.as_deref().is_some_and(|n| n.starts_with('w')))
        .map(|c| {
            (c.metadata.name.unwrap(), (c.metadata.uid.unwrap(), c.metadata.resource_version.unwrap().parse().unwrap()))
        })
        .collect();
    for (name, want) in &before {
        assert_eq!(
            got.get(*name),
            Some(*want),
            "{name}, acknowledged at {} before the snapshot's {}",
            want.1,
            saved.revision
        );
    }
    assert_eq!(got.len(), before.len(), "only writes up to the snapshot's revision are in it");
    // New writes follow on after the snapshot's revision.
    let next = rapi.create(&PostParams::default(), &cm("after-restore")).await.unwrap();
    assert!(next.metadata.resource_version.unwrap().parse::<i64>().unwrap() > saved.revision);
    rapi
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_saved_under_load_restores_exactly_what_was_acknowledged() {
    let s = Server::start_with(&[]).unwrap();
    let saved = save_under_load(&s).await;
    // Restored into a new data directory, with the original's cluster secret, and started.
    let secret = s.data_dir().join("cluster-secret");
    let restored = Server::start_prepared("127.0.0.1", &["--no-agent"], |new_dir| {
        restore(&saved.file, new_dir, &["--cluster-secret-file", &secret.display().to_string()])
    })
    .unwrap();
    let rapi = check_restored(&restored, &saved).await;
    // A watch from before the snapshot must relist.
    let old = saved.acked.values().map(|(_, rv)| *rv).min().unwrap() - 1;
    let mut w = rapi.watch(&WatchParams::default(), &old.to_string()).await.unwrap().boxed();
    match tokio::time::timeout(Duration::from_secs(10), w.try_next()).await.unwrap() {
        Ok(Some(WatchEvent::Error(e))) => assert_eq!(e.code, 410, "{e:?}"),
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 410, "{e:?}"),
        other => panic!("expected 410 for a watch from before the snapshot, got {other:?}"),
    }
    // Shrinking the restored store offline keeps every object as it was.
    let before = rapi.list(&Default::default()).await.unwrap().items;
    let mut restored = restored;
    restored.stop().unwrap();
    let (ok, out) = kumo_cli(&["store", "defrag", "--data-dir", &restored.data_dir().display().to_string()]);
    assert!(ok && out.contains("MiB →"), "kumo store defrag: {out}");
    restored.start_again().unwrap();
    let rapi: Api<ConfigMap> = Api::namespaced(restored.client().await.unwrap(), "default");
    let after = rapi.list(&Default::default()).await.unwrap().items;
    let ids = |l: &[ConfigMap]| {
        l.iter().map(|c| (c.metadata.uid.clone(), c.metadata.resource_version.clone())).collect::<Vec<_>>()
    };
    assert_eq!(ids(&after), ids(&before), "the same objects after defrag");
}

/// On the etcd backend the same commands use etcd's snapshot API (save through the API server) and
/// `etcdctl snapshot restore`; the restored etcd keeps its history, so old watches need no relist there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_etcd_a_snapshot_saved_under_load_restores_exactly_what_was_acknowledged() {
    let etcd = EtcdCluster::start(1).unwrap();
    let s = Server::start_with(&["--etcd-servers", &etcd.endpoints()]).unwrap();
    let saved = save_under_load(&s).await;
    let secret = saved.file.with_file_name("cluster-secret");
    std::fs::copy(s.data_dir().join("cluster-secret"), &secret).unwrap();
    drop(s);
    drop(etcd);
    let restored_etcd = EtcdCluster::start_restored(|data, name, initial, peer| {
        restore(
            &saved.file,
            data,
            &["--", "--name", name, "--initial-cluster", initial, "--initial-advertise-peer-urls", peer],
        )
    })
    .unwrap();
    let restored =
        Server::start_prepared("127.0.0.1", &["--no-agent", "--etcd-servers", &restored_etcd.endpoints()], |dir| {
            std::fs::copy(&secret, dir.join("cluster-secret"))?;
            Ok(())
        });
    let restored = restored.unwrap();
    check_restored(&restored, &saved).await;
}

#[test]
fn a_truncated_or_altered_snapshot_is_refused_at_restore() {
    let s = Server::start().unwrap();
    s.kubectl_ok(&["create", "configmap", "one", "--from-literal=k=v"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snap.kumo");
    let (ok, out) = kumo_cli(&[
        "store",
        "snapshot",
        "save",
        &file.display().to_string(),
        "--kubeconfig",
        &s.kubeconfig().display().to_string(),
    ]);
    assert!(ok, "{out}");
    let data = std::fs::read(&file).unwrap();
    let mut altered = data.clone();
    let mid = altered.len() / 2;
    altered[mid] ^= 0x20;
    for (what, bytes) in [("truncated", data[..data.len() - 10].to_vec()), ("altered", altered)] {
        let bad = dir.path().join(format!("{what}.kumo"));
        std::fs::write(&bad, bytes).unwrap();
        let target = dir.path().join(format!("restore-{what}"));
        let (ok, out) = kumo_cli(&[
            "store",
            "snapshot",
            "restore",
            &bad.display().to_string(),
            "--data-dir",
            &target.display().to_string(),
        ]);
        assert!(!ok, "a {what} snapshot must be refused: {out}");
        assert!(out.contains("snapshot"), "{out}");
        assert!(!target.join("kumo.redb").exists(), "nothing restored from a {what} file");
        let (ok, _) = kumo_cli(&["store", "snapshot", "status", &bad.display().to_string()]);
        assert!(!ok, "status refuses a {what} snapshot");
    }
}

#[test]
fn scheduled_snapshots_are_taken_and_pruned() {
    let s = Server::start_with(&["--snapshot-interval", "1s", "--snapshot-retention", "2"]).unwrap();
    s.kubectl_ok(&["create", "configmap", "sched", "--from-literal=k=v"]).unwrap();
    let dir = s.data_dir().join("snapshots");
    let list = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        // A snapshot being written is a `.part` file until it is checked.
        v.retain(|n| n.ends_with(".kumo"));
        v.sort();
        v
    };
    let first = kumo_e2e::eventually(Duration::from_secs(20), || Some(list()).filter(|l| l.len() == 2));
    let first = first.unwrap_or_else(|| panic!("two snapshots were taken: {:?}\n{}", list(), s.log()));
    // Later ones replace them: never more than the retention, and the oldest go.
    let later = kumo_e2e::eventually(Duration::from_secs(20), || {
        let l = list();
        assert!(l.len() <= 2, "retention exceeded: {l:?}");
        (!l.contains(&first[0]) && l.len() == 2).then_some(l)
    });
    let later = later.unwrap_or_else(|| panic!("old snapshots were pruned: {:?}", list()));
    for name in &later {
        let (ok, out) = kumo_cli(&["store", "snapshot", "status", &dir.join(name).display().to_string()]);
        assert!(ok && out.contains("keys"), "{name}: {out}");
    }
}
