//! Deployments, one expectation test per scenario: the reconciler's plans and the watcher's
//! verdicts as a job's versions roll out, applied to a [`World`] as the controller loops must.

use super::fixtures::*;
use crate::deployment::{self, DeploymentError};
use crate::reconcile::{DesiredUpdates, PlaceReason, Plan, descriptions};
use caravan_schemas::alloc::{Allocation, ClientStatus, DesiredStatus};
use caravan_schemas::deployment::{DeploymentStatus, descriptions as ddesc};
use caravan_schemas::job::{Job, UpdateStrategy};
use caravan_schemas::time::Timestamp;
use caravan_schemas::{AllocId, DeploymentId, Duration};

/// A service job of 3 whose update block is the default one edited by `edit`.
fn job_with(edit: impl FnOnce(&mut UpdateStrategy)) -> Job {
    let mut job = service(3);
    let mut update = caravan_schemas::canonical::update_strategy();
    edit(&mut update);
    job.update = Some(update.clone());
    web(&mut job).update = Some(update);
    job
}

/// The seed walkthrough's update block: one at a time, one canary, manual promotion.
fn canary_job() -> Job {
    job_with(|u| {
        u.max_parallel = 1;
        u.canary = 1;
        u.min_healthy_time = Duration::from_secs(10);
        u.auto_revert = false;
        u.auto_promote = false;
    })
}

/// `job` with a new image: every allocation must be replaced.
fn new_image(job: &Job, image: &str) -> Job {
    next_version(job, |j| {
        app(j).config.insert("image".into(), image.into());
    })
}

/// A world where `job`'s first version was placed, turned healthy, and its deployment
/// succeeded (so the version is stable).
fn settled(job: Job) -> World {
    settled_with(job, 3)
}

fn settled_with(job: Job, count: usize) -> World {
    let version = job.version;
    let mut world = World::new(Some(job), vec![], nodes(&[]));
    let plan = world.reconcile();
    assert_eq!(plan.place.len(), count);
    let first = plan
        .deployment
        .as_ref()
        .expect("the first version is deployed");
    assert_eq!(
        first.task_groups["web"].desired_total,
        i32::try_from(count).unwrap()
    );
    let created = world.apply_and_settle(&plan);
    world.make_healthy(&created);
    let out = world.watch();
    assert_eq!(out.stable_version, Some(version));
    assert_eq!(
        world.deployment().unwrap().status,
        DeploymentStatus::Successful
    );
    assert!(world.versions[0].stable);
    let again = world.reconcile();
    assert!(
        again.is_empty() && !again.changes_deployments(),
        "{again:#?}"
    );
    world
}

/// The live allocations desired to run, by job version.
fn running_versions(world: &World) -> Vec<u64> {
    let mut v: Vec<u64> = world
        .allocs
        .iter()
        .filter(|a| a.desired_status == DesiredStatus::Run && !a.is_terminal())
        .map(|a| a.job.as_ref().map_or(0, |j| j.version))
        .collect();
    v.sort_unstable();
    v
}

fn alloc_by_id<'w>(world: &'w World, id: &AllocId) -> &'w Allocation {
    world.allocs.iter().find(|a| &a.id == id).unwrap()
}

/// Promotes the latest deployment by hand, as `deployment promote` and its loop would.
fn promote(world: &mut World) -> Result<(), DeploymentError> {
    let d = world.deployment().unwrap().clone();
    let done = deployment::promote(&d, &world.allocs, None, world.now)?;
    world.apply_watch(&deployment::WatchOutcome {
        deployment: Some(done.deployment),
        promoted_canaries: done.promoted_canaries,
        ..Default::default()
    });
    Ok(())
}

/// Reconcile, apply, let the new allocations turn healthy, watch; until nothing changes.
/// Returns how many plans it took.
fn roll_to_the_end(world: &mut World) -> usize {
    for step in 0..20 {
        let plan = world.reconcile();
        if plan.is_empty() && !plan.changes_deployments() {
            let proven = world.unproven();
            if proven.is_empty() {
                world.watch();
                return step;
            }
        }
        world.apply_and_settle(&plan);
        let fresh = world.unproven();
        world.make_healthy(&fresh);
        world.watch();
    }
    panic!("no end to the rollout: {:#?}", world.deployment());
}

// --- rolling updates -------------------------------------------------------------------------------

#[test]
fn rolling_update_with_max_parallel_1() {
    let v1 = job_with(|u| u.max_parallel = 1);
    let mut world = settled(v1.clone());
    let v2 = new_image(&v1, "redis:8");
    world.register(v2);

    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            destructive: 1,
            ..Default::default()
        },
    );
    let d = plan
        .deployment
        .as_ref()
        .expect("a deployment for version 2");
    assert_eq!(d.id, DeploymentId::new("d2"));
    assert_eq!(d.job_version, 2);
    assert_eq!(d.job_spec_modify_index, 20);
    assert_eq!(d.status, DeploymentStatus::Running);
    assert_eq!(d.status_description, ddesc::RUNNING);
    let web = &d.task_groups["web"];
    assert_eq!((web.desired_total, web.desired_canaries), (3, 0));
    assert_eq!(web.progress_deadline, Duration::from_mins(10));
    assert_eq!(
        web.require_progress_by,
        Timestamp::from_unix_nanos(NOW + 10 * MIN)
    );
    assert!(plan.deployment_updates.is_empty(), "d1 already succeeded");
    assert_eq!(plan.deployment_id, Some(DeploymentId::new("d2")));

    let mut replaced = Vec::new();
    for round in 0..3 {
        let plan = world.reconcile();
        assert_eq!(plan.destructive_update.len(), 1, "round {round}: {plan:#?}");
        replaced.push(plan.destructive_update[0].alloc_id.clone());
        let created = world.apply_and_settle(&plan);
        assert_eq!(
            alloc_by_id(&world, &created[0]).deployment_id,
            DeploymentId::new("d2")
        );
        // One in flight: nothing more until it is healthy.
        assert!(world.reconcile().is_empty());
        world.now += 15 * SEC;
        world.make_healthy(&created);
        let out = world.watch();
        let d = world.deployment().unwrap();
        assert_eq!(d.task_groups["web"].healthy_allocs, round + 1);
        if round < 2 {
            assert_eq!(d.status, DeploymentStatus::Running);
            assert_eq!(out.stable_version, None);
        } else {
            assert_eq!(d.status, DeploymentStatus::Successful);
            assert_eq!(d.status_description, ddesc::SUCCESSFUL);
            assert_eq!(out.stable_version, Some(2));
        }
    }
    assert_eq!(
        replaced,
        [
            AllocId::new("new-1"),
            AllocId::new("new-2"),
            AllocId::new("new-3")
        ]
    );
    assert!(world.job.as_ref().unwrap().stable);
    assert_eq!(running_versions(&world), [2, 2, 2]);
    let plan = world.reconcile();
    assert!(plan.is_empty() && !plan.changes_deployments());
}

#[test]
fn rolling_update_with_max_parallel_2() {
    let v1 = job_with(|u| u.max_parallel = 2);
    let mut world = settled(v1.clone());
    world.register(new_image(&v1, "redis:8"));

    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            destructive: 2,
            ..Default::default()
        },
    );
    let created = world.apply_and_settle(&plan);
    assert_eq!(running_versions(&world), [1, 2, 2]);

    // One of the two turns healthy: one more slot, for the last one.
    world.make_healthy(&created[..1]);
    world.watch();
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            destructive: 1,
            ..Default::default()
        },
    );
    assert!(plan.deployment.is_none(), "the same deployment goes on");
    assert_eq!(plan.deployment_id, Some(DeploymentId::new("d2")));
    roll_to_the_end(&mut world);
    assert_eq!(
        world.deployment().unwrap().status,
        DeploymentStatus::Successful
    );
    assert_eq!(running_versions(&world), [2, 2, 2]);
}

// --- canaries -----------------------------------------------------------------------------------

/// The seed walkthrough up to the canary: v1 settled, v2 registered, its canary placed.
fn canary_placed() -> (World, AllocId) {
    let v1 = canary_job();
    let mut world = settled(v1.clone());
    world.register(new_image(&v1, "redis:8"));
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            place: 1,
            ..Default::default()
        },
    );
    let canary = &plan.place[0];
    assert!(canary.canary);
    assert_eq!(canary.reason, PlaceReason::Canary);
    assert_eq!(
        canary.name, "example.web[0]",
        "named after an allocation it may replace"
    );
    assert_eq!(canary.previous_alloc, None, "it replaces nothing yet");
    assert_eq!(canary.job_version, None);
    assert_eq!(
        plan.desired_tg_updates["web"],
        DesiredUpdates {
            canary: 1,
            ignore: 3,
            ..Default::default()
        }
    );
    let d = plan.deployment.as_ref().unwrap();
    assert_eq!(d.task_groups["web"].desired_canaries, 1);
    assert_eq!(d.task_groups["web"].desired_total, 3);
    assert_eq!(d.status_description, ddesc::RUNNING_NEEDS_PROMOTION);
    let created = world.apply_and_settle(&plan);
    (world, created[0].clone())
}

#[test]
fn canary_1_of_3_waits_for_promotion() {
    let (mut world, canary) = canary_placed();
    // Four allocations: three of version 1, the canary of version 2.
    assert_eq!(running_versions(&world), [1, 1, 1, 2]);
    let c = alloc_by_id(&world, &canary);
    assert!(c.is_canary());
    assert_eq!(c.deployment_id, DeploymentId::new("d2"));

    // Not healthy yet: promotion is refused, as Nomad refuses it.
    let err = promote(&mut world).unwrap_err();
    assert_eq!(
        err.to_string(),
        "1 error occurred:\n\t* Task group \"web\" has 0/1 healthy allocations\n\n"
    );

    // Healthy: the deployment records it and waits; the reconciler does nothing more.
    world.now += 12 * SEC;
    world.make_healthy(std::slice::from_ref(&canary));
    let out = world.watch();
    assert!(out.promoted_canaries.is_empty());
    let d = world.deployment().unwrap();
    assert_eq!(d.status, DeploymentStatus::Running);
    assert_eq!(d.status_description, ddesc::RUNNING_NEEDS_PROMOTION);
    assert_eq!(
        d.task_groups["web"].placed_canaries,
        std::slice::from_ref(&canary)
    );
    assert_eq!(d.task_groups["web"].healthy_allocs, 1);
    let plan = world.reconcile();
    assert!(plan.is_empty() && !plan.changes_deployments(), "{plan:#?}");
    assert_eq!(running_versions(&world), [1, 1, 1, 2]);

    // Even past the progress deadline: a deployment waiting for manual promotion with healthy
    // canaries does not fail.
    world.now += 30 * MIN;
    world.watch();
    assert_eq!(
        world.deployment().unwrap().status,
        DeploymentStatus::Running
    );
}

#[test]
fn promotion_replaces_the_rest_at_the_rollouts_pace() {
    let (mut world, canary) = canary_placed();
    world.make_healthy(std::slice::from_ref(&canary));
    world.watch();
    promote(&mut world).unwrap();
    let d = world.deployment().unwrap();
    assert!(d.task_groups["web"].promoted);
    assert_eq!(d.status_description, ddesc::RUNNING);
    assert!(!alloc_by_id(&world, &canary).is_canary(), "promoted");

    // The old allocation the canary stands for goes; the next one is replaced.
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            stop: 1,
            destructive: 1,
            ..Default::default()
        },
    );
    let stopped = alloc_by_id(&world, &plan.stop[0].alloc_id);
    assert_eq!(stopped.name, "example.web[0]");
    assert_eq!(stopped.job.as_ref().unwrap().version, 1);
    assert_eq!(plan.stop[0].description, descriptions::NOT_NEEDED);
    let replaced = alloc_by_id(&world, &plan.destructive_update[0].alloc_id);
    assert_eq!(replaced.name, "example.web[1]");
    let created = world.apply_and_settle(&plan);
    assert_eq!(running_versions(&world), [1, 2, 2]);
    world.make_healthy(&created);
    world.watch();
    let plan = world.reconcile();
    assert_eq!(plan.destructive_update.len(), 1);
    let replaced = alloc_by_id(&world, &plan.destructive_update[0].alloc_id);
    assert_eq!(replaced.name, "example.web[2]");
    let created = world.apply_and_settle(&plan);
    world.make_healthy(&created);
    let out = world.watch();

    // Three of version 2 running, three of version 1 stopped, and done.
    assert_eq!(out.stable_version, Some(2));
    let d = world.deployment().unwrap();
    assert_eq!(d.status, DeploymentStatus::Successful);
    assert_eq!(d.status_description, "Deployment completed successfully");
    assert_eq!(running_versions(&world), [2, 2, 2]);
    let stopped_v1 = world
        .allocs
        .iter()
        .filter(|a| {
            a.desired_status == DesiredStatus::Stop
                && a.job.as_ref().is_some_and(|j| j.version == 1)
        })
        .count();
    assert_eq!(stopped_v1, 3);
    let plan = world.reconcile();
    assert!(plan.is_empty() && !plan.changes_deployments());
}

#[test]
fn auto_promote_promotes_once_the_canaries_are_healthy() {
    let v1 = job_with(|u| {
        u.max_parallel = 1;
        u.canary = 2;
        u.auto_promote = true;
    });
    let mut world = settled(v1.clone());
    world.register(new_image(&v1, "redis:8"));
    let plan = world.reconcile();
    assert_eq!(plan.place.len(), 2);
    assert!(plan.place.iter().all(|p| p.canary));
    assert_eq!(placed_indexes(&plan), [0, 1]);
    assert_eq!(
        plan.deployment.as_ref().unwrap().status_description,
        ddesc::RUNNING_AUTO_PROMOTION
    );
    let canaries = world.apply_and_settle(&plan);
    assert_eq!(running_versions(&world), [1, 1, 1, 2, 2], "count + canary");

    world.make_healthy(&canaries[..1]);
    assert!(world.watch().promoted_canaries.is_empty(), "one of two");
    world.make_healthy(&canaries[1..]);
    let out = world.watch();
    assert_eq!(out.promoted_canaries, canaries);
    assert!(world.deployment().unwrap().task_groups["web"].promoted);

    // The two old allocations the canaries stand for go, and the last is replaced.
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            stop: 2,
            destructive: 1,
            ..Default::default()
        },
    );
    roll_to_the_end(&mut world);
    assert_eq!(
        world.deployment().unwrap().status,
        DeploymentStatus::Successful
    );
    assert_eq!(running_versions(&world), [2, 2, 2]);
}

#[test]
fn more_canaries_than_count_complete_after_promotion() {
    let v1 = job_with(|u| {
        u.max_parallel = 1;
        u.canary = 2;
    });
    let v1 = next_version(&v1, |j| web(j).count = 1);
    let mut world = settled_with(v1.clone(), 1);
    world.register(new_image(&v1, "redis:8"));
    let plan = world.reconcile();
    // One named after the allocation it may replace, one past the count.
    assert_eq!(placed_indexes(&plan), [0, 1]);
    let canaries = world.apply_and_settle(&plan);
    world.make_healthy(&canaries);
    world.watch();
    promote(&mut world).unwrap();

    // The old allocation and the surplus canary go; the deployment is complete.
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            stop: 2,
            ..Default::default()
        },
    );
    assert!(stopped_ids(&plan).contains(&canaries[1].as_str()));
    world.apply_and_settle(&plan);
    let out = world.watch();
    assert_eq!(out.stable_version, Some(3));
    assert_eq!(running_versions(&world), [3]);
}

#[test]
fn an_unhealthy_canary_fails_the_deployment_and_is_stopped() {
    // No progress deadline: the first unhealthy allocation fails the deployment.
    let v1 = job_with(|u| {
        u.max_parallel = 1;
        u.canary = 1;
        u.progress_deadline = Duration::ZERO;
    });
    let mut world = settled(v1.clone());
    world.register(new_image(&v1, "redis:8"));
    let plan = world.reconcile();
    let canary = world.apply_and_settle(&plan).remove(0);

    world.make_unhealthy(std::slice::from_ref(&canary));
    // The reconciler holds: nothing is replaced while the canary is unhealthy.
    assert!(world.reconcile().is_empty());
    let out = world.watch();
    assert_eq!(out.revert_to, None);
    let d = world.deployment().unwrap();
    assert_eq!(d.status, DeploymentStatus::Failed);
    assert_eq!(d.status_description, ddesc::FAILED_ALLOCATIONS);

    // The failed deployment's canary is stopped; nothing else moves.
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            stop: 1,
            ..Default::default()
        },
    );
    assert_eq!(plan.stop[0].alloc_id, canary);
    assert_eq!(plan.stop[0].description, descriptions::NOT_NEEDED);
    assert!(
        plan.deployment.is_none(),
        "a failed deployment is not started again"
    );
    assert_eq!(plan.deployment_id, None);
    world.apply_and_settle(&plan);
    assert_eq!(running_versions(&world), [1, 1, 1]);
}

#[test]
fn auto_revert_restores_the_stable_version() {
    let v1 = job_with(|u| {
        u.max_parallel = 1;
        u.auto_revert = true;
        u.progress_deadline = Duration::ZERO;
    });
    let mut world = settled(v1.clone());
    let v2 = new_image(&v1, "redis:broken");
    world.register(v2);
    let plan = world.reconcile();
    let created = world.apply_and_settle(&plan);

    // The new version's first allocation turns unhealthy: failed, back to version 1.
    world.make_unhealthy(&created);
    let out = world.watch();
    assert_eq!(out.revert_to, Some(1));
    let failed = world.deployments[1].clone();
    assert_eq!(failed.status, DeploymentStatus::Failed);
    assert_eq!(
        failed.status_description,
        "Failed due to unhealthy allocations - rolling back to job version 1"
    );
    // The watcher re-registered version 1's spec as version 3.
    let job = world.job.clone().unwrap();
    assert_eq!(job.version, 3);
    assert!(deployment::same_spec(&job, &v1));

    // Version 3 rolls out: the two untouched allocations are updated in place, the broken
    // one is replaced.
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            inplace: 2,
            destructive: 1,
            ..Default::default()
        },
    );
    assert_eq!(plan.destructive_update[0].alloc_id, created[0]);
    assert_eq!(plan.deployment.as_ref().unwrap().job_version, 3);
    roll_to_the_end(&mut world);
    let d = world.deployment().unwrap();
    assert_eq!((d.job_version, d.status), (3, DeploymentStatus::Successful));
    assert_eq!(running_versions(&world), [3, 3, 3]);
    assert!(world.job.as_ref().unwrap().stable);
}

#[test]
fn progress_deadline_fails_a_stalled_rollout() {
    let v1 = job_with(|u| {
        u.max_parallel = 1;
        u.progress_deadline = Duration::from_mins(5);
    });
    let mut world = settled(v1.clone());
    world.register(new_image(&v1, "redis:8"));
    let plan = world.reconcile();
    world.apply_and_settle(&plan);

    // The new allocation never turns healthy.
    let out = world.watch();
    assert_eq!(out.wake_at, Some(NOW + 5 * MIN));
    world.now = NOW + 5 * MIN;
    world.watch();
    let d = world.deployment().unwrap();
    assert_eq!(d.status, DeploymentStatus::Failed);
    assert_eq!(d.status_description, ddesc::PROGRESS_DEADLINE);
    assert_eq!(d.task_groups["web"].healthy_allocs, 0);

    // Nothing more is rolled out, even once it turns healthy.
    let fresh = world.unproven();
    world.make_healthy(&fresh);
    let plan = world.reconcile();
    assert!(plan.is_empty() && !plan.changes_deployments(), "{plan:#?}");
    assert_eq!(running_versions(&world), [1, 1, 2]);
}

#[test]
fn a_newer_version_cancels_the_running_deployment() {
    let (mut world, canary) = canary_placed();
    let v2 = world.job.clone().unwrap();
    world.register(new_image(&v2, "redis:9"));

    let plan = world.reconcile();
    assert_eq!(plan.deployment_updates.len(), 1);
    let cancel = &plan.deployment_updates[0];
    assert_eq!(cancel.deployment_id, DeploymentId::new("d2"));
    assert_eq!(cancel.status, DeploymentStatus::Cancelled);
    assert_eq!(cancel.description, "Cancelled due to newer version of job");
    // Its canary is stopped; version 3 gets its own deployment and canary.
    assert_eq!(stopped_ids(&plan), [canary.as_str()]);
    assert_eq!(plan.place.len(), 1);
    assert!(plan.place[0].canary);
    let d = plan.deployment.as_ref().unwrap();
    assert_eq!((d.id.as_str(), d.job_version), ("d3", 3));
    world.apply_and_settle(&plan);
    assert_eq!(world.deployments[1].status, DeploymentStatus::Cancelled);
    assert_eq!(running_versions(&world), [1, 1, 1, 3]);
}

#[test]
fn stopping_the_job_cancels_its_deployment() {
    let v1 = job_with(|u| u.max_parallel = 1);
    let mut world = settled(v1.clone());
    let v2 = new_image(&v1, "redis:8");
    world.register(v2.clone());
    let plan = world.reconcile();
    world.apply_and_settle(&plan);
    world.register(next_version(&v2, |j| j.stop = true));
    let plan = world.reconcile();
    assert_eq!(plan.deployment_updates.len(), 1);
    assert_eq!(
        plan.deployment_updates[0].description,
        "Cancelled because job is stopped"
    );
    assert_eq!(plan.stop.len(), 3);
    assert!(plan.deployment.is_none());
    world.apply_and_settle(&plan);
}

#[test]
fn a_count_change_is_applied_in_place() {
    let v1 = job_with(|u| u.max_parallel = 1);
    let mut world = settled(v1.clone());
    world.register(next_version(&v1, |j| web(j).count = 4));
    let plan = world.reconcile();
    assert_plan(
        &plan,
        Expect {
            place: 1,
            inplace: 3,
            ..Default::default()
        },
    );
    // As Nomad does, the new version still gets a deployment: the updated allocations join it
    // and prove healthy again, nothing is replaced.
    let d = plan.deployment.as_ref().unwrap();
    assert_eq!(d.task_groups["web"].desired_total, 4);
    world.apply_and_settle(&plan);
    assert!(
        world.allocs[..3].iter().all(|a| {
            a.deployment_id == DeploymentId::new("d2") && a.deployment_status.is_none()
        })
    );
    let fresh = world.unproven();
    assert_eq!(fresh.len(), 4);
    world.make_healthy(&fresh);
    world.watch();
    let plan = world.reconcile();
    assert!(plan.is_empty() && !plan.changes_deployments(), "{plan:#?}");
    assert_eq!(
        world.deployment().unwrap().status,
        DeploymentStatus::Successful
    );
    assert_eq!(running_versions(&world), [2, 2, 2, 2]);
    assert!(
        world.allocs.iter().all(|a| a.next_allocation.is_empty()),
        "no allocation was replaced"
    );
}

#[test]
fn a_paused_deployment_makes_no_progress_until_resumed() {
    let v1 = job_with(|u| u.max_parallel = 1);
    let mut world = settled(v1.clone());
    world.register(new_image(&v1, "redis:8"));
    let plan = world.reconcile();
    let created = world.apply_and_settle(&plan);
    let paused = deployment::pause(world.deployment().unwrap(), true, world.now).unwrap();
    *world.deployments.last_mut().unwrap() = paused;
    world.make_healthy(&created);
    world.watch();
    assert_eq!(world.deployment().unwrap().status, DeploymentStatus::Paused);
    assert!(world.reconcile().is_empty());

    let resumed = deployment::pause(world.deployment().unwrap(), false, world.now).unwrap();
    *world.deployments.last_mut().unwrap() = resumed;
    assert_eq!(world.reconcile().destructive_update.len(), 1);
}

#[test]
fn a_failed_allocation_of_a_running_deployment_waits_for_the_watcher() {
    let v1 = job_with(|u| u.max_parallel = 1);
    let mut world = settled(v1.clone());
    world.register(new_image(&v1, "redis:8"));
    let plan = world.reconcile();
    let created = world.apply_and_settle(&plan);
    let id = created[0].clone();
    let now = world.now;
    let failed = alloc_by_id(&world, &id).clone().failed_at(now);
    *world.find(&id) = failed;
    world.make_unhealthy(std::slice::from_ref(&id));
    world.find(&id).client_status = ClientStatus::Failed;

    // Held: the deployment decides first.
    let plan = world.reconcile();
    assert!(plan.is_empty(), "{plan:#?}");
    let out = world.watch();
    assert_eq!(
        out.allow_reschedule,
        std::slice::from_ref(&id),
        "a progress deadline to try again"
    );
    assert_eq!(
        world.deployment().unwrap().status,
        DeploymentStatus::Running
    );

    // Let go: rescheduled once its delay (30s for services) passed, and the replacement
    // joins the deployment.
    world.now += 31 * SEC;
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
    assert_eq!(plan.deployment_id, Some(DeploymentId::new("d2")));
}

#[test]
fn a_lost_allocation_keeps_its_version_while_canaries_wait() {
    let (mut world, canary) = canary_placed();
    // Everything was placed on the spare node: move the canary away, then lose that node.
    world.find(&canary).node_id = "n2".into();
    world.nodes.insert("spare".into(), down());
    world.spare = "n3".into();
    let plan = world.reconcile();
    assert_eq!(plan.stop.len(), 3);
    assert_eq!(plan.place.len(), 3);
    assert!(
        plan.place
            .iter()
            .all(|p| { p.reason == PlaceReason::Lost && p.job_version == Some(1) && !p.canary })
    );
    world.apply_and_settle(&plan);
    assert_eq!(running_versions(&world), [1, 1, 1, 2]);
    let replacements: Vec<&Allocation> = world
        .allocs
        .iter()
        .filter(|a| !a.is_terminal() && a.job.as_ref().is_some_and(|j| j.version == 1))
        .collect();
    assert!(replacements.iter().all(|a| a.deployment_id.is_empty()));
}

#[test]
fn a_lost_canary_is_stopped_and_placed_again() {
    let (mut world, canary) = canary_placed();
    world.find(&canary).node_id = "n2".into();
    world.nodes.insert("n2".into(), down());
    let plan = world.reconcile();
    assert_eq!(stopped_ids(&plan), [canary.as_str()]);
    assert_eq!(plan.stop[0].client_status, Some(ClientStatus::Lost));
    assert_eq!(plan.place.len(), 1);
    assert!(plan.place[0].canary);
    assert_eq!(plan.place[0].name, "example.web[0]");
}

#[test]
fn scale_up_waits_for_the_canaries() {
    let (mut world, canary) = canary_placed();
    let v2 = world.job.clone().unwrap();
    // A new version with another image and a larger count: only its canary is placed.
    let bigger = next_version(&v2, |j| {
        web(j).count = 5;
        app(j).config.insert("image".into(), "redis:9".into());
    });
    world.register(bigger);
    let plan = world.reconcile();
    // The old deployment's canary goes; a new canary comes; the two new names wait.
    assert_eq!(stopped_ids(&plan), [canary.as_str()]);
    assert_eq!(plan.place.len(), 1);
    assert!(plan.place[0].canary);
    let d = plan.deployment.as_ref().unwrap();
    assert_eq!(d.task_groups["web"].desired_total, 5);
}

#[test]
fn a_new_version_replaces_what_does_not_serve_first() {
    let v1 = job_with(|u| u.max_parallel = 1);
    let mut world = settled(v1.clone());
    // web[2] went bad after its deployment succeeded.
    let broken = world.allocs[2].id.clone();
    world.make_unhealthy(std::slice::from_ref(&broken));
    world.register(new_image(&v1, "redis:8"));
    let plan = world.reconcile();
    assert_eq!(plan.destructive_update.len(), 1);
    assert_eq!(plan.destructive_update[0].alloc_id, broken);
}

#[test]
fn scaling_down_sheds_unhealthy_allocations_first() {
    let v1 = job_with(|u| u.max_parallel = 1);
    let mut world = settled(v1.clone());
    let broken = world.allocs[0].id.clone();
    world.make_unhealthy(std::slice::from_ref(&broken));
    world.register(next_version(&v1, |j| web(j).count = 2));
    let plan = world.reconcile();
    assert_eq!(stopped_ids(&plan), [broken.as_str()]);
    assert_eq!(plan.inplace_update.len(), 2);
}

#[test]
fn the_first_version_of_a_job_without_update_block_has_no_deployment() {
    let job = with_max_parallel(service(2), None);
    let plan = run(Some(&job), &[], &nodes(&[]));
    assert_eq!(plan.place.len(), 2);
    assert!(plan.deployment.is_none());
    assert_eq!(plan.deployment_id, None);
    let batch = batch(2);
    assert!(run(Some(&batch), &[], &nodes(&[])).deployment.is_none());
}

#[test]
fn placements_of_a_fresh_job_join_its_first_deployment() {
    let plan: Plan = run(Some(&service(2)), &[], &nodes(&[]));
    let d = plan.deployment.as_ref().unwrap();
    assert_eq!(d.id, DeploymentId::new(NEW_DEPLOYMENT));
    assert_eq!(plan.deployment_id, Some(d.id.clone()));
    assert_eq!(d.task_groups["web"].desired_total, 2);
    assert_eq!(d.status_description, ddesc::RUNNING);
}
