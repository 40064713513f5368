//! How many writes kumo has in flight to etcd, adjusted to what etcd keeps up with.
//!
//! etcd refuses a write with "too many requests" when it has committed more than it has applied (5,000
//! entries): its members are short of CPU or disk. More writes then only add to what each must apply, and
//! every refused one comes straight back from its client. So the gate halves the writes it lets through on
//! each refusal (one cut per [`CUT_EVERY`], however many writes a burst of refusals hits) and widens by one
//! for each full limit's worth of writes that succeed — additive increase, multiplicative decrease, as TCP
//! does for a congested link. Writes beyond the limit wait at the gate until the request's deadline and then
//! fail as [`Error::Unavailable`] without reaching etcd, so the API server answers 503 with `Retry-After`
//! and the clients back off, instead of etcd refusing them one by one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::{Error, Result};

/// Writes in flight when etcd keeps up: far above what one API server sends (a write takes milliseconds, so
/// this allows tens of thousands a second), so the gate only ever narrows under refusals.
pub(super) const MAX_IN_FLIGHT: usize = 256;
/// The narrowest the gate gets: etcd applies writes in batches, and a few in flight keep a batch filling.
const MIN_IN_FLIGHT: usize = 4;
/// Refusals within this of a cut are the same overload, answered by that cut.
const CUT_EVERY: Duration = Duration::from_millis(500);

pub(super) struct Gate {
    seats: Arc<Semaphore>,
    control: Mutex<Control>,
}

struct Control {
    limit: usize,
    max: usize,
    /// Seats still to take away: the cut was larger than the seats free at the time, so these are not given
    /// back when their writes finish.
    owed: usize,
    /// Writes that succeeded since the limit last changed.
    successes: usize,
    last_cut: Option<Instant>,
}

/// A seat at the gate, given back when dropped.
pub(super) struct Pass<'a> {
    gate: &'a Gate,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else { return };
        let mut c = self.gate.control.lock().expect("lock");
        if c.owed > 0 {
            c.owed -= 1;
            permit.forget();
        }
    }
}

impl Gate {
    pub(super) fn new(max: usize) -> Gate {
        let max = max.max(MIN_IN_FLIGHT);
        Gate {
            seats: Arc::new(Semaphore::new(max)),
            control: Mutex::new(Control { limit: max, max, owed: 0, successes: 0, last_cut: None }),
        }
    }

    /// Waits for a seat until `deadline`; past it the write fails without having been sent.
    pub(super) async fn enter(&self, deadline: Instant, what: &str) -> Result<Pass<'_>> {
        match tokio::time::timeout_at(deadline, self.seats.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Pass { gate: self, permit: Some(permit) }),
            Ok(Err(_closed)) => Err(Error::Unavailable("etcd store is closing".into())),
            Err(_) => Err(Error::Unavailable(format!(
                "etcd {what}: not sent, etcd is behind applying writes (kumo lets {} through at a time until it \
                 catches up); retry shortly",
                self.limit()
            ))),
        }
    }

    /// etcd refused a write as too many: halve the seats, once per burst of refusals.
    pub(super) fn refused(&self) {
        let now = Instant::now();
        let mut c = self.control.lock().expect("lock");
        if c.last_cut.is_some_and(|at| now.duration_since(at) < CUT_EVERY) {
            return;
        }
        c.last_cut = Some(now);
        c.successes = 0;
        let next = (c.limit / 2).max(MIN_IN_FLIGHT);
        let cut = c.limit - next;
        c.limit = next;
        // Free seats go at once; the rest as the writes holding them finish.
        let taken = self.seats.forget_permits(cut);
        c.owed += cut - taken;
        if cut > 0 {
            tracing::warn!(limit = next, "etcd is behind applying writes; writes in flight cut to {next}");
        }
    }

    /// A write went through: after a full limit's worth of them, one seat more.
    pub(super) fn succeeded(&self) {
        let mut c = self.control.lock().expect("lock");
        if c.limit >= c.max {
            return;
        }
        c.successes += 1;
        if c.successes < c.limit {
            return;
        }
        c.successes = 0;
        c.limit += 1;
        if c.owed > 0 {
            c.owed -= 1;
        } else {
            self.seats.add_permits(1);
        }
    }

    pub(super) fn limit(&self) -> usize {
        self.control.lock().expect("lock").limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn refusals_halve_the_seats_once_per_burst_and_successes_win_them_back_one_by_one() {
        let gate = Gate::new(64);
        gate.refused();
        gate.refused(); // the same burst
        assert_eq!(gate.limit(), 32);
        tokio::time::advance(CUT_EVERY).await;
        gate.refused();
        assert_eq!(gate.limit(), 16);
        for _ in 0..16 {
            gate.succeeded();
        }
        assert_eq!(gate.limit(), 17);
        for _ in 0..10 {
            tokio::time::advance(CUT_EVERY).await;
            gate.refused();
        }
        assert_eq!(gate.limit(), MIN_IN_FLIGHT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_beyond_the_limit_waits_for_a_seat_and_gives_up_at_its_deadline_unsent() {
        let gate = Gate::new(MIN_IN_FLIGHT);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut held = vec![];
        for _ in 0..MIN_IN_FLIGHT {
            held.push(gate.enter(deadline, "update").await.expect("a free seat"));
        }
        let err = gate.enter(deadline, "update").await.err().expect("no seat before the deadline");
        assert!(matches!(&err, Error::Unavailable(m) if m.contains("behind")), "{err:?}");
        // A seat given back lets the next write through.
        held.pop();
        let later = Instant::now() + Duration::from_secs(5);
        gate.enter(later, "update").await.expect("the seat given back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_larger_than_the_free_seats_takes_the_rest_as_writes_finish() {
        let gate = Gate::new(16);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut held = vec![];
        for _ in 0..12 {
            held.push(gate.enter(deadline, "create").await.expect("a free seat"));
        }
        gate.refused(); // 16 → 8: 4 seats free now, 4 owed by the writes in flight
        assert_eq!(gate.seats.available_permits(), 0);
        held.truncate(4); // 8 writes finish: 4 pay what is owed, 4 give their seats back
        assert_eq!(gate.seats.available_permits(), 4);
        assert_eq!(held.len() + gate.seats.available_permits(), gate.limit());
    }
}
