//! The cluster secret (as k3s has its token): what a new API server replica needs, besides the store's
//! address, to join a cluster. Keys for the shared bootstrap data (CA, credentials) and, by default, for
//! Secrets at rest are derived from it.

use super::AeadKey;
use anyhow::{bail, Context, Result};
use ring::hkdf;
use std::path::{Path, PathBuf};

const FILE: &str = "cluster-secret";
const MIN_LEN: usize = 16;

pub struct ClusterSecret {
    secret: String,
    /// Where it is kept, when this server generated it and has not written it yet.
    unsaved: Option<PathBuf>,
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    /// The secret given by the operator, else the one in `data_dir`, else a new random one (written to
    /// `data_dir` by [`ClusterSecret::persist`] once the cluster it belongs to exists).
    pub fn resolve(data_dir: &Path, given: Option<&str>) -> Result<Self> {
        if let Some(s) = given {
            let s = s.trim();
            if s.len() < MIN_LEN {
                bail!("the cluster secret must be at least {MIN_LEN} characters (got {})", s.len());
            }
            return Ok(ClusterSecret { secret: s.to_string(), unsaved: None });
        }
        let path = data_dir.join(FILE);
        match std::fs::read_to_string(&path) {
            Ok(s) if s.trim().len() >= MIN_LEN => Ok(ClusterSecret { secret: s.trim().to_string(), unsaved: None }),
            Ok(_) => {
                bail!("{} is too short to be a cluster secret: remove it or pass --cluster-secret", path.display())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes: [u8; 32] = super::random_bytes();
                let secret = bytes.iter().map(|b| format!("{b:02x}")).collect();
                Ok(ClusterSecret { secret, unsaved: Some(path) })
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// True when this server made the secret up (there is no cluster yet, or the operator forgot to pass it).
    pub fn is_new(&self) -> bool {
        self.unsaved.is_some()
    }

    /// Writes a newly generated secret to the data directory (mode 0600).
    pub fn persist(&mut self) -> Result<()> {
        if let Some(path) = self.unsaved.take() {
            crate::tls::write_private(&path, &self.secret)?;
        }
        Ok(())
    }

    /// A 256-bit key for `purpose`, the same on every replica holding this secret.
    pub fn derive(&self, purpose: &str) -> AeadKey {
        struct Len;
        impl hkdf::KeyType for Len {
            fn len(&self) -> usize {
                32
            }
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"kumo cluster secret").extract(self.secret.as_bytes());
        let info = [purpose.as_bytes()];
        let okm = prk.expand(&info, Len).expect("32 bytes is a valid HKDF length");
        let mut key = [0u8; 32];
        okm.fill(&mut key).expect("32 bytes is a valid HKDF length");
        AeadKey::new(&key).expect("a 32-byte key")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_resolve_and_derive_stable_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ClusterSecret::resolve(dir.path(), None).unwrap();
        assert!(s.is_new());
        s.persist().unwrap();
        let again = ClusterSecret::resolve(dir.path(), None).unwrap();
        assert!(!again.is_new());
        let sealed = s.derive("pki").seal(b"x", b"k");
        assert_eq!(again.derive("pki").open(&sealed, b"k").unwrap(), b"x");
        assert!(again.derive("secrets").open(&sealed, b"k").is_err(), "purposes get different keys");
        let other = ClusterSecret::resolve(dir.path(), Some("another-secret-of-enough-length")).unwrap();
        assert!(other.derive("pki").open(&sealed, b"k").is_err());
        assert!(ClusterSecret::resolve(dir.path(), Some("short")).is_err());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
