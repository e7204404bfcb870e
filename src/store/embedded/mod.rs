//! The embedded store: in-process, persisted with redb in `<data_dir>/store.redb`.
//!
//! - Reads of the current state come from an in-memory copy of the keys (a `BTreeMap`).
//! - Writes go to one writer thread that commits every waiting command in one durable redb
//!   transaction (group commit, see [`writer`]).
//! - Each revision's events (with prev values) are kept in a history table down to the compact
//!   revision: it serves reads at a past revision and watch replay ([`watch`]).
//! - Leases are persisted (id, TTL); deadlines live in memory and restart from the full TTL when
//!   the store is reopened, as etcd does after a leader change. A background task revokes
//!   expired leases through the writer.

mod codec;
mod db;
mod watch;
mod writer;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{
    Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak,
};
use std::time::Duration;

use async_trait::async_trait;
use redb::Database;
use tokio::sync::{Notify, broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tracing::Instrument;

pub use self::codec::DecodeError;
pub use self::db::EmbeddedError;
use self::db::RevisionEvents;
use self::writer::{Command, LeaseMap, Writer};
use super::error::StoreError;
use super::types::{KeyValue, LeaseId, Range, Revision, StoreKind, Txn, TxnResponse};
use super::{Store, WatchStream, validate_txn};

/// The most operations in one transaction list.
pub const EMBEDDED_MAX_TXN_OPS: usize = 4096;

/// The file name under the data directory.
pub const DB_FILE: &str = "store.redb";

/// Queued writes before callers wait.
const COMMAND_QUEUE: usize = 4096;
/// Committed batches a watcher may fall behind before it catches up from the history table.
const BROADCAST_CAPACITY: usize = 1024;
/// How long opening waits for a previous handle of the same file (in this process) to close.
const OPEN_WAIT: Duration = Duration::from_secs(10);
/// The longest the expiry task sleeps without looking at the leases.
const EXPIRY_IDLE: Duration = Duration::from_secs(1);

/// The committed state the readers see.
#[derive(Debug)]
pub(super) struct State {
    kvs: BTreeMap<String, KeyValue>,
    /// The keys attached to each lease.
    lease_keys: HashMap<LeaseId, BTreeSet<String>>,
    revision: Revision,
    compact_revision: Revision,
}

#[derive(Debug)]
pub(super) struct LeaseEntry {
    ttl: Duration,
    deadline: Instant,
}

/// What the store handle, the writer and the expiry task share.
#[derive(Debug)]
pub(super) struct Shared {
    state: RwLock<State>,
    leases: Mutex<LeaseMap>,
    lease_changed: Notify,
    closed: AtomicBool,
}

/// The revisions of one committed batch, as broadcast to watchers.
#[derive(Debug)]
pub(super) struct CommittedBatch {
    entries: Vec<RevisionEvents>,
}

// A poisoned lock only means another thread panicked while holding it; the data is still
// consistent for our purposes (every update is a few assignments), so keep going.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}
fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// The embedded store. Cheap to share through `Arc<dyn Store>`; dropping the last handle stops
/// the writer and the expiry task and closes the file.
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    shared: Arc<Shared>,
    cmd_tx: mpsc::Sender<Command>,
    /// The writer thread owns the database: once it stops (close, or the last handle dropped),
    /// the file is closed in that thread, never on the async runtime. Readers upgrade briefly,
    /// inside `spawn_blocking`.
    db: Weak<Database>,
    /// Kept to subscribe watchers; `None` once closed so that watchers see the end.
    events_tx: Mutex<Option<broadcast::Sender<Arc<CommittedBatch>>>>,
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .field("closed", &self.inner.shared.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Tuning knobs of the embedded store; the defaults suit production.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Committed batches a live watcher may fall behind before it catches up from the history
    /// table instead of the broadcast.
    pub broadcast_capacity: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            broadcast_capacity: BROADCAST_CAPACITY,
        }
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `data_dir`.
    pub async fn open(data_dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(data_dir, EmbeddedOptions::default()).await
    }

    /// [`EmbeddedStore::open`] with options.
    pub async fn open_with(
        data_dir: impl AsRef<Path>,
        options: EmbeddedOptions,
    ) -> Result<Self, StoreError> {
        let dir = data_dir.as_ref().to_path_buf();
        let path = dir.join(DB_FILE);
        let open_path = path.clone();
        let (database, loaded) = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir).map_err(EmbeddedError::from)?;
            let database = db::open_database(&open_path, OPEN_WAIT)?;
            let loaded = db::load(&database)?;
            Ok::<_, EmbeddedError>((database, loaded))
        })
        .await
        .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?
        .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;

        let now = Instant::now();
        let leases: LeaseMap = loaded
            .leases
            .into_iter()
            .map(|(id, ttl)| {
                (
                    id,
                    LeaseEntry {
                        ttl,
                        deadline: now + ttl,
                    },
                )
            })
            .collect();
        let shared = Arc::new(Shared {
            state: RwLock::new(State {
                kvs: loaded.kvs,
                lease_keys: loaded.lease_keys,
                revision: loaded.revision,
                compact_revision: loaded.compact_revision,
            }),
            leases: Mutex::new(leases),
            lease_changed: Notify::new(),
            closed: AtomicBool::new(false),
        });
        let database = Arc::new(database);
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (events_tx, _) = broadcast::channel(options.broadcast_capacity.max(1));
        let db_weak = Arc::downgrade(&database);
        let writer = Writer {
            db: database,
            shared: shared.clone(),
            rx: cmd_rx,
            events: events_tx.clone(),
            lease_seq: loaded.lease_seq,
        };
        let span = tracing::info_span!("store_writer", path = %path.display());
        std::thread::Builder::new()
            .name("store-writer".to_owned())
            .spawn(move || span.in_scope(|| writer.run()))
            .map_err(|e| StoreError::Backend(format!("spawning the store writer: {e}")))?;

        tracing::info!(path = %path.display(), revision = loaded.revision, "embedded store open");
        let inner = Arc::new(Inner {
            path: path.clone(),
            shared: shared.clone(),
            cmd_tx,
            db: db_weak,
            events_tx: Mutex::new(Some(events_tx)),
        });
        tokio::spawn(
            expire_leases(Arc::downgrade(&inner), shared)
                .instrument(tracing::info_span!("store_lease_expiry", path = %path.display())),
        );
        Ok(EmbeddedStore { inner })
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.inner.shared.closed.load(Ordering::Acquire) {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }

    fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.inner.db.upgrade().ok_or(StoreError::Closed)
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        self.check_open()?;
        let (tx, rx) = oneshot::channel();
        self.inner
            .cmd_tx
            .send(make(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

/// Rounds a TTL up to whole seconds, at least one (as the etcd backend does).
pub(crate) fn lease_ttl(ttl: Duration) -> Duration {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    Duration::from_secs(secs.max(1))
}

#[async_trait]
impl Store for EmbeddedStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Embedded
    }

    fn max_txn_ops(&self) -> usize {
        EMBEDDED_MAX_TXN_OPS
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.check_open()?;
        Ok(read(&self.inner.shared.state).kvs.get(key).cloned())
    }

    async fn range(&self, prefix: &str, at: Option<Revision>) -> Result<Range, StoreError> {
        self.check_open()?;
        match at {
            None => {
                let state = read(&self.inner.shared.state);
                let kvs = state
                    .kvs
                    .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(_, v)| v.clone())
                    .collect();
                Ok(Range {
                    kvs,
                    revision: state.revision,
                })
            }
            Some(at) if at < 1 => Err(StoreError::InvalidArgument(format!(
                "range revision {at} (must be >= 1)"
            ))),
            Some(at) => {
                let db = self.db()?;
                let prefix = prefix.to_owned();
                let kvs = tokio::task::spawn_blocking(move || db::range_at(&db, &prefix, at))
                    .await
                    .map_err(|e| StoreError::Backend(format!("range read: {e}")))??;
                Ok(Range { kvs, revision: at })
            }
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        validate_txn(&txn, EMBEDDED_MAX_TXN_OPS)?;
        self.call(|reply| Command::Txn { txn, reply }).await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        self.check_open()?;
        if from < 1 {
            return Err(StoreError::InvalidArgument(format!(
                "watch revision {from} (must be >= 1)"
            )));
        }
        // Subscribe before anything is read from history: see the watch module.
        let rx = lock(&self.inner.events_tx)
            .as_ref()
            .map(broadcast::Sender::subscribe)
            .ok_or(StoreError::Closed)?;
        Ok(watch::stream(
            prefix.to_owned(),
            from,
            rx,
            self.inner.db.clone(),
        ))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let ttl = lease_ttl(ttl);
        self.call(|reply| Command::Grant { ttl, reply }).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        self.check_open()?;
        let mut leases = lock(&self.inner.shared.leases);
        let entry = leases
            .get_mut(&lease)
            .ok_or(StoreError::LeaseNotFound(lease))?;
        let now = Instant::now();
        if entry.deadline <= now {
            // Expired; the expiry task is about to revoke it.
            return Err(StoreError::LeaseNotFound(lease));
        }
        entry.deadline = now + entry.ttl;
        Ok(entry.ttl)
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.call(|reply| Command::Revoke { lease, reply }).await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.call(|reply| Command::Compact { revision, reply })
            .await
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.check_open()?;
        Ok(read(&self.inner.shared.state).revision)
    }

    async fn close(&self) -> Result<(), StoreError> {
        if self.inner.shared.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        let stopped = self
            .inner
            .cmd_tx
            .send(Command::Shutdown { reply: tx })
            .await
            .is_ok();
        if stopped {
            // An error means the writer already exited: fine.
            let _ = rx.await;
        }
        lock(&self.inner.events_tx).take();
        self.inner.shared.lease_changed.notify_one();
        tracing::info!(path = %self.inner.path.display(), "embedded store closed");
        Ok(())
    }
}

/// Revokes leases past their deadline, through the writer.
async fn expire_leases(inner: Weak<Inner>, shared: Arc<Shared>) {
    loop {
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        let (due, next) = {
            let leases = lock(&shared.leases);
            let due: Vec<LeaseId> = leases
                .iter()
                .filter(|(_, e)| e.deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            let next = leases
                .values()
                .map(|e| e.deadline)
                .filter(|d| *d > now)
                .min();
            (due, next)
        };
        if !due.is_empty() {
            let Some(store) = inner.upgrade() else { return };
            let (tx, rx) = oneshot::channel();
            let sent = store
                .cmd_tx
                .send(Command::Expire {
                    leases: due,
                    reply: tx,
                })
                .await;
            drop(store);
            if sent.is_err() {
                return;
            }
            match rx.await {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "revoking expired leases failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(_) => return,
            }
        }
        let wake = next.map_or(now + EXPIRY_IDLE, |d| d.min(now + EXPIRY_IDLE));
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            () = shared.lease_changed.notified() => {}
        }
        if inner.strong_count() == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::store::EventKind;

    async fn collect(stream: &mut WatchStream, until: Revision) -> Vec<Revision> {
        let mut revs = Vec::new();
        while revs.last().is_none_or(|r| *r < until) {
            let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            revs.extend(item.iter().map(|e| e.kv.mod_revision));
        }
        revs
    }

    /// A watcher that falls behind the broadcast catches up from the history table.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lagging_watcher_catches_up() {
        let dir = tempfile::tempdir().unwrap();
        let options = EmbeddedOptions {
            broadcast_capacity: 2,
        };
        let store = EmbeddedStore::open_with(dir.path(), options).await.unwrap();
        let from = store.current_revision().await.unwrap() + 1;
        let mut stream = store.watch("/k", from).await.unwrap();
        let mut written = Vec::new();
        for i in 0..40 {
            written.push(store.put("/k", format!("{i}").into_bytes()).await.unwrap());
        }
        assert_eq!(
            collect(&mut stream, *written.last().unwrap()).await,
            written
        );
        // Live again after catching up.
        let more = store.put("/k", b"x".to_vec()).await.unwrap();
        assert_eq!(collect(&mut stream, more).await, vec![more]);
    }

    /// A lagging watcher whose history is compacted meanwhile gets `Compacted`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lagging_watcher_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let options = EmbeddedOptions {
            broadcast_capacity: 1,
        };
        let store = EmbeddedStore::open_with(dir.path(), options).await.unwrap();
        let first = store.put("/k", b"0".to_vec()).await.unwrap();
        let mut stream = store.watch("/k", first).await.unwrap();
        let item = stream.next().await.unwrap().unwrap();
        assert_eq!(item[0].kv.mod_revision, first);
        let mut last = first;
        for i in 0..10 {
            last = store.put("/k", format!("{i}").into_bytes()).await.unwrap();
        }
        store.compact(last).await.unwrap();
        assert_eq!(
            stream.next().await.unwrap(),
            Err(StoreError::Compacted {
                compact_revision: last
            })
        );
        assert!(stream.next().await.is_none());
    }

    /// Concurrent writers share commits but each write gets its own revision.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_assigns_one_revision_per_txn() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).await.unwrap());
        let r0 = store.current_revision().await.unwrap();
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { store.put(&format!("/g/{i}"), vec![1]).await.unwrap() })
            })
            .collect();
        let mut revs = Vec::new();
        for t in tasks {
            revs.push(t.await.unwrap());
        }
        revs.sort_unstable();
        assert_eq!(revs, (r0 + 1..=r0 + 64).collect::<Vec<_>>());
        let mut stream = store.watch("/g/", r0 + 1).await.unwrap();
        assert_eq!(
            collect(&mut stream, r0 + 64).await,
            (r0 + 1..=r0 + 64).collect::<Vec<_>>()
        );
    }

    /// State, revisions, history and leases survive a reopen; closing releases the file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopen_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).await.unwrap();
        let lease = store.grant_lease(Duration::from_secs(30)).await.unwrap();
        let r1 = store
            .put_with_lease("/a", b"1".to_vec(), lease)
            .await
            .unwrap();
        let r2 = store.put("/a", b"2".to_vec()).await.unwrap();
        store.close().await.unwrap();
        assert_eq!(store.get("/a").await, Err(StoreError::Closed));
        drop(store);

        let store = EmbeddedStore::open(dir.path()).await.unwrap();
        assert_eq!(store.current_revision().await.unwrap(), r2);
        let at = store.range("/a", Some(r1)).await.unwrap();
        assert_eq!(at.kvs[0].lease, Some(lease));
        assert_eq!(
            store.keep_alive(lease).await.unwrap(),
            Duration::from_secs(30)
        );
        let mut stream = store.watch("/", r1).await.unwrap();
        let events = stream.next().await.unwrap().unwrap();
        assert_eq!(events[0].kind, EventKind::Put);
        // Lease ids keep increasing across reopens.
        assert!(store.grant_lease(Duration::from_secs(1)).await.unwrap().0 > lease.0);
    }
}
