//! Joining hosts with bootstrap tokens, as `kubeadm join` does, and what a node's credential may do: its own
//! Node and Lease, nothing of another node's, no admin verbs. Bad, expired or reused-name joins are refused and
//! create nothing. The agent runs for real (it needs root and QEMU, as the other guest tests).

use anyhow::{bail, Result};
use kumo_e2e::{eventually, kumo_bin, Server};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn join_args(s: &Server, token: &str, hash: &str, node: &str, state: &std::path::Path) -> Vec<String> {
    let mut a: Vec<String> = vec!["agent".into(), "--server".into(), s.url(), "--token".into(), token.into()];
    a.extend(["--ca-cert-hash".into(), hash.into(), "--node-name".into(), node.into(), "--state-dir".into()]);
    a.push(state.to_string_lossy().into_owned());
    a
}

/// `kumo agent` that is expected to give up (a refused join): its output.
fn failed_join(args: &[String]) -> Result<String> {
    let out: Output = Command::new(kumo_bin()).args(args).stdin(Stdio::null()).output()?;
    if out.status.success() {
        bail!("the join unexpectedly succeeded");
    }
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `kubectl` with the node's own credential.
fn as_node(state: &std::path::Path, args: &[&str]) -> Output {
    Command::new("kubectl").env("KUBECONFIG", state.join("kubeconfig")).args(args).output().expect("kubectl runs")
}

fn token_and_hash(s: &Server) -> Result<(String, String)> {
    let line = s.kumo(&["token", "create", "--print-join-command"]);
    assert!(line.status.success(), "kumo token create: {}", String::from_utf8_lossy(&line.stderr));
    let line = String::from_utf8_lossy(&line.stdout).into_owned();
    let word = |flag: &str| line.split_whitespace().skip_while(|w| *w != flag).nth(1).map(String::from);
    let (Some(server), Some(token), Some(hash)) = (word("--server"), word("--token"), word("--ca-cert-hash")) else {
        bail!("unexpected join command: {line}")
    };
    assert_eq!(server, s.url(), "the join command names this server");
    Ok((token, hash))
}

#[test]
fn hosts_join_with_tokens_and_nodes_are_confined_to_their_own() -> Result<()> {
    let s = Server::start()?;
    let (token, hash) = token_and_hash(&s)?;
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("host-a");

    // A wrong token is 401 and creates nothing; so does a CA hash that does not match.
    let bad = failed_join(&join_args(&s, "abcdef.0000000000000000", &hash, "host-a", &state))?;
    assert!(bad.contains("401") && bad.contains("kumo token create"), "{bad}");
    let bad_hash = format!("sha256:{}", "0".repeat(64));
    let err = failed_join(&join_args(&s, &token, &bad_hash, "host-a", &state))?;
    assert!(err.contains("refusing to trust it"), "{err}");
    assert_eq!(s.kubectl_ok(&["get", "csr", "-o", "name"])?.trim(), "", "refused joins leave no request");
    assert!(!state.join("kubeconfig").exists());

    // The real join: the host gets its own certificate and registers its Node.
    let log = std::fs::File::create(dir.path().join("agent-a.log"))?;
    let _agent = Agent(
        Command::new(kumo_bin())
            .args(join_args(&s, &token, &hash, "host-a", &state))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?,
    );
    let ready = eventually(Duration::from_secs(60), || {
        let st =
            s.kubectl_ok(&["get", "node", "host-a", "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}"]);
        (st.ok()?.trim() == "True").then_some(())
    });
    let agent_log = || std::fs::read_to_string(dir.path().join("agent-a.log")).unwrap_or_default();
    assert!(ready.is_some(), "node host-a never became Ready: {}", agent_log());
    let kc = std::fs::read_to_string(state.join("kubeconfig"))?;
    assert!(
        kc.contains("client-certificate-data") && !kc.contains(&token),
        "the node holds a certificate, not the token"
    );
    let csr = s.kubectl_ok(&[
        "get",
        "csr",
        "-o",
        "jsonpath={.items[0].spec.username} {.items[0].status.conditions[0].type}",
    ])?;
    assert!(csr.starts_with("system:bootstrap:") && csr.ends_with("Approved"), "{csr}");

    // What the node's credential may and may not do.
    let ok = as_node(&state, &["label", "node", "host-a", "e2e=yes", "--overwrite"]);
    assert!(ok.status.success(), "own node: {}", String::from_utf8_lossy(&ok.stderr));
    let other = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"host-b"}}"#;
    s.kubectl_stdin(&["create", "-f", "-"], other)?;
    for (args, what) in [
        (vec!["label", "node", "host-b", "e2e=no"], "another node"),
        (vec!["delete", "node", "host-a"], "deleting its own node"),
        (vec!["get", "vmis", "-A"], "watching every VMI"),
        (vec!["get", "secrets", "-n", "kube-system"], "secrets"),
        (vec!["create", "namespace", "x"], "namespaces"),
    ] {
        let out = as_node(&state, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("Forbidden"), "{what}: {err}");
    }
    let own_vmis = as_node(&state, &["get", "vmis", "-A", "-l", "kubevirt.io/nodeName=host-a"]);
    assert!(own_vmis.status.success(), "its own VMIs: {}", String::from_utf8_lossy(&own_vmis.stderr));

    // Another host under a name that is taken is refused; an expired token is 401.
    let (token2, _) = token_and_hash(&s)?;
    let err = failed_join(&join_args(&s, &token2, &hash, "host-a", &dir.path().join("impostor")))?;
    assert!(err.contains("already registered"), "{err}");
    let expired = s.kumo(&["token", "create", "--ttl", "1s"]);
    let expired = String::from_utf8_lossy(&expired.stdout).trim().to_string();
    std::thread::sleep(Duration::from_secs(2));
    let err = failed_join(&join_args(&s, &expired, &hash, "host-c", &dir.path().join("late")))?;
    assert!(err.contains("401"), "{err}");
    assert!(s.kubectl(&["get", "node", "host-c"])?.status.code() != Some(0), "a refused join creates no Node");
    Ok(())
}
