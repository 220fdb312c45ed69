//! An HTTP reverse proxy between the proxy under test and the registry.
//!
//! It (a) records every request (method, kind, name, reference, status, the headers that matter)
//! so tests can count upstream traffic exactly; (b) optionally enforces Bearer auth the Docker way
//! (401 + `WWW-Authenticate` challenge, a `/token` service issuing scoped, expiring tokens,
//! optionally behind Basic credentials); (c) can answer blob GETs with a 307 to a second "CDN"
//! listener on another loopback host (127.0.0.2) that serves the blob and records whether an
//! `Authorization` header arrived; (d) injects faults per rule; (e) can be stopped and started on
//! the same port to simulate an upstream outage.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use base64::Engine;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sha2::Digest;
use tokio::task::{AbortHandle, JoinSet};

use crate::{free_port, free_port_on, rt};

/// What a request was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `/v2/`
    Base,
    /// `/v2/<name>/manifests/<reference>`
    Manifest,
    /// `/v2/<name>/blobs/<digest>`
    Blob,
    /// `/token`
    Token,
    /// Served by the CDN listener.
    Cdn,
    /// Anything else (uploads, catalog, unknown paths).
    Other,
}

/// One request the shim (or its CDN) answered.
#[derive(Debug, Clone)]
pub struct Record {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub kind: Kind,
    pub name: Option<String>,
    /// Tag or digest for manifests, digest for blobs.
    pub reference: Option<String>,
    pub status: u16,
    pub authorization: Option<String>,
    pub accept: Option<String>,
    pub accept_encoding: Option<String>,
    pub range: Option<String>,
    pub at: Instant,
}

/// A fault to inject.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Send the response headers (with the true Content-Length), then this percentage of the body,
    /// then cut the connection.
    CutAfterPercent(u8),
    /// XOR 0xFF into the byte at the middle of the body (and the last one), keeping the length.
    FlipBytes,
    /// Answer 429 with `Retry-After: <secs>` and a Docker-style TOOMANYREQUESTS body.
    TooManyRequests { retry_after_secs: u64 },
    /// Answer 503.
    Unavailable,
    /// Answer with this status and a small JSON error body.
    Status(u16),
    /// Stream the body at about this many bytes per second.
    Trickle { bytes_per_sec: u64 },
    /// Stream at about `bytes_per_sec` and apply `then` (a cut or flip) on the way.
    Slow { bytes_per_sec: u64, then: Box<Fault> },
    /// Gzip the body and add `Content-Encoding: gzip` although nobody asked for it.
    GzipUnasked,
    /// Forward the upstream's answer without this header (e.g. `docker-content-digest`).
    StripHeader(&'static str),
    /// Wait this long before answering normally.
    Delay(Duration),
    /// Close the connection without any response.
    Reset,
}

impl Fault {
    fn is_body_fault(&self) -> bool {
        matches!(
            self,
            Fault::CutAfterPercent(_)
                | Fault::FlipBytes
                | Fault::Trickle { .. }
                | Fault::Slow { .. }
                | Fault::GzipUnasked
        )
    }
}

/// When a fault applies. Empty matchers match everything.
#[derive(Debug, Clone)]
pub struct FaultRule {
    pub kind: Option<Kind>,
    pub method: Option<http::Method>,
    /// Tag or digest (the last path component of a manifest or blob request).
    pub reference: Option<String>,
    /// How many matching requests get the fault; `None` = all of them.
    pub times: Option<usize>,
    pub fault: Fault,
}

impl FaultRule {
    /// Every GET of the blob `digest`.
    pub fn blob(digest: &str, fault: Fault) -> Self {
        Self {
            kind: Some(Kind::Blob),
            method: Some(http::Method::GET),
            reference: Some(digest.into()),
            times: None,
            fault,
        }
    }
    /// Every request (GET and HEAD) for manifests.
    pub fn manifests(fault: Fault) -> Self {
        Self { kind: Some(Kind::Manifest), method: None, reference: None, times: None, fault }
    }
    /// Every request of any kind except the token service.
    pub fn all(fault: Fault) -> Self {
        Self { kind: None, method: None, reference: None, times: None, fault }
    }
    pub fn times(mut self, n: usize) -> Self {
        self.times = Some(n);
        self
    }
    fn matches(&self, kind: Kind, method: &http::Method, reference: Option<&str>) -> bool {
        if kind == Kind::Token {
            return false;
        }
        self.kind.is_none_or(|k| k == kind)
            && self.method.as_ref().is_none_or(|m| m == method)
            && self.reference.as_deref().is_none_or(|r| Some(r) == reference)
            && self.times.is_none_or(|t| t > 0)
    }
}

/// Bearer auth settings.
#[derive(Debug, Clone)]
pub struct AuthOptions {
    /// When set, `/token` requires these Basic credentials.
    pub basic: Option<(String, String)>,
    /// `expires_in` of issued tokens; the shim rejects a token after it.
    pub token_ttl: Duration,
    /// The `service` in the challenge.
    pub service: String,
    /// Challenge every request, even with a freshly issued token (a broken token service).
    pub reject_all: bool,
}

impl Default for AuthOptions {
    fn default() -> Self {
        Self { basic: None, token_ttl: Duration::from_secs(300), service: "test-registry".into(), reject_all: false }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ShimOptions {
    pub auth: Option<AuthOptions>,
    /// Answer blob GETs with a 307 to the CDN listener.
    pub redirect_blobs: bool,
}

/// Faults drawn at random for manifest and blob requests that no [`FaultRule`] matched: each such
/// request gets one of `faults` with probability `percent`/100. The draws come from a generator
/// seeded with `seed`, so a run is reproducible up to the order in which concurrent requests
/// arrive (the n-th request always gets the n-th draw).
#[derive(Debug, Clone)]
pub struct RandomFaults {
    pub seed: u64,
    pub percent: u8,
    pub faults: Vec<Fault>,
}

struct RandomState {
    rng: crate::PseudoRandom,
    percent: u8,
    faults: Vec<Fault>,
    /// `(kind, method, reference, fault)` of every fault drawn, in order.
    injected: Vec<String>,
}

impl RandomState {
    fn draw(&mut self, kind: Kind, method: &http::Method, reference: Option<&str>) -> Option<Fault> {
        if !matches!(kind, Kind::Manifest | Kind::Blob) || self.faults.is_empty() {
            return None;
        }
        let mut b = [0u8; 8];
        self.rng.fill(&mut b);
        let n = u64::from_le_bytes(b);
        if n % 100 >= u64::from(self.percent) {
            return None;
        }
        let fault = self.faults[((n / 100) % self.faults.len() as u64) as usize].clone();
        self.injected.push(format!("{kind:?} {method} {} {fault:?}", reference.unwrap_or("-")));
        Some(fault)
    }
}

struct Token {
    scopes: Vec<String>,
    expires: Instant,
}

struct State {
    upstream: String,
    port: u16,
    cdn_port: u16,
    client: reqwest::Client,
    opts: Mutex<ShimOptions>,
    records: Mutex<Vec<Record>>,
    faults: Mutex<Vec<FaultRule>>,
    tokens: Mutex<HashMap<String, Token>>,
    bad_bodies: Mutex<Vec<String>>,
    token_seq: AtomicU64,
    random: Mutex<Option<RandomState>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Main,
    Cdn,
}

pub struct Shim {
    state: Arc<State>,
    main: Mutex<Option<AbortHandle>>,
    cdn: Mutex<Option<AbortHandle>>,
}

/// The CDN's loopback address: another host than the registry's 127.0.0.1.
pub const CDN_IP: &str = "127.0.0.2";

impl Shim {
    /// A shim in front of `upstream` (e.g. `http://127.0.0.1:5000`), anonymous, no redirects.
    pub fn start(upstream: &str) -> Self {
        Self::with_options(upstream, ShimOptions::default())
    }

    pub fn with_options(upstream: &str, opts: ShimOptions) -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("shim upstream client");
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_owned(),
            port: free_port(),
            cdn_port: free_port_on(CDN_IP),
            client,
            opts: Mutex::new(opts),
            records: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            tokens: Mutex::new(HashMap::new()),
            bad_bodies: Mutex::new(Vec::new()),
            token_seq: AtomicU64::new(1),
            random: Mutex::new(None),
        });
        let shim = Self { state, main: Mutex::new(None), cdn: Mutex::new(None) };
        shim.start_listener();
        *shim.cdn.lock().unwrap() = Some(listen(shim.state.clone(), CDN_IP, shim.state.cdn_port, Role::Cdn));
        shim
    }

    fn start_listener(&self) {
        let h = listen(self.state.clone(), "127.0.0.1", self.state.port, Role::Main);
        *self.main.lock().unwrap() = Some(h);
    }

    /// Stops listening and drops every open connection: the upstream is gone (connection refused).
    pub fn stop(&self) {
        if let Some(h) = self.main.lock().unwrap().take() {
            h.abort();
        }
        // Wait until the port refuses connections.
        crate::wait_for("shim to stop listening", Duration::from_secs(5), || {
            std::net::TcpStream::connect(("127.0.0.1", self.state.port)).is_err().then_some(())
        });
    }

    /// Listens again on the same port.
    pub fn resume(&self) {
        if self.main.lock().unwrap().is_none() {
            self.start_listener();
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.state.port)
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.state.port)
    }

    pub fn cdn_url(&self) -> String {
        format!("http://{CDN_IP}:{}", self.state.cdn_port)
    }

    pub fn set_redirect_blobs(&self, on: bool) {
        self.state.opts.lock().unwrap().redirect_blobs = on;
    }

    pub fn set_auth(&self, auth: Option<AuthOptions>) {
        self.state.opts.lock().unwrap().auth = auth;
    }

    /// Invalidates every issued token: the next request with one gets a 401 challenge.
    pub fn revoke_tokens(&self) {
        self.state.tokens.lock().unwrap().clear();
    }

    pub fn add_fault(&self, rule: FaultRule) {
        self.state.faults.lock().unwrap().push(rule);
    }

    pub fn clear_faults(&self) {
        self.state.faults.lock().unwrap().clear();
    }

    /// Starts (`Some`) or stops (`None`) random faults; the log of drawn faults is kept.
    pub fn set_random_faults(&self, random: Option<RandomFaults>) {
        let mut state = self.state.random.lock().unwrap();
        let injected = state.take().map(|s| s.injected).unwrap_or_default();
        *state = match random {
            Some(r) => Some(RandomState {
                rng: crate::PseudoRandom::new(r.seed),
                percent: r.percent,
                faults: r.faults,
                injected,
            }),
            None => Some(RandomState { rng: crate::PseudoRandom::new(0), percent: 0, faults: Vec::new(), injected }),
        };
    }

    /// Every random fault drawn so far: `"<kind> <method> <reference> <fault>"`.
    pub fn random_faults_injected(&self) -> Vec<String> {
        self.state.random.lock().unwrap().as_ref().map(|s| s.injected.clone()).unwrap_or_default()
    }

    /// Every request answered so far, in order.
    pub fn records(&self) -> Vec<Record> {
        self.state.records.lock().unwrap().clone()
    }

    /// Forgets the recorded requests.
    pub fn reset(&self) {
        self.state.records.lock().unwrap().clear();
        self.state.bad_bodies.lock().unwrap().clear();
    }

    /// Number of requests of `kind` with `method` (any status, challenges included).
    pub fn count(&self, kind: Kind, method: &str) -> usize {
        self.records().iter().filter(|r| r.kind == kind && r.method == method).count()
    }

    /// Number of requests of `kind` (any method, any status).
    pub fn count_kind(&self, kind: Kind) -> usize {
        self.records().iter().filter(|r| r.kind == kind).count()
    }

    /// Number of GET requests for the blob `digest` that were not auth challenges (redirects and
    /// CDN fetches are counted once: the CDN fetch is not counted here).
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.records()
            .iter()
            .filter(|r| r.kind == Kind::Blob && r.method == "GET" && r.status != 401)
            .filter(|r| r.reference.as_deref() == Some(digest))
            .count()
    }

    /// Requests for manifests with `method` and `reference` (tag or digest), challenges excluded.
    pub fn manifest_requests(&self, method: &str, reference: &str) -> usize {
        self.records()
            .iter()
            .filter(|r| r.kind == Kind::Manifest && r.method == method && r.status != 401)
            .filter(|r| r.reference.as_deref() == Some(reference))
            .count()
    }

    /// Requests that got past auth (status other than 401) of any blob or manifest kind.
    pub fn content_requests(&self) -> Vec<Record> {
        self.records()
            .into_iter()
            .filter(|r| matches!(r.kind, Kind::Blob | Kind::Manifest) && r.status != 401)
            .collect()
    }

    /// Requests the CDN listener served.
    pub fn cdn_records(&self) -> Vec<Record> {
        self.records().into_iter().filter(|r| r.kind == Kind::Cdn).collect()
    }

    /// `sha256:` digests of every body the shim sent altered by a fault (the corrupted bytes, or
    /// the prefix sent before a cut). No cache file may have one of these as its content.
    pub fn bad_body_digests(&self) -> Vec<String> {
        self.state.bad_bodies.lock().unwrap().clone()
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        if let Some(h) = self.main.lock().unwrap().take() {
            h.abort();
        }
        if let Some(h) = self.cdn.lock().unwrap().take() {
            h.abort();
        }
    }
}

fn listen(state: Arc<State>, ip: &str, port: u16, role: Role) -> AbortHandle {
    let std_listener = {
        let mut tries = 0;
        loop {
            match std::net::TcpListener::bind((ip, port)) {
                Ok(l) => break l,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("shim cannot bind {ip}:{port}: {e}"),
            }
        }
    };
    std_listener.set_nonblocking(true).unwrap();
    let _guard = rt().enter();
    let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
    rt().spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(_) => continue,
            };
            let state = state.clone();
            conns.spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(state.clone(), role, req));
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
            while conns.try_join_next().is_some() {}
        }
    })
    .abort_handle()
}

fn header(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// Splits `/v2/<name>/(manifests|blobs)/<reference>`.
fn classify(path: &str) -> (Kind, Option<String>, Option<String>) {
    if path == "/v2/" || path == "/v2" {
        return (Kind::Base, None, None);
    }
    if path == "/token" {
        return (Kind::Token, None, None);
    }
    if let Some(rest) = path.strip_prefix("/v2/") {
        for (marker, kind) in [("/manifests/", Kind::Manifest), ("/blobs/", Kind::Blob)] {
            if let Some(i) = rest.rfind(marker) {
                let name = &rest[..i];
                let reference = &rest[i + marker.len()..];
                if reference.contains('/') || reference.starts_with("uploads") {
                    return (Kind::Other, Some(name.into()), None);
                }
                return (kind, Some(name.into()), Some(reference.into()));
            }
        }
    }
    (Kind::Other, None, None)
}

type Resp = Response<Body>;

fn simple(status: u16, content_type: &str, body: impl Into<Body>) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("docker-distribution-api-version", "registry/2.0")
        .body(body.into())
        .unwrap()
}

fn json_error(status: u16, code: &str, message: &str) -> Resp {
    let body = serde_json::json!({"errors":[{"code":code,"message":message,"detail":null}]}).to_string();
    simple(status, "application/json", body)
}

async fn handle(state: Arc<State>, role: Role, req: Request<Incoming>) -> Result<Resp, std::io::Error> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let method = req.method().clone();
    let (mut kind, name, reference) = classify(&path);
    if role == Role::Cdn {
        kind = Kind::Cdn;
    }
    let mut record = Record {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        kind,
        name: name.clone(),
        reference: reference.clone(),
        status: 0,
        authorization: header(&req, "authorization"),
        accept: header(&req, "accept"),
        accept_encoding: header(&req, "accept-encoding"),
        range: header(&req, "range"),
        at: Instant::now(),
    };
    let outcome = respond(&state, role, kind, name.as_deref(), reference.as_deref(), req).await;
    match outcome {
        Ok(resp) => {
            record.status = resp.status().as_u16();
            state.records.lock().unwrap().push(record);
            Ok(resp)
        }
        Err(e) => {
            record.status = 0;
            state.records.lock().unwrap().push(record);
            Err(e)
        }
    }
}

async fn respond(
    state: &Arc<State>,
    role: Role,
    kind: Kind,
    name: Option<&str>,
    reference: Option<&str>,
    req: Request<Incoming>,
) -> Result<Resp, std::io::Error> {
    let opts = state.opts.lock().unwrap().clone();
    if kind == Kind::Token {
        return Ok(token_endpoint(state, &opts, &req));
    }
    if role == Role::Main
        && let Some(auth) = &opts.auth
        && let Some(challenge) = check_bearer(state, auth, kind, name, &req)
    {
        return Ok(challenge);
    }
    // Faults.
    let method = req.method().clone();
    let fault = {
        let mut faults = state.faults.lock().unwrap();
        let mut found = None;
        for rule in faults.iter_mut() {
            if rule.matches(if kind == Kind::Cdn { Kind::Blob } else { kind }, &method, reference) {
                if let Some(t) = rule.times.as_mut() {
                    *t -= 1;
                }
                found = Some(rule.fault.clone());
                break;
            }
        }
        drop(faults);
        let rule_kind = if kind == Kind::Cdn { Kind::Blob } else { kind };
        found.or_else(|| state.random.lock().unwrap().as_mut().and_then(|r| r.draw(rule_kind, &method, reference)))
    };
    match &fault {
        Some(Fault::TooManyRequests { retry_after_secs }) => {
            let mut r = json_error(429, "TOOMANYREQUESTS", "You have reached your pull rate limit.");
            r.headers_mut().insert("retry-after", HeaderValue::from(*retry_after_secs));
            return Ok(r);
        }
        Some(Fault::Unavailable) => return Ok(simple(503, "text/plain", "service unavailable\n")),
        Some(Fault::Status(code)) => return Ok(json_error(*code, "UNKNOWN", "injected status")),
        Some(Fault::Reset) => return Err(std::io::Error::other("injected reset")),
        Some(Fault::Delay(d)) => tokio::time::sleep(*d).await,
        _ => {}
    }
    if role == Role::Main && opts.redirect_blobs && kind == Kind::Blob && method == http::Method::GET {
        let location = format!("http://{CDN_IP}:{}/cdn{}", state.cdn_port, req.uri().path());
        return Ok(Response::builder()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header("location", location)
            .header("docker-distribution-api-version", "registry/2.0")
            .body(Body::empty())
            .unwrap());
    }
    // Forward to the registry.
    let upstream_path = match role {
        Role::Cdn => req.uri().path().strip_prefix("/cdn").unwrap_or(req.uri().path()).to_owned(),
        Role::Main => req.uri().path().to_owned(),
    };
    let url = match req.uri().query() {
        Some(q) => format!("{}{}?{}", state.upstream, upstream_path, q),
        None => format!("{}{}", state.upstream, upstream_path),
    };
    let mut up = state.client.request(method.clone(), &url);
    for (k, v) in req.headers() {
        let k = k.as_str();
        if matches!(k, "host" | "authorization" | "connection" | "content-length" | "transfer-encoding") {
            continue;
        }
        up = up.header(k, v);
    }
    let body = http_body_util::BodyExt::collect(req.into_body()).await.map_err(std::io::Error::other)?.to_bytes();
    if !body.is_empty() {
        up = up.body(body);
    }
    let upstream = match up.send().await {
        Ok(r) => r,
        Err(e) => return Ok(json_error(502, "UNKNOWN", &format!("shim cannot reach the registry: {e}"))),
    };
    let status = upstream.status().as_u16();
    let mut builder = Response::builder().status(status);
    let mut length: Option<u64> = None;
    let strip = match &fault {
        Some(Fault::StripHeader(h)) => Some(*h),
        _ => None,
    };
    for (k, v) in upstream.headers() {
        if matches!(k.as_str(), "transfer-encoding" | "connection")
            || strip.is_some_and(|h| k.as_str().eq_ignore_ascii_case(h))
        {
            continue;
        }
        if k.as_str() == "content-length" {
            length = v.to_str().ok().and_then(|s| s.parse().ok());
        }
        builder = builder.header(k, v);
    }
    let stream = upstream.bytes_stream().map(|r| r.map_err(std::io::Error::other));
    let body_fault = fault.filter(|f| f.is_body_fault() && method == http::Method::GET && (200..300).contains(&status));
    let body = match body_fault {
        None => Body::from_stream(stream),
        Some(Fault::GzipUnasked) => {
            let all: Vec<Bytes> = stream.map(|r| r.unwrap_or_default()).collect().await;
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            for b in &all {
                enc.write_all(b).unwrap();
            }
            let gz = enc.finish().unwrap();
            state.bad_bodies.lock().unwrap().push(crate::sha256_digest(&gz));
            let mut resp = builder.body(Body::from(gz.clone())).unwrap();
            resp.headers_mut().insert("content-encoding", HeaderValue::from_static("gzip"));
            resp.headers_mut().insert("content-length", HeaderValue::from(gz.len()));
            return Ok(resp);
        }
        Some(f) => Body::from_stream(faulty(stream, f, length.unwrap_or(0), state.clone())),
    };
    Ok(builder.body(body).unwrap())
}

/// Applies a body fault to a stream of `len` bytes.
fn faulty(
    inner: impl Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    fault: Fault,
    len: u64,
    state: Arc<State>,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let (trickle, fault) = match fault {
        Fault::Trickle { bytes_per_sec } => (Some(bytes_per_sec.max(20)), None),
        Fault::Slow { bytes_per_sec, then } => (Some(bytes_per_sec.max(20)), Some(*then)),
        f => (None, Some(f)),
    };
    let cut_at = match fault {
        Some(Fault::CutAfterPercent(p)) => Some(len * u64::from(p) / 100),
        _ => None,
    };
    let flips = match fault {
        Some(Fault::FlipBytes) => vec![len / 2, len.saturating_sub(1)],
        _ => vec![],
    };
    let altered = cut_at.is_some() || !flips.is_empty();
    async_stream(move |tx| async move {
        let mut inner = std::pin::pin!(inner);
        let mut offset = 0u64;
        let mut hasher = sha2::Sha256::new();
        while let Some(chunk) = inner.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let mut data = chunk.to_vec();
            for &f in &flips {
                if f >= offset && f < offset + data.len() as u64 {
                    data[(f - offset) as usize] ^= 0xFF;
                }
            }
            if let Some(cut) = cut_at
                && offset + data.len() as u64 >= cut
            {
                data.truncate((cut - offset) as usize);
                hasher.update(&data);
                if !data.is_empty() {
                    let _ = tx.send(Ok(Bytes::from(data))).await;
                }
                state.bad_bodies.lock().unwrap().push(format!("sha256:{}", hex::encode(hasher.finalize())));
                // Give the bytes a moment to leave, then fail the body: hyper drops the
                // connection with the response incomplete.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = tx.send(Err(std::io::Error::other("injected cut"))).await;
                return;
            }
            hasher.update(&data);
            offset += data.len() as u64;
            match trickle {
                Some(rate) => {
                    let piece = (rate / 20).max(1) as usize;
                    for p in data.chunks(piece) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        if tx.send(Ok(Bytes::copy_from_slice(p))).await.is_err() {
                            return;
                        }
                    }
                }
                None => {
                    if tx.send(Ok(Bytes::from(data))).await.is_err() {
                        return;
                    }
                }
            }
        }
        if altered {
            state.bad_bodies.lock().unwrap().push(format!("sha256:{}", hex::encode(hasher.finalize())));
        }
    })
}

/// A stream fed by a task through a channel.
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static
where
    F: FnOnce(tokio::sync::mpsc::Sender<std::io::Result<Bytes>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

fn challenge(state: &State, auth: &AuthOptions, name: Option<&str>, error: &str) -> Resp {
    let mut value = format!("Bearer realm=\"http://127.0.0.1:{}/token\",service=\"{}\"", state.port, auth.service);
    if let Some(n) = name {
        value.push_str(&format!(",scope=\"repository:{n}:pull\""));
    }
    if !error.is_empty() {
        value.push_str(&format!(",error=\"{error}\""));
    }
    let mut r = json_error(401, "UNAUTHORIZED", "authentication required");
    r.headers_mut().insert("www-authenticate", HeaderValue::from_str(&value).unwrap());
    r
}

/// `None` when the request carries a valid token for what it asks; else the 401 challenge.
fn check_bearer(
    state: &State,
    auth: &AuthOptions,
    kind: Kind,
    name: Option<&str>,
    req: &Request<Incoming>,
) -> Option<Resp> {
    if kind == Kind::Other && name.is_none() {
        return None;
    }
    let Some(token) = header(req, "authorization").and_then(|h| h.strip_prefix("Bearer ").map(str::to_owned)) else {
        return Some(challenge(state, auth, name, ""));
    };
    if auth.reject_all {
        return Some(challenge(state, auth, name, "invalid_token"));
    }
    let tokens = state.tokens.lock().unwrap();
    let Some(t) = tokens.get(&token) else {
        return Some(challenge(state, auth, name, "invalid_token"));
    };
    if t.expires < Instant::now() {
        return Some(challenge(state, auth, name, "invalid_token"));
    }
    match name {
        None => None,
        Some(n) => {
            let ok = t.scopes.iter().any(|s| {
                let mut parts = s.rsplitn(2, ':');
                let actions = parts.next().unwrap_or("");
                let rest = parts.next().unwrap_or("");
                rest == format!("repository:{n}") && actions.split(',').any(|a| a == "pull" || a == "*")
            });
            if ok { None } else { Some(challenge(state, auth, Some(n), "insufficient_scope")) }
        }
    }
}

fn token_endpoint(state: &State, opts: &ShimOptions, req: &Request<Incoming>) -> Resp {
    let Some(auth) = &opts.auth else {
        return json_error(404, "NOT_FOUND", "no token service");
    };
    if let Some((user, pass)) = &auth.basic {
        let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")));
        if header(req, "authorization").as_deref() != Some(expected.as_str()) {
            let mut r = json_error(401, "UNAUTHORIZED", "bad credentials");
            r.headers_mut().insert("www-authenticate", HeaderValue::from_static("Basic realm=\"token\""));
            return r;
        }
    }
    let mut service = None;
    let mut scopes = Vec::new();
    for pair in req.uri().query().unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "service" => service = Some(v),
            "scope" => scopes.extend(v.split(' ').map(str::to_owned)),
            _ => {}
        }
    }
    if service.as_deref() != Some(auth.service.as_str()) {
        return json_error(400, "DENIED", "wrong or missing service");
    }
    let seq = state.token_seq.fetch_add(1, Ordering::SeqCst);
    let token = format!("tok-{}-{seq}", state.port);
    state.tokens.lock().unwrap().insert(token.clone(), Token { scopes, expires: Instant::now() + auth.token_ttl });
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": auth.token_ttl.as_secs(),
        "issued_at": rfc3339_now(),
    });
    simple(200, "application/json", body.to_string())
}

fn percent_decode(s: &str) -> String {
    let s = s.replace('+', " ");
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn rfc3339_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil from days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}
