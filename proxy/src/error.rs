//! `RegistryError`, and its conversion to the OCI JSON error response: the only place where an
//! HTTP status and an error code are chosen.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::cache::StoreError;
use crate::upstream::UpstreamError;

/// Everything a registry request can fail with, in the client's terms. `Clone`, so one
/// upstream failure can answer every coalesced request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid repository name: {0}")]
    NameInvalid(String),
    #[error("repository name not known to this proxy: {0}")]
    NameUnknown(String),
    #[error("invalid manifest reference: {0}")]
    ManifestInvalid(String),
    #[error("invalid digest: {0}")]
    DigestInvalid(String),
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    #[error("blob unknown: {0}")]
    BlobUnknown(String),
    #[error("{0}")]
    NotFound(String),
    #[error("this proxy is read-only: {0} is not supported")]
    MethodNotAllowed(String),
    #[error("requested range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("invalid request header: {0}")]
    BadHeader(String),
    #[error("upstream denied access: {0}")]
    Denied(String),
    #[error("upstream rate limit reached: {detail}")]
    TooManyRequests { retry_after: Option<HeaderValue>, detail: String },
    #[error("upstream error: {0}")]
    BadGateway(String),
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    #[error("storage error: {0}")]
    Storage(String),
}

/// One entry of the spec's `{"errors": [...]}` body.
#[derive(Debug, Serialize)]
struct ErrorEntry<'a> {
    code: &'a str,
    message: String,
    detail: serde_json::Value,
}

#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    errors: [ErrorEntry<'a>; 1],
}

impl RegistryError {
    /// The HTTP status and the spec's error code for this error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use RegistryError::*;
        match self {
            NameInvalid(_) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            NameUnknown(_) => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
            ManifestInvalid(_) => (StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
            DigestInvalid(_) => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            ManifestUnknown(_) => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            BlobUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            NotFound(_) => (StatusCode::NOT_FOUND, "UNSUPPORTED"),
            MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            RangeNotSatisfiable { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID"),
            BadHeader(_) => (StatusCode::BAD_REQUEST, "UNSUPPORTED"),
            Denied(_) => (StatusCode::FORBIDDEN, "DENIED"),
            TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
            BadGateway(_) => (StatusCode::BAD_GATEWAY, "UNKNOWN"),
            Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        }
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::warn!(%status, code, error = %self, "request failed");
        } else {
            tracing::debug!(%status, code, error = %self, "request refused");
        }
        let body =
            ErrorBody { errors: [ErrorEntry { code, message: self.to_string(), detail: serde_json::Value::Null }] };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            RegistryError::TooManyRequests { retry_after: Some(value), .. } => {
                headers.insert(header::RETRY_AFTER, value.clone());
            }
            RegistryError::RangeNotSatisfiable { size } => {
                let value = HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii header");
                headers.insert(header::CONTENT_RANGE, value);
            }
            _ => {}
        }
        response
    }
}

impl From<UpstreamError> for RegistryError {
    fn from(error: UpstreamError) -> Self {
        match error {
            UpstreamError::NotFound { what, detail } => match what {
                crate::upstream::Object::Manifest => RegistryError::ManifestUnknown(detail),
                crate::upstream::Object::Blob => RegistryError::BlobUnknown(detail),
            },
            UpstreamError::Denied(detail) => RegistryError::Denied(detail),
            UpstreamError::RateLimited { retry_after, detail } => {
                RegistryError::TooManyRequests { retry_after, detail }
            }
            UpstreamError::Unreachable(detail) => RegistryError::Unavailable(detail),
            UpstreamError::ServerError { status, detail } if status == StatusCode::SERVICE_UNAVAILABLE => {
                RegistryError::Unavailable(format!("upstream answered {status}: {detail}"))
            }
            UpstreamError::ServerError { status, detail } => {
                RegistryError::BadGateway(format!("upstream answered {status}: {detail}"))
            }
            error @ (UpstreamError::Protocol(_) | UpstreamError::Integrity(_)) => {
                RegistryError::BadGateway(error.to_string())
            }
        }
    }
}

impl From<StoreError> for RegistryError {
    fn from(error: StoreError) -> Self {
        RegistryError::Storage(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(response: Response) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn errors_render_as_oci_json() {
        let response = RegistryError::ManifestUnknown("library/alpine:nope".into()).into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = body_of(response).await;
        assert_eq!(body["errors"][0]["code"], "MANIFEST_UNKNOWN");
        assert_eq!(body["errors"][0]["message"], "manifest unknown: library/alpine:nope");
        assert!(body["errors"][0].get("detail").is_some());
    }

    #[tokio::test]
    async fn rate_limits_keep_retry_after() {
        let error = RegistryError::TooManyRequests {
            retry_after: Some(HeaderValue::from_static("17")),
            detail: "slow down".into(),
        };
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "17");
        assert_eq!(body_of(response).await["errors"][0]["code"], "TOOMANYREQUESTS");
    }

    #[test]
    fn statuses_follow_the_spec() {
        let cases: [(RegistryError, u16, &str); 8] = [
            (RegistryError::NameInvalid(String::new()), 400, "NAME_INVALID"),
            (RegistryError::DigestInvalid(String::new()), 400, "DIGEST_INVALID"),
            (RegistryError::ManifestInvalid(String::new()), 400, "MANIFEST_INVALID"),
            (RegistryError::NameUnknown(String::new()), 404, "NAME_UNKNOWN"),
            (RegistryError::BlobUnknown(String::new()), 404, "BLOB_UNKNOWN"),
            (RegistryError::MethodNotAllowed(String::new()), 405, "UNSUPPORTED"),
            (RegistryError::BadGateway(String::new()), 502, "UNKNOWN"),
            (RegistryError::Unavailable(String::new()), 503, "UNAVAILABLE"),
        ];
        for (error, status, code) in cases {
            assert_eq!(error.status_and_code(), (StatusCode::from_u16(status).unwrap(), code), "{error:?}");
        }
    }

    #[test]
    fn upstream_errors_map_to_client_statuses() {
        use crate::upstream::Object;
        let not_found = UpstreamError::NotFound { what: Object::Blob, detail: "x".into() };
        assert!(matches!(RegistryError::from(not_found), RegistryError::BlobUnknown(_)));
        let s503 = UpstreamError::ServerError { status: StatusCode::SERVICE_UNAVAILABLE, detail: String::new() };
        assert_eq!(RegistryError::from(s503).status_and_code().0, StatusCode::SERVICE_UNAVAILABLE);
        let s500 = UpstreamError::ServerError { status: StatusCode::INTERNAL_SERVER_ERROR, detail: String::new() };
        assert_eq!(RegistryError::from(s500).status_and_code().0, StatusCode::BAD_GATEWAY);
        let down = UpstreamError::Unreachable("connection refused".into());
        assert_eq!(RegistryError::from(down).status_and_code().0, StatusCode::SERVICE_UNAVAILABLE);
        let bad = UpstreamError::Integrity("digest mismatch".into());
        assert_eq!(RegistryError::from(bad).status_and_code().0, StatusCode::BAD_GATEWAY);
    }
}
