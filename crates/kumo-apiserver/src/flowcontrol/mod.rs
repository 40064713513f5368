//! API Priority and Fairness: every request (but health checks) is classified by the FlowSchemas into a
//! priority level, and waits there for one of the level's seats; a flood from one client fills its own
//! queues and is refused with 429 and `Retry-After`, while other flows and levels keep being served.
//!
//! The configuration is the stored `flowcontrol.apiserver.k8s.io/v1` objects (built-ins seeded at start,
//! editable like any object), followed through the watch cache. Seats: the server's limit
//! (`--max-requests-inflight` + `--max-mutating-requests-inflight`, as Kubernetes) shared out by
//! `nominalConcurrencyShares`. Classification is `kumo_api::flowcontrol`; queuing is [`queue`].

pub mod queue;

use crate::state::ApiServer;
use k8s_openapi::api::flowcontrol::v1::{FlowSchema, PriorityLevelConfiguration};
use kumo_api::flowcontrol::{self as fc, Classification, Limit, RequestDigest};
use queue::{Level, Rejection, Seat};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub const PREFIX: &str = "/registry/flowcontrol.apiserver.k8s.io/";

/// How long a request may wait in a queue (Kubernetes waits up to a quarter of its 60 s request timeout).
const QUEUE_WAIT: Duration = Duration::from_secs(15);

/// The configuration in effect.
#[derive(Default)]
struct Snapshot {
    schemas: Vec<FlowSchema>,
    /// Limited levels by name (exempt ones are absent from it but listed in `exempt`).
    levels: HashMap<String, Arc<Level>>,
    exempt: Vec<String>,
    /// uid by object name, for the response headers that name the schema and level used.
    schema_uids: HashMap<String, String>,
    level_uids: HashMap<String, String>,
}

pub struct FlowControl {
    /// Seats shared out among the limited levels.
    server_seats: usize,
    snapshot: RwLock<Arc<Snapshot>>,
}

/// What a request was admitted with: its seat (none when exempt), and how it was classified.
pub struct Admitted {
    pub seat: Option<Seat>,
    pub flow_schema_uid: String,
    pub priority_level_uid: String,
}

/// A refusal: 429, with what to tell the client and the metrics.
pub struct Refused {
    pub rejection: Rejection,
    pub class: Classification,
}

impl FlowControl {
    pub fn new(server_seats: usize) -> FlowControl {
        let fc = FlowControl { server_seats: server_seats.max(1), snapshot: Default::default() };
        fc.load(vec![], vec![]);
        fc
    }

    /// Takes the configuration from these objects; the mandatory `exempt` and `catch-all` built-ins are used
    /// when missing, as Kubernetes restores them.
    pub fn load(&self, mut schemas: Vec<FlowSchema>, mut plcs: Vec<PriorityLevelConfiguration>) {
        let named = |n: &Option<String>, want: &str| n.as_deref() == Some(want);
        for mandatory in ["exempt", "catch-all"] {
            if !schemas.iter().any(|s| named(&s.metadata.name, mandatory)) {
                let builtin = fc::builtin_flow_schemas().into_iter().filter_map(|v| serde_json::from_value(v).ok());
                schemas.extend(builtin.filter(|s: &FlowSchema| named(&s.metadata.name, mandatory)));
            }
            if !plcs.iter().any(|p| named(&p.metadata.name, mandatory)) {
                let builtin = fc::builtin_priority_levels().into_iter().filter_map(|v| serde_json::from_value(v).ok());
                plcs.extend(builtin.filter(|p: &PriorityLevelConfiguration| named(&p.metadata.name, mandatory)));
            }
        }
        let limits: Vec<(String, Limit)> = plcs.iter().map(fc::level_limit).collect();
        let shares: u64 =
            limits.iter().map(|(_, l)| if let Limit::Limited { shares, .. } = l { *shares as u64 } else { 0 }).sum();
        let old = self.snapshot.read().expect("lock").clone();
        let mut next = Snapshot::default();
        for (name, limit) in limits {
            match limit {
                Limit::Exempt => next.exempt.push(name),
                Limit::Limited { shares: s, queuing } => {
                    // Kubernetes' nominal concurrency limit: the server's seats in proportion to the shares.
                    let seats = ((self.server_seats as u64 * s as u64).div_ceil(shares.max(1)) as usize).max(1);
                    let level = match old.levels.get(&name) {
                        Some(l) if l.same_limits(seats, queuing) => l.clone(),
                        _ => Level::new(seats, queuing),
                    };
                    next.levels.insert(name, level);
                }
            }
        }
        let uid = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            (m.name.clone().unwrap_or_default(), m.uid.clone().unwrap_or_default())
        };
        next.schema_uids = schemas.iter().map(|s| uid(&s.metadata)).collect();
        next.level_uids = plcs.iter().map(|p| uid(&p.metadata)).collect();
        next.schemas = schemas;
        *self.snapshot.write().expect("lock") = Arc::new(next);
    }

    /// Classifies the request and waits for its seat.
    pub async fn admit(&self, r: &RequestDigest<'_>) -> Result<Admitted, Refused> {
        let snap = self.snapshot.read().expect("lock").clone();
        // The mandatory catch-all matches every request; should it be edited not to, treat it as caught.
        let class = fc::classify(&snap.schemas, r).unwrap_or_else(|| Classification {
            flow_schema: "catch-all".into(),
            priority_level: "catch-all".into(),
            flow: format!("catch-all/{}", r.user),
        });
        let admitted = |seat| Admitted {
            seat,
            flow_schema_uid: snap.schema_uids.get(&class.flow_schema).cloned().unwrap_or_default(),
            priority_level_uid: snap.level_uids.get(&class.priority_level).cloned().unwrap_or_default(),
        };
        if snap.exempt.contains(&class.priority_level) {
            return Ok(admitted(None));
        }
        // A schema naming a level that does not exist sends its requests to catch-all, as a dangling one does.
        let level = snap.levels.get(&class.priority_level).or_else(|| snap.levels.get("catch-all"));
        let Some(level) = level else { return Ok(admitted(None)) };
        match level.acquire(&class.flow, QUEUE_WAIT).await {
            Ok(seat) => Ok(admitted(Some(seat))),
            Err(rejection) => Err(Refused { rejection, class }),
        }
    }
}

/// Seeds the built-in objects that are missing, loads the configuration, and follows changes to it.
pub async fn start(api: &Arc<ApiServer>) -> anyhow::Result<()> {
    seed(api).await?;
    let rev = reload(api).await?;
    let api = api.clone();
    tokio::spawn(async move {
        use futures::StreamExt;
        let mut from = rev;
        loop {
            if let Ok(mut events) = api.cache.watch(PREFIX, from).await {
                while let Some(Ok(ev)) = events.next().await {
                    from = ev.revision;
                    if let Err(e) = reload(&api).await {
                        tracing::warn!("reloading flow control configuration: {e}");
                    }
                }
            }
            // Fell behind the cache: read everything again and follow from there.
            match reload(&api).await {
                Ok(rev) => from = rev,
                Err(e) => tracing::warn!("reloading flow control configuration: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Ok(())
}

async fn seed(api: &ApiServer) -> anyhow::Result<()> {
    let kinds =
        [("prioritylevelconfigurations", fc::builtin_priority_levels()), ("flowschemas", fc::builtin_flow_schemas())];
    for (plural, objects) in kinds {
        let def = api.registry.get(fc::GROUP, "v1", plural).ok_or_else(|| anyhow::anyhow!("{plural} are served"))?;
        for mut obj in objects {
            if api.objects.try_get(&def, None, kumo_api::meta::name(&obj)).await?.is_some() {
                continue;
            }
            crate::rest::admission::stamp_new(&mut obj);
            match api.objects.create(&def, &obj).await {
                Err(e) if e.code != 409 => return Err(e.into()),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Loads the stored configuration; returns the revision it was read at.
async fn reload(api: &ApiServer) -> anyhow::Result<i64> {
    let def = |plural| api.registry.get(fc::GROUP, "v1", plural).ok_or_else(|| anyhow::anyhow!("{plural} are served"));
    let (schemas, rev) = api.objects.list_all(&*def("flowschemas")?, None).await?;
    let (levels, _) = api.objects.list_all(&*def("prioritylevelconfigurations")?, None).await?;
    api.flowcontrol.load(typed(schemas), typed(levels));
    Ok(rev)
}

/// Objects as their Kubernetes type; ones that do not decode (admission validates them) are skipped.
fn typed<T: serde::de::DeserializeOwned>(objects: Vec<serde_json::Value>) -> Vec<T> {
    objects.into_iter().filter_map(|v| serde_json::from_value(v).ok()).collect()
}
