//! `kumo rollout status|history|undo|pause|resume vmpool/NAME`: kubectl's rollout verbs for VirtualMachinePools,
//! whose rollout is kumo's (`spec.kumo`, `status.kumo`, the `Progressing` condition and ControllerRevisions).

use anyhow::{bail, Context, Result};
use k8s_openapi::api::apps::v1::ControllerRevision;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::ResourceExt;
use kumo_api::pool::{self as api, VirtualMachinePool};
use kumo_controllers::pool::rollout_done;
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(clap::Subcommand)]
pub enum RolloutAction {
    /// Follow a rollout until it completes (exit 1 if it stalls past its progress deadline or times out).
    Status {
        /// vmpool/NAME
        resource: String,
        /// Give up after this long (e.g. 10m; 0 waits forever).
        #[arg(long, default_value = "0", value_parser = crate::parse_duration)]
        timeout: Duration,
        /// Print the state once instead of following it.
        #[arg(long = "watch", default_value_t = true, action = clap::ArgAction::Set)]
        watch: bool,
    },
    /// List the pool's revisions (or show one with --revision).
    History {
        resource: String,
        #[arg(long)]
        revision: Option<i64>,
    },
    /// Go back to the previous revision's template (or --to-revision N).
    Undo {
        resource: String,
        #[arg(long, default_value_t = 0)]
        to_revision: i64,
    },
    /// Pause the pool (KubeVirt's spec.paused: nothing is made, removed or updated).
    Pause { resource: String },
    /// Resume a paused pool.
    Resume { resource: String },
}

/// The pool named by `vmpool/NAME` (also `virtualmachinepool/NAME`, `virtualmachinepools/NAME`).
fn pool_name(resource: &str) -> Result<&str> {
    match resource.split_once('/') {
        Some(("vmpool" | "vmpools" | "virtualmachinepool" | "virtualmachinepools", n)) if !n.is_empty() => Ok(n),
        Some((kind, _)) => bail!("kumo rollout works on VirtualMachinePools: use vmpool/NAME, not {kind}/..."),
        None => bail!("name the pool as vmpool/{resource}"),
    }
}

pub async fn run(client: kube::Client, ns: &str, action: RolloutAction) -> Result<()> {
    let pools: Api<VirtualMachinePool> = Api::namespaced(client.clone(), ns);
    let revisions: Api<ControllerRevision> = Api::namespaced(client, ns);
    match action {
        RolloutAction::Status { resource, timeout, watch } => {
            status(&pools, pool_name(&resource)?, timeout, watch).await
        }
        RolloutAction::History { resource, revision } => {
            history(&pools, &revisions, pool_name(&resource)?, revision).await
        }
        RolloutAction::Undo { resource, to_revision } => {
            undo(&pools, &revisions, pool_name(&resource)?, to_revision).await
        }
        RolloutAction::Pause { resource } => set_paused(&pools, pool_name(&resource)?, true).await,
        RolloutAction::Resume { resource } => set_paused(&pools, pool_name(&resource)?, false).await,
    }
}

async fn get(pools: &Api<VirtualMachinePool>, name: &str) -> Result<VirtualMachinePool> {
    pools.get(name).await.with_context(|| format!("reading vmpool {name}"))
}

async fn status(pools: &Api<VirtualMachinePool>, name: &str, timeout: Duration, watch: bool) -> Result<()> {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let pool = get(pools, name).await?;
        let mut waiting = String::new();
        match rollout_done(&pool, &mut waiting) {
            Err(stalled) => bail!("error: {stalled}; `kumo rollout undo vmpool/{name}` goes back"),
            Ok(true) => {
                println!("vmpool \"{name}\" successfully rolled out");
                return Ok(());
            }
            Ok(false) => {
                if waiting != last {
                    println!("{waiting}");
                    last = waiting;
                }
            }
        }
        if !watch {
            return Ok(());
        }
        if !timeout.is_zero() && start.elapsed() > timeout {
            bail!("timed out waiting for the rollout of vmpool \"{name}\" ({timeout:?})");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The pool's revisions, oldest first.
async fn revisions_of(
    revisions: &Api<ControllerRevision>,
    pool: &VirtualMachinePool,
) -> Result<Vec<ControllerRevision>> {
    let lp = ListParams::default().labels(&format!("{}={}", api::REVISION_POOL_LABEL, pool.name_any()));
    let uid = pool.metadata.uid.clone();
    let mut list: Vec<ControllerRevision> = revisions
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|r| r.owner_references().iter().any(|o| Some(&o.uid) == uid.as_ref()))
        .collect();
    list.sort_by_key(|r| r.revision);
    Ok(list)
}

async fn history(
    pools: &Api<VirtualMachinePool>,
    revisions: &Api<ControllerRevision>,
    name: &str,
    revision: Option<i64>,
) -> Result<()> {
    let pool = get(pools, name).await?;
    let list = revisions_of(revisions, &pool).await?;
    if let Some(n) = revision {
        let r = list.iter().find(|r| r.revision == Some(n)).with_context(|| format!("revision {n} not found"))?;
        println!("vmpool \"{name}\" with revision #{n}");
        println!("{}", serde_json::to_string_pretty(&r.data.0)?);
        return Ok(());
    }
    println!("vmpool \"{name}\"");
    println!("{:<10}{:<28}CHANGE-CAUSE", "REVISION", "NAME");
    for r in &list {
        let cause = r.annotations().get(kumo_controllers::pool::CHANGE_CAUSE).cloned().unwrap_or("<none>".into());
        println!("{:<10}{:<28}{cause}", r.revision.unwrap_or(0), r.name_any());
    }
    Ok(())
}

async fn undo(
    pools: &Api<VirtualMachinePool>,
    revisions: &Api<ControllerRevision>,
    name: &str,
    to_revision: i64,
) -> Result<()> {
    let pool = get(pools, name).await?;
    let list = revisions_of(revisions, &pool).await?;
    let current = format!("{name}-{}", kumo_controllers::pool::template_hash(&pool));
    let target = if to_revision > 0 {
        list.iter()
            .find(|r| r.revision == Some(to_revision))
            .with_context(|| format!("revision {to_revision} not found"))?
    } else {
        list.iter()
            .rev()
            .find(|r| r.metadata.name.as_deref() != Some(current.as_str()))
            .context("no previous revision to go back to (see `kumo rollout history`)")?
    };
    if target.metadata.name.as_deref() == Some(current.as_str()) {
        let n = target.revision.unwrap_or(0);
        println!("vmpool \"{name}\" skipped rollback (the current template already is revision {n})");
        return Ok(());
    }
    let template =
        target.data.0.pointer("/spec/virtualMachineTemplate").cloned().context("revision holds no template")?;
    // A JSON patch replaces the whole template (a merge patch would keep fields the old one lacked), guarded by
    // the resourceVersion read.
    let patch = json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": pool.resource_version()},
        {"op": "replace", "path": "/spec/virtualMachineTemplate", "value": template},
    ]);
    // (Typed by inference: kube's own json-patch version.)
    pools.patch(name, &PatchParams::default(), &Patch::<()>::Json(serde_json::from_value(patch)?)).await?;
    println!("vmpool \"{name}\" rolled back to revision {}", target.revision.unwrap_or(0));
    Ok(())
}

async fn set_paused(pools: &Api<VirtualMachinePool>, name: &str, paused: bool) -> Result<()> {
    let pool = get(pools, name).await?;
    let verb = if paused { "paused" } else { "resumed" };
    if pool.spec.paused.unwrap_or(false) == paused {
        println!("vmpool \"{name}\" is already {verb}");
        return Ok(());
    }
    let patch = json!({"spec": {"paused": paused}});
    pools.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await?;
    println!("vmpool \"{name}\" {verb}");
    Ok(())
}
