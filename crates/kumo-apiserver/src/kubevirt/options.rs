//! The bodies of KubeVirt's action subresources (StartOptions, StopOptions, RestartOptions, PauseOptions,
//! UnpauseOptions, AddVolumeOptions, RemoveVolumeOptions), read against KubeVirt's published definitions: a
//! property the definition does not have is refused by name, and so is one kumo cannot honour; `dryRun`
//! checks everything and writes nothing, as in Kubernetes.

use kumo_api::kubevirt::published;
use kumo_api::ApiError;
use serde_json::{Map, Value};

/// A body read: its properties (kind, apiVersion and dryRun taken out) and whether it is a dry run.
#[derive(Debug, Default, PartialEq)]
pub struct Options {
    pub dry_run: bool,
    pub fields: Map<String, Value>,
}

/// The published definition of the body of `sub`.
pub fn definition_of(sub: &str) -> Option<&'static str> {
    Some(match sub {
        "start" => "v1.StartOptions",
        "stop" => "v1.StopOptions",
        "restart" => "v1.RestartOptions",
        "pause" => "v1.PauseOptions",
        "unpause" => "v1.UnpauseOptions",
        "addvolume" => "v1.AddVolumeOptions",
        "removevolume" => "v1.RemoveVolumeOptions",
        _ => return None,
    })
}

/// Reads the body of `sub` (empty is `{}`).
pub fn read(sub: &str, body: &[u8]) -> Result<Options, ApiError> {
    let def = definition_of(sub).ok_or_else(|| ApiError::internal(format!("{sub} takes no options")))?;
    let short = def.trim_start_matches("v1.");
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Options::default());
    }
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("reading the {short}: {e}")))?;
    let Value::Object(mut fields) = v else {
        return Err(ApiError::bad_request(format!("the body must be a {short} object")));
    };
    // Go clients omit empty fields, but a null is as good as absent.
    fields.retain(|_, v| !v.is_null());
    for (k, v) in &fields {
        match published::property_mismatches(def, k, v) {
            None => return Err(ApiError::bad_request(format!("{short}: unknown field \"{k}\""))),
            Some(wrong) if !wrong.is_empty() => return Err(ApiError::bad_request(wrong.join("; "))),
            Some(_) => {}
        }
    }
    fields.remove("kind");
    fields.remove("apiVersion");
    let dry_run = match fields.remove("dryRun") {
        None => false,
        Some(Value::Array(a)) if a.is_empty() => false,
        Some(Value::Array(a)) if a == [Value::from("All")] => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!("{short}.dryRun: only [\"All\"] is supported, got {other}")))
        }
    };
    Ok(Options { dry_run, fields })
}

/// The grace period a stop or restart asks for (`gracePeriod`, `gracePeriodSeconds`), in seconds.
pub fn grace_period(sub: &str, o: &Options) -> Result<Option<u64>, ApiError> {
    let key = if sub == "restart" { "gracePeriodSeconds" } else { "gracePeriod" };
    match o.fields.get(key) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            ApiError::bad_request(format!("{}.{key}: must not be negative", definition_of(sub).unwrap_or(sub)))
        }),
    }
}

/// StartOptions' `paused`: kumo cannot start a guest paused yet, so `true` is refused rather than ignored.
pub fn refuse_paused_start(o: &Options) -> Result<(), ApiError> {
    if o.fields.get("paused") == Some(&Value::Bool(true)) {
        return Err(ApiError::new(
            422,
            "Invalid",
            "StartOptions.paused: kumo cannot start a VM paused yet; start it, then pause it",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A value of a published property's type.
    fn sample(type_: &str) -> Value {
        match type_ {
            "string" => json!("x"),
            "integer" => json!(5),
            "boolean" => json!(false),
            "[string]" => json!(["All"]),
            _ => json!({}),
        }
    }

    #[test]
    fn every_published_property_is_taken_and_nothing_else() {
        for sub in ["start", "stop", "restart", "pause", "unpause", "addvolume", "removevolume"] {
            let def = definition_of(sub).unwrap();
            let (props, _) = published::definition(def).expect("published");
            let body: Map<String, Value> = props.iter().map(|p| (p.name.to_string(), sample(p.type_))).collect();
            let o = read(sub, Value::Object(body).to_string().as_bytes())
                .unwrap_or_else(|e| panic!("{sub} refused its published body: {e:?}"));
            assert!(o.dry_run, "{sub}: dryRun [\"All\"] is a dry run");
            let e = read(sub, br#"{"bogus": 1}"#).unwrap_err();
            assert!(e.message.contains("unknown field \"bogus\""), "{sub}: {e:?}");
        }
        assert_eq!(read("stop", b"").unwrap(), Options::default());
        let e = read("stop", br#"{"gracePeriod": "soon"}"#).unwrap_err();
        assert!(e.message.contains("StopOptions.gracePeriod: expected integer"), "{e:?}");
        let e = read("pause", br#"{"dryRun": ["Some"]}"#).unwrap_err();
        assert!(e.message.contains("dryRun"), "{e:?}");
        let o = read("restart", br#"{"gracePeriodSeconds": 0}"#).unwrap();
        assert_eq!(grace_period("restart", &o).unwrap(), Some(0));
        assert!(grace_period("stop", &read("stop", br#"{"gracePeriod": -1}"#).unwrap()).is_err());
        assert!(refuse_paused_start(&read("start", br#"{"paused": true}"#).unwrap()).is_err());
        assert!(refuse_paused_start(&read("start", br#"{"paused": false}"#).unwrap()).is_ok());
    }
}
