//! A job's status, by Nomad's rules (`StateStore.getJobStatus`).

use super::{Input, JobStatus, Plan, is_parent};
use caravan_schemas::AllocId;
use caravan_schemas::alloc::Allocation;
use caravan_schemas::job::{Job, JobType};
use std::collections::BTreeSet;

/// The status of `job` given its allocations:
///
/// - system, periodic and parameterized (parent) jobs are `running` until stopped, then `dead`;
/// - otherwise `running` while any allocation is not terminal;
/// - `pending` while work is outstanding (`pending_work`: placements that could not be made
///   yet, a follow-up evaluation such as a delayed reschedule);
/// - `dead` when stopped, or when everything has finished (a purged job is dead too).
///
/// A job nothing was ever placed for, with nothing outstanding, is `dead` as well: Nomad calls
/// it so once its evaluation completes. Before its first reconcile the API reports `pending`.
pub fn job_status(job: Option<&Job>, allocs: &[Allocation], pending_work: bool) -> JobStatus {
    status(job, allocs.iter().any(|a| !a.is_terminal()), pending_work)
}

fn status(job: Option<&Job>, any_live: bool, pending_work: bool) -> JobStatus {
    let Some(job) = job else {
        return JobStatus::Dead;
    };
    if job.r#type == JobType::System || is_parent(job) {
        return if job.stop {
            JobStatus::Dead
        } else {
            JobStatus::Running
        };
    }
    if any_live {
        JobStatus::Running
    } else if pending_work && !job.stop {
        JobStatus::Pending
    } else {
        JobStatus::Dead
    }
}

/// The status once `plan` is applied, assuming every placement succeeds.
pub(super) fn after_plan(input: &Input<'_>, plan: &Plan) -> JobStatus {
    let stopped: BTreeSet<&AllocId> = plan
        .stop
        .iter()
        .map(|s| &s.alloc_id)
        .chain(plan.destructive_update.iter().map(|d| &d.alloc_id))
        .collect();
    let any_live = plan.placements().next().is_some()
        || input
            .allocs
            .iter()
            .any(|a| !a.is_terminal() && !stopped.contains(&a.id));
    // Something waits on the clock with nothing running: a delayed reschedule.
    status(input.job, any_live, plan.wake_at.is_some())
}
