//! The axum router: `/v2/` paths mapped to service calls, in GitLab's group layout and, when
//! enabled, as a plain registry mirror; plus health, readiness and metrics.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use futures::StreamExt;

use crate::config::Config;
use crate::error::RegistryError;
use crate::metrics::Metrics;
use crate::range;
use crate::reference::{self, RepositoryName, Target};
use crate::service::{self, RegistryService};
use crate::upstream::client::DOCKER_CONTENT_DIGEST;

/// Every registry answer carries this, as the distribution spec's clients look for it.
const API_VERSION_HEADER: &str = "docker-distribution-api-version";
const API_VERSION: &str = "registry/2.0";

/// How request names map to upstream repositories.
#[derive(Debug, Clone)]
pub struct NameMapping {
    pub groups: BTreeSet<String>,
    pub mirror: bool,
    pub mirror_namespace: String,
    pub official_prefix: Option<String>,
}

impl NameMapping {
    pub fn from_config(config: &Config) -> Self {
        Self {
            groups: config.groups.iter().cloned().collect(),
            mirror: config.mirror,
            mirror_namespace: config.upstream.effective_mirror_namespace(),
            official_prefix: config.upstream.effective_official_prefix().map(str::to_owned),
        }
    }

    /// The upstream repository a request name stands for. `ns` is containerd's `?ns=` query.
    pub fn upstream_repository(
        &self,
        name: &RepositoryName,
        ns: Option<&str>,
    ) -> Result<RepositoryName, RegistryError> {
        let prefixed = |image: RepositoryName| {
            image
                .with_official_prefix(self.official_prefix.as_deref())
                .map_err(|e| RegistryError::NameInvalid(e.to_string()))
        };
        if let Some(split) = reference::split_gitlab_name(name) {
            if self.groups.contains(&split.group) {
                return prefixed(split.image);
            }
            return Err(RegistryError::NameUnknown(format!("group {:?} is not served by this proxy", split.group)));
        }
        if self.mirror {
            if let Some(ns) = ns
                && ns != self.mirror_namespace
            {
                return Err(RegistryError::NameUnknown(format!(
                    "this mirror serves {:?}, not {ns:?}",
                    self.mirror_namespace
                )));
            }
            return prefixed(name.clone());
        }
        Err(RegistryError::NameUnknown(format!(
            "{name} is not <group>/dependency_proxy/containers/<image> for a group this proxy serves"
        )))
    }
}

/// What every handler shares.
pub struct AppState {
    pub service: Arc<RegistryService>,
    pub names: NameMapping,
    pub metrics: Arc<Metrics>,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v2", any(api_root))
        .route("/v2/", any(api_root))
        .route("/v2/{*rest}", any(registry))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|request: Request| async move {
            RegistryError::NotFound(format!("{} is not an endpoint of this proxy", request.uri().path()))
        })
        .with_state(state)
}

fn with_api_version(mut response: Response) -> Response {
    response.headers_mut().insert(API_VERSION_HEADER, HeaderValue::from_static(API_VERSION));
    response
}

async fn api_root(method: Method) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return with_api_version(RegistryError::MethodNotAllowed(method.to_string()).into_response());
    }
    with_api_version((StatusCode::OK, axum::Json(serde_json::json!({}))).into_response())
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.service.storage_ready().await {
        Ok(()) => "ready".into_response(),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, format!("storage not ready: {error}\n")).into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], state.metrics.encode()).into_response()
}

/// containerd's `?ns=<registry>` when the proxy is its mirror. The raw query and path are read
/// by hand so that no malformed request can get a non-JSON rejection from an extractor.
fn namespace_param(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes()).find(|(key, _)| key == "ns").map(|(_, value)| value.into_owned())
}

async fn registry(State(state): State<Arc<AppState>>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    // Percent-escapes are not decoded: no valid name, tag or digest contains '%', so an escaped
    // path is refused by the grammar instead of being decoded into something else.
    let rest = uri.path().strip_prefix("/v2/").unwrap_or_default();
    let ns = namespace_param(uri.query());
    let response = match handle(&state, &method, rest, ns.as_deref(), &headers).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    with_api_version(response)
}

async fn handle(
    state: &AppState,
    method: &Method,
    rest: &str,
    ns: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, RegistryError> {
    let want = match *method {
        Method::GET => service::Method::Get,
        Method::HEAD => service::Method::Head,
        _ => return Err(RegistryError::MethodNotAllowed(format!("{method} /v2/{rest}"))),
    };
    let path = reference::parse_registry_path(rest)?;
    let repository = state.names.upstream_repository(&path.name, ns)?;
    match path.target {
        Target::Manifest(reference) => {
            let accept = accept_list(headers)?;
            let reply = state.service.manifest(&repository, &reference, accept.as_ref()).await?;
            Ok(manifest_response(reply.manifest, want, &state.metrics))
        }
        Target::Blob(digest) => {
            let range = match headers.get(header::RANGE) {
                Some(value) => {
                    let text = value.to_str().map_err(|_| RegistryError::BadHeader("Range is not ASCII".into()))?;
                    range::parse(text)
                }
                None => None,
            };
            let reply = state.service.blob(&repository, &digest, range, want).await?;
            Ok(blob_response(&digest, reply, &state.metrics))
        }
    }
}

/// All `Accept` header lines joined into one list: Go clients (skopeo, podman) send one line
/// per media type, containerd one comma-separated line; both mean the same list.
fn accept_list(headers: &HeaderMap) -> Result<Option<HeaderValue>, RegistryError> {
    let mut values = headers.get_all(header::ACCEPT).iter().peekable();
    let Some(first) = values.next() else { return Ok(None) };
    if values.peek().is_none() {
        return Ok(Some(first.clone()));
    }
    let mut joined = first.as_bytes().to_vec();
    for value in values {
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(value.as_bytes());
    }
    HeaderValue::from_bytes(&joined).map(Some).map_err(|_| RegistryError::BadHeader("Accept".into()))
}

fn manifest_response(manifest: crate::cache::CachedManifest, want: service::Method, metrics: &Metrics) -> Response {
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, &manifest.media_type)
        .header(header::CONTENT_LENGTH, manifest.bytes.len())
        .header(DOCKER_CONTENT_DIGEST, manifest.digest.to_string())
        .header(header::ETAG, format!("\"{}\"", manifest.digest));
    let body = match want {
        service::Method::Head => Body::empty(),
        service::Method::Get => {
            metrics.bytes_served.inc_by(manifest.bytes.len() as u64);
            Body::from(manifest.bytes)
        }
    };
    builder.headers_mut().map(|h| h.remove(header::TRANSFER_ENCODING));
    builder.body(body).unwrap_or_else(|e| RegistryError::Storage(format!("building response: {e}")).into_response())
}

fn blob_response(digest: &reference::Digest, reply: service::BlobReply, metrics: &Arc<Metrics>) -> Response {
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(DOCKER_CONTENT_DIGEST, digest.to_string())
        .header(header::ETAG, format!("\"{digest}\""))
        .header(header::ACCEPT_RANGES, "bytes");
    builder = match (&reply.range, reply.size) {
        (Some(range), Some(size)) => builder
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, range::content_range(range, size))
            .header(header::CONTENT_LENGTH, range.end - range.start),
        (_, Some(size)) => builder.status(StatusCode::OK).header(header::CONTENT_LENGTH, size),
        (_, None) => builder.status(StatusCode::OK),
    };
    let body = match reply.body {
        None => Body::empty(),
        Some(stream) => {
            let metrics = metrics.clone();
            Body::from_stream(stream.inspect(move |chunk| {
                if let Ok(chunk) = chunk {
                    metrics.bytes_served.inc_by(chunk.len() as u64);
                }
            }))
        }
    };
    builder.body(body).unwrap_or_else(|e| RegistryError::Storage(format!("building response: {e}")).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(mirror: bool, prefix: Option<&str>) -> NameMapping {
        NameMapping {
            groups: ["acme".to_owned(), "acme/team".to_owned()].into(),
            mirror,
            mirror_namespace: "docker.io".into(),
            official_prefix: prefix.map(str::to_owned),
        }
    }

    fn name(s: &str) -> RepositoryName {
        RepositoryName::parse(s).unwrap()
    }

    #[test]
    fn gitlab_layout_maps_to_the_upstream_image() {
        let m = mapping(false, Some("library"));
        let up = |s: &str| m.upstream_repository(&name(s), None).map(|n| n.to_string());
        assert_eq!(up("acme/dependency_proxy/containers/alpine").unwrap(), "library/alpine");
        assert_eq!(up("acme/dependency_proxy/containers/a/b/c").unwrap(), "a/b/c");
        assert_eq!(up("acme/team/dependency_proxy/containers/bitnami/redis").unwrap(), "bitnami/redis");
        assert!(matches!(up("other/dependency_proxy/containers/alpine"), Err(RegistryError::NameUnknown(_))));
        assert!(matches!(up("library/alpine"), Err(RegistryError::NameUnknown(_))));
    }

    #[test]
    fn accept_lines_are_joined() {
        let mut headers = HeaderMap::new();
        assert_eq!(accept_list(&headers).unwrap(), None);
        headers.append(header::ACCEPT, HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"));
        assert_eq!(accept_list(&headers).unwrap().unwrap(), "application/vnd.oci.image.manifest.v1+json");
        headers.append(header::ACCEPT, HeaderValue::from_static("application/vnd.oci.image.index.v1+json"));
        assert_eq!(
            accept_list(&headers).unwrap().unwrap(),
            "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
        );
    }

    #[test]
    fn namespace_comes_from_the_query() {
        assert_eq!(namespace_param(Some("ns=docker.io")).as_deref(), Some("docker.io"));
        assert_eq!(namespace_param(Some("x=1&ns=quay.io%3A443")).as_deref(), Some("quay.io:443"));
        assert_eq!(namespace_param(Some("%ZZ")), None);
        assert_eq!(namespace_param(None), None);
    }

    #[test]
    fn mirror_mode_checks_the_namespace() {
        let m = mapping(true, Some("library"));
        assert_eq!(m.upstream_repository(&name("alpine"), Some("docker.io")).unwrap().as_str(), "library/alpine");
        assert_eq!(m.upstream_repository(&name("a/b"), None).unwrap().as_str(), "a/b");
        assert!(matches!(m.upstream_repository(&name("alpine"), Some("quay.io")), Err(RegistryError::NameUnknown(_))));
        let m = mapping(true, None);
        assert_eq!(m.upstream_repository(&name("alpine"), None).unwrap().as_str(), "alpine");
    }
}
