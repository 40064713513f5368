//! watch: initial events, resume from a resourceVersion, selector transitions, bookmarks, timeouts, and
//! `410 Gone` as an ERROR event once history is compacted.

use super::read::{cache_reached, Selectors};
use super::Call;
use crate::objects::{decode, parse_rv, present, store_error};
use crate::response::Resp;
use crate::state::ApiServer;
use crate::watch_cache::CachedEvent;
use bytes::Bytes;
use futures::StreamExt;
use http::StatusCode;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use kumo_api::{table, ApiError, ResourceDef};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

struct Encoder {
    def: Arc<ResourceDef>,
    table: bool,
    include_object: String,
    sent_columns: bool,
}

impl Encoder {
    fn event(&mut self, kind: &str, obj: &Value) -> Bytes {
        let obj = present(&self.def, obj.clone());
        let object = if self.table {
            let with_columns = !self.sent_columns;
            self.sent_columns = true;
            let rv = obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(json!(""));
            table::table(&self.def, &[obj], &self.include_object, json!({"resourceVersion": rv}), with_columns)
        } else {
            obj
        };
        line(json!({"type": kind, "object": object}))
    }

    /// A change event; plain JSON encodings are shared between watchers through the cache.
    fn change(&mut self, kind: &str, ev: &CachedEvent) -> Bytes {
        if self.table {
            return self.event(kind, &ev.object());
        }
        let key = format!("{kind}|{}", self.def.api_version());
        ev.encoded(&key, || self.event(kind, &ev.object()))
    }

    fn bookmark(&self, rv: i64, initial_end: bool) -> Bytes {
        let mut md = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            md["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(
            json!({"type": "BOOKMARK", "object": {"kind": self.def.kind, "apiVersion": self.def.api_version(), "metadata": md}}),
        )
    }
}

fn line(v: Value) -> Bytes {
    let mut b = serde_json::to_vec(&v).expect("JSON");
    b.push(b'\n');
    Bytes::from(b)
}

fn gone_event(msg: String) -> Bytes {
    line(json!({"type": "ERROR", "object": ApiError::gone(msg).to_status()}))
}

pub async fn watch(api: Arc<ApiServer>, def: Arc<ResourceDef>, call: &Call) -> Result<Resp, ApiError> {
    let mut sel = Selectors::from_call(&def, call)?;
    if let Some(name) = call.path.name.as_deref() {
        // The legacy /watch/.../{name} form watches one object.
        sel.fields =
            kumo_api::selector::FieldSelector::parse(&format!("metadata.name={name}"), &|_| true).expect("valid");
    }
    let rv = call.query.get("resourceVersion");
    let send_initial = match call.query.get("sendInitialEvents") {
        Some("true") => {
            if call.query.get("resourceVersionMatch") != Some("NotOlderThan") || !call.query.flag("allowWatchBookmarks")
            {
                return Err(ApiError::invalid(
                    "",
                    "ListOptions",
                    "",
                    vec![kumo_api::Cause::invalid(
                        "sendInitialEvents",
                        "sendInitialEvents requires resourceVersionMatch=NotOlderThan and allowWatchBookmarks=true",
                    )],
                ));
            }
            true
        }
        Some("false") | None => false,
        Some(o) => return Err(ApiError::bad_request(format!("invalid sendInitialEvents {o:?}"))),
    };
    if let Some(m) = call.query.get("resourceVersionMatch") {
        if !send_initial {
            return Err(ApiError::bad_request(format!(
                "resourceVersionMatch {m} is not allowed for watch without sendInitialEvents"
            )));
        }
    }
    let bookmarks = call.query.flag("allowWatchBookmarks");
    let timeout = Duration::from_secs(
        call.query.int("timeoutSeconds").map_err(ApiError::bad_request)?.unwrap_or(1800).max(1) as u64,
    );
    let prefix = def.list_prefix(call.namespace());
    let mut enc = Encoder {
        def: def.clone(),
        table: call.accept.table,
        include_object: super::read::include_object(call).to_string(),
        sent_columns: false,
    };

    let initial_list = send_initial || rv.is_none() || rv == Some("0");
    let (initial, start) = match initial_list {
        true => initial_events(&api, &def, call.namespace(), rv).await?,
        false => (Initial::Stored(vec![]), parse_rv(rv.unwrap_or("0"))?),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    // A label every selected object carries files the watcher under it: it hears only of those objects.
    let label = sel.labels.required_label().map(|(k, v)| (k.to_string(), v.to_string()));
    let interest = crate::watch_cache::Interest { prefix: prefix.clone(), label };
    let stream = match api.cache_for(&prefix).watch_with(interest, start) {
        Ok(s) => Some(s),
        Err(g) => {
            let _ = tx.try_send(gone_event(format!("too old resource version: {} ({})", g.requested, g.oldest)));
            None
        }
    };
    let interval = api.bookmark_interval;
    let cache = api.cache_for(&prefix).clone();
    tokio::spawn(async move {
        let Some(mut stream) = stream else { return };
        match initial {
            Initial::Cached(listing) => {
                // One object decoded at a time, as the client takes them in.
                for (i, ev) in listing.items.iter().enumerate() {
                    let obj = present(&enc.def, (*ev.object()).clone());
                    if sel.matches(&obj) && tx.send(enc.event("ADDED", &obj)).await.is_err() {
                        return;
                    }
                    if i % 1000 == 999 {
                        tokio::task::yield_now().await;
                    }
                }
            }
            Initial::Stored(kvs) => {
                for kv in &kvs {
                    let obj = match decode(kv) {
                        Ok(obj) => present(&enc.def, obj),
                        // A damaged object ends the watch with its error, as a list of it fails.
                        Err(e) => {
                            let _ = tx.send(line(json!({"type": "ERROR", "object": e.to_status()}))).await;
                            return;
                        }
                    };
                    if sel.matches(&obj) && tx.send(enc.event("ADDED", &obj)).await.is_err() {
                        return;
                    }
                }
            }
        }
        let mut last = start;
        if send_initial && tx.send(enc.bookmark(last, true)).await.is_err() {
            return;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            // Read before polling the stream: if the stream is then idle, nothing at or below this revision
            // is pending for this watcher, so a bookmark may carry it.
            let seen = cache.revision();
            tokio::select! {
                biased;
                item = stream.next() => match item {
                    Some(Ok(ev)) => {
                        last = ev.revision;
                        if let Some(b) = transition(&mut enc, &sel, &ev) {
                            if tx.send(b).await.is_err() { return; }
                        }
                    }
                    Some(Err(g)) => {
                        let _ = tx.send(gone_event(format!("too old resource version: {} ({})", g.requested, g.oldest))).await;
                        return;
                    }
                    None => return,
                },
                _ = tick.tick() => {
                    if bookmarks {
                        last = last.max(seen);
                        if tx.send(enc.bookmark(last, false)).await.is_err() { return; }
                    }
                }
                _ = &mut deadline => return,
                _ = tx.closed() => return,
            }
        }
    });
    let body = StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx).map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b))),
    );
    Ok(http::Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CACHE_CONTROL, "no-cache, private")
        .body(BodyExt::boxed(body))
        .expect("response"))
}

/// The objects a watch starts with.
enum Initial {
    /// The watch cache's objects at the watch's start, decoded one by one as they are sent: every VMI read and
    /// decoded at once for each watch without a resourceVersion, three such watches of 150,000 VMIs took the
    /// API server past 20 GiB.
    Cached(crate::watch_cache::Listing),
    /// Read from the store (kinds the cache holds no copies of, or a cache behind), as stored: decoded one by
    /// one as well.
    Stored(Vec<kumo_store::KeyValue>),
}

/// The initial events of a watch, and the revision it goes on from: from the watch cache once it is as recent
/// as the watch asks (`rv` unset: the store's current revision, as a list without one; "0": any), else from the
/// store.
async fn initial_events(
    api: &ApiServer,
    def: &ResourceDef,
    ns: Option<&str>,
    rv: Option<&str>,
) -> Result<(Initial, i64), ApiError> {
    let prefix = def.list_prefix(ns);
    let fresh = match rv {
        Some("0") => true,
        None => cache_reached(api, def, &prefix, None).await?,
        Some(rv) => cache_reached(api, def, &prefix, Some(parse_rv(rv)?)).await?,
    };
    if let Some(listing) = api.cache_for(&prefix).listing(&prefix).filter(|_| fresh) {
        let rev = listing.revision;
        return Ok((Initial::Cached(listing), rev));
    }
    let read = api.objects.store_for(&prefix).range(kumo_store::RangeRequest { prefix, ..Default::default() });
    let r = read.await.map_err(|e| store_error(def, "", e))?;
    Ok((Initial::Stored(r.kvs), r.revision))
}

/// The event a watcher with `sel` sees for `ev`: objects entering the selection are ADDED, leaving it DELETED.
fn transition(enc: &mut Encoder, sel: &Selectors, ev: &CachedEvent) -> Option<Bytes> {
    // Without a selector nothing is decoded here: a cold event replayed to thousands of watchers is encoded once.
    let (now, before) = match sel.is_empty() {
        true => (true, ev.replaced()),
        false => (selected(enc, sel, &ev.object()), ev.prev().is_some_and(|p| selected(enc, sel, &p))),
    };
    if ev.deleted {
        return (now || before).then(|| enc.change("DELETED", ev));
    }
    match (before, now) {
        (false, true) => Some(enc.change("ADDED", ev)),
        (true, true) => Some(enc.change("MODIFIED", ev)),
        (true, false) => Some(enc.change("DELETED", ev)),
        (false, false) => None,
    }
}

/// Selector match on the served representation, skipping the conversion when nothing needs it.
fn selected(enc: &Encoder, sel: &Selectors, obj: &Value) -> bool {
    if enc.def.storage_group.is_some() {
        sel.matches(&present(&enc.def, obj.clone()))
    } else {
        sel.matches(obj)
    }
}
