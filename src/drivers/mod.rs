//! Task drivers, in Nomad's shape: one small trait (fingerprint, start, wait, stop, destroy,
//! inspect, recover, signal, and optional abilities as default methods) and one module per driver.
//!
//! - [`raw_exec`]: a command as a child in its own process group, no isolation; enabled only when
//!   the plugin config says `enabled = true`.
//! - [`exec`]: the same, isolated: its own cgroup (v1 or v2) with cpu and memory limits, run as
//!   `nobody` unless `user` is set, a private mount namespace where the kernel allows.
//! - [`java`]: `java` with `jar_path` or `class`, run like `exec`.
//! - [`mock`]: a configurable fake for the agent's tests.
//!
//! A [`TaskHandle`] is plain data (Serialize/Deserialize): the agent persists it and, after a
//! restart, hands it to [`Driver::recover`] to re-attach.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub mod docker;
pub mod exec;
pub mod java;
pub mod mock;
pub mod process;
pub mod raw_exec;

/// The driver contract. Implementations must be cheap to share (`Arc<dyn Driver>`).
#[async_trait::async_trait]
pub trait Driver: Send + Sync + std::fmt::Debug + 'static {
    /// `raw_exec`, `exec`, `java`, `docker`, `mock`.
    fn name(&self) -> &'static str;
    /// Whether the driver can run here, with node attributes (`driver.raw_exec = "1"`,
    /// `driver.java.version = "17.0.15"`…).
    async fn fingerprint(&self) -> Fingerprint;
    async fn start(&self, task: &TaskConfig) -> Result<TaskHandle, DriverError>;
    /// Resolves when the task exits (callable again after `recover`, and by several callers).
    async fn wait(&self, handle: &TaskHandle) -> Result<ExitResult, DriverError>;
    /// Sends `signal` (e.g. "SIGINT", Nomad's default kill signal; empty = SIGINT), waits up to
    /// `timeout`, then SIGKILLs (the whole process group / cgroup). Stopping an exited task is Ok.
    async fn stop(
        &self,
        handle: &TaskHandle,
        timeout: Duration,
        signal: &str,
    ) -> Result<(), DriverError>;
    /// Releases everything the task held (cgroup, mounts, container); the task must be stopped.
    async fn destroy(&self, handle: &TaskHandle) -> Result<(), DriverError>;
    async fn inspect(&self, handle: &TaskHandle) -> Result<TaskStatus, DriverError>;
    /// Re-attaches to a task started by a previous agent process (pid + start time recorded in
    /// the handle; a pid reused by another process is rejected with `NotFound`).
    async fn recover(&self, handle: &TaskHandle) -> Result<(), DriverError>;
    async fn signal(&self, handle: &TaskHandle, signal: &str) -> Result<(), DriverError>;
    async fn stats(&self, _handle: &TaskHandle) -> Result<TaskStats, DriverError> {
        Err(DriverError::NotSupported("stats"))
    }
    /// Runs a short command in the running task's context — its environment, working
    /// directory, user and isolation; inside the container for docker — and returns its
    /// combined output and exit code, killing it when `request.timeout` runs out (an `Err`).
    /// Script checks use it.
    async fn exec(
        &self,
        _handle: &TaskHandle,
        _request: &ExecRequest,
    ) -> Result<ExecOutput, DriverError> {
        Err(DriverError::NotSupported("exec"))
    }
}

/// A command to run beside a running task ([`Driver::exec`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecRequest {
    /// The program and its arguments; a bare program name is looked up on the task's `PATH`.
    pub command: Vec<String>,
    /// The task's environment (the process drivers use it; docker's exec inherits the
    /// container's own).
    pub env: BTreeMap<String, String>,
    /// The task directory (the process drivers' working directory).
    pub cwd: PathBuf,
    pub timeout: Duration,
    /// How much output to keep; the rest is read and dropped.
    pub output_limit: usize,
}

/// What a [`Driver::exec`] command did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    /// Standard output and error, interleaved, at most `output_limit` bytes.
    pub output: Vec<u8>,
}

/// What `fingerprint` found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The driver exists here at all (binary present, daemon reachable, enabled).
    pub detected: bool,
    /// It can run tasks now.
    pub healthy: bool,
    /// Human-readable: "Healthy", or why not.
    pub description: String,
    /// Node attributes, e.g. `driver.exec = "1"`.
    pub attributes: BTreeMap<String, String>,
}

impl Fingerprint {
    pub fn healthy(attributes: BTreeMap<String, String>) -> Self {
        Self {
            detected: true,
            healthy: true,
            description: "Healthy".into(),
            attributes,
        }
    }

    pub fn unhealthy(detected: bool, reason: impl Into<String>) -> Self {
        Self {
            detected,
            healthy: false,
            description: reason.into(),
            attributes: BTreeMap::new(),
        }
    }
}

/// Resources the task asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResources {
    pub cpu_mhz: i64,
    pub memory_mb: i64,
    /// Nomad's `memory_max` (oversubscription); 0 = same as `memory_mb`.
    pub memory_max_mb: i64,
}

/// One port the task was given (docker maps it; the exec drivers only export env vars).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub label: String,
    pub host_ip: String,
    pub host_port: u16,
    pub container_port: u16,
}

/// Everything a driver needs to start one task.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskConfig {
    pub alloc_id: String,
    pub job_id: String,
    pub group: String,
    pub task: String,
    /// The task's driver config, runtime variables already interpolated.
    pub config: BTreeMap<String, serde_json::Value>,
    /// The full environment (NOMAD_* and the env block); nothing else is inherited.
    pub env: BTreeMap<String, String>,
    pub user: Option<String>,
    pub resources: TaskResources,
    pub alloc_dir: PathBuf,
    /// Has local/, secrets/, tmp/; the task's working directory.
    pub task_dir: PathBuf,
    /// Where the task's output goes. For the process drivers, files or FIFOs (read by the
    /// task's logmon) opened for append. For drivers that write their output themselves
    /// (docker), the file prefix: they write `<prefix>.<n>` rotated by `logs`.
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    /// How output written by the driver itself is rotated.
    #[serde(default)]
    pub logs: crate::agent::logs::LogRotation,
    pub ports: Vec<PortMapping>,
}

impl TaskConfig {
    /// A stable, path-safe id for the task: `<alloc_id>-<task>`.
    pub fn task_id(&self) -> String {
        let raw = format!("{}-{}", self.alloc_id, self.task);
        raw.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }

    /// `config[key]` as a string; `InvalidConfig` when present with another type.
    pub fn config_str(&self, key: &str) -> Result<Option<&str>, DriverError> {
        match self.config.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(DriverError::InvalidConfig(format!(
                "config key {key} must be a string, got {other}"
            ))),
        }
    }

    /// `config[key]` as a list of strings (a single string is a one-element list).
    pub fn config_strings(&self, key: &str) -> Result<Vec<String>, DriverError> {
        match self.config.get(key) {
            None | Some(serde_json::Value::Null) => Ok(Vec::new()),
            Some(serde_json::Value::String(s)) => Ok(vec![s.clone()]),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    serde_json::Value::String(s) => Ok(s.clone()),
                    serde_json::Value::Number(n) => Ok(n.to_string()),
                    serde_json::Value::Bool(b) => Ok(b.to_string()),
                    other => Err(DriverError::InvalidConfig(format!(
                        "config key {key} must be a list of strings, got element {other}"
                    ))),
                })
                .collect(),
            Some(other) => Err(DriverError::InvalidConfig(format!(
                "config key {key} must be a list of strings, got {other}"
            ))),
        }
    }
}

/// What the agent persists to re-attach to a running task. `state` is driver-private.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskHandle {
    pub driver: String,
    pub id: String,
    pub pid: Option<u32>,
    pub started_at_unix_ms: i64,
    #[serde(default)]
    pub state: serde_json::Value,
}

/// How a task ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitResult {
    pub exit_code: i32,
    /// The signal that killed it, 0 if none.
    pub signal: i32,
    pub oom_killed: bool,
    /// Set when the outcome could not be fully observed (e.g. a recovered task's exit code).
    pub error: Option<String>,
}

impl ExitResult {
    /// Exited with code 0, no signal, no OOM, no error.
    pub fn successful(&self) -> bool {
        self.exit_code == 0 && self.signal == 0 && !self.oom_killed && self.error.is_none()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskStatus {
    Running,
    Exited(ExitResult),
    Unknown,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskStats {
    /// Percent of one core over the sampling interval.
    pub cpu_percent: f64,
    pub memory_rss_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    /// The task's driver config is wrong: "missing config key command".
    #[error("invalid driver config: {0}")]
    InvalidConfig(String),
    #[error("driver is not healthy: {0}")]
    NotHealthy(String),
    #[error("failed to start task: {0}")]
    Start(String),
    /// Unknown handle, or the process is gone / its pid was reused.
    #[error("task not found: {0}")]
    NotFound(String),
    #[error("not supported by this driver: {0}")]
    NotSupported(&'static str),
    #[error("invalid signal: {0}")]
    InvalidSignal(String),
    #[error("I/O error: {0}")]
    Io(String),
    #[error("driver error: {0}")]
    Other(String),
}

impl From<std::io::Error> for DriverError {
    fn from(e: std::io::Error) -> Self {
        DriverError::Io(e.to_string())
    }
}

/// A boolean plugin option (`true`, `"true"`, `"1"`, `1`), `default` when absent or unreadable.
pub fn config_bool(config: &BTreeMap<String, serde_json::Value>, key: &str, default: bool) -> bool {
    match config.get(key) {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::String(s)) => matches!(s.as_str(), "true" | "1" | "yes" | "on"),
        Some(serde_json::Value::Number(n)) => n.as_i64().is_some_and(|n| n != 0),
        _ => default,
    }
}

/// The `plugin "<driver>" { config { … } }` blocks of the agent file: driver name → config.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PluginConfigs(pub BTreeMap<String, BTreeMap<String, serde_json::Value>>);

impl PluginConfigs {
    /// The config block of `driver`, empty if none.
    pub fn get(&self, driver: &str) -> BTreeMap<String, serde_json::Value> {
        self.0.get(driver).cloned().unwrap_or_default()
    }

    /// A boolean option (`true`, `"true"`, `"1"`), `default` when absent or unreadable.
    pub fn bool(&self, driver: &str, key: &str, default: bool) -> bool {
        self.0
            .get(driver)
            .map_or(default, |c| config_bool(c, key, default))
    }

    /// Applies the driver settings of Nomad's `client { options { … } }` map that a `plugin`
    /// block does not already set: `driver.raw_exec.enable`, `docker.privileged.enabled`,
    /// `docker.volumes.enabled`. (`driver.allowlist`/`driver.denylist` choose drivers; the
    /// agent applies them.)
    pub fn apply_client_options(&mut self, options: &BTreeMap<String, String>) {
        for (option, driver, key) in [
            ("driver.raw_exec.enable", "raw_exec", "enabled"),
            ("docker.privileged.enabled", "docker", "allow_privileged"),
            ("docker.volumes.enabled", "docker", "volumes"),
        ] {
            if let Some(given) = options.get(option) {
                let enabled = matches!(given.trim(), "1" | "true" | "yes" | "on");
                let value = if key == "volumes" {
                    serde_json::json!({ "enabled": enabled })
                } else {
                    serde_json::Value::Bool(enabled)
                };
                self.0
                    .entry(driver.to_owned())
                    .or_default()
                    .entry(key.to_owned())
                    .or_insert(value);
            }
        }
    }

    /// Builds from the decoded agent file's `plugin` blocks.
    pub fn from_specs<'a>(
        specs: impl IntoIterator<Item = &'a caravan_schemas::agent_config::PluginSpec>,
    ) -> Self {
        let mut out = BTreeMap::new();
        for spec in specs {
            let Some(name) = spec.name.clone() else {
                continue;
            };
            let config = spec
                .config
                .as_ref()
                .map(|c| c.0.clone())
                .unwrap_or_default();
            out.insert(name, config);
        }
        Self(out)
    }
}

/// The drivers built into the agent: raw_exec (only when its plugin config says
/// `enabled = true`), exec, java, docker. The mock driver is only for tests
/// (`mock::MockDriver::new()`).
pub fn builtin(plugin_config: &PluginConfigs) -> Vec<Arc<dyn Driver>> {
    let mut drivers: Vec<Arc<dyn Driver>> = Vec::new();
    if plugin_config.bool("raw_exec", "enabled", false) {
        drivers.push(Arc::new(raw_exec::RawExecDriver::new(
            plugin_config.get("raw_exec"),
        )));
    }
    drivers.push(Arc::new(exec::ExecDriver::new(plugin_config.get("exec"))));
    drivers.push(Arc::new(java::JavaDriver::new(plugin_config.get("java"))));
    drivers.push(Arc::new(docker::DockerDriver::new(
        plugin_config.get("docker"),
    )));
    drivers
}

/// A fresh handle id for `task`: `<alloc_id>-<task>.<millis>.<n>`, unique within the agent.
pub(crate) fn new_handle_id(task: &TaskConfig) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}.{:x}.{n}", task.task_id(), now_unix_ms())
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
