//! The isolated drivers through the whole agent, not only at the driver level: a real
//! `caravan agent -dev` places and runs `exec` and `java` jobs submitted over the API. A batch
//! task runs to `complete` as `nobody`, inside the agent's cgroup, with its output in the task's
//! log; a service task runs (`running`) with the job's memory ask as its cgroup limit until the
//! job is stopped, and then its processes are gone and its allocation is `complete`.
//!
//! The java half needs a JDK (`java -version`, `javac`); without one it says so and is skipped.
//! When the machine cannot give exec its isolation, the node reports the driver unhealthy and
//! the test asserts that an exec job is then not placed, with the reason (which branch ran is
//! printed).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::client::Client;
use support::eventually;

/// `nobody`'s uid, the user the isolated drivers run tasks as by default.
const NOBODY_UID: &str = "65534";

struct DevAgent {
    child: Child,
    client: Client,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

impl DevAgent {
    /// A dev agent on a free port. Its data dir is world-traversable (0755, like
    /// `/opt/caravan/data` or the dev agent's own temporary dir): tasks run as `nobody` without
    /// a chroot, so they reach `$NOMAD_TASK_DIR` through it.
    fn start() -> DevAgent {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("data");
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_caravan"))
            .args(["agent", "-dev", "-http-port", "0", "-data-dir"])
            .arg(&data)
            .stdout(Stdio::piped())
            .stderr(log)
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
        let client = Client::new(&format!("http://{}", addr.expect("an address")));
        DevAgent {
            child,
            client,
            data,
            _dir: dir,
        }
    }

    /// The node, once it is ready.
    async fn node(&self) -> Value {
        eventually(Duration::from_secs(30), "a ready node", || async {
            self.client
                .get("/v1/nodes")
                .await
                .json()
                .as_array()
                .is_some_and(|n| n.len() == 1 && n[0]["Status"] == "ready")
        })
        .await;
        let id = self.client.get("/v1/nodes").await.json()[0]["ID"]
            .as_str()
            .unwrap()
            .to_owned();
        self.client.get(&format!("/v1/node/{id}")).await.json()
    }

    async fn alloc(&self, job: &str) -> Option<Value> {
        let resp = self.client.get(&format!("/v1/job/{job}/allocations")).await;
        if resp.status != 200 {
            return None;
        }
        resp.json().as_array()?.first().cloned()
    }

    async fn wait_status(&self, job: &str, status: &str) -> Value {
        eventually(
            Duration::from_secs(90),
            &format!("{job}'s allocation {status}"),
            || async {
                self.alloc(job)
                    .await
                    .is_some_and(|a| a["ClientStatus"] == status)
            },
        )
        .await;
        self.alloc(job).await.unwrap()
    }

    /// The task's log file (`stdout` or `stderr`).
    fn log(&self, alloc: &Value, task: &str, kind: &str) -> String {
        let path = self
            .data
            .join("client/allocs")
            .join(alloc["ID"].as_str().unwrap())
            .join(format!("alloc/logs/{task}.{kind}.0"));
        std::fs::read_to_string(path).unwrap_or_default()
    }
}

impl Drop for DevAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pids of processes whose command line contains `marker`.
fn pids_with(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
        .collect()
}

/// Kills what a failed test left running: the process group of each process with `marker` in
/// its command line (a task leads its own group), by its pid.
struct KillLeftovers(String);

impl Drop for KillLeftovers {
    fn drop(&mut self) {
        for pid in pids_with(&self.0) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The real uid of `pid` (`Uid:` in `/proc/<pid>/status`).
fn uid_of(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .to_owned()
}

/// The memory limit (bytes) of `pid`'s cgroup, v1 or v2, and the cgroup's path.
fn memory_limit_of(pid: u32) -> (u64, String) {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        let file = if controllers.split(',').any(|c| c == "memory") {
            format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
        } else if controllers.is_empty() {
            format!("/sys/fs/cgroup{path}/memory.max")
        } else {
            continue;
        };
        if let Ok(text) = std::fs::read_to_string(&file) {
            return (text.trim().parse().unwrap(), path.to_owned());
        }
    }
    panic!("no memory cgroup for {pid}: {cgroups}");
}

fn job(id: &str, kind: &str, driver: &str, config: Value, memory_mb: i64) -> Value {
    json!({"Job": {
        "ID": id, "Type": kind,
        "TaskGroups": [{
            "Name": "g", "Count": 1,
            "EphemeralDisk": {"SizeMB": 10},
            "RestartPolicy": {"Attempts": 0, "Interval": 60_000_000_000i64, "Delay": 100_000_000, "Mode": "fail"},
            "ReschedulePolicy": {"Attempts": 0, "Interval": 0, "Unlimited": false, "Delay": 5_000_000_000i64, "DelayFunction": "constant"},
            "Tasks": [{"Name": "t", "Driver": driver, "Config": config,
                       "KillTimeout": 5_000_000_000i64,
                       "Resources": {"CPU": 200, "MemoryMB": memory_mb}}]
        }]
    }})
}

fn event_types(alloc: &Value) -> Vec<String> {
    alloc["TaskStates"]["t"]["Events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Type"].as_str().unwrap().to_owned())
        .collect()
}

/// A service task of `job` is running as nobody with `memory_mb` as its cgroup's limit; the job
/// is stopped and its processes go, its allocation completes.
async fn run_then_stop(agent: &DevAgent, job_id: &str, marker: &str, memory_mb: u64) -> Value {
    let alloc = agent.wait_status(job_id, "running").await;
    eventually(Duration::from_secs(10), "the task's process", || async {
        !pids_with(marker).is_empty()
    })
    .await;
    for pid in pids_with(marker) {
        assert_eq!(uid_of(pid), NOBODY_UID, "pid {pid} runs as nobody");
        let (limit, path) = memory_limit_of(pid);
        assert!(path.contains("caravan"), "pid {pid} in {path}");
        assert_eq!(limit, memory_mb * 1024 * 1024, "{job_id}'s memory ask");
    }
    agent
        .client
        .delete(&format!("/v1/job/{job_id}"))
        .await
        .expect(200);
    eventually(
        Duration::from_secs(30),
        "the task's processes gone",
        || async { pids_with(marker).is_empty() },
    )
    .await;
    let done = agent.wait_status(job_id, "complete").await;
    let events = event_types(&done);
    assert!(
        events.ends_with(&["Killing".to_owned(), "Killed".to_owned()]),
        "{events:?}"
    );
    assert_eq!(done["ID"], alloc["ID"]);
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_tasks_run_isolated_through_the_agent() {
    let agent = DevAgent::start();
    let node = agent.node().await;
    let exec = &node["Drivers"]["exec"];
    if exec["Healthy"] != true {
        // Branch: no isolation here. The node says why, and exec work is not placed.
        eprintln!("exec is unhealthy here: {}", exec["HealthDescription"]);
        assert!(!exec["HealthDescription"].as_str().unwrap_or("").is_empty());
        let config = json!({"command": "/bin/true"});
        let resp = agent
            .client
            .post("/v1/jobs", &job("exec-none", "batch", "exec", config, 64))
            .await
            .expect(200);
        let eval = resp.json()["EvalID"].as_str().unwrap().to_owned();
        eventually(Duration::from_secs(20), "a placement failure", || async {
            let e = agent.client.get(&format!("/v1/evaluation/{eval}")).await;
            e.status == 200 && e.json()["FailedTGAllocs"]["g"].is_object()
        })
        .await;
        assert!(agent.alloc("exec-none").await.is_none());
        return;
    }
    eprintln!("exec is healthy here: running tasks isolated");

    // A batch task: runs as nobody in its cgroup, writes in its task dir, completes.
    let script = "id -un; echo hi > \"$NOMAD_TASK_DIR/greeting\" && cat \"$NOMAD_TASK_DIR/greeting\"; \
                  grep -c caravan /proc/self/cgroup";
    agent
        .client
        .post(
            "/v1/jobs",
            &job(
                "exec-once",
                "batch",
                "exec",
                json!({"command": "/bin/sh", "args": ["-c", script]}),
                64,
            ),
        )
        .await
        .expect(200);
    let alloc = agent.wait_status("exec-once", "complete").await;
    assert_eq!(
        event_types(&alloc),
        ["Received", "Task Setup", "Started", "Terminated"]
    );
    let out = agent.log(&alloc, "t", "stdout");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..2],
        ["nobody", "hi"],
        "stdout: {out}\nstderr: {}",
        agent.log(&alloc, "t", "stderr")
    );
    assert!(
        lines[2].parse::<u32>().unwrap() >= 1,
        "in a caravan cgroup: {out}"
    );

    // A service task: running with its memory ask as its limit, until the job is stopped.
    let marker = format!("caravan-exec-agent-{}", support::random_suffix());
    let _leftovers = KillLeftovers(marker.clone());
    agent
        .client
        .post(
            "/v1/jobs",
            &job(
                "exec-svc",
                "service",
                "exec",
                json!({"command": "/bin/sh", "args": ["-c", "echo up; sleep 300; true", &marker]}),
                48,
            ),
        )
        .await
        .expect(200);
    let done = run_then_stop(&agent, "exec-svc", &marker, 48).await;
    assert_eq!(agent.log(&done, "t", "stdout"), "up\n");
}

const HELLO: &str = r#"
public class Hello {
    public static void main(String[] args) throws Exception {
        System.out.println("hello " + String.join(",", args) + " greeting=" + System.getProperty("greeting")
            + " user=" + System.getProperty("user.name"));
        if (args.length > 0 && args[0].equals("block")) {
            System.out.println("ready");
            Thread.sleep(600_000);
        }
    }
}
"#;

/// Why there is no usable JDK here, if there is none.
fn no_jdk() -> Option<String> {
    for tool in ["java", "javac"] {
        match Command::new(tool).arg("-version").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                return Some(format!(
                    "`{tool} -version` failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
            }
            Err(e) => return Some(format!("`{tool}` is not installed ({e})")),
        }
    }
    None
}

/// Compiles Hello into `dir/classes` (readable by everyone, as tasks run as nobody).
fn compile_hello(dir: &Path) -> PathBuf {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("Hello.java"), HELLO).unwrap();
    let out = Command::new("javac")
        .args(["-d", "classes", "Hello.java"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "javac failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("classes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_tasks_run_through_the_agent() {
    if let Some(reason) = no_jdk() {
        eprintln!("SKIPPED java_tasks_run_through_the_agent: {reason}");
        return;
    }
    let src = tempfile::tempdir().unwrap();
    let classes = compile_hello(src.path());
    let class_path = classes.to_str().unwrap().to_owned();
    let agent = DevAgent::start();
    let node = agent.node().await;
    let java = &node["Drivers"]["java"];
    assert_eq!(java["Detected"], true, "a JDK is installed: {java}");
    assert_eq!(
        node["Attributes"]["driver.java.version"].as_str().map(|v| v
            .split('.')
            .next()
            .unwrap_or("")
            .parse::<u32>()
            .is_ok()),
        Some(true),
        "{java}"
    );
    if java["Healthy"] != true {
        // Java is isolated like exec; without the isolation the node says why.
        eprintln!("java is unhealthy here: {}", java["HealthDescription"]);
        assert_eq!(node["Drivers"]["exec"]["Healthy"], false, "{java}");
        assert!(!java["HealthDescription"].as_str().unwrap_or("").is_empty());
        return;
    }
    eprintln!("java is healthy here: running a class through the agent");

    // A batch task: the class runs with its JVM options and arguments, as nobody, and completes.
    agent
        .client
        .post(
            "/v1/jobs",
            &job(
                "java-once",
                "batch",
                "java",
                json!({
                    "class": "Hello",
                    "class_path": class_path,
                    "jvm_options": ["-Xmx64m", "-Dgreeting=hi"],
                    "args": ["a", "b"],
                }),
                256,
            ),
        )
        .await
        .expect(200);
    let alloc = agent.wait_status("java-once", "complete").await;
    assert_eq!(
        agent.log(&alloc, "t", "stdout"),
        "hello a,b greeting=hi user=nobody\n",
        "stderr: {}",
        agent.log(&alloc, "t", "stderr")
    );
    assert_eq!(
        event_types(&alloc),
        ["Received", "Task Setup", "Started", "Terminated"]
    );

    // A service task: the JVM keeps running until the job is stopped.
    let _leftovers = KillLeftovers(class_path.clone());
    agent
        .client
        .post(
            "/v1/jobs",
            &job(
                "java-svc",
                "service",
                "java",
                json!({
                    "class": "Hello",
                    "class_path": class_path,
                    "jvm_options": ["-Xmx64m"],
                    "args": ["block"],
                }),
                256,
            ),
        )
        .await
        .expect(200);
    let running = agent.wait_status("java-svc", "running").await;
    eventually(
        Duration::from_secs(30),
        "the class to say ready",
        || async { agent.log(&running, "t", "stdout").contains("ready\n") },
    )
    .await;
    run_then_stop(&agent, "java-svc", &class_path, 256).await;
}
