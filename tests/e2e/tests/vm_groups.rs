//! VM groups on real guests: a VirtualMachineInstanceReplicaSet scales through the scale subresource, replaces a
//! guest killed from outside, survives its controller being SIGKILLed mid-scale without making too many, and
//! refuses a selector its template does not match. Needs root, QEMU and the test guest + registry that
//! scripts/setup.sh prepares.

use kumo_e2e::{eventually, Server};
use std::time::Duration;

/// KubeVirt's documented VMIRS example, with the test guest for the demo image.
const REPLICA_SET: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstanceReplicaSet
metadata:
  name: testreplicaset
spec:
  replicas: 1
  selector:
    matchLabels:
      myvmi: myvmi
  template:
    metadata:
      name: test
      labels:
        myvmi: myvmi
    spec:
      terminationGracePeriodSeconds: 5
      domain:
        devices:
          disks:
          - disk:
            name: containerdisk
        resources:
          requests:
            memory: 192M
      volumes:
      - name: containerdisk
        containerDisk:
          image: quay.io/kumo/test-guest:latest
"#;

fn get(s: &Server, args: &[&str]) -> String {
    s.kubectl_ok(args).unwrap_or_else(|e| panic!("kubectl {args:?} failed (is the server alive?): {e}"))
}

fn field(s: &Server, path: &str) -> String {
    get(s, &["get", "vmirs", "testreplicaset", "-o", &format!("jsonpath={path}")])
}

/// The group's VMIs that are not being deleted: (name, uid).
fn members(s: &Server) -> Vec<(String, String)> {
    let out = get(
        s,
        &[
            "get",
            "vmi",
            "-l",
            "myvmi=myvmi",
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name} {.metadata.uid} {.metadata.deletionTimestamp}{"\n"}{end}"#,
        ],
    );
    out.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (name, uid) = (f.next()?, f.next()?);
            f.next().is_none().then(|| (name.to_string(), uid.to_string()))
        })
        .collect()
}

/// Waits for `n` Ready replicas, and `n` members, describing the group if it does not get there.
fn wait_ready_replicas(s: &Server, n: usize, secs: u64) {
    let ok = eventually(Duration::from_secs(secs), || {
        let ready = field(s, "{.status.readyReplicas}");
        (ready == n.to_string() && members(s).len() == n).then_some(())
    });
    assert!(
        ok.is_some(),
        "want {n} ready replicas: {}\n{}",
        get(s, &["describe", "vmirs", "testreplicaset"]),
        get(s, &["get", "vmi", "-o", "wide"])
    );
}

fn qemu_pid_of(uid: &str) -> Option<u32> {
    std::fs::read_dir("/proc").unwrap().flatten().find_map(|p| {
        let cmd = std::fs::read(p.path().join("cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd);
        (cmd.contains("qemu-system") && cmd.contains(uid)).then(|| p.file_name().to_str()?.parse().ok())?
    })
}

fn qemu_count(uids: &[String]) -> usize {
    uids.iter().filter(|u| qemu_pid_of(u).is_some()).count()
}

#[test]
fn a_replica_set_scales_replaces_a_killed_guest_and_never_overshoots() {
    let mut s = Server::start_with_guests(&[]).unwrap();
    s.apply(REPLICA_SET).unwrap();
    wait_ready_replicas(&s, 1, 180);
    let table = get(&s, &["get", "vmirs"]);
    assert!(table.contains("DESIRED") && table.contains("CURRENT") && table.contains("READY"), "{table}");

    // Scaled out with `kubectl scale` (the scale subresource); its Scale shows the selector, for autoscalers.
    get(&s, &["scale", "vmirs", "testreplicaset", "--replicas=3"]);
    let scale = get(
        &s,
        &[
            "get",
            "--raw",
            "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstancereplicasets/testreplicaset/scale",
        ],
    );
    assert!(scale.contains(r#""replicas":3"#) && scale.contains(r#""selector":"myvmi=myvmi""#), "{scale}");
    wait_ready_replicas(&s, 3, 300);
    let events = get(&s, &["get", "events", "--field-selector", "involvedObject.name=testreplicaset"]);
    assert!(events.contains("SuccessfulCreate"), "{events}");

    // A guest killed from outside: its VMI fails, and the group replaces it.
    let before = members(&s);
    let (victim, victim_uid) = before[0].clone();
    let pid = qemu_pid_of(&victim_uid).unwrap_or_else(|| panic!("no QEMU for {victim}"));
    let killed = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    assert!(killed.success());
    let replaced = eventually(Duration::from_secs(240), || {
        let now = members(&s);
        (now.len() == 3 && !now.iter().any(|(_, u)| *u == victim_uid) && field(&s, "{.status.readyReplicas}") == "3")
            .then_some(now)
    });
    assert!(replaced.is_some(), "{victim} not replaced: {}", get(&s, &["get", "vmi", "-o", "wide"]));

    // The worst moment for the controller: SIGKILLed right after asking for two more. Restarted, it makes
    // exactly the two missing ones — never a fifth or sixth (it counts from a fresh list, not a cache).
    get(&s, &["scale", "vmirs", "testreplicaset", "--replicas=5"]);
    s.kill();
    s.restart().unwrap();
    let mut most = 0;
    let five = eventually(Duration::from_secs(300), || {
        let n = members(&s).len();
        most = most.max(n);
        (n == 5 && field(&s, "{.status.readyReplicas}") == "5").then_some(())
    });
    assert!(five.is_some(), "not 5 ready: {}", get(&s, &["describe", "vmirs", "testreplicaset"]));
    assert_eq!(most, 5, "never more VMIs than replicas");

    // Scaled in: two remain, and the removed guests' QEMUs are gone.
    let all: Vec<String> = members(&s).into_iter().map(|(_, u)| u).collect();
    get(&s, &["scale", "vmirs", "testreplicaset", "--replicas=1"]);
    wait_ready_replicas(&s, 1, 180);
    let gone = eventually(Duration::from_secs(60), || (qemu_count(&all) == 1).then_some(()));
    assert!(gone.is_some(), "QEMUs of removed members still run: {}", qemu_count(&all));

    // Deleting the group takes its VMIs along.
    get(&s, &["delete", "vmirs", "testreplicaset", "--timeout=120s"]);
    let none = eventually(Duration::from_secs(120), || members(&s).is_empty().then_some(()));
    assert!(none.is_some(), "VMIs left: {:?}", members(&s));
    let stopped = eventually(Duration::from_secs(60), || (qemu_count(&all) == 0).then_some(()));
    assert!(stopped.is_some(), "QEMUs left: {}", qemu_count(&all));
}

#[test]
fn a_selector_its_template_does_not_match_is_refused_by_name() {
    let s = Server::start().unwrap();
    let bad = REPLICA_SET.replace("      labels:\n        myvmi: myvmi", "      labels:\n        other: x");
    let out = s.kubectl_stdin(&["apply", "-f", "-"], &bad).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a mismatched selector was accepted");
    assert!(stderr.contains("spec.selector") && stderr.contains("does not match"), "{stderr}");
    let empty = REPLICA_SET.replace("    matchLabels:\n      myvmi: myvmi\n", "    matchLabels: {}\n");
    let out = s.kubectl_stdin(&["apply", "-f", "-"], &empty).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("spec.selector"), "an empty selector: {stderr}");
    // Unknown fields are refused by name, as on every KubeVirt kind kumo serves.
    let unknown = REPLICA_SET.replace("  replicas: 1\n", "  replicas: 1\n  surgeProtector: true\n");
    let out = s.kubectl_stdin(&["apply", "-f", "-"], &unknown).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("surgeProtector"), "{stderr}");
    assert!(get(&s, &["get", "vmirs", "-o", "name"]).is_empty(), "nothing was stored");
}
