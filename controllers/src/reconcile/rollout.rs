//! How fast a new job version rolls out: the number of destructive updates a group may start
//! now.
//!
//! Without deployments the rule is the update block's `max_parallel`: at most that many
//! allocations of the new version may be on their way to healthy at once. Deployments
//! (canaries, promotion, auto-revert, progress deadlines) will refine this step: a paused or
//! failed deployment allows nothing, unpromoted canaries hold the rollout, and so on.

use super::Ctx;
use caravan_schemas::AllocId;
use caravan_schemas::alloc::Allocation;
use caravan_schemas::job::TaskGroup;
use std::collections::BTreeSet;

/// How many destructive updates `tg` may start now; `None` when unlimited (no update block or
/// `max_parallel = 0`: everything is replaced at once).
///
/// In flight are the group's allocations of the current version that are live, not stopped by
/// this plan, and not yet healthy (`DeploymentStatus.Healthy != true`); `placing` more are
/// about to join them. An allocation of the new version found unhealthy halts the rollout (as
/// Nomad's does: nothing more is replaced until the failure is dealt with).
pub(super) fn destructive_budget(
    ctx: &Ctx<'_>,
    tg: &TaskGroup,
    allocs: &[&Allocation],
    stopping: &BTreeSet<&AllocId>,
    placing: usize,
) -> Option<usize> {
    let max_parallel = tg.update.as_ref().map_or(0, |u| u.max_parallel);
    let max_parallel = usize::try_from(max_parallel).ok().filter(|&n| n > 0)?;
    let new_version = allocs
        .iter()
        .filter(|a| super::is_live(a) && !stopping.contains(&a.id) && ctx.is_current(a));
    let mut in_flight = 0usize;
    for alloc in new_version {
        if alloc.is_unhealthy() {
            return Some(0);
        }
        if !alloc.is_healthy() {
            in_flight += 1;
        }
    }
    Some(max_parallel.saturating_sub(in_flight.saturating_add(placing)))
}
