//! Events are kept apart from everything else (their own file on the embedded store) and expire after
//! `--event-ttl`, also across a server killed in between.

use anyhow::Result;
use kumo_e2e::{eventually, Server};
use kumo_store::{RangeRequest, Store};
use std::time::{Duration, Instant};

const EVENTS: &str = "/registry/core/events/";

fn event(name: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Event
metadata: {{name: {name}, namespace: default}}
involvedObject: {{kind: ConfigMap, name: keep, namespace: default, apiVersion: v1}}
reason: Testing
message: expires
type: Normal
"#
    )
}

/// Keys under `prefix` in a (stopped) server's store file.
async fn keys(file: &std::path::Path, prefix: &str) -> Vec<String> {
    let store = kumo_store::RedbStore::open(file).unwrap_or_else(|e| panic!("open {}: {e}", file.display()));
    let r = store.range(RangeRequest { prefix: prefix.into(), ..Default::default() }).await.expect("range");
    r.kvs.into_iter().map(|kv| kv.key).collect()
}

fn event_names(s: &Server) -> String {
    s.kubectl_ok(&["get", "events", "-A", "-o", "jsonpath={.items[*].metadata.name}"])
        .unwrap_or_else(|e| panic!("kubectl get events failed (is the server alive?): {e}"))
}

#[tokio::test]
async fn events_are_stored_apart_and_expire_after_the_ttl_even_across_a_killed_server() -> Result<()> {
    let ttl = Duration::from_secs(8);
    let mut s = Server::start_with(&["--event-ttl", "8s"])?;
    s.kubectl_ok(&["create", "configmap", "keep", "--from-literal=a=b"])?;
    let written = Instant::now();
    s.kubectl_stdin(&["create", "-f", "-"], &event("first"))?;
    s.kubectl_stdin(
        &["create", "-f", "-"],
        "apiVersion: events.k8s.io/v1\nkind: Event\nmetadata: {name: second, namespace: default}\n\
         eventTime: 2026-12-05T00:00:00.000000Z\nreportingController: test\nreportingInstance: test-1\n\
         action: Testing\nreason: Testing\nregarding: {kind: ConfigMap, name: keep, namespace: default}\ntype: Normal\n",
    )?;
    assert_eq!(event_names(&s), "first second");
    // Not in the watch cache, lists of Events read their store, a page at a time as any list.
    let paged = s.kubectl_ok(&["get", "events", "-A", "--chunk-size=1", "-o", "jsonpath={.items[*].metadata.name}"])?;
    assert_eq!(paged, "first second", "kubectl following continue tokens");
    let page: serde_json::Value = serde_json::from_str(&s.kubectl_ok(&["get", "--raw", "/api/v1/events?limit=1"])?)?;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1), "{page}");
    assert!(page["metadata"]["continue"].as_str().is_some_and(|c| !c.is_empty()), "{page}");

    // Killed while they are live: the events are in their own file, none in the main one.
    s.kill();
    let dir = s.data_dir().to_path_buf();
    assert_eq!(keys(&dir.join("events.redb"), EVENTS).await.len(), 2, "both Events in events.redb");
    assert!(keys(&dir.join("kumo.redb"), EVENTS).await.is_empty(), "no Event in the main store");
    assert!(!keys(&dir.join("kumo.redb"), "/registry/core/configmaps/default/keep").await.is_empty());

    // Started again, the deadlines written before the kill still hold.
    s.start_again()?;
    let gone = eventually(Duration::from_secs(40), || event_names(&s).is_empty().then(|| written.elapsed()));
    let gone = gone.unwrap_or_else(|| panic!("events still listed 40 s after an {ttl:?} TTL: {}", event_names(&s)));
    assert!(gone >= ttl, "events went after {gone:?}, before their TTL");
    assert!(s.kubectl_ok(&["get", "configmap", "keep"]).is_ok(), "everything else stays");

    // An Event written again lives a TTL from its last write.
    s.kubectl_stdin(&["create", "-f", "-"], &event("third"))?;
    std::thread::sleep(Duration::from_secs(5));
    s.kubectl_ok(&["patch", "event", "third", "--type=merge", "-p", r#"{"count": 2}"#])?;
    let patched = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(event_names(&s), "third", "10 s after its creation but 5 s after its last write");
    let gone = eventually(Duration::from_secs(40), || event_names(&s).is_empty().then(|| patched.elapsed()));
    assert!(gone.is_some_and(|g| g >= ttl), "the patched event expires a TTL after the patch: {gone:?}");
    Ok(())
}

/// Events an earlier version kept in the main store are dropped at start-up, once Events have their own.
#[tokio::test]
async fn events_left_in_the_main_store_are_dropped_at_start() -> Result<()> {
    let mut s = Server::start()?;
    s.kubectl_ok(&["create", "configmap", "keep", "--from-literal=a=b"])?;
    s.stop()?;
    let dir = s.data_dir().to_path_buf();
    {
        let store = kumo_store::RedbStore::open(&dir.join("kumo.redb"))?;
        let old = serde_json::json!({"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "old", "namespace": "default", "uid": "u-old", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "involvedObject": {"kind": "ConfigMap", "name": "keep"}, "reason": "Old", "message": "from before"});
        store.create(&format!("{EVENTS}default/old"), serde_json::to_vec(&old)?).await?;
    }
    s.start_again()?;
    assert_eq!(event_names(&s), "", "the stray Event is neither listed nor kept");
    s.stop()?;
    assert!(keys(&dir.join("kumo.redb"), EVENTS).await.is_empty(), "deleted from the main store");
    assert!(!keys(&dir.join("kumo.redb"), "/registry/core/configmaps/default/keep").await.is_empty());
    Ok(())
}

/// On etcd, `--etcd-servers-overrides /events#URL` puts Events in an etcd of their own (expiring by etcd's
/// leases); everything else stays in `--etcd-servers`.
#[tokio::test]
async fn on_etcd_events_can_have_an_etcd_of_their_own() -> Result<()> {
    let (main, events) = (kumo_e2e::cluster::EtcdCluster::start(1)?, kumo_e2e::cluster::EtcdCluster::start(1)?);
    let overrides = format!("/events#{}", events.endpoints().replace(',', ";"));
    let s = Server::start_with(&[
        "--etcd-servers",
        &main.endpoints(),
        "--etcd-servers-overrides",
        &overrides,
        "--event-ttl",
        "5s",
    ])?;
    s.kubectl_ok(&["create", "configmap", "keep", "--from-literal=a=b"])?;
    s.kubectl_stdin(&["create", "-f", "-"], &event("apart"))?;
    assert_eq!(event_names(&s), "apart");
    let connect = |endpoints: String| {
        let cfg = kumo_store::EtcdConfig {
            endpoints: endpoints.split(',').map(String::from).collect(),
            ..Default::default()
        };
        kumo_store::EtcdStore::connect(cfg)
    };
    let (main_store, events_store) = (connect(main.endpoints()).await?, connect(events.endpoints()).await?);
    let count = |r: kumo_store::RangeResponse| r.kvs.len();
    let events_at = |p: &str| RangeRequest { prefix: p.into(), ..Default::default() };
    assert_eq!(count(events_store.range(events_at(EVENTS)).await?), 1, "the Event is in the events etcd");
    assert_eq!(count(main_store.range(events_at(EVENTS)).await?), 0, "and not in the main one");
    assert_eq!(count(events_store.range(events_at("/registry/core/configmaps/")).await?), 0);
    let gone = eventually(Duration::from_secs(40), || event_names(&s).is_empty().then_some(()));
    assert!(gone.is_some(), "the Event outlived its TTL on etcd: {}", event_names(&s));
    assert_eq!(count(events_store.range(events_at(EVENTS)).await?), 0, "etcd deleted it");
    // A resource other than Events cannot be stored apart.
    let out = std::process::Command::new(kumo_e2e::kumo_bin())
        .args(["server", "--etcd-servers", &main.endpoints(), "--etcd-servers-overrides", "/pods#http://127.0.0.1:1"])
        .output()?;
    assert!(!out.status.success(), "a server storing pods apart started");
    assert!(String::from_utf8_lossy(&out.stderr).contains("only Events can be stored apart"));
    Ok(())
}
