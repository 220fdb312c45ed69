//! The upstream registry: an HTTP client that speaks the distribution API and its token auth.

pub mod auth;
pub mod client;

pub use client::{BlobResponse, Credentials, ManifestBody, ManifestHead, UpstreamClient};

use axum::http::{HeaderValue, StatusCode};

/// Which kind of object an upstream request was for (decides BLOB_UNKNOWN vs MANIFEST_UNKNOWN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    Manifest,
    Blob,
}

/// How a request to the upstream failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("not found upstream: {detail}")]
    NotFound { what: Object, detail: String },
    #[error("upstream refused access: {0}")]
    Denied(String),
    #[error("upstream rate limit: {detail}")]
    RateLimited { retry_after: Option<HeaderValue>, detail: String },
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    #[error("upstream answered {status}: {detail}")]
    ServerError { status: StatusCode, detail: String },
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    #[error("upstream content does not match its digest: {0}")]
    Integrity(String),
}

impl UpstreamError {
    /// True when the upstream could not answer (down, overloaded, rate limited), as opposed to
    /// answering "no": a cached tag may then be served stale.
    pub fn allows_stale(&self) -> bool {
        matches!(self, Self::Unreachable(_) | Self::ServerError { .. } | Self::RateLimited { .. })
    }
}
