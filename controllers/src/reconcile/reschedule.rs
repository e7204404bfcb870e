//! Server-side rescheduling of failed allocations, as Nomad's `ReschedulePolicy` defines it:
//! when a failed allocation may be replaced, after what delay, and the `RescheduleTracker` the
//! replacement carries.
//!
//! The client has already applied the restart policy by the time an allocation is failed; this
//! is the next step: a new allocation, possibly on another node.

use caravan_schemas::Duration;
use caravan_schemas::alloc::{
    Allocation, ClientStatus, DesiredStatus, RescheduleEvent, RescheduleTracker,
};
use caravan_schemas::job::{ReschedulePolicy, TaskGroup};

/// A reschedule due within this much of `now` happens now (Nomad's `rescheduleWindowSize`,
/// which absorbs clock drift between servers and follow-up evaluations firing early).
pub const RESCHEDULE_WINDOW: i64 = 1_000_000_000;

/// With unlimited rescheduling, a tracker keeps this many past events (Nomad's
/// `maxPastRescheduleEvents`).
pub const MAX_PAST_RESCHEDULE_EVENTS: usize = 5;

/// `RescheduleTracker.LastReschedule` after a successful replacement.
pub const LAST_RESCHEDULE_OK: &str = "ok";
/// `RescheduleTracker.LastReschedule` when no node could take the replacement.
pub const LAST_RESCHEDULE_NO_PLACEMENT: &str = "no placement";

/// The reschedule policy that applies to an allocation: its own job version's group policy
/// (as Nomad reads it), or the current group's when the allocation carries no job.
pub fn reschedule_policy<'a>(
    alloc: &'a Allocation,
    current: &'a TaskGroup,
) -> Option<&'a ReschedulePolicy> {
    match alloc
        .job
        .as_deref()
        .and_then(|j| j.group(&alloc.task_group))
    {
        Some(tg) => tg.reschedule_policy.as_ref(),
        None => current.reschedule_policy.as_ref(),
    }
}

/// When the allocation failed: the latest `FinishedAt` of its tasks, else its `ModifyTime`
/// (Nomad's `LastEventTime`).
pub fn fail_time(alloc: &Allocation) -> i64 {
    alloc
        .task_states
        .values()
        .filter_map(|s| s.finished_at.unix_nanos())
        .max()
        .unwrap_or(alloc.modify_time)
}

/// The last attempt to place a replacement found no node.
pub(crate) fn last_reschedule_failed(alloc: &Allocation) -> bool {
    alloc
        .reschedule_tracker
        .as_ref()
        .is_some_and(|t| t.last_reschedule == LAST_RESCHEDULE_NO_PLACEMENT)
}

fn events(alloc: &Allocation) -> &[RescheduleEvent] {
    alloc
        .reschedule_tracker
        .as_ref()
        .map_or(&[], |t| t.events.as_slice())
}

/// The delay before the next reschedule of `alloc` (Nomad's `NextDelay`): the policy's delay
/// for the first one; then constant, doubled (exponential) or the sum of the previous two
/// (fibonacci), capped at `max_delay`. Once capped, an allocation that ran longer than
/// `max_delay` since its last reschedule starts over from `delay`.
pub fn next_delay(alloc: &Allocation, policy: &ReschedulePolicy) -> Duration {
    let base = policy.delay;
    let events = events(alloc);
    let Some(last) = events.last() else {
        return base;
    };
    let delay = match policy.delay_function.as_str() {
        "exponential" => Duration(last.delay.nanos().saturating_mul(2)),
        "fibonacci" => match events.len().checked_sub(2).and_then(|i| events.get(i)) {
            // After a reset (the previous two are max_delay, then delay) a new series starts.
            Some(before) if before.delay == policy.max_delay && last.delay == base => last.delay,
            Some(before) => Duration(last.delay.nanos().saturating_add(before.delay.nanos())),
            None => base,
        },
        _ => return base,
    };
    if policy.max_delay.nanos() > 0 && delay > policy.max_delay {
        let since_last = fail_time(alloc).saturating_sub(last.reschedule_time);
        if since_last > policy.max_delay.nanos() {
            return base;
        }
        return policy.max_delay;
    }
    delay
}

/// How many reschedules happened within the policy's interval before `fail_time`.
fn attempted_within_interval(alloc: &Allocation, policy: &ReschedulePolicy, fail: i64) -> usize {
    events(alloc)
        .iter()
        .filter(|e| fail.saturating_sub(e.reschedule_time) < policy.interval.nanos())
        .count()
}

/// Whether the policy still allows rescheduling `alloc` at `at` (Nomad's
/// `RescheduleTracker.RescheduleEligible`): unlimited, or fewer than `attempts` reschedules
/// within `interval` before `at`. Unlike [`next_reschedule_time`] it does not look at the
/// allocation's status: the deployment watcher asks it of unhealthy allocations.
pub fn reschedule_eligible(alloc: &Allocation, policy: Option<&ReschedulePolicy>, at: i64) -> bool {
    let Some(policy) = policy else {
        return false;
    };
    if policy.unlimited {
        return true;
    }
    if policy.attempts <= 0 {
        return false;
    }
    let attempts = usize::try_from(policy.attempts).unwrap_or(0);
    attempted_within_interval(alloc, policy, at) < attempts
}

/// When `alloc` may be rescheduled and whether it may be at all (Nomad's
/// `NextRescheduleTime`): the failure time plus [`next_delay`]; eligible with an unlimited
/// policy, or while fewer than `attempts` reschedules happened within `interval` (and the
/// delay fits in it). Only failed allocations still desired to run (or stopped after a failed
/// replacement attempt) qualify; `None` when the allocation is not a candidate at all.
pub fn next_reschedule_time(
    alloc: &Allocation,
    policy: Option<&ReschedulePolicy>,
    is_batch: bool,
) -> Option<(i64, bool)> {
    let policy = policy?;
    if policy.attempts <= 0 && !policy.unlimited {
        return None;
    }
    let rescheduled_batch = is_batch && alloc.desired_transition.reschedule == Some(true);
    if alloc.desired_status == DesiredStatus::Stop && !last_reschedule_failed(alloc) {
        return None;
    }
    if !rescheduled_batch
        && !matches!(
            alloc.client_status,
            ClientStatus::Failed | ClientStatus::Lost
        )
    {
        return None;
    }
    let fail = fail_time(alloc);
    if fail == 0 {
        return None;
    }
    let delay = next_delay(alloc, policy);
    let at = fail.saturating_add(delay.nanos());
    let eligible = if policy.unlimited || events(alloc).is_empty() {
        true
    } else {
        let attempts = usize::try_from(policy.attempts).unwrap_or(0);
        attempted_within_interval(alloc, policy, fail) < attempts && delay < policy.interval
    };
    Some((at, eligible))
}

/// The tracker for the allocation that replaces `prev` at `now` (Nomad's
/// `UpdateRescheduleTracker`): the earlier events still inside the policy's interval (the last
/// [`MAX_PAST_RESCHEDULE_EVENTS`] when unlimited), then this reschedule with its delay.
pub fn next_reschedule_tracker(
    prev: &Allocation,
    policy: Option<&ReschedulePolicy>,
    now: i64,
) -> RescheduleTracker {
    let past = events(prev);
    let mut events: Vec<RescheduleEvent> = match policy {
        Some(p) if !p.unlimited && p.attempts > 0 => {
            let interval = p.interval.nanos();
            past.iter()
                .filter(|e| interval > 0 && now.saturating_sub(e.reschedule_time) <= interval)
                .cloned()
                .collect()
        }
        _ => {
            let skip = past.len().saturating_sub(MAX_PAST_RESCHEDULE_EVENTS);
            past.iter().skip(skip).cloned().collect()
        }
    };
    events.push(RescheduleEvent {
        reschedule_time: now,
        prev_alloc_id: prev.id.clone(),
        prev_node_id: prev.node_id.clone(),
        delay: policy.map_or(Duration::ZERO, |p| next_delay(prev, p)),
    });
    RescheduleTracker {
        events,
        last_reschedule: LAST_RESCHEDULE_OK.to_owned(),
    }
}

/// What to do with a failed allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Replace it now.
    Now,
    /// Replace it at this time.
    Later(i64),
    /// Leave it failed: not eligible (attempts exhausted, no policy).
    Never,
}

/// Nomad's `updateByReschedulable`, without deployments.
pub(crate) fn decide(
    alloc: &Allocation,
    policy: Option<&ReschedulePolicy>,
    is_batch: bool,
    now: i64,
) -> Decision {
    if alloc.desired_transition.force_reschedule == Some(true) && alloc.client_terminal_status() {
        return Decision::Now;
    }
    match next_reschedule_time(alloc, policy, is_batch) {
        Some((at, true)) if at.saturating_sub(now) <= RESCHEDULE_WINDOW => Decision::Now,
        Some((at, true)) => Decision::Later(at),
        _ => Decision::Never,
    }
}
