//! Builders for reconciler tests: jobs, groups, allocations, node views, and a tiny world that
//! applies plans the way the controller loop must.

use crate::deployment::{WatchInput, WatchOutcome, watch};
use crate::reconcile::{DrainView, Input, NodeView, Plan, reconcile};
use caravan_schemas::alloc::{
    AllocDeploymentStatus, AllocState, Allocation, ClientStatus, DesiredStatus, RescheduleEvent,
    RescheduleTracker, TaskState, TaskStatus, alloc_name,
};
use caravan_schemas::deployment::Deployment;
use caravan_schemas::job::{Job, JobType, ReschedulePolicy, Task, TaskGroup, UpdateStrategy};
use caravan_schemas::node::NodeStatus;
use caravan_schemas::time::Timestamp;
use caravan_schemas::{AllocId, DeploymentId, Duration, NodeId};
use std::collections::BTreeMap;

pub const SEC: i64 = 1_000_000_000;
pub const MIN: i64 = 60 * SEC;
pub const HOUR: i64 = 60 * MIN;
/// "Now" in every test.
pub const NOW: i64 = 1_700_000_000 * SEC;

/// A canonical job of `ty` with one group `web` of `count`, version 1.
pub fn job_of(ty: JobType, count: i32) -> Job {
    let mut job = Job {
        id: "example".into(),
        name: "example".into(),
        r#type: ty,
        datacenters: vec!["dc1".into()],
        task_groups: vec![group("web", count)],
        version: 1,
        create_index: 5,
        job_modify_index: 10,
        modify_index: 10,
        ..Default::default()
    };
    job.canonicalize();
    job
}

pub fn service(count: i32) -> Job {
    job_of(JobType::Service, count)
}

pub fn batch(count: i32) -> Job {
    job_of(JobType::Batch, count)
}

pub fn system() -> Job {
    job_of(JobType::System, 1)
}

pub fn sysbatch() -> Job {
    job_of(JobType::Sysbatch, 1)
}

/// A group with one docker task `app` running `redis:7`.
pub fn group(name: &str, count: i32) -> TaskGroup {
    let mut task = Task {
        name: "app".into(),
        driver: "docker".into(),
        ..Default::default()
    };
    task.config.insert("image".into(), "redis:7".into());
    TaskGroup {
        name: name.into(),
        count,
        tasks: vec![task],
        ..Default::default()
    }
}

/// The next version of `job` after `edit` (as a re-registration that changed the spec).
pub fn next_version(job: &Job, edit: impl FnOnce(&mut Job)) -> Job {
    let mut next = job.clone();
    edit(&mut next);
    next.stable = false;
    next.version += 1;
    next.job_modify_index += 10;
    next.modify_index = next.job_modify_index;
    next
}

pub fn web(job: &mut Job) -> &mut TaskGroup {
    &mut job.task_groups[0]
}

pub fn app(job: &mut Job) -> &mut Task {
    &mut job.task_groups[0].tasks[0]
}

/// Sets the `web` group's update block to `max_parallel` (`None`: no update block).
pub fn with_max_parallel(mut job: Job, max_parallel: Option<i32>) -> Job {
    let update = max_parallel.map(|n| UpdateStrategy {
        max_parallel: n,
        ..caravan_schemas::canonical::update_strategy()
    });
    job.update = update.clone();
    web(&mut job).update = update;
    job
}

pub fn with_reschedule(mut job: Job, policy: ReschedulePolicy) -> Job {
    web(&mut job).reschedule_policy = Some(policy);
    job
}

pub fn policy(
    attempts: i32,
    interval: i64,
    delay: i64,
    function: &str,
    max_delay: i64,
    unlimited: bool,
) -> ReschedulePolicy {
    ReschedulePolicy {
        attempts,
        interval: Duration(interval),
        delay: Duration(delay),
        delay_function: function.into(),
        max_delay: Duration(max_delay),
        unlimited,
    }
}

/// A running allocation of `job`'s `group` at `index` on node `n1`, created an hour ago.
pub fn alloc(job: &Job, group: &str, index: u32) -> Allocation {
    Allocation {
        id: AllocId::new(format!("{group}-{index}")),
        name: alloc_name(job.id.as_str(), group, index),
        node_id: NodeId::new("n1"),
        job_id: job.id.clone(),
        job: Some(std::sync::Arc::new(job.clone())),
        task_group: group.into(),
        desired_status: DesiredStatus::Run,
        client_status: ClientStatus::Running,
        create_index: 100 + i64::from(index),
        modify_index: 100 + i64::from(index),
        create_time: NOW - HOUR,
        modify_time: NOW - HOUR,
        ..Default::default()
    }
}

/// `count` running allocations `web[0..count]` of `job` on `n1`.
pub fn allocs(job: &Job, count: u32) -> Vec<Allocation> {
    (0..count).map(|i| alloc(job, "web", i)).collect()
}

pub trait AllocExt: Sized {
    fn with(self, f: impl FnOnce(&mut Allocation)) -> Self;

    fn id(self, id: &str) -> Self {
        self.with(|a| a.id = AllocId::new(id))
    }
    fn on(self, node: &str) -> Self {
        self.with(|a| a.node_id = NodeId::new(node))
    }
    fn client(self, status: ClientStatus) -> Self {
        self.with(|a| a.client_status = status)
    }
    fn created(self, index: i64) -> Self {
        self.with(|a| a.create_index = index)
    }
    fn healthy(self, healthy: Option<bool>) -> Self {
        self.with(|a| {
            a.deployment_status = Some(AllocDeploymentStatus {
                healthy,
                ..Default::default()
            })
        })
    }
    /// Failed on the client at `at` (its task dead and failed).
    fn failed_at(self, at: i64) -> Self {
        self.with(|a| {
            a.client_status = ClientStatus::Failed;
            a.modify_time = at;
            a.task_states.insert(
                "app".into(),
                TaskState {
                    state: TaskStatus::Dead,
                    failed: true,
                    finished_at: Timestamp::from_unix_nanos(at),
                    ..Default::default()
                },
            );
        })
    }
    /// Completed successfully on the client.
    fn complete(self) -> Self {
        self.with(|a| {
            a.client_status = ClientStatus::Complete;
            a.task_states.insert(
                "app".into(),
                TaskState {
                    state: TaskStatus::Dead,
                    failed: false,
                    finished_at: Timestamp::from_unix_nanos(NOW - MIN),
                    ..Default::default()
                },
            );
        })
    }
    fn stopped(self, description: &str) -> Self {
        self.with(|a| {
            a.desired_status = DesiredStatus::Stop;
            a.desired_description = description.into();
        })
    }
    /// Earlier reschedules: `(time, delay)` pairs, oldest first.
    fn rescheduled(self, events: &[(i64, i64)]) -> Self {
        self.with(|a| {
            a.reschedule_tracker = Some(RescheduleTracker {
                events: events
                    .iter()
                    .enumerate()
                    .map(|(i, &(time, delay))| RescheduleEvent {
                        reschedule_time: time,
                        prev_alloc_id: AllocId::new(format!("old-{i}")),
                        prev_node_id: NodeId::new(format!("old-node-{i}")),
                        delay: Duration(delay),
                    })
                    .collect(),
                last_reschedule: "ok".into(),
            })
        })
    }
    /// Marked unknown at `at`.
    fn unknown_since(self, at: i64) -> Self {
        self.with(|a| {
            a.client_status = ClientStatus::Unknown;
            a.alloc_states.push(AllocState {
                field: 0,
                value: "unknown".into(),
                time: Timestamp::from_unix_nanos(at),
            });
        })
    }
}

impl AllocExt for Allocation {
    fn with(mut self, f: impl FnOnce(&mut Allocation)) -> Self {
        f(&mut self);
        self
    }
}

pub fn ready() -> NodeView {
    NodeView {
        status: NodeStatus::Ready,
        eligible: true,
        drain: None,
        datacenter: "dc1".into(),
        node_pool: "default".into(),
    }
}

pub fn down() -> NodeView {
    NodeView {
        status: NodeStatus::Down,
        ..ready()
    }
}

pub fn disconnected() -> NodeView {
    NodeView {
        status: NodeStatus::Disconnected,
        ..ready()
    }
}

pub fn ineligible() -> NodeView {
    NodeView {
        eligible: false,
        ..ready()
    }
}

/// Draining until `deadline` (`None`: no deadline).
pub fn draining(deadline: Option<i64>) -> NodeView {
    NodeView {
        eligible: false,
        drain: Some(DrainView {
            deadline,
            ignore_system_jobs: false,
        }),
        ..ready()
    }
}

/// Nodes `n1..=n5` ready, then the overrides.
pub fn nodes(overrides: &[(&str, NodeView)]) -> BTreeMap<NodeId, NodeView> {
    let mut map: BTreeMap<NodeId, NodeView> = (1..=5)
        .map(|i| (NodeId::new(format!("n{i}")), ready()))
        .collect();
    for (id, view) in overrides {
        map.insert(NodeId::new(*id), view.clone());
    }
    map
}

/// The ID a deployment created by [`run`] gets.
pub const NEW_DEPLOYMENT: &str = "d-new";

pub fn run(job: Option<&Job>, allocs: &[Allocation], nodes: &BTreeMap<NodeId, NodeView>) -> Plan {
    reconcile(&Input {
        job,
        allocs,
        nodes,
        eligible_nodes: &[],
        now: NOW,
        deployment: None,
        new_deployment_id: &DeploymentId::new(NEW_DEPLOYMENT),
    })
}

/// Expected sizes of a plan's parts (Nomad's reconciler tests' `assertResults`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expect {
    pub place: usize,
    pub stop: usize,
    pub inplace: usize,
    pub destructive: usize,
    pub disconnect: usize,
    pub reschedule_later: usize,
}

#[track_caller]
pub fn assert_plan(plan: &Plan, expect: Expect) {
    let got = Expect {
        place: plan.place.len(),
        stop: plan.stop.len(),
        inplace: plan.inplace_update.len(),
        destructive: plan.destructive_update.len(),
        disconnect: plan.disconnect.len(),
        reschedule_later: plan.reschedule_later.len(),
    };
    assert_eq!(got, expect, "plan: {plan:#?}");
}

/// Names (`[i]` suffixes) of the placements, sorted.
pub fn placed_indexes(plan: &Plan) -> Vec<u32> {
    let mut v: Vec<u32> = plan.placements().map(|p| p.index).collect();
    v.sort_unstable();
    v
}

pub fn stopped_ids(plan: &Plan) -> Vec<&str> {
    plan.stop.iter().map(|s| s.alloc_id.as_str()).collect()
}

/// A job, its versions, deployments, allocations and nodes; applies plans and watch outcomes
/// as the controller loops must.
#[derive(Clone, Debug)]
pub struct World {
    pub job: Option<Job>,
    /// Every version of the job registered so far (the current one included).
    pub versions: Vec<Job>,
    /// Every deployment of the job, oldest first; the last is the latest.
    pub deployments: Vec<Deployment>,
    pub allocs: Vec<Allocation>,
    pub nodes: BTreeMap<NodeId, NodeView>,
    pub eligible: Vec<NodeId>,
    pub now: i64,
    /// Where service and batch placements land.
    pub spare: NodeId,
    next: u64,
}

impl World {
    pub fn new(
        job: Option<Job>,
        allocs: Vec<Allocation>,
        nodes: BTreeMap<NodeId, NodeView>,
    ) -> Self {
        let mut nodes = nodes;
        let spare = NodeId::new("spare");
        nodes.insert(spare.clone(), ready());
        World {
            versions: job.iter().cloned().collect(),
            job,
            deployments: Vec::new(),
            allocs,
            nodes,
            eligible: Vec::new(),
            now: NOW,
            spare,
            next: 0,
        }
    }

    /// The job's latest deployment.
    pub fn deployment(&self) -> Option<&Deployment> {
        self.deployments.last()
    }

    /// The ID the next deployment gets.
    pub fn next_deployment_id(&self) -> DeploymentId {
        DeploymentId::new(format!("d{}", self.deployments.len() + 1))
    }

    /// Registers a new version of the job (the user's `job run`); it is not stable until
    /// its deployment succeeds.
    pub fn register(&mut self, mut job: Job) {
        job.stable = false;
        self.versions.push(job.clone());
        self.job = Some(job);
    }

    pub fn reconcile(&self) -> Plan {
        reconcile(&Input {
            job: self.job.as_ref(),
            allocs: &self.allocs,
            nodes: &self.nodes,
            eligible_nodes: &self.eligible,
            now: self.now,
            deployment: self.deployment(),
            new_deployment_id: &self.next_deployment_id(),
        })
    }

    pub fn find(&mut self, id: &AllocId) -> &mut Allocation {
        self.allocs
            .iter_mut()
            .find(|a| &a.id == id)
            .unwrap_or_else(|| panic!("plan names unknown alloc {id}"))
    }

    fn deployment_mut(&mut self, id: &DeploymentId) -> &mut Deployment {
        self.deployments
            .iter_mut()
            .find(|d| &d.id == id)
            .unwrap_or_else(|| panic!("unknown deployment {id}"))
    }

    /// Applies `plan` as the loop must (every placement succeeds). Returns the new allocations'
    /// ids.
    pub fn apply(&mut self, plan: &Plan) -> Vec<AllocId> {
        let now = self.now;
        for update in &plan.deployment_updates {
            let d = self.deployment_mut(&update.deployment_id);
            update.apply(d, now).expect("status update applies");
        }
        if let Some(d) = &plan.deployment {
            self.deployments.push(d.clone());
        }
        let joins = plan.deployment_id.clone().unwrap_or_default();
        for stop in &plan.stop {
            let a = self.find(&stop.alloc_id);
            a.desired_status = DesiredStatus::Stop;
            a.desired_description = stop.description.into();
            if let Some(status) = stop.client_status {
                a.client_status = status;
            }
        }
        for id in &plan.inplace_update {
            let job = self.job.clone().map(std::sync::Arc::new);
            let joins = joins.clone();
            let a = self.find(id);
            a.job = job;
            if a.deployment_id != joins {
                a.deployment_id = joins;
                a.deployment_status = None;
            }
        }
        for d in &plan.disconnect {
            let a = self.find(&d.alloc_id);
            a.client_status = ClientStatus::Unknown;
            a.alloc_states.push(AllocState {
                field: 0,
                value: "unknown".into(),
                time: Timestamp::from_unix_nanos(now),
            });
        }
        for later in &plan.reschedule_later {
            let a = self.find(&later.alloc_id);
            a.followup_eval_id = format!("followup-{}", later.alloc_id).into();
        }
        for d in &plan.destructive_update {
            let a = self.find(&d.alloc_id);
            a.desired_status = DesiredStatus::Stop;
            a.desired_description = d.description.into();
        }
        let places: Vec<_> = plan.placements().cloned().collect();
        let mut created = Vec::new();
        for place in places {
            self.next += 1;
            let id = AllocId::new(format!("new-{}", self.next));
            let mut previous_job = None;
            if let Some(prev) = &place.previous_alloc {
                let prev = self.find(prev);
                prev.next_allocation = id.clone();
                previous_job = prev.job.clone();
            }
            let job = match place.job_version {
                // A replacement that keeps the version it replaces.
                Some(version) => {
                    let job = previous_job.expect("a downgraded placement replaces something");
                    assert_eq!(job.version, version, "{place:?}");
                    job
                }
                None => std::sync::Arc::new(self.job.clone().expect("placements need a job")),
            };
            let deployment_id = if place.job_version.is_none() {
                joins.clone()
            } else {
                DeploymentId::default()
            };
            self.allocs.push(Allocation {
                id: id.clone(),
                name: place.name.clone(),
                node_id: place.node.clone().unwrap_or_else(|| self.spare.clone()),
                job_id: job.id.clone(),
                job: Some(job),
                task_group: place.group.clone(),
                desired_status: DesiredStatus::Run,
                client_status: ClientStatus::Pending,
                previous_allocation: place.previous_alloc.clone().unwrap_or_default(),
                reschedule_tracker: place.reschedule_tracker.clone(),
                deployment_id,
                deployment_status: place.canary.then(|| AllocDeploymentStatus {
                    canary: true,
                    ..Default::default()
                }),
                create_index: 1000 + i64::try_from(self.next).unwrap_or(0),
                modify_index: 1000 + i64::try_from(self.next).unwrap_or(0),
                create_time: now,
                modify_time: now,
                ..Default::default()
            });
            created.push(id);
        }
        created
    }

    /// Marks allocations healthy and running (the client's report), now.
    pub fn make_healthy(&mut self, ids: &[AllocId]) {
        self.set_health(ids, true);
    }

    /// Marks allocations unhealthy (still running), now.
    pub fn make_unhealthy(&mut self, ids: &[AllocId]) {
        self.set_health(ids, false);
    }

    fn set_health(&mut self, ids: &[AllocId], healthy: bool) {
        let now = self.now;
        for id in ids {
            let a = self.find(id);
            a.client_status = ClientStatus::Running;
            let old = a.deployment_status.clone().unwrap_or_default();
            a.deployment_status = Some(AllocDeploymentStatus {
                healthy: Some(healthy),
                timestamp: Timestamp::from_unix_nanos(now),
                ..old
            });
        }
    }

    /// Runs the deployment watcher on the latest deployment and applies what it says: the
    /// deployment, promoted canaries, allowed reschedules, a stable version, a revert (as a
    /// new job version).
    pub fn watch(&mut self) -> WatchOutcome {
        let (Some(deployment), Some(job)) = (self.deployment(), self.job.as_ref()) else {
            return WatchOutcome::default();
        };
        let out = watch(&WatchInput {
            deployment,
            job,
            allocs: &self.allocs,
            versions: &self.versions,
            now: self.now,
        });
        self.apply_watch(&out);
        out
    }

    pub fn apply_watch(&mut self, out: &WatchOutcome) {
        if let Some(d) = &out.deployment {
            *self.deployment_mut(&d.id.clone()) = d.clone();
        }
        for id in &out.promoted_canaries {
            if let Some(status) = self.find(id).deployment_status.as_mut() {
                status.canary = false;
            }
        }
        for id in &out.allow_reschedule {
            self.find(id).desired_transition.reschedule = Some(true);
        }
        if let Some(version) = out.stable_version {
            for v in self.versions.iter_mut().filter(|v| v.version == version) {
                v.stable = true;
            }
            if let Some(job) = self.job.as_mut().filter(|j| j.version == version) {
                job.stable = true;
            }
        }
        if let Some(version) = out.revert_to {
            self.revert(version);
        }
    }

    /// Registers version `version`'s spec again as a new version (`job revert`).
    pub fn revert(&mut self, version: u64) {
        let current = self.job.clone().expect("a job to revert");
        let old = self
            .versions
            .iter()
            .find(|v| v.version == version)
            .cloned()
            .unwrap_or_else(|| panic!("no version {version}"));
        let reverted = Job {
            version: current.version + 1,
            job_modify_index: current.job_modify_index + 10,
            modify_index: current.job_modify_index + 10,
            create_index: current.create_index,
            stable: false,
            ..old
        };
        self.register(reverted);
    }

    /// The ids of the live allocations of the current job version that are not healthy yet
    /// (pending or running without a health verdict).
    pub fn unproven(&self) -> Vec<AllocId> {
        let job = self.job.as_ref();
        self.allocs
            .iter()
            .filter(|a| {
                !a.is_terminal()
                    && a.deployment_status
                        .as_ref()
                        .is_none_or(|s| s.healthy.is_none())
                    && a.job.as_deref().map(|j| j.version) == job.map(|j| j.version)
            })
            .map(|a| a.id.clone())
            .collect()
    }

    /// Applies `plan`, then checks that reconciling again changes nothing.
    #[track_caller]
    pub fn apply_and_settle(&mut self, plan: &Plan) -> Vec<AllocId> {
        let created = self.apply(plan);
        let again = self.reconcile();
        assert!(again.is_empty(), "not idempotent; second plan: {again:#?}");
        assert!(again.reschedule_later.is_empty(), "{again:#?}");
        assert!(
            !again.changes_deployments(),
            "deployments not idempotent: {again:#?}"
        );
        created
    }
}
