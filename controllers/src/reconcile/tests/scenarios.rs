//! One expectation test per scenario, Nomad style.

use super::fixtures::*;
use crate::reconcile::{
    DesiredUpdates, Input, JobStatus, PlaceReason, descriptions, job_status, reconcile,
};
use caravan_schemas::alloc::ClientStatus;
use caravan_schemas::{AllocId, Duration, NodeId};

fn ids(v: &[&str]) -> Vec<AllocId> {
    v.iter().map(|s| AllocId::new(*s)).collect()
}

// --- service: count, names, scaling ------------------------------------------------------------

#[test]
fn fresh_service_job_places_count() {
    let mut world = World::new(Some(service(3)), vec![], nodes(&[]));
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            place: 3,
            ..Default::default()
        },
    );
    assert_eq!(placed_indexes(&plan), [0, 1, 2]);
    assert_eq!(plan.place[0].name, "example.web[0]");
    assert!(plan.place.iter().all(|p| p.reason == PlaceReason::New
        && p.previous_alloc.is_none()
        && p.node.is_none()
        && p.group == "web"));
    assert_eq!(
        plan.desired_tg_updates["web"],
        DesiredUpdates {
            place: 3,
            ..Default::default()
        }
    );
    assert_eq!(plan.job_status, JobStatus::Running);
    assert_eq!(plan.wake_at, None);
    world.apply_and_settle(&plan);
}

#[test]
fn steady_state_is_all_ignore() {
    let job = service(3);
    let plan = run(Some(&job), &allocs(&job, 3), &nodes(&[]));
    assert!(plan.is_empty());
    assert_eq!(
        plan.desired_tg_updates["web"],
        DesiredUpdates {
            ignore: 3,
            ..Default::default()
        }
    );
    assert_eq!(plan.job_status, JobStatus::Running);
}

#[test]
fn scale_up_places_the_next_indexes() {
    let v1 = service(1);
    let v2 = next_version(&v1, |j| web(j).count = 3);
    let mut world = World::new(Some(v2), allocs(&v1, 1), nodes(&[]));
    let plan = world.reconcile();
    // The count change alone is applied to the running allocation in place.
    assert_plan(
        &plan,
        Expect {
            place: 2,
            inplace: 1,
            ..Default::default()
        },
    );
    assert_eq!(placed_indexes(&plan), [1, 2]);
    assert_eq!(plan.inplace_update, ids(&["web-0"]));
    assert_eq!(
        plan.desired_tg_updates["web"],
        DesiredUpdates {
            place: 2,
            in_place_update: 1,
            ..Default::default()
        }
    );
    world.apply_and_settle(&plan);
}

#[test]
fn scale_down_stops_the_highest_indexes() {
    let v1 = service(3);
    let v2 = next_version(&v1, |j| web(j).count = 1);
    let mut world = World::new(Some(v2), allocs(&v1, 3), nodes(&[]));
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            stop: 2,
            inplace: 1,
            ..Default::default()
        },
    );
    let mut stopped = stopped_ids(&plan);
    stopped.sort_unstable();
    assert_eq!(stopped, ["web-1", "web-2"]);
    assert!(
        plan.stop
            .iter()
            .all(|s| s.description == descriptions::NOT_NEEDED && s.client_status.is_none())
    );
    assert_eq!(plan.inplace_update, ids(&["web-0"]));
    assert_eq!(
        plan.desired_tg_updates["web"],
        DesiredUpdates {
            stop: 2,
            in_place_update: 1,
            ..Default::default()
        }
    );
    world.apply_and_settle(&plan);
}

#[test]
fn scale_to_zero_and_removed_groups_stop_everything() {
    let v1 = service(3);
    let v2 = next_version(&v1, |j| {
        web(j).count = 0;
        let mut api = group("api", 1);
        api.update = j.update.clone();
        j.task_groups.push(api);
    });
    let mut world = World::new(Some(v2.clone()), allocs(&v1, 3), nodes(&[]));
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            place: 1,
            stop: 3,
            ..Default::default()
        },
    );
    assert_eq!(plan.place[0].name, "example.api[0]");
    assert_eq!(plan.desired_tg_updates["web"].stop, 3);
    assert_eq!(plan.desired_tg_updates["api"].place, 1);
    world.apply_and_settle(&plan);

    // A group dropped from the job altogether.
    let v3 = next_version(&v2, |j| j.task_groups.retain(|g| g.name == "api"));
    let plan = run(Some(&v3), &allocs(&v1, 2), &nodes(&[]));
    assert_plan(
        &plan,
        Expect {
            place: 1,
            stop: 2,
            ..Default::default()
        },
    );
}

#[test]
fn duplicate_indexes_are_resolved_keeping_one() {
    let job = service(3);
    let existing = vec![
        alloc(&job, "web", 0).id("a"),
        alloc(&job, "web", 0).id("b").created(200),
        alloc(&job, "web", 1).id("c"),
    ];
    let mut world = World::new(Some(job), existing, nodes(&[]));
    let plan = world.reconcile();
    // The newer duplicate goes; the freed count is placed at the free index.
    assert_plan(
        &plan,
        Expect {
            place: 1,
            stop: 1,
            ..Default::default()
        },
    );
    assert_eq!(stopped_ids(&plan), ["b"]);
    assert_eq!(plan.stop[0].description, descriptions::NOT_NEEDED);
    assert_eq!(placed_indexes(&plan), [2]);
    world.apply_and_settle(&plan);
}

#[test]
fn duplicates_prefer_running_and_healthy_over_pending() {
    let job = service(1);
    let existing = vec![
        alloc(&job, "web", 0)
            .id("old")
            .client(ClientStatus::Pending),
        alloc(&job, "web", 0)
            .id("new")
            .created(300)
            .healthy(Some(true)),
    ];
    let plan = run(Some(&job), &existing, &nodes(&[]));
    assert_plan(
        &plan,
        Expect {
            stop: 1,
            ..Default::default()
        },
    );
    assert_eq!(stopped_ids(&plan), ["old"]);
}

// --- updates -----------------------------------------------------------------------------------

#[test]
fn count_and_meta_changes_update_in_place() {
    let v1 = service(3);
    let v2 = next_version(&v1, |j| {
        web(j).count = 4;
        j.meta.insert("owner".into(), "team-a".into());
        web(j).meta.insert("tier".into(), "gold".into());
        web(j).reschedule_policy = Some(policy(3, HOUR, 10 * SEC, "constant", 0, false));
        app(j).kill_timeout = Some(Duration::from_secs(30));
        app(j).services.push(caravan_schemas::job::Service {
            name: "web".into(),
            ..Default::default()
        });
    });
    let mut world = World::new(Some(v2), allocs(&v1, 3), nodes(&[]));
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            place: 1,
            inplace: 3,
            ..Default::default()
        },
    );
    assert_eq!(placed_indexes(&plan), [3]);
    world.apply_and_settle(&plan);
}

fn rolling(max_parallel: Option<i32>) -> (World, crate::reconcile::Plan) {
    let v1 = with_max_parallel(service(3), max_parallel);
    let v2 = next_version(&v1, |j| {
        app(j).env.insert("MODE".into(), "fast".into());
        app(j).config.insert("image".into(), "redis:8".into());
    });
    let existing: Vec<_> = allocs(&v1, 3)
        .into_iter()
        .map(|a| a.healthy(Some(true)))
        .collect();
    let world = World::new(Some(v2), existing, nodes(&[]));
    let plan = world.reconcile();
    (world, plan)
}

#[test]
fn destructive_update_with_max_parallel_1_replaces_one_at_a_time() {
    let (mut world, plan) = rolling(Some(1));
    assert_plan(
        &plan,
        Expect {
            destructive: 1,
            ..Default::default()
        },
    );
    let d = &plan.destructive_update[0];
    assert_eq!(d.alloc_id.as_str(), "web-0");
    assert_eq!(d.description, descriptions::UPDATING);
    assert_eq!(d.place.name, "example.web[0]");
    assert_eq!(d.place.reason, PlaceReason::Update);
    assert_eq!(d.place.previous_alloc, Some(AllocId::new("web-0")));
    assert_eq!(
        plan.desired_tg_updates["web"],
        DesiredUpdates {
            destructive_update: 1,
            ignore: 2,
            ..Default::default()
        }
    );

    // The replacement is in flight: nothing more until it is healthy.
    let created = world.apply_and_settle(&plan);
    world.make_healthy(&created);
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            destructive: 1,
            ..Default::default()
        },
    );
    assert_eq!(plan.destructive_update[0].alloc_id.as_str(), "web-1");

    let created = world.apply_and_settle(&plan);
    world.make_healthy(&created);
    let plan = world.reconcile();
    assert_eq!(plan.destructive_update[0].alloc_id.as_str(), "web-2");
    let created = world.apply_and_settle(&plan);
    world.make_healthy(&created);
    assert!(world.reconcile().is_empty());
}

#[test]
fn destructive_update_with_max_parallel_2() {
    let (mut world, plan) = rolling(Some(2));
    assert_plan(
        &plan,
        Expect {
            destructive: 2,
            ..Default::default()
        },
    );
    let replaced: Vec<&str> = plan
        .destructive_update
        .iter()
        .map(|d| d.alloc_id.as_str())
        .collect();
    assert_eq!(replaced, ["web-0", "web-1"]);
    let created = world.apply_and_settle(&plan);

    // One of the two turns healthy: one more slot.
    world.make_healthy(&created[..1]);
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            destructive: 1,
            ..Default::default()
        },
    );
}

#[test]
fn destructive_update_without_update_block_replaces_all_at_once() {
    for max_parallel in [None, Some(0)] {
        let (mut world, plan) = rolling(max_parallel);
        assert_plan(
            &plan,
            Expect {
                destructive: 3,
                ..Default::default()
            },
        );
        world.apply_and_settle(&plan);
    }
}

#[test]
fn an_unhealthy_new_version_halts_the_rollout() {
    let (mut world, plan) = rolling(Some(1));
    let created = world.apply(&plan);
    world
        .allocs
        .iter_mut()
        .filter(|a| created.contains(&a.id))
        .for_each(|a| {
            a.client_status = ClientStatus::Running;
            a.deployment_status = Some(caravan_schemas::alloc::AllocDeploymentStatus {
                healthy: Some(false),
                ..Default::default()
            });
        });
    assert!(world.reconcile().is_empty());
}

#[test]
fn scaling_up_during_a_rollout_uses_the_parallelism_first() {
    let v1 = service(2);
    let v2 = next_version(&v1, |j| {
        web(j).count = 3;
        app(j).env.insert("MODE".into(), "fast".into());
    });
    let existing: Vec<_> = allocs(&v1, 2)
        .into_iter()
        .map(|a| a.healthy(Some(true)))
        .collect();
    let plan = run(Some(&v2), &existing, &nodes(&[]));
    // max_parallel 1 is spent on the new placement.
    assert_plan(
        &plan,
        Expect {
            place: 1,
            ..Default::default()
        },
    );
    assert_eq!(plan.desired_tg_updates["web"].ignore, 2);
}

// --- job stop and purge ------------------------------------------------------------------------

#[test]
fn stopped_job_stops_everything() {
    let v1 = service(3);
    let v2 = next_version(&v1, |j| j.stop = true);
    let mut existing = allocs(&v1, 3);
    existing.push(alloc(&v1, "web", 3).failed_at(NOW - HOUR).id("failed"));
    let mut world = World::new(Some(v2), existing, nodes(&[]));
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            stop: 3,
            ..Default::default()
        },
    );
    assert!(
        plan.stop
            .iter()
            .all(|s| s.description == descriptions::NOT_NEEDED)
    );
    assert_eq!(
        plan.desired_tg_updates["web"],
        DesiredUpdates {
            stop: 3,
            ..Default::default()
        }
    );
    assert_eq!(plan.job_status, JobStatus::Dead);
    world.apply_and_settle(&plan);
}

#[test]
fn purged_job_stops_everything_and_marks_lost_ones() {
    let job = service(3);
    let existing = vec![
        alloc(&job, "web", 0),
        alloc(&job, "web", 1).on("n2"),
        alloc(&job, "web", 2).complete(),
    ];
    let mut world = World::new(None, existing, nodes(&[("n2", down())]));
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            stop: 2,
            ..Default::default()
        },
    );
    let lost = plan
        .stop
        .iter()
        .find(|s| s.alloc_id.as_str() == "web-1")
        .unwrap();
    assert_eq!(lost.client_status, Some(ClientStatus::Lost));
    assert_eq!(lost.description, descriptions::LOST);
    assert_eq!(plan.job_status, JobStatus::Dead);
    world.apply_and_settle(&plan);
}

// --- lost, disconnected, draining --------------------------------------------------------------

#[test]
fn allocations_on_a_down_node_are_lost_and_replaced() {
    let job = service(3);
    let existing = vec![
        alloc(&job, "web", 0),
        alloc(&job, "web", 1),
        alloc(&job, "web", 2).on("n2"),
    ];
    let mut world = World::new(Some(job), existing, nodes(&[("n1", down())]));
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            place: 2,
            stop: 2,
            ..Default::default()
        },
    );
    assert!(plan.stop.iter().all(
        |s| s.client_status == Some(ClientStatus::Lost) && s.description == descriptions::LOST
    ));
    assert!(plan.place.iter().all(|p| p.reason == PlaceReason::Lost
        && p.reschedule_tracker.is_none()
        && p.previous_node == Some(NodeId::new("n1"))));
    assert_eq!(placed_indexes(&plan), [0, 1]);
    assert_eq!(
        plan.desired_tg_updates["web"],
        DesiredUpdates {
            place: 2,
            stop: 2,
            ignore: 1,
            ..Default::default()
        }
    );
    world.apply_and_settle(&plan);
}

#[test]
fn allocations_on_a_vanished_node_are_lost() {
    let job = service(1);
    let plan = run(Some(&job), &[alloc(&job, "web", 0).on("gone")], &nodes(&[]));
    assert_plan(
        &plan,
        Expect {
            place: 1,
            stop: 1,
            ..Default::default()
        },
    );
    assert_eq!(plan.stop[0].client_status, Some(ClientStatus::Lost));
}

#[test]
fn disconnected_node_without_max_client_disconnect_is_lost() {
    let job = service(2);
    let existing = vec![alloc(&job, "web", 0).on("n2"), alloc(&job, "web", 1)];
    let plan = run(Some(&job), &existing, &nodes(&[("n2", disconnected())]));
    assert_plan(
        &plan,
        Expect {
            place: 1,
            stop: 1,
            ..Default::default()
        },
    );
    assert_eq!(plan.stop[0].client_status, Some(ClientStatus::Lost));
}

#[test]
fn disconnected_node_with_max_client_disconnect_waits_then_replaces() {
    let mut job = service(2);
    web(&mut job).max_client_disconnect = Some(Duration::from_mins(5));
    let existing = vec![alloc(&job, "web", 0).on("n2"), alloc(&job, "web", 1)];
    let mut world = World::new(Some(job), existing, nodes(&[("n2", disconnected())]));
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            disconnect: 1,
            ..Default::default()
        },
    );
    assert_eq!(plan.disconnect[0].expires_at, NOW + 5 * MIN);
    assert_eq!(plan.wake_at, Some(NOW + 5 * MIN));
    assert_eq!(plan.desired_tg_updates["web"].disconnect, 1);
    world.apply_and_settle(&plan);
    assert_eq!(world.reconcile().wake_at, Some(NOW + 5 * MIN));

    // The window ends: lost and replaced.
    world.now = NOW + 6 * MIN;
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            place: 1,
            stop: 1,
            ..Default::default()
        },
    );
    assert_eq!(plan.stop[0].client_status, Some(ClientStatus::Lost));
    world.apply_and_settle(&plan);
}

#[test]
fn unknown_allocation_back_on_a_ready_node_counts_again() {
    let mut job = service(1);
    web(&mut job).max_client_disconnect = Some(Duration::from_mins(5));
    let existing = vec![alloc(&job, "web", 0).unknown_since(NOW - MIN)];
    let plan = run(Some(&job), &existing, &nodes(&[]));
    assert!(plan.is_empty());
}

fn drain_world(max_parallel: i32, deadline: Option<i64>) -> World {
    let mut job = service(3);
    web(&mut job).migrate.as_mut().unwrap().max_parallel = max_parallel;
    let existing: Vec<_> = allocs(&job, 3)
        .into_iter()
        .map(|a| a.healthy(Some(true)))
        .collect();
    World::new(Some(job), existing, nodes(&[("n1", draining(deadline))]))
}

#[test]
fn draining_node_migrates_within_max_parallel() {
    let mut world = drain_world(1, None);
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            place: 1,
            stop: 1,
            ..Default::default()
        },
    );
    assert_eq!(stopped_ids(&plan), ["web-0"]);
    assert_eq!(plan.stop[0].description, descriptions::MIGRATING);
    assert_eq!(plan.place[0].reason, PlaceReason::Migrate);
    assert_eq!(plan.place[0].previous_alloc, Some(AllocId::new("web-0")));
    assert_eq!(
        plan.desired_tg_updates["web"],
        DesiredUpdates {
            migrate: 1,
            ignore: 2,
            ..Default::default()
        }
    );

    // The migration is in flight until its replacement is healthy.
    let created = world.apply_and_settle(&plan);
    world.make_healthy(&created);
    let plan = world.reconcile();
    assert_eq!(stopped_ids(&plan), ["web-1"]);
    let created = world.apply_and_settle(&plan);
    world.make_healthy(&created);
    let plan = world.reconcile();
    assert_eq!(stopped_ids(&plan), ["web-2"]);
    let created = world.apply_and_settle(&plan);
    world.make_healthy(&created);
    assert!(world.reconcile().is_empty());
}

#[test]
fn draining_node_with_max_parallel_2() {
    let mut world = drain_world(2, None);
    let plan = world.reconcile();
    assert_eq!(plan.desired_tg_updates["web"].migrate, 2);
    assert_plan(
        &plan,
        Expect {
            place: 2,
            stop: 2,
            ..Default::default()
        },
    );
    world.apply_and_settle(&plan);
}

#[test]
fn drain_deadline_moves_everything() {
    let mut world = drain_world(1, Some(NOW + HOUR));
    let plan = world.reconcile();
    assert_eq!(plan.desired_tg_updates["web"].migrate, 1);
    assert_eq!(plan.wake_at, Some(NOW + HOUR));
    world.apply_and_settle(&plan);
    world.now = NOW + 2 * HOUR;
    let plan = world.reconcile();
    assert_eq!(plan.desired_tg_updates["web"].migrate, 2);
    world.apply_and_settle(&plan);
}

#[test]
fn batch_allocations_finish_on_a_draining_node_until_the_deadline() {
    let job = batch(2);
    let existing = allocs(&job, 2);
    let plan = run(
        Some(&job),
        &existing,
        &nodes(&[("n1", draining(Some(NOW + HOUR)))]),
    );
    assert!(plan.is_empty());
    assert_eq!(plan.wake_at, Some(NOW + HOUR));
    let plan = run(
        Some(&job),
        &existing,
        &nodes(&[("n1", draining(Some(NOW - SEC)))]),
    );
    assert_eq!(plan.desired_tg_updates["web"].migrate, 2);
}

#[test]
fn desired_transition_migrate_is_honoured() {
    let job = service(2);
    let existing = vec![
        alloc(&job, "web", 0).with(|a| a.desired_transition.migrate = Some(true)),
        alloc(&job, "web", 1),
    ];
    let mut world = World::new(Some(job), existing, nodes(&[]));
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            place: 1,
            stop: 1,
            ..Default::default()
        },
    );
    assert_eq!(plan.stop[0].description, descriptions::MIGRATING);
    world.apply_and_settle(&plan);
}

// --- rescheduling ------------------------------------------------------------------------------

fn resched_job(p: caravan_schemas::job::ReschedulePolicy) -> caravan_schemas::job::Job {
    with_reschedule(service(3), p)
}

#[test]
fn failed_alloc_is_rescheduled_now() {
    let job = resched_job(policy(0, 0, 30 * SEC, "exponential", HOUR, true));
    let mut existing = allocs(&job, 3);
    existing[1] = alloc(&job, "web", 1).on("n2").failed_at(NOW - MIN);
    let mut world = World::new(Some(job), existing, nodes(&[]));
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            place: 1,
            stop: 1,
            ..Default::default()
        },
    );
    assert_eq!(plan.stop[0].description, descriptions::RESCHEDULED);
    let p = &plan.place[0];
    assert!(p.is_reschedule());
    assert_eq!(p.name, "example.web[1]");
    assert_eq!(p.previous_alloc, Some(AllocId::new("web-1")));
    assert_eq!(p.penalty_nodes, [NodeId::new("n2")]);
    let tracker = p.reschedule_tracker.as_ref().unwrap();
    assert_eq!(tracker.last_reschedule, "ok");
    assert_eq!(tracker.events.len(), 1);
    assert_eq!(tracker.events[0].reschedule_time, NOW);
    assert_eq!(tracker.events[0].prev_alloc_id.as_str(), "web-1");
    assert_eq!(tracker.events[0].prev_node_id.as_str(), "n2");
    assert_eq!(tracker.events[0].delay, Duration(30 * SEC));
    assert_eq!(
        plan.desired_tg_updates["web"],
        DesiredUpdates {
            place: 1,
            stop: 1,
            ignore: 2,
            reschedule_now: 1,
            ..Default::default()
        }
    );
    world.apply_and_settle(&plan);
}

#[test]
fn failed_alloc_is_rescheduled_later_until_its_delay_passes() {
    let job = resched_job(policy(0, 0, 30 * SEC, "exponential", HOUR, true));
    let mut existing = allocs(&job, 3);
    existing[2] = alloc(&job, "web", 2).failed_at(NOW - 10 * SEC);
    let mut world = World::new(Some(job), existing, nodes(&[]));
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            reschedule_later: 1,
            ..Default::default()
        },
    );
    assert_eq!(plan.reschedule_later[0].alloc_id.as_str(), "web-2");
    assert_eq!(plan.reschedule_later[0].at, NOW + 20 * SEC);
    assert_eq!(plan.wake_at, Some(NOW + 20 * SEC));
    assert_eq!(plan.desired_tg_updates["web"].reschedule_later, 1);
    world.apply_and_settle(&plan);

    // The follow-up fires (a little early, within the window).
    world.now = NOW + 20 * SEC - SEC / 2;
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            place: 1,
            stop: 1,
            ..Default::default()
        },
    );
    world.apply_and_settle(&plan);
}

#[test]
fn exponential_delay_doubles_the_last_one() {
    let job = resched_job(policy(0, 0, 30 * SEC, "exponential", HOUR, true));
    let failed = alloc(&job, "web", 0)
        .failed_at(NOW - 90 * SEC)
        .rescheduled(&[(NOW - 2 * HOUR, 30 * SEC), (NOW - HOUR, 60 * SEC)]);
    let plan = run(Some(&job), std::slice::from_ref(&failed), &nodes(&[]));
    assert_eq!(plan.reschedule_later[0].at, NOW - 90 * SEC + 120 * SEC);

    let failed = failed.failed_at(NOW - 3 * MIN);
    let plan = run(Some(&job), &[failed], &nodes(&[]));
    let tracker = plan.place[0].reschedule_tracker.as_ref().unwrap();
    let delays: Vec<i64> = tracker.events.iter().map(|e| e.delay.nanos()).collect();
    assert_eq!(delays, [30 * SEC, 60 * SEC, 120 * SEC]);
}

#[test]
fn fibonacci_delay_adds_the_last_two() {
    let job = resched_job(policy(0, 0, 10 * SEC, "fibonacci", HOUR, true));
    let cases: [(&[(i64, i64)], i64); 4] = [
        (&[], 10 * SEC),
        (&[(NOW - HOUR, 10 * SEC)], 10 * SEC),
        (
            &[(NOW - 2 * HOUR, 10 * SEC), (NOW - HOUR, 10 * SEC)],
            20 * SEC,
        ),
        (
            &[
                (NOW - 3 * HOUR, 10 * SEC),
                (NOW - 2 * HOUR, 10 * SEC),
                (NOW - HOUR, 20 * SEC),
            ],
            30 * SEC,
        ),
    ];
    for (events, delay) in cases {
        let failed = alloc(&job, "web", 0)
            .failed_at(NOW - SEC)
            .rescheduled(events);
        let plan = run(Some(&job), &[failed], &nodes(&[]));
        assert_eq!(plan.reschedule_later[0].at, NOW - SEC + delay, "{events:?}");
    }
}

#[test]
fn delay_is_capped_at_max_delay_and_resets_after_a_long_run() {
    let job = resched_job(policy(0, 0, 30 * SEC, "exponential", 5 * MIN, true));
    // The last delay was 4m: doubling gives 8m, capped at 5m.
    let failed = alloc(&job, "web", 0)
        .failed_at(NOW - SEC)
        .rescheduled(&[(NOW - 2 * MIN, 4 * MIN)]);
    let plan = run(Some(&job), &[failed], &nodes(&[]));
    assert_eq!(plan.reschedule_later[0].at, NOW - SEC + 5 * MIN);

    // It ran for longer than max_delay since its last reschedule: back to the base delay.
    let failed = alloc(&job, "web", 0)
        .failed_at(NOW - SEC)
        .rescheduled(&[(NOW - HOUR, 4 * MIN)]);
    let plan = run(Some(&job), &[failed], &nodes(&[]));
    assert_eq!(plan.reschedule_later[0].at, NOW - SEC + 30 * SEC);

    // Fibonacci caps too.
    let job = resched_job(policy(0, 0, 10 * SEC, "fibonacci", 25 * SEC, true));
    let failed = alloc(&job, "web", 0)
        .failed_at(NOW - SEC)
        .rescheduled(&[(NOW - 30 * SEC, 10 * SEC), (NOW - 20 * SEC, 20 * SEC)]);
    let plan = run(Some(&job), &[failed], &nodes(&[]));
    assert_eq!(plan.reschedule_later[0].at, NOW - SEC + 25 * SEC);
}

#[test]
fn no_reschedule_once_attempts_are_exhausted() {
    let job = resched_job(policy(2, HOUR, 5 * SEC, "constant", 0, false));
    let mut existing = allocs(&job, 3);
    existing[0] = alloc(&job, "web", 0)
        .failed_at(NOW - MIN)
        .rescheduled(&[(NOW - 30 * MIN, 5 * SEC), (NOW - 20 * MIN, 5 * SEC)]);
    let plan = run(Some(&job), &existing, &nodes(&[]));
    // The group is left short; the failed allocation stays failed.
    assert!(plan.is_empty());
    assert!(plan.reschedule_later.is_empty());
    assert_eq!(plan.wake_at, None);
    assert_eq!(
        plan.desired_tg_updates["web"],
        DesiredUpdates {
            ignore: 3,
            ..Default::default()
        }
    );

    // Attempts older than the interval do not count.
    existing[0] = alloc(&job, "web", 0)
        .failed_at(NOW - MIN)
        .rescheduled(&[(NOW - 3 * HOUR, 5 * SEC), (NOW - 2 * HOUR, 5 * SEC)]);
    let plan = run(Some(&job), &existing, &nodes(&[]));
    assert_plan(
        &plan,
        Expect {
            place: 1,
            stop: 1,
            ..Default::default()
        },
    );
    // Only the attempts inside the interval are carried over.
    let tracker = plan.place[0].reschedule_tracker.as_ref().unwrap();
    assert_eq!(tracker.events.len(), 1);
}

#[test]
fn unlimited_rescheduling_keeps_the_last_five_events() {
    let job = resched_job(policy(0, 0, 5 * SEC, "constant", 0, true));
    let events: Vec<(i64, i64)> = (0..10).map(|i| (NOW - (20 - i) * MIN, 5 * SEC)).collect();
    let failed = alloc(&job, "web", 0)
        .failed_at(NOW - MIN)
        .rescheduled(&events);
    let plan = run(Some(&job), &[failed], &nodes(&[]));
    assert_eq!(plan.place.len(), 3, "{plan:#?}");
    let p = plan.place.iter().find(|p| p.is_reschedule()).unwrap();
    let tracker = p.reschedule_tracker.as_ref().unwrap();
    assert_eq!(tracker.events.len(), 6);
    assert_eq!(tracker.events[0].prev_alloc_id.as_str(), "old-5");
    // Every node it failed on is penalized.
    assert_eq!(p.penalty_nodes.len(), 11);
}

#[test]
fn failed_replacement_that_could_not_be_placed_is_retried() {
    let job = resched_job(policy(0, 0, 5 * SEC, "constant", 0, true));
    let failed = alloc(&job, "web", 0)
        .failed_at(NOW - MIN)
        .stopped(descriptions::RESCHEDULED)
        .with(|a| {
            a.reschedule_tracker = Some(caravan_schemas::alloc::RescheduleTracker {
                events: vec![],
                last_reschedule: "no placement".into(),
            })
        });
    let plan = run(Some(&with_count(job, 1)), &[failed], &nodes(&[]));
    // Placed again, not stopped again.
    assert_plan(
        &plan,
        Expect {
            place: 1,
            ..Default::default()
        },
    );
    assert!(plan.place[0].is_reschedule());
}

fn with_count(mut job: caravan_schemas::job::Job, count: i32) -> caravan_schemas::job::Job {
    web(&mut job).count = count;
    job
}

// --- batch -------------------------------------------------------------------------------------

#[test]
fn completed_batch_allocations_are_never_replaced() {
    let job = batch(3);
    let existing = vec![
        alloc(&job, "web", 0).complete(),
        alloc(&job, "web", 1).complete(),
        alloc(&job, "web", 2),
    ];
    let plan = run(Some(&job), &existing, &nodes(&[]));
    assert!(plan.is_empty());
    assert_eq!(plan.desired_tg_updates["web"].ignore, 3);
    assert_eq!(plan.job_status, JobStatus::Running);

    let done: Vec<_> = (0..3).map(|i| alloc(&job, "web", i).complete()).collect();
    let plan = run(Some(&job), &done, &nodes(&[]));
    assert!(plan.is_empty());
    assert_eq!(plan.job_status, JobStatus::Dead);

    // Even when their node is gone.
    let plan = run(Some(&job), &done, &nodes(&[("n1", down())]));
    assert!(plan.is_empty());
}

#[test]
fn batch_failure_is_rescheduled_per_the_batch_policy() {
    // Batch default: 1 attempt in 24h, constant 5s.
    let job = batch(2);
    let existing = vec![
        alloc(&job, "web", 0).complete(),
        alloc(&job, "web", 1).failed_at(NOW - MIN),
    ];
    let mut world = World::new(Some(job.clone()), existing.clone(), nodes(&[]));
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            place: 1,
            stop: 1,
            ..Default::default()
        },
    );
    assert!(plan.place[0].is_reschedule());
    assert_eq!(
        plan.place[0].reschedule_tracker.as_ref().unwrap().events[0].delay,
        Duration(5 * SEC)
    );
    world.apply_and_settle(&plan);

    // The replacement fails too: the one attempt is spent.
    let again = alloc(&job, "web", 1)
        .failed_at(NOW - 10 * SEC)
        .rescheduled(&[(NOW - MIN, 5 * SEC)]);
    let plan = run(Some(&job), &[existing[0].clone(), again], &nodes(&[]));
    assert!(plan.is_empty());
    assert_eq!(plan.job_status, JobStatus::Dead);

    // Failed 1s ago: due in 4s.
    let fresh = alloc(&job, "web", 1).failed_at(NOW - SEC);
    let plan = run(Some(&job), &[existing[0].clone(), fresh], &nodes(&[]));
    assert_eq!(plan.reschedule_later[0].at, NOW + 4 * SEC);
    assert_eq!(plan.job_status, JobStatus::Pending);
}

#[test]
fn a_new_batch_version_runs_again() {
    let v1 = batch(2);
    let v2 = next_version(&v1, |j| {
        app(j).env.insert("RUN".into(), "2".into());
    });
    let done: Vec<_> = (0..2).map(|i| alloc(&v1, "web", i).complete()).collect();
    let plan = run(Some(&v2), &done, &nodes(&[]));
    assert_plan(
        &plan,
        Expect {
            place: 2,
            ..Default::default()
        },
    );
    assert_eq!(plan.desired_tg_updates["web"].ignore, 2);
}

// --- system and sysbatch -----------------------------------------------------------------------

fn system_world(
    job: caravan_schemas::job::Job,
    allocs: Vec<caravan_schemas::alloc::Allocation>,
    eligible: &[&str],
) -> World {
    let mut world = World::new(Some(job), allocs, nodes(&[]));
    world.eligible = eligible.iter().map(|n| NodeId::new(*n)).collect();
    world
}

#[test]
fn system_job_runs_one_per_eligible_node() {
    let mut world = system_world(system(), vec![], &["n1", "n2", "n3"]);
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            place: 3,
            ..Default::default()
        },
    );
    let mut on: Vec<&str> = plan
        .place
        .iter()
        .map(|p| p.node.as_ref().unwrap().as_str())
        .collect();
    on.sort_unstable();
    assert_eq!(on, ["n1", "n2", "n3"]);
    assert!(plan.place.iter().all(|p| p.name == "example.web[0]"));
    assert_eq!(plan.job_status, JobStatus::Running);
    world.apply_and_settle(&plan);

    // A node joins.
    world.eligible.push(NodeId::new("n4"));
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            place: 1,
            ..Default::default()
        },
    );
    assert_eq!(plan.place[0].node, Some(NodeId::new("n4")));
    assert_eq!(
        plan.desired_tg_updates["web"],
        DesiredUpdates {
            place: 1,
            ignore: 3,
            ..Default::default()
        }
    );
    world.apply_and_settle(&plan);
}

#[test]
fn system_allocations_off_eligible_nodes_are_stopped_or_kept() {
    let job = system();
    let existing = vec![
        alloc(&job, "web", 0).id("on-n1").on("n1"),
        alloc(&job, "web", 0).id("on-ineligible").on("n2"),
        alloc(&job, "web", 0).id("on-other-dc").on("n3"),
        alloc(&job, "web", 0).id("on-down").on("n4"),
    ];
    let mut other_dc = ready();
    other_dc.datacenter = "dc2".into();
    let mut world = system_world(job.clone(), existing.clone(), &["n1"]);
    world.nodes = nodes(&[
        ("n2", ineligible()),
        ("n3", other_dc.clone()),
        ("n4", down()),
    ]);
    let plan = world.reconcile();
    // Ineligible nodes keep what runs there (Nomad); other datacenters do not; down is lost.
    assert_plan(
        &plan,
        Expect {
            stop: 2,
            ..Default::default()
        },
    );
    let mut stopped = stopped_ids(&plan);
    stopped.sort_unstable();
    assert_eq!(stopped, ["on-down", "on-other-dc"]);
    let lost = plan
        .stop
        .iter()
        .find(|s| s.alloc_id.as_str() == "on-down")
        .unwrap();
    assert_eq!(lost.client_status, Some(ClientStatus::Lost));
    world.apply_and_settle(&plan);

    // A new version: the allocation on the ineligible node cannot be updated there.
    let v2 = next_version(&job, |j| {
        j.meta.insert("v".into(), "2".into());
    });
    let mut world = system_world(v2, existing[..2].to_vec(), &["n1"]);
    world.nodes = nodes(&[("n2", ineligible())]);
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            stop: 1,
            inplace: 1,
            ..Default::default()
        },
    );
    assert_eq!(stopped_ids(&plan), ["on-ineligible"]);
    world.apply_and_settle(&plan);
}

#[test]
fn system_destructive_updates_respect_max_parallel() {
    let v1 = system();
    let v2 = next_version(&v1, |j| {
        app(j).config.insert("image".into(), "redis:8".into());
    });
    let existing: Vec<_> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| {
            alloc(&v1, "web", 0)
                .id(&format!("on-{n}"))
                .on(n)
                .healthy(Some(true))
        })
        .collect();
    let mut world = system_world(v2, existing, &["n1", "n2", "n3"]);
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            destructive: 1,
            ..Default::default()
        },
    );
    assert_eq!(
        plan.destructive_update[0].place.node,
        Some(NodeId::new("n1"))
    );
    assert_eq!(
        plan.desired_tg_updates["web"],
        DesiredUpdates {
            destructive_update: 1,
            ignore: 2,
            ..Default::default()
        }
    );
    let created = world.apply_and_settle(&plan);
    world.make_healthy(&created);
    // The default stagger (30s) passes before the next one.
    world.now += caravan_schemas::duration::Duration::from_secs(30).nanos();
    assert_eq!(world.reconcile().destructive_update.len(), 1);
}

#[test]
fn system_updates_wait_for_the_stagger_after_each_healthy_batch() {
    let stagger = caravan_schemas::duration::Duration::from_secs(30);
    let v1 = system();
    let v2 = next_version(&v1, |j| {
        app(j).config.insert("image".into(), "redis:8".into());
        j.task_groups[0].update.as_mut().unwrap().stagger = stagger;
    });
    let existing: Vec<_> = ["n1", "n2"]
        .iter()
        .map(|n| {
            alloc(&v1, "web", 0)
                .id(&format!("on-{n}"))
                .on(n)
                .healthy(Some(true))
        })
        .collect();
    let mut world = system_world(v2, existing, &["n1", "n2"]);
    let plan = world.reconcile();
    assert_eq!(plan.destructive_update.len(), 1);
    let created = world.apply_and_settle(&plan);
    world.make_healthy(&created);
    // Healthy, but not for `stagger` yet: nothing more, and a wake-up when it will have been.
    let plan = world.reconcile();
    assert!(plan.destructive_update.is_empty(), "{plan:?}");
    assert_eq!(plan.wake_at, Some(world.now + stagger.nanos()));
    world.now += stagger.nanos();
    assert_eq!(world.reconcile().destructive_update.len(), 1);
}

#[test]
fn system_job_on_a_draining_node_waits_for_the_deadline() {
    let job = system();
    let existing = vec![alloc(&job, "web", 0).on("n1")];
    let mut world = system_world(job, existing, &[]);
    world.nodes = nodes(&[("n1", draining(Some(NOW + HOUR)))]);
    let plan = world.reconcile();
    assert!(plan.is_empty());
    assert_eq!(plan.wake_at, Some(NOW + HOUR));
    world.now = NOW + 2 * HOUR;
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            stop: 1,
            ..Default::default()
        },
    );
    assert_eq!(plan.stop[0].description, descriptions::NODE_TAINTED);
    assert_eq!(plan.desired_tg_updates["web"].migrate, 1);
    world.apply_and_settle(&plan);
}

#[test]
fn failed_system_allocation_is_replaced_on_its_node() {
    let job = system();
    let existing = vec![alloc(&job, "web", 0).id("failed").failed_at(NOW - MIN)];
    let mut world = system_world(job, existing, &["n1"]);
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            place: 1,
            ..Default::default()
        },
    );
    assert_eq!(plan.place[0].previous_alloc, Some(AllocId::new("failed")));
    assert_eq!(plan.place[0].node, Some(NodeId::new("n1")));
    world.apply_and_settle(&plan);
}

#[test]
fn sysbatch_does_not_run_again_where_it_completed() {
    let job = sysbatch();
    let existing = vec![alloc(&job, "web", 0).id("done").on("n1").complete()];
    let mut world = system_world(job.clone(), existing.clone(), &["n1", "n2"]);
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            place: 1,
            ..Default::default()
        },
    );
    assert_eq!(plan.place[0].node, Some(NodeId::new("n2")));
    world.apply_and_settle(&plan);

    // Everything done: the sysbatch job is dead.
    let done = vec![
        existing[0].clone(),
        alloc(&job, "web", 0).id("done2").on("n2").complete(),
    ];
    let plan = run_system(&job, &done, &["n1", "n2"]);
    assert!(plan.is_empty());
    assert_eq!(plan.job_status, JobStatus::Dead);

    // A new version with changed tasks runs again everywhere.
    let v2 = next_version(&job, |j| {
        app(j).env.insert("RUN".into(), "2".into());
    });
    let plan = run_system(&v2, &done, &["n1", "n2"]);
    assert_plan(
        &plan,
        Expect {
            destructive: 2,
            ..Default::default()
        },
    );
}

fn run_system(
    job: &caravan_schemas::job::Job,
    allocs: &[caravan_schemas::alloc::Allocation],
    eligible: &[&str],
) -> crate::reconcile::Plan {
    let eligible: Vec<NodeId> = eligible.iter().map(|n| NodeId::new(*n)).collect();
    let nodes = nodes(&[]);
    reconcile(&Input {
        job: Some(job),
        allocs,
        nodes: &nodes,
        eligible_nodes: &eligible,
        now: NOW,
        deployment: None,
        new_deployment_id: &caravan_schemas::DeploymentId::new(NEW_DEPLOYMENT),
    })
}

// --- job status --------------------------------------------------------------------------------

#[test]
fn job_status_follows_nomad() {
    let job = service(2);
    // Nothing placed yet, work outstanding (e.g. a blocked evaluation).
    assert_eq!(job_status(Some(&job), &[], true), JobStatus::Pending);
    // Allocations exist and run (pending on the client counts).
    let pending = vec![alloc(&job, "web", 0).client(ClientStatus::Pending)];
    assert_eq!(job_status(Some(&job), &pending, false), JobStatus::Running);
    // All terminal.
    let done = vec![alloc(&job, "web", 0).complete()];
    assert_eq!(job_status(Some(&job), &done, false), JobStatus::Dead);
    // A delayed reschedule keeps it pending.
    let failed = vec![alloc(&job, "web", 0).failed_at(NOW)];
    assert_eq!(job_status(Some(&job), &failed, true), JobStatus::Pending);
    // Purged.
    assert_eq!(job_status(None, &pending, false), JobStatus::Dead);

    // Periodic and parameterized parents, and system jobs, run until stopped.
    let mut periodic = batch(1);
    periodic.periodic = Some(caravan_schemas::job::PeriodicConfig {
        enabled: true,
        spec: "*/5 * * * *".into(),
        ..Default::default()
    });
    assert_eq!(job_status(Some(&periodic), &[], false), JobStatus::Running);
    let plan = run(Some(&periodic), &[], &nodes(&[]));
    assert!(plan.is_empty());
    assert_eq!(plan.job_status, JobStatus::Running);
    periodic.stop = true;
    assert_eq!(job_status(Some(&periodic), &[], false), JobStatus::Dead);
    let mut parameterized = batch(1);
    parameterized.parameterized_job = Some(Default::default());
    assert_eq!(
        job_status(Some(&parameterized), &[], false),
        JobStatus::Running
    );
    parameterized.dispatched = true;
    parameterized.parent_id = "parent".into();
    assert_eq!(
        job_status(Some(&parameterized), &[], false),
        JobStatus::Dead
    );
    assert_eq!(job_status(Some(&system()), &[], false), JobStatus::Running);

    // A failed service with nothing left to try is dead.
    let exhausted = with_reschedule(service(1), policy(1, HOUR, SEC, "constant", 0, false));
    let failed = vec![
        alloc(&exhausted, "web", 0)
            .failed_at(NOW - MIN)
            .rescheduled(&[(NOW - 2 * MIN, SEC)]),
    ];
    let plan = run(Some(&exhausted), &failed, &nodes(&[]));
    assert!(plan.is_empty());
    assert_eq!(plan.job_status, JobStatus::Dead);
}

#[test]
fn plan_status_before_any_allocation() {
    let plan = run(Some(&service(0)), &[], &nodes(&[]));
    assert!(plan.is_empty());
    assert_eq!(plan.job_status, JobStatus::Dead);
    assert_eq!(JobStatus::Pending.to_string(), "pending");
}
