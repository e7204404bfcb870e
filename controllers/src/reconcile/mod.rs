//! The job reconciler: given one job and every allocation it has, decide what should happen to
//! those allocations — place, stop, update in place, replace, migrate, reschedule — as Nomad's
//! scheduler does in its reconcile phase. Choosing nodes is not done here: a [`Place`] names the
//! allocation to create and the scheduler (`crate::scheduler`) picks its node.
//!
//! [`reconcile`] is pure: no I/O, no clock (`now` is an input, Unix nanoseconds), no randomness.
//! It is level-triggered and idempotent: applying a [`Plan`] and reconciling the result again
//! yields an empty plan.
//!
//! - Service and batch jobs go through the count-based reconciler (`cluster.rs`): per group keep
//!   `count` allocations named `job.group[i]`, replace lost and failed ones, migrate off draining
//!   nodes, roll out new versions.
//! - System and sysbatch jobs go through the per-node reconciler (`node.rs`): one allocation per
//!   group on every eligible node.
//!
//! Service jobs roll new versions out through deployments (`deploy.rs`, Nomad's model): a
//! group with an update block (`max_parallel > 0`) gets a [`Deployment`] when a new job version
//! (or the first one) is placed; destructive updates then go at most `max_parallel` at a time
//! (`rollout.rs`), canaries wait beside the old allocations until promotion, and a paused or
//! failed deployment makes no further progress. Whether an allocation is healthy is the
//! client's call; whether a deployment succeeded, failed or is promoted is the deployment
//! watcher's ([`crate::deployment`]). See `docs/deployments.md`.
//!
//! # Applying a plan
//!
//! - [`Plan::stop`]: set `DesiredStatus = stop`, `DesiredDescription = description`, and the
//!   client status when given (`lost`). A stop with [`descriptions::RESCHEDULED`] belongs to the
//!   [`PlaceReason::Reschedule`] placement whose `previous_alloc` it is: if that placement
//!   fails, either leave the failed allocation alone or stop it and set its
//!   `RescheduleTracker.LastReschedule` to [`reschedule::LAST_RESCHEDULE_NO_PLACEMENT`] (it is
//!   then retried).
//! - [`Plan::deployment_updates`]: apply each to the deployment it names
//!   ([`StatusUpdate::apply`]); [`Plan::deployment`]: create it (its ID is
//!   [`Input::new_deployment_id`]). Both go in the same transaction as the allocations.
//! - [`Plan::place`]: create `name` in `group` with the current job (or, when
//!   [`Place::job_version`] is set, with that version of the job), `PreviousAllocation =
//!   previous_alloc`, `RescheduleTracker = reschedule_tracker`; set the previous allocation's
//!   `NextAllocation`. The scheduler picks the node (or checks `node` for system jobs). A
//!   placement of the current version joins [`Plan::deployment_id`] (`DeploymentID`); a canary
//!   gets `DeploymentStatus = {Canary: true}`.
//! - [`Plan::inplace_update`]: replace the allocation's `Job` with the current one; set its
//!   `DeploymentID` to [`Plan::deployment_id`] (empty when `None`) and, when that changes it,
//!   clear its `DeploymentStatus` (its health is decided again for the new deployment).
//! - [`Plan::destructive_update`]: stop the old one only if its replacement is placed.
//! - [`Plan::disconnect`]: `ClientStatus = unknown`, `ClientDescription =`
//!   [`descriptions::UNKNOWN`], append an `AllocState { Field: 0, Value: "unknown", Time: now }`.
//! - [`Plan::reschedule_later`]: create a follow-up evaluation at `at` and record it as the
//!   allocation's `FollowupEvalID` (or just requeue the job for [`Plan::wake_at`]).
//! - [`Plan::wake_at`]: reconcile the job again then, even if nothing else changes.

mod cluster;
mod deploy;
mod node;
pub mod reschedule;
mod rollout;
mod status;
mod tasks_updated;

#[cfg(test)]
pub(crate) mod tests;

use crate::deployment::StatusUpdate;
use caravan_schemas::alloc::{Allocation, ClientStatus, RescheduleTracker};
use caravan_schemas::deployment::Deployment;
use caravan_schemas::job::{Job, JobType, TaskGroup};
use caravan_schemas::node::{Node, NodeStatus, SchedulingEligibility};
use caravan_schemas::{AllocId, DeploymentId, NodeId};
use std::collections::BTreeMap;
use std::fmt;

pub use reschedule::{
    fail_time, next_delay, next_reschedule_time, next_reschedule_tracker, reschedule_eligible,
    reschedule_policy,
};
pub use status::job_status;
pub use tasks_updated::{destructive_change, tasks_updated};

/// Nomad's `DesiredDescription` texts for stopped allocations (`scheduler/structs/const.go`).
pub mod descriptions {
    /// Scaled down, group removed, job stopped or purged, duplicate name.
    pub const NOT_NEEDED: &str = "alloc not needed due to job update";
    /// Moved off a draining node (or `alloc stop`).
    pub const MIGRATING: &str = "alloc is being migrated";
    /// Replaced by an allocation of the new job version.
    pub const UPDATING: &str = "alloc is being updated due to job update";
    /// Its node is down (client status set to lost).
    pub const LOST: &str = "alloc is lost since its node is down";
    /// Client description of an allocation whose node is disconnected.
    pub const UNKNOWN: &str = "alloc is unknown since its node is disconnected";
    /// Failed and replaced by a rescheduled allocation.
    pub const RESCHEDULED: &str = "alloc was rescheduled because it failed";
    /// A system job's allocation on a draining node.
    pub const NODE_TAINTED: &str = "alloc not needed as node is tainted";
}

/// What the reconciler looks at for one job.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// The job; `None` when it was purged: everything still running is stopped.
    pub job: Option<&'a Job>,
    /// Every allocation of the job, of any version, terminal ones included. Each should carry
    /// the job version it runs (`Allocation::job`); one without is taken as current.
    pub allocs: &'a [Allocation],
    /// The nodes the allocations sit on (more is fine). An allocation whose node is missing
    /// here is on a node that no longer exists: it is lost.
    pub nodes: &'a BTreeMap<NodeId, NodeView>,
    /// For system and sysbatch jobs: the ready, eligible, non-draining nodes in the job's
    /// datacenters and node pool. Constraints are checked later by the scheduler; a node it
    /// rejects simply gets nothing. Ignored for service and batch jobs.
    pub eligible_nodes: &'a [NodeId],
    /// Unix nanoseconds.
    pub now: i64,
    /// The job's latest deployment (the one created last), whatever its status; `None` when
    /// the job never had one.
    pub deployment: Option<&'a Deployment>,
    /// The ID a deployment created by this plan gets (a fresh UUID); unused when the plan
    /// creates none.
    pub new_deployment_id: &'a DeploymentId,
}

/// What the reconciler needs to know about a node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeView {
    pub status: NodeStatus,
    /// Scheduling eligibility is `eligible`.
    pub eligible: bool,
    /// Set while the node drains.
    pub drain: Option<DrainView>,
    pub datacenter: String,
    pub node_pool: String,
}

/// A drain in progress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainView {
    /// When the drain stops waiting and moves everything off at once (Unix nanoseconds).
    /// `None`: no deadline; `Some(i64::MIN)`: a forced drain.
    pub deadline: Option<i64>,
    /// System jobs' allocations stay on the node.
    pub ignore_system_jobs: bool,
}

impl NodeView {
    /// The view of a node record.
    pub fn of(node: &Node) -> Self {
        let drain = match &node.drain_strategy {
            Some(strategy) => {
                let spec = strategy.drain_spec.deadline.nanos();
                let deadline = if spec < 0 {
                    Some(i64::MIN)
                } else if spec == 0 {
                    None
                } else {
                    Some(strategy.force_deadline.unix_nanos().unwrap_or(i64::MIN))
                };
                Some(DrainView {
                    deadline,
                    ignore_system_jobs: strategy.drain_spec.ignore_system_jobs,
                })
            }
            // Nomad treats the legacy flag without a strategy as a forced drain.
            None if node.drain => Some(DrainView {
                deadline: Some(i64::MIN),
                ignore_system_jobs: false,
            }),
            None => None,
        };
        NodeView {
            status: node.status,
            eligible: node.scheduling_eligibility == SchedulingEligibility::Eligible,
            drain,
            datacenter: node.datacenter.clone(),
            node_pool: node.node_pool.clone(),
        }
    }

    /// Views of many nodes, by id.
    pub fn index<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> BTreeMap<NodeId, NodeView> {
        nodes
            .into_iter()
            .map(|n| (n.id.clone(), NodeView::of(n)))
            .collect()
    }

    pub fn is_draining(&self) -> bool {
        self.drain.is_some()
    }

    /// Ready, eligible and not draining: new work may go here (Nomad's `Node.Ready`).
    pub fn is_ready(&self) -> bool {
        self.status == NodeStatus::Ready && self.eligible && self.drain.is_none()
    }

    /// The drain's deadline has passed: everything leaves now.
    pub fn drain_deadline_passed(&self, now: i64) -> bool {
        self.drain
            .and_then(|d| d.deadline)
            .is_some_and(|deadline| deadline <= now)
    }

    /// In one of the job's datacenters (globs allowed, as Nomad's `dc*`) and its node pool.
    pub fn in_job(&self, job: &Job) -> bool {
        let dc_ok = job.datacenters.is_empty()
            || job
                .datacenters
                .iter()
                .any(|pattern| glob_match(pattern, &self.datacenter));
        let pool = |p: &str| if p.is_empty() { "default" } else { p }.to_owned();
        let pool_ok = job.node_pool == "all" || pool(&job.node_pool) == pool(&self.node_pool);
        dc_ok && pool_ok
    }
}

/// `*` matches any run of characters (Nomad matches datacenters with `go-glob`).
fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// What should happen to a job's allocations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Allocations to create. Each is applied on its own (the scheduler may fail some).
    pub place: Vec<Place>,
    /// Allocations to stop (desired status `stop`).
    pub stop: Vec<Stop>,
    /// Allocations to move to the current job version where they are, without a restart.
    pub inplace_update: Vec<AllocId>,
    /// Allocations to replace by one of the current version: stop and place, atomically.
    pub destructive_update: Vec<DestructiveUpdate>,
    /// Allocations on disconnected nodes to mark `unknown` until their disconnect window ends.
    pub disconnect: Vec<Disconnect>,
    /// Failed allocations that will be rescheduled once their delay has passed; each needs a
    /// follow-up evaluation (listed only while the allocation has no `FollowupEvalID`).
    pub reschedule_later: Vec<RescheduleLater>,
    /// Per group, the counts `job plan` reports (Nomad's `DesiredTGUpdates`).
    pub desired_tg_updates: BTreeMap<String, DesiredUpdates>,
    /// The job's status once this plan is applied, if every placement succeeds.
    pub job_status: JobStatus,
    /// The earliest time at which reconciling again would decide something new (a reschedule
    /// delay ends, a disconnect window closes, a drain deadline passes); `None` when nothing is
    /// waiting on the clock.
    pub wake_at: Option<i64>,
    /// A deployment to create, with [`Input::new_deployment_id`] as its ID: the job's service
    /// groups with an update block start rolling out a new version (or the first one).
    pub deployment: Option<Deployment>,
    /// Status changes of the job's existing deployment: cancelled by a newer job version or
    /// because the job is stopped.
    pub deployment_updates: Vec<StatusUpdate>,
    /// The deployment that this plan's placements of the current job version and its in-place
    /// updates join (their `DeploymentID`): the one created here, or the job's active one.
    /// `None`: they join none.
    pub deployment_id: Option<DeploymentId>,
}

impl Plan {
    /// Nothing to do to any allocation (follow-ups, annotations and deployments aside; see
    /// [`Plan::changes_deployments`]).
    pub fn is_empty(&self) -> bool {
        self.place.is_empty()
            && self.stop.is_empty()
            && self.inplace_update.is_empty()
            && self.destructive_update.is_empty()
            && self.disconnect.is_empty()
    }

    /// A deployment is created or an existing one changes status.
    pub fn changes_deployments(&self) -> bool {
        self.deployment.is_some() || !self.deployment_updates.is_empty()
    }

    /// Every new allocation: placements and the replacements of destructive updates.
    pub fn placements(&self) -> impl Iterator<Item = &Place> {
        self.place
            .iter()
            .chain(self.destructive_update.iter().map(|d| &d.place))
    }

    fn group(&mut self, name: &str) -> &mut DesiredUpdates {
        self.desired_tg_updates.entry(name.to_owned()).or_default()
    }

    fn wake(&mut self, at: i64) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }
}

/// Why an allocation is placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlaceReason {
    /// A missing allocation: first run, scale up, a new node (system), a failed system alloc.
    New,
    /// Replaces a failed allocation per the group's reschedule policy.
    Reschedule,
    /// Replaces an allocation whose node is down or gone (not a reschedule attempt).
    Lost,
    /// Replaces an allocation moved off a draining node.
    Migrate,
    /// The new-version half of a destructive update.
    Update,
    /// A canary of a deployment: placed beside the allocations it may replace.
    Canary,
}

/// An allocation to create.
#[derive(Clone, Debug, PartialEq)]
pub struct Place {
    pub group: String,
    /// `job.group[index]`.
    pub name: String,
    pub index: u32,
    pub reason: PlaceReason,
    /// The allocation this one replaces: set `PreviousAllocation` on the new one and
    /// `NextAllocation` on that one.
    pub previous_alloc: Option<AllocId>,
    /// The node the replaced allocation was on.
    pub previous_node: Option<NodeId>,
    /// System and sysbatch: the node to place on (the scheduler only checks it fits).
    pub node: Option<NodeId>,
    /// Prefer this node (the previous one, when the group's ephemeral disk is sticky or
    /// migrates, as Nomad's `findPreferredNode`).
    pub preferred_node: Option<NodeId>,
    /// Avoid these nodes (a rescheduled allocation's previous nodes).
    pub penalty_nodes: Vec<NodeId>,
    /// For [`PlaceReason::Reschedule`]: the new allocation's `RescheduleTracker` (earlier
    /// attempts carried over plus this one).
    pub reschedule_tracker: Option<RescheduleTracker>,
    /// A canary of the deployment (a new canary, or the replacement of a failed or lost one):
    /// set `DeploymentStatus = {Canary: true}` on the new allocation.
    pub canary: bool,
    /// Place this version of the job instead of the current one: the version `previous_alloc`
    /// runs (its `Job` can be reused). Set on the replacement of an allocation of an older
    /// version with other tasks (lost, rescheduled, migrated) while the group's canaries await
    /// promotion: the replacement keeps running what it replaces, as Nomad's
    /// `downgradeNonCanary`, and joins no deployment.
    pub job_version: Option<u64>,
}

impl Place {
    fn new(group: &str, name: String, index: u32, reason: PlaceReason) -> Self {
        Place {
            group: group.to_owned(),
            name,
            index,
            reason,
            previous_alloc: None,
            previous_node: None,
            node: None,
            preferred_node: None,
            penalty_nodes: Vec::new(),
            reschedule_tracker: None,
            canary: false,
            job_version: None,
        }
    }

    /// Replaces a failed allocation.
    pub fn is_reschedule(&self) -> bool {
        self.reason == PlaceReason::Reschedule
    }
}

/// An allocation to stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stop {
    pub alloc_id: AllocId,
    pub group: String,
    /// `DesiredDescription`; one of [`descriptions`].
    pub description: &'static str,
    /// A client status to set with it: `lost` for allocations on down nodes.
    pub client_status: Option<ClientStatus>,
}

/// Replace an allocation with one of the current job version. Apply both halves or neither:
/// stop the old one only when the new one is placed (Nomad's atomic place/stop).
#[derive(Clone, Debug, PartialEq)]
pub struct DestructiveUpdate {
    pub alloc_id: AllocId,
    /// `DesiredDescription` of the stopped allocation ([`descriptions::UPDATING`]).
    pub description: &'static str,
    pub place: Place,
}

/// Mark an allocation `unknown`: its node is disconnected and its group tolerates that.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disconnect {
    pub alloc_id: AllocId,
    pub group: String,
    /// When it is declared lost (and replaced) unless its node comes back.
    pub expires_at: i64,
}

/// A failed allocation to reschedule later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RescheduleLater {
    pub alloc_id: AllocId,
    pub group: String,
    /// When (Unix nanoseconds) its reschedule delay ends.
    pub at: i64,
}

/// Per-group counts, as Nomad's plan annotations (`DesiredTGUpdates`) report them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DesiredUpdates {
    pub ignore: u64,
    pub place: u64,
    pub migrate: u64,
    pub stop: u64,
    pub in_place_update: u64,
    pub destructive_update: u64,
    pub canary: u64,
    pub preemptions: u64,
    pub disconnect: u64,
    pub reconnect: u64,
    pub reschedule_now: u64,
    pub reschedule_later: u64,
}

/// A job's status (`Job.Status`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum JobStatus {
    /// Nothing placed yet, or work waiting to be placed.
    #[default]
    Pending,
    /// Some allocation is not terminal (or a periodic/parameterized/system job not stopped).
    Running,
    /// Stopped, or everything finished.
    Dead,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Dead => "dead",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Decides what should happen to one job's allocations.
pub fn reconcile(input: &Input<'_>) -> Plan {
    let mut plan = Plan::default();
    let by_group = group_allocs(input.allocs);
    let deploy = deploy::Deploy::new(input, &mut plan);
    match input.job {
        None => stop_everything(input, None, &by_group, &mut plan),
        Some(job) if job.stop || is_parent(job) => {
            stop_everything(input, Some(job), &by_group, &mut plan);
        }
        Some(job) => {
            let ctx = Ctx {
                job,
                nodes: input.nodes,
                now: input.now,
                deploy,
            };
            match job.r#type {
                JobType::Service | JobType::Batch => cluster::reconcile(&ctx, &by_group, &mut plan),
                JobType::System | JobType::Sysbatch => {
                    node::reconcile(&ctx, &by_group, input.eligible_nodes, &mut plan);
                }
            }
            ctx.deploy.finish(&mut plan);
        }
    }
    plan.job_status = status::after_plan(input, &plan);
    plan
}

/// What every step needs.
struct Ctx<'a> {
    job: &'a Job,
    nodes: &'a BTreeMap<NodeId, NodeView>,
    now: i64,
    /// The job's deployment as far as this job version is concerned.
    deploy: deploy::Deploy<'a>,
}

impl Ctx<'_> {
    fn node(&self, alloc: &Allocation) -> Option<&NodeView> {
        self.nodes.get(&alloc.node_id)
    }

    /// The allocation runs the current job version (one that carries no job is taken as
    /// current).
    fn is_current(&self, alloc: &Allocation) -> bool {
        alloc.job.as_deref().is_none_or(|j| {
            j.version == self.job.version
                && j.job_modify_index == self.job.job_modify_index
                && j.create_index == self.job.create_index
        })
    }

    fn name(&self, group: &str, index: u32) -> String {
        caravan_schemas::alloc::alloc_name(self.job.id.as_str(), group, index)
    }

    /// The allocation cannot be updated in place: a task changed (Nomad's `tasksUpdated`), or
    /// its node left the job's datacenters or node pool.
    fn needs_destructive(&self, alloc: &Allocation, tg: &TaskGroup) -> bool {
        self.tasks_changed(alloc, tg) || self.node(alloc).is_none_or(|n| !n.in_job(self.job))
    }

    /// The allocation's job version runs other tasks than `tg` (Nomad's `tasksUpdated`).
    fn tasks_changed(&self, alloc: &Allocation, tg: &TaskGroup) -> bool {
        alloc
            .job
            .as_deref()
            .and_then(|j| j.group(&alloc.task_group))
            .is_none_or(|old| tasks_updated(old, tg))
    }

    /// The node a replacement of `prev` should prefer: its own, when the group's ephemeral
    /// disk is sticky or migrates and that node still takes work (Nomad's `findPreferredNode`).
    fn preferred_node(&self, prev: &Allocation, tg: &TaskGroup) -> Option<NodeId> {
        let disk = tg.ephemeral_disk.as_ref()?;
        if !(disk.sticky || disk.migrate) {
            return None;
        }
        if let Some(old) = prev.job.as_deref()
            && (old.node_pool != self.job.node_pool || old.datacenters != self.job.datacenters)
        {
            return None;
        }
        let node = self.node(prev)?;
        node.is_ready().then(|| prev.node_id.clone())
    }

    /// A placement that replaces `prev` under the same name.
    fn replacement(&self, prev: &Allocation, tg: &TaskGroup, reason: PlaceReason) -> Place {
        let index = prev.index().unwrap_or(0);
        let mut place = Place::new(&tg.name, prev.name.clone(), index, reason);
        place.previous_alloc = Some(prev.id.clone());
        place.previous_node = (!prev.node_id.is_empty()).then(|| prev.node_id.clone());
        place.preferred_node = self.preferred_node(prev, tg);
        place
    }
}

/// A parent job (periodic or parameterized) only launches children; it runs nothing itself.
fn is_parent(job: &Job) -> bool {
    job.parent_id.is_empty()
        && (job.periodic.as_ref().is_some_and(|p| p.enabled)
            || (job.parameterized_job.is_some() && !job.dispatched))
}

/// The allocations by group, each group sorted by index, then age, then id.
fn group_allocs(allocs: &[Allocation]) -> BTreeMap<&str, Vec<&Allocation>> {
    let mut by_group: BTreeMap<&str, Vec<&Allocation>> = BTreeMap::new();
    for alloc in allocs {
        by_group
            .entry(alloc.task_group.as_str())
            .or_default()
            .push(alloc);
    }
    for allocs in by_group.values_mut() {
        allocs.sort_by(|a, b| {
            (a.index(), a.create_index, &a.id).cmp(&(b.index(), b.create_index, &b.id))
        });
    }
    by_group
}

/// Neither stopped by the servers nor finished on the client.
fn is_live(alloc: &Allocation) -> bool {
    !alloc.is_terminal()
}

/// The job is stopped, purged, or a parent: stop every live allocation.
fn stop_everything(
    input: &Input<'_>,
    job: Option<&Job>,
    by_group: &BTreeMap<&str, Vec<&Allocation>>,
    plan: &mut Plan,
) {
    for tg in job.iter().flat_map(|j| j.task_groups.iter()) {
        plan.group(&tg.name);
    }
    for (group, allocs) in by_group {
        plan.group(group);
        for alloc in allocs.iter().filter(|a| is_live(a)) {
            let stop = stop_live(alloc, input.nodes);
            plan.stop.push(stop);
            plan.group(group).stop += 1;
        }
    }
}

/// Stops a live allocation that is not wanted: lost if its node is down or gone.
fn stop_live(alloc: &Allocation, nodes: &BTreeMap<NodeId, NodeView>) -> Stop {
    let lost = nodes
        .get(&alloc.node_id)
        .is_none_or(|n| n.status == NodeStatus::Down);
    if lost {
        stop(alloc, descriptions::LOST, Some(ClientStatus::Lost))
    } else {
        stop(alloc, descriptions::NOT_NEEDED, None)
    }
}

fn stop(
    alloc: &Allocation,
    description: &'static str,
    client_status: Option<ClientStatus>,
) -> Stop {
    Stop {
        alloc_id: alloc.id.clone(),
        group: alloc.task_group.clone(),
        description,
        client_status,
    }
}

/// When an allocation marked `unknown` on a disconnected node is declared lost: the last time
/// it became unknown (else its last modification) plus the group's `max_client_disconnect`.
fn disconnect_expiry(alloc: &Allocation, window: i64) -> i64 {
    let since = alloc
        .alloc_states
        .iter()
        .rev()
        .find(|s| s.field == 0 && s.value == ClientStatus::Unknown.as_str())
        .and_then(|s| s.time.unix_nanos())
        .unwrap_or(alloc.modify_time);
    since.saturating_add(window)
}

/// The group's `max_client_disconnect`, when set and positive.
fn disconnect_window(tg: &TaskGroup) -> Option<i64> {
    tg.max_client_disconnect
        .map(|d| d.nanos())
        .filter(|&n| n > 0)
}
