//! KubeVirt's subresources that virtctl uses, against a real guest through the real `kumo` CLI and kubectl:
//! version and healthz, port forwarding (an HTTP request to the guest's web server), VNC (an RFB handshake
//! and a framebuffer update), soft reboot and reset (a new boot id each), and the clear 4xx answers for a bad
//! port, a paused or stopped guest, a missing guest agent, and what kumo has not (yet). Sessions end with a
//! reason when their guest stops. Needs root, QEMU and the test guest + registry that scripts/setup.sh
//! prepares.

use kumo_e2e::{eventually, fleet, kumo_bin, Server};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SUB: &str = "/apis/subresources.kubevirt.io/v1";

fn get(s: &Server, args: &[&str]) -> String {
    s.kubectl_ok(args).unwrap_or_else(|e| panic!("kubectl {args:?} failed (is the server alive?): {e}"))
}

/// A `kumo` command left running (port-forward, vnc), with the first line it printed.
struct Running {
    child: Child,
    first_line: String,
    /// Kept open: kumo fails writing to a closed stdout.
    _out: BufReader<std::process::ChildStdout>,
    /// Where its stderr goes, readable while it runs.
    stderr: tempfile::NamedTempFile,
}

impl Running {
    fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).expect("reading kumo's stderr file")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_kumo(s: &Server, args: &[&str]) -> Running {
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(kumo_bin())
        .args(args)
        .arg("--kubeconfig")
        .arg(s.kubeconfig())
        .stdout(Stdio::piped())
        .stderr(stderr.reopen().unwrap())
        .spawn()
        .expect("running kumo");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first_line = String::new();
    out.read_line(&mut first_line).expect("reading kumo's output");
    if first_line.is_empty() {
        let _ = child.wait();
        let err = std::fs::read_to_string(stderr.path()).expect("reading kumo's stderr file");
        panic!("kumo {args:?} printed nothing: {err}");
    }
    Running { child, first_line, _out: out, stderr }
}

/// The local port in a line such as "Forwarding from 127.0.0.1:41234 -> 8080".
fn port_in(line: &str) -> u16 {
    let addr = line.split_whitespace().find(|w| w.starts_with("127.0.0.1:")).unwrap_or_else(|| panic!("{line}"));
    addr.trim_start_matches("127.0.0.1:").trim_end_matches(':').parse().unwrap_or_else(|_| panic!("{line}"))
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: guest\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).unwrap_or_else(|e| panic!("reading {n} bytes of RFB: {e}"));
    b
}

/// An RFB 3.8 handshake with no authentication, then one full framebuffer update request; the width and
/// height the server announced and the first server message's type.
fn rfb_session(port: u16) -> (u16, u16, u8) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let greeting = read_exact(&mut s, 12);
    assert_eq!(&greeting, b"RFB 003.008\n", "QEMU's VNC server greets with RFB 3.8");
    s.write_all(b"RFB 003.008\n").unwrap();
    let n = read_exact(&mut s, 1)[0] as usize;
    let types = read_exact(&mut s, n);
    assert!(types.contains(&1), "security type None offered: {types:?}");
    s.write_all(&[1]).unwrap();
    assert_eq!(read_exact(&mut s, 4), vec![0, 0, 0, 0], "security result OK");
    s.write_all(&[1]).unwrap(); // ClientInit: shared
    let init = read_exact(&mut s, 24);
    let (w, h) = (u16::from_be_bytes([init[0], init[1]]), u16::from_be_bytes([init[2], init[3]]));
    let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]) as usize;
    read_exact(&mut s, name_len);
    // FramebufferUpdateRequest, not incremental, the whole screen.
    let mut req = vec![3u8, 0, 0, 0, 0, 0];
    req.extend_from_slice(&w.to_be_bytes());
    req.extend_from_slice(&h.to_be_bytes());
    s.write_all(&req).unwrap();
    let kind = read_exact(&mut s, 1)[0];
    (w, h, kind)
}

fn boot_id(s: &Server, vmi: &str) -> String {
    let out = s.in_guest(vmi, "cat /proc/sys/kernel/random/boot_id", Duration::from_secs(60));
    let id = out.lines().map(str::trim).find(|l| l.len() == 36 && l.matches('-').count() == 4);
    id.unwrap_or_else(|| panic!("no boot id in {out:?}")).to_string()
}

/// Waits for a boot id other than `old` (the guest rebooted and answers again on the same console).
fn new_boot_id(s: &Server, vmi: &str, old: &str) -> String {
    let mut c = s.console(vmi);
    let found = eventually(Duration::from_secs(180), || {
        let out = c.run("cat /proc/sys/kernel/random/boot_id", Duration::from_secs(15))?;
        let id = out.lines().map(str::trim).find(|l| l.len() == 36 && l.matches('-').count() == 4)?.to_string();
        (id != old).then_some(id)
    });
    let seen = c.seen();
    c.close();
    found.unwrap_or_else(|| panic!("{vmi} did not come back with a new boot id (old {old}): {seen}"))
}

/// A raw request through kubectl: GET, or PUT with an empty JSON body.
fn raw(s: &Server, verb: &str, path: &str) -> std::process::Output {
    match verb {
        "get" => s.kubectl(&["get", "--raw", path]).unwrap(),
        _ => s.kubectl_stdin(&["replace", "--raw", path, "-f", "-"], "{}").unwrap(),
    }
}

/// kubectl's error for a raw request that must fail: its stderr.
fn raw_err(s: &Server, verb: &str, path: &str) -> String {
    let out = raw(s, verb, path);
    assert!(!out.status.success(), "{verb} {path} succeeded: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn raw_ok(s: &Server, verb: &str, path: &str) {
    let out = raw(s, verb, path);
    assert!(out.status.success(), "{verb} {path}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn version_healthz_and_discovery() {
    let s = Server::start().unwrap();
    let v: serde_json::Value = serde_json::from_str(&get(&s, &["get", "--raw", &format!("{SUB}/version")])).unwrap();
    for field in ["gitVersion", "gitCommit", "gitTreeState", "buildDate", "goVersion", "compiler", "platform"] {
        assert!(v[field].is_string(), "version has {field}: {v}");
    }
    let out = s.kumo(&["version"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(&format!("Server Version: {}", v["gitVersion"].as_str().unwrap())),
        "{text}"
    );
    let h: serde_json::Value = serde_json::from_str(&get(&s, &["get", "--raw", &format!("{SUB}/healthz")])).unwrap();
    assert_eq!(h["apiserver"]["connectivity"], "ok");
    let d: serde_json::Value = serde_json::from_str(&get(&s, &["get", "--raw", SUB])).unwrap();
    let names: Vec<&str> = d["resources"].as_array().unwrap().iter().filter_map(|r| r["name"].as_str()).collect();
    for want in [
        "virtualmachineinstances/vnc",
        "virtualmachineinstances/portforward",
        "virtualmachines/portforward",
        "virtualmachineinstances/softreboot",
        "virtualmachineinstances/reset",
        "virtualmachines/migrate",
    ] {
        assert!(names.contains(&want), "discovery lists {want}: {names:?}");
    }
    // What kumo has not yet: a 501 naming it, never a 404; what it never has: KubeVirt's 409.
    let e = raw_err(&s, "put", "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachines/x/migrate");
    assert!(e.contains("live migration"), "{e}");
    let e =
        raw_err(&s, "get", "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/x/usbredir");
    assert!(e.contains("USB Redirection"), "{e}");
    let e = raw_err(&s, "get", "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/x/nosuch");
    assert!(e.contains("NotFound") || e.contains("not find"), "{e}");
}

#[test]
fn port_forward_vnc_reboots_and_refusals_with_a_real_guest() {
    let s = Server::start_with_guests(&[]).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("id");
    let made = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status();
    assert!(made.is_ok_and(|s| s.success()), "ssh-keygen failed: install openssh-client (scripts/setup.sh does)");
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let user_data = format!(
        "            #!/bin/sh\n            echo tools-guest > /www/hello.txt\n            mkdir -p /root/.ssh\n            echo '{}' > /root/.ssh/authorized_keys\n            chmod 600 /root/.ssh/authorized_keys",
        public.trim()
    );
    // Masquerade forwards only the ports a VM names (as KubeVirt's does): SSH too.
    let vm = fleet::vm("tools", "", &user_data)
        .replace("- {name: http, port: 8080}", "- {name: http, port: 8080}\n            - {name: ssh, port: 22}");
    assert!(vm.contains("name: ssh"), "{vm}");
    s.apply(&vm).unwrap();
    s.wait_vmi_ready("tools", Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("{e:#}: {}", get(&s, &["describe", "vmi", "tools"])));
    let vmi_path = format!("{SUB}/namespaces/default/virtualmachineinstances/tools");

    // Port forwarding, to the VM (as `virtctl port-forward vm/...` does): the guest's web server answers.
    let pf = spawn_kumo(&s, &["port-forward", "vm/tools", "0:8080"]);
    let port = port_in(&pf.first_line);
    let page = eventually(Duration::from_secs(60), || {
        let r = http_get(port, "/hello.txt");
        r.contains("tools-guest").then_some(r)
    });
    assert!(page.is_some(), "the guest's page through port-forward: {}", http_get(port, "/hello.txt"));

    // VNC: the greeting, a handshake and a framebuffer update (message type 0) from the guest's screen.
    let vnc = spawn_kumo(&s, &["vnc", "vmi/tools"]);
    let (w, h, kind) = rfb_session(port_in(&vnc.first_line));
    assert!(w >= 320 && h >= 200, "a screen of {w}x{h}");
    assert_eq!(kind, 0, "the first server message is a FramebufferUpdate");

    // Bad input: a port that is no port, one nothing listens on, a paused guest.
    let e = raw_err(&s, "get", &format!("{vmi_path}/portforward/0"));
    assert!(e.contains("invalid port"), "{e}");
    let e = raw_err(&s, "get", &format!("{vmi_path}/portforward/22/sctp"));
    assert!(e.contains("invalid protocol"), "{e}");
    let refused = Command::new(kumo_bin())
        .args(["port-forward", "--stdio", "vmi/tools", "9", "--kubeconfig"])
        .arg(s.kubeconfig())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("dialing the guest"), "{err}");
    raw_ok(&s, "put", &format!("{vmi_path}/pause"));
    let e = raw_err(&s, "get", &format!("{vmi_path}/portforward/8080"));
    assert!(e.contains("paused"), "{e}");
    raw_ok(&s, "put", &format!("{vmi_path}/unpause"));

    // SSH and scp with OpenSSH, through `kumo port-forward --stdio` as their ProxyCommand.
    let first = boot_id(&s, "tools");
    let ssh_opts = [
        "-i",
        key.to_str().unwrap(),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
    ];
    let openssh = |verb: &str, args: &[&str]| {
        let mut c = Command::new(kumo_bin());
        c.args([verb, "--kubeconfig", s.kubeconfig().to_str().unwrap()]).args(ssh_opts).args(args).stdin(Stdio::null());
        let out = c.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "kumo {verb} {args:?}: {}{text}", String::from_utf8_lossy(&out.stderr));
        text
    };
    let said = openssh("ssh", &["root@vmi/tools", "cat /proc/sys/kernel/random/boot_id"]);
    assert_eq!(said.trim(), first, "ssh ran the command in the guest");
    let local = keys.path().join("payload.txt");
    std::fs::write(&local, "copied by kumo scp\n").unwrap();
    openssh("scp", &["-O", local.to_str().unwrap(), "root@vm/tools:/tmp/payload.txt"]);
    let back = keys.path().join("back.txt");
    openssh("scp", &["-O", "root@vmi/tools/default:/tmp/payload.txt", back.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "copied by kumo scp\n");

    // A soft reboot goes through the guest agent; a reset is QEMU's. Each gives a new boot id.
    let out = s.kumo(&["soft-reboot", "tools"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let second = new_boot_id(&s, "tools", &first);
    let out = s.kumo(&["reset", "tools"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let third = new_boot_id(&s, "tools", &second);
    assert_ne!(first, third);

    // Without its guest agent, guest questions and soft reboots are refused with the reason.
    s.in_guest("tools", "kill $(cat /run/qemu-ga.pid); echo killed-ga", Duration::from_secs(30));
    let gone = eventually(Duration::from_secs(120), || {
        let c = get(
            &s,
            &["get", "vmi", "tools", "-o", "jsonpath={.status.conditions[?(@.type==\"AgentConnected\")].status}"],
        );
        (c != "True").then_some(())
    });
    assert!(gone.is_some(), "AgentConnected stayed True after the guest agent was killed");
    let e = raw_err(&s, "get", &format!("{vmi_path}/guestosinfo"));
    assert!(e.contains("guest agent"), "{e}");
    let e = raw_err(&s, "put", &format!("{vmi_path}/softreboot"));
    assert!(e.contains("guest agent"), "{e}");

    // A session open when its guest stops ends with the reason, and a stopped VM's subresources say so.
    let held = spawn_kumo(&s, &["port-forward", "vmi/tools", "0:8080"]);
    let mut conn = TcpStream::connect(("127.0.0.1", port_in(&held.first_line))).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let out = s.kumo(&["stop", "tools"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut rest = Vec::new();
    let ended = conn.read_to_end(&mut rest);
    assert!(ended.is_ok(), "the forwarded connection ended instead of hanging: {ended:?}");
    // The guest's side closes as it shuts down, or the agent sees the VMI gone first: either is said.
    let said = eventually(Duration::from_secs(10), || {
        let err = held.stderr();
        (err.contains("the VMI stopped") || err.contains("the guest side closed")).then_some(())
    });
    assert!(said.is_some(), "port-forward said why the session ended: {}", held.stderr());
    let stopped = eventually(Duration::from_secs(120), || {
        let e = raw_err(&s, "get", &format!("{SUB}/namespaces/default/virtualmachines/tools/portforward/8080"));
        (e.contains("not started") || e.contains("not running")).then_some(e)
    });
    assert!(stopped.is_some(), "a stopped VM's portforward is refused with the reason");
}

/// `expand-spec` of a stored VM and `expand-vm-spec` of one sent: the flavor applied to the template, the
/// references removed; a missing flavor and a namespace mismatch are refused with the reason.
#[test]
fn expand_spec_applies_the_flavor() {
    let s = Server::start().unwrap();
    s.apply(
        "apiVersion: instancetype.kubevirt.io/v1beta1\nkind: VirtualMachineInstancetype\nmetadata: {name: two}\nspec: {cpu: {guest: 2}, memory: {guest: 320Mi}}\n",
    )
    .unwrap();
    let vm = "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {name: flavored}\nspec:\n  instancetype: {kind: VirtualMachineInstancetype, name: two}\n  preference: {name: linux}\n  runStrategy: Halted\n  template:\n    spec:\n      domain: {devices: {}}\n";
    s.apply(vm).unwrap();
    let out = get(&s, &["get", "--raw", &format!("{SUB}/namespaces/default/virtualmachines/flavored/expand-spec")]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let domain = &v["spec"]["template"]["spec"]["domain"];
    let vcpus = ["sockets", "cores", "threads"].iter().map(|k| domain["cpu"][k].as_u64().unwrap_or(1)).product::<u64>();
    assert_eq!(vcpus, 2, "{v}");
    assert_eq!(domain["memory"]["guest"], "320Mi", "{v}");
    assert!(v["spec"].get("instancetype").is_none() && v["spec"].get("preference").is_none(), "{v}");

    let path = format!("{SUB}/namespaces/default/expand-vm-spec");
    let body = serde_json::json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "x"},
        "spec": {"instancetype": {"name": "u1.small"}, "template": {"spec": {"domain": {"devices": {}}}}}});
    let out = s.kubectl_stdin(&["replace", "--raw", &path, "-f", "-"], &body.to_string()).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["spec"]["template"]["spec"]["domain"]["memory"]["guest"], "2Gi", "u1.small: {v}");
    let missing = body.to_string().replace("u1.small", "no-such-type");
    let out = s.kubectl_stdin(&["replace", "--raw", &path, "-f", "-"], &missing).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no-such-type not found"), "{err}");
    let other = body.to_string().replace(r#""name":"x""#, r#""name":"x","namespace":"other""#);
    let out = s.kubectl_stdin(&["replace", "--raw", &path, "-f", "-"], &other).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("must be empty or match"), "{err}");
}

/// A PUT with `body`: kubectl's stderr on failure.
fn put(s: &Server, path: &str, body: &str) -> Result<(), String> {
    let out = s.kubectl_stdin(&["replace", "--raw", path, "-f", "-"], body).unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn action_bodies_are_kubevirts_options() {
    let s = Server::start().unwrap();
    s.apply(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {name: opts}\nspec:\n  runStrategy: Always\n  template:\n    spec:\n      terminationGracePeriodSeconds: 30\n      domain:\n        memory: {guest: 64Mi}\n        devices: {}\n",
    )
    .unwrap();
    let made =
        kumo_e2e::eventually(Duration::from_secs(30), || s.kubectl_ok(&["get", "vmi", "opts", "-o", "name"]).ok());
    assert!(made.is_some(), "the VM's VMI (Pending: no node here)");
    let vm = format!("{SUB}/namespaces/default/virtualmachines/opts");
    let strategy = || get(&s, &["get", "vm", "opts", "-o", "jsonpath={.spec.runStrategy}"]);

    // What virtctl sends, published fields only; a dry run checks and changes nothing.
    put(
        &s,
        &format!("{vm}/stop"),
        r#"{"kind":"StopOptions","apiVersion":"subresources.kubevirt.io/v1","gracePeriod":0,"dryRun":["All"]}"#,
    )
    .unwrap();
    assert_eq!(strategy(), "Always", "a dry run changed the VM");
    // Refused by name: a field KubeVirt does not define, a wrong type, a start kumo cannot honour.
    let e = put(&s, &format!("{vm}/stop"), r#"{"graceperiod": 3}"#).unwrap_err();
    assert!(e.contains("StopOptions: unknown field \"graceperiod\""), "{e}");
    let e = put(&s, &format!("{vm}/restart"), r#"{"gracePeriodSeconds": "now"}"#).unwrap_err();
    assert!(e.contains("RestartOptions.gracePeriodSeconds: expected integer"), "{e}");
    let e = put(&s, &format!("{vm}/start"), r#"{"paused": true}"#).unwrap_err();
    assert!(e.contains("StartOptions.paused"), "{e}");
    let e = put(&s, &format!("{SUB}/namespaces/default/virtualmachineinstances/opts/pause"), r#"{"dryRun": ["Some"]}"#)
        .unwrap_err();
    assert!(e.contains("PauseOptions.dryRun"), "{e}");
    assert_eq!(strategy(), "Always", "refused requests changed the VM");
    // A stop's grace period becomes the instance's before it is stopped (as KubeVirt does); the VM stops.
    let watch = s
        .kubectl_cmd(&[
            "get",
            "vmi",
            "opts",
            "--watch",
            "-o",
            "jsonpath={.spec.terminationGracePeriodSeconds}{\"\\n\"}",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("kubectl watch");
    std::thread::sleep(Duration::from_millis(500));
    put(&s, &format!("{vm}/stop"), r#"{"gracePeriod": 3}"#).unwrap();
    assert_eq!(strategy(), "Halted");
    let gone = kumo_e2e::eventually(Duration::from_secs(30), || {
        s.kubectl_ok(&["get", "vmi", "opts", "--ignore-not-found", "-o", "name"]).ok().filter(|o| o.trim().is_empty())
    });
    assert!(gone.is_some(), "the VMI was stopped");
    let mut watch = watch;
    let _ = watch.kill();
    let mut seen = String::new();
    watch.stdout.take().unwrap().read_to_string(&mut seen).unwrap();
    assert!(seen.lines().any(|l| l.trim() == "3"), "the VMI took the stop's grace period: {seen:?}");
}
