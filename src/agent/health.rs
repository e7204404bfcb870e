//! An allocation's health, decided by its client as Nomad's allocation health tracker does, for
//! groups with an `update` block: healthy once every task that should run is running (prestart
//! tasks finished successfully) and — with `health_check = "checks"` — its service checks pass,
//! continuously for `min_healthy_time`; unhealthy when a task fails or `healthy_deadline` passes
//! first. Decided once; the servers pace rolling updates on it (`DeploymentStatus.Healthy`).

use super::runner::Phase;
use caravan_schemas::alloc::{TaskState, TaskStatus};
use caravan_schemas::job::TaskGroup;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How one look at the allocation reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Look {
    /// Everything that should run runs (and checks pass, when they count).
    Ready,
    NotReady,
    /// A task failed: unhealthy at once.
    Failed,
}

/// What `update` says about health, for a group that has one and is not `manual`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub min_healthy_time: Duration,
    pub healthy_deadline: Duration,
    pub use_checks: bool,
}

impl Rule {
    pub fn of(group: &TaskGroup) -> Option<Rule> {
        let u = group.update.as_ref()?;
        if u.health_check == "manual" {
            return None;
        }
        Some(Rule {
            min_healthy_time: u.min_healthy_time.to_std(),
            healthy_deadline: u.healthy_deadline.to_std(),
            use_checks: u.health_check != "task_states",
        })
    }
}

/// Reads the allocation's tasks and (when they count) its checks: `checks_healthy` is `None`
/// when the allocation has no checks.
pub fn look(
    group: &TaskGroup,
    states: &BTreeMap<String, TaskState>,
    checks_healthy: Option<bool>,
    rule: &Rule,
) -> Look {
    let mut ready = true;
    for task in &group.tasks {
        let Some(s) = states.get(&task.name) else {
            ready = false;
            continue;
        };
        if s.state == TaskStatus::Dead && s.failed {
            return Look::Failed;
        }
        ready &= match Phase::of(task) {
            Phase::Prestart => s.state == TaskStatus::Dead,
            Phase::Poststart | Phase::Poststop => true,
            _ => s.state == TaskStatus::Running,
        };
    }
    if rule.use_checks && checks_healthy == Some(false) {
        ready = false;
    }
    if ready { Look::Ready } else { Look::NotReady }
}

/// Watches the allocation until its health is decided; returns it. `look` reads the current
/// state; `changed` ticks on every change; `stop` ends the watch undecided (`None`).
pub async fn track(
    rule: Rule,
    look: impl Fn() -> Look,
    mut changed: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
) -> Option<bool> {
    let started = Instant::now();
    let deadline = started + rule.healthy_deadline;
    let mut ready_since: Option<Instant> = None;
    loop {
        let now = Instant::now();
        match look() {
            Look::Failed => return Some(false),
            Look::Ready => {
                let since = *ready_since.get_or_insert(now);
                if now.duration_since(since) >= rule.min_healthy_time {
                    return Some(true);
                }
            }
            Look::NotReady => ready_since = None,
        }
        if now >= deadline {
            return Some(false);
        }
        let wake = ready_since.map_or(deadline, |s| (s + rule.min_healthy_time).min(deadline));
        tokio::select! {
            r = changed.changed() => if r.is_err() { return None },
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = stop.wait_for(|s| *s) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caravan_schemas::job::{Task, TaskLifecycle};

    fn group() -> TaskGroup {
        let task = |name: &str, hook: Option<&str>| Task {
            name: name.into(),
            lifecycle: hook.map(|h| TaskLifecycle {
                hook: h.into(),
                sidecar: false,
            }),
            ..Task::default()
        };
        TaskGroup {
            tasks: vec![task("main", None), task("init", Some("prestart"))],
            ..TaskGroup::default()
        }
    }

    fn state(status: TaskStatus, failed: bool) -> TaskState {
        TaskState {
            state: status,
            failed,
            ..TaskState::default()
        }
    }

    const RULE: Rule = Rule {
        min_healthy_time: Duration::from_millis(50),
        healthy_deadline: Duration::from_secs(5),
        use_checks: true,
    };

    #[test]
    fn ready_needs_mains_running_prestarts_done_and_checks_passing() {
        let g = group();
        let states =
            |main, init| BTreeMap::from([("main".to_owned(), main), ("init".to_owned(), init)]);
        let running = state(TaskStatus::Running, false);
        let done = state(TaskStatus::Dead, false);
        let pending = state(TaskStatus::Pending, false);
        assert_eq!(
            look(&g, &states(running.clone(), done.clone()), None, &RULE),
            Look::Ready
        );
        assert_eq!(
            look(
                &g,
                &states(running.clone(), done.clone()),
                Some(true),
                &RULE
            ),
            Look::Ready
        );
        assert_eq!(
            look(
                &g,
                &states(running.clone(), done.clone()),
                Some(false),
                &RULE
            ),
            Look::NotReady
        );
        let task_states = Rule {
            use_checks: false,
            ..RULE
        };
        assert_eq!(
            look(
                &g,
                &states(running.clone(), done.clone()),
                Some(false),
                &task_states
            ),
            Look::Ready
        );
        assert_eq!(
            look(&g, &states(running.clone(), running.clone()), None, &RULE),
            Look::NotReady
        );
        assert_eq!(
            look(&g, &states(pending, done.clone()), None, &RULE),
            Look::NotReady
        );
        assert_eq!(
            look(
                &g,
                &states(state(TaskStatus::Dead, true), done),
                None,
                &RULE
            ),
            Look::Failed
        );
    }

    #[tokio::test]
    async fn healthy_after_min_healthy_time_unhealthy_at_the_deadline() {
        let (_tx, changed) = watch::channel(0u64);
        let (_stop_tx, stop) = watch::channel(false);
        let started = Instant::now();
        let verdict = track(RULE, || Look::Ready, changed.clone(), stop.clone()).await;
        assert_eq!(verdict, Some(true));
        assert!(started.elapsed() >= RULE.min_healthy_time);
        let short = Rule {
            healthy_deadline: Duration::from_millis(30),
            ..RULE
        };
        assert_eq!(
            track(short, || Look::NotReady, changed.clone(), stop.clone()).await,
            Some(false)
        );
        assert_eq!(
            track(RULE, || Look::Failed, changed, stop).await,
            Some(false)
        );
    }
}
