//! `raw_exec`: runs `command` with `args` as a child in its own session and process group, with
//! no isolation. Disabled unless the agent's `plugin "raw_exec" { config { enabled = true } }`
//! says so (Nomad's rule: it runs tasks with the agent's privileges).

use super::process::{self, CpuSampler, Process, ProcessState, ProcessTable, SpawnSpec};
use super::{
    Driver, DriverError, ExecOutput, ExecRequest, ExitResult, Fingerprint, TaskConfig, TaskHandle,
    TaskStats, TaskStatus,
};
use std::collections::BTreeMap;
use std::time::Duration;

pub const NAME: &str = "raw_exec";

#[derive(Debug, Default)]
pub struct RawExecDriver {
    enabled: bool,
    processes: ProcessTable,
    cpu: CpuSampler,
}

impl RawExecDriver {
    /// `config` is the plugin block: `enabled = true` turns the driver on.
    pub fn new(config: BTreeMap<String, serde_json::Value>) -> Self {
        let enabled = super::config_bool(&config, "enabled", false);
        Self {
            enabled,
            ..Self::default()
        }
    }

    /// An enabled driver (for tests and embedders).
    pub fn enabled() -> Self {
        Self {
            enabled: true,
            ..Self::default()
        }
    }
}

/// The program and arguments of a `command`/`args` task config.
pub(crate) fn command_and_args(
    task: &TaskConfig,
) -> Result<(std::path::PathBuf, Vec<String>), DriverError> {
    let command = task
        .config_str("command")?
        .ok_or_else(|| DriverError::InvalidConfig("missing config key command".into()))?;
    let args = task.config_strings("args")?;
    let program = process::resolve_command(command, &task.task_dir, &task.env)?;
    Ok((program, args))
}

/// Whether the pid recorded in `handle` still runs the task (same start time).
pub(crate) fn inspect_unattached(handle: &TaskHandle) -> TaskStatus {
    let Ok(state) = ProcessState::from_handle(handle) else {
        return TaskStatus::Unknown;
    };
    match handle.pid.and_then(process::read_stat) {
        Some(stat)
            if stat.start_ticks == state.start_ticks
                && !stat.is_dead()
                && (state.boot_id.is_empty() || state.boot_id == process::boot_id()) =>
        {
            TaskStatus::Running
        }
        _ => TaskStatus::Unknown,
    }
}

/// Re-attaches to the process recorded in `handle`.
pub(crate) fn attach(handle: &TaskHandle) -> Result<Process, DriverError> {
    let state = ProcessState::from_handle(handle)?;
    let pid = handle
        .pid
        .ok_or_else(|| DriverError::NotFound(format!("handle {} has no pid", handle.id)))?;
    Process::attach(pid, state.start_ticks, &state.boot_id)
}

#[async_trait::async_trait]
impl Driver for RawExecDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn fingerprint(&self) -> Fingerprint {
        if !self.enabled {
            return Fingerprint::unhealthy(
                false,
                "disabled: enable it with plugin \"raw_exec\" { config { enabled = true } }",
            );
        }
        Fingerprint::healthy(BTreeMap::from([(
            format!("driver.{NAME}"),
            "1".to_string(),
        )]))
    }

    async fn start(&self, task: &TaskConfig) -> Result<TaskHandle, DriverError> {
        if !self.enabled {
            return Err(DriverError::NotHealthy("raw_exec is disabled".into()));
        }
        let (program, args) = command_and_args(task)?;
        let credentials = match task.user.as_deref().filter(|u| !u.is_empty()) {
            Some(user) => Some(process::resolve_user(user)?),
            None => None,
        };
        let id = super::new_handle_id(task);
        let started_at_unix_ms = super::now_unix_ms();
        let proc = process::spawn(SpawnSpec {
            program,
            arg0: None,
            args,
            env: task.env.clone(),
            cwd: task.task_dir.clone(),
            stdout: task.stdout_path.clone(),
            stderr: task.stderr_path.clone(),
            isolation: process::Isolation {
                credentials: credentials.clone(),
                ..Default::default()
            },
        })
        .await?;
        let state = ProcessState {
            pgid: proc.pid(),
            start_ticks: proc.start_ticks(),
            boot_id: process::boot_id(),
            user: credentials.map(|c| c.user),
            ..Default::default()
        };
        let pid = proc.pid();
        tracing::info!(task = %task.task, alloc = %task.alloc_id, pid, %id, "raw_exec task started");
        self.processes.insert(&id, proc);
        Ok(TaskHandle {
            driver: NAME.into(),
            id,
            pid: Some(pid),
            started_at_unix_ms,
            state: state.to_value(),
        })
    }

    async fn wait(&self, handle: &TaskHandle) -> Result<ExitResult, DriverError> {
        self.processes.get(&handle.id)?.wait().await
    }

    async fn stop(
        &self,
        handle: &TaskHandle,
        timeout: Duration,
        signal: &str,
    ) -> Result<(), DriverError> {
        let signal = process::parse_signal(signal)?;
        self.processes
            .get(&handle.id)?
            .stop(timeout, signal)
            .await
            .map(|_| ())
    }

    async fn destroy(&self, handle: &TaskHandle) -> Result<(), DriverError> {
        self.cpu.forget(&handle.id);
        // The task should be stopped already; make sure nothing of it is left, even when this
        // agent never recovered it (the handle's pid is only signalled if it is still the task).
        let proc = match self.processes.remove(&handle.id) {
            Some(proc) => Some(proc),
            None => attach(handle).ok().map(std::sync::Arc::new),
        };
        if let Some(proc) = proc {
            proc.stop(Duration::ZERO, nix::sys::signal::Signal::SIGKILL)
                .await?;
        }
        Ok(())
    }

    async fn inspect(&self, handle: &TaskHandle) -> Result<TaskStatus, DriverError> {
        match self.processes.get(&handle.id) {
            Ok(proc) => Ok(match proc.try_exit() {
                Some(result) => TaskStatus::Exited(result),
                None => TaskStatus::Running,
            }),
            Err(_) => Ok(inspect_unattached(handle)),
        }
    }

    async fn recover(&self, handle: &TaskHandle) -> Result<(), DriverError> {
        if self.processes.contains(&handle.id) {
            return Ok(());
        }
        let proc = attach(handle)?;
        tracing::info!(pid = proc.pid(), id = %handle.id, "raw_exec task recovered");
        self.processes.insert(&handle.id, proc);
        Ok(())
    }

    async fn signal(&self, handle: &TaskHandle, signal: &str) -> Result<(), DriverError> {
        let signal = process::parse_signal(signal)?;
        self.processes.get(&handle.id)?.signal(signal)
    }

    async fn stats(&self, handle: &TaskHandle) -> Result<TaskStats, DriverError> {
        let proc = self.processes.get(&handle.id)?;
        if proc.try_exit().is_some() {
            return Err(DriverError::NotFound(format!(
                "task {} has exited",
                handle.id
            )));
        }
        let (ticks, rss) = process::group_usage(proc.pid());
        let ns = ticks.saturating_mul(1_000_000_000 / process::clock_ticks_per_second());
        Ok(TaskStats {
            cpu_percent: self.cpu.percent(&handle.id, ns, handle.started_at_unix_ms),
            memory_rss_bytes: rss,
        })
    }

    async fn exec(
        &self,
        handle: &TaskHandle,
        request: &ExecRequest,
    ) -> Result<ExecOutput, DriverError> {
        let proc = self.processes.get(&handle.id)?;
        if proc.try_exit().is_some() {
            return Err(DriverError::NotFound(format!(
                "task {} has exited",
                handle.id
            )));
        }
        // As the task's user, when it has one.
        let state = ProcessState::from_handle(handle)?;
        let credentials = match state.user.as_deref().filter(|u| !u.is_empty()) {
            Some(user) => Some(process::resolve_user(user)?),
            None => None,
        };
        process::exec_beside(
            request,
            process::Isolation {
                credentials,
                ..Default::default()
            },
        )
        .await
    }
}
