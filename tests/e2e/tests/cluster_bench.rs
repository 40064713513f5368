//! The cluster benchmark (run by `scripts/bench-cluster.sh`, not in CI): with default settings, how long a
//! dead leader replica takes to be replaced, and how long a VM takes to serve HTTP again from another host after
//! its host dies — the median of `KUMO_BENCH_ROUNDS` (5) runs each, with the no-double-run watch running
//! throughout. Results go to `KUMO_BENCH_OUT` (JSON) and stderr.

use anyhow::Result;
use kumo_e2e::cluster::DoubleRunWatch;
use kumo_e2e::eventually;
use kumo_e2e::fleet::{start_cluster, vm, SPREAD};
use serde_json::json;
use std::time::{Duration, Instant};

fn rounds() -> usize {
    std::env::var("KUMO_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(5)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[(s.len() - 1) / 2]
}

fn write(name: &str, value: serde_json::Value) {
    let path = std::env::var("KUMO_BENCH_OUT").unwrap_or_else(|_| format!("/tmp/kumo-bench-{name}.json"));
    let text = serde_json::to_string_pretty(&value).expect("JSON values serialize");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {path}: {e}"));
    eprintln!("BENCH {name}: {value}");
}

#[test]
#[ignore = "benchmark: scripts/bench-cluster.sh"]
fn host_loss_to_serving_elsewhere_with_default_settings() -> Result<()> {
    // Defaults: --node-monitor-grace-period 20s, --fencing-period 20s.
    let mut c = start_cluster(&[], "20s")?;
    let web = ["web-1", "web-2", "web-3"];
    for w in web {
        c.admin().apply(&vm(w, SPREAD, "            #!/bin/sh\n            echo ok > /www/userdata.txt"))?;
    }
    for w in web {
        c.wait_serving(w, None, Duration::from_secs(300))?;
    }
    let watch = DoubleRunWatch::start(c.hosts.iter().map(|h| (h.name.clone(), h.state.clone())).collect());
    let mut secs = vec![];
    for round in 0..rounds() {
        let name = web[round % web.len()];
        let (h, _, uid) = c.wait_serving(name, None, Duration::from_secs(120))?;
        let lost = Instant::now();
        c.hosts[h].kill_all();
        let (to, ..) = c.wait_serving(name, Some(&uid), Duration::from_secs(300))?;
        let took = lost.elapsed().as_secs_f64();
        eprintln!(
            "round {}: {name} lost with {} served from {} after {took:.1}s",
            round + 1,
            c.hosts[h].name,
            c.hosts[to].name
        );
        secs.push(took);
        c.start_agent(h)?;
        c.wait_back(h, Duration::from_secs(120));
    }
    let (double, samples) = watch.report();
    assert!(double.is_empty(), "a VMI ran twice at once: {double:?}");
    write(
        "host-loss",
        json!({"grace_seconds": 20, "fencing_seconds": 20, "seconds": secs, "median_seconds": median(&secs),
            "double_runs": double.len(), "watch_samples": samples}),
    );
    Ok(())
}

#[test]
#[ignore = "benchmark: scripts/bench-cluster.sh"]
fn leader_failover_with_default_settings() -> Result<()> {
    let mut c = start_cluster(&[], "20s")?;
    let holder = |c: &kumo_e2e::fleet::Cluster, lease: &str| {
        c.get(&["-n", "kube-system", "get", "lease", lease, "-o", "jsonpath={.spec.holderIdentity}"])
    };
    let id = |s: &kumo_e2e::Server| kumo_e2e::cluster::server_id(s);
    let mut secs = vec![];
    for round in 0..rounds() {
        let gc = holder(&c, "kumo-gc")?;
        let Some(leader) = c.replicas.iter().position(|r| !gc.is_empty() && gc.ends_with(&id(r))) else {
            anyhow::bail!("no leader among the replicas (holder {gc:?})");
        };
        let killed = Instant::now();
        c.replicas[leader].kill();
        let other = 1 - leader;
        let new_id = id(&c.replicas[other]);
        let took = eventually(Duration::from_secs(60), || {
            ["kumo-gc", "kumo-controllers"]
                .iter()
                .all(|l| holder(&c, l).is_ok_and(|h| h.ends_with(&new_id)))
                .then(|| killed.elapsed())
        });
        let took = took.expect("the other replica never took over").as_secs_f64();
        eprintln!("round {}: leader failover took {took:.1}s", round + 1);
        secs.push(took);
        c.replicas[leader].restart()?;
    }
    write("leader-failover", json!({"seconds": secs, "median_seconds": median(&secs)}));
    Ok(())
}
