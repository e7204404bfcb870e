//! The controllers' runtime, as client-go's workqueue: keys are queued (deduplicated), one
//! reconcile per key at a time, a key that changes while it is being reconciled is queued again
//! afterwards, and reconciles can ask to run again later. Controllers run only while this server
//! leads.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tracing::Instrument;

#[derive(Debug)]
struct QueueState<K> {
    order: VecDeque<K>,
    queued: HashSet<K>,
    processing: HashSet<K>,
    dirty: HashSet<K>,
}

/// A deduplicating queue of keys to reconcile.
#[derive(Debug)]
pub struct WorkQueue<K> {
    state: Mutex<QueueState<K>>,
    notify: Notify,
}

impl<K: Clone + Eq + Hash + Send + 'static> WorkQueue<K> {
    pub fn new() -> Arc<Self> {
        Arc::new(WorkQueue {
            state: Mutex::new(QueueState {
                order: VecDeque::new(),
                queued: HashSet::new(),
                processing: HashSet::new(),
                dirty: HashSet::new(),
            }),
            notify: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState<K>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a key (a no-op when it is already waiting).
    pub fn add(&self, key: K) {
        let mut s = self.lock();
        if s.processing.contains(&key) {
            s.dirty.insert(key);
            return;
        }
        if s.queued.insert(key.clone()) {
            s.order.push_back(key);
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Queues a key after a delay.
    pub fn add_after(self: &Arc<Self>, key: K, delay: Duration) {
        let queue = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(key);
        });
    }

    /// Waits for the next key; it is then being processed until [`WorkQueue::done`].
    pub async fn next(&self) -> K {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.lock();
                if let Some(key) = s.order.pop_front() {
                    s.queued.remove(&key);
                    s.processing.insert(key.clone());
                    if !s.order.is_empty() {
                        self.notify.notify_one();
                    }
                    return key;
                }
            }
            notified.await;
        }
    }

    /// Marks a key processed; if it changed meanwhile it is queued again.
    pub fn done(&self, key: &K) {
        let mut s = self.lock();
        s.processing.remove(key);
        if s.dirty.remove(key) && s.queued.insert(key.clone()) {
            s.order.push_back(key.clone());
            drop(s);
            self.notify.notify_one();
        }
    }

    /// How many keys wait.
    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing until something changes.
    Idle,
    /// Run again after this long (a delayed reschedule, a deadline).
    After(Duration),
}

/// Runs `f` each time this server becomes leader (a controller's resync), until `leading`'s
/// sender is gone.
pub fn on_leadership(
    mut leading: watch::Receiver<bool>,
    span: tracing::Span,
    f: impl Fn() + Send + 'static,
) {
    let task = async move {
        loop {
            if leading.wait_for(|l| *l).await.is_err() {
                return;
            }
            f();
            if leading.wait_for(|l| !*l).await.is_err() {
                return;
            }
        }
    };
    tokio::spawn(task.instrument(span));
}

impl Next {
    /// Run again at `at` (Unix nanoseconds; a little after, so the deadline has passed), or
    /// only when something changes.
    pub fn at(at: Option<i64>, now: i64) -> Next {
        match at {
            Some(at) => Next::After(
                Duration::from_nanos(u64::try_from((at - now).max(0)).unwrap_or(0))
                    + Duration::from_millis(10),
            ),
            None => Next::Idle,
        }
    }
}

/// A level-triggered controller: told only *which* key to look at, never why.
#[async_trait::async_trait]
pub trait Controller: Send + Sync + 'static {
    type Key: Clone + Eq + Hash + Send + Sync + std::fmt::Debug + 'static;
    fn name(&self) -> &'static str;
    async fn reconcile(&self, key: &Self::Key) -> Result<Next, String>;
}

/// Runs `workers` reconcile loops over the queue while `leading` is true. Failed reconciles are
/// retried with a per-key backoff (the error policy).
pub fn run<C: Controller>(
    controller: Arc<C>,
    queue: Arc<WorkQueue<C::Key>>,
    workers: usize,
    leading: watch::Receiver<bool>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let failures: Arc<Mutex<HashMap<C::Key, u32>>> = Arc::new(Mutex::new(HashMap::new()));
    for worker in 0..workers {
        let controller = Arc::clone(&controller);
        let queue = Arc::clone(&queue);
        let failures = Arc::clone(&failures);
        let metrics = Arc::clone(&metrics);
        let mut leading = leading.clone();
        let span = tracing::info_span!("controller", name = controller.name(), worker);
        tokio::spawn(
            async move {
                loop {
                    if leading.wait_for(|l| *l).await.is_err() {
                        return;
                    }
                    let key = tokio::select! {
                        key = queue.next() => key,
                        _ = leading.wait_for(|l| !*l) => continue,
                    };
                    let started = std::time::Instant::now();
                    let result = controller.reconcile(&key).await;
                    metrics.controllers.reconciled(
                        controller.name(),
                        result.is_ok(),
                        started.elapsed(),
                    );
                    queue.done(&key);
                    let mut f = failures.lock().unwrap_or_else(|p| p.into_inner());
                    match result {
                        Ok(Next::Idle) => {
                            f.remove(&key);
                        }
                        Ok(Next::After(delay)) => {
                            f.remove(&key);
                            queue.add_after(key, delay);
                        }
                        Err(e) => {
                            let n = f.entry(key.clone()).or_insert(0);
                            *n = n.saturating_add(1);
                            let delay =
                                Duration::from_millis(50u64.saturating_mul(1u64 << (*n).min(8)));
                            tracing::warn!(?key, error = %e, retry_in = ?delay, "reconcile failed");
                            queue.add_after(key, delay);
                        }
                    }
                    tracing::trace!(elapsed = ?started.elapsed(), "reconciled");
                }
            }
            .instrument(span),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_deduplicated_and_requeued_when_dirty() {
        let q = WorkQueue::new();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        let k = q.next().await;
        assert_eq!(k, "a");
        q.add("a"); // changed while processing
        assert_eq!(q.len(), 1);
        q.done(&k);
        assert_eq!(q.len(), 2);
        assert_eq!(q.next().await, "b");
        assert_eq!(q.next().await, "a");
    }
}
