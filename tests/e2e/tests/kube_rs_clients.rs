//! kube-rs against the real server: a reflector stays in sync across a server restart and across compaction
//! (the watch resumes with a 410, the watcher relists); acknowledged writes survive SIGKILL.

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kumo_e2e::Server;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "data": {"k": "v"}})).unwrap()
}

/// Polls the reflector stream until `done` holds for the store, counting relists (Init events).
async fn drive<S>(
    stream: &mut S,
    reader: &reflector::Store<ConfigMap>,
    inits: &mut usize,
    done: impl Fn(&BTreeSet<String>, usize) -> bool,
) -> BTreeSet<String>
where
    S: Stream<Item = Result<watcher::Event<ConfigMap>, watcher::Error>> + Unpin,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let names: BTreeSet<String> = reader.state().iter().filter_map(|c| c.metadata.name.clone()).collect();
        if done(&names, *inits) {
            return names;
        }
        assert!(Instant::now() < deadline, "reflector never converged: {names:?}, inits={inits}");
        match tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
            Ok(Some(Ok(watcher::Event::Init))) => *inits += 1,
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => panic!("watch stream ended"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_follows_restart_and_relists_after_compaction() {
    let mut s = Server::start_with(&["--compaction-interval", "1s"]).unwrap();
    let api: Api<ConfigMap> = Api::namespaced(s.client().await.unwrap(), "default");
    for n in ["a0", "a1", "a2"] {
        api.create(&PostParams::default(), &cm(n)).await.unwrap();
    }
    let (reader, writer) = reflector::store();
    let mut stream = Box::pin(reflector(writer, watcher(api.clone(), watcher::Config::default())).default_backoff());
    let mut inits = 0;
    drive(&mut stream, &reader, &mut inits, |n, _| n.len() == 3).await;
    assert_eq!(inits, 1);

    // Restart the server while the watch is open; change things while the watcher is not being polled, and
    // wait for compaction to pass the watcher's resourceVersion.
    s.restart().unwrap();
    let api2: Api<ConfigMap> = Api::namespaced(s.client().await.unwrap(), "default");
    for n in ["a3", "a4", "a5"] {
        api2.create(&PostParams::default(), &cm(n)).await.unwrap();
    }
    api2.delete("a0", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    // A further write gives compaction something newer than the watcher's version to keep.
    api2.create(&PostParams::default(), &cm("a6")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let want: BTreeSet<String> = ["a1", "a2", "a3", "a4", "a5", "a6"].iter().map(|s| s.to_string()).collect();
    let got = drive(&mut stream, &reader, &mut inits, |n, i| *n == want && i >= 2).await;
    assert_eq!(got, want);
    assert!(inits >= 2, "the watcher relisted after 410 Gone");
    assert!(s.log().contains("listening"), "server still up");

    // Live changes keep flowing after the relist.
    api2.create(&PostParams::default(), &cm("a7")).await.unwrap();
    drive(&mut stream, &reader, &mut inits, |n, _| n.contains("a7")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_compacted_version_is_410() {
    let s = Server::start_with(&["--compaction-interval", "1s", "--watch-cache-size", "5"]).unwrap();
    let api: Api<ConfigMap> = Api::namespaced(s.client().await.unwrap(), "default");
    let first = api.create(&PostParams::default(), &cm("x0")).await.unwrap();
    let old_rv = first.metadata.resource_version.clone().unwrap();
    for i in 1..20 {
        api.create(&PostParams::default(), &cm(&format!("x{i}"))).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    api.create(&PostParams::default(), &cm("late")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut w = api.watch(&kube::api::WatchParams::default(), &old_rv).await.unwrap().boxed();
    match tokio::time::timeout(Duration::from_secs(10), w.next()).await.unwrap() {
        Some(Ok(kube::api::WatchEvent::Error(e))) => assert_eq!(e.code, 410, "{e:?}"),
        Some(Err(kube::Error::Api(e))) => assert_eq!(e.code, 410, "{e:?}"),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
    // An Exact list at the compacted version is also 410.
    let lp = kube::api::ListParams::default().at(&old_rv).matching(kube::api::VersionMatch::Exact);
    match api.list(&lp).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
}

/// A paged list is one snapshot, served from the watch cache: the pages after the first show the objects as
/// they were at the first page's resourceVersion, whatever changed since, even once the store has compacted
/// that revision (read from the store, such a page is 410 Gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paged_list_is_one_snapshot_from_the_cache() {
    let s = Server::start_with(&["--compaction-interval", "1s"]).unwrap();
    let api: Api<ConfigMap> = Api::namespaced(s.client().await.unwrap(), "default");
    let names: Vec<String> = (0..7).map(|i| format!("p{i}")).collect();
    for n in &names {
        api.create(&PostParams::default(), &cm(n)).await.unwrap();
    }
    let first = api.list(&kube::api::ListParams::default().limit(3)).await.unwrap();
    let rv = first.metadata.resource_version.clone().expect("a list has a resourceVersion");
    assert_eq!(first.metadata.remaining_item_count, Some(4), "{:?}", first.metadata);
    let mut seen: Vec<String> = first.items.iter().filter_map(|c| c.metadata.name.clone()).collect();
    // Changes after the first page, then time for compaction to pass its revision.
    api.delete("p5", &DeleteParams::default()).await.unwrap();
    api.create(&PostParams::default(), &cm("p3a")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    api.create(&PostParams::default(), &cm("late")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut token = first.metadata.continue_.clone();
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        let page = api.list(&kube::api::ListParams::default().limit(3).continue_token(&t)).await.unwrap();
        assert_eq!(page.metadata.resource_version.as_deref(), Some(rv.as_str()), "every page is at the first's");
        seen.extend(page.items.iter().filter_map(|c| c.metadata.name.clone()));
        token = page.metadata.continue_.clone();
    }
    assert_eq!(seen, names, "the pages are the objects as of the first page");
    // A new list sees the changes.
    let now: Vec<String> =
        api.list(&Default::default()).await.unwrap().items.into_iter().filter_map(|c| c.metadata.name).collect();
    assert!(now.contains(&"p3a".to_string()) && !now.contains(&"p5".to_string()), "{now:?}");
}

/// Writers racing on one object: read-modify-write replaces (retried on 409) and merge patches. Writes start
/// from the watch cache's copy, which may lag; every increment and every patched key must still land once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_lose_no_update() {
    let s = Server::start().unwrap();
    let api: Api<ConfigMap> = Api::namespaced(s.client().await.unwrap(), "default");
    let mut counter = cm("counter");
    counter.data = Some([("n".to_string(), "0".to_string())].into());
    api.create(&PostParams::default(), &counter).await.unwrap();
    let (writers, rounds) = (6, 20);
    let conflicts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (api, conflicts) = (api.clone(), conflicts.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..rounds {
                loop {
                    let mut c = api.get("counter").await.expect("get counter");
                    let data = c.data.get_or_insert_with(Default::default);
                    let n: u64 = data["n"].parse().unwrap();
                    data.insert("n".into(), (n + 1).to_string());
                    match api.replace("counter", &PostParams::default(), &c).await {
                        Ok(_) => break,
                        Err(kube::Error::Api(e)) if e.code == 409 => {
                            conflicts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(e) => panic!("replace: {e}"),
                    }
                }
                let patch = serde_json::json!({"data": {format!("w{w}-{i}"): "x"}});
                api.patch("counter", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
                    .await
                    .expect("merge patch");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let c = api.get("counter").await.unwrap();
    let data = c.data.unwrap();
    assert_eq!(data["n"], (writers * rounds).to_string(), "an acknowledged increment was lost");
    let patched = data.keys().filter(|k| k.starts_with('w')).count();
    assert_eq!(patched, writers * rounds, "an acknowledged patch was lost");
    assert!(conflicts.load(std::sync::atomic::Ordering::Relaxed) > 0, "the writers never raced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let mut s = Server::start().unwrap();
    let api: Api<ConfigMap> = Api::namespaced(s.client().await.unwrap(), "default");
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String, String)>::new()));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (api, acked) = (api.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                match api.create(&PostParams::default(), &cm(&format!("w{w}-{i}"))).await {
                    Ok(c) => acked.lock().unwrap().push((
                        c.metadata.name.unwrap(),
                        c.metadata.uid.unwrap(),
                        c.metadata.resource_version.unwrap(),
                    )),
                    Err(_) => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.kill();
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 50, "writes were flowing: {}", acked.len());
    s.restart().unwrap();
    let api: Api<ConfigMap> = Api::namespaced(s.client().await.unwrap(), "default");
    let mut max_rv = 0i64;
    for (name, uid, rv) in &acked {
        let got = api.get(name).await.unwrap_or_else(|e| panic!("acknowledged {name} lost: {e}"));
        assert_eq!(got.metadata.uid.as_ref(), Some(uid));
        assert_eq!(got.metadata.resource_version.as_ref(), Some(rv));
        max_rv = max_rv.max(rv.parse().unwrap());
    }
    let next = api.create(&PostParams::default(), &cm("after-restart")).await.unwrap();
    let next_rv: i64 = next.metadata.resource_version.unwrap().parse().unwrap();
    assert!(next_rv > max_rv, "revisions keep increasing: {next_rv} > {max_rv}");
    // The embedded store walked its file after the kill, and said so (on etcd, CI's etcd pass, it has none).
    let log = s.log();
    if std::env::var("KUMO_E2E_STORE").as_deref() != Ok("etcd") {
        assert!(log.contains("repairing") && log.contains("opened the store"), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_list_and_bookmarks() {
    let s = Server::start_with(&["--bookmark-interval", "1s"]).unwrap();
    let api: Api<ConfigMap> = Api::namespaced(s.client().await.unwrap(), "default");
    for n in ["s0", "s1"] {
        api.create(&PostParams::default(), &cm(n)).await.unwrap();
    }
    // sendInitialEvents: the watcher gets the current state from the watch itself, ended by a bookmark.
    let (reader, writer) = reflector::store();
    let mut stream = Box::pin(
        reflector(writer, watcher(api.clone(), watcher::Config::default().streaming_lists())).default_backoff(),
    );
    let mut inits = 0;
    drive(&mut stream, &reader, &mut inits, |n, _| n.len() == 2).await;
    api.create(&PostParams::default(), &cm("s2")).await.unwrap();
    drive(&mut stream, &reader, &mut inits, |n, _| n.len() == 3).await;

    // A plain watch with bookmarks gets one while idle, carrying a resourceVersion it can resume from.
    let rv = api.list(&Default::default()).await.unwrap().metadata.resource_version.unwrap();
    let mut w = api.watch(&kube::api::WatchParams::default().timeout(10), &rv).await.unwrap().boxed();
    let ev = tokio::time::timeout(Duration::from_secs(8), w.next()).await.expect("bookmark within the interval");
    match ev {
        Some(Ok(kube::api::WatchEvent::Bookmark(b))) => {
            let brv: i64 = b.metadata.resource_version.parse().unwrap();
            assert!(brv >= rv.parse::<i64>().unwrap());
        }
        other => panic!("expected a bookmark, got {other:?}"),
    }
}
