//! Pod address allocation for this node: one IPv4 address per VMI uid, out of the node's pod CIDR (from its
//! third address: the first is the network's, the second the bridge's), persisted as JSON in the agent's state
//! directory so a restarted agent gives each VMI the address it had. A file lock makes concurrent allocators
//! (threads or processes) safe.
//!
//! An allocation outside the range (the Node was re-created with another pod CIDR while its guests ran) is
//! never handed out: [`Ipam::allocate`] refuses it, and the VMI fails rather than keep an address that now
//! routes to another node. Releasing it frees the entry.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kumo_api::cidr::Ipv4Cidr;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

const STATE_FILE: &str = "ipam.json";
const LOCK_FILE: &str = "ipam.lock";
const FORMAT_VERSION: u32 = 1;

/// A VMI holds an address this node's pod CIDR no longer contains.
#[derive(Debug, thiserror::Error)]
#[error(
    "the pod address {ip} is outside this node's range {first}–{last} (was its Node re-created with another pod CIDR?)"
)]
pub struct OutsideRange {
    pub ip: Ipv4Addr,
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

/// The allocator. Cheap to construct; every call reads and (if needed) rewrites the state file under the lock.
#[derive(Debug, Clone)]
pub struct Ipam {
    dir: PathBuf,
    first: Ipv4Addr,
    last: Ipv4Addr,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    version: u32,
    /// The address handed out most recently; the next search starts after it, so a released address is not
    /// reused at once (stale ARP/conntrack entries elsewhere would point at the wrong guest).
    #[serde(default)]
    cursor: Option<Ipv4Addr>,
    #[serde(default)]
    allocations: BTreeMap<String, Ipv4Addr>,
}

impl Ipam {
    /// An allocator of the guest addresses of `pod_cidr` (the third to the last but one) with its state in
    /// `state_dir`.
    pub fn for_cidr(state_dir: impl Into<PathBuf>, pod_cidr: Ipv4Cidr) -> Result<Self> {
        // A /30 has exactly one; a /31 or /32 none.
        let Some(first) = pod_cidr.nth(2).filter(|f| *f < pod_cidr.last()) else {
            bail!("pod CIDR {pod_cidr} has no room for guests")
        };
        Self::with_range(state_dir, first, Ipv4Addr::from(u32::from(pod_cidr.last()) - 1))
    }

    /// An allocator of `first..=last`.
    pub fn with_range(state_dir: impl Into<PathBuf>, first: Ipv4Addr, last: Ipv4Addr) -> Result<Self> {
        if first > last {
            bail!("empty address range {first}–{last}");
        }
        Ok(Self { dir: state_dir.into(), first, last })
    }

    /// Whether `ip` is in this allocator's range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&ip)
    }

    /// The address of `uid`, allocating one if it has none. Idempotent. Fails with [`OutsideRange`] when `uid`
    /// holds an address outside the range.
    pub fn allocate(&self, uid: &str) -> Result<Ipv4Addr> {
        self.update(|s| {
            if let Some(ip) = s.allocations.get(uid) {
                if !self.contains(*ip) {
                    return Err(OutsideRange { ip: *ip, first: self.first, last: self.last }.into());
                }
                return Ok(*ip);
            }
            let (lo, hi) = (u32::from(self.first), u32::from(self.last));
            let size = hi - lo + 1;
            let start = match s.cursor.map(u32::from) {
                Some(c) if (lo..=hi).contains(&c) => c - lo + 1,
                _ => 0,
            };
            let taken: std::collections::BTreeSet<Ipv4Addr> = s.allocations.values().copied().collect();
            for i in 0..size {
                let ip = Ipv4Addr::from(lo + (start + i) % size);
                if !taken.contains(&ip) {
                    s.allocations.insert(uid.to_string(), ip);
                    s.cursor = Some(ip);
                    return Ok(ip);
                }
            }
            bail!("no free pod address left in {}–{}", self.first, self.last)
        })
    }

    /// Frees the address of `uid`; succeeds if it had none.
    pub fn release(&self, uid: &str) -> Result<()> {
        self.update(|s| {
            s.allocations.remove(uid);
            Ok(())
        })
    }

    /// The address of `uid`, if allocated.
    pub fn get(&self, uid: &str) -> Result<Option<Ipv4Addr>> {
        let _lock = self.lock()?;
        Ok(self.load()?.allocations.get(uid).copied())
    }

    /// Every allocation, by uid.
    pub fn allocations(&self) -> Result<BTreeMap<String, Ipv4Addr>> {
        let _lock = self.lock()?;
        Ok(self.load()?.allocations)
    }

    fn lock(&self) -> Result<Flock<File>> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let path = self.dir.join(LOCK_FILE);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .with_context(|| format!("locking {}", path.display()))
    }

    fn load(&self) -> Result<State> {
        let path = self.dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(b) => {
                let s: State = serde_json::from_slice(&b).with_context(|| format!("parsing {}", path.display()))?;
                if s.version > FORMAT_VERSION {
                    bail!(
                        "{} has format version {}, newer than this agent ({FORMAT_VERSION})",
                        path.display(),
                        s.version
                    );
                }
                Ok(s)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn update<T>(&self, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let _lock = self.lock()?;
        let mut s = self.load()?;
        let out = f(&mut s)?;
        s.version = FORMAT_VERSION;
        write_atomic(&self.dir.join(STATE_FILE), &serde_json::to_vec_pretty(&s)?)?;
        Ok(out)
    }
}

/// Write to a temporary file, fsync, rename over the target: readers see the old or the new state, never half.
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", tmp.display()))?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn allocate_is_idempotent_and_persistent() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::for_cidr(dir.path(), cidr("10.244.7.0/24")).unwrap();
        let a = ipam.allocate("uid-a").unwrap();
        let b = ipam.allocate("uid-b").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 244, 7, 2));
        assert_eq!(b, Ipv4Addr::new(10, 244, 7, 3));
        assert_eq!(ipam.allocate("uid-a").unwrap(), a);
        // A new allocator over the same directory (an agent restart) sees the same state.
        let again = Ipam::for_cidr(dir.path(), cidr("10.244.7.0/24")).unwrap();
        assert_eq!(again.allocate("uid-b").unwrap(), b);
        assert_eq!(again.get("uid-a").unwrap(), Some(a));
        assert_eq!(again.allocations().unwrap().len(), 2);
    }

    #[test]
    fn release_and_no_immediate_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::with_range(dir.path(), Ipv4Addr::new(10, 1, 0, 2), Ipv4Addr::new(10, 1, 0, 4)).unwrap();
        let a = ipam.allocate("a").unwrap();
        ipam.release("a").unwrap();
        ipam.release("a").unwrap(); // already released: fine
        assert_eq!(ipam.get("a").unwrap(), None);
        let b = ipam.allocate("b").unwrap();
        assert_ne!(a, b, "a just-released address is not handed out first");
        ipam.allocate("c").unwrap();
        // Wraps around to the freed address, then runs out.
        assert_eq!(ipam.allocate("d").unwrap(), a);
        let err = ipam.allocate("e").unwrap_err().to_string();
        assert!(err.contains("no free pod address"), "{err}");
        assert!(Ipam::with_range(dir.path(), Ipv4Addr::new(10, 1, 0, 5), Ipv4Addr::new(10, 1, 0, 4)).is_err());
    }

    #[test]
    fn cidr_range_and_a_changed_cidr() {
        let dir = tempfile::tempdir().unwrap();
        let small = Ipam::for_cidr(dir.path(), cidr("10.9.0.0/30")).unwrap();
        assert_eq!(small.allocate("only").unwrap(), Ipv4Addr::new(10, 9, 0, 2));
        assert!(small.allocate("second").is_err(), "a /30 holds one guest");
        assert!(Ipam::for_cidr(dir.path(), cidr("10.9.0.0/31")).is_err());
        // The node's block changed under a VMI: its old address is refused, not handed out again.
        let moved = Ipam::for_cidr(dir.path(), cidr("10.9.1.0/24")).unwrap();
        let err = moved.allocate("only").unwrap_err();
        let outside = err.downcast_ref::<OutsideRange>().expect("typed error");
        assert_eq!(outside.ip, Ipv4Addr::new(10, 9, 0, 2));
        assert!(err.to_string().contains("outside this node's range 10.9.1.2–10.9.1.254"), "{err}");
        assert!(!moved.contains(Ipv4Addr::new(10, 9, 0, 2)) && moved.contains(Ipv4Addr::new(10, 9, 1, 254)));
        moved.release("only").unwrap();
        assert_eq!(moved.allocate("only").unwrap(), Ipv4Addr::new(10, 9, 1, 2));
    }

    #[test]
    fn concurrent_allocators_do_not_collide() {
        let dir = tempfile::tempdir().unwrap();
        let ips: Vec<Ipv4Addr> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|i| {
                    let d = dir.path().to_path_buf();
                    s.spawn(move || {
                        Ipam::for_cidr(d, cidr("10.1.0.0/24")).unwrap().allocate(&format!("uid-{i}")).unwrap()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let unique: std::collections::BTreeSet<_> = ips.iter().collect();
        assert_eq!(unique.len(), 8);
    }
}
