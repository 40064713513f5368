//! IPv4 CIDR blocks, as Node `spec.podCIDR` and `--cluster-cidr` spell them (`10.244.0.0/16`). Shared by the
//! node IPAM controller, which carves the cluster CIDR into per-node blocks, and the node agent, which takes its
//! bridge gateway, pod addresses and routes from them.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// A network address and prefix length, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix_len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid IPv4 CIDR {input:?}: {why}")]
pub struct CidrError {
    input: String,
    why: &'static str,
}

fn mask(prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - prefix_len)
    }
}

impl Ipv4Cidr {
    /// The block of `prefix_len` bits that holds `addr` (host bits cleared).
    pub fn containing(addr: Ipv4Addr, prefix_len: u8) -> Option<Self> {
        (prefix_len <= 32).then(|| Ipv4Cidr { network: Ipv4Addr::from(u32::from(addr) & mask(prefix_len)), prefix_len })
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.prefix_len))
    }

    /// The last address (the broadcast address when the block is a subnet).
    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask(self.prefix_len))
    }

    /// The `n`th address of the block (0 is the network address); `None` past its end.
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u64 << (32 - self.prefix_len);
        (u64::from(n) < size).then(|| Ipv4Addr::from(u32::from(self.network) + n))
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask(self.prefix_len) == u32::from(self.network)
    }

    /// Whether the two blocks share any address (one then contains the other).
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }

    /// How many blocks of `prefix_len` bits this block splits into; `None` if they would not fit.
    pub fn subnet_count(&self, prefix_len: u8) -> Option<u64> {
        (self.prefix_len..=32).contains(&prefix_len).then(|| 1u64 << (prefix_len - self.prefix_len))
    }

    /// The `index`th block of `prefix_len` bits inside this one, in address order.
    pub fn subnet(&self, prefix_len: u8, index: u64) -> Option<Ipv4Cidr> {
        if index >= self.subnet_count(prefix_len)? {
            return None;
        }
        let offset = (index << (32 - u32::from(prefix_len))) as u32;
        Some(Ipv4Cidr { network: Ipv4Addr::from(u32::from(self.network) + offset), prefix_len })
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    /// Strict: the address must be the network address, so `10.244.1.5/24` (a host, not a block) is refused
    /// rather than silently widened.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| CidrError { input: s.to_string(), why };
        let (addr, len) = s.split_once('/').ok_or_else(|| err("expected ADDRESS/PREFIX, e.g. 10.244.0.0/16"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| err("not an IPv4 address"))?;
        let prefix_len: u8 = len.parse().map_err(|_| err("the prefix length is not a number"))?;
        let cidr = Ipv4Cidr::containing(addr, prefix_len).ok_or_else(|| err("the prefix length exceeds 32"))?;
        if cidr.network != addr {
            return Err(err("host bits are set (use the network address)"));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// The pod CIDRs a Node holds, as written: `spec.podCIDRs`, else the older single `spec.podCIDR`.
pub fn node_pod_cidrs(node: &k8s_openapi::api::core::v1::Node) -> Vec<String> {
    let spec = node.spec.as_ref();
    match spec.and_then(|s| s.pod_cidrs.clone()).filter(|l| !l.is_empty()) {
        Some(list) => list,
        None => spec.and_then(|s| s.pod_cidr.clone()).filter(|c| !c.is_empty()).into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_and_print() {
        let x = c("10.244.0.0/16");
        assert_eq!(x.to_string(), "10.244.0.0/16");
        assert_eq!(x.netmask(), Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(x.last(), Ipv4Addr::new(10, 244, 255, 255));
        assert_eq!(c("0.0.0.0/0").last(), Ipv4Addr::BROADCAST);
        assert_eq!(c("10.0.0.7/32").nth(0), Some(Ipv4Addr::new(10, 0, 0, 7)));
        for bad in ["10.244.1.5/24", "10.244.0.0", "10.244.0.0/33", "10.244.0/16", "fd00::/64", "10.0.0.0/x"] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad} parsed");
        }
        assert!(c("10.244.0.0/16").to_string().parse::<Ipv4Cidr>().is_ok());
    }

    #[test]
    fn containment_and_subnets() {
        let cluster = c("10.244.0.0/16");
        assert!(cluster.contains(Ipv4Addr::new(10, 244, 200, 1)));
        assert!(!cluster.contains(Ipv4Addr::new(10, 245, 0, 1)));
        assert_eq!(cluster.subnet_count(24), Some(256));
        assert_eq!(cluster.subnet_count(15), None);
        assert_eq!(cluster.subnet(24, 0), Some(c("10.244.0.0/24")));
        assert_eq!(cluster.subnet(24, 3), Some(c("10.244.3.0/24")));
        assert_eq!(cluster.subnet(24, 255), Some(c("10.244.255.0/24")));
        assert_eq!(cluster.subnet(24, 256), None);
        assert_eq!(c("0.0.0.0/0").subnet(32, u32::MAX as u64), Some(c("255.255.255.255/32")));
        assert!(cluster.overlaps(&c("10.244.7.0/24")) && c("10.244.7.0/24").overlaps(&cluster));
        assert!(!c("10.244.7.0/24").overlaps(&c("10.244.8.0/24")));
        let node = c("10.244.7.0/24");
        assert_eq!(node.nth(1), Some(Ipv4Addr::new(10, 244, 7, 1)));
        assert_eq!(node.nth(256), None);
    }
}
