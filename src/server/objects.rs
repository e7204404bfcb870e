//! How resources live in the store: one key per object, JSON values,
//! `/caravan/<region>/<kind>/<namespace>/<id>` (nodes and servers have no namespace).
//!
//! The store's revisions are Nomad's indexes: an object's `CreateIndex` and `ModifyIndex` are its
//! key's create and mod revisions, filled in when it is read, never stored.

use caravan_schemas::alloc::Allocation;
use caravan_schemas::deployment::Deployment;
use caravan_schemas::eval::Evaluation;
use caravan_schemas::job::Job;
use caravan_schemas::node::Node;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;

/// The kinds of objects in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Job,
    JobVersion,
    Node,
    Alloc,
    Eval,
    Deployment,
    Member,
    Heartbeat,
}

impl Kind {
    /// The path segment naming the kind.
    pub fn segment(self) -> &'static str {
        match self {
            Kind::Job => "job",
            Kind::JobVersion => "job_version",
            Kind::Node => "node",
            Kind::Alloc => "alloc",
            Kind::Eval => "eval",
            Kind::Deployment => "deployment",
            Kind::Member => "member",
            Kind::Heartbeat => "heartbeat",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.segment())
    }
}

/// Builds keys for one region.
#[derive(Clone, Debug)]
pub struct Keys {
    root: String,
}

impl Keys {
    pub fn new(region: &str) -> Self {
        Keys {
            root: format!("/caravan/{region}"),
        }
    }

    /// Every key of the region starts with this.
    pub fn root(&self) -> String {
        format!("{}/", self.root)
    }

    /// Every key of a kind starts with this.
    pub fn prefix(&self, kind: Kind) -> String {
        format!("{}/{}/", self.root, kind.segment())
    }

    /// A namespaced object's key.
    pub fn key(&self, kind: Kind, namespace: &str, id: &str) -> String {
        format!("{}/{}/{namespace}/{id}", self.root, kind.segment())
    }

    /// A node's key.
    pub fn node(&self, id: &str) -> String {
        format!("{}/node/{id}", self.root)
    }

    /// One stored version of a job: versions sort by their zero-padded number.
    pub fn job_version(&self, namespace: &str, id: &str, version: u64) -> String {
        format!("{}/job_version/{namespace}/{id}/{version:020}", self.root)
    }

    /// All stored versions of one job.
    pub fn job_versions(&self, namespace: &str, id: &str) -> String {
        format!("{}/job_version/{namespace}/{id}/", self.root)
    }

    /// The leader lock.
    pub fn leader(&self) -> String {
        format!("{}/leader", self.root)
    }

    /// Where live servers register themselves.
    pub fn members(&self) -> String {
        format!("{}/member/", self.root)
    }
}

/// The secondary indexes the cache keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Index {
    /// `namespace/job_id`.
    ByJob = 0,
    /// The node id.
    ByNode = 1,
}

/// How many [`Index`] variants there are.
pub const INDEXES: usize = 2;

/// The value of the by-job index for a job.
pub fn job_index(namespace: &str, id: &str) -> String {
    format!("{namespace}/{id}")
}

/// A resource kept in the store.
pub trait Object: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    const KIND: Kind;

    /// The object's value in a secondary index, if it is in that index.
    fn index_value(&self, _index: Index) -> Option<String> {
        None
    }

    /// The object's key.
    fn key(&self, keys: &Keys) -> String;

    /// Sets `CreateIndex` and `ModifyIndex` from the key's revisions.
    fn set_indexes(&mut self, create: i64, modify: i64);
}

impl Object for Job {
    const KIND: Kind = Kind::Job;
    fn key(&self, keys: &Keys) -> String {
        keys.key(Kind::Job, self.namespace.as_str(), self.id.as_str())
    }
    fn set_indexes(&mut self, create: i64, modify: i64) {
        self.create_index = create;
        self.modify_index = modify;
        // A write that changes the spec stores 0: the write's own revision is the index.
        if self.job_modify_index == 0 {
            self.job_modify_index = modify;
        }
    }
}

/// A past version of a job, kept for `job history` and `job revert`.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct JobVersion(pub Job);

impl Object for JobVersion {
    const KIND: Kind = Kind::JobVersion;
    fn key(&self, keys: &Keys) -> String {
        keys.job_version(
            self.0.namespace.as_str(),
            self.0.id.as_str(),
            self.0.version,
        )
    }
    fn set_indexes(&mut self, _create: i64, _modify: i64) {}
}

impl Object for Node {
    const KIND: Kind = Kind::Node;
    fn key(&self, keys: &Keys) -> String {
        keys.node(self.id.as_str())
    }
    fn set_indexes(&mut self, create: i64, modify: i64) {
        self.create_index = create;
        self.modify_index = modify;
    }
}

impl Object for Allocation {
    const KIND: Kind = Kind::Alloc;
    fn index_value(&self, index: Index) -> Option<String> {
        match index {
            Index::ByJob => Some(job_index(self.namespace.as_str(), self.job_id.as_str())),
            Index::ByNode => Some(self.node_id.to_string()),
        }
    }
    fn key(&self, keys: &Keys) -> String {
        keys.key(Kind::Alloc, self.namespace.as_str(), self.id.as_str())
    }
    fn set_indexes(&mut self, create: i64, modify: i64) {
        self.create_index = create;
        self.modify_index = modify;
    }
}

impl Object for Evaluation {
    const KIND: Kind = Kind::Eval;
    fn index_value(&self, index: Index) -> Option<String> {
        (index == Index::ByJob).then(|| job_index(self.namespace.as_str(), self.job_id.as_str()))
    }
    fn key(&self, keys: &Keys) -> String {
        keys.key(Kind::Eval, self.namespace.as_str(), self.id.as_str())
    }
    fn set_indexes(&mut self, create: i64, modify: i64) {
        self.create_index = create;
        self.modify_index = modify;
    }
}

impl Object for Deployment {
    const KIND: Kind = Kind::Deployment;
    fn index_value(&self, index: Index) -> Option<String> {
        (index == Index::ByJob).then(|| job_index(self.namespace.as_str(), self.job_id.as_str()))
    }
    fn key(&self, keys: &Keys) -> String {
        keys.key(Kind::Deployment, self.namespace.as_str(), self.id.as_str())
    }
    fn set_indexes(&mut self, create: i64, modify: i64) {
        self.create_index = create;
        self.modify_index = modify;
    }
}
