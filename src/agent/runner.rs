//! Allocation and task runners: one tokio task per allocation, one per task in it.
//!
//! A task runner builds the task's directory and environment, fetches its artifacts and
//! renders its templates before its first start, starts it through its driver,
//! waits for it, applies the restart policy (attempts within an interval, a delay, mode fail or
//! delay), and kills it with its kill signal and timeout when the allocation is stopped. Every
//! change is recorded as Nomad's task events and sent to the reporter, which batches status
//! updates to the servers.

use super::checks::{self, TaskLink};
use super::env::{self, TaskDirs};
use super::{artifact, health, logs, template};
use crate::drivers::{Driver, ExitResult, TaskConfig, TaskHandle, TaskResources};
use caravan_schemas::alloc::{
    Allocation, CheckQueryResult, ClientStatus, TaskEvent, TaskState, TaskStatus, event_types,
};
use caravan_schemas::duration::Duration as NomadDuration;
use caravan_schemas::ids::{CheckId, DeploymentId};
use caravan_schemas::job::{Job, JobType, Task, TaskGroup};
use caravan_schemas::node::Node;
use caravan_schemas::time::Timestamp;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

/// Task events kept per task (Nomad keeps 10).
const MAX_EVENTS: usize = 10;

/// What an allocation runner reports: its allocation's client-side state.
#[derive(Clone, Debug)]
pub struct AllocReport {
    pub alloc_id: String,
    pub client_status: ClientStatus,
    pub client_description: String,
    pub task_states: BTreeMap<String, TaskState>,
    /// The latest result of each service check.
    pub check_results: BTreeMap<CheckId, CheckQueryResult>,
    /// The allocation's health once decided ([`super::health`]), when, and for which
    /// deployment (the servers ignore a verdict for a deployment the allocation has left).
    pub deployment_health: Option<Verdict>,
}

/// An allocation's health as decided for one deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub healthy: bool,
    pub at: Timestamp,
    pub deployment: DeploymentId,
}

/// What every runner shares.
#[derive(Debug)]
pub struct Context {
    pub drivers: HashMap<String, Arc<dyn Driver>>,
    pub node: Arc<Node>,
    /// `<data_dir>/client/allocs`.
    pub alloc_root: PathBuf,
    pub reports: mpsc::UnboundedSender<AllocReport>,
    /// What `template` blocks read (`nomadService`).
    pub template_source: Arc<dyn template::TemplateSource>,
}

/// A running allocation: tell it to stop, or wait for it to finish.
#[derive(Debug)]
pub struct AllocRunner {
    stop: watch::Sender<bool>,
    done: watch::Receiver<bool>,
    /// The deployment the allocation belongs to: an in-place update that moves it to another
    /// one has its health decided again.
    deployment: watch::Sender<DeploymentId>,
}

impl AllocRunner {
    /// Asks every task to stop (kill signal, then kill timeout).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Whether every task has finished.
    pub fn is_done(&self) -> bool {
        *self.done.borrow()
    }

    /// The servers changed the allocation where it runs (an in-place update).
    pub fn update(&self, alloc: &Allocation) {
        self.deployment.send_if_modified(|d| {
            let moved = *d != alloc.deployment_id;
            if moved {
                d.clone_from(&alloc.deployment_id);
            }
            moved
        });
    }
}

/// Starts running an allocation.
pub fn spawn(ctx: Arc<Context>, alloc: Allocation) -> AllocRunner {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(false);
    let (deployment_tx, deployment_rx) = watch::channel(alloc.deployment_id.clone());
    let span = tracing::info_span!("alloc", id = %alloc.id.short(), name = %alloc.name);
    tokio::spawn(
        async move {
            run_alloc(ctx, alloc, stop_rx, deployment_rx).await;
            done_tx.send_replace(true);
        }
        .instrument(span),
    );
    AllocRunner {
        stop: stop_tx,
        done: done_rx,
        deployment: deployment_tx,
    }
}

fn now_nanos() -> i64 {
    crate::server::writes::now_nanos()
}

/// The allocation's client status from its tasks', as Nomad's `getClientStatus`: a running
/// task makes the allocation running even while others (poststop tasks) are still pending.
fn client_status(states: &BTreeMap<String, TaskState>) -> (ClientStatus, &'static str) {
    let (mut pending, mut running, mut dead, mut failed) = (false, false, false, false);
    for s in states.values() {
        match s.state {
            TaskStatus::Pending => pending = true,
            TaskStatus::Running => running = true,
            TaskStatus::Dead => {
                dead = true;
                failed |= s.failed;
            }
        }
    }
    if failed {
        (ClientStatus::Failed, "Failed tasks")
    } else if running {
        (ClientStatus::Running, "Tasks are running")
    } else if pending {
        (ClientStatus::Pending, "No tasks have started")
    } else if dead {
        (ClientStatus::Complete, "All tasks have completed")
    } else {
        (ClientStatus::Pending, "No tasks have started")
    }
}

async fn run_alloc(
    ctx: Arc<Context>,
    alloc: Allocation,
    stop: watch::Receiver<bool>,
    mut deployment: watch::Receiver<DeploymentId>,
) {
    let Some(job) = alloc.job.clone() else {
        tracing::error!("allocation carries no job; nothing to run");
        return;
    };
    let Some(group) = job.group(&alloc.task_group).cloned() else {
        tracing::error!(group = %alloc.task_group, "allocation's group is not in its job");
        return;
    };
    let alloc_dir = ctx.alloc_root.join(alloc.id.as_str());
    let states: Arc<std::sync::Mutex<BTreeMap<String, TaskState>>> =
        Arc::new(std::sync::Mutex::new(
            group
                .tasks
                .iter()
                .map(|t| {
                    // A previous agent's report is where this one carries on from.
                    let s = alloc.task_states.get(&t.name).cloned().unwrap_or_else(|| {
                        let mut s = TaskState::default();
                        s.push_event(
                            TaskEvent::new(event_types::RECEIVED, now_nanos()),
                            MAX_EVENTS,
                        );
                        s
                    });
                    (t.name.clone(), s)
                })
                .collect(),
        ));
    let check_results = checks::Results::seeded(&alloc.check_results);
    let health: Arc<std::sync::Mutex<Option<Verdict>>> = Arc::new(std::sync::Mutex::new(
        alloc.deployment_status.as_ref().and_then(|d| {
            Some(Verdict {
                healthy: d.healthy?,
                at: d.timestamp,
                deployment: alloc.deployment_id.clone(),
            })
        }),
    ));
    let report = {
        let (ctx, states, id) = (Arc::clone(&ctx), Arc::clone(&states), alloc.id.to_string());
        let check_results = check_results.clone();
        let health = Arc::clone(&health);
        move || {
            let states = states.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let (client_status, description) = client_status(&states);
            let _ = ctx.reports.send(AllocReport {
                alloc_id: id.clone(),
                client_status,
                client_description: description.to_owned(),
                task_states: states,
                check_results: check_results.snapshot(),
                deployment_health: health.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            });
        }
    };
    report();
    if let Err(e) = make_alloc_dir(&alloc_dir, &group) {
        let mut s = states.lock().unwrap_or_else(|p| p.into_inner());
        for state in s.values_mut() {
            state.push_event(
                TaskEvent::new(event_types::SETUP_FAILURE, now_nanos())
                    .with_setup_error(e.to_string())
                    .with_fails_task(),
                MAX_EVENTS,
            );
            state.state = TaskStatus::Dead;
            state.failed = true;
        }
        drop(s);
        report();
        return;
    }
    let changed = Arc::new(watch::channel(0u64).0);
    let report: Arc<dyn Fn() + Send + Sync> = {
        let changed = Arc::clone(&changed);
        Arc::new(move || {
            report();
            changed.send_modify(|n| *n = n.wrapping_add(1));
        })
    };
    // Service groups with an update block: decide the allocation's health for rollouts, and
    // again whenever an in-place update moves it to another deployment.
    // (System groups too: their rolling updates are paced on health, then `stagger`.)
    let rule = health::Rule::of(&group)
        .filter(|_| matches!(job.r#type, JobType::Service | JobType::System));
    if let Some(rule) = rule {
        let (states, results, group, report) = (
            Arc::clone(&states),
            check_results.clone(),
            group.clone(),
            Arc::clone(&report),
        );
        let look = move || {
            let states = states.lock().unwrap_or_else(|p| p.into_inner());
            health::look(
                &group,
                &states,
                caravan_schemas::alloc::checks_healthy(&results.snapshot()),
                &rule,
            )
        };
        let (changed, mut stop, health) = (Arc::clone(&changed), stop.clone(), Arc::clone(&health));
        tokio::spawn(
            async move {
                loop {
                    let undecided = health.lock().unwrap_or_else(|p| p.into_inner()).is_none();
                    if undecided {
                        let verdict =
                            health::track(rule, &look, changed.subscribe(), stop.clone()).await;
                        let Some(healthy) = verdict else { return };
                        tracing::info!(healthy, "allocation health decided");
                        *health.lock().unwrap_or_else(|p| p.into_inner()) = Some(Verdict {
                            healthy,
                            at: Timestamp::now(),
                            deployment: deployment.borrow().clone(),
                        });
                        report();
                    }
                    tokio::select! {
                        moved = deployment.changed() => if moved.is_err() { return },
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    tracing::info!(deployment = %deployment.borrow().short(), "allocation joined another deployment; deciding its health again");
                    *health.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
            }
            .instrument(tracing::info_span!("alloc_health")),
        );
    }
    let mut group_run = GroupRun {
        tasks: BTreeMap::new(),
        states: Arc::clone(&states),
        changed: changed.subscribe(),
        stop,
    };
    let checks = checks::Checks::new(&group);
    let runner = |task: Task| TaskRunner {
        checks: checks.link(&task.name),
        ctx: Arc::clone(&ctx),
        alloc: alloc.clone(),
        job: Arc::clone(&job),
        group: group.clone(),
        task_dir: alloc_dir.join(&task.name),
        alloc_dir: alloc_dir.clone(),
        task,
        states: Arc::clone(&states),
        report: Arc::clone(&report),
    };
    // Checks run while their tasks do, and stop with the allocation.
    let running_checks = checks.start(checks::Start {
        alloc: &alloc,
        job: &job,
        group: &group,
        node: &ctx.node,
        drivers: &ctx.drivers,
        alloc_dir: &alloc_dir,
        results: check_results,
        report: Arc::clone(&report),
    });
    group_run.run(&group, runner).await;
    drop(running_checks);
    report();
}

/// Where a task sits in its group's lifecycle (the `lifecycle` block).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Runs to completion before the main tasks start.
    Prestart,
    /// Starts before the main tasks and runs beside them.
    PrestartSidecar,
    Main,
    /// Starts once the main tasks run, and runs to completion.
    Poststart,
    /// Starts once the main tasks run, and runs beside them.
    PoststartSidecar,
    /// Runs to completion after the main tasks are done.
    Poststop,
}

impl Phase {
    pub(super) fn of(task: &Task) -> Phase {
        match &task.lifecycle {
            None => Phase::Main,
            Some(l) => match (l.hook.as_str(), l.sidecar) {
                ("prestart", false) => Phase::Prestart,
                ("prestart", true) => Phase::PrestartSidecar,
                ("poststart", false) => Phase::Poststart,
                ("poststart", true) => Phase::PoststartSidecar,
                ("poststop", _) => Phase::Poststop,
                // Validation refuses other hooks; a main task is the least surprising reading.
                _ => Phase::Main,
            },
        }
    }

    fn sidecar(self) -> bool {
        matches!(self, Phase::PrestartSidecar | Phase::PoststartSidecar)
    }

    /// Whether a successful exit ends the task for good, whatever the job type.
    fn ephemeral(self) -> bool {
        matches!(self, Phase::Prestart | Phase::Poststart | Phase::Poststop)
    }
}

/// Why a task is told to stop.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Kill {
    /// The allocation is stopping.
    AllocStopped,
    /// A sibling failed for good.
    SiblingFailed(String),
    /// The group's leader task is done.
    LeaderDead,
    /// The group's main tasks are done, so its sidecars go too.
    MainDead,
}

/// One started task of the group.
struct Started {
    phase: Phase,
    leader: bool,
    kill: watch::Sender<Option<Kill>>,
    done: tokio::task::JoinHandle<()>,
}

/// Runs a group's tasks in lifecycle order: prestart tasks (to completion) and prestart
/// sidecars (until running), then the main tasks, then poststart tasks once the main tasks run;
/// sidecars are stopped when the main tasks are done; poststop tasks run last, whether the
/// group ended by itself or was stopped. A task failing for good stops the others, and so does
/// the leader ending.
struct GroupRun {
    tasks: BTreeMap<String, Started>,
    states: Arc<std::sync::Mutex<BTreeMap<String, TaskState>>>,
    /// Bumped on every task state change.
    changed: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
}

impl GroupRun {
    async fn run(&mut self, group: &TaskGroup, runner: impl Fn(Task) -> TaskRunner) {
        let phase_tasks = |phases: &[Phase]| -> Vec<Task> {
            group
                .tasks
                .iter()
                .filter(|t| phases.contains(&Phase::of(t)))
                .cloned()
                .collect()
        };
        let started = self.start(
            phase_tasks(&[Phase::Prestart, Phase::PrestartSidecar]),
            &runner,
        );
        // Prestart tasks done and prestart sidecars running, or the group is already failing.
        let ready = self
            .wait(|g| {
                g.all(&started, |p, s| match p {
                    Phase::PrestartSidecar => s.state != TaskStatus::Pending,
                    _ => s.state == TaskStatus::Dead,
                })
            })
            .await;
        if ready && !self.failing() {
            let mains = self.start(phase_tasks(&[Phase::Main]), &runner);
            let running = self
                .wait(|g| g.all(&mains, |_, s| s.state != TaskStatus::Pending))
                .await;
            if running && !self.failing() {
                self.start(
                    phase_tasks(&[Phase::Poststart, Phase::PoststartSidecar]),
                    &runner,
                );
            }
            // Until the main tasks are done, a failure or the leader's end stops the rest.
            loop {
                if let Some(failed) = self.failed_task() {
                    self.kill_all(Kill::SiblingFailed(failed)).await;
                    break;
                }
                if self.all(&mains, |_, s| s.state == TaskStatus::Dead) {
                    break;
                }
                if self.leader_dead() {
                    self.kill_all(Kill::LeaderDead).await;
                    break;
                }
                if !self.changed_or_stopped().await {
                    self.kill_all(Kill::AllocStopped).await;
                    break;
                }
            }
        } else if let Some(failed) = self.failed_task() {
            self.kill_all(Kill::SiblingFailed(failed)).await;
        }
        if *self.stop.borrow() {
            self.kill_all(Kill::AllocStopped).await;
        }
        self.kill_all(Kill::MainDead).await;
        // Tasks that never started are done too.
        self.finish_unstarted(group);
        // Poststop tasks run whatever ended the group: they are its cleanup.
        let poststop = self.start(phase_tasks(&[Phase::Poststop]), &runner);
        for name in poststop {
            if let Some(t) = self.tasks.get_mut(&name) {
                let _ = (&mut t.done).await;
            }
        }
    }

    /// Spawns a task runner for each task that has not already finished (a restarted agent
    /// carries on from the reported states); returns the names of the tasks started.
    fn start(&mut self, tasks: Vec<Task>, runner: &impl Fn(Task) -> TaskRunner) -> Vec<String> {
        let mut names = Vec::new();
        for task in tasks {
            let finished = self
                .lock()
                .get(&task.name)
                .is_some_and(|s| s.state == TaskStatus::Dead);
            if finished {
                continue;
            }
            let phase = Phase::of(&task);
            let leader = task.leader;
            let name = task.name.clone();
            let (kill_tx, kill_rx) = watch::channel(None);
            let runner = runner(task);
            let span = tracing::info_span!("task", name = %name);
            let done = tokio::spawn(
                async move {
                    runner.run(kill_rx, phase.ephemeral()).await;
                }
                .instrument(span),
            );
            self.tasks.insert(
                name.clone(),
                Started {
                    phase,
                    leader,
                    kill: kill_tx,
                    done,
                },
            );
            names.push(name);
        }
        names
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, TaskState>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `ok(phase, state)` holds for each named task.
    fn all(&self, names: &[String], ok: impl Fn(Phase, &TaskState) -> bool) -> bool {
        let states = self.lock();
        names
            .iter()
            .all(|n| match (self.tasks.get(n), states.get(n)) {
                (Some(t), Some(s)) => ok(t.phase, s),
                _ => true,
            })
    }

    /// A started task that failed for good, if any.
    fn failed_task(&self) -> Option<String> {
        let states = self.lock();
        self.tasks
            .keys()
            .find(|n| {
                states
                    .get(*n)
                    .is_some_and(|s| s.state == TaskStatus::Dead && s.failed)
            })
            .cloned()
    }

    fn failing(&self) -> bool {
        self.failed_task().is_some()
    }

    fn leader_dead(&self) -> bool {
        let states = self.lock();
        self.tasks
            .iter()
            .any(|(n, t)| t.leader && states.get(n).is_some_and(|s| s.state == TaskStatus::Dead))
    }

    /// Waits for a task state change; false when the allocation is stopped instead.
    async fn changed_or_stopped(&mut self) -> bool {
        if *self.stop.borrow() {
            return false;
        }
        tokio::select! {
            r = self.changed.changed() => r.is_ok(),
            _ = self.stop.wait_for(|s| *s) => false,
        }
    }

    /// Waits until `cond` holds (true), or a task fails for good or the allocation is stopped
    /// (false).
    async fn wait(&mut self, cond: impl Fn(&GroupRun) -> bool) -> bool {
        loop {
            if cond(self) {
                return true;
            }
            if self.failing() || !self.changed_or_stopped().await {
                return false;
            }
        }
    }

    /// Stops every started task still running — the leader and other non-sidecars first, then
    /// sidecars, as Nomad does — and waits for them.
    async fn kill_all(&mut self, why: Kill) {
        for sidecars in [false, true] {
            let mut waiting = Vec::new();
            for (name, t) in &mut self.tasks {
                if t.phase.sidecar() != sidecars
                    || t.phase == Phase::Poststop
                    || t.done.is_finished()
                {
                    continue;
                }
                let why = match &why {
                    Kill::SiblingFailed(who) if who == name => Kill::AllocStopped,
                    other => other.clone(),
                };
                t.kill.send_if_modified(|k| {
                    if k.is_none() {
                        *k = Some(why);
                        true
                    } else {
                        false
                    }
                });
                waiting.push(name.clone());
            }
            for name in waiting {
                if let Some(t) = self.tasks.get_mut(&name) {
                    let _ = (&mut t.done).await;
                }
            }
        }
    }

    /// Marks the group's tasks that never started (the group ended first) as dead.
    fn finish_unstarted(&self, group: &TaskGroup) {
        let mut states = self.lock();
        for task in &group.tasks {
            if self.tasks.contains_key(&task.name) || Phase::of(task) == Phase::Poststop {
                continue;
            }
            if let Some(s) = states
                .get_mut(&task.name)
                .filter(|s| s.state == TaskStatus::Pending)
            {
                s.state = TaskStatus::Dead;
                s.finished_at = Timestamp::from_unix_nanos(now_nanos());
            }
        }
    }
}

fn make_alloc_dir(alloc_dir: &std::path::Path, group: &TaskGroup) -> std::io::Result<()> {
    for sub in ["alloc/data", "alloc/logs", "alloc/tmp"] {
        std::fs::create_dir_all(alloc_dir.join(sub))?;
    }
    for task in &group.tasks {
        for sub in ["local", "secrets", "tmp"] {
            std::fs::create_dir_all(alloc_dir.join(&task.name).join(sub))?;
        }
    }
    Ok(())
}

struct TaskRunner {
    ctx: Arc<Context>,
    alloc: Allocation,
    job: Arc<Job>,
    group: TaskGroup,
    task: Task,
    alloc_dir: PathBuf,
    task_dir: PathBuf,
    states: Arc<std::sync::Mutex<BTreeMap<String, TaskState>>>,
    report: Arc<dyn Fn() + Send + Sync>,
    /// Tells the checks when the task runs; hears their restart requests.
    checks: TaskLink,
}

/// Why a task stopped running.
enum Outcome {
    Exited(ExitResult),
    Killed,
    StartFailed,
    /// A check asked for a restart (`check_restart`); it counts as a failure.
    RestartSignaled,
    /// Failed in a way no restart fixes (a template that cannot render).
    Failed,
    /// A template with `change_mode = "restart"` re-rendered; restarted at once, outside the
    /// restart policy (as Nomad's user-requested restarts).
    TemplateRestart,
}

/// The restart reason of a template-triggered restart (Nomad's display message).
pub const TEMPLATE_RESTART_REASON: &str = "Template with change_mode restart re-rendered";

/// Backoff bounds when the servers cannot be asked what templates read.
const TEMPLATE_RETRY_MIN: Duration = Duration::from_secs(1);
const TEMPLATE_RETRY_MAX: Duration = Duration::from_secs(30);

/// A random duration in `[0, max)` (for `splay`), without a random-number dependency.
fn splay_delay(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    if max.is_zero() {
        return Duration::ZERO;
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX).max(1);
    Duration::from_nanos(h.finish() % nanos)
}

impl TaskRunner {
    fn update(&self, f: impl FnOnce(&mut TaskState)) {
        {
            let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = states.get_mut(&self.task.name) {
                f(s);
            }
        }
        (self.report)();
    }

    fn event(&self, e: TaskEvent) {
        self.update(|s| s.push_event(e, MAX_EVENTS));
    }

    fn task_env(&self) -> BTreeMap<String, String> {
        let dirs = TaskDirs {
            alloc_dir: &self.alloc_dir,
            task_dir: &self.task_dir,
        };
        env::build(
            &self.alloc,
            &self.job,
            &self.group,
            &self.task,
            &self.ctx.node,
            &dirs,
        )
    }

    /// The driver's view of the task; `template_env` (from `env = true` templates) overrides
    /// the task's own variables, as in Nomad.
    fn config(&self, template_env: BTreeMap<String, String>) -> TaskConfig {
        let mut env = self.task_env();
        env.extend(template_env);
        let config = env::interpolate_config(&self.task.config, &env, &self.ctx.node);
        let ports = self
            .alloc
            .allocated_resources
            .as_ref()
            .map(|r| {
                r.shared
                    .ports
                    .iter()
                    .map(|p| crate::drivers::PortMapping {
                        label: p.label.clone(),
                        host_ip: p.host_ip.clone(),
                        host_port: u16::try_from(p.value).unwrap_or(0),
                        container_port: u16::try_from(if p.to > 0 { p.to } else { p.value })
                            .unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        TaskConfig {
            alloc_id: self.alloc.id.to_string(),
            job_id: self.job.id.to_string(),
            group: self.group.name.clone(),
            task: self.task.name.clone(),
            config,
            env,
            user: (!self.task.user.is_empty()).then(|| self.task.user.clone()),
            resources: TaskResources {
                cpu_mhz: i64::from(self.task.resources.cpu),
                memory_mb: i64::from(self.task.resources.memory_mb),
                memory_max_mb: i64::from(self.task.resources.memory_max_mb),
            },
            alloc_dir: self.alloc_dir.clone(),
            task_dir: self.task_dir.clone(),
            ports,
            // Output paths and rotation: filled in by `logs::prepare`.
            ..TaskConfig::default()
        }
    }

    /// Runs the task until it is done for good (killed, or exited and not to be restarted);
    /// returns whether it failed. An `ephemeral` task (a lifecycle hook that is not a sidecar) is
    /// done once it exits successfully, as a batch job's task is.
    async fn run(&self, mut kill: watch::Receiver<Option<Kill>>, ephemeral: bool) -> bool {
        let policy = self.task.restart_policy.clone().unwrap_or_default();
        let batch = ephemeral || matches!(self.job.r#type, JobType::Batch | JobType::Sysbatch);
        let mut restarts: Vec<Instant> = Vec::new();
        // A task a previous agent left running is re-attached to, not set up again.
        if !self.handle_path().exists() {
            self.event(
                TaskEvent::new(event_types::TASK_SETUP, now_nanos())
                    .with_message("Building Task Directory"),
            );
        }
        loop {
            let outcome = self.run_once(&mut kill).await;
            let (failed_exit, exit) = match &outcome {
                Outcome::Killed => return self.finish(false),
                Outcome::Failed => return self.finish(true),
                Outcome::TemplateRestart => {
                    self.update(|s| {
                        s.restarts += 1;
                        s.last_restart = Timestamp::from_unix_nanos(now_nanos());
                        s.push_event(
                            TaskEvent::new(event_types::RESTARTING, now_nanos())
                                .with_restart_reason(TEMPLATE_RESTART_REASON)
                                .with_restart_delay(NomadDuration(0)),
                            MAX_EVENTS,
                        );
                    });
                    continue;
                }
                Outcome::StartFailed | Outcome::RestartSignaled => (true, None),
                Outcome::Exited(exit) => (!exit.successful(), Some(exit)),
            };
            if batch && !failed_exit {
                return self.finish(false);
            }
            // Restart within policy: attempts inside the interval window.
            let window = policy.interval.to_std();
            restarts.retain(|t| t.elapsed() < window);
            let attempts = usize::try_from(policy.attempts.max(0)).unwrap_or(0);
            if restarts.len() >= attempts {
                if policy.mode == "delay" {
                    let wait = restarts
                        .first()
                        .map_or(Duration::ZERO, |t| window.saturating_sub(t.elapsed()));
                    self.event(
                        TaskEvent::new(event_types::RESTARTING, now_nanos())
                            .with_restart_reason(caravan_schemas::alloc::restart_reasons::DELAY)
                            .with_restart_delay(NomadDuration(
                                i64::try_from(wait.as_nanos()).unwrap_or(i64::MAX),
                            )),
                    );
                    if self.sleep_or_killed(wait, &mut kill).await {
                        return self.finish(false);
                    }
                    restarts.clear();
                    continue;
                }
                let mut e = TaskEvent::new(event_types::NOT_RESTARTING, now_nanos())
                    .with_restart_reason("Exceeded allowed attempts")
                    .with_fails_task();
                if let Some(exit) = exit {
                    e = e.with_exit_code(exit.exit_code);
                }
                self.event(e);
                return self.finish(true);
            }
            restarts.push(Instant::now());
            let delay = policy.delay.to_std();
            self.update(|s| {
                s.restarts += 1;
                s.last_restart = Timestamp::from_unix_nanos(now_nanos());
                s.push_event(
                    TaskEvent::new(event_types::RESTARTING, now_nanos())
                        .with_restart_reason(caravan_schemas::alloc::restart_reasons::WITHIN_POLICY)
                        .with_restart_delay(policy.delay),
                    MAX_EVENTS,
                );
            });
            if self.sleep_or_killed(delay, &mut kill).await {
                return self.finish(false);
            }
        }
    }

    /// Sleeps, unless the task is told to stop meanwhile (then true).
    async fn sleep_or_killed(&self, d: Duration, kill: &mut watch::Receiver<Option<Kill>>) -> bool {
        if kill.borrow().is_some() {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = kill.wait_for(Option::is_some) => true,
        }
    }

    fn finish(&self, failed: bool) -> bool {
        logs::stop(&self.task_dir);
        self.update(|s| {
            s.state = TaskStatus::Dead;
            s.failed = failed;
            s.finished_at = Timestamp::from_unix_nanos(now_nanos());
        });
        failed
    }

    fn driver(&self) -> Result<Arc<dyn Driver>, String> {
        self.ctx
            .drivers
            .get(&self.task.driver)
            .cloned()
            .ok_or_else(|| {
                format!(
                    "driver {:?} is not available on this node",
                    self.task.driver
                )
            })
    }

    async fn run_once(&self, kill: &mut watch::Receiver<Option<Kill>>) -> Outcome {
        if kill.borrow().is_some() {
            return Outcome::Killed;
        }
        let driver = match self.driver() {
            Ok(d) => d,
            Err(e) => {
                self.event(
                    TaskEvent::new(event_types::DRIVER_FAILURE, now_nanos())
                        .with_driver_error(e.clone()),
                );
                return Outcome::StartFailed;
            }
        };
        let handle = match self.recover(&*driver).await {
            Some(handle) => handle,
            None => {
                let template_env = match self.prestart(kill).await {
                    Ok(vars) => vars,
                    Err(outcome) => return outcome,
                };
                let mut config = self.config(template_env);
                if let Err(e) = logs::prepare(&mut config, &self.task, driver.name()).await {
                    self.event(
                        TaskEvent::new(event_types::SETUP_FAILURE, now_nanos())
                            .with_setup_error(format!("setting up the task's logs: {e}")),
                    );
                    return Outcome::StartFailed;
                }
                let handle = match driver.start(&config).await {
                    Ok(h) => h,
                    Err(e) => {
                        self.event(
                            TaskEvent::new(event_types::DRIVER_FAILURE, now_nanos())
                                .with_driver_error(e.to_string()),
                        );
                        return Outcome::StartFailed;
                    }
                };
                self.persist(&handle);
                self.update(|s| {
                    s.state = TaskStatus::Running;
                    s.started_at = Timestamp::from_unix_nanos(now_nanos());
                    s.push_event(
                        TaskEvent::new(event_types::STARTED, now_nanos()),
                        MAX_EVENTS,
                    );
                });
                handle
            }
        };
        self.checks.started(&handle);
        let outcome = tokio::select! {
            exit = driver.wait(&handle) => match exit {
                Ok(exit) => {
                    let mut e = TaskEvent::new(event_types::TERMINATED, now_nanos())
                        .with_exit_code(exit.exit_code)
                        .with_signal(exit.signal)
                        .with_oom_killed(exit.oom_killed);
                    if let Some(err) = &exit.error {
                        e = e.with_message(err.clone());
                    }
                    self.event(e);
                    Outcome::Exited(exit)
                }
                Err(e) => {
                    self.event(TaskEvent::new(event_types::DRIVER_FAILURE, now_nanos()).with_driver_error(e.to_string()));
                    Outcome::StartFailed
                }
            },
            why = async { kill.wait_for(Option::is_some).await.ok().and_then(|w| w.clone()) } => {
                self.kill(&*driver, &handle, why.unwrap_or(Kill::AllocStopped)).await;
                Outcome::Killed
            }
            reason = self.checks.restart_requested() => {
                self.restart_for_check(&*driver, &handle, reason).await;
                Outcome::RestartSignaled
            }
            () = self.watch_templates(&*driver, &handle) => {
                self.restart_for_check(&*driver, &handle, TEMPLATE_RESTART_REASON.to_owned()).await;
                Outcome::TemplateRestart
            }
        };
        self.checks.stopped();
        let _ = std::fs::remove_file(self.handle_path());
        if let Err(e) = driver.destroy(&handle).await {
            tracing::warn!(error = %e, "releasing the task's resources failed");
        }
        outcome
    }

    /// Nomad's artifact and template hooks: before the task first starts, fetch its
    /// artifacts ("Downloading Artifacts"; a failure is "Failed Artifact Download" and is
    /// retried per the restart policy) and render its templates (a failure kills the task:
    /// "Template failed: …"). Both are done once: a marker in the task directory makes later
    /// starts (restarts, or after an agent restart) only read the env templates back.
    /// Returns the variables of `env = true` templates.
    async fn prestart(
        &self,
        kill: &mut watch::Receiver<Option<Kill>>,
    ) -> Result<BTreeMap<String, String>, Outcome> {
        let task = &self.task;
        if task.artifacts.is_empty() && task.templates.is_empty() {
            return Ok(BTreeMap::new());
        }
        let env = self.task_env();
        let cx = template::TaskContext {
            task_dir: &self.task_dir,
            env: &env,
            node: &self.ctx.node,
            namespace: self.job.namespace.as_str(),
            source: &*self.ctx.template_source,
        };
        let marker = self.task_dir.join(".caravan-prestart-done");
        let template_failed = |e: template::TemplateError| {
            self.event(
                TaskEvent::new(event_types::KILLING, now_nanos())
                    .with_fails_task()
                    .with_display_message(format!("Template failed: {e}")),
            );
            Outcome::Failed
        };
        if marker.exists() {
            return template::read_env(&task.templates, &cx).map_err(template_failed);
        }
        if !task.artifacts.is_empty() {
            self.event(TaskEvent::new(
                event_types::DOWNLOADING_ARTIFACTS,
                now_nanos(),
            ));
            let fetched = async {
                let fetcher = artifact::Fetcher::new(artifact::Limits::default())
                    .map_err(|e| (String::new(), e))?;
                for a in &task.artifacts {
                    fetcher
                        .fetch(a, &self.task_dir, &env, &self.ctx.node)
                        .await
                        .map_err(|e| (a.getter_source.clone(), e))?;
                }
                Ok::<(), (String, artifact::ArtifactError)>(())
            };
            let fetched = tokio::select! {
                r = fetched => r,
                _ = kill.wait_for(Option::is_some) => return Err(Outcome::Killed),
            };
            if let Err((source, e)) = fetched {
                self.event(
                    TaskEvent::new(event_types::ARTIFACT_DOWNLOAD_FAILED, now_nanos())
                        .with_download_error(format!(
                            "failed to download artifact {source:?}: {e}"
                        )),
                );
                return Err(Outcome::StartFailed);
            }
        }
        let rendered = tokio::select! {
            r = template::render_all(&task.templates, &cx) => r,
            _ = kill.wait_for(Option::is_some) => return Err(Outcome::Killed),
        };
        let vars = rendered.map_err(template_failed)?;
        if let Err(e) = std::fs::write(&marker, b"") {
            tracing::warn!(error = %e, "could not record that artifacts and templates are done; a restart will redo them");
        }
        Ok(vars)
    }

    /// While the task runs: re-renders its templates whenever the services they read change
    /// (blocking queries on `/v1/service/:name`), and applies the `change_mode` of those whose
    /// file changed — `signal` sends `change_signal` (SIGHUP by default), `noop` does nothing,
    /// `restart` makes this return (the caller restarts the task). `splay` delays the action by
    /// a random part of it. Never returns for a task whose templates read no service.
    async fn watch_templates(&self, driver: &dyn Driver, handle: &TaskHandle) {
        let templates = &self.task.templates;
        if templates.is_empty() {
            return std::future::pending().await;
        }
        let env = self.task_env();
        let namespace = self.job.namespace.as_str();
        let source = &*self.ctx.template_source;
        let cx = template::TaskContext {
            task_dir: &self.task_dir,
            env: &env,
            node: &self.ctx.node,
            namespace,
            source,
        };
        let mut indexes: BTreeMap<String, u64> = BTreeMap::new();
        let mut backoff = TEMPLATE_RETRY_MIN;
        loop {
            let rendered = match template::rerender_all(templates, &cx).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "re-rendering templates failed; keeping the files as they are");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(TEMPLATE_RETRY_MAX);
                    continue;
                }
            };
            if !rendered.changed.is_empty()
                && self
                    .apply_change_modes(driver, handle, &rendered.changed)
                    .await
            {
                return;
            }
            // Services read for the first time: learn their index, then render again so that
            // no change between the render and the index is missed.
            let new: Vec<String> = rendered
                .services
                .iter()
                .filter(|name| !indexes.contains_key(*name))
                .cloned()
                .collect();
            indexes.retain(|name, _| rendered.services.contains(name));
            if !new.is_empty() {
                for name in new {
                    match source.wait_change(namespace, &name, 0).await {
                        Ok(index) => {
                            indexes.insert(name, index);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "watching a template's service failed; retrying");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(TEMPLATE_RETRY_MAX);
                        }
                    }
                }
                continue;
            }
            if indexes.is_empty() {
                return std::future::pending().await;
            }
            let waits = indexes.iter().map(|(name, index)| {
                let name = name.clone();
                let index = *index;
                Box::pin(async move { (source.wait_change(namespace, &name, index).await, name) })
            });
            let ((result, name), _, _) = futures::future::select_all(waits).await;
            match result {
                Ok(index) => {
                    backoff = TEMPLATE_RETRY_MIN;
                    indexes.insert(name, index);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watching a template's service failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(TEMPLATE_RETRY_MAX);
                }
            }
        }
    }

    /// Applies the `change_mode` of the templates (by index) whose file changed; true when the
    /// task is to be restarted.
    async fn apply_change_modes(
        &self,
        driver: &dyn Driver,
        handle: &TaskHandle,
        changed: &[usize],
    ) -> bool {
        let changed: Vec<&caravan_schemas::job::Template> = changed
            .iter()
            .filter_map(|i| self.task.templates.get(*i))
            .collect();
        let splay = changed
            .iter()
            .map(|t| t.splay.to_std())
            .max()
            .unwrap_or(Duration::ZERO);
        let restart = changed
            .iter()
            .any(|t| t.change_mode.is_empty() || t.change_mode == "restart");
        let signals: std::collections::BTreeSet<&str> = changed
            .iter()
            .filter(|t| t.change_mode == "signal")
            .map(|t| {
                if t.change_signal.is_empty() {
                    "SIGHUP"
                } else {
                    t.change_signal.as_str()
                }
            })
            .collect();
        for t in &changed {
            if !matches!(t.change_mode.as_str(), "" | "restart" | "signal" | "noop") {
                tracing::warn!(change_mode = %t.change_mode, "template change_mode is not supported; treated as noop");
            }
        }
        tracing::info!(templates = changed.len(), restart, "templates re-rendered");
        if !restart && signals.is_empty() {
            return false;
        }
        tokio::time::sleep(splay_delay(splay)).await;
        if restart {
            return true;
        }
        for sig in signals {
            self.event(
                TaskEvent::new(event_types::SIGNALING, now_nanos())
                    .with_task_signal(sig)
                    .with_display_message("Template re-rendered"),
            );
            if let Err(e) = driver.signal(handle, sig).await {
                tracing::warn!(error = %e, signal = sig, "signalling the task after a template change failed");
            }
        }
        false
    }

    /// Where the running task's handle is kept, so a restarted agent can re-attach to it.
    fn handle_path(&self) -> PathBuf {
        self.task_dir.join(".caravan-handle.json")
    }

    fn persist(&self, handle: &TaskHandle) {
        let written = serde_json::to_vec(handle)
            .map_err(|e| e.to_string())
            .and_then(|bytes| std::fs::write(self.handle_path(), bytes).map_err(|e| e.to_string()));
        if let Err(e) = written {
            tracing::warn!(error = %e, "could not record the task's handle; an agent restart will not re-attach to it");
        }
    }

    /// Re-attaches to the task a previous agent left running, if it is still there.
    async fn recover(&self, driver: &dyn Driver) -> Option<TaskHandle> {
        let bytes = std::fs::read(self.handle_path()).ok()?;
        let _ = std::fs::remove_file(self.handle_path());
        let handle: TaskHandle = serde_json::from_slice(&bytes).ok()?;
        match driver.recover(&handle).await {
            Ok(()) => {
                tracing::info!(task = %self.task.name, "re-attached to the running task");
                logs::reattach(&self.task_dir).await;
                self.persist(&handle);
                self.update(|s| s.state = TaskStatus::Running);
                Some(handle)
            }
            Err(e) => {
                self.event(
                    TaskEvent::new(event_types::RESTORE_FAILED, now_nanos())
                        .with_message(format!("the task died while the agent was down: {e}")),
                );
                None
            }
        }
    }

    /// `check_restart`, or a `restart` template re-rendered: "Restart Signaled" with the
    /// reason, then the task is stopped with its kill signal and timeout; the run loop restarts
    /// it (through the restart policy for a check, at once for a template).
    async fn restart_for_check(&self, driver: &dyn Driver, handle: &TaskHandle, reason: String) {
        self.event(
            TaskEvent::new(event_types::RESTART_SIGNALED, now_nanos()).with_restart_reason(reason),
        );
        let timeout = self
            .task
            .kill_timeout
            .map_or(Duration::from_secs(5), NomadDuration::to_std);
        if let Err(e) = driver.stop(handle, timeout, &self.task.kill_signal).await {
            tracing::warn!(error = %e, "stopping the task for a check restart failed");
        }
        if let Ok(Ok(exit)) = tokio::time::timeout(timeout, driver.wait(handle)).await {
            self.event(
                TaskEvent::new(event_types::TERMINATED, now_nanos())
                    .with_exit_code(exit.exit_code)
                    .with_signal(exit.signal),
            );
        }
    }

    async fn kill(&self, driver: &dyn Driver, handle: &TaskHandle, why: Kill) {
        let timeout = self
            .task
            .kill_timeout
            .map_or(Duration::from_secs(5), NomadDuration::to_std);
        match why {
            Kill::AllocStopped => {}
            Kill::SiblingFailed(name) => self.event(
                TaskEvent::new(event_types::SIBLING_FAILED, now_nanos()).with_failed_sibling(name),
            ),
            Kill::LeaderDead => self.event(TaskEvent::new(event_types::LEADER_DEAD, now_nanos())),
            Kill::MainDead => self.event(TaskEvent::new(event_types::MAIN_DEAD, now_nanos())),
        }
        self.event(
            TaskEvent::new(event_types::KILLING, now_nanos()).with_kill_timeout(NomadDuration(
                i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX),
            )),
        );
        match driver.stop(handle, timeout, &self.task.kill_signal).await {
            Ok(()) => self.event(TaskEvent::new(event_types::KILLED, now_nanos())),
            Err(e) => self.event(
                TaskEvent::new(event_types::KILLED, now_nanos()).with_kill_error(e.to_string()),
            ),
        }
    }
}
