//! A small OCI Distribution client: manifests (OCI and Docker v2, indexes and manifest lists resolved to
//! linux/amd64) and blobs (streamed to a file, sha256 and size verified), anonymous bearer-token auth, and
//! per-registry mirrors tried before the origin.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode, Uri};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::reference::{Reference, DEFAULT_REGISTRY};
use super::transport;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST_V1: &str = "application/vnd.docker.distribution.manifest.v1";
const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// Where images come from: mirrors per registry host, and which hosts speak plain HTTP.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryConfig {
    /// Registry host as written in references (`quay.io`, `docker.io`) → mirror hosts, tried in order before
    /// the origin. A mirror is `host[:port]`, optionally prefixed with `http://` or `https://`; it serves the
    /// same repository paths as the registry it mirrors.
    #[serde(default)]
    pub mirrors: HashMap<String, Vec<String>>,
    /// Hosts (`host[:port]`, registries or mirrors) reached over plain HTTP instead of HTTPS.
    #[serde(default)]
    pub insecure: HashSet<String>,
}

/// One place a registry's content can be fetched from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `http://host:port` or `https://host`.
    pub base: String,
    /// `host[:port]`.
    pub host: String,
    /// The registry this endpoint mirrors, when it is a mirror.
    pub mirror_of: Option<String>,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.mirror_of {
            Some(origin) => write!(f, "{} (mirror of {origin})", self.host),
            None => write!(f, "{}", self.host),
        }
    }
}

impl RegistryConfig {
    /// The endpoints to try for `registry`, mirrors first, then the origin (`docker.io` is served by
    /// `registry-1.docker.io`).
    pub fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let endpoint = |spec: &str, mirror_of: Option<&str>| {
            let spec = spec.trim_end_matches('/');
            let (scheme, host) = match spec.split_once("://") {
                Some((scheme, host)) => (scheme.to_string(), host.to_string()),
                None if self.insecure.contains(spec) => ("http".to_string(), spec.to_string()),
                None => ("https".to_string(), spec.to_string()),
            };
            Endpoint { base: format!("{scheme}://{host}"), host, mirror_of: mirror_of.map(str::to_string) }
        };
        let mut out: Vec<Endpoint> =
            self.mirrors.get(registry).into_iter().flatten().map(|m| endpoint(m, Some(registry))).collect();
        let origin = if registry == DEFAULT_REGISTRY { "registry-1.docker.io" } else { registry };
        let mut origin = endpoint(origin, None);
        if self.insecure.contains(registry) {
            origin.base = format!("http://{}", origin.host);
        }
        out.push(origin);
        out
    }
}

/// A content descriptor (OCI image spec).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image manifest (OCI or Docker schema 2; the two are field-compatible).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    schema_version: u32,
    #[serde(default)]
    media_type: String,
    manifests: Option<Vec<Descriptor>>,
}

/// A resolved image: the endpoint that served it and its (platform-specific) manifest.
#[derive(Clone, Debug)]
pub struct Pulled {
    pub reference: Reference,
    pub endpoint: Endpoint,
    /// Digest of the image manifest (after resolving an index to linux/amd64): the identity of the content.
    pub digest: String,
    pub manifest: ImageManifest,
}

/// Distribution API client for one pull (bearer tokens are cached per endpoint and repository).
pub struct RegistryClient {
    cfg: RegistryConfig,
    tokens: Mutex<HashMap<(String, String), String>>,
}

impl RegistryClient {
    pub fn new(cfg: RegistryConfig) -> Self {
        RegistryClient { cfg, tokens: Mutex::new(HashMap::new()) }
    }

    /// Resolves `reference` to an image manifest, trying each endpoint in turn.
    pub async fn manifest(&self, reference: &Reference) -> Result<Pulled> {
        let mut failures = Vec::new();
        for endpoint in self.cfg.endpoints(&reference.registry) {
            match self.manifest_at(&endpoint, reference).await {
                Ok((digest, manifest)) => {
                    return Ok(Pulled { reference: reference.clone(), endpoint, digest, manifest });
                }
                Err(e) => {
                    tracing::debug!(%reference, %endpoint, error = %format!("{e:#}"), "manifest fetch failed");
                    failures.push(format!("{e:#} at {endpoint}"));
                }
            }
        }
        bail!("pulling {reference}: {}; configure a mirror or push the image", failures.join("; "))
    }

    async fn manifest_at(&self, ep: &Endpoint, r: &Reference) -> Result<(String, ImageManifest)> {
        let accept = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST].join(", ");
        let (body, content_type) = self.get_manifest(ep, &r.repository, r.object(), &accept).await?;
        let digest = sha256_digest(&body);
        if let Some(want) = &r.digest {
            if &digest != want {
                bail!("manifest digest mismatch: asked for {want}, got content hashing to {digest}");
            }
        }
        let probe: Probe = serde_json::from_slice(&body).context("manifest is not valid JSON")?;
        let media_type = if probe.media_type.is_empty() { content_type } else { probe.media_type.clone() };
        if probe.schema_version == 1 || media_type.starts_with(DOCKER_MANIFEST_V1) {
            bail!("Docker schema 1 manifests are not supported; re-push the image with a current tool");
        }
        let Some(manifests) = probe.manifests else {
            return Ok((digest, parse_image_manifest(&body)?));
        };
        // An index / manifest list: pick linux/amd64.
        let chosen = manifests
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == "amd64"))
            .ok_or_else(|| {
                let have: Vec<String> = manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref().map(|p| format!("{}/{}", p.os, p.architecture)))
                    .collect();
                anyhow!("image index has no linux/amd64 manifest (platforms: {})", have.join(", "))
            })?;
        let accept = [OCI_MANIFEST, DOCKER_MANIFEST].join(", ");
        let (body, _) = self.get_manifest(ep, &r.repository, &chosen.digest, &accept).await?;
        let got = sha256_digest(&body);
        if got != chosen.digest {
            bail!("manifest {} failed verification: content hashes to {got}", chosen.digest);
        }
        Ok((got, parse_image_manifest(&body)?))
    }

    async fn get_manifest(&self, ep: &Endpoint, repo: &str, object: &str, accept: &str) -> Result<(Bytes, String)> {
        let resp = self.get(ep, repo, &format!("manifests/{object}"), accept).await?;
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        Ok((transport::read_body(resp, MAX_MANIFEST_BYTES).await?, content_type))
    }

    /// Downloads blob `desc` into `dest` (created or truncated), verifying size and sha256 while streaming.
    /// The endpoint that served the manifest is tried first, then the others. On failure `dest` is removed.
    pub async fn blob_to_file(&self, pulled: &Pulled, desc: &Descriptor, dest: &Path) -> Result<()> {
        super::reference::parse_digest(&desc.digest).map_err(|e| anyhow!("layer descriptor: {e}"))?;
        let mut endpoints = vec![pulled.endpoint.clone()];
        endpoints.extend(self.cfg.endpoints(&pulled.reference.registry).into_iter().filter(|e| *e != pulled.endpoint));
        let mut failures = Vec::new();
        for ep in endpoints {
            match self.blob_at(&ep, &pulled.reference.repository, desc, dest).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let _ = tokio::fs::remove_file(dest).await;
                    failures.push(format!("{e:#} at {ep}"));
                }
            }
        }
        bail!("pulling {}: blob {}: {}", pulled.reference, desc.digest, failures.join("; "))
    }

    async fn blob_at(&self, ep: &Endpoint, repo: &str, desc: &Descriptor, dest: &Path) -> Result<()> {
        let resp = self.get(ep, repo, &format!("blobs/{}", desc.digest), "*/*").await?;
        let file = tokio::fs::File::create(dest).await.with_context(|| format!("creating {}", dest.display()))?;
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        let mut body = resp.into_body();
        while let Some(chunk) = transport::next_chunk(&mut body).await? {
            written += chunk.len() as u64;
            if written > desc.size {
                bail!("blob is larger than the {} bytes its descriptor declares", desc.size);
            }
            hasher.update(&chunk);
            out.write_all(&chunk).await.with_context(|| format!("writing {}", dest.display()))?;
        }
        out.flush().await?;
        let got = format!("sha256:{}", hex::encode(hasher.finalize()));
        if written != desc.size || got != desc.digest {
            bail!("digest mismatch: expected {} ({} bytes), received {got} ({written} bytes)", desc.digest, desc.size);
        }
        Ok(())
    }

    /// GET `/v2/<repo>/<path>`, answering one bearer challenge with an anonymous token. Non-2xx is an error
    /// carrying the registry's own message.
    async fn get(&self, ep: &Endpoint, repo: &str, path: &str, accept: &str) -> Result<Response<Incoming>> {
        let url: Uri = format!("{}/v2/{repo}/{path}", ep.base).parse().context("building registry URL")?;
        let key = (ep.base.clone(), repo.to_string());
        let mut retried = false;
        loop {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, HeaderValue::from_str(accept)?);
            if let Some(token) = self.tokens.lock().unwrap().get(&key) {
                headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}"))?);
            }
            let (_, resp) = transport::get(&url, &headers).await?;
            if resp.status().is_success() {
                return Ok(resp);
            }
            if resp.status() == StatusCode::UNAUTHORIZED && !retried {
                let challenge = resp.headers().get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok());
                if let Some(params) = challenge.and_then(parse_bearer_challenge) {
                    let token = fetch_token(&params, repo).await.context("getting an anonymous registry token")?;
                    self.tokens.lock().unwrap().insert(key.clone(), token);
                    retried = true;
                    continue;
                }
            }
            return Err(registry_error(resp).await);
        }
    }
}

fn parse_image_manifest(body: &[u8]) -> Result<ImageManifest> {
    let m: ImageManifest = serde_json::from_slice(body).context("parsing image manifest")?;
    if m.schema_version != 2 {
        bail!("unsupported manifest schemaVersion {}", m.schema_version);
    }
    Ok(m)
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Turns a non-2xx response into an error carrying the registry's message (`manifest unknown`).
async fn registry_error(resp: Response<Incoming>) -> anyhow::Error {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(Deserialize)]
    struct ErrorItem {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let status = resp.status();
    let basic = status == StatusCode::UNAUTHORIZED
        && resp
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("basic"));
    let body = transport::read_body(resp, 64 << 10).await.unwrap_or_default();
    let detail = serde_json::from_slice::<Errors>(&body).ok().and_then(|e| e.errors.into_iter().next()).map(|e| {
        if e.message.is_empty() {
            e.code.to_lowercase().replace('_', " ")
        } else {
            e.message
        }
    });
    let mut msg = match detail {
        Some(d) => format!("{d} (HTTP {})", status.as_u16()),
        None => format!("HTTP {status}"),
    };
    if basic {
        msg.push_str("; the registry wants basic-auth credentials, and kumo pulls anonymously");
    }
    anyhow!(msg)
}

/// Parameters of a `WWW-Authenticate: Bearer k="v",...` challenge, or `None` for other schemes.
pub(crate) fn parse_bearer_challenge(value: &str) -> Option<HashMap<String, String>> {
    let value = value.trim_start();
    if value.len() < 7 || !value[..7].eq_ignore_ascii_case("bearer ") {
        return None;
    }
    let mut params = HashMap::new();
    let mut rest = value[7..].trim_start();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (val, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            let mut val = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => val.extend(chars.next().map(|(_, c)| c)),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => val.push(c),
                }
            }
            (val, &quoted[end?..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.insert(key, val);
        rest = remainder.trim_start().trim_start_matches(',').trim_start();
    }
    params.contains_key("realm").then_some(params)
}

/// Anonymous token from the challenge's realm (Docker token auth).
async fn fetch_token(params: &HashMap<String, String>, repo: &str) -> Result<String> {
    #[derive(Deserialize)]
    struct Token {
        token: Option<String>,
        access_token: Option<String>,
    }
    let realm = &params["realm"];
    if !(realm.starts_with("https://") || realm.starts_with("http://")) {
        bail!("token realm {realm:?} is not an http(s) URL");
    }
    let scope = params.get("scope").cloned().unwrap_or_else(|| format!("repository:{repo}:pull"));
    let mut query = vec![format!("scope={}", encode(&scope))];
    if let Some(service) = params.get("service") {
        query.push(format!("service={}", encode(service)));
    }
    let sep = if realm.contains('?') { '&' } else { '?' };
    let url: Uri = format!("{realm}{sep}{}", query.join("&")).parse().context("building token URL")?;
    let (_, resp) = transport::get(&url, &HeaderMap::new()).await?;
    if !resp.status().is_success() {
        return Err(registry_error(resp).await.context(format!("token endpoint {realm}")));
    }
    let body = transport::read_body(resp, 1 << 20).await?;
    let t: Token = serde_json::from_slice(&body).context("token response is not JSON")?;
    t.token.or(t.access_token).filter(|t| !t.is_empty()).ok_or_else(|| anyhow!("token response has no token"))
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_try_mirrors_then_origin() {
        let cfg = RegistryConfig {
            mirrors: [("quay.io".to_string(), vec!["127.0.0.1:5000".to_string(), "https://m.example/".to_string()])]
                .into(),
            insecure: ["127.0.0.1:5000".to_string(), "reg.local:5000".to_string()].into(),
        };
        let eps = cfg.endpoints("quay.io");
        let bases: Vec<&str> = eps.iter().map(|e| e.base.as_str()).collect();
        assert_eq!(bases, ["http://127.0.0.1:5000", "https://m.example", "https://quay.io"]);
        assert_eq!(eps[0].to_string(), "127.0.0.1:5000 (mirror of quay.io)");
        assert_eq!(eps[2].to_string(), "quay.io");
        assert_eq!(cfg.endpoints("docker.io")[0].base, "https://registry-1.docker.io");
        assert_eq!(cfg.endpoints("reg.local:5000")[0].base, "http://reg.local:5000");
    }

    #[test]
    fn parses_bearer_challenges() {
        let p = parse_bearer_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#,
        )
        .unwrap();
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/alpine:pull,push");
        let p = parse_bearer_challenge(r#"bearer realm="https://q/t", service=quay.io"#).unwrap();
        assert_eq!(p["service"], "quay.io");
        assert!(parse_bearer_challenge(r#"Basic realm="x""#).is_none());
        assert!(parse_bearer_challenge(r#"Bearer service="x""#).is_none());
        assert_eq!(encode("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
    }
}
