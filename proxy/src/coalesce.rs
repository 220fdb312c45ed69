//! Request coalescing: concurrent identical lookups share one future, so a burst of cold pulls
//! of one tag costs the upstream one HEAD and one GET (Docker Hub counts manifest GETs against
//! the pull rate limit).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};

/// Shares the result of one in-flight computation per key among everyone who asks meanwhile.
pub struct Coalescer<K, V: Clone> {
    inflight: Arc<Mutex<HashMap<K, Shared<BoxFuture<'static, V>>>>>,
}

impl<K, V: Clone> Default for Coalescer<K, V> {
    fn default() -> Self {
        Self { inflight: Arc::default() }
    }
}

impl<K, V> Coalescer<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Runs `work` for `key`, or joins the run already in flight. The entry is removed by the
    /// run itself when it finishes, so a caller that gives up early leaves nothing stale.
    pub async fn run(&self, key: K, work: impl FnOnce() -> BoxFuture<'static, V>) -> V {
        let shared = {
            let mut inflight = self.inflight.lock().expect("coalescer lock");
            if let Some(existing) = inflight.get(&key) {
                existing.clone()
            } else {
                let map = self.inflight.clone();
                let cleanup_key = key.clone();
                let future = work();
                let shared = async move {
                    let value = future.await;
                    map.lock().expect("coalescer lock").remove(&cleanup_key);
                    value
                }
                .boxed()
                .shared();
                inflight.insert(key, shared.clone());
                shared
            }
        };
        shared.await
    }

    /// Number of keys in flight.
    pub fn len(&self) -> usize {
        self.inflight.lock().expect("coalescer lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let coalescer = Arc::new(Coalescer::<&'static str, usize>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let callers = (0..20).map(|_| {
            let coalescer = coalescer.clone();
            let runs = runs.clone();
            tokio::spawn(async move {
                coalescer
                    .run("alpine:latest", move || {
                        async move {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            runs.fetch_add(1, Ordering::SeqCst) + 41
                        }
                        .boxed()
                    })
                    .await
            })
        });
        let results = futures::future::join_all(callers).await;
        assert!(results.into_iter().all(|r| r.unwrap() == 41));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(coalescer.is_empty());
        // A later call runs again: results are shared only while in flight.
        assert_eq!(coalescer.run("alpine:latest", || async { 7 }.boxed()).await, 7);
    }
}
