//! The embedded store under faults, through the real server: a full disk (507, /readyz unready, recovery
//! without a restart, nothing lost or invented), failing fsyncs (the same, with watchers kept in step with the
//! store), a garbled value (reported by key, never served), and a damaged file structure (the server refuses
//! to start and says how to restore). Needs root (tmpfs mount) and gcc (the fsync-failing shim).

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use kumo_e2e::{eventually, kumo_cli, Server};
use kumo_store::conformance::SmallFs;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn cm(name: &str, bytes: usize, marker: &str) -> ConfigMap {
    let filler = "x".repeat(bytes);
    serde_json::from_value(
        serde_json::json!({"metadata": {"name": name}, "data": {"marker": marker, "filler": filler}}),
    )
    .unwrap()
}

/// `/readyz?verbose` as kubectl shows it: (ready, text).
fn readyz(s: &Server) -> (bool, String) {
    let out = s.kubectl(&["get", "--raw", "/readyz?verbose"]).unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_with_507_and_recovers_without_a_restart() {
    // Only the store file lives on the small filesystem (the symlink), so logs and keys are not starved.
    let fs = SmallFs::mount(24);
    let filler = fs.path().join("filler");
    let store_file = fs.path().join("kumo.redb");
    let s = Server::start_prepared("127.0.0.1", &["--no-agent"], |dir| {
        std::os::unix::fs::symlink(&store_file, dir.join("kumo.redb"))?;
        Ok(())
    })
    .unwrap();
    std::fs::write(&filler, vec![0u8; 8 << 20]).unwrap();
    let api: Api<ConfigMap> = Api::namespaced(s.client().await.unwrap(), "default");
    let mut acked = vec![];
    let mut refusal = None;
    for i in 0..2000 {
        let name = format!("big-{i:04}");
        match api.create(&PostParams::default(), &cm(&name, 64 << 10, &name)).await {
            Ok(_) => acked.push(name),
            Err(kube::Error::Api(e)) => {
                refusal = Some((name, e));
                break;
            }
            Err(e) => panic!("create {name}: {e}"),
        }
    }
    let (refused, e) = refusal.expect("the disk filled up");
    assert_eq!((e.code, e.reason.as_str()), (507, "InsufficientStorage"), "{e:?}");
    assert!(e.message.contains("disk is full"), "{}", e.message);
    assert!(acked.len() > 10, "writes went in first: {}", acked.len());
    let (ready, text) = readyz(&s);
    assert!(!ready && text.contains("[-]store-writes failed"), "readyz while writes fail: {text}");
    // Reads go on; the server and its process keep running.
    assert_eq!(api.get(&acked[0]).await.unwrap().data.unwrap()["marker"], acked[0]);
    assert!(s.pid().is_some());

    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut back = None;
    while back.is_none() && Instant::now() < deadline {
        match api.create(&PostParams::default(), &cm("after", 10, "after")).await {
            Ok(c) => back = Some(c),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
    assert!(back.is_some(), "writes came back once space was freed, without a restart");
    assert!(readyz(&s).0, "ready again: {}", readyz(&s).1);
    let names: Vec<String> =
        api.list(&Default::default()).await.unwrap().items.into_iter().filter_map(|c| c.metadata.name).collect();
    for name in &acked {
        assert!(names.contains(name), "acknowledged {name} lost");
    }
    assert!(!names.contains(&refused), "the refused write {refused} appeared");
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

/// Builds the preload library that makes the store file's fsyncs fail while a flag file exists.
fn failsync_lib(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/failsync.c");
    let lib = dir.join("failsync.so");
    let out = std::process::Command::new("gcc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg("-ldl")
        .output()
        .expect("gcc builds the fsync-failing shim this test preloads: install gcc");
    assert!(out.status.success(), "gcc {}: {}", src.display(), String::from_utf8_lossy(&out.stderr));
    lib
}

/// Waits (without blocking the runtime) until `f` holds; fails saying `what` after `timeout`.
async fn until(what: &str, timeout: Duration, f: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a writer heard back for one create.
#[derive(Default)]
struct Heard {
    acked: BTreeSet<String>,
    /// 503: refused, not applied.
    refused: BTreeSet<String>,
    /// 504: the disk failed while storing it; it may have been stored.
    unknown: BTreeSet<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_fsyncs_refuse_writes_and_recover_with_watchers_in_step() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = failsync_lib(tmp.path());
    let flag = tmp.path().join("fail-sync");
    let env = [("LD_PRELOAD", lib.to_str().unwrap()), ("KUMO_FAIL_SYNC_IF", flag.to_str().unwrap())];
    let s = Server::start_custom("127.0.0.1", &["--no-agent"], &env, |_| Ok(())).unwrap();
    let api: Api<ConfigMap> = Api::namespaced(s.client_without_retries().await.unwrap(), "default");

    // A watch from before the faults: at the end it must have seen exactly what the store holds.
    let from = api.list(&Default::default()).await.unwrap().metadata.resource_version.unwrap();
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let mut stream = api.watch(&WatchParams::default().timeout(290), &from).await.unwrap().boxed();
    let watch = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(ev) = stream.try_next().await.expect("the watch stream stays up") {
                match ev {
                    WatchEvent::Added(c) => seen.lock().unwrap().insert(c.metadata.name.unwrap()),
                    WatchEvent::Error(e) => panic!("watch error: {e:?}"),
                    _ => true,
                };
            }
        })
    };

    let heard = Arc::new(Mutex::new(Heard::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (api, heard, stop) = (api.clone(), heard.clone(), stop.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let name = format!("w{w}-{i:05}");
                    let r = api.create(&PostParams::default(), &cm(&name, 100, &name)).await;
                    {
                        let mut h = heard.lock().unwrap();
                        match r {
                            Ok(_) => h.acked.insert(name),
                            Err(kube::Error::Api(e)) if e.code == 503 => h.refused.insert(name),
                            Err(kube::Error::Api(e)) if e.code == 504 => h.unknown.insert(name),
                            Err(e) => panic!("create {name}: {e}"),
                        };
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    let count = |f: fn(&Heard) -> usize| f(&heard.lock().unwrap());
    until("writes to go in", Duration::from_secs(20), || count(|h| h.acked.len()) >= 20).await;

    std::fs::write(&flag, b"").unwrap();
    until("writes to be refused", Duration::from_secs(20), || count(|h| h.refused.len()) >= 10).await;
    let (ready, text) = readyz(&s);
    assert!(!ready && text.contains("[-]store-writes failed"), "readyz while fsyncs fail: {text}");
    // Long enough for opening the file for writing to fail again: reads are then served from it opened for
    // reads only.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(s.log().contains("opening the store again for writes failed"), "{}", s.log());
    let first = heard.lock().unwrap().acked.first().cloned().unwrap();
    assert_eq!(api.get(&first).await.unwrap().data.unwrap()["marker"], first, "reads go on");
    assert!(!readyz(&s).0, "still unready while fsyncs fail");

    std::fs::remove_file(&flag).unwrap();
    let acked_before = count(|h| h.acked.len());
    until("writes to work again", Duration::from_secs(30), || count(|h| h.acked.len()) > acked_before + 20).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(readyz(&s).0, "ready again: {}", readyz(&s).1);

    let stored: BTreeSet<String> =
        api.list(&Default::default()).await.unwrap().items.into_iter().filter_map(|c| c.metadata.name).collect();
    let h = std::mem::take(&mut *heard.lock().unwrap());
    assert!(h.acked.is_subset(&stored), "acknowledged writes lost: {:?}", h.acked.difference(&stored));
    let appeared: Vec<_> = h.refused.intersection(&stored).collect();
    assert!(appeared.is_empty(), "refused writes appeared: {appeared:?}");
    // A commit whose fsync failed may still be in the file when it is opened again (redb wrote it, the disk
    // did not confirm it): its writers heard 504, and it must then be whole and watched like any other.
    let unexplained: Vec<_> = stored.iter().filter(|n| !h.acked.contains(*n) && !h.unknown.contains(*n)).collect();
    assert!(unexplained.is_empty(), "stored without being acknowledged or reported unknown: {unexplained:?}");
    // The watch saw every stored object: a commit that failed yet reached the file was published too.
    api.create(&PostParams::default(), &cm("last", 10, "last")).await.unwrap();
    until("the watch to catch up", Duration::from_secs(10), || seen.lock().unwrap().contains("last")).await;
    let mut watched = seen.lock().unwrap().clone();
    watched.remove("last");
    assert_eq!(watched, stored, "what the watch saw is what the store holds");
    eprintln!("acked {}, refused {}, outcome unknown {}", h.acked.len(), h.refused.len(), h.unknown.len());
    watch.abort();
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

/// Flips a bit in every copy of `marker` in the store file (the current value and its history row).
fn garble_value(file: &Path, marker: &str) {
    let mut data = std::fs::read(file).unwrap();
    let mut hits = 0;
    let mut i = 0;
    while let Some(at) = data[i..].windows(marker.len()).position(|w| w == marker.as_bytes()) {
        data[i + at + marker.len() - 1] ^= 0x01;
        hits += 1;
        i += at + marker.len();
    }
    assert!(hits > 0, "{marker} is in the store file");
    std::fs::write(file, data).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbled_value_is_reported_by_key_and_never_served() {
    let mut s = Server::start().unwrap();
    let api: Api<ConfigMap> = Api::namespaced(s.client().await.unwrap(), "default");
    api.create(&PostParams::default(), &cm("victim", 100, "victim-marker-31337")).await.unwrap();
    api.create(&PostParams::default(), &cm("bystander", 100, "bystander")).await.unwrap();
    s.stop().unwrap();
    let file: PathBuf = s.data_dir().join("kumo.redb");
    garble_value(&file, "victim-marker-31337");

    let dir = s.data_dir().display().to_string();
    let (ok, out) = kumo_cli(&["store", "check", "--data-dir", &dir]);
    assert!(!ok && out.contains("/registry/core/configmaps/default/victim"), "store check names the key: {out}");

    s.start_again().unwrap();
    let err = api.get("victim").await.expect_err("a corrupt value must not be served");
    match err {
        kube::Error::Api(e) => {
            assert_eq!(e.code, 500);
            assert!(e.message.contains("configmaps/default/victim") && e.message.contains("corrupt"), "{}", e.message);
        }
        other => panic!("expected a 500 naming the key, got {other}"),
    }
    assert_eq!(api.get("bystander").await.unwrap().data.unwrap()["marker"], "bystander");
    let event = eventually(Duration::from_secs(30), || {
        let out = s
            .kubectl_ok(&[
                "get",
                "events",
                "--field-selector",
                "reason=StorageCorruption",
                "-o",
                "jsonpath={.items[*].involvedObject.name}",
            ])
            .unwrap();
        out.contains("victim").then_some(out)
    });
    assert!(event.is_some(), "an event reports the corrupt object");
    assert!(s.log().contains("corrupt value in the store"), "a log line reports it");
}

#[test]
fn a_damaged_structure_stops_the_server_with_what_to_do() {
    let mut s = Server::start().unwrap();
    // Enough objects for the tables to span many pages.
    let items: String = (0..300)
        .map(|i| format!("{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"c{i}\"}},\"data\":{{\"k\":\"{}\"}}}}\n", "v".repeat(2000)))
        .collect();
    let out = s.kubectl_stdin(&["apply", "-f", "-"], &items).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    s.stop().unwrap();
    let file = s.data_dir().join("kumo.redb");
    let mut data = std::fs::read(&file).unwrap();
    // The page headers of the middle half of the file: branch and leaf pages alike.
    let (from, to) = (data.len() / 4 / 4096, data.len() * 3 / 4 / 4096);
    for page in from..to {
        for b in &mut data[page * 4096..page * 4096 + 32] {
            *b ^= 0xA5;
        }
    }
    std::fs::write(&file, data).unwrap();

    let started = Instant::now();
    let err = s.start_again().expect_err("a store whose structure is damaged must not be served");
    let text = err.to_string();
    assert!(text.contains("exited with"), "the server exits (non-zero): {text}");
    assert!(text.contains("cannot be used") && text.contains("kumo store snapshot restore"), "{text}");
    assert!(!text.contains("panicked"), "no panic: {text}");
    assert!(started.elapsed() < Duration::from_secs(30));
    let (ok, out) = kumo_cli(&["store", "check", "--data-dir", &s.data_dir().display().to_string()]);
    assert!(!ok, "store check finds the damage: {out}");
}
