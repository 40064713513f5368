//! Request dispatch and the verbs, generic over kinds.
//!
//! `dispatch` authenticates, resolves the path to discovery, OpenAPI or a [`ResourceDef`], and calls the
//! verb: [`read`] (get, list), [`watch`], [`write`] (create, update, patch, apply), [`delete`]. Handlers parse
//! and respond; what a write does to an object is the REST layer's ([`crate::rest`]).

pub mod body;
pub mod delete;
pub mod read;
pub mod scale;
pub mod watch;
pub mod write;

use crate::auth::{self, Attributes, User};
use crate::request::{parse_path, Query, ResourcePath, Target};
use crate::response::{self, Accept, Resp};
use crate::state::ApiServer;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use kumo_api::{ApiError, ResourceDef};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// One API request, parsed.
pub struct Call {
    pub method: Method,
    pub path: ResourcePath,
    pub query: Query,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub accept: Accept,
    /// Who is asking (authenticated).
    pub user: User,
}

impl Call {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn namespace(&self) -> Option<&str> {
        self.path.namespace.as_deref()
    }
    pub fn name(&self) -> &str {
        self.path.name.as_deref().unwrap_or("")
    }
    /// The field manager: `fieldManager` or, as Kubernetes does, the user agent's program name.
    pub fn manager(&self) -> String {
        if let Some(m) = self.query.get("fieldManager") {
            return m.to_string();
        }
        let ua = self.header("user-agent").unwrap_or("unknown");
        ua.split('/').next().unwrap_or("unknown").to_string()
    }
    pub fn dry_run(&self) -> Result<bool, ApiError> {
        match self.query.0.get("dryRun").map(String::as_str) {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(other) => {
                Err(ApiError::bad_request(format!("unsupported dryRun value {other:?}: only \"All\" is supported")))
            }
        }
    }
}

const MAX_BODY: usize = 3 * 1024 * 1024;

/// Serves one request; `cert_user` is who the connection's verified client certificate names, if any.
pub async fn dispatch(api: Arc<ApiServer>, req: Request<hyper::body::Incoming>, cert_user: Option<User>) -> Resp {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = Query::parse(parts.uri.query());
    let accept = Accept::parse(parts.headers.get(http::header::ACCEPT).and_then(|v| v.to_str().ok()));
    match path.as_str() {
        "/healthz" | "/livez" => return plain("ok".into()),
        // Ready means able to serve: the store answers. Node agents use this to tell a control-plane outage
        // (every replica without its store) from their own isolation (see kumo_agent::fence).
        "/readyz" => return readyz(&api, query.0.contains_key("verbose")).await,
        "/version" => return response::json_response(StatusCode::OK, &crate::discovery::version()),
        _ => {}
    }
    if crate::ui::owns(&path) {
        // The console's files are public, as a login page is; its data comes through the API with a token.
        return crate::ui::serve(&path);
    }
    if path.starts_with(crate::upload::PREFIX) {
        // The upload proxy takes its own bearer tokens (UploadTokenRequest), not API credentials.
        return crate::upload::serve(&api, Request::from_parts(parts, body)).await;
    }
    let user = authenticate(&api, &parts.headers, cert_user).await.unwrap_or(User::Anonymous);
    let anonymous = user == User::Anonymous;
    if anonymous && !path.starts_with("/api/v1/namespaces/kube-public/configmaps/cluster-info") {
        return response::error(&ApiError::unauthorized());
    }
    // Everything past health checks waits for a seat of its priority level (or is refused, 429).
    let target = parse_path(&path);
    let who = (user.name(), user.groups());
    let admitted = match api.flowcontrol.admit(&digest(&who, &parts.method, &path, &query, target.as_ref())).await {
        Ok(a) => a,
        Err(refused) => {
            api.metrics.flow_rejected(&refused.class, refused.rejection.reason());
            return response::error(&ApiError::too_many_requests("too many requests, please try again later", 1));
        }
    };
    let call = Incoming { parts, body, path, query, accept, user };
    let mut resp = serve(&api, call, target).await;
    let headers = resp.headers_mut();
    for (name, uid) in [(PF_SCHEMA_HEADER, &admitted.flow_schema_uid), (PF_LEVEL_HEADER, &admitted.priority_level_uid)]
    {
        if let Ok(v) = http::HeaderValue::from_str(uid) {
            headers.insert(name, v);
        }
    }
    drop(admitted);
    resp
}

/// Response headers naming the FlowSchema and priority level a request was served under, as Kubernetes sets.
const PF_SCHEMA_HEADER: &str = "x-kubernetes-pf-flowschema-uid";
const PF_LEVEL_HEADER: &str = "x-kubernetes-pf-prioritylevel-uid";

/// What API Priority and Fairness classifies a request by.
fn digest<'a>(
    (user, groups): &'a (String, Vec<&'static str>),
    method: &Method,
    path: &'a str,
    query: &Query,
    target: Option<&'a Target>,
) -> kumo_api::flowcontrol::RequestDigest<'a> {
    let base = kumo_api::flowcontrol::RequestDigest { user, groups, verb: "get", path, ..Default::default() };
    match target {
        Some(Target::Resource(p)) => kumo_api::flowcontrol::RequestDigest {
            verb: verb_of(method, p, query),
            is_resource: true,
            api_group: &p.group,
            resource: &p.resource,
            subresource: p.subresource.as_deref(),
            namespace: p.namespace.as_deref(),
            ..base
        },
        // Discovery, OpenAPI, metrics: non-resource requests.
        _ => kumo_api::flowcontrol::RequestDigest { verb: non_resource_verb(method), ..base },
    }
}

fn non_resource_verb(method: &Method) -> &'static str {
    match *method {
        Method::GET | Method::HEAD => "get",
        Method::POST => "post",
        Method::PUT => "put",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "unknown",
    }
}

/// A request, authenticated, before it is parsed further.
struct Incoming {
    parts: http::request::Parts,
    body: hyper::body::Incoming,
    path: String,
    query: Query,
    accept: Accept,
    user: User,
}

/// A request that has its seat: authorized and served.
async fn serve(api: &Arc<ApiServer>, call: Incoming, target: Option<Target>) -> Resp {
    let Incoming { parts, body, path, query, accept, user } = call;
    if path == "/metrics" {
        if user != User::Admin {
            return response::error(&ApiError::forbidden(format!("User \"{}\" cannot get /metrics", user.name())));
        }
        let mut r = plain(crate::metrics::scrape(api).await);
        r.headers_mut()
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE));
        return r;
    }
    if path == crate::snapshot::PATH {
        return crate::snapshot::serve(api, &user, &parts.method).await;
    }
    if path == "/openapi/v2" {
        return crate::openapi_v2::serve(api, &parts.headers);
    }
    if path == "/openapi/v3" || path.starts_with("/openapi/v3/") {
        return crate::openapi::serve(api, &path);
    }
    let target = match target {
        Some(t) => t,
        None => return response::error(&ApiError::path_not_found(&path)),
    };
    let rpath = match target {
        Target::Resource(p) => p,
        other => return crate::discovery::serve(api, &other),
    };
    if rpath.is_node_proxy() {
        if user != User::Admin {
            return response::error(&ApiError::forbidden(format!("User \"{}\" cannot proxy to nodes", user.name())));
        }
        return crate::nodes::proxy(api, &parts.method, &rpath).await;
    }
    if rpath.group == crate::kubevirt::GROUP && user != User::Admin {
        // VM verbs and consoles are for people (and their tools), not for node credentials.
        let why = format!("User \"{}\" cannot use {}", user.name(), crate::kubevirt::GROUP);
        return response::error(&ApiError::forbidden(why));
    }
    if crate::kubevirt::is_stream(&rpath) {
        // A WebSocket upgrade, proxied to the node: the body stays unread.
        return crate::kubevirt::stream::proxy(api, Request::from_parts(parts, body), rpath).await;
    }
    if accept.protobuf_only {
        return response::error(&ApiError::not_acceptable("only application/json and application/yaml are served"));
    }
    let body = if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE) {
        match http_body_util::Limited::new(body, MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return response::error(&ApiError::too_large("the request body is larger than 3 MiB")),
        }
    } else {
        Bytes::new()
    };
    let call = Call { method: parts.method, path: rpath, query, headers: parts.headers, body, accept, user };
    let started = std::time::Instant::now();
    let mut labels = request_labels(api, &call);
    let resp = match auth::check(api, &call.user, &attributes(&call), &call.body).await {
        Err(e) => response::error(&e),
        Ok(()) => match route(api, call).await {
            Ok(r) => r,
            Err(e) => response::error(&e),
        },
    };
    labels.code = resp.status().as_u16().to_string();
    api.metrics.observe(labels, started.elapsed());
    resp
}

/// What the request metrics count a request by (its code is filled in once served). A path kumo does not
/// serve counts as "unknown": labels taken from any URL would let a client grow the metrics without end.
fn request_labels(api: &ApiServer, call: &Call) -> crate::metrics::RequestLabels {
    let a = attributes(call);
    let p = &call.path;
    let sub = p.subresource.as_deref();
    let served = if p.group == crate::kubevirt::GROUP {
        crate::kubevirt::serves(&p.resource, sub.unwrap_or(""))
    } else {
        api.registry.get(&p.group, &p.version, &p.resource).is_some()
            && matches!(sub, None | Some("status" | "scale" | "finalize"))
    };
    let unknown = || "unknown".to_string();
    crate::metrics::RequestLabels {
        verb: a.verb.to_string(),
        group: if served { a.group.to_string() } else { unknown() },
        version: if served { p.version.clone() } else { unknown() },
        resource: if served { a.resource.to_string() } else { unknown() },
        subresource: if served { sub.unwrap_or_default().to_string() } else { unknown() },
        code: String::new(),
    }
}

/// Ready means the store answers and takes writes. `?verbose` lists each check, as Kubernetes does.
async fn readyz(api: &ApiServer, verbose: bool) -> Resp {
    async fn reach(store: &dyn kumo_store::Store) -> Option<String> {
        match tokio::time::timeout(Duration::from_secs(3), store.current_revision()).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("no answer in 3s".to_string()),
        }
    }
    let writes = |store: &dyn kumo_store::Store| store.write_failure().map(|why| format!("writes are failing: {why}"));
    let (store, events) = (&*api.objects.store, &*api.objects.events);
    // (name, failure, whether it makes the server unready). A failing events store of its own is listed but
    // leaves the server ready: everything else is still served (agents read unready as "the store is down").
    let mut checks = vec![("store", reach(store).await, true), ("store-writes", writes(store), true)];
    if api.objects.events_apart() {
        checks.push(("events-store", reach(events).await, false));
        checks.push(("events-store-writes", writes(events), false));
    }
    let failed: Vec<String> = checks.iter().filter(|c| c.2).filter_map(|c| c.1.clone()).collect();
    let lines = || -> String {
        checks
            .iter()
            .map(|(name, f, _)| match f {
                None => format!("[+]{name} ok\n"),
                Some(why) => format!("[-]{name} failed: {why}\n"),
            })
            .collect()
    };
    if failed.is_empty() {
        if !verbose {
            return plain("ok".into());
        }
        return plain(format!("{}readyz check passed\n", lines()));
    }
    // Agents look for STORE_DOWN: a control plane that cannot write cannot renew their Leases either.
    let mut message = format!("{STORE_DOWN}: {}", failed.join("; "));
    if verbose {
        message = format!("{}readyz check failed: {message}", lines());
    }
    response::error(&ApiError::unavailable(message))
}

/// How `/readyz` says the store is out of reach (node agents look for it).
pub const STORE_DOWN: &str = "storage is unavailable";

fn plain(s: String) -> Resp {
    http::Response::builder()
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(response::full(s))
        .expect("response")
}

/// Who is calling: the client certificate's identity, else the bearer token's.
async fn authenticate(api: &ApiServer, headers: &http::HeaderMap, cert_user: Option<User>) -> Option<User> {
    if cert_user.is_some() {
        return cert_user;
    }
    let token = match headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        Some(auth) => auth.strip_prefix("Bearer ").or_else(|| auth.strip_prefix("bearer "))?.to_string(),
        None => websocket_bearer(headers)?,
    };
    auth::user_from_token(api, token.trim()).await
}

/// Kubernetes' WebSocket subprotocol carrying a bearer token, for browsers, which cannot set headers on a
/// WebSocket: `base64url.bearer.authorization.k8s.io.<token in unpadded base64url>`.
pub const WS_BEARER_PREFIX: &str = "base64url.bearer.authorization.k8s.io.";

fn websocket_bearer(headers: &http::HeaderMap) -> Option<String> {
    use base64::Engine;
    let offered = headers.get("sec-websocket-protocol")?.to_str().ok()?;
    let encoded = offered.split(',').find_map(|p| p.trim().strip_prefix(WS_BEARER_PREFIX))?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded.trim_end_matches('=')).ok()?;
    String::from_utf8(raw).ok()
}

/// The Kubernetes verb of a resource request.
fn verb_of(method: &Method, p: &ResourcePath, query: &Query) -> &'static str {
    let named = p.name.is_some();
    match *method {
        Method::GET if named => "get",
        Method::GET if query.flag("watch") || p.legacy_watch => "watch",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "unknown",
    }
}

/// The request as the authorizer sees it.
fn attributes(call: &Call) -> Attributes<'_> {
    let p = &call.path;
    Attributes {
        verb: verb_of(&call.method, p, &call.query),
        group: &p.group,
        resource: &p.resource,
        subresource: p.subresource.as_deref(),
        namespace: p.namespace.as_deref(),
        name: p.name.as_deref(),
        label_selector: call.query.get("labelSelector"),
    }
}

async fn route(api: &Arc<ApiServer>, call: Call) -> Result<Resp, ApiError> {
    let p = &call.path;
    if p.group == crate::kubevirt::GROUP {
        return crate::kubevirt::serve(api, &call).await;
    }
    if p.group.is_empty() && p.resource == "pods" {
        // `kubectl drain` lists and evicts pods; kumo has none, and must not let it report a node drained
        // while VMs still run there.
        return Err(ApiError::new(
            404,
            "NotFound",
            "kumo runs virtual machines, not pods: to move the VMs off a node run `kumo drain NODE` (the node is cordoned)",
        ));
    }
    let def = api
        .registry
        .get(&p.group, &p.version, &p.resource)
        .ok_or_else(|| ApiError::path_not_found(&format!("{}/{} {}", p.group, p.version, p.resource)))?;
    if p.namespace.is_some() && !def.namespaced {
        return Err(ApiError::path_not_found(&format!("{} is not namespaced", def.plural)));
    }
    let sub = p.subresource.as_deref();
    match sub {
        None => {}
        Some("status") if def.status_subresource => {}
        Some("scale") if def.scale.is_some() => {}
        Some("finalize") if def.kind == "Namespace" => {}
        Some(s) => return Err(ApiError::path_not_found(&format!("{}/{s}", def.plural))),
    }
    let watching = call.query.flag("watch") || p.legacy_watch;
    match (call.method.clone(), p.name.is_some()) {
        (Method::GET, true) if sub == Some("scale") => scale::get(api, &def, &call).await,
        (Method::GET, true) => read::get(api, &def, &call).await,
        (Method::GET, false) if watching => watch::watch(api.clone(), def, &call).await,
        (Method::GET, false) => read::list(api, &def, &call).await,
        (Method::POST, false) => write::create(api, &def, &call).await,
        (Method::PUT, true) if sub == Some("scale") => scale::update(api, &def, &call).await,
        (Method::PUT, true) => write::update(api, &def, &call).await,
        (Method::PATCH, true) if sub == Some("scale") => scale::patch(api, &def, &call).await,
        (Method::PATCH, true) => write::patch(api, &def, &call).await,
        (Method::DELETE, true) => delete::delete(api, &def, &call).await,
        (Method::DELETE, false) => delete::delete_collection(api, &def, &call).await,
        (m, _) => Err(ApiError::method_not_allowed(m.as_str(), &def.plural)),
    }
}

/// `{"kind": "...List", ...}` around items.
pub fn list_object(def: &ResourceDef, items: Vec<Value>, meta: Value) -> Value {
    json!({"kind": def.list_kind, "apiVersion": def.api_version(), "metadata": meta, "items": items})
}
