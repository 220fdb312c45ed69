//! The registry service: for each manifest or blob request, decide between the cache and the
//! upstream — revalidating tags, serving stale tags when the upstream cannot answer, and sharing
//! blob downloads between clients.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::HeaderValue;
use bytes::Bytes;
use futures::FutureExt;
use futures::stream::{BoxStream, StreamExt};

use crate::cache::{BlobStore, CachedManifest, ManifestStore, TagRecord};
use crate::coalesce::Coalescer;
use crate::error::RegistryError;
use crate::fetch::{FetchError, Fetcher};
use crate::hashing::digest_of;
use crate::metrics::{Kind, Metrics};
use crate::range::ByteRange;
use crate::reference::{Algorithm, Digest, Reference, RepositoryName, Tag};
use crate::upstream::client::DEFAULT_MANIFEST_ACCEPT;
use crate::upstream::{ManifestBody, UpstreamClient, UpstreamError};

/// A manifest to send: always its exact bytes, headers derived from them.
#[derive(Debug, Clone)]
pub struct ManifestReply {
    pub manifest: CachedManifest,
}

/// A blob to send.
pub struct BlobReply {
    /// The whole blob's size, when known (unknown only while streaming a chunked upstream answer).
    pub size: Option<u64>,
    /// Set for a 206 answer: the range the body covers.
    pub range: Option<Range<u64>>,
    /// `None` for HEAD.
    pub body: Option<BoxStream<'static, Result<Bytes, std::io::Error>>>,
}

/// Whether a request wants the body or only the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
}

type ManifestResult = Result<CachedManifest, RegistryError>;

pub struct RegistryService {
    upstream: Arc<UpstreamClient>,
    blobs: BlobStore,
    manifests: ManifestStore,
    fetcher: Arc<Fetcher>,
    metrics: Arc<Metrics>,
    freshness: Duration,
    /// Tag lookups in flight, by repository, tag and the client's Accept list.
    tag_lookups: Coalescer<(RepositoryName, Tag, Option<HeaderValue>), ManifestResult>,
    /// Manifest-by-digest lookups in flight.
    digest_lookups: Coalescer<Digest, ManifestResult>,
}

impl From<FetchError> for RegistryError {
    fn from(error: FetchError) -> Self {
        match error {
            FetchError::Upstream(e) => e.into(),
            FetchError::Spool(detail) => RegistryError::Storage(detail),
        }
    }
}

/// Whether a client's Accept header admits a media type. No header, or a wildcard, admits all.
pub fn accepts(accept: Option<&HeaderValue>, media_type: &str) -> bool {
    let Some(accept) = accept.and_then(|v| v.to_str().ok()) else { return true };
    accept
        .split(',')
        .map(|entry| entry.split(';').next().unwrap_or("").trim())
        .any(|entry| entry == "*/*" || entry.eq_ignore_ascii_case(media_type))
}

/// The media type of a manifest: the upstream's Content-Type, else the document's `mediaType`.
pub fn manifest_media_type(content_type: Option<&str>, bytes: &[u8]) -> String {
    let declared = content_type.map(|c| c.split(';').next().unwrap_or("").trim()).filter(|c| {
        !c.is_empty() && !c.eq_ignore_ascii_case("application/octet-stream") && !c.eq_ignore_ascii_case("text/plain")
    });
    if let Some(declared) = declared {
        return declared.to_owned();
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    serde_json::from_slice::<Probe>(bytes)
        .ok()
        .and_then(|p| p.media_type)
        .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".to_owned())
}

/// Checks a manifest the upstream sent against the digest it was asked for or announced.
pub fn verify_manifest(body: ManifestBody, requested: Option<&Digest>) -> Result<CachedManifest, UpstreamError> {
    let algorithm = requested.or(body.digest.as_ref()).map_or(Algorithm::Sha256, Digest::algorithm);
    let actual = digest_of(algorithm, &body.bytes);
    for expected in [requested, body.digest.as_ref()].into_iter().flatten() {
        if expected.algorithm() == algorithm && *expected != actual {
            return Err(UpstreamError::Integrity(format!("manifest bytes hash to {actual}, expected {expected}")));
        }
    }
    let media_type = manifest_media_type(body.media_type.as_deref(), &body.bytes);
    if media_type.bytes().any(|b| b.is_ascii_control()) {
        return Err(UpstreamError::Protocol("manifest Content-Type has control characters".into()));
    }
    Ok(CachedManifest { digest: actual, media_type, bytes: body.bytes })
}

impl RegistryService {
    pub fn new(
        upstream: Arc<UpstreamClient>,
        blobs: BlobStore,
        manifests: ManifestStore,
        fetcher: Arc<Fetcher>,
        metrics: Arc<Metrics>,
        freshness: Duration,
    ) -> Self {
        Self {
            upstream,
            blobs,
            manifests,
            fetcher,
            metrics,
            freshness,
            tag_lookups: Coalescer::default(),
            digest_lookups: Coalescer::default(),
        }
    }

    /// A manifest by tag or digest. Concurrent identical requests share one lookup.
    pub async fn manifest(
        self: &Arc<Self>,
        repository: &RepositoryName,
        reference: &Reference,
        accept: Option<&HeaderValue>,
    ) -> Result<ManifestReply, RegistryError> {
        let this = self.clone();
        let repository = repository.clone();
        let accept = accept.cloned();
        let manifest = match reference {
            Reference::Digest(digest) => {
                let digest = digest.clone();
                let work = {
                    let digest = digest.clone();
                    move || async move { this.manifest_by_digest(&repository, &digest, accept.as_ref()).await }.boxed()
                };
                self.digest_lookups.run(digest, work).await?
            }
            Reference::Tag(tag) => {
                let key = (repository.clone(), tag.clone(), accept.clone());
                let tag = tag.clone();
                let work =
                    move || async move { this.manifest_by_tag(&repository, &tag, accept.as_ref()).await }.boxed();
                self.tag_lookups.run(key, work).await?
            }
        };
        Ok(ManifestReply { manifest })
    }

    /// A cached manifest, with storage trouble logged and treated as a miss: the upstream can
    /// still answer.
    async fn cached_manifest(&self, digest: &Digest) -> Option<CachedManifest> {
        match self.manifests.get(digest).await {
            Ok(found) => found,
            Err(error) => {
                tracing::error!(%digest, %error, "cannot read cached manifest");
                None
            }
        }
    }

    async fn store_manifest(&self, manifest: &CachedManifest) {
        if let Err(error) = self.manifests.put(manifest).await {
            tracing::error!(digest = %manifest.digest, %error, "cannot cache manifest; served uncached");
        }
    }

    async fn store_tag(&self, repository: &RepositoryName, tag: &Tag, manifest: &CachedManifest) {
        let record = TagRecord::new(manifest, SystemTime::now());
        if let Err(error) = self.manifests.put_tag(repository, tag, &record).await {
            tracing::error!(%repository, %tag, %error, "cannot record tag");
        }
    }

    /// By digest the content never changes: once cached, the upstream is never asked again.
    async fn manifest_by_digest(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        accept: Option<&HeaderValue>,
    ) -> Result<CachedManifest, RegistryError> {
        if let Some(manifest) = self.cached_manifest(digest).await {
            self.metrics.hit(Kind::Manifest);
            return Ok(manifest);
        }
        self.metrics.miss(Kind::Manifest);
        let body = self
            .upstream
            .manifest_get(repository, &Reference::Digest(digest.clone()), &accept_or_default(accept))
            .await?;
        let manifest = verify_manifest(body, Some(digest))?;
        self.store_manifest(&manifest).await;
        Ok(manifest)
    }

    /// By tag: serve the cached manifest while it is fresh, else ask the upstream (HEAD) where the
    /// tag points now; fetch only when it moved. When the upstream cannot answer, serve stale.
    async fn manifest_by_tag(
        &self,
        repository: &RepositoryName,
        tag: &Tag,
        accept: Option<&HeaderValue>,
    ) -> Result<CachedManifest, RegistryError> {
        let record = match self.manifests.get_tag(repository, tag).await {
            Ok(record) => record,
            Err(error) => {
                tracing::error!(%repository, %tag, %error, "cannot read tag record");
                None
            }
        };
        let cached = match &record {
            Some(record) if accepts(accept, &record.media_type) => match Digest::parse(&record.digest) {
                Ok(digest) => self.cached_manifest(&digest).await.map(|m| (record, m)),
                Err(_) => None,
            },
            _ => None,
        };
        if let Some((record, manifest)) = &cached
            && record.is_fresh(self.freshness, SystemTime::now())
        {
            self.metrics.hit(Kind::Manifest);
            return Ok(manifest.clone());
        }

        let accept_value = accept_or_default(accept);
        let tag_reference = Reference::Tag(tag.clone());
        let serve_stale = |error: UpstreamError, manifest: CachedManifest| {
            self.metrics.stale_serves.inc();
            self.metrics.hit(Kind::Manifest);
            tracing::warn!(%repository, %tag, digest = %manifest.digest, %error, "upstream unavailable; serving cached tag");
            manifest
        };
        match self.upstream.manifest_head(repository, &tag_reference, &accept_value).await {
            Ok(head) => {
                if let Some(digest) = &head.digest {
                    if let Some((_, manifest)) = &cached
                        && manifest.digest == *digest
                    {
                        self.metrics.hit(Kind::Manifest);
                        if !self.freshness.is_zero() {
                            self.store_tag(repository, tag, manifest).await;
                        }
                        return Ok(manifest.clone());
                    }
                    // The tag moved to a manifest we already hold (another tag, or a pull by digest).
                    if let Some(manifest) = self.cached_manifest(digest).await
                        && accepts(accept, &manifest.media_type)
                    {
                        self.metrics.hit(Kind::Manifest);
                        self.store_tag(repository, tag, &manifest).await;
                        return Ok(manifest);
                    }
                }
            }
            Err(error) if error.allows_stale() && cached.is_some() => {
                return Ok(serve_stale(error, cached.expect("checked").1));
            }
            Err(error) => return Err(error.into()),
        }

        self.metrics.miss(Kind::Manifest);
        let body = match self.upstream.manifest_get(repository, &tag_reference, &accept_value).await {
            Ok(body) => body,
            Err(error) if error.allows_stale() && cached.is_some() => {
                return Ok(serve_stale(error, cached.expect("checked").1));
            }
            Err(error) => return Err(error.into()),
        };
        let manifest = verify_manifest(body, None)?;
        self.store_manifest(&manifest).await;
        self.store_tag(repository, tag, &manifest).await;
        Ok(manifest)
    }

    /// A blob: from the cache when it is there, else from the shared download.
    pub async fn blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        range: Option<ByteRange>,
        method: Method,
    ) -> Result<BlobReply, RegistryError> {
        let cached_size = match self.blobs.size(digest).await {
            Ok(size) => size,
            Err(error) => {
                tracing::error!(%digest, %error, "cannot read blob cache; passing through");
                None
            }
        };
        if let Some(size) = cached_size {
            let range = resolve(range, size)?;
            if method == Method::Head {
                self.metrics.hit(Kind::Blob);
                return Ok(BlobReply { size: Some(size), range, body: None });
            }
            match self.blobs.open(digest, range.clone()).await {
                Ok(Some(blob)) => {
                    self.metrics.hit(Kind::Blob);
                    let body = blob.body.map(|r| r.map_err(std::io::Error::other)).boxed();
                    return Ok(BlobReply { size: Some(blob.size), range, body: Some(body) });
                }
                Ok(None) => {}
                Err(error) => tracing::error!(%digest, %error, "cannot open cached blob; passing through"),
            }
        }
        self.metrics.miss(Kind::Blob);
        if method == Method::Head {
            let size = self.upstream.blob_head(repository, digest).await?;
            let range = match size {
                Some(size) => resolve(range, size)?,
                None => None,
            };
            return Ok(BlobReply { size, range, body: None });
        }
        let (flight, _joined) = self.fetcher.join_or_start(repository, digest)?;
        let started = flight.started().await?;
        match range {
            None => Ok(BlobReply { size: started.length, range: None, body: Some(flight.stream(0, None)) }),
            Some(range) => {
                // A slice cannot be checked on its own: wait for the whole blob to verify.
                let size = flight.verified().await?;
                let range = resolve(Some(range), size)?;
                let body = match &range {
                    Some(r) => flight.stream(r.start, Some(r.end)),
                    None => flight.stream(0, None),
                };
                Ok(BlobReply { size: Some(size), range, body: Some(body) })
            }
        }
    }

    /// The shared downloads, so shutdown can wait for them.
    pub fn fetcher(&self) -> &Arc<Fetcher> {
        &self.fetcher
    }

    /// Whether the storage answers: for `/readyz`.
    pub async fn storage_ready(&self) -> Result<(), RegistryError> {
        let probe = Digest::from_hash(Algorithm::Sha256, &[0; 32]);
        self.blobs.size(&probe).await.map(|_| ()).map_err(RegistryError::from)
    }
}

/// The Accept list sent upstream: the client's, when it names any manifest type; otherwise (no
/// header, or only `*/*` as curl sends) every type a pull can need, since registries answer a bare
/// wildcard with 404 for OCI content.
pub fn accept_or_default(accept: Option<&HeaderValue>) -> HeaderValue {
    let names_a_manifest_type = accept.and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(',').map(|e| e.split(';').next().unwrap_or("").trim()).any(|e| e.starts_with("application/vnd."))
    });
    match accept {
        Some(accept) if names_a_manifest_type => accept.clone(),
        _ => HeaderValue::from_static(DEFAULT_MANIFEST_ACCEPT),
    }
}

fn resolve(range: Option<ByteRange>, size: u64) -> Result<Option<Range<u64>>, RegistryError> {
    match range {
        None => Ok(None),
        Some(range) => range.resolve(size).map(Some).ok_or(RegistryError::RangeNotSatisfiable { size }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_lists_are_matched_by_media_type() {
        let oci = "application/vnd.oci.image.index.v1+json";
        assert!(accepts(None, oci));
        let h = HeaderValue::from_static(
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json;q=0.9",
        );
        assert!(accepts(Some(&h), oci));
        assert!(!accepts(Some(&h), "application/vnd.docker.distribution.manifest.list.v2+json"));
        assert!(accepts(Some(&HeaderValue::from_static("*/*")), oci));
    }

    #[test]
    fn wildcard_accept_is_replaced_by_the_manifest_types() {
        let wildcard = HeaderValue::from_static("*/*");
        assert_eq!(accept_or_default(Some(&wildcard)), DEFAULT_MANIFEST_ACCEPT);
        assert_eq!(accept_or_default(None), DEFAULT_MANIFEST_ACCEPT);
        let docker = HeaderValue::from_static("application/vnd.docker.distribution.manifest.v2+json");
        assert_eq!(accept_or_default(Some(&docker)), docker);
    }

    #[test]
    fn media_type_comes_from_content_type_then_document() {
        let doc = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json"}"#;
        assert_eq!(
            manifest_media_type(Some("application/vnd.oci.image.index.v1+json"), doc),
            "application/vnd.oci.image.index.v1+json"
        );
        assert_eq!(
            manifest_media_type(Some("application/octet-stream"), doc),
            "application/vnd.docker.distribution.manifest.list.v2+json"
        );
        assert_eq!(manifest_media_type(None, b"{}"), "application/vnd.oci.image.manifest.v1+json");
    }

    #[test]
    fn manifests_must_hash_to_the_requested_and_announced_digest() {
        let bytes = Bytes::from_static(b"{\"schemaVersion\":2}");
        let right = digest_of(Algorithm::Sha256, &bytes);
        let wrong = digest_of(Algorithm::Sha256, b"other");
        let body = |digest: Option<Digest>| ManifestBody { bytes: bytes.clone(), media_type: None, digest };
        assert_eq!(verify_manifest(body(None), Some(&right)).unwrap().digest, right);
        assert_eq!(verify_manifest(body(Some(right.clone())), None).unwrap().digest, right);
        assert!(matches!(verify_manifest(body(None), Some(&wrong)), Err(UpstreamError::Integrity(_))));
        assert!(matches!(verify_manifest(body(Some(wrong)), None), Err(UpstreamError::Integrity(_))));
        let sha512 = digest_of(Algorithm::Sha512, &bytes);
        assert_eq!(verify_manifest(body(None), Some(&sha512)).unwrap().digest, sha512);
    }
}
