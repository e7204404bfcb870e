//! `mock`: a driver that runs nothing, configured per task, for the agent's tests (Nomad's
//! mock driver). Task config keys:
//!
//! | key                | meaning                                                              |
//! |--------------------|----------------------------------------------------------------------|
//! | `run_for`          | how long the task runs (`"5s"`, `"250ms"`, or milliseconds); 0 = exits at once |
//! | `exit_code`        | its exit code when it ends by itself (default 0)                      |
//! | `exit_signal`      | the signal it reports when it ends by itself (default 0)              |
//! | `exit_err_msg`     | the `error` of its exit result                                       |
//! | `oom_killed`       | report an OOM kill                                                   |
//! | `start_error`      | `start` fails with this message                                      |
//! | `start_block_for`  | `start` takes this long                                              |
//! | `kill_after`       | after the stop signal, the task takes this long to exit; if longer than the stop timeout it is "SIGKILLed" at the timeout |
//! | `signal_error`     | `signal` fails with this message                                     |
//! | `recover_error`    | `recover` fails (NotFound) with this message                         |
//! | `stdout_string`    | written to the stdout file at start                                  |
//! | `stats_cpu_percent`, `stats_memory_bytes` | what `stats` reports                        |
//!
//! The handle carries the config, so a second `MockDriver` can `recover` it (an agent restart):
//! the task then ends when it would have ended in the first one.

use super::{
    Driver, DriverError, ExitResult, Fingerprint, TaskConfig, TaskHandle, TaskStats, TaskStatus,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument;

pub const NAME: &str = "mock";

/// A task's mock config, as read from its driver config (and kept in the handle).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MockConfig {
    pub run_for_ms: u64,
    pub exit_code: i32,
    pub exit_signal: i32,
    pub exit_err_msg: Option<String>,
    pub oom_killed: bool,
    pub start_error: Option<String>,
    pub start_block_for_ms: u64,
    pub kill_after_ms: u64,
    pub signal_error: Option<String>,
    pub recover_error: Option<String>,
    pub stdout_string: Option<String>,
    pub stats_cpu_percent: f64,
    pub stats_memory_bytes: u64,
}

fn duration_ms(
    config: &BTreeMap<String, serde_json::Value>,
    key: &str,
) -> Result<u64, DriverError> {
    match config.get(key) {
        None | Some(serde_json::Value::Null) => Ok(0),
        Some(serde_json::Value::Number(n)) => n.as_u64().ok_or_else(|| {
            DriverError::InvalidConfig(format!("{key} must be a positive duration"))
        }),
        Some(serde_json::Value::String(s)) => caravan_schemas::duration::parse(s)
            .map(|d| u64::try_from(d.to_std().as_millis()).unwrap_or(u64::MAX))
            .map_err(|e| DriverError::InvalidConfig(format!("{key}: {e}"))),
        Some(other) => Err(DriverError::InvalidConfig(format!(
            "{key} must be a duration, got {other}"
        ))),
    }
}

fn opt_string(config: &BTreeMap<String, serde_json::Value>, key: &str) -> Option<String> {
    match config.get(key) {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

fn int(config: &BTreeMap<String, serde_json::Value>, key: &str) -> Result<i64, DriverError> {
    match config.get(key) {
        None | Some(serde_json::Value::Null) => Ok(0),
        Some(serde_json::Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| DriverError::InvalidConfig(format!("{key} must be an integer"))),
        Some(serde_json::Value::String(s)) => s
            .parse()
            .map_err(|_| DriverError::InvalidConfig(format!("{key} must be an integer"))),
        Some(other) => Err(DriverError::InvalidConfig(format!(
            "{key} must be an integer, got {other}"
        ))),
    }
}

impl MockConfig {
    pub fn from_task(config: &BTreeMap<String, serde_json::Value>) -> Result<Self, DriverError> {
        let i32_of = |key: &str| -> Result<i32, DriverError> {
            i32::try_from(int(config, key)?)
                .map_err(|_| DriverError::InvalidConfig(format!("{key} out of range")))
        };
        Ok(Self {
            run_for_ms: duration_ms(config, "run_for")?,
            exit_code: i32_of("exit_code")?,
            exit_signal: i32_of("exit_signal")?,
            exit_err_msg: opt_string(config, "exit_err_msg"),
            oom_killed: matches!(
                config.get("oom_killed"),
                Some(serde_json::Value::Bool(true))
            ),
            start_error: opt_string(config, "start_error"),
            start_block_for_ms: duration_ms(config, "start_block_for")?,
            kill_after_ms: duration_ms(config, "kill_after")?,
            signal_error: opt_string(config, "signal_error"),
            recover_error: opt_string(config, "recover_error"),
            stdout_string: opt_string(config, "stdout_string"),
            stats_cpu_percent: config
                .get("stats_cpu_percent")
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(0.0),
            stats_memory_bytes: config
                .get("stats_memory_bytes")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
        })
    }

    fn natural_exit(&self) -> ExitResult {
        ExitResult {
            exit_code: self.exit_code,
            signal: self.exit_signal,
            oom_killed: self.oom_killed,
            error: self.exit_err_msg.clone(),
        }
    }
}

#[derive(Debug)]
struct MockTask {
    config: MockConfig,
    exit: watch::Sender<Option<ExitResult>>,
    timer: tokio::task::JoinHandle<()>,
}

impl Drop for MockTask {
    fn drop(&mut self) {
        self.timer.abort();
    }
}

impl MockTask {
    /// A task that ends by itself `remaining` from now.
    fn run(id: &str, config: MockConfig, remaining: Duration) -> Self {
        let (tx, _rx) = watch::channel(None);
        let natural = config.natural_exit();
        let sender = tx.clone();
        let timer = tokio::spawn(
            async move {
                tokio::time::sleep(remaining).await;
                set_exit(&sender, natural);
            }
            .instrument(tracing::info_span!("mock_task", id = %id)),
        );
        Self {
            config,
            exit: tx,
            timer,
        }
    }

    fn try_exit(&self) -> Option<ExitResult> {
        self.exit.borrow().clone()
    }

    async fn wait(&self) -> ExitResult {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some(r) = rx.borrow_and_update().clone() {
                return r;
            }
            // The sender lives in `self`, so this only fails if we are being torn down.
            if rx.changed().await.is_err() {
                return ExitResult {
                    exit_code: -1,
                    error: Some("mock task was destroyed".into()),
                    ..ExitResult::default()
                };
            }
        }
    }
}

/// Sets the exit result unless the task has already exited.
fn set_exit(tx: &watch::Sender<Option<ExitResult>>, result: ExitResult) {
    tx.send_if_modified(|current| {
        if current.is_none() {
            *current = Some(result);
            true
        } else {
            false
        }
    });
}

/// The mock driver. Cheap to construct; every instance has its own task table.
#[derive(Debug)]
pub struct MockDriver {
    fingerprint: Mutex<Fingerprint>,
    tasks: Mutex<HashMap<String, Arc<MockTask>>>,
    started: Mutex<Vec<TaskConfig>>,
}

impl Default for MockDriver {
    fn default() -> Self {
        Self::new()
    }
}

impl MockDriver {
    pub fn new() -> Self {
        Self {
            fingerprint: Mutex::new(Fingerprint::healthy(BTreeMap::from([(
                format!("driver.{NAME}"),
                "1".to_string(),
            )]))),
            tasks: Mutex::new(HashMap::new()),
            started: Mutex::new(Vec::new()),
        }
    }

    /// Changes what `fingerprint` reports (e.g. to make the driver unhealthy).
    pub fn set_fingerprint(&self, fingerprint: Fingerprint) {
        if let Ok(mut f) = self.fingerprint.lock() {
            *f = fingerprint;
        }
    }

    /// Every task config `start` was called with, in order (including failed starts).
    pub fn started(&self) -> Vec<TaskConfig> {
        self.started.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// How many tasks are running.
    pub fn running(&self) -> usize {
        self.tasks
            .lock()
            .map(|t| t.values().filter(|t| t.try_exit().is_none()).count())
            .unwrap_or(0)
    }

    fn task(&self, id: &str) -> Result<Arc<MockTask>, DriverError> {
        self.tasks
            .lock()
            .ok()
            .and_then(|t| t.get(id).cloned())
            .ok_or_else(|| DriverError::NotFound(format!("no mock task {id}")))
    }

    fn insert(&self, id: &str, task: MockTask) {
        if let Ok(mut t) = self.tasks.lock() {
            t.insert(id.to_string(), Arc::new(task));
        }
    }
}

#[async_trait::async_trait]
impl Driver for MockDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default()
    }

    async fn start(&self, task: &TaskConfig) -> Result<TaskHandle, DriverError> {
        if let Ok(mut s) = self.started.lock() {
            s.push(task.clone());
        }
        let config = MockConfig::from_task(&task.config)?;
        if config.start_block_for_ms > 0 {
            tokio::time::sleep(Duration::from_millis(config.start_block_for_ms)).await;
        }
        if let Some(msg) = &config.start_error {
            return Err(DriverError::Start(msg.clone()));
        }
        if let Some(text) = &config.stdout_string {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&task.stdout_path)
                .map_err(|e| {
                    DriverError::Io(format!("opening {}: {e}", task.stdout_path.display()))
                })?;
            f.write_all(text.as_bytes())?;
        }
        let id = super::new_handle_id(task);
        let started_at_unix_ms = super::now_unix_ms();
        let state = serde_json::to_value(&config)
            .map_err(|e| DriverError::Other(format!("encoding mock state: {e}")))?;
        let run_for = Duration::from_millis(config.run_for_ms);
        self.insert(&id, MockTask::run(&id, config, run_for));
        Ok(TaskHandle {
            driver: NAME.into(),
            id,
            pid: None,
            started_at_unix_ms,
            state,
        })
    }

    async fn wait(&self, handle: &TaskHandle) -> Result<ExitResult, DriverError> {
        Ok(self.task(&handle.id)?.wait().await)
    }

    async fn stop(
        &self,
        handle: &TaskHandle,
        timeout: Duration,
        signal: &str,
    ) -> Result<(), DriverError> {
        let sig = super::process::parse_signal(signal)? as i32;
        let task = self.task(&handle.id)?;
        if task.try_exit().is_some() {
            return Ok(());
        }
        let kill_after = Duration::from_millis(task.config.kill_after_ms);
        let (delay, sig) = if kill_after <= timeout {
            (kill_after, sig)
        } else {
            (timeout, nix::sys::signal::Signal::SIGKILL as i32)
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = task.wait() => return Ok(()),
        }
        set_exit(
            &task.exit,
            ExitResult {
                exit_code: 128 + sig,
                signal: sig,
                oom_killed: false,
                error: None,
            },
        );
        Ok(())
    }

    async fn destroy(&self, handle: &TaskHandle) -> Result<(), DriverError> {
        if let Ok(mut t) = self.tasks.lock()
            && let Some(task) = t.remove(&handle.id)
        {
            let sig = nix::sys::signal::Signal::SIGKILL as i32;
            set_exit(
                &task.exit,
                ExitResult {
                    exit_code: 128 + sig,
                    signal: sig,
                    ..ExitResult::default()
                },
            );
        }
        Ok(())
    }

    async fn inspect(&self, handle: &TaskHandle) -> Result<TaskStatus, DriverError> {
        Ok(match self.task(&handle.id) {
            Ok(task) => match task.try_exit() {
                Some(r) => TaskStatus::Exited(r),
                None => TaskStatus::Running,
            },
            Err(_) => TaskStatus::Unknown,
        })
    }

    async fn recover(&self, handle: &TaskHandle) -> Result<(), DriverError> {
        if self.task(&handle.id).is_ok() {
            return Ok(());
        }
        let config: MockConfig = serde_json::from_value(handle.state.clone())
            .map_err(|e| DriverError::InvalidConfig(format!("unreadable mock handle: {e}")))?;
        if let Some(msg) = &config.recover_error {
            return Err(DriverError::NotFound(msg.clone()));
        }
        let elapsed = u64::try_from(super::now_unix_ms().saturating_sub(handle.started_at_unix_ms))
            .unwrap_or(0);
        let remaining = Duration::from_millis(config.run_for_ms.saturating_sub(elapsed));
        self.insert(&handle.id, MockTask::run(&handle.id, config, remaining));
        Ok(())
    }

    async fn signal(&self, handle: &TaskHandle, signal: &str) -> Result<(), DriverError> {
        super::process::parse_signal(signal)?;
        let task = self.task(&handle.id)?;
        match &task.config.signal_error {
            Some(msg) => Err(DriverError::Other(msg.clone())),
            None => Ok(()),
        }
    }

    async fn stats(&self, handle: &TaskHandle) -> Result<TaskStats, DriverError> {
        let task = self.task(&handle.id)?;
        Ok(TaskStats {
            cpu_percent: task.config.stats_cpu_percent,
            memory_rss_bytes: task.config.stats_memory_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task(config: serde_json::Value) -> TaskConfig {
        let dir = std::env::temp_dir();
        TaskConfig {
            alloc_id: "a1".into(),
            task: "t".into(),
            config: serde_json::from_value(config).unwrap(),
            stdout_path: dir.join("mock-stdout-unused"),
            stderr_path: dir.join("mock-stderr-unused"),
            ..TaskConfig::default()
        }
    }

    #[tokio::test]
    async fn runs_for_the_configured_time_and_exits_with_the_configured_code() {
        let d = MockDriver::new();
        let h = d
            .start(&task(json!({"run_for": "50ms", "exit_code": 3})))
            .await
            .unwrap();
        assert_eq!(d.inspect(&h).await.unwrap(), TaskStatus::Running);
        let r = tokio::time::timeout(Duration::from_secs(5), d.wait(&h))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.exit_code, 3);
        assert!(matches!(
            d.inspect(&h).await.unwrap(),
            TaskStatus::Exited(_)
        ));
        assert_eq!(d.started().len(), 1);
    }

    #[tokio::test]
    async fn start_errors_and_bad_config_are_reported() {
        let d = MockDriver::new();
        let err = d
            .start(&task(json!({"start_error": "boom"})))
            .await
            .unwrap_err();
        assert_eq!(err, DriverError::Start("boom".into()));
        let err = d
            .start(&task(json!({"run_for": "soon"})))
            .await
            .unwrap_err();
        assert!(matches!(err, DriverError::InvalidConfig(_)), "{err}");
    }

    #[tokio::test]
    async fn stop_honours_kill_after_and_the_timeout() {
        let d = MockDriver::new();
        let h = d
            .start(&task(json!({"run_for": "1h", "kill_after": "20ms"})))
            .await
            .unwrap();
        d.stop(&h, Duration::from_secs(5), "SIGTERM").await.unwrap();
        let r = d.wait(&h).await.unwrap();
        assert_eq!(r.signal, 15);
        let h = d
            .start(&task(json!({"run_for": "1h", "kill_after": "1h"})))
            .await
            .unwrap();
        d.stop(&h, Duration::from_millis(20), "").await.unwrap();
        assert_eq!(d.wait(&h).await.unwrap().signal, 9);
    }

    #[tokio::test]
    async fn a_second_instance_recovers_from_the_serialized_handle() {
        let d1 = MockDriver::new();
        let h = d1
            .start(&task(json!({"run_for": "100ms", "exit_code": 7})))
            .await
            .unwrap();
        let h: TaskHandle = serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
        let d2 = MockDriver::new();
        assert_eq!(d2.inspect(&h).await.unwrap(), TaskStatus::Unknown);
        d2.recover(&h).await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), d2.wait(&h))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.exit_code, 7);
        let h2 = d1
            .start(&task(json!({"run_for": "1h", "recover_error": "gone"})))
            .await
            .unwrap();
        assert!(matches!(
            d2.recover(&h2).await,
            Err(DriverError::NotFound(_))
        ));
    }
}
