//! An S3-compatible server on loopback: `moto_server` (PyPI `moto[server]`), in memory. Moto
//! does not check request signatures, so the tests inspect the bucket with plain HTTP requests
//! (bucket creation, ListObjectsV2, ListMultipartUploads) and need no AWS SDK.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::{Http, command, free_port, require_program, tail, wait_for};

/// Access keys the proxy signs with (moto accepts any).
pub const ACCESS_KEY: &str = "it-access-key";
pub const SECRET_KEY: &str = "it-secret-key";

pub struct S3Server {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub key: String,
    pub size: u64,
    /// Without quotes. A multipart upload's is `<md5 of the part md5s>-<number of parts>`.
    pub etag: String,
}

impl S3Server {
    /// Starts `moto_server` and waits until it answers.
    pub fn start() -> Self {
        let bin = require_program("moto_server");
        let dir = tempfile::Builder::new().prefix("it-s3-").tempdir().unwrap();
        let port = free_port();
        let log = File::create(dir.path().join("moto.log")).unwrap();
        let child = command(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut s = Self { dir, port, child: Some(child) };
        let http = Http::new();
        let url = s.url();
        wait_for("moto_server to answer", Duration::from_secs(60), || {
            if let Some(status) = s.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("moto_server exited with {status}:\n{}", tail(&s.log_path(), 30));
            }
            (http.get(&format!("{url}/")).status == 200).then_some(())
        });
        s
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("moto.log")
    }

    /// Creates `bucket` (path-style `PUT /<bucket>`, region us-east-1).
    pub fn create_bucket(&self, bucket: &str) {
        let r = Http::new().request(reqwest::Method::PUT, &format!("{}/{bucket}", self.url()), &[]);
        assert_eq!(r.status, 200, "create bucket {bucket}: {}", r.text());
    }

    /// Every object under `prefix` (ListObjectsV2, following continuation tokens), by key.
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<Object> {
        let http = Http::new();
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = format!("{}/{bucket}?list-type=2&prefix={}", self.url(), encode(prefix));
            if let Some(t) = &token {
                url.push_str(&format!("&continuation-token={}", encode(t)));
            }
            let r = http.get(&url);
            assert_eq!(r.status, 200, "ListObjectsV2 {bucket}: {}", r.text());
            let xml = r.text();
            for contents in elements(&xml, "Contents") {
                let key = elements(&contents, "Key").pop().expect("Contents without Key");
                let size =
                    elements(&contents, "Size").pop().and_then(|s| s.parse().ok()).expect("Contents without Size");
                let etag = elements(&contents, "ETag").pop().unwrap_or_default();
                let etag = unescape(&etag).trim_matches('"').to_owned();
                out.push(Object { key: unescape(&key), size, etag });
            }
            if elements(&xml, "IsTruncated").first().map(String::as_str) == Some("true") {
                token = elements(&xml, "NextContinuationToken").pop();
                assert!(token.is_some(), "truncated listing without a continuation token");
            } else {
                break;
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Keys of the multipart uploads started and neither completed nor aborted.
    pub fn multipart_uploads(&self, bucket: &str) -> Vec<String> {
        let r = Http::new().get(&format!("{}/{bucket}?uploads", self.url()));
        assert_eq!(r.status, 200, "ListMultipartUploads {bucket}: {}", r.text());
        elements(&r.text(), "Upload")
            .iter()
            .map(|u| unescape(&elements(u, "Key").pop().expect("Upload without Key")))
            .collect()
    }

    /// Parts uploaded so far to the open multipart uploads of `key` (ListParts of each).
    pub fn uploaded_parts(&self, bucket: &str, key: &str) -> usize {
        let http = Http::new();
        let r = http.get(&format!("{}/{bucket}?uploads&prefix={}", self.url(), encode(key)));
        assert_eq!(r.status, 200, "ListMultipartUploads {bucket}: {}", r.text());
        elements(&r.text(), "Upload")
            .iter()
            .filter(|u| elements(u, "Key").pop().map(|k| unescape(&k)).as_deref() == Some(key))
            .map(|u| {
                let id = unescape(&elements(u, "UploadId").pop().expect("Upload without UploadId"));
                let r = http.get(&format!("{}/{bucket}/{key}?uploadId={}", self.url(), encode(&id)));
                assert_eq!(r.status, 200, "ListParts {key}: {}", r.text());
                elements(&r.text(), "Part").len()
            })
            .sum()
    }

    /// An object's bytes.
    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let r = Http::new().get(&format!("{}/{bucket}/{key}", self.url()));
        assert_eq!(r.status, 200, "GET {bucket}/{key}: {}", r.text());
        r.body
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- moto_server log ----\n{}", tail(&self.log_path(), 30));
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The text inside every `<name>…</name>` of `xml` (not nested in itself).
fn elements(xml: &str, name: &str) -> Vec<String> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(after[..j].to_owned());
        rest = &after[j + close.len()..];
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&")
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
