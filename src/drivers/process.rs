//! Child-process plumbing shared by the `raw_exec`, `exec` and `java` drivers.
//!
//! - [`spawn`] starts a command in its own session and process group (`setsid()`), with the
//!   environment cleared and set from the task, the task directory as working directory, stdout
//!   and stderr appended to files (or FIFOs), and optional isolation applied in the child before
//!   `execve`: joining cgroups, a private mount namespace, dropping to another user.
//! - [`Process`] watches one task process, whether we spawned it (its exit status is read with
//!   `waitpid`) or re-attached to it after an agent restart (its `/proc/<pid>` entry is polled and
//!   its start time compared with the one recorded at start, so a reused pid is never mistaken for
//!   the task; the exit code of a process that is not our child cannot be read and is reported
//!   as unknown).
//! - [`parse_signal`] reads `SIGINT`, `INT`, `sigint`, `2`.

use super::{DriverError, ExitResult};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Gid, Pid, Uid};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::Instrument;

/// How often a recovered (non-child) process is checked for exit.
const RECOVERED_POLL: Duration = Duration::from_millis(100);
/// How long `stop` waits for the group to die after SIGKILL before giving up.
const KILL_GRACE: Duration = Duration::from_secs(10);
/// How long to wait for a reader on a FIFO given as stdout/stderr.
const FIFO_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// PATH given to tasks whose environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// `exit_code` reported when it cannot be known (a recovered task that has exited).
pub const UNKNOWN_EXIT_CODE: i32 = -1;

/// Parses a signal name (`SIGINT`, `INT`, `sigint`) or number (`2`); empty means SIGINT, Nomad's
/// default kill signal.
pub fn parse_signal(name: &str) -> Result<Signal, DriverError> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Ok(Signal::SIGINT);
    }
    if let Ok(n) = trimmed.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| DriverError::InvalidSignal(name.to_string()));
    }
    let upper = trimmed.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&full).map_err(|_| DriverError::InvalidSignal(name.to_string()))
}

/// The fields of `/proc/<pid>/stat` the drivers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, `D`, `Z` (zombie), `X` (dead), …
    pub state: char,
    pub pgrp: i32,
    /// User + system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Field 22: start time after boot, in clock ticks. Identifies the process with its pid.
    pub start_ticks: u64,
    /// Resident set size, in pages.
    pub rss_pages: u64,
}

impl ProcStat {
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses the text of `/proc/<pid>/stat`. The command name (field 2) may contain spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 (state); field N is `fields[N - 3]`.
    let field = |n: usize| fields.get(n - 3).copied();
    let num = |n: usize| field(n).and_then(|f| f.parse::<u64>().ok());
    Some(ProcStat {
        state: field(3)?.chars().next()?,
        pgrp: field(5)?.parse().ok()?,
        cpu_ticks: num(14)?.saturating_add(num(15)?),
        start_ticks: num(22)?,
        rss_pages: num(24)?,
    })
}

/// Reads `/proc/<pid>/stat`; `None` when the process does not exist.
pub fn read_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`): start times are only comparable within
/// one boot.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Clock ticks per second (`_SC_CLK_TCK`), 100 if unknown.
pub fn clock_ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(100)
}

/// The page size, 4096 if unknown.
pub fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(4096)
}

/// CPU time (ticks) and resident memory (bytes) summed over every process of group `pgid`.
pub fn group_usage(pgid: u32) -> (u64, u64) {
    let page = page_size();
    let mut cpu = 0u64;
    let mut rss = 0u64;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return (0, 0);
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(stat) = read_stat(pid)
            && u32::try_from(stat.pgrp).ok() == Some(pgid)
        {
            cpu = cpu.saturating_add(stat.cpu_ticks);
            rss = rss.saturating_add(stat.rss_pages.saturating_mul(page));
        }
    }
    (cpu, rss)
}

/// Finds the program to run: an absolute path as is; a relative path with a `/` under
/// `task_dir`; a bare name on the task's `PATH`, then in `task_dir` and `task_dir/local`.
pub fn resolve_command(
    command: &str,
    task_dir: &Path,
    env: &BTreeMap<String, String>,
) -> Result<PathBuf, DriverError> {
    if command.is_empty() {
        return Err(DriverError::InvalidConfig(
            "config key command is empty".into(),
        ));
    }
    let candidate = Path::new(command);
    if candidate.is_absolute() {
        return if candidate.exists() {
            Ok(candidate.to_path_buf())
        } else {
            Err(DriverError::Start(format!(
                "command {command} does not exist"
            )))
        };
    }
    if command.contains('/') {
        let p = task_dir.join(candidate);
        return if p.exists() {
            Ok(p)
        } else {
            Err(DriverError::Start(format!(
                "command {command} does not exist in the task directory {}",
                task_dir.display()
            )))
        };
    }
    let path_var = env
        .get("PATH")
        .cloned()
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_else(|| DEFAULT_PATH.to_string());
    let search = path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .chain([task_dir.to_path_buf(), task_dir.join("local")]);
    for dir in search {
        let dir = if dir.is_absolute() {
            dir
        } else {
            task_dir.join(dir)
        };
        let p = dir.join(command);
        if is_executable_file(&p) {
            return Ok(p);
        }
    }
    Err(DriverError::Start(format!(
        "command {command} not found on PATH ({path_var}) nor in the task directory"
    )))
}

fn is_executable_file(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Opens a task output for appending: a regular file is created if missing; a FIFO is opened
/// for writing once a reader has opened it (waiting at most [`FIFO_OPEN_TIMEOUT`]).
pub async fn open_output(path: &Path) -> Result<std::fs::File, DriverError> {
    let is_fifo = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo());
    if !is_fifo {
        return std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| DriverError::Io(format!("opening {}: {e}", path.display())));
    }
    let deadline = Instant::now() + FIFO_OPEN_TIMEOUT;
    loop {
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(path)
        {
            Ok(file) => {
                // Writes from the task must block, not fail, when the reader is slow.
                let flags = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL)
                    .map_err(|e| DriverError::Io(format!("fcntl {}: {e}", path.display())))?;
                let mut flags = nix::fcntl::OFlag::from_bits_retain(flags);
                flags.remove(nix::fcntl::OFlag::O_NONBLOCK);
                nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(flags))
                    .map_err(|e| DriverError::Io(format!("fcntl {}: {e}", path.display())))?;
                return Ok(file);
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::ENXIO) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                return Err(DriverError::Io(format!(
                    "opening FIFO {} (no reader?): {e}",
                    path.display()
                )));
            }
        }
    }
}

/// The user a task runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// Looks up a user by name (or numeric uid) with its supplementary groups.
pub fn resolve_user(name: &str) -> Result<Credentials, DriverError> {
    let user = if let Ok(uid) = name.parse::<u32>() {
        nix::unistd::User::from_uid(Uid::from_raw(uid))
    } else {
        nix::unistd::User::from_name(name)
    }
    .map_err(|e| DriverError::Start(format!("looking up user {name}: {e}")))?
    .ok_or_else(|| DriverError::Start(format!("user {name} does not exist")))?;
    let cname = std::ffi::CString::new(user.name.clone())
        .map_err(|_| DriverError::Start(format!("invalid user name {name}")))?;
    let groups = nix::unistd::getgrouplist(&cname, user.gid)
        .map(|gs| gs.into_iter().map(Gid::as_raw).collect())
        .unwrap_or_else(|_| vec![user.gid.as_raw()]);
    Ok(Credentials {
        user: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups,
    })
}

/// What the child does to itself between `fork` and `execve`, after `setsid()`.
#[derive(Debug, Default)]
pub struct Isolation {
    /// `cgroup.procs` files, opened here (close-on-exec); the child writes `0` to each to join.
    pub cgroup_procs: Vec<PathBuf>,
    /// `unshare(CLONE_NEWNS)` and make `/` a recursive slave, so the task's mounts stay private.
    pub mount_namespace: bool,
    /// Drop to this user (supplementary groups, gid, uid, in that order).
    pub credentials: Option<Credentials>,
}

/// A process to start.
#[derive(Debug)]
pub struct SpawnSpec {
    pub program: PathBuf,
    /// Overrides `argv[0]` (defaults to the program path).
    pub arg0: Option<String>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub isolation: Isolation,
}

/// Starts the process described by `spec` and supervises it.
pub async fn spawn(spec: SpawnSpec) -> Result<Process, DriverError> {
    let stdout = open_output(&spec.stdout).await?;
    let stderr = open_output(&spec.stderr).await?;
    let mut cmd = command(
        &spec.program,
        &spec.args,
        &spec.env,
        &spec.cwd,
        &spec.isolation,
        (stdout.into(), stderr.into()),
    )?;
    if let Some(arg0) = &spec.arg0 {
        cmd.arg0(arg0);
    }
    cmd.kill_on_drop(false);

    let child = cmd.spawn().map_err(|e| {
        let what = match &spec.isolation.credentials {
            Some(c) => format!(" as user {} (uid {})", c.user, c.uid),
            None => String::new(),
        };
        DriverError::Start(format!(
            "starting {}{what} in {}: {e}",
            spec.program.display(),
            spec.cwd.display()
        ))
    })?;
    drop(cmd);
    let pid = child
        .id()
        .ok_or_else(|| DriverError::Start("child exited before its pid was read".into()))?;
    // The child cannot be reaped before we wait for it, so its stat is there (maybe a zombie).
    let start_ticks = read_stat(pid)
        .map(|s| s.start_ticks)
        .ok_or_else(|| DriverError::Start(format!("/proc/{pid}/stat unreadable")))?;
    Ok(Process::supervise_child(child, pid, start_ticks))
}

/// A command with the environment cleared and set to `env` (PATH defaulted), `cwd` as working
/// directory, no stdin, the given outputs, and `isolation` applied in the child before `execve`
/// (joining cgroups, a private mount namespace, dropping to another user).
fn command(
    program: &Path,
    args: &[String],
    env: &BTreeMap<String, String>,
    cwd: &Path,
    isolation: &Isolation,
    (stdout, stderr): (std::process::Stdio, std::process::Stdio),
) -> Result<tokio::process::Command, DriverError> {
    let mut cgroup_fds = Vec::with_capacity(isolation.cgroup_procs.len());
    for procs in &isolation.cgroup_procs {
        let fd: OwnedFd = std::fs::OpenOptions::new()
            .write(true)
            .open(procs)
            .map_err(|e| DriverError::Start(format!("opening {}: {e}", procs.display())))?
            .into();
        cgroup_fds.push(fd);
    }
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(env)
        .current_dir(cwd)
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    if !env.contains_key("PATH") {
        cmd.env("PATH", DEFAULT_PATH);
    }
    install_pre_exec(
        &mut cmd,
        cgroup_fds,
        isolation.mount_namespace,
        isolation.credentials.clone(),
    );
    Ok(cmd)
}

/// A short command to run to completion beside a task (a script check), its output captured.
#[derive(Debug)]
pub struct CapturedSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
    pub isolation: Isolation,
    pub timeout: Duration,
    /// Bytes of output kept; the rest is read and dropped so the command never blocks on it.
    pub output_limit: usize,
}

/// Runs `spec` in its own session and process group with stdout and stderr on one pipe, and
/// returns its exit code and output; after `spec.timeout` the whole group is SIGKILLed and an
/// error says so.
pub async fn run_captured(spec: CapturedSpec) -> Result<super::ExecOutput, DriverError> {
    let (reader, writer) =
        std::io::pipe().map_err(|e| DriverError::Start(format!("creating an output pipe: {e}")))?;
    let stderr = writer
        .try_clone()
        .map_err(|e| DriverError::Start(format!("duplicating the output pipe: {e}")))?;
    let mut cmd = command(
        &spec.program,
        &spec.args,
        &spec.env,
        &spec.cwd,
        &spec.isolation,
        (writer.into(), stderr.into()),
    )?;
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        DriverError::Start(format!(
            "starting {} in {}: {e}",
            spec.program.display(),
            spec.cwd.display()
        ))
    })?;
    // The pipe's write ends live in the child (and its children) only from here on, so the
    // reader sees the end of the output when they are all gone.
    drop(cmd);
    let limit = spec.output_limit;
    let span = tracing::info_span!("exec_output", program = %spec.program.display());
    let output = tokio::task::spawn_blocking(move || span.in_scope(|| read_bounded(reader, limit)));
    let pid = child.id();
    let deadline = tokio::time::Instant::now() + spec.timeout;
    let status = match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(status) => {
            status.map_err(|e| DriverError::Other(format!("waiting for the command: {e}")))?
        }
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.wait().await;
            return Err(DriverError::Other(format!(
                "{} timed out after {:?} and was killed",
                spec.program.display(),
                spec.timeout
            )));
        }
    };
    // Whatever the command left running in its group goes with it.
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    // A process that left the group (a daemon) may hold the pipe open: bounded by the timeout.
    let output = tokio::time::timeout_at(deadline, output)
        .await
        .map_err(|_| {
            DriverError::Other(format!(
                "{} exited but something it started kept its output open past the timeout",
                spec.program.display()
            ))
        })?
        .map_err(|e| DriverError::Other(format!("reading the command's output: {e}")))?;
    Ok(super::ExecOutput {
        exit_code: exit_result(status).exit_code,
        output,
    })
}

/// [`super::Driver::exec`] for the process drivers: `request.command` resolved on the task's
/// `PATH` (or in its directory), run with the task's environment and working directory and
/// with `isolation` (the task's user, its cgroups).
pub async fn exec_beside(
    request: &super::ExecRequest,
    isolation: Isolation,
) -> Result<super::ExecOutput, DriverError> {
    let Some((command, args)) = request.command.split_first() else {
        return Err(DriverError::InvalidConfig("exec: no command given".into()));
    };
    let program = resolve_command(command, &request.cwd, &request.env)?;
    run_captured(CapturedSpec {
        program,
        args: args.to_vec(),
        env: request.env.clone(),
        cwd: request.cwd.clone(),
        isolation,
        timeout: request.timeout,
        output_limit: request.output_limit,
    })
    .await
}

/// Reads `r` to its end, keeping the first `limit` bytes.
fn read_bounded(mut r: impl std::io::Read, limit: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return kept,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return kept,
        }
    }
}

/// The only unsafe code of the drivers: a `pre_exec` hook. It runs in the forked child before
/// `execve`, where only async-signal-safe calls are allowed: every call below is a single system
/// call through `nix` (no allocation; the buffers and fds were prepared by the parent).
#[allow(unsafe_code)]
fn install_pre_exec(
    cmd: &mut tokio::process::Command,
    cgroup_fds: Vec<OwnedFd>,
    mount_namespace: bool,
    creds: Option<Credentials>,
) {
    let groups: Vec<Gid> = creds
        .as_ref()
        .map(|c| c.groups.iter().copied().map(Gid::from_raw).collect())
        .unwrap_or_default();
    let ids = creds.map(|c| (Uid::from_raw(c.uid), Gid::from_raw(c.gid)));
    // SAFETY: the closure only performs async-signal-safe system calls (setsid, write, unshare,
    // mount, setgroups, setgid, setuid) on data owned by the closure, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            for fd in &cgroup_fds {
                nix::unistd::write(fd, b"0").map_err(std::io::Error::from)?;
            }
            if mount_namespace {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
                    .map_err(std::io::Error::from)?;
                nix::mount::mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_SLAVE,
                    None::<&str>,
                )
                .map_err(std::io::Error::from)?;
            }
            if let Some((uid, gid)) = ids {
                nix::unistd::setgroups(&groups).map_err(std::io::Error::from)?;
                nix::unistd::setgid(gid).map_err(std::io::Error::from)?;
                nix::unistd::setuid(uid).map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
}

/// Converts a wait status to Nomad's shape: killed by signal N → `signal = N`,
/// `exit_code = 128 + N`.
pub fn exit_result(status: ExitStatus) -> ExitResult {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitResult {
            exit_code: code,
            ..ExitResult::default()
        },
        (None, Some(sig)) => ExitResult {
            exit_code: 128 + sig,
            signal: sig,
            ..ExitResult::default()
        },
        (None, None) => ExitResult {
            exit_code: UNKNOWN_EXIT_CODE,
            error: Some(format!("unrecognised wait status {status:?}")),
            ..ExitResult::default()
        },
    }
}

/// One supervised task process: the leader of its own process group (pgid = pid).
#[derive(Debug)]
pub struct Process {
    pid: u32,
    start_ticks: u64,
    /// We spawned it (exit status known) rather than re-attached to it.
    owned: bool,
    exit: watch::Receiver<Option<ExitResult>>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for Process {
    fn drop(&mut self) {
        // A recovered process's poller has no use without us; a child's reaper must keep
        // running so the child is reaped (it ends when the child does).
        if !self.owned {
            self.watcher.abort();
        }
    }
}

impl Process {
    fn supervise_child(mut child: tokio::process::Child, pid: u32, start_ticks: u64) -> Self {
        let (tx, rx) = watch::channel(None);
        let span = tracing::info_span!("task_process", pid, owned = true);
        let watcher = tokio::spawn(
            async move {
                let result = match child.wait().await {
                    Ok(status) => exit_result(status),
                    Err(e) => ExitResult {
                        exit_code: UNKNOWN_EXIT_CODE,
                        error: Some(format!("waiting for pid {pid}: {e}")),
                        ..ExitResult::default()
                    },
                };
                tracing::debug!(?result, "task process exited");
                let _ = tx.send(Some(result));
            }
            .instrument(span),
        );
        Self {
            pid,
            start_ticks,
            owned: true,
            exit: rx,
            watcher,
        }
    }

    /// Re-attaches to a process started by an earlier agent: it must exist with the recorded
    /// start time (and boot), else `NotFound` (gone, or the pid now belongs to someone else).
    pub fn attach(pid: u32, start_ticks: u64, recorded_boot_id: &str) -> Result<Self, DriverError> {
        if !recorded_boot_id.is_empty() && recorded_boot_id != boot_id() {
            return Err(DriverError::NotFound(format!(
                "pid {pid} was recorded before a reboot"
            )));
        }
        match read_stat(pid) {
            None => {
                return Err(DriverError::NotFound(format!(
                    "process {pid} no longer exists"
                )));
            }
            Some(stat) if stat.start_ticks != start_ticks => {
                return Err(DriverError::NotFound(format!(
                    "pid {pid} was reused by another process (start time {} != recorded {start_ticks})",
                    stat.start_ticks
                )));
            }
            Some(stat) if stat.is_dead() => {
                return Err(DriverError::NotFound(format!("process {pid} has exited")));
            }
            Some(_) => {}
        }
        let (tx, rx) = watch::channel(None);
        let span = tracing::info_span!("task_process", pid, owned = false);
        let watcher = tokio::spawn(
            async move {
                let mut tick = tokio::time::interval(RECOVERED_POLL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let alive = read_stat(pid)
                        .is_some_and(|s| s.start_ticks == start_ticks && !s.is_dead());
                    if !alive {
                        break;
                    }
                }
                tracing::debug!("recovered task process exited");
                let _ = tx.send(Some(ExitResult {
                    exit_code: UNKNOWN_EXIT_CODE,
                    error: Some(format!(
                        "process {pid} exited; its exit status is unknown because it was \
                         recovered from an earlier agent and is not our child"
                    )),
                    ..ExitResult::default()
                }));
            }
            .instrument(span),
        );
        Ok(Self {
            pid,
            start_ticks,
            owned: false,
            exit: rx,
            watcher,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn start_ticks(&self) -> u64 {
        self.start_ticks
    }

    /// Whether we spawned it (so its exit status is known).
    pub fn owned(&self) -> bool {
        self.owned
    }

    /// The exit result if it has exited.
    pub fn try_exit(&self) -> Option<ExitResult> {
        self.exit.borrow().clone()
    }

    /// Resolves when the process exits.
    pub async fn wait(&self) -> Result<ExitResult, DriverError> {
        let mut rx = self.exit.clone();
        let result = rx
            .wait_for(|r| r.is_some())
            .await
            .map_err(|_| DriverError::Other(format!("supervisor of pid {} ended", self.pid)))?;
        (*result)
            .clone()
            .ok_or_else(|| DriverError::Other("no exit result".into()))
    }

    /// Whether the pid still names our process (not exited, not reused).
    fn is_ours(&self) -> bool {
        self.try_exit().is_none()
            && read_stat(self.pid).is_some_and(|s| s.start_ticks == self.start_ticks)
    }

    fn pid_t(&self) -> Result<Pid, DriverError> {
        i32::try_from(self.pid)
            .map(Pid::from_raw)
            .map_err(|_| DriverError::Other(format!("pid {} out of range", self.pid)))
    }

    /// Sends `signal` to the task's main process.
    pub fn signal(&self, signal: Signal) -> Result<(), DriverError> {
        if !self.is_ours() {
            return Err(DriverError::NotFound(format!(
                "process {} is not running",
                self.pid
            )));
        }
        kill(self.pid_t()?, signal)
            .map_err(|e| DriverError::Other(format!("kill({}, {signal}): {e}", self.pid)))
    }

    /// Sends `signal` to the task's whole process group. A group that no longer exists is fine.
    pub fn signal_group(&self, signal: Signal) -> Result<(), DriverError> {
        // If the pid now names another process, the group number may have been reused (a pid
        // that is still some group's id is never handed out again, so while any member of our
        // group lives, the pid cannot name a stranger): don't signal a stranger's group.
        if read_stat(self.pid).is_some_and(|s| s.start_ticks != self.start_ticks) {
            return Ok(());
        }
        if self.try_exit().is_none() && !self.is_ours() {
            return Ok(());
        }
        match killpg(self.pid_t()?, signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(DriverError::Other(format!(
                "killpg({}, {signal}): {e}",
                self.pid
            ))),
        }
    }

    /// Sends `signal` to the group, waits up to `timeout` for the main process to exit, then
    /// SIGKILLs the group. Whatever is left of the group after the main process exits is
    /// SIGKILLed too. Returns the exit result.
    pub async fn stop(&self, timeout: Duration, signal: Signal) -> Result<ExitResult, DriverError> {
        if let Some(result) = self.try_exit() {
            self.signal_group(Signal::SIGKILL)?;
            return Ok(result);
        }
        self.signal_group(signal)?;
        let result = match tokio::time::timeout(timeout, self.wait()).await {
            Ok(result) => result?,
            Err(_) => {
                tracing::info!(pid = self.pid, ?timeout, "task ignored {signal}; killing");
                self.signal_group(Signal::SIGKILL)?;
                tokio::time::timeout(KILL_GRACE, self.wait())
                    .await
                    .map_err(|_| {
                        DriverError::Other(format!(
                            "process {} did not exit {KILL_GRACE:?} after SIGKILL",
                            self.pid
                        ))
                    })??
            }
        };
        self.signal_group(Signal::SIGKILL)?;
        Ok(result)
    }
}

/// The processes a driver supervises, by task id.
#[derive(Debug, Default)]
pub struct ProcessTable {
    inner: Mutex<HashMap<String, Arc<Process>>>,
}

impl ProcessTable {
    pub fn insert(&self, id: &str, process: Process) -> Arc<Process> {
        let process = Arc::new(process);
        if let Ok(mut map) = self.inner.lock() {
            map.insert(id.to_string(), process.clone());
        }
        process
    }

    pub fn get(&self, id: &str) -> Result<Arc<Process>, DriverError> {
        self.inner
            .lock()
            .ok()
            .and_then(|m| m.get(id).cloned())
            .ok_or_else(|| DriverError::NotFound(format!("no task {id} (recover it first?)")))
    }

    pub fn contains(&self, id: &str) -> bool {
        self.inner.lock().is_ok_and(|m| m.contains_key(id))
    }

    pub fn remove(&self, id: &str) -> Option<Arc<Process>> {
        self.inner.lock().ok().and_then(|mut m| m.remove(id))
    }
}

/// Turns cumulative CPU time into a percentage of one core between successive samples (the
/// first sample of a task averages since its start).
#[derive(Debug, Default)]
pub struct CpuSampler {
    last: Mutex<HashMap<String, (Instant, u64)>>,
}

impl CpuSampler {
    /// `total_cpu_ns`: the task's cumulative CPU time now.
    pub fn percent(&self, id: &str, total_cpu_ns: u64, started_at_unix_ms: i64) -> f64 {
        let now = Instant::now();
        let Ok(mut last) = self.last.lock() else {
            return 0.0;
        };
        let (elapsed_ns, used_ns) = match last.get(id) {
            Some((at, prev)) => (
                now.duration_since(*at).as_nanos(),
                total_cpu_ns.saturating_sub(*prev),
            ),
            None => {
                let since = super::now_unix_ms()
                    .saturating_sub(started_at_unix_ms)
                    .max(1);
                (
                    u128::from(u64::try_from(since).unwrap_or(1)) * 1_000_000,
                    total_cpu_ns,
                )
            }
        };
        last.insert(id.to_string(), (now, total_cpu_ns));
        if elapsed_ns == 0 {
            return 0.0;
        }
        // Precision loss is irrelevant for a percentage.
        #[allow(clippy::cast_precision_loss)]
        let pct = used_ns as f64 * 100.0 / elapsed_ns as f64;
        pct
    }

    pub fn forget(&self, id: &str) {
        if let Ok(mut last) = self.last.lock() {
            last.remove(id);
        }
    }
}

/// What the process drivers keep in [`super::TaskHandle::state`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessState {
    pub pgid: u32,
    pub start_ticks: u64,
    #[serde(default)]
    pub boot_id: String,
    /// The cgroup directories the task was placed in (exec, java).
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
    /// Whether the cgroups are v2 (unified).
    #[serde(default)]
    pub cgroup_v2: bool,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub mount_namespace: bool,
}

impl ProcessState {
    pub fn from_handle(handle: &super::TaskHandle) -> Result<Self, DriverError> {
        serde_json::from_value(handle.state.clone())
            .map_err(|e| DriverError::InvalidConfig(format!("unreadable task handle state: {e}")))
    }

    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_and_number() {
        for (text, want) in [
            ("", Signal::SIGINT),
            ("SIGINT", Signal::SIGINT),
            ("int", Signal::SIGINT),
            ("sigterm", Signal::SIGTERM),
            ("HUP", Signal::SIGHUP),
            ("SIGUSR1", Signal::SIGUSR1),
            ("9", Signal::SIGKILL),
            ("15", Signal::SIGTERM),
        ] {
            assert_eq!(parse_signal(text).unwrap(), want, "{text}");
        }
        assert!(matches!(
            parse_signal("SIGNOPE"),
            Err(DriverError::InvalidSignal(_))
        ));
        assert!(parse_signal("999").is_err());
    }

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let text = "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 \
                    987654 1000000 25 18446744073709551615";
        let stat = parse_stat(text).unwrap();
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.pgrp, 1234);
        assert_eq!(stat.cpu_ticks, 10);
        assert_eq!(stat.start_ticks, 987654);
        assert_eq!(stat.rss_pages, 25);
        let me = read_stat(std::process::id()).unwrap();
        assert!(me.start_ticks > 0);
    }

    #[test]
    fn commands_resolve_on_path_and_in_the_task_dir() {
        let dir = tempfile::tempdir().unwrap();
        let env = BTreeMap::from([("PATH".to_string(), "/usr/bin:/bin".to_string())]);
        assert!(
            resolve_command("sh", dir.path(), &env)
                .unwrap()
                .is_absolute()
        );
        assert!(resolve_command("no-such-binary-xyz", dir.path(), &env).is_err());
        std::fs::create_dir(dir.path().join("local")).unwrap();
        std::fs::write(dir.path().join("local/run.sh"), "#!/bin/sh\n").unwrap();
        assert_eq!(
            resolve_command("local/run.sh", dir.path(), &env).unwrap(),
            dir.path().join("local/run.sh")
        );
        assert!(resolve_command("", dir.path(), &env).is_err());
    }
}
