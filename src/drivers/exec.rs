//! `exec`: `command` and `args` like `raw_exec`, isolated:
//!
//! - its own cgroup under a Caravan parent (`/caravan/<task handle id>` in each hierarchy), with
//!   the memory limit (`memory_max_mb`, else `memory_mb`) and CPU weight (`cpu_mhz`) enforced —
//!   cgroup v2 (`memory.max`, `memory.low`, `cpu.weight`) or v1 (`memory.limit_in_bytes`,
//!   `memory.soft_limit_in_bytes`, `cpu.shares`), whichever the kernel has. The child joins the
//!   cgroup before `execve`, so everything it forks is in it;
//! - run as `nobody` unless the task sets `user`;
//! - a private mount namespace (`unshare(CLONE_NEWNS)`, `/` made a recursive slave) when the
//!   kernel allows it; when it does not, tasks run without one and the fingerprint says so
//!   (`driver.exec.mount_namespace = "false"` and the reason);
//! - stats, OOM kills and the final kill come from the cgroup; `destroy` removes it.
//!
//! Without usable cgroups (or without root) the driver is unhealthy, with the reason.

use super::process::{self, CpuSampler, Process, ProcessState, SpawnSpec};
use super::{
    Driver, DriverError, ExecOutput, ExecRequest, ExitResult, Fingerprint, TaskConfig, TaskHandle,
    TaskStats, TaskStatus,
};
use nix::sys::signal::Signal;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const NAME: &str = "exec";
/// Default cgroup parent, relative to each hierarchy's root (Nomad uses `/nomad`).
pub const DEFAULT_CGROUP_PARENT: &str = "caravan";
/// The user tasks run as when they set none.
pub const DEFAULT_USER: &str = "nobody";
/// How long `destroy` keeps trying to empty and remove a cgroup.
const CGROUP_REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which cgroup hierarchy the tasks' cgroups live in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupLayout {
    /// The unified hierarchy, mounted at `root`.
    V2 { root: PathBuf },
    /// Legacy hierarchies: where the memory, cpu and cpuacct controllers are mounted (cpu and
    /// cpuacct are often the same `cpu,cpuacct` mount).
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        cpuacct: PathBuf,
    },
}

impl CgroupLayout {
    pub fn version(&self) -> u8 {
        match self {
            CgroupLayout::V2 { .. } => 2,
            CgroupLayout::V1 { .. } => 1,
        }
    }

    /// The hierarchy roots a task's cgroup is created in (deduplicated).
    fn roots(&self) -> Vec<PathBuf> {
        match self {
            CgroupLayout::V2 { root } => vec![root.clone()],
            CgroupLayout::V1 {
                memory,
                cpu,
                cpuacct,
            } => {
                let mut roots = vec![memory.clone(), cpu.clone()];
                if !roots.contains(cpuacct) {
                    roots.push(cpuacct.clone());
                }
                roots
            }
        }
    }
}

/// Finds the cgroup hierarchies from `/proc/self/mountinfo`: cgroup v2 if a unified mount has the
/// memory and cpu controllers available, else cgroup v1 if memory and cpu are mounted.
pub fn detect_cgroups(mountinfo: &str) -> Result<CgroupLayout, String> {
    let mut v2: Vec<PathBuf> = Vec::new();
    let mut v1: HashMap<&str, PathBuf> = HashMap::new();
    for line in mountinfo.lines() {
        // `id parent major:minor root mountpoint opts [optional…] - fstype source superopts`
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (Some(mountpoint), Some(fstype)) = (left.get(4), right.first()) else {
            continue;
        };
        let mountpoint = PathBuf::from(unescape_mountinfo(mountpoint));
        match *fstype {
            "cgroup2" => v2.push(mountpoint),
            "cgroup" => {
                let opts = right.get(2).copied().unwrap_or_default();
                for controller in opts.split(',') {
                    if matches!(controller, "memory" | "cpu" | "cpuacct") {
                        v1.entry(controller).or_insert_with(|| mountpoint.clone());
                    }
                }
            }
            _ => {}
        }
    }
    let mut v2_problem = None;
    for root in &v2 {
        let controllers =
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let have: Vec<&str> = controllers.split_whitespace().collect();
        if have.contains(&"memory") && have.contains(&"cpu") {
            return Ok(CgroupLayout::V2 { root: root.clone() });
        }
        v2_problem = Some(format!(
            "cgroup v2 at {} has controllers [{}] (memory and cpu needed)",
            root.display(),
            controllers.trim()
        ));
    }
    match (v1.get("memory"), v1.get("cpu")) {
        (Some(memory), Some(cpu)) => Ok(CgroupLayout::V1 {
            memory: memory.clone(),
            cpu: cpu.clone(),
            cpuacct: v1.get("cpuacct").cloned().unwrap_or_else(|| cpu.clone()),
        }),
        _ => Err(match v2_problem {
            Some(p) => format!("no usable cgroups: {p}, and no cgroup v1 memory+cpu mounts"),
            None => "no usable cgroups: neither cgroup v2 nor cgroup v1 memory+cpu are mounted"
                .to_string(),
        }),
    }
}

/// Mount points in mountinfo escape space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let [b'\\', a @ b'0'..=b'3', b @ b'0'..=b'7', c @ b'0'..=b'7', ..] = bytes[i..] {
            out.push(((a - b'0') << 6) | ((b - b'0') << 3) | (c - b'0'));
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One task's cgroup (one directory per hierarchy in v1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskCgroup {
    pub v2: bool,
    /// v2: one directory; v1: the memory directory first, then cpu (and cpuacct if separate).
    pub dirs: Vec<PathBuf>,
}

fn write_file(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("writing {value:?} to {}: {e}", path.display()))
}

/// cgroup v1 `cpu.shares` → v2 `cpu.weight`, as runc converts it.
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

impl TaskCgroup {
    /// Creates `<root>/<parent>/<name>` in each hierarchy and applies the limits.
    pub fn create(
        layout: &CgroupLayout,
        parent: &str,
        name: &str,
        resources: &super::TaskResources,
    ) -> Result<Self, String> {
        let v2 = matches!(layout, CgroupLayout::V2 { .. });
        let mut dirs = Vec::new();
        for root in layout.roots() {
            let parent_dir = root.join(parent);
            if v2 {
                enable_v2_controllers(&root, &parent_dir)?;
            } else {
                std::fs::create_dir_all(&parent_dir)
                    .map_err(|e| format!("creating {}: {e}", parent_dir.display()))?;
            }
            let dir = parent_dir.join(name);
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("creating {}: {e}", dir.display())),
            }
            dirs.push(dir);
        }
        let cgroup = Self { v2, dirs };
        if let Err(e) = cgroup.apply_limits(resources) {
            let _ = cgroup.remove_dirs();
            return Err(e);
        }
        Ok(cgroup)
    }

    fn apply_limits(&self, r: &super::TaskResources) -> Result<(), String> {
        const MIB: i64 = 1024 * 1024;
        let limit_mb = if r.memory_max_mb > 0 {
            r.memory_max_mb.max(r.memory_mb)
        } else {
            r.memory_mb
        };
        let soft_mb = if r.memory_max_mb > r.memory_mb && r.memory_mb > 0 {
            Some(r.memory_mb)
        } else {
            None
        };
        let shares = u64::try_from(r.cpu_mhz.max(2)).unwrap_or(2);
        let mem = self.memory_dir();
        if self.v2 {
            if limit_mb > 0 {
                write_file(&mem.join("memory.max"), &(limit_mb * MIB).to_string())?;
                // No swap: the limit is the limit.
                let swap = mem.join("memory.swap.max");
                if swap.exists() {
                    write_file(&swap, "0")?;
                }
            }
            if let Some(soft) = soft_mb {
                write_file(&mem.join("memory.low"), &(soft * MIB).to_string())?;
            }
            if r.cpu_mhz > 0 {
                write_file(
                    &mem.join("cpu.weight"),
                    &shares_to_weight(shares).to_string(),
                )?;
            }
        } else {
            if limit_mb > 0 {
                write_file(
                    &mem.join("memory.limit_in_bytes"),
                    &(limit_mb * MIB).to_string(),
                )?;
                // Include swap in the limit where swap accounting exists.
                let memsw = mem.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write_file(&memsw, &(limit_mb * MIB).to_string())?;
                }
            }
            if let Some(soft) = soft_mb {
                write_file(
                    &mem.join("memory.soft_limit_in_bytes"),
                    &(soft * MIB).to_string(),
                )?;
            }
            if r.cpu_mhz > 0 {
                write_file(&self.cpu_dir().join("cpu.shares"), &shares.to_string())?;
            }
        }
        Ok(())
    }

    fn memory_dir(&self) -> &Path {
        self.dirs
            .first()
            .map(PathBuf::as_path)
            .unwrap_or(Path::new("/nonexistent"))
    }

    fn cpu_dir(&self) -> &Path {
        self.dirs
            .get(1)
            .or(self.dirs.first())
            .map(PathBuf::as_path)
            .unwrap_or(Path::new("/nonexistent"))
    }

    fn cpuacct_dir(&self) -> &Path {
        self.dirs
            .get(2)
            .or(self.dirs.get(1))
            .or(self.dirs.first())
            .map(PathBuf::as_path)
            .unwrap_or(Path::new("/nonexistent"))
    }

    /// The `cgroup.procs` files the child writes itself into.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The pids in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.memory_dir().join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// How many times the kernel OOM-killed a process of this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        let text = std::fs::read_to_string(self.memory_dir().join(file)).unwrap_or_default();
        stat_value(&text, "oom_kill").unwrap_or(0)
    }

    /// Resident memory (anonymous) in bytes, falling back to the total usage (with page cache).
    pub fn memory_rss(&self) -> u64 {
        let stat =
            std::fs::read_to_string(self.memory_dir().join("memory.stat")).unwrap_or_default();
        let key = if self.v2 { "anon" } else { "total_rss" };
        // The kernel flushes these statistics lazily: a young cgroup may still show 0.
        if let Some(v) = stat_value(&stat, key).filter(|v| *v > 0) {
            return v;
        }
        let usage = if self.v2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        read_u64(&self.memory_dir().join(usage)).unwrap_or(0)
    }

    /// Cumulative CPU time in nanoseconds.
    pub fn cpu_usage_ns(&self) -> u64 {
        if self.v2 {
            let stat =
                std::fs::read_to_string(self.memory_dir().join("cpu.stat")).unwrap_or_default();
            stat_value(&stat, "usage_usec")
                .unwrap_or(0)
                .saturating_mul(1000)
        } else {
            read_u64(&self.cpuacct_dir().join("cpuacct.usage")).unwrap_or(0)
        }
    }

    /// SIGKILLs everything in the cgroup until it is empty (bounded).
    pub async fn kill_all(&self) -> Result<(), String> {
        let kill_file = self.memory_dir().join("cgroup.kill");
        if self.v2 && kill_file.exists() {
            write_file(&kill_file, "1")?;
        }
        let deadline = Instant::now() + CGROUP_REMOVE_TIMEOUT;
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                return Ok(());
            }
            for pid in &pids {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), Signal::SIGKILL);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "cgroup {} still has processes {pids:?}",
                    self.memory_dir().display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn remove_dirs(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        for dir in &self.dirs {
            match std::fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(format!("removing {}: {e}", dir.display())),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Kills what is left and removes the directories (retrying while the kernel lets go).
    pub async fn destroy(&self) -> Result<(), String> {
        self.kill_all().await?;
        let deadline = Instant::now() + CGROUP_REMOVE_TIMEOUT;
        loop {
            match self.remove_dirs() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

/// Enables memory and cpu for children of `root` and of `parent` (creating it), as cgroup v2
/// requires of each level on the way down.
fn enable_v2_controllers(root: &Path, parent: &Path) -> Result<(), String> {
    let want = |dir: &Path| -> Result<(), String> {
        let current =
            std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
        let have: Vec<&str> = current.split_whitespace().collect();
        if have.contains(&"memory") && have.contains(&"cpu") {
            return Ok(());
        }
        write_file(&dir.join("cgroup.subtree_control"), "+memory +cpu")
    };
    want(root)?;
    std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    want(parent)
}

/// `key value` lines (memory.stat, memory.events, cpu.stat, memory.oom_control).
fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// What the exec driver found it can do here.
#[derive(Clone, Debug)]
pub struct Capabilities {
    /// `Err(reason)` makes the driver unhealthy.
    pub cgroups: Result<CgroupLayout, String>,
    /// `Err(reason)`: tasks run without a private mount namespace.
    pub mount_namespace: Result<(), String>,
    pub default_user: Result<process::Credentials, String>,
}

impl Capabilities {
    /// Why tasks cannot run, if they cannot.
    pub fn unhealthy_reason(&self) -> Option<String> {
        if !nix::unistd::geteuid().is_root() {
            return Some("the exec driver must run as root (it sets up cgroups and users)".into());
        }
        if let Err(e) = &self.cgroups {
            return Some(e.clone());
        }
        None
    }
}

/// Checks that a cgroup can be created under `parent` and takes a memory limit.
fn probe_cgroup_write(layout: &CgroupLayout, parent: &str) -> Result<(), String> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("probe-{}-{n}", std::process::id());
    let resources = super::TaskResources {
        cpu_mhz: 100,
        memory_mb: 64,
        memory_max_mb: 0,
    };
    let cg = TaskCgroup::create(layout, parent, &name, &resources)
        .map_err(|e| format!("cgroup v{} is not writable: {e}", layout.version()))?;
    cg.remove_dirs()
}

/// Runs `true` in a new mount namespace to learn whether `unshare(CLONE_NEWNS)` is permitted.
async fn probe_mount_namespace() -> Result<(), String> {
    let env = BTreeMap::new();
    let program = process::resolve_command("true", Path::new("/"), &env)
        .map_err(|e| format!("cannot probe: {e}"))?;
    let spec = SpawnSpec {
        program,
        arg0: None,
        args: Vec::new(),
        env,
        cwd: PathBuf::from("/"),
        stdout: PathBuf::from("/dev/null"),
        stderr: PathBuf::from("/dev/null"),
        isolation: process::Isolation {
            mount_namespace: true,
            ..Default::default()
        },
    };
    let proc = process::spawn(spec)
        .await
        .map_err(|e| format!("unshare(CLONE_NEWNS) not permitted: {e}"))?;
    let result = tokio::time::timeout(Duration::from_secs(10), proc.wait())
        .await
        .map_err(|_| "mount namespace probe timed out".to_string())?
        .map_err(|e| e.to_string())?;
    if result.successful() {
        Ok(())
    } else {
        Err(format!("mount namespace probe failed: {result:?}"))
    }
}

/// A task the exec driver supervises.
#[derive(Debug)]
struct ExecTask {
    process: Arc<Process>,
    cgroup: TaskCgroup,
    result: OnceLock<ExitResult>,
}

impl ExecTask {
    async fn wait(&self) -> Result<ExitResult, DriverError> {
        if let Some(r) = self.result.get() {
            return Ok(r.clone());
        }
        let result = self.process.wait().await?;
        Ok(self.finish(result))
    }

    /// Adds what the cgroup knows (OOM kills) to the process's exit result, once.
    fn finish(&self, mut result: ExitResult) -> ExitResult {
        self.result
            .get_or_init(|| {
                if self.cgroup.oom_kills() > 0 {
                    result.oom_killed = true;
                    if result.error.is_none() {
                        result.error =
                            Some("OOM killed: the task exceeded its memory limit".into());
                    }
                }
                result
            })
            .clone()
    }

    fn try_exit(&self) -> Option<ExitResult> {
        self.result
            .get()
            .cloned()
            .or_else(|| self.process.try_exit().map(|r| self.finish(r)))
    }
}

#[derive(Debug)]
pub struct ExecDriver {
    cgroup_parent: String,
    capabilities: tokio::sync::OnceCell<Capabilities>,
    tasks: Mutex<HashMap<String, Arc<ExecTask>>>,
    cpu: CpuSampler,
}

impl Default for ExecDriver {
    fn default() -> Self {
        Self::new(BTreeMap::new())
    }
}

impl ExecDriver {
    /// `config` is the plugin block; `cgroup_parent` (default `caravan`) names the parent
    /// cgroup, relative to each hierarchy's root.
    pub fn new(config: BTreeMap<String, serde_json::Value>) -> Self {
        let cgroup_parent = config
            .get("cgroup_parent")
            .and_then(|v| v.as_str())
            .map(|s| s.trim_matches('/').to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_CGROUP_PARENT.to_string());
        Self {
            cgroup_parent,
            capabilities: tokio::sync::OnceCell::new(),
            tasks: Mutex::new(HashMap::new()),
            cpu: CpuSampler::default(),
        }
    }

    /// Probes the kernel (once per driver instance).
    pub async fn capabilities(&self) -> &Capabilities {
        self.capabilities
            .get_or_init(|| async {
                let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
                let cgroups = detect_cgroups(&mountinfo).and_then(|layout| {
                    probe_cgroup_write(&layout, &self.cgroup_parent).map(|()| layout)
                });
                let caps = Capabilities {
                    cgroups,
                    mount_namespace: probe_mount_namespace().await,
                    default_user: process::resolve_user(DEFAULT_USER).map_err(|e| e.to_string()),
                };
                tracing::info!(?caps, "exec driver capabilities");
                caps
            })
            .await
    }

    fn task(&self, id: &str) -> Result<Arc<ExecTask>, DriverError> {
        self.tasks
            .lock()
            .ok()
            .and_then(|m| m.get(id).cloned())
            .ok_or_else(|| DriverError::NotFound(format!("no task {id} (recover it first?)")))
    }

    fn insert(&self, id: &str, task: ExecTask) {
        if let Ok(mut m) = self.tasks.lock() {
            m.insert(id.to_string(), Arc::new(task));
        }
    }

    /// Fingerprint attributes under `driver.<prefix>.` (`exec` here; java reuses them).
    pub(crate) async fn isolation_attributes(&self, prefix: &str) -> BTreeMap<String, String> {
        let caps = self.capabilities().await;
        let mut attrs = BTreeMap::new();
        match &caps.cgroups {
            Ok(layout) => {
                attrs.insert(
                    format!("driver.{prefix}.cgroup_version"),
                    layout.version().to_string(),
                );
                let parents: Vec<String> = layout
                    .roots()
                    .iter()
                    .map(|r| r.join(&self.cgroup_parent).display().to_string())
                    .collect();
                attrs.insert(format!("driver.{prefix}.cgroup_parent"), parents.join(","));
            }
            Err(reason) => {
                attrs.insert(format!("driver.{prefix}.cgroup_version"), "none".into());
                attrs.insert(format!("driver.{prefix}.cgroup.reason"), reason.clone());
            }
        }
        attrs.insert(
            format!("driver.{prefix}.mount_namespace"),
            caps.mount_namespace.is_ok().to_string(),
        );
        if let Err(reason) = &caps.mount_namespace {
            attrs.insert(
                format!("driver.{prefix}.mount_namespace.reason"),
                reason.clone(),
            );
        }
        attrs.insert(format!("driver.{prefix}.chroot"), "false".into());
        match &caps.default_user {
            Ok(c) => attrs.insert(format!("driver.{prefix}.default_user"), c.user.clone()),
            Err(e) => attrs.insert(format!("driver.{prefix}.default_user.reason"), e.clone()),
        };
        attrs
    }

    /// Starts `program args` isolated, for `exec` and `java` (`driver` names the handle's driver).
    pub(crate) async fn start_isolated(
        &self,
        driver: &'static str,
        task: &TaskConfig,
        program: PathBuf,
        args: Vec<String>,
    ) -> Result<TaskHandle, DriverError> {
        let caps = self.capabilities().await.clone();
        if let Some(reason) = caps.unhealthy_reason() {
            return Err(DriverError::NotHealthy(reason));
        }
        let layout = caps.cgroups.map_err(DriverError::NotHealthy)?;
        let credentials = match task.user.as_deref().filter(|u| !u.is_empty()) {
            Some(user) => process::resolve_user(user)?,
            None => caps.default_user.map_err(DriverError::Start)?,
        };
        if credentials.uid != 0 {
            give_task_dirs_to(&task.task_dir, credentials.uid, credentials.gid)?;
        }
        let id = super::new_handle_id(task);
        let started_at_unix_ms = super::now_unix_ms();
        let cgroup = TaskCgroup::create(&layout, &self.cgroup_parent, &id, &task.resources)
            .map_err(DriverError::Start)?;
        let mount_namespace = caps.mount_namespace.is_ok();
        let spawned = process::spawn(SpawnSpec {
            program,
            arg0: None,
            args,
            env: task.env.clone(),
            cwd: task.task_dir.clone(),
            stdout: task.stdout_path.clone(),
            stderr: task.stderr_path.clone(),
            isolation: process::Isolation {
                cgroup_procs: cgroup.procs_files(),
                mount_namespace,
                credentials: Some(credentials.clone()),
            },
        })
        .await;
        let proc = match spawned {
            Ok(p) => p,
            Err(e) => {
                if let Err(cleanup) = cgroup.destroy().await {
                    tracing::warn!(%cleanup, "removing the cgroup of a task that failed to start");
                }
                return Err(e);
            }
        };
        let pid = proc.pid();
        let state = ProcessState {
            pgid: pid,
            start_ticks: proc.start_ticks(),
            boot_id: process::boot_id(),
            cgroups: cgroup.dirs.clone(),
            cgroup_v2: cgroup.v2,
            user: Some(credentials.user.clone()),
            mount_namespace,
        };
        tracing::info!(
            task = %task.task, alloc = %task.alloc_id, pid, %id, user = %credentials.user,
            cgroup = %cgroup.memory_dir().display(), "{driver} task started"
        );
        self.insert(
            &id,
            ExecTask {
                process: Arc::new(proc),
                cgroup,
                result: OnceLock::new(),
            },
        );
        Ok(TaskHandle {
            driver: driver.into(),
            id,
            pid: Some(pid),
            started_at_unix_ms,
            state: state.to_value(),
        })
    }
}

/// Lets the task's user write its own directories (task dir, local/, secrets/, tmp/).
fn give_task_dirs_to(task_dir: &Path, uid: u32, gid: u32) -> Result<(), DriverError> {
    let uid = nix::unistd::Uid::from_raw(uid);
    let gid = nix::unistd::Gid::from_raw(gid);
    for dir in [
        task_dir.to_path_buf(),
        task_dir.join("local"),
        task_dir.join("secrets"),
        task_dir.join("tmp"),
    ] {
        if dir.is_dir() {
            nix::unistd::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| DriverError::Start(format!("chown {}: {e}", dir.display())))?;
        }
    }
    Ok(())
}

fn cgroup_of(handle: &TaskHandle) -> Option<TaskCgroup> {
    let state = ProcessState::from_handle(handle).ok()?;
    if state.cgroups.is_empty() {
        return None;
    }
    Some(TaskCgroup {
        v2: state.cgroup_v2,
        dirs: state.cgroups,
    })
}

#[async_trait::async_trait]
impl Driver for ExecDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn fingerprint(&self) -> Fingerprint {
        let caps = self.capabilities().await;
        if let Some(reason) = caps.unhealthy_reason() {
            let mut fp = Fingerprint::unhealthy(true, reason);
            fp.attributes = self.isolation_attributes(NAME).await;
            return fp;
        }
        let mut attrs = self.isolation_attributes(NAME).await;
        attrs.insert(format!("driver.{NAME}"), "1".into());
        let mut fp = Fingerprint::healthy(attrs);
        if let Err(reason) = &caps.mount_namespace {
            fp.description = format!("Healthy (tasks run without a mount namespace: {reason})");
        }
        fp
    }

    async fn start(&self, task: &TaskConfig) -> Result<TaskHandle, DriverError> {
        let (program, args) = super::raw_exec::command_and_args(task)?;
        self.start_isolated(NAME, task, program, args).await
    }

    async fn wait(&self, handle: &TaskHandle) -> Result<ExitResult, DriverError> {
        self.task(&handle.id)?.wait().await
    }

    async fn stop(
        &self,
        handle: &TaskHandle,
        timeout: Duration,
        signal: &str,
    ) -> Result<(), DriverError> {
        let signal = process::parse_signal(signal)?;
        let task = self.task(&handle.id)?;
        let result = task.process.stop(timeout, signal).await?;
        task.finish(result);
        // Anything that left the process group is still in the cgroup.
        task.cgroup.kill_all().await.map_err(DriverError::Other)
    }

    async fn destroy(&self, handle: &TaskHandle) -> Result<(), DriverError> {
        self.cpu.forget(&handle.id);
        let task = self
            .tasks
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&handle.id));
        let cgroup = match &task {
            Some(task) => {
                if task.process.try_exit().is_none() {
                    let result = task.process.stop(Duration::ZERO, Signal::SIGKILL).await?;
                    task.finish(result);
                }
                Some(task.cgroup.clone())
            }
            None => cgroup_of(handle),
        };
        if let Some(cgroup) = cgroup {
            cgroup.destroy().await.map_err(DriverError::Other)?;
        }
        Ok(())
    }

    async fn inspect(&self, handle: &TaskHandle) -> Result<TaskStatus, DriverError> {
        match self.task(&handle.id) {
            Ok(task) => Ok(match task.try_exit() {
                Some(result) => TaskStatus::Exited(result),
                None => TaskStatus::Running,
            }),
            Err(_) => Ok(super::raw_exec::inspect_unattached(handle)),
        }
    }

    async fn recover(&self, handle: &TaskHandle) -> Result<(), DriverError> {
        if self.task(&handle.id).is_ok() {
            return Ok(());
        }
        let cgroup = cgroup_of(handle).ok_or_else(|| {
            DriverError::NotFound(format!("handle {} records no cgroup", handle.id))
        })?;
        let proc = super::raw_exec::attach(handle)?;
        tracing::info!(pid = proc.pid(), id = %handle.id, "{} task recovered", handle.driver);
        self.insert(
            &handle.id,
            ExecTask {
                process: Arc::new(proc),
                cgroup,
                result: OnceLock::new(),
            },
        );
        Ok(())
    }

    async fn signal(&self, handle: &TaskHandle, signal: &str) -> Result<(), DriverError> {
        let signal = process::parse_signal(signal)?;
        self.task(&handle.id)?.process.signal(signal)
    }

    async fn stats(&self, handle: &TaskHandle) -> Result<TaskStats, DriverError> {
        let task = self.task(&handle.id)?;
        Ok(TaskStats {
            cpu_percent: self.cpu.percent(
                &handle.id,
                task.cgroup.cpu_usage_ns(),
                handle.started_at_unix_ms,
            ),
            memory_rss_bytes: task.cgroup.memory_rss(),
        })
    }

    async fn exec(
        &self,
        handle: &TaskHandle,
        request: &ExecRequest,
    ) -> Result<ExecOutput, DriverError> {
        let task = self.task(&handle.id)?;
        if task.try_exit().is_some() {
            return Err(DriverError::NotFound(format!(
                "task {} has exited",
                handle.id
            )));
        }
        // Inside the task's cgroup (its limits apply, and stopping the task kills it too), as
        // the task's user.
        let state = ProcessState::from_handle(handle)?;
        let credentials = match state.user.as_deref().filter(|u| !u.is_empty()) {
            Some(user) => process::resolve_user(user)?,
            None => process::resolve_user(DEFAULT_USER)?,
        };
        process::exec_beside(
            request,
            process::Isolation {
                cgroup_procs: task.cgroup.procs_files(),
                mount_namespace: false,
                credentials: Some(credentials),
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_hierarchies_are_found_in_mountinfo() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
32 30 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            detect_cgroups(mountinfo).unwrap(),
            CgroupLayout::V1 {
                memory: "/sys/fs/cgroup/memory".into(),
                cpu: "/sys/fs/cgroup/cpu,cpuacct".into(),
                cpuacct: "/sys/fs/cgroup/cpu,cpuacct".into(),
            }
        );
        let err = detect_cgroups("1 0 0:1 / / rw - ext4 /dev/vda rw\n").unwrap_err();
        assert!(err.contains("no usable cgroups"), "{err}");
    }

    #[test]
    fn v2_is_preferred_when_it_has_the_controllers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        let mountinfo = format!(
            "35 25 0:30 / {} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n\
             32 30 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n",
            dir.path().display()
        );
        assert_eq!(
            detect_cgroups(&mountinfo).unwrap(),
            CgroupLayout::V2 {
                root: dir.path().to_path_buf()
            }
        );
        // Without memory+cpu in the unified hierarchy (a hybrid host), v2 is not usable.
        std::fs::write(dir.path().join("cgroup.controllers"), "pids\n").unwrap();
        let err = detect_cgroups(&mountinfo).unwrap_err();
        assert!(err.contains("controllers [pids]"), "{err}");
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn shares_convert_to_weights_like_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }

    #[test]
    fn stat_files_are_read_by_key() {
        let text = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(stat_value(text, "oom_kill"), Some(3));
        assert_eq!(stat_value(text, "missing"), None);
    }
}
