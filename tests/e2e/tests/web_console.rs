//! The web console at `/ui/`, used in headless Chromium (Debian's `chromium`, driven by Playwright:
//! `ui/tests/console.mjs`) against a real guest: login by bearer token, the VM seen Running through watches, a
//! line read from its serial console in the page, its screen over VNC, stop and start, events, create from the
//! form and a refusal, and the server SIGKILLed and restarted under the open page (its watches follow it back).
//! What the page did is checked here again through kubectl, and its screenshots are kept under
//! `target/ui-screenshots/`. Also: the assets are served without a token and nothing else is, and a browser's
//! WebSocket bearer subprotocol authenticates without reaching the node. Needs root, QEMU, the test guest +
//! registry, Chromium and the built console (scripts/setup.sh does all of it).

use kumo_e2e::{fleet, Server};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn get(s: &Server, args: &[&str]) -> String {
    s.kubectl_ok(args).unwrap_or_else(|e| panic!("kubectl {args:?} failed (is the server alive?): {e}"))
}

fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ui")
}

/// Status and body of an HTTPS GET to the server, trusting its CA, with optional extra curl arguments.
fn curl(s: &Server, path: &str, extra: &[&str]) -> (String, String) {
    let ca = s.data_dir().join("ca-for-curl.crt");
    if !ca.exists() {
        std::fs::write(&ca, s.ca_pem().expect("the server's CA")).unwrap();
    }
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
        .arg(&ca)
        .args(extra)
        .arg(format!("{}{path}", s.url()))
        .output()
        .expect("curl (scripts/setup.sh installs it)");
    assert!(out.status.success(), "curl {path}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').expect("curl printed the code");
    (code.to_string(), body.to_string())
}

#[test]
fn assets_are_public_and_the_websocket_bearer_subprotocol_authenticates() {
    let s = Server::start().unwrap();
    let (code, body) = curl(&s, "/ui/", &[]);
    assert_eq!(code, "200", "the console is not built into kumo: run scripts/build-ui.sh, then build kumo\n{body}");
    assert!(body.contains("<script type=\"module\" src=\"app.js\">"), "{body}");
    let (code, _) = curl(&s, "/ui/vendor/xterm/xterm.mjs", &[]);
    assert_eq!(code, "200");
    let (code, _) = curl(&s, "/ui/vendor/novnc/core/rfb.js", &[]);
    assert_eq!(code, "200");
    let (code, body) = curl(&s, "/ui/../api/v1/namespaces", &["--path-as-is"]);
    assert_ne!(code, "200", "no API data without a token: {body}");
    let (code, _) = curl(&s, "/ui/no-such-file.js", &[]);
    assert_eq!(code, "404");
    // The token as Kubernetes' WebSocket subprotocol is a credential (a wrong one is not).
    let token = s.admin_token().expect("the admin token");
    use base64::Engine;
    let proto = |t: &str| {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(t.trim());
        format!("Sec-WebSocket-Protocol: plain.kubevirt.io, base64url.bearer.authorization.k8s.io.{b64}")
    };
    let (code, body) = curl(&s, "/api/v1/namespaces", &["-H", &proto(&token)]);
    assert_eq!(code, "200", "{body}");
    let (code, _) = curl(&s, "/api/v1/namespaces", &["-H", &proto("wrong")]);
    assert_eq!(code, "401");
}

#[test]
fn a_browser_logs_in_stops_and_starts_a_vm_and_reads_its_serial_console() {
    let found = Command::new("/usr/bin/chromium").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "chromium not found: install it (scripts/setup.sh does: apt-get install chromium)"
    );
    assert!(
        ui_dir().join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run scripts/build-ui.sh (npm ci in ui/)"
    );
    let mut s = Server::start_with_guests(&[]).unwrap();
    s.apply(&fleet::vm("webvm", "", "            #!/bin/sh\n            echo web-console-guest")).unwrap();
    // Running before the browser starts: the node's network is then set up (Chromium drops requests in flight
    // when the host's interfaces change).
    s.wait_vmi_ready("webvm", Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("{e:#}: {}", get(&s, &["describe", "vmi", "webvm"])));
    let uid_before = get(&s, &["get", "vm", "webvm", "-o", "jsonpath={.metadata.uid}"]);
    let token = s.admin_token().expect("the admin token");
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    for old in std::fs::read_dir(&shots).unwrap().flatten() {
        let _ = std::fs::remove_file(old.path());
    }
    let started = std::time::Instant::now();
    let mut node = Command::new("node")
        .current_dir(ui_dir())
        .arg("tests/console.mjs")
        .args([&s.url(), &token, "webvm"])
        .arg(&shots)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node (scripts/build-ui.sh installs it)");
    let mut said = String::new();
    let mut lines = BufReader::new(node.stdout.take().expect("stdout"));
    let mut line = String::new();
    while lines.read_line(&mut line).expect("reading the browser test's output") > 0 {
        said.push_str(&line);
        if line.trim() == "READY-FOR-RESTART" {
            // SIGKILL under the open page; a VM made once it is back must reach the page by its watches.
            s.restart().unwrap_or_else(|e| panic!("restarting kumo: {e:#}\n{}", s.log()));
            s.apply(&fleet::vm("after-restart", "", "").replace("runStrategy: Always", "runStrategy: Halted")).unwrap();
            let mut stdin = node.stdin.take().expect("stdin");
            writeln!(stdin, "restarted").expect("telling the browser test");
        }
        line.clear();
    }
    let status = node.wait().expect("node");
    let mut err = String::new();
    node.stderr.take().expect("stderr").read_to_string(&mut err).expect("reading node's stderr");
    said.push_str(&err);
    assert!(status.success(), "the browser test failed after {:?}:\n{said}", started.elapsed());
    assert!(said.contains("web console: all steps passed"), "{said}");

    // What the page did, seen from outside it.
    for name in [
        "2-running",
        "3-serial-console",
        "3b-vnc",
        "4-stopped",
        "5-started-again",
        "6-events",
        "8-after-server-restart",
    ] {
        let p = shots.join(format!("{name}.png"));
        let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(size > 5_000, "screenshot {} missing or empty", p.display());
    }
    assert_eq!(get(&s, &["get", "vm", "webvm", "-o", "jsonpath={.metadata.uid}"]), uid_before);
    let starts = get(
        &s,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=webvm,reason=Started",
            "-o",
            "jsonpath={.items[*].count}",
        ],
    );
    let total: u64 = starts.split_whitespace().filter_map(|n| n.parse::<u64>().ok()).sum();
    assert!(total >= 2, "started, stopped from the page and started again: Started counts {starts:?}");
    let strategy = get(&s, &["get", "vm", "from-the-form", "-o", "jsonpath={.spec.runStrategy}"]);
    assert_eq!(strategy, "Halted", "the VM the form made, not started");
    let bad = s.kubectl(&["get", "vm", "bad-memory"]).unwrap();
    assert!(!bad.status.success(), "the refused VM was not stored");
    s.wait_vmi_ready("webvm", Duration::from_secs(60)).expect("the VM the page started again runs");
}
