//! Manifest storage: manifests by digest, byte-identical with their media type, and the digest
//! each tag pointed at when it was last checked against the upstream.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::{StoreError, keys};
use crate::hashing::digest_of;
use crate::reference::{Digest, RepositoryName, Tag};

/// A manifest exactly as the upstream served it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedManifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

/// What a tag resolved to, and when the upstream last confirmed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    pub digest: String,
    pub media_type: String,
    /// Seconds since the Unix epoch.
    pub validated_at: u64,
}

impl TagRecord {
    pub fn new(manifest: &CachedManifest, now: SystemTime) -> Self {
        Self {
            digest: manifest.digest.to_string(),
            media_type: manifest.media_type.clone(),
            validated_at: unix_seconds(now),
        }
    }

    /// Whether the record is young enough to serve without asking the upstream.
    pub fn is_fresh(&self, freshness: Duration, now: SystemTime) -> bool {
        !freshness.is_zero() && unix_seconds(now).saturating_sub(self.validated_at) < freshness.as_secs()
    }
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// The stored form: the media type on the first line, then the manifest's bytes unchanged. One
/// object keeps the pair atomic.
pub fn encode_envelope(media_type: &str, bytes: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(media_type.len() + 1 + bytes.len());
    out.put_slice(media_type.as_bytes());
    out.put_u8(b'\n');
    out.put_slice(bytes);
    out.freeze()
}

/// Splits a stored envelope and checks its bytes against the digest it is stored under.
pub fn decode_envelope(digest: &Digest, envelope: Bytes) -> Result<CachedManifest, String> {
    let newline = envelope.iter().position(|b| *b == b'\n').ok_or("no media type line")?;
    let media_type = std::str::from_utf8(&envelope[..newline]).map_err(|_| "media type is not UTF-8")?.to_owned();
    let bytes = envelope.slice(newline + 1..);
    let actual = digest_of(digest.algorithm(), &bytes);
    if &actual != digest {
        return Err(format!("bytes hash to {actual}"));
    }
    Ok(CachedManifest { digest: digest.clone(), media_type, bytes })
}

/// Manifests and tags in the object store.
#[derive(Clone)]
pub struct ManifestStore {
    store: Arc<dyn ObjectStore>,
    upstream: String,
}

impl ManifestStore {
    /// `upstream` is the upstream's authority; tags are kept apart per upstream.
    pub fn new(store: Arc<dyn ObjectStore>, upstream: String) -> Self {
        Self { store, upstream }
    }

    /// A cached manifest. Its bytes are re-hashed on every read (manifests are small), so a
    /// damaged entry is dropped and refetched rather than served.
    pub async fn get(&self, digest: &Digest) -> Result<Option<CachedManifest>, StoreError> {
        let key = keys::manifest(digest);
        let envelope = match self.store.get(&key).await {
            Ok(result) => result.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match decode_envelope(digest, envelope) {
            Ok(manifest) => Ok(Some(manifest)),
            Err(reason) => {
                tracing::error!(%key, %reason, "corrupt cached manifest removed");
                self.store.delete(&key).await?;
                Ok(None)
            }
        }
    }

    /// Stores a manifest whose bytes the caller has verified against `manifest.digest`.
    pub async fn put(&self, manifest: &CachedManifest) -> Result<(), StoreError> {
        let envelope = encode_envelope(&manifest.media_type, &manifest.bytes);
        self.store.put(&keys::manifest(&manifest.digest), PutPayload::from_bytes(envelope)).await?;
        Ok(())
    }

    pub async fn get_tag(&self, repository: &RepositoryName, tag: &Tag) -> Result<Option<TagRecord>, StoreError> {
        let key = keys::tag(&self.upstream, repository, tag);
        let bytes = match self.store.get(&key).await {
            Ok(result) => result.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match serde_json::from_slice(&bytes) {
            Ok(record) => Ok(Some(record)),
            Err(e) => {
                tracing::error!(%key, error = %e, "unreadable tag record ignored");
                Ok(None)
            }
        }
    }

    pub async fn put_tag(&self, repository: &RepositoryName, tag: &Tag, record: &TagRecord) -> Result<(), StoreError> {
        let key = keys::tag(&self.upstream, repository, tag);
        let json = serde_json::to_vec(record).expect("tag record serializes");
        self.store.put(&key, PutPayload::from(json)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Algorithm;
    use object_store::memory::InMemory;

    fn manifest(body: &'static [u8]) -> CachedManifest {
        CachedManifest {
            digest: digest_of(Algorithm::Sha256, body),
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            bytes: Bytes::from_static(body),
        }
    }

    #[tokio::test]
    async fn manifests_round_trip_byte_identical() {
        let store = ManifestStore::new(Arc::new(InMemory::new()), "up:5000".into());
        let m = manifest(b"{\"schemaVersion\":2}\n  ");
        assert_eq!(store.get(&m.digest).await.unwrap(), None);
        store.put(&m).await.unwrap();
        assert_eq!(store.get(&m.digest).await.unwrap(), Some(m));
    }

    #[tokio::test]
    async fn corrupt_entries_are_dropped_not_served() {
        let raw = Arc::new(InMemory::new());
        let store = ManifestStore::new(raw.clone(), "up".into());
        let m = manifest(b"{}");
        raw.put(&keys::manifest(&m.digest), PutPayload::from_static(b"application/json\n{ }")).await.unwrap();
        assert_eq!(store.get(&m.digest).await.unwrap(), None);
        assert!(raw.head(&keys::manifest(&m.digest)).await.is_err(), "corrupt entry still stored");
    }

    #[tokio::test]
    async fn tags_are_kept_per_upstream() {
        let raw: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let a = ManifestStore::new(raw.clone(), "a:1".into());
        let b = ManifestStore::new(raw, "b:1".into());
        let repo = RepositoryName::parse("library/alpine").unwrap();
        let tag = Tag::parse("latest").unwrap();
        let record = TagRecord::new(&manifest(b"{}"), SystemTime::now());
        a.put_tag(&repo, &tag, &record).await.unwrap();
        assert_eq!(a.get_tag(&repo, &tag).await.unwrap(), Some(record));
        assert_eq!(b.get_tag(&repo, &tag).await.unwrap(), None);
    }

    #[test]
    fn freshness_zero_always_revalidates() {
        let now = SystemTime::now();
        let record = TagRecord { digest: String::new(), media_type: String::new(), validated_at: unix_seconds(now) };
        assert!(!record.is_fresh(Duration::ZERO, now));
        assert!(record.is_fresh(Duration::from_secs(60), now + Duration::from_secs(59)));
        assert!(!record.is_fresh(Duration::from_secs(60), now + Duration::from_secs(60)));
    }
}
