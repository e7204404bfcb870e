//! The watcher and the user's actions, one rule per test, on hand-built deployments.

use super::*;
use crate::reconcile::tests::fixtures::{self as fx, AllocExt, MIN, NOW, SEC};
use caravan_schemas::alloc::{AllocDeploymentStatus, ClientStatus, DesiredStatus};
use caravan_schemas::deployment::DeploymentState;
use caravan_schemas::job::UpdateStrategy;
use caravan_schemas::{Duration, JobId};
use std::collections::BTreeMap;

const D: &str = "d1";

/// Version 3 of a service job, count 3, `max_parallel = 1`, `canary`, a 10 minute progress
/// deadline.
fn job(canary: i32) -> Job {
    let mut job = fx::service(3);
    let update = UpdateStrategy {
        max_parallel: 1,
        canary,
        progress_deadline: Duration::from_mins(10),
        ..caravan_schemas::canonical::update_strategy()
    };
    job.update = Some(update.clone());
    fx::web(&mut job).update = Some(update);
    job.version = 3;
    job
}

fn state(canaries: i32) -> DeploymentState {
    DeploymentState {
        progress_deadline: Duration::from_mins(10),
        require_progress_by: Timestamp::from_unix_nanos(NOW + 10 * MIN),
        desired_canaries: canaries,
        desired_total: 3,
        ..Default::default()
    }
}

/// The running deployment of `job`'s version, for group `web`.
fn deployment(job: &Job, web: DeploymentState) -> Deployment {
    let mut d = Deployment {
        id: D.into(),
        namespace: job.namespace.clone(),
        job_id: job.id.clone(),
        job_version: job.version,
        job_create_index: job.create_index,
        task_groups: BTreeMap::from([("web".to_owned(), web)]),
        status: DeploymentStatus::Running,
        create_time: NOW - 5 * MIN,
        modify_time: NOW - 5 * MIN,
        ..Default::default()
    };
    d.status_description = running_description(&d).to_owned();
    d
}

/// `web[index]` of `job` in deployment `d1`, running, health not decided.
fn member(job: &Job, index: u32) -> Allocation {
    fx::alloc(job, "web", index)
        .id(&format!("m{index}"))
        .with(|a| a.deployment_id = D.into())
}

fn health(healthy: bool, at: i64, canary: bool) -> impl FnOnce(&mut Allocation) {
    move |a: &mut Allocation| {
        a.deployment_status = Some(AllocDeploymentStatus {
            healthy: Some(healthy),
            timestamp: Timestamp::from_unix_nanos(at),
            canary,
            modify_index: 0,
        });
    }
}

fn canary(job: &Job, index: u32) -> Allocation {
    member(job, index).id(&format!("c{index}")).with(|a| {
        a.deployment_status = Some(AllocDeploymentStatus {
            canary: true,
            ..Default::default()
        });
    })
}

fn run_watch(
    d: &Deployment,
    job: &Job,
    allocs: &[Allocation],
    versions: &[Job],
    now: i64,
) -> WatchOutcome {
    watch(&WatchInput {
        deployment: d,
        job,
        allocs,
        versions,
        now,
    })
}

/// Versions 1..=3 of `job`; `stable` ones are marked so; version 2 has another image.
fn history(job: &Job, stable: &[u64]) -> Vec<Job> {
    (1..=job.version)
        .map(|v| {
            let mut j = job.clone();
            j.version = v;
            j.stable = stable.contains(&v);
            if v != job.version {
                fx::app(&mut j)
                    .config
                    .insert("image".into(), format!("redis:{v}").into());
            }
            j
        })
        .collect()
}

// --- counting and progress ---------------------------------------------------------------------

#[test]
fn watch_counts_the_deployments_allocations_and_finds_its_canaries() {
    let job = job(1);
    let d = deployment(&job, state(1));
    let allocs = vec![
        canary(&job, 0).with(health(true, NOW - MIN, true)),
        member(&job, 1).with(health(false, NOW - MIN, false)),
        member(&job, 2),
        // Another deployment's allocation is not counted.
        fx::alloc(&job, "web", 2)
            .id("other")
            .with(|a| a.deployment_id = "d0".into()),
    ];
    let out = run_watch(&d, &job, &allocs, &[], NOW);
    let next = out.deployment.expect("counters changed");
    let web = &next.task_groups["web"];
    assert_eq!(
        (web.placed_allocs, web.healthy_allocs, web.unhealthy_allocs),
        (3, 1, 1)
    );
    assert_eq!(web.placed_canaries, [AllocId::new("c0")]);
    assert_eq!(next.modify_time, NOW);
    assert_eq!(
        next.status,
        DeploymentStatus::Running,
        "m1 may be rescheduled"
    );
    assert_eq!(out.allow_reschedule, [AllocId::new("m1")]);
}

#[test]
fn a_newly_healthy_allocation_pushes_the_progress_deadline() {
    let job = job(0);
    let d = deployment(&job, state(0));
    let allocs = vec![member(&job, 0).with(health(true, NOW + 2 * MIN, false))];
    let out = run_watch(&d, &job, &allocs, &[], NOW + 2 * MIN);
    let next = out.deployment.expect("progress recorded");
    assert_eq!(
        next.task_groups["web"].require_progress_by,
        Timestamp::from_unix_nanos(NOW + 12 * MIN)
    );
    assert_eq!(out.wake_at, Some(NOW + 12 * MIN));
    assert_eq!(next.status, DeploymentStatus::Running);

    // A deadline that is not set yet starts with the first allocation.
    let mut unset = state(0);
    unset.require_progress_by = Timestamp::ZERO;
    let d = deployment(&job, unset);
    let out = run_watch(&d, &job, &[member(&job, 0)], &[], NOW);
    assert_eq!(
        out.deployment.unwrap().task_groups["web"].require_progress_by,
        Timestamp::from_unix_nanos(NOW + 10 * MIN)
    );
}

#[test]
fn progress_deadline_fails_the_deployment_and_reverts() {
    let job = job(0);
    let mut web = state(0);
    web.auto_revert = true;
    let d = deployment(&job, web);
    let allocs = vec![
        member(&job, 0).with(health(true, NOW - MIN, false)),
        member(&job, 1),
    ];
    let versions = history(&job, &[1]);

    // Before the deadline: wake up at it.
    let out = run_watch(&d, &job, &allocs, &versions, NOW + 5 * MIN);
    assert_eq!(out.wake_at, Some(NOW + 10 * MIN));
    assert!(out.revert_to.is_none());

    // At the deadline, 1 of 3 healthy: failed, back to stable version 1.
    let out = run_watch(&d, &job, &allocs, &versions, NOW + 10 * MIN);
    let next = out.deployment.expect("failed");
    assert_eq!(next.status, DeploymentStatus::Failed);
    assert_eq!(
        next.status_description,
        "Failed due to progress deadline - rolling back to job version 1"
    );
    assert_eq!(out.revert_to, Some(1));
    assert_eq!(out.wake_at, None);
    assert_eq!(out.stable_version, None);

    // The failed deployment is left alone from then on.
    assert_eq!(
        run_watch(&next, &job, &allocs, &versions, NOW + 20 * MIN),
        WatchOutcome::default()
    );
}

#[test]
fn the_deadline_spares_a_deployment_waiting_for_manual_promotion_or_paused() {
    let job = job(1);
    let d = deployment(&job, state(1));
    let allocs = vec![canary(&job, 0).with(health(true, NOW - 9 * MIN, true))];
    let out = run_watch(&d, &job, &allocs, &[], NOW + 11 * MIN);
    let next = out.deployment.expect("counters");
    assert_eq!(next.status, DeploymentStatus::Running);
    assert_eq!(
        next.status_description,
        descriptions::RUNNING_NEEDS_PROMOTION
    );
    assert!(out.promoted_canaries.is_empty(), "no auto_promote");

    let mut paused = deployment(&job, state(0));
    paused.status = DeploymentStatus::Paused;
    let out = run_watch(&paused, &job, &[member(&job, 0)], &[], NOW + 11 * MIN);
    assert_eq!(out.deployment.unwrap().status, DeploymentStatus::Paused);
    assert_eq!(out.wake_at, None, "a paused deployment has no deadline");
}

#[test]
fn an_unhealthy_allocation_fails_at_once_without_a_progress_deadline() {
    let job = job(0);
    let mut web = state(0);
    web.progress_deadline = Duration::ZERO;
    web.require_progress_by = Timestamp::ZERO;
    web.auto_revert = true;
    let d = deployment(&job, web);
    let allocs = vec![member(&job, 0).with(health(false, NOW, false))];

    let out = run_watch(&d, &job, &allocs, &history(&job, &[1, 2]), NOW);
    let next = out.deployment.unwrap();
    assert_eq!(next.status, DeploymentStatus::Failed);
    assert_eq!(
        next.status_description,
        "Failed due to unhealthy allocations - rolling back to job version 2"
    );
    assert_eq!(out.revert_to, Some(2));
    assert!(out.allow_reschedule.is_empty());

    // No stable version to go back to.
    let out = run_watch(&d, &job, &allocs, &history(&job, &[]), NOW);
    assert_eq!(
        out.deployment.unwrap().status_description,
        "Failed due to unhealthy allocations - no stable job version to auto revert to"
    );
    assert_eq!(out.revert_to, None);

    // The stable version has the very spec of the current job: no point reverting.
    let mut versions = history(&job, &[2]);
    versions[1] = Job {
        version: 2,
        stable: true,
        job_modify_index: 3,
        ..job.clone()
    };
    let out = run_watch(&d, &job, &allocs, &versions, NOW);
    assert_eq!(
        out.deployment.unwrap().status_description,
        "Failed due to unhealthy allocations - not rolling back to stable job version 2 as current job has same specification"
    );
    assert_eq!(out.revert_to, None);

    // Without auto_revert: just failed.
    let mut plain = d.clone();
    plain.task_groups.get_mut("web").unwrap().auto_revert = false;
    let out = run_watch(&plain, &job, &allocs, &history(&job, &[2]), NOW);
    assert_eq!(
        out.deployment.unwrap().status_description,
        descriptions::FAILED_ALLOCATIONS
    );
    assert_eq!(out.revert_to, None);
}

#[test]
fn with_a_progress_deadline_unhealthy_allocations_are_replaced_until_the_policy_is_spent() {
    let mut job = job(0);
    fx::web(&mut job).reschedule_policy =
        Some(fx::policy(1, 60 * MIN, 5 * SEC, "constant", 0, false));
    let d = deployment(&job, state(0));

    // First failure: the policy allows one reschedule; the deployment waits.
    let first = member(&job, 0)
        .failed_at(NOW - SEC)
        .with(health(false, NOW - SEC, false));
    let out = run_watch(&d, &job, std::slice::from_ref(&first), &[], NOW);
    assert_eq!(out.allow_reschedule, [AllocId::new("m0")]);
    assert_eq!(out.deployment.unwrap().status, DeploymentStatus::Running);

    // Already allowed, or already stopped: not listed again.
    let allowed = first
        .clone()
        .with(|a| a.desired_transition.reschedule = Some(true));
    let out = run_watch(&d, &job, std::slice::from_ref(&allowed), &[], NOW);
    assert!(out.allow_reschedule.is_empty());
    let stopped = first
        .clone()
        .stopped("alloc was rescheduled because it failed");
    let out = run_watch(&d, &job, std::slice::from_ref(&stopped), &[], NOW);
    assert!(out.allow_reschedule.is_empty());

    // Its replacement fails too, with the reschedule spent: the deployment fails now.
    let second = member(&job, 0)
        .id("m0b")
        .failed_at(NOW - SEC)
        .with(health(false, NOW - SEC, false))
        .rescheduled(&[(NOW - MIN, 5 * SEC)]);
    let out = run_watch(&d, &job, &[allowed, second], &[], NOW);
    let next = out.deployment.unwrap();
    assert_eq!(next.status, DeploymentStatus::Failed);
    assert_eq!(next.status_description, descriptions::FAILED_ALLOCATIONS);
    assert!(out.allow_reschedule.is_empty());
}

#[test]
fn auto_promote_once_every_canary_is_healthy() {
    let job = job(2);
    let mut web = state(2);
    web.auto_promote = true;
    let d = deployment(&job, web);
    assert_eq!(d.status_description, descriptions::RUNNING_AUTO_PROMOTION);
    let one_healthy = vec![
        canary(&job, 0).with(health(true, NOW, true)),
        canary(&job, 1),
    ];
    let out = run_watch(&d, &job, &one_healthy, &[], NOW);
    assert!(out.promoted_canaries.is_empty());
    assert!(!out.deployment.unwrap().task_groups["web"].promoted);

    let both = vec![
        canary(&job, 0).with(health(true, NOW, true)),
        canary(&job, 1).with(health(true, NOW, true)),
    ];
    let out = run_watch(&d, &job, &both, &[], NOW + MIN);
    assert_eq!(
        out.promoted_canaries,
        [AllocId::new("c0"), AllocId::new("c1")]
    );
    let next = out.deployment.unwrap();
    let web = &next.task_groups["web"];
    assert!(web.promoted);
    assert_eq!(
        web.require_progress_by,
        Timestamp::from_unix_nanos(NOW + 11 * MIN),
        "promotion restarts the deadline"
    );
    assert_eq!(next.status, DeploymentStatus::Running);
    assert_eq!(next.status_description, descriptions::RUNNING);
    assert_eq!(out.stable_version, None, "2 of 3 new allocations so far");
}

#[test]
fn success_once_every_group_has_its_healthy_allocations() {
    let job = job(0);
    let d = deployment(&job, state(0));
    let mut allocs: Vec<Allocation> = (0..3)
        .map(|i| member(&job, i).with(health(true, NOW, false)))
        .collect();
    // A healthy one that was stopped since does not count.
    allocs[2].desired_status = DesiredStatus::Stop;
    allocs[2].client_status = ClientStatus::Complete;
    let out = run_watch(&d, &job, &allocs, &[], NOW);
    assert_eq!(out.deployment.unwrap().status, DeploymentStatus::Running);
    assert_eq!(out.stable_version, None);

    allocs.push(member(&job, 2).id("m2b").with(health(true, NOW, false)));
    let out = run_watch(&d, &job, &allocs, &[], NOW);
    let next = out.deployment.unwrap();
    assert_eq!(next.status, DeploymentStatus::Successful);
    assert_eq!(next.status_description, descriptions::SUCCESSFUL);
    assert_eq!(out.stable_version, Some(3));
    assert_eq!(out.wake_at, None);
}

#[test]
fn a_deployment_for_another_job_version_only_gets_its_counters() {
    let job = job(0);
    let d = deployment(&job, state(0));
    let allocs: Vec<Allocation> = (0..3)
        .map(|i| member(&job, i).with(health(true, NOW, false)))
        .collect();
    let newer = Job {
        version: 4,
        ..job.clone()
    };
    let out = run_watch(&d, &newer, &allocs, &[], NOW + 20 * MIN);
    let next = out.deployment.unwrap();
    assert_eq!(
        next.status,
        DeploymentStatus::Running,
        "the reconciler cancels it"
    );
    assert_eq!(next.task_groups["web"].healthy_allocs, 3);
    assert_eq!(out.stable_version, None);
    assert_eq!(out.wake_at, None);
}

#[test]
fn an_unchanged_deployment_is_not_rewritten() {
    let job = job(0);
    let mut web = state(0);
    web.placed_allocs = 1;
    let d = deployment(&job, web);
    let out = run_watch(&d, &job, &[member(&job, 0)], &[], NOW);
    assert_eq!(out.deployment, None);
    assert_eq!(out.wake_at, Some(NOW + 10 * MIN));
}

// --- actions -------------------------------------------------------------------------------------

#[test]
fn promote_refuses_until_the_canaries_are_healthy() {
    let job = job(1);
    let d = deployment(&job, state(1));
    let allocs = vec![canary(&job, 0)];
    let err = promote(&d, &allocs, None, NOW).unwrap_err();
    assert_eq!(
        err.to_string(),
        "1 error occurred:\n\t* Task group \"web\" has 0/1 healthy allocations\n\n"
    );
    assert!(matches!(err, DeploymentError::UnhealthyCanaries(ref s) if s.len() == 1));

    let err = promote(&d, &allocs, Some(&["api".to_owned()]), NOW).unwrap_err();
    assert_eq!(
        err.to_string(),
        "task group \"api\" is not part of deployment d1"
    );

    let healthy = vec![canary(&job, 0).with(health(true, NOW, true))];
    let done = promote(&d, &healthy, Some(&["web".to_owned()]), NOW + MIN).unwrap();
    assert_eq!(done.promoted_canaries, [AllocId::new("c0")]);
    assert!(done.deployment.task_groups["web"].promoted);
    assert_eq!(done.deployment.status_description, descriptions::RUNNING);
    assert_eq!(done.deployment.modify_time, NOW + MIN);

    let mut ended = d.clone();
    ended.status = DeploymentStatus::Successful;
    assert_eq!(
        promote(&ended, &healthy, None, NOW)
            .unwrap_err()
            .to_string(),
        "can't promote terminal deployment"
    );
}

#[test]
fn promote_reports_every_group_short_of_healthy_canaries() {
    let job = job(1);
    let mut d = deployment(&job, state(1));
    d.task_groups.insert("api".to_owned(), state(2));
    let err = promote(&d, &[], None, NOW).unwrap_err();
    assert_eq!(
        err.to_string(),
        "2 errors occurred:\n\t* Task group \"api\" has 0/2 healthy allocations\n\t* Task group \"web\" has 0/1 healthy allocations\n\n"
    );
}

#[test]
fn fail_by_the_user_reverts_with_auto_revert() {
    let job = job(0);
    let mut web = state(0);
    web.auto_revert = true;
    let d = deployment(&job, web);
    let failed = fail(&d, &job, &history(&job, &[1]), NOW).unwrap();
    assert_eq!(failed.deployment.status, DeploymentStatus::Failed);
    assert_eq!(
        failed.deployment.status_description,
        "Deployment marked as failed - rolling back to job version 1"
    );
    assert_eq!(failed.revert_to, Some(1));
    assert_eq!(
        fail(&failed.deployment, &job, &[], NOW)
            .unwrap_err()
            .to_string(),
        "can't fail terminal deployment"
    );

    let plain = deployment(&job, state(0));
    let failed = fail(&plain, &job, &history(&job, &[1]), NOW).unwrap();
    assert_eq!(
        failed.deployment.status_description,
        descriptions::FAILED_BY_USER
    );
    assert_eq!(failed.revert_to, None);
}

#[test]
fn pause_and_resume_restart_the_progress_deadline() {
    let job = job(1);
    let d = deployment(&job, state(1));
    let paused = pause(&d, true, NOW + MIN).unwrap();
    assert_eq!(paused.status, DeploymentStatus::Paused);
    assert_eq!(paused.status_description, descriptions::PAUSED);
    assert_eq!(
        paused.task_groups["web"].require_progress_by,
        Timestamp::from_unix_nanos(NOW + 11 * MIN)
    );
    let resumed = pause(&paused, false, NOW + 5 * MIN).unwrap();
    assert_eq!(resumed.status, DeploymentStatus::Running);
    assert_eq!(
        resumed.status_description,
        descriptions::RUNNING_NEEDS_PROMOTION,
        "still waiting for promotion"
    );
    assert_eq!(
        resumed.task_groups["web"].require_progress_by,
        Timestamp::from_unix_nanos(NOW + 15 * MIN)
    );
    let mut cancelled = d.clone();
    cancelled.status = DeploymentStatus::Cancelled;
    assert_eq!(
        pause(&cancelled, false, NOW).unwrap_err().to_string(),
        "can't resume terminal deployment"
    );
    assert_eq!(
        pause(&cancelled, true, NOW).unwrap_err().to_string(),
        "can't pause terminal deployment"
    );
}

#[test]
fn manual_health_is_checked_and_an_unhealthy_mark_fails_the_deployment() {
    let mut job = job(0);
    fx::web(&mut job).update.as_mut().unwrap().health_check = "manual".into();
    let mut web = state(0);
    web.auto_revert = true;
    let d = deployment(&job, web);
    let allocs = vec![
        member(&job, 0),
        member(&job, 1),
        fx::alloc(&job, "web", 2).id("stranger"),
    ];
    let versions = history(&job, &[2]);
    let ids = |v: &[&str]| v.iter().map(|s| AllocId::new(*s)).collect::<Vec<_>>();

    let err = set_alloc_health(&d, &job, &versions, &allocs, &[], &[], NOW).unwrap_err();
    assert_eq!(
        err.to_string(),
        "must specify at least one healthy/unhealthy allocation ID"
    );
    let err =
        set_alloc_health(&d, &job, &versions, &allocs, &ids(&["nope"]), &[], NOW).unwrap_err();
    assert_eq!(err, DeploymentError::UnknownAlloc("nope".into()));
    let err =
        set_alloc_health(&d, &job, &versions, &allocs, &ids(&["stranger"]), &[], NOW).unwrap_err();
    assert_eq!(
        err.to_string(),
        "alloc \"stranger\" is not part of deployment \"d1\""
    );
    let err = set_alloc_health(
        &d,
        &job,
        &versions,
        &allocs,
        &ids(&["m0"]),
        &ids(&["m0"]),
        NOW,
    )
    .unwrap_err();
    assert_eq!(err, DeploymentError::HealthConflict("m0".into()));

    let update =
        set_alloc_health(&d, &job, &versions, &allocs, &ids(&["m0", "m1"]), &[], NOW).unwrap();
    assert_eq!(update.allocs.len(), 2);
    assert!(update.allocs.iter().all(|(_, s)| s.healthy == Some(true)
        && s.timestamp == Timestamp::from_unix_nanos(NOW)));
    assert_eq!(update.deployment.task_groups["web"].healthy_allocs, 2);
    assert_eq!(update.deployment.status, DeploymentStatus::Running);
    assert_eq!(update.revert_to, None);

    let update = set_alloc_health(&d, &job, &versions, &allocs, &[], &ids(&["m1"]), NOW).unwrap();
    assert_eq!(update.deployment.status, DeploymentStatus::Failed);
    assert_eq!(
        update.deployment.status_description,
        "Failed due to unhealthy allocations - rolling back to job version 2"
    );
    assert_eq!(update.revert_to, Some(2));
    assert_eq!(update.deployment.task_groups["web"].unhealthy_allocs, 1);

    let mut ended = d.clone();
    ended.status = DeploymentStatus::Failed;
    assert_eq!(
        set_alloc_health(&ended, &job, &versions, &allocs, &ids(&["m0"]), &[], NOW)
            .unwrap_err()
            .to_string(),
        "can't set health of allocations for a terminal deployment"
    );
}

#[test]
fn status_updates_apply_to_active_deployments_only() {
    let job = job(0);
    let mut d = deployment(&job, state(0));
    let cancel = StatusUpdate {
        deployment_id: D.into(),
        status: DeploymentStatus::Cancelled,
        description: descriptions::NEWER_JOB.to_owned(),
    };
    cancel.apply(&mut d, NOW).unwrap();
    assert_eq!(d.status, DeploymentStatus::Cancelled);
    assert_eq!(d.status_description, descriptions::NEWER_JOB);
    assert_eq!(d.modify_time, NOW);
    assert_eq!(
        cancel.apply(&mut d, NOW).unwrap_err(),
        DeploymentError::Terminal {
            action: Action::Update
        }
    );
    let mut other = deployment(&job, state(0));
    other.id = "d9".into();
    assert!(matches!(
        cancel.apply(&mut other, NOW),
        Err(DeploymentError::WrongDeployment { .. })
    ));
}

#[test]
fn same_spec_ignores_the_servers_bookkeeping() {
    let job = job(0);
    let mut other = job.clone();
    other.version = 9;
    other.stable = true;
    other.job_modify_index = 99;
    other.submit_time = 5;
    other.status = "dead".into();
    assert!(same_spec(&job, &other));
    other.id = JobId::new("elsewhere");
    assert!(!same_spec(&job, &other));
    let mut edited = job.clone();
    fx::web(&mut edited).count = 4;
    assert!(!same_spec(&job, &edited));
}
