//! The write side for nodes and allocations: what operators ask for (stop an allocation, node
//! eligibility, drain, purge) and what node agents report (register, heartbeat, allocation
//! status). As in [`super::writes`], each change is computed from state read from the store,
//! written in one transaction guarded by the revisions it was computed from, recomputed from
//! fresh state on conflict, and answered once the cache shows it.
//!
//! Heartbeats are store leases: registering a node grants a lease of `TTL + grace` and attaches
//! the key `/caravan/<region>/heartbeat/<node_id>` (value [`HeartbeatRecord`]) to it; each
//! heartbeat keeps the lease alive. When a node stops heartbeating the lease expires and the key
//! disappears — the node controller watches for that and marks the node down.

use super::Server;
use super::cache::decode;
use super::objects::{Index, Kind, Object};
use super::writes::{WriteError, new_eval, now_nanos};
use crate::store::{Compare, KeyValue, LeaseId, Op, StoreError, Txn};
use caravan_schemas::alloc::{
    AllocDeploymentStatus, AllocNetworkStatus, Allocation, CheckQueryResult, ClientStatus,
    DesiredStatus, TaskState,
};
use caravan_schemas::eval::{Evaluation, TriggeredBy};
use caravan_schemas::ids::{AllocId, CheckId, DeploymentId, EvalId, JobId, Namespace, NodeId};
use caravan_schemas::job::{Job, JobType};
use caravan_schemas::node::{
    DrainMetadata, DrainSpec, DrainStatus, DrainStrategy, Node, NodeEvent, NodeStatus,
    SchedulingEligibility, subsystems,
};
use caravan_schemas::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// How often a node must heartbeat (Nomad's minimum heartbeat TTL).
pub const DEFAULT_HEARTBEAT_TTL: Duration = Duration::from_secs(10);
/// How long past its TTL a node is still considered alive (Nomad's `heartbeat_grace`).
pub const DEFAULT_HEARTBEAT_GRACE: Duration = Duration::from_secs(10);
/// Nomad keeps this many events per node.
pub const MAX_NODE_EVENTS: usize = 10;
/// How often a write is recomputed after losing a race before giving up.
const MAX_ATTEMPTS: usize = 16;
/// How long a write waits for the cache to show it before answering.
const READ_YOUR_WRITES: Duration = Duration::from_secs(5);

/// Nomad's node event messages.
pub mod node_events {
    pub const REGISTERED: &str = "Node registered";
    pub const REREGISTERED: &str = "Node re-registered";
    pub const HEARTBEAT_REREGISTERED: &str = "Node reregistered by heartbeat";
    pub const ELIGIBLE: &str = "Node marked as eligible for scheduling";
    pub const INELIGIBLE: &str = "Node marked as ineligible for scheduling";
    pub const DRAIN_SET: &str = "Node drain strategy set";
    pub const DRAIN_UPDATED: &str = "Node drain strategy updated";
    pub const DRAIN_DISABLED: &str = "Node drain disabled";
}

/// What an allocation lost with its node is told.
pub const ALLOC_LOST_DESCRIPTION: &str = "alloc is lost since its node is down";
/// What an allocation stopped through `POST /v1/allocation/:id/stop` is told.
pub const ALLOC_STOPPED_DESCRIPTION: &str = "alloc was stopped by an operator";

/// The value under a node's heartbeat key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HeartbeatRecord {
    /// The store lease the key is attached to.
    #[serde(rename = "LeaseID")]
    pub lease_id: i64,
    /// The lease's TTL in nanoseconds (heartbeat TTL + grace).
    #[serde(rename = "TTL")]
    pub ttl: i64,
}

/// Heartbeat timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatConfig {
    /// How often nodes are told to heartbeat.
    pub ttl: Duration,
    /// How much later a missed heartbeat counts.
    pub grace: Duration,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            ttl: DEFAULT_HEARTBEAT_TTL,
            grace: DEFAULT_HEARTBEAT_GRACE,
        }
    }
}

impl HeartbeatConfig {
    /// The lease TTL: TTL + grace.
    pub fn lease_ttl(&self) -> Duration {
        self.ttl + self.grace
    }
}

/// What a node write did (Nomad's `NodeUpdateResponse` family).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeWrite {
    pub eval_ids: Vec<EvalId>,
    /// The revision the evaluations were created at (0: none).
    pub eval_create_index: i64,
    pub node_modify_index: i64,
    pub index: i64,
}

/// What stopping an allocation did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AllocStopped {
    pub eval_id: EvalId,
    pub index: i64,
}

/// What registering a node did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeRegistered {
    pub heartbeat_ttl: Duration,
    pub eval_ids: Vec<EvalId>,
    pub eval_create_index: i64,
    pub node_modify_index: i64,
    pub index: i64,
}

/// What a heartbeat did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Heartbeat {
    pub heartbeat_ttl: Duration,
    pub eval_ids: Vec<EvalId>,
    pub index: i64,
}

/// A node registration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RegisterNode {
    pub node: Node,
    /// Whether the agent said which status the node is in; `Ready` is assumed when not.
    pub status_given: bool,
}

/// A drain request (`POST /v1/node/:id/drain`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DrainRequest {
    /// `None` stops draining.
    pub spec: Option<DrainSpec>,
    /// With `spec: None`, also make the node eligible again.
    pub mark_eligible: bool,
    /// Recorded on the node's `LastDrain`.
    pub meta: BTreeMap<String, String>,
}

/// A client's report about one allocation: only the fields the client owns. Unknown fields
/// (a client may send the whole allocation) are ignored; desired fields are never taken.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocUpdate {
    #[serde(rename = "ID")]
    pub id: AllocId,
    /// Optional: found from the ID when not given.
    pub namespace: Option<Namespace>,
    pub client_status: Option<ClientStatus>,
    pub client_description: Option<String>,
    pub task_states: Option<BTreeMap<String, TaskState>>,
    pub deployment_status: Option<AllocDeploymentStatus>,
    pub network_status: Option<AllocNetworkStatus>,
    /// The latest result of each service check (a Caravan extension).
    pub check_results: Option<BTreeMap<CheckId, CheckQueryResult>>,
    /// The deployment the client decided `deployment_status`'s health for: a verdict for a
    /// deployment the allocation has left (an in-place update moved it) is ignored.
    #[serde(rename = "DeploymentID")]
    pub deployment_id: Option<DeploymentId>,
}

/// What a batch of allocation updates did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AllocsUpdated {
    /// The revision of the last write (or the current cache index when nothing changed).
    pub index: i64,
    /// How many allocations changed.
    pub updated: usize,
    /// IDs that matched no allocation.
    pub unknown: Vec<AllocId>,
    pub eval_ids: Vec<EvalId>,
}

/// What [`Server::modify_allocs`] did.
#[derive(Debug, Default)]
struct AllocBatch {
    /// The last revision written (0: nothing changed).
    revision: i64,
    changed: usize,
    eval_ids: Vec<EvalId>,
    /// The last revision that created evaluations (0: none).
    eval_revision: i64,
    /// Keys that held no allocation.
    missing: Vec<String>,
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, WriteError> {
    serde_json::to_vec(value).map_err(|e| WriteError::Invalid(format!("encoding: {e}")))
}

fn push_event(node: &mut Node, subsystem: &str, message: &str, now: i64) {
    node.events.push(NodeEvent {
        message: message.to_owned(),
        subsystem: subsystem.to_owned(),
        details: BTreeMap::new(),
        timestamp: Timestamp::from_unix_nanos(now),
        create_index: 0,
    });
    if node.events.len() > MAX_NODE_EVENTS {
        let excess = node.events.len() - MAX_NODE_EVENTS;
        node.events.drain(..excess);
    }
}

fn set_status(node: &mut Node, status: NodeStatus, now: i64) {
    if node.status != status {
        node.status = status;
        node.status_updated_at = now / 1_000_000_000;
    }
}

/// Whether a datacenter pattern (`dc1`, `dc*`, `*`) matches a node's datacenter.
fn datacenter_matches(pattern: &str, dc: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == dc,
        Some((head, tail)) => {
            let Some(rest) = dc.strip_prefix(head) else {
                return false;
            };
            // `*` takes any run of characters.
            rest.char_indices()
                .map(|(i, _)| i)
                .chain(std::iter::once(rest.len()))
                .any(|i| datacenter_matches(tail, &rest[i..]))
        }
    }
}

/// Whether a system job wants to run on `node`.
fn system_job_targets(job: &Job, node: &Node) -> bool {
    let dcs_match = job.datacenters.is_empty()
        || job
            .datacenters
            .iter()
            .any(|p| datacenter_matches(p, &node.datacenter));
    let pool = if node.node_pool.is_empty() {
        "default"
    } else {
        node.node_pool.as_str()
    };
    let pool_matches = job.node_pool.is_empty() || job.node_pool == "all" || job.node_pool == pool;
    dcs_match && pool_matches
}

impl Server {
    /// The key of a node's heartbeat record.
    pub fn heartbeat_key(&self, node_id: &str) -> String {
        format!("{}{node_id}", self.heartbeat_prefix())
    }

    /// Every heartbeat key starts with this.
    pub fn heartbeat_prefix(&self) -> String {
        format!("/caravan/{}/heartbeat/", self.identity.region)
    }

    /// Read-your-writes: waits until the cache shows the writes (the kinds are named for the
    /// log when it does not in time).
    async fn show(&self, writes: &[(Kind, i64)]) {
        let Some(&(kind, revision)) = writes.iter().max_by_key(|(_, r)| *r) else {
            return;
        };
        if revision > 0 && !self.cache.wait_for(revision, READ_YOUR_WRITES).await {
            tracing::warn!(%kind, revision, "the cache did not show a write in time");
        }
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>, WriteError> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(self.store.max_txn_ops().max(1)) {
            let resp = self
                .store
                .txn(Txn::new().and_then(chunk.iter().map(Op::get)))
                .await?;
            out.extend((0..chunk.len()).map(|i| resp.get_result(i).cloned()));
        }
        Ok(out)
    }

    /// Writes evaluations, as many per transaction as the store allows. Returns the last
    /// revision (0 when there were none).
    async fn put_evals(&self, evals: &[Evaluation]) -> Result<i64, WriteError> {
        let mut revision = 0;
        for chunk in evals.chunks(self.store.max_txn_ops().max(1)) {
            let ops = chunk
                .iter()
                .map(|e| Ok(Op::put(e.key(&self.keys), json(e)?)))
                .collect::<Result<Vec<_>, WriteError>>()?;
            revision = self.store.txn(Txn::new().and_then(ops)).await?.revision;
        }
        Ok(revision)
    }

    /// The job an allocation belongs to: the current one from the cache, else its own copy.
    fn job_of(&self, alloc: &Allocation) -> Job {
        let key = self
            .keys
            .key(Kind::Job, alloc.namespace.as_str(), alloc.job_id.as_str());
        if let Some(job) = self.cache.jobs.get(&key) {
            return (*job).clone();
        }
        match &alloc.job {
            Some(job) => (**job).clone(),
            None => Job {
                id: alloc.job_id.clone(),
                namespace: alloc.namespace.clone(),
                priority: 50,
                ..Job::default()
            },
        }
    }

    /// The cached allocations placed on a node that are not terminal yet.
    fn live_allocs_on(&self, node_id: &str) -> Vec<std::sync::Arc<Allocation>> {
        self.cache
            .allocs
            .snapshot()
            .by(Index::ByNode, node_id)
            .filter(|a| !a.is_terminal())
            .cloned()
            .collect()
    }

    /// One `node-update`-style evaluation per job with live allocations on the node, and (with
    /// `system`) per system job that targets it — Nomad's `createNodeEvals`.
    fn node_evals(
        &self,
        node: &Node,
        trigger: &TriggeredBy,
        system: bool,
        now: i64,
    ) -> Vec<Evaluation> {
        let mut seen: BTreeSet<(Namespace, JobId)> = BTreeSet::new();
        let mut evals = Vec::new();
        let mut add = |job: &Job, evals: &mut Vec<Evaluation>| {
            if seen.insert((job.namespace.clone(), job.id.clone())) {
                let mut eval = new_eval(job, trigger.clone(), now);
                eval.node_id = node.id.clone();
                eval.node_modify_index = node.modify_index;
                eval.job_modify_index = job.job_modify_index;
                evals.push(eval);
            }
        };
        for alloc in self.live_allocs_on(node.id.as_str()) {
            let job = self.job_of(&alloc);
            add(&job, &mut evals);
        }
        if system {
            let jobs = self.cache.jobs.snapshot();
            for job in jobs.objects.values() {
                if matches!(job.r#type, JobType::System | JobType::Sysbatch)
                    && !job.stop
                    && system_job_targets(job, node)
                {
                    add(job, &mut evals);
                }
            }
        }
        evals
    }

    async fn read_node(&self, id: &str) -> Result<(String, KeyValue, Node), WriteError> {
        let key = self.keys.node(id);
        let kv = self
            .store
            .get(&key)
            .await?
            .ok_or_else(|| WriteError::NotFound("node not found".into()))?;
        let node = decode::<Node>(&kv)
            .ok_or_else(|| WriteError::Invalid(format!("node {id:?} does not decode")))?;
        Ok((key, kv, node))
    }

    /// Read a node, change it, write it with the evaluations the change calls for. `change`
    /// returns `None` when there is nothing to write.
    async fn update_node<F>(&self, id: &str, mut change: F) -> Result<NodeWrite, WriteError>
    where
        F: FnMut(&mut Node, i64) -> Result<Option<Vec<Evaluation>>, WriteError>,
    {
        for _ in 0..MAX_ATTEMPTS {
            let now = now_nanos();
            let (key, kv, old) = self.read_node(id).await?;
            let mut next = old.clone();
            let Some(evals) = change(&mut next, now)? else {
                return Ok(NodeWrite {
                    node_modify_index: kv.mod_revision,
                    index: kv.mod_revision,
                    ..NodeWrite::default()
                });
            };
            next.drain = next.drain_strategy.is_some();
            let room = self.store.max_txn_ops().saturating_sub(1);
            let (now_evals, later_evals) = evals.split_at(evals.len().min(room));
            let mut ops = vec![Op::put(key.clone(), json(&next)?)];
            for e in now_evals {
                ops.push(Op::put(e.key(&self.keys), json(e)?));
            }
            let resp = self
                .store
                .txn(
                    Txn::new()
                        .when([Compare::unchanged(key, kv.mod_revision)])
                        .and_then(ops),
                )
                .await?;
            if !resp.succeeded {
                continue;
            }
            let later = self.put_evals(later_evals).await?;
            let index = resp.revision.max(later);
            let eval_rev = if evals.is_empty() { 0 } else { index };
            self.show(&[(Kind::Node, resp.revision), (Kind::Eval, eval_rev)])
                .await;
            return Ok(NodeWrite {
                eval_create_index: if evals.is_empty() { 0 } else { resp.revision },
                eval_ids: evals.into_iter().map(|e| e.id).collect(),
                node_modify_index: resp.revision,
                index,
            });
        }
        Err(WriteError::Conflict(format!(
            "node {id:?} kept changing while updating it; try again"
        )))
    }

    /// `POST /v1/node/:id/eligibility`.
    pub async fn update_eligibility(
        &self,
        id: &NodeId,
        eligibility: SchedulingEligibility,
    ) -> Result<NodeWrite, WriteError> {
        self.update_node(id.as_str(), |node, now| {
            if node.drain_strategy.is_some() && eligibility == SchedulingEligibility::Eligible {
                return Err(WriteError::Invalid(
                    "can not set node's scheduling eligibility to eligible while it is draining"
                        .into(),
                ));
            }
            if node.scheduling_eligibility == eligibility {
                return Ok(None);
            }
            node.scheduling_eligibility = eligibility;
            let evals = match eligibility {
                SchedulingEligibility::Eligible => {
                    push_event(node, subsystems::CLUSTER, node_events::ELIGIBLE, now);
                    self.node_evals(node, &TriggeredBy::NodeUpdate, true, now)
                }
                SchedulingEligibility::Ineligible => {
                    push_event(node, subsystems::CLUSTER, node_events::INELIGIBLE, now);
                    Vec::new()
                }
            };
            Ok(Some(evals))
        })
        .await
    }

    /// `POST /v1/node/:id/drain`: a drain spec starts (or updates) a drain — the node becomes
    /// ineligible and the jobs with allocations on it are evaluated; `None` ends it.
    ///
    /// As in Nomad: a positive deadline sets `ForceDeadline = now + deadline`; 0 means no
    /// deadline and a negative one forces the drain now (both leave `ForceDeadline` unset).
    pub async fn update_drain(
        &self,
        id: &NodeId,
        req: DrainRequest,
    ) -> Result<NodeWrite, WriteError> {
        self.update_node(id.as_str(), |node, now| {
            let ts = Timestamp::from_unix_nanos(now);
            match &req.spec {
                Some(spec) => {
                    let started_at = node.drain_strategy.as_ref().map_or(ts, |d| d.started_at);
                    let force_deadline = if spec.deadline.nanos() > 0 {
                        ts + spec.deadline
                    } else {
                        Timestamp::ZERO
                    };
                    let message = if node.drain_strategy.is_none() {
                        node_events::DRAIN_SET
                    } else {
                        node_events::DRAIN_UPDATED
                    };
                    node.drain_strategy = Some(DrainStrategy {
                        drain_spec: spec.clone(),
                        force_deadline,
                        started_at,
                    });
                    node.scheduling_eligibility = SchedulingEligibility::Ineligible;
                    match &mut node.last_drain {
                        Some(last) if last.status == DrainStatus::Draining => last.updated_at = ts,
                        _ => {
                            node.last_drain = Some(DrainMetadata {
                                started_at: ts,
                                updated_at: ts,
                                status: DrainStatus::Draining,
                                accessor_id: String::new(),
                                meta: req.meta.clone(),
                            });
                        }
                    }
                    push_event(node, subsystems::DRAIN, message, now);
                    Ok(Some(self.node_evals(
                        node,
                        &TriggeredBy::NodeUpdate,
                        false,
                        now,
                    )))
                }
                None => {
                    let was_draining = node.drain_strategy.take().is_some();
                    let becomes_eligible = req.mark_eligible
                        && node.scheduling_eligibility == SchedulingEligibility::Ineligible;
                    if !was_draining && !becomes_eligible {
                        return Ok(None);
                    }
                    if was_draining {
                        push_event(node, subsystems::DRAIN, node_events::DRAIN_DISABLED, now);
                        if let Some(last) = node
                            .last_drain
                            .as_mut()
                            .filter(|l| l.status == DrainStatus::Draining)
                        {
                            last.status = DrainStatus::Canceled;
                            last.updated_at = ts;
                        }
                    }
                    if becomes_eligible {
                        node.scheduling_eligibility = SchedulingEligibility::Eligible;
                        push_event(node, subsystems::CLUSTER, node_events::ELIGIBLE, now);
                        return Ok(Some(self.node_evals(
                            node,
                            &TriggeredBy::NodeUpdate,
                            true,
                            now,
                        )));
                    }
                    Ok(Some(Vec::new()))
                }
            }
        })
        .await
    }

    /// `POST /v1/node/:id/purge`: marks the node's live allocations lost, deletes the node and
    /// its heartbeat, and evaluates the jobs that had allocations there.
    pub async fn purge_node(&self, id: &NodeId) -> Result<NodeWrite, WriteError> {
        let hb_key = self.heartbeat_key(id.as_str());
        let mut eval_ids = Vec::new();
        let mut eval_revision = 0;
        let mut lost_revision = 0;
        for _ in 0..MAX_ATTEMPTS {
            let now = now_nanos();
            let (key, kv, node) = self.read_node(id.as_str()).await?;
            // Losing the allocations evaluates their jobs (`node-update`), in the same
            // transactions.
            let live: Vec<String> = self
                .live_allocs_on(id.as_str())
                .iter()
                .map(|a| a.key(&self.keys))
                .collect();
            let lost = self
                .modify_allocs(&live, now, |a| {
                    if a.node_id != node.id || a.is_terminal() {
                        return false;
                    }
                    a.client_status = ClientStatus::Lost;
                    a.client_description = ALLOC_LOST_DESCRIPTION.into();
                    true
                })
                .await?;
            if lost.revision > 0 {
                lost_revision = lost.revision;
            }
            if lost.eval_revision > 0 {
                eval_revision = lost.eval_revision;
            }
            eval_ids.extend(lost.eval_ids);
            let heartbeat = self.store.get(&hb_key).await?;
            let txn = Txn::new()
                .when([Compare::unchanged(key.clone(), kv.mod_revision)])
                .and_then([Op::delete(key), Op::delete(hb_key.clone())]);
            let resp = self.store.txn(txn).await?;
            if !resp.succeeded {
                continue;
            }
            if let Some(record) =
                heartbeat.and_then(|kv| serde_json::from_slice::<HeartbeatRecord>(&kv.value).ok())
            {
                // The key is gone already; this only frees the lease early.
                if let Err(e) = self.store.revoke_lease(LeaseId(record.lease_id)).await {
                    tracing::debug!(node = %id, error = %e, "revoking a purged node's lease");
                }
            }
            self.show(&[
                (Kind::Node, resp.revision),
                (Kind::Alloc, lost_revision),
                (Kind::Eval, eval_revision),
            ])
            .await;
            return Ok(NodeWrite {
                eval_ids,
                eval_create_index: eval_revision,
                node_modify_index: resp.revision,
                index: resp.revision,
            });
        }
        Err(WriteError::Conflict(format!(
            "node {:?} kept changing while purging it; try again",
            id.as_str()
        )))
    }

    /// `POST /v1/allocation/:id/stop`: the allocation is told to stop (and to migrate, so its
    /// job places a replacement), and its job is evaluated.
    pub async fn stop_alloc(
        &self,
        namespace: &Namespace,
        id: &AllocId,
        no_shutdown_delay: bool,
    ) -> Result<AllocStopped, WriteError> {
        let key = self.keys.key(Kind::Alloc, namespace.as_str(), id.as_str());
        for _ in 0..MAX_ATTEMPTS {
            let now = now_nanos();
            let kv = self
                .store
                .get(&key)
                .await?
                .ok_or_else(|| WriteError::NotFound("alloc not found".into()))?;
            let old = decode::<Allocation>(&kv)
                .ok_or_else(|| WriteError::Invalid("allocation does not decode".into()))?;
            let mut next = old.clone();
            next.desired_status = DesiredStatus::Stop;
            next.desired_description = ALLOC_STOPPED_DESCRIPTION.into();
            next.desired_transition.migrate = Some(true);
            next.desired_transition.no_shutdown_delay = Some(no_shutdown_delay);
            next.modify_time = now;
            let job = self.job_of(&old);
            let mut eval = new_eval(&job, TriggeredBy::AllocStop, now);
            eval.job_modify_index = job.job_modify_index;
            let txn = Txn::new()
                .when([Compare::unchanged(key.clone(), kv.mod_revision)])
                .and_then([
                    Op::put(key.clone(), json(&next)?),
                    Op::put(eval.key(&self.keys), json(&eval)?),
                ]);
            let resp = self.store.txn(txn).await?;
            if !resp.succeeded {
                continue;
            }
            self.show(&[(Kind::Alloc, resp.revision), (Kind::Eval, resp.revision)])
                .await;
            return Ok(AllocStopped {
                eval_id: eval.id,
                index: resp.revision,
            });
        }
        Err(WriteError::Conflict(format!(
            "allocation {:?} kept changing while stopping it; try again",
            id.as_str()
        )))
    }

    /// Applies `change` to the allocations under `keys` (missing ones are skipped), in guarded
    /// transactions of at most `max_txn_ops` operations. A transaction that loses a race is
    /// recomputed from the values its failure branch read. An allocation that turns failed,
    /// complete or lost here also gets an evaluation of its job (one per job and call), in the
    /// same transaction.
    async fn modify_allocs<F>(
        &self,
        keys: &[String],
        now: i64,
        mut change: F,
    ) -> Result<AllocBatch, WriteError>
    where
        F: FnMut(&mut Allocation) -> bool,
    {
        // Each allocation costs a compare and a put, and may bring an evaluation put.
        let per_txn = (self.store.max_txn_ops() / 2).max(1);
        let mut revision = 0;
        let mut changed = 0;
        let mut evaluated: BTreeSet<(Namespace, JobId)> = BTreeSet::new();
        let mut eval_ids = Vec::new();
        let mut eval_revision = 0;
        let mut missing = Vec::new();
        for chunk in keys.chunks(per_txn) {
            let mut current = self.get_many(chunk).await?;
            missing.extend(
                chunk
                    .iter()
                    .zip(&current)
                    .filter(|(_, kv)| kv.is_none())
                    .map(|(k, _)| k.clone()),
            );
            let mut done = false;
            for _ in 0..MAX_ATTEMPTS {
                let mut compares = Vec::new();
                let mut ops = Vec::new();
                let mut evals: Vec<Evaluation> = Vec::new();
                let mut jobs_here: BTreeSet<(Namespace, JobId)> = BTreeSet::new();
                for (key, kv) in chunk.iter().zip(&current) {
                    let Some(kv) = kv else { continue };
                    let Some(old) = decode::<Allocation>(kv) else {
                        continue;
                    };
                    let mut next = old.clone();
                    if !change(&mut next) || next == old {
                        continue;
                    }
                    next.modify_time = now;
                    compares.push(Compare::unchanged(key.clone(), kv.mod_revision));
                    ops.push(Op::put(key.clone(), json(&next)?));
                    let trigger = match (old.client_status.is_terminal(), next.client_status) {
                        (false, ClientStatus::Failed) => Some(TriggeredBy::AllocFailure),
                        (false, ClientStatus::Complete | ClientStatus::Lost) => {
                            Some(TriggeredBy::NodeUpdate)
                        }
                        _ => None,
                    };
                    let job_key = (next.namespace.clone(), next.job_id.clone());
                    if let Some(trigger) = trigger
                        && !evaluated.contains(&job_key)
                        && jobs_here.insert(job_key)
                    {
                        let job = self.job_of(&next);
                        let mut eval = new_eval(&job, trigger, now);
                        eval.job_modify_index = job.job_modify_index;
                        eval.node_id = next.node_id.clone();
                        evals.push(eval);
                    }
                }
                if ops.is_empty() {
                    done = true;
                    break;
                }
                let n = ops.len();
                for e in &evals {
                    ops.push(Op::put(e.key(&self.keys), json(e)?));
                }
                let txn = Txn::new()
                    .when(compares)
                    .and_then(ops)
                    .or_else(chunk.iter().map(Op::get));
                let resp = self.store.txn(txn).await?;
                if resp.succeeded {
                    revision = resp.revision;
                    changed += n;
                    evaluated.extend(jobs_here);
                    if !evals.is_empty() {
                        eval_revision = resp.revision;
                    }
                    eval_ids.extend(evals.into_iter().map(|e| e.id));
                    done = true;
                    break;
                }
                current = (0..chunk.len())
                    .map(|i| resp.get_result(i).cloned())
                    .collect();
            }
            if !done {
                return Err(WriteError::Conflict(
                    "allocations kept changing while updating them; try again".into(),
                ));
            }
        }
        Ok(AllocBatch {
            revision,
            changed,
            eval_ids,
            eval_revision,
            missing,
        })
    }

    /// `POST /v1/client/allocations/update`: merges what clients own — `ClientStatus`,
    /// `ClientDescription`, `TaskStates`, `NetworkStatus` and the health in `DeploymentStatus` —
    /// into the stored allocations; the desired fields are never taken from the client.
    pub async fn update_allocs_from_client(
        &self,
        updates: Vec<AllocUpdate>,
    ) -> Result<AllocsUpdated, WriteError> {
        let now = now_nanos();
        // The last report about an allocation wins.
        let mut by_id: BTreeMap<AllocId, AllocUpdate> = BTreeMap::new();
        for u in updates {
            if u.id.is_empty() {
                return Err(WriteError::Invalid(
                    "allocation update without an ID".into(),
                ));
            }
            by_id.insert(u.id.clone(), u);
        }
        let mut index_by_id: Option<HashMap<String, String>> = None;
        let mut keyed: HashMap<String, AllocUpdate> = HashMap::new();
        let mut unknown = Vec::new();
        for (id, u) in by_id {
            let key = match &u.namespace {
                Some(ns) if !ns.is_empty() => {
                    Some(self.keys.key(Kind::Alloc, ns.as_str(), id.as_str()))
                }
                _ => index_by_id
                    .get_or_insert_with(|| {
                        self.cache
                            .allocs
                            .snapshot()
                            .objects
                            .iter()
                            .map(|(k, a)| (a.id.to_string(), k.clone()))
                            .collect()
                    })
                    .get(id.as_str())
                    .cloned(),
            };
            match key {
                Some(key) => {
                    keyed.insert(key, u);
                }
                None => unknown.push(id),
            }
        }
        let mut keys: Vec<String> = keyed.keys().cloned().collect();
        keys.sort();
        let batch = self
            .modify_allocs(&keys, now, |alloc| {
                let Some(u) = keyed.get(&alloc.key(&self.keys)) else {
                    return false;
                };
                merge_client_fields(alloc, u);
                true
            })
            .await?;
        let index = if batch.revision > 0 {
            self.show(&[
                (Kind::Alloc, batch.revision),
                (Kind::Eval, batch.eval_revision),
            ])
            .await;
            batch.revision
        } else {
            self.cache.allocs.index()
        };
        // Keys named by a namespace the allocation is not in.
        unknown.extend(
            batch
                .missing
                .iter()
                .filter_map(|k| keyed.get(k))
                .map(|u| u.id.clone()),
        );
        Ok(AllocsUpdated {
            index,
            updated: batch.changed,
            unknown,
            eval_ids: batch.eval_ids,
        })
    }

    /// `POST /v1/client/node/register`: creates or updates a node as its agent describes it,
    /// keeping what operators set (eligibility, drain), and (re)attaches its heartbeat key to a
    /// live lease.
    pub async fn register_node(
        &self,
        req: RegisterNode,
        heartbeat: HeartbeatConfig,
    ) -> Result<NodeRegistered, WriteError> {
        let given = req.node;
        if given.id.is_empty() {
            return Err(WriteError::Invalid(
                "missing node ID for client registration".into(),
            ));
        }
        if given.datacenter.is_empty() {
            return Err(WriteError::Invalid(
                "missing datacenter for client registration".into(),
            ));
        }
        if given.name.is_empty() {
            return Err(WriteError::Invalid(
                "missing node name for client registration".into(),
            ));
        }
        let key = self.keys.node(given.id.as_str());
        let hb_key = self.heartbeat_key(given.id.as_str());
        let mut granted: Option<LeaseId> = None;
        let result = async {
            for _ in 0..MAX_ATTEMPTS {
                let now = now_nanos();
                let existing = self.store.get(&key).await?;
                let old = existing.as_ref().and_then(decode::<Node>);
                let hb = self.store.get(&hb_key).await?;
                let mut next = given.clone();
                if !req.status_given {
                    next.status = NodeStatus::Ready;
                }
                if next.node_pool.is_empty() {
                    next.node_pool = "default".into();
                }
                let becomes_ready;
                match &old {
                    Some(old) => {
                        if !old.secret_id.is_empty()
                            && !next.secret_id.is_empty()
                            && old.secret_id != next.secret_id
                        {
                            return Err(WriteError::Invalid(
                                "node secret ID does not match. Not registering node.".into(),
                            ));
                        }
                        if next.secret_id.is_empty() {
                            next.secret_id = old.secret_id.clone();
                        }
                        next.scheduling_eligibility = old.scheduling_eligibility;
                        next.drain_strategy = old.drain_strategy.clone();
                        next.last_drain = old.last_drain.clone();
                        next.events = old.events.clone();
                        next.status_updated_at = old.status_updated_at;
                        let status = next.status;
                        next.status = old.status;
                        becomes_ready =
                            status == NodeStatus::Ready && old.status != NodeStatus::Ready;
                        if matches!(old.status, NodeStatus::Down | NodeStatus::Disconnected)
                            && status != old.status
                        {
                            push_event(
                                &mut next,
                                subsystems::CLUSTER,
                                node_events::REREGISTERED,
                                now,
                            );
                        }
                        set_status(&mut next, status, now);
                    }
                    None => {
                        next.events.clear();
                        push_event(&mut next, subsystems::CLUSTER, node_events::REGISTERED, now);
                        next.status_updated_at = now / 1_000_000_000;
                        becomes_ready = next.status == NodeStatus::Ready;
                    }
                }
                next.drain = next.drain_strategy.is_some();
                next.create_index = 0;
                next.modify_index = 0;
                let lease = match granted {
                    Some(l) => l,
                    None => {
                        let reusable = match hb.as_ref().and_then(|kv| {
                            serde_json::from_slice::<HeartbeatRecord>(&kv.value).ok()
                        }) {
                            Some(r) => match self.store.keep_alive(LeaseId(r.lease_id)).await {
                                Ok(_) => Some(LeaseId(r.lease_id)),
                                Err(StoreError::LeaseNotFound(_)) => None,
                                Err(e) => return Err(e.into()),
                            },
                            None => None,
                        };
                        match reusable {
                            Some(l) => l,
                            None => {
                                let l = self.store.grant_lease(heartbeat.lease_ttl()).await?;
                                granted = Some(l);
                                l
                            }
                        }
                    }
                };
                let record = HeartbeatRecord {
                    lease_id: lease.0,
                    ttl: duration_nanos(heartbeat.lease_ttl()),
                };
                let evals = if becomes_ready {
                    self.node_evals(&next, &TriggeredBy::NodeUpdate, true, now)
                } else {
                    Vec::new()
                };
                let room = self.store.max_txn_ops().saturating_sub(2);
                let (now_evals, later_evals) = evals.split_at(evals.len().min(room));
                let mut ops = vec![
                    Op::put(key.clone(), json(&next)?),
                    Op::put_with_lease(hb_key.clone(), json(&record)?, lease),
                ];
                for e in now_evals {
                    ops.push(Op::put(e.key(&self.keys), json(e)?));
                }
                let guards = [
                    Compare::unchanged(
                        key.clone(),
                        existing.as_ref().map_or(0, |kv| kv.mod_revision),
                    ),
                    Compare::unchanged(hb_key.clone(), hb.as_ref().map_or(0, |kv| kv.mod_revision)),
                ];
                let resp = match self.store.txn(Txn::new().when(guards).and_then(ops)).await {
                    // The reused lease expired between the keep-alive and the write.
                    Err(StoreError::LeaseNotFound(_)) if granted.is_none() => {
                        granted = Some(self.store.grant_lease(heartbeat.lease_ttl()).await?);
                        continue;
                    }
                    other => other?,
                };
                if !resp.succeeded {
                    continue;
                }
                granted = None;
                let later = self.put_evals(later_evals).await?;
                let index = resp.revision.max(later);
                let eval_rev = if evals.is_empty() { 0 } else { index };
                self.show(&[(Kind::Node, resp.revision), (Kind::Eval, eval_rev)])
                    .await;
                return Ok(NodeRegistered {
                    heartbeat_ttl: heartbeat.ttl,
                    eval_create_index: if evals.is_empty() { 0 } else { resp.revision },
                    eval_ids: evals.into_iter().map(|e| e.id).collect(),
                    node_modify_index: resp.revision,
                    index,
                });
            }
            Err(WriteError::Conflict(format!(
                "node {:?} kept changing while registering it; try again",
                given.id.as_str()
            )))
        }
        .await;
        if let Some(lease) = granted {
            // Granted but not used (the registration failed): free it now.
            if let Err(e) = self.store.revoke_lease(lease).await {
                tracing::debug!(error = %e, "revoking an unused node lease");
            }
        }
        result
    }

    /// `PUT /v1/client/node/:id/heartbeat`: keeps the node's lease alive (re-creating the lease
    /// and the heartbeat key when they expired), and marks a down node ready again.
    pub async fn heartbeat_node(
        &self,
        id: &NodeId,
        heartbeat: HeartbeatConfig,
    ) -> Result<Heartbeat, WriteError> {
        let key = self.keys.node(id.as_str());
        let hb_key = self.heartbeat_key(id.as_str());
        let mut granted: Option<LeaseId> = None;
        let result = async {
            for _ in 0..MAX_ATTEMPTS {
                let now = now_nanos();
                let (_, kv, node) = self.read_node(id.as_str()).await?;
                let hb = self.store.get(&hb_key).await?;
                let lease_alive = match hb
                    .as_ref()
                    .and_then(|kv| serde_json::from_slice::<HeartbeatRecord>(&kv.value).ok())
                {
                    Some(r) => match self.store.keep_alive(LeaseId(r.lease_id)).await {
                        Ok(_) => true,
                        Err(StoreError::LeaseNotFound(_)) => false,
                        Err(e) => return Err(e.into()),
                    },
                    None => false,
                };
                let revive = matches!(node.status, NodeStatus::Down | NodeStatus::Disconnected);
                if lease_alive && !revive {
                    return Ok(Heartbeat {
                        heartbeat_ttl: heartbeat.ttl,
                        eval_ids: Vec::new(),
                        index: kv.mod_revision,
                    });
                }
                let mut compares = Vec::new();
                let mut ops = Vec::new();
                let mut evals = Vec::new();
                if !lease_alive {
                    let lease = match granted {
                        Some(l) => l,
                        None => {
                            let l = self.store.grant_lease(heartbeat.lease_ttl()).await?;
                            granted = Some(l);
                            l
                        }
                    };
                    let record = HeartbeatRecord {
                        lease_id: lease.0,
                        ttl: duration_nanos(heartbeat.lease_ttl()),
                    };
                    compares.push(Compare::unchanged(
                        hb_key.clone(),
                        hb.as_ref().map_or(0, |kv| kv.mod_revision),
                    ));
                    ops.push(Op::put_with_lease(hb_key.clone(), json(&record)?, lease));
                }
                if revive {
                    let mut next = node.clone();
                    set_status(&mut next, NodeStatus::Ready, now);
                    push_event(
                        &mut next,
                        subsystems::CLUSTER,
                        node_events::HEARTBEAT_REREGISTERED,
                        now,
                    );
                    next.drain = next.drain_strategy.is_some();
                    compares.push(Compare::unchanged(key.clone(), kv.mod_revision));
                    ops.push(Op::put(key.clone(), json(&next)?));
                    evals = self.node_evals(&next, &TriggeredBy::NodeUpdate, true, now);
                }
                let room = self.store.max_txn_ops().saturating_sub(ops.len());
                let (now_evals, later_evals) = evals.split_at(evals.len().min(room));
                for e in now_evals {
                    ops.push(Op::put(e.key(&self.keys), json(e)?));
                }
                let resp = self
                    .store
                    .txn(Txn::new().when(compares).and_then(ops))
                    .await?;
                if !resp.succeeded {
                    continue;
                }
                granted = None;
                let later = self.put_evals(later_evals).await?;
                let eval_rev = if evals.is_empty() {
                    0
                } else {
                    resp.revision.max(later)
                };
                let node_rev = if revive { resp.revision } else { 0 };
                self.show(&[(Kind::Node, node_rev), (Kind::Eval, eval_rev)])
                    .await;
                let index = if revive {
                    resp.revision
                } else {
                    kv.mod_revision
                };
                return Ok(Heartbeat {
                    heartbeat_ttl: heartbeat.ttl,
                    eval_ids: evals.into_iter().map(|e| e.id).collect(),
                    index,
                });
            }
            Err(WriteError::Conflict(format!(
                "node {:?} kept changing during its heartbeat; try again",
                id.as_str()
            )))
        }
        .await;
        if let Some(lease) = granted
            && let Err(e) = self.store.revoke_lease(lease).await
        {
            tracing::debug!(error = %e, "revoking an unused node lease");
        }
        result
    }
}

fn duration_nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Nomad's `UpdateAllocFromClient`: the client is the authority on its status, description,
/// task states and network status; of the deployment status it may only set the health (and
/// its timestamp), the rest being the servers'.
pub fn merge_client_fields(alloc: &mut Allocation, u: &AllocUpdate) {
    if let Some(s) = u.client_status {
        alloc.client_status = s;
    }
    if let Some(d) = &u.client_description {
        alloc.client_description = d.clone();
    }
    if let Some(t) = &u.task_states {
        alloc.task_states = t.clone();
    }
    if let Some(n) = &u.network_status {
        alloc.network_status = Some(n.clone());
    }
    if let Some(c) = &u.check_results {
        alloc.check_results = c.clone();
    }
    let current_deployment = u
        .deployment_id
        .as_ref()
        .is_none_or(|d| *d == alloc.deployment_id);
    if let Some(new) = u
        .deployment_status
        .as_ref()
        .filter(|d| d.has_health() && current_deployment)
    {
        match &mut alloc.deployment_status {
            Some(current) => {
                if current.healthy != new.healthy {
                    current.healthy = new.healthy;
                    current.timestamp = new.timestamp;
                }
            }
            None => {
                alloc.deployment_status = Some(AllocDeploymentStatus {
                    healthy: new.healthy,
                    timestamp: new.timestamp,
                    canary: false,
                    modify_index: 0,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datacenter_globs() {
        assert!(datacenter_matches("dc1", "dc1"));
        assert!(!datacenter_matches("dc1", "dc2"));
        assert!(datacenter_matches("*", "dc2"));
        assert!(datacenter_matches("dc*", "dc2"));
        assert!(datacenter_matches("*-east", "us-east"));
        assert!(!datacenter_matches("*-east", "us-west"));
        assert!(datacenter_matches("us-*-1", "us-east-1"));
        assert!(!datacenter_matches("us-*-1", "us-east-2"));
    }

    #[test]
    fn client_merge_takes_only_client_fields() {
        let mut alloc = Allocation {
            desired_status: DesiredStatus::Stop,
            deployment_status: Some(AllocDeploymentStatus {
                healthy: None,
                canary: true,
                ..Default::default()
            }),
            ..Allocation::default()
        };
        let update = AllocUpdate {
            client_status: Some(ClientStatus::Running),
            client_description: Some("Tasks are running".into()),
            deployment_status: Some(AllocDeploymentStatus {
                healthy: Some(true),
                canary: false,
                ..Default::default()
            }),
            ..AllocUpdate::default()
        };
        merge_client_fields(&mut alloc, &update);
        assert_eq!(alloc.client_status, ClientStatus::Running);
        assert_eq!(alloc.desired_status, DesiredStatus::Stop);
        let ds = alloc.deployment_status.unwrap();
        assert_eq!(ds.healthy, Some(true));
        assert!(ds.canary, "canary is the servers' to clear");
    }

    #[test]
    fn a_health_verdict_for_a_deployment_the_allocation_left_is_ignored() {
        let mut alloc = Allocation {
            deployment_id: DeploymentId::new("new"),
            ..Allocation::default()
        };
        let verdict = |deployment: &str| AllocUpdate {
            deployment_status: Some(AllocDeploymentStatus {
                healthy: Some(true),
                ..Default::default()
            }),
            deployment_id: Some(DeploymentId::new(deployment)),
            ..AllocUpdate::default()
        };
        merge_client_fields(&mut alloc, &verdict("old"));
        assert_eq!(
            alloc.deployment_status, None,
            "decided for the old deployment"
        );
        merge_client_fields(&mut alloc, &verdict("new"));
        assert_eq!(alloc.deployment_status.unwrap().healthy, Some(true));
    }

    #[test]
    fn client_check_results_replace_the_stored_ones_only_when_sent() {
        let result = CheckQueryResult {
            id: CheckId::new("c1"),
            check: "alive".into(),
            ..CheckQueryResult::default()
        };
        let mut alloc = Allocation::default();
        let with = AllocUpdate {
            check_results: Some(BTreeMap::from([(result.id.clone(), result.clone())])),
            ..AllocUpdate::default()
        };
        merge_client_fields(&mut alloc, &with);
        assert_eq!(alloc.check_results[&result.id], result);
        // A report without the field (a client that sends none) leaves them alone.
        merge_client_fields(&mut alloc, &AllocUpdate::default());
        assert_eq!(alloc.check_results.len(), 1);
        let update: AllocUpdate = serde_json::from_value(serde_json::json!({
            "ID": "a", "CheckResults": {"c1": {"ID": "c1", "Status": "failure"}}
        }))
        .unwrap();
        merge_client_fields(&mut alloc, &update);
        assert_eq!(
            alloc.check_results[&result.id].status,
            caravan_schemas::alloc::CheckStatus::Failure
        );
    }
}
