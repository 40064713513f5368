//! Leader election on a `coordination.k8s.io/v1` Lease, as Kubernetes' control-plane components do it: work
//! that must run once per cluster (the controllers, the API server's garbage collector and compaction) runs
//! only while this process holds the Lease.
//!
//! Expiry is judged by when *this* process last saw the Lease change, not by the holder's `renewTime`, so clock
//! skew between replicas cannot make two of them leader. A leader that cannot renew within `renew_deadline`
//! (shorter than the Lease duration) steps down before anyone else may take over.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct Config {
    pub namespace: String,
    pub name: String,
    /// Unique per process (host name and a random suffix).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Config {
    /// Defaults chosen so a dead leader is replaced within about 12 s (Lease 10 s, retries every 2 s).
    pub fn new(name: &str) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let suffix: u32 = rand_u32();
        Config {
            namespace: "kube-system".into(),
            name: name.into(),
            identity: format!("{}_{suffix:08x}", host.trim()),
            lease_duration: Duration::from_secs(10),
            renew_deadline: Duration::from_secs(7),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl Config {
    /// A stable identity (e.g. a server replica's), instead of a new one per process.
    pub fn identity(mut self, id: &str) -> Self {
        self.identity = id.to_string();
        self
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.finish() as u32
}

/// What the elector saw of the Lease last, and when.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// (holder, renewTime, resourceVersion) of the record, to notice any change.
    record: Option<(String, Option<String>, Option<String>)>,
    at: Option<Instant>,
}

/// The next step, decided from the Lease as read (None: absent).
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Write the Lease naming us (create when absent, else replace at the read resourceVersion).
    Claim { transitions: i32, acquire: bool },
    /// Someone else holds a live Lease.
    Follow,
}

/// Pure decision: may we claim (or renew) the Lease now?
pub fn decide(lease: Option<&Lease>, me: &str, observed: &mut Observed, now: Instant, duration: Duration) -> Step {
    let Some(lease) = lease else { return Step::Claim { transitions: 0, acquire: true } };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let transitions = spec.lease_transitions.unwrap_or(0);
    if holder == me {
        return Step::Claim { transitions, acquire: false };
    }
    let record = (holder.clone(), spec.renew_time.map(|t| t.0.to_string()), lease.metadata.resource_version.clone());
    if observed.record.as_ref() != Some(&record) {
        observed.record = Some(record);
        observed.at = Some(now);
    }
    let held_for = spec.lease_duration_seconds.map(|s| Duration::from_secs(s.max(1) as u64)).unwrap_or(duration);
    let expired = observed.at.is_none_or(|at| now.duration_since(at) >= held_for);
    if holder.is_empty() || expired {
        Step::Claim { transitions: transitions + 1, acquire: true }
    } else {
        Step::Follow
    }
}

/// Runs the election forever in the background; the receiver says whether this process leads right now.
pub fn elect(client: Client, cfg: Config) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
        let mut observed = Observed::default();
        let mut last_renew: Option<Instant> = None;
        loop {
            let ok = try_once(&api, &cfg, &mut observed).await;
            let now = Instant::now();
            match ok {
                Ok(true) => last_renew = Some(now),
                Ok(false) => last_renew = None,
                Err(e) => tracing::debug!("leader election {}: {e}", cfg.name),
            }
            let leading = last_renew.is_some_and(|t| now.duration_since(t) < cfg.renew_deadline);
            if leading != *tx.borrow() {
                if leading {
                    tracing::info!("{} is now the leader for {}", cfg.identity, cfg.name);
                } else {
                    tracing::warn!("{} is no longer the leader for {}", cfg.identity, cfg.name);
                }
                let _ = tx.send(leading);
            }
            tokio::time::sleep(cfg.retry_period).await;
        }
    });
    rx
}

/// Runs `work` whenever `leading` is true, and stops it (dropping the future) as soon as it turns false.
pub async fn while_leading<F, Fut>(mut leading: watch::Receiver<bool>, mut work: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    loop {
        if leading.wait_for(|l| *l).await.map(|_| ()).is_err() {
            return;
        }
        tokio::select! {
            r = work() => if let Err(e) = r {
                tracing::error!("leader work stopped: {e:#}; restarting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            },
            _ = async { leading.wait_for(|l| !*l).await.map(|_| ()) } => tracing::warn!("lost leadership: stopping leader work"),
        }
    }
}

/// One read-decide-write round; Ok(true) when we hold the Lease afterwards.
async fn try_once(api: &Api<Lease>, cfg: &Config, observed: &mut Observed) -> Result<bool, kube::Error> {
    let current = api.get_opt(&cfg.name).await?;
    let (transitions, acquire) =
        match decide(current.as_ref(), &cfg.identity, observed, Instant::now(), cfg.lease_duration) {
            Step::Follow => return Ok(false),
            Step::Claim { transitions, acquire } => (transitions, acquire),
        };
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let old = current.as_ref().and_then(|l| l.spec.clone()).unwrap_or_default();
    let spec = LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.lease_duration.as_secs() as i32),
        acquire_time: if acquire { Some(now.clone()) } else { old.acquire_time.or(Some(now.clone())) },
        renew_time: Some(now),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    let result = match current {
        None => {
            let lease =
                Lease { metadata: ObjectMeta { name: Some(cfg.name.clone()), ..Default::default() }, spec: Some(spec) };
            api.create(&PostParams::default(), &lease).await
        }
        Some(mut lease) => {
            // resourceVersion is kept: the write is a compare-and-swap, so two claimants cannot both win.
            lease.spec = Some(spec);
            api.replace(&cfg.name, &PostParams::default(), &lease).await
        }
    };
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, rv: &str) -> Lease {
        Lease {
            metadata: ObjectMeta { resource_version: Some(rv.into()), ..Default::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(10),
                lease_transitions: Some(3),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn claims_only_absent_own_or_expired_leases() {
        let d = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut obs = Observed::default();
        assert_eq!(decide(None, "me", &mut obs, t0, d), Step::Claim { transitions: 0, acquire: true });
        assert_eq!(
            decide(Some(&lease("me", "1")), "me", &mut obs, t0, d),
            Step::Claim { transitions: 3, acquire: false }
        );
        // Another holder: follow until the record has not changed for the Lease duration, by our own clock.
        let other = lease("other", "5");
        assert_eq!(decide(Some(&other), "me", &mut obs, t0, d), Step::Follow);
        assert_eq!(decide(Some(&other), "me", &mut obs, t0 + Duration::from_secs(9), d), Step::Follow);
        let renewed = lease("other", "6");
        assert_eq!(decide(Some(&renewed), "me", &mut obs, t0 + Duration::from_secs(9), d), Step::Follow);
        assert_eq!(decide(Some(&renewed), "me", &mut obs, t0 + Duration::from_secs(18), d), Step::Follow);
        assert_eq!(
            decide(Some(&renewed), "me", &mut obs, t0 + Duration::from_secs(19), d),
            Step::Claim { transitions: 4, acquire: true }
        );
        // A released Lease (no holder) is free at once.
        let mut obs = Observed::default();
        assert_eq!(decide(Some(&lease("", "7")), "me", &mut obs, t0, d), Step::Claim { transitions: 4, acquire: true });
    }
}
