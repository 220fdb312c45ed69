//! Load generation: blob pulls (one client, N in parallel, a burst of cold pulls) with a Rust
//! HTTP client that counts bytes without copying them anywhere, and manifest request rates with
//! wrk (C, epoll, one thread: it costs the server the least CPU on a two-core machine).

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tokio::sync::Barrier;

use crate::error::{BenchError, Result};

/// Pulls one blob to the end; returns its length. With `digest`, also checks its bytes.
pub async fn pull(client: &reqwest::Client, url: &str, want_len: u64, digest: Option<&str>) -> Result<u64> {
    let mut resp = client.get(url).send().await.map_err(BenchError::http(format!("GET {url}")))?;
    if resp.status().as_u16() != 200 {
        return Err(BenchError::Status { what: format!("GET {url}"), status: resp.status().as_u16() });
    }
    let mut hasher = digest.map(|_| Sha256::new());
    let mut got = 0u64;
    while let Some(chunk) = resp.chunk().await.map_err(BenchError::http(format!("read {url}")))? {
        got += chunk.len() as u64;
        if let Some(h) = hasher.as_mut() {
            h.update(&chunk);
        }
    }
    if got != want_len {
        return Err(BenchError::ShortBody { what: format!("GET {url}"), got, want: want_len });
    }
    if let (Some(h), Some(want)) = (hasher, digest) {
        let got = format!("sha256:{}", hex::encode(h.finalize()));
        if got != want {
            return Err(BenchError::WrongDigest { what: format!("GET {url}"), got, want: want.to_owned() });
        }
    }
    Ok(got)
}

/// Times one full pull.
pub async fn timed_pull(client: &reqwest::Client, url: &str, want_len: u64) -> Result<Duration> {
    let start = Instant::now();
    pull(client, url, want_len, None).await?;
    Ok(start.elapsed())
}

/// `clients` tasks, released together, each pulling the blob `rounds` times back to back.
/// Returns the bytes received, the wall time, and how many pulls failed (with the first error).
pub async fn parallel_pulls(
    client: &reqwest::Client,
    url: &str,
    want_len: u64,
    clients: usize,
    rounds: usize,
) -> (u64, Duration, usize, Option<String>) {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (client, url, barrier) = (client.clone(), url.to_owned(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut results = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                results.push(pull(&client, &url, want_len, None).await);
            }
            results
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let (mut bytes, mut failures, mut first_error) = (0, 0, None);
    for task in tasks {
        let results = match task.await {
            Ok(results) => results,
            Err(e) => vec![Err(BenchError::Other(format!("client task died: {e}")))],
        };
        for r in results {
            match r {
                Ok(n) => bytes += n,
                Err(e) => {
                    failures += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }
    (bytes, start.elapsed(), failures, first_error)
}

/// Requests/s from `wrk -t1 -cN -dS` with an Accept header. Any non-2xx/3xx answer or socket
/// error fails the measurement: a rate of error responses is not a rate of manifests.
pub fn wrk(url: &str, accept: &str, connections: u32, seconds: u32) -> Result<f64> {
    let out = Command::new("wrk")
        .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s")])
        .args(["-H", &format!("Accept: {accept}"), url])
        .output()
        .map_err(BenchError::io("run wrk"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let errors: u64 = text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
                return v.trim().parse::<u64>().ok();
            }
            // "Socket errors: connect 0, read 0, write 0, timeout 0"
            l.strip_prefix("Socket errors:")
                .map(|v| v.split(',').filter_map(|f| f.split_whitespace().last()?.parse::<u64>().ok()).sum())
        })
        .sum();
    if errors > 0 {
        return Err(BenchError::WrkErrors { url: url.to_owned(), errors, output: text });
    }
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:").and_then(|v| v.trim().parse().ok()))
        .ok_or(BenchError::WrkOutput(text))
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
