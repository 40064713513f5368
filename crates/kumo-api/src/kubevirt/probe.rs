//! VMI health checks (`readinessProbe`, `livenessProbe`) as KubeVirt defines them: `httpGet` and `tcpSocket`
//! against the guest's address, `exec` and `guestAgentPing` through its guest agent. The node agent runs them
//! (kumo has no per-VM launcher pod for a kubelet to probe); these are the types and the checks on the way in.

use super::vmi::VirtualMachineInstanceSpec;
use crate::status::Cause;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A health check the node agent runs on the guest, with KubeVirt's (and Kubernetes') timing fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Probe {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_agent_ping: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i32>,
}

impl Probe {
    /// Kubernetes' defaults: timeout 1 s, period 10 s, success 1, failure 3, no initial delay.
    pub fn timing(&self) -> ProbeTiming {
        let pos = |v: Option<i32>, d: u32| v.filter(|v| *v > 0).map(|v| v as u32).unwrap_or(d);
        ProbeTiming {
            initial_delay_s: self.initial_delay_seconds.unwrap_or(0).max(0) as u32,
            timeout_s: pos(self.timeout_seconds, 1),
            period_s: pos(self.period_seconds, 10),
            success_threshold: pos(self.success_threshold, 1),
            failure_threshold: pos(self.failure_threshold, 3),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeTiming {
    pub initial_delay_s: u32,
    pub timeout_s: u32,
    pub period_s: u32,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpGetAction {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A number, or the name of one of the interface's `ports`.
    pub port: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_headers: Option<Vec<HttpHeader>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TcpSocketAction {
    pub port: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecAction {
    pub command: Vec<String>,
}

/// What a probe does, resolved against the VMI's spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeAction {
    Http { port: u16, path: String, host: Option<String>, headers: Vec<(String, String)> },
    Tcp { port: u16, host: Option<String> },
    Exec { command: Vec<String> },
    GuestAgentPing,
}

impl Probe {
    /// The one action it names, with a named port looked up in the VMI's interfaces; Err says what is wrong
    /// (and which field), for the API server to refuse it.
    pub fn action(&self, spec: &VirtualMachineInstanceSpec) -> Result<ProbeAction, (String, String)> {
        let set =
            [self.http_get.is_some(), self.tcp_socket.is_some(), self.exec.is_some(), self.guest_agent_ping.is_some()];
        if set.iter().filter(|s| **s).count() != 1 {
            return Err((String::new(), "exactly one of httpGet, tcpSocket, exec, guestAgentPing must be set".into()));
        }
        if let Some(h) = &self.http_get {
            let port = resolve_port(&h.port, spec).map_err(|e| ("httpGet.port".to_string(), e))?;
            let path = h.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into());
            if !path.starts_with('/') {
                return Err(("httpGet.path".into(), format!("Invalid value: {path:?}: must start with /")));
            }
            let headers = h.http_headers.iter().flatten().map(|x| (x.name.clone(), x.value.clone())).collect();
            return Ok(ProbeAction::Http { port, path, host: h.host.clone(), headers });
        }
        if let Some(t) = &self.tcp_socket {
            let port = resolve_port(&t.port, spec).map_err(|e| ("tcpSocket.port".to_string(), e))?;
            return Ok(ProbeAction::Tcp { port, host: t.host.clone() });
        }
        if let Some(e) = &self.exec {
            if e.command.is_empty() {
                return Err(("exec.command".into(), "Required value: the command to run in the guest".into()));
            }
            return Ok(ProbeAction::Exec { command: e.command.clone() });
        }
        Ok(ProbeAction::GuestAgentPing)
    }
}

/// A port number, or the name of one of the interfaces' `ports`.
fn resolve_port(port: &Value, spec: &VirtualMachineInstanceSpec) -> Result<u16, String> {
    if let Some(n) = port.as_i64() {
        return u16::try_from(n).ok().filter(|p| *p > 0).ok_or_else(|| format!("Invalid value: {n}: must be 1-65535"));
    }
    let name = port.as_str().unwrap_or_default();
    if let Ok(n) = name.parse::<u16>() {
        return Ok(n);
    }
    let ports = spec.domain.devices.interfaces.iter().flatten().flat_map(|i| i.ports.iter().flatten());
    ports
        .filter(|p| p.name.as_deref() == Some(name))
        .map(|p| p.port)
        .next()
        .ok_or_else(|| format!("Invalid value: {name:?}: no interface port has that name"))
}

/// The checks on a VMI spec's probes.
pub(crate) fn validate(spec: &VirtualMachineInstanceSpec, p: &str) -> Vec<Cause> {
    let probes = [("readinessProbe", &spec.readiness_probe), ("livenessProbe", &spec.liveness_probe)];
    probes
        .into_iter()
        .filter_map(|(field, probe)| {
            let (sub, msg) = probe.as_ref()?.action(spec).err()?;
            let path = if sub.is_empty() { format!("{p}.{field}") } else { format!("{p}.{field}.{sub}") };
            Some(Cause::invalid(path, msg))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(probe: Value) -> VirtualMachineInstanceSpec {
        serde_json::from_value(json!({"domain": {"devices": {"interfaces": [{"name": "default", "masquerade": {},
            "ports": [{"name": "http", "port": 8080}]}]}}, "readinessProbe": probe}))
        .unwrap()
    }

    fn action(probe: Value) -> Result<ProbeAction, (String, String)> {
        let s = spec(probe);
        s.readiness_probe.as_ref().unwrap().action(&s)
    }

    #[test]
    fn actions_resolve_named_ports_and_defaults() {
        assert_eq!(
            action(json!({"httpGet": {"port": "http"}})),
            Ok(ProbeAction::Http { port: 8080, path: "/".into(), host: None, headers: vec![] })
        );
        assert_eq!(action(json!({"tcpSocket": {"port": 22}})), Ok(ProbeAction::Tcp { port: 22, host: None }));
        assert_eq!(action(json!({"guestAgentPing": {}})), Ok(ProbeAction::GuestAgentPing));
        let t = spec(json!({"guestAgentPing": {}, "periodSeconds": 2})).readiness_probe.unwrap().timing();
        assert_eq!((t.timeout_s, t.period_s, t.success_threshold, t.failure_threshold), (1, 2, 1, 3));
    }

    #[test]
    fn bad_probes_are_refused_by_field() {
        let causes = |probe: Value| validate(&spec(probe), "spec");
        let c = causes(json!({"httpGet": {"port": "nope"}}));
        assert_eq!(c[0].field, "spec.readinessProbe.httpGet.port", "{c:?}");
        let c = causes(json!({"tcpSocket": {"port": 1}, "guestAgentPing": {}}));
        assert_eq!(c[0].field, "spec.readinessProbe");
        assert!(c[0].message.contains("exactly one"));
        let c = causes(json!({"exec": {"command": []}}));
        assert_eq!(c[0].field, "spec.readinessProbe.exec.command");
        assert!(causes(json!({"exec": {"command": ["true"]}})).is_empty());
    }

    #[test]
    fn both_probes_are_in_the_schema() {
        let schema = super::super::yaml(super::super::VMI_SPEC);
        for p in ["readinessProbe", "livenessProbe"] {
            assert!(schema["properties"][p]["properties"]["httpGet"].is_object(), "{p}");
        }
    }
}
