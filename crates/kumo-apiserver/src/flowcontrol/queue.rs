//! One priority level's seats and queues: fair queuing with shuffle sharding, as Kubernetes' API Priority and
//! Fairness does.
//!
//! A request takes a seat if one is free and nobody waits. Otherwise its flow is dealt a hand of queues (by a
//! hash of the flow, so a flow always gets the same hand) and it joins the shortest; a full queue, or a wait
//! past the deadline, is a rejection. A freed seat goes to the head of the next non-empty queue in turn, so
//! each queue (and so each flow, mostly alone in the queues of its hand) gets an equal share of the seats
//! however much one of them sends.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kumo_api::flowcontrol::Queuing;
use tokio::sync::oneshot;

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// No seat, and the level does not queue.
    ConcurrencyLimit,
    /// The chosen queue was full.
    QueueFull,
    /// Queued, but no seat came before the deadline.
    TimeOut,
}

impl Rejection {
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::ConcurrencyLimit => "concurrency-limit",
            Rejection::QueueFull => "queue-full",
            Rejection::TimeOut => "time-out",
        }
    }
}

struct Waiter {
    id: u64,
    wake: oneshot::Sender<()>,
}

struct State {
    executing: usize,
    queues: Vec<VecDeque<Waiter>>,
    /// The queue the next freed seat looks at first.
    turn: usize,
    next_id: u64,
}

impl State {
    fn waiting(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }
}

pub struct Level {
    seats: usize,
    queuing: Option<Queuing>,
    state: Mutex<State>,
}

/// A seat held while a request executes; dropping it hands the seat on.
pub struct Seat(Arc<Level>);

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl Level {
    pub fn new(seats: usize, queuing: Option<Queuing>) -> Arc<Level> {
        let queues = queuing.map_or(0, |q| q.queues);
        Arc::new(Level {
            seats: seats.max(1),
            queuing,
            state: Mutex::new(State {
                executing: 0,
                queues: (0..queues).map(|_| VecDeque::new()).collect(),
                turn: 0,
                next_id: 0,
            }),
        })
    }

    /// Whether this level was made with the same limits (so a reload can keep it, and its waiters).
    pub fn same_limits(&self, seats: usize, queuing: Option<Queuing>) -> bool {
        self.seats == seats.max(1) && self.queuing == queuing
    }

    /// Requests executing and waiting.
    pub fn load(&self) -> (usize, usize) {
        let s = self.state.lock().expect("lock");
        (s.executing, s.waiting())
    }

    /// Waits (at most `wait`) for a seat for a request of `flow`.
    pub async fn acquire(self: &Arc<Self>, flow: &str, wait: Duration) -> Result<Seat, Rejection> {
        let mut queued = {
            let mut s = self.state.lock().expect("lock");
            if s.executing < self.seats && s.waiting() == 0 {
                s.executing += 1;
                return Ok(Seat(self.clone()));
            }
            let Some(q) = self.queuing else { return Err(Rejection::ConcurrencyLimit) };
            let queue = hand(flow, q.queues, q.hand_size).into_iter().min_by_key(|&i| s.queues[i].len()).unwrap_or(0);
            if s.queues[queue].len() >= q.queue_length_limit {
                return Err(Rejection::QueueFull);
            }
            let (wake, rx) = oneshot::channel();
            let id = s.next_id;
            s.next_id += 1;
            s.queues[queue].push_back(Waiter { id, wake });
            Queued { level: self.clone(), id, rx, settled: false }
        };
        let waited = tokio::time::timeout(wait, &mut queued.rx).await;
        queued.settled = true;
        if matches!(waited, Ok(Ok(()))) || !queued.leave() {
            return Ok(Seat(self.clone()));
        }
        Err(Rejection::TimeOut)
    }

    fn release(&self) {
        let mut s = self.state.lock().expect("lock");
        debug_assert!(s.executing > 0, "a seat released twice");
        s.executing = s.executing.saturating_sub(1);
        let n = s.queues.len();
        for _ in 0..n {
            let i = s.turn;
            s.turn = (s.turn + 1) % n;
            while let Some(w) = s.queues[i].pop_front() {
                // A waiter whose request was dropped (the client went away) gives the seat to the next one.
                if w.wake.send(()).is_ok() {
                    s.executing += 1;
                    return;
                }
            }
        }
    }
}

/// A place in a queue. Given up (past the deadline, or the request dropped while waiting), it leaves the
/// queue, or, when the seat was handed over meanwhile, hands the seat on: a seat is never lost or counted twice.
struct Queued {
    level: Arc<Level>,
    id: u64,
    rx: oneshot::Receiver<()>,
    /// The waiting ended with an answer (a seat or a refusal); dropping does nothing more.
    settled: bool,
}

impl Queued {
    /// Leaves the queue: false when the seat was handed over first (under the lock, so it is one or the other).
    fn leave(&mut self) -> bool {
        let mut s = self.level.state.lock().expect("lock");
        for queue in s.queues.iter_mut() {
            if let Some(at) = queue.iter().position(|w| w.id == self.id) {
                queue.remove(at);
                return true;
            }
        }
        // Not queued: the seat was sent, or the level dropped the waiter (no seat then).
        self.rx.try_recv().is_err()
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        if !self.settled && !self.leave() {
            self.level.release();
        }
    }
}

/// The `hand_size` distinct queues (of `queues`) dealt to `flow`: always the same for one flow, and for two
/// flows rarely all the same, so one flow's backlog seldom blocks another's every queue.
fn hand(flow: &str, queues: usize, hand_size: usize) -> Vec<usize> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    flow.hash(&mut h);
    let mut seed = h.finish();
    let mut deck: Vec<usize> = (0..queues).collect();
    let mut out = Vec::with_capacity(hand_size);
    for k in 0..hand_size.min(queues) {
        let remaining = (queues - k) as u64;
        let pick = k + (seed % remaining) as usize;
        seed /= remaining.max(1);
        if seed == 0 {
            // Out of entropy: stir for the rest of the hand.
            seed = h.finish().rotate_left(17 * (k as u32 + 1)) | 1;
        }
        deck.swap(k, pick);
        out.push(deck[k]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: Queuing = Queuing { queues: 16, hand_size: 4, queue_length_limit: 3 };

    #[test]
    fn a_hand_is_distinct_and_stable() {
        let a = hand("flow-a", 64, 6);
        assert_eq!(a, hand("flow-a", 64, 6));
        let mut d = a.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), 6);
        assert!(a.iter().all(|&i| i < 64));
        assert_ne!(a, hand("flow-b", 64, 6));
    }

    #[tokio::test]
    async fn without_queues_the_level_refuses_past_its_seats() {
        let level = Level::new(2, None);
        let (a, b) =
            (level.acquire("f", Duration::ZERO).await.unwrap(), level.acquire("f", Duration::ZERO).await.unwrap());
        assert_eq!(level.acquire("f", Duration::ZERO).await.err(), Some(Rejection::ConcurrencyLimit));
        drop(a);
        let c = level.acquire("f", Duration::ZERO).await.unwrap();
        drop((b, c));
        assert_eq!(level.load(), (0, 0));
    }

    #[tokio::test]
    async fn a_flooding_flow_fills_its_queues_while_another_flow_is_served_next() {
        let level = Level::new(1, Some(Q));
        let held = level.acquire("flood", Duration::ZERO).await.unwrap();
        // The flood queues until each queue of its hand is full, then is refused.
        let served = Arc::new(Mutex::new(Vec::new()));
        let take = |flow: &'static str| {
            let (l, served) = (level.clone(), served.clone());
            tokio::spawn(async move {
                let seat = l.acquire(flow, Duration::from_secs(30)).await;
                // One seat: the order of these pushes is the order seats were handed out.
                served.lock().unwrap().push(flow);
                seat.map(drop)
            })
        };
        let mut flood = Vec::new();
        for _ in 0..Q.hand_size * Q.queue_length_limit {
            flood.push(take("flood"));
            tokio::task::yield_now().await;
        }
        while level.load().1 < Q.hand_size * Q.queue_length_limit {
            tokio::task::yield_now().await;
        }
        assert_eq!(level.acquire("flood", Duration::from_secs(30)).await.err(), Some(Rejection::QueueFull));
        // Another flow (whose hand is not the flood's) queues behind at most a turn of the flood's queues.
        let other = take("quiet");
        while level.load().1 < Q.hand_size * Q.queue_length_limit + 1 {
            tokio::task::yield_now().await;
        }
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), other).await.expect("served within a turn").unwrap().unwrap();
        for f in flood {
            f.await.unwrap().unwrap();
        }
        assert_eq!(level.load(), (0, 0));
        // Round robin over the queues: the quiet flow comes before the flood's later turns (FIFO: last).
        let order = served.lock().unwrap().clone();
        let at = order.iter().position(|f| *f == "quiet").unwrap();
        assert!(at <= Q.hand_size, "served {at}th of {}: {order:?}", order.len());
    }

    #[tokio::test]
    async fn a_seat_handed_to_a_request_dropped_before_it_ran_is_handed_on() {
        let level = Level::new(1, Some(Q));
        let held = level.acquire("a", Duration::ZERO).await.unwrap();
        let waiter = {
            let l = level.clone();
            tokio::spawn(async move { l.acquire("b", Duration::from_secs(30)).await.map(drop) })
        };
        while level.load().1 == 0 {
            tokio::task::yield_now().await;
        }
        // The seat is sent to the waiter, which is cancelled before it runs again (a client gone).
        drop(held);
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        assert_eq!(level.load(), (0, 0), "the seat was not kept by the dropped request");
        let _again = level.acquire("c", Duration::ZERO).await.expect("the level admits again");
    }

    #[tokio::test]
    async fn a_wait_past_the_deadline_is_refused_and_leaves_the_queue() {
        let level = Level::new(1, Some(Q));
        let held = level.acquire("a", Duration::ZERO).await.unwrap();
        assert_eq!(level.acquire("b", Duration::from_millis(50)).await.err(), Some(Rejection::TimeOut));
        assert_eq!(level.load(), (1, 0));
        drop(held);
        assert_eq!(level.load(), (0, 0), "the seat went to nobody");
    }
}
