//! The cache: blobs and manifests in an `object_store`, content-addressed and verified.

/// A storage operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("spool file: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt cache entry {key}: {reason}")]
    Corrupt { key: String, reason: String },
}
