//! Allocation and task runners: one tokio task per allocation, one per task in it.
//!
//! A task runner builds the task's directory and environment, starts it through its driver,
//! waits for it, applies the restart policy (attempts within an interval, a delay, mode fail or
//! delay), and kills it with its kill signal and timeout when the allocation is stopped. Every
//! change is recorded as Nomad's task events and sent to the reporter, which batches status
//! updates to the servers.

use super::env::{self, TaskDirs};
use super::logs;
use crate::drivers::{Driver, ExitResult, TaskConfig, TaskHandle, TaskResources};
use caravan_schemas::alloc::{
    Allocation, ClientStatus, TaskEvent, TaskState, TaskStatus, event_types,
};
use caravan_schemas::duration::Duration as NomadDuration;
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
}

/// What every runner shares.
#[derive(Debug)]
pub struct Context {
    pub drivers: HashMap<String, Arc<dyn Driver>>,
    pub node: Arc<Node>,
    /// `<data_dir>/client/allocs`.
    pub alloc_root: PathBuf,
    pub reports: mpsc::UnboundedSender<AllocReport>,
}

/// A running allocation: tell it to stop, or wait for it to finish.
#[derive(Debug)]
pub struct AllocRunner {
    stop: watch::Sender<bool>,
    done: watch::Receiver<bool>,
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
}

/// Starts running an allocation.
pub fn spawn(ctx: Arc<Context>, alloc: Allocation) -> AllocRunner {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(false);
    let span = tracing::info_span!("alloc", id = %alloc.id.short(), name = %alloc.name);
    tokio::spawn(
        async move {
            run_alloc(ctx, alloc, stop_rx).await;
            done_tx.send_replace(true);
        }
        .instrument(span),
    );
    AllocRunner {
        stop: stop_tx,
        done: done_rx,
    }
}

fn now_nanos() -> i64 {
    crate::server::writes::now_nanos()
}

/// The allocation's client status from its tasks', as Nomad's `getClientStatus`.
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
    } else if pending {
        (ClientStatus::Pending, "No tasks have started")
    } else if running {
        (ClientStatus::Running, "Tasks are running")
    } else if dead {
        (ClientStatus::Complete, "All tasks have completed")
    } else {
        (ClientStatus::Pending, "No tasks have started")
    }
}

async fn run_alloc(ctx: Arc<Context>, alloc: Allocation, stop: watch::Receiver<bool>) {
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
    let report = {
        let (ctx, states, id) = (Arc::clone(&ctx), Arc::clone(&states), alloc.id.to_string());
        move || {
            let states = states.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let (client_status, description) = client_status(&states);
            let _ = ctx.reports.send(AllocReport {
                alloc_id: id.clone(),
                client_status,
                client_description: description.to_owned(),
                task_states: states,
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
    // A task that fails stops its siblings.
    let (sibling_tx, _) = watch::channel::<Option<String>>(None);
    let sibling_tx = Arc::new(sibling_tx);
    let mut tasks = Vec::new();
    for task in group.tasks.iter().cloned() {
        let runner = TaskRunner {
            ctx: Arc::clone(&ctx),
            alloc: alloc.clone(),
            job: Arc::clone(&job),
            group: group.clone(),
            task_dir: alloc_dir.join(&task.name),
            alloc_dir: alloc_dir.clone(),
            task,
            states: Arc::clone(&states),
            report: Box::new(report.clone()),
        };
        let stop = stop.clone();
        let sibling_failed = sibling_tx.subscribe();
        let sibling_tx = Arc::clone(&sibling_tx);
        let span = tracing::info_span!("task", name = %runner.task.name);
        tasks.push(tokio::spawn(
            async move {
                let failed = runner.run(stop, sibling_failed).await;
                if failed {
                    sibling_tx.send_replace(Some(runner.task.name.clone()));
                }
            }
            .instrument(span),
        ));
    }
    for t in tasks {
        let _ = t.await;
    }
    report();
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
    report: Box<dyn Fn() + Send + Sync>,
}

/// Why a task stopped running.
enum Outcome {
    Exited(ExitResult),
    Killed,
    StartFailed,
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

    fn config(&self) -> TaskConfig {
        let dirs = TaskDirs {
            alloc_dir: &self.alloc_dir,
            task_dir: &self.task_dir,
        };
        let env = env::build(
            &self.alloc,
            &self.job,
            &self.group,
            &self.task,
            &self.ctx.node,
            &dirs,
        );
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

    /// Runs the task until it is done for good; returns whether it failed.
    async fn run(
        &self,
        mut stop: watch::Receiver<bool>,
        mut sibling: watch::Receiver<Option<String>>,
    ) -> bool {
        let policy = self.task.restart_policy.clone().unwrap_or_default();
        let batch = matches!(self.job.r#type, JobType::Batch | JobType::Sysbatch);
        let mut restarts: Vec<Instant> = Vec::new();
        // A task a previous agent left running is re-attached to, not set up again.
        if !self.handle_path().exists() {
            self.event(
                TaskEvent::new(event_types::TASK_SETUP, now_nanos())
                    .with_message("Building Task Directory"),
            );
        }
        loop {
            let outcome = self.run_once(&mut stop, &mut sibling).await;
            let (failed_exit, exit) = match &outcome {
                Outcome::Killed => return self.finish(false),
                Outcome::StartFailed => (true, None),
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
                    if self.sleep_or_stop(wait, &mut stop).await {
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
            if self.sleep_or_stop(delay, &mut stop).await {
                return self.finish(false);
            }
        }
    }

    /// Sleeps, unless the allocation is stopped meanwhile (then true).
    async fn sleep_or_stop(&self, d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
        if *stop.borrow() {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => true,
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

    async fn run_once(
        &self,
        stop: &mut watch::Receiver<bool>,
        sibling: &mut watch::Receiver<Option<String>>,
    ) -> Outcome {
        if *stop.borrow() {
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
                let mut config = self.config();
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
            _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => {
                self.kill(&*driver, &handle, None).await;
                Outcome::Killed
            }
            who = async { sibling.wait_for(|s| s.is_some()).await.ok().and_then(|w| w.clone()) } => {
                let who = who.unwrap_or_default();
                self.kill(&*driver, &handle, Some(who)).await;
                Outcome::Killed
            }
        };
        let _ = std::fs::remove_file(self.handle_path());
        if let Err(e) = driver.destroy(&handle).await {
            tracing::warn!(error = %e, "releasing the task's resources failed");
        }
        outcome
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

    async fn kill(&self, driver: &dyn Driver, handle: &TaskHandle, sibling: Option<String>) {
        let timeout = self
            .task
            .kill_timeout
            .map_or(Duration::from_secs(5), NomadDuration::to_std);
        if let Some(name) = &sibling {
            self.event(
                TaskEvent::new(event_types::SIBLING_FAILED, now_nanos())
                    .with_failed_sibling(name.clone()),
            );
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
