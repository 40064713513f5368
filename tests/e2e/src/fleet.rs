//! A running cluster for end-to-end tests and the cluster benchmark: three etcd members, two `kumo server`
//! replicas and three hosts joined with a bootstrap token, plus KubeVirt VMs to run on it and the checks the
//! tests make (serving from another host, nothing stale on a host).

use crate::cluster::{guests_of, replica, EtcdCluster, Host, Underlay};
use crate::{eventually, Server};
use anyhow::{bail, Result};
use std::time::Duration;

pub const REGISTRY: &str = "127.0.0.1:5000";

pub fn vm(name: &str, extra_spec: &str, user_data: &str) -> String {
    format!(
        r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  runStrategy: Always
  template:
    metadata:
      labels: {{app: web, kubevirt.io/domain: {name}}}
    spec:
      terminationGracePeriodSeconds: 5
{extra_spec}
      domain:
        memory: {{guest: 256Mi}}
        devices:
          disks:
          - name: containerdisk
            disk: {{bus: virtio}}
          - name: cloudinitdisk
            disk: {{bus: virtio}}
          interfaces:
          - name: default
            masquerade: {{}}
            ports:
            - {{name: http, port: 8080}}
      networks:
      - name: default
        pod: {{}}
      volumes:
      - name: containerdisk
        containerDisk:
          image: quay.io/kumo/test-guest:latest
      - name: cloudinitdisk
        cloudInitNoCloud:
          userData: |
{user_data}
"#
    )
}

/// Prefer a host without another `app=web` VM, so the VMs spread (but may share when a host is lost).
pub const SPREAD: &str = "      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            podAffinityTerm:
              labelSelector: {matchLabels: {app: web}}
              topologyKey: kubernetes.io/hostname";

pub struct Cluster {
    pub etcd: EtcdCluster,
    pub replicas: Vec<Server>,
    pub hosts: Vec<Host>,
    pub underlay: Underlay,
    token: String,
    hash: String,
    /// The agents' `--fencing-period`.
    pub fencing: String,
}

impl Cluster {
    pub fn admin(&self) -> &Server {
        self.replicas.iter().find(|r| r.pid().is_some()).expect("a live replica")
    }

    pub fn servers(&self) -> String {
        self.replicas.iter().map(Server::url).collect::<Vec<_>>().join(",")
    }

    pub fn agent_args(&self, h: &Host) -> Vec<String> {
        let reg = self.underlay.registry(REGISTRY);
        [
            "--server",
            &self.servers(),
            "--token",
            &self.token,
            "--ca-cert-hash",
            &self.hash,
            "--node-name",
            &h.name,
            "--state-dir",
            &h.state.to_string_lossy(),
            "--node-ip",
            &h.ip,
            "--fencing-period",
            &self.fencing,
            "--insecure-registry",
            &reg,
            "--registry-mirror",
            &format!("quay.io={reg}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    pub fn start_agent(&mut self, i: usize) -> Result<()> {
        let args = self.agent_args(&self.hosts[i]);
        self.hosts[i].start_agent(&args)
    }

    /// kubectl through a live replica; a failed command is an error, never an empty answer.
    pub fn get(&self, args: &[&str]) -> Result<String> {
        Ok(self.admin().kubectl_ok(args)?.trim().to_string())
    }

    /// kubectl output for a diagnosis: the error text when the command failed.
    fn show(&self, args: &[&str]) -> String {
        self.get(args).unwrap_or_else(|e| format!("({e:#})"))
    }

    pub fn host_of(&self, vmi: &str) -> Result<Option<usize>> {
        let node = self.get(&["get", "vmi", vmi, "-o", "jsonpath={.status.nodeName}"])?;
        Ok(self.hosts.iter().position(|h| h.name == node))
    }

    /// Waits until VMI `name` runs (a new one, if `not_uid` is given) and its guest answers HTTP from another
    /// host; returns (host index, pod IP, uid).
    pub fn wait_serving(
        &self,
        name: &str,
        not_uid: Option<&str>,
        timeout: Duration,
    ) -> Result<(usize, String, String)> {
        let got = eventually(timeout, || {
            let out = self
                .get(&[
                    "get",
                    "vmi",
                    name,
                    "-o",
                    "jsonpath={.status.phase} {.metadata.uid} {.status.interfaces[0].ipAddress} {.status.nodeName}",
                ])
                .ok()?;
            let f: Vec<&str> = out.split_whitespace().collect();
            let [phase, uid, ip, node] = f[..] else { return None };
            if phase != "Running" || not_uid == Some(uid) {
                return None;
            }
            let h = self.hosts.iter().position(|h| h.name == node)?;
            // From another host (any that answers: one may be the host whose link was cut).
            let serving = self.hosts.iter().enumerate().filter(|(i, _)| *i != h).any(|(_, from)| {
                from.exec(&["curl", "-s", "-m", "2", &format!("http://{ip}:8080/")])
                    .is_ok_and(|body| body.contains(&format!("hostname={name}")))
            });
            serving.then(|| (h, ip.to_string(), uid.to_string()))
        });
        match got {
            Some(g) => Ok(g),
            None => bail!("{name} did not come up serving in {timeout:?}: {}", self.diagnose()),
        }
    }

    pub fn diagnose(&self) -> String {
        let mut s = self.show(&["get", "vmi,nodes", "-o", "wide"]);
        s.push_str("\n--- events\n");
        s.push_str(&self.show(&["get", "events"]));
        for h in &self.hosts {
            let log = h.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            s.push_str(&format!("\n--- {} agent log (last lines, newest first)\n{}", h.name, tail.join("\n")));
        }
        s
    }

    /// Waits until host `i` is Ready again and no longer tainted unreachable.
    pub fn wait_back(&self, i: usize, timeout: Duration) {
        let name = &self.hosts[i].name;
        let back = eventually(timeout, || {
            let jp = "jsonpath={.status.conditions[?(@.type=='Ready')].status} {.spec.taints}";
            let st = self.get(&["get", "node", name, "-o", jp]).ok()?;
            (st.starts_with("True") && !st.contains("unreachable")).then_some(())
        });
        assert!(back.is_some(), "{name} did not come back Ready and untainted: {}", self.diagnose());
    }

    /// Nothing of a lost host's guests is left on it once its agent is back.
    pub fn assert_clean(&self, i: usize, running: &[&str]) {
        let h = &self.hosts[i];
        let clean = eventually(Duration::from_secs(60), || {
            let guests = guests_of(&h.state);
            let local: Vec<String> = std::fs::read_dir(h.state.join("vmis"))
                .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            let uids = running
                .iter()
                .map(|v| self.get(&["get", "vmi", v, "-o", "jsonpath={.metadata.uid}"]))
                .collect::<Result<Vec<String>>>()
                .ok()?;
            (guests.iter().all(|(_, n)| running.iter().any(|r| n.ends_with(r)))
                && local.iter().all(|u| uids.contains(u)))
            .then_some(())
        });
        assert!(clean.is_some(), "{} kept stale guests or state: {}", h.name, self.diagnose());
    }
}

/// A control plane (three etcd members, two replicas with `replica_flags`) and three joined hosts whose
/// agents fence after `fencing`; returns once every host is Ready with a pod CIDR.
pub fn start_cluster(replica_flags: &[&str], fencing: &str) -> Result<Cluster> {
    crate::assert_registry();
    let etcd = EtcdCluster::start(3)?;
    let underlay = Underlay::create(REGISTRY)?;
    let a = replica(&underlay, &etcd, None, replica_flags)?;
    let b = replica(&underlay, &etcd, Some(&a), replica_flags)?;
    let line = a.kumo(&["token", "create", "--print-join-command"]);
    let line = String::from_utf8_lossy(&line.stdout).into_owned();
    let word = |flag: &str| line.split_whitespace().skip_while(|w| *w != flag).nth(1).unwrap_or("").to_string();
    let (token, hash) = (word("--token"), word("--ca-cert-hash"));
    assert!(!token.is_empty() && hash.starts_with("sha256:"), "join command: {line}");
    let hosts = (1..=3).map(|i| Host::create(&underlay, i)).collect::<Result<Vec<_>>>()?;
    let mut c = Cluster { etcd, replicas: vec![a, b], hosts, underlay, token, hash, fencing: fencing.to_string() };
    for i in 0..3 {
        c.start_agent(i)?;
    }
    let ready = eventually(Duration::from_secs(120), || {
        let st = c
            .get(&[
                "get",
                "nodes",
                "-o",
                "jsonpath={range .items[*]}{.status.conditions[?(@.type=='Ready')].status}{.spec.podCIDR} {end}",
            ])
            .ok()?;
        (st.split_whitespace().filter(|s| s.starts_with("True10.245.")).count() == 3).then_some(())
    });
    if ready.is_none() {
        bail!("the three hosts did not become Ready with pod CIDRs: {}", c.diagnose());
    }
    Ok(c)
}
