//! Carrying the correlator's decisions out: core/v1 Events created, or patched with the series' count.

use crate::correlator::{Correlator, Occurrence, SeriesKey, Write};
use chrono::Utc;
use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};
use serde_json::json;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How often owed writes (occurrences that found the bucket empty, or whose write failed) are looked at.
const FLUSH_EVERY: Duration = Duration::from_secs(5);

/// Records events for one reporting component; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

struct Inner {
    client: kube::Client,
    reporter: Reporter,
    correlator: Mutex<Correlator>,
}

impl Recorder {
    /// Must be called within a tokio runtime: owed writes are flushed by a task that ends with the recorder.
    pub fn new(client: kube::Client, reporter: Reporter) -> Recorder {
        let inner = Arc::new(Inner { client, reporter, correlator: Mutex::default() });
        tokio::spawn(flush(Arc::downgrade(&inner)));
        Recorder { inner }
    }

    /// Records `ev` about the object `reference`: written now, or folded into its series and written later.
    pub async fn publish(&self, ev: &Event, reference: &ObjectReference) -> Result<(), kube::Error> {
        let key = SeriesKey {
            kind: reference.kind.clone().unwrap_or_default(),
            namespace: reference.namespace.clone().unwrap_or_default(),
            name: reference.name.clone().unwrap_or_default(),
            type_: match ev.type_ {
                EventType::Normal => "Normal".into(),
                EventType::Warning => "Warning".into(),
            },
            reason: ev.reason.clone(),
            action: ev.action.clone(),
            component: self.inner.reporter.controller.clone(),
        };
        let occurrence = Occurrence {
            key,
            message: ev.note.clone().unwrap_or_default(),
            object: reference.clone(),
            host: self.inner.reporter.instance.clone(),
        };
        let write = self.inner.correlator.lock().expect("correlator").observe(occurrence, Utc::now());
        match write {
            Some(w) => self.inner.write(w).await,
            None => Ok(()),
        }
    }
}

/// Writes what is owed, every few seconds, until the recorder is dropped.
async fn flush(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(FLUSH_EVERY).await;
        let Some(inner) = inner.upgrade() else { return };
        let due = inner.correlator.lock().expect("correlator").due(Utc::now());
        for w in due {
            if let Err(e) = inner.write(w).await {
                tracing::debug!("writing an event series: {e}");
            }
        }
    }
}

impl Inner {
    async fn write(&self, w: Write) -> Result<(), kube::Error> {
        let result = self.try_write(&w).await;
        let total = result.as_ref().ok().copied();
        self.correlator.lock().expect("correlator").written(&w, total);
        result.map(drop)
    }

    /// Creates the Event, or adds to it when it exists; returns the count the API then holds.
    async fn try_write(&self, w: &Write) -> Result<u32, kube::Error> {
        let api: Api<CoreEvent> = Api::namespaced(self.client.clone(), w.key.event_namespace());
        let name = w.key.event_name();
        if !w.exists {
            match api.create(&PostParams::default(), &self.event(w, &name)).await {
                Ok(_) => return Ok(w.count),
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        // Continue the series the API holds (another process may have added to it): its count plus ours.
        let Some(held) = api.get_opt(&name).await? else {
            api.create(&PostParams::default(), &self.event(w, &name)).await?;
            return Ok(w.count);
        };
        let held_count = held.count.unwrap_or(0).max(0) as u32;
        let count = if w.exists { held_count.max(w.count - w.added) + w.added } else { held_count + w.added };
        let patch = json!({
            "metadata": {"resourceVersion": held.metadata.resource_version},
            "count": count,
            "lastTimestamp": w.last,
            "message": w.message,
            "involvedObject": w.object,
            "source": self.source(w),
            "reportingInstance": w.host,
        });
        // Gone or changed meanwhile, it fails: the next flush starts from what is there then.
        api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await.map(|_| count)
    }

    fn source(&self, w: &Write) -> serde_json::Value {
        json!({"component": self.reporter.controller, "host": w.host})
    }

    fn event(&self, w: &Write, name: &str) -> CoreEvent {
        let body = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": w.key.event_namespace()},
            "involvedObject": w.object,
            "reason": w.key.reason,
            "message": w.message,
            "type": w.key.type_,
            "action": w.key.action,
            "count": w.count,
            "firstTimestamp": w.first,
            "lastTimestamp": w.last,
            "source": self.source(w),
            "reportingComponent": self.reporter.controller,
            "reportingInstance": w.host,
        });
        serde_json::from_value(body).expect("a core/v1 Event from its own fields")
    }
}
