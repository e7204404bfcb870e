//! What a user does to a deployment (`caravan deployment promote|fail|pause|resume` and the
//! allocation-health endpoint), as Nomad's deployment endpoint, watcher and state store decide
//! it. Each returns the deployment (and allocations) to write, or why it refused.

use super::watch::refresh;
use super::{
    Action, CanaryShortfall, DeploymentError, StatusUpdate, allocs_of, failure_description,
    running_description,
};
use caravan_schemas::AllocId;
use caravan_schemas::alloc::{AllocDeploymentStatus, Allocation};
use caravan_schemas::deployment::{Deployment, DeploymentStatus, descriptions};
use caravan_schemas::job::Job;
use caravan_schemas::time::Timestamp;
use std::collections::{BTreeMap, BTreeSet};

/// A promoted deployment.
#[derive(Clone, Debug, PartialEq)]
pub struct Promotion {
    pub deployment: Deployment,
    /// Clear `DeploymentStatus.Canary` on these allocations.
    pub promoted_canaries: Vec<AllocId>,
}

/// A deployment failed by the user.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub deployment: Deployment,
    /// Register this (stable) job version's spec again as a new version (`auto_revert`).
    pub revert_to: Option<u64>,
}

/// Health set by hand.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthUpdate {
    /// The allocations' new `DeploymentStatus`.
    pub allocs: Vec<(AllocId, AllocDeploymentStatus)>,
    /// The deployment with its counters updated; failed when an allocation was marked
    /// unhealthy.
    pub deployment: Deployment,
    /// Register this (stable) job version's spec again as a new version (`auto_revert`).
    pub revert_to: Option<u64>,
}

/// Promotes the canaries of `groups` (`None`: every group), as `deployment promote [-group]`.
///
/// Refused when the deployment ended, when a named group is not part of it, or when a group
/// with canaries has fewer healthy ones than it asked for (Nomad's text: `Task group "web" has
/// 0/1 healthy allocations`). The promoted groups get a new progress deadline; the
/// deployment's description drops "requires manual promotion" once no group waits.
pub fn promote(
    deployment: &Deployment,
    allocs: &[Allocation],
    groups: Option<&[String]>,
    now: i64,
) -> Result<Promotion, DeploymentError> {
    let mut next = deployment.clone();
    let promoted_canaries = promote_groups(&mut next, allocs, groups, now)?;
    Ok(Promotion {
        deployment: next,
        promoted_canaries,
    })
}

/// [`promote`] in place; returns the canaries to clear. The watcher's automatic promotion
/// uses it too.
pub fn promote_groups(
    deployment: &mut Deployment,
    allocs: &[Allocation],
    groups: Option<&[String]>,
    now: i64,
) -> Result<Vec<AllocId>, DeploymentError> {
    if !deployment.active() {
        return Err(DeploymentError::Terminal {
            action: Action::Promote,
        });
    }
    for group in groups.into_iter().flatten() {
        if !deployment.task_groups.contains_key(group) {
            return Err(DeploymentError::UnknownGroup {
                group: group.clone(),
                deployment: deployment.id.clone(),
            });
        }
    }
    let selected = |group: &str| groups.is_none_or(|gs| gs.iter().any(|g| g == group));

    // The healthy, running canaries of the groups promoted.
    let mut promotable: Vec<&Allocation> = allocs_of(deployment, allocs)
        .filter(|a| selected(&a.task_group))
        .filter(|a| {
            a.is_canary()
                || deployment
                    .task_groups
                    .get(&a.task_group)
                    .is_some_and(|s| s.placed_canaries.contains(&a.id))
        })
        .filter(|a| !a.is_terminal() && a.is_healthy())
        .collect();
    promotable.sort_by(|a, b| (a.create_index, &a.id).cmp(&(b.create_index, &b.id)));
    let mut healthy: BTreeMap<&str, usize> = BTreeMap::new();
    for alloc in &promotable {
        *healthy.entry(alloc.task_group.as_str()).or_default() += 1;
    }
    let shortfalls: Vec<CanaryShortfall> = deployment
        .task_groups
        .iter()
        .filter(|(g, s)| selected(g) && s.desired_canaries > 0)
        .filter_map(|(g, s)| {
            let have = healthy.get(g.as_str()).copied().unwrap_or(0);
            let desired = usize::try_from(s.desired_canaries).unwrap_or(0);
            (have < desired).then(|| CanaryShortfall {
                group: g.clone(),
                healthy: have,
                desired,
            })
        })
        .collect();
    if !shortfalls.is_empty() {
        return Err(DeploymentError::UnhealthyCanaries(shortfalls));
    }

    for (group, state) in &mut deployment.task_groups {
        if !selected(group) {
            continue;
        }
        if state.progress_deadline.nanos() > 0 && !state.require_progress_by.is_zero() {
            state.require_progress_by = Timestamp::from_unix_nanos(now) + state.progress_deadline;
        }
        state.promoted = true;
    }
    if deployment.status == DeploymentStatus::Running {
        deployment.status_description = running_description(deployment).to_owned();
    }
    deployment.modify_time = now;
    Ok(promotable.into_iter().map(|a| a.id.clone()).collect())
}

/// Fails the deployment, as `deployment fail`: "Deployment marked as failed", and when a group
/// has `auto_revert`, the latest stable version older than the deployment's to revert to.
pub fn fail(
    deployment: &Deployment,
    job: &Job,
    versions: &[Job],
    now: i64,
) -> Result<Failure, DeploymentError> {
    if !deployment.active() {
        return Err(DeploymentError::Terminal {
            action: Action::Fail,
        });
    }
    let rollback = deployment.task_groups.values().any(|s| s.auto_revert);
    let (description, revert_to) = failure_description(
        deployment,
        job,
        versions,
        descriptions::FAILED_BY_USER,
        rollback,
    );
    let mut next = deployment.clone();
    next.status = DeploymentStatus::Failed;
    next.status_description = description;
    next.modify_time = now;
    Ok(Failure {
        deployment: next,
        revert_to,
    })
}

/// Pauses (`pause = true`) or resumes the deployment, as `deployment pause|resume`. Either way
/// its progress deadlines start again from `now`. A resumed deployment is described as it was
/// before the pause (still "requires manual promotion" when it does).
pub fn pause(
    deployment: &Deployment,
    pause: bool,
    now: i64,
) -> Result<Deployment, DeploymentError> {
    if !deployment.active() {
        return Err(DeploymentError::Terminal {
            action: if pause { Action::Pause } else { Action::Resume },
        });
    }
    let (status, description) = if pause {
        (DeploymentStatus::Paused, descriptions::PAUSED)
    } else {
        (DeploymentStatus::Running, running_description(deployment))
    };
    let mut next = deployment.clone();
    StatusUpdate {
        deployment_id: deployment.id.clone(),
        status,
        description: description.to_owned(),
    }
    .apply(&mut next, now)?;
    Ok(next)
}

/// Sets allocations' health by hand (the allocation-health endpoint; what a group with
/// `health_check = "manual"` relies on). Any unhealthy one fails the deployment ("Failed due to
/// unhealthy allocations"), reverting when its group has `auto_revert`.
pub fn set_alloc_health(
    deployment: &Deployment,
    job: &Job,
    versions: &[Job],
    allocs: &[Allocation],
    healthy: &[AllocId],
    unhealthy: &[AllocId],
    now: i64,
) -> Result<HealthUpdate, DeploymentError> {
    if !deployment.active() {
        return Err(DeploymentError::Terminal {
            action: Action::SetHealth,
        });
    }
    if healthy.is_empty() && unhealthy.is_empty() {
        return Err(DeploymentError::NoAllocations);
    }
    let healthy_set: BTreeSet<&AllocId> = healthy.iter().collect();
    if let Some(both) = unhealthy.iter().find(|id| healthy_set.contains(id)) {
        return Err(DeploymentError::HealthConflict(both.clone()));
    }
    let by_id: BTreeMap<&AllocId, &Allocation> = allocs.iter().map(|a| (&a.id, a)).collect();
    let mut changes: Vec<(AllocId, AllocDeploymentStatus)> = Vec::new();
    let mut rollback = false;
    let marks = healthy
        .iter()
        .map(|id| (id, true))
        .chain(unhealthy.iter().map(|id| (id, false)));
    for (id, is_healthy) in marks {
        let alloc = by_id
            .get(id)
            .ok_or_else(|| DeploymentError::UnknownAlloc(id.clone()))?;
        if alloc.deployment_id != deployment.id {
            return Err(DeploymentError::NotInDeployment {
                alloc: id.clone(),
                deployment: deployment.id.clone(),
            });
        }
        if !is_healthy {
            rollback |= deployment
                .task_groups
                .get(&alloc.task_group)
                .is_some_and(|s| s.auto_revert);
        }
        let old = alloc.deployment_status.clone().unwrap_or_default();
        changes.push((
            id.clone(),
            AllocDeploymentStatus {
                healthy: Some(is_healthy),
                timestamp: Timestamp::from_unix_nanos(now),
                ..old
            },
        ));
    }

    let updated: Vec<Allocation> = allocs
        .iter()
        .map(|a| {
            let mut a = a.clone();
            if let Some((_, status)) = changes.iter().find(|(id, _)| *id == a.id) {
                a.deployment_status = Some(status.clone());
            }
            a
        })
        .collect();
    let mut next = deployment.clone();
    refresh(&mut next, &updated, now);
    next.modify_time = now;
    let mut revert_to = None;
    if !unhealthy.is_empty() {
        let (description, revert) = failure_description(
            deployment,
            job,
            versions,
            descriptions::FAILED_ALLOCATIONS,
            rollback,
        );
        next.status = DeploymentStatus::Failed;
        next.status_description = description;
        revert_to = revert;
    }
    Ok(HealthUpdate {
        allocs: changes,
        deployment: next,
        revert_to,
    })
}
