//! Task logs: rotation, capture outside the agent, and reading (with follow) for the API.
//!
//! - [`rotate`]: [`RotatingWriter`], `<alloc>/alloc/logs/<task>.<stdout|stderr>.<n>` files
//!   rotated by size (the task's `logs { max_files, max_file_size }`).
//! - [`logmon`]: the detached `caravan logmon` process that captures a process-driver task's
//!   output from two FIFOs, so output keeps being captured while the agent is down.
//! - [`stream`]: reading a log from an offset, from the end, or following it across rotations,
//!   as Nomad's `/v1/client/fs/logs` does.
//!
//! The task runner calls [`prepare`] before starting a task and [`stop`] when the task is done
//! for good. What they did is kept in `<task_dir>/.caravan-logs.json` (the logmon's pid and
//! start time, and whether the task is finished), so a restarted agent reuses the running
//! logmon, and a log reader knows when no more output will come.

pub mod logmon;
pub mod rotate;
pub mod stream;

pub use rotate::{LogRotation, RotatingWriter};

use crate::drivers::TaskConfig;
use crate::drivers::process::{boot_id, read_stat};
use caravan_schemas::job::Task;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tracing::Instrument;

/// Drivers whose tasks write to FIFOs read by a logmon; the others (docker) write rotated
/// files themselves, to the prefix given as `stdout_path` / `stderr_path`.
pub const LOGMON_DRIVERS: &[&str] = &["raw_exec", "exec", "java"];

/// The file, in the task directory, that records the task's log capture.
const STATE_FILE: &str = ".caravan-logs.json";
/// Where logmon's own complaints go, in the task directory.
const LOGMON_LOG_FILE: &str = ".caravan-logmon.log";

/// Why logs could not be set up or read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The request is wrong (400).
    #[error("{0}")]
    Invalid(String),
    /// No such log (404).
    #[error("{0}")]
    NotFound(String),
    /// A path leads out of the allocation directory.
    #[error("{0} leads out of the allocation directory")]
    Escapes(PathBuf),
    #[error("starting logmon for task {task}: {message}")]
    Logmon { task: String, message: String },
    #[error("{path}: encoding: {message}")]
    Encode { path: PathBuf, message: String },
}

impl LogError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        LogError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A process, named so that a reused pid is not mistaken for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ProcessId {
    pid: u32,
    start_ticks: u64,
    boot_id: String,
}

impl ProcessId {
    fn of(pid: u32) -> Option<Self> {
        Some(Self {
            pid,
            start_ticks: read_stat(pid)?.start_ticks,
            boot_id: boot_id(),
        })
    }

    /// Sends SIGTERM, if the process is still the one recorded.
    fn terminate(&self) {
        if !self.is_alive() {
            return;
        }
        let Ok(pid) = i32::try_from(self.pid) else {
            return;
        };
        if let Err(e) = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        ) {
            tracing::warn!(pid, error = %e, "stopping a logmon");
        }
    }

    fn is_alive(&self) -> bool {
        self.boot_id == boot_id()
            && read_stat(self.pid)
                .is_some_and(|s| s.start_ticks == self.start_ticks && !s.is_dead())
    }
}

/// `<task_dir>/.caravan-logs.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct LogState {
    /// The logmon capturing the task's output, if its driver uses one.
    #[serde(default)]
    logmon: Option<ProcessId>,
    /// How the logmon was started, to start it again if it died while the agent was down.
    #[serde(default)]
    args: Option<logmon::LogmonArgs>,
    #[serde(default)]
    fifos: Vec<PathBuf>,
    /// The task is done for good: once the logmon is gone, the files are complete.
    #[serde(default)]
    finished: bool,
}

impl LogState {
    fn read(task_dir: &Path) -> Option<Self> {
        let bytes = std::fs::read(task_dir.join(STATE_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn write(&self, task_dir: &Path) -> Result<(), LogError> {
        let path = task_dir.join(STATE_FILE);
        let tmp = task_dir.join(format!("{STATE_FILE}.tmp"));
        let bytes = serde_json::to_vec(self).map_err(|e| LogError::Encode {
            path: path.clone(),
            message: e.to_string(),
        })?;
        std::fs::write(&tmp, bytes).map_err(|e| LogError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| LogError::io(&path, e))
    }
}

/// `<alloc_dir>/alloc/logs`.
pub fn log_dir(alloc_dir: &Path) -> PathBuf {
    alloc_dir.join("alloc").join("logs")
}

/// A task name usable in file names: not empty, no `/`, not `.` or `..`, no NUL.
pub fn check_task_name(task: &str) -> Result<(), LogError> {
    if task.is_empty() || task == "." || task == ".." || task.contains(['/', '\0']) {
        return Err(LogError::Invalid(format!(
            "task name {task:?} cannot name a log file"
        )));
    }
    Ok(())
}

/// Sets up capture of a task's output before its driver starts it, and fills in the task
/// config: `logs` (the rotation), `stdout_path` and `stderr_path`.
///
/// - `logs { disabled = true }`: output goes to `/dev/null`.
/// - [`LOGMON_DRIVERS`]: two FIFOs in the log directory, `.<task>.stdout.fifo` and
///   `.<task>.stderr.fifo`, read by a `caravan logmon` started now (or the one a previous agent
///   started, still running).
/// - any other driver: the paths are the file prefix `<log_dir>/<task>.stdout`, and the driver
///   writes `<prefix>.<n>` with a [`RotatingWriter`].
pub async fn prepare(config: &mut TaskConfig, task: &Task, driver: &str) -> Result<(), LogError> {
    check_task_name(&config.task)?;
    let dir = log_dir(&config.alloc_dir);
    std::fs::create_dir_all(&dir).map_err(|e| LogError::io(&dir, e))?;
    let rotation = LogRotation::from_config(task.log_config.as_ref());
    config.logs = rotation;
    let previous = LogState::read(&config.task_dir).unwrap_or_default();
    let mut state = LogState::default();
    if task.log_config.as_ref().is_some_and(|l| l.disabled) {
        config.stdout_path = PathBuf::from("/dev/null");
        config.stderr_path = PathBuf::from("/dev/null");
    } else if LOGMON_DRIVERS.contains(&driver) {
        let fifos = [
            dir.join(format!(".{}.stdout.fifo", config.task)),
            dir.join(format!(".{}.stderr.fifo", config.task)),
        ];
        let mut created = false;
        for fifo in &fifos {
            created |= make_fifo(fifo)?;
        }
        // A logmon reading FIFOs that were since replaced would read nothing: only one reading
        // the FIFOs that are there is reused.
        let running = previous.logmon.filter(ProcessId::is_alive);
        let (logmon, args) = match (running, previous.args) {
            (Some(running), Some(args)) if !created => {
                tracing::debug!(pid = running.pid, "reusing the task's running logmon");
                (running, args)
            }
            (stale, _) => {
                if let Some(stale) = stale {
                    stale.terminate();
                }
                let args = logmon::LogmonArgs {
                    log_dir: dir.clone(),
                    task: config.task.clone(),
                    stdout_fifo: fifos[0].clone(),
                    stderr_fifo: fifos[1].clone(),
                    max_files: rotation.max_files,
                    max_file_size_bytes: rotation.max_file_size_bytes,
                };
                (spawn_logmon(&args, &config.task_dir).await?, args)
            }
        };
        config.stdout_path = fifos[0].clone();
        config.stderr_path = fifos[1].clone();
        state.logmon = Some(logmon);
        state.args = Some(args);
        state.fifos = fifos.to_vec();
    } else {
        config.stdout_path = dir.join(format!("{}.stdout", config.task));
        config.stderr_path = dir.join(format!("{}.stderr", config.task));
    }
    state.write(&config.task_dir)
}

/// After an agent restart, for a task that is still running: its logmon goes on capturing its
/// output, or, if it died meanwhile, a new one is started on the same FIFOs.
pub async fn reattach(task_dir: &Path) {
    let Some(mut state) = LogState::read(task_dir) else {
        return;
    };
    if state.finished || state.logmon.as_ref().is_some_and(ProcessId::is_alive) {
        return;
    }
    let Some(args) = state.args.clone() else {
        return;
    };
    tracing::warn!(task = %args.task, "the task's logmon is gone; starting another");
    match spawn_logmon(&args, task_dir).await {
        Ok(logmon) => {
            state.logmon = Some(logmon);
            if let Err(e) = state.write(task_dir) {
                tracing::warn!(error = %e, "recording the task's new logmon");
            }
        }
        Err(e) => tracing::warn!(error = %e, "the task's output is no longer captured"),
    }
}

/// The task is done for good: its logmon (if any) is told to take what the pipes still hold
/// and exit, and the task is marked finished so log readers end once the logmon is gone.
pub fn stop(task_dir: &Path) {
    if !task_dir.is_dir() {
        return;
    }
    let mut state = LogState::read(task_dir).unwrap_or_default();
    if let Some(logmon) = &state.logmon {
        logmon.terminate();
    }
    for fifo in &state.fifos {
        // The logmon keeps its open descriptors; the names go.
        let _ = std::fs::remove_file(fifo);
    }
    state.fifos.clear();
    state.finished = true;
    if let Err(e) = state.write(task_dir) {
        tracing::warn!(error = %e, "recording that the task's output is complete");
    }
}

/// Whether the task's output is complete: the task is done for good and nothing captures its
/// output any more (its logmon has exited).
pub fn output_complete(task_dir: &Path) -> bool {
    LogState::read(task_dir)
        .is_some_and(|s| s.finished && !s.logmon.as_ref().is_some_and(ProcessId::is_alive))
}

/// The pid of the logmon capturing the task's output, while it runs.
pub fn running_logmon(task_dir: &Path) -> Option<u32> {
    LogState::read(task_dir)?
        .logmon
        .filter(ProcessId::is_alive)
        .map(|p| p.pid)
}

/// Creates a FIFO at `path` unless one is there (anything else there is replaced); returns
/// whether it created one.
pub(crate) fn make_fifo(path: &Path) -> Result<bool, LogError> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_fifo() => return Ok(false),
        Ok(_) => std::fs::remove_file(path).map_err(|e| LogError::io(path, e))?,
        Err(_) => {}
    }
    match nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::EEXIST) => Ok(false),
        Err(e) => Err(LogError::io(path, e.into())),
    }
}

/// Starts `caravan logmon` detached from the agent (it calls `setsid` itself, and is not
/// killed when the agent exits); reaps it if it exits while this agent runs.
async fn spawn_logmon(args: &logmon::LogmonArgs, task_dir: &Path) -> Result<ProcessId, LogError> {
    let fail = |message: String| LogError::Logmon {
        task: args.task.clone(),
        message,
    };
    let exe =
        std::env::current_exe().map_err(|e| fail(format!("finding the caravan binary: {e}")))?;
    std::fs::create_dir_all(task_dir).map_err(|e| LogError::io(task_dir, e))?;
    let own_log = task_dir.join(LOGMON_LOG_FILE);
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&own_log)
        .map_err(|e| LogError::io(&own_log, e))?;
    let mut child = tokio::process::Command::new(exe)
        .arg("logmon")
        .args(args.to_args())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .env_clear()
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    let pid = child.id().ok_or_else(|| fail("it exited at once".into()))?;
    let id = ProcessId::of(pid).ok_or_else(|| fail(format!("/proc/{pid}/stat unreadable")))?;
    tokio::spawn(
        async move {
            match child.wait().await {
                Ok(status) if status.success() => tracing::debug!("logmon exited"),
                Ok(status) => tracing::warn!(%status, "logmon exited"),
                Err(e) => tracing::warn!(error = %e, "waiting for logmon"),
            }
        }
        .instrument(tracing::info_span!("logmon", pid, task = %args.task)),
    );
    tracing::debug!(pid, "logmon started");
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use caravan_schemas::job::LogConfig;

    fn task_config(alloc_dir: &Path) -> TaskConfig {
        let task_dir = alloc_dir.join("web");
        std::fs::create_dir_all(&task_dir).unwrap();
        TaskConfig {
            task: "web".into(),
            alloc_dir: alloc_dir.to_path_buf(),
            task_dir,
            ..TaskConfig::default()
        }
    }

    fn task(logs: Option<LogConfig>) -> Task {
        Task {
            name: "web".into(),
            log_config: logs,
            ..Task::default()
        }
    }

    #[tokio::test]
    async fn drivers_that_write_their_own_logs_get_a_prefix_and_the_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = task_config(dir.path());
        let logs = LogConfig {
            max_files: 4,
            max_file_size_mb: 2,
            disabled: false,
        };
        prepare(&mut config, &task(Some(logs)), "docker")
            .await
            .unwrap();
        assert_eq!(config.stdout_path, dir.path().join("alloc/logs/web.stdout"));
        assert_eq!(config.stderr_path, dir.path().join("alloc/logs/web.stderr"));
        assert_eq!(
            config.logs,
            LogRotation {
                max_files: 4,
                max_file_size_bytes: 2 << 20
            }
        );
        assert!(running_logmon(&config.task_dir).is_none());
        assert!(
            !output_complete(&config.task_dir),
            "the task has not run yet"
        );
        stop(&config.task_dir);
        assert!(output_complete(&config.task_dir));
        // Started again (a new run of the task): not complete any more.
        prepare(&mut config, &task(None), "docker").await.unwrap();
        assert!(!output_complete(&config.task_dir));
        assert_eq!(config.logs, LogRotation::default());
    }

    #[tokio::test]
    async fn disabled_logs_go_nowhere() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = task_config(dir.path());
        let logs = LogConfig {
            disabled: true,
            ..LogConfig::default()
        };
        prepare(&mut config, &task(Some(logs)), "raw_exec")
            .await
            .unwrap();
        assert_eq!(config.stdout_path, Path::new("/dev/null"));
        assert!(running_logmon(&config.task_dir).is_none());
    }

    #[tokio::test]
    async fn task_names_that_are_paths_are_refused() {
        for name in ["", ".", "..", "a/b", "../x"] {
            assert!(check_task_name(name).is_err(), "{name:?}");
            let dir = tempfile::tempdir().unwrap();
            let mut config = task_config(dir.path());
            config.task = name.into();
            let err = prepare(&mut config, &task(None), "docker")
                .await
                .unwrap_err();
            assert!(matches!(err, LogError::Invalid(_)), "{err}");
        }
        assert!(check_task_name("web-1.a_b").is_ok());
    }

    #[test]
    fn fifos_are_made_once_and_replace_what_is_not_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".t.stdout.fifo");
        assert!(make_fifo(&path).unwrap());
        assert!(!make_fifo(&path).unwrap(), "already there");
        let file = dir.path().join("plain");
        std::fs::write(&file, "x").unwrap();
        assert!(make_fifo(&file).unwrap(), "a regular file is replaced");
    }
}
