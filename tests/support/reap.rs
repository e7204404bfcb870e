//! A guard that kills what a driver test started if the test fails half-way — the task's
//! process group and anything left in its cgroups — and removes the cgroups, so a failing test
//! does not leak processes. A no-op for tasks already cleaned up. Shared by the driver tests.

#![allow(dead_code)]

use caravan::drivers::TaskHandle;

/// Kills what a test started if the test fails half-way (and removes its cgroups), so a failing
/// test does not leak processes. A no-op for tasks already cleaned up.
pub struct Reap {
    pid: Option<u32>,
    start_ticks: Option<u64>,
    cgroups: Vec<std::path::PathBuf>,
}

impl Reap {
    pub fn new(handle: &TaskHandle) -> Self {
        Self {
            pid: handle.pid,
            start_ticks: handle.state["start_ticks"].as_u64(),
            cgroups: serde_json::from_value(handle.state["cgroups"].clone()).unwrap_or_default(),
        }
    }
}

impl Drop for Reap {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill, killpg};
        use nix::unistd::Pid;
        if let (Some(pid), Some(ticks)) = (self.pid, self.start_ticks) {
            let same =
                caravan::drivers::process::read_stat(pid).is_some_and(|s| s.start_ticks == ticks);
            let gone = caravan::drivers::process::read_stat(pid).is_none();
            if same || gone {
                let _ = killpg(
                    Pid::from_raw(i32::try_from(pid).unwrap_or(0)),
                    Signal::SIGKILL,
                );
            }
        }
        for dir in &self.cgroups {
            for _ in 0..100 {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                let pids: Vec<i32> = procs
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect();
                if pids.is_empty() {
                    break;
                }
                for p in pids {
                    let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        for dir in &self.cgroups {
            for _ in 0..100 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}
