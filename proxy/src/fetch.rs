//! Blob downloads from the upstream, shared by every client that asks for the same blob while it
//! is in flight: one upstream GET, teed to a spool file that clients read as it grows, to the
//! cache's staging upload, and through the digest check that decides whether it is committed.
//!
//! A client never receives the final byte of a blob before the whole blob has hashed to its
//! digest: when the check fails the connection is cut, so the client holds a truncated body that
//! it rejects, never a complete wrong one. Range requests on a blob still in flight wait for the
//! check, because a slice in the middle cannot be checked on its own.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::{mpsc, watch};

use crate::cache::{BlobStore, BlobWriter, Verifier};
use crate::metrics::Metrics;
use crate::reference::{Digest, RepositoryName};
use crate::upstream::{UpstreamClient, UpstreamError};

/// Bytes gathered from the upstream before one spool write, when they arrive faster than we
/// write; a slow trickle is written (and so offered to clients) chunk by chunk.
const SPOOL_BATCH: usize = 1024 * 1024;
/// Largest chunk a client reader takes from the spool at once.
const READ_CHUNK: u64 = 1024 * 1024;

/// Why a shared download did not deliver a verified blob.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("spool file: {0}")]
    Spool(String),
}

/// The state of one download, as every reader sees it.
#[derive(Debug, Clone)]
pub enum FlightState {
    /// Waiting for the upstream's response headers.
    Connecting,
    /// Bytes `..written` are in the spool file; `length` is the upstream's Content-Length.
    Streaming {
        length: Option<u64>,
        written: u64,
    },
    /// All bytes are in the spool and hashed to the digest.
    Verified {
        length: u64,
    },
    Failed(FetchError),
}

/// One download in progress.
pub struct Flight {
    digest: Digest,
    spool: Arc<std::fs::File>,
    state: watch::Receiver<FlightState>,
}

/// The in-flight downloads, by digest.
pub struct Fetcher {
    inflight: Mutex<HashMap<Digest, Arc<Flight>>>,
    upstream: Arc<UpstreamClient>,
    blobs: BlobStore,
    spool_dir: PathBuf,
    metrics: Arc<Metrics>,
}

impl Fetcher {
    pub fn new(upstream: Arc<UpstreamClient>, blobs: BlobStore, spool_dir: PathBuf, metrics: Arc<Metrics>) -> Self {
        Self { inflight: Mutex::new(HashMap::new()), upstream, blobs, spool_dir, metrics }
    }

    /// The download of `digest`: the one in flight, or a new one started for `repository`.
    /// The boolean is true when this call joined a download someone else started.
    pub fn join_or_start(
        self: &Arc<Self>,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<(Arc<Flight>, bool), FetchError> {
        let mut inflight = self.inflight.lock().expect("inflight lock");
        if let Some(flight) = inflight.get(digest) {
            self.metrics.coalesced_requests.inc();
            return Ok((flight.clone(), true));
        }
        let spool = tempfile::tempfile_in(&self.spool_dir).map_err(|e| {
            FetchError::Spool(format!("cannot create a spool file in {}: {e}", self.spool_dir.display()))
        })?;
        let spool = Arc::new(spool);
        let (sender, receiver) = watch::channel(FlightState::Connecting);
        let flight = Arc::new(Flight { digest: digest.clone(), spool: spool.clone(), state: receiver });
        inflight.insert(digest.clone(), flight.clone());
        drop(inflight);

        let fetcher = self.clone();
        let repository = repository.clone();
        let digest = digest.clone();
        tokio::spawn(async move {
            fetcher.metrics.inflight_fetches.inc();
            let outcome = std::panic::AssertUnwindSafe(fetcher.download(&repository, &digest, spool, &sender))
                .catch_unwind()
                .await;
            if outcome.is_err() {
                sender.send_replace(FlightState::Failed(FetchError::Spool("download task panicked".into())));
            }
            // Removed only after the commit, so a request arriving now finds the blob either
            // here or in the cache, and never starts a second download.
            fetcher.inflight.lock().expect("inflight lock").remove(&digest);
            fetcher.metrics.inflight_fetches.dec();
        });
        Ok((flight, false))
    }

    /// Number of downloads in progress.
    pub fn inflight(&self) -> usize {
        self.inflight.lock().expect("inflight lock").len()
    }

    /// Waits until no download is in progress (polling: this runs once, at shutdown).
    pub async fn idle(&self) {
        while self.inflight() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Downloads into the spool and the cache, publishing progress; the final state is always
    /// `Verified` or `Failed`.
    async fn download(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        spool: Arc<std::fs::File>,
        state: &watch::Sender<FlightState>,
    ) {
        let fail = |error: FetchError| {
            tracing::warn!(%digest, %repository, %error, "blob download failed");
            state.send_replace(FlightState::Failed(error));
        };
        let response = match self.upstream.blob_get(repository, digest).await {
            Ok(response) => response,
            Err(error) => return fail(error.into()),
        };
        let length = response.length;
        state.send_replace(FlightState::Streaming { length, written: 0 });

        // The cache is best effort: when storage fails, clients are still served (uncached).
        let mut writer = match self.blobs.writer(digest).await {
            Ok(writer) => Some(writer),
            Err(error) => {
                tracing::error!(%digest, %error, "cannot stage blob in the cache; serving uncached");
                None
            }
        };
        let mut verifier = Verifier::new(digest);
        // The upstream is read by its own task, a batch or two ahead, so the network, the hash,
        // the spool and the cache upload all make progress at the same time.
        let (batches, mut incoming) = mpsc::channel(2);
        let reader = AbortOnDrop(tokio::spawn(read_batches(response.response, batches)));
        while let Some(item) = incoming.recv().await {
            let batch = match item {
                Ok(batch) => batch,
                Err(error) => {
                    abort_upload(&mut writer).await;
                    let at = verifier.length();
                    return fail(
                        UpstreamError::Unreachable(format!("upstream transfer broke after {at} bytes: {error}")).into(),
                    );
                }
            };
            let offset = verifier.length();
            if length.is_some_and(|len| offset + batch.len() as u64 > len) {
                abort_upload(&mut writer).await;
                self.metrics.integrity_failures.inc();
                return fail(
                    UpstreamError::Integrity("upstream sent more bytes than its Content-Length".into()).into(),
                );
            }
            self.metrics.upstream_bytes.inc_by(batch.len() as u64);
            // Hash and spool on the blocking pool while the cache upload takes the same bytes.
            let spooled = hash_and_spool(verifier, spool.clone(), offset, batch.clone());
            let cached = async {
                match writer.as_mut() {
                    Some(w) => w.write(batch).await,
                    None => Ok(()),
                }
            };
            let (spooled, cached) = tokio::join!(spooled, cached);
            verifier = match spooled {
                Ok(verifier) => verifier,
                Err(e) => {
                    abort_upload(&mut writer).await;
                    return fail(FetchError::Spool(e.to_string()));
                }
            };
            if let Err(error) = cached {
                tracing::error!(%digest, %error, "cache write failed; finishing uncached");
                abort_upload(&mut writer).await;
            }
            state.send_replace(FlightState::Streaming { length, written: verifier.length() });
        }
        drop(reader);
        let proof = match verifier.finish(length) {
            Ok(proof) => proof,
            Err(error) => {
                abort_upload(&mut writer).await;
                self.metrics.integrity_failures.inc();
                return fail(UpstreamError::Integrity(error.to_string()).into());
            }
        };
        // Clients may finish now: their bytes are verified. The commit (for a filesystem, an
        // fsync of the whole blob) happens after, and the flight stays in the map until it is
        // done, so a new request finds the blob here or in the cache, never neither.
        state.send_replace(FlightState::Verified { length: proof.length() });
        match writer.map(|w| w.commit(&proof)) {
            Some(commit) => match commit.await {
                Ok(()) => tracing::info!(%digest, %repository, bytes = proof.length(), "blob fetched and verified"),
                Err(error) => {
                    tracing::error!(%digest, %error, "cannot commit verified blob to the cache; served uncached")
                }
            },
            None => {
                tracing::info!(%digest, %repository, bytes = proof.length(), "blob fetched and verified (uncached)")
            }
        }
    }
}

/// Throws away a download's cache upload, if it still has one.
async fn abort_upload(writer: &mut Option<BlobWriter>) {
    if let Some(w) = writer.take() {
        w.abort().await;
    }
}

/// Hashes a batch and writes it to the spool at `offset`, off the async threads.
async fn hash_and_spool(
    mut verifier: Verifier,
    spool: Arc<std::fs::File>,
    offset: u64,
    batch: Bytes,
) -> std::io::Result<Verifier> {
    use std::os::unix::fs::FileExt;
    tokio::task::spawn_blocking(move || {
        spool.write_all_at(&batch, offset)?;
        verifier.update(&batch);
        Ok(verifier)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Reads the upstream body into batches: whatever has arrived, up to `SPOOL_BATCH`, without
/// waiting for more, so a slow trickle is passed on chunk by chunk. Ends after sending an error.
async fn read_batches(response: reqwest::Response, batches: mpsc::Sender<Result<Bytes, String>>) {
    let mut body = response.bytes_stream();
    while let Some(first) = body.next().await {
        let mut batch = BytesMut::new();
        let mut next = Some(first);
        let mut error = None;
        while let Some(item) = next.take() {
            match item {
                Ok(chunk) => batch.extend_from_slice(&chunk),
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
            if batch.len() >= SPOOL_BATCH {
                break;
            }
            next = body.next().now_or_never().flatten();
        }
        if !batch.is_empty() && batches.send(Ok(batch.freeze())).await.is_err() {
            return;
        }
        if let Some(error) = error {
            let _ = batches.send(Err(error)).await;
            return;
        }
    }
}

/// Aborts a task when dropped: the upstream reader must not outlive a download that gave up.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a reader learned once the upstream answered.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    /// The blob's length, when the upstream announced it (or it is already verified).
    pub length: Option<u64>,
}

impl Flight {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Waits for the upstream's response: its length, or why there is none.
    pub async fn started(&self) -> Result<Started, FetchError> {
        let mut state = self.state.clone();
        loop {
            match &*state.borrow_and_update() {
                FlightState::Connecting => {}
                FlightState::Streaming { length, .. } => return Ok(Started { length: *length }),
                FlightState::Verified { length } => return Ok(Started { length: Some(*length) }),
                FlightState::Failed(error) => return Err(error.clone()),
            }
            if state.changed().await.is_err() {
                return Err(FetchError::Spool("download ended without a result".into()));
            }
        }
    }

    /// Waits until the whole blob is verified; returns its length.
    pub async fn verified(&self) -> Result<u64, FetchError> {
        let mut state = self.state.clone();
        loop {
            match &*state.borrow_and_update() {
                FlightState::Verified { length } => return Ok(*length),
                FlightState::Failed(error) => return Err(error.clone()),
                _ => {}
            }
            if state.changed().await.is_err() {
                return Err(FetchError::Spool("download ended without a result".into()));
            }
        }
    }

    /// The blob's bytes from `start` (to `end`, exclusive, or to the end), as they arrive, with
    /// the last byte held back until the digest is verified; a bounded range waits for the
    /// verification before its first byte. Ends with an error when the
    /// download fails, which makes the server cut the client's connection.
    pub fn stream(self: &Arc<Self>, start: u64, end: Option<u64>) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
        let reader = Reader { flight: self.clone(), state: self.state.clone(), position: start, end };
        futures::stream::try_unfold(reader, |mut reader| async move {
            let chunk = reader.next_chunk().await?;
            Ok(chunk.map(|chunk| (chunk, reader)))
        })
        .boxed()
    }
}

struct Reader {
    flight: Arc<Flight>,
    state: watch::Receiver<FlightState>,
    position: u64,
    end: Option<u64>,
}

impl Reader {
    async fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            let (readable, end) = match &*self.state.borrow_and_update() {
                FlightState::Connecting => (0, self.end),
                // A range is a slice that cannot be checked on its own: nothing until verified.
                FlightState::Streaming { .. } if self.end.is_some() => (0, self.end),
                // Everything but the last byte written so far: the blob is only complete once
                // verified, so a client can never hold all of an unverified blob.
                FlightState::Streaming { written, .. } => (written.saturating_sub(1), self.end),
                FlightState::Verified { length } => (*length, Some(self.end.unwrap_or(*length).min(*length))),
                FlightState::Failed(error) => return Err(std::io::Error::other(error.to_string())),
            };
            let readable = end.map_or(readable, |end| readable.min(end));
            if self.position < readable {
                let len = (readable - self.position).min(READ_CHUNK);
                let chunk = read_spool(&self.flight.spool, self.position, len as usize).await?;
                self.position += chunk.len() as u64;
                return Ok(Some(chunk));
            }
            if end.is_some_and(|end| self.position >= end)
                && matches!(*self.state.borrow(), FlightState::Verified { .. })
            {
                return Ok(None);
            }
            if self.state.changed().await.is_err() {
                // The sender is gone; only a final state may have been left behind.
                if !matches!(*self.state.borrow(), FlightState::Verified { .. } | FlightState::Failed(_)) {
                    return Err(std::io::Error::other("download ended without a result"));
                }
            }
        }
    }
}

async fn read_spool(spool: &Arc<std::fs::File>, offset: u64, len: usize) -> std::io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let spool = spool.clone();
    tokio::task::spawn_blocking(move || {
        let mut buffer = vec![0; len];
        spool.read_exact_at(&mut buffer, offset)?;
        Ok(Bytes::from(buffer))
    })
    .await
    .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use axum::body::Body;
    use axum::extract::State;
    use futures::StreamExt;
    use object_store::memory::InMemory;
    use tokio::sync::mpsc;

    use super::*;
    use crate::config::UpstreamConfig;
    use crate::hashing::digest_of;
    use crate::reference::Algorithm;

    /// An upstream whose single blob body the test feeds chunk by chunk.
    struct Upstream {
        requests: AtomicUsize,
        length: u64,
        body: Mutex<Option<mpsc::Receiver<Result<Bytes, std::io::Error>>>>,
    }

    async fn serve_blob(State(up): State<Arc<Upstream>>) -> axum::response::Response {
        up.requests.fetch_add(1, Ordering::SeqCst);
        let receiver = up.body.lock().unwrap().take().expect("one request only");
        let stream = tokio_stream_from(receiver);
        axum::response::Response::builder().header("content-length", up.length).body(Body::from_stream(stream)).unwrap()
    }

    fn tokio_stream_from(
        mut receiver: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
        futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
    }

    struct Harness {
        fetcher: Arc<Fetcher>,
        upstream: Arc<Upstream>,
        blobs: BlobStore,
        feed: mpsc::Sender<Result<Bytes, std::io::Error>>,
        repository: RepositoryName,
        _spool: tempfile::TempDir,
    }

    async fn harness(length: u64) -> Harness {
        let (feed, receiver) = mpsc::channel(16);
        let upstream = Arc::new(Upstream { requests: AtomicUsize::new(0), length, body: Mutex::new(Some(receiver)) });
        let app = axum::Router::new().route("/v2/{*rest}", axum::routing::get(serve_blob)).with_state(upstream.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let config = UpstreamConfig { url: format!("http://{addr}").parse().unwrap(), ..Default::default() };
        let metrics = Arc::new(Metrics::new());
        let client = Arc::new(UpstreamClient::new(&config, None, metrics.clone()).unwrap());
        let blobs = BlobStore::new(Arc::new(InMemory::new()), 1024 * 1024);
        let spool = tempfile::tempdir().unwrap();
        let fetcher = Arc::new(Fetcher::new(client, blobs.clone(), spool.path().to_owned(), metrics));
        Harness { fetcher, upstream, blobs, feed, repository: RepositoryName::parse("a/b").unwrap(), _spool: spool }
    }

    /// Reads what the stream offers within a short wait, without requiring it to end.
    async fn read_available(stream: &mut BoxStream<'static, Result<Bytes, std::io::Error>>) -> Vec<u8> {
        let mut got = Vec::new();
        while let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
            got.extend_from_slice(&chunk.unwrap());
        }
        got
    }

    #[tokio::test]
    async fn streams_early_but_holds_the_last_byte_until_verified() {
        let content: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let digest = digest_of(Algorithm::Sha256, &content);
        let h = harness(content.len() as u64).await;
        let (flight, joined) = h.fetcher.join_or_start(&h.repository, &digest).unwrap();
        assert!(!joined);
        let (second, joined) = h.fetcher.join_or_start(&h.repository, &digest).unwrap();
        assert!(joined, "a concurrent miss must join the download in flight");

        h.feed.send(Ok(Bytes::copy_from_slice(&content[..150_000]))).await.unwrap();
        assert_eq!(flight.started().await.unwrap().length, Some(content.len() as u64));
        let mut first_client = flight.stream(0, None);
        let early = read_available(&mut first_client).await;
        assert_eq!(early, content[..149_999], "bytes must flow before the upstream finishes, minus one held back");

        h.feed.send(Ok(Bytes::copy_from_slice(&content[150_000..]))).await.unwrap();
        let rest: Vec<Bytes> = first_client.map(|c| c.unwrap()).collect().await;
        assert_eq!([early, rest.concat()].concat(), content);
        let other: Vec<Bytes> = second.stream(0, None).map(|c| c.unwrap()).collect().await;
        assert_eq!(other.concat(), content);
        assert_eq!(h.upstream.requests.load(Ordering::SeqCst), 1);
        // The commit follows the verification; the flight is forgotten once it is done.
        tokio::time::timeout(Duration::from_secs(5), h.fetcher.idle()).await.unwrap();
        assert_eq!(h.blobs.size(&digest).await.unwrap(), Some(content.len() as u64));
    }

    #[tokio::test]
    async fn wrong_bytes_cut_every_client_and_are_never_cached() {
        let content = vec![1u8; 100_000];
        let digest = digest_of(Algorithm::Sha256, &content);
        let h = harness(content.len() as u64).await;
        let (flight, _) = h.fetcher.join_or_start(&h.repository, &digest).unwrap();
        let mut corrupted = content.clone();
        corrupted[99_999] = 2;
        h.feed.send(Ok(Bytes::from(corrupted))).await.unwrap();
        drop(h.feed);
        let mut received = Vec::new();
        let mut failed = false;
        let mut stream = flight.stream(0, None);
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => received.extend_from_slice(&chunk),
                Err(_) => failed = true,
            }
        }
        assert!(failed, "the stream must end in an error so the connection is cut");
        assert!(received.len() < content.len(), "a client received a complete unverified body");
        assert!(matches!(flight.verified().await, Err(FetchError::Upstream(UpstreamError::Integrity(_)))));
        assert_eq!(h.blobs.size(&digest).await.unwrap(), None);
        // The failed download is forgotten, so the next request tries the upstream again.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(h.fetcher.inflight(), 0);
    }

    #[tokio::test]
    async fn a_broken_transfer_is_an_error_not_a_short_blob() {
        let content = vec![9u8; 50_000];
        let digest = digest_of(Algorithm::Sha256, &content);
        let h = harness(content.len() as u64).await;
        let (flight, _) = h.fetcher.join_or_start(&h.repository, &digest).unwrap();
        h.feed.send(Ok(Bytes::copy_from_slice(&content[..25_000]))).await.unwrap();
        h.feed.send(Err(std::io::Error::other("cut"))).await.unwrap();
        assert!(flight.verified().await.is_err());
        assert_eq!(h.blobs.size(&digest).await.unwrap(), None);
    }

    #[tokio::test]
    async fn ranges_of_a_blob_in_flight_wait_for_verification() {
        let content: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let digest = digest_of(Algorithm::Sha256, &content);
        let h = harness(content.len() as u64).await;
        let (flight, _) = h.fetcher.join_or_start(&h.repository, &digest).unwrap();
        h.feed.send(Ok(Bytes::copy_from_slice(&content[..5_000]))).await.unwrap();
        let mut slice = flight.stream(100, Some(200));
        assert_eq!(read_available(&mut slice).await, b"", "a slice of an unverified blob was sent");
        h.feed.send(Ok(Bytes::copy_from_slice(&content[5_000..]))).await.unwrap();
        assert_eq!(flight.verified().await.unwrap(), 10_000);
        let middle: Vec<Bytes> = slice.map(|c| c.unwrap()).collect().await;
        assert_eq!(middle.concat(), content[100..200]);
        let tail: Vec<Bytes> = flight.stream(9_990, Some(10_000)).map(|c| c.unwrap()).collect().await;
        assert_eq!(tail.concat(), content[9_990..]);
    }
}
