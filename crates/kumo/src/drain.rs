//! `kumo drain NODE`: cordon the node, then move every VMI off it — stop it here and let its VM start it on
//! another node per runStrategy (live migration comes with its own issue) — reporting progress, and say the
//! node is drained only when no VMI is left on it. `kumo uncordon` is `kubectl uncordon`.

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kumo_api::kubevirt::VirtualMachineInstance;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

pub struct Options {
    /// Also delete VMIs no VM owns (they are gone for good), as `kubectl drain --force` does for bare pods.
    pub force: bool,
    pub timeout: Duration,
}

fn key(v: &VirtualMachineInstance) -> String {
    format!("{}/{}", v.metadata.namespace.as_deref().unwrap_or(""), v.metadata.name.as_deref().unwrap_or(""))
}

fn owned_by_vm(v: &VirtualMachineInstance) -> bool {
    v.metadata.owner_references.iter().flatten().any(|o| o.kind == "VirtualMachine")
}

/// The VMIs placed on `node` that still hold it (not finished).
async fn on_node(vmis: &Api<VirtualMachineInstance>, node: &str) -> Result<Vec<VirtualMachineInstance>> {
    let all = vmis.list(&ListParams::default()).await.context("listing VMIs")?.items;
    Ok(all
        .into_iter()
        .filter(|v| v.node_name() == Some(node) && !matches!(v.phase(), "Succeeded" | "Failed"))
        .collect())
}

pub async fn drain(client: kube::Client, node: &str, opts: Options) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes.get(node).await.with_context(|| format!("node {node}"))?;
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(json!({"spec": {"unschedulable": true}})))
        .await
        .context("cordoning")?;
    println!("node/{node} cordoned");
    let vmis: Api<VirtualMachineInstance> = Api::all(client.clone());
    let present = on_node(&vmis, node).await?;
    let bare: Vec<String> = present.iter().filter(|v| !owned_by_vm(v)).map(key).collect();
    if !bare.is_empty() && !opts.force {
        bail!(
            "cannot drain node {node}: these VMIs belong to no VirtualMachine and would be lost: {} (use --force to \
             delete them anyway)",
            bare.join(", ")
        );
    }
    let mut waiting: BTreeSet<String> = BTreeSet::new();
    for v in &present {
        let ns = v.metadata.namespace.clone().unwrap_or_default();
        let name = v.metadata.name.clone().unwrap_or_default();
        let api: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &ns);
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => continue,
            Err(e) => return Err(e).with_context(|| format!("stopping VMI {ns}/{name}")),
        }
        println!("stopping vmi/{name} -n {ns}{}", if owned_by_vm(v) { " (its VM starts it elsewhere)" } else { "" });
        waiting.insert(key(v));
    }
    let deadline = Instant::now() + opts.timeout;
    loop {
        let left: BTreeSet<String> = on_node(&vmis, node).await?.iter().map(key).collect();
        for gone in waiting.difference(&left).cloned().collect::<Vec<_>>() {
            println!("{gone} left node {node}");
            waiting.remove(&gone);
        }
        if left.is_empty() {
            println!("node/{node} drained");
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "node {node} still runs {} after {:?}: {}",
                left.len(),
                opts.timeout,
                left.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
