//! System and sysbatch jobs: one allocation per group (per `count` index) on every eligible
//! node, as Nomad's `NodeReconciler` does.
//!
//! A node that newly qualifies gets a placement; an allocation on a node that no longer
//! qualifies is stopped (lost when the node is down); one on a node that is merely ineligible is
//! left alone unless the job changed. A sysbatch allocation that finished is not run again on
//! its node until the job changes. Allocations on draining nodes stay until the drain's deadline
//! (or until the drainer marks them), since Nomad drains system jobs last.

use super::{
    Ctx, DestructiveUpdate, Disconnect, Place, PlaceReason, Plan, descriptions, disconnect_expiry,
    disconnect_window, is_live, rollout, stop,
};
use caravan_schemas::alloc::{Allocation, ClientStatus};
use caravan_schemas::job::{JobType, TaskGroup};
use caravan_schemas::node::NodeStatus;
use caravan_schemas::{AllocId, NodeId};
use std::collections::{BTreeMap, BTreeSet};

/// What to do with one live allocation.
enum Action {
    Ignore,
    Stop,
    Lost,
    Migrate,
    Disconnect(i64),
    InPlace,
    Destructive,
}

pub(super) fn reconcile(
    ctx: &Ctx<'_>,
    by_group: &BTreeMap<&str, Vec<&Allocation>>,
    eligible: &[NodeId],
    plan: &mut Plan,
) {
    let job = ctx.job;
    let sysbatch = job.r#type == JobType::Sysbatch;
    let eligible: BTreeSet<&NodeId> = eligible.iter().collect();

    let mut required: BTreeMap<String, &TaskGroup> = BTreeMap::new();
    for tg in &job.task_groups {
        plan.group(&tg.name);
        for index in 0..u32::try_from(tg.count).unwrap_or(0) {
            required.insert(ctx.name(&tg.name, index), tg);
        }
    }

    // Live allocations by node and name; a terminal one per node and name.
    let mut live: BTreeMap<&NodeId, BTreeMap<&str, Vec<&Allocation>>> = BTreeMap::new();
    let mut terminal: BTreeMap<(&NodeId, &str), &Allocation> = BTreeMap::new();
    for (group, allocs) in by_group {
        plan.group(group);
        for &alloc in allocs {
            if is_live(alloc) {
                live.entry(&alloc.node_id)
                    .or_default()
                    .entry(alloc.name.as_str())
                    .or_default()
                    .push(alloc);
            } else {
                remember(ctx, &mut terminal, alloc);
            }
        }
    }

    let nodes: BTreeSet<&NodeId> = live
        .keys()
        .copied()
        .chain(eligible.iter().copied())
        .collect();
    let mut stopping: BTreeSet<&AllocId> = BTreeSet::new();
    let mut destructive: BTreeMap<&str, Vec<(&Allocation, &TaskGroup)>> = BTreeMap::new();
    for node_id in nodes {
        let on_node = live.get(node_id);
        let node_eligible = eligible.contains(node_id);
        // Names with an allocation that stays on this node.
        let mut occupied: BTreeSet<&str> = BTreeSet::new();
        for (name, allocs) in on_node.into_iter().flatten() {
            let mut allocs = allocs.clone();
            allocs.sort_by(|a, b| keep_key(ctx, a).cmp(&keep_key(ctx, b)));
            let Some((&alloc, duplicates)) = allocs.split_first() else {
                continue;
            };
            for &dup in duplicates {
                plan.stop.push(stop(dup, descriptions::NOT_NEEDED, None));
                plan.group(&dup.task_group).stop += 1;
                stopping.insert(&dup.id);
            }
            let tg = required
                .get(*name)
                .copied()
                .filter(|tg| tg.name == alloc.task_group);
            let action = match tg {
                Some(tg) => live_action(ctx, alloc, tg, node_eligible, sysbatch, plan),
                None => Action::Stop,
            };
            if matches!(action, Action::Stop | Action::Lost | Action::Migrate) {
                // Terminal once this plan applies: decide the name as the next run will.
                remember(ctx, &mut terminal, alloc);
            } else {
                occupied.insert(name);
            }
            let group = plan.group(&alloc.task_group);
            match action {
                Action::Ignore => group.ignore += 1,
                Action::Stop => {
                    group.stop += 1;
                    plan.stop.push(stop(alloc, descriptions::NOT_NEEDED, None));
                    stopping.insert(&alloc.id);
                }
                Action::Lost => {
                    group.stop += 1;
                    plan.stop
                        .push(stop(alloc, descriptions::LOST, Some(ClientStatus::Lost)));
                    stopping.insert(&alloc.id);
                }
                Action::Migrate => {
                    group.migrate += 1;
                    plan.stop
                        .push(stop(alloc, descriptions::NODE_TAINTED, None));
                    stopping.insert(&alloc.id);
                }
                Action::Disconnect(expires_at) => {
                    group.disconnect += 1;
                    group.ignore += 1;
                    plan.disconnect.push(Disconnect {
                        alloc_id: alloc.id.clone(),
                        group: alloc.task_group.clone(),
                        expires_at,
                    });
                    plan.wake(expires_at);
                }
                Action::InPlace => {
                    group.in_place_update += 1;
                    plan.inplace_update.push(alloc.id.clone());
                }
                Action::Destructive => {
                    if let Some(tg) = tg {
                        destructive
                            .entry(tg.name.as_str())
                            .or_default()
                            .push((alloc, tg));
                    }
                }
            }
        }

        // Required names with nothing live on this node.
        for (name, &tg) in &required {
            if occupied.contains(name.as_str()) {
                continue;
            }
            let prev = terminal.get(&(node_id, name.as_str())).copied();
            if sysbatch && let Some(prev) = prev {
                // It ran here; run it again only for a new version that changed its tasks.
                let rerun =
                    node_eligible && !ctx.is_current(prev) && ctx.needs_destructive(prev, tg);
                if rerun {
                    destructive
                        .entry(tg.name.as_str())
                        .or_default()
                        .push((prev, tg));
                } else {
                    plan.group(&tg.name).ignore += 1;
                }
                continue;
            }
            if !node_eligible {
                continue;
            }
            let index = prev
                .and_then(Allocation::index)
                .or_else(|| caravan_schemas::alloc::alloc_index_from_name(name))
                .unwrap_or(0);
            let mut place = match prev {
                Some(prev) => ctx.replacement(prev, tg, PlaceReason::New),
                None => Place::new(&tg.name, name.clone(), index, PlaceReason::New),
            };
            place.node = Some(node_id.clone());
            place.preferred_node = None;
            plan.place.push(place);
            plan.group(&tg.name).place += 1;
        }
    }

    // Destructive updates, at most max_parallel in flight per group.
    for (group, candidates) in destructive {
        let allocs = by_group.get(group).map_or(&[][..], Vec::as_slice);
        let Some(&(_, tg)) = candidates.first() else {
            continue;
        };
        let (budget, settles) = rollout::health_budget(ctx, tg, allocs, &stopping, 0);
        let budget = budget.unwrap_or(usize::MAX);
        if let Some(at) = settles {
            plan.wake(at);
        }
        for (i, (alloc, tg)) in candidates.into_iter().enumerate() {
            let counts = plan.group(group);
            if i < budget {
                let mut place = ctx.replacement(alloc, tg, PlaceReason::Update);
                place.node = Some(alloc.node_id.clone());
                place.preferred_node = None;
                if stopping.contains(&alloc.id) {
                    // Already stopped by this plan (a sysbatch allocation migrated away):
                    // only its new version is placed.
                    counts.place += 1;
                    plan.place.push(place);
                } else {
                    counts.destructive_update += 1;
                    plan.destructive_update.push(DestructiveUpdate {
                        alloc_id: alloc.id.clone(),
                        description: descriptions::UPDATING,
                        place,
                    });
                }
            } else {
                counts.ignore += 1;
            }
        }
    }
}

/// Records a terminal allocation for its node and name, keeping the latest, preferring one of
/// the current version: a sysbatch allocation that ran this version on a node is not run
/// there again.
fn remember<'a>(
    ctx: &Ctx<'_>,
    terminal: &mut BTreeMap<(&'a NodeId, &'a str), &'a Allocation>,
    alloc: &'a Allocation,
) {
    let key = (&alloc.node_id, alloc.name.as_str());
    let rank = |a: &'a Allocation| (ctx.is_current(a), a.create_index, &a.id);
    if terminal.get(&key).is_none_or(|t| rank(t) < rank(alloc)) {
        terminal.insert(key, alloc);
    }
}

/// Which of several live allocations with one name on one node to keep: current version,
/// healthy, running, oldest.
fn keep_key<'a>(ctx: &Ctx<'_>, alloc: &'a Allocation) -> (bool, bool, bool, i64, &'a AllocId) {
    (
        !ctx.is_current(alloc),
        !alloc.is_healthy(),
        alloc.client_status != ClientStatus::Running,
        alloc.create_index,
        &alloc.id,
    )
}

/// Nomad's `computeForNode` for one live, required allocation.
fn live_action(
    ctx: &Ctx<'_>,
    alloc: &Allocation,
    tg: &TaskGroup,
    node_eligible: bool,
    sysbatch: bool,
    plan: &mut Plan,
) -> Action {
    if alloc.desired_transition.migrate == Some(true) {
        return Action::Migrate;
    }
    let Some(node) = ctx.node(alloc) else {
        return Action::Lost;
    };
    match node.status {
        NodeStatus::Down => return Action::Lost,
        NodeStatus::Disconnected => {
            return match (alloc.client_status, disconnect_window(tg)) {
                (ClientStatus::Unknown, Some(window)) => {
                    let expires_at = disconnect_expiry(alloc, window);
                    if expires_at <= ctx.now {
                        Action::Lost
                    } else {
                        plan.wake(expires_at);
                        Action::Ignore
                    }
                }
                (ClientStatus::Running, Some(window)) => {
                    Action::Disconnect(ctx.now.saturating_add(window))
                }
                _ => Action::Lost,
            };
        }
        NodeStatus::Ready | NodeStatus::Initializing => {}
    }
    if let Some(drain) = node.drain {
        if sysbatch && alloc.ran_successfully() {
            return Action::Ignore;
        }
        if drain.ignore_system_jobs {
            return Action::Ignore;
        }
        if node.drain_deadline_passed(ctx.now) {
            return Action::Migrate;
        }
        if let Some(deadline) = drain.deadline {
            plan.wake(deadline);
        }
        return Action::Ignore;
    }
    let outdated = !ctx.is_current(alloc);
    if !node_eligible {
        // Ineligible (or not yet ready) but still in the job's datacenters and pool: keep
        // what runs unless the job changed; elsewhere the job no longer wants it.
        return if node.in_job(ctx.job) && !outdated {
            Action::Ignore
        } else {
            Action::Stop
        };
    }
    if !outdated {
        Action::Ignore
    } else if ctx.needs_destructive(alloc, tg) {
        Action::Destructive
    } else {
        Action::InPlace
    }
}
