//! Results: latency summaries, the Markdown report printed to stdout and the JSON written to `--out`.

use serde_json::{json, Value};
use std::fmt::Write;
use std::time::Duration;

#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub count: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Summary {
    pub fn of(mut v: Vec<Duration>) -> Summary {
        v.sort_unstable();
        // Nearest rank: the smallest value with at least p% of samples at or below it.
        let pct =
            |p: f64| v.get(((p / 100.0 * v.len() as f64).ceil() as usize).max(1) - 1).copied().unwrap_or_default();
        Summary { count: v.len(), p50: pct(50.0), p99: pct(99.0), max: v.last().copied().unwrap_or_default() }
    }

    pub fn json(&self) -> Value {
        json!({"count": self.count, "p50_ms": ms(self.p50), "p99_ms": ms(self.p99), "max_ms": ms(self.max)})
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn r2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn mib(bytes: u64) -> f64 {
    (bytes as f64 / (1 << 20) as f64 * 10.0).round() / 10.0
}

#[derive(Clone, Debug)]
pub struct Phase {
    pub conns: usize,
    pub count: usize,
    pub secs: f64,
    pub ops_per_sec: f64,
    pub latency: Summary,
    /// CPU seconds used during the phase by the server and by the benchmark client.
    pub server_cpu: f64,
    pub client_cpu: f64,
    /// CPU seconds of the store behind the server (etcd behind kumo), when metered.
    pub backend_cpu: Option<f64>,
}

impl Phase {
    /// A phase of `lats.len()` operations over `conns` connections that took `secs`, with the CPU metered.
    pub fn of(conns: usize, lats: Vec<Duration>, secs: f64, cpu: crate::procs::CpuMeter) -> Phase {
        let count = lats.len();
        let (server_cpu, client_cpu) = cpu.stop();
        Phase {
            conns,
            count,
            secs,
            ops_per_sec: count as f64 / secs,
            latency: Summary::of(lats),
            server_cpu,
            client_cpu,
            backend_cpu: cpu.backend(),
        }
    }

    pub fn json(&self) -> Value {
        let mut v = json!({"connections": self.conns, "count": self.count,
               "seconds": (self.secs * 1000.0).round() / 1000.0,
               "ops_per_sec": self.ops_per_sec.round(), "latency": self.latency.json(),
               "server_cpu_seconds": r2(self.server_cpu), "client_cpu_seconds": r2(self.client_cpu),
               "server_cpu_us_per_op": self.server_us_per_op().round()});
        if let Some(b) = self.backend_us_per_op() {
            v["backend_cpu_us_per_op"] = b.round().into();
        }
        v
    }

    /// CPU time per operation of the store behind the server, in microseconds.
    pub fn backend_us_per_op(&self) -> Option<f64> {
        self.backend_cpu.map(|c| c * 1e6 / self.count.max(1) as f64)
    }

    /// Server CPU time per operation, in microseconds.
    pub fn server_us_per_op(&self) -> f64 {
        self.server_cpu * 1e6 / self.count.max(1) as f64
    }
}

/// One operation at one connection count: every round of each server.
pub struct Throughput {
    pub op: &'static str,
    pub kumo: Vec<Phase>,
    pub etcd: Vec<Phase>,
}

/// The round with the median throughput (the lower median for an even count).
pub fn median(rounds: &[Phase]) -> Phase {
    let mut v: Vec<&Phase> = rounds.iter().collect();
    v.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
    v.get(v.len().saturating_sub(1) / 2).map(|p| (*p).clone()).expect("at least one round")
}

fn rounds_json(rounds: &[Phase]) -> Value {
    let mut v = median(rounds).json();
    v["rounds_ops_per_sec"] = rounds.iter().map(|p| p.ops_per_sec.round()).collect();
    v
}

/// "median (min–max)" ops/s over the rounds.
fn ops_cell(rounds: &[Phase]) -> String {
    let m = median(rounds).ops_per_sec;
    if rounds.len() < 2 {
        return format!("{m:.0}");
    }
    let lo = rounds.iter().map(|p| p.ops_per_sec).fold(f64::INFINITY, f64::min);
    let hi = rounds.iter().map(|p| p.ops_per_sec).fold(0.0, f64::max);
    format!("{m:.0} ({lo:.0}–{hi:.0})")
}

pub struct Bucket {
    pub from: usize,
    pub to: usize,
    pub phase: Phase,
    pub rss_after: u64,
    /// Size of the server's data directory after the bucket.
    pub disk_after: u64,
}

pub struct Growth {
    pub conns: usize,
    pub rss_before: u64,
    pub buckets: Vec<Bucket>,
    /// After the last bucket: seconds idle, server CPU seconds used meanwhile, RSS at the end.
    pub idle_secs: f64,
    pub idle_cpu: f64,
    pub rss_after_idle: u64,
    /// RSS of a restarted server on the same data (after the watch phase), once ready.
    pub rss_after_restart: u64,
    /// Every object then updated once: the phase, and the data directory's size after it.
    pub update_all: Phase,
    pub disk_after_updates: u64,
    /// The data directory once compaction gave the superseded versions' space back, and how long after the
    /// updates that was.
    pub disk_after_reclaim: u64,
    /// The files' lengths then (the rest of the file is not yet written).
    pub len_after_reclaim: u64,
    pub reclaim_secs: f64,
    pub snapshots: crate::snapshot::Snapshots,
    /// Bytes of live data: objects × the stored object's size.
    pub live_bytes: u64,
}

impl Growth {
    fn total(&self) -> usize {
        self.buckets.last().map_or(0, |b| b.to)
    }

    fn rss_after(&self) -> u64 {
        self.buckets.last().map_or(self.rss_before, |b| b.rss_after)
    }

    /// RSS growth scaled to 100,000 objects.
    pub fn rss_per_100k(&self) -> f64 {
        let delta = self.rss_after().saturating_sub(self.rss_before) as f64;
        if self.total() == 0 {
            0.0
        } else {
            delta * 100_000.0 / self.total() as f64
        }
    }

    /// Throughput of the last bucket relative to the first (1.0 = flat).
    pub fn last_over_first(&self) -> f64 {
        match (self.buckets.first(), self.buckets.last()) {
            (Some(f), Some(l)) if f.phase.ops_per_sec > 0.0 => l.phase.ops_per_sec / f.phase.ops_per_sec,
            _ => 0.0,
        }
    }
}

pub struct Watch {
    pub watchers: usize,
    pub updates: usize,
    pub rate: f64,
    pub connect_secs: f64,
    pub expected: usize,
    pub delivered: usize,
    /// Events that arrived before the writer saw its own response (counted as 0 delay).
    pub before_ack: usize,
    pub from_ack: Summary,
    pub from_send: Summary,
    pub write_latency: Summary,
    pub rss_before: u64,
    pub rss_with_watchers: u64,
    /// CPU seconds (server, client) from the first update to the last delivery.
    pub cpu: (f64, f64),
    pub secs: f64,
}

pub struct Results {
    pub config: Value,
    pub environment: Value,
    pub request_bytes: usize,
    pub stored_bytes: usize,
    pub throughput: Vec<Throughput>,
    /// The same comparison with kumo storing into that etcd (`--etcd-servers`).
    pub throughput_on_etcd: Vec<Throughput>,
    /// Resident memory (kumo, etcd) after their throughput phases.
    pub rss_after_throughput: (u64, u64),
    pub growth: Growth,
    pub watch: Watch,
}

impl Results {
    pub fn json(&self) -> Value {
        let g = &self.growth;
        let w = &self.watch;
        json!({
            "config": self.config,
            "environment": self.environment,
            "object": {"request_bytes": self.request_bytes, "stored_bytes": self.stored_bytes},
            "throughput": throughput_json(&self.throughput),
            "throughput_kumo_on_etcd": throughput_json(&self.throughput_on_etcd),
            "rss_after_throughput_bytes": {"kumo": self.rss_after_throughput.0, "etcd": self.rss_after_throughput.1},
            "growth": {
                "connections": g.conns,
                "rss_before_bytes": g.rss_before,
                "rss_after_bytes": g.rss_after(),
                "objects": g.total(),
                "rss_per_100k_objects_bytes": g.rss_per_100k().round(),
                "last_over_first_bucket": ratio(g.buckets.last().map_or(0.0, |b| b.phase.ops_per_sec),
                                                g.buckets.first().map_or(0.0, |b| b.phase.ops_per_sec)),
                "idle_seconds": g.idle_secs, "idle_server_cpu_seconds": r2(g.idle_cpu),
                "rss_after_idle_bytes": g.rss_after_idle, "rss_after_restart_bytes": g.rss_after_restart,
                "update_all": g.update_all.json(), "data_dir_bytes_after_updates": g.disk_after_updates,
                "live_bytes": g.live_bytes,
                "disk_over_live_after_creates": ratio(g.buckets.last().map_or(0, |b| b.disk_after) as f64, g.live_bytes as f64),
                "disk_over_live_after_updates": ratio(g.disk_after_updates as f64, g.live_bytes as f64),
                "data_dir_bytes_after_reclaim": g.disk_after_reclaim, "data_dir_file_lengths_after_reclaim": g.len_after_reclaim, "reclaim_seconds": r2(g.reclaim_secs),
                "disk_over_live_after_reclaim": ratio(g.disk_after_reclaim as f64, g.live_bytes as f64),
                "snapshot": {
                    "save_seconds": r2(g.snapshots.save_secs), "file_bytes": g.snapshots.file_bytes,
                    "restore_seconds": r2(g.snapshots.restore_secs), "restored_data_dir_bytes": g.snapshots.restored_bytes,
                    "updates_during_save": g.snapshots.during.json(), "updates_without_snapshot": g.snapshots.without.json(),
                    "p99_during_over_without": ratio(g.snapshots.during.latency.p99.as_secs_f64(), g.snapshots.without.latency.p99.as_secs_f64()),
                },
                "buckets": g.buckets.iter().map(|b| json!({
                    "from": b.from, "to": b.to, "create": b.phase.json(), "rss_after_bytes": b.rss_after,
                    "data_dir_bytes_after": b.disk_after,
                })).collect::<Vec<_>>(),
            },
            "watch": {
                "watchers": w.watchers, "updates": w.updates, "updates_per_sec": w.rate,
                "transport": "HTTP/1.1 over TLS, one TCP connection per watch",
                "connect_seconds": (w.connect_secs * 1000.0).round() / 1000.0,
                "expected_deliveries": w.expected, "delivered": w.delivered,
                "missing": w.expected.saturating_sub(w.delivered), "arrived_before_ack": w.before_ack,
                "delay_from_ack": w.from_ack.json(), "delay_from_send": w.from_send.json(),
                "update_latency": w.write_latency.json(),
                "rss_before_watchers_bytes": w.rss_before, "rss_with_watchers_bytes": w.rss_with_watchers,
                "seconds": r2(w.secs), "server_cpu_seconds": r2(w.cpu.0), "client_cpu_seconds": r2(w.cpu.1),
            },
        })
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let env = &self.environment;
        let _ = writeln!(s, "# kumo benchmark\n");
        let _ = writeln!(
            s,
            "{} CPUs, kernel {}, {}; data on {}. Objects: ConfigMaps in `default`, request body {} B, stored \
             object {} B (as returned). Updates are PUT with the last resourceVersion. HTTP/1.1, one request at a \
             time per connection; kumo over TLS, etcd over its plain-HTTP JSON gateway (`/v3/kv/put`), fsync per \
             commit in both. The benchmark client runs on the same machine. Load average before/after: {} / {}.\n",
            env["cpus"],
            env["kernel"].as_str().unwrap_or("?"),
            env["etcd_version"].as_str().unwrap_or("?"),
            env["tmp_dir"].as_str().unwrap_or("?"),
            self.request_bytes,
            self.stored_bytes,
            env["loadavg_before"].as_str().unwrap_or("?"),
            env["loadavg_after"].as_str().unwrap_or("?")
        );
        throughput_table(&mut s, "Writes: kumo (embedded store) vs raw etcd", &self.throughput);
        throughput_table(
            &mut s,
            "Writes: kumo on etcd (`--etcd-servers`) vs raw puts to that etcd",
            &self.throughput_on_etcd,
        );
        let (kr, er) = self.rss_after_throughput;
        let keys: usize = self
            .throughput
            .iter()
            .filter(|t| t.op == "create")
            .map(|t| t.kumo.iter().map(|p| p.count).sum::<usize>())
            .sum();
        let _ = writeln!(
            s,
            "\nResident memory after these phases (each store holding {keys} objects plus warm-up, each updated \
             once): kumo {} MiB, etcd {} MiB.",
            mib(kr),
            mib(er)
        );
        let g = &self.growth;
        let _ = writeln!(s, "\n## Store growth: kumo creates at {} connections, fresh server\n", g.conns);
        let _ = writeln!(
            s,
            "| objects | creates/s | p50 ms | p99 ms | max ms | kumo CPU µs/op | RSS after (MiB) | data dir (MiB) |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
        let _ = writeln!(s, "| 0 (start) | | | | | | {} | |", mib(g.rss_before));
        for b in &g.buckets {
            let l = &b.phase.latency;
            let _ = writeln!(
                s,
                "| {}–{} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} | {} | {} |",
                b.from,
                b.to,
                b.phase.ops_per_sec,
                ms(l.p50),
                ms(l.p99),
                ms(l.max),
                b.phase.server_us_per_op(),
                mib(b.rss_after),
                mib(b.disk_after)
            );
        }
        let _ = writeln!(
            s,
            "\nDisk use: {} MiB of live data ({} objects × their stored size); data directory {} MiB after the creates \
             (**{:.2}×**), {} MiB after updating every object once at {:.0}/s (**{:.2}×**), {} MiB once compaction \
             (every {}) gave the superseded versions' space back, {:.0} s later (**{:.2}×**; file lengths {} MiB). \
             Data directory sizes are allocated blocks, as `du` counts them.",
            mib(g.live_bytes),
            g.total(),
            mib(g.buckets.last().map_or(0, |b| b.disk_after)),
            ratio(g.buckets.last().map_or(0, |b| b.disk_after) as f64, g.live_bytes as f64),
            mib(g.disk_after_updates),
            g.update_all.ops_per_sec,
            ratio(g.disk_after_updates as f64, g.live_bytes as f64),
            mib(g.disk_after_reclaim),
            crate::growth::COMPACTION_INTERVAL,
            g.reclaim_secs,
            ratio(g.disk_after_reclaim as f64, g.live_bytes as f64),
            mib(g.len_after_reclaim),
        );
        let (sn, total) = (&g.snapshots, g.total());
        let _ = writeln!(
            s,
            "\nSnapshot of the {total} objects through the API server, with {} connections updating meanwhile: saved \
             in **{:.1} s** ({} MiB file); restored offline into a new data directory in **{:.1} s** ({} MiB). \
             Updates during the save: {:.0}/s, p50 {:.2} ms, p99 **{:.2} ms**; the same number without a \
             snapshot: {:.0}/s, p50 {:.2} ms, p99 **{:.2} ms** (p99 ratio **{:.2}**).",
            sn.during.conns,
            sn.save_secs,
            mib(sn.file_bytes),
            sn.restore_secs,
            mib(sn.restored_bytes),
            sn.during.ops_per_sec,
            sn.during.latency.p50.as_secs_f64() * 1e3,
            sn.during.latency.p99.as_secs_f64() * 1e3,
            sn.without.ops_per_sec,
            sn.without.latency.p50.as_secs_f64() * 1e3,
            sn.without.latency.p99.as_secs_f64() * 1e3,
            ratio(sn.during.latency.p99.as_secs_f64(), sn.without.latency.p99.as_secs_f64()),
        );
        let _ = writeln!(
            s,
            "\nLast bucket / first bucket throughput: **{:.2}**. Resident memory: {} MiB before, {} MiB at {} \
             objects → **{} MiB per 100,000 objects** (delta, scaled).\n",
            g.last_over_first(),
            mib(g.rss_before),
            mib(g.rss_after()),
            g.total(),
            mib(g.rss_per_100k() as u64)
        );
        let _ = writeln!(
            s,
            "Idle for {:.0} s afterwards: kumo used {:.2} CPU-seconds, RSS {} MiB. Restarted on the same data \
             (after the watch phase): RSS {} MiB once ready.\n",
            g.idle_secs,
            g.idle_cpu,
            mib(g.rss_after_idle),
            mib(g.rss_after_restart)
        );
        let w = &self.watch;
        let _ = writeln!(s, "## Watch delivery\n");
        let _ = writeln!(
            s,
            "{} watchers (HTTP/1.1 over TLS, one connection each, opened in {:.2} s), {} updates at {} /s on one \
             other connection. Delay = event arrival at the watcher − the writer receiving its 200.\n",
            w.watchers, w.connect_secs, w.updates, w.rate
        );
        let _ = writeln!(s, "| deliveries | missing | before ack | p50 ms | p99 ms | max ms | p99 from send ms |");
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|");
        let _ = writeln!(
            s,
            "| {} / {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            w.delivered,
            w.expected,
            w.expected.saturating_sub(w.delivered),
            w.before_ack,
            ms(w.from_ack.p50),
            ms(w.from_ack.p99),
            ms(w.from_ack.max),
            ms(w.from_send.p99)
        );
        let _ = writeln!(
            s,
            "\nUpdate latency with the watchers attached: p50 {:.2} ms, p99 {:.2} ms. kumo RSS {} MiB before the \
             watchers, {} MiB with them. CPU over the {:.1} s of updates and deliveries: kumo {:.1} s, benchmark \
             client ({} TLS readers) {:.1} s, on {} CPUs.",
            ms(w.write_latency.p50),
            ms(w.write_latency.p99),
            mib(w.rss_before),
            mib(w.rss_with_watchers),
            w.secs,
            w.cpu.0,
            w.watchers,
            w.cpu.1,
            env["cpus"]
        );
        s
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        (a / b * 1000.0).round() / 1000.0
    } else {
        0.0
    }
}

fn throughput_json(list: &[Throughput]) -> Value {
    list.iter()
        .map(|t| {
            json!({
                "op": t.op, "connections": median(&t.kumo).conns, "kumo": rounds_json(&t.kumo),
                "etcd": rounds_json(&t.etcd),
                "kumo_over_etcd": ratio(median(&t.kumo).ops_per_sec, median(&t.etcd).ops_per_sec),
            })
        })
        .collect()
}

fn throughput_table(s: &mut String, title: &str, list: &[Throughput]) {
    let rounds = list.first().map_or(0, |t| t.kumo.len());
    // Kumo on etcd: what kumo's writes cost the etcd behind it, next to what raw puts cost it.
    let behind = list.iter().any(|t| median(&t.kumo).backend_cpu.is_some());
    let _ = writeln!(s, "## {title}\n");
    let _ = writeln!(
        s,
        "{rounds} round(s), etcd and kumo phases interleaved; ops/s is the median round (min–max over rounds), \
             latencies and CPU are from the median round. CPU is the server process's user+system time{}.\n",
        if behind { "; \"etcd behind kumo\" is the etcd process's CPU during kumo's phase" } else { "" }
    );
    let _ = writeln!(
        s,
        "| op | conns | count | kumo ops/s | kumo p50 ms | kumo p99 ms | etcd ops/s | etcd p50 ms | etcd p99 ms \
             | **kumo/etcd** | kumo CPU µs/op | etcd CPU µs/op |{}",
        if behind { " etcd behind kumo CPU µs/op |" } else { "" }
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|{}",
        if behind { "---:|" } else { "" }
    );
    for t in list {
        let (k, e) = (&median(&t.kumo), &median(&t.etcd));
        let _ = write!(
            s,
            "| {} | {} | {} | {} | {:.2} | {:.2} | {} | {:.2} | {:.2} | **{:.2}** | {:.0} | {:.0} |",
            t.op,
            k.conns,
            k.count,
            ops_cell(&t.kumo),
            ms(k.latency.p50),
            ms(k.latency.p99),
            ops_cell(&t.etcd),
            ms(e.latency.p50),
            ms(e.latency.p99),
            ratio(k.ops_per_sec, e.ops_per_sec),
            k.server_us_per_op(),
            e.server_us_per_op()
        );
        if behind {
            let _ = write!(s, " {:.0} |", k.backend_us_per_op().unwrap_or(0.0));
        }
        s.push('\n');
    }
    s.push('\n');
}
