//! Readiness and liveness probes on real guests, run by the node agent: each kind (httpGet, tcpSocket, exec,
//! guestAgentPing) passes and fails; Ready follows readiness; a failed liveness probe fails the VMI and its VM
//! starts a new one; an exec probe whose command hangs, or whose guest agent goes away, fails with the reason
//! and leaves the guest running. Needs root, QEMU and the test guest + registry that scripts/setup.sh prepares.

use kumo_e2e::{eventually, Server};
use std::time::Duration;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A VM serving HTTP on 8080 with `probes` (YAML under the template's spec, indented 6).
fn vm(name: &str, probes: &str) -> String {
    format!(
        r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {{name: {name}}}
spec:
  runStrategy: Always
  template:
    spec:
      terminationGracePeriodSeconds: 2
      domain:
        memory: {{guest: 192Mi}}
        devices:
          disks:
          - {{name: root, disk: {{bus: virtio}}}}
          interfaces:
          - name: default
            masquerade: {{}}
            ports: [{{name: http, port: 8080}}]
      networks:
      - {{name: default, pod: {{}}}}
      volumes:
      - {{name: root, containerDisk: {{image: quay.io/kumo/test-guest:latest}}}}
{probes}"#
    )
}

fn get(s: &Server, args: &[&str]) -> String {
    s.kubectl_ok(args).unwrap_or_else(|e| panic!("kubectl {args:?} failed (is the server alive?): {e}"))
}

fn ready(s: &Server, vmi: &str) -> String {
    get(s, &["get", "vmi", vmi, "-o", r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#])
}

/// Waits for the VMI's Ready condition to be `want`.
fn wait_ready_is(s: &Server, vmi: &str, want: &str, timeout: Duration) {
    let ok = eventually(timeout, || (ready(s, vmi) == want).then_some(()));
    assert!(ok.is_some(), "{vmi}: Ready never became {want}: {}", get(s, &["describe", "vmi", vmi]));
}

fn wait_running(s: &Server, vmi: &str) {
    let ok = eventually(secs(180), || {
        (get(s, &["get", "vmi", vmi, "-o", "jsonpath={.status.phase}"]) == "Running").then_some(())
    });
    assert!(ok.is_some(), "{vmi} not Running: {}", get(s, &["describe", "vmi", vmi]));
}

fn events_of(s: &Server, name: &str) -> String {
    get(s, &["get", "events", "--field-selector", &format!("involvedObject.name={name}")])
}

#[test]
fn http_and_tcp_probes_drive_ready_and_a_failed_liveness_probe_restarts_the_vm() {
    let s = Server::start_with_guests(&[]).unwrap();
    let probes = "      readinessProbe:\n        httpGet: {port: http, path: /ready.txt}\n        \
                  periodSeconds: 1\n        timeoutSeconds: 3\n        failureThreshold: 2\n      \
                  livenessProbe:\n        tcpSocket: {port: 8080}\n        initialDelaySeconds: 30\n        \
                  periodSeconds: 1\n        timeoutSeconds: 3\n        failureThreshold: 3\n";
    s.apply(&vm("web", probes)).unwrap();
    wait_running(&s, "web");
    // Running, but /ready.txt is missing (404): not Ready.
    std::thread::sleep(secs(3));
    assert_eq!(ready(&s, "web"), "False", "{}", get(&s, &["describe", "vmi", "web"]));
    let why = get(&s, &["get", "vmi", "web", "-o", r#"jsonpath={.status.conditions[?(@.type=="Ready")].message}"#]);
    assert!(why.contains("readiness probe"), "{why}");
    s.in_guest("web", "echo ok > /www/ready.txt", secs(90));
    wait_ready_is(&s, "web", "True", secs(60));
    get(&s, &["wait", "vm", "web", "--for=condition=Ready", "--timeout=30s"]);
    s.in_guest("web", "rm /www/ready.txt", secs(90));
    wait_ready_is(&s, "web", "False", secs(60));
    let events = events_of(&s, "web");
    assert!(events.contains("Readiness probe failed") && events.contains("statuscode: 404"), "{events}");

    // The web server stops: the tcpSocket liveness probe fails, the VMI fails, and the VM makes a new one.
    let uid = get(&s, &["get", "vmi", "web", "-o", "jsonpath={.metadata.uid}"]);
    let mut c = s.console("web");
    assert!(c.run("true", secs(60)).is_some(), "the guest's console answers");
    c.send("killall httpd");
    let failed = eventually(secs(90), || {
        let events = events_of(&s, "web");
        events.contains("Liveness probe failed").then_some(events)
    });
    let _ = c.close();
    assert!(failed.is_some(), "no liveness failure: {}", events_of(&s, "web"));
    let restarted = eventually(secs(180), || {
        // Between the failed VMI's deletion and its successor's creation there is no VMI.
        let now =
            get(&s, &["get", "vmi", "web", "-o", "jsonpath={.metadata.uid} {.status.phase}", "--ignore-not-found"]);
        (!now.starts_with(&uid) && now.ends_with("Running")).then_some(now)
    });
    assert!(restarted.is_some(), "no new VMI: {}", get(&s, &["describe", "vm", "web"]));
    // The new guest's web server answers again (no /ready.txt yet: not Ready, as a fresh guest should be).
    wait_ready_is(&s, "web", "False", secs(30));
}

#[test]
fn exec_and_guest_agent_probes_pass_fail_and_never_harm_the_guest() {
    let s = Server::start_with_guests(&[]).unwrap();
    let probes = "      readinessProbe:\n        exec: {command: [cat, /tmp/healthy]}\n        \
                  periodSeconds: 1\n        timeoutSeconds: 5\n        failureThreshold: 1\n      \
                  livenessProbe:\n        guestAgentPing: {}\n        initialDelaySeconds: 60\n        \
                  periodSeconds: 2\n        timeoutSeconds: 5\n        failureThreshold: 20\n";
    s.apply(&vm("agent", probes)).unwrap();
    wait_running(&s, "agent");
    std::thread::sleep(secs(3));
    assert_eq!(ready(&s, "agent"), "False", "no /tmp/healthy yet");
    s.in_guest("agent", "touch /tmp/healthy", secs(90));
    wait_ready_is(&s, "agent", "True", secs(90));
    let uid = get(&s, &["get", "vmi", "agent", "-o", "jsonpath={.metadata.uid}"]);

    // The command exits non-zero: not Ready, with the exit status.
    s.in_guest("agent", "rm /tmp/healthy", secs(90));
    wait_ready_is(&s, "agent", "False", secs(60));
    let events = events_of(&s, "agent");
    assert!(events.contains("exited with 1"), "{events}");

    // The guest agent goes away mid-probe: the exec probe fails with the reason; the guest keeps running.
    s.in_guest("agent", "touch /tmp/healthy", secs(90));
    wait_ready_is(&s, "agent", "True", secs(60));
    s.in_guest("agent", "kill $(cat /run/qemu-ga.pid)", secs(90));
    wait_ready_is(&s, "agent", "False", secs(60));
    let why = get(&s, &["get", "vmi", "agent", "-o", r#"jsonpath={.status.conditions[?(@.type=="Ready")].message}"#]);
    assert!(why.contains("guest agent") || why.contains("timed out"), "the reason names the agent: {why}");
    let still = get(&s, &["get", "vmi", "agent", "-o", "jsonpath={.metadata.uid} {.status.phase}"]);
    assert_eq!(still, format!("{uid} Running"), "the same guest runs on");
    assert_eq!(s.in_guest("agent", "echo alive", secs(90)), "alive", "the guest answers");

    // With its agent gone, the guestAgentPing liveness probe fails too: after failureThreshold failures the
    // VMI fails and its VM starts a new one.
    let restarted = eventually(secs(180), || {
        let now = get(&s, &["get", "vmi", "agent", "-o", "jsonpath={.metadata.uid}", "--ignore-not-found"]);
        (!now.is_empty() && now != uid).then_some(now)
    });
    let events = events_of(&s, "agent");
    assert!(restarted.is_some(), "the failed guestAgentPing never restarted the guest: {events}");
    assert!(events.contains("LivenessProbe") || events.contains("Liveness"), "{events}");
}
