//! Image references (`quay.io/kubevirt/cirros-container-disk-demo:v1.2`), parsed and normalised the way Docker,
//! containerd and KubeVirt do: a first path component is a registry host only if it contains `.` or `:` or is
//! `localhost`; otherwise the image lives on `docker.io`, where one-component names get `library/`; no tag and
//! no digest means `:latest`.

use std::fmt;
use std::str::FromStr;

/// The registry used when a reference names none.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag used when a reference has neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";

/// A parsed, normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host as written, with port if any (`quay.io`, `registry:5000`); `docker.io` by default.
    pub registry: String,
    /// Repository path inside the registry (`kubevirt/cirros-container-disk-demo`, `library/alpine`).
    pub repository: String,
    /// Tag; `None` only when a digest is given without one.
    pub tag: Option<String>,
    /// `sha256:<64 hex>`; when present it is what gets pulled (the tag is informational).
    pub digest: Option<String>,
}

/// Why a reference could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct ReferenceError {
    pub reference: String,
    pub reason: String,
}

impl Reference {
    /// Parses and normalises `s`.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let err = |reason: &str| ReferenceError { reference: s.to_string(), reason: reason.to_string() };
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s.len() > 4096 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err("contains whitespace or is too long"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((name, digest)) => (name, Some(parse_digest(digest).map_err(|r| err(&r))?)),
            None => (s, None),
        };
        // A tag follows the last ':' if that ':' comes after the last '/' (otherwise it is a registry port).
        let last_slash = rest.rfind('/');
        let (name, tag) = match rest.rfind(':') {
            Some(i) if last_slash.is_none_or(|j| i > j) => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(err("tag must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"));
            }
        }
        let (registry, repository) = split_registry(name);
        if registry.is_empty() || !valid_registry(&registry) {
            return Err(err("invalid registry host"));
        }
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_string()
        };
        if let Err(reason) = validate_repository(&repository) {
            return Err(err(&reason));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_string()),
        };
        Ok(Reference { registry, repository, tag, digest })
    }

    /// What goes after `/manifests/` in the Distribution API: the digest if known, else the tag.
    pub fn object(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or(DEFAULT_TAG)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

/// Validates a `sha256:<hex>` digest (the only algorithm the Distribution spec requires) and lowercases nothing:
/// digests are case-sensitive and must already be lowercase hex.
pub fn parse_digest(d: &str) -> Result<String, String> {
    let Some((algo, hex)) = d.split_once(':') else {
        return Err(format!("digest {d:?} must look like sha256:<64 hex digits>"));
    };
    if algo != "sha256" {
        return Err(format!("digest algorithm {algo:?} is not supported (only sha256)"));
    }
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(format!("digest {d:?} must look like sha256:<64 lowercase hex digits>"));
    }
    Ok(d.to_string())
}

fn split_registry(name: &str) -> (String, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            let registry = if first == "index.docker.io" { DEFAULT_REGISTRY } else { first };
            (registry.to_string(), rest)
        }
        _ => (DEFAULT_REGISTRY.to_string(), name),
    }
}

fn valid_registry(host: &str) -> bool {
    let (host, port) = match host.strip_prefix('[') {
        // IPv6 literal: [::1]:5000
        Some(v6) => match v6.split_once(']') {
            Some((addr, rest)) => {
                if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.') {
                    return false;
                }
                ("x", rest.strip_prefix(':'))
            }
            None => return false,
        },
        None => match host.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        },
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    port_ok && host_ok
}

/// Repository path components: lowercase alphanumerics separated by `.`, `_`, `__` or runs of `-`.
fn validate_repository(repo: &str) -> Result<(), String> {
    if repo.is_empty() || repo.len() > 255 {
        return Err("repository name must be 1-255 characters".into());
    }
    for comp in repo.split('/') {
        let b = comp.as_bytes();
        let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
            return Err(format!("repository component {comp:?} must start and end with a lowercase letter or digit"));
        }
        let mut i = 0;
        while i < b.len() {
            if alnum(b[i]) {
                i += 1;
                continue;
            }
            let sep_end = match b[i] {
                b'.' => i + 1,
                b'_' if b.get(i + 1) == Some(&b'_') => i + 2,
                b'_' => i + 1,
                b'-' => i + b[i..].iter().take_while(|&&c| c == b'-').count(),
                _ => return Err(format!("repository component {comp:?} has invalid character {:?}", b[i] as char)),
            };
            if !b.get(sep_end).copied().is_some_and(alnum) {
                return Err(format!("repository component {comp:?} has an invalid separator"));
            }
            i = sep_end;
        }
    }
    Ok(())
}

fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn p(s: &str) -> (String, String, Option<String>, Option<String>) {
        let r = Reference::parse(s).unwrap_or_else(|e| panic!("{e}"));
        (r.registry, r.repository, r.tag, r.digest)
    }

    fn owned(
        r: &str,
        repo: &str,
        tag: Option<&str>,
        digest: Option<&str>,
    ) -> (String, String, Option<String>, Option<String>) {
        (r.into(), repo.into(), tag.map(Into::into), digest.map(Into::into))
    }

    #[test]
    fn defaults_follow_docker() {
        assert_eq!(p("alpine"), owned("docker.io", "library/alpine", Some("latest"), None));
        assert_eq!(p("alpine:3.19"), owned("docker.io", "library/alpine", Some("3.19"), None));
        assert_eq!(p("kubevirt/virt-launcher"), owned("docker.io", "kubevirt/virt-launcher", Some("latest"), None));
        assert_eq!(p("docker.io/alpine"), owned("docker.io", "library/alpine", Some("latest"), None));
        assert_eq!(p("index.docker.io/library/alpine"), owned("docker.io", "library/alpine", Some("latest"), None));
    }

    #[test]
    fn registries_with_dots_ports_or_localhost() {
        assert_eq!(
            p("quay.io/kubevirt/cirros-container-disk-demo"),
            owned("quay.io", "kubevirt/cirros-container-disk-demo", Some("latest"), None)
        );
        assert_eq!(p("registry:5000/ns/img:tag"), owned("registry:5000", "ns/img", Some("tag"), None));
        assert_eq!(p("localhost/img"), owned("localhost", "img", Some("latest"), None));
        assert_eq!(p("127.0.0.1:5000/a/b/c:v1"), owned("127.0.0.1:5000", "a/b/c", Some("v1"), None));
        assert_eq!(p("[::1]:5000/img"), owned("[::1]:5000", "img", Some("latest"), None));
        // Without a dot, colon or "localhost" the first component is a namespace on docker.io.
        assert_eq!(p("registry/ns/img"), owned("docker.io", "registry/ns/img", Some("latest"), None));
    }

    #[test]
    fn digests() {
        assert_eq!(p(&format!("img@{D}")), owned("docker.io", "library/img", None, Some(D)));
        assert_eq!(p(&format!("quay.io/a/b:v1@{D}")), owned("quay.io", "a/b", Some("v1"), Some(D)));
        let r = Reference::parse(&format!("quay.io/a/b:v1@{D}")).unwrap();
        assert_eq!(r.object(), D);
        assert_eq!(r.to_string(), format!("quay.io/a/b:v1@{D}"));
        assert!(Reference::parse("img@sha256:abc").is_err());
        assert!(Reference::parse(&format!("img@sha512:{}", &D[7..])).unwrap_err().reason.contains("sha256"));
        assert!(Reference::parse(&format!("img@{}", D.to_uppercase().replace("SHA", "sha"))).is_err());
    }

    #[test]
    fn display_round_trips() {
        for s in ["docker.io/library/alpine:latest", "registry:5000/ns/img:tag", "quay.io/kubevirt/x:v1.2.3"] {
            assert_eq!(Reference::parse(s).unwrap().to_string(), s);
            assert_eq!(s.parse::<Reference>().unwrap().to_string(), s);
        }
        assert_eq!(Reference::parse("img").unwrap().to_string(), "docker.io/library/img:latest");
        assert_eq!(Reference::parse("quay.io/a/b:v2").unwrap().object(), "v2");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "Quay.io",
            "quay.io/UPPER",
            "img:",
            "img:-bad",
            "quay.io/a//b",
            "quay.io/a/b/",
            "/img",
            "quay.io/a b",
            "quay.io/a/.b",
            "quay.io/a/b_",
            "quay.io/a/b___c",
            "quay.io:port/a",
            "-bad.io/a",
            "img@",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        for good in ["a/b__c", "a/b-----c", "a.b/c_d.e-f", "quay.io/a/b:V_1.0-rc"] {
            assert!(Reference::parse(good).is_ok(), "{good:?} should be accepted");
        }
    }
}
