//! The harness's error type: every failure names the step and the system it happened in.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Http {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{0} did not become ready within {1:?}; see its log in {2}")]
    NotReady(String, std::time::Duration, PathBuf),
    #[error("{what}: unexpected status {status}")]
    Status { what: String, status: u16 },
    #[error("{what}: got {got} bytes, expected {want}")]
    ShortBody { what: String, got: u64, want: u64 },
    #[error("{what}: body digest {got}, expected {want}")]
    WrongDigest { what: String, got: String, want: String },
    #[error("required program {0} is missing (scripts/bench installs it)")]
    MissingProgram(String),
    #[error("wrk output had no Requests/sec line:\n{0}")]
    WrkOutput(String),
    #[error("wrk against {url} saw {errors} failed responses:\n{output}")]
    WrkErrors { url: String, errors: u64, output: String },
    #[error("{0}")]
    Other(String),
}

impl BenchError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }

    pub fn http(what: impl Into<String>) -> impl FnOnce(reqwest::Error) -> Self {
        let what = what.into();
        move |source| Self::Http { what, source }
    }
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;
