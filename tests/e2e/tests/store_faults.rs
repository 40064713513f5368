//! The embedded store under faults, through the real server: a full disk (507, /readyz unready, recovery
//! without a restart, nothing lost or invented), a garbled value (reported by key, never served), and a
//! damaged file structure (the server refuses to start and says how to restore). Needs root (tmpfs mount).

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use kumo_e2e::{eventually, kumo_cli, Server};
use kumo_store::conformance::SmallFs;
use std::path::{Path, PathBuf};
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
