//! A map of short-lived entries that sweeps out the stale ones in passing, each time it has doubled since the
//! last sweep. Sweeping whenever it held more than a fixed number meant a scan of the whole map on every insert
//! once a burst (thousands of VMIs a minute) kept that many fresh: quadratic work in the burst's size.

use std::collections::HashMap;
use std::hash::Hash;
use std::ops::{Deref, DerefMut};

pub struct Swept<K, V> {
    map: HashMap<K, V>,
    /// The size that makes [`Swept::sweep`] scan.
    next: usize,
    smallest: usize,
}

impl<K: Eq + Hash, V> Swept<K, V> {
    /// A map that is never swept while under `smallest` entries.
    pub fn new(smallest: usize) -> Self {
        Swept { map: HashMap::new(), next: smallest, smallest }
    }

    /// Drops the entries `keep` refuses, if the map has doubled since it last did; call before inserting.
    pub fn sweep(&mut self, keep: impl FnMut(&K, &mut V) -> bool) {
        if self.map.len() >= self.next {
            self.map.retain(keep);
            self.next = (2 * self.map.len()).max(self.smallest);
        }
    }
}

impl<K, V> Deref for Swept<K, V> {
    type Target = HashMap<K, V>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl<K, V> DerefMut for Swept<K, V> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_once_per_doubling_and_keeps_what_it_is_told_to() {
        let mut m = Swept::new(4);
        let mut scans = 0;
        for i in 0..1024u32 {
            // Every entry stays fresh: a fixed threshold would scan on each insert past it.
            m.sweep(|_, _| {
                scans += 1;
                true
            });
            m.insert(i, ());
        }
        assert!(scans < 2 * 1024, "{scans} entries looked at for 1024 inserts");
        m.sweep(|k, _| k % 2 == 0);
        assert_eq!(m.len(), 512, "stale entries dropped once the map has doubled");
    }
}
