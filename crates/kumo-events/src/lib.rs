//! Events from kumo's controllers and agents, written so that no object can flood the store.
//!
//! [`Correlator`] decides (without I/O, time passed in): every event of one object with the same type,
//! reason, action and source is one **series** — a single core/v1 Event whose `count`, `lastTimestamp` and
//! message follow the repeats (so differing messages are aggregated too: the series shows the latest). Its
//! name is derived from those, so any process (another node, a restarted agent) continues the same object.
//! A **token bucket per source and object** (burst [`BURST`], one token per [`REFILL`]) bounds the writes;
//! an occurrence without a token is not lost but folded into the series and written once a token is back.
//! [`Recorder`] carries the decisions out through the API.

mod correlator;
mod recorder;

pub use correlator::{Correlator, Occurrence, SeriesKey, Write, BURST, REFILL};
pub use recorder::Recorder;
