//! VirtualMachinePools on real guests: a pool of 4 serving HTTP rolls from v1 to v2 with maxSurge 1 /
//! maxUnavailable 0 while a watcher checks, throughout, that at least 4 of its guests pass their readiness
//! probe and at most 5 QEMUs run; a broken v3 stalls with Progressing=False while v2 keeps serving, and
//! `kumo rollout undo` brings v2 back; scale-in follows the selection policy; autohealing replaces a VM that
//! keeps failing to start; a controller SIGKILLed mid-scale makes no VM too many; a selector the template does not match is refused by name. Needs root, QEMU and the
//! test guest + registry that scripts/setup.sh prepares.

use kumo_e2e::cluster::guests_of;
use kumo_e2e::{eventually, Server};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A pool `web` of `replicas` guests serving `version` over HTTP (cloud-init writes it where the guest's
/// HTTP server shows it), with a readiness probe on that server and kumo's rollout settings.
fn pool(replicas: u32, version: &str, image: &str, extra_spec: &str) -> String {
    format!(
        r#"
apiVersion: pool.kubevirt.io/v1beta1
kind: VirtualMachinePool
metadata:
  name: web
  annotations: {{kubernetes.io/change-cause: "deploy {version}"}}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
{extra_spec}
  virtualMachineTemplate:
    metadata:
      labels: {{app: web}}
    spec:
      runStrategy: Always
      template:
        metadata:
          labels: {{app: web}}
        spec:
          terminationGracePeriodSeconds: 2
          domain:
            memory: {{guest: 160Mi}}
            devices:
              disks:
              - {{name: root, disk: {{bus: virtio}}}}
              - {{name: cloudinit, disk: {{bus: virtio}}}}
              interfaces:
              - name: default
                masquerade: {{}}
                ports: [{{name: http, port: 8080}}]
          networks:
          - {{name: default, pod: {{}}}}
          readinessProbe:
            httpGet: {{port: 8080, path: /}}
            initialDelaySeconds: 1
            periodSeconds: 2
            timeoutSeconds: 5
            failureThreshold: 2
          volumes:
          - {{name: root, containerDisk: {{image: "{image}"}}}}
          - name: cloudinit
            cloudInitNoCloud:
              userData: |
                #!/bin/sh
                echo "version={version}" > /www/userdata.txt
"#
    )
}

const GUEST: &str = "quay.io/kumo/test-guest:latest";

/// A pool in the form of KubeVirt's user guide (v1alpha1, `kubectl get -o yaml` leftovers such as
/// `creationTimestamp: null` included).
const DOCUMENTED: &str = r#"
apiVersion: pool.kubevirt.io/v1alpha1
kind: VirtualMachinePool
metadata:
  name: vm-pool-cirros
spec:
  replicas: 3
  selector:
    matchLabels:
      kubevirt.io/vmpool: vm-pool-cirros
  virtualMachineTemplate:
    metadata:
      creationTimestamp: null
      labels:
        kubevirt.io/vmpool: vm-pool-cirros
    spec:
      runStrategy: Always
      template:
        metadata:
          creationTimestamp: null
          labels:
            kubevirt.io/vmpool: vm-pool-cirros
        spec:
          domain:
            devices:
              disks:
              - disk:
                  bus: virtio
                name: containerdisk
            resources:
              requests:
                memory: 128Mi
          terminationGracePeriodSeconds: 0
          volumes:
          - containerDisk:
              image: kubevirt/cirros-container-disk-demo:latest
            name: containerdisk
"#;
const ROLLING: &str = "  maxUnavailable: 0\n  kumo: {maxSurge: 1, progressDeadlineSeconds: 60}";

fn get(s: &Server, args: &[&str]) -> String {
    s.kubectl_ok(args).unwrap_or_else(|e| panic!("kubectl {args:?} failed (is the server alive?): {e}"))
}

fn kumo(s: &Server, args: &[&str]) -> (bool, String) {
    let out = s.kumo(args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// (name, ready, ip) of each of the pool's VMIs not being deleted, read in one request.
fn vmis(kubeconfig: &PathBuf) -> Option<Vec<(String, bool, String)>> {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "get",
            "vmi",
            "-l",
            "kubevirt.io/vmpool=web",
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status} {.status.interfaces[0].ipAddress} {.metadata.deletionTimestamp}{"\n"}{end}"#,
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Some(
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let deleting = f.len() > 3;
                (!deleting && !f.is_empty())
                    .then(|| (f[0].to_string(), f.get(1) == Some(&"True"), f.get(2).unwrap_or(&"").to_string()))
            })
            .collect(),
    )
}

/// What a guest's HTTP server says (its version line), fetched from this host.
fn served(ip: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut c =
        std::net::TcpStream::connect_timeout(&format!("{ip}:8080").parse().ok()?, Duration::from_secs(2)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    c.read_to_string(&mut body).ok()?;
    body.lines().find(|l| l.starts_with("version=")).map(str::to_string)
}

/// Waits until every one of `n` Ready guests serves `version`.
fn wait_serving(s: &Server, n: usize, version: &str, secs: u64) {
    let want = format!("version={version}");
    let ok = eventually(Duration::from_secs(secs), || {
        let list = vmis(&s.kubeconfig())?;
        let all = list.len() == n && list.iter().all(|(_, ready, ip)| *ready && served(ip).as_deref() == Some(&want));
        all.then_some(())
    });
    assert!(
        ok.is_some(),
        "want {n} guests serving {version}: {:?}\n{}\n{}",
        vmis(&s.kubeconfig()),
        get(s, &["describe", "vmpool", "web"]),
        get(s, &["get", "vm,vmi", "-o", "wide"])
    );
}

/// Samples, until stopped, the fewest Ready guests and the most QEMUs (terminating ones included) at any moment.
struct Watch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<(usize, usize, u64)>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    fn start(s: &Server) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new((usize::MAX, 0, 0)));
        let (kubeconfig, state) = (s.kubeconfig(), s.data_dir().join("agent"));
        let (st, se) = (stop.clone(), seen.clone());
        let handle = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let qemus = guests_of(&state).len();
                let Some(list) = vmis(&kubeconfig) else { continue };
                let ready = list.iter().filter(|(_, r, _)| *r).count();
                let qemus = qemus.max(guests_of(&state).len());
                let mut g = se.lock().unwrap();
                *g = (g.0.min(ready), g.1.max(qemus), g.2 + 1);
            }
        });
        Watch { stop, seen, handle: Some(handle) }
    }

    /// (fewest Ready, most QEMUs, samples).
    fn finish(mut self) -> (usize, usize, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap();
        *self.seen.lock().unwrap()
    }
}

#[test]
fn a_pool_rolls_out_without_dropping_below_capacity_stalls_on_a_broken_template_and_undoes() {
    let s = Server::start_with_guests(&[]).unwrap();
    s.apply(&pool(4, "v1", GUEST, ROLLING)).unwrap();
    wait_serving(&s, 4, "v1", 300);
    let (ok, out) = kumo(&s, &["rollout", "status", "vmpool/web", "--timeout", "2m"]);
    assert!(ok && out.contains("successfully rolled out"), "{out}");
    let names = get(&s, &["get", "vm", "-l", "kubevirt.io/vmpool=web", "-o", "name"]);
    for i in 0..4 {
        assert!(names.contains(&format!("virtualmachine.kubevirt.io/web-{i}")), "indexed names: {names}");
    }
    let finalizers = get(&s, &["get", "vmpool", "web", "-o", "jsonpath={.metadata.finalizers}"]);
    assert!(finalizers.contains("pool.kubevirt.io/finalizer"), "{finalizers}");

    // v1 → v2, watched throughout.
    let watch = Watch::start(&s);
    s.apply(&pool(4, "v2", GUEST, ROLLING)).unwrap();
    let (ok, out) = kumo(&s, &["rollout", "status", "vmpool/web", "--timeout", "15m"]);
    assert!(ok && out.contains("successfully rolled out"), "{out}\n{}", get(&s, &["describe", "vmpool", "web"]));
    wait_serving(&s, 4, "v2", 120);
    let (fewest_ready, most_qemus, samples) = watch.finish();
    assert!(samples > 20, "the watch sampled only {samples} times");
    assert!(fewest_ready >= 4, "at one moment only {fewest_ready} guests were Ready");
    assert!(most_qemus <= 5, "at one moment {most_qemus} QEMUs ran (replicas 4 + maxSurge 1)");
    let up_to_date = get(&s, &["get", "vmpool", "web", "-o", "jsonpath={.status.kumo.updatedReplicas}"]);
    assert_eq!(up_to_date, "4");
    let (ok, history) = kumo(&s, &["rollout", "history", "vmpool/web"]);
    assert!(ok && history.contains("deploy v1") && history.contains("deploy v2"), "{history}");

    // A v3 whose image cannot be pulled: one new VM never gets Ready, nothing old goes, and past its deadline
    // the rollout says it stalled.
    s.apply(&pool(4, "v3", "quay.io/kumo/no-such-image:latest", ROLLING)).unwrap();
    let (ok, out) = kumo(&s, &["rollout", "status", "vmpool/web", "--timeout", "5m"]);
    assert!(!ok && out.contains("exceeded its progress deadline"), "{out}");
    let progressing =
        get(&s, &["get", "vmpool", "web", "-o", r#"jsonpath={.status.conditions[?(@.type=="Progressing")].status}"#]);
    assert_eq!(progressing, "False");
    let list = vmis(&s.kubeconfig()).unwrap();
    let serving_v2 = list.iter().filter(|(_, r, ip)| *r && served(ip).as_deref() == Some("version=v2")).count();
    assert_eq!(serving_v2, 4, "v2 keeps serving: {list:?}");

    // Undo: back to v2; the broken VM goes.
    let (ok, out) = kumo(&s, &["rollout", "undo", "vmpool/web"]);
    assert!(ok && out.contains("rolled back"), "{out}");
    let (ok, out) = kumo(&s, &["rollout", "status", "vmpool/web", "--timeout", "5m"]);
    assert!(ok, "{out}\n{}", get(&s, &["describe", "vmpool", "web"]));
    wait_serving(&s, 4, "v2", 120);
    let vms = get(&s, &["get", "vm", "-l", "kubevirt.io/vmpool=web", "-o", "name"]);
    assert_eq!(vms.lines().count(), 4, "{vms}");

    // Deleting the pool takes its VMs and guests, then the finalizer lets it go.
    get(&s, &["delete", "vmpool", "web", "--timeout=180s"]);
    let state = s.data_dir().join("agent");
    let gone = eventually(Duration::from_secs(120), || guests_of(&state).is_empty().then_some(()));
    assert!(gone.is_some(), "QEMUs left: {:?}", guests_of(&state));
    assert!(get(&s, &["get", "vm", "-o", "name"]).is_empty());
}

#[test]
fn scale_in_follows_the_selection_policy_and_autohealing_replaces_a_failing_vm() {
    let mut s = Server::start_with_guests(&[]).unwrap();
    let policy =
        "  scaleInStrategy:\n    proactive:\n      selectionPolicy:\n        sortPolicy: DescendingOrder\n        \
                  selectors:\n          labelSelector: {matchLabels: {drain: \"yes\"}}";
    s.apply(&pool(3, "v1", GUEST, policy)).unwrap();
    wait_serving(&s, 3, "v1", 300);
    // The worst moment for the controller: SIGKILLed right after asking for two more. Restarted, it makes
    // exactly the missing ones, at the free indexes — never a sixth VM.
    get(&s, &["scale", "vmpool", "web", "--replicas=5"]);
    s.kill();
    s.restart().unwrap();
    let mut most = 0;
    let five = eventually(Duration::from_secs(300), || {
        let names = get(&s, &["get", "vm", "-l", "kubevirt.io/vmpool=web", "-o", "name"]);
        most = most.max(names.lines().count());
        let list = vmis(&s.kubeconfig())?;
        (list.len() == 5 && list.iter().all(|(_, ready, _)| *ready)).then_some(names)
    });
    let names = five.unwrap_or_else(|| panic!("not 5 Ready: {}", get(&s, &["get", "vm,vmi"])));
    assert_eq!(most, 5, "never more VMs than replicas");
    for i in 0..5 {
        assert!(names.contains(&format!("/web-{i}\n")) || names.ends_with(&format!("/web-{i}")), "{names}");
    }
    // web-1 is labelled for removal: it goes first, then the highest index; web-0 stays.
    get(&s, &["label", "vm", "web-1", "drain=yes"]);
    get(&s, &["scale", "vmpool", "web", "--replicas=1"]);
    let ok = eventually(Duration::from_secs(120), || {
        let names = get(&s, &["get", "vm", "-l", "kubevirt.io/vmpool=web", "-o", "name"]);
        (names.trim() == "virtualmachine.kubevirt.io/web-0").then_some(())
    });
    assert!(ok.is_some(), "the selected VM, then DescendingOrder: {}", get(&s, &["get", "vm"]));
    wait_serving(&s, 1, "v1", 60);

    // Autohealing: a VM whose guest keeps failing to start (its image cannot be pulled) is replaced by a new VM
    // once it failed startUpFailureThreshold times in a row.
    let broken = pool(1, "v1", "quay.io/kumo/no-such-image:latest", "  autohealing: {startUpFailureThreshold: 2}")
        .replace("name: web\n", "name: broken\n")
        .replace("app: web", "app: broken");
    s.apply(&broken).unwrap();
    let uid = |s: &Server| {
        get(s, &["get", "vm", "-l", "kubevirt.io/vmpool=broken", "-o", "jsonpath={.items[*].metadata.uid}"])
    };
    let first = eventually(Duration::from_secs(60), || Some(uid(&s)).filter(|u| !u.is_empty())).expect("a VM made");
    let replaced = eventually(Duration::from_secs(240), || {
        let now = uid(&s);
        (!now.is_empty() && now != first).then_some(now)
    });
    let events = get(&s, &["get", "events", "--field-selector", "involvedObject.name=broken"]);
    assert!(replaced.is_some(), "never replaced: {events}\n{}", get(&s, &["get", "vm", "-o", "yaml"]));
    assert!(events.contains("failed to start 2 times in a row"), "{events}");
    // The healthy pool was not touched.
    wait_serving(&s, 1, "v1", 30);
}

#[test]
fn a_pool_whose_selector_misses_its_template_is_refused_by_name() {
    let s = Server::start().unwrap();
    let bad = pool(1, "v1", GUEST, "").replacen("matchLabels: {app: web}", "matchLabels: {app: other}", 1);
    let out = s.kubectl_stdin(&["apply", "-f", "-"], &bad).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("spec.selector") && stderr.contains("does not match"), "{stderr}");
    let zero = pool(1, "v1", GUEST, "  maxUnavailable: 0");
    let out = s.kubectl_stdin(&["apply", "-f", "-"], &zero).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("spec.maxUnavailable"), "{stderr}");
    // v1alpha1 is served too, and the same object reads through both versions.
    let alpha = pool(1, "v1", GUEST, "").replace("pool.kubevirt.io/v1beta1", "pool.kubevirt.io/v1alpha1");
    s.apply(&alpha).unwrap();
    let v = get(&s, &["get", "virtualmachinepools.v1beta1.pool.kubevirt.io", "web", "-o", "jsonpath={.spec.replicas}"]);
    assert_eq!(v, "1");
    let (ok, out) = kumo(&s, &["rollout", "status", "vm/web"]);
    assert!(!ok && out.contains("vmpool/NAME"), "{out}");

    // KubeVirt's documented pool applies unchanged and makes its indexed VMs (no node here: they only exist).
    s.apply(DOCUMENTED).unwrap();
    let made = eventually(Duration::from_secs(60), || {
        let names = get(&s, &["get", "vm", "-l", "kubevirt.io/vmpool=vm-pool-cirros", "-o", "name"]);
        (names.lines().count() == 3).then_some(names)
    });
    let names = made.unwrap_or_else(|| panic!("{}", get(&s, &["describe", "vmpool", "vm-pool-cirros"])));
    assert!(names.contains("vm-pool-cirros-0") && names.contains("vm-pool-cirros-2"), "{names}");
    let table = get(&s, &["get", "vmpool"]);
    assert!(table.contains("DESIRED") && table.contains("vm-pool-cirros"), "{table}");
    // Deleted, the pool takes its VMs first (its finalizer holds it until they are gone).
    get(&s, &["delete", "vmpool", "vm-pool-cirros", "--timeout=60s"]);
    assert!(get(&s, &["get", "vm", "-l", "kubevirt.io/vmpool=vm-pool-cirros", "-o", "name"]).is_empty());
}
