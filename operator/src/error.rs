//! The reconciler's errors: API failures, named by the object they concern.

/// Why a reconcile failed; every variant is retried with backoff and shown in `Degraded`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("applying {kind} {name}: {source}")]
    Apply {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading {kind} {name}: {source}")]
    Read {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("updating the status: {0}")]
    Status(#[source] kube::Error),
    #[error("the resource has no {0}")]
    MissingMetadata(&'static str),
}

impl Error {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Apply { .. } => "apply",
            Self::Read { .. } => "read",
            Self::Status(_) => "status",
            Self::MissingMetadata(_) => "metadata",
        }
    }
}
