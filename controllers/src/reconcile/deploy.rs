//! The reconciler's side of deployments, as Nomad's `cancelUnneededServiceDeployments`,
//! `cancelUnneededCanaries` and `createDeployment` decide it: which deployment is in charge of
//! the current job version, which one a newer version or a stopped job cancels, which canaries
//! are no longer wanted, and the deployment that rolling out a new version creates.
//!
//! Health, promotion, success and failure are not decided here: the client reports health and
//! the deployment watcher ([`crate::deployment`]) moves the deployment along. The reconciler only
//! reads the deployment's status and its groups' `DesiredCanaries`, `Promoted` and
//! `PlacedCanaries`.

use super::{Input, Plan};
use crate::deployment::{StatusUpdate, running_description};
use caravan_schemas::DeploymentId;
use caravan_schemas::alloc::Allocation;
use caravan_schemas::deployment::{Deployment, DeploymentState, DeploymentStatus, descriptions};
use caravan_schemas::job::{Job, TaskGroup, UpdateStrategy};

/// The job's deployment as far as the current job version is concerned.
#[derive(Debug)]
pub(super) struct Deploy<'a> {
    /// The job's latest deployment, whatever its status.
    latest: Option<&'a Deployment>,
    /// The deployment in charge of the current job version: the latest one, when it is for
    /// this version and neither successful nor cancelled (running, paused or failed).
    current: Option<&'a Deployment>,
    /// The ID of a deployment this plan creates.
    new_id: &'a DeploymentId,
    now: i64,
}

impl<'a> Deploy<'a> {
    /// Finds the deployment in charge; cancels the latest one in `plan` when the job was
    /// stopped or purged ("Cancelled because job is stopped") or moved on to another version
    /// ("Cancelled due to newer version of job").
    pub(super) fn new(input: &Input<'a>, plan: &mut Plan) -> Self {
        let latest = input.deployment;
        let mut deploy = Deploy {
            latest,
            current: None,
            new_id: input.new_deployment_id,
            now: input.now,
        };
        let Some(d) = latest else {
            return deploy;
        };
        let cancel = |description: &str| StatusUpdate {
            deployment_id: d.id.clone(),
            status: DeploymentStatus::Cancelled,
            description: description.to_owned(),
        };
        match input.job {
            None => {
                if d.active() {
                    plan.deployment_updates
                        .push(cancel(descriptions::STOPPED_JOB));
                }
            }
            Some(job) if job.stop || super::is_parent(job) => {
                if d.active() {
                    plan.deployment_updates
                        .push(cancel(descriptions::STOPPED_JOB));
                }
            }
            Some(job) if d.job_create_index != job.create_index || d.job_version != job.version => {
                if d.active() {
                    plan.deployment_updates
                        .push(cancel(descriptions::NEWER_JOB));
                }
            }
            Some(_) => {
                if !matches!(
                    d.status,
                    DeploymentStatus::Successful | DeploymentStatus::Cancelled
                ) {
                    deploy.current = Some(d);
                }
            }
        }
        deploy
    }

    /// The deployment in charge of the current job version.
    pub(super) fn current(&self) -> Option<&'a Deployment> {
        self.current
    }

    /// The deployment in charge is paused (or waiting to start): it makes no progress.
    pub(super) fn paused(&self) -> bool {
        self.current.is_some_and(|d| {
            matches!(
                d.status,
                DeploymentStatus::Paused
                    | DeploymentStatus::Pending
                    | DeploymentStatus::Initializing
            )
        })
    }

    /// The deployment in charge failed: nothing more of this version is rolled out.
    pub(super) fn failed(&self) -> bool {
        self.current
            .is_some_and(|d| d.status == DeploymentStatus::Failed)
    }

    /// The state of `group` in the deployment in charge.
    pub(super) fn group(&self, group: &str) -> Option<&'a DeploymentState> {
        self.current.and_then(|d| d.task_groups.get(group))
    }

    /// The allocation belongs to the deployment in charge.
    pub(super) fn in_current(&self, alloc: &Allocation) -> bool {
        self.current.is_some_and(|d| d.id == alloc.deployment_id)
    }

    /// The allocation is a canary of the deployment in charge.
    pub(super) fn is_current_canary(&self, alloc: &Allocation) -> bool {
        self.current.is_some_and(|d| {
            d.id == alloc.deployment_id
                && (alloc.is_canary()
                    || d.task_groups
                        .get(&alloc.task_group)
                        .is_some_and(|g| g.placed_canaries.contains(&alloc.id)))
        })
    }

    /// A live canary nobody will promote: it belongs to an older deployment (one a newer job
    /// version replaced, or that was cancelled), or to the failed deployment in charge, and its
    /// group was not promoted. It is stopped, not replaced.
    pub(super) fn unneeded_canary(&self, alloc: &Allocation) -> bool {
        if alloc.server_terminal_status() || !alloc.is_canary() {
            return false;
        }
        let Some(own) = self.latest.filter(|l| l.id == alloc.deployment_id) else {
            // A canary of a deployment even older than the latest one.
            return true;
        };
        let promoted = own
            .task_groups
            .get(&alloc.task_group)
            .is_none_or(|g| g.promoted);
        let in_charge = self
            .current
            .is_some_and(|c| c.id == own.id && c.status != DeploymentStatus::Failed);
        !in_charge && !promoted
    }

    /// Adds `group`'s state to the deployment `plan` creates (creating it first).
    pub(super) fn attach(&self, plan: &mut Plan, job: &Job, group: &str, state: DeploymentState) {
        let deployment = plan.deployment.get_or_insert_with(|| Deployment {
            id: self.new_id.clone(),
            namespace: job.namespace.clone(),
            job_id: job.id.clone(),
            job_version: job.version,
            job_modify_index: job.modify_index,
            job_spec_modify_index: job.job_modify_index,
            job_create_index: job.create_index,
            is_multiregion: false,
            task_groups: Default::default(),
            status: DeploymentStatus::Running,
            status_description: descriptions::RUNNING.to_owned(),
            eval_priority: job.priority,
            create_index: 0,
            modify_index: 0,
            create_time: self.now,
            modify_time: self.now,
        });
        deployment.task_groups.insert(group.to_owned(), state);
    }

    /// Once every group ran: describes the created deployment ("requires manual promotion"
    /// when it has canaries that do not promote themselves) and names the deployment the
    /// plan's new allocations join.
    pub(super) fn finish(&self, plan: &mut Plan) {
        if let Some(created) = plan.deployment.as_mut() {
            created.status_description = running_description(created).to_owned();
            plan.deployment_id = Some(created.id.clone());
        } else {
            plan.deployment_id = self.current.filter(|d| d.active()).map(|d| d.id.clone());
        }
    }

    /// A new deployment's state for `tg`.
    pub(super) fn new_group_state(
        &self,
        strategy: &UpdateStrategy,
        desired_total: usize,
        desired_canaries: i32,
        anything_joins: bool,
    ) -> DeploymentState {
        let deadline = strategy.progress_deadline;
        DeploymentState {
            auto_revert: strategy.auto_revert,
            auto_promote: strategy.auto_promote,
            progress_deadline: deadline,
            // Nomad starts the clock when the first allocation is placed, which is now.
            require_progress_by: if deadline.nanos() > 0 && anything_joins {
                caravan_schemas::time::Timestamp::from_unix_nanos(self.now) + deadline
            } else {
                caravan_schemas::time::Timestamp::ZERO
            },
            promoted: false,
            placed_canaries: Vec::new(),
            desired_canaries,
            desired_total: i32::try_from(desired_total).unwrap_or(i32::MAX),
            placed_allocs: 0,
            healthy_allocs: 0,
            unhealthy_allocs: 0,
        }
    }
}

/// The group's update strategy when it rolls out through deployments: a service group whose
/// update block has `max_parallel > 0` (Nomad's `!UpdateStrategy.IsEmpty()`).
pub(super) fn strategy<'t>(job: &Job, tg: &'t TaskGroup) -> Option<&'t UpdateStrategy> {
    if job.r#type != caravan_schemas::job::JobType::Service {
        return None;
    }
    tg.update.as_ref().filter(|u| u.max_parallel > 0)
}
