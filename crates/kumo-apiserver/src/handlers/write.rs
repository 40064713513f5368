//! create, update (PUT), patch (JSON, merge, strategic) and server-side apply over HTTP: parsing, patching and
//! retrying; the writes themselves are [`crate::rest`].

use super::{body, Call};
use crate::objects::{parse_rv, present};
use crate::response::{self, Resp};
use crate::rest::admission::{list_types, FieldValidation};
use crate::rest::{self, WriteOptions};
use crate::state::ApiServer;
use http::StatusCode;
use kumo_api::patch::{self, PatchType};
use kumo_api::{apply, meta, ApiError, ResourceDef};
use serde_json::{json, Value};

fn write_options(call: &Call) -> Result<WriteOptions, ApiError> {
    Ok(WriteOptions {
        fv: FieldValidation::parse(call.query.get("fieldValidation"))?,
        manager: call.manager(),
        dry_run: call.dry_run()?,
        warnings: vec![],
    })
}

fn respond(code: StatusCode, def: &ResourceDef, obj: Value, call: &Call, warnings: &[String]) -> Resp {
    response::with_warnings(response::encode(code, &present(def, obj), &call.accept), warnings)
}

pub async fn create(api: &ApiServer, def: &ResourceDef, call: &Call) -> Result<Resp, ApiError> {
    if call.path.subresource.is_some() {
        return Err(ApiError::method_not_allowed("create", &def.plural));
    }
    let mut opts = write_options(call)?;
    let mut obj = body::decode_object(call)?;
    if def.group == crate::upload::GROUP && def.kind == "UploadTokenRequest" {
        // A request, answered at once and never stored (as a TokenRequest).
        let out = crate::upload::token_request(&api.token, call.namespace().unwrap_or("default"), obj)?;
        return Ok(respond(StatusCode::CREATED, def, out, call, &opts.warnings));
    }
    if def.builtin == Some(kumo_api::resource::Builtin::CertificateSigningRequest) {
        crate::csr::admit(api, &call.user, &mut obj).await?;
    }
    let out = rest::create(api, def, call.namespace(), obj, &mut opts, None).await?;
    Ok(respond(StatusCode::CREATED, def, out, call, &opts.warnings))
}

pub async fn update(api: &ApiServer, def: &ResourceDef, call: &Call) -> Result<Resp, ApiError> {
    let mut opts = write_options(call)?;
    let mut obj = body::decode_object(call)?;
    let body_name = meta::name(&obj).to_string();
    if !body_name.is_empty() && body_name != call.name() {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({})",
            call.name()
        )));
    }
    meta::set_meta(&mut obj, "name", json!(call.name()));
    let want_rv = meta::resource_version(&obj).to_string();
    let want_rv = if want_rv.is_empty() { None } else { Some(parse_rv(&want_rv)?) };
    let sub = call.path.subresource.as_deref();
    let (ns, name) = (call.namespace(), call.name());
    // First on a guess at the version the client names (see `rest::current_guess`). A refused write (4xx:
    // nothing was written) or a no-op may be the guess's fault and is redone from an authoritative read; a
    // store failure is not retried, since the write may have happened.
    let guess = if opts.dry_run { None } else { rest::current_guess(api, def, ns, name, want_rv).await? };
    if let Some(current) = guess {
        let mut o = opts.clone();
        match rest::update(api, def, ns, &current, obj.clone(), sub, &mut o, false).await {
            Ok((out, true)) => return Ok(respond(StatusCode::OK, def, out, call, &o.warnings)),
            Err(e) if e.code >= 500 => return Err(e),
            _ => {}
        }
    }
    let current = api.objects.get(def, ns, name).await?;
    if let Some(rv) = want_rv {
        if rv != parse_rv(meta::resource_version(&current))? {
            return Err(ApiError::stale(&def.group, &def.plural, name));
        }
    }
    let (out, _) = rest::update(api, def, ns, &current, obj, sub, &mut opts, false).await?;
    Ok(respond(StatusCode::OK, def, out, call, &opts.warnings))
}

pub async fn patch(api: &ApiServer, def: &ResourceDef, call: &Call) -> Result<Resp, ApiError> {
    let ct = call.header("content-type").unwrap_or("");
    let pt = PatchType::from_content_type(ct).ok_or_else(|| {
        ApiError::unsupported_media_type(format!(
            "the media type {ct:?} is not a patch type: use application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json or application/apply-patch+yaml"
        ))
    })?;
    if pt == PatchType::Strategic && def.builtin.is_none() {
        return Err(ApiError::unsupported_media_type(
            "strategic merge patch is not supported for custom resources: use a merge patch (--type=merge) or a JSON patch",
        ));
    }
    let mut opts = write_options(call)?;
    let patch_doc = body::decode(call)?;
    let sub = call.path.subresource.clone();
    let force = call.query.flag("force");
    if pt != PatchType::Apply && force {
        return Err(ApiError::bad_request(
            "force is only allowed with server-side apply (application/apply-patch+yaml)",
        ));
    }
    if pt == PatchType::Apply && call.query.get("fieldManager").is_none() {
        return Err(ApiError::bad_request(
            "PATCH with application/apply-patch+yaml requires the fieldManager parameter",
        ));
    }
    let (now, api_version, lists, manager) =
        (meta::now_rfc3339(), def.api_version(), list_types(def), opts.manager.clone());
    let aopts = apply::ApplyOptions { manager: &manager, force, now: &now, api_version: &api_version, lists: &*lists };
    let p = Patch { def, call, pt, doc: &patch_doc, sub: sub.as_deref(), aopts: &aopts };
    // First on a guess; a refusal or no-op there is redone from an authoritative read (see `update`).
    let guess =
        if opts.dry_run { None } else { rest::current_guess(api, def, call.namespace(), call.name(), None).await? };
    if let Some(current) = guess {
        let mut o = opts.clone();
        match p.attempt(api, Some(current), &mut o, false).await {
            Ok(Attempt::Done(resp, true)) => return Ok(resp),
            Err(e) if e.code >= 500 => return Err(e),
            _ => {}
        }
    }
    // Retry on a concurrent write, as Kubernetes does for patches without a resourceVersion precondition.
    for attempt in 0..PATCH_ATTEMPTS {
        let current = api.objects.try_get(def, call.namespace(), call.name()).await?;
        match p.attempt(api, current, &mut opts, attempt + 1 < PATCH_ATTEMPTS).await {
            Ok(Attempt::Done(resp, _)) => return Ok(resp),
            Ok(Attempt::Conflict) => continue,
            Err(e) => {
                // Who meets conflicts (a client planning from a stale cache, or two writers racing): at scale
                // they cost a write and a read each.
                if e.code == 409 {
                    let (user, manager) = (call.user.name(), call.manager());
                    let (resource, sub) = (&call.path.resource, call.path.subresource.as_deref().unwrap_or(""));
                    tracing::debug!(%user, %manager, %resource, sub, name = call.name(), "patch refused: {}", e.message);
                }
                return Err(e);
            }
        }
    }
    Err(ApiError::stale(&def.group, &def.plural, call.name()))
}

/// One patch request, applied by [`Patch::attempt`] to a version of the object.
struct Patch<'a> {
    def: &'a ResourceDef,
    call: &'a Call,
    pt: PatchType,
    doc: &'a Value,
    sub: Option<&'a str>,
    aopts: &'a apply::ApplyOptions<'a>,
}

enum Attempt {
    /// The response, and whether anything was written.
    Done(Resp, bool),
    /// Someone else wrote first: apply the patch to the newer object.
    Conflict,
}

impl Patch<'_> {
    /// Patches `current` (absent: only an apply creates) and writes the result conditionally on its version.
    async fn attempt(
        &self,
        api: &ApiServer,
        current: Option<Value>,
        opts: &mut WriteOptions,
        may_retry: bool,
    ) -> Result<Attempt, ApiError> {
        let (def, call, pt, patch_doc, aopts) = (self.def, self.call, self.pt, self.doc, self.aopts);
        let current = match current {
            Some(c) => c,
            None if pt == PatchType::Apply && self.sub.is_none() => {
                check_apply_identity(def, call, patch_doc)?;
                let config = apply::apply(None, patch_doc, aopts)
                    .map_err(|e| e.to_api_error(&def.group, &def.kind, call.name()))?;
                let out = rest::create(api, def, call.namespace(), config, opts, Some("apply")).await?;
                return Ok(Attempt::Done(respond(StatusCode::CREATED, def, out, call, &opts.warnings), true));
            }
            None => return Err(ApiError::not_found(&def.group, &def.plural, call.name())),
        };
        let presented = present(def, current.clone());
        let new = match pt {
            PatchType::Json => patch::json_patch(&presented, patch_doc)?,
            PatchType::Merge => patch::merge_patch(&presented, patch_doc),
            PatchType::Strategic => patch::strategic::strategic_merge(&presented, patch_doc, &*list_types(def))
                .map_err(|e| ApiError::bad_request(format!("invalid strategic merge patch: {e}")))?,
            PatchType::Apply => {
                check_apply_identity(def, call, patch_doc)?;
                let mut cfg = patch_doc.clone();
                if self.sub == Some("status") {
                    // Applying to /status only touches status.
                    if let Some(m) = cfg.as_object_mut() {
                        m.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status"));
                    }
                }
                apply::apply(Some(&presented), &cfg, aopts)
                    .map_err(|e| e.to_api_error(&def.group, &def.kind, call.name()))?
            }
        };
        if !new.is_object() {
            return Err(ApiError::bad_request("the patch did not produce an object"));
        }
        let mut new = new;
        // Only a resourceVersion the patch itself names is a precondition: otherwise `new` just carries the one
        // of the object it was computed from, and a conflict means applying the patch to the newer object.
        let names_rv = match pt {
            PatchType::Json => patch_doc.as_array().is_some_and(|ops| ops.iter().any(|op| op["path"] == RV_PATH)),
            _ => patch_doc.pointer(RV_PATH).is_some_and(|v| !v.is_null()),
        };
        let precondition = if names_rv { meta::resource_version(&new).to_string() } else { String::new() };
        if !precondition.is_empty() && precondition != meta::resource_version(&current) {
            return Err(ApiError::stale(&def.group, &def.plural, call.name()));
        }
        if meta::name(&new) != call.name() {
            return Err(ApiError::invalid(
                &def.group,
                &def.kind,
                call.name(),
                vec![kumo_api::Cause::invalid("metadata.name", "field is immutable")],
            ));
        }
        meta::set_meta(&mut new, "resourceVersion", json!(meta::resource_version(&current)));
        let may_retry = precondition.is_empty() && may_retry;
        match rest::update(api, def, call.namespace(), &current, new, self.sub, opts, pt == PatchType::Apply).await {
            Ok((out, changed)) => Ok(Attempt::Done(respond(StatusCode::OK, def, out, call, &opts.warnings), changed)),
            Err(e) if e.code == 409 && e.reason == "Conflict" && may_retry => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }
}

const RV_PATH: &str = "/metadata/resourceVersion";
/// Tries of a patch without a precondition against concurrent writers: each loses only to a write that
/// succeeded, so running out takes a crowd writing one object at once.
const PATCH_ATTEMPTS: usize = 32;

/// An applied configuration must name the object being patched and its kind.
fn check_apply_identity(def: &ResourceDef, call: &Call, config: &Value) -> Result<(), ApiError> {
    if !config.is_object() {
        return Err(ApiError::bad_request("the applied configuration must be an object"));
    }
    let name = meta::name(config);
    if name != call.name() {
        return Err(ApiError::bad_request(format!(
            "the name of the applied configuration ({name:?}) does not match the name on the URL ({:?})",
            call.name()
        )));
    }
    for (field, want) in [("apiVersion", def.api_version()), ("kind", def.kind.clone())] {
        match config.get(field).and_then(Value::as_str) {
            Some(v) if v == want => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "the applied configuration must set {field}: {want} (got {other:?})"
                )))
            }
        }
    }
    Ok(())
}
