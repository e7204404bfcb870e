//! The Store: Caravan's desired state, with etcd's semantics.
//!
//! Revisioned keys (one global revision counter, incremented by each write transaction),
//! transactions guarded by comparisons on `mod_revision` / `create_revision` / `version` /
//! `value`, watches from a revision, leases with a TTL, and compaction. Two backends implement
//! [`Store`] and pass one conformance suite (`tests/store_conformance.rs`):
//!
//! - [`embedded::EmbeddedStore`]: in-process, persisted with redb under a data directory;
//! - [`etcd::EtcdStore`]: an etcd cluster through `etcd-client`.
//!
//! The rest of Caravan only sees `Arc<dyn Store>`, obtained with [`open`]. See docs/store.md.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub mod embedded;
mod error;
pub mod etcd;
pub mod metered;
mod spec;
mod types;

pub use error::StoreError;
pub use spec::{ETCD_DEFAULT_MAX_TXN_OPS, EmbeddedConfig, EtcdConfig, StoreSpec, TlsConfig};
pub use types::{
    CasOutcome, Compare, CompareOp, CompareTarget, Event, EventKind, KeyValue, LeaseId, Op,
    OpResult, Range, Revision, StoreKind, Txn, TxnResponse,
};

/// A stream of watch events. Each item holds all the events of one or more revisions, in
/// revision order; every revision is delivered once. A compacted start revision yields
/// `Err(StoreError::Compacted { .. })` and ends the stream: re-list, then watch again.
pub type WatchStream = futures::stream::BoxStream<'static, Result<Vec<Event>, StoreError>>;

/// A revisioned key-value store with etcd's semantics.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    fn kind(&self) -> StoreKind;

    /// The most operations a transaction list (compares, success, failure) may hold: 128 for
    /// etcd (its default `--max-txn-ops`), more for the embedded store.
    fn max_txn_ops(&self) -> usize;

    /// The current value of `key`.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// All keys starting with `prefix`, sorted by key, at the current revision or at the past
    /// revision `at` (an MVCC read). `at` below the compact revision gives
    /// [`StoreError::Compacted`], above the current revision [`StoreError::FutureRevision`].
    async fn range(&self, prefix: &str, at: Option<Revision>) -> Result<Range, StoreError>;

    /// Runs a transaction atomically. Write operations of one transaction share one revision;
    /// a transaction that changes nothing does not bump the revision.
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError>;

    /// Every event on keys starting with `prefix` with revision `>= from` (`from >= 1`; use
    /// `current_revision() + 1` for "from now"), each exactly once and in order, including
    /// those that happened before the call. Puts over an existing key and deletes carry `prev`.
    /// When `from` is compacted the stream yields `Err(Compacted)` and ends.
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError>;

    /// Grants a lease. The TTL is rounded up to whole seconds (at least 1 s; etcd may raise it
    /// to its minimum).
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError>;

    /// Refreshes a lease; returns its TTL. Unknown or expired lease: [`StoreError::LeaseNotFound`].
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError>;

    /// Revokes a lease, deleting the keys attached to it (one revision of delete events).
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// Drops history below `revision`: afterwards reads at and watches from a revision
    /// `< revision` fail with [`StoreError::Compacted`]. Compacting at or below the current
    /// compact revision is itself `Compacted`; above the current revision, `FutureRevision`.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    /// The current store revision.
    async fn current_revision(&self) -> Result<Revision, StoreError>;

    /// Stops background work and releases resources (the embedded store releases its data
    /// directory). Later calls fail with [`StoreError::Closed`]. Dropping the store does the
    /// same, without waiting.
    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Unconditional put; returns the write's revision.
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        Ok(self
            .txn(Txn::new().and_then([Op::put(key, value)]))
            .await?
            .revision)
    }

    /// Unconditional put attached to a lease; returns the write's revision.
    async fn put_with_lease(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> Result<Revision, StoreError> {
        let txn = Txn::new().and_then([Op::put_with_lease(key, value, lease)]);
        Ok(self.txn(txn).await?.revision)
    }

    /// Deletes `key`; returns its previous value (`None`: it did not exist).
    async fn delete(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let resp = self.txn(Txn::new().and_then([Op::delete(key)])).await?;
        Ok(match resp.results.into_iter().next() {
            Some(OpResult::Delete { deleted }) => deleted.into_iter().next(),
            _ => None,
        })
    }

    /// Deletes every key starting with `prefix`; returns the deleted values.
    async fn delete_prefix(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let resp = self
            .txn(Txn::new().and_then([Op::delete_prefix(prefix)]))
            .await?;
        Ok(match resp.results.into_iter().next() {
            Some(OpResult::Delete { deleted }) => deleted,
            _ => Vec::new(),
        })
    }

    /// Writes `value` if `key` was last written at `expected_mod_revision` (0: if it is
    /// absent). On conflict returns the current value, ready for a retry.
    async fn compare_and_swap(
        &self,
        key: &str,
        expected_mod_revision: Revision,
        value: Vec<u8>,
    ) -> Result<CasOutcome, StoreError> {
        let txn = Txn::new()
            .when([Compare::unchanged(key, expected_mod_revision)])
            .and_then([Op::put(key, value)])
            .or_else([Op::get(key)]);
        Ok(cas_outcome(self.txn(txn).await?))
    }

    /// Creates `key` unless it exists.
    async fn put_if_absent(&self, key: &str, value: Vec<u8>) -> Result<CasOutcome, StoreError> {
        self.compare_and_swap(key, 0, value).await
    }

    /// Deletes `key` if it was last written at `expected_mod_revision`.
    async fn compare_and_delete(
        &self,
        key: &str,
        expected_mod_revision: Revision,
    ) -> Result<CasOutcome, StoreError> {
        let txn = Txn::new()
            .when([Compare::unchanged(key, expected_mod_revision)])
            .and_then([Op::delete(key)])
            .or_else([Op::get(key)]);
        Ok(cas_outcome(self.txn(txn).await?))
    }
}

fn cas_outcome(resp: TxnResponse) -> CasOutcome {
    if resp.succeeded {
        CasOutcome::Written {
            revision: resp.revision,
        }
    } else {
        CasOutcome::Conflict {
            current: resp.get_result(0).cloned(),
        }
    }
}

/// Opens the store a spec names.
pub async fn open(spec: &StoreSpec) -> Result<Arc<dyn Store>, StoreError> {
    match spec {
        StoreSpec::Embedded(cfg) => {
            let dir = cfg.data_dir.as_ref().ok_or_else(|| {
                StoreError::Config("the embedded store needs a data directory".to_owned())
            })?;
            Ok(Arc::new(embedded::EmbeddedStore::open(dir).await?))
        }
        StoreSpec::Etcd(cfg) => Ok(Arc::new(etcd::EtcdStore::connect(cfg).await?)),
    }
}

/// Checks what every backend rejects, before a transaction is sent: too many operations, and a
/// branch that writes the same key twice (etcd's "duplicate key given in txn request").
pub(crate) fn validate_txn(txn: &Txn, max_ops: usize) -> Result<(), StoreError> {
    for n in [txn.compares.len(), txn.success.len(), txn.failure.len()] {
        if n > max_ops {
            return Err(StoreError::TooManyOps {
                ops: n,
                max: max_ops,
            });
        }
    }
    for compare in &txn.compares {
        check_key(&compare.key)?;
    }
    for branch in [&txn.success, &txn.failure] {
        let mut puts = std::collections::BTreeSet::new();
        for op in branch.iter() {
            match op {
                Op::Put { key, .. } => {
                    check_key(key)?;
                    if !puts.insert(key.as_str()) {
                        return Err(StoreError::InvalidTxn(format!(
                            "key {key:?} is written twice in one branch"
                        )));
                    }
                }
                Op::Delete { key } | Op::Get { key } => check_key(key)?,
                Op::DeletePrefix { .. } | Op::Range { .. } => {}
            }
        }
        for op in branch.iter() {
            let clash = match op {
                Op::Delete { key } => puts.contains(key.as_str()).then_some(key.as_str()),
                Op::DeletePrefix { prefix } => puts
                    .range::<str, _>((
                        std::ops::Bound::Included(prefix.as_str()),
                        std::ops::Bound::Unbounded,
                    ))
                    .next()
                    .copied()
                    .filter(|k| k.starts_with(prefix.as_str())),
                _ => None,
            };
            if let Some(key) = clash {
                return Err(StoreError::InvalidTxn(format!(
                    "key {key:?} is both written and deleted in one branch"
                )));
            }
        }
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::InvalidArgument("empty key".to_owned()));
    }
    Ok(())
}

/// The smallest key greater than every key starting with `prefix` (etcd's range end), or `None`
/// when there is none (the prefix is empty or all 0xff).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end(b"/a/"), Some(b"/a0".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b""), None);
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }

    #[test]
    fn validate_rejects_duplicates_and_overlaps() {
        let ok = Txn::new().and_then([Op::put("/a", "1"), Op::put("/b", "2"), Op::delete("/c")]);
        assert!(validate_txn(&ok, 128).is_ok());
        let dup = Txn::new().and_then([Op::put("/a", "1"), Op::put("/a", "2")]);
        assert!(matches!(
            validate_txn(&dup, 128),
            Err(StoreError::InvalidTxn(_))
        ));
        let overlap = Txn::new().or_else([Op::put("/a/x", "1"), Op::delete_prefix("/a/")]);
        assert!(matches!(
            validate_txn(&overlap, 128),
            Err(StoreError::InvalidTxn(_))
        ));
        let fine = Txn::new().and_then([Op::put("/b/x", "1"), Op::delete_prefix("/a/")]);
        assert!(validate_txn(&fine, 128).is_ok());
        let many = Txn::new().and_then((0..5).map(|i| Op::put(format!("/k{i}"), "v")));
        assert_eq!(
            validate_txn(&many, 4),
            Err(StoreError::TooManyOps { ops: 5, max: 4 })
        );
        let empty = Txn::new().and_then([Op::put("", "v")]);
        assert!(matches!(
            validate_txn(&empty, 4),
            Err(StoreError::InvalidArgument(_))
        ));
    }
}
