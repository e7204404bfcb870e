//! The `docker` driver: one container per task, through the Docker Engine API (bollard).
//!
//! Task config keys (`config { … }` of a `driver = "docker"` task):
//!
//! | key | meaning |
//! | --- | --- |
//! | `image` (required) | used when present locally, pulled otherwise (`force_pull` always pulls) |
//! | `command`, `args` | `Cmd = [command] + args` (only `args`: appended to the image's entrypoint) |
//! | `entrypoint` | replaces the image's entrypoint |
//! | `ports` | labels of the group network's ports to publish: the port's `to` (its host port when `to` is 0) on `host_ip:host_port`, tcp and udp |
//! | `port_map` | the older syntax: `[{ db = 6379 }]` or `{ db = 6379 }`; publishes every port of the task, label → container port |
//! | `network_mode` | `bridge` (default), `host`, `none`, `container:<id>`, a user network |
//! | `volumes` | `"host:container[:ro]"`; relative host paths are under the task dir; host paths outside the alloc dir need `volumes { enabled = true }` in the plugin config |
//! | `mount` / `mounts` | `{ type = "bind"/"volume"/"tmpfs", source, target, readonly, bind_options { propagation }, tmpfs_options { size, mode } }`, one or many |
//! | `labels` | extra container labels (the `com.caravan.*` ones are always set) |
//! | `privileged` | refused unless the plugin config says `allow_privileged = true` |
//! | `hostname`, `work_dir`, `dns_servers`, `dns_search_domains`, `extra_hosts`, `init`, `readonly_rootfs`, `pids_limit`, `shm_size` | as `docker run` |
//! | `force_pull`, `image_pull_timeout` | pull even when present; bound on a pull (default `5m`) |
//! | `auth_soft_fail`, `auth` | accepted and ignored (no registry credentials are handled) |
//!
//! Every container mounts `<alloc_dir>/alloc` at `/alloc`, `<task_dir>/local` at `/local` and
//! `<task_dir>/secrets` at `/secrets` (as Nomad does), is named `<task>-<alloc_id>` and labelled
//! `com.caravan.alloc_id`, `com.caravan.job_id`, `com.caravan.task_group`, `com.caravan.task`.
//!
//! Plugin config (`plugin "docker" { config { … } }`): `endpoint` (default `DOCKER_HOST` or the
//! local socket), `allow_privileged`, `volumes { enabled = true }`.
//!
//! Logs: a spawned task follows the container's log stream (with timestamps) and appends to the
//! task's stdout/stderr files, rotated by the task's `logs` block (`stdout_path` is the prefix
//! of `<prefix>.<n>`, see [`crate::agent::logs::RotatingWriter`]), until the container exits. It keeps a cursor (the last timestamp
//! written and how many lines carried it) in `<task_dir>/.docker-logs.cursor`, so the stream
//! started again by [`Driver::recover`] after an agent restart neither repeats nor drops lines.

use super::{
    Driver, DriverError, ExecOutput, ExecRequest, ExitResult, Fingerprint, TaskConfig, TaskHandle,
    TaskStats, TaskStatus, now_unix_ms,
};
use crate::agent::logs::{LogRotation, RotatingWriter};
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, HostConfig,
    HostConfigLogConfig, Mount, MountBindOptions, MountBindOptionsPropagationEnum,
    MountTmpfsOptions, MountType, PortBinding, PortMap,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StatsOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tracing::Instrument;

/// Label: the allocation the container belongs to.
pub const LABEL_ALLOC_ID: &str = "com.caravan.alloc_id";
/// Label: the job of that allocation.
pub const LABEL_JOB_ID: &str = "com.caravan.job_id";
/// Label: the task group.
pub const LABEL_TASK_GROUP: &str = "com.caravan.task_group";
/// Label: the task.
pub const LABEL_TASK: &str = "com.caravan.task";

const MIB: i64 = 1024 * 1024;
/// How long `wait` lets the log stream drain after the container exited.
const LOG_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `stop` waits for the container to go after SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(15);
/// Nomad's default `image_pull_timeout`.
const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(300);
/// How often the log cursor is saved while output flows.
const CURSOR_SAVE_INTERVAL: Duration = Duration::from_millis(500);
/// How soon the log cursor is saved once output pauses.
const CURSOR_IDLE_SAVE: Duration = Duration::from_millis(100);
/// The file, in the task dir, where the log cursor is kept.
const LOG_CURSOR_FILE: &str = ".docker-logs.cursor";

/// Config keys the driver reads; any other key is logged and ignored.
const KNOWN_KEYS: &[&str] = &[
    "image",
    "command",
    "args",
    "entrypoint",
    "ports",
    "port_map",
    "network_mode",
    "volumes",
    "mount",
    "mounts",
    "labels",
    "privileged",
    "hostname",
    "work_dir",
    "dns_servers",
    "dns_search_domains",
    "extra_hosts",
    "init",
    "readonly_rootfs",
    "pids_limit",
    "shm_size",
    "force_pull",
    "image_pull_timeout",
    "auth_soft_fail",
    "auth",
];

/// The docker plugin's own config (`plugin "docker" { config { … } }`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DockerPluginConfig {
    /// `unix:///var/run/docker.sock`, `tcp://…`; `None`: `DOCKER_HOST` or the local socket.
    pub endpoint: Option<String>,
    /// `allow_privileged = true`: tasks may ask for `privileged = true`.
    pub allow_privileged: bool,
    /// `volumes { enabled = true }`: host paths outside the alloc dir and named volumes.
    pub volumes_enabled: bool,
}

impl DockerPluginConfig {
    /// Reads the plugin config block; unreadable values fall back to the defaults.
    pub fn from_map(config: &BTreeMap<String, Value>) -> Self {
        let endpoint = config
            .get("endpoint")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let allow_privileged = config
            .get("allow_privileged")
            .and_then(value_bool)
            .unwrap_or(false);
        // `volumes { enabled = true }` decodes as a map, or as a list of maps (a repeated block).
        let volumes_enabled = match config.get("volumes") {
            Some(Value::Object(m)) => m.get("enabled").and_then(value_bool).unwrap_or(false),
            Some(Value::Array(items)) => items.iter().any(|item| {
                item.get("enabled")
                    .and_then(value_bool)
                    .is_some_and(|enabled| enabled)
            }),
            _ => false,
        };
        Self {
            endpoint,
            allow_privileged,
            volumes_enabled,
        }
    }
}

/// What the driver keeps in [`TaskHandle::state`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct HandleState {
    container_name: String,
    image: String,
    alloc_id: String,
    task: String,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    #[serde(default)]
    log_cursor_path: Option<PathBuf>,
    #[serde(default)]
    logs: LogRotation,
}

/// A task the driver is following: its exit (published by the waiter task) and its spawned tasks.
#[derive(Debug)]
struct Tracked {
    container_id: String,
    exit: watch::Receiver<Option<ExitResult>>,
    tasks: Vec<AbortHandle>,
    /// Saves the log cursor when the log stream is cut short by this drop.
    cursor: Option<CursorSaver>,
    /// The previous (container total, system total) CPU sample, for `stats`.
    last_cpu: Mutex<Option<(u64, u64)>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let cut_short = self.tasks.iter().any(|t| !t.is_finished());
        for task in &self.tasks {
            task.abort();
        }
        if cut_short && let Some(saver) = &self.cursor {
            saver.save_now();
        }
    }
}

/// The docker driver. Cheap to share; talks to the daemon lazily (the first call connects and
/// negotiates the API version, a failed attempt is retried on the next call).
#[derive(Debug)]
pub struct DockerDriver {
    plugin: DockerPluginConfig,
    client: tokio::sync::Mutex<Option<Docker>>,
    tracked: Mutex<HashMap<String, Arc<Tracked>>>,
}

impl DockerDriver {
    /// A driver with the plugin config block `config`.
    pub fn new(config: BTreeMap<String, Value>) -> Self {
        Self::with_config(DockerPluginConfig::from_map(&config))
    }

    pub fn with_config(plugin: DockerPluginConfig) -> Self {
        Self {
            plugin,
            client: tokio::sync::Mutex::new(None),
            tracked: Mutex::new(HashMap::new()),
        }
    }

    /// A connected client whose API version was negotiated with the daemon.
    pub async fn client(&self) -> Result<Docker, DriverError> {
        let mut slot = self.client.lock().await;
        if let Some(docker) = slot.as_ref() {
            return Ok(docker.clone());
        }
        let docker = match &self.plugin.endpoint {
            Some(endpoint) => Docker::connect_with_host(endpoint),
            None => Docker::connect_with_defaults(),
        }
        .map_err(|e| {
            DriverError::NotHealthy(format!("cannot connect to the Docker daemon: {e}"))
        })?;
        let docker = docker.negotiate_version().await.map_err(|e| {
            DriverError::NotHealthy(format!("the Docker daemon does not answer: {e}"))
        })?;
        *slot = Some(docker.clone());
        Ok(docker)
    }

    fn tracked_map(&self) -> MutexGuard<'_, HashMap<String, Arc<Tracked>>> {
        self.tracked.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tracked(&self, handle: &TaskHandle) -> Option<Arc<Tracked>> {
        self.tracked_map().get(&handle.id).cloned()
    }

    /// The container a handle names (a recovered task may have been found by its labels).
    fn container_id(&self, handle: &TaskHandle) -> String {
        self.tracked(handle)
            .map(|t| t.container_id.clone())
            .unwrap_or_else(|| handle.id.clone())
    }

    /// Starts following `container_id` for `handle`: log streaming and exit watching. A handle
    /// already followed (a concurrent `recover`) keeps its streams; `sink` is then dropped.
    fn track(
        &self,
        docker: &Docker,
        handle: &TaskHandle,
        container_id: &str,
        sink: LogSink,
    ) -> Arc<Tracked> {
        let mut map = self.tracked_map();
        if let Some(existing) = map.get(&handle.id) {
            return Arc::clone(existing);
        }
        let (tx, rx) = watch::channel(None);
        let short = short_id(container_id).to_string();
        let cursor = sink.cursor_saver();
        let logs = tokio::spawn(
            stream_logs(docker.clone(), container_id.to_string(), sink)
                .instrument(tracing::info_span!("docker_logs", container = %short)),
        );
        let logs_abort = logs.abort_handle();
        let waiter = tokio::spawn(
            watch_exit(docker.clone(), container_id.to_string(), logs, tx)
                .instrument(tracing::info_span!("docker_wait", container = %short)),
        );
        let tracked = Arc::new(Tracked {
            container_id: container_id.to_string(),
            exit: rx,
            tasks: vec![logs_abort, waiter.abort_handle()],
            cursor,
            last_cpu: Mutex::new(None),
        });
        map.insert(handle.id.clone(), Arc::clone(&tracked));
        tracked
    }

    /// The tracked task for `handle`, re-attaching (as `recover` does) when this driver instance
    /// has not followed it yet.
    async fn ensure_tracked(&self, handle: &TaskHandle) -> Result<Arc<Tracked>, DriverError> {
        if let Some(tracked) = self.tracked(handle) {
            return Ok(tracked);
        }
        self.recover(handle).await?;
        self.tracked(handle)
            .ok_or_else(|| DriverError::NotFound(format!("container {}", handle.id)))
    }

    /// Makes sure `image` is present: inspects it, pulls it when absent (or always when
    /// `force_pull`), with a bounded pull.
    async fn ensure_image(&self, docker: &Docker, spec: &ContainerSpec) -> Result<(), DriverError> {
        let present = match docker.inspect_image(&spec.image).await {
            Ok(_) => true,
            Err(e) if is_status(&e, 404) => false,
            Err(e) => {
                return Err(DriverError::Start(format!(
                    "inspecting image {}: {e}",
                    spec.image
                )));
            }
        };
        if present && !spec.force_pull {
            return Ok(());
        }
        tracing::info!(image = %spec.image, "pulling image");
        let pull = async {
            let options = CreateImageOptionsBuilder::new()
                .from_image(&spec.image)
                .build();
            let mut progress = docker.create_image(Some(options), None, None);
            while let Some(item) = progress.next().await {
                item?;
            }
            Ok::<(), BollardError>(())
        };
        let outcome = match tokio::time::timeout(spec.pull_timeout, pull).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("timed out after {:?}", spec.pull_timeout),
        };
        if present {
            Err(DriverError::Start(format!(
                "force_pull: pulling image {} failed: {outcome}",
                spec.image
            )))
        } else {
            Err(DriverError::Start(format!(
                "image {} is not present locally and pulling it failed: {outcome}",
                spec.image
            )))
        }
    }

    /// Creates the container; a leftover container of the same allocation and name (from a start
    /// that failed half-way) is removed first.
    async fn create(
        &self,
        docker: &Docker,
        spec: &ContainerSpec,
        task: &TaskConfig,
    ) -> Result<String, DriverError> {
        let options = CreateContainerOptionsBuilder::new()
            .name(&spec.name)
            .build();
        match docker
            .create_container(Some(options.clone()), spec.body.clone())
            .await
        {
            Ok(created) => {
                for warning in &created.warnings {
                    tracing::warn!(container = %spec.name, %warning, "docker create warning");
                }
                return Ok(created.id);
            }
            Err(e) if is_status(&e, 409) => {}
            Err(e) => {
                return Err(DriverError::Start(format!(
                    "creating container {}: {e}",
                    spec.name
                )));
            }
        }
        let existing = docker
            .inspect_container(&spec.name, None)
            .await
            .map_err(|e| DriverError::Start(format!("inspecting container {}: {e}", spec.name)))?;
        let owner = existing
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(LABEL_ALLOC_ID))
            .cloned()
            .unwrap_or_default();
        if owner != task.alloc_id {
            return Err(DriverError::Start(format!(
                "a container named {} already exists and does not belong to allocation {}",
                spec.name, task.alloc_id
            )));
        }
        tracing::info!(container = %spec.name, "removing a leftover container of this allocation");
        remove_container(docker, &spec.name).await?;
        let created = docker
            .create_container(Some(options), spec.body.clone())
            .await
            .map_err(|e| DriverError::Start(format!("creating container {}: {e}", spec.name)))?;
        Ok(created.id)
    }

    /// Finds the container of a handle: by id, else by its allocation and task labels.
    async fn find_container(
        &self,
        docker: &Docker,
        handle: &TaskHandle,
        state: &HandleState,
    ) -> Result<ContainerInspectResponse, DriverError> {
        match docker.inspect_container(&handle.id, None).await {
            Ok(info) => return Ok(info),
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(api_error("inspecting container", &handle.id, e)),
        }
        if state.alloc_id.is_empty() || state.task.is_empty() {
            return Err(DriverError::NotFound(format!("container {}", handle.id)));
        }
        let filters: HashMap<String, Vec<String>> = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_ALLOC_ID}={}", state.alloc_id),
                format!("{LABEL_TASK}={}", state.task),
            ],
        )]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let found = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| api_error("listing containers for", &handle.id, e))?;
        let Some(id) = found.into_iter().find_map(|c| c.id) else {
            return Err(DriverError::NotFound(format!("container {}", handle.id)));
        };
        docker
            .inspect_container(&id, None)
            .await
            .map_err(|e| api_error("inspecting container", &id, e))
    }
}

impl Drop for DockerDriver {
    fn drop(&mut self) {
        // Dropping the tracked tasks aborts their log and wait tasks: the containers run on,
        // and a new driver instance re-attaches with `recover`.
        self.tracked_map().clear();
    }
}

#[async_trait::async_trait]
impl Driver for DockerDriver {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn fingerprint(&self) -> Fingerprint {
        let docker = match self.client().await {
            Ok(docker) => docker,
            Err(DriverError::NotHealthy(reason)) => return Fingerprint::unhealthy(false, reason),
            Err(e) => return Fingerprint::unhealthy(false, e.to_string()),
        };
        match docker.version().await {
            Ok(version) => {
                let mut attributes = BTreeMap::new();
                attributes.insert("driver.docker".to_string(), "1".to_string());
                attributes.insert(
                    "driver.docker.version".to_string(),
                    version.version.unwrap_or_default(),
                );
                attributes.insert(
                    "driver.docker.privileged.enabled".to_string(),
                    self.plugin.allow_privileged.to_string(),
                );
                attributes.insert(
                    "driver.docker.volumes.enabled".to_string(),
                    self.plugin.volumes_enabled.to_string(),
                );
                Fingerprint::healthy(attributes)
            }
            Err(e) => {
                // Forget the client: the next fingerprint connects and negotiates again.
                *self.client.lock().await = None;
                Fingerprint::unhealthy(false, format!("the Docker daemon does not answer: {e}"))
            }
        }
    }

    async fn start(&self, task: &TaskConfig) -> Result<TaskHandle, DriverError> {
        let spec = container_spec(task, &self.plugin)?;
        let docker = self.client().await?;
        for dir in [
            task.alloc_dir.join("alloc"),
            task.task_dir.join("local"),
            task.task_dir.join("secrets"),
        ] {
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| DriverError::Io(format!("creating {}: {e}", dir.display())))?;
        }
        self.ensure_image(&docker, &spec).await?;
        let cursor_path = task.task_dir.join(LOG_CURSOR_FILE);
        // A fresh container starts a fresh log: a cursor from an earlier run would hide lines.
        match tokio::fs::remove_file(&cursor_path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DriverError::Io(format!("{}: {e}", cursor_path.display()))),
        }
        let sink = LogSink::open(
            &task.stdout_path,
            &task.stderr_path,
            task.logs,
            Some(cursor_path.clone()),
        )
        .await?;
        let id = self.create(&docker, &spec, task).await?;
        if let Err(e) = docker.start_container(&id, None).await {
            if let Err(cleanup) = remove_container(&docker, &id).await {
                tracing::warn!(container = %short_id(&id), error = %cleanup, "removing a container that failed to start");
            }
            return Err(DriverError::Start(format!(
                "starting container {}: {e}",
                spec.name
            )));
        }
        let pid = docker
            .inspect_container(&id, None)
            .await
            .ok()
            .and_then(|info| info.state.and_then(|s| s.pid))
            .and_then(|pid| u32::try_from(pid).ok())
            .filter(|pid| *pid > 0);
        let state = HandleState {
            container_name: spec.name.clone(),
            image: spec.image.clone(),
            alloc_id: task.alloc_id.clone(),
            task: task.task.clone(),
            stdout_path: task.stdout_path.clone(),
            stderr_path: task.stderr_path.clone(),
            log_cursor_path: Some(cursor_path),
            logs: task.logs,
        };
        let handle = TaskHandle {
            driver: "docker".to_string(),
            id: id.clone(),
            pid,
            started_at_unix_ms: now_unix_ms(),
            state: serde_json::to_value(&state)
                .map_err(|e| DriverError::Other(format!("encoding the task handle: {e}")))?,
        };
        self.track(&docker, &handle, &id, sink);
        tracing::info!(container = %short_id(&id), name = %spec.name, image = %spec.image, "container started");
        Ok(handle)
    }

    async fn wait(&self, handle: &TaskHandle) -> Result<ExitResult, DriverError> {
        let tracked = self.ensure_tracked(handle).await?;
        let mut exit = tracked.exit.clone();
        drop(tracked);
        let result = exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| {
                DriverError::Other(format!(
                    "container {} was destroyed while waiting for it",
                    short_id(&handle.id)
                ))
            })?
            .clone();
        result.ok_or_else(|| DriverError::Other("no exit result".to_string()))
    }

    async fn stop(
        &self,
        handle: &TaskHandle,
        timeout: Duration,
        signal: &str,
    ) -> Result<(), DriverError> {
        let docker = self.client().await?;
        let id = self.container_id(handle);
        let info = match docker.inspect_container(&id, None).await {
            Ok(info) => info,
            Err(e) if is_status(&e, 404) => return Ok(()),
            Err(e) => return Err(api_error("inspecting container", &id, e)),
        };
        if !is_running(&info) {
            return Ok(());
        }
        let signal = if signal.is_empty() {
            // Docker's own choice: the image's STOPSIGNAL, else SIGTERM.
            info.config
                .as_ref()
                .and_then(|c| c.stop_signal.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "SIGTERM".to_string())
        } else {
            signal.to_string()
        };
        let signal = normalize_signal(&signal)?;
        if !kill(&docker, &id, &signal).await? {
            return Ok(());
        }
        if wait_stopped(&docker, &id, timeout).await {
            return Ok(());
        }
        tracing::info!(container = %short_id(&id), ?timeout, %signal, "container ignored the stop signal; killing it");
        if !kill(&docker, &id, "SIGKILL").await? {
            return Ok(());
        }
        if wait_stopped(&docker, &id, KILL_GRACE).await {
            Ok(())
        } else {
            Err(DriverError::Other(format!(
                "container {} is still running {KILL_GRACE:?} after SIGKILL",
                short_id(&id)
            )))
        }
    }

    async fn destroy(&self, handle: &TaskHandle) -> Result<(), DriverError> {
        let id = self.container_id(handle);
        // Dropping the tracked task aborts its log and wait tasks.
        self.tracked_map().remove(&handle.id);
        let docker = self.client().await?;
        remove_container(&docker, &id).await
    }

    async fn inspect(&self, handle: &TaskHandle) -> Result<TaskStatus, DriverError> {
        let docker = self.client().await?;
        let id = self.container_id(handle);
        let info = docker.inspect_container(&id, None).await.map_err(|e| {
            if is_status(&e, 404) {
                DriverError::NotFound(format!("container {id}"))
            } else {
                api_error("inspecting container", &id, e)
            }
        })?;
        let status = info.state.as_ref().and_then(|s| s.status);
        Ok(match status {
            Some(ContainerStateStatusEnum::RUNNING)
            | Some(ContainerStateStatusEnum::PAUSED)
            | Some(ContainerStateStatusEnum::RESTARTING) => TaskStatus::Running,
            Some(ContainerStateStatusEnum::EXITED) | Some(ContainerStateStatusEnum::DEAD) => {
                TaskStatus::Exited(exit_result(&info, None))
            }
            _ => TaskStatus::Unknown,
        })
    }

    async fn recover(&self, handle: &TaskHandle) -> Result<(), DriverError> {
        if self.tracked(handle).is_some() {
            return Ok(());
        }
        let state: HandleState = serde_json::from_value(handle.state.clone()).unwrap_or_default();
        let docker = self.client().await?;
        let info = self.find_container(&docker, handle, &state).await?;
        let Some(id) = info.id.clone() else {
            return Err(DriverError::NotFound(format!("container {}", handle.id)));
        };
        let sink = LogSink::open(
            &state.stdout_path,
            &state.stderr_path,
            state.logs,
            state.log_cursor_path.clone(),
        )
        .await?;
        self.track(&docker, handle, &id, sink);
        tracing::info!(container = %short_id(&id), running = is_running(&info), "re-attached to container");
        Ok(())
    }

    async fn signal(&self, handle: &TaskHandle, signal: &str) -> Result<(), DriverError> {
        let signal = normalize_signal(signal)?;
        let docker = self.client().await?;
        let id = self.container_id(handle);
        if kill(&docker, &id, &signal).await? {
            Ok(())
        } else {
            Err(DriverError::NotFound(format!(
                "container {} is not running",
                short_id(&id)
            )))
        }
    }

    async fn stats(&self, handle: &TaskHandle) -> Result<TaskStats, DriverError> {
        let docker = self.client().await?;
        let id = self.container_id(handle);
        let options = StatsOptionsBuilder::new()
            .stream(false)
            .one_shot(true)
            .build();
        let sample = match docker.stats(&id, Some(options)).next().await {
            Some(Ok(sample)) => sample,
            Some(Err(e)) if is_status(&e, 404) => {
                return Err(DriverError::NotFound(format!("container {id}")));
            }
            Some(Err(e)) => return Err(api_error("reading stats of", &id, e)),
            None => return Err(DriverError::Other(format!("no stats for container {id}"))),
        };
        let cpu = sample.cpu_stats.as_ref();
        let total = cpu
            .and_then(|c| c.cpu_usage.as_ref())
            .and_then(|u| u.total_usage)
            .unwrap_or(0);
        let system = cpu.and_then(|c| c.system_cpu_usage).unwrap_or(0);
        let online = cpu
            .and_then(|c| {
                c.online_cpus.filter(|n| *n > 0).or_else(|| {
                    c.cpu_usage
                        .as_ref()
                        .and_then(|u| u.percpu_usage.as_ref())
                        .and_then(|p| u32::try_from(p.len()).ok())
                })
            })
            .filter(|n| *n > 0)
            .unwrap_or(1);
        let pre = sample.precpu_stats.as_ref().and_then(|p| {
            let total = p.cpu_usage.as_ref().and_then(|u| u.total_usage)?;
            let system = p.system_cpu_usage?;
            (system > 0).then_some((total, system))
        });
        let tracked = self.tracked(handle);
        let previous = pre.or_else(|| {
            tracked
                .as_ref()
                .and_then(|t| *t.last_cpu.lock().unwrap_or_else(|e| e.into_inner()))
        });
        if let Some(t) = &tracked {
            *t.last_cpu.lock().unwrap_or_else(|e| e.into_inner()) = Some((total, system));
        }
        let cpu_percent = match previous {
            Some((prev_total, prev_system)) if system > prev_system && total >= prev_total => {
                let cpu_delta = (total - prev_total) as f64;
                let system_delta = (system - prev_system) as f64;
                cpu_delta / system_delta * f64::from(online) * 100.0
            }
            _ => 0.0,
        };
        let memory = sample.memory_stats.as_ref();
        let detail = memory.and_then(|m| m.stats.as_ref());
        let memory_rss_bytes = detail
            .and_then(|s| s.get("rss").or_else(|| s.get("anon")).copied())
            .or_else(|| {
                let usage = memory.and_then(|m| m.usage)?;
                let cache = detail
                    .and_then(|s| s.get("cache").or_else(|| s.get("inactive_file")).copied())
                    .unwrap_or(0);
                Some(usage.saturating_sub(cache))
            })
            .unwrap_or(0);
        Ok(TaskStats {
            cpu_percent,
            memory_rss_bytes,
        })
    }

    /// `docker exec` in the task's container: the container's own environment, working
    /// directory and user. On timeout the exec'd process is killed (by its host pid).
    async fn exec(
        &self,
        handle: &TaskHandle,
        request: &ExecRequest,
    ) -> Result<ExecOutput, DriverError> {
        if request.command.is_empty() {
            return Err(DriverError::InvalidConfig("exec: no command given".into()));
        }
        let docker = self.client().await?;
        let id = self.container_id(handle);
        let created = docker
            .create_exec(
                &id,
                CreateExecOptions {
                    cmd: Some(request.command.clone()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| {
                if is_status(&e, 404) || is_status(&e, 409) {
                    DriverError::NotFound(format!("container {} is not running", short_id(&id)))
                } else {
                    api_error("creating an exec in", &id, e)
                }
            })?;
        let run = async {
            let mut output = Vec::new();
            match docker.start_exec(&created.id, None).await {
                Ok(StartExecResults::Attached {
                    output: mut stream, ..
                }) => {
                    while let Some(item) = stream.next().await {
                        let chunk = match item {
                            Ok(LogOutput::StdOut { message } | LogOutput::StdErr { message })
                            | Ok(LogOutput::Console { message }) => message,
                            Ok(_) => continue,
                            Err(e) => return Err(api_error("reading the exec output of", &id, e)),
                        };
                        let room = request.output_limit.saturating_sub(output.len());
                        output.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    }
                    Ok(output)
                }
                Ok(StartExecResults::Detached) => Ok(output),
                Err(e) => Err(api_error("starting an exec in", &id, e)),
            }
        };
        let output = match tokio::time::timeout(request.timeout, run).await {
            Ok(output) => output?,
            Err(_) => {
                // Docker has no call to stop an exec: kill its process on the host.
                let pid = docker
                    .inspect_exec(&created.id)
                    .await
                    .ok()
                    .and_then(|i| i.pid)
                    .and_then(|p| i32::try_from(p).ok())
                    .filter(|p| *p > 0);
                if let Some(pid) = pid {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                return Err(DriverError::Other(format!(
                    "{} timed out after {:?} in container {} and was killed",
                    request.command[0],
                    request.timeout,
                    short_id(&id)
                )));
            }
        };
        let inspected = docker
            .inspect_exec(&created.id)
            .await
            .map_err(|e| api_error("inspecting an exec in", &id, e))?;
        let exit_code = inspected
            .exit_code
            .and_then(|c| i32::try_from(c).ok())
            .unwrap_or(super::process::UNKNOWN_EXIT_CODE);
        Ok(ExecOutput { exit_code, output })
    }
}

// ---------------------------------------------------------------------------------------------
// Container spec: the task config turned into a create request (pure, unit tested).

/// What `start` asks Docker for.
#[derive(Clone, Debug)]
struct ContainerSpec {
    name: String,
    image: String,
    force_pull: bool,
    pull_timeout: Duration,
    body: ContainerCreateBody,
}

/// The container name of a task: `<task>-<alloc_id>`, with characters Docker refuses replaced.
pub fn container_name(task: &TaskConfig) -> String {
    let raw = format!("{}-{}", task.task, task.alloc_id);
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn container_spec(
    task: &TaskConfig,
    plugin: &DockerPluginConfig,
) -> Result<ContainerSpec, DriverError> {
    for key in task.config.keys() {
        if !KNOWN_KEYS.contains(&key.as_str()) {
            tracing::warn!(task = %task.task, %key, "ignoring unsupported docker config key");
        }
    }
    let image = task
        .config_str("image")?
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| DriverError::InvalidConfig("missing config key image".to_string()))?
        .to_string();

    let command = task.config_str("command")?.filter(|s| !s.is_empty());
    let args = task.config_strings("args")?;
    let cmd = match command {
        Some(command) => Some(std::iter::once(command.to_string()).chain(args).collect()),
        None if !args.is_empty() => Some(args),
        None => None,
    };
    let entrypoint = Some(task.config_strings("entrypoint")?).filter(|e| !e.is_empty());

    let privileged = config_bool(task, "privileged")?.unwrap_or(false);
    if privileged && !plugin.allow_privileged {
        return Err(DriverError::InvalidConfig(
            "privileged containers are not allowed on this node (set allow_privileged = true in the docker plugin config)"
                .to_string(),
        ));
    }

    let network_mode = task
        .config_str("network_mode")?
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let (exposed, bindings) = port_bindings(task)?;
    let publishes = !matches!(
        network_mode.as_deref(),
        Some(mode) if mode == "host" || mode == "none" || mode.starts_with("container:")
    );
    if !publishes && !bindings.is_empty() {
        tracing::warn!(task = %task.task, network_mode = ?network_mode, "ports are not published in this network mode");
    }

    let mut binds = vec![
        format!("{}:/alloc", task.alloc_dir.join("alloc").display()),
        format!("{}:/local", task.task_dir.join("local").display()),
        format!("{}:/secrets", task.task_dir.join("secrets").display()),
    ];
    for volume in task.config_strings("volumes")? {
        binds.push(volume_bind(&volume, task, plugin)?);
    }
    let mut mounts = Vec::new();
    for key in ["mount", "mounts"] {
        for m in config_maps(task, key)? {
            mounts.push(mount_spec(m, task, plugin)?);
        }
    }

    let mut labels: HashMap<String, String> = HashMap::new();
    for m in config_maps(task, "labels")? {
        for (k, v) in m {
            labels.insert(k.clone(), scalar_string(v, "labels")?);
        }
    }
    labels.insert(LABEL_ALLOC_ID.to_string(), task.alloc_id.clone());
    labels.insert(LABEL_JOB_ID.to_string(), task.job_id.clone());
    labels.insert(LABEL_TASK_GROUP.to_string(), task.group.clone());
    labels.insert(LABEL_TASK.to_string(), task.task.clone());

    let env: Vec<String> = task.env.iter().map(|(k, v)| format!("{k}={v}")).collect();

    let cpu_shares = (task.resources.cpu_mhz > 0).then(|| task.resources.cpu_mhz.max(2));
    let memory_mb = task.resources.memory_mb.max(0);
    let limit_mb = task.resources.memory_max_mb.max(memory_mb);
    let memory = (limit_mb > 0).then(|| limit_mb * MIB);
    let memory_reservation = (memory_mb > 0 && limit_mb > 0).then(|| memory_mb * MIB);

    let shm_size = match task.config.get("shm_size") {
        None | Some(Value::Null) => None,
        Some(v) => Some(value_i64(v).ok_or_else(|| invalid("shm_size must be a number of bytes"))?),
    };
    let pids_limit = match task.config.get("pids_limit") {
        None | Some(Value::Null) => None,
        Some(v) => Some(value_i64(v).ok_or_else(|| invalid("pids_limit must be a number"))?),
    };
    let pull_timeout = match task.config.get("image_pull_timeout") {
        None | Some(Value::Null) => DEFAULT_PULL_TIMEOUT,
        Some(v) => parse_duration(v)
            .ok_or_else(|| invalid("image_pull_timeout must be a duration such as \"5m\""))?,
    };

    let host_config = HostConfig {
        binds: Some(binds),
        mounts: (!mounts.is_empty()).then_some(mounts),
        port_bindings: (publishes && !bindings.is_empty()).then_some(bindings),
        network_mode: network_mode.clone(),
        privileged: Some(privileged),
        cpu_shares,
        memory,
        memory_swap: memory,
        memory_reservation,
        shm_size,
        pids_limit,
        init: config_bool(task, "init")?,
        readonly_rootfs: config_bool(task, "readonly_rootfs")?,
        dns: Some(task.config_strings("dns_servers")?).filter(|v| !v.is_empty()),
        dns_search: Some(task.config_strings("dns_search_domains")?).filter(|v| !v.is_empty()),
        extra_hosts: Some(task.config_strings("extra_hosts")?).filter(|v| !v.is_empty()),
        // Logs are read back through the API, so they go to a driver that supports reading.
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".to_string()),
            config: Some(HashMap::from([
                ("max-size".to_string(), "10m".to_string()),
                ("max-file".to_string(), "3".to_string()),
            ])),
        }),
        ..Default::default()
    };
    let body = ContainerCreateBody {
        image: Some(image.clone()),
        cmd,
        entrypoint,
        env: Some(env),
        user: task.user.clone().filter(|u| !u.is_empty()),
        hostname: task
            .config_str("hostname")?
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        working_dir: task
            .config_str("work_dir")?
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        labels: Some(labels),
        exposed_ports: (publishes && !exposed.is_empty()).then_some(exposed),
        attach_stdin: Some(false),
        attach_stdout: Some(false),
        attach_stderr: Some(false),
        tty: Some(false),
        open_stdin: Some(false),
        host_config: Some(host_config),
        ..Default::default()
    };
    Ok(ContainerSpec {
        name: container_name(task),
        image,
        force_pull: config_bool(task, "force_pull")?.unwrap_or(false),
        pull_timeout,
        body,
    })
}

/// `(exposed ports, port bindings)` from `ports` (labels of the task's ports) or the older
/// `port_map` (every port of the task, label → container port).
fn port_bindings(task: &TaskConfig) -> Result<(Vec<String>, PortMap), DriverError> {
    let labels = task.config_strings("ports")?;
    let mut port_map: BTreeMap<String, u16> = BTreeMap::new();
    for m in config_maps(task, "port_map")? {
        for (label, v) in m {
            let port = value_i64(v)
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    invalid(&format!("port_map {label} must be a port number, got {v}"))
                })?;
            port_map.insert(label.clone(), port);
        }
    }
    for label in port_map.keys() {
        if !task.ports.iter().any(|p| &p.label == label) {
            return Err(invalid(&format!(
                "port_map label {label} is not a port of the task's network"
            )));
        }
    }
    let selected: Vec<_> = if !labels.is_empty() {
        labels
            .iter()
            .map(|label| {
                task.ports
                    .iter()
                    .find(|p| &p.label == label)
                    .ok_or_else(|| {
                        invalid(&format!(
                            "port label {label} is not in the group network (known: {})",
                            task.ports
                                .iter()
                                .map(|p| p.label.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })
            })
            .collect::<Result<_, _>>()?
    } else if !port_map.is_empty() {
        task.ports.iter().collect()
    } else {
        Vec::new()
    };
    let mut exposed = Vec::new();
    let mut bindings: PortMap = HashMap::new();
    for port in selected {
        if port.host_port == 0 {
            return Err(invalid(&format!(
                "port {} has no host port assigned",
                port.label
            )));
        }
        let container_port =
            port_map
                .get(&port.label)
                .copied()
                .unwrap_or(if port.container_port != 0 {
                    port.container_port
                } else {
                    port.host_port
                });
        for proto in ["tcp", "udp"] {
            let key = format!("{container_port}/{proto}");
            if !exposed.contains(&key) {
                exposed.push(key.clone());
            }
            let binding = PortBinding {
                host_ip: Some(port.host_ip.clone()).filter(|ip| !ip.is_empty()),
                host_port: Some(port.host_port.to_string()),
            };
            bindings.entry(key).or_insert_with(|| Some(Vec::new()));
            if let Some(Some(list)) = bindings.get_mut(&format!("{container_port}/{proto}")) {
                list.push(binding);
            }
        }
    }
    Ok((exposed, bindings))
}

/// `"host:container[:mode]"` → a bind string with the host path resolved and checked.
fn volume_bind(
    volume: &str,
    task: &TaskConfig,
    plugin: &DockerPluginConfig,
) -> Result<String, DriverError> {
    let parts: Vec<&str> = volume.split(':').collect();
    let (host, container, mode) = match parts.as_slice() {
        [host, container] => (*host, *container, None),
        [host, container, mode] => (*host, *container, Some(*mode)),
        _ => {
            return Err(invalid(&format!(
                "volume {volume:?} must be \"host_path:container_path[:ro]\""
            )));
        }
    };
    if host.is_empty() || !container.starts_with('/') {
        return Err(invalid(&format!(
            "volume {volume:?} must be \"host_path:container_path[:ro]\" with an absolute container path"
        )));
    }
    if let Some(mode) = mode {
        for opt in mode.split(',') {
            if !matches!(
                opt,
                "ro" | "rw"
                    | "z"
                    | "Z"
                    | "shared"
                    | "slave"
                    | "private"
                    | "rshared"
                    | "rslave"
                    | "rprivate"
                    | "nocopy"
            ) {
                return Err(invalid(&format!("volume {volume:?}: unknown mode {opt:?}")));
            }
        }
    }
    let host_path = resolve_host_path(host, task, plugin, &format!("volume {volume:?}"))?;
    Ok(match mode {
        Some(mode) => format!("{}:{container}:{mode}", host_path.display()),
        None => format!("{}:{container}", host_path.display()),
    })
}

/// A host path of a volume or bind mount: relative paths are under the task dir; the result must
/// stay inside the alloc dir (symlinks followed) unless the plugin config enables volumes.
fn resolve_host_path(
    host: &str,
    task: &TaskConfig,
    plugin: &DockerPluginConfig,
    what: &str,
) -> Result<PathBuf, DriverError> {
    let path = Path::new(host);
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        task.task_dir.join(path)
    };
    let normalized = normalize(&joined);
    if plugin.volumes_enabled {
        return Ok(normalized);
    }
    let alloc_dir = canonical_prefix(&normalize(&task.alloc_dir));
    if canonical_prefix(&normalized).starts_with(&alloc_dir) {
        Ok(normalized)
    } else {
        Err(invalid(&format!(
            "{what}: host path {} is outside the allocation directory; set volumes {{ enabled = true }} in the docker plugin config to allow it",
            normalized.display()
        )))
    }
}

/// A `mount { … }` block.
fn mount_spec(
    m: &serde_json::Map<String, Value>,
    task: &TaskConfig,
    plugin: &DockerPluginConfig,
) -> Result<Mount, DriverError> {
    let get_str = |key: &str| -> Result<Option<String>, DriverError> {
        match m.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(invalid(&format!(
                "mount {key} must be a string, got {other}"
            ))),
        }
    };
    let typ = get_str("type")?.unwrap_or_else(|| "volume".to_string());
    let target = get_str("target")?
        .filter(|t| t.starts_with('/'))
        .ok_or_else(|| invalid("mount target must be an absolute path"))?;
    let source = get_str("source")?.filter(|s| !s.is_empty());
    let read_only = match m.get("readonly") {
        None | Some(Value::Null) => None,
        Some(v) => Some(value_bool(v).ok_or_else(|| invalid("mount readonly must be a boolean"))?),
    };
    let first_map = |key: &str| match m.get(key) {
        Some(Value::Object(o)) => Some(o.clone()),
        Some(Value::Array(items)) => items.iter().find_map(|i| i.as_object().cloned()),
        _ => None,
    };
    let mut mount = Mount {
        target: Some(target.clone()),
        read_only,
        ..Default::default()
    };
    match typ.as_str() {
        "bind" => {
            let source = source.ok_or_else(|| invalid("a bind mount needs a source"))?;
            let host = resolve_host_path(&source, task, plugin, &format!("mount {target}"))?;
            mount.typ = Some(MountType::BIND);
            mount.source = Some(host.display().to_string());
            if let Some(opts) = first_map("bind_options") {
                let propagation = match opts.get("propagation").and_then(Value::as_str) {
                    None => None,
                    Some("private") => Some(MountBindOptionsPropagationEnum::PRIVATE),
                    Some("rprivate") => Some(MountBindOptionsPropagationEnum::RPRIVATE),
                    Some("shared") => Some(MountBindOptionsPropagationEnum::SHARED),
                    Some("rshared") => Some(MountBindOptionsPropagationEnum::RSHARED),
                    Some("slave") => Some(MountBindOptionsPropagationEnum::SLAVE),
                    Some("rslave") => Some(MountBindOptionsPropagationEnum::RSLAVE),
                    Some(other) => {
                        return Err(invalid(&format!("unknown bind propagation {other:?}")));
                    }
                };
                mount.bind_options = Some(MountBindOptions {
                    propagation,
                    ..Default::default()
                });
            }
        }
        "volume" => {
            if source.is_some() && !plugin.volumes_enabled {
                return Err(invalid(&format!(
                    "mount {target}: named volumes need volumes {{ enabled = true }} in the docker plugin config"
                )));
            }
            mount.typ = Some(MountType::VOLUME);
            mount.source = source;
        }
        "tmpfs" => {
            mount.typ = Some(MountType::TMPFS);
            if let Some(opts) = first_map("tmpfs_options") {
                mount.tmpfs_options = Some(MountTmpfsOptions {
                    size_bytes: opts.get("size").and_then(value_i64),
                    mode: opts.get("mode").and_then(value_i64),
                    ..Default::default()
                });
            }
        }
        other => {
            return Err(invalid(&format!(
                "mount type {other:?} is not one of bind, volume, tmpfs"
            )));
        }
    }
    Ok(mount)
}

// ---------------------------------------------------------------------------------------------
// Exit watching and logs.

/// Waits for the container to stop, lets the log stream drain, and publishes the exit.
async fn watch_exit(
    docker: Docker,
    id: String,
    logs: tokio::task::JoinHandle<()>,
    tx: watch::Sender<Option<ExitResult>>,
) {
    let mut backoff = Duration::from_millis(200);
    let wait_code = loop {
        let options = WaitContainerOptionsBuilder::new()
            .condition("not-running")
            .build();
        match docker.wait_container(&id, Some(options)).next().await {
            Some(Ok(response)) => break Some(response.status_code),
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => break Some(code),
            Some(Err(e)) if is_status(&e, 404) => break None,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "waiting for the container failed; retrying");
            }
            None => {}
        }
        // The daemon went away or the request timed out: retry unless it has stopped meanwhile.
        match docker.inspect_container(&id, None).await {
            Ok(info) if !is_running(&info) => break info.state.and_then(|s| s.exit_code),
            Err(e) if is_status(&e, 404) => break None,
            _ => {}
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    };
    if tokio::time::timeout(LOG_DRAIN_TIMEOUT, logs).await.is_err() {
        tracing::warn!("the log stream did not end after the container stopped");
    }
    let result = match docker.inspect_container(&id, None).await {
        Ok(info) => exit_result(&info, wait_code),
        Err(e) => ExitResult {
            exit_code: wait_code.and_then(|c| i32::try_from(c).ok()).unwrap_or(-1),
            signal: 0,
            oom_killed: false,
            error: Some(format!("container {} is gone: {e}", short_id(&id))),
        },
    };
    tracing::info!(
        exit_code = result.exit_code,
        oom_killed = result.oom_killed,
        "container exited"
    );
    tx.send_replace(Some(result));
}

/// The exit of a stopped container, from its inspect (the wait API's code as a fallback).
fn exit_result(info: &ContainerInspectResponse, wait_code: Option<i64>) -> ExitResult {
    let state = info.state.as_ref();
    let exit_code = state
        .and_then(|s| s.exit_code)
        .or(wait_code)
        .and_then(|c| i32::try_from(c).ok())
        .unwrap_or(-1);
    ExitResult {
        exit_code,
        signal: 0,
        oom_killed: state.and_then(|s| s.oom_killed).unwrap_or(false),
        error: state
            .and_then(|s| s.error.clone())
            .filter(|e| !e.is_empty()),
    }
}

/// Where a container's output goes, and how far it got.
#[derive(Debug)]
struct LogSink {
    stdout: RotatingWriter,
    stderr: RotatingWriter,
    cursor_path: Option<PathBuf>,
    cursor: LogCursor,
    /// The cursor as of the last completed write, for [`Tracked`]'s drop to save when the
    /// stream is aborted (an agent shutting down) before it saved the cursor itself.
    shared: Arc<Mutex<LogCursor>>,
}

impl LogSink {
    /// `stdout` and `stderr` are file prefixes: the files are `<prefix>.<n>`, rotated.
    async fn open(
        stdout: &Path,
        stderr: &Path,
        rotation: LogRotation,
        cursor_path: Option<PathBuf>,
    ) -> Result<Self, DriverError> {
        let open = |prefix: PathBuf| async move {
            let (Some(dir), Some(base)) = (
                prefix.parent().filter(|d| !d.as_os_str().is_empty()),
                prefix.file_name().and_then(|n| n.to_str()),
            ) else {
                return Err(DriverError::InvalidConfig(format!(
                    "the task's stdout/stderr path {:?} is not a file prefix",
                    prefix.display()
                )));
            };
            let (dir, base) = (dir.to_path_buf(), base.to_owned());
            tokio::task::spawn_blocking(move || RotatingWriter::open(&dir, &base, rotation))
                .await
                .map_err(|e| DriverError::Other(format!("opening the log files: {e}")))?
                .map_err(|e| DriverError::Io(e.to_string()))
        };
        let cursor = match &cursor_path {
            Some(path) => match tokio::fs::read(path).await {
                Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
                Err(_) => LogCursor::default(),
            },
            None => LogCursor::default(),
        };
        Ok(Self {
            stdout: open(stdout.to_path_buf()).await?,
            stderr: open(stderr.to_path_buf()).await?,
            cursor_path,
            shared: Arc::new(Mutex::new(cursor.clone())),
            cursor,
        })
    }

    /// What [`Tracked`] keeps to save the cursor when it is dropped.
    fn cursor_saver(&self) -> Option<CursorSaver> {
        self.cursor_path.clone().map(|path| CursorSaver {
            path,
            cursor: Arc::clone(&self.shared),
        })
    }

    async fn save_cursor(&self) {
        let Some(path) = &self.cursor_path else {
            return;
        };
        let Ok(bytes) = serde_json::to_vec(&self.cursor) else {
            return;
        };
        let tmp = path.with_extension("tmp");
        let saved = async {
            tokio::fs::write(&tmp, &bytes).await?;
            tokio::fs::rename(&tmp, path).await
        };
        if let Err(e) = saved.await {
            tracing::warn!(path = %path.display(), error = %e, "saving the log cursor");
        }
    }
}

/// Saves a log stream's cursor synchronously, from a `Drop`.
#[derive(Debug)]
struct CursorSaver {
    path: PathBuf,
    cursor: Arc<Mutex<LogCursor>>,
}

impl CursorSaver {
    fn save_now(&self) {
        let cursor = self
            .cursor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if cursor.ts.is_none() {
            return;
        }
        let Ok(bytes) = serde_json::to_vec(&cursor) else {
            return;
        };
        let tmp = self.path.with_extension("drop.tmp");
        let saved = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = saved {
            tracing::warn!(path = %self.path.display(), error = %e, "saving the log cursor");
        }
    }
}

/// The last log timestamp written and how many messages carried it: a stream started again
/// from that second skips what was already written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct LogCursor {
    /// (unix seconds, nanoseconds) of the newest message written.
    ts: Option<(i64, u32)>,
    /// Messages written with exactly `ts`.
    count: u64,
}

/// Where a resumed stream is in replaying what the cursor already covers.
#[derive(Clone, Copy, Debug)]
struct Replay {
    active: bool,
    skip: u64,
}

impl LogCursor {
    /// The `since` of a stream that resumes after this cursor.
    fn since(&self) -> i32 {
        self.ts
            .map(|(secs, _)| i32::try_from(secs).unwrap_or(i32::MAX))
            .unwrap_or(0)
    }

    /// The replay state of a stream starting now (from `since()`).
    fn replay(&self) -> Replay {
        Replay {
            active: self.ts.is_some(),
            skip: self.count,
        }
    }

    /// Whether a message stamped `ts` is to be written. While replaying, messages older than the
    /// cursor and the first `count` at its timestamp were written before; after that (and on a
    /// live stream) everything is written, even a message a little out of order.
    fn accept(&mut self, ts: (i64, u32), replay: &mut Replay) -> bool {
        if replay.active {
            match self.ts {
                Some(cur) if ts < cur => return false,
                Some(cur) if ts == cur && replay.skip > 0 => {
                    replay.skip -= 1;
                    return false;
                }
                _ => replay.active = false,
            }
        }
        match self.ts {
            Some(cur) if ts == cur => self.count += 1,
            Some(cur) if ts < cur => {}
            _ => {
                self.ts = Some(ts);
                self.count = 1;
            }
        }
        true
    }
}

/// How one log request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pumped {
    /// The stream ended (with `follow`: the container stopped, or the request was cut).
    Ended,
    /// The container no longer exists.
    Gone,
    /// The request failed; try again.
    Failed,
}

/// One log request, from the cursor on, written into the sink.
async fn pump_logs(docker: &Docker, id: &str, sink: &mut LogSink, follow: bool) -> Pumped {
    let options = LogsOptionsBuilder::new()
        .follow(follow)
        .stdout(true)
        .stderr(true)
        .timestamps(true)
        .since(sink.cursor.since())
        .build();
    let mut stream = docker.logs(id, Some(options));
    let mut replay = sink.cursor.replay();
    let mut last_save = Instant::now();
    let mut dirty = false;
    let mut outcome = Pumped::Ended;
    loop {
        // The cursor is saved at most every half second while output flows, and as soon as
        // the output pauses, so a restarted agent repeats little or nothing.
        let next = if dirty {
            match tokio::time::timeout(CURSOR_IDLE_SAVE, stream.next()).await {
                Ok(next) => next,
                Err(_) => {
                    sink.save_cursor().await;
                    last_save = Instant::now();
                    dirty = false;
                    continue;
                }
            }
        } else {
            stream.next().await
        };
        let Some(item) = next else {
            break;
        };
        let (message, to_stderr) = match item {
            Ok(LogOutput::StdOut { message }) => (message, false),
            Ok(LogOutput::StdErr { message }) => (message, true),
            Ok(_) => continue,
            Err(e) if is_status(&e, 404) => {
                outcome = Pumped::Gone;
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the container's logs failed; resuming");
                outcome = Pumped::Failed;
                break;
            }
        };
        let (ts, payload) = split_timestamp(&message);
        if let Some(ts) = ts
            && !sink.cursor.accept(ts, &mut replay)
        {
            continue;
        }
        let file = if to_stderr {
            &mut sink.stderr
        } else {
            &mut sink.stdout
        };
        // A small write to a local file (page cache); not worth a blocking-pool round trip.
        if let Err(e) = file.write_all(payload) {
            tracing::warn!(error = %e, "writing the task's log file");
        }
        *sink.shared.lock().unwrap_or_else(|e| e.into_inner()) = sink.cursor.clone();
        dirty = true;
        if last_save.elapsed() > CURSOR_SAVE_INTERVAL {
            sink.save_cursor().await;
            last_save = Instant::now();
            dirty = false;
        }
    }
    if dirty {
        sink.save_cursor().await;
    }
    outcome
}

/// Follows the container's logs into the sink until the container has stopped and its output is
/// drained; survives daemon hiccups and cut requests by resuming from the cursor.
async fn stream_logs(docker: Docker, id: String, mut sink: LogSink) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if pump_logs(&docker, &id, &mut sink, true).await == Pumped::Gone {
            return;
        }
        match docker.inspect_container(&id, None).await {
            Ok(info) if !is_running(&info) => {
                // One more pass picks up anything a cut stream missed before the exit.
                pump_logs(&docker, &id, &mut sink, false).await;
                return;
            }
            Err(e) if is_status(&e, 404) => return,
            _ => {}
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Splits `"2024-05-07T21:09:36.123456789Z payload"` into the timestamp and the payload.
fn split_timestamp(message: &[u8]) -> (Option<(i64, u32)>, &[u8]) {
    let Some(space) = message.iter().position(|b| *b == b' ') else {
        return (None, message);
    };
    let parsed = std::str::from_utf8(&message[..space])
        .ok()
        .and_then(parse_rfc3339);
    match parsed {
        Some(ts) => (Some(ts), &message[space + 1..]),
        None => (None, message),
    }
}

/// Parses an RFC 3339 UTC timestamp (`…Z`, as Docker writes them) into (unix seconds, nanos).
fn parse_rfc3339(s: &str) -> Option<(i64, u32)> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: u32 = d.next()?.parse().ok()?;
    let day: u32 = d.next()?.parse().ok()?;
    let (hms, frac) = match time.split_once('.') {
        Some((hms, frac)) => (hms, frac),
        None => (time, ""),
    };
    let mut t = hms.split(':');
    let hour: i64 = t.next()?.parse().ok()?;
    let minute: i64 = t.next()?.parse().ok()?;
    let second: i64 = t.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || frac.len() > 9 {
        return None;
    }
    let nanos = if frac.is_empty() {
        0
    } else {
        let digits: u32 = frac.parse().ok()?;
        digits * 10u32.pow(9 - u32::try_from(frac.len()).ok()?)
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hour * 3600 + minute * 60 + second, nanos))
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

/// Sends `signal`; `Ok(false)` when the container is not running (or gone).
async fn kill(docker: &Docker, id: &str, signal: &str) -> Result<bool, DriverError> {
    let options = KillContainerOptionsBuilder::new().signal(signal).build();
    match docker.kill_container(id, Some(options)).await {
        Ok(()) => Ok(true),
        Err(e) if is_status(&e, 409) || is_status(&e, 404) => Ok(false),
        Err(e) => Err(api_error(&format!("sending {signal} to"), id, e)),
    }
}

/// Whether the container stopped within `timeout`.
async fn wait_stopped(docker: &Docker, id: &str, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    let waited = tokio::time::timeout_at(deadline, async {
        let options = WaitContainerOptionsBuilder::new()
            .condition("not-running")
            .build();
        match docker.wait_container(id, Some(options)).next().await {
            Some(Ok(_)) | Some(Err(BollardError::DockerContainerWaitError { .. })) => return,
            Some(Err(e)) if is_status(&e, 404) => return,
            _ => {}
        }
        // The wait API failed: poll instead.
        loop {
            match docker.inspect_container(id, None).await {
                Ok(info) if !is_running(&info) => return,
                Err(e) if is_status(&e, 404) => return,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await;
    waited.is_ok()
}

async fn remove_container(docker: &Docker, id: &str) -> Result<(), DriverError> {
    let options = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        // "removal of container … is already in progress"
        Err(e) if is_status(&e, 409) => Ok(()),
        Err(e) => Err(api_error("removing container", id, e)),
    }
}

fn is_running(info: &ContainerInspectResponse) -> bool {
    info.state
        .as_ref()
        .is_some_and(|s| s.running.unwrap_or(false) || s.restarting.unwrap_or(false))
}

fn is_status(e: &BollardError, code: u16) -> bool {
    matches!(e, BollardError::DockerResponseServerError { status_code, .. } if *status_code == code)
}

fn api_error(what: &str, id: &str, e: BollardError) -> DriverError {
    if is_status(&e, 404) {
        DriverError::NotFound(format!("container {}", short_id(id)))
    } else {
        DriverError::Other(format!("{what} {}: {e}", short_id(id)))
    }
}

fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn invalid(msg: &str) -> DriverError {
    DriverError::InvalidConfig(msg.to_string())
}

/// `SIGTERM`, `TERM`, `term`, `15` → `SIGTERM`; unknown names are refused.
pub fn normalize_signal(signal: &str) -> Result<String, DriverError> {
    const SIGNALS: &[&str] = &[
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    let trimmed = signal.trim();
    if let Ok(n) = trimmed.parse::<usize>() {
        return n
            .checked_sub(1)
            .and_then(|i| SIGNALS.get(i))
            .map(|s| s.to_string())
            .ok_or_else(|| DriverError::InvalidSignal(signal.to_string()));
    }
    let upper = trimmed.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    if SIGNALS.contains(&name.as_str()) {
        Ok(name)
    } else {
        Err(DriverError::InvalidSignal(signal.to_string()))
    }
}

/// The longest existing ancestor of `path` canonicalized (symlinks resolved), with the rest
/// appended: where the path really points, even when it does not exist yet.
fn canonical_prefix(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(canonical) = existing.canonicalize() {
            let mut out = canonical;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (
            existing.file_name().map(|n| n.to_os_string()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// Removes `.` and resolves `..` lexically.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn value_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.as_str() {
            "true" | "1" | "yes" | "on" => Some(true),
            "false" | "0" | "no" | "off" | "" => Some(false),
            _ => None,
        },
        Value::Number(n) => n.as_i64().map(|n| n != 0),
        _ => None,
    }
}

fn value_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `"5m"`, `"30s"`, `"1h30m"`, `"250ms"`, or a number of seconds.
fn parse_duration(v: &Value) -> Option<Duration> {
    let s = match v {
        Value::Number(n) => return n.as_u64().map(Duration::from_secs),
        Value::String(s) => s.trim(),
        _ => return None,
    };
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        total += match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            _ => return None,
        };
    }
    Some(total)
}

fn config_bool(task: &TaskConfig, key: &str) -> Result<Option<bool>, DriverError> {
    match task.config.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => value_bool(v)
            .map(Some)
            .ok_or_else(|| invalid(&format!("config key {key} must be a boolean, got {v}"))),
    }
}

/// A block that HCL decodes as a map or a list of maps (`labels { … }`, `port_map = [{ … }]`).
fn config_maps<'a>(
    task: &'a TaskConfig,
    key: &str,
) -> Result<Vec<&'a serde_json::Map<String, Value>>, DriverError> {
    match task.config.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(m)) => Ok(vec![m]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_object().ok_or_else(|| {
                    invalid(&format!("config key {key} must be a map or a list of maps"))
                })
            })
            .collect(),
        Some(other) => Err(invalid(&format!(
            "config key {key} must be a map or a list of maps, got {other}"
        ))),
    }
}

fn scalar_string(v: &Value, key: &str) -> Result<String, DriverError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(invalid(&format!(
            "config key {key} must have string values, got {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::PortMapping;
    use serde_json::json;

    fn task(config: Value) -> TaskConfig {
        let config = match config {
            Value::Object(m) => m.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        TaskConfig {
            alloc_id: "a1b2".into(),
            job_id: "web".into(),
            group: "g".into(),
            task: "server".into(),
            config,
            alloc_dir: PathBuf::from("/tmp/caravan-test/alloc-a1b2"),
            task_dir: PathBuf::from("/tmp/caravan-test/alloc-a1b2/server"),
            ports: vec![
                PortMapping {
                    label: "http".into(),
                    host_ip: "127.0.0.1".into(),
                    host_port: 23456,
                    container_port: 8080,
                },
                PortMapping {
                    label: "db".into(),
                    host_ip: "127.0.0.1".into(),
                    host_port: 23457,
                    container_port: 0,
                },
            ],
            ..Default::default()
        }
    }

    fn spec(config: Value) -> Result<ContainerSpec, DriverError> {
        container_spec(&task(config), &DockerPluginConfig::default())
    }

    fn host(spec: &ContainerSpec) -> &HostConfig {
        spec.body.host_config.as_ref().unwrap()
    }

    #[test]
    fn image_is_required() {
        let err = spec(json!({"command": "sh"})).unwrap_err();
        assert_eq!(
            err,
            DriverError::InvalidConfig("missing config key image".into())
        );
    }

    #[test]
    fn command_args_entrypoint() {
        let s = spec(json!({"image": "x", "command": "sh", "args": ["-c", "echo hi"], "entrypoint": ["/bin/busybox"]})).unwrap();
        assert_eq!(
            s.body.cmd,
            Some(vec!["sh".into(), "-c".into(), "echo hi".into()])
        );
        assert_eq!(s.body.entrypoint, Some(vec!["/bin/busybox".into()]));
        let s = spec(json!({"image": "x", "args": ["a"]})).unwrap();
        assert_eq!(s.body.cmd, Some(vec!["a".into()]));
        let s = spec(json!({"image": "x"})).unwrap();
        assert_eq!(s.body.cmd, None);
        assert_eq!(s.body.entrypoint, None);
        assert_eq!(s.name, "server-a1b2");
    }

    #[test]
    fn ports_by_label() {
        let s = spec(json!({"image": "x", "ports": ["http", "db"]})).unwrap();
        let bindings = host(&s).port_bindings.as_ref().unwrap();
        let http = bindings["8080/tcp"].as_ref().unwrap();
        assert_eq!(http[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(http[0].host_port.as_deref(), Some("23456"));
        // `to` = 0: the container listens on the host port.
        assert!(bindings.contains_key("23457/tcp"));
        assert!(bindings.contains_key("23457/udp"));
        let exposed = s.body.exposed_ports.as_ref().unwrap();
        assert!(exposed.contains(&"8080/tcp".to_string()));
        let err = spec(json!({"image": "x", "ports": ["nope"]})).unwrap_err();
        assert!(err.to_string().contains("port label nope"), "{err}");
    }

    #[test]
    fn port_map_list_or_map() {
        for port_map in [
            json!([{"db": 6379}]),
            json!({"db": 6379}),
            json!([{"db": "6379"}]),
        ] {
            let s = spec(json!({"image": "x", "port_map": port_map})).unwrap();
            let bindings = host(&s).port_bindings.as_ref().unwrap();
            let db = bindings["6379/tcp"].as_ref().unwrap();
            assert_eq!(db[0].host_port.as_deref(), Some("23457"));
            // Every port of the task is published, the unmapped one on its `to`.
            assert!(bindings.contains_key("8080/tcp"));
        }
        let err = spec(json!({"image": "x", "port_map": [{"nope": 1}]})).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn host_network_publishes_nothing() {
        let s = spec(json!({"image": "x", "ports": ["http"], "network_mode": "host"})).unwrap();
        assert!(host(&s).port_bindings.is_none());
        assert_eq!(host(&s).network_mode.as_deref(), Some("host"));
    }

    #[test]
    fn volumes_confined_to_the_alloc_dir() {
        let s =
            spec(json!({"image": "x", "volumes": ["data:/data", "../alloc/shared:/shared:ro"]}))
                .unwrap();
        let binds = host(&s).binds.as_ref().unwrap();
        assert!(binds.contains(&"/tmp/caravan-test/alloc-a1b2/alloc:/alloc".to_string()));
        assert!(binds.contains(&"/tmp/caravan-test/alloc-a1b2/server/local:/local".to_string()));
        assert!(binds.contains(&"/tmp/caravan-test/alloc-a1b2/server/data:/data".to_string()));
        // `../../..` climbs out of the task dir and out of the alloc dir.
        let err = spec(json!({"image": "x", "volumes": ["../../../etc:/etc2"]})).unwrap_err();
        assert!(
            err.to_string().contains("outside the allocation directory"),
            "{err}"
        );
        let err = spec(json!({"image": "x", "volumes": ["/etc:/host-etc:ro"]})).unwrap_err();
        assert!(
            err.to_string().contains("outside the allocation directory"),
            "{err}"
        );
        let ok = spec(json!({"image": "x", "volumes": ["/tmp/caravan-test/alloc-a1b2/alloc:/x"]}));
        assert!(ok.is_ok());
        let enabled = DockerPluginConfig::from_map(
            &[("volumes".to_string(), json!([{"enabled": true}]))].into(),
        );
        assert!(enabled.volumes_enabled);
        assert!(
            container_spec(
                &task(json!({"image": "x", "volumes": ["/etc:/host-etc:ro"]})),
                &enabled
            )
            .is_ok()
        );
        let err = spec(json!({"image": "x", "volumes": ["/a:b"]})).unwrap_err();
        assert!(err.to_string().contains("absolute container path"), "{err}");
    }

    #[test]
    fn mounts() {
        let s = spec(json!({"image": "x", "mount": [
            {"type": "bind", "source": "local/conf", "target": "/conf", "readonly": true},
            {"type": "tmpfs", "target": "/scratch", "tmpfs_options": {"size": 1048576}}
        ]}))
        .unwrap();
        let mounts = host(&s).mounts.as_ref().unwrap();
        assert_eq!(mounts[0].typ, Some(MountType::BIND));
        assert_eq!(
            mounts[0].source.as_deref(),
            Some("/tmp/caravan-test/alloc-a1b2/server/local/conf")
        );
        assert_eq!(mounts[0].read_only, Some(true));
        assert_eq!(mounts[1].typ, Some(MountType::TMPFS));
        let err = spec(
            json!({"image": "x", "mount": {"type": "bind", "source": "/var", "target": "/v"}}),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("outside the allocation directory"),
            "{err}"
        );
        let err = spec(
            json!({"image": "x", "mount": {"type": "volume", "source": "named", "target": "/v"}}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("named volumes"), "{err}");
    }

    #[test]
    fn privileged_needs_the_plugin_permission() {
        let err = spec(json!({"image": "x", "privileged": true})).unwrap_err();
        assert!(err.to_string().contains("privileged"), "{err}");
        let allowed =
            DockerPluginConfig::from_map(&[("allow_privileged".to_string(), json!(true))].into());
        let s = container_spec(&task(json!({"image": "x", "privileged": true})), &allowed).unwrap();
        assert_eq!(host(&s).privileged, Some(true));
    }

    #[test]
    fn labels_env_resources() {
        let mut t =
            task(json!({"image": "x", "labels": [{"team": "web", "com.caravan.task": "spoof"}]}));
        t.env.insert("A".into(), "1".into());
        t.resources.cpu_mhz = 500;
        t.resources.memory_mb = 64;
        t.resources.memory_max_mb = 128;
        let s = container_spec(&t, &DockerPluginConfig::default()).unwrap();
        let labels = s.body.labels.as_ref().unwrap();
        assert_eq!(labels["team"], "web");
        assert_eq!(labels[LABEL_TASK], "server");
        assert_eq!(labels[LABEL_ALLOC_ID], "a1b2");
        assert_eq!(labels[LABEL_JOB_ID], "web");
        assert_eq!(labels[LABEL_TASK_GROUP], "g");
        assert_eq!(s.body.env, Some(vec!["A=1".to_string()]));
        let h = host(&s);
        assert_eq!(h.cpu_shares, Some(500));
        assert_eq!(h.memory, Some(128 * MIB));
        assert_eq!(h.memory_reservation, Some(64 * MIB));
        t.resources.memory_max_mb = 0;
        let s = container_spec(&t, &DockerPluginConfig::default()).unwrap();
        assert_eq!(host(&s).memory, Some(64 * MIB));
    }

    #[test]
    fn signals() {
        assert_eq!(normalize_signal("SIGTERM").unwrap(), "SIGTERM");
        assert_eq!(normalize_signal("int").unwrap(), "SIGINT");
        assert_eq!(normalize_signal("9").unwrap(), "SIGKILL");
        assert!(matches!(
            normalize_signal("SIGNOPE"),
            Err(DriverError::InvalidSignal(_))
        ));
        assert!(normalize_signal("0").is_err());
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(
            parse_rfc3339("2024-05-07T21:09:36.123456789Z"),
            Some((1_715_116_176, 123_456_789))
        );
        assert_eq!(
            parse_rfc3339("2000-03-01T00:00:01.5Z"),
            Some((951_868_801, 500_000_000))
        );
        let (ts, payload) = split_timestamp(b"2024-05-07T21:09:36.000000001Z hello world\n");
        assert_eq!(ts, Some((1_715_116_176, 1)));
        assert_eq!(payload, b"hello world\n");
        let (ts, payload) = split_timestamp(b"no timestamp here");
        assert_eq!(ts, None);
        assert_eq!(payload, b"no timestamp here");
    }

    #[test]
    fn cursor_skips_what_was_written() {
        let mut cursor = LogCursor::default();
        let mut replay = cursor.replay();
        assert!(cursor.accept((10, 1), &mut replay));
        assert!(cursor.accept((10, 1), &mut replay));
        assert!(cursor.accept((10, 5), &mut replay));
        assert!(cursor.accept((10, 5), &mut replay));
        // Live, a message slightly out of order is still written.
        assert!(cursor.accept((10, 3), &mut replay));
        assert_eq!((cursor.ts, cursor.count), (Some((10, 5)), 2));
        // A new stream from second 10 replays everything: only the third (10, 5) is new.
        let mut replay = cursor.replay();
        assert!(!cursor.accept((10, 1), &mut replay));
        assert!(!cursor.accept((10, 1), &mut replay));
        assert!(!cursor.accept((10, 5), &mut replay));
        assert!(!cursor.accept((10, 5), &mut replay));
        assert!(!cursor.accept((10, 3), &mut replay));
        assert!(cursor.accept((10, 5), &mut replay));
        assert!(cursor.accept((11, 0), &mut replay));
        assert_eq!(cursor.since(), 11);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration(&json!("5m")), Some(Duration::from_secs(300)));
        assert_eq!(
            parse_duration(&json!("1h30m")),
            Some(Duration::from_secs(5400))
        );
        assert_eq!(
            parse_duration(&json!("250ms")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_duration(&json!(30)), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration(&json!("5 minutes")), None);
    }
}
