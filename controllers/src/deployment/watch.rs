//! The deployment watcher (Nomad's `deploymentWatcher.watch`, `handleAllocUpdate`,
//! `shouldFail`, `autoPromoteDeployment`, the state store's `updateDeploymentWithAlloc`, and the
//! reconciler's completion check), as one pure step: given a deployment, its job and the
//! allocations, what the deployment should become.

use super::{allocs_of, failure_description, promote_groups, running_description};
use crate::reconcile::{reschedule_eligible, reschedule_policy};
use caravan_schemas::AllocId;
use caravan_schemas::alloc::Allocation;
use caravan_schemas::deployment::{Deployment, DeploymentState, DeploymentStatus, descriptions};
use caravan_schemas::job::Job;
use caravan_schemas::time::Timestamp;

/// What the watcher looks at.
#[derive(Clone, Copy, Debug)]
pub struct WatchInput<'a> {
    pub deployment: &'a Deployment,
    /// The job as it is now. When it is no longer the version the deployment rolls out (or it
    /// was stopped), the job reconciler cancels the deployment; the watcher then only keeps its
    /// counters.
    pub job: &'a Job,
    /// The job's allocations, of any version and status; those of other deployments are
    /// ignored.
    pub allocs: &'a [Allocation],
    /// The job's stored versions, in any order (the current one may be among them): where
    /// auto-revert finds the latest stable version.
    pub versions: &'a [Job],
    /// Unix nanoseconds.
    pub now: i64,
}

/// What to write after a watch. Apply it in one transaction: the deployment, the allocations'
/// changes, then the job's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WatchOutcome {
    /// The deployment brought up to date (counters, placed canaries, progress deadlines,
    /// status and description); `None` when nothing changed.
    pub deployment: Option<Deployment>,
    /// The deployment promoted itself (`auto_promote`): clear `DeploymentStatus.Canary` on
    /// these allocations.
    pub promoted_canaries: Vec<AllocId>,
    /// Unhealthy allocations, not stopped yet, the deployment can afford to replace (it has a
    /// progress deadline and their reschedule policy allows it): set their
    /// `DesiredTransition.Reschedule`, so the job reconciler reschedules them once they failed.
    pub allow_reschedule: Vec<AllocId>,
    /// The deployment succeeded: mark this job version stable.
    pub stable_version: Option<u64>,
    /// The deployment failed and its group has `auto_revert`: register this (stable) job
    /// version's spec again as a new version.
    pub revert_to: Option<u64>,
    /// Watch again at this time even if nothing changes (the nearest progress deadline).
    pub wake_at: Option<i64>,
}

/// One step of the watcher. A deployment that is no longer active is left alone.
///
/// In order:
/// 1. counters per group from the allocations of the deployment: `PlacedAllocs`,
///    `HealthyAllocs`, `UnhealthyAllocs` (terminal ones included, as Nomad's running counts);
///    canaries found among them join `PlacedCanaries`;
/// 2. progress: a group's `RequireProgressBy` starts at its first allocation and moves to an
///    allocation's health timestamp plus `progress_deadline` when that is later;
/// 3. failure ("Failed due to progress deadline"): a deadline passed (the deployment not
///    paused) while a group has fewer healthy allocations than it needs — its canaries while
///    unpromoted, else `DesiredTotal` — a group waiting for manual promotion with healthy
///    canaries does not fail;
/// 4. failure ("Failed due to unhealthy allocations"): an allocation is unhealthy and its group
///    has no progress deadline, or its reschedule policy is spent; other unhealthy allocations
///    are let to reschedule ([`WatchOutcome::allow_reschedule`]);
///    a failure reverts to the latest stable version when the failing group has `auto_revert`;
/// 5. automatic promotion, when every group with canaries has `auto_promote` and all its
///    canaries healthy;
/// 6. success: every group promoted (or without canaries) with `DesiredTotal` healthy
///    allocations running; the job version becomes stable.
pub fn watch(input: &WatchInput<'_>) -> WatchOutcome {
    let d = input.deployment;
    let now = input.now;
    let mut out = WatchOutcome::default();
    if !d.active() {
        return out;
    }
    let mut next = d.clone();
    refresh(&mut next, input.allocs, now);

    let job = input.job;
    let rolling_out = !job.stop
        && job.id == d.job_id
        && job.version == d.job_version
        && job.create_index == d.job_create_index;
    if rolling_out {
        let mine: Vec<&Allocation> = {
            let mut v: Vec<&Allocation> = allocs_of(&next, input.allocs).collect();
            v.sort_by(|a, b| (a.create_index, &a.id).cmp(&(b.create_index, &b.id)));
            v
        };
        let failure = deadline_failure(&next, &mine, now)
            .map(|rollback| (descriptions::PROGRESS_DEADLINE, rollback))
            .or_else(|| {
                unhealthy_failure(&next, job, &mine, now)
                    .map(|rollback| (descriptions::FAILED_ALLOCATIONS, rollback))
            });
        if let Some((base, rollback)) = failure {
            let (description, revert) =
                failure_description(&next, job, input.versions, base, rollback);
            next.status = DeploymentStatus::Failed;
            next.status_description = description;
            out.revert_to = revert;
        } else {
            out.allow_reschedule = mine
                .iter()
                .filter(|a| {
                    a.is_unhealthy()
                        && !a.server_terminal_status()
                        && next.task_groups.contains_key(&a.task_group)
                        && a.desired_transition.reschedule != Some(true)
                })
                .map(|a| a.id.clone())
                .collect();
            if auto_promotable(&next, &mine)
                && let Ok(promoted) = promote_groups(&mut next, input.allocs, None, now)
            {
                out.promoted_canaries = promoted;
            }
            let complete = !next.task_groups.is_empty()
                && next
                    .task_groups
                    .iter()
                    .all(|(g, s)| group_done(g, s, &mine));
            if complete {
                next.status = DeploymentStatus::Successful;
                next.status_description = descriptions::SUCCESSFUL.to_owned();
                out.stable_version = Some(next.job_version);
            } else if next.status == DeploymentStatus::Running {
                next.status_description = running_description(&next).to_owned();
            }
        }
        if next.active() && next.status != DeploymentStatus::Paused {
            out.wake_at = progress_cutoff(&next, &mine).filter(|&t| t > now);
        }
    }

    if next != *d {
        next.modify_time = now;
        out.deployment = Some(next);
    }
    out
}

/// Recounts the deployment's groups from its allocations and moves their progress deadlines
/// (Nomad's `updateDeploymentWithAlloc`, over every allocation at once).
pub(super) fn refresh(deployment: &mut Deployment, allocs: &[Allocation], now: i64) {
    let id = deployment.id.clone();
    let mut mine: Vec<&Allocation> = allocs.iter().filter(|a| a.deployment_id == id).collect();
    mine.sort_by(|a, b| (a.create_index, &a.id).cmp(&(b.create_index, &b.id)));
    for (group, state) in &mut deployment.task_groups {
        let of_group = || mine.iter().filter(|a| &a.task_group == group);
        state.placed_allocs = count(of_group().count());
        state.healthy_allocs = count(of_group().filter(|a| a.is_healthy()).count());
        state.unhealthy_allocs = count(of_group().filter(|a| a.is_unhealthy()).count());
        for alloc in of_group().filter(|a| a.is_canary()) {
            if !state.placed_canaries.contains(&alloc.id) {
                state.placed_canaries.push(alloc.id.clone());
            }
        }
        let deadline = state.progress_deadline;
        if deadline.nanos() <= 0 {
            continue;
        }
        if state.require_progress_by.is_zero() && state.placed_allocs > 0 {
            state.require_progress_by = Timestamp::from_unix_nanos(now) + deadline;
        }
        for alloc in of_group().filter(|a| a.is_healthy()) {
            let decided = alloc
                .deployment_status
                .as_ref()
                .map_or(Timestamp::ZERO, |s| s.timestamp);
            if decided.is_zero() {
                continue;
            }
            let by = decided + deadline;
            if by > state.require_progress_by {
                state.require_progress_by = by;
            }
        }
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Canaries placed but not promoted yet.
fn canarying(state: &DeploymentState) -> bool {
    state.desired_canaries > 0 && !state.promoted
}

/// The group needs nothing more: promoted (or without canaries) and with `DesiredTotal`
/// healthy allocations still running. (Canaries beyond the count are stopped once promoted,
/// so they are not waited for.)
fn group_done(group: &str, state: &DeploymentState, mine: &[&Allocation]) -> bool {
    if canarying(state) {
        return false;
    }
    let healthy = mine
        .iter()
        .filter(|a| a.task_group == group && !a.is_terminal() && a.is_healthy())
        .count();
    healthy >= usize::try_from(state.desired_total.max(0)).unwrap_or(usize::MAX)
}

/// The earliest progress deadline of a group that is not done yet.
fn progress_cutoff(deployment: &Deployment, mine: &[&Allocation]) -> Option<i64> {
    deployment
        .task_groups
        .iter()
        .filter(|(g, s)| !group_done(g, s, mine))
        .filter_map(|(_, s)| s.require_progress_by.unix_nanos())
        .min()
}

/// A progress deadline passed without the progress it waited for: `Some(rollback)`.
fn deadline_failure(deployment: &Deployment, mine: &[&Allocation], now: i64) -> Option<bool> {
    if deployment.status == DeploymentStatus::Paused {
        return None;
    }
    let cutoff = progress_cutoff(deployment, mine)?;
    if cutoff > now {
        return None;
    }
    let mut failed = false;
    let mut rollback = false;
    for state in deployment.task_groups.values() {
        let needed = if canarying(state) {
            state.desired_canaries
        } else {
            state.desired_total
        };
        if state.healthy_allocs < needed {
            failed = true;
            rollback |= state.auto_revert;
        }
    }
    failed.then_some(rollback)
}

/// An unhealthy allocation the deployment cannot wait out: its group has no progress deadline
/// to reschedule within, or its reschedule policy is spent. `Some(rollback)`.
fn unhealthy_failure(
    deployment: &Deployment,
    job: &Job,
    mine: &[&Allocation],
    now: i64,
) -> Option<bool> {
    let mut failed = false;
    let mut rollback = false;
    for alloc in mine.iter().filter(|a| a.is_unhealthy()) {
        let Some(state) = deployment.task_groups.get(&alloc.task_group) else {
            continue;
        };
        let fails_early = state.progress_deadline.nanos() <= 0
            || !job
                .group(&alloc.task_group)
                .is_some_and(|tg| reschedule_eligible(alloc, reschedule_policy(alloc, tg), now));
        if fails_early {
            failed = true;
            rollback |= state.auto_revert;
        }
    }
    failed.then_some(rollback)
}

/// Every group with canaries promotes itself and has all its canaries placed and healthy.
fn auto_promotable(deployment: &Deployment, mine: &[&Allocation]) -> bool {
    if deployment.status != DeploymentStatus::Running
        || !deployment.requires_promotion()
        || !deployment.has_placed_canaries()
    {
        return false;
    }
    deployment
        .task_groups
        .values()
        .filter(|s| s.desired_canaries > 0)
        .all(|s| {
            let desired = usize::try_from(s.desired_canaries).unwrap_or(usize::MAX);
            let healthy = mine
                .iter()
                .filter(|a| s.placed_canaries.contains(&a.id) && !a.is_terminal() && a.is_healthy())
                .count();
            s.auto_promote && s.placed_canaries.len() >= desired && healthy >= desired
        })
}
