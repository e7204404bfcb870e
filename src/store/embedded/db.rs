//! The redb file: tables, opening, loading, and the blocking reads (history, past ranges).
//! Every function here blocks: call it from the writer thread or `spawn_blocking`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::codec::{self, DecodeError};
use crate::store::error::StoreError;
use crate::store::types::{Event, KeyValue, LeaseId, Revision};

/// Current keys: key → encoded record.
pub(super) const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// History: revision → encoded events of that revision (with prev values), from the compact
/// revision on.
pub(super) const HISTORY: TableDefinition<i64, &[u8]> = TableDefinition::new("history");
/// Leases: id → TTL in milliseconds.
pub(super) const LEASES: TableDefinition<i64, u64> = TableDefinition::new("leases");
/// Counters: see the `META_*` names.
pub(super) const META: TableDefinition<&str, i64> = TableDefinition::new("meta");

pub(super) const META_REVISION: &str = "revision";
pub(super) const META_COMPACT: &str = "compact_revision";
pub(super) const META_LEASE_SEQ: &str = "lease_seq";

/// The revision of an empty store (as etcd: the first write is revision 2).
pub(super) const INITIAL_REVISION: Revision = 1;

/// Errors of the embedded backend; they reach callers as [`StoreError::Backend`].
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),
    #[error("corrupt record: {0}")]
    Decode(#[from] DecodeError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

macro_rules! redb_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for EmbeddedError {
            fn from(e: $t) -> Self {
                EmbeddedError::Redb(redb::Error::from(e))
            }
        }
    )*};
}
redb_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl From<EmbeddedError> for StoreError {
    fn from(e: EmbeddedError) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// What is loaded from the file at open.
#[derive(Debug)]
pub(super) struct Loaded {
    pub kvs: BTreeMap<String, KeyValue>,
    pub lease_keys: HashMap<LeaseId, BTreeSet<String>>,
    pub leases: HashMap<LeaseId, Duration>,
    pub revision: Revision,
    pub compact_revision: Revision,
    pub lease_seq: i64,
}

/// Opens (creating if needed) `path`, waiting up to `wait` for a previous handle in this
/// process to release the file (a store being dropped).
pub(super) fn open_database(path: &Path, wait: Duration) -> Result<Database, EmbeddedError> {
    let deadline = Instant::now() + wait;
    loop {
        match Database::builder()
            .set_cache_size(256 * 1024 * 1024)
            .create(path)
        {
            Ok(db) => return Ok(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Creates the tables if missing and loads the current state.
pub(super) fn load(db: &Database) -> Result<Loaded, EmbeddedError> {
    let wtx = db.begin_write()?;
    {
        wtx.open_table(KV)?;
        wtx.open_table(HISTORY)?;
        wtx.open_table(LEASES)?;
        wtx.open_table(META)?;
    }
    wtx.commit()?;

    let rtx = db.begin_read()?;
    let meta = rtx.open_table(META)?;
    let meta_get = |name: &str, default: i64| -> Result<i64, EmbeddedError> {
        Ok(meta.get(name)?.map_or(default, |v| v.value()))
    };
    let revision = meta_get(META_REVISION, INITIAL_REVISION)?;
    let compact_revision = meta_get(META_COMPACT, 0)?;
    let lease_seq = meta_get(META_LEASE_SEQ, 0)?;

    let mut kvs = BTreeMap::new();
    let mut lease_keys: HashMap<LeaseId, BTreeSet<String>> = HashMap::new();
    let table = rtx.open_table(KV)?;
    for entry in table.iter()? {
        let (k, v) = entry?;
        let kv = codec::decode_kv(k.value(), v.value())?;
        if let Some(lease) = kv.lease {
            lease_keys.entry(lease).or_default().insert(kv.key.clone());
        }
        kvs.insert(kv.key.clone(), kv);
    }
    let mut leases = HashMap::new();
    let table = rtx.open_table(LEASES)?;
    for entry in table.iter()? {
        let (id, ttl_ms) = entry?;
        leases.insert(LeaseId(id.value()), Duration::from_millis(ttl_ms.value()));
    }
    Ok(Loaded {
        kvs,
        lease_keys,
        leases,
        revision,
        compact_revision,
        lease_seq,
    })
}

/// The events of one revision.
#[derive(Debug)]
pub(super) struct RevisionEvents {
    pub revision: Revision,
    pub events: Vec<Event>,
}

/// Up to `limit` revisions of history from `from` on. `from` below the compact revision is
/// [`StoreError::Compacted`]. Events at the compact revision lose their `prev` (it is older than
/// the compact revision), as etcd's do.
pub(super) fn read_history(
    db: &Database,
    from: Revision,
    limit: usize,
) -> Result<Vec<RevisionEvents>, StoreError> {
    let rtx = db.begin_read().map_err(EmbeddedError::from)?;
    let compact_revision = meta_value(&rtx, META_COMPACT, 0)?;
    if from < compact_revision {
        return Err(StoreError::Compacted { compact_revision });
    }
    let table = rtx.open_table(HISTORY).map_err(EmbeddedError::from)?;
    let mut out = Vec::new();
    for entry in table
        .range(from..)
        .map_err(EmbeddedError::from)?
        .take(limit)
    {
        let (rev, bytes) = entry.map_err(EmbeddedError::from)?;
        let revision = rev.value();
        let mut events = codec::decode_events(bytes.value()).map_err(EmbeddedError::from)?;
        if revision <= compact_revision {
            // As etcd: the previous value of a change at the compact revision is compacted.
            for ev in &mut events {
                ev.prev = None;
            }
        }
        out.push(RevisionEvents { revision, events });
    }
    Ok(out)
}

/// The keys under `prefix` as they were at revision `at`: the current keys, with the history
/// after `at` undone (each event's `prev` restored), all read from one snapshot.
pub(super) fn range_at(
    db: &Database,
    prefix: &str,
    at: Revision,
) -> Result<Vec<KeyValue>, StoreError> {
    let rtx = db.begin_read().map_err(EmbeddedError::from)?;
    let compact_revision = meta_value(&rtx, META_COMPACT, 0)?;
    let revision = meta_value(&rtx, META_REVISION, INITIAL_REVISION)?;
    if at < compact_revision {
        return Err(StoreError::Compacted { compact_revision });
    }
    if at > revision {
        return Err(StoreError::FutureRevision { requested: at });
    }
    let mut kvs = BTreeMap::new();
    let table = rtx.open_table(KV).map_err(EmbeddedError::from)?;
    for entry in table.range(prefix..).map_err(EmbeddedError::from)? {
        let (k, v) = entry.map_err(EmbeddedError::from)?;
        let key = k.value();
        if !key.starts_with(prefix) {
            break;
        }
        let kv = codec::decode_kv(key, v.value()).map_err(EmbeddedError::from)?;
        kvs.insert(kv.key.clone(), kv);
    }
    if at < revision {
        let history = rtx.open_table(HISTORY).map_err(EmbeddedError::from)?;
        let range = history
            .range(at + 1..=revision)
            .map_err(EmbeddedError::from)?;
        for entry in range.rev() {
            let (_, bytes) = entry.map_err(EmbeddedError::from)?;
            let events = codec::decode_events(bytes.value()).map_err(EmbeddedError::from)?;
            for ev in events.into_iter().rev() {
                if !ev.kv.key.starts_with(prefix) {
                    continue;
                }
                match ev.prev {
                    Some(prev) => kvs.insert(ev.kv.key, prev),
                    None => kvs.remove(&ev.kv.key),
                };
            }
        }
    }
    Ok(kvs.into_values().collect())
}

fn meta_value(rtx: &redb::ReadTransaction, name: &str, default: i64) -> Result<i64, StoreError> {
    let meta = rtx.open_table(META).map_err(EmbeddedError::from)?;
    let value = meta.get(name).map_err(EmbeddedError::from)?;
    Ok(value.map_or(default, |v| v.value()))
}
