//! Host-gateway routes: this node reaches another node's pods through a route `PEER_POD_CIDR via PEER_IP` in
//! the main table, over the hosts' own network (the peers must be on one L2 segment, as with flannel's
//! host-gw backend).
//!
//! The agent marks every route it creates with the protocol number [`ROUTE_PROTO`] and only ever changes or
//! deletes routes carrying it; a route someone else made to the same destination is left in place (and
//! reported), never replaced. [`plan`] decides from the routes present and the routes wanted (pure);
//! [`sync`] reads, plans and applies in one `ip -batch`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use kumo_api::cidr::Ipv4Cidr;

use super::netns::run_stdin;

/// The routing protocol number on kumo's routes (`ip route show proto 75`); unassigned in Linux's rtnetlink.h
/// and iproute2's rt_protos.
pub const ROUTE_PROTO: u8 = 75;

/// A route of the main table as `ip -N -j route` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Present {
    pub dst: String,
    pub gateway: Option<String>,
    /// Numeric (`-N`): "75" for ours.
    pub protocol: String,
}

impl Present {
    fn ours(&self) -> bool {
        self.protocol == ROUTE_PROTO.to_string()
    }
}

/// What [`sync`] does (or did).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutePlan {
    /// Routes to add or point elsewhere.
    pub replace: Vec<(Ipv4Cidr, Ipv4Addr)>,
    /// Our routes to remove (their node is gone, not Ready, or has another block now).
    pub delete: Vec<String>,
    /// Wanted destinations that already have a route kumo did not make, with its protocol.
    pub foreign: Vec<(Ipv4Cidr, String)>,
}

impl RoutePlan {
    pub fn is_empty(&self) -> bool {
        self.replace.is_empty() && self.delete.is_empty()
    }
}

/// Parses `ip -N -4 -j route show table main`.
pub fn parse(json: &str) -> Result<Vec<Present>> {
    let v: serde_json::Value = serde_json::from_str(json).context("parsing `ip -j route`")?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some(Present {
                dst: r["dst"].as_str()?.to_string(),
                gateway: r["gateway"].as_str().map(str::to_string),
                protocol: match &r["protocol"] {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    _ => "0".into(),
                },
            })
        })
        .collect())
}

/// The changes that make our routes exactly `want`. `ip` prints a /32 destination without its length, so
/// destinations are compared as blocks.
pub fn plan(present: &[Present], want: &BTreeMap<Ipv4Cidr, Ipv4Addr>) -> RoutePlan {
    let block = |dst: &str| -> Option<Ipv4Cidr> {
        if dst.contains('/') {
            dst.parse().ok()
        } else {
            Ipv4Cidr::containing(dst.parse().ok()?, 32)
        }
    };
    let mut out = RoutePlan::default();
    for (dst, via) in want {
        let same_dst: Vec<&Present> = present.iter().filter(|p| block(&p.dst) == Some(*dst)).collect();
        if let Some(other) = same_dst.iter().find(|p| !p.ours()) {
            out.foreign.push((*dst, other.protocol.clone()));
            continue;
        }
        let via_s = via.to_string();
        if !same_dst.iter().any(|p| p.gateway.as_deref() == Some(via_s.as_str())) {
            out.replace.push((*dst, *via));
        }
    }
    for p in present.iter().filter(|p| p.ours()) {
        if !block(&p.dst).is_some_and(|d| want.contains_key(&d)) {
            out.delete.push(p.dst.clone());
        }
    }
    out
}

/// The `ip -batch` lines of a plan.
pub fn batch(plan: &RoutePlan) -> String {
    let mut s = String::new();
    for (dst, via) in &plan.replace {
        s += &format!("route replace {dst} via {via} proto {ROUTE_PROTO}\n");
    }
    // The kernel deletes only a route of this protocol: never one somebody else made meanwhile.
    for dst in &plan.delete {
        s += &format!("route del {dst} proto {ROUTE_PROTO}\n");
    }
    s
}

fn ip(netns: Option<&str>, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut v = Vec::with_capacity(args.len() + 2);
    if let Some(ns) = netns {
        v.extend_from_slice(&["-n", ns]);
    }
    v.extend_from_slice(args);
    run_stdin("ip", &v, stdin)
}

/// The routes kumo made in `netns` (or in this namespace).
pub fn ours(netns: Option<&str>) -> Result<Vec<Present>> {
    Ok(parse(&ip(netns, &["-N", "-4", "-j", "route", "show", "table", "main"], None)?)?
        .into_iter()
        .filter(Present::ours)
        .collect())
}

/// Makes our routes in `netns` exactly `want`; returns what it changed. A failing line (say a gateway that is
/// not on a connected network) does not stop the others: it is reported as the error, and the next sync
/// tries again.
pub fn sync(netns: Option<&str>, want: &BTreeMap<Ipv4Cidr, Ipv4Addr>) -> Result<RoutePlan> {
    let present = parse(&ip(netns, &["-N", "-4", "-j", "route", "show", "table", "main"], None)?)?;
    let plan = plan(&present, want);
    if !plan.is_empty() {
        ip(netns, &["-force", "-batch", "-"], Some(&batch(&plan))).context("programming pod routes")?;
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    const IP_OUTPUT: &str = r#"[
        {"dst":"default","gateway":"198.19.0.254","dev":"eth0","protocol":"4","flags":[]},
        {"dst":"10.244.1.0/24","gateway":"198.19.0.2","dev":"eth0","protocol":"75","flags":[]},
        {"dst":"10.244.2.0/24","gateway":"198.19.0.9","dev":"eth0","protocol":"75","flags":[]},
        {"dst":"10.244.3.0/24","gateway":"198.19.0.3","dev":"eth0","protocol":"75","flags":[]},
        {"dst":"10.244.5.0/24","gateway":"198.19.0.7","dev":"eth0","protocol":"4","flags":[]},
        {"dst":"10.244.0.0/24","dev":"kumo0","protocol":"2","scope":"253","prefsrc":"10.244.0.1","flags":[]}
    ]"#;

    #[test]
    fn plan_adds_moves_deletes_and_leaves_foreign_routes() {
        let present = parse(IP_OUTPUT).unwrap();
        assert_eq!(present.len(), 6);
        assert_eq!(
            present[1],
            Present { dst: "10.244.1.0/24".into(), gateway: Some("198.19.0.2".into()), protocol: "75".into() }
        );
        let want = BTreeMap::from([
            (c("10.244.1.0/24"), Ipv4Addr::new(198, 19, 0, 2)), // in place: nothing to do
            (c("10.244.2.0/24"), Ipv4Addr::new(198, 19, 0, 2)), // its node moved: point it there
            (c("10.244.4.0/24"), Ipv4Addr::new(198, 19, 0, 4)), // new node
            (c("10.244.5.0/24"), Ipv4Addr::new(198, 19, 0, 5)), // someone else's static route: left alone
        ]);
        let p = plan(&present, &want);
        assert_eq!(
            p.replace,
            vec![
                (c("10.244.2.0/24"), Ipv4Addr::new(198, 19, 0, 2)),
                (c("10.244.4.0/24"), Ipv4Addr::new(198, 19, 0, 4))
            ]
        );
        assert_eq!(p.delete, vec!["10.244.3.0/24".to_string()], "only our own stale route goes");
        assert_eq!(p.foreign, vec![(c("10.244.5.0/24"), "4".to_string())]);
        assert_eq!(
            batch(&p),
            "route replace 10.244.2.0/24 via 198.19.0.2 proto 75\n\
             route replace 10.244.4.0/24 via 198.19.0.4 proto 75\n\
             route del 10.244.3.0/24 proto 75\n"
        );
        // Nothing wanted: all of ours go, nothing else does.
        let p = plan(&present, &BTreeMap::new());
        assert_eq!(p.delete.len(), 3);
        assert!(p.replace.is_empty() && p.foreign.is_empty());
    }

    #[test]
    fn converged_plan_is_empty() {
        let present = parse(
            r#"[{"dst":"10.1.0.7","gateway":"192.0.2.1","protocol":"75","flags":[]},
                {"dst":"10.2.0.0/16","gateway":"192.0.2.2","protocol":"75","flags":[]}]"#,
        )
        .unwrap();
        let want = BTreeMap::from([
            (c("10.1.0.7/32"), Ipv4Addr::new(192, 0, 2, 1)),
            (c("10.2.0.0/16"), Ipv4Addr::new(192, 0, 2, 2)),
        ]);
        assert!(plan(&present, &want).is_empty(), "{:?}", plan(&present, &want));
        assert!(parse("not json").is_err());
    }
}
