//! The server's watch cache, as kube-apiserver keeps one: list every kind at one revision R,
//! watch the region's whole prefix from R+1, hand each event to its kind's informer, and re-list
//! when the watch reports compaction. Reads and blocking queries are answered from memory;
//! writes go straight to the store.
//!
//! Because one watch feeds every informer, they all advance together: after a write at
//! revision W, waiting for `applied >= W` on any informer is read-your-writes for every kind,
//! while each informer's `index` still moves only when its own kind changes (Nomad's per-table
//! index, which blocking queries wait on).

use super::objects::{INDEXES, Index, JobInterner, Keys, Object};
use crate::store::{Event, EventKind, KeyValue, Revision, Store, StoreError};
use futures::StreamExt;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// One object that changed: what it was and what it is (either may be absent).
#[derive(Debug)]
pub struct Change<T> {
    pub key: String,
    pub old: Option<Arc<T>>,
    pub new: Option<Arc<T>>,
}

/// What subscribers hear: the changes of one applied batch, or that everything was re-listed.
#[derive(Debug)]
pub enum Notice<T> {
    Changed(Vec<Change<T>>),
    /// The cache was rebuilt from a fresh list: treat every object as possibly changed.
    Resync,
}

/// What a reader sees: the objects and the index (store revision) they are current at. The map
/// is persistent (structurally shared), so a snapshot costs O(1) and an update O(log n).
#[derive(Debug)]
pub struct Snapshot<T> {
    pub objects: imbl::OrdMap<String, Arc<T>>,
    /// The newest revision applied; Nomad's `X-Nomad-Index` for lists of this kind.
    pub index: Revision,
    /// Secondary indexes: index value → keys (see [`Index`]).
    by: [imbl::OrdMap<String, imbl::OrdSet<String>>; INDEXES],
}

impl<T> Clone for Snapshot<T> {
    fn clone(&self) -> Self {
        Snapshot {
            objects: self.objects.clone(),
            index: self.index,
            by: self.by.clone(),
        }
    }
}

impl<T: Object> Snapshot<T> {
    fn empty() -> Self {
        Snapshot {
            objects: imbl::OrdMap::new(),
            index: 0,
            by: Default::default(),
        }
    }

    /// The objects whose `index` has `value` (e.g. a job's allocations).
    pub fn by<'a>(&'a self, index: Index, value: &str) -> impl Iterator<Item = &'a Arc<T>> + 'a {
        self.by[index as usize]
            .get(value)
            .into_iter()
            .flat_map(|keys| keys.iter())
            .filter_map(|k| self.objects.get(k))
    }

    fn insert(&mut self, key: String, obj: Arc<T>) -> Option<Arc<T>> {
        let old = self.objects.insert(key.clone(), Arc::clone(&obj));
        for index in [Index::ByJob, Index::ByNode] {
            let before = old.as_ref().and_then(|o| o.index_value(index));
            let after = obj.index_value(index);
            if before == after {
                continue;
            }
            if let Some(v) = before {
                self.unindex(index, &v, &key);
            }
            if let Some(v) = after {
                self.by[index as usize]
                    .entry(v)
                    .or_default()
                    .insert(key.clone());
            }
        }
        old
    }

    fn remove(&mut self, key: &str) -> Option<Arc<T>> {
        let old = self.objects.remove(key);
        if let Some(o) = &old {
            for index in [Index::ByJob, Index::ByNode] {
                if let Some(v) = o.index_value(index) {
                    self.unindex(index, &v, key);
                }
            }
        }
        old
    }

    fn unindex(&mut self, index: Index, value: &str, key: &str) {
        let map = &mut self.by[index as usize];
        if let Some(keys) = map.get_mut(value) {
            keys.remove(key);
            if keys.is_empty() {
                map.remove(value);
            }
        }
    }
}

/// An in-memory, always-catching-up copy of every object of one kind.
#[derive(Debug)]
pub struct Informer<T> {
    state: RwLock<Arc<Snapshot<T>>>,
    index: watch::Sender<Revision>,
    applied: watch::Sender<Revision>,
    synced: watch::Sender<bool>,
    notices: broadcast::Sender<Arc<Notice<T>>>,
    jobs: JobInterner,
}

impl<T: Object> Informer<T> {
    pub fn new() -> Arc<Self> {
        Arc::new(Informer {
            state: RwLock::new(Arc::new(Snapshot::empty())),
            index: watch::channel(0).0,
            applied: watch::channel(0).0,
            synced: watch::channel(false).0,
            notices: broadcast::channel(4096).0,
            jobs: JobInterner::default(),
        })
    }

    /// The current snapshot (cheap: a reference count).
    pub fn snapshot(&self) -> Arc<Snapshot<T>> {
        match self.state.read() {
            Ok(s) => Arc::clone(&s),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// One object by key.
    pub fn get(&self, key: &str) -> Option<Arc<T>> {
        self.snapshot().objects.get(key).cloned()
    }

    /// The newest revision applied.
    pub fn index(&self) -> Revision {
        *self.index.borrow()
    }

    /// Waits until the cache has applied a revision greater than `index`, or `timeout` passes;
    /// returns the index then current. This is Nomad's blocking query.
    pub async fn wait_past(&self, index: Revision, timeout: Duration) -> Revision {
        let mut rx = self.index.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|i| *i > index)).await;
        self.index()
    }

    /// Waits until the cache has caught up with a write made at `revision` (read-your-writes).
    pub async fn wait_for(&self, revision: Revision, timeout: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|i| *i >= revision))
            .await
            .is_ok()
    }

    /// The newest store revision this cache has applied (any kind).
    pub fn applied(&self) -> Revision {
        *self.applied.borrow()
    }

    /// Waits until the first list has been applied.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Subscribes to changes. A receiver that falls behind gets `Lagged` and should treat it as
    /// a [`Notice::Resync`].
    pub fn changes(&self) -> broadcast::Receiver<Arc<Notice<T>>> {
        self.notices.subscribe()
    }

    /// Subscribes to index changes.
    pub fn subscribe(&self) -> watch::Receiver<Revision> {
        self.index.subscribe()
    }

    fn publish(&self, snapshot: Snapshot<T>) {
        let index = snapshot.index;
        match self.state.write() {
            Ok(mut s) => *s = Arc::new(snapshot),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(snapshot),
        }
        self.index.send_if_modified(|i| {
            let changed = *i != index;
            *i = index;
            changed
        });
        self.synced
            .send_if_modified(|s| !std::mem::replace(s, true));
    }

    fn reset(&self, kvs: &[KeyValue], revision: Revision) {
        let mut fresh = Snapshot::empty();
        for kv in kvs {
            if let Some(mut obj) = decode::<T>(kv) {
                obj.share(&self.jobs);
                fresh.insert(kv.key.clone(), Arc::new(obj));
            }
        }
        fresh.index = revision;
        self.publish(fresh);
        let _ = self.notices.send(Arc::new(Notice::Resync));
    }

    fn apply(&self, events: &[&Event]) {
        let mut next = (*self.snapshot()).clone();
        let mut changes = Vec::with_capacity(events.len());
        for event in events {
            next.index = next.index.max(event.revision());
            let key = event.kv.key.clone();
            let new = match event.kind {
                EventKind::Put => decode::<T>(&event.kv).map(|mut obj| {
                    obj.share(&self.jobs);
                    Arc::new(obj)
                }),
                EventKind::Delete => None,
            };
            let old = match &new {
                Some(obj) => next.insert(key.clone(), Arc::clone(obj)),
                None => next.remove(&key),
            };
            changes.push(Change { key, old, new });
        }
        self.publish(next);
        if self.notices.receiver_count() > 0 {
            let _ = self.notices.send(Arc::new(Notice::Changed(changes)));
        }
    }
}

/// Runs `on` for every batch of changes to an informer's kind — or with `None` when every object
/// must be taken as changed (the cache re-listed, or this subscriber fell behind) — until the
/// cache goes away. The task runs in `span`.
pub fn follow<T: Object>(
    informer: &Informer<T>,
    span: tracing::Span,
    mut on: impl FnMut(Option<&[Change<T>]>) + Send + 'static,
) {
    let mut rx = informer.changes();
    let task = async move {
        loop {
            match rx.recv().await {
                Ok(notice) => match notice.as_ref() {
                    Notice::Changed(changes) => on(Some(changes)),
                    Notice::Resync => on(None),
                },
                Err(broadcast::error::RecvError::Lagged(_)) => on(None),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    };
    tokio::spawn(tracing::Instrument::instrument(task, span));
}

/// What the cache's single watch feeds: an informer of some kind.
trait Sink: Send + Sync {
    fn prefix(&self) -> &str;
    fn reset(&self, kvs: &[KeyValue], revision: Revision);
    fn apply(&self, events: &[&Event]);
    fn advance(&self, revision: Revision);
}

struct Fed<T> {
    prefix: String,
    informer: Arc<Informer<T>>,
}

impl<T: Object> Sink for Fed<T> {
    fn prefix(&self) -> &str {
        &self.prefix
    }
    fn reset(&self, kvs: &[KeyValue], revision: Revision) {
        self.informer.reset(kvs, revision);
    }
    fn apply(&self, events: &[&Event]) {
        self.informer.apply(events);
    }
    fn advance(&self, revision: Revision) {
        self.informer.applied.send_if_modified(|a| {
            let moved = *a < revision;
            *a = (*a).max(revision);
            moved
        });
    }
}

/// The set of informers one watch keeps current.
#[derive(Default)]
pub struct Feeder {
    sinks: Vec<Box<dyn Sink>>,
}

impl std::fmt::Debug for Feeder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feeder")
            .field("kinds", &self.sinks.len())
            .finish()
    }
}

impl Feeder {
    /// Adds an informer for its kind's prefix.
    pub fn feed<T: Object>(mut self, keys: &Keys, informer: &Arc<Informer<T>>) -> Self {
        self.sinks.push(Box::new(Fed {
            prefix: keys.prefix(T::KIND),
            informer: Arc::clone(informer),
        }));
        self
    }

    /// Keeps every informer current until the store closes; re-lists after compaction or a
    /// broken watch, with a short backoff on errors.
    pub async fn run(self, store: Arc<dyn Store>, root: String) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.list_and_watch(&store, &root).await {
                Err(StoreError::Closed) => return,
                Err(StoreError::Compacted { .. }) => tracing::info!("watch compacted; re-listing"),
                Err(e) => {
                    tracing::warn!(error = %e, "watch failed; re-listing");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
                Ok(()) => {}
            }
            backoff = Duration::from_millis(50);
        }
    }

    async fn list_and_watch(&self, store: &Arc<dyn Store>, root: &str) -> Result<(), StoreError> {
        let revision = store.current_revision().await?;
        for sink in &self.sinks {
            let range = store.range(sink.prefix(), Some(revision)).await?;
            sink.reset(&range.kvs, revision);
        }
        for sink in &self.sinks {
            sink.advance(revision);
        }
        let mut stream = store.watch(root, revision + 1).await?;
        while let Some(batch) = stream.next().await {
            let events = batch?;
            let Some(last) = events.iter().map(Event::revision).max() else {
                continue;
            };
            for sink in &self.sinks {
                let mine: Vec<&Event> = events
                    .iter()
                    .filter(|e| e.kv.key.starts_with(sink.prefix()))
                    .collect();
                if !mine.is_empty() {
                    sink.apply(&mine);
                }
            }
            for sink in &self.sinks {
                sink.advance(last);
            }
        }
        Err(StoreError::Closed)
    }
}

/// Decodes a stored object and fills in its indexes; a value that does not decode is logged
/// and left out rather than taking the server down.
pub fn decode<T: Object>(kv: &KeyValue) -> Option<T> {
    match serde_json::from_slice::<T>(&kv.value) {
        Ok(mut obj) => {
            obj.set_indexes(kv.create_revision, kv.mod_revision);
            Some(obj)
        }
        Err(e) => {
            tracing::error!(key = %kv.key, error = %e, "stored object does not decode; ignoring it");
            None
        }
    }
}
