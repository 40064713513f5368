//! SIMULATED nodes (`kumo agent --simulate`): a hundred of them in one process join a real control plane, get
//! VMIs scheduled and report them Running; each node's watch delivers only the VMIs bound to it. Killing the
//! simulator with SIGKILL loses and duplicates nothing: the nodes come back with the same guests.

use kumo_e2e::{eventually, KillOnDrop, Server};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

const NODES: usize = 100;
const VMIS: usize = 300;

type Simulator = KillOnDrop;

fn simulator(s: &Server) -> Simulator {
    simulator_of(s, NODES)
}

fn simulator_of(s: &Server, nodes: usize) -> Simulator {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(s.data_dir().join("simulator.log")).unwrap();
    let child = Command::new(kumo_e2e::kumo_bin())
        .args(["agent", "--simulate", "--nodes", &nodes.to_string(), "--boot-delay", "500ms", "--kubeconfig"])
        .arg(s.kubeconfig())
        .arg("--report")
        .arg(s.data_dir().join("seen.json"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    KillOnDrop(child)
}

fn json(s: &Server, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&s.kubectl_ok(&all).expect("kubectl")).expect("kubectl's JSON")
}

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().expect("a list answer has items")
}

fn ready_nodes(s: &Server) -> usize {
    items(&json(s, &["get", "nodes", "-l", "kumo.dev/simulated=true"]))
        .iter()
        .filter(|n| {
            n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                && n["spec"]["podCIDR"].is_string()
        })
        .count()
}

/// VMI uid → (phase, node, IP).
fn vmis(s: &Server) -> BTreeMap<String, (String, String, String)> {
    items(&json(s, &["get", "vmi"]))
        .iter()
        .map(|v| {
            let st = &v["status"];
            let text = |x: &Value| x.as_str().unwrap_or("").to_string();
            (
                text(&v["metadata"]["uid"]),
                (text(&st["phase"]), text(&st["nodeName"]), text(&st["interfaces"][0]["ipAddress"])),
            )
        })
        .collect()
}

fn manifest() -> String {
    (0..VMIS)
        .map(|i| {
            format!(
                "---\napiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {{name: sim-vmi-{i}}}\n\
                 spec:\n  domain: {{devices: {{}}, resources: {{requests: {{memory: 64Mi}}}}}}\n  \
                 volumes: [{{name: root, containerDisk: {{image: quay.io/kumo/test:latest}}}}]\n"
            )
        })
        .collect()
}

fn all_running(s: &Server) -> Option<BTreeMap<String, (String, String, String)>> {
    let v = vmis(s);
    (v.len() == VMIS && v.values().all(|(phase, _, ip)| phase == "Running" && !ip.is_empty())).then_some(v)
}

#[test]
fn a_hundred_simulated_nodes_run_vmis_and_each_sees_only_its_own() {
    let s = Server::start().expect("server");
    let mut sim = simulator(&s);
    let joined = eventually(Duration::from_secs(120), || (ready_nodes(&s) == NODES).then_some(()));
    assert!(joined.is_some(), "{} of {NODES} simulated nodes Ready with a pod CIDR", ready_nodes(&s));
    // Each node renews its own Lease.
    let leases = items(&json(&s, &["get", "leases", "-n", "kube-node-lease"]));
    let holders: BTreeSet<&str> = leases.iter().filter_map(|l| l["spec"]["holderIdentity"].as_str()).collect();
    assert_eq!(holders.iter().filter(|h| h.starts_with("sim-")).count(), NODES, "{holders:?}");

    s.kubectl_stdin(&["apply", "-f", "-"], &manifest()).expect("applying VMIs");
    let running = eventually(Duration::from_secs(180), || all_running(&s));
    let running = running.unwrap_or_else(|| panic!("not all {VMIS} VMIs Running: {:?}", vmis(&s)));

    // Spread over the nodes, each IP inside its node's pod CIDR.
    let cidrs: BTreeMap<String, String> = items(&json(&s, &["get", "nodes"]))
        .iter()
        .map(|n| {
            (
                n["metadata"]["name"].as_str().unwrap().to_string(),
                n["spec"]["podCIDR"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let used: BTreeSet<&String> = running.values().map(|(_, node, _)| node).collect();
    assert!(used.len() >= NODES / 2, "300 VMIs landed on only {} nodes", used.len());
    for (uid, (_, node, ip)) in &running {
        let prefix = cidrs[node].trim_end_matches("0/24");
        assert!(ip.starts_with(prefix), "VMI {uid} on {node} ({}) has IP {ip}", cidrs[node]);
    }
    let ips: BTreeSet<&String> = running.values().map(|(_, _, ip)| ip).collect();
    assert_eq!(ips.len(), VMIS, "two VMIs share an address");

    // Each node's watch delivered exactly the VMIs bound to it, and nothing else.
    let report = s.data_dir().join("seen.json");
    let seen_matches = || {
        let seen: Value = serde_json::from_str(&std::fs::read_to_string(&report).ok()?).ok()?;
        let mut want: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (uid, (_, node, _)) in &running {
            want.entry(node.as_str()).or_default().insert(uid.as_str());
        }
        let obj = seen.as_object()?;
        let ok = obj.len() == NODES
            && obj.iter().all(|(node, v)| {
                let got: BTreeSet<&str> =
                    v["vmis"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                // A node no VMI was bound to must have been sent none.
                let wanted = want.get(node.as_str()).cloned().unwrap_or_else(BTreeSet::new);
                v["foreign"] == 0 && got == wanted
            });
        ok.then_some(seen)
    };
    assert!(
        eventually(Duration::from_secs(10), seen_matches).is_some(),
        "the simulated nodes' watches delivered other than their own VMIs: {}",
        std::fs::read_to_string(&report)
            .unwrap_or_else(|e| format!("(the report {} is unreadable: {e})", report.display()))
    );

    // SIGKILL the simulator: its nodes come back and keep the same guests, none lost or doubled.
    let _ = sim.0.kill();
    let _ = sim.0.wait();
    drop(sim);
    // The killed simulator's report goes: what follows must come from the new one's watches.
    std::fs::remove_file(&report).expect("removing the killed simulator's report");
    let _again = simulator(&s);
    assert!(
        eventually(Duration::from_secs(120), seen_matches).is_some(),
        "after the restart, the nodes' watches delivered other than their own VMIs: {}",
        std::fs::read_to_string(&report)
            .unwrap_or_else(|e| format!("(the report {} is unreadable: {e})", report.display()))
    );
    let after = eventually(Duration::from_secs(120), || all_running(&s)).expect("VMIs Running after the restart");
    assert_eq!(after, running, "VMIs changed across a simulator SIGKILL");

    // Deleting them all: each node lets its VMIs go (the agent's finalizer), nothing is left.
    s.kubectl_ok(&["delete", "vmi", "--all", "--wait=false"]).expect("deleting VMIs");
    let gone = eventually(Duration::from_secs(120), || vmis(&s).is_empty().then_some(()));
    assert!(gone.is_some(), "VMIs left after deletion: {}", vmis(&s).len());
}

/// Event writes the API server served (creates, updates and patches of Events), from its own metrics.
fn event_writes(s: &Server) -> u64 {
    let text = s.kubectl_ok(&["get", "--raw", "/metrics"]).expect("the API server's metrics");
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{") && l.contains("resource=\"events\""))
        .filter(|l| ["create", "update", "patch"].iter().any(|v| l.contains(&format!("verb=\"{v}\""))))
        .filter(|l| l.contains("code=\"2"))
        .map(|l| l.rsplit(' ').next().and_then(|n| n.parse::<f64>().ok()).expect("a sample value") as u64)
        .sum()
}

/// Events about the VM `crashy` and its VMIs: (reason, count, lastTimestamp).
fn crash_events(s: &Server) -> Vec<(String, i64, String)> {
    items(&json(s, &["get", "events", "--field-selector", "involvedObject.name=crashy"]))
        .iter()
        .map(|e| {
            let text = |k: &str| e[k].as_str().unwrap_or("").to_string();
            (text("reason"), e["count"].as_i64().unwrap_or(0), text("lastTimestamp"))
        })
        .collect()
}

/// A VM whose guest crashes half a second after each start, restarted every 10 s or so (the guest ran, so
/// this is no start failure: the backoff does not grow): its events fold into one series per reason (at most 10 objects) and the writes stay within
/// the correlator's bounds, also across a SIGKILL of the node agent in the middle.
#[test]
fn a_crash_looping_vm_writes_a_bounded_number_of_events() {
    let s = Server::start().expect("server");
    let mut sim = simulator_of(&s, 1);
    assert!(eventually(Duration::from_secs(60), || (ready_nodes(&s) == 1).then_some(())).is_some(), "node not Ready");
    let before = event_writes(&s);
    s.apply(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {name: crashy}\nspec:\n  runStrategy: Always\n  \
         template:\n    metadata: {annotations: {kumo.dev/simulated-crash-after: '0.5'}}\n    spec:\n      \
         domain: {devices: {}, resources: {requests: {memory: 64Mi}}}\n      \
         volumes: [{name: root, containerDisk: {image: quay.io/kumo/test:latest}}]\n",
    )
    .expect("creating the VM");
    let started = |s: &Server| crash_events(s).iter().filter(|e| e.0 == "Started").map(|e| e.1).max().unwrap_or(0);
    // Two starts, then the agent is SIGKILLed and comes back: the series continue rather than doubling.
    assert!(
        eventually(Duration::from_secs(60), || (started(&s) >= 2).then_some(())).is_some(),
        "{:?}",
        crash_events(&s)
    );
    let _ = sim.0.kill();
    let _ = sim.0.wait();
    drop(sim);
    let _sim = simulator_of(&s, 1);
    // Counted by the VMIs seen (the events' counts lag behind by design once the burst is spent).
    let mut uids = BTreeSet::new();
    let restarts = eventually(Duration::from_secs(150), || {
        let out = s.kubectl(&["get", "vmi", "crashy", "-o", "jsonpath={.metadata.uid}"]).expect("kubectl");
        uids.extend(out.status.success().then(|| String::from_utf8_lossy(&out.stdout).to_string()));
        (uids.len() >= 6).then_some(())
    });
    assert!(restarts.is_some(), "the VM did not crash-loop ({} VMIs): {:?}", uids.len(), crash_events(&s));
    let events = crash_events(&s);
    let reasons: BTreeSet<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert!(events.len() <= 10, "{} Event objects: {events:?}", events.len());
    assert_eq!(reasons.len(), events.len(), "one Event per reason: {events:?}");
    assert!(events.iter().any(|e| e.1 >= 3), "repeats were not folded into counts: {events:?}");
    // Each source may write a series' first occurrence, then BURST repeats per object; these are the agent (the
    // VMI, in each of its two processes) and the controllers (the VM, the VMI).
    let writes = event_writes(&s) - before;
    let bound = events.len() as u64 * 2 + 4 * kumo_events::BURST as u64;
    let occurrences: i64 = events.iter().map(|e| e.1).sum();
    eprintln!(
        "{} restarts: {occurrences} event occurrences written in {writes} writes to {} Events",
        uids.len(),
        events.len()
    );
    assert!(writes <= bound, "{writes} event writes for {occurrences} occurrences (bound {bound}): {events:?}");
    // What kubectl users sort by is there.
    let sorted = s.kubectl_ok(&["get", "events", "--sort-by=.lastTimestamp"]).expect("sorted events");
    assert!(sorted.contains("crashy") && sorted.contains("Started"), "{sorted}");
}
