//! The Store's data model: revisioned key-values, transactions, events.

use std::cmp::Ordering;
use std::fmt;

/// A store revision. One global counter, incremented by each write transaction that changes
/// something. The store revision is the Nomad "index".
pub type Revision = i64;

/// A lease identifier, as handed out by [`crate::store::Store::grant_lease`].
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct LeaseId(pub i64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// Which backend implements a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreKind {
    /// In-process store persisted with redb under a data directory.
    Embedded,
    /// An etcd cluster.
    Etcd,
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreKind::Embedded => "embedded",
            StoreKind::Etcd => "etcd",
        })
    }
}

/// A key with its value and its revision metadata, as etcd's `mvccpb.KeyValue`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created the key (0 in a delete event).
    pub create_revision: Revision,
    /// Revision of the last write to the key (in a delete event: the deleting revision).
    pub mod_revision: Revision,
    /// Number of writes since the key was created (1 after creation; 0 in a delete event).
    pub version: i64,
    pub lease: Option<LeaseId>,
}

impl KeyValue {
    /// The value of a delete event: only the key and the deleting revision are set.
    pub(crate) fn tombstone(key: String, revision: Revision) -> Self {
        KeyValue {
            key,
            value: Vec::new(),
            create_revision: 0,
            mod_revision: revision,
            version: 0,
            lease: None,
        }
    }
}

/// What a [`Compare`] looks at. etcd's convention: an absent key has create_revision,
/// mod_revision and version 0, and a `Value` comparison on an absent key is always false.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    ModRevision(Revision),
    CreateRevision(Revision),
    Version(i64),
    Value(Vec<u8>),
}

/// How the key's current attribute compares with the target (`attribute OP target`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

impl CompareOp {
    /// Whether `ordering` (the key's attribute compared with the target) satisfies this op.
    pub(crate) fn holds(self, ordering: Ordering) -> bool {
        match self {
            CompareOp::Equal => ordering == Ordering::Equal,
            CompareOp::NotEqual => ordering != Ordering::Equal,
            CompareOp::Less => ordering == Ordering::Less,
            CompareOp::Greater => ordering == Ordering::Greater,
        }
    }
}

/// One guard of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: String,
    pub target: CompareTarget,
    pub op: CompareOp,
}

impl Compare {
    pub fn new(key: impl Into<String>, op: CompareOp, target: CompareTarget) -> Self {
        Compare {
            key: key.into(),
            target,
            op,
        }
    }
    /// `mod_revision(key) OP revision`.
    pub fn mod_revision(key: impl Into<String>, op: CompareOp, revision: Revision) -> Self {
        Self::new(key, op, CompareTarget::ModRevision(revision))
    }
    /// `create_revision(key) OP revision`.
    pub fn create_revision(key: impl Into<String>, op: CompareOp, revision: Revision) -> Self {
        Self::new(key, op, CompareTarget::CreateRevision(revision))
    }
    /// `version(key) OP version`.
    pub fn version(key: impl Into<String>, op: CompareOp, version: i64) -> Self {
        Self::new(key, op, CompareTarget::Version(version))
    }
    /// `value(key) OP value` (bytewise; always false when the key is absent).
    pub fn value(key: impl Into<String>, op: CompareOp, value: impl Into<Vec<u8>>) -> Self {
        Self::new(key, op, CompareTarget::Value(value.into()))
    }
    /// The key does not exist.
    pub fn absent(key: impl Into<String>) -> Self {
        Self::create_revision(key, CompareOp::Equal, 0)
    }
    /// The key exists.
    pub fn exists(key: impl Into<String>) -> Self {
        Self::create_revision(key, CompareOp::Greater, 0)
    }
    /// The key was last written at `mod_revision` (0: the key is absent). The usual guard of a
    /// read-modify-write.
    pub fn unchanged(key: impl Into<String>, mod_revision: Revision) -> Self {
        Self::mod_revision(key, CompareOp::Equal, mod_revision)
    }

    /// Evaluates the comparison against the key's current value (`None`: absent).
    pub(crate) fn evaluate(&self, current: Option<&KeyValue>) -> bool {
        let int =
            |f: fn(&KeyValue) -> i64, target: i64| self.op.holds(current.map_or(0, f).cmp(&target));
        match &self.target {
            CompareTarget::ModRevision(r) => int(|kv| kv.mod_revision, *r),
            CompareTarget::CreateRevision(r) => int(|kv| kv.create_revision, *r),
            CompareTarget::Version(v) => int(|kv| kv.version, *v),
            CompareTarget::Value(v) => match current {
                None => false,
                Some(kv) => self.op.holds(kv.value.as_slice().cmp(v.as_slice())),
            },
        }
    }
}

/// One operation of a transaction branch. Operations run in order; a read sees the writes made
/// before it in the same transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        key: String,
    },
    DeletePrefix {
        prefix: String,
    },
    Get {
        key: String,
    },
    Range {
        prefix: String,
    },
}

impl Op {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }
    pub fn put_with_lease(
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
        lease: LeaseId,
    ) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: Some(lease),
        }
    }
    pub fn delete(key: impl Into<String>) -> Self {
        Op::Delete { key: key.into() }
    }
    pub fn delete_prefix(prefix: impl Into<String>) -> Self {
        Op::DeletePrefix {
            prefix: prefix.into(),
        }
    }
    pub fn get(key: impl Into<String>) -> Self {
        Op::Get { key: key.into() }
    }
    pub fn range(prefix: impl Into<String>) -> Self {
        Op::Range {
            prefix: prefix.into(),
        }
    }
    /// Whether the operation writes.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Op::Put { .. } | Op::Delete { .. } | Op::DeletePrefix { .. }
        )
    }
}

/// `if all(compares) { success } else { failure }`, atomically, as one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds guards (all must hold for the success branch to run).
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.compares.extend(compares);
        self
    }
    /// Adds operations to the success branch.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = Op>) -> Self {
        self.success.extend(ops);
        self
    }
    /// Adds operations to the failure branch.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = Op>) -> Self {
        self.failure.extend(ops);
        self
    }
    /// The largest of the three lists, which is what the op limit applies to.
    pub fn op_count(&self) -> usize {
        self.compares
            .len()
            .max(self.success.len())
            .max(self.failure.len())
    }
}

/// The result of one [`Op`], in the order of the branch that ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    Put { prev: Option<KeyValue> },
    Delete { deleted: Vec<KeyValue> },
    Get(Option<KeyValue>),
    Range(Vec<KeyValue>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether the compares held (the success branch ran).
    pub succeeded: bool,
    /// The store revision after the transaction (unchanged when it wrote nothing).
    pub revision: Revision,
    pub results: Vec<OpResult>,
}

impl TxnResponse {
    /// The value returned by the `index`-th op if it was a `Get`.
    pub fn get_result(&self, index: usize) -> Option<&KeyValue> {
        match self.results.get(index) {
            Some(OpResult::Get(kv)) => kv.as_ref(),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Put,
    Delete,
}

/// A change to one key. For a delete, `kv` has only the key and `mod_revision` = the deleting
/// revision; `prev` is the value before the change (if any, and if still known).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    pub prev: Option<KeyValue>,
}

impl Event {
    /// The revision of the change.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// The result of a range read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    /// Sorted by key.
    pub kvs: Vec<KeyValue>,
    /// The revision the range was read at: the store revision for a current read, `at` for a
    /// read at a past revision. Watching from `revision + 1` misses nothing.
    pub revision: Revision,
}

/// The outcome of a compare-and-swap helper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    /// The write happened at this revision.
    Written { revision: Revision },
    /// The guard did not hold; `current` is the key's value at that moment (`None`: absent).
    Conflict { current: Option<KeyValue> },
}

impl CasOutcome {
    pub fn is_written(&self) -> bool {
        matches!(self, CasOutcome::Written { .. })
    }
}
