//! At most one trigger per key and interval. A replica set of a thousand VMIs was reconciled for every change
//! of every one of them (a thousand VMIs read, its status written) — several times per VMI as it starts. The
//! first change of a key passes at once; those within the interval after it fold into one at its end, so a key
//! that keeps changing is still reconciled once per interval (kube-rs' debounce keeps delaying it instead).

use crate::swept::Swept;
use futures::{stream, Stream, StreamExt};
use std::collections::BTreeMap;
use std::hash::Hash;
use std::time::Duration;
use tokio::time::Instant;

/// The bookkeeping, without I/O: when each key last passed, and the keys waiting for their interval to end.
pub struct Throttle<K> {
    every: Duration,
    passed: Swept<K, Passed>,
    /// Waiting keys by when they may pass (a sequence number keeps equal instants apart).
    waiting: BTreeMap<(Instant, u64), K>,
    seq: u64,
}

/// When a key last passed, and whether it waits to pass again.
struct Passed {
    at: Instant,
    waiting: bool,
}

const PRUNE_FROM: usize = 1024;

impl<K: Clone + Eq + Hash> Throttle<K> {
    pub fn new(every: Duration) -> Self {
        Throttle { every, passed: Swept::new(PRUNE_FROM), waiting: BTreeMap::new(), seq: 0 }
    }

    /// A change of `key` at `now`: the key if it may pass now; otherwise it waits (once, however often it
    /// changes meanwhile).
    pub fn offer(&mut self, key: K, now: Instant) -> Option<K> {
        match self.passed.get_mut(&key) {
            Some(p) if now < p.at + self.every => {
                if !p.waiting {
                    p.waiting = true;
                    self.seq += 1;
                    self.waiting.insert((p.at + self.every, self.seq), key);
                }
                None
            }
            _ => {
                self.pass(key.clone(), now);
                Some(key)
            }
        }
    }

    /// A waiting key whose interval has ended by `now`.
    pub fn due(&mut self, now: Instant) -> Option<K> {
        let (&(at, seq), _) = self.waiting.first_key_value().filter(|((at, _), _)| *at <= now)?;
        let key = self.waiting.remove(&(at, seq)).expect("just seen");
        self.pass(key.clone(), now);
        Some(key)
    }

    /// When the next waiting key may pass.
    pub fn next_due(&self) -> Option<Instant> {
        self.waiting.first_key_value().map(|((at, _), _)| *at)
    }

    fn pass(&mut self, key: K, now: Instant) {
        // Keys quiet for a whole interval need no memory: forgotten in passing, once the map has doubled.
        let every = self.every;
        self.passed.sweep(|_, p| p.waiting || now < p.at + every);
        self.passed.insert(key, Passed { at: now, waiting: false });
    }
}

/// `input` with each key passed at most once per `every` (see [`Throttle`]); ends when `input` does.
pub fn throttled<K>(input: impl Stream<Item = K> + Send + 'static, every: Duration) -> impl Stream<Item = K> + Send
where
    K: Clone + Eq + Hash + Send + 'static,
{
    let state = (input.boxed(), Throttle::new(every), false);
    stream::unfold(state, |(mut input, mut t, mut ended)| async move {
        loop {
            if let Some(k) = t.due(Instant::now()) {
                return Some((k, (input, t, ended)));
            }
            let next_due = t.next_due();
            if ended && next_due.is_none() {
                return None;
            }
            let wake = async move {
                match next_due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                k = input.next(), if !ended => match k {
                    Some(k) => if let Some(k) = t.offer(k, Instant::now()) {
                        return Some((k, (input, t, ended)));
                    },
                    None => ended = true,
                },
                () = wake => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn the_first_change_passes_and_later_ones_fold_into_one_at_the_interval_end() {
        let t0 = Instant::now();
        let mut t = Throttle::new(SEC);
        assert_eq!(t.offer("a", t0), Some("a"));
        assert_eq!(t.offer("b", t0), Some("b"), "keys are throttled apart");
        for ms in [100, 200, 900] {
            assert_eq!(t.offer("a", t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(t.next_due(), Some(t0 + SEC));
        assert_eq!(t.due(t0 + Duration::from_millis(999)), None);
        assert_eq!(t.due(t0 + SEC), Some("a"), "one trigger for three changes");
        assert_eq!(t.due(t0 + SEC), None);
        // Passing at the end of the interval starts the next one.
        assert_eq!(t.offer("a", t0 + Duration::from_millis(1500)), None);
        assert_eq!(t.due(t0 + Duration::from_millis(1999)), None);
        assert_eq!(t.due(t0 + 2 * SEC), Some("a"));
        // Quiet for an interval: passes at once again.
        assert_eq!(t.offer("a", t0 + 4 * SEC), Some("a"));
    }

    #[test]
    fn keys_no_longer_changing_are_forgotten() {
        let t0 = Instant::now();
        let mut t = Throttle::new(SEC);
        for i in 0..4096u32 {
            t.offer(i, t0);
        }
        t.offer(0, t0 + 2 * SEC);
        t.offer(5000, t0 + 2 * SEC);
        assert!(t.passed.len() < 4096, "{} keys remembered", t.passed.len());
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_that_keeps_changing_still_passes_once_per_interval() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let mut out = Box::pin(throttled(rx, SEC));
        let t0 = Instant::now();
        // A change every 100 ms for 3 s.
        let feed = tokio::spawn(async move {
            for _ in 0..30 {
                tx.unbounded_send("rs").expect("open");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let mut at = vec![];
        while let Some(k) = out.next().await {
            assert_eq!(k, "rs");
            at.push((Instant::now() - t0).as_millis());
        }
        feed.await.expect("feeder");
        assert_eq!(at, vec![0, 1000, 2000, 3000], "passed at (ms)");
    }
}
