//! Service and batch jobs: per group, keep `count` allocations named `job.group[i]`.
//!
//! Every allocation of a group is first classified — counted (it holds a name), to replace
//! (lost, failed and due, migrating), or history (stopped, replaced, finished services). Then,
//! as Nomad's `computeGroup` does: duplicate names are resolved, a group over its count sheds
//! the least useful allocations (lost, failed, migrating, then the highest indexes), the rest are
//! replaced or kept, missing names are placed at the lowest free indexes, and allocations of an
//! older job version are updated in place or, rate-limited, replaced.

use super::reschedule::{self, Decision, last_reschedule_failed};
use super::{
    Ctx, DesiredUpdates, DestructiveUpdate, Disconnect, Place, PlaceReason, Plan, RescheduleLater,
    deploy, descriptions, disconnect_expiry, disconnect_window, is_live, rollout, stop, stop_live,
};
use caravan_schemas::alloc::{Allocation, ClientStatus, DesiredStatus};
use caravan_schemas::job::{JobType, TaskGroup};
use caravan_schemas::node::NodeStatus;
use caravan_schemas::{AllocId, NodeId};
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet};

pub(super) fn reconcile(
    ctx: &Ctx<'_>,
    by_group: &BTreeMap<&str, Vec<&Allocation>>,
    plan: &mut Plan,
) {
    for tg in &ctx.job.task_groups {
        let allocs = by_group
            .get(tg.name.as_str())
            .map_or(&[][..], Vec::as_slice);
        if tg.count <= 0 {
            stop_group(ctx, &tg.name, allocs, plan);
        } else {
            let group = Group {
                ctx,
                tg,
                allocs,
                batch: ctx.job.r#type == JobType::Batch,
            };
            group.run(plan);
        }
    }
    for (name, allocs) in by_group {
        if ctx.job.group(name).is_none() {
            stop_group(ctx, name, allocs, plan);
        }
    }
}

/// The group is gone or scaled to zero: stop what still runs.
fn stop_group(ctx: &Ctx<'_>, group: &str, allocs: &[&Allocation], plan: &mut Plan) {
    let mut stops = 0;
    for alloc in allocs.iter().filter(|a| is_live(a)) {
        plan.stop.push(stop_live(alloc, ctx.nodes));
        stops += 1;
    }
    plan.group(group).stop += stops;
}

/// What an allocation is to its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Live on a usable node.
    Live,
    /// Marked `unknown` on a disconnected node, within its disconnect window: left alone
    /// (not even updated) until its node returns or the window ends.
    Unknown,
    /// Live on a draining node: to migrate, within the group's `migrate.max_parallel`.
    Draining,
    /// Marked for migration (`DesiredTransition.Migrate`): migrates now.
    ForcedMigrate,
    /// Live on a disconnected node, tolerated: to mark `unknown`.
    Disconnecting { expires_at: i64 },
    /// A batch allocation that completed: its work is done, it is never replaced.
    Done,
    /// Failed: rescheduled now, later, or never.
    Failed(Decision),
    /// Its node is down or gone (or its disconnect window ended): stop as lost and replace.
    Lost,
}

/// What a new job version does to an allocation that keeps its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Update {
    /// Already current, or finished: left alone.
    Keep,
    /// Moved to the new version where it runs.
    InPlace,
    /// Replaced by an allocation of the new version.
    Destructive,
}

enum Class {
    /// Stopped, replaced, or a finished service allocation: not counted, left alone.
    History,
    /// A terminal batch allocation of an older job version: ignored (not counted).
    OldTerminal,
    /// Holds (or must regain) its name.
    Claim(Kind),
}

#[derive(Clone, Copy, Debug)]
struct Claim<'a> {
    alloc: &'a Allocation,
    index: u32,
    kind: Kind,
}

struct Group<'a, 'c> {
    ctx: &'c Ctx<'a>,
    tg: &'a TaskGroup,
    allocs: &'c [&'a Allocation],
    batch: bool,
}

impl<'a> Group<'a, '_> {
    fn count(&self) -> usize {
        usize::try_from(self.tg.count).unwrap_or(0)
    }

    fn run(&self, plan: &mut Plan) {
        let tg = self.tg;
        let ctx = self.ctx;
        let deploy = &ctx.deploy;
        let existing = deploy.group(&tg.name);
        let canarying_before = existing.is_some_and(|s| s.desired_canaries > 0 && !s.promoted);
        let mut ann = DesiredUpdates::default();
        let mut stopping: BTreeSet<&AllocId> = BTreeSet::new();
        let mut claims = Vec::new();
        let mut canaries = Vec::new();
        for &alloc in self.allocs {
            if deploy.unneeded_canary(alloc) {
                plan.stop.push(stop(alloc, descriptions::NOT_NEEDED, None));
                ann.stop += 1;
                stopping.insert(&alloc.id);
                continue;
            }
            // Canaries awaiting promotion stand beside the allocations they may replace: they
            // hold no name until promoted.
            if canarying_before
                && !alloc.server_terminal_status()
                && deploy.is_current_canary(alloc)
            {
                canaries.push(alloc);
                continue;
            }
            match self.classify(alloc, plan) {
                Class::History => {}
                Class::OldTerminal => ann.ignore += 1,
                Class::Claim(kind) => claims.push(Claim {
                    alloc,
                    index: alloc.index().unwrap_or(u32::MAX),
                    kind,
                }),
            }
        }
        let canary_indexes = self.keep_canaries(&canaries, &mut ann, &mut stopping, plan);
        let (kept, dropped) = self.choose(claims);

        // Duplicates and the excess over count (after promotion, the old allocations that
        // share a name with a canary).
        for claim in &dropped {
            let alloc = claim.alloc;
            match claim.kind {
                Kind::Lost => {
                    plan.stop
                        .push(stop(alloc, descriptions::LOST, Some(ClientStatus::Lost)));
                    ann.stop += 1;
                    stopping.insert(&alloc.id);
                }
                Kind::Done => ann.ignore += 1,
                _ if !alloc.server_terminal_status() => {
                    plan.stop.push(stop(alloc, descriptions::NOT_NEEDED, None));
                    ann.stop += 1;
                    stopping.insert(&alloc.id);
                }
                _ => {}
            }
        }

        let migrating = self.choose_migrations(&kept, &stopping, plan);

        // What a new job version does to the allocations that stay: decided first, since
        // destructive updates are what calls for canaries.
        let updates: Vec<(Claim<'a>, Update)> = kept
            .iter()
            .filter(|c| match c.kind {
                Kind::Failed(Decision::Later(_) | Decision::Never) | Kind::Live => true,
                Kind::Draining | Kind::ForcedMigrate => !migrating.contains(&c.alloc.id),
                _ => false,
            })
            .map(|c| (*c, self.update_kind(c.alloc)))
            .collect();
        let destructive_total = updates
            .iter()
            .filter(|(_, u)| *u == Update::Destructive)
            .count();
        let inplace_total = updates
            .iter()
            .filter(|(_, u)| *u == Update::InPlace)
            .count();

        let strategy = deploy::strategy(ctx.job, tg);
        let promoted = existing.is_some_and(|s| s.promoted);
        let wanted_canaries = strategy.map_or(0, |s| usize::try_from(s.canary).unwrap_or(0));
        // Canaries belong to a new deployment, or to the one in charge that asked for them.
        let may_canary = match existing {
            Some(state) => state.desired_canaries > 0,
            None => deploy.current().is_none(),
        };
        let requires_canaries = strategy.is_some()
            && may_canary
            && !promoted
            && destructive_total > 0
            && canary_indexes.len() < wanted_canaries;
        let desired_canaries = match existing {
            Some(state) => state.desired_canaries,
            None if requires_canaries => strategy.map_or(0, |s| s.canary),
            None => 0,
        };
        let canarying = desired_canaries > 0 && !promoted;
        let halted = deploy.paused() || deploy.failed();
        let place_ready = !halted && !canarying;
        // While canaries await promotion, a replacement of an older version keeps its version
        // (unless that differs only in what an in-place update changes).
        let downgrade = |prev: &Allocation| {
            if canarying && !ctx.is_current(prev) && ctx.tasks_changed(prev, tg) {
                prev.job.as_deref().map(|j| j.version)
            } else {
                None
            }
        };

        let mut placing = 0usize;
        let mut to_place = 0usize;
        for claim in &kept {
            let alloc = claim.alloc;
            match claim.kind {
                Kind::Lost => {
                    plan.stop
                        .push(stop(alloc, descriptions::LOST, Some(ClientStatus::Lost)));
                    stopping.insert(&alloc.id);
                    ann.stop += 1;
                    let mut place = ctx.replacement(alloc, tg, PlaceReason::Lost);
                    place.job_version = downgrade(alloc);
                    plan.place.push(place);
                    ann.place += 1;
                    placing += 1;
                    to_place += 1;
                }
                Kind::Failed(Decision::Now) => {
                    if !alloc.server_terminal_status() {
                        plan.stop.push(stop(alloc, descriptions::RESCHEDULED, None));
                        stopping.insert(&alloc.id);
                        ann.stop += 1;
                    }
                    let mut place = self.rescheduled(alloc);
                    place.job_version = downgrade(alloc);
                    plan.place.push(place);
                    ann.place += 1;
                    ann.reschedule_now += 1;
                    placing += 1;
                    to_place += 1;
                }
                Kind::Failed(Decision::Later(at)) => plan.wake(at),
                Kind::Done | Kind::Unknown => ann.ignore += 1,
                Kind::Disconnecting { expires_at } => {
                    plan.disconnect.push(Disconnect {
                        alloc_id: alloc.id.clone(),
                        group: tg.name.clone(),
                        expires_at,
                    });
                    plan.wake(expires_at);
                    ann.disconnect += 1;
                    ann.ignore += 1;
                }
                Kind::Draining | Kind::ForcedMigrate if migrating.contains(&alloc.id) => {
                    plan.stop.push(stop(alloc, descriptions::MIGRATING, None));
                    stopping.insert(&alloc.id);
                    let mut place = ctx.replacement(alloc, tg, PlaceReason::Migrate);
                    place.job_version = downgrade(alloc);
                    plan.place.push(place);
                    ann.migrate += 1;
                }
                Kind::Failed(Decision::Never)
                | Kind::Live
                | Kind::Draining
                | Kind::ForcedMigrate => {}
            }
        }

        // Missing names, lowest free indexes first; not while the deployment is paused,
        // failed, or waiting on canaries.
        let used: BTreeSet<u32> = kept.iter().map(|c| c.index).collect();
        let missing = self.count().saturating_sub(kept.len());
        to_place += missing;
        if place_ready {
            let count = u32::try_from(self.count()).unwrap_or(u32::MAX);
            for index in (0..count).filter(|i| !used.contains(i)).take(missing) {
                let name = ctx.name(&tg.name, index);
                plan.place
                    .push(Place::new(&tg.name, name, index, PlaceReason::New));
                ann.place += 1;
                placing += 1;
            }
        }

        // New job version: in place where possible, else replace at the rollout's pace.
        let mut destructive = Vec::new();
        for (claim, update) in updates {
            match update {
                Update::Keep => self.keep(claim, &mut ann, plan),
                Update::InPlace => {
                    plan.inplace_update.push(claim.alloc.id.clone());
                    ann.in_place_update += 1;
                }
                Update::Destructive => destructive.push(claim),
            }
        }
        let budget = if place_ready {
            rollout::deployment_budget(ctx, tg, self.allocs, &stopping, placing, canarying)
                .unwrap_or(usize::MAX)
        } else {
            0
        };
        // What does not serve goes first: unhealthy, then unproven, then healthy allocations,
        // each by index. (Nomad goes by index alone; after a failed or cancelled rollout that
        // would replace healthy allocations while broken ones stay.)
        if !self.batch {
            destructive.sort_by_key(|c| (health_rank(c.alloc), c.index));
        }
        let destructive_indexes: Vec<u32> = destructive.iter().map(|c| c.index).collect();
        for (i, claim) in destructive.into_iter().enumerate() {
            if i < budget {
                let alloc = claim.alloc;
                plan.destructive_update.push(DestructiveUpdate {
                    alloc_id: alloc.id.clone(),
                    description: descriptions::UPDATING,
                    place: ctx.replacement(alloc, tg, PlaceReason::Update),
                });
                ann.destructive_update += 1;
            } else {
                self.keep(claim, &mut ann, plan);
            }
        }

        // Canaries beside the old allocations, named after those they may replace.
        if requires_canaries && !halted {
            let needed = wanted_canaries - canary_indexes.len();
            let names = next_canaries(
                needed,
                &canary_indexes,
                &destructive_indexes,
                &used,
                self.count(),
            );
            for index in names {
                let mut place = Place::new(
                    &tg.name,
                    ctx.name(&tg.name, index),
                    index,
                    PlaceReason::Canary,
                );
                place.canary = true;
                plan.place.push(place);
                ann.canary += 1;
            }
        }

        // A new version (or the first) of a group with an update block starts a deployment.
        if let Some(strategy) = strategy
            && existing.is_none()
            && deploy.current().is_none()
        {
            let desired_total = destructive_total + inplace_total + to_place;
            let had_running = self
                .allocs
                .iter()
                .any(|a| !a.server_terminal_status() && ctx.is_current(a));
            let updating_spec = destructive_total + inplace_total > 0;
            // Nothing new to roll out when this version already ran and only replacements are due.
            if desired_total > 0 && (updating_spec || !had_running) {
                let joins = ann.place
                    + ann.migrate
                    + ann.canary
                    + ann.destructive_update
                    + ann.in_place_update
                    > 0;
                let state =
                    deploy.new_group_state(strategy, desired_total, desired_canaries, joins);
                deploy.attach(plan, ctx.job, &tg.name, state);
            }
        }

        let entry = plan.group(&tg.name);
        add(entry, &ann);
    }

    /// What a new job version does to an allocation that stays.
    fn update_kind(&self, alloc: &Allocation) -> Update {
        if self.ctx.is_current(alloc) {
            Update::Keep
        } else if self.ctx.needs_destructive(alloc, self.tg) {
            Update::Destructive
        } else if alloc.client_terminal_status() {
            // Nothing runs that could be updated.
            Update::Keep
        } else {
            Update::InPlace
        }
    }

    /// The canaries of the deployment in charge while they await promotion: kept where they
    /// are; stopped when their node is lost or draining (new canaries take their place);
    /// rescheduled, as canaries, when they failed and may be. Returns the indexes of those that
    /// still count as placed.
    fn keep_canaries(
        &self,
        canaries: &[&'a Allocation],
        ann: &mut DesiredUpdates,
        stopping: &mut BTreeSet<&'a AllocId>,
        plan: &mut Plan,
    ) -> Vec<u32> {
        let mut counted = Vec::new();
        for &alloc in canaries {
            let index = alloc.index().unwrap_or(u32::MAX);
            let kind = match self.classify(alloc, plan) {
                // Finished on the client but still desired to run: it keeps its slot.
                Class::History | Class::OldTerminal => Kind::Live,
                Class::Claim(kind) => kind,
            };
            match kind {
                Kind::Live | Kind::Unknown | Kind::Done | Kind::Failed(Decision::Never) => {
                    ann.ignore += 1;
                    counted.push(index);
                }
                Kind::Disconnecting { expires_at } => {
                    plan.disconnect.push(Disconnect {
                        alloc_id: alloc.id.clone(),
                        group: self.tg.name.clone(),
                        expires_at,
                    });
                    plan.wake(expires_at);
                    ann.disconnect += 1;
                    ann.ignore += 1;
                    counted.push(index);
                }
                Kind::Lost => {
                    plan.stop
                        .push(stop(alloc, descriptions::LOST, Some(ClientStatus::Lost)));
                    stopping.insert(&alloc.id);
                }
                Kind::Draining | Kind::ForcedMigrate => {
                    plan.stop.push(stop(alloc, descriptions::MIGRATING, None));
                    stopping.insert(&alloc.id);
                }
                Kind::Failed(Decision::Now) => {
                    plan.stop.push(stop(alloc, descriptions::RESCHEDULED, None));
                    stopping.insert(&alloc.id);
                    ann.stop += 1;
                    let mut place = self.rescheduled(alloc);
                    place.canary = true;
                    plan.place.push(place);
                    ann.place += 1;
                    ann.reschedule_now += 1;
                    counted.push(index);
                }
                Kind::Failed(Decision::Later(at)) => {
                    plan.wake(at);
                    let claim = Claim { alloc, index, kind };
                    self.keep(claim, ann, plan);
                    counted.push(index);
                }
            }
        }
        counted
    }

    /// Left as it is; a failed allocation due later gets its follow-up.
    fn keep(&self, claim: Claim<'_>, ann: &mut DesiredUpdates, plan: &mut Plan) {
        ann.ignore += 1;
        if let Kind::Failed(Decision::Later(at)) = claim.kind
            && claim.alloc.followup_eval_id.is_empty()
        {
            plan.reschedule_later.push(RescheduleLater {
                alloc_id: claim.alloc.id.clone(),
                group: self.tg.name.clone(),
                at,
            });
            ann.reschedule_later += 1;
        }
    }

    fn classify(&self, alloc: &Allocation, plan: &mut Plan) -> Class {
        let ctx = self.ctx;
        let server_terminal = alloc.server_terminal_status();
        let terminal = server_terminal || alloc.client_terminal_status();
        if self.batch && terminal && !ctx.is_current(alloc) {
            return Class::OldTerminal;
        }
        if self.batch && batch_done(alloc) {
            return Class::Claim(Kind::Done);
        }
        if terminal && !alloc.next_allocation.is_empty() {
            return Class::History;
        }
        if server_terminal {
            // Stopped — unless it was stopped to be rescheduled and its replacement could not
            // be placed: then try again, while its policy allows.
            let retry = last_reschedule_failed(alloc)
                && alloc.desired_description == descriptions::RESCHEDULED
                && matches!(
                    alloc.client_status,
                    ClientStatus::Failed | ClientStatus::Lost
                );
            return match retry.then(|| self.decide(alloc)) {
                Some(decision @ (Decision::Now | Decision::Later(_))) => {
                    Class::Claim(Kind::Failed(decision))
                }
                _ => Class::History,
            };
        }
        match alloc.client_status {
            // A finished service allocation frees its name.
            ClientStatus::Complete => return Class::History,
            ClientStatus::Lost => return Class::Claim(Kind::Lost),
            ClientStatus::Failed => return Class::Claim(Kind::Failed(self.decide(alloc))),
            ClientStatus::Pending | ClientStatus::Running | ClientStatus::Unknown => {}
        }
        let Some(node) = ctx.node(alloc) else {
            return Class::Claim(Kind::Lost);
        };
        let kind = match node.status {
            NodeStatus::Down => Kind::Lost,
            NodeStatus::Disconnected => match (alloc.client_status, disconnect_window(self.tg)) {
                (ClientStatus::Unknown, Some(window)) => {
                    let expires_at = disconnect_expiry(alloc, window);
                    if expires_at <= ctx.now {
                        Kind::Lost
                    } else {
                        plan.wake(expires_at);
                        Kind::Unknown
                    }
                }
                (ClientStatus::Running, Some(window)) => Kind::Disconnecting {
                    expires_at: ctx.now.saturating_add(window),
                },
                _ => Kind::Lost,
            },
            _ if alloc.desired_transition.migrate == Some(true) => Kind::ForcedMigrate,
            _ if node.is_draining() => Kind::Draining,
            _ => Kind::Live,
        };
        Class::Claim(kind)
    }

    /// Whether and when a failed allocation is rescheduled. One of the deployment in charge
    /// waits for the deployment watcher: while the deployment is active, until the watcher
    /// lets it (`DesiredTransition.Reschedule`); once the deployment failed, for good (Nomad's
    /// `updateByReschedulable` and `placeAllocs`).
    fn decide(&self, alloc: &Allocation) -> Decision {
        if let Some(d) = self.ctx.deploy.current()
            && self.ctx.deploy.in_current(alloc)
        {
            let allowed = d.active() && alloc.desired_transition.reschedule == Some(true);
            if !allowed {
                return Decision::Never;
            }
        }
        let policy = reschedule::reschedule_policy(alloc, self.tg);
        reschedule::decide(alloc, policy, self.batch, self.ctx.now)
    }

    /// Splits the claims into those kept and those dropped: one per name (the best), then no
    /// more than count.
    fn choose(&self, mut claims: Vec<Claim<'a>>) -> (Vec<Claim<'a>>, Vec<Claim<'a>>) {
        claims.sort_by(|a, b| a.index.cmp(&b.index).then_with(|| self.keep_order(a, b)));
        let mut kept: Vec<Claim<'a>> = Vec::with_capacity(claims.len());
        let mut dropped = Vec::new();
        for claim in claims {
            if kept.last().is_some_and(|k| k.index == claim.index) {
                dropped.push(claim);
            } else {
                kept.push(claim);
            }
        }
        let excess = kept.len().saturating_sub(self.count());
        if excess > 0 {
            let mut order: Vec<usize> = (0..kept.len()).collect();
            order.sort_by(|&i, &j| shed_order(&kept[i], &kept[j], !self.batch));
            let shed: BTreeSet<usize> = order.into_iter().take(excess).collect();
            let (keep, drop): (Vec<_>, Vec<_>) = kept
                .into_iter()
                .enumerate()
                .partition(|(i, _)| !shed.contains(i));
            kept = keep.into_iter().map(|(_, c)| c).collect();
            dropped.extend(drop.into_iter().map(|(_, c)| c));
        }
        (kept, dropped)
    }

    /// Which of two allocations with the same name to keep (`Less`: `a`).
    fn keep_order(&self, a: &Claim<'_>, b: &Claim<'_>) -> Ordering {
        let key = |c: &Claim<'_>| {
            let alloc = c.alloc;
            let client = match alloc.client_status {
                ClientStatus::Running => 0,
                ClientStatus::Pending => 1,
                ClientStatus::Unknown => 2,
                _ => 3,
            };
            (
                keep_rank(c.kind),
                alloc.server_terminal_status(),
                !self.ctx.is_current(alloc),
                !alloc.is_healthy(),
                client,
                alloc.create_index,
            )
        };
        key(a)
            .cmp(&key(b))
            .then_with(|| a.alloc.id.cmp(&b.alloc.id))
    }

    /// The live allocations on draining nodes to move now: all of them once the node's drain
    /// deadline has passed; otherwise, for services, as many as `migrate.max_parallel` allows
    /// counting the replacements of earlier migrations not yet healthy. Batch allocations are
    /// left to finish until the deadline (as Nomad's drainer does).
    fn choose_migrations<'k>(
        &self,
        kept: &[Claim<'k>],
        leaving: &BTreeSet<&AllocId>,
        plan: &mut Plan,
    ) -> BTreeSet<&'k AllocId> {
        let limit = self
            .tg
            .migrate
            .as_ref()
            .map_or(1, |m| usize::try_from(m.max_parallel).unwrap_or(0));
        let mut allowed = limit.saturating_sub(self.migrations_in_flight(leaving));
        let mut chosen = BTreeSet::new();
        for claim in kept {
            match claim.kind {
                Kind::ForcedMigrate => {
                    chosen.insert(&claim.alloc.id);
                }
                Kind::Draining => {
                    let node = self.ctx.node(claim.alloc);
                    if node.is_some_and(|n| n.drain_deadline_passed(self.ctx.now)) {
                        chosen.insert(&claim.alloc.id);
                    } else if !self.batch && allowed > 0 {
                        allowed -= 1;
                        chosen.insert(&claim.alloc.id);
                    } else if let Some(deadline) = node.and_then(|n| n.drain?.deadline) {
                        plan.wake(deadline);
                    }
                }
                _ => {}
            }
        }
        chosen
    }

    /// Migrations still in flight: allocations moved off a draining node whose replacement
    /// (following `NextAllocation` through later replacements) is live and not yet healthy,
    /// and does not leave with this plan.
    fn migrations_in_flight(&self, leaving: &BTreeSet<&AllocId>) -> usize {
        let by_id: BTreeMap<&AllocId, &Allocation> =
            self.allocs.iter().map(|a| (&a.id, *a)).collect();
        let in_flight = |migrated: &Allocation| {
            let mut current = migrated;
            for _ in 0..self.allocs.len() {
                let Some(&next) = by_id.get(&current.next_allocation) else {
                    return false;
                };
                if is_live(next) {
                    return !next.is_healthy() && !leaving.contains(&next.id);
                }
                current = next;
            }
            false
        };
        self.allocs
            .iter()
            .filter(|a| {
                a.desired_status == DesiredStatus::Stop
                    && a.desired_description == descriptions::MIGRATING
                    && in_flight(a)
            })
            .count()
    }

    /// The replacement of a failed allocation, with its reschedule tracker, avoiding the nodes
    /// it and its predecessors failed on.
    fn rescheduled(&self, prev: &Allocation) -> Place {
        let mut place = self.ctx.replacement(prev, self.tg, PlaceReason::Reschedule);
        let policy = reschedule::reschedule_policy(prev, self.tg);
        place.reschedule_tracker = Some(reschedule::next_reschedule_tracker(
            prev,
            policy,
            self.ctx.now,
        ));
        let mut penalty: BTreeSet<NodeId> = BTreeSet::new();
        if prev.client_status == ClientStatus::Failed && !prev.node_id.is_empty() {
            penalty.insert(prev.node_id.clone());
        }
        for event in prev.reschedule_tracker.iter().flat_map(|t| &t.events) {
            if !event.prev_node_id.is_empty() {
                penalty.insert(event.prev_node_id.clone());
            }
        }
        place.penalty_nodes = penalty.into_iter().collect();
        place
    }
}

/// A batch allocation whose work is done: complete while desired to run, or stopped after all
/// its tasks succeeded (Nomad's `shouldFilter`).
fn batch_done(alloc: &Allocation) -> bool {
    match alloc.desired_status {
        DesiredStatus::Run => alloc.client_status == ClientStatus::Complete,
        DesiredStatus::Stop => alloc.ran_successfully(),
        DesiredStatus::Evict => false,
    }
}

/// Lower is kept first among allocations sharing a name. Completed batch work comes first:
/// it cannot be stopped, and a live duplicate of it is redundant.
fn keep_rank(kind: Kind) -> u8 {
    match kind {
        Kind::Done => 0,
        Kind::Live
        | Kind::Unknown
        | Kind::Draining
        | Kind::ForcedMigrate
        | Kind::Disconnecting { .. } => 1,
        Kind::Failed(Decision::Later(_) | Decision::Never) => 2,
        Kind::Failed(Decision::Now) => 3,
        Kind::Lost => 4,
    }
}

/// Which claim a group over its count sheds first (`Less`: `a`): lost ones (not replaced),
/// failed ones, migrating ones, then those not proven healthy (found unhealthy, then not yet
/// decided), then the highest indexes. Keeping an unhealthy or unproven allocation over a
/// healthy one would leave a rollout that also scales down with less capacity than
/// `max_parallel` allows. Health is only looked at `by_health` (services: batch allocations
/// have no deployment, and a completed one that is shed is kept, not stopped).
fn shed_order(a: &Claim<'_>, b: &Claim<'_>, by_health: bool) -> Ordering {
    let class = |c: &Claim<'_>| match c.kind {
        Kind::Lost => 0,
        Kind::Failed(Decision::Now) => 1,
        Kind::Failed(_) => 2,
        Kind::Draining | Kind::ForcedMigrate => 3,
        Kind::Live | Kind::Unknown | Kind::Disconnecting { .. } | Kind::Done => {
            4 + if by_health { health_rank(c.alloc) } else { 0 }
        }
    };
    let key = |c: &Claim<'_>| (class(c), Reverse(c.index), Reverse(c.alloc.create_index));
    key(a)
        .cmp(&key(b))
        .then_with(|| a.alloc.id.cmp(&b.alloc.id))
}

/// 0 for an allocation found unhealthy, 1 while its health is not decided, 2 once healthy.
fn health_rank(alloc: &Allocation) -> u8 {
    if alloc.is_unhealthy() {
        0
    } else if alloc.is_healthy() {
        2
    } else {
        1
    }
}

/// Indexes for `n` new canaries (Nomad's `NextCanaries`): first those of the allocations a
/// destructive update will replace, then free ones below `count`, then from `count` up; never
/// one a placed canary already has.
fn next_canaries(
    n: usize,
    canaries: &[u32],
    destructive: &[u32],
    used: &BTreeSet<u32>,
    count: usize,
) -> Vec<u32> {
    let count = u32::try_from(count).unwrap_or(u32::MAX);
    let taken: BTreeSet<u32> = canaries.iter().copied().collect();
    let mut preferred: Vec<u32> = destructive.iter().copied().filter(|&i| i < count).collect();
    preferred.sort_unstable();
    let free = (0..count).filter(|i| !used.contains(i));
    let beyond = count..;
    let mut out: Vec<u32> = Vec::with_capacity(n);
    for index in preferred.into_iter().chain(free).chain(beyond) {
        if out.len() == n {
            break;
        }
        if !taken.contains(&index) && !out.contains(&index) {
            out.push(index);
        }
    }
    out
}

fn add(into: &mut DesiredUpdates, from: &DesiredUpdates) {
    into.ignore += from.ignore;
    into.place += from.place;
    into.migrate += from.migrate;
    into.stop += from.stop;
    into.in_place_update += from.in_place_update;
    into.destructive_update += from.destructive_update;
    into.canary += from.canary;
    into.preemptions += from.preemptions;
    into.disconnect += from.disconnect;
    into.reconnect += from.reconnect;
    into.reschedule_now += from.reschedule_now;
    into.reschedule_later += from.reschedule_later;
}
