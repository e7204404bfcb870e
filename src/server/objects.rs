//! How resources live in the store: one key per object, JSON values,
//! `/caravan/<region>/<kind>/<namespace>/<id>` (nodes and servers have no namespace).
//!
//! The store's revisions are Nomad's indexes: an object's `CreateIndex` and `ModifyIndex` are its
//! key's create and mod revisions, filled in when it is read, never stored.

use caravan_schemas::alloc::Allocation;
use caravan_schemas::deployment::Deployment;
use caravan_schemas::eval::Evaluation;
use caravan_schemas::job::Job;
use caravan_schemas::lb::{RouteTable, TrafficSplit};
use caravan_schemas::node::Node;
use caravan_schemas::service::ServiceRegistration;
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
    /// Service registrations (`/v1/service/:name`), written by the service controller.
    Service,
    /// TrafficSplits (`/v1/traffic-split/:name`), written by users.
    TrafficSplit,
    /// The load balancer's route table: one object, written by the lb-config controller.
    RouteTable,
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
            Kind::Service => "service",
            Kind::TrafficSplit => "traffic_split",
            Kind::RouteTable => "route_table",
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

    /// The route table's key: `/caravan/<region>/route_table/default/main`.
    pub fn route_table(&self) -> String {
        self.key(Kind::RouteTable, ROUTE_TABLE_NAMESPACE, ROUTE_TABLE_NAME)
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

    /// Lets the cache share parts many objects hold identical copies of (an allocation's job).
    fn share(&mut self, _jobs: &JobInterner) {}

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
    fn share(&mut self, jobs: &JobInterner) {
        if let Some(job) = &self.job {
            self.job = Some(jobs.intern(job));
        }
    }
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

impl Object for ServiceRegistration {
    const KIND: Kind = Kind::Service;
    fn index_value(&self, index: Index) -> Option<String> {
        match index {
            Index::ByJob => Some(job_index(self.namespace.as_str(), self.job_id.as_str())),
            Index::ByNode => Some(self.node_id.to_string()),
        }
    }
    fn key(&self, keys: &Keys) -> String {
        keys.key(Kind::Service, self.namespace.as_str(), self.id.as_str())
    }
    fn set_indexes(&mut self, create: i64, modify: i64) {
        self.create_index = create;
        self.modify_index = modify;
    }
}

impl Object for TrafficSplit {
    const KIND: Kind = Kind::TrafficSplit;
    fn key(&self, keys: &Keys) -> String {
        keys.key(Kind::TrafficSplit, self.namespace.as_str(), &self.name)
    }
    fn set_indexes(&mut self, create: i64, modify: i64) {
        self.create_index = create;
        self.modify_index = modify;
    }
}

/// The namespace and name of the one route table.
pub const ROUTE_TABLE_NAMESPACE: &str = "default";
pub const ROUTE_TABLE_NAME: &str = "main";

impl Object for RouteTable {
    const KIND: Kind = Kind::RouteTable;
    fn key(&self, keys: &Keys) -> String {
        keys.route_table()
    }
    fn set_indexes(&mut self, _create: i64, modify: i64) {
        self.modify_index = modify;
    }
}

/// Shares identical job snapshots between cached allocations: every allocation of a job version
/// carries the same job, and a million allocations should not hold a million copies of it.
#[derive(Debug, Default)]
pub struct JobInterner {
    jobs: std::sync::Mutex<(
        std::collections::HashMap<JobIdentity, std::sync::Weak<Job>>,
        usize,
    )>,
}

/// What tells two job snapshots apart.
type JobIdentity = (String, String, u64, i64, i64);

impl JobInterner {
    /// The shared copy of `job` (the first seen with the same identity and indexes).
    pub fn intern(&self, job: &std::sync::Arc<Job>) -> std::sync::Arc<Job> {
        let id = (
            job.namespace.to_string(),
            job.id.to_string(),
            job.version,
            job.job_modify_index,
            job.create_index,
        );
        let mut guard = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let (map, inserts) = &mut *guard;
        if let Some(shared) = map.get(&id).and_then(std::sync::Weak::upgrade)
            && *shared == **job
        {
            return shared;
        }
        map.insert(id, std::sync::Arc::downgrade(job));
        *inserts += 1;
        if *inserts % 1024 == 0 {
            map.retain(|_, w| w.strong_count() > 0);
        }
        std::sync::Arc::clone(job)
    }
}
