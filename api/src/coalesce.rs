//! Reads of concurrent requests merged into one ("read coalescing").
//!
//! On PostgreSQL a served query's store reads are one statement (see `pg_bundle`), and on the
//! benchmark's 2-core machine the server's cost of a statement is mostly its fixed part: the
//! round trip, a backend's wake-up, the executor's start. Thirty requests in flight asked
//! thirty statements of one person each. [`Coalesce`] asks at most `running` statements at
//! once; a request arriving while they run waits for the next one, which then answers every
//! request that waited, like the audit log's group commit (`audit::ReadRecorder`). A lone
//! request goes straight through, so a quiet hub's latency is unchanged.
//!
//! Each merged read runs as a task of its own, so a request that goes away (its client hung
//! up) never leaves the others without an answer.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

use crate::error::ApiError;

/// What a merged read answers each of its requests: the whole answer, shared.
pub type Answer<V> = Result<Arc<V>, Arc<ApiError>>;

type Waiter<K, V> = (K, oneshot::Sender<Answer<V>>);

struct State<K, V> {
    /// Requests waiting for the next merged read, in arrival order.
    waiting: Vec<Waiter<K, V>>,
    /// Merged reads running now.
    running: usize,
}

/// Merges the reads of requests that arrive while earlier ones run.
pub struct Coalesce<K, V> {
    state: Arc<Mutex<State<K, V>>>,
    /// The most merged reads running at once.
    running: usize,
    /// The most requests one merged read answers.
    batch: usize,
}

impl<K, V> std::fmt::Debug for Coalesce<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalesce")
            .field("running", &self.running)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The next merged read's requests: the longest-waiting, at most `batch` of them.
fn take<K, V>(waiting: &mut Vec<Waiter<K, V>>, batch: usize) -> Vec<Waiter<K, V>> {
    let n = waiting.len().min(batch);
    waiting.drain(..n).collect()
}

/// Gives back a running slot if a merged read's task ends without doing so itself (a panic
/// in the read). The requests still waiting then get an error rather than waiting for a read
/// nobody will start.
struct Slot<K, V> {
    state: Arc<Mutex<State<K, V>>>,
    held: bool,
}

impl<K, V> Drop for Slot<K, V> {
    fn drop(&mut self) {
        if self.held {
            let mut state = lock(&self.state);
            state.running -= 1;
            state.waiting.clear();
        }
    }
}

impl<K: Send + 'static, V: Send + Sync + 'static> Coalesce<K, V> {
    /// At most `running` merged reads at once, each answering at most `batch` requests
    /// (both at least 1).
    pub fn new(running: usize, batch: usize) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                waiting: Vec::new(),
                running: 0,
            })),
            running: running.max(1),
            batch: batch.max(1),
        }
    }

    /// Reads `key` together with whatever else is asked meanwhile. `load` reads a merged
    /// batch's keys at once; every caller of one `Coalesce` must pass the same `load`, since
    /// one caller's may read the others' keys.
    pub async fn read<F, Fut>(&self, key: K, load: F) -> Answer<V>
    where
        F: Fn(Vec<K>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, ApiError>> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let first = {
            let mut state = lock(&self.state);
            state.waiting.push((key, answer));
            (state.running < self.running).then(|| {
                state.running += 1;
                take(&mut state.waiting, self.batch)
            })
        };
        if let Some(first) = first {
            let slot = Slot {
                state: self.state.clone(),
                held: true,
            };
            tokio::spawn(run(slot, self.batch, first, load));
        }
        answered.await.unwrap_or_else(|_| {
            Err(Arc::new(ApiError::Internal(anyhow::anyhow!(
                "a merged read stopped before it answered"
            ))))
        })
    }
}

/// Runs merged reads while requests wait, then gives the slot back.
async fn run<K, V, F, Fut>(mut slot: Slot<K, V>, batch: usize, first: Vec<Waiter<K, V>>, load: F)
where
    F: Fn(Vec<K>) -> Fut,
    Fut: Future<Output = Result<V, ApiError>>,
{
    let mut next = first;
    loop {
        let (keys, answers): (Vec<K>, Vec<_>) = next.into_iter().unzip();
        let answer: Answer<V> = load(keys).await.map(Arc::new).map_err(Arc::new);
        for waiter in answers {
            // A request that went away no longer listens; the others still get theirs.
            let _ = waiter.send(answer.clone());
        }
        let mut state = lock(&slot.state);
        if state.waiting.is_empty() {
            // Under the same lock a newcomer checks `running`, so none is left waiting.
            state.running -= 1;
            slot.held = false;
            return;
        }
        next = take(&mut state.waiting, batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Requests arriving while a read runs are answered together by the next one, each with
    /// the merged answer; a lone request is read alone.
    #[tokio::test]
    async fn waiting_requests_share_one_read() {
        let coalesce = Arc::new(Coalesce::<u32, Vec<u32>>::new(1, 64));
        let loads = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let load = {
            let loads = loads.clone();
            move |keys: Vec<u32>| {
                let loads = loads.clone();
                let mut released = released.clone();
                async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    released
                        .wait_for(|r| *r)
                        .await
                        .map_err(|e| ApiError::internal(e, "test"))?;
                    Ok(keys)
                }
            }
        };
        let first = tokio::spawn({
            let (c, l) = (coalesce.clone(), load.clone());
            async move { c.read(1, l).await }
        });
        // The first read is running (it has counted itself) before the others arrive.
        while loads.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let later: Vec<_> = (2..=4)
            .map(|k| {
                let (c, l) = (coalesce.clone(), load.clone());
                tokio::spawn(async move { c.read(k, l).await })
            })
            .collect();
        // Each of them has queued behind the running read.
        while lock(&coalesce.state).waiting.len() < 3 {
            tokio::task::yield_now().await;
        }
        release.send_replace(true);
        assert_eq!(*first.await.unwrap().unwrap(), vec![1]);
        for request in later {
            assert_eq!(*request.await.unwrap().unwrap(), vec![2, 3, 4]);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 2);
        let state = lock(&coalesce.state);
        assert_eq!((state.running, state.waiting.len()), (0, 0));
    }

    /// A failed read answers each of its requests with the error, and the next read runs.
    #[tokio::test]
    async fn an_error_reaches_every_request_of_its_read() {
        let coalesce = Coalesce::<u32, u32>::new(2, 8);
        let failing = |_: Vec<u32>| async { Err(ApiError::NotFound("nothing".into())) };
        let answer = coalesce.read(7, failing).await;
        assert_eq!(answer.map_err(|e| e.code()), Err("NOT_FOUND"));
        let fine = coalesce
            .read(8, |keys: Vec<u32>| async move { Ok(keys[0]) })
            .await;
        assert_eq!(*fine.unwrap(), 8);
    }

    /// A read that panics gives its slot back and fails the requests waiting on it, rather
    /// than leaving later requests queued behind a read that never ends.
    #[tokio::test]
    async fn a_panicking_read_frees_its_slot() {
        let coalesce = Coalesce::<u32, u32>::new(1, 8);
        let panicking = |_: Vec<u32>| async { panic!("the read failed badly") };
        assert!(coalesce.read(1, panicking).await.is_err());
        let fine = coalesce
            .read(2, |keys: Vec<u32>| async move { Ok(keys[0]) })
            .await;
        assert_eq!(*fine.unwrap(), 2);
    }

    /// No more requests than `batch` share a read.
    #[test]
    fn a_batch_takes_the_longest_waiting_first() {
        let mut waiting: Vec<Waiter<u32, u32>> =
            (0..5).map(|k| (k, oneshot::channel().0)).collect();
        let batch: Vec<u32> = take(&mut waiting, 3).into_iter().map(|w| w.0).collect();
        assert_eq!(batch, vec![0, 1, 2]);
        assert_eq!(waiting.len(), 2);
    }
}
