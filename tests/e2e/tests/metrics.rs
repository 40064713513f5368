//! Metrics as monitoring sees them, with a real guest: the node agent's KubeVirt series read through the API
//! server's node proxy (resident memory, vCPU time, tap and disk counters, guest OS labels), the API server's
//! own (requests, stored objects, live watches), and a real Prometheus (Debian's `prometheus`) started with
//! the shipped `monitoring/prometheus.yml` and `monitoring/kumo-rules.yml`, the nodes listed with the
//! command that file gives, scrapes both and answers queries for `kubevirt_vmi_info`, the recorded
//! `kubevirt_vmi_phase_count` and `apiserver_request_total`. A deleted VMI's series go. Needs root, QEMU,
//! Prometheus and the test guest + registry that scripts/setup.sh prepares.

use kumo_e2e::{eventually, fleet, free_port, Server};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn get(s: &Server, args: &[&str]) -> String {
    s.kubectl_ok(args).unwrap_or_else(|e| panic!("kubectl {args:?} failed (is the server alive?): {e}"))
}

/// The value of the one series of `text` whose line starts with `series` (name and labels, in order).
fn value_of(text: &str, series: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with(series))?;
    line.rsplit(' ').next()?.parse().ok()
}

fn monitoring_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../monitoring").join(name)
}

struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Prometheus with the shipped configuration, pointed at `s` with its admin credential, scraping every 2 s.
    fn start(s: &Server) -> Prometheus {
        let found = Command::new("prometheus").arg("--version").output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "prometheus not found: install it (scripts/setup.sh does: apt-get install prometheus)"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), s.ca_pem().expect("the server's CA")).unwrap();
        std::fs::write(dir.path().join("token"), s.admin_token().expect("the admin token")).unwrap();
        std::fs::copy(monitoring_file("kumo-rules.yml"), dir.path().join("kumo-rules.yml")).unwrap();
        let shipped = std::fs::read_to_string(monitoring_file("prometheus.yml")).unwrap();
        let server = s.url().trim_start_matches("https://").to_string();
        let config = shipped
            .replace("SERVER", &server)
            .replace("scrape_interval: 15s", "scrape_interval: 2s\n  evaluation_interval: 2s");
        assert!(config.contains("evaluation_interval: 2s"), "the shipped config changed shape:\n{config}");
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        // The node list, made as the shipped configuration says.
        let nodes =
            get(s, &["get", "nodes", "-o", r#"jsonpath={range .items[*]}- targets: [{.metadata.name}]{"\n"}{end}"#]);
        assert!(nodes.starts_with("- targets: ["), "{nodes}");
        std::fs::write(dir.path().join("kumo-nodes.yml"), nodes).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .current_dir(dir.path())
            .arg("--config.file=prometheus.yml")
            .arg("--storage.tsdb.path=data")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        Prometheus { child, port, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).expect("reading prometheus' log")
    }

    /// The result vector of an instant query (None while Prometheus does not answer).
    fn query(&self, q: &str) -> Option<Vec<Value>> {
        let mut enc = String::new();
        for b in q.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => enc.push(b as char),
                _ => enc.push_str(&format!("%{b:02X}")),
            }
        }
        let mut c = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(c, "GET /api/v1/query?query={enc} HTTP/1.0\r\nHost: prometheus\r\n\r\n").ok()?;
        let mut out = String::new();
        c.read_to_string(&mut out).ok()?;
        // 503 while Prometheus is still starting (its storage not open yet): not an answer yet.
        if out.split(' ').nth(1) == Some("503") {
            return None;
        }
        let body = out.split_once("\r\n\r\n")?.1;
        let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(v["status"], "success", "query {q}: {out}");
        v["data"]["result"].as_array().cloned()
    }

    /// Waits for a query to return at least one series.
    fn wait_for(&self, q: &str) -> Vec<Value> {
        eventually(Duration::from_secs(90), || self.query(q).filter(|r| !r.is_empty())).unwrap_or_else(|| {
            let up = self.query("up");
            panic!("no series for {q} (up: {up:?}); prometheus log:\n{}", self.log())
        })
    }
}

#[test]
fn prometheus_scrapes_the_api_server_and_the_node_agent_under_kubevirt_names() {
    let s = Server::start_with_guests(&[]).unwrap();
    let node = s.node_name();
    s.apply(&fleet::vm("metrics", "", "            #!/bin/sh\n            echo metrics-guest")).unwrap();
    s.wait_vmi_ready("metrics", Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("{e:#}: {}", get(&s, &["describe", "vmi", "metrics"])));
    // The guest agent's OS info labels kubevirt_vmi_info: wait until the agent has reported it.
    let os = eventually(Duration::from_secs(90), || {
        let n = get(&s, &["get", "vmi", "metrics", "-o", "jsonpath={.status.guestOSInfo.name}"]);
        (!n.trim().is_empty()).then(|| n.trim().to_string())
    });
    let os = os.unwrap_or_else(|| panic!("no guestOSInfo: {}", get(&s, &["get", "vmi", "metrics", "-o", "yaml"])));

    // The agent's series, through the API server's node proxy.
    let proxy = format!("/api/v1/nodes/{node}/proxy/metrics");
    let labels = format!(r#"{{node="{node}",namespace="default",name="metrics""#);
    let text = get(&s, &["get", "--raw", &proxy]);
    let info = format!(r#"kubevirt_vmi_info{labels},phase="running","#);
    let line = text.lines().find(|l| l.starts_with(&info)).unwrap_or_else(|| panic!("no {info} in\n{text}"));
    assert!(line.contains(&format!(r#"guest_os_name="{os}""#)) && line.ends_with(" 1"), "{line}");
    let rss = value_of(&text, &format!("kubevirt_vmi_memory_resident_bytes{labels}}}")).expect("resident memory");
    assert!(rss > 16e6, "QEMU with a 256 MiB guest holds more than 16 MB resident: {rss}");
    let cpu = value_of(&text, &format!(r#"kubevirt_vmi_vcpu_seconds_total{labels},id="0",state="running"}}"#));
    assert!(cpu.is_some_and(|c| c > 0.0), "vCPU 0 has run a booted guest: {cpu:?}\n{text}");
    // The guest got its address by DHCP through the tap, and read its root disk.
    let rx = value_of(&text, &format!(r#"kubevirt_vmi_network_receive_bytes_total{labels},interface="default"}}"#));
    assert!(rx.is_some_and(|b| b > 0.0), "the guest received its DHCP answer: {rx:?}\n{text}");
    let read =
        value_of(&text, &format!(r#"kubevirt_vmi_storage_read_traffic_bytes_total{labels},drive="containerdisk"}}"#));
    assert!(read.is_some_and(|b| b > 1e6), "the guest booted from its disk: {read:?}\n{text}");

    // The API server's own.
    let own = get(&s, &["get", "--raw", "/metrics"]);
    let vms = value_of(&own, r#"apiserver_resource_objects{group="kubevirt.io",resource="virtualmachines"}"#);
    assert_eq!(vms, Some(1.0), "one VM stored:\n{own}");
    let watches = value_of(
        &own,
        r#"apiserver_longrunning_requests{verb="WATCH",group="kubevirt.io",resource="virtualmachineinstances"}"#,
    );
    assert!(watches.is_some_and(|n| n >= 1.0), "the agent and controllers watch VMIs: {watches:?}\n{own}");

    // Refusals: another path of the node, a node that does not exist, a node's own credential.
    let e = s.kubectl_err(&["get", "--raw", &format!("/api/v1/nodes/{node}/proxy/healthz")]).unwrap();
    assert!(e.contains("serves only metrics"), "{e}");
    let e = s.kubectl_err(&["get", "--raw", "/api/v1/nodes/no-such-node/proxy/metrics"]).unwrap();
    assert!(e.contains("not found"), "{e}");
    let node_cfg = s.node_kubeconfig("metrics-node").unwrap();
    let out = s.kubectl(&["--kubeconfig", node_cfg.to_str().unwrap(), "get", "--raw", &proxy]).unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("cannot proxy to nodes"), "{e}");

    // Prometheus, configured as shipped.
    let prom = Prometheus::start(&s);
    let up = prom.wait_for(r#"up{job="kumo-nodes"} == 1"#);
    assert_eq!(up[0]["metric"]["instance"], node.as_str(), "the node, scraped through the API server: {up:?}");
    prom.wait_for(r#"up{job="kumo-apiserver"} == 1"#);
    let info = prom.wait_for(r#"kubevirt_vmi_info{name="metrics"}"#);
    assert_eq!(info.len(), 1, "{info:?}");
    assert_eq!(
        (info[0]["metric"]["node"].as_str(), info[0]["metric"]["phase"].as_str()),
        (Some(&*node), Some("running"))
    );
    let phases = prom.wait_for(r#"kubevirt_vmi_phase_count{phase="running"}"#);
    assert_eq!(phases.len(), 1, "{phases:?}");
    assert_eq!(phases[0]["value"][1], "1", "one running VMI, recorded by the rules file: {phases:?}");
    let requests =
        prom.wait_for(r#"apiserver_request_total{group="kubevirt.io",resource="virtualmachines",verb="create"}"#);
    assert!(requests.iter().any(|r| r["metric"]["code"] == "201"), "{requests:?}");

    // A deleted VMI's series go.
    get(&s, &["delete", "vm", "metrics", "--wait=true", "--timeout=120s"]);
    let gone = eventually(Duration::from_secs(120), || {
        let text = get(&s, &["get", "--raw", &proxy]);
        (!text.contains(r#"name="metrics""#)).then_some(())
    });
    assert!(gone.is_some(), "series remain:\n{}", get(&s, &["get", "--raw", &proxy]));
}
