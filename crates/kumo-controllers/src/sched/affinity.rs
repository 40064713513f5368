//! Pod affinity and anti-affinity between VMIs (`spec.affinity.podAffinity` / `podAntiAffinity`, matched on
//! VMI labels, as KubeVirt's virt-launcher pods carry them), evaluated like kube-scheduler's InterPodAffinity:
//! by topology domain (the value of a node label, `topologyKey`; `kubernetes.io/hostname` falls back to the
//! node's name), against the VMIs already bound to nodes — both the new VMI's terms and the required
//! anti-affinity of the VMIs already placed.

use super::{NodeInfo, Placed};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::core::v1::{PodAffinityTerm, WeightedPodAffinityTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kumo_api::kubevirt::VirtualMachineInstance;
use std::collections::{BTreeMap, HashMap, HashSet};

const HOSTNAME: &str = "kubernetes.io/hostname";

type Namespaces = BTreeMap<String, BTreeMap<String, String>>;
/// A topology domain: (topologyKey, the node label's value).
type Domain<'a> = (&'a str, &'a str);

/// A set of domains, with the keys they use (few), so a node is looked up once per key.
#[derive(Default)]
struct Domains<'a> {
    keys: Vec<&'a str>,
    set: HashSet<Domain<'a>>,
}

impl<'a> Domains<'a> {
    fn insert(&mut self, d: Option<Domain<'a>>) {
        let Some(d) = d else { return };
        if !self.keys.contains(&d.0) {
            self.keys.push(d.0);
        }
        self.set.insert(d);
    }

    /// Whether the node is in one of the domains.
    fn holds(&self, n: &NodeInfo) -> bool {
        self.keys.iter().any(|k| value(n.node, k).is_some_and(|v| self.set.contains(&(*k, v))))
    }
}

/// The new VMI's affinity terms, resolved against what is placed where.
pub(super) struct Placement<'a> {
    affinity: Vec<&'a PodAffinityTerm>,
    /// Domains holding VMIs that match every required affinity term, and how many.
    affinity_counts: HashMap<Domain<'a>, usize>,
    /// The new VMI matches its own affinity terms (so it may be the first of its group).
    matches_itself: bool,
    anti: Vec<&'a PodAffinityTerm>,
    /// Domains holding a VMI that one of the new VMI's required anti-affinity terms matches.
    anti_domains: Domains<'a>,
    /// Domains whose VMIs' own required anti-affinity terms reject the new VMI.
    rejected_by_existing: Domains<'a>,
    /// Preferred terms: weight × matching VMIs, per domain (anti-affinity negative), and the keys used.
    preferred: HashMap<Domain<'a>, i64>,
    preferred_keys: Vec<&'a str>,
}

/// The node's value for a topology key.
fn value<'n>(n: &'n Node, key: &str) -> Option<&'n str> {
    let label = n.metadata.labels.as_ref().and_then(|l| l.get(key)).map(String::as_str);
    label.or_else(|| (key == HOSTNAME).then_some(n.metadata.name.as_deref().unwrap_or_default()))
}

fn domain<'a>(n: &'a Node, key: &'a str) -> Option<Domain<'a>> {
    value(n, key).map(|v| (key, v))
}

fn namespace(v: &VirtualMachineInstance) -> &str {
    v.metadata.namespace.as_deref().unwrap_or("")
}

fn required(terms: Option<&Vec<PodAffinityTerm>>) -> Vec<&PodAffinityTerm> {
    terms.map(|t| t.iter().collect()).unwrap_or_default()
}

fn preferred(terms: Option<&Vec<WeightedPodAffinityTerm>>) -> &[WeightedPodAffinityTerm] {
    terms.map(Vec::as_slice).unwrap_or_default()
}

impl<'a> Placement<'a> {
    /// The new VMI's terms against what is `placed` on `nodes`. Without terms of its own, only the placed VMIs
    /// with required anti-affinity can matter, and only they are looked at.
    pub fn new(
        vmi: &'a VirtualMachineInstance,
        placed: &'a Placed,
        nodes: &[&'a Node],
        namespaces: &'a Namespaces,
    ) -> Self {
        let aff = vmi.spec.affinity.as_ref();
        let pod_aff = aff.and_then(|a| a.pod_affinity.as_ref());
        let pod_anti = aff.and_then(|a| a.pod_anti_affinity.as_ref());
        let affinity = required(pod_aff.and_then(|p| p.required_during_scheduling_ignored_during_execution.as_ref()));
        let anti = required(pod_anti.and_then(|p| p.required_during_scheduling_ignored_during_execution.as_ref()));
        let soft_aff = preferred(pod_aff.and_then(|p| p.preferred_during_scheduling_ignored_during_execution.as_ref()));
        let soft_anti =
            preferred(pod_anti.and_then(|p| p.preferred_during_scheduling_ignored_during_execution.as_ref()));
        let ns = namespace(vmi);
        let matches = |t: &PodAffinityTerm, other: &VirtualMachineInstance| term_matches(t, ns, other, namespaces);
        let mut preferred_keys: Vec<&str> =
            soft_aff.iter().chain(soft_anti).map(|w| w.pod_affinity_term.topology_key.as_str()).collect();
        preferred_keys.sort_unstable();
        preferred_keys.dedup();
        let mut p = Placement {
            matches_itself: affinity.iter().all(|t| matches(t, vmi)),
            affinity_counts: HashMap::new(),
            anti_domains: Domains::default(),
            rejected_by_existing: Domains::default(),
            preferred: HashMap::new(),
            preferred_keys,
            affinity: affinity.clone(),
            anti: anti.clone(),
        };
        let own_terms = !(affinity.is_empty() && anti.is_empty() && soft_aff.is_empty() && soft_anti.is_empty());
        let others: Vec<(&str, &VirtualMachineInstance)> =
            if own_terms { placed.all().collect() } else { placed.with_required_anti().collect() };
        if others.is_empty() {
            return p;
        }
        let by_name: HashMap<&str, &Node> =
            nodes.iter().map(|n| (n.metadata.name.as_deref().unwrap_or_default(), *n)).collect();
        for (node, other) in others {
            let Some(&n) = by_name.get(node) else { continue };
            if !affinity.is_empty() && affinity.iter().all(|t| matches(t, other)) {
                for d in affinity.iter().filter_map(|t| domain(n, &t.topology_key)) {
                    *p.affinity_counts.entry(d).or_default() += 1;
                }
            }
            for t in anti.iter().filter(|t| matches(t, other)) {
                p.anti_domains.insert(domain(n, &t.topology_key));
            }
            // Symmetry: a placed VMI that must not share a domain with VMIs like this one keeps it out.
            let theirs = other.spec.affinity.as_ref().and_then(|a| a.pod_anti_affinity.as_ref());
            let theirs = theirs.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref());
            for t in theirs.into_iter().flatten() {
                if term_matches(t, namespace(other), vmi, namespaces) {
                    p.rejected_by_existing.insert(domain(n, &t.topology_key));
                }
            }
            for (w, sign) in soft_aff.iter().map(|w| (w, 1)).chain(soft_anti.iter().map(|w| (w, -1))) {
                if matches(&w.pod_affinity_term, other) {
                    if let Some(d) = domain(n, &w.pod_affinity_term.topology_key) {
                        *p.preferred.entry(d).or_default() += sign * i64::from(w.weight);
                    }
                }
            }
        }
        p
    }

    /// Why `n` breaks an affinity rule, in kube-scheduler's words and order; None when it breaks none.
    pub fn filter(&self, n: &NodeInfo) -> Option<&'static str> {
        if self.rejected_by_existing.holds(n) {
            return Some("node(s) didn't satisfy existing pods anti-affinity rules");
        }
        if !self.anti.is_empty() && self.anti_domains.holds(n) {
            return Some("node(s) didn't match pod anti-affinity rules");
        }
        if self.affinity.is_empty() {
            return None;
        }
        let domains: Option<Vec<Domain>> = self
            .affinity
            .iter()
            .map(|t| value(n.node, &t.topology_key).map(|v| (t.topology_key.as_str(), v)))
            .collect();
        // The node must have every term's topology label.
        let Some(domains) = domains else { return Some("node(s) didn't match pod affinity rules") };
        let present = domains.iter().all(|d| self.affinity_counts.get(d).is_some_and(|c| *c > 0));
        // The first VMI of a group that is affine to itself goes anywhere.
        let first = self.affinity_counts.is_empty() && self.matches_itself;
        (!present && !first).then_some("node(s) didn't match pod affinity rules")
    }

    /// The preferred terms' score for `n` (may be negative).
    pub fn preferred(&self, n: &NodeInfo) -> i64 {
        self.preferred_keys.iter().filter_map(|k| value(n.node, k).and_then(|v| self.preferred.get(&(*k, v)))).sum()
    }
}

/// Whether the term, written on a VMI in `owner_ns`, selects `other`: its namespaces (listed, or selected by
/// labels; neither means the owner's own) and its label selector (absent selects nothing).
fn term_matches(t: &PodAffinityTerm, owner_ns: &str, other: &VirtualMachineInstance, namespaces: &Namespaces) -> bool {
    let other_ns = namespace(other);
    let listed = t.namespaces.as_deref().unwrap_or_default();
    let ns_ok = match &t.namespace_selector {
        None if listed.is_empty() => other_ns == owner_ns,
        None => listed.iter().any(|n| n == other_ns),
        Some(sel) => listed.iter().any(|n| n == other_ns) || selects(sel, namespaces.get(other_ns)),
    };
    ns_ok && t.label_selector.as_ref().is_some_and(|sel| selects(sel, other.metadata.labels.as_ref()))
}

/// A metav1.LabelSelector; an empty one selects everything.
pub(crate) fn selects(sel: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let get = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    let by_label = sel.match_labels.iter().flatten().all(|(k, v)| get(k) == Some(v.as_str()));
    by_label
        && sel.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let have = get(&e.key);
            match e.operator.as_str() {
                "In" => have.is_some_and(|h| values.iter().any(|v| v == h)),
                "NotIn" => have.is_none_or(|h| !values.iter().any(|v| v == h)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                _ => false,
            }
        })
}
