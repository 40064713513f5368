//! A full disk, on a real (small) filesystem: writes are refused and not applied, reads go on, and the store
//! recovers by itself once space returns. Needs root for the tmpfs mount (tests run as root here and in CI).

use std::time::{Duration, Instant};

use super::tests::open;
use crate::conformance::SmallFs;
use crate::{Error, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_and_recovers_when_space_returns() {
    let fs = SmallFs::mount(8);
    // Space the test frees later, as an operator would.
    let filler = fs.path().join("filler");
    std::fs::write(&filler, vec![1u8; 3 << 20]).unwrap();
    let s = open(&fs.path().join("kumo.redb"));
    let value = vec![7u8; 16 << 10];
    let mut acked = vec![];
    let mut refused = None;
    for i in 0..2000 {
        let key = format!("/k/{i:05}");
        match s.create(&key, value.clone()).await {
            Ok(kv) => acked.push(kv),
            Err(e) => {
                refused = Some((key, e));
                break;
            }
        }
    }
    let (failed_key, err) = refused.expect("the small filesystem filled up");
    assert!(matches!(err, Error::NoSpace(_)), "a full disk is NoSpace, got {err:?}");
    assert!(acked.len() > 10, "some writes fit first: {}", acked.len());
    let why = s.write_failure().expect("the store reports that writes fail");
    assert!(why.contains("space"), "{why}");
    // Reads go on while writes fail; the next write is refused at once.
    assert_eq!(s.get(&acked[0].key).await.unwrap().unwrap().value, value);
    assert!(matches!(s.create("/k/more", vec![1]).await, Err(Error::NoSpace(_))));

    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        match s.create("/k/after", b"back".to_vec()).await {
            Ok(kv) => break kv,
            Err(Error::NoSpace(_) | Error::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("writes did not come back after space was freed: {e}"),
        }
    };
    assert!(s.write_failure().is_none(), "recovered: {:?}", s.write_failure());
    assert_eq!(after.mod_revision, acked.last().unwrap().mod_revision + 1, "refused writes took no revision");

    // Every acknowledged write is there, nothing refused appeared, also after a restart.
    check(&*s, &acked, &failed_key).await;
    drop(s);
    check(&*open(&fs.path().join("kumo.redb")), &acked, &failed_key).await;
}

async fn check(store: &dyn Store, acked: &[crate::KeyValue], refused: &str) {
    let all = store.range(crate::RangeRequest { prefix: "/k/".into(), ..Default::default() }).await.unwrap();
    let keys: Vec<&str> = all.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys.len(), acked.len() + 1, "acknowledged writes plus the one after recovery");
    for kv in acked {
        assert!(keys.contains(&kv.key.as_str()), "{} lost", kv.key);
    }
    assert!(!keys.contains(&refused) && !keys.contains(&"/k/more"), "a refused write appeared");
}
