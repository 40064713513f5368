//! Encoding responses: JSON or YAML by `Accept`, Table when asked, `metav1.Status` for errors.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use kumo_api::ApiError;
use serde_json::Value;
use std::convert::Infallible;

pub type Body = BoxBody<Bytes, Infallible>;
pub type Resp = Response<Body>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

/// How the client wants its answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Accept {
    pub table: bool,
    pub yaml: bool,
    /// Only protobuf was acceptable: answered with 406.
    pub protobuf_only: bool,
}

impl Accept {
    pub fn parse(h: Option<&str>) -> Self {
        let h = h.unwrap_or("");
        let mut a = Accept::default();
        let mut any_ok = h.trim().is_empty();
        for part in h.split(',').map(str::trim) {
            let media = part.split(';').next().unwrap_or("").trim();
            let params: Vec<&str> = part.split(';').skip(1).map(str::trim).collect();
            let as_table = params.contains(&"as=Table");
            match media {
                "application/json" | "*/*" | "application/*" if as_table && !a.yaml => {
                    a.table = true;
                    any_ok = true;
                }
                "application/json" | "*/*" | "application/*" => {
                    // Other `as=` targets (e.g. aggregated discovery) are answered with the plain form.
                    any_ok = true;
                }
                "application/yaml" if !as_table => {
                    if !any_ok {
                        a.yaml = true;
                    }
                    any_ok = true;
                }
                _ => {}
            }
        }
        a.protobuf_only = !any_ok && h.contains("protobuf");
        a
    }
}

pub fn json_response(code: StatusCode, v: &Value) -> Resp {
    json_bytes(code, serde_json::to_vec(v).unwrap_or_default())
}

/// A JSON answer already encoded.
pub fn json_bytes(code: StatusCode, body: Vec<u8>) -> Resp {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body))
        .expect("response")
}

pub fn encode(code: StatusCode, v: &Value, accept: &Accept) -> Resp {
    if accept.yaml {
        match serde_saphyr::to_string(v) {
            Ok(y) => {
                return Response::builder()
                    .status(code)
                    .header(header::CONTENT_TYPE, "application/yaml")
                    .body(full(y))
                    .expect("response")
            }
            Err(e) => return error(&ApiError::internal(format!("encoding YAML: {e}"))),
        }
    }
    json_response(code, v)
}

pub fn error(e: &ApiError) -> Resp {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = json_response(code, &e.to_status());
    if let Some(s) = e.retry_after_seconds {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

/// Adds `Warning: 299 - "..."` headers, which kubectl prints.
pub fn with_warnings(mut r: Resp, warnings: &[String]) -> Resp {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "'"));
        if let Ok(v) = HeaderValue::from_str(&text) {
            r.headers_mut().append(header::WARNING, v);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_accept_headers() {
        let get = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert!(Accept::parse(Some(get)).table);
        assert!(!Accept::parse(Some("application/json")).table);
        assert!(Accept::parse(Some("application/yaml")).yaml);
        assert!(!Accept::parse(Some("application/json, application/yaml")).yaml);
        assert!(Accept::parse(Some("application/vnd.kubernetes.protobuf")).protobuf_only);
        assert!(!Accept::parse(Some("application/vnd.kubernetes.protobuf, */*")).protobuf_only);
        let disco = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
        let a = Accept::parse(Some(disco));
        assert!(!a.table && !a.yaml);
    }
}
