//! The conformance suite and etcd's own failure modes (crash, restart, TLS), against a real etcd started per
//! test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::*;
use crate::conformance::{free_port, take, unique_prefix, EtcdServer, EtcdTls, Fixture};

async fn fixture() -> Fixture {
    let etcd = EtcdServer::start().await;
    let store = EtcdStore::connect(etcd.config(&unique_prefix("etcd"))).await.unwrap();
    Fixture::new(Arc::new(store), etcd)
}

crate::conformance_tests!(fixture);

fn is_retryable(e: &Error) -> bool {
    matches!(e, Error::Unavailable(_) | Error::Timeout(_))
}

/// Every kind of call, each reduced to its error (None when it succeeded).
async fn every_call(s: &EtcdStore, p: &str) -> Vec<(&'static str, Option<Error>)> {
    let key = format!("{p}k");
    vec![
        ("current_revision", s.current_revision().await.err()),
        ("compacted_revision", s.compacted_revision().await.err()),
        ("get", s.get(&key).await.err()),
        ("range", s.range(RangeRequest { prefix: p.into(), ..Default::default() }).await.err()),
        ("range at", s.range(RangeRequest { prefix: p.into(), revision: Some(1), ..Default::default() }).await.err()),
        ("create", s.create(&format!("{p}new"), vec![]).await.err()),
        ("update", s.update(&key, vec![], 1).await.err()),
        ("delete", s.delete(&key, None).await.err()),
        ("watch", s.watch(p, 0).await.err()),
        ("compact", s.compact(1).await.err()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_etcd_gives_unavailable_and_ends_live_watches() {
    let mut etcd = EtcdServer::start().await;
    let p = unique_prefix("kill");
    let mut config = etcd.config(&p);
    config.timeout = Duration::from_secs(2);
    let s = EtcdStore::connect(config).await.unwrap();
    let a = s.create(&format!("{p}k"), b"1".to_vec()).await.unwrap();
    let mut w = s.watch(&p, a.mod_revision).await.unwrap();

    etcd.kill();
    // The live watch ends promptly with an error telling the caller to retry (and so relist).
    let next = tokio::time::timeout(Duration::from_secs(10), w.next()).await.expect("watch hung after etcd died");
    assert!(matches!(&next, Some(Err(Error::Unavailable(_)))), "{next:?}");
    assert!(w.next().await.is_none(), "the watch went on after its error");

    // Every call fails as Unavailable, and quickly: a refused connection is not worth waiting for (each call
    // waiting out its deadline would take 2 s).
    let started = Instant::now();
    for (call, err) in every_call(&s, &p).await {
        let err = err.unwrap_or_else(|| panic!("{call} succeeded with etcd dead"));
        // The first may still meet the dying connection ("connection closed"), the rest are refused.
        assert!(matches!(err, Error::Unavailable(_)), "{call}: {err:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(2), "calls took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_etcd_gives_timeout_and_ends_live_watches() {
    let etcd = EtcdServer::start().await;
    let p = unique_prefix("hung");
    let mut config = etcd.config(&p);
    config.timeout = Duration::from_secs(1);
    let s = EtcdStore::connect(config).await.unwrap();
    let a = s.create(&format!("{p}k"), b"1".to_vec()).await.unwrap();
    let mut w = s.watch(&p, a.mod_revision).await.unwrap();

    etcd.pause();
    let started = Instant::now();
    let err = s.get(&format!("{p}k")).await.unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "the deadline was not kept: {:?}", started.elapsed());
    // Nothing closes the watch's connection; unanswered HTTP/2 pings must end it.
    let patience = KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT + Duration::from_secs(10);
    let next = tokio::time::timeout(patience, w.next()).await.expect("watch hung with etcd unresponsive");
    assert!(matches!(&next, Some(Err(Error::Unavailable(_)))), "{next:?}");

    etcd.resume();
    assert_eq!(s.get(&format!("{p}k")).await.unwrap(), Some(a));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_recovers_by_itself_when_etcd_restarts() {
    let mut etcd = EtcdServer::start().await;
    let p = unique_prefix("restart");
    let s = EtcdStore::connect(etcd.config(&p)).await.unwrap();
    let a = s.create(&format!("{p}a"), b"1".to_vec()).await.unwrap();

    // Down for a while: calls fail, and keep failing, without wedging the store.
    etcd.kill();
    for _ in 0..3 {
        assert!(is_retryable(&s.get(&format!("{p}a")).await.unwrap_err()));
    }
    etcd.restart().await;

    // The same store, without reconnecting by hand: the first call already works, and the data survived.
    assert_eq!(s.get(&format!("{p}a")).await.unwrap(), Some(a.clone()));
    let b = s.create(&format!("{p}b"), vec![]).await.unwrap();
    assert!(b.mod_revision > a.mod_revision);
    let mut w = s.watch(&p, a.mod_revision).await.unwrap();
    assert_eq!(take(&mut w, 1).await[0].kv, b);
    let errors: Vec<_> =
        every_call(&s, &p).await.into_iter().filter(|(_, e)| e.as_ref().is_some_and(is_retryable)).collect();
    assert!(errors.is_empty(), "{errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_beside_a_live_one_is_skipped() {
    let etcd = EtcdServer::start().await;
    let p = unique_prefix("endpoints");
    let mut config = etcd.config(&p);
    // Nothing listens on the first endpoint: calls that pick it fail to connect and go to the other.
    config.endpoints.insert(0, format!("http://127.0.0.1:{}", free_port()));
    let s = EtcdStore::connect(config).await.unwrap();
    let start = s.current_revision().await.unwrap();
    for i in 0..100 {
        s.create(&format!("{p}{i}"), vec![]).await.unwrap();
        assert!(s.get(&format!("{p}{i}")).await.unwrap().is_some());
    }
    let mut w = s.watch(&p, start).await.unwrap();
    assert_eq!(take(&mut w, 100).await.len(), 100);
}

#[tokio::test]
async fn unreachable_etcd_fails_connect_with_unavailable() {
    let config = EtcdConfig {
        endpoints: vec![format!("http://127.0.0.1:{}", free_port())],
        timeout: Duration::from_secs(2),
        ..EtcdConfig::default()
    };
    let err = EtcdStore::connect(config).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn bad_configurations_are_refused() {
    let with = |f: fn(&mut EtcdConfig)| {
        let mut c = EtcdConfig::default();
        f(&mut c);
        c
    };
    let cases = [
        with(|c| c.endpoints.clear()),
        with(|c| c.endpoints = vec!["127.0.0.1:2379".into()]),
        with(|c| c.endpoints = vec!["http://a:1".into(), "https://b:1".into()]),
        with(|c| c.endpoints = vec!["https://a:1".into()]),
        with(|c| c.ca_file = Some("/nonexistent".into())),
        with(|c| {
            c.endpoints = vec!["https://a:1".into()];
            c.ca_file = Some("/nonexistent".into());
        }),
    ];
    for config in cases {
        let err = EtcdStore::connect(config.clone()).await.unwrap_err();
        assert!(matches!(err, Error::Backend(ref m) if m.contains("etcd configuration")), "{config:?}: {err:?}");
    }
}

/// A CA, and server and client certificates it signed, as PEM files in `dir`.
fn certificates(dir: &std::path::Path) -> EtcdTls {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose as Eku, IsCa, Issuer, KeyPair};
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, &ca_key);
    let leaf = |names: Vec<String>, usages: Vec<Eku>, name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = usages;
        let cert = params.signed_by(&key, &issuer).unwrap();
        (write(&format!("{name}.crt"), cert.pem()), write(&format!("{name}.key"), key.serialize_pem()))
    };
    let (server_cert, server_key) =
        leaf(vec!["127.0.0.1".into(), "localhost".into()], vec![Eku::ServerAuth, Eku::ClientAuth], "server");
    let (client_cert, client_key) = leaf(vec!["kumo".into()], vec![Eku::ClientAuth], "client");
    EtcdTls { ca: write("ca.crt", ca_pem), server_cert, server_key, client_cert, client_key }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let certs = tempfile::tempdir().unwrap();
    let tls = certificates(certs.path());
    let etcd = EtcdServer::start_with(Some(tls.clone())).await;
    let p = unique_prefix("tls");
    assert!(etcd.endpoint().starts_with("https://"));
    let s = EtcdStore::connect(etcd.config(&p)).await.unwrap();
    let start = s.current_revision().await.unwrap();
    let a = s.create(&format!("{p}a"), b"secret".to_vec()).await.unwrap();
    assert_eq!(s.get(&format!("{p}a")).await.unwrap(), Some(a.clone()));
    let mut w = s.watch(&p, start).await.unwrap();
    assert_eq!(take(&mut w, 1).await[0].kv, a);

    // etcd requires a client certificate: without one the handshake ends with etcd's "bad certificate"
    // alert, or, when the connection closes before the client reads the alert, looks like etcd going away. A
    // server certificate from another CA is a configuration error, not an outage.
    let short = |mut c: EtcdConfig| {
        c.timeout = Duration::from_secs(2);
        c
    };
    let mut no_cert = short(etcd.config(&p));
    (no_cert.cert_file, no_cert.key_file) = (None, None);
    let err = EtcdStore::connect(no_cert).await.unwrap_err();
    let alert = matches!(&err, Error::Backend(m) if m.contains("BadCertificate"));
    assert!(alert || matches!(err, Error::Unavailable(_)), "{err:?}");
    let other_ca = tempfile::tempdir().unwrap();
    let mut wrong_ca = short(etcd.config(&p));
    wrong_ca.ca_file = Some(certificates(other_ca.path()).ca);
    let err = EtcdStore::connect(wrong_ca).await.unwrap_err();
    assert!(matches!(err, Error::Backend(ref m) if m.contains("certificate")), "{err:?}");
    let plain = EtcdConfig { endpoints: vec![etcd.endpoint().replace("https", "http")], ..short(etcd.config(&p)) };
    let plain = EtcdConfig { ca_file: None, cert_file: None, key_file: None, ..plain };
    let err = EtcdStore::connect(plain).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
}

/// etcd compacted behind kumo's back (its `--auto-compaction-*`, or another client): reads and watches at
/// the lost revisions still fail as `Compacted`, from etcd's own answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_by_someone_else_is_still_compacted() {
    let etcd = EtcdServer::start().await;
    let p = unique_prefix("foreign-compact");
    let s = EtcdStore::connect(etcd.config(&p)).await.unwrap();
    let a1 = s.create(&format!("{p}a"), b"1".to_vec()).await.unwrap();
    let a2 = s.update(&format!("{p}a"), b"2".to_vec(), a1.mod_revision).await.unwrap();
    s.create(&format!("{p}b"), vec![]).await.unwrap();
    let mut other = etcd_client::Client::connect([etcd.endpoint()], None).await.unwrap();
    other.compact(a2.mod_revision, None).await.unwrap();

    assert_eq!(s.compacted_revision().await.unwrap(), 0, "kumo's record knows nothing of it");
    match s.range(RangeRequest { prefix: p.clone(), revision: Some(a1.mod_revision), ..Default::default() }).await {
        Err(Error::Compacted { requested, compacted }) => {
            assert_eq!(requested, a1.mod_revision);
            assert!(compacted >= a1.mod_revision);
        }
        other => panic!("range at a revision etcd compacted: {other:?}"),
    }
    // The watch may be refused at once or end with the error first; either way no event comes.
    let err = match s.watch(&p, a1.mod_revision - 1).await {
        Err(e) => e,
        Ok(mut w) => {
            let first = tokio::time::timeout(Duration::from_secs(10), w.next()).await.expect("watch hung");
            first.expect("watch ended without an error").expect_err("an event from compacted history")
        }
    };
    assert!(matches!(err, Error::Compacted { compacted, .. } if compacted >= a2.mod_revision), "{err:?}");
    // Just after etcd's compaction point the history is still there.
    let mut w = s.watch(&p, a2.mod_revision).await.unwrap();
    assert_eq!(take(&mut w, 1).await[0].kv.key, format!("{p}b"));
}
