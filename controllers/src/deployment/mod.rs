//! The deployment watcher and the user's deployment actions, pure (Nomad's
//! `nomad/deploymentwatcher` and the deployment parts of its state store).
//!
//! Who decides what:
//!
//! - the **client** decides an allocation's health (`DeploymentStatus.Healthy`, `Timestamp`);
//! - the **job reconciler** ([`crate::reconcile`]) creates a deployment for a new job version,
//!   places canaries, replaces allocations at the rollout's pace, and cancels a deployment a
//!   newer version or a stopped job makes moot;
//! - the **watcher** ([`watch`]) keeps a deployment's counters and progress deadline up to
//!   date and moves its status: failed (unhealthy allocations, progress deadline), promoted
//!   (`auto_promote`), successful; it says which job version becomes stable and which one to
//!   revert to;
//! - the **user** promotes, fails, pauses and resumes a deployment and, with
//!   `health_check = "manual"`, sets allocations' health ([`promote`], [`fail`], [`pause`],
//!   [`set_alloc_health`]).
//!
//! Everything here is a function of its inputs (time included); the caller writes what comes
//! back in one store transaction, guarded by the revisions it read.

mod actions;
mod watch;

#[cfg(test)]
mod tests;

pub use actions::{
    Failure, HealthUpdate, Promotion, fail, pause, promote, promote_groups, set_alloc_health,
};
pub use watch::{WatchInput, WatchOutcome, watch};

use caravan_schemas::alloc::Allocation;
use caravan_schemas::deployment::{Deployment, DeploymentStatus, descriptions};
use caravan_schemas::job::Job;
use caravan_schemas::time::Timestamp;
use caravan_schemas::{AllocId, DeploymentId};
use std::fmt;

/// Why a deployment action was refused. The texts are Nomad's where Nomad has one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeploymentError {
    /// The deployment already ended (successful, failed or cancelled).
    #[error("{}", terminal_text(*.action))]
    Terminal { action: Action },
    /// `promote`: some group's canaries are not all healthy yet.
    #[error("{}", multierror(.0))]
    UnhealthyCanaries(Vec<CanaryShortfall>),
    /// `promote -group G`: the deployment has no such group.
    #[error("task group {group:?} is not part of deployment {deployment}")]
    UnknownGroup {
        group: String,
        deployment: DeploymentId,
    },
    /// `allocation-health` named no allocation.
    #[error("must specify at least one healthy/unhealthy allocation ID")]
    NoAllocations,
    /// `allocation-health` named an allocation that does not exist.
    #[error("unknown alloc \"{0}\"")]
    UnknownAlloc(AllocId),
    /// `allocation-health` named an allocation of another deployment.
    #[error("alloc \"{alloc}\" is not part of deployment \"{deployment}\"")]
    NotInDeployment {
        alloc: AllocId,
        deployment: DeploymentId,
    },
    /// `allocation-health` named an allocation both healthy and unhealthy.
    #[error("alloc \"{0}\" is marked both healthy and unhealthy")]
    HealthConflict(AllocId),
    /// A status update for another deployment than the one given.
    #[error("status update for deployment \"{update}\" applied to deployment \"{deployment}\"")]
    WrongDeployment {
        update: DeploymentId,
        deployment: DeploymentId,
    },
}

/// The action a terminal deployment refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Promote,
    Fail,
    Pause,
    Resume,
    SetHealth,
    /// A status update (a cancellation racing the deployment's end).
    Update,
}

fn terminal_text(action: Action) -> &'static str {
    match action {
        Action::Promote => "can't promote terminal deployment",
        Action::Fail => "can't fail terminal deployment",
        Action::Pause => "can't pause terminal deployment",
        Action::Resume => "can't resume terminal deployment",
        Action::SetHealth => "can't set health of allocations for a terminal deployment",
        Action::Update => "can't update terminal deployment",
    }
}

/// A group whose canaries are not all healthy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanaryShortfall {
    pub group: String,
    pub healthy: usize,
    pub desired: usize,
}

impl fmt::Display for CanaryShortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Task group {:?} has {}/{} healthy allocations",
            self.group, self.healthy, self.desired
        )
    }
}

/// go-multierror's list format, which Nomad's promotion error comes in.
fn multierror(errors: &[CanaryShortfall]) -> String {
    match errors {
        [one] => format!("1 error occurred:\n\t* {one}\n\n"),
        many => {
            let points: Vec<String> = many.iter().map(|e| format!("* {e}")).collect();
            format!(
                "{} errors occurred:\n\t{}\n\n",
                many.len(),
                points.join("\n\t")
            )
        }
    }
}

/// A change of a deployment's status (Nomad's `DeploymentStatusUpdate`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusUpdate {
    pub deployment_id: DeploymentId,
    pub status: DeploymentStatus,
    /// One of [`descriptions`] (possibly with a rollback suffix).
    pub description: String,
}

impl StatusUpdate {
    /// Applies the update at `now`, as Nomad's state store does: a terminal deployment is left
    /// alone (error), and a deployment set running or paused gets its progress deadlines
    /// restarted from `now`.
    pub fn apply(&self, deployment: &mut Deployment, now: i64) -> Result<(), DeploymentError> {
        if deployment.id != self.deployment_id {
            return Err(DeploymentError::WrongDeployment {
                update: self.deployment_id.clone(),
                deployment: deployment.id.clone(),
            });
        }
        if !deployment.active() {
            return Err(DeploymentError::Terminal {
                action: Action::Update,
            });
        }
        deployment.status = self.status;
        deployment.status_description.clone_from(&self.description);
        deployment.modify_time = now;
        if matches!(
            self.status,
            DeploymentStatus::Running | DeploymentStatus::Paused
        ) {
            restart_progress_deadlines(deployment, now);
        }
        Ok(())
    }
}

/// The description of a running deployment: whether it waits for a promotion, manual or
/// automatic (Nomad's `setDeploymentStatusAndUpdates`).
pub fn running_description(deployment: &Deployment) -> &'static str {
    let waits = deployment
        .task_groups
        .values()
        .any(|g| g.desired_canaries > 0 && !g.promoted);
    if !waits {
        descriptions::RUNNING
    } else if deployment
        .task_groups
        .values()
        .all(|g| g.desired_canaries == 0 || g.auto_promote)
    {
        descriptions::RUNNING_AUTO_PROMOTION
    } else {
        descriptions::RUNNING_NEEDS_PROMOTION
    }
}

/// Every group with a progress deadline must now make progress by `now + deadline`.
fn restart_progress_deadlines(deployment: &mut Deployment, now: i64) {
    for state in deployment.task_groups.values_mut() {
        if state.progress_deadline.nanos() > 0 {
            state.require_progress_by = Timestamp::from_unix_nanos(now) + state.progress_deadline;
        }
    }
}

/// The allocations of `deployment` among `allocs`.
fn allocs_of<'a>(
    deployment: &Deployment,
    allocs: &'a [Allocation],
) -> impl Iterator<Item = &'a Allocation> + use<'a> {
    let id = deployment.id.clone();
    allocs.iter().filter(move |a| a.deployment_id == id)
}

/// The two jobs have the same specification: they differ only in what the servers keep track
/// of (version, indexes, status, stability, submit time), as Nomad's `Job.SpecChanged`.
pub fn same_spec(a: &Job, b: &Job) -> bool {
    let strip = |j: &Job| Job {
        version: 0,
        stable: false,
        status: String::new(),
        status_description: String::new(),
        create_index: 0,
        modify_index: 0,
        job_modify_index: 0,
        submit_time: 0,
        ..j.clone()
    };
    strip(a) == strip(b)
}

/// How a failed deployment is described and which version it reverts to (Nomad's
/// `latestStableJob` and `handleRollbackValidity`): with `rollback`, the latest stable version
/// older than the deployment's, unless it has the very spec of the current job (reverting would
/// not change anything, and could loop).
fn failure_description(
    deployment: &Deployment,
    job: &Job,
    versions: &[Job],
    base: &str,
    rollback: bool,
) -> (String, Option<u64>) {
    if !rollback {
        return (base.to_owned(), None);
    }
    let stable = versions
        .iter()
        .filter(|v| v.stable && v.version < deployment.job_version && v.id == job.id)
        .max_by_key(|v| v.version);
    match stable {
        None => (descriptions::no_rollback_target(base), None),
        Some(v) if same_spec(v, job) => (descriptions::rollback_noop(base, v.version), None),
        Some(v) => (descriptions::rollback(base, v.version), Some(v.version)),
    }
}
