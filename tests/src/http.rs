//! A small blocking HTTP client for the suites (async reqwest driven on the support runtime).
//!
//! Unlike a convenience client it never hides a broken transfer: a body cut short or a connection
//! reset shows up in [`Resp::error`] next to the bytes that did arrive, and it never decodes a
//! `Content-Encoding` (reqwest is built without decompression here).

use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::Method;
use reqwest::header::HeaderMap;
use sha2::Digest;

use crate::rt;

/// What a request got: status, headers, the body (or as much as arrived), and how it ended.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    /// The body bytes received (empty when the body was only hashed, see [`Http::fetch`]).
    pub body: Vec<u8>,
    /// Number of body bytes received.
    pub len: u64,
    /// `sha256:<hex>` of the bytes received.
    pub digest: String,
    /// Set when the body did not arrive whole (connection cut, reset, or shorter than announced).
    pub error: Option<String>,
    /// Time from sending the request to the first body byte.
    pub first_byte: Option<Duration>,
    /// Time from sending the request to the end of the body.
    pub elapsed: Duration,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap_or("<non-ascii>").to_owned())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): status {} {:?}", self.status, self.text()))
    }

    /// The first OCI error code of an error body, asserting the body has the OCI shape
    /// `{"errors":[{"code","message",...}]}`.
    pub fn oci_error_code(&self) -> String {
        let v = self.json();
        let errors = v["errors"].as_array().unwrap_or_else(|| panic!("no `errors` array in {v}"));
        assert!(!errors.is_empty(), "empty `errors` array in {v}");
        let first = &errors[0];
        assert!(first["message"].is_string(), "error without a string `message`: {v}");
        first["code"].as_str().unwrap_or_else(|| panic!("error without a string `code`: {v}")).to_owned()
    }

    /// True when the whole announced body arrived without a transport error.
    pub fn complete(&self) -> bool {
        self.error.is_none()
    }
}

/// Blocking client; cheap to clone.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Http {
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(300))
            .build()
            .expect("build reqwest client");
        Self { client }
    }

    pub fn get(&self, url: &str) -> Resp {
        self.fetch(Method::GET, url, &[], true)
    }

    pub fn head(&self, url: &str) -> Resp {
        self.fetch(Method::HEAD, url, &[], true)
    }

    pub fn request(&self, method: Method, url: &str, headers: &[(&str, &str)]) -> Resp {
        self.fetch(method, url, headers, true)
    }

    /// Sends one request and reads the body to its end or its failure. With `keep_body` false the
    /// body is only counted and hashed (for the 1 GiB layer).
    pub fn fetch(&self, method: Method, url: &str, headers: &[(&str, &str)], keep_body: bool) -> Resp {
        rt().block_on(self.fetch_async(method, url, headers, keep_body))
    }

    pub async fn fetch_async(&self, method: Method, url: &str, headers: &[(&str, &str)], keep_body: bool) -> Resp {
        let start = Instant::now();
        let mut req = self.client.request(method.clone(), url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return Resp {
                    status: 0,
                    headers: HeaderMap::new(),
                    body: Vec::new(),
                    len: 0,
                    digest: crate::sha256_digest(b""),
                    error: Some(format!("request failed: {e:#}")),
                    first_byte: None,
                    elapsed: start.elapsed(),
                };
            }
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let announced: Option<u64> = if method == Method::HEAD {
            None
        } else {
            headers.get("content-length").and_then(|v| v.to_str().ok()?.parse().ok())
        };
        let mut hasher = sha2::Sha256::new();
        let mut body = Vec::new();
        let mut len = 0u64;
        let mut error = None;
        let mut first_byte = None;
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => {
                    if c.is_empty() {
                        continue;
                    }
                    first_byte.get_or_insert_with(|| start.elapsed());
                    hasher.update(&c);
                    len += c.len() as u64;
                    if keep_body {
                        body.extend_from_slice(&c);
                    }
                }
                Err(e) => {
                    error = Some(format!("body failed after {len} bytes: {e:#}"));
                    break;
                }
            }
        }
        if error.is_none()
            && let Some(n) = announced
            && n != len
        {
            error = Some(format!("body has {len} bytes, Content-Length announced {n}"));
        }
        Resp {
            status,
            headers,
            body,
            len,
            digest: format!("sha256:{}", hex::encode(hasher.finalize())),
            error,
            first_byte,
            elapsed: start.elapsed(),
        }
    }
}

/// Sends `METHOD target HTTP/1.1` exactly as written (no URL normalization, so `..` and `%2e`
/// reach the server) and returns (status, lowercase headers, body).
pub fn raw_request(host: &str, method: &str, target: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(host).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: */*\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut body = buf[split + 4..].to_vec();
    let mut lines = head.lines();
    let status: u16 =
        lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")) {
        body = dechunk(&body);
    }
    (status, headers, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..i]).split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + size]);
        b = &b[i + 2 + size + 2..];
    }
    out
}
