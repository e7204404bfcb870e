//! Service health checks, run by the agent for the allocations it runs (Nomad's native service
//! checks are the model; script checks are run too, through the task's driver).
//!
//! - [`plan`] turns an allocation's `service { check { … } }` blocks into [`plan::CheckSpec`]s:
//!   stable ids, resolved addresses, what each check runs (pure).
//! - [`tracker`] counts results: `success_before_passing`, `failures_before_critical`,
//!   `check_restart` (pure).
//! - [`probe`] runs a check once: tcp connect, http request, script through [`Driver::exec`].
//! - This module runs each check in its own tokio task, on its interval, while the task it
//!   belongs to runs (a group service's check while any task runs); publishes each result in
//!   the allocation's [`Results`] and asks for a status report only when a check's status
//!   (or HTTP status code) changes; and, for `check_restart`, asks the task runner to restart the task through its
//!   [`TaskLink`].
//!
//! The allocation runner wires it: [`Checks::new`] before the tasks, one [`Checks::link`] per
//! task runner (which calls [`TaskLink::started`] / [`TaskLink::stopped`] and selects on
//! [`TaskLink::restart_requested`]), then [`Checks::start`]; dropping the returned
//! [`RunningChecks`] stops every check.

pub mod plan;
pub mod probe;
pub mod tracker;

use crate::agent::env::{self, TaskDirs};
use crate::drivers::{Driver, TaskHandle};
use caravan_schemas::alloc::{Allocation, CheckQueryResult, CheckStatus};
use caravan_schemas::ids::CheckId;
use caravan_schemas::job::{Job, TaskGroup};
use caravan_schemas::node::Node;
use plan::{CheckSpec, Probe};
use probe::ExecTarget;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;
use tracker::{RestartCounter, StatusTracker};

/// Why a check cannot run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// `service "web" check "alive": port "nope" is not one of the allocation's ports (http)`.
    #[error("{at}: {kind}")]
    Unrunnable {
        /// `service "web" check "alive"`.
        at: String,
        kind: plan::TargetError,
    },
}

/// A task as the checks see it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskLife {
    /// Bumped on every start (or re-attach after an agent restart).
    pub generation: u64,
    /// The running task's handle; `None` while it is not running.
    pub running: Option<TaskHandle>,
}

type Lives = BTreeMap<String, TaskLife>;

/// The task runner's end: it says when its task starts and stops, and hears restart requests.
#[derive(Debug)]
pub struct TaskLink {
    task: String,
    lives: Arc<watch::Sender<Lives>>,
    restarts: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
}

impl TaskLink {
    /// The task runs (started, restarted or re-attached) under `handle`. Restart requests
    /// about an earlier run are dropped.
    pub fn started(&self, handle: &TaskHandle) {
        if let Ok(mut rx) = self.restarts.try_lock() {
            while rx.try_recv().is_ok() {}
        }
        self.lives.send_modify(|lives| {
            let life = lives.entry(self.task.clone()).or_default();
            life.generation += 1;
            life.running = Some(handle.clone());
        });
    }

    /// The task is not running any more.
    pub fn stopped(&self) {
        self.lives.send_modify(|lives| {
            if let Some(life) = lives.get_mut(&self.task) {
                life.running = None;
            }
        });
    }

    /// Resolves with the reason (`healthcheck: check "alive" unhealthy`) when a check asks
    /// for the task to be restarted; never, for a task no check restarts.
    pub async fn restart_requested(&self) -> String {
        let mut rx = self.restarts.lock().await;
        match rx.recv().await {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }
}

/// The latest result of each check of an allocation, shared with its status reports.
#[derive(Clone, Debug, Default)]
pub struct Results(Arc<Mutex<BTreeMap<CheckId, CheckQueryResult>>>);

impl Results {
    /// Carries on from what an earlier agent reported.
    pub fn seeded(previous: &BTreeMap<CheckId, CheckQueryResult>) -> Self {
        Self(Arc::new(Mutex::new(previous.clone())))
    }

    pub fn snapshot(&self) -> BTreeMap<CheckId, CheckQueryResult> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<CheckId, CheckQueryResult>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn status_of(&self, id: &CheckId) -> Option<CheckStatus> {
        self.lock().get(id).map(|r| r.status)
    }

    /// Stores `result`; true when it is news for the servers: the check is new, or its status
    /// or HTTP status code changed (not its output or time alone).
    fn publish(&self, result: CheckQueryResult) -> bool {
        let mut map = self.lock();
        let flipped = map
            .get(&result.id)
            .is_none_or(|old| old.status != result.status || old.status_code != result.status_code);
        map.insert(result.id.clone(), result);
        flipped
    }

    /// Forgets checks the allocation no longer has.
    fn retain(&self, ids: &[CheckId]) {
        self.lock().retain(|id, _| ids.contains(id));
    }
}

/// Everything the checks of one allocation need to start.
pub struct Start<'a> {
    pub alloc: &'a Allocation,
    pub job: &'a Job,
    pub group: &'a TaskGroup,
    pub node: &'a Node,
    pub drivers: &'a HashMap<String, Arc<dyn Driver>>,
    /// `<alloc_root>/<alloc id>`.
    pub alloc_dir: &'a Path,
    pub results: Results,
    /// Sends the allocation's status report (called when a check's status changes).
    pub report: Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Start<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Start")
            .field("alloc", &self.alloc.id)
            .field("group", &self.group.name)
            .field("alloc_dir", &self.alloc_dir)
            .finish_non_exhaustive()
    }
}

/// The checks of one allocation, before they start: the tasks' links.
#[derive(Debug)]
pub struct Checks {
    lives: Arc<watch::Sender<Lives>>,
    receivers: Mutex<HashMap<String, mpsc::UnboundedReceiver<String>>>,
    senders: HashMap<String, mpsc::UnboundedSender<String>>,
}

impl Checks {
    pub fn new(group: &TaskGroup) -> Self {
        let mut receivers = HashMap::new();
        let mut senders = HashMap::new();
        for task in &group.tasks {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.insert(task.name.clone(), tx);
            receivers.insert(task.name.clone(), rx);
        }
        let lives = group
            .tasks
            .iter()
            .map(|t| (t.name.clone(), TaskLife::default()))
            .collect();
        Self {
            lives: Arc::new(watch::channel(lives).0),
            receivers: Mutex::new(receivers),
            senders,
        }
    }

    /// The link for `task`'s runner (once per task; a second call gets one no check uses).
    pub fn link(&self, task: &str) -> TaskLink {
        let rx = self
            .receivers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(task)
            .unwrap_or_else(|| mpsc::unbounded_channel().1);
        TaskLink {
            task: task.to_owned(),
            lives: Arc::clone(&self.lives),
            restarts: tokio::sync::Mutex::new(rx),
        }
    }

    /// Starts every check of the allocation; they run until the result is dropped.
    pub fn start(&self, s: Start<'_>) -> RunningChecks {
        let specs = plan::build(s.alloc, s.group, s.node);
        s.results
            .retain(&specs.iter().map(|c| c.id.clone()).collect::<Vec<_>>());
        if specs.is_empty() {
            return RunningChecks { tasks: Vec::new() };
        }
        let now = unix_secs();
        for spec in &specs {
            if s.results.status_of(&spec.id).is_none() {
                s.results.publish(initial_result(spec, now));
            }
        }
        (s.report)();
        let mut tasks = Vec::new();
        for spec in specs {
            let exec = match &spec.probe {
                Ok(Probe::Script { task, .. }) => exec_context(&s, task),
                _ => None,
            };
            let runner = CheckRunner {
                restart: spec
                    .restart
                    .as_ref()
                    .and_then(|r| self.senders.get(&r.task).cloned()),
                spec,
                exec,
                results: s.results.clone(),
                report: Arc::clone(&s.report),
                lives: self.lives.subscribe(),
            };
            let span = tracing::info_span!(
                "check",
                service = %runner.spec.service,
                name = %runner.spec.name,
                id = %&runner.spec.id.as_str()[..8],
            );
            tasks.push(tokio::spawn(runner.run().instrument(span)));
        }
        RunningChecks { tasks }
    }
}

/// An allocation's running checks; dropping it stops them.
#[derive(Debug)]
pub struct RunningChecks {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for RunningChecks {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn unix_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// What a check reports before it has run (Nomad's `Stub`), or, when it cannot run, why.
pub fn initial_result(spec: &CheckSpec, now_secs: i64) -> CheckQueryResult {
    let (status, output) = match &spec.probe {
        Ok(_) => (spec.initial_status, "nomad: waiting to run".to_owned()),
        Err(e) => (CheckStatus::Failure, e.to_string()),
    };
    CheckQueryResult {
        id: spec.id.clone(),
        mode: spec.mode,
        status,
        status_code: 0,
        output,
        timestamp: now_secs,
        group: spec.group.clone(),
        task: spec.task.clone().unwrap_or_default(),
        service: spec.service.clone(),
        check: spec.name.clone(),
    }
}

/// The driver, environment and directory a script check of `task` runs with.
struct ExecContext {
    driver: Arc<dyn Driver>,
    env: BTreeMap<String, String>,
    cwd: std::path::PathBuf,
}

fn exec_context(s: &Start<'_>, task_name: &str) -> Option<ExecContext> {
    let task = s.group.task(task_name)?;
    let driver = s.drivers.get(&task.driver).cloned()?;
    let task_dir = s.alloc_dir.join(&task.name);
    let dirs = TaskDirs {
        alloc_dir: s.alloc_dir,
        task_dir: &task_dir,
    };
    let env = env::build(s.alloc, s.job, s.group, task, s.node, &dirs);
    Some(ExecContext {
        driver,
        env,
        cwd: task_dir,
    })
}

/// Whether the check may run now, and the run it belongs to: the generation of its task, or
/// (a group check) the sum of every task's generations while any task runs.
fn gate(lives: &Lives, runs_with: Option<&str>) -> Option<u64> {
    match runs_with {
        Some(task) => lives
            .get(task)
            .filter(|l| l.running.is_some())
            .map(|l| l.generation),
        None => lives
            .values()
            .any(|l| l.running.is_some())
            .then(|| lives.values().map(|l| l.generation).sum()),
    }
}

struct CheckRunner {
    spec: CheckSpec,
    exec: Option<ExecContext>,
    restart: Option<mpsc::UnboundedSender<String>>,
    results: Results,
    report: Arc<dyn Fn() + Send + Sync>,
    lives: watch::Receiver<Lives>,
}

impl CheckRunner {
    async fn run(mut self) {
        let Ok(probe) = self.spec.probe.clone() else {
            // Reported as failing with the reason when it started; nothing to run.
            return;
        };
        let runs_with = self.spec.runs_with.clone();
        let mut last: Option<u64> = None;
        let mut status = self
            .results
            .status_of(&self.spec.id)
            .unwrap_or(self.spec.initial_status);
        loop {
            // Wait for a run of the task this check has not watched yet.
            let generation = loop {
                let open = gate(&self.lives.borrow_and_update(), runs_with.as_deref());
                if let Some(g) = open.filter(|g| Some(*g) != last) {
                    break g;
                }
                if self.lives.changed().await.is_err() {
                    return;
                }
            };
            last = Some(generation);
            tracing::debug!(generation, "checking");
            let mut tracker = StatusTracker::new(
                status,
                self.spec.success_before_passing,
                self.spec.failures_before_critical,
            );
            let mut counter = self
                .spec
                .restart
                .as_ref()
                .map(|r| RestartCounter::new(r, Instant::now()));
            let mut tick = tokio::time::interval(self.spec.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    changed = self.lives.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        if gate(&self.lives.borrow_and_update(), runs_with.as_deref()) == Some(generation) {
                            continue;
                        }
                        break;
                    }
                }
                let target = self.exec_target(&probe);
                let result = probe::run(&probe, self.spec.timeout, target.as_ref()).await;
                // A result about a run that ended meanwhile says nothing about the next one.
                if gate(&self.lives.borrow(), runs_with.as_deref()) != Some(generation) {
                    break;
                }
                status = tracker.observe(result.outcome);
                let published = CheckQueryResult {
                    status,
                    status_code: result.status_code,
                    output: result.output,
                    timestamp: unix_secs(),
                    ..initial_result(&self.spec, 0)
                };
                if self.results.publish(published) {
                    tracing::info!(%status, "check status changed");
                    (self.report)();
                }
                let restart_now = counter
                    .as_mut()
                    .is_some_and(|c| c.observe(result.outcome, status, Instant::now()));
                if restart_now && let Some(tx) = &self.restart {
                    tracing::info!(
                        "check unhealthy past its check_restart limit; restarting the task"
                    );
                    let _ = tx.send(format!("healthcheck: check {:?} unhealthy", self.spec.name));
                    // Counting starts over when the task runs again.
                    break;
                }
            }
        }
    }

    /// Where a script check runs now: the running task's handle.
    fn exec_target(&self, probe: &Probe) -> Option<ExecTarget> {
        let Probe::Script { task, .. } = probe else {
            return None;
        };
        let ctx = self.exec.as_ref()?;
        let handle = self.lives.borrow().get(task)?.running.clone()?;
        Some(ExecTarget {
            driver: Arc::clone(&ctx.driver),
            handle,
            env: ctx.env.clone(),
            cwd: ctx.cwd.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lives(entries: &[(&str, u64, bool)]) -> Lives {
        entries
            .iter()
            .map(|(name, generation, running)| {
                (
                    (*name).to_owned(),
                    TaskLife {
                        generation: *generation,
                        running: running.then(TaskHandle::default),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn gates_follow_the_checks_task_or_any_task() {
        let l = lives(&[("web", 2, true), ("side", 1, false)]);
        assert_eq!(gate(&l, Some("web")), Some(2));
        assert_eq!(gate(&l, Some("side")), None);
        assert_eq!(gate(&l, Some("missing")), None);
        assert_eq!(gate(&l, None), Some(3));
        assert_eq!(gate(&lives(&[("web", 2, false)]), None), None);
    }

    #[tokio::test]
    async fn links_publish_runs_and_carry_restart_requests() {
        let group = TaskGroup {
            tasks: vec![caravan_schemas::job::Task {
                name: "web".into(),
                ..Default::default()
            }],
            ..TaskGroup::default()
        };
        let checks = Checks::new(&group);
        let link = checks.link("web");
        let mut rx = checks.lives.subscribe();
        // A request about an earlier run is dropped when the task starts again.
        checks.senders["web"].send("stale".into()).unwrap();
        link.started(&TaskHandle::default());
        assert_eq!(gate(&rx.borrow_and_update(), Some("web")), Some(1));
        checks.senders["web"].send("fresh".into()).unwrap();
        assert_eq!(link.restart_requested().await, "fresh");
        link.stopped();
        assert_eq!(gate(&rx.borrow_and_update(), Some("web")), None);
        link.started(&TaskHandle::default());
        assert_eq!(gate(&rx.borrow_and_update(), Some("web")), Some(2));
        // A task with no link of its own gets one nothing sends to.
        let other = checks.link("web");
        let pending = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            other.restart_requested(),
        )
        .await;
        assert!(pending.is_err());
    }

    #[test]
    fn results_report_only_status_and_status_code_changes() {
        let results = Results::default();
        let spec = plan::CheckSpec {
            id: CheckId::new("c1"),
            group: "g".into(),
            task: Some("web".into()),
            service: "web".into(),
            name: "alive".into(),
            mode: caravan_schemas::alloc::CheckMode::Healthiness,
            runs_with: Some("web".into()),
            probe: Ok(Probe::Tcp {
                addr: "127.0.0.1:1".into(),
            }),
            interval: std::time::Duration::from_secs(1),
            timeout: std::time::Duration::from_secs(1),
            initial_status: CheckStatus::Pending,
            success_before_passing: 0,
            failures_before_critical: 0,
            restart: None,
        };
        let first = initial_result(&spec, 100);
        assert_eq!(first.output, "nomad: waiting to run");
        assert_eq!(first.status, CheckStatus::Pending);
        assert_eq!(first.task, "web");
        assert!(results.publish(first.clone()), "a new check is news");
        let same = CheckQueryResult {
            timestamp: 101,
            output: "still waiting".into(),
            ..first.clone()
        };
        assert!(!results.publish(same), "output and time alone are not");
        let refused = CheckQueryResult {
            status: CheckStatus::Failure,
            output: "connection refused".into(),
            ..first.clone()
        };
        assert!(results.publish(refused.clone()));
        let not_found = CheckQueryResult {
            status_code: 404,
            output: "no such page".into(),
            ..refused
        };
        assert!(results.publish(not_found), "another HTTP answer is");
        let passing = CheckQueryResult {
            status: CheckStatus::Success,
            ..first
        };
        assert!(results.publish(passing));
        assert_eq!(
            results.snapshot()[&CheckId::new("c1")].status,
            CheckStatus::Success
        );
        results.retain(&[]);
        assert!(results.snapshot().is_empty());
    }
}
