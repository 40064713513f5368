//! Every filter and score of the scheduler, through [`schedule`] as the VMI controller calls it.

use super::*;
use serde_json::{json, Value};

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a valid object")
}

/// A Ready node with 2 cpus, 4Gi and the hostname label, as the agent registers one.
fn node_json(name: &str) -> Value {
    json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"allocatable": {"cpu": "2", "memory": "4Gi"}, "conditions": [{"type": "Ready", "status": "True"}]}})
}

fn nodes(names: &[&str]) -> Vec<Node> {
    names.iter().map(|n| typed(node_json(n))).collect()
}

/// A VMI with one vCPU and 1Gi.
fn vmi_json(name: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": "default", "uid": name},
        "spec": {"domain": {"memory": {"guest": "1Gi"}}}})
}

/// `v` bound to `node` (phase Running).
fn placed(mut v: Value, node: &str) -> VirtualMachineInstance {
    v["status"] = json!({"phase": "Running", "nodeName": node});
    typed(v)
}

fn placed_all(vmis: &[VirtualMachineInstance]) -> Placed {
    Placed::of(Config::default(), vmis.iter().cloned().map(std::sync::Arc::new))
}

fn run(vmi: Value, nodes: &[Node], vmis: &[VirtualMachineInstance]) -> Result<String, String> {
    let placed = placed_all(vmis);
    let cluster = Cluster { nodes: nodes.iter().collect(), placed: Some(&placed), ..Default::default() };
    schedule(&typed(vmi), &cluster)
}

#[test]
fn requests_count_vcpus_over_the_allocation_ratio() {
    let cfg = Config::default();
    let req = |spec: Value, cfg: &Config| {
        let mut v = vmi_json("v");
        v["spec"]["domain"] = spec;
        request(&typed(v), cfg)
    };
    assert_eq!(req(json!({"memory": {"guest": "1Gi"}}), &cfg), Request { cpu_milli: 100, memory: 1 << 30 });
    // sockets × cores × threads vCPUs, a tenth of a cpu each by default.
    let topo = json!({"cpu": {"sockets": 2, "cores": 3, "threads": 2}});
    assert_eq!(req(topo.clone(), &cfg).cpu_milli, 1200);
    assert_eq!(req(topo.clone(), &Config { cpu_allocation_ratio: 1 }).cpu_milli, 12_000);
    assert_eq!(req(topo, &Config { cpu_allocation_ratio: 7 }).cpu_milli, 1715, "rounded up");
    // An explicit request (else a limit) is taken as is; memory requests win over guest memory.
    let explicit = json!({"cpu": {"cores": 8}, "memory": {"guest": "1Gi"},
        "resources": {"requests": {"cpu": "1500m", "memory": "2Gi"}, "limits": {"cpu": "3"}}});
    assert_eq!(req(explicit, &cfg), Request { cpu_milli: 1500, memory: 2 << 30 });
    assert_eq!(req(json!({"resources": {"limits": {"cpu": "3"}}}), &cfg).cpu_milli, 3000);
}

#[test]
fn cpu_fits_with_overcommit_and_finished_vmis_take_no_room() {
    let ns = nodes(&["a"]);
    // 2 cpus at 10 vCPUs each: 20 one-vCPU VMIs; memory is no limit here.
    let small = |name: &str| {
        let mut v = vmi_json(name);
        v["spec"]["domain"]["memory"]["guest"] = json!("1Mi");
        v
    };
    let mut on_a: Vec<VirtualMachineInstance> = (0..19).map(|i| placed(small(&format!("v{i}")), "a")).collect();
    assert_eq!(run(small("new"), &ns, &on_a), Ok("a".into()));
    on_a.push(placed(small("v19"), "a"));
    assert_eq!(run(small("new"), &ns, &on_a), Err("0/1 nodes are available: 1 Insufficient cpu.".into()));
    // A finished VMI frees its share; a VMI bound to a node that no longer exists takes none.
    for phase in ["Succeeded", "Failed"] {
        let mut done = on_a.clone();
        done[0].status.as_mut().unwrap().phase = Some(phase.into());
        assert_eq!(run(small("new"), &ns, &done), Ok("a".into()), "{phase}");
    }
    let mut elsewhere = on_a.clone();
    elsewhere[0].status.as_mut().unwrap().node_name = Some("gone".into());
    assert_eq!(run(small("new"), &ns, &elsewhere), Ok("a".into()));
    // With a ratio of 1, one node of 2 cpus takes two vCPUs.
    let cluster =
        Cluster { nodes: ns.iter().collect(), config: Config { cpu_allocation_ratio: 1 }, ..Default::default() };
    let mut three = small("big");
    three["spec"]["domain"]["cpu"] = json!({"cores": 3});
    assert!(schedule(&typed(three.clone()), &cluster).is_err());
    three["spec"]["domain"]["cpu"] = json!({"cores": 2});
    assert!(schedule(&typed(three), &cluster).is_ok());
}

#[test]
fn memory_and_pod_count_are_limits() {
    let ns = nodes(&["a"]);
    let three: Vec<_> = (0..3).map(|i| placed(vmi_json(&format!("v{i}")), "a")).collect();
    assert_eq!(run(vmi_json("new"), &ns, &three), Ok("a".into()));
    let four: Vec<_> = (0..4).map(|i| placed(vmi_json(&format!("v{i}")), "a")).collect();
    assert_eq!(run(vmi_json("new"), &ns, &four), Err("0/1 nodes are available: 1 Insufficient memory.".into()));
    // Short of both: both reasons are reported for the one node.
    let mut big = vmi_json("big");
    big["spec"]["domain"]["cpu"] = json!({"cores": 30});
    assert_eq!(run(big, &ns, &four), Err("0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient memory.".into()));
    // A Node without allocatable offers nothing.
    let bare: Vec<Node> = vec![typed(json!({"metadata": {"name": "bare"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}}))];
    assert!(run(vmi_json("new"), &bare, &[]).unwrap_err().contains("Insufficient memory"));
    // A pod limit, when the Node reports one.
    let mut limited = node_json("a");
    limited["status"]["allocatable"]["pods"] = json!("3");
    assert_eq!(
        run(vmi_json("new"), &[typed(limited)], &three),
        Err("0/1 nodes are available: 1 Too many pods.".into())
    );
}

#[test]
fn unready_and_cordoned_nodes_are_skipped() {
    let mut down = node_json("down");
    down["status"]["conditions"][0]["status"] = json!("Unknown");
    let mut cordoned = node_json("cordoned");
    cordoned["spec"] = json!({"unschedulable": true});
    let ns: Vec<Node> = vec![typed(down), typed(cordoned.clone())];
    assert_eq!(
        run(vmi_json("v"), &ns, &[]),
        Err("0/2 nodes are available: 1 node(s) were not ready, 1 node(s) were unschedulable.".into())
    );
    // Tolerating the unschedulable taint lets a VMI onto a cordoned node, as with Pods.
    let mut tolerant = vmi_json("v");
    tolerant["spec"]["tolerations"] = json!([{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}]);
    assert_eq!(run(tolerant, &ns, &[]), Ok("cordoned".into()));
}

#[test]
fn taints_need_tolerations() {
    let taint = |effect: &str| {
        let mut n = node_json(&format!("t-{}", effect.to_lowercase()));
        n["spec"] = json!({"taints": [{"key": "dedicated", "value": "gpu", "effect": effect}]});
        typed::<Node>(n)
    };
    let hard = vec![taint("NoSchedule"), taint("NoExecute")];
    assert_eq!(
        run(vmi_json("v"), &hard, &[]),
        Err("0/2 nodes are available: 2 node(s) had untolerated taint {dedicated: gpu}.".into())
    );
    let with = |tolerations: Value| {
        let mut v = vmi_json("v");
        v["spec"]["tolerations"] = tolerations;
        v
    };
    let equal = with(json!([{"key": "dedicated", "operator": "Equal", "value": "gpu"}]));
    assert!(run(equal, &hard, &[]).is_ok(), "no effect tolerates every effect");
    let one_effect = with(json!([{"key": "dedicated", "value": "gpu", "effect": "NoExecute"}]));
    assert_eq!(run(one_effect, &hard, &[]), Ok("t-noexecute".into()));
    let wrong_value = with(json!([{"key": "dedicated", "value": "cpu"}]));
    assert!(run(wrong_value, &hard, &[]).is_err());
    let exists = with(json!([{"key": "dedicated", "operator": "Exists"}]));
    assert!(run(exists, &hard, &[]).is_ok());
    let everything = with(json!([{"operator": "Exists"}]));
    assert!(run(everything, &hard, &[]).is_ok());
    // PreferNoSchedule does not filter; it only makes a node less attractive.
    let soft = [taint("PreferNoSchedule"), typed(node_json("plain"))];
    assert_eq!(run(vmi_json("v"), &soft[..1], &[]), Ok("t-prefernoschedule".into()));
    for tiebreak in 0..8 {
        let cluster = Cluster { nodes: soft.iter().collect(), tiebreak, ..Default::default() };
        assert_eq!(schedule(&typed(vmi_json("v")), &cluster), Ok("plain".into()));
    }
}

#[test]
fn node_selector_and_node_affinity() {
    let mut ns = nodes(&["a", "b"]);
    ns[0].metadata.labels.as_mut().unwrap().extend([("zone".into(), "x".into()), ("gen".into(), "5".into())]);
    ns[1].metadata.labels.as_mut().unwrap().extend([("zone".into(), "y".into()), ("gen".into(), "3".into())]);
    let with = |affinity: Value| {
        let mut v = vmi_json("v");
        v["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": affinity}});
        v
    };
    let term = |exprs: Value| with(json!({"nodeSelectorTerms": [{"matchExpressions": exprs}]}));
    let mut sel = vmi_json("v");
    sel["spec"]["nodeSelector"] = json!({"zone": "y"});
    assert_eq!(run(sel.clone(), &ns, &[]), Ok("b".into()));
    sel["spec"]["nodeSelector"] = json!({"zone": "z"});
    assert_eq!(
        run(sel, &ns, &[]),
        Err("0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.".into())
    );
    assert_eq!(run(term(json!([{"key": "zone", "operator": "In", "values": ["x"]}])), &ns, &[]), Ok("a".into()));
    assert_eq!(run(term(json!([{"key": "zone", "operator": "NotIn", "values": ["x"]}])), &ns, &[]), Ok("b".into()));
    assert_eq!(run(term(json!([{"key": "gen", "operator": "Gt", "values": ["4"]}])), &ns, &[]), Ok("a".into()));
    assert_eq!(run(term(json!([{"key": "gen", "operator": "Lt", "values": ["4"]}])), &ns, &[]), Ok("b".into()));
    assert!(run(term(json!([{"key": "gpu", "operator": "Exists"}])), &ns, &[]).is_err());
    assert!(run(term(json!([{"key": "gpu", "operator": "DoesNotExist"}])), &ns, &[]).is_ok());
    // Requirements in a term are ANDed, terms ORed; an empty term matches nothing; matchFields by name.
    let and =
        json!([{"key": "zone", "operator": "In", "values": ["x"]}, {"key": "gen", "operator": "Lt", "values": ["4"]}]);
    assert!(run(term(and), &ns, &[]).is_err());
    let or = with(json!({"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["nowhere"]}]},
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}]}));
    assert_eq!(run(or, &ns, &[]), Ok("b".into()));
    assert!(run(with(json!({"nodeSelectorTerms": [{}]})), &ns, &[]).is_err());
    // Preferred terms pick among nodes that fit, by weight.
    let mut pref = vmi_json("v");
    pref["spec"]["affinity"] = json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 10, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["x"]}]}},
        {"weight": 50, "preference": {"matchExpressions": [{"key": "gen", "operator": "Lt", "values": ["4"]}]}}]}});
    // "b" is also fuller, and still wins on the heavier preference.
    let on_b = [placed(vmi_json("x"), "b")];
    assert_eq!(run(pref, &ns, &on_b), Ok("b".into()));
}

/// `v` with `spec.affinity` set to `affinity` and the label app=`app`.
fn with_affinity(name: &str, app: &str, affinity: Value) -> Value {
    let mut v = vmi_json(name);
    v["metadata"]["labels"] = json!({"app": app});
    v["spec"]["affinity"] = affinity;
    v
}

fn term(app: &str) -> Value {
    json!({"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": "kubernetes.io/hostname"})
}

#[test]
fn pod_anti_affinity_keeps_vmis_apart_both_ways() {
    let ns = nodes(&["a", "b", "c"]);
    let anti = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("web")]}});
    let placed_web =
        [placed(with_affinity("w1", "web", json!({})), "a"), placed(with_affinity("w2", "web", json!({})), "b")];
    assert_eq!(run(with_affinity("w3", "web", anti.clone()), &ns, &placed_web), Ok("c".into()));
    let on_c = [&placed_web[..], &[placed(with_affinity("w4", "web", json!({})), "c")]].concat();
    assert_eq!(
        run(with_affinity("w3", "web", anti.clone()), &ns, &on_c),
        Err("0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.".into())
    );
    // A finished VMI does not count.
    let mut done = on_c.clone();
    done[2].status.as_mut().unwrap().phase = Some("Succeeded".into());
    assert_eq!(run(with_affinity("w3", "web", anti.clone()), &ns, &done), Ok("c".into()));
    // Terms look in their VMI's namespace, unless they name others or select them by namespace labels.
    let only_c = &ns[2..];
    let mut prod = placed(with_affinity("w4", "web", json!({})), "c");
    prod.metadata.namespace = Some("prod".into());
    let prod = [prod];
    assert_eq!(run(with_affinity("w3", "web", anti.clone()), only_c, &prod), Ok("c".into()));
    let required = |t: Value| json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [t]}});
    let mut listed = term("web");
    listed["namespaces"] = json!(["prod"]);
    assert!(run(with_affinity("w3", "web", required(listed)), only_c, &prod).is_err());
    let mut by_label = term("web");
    by_label["namespaceSelector"] = json!({"matchLabels": {"tier": "prod"}});
    let vmi: VirtualMachineInstance = typed(with_affinity("w3", "web", required(by_label)));
    let prod_placed = placed_all(&prod);
    let cluster = |namespaces| Cluster {
        nodes: only_c.iter().collect(),
        placed: Some(&prod_placed),
        namespaces,
        ..Default::default()
    };
    let tier = BTreeMap::from([("prod".to_string(), BTreeMap::from([("tier".to_string(), "prod".to_string())]))]);
    assert!(schedule(&vmi, &cluster(tier)).is_err());
    assert_eq!(schedule(&vmi, &cluster(BTreeMap::new())), Ok("c".into()));
    let mut every = term("web");
    every["namespaceSelector"] = json!({});
    assert!(run(with_affinity("w3", "web", required(every)), only_c, &prod).is_err(), "{{}} selects every namespace");
    // Symmetry: a placed VMI's anti-affinity keeps a matching newcomer (with no rules of its own) away.
    let loner = placed(
        with_affinity(
            "db",
            "db",
            json!({"podAntiAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [term("web")]}}),
        ),
        "a",
    );
    let ns2 = nodes(&["a", "b"]);
    let on_b = [loner.clone(), placed(vmi_json("filler"), "b"), placed(vmi_json("filler2"), "b")];
    assert_eq!(run(with_affinity("w5", "web", json!({})), &ns2, &on_b), Ok("b".into()));
    assert_eq!(
        run(with_affinity("w5", "web", json!({})), &ns2[..1], &[loner]),
        Err("0/1 nodes are available: 1 node(s) didn't satisfy existing pods anti-affinity rules.".into())
    );
}

#[test]
fn pod_affinity_follows_matching_vmis_and_lets_the_first_of_a_group_anywhere() {
    let ns = nodes(&["a", "b"]);
    let affine = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("db")]}});
    let db_on_b = [placed(with_affinity("db", "db", json!({})), "b")];
    // Emptier "a" loses to "b", where the db is.
    assert_eq!(run(with_affinity("app", "app", affine.clone()), &ns, &db_on_b), Ok("b".into()));
    // No db anywhere, and this VMI is not a db itself: nowhere.
    assert_eq!(
        run(with_affinity("app", "app", affine.clone()), &ns, &[]),
        Err("0/2 nodes are available: 2 node(s) didn't match pod affinity rules.".into())
    );
    // The first db, affine to dbs, may go anywhere.
    assert!(run(with_affinity("db2", "db", affine.clone()), &ns, &[]).is_ok());
    // A topology label the node lacks never matches (here a zone).
    let mut zoned = term("db");
    zoned["topologyKey"] = json!("topology.kubernetes.io/zone");
    let zoned = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [zoned]}});
    assert!(run(with_affinity("app", "app", zoned.clone()), &ns, &db_on_b).is_err());
    let mut zones = ns.clone();
    for n in &mut zones {
        n.metadata.labels.as_mut().unwrap().insert("topology.kubernetes.io/zone".into(), "z1".into());
    }
    // Same zone as the db: both nodes fit.
    let db_placed = placed_all(&db_on_b);
    let fit: Vec<_> = (0..8)
        .map(|tiebreak| {
            let c = Cluster { nodes: zones.iter().collect(), placed: Some(&db_placed), tiebreak, ..Default::default() };
            schedule(&typed(with_affinity("app", "app", zoned.clone())), &c).unwrap()
        })
        .collect();
    assert!(fit.contains(&"a".to_string()), "{fit:?}");
}

#[test]
fn preferred_pod_affinity_weighs_in() {
    let ns = nodes(&["a", "b"]);
    let on =
        [placed(with_affinity("db", "db", json!({})), "a"), placed(with_affinity("cache", "cache", json!({})), "b")];
    let weighted = |w_db: i32, w_cache: i32| {
        json!({"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": w_db, "podAffinityTerm": term("db")}, {"weight": w_cache, "podAffinityTerm": term("cache")}]}})
    };
    assert_eq!(run(with_affinity("v", "v", weighted(80, 20)), &ns, &on), Ok("a".into()));
    assert_eq!(run(with_affinity("v", "v", weighted(20, 80)), &ns, &on), Ok("b".into()));
    let avoid = json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": term("db")}]}});
    assert_eq!(run(with_affinity("v", "v", avoid), &ns, &on), Ok("b".into()));
}

#[test]
fn spreads_to_the_least_allocated_node_and_ties_are_random() {
    let ns = nodes(&["a", "b", "c"]);
    let on = [placed(vmi_json("1"), "a"), placed(vmi_json("2"), "a"), placed(vmi_json("3"), "b")];
    assert_eq!(run(vmi_json("v"), &ns, &on), Ok("c".into()));
    // Relative to size: a node twice as big with one VMI more is still the emptier.
    let mut big = node_json("big");
    big["status"]["allocatable"] = json!({"cpu": "8", "memory": "16Gi"});
    let two: Vec<Node> = vec![typed(big), typed(node_json("small"))];
    let on_big = [placed(vmi_json("1"), "big")];
    assert_eq!(run(vmi_json("v"), &two, &on_big), Ok("big".into()));
    // Equal nodes: the tiebreak decides, and different tiebreaks use different nodes.
    let picks: std::collections::BTreeSet<String> = (0..32)
        .map(|tiebreak| {
            let c = Cluster { nodes: ns.iter().collect(), tiebreak, ..Default::default() };
            schedule(&typed(vmi_json("v")), &c).unwrap()
        })
        .collect();
    assert_eq!(picks.len(), 3, "{picks:?}");
}

#[test]
fn the_message_counts_reasons_sorted_as_kubernetes_prints_them() {
    let mut ns = nodes(&["small", "b", "c"]);
    ns[0].status.as_mut().unwrap().allocatable.as_mut().unwrap().insert("cpu".into(), typed(json!("1")));
    let web = [placed(with_affinity("w1", "web", json!({})), "b"), placed(with_affinity("w2", "web", json!({})), "c")];
    let mut big = with_affinity(
        "big",
        "web",
        json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("web")]}}),
    );
    big["spec"]["domain"]["cpu"] = json!({"cores": 12});
    assert_eq!(
        run(big, &ns, &web),
        Err("0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match pod anti-affinity rules.".into())
    );
    assert_eq!(run(vmi_json("v"), &[], &[]), Err("0/0 nodes are available.".into()));
}

/// A VMI whose disk is the claim `data` (in `default`).
fn with_claim() -> VirtualMachineInstance {
    let mut v = vmi_json("v");
    v["spec"]["volumes"] = json!([{"name": "d", "ephemeral": {"persistentVolumeClaim": {"claimName": "data"}}}]);
    typed(v)
}

fn claim(class: &str, volume: Option<&str>, selected: Option<&str>) -> PersistentVolumeClaim {
    let mut c = json!({"metadata": {"name": "data", "namespace": "default"},
                       "spec": {"storageClassName": class, "volumeName": volume}});
    if let Some(n) = selected {
        c["metadata"]["annotations"] = json!({crate::binder::SELECTED_NODE: n});
    }
    typed(c)
}

#[test]
fn claims_decide_where_and_whether_a_vmi_goes() {
    let ns = nodes(&["a", "b"]);
    let classes: Vec<StorageClass> = vec![
        typed(json!({"metadata": {"name": "now"}, "provisioner": "p", "volumeBindingMode": "Immediate"})),
        typed(json!({"metadata": {"name": "later"}, "provisioner": "p", "volumeBindingMode": "WaitForFirstConsumer"})),
    ];
    let pinned: PersistentVolume = typed(json!({"metadata": {"name": "pv"}, "spec": {"nodeAffinity": {"required": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["b"]}]}]}}}}));
    let place_with = |c: Option<PersistentVolumeClaim>| {
        let claims: Vec<PersistentVolumeClaim> = c.into_iter().collect();
        let cluster = Cluster {
            nodes: ns.iter().collect(),
            claims: claims.iter().collect(),
            volumes: vec![&pinned],
            classes: classes.iter().collect(),
            ..Default::default()
        };
        place(&with_claim(), &cluster)
    };
    assert_eq!(place_with(None), Err("0/2 nodes are available: persistentvolumeclaim \"data\" not found.".into()));
    assert_eq!(
        place_with(Some(claim("now", None, None))),
        Err("0/2 nodes are available: pod has unbound immediate PersistentVolumeClaims.".into())
    );
    let bound = place_with(Some(claim("now", Some("pv"), None))).unwrap();
    assert_eq!(
        (bound.node.as_str(), bound.provision.is_empty(), bound.waiting),
        ("b", true, false),
        "the volume pins it"
    );
    let first = place_with(Some(claim("later", None, None))).unwrap();
    assert_eq!(first.provision, vec!["data".to_string()], "its volume is to be made where it goes");
    let chosen = place_with(Some(claim("later", None, Some("a")))).unwrap();
    assert_eq!((chosen.node.as_str(), chosen.waiting), ("a", true), "it waits on the node selected for its volume");
}

#[test]
fn large_clusters_score_a_share_of_their_nodes_but_search_all_for_a_fit() {
    assert_eq!(feasible_to_find(99), 99, "small clusters: every node");
    assert_eq!(feasible_to_find(100), 100);
    assert_eq!(feasible_to_find(1000), 420, "50% less a point per 125 nodes");
    assert_eq!(feasible_to_find(10_000), 500, "never under 5%");
    // Among 300 nodes only the last fits: the search goes on past the share until it finds it.
    let mut ns: Vec<Node> = (0..300).map(|i| typed(node_json(&format!("n{i:03}")))).collect();
    for n in &mut ns[..299] {
        n.spec = Some(typed(json!({"unschedulable": true})));
    }
    for tiebreak in [0, 150, 299] {
        let cluster = Cluster { nodes: ns.iter().collect(), tiebreak, ..Default::default() };
        assert_eq!(schedule(&typed(vmi_json("v")), &cluster), Ok("n299".into()), "tiebreak {tiebreak}");
    }
    ns[299].spec = Some(typed(json!({"unschedulable": true})));
    let cluster = Cluster { nodes: ns.iter().collect(), ..Default::default() };
    assert_eq!(
        schedule(&typed(vmi_json("v")), &cluster),
        Err("0/300 nodes are available: 300 node(s) were unschedulable.".into())
    );
}
