//! Readiness and liveness probes, run by the node agent (kumo has no launcher pod for a kubelet to probe).
//!
//! Each probe of a guest is one tokio task (no thread or process per probe) that runs its probes on their
//! periods and keeps the outcome in a [`Health`] shared with the agent. The VMI's regular reconcile (every
//! few seconds) reports it: the Ready condition follows readiness, and a liveness failure fails the VMI, which
//! its VM restarts per runStrategy. Keeping the status writes in the reconcile means one writer, and a
//! status changed by anything else (a pause, a restart of the agent) is put right on the next look.

use super::LocalVm;
use crate::qemu::GuestAgent;
use kumo_api::kubevirt::{ProbeAction, ProbeTiming, VirtualMachineInstance};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why a guest with a readiness probe is not Ready before its probe first passes.
pub const WAITING: &str = "the readiness probe has not passed yet";

/// What the probes found so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Health {
    /// None: no readiness probe. Starts false: a guest is not Ready before its probe passed.
    pub ready: Option<bool>,
    /// Why the readiness probe last failed.
    pub not_ready_because: Option<String>,
    /// Set once the liveness probe failed `failureThreshold` times in a row.
    pub dead_because: Option<String>,
}

/// A running prober: its tasks (one per probe, stopped when it is dropped) and what they found.
pub struct Prober {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub health: Arc<Mutex<Health>>,
}

impl Drop for Prober {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One probe's run of results, as the kubelet counts them.
#[derive(Clone, Debug, PartialEq)]
pub struct Counter {
    timing: ProbeTiming,
    successes: u32,
    failures: u32,
    /// The verdict: passing or not (readiness starts failing, liveness passing).
    pub passing: bool,
}

impl Counter {
    pub fn new(timing: ProbeTiming, passing: bool) -> Self {
        Self { timing, successes: 0, failures: 0, passing }
    }

    /// Counts one result; returns true when the verdict changed.
    pub fn record(&mut self, ok: bool) -> bool {
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let before = self.passing;
        if ok && self.successes >= self.timing.success_threshold {
            self.passing = true;
        } else if !ok && self.failures >= self.timing.failure_threshold {
            self.passing = false;
        }
        before != self.passing
    }
}

/// Starts probing `vmi`'s guest if it has probes; None otherwise. Readiness starts from what the VMI shows,
/// so an agent restart does not take a serving guest out of rotation until its next probe.
pub fn start(vmi: &VirtualMachineInstance, l: &LocalVm) -> Option<Prober> {
    let spec = &vmi.spec;
    let readiness = spec.readiness_probe.as_ref().and_then(|p| Some((p.action(spec).ok()?, p.timing())));
    let liveness = spec.liveness_probe.as_ref().and_then(|p| Some((p.action(spec).ok()?, p.timing())));
    if readiness.is_none() && liveness.is_none() {
        return None;
    }
    let shown = vmi.conditions().iter().any(|c| c.type_ == "Ready" && c.status == "True");
    let health = Arc::new(Mutex::new(Health {
        ready: readiness.as_ref().map(|_| shown),
        not_ready_because: (readiness.is_some() && !shown).then(|| WAITING.to_string()),
        dead_because: None,
    }));
    let target = Target { ip: l.iface.as_ref().map(|(_, ip, _)| ip.clone()), agent: super::guest::agent_of(l)? };
    let mut tasks = Vec::new();
    if let Some((action, timing)) = readiness {
        let (h, t) = (health.clone(), target.clone());
        tasks.push(tokio::spawn(run_probe(t, action, timing, shown, move |passing, why| {
            let mut h = h.lock().expect("health lock");
            h.ready = Some(passing);
            h.not_ready_because = (!passing).then_some(why);
        })));
    }
    if let Some((action, timing)) = liveness {
        let h = health.clone();
        tasks.push(tokio::spawn(run_probe(target, action, timing, true, move |passing, why| {
            if !passing {
                h.lock().expect("health lock").dead_because = Some(why);
            }
        })));
    }
    Some(Prober { tasks, health })
}

#[derive(Clone)]
struct Target {
    ip: Option<String>,
    agent: GuestAgent,
}

/// Runs one probe forever on its period, telling `changed` each new verdict with the last failure's reason.
async fn run_probe(
    target: Target,
    action: ProbeAction,
    timing: ProbeTiming,
    passing: bool,
    changed: impl Fn(bool, String),
) {
    tokio::time::sleep(Duration::from_secs(timing.initial_delay_s.into())).await;
    let mut counter = Counter::new(timing, passing);
    let mut tick = tokio::time::interval(Duration::from_secs(timing.period_s.into()));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let timeout = Duration::from_secs(timing.timeout_s.into());
        let result = tokio::time::timeout(timeout, run_once(&target, &action, timeout))
            .await
            .unwrap_or_else(|_| Err(format!("timed out after {}s", timing.timeout_s)));
        let why = result.as_ref().err().cloned().unwrap_or_default();
        if counter.record(result.is_ok()) {
            changed(counter.passing, why);
        }
    }
}

/// One try: Ok when the guest passes, else why not.
async fn run_once(target: &Target, action: &ProbeAction, timeout: Duration) -> Result<(), String> {
    let addr = |host: &Option<String>, port: u16| {
        let ip = host.clone().or_else(|| target.ip.clone()).ok_or("the guest has no address to probe")?;
        Ok::<_, String>(format!("{ip}:{port}"))
    };
    match action {
        ProbeAction::Tcp { port, host } => {
            let a = addr(host, *port)?;
            tokio::net::TcpStream::connect(&a).await.map(|_| ()).map_err(|e| format!("dial tcp {a}: {e}"))
        }
        ProbeAction::Http { port, path, host, headers } => http_get(&addr(host, *port)?, path, headers).await,
        ProbeAction::GuestAgentPing => {
            target.agent.execute("guest-ping", None, timeout).await.map(|_| ()).map_err(|e| e.to_string())
        }
        ProbeAction::Exec { command } => exec(&target.agent, command, timeout).await,
    }
}

/// An HTTP GET: 200–399 passes, as the kubelet's does.
async fn http_get(addr: &str, path: &str, headers: &[(String, String)]) -> Result<(), String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("Get http://{addr}{path}: {e}"))?;
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: kumo-probe/1.0\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.map_err(|e| format!("Get http://{addr}{path}: {e}"))?;
    let mut head = vec![0u8; 64];
    let n = s.read(&mut head).await.map_err(|e| format!("Get http://{addr}{path}: {e}"))?;
    let line = String::from_utf8_lossy(&head[..n]);
    let code: u16 = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// Runs `command` in the guest through its agent; exit status 0 passes. A command still running at the
/// deadline fails the probe and is left alone: the guest is never harmed by a probe.
async fn exec(agent: &GuestAgent, command: &[String], timeout: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + timeout;
    let args = json!({"path": command[0], "arg": &command[1..], "capture-output": true});
    let started = agent.execute("guest-exec", Some(args), timeout).await.map_err(|e| e.to_string())?;
    let pid = started.get("pid").and_then(Value::as_i64).ok_or("guest-exec returned no pid")?;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let st = agent
            .execute("guest-exec-status", Some(json!({"pid": pid})), left.max(Duration::from_millis(100)))
            .await
            .map_err(|e| e.to_string())?;
        if st.get("exited").and_then(Value::as_bool) == Some(true) {
            let code = st.get("exitcode").and_then(Value::as_i64).unwrap_or(-1);
            return if code == 0 { Ok(()) } else { Err(format!("command {command:?} exited with {code}")) };
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("command {command:?} timed out"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(success: u32, failure: u32) -> ProbeTiming {
        ProbeTiming {
            initial_delay_s: 0,
            timeout_s: 1,
            period_s: 1,
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn verdicts_change_only_after_their_thresholds() {
        let mut r = Counter::new(timing(2, 3), false);
        assert!(!r.record(true), "one success of two");
        assert!(r.record(true) && r.passing, "ready after two");
        assert!(!r.record(false) && !r.record(false), "two failures of three");
        assert!(r.record(false) && !r.passing, "not ready after three");
        assert!(!r.record(false), "no change while failing");
        let mut l = Counter::new(timing(1, 1), true);
        assert!(!l.record(true));
        assert!(l.record(false) && !l.passing);
    }

    #[tokio::test]
    async fn http_and_tcp_probes_against_a_local_server() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).await.unwrap();
                let code = if String::from_utf8_lossy(&buf[..n]).starts_with("GET /ok ") { 200 } else { 503 };
                let _ = s.write_all(format!("HTTP/1.0 {code} X\r\n\r\n").as_bytes()).await;
            }
        });
        let target = Target { ip: Some("127.0.0.1".into()), agent: GuestAgent::new("/nonexistent") };
        let t = Duration::from_secs(2);
        let http = |path: &str| ProbeAction::Http { port, path: path.into(), host: None, headers: vec![] };
        assert_eq!(run_once(&target, &http("/ok"), t).await, Ok(()));
        let err = run_once(&target, &http("/bad"), t).await.unwrap_err();
        assert!(err.contains("statuscode: 503"), "{err}");
        assert_eq!(run_once(&target, &ProbeAction::Tcp { port, host: None }, t).await, Ok(()));
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert!(run_once(&target, &ProbeAction::Tcp { port: closed, host: None }, t).await.is_err());
        let err = run_once(&target, &ProbeAction::GuestAgentPing, t).await.unwrap_err();
        assert!(!err.is_empty());
    }
}
