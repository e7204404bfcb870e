//! Real `caravan` agent processes for integration tests: spawn one with given arguments and
//! read its HTTP address from its output; [`DevAgent`] is `caravan agent -dev` in a temporary
//! data dir, killed on drop.

use super::client::Client;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `caravan agent -dev -http-port 0` in a temporary data dir; killed on drop.
pub struct DevAgent {
    pub child: Child,
    pub client: Client,
    pub dir: tempfile::TempDir,
}

impl DevAgent {
    pub fn start() -> DevAgent {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap().to_owned();
        let (child, addr) = spawn_agent(&["agent", "-dev", "-http-port", "0", "-data-dir", &data]);
        let client = Client::new(&format!(
            "http://{}",
            addr.expect("the dev agent prints its address")
        ));
        DevAgent { child, client, dir }
    }

    /// The job's allocations (`/v1/job/:id/allocations`), none while it does not exist.
    pub async fn allocs(&self, job: &str) -> Vec<Value> {
        let resp = self.client.get(&format!("/v1/job/{job}/allocations")).await;
        if resp.status != 200 {
            return Vec::new();
        }
        resp.json().as_array().cloned().unwrap_or_default()
    }
}

impl Drop for DevAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Tasks outlive their agent by design; a test's must not outlive the test.
        for pid in pids_under(self.dir.path()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The processes whose working directory is under `dir` (a dev agent's task processes).
pub fn pids_under(dir: &std::path::Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
        })
        .collect()
}

/// An agent process with given arguments, once it says it started, and the HTTP address it
/// advertises. The caller kills it.
pub fn spawn_agent(args: &[&str]) -> (Child, Option<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_caravan"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut addr = None;
    loop {
        assert!(Instant::now() < deadline, "the agent did not start");
        let line = lines.next().expect("agent output").unwrap();
        if line.contains("Advertise Addrs: HTTP:") {
            addr = Some(line.rsplit(' ').next().unwrap().trim().to_owned());
        }
        if line.contains("agent started") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}
