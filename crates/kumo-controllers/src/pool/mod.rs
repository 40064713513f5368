//! The VirtualMachinePool controller's decisions. Pure: [`run`] reads and applies.
//!
//! A pool keeps `replicas` VirtualMachines named `<pool>-<index>` (the lowest free index first), each labelled
//! with the revision (a ControllerRevision holding the template) it was made from. Scaling in follows the
//! scale-in strategy; an update follows the update strategy:
//! - **proactive** (the default) without a surge updates VMs in place, `maxUnavailable` at a time: the VM takes
//!   the new template and its VMI is restarted (KubeVirt's way);
//! - **proactive with `spec.kumo.maxSurge`** (kumo's Deployment-grade rollout) makes new VMs, up to
//!   `replicas + maxSurge` guests (those still shutting down count), and removes an old one only while at least
//!   `replicas − maxUnavailable` VMs stay available (Ready for `minReadySeconds`);
//! - **opportunistic** gives the VMs the new template, which their next VMI takes; **unmanaged** does nothing.
//!
//! The plan is made from fresh lists (not caches that may lag), so a VM just made is always counted.

mod progress;
mod revision;
mod run;
mod select;
#[cfg(test)]
mod tests;

pub use progress::{rollout_done, RolloutState};
pub use revision::{revision_for, template_hash, CHANGE_CAUSE};
pub use run::run;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kumo_api::conditions;
use kumo_api::kubevirt::{VirtualMachine, VirtualMachineInstance};
use kumo_api::pool::{self as api, VirtualMachinePool, VirtualMachinePoolStatus};
use kumo_api::selector::LabelSelector;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// At most this many VMs are made or removed by one pass.
pub const BURST: usize = 250;
/// On a VM stopped by a scale-in that preserves state (`statePreservation: Offline`): kept, stopped, and
/// started again before any new VM is made.
pub const PRESERVED_ANNOTATION: &str = "kumo.dev/vmpool-preserved";

/// One change to a VM the pool keeps.
#[derive(Clone, Debug, PartialEq)]
pub enum VmChange {
    /// Give it the pool's current template and revision label; restart its VMI (by uid) when one runs.
    Update { vm: Box<VirtualMachine>, restart_vmi: Option<(String, String)> },
    /// Stop it and mark it preserved (scale-in with `statePreservation: Offline`).
    Preserve { name: String, uid: String },
    /// Start a preserved VM again, with the pool's template.
    Revive { vm: Box<VirtualMachine> },
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub add_finalizer: bool,
    pub remove_finalizer: bool,
    /// A new revision for the current template, or an old one brought back (with its new revision number).
    pub save_revision: Option<ControllerRevision>,
    /// Old revisions beyond the history limit.
    pub prune_revisions: Vec<String>,
    pub create: Vec<VirtualMachine>,
    /// VMs to delete, by (name, uid), with why (the event's note).
    pub delete: Vec<(String, String, String)>,
    pub change: Vec<VmChange>,
    pub adopt: Vec<(String, String)>,
    pub release: Vec<(String, String)>,
    pub status: VirtualMachinePoolStatus,
    /// Look again after this long (minReadySeconds, a progress deadline or an autohealing delay ends).
    pub requeue_after: Option<Duration>,
}

/// What the plan reads besides the pool.
pub struct World<'a> {
    /// Every VM in the pool's namespace.
    pub vms: &'a [VirtualMachine],
    /// Every VMI in the pool's namespace.
    pub vmis: &'a [VirtualMachineInstance],
    /// The pool's ControllerRevisions.
    pub revisions: &'a [ControllerRevision],
    /// Labels of the nodes the pool's VMIs run on (for selection by node).
    pub node_labels: &'a BTreeMap<String, BTreeMap<String, String>>,
    pub now: DateTime<Utc>,
}

pub fn owner_ref(pool: &VirtualMachinePool) -> OwnerReference {
    OwnerReference {
        api_version: format!("{}/{}", api::GROUP, api::VERSION),
        kind: api::KIND.into(),
        name: pool.metadata.name.clone().unwrap_or_default(),
        uid: pool.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn name(meta: &ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

fn key(meta: &ObjectMeta) -> (String, String) {
    (name(meta), meta.uid.clone().unwrap_or_default())
}

fn selector(pool: &VirtualMachinePool) -> Option<LabelSelector> {
    let v = serde_json::to_value(&pool.spec.selector).ok()?;
    LabelSelector::from_object(&v).ok().filter(|s| !s.is_empty())
}

fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref().and_then(|l| l.get(key)).map(String::as_str)
}

fn preserved(vm: &VirtualMachine) -> bool {
    vm.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(PRESERVED_ANNOTATION))
}

/// The index in a pool VM's name (`<pool>-<index>`).
pub fn index_of(pool: &str, vm: &str) -> Option<u32> {
    vm.strip_prefix(pool)?.strip_prefix('-')?.parse().ok()
}

/// The VM at `index` made from the pool's template at `revision`: labelled with the pool and the revision, its
/// VMIs labelled with the pool, its DataVolumes (and, when asked, cloud-init Secrets) suffixed with the index.
pub fn vm_for(pool: &VirtualMachinePool, index: u32, revision: &str) -> VirtualMachine {
    let pool_name = name(&pool.metadata);
    let template = &pool.spec.virtual_machine_template;
    let tmeta = template.metadata.clone().unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    labels.insert(api::POOL_LABEL.into(), pool_name.clone());
    labels.insert(api::REVISION_LABEL.into(), revision.into());
    let mut spec = template.spec.clone();
    let vmi_meta = spec.template.metadata.get_or_insert_with(Default::default);
    vmi_meta.labels.get_or_insert_with(Default::default).insert(api::POOL_LABEL.into(), pool_name.clone());
    let suffix = |n: &str| format!("{n}-{index}");
    let mut renamed = HashSet::new();
    for dv in spec.data_volume_templates.iter_mut().flatten() {
        if let Some(n) = dv.metadata.as_mut().and_then(|m| m.name.as_mut()) {
            renamed.insert(n.clone());
            *n = suffix(n);
        }
    }
    let secrets = pool.spec.name_generation.as_ref().and_then(|g| g.append_index_to_secret_refs) == Some(true);
    for v in spec.template.spec.volumes.iter_mut().flatten() {
        if let Some(dv) = v.data_volume.as_mut().filter(|d| renamed.contains(&d.name)) {
            dv.name = suffix(&dv.name);
        }
        if secrets {
            for src in [v.cloud_init_no_cloud.as_mut(), v.cloud_init_config_drive.as_mut()].into_iter().flatten() {
                for r in [src.secret_ref.as_mut(), src.network_data_secret_ref.as_mut()].into_iter().flatten() {
                    r.name = suffix(&r.name);
                }
            }
        }
    }
    VirtualMachine {
        metadata: ObjectMeta {
            name: Some(format!("{pool_name}-{index}")),
            namespace: pool.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: tmeta.annotations,
            owner_references: Some(vec![owner_ref(pool)]),
            ..Default::default()
        },
        spec,
        status: None,
    }
}

/// Whether the VM is Ready, and since when.
fn ready_since(vm: &VirtualMachine) -> Option<DateTime<Utc>> {
    let conds = vm.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    let c = conds.iter().find(|c| c.type_ == "Ready" && c.status == "True")?;
    let t = c.last_transition_time.as_deref()?;
    DateTime::parse_from_rfc3339(t).ok().map(|t| t.with_timezone(&Utc))
}

fn is_ready(vm: &VirtualMachine) -> bool {
    vm.status.as_ref().is_some_and(|s| conditions::is_true(s.conditions.as_deref().unwrap_or_default(), "Ready"))
}

/// Decides what the pool does.
pub fn plan(pool: &VirtualMachinePool, w: &World) -> Plan {
    let mut plan = Plan::default();
    let me = pool.metadata.uid.clone().unwrap_or_default();
    let pool_name = name(&pool.metadata);
    let sel = selector(pool);
    let matches = |m: &ObjectMeta| sel.as_ref().is_some_and(|s| s.matches_labels(m.labels.as_ref()));
    let deleting = pool.metadata.deletion_timestamp.is_some();
    let has_finalizer = pool.metadata.finalizers.iter().flatten().any(|f| f == api::FINALIZER);

    // The pool's VMs: owned and matching, or orphans matching (adopted).
    let mut mine: Vec<&VirtualMachine> = Vec::new();
    let mut going = 0; // VMs of the pool being deleted
    for vm in w.vms {
        let owner = crate::replicaset::controller_uid(&vm.metadata);
        let owned = owner == Some(me.as_str());
        if vm.metadata.deletion_timestamp.is_some() {
            going += usize::from(owned);
            continue;
        }
        match owner {
            Some(_) if owned => {
                if matches(&vm.metadata) || deleting {
                    mine.push(vm);
                } else {
                    plan.release.push(key(&vm.metadata));
                }
            }
            None if matches(&vm.metadata) && !deleting => {
                plan.adopt.push(key(&vm.metadata));
                mine.push(vm);
            }
            _ => {}
        }
    }

    if deleting {
        // The finalizer holds the pool until its VMs are gone (their VMIs go with them).
        for vm in &mine {
            let why = format!("Deleted virtual machine {} with its pool", name(&vm.metadata));
            let (n, u) = key(&vm.metadata);
            plan.delete.push((n, u, why));
        }
        plan.remove_finalizer = has_finalizer && mine.is_empty() && going == 0;
        plan.status = pool.status.clone().unwrap_or_default();
        return plan;
    }
    plan.add_finalizer = !has_finalizer;

    let in_use: HashSet<&str> = mine.iter().filter_map(|v| label(&v.metadata, api::REVISION_LABEL)).collect();
    let (rev, history) = revision::current(pool, w.revisions, &in_use);
    let rev_name = name(&rev.metadata);
    if history.save {
        plan.save_revision = Some(rev.clone());
    }
    plan.prune_revisions = history.prune;

    let (kept, active): (Vec<&VirtualMachine>, Vec<&VirtualMachine>) = mine.iter().partition(|v| preserved(v));
    let live_names: HashSet<&str> = active.iter().filter_map(|v| v.metadata.name.as_deref()).collect();
    // Guests of the pool still shutting down (their VM is gone or going): they count against the surge.
    let lingering = w
        .vmis
        .iter()
        .filter(|i| label(&i.metadata, api::POOL_LABEL) == Some(pool_name.as_str()) && !i.is_final())
        .filter(|i| !live_names.contains(i.metadata.name.as_deref().unwrap_or_default()))
        .count();
    let paused = pool.spec.paused == Some(true);
    let min_ready = Duration::from_secs(pool.rollout().min_ready_seconds.unwrap_or(0).max(0) as u64);
    let available =
        |vm: &VirtualMachine| ready_since(vm).is_some_and(|t| (w.now - t).to_std().unwrap_or_default() >= min_ready);
    let updated = |vm: &VirtualMachine| label(&vm.metadata, api::REVISION_LABEL) == Some(rev_name.as_str());
    let want = pool.replicas() as usize;

    if !paused {
        let mut ctx = Acting { pool, w, rev: &rev_name, plan: &mut plan, lingering };
        let healthy = ctx.autoheal(&active);
        ctx.scale_and_update(&healthy, &kept, &available, &updated, want);
    }

    // Wake up when a new VM becomes available (minReadySeconds).
    for vm in active.iter().filter(|v| is_ready(v) && !available(v)) {
        if let Some(t) = ready_since(vm) {
            let left = (min_ready.saturating_sub((w.now - t).to_std().unwrap_or_default())).max(Duration::from_secs(1));
            plan.requeue_after = Some(plan.requeue_after.map_or(left, |r| r.min(left)));
        }
    }
    let state = RolloutState {
        replicas: active.len() as i32,
        ready: active.iter().filter(|v| is_ready(v)).count() as i32,
        updated: active.iter().filter(|v| updated(v)).count() as i32,
        available: active.iter().filter(|v| updated(v) && available(v)).count() as i32,
        want: want as i32,
    };
    let (status, wake) = progress::status(pool, &state, &rev_name, sel.map(|s| s.to_string()), paused, w.now);
    if let Some(wake) = wake {
        plan.requeue_after = Some(plan.requeue_after.map_or(wake, |r| r.min(wake)));
    }
    plan.status = status;
    plan
}

/// The part of a pass that acts: autohealing, scaling, updating.
struct Acting<'p, 'w, 'a> {
    pool: &'p VirtualMachinePool,
    w: &'w World<'a>,
    rev: &'p str,
    plan: &'p mut Plan,
    lingering: usize,
}

impl Acting<'_, '_, '_> {
    fn delete(&mut self, vm: &VirtualMachine, why: String) {
        let (n, u) = key(&vm.metadata);
        self.plan.delete.push((n, u, why));
    }

    /// KubeVirt's autohealing: a VM that failed to start `startUpFailureThreshold` times in a row, or has been
    /// failing to start for `minFailingToStartDuration`, is deleted (and so replaced by a new one). Returns the
    /// VMs that stay.
    fn autoheal<'v>(&mut self, active: &[&'v VirtualMachine]) -> Vec<&'v VirtualMachine> {
        let Some(a) = self.pool.spec.autohealing.clone() else { return active.to_vec() };
        let threshold = a.start_up_failure_threshold.unwrap_or(api::DEFAULT_STARTUP_FAILURE_THRESHOLD).max(1);
        let min = a.min_failing_to_start_duration.as_deref().unwrap_or(api::DEFAULT_MIN_FAILING_TO_START);
        let min = api::go_duration(min).unwrap_or(Duration::from_secs(300));
        let mut keep = Vec::new();
        for vm in active {
            let status = vm.status.clone().unwrap_or_default();
            let fails = status.start_failure.as_ref().and_then(|f| f.consecutive_fail_count).unwrap_or(0);
            let failing = matches!(
                status.printable_status.as_deref(),
                Some("CrashLoopBackOff" | "ErrorUnschedulable" | "ErrImagePull" | "ImagePullBackOff")
            );
            let not_ready_since = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "Ready" && c.status != "True")
                .and_then(|c| c.last_transition_time.as_deref())
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| (self.w.now - t.with_timezone(&Utc)).to_std().unwrap_or_default());
            let long_failing = failing && not_ready_since.is_some_and(|d| d >= min);
            if fails >= i64::from(threshold) || long_failing {
                let why = if long_failing && fails < i64::from(threshold) {
                    format!("Replaced virtual machine {}: failing to start for over {min:?}", name(&vm.metadata))
                } else {
                    format!("Replaced virtual machine {}: failed to start {fails} times in a row", name(&vm.metadata))
                };
                self.delete(vm, why);
            } else {
                if failing {
                    if let Some(d) = not_ready_since {
                        let left = min.saturating_sub(d).max(Duration::from_secs(1));
                        self.plan.requeue_after = Some(self.plan.requeue_after.map_or(left, |r| r.min(left)));
                    }
                }
                keep.push(*vm);
            }
        }
        keep
    }

    /// The lowest indexes no VM of the namespace and no lingering guest uses.
    fn free_indexes(&self, n: usize) -> Vec<u32> {
        let pool_name = name(&self.pool.metadata);
        let taken: HashSet<u32> = self
            .w
            .vms
            .iter()
            .filter_map(|v| v.metadata.name.as_deref())
            .chain(self.w.vmis.iter().filter_map(|i| i.metadata.name.as_deref()))
            .filter_map(|n| index_of(&pool_name, n))
            .collect();
        (0..).filter(|i| !taken.contains(i)).take(n).collect()
    }

    fn create(&mut self, n: usize) {
        for i in self.free_indexes(n.min(BURST)) {
            self.plan.create.push(vm_for(self.pool, i, self.rev));
        }
    }

    fn update_in_place(&mut self, vm: &VirtualMachine, restart: bool) {
        let index = index_of(&name(&self.pool.metadata), &name(&vm.metadata)).unwrap_or(0);
        let mut new = vm_for(self.pool, index, self.rev);
        new.metadata =
            ObjectMeta { labels: new.metadata.labels, annotations: new.metadata.annotations, ..vm.metadata.clone() };
        let restart_vmi = restart
            .then(|| self.w.vmis.iter().find(|i| i.metadata.name == vm.metadata.name && !i.is_final()))
            .flatten()
            .map(|i| key(&i.metadata));
        self.plan.change.push(VmChange::Update { vm: Box::new(new), restart_vmi });
    }

    fn scale_and_update(
        &mut self,
        active: &[&VirtualMachine],
        kept: &[&VirtualMachine],
        available: &dyn Fn(&VirtualMachine) -> bool,
        updated: &dyn Fn(&VirtualMachine) -> bool,
        want: usize,
    ) {
        let strategy = self.pool.spec.update_strategy.clone().unwrap_or_default();
        let surge = self.pool.max_surge().max(0) as usize;
        let max_unavailable = self.pool.max_unavailable().max(0) as usize;
        let (new, old): (Vec<&VirtualMachine>, Vec<&VirtualMachine>) = active.iter().partition(|v| updated(v));
        let proactive = strategy.unmanaged.is_none() && strategy.opportunistic.is_none();
        let rolling = proactive && surge > 0 && !old.is_empty();

        if strategy.opportunistic.is_some() {
            for vm in &old {
                self.update_in_place(vm, false);
            }
        }
        if rolling {
            self.roll(&new, &old, available, want, surge, max_unavailable);
            return;
        }
        // Scaling.
        if active.len() < want {
            let mut missing = want - active.len();
            // Preserved VMs come back first, with the current template.
            for vm in kept.iter().take(missing) {
                let index = index_of(&name(&self.pool.metadata), &name(&vm.metadata)).unwrap_or(0);
                let mut back = vm_for(self.pool, index, self.rev);
                let mut annotations = vm.metadata.annotations.clone().unwrap_or_default();
                annotations.remove(PRESERVED_ANNOTATION);
                back.metadata =
                    ObjectMeta { labels: back.metadata.labels, annotations: Some(annotations), ..vm.metadata.clone() };
                self.plan.change.push(VmChange::Revive { vm: Box::new(back) });
                missing -= 1;
            }
            self.create(missing);
        } else if active.len() > want {
            self.scale_in(active, active.len() - want);
        }
        // In-place proactive update, maxUnavailable at a time (unready ones first: updating them costs nothing).
        if proactive && !old.is_empty() {
            let unavailable = active.iter().filter(|v| !available(v)).count();
            let mut budget = max_unavailable.saturating_sub(unavailable);
            let policy = strategy.proactive.as_ref().and_then(|p| p.selection_policy.as_ref());
            let mut order = old.clone();
            select::order(&mut order, self.pool, policy, self.w);
            order.sort_by_key(|v| available(v));
            let deleted: HashSet<String> = self.plan.delete.iter().map(|d| d.1.clone()).collect();
            for vm in order {
                if deleted.contains(vm.metadata.uid.as_deref().unwrap_or_default()) {
                    continue;
                }
                if available(vm) {
                    if budget == 0 {
                        break;
                    }
                    budget -= 1;
                }
                self.update_in_place(vm, true);
            }
        }
    }

    /// kumo's surge rollout (Deployment's algorithm over VMs).
    fn roll(
        &mut self,
        new: &[&VirtualMachine],
        old: &[&VirtualMachine],
        available: &dyn Fn(&VirtualMachine) -> bool,
        want: usize,
        surge: usize,
        max_unavailable: usize,
    ) {
        let live = new.len() + old.len() + self.lingering;
        let room = (want + surge).saturating_sub(live);
        if new.len() < want && room > 0 {
            self.create((want - new.len()).min(room));
        }
        if new.len() > want {
            self.scale_in(new, new.len() - want);
        }
        // Old VMs may go while `replicas − maxUnavailable` VMs stay available; unready old ones go first.
        let min_available = want.saturating_sub(max_unavailable);
        let total = new.len() + old.len();
        let new_unavailable = new.iter().filter(|v| !available(v)).count();
        let mut budget = total.saturating_sub(min_available).saturating_sub(new_unavailable);
        let mut order = old.to_vec();
        let policy = self.pool.spec.update_strategy.as_ref().and_then(|s| s.proactive.as_ref());
        select::order(&mut order, self.pool, policy.and_then(|p| p.selection_policy.as_ref()), self.w);
        order.sort_by_key(|v| available(v));
        for vm in order {
            if budget == 0 {
                break;
            }
            budget -= 1;
            let why = format!("Deleted old virtual machine {} (replaced by revision {})", name(&vm.metadata), self.rev);
            self.delete(vm, why);
        }
    }

    /// Removes `n` VMs per the scale-in strategy.
    fn scale_in(&mut self, vms: &[&VirtualMachine], n: usize) {
        let strategy = self.pool.spec.scale_in_strategy.clone().unwrap_or_default();
        if strategy.unmanaged.is_some() || strategy.opportunistic.is_some() {
            // Left to whoever deletes VMs; the pool only stops replacing them.
            return;
        }
        let proactive = strategy.proactive.unwrap_or_default();
        let mut order = vms.to_vec();
        select::order(&mut order, self.pool, proactive.selection_policy.as_ref(), self.w);
        let offline = proactive.state_preservation.as_deref() == Some("Offline");
        for vm in order.into_iter().take(n.min(BURST)) {
            if offline {
                let (name, uid) = key(&vm.metadata);
                self.plan.change.push(VmChange::Preserve { name, uid });
            } else {
                let why = format!("Deleted virtual machine {}: the pool scaled in", name(&vm.metadata));
                self.delete(vm, why);
            }
        }
    }
}
