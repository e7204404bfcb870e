//! The single writer: group commit.
//!
//! One thread owns every write. It takes all the commands waiting in its channel, evaluates them
//! in order against the current state plus the changes of the earlier commands of the batch
//! (each write transaction gets its own revision), commits the whole batch in ONE durable redb
//! transaction, then publishes it: in-memory state, watch broadcast, and finally the answers.
//! A failed commit changes nothing and fails every command of the batch.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use redb::{Database, Durability};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

use super::codec;
use super::db::{
    EmbeddedError, HISTORY, KV, LEASES, META, META_COMPACT, META_LEASE_SEQ, META_REVISION,
    RevisionEvents,
};
use super::{CommittedBatch, LeaseEntry, Shared, State, lock, read, write};
use crate::store::error::StoreError;
use crate::store::types::{
    Event, EventKind, KeyValue, LeaseId, Op, OpResult, Revision, Txn, TxnResponse,
};

/// The most commands committed together.
const MAX_BATCH: usize = 1024;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(super) enum Command {
    Txn {
        txn: Txn,
        reply: Reply<TxnResponse>,
    },
    Grant {
        ttl: Duration,
        reply: Reply<LeaseId>,
    },
    Revoke {
        lease: LeaseId,
        reply: Reply<()>,
    },
    /// Revoke these leases if they are still past their deadline.
    Expire {
        leases: Vec<LeaseId>,
        reply: Reply<()>,
    },
    Compact {
        revision: Revision,
        reply: Reply<()>,
    },
    /// Finish the commands before this one, close the file, then answer.
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// An answer held back until the batch is committed.
type Pending = Box<dyn FnOnce(Option<&StoreError>) + Send>;

fn pending<T: Send + 'static>(reply: Reply<T>, result: Result<T, StoreError>) -> Pending {
    Box::new(move |failure| {
        // The caller may have gone away: nothing to do then.
        let _ = reply.send(match failure {
            Some(e) => Err(e.clone()),
            None => result,
        });
    })
}

pub(super) struct Writer {
    pub db: Arc<Database>,
    pub shared: Arc<Shared>,
    pub rx: mpsc::Receiver<Command>,
    pub events: broadcast::Sender<Arc<CommittedBatch>>,
    pub lease_seq: i64,
}

impl Writer {
    /// Runs until every sender is gone or a `Shutdown` arrives.
    pub fn run(mut self) {
        tracing::debug!("store writer started");
        while let Some(first) = self.rx.blocking_recv() {
            let mut cmds = vec![first];
            while cmds.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(cmd) => cmds.push(cmd),
                    Err(_) => break,
                }
            }
            if let Some(ack) = self.process(cmds) {
                self.rx.close();
                drop(self);
                let _ = ack.send(());
                tracing::debug!("store writer shut down");
                return;
            }
        }
        tracing::debug!("store writer stopped: store dropped");
    }

    /// Processes one batch; returns the shutdown acknowledgement if one was asked for.
    fn process(&mut self, cmds: Vec<Command>) -> Option<oneshot::Sender<()>> {
        let mut shutdown = None;
        let mut answers: Vec<Pending> = Vec::with_capacity(cmds.len());
        let changes = {
            let state = read(&self.shared.state);
            let mut batch = Batch::new(&state, &self.shared, self.lease_seq);
            for cmd in cmds {
                if shutdown.is_some() {
                    // Dropping the command closes its reply: the caller sees `Closed`.
                    continue;
                }
                match cmd {
                    Command::Txn { txn, reply } => answers.push(pending(reply, batch.txn(txn))),
                    Command::Grant { ttl, reply } => {
                        answers.push(pending(reply, Ok(batch.grant(ttl))));
                    }
                    Command::Revoke { lease, reply } => {
                        answers.push(pending(reply, batch.revoke(lease)));
                    }
                    Command::Expire { leases, reply } => {
                        batch.expire(&leases, Instant::now());
                        answers.push(pending(reply, Ok(())));
                    }
                    Command::Compact { revision, reply } => {
                        answers.push(pending(reply, batch.compact(revision)));
                    }
                    Command::Shutdown { reply } => shutdown = Some(reply),
                }
            }
            batch.into_changes()
        };
        if changes.writes() {
            if let Err(e) = self.persist(&changes) {
                tracing::error!(error = %e, "store commit failed");
                let err = StoreError::from(e);
                for answer in answers {
                    answer(Some(&err));
                }
                return shutdown;
            }
            self.lease_seq = changes.lease_seq;
            self.publish(changes);
        }
        for answer in answers {
            answer(None);
        }
        shutdown
    }

    /// Commits the batch in one durable redb transaction.
    fn persist(&self, changes: &Changes) -> Result<(), EmbeddedError> {
        let mut wtx = self.db.begin_write()?;
        wtx.set_durability(Durability::Immediate)?;
        let mut buf = Vec::new();
        {
            let mut kv = wtx.open_table(KV)?;
            for (key, value) in &changes.overlay {
                match value {
                    Some(v) => {
                        buf.clear();
                        codec::encode_kv(v, &mut buf);
                        kv.insert(key.as_str(), buf.as_slice())?;
                    }
                    None => {
                        kv.remove(key.as_str())?;
                    }
                }
            }
        }
        {
            let mut history = wtx.open_table(HISTORY)?;
            for entry in &changes.history {
                buf.clear();
                codec::encode_events(&entry.events, &mut buf)?;
                history.insert(entry.revision, buf.as_slice())?;
            }
            if let Some(compact) = changes.compact_to {
                history.retain_in(..compact, |_, _| false)?;
            }
        }
        {
            let mut leases = wtx.open_table(LEASES)?;
            for (id, ttl) in &changes.granted {
                let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                leases.insert(id.0, ms)?;
            }
            for id in &changes.revoked {
                leases.remove(id.0)?;
            }
        }
        {
            let mut meta = wtx.open_table(META)?;
            meta.insert(META_REVISION, changes.revision)?;
            if changes.lease_seq_changed {
                meta.insert(META_LEASE_SEQ, changes.lease_seq)?;
            }
            if let Some(compact) = changes.compact_to {
                meta.insert(META_COMPACT, compact)?;
            }
        }
        wtx.commit()?;
        Ok(())
    }

    /// Makes a committed batch visible: state, leases, then the watch broadcast.
    fn publish(&self, changes: Changes) {
        {
            let mut state = write(&self.shared.state);
            let State {
                kvs, lease_keys, ..
            } = &mut *state;
            for (key, value) in changes.overlay {
                let new_lease = value.as_ref().and_then(|kv| kv.lease);
                let old = match value {
                    Some(kv) => kvs.insert(key.clone(), kv),
                    None => kvs.remove(&key),
                };
                if let Some(old_lease) = old.and_then(|kv| kv.lease)
                    && new_lease != Some(old_lease)
                    && let Some(keys) = lease_keys.get_mut(&old_lease)
                {
                    keys.remove(&key);
                    if keys.is_empty() {
                        lease_keys.remove(&old_lease);
                    }
                }
                if let Some(lease) = new_lease {
                    lease_keys.entry(lease).or_default().insert(key);
                }
            }
            state.revision = changes.revision;
            if let Some(compact) = changes.compact_to {
                state.compact_revision = compact;
            }
        }
        if !changes.granted.is_empty() || !changes.revoked.is_empty() {
            let now = Instant::now();
            let mut leases = lock(&self.shared.leases);
            for (id, ttl) in changes.granted {
                leases.insert(
                    id,
                    LeaseEntry {
                        ttl,
                        deadline: now + ttl,
                    },
                );
            }
            for id in &changes.revoked {
                leases.remove(id);
            }
            drop(leases);
            self.shared.lease_changed.notify_one();
        }
        if !changes.history.is_empty() {
            // No receiver is fine: nobody watches.
            let _ = self.events.send(Arc::new(CommittedBatch {
                entries: changes.history,
            }));
        }
    }
}

/// The outcome of a batch, detached from the state it was computed against.
struct Changes {
    overlay: BTreeMap<String, Option<KeyValue>>,
    revision: Revision,
    compact_to: Option<Revision>,
    history: Vec<RevisionEvents>,
    granted: Vec<(LeaseId, Duration)>,
    revoked: Vec<LeaseId>,
    lease_seq: i64,
    lease_seq_changed: bool,
}

impl Changes {
    fn writes(&self) -> bool {
        !self.overlay.is_empty()
            || !self.history.is_empty()
            || self.compact_to.is_some()
            || !self.granted.is_empty()
            || !self.revoked.is_empty()
            || self.lease_seq_changed
    }
}

/// The state as seen by the commands of a batch: the committed state plus the batch's changes.
struct Batch<'a> {
    base: &'a State,
    shared: &'a Shared,
    overlay: BTreeMap<String, Option<KeyValue>>,
    revision: Revision,
    compact_revision: Revision,
    compact_to: Option<Revision>,
    history: Vec<RevisionEvents>,
    granted: Vec<(LeaseId, Duration)>,
    revoked: Vec<LeaseId>,
    lease_seq: i64,
    initial_lease_seq: i64,
}

impl<'a> Batch<'a> {
    fn new(base: &'a State, shared: &'a Shared, lease_seq: i64) -> Self {
        Batch {
            base,
            shared,
            overlay: BTreeMap::new(),
            revision: base.revision,
            compact_revision: base.compact_revision,
            compact_to: None,
            history: Vec::new(),
            granted: Vec::new(),
            revoked: Vec::new(),
            lease_seq,
            initial_lease_seq: lease_seq,
        }
    }

    fn into_changes(self) -> Changes {
        Changes {
            overlay: self.overlay,
            revision: self.revision,
            compact_to: self.compact_to,
            history: self.history,
            granted: self.granted,
            revoked: self.revoked,
            lease_seq: self.lease_seq,
            lease_seq_changed: self.lease_seq != self.initial_lease_seq,
        }
    }

    fn get(&self, key: &str) -> Option<&KeyValue> {
        match self.overlay.get(key) {
            Some(value) => value.as_ref(),
            None => self.base.kvs.get(key),
        }
    }

    fn range(&self, prefix: &str) -> Vec<KeyValue> {
        let bounds = (Bound::Included(prefix), Bound::Unbounded);
        let mut view: BTreeMap<&str, &KeyValue> = self
            .base
            .kvs
            .range::<str, _>(bounds)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        for (k, v) in self
            .overlay
            .range::<str, _>(bounds)
            .take_while(|(k, _)| k.starts_with(prefix))
        {
            match v {
                Some(v) => view.insert(k.as_str(), v),
                None => view.remove(k.as_str()),
            };
        }
        view.into_values().cloned().collect()
    }

    fn lease_exists(&self, id: LeaseId) -> bool {
        if self.revoked.contains(&id) {
            return false;
        }
        self.granted.iter().any(|(g, _)| *g == id) || lock(&self.shared.leases).contains_key(&id)
    }

    /// Deletes `key` at `revision` if it exists.
    fn delete_key(
        &mut self,
        key: &str,
        revision: Revision,
        events: &mut Vec<Event>,
    ) -> Option<KeyValue> {
        let prev = self.get(key).cloned()?;
        self.overlay.insert(key.to_owned(), None);
        events.push(Event {
            kind: EventKind::Delete,
            kv: KeyValue::tombstone(key.to_owned(), revision),
            prev: Some(prev.clone()),
        });
        Some(prev)
    }

    /// Records the events of one write as the next revision (nothing when there are none).
    fn commit_revision(&mut self, events: Vec<Event>) {
        if !events.is_empty() {
            self.revision += 1;
            self.history.push(RevisionEvents {
                revision: self.revision,
                events,
            });
        }
    }

    fn txn(&mut self, txn: Txn) -> Result<TxnResponse, StoreError> {
        let succeeded = txn.compares.iter().all(|c| c.evaluate(self.get(&c.key)));
        let ops = if succeeded { txn.success } else { txn.failure };
        for op in &ops {
            if let Op::Put {
                lease: Some(lease), ..
            } = op
                && !self.lease_exists(*lease)
            {
                return Err(StoreError::LeaseNotFound(*lease));
            }
        }
        let rev = self.revision + 1;
        let mut events = Vec::new();
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Put { key, value, lease } => {
                    let prev = self.get(&key).cloned();
                    let kv = KeyValue {
                        key: key.clone(),
                        value,
                        create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                        mod_revision: rev,
                        version: prev.as_ref().map_or(0, |p| p.version) + 1,
                        lease,
                    };
                    self.overlay.insert(key, Some(kv.clone()));
                    events.push(Event {
                        kind: EventKind::Put,
                        kv,
                        prev: prev.clone(),
                    });
                    results.push(OpResult::Put { prev });
                }
                Op::Delete { key } => {
                    let deleted = self.delete_key(&key, rev, &mut events);
                    results.push(OpResult::Delete {
                        deleted: deleted.into_iter().collect(),
                    });
                }
                Op::DeletePrefix { prefix } => {
                    let mut deleted = Vec::new();
                    for kv in self.range(&prefix) {
                        deleted.extend(self.delete_key(&kv.key, rev, &mut events));
                    }
                    results.push(OpResult::Delete { deleted });
                }
                Op::Get { key } => results.push(OpResult::Get(self.get(&key).cloned())),
                Op::Range { prefix } => results.push(OpResult::Range(self.range(&prefix))),
            }
        }
        self.commit_revision(events);
        Ok(TxnResponse {
            succeeded,
            revision: self.revision,
            results,
        })
    }

    fn grant(&mut self, ttl: Duration) -> LeaseId {
        self.lease_seq += 1;
        let id = LeaseId(self.lease_seq);
        self.granted.push((id, ttl));
        id
    }

    fn revoke(&mut self, lease: LeaseId) -> Result<(), StoreError> {
        if !self.lease_exists(lease) {
            return Err(StoreError::LeaseNotFound(lease));
        }
        let mut candidates: Vec<String> = self
            .base
            .lease_keys
            .get(&lease)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default();
        candidates.extend(
            self.overlay
                .iter()
                .filter(|(_, v)| v.as_ref().is_some_and(|kv| kv.lease == Some(lease)))
                .map(|(k, _)| k.clone()),
        );
        candidates.sort();
        candidates.dedup();
        let rev = self.revision + 1;
        let mut events = Vec::new();
        for key in candidates {
            if self.get(&key).is_some_and(|kv| kv.lease == Some(lease)) {
                self.delete_key(&key, rev, &mut events);
            }
        }
        self.commit_revision(events);
        self.revoked.push(lease);
        Ok(())
    }

    fn expire(&mut self, leases: &[LeaseId], now: Instant) {
        for &lease in leases {
            let due = lock(&self.shared.leases)
                .get(&lease)
                .is_some_and(|entry| entry.deadline <= now);
            if due && !self.revoked.contains(&lease) {
                tracing::debug!(%lease, "lease expired");
                // Cannot fail: the lease exists.
                let _ = self.revoke(lease);
            }
        }
    }

    fn compact(&mut self, revision: Revision) -> Result<(), StoreError> {
        if revision <= self.compact_revision {
            return Err(StoreError::Compacted {
                compact_revision: self.compact_revision,
            });
        }
        if revision > self.revision {
            return Err(StoreError::FutureRevision {
                requested: revision,
            });
        }
        self.compact_revision = revision;
        self.compact_to = Some(revision);
        Ok(())
    }
}

/// Leases by id, as the expiry task sees them.
pub(super) type LeaseMap = HashMap<LeaseId, LeaseEntry>;
