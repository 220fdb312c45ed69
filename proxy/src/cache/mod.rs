//! The cache: blobs and manifests in an `object_store`, content-addressed and verified.

pub mod blobs;
pub mod keys;
pub mod manifests;

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
    let local = |store: Arc<dyn ObjectStore>| Storage { store, part_size: LOCAL_PART_SIZE };
    Ok(match config.location()? {
        StorageLocation::Memory => local(Arc::new(InMemory::new())),
        StorageLocation::Filesystem(path) => {
            std::fs::create_dir_all(&path).map_err(|e| invalid("storage.url", &format!("{}: {e}", path.display())))?;
            let store = LocalFileSystem::new_with_prefix(&path).map_err(|e| invalid("storage.url", &e))?;
            // fsync before the commit rename: after a power loss a blob is whole or absent, never a
            // truncated file under its final, trusted key.
            local(Arc::new(store.with_automatic_cleanup(true).with_fsync(true)))
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
            Storage { store, part_size: S3_MIN_PART_SIZE }
        }
    })
}
