//! The cache: blobs and manifests in an `object_store`, content-addressed and verified.

pub mod blobs;
pub mod keys;
pub mod manifests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;

pub use blobs::{BlobStore, BlobWriter, CachedBlob, Verified, Verifier};
pub use manifests::{CachedManifest, ManifestStore, TagRecord};

use crate::config::{ConfigError, StorageConfig, StorageLocation};

/// A storage operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("spool file: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt cache entry {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("content does not match {expected}: {reason}")]
    Mismatch { expected: String, reason: String },
}

/// An opened object store and the upload part size that suits it.
pub struct Storage {
    pub store: Arc<dyn ObjectStore>,
    /// Multipart part size: S3 refuses parts under 5 MiB; a local file takes any size, and
    /// small parts keep each download's buffer small.
    pub part_size: usize,
    /// The directory of a filesystem store, whose crash leftovers `sweep_staging` removes.
    pub local_root: Option<PathBuf>,
}

/// S3's smallest allowed multipart part (except the last).
const S3_MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// Part size for stores without a minimum.
const LOCAL_PART_SIZE: usize = 1024 * 1024;

/// Opens the object store `storage.url` names. S3 credentials come from the standard `AWS_*`
/// environment variables, so they never appear in a config file.
pub fn open_store(config: &StorageConfig) -> Result<Storage, ConfigError> {
    let invalid =
        |field: &'static str, e: &dyn std::fmt::Display| ConfigError::Invalid { field, reason: e.to_string() };
    Ok(match config.location()? {
        StorageLocation::Memory => {
            Storage { store: Arc::new(InMemory::new()), part_size: LOCAL_PART_SIZE, local_root: None }
        }
        StorageLocation::Filesystem(path) => {
            std::fs::create_dir_all(&path).map_err(|e| invalid("storage.url", &format!("{}: {e}", path.display())))?;
            let store = LocalFileSystem::new_with_prefix(&path).map_err(|e| invalid("storage.url", &e))?;
            // fsync before the commit rename: after a power loss a blob is whole or absent, never a
            // truncated file under its final, trusted key.
            let store = Arc::new(store.with_automatic_cleanup(true).with_fsync(true));
            Storage { store, part_size: LOCAL_PART_SIZE, local_root: Some(path) }
        }
        StorageLocation::S3 { bucket, prefix } => {
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket).with_allow_http(config.allow_http);
            if let Some(endpoint) = &config.endpoint {
                builder = builder.with_endpoint(endpoint.as_str().trim_end_matches('/'));
            }
            if let Some(region) = &config.region {
                builder = builder.with_region(region);
            } else if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none() {
                builder = builder.with_region("us-east-1");
            }
            let store = builder.build().map_err(|e| invalid("storage.url", &e))?;
            let store: Arc<dyn ObjectStore> =
                if prefix.is_empty() { Arc::new(store) } else { Arc::new(PrefixStore::new(store, prefix)) };
            Storage { store, part_size: S3_MIN_PART_SIZE, local_root: None }
        }
    })
}

/// Removes the staging files (`<key>#<n>`) that uploads interrupted by a crash left in a
/// filesystem store. They are never served, but would hold disk space forever. Deleting one
/// that another replica on a shared volume is still writing only makes that replica's commit
/// fail, which it handles by serving the blob uncached, so the sweep needs no coordination.
pub fn sweep_staging(root: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for tree in [keys::BLOBS, keys::MANIFESTS, keys::TAGS] {
        let dir = root.join(tree);
        if dir.is_dir() {
            removed += sweep_dir(&dir)?;
        }
    }
    Ok(removed)
}

fn sweep_dir(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            removed += sweep_dir(&entry.path())?;
        } else if kind.is_file() && entry.file_name().to_string_lossy().contains('#') {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                // Committed or removed by its writer meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_removes_only_staging_files() {
        let root = tempfile::tempdir().unwrap();
        let shard = root.path().join("blobs/sha256/ab");
        std::fs::create_dir_all(&shard).unwrap();
        std::fs::write(shard.join("abcd"), b"committed").unwrap();
        std::fs::write(shard.join("abcd#1"), b"partial").unwrap();
        std::fs::create_dir_all(root.path().join("tags/up/a/_tags")).unwrap();
        std::fs::write(root.path().join("tags/up/a/_tags/latest#3"), b"{").unwrap();
        std::fs::write(root.path().join("unrelated#1"), b"not ours").unwrap();
        assert_eq!(sweep_staging(root.path()).unwrap(), 2);
        assert!(shard.join("abcd").exists());
        assert!(!shard.join("abcd#1").exists());
        assert!(root.path().join("unrelated#1").exists(), "files outside the cache trees are left alone");
    }
}
