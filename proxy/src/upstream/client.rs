//! The HTTP client for the upstream registry: Accept forwarding, identity encoding, the 401 →
//! token → retry dance, and redirects that never carry the registry's credentials elsewhere.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use url::Url;

use super::auth::{BearerChallenge, Challenge, TokenCache, TokenResponse, parse_challenge};
use super::{Object, UpstreamError};
use crate::config::UpstreamConfig;
use crate::metrics::{Kind, Metrics, UpstreamLabels};
use crate::reference::{Digest, Reference, RepositoryName};

/// Largest manifest accepted from the upstream (the spec asks registries to accept 4 MiB).
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;
/// Redirect hops followed before giving up.
const MAX_REDIRECTS: usize = 5;
/// Manifest, HEAD and token requests are small: they get a whole-request deadline.
const SMALL_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Error bodies are read only this far, for the log and the client's message.
const MAX_ERROR_BODY: usize = 2048;
/// The header registries use to announce a manifest's or blob's digest.
pub const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

/// The Accept list sent when the client gave none: every manifest type a pull can need.
pub const DEFAULT_MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Upstream account for Basic auth and for the token service.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).finish_non_exhaustive()
    }
}

/// What a manifest HEAD told us.
#[derive(Debug, Clone)]
pub struct ManifestHead {
    pub digest: Option<Digest>,
    pub media_type: Option<String>,
}

/// A manifest as the upstream sent it, bytes untouched.
#[derive(Debug, Clone)]
pub struct ManifestBody {
    pub bytes: Bytes,
    pub media_type: Option<String>,
    pub digest: Option<Digest>,
}

/// A blob response whose status was 200; the body is still to be read.
pub struct BlobResponse {
    pub length: Option<u64>,
    pub response: reqwest::Response,
}

/// The upstream registry.
pub struct UpstreamClient {
    http: reqwest::Client,
    base: Url,
    credentials: Option<Credentials>,
    tokens: TokenCache,
    metrics: Arc<Metrics>,
}

/// Whether two URLs share scheme, host and port: credentials only go where they were meant to.
pub fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme() && a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
}

impl UpstreamClient {
    pub fn new(
        config: &UpstreamConfig,
        credentials: Option<Credentials>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, UpstreamError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("dependency-proxy/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .build()
            .map_err(|e| UpstreamError::Protocol(format!("cannot build HTTP client: {e}")))?;
        let mut base = config.url.clone();
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(Self { http, base, credentials, tokens: TokenCache::default(), metrics })
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    fn url(&self, repository: &RepositoryName, kind: &str, reference: &str) -> Url {
        self.base.join(&format!("v2/{repository}/{kind}/{reference}")).expect("validated names form a URL path")
    }

    /// HEAD a manifest: the cheap way to learn where a tag points (Docker Hub does not count it
    /// against the pull rate limit).
    pub async fn manifest_head(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
        accept: &HeaderValue,
    ) -> Result<ManifestHead, UpstreamError> {
        let url = self.url(repository, "manifests", &reference.to_string());
        let response = self
            .send(Kind::Manifest, Method::HEAD, url, repository, accept_headers(accept), Some(SMALL_REQUEST_TIMEOUT))
            .await?;
        let response = check_status(response, Object::Manifest).await?;
        Ok(ManifestHead { digest: digest_header(response.headers())?, media_type: content_type(response.headers()) })
    }

    /// GET a manifest, bounded in size, bytes exactly as sent.
    pub async fn manifest_get(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
        accept: &HeaderValue,
    ) -> Result<ManifestBody, UpstreamError> {
        let url = self.url(repository, "manifests", &reference.to_string());
        let response = self
            .send(Kind::Manifest, Method::GET, url, repository, accept_headers(accept), Some(SMALL_REQUEST_TIMEOUT))
            .await?;
        let response = check_status(response, Object::Manifest).await?;
        check_identity_encoding(response.headers())?;
        let digest = digest_header(response.headers())?;
        let media_type = content_type(response.headers());
        if response.content_length().is_some_and(|len| len > MAX_MANIFEST_BYTES) {
            return Err(UpstreamError::Protocol(format!("manifest larger than {MAX_MANIFEST_BYTES} bytes")));
        }
        let mut body = BytesMut::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| UpstreamError::Unreachable(format!("reading manifest: {e}")))?;
            if body.len() as u64 + chunk.len() as u64 > MAX_MANIFEST_BYTES {
                return Err(UpstreamError::Protocol(format!("manifest larger than {MAX_MANIFEST_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        self.metrics.upstream_bytes.inc_by(body.len() as u64);
        Ok(ManifestBody { bytes: body.freeze(), media_type, digest })
    }

    /// HEAD a blob: its length, without transferring it.
    pub async fn blob_head(&self, repository: &RepositoryName, digest: &Digest) -> Result<Option<u64>, UpstreamError> {
        let url = self.url(repository, "blobs", &digest.to_string());
        let response = self
            .send(Kind::Blob, Method::HEAD, url, repository, identity_headers(), Some(SMALL_REQUEST_TIMEOUT))
            .await?;
        let response = check_status(response, Object::Blob).await?;
        Ok(content_length(response.headers()))
    }

    /// GET a blob, following redirects to its storage; the caller streams and verifies the body.
    pub async fn blob_get(&self, repository: &RepositoryName, digest: &Digest) -> Result<BlobResponse, UpstreamError> {
        let url = self.url(repository, "blobs", &digest.to_string());
        let response = self.send(Kind::Blob, Method::GET, url, repository, identity_headers(), None).await?;
        let response = check_status(response, Object::Blob).await?;
        if response.status() != StatusCode::OK {
            return Err(UpstreamError::Protocol(format!("blob GET answered {}", response.status())));
        }
        check_identity_encoding(response.headers())?;
        Ok(BlobResponse { length: content_length(response.headers()), response })
    }

    /// Sends a request, answering one 401 with the credentials its challenge asks for.
    async fn send(
        &self,
        kind: Kind,
        method: Method,
        url: Url,
        repository: &RepositoryName,
        headers: HeaderMap,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut challenge = self.tokens.expected_challenge(repository.as_str());
        let mut use_basic = false;
        let mut answered_challenge = false;
        loop {
            let authorization = if use_basic {
                self.basic_authorization()
            } else {
                match &challenge {
                    Some(c) => self.tokens.get(c, Instant::now()).map(|t| bearer(&t)),
                    None => None,
                }
            };
            let response = self.follow(kind, method.clone(), url.clone(), &headers, authorization, timeout).await?;
            if response.status() != StatusCode::UNAUTHORIZED || answered_challenge {
                return Ok(response);
            }
            answered_challenge = true;
            let Some(parsed) = response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge)
            else {
                return Ok(response);
            };
            match parsed {
                Challenge::Bearer(new) => {
                    // A token we sent was refused: it must not be offered again.
                    if let Some(old) = &challenge {
                        self.tokens.invalidate(old);
                    }
                    self.tokens.invalidate(&new);
                    self.fetch_token(&new).await?;
                    challenge = Some(new);
                }
                Challenge::Basic if self.credentials.is_some() => use_basic = true,
                Challenge::Basic => return Ok(response),
            }
        }
    }

    /// Sends one request and follows redirects, dropping `Authorization` when leaving the origin.
    async fn follow(
        &self,
        kind: Kind,
        method: Method,
        mut url: Url,
        headers: &HeaderMap,
        mut authorization: Option<HeaderValue>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, UpstreamError> {
        for _ in 0..=MAX_REDIRECTS {
            let mut request = self.http.request(method.clone(), url.clone()).headers(headers.clone());
            if let Some(value) = &authorization {
                request = request.header(header::AUTHORIZATION, value.clone());
            }
            if let Some(timeout) = timeout {
                request = request.timeout(timeout);
            }
            let started = Instant::now();
            let result = request.send().await;
            self.record(kind, started, result.as_ref().ok().map(|r| r.status()));
            let response = result.map_err(|e| UpstreamError::Unreachable(describe_reqwest(&e, &url)))?;
            if !response.status().is_redirection() {
                return Ok(response);
            }
            let Some(location) = response.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()) else {
                return Err(UpstreamError::Protocol(format!("{} redirect without Location", response.status())));
            };
            let next = url
                .join(location)
                .map_err(|e| UpstreamError::Protocol(format!("bad redirect Location {location:?}: {e}")))?;
            if !matches!(next.scheme(), "http" | "https") {
                return Err(UpstreamError::Protocol(format!("redirect to unsupported URL {next}")));
            }
            if !same_origin(&url, &next) {
                authorization = None;
            }
            url = next;
        }
        Err(UpstreamError::Protocol(format!("more than {MAX_REDIRECTS} redirects")))
    }

    /// Asks the challenge's realm for a token (with our credentials, if any) and caches it.
    async fn fetch_token(&self, challenge: &BearerChallenge) -> Result<(), UpstreamError> {
        let mut url = Url::parse(&challenge.realm)
            .map_err(|e| UpstreamError::Protocol(format!("token realm {:?} is not a URL: {e}", challenge.realm)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UpstreamError::Protocol(format!("token realm {url} is not http(s)")));
        }
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = &challenge.service {
                query.append_pair("service", service);
            }
            if let Some(scope) = &challenge.scope {
                query.append_pair("scope", scope);
            }
        }
        let mut request = self.http.get(url.clone()).timeout(SMALL_REQUEST_TIMEOUT);
        if let Some(credentials) = &self.credentials {
            request = request.basic_auth(&credentials.username, Some(&credentials.password));
        }
        let started = Instant::now();
        let result = request.send().await;
        self.record(Kind::Token, started, result.as_ref().ok().map(|r| r.status()));
        let response = result.map_err(|e| UpstreamError::Unreachable(describe_reqwest(&e, &url)))?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(UpstreamError::Denied(format!("token service {} answered {status}", challenge.realm)));
        }
        let response = check_status(response, Object::Manifest).await.map_err(|e| match e {
            UpstreamError::NotFound { detail, .. } => UpstreamError::Protocol(format!("token service: {detail}")),
            other => other,
        })?;
        let parsed: TokenResponse = response
            .json()
            .await
            .map_err(|e| UpstreamError::Protocol(format!("token service sent no JSON token: {e}")))?;
        let (token, lifetime) =
            parsed.into_token().ok_or_else(|| UpstreamError::Protocol("token service answer has no token".into()))?;
        self.tokens.insert(challenge.clone(), token, lifetime, Instant::now());
        Ok(())
    }

    fn basic_authorization(&self) -> Option<HeaderValue> {
        use base64::Engine as _;
        let c = self.credentials.as_ref()?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password));
        let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    fn record(&self, kind: Kind, started: Instant, status: Option<StatusCode>) {
        let status = status.map_or_else(|| "error".to_owned(), |s| s.as_u16().to_string());
        self.metrics.upstream_requests.get_or_create(&UpstreamLabels { kind, status }).inc();
        self.metrics
            .upstream_latency
            .get_or_create(&crate::metrics::KindLabel { kind })
            .observe(started.elapsed().as_secs_f64());
    }
}

fn bearer(token: &str) -> HeaderValue {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).unwrap_or_else(|_| HeaderValue::from_static(""));
    value.set_sensitive(true);
    value
}

fn identity_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    headers
}

fn accept_headers(accept: &HeaderValue) -> HeaderMap {
    let mut headers = identity_headers();
    headers.insert(header::ACCEPT, accept.clone());
    headers
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// The upstream's `Docker-Content-Digest`, if it sent one; a malformed one is an error.
fn digest_header(headers: &HeaderMap) -> Result<Option<Digest>, UpstreamError> {
    let Some(value) = headers.get(DOCKER_CONTENT_DIGEST) else { return Ok(None) };
    let text = value.to_str().map_err(|_| UpstreamError::Protocol("non-ASCII Docker-Content-Digest".into()))?;
    Digest::parse(text.trim())
        .map(Some)
        .map_err(|e| UpstreamError::Protocol(format!("upstream Docker-Content-Digest: {e}")))
}

/// Content must arrive as stored: a compressed transfer would not hash to its digest.
fn check_identity_encoding(headers: &HeaderMap) -> Result<(), UpstreamError> {
    match headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()) {
        None => Ok(()),
        Some(encoding) if encoding.trim().eq_ignore_ascii_case("identity") => Ok(()),
        Some(encoding) => Err(UpstreamError::Protocol(format!("upstream sent Content-Encoding {encoding} unasked"))),
    }
}

/// Turns a non-success status into the matching error.
async fn check_status(response: reqwest::Response, what: Object) -> Result<reqwest::Response, UpstreamError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
    let url = response.url().clone();
    let detail = read_error_body(response).await;
    let detail = format!("{url}: {status} {detail}").trim_end().to_owned();
    Err(match status {
        StatusCode::NOT_FOUND => UpstreamError::NotFound { what, detail },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => UpstreamError::Denied(detail),
        StatusCode::TOO_MANY_REQUESTS => UpstreamError::RateLimited { retry_after, detail },
        s if s.is_server_error() => UpstreamError::ServerError { status, detail },
        _ => UpstreamError::Protocol(detail),
    })
}

async fn read_error_body(response: reqwest::Response) -> String {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_ERROR_BODY {
            body.truncate(MAX_ERROR_BODY);
            break;
        }
    }
    String::from_utf8_lossy(&body).split_whitespace().collect::<Vec<_>>().join(" ")
}

fn describe_reqwest(error: &reqwest::Error, url: &Url) -> String {
    let mut text = format!("{url}: {error}");
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let u = |s: &str| Url::parse(s).unwrap();
        assert!(same_origin(&u("https://r.io/v2/a"), &u("https://r.io:443/v2/b")));
        assert!(!same_origin(&u("https://r.io/v2/a"), &u("https://cdn.r.io/blob")));
        assert!(!same_origin(&u("https://r.io/"), &u("http://r.io/")));
        assert!(!same_origin(&u("http://127.0.0.1:5000/"), &u("http://127.0.0.1:5001/")));
    }

    #[test]
    fn compressed_transfers_are_refused() {
        let mut headers = HeaderMap::new();
        assert!(check_identity_encoding(&headers).is_ok());
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("identity"));
        assert!(check_identity_encoding(&headers).is_ok());
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert!(matches!(check_identity_encoding(&headers), Err(UpstreamError::Protocol(_))));
    }

    #[test]
    fn digest_headers_are_validated() {
        let mut headers = HeaderMap::new();
        assert!(digest_header(&headers).unwrap().is_none());
        headers.insert(DOCKER_CONTENT_DIGEST, HeaderValue::from_static("sha256:nope"));
        assert!(digest_header(&headers).is_err());
    }
}
