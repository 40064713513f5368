//! get and list: selectors, paging with continue tokens, resourceVersion semantics, Table output.

use super::{list_object, Call};
use crate::objects::{decode, parse_rv, present, store_error};
use crate::response::{self, Resp};
use crate::state::ApiServer;
use base64::Engine;
use http::StatusCode;
use kumo_api::selector::{FieldSelector, LabelSelector};
use kumo_api::{table, ApiError, ResourceDef};
use kumo_store::RangeRequest;
use serde_json::{json, Value};
use std::time::Duration;

pub async fn get(api: &ApiServer, def: &ResourceDef, call: &Call) -> Result<Resp, ApiError> {
    let obj = present(def, api.objects.get(def, call.namespace(), call.name()).await?);
    if call.accept.table {
        let t = table::table(def, &[obj], include_object(call), json!({"resourceVersion": ""}), true);
        return Ok(response::encode(StatusCode::OK, &t, &call.accept));
    }
    Ok(response::encode(StatusCode::OK, &obj, &call.accept))
}

pub fn include_object(call: &Call) -> &str {
    call.query.get("includeObject").unwrap_or("Metadata")
}

/// The selectors of a list or watch.
pub struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    pub fn from_call(def: &ResourceDef, call: &Call) -> Result<Self, ApiError> {
        let labels = LabelSelector::parse(call.query.get("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
        let kind = def.kind.clone();
        let allowed = move |f: &str| -> bool {
            matches!(f, "metadata.name" | "metadata.namespace")
                || kind == "Event"
                || (kind == "Secret" && f == "type")
                || (kind == "Node" && f == "spec.unschedulable")
        };
        let fields = FieldSelector::parse(call.query.get("fieldSelector").unwrap_or(""), &allowed)
            .map_err(|e| ApiError::bad_request(format!("{e} for {}", def.qualified())))?;
        Ok(Selectors { labels, fields })
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(kumo_api::meta::labels(obj)) && self.fields.matches(obj)
    }
}

fn encode_continue(rev: i64, key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json!({"rv": rev, "start": key}).to_string())
}

fn decode_continue(token: &str) -> Result<(i64, String), ApiError> {
    let bad = || {
        ApiError::bad_request("invalid continue token: it must be the value of metadata.continue from a previous list")
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    Ok((v["rv"].as_i64().ok_or_else(bad)?, v["start"].as_str().ok_or_else(bad)?.to_string()))
}

pub async fn list(api: &ApiServer, def: &ResourceDef, call: &Call) -> Result<Resp, ApiError> {
    let sel = Selectors::from_call(def, call)?;
    let limit = call.query.int("limit").map_err(ApiError::bad_request)?.unwrap_or(0).max(0) as usize;
    let rv = call.query.get("resourceVersion");
    let rv_match = call.query.get("resourceVersionMatch");
    let (mut revision, mut start_after) = (None, None::<String>);
    if let Some(token) = call.query.get("continue") {
        if rv.is_some_and(|r| r != "0") {
            return Err(ApiError::bad_request("specifying resource version is not allowed when using continue"));
        }
        let (r, k) = decode_continue(token)?;
        revision = Some(r);
        start_after = Some(k);
    } else {
        match (rv, rv_match) {
            (Some(r), Some("Exact")) => revision = Some(parse_rv(r)?),
            (None, Some(m)) => {
                return Err(ApiError::bad_request(format!(
                    "resourceVersionMatch {m} is forbidden unless resourceVersion is provided"
                )))
            }
            (Some(r), _) => {
                let want = parse_rv(r)?;
                let cache = api.cache_for(&def.key_prefix());
                if want > 0 && !cache.wait_for(want, Duration::from_secs(3)).await {
                    let mut e =
                        ApiError::timeout(format!("Too large resource version: {want}, current: {}", cache.revision()));
                    e.retry_after_seconds = Some(1);
                    return Err(e);
                }
            }
            (None, None) => {}
        }
        if let Some(m) = rv_match {
            if !matches!(m, "Exact" | "NotOlderThan") {
                return Err(ApiError::bad_request(format!(
                    "unsupported resourceVersionMatch {m:?}: Exact or NotOlderThan"
                )));
            }
        }
    }
    let prefix = def.list_prefix(call.namespace());
    let as_json = !call.accept.table && !call.accept.yaml;
    let cached = match (revision, &start_after, single_key(def, call, &sel)) {
        (None, None, Some(key)) => Some(from_key(api, def, &sel, &key, Items::new(as_json)).await?),
        (None, None, None) => {
            // A resourceVersion asks for any state not older (0: any recent one, as client-go's informers
            // list): the cache, which has already reached it, answers at its own revision without waiting to
            // catch up with the store (and the watch that follows from that revision brings the rest). Ten
            // thousand agents relisting after a restart must not each wait while the cache is behind a burst.
            let cache = Cached { api, def, sel: &sel, prefix: &prefix, limit };
            match cache.current(rv.is_some()).await? {
                true => match cache.indexed(Items::new(as_json)).await {
                    Some(page) => Some(page),
                    None => cache.first(Items::new(as_json)).await,
                },
                // Behind the store for longer than a list should wait: the store answers.
                false => None,
            }
        }
        (Some(rev), Some(after), _) => {
            Cached { api, def, sel: &sel, prefix: &prefix, limit }.continued(rev, after, Items::new(as_json)).await
        }
        _ => None,
    };
    let Page { items, more, remaining, last_key, read_rev } = match cached {
        Some(page) => page,
        None => scan(api, def, call, &sel, &prefix, limit, revision, start_after, Items::new(as_json)).await?,
    };
    let mut meta = json!({"resourceVersion": read_rev.to_string()});
    if more {
        if let Some(k) = &last_key {
            meta["continue"] = json!(encode_continue(read_rev, k));
        }
        if sel.is_empty() && remaining > 0 {
            meta["remainingItemCount"] = json!(remaining);
        }
    }
    match items {
        Items::Json { out, .. } => {
            // The list object with an empty `items`, which the encoded items then fill.
            let head =
                serde_json::to_vec(&list_object(def, vec![], meta)).map_err(|e| ApiError::internal(e.to_string()))?;
            let at = head
                .windows(10)
                .rposition(|w| w == b"\"items\":[]")
                .ok_or_else(|| ApiError::internal("list encoding"))?;
            let mut body = Vec::with_capacity(head.len() + out.len());
            body.extend_from_slice(&head[..at + 9]);
            body.extend_from_slice(&out);
            body.extend_from_slice(&head[at + 9..]);
            Ok(response::json_bytes(StatusCode::OK, body))
        }
        Items::Values(items) if call.accept.table => {
            let t = table::table(def, &items, include_object(call), meta, true);
            Ok(response::encode(StatusCode::OK, &t, &call.accept))
        }
        Items::Values(items) => Ok(response::encode(StatusCode::OK, &list_object(def, items, meta), &call.accept)),
    }
}

/// Where a list's items go: kept as values (a Table or YAML is made of them), or encoded as JSON one by one as
/// they are read, so that a list of every VMI never holds them all decoded at once (its peak is the answer's
/// bytes, not several times that).
enum Items {
    Values(Vec<Value>),
    Json { out: Vec<u8>, count: usize },
}

impl Items {
    fn new(as_json: bool) -> Items {
        match as_json {
            true => Items::Json { out: Vec::new(), count: 0 },
            false => Items::Values(Vec::new()),
        }
    }

    fn push(&mut self, obj: Value) {
        match self {
            Items::Values(v) => v.push(obj),
            Items::Json { out, count } => {
                if *count > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, &obj).expect("a JSON value encodes");
                *count += 1;
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Items::Values(v) => v.len(),
            Items::Json { count, .. } => *count,
        }
    }
}

/// One page of a list.
struct Page {
    items: Items,
    more: bool,
    remaining: i64,
    last_key: Option<String>,
    read_rev: i64,
}

/// The one key a list can only match: a field selector naming the object (`metadata.name=X`, what a watch of
/// one object lists with) in a known namespace. kube-apiserver reads that key alone too; scanning instead made
/// each of ten thousand joining nodes read every Node.
fn single_key(def: &ResourceDef, call: &Call, sel: &Selectors) -> Option<String> {
    let name = sel.fields.required("metadata.name")?;
    if !def.namespaced {
        return Some(def.key(None, name));
    }
    let ns = call.namespace().or_else(|| sel.fields.required("metadata.namespace"))?;
    Some(def.key(Some(ns), name))
}

/// A list of at most the object at `key`, at the store's current revision.
async fn from_key(
    api: &ApiServer,
    def: &ResourceDef,
    sel: &Selectors,
    key: &str,
    items: Items,
) -> Result<Page, ApiError> {
    let store = api.objects.store_for(key);
    let req = RangeRequest { prefix: key.to_string(), limit: 1, ..Default::default() };
    let r = store.range(req).await.map_err(|e| store_error(def, "", e))?;
    let mut page = Page { items, more: false, remaining: 0, last_key: None, read_rev: r.revision };
    // A prefix read: the exact key sorts before any longer one that starts with it.
    if let Some(kv) = r.kvs.first().filter(|kv| kv.key == key) {
        let obj = present(def, decode(kv)?);
        if sel.matches(&obj) {
            page.items.push(obj);
            page.last_key = Some(kv.key.clone());
        }
    }
    Ok(page)
}

/// A list answered from the watch cache, which holds every object.
struct Cached<'a> {
    api: &'a ApiServer,
    def: &'a ResourceDef,
    sel: &'a Selectors,
    prefix: &'a str,
    limit: usize,
}

impl Cached<'_> {
    /// Whether the cache may answer now: it has caught up with the store (so the list is as consistent as a
    /// read of the store), or `any` recent revision will do.
    async fn current(&self, any: bool) -> Result<bool, ApiError> {
        match any {
            true => Ok(true),
            false => cache_reached(self.api, self.def, self.prefix, None).await,
        }
    }

    /// A list selecting on a label the cache indexes: only the objects that carry it are looked at (None: not
    /// indexed).
    async fn indexed(&self, items: Items) -> Option<Page> {
        let (label, value) = self.sel.labels.required_label()?;
        if !crate::watch_cache::index_covers(self.prefix, label) {
            return None;
        }
        let listing = self.api.cache_for(self.prefix).indexed(self.prefix, label, value)?;
        Some(self.page(&listing, 0, items).await)
    }

    /// The first page of a list, its snapshot kept for the pages that follow (None: the cache holds no objects,
    /// its first read having failed).
    async fn first(&self, items: Items) -> Option<Page> {
        let cache = self.api.cache_for(self.prefix);
        let listing = cache.listing(self.prefix)?;
        let page = self.page(&listing, 0, items).await;
        if page.more {
            cache.keep(listing);
        }
        Some(page)
    }

    /// A page after the first, from the first page's snapshot when it is still kept (None: read the store at
    /// the token's revision).
    async fn continued(&self, revision: i64, after: &str, items: Items) -> Option<Page> {
        let listing = self.api.cache_for(self.prefix).kept(self.prefix, revision)?;
        Some(self.page(&listing, listing.after(after), items).await)
    }

    /// Up to `limit` selected objects of `listing` from its `from`th.
    async fn page(&self, listing: &crate::watch_cache::Listing, from: usize, items: Items) -> Page {
        let mut page = Page { items, more: false, remaining: 0, last_key: None, read_rev: listing.revision };
        for (i, ev) in listing.items.iter().enumerate().skip(from) {
            if self.limit > 0 && page.items.len() == self.limit {
                page.more = true;
                page.remaining = (listing.items.len() - i) as i64;
                break;
            }
            let obj = present(self.def, std::sync::Arc::unwrap_or_clone(ev.object()));
            if self.sel.matches(&obj) {
                page.items.push(obj);
            }
            page.last_key = Some(ev.key.clone());
            if i % 1000 == 999 {
                // A list of every VMI: the other requests on this thread go on meanwhile.
                tokio::task::yield_now().await;
            }
        }
        page
    }
}

/// Whether the watch cache of `prefix` has reached revision `rev` (None: the store's current one, so that what
/// it answers is as consistent as a read of the store), waiting up to 3 s.
pub(super) async fn cache_reached(
    api: &ApiServer,
    def: &ResourceDef,
    prefix: &str,
    rev: Option<i64>,
) -> Result<bool, ApiError> {
    let rev = match rev {
        Some(rev) => rev,
        None => api.objects.store_for(prefix).current_revision().await.map_err(|e| store_error(def, "", e))?,
    };
    Ok(api.cache_for(prefix).wait_for(rev, Duration::from_secs(3)).await)
}

/// A list read from the store: in pages until `limit` selected items are found.
#[allow(clippy::too_many_arguments)]
async fn scan(
    api: &ApiServer,
    def: &ResourceDef,
    call: &Call,
    sel: &Selectors,
    prefix: &str,
    limit: usize,
    mut revision: Option<i64>,
    mut start_after: Option<String>,
    mut items: Items,
) -> Result<Page, ApiError> {
    let (mut more, mut remaining, mut last_key) = (false, 0i64, None::<String>);
    // Counting what follows each page of a list of every Event (several a VMI, not in the watch cache) made
    // paging through them quadratic; remainingItemCount is optional.
    let counted = !crate::objects::is_event_key(prefix);
    let read_rev;
    loop {
        // With a selector, read in pages until `limit` matching items are found.
        let page = if limit == 0 { 0 } else { (limit - items.len()).max(if sel.is_empty() { 0 } else { 500 }) };
        let r = api
            .objects
            .store_for(prefix)
            .range(RangeRequest {
                prefix: prefix.to_string(),
                start_after: start_after.clone(),
                limit: page,
                revision,
                uncounted: !counted,
            })
            .await
            .map_err(|e| match e {
                kumo_store::Error::Compacted { .. } if call.query.get("continue").is_some() => ApiError::gone(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ),
                e => store_error(def, "", e),
            })?;
        revision = Some(r.revision);
        let read = r.kvs.len();
        // Taken one by one, so each stored value is dropped once encoded.
        for kv in r.kvs {
            if limit > 0 && items.len() == limit {
                more = true;
                break;
            }
            let obj = present(def, decode(&kv)?);
            if sel.matches(&obj) {
                items.push(obj);
            }
            last_key = Some(kv.key);
        }
        if limit > 0 && items.len() == limit && (r.more || more) {
            more = true;
            remaining =
                if counted && sel.is_empty() { r.remaining + (read as i64 - items.len() as i64).max(0) } else { 0 };
        }
        if !r.more || limit == 0 || more {
            read_rev = r.revision;
            break;
        }
        start_after = last_key.clone();
    }
    Ok(Page { items, more, remaining, last_key, read_rev })
}
