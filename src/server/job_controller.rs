//! The job controller's loop: the I/O around the pure reconciler and scheduler.
//!
//! For one job at a time it takes a cache snapshot (the job, its allocations, the nodes they sit
//! on), asks `caravan_controllers::reconcile` what should change, asks the scheduler where new
//! allocations go, and writes the result — allocations, evaluations, the job's status — in
//! transactions fenced by leadership and guarded by the revisions it read. Losing a race means
//! recomputing from fresh state, never overwriting.
//!
//! One scheduler instance is kept for the whole cluster and fed every node and allocation
//! change, so placing an allocation never costs a rebuild of the cluster's usage.

use super::Server;
use super::cache;
use super::objects::{Index, Kind, Object, job_index};
use super::runtime::{self, Controller, Next, WorkQueue};
use super::writes::{new_eval, now_nanos};
use crate::store::{Compare, Op, Txn};
use caravan_controllers::deployment::StatusUpdate;
use caravan_controllers::reconcile::{self, Input, NodeView, Plan};
use caravan_controllers::scheduler::{Scheduler, SelectOptions};
use caravan_schemas::alloc::{
    AllocDeploymentStatus, AllocMetric, Allocation, ClientStatus, DesiredStatus,
};
use caravan_schemas::deployment::Deployment;
use caravan_schemas::eval::{EvalStatus, Evaluation, TriggeredBy};
use caravan_schemas::ids::{AllocId, DeploymentId, EvalId};
use caravan_schemas::job::{Job, JobType};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// How long a reconcile waits for the cache to show its own writes.
const SETTLE: Duration = Duration::from_secs(10);

/// The job controller.
#[derive(Debug)]
pub struct JobController {
    server: Arc<Server>,
    scheduler: Mutex<Scheduler>,
    queue: Arc<WorkQueue<String>>,
    seed: AtomicU64,
}

/// Starts the job controller: it reconciles while `leading` is true.
pub fn start(server: Arc<Server>, leading: watch::Receiver<bool>) -> Arc<JobController> {
    let controller = Arc::new(JobController {
        scheduler: Mutex::new(build_scheduler(&server)),
        server,
        queue: WorkQueue::new(),
        seed: AtomicU64::new(random_seed()),
    });
    spawn_feeders(&controller, leading.clone());
    let metrics = Arc::clone(&controller.server.metrics);
    runtime::run(
        Arc::clone(&controller),
        Arc::clone(&controller.queue),
        1,
        leading,
        metrics,
    );
    controller
}

fn build_scheduler(server: &Server) -> Scheduler {
    let nodes = server.cache.nodes.snapshot();
    let allocs = server.cache.allocs.snapshot();
    Scheduler::from_shared(
        nodes.objects.values().cloned(),
        allocs.objects.values().map(AsRef::as_ref),
    )
}

fn job_key_of(job: &Job) -> String {
    job_index(job.namespace.as_str(), job.id.as_str())
}

impl JobController {
    /// The cluster-wide scheduler (held only for synchronous work).
    fn scheduler(&self) -> std::sync::MutexGuard<'_, Scheduler> {
        self.scheduler.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn rebuild_scheduler(&self) {
        *self.scheduler() = build_scheduler(&self.server);
    }

    fn enqueue_all(&self) {
        for job in self.server.cache.jobs.snapshot().objects.values() {
            self.queue.add(job_key_of(job));
        }
    }

    /// Jobs that may now fit or must react to a node: those with allocations on it, those
    /// waiting for capacity, and every system job.
    fn enqueue_for_node(&self, node_id: &str) {
        for alloc in self
            .server
            .cache
            .allocs
            .snapshot()
            .by(Index::ByNode, node_id)
        {
            self.queue
                .add(job_index(alloc.namespace.as_str(), alloc.job_id.as_str()));
        }
        for eval in self.server.cache.evals.snapshot().objects.values() {
            if eval.status == EvalStatus::Blocked {
                self.queue
                    .add(job_index(eval.namespace.as_str(), eval.job_id.as_str()));
            }
        }
        for job in self.server.cache.jobs.snapshot().objects.values() {
            if matches!(job.r#type, JobType::System | JobType::Sysbatch) {
                self.queue.add(job_key_of(job));
            }
        }
    }
}

/// Subscribes to the caches: keeps the scheduler current and queues the jobs that changes
/// concern. Becoming leader queues every job (the resync safety net).
fn spawn_feeders(c: &Arc<JobController>, leading: watch::Receiver<bool>) {
    let span = |source: &str| tracing::info_span!("job-controller-feed", source);
    let cache = &c.server.cache;
    let ctl = Arc::clone(c);
    cache::follow(&cache.jobs, span("jobs"), move |changes| match changes {
        Some(changes) => {
            for job in changes
                .iter()
                .filter_map(|ch| ch.new.as_ref().or(ch.old.as_ref()))
            {
                ctl.queue.add(job_key_of(job));
            }
        }
        None => ctl.enqueue_all(),
    });
    let ctl = Arc::clone(c);
    cache::follow(&cache.allocs, span("allocs"), move |changes| {
        let Some(changes) = changes else {
            ctl.rebuild_scheduler();
            return ctl.enqueue_all();
        };
        let mut sched = ctl.scheduler();
        for ch in changes {
            match (&ch.new, &ch.old) {
                (Some(new), _) => sched.add(new),
                (None, Some(old)) => {
                    sched.remove_id(&old.id);
                }
                (None, None) => {}
            }
            // A job cares when an allocation appears, goes, changes status, or turns healthy
            // or unhealthy (rolling updates are paced on health).
            let relevant = match (&ch.new, &ch.old) {
                (Some(n), Some(o)) => {
                    n.client_status != o.client_status
                        || n.desired_status != o.desired_status
                        || n.deployment_status.as_ref().and_then(|d| d.healthy)
                            != o.deployment_status.as_ref().and_then(|d| d.healthy)
                }
                _ => true,
            };
            if relevant && let Some(a) = ch.new.as_ref().or(ch.old.as_ref()) {
                ctl.queue
                    .add(job_index(a.namespace.as_str(), a.job_id.as_str()));
            }
        }
    });
    // A deployment promoted, paused, resumed or failed changes what a job may place.
    let ctl = Arc::clone(c);
    cache::follow(
        &cache.deployments,
        span("deployments"),
        move |changes| match changes {
            Some(changes) => {
                for d in changes
                    .iter()
                    .filter_map(|ch| ch.new.as_ref().or(ch.old.as_ref()))
                {
                    ctl.queue
                        .add(job_index(d.namespace.as_str(), d.job_id.as_str()));
                }
            }
            None => ctl.enqueue_all(),
        },
    );
    let ctl = Arc::clone(c);
    cache::follow(&cache.nodes, span("nodes"), move |changes| {
        let Some(changes) = changes else {
            ctl.rebuild_scheduler();
            return ctl.enqueue_all();
        };
        for ch in changes {
            match (&ch.new, &ch.old) {
                (Some(new), _) => ctl.scheduler().upsert_node(Arc::clone(new)),
                (None, Some(old)) => ctl.scheduler().remove_node(&old.id),
                (None, None) => {}
            }
            if let Some(n) = ch.new.as_ref().or(ch.old.as_ref()) {
                ctl.enqueue_for_node(n.id.as_str());
            }
        }
    });
    let ctl = Arc::clone(c);
    cache::follow(&cache.evals, span("evals"), move |changes| match changes {
        Some(changes) => {
            for e in changes.iter().filter_map(|ch| ch.new.as_ref()) {
                if e.status == EvalStatus::Pending {
                    ctl.queue
                        .add(job_index(e.namespace.as_str(), e.job_id.as_str()));
                }
            }
        }
        None => ctl.enqueue_all(),
    });
    let ctl = Arc::clone(c);
    runtime::on_leadership(leading, span("leadership"), move || {
        ctl.rebuild_scheduler();
        ctl.enqueue_all();
    });
}

/// The writes one reconcile makes.
#[derive(Debug, Default)]
struct Writes {
    /// Allocations to create or update, with the mod revision they were read at (0 = new).
    allocs: Vec<(Allocation, i64)>,
    /// Deployments to create or update, likewise.
    deployments: Vec<(Deployment, i64)>,
    evals: Vec<Evaluation>,
    job: Option<Job>,
    /// Placements recorded in the scheduler, undone if the writes fail.
    placed: Vec<AllocId>,
    /// Per group: why placements failed, and how many.
    failed: BTreeMap<String, AllocMetric>,
    queued: BTreeMap<String, i32>,
}

#[async_trait::async_trait]
impl Controller for JobController {
    type Key = String;

    fn name(&self) -> &'static str {
        "job"
    }

    async fn reconcile(&self, key: &String) -> Result<Next, String> {
        let Some((namespace, id)) = key.split_once('/') else {
            return Ok(Next::Idle);
        };
        let server = &self.server;
        let now = now_nanos();
        let job = server
            .cache
            .jobs
            .get(&server.keys.key(Kind::Job, namespace, id));
        let alloc_snap = server.cache.allocs.snapshot();
        let allocs: Vec<Allocation> = alloc_snap
            .by(Index::ByJob, key)
            .map(|a| (**a).clone())
            .collect();
        let eval_snap = server.cache.evals.snapshot();
        let open_evals: Vec<Evaluation> = eval_snap
            .by(Index::ByJob, key)
            .filter(|e| matches!(e.status, EvalStatus::Pending | EvalStatus::Blocked))
            .map(|e| (**e).clone())
            .collect();
        let node_snap = server.cache.nodes.snapshot();
        let nodes = NodeView::index(node_snap.objects.values().map(AsRef::as_ref));
        let deployment = server.latest_deployment(namespace, id);
        let new_deployment_id = DeploymentId::random();

        // Decide and place under the scheduler's lock; write after releasing it.
        let (plan, writes) = {
            let mut sched = self.scheduler();
            let eligible = match job.as_deref() {
                Some(j) if matches!(j.r#type, JobType::System | JobType::Sysbatch) => {
                    sched.eligible_nodes(j)
                }
                _ => Vec::new(),
            };
            let plan = reconcile::reconcile(&Input {
                job: job.as_deref(),
                allocs: &allocs,
                nodes: &nodes,
                eligible_nodes: &eligible,
                now,
                deployment: deployment.as_deref(),
                new_deployment_id: &new_deployment_id,
            });
            let status_changes = job
                .as_ref()
                .is_some_and(|j| j.status != plan.job_status.as_str());
            let pending = open_evals.iter().any(|e| e.status == EvalStatus::Pending);
            if plan.is_empty() && !plan.changes_deployments() && !pending && !status_changes {
                // Something may still be blocked: placements are retried when capacity changes.
                return Ok(Next::at(plan.wake_at, now));
            }
            let placer = Placer {
                seed: &self.seed,
                metrics: Some(&self.server.metrics.controllers),
            };
            let writes = compute(
                &placer,
                &State {
                    job: job.as_deref(),
                    allocs: &allocs,
                    open_evals: &open_evals,
                    deployment: deployment.as_deref(),
                },
                &plan,
                &mut sched,
                now,
            );
            (plan, writes)
        };
        let placed = writes.placed.clone();
        match self.apply(job.as_deref(), writes).await {
            Ok(revision) => {
                server.cache.wait_for(revision, SETTLE).await;
                Ok(Next::at(plan.wake_at, now))
            }
            Err(e) => {
                let mut sched = self.scheduler();
                for id in &placed {
                    sched.remove_id(id);
                }
                Err(e)
            }
        }
    }
}

/// A different seed in every process, so servers do not all pick the same dynamic ports in the
/// same order (two agents on one machine, or a container left by an earlier run, would collide
/// on every first port: "Bind for …:27248 failed: port is already allocated"). Nomad's ports are
/// random too.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

fn next_seed(seed: &AtomicU64) -> u64 {
    seed.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
}

/// Turns a plan into the objects to write; placements are made in the scheduler as it goes.
/// What placing needs besides the state: a seed source and where to record placements.
struct Placer<'a> {
    seed: &'a AtomicU64,
    metrics: Option<&'a crate::metrics::ControllerMetrics>,
}

/// What one reconcile read: the job, its allocations, open evaluations and latest deployment.
struct State<'a> {
    job: Option<&'a Job>,
    allocs: &'a [Allocation],
    open_evals: &'a [Evaluation],
    deployment: Option<&'a Deployment>,
}

fn compute(
    placer: &Placer<'_>,
    state: &State<'_>,
    plan: &Plan,
    sched: &mut Scheduler,
    now: i64,
) -> Writes {
    let State {
        job,
        allocs,
        open_evals,
        deployment,
    } = *state;
    let mut w = Writes {
        deployments: deployment_writes(deployment, plan, now),
        ..Writes::default()
    };
    let joins = plan.deployment_id.clone().unwrap_or_default();
    let by_id: HashMap<&AllocId, &Allocation> = allocs.iter().map(|a| (&a.id, a)).collect();
    let mut updated: BTreeMap<AllocId, Allocation> = BTreeMap::new();
    let mut touch = |id: &AllocId, f: &mut dyn FnMut(&mut Allocation)| {
        if let Some(a) = updated.get_mut(id) {
            f(a);
        } else if let Some(a) = by_id.get(id) {
            let mut a = (*a).clone();
            f(&mut a);
            updated.insert(id.clone(), a);
        }
    };

    // The evaluation this round is recorded under: the oldest pending one, or a new one.
    let pending: Vec<&Evaluation> = open_evals
        .iter()
        .filter(|e| e.status == EvalStatus::Pending)
        .collect();
    let eval_id = pending
        .first()
        .map(|e| e.id.clone())
        .unwrap_or_else(EvalId::random);
    let new_eval_needed = pending.is_empty() && !plan.is_empty();

    // Stops first (they free room), except a rescheduled allocation's: that one is stopped only
    // if its replacement is placed.
    let is_reschedule_stop = |id: &AllocId| {
        plan.place
            .iter()
            .any(|p| p.is_reschedule() && p.previous_alloc.as_ref() == Some(id))
    };
    for stop in plan
        .stop
        .iter()
        .filter(|s| !is_reschedule_stop(&s.alloc_id))
    {
        touch(&stop.alloc_id, &mut |a| {
            a.desired_status = DesiredStatus::Stop;
            a.desired_description = stop.description.to_owned();
            if let Some(cs) = stop.client_status {
                a.client_status = cs;
            }
            a.modify_time = now;
        });
        if let Some(a) = by_id.get(&stop.alloc_id) {
            sched.remove(a);
        }
    }
    for d in &plan.disconnect {
        touch(&d.alloc_id, &mut |a| {
            a.client_status = ClientStatus::Unknown;
            a.client_description = reconcile::descriptions::UNKNOWN.to_owned();
            a.alloc_states.push(caravan_schemas::alloc::AllocState {
                field: 0,
                value: "unknown".into(),
                time: caravan_schemas::time::Timestamp::from_unix_nanos(now),
            });
            a.modify_time = now;
        });
    }
    if let Some(job) = job {
        for id in &plan.inplace_update {
            touch(id, &mut |a| {
                a.job = Some(std::sync::Arc::new(job.clone()));
                if a.deployment_id != joins {
                    // Its health is decided again, for the new deployment.
                    a.deployment_id = joins.clone();
                    a.deployment_status = None;
                }
                a.modify_time = now;
            });
        }
    }

    // Placements: new allocations, and the new half of destructive updates — whose old half is
    // stopped only when the new one found a node.
    let mut failed: BTreeMap<String, AllocMetric> = BTreeMap::new();
    let mut queued: BTreeMap<String, i32> = BTreeMap::new();
    if let Some(job) = job {
        // Every allocation placed this round shares one snapshot of the job.
        let snapshot = std::sync::Arc::new(job.clone());
        for group in &job.task_groups {
            queued.insert(group.name.clone(), 0);
        }
        let work = plan
            .place
            .iter()
            .map(|p| (p, None))
            .chain(plan.destructive_update.iter().map(|d| (&d.place, Some(d))));
        for (place, destructive) in work {
            // A replacement that keeps an older version runs the job its predecessor ran.
            let version = match place.job_version {
                None => Some(&snapshot),
                Some(v) => place
                    .previous_alloc
                    .as_ref()
                    .and_then(|prev| by_id.get(prev))
                    .and_then(|a| a.job.as_ref())
                    .filter(|j| j.version == v),
            };
            let Some(version) = version else {
                tracing::warn!(
                    group = place.group,
                    name = place.name,
                    "placement of an older job version without that version at hand; skipped"
                );
                continue;
            };
            let Some(group) = version.group(&place.group) else {
                continue;
            };
            let old = destructive.and_then(|d| by_id.get(&d.alloc_id).copied());
            if let Some(old) = old {
                sched.remove(old);
            }
            let alloc_id = AllocId::random();
            let opts = SelectOptions {
                seed: next_seed(placer.seed),
                penalty_nodes: place.penalty_nodes.clone(),
                preferred_node: place.preferred_node.clone(),
                alloc_id: Some(alloc_id.clone()),
            };
            let started = std::time::Instant::now();
            let result = match &place.node {
                Some(node) => sched.select_node(version, group, node, &opts),
                None => sched.select(version, group, &opts),
            };
            if let Some(m) = placer.metrics {
                m.placed(result.is_ok(), started.elapsed());
            }
            let p = match result {
                Ok(p) => p,
                Err(metric) => {
                    if let Some(old) = old {
                        sched.add(old);
                    }
                    if place.is_reschedule()
                        && let Some(prev) = &place.previous_alloc
                    {
                        // Keep the failed allocation, marked so the next round retries it.
                        touch(prev, &mut |a| {
                            let tracker = a.reschedule_tracker.get_or_insert_with(Default::default);
                            tracker.last_reschedule =
                                reconcile::reschedule::LAST_RESCHEDULE_NO_PLACEMENT.to_owned();
                            a.modify_time = now;
                        });
                    }
                    // A system job's node that fails its constraints just doesn't run it.
                    if place.node.is_some() && metric.nodes_exhausted == 0 {
                        continue;
                    }
                    *queued.entry(place.group.clone()).or_default() += 1;
                    failed
                        .entry(place.group.clone())
                        .and_modify(|m| m.coalesced_failures += 1)
                        .or_insert(metric);
                    continue;
                }
            };
            w.placed.push(alloc_id.clone());
            if let Some(d) = destructive {
                touch(&d.alloc_id, &mut |a| {
                    a.desired_status = DesiredStatus::Stop;
                    a.desired_description = d.description.to_owned();
                    a.modify_time = now;
                });
            }
            if let Some(prev) = &place.previous_alloc {
                let rescheduled = plan
                    .stop
                    .iter()
                    .find(|s| &s.alloc_id == prev && place.is_reschedule());
                touch(prev, &mut |a| {
                    a.next_allocation = alloc_id.clone();
                    if let Some(stop) = rescheduled {
                        a.desired_status = DesiredStatus::Stop;
                        a.desired_description = stop.description.to_owned();
                    }
                    a.modify_time = now;
                });
            }
            w.allocs.push((
                Allocation {
                    id: alloc_id,
                    namespace: job.namespace.clone(),
                    eval_id: eval_id.clone(),
                    name: place.name.clone(),
                    node_id: p.node_id,
                    node_name: p.node_name,
                    job_id: job.id.clone(),
                    job: Some(std::sync::Arc::clone(version)),
                    task_group: place.group.clone(),
                    deployment_id: if place.job_version.is_none() {
                        joins.clone()
                    } else {
                        DeploymentId::default()
                    },
                    deployment_status: place.canary.then(|| AllocDeploymentStatus {
                        canary: true,
                        ..AllocDeploymentStatus::default()
                    }),
                    allocated_resources: Some(p.resources),
                    metrics: Some(p.metric),
                    desired_status: DesiredStatus::Run,
                    client_status: ClientStatus::Pending,
                    previous_allocation: place.previous_alloc.clone().unwrap_or_default(),
                    reschedule_tracker: place.reschedule_tracker.clone(),
                    create_time: now,
                    modify_time: now,
                    ..Allocation::default()
                },
                0,
            ));
        }
    }
    w.allocs.extend(updated.into_values().map(|a| {
        let rev = a.modify_index;
        (a, rev)
    }));

    // Evaluations: complete what was pending; keep one blocked evaluation while something
    // could not be placed, and complete it once everything is.
    let blocked = open_evals
        .iter()
        .find(|e| e.status == EvalStatus::Blocked)
        .cloned();
    let mut blocked_id = EvalId::default();
    if !failed.is_empty() {
        let mut b = blocked.clone().unwrap_or_else(|| {
            let mut e = job
                .map(|j| new_eval(j, TriggeredBy::QueuedAllocs, now))
                .unwrap_or_default();
            e.status = EvalStatus::Blocked;
            e.status_description = "created to place remaining allocations".into();
            e.previous_eval = eval_id.clone();
            e
        });
        b.failed_tg_allocs = failed.clone();
        b.queued_allocations = queued.clone();
        b.modify_time = now;
        blocked_id = b.id.clone();
        w.evals.push(b);
    } else if let Some(mut b) = blocked {
        b.status = EvalStatus::Complete;
        b.status_description = String::new();
        b.queued_allocations = queued.clone();
        b.failed_tg_allocs.clear();
        b.modify_time = now;
        w.evals.push(b);
    }
    let mut round: Vec<Evaluation> = pending.into_iter().cloned().collect();
    if new_eval_needed && let Some(j) = job {
        let trigger = if blocked_id.is_empty() {
            TriggeredBy::NodeUpdate
        } else {
            TriggeredBy::QueuedAllocs
        };
        let mut e = new_eval(j, trigger, now);
        e.id = eval_id.clone();
        round.push(e);
    }
    for mut e in round {
        e.status = EvalStatus::Complete;
        e.failed_tg_allocs = if e.id == eval_id {
            failed.clone()
        } else {
            BTreeMap::new()
        };
        e.queued_allocations = queued.clone();
        e.blocked_eval = blocked_id.clone();
        if e.deployment_id.is_empty() {
            e.deployment_id = joins.clone();
        }
        if let Some(j) = job {
            e.job_modify_index = j.job_modify_index;
        }
        e.modify_time = now;
        w.evals.push(e);
    }

    // The job's status as it will be: its allocations after these writes, and work still
    // waiting when something could not be placed.
    let after: Vec<Allocation> = {
        let written: HashMap<&AllocId, &Allocation> =
            w.allocs.iter().map(|(a, _)| (&a.id, a)).collect();
        allocs
            .iter()
            .filter(|a| !written.contains_key(&a.id))
            .chain(written.values().copied())
            .cloned()
            .collect()
    };
    let status = reconcile::job_status(job, &after, !failed.is_empty());
    if let Some(j) = job
        && j.status != status.as_str()
    {
        let mut j = j.clone();
        j.status = status.as_str().to_owned();
        w.job = Some(j);
    }
    w.failed = failed;
    w.queued = queued;
    w
}

/// The deployment the plan creates, and the latest one with the plan's status updates applied,
/// each with the revision it was read at (0 = new).
fn deployment_writes(latest: Option<&Deployment>, plan: &Plan, now: i64) -> Vec<(Deployment, i64)> {
    let mut out = Vec::new();
    if let Some(latest) = latest
        && !plan.deployment_updates.is_empty()
    {
        let mut d = latest.clone();
        // An update the deployment refuses (it ended meanwhile) leaves it as it is.
        let applied = plan
            .deployment_updates
            .iter()
            .filter(|u| u.deployment_id == latest.id)
            .all(|u: &StatusUpdate| u.apply(&mut d, now).is_ok());
        if applied {
            out.push((d, latest.modify_index));
        }
    }
    if let Some(created) = &plan.deployment {
        out.push((created.clone(), 0));
    }
    out
}

impl JobController {
    /// Writes in transactions no larger than the store takes, each fenced by leadership and
    /// guarded by the job's revision and each updated allocation's. Returns the last revision.
    async fn apply(&self, job: Option<&Job>, writes: Writes) -> Result<i64, String> {
        let server = &self.server;
        let keys = &server.keys;
        let max = server.store.max_txn_ops().max(2);
        let mut guard_base = vec![server.leader_fence()];
        if let Some(j) = job {
            guard_base.push(Compare::unchanged(j.key(keys), j.modify_index));
        }
        let mut batches: Vec<(Vec<Compare>, Vec<Op>)> = Vec::new();
        let mut current: (Vec<Compare>, Vec<Op>) = (guard_base.clone(), Vec::new());
        let mut push =
            |compare: Option<Compare>, op: Op, batches: &mut Vec<(Vec<Compare>, Vec<Op>)>| {
                let compares_full = compare.is_some() && current.0.len() + 1 > max;
                if current.1.len() + 1 > max || compares_full {
                    batches.push(std::mem::replace(
                        &mut current,
                        (guard_base.clone(), Vec::new()),
                    ));
                }
                if let Some(c) = compare {
                    current.0.push(c);
                }
                current.1.push(op);
            };
        // Deployments first: the allocations that join one name it.
        for (d, rev) in &writes.deployments {
            let key = d.key(keys);
            let compare = if *rev == 0 {
                Compare::absent(key.clone())
            } else {
                Compare::unchanged(key.clone(), *rev)
            };
            push(Some(compare), Op::put(key, encode(d)?), &mut batches);
        }
        for (alloc, rev) in &writes.allocs {
            let key = alloc.key(keys);
            let compare = if *rev == 0 {
                Compare::absent(key.clone())
            } else {
                Compare::unchanged(key.clone(), *rev)
            };
            push(Some(compare), Op::put(key, encode(alloc)?), &mut batches);
        }
        for eval in &writes.evals {
            push(None, Op::put(eval.key(keys), encode(eval)?), &mut batches);
        }
        // The job's status goes last: its write changes the revision the other batches compare.
        let mut revision = 0;
        for (compares, ops) in batches.into_iter().chain(std::iter::once(current)) {
            if ops.is_empty() {
                continue;
            }
            let resp = server
                .store
                .txn(Txn::new().when(compares).and_then(ops))
                .await
                .map_err(|e| e.to_string())?;
            if !resp.succeeded {
                return Err("the job or one of its allocations changed meanwhile (or leadership moved); recomputing".into());
            }
            revision = resp.revision;
        }
        if let Some(j) = writes.job {
            let key = j.key(keys);
            let txn = Txn::new()
                .when([
                    server.leader_fence(),
                    Compare::unchanged(key.clone(), j.modify_index),
                ])
                .and_then([Op::put(key, encode(&j)?)]);
            let resp = server.store.txn(txn).await.map_err(|e| e.to_string())?;
            if !resp.succeeded {
                return Err("the job changed meanwhile; recomputing".into());
            }
            revision = resp.revision;
        }
        Ok(revision)
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, String> {
    serde_json::to_vec(value).map_err(|e| format!("encoding: {e}"))
}

/// What registering a job would do, computed without writing anything: the scheduler's
/// annotations per group and the placements that would fail (`POST /v1/job/:id/plan`).
#[derive(Debug, Default)]
pub struct DryRun {
    pub desired_tg_updates: BTreeMap<String, caravan_schemas::plan::DesiredUpdates>,
    pub failed_tg_allocs: BTreeMap<String, AllocMetric>,
}

/// Plans `proposed` against the current state on a scratch copy of the cluster.
pub fn dry_run(server: &Server, proposed: &Job) -> DryRun {
    let now = now_nanos();
    let key = job_key_of(proposed);
    let current = server.cache.jobs.get(&proposed.key(&server.keys));
    let mut job = proposed.clone();
    job.canonicalize();
    match current.as_deref() {
        Some(cur) if super::writes::spec_of(cur) == super::writes::spec_of(&job) => {
            job.version = cur.version
        }
        Some(cur) => job.version = cur.version + 1,
        None => job.version = 0,
    }
    let alloc_snap = server.cache.allocs.snapshot();
    let allocs: Vec<Allocation> = alloc_snap
        .by(Index::ByJob, &key)
        .map(|a| (**a).clone())
        .collect();
    let node_snap = server.cache.nodes.snapshot();
    let nodes = NodeView::index(node_snap.objects.values().map(AsRef::as_ref));
    let deployment = server.latest_deployment(proposed.namespace.as_str(), proposed.id.as_str());
    let mut sched = build_scheduler(server);
    let eligible = if matches!(job.r#type, JobType::System | JobType::Sysbatch) {
        sched.eligible_nodes(&job)
    } else {
        Vec::new()
    };
    let plan = reconcile::reconcile(&Input {
        job: Some(&job),
        allocs: &allocs,
        nodes: &nodes,
        eligible_nodes: &eligible,
        now,
        deployment: deployment.as_deref(),
        new_deployment_id: &DeploymentId::random(),
    });
    let writes = compute(
        &Placer {
            seed: &AtomicU64::new(now.unsigned_abs()),
            metrics: None,
        },
        &State {
            job: Some(&job),
            allocs: &allocs,
            open_evals: &[],
            deployment: deployment.as_deref(),
        },
        &plan,
        &mut sched,
        now,
    );
    DryRun {
        desired_tg_updates: plan
            .desired_tg_updates
            .iter()
            .map(|(group, u)| {
                (
                    group.clone(),
                    caravan_schemas::plan::DesiredUpdates {
                        ignore: u.ignore,
                        place: u.place,
                        migrate: u.migrate,
                        stop: u.stop,
                        in_place_update: u.in_place_update,
                        destructive_update: u.destructive_update,
                        canary: u.canary,
                        preemptions: u.preemptions,
                    },
                )
            })
            .collect(),
        failed_tg_allocs: writes.failed,
    }
}
