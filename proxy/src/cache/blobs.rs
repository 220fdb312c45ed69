//! Blob storage: content-addressed objects that are written through a multipart upload and
//! committed only when the streamed bytes hash to the digest and have the announced length.
//!
//! The multipart upload is the staging area: for the local filesystem it is a temporary file
//! renamed into place on completion, for S3 an upload that stays invisible until completed. An
//! aborted or crashed transfer therefore never leaves an object under the blob's key.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::{GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt, WriteMultipart};

use super::{StoreError, keys};
use crate::hashing::DigestHasher;
use crate::reference::Digest;

/// Parts uploading at once per blob, besides the one filling: with the part size, this bounds
/// the memory one download holds.
const MAX_PARTS_IN_FLIGHT: usize = 1;
/// Read size when streaming a cached blob from the local filesystem.
const FILE_READ_CHUNK: usize = 1024 * 1024;

/// A cached blob ready to stream.
pub struct CachedBlob {
    /// Size of the whole blob.
    pub size: u64,
    /// The byte range the stream covers.
    pub range: Range<u64>,
    pub body: BoxStream<'static, Result<Bytes, StoreError>>,
}

/// Blobs in the object store.
#[derive(Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    part_size: usize,
}

impl BlobStore {
    pub fn new(store: Arc<dyn ObjectStore>, part_size: usize) -> Self {
        Self { store, part_size }
    }

    /// The size of a cached blob, or `None` when it is not cached.
    pub async fn size(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        match self.store.head(&keys::blob(digest)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens a cached blob, or a range of it (the range must be within the blob).
    pub async fn open(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<Option<CachedBlob>, StoreError> {
        let options = GetOptions { range: range.map(GetRange::Bounded), ..Default::default() };
        let result = match self.store.get_opts(&keys::blob(digest), options).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let size = result.meta.size;
        let range = result.range.clone();
        let body = match result.payload {
            // The generic stream reads the file 8 KiB at a time; large reads are several times
            // faster for multi-megabyte layers.
            GetResultPayload::File(file, _) => file_stream(file, range.clone()),
            GetResultPayload::Stream(stream) => stream.map(|r| r.map_err(StoreError::from)).boxed(),
        };
        Ok(Some(CachedBlob { size, range, body }))
    }

    /// Starts writing a blob. Nothing is visible under its key until `commit` verifies it.
    pub async fn writer(&self, digest: &Digest) -> Result<BlobWriter, StoreError> {
        let upload = self.store.put_multipart(&keys::blob(digest)).await?;
        Ok(BlobWriter {
            upload: WriteMultipart::new_with_chunk_size(upload, self.part_size),
            digest: digest.clone(),
            written: 0,
        })
    }
}

/// Streams a byte range of an open file with large reads on the blocking pool.
fn file_stream(file: std::fs::File, range: Range<u64>) -> BoxStream<'static, Result<Bytes, StoreError>> {
    use std::os::unix::fs::FileExt;
    let file = Arc::new(file);
    futures::stream::try_unfold(range.start, move |offset| {
        let file = file.clone();
        let end = range.end;
        async move {
            if offset >= end {
                return Ok(None);
            }
            let len = (end - offset).min(FILE_READ_CHUNK as u64) as usize;
            let chunk = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
                let mut buffer = vec![0; len];
                let mut filled = 0;
                while filled < len {
                    let n = file.read_at(&mut buffer[filled..], offset + filled as u64)?;
                    if n == 0 {
                        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "cached blob shrank"));
                    }
                    filled += n;
                }
                Ok(buffer)
            })
            .await
            .map_err(std::io::Error::other)??;
            let next = offset + chunk.len() as u64;
            Ok(Some((Bytes::from(chunk), next)))
        }
    })
    .boxed()
}

/// Proof that a byte stream hashed to the digest it was fetched for, with its length. Only a
/// `Verifier` makes one, and a blob can only be committed with one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    digest: Digest,
    length: u64,
}

impl Verified {
    pub fn length(&self) -> u64 {
        self.length
    }
}

/// Hashes a blob as it streams past and checks it against the digest it was asked for.
pub struct Verifier {
    hasher: DigestHasher,
    expected: Digest,
    length: u64,
}

impl Verifier {
    pub fn new(expected: &Digest) -> Self {
        Self { hasher: DigestHasher::new(expected.algorithm()), expected: expected.clone(), length: 0 }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.length += bytes.len() as u64;
    }

    pub fn length(&self) -> u64 {
        self.length
    }

    /// Checks the hash, and the length when the upstream announced one.
    pub fn finish(self, expected_len: Option<u64>) -> Result<Verified, StoreError> {
        let expected = self.expected.to_string();
        if let Some(len) = expected_len.filter(|len| *len != self.length) {
            return Err(StoreError::Mismatch {
                expected,
                reason: format!("got {} bytes, expected {len}", self.length),
            });
        }
        let actual = self.hasher.finish();
        if actual != self.expected {
            return Err(StoreError::Mismatch { expected, reason: format!("bytes hash to {actual}") });
        }
        Ok(Verified { digest: self.expected, length: self.length })
    }
}

/// A blob upload in progress, invisible until committed with a matching `Verified`.
pub struct BlobWriter {
    upload: WriteMultipart,
    digest: Digest,
    written: u64,
}

impl BlobWriter {
    pub async fn write(&mut self, bytes: Bytes) -> Result<(), StoreError> {
        self.upload.wait_for_capacity(MAX_PARTS_IN_FLIGHT).await?;
        self.written += bytes.len() as u64;
        self.upload.put(bytes);
        Ok(())
    }

    /// Makes the blob visible under its key. The proof must be for this digest and for exactly
    /// the bytes written; anything else aborts the upload.
    pub async fn commit(self, proof: &Verified) -> Result<(), StoreError> {
        if proof.digest != self.digest || proof.length != self.written {
            let reason = format!("verified {} bytes of {}, wrote {}", proof.length, proof.digest, self.written);
            let expected = self.digest.to_string();
            self.abort().await;
            return Err(StoreError::Mismatch { expected, reason });
        }
        self.upload.finish().await?;
        Ok(())
    }

    /// Throws the upload away; nothing was ever visible under the blob's key.
    pub async fn abort(self) {
        if let Err(error) = self.upload.abort().await {
            tracing::warn!(%error, digest = %self.digest, "could not abort blob upload");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hashing::digest_of;
    use crate::reference::Algorithm;
    use object_store::local::LocalFileSystem;
    use object_store::memory::InMemory;

    const TEST_PART: usize = 1024 * 1024;

    async fn read_all(blob: CachedBlob) -> Vec<u8> {
        let chunks: Vec<Bytes> = blob.body.map(|c| c.unwrap()).collect().await;
        chunks.concat()
    }

    #[tokio::test]
    async fn verified_blob_commits_and_reads_back_with_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap()), TEST_PART);
        let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let digest = digest_of(Algorithm::Sha256, &content);
        let mut writer = store.writer(&digest).await.unwrap();
        let mut verifier = Verifier::new(&digest);
        for chunk in content.chunks(100_000) {
            verifier.update(chunk);
            writer.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        assert_eq!(store.size(&digest).await.unwrap(), None, "visible before commit");
        let proof = verifier.finish(Some(content.len() as u64)).unwrap();
        writer.commit(&proof).await.unwrap();
        assert_eq!(store.size(&digest).await.unwrap(), Some(content.len() as u64));
        let whole = store.open(&digest, None).await.unwrap().unwrap();
        assert_eq!(whole.size, content.len() as u64);
        assert_eq!(read_all(whole).await, content);
        let part = store.open(&digest, Some(1_048_570..2_100_000)).await.unwrap().unwrap();
        assert_eq!(part.range, 1_048_570..2_100_000);
        assert_eq!(read_all(part).await, content[1_048_570..2_100_000]);
    }

    #[tokio::test]
    async fn wrong_bytes_or_length_never_become_visible() {
        let digest = digest_of(Algorithm::Sha256, b"right");
        let mut verifier = Verifier::new(&digest);
        verifier.update(b"wrong");
        assert!(matches!(verifier.finish(Some(5)), Err(StoreError::Mismatch { .. })));
        let mut verifier = Verifier::new(&digest);
        verifier.update(b"right");
        assert!(matches!(verifier.finish(Some(6)), Err(StoreError::Mismatch { .. })));

        // A proof for other bytes than the ones written cannot commit them.
        let store = BlobStore::new(Arc::new(InMemory::new()), TEST_PART);
        let mut verifier = Verifier::new(&digest);
        verifier.update(b"right");
        let proof = verifier.finish(None).unwrap();
        let mut writer = store.writer(&digest).await.unwrap();
        writer.write(Bytes::from_static(b"righ")).await.unwrap();
        assert!(matches!(writer.commit(&proof).await, Err(StoreError::Mismatch { .. })));
        assert_eq!(store.size(&digest).await.unwrap(), None);
    }

    #[tokio::test]
    async fn aborted_local_upload_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap()), TEST_PART);
        let digest = digest_of(Algorithm::Sha256, b"x");
        let mut writer = store.writer(&digest).await.unwrap();
        writer.write(Bytes::from(vec![7u8; TEST_PART + 10])).await.unwrap();
        writer.abort().await;
        let leftovers: Vec<_> = walk(dir.path());
        assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
        }
        files
    }
}
