//! How fast a new job version rolls out: the number of destructive updates a group may start
//! now (Nomad's `computeUnderProvisionedBy`).
//!
//! Service jobs read their deployment: nothing moves while it is paused or failed or while
//! canaries await promotion; otherwise at most `max_parallel` allocations of the deployment may
//! be on their way to healthy at once, and one found unhealthy holds everything (the watcher
//! then fails the deployment, or lets the allocation be rescheduled). System jobs have no
//! deployments: the allocations of the current version stand in for the deployment's.

use super::Ctx;
use caravan_schemas::AllocId;
use caravan_schemas::alloc::Allocation;
use caravan_schemas::job::TaskGroup;
use std::collections::BTreeSet;

/// The update block's `max_parallel`; `None` when there is none or it is 0 (everything is
/// replaced at once).
fn max_parallel(tg: &TaskGroup) -> Option<usize> {
    let max_parallel = tg.update.as_ref().map_or(0, |u| u.max_parallel);
    usize::try_from(max_parallel).ok().filter(|&n| n > 0)
}

/// How many destructive updates a service or batch group may start now; `None` when
/// unlimited. `placing` allocations are about to be placed and use the parallelism first.
///
/// Without a deployment in charge (one is being created by this plan) the whole `max_parallel`
/// is available. With one, its paused or failed state allows nothing, and so do canaries
/// awaiting promotion (`canarying`); otherwise in flight are the deployment's allocations that
/// are neither stopped (by the servers or by this plan) nor healthy yet.
pub(super) fn deployment_budget(
    ctx: &Ctx<'_>,
    tg: &TaskGroup,
    allocs: &[&Allocation],
    stopping: &BTreeSet<&AllocId>,
    placing: usize,
    canarying: bool,
) -> Option<usize> {
    let max_parallel = max_parallel(tg)?;
    if ctx.deploy.current().is_none() {
        return Some(max_parallel.saturating_sub(placing));
    }
    if ctx.deploy.paused() || ctx.deploy.failed() || canarying {
        return Some(0);
    }
    let mut in_flight = 0usize;
    let part_of = allocs.iter().filter(|a| {
        ctx.deploy.in_current(a) && !a.server_terminal_status() && !stopping.contains(&a.id)
    });
    for alloc in part_of {
        if alloc.is_unhealthy() {
            return Some(0);
        }
        if !alloc.is_healthy() {
            in_flight += 1;
        }
    }
    Some(max_parallel.saturating_sub(in_flight.saturating_add(placing)))
}

/// How many destructive updates a system group may start now; `None` when unlimited.
///
/// In flight are the group's allocations of the current version that are live, not stopped by
/// this plan, and not yet healthy (`DeploymentStatus.Healthy != true`) or healthy for less
/// than the update block's `stagger`; `placing` more are about to join them. An allocation of
/// the new version found unhealthy halts the rollout. The second value is when the next one
/// leaves the stagger (reconcile again then).
pub(super) fn health_budget(
    ctx: &Ctx<'_>,
    tg: &TaskGroup,
    allocs: &[&Allocation],
    stopping: &BTreeSet<&AllocId>,
    placing: usize,
) -> (Option<usize>, Option<i64>) {
    let Some(max_parallel) = max_parallel(tg) else {
        return (None, None);
    };
    let stagger = tg.update.as_ref().map_or(0, |u| u.stagger.nanos());
    let new_version = allocs
        .iter()
        .filter(|a| super::is_live(a) && !stopping.contains(&a.id) && ctx.is_current(a));
    let mut in_flight = 0usize;
    let mut wake: Option<i64> = None;
    for alloc in new_version {
        if alloc.is_unhealthy() {
            return (Some(0), None);
        }
        if !alloc.is_healthy() {
            in_flight += 1;
            continue;
        }
        let healthy_at = alloc
            .deployment_status
            .as_ref()
            .and_then(|d| d.timestamp.unix_nanos())
            .unwrap_or(0);
        let settled = healthy_at.saturating_add(stagger);
        if stagger > 0 && settled > ctx.now {
            in_flight += 1;
            wake = Some(wake.map_or(settled, |w| w.min(settled)));
        }
    }
    (
        Some(max_parallel.saturating_sub(in_flight.saturating_add(placing))),
        wake,
    )
}
