//! kumo API writes next to raw etcd puts. Both servers run at once and their phases are interleaved (etcd
//! then kumo, for each connection count, for each round), so background load on a shared machine hits both
//! alike; each figure is the median round.

use crate::load::{self, EtcdWorker, KumoWorker, Mode, Worker};
use crate::procs::{CpuMeter, Etcd, Kumo};
use crate::report::{Phase, Throughput};
use anyhow::Result;

pub struct Settings {
    pub conns: Vec<usize>,
    pub count: usize,
    pub rounds: usize,
    pub warmup: usize,
    pub size: usize,
}

#[derive(Clone, Copy)]
enum Server<'a> {
    Etcd(&'a Etcd),
    Kumo(&'a Kumo),
}

impl Server<'_> {
    fn name(&self) -> &'static str {
        match self {
            Server::Etcd(_) => "etcd",
            Server::Kumo(_) => "kumo",
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Server::Etcd(e) => e.proc.pid(),
            Server::Kumo(k) => k.proc.pid(),
        }
    }

    /// Meters the server, and the etcd behind a kumo stored in one.
    fn meter(&self) -> CpuMeter {
        let backend = match self {
            Server::Etcd(_) => None,
            Server::Kumo(k) => k.backend_pid,
        };
        CpuMeter::start(self.pid()).with_backend(backend)
    }

    async fn open(&self, n: usize, prefix: &str, size: usize) -> Result<Vec<Box<dyn Worker>>> {
        Ok(match self {
            Server::Etcd(e) => boxed(EtcdWorker::open(&e.endpoint, n, prefix, size).await?),
            Server::Kumo(k) => boxed(KumoWorker::open(&k.endpoint, n, prefix, size).await?),
        })
    }

    fn log_tail(&self) -> String {
        match self {
            Server::Etcd(e) => e.proc.log_tail(),
            Server::Kumo(k) => k.proc.log_tail(),
        }
    }
}

fn boxed<W: Worker>(v: Vec<W>) -> Vec<Box<dyn Worker>> {
    v.into_iter().map(|w| Box::new(w) as Box<dyn Worker>).collect()
}

/// Per server, operation and connection count: every round's phase.
type Rounds = Vec<((&'static str, &'static str, usize), Vec<Phase>)>;

pub async fn run(kumo: &Kumo, etcd: &Etcd, s: &Settings) -> Result<Vec<Throughput>> {
    let servers = [Server::Etcd(etcd), Server::Kumo(kumo)];
    for server in servers {
        if s.warmup > 0 {
            load::run_phase(server.open(1, "warmup", s.size).await?, 0..s.warmup, server.pid()).await?;
        }
    }
    let mut rounds: Rounds = vec![];
    for round in 0..s.rounds {
        for &c in &s.conns {
            for server in servers {
                let (create, update) = create_update(server, c, &format!("r{round}c{c}"), s)
                    .await
                    .map_err(|e| e.context(format!("{} log:\n{}", server.name(), server.log_tail())))?;
                for (op, phase) in [("create", create), ("update", update)] {
                    crate::progress(crate::show(&format!("round {} {} {op}", round + 1, server.name()), &phase));
                    let key = (server.name(), op, c);
                    match rounds.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, v)) => v.push(phase),
                        None => rounds.push((key, vec![phase])),
                    }
                }
            }
        }
    }
    let pick = |server: &str, op: &str, c: usize| -> Vec<Phase> {
        rounds.iter().find(|(k, _)| *k == (server, op, c)).map(|(_, v)| v.clone()).unwrap_or_default()
    };
    let mut out = vec![];
    for op in ["create", "update"] {
        for &c in &s.conns {
            out.push(Throughput { op, kumo: pick("kumo", op, c), etcd: pick("etcd", op, c) });
        }
    }
    Ok(out)
}

/// `count` creates of new objects, then `count` updates of the same objects, on `conns` connections.
async fn create_update(server: Server<'_>, conns: usize, prefix: &str, s: &Settings) -> Result<(Phase, Phase)> {
    let workers = server.open(conns, prefix, s.size).await?;
    let (mut workers, create) = load::run_phase_metered(workers, 0..s.count, server.meter()).await?;
    workers.iter_mut().for_each(|w| w.set_mode(Mode::Update));
    let (_, update) = load::run_phase_metered(workers, 0..s.count, server.meter()).await?;
    Ok((create, update))
}
