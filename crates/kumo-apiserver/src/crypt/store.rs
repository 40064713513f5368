//! [`EncryptedStore`]: encrypts the values of chosen keys on their way into any [`Store`] and decrypts them on
//! the way out, so every backend (embedded or etcd) holds Secrets sealed, and nothing above notices.

use super::config::{EncryptionConfig, Provider};
use futures::stream::{BoxStream, StreamExt};
use kumo_store::{Error, Event, KeyValue, RangeRequest, RangeResponse, Result, Store};
use std::sync::Arc;

/// The prefix of an encrypted value, as Kubernetes writes it: `k8s:enc:aesgcm:v1:{key name}:`.
const ENC_PREFIX: &[u8] = b"k8s:enc:";
const AESGCM: &str = "aesgcm:v1:";

pub struct EncryptedStore {
    inner: Arc<dyn Store>,
    config: EncryptionConfig,
}

impl EncryptedStore {
    pub fn new(inner: Arc<dyn Store>, config: EncryptionConfig) -> Self {
        EncryptedStore { inner, config }
    }

    fn seal(&self, key: &str, value: Vec<u8>) -> Vec<u8> {
        match self.config.rule_for(key).and_then(|r| r.providers.first()) {
            Some(Provider::AesGcm { name, key: k }) => {
                let mut out = format!("k8s:enc:{AESGCM}{name}:").into_bytes();
                out.extend(k.seal(&value, key.as_bytes()));
                out
            }
            Some(Provider::Identity) | None => value,
        }
    }

    fn open(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>> {
        let Some(rest) = value.strip_prefix(ENC_PREFIX) else { return Ok(value) };
        let undecryptable = |why: &str| Error::Backend(format!("the stored value of {key} cannot be decrypted: {why}"));
        let rest = rest.strip_prefix(AESGCM.as_bytes()).ok_or_else(|| undecryptable("unknown provider"))?;
        let colon = rest.iter().position(|b| *b == b':').ok_or_else(|| undecryptable("malformed"))?;
        let name = String::from_utf8_lossy(&rest[..colon]);
        // Any configured key of that name may read, so keys can be rotated by listing the old one second.
        let aead = self
            .config
            .rules
            .iter()
            .flat_map(|r| r.providers.iter())
            .find_map(|p| match p {
                Provider::AesGcm { name: n, key } if *n == name => Some(key),
                _ => None,
            })
            .ok_or_else(|| undecryptable(&format!("key {name:?} is not configured on this server")))?;
        aead.open(&rest[colon + 1..], key.as_bytes()).map_err(|e| undecryptable(&e))
    }

    fn open_kv(&self, mut kv: KeyValue) -> Result<KeyValue> {
        kv.value = self.open(&kv.key, std::mem::take(&mut kv.value))?;
        Ok(kv)
    }

    fn open_err(&self, e: Error) -> Error {
        match e {
            Error::Conflict { key, current } => match current.map(|c| self.open_kv(c)).transpose() {
                Ok(current) => Error::Conflict { key, current },
                Err(e) => e,
            },
            e => e,
        }
    }
}

#[async_trait::async_trait]
impl Store for EncryptedStore {
    async fn current_revision(&self) -> Result<i64> {
        self.inner.current_revision().await
    }

    async fn compacted_revision(&self) -> Result<i64> {
        self.inner.compacted_revision().await
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.inner.get(key).await?.map(|kv| self.open_kv(kv)).transpose()
    }

    fn write_failure(&self) -> Option<String> {
        self.inner.write_failure()
    }

    fn take_corrupt(&self) -> Vec<(String, String)> {
        self.inner.take_corrupt()
    }

    /// The inner store's own bytes: sealed values stay sealed in the snapshot.
    async fn snapshot(&self) -> Result<BoxStream<'static, Result<bytes::Bytes>>> {
        self.inner.snapshot().await
    }

    async fn get_serializable(&self, key: &str) -> Result<Option<KeyValue>> {
        self.inner.get_serializable(key).await?.map(|kv| self.open_kv(kv)).transpose()
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        let mut r = self.inner.range(req).await?;
        r.kvs = std::mem::take(&mut r.kvs).into_iter().map(|kv| self.open_kv(kv)).collect::<Result<_>>()?;
        Ok(r)
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        let mut kv = self.inner.create(key, self.seal(key, value.clone())).await.map_err(|e| self.open_err(e))?;
        kv.value = value;
        Ok(kv)
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected_revision: i64) -> Result<KeyValue> {
        let sealed = self.seal(key, value.clone());
        let mut kv = self.inner.update(key, sealed, expected_revision).await.map_err(|e| self.open_err(e))?;
        kv.value = value;
        Ok(kv)
    }

    async fn create_expiring(&self, key: &str, value: Vec<u8>, ttl: std::time::Duration) -> Result<KeyValue> {
        let sealed = self.seal(key, value.clone());
        let mut kv = self.inner.create_expiring(key, sealed, ttl).await.map_err(|e| self.open_err(e))?;
        kv.value = value;
        Ok(kv)
    }

    async fn update_expiring(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_revision: i64,
        ttl: std::time::Duration,
    ) -> Result<KeyValue> {
        let sealed = self.seal(key, value.clone());
        let mut kv =
            self.inner.update_expiring(key, sealed, expected_revision, ttl).await.map_err(|e| self.open_err(e))?;
        kv.value = value;
        Ok(kv)
    }

    async fn delete(&self, key: &str, expected_revision: Option<i64>) -> Result<KeyValue> {
        let kv = self.inner.delete(key, expected_revision).await.map_err(|e| self.open_err(e))?;
        self.open_kv(kv)
    }

    async fn watch(&self, prefix: &str, after_revision: i64) -> Result<BoxStream<'static, Result<Event>>> {
        let stream = self.inner.watch(prefix, after_revision).await?;
        let this = EncryptedStore { inner: self.inner.clone(), config: self.config.clone() };
        Ok(stream
            .map(move |item| {
                let mut ev = item?;
                ev.kv = this.open_kv(ev.kv)?;
                ev.prev = ev.prev.map(|p| this.open_kv(p)).transpose()?;
                Ok(ev)
            })
            .boxed())
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        self.inner.compact(revision).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypt::ClusterSecret;

    #[tokio::test]
    async fn secrets_are_sealed_in_the_backend_and_plain_above_it() {
        let dir = tempfile::tempdir().unwrap();
        let raw: Arc<dyn Store> = Arc::new(kumo_store::RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let secret = ClusterSecret::resolve(dir.path(), Some("0123456789abcdef0123")).unwrap();
        let store = EncryptedStore::new(raw.clone(), EncryptionConfig::from_cluster_secret(&secret));
        let (skey, ckey) = ("/registry/core/secrets/default/s", "/registry/core/configmaps/default/c");
        let body = br#"{"data":{"password":"aHVudGVyMg=="}}"#.to_vec();
        let kv = store.create(skey, body.clone()).await.unwrap();
        store.create(ckey, b"{}".to_vec()).await.unwrap();
        let stored = raw.get(skey).await.unwrap().unwrap().value;
        assert!(stored.starts_with(b"k8s:enc:aesgcm:v1:kumo-cluster-secret:"), "{}", String::from_utf8_lossy(&stored));
        assert!(!stored.windows(8).any(|w| w == b"aHVudGVy"), "the plaintext must not reach the backend");
        assert_eq!(raw.get(ckey).await.unwrap().unwrap().value, b"{}", "other kinds stay as they are");
        assert_eq!(store.get(skey).await.unwrap().unwrap().value, body);
        // A conflict reports the current value decrypted; a watch sees plaintext too.
        let mut w = store.watch("/registry/core/secrets/", 0).await.unwrap();
        match store.update(skey, b"{}".to_vec(), kv.mod_revision - 1).await {
            Err(Error::Conflict { current: Some(c), .. }) => assert_eq!(c.value, body),
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(w.next().await.unwrap().unwrap().kv.value, body);
        // A server without the key cannot read it, and says so.
        let other = ClusterSecret::resolve(dir.path(), Some("another-secret-entirely")).unwrap();
        let wrong = EncryptedStore::new(raw.clone(), EncryptionConfig::from_cluster_secret(&other));
        let err = wrong.get(skey).await.unwrap_err().to_string();
        assert!(err.contains("cannot be decrypted"), "{err}");
        // A value moved to another key does not decrypt (the key is authenticated).
        raw.create("/registry/core/secrets/default/moved", stored).await.unwrap();
        assert!(store.get("/registry/core/secrets/default/moved").await.is_err());
    }
}
