//! nftables rulesets, as text for `nft -f -`. The generators are pure; [`apply`] replaces a table atomically
//! (add + delete + define in one transaction), so re-applying after an agent restart is safe.

use std::fmt::Write;
use std::net::Ipv4Addr;

use anyhow::Result;
use kumo_api::cidr::Ipv4Cidr;

use super::netns::run_stdin;

/// The table name kumo uses in every namespace (families `ip` and `bridge`).
pub const TABLE: &str = "kumo";

/// A transport protocol of a forwarded port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

/// Node level: masquerade pod traffic leaving the node through anything but the node bridge, unless it goes to
/// a pod CIDR (this node's or a peer's, the set `pod_cidrs`): pods see each other's real addresses.
pub fn node_ruleset(pod_cidr: Ipv4Cidr, bridge: &str, peer_cidrs: &[Ipv4Cidr]) -> String {
    let cidrs: std::collections::BTreeSet<Ipv4Cidr> =
        std::iter::once(pod_cidr).chain(peer_cidrs.iter().copied()).collect();
    let cidrs: Vec<String> = cidrs.iter().map(Ipv4Cidr::to_string).collect();
    format!(
        "table ip {TABLE} {{\n\
         \tset pod_cidrs {{\n\
         \t\ttype ipv4_addr; flags interval; auto-merge;\n\
         \t\telements = {{ {} }}\n\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {pod_cidr} ip daddr != @pod_cidrs oifname != \"{bridge}\" masquerade\n\
         \t}}\n\
         }}\n",
        cidrs.join(", ")
    )
}

/// Masquerade binding, inside the VMI's namespace: DNAT `ports` (all TCP/UDP/SCTP when empty, as KubeVirt
/// does) arriving on `uplink` for `pod_ip` to the guest, and masquerade the guest subnet out of `uplink`.
pub fn masquerade_ruleset(
    uplink: &str,
    pod_ip: Ipv4Addr,
    guest_ip: Ipv4Addr,
    guest_net: (Ipv4Addr, u8),
    ports: &[(u16, Proto)],
) -> String {
    let mut dnat = String::new();
    let head = format!("\t\tiifname \"{uplink}\" ip daddr {pod_ip}");
    if ports.is_empty() {
        let _ = writeln!(dnat, "{head} meta l4proto {{ tcp, udp, sctp }} dnat to {guest_ip}");
    }
    for proto in [Proto::Tcp, Proto::Udp, Proto::Sctp] {
        let mut list: Vec<u16> = ports.iter().filter(|(_, p)| *p == proto).map(|(n, _)| *n).collect();
        list.sort_unstable();
        list.dedup();
        if !list.is_empty() {
            let list: Vec<String> = list.iter().map(u16::to_string).collect();
            let _ = writeln!(dnat, "{head} {} dport {{ {} }} dnat to {guest_ip}", proto.as_str(), list.join(", "));
        }
    }
    let (net, len) = guest_net;
    format!(
        "table ip {TABLE} {{\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         {dnat}\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {net}/{len} oifname \"{uplink}\" masquerade\n\
         \t}}\n\
         }}\n"
    )
}

/// Bridge binding, inside the VMI's namespace: keep DHCP between the guest and its own server. Requests from
/// other guests on the node network must not reach this server, this guest's requests must not leave, and no
/// other server's replies may reach this guest.
pub fn bridge_isolation_ruleset(uplink: &str) -> String {
    format!(
        "table bridge {TABLE} {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tiifname \"{uplink}\" udp dport {{ 67, 68 }} drop\n\
         \t\toifname \"{uplink}\" udp dport {{ 67, 68 }} drop\n\
         \t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiifname \"{uplink}\" udp dport 67 drop\n\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority filter; policy accept;\n\
         \t\toifname \"{uplink}\" udp dport 68 drop\n\
         \t}}\n\
         }}\n"
    )
}

fn nft(netns: Option<&str>, args: &[&str], stdin: Option<&str>) -> Result<String> {
    match netns {
        Some(ns) => {
            let mut v = vec!["netns", "exec", ns, "nft"];
            v.extend_from_slice(args);
            run_stdin("ip", &v, stdin)
        }
        None => run_stdin("nft", args, stdin),
    }
}

/// Replaces table `family kumo` in `netns` (or the current namespace) by `ruleset`, in one transaction.
pub fn apply(netns: Option<&str>, family: &str, ruleset: &str) -> Result<()> {
    let script = format!("add table {family} {TABLE}\ndelete table {family} {TABLE}\n{ruleset}");
    nft(netns, &["-f", "-"], Some(&script)).map(drop)
}

/// Deletes table `family kumo`; succeeds if it does not exist (adding it first makes the delete always valid).
pub fn delete(netns: Option<&str>, family: &str) -> Result<()> {
    let script = format!("add table {family} {TABLE}\ndelete table {family} {TABLE}\n");
    nft(netns, &["-f", "-"], Some(&script)).map(drop)
}

/// The whole ruleset of a namespace (for diagnostics and tests).
pub fn list_ruleset(netns: Option<&str>) -> Result<String> {
    nft(netns, &["list", "ruleset"], None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 7);
    const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    const GNET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 0, 2, 0), 24);

    #[test]
    fn node_rules() {
        let own = "10.244.0.0/24".parse().unwrap();
        let r = node_ruleset(own, "kumo0", &[]);
        assert!(r.starts_with("table ip kumo {"));
        assert!(r.contains("elements = { 10.244.0.0/24 }"), "{r}");
        assert!(r.contains("ip saddr 10.244.0.0/24 ip daddr != @pod_cidrs oifname != \"kumo0\" masquerade"), "{r}");
        let peers = ["10.244.2.0/24".parse().unwrap(), "10.244.1.0/24".parse().unwrap(), own];
        let r = node_ruleset(own, "kumo0", &peers);
        assert!(r.contains("elements = { 10.244.0.0/24, 10.244.1.0/24, 10.244.2.0/24 }"), "{r}");
    }

    #[test]
    fn masquerade_declared_ports() {
        let ports = [(8080, Proto::Tcp), (22, Proto::Tcp), (53, Proto::Udp), (22, Proto::Tcp)];
        let r = masquerade_ruleset("eth0", POD, GUEST, GNET, &ports);
        assert!(r.contains("iifname \"eth0\" ip daddr 10.244.0.7 tcp dport { 22, 8080 } dnat to 10.0.2.2\n"), "{r}");
        assert!(r.contains("iifname \"eth0\" ip daddr 10.244.0.7 udp dport { 53 } dnat to 10.0.2.2\n"), "{r}");
        assert!(!r.contains("sctp"), "{r}");
        assert!(!r.contains("l4proto"), "{r}");
        assert!(r.contains("ip saddr 10.0.2.0/24 oifname \"eth0\" masquerade"), "{r}");
    }

    #[test]
    fn masquerade_all_ports_when_none_declared() {
        let r = masquerade_ruleset("eth0", POD, GUEST, GNET, &[]);
        assert!(r.contains("ip daddr 10.244.0.7 meta l4proto { tcp, udp, sctp } dnat to 10.0.2.2"), "{r}");
        assert!(!r.contains("dport"), "{r}");
    }

    #[test]
    fn bridge_isolation() {
        let r = bridge_isolation_ruleset("eth0");
        assert!(r.starts_with("table bridge kumo {"));
        assert_eq!(r.matches("drop").count(), 4);
    }

    #[test]
    fn proto_serde() {
        assert_eq!(serde_json::to_string(&Proto::Sctp).unwrap(), "\"SCTP\"");
        assert_eq!(serde_json::from_str::<Proto>("\"UDP\"").unwrap(), Proto::Udp);
    }
}
