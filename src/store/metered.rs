//! A [`Store`] that times every operation into the metrics registry, wrapped around any backend.

use super::{
    KeyValue, LeaseId, Range, Revision, Store, StoreError, StoreKind, Txn, TxnResponse, WatchStream,
};
use crate::metrics::Metrics;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Times the wrapped store's operations.
#[derive(Debug)]
pub struct Metered {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl Metered {
    pub fn wrap(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Arc<dyn Store> {
        Arc::new(Metered { inner, metrics })
    }

    async fn timed<T>(&self, op: &'static str, fut: impl std::future::Future<Output = T>) -> T {
        let started = Instant::now();
        let out = fut.await;
        self.metrics.store.observe(op, started.elapsed());
        out
    }
}

#[async_trait]
impl Store for Metered {
    fn kind(&self) -> StoreKind {
        self.inner.kind()
    }
    fn max_txn_ops(&self) -> usize {
        self.inner.max_txn_ops()
    }
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.timed("get", self.inner.get(key)).await
    }
    async fn range(&self, prefix: &str, at: Option<Revision>) -> Result<Range, StoreError> {
        self.timed("range", self.inner.range(prefix, at)).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.timed("txn", self.inner.txn(txn)).await
    }
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        self.timed("watch", self.inner.watch(prefix, from)).await
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.timed("grant_lease", self.inner.grant_lease(ttl)).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        self.timed("keep_alive", self.inner.keep_alive(lease)).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.timed("revoke_lease", self.inner.revoke_lease(lease))
            .await
    }
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.timed("compact", self.inner.compact(revision)).await
    }
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.timed("current_revision", self.inner.current_revision())
            .await
    }
    async fn close(&self) -> Result<(), StoreError> {
        self.inner.close().await
    }
}
