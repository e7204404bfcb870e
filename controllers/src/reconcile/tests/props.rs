//! Invariants over random jobs, allocation sets and node states:
//!
//! 1. after applying a plan, no group of a service or batch job has more allocations desired
//!    to run than its count;
//! 2. applying a plan and reconciling again gives an empty plan;
//! 3. a successfully completed batch allocation is never replaced;
//! 4. a paused or failed deployment starts nothing new: no deployment, no canary, no
//!    replacement of the new version, no new name; a failed one's unpromoted canaries are
//!    stopped and its failed allocations are not rescheduled.

use super::fixtures::*;
use crate::reconcile::{DrainView, NodeView, PlaceReason, Plan};
use caravan_schemas::alloc::{
    AllocState, Allocation, ClientStatus, DesiredStatus, RescheduleEvent, RescheduleTracker,
    TaskState, TaskStatus, alloc_name,
};
use caravan_schemas::deployment::{Deployment, DeploymentState, DeploymentStatus};
use caravan_schemas::job::{Job, JobType};
use caravan_schemas::node::NodeStatus;
use caravan_schemas::time::Timestamp;
use caravan_schemas::{AllocId, Duration, NodeId};
use proptest::prelude::*;
use std::collections::BTreeSet;

const GROUPS: [&str; 2] = ["web", "api"];
const NODES: usize = 5;

#[derive(Clone, Debug)]
struct JobSpec {
    ty: JobType,
    counts: [i32; 2],
    max_parallel: Option<i32>,
    migrate_parallel: i32,
    attempts: i32,
    unlimited: bool,
    delay_function: usize,
    delay_secs: i64,
    max_delay_secs: i64,
    disconnect_secs: Option<i64>,
}

#[derive(Clone, Debug)]
struct NodeSpec {
    status: usize,
    eligible: bool,
    /// None: not draining; Some(None): no deadline; Some(Some(s)): deadline now + s.
    drain: Option<Option<i64>>,
    other_dc: bool,
}

#[derive(Clone, Debug)]
struct AllocSpec {
    group: usize,
    index: u32,
    /// 0..NODES, or NODES for a node that no longer exists.
    node: usize,
    /// 0: current; 1: older, in-place change; 2: older, destructive change.
    version: usize,
    client: usize,
    desired: usize,
    healthy: Option<bool>,
    /// Seconds before now that it failed / finished.
    age: i64,
    tracker: Vec<(i64, i64)>,
    followup: bool,
    replaced: bool,
    migrate: bool,
    last_reschedule_failed: bool,
    unknown_age: Option<i64>,
    migrated_from: Option<usize>,
}

fn job_spec(types: &'static [JobType]) -> impl Strategy<Value = JobSpec> {
    (
        proptest::sample::select(types),
        [0..5i32, 0..4i32],
        proptest::option::of(0..3i32),
        0..3i32,
        0..3i32,
        any::<bool>(),
        0..3usize,
        1..120i64,
        0..600i64,
        proptest::option::of(60..3600i64),
    )
        .prop_map(
            |(ty, counts, max_parallel, migrate_parallel, attempts, unlimited, f, d, m, dis)| {
                JobSpec {
                    ty,
                    counts,
                    max_parallel,
                    migrate_parallel,
                    attempts,
                    unlimited,
                    delay_function: f,
                    delay_secs: d,
                    max_delay_secs: m,
                    disconnect_secs: dis,
                }
            },
        )
}

fn node_spec() -> impl Strategy<Value = NodeSpec> {
    (
        prop_oneof![6 => Just(0usize), 1 => Just(1), 1 => Just(2), 1 => Just(3)],
        prop_oneof![4 => Just(true), 1 => Just(false)],
        prop_oneof![
            4 => Just(None),
            1 => Just(Some(None)),
            1 => (-600..3600i64).prop_map(|s| Some(Some(s))),
        ],
        prop_oneof![5 => Just(false), 1 => Just(true)],
    )
        .prop_map(|(status, eligible, drain, other_dc)| NodeSpec {
            status,
            eligible,
            drain,
            other_dc,
        })
}

fn alloc_spec() -> impl Strategy<Value = AllocSpec> {
    let core = (
        0..2usize,
        0..6u32,
        0..=NODES,
        prop_oneof![3 => Just(0usize), 1 => Just(1), 1 => Just(2)],
        prop_oneof![1 => Just(0usize), 4 => Just(1), 2 => Just(2), 2 => Just(3), 1 => Just(4), 1 => Just(5)],
        prop_oneof![6 => Just(0usize), 2 => Just(1), 1 => Just(2)],
        proptest::option::of(any::<bool>()),
        prop_oneof![0..120i64, 0..7200i64],
    );
    let extra = (
        proptest::collection::vec((0..7200i64, 1..600i64), 0..4),
        prop_oneof![4 => Just(false), 1 => Just(true)],
        prop_oneof![4 => Just(false), 1 => Just(true)],
        prop_oneof![8 => Just(false), 1 => Just(true)],
        prop_oneof![8 => Just(false), 1 => Just(true)],
        proptest::option::of(0..7200i64),
        proptest::option::of(0..8usize),
    );
    (core, extra).prop_map(
        |(
            (group, index, node, version, client, desired, healthy, age),
            (
                tracker,
                followup,
                replaced,
                migrate,
                last_reschedule_failed,
                unknown_age,
                migrated_from,
            ),
        )| AllocSpec {
            group,
            index,
            node,
            version,
            client,
            desired,
            healthy,
            age,
            tracker,
            followup,
            replaced,
            migrate,
            last_reschedule_failed,
            unknown_age,
            migrated_from,
        },
    )
}

fn build_job(spec: &JobSpec) -> Job {
    let mut job = job_of(spec.ty, spec.counts[0]);
    let mut api = group("api", spec.counts[1]);
    api.tasks[0].name = "worker".into();
    job.task_groups.push(api);
    // Canonicalize again for the new group.
    for g in &mut job.task_groups {
        g.restart_policy = None;
        g.reschedule_policy = None;
        g.ephemeral_disk = None;
        g.update = None;
        g.migrate = None;
    }
    job.update = None;
    job.canonicalize();
    let functions = ["constant", "exponential", "fibonacci"];
    for g in &mut job.task_groups {
        if matches!(spec.ty, JobType::Service | JobType::System) {
            g.update = spec
                .max_parallel
                .map(|n| caravan_schemas::job::UpdateStrategy {
                    max_parallel: n,
                    ..caravan_schemas::canonical::update_strategy()
                });
        }
        if let Some(m) = g.migrate.as_mut() {
            m.max_parallel = spec.migrate_parallel;
        }
        if matches!(spec.ty, JobType::Service | JobType::Batch) {
            g.reschedule_policy = Some(policy(
                spec.attempts,
                HOUR,
                spec.delay_secs * SEC,
                functions[spec.delay_function],
                spec.max_delay_secs * SEC,
                spec.unlimited,
            ));
        }
        g.max_client_disconnect = spec.disconnect_secs.map(|s| Duration(s * SEC));
    }
    job
}

fn older(job: &Job, destructive: bool) -> Job {
    let mut old = job.clone();
    old.version -= 1;
    old.job_modify_index -= 5;
    old.modify_index = old.job_modify_index;
    for g in &mut old.task_groups {
        if destructive {
            g.tasks[0].env.insert("OLD".into(), "1".into());
        } else {
            g.meta.insert("old".into(), "1".into());
        }
    }
    old
}

fn node_id(i: usize) -> NodeId {
    if i < NODES {
        NodeId::new(format!("n{i}"))
    } else {
        NodeId::new("gone")
    }
}

fn build_world(job: &Job, node_specs: &[NodeSpec], specs: &[AllocSpec]) -> World {
    let mut nodes = nodes(&[]);
    nodes.clear();
    for (i, n) in node_specs.iter().enumerate() {
        let status = [
            NodeStatus::Ready,
            NodeStatus::Down,
            NodeStatus::Disconnected,
            NodeStatus::Initializing,
        ][n.status];
        nodes.insert(
            node_id(i),
            NodeView {
                status,
                eligible: n.eligible,
                drain: n.drain.map(|deadline| DrainView {
                    deadline: deadline.map(|s| NOW + s * SEC),
                    ignore_system_jobs: false,
                }),
                datacenter: if n.other_dc { "dc9" } else { "dc1" }.into(),
                node_pool: "default".into(),
            },
        );
    }
    let versions = [job.clone(), older(job, false), older(job, true)];
    let mut allocs: Vec<Allocation> = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        let group = GROUPS[s.group];
        let version = &versions[s.version];
        let task = version.task_groups[s.group].tasks[0].name.clone();
        let at = NOW - s.age * SEC;
        let client = [
            ClientStatus::Pending,
            ClientStatus::Running,
            ClientStatus::Complete,
            ClientStatus::Failed,
            ClientStatus::Lost,
            ClientStatus::Unknown,
        ][s.client];
        let desired = [
            DesiredStatus::Run,
            DesiredStatus::Stop,
            DesiredStatus::Evict,
        ][s.desired];
        let mut a = Allocation {
            id: AllocId::new(format!("a{i}")),
            name: alloc_name(job.id.as_str(), group, s.index),
            node_id: node_id(s.node),
            job_id: job.id.clone(),
            job: Some(std::sync::Arc::new(version.clone())),
            task_group: group.into(),
            desired_status: desired,
            desired_description: match (desired, s.migrate, s.last_reschedule_failed) {
                (DesiredStatus::Stop, true, _) => crate::reconcile::descriptions::MIGRATING.into(),
                (DesiredStatus::Stop, false, true) => {
                    crate::reconcile::descriptions::RESCHEDULED.into()
                }
                _ => String::new(),
            },
            client_status: client,
            create_index: 100 + i64::try_from(i).unwrap_or(0),
            create_time: NOW - 2 * HOUR,
            modify_time: at,
            ..Default::default()
        };
        a.deployment_status = s
            .healthy
            .map(|h| caravan_schemas::alloc::AllocDeploymentStatus {
                healthy: Some(h),
                ..Default::default()
            });
        match client {
            ClientStatus::Complete | ClientStatus::Failed => {
                a.task_states.insert(
                    task,
                    TaskState {
                        state: TaskStatus::Dead,
                        failed: client == ClientStatus::Failed,
                        finished_at: Timestamp::from_unix_nanos(at),
                        ..Default::default()
                    },
                );
            }
            ClientStatus::Running => {
                a.task_states.insert(
                    task,
                    TaskState {
                        state: TaskStatus::Running,
                        ..Default::default()
                    },
                );
            }
            _ => {}
        }
        if !s.tracker.is_empty() || s.last_reschedule_failed {
            a.reschedule_tracker = Some(RescheduleTracker {
                events: s
                    .tracker
                    .iter()
                    .enumerate()
                    .map(|(k, &(age, delay))| RescheduleEvent {
                        reschedule_time: NOW - age * SEC,
                        prev_alloc_id: AllocId::new(format!("prev-{i}-{k}")),
                        prev_node_id: node_id(k % NODES),
                        delay: Duration(delay * SEC),
                    })
                    .collect(),
                last_reschedule: if s.last_reschedule_failed {
                    "no placement".into()
                } else {
                    "ok".into()
                },
            });
        }
        if s.followup {
            a.followup_eval_id = format!("eval-{i}").into();
        }
        if s.replaced {
            a.next_allocation = AllocId::new(format!("a{}", (i + 1) % specs.len().max(1)));
        }
        if s.migrate && desired == DesiredStatus::Run {
            a.desired_transition.migrate = Some(true);
        }
        if let Some(age) = s.unknown_age {
            a.alloc_states.push(AllocState {
                field: 0,
                value: "unknown".into(),
                time: Timestamp::from_unix_nanos(NOW - age * SEC),
            });
        }
        if let Some(from) = s.migrated_from {
            a.previous_allocation = AllocId::new(format!("a{from}"));
        }
        allocs.push(a);
    }
    let mut world = World::new(Some(job.clone()), allocs, nodes);
    world.eligible = node_specs
        .iter()
        .enumerate()
        .filter(|(_, n)| n.status == 0 && n.eligible && n.drain.is_none() && !n.other_dc)
        .map(|(i, _)| node_id(i))
        .collect();
    world
}

fn desired_running(world: &World, group: &str) -> usize {
    world
        .allocs
        .iter()
        .filter(|a| {
            a.task_group == group
                && a.desired_status == DesiredStatus::Run
                && !a.client_terminal_status()
        })
        .count()
}

/// Checks the three invariants on one world; returns the first plan.
fn check(mut world: World) -> Result<Plan, TestCaseError> {
    let job = world.job.clone().expect("a job");
    let before = world.clone();
    let plan = world.reconcile();

    // Each allocation is acted on at most once.
    let mut touched = BTreeSet::new();
    let acted = plan
        .stop
        .iter()
        .map(|s| &s.alloc_id)
        .chain(&plan.inplace_update)
        .chain(plan.destructive_update.iter().map(|d| &d.alloc_id))
        .chain(plan.disconnect.iter().map(|d| &d.alloc_id));
    for id in acted {
        prop_assert!(touched.insert(id.clone()), "{id} acted on twice: {plan:#?}");
    }

    // 3. Completed batch work is never replaced.
    if job.r#type == JobType::Batch {
        // (An evicted allocation was preempted, not finished: it runs again, as in Nomad.)
        let completed = |a: &&Allocation| {
            a.client_status == ClientStatus::Complete && a.desired_status != DesiredStatus::Evict
        };
        for a in before.allocs.iter().filter(completed) {
            let current = a.job.as_deref().is_some_and(|j| {
                j.version == job.version && j.job_modify_index == job.job_modify_index
            });
            for p in plan.placements() {
                prop_assert!(
                    p.previous_alloc.as_ref() != Some(&a.id),
                    "replaces {}: {plan:#?}",
                    a.id
                );
                if current && p.reason == PlaceReason::New {
                    prop_assert!(p.name != a.name, "re-runs {}: {plan:#?}", a.name);
                }
            }
        }
    }

    world.apply(&plan);

    // 1. Never more desired to run than count.
    if matches!(job.r#type, JobType::Service | JobType::Batch) {
        for tg in &job.task_groups {
            let running = desired_running(&world, &tg.name);
            prop_assert!(
                running <= usize::try_from(tg.count).unwrap_or(0),
                "group {} runs {running} > {}: {plan:#?}",
                tg.name,
                tg.count
            );
        }
    }

    // 2. Idempotent.
    let again = world.reconcile();
    prop_assert!(
        again.is_empty() && again.reschedule_later.is_empty(),
        "second plan not empty: {again:#?}\nfirst plan: {plan:#?}\nworld before: {:#?}",
        summarize(&before)
    );
    Ok(plan)
}

/// Puts a paused or failed deployment of `job`'s version in charge: the allocations of the
/// current version belong to it, the first `canaries` of each group are its canaries.
fn halted_deployment(
    job: &Job,
    world: &mut World,
    failed: bool,
    canaries: i32,
    promoted: bool,
) -> Deployment {
    let id = caravan_schemas::DeploymentId::new("d-halted");
    let d = Deployment {
        id: id.clone(),
        job_id: job.id.clone(),
        job_version: job.version,
        job_create_index: job.create_index,
        status: if failed {
            DeploymentStatus::Failed
        } else {
            DeploymentStatus::Paused
        },
        task_groups: job
            .task_groups
            .iter()
            .map(|tg| {
                let state = DeploymentState {
                    desired_total: tg.count,
                    desired_canaries: canaries,
                    promoted: promoted || canaries == 0,
                    ..Default::default()
                };
                (tg.name.clone(), state)
            })
            .collect(),
        ..Default::default()
    };
    let mut marked: std::collections::BTreeMap<String, i32> = std::collections::BTreeMap::new();
    for a in &mut world.allocs {
        let current = a.job.as_deref().is_some_and(|j| j.version == job.version);
        if !current {
            continue;
        }
        a.deployment_id = id.clone();
        let n = marked.entry(a.task_group.clone()).or_default();
        if *n < canaries && !promoted {
            *n += 1;
            a.deployment_status
                .get_or_insert_with(Default::default)
                .canary = true;
        }
    }
    world.deployments.push(d.clone());
    d
}

/// A compact view of a world for failure messages.
fn summarize(world: &World) -> Vec<String> {
    let mut lines: Vec<String> = world
        .nodes
        .iter()
        .map(|(id, n)| {
            format!(
                "node {id}: {:?} eligible={} drain={:?} dc={}",
                n.status, n.eligible, n.drain, n.datacenter
            )
        })
        .collect();
    lines.extend(world.allocs.iter().map(|a| {
        format!(
            "{} {} node={} v={} desired={} client={} healthy={:?} next={} prev={} followup={} transition={:?} tracker={:?} states={:?} modify={}",
            a.id,
            a.name,
            a.node_id,
            a.job.as_ref().map_or(0, |j| j.job_modify_index),
            a.desired_status,
            a.client_status,
            a.deployment_status.as_ref().and_then(|d| d.healthy),
            a.next_allocation,
            a.previous_allocation,
            a.followup_eval_id,
            a.desired_transition.migrate,
            a.reschedule_tracker.as_ref().map(|t| (t.events.iter().map(|e| (e.reschedule_time - NOW) / SEC).collect::<Vec<_>>(), t.last_reschedule.clone())),
            a.alloc_states.iter().map(|s| s.time.unix_nanos().map(|t| (t - NOW) / SEC)).collect::<Vec<_>>(),
            (a.modify_time - NOW) / SEC,
        )
    }));
    lines
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn service_and_batch_invariants(
        spec in job_spec(&[JobType::Service, JobType::Batch]),
        node_specs in proptest::collection::vec(node_spec(), NODES),
        alloc_specs in proptest::collection::vec(alloc_spec(), 0..10),
    ) {
        let job = build_job(&spec);
        check(build_world(&job, &node_specs, &alloc_specs))?;
    }

    #[test]
    fn a_halted_deployment_starts_nothing_new(
        spec in job_spec(&[JobType::Service]),
        node_specs in proptest::collection::vec(node_spec(), NODES),
        alloc_specs in proptest::collection::vec(alloc_spec(), 0..10),
        failed in any::<bool>(),
        canaries in 0..3i32,
        promoted in any::<bool>(),
    ) {
        let job = build_job(&spec);
        let mut world = build_world(&job, &node_specs, &alloc_specs);
        let d = halted_deployment(&job, &mut world, failed, canaries, promoted);
        let before = world.clone();
        let plan = world.reconcile();

        prop_assert!(plan.deployment.is_none(), "a halted deployment is not replaced: {plan:#?}");
        prop_assert!(plan.deployment_updates.is_empty(), "{plan:#?}");
        prop_assert!(plan.destructive_update.is_empty(), "{plan:#?}");
        for p in &plan.place {
            prop_assert!(
                !p.canary || p.is_reschedule() == (p.previous_alloc.is_some() && !failed),
                "canary placed: {p:#?}"
            );
            prop_assert!(p.reason != PlaceReason::New && p.reason != PlaceReason::Canary, "{p:#?}");
            if failed && p.is_reschedule() {
                let prev = p.previous_alloc.as_ref().expect("a reschedule replaces");
                let prev = before.allocs.iter().find(|a| &a.id == prev).expect("known");
                prop_assert!(prev.deployment_id != d.id, "failed deployment's alloc rescheduled: {p:#?}");
            }
        }
        let stopped: BTreeSet<&AllocId> = plan.stop.iter().map(|s| &s.alloc_id).collect();
        for a in before.allocs.iter().filter(|a| a.is_canary() && !a.is_terminal()) {
            let promoted_group = d.task_groups.get(&a.task_group).is_some_and(|g| g.promoted);
            if failed && !promoted_group {
                prop_assert!(stopped.contains(&a.id), "unpromoted canary {} of a failed deployment kept", a.id);
            }
        }

        world.apply(&plan);
        for tg in &job.task_groups {
            let bound = usize::try_from(tg.count + canaries).unwrap_or(0);
            let running = desired_running(&world, &tg.name);
            prop_assert!(running <= bound, "group {} runs {running} > {bound}: {plan:#?}", tg.name);
        }
        let again = world.reconcile();
        prop_assert!(
            again.is_empty() && !again.changes_deployments(),
            "second plan not empty: {again:#?}\nfirst plan: {plan:#?}\nworld before: {:#?}",
            summarize(&before)
        );
    }

    #[test]
    fn system_and_sysbatch_settle(
        spec in job_spec(&[JobType::System, JobType::Sysbatch]),
        node_specs in proptest::collection::vec(node_spec(), NODES),
        alloc_specs in proptest::collection::vec(alloc_spec(), 0..10),
    ) {
        let mut spec = spec;
        spec.counts = [spec.counts[0].min(2), spec.counts[1].min(1)];
        let job = build_job(&spec);
        check(build_world(&job, &node_specs, &alloc_specs))?;
    }

    #[test]
    fn stopped_and_purged_jobs_settle(
        spec in job_spec(&[JobType::Service, JobType::Batch, JobType::System, JobType::Sysbatch]),
        node_specs in proptest::collection::vec(node_spec(), NODES),
        alloc_specs in proptest::collection::vec(alloc_spec(), 0..10),
        purge in any::<bool>(),
    ) {
        let mut job = build_job(&spec);
        job.stop = true;
        let mut world = build_world(&job, &node_specs, &alloc_specs);
        if purge {
            world.job = None;
        }
        let plan = world.reconcile();
        prop_assert!(plan.place.is_empty() && plan.destructive_update.is_empty());
        prop_assert_eq!(plan.job_status, crate::reconcile::JobStatus::Dead);
        world.apply(&plan);
        prop_assert!(world.allocs.iter().all(|a| a.is_terminal()));
        prop_assert!(world.reconcile().is_empty());
    }

    /// Reconciling until nothing changes converges quickly, whatever the starting state.
    #[test]
    fn converges(
        spec in job_spec(&[JobType::Service, JobType::Batch]),
        node_specs in proptest::collection::vec(node_spec(), NODES),
        alloc_specs in proptest::collection::vec(alloc_spec(), 0..10),
    ) {
        let job = build_job(&spec);
        let mut world = build_world(&job, &node_specs, &alloc_specs);
        let plan = world.reconcile();
        world.apply(&plan);
        // New allocations start and turn healthy; the rollout continues until done.
        for _ in 0..40 {
            // Agents start what was placed and report health, except where it went bad.
            let fresh: Vec<AllocId> = world
                .allocs
                .iter()
                .filter(|a| {
                    !a.is_terminal()
                        && !a.is_unhealthy()
                        && world.nodes.get(&a.node_id).is_some_and(|n| n.status == NodeStatus::Ready)
                })
                .map(|a| a.id.clone())
                .collect();
            world.make_healthy(&fresh);
            let plan = world.reconcile();
            if plan.is_empty() {
                break;
            }
            world.apply(&plan);
        }
        let plan = world.reconcile();
        prop_assert!(plan.is_empty(), "did not converge: {plan:#?}");
        // Settled: once every allocation of the new version is healthy, nothing outdated is
        // left running on a usable node. (A rollout waits on new allocations that cannot turn
        // healthy — unhealthy, or out of touch on a disconnected node.)
        let waiting = world.allocs.iter().any(|a| {
            !a.is_terminal()
                && !a.is_healthy()
                && a.job.as_deref().is_some_and(|j| j.job_modify_index == job.job_modify_index)
        });
        if !waiting {
            for a in world.allocs.iter().filter(|a| !a.is_terminal()) {
                let current = a.job.as_deref().is_some_and(|j| j.job_modify_index == job.job_modify_index);
                let usable = world.nodes.get(&a.node_id).is_some_and(|n| n.status == NodeStatus::Ready && n.drain.is_none() && n.datacenter == "dc1");
                prop_assert!(current || !usable, "{} left outdated", a.id);
            }
        }
    }
}
