//! The pure part of the recorder: series, the spam filter, and what to write when.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::ObjectReference;
use std::collections::HashMap;
use std::time::Duration;

/// Repeats one source may write about one object at once. A series' first occurrence in a process is always
/// written at once (new information is never held back), only repeats take tokens.
pub const BURST: u32 = 5;
/// After the burst, one write per this long (client-go's spam filter refills as slowly).
pub const REFILL: Duration = Duration::from_secs(300);
/// Series remembered per process; the least recently seen are forgotten first (the object stays in the API,
/// and is continued by name when seen again).
const MAX_SERIES: usize = 4096;

/// What makes two occurrences one series. The object is named by kind, namespace and name, not uid: the
/// successive VMIs of one VM (a crash loop makes a new one each time) continue one series.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub type_: String,
    pub reason: String,
    pub action: String,
    pub component: String,
}

impl SeriesKey {
    /// The Event's name: the object's name and a stable hash of the rest (as short as an Event name allows).
    pub fn event_name(&self) -> String {
        let mut h: u64 = 0xcbf29ce484222325; // FNV-1a: stable across processes and versions
        for part in [&self.kind, &self.namespace, &self.type_, &self.reason, &self.action, &self.component] {
            for b in part.bytes().chain([0]) {
                h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
            }
        }
        let base: String = self.name.chars().take(253 - 17).collect();
        format!("{base}.{h:016x}")
    }

    /// Where the Event lives: the object's namespace, or `default` for cluster-scoped objects.
    pub fn event_namespace(&self) -> &str {
        if self.namespace.is_empty() {
            "default"
        } else {
            &self.namespace
        }
    }

    fn bucket(&self) -> (String, String, String, String) {
        (self.component.clone(), self.kind.clone(), self.namespace.clone(), self.name.clone())
    }
}

/// One event as a controller or agent reports it.
#[derive(Clone, Debug)]
pub struct Occurrence {
    pub key: SeriesKey,
    pub message: String,
    pub object: ObjectReference,
    /// The reporting instance (the node, for agents).
    pub host: Option<String>,
}

/// A write to make: the whole series as it stands.
#[derive(Clone, Debug, PartialEq)]
pub struct Write {
    pub key: SeriesKey,
    pub count: u32,
    /// Occurrences this write adds to what the API holds (when the Event exists already, made by another
    /// process, its count grows by this much).
    pub added: u32,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    pub message: String,
    pub object: ObjectReference,
    pub host: Option<String>,
    /// Whether this process has written the Event before (else it tries to create it).
    pub exists: bool,
}

#[derive(Clone, Debug)]
struct Series {
    count: u32,
    written: u32,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
    message: String,
    object: ObjectReference,
    host: Option<String>,
    exists: bool,
    /// Occurrences not written yet.
    dirty: bool,
    in_flight: bool,
}

#[derive(Clone, Debug)]
struct Bucket {
    tokens: f64,
    at: DateTime<Utc>,
}

impl Bucket {
    fn take(&mut self, now: DateTime<Utc>) -> bool {
        let elapsed = (now - self.at).to_std().unwrap_or_default().as_secs_f64();
        self.tokens = (self.tokens + elapsed / REFILL.as_secs_f64()).min(f64::from(BURST));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Series and buckets of one process.
#[derive(Default, Debug)]
pub struct Correlator {
    series: HashMap<SeriesKey, Series>,
    buckets: HashMap<(String, String, String, String), Bucket>,
}

impl Correlator {
    /// Records an occurrence; returns the write to make now, if the object's bucket allows one and no write
    /// of this series is under way.
    pub fn observe(&mut self, o: Occurrence, now: DateTime<Utc>) -> Option<Write> {
        let s = self.series.entry(o.key.clone()).or_insert_with(|| Series {
            count: 0,
            written: 0,
            first: now,
            last: now,
            message: String::new(),
            object: o.object.clone(),
            host: o.host.clone(),
            exists: false,
            dirty: false,
            in_flight: false,
        });
        s.count += 1;
        s.last = now;
        s.message = o.message;
        s.object = o.object;
        s.host = o.host;
        s.dirty = true;
        let write = self.next_write(&o.key, now);
        self.forget_old(now);
        write
    }

    /// Writes owed: series with unwritten occurrences whose buckets have a token again.
    pub fn due(&mut self, now: DateTime<Utc>) -> Vec<Write> {
        let mut keys: Vec<SeriesKey> =
            self.series.iter().filter(|(_, s)| s.dirty && !s.in_flight).map(|(k, _)| k.clone()).collect();
        keys.sort();
        keys.iter().filter_map(|k| self.next_write(k, now)).collect()
    }

    fn next_write(&mut self, key: &SeriesKey, now: DateTime<Utc>) -> Option<Write> {
        let s = self.series.get(key)?;
        if s.in_flight || !s.dirty {
            return None;
        }
        let first = !s.exists && s.written == 0;
        let bucket = self.buckets.entry(key.bucket()).or_insert(Bucket { tokens: f64::from(BURST), at: now });
        if !first && !bucket.take(now) {
            return None;
        }
        let s = self.series.get_mut(key)?;
        s.in_flight = true;
        s.dirty = false;
        Some(Write {
            key: key.clone(),
            count: s.count,
            added: s.count - s.written,
            first: s.first,
            last: s.last,
            message: s.message.clone(),
            object: s.object.clone(),
            host: s.host.clone(),
            exists: s.exists,
        })
    }

    /// The outcome of a write: `Some(total)` when the API now holds that count (which may exceed ours, when
    /// other processes added to the series), `None` when it failed (the occurrences are written later).
    pub fn written(&mut self, w: &Write, total: Option<u32>) {
        let Some(s) = self.series.get_mut(&w.key) else { return };
        s.in_flight = false;
        match total {
            Some(total) => {
                // Occurrences since the write was taken stay owed.
                let since = s.count - w.count;
                s.written = total;
                s.count = total + since;
                s.exists = true;
            }
            None => s.dirty = true,
        }
    }

    /// Series in this process.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Past [`MAX_SERIES`], a tenth of them are forgotten at once (so this is rare): the least recently seen
    /// written series first, then, while the API is not taking writes, unwritten ones too (their occurrences
    /// are dropped, as client-go drops events past its queue), so the map stays bounded whatever the API does.
    /// Buckets that are full again go too.
    fn forget_old(&mut self, now: DateTime<Utc>) {
        if self.series.len() <= MAX_SERIES {
            return;
        }
        let mut idle: Vec<(bool, DateTime<Utc>, SeriesKey)> =
            self.series.iter().filter(|(_, s)| !s.in_flight).map(|(k, s)| (s.dirty, s.last, k.clone())).collect();
        idle.sort();
        for (_, _, k) in idle.into_iter().take(MAX_SERIES / 10) {
            self.series.remove(&k);
        }
        self.buckets.retain(|_, b| {
            let mut probe = b.clone();
            probe.tokens += (now - probe.at).to_std().unwrap_or_default().as_secs_f64() / REFILL.as_secs_f64();
            probe.tokens < f64::from(BURST)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, reason: &str) -> SeriesKey {
        SeriesKey {
            kind: "VirtualMachineInstance".into(),
            namespace: "default".into(),
            name: name.into(),
            type_: "Warning".into(),
            reason: reason.into(),
            action: reason.into(),
            component: "kumo-agent".into(),
        }
    }

    fn occ(name: &str, reason: &str, uid: &str, msg: &str) -> Occurrence {
        Occurrence {
            key: key(name, reason),
            message: msg.into(),
            object: ObjectReference { name: Some(name.into()), uid: Some(uid.into()), ..Default::default() },
            host: Some("n1".into()),
        }
    }

    /// Writes a successful outcome for each write (the API holding exactly what was sent).
    fn settle(c: &mut Correlator, w: Option<Write>, writes: &mut Vec<Write>) {
        if let Some(w) = w {
            c.written(&w, Some(w.count));
            writes.push(w);
        }
    }

    #[test]
    fn repeats_fold_into_one_series_across_uids_and_messages() {
        let mut c = Correlator::default();
        let t0 = Utc::now();
        let mut writes = vec![];
        for i in 0..3 {
            let w = c.observe(occ("vm", "Failed", &format!("uid-{i}"), &format!("exit {i}")), t0);
            settle(&mut c, w, &mut writes);
        }
        assert_eq!(writes.len(), 3);
        assert!(writes.iter().all(|w| w.key.event_name() == writes[0].key.event_name()));
        let last = writes.last().unwrap();
        assert_eq!((last.count, last.message.as_str(), last.object.uid.as_deref()), (3, "exit 2", Some("uid-2")));
        assert!(last.exists && !writes[0].exists);
        // Another reason is another series, under another name.
        assert_ne!(key("vm", "Started").event_name(), key("vm", "Failed").event_name());
    }

    /// An hour of a VM crash-looping with KubeVirt's backoff (10 s doubling to 5 min), every restart making the
    /// same handful of events: the writes stay within the bucket, and nothing is lost — the counts add up.
    #[test]
    fn an_hour_of_crash_loop_is_a_few_dozen_writes_and_nothing_lost() {
        let mut c = Correlator::default();
        let start = Utc::now();
        let (mut t, mut backoff, mut restarts) = (0u64, 10u64, 0u32);
        let mut writes = vec![];
        let reasons = ["Scheduled", "Started", "Failed", "SuccessfulCreate", "Deleted"];
        while t < 3600 {
            let now = start + chrono::Duration::seconds(t as i64);
            for r in reasons {
                let w = c.observe(occ("crashy", r, &format!("uid-{restarts}"), "m"), now);
                settle(&mut c, w, &mut writes);
            }
            for w in c.due(now) {
                settle(&mut c, Some(w), &mut writes);
            }
            restarts += 1;
            t += backoff;
            backoff = (backoff * 2).min(300);
        }
        // What is still owed is flushed as tokens come back.
        let mut later = start + chrono::Duration::seconds(t as i64);
        for _ in 0..reasons.len() {
            later += chrono::Duration::from_std(REFILL).unwrap();
            for w in c.due(later) {
                settle(&mut c, Some(w), &mut writes);
            }
        }
        let series: std::collections::BTreeSet<String> = writes.iter().map(|w| w.key.event_name()).collect();
        assert_eq!(series.len(), reasons.len(), "one Event object per reason");
        // The first of each reason, the burst, one per refill over the hour, and what was owed at the end.
        let bound = reasons.len() + BURST as usize + 3600 / REFILL.as_secs() as usize + reasons.len();
        assert!(writes.len() <= bound, "{} writes for {restarts} restarts", writes.len());
        assert!(writes.len() < (restarts as usize) * reasons.len() / 2, "{} writes", writes.len());
        assert!(restarts > 15, "{restarts}");
        for r in reasons {
            let last = writes.iter().rfind(|w| w.key.reason == r).unwrap();
            assert_eq!(last.count, restarts, "{r}: every occurrence counted");
        }
    }

    #[test]
    fn counts_continue_what_another_process_wrote_and_failures_are_retried() {
        let mut c = Correlator::default();
        let now = Utc::now();
        let w = c.observe(occ("vm", "Started", "u", "m"), now).unwrap();
        assert_eq!((w.count, w.added, w.exists), (1, 1, false));
        // The Event existed with count 7 (another node wrote it): the API now holds 8.
        c.written(&w, Some(8));
        let w = c.observe(occ("vm", "Started", "u", "m"), now).unwrap();
        assert_eq!((w.count, w.added, w.exists), (9, 1, true));
        // A failed write is owed, and written again once due.
        c.written(&w, None);
        let again = c.due(now);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].count, 9);
        // While a write is under way, another occurrence waits for it rather than racing it.
        assert!(c.observe(occ("vm", "Started", "u", "m"), now).is_none());
        c.written(&again[0], Some(9));
        let w = c.due(now);
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].count, w[0].added), (10, 1));
    }

    #[test]
    fn series_stay_bounded_while_the_api_takes_no_writes() {
        let mut c = Correlator::default();
        let now = Utc::now();
        for i in 0..MAX_SERIES * 2 {
            // Each write fails: every series stays unwritten.
            if let Some(w) = c.observe(occ(&format!("vm{i}"), "Crashed", "u", "m"), now) {
                c.written(&w, None);
            }
        }
        assert!(c.len() <= MAX_SERIES, "{} series kept", c.len());
    }

    #[test]
    fn names_fit_and_cluster_scoped_objects_go_to_default() {
        let mut k = key(&"x".repeat(300), "R");
        assert!(k.event_name().len() <= 253);
        k.namespace.clear();
        assert_eq!(k.event_namespace(), "default");
    }
}
