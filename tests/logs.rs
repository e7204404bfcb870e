//! Task logs with real agents and real tasks: rotation by the task's `logs` block, output
//! captured by the task's logmon across an agent restart (no line lost, none repeated),
//! `caravan alloc logs -f` through a server to a client-only agent, and paths that try to
//! leave the allocation directory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::client::Client;
use support::eventually;

/// An agent process with given arguments, and the HTTP address it advertises.
fn spawn_agent(args: &[&str]) -> (Child, String) {
    let (child, addr) = support::agent::spawn_agent(args);
    (child, addr.expect("the agent prints its address"))
}

/// Kills an agent when dropped.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dev_agent(data: &Path) -> (Agent, Client) {
    let (child, addr) = spawn_agent(&[
        "agent",
        "-dev",
        "-http-port",
        "0",
        "-data-dir",
        data.to_str().unwrap(),
    ]);
    (Agent(child), Client::new(&format!("http://{addr}")))
}

fn job(id: &str, kind: &str, script: &str, logs: Option<(i64, i64)>) -> Value {
    let mut task = json!({"Name": "t", "Driver": "raw_exec",
        "Config": {"command": "/bin/sh", "args": ["-c", script]},
        "KillTimeout": 2_000_000_000,
        "Resources": {"CPU": 100, "MemoryMB": 64}});
    if let Some((files, mb)) = logs {
        task["LogConfig"] = json!({"MaxFiles": files, "MaxFileSizeMB": mb});
    }
    json!({"Job": {
        "ID": id, "Type": kind,
        "TaskGroups": [{
            "Name": "g", "Count": 1,
            "RestartPolicy": {"Attempts": 0, "Interval": 60_000_000_000i64, "Delay": 100_000_000, "Mode": "fail"},
            "ReschedulePolicy": {"Attempts": 0, "Interval": 0, "Unlimited": false, "Delay": 5_000_000_000i64, "DelayFunction": "constant"},
            "Tasks": [task]
        }]
    }})
}

async fn first_alloc(client: &Client, job: &str) -> Option<Value> {
    let resp = client.get(&format!("/v1/job/{job}/allocations")).await;
    if resp.status != 200 {
        return None;
    }
    resp.json().as_array().and_then(|a| a.first().cloned())
}

async fn wait_for_status(client: &Client, job: &str, status: &str) -> Value {
    eventually(
        Duration::from_secs(30),
        &format!("the allocation of {job} is {status}"),
        || async {
            first_alloc(client, job)
                .await
                .is_some_and(|a| a["ClientStatus"] == status)
        },
    )
    .await;
    first_alloc(client, job).await.unwrap()
}

async fn ready_nodes(client: &Client, n: usize) {
    eventually(Duration::from_secs(30), "ready nodes", || async {
        client
            .get("/v1/nodes")
            .await
            .json()
            .as_array()
            .is_some_and(|nodes| nodes.len() == n && nodes.iter().all(|x| x["Status"] == "ready"))
    })
    .await;
}

fn log_files(alloc_dir: &Path, base: &str) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = std::fs::read_dir(alloc_dir.join("alloc/logs"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let index = name.strip_prefix(&format!("{base}."))?.parse().ok()?;
            Some((index, e.metadata().ok()?.len()))
        })
        .collect();
    out.sort_unstable();
    out
}

/// Parses numbered lines and checks they run on from `first` without a gap or a repeat.
#[track_caller]
fn assert_consecutive(text: &str, first: u64) -> u64 {
    let mut expected = first;
    for line in text.lines() {
        let n: u64 = line
            .parse()
            .unwrap_or_else(|_| panic!("line {line:?} after {expected}"));
        assert_eq!(n, expected, "line {n} where {expected} was due");
        expected += 1;
    }
    expected
}

/// The pid recorded for the task's logmon.
fn logmon_pid(task_dir: &Path) -> Option<u32> {
    let state: Value =
        serde_json::from_slice(&std::fs::read(task_dir.join(".caravan-logs.json")).ok()?).ok()?;
    state["logmon"]["pid"]
        .as_u64()
        .map(|p| u32::try_from(p).unwrap())
}

/// Live logmon processes for an allocation (zombies excluded).
fn logmons_of(alloc_id: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'));
        if cmdline.contains(" logmon ") && cmdline.contains(alloc_id) && !zombie {
            out.push(pid);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_max_files_and_the_newest_output_is_readable() {
    let dir = tempfile::tempdir().unwrap();
    let (_agent, client) = dev_agent(&dir.path().join("data"));
    ready_nodes(&client, 1).await;
    // About 6.9 MB of numbered lines through 3 files of 1 MB.
    client
        .post(
            "/v1/jobs",
            &job("chatty", "batch", "seq 1 1000000", Some((3, 1))),
        )
        .await
        .expect(200);
    let alloc = wait_for_status(&client, "chatty", "complete").await;
    let id = alloc["ID"].as_str().unwrap().to_owned();
    let alloc_dir = dir.path().join("data/client/allocs").join(&id);
    eventually(
        Duration::from_secs(10),
        "the logmon has drained and exited",
        || async { logmons_of(&id).is_empty() },
    )
    .await;
    let files = log_files(&alloc_dir, "t.stdout");
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(
        files.iter().all(|(_, size)| *size <= 1024 * 1024),
        "{files:?}"
    );
    assert!(files[0].0 >= 4, "older files were deleted: {files:?}");

    // The newest output, through the API: the end of the log, and everything kept, in order.
    let tail = client
        .get(&format!(
            "/v1/client/fs/logs/{id}?task=t&type=stdout&plain=true&origin=end&offset=16"
        ))
        .await
        .expect(200)
        .body;
    assert!(tail.ends_with("999999\n1000000\n"), "{tail:?}");
    let all = client
        .get(&format!("/v1/client/fs/logs/{id}?task=t&plain=true"))
        .await
        .expect(200)
        .body;
    assert_eq!(all.len() as u64, files.iter().map(|(_, s)| s).sum::<u64>());
    // The oldest file kept may start in the middle of a line (output is read in pieces).
    let (_, whole) = all.split_once('\n').unwrap();
    let first: u64 = whole.lines().next().unwrap().parse().unwrap();
    assert!(first > 1, "the oldest lines were rotated away");
    assert_eq!(assert_consecutive(whole, first), 1_000_001);
    // Offsets from the start count from the oldest file kept.
    let from_second = client
        .get(&format!(
            "/v1/client/fs/logs/{id}?task=t&plain=true&offset={}",
            files[0].1
        ))
        .await
        .expect(200)
        .body;
    assert_eq!(from_second, all[usize::try_from(files[0].1).unwrap()..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_loses_no_line_and_repeats_none() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (first, client) = dev_agent(&data);
    ready_nodes(&client, 1).await;
    let script = "i=0; while true; do echo $i; i=$((i+1)); sleep 0.005; done";
    client
        .post("/v1/jobs", &job("counter", "service", script, Some((2, 1))))
        .await
        .expect(200);
    let alloc = wait_for_status(&client, "counter", "running").await;
    let id = alloc["ID"].as_str().unwrap().to_owned();
    let alloc_dir = data.join("client/allocs").join(&id);
    let stdout_0 = alloc_dir.join("alloc/logs/t.stdout.0");
    eventually(Duration::from_secs(10), "some lines", || async {
        std::fs::read_to_string(&stdout_0)
            .unwrap_or_default()
            .lines()
            .count()
            > 50
    })
    .await;
    let logmon = logmon_pid(&alloc_dir.join("t")).expect("a logmon is recorded");
    assert_eq!(logmons_of(&id), vec![logmon]);

    // The agent dies; the task goes on printing, and its output is still captured.
    drop(first);
    let while_down = std::fs::read_to_string(&stdout_0).unwrap().lines().count();
    eventually(
        Duration::from_secs(10),
        "output captured while the agent is down",
        || async { std::fs::read_to_string(&stdout_0).unwrap().lines().count() > while_down + 100 },
    )
    .await;

    let (_second, client) = dev_agent(&data);
    wait_for_status(&client, "counter", "running").await;
    let printed = std::fs::read_to_string(&stdout_0).unwrap().lines().count();
    eventually(
        Duration::from_secs(10),
        "more lines under the new agent",
        || async { std::fs::read_to_string(&stdout_0).unwrap().lines().count() > printed + 100 },
    )
    .await;
    assert_eq!(
        logmons_of(&id),
        vec![logmon],
        "the running logmon is reused, not doubled"
    );
    let alloc = first_alloc(&client, "counter").await.unwrap();
    assert_eq!(alloc["TaskStates"]["t"]["Restarts"], 0, "{alloc}");

    // Stopped: the logmon drains and exits; every line is there once, in order.
    client.delete("/v1/job/counter").await.expect(200);
    wait_for_status(&client, "counter", "complete").await;
    eventually(Duration::from_secs(10), "the logmon exits", || async {
        logmons_of(&id).is_empty()
    })
    .await;
    let all = client
        .get(&format!("/v1/client/fs/logs/{id}?task=t&plain=true"))
        .await
        .expect(200)
        .body;
    let next = assert_consecutive(&all, 0);
    assert!(next > u64::try_from(printed).unwrap() + 100, "{next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_replaces_a_logmon_that_died_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (first, client) = dev_agent(&data);
    ready_nodes(&client, 1).await;
    // The task survives writing to a pipe nobody reads (those lines are lost).
    let script = "trap '' PIPE; i=0; while true; do echo $i; i=$((i+1)); sleep 0.02; done";
    client
        .post("/v1/jobs", &job("orphan", "service", script, None))
        .await
        .expect(200);
    let alloc = wait_for_status(&client, "orphan", "running").await;
    let id = alloc["ID"].as_str().unwrap().to_owned();
    let task_dir = data.join("client/allocs").join(&id).join("t");
    let stdout_0 = data
        .join("client/allocs")
        .join(&id)
        .join("alloc/logs/t.stdout.0");
    eventually(Duration::from_secs(10), "some lines", || async {
        std::fs::read_to_string(&stdout_0)
            .unwrap_or_default()
            .lines()
            .count()
            > 10
    })
    .await;
    let old = logmon_pid(&task_dir).unwrap();
    drop(first);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(old).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually(Duration::from_secs(10), "the logmon is gone", || async {
        logmons_of(&id).is_empty()
    })
    .await;
    let before = std::fs::read_to_string(&stdout_0).unwrap().lines().count();

    let (_second, client) = dev_agent(&data);
    // The new logmon runs before the agent records it: wait for both.
    eventually(
        Duration::from_secs(20),
        "a new logmon, recorded",
        || async { logmons_of(&id).len() == 1 && logmon_pid(&task_dir).is_some_and(|p| p != old) },
    )
    .await;
    eventually(Duration::from_secs(10), "output captured again", || async {
        std::fs::read_to_string(&stdout_0).unwrap().lines().count() > before + 20
    })
    .await;
    let alloc = first_alloc(&client, "orphan").await.unwrap();
    assert_eq!(alloc["ClientStatus"], "running", "{alloc}");
    assert_eq!(
        alloc["TaskStates"]["t"]["Restarts"], 0,
        "the task itself was not restarted"
    );
    client.delete("/v1/job/orphan").await.expect(200);
    eventually(Duration::from_secs(15), "the logmon exits", || async {
        logmons_of(&id).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alloc_logs_follows_a_task_on_a_client_only_agent_through_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr) = spawn_agent(&[
        "agent",
        "-server",
        "-http-port",
        "0",
        "-bind",
        "127.0.0.1",
        "-data-dir",
        dir.path().join("server").to_str().unwrap(),
    ]);
    let _server = Agent(server);
    let client_config = dir.path().join("client.hcl");
    std::fs::write(
        &client_config,
        "plugin \"raw_exec\" {\n  config {\n    enabled = true\n  }\n}\n",
    )
    .unwrap();
    let (node, node_addr) = spawn_agent(&[
        "agent",
        "-client",
        "-servers",
        &addr,
        "-http-port",
        "0",
        "-bind",
        "127.0.0.1",
        "-config",
        client_config.to_str().unwrap(),
        "-data-dir",
        dir.path().join("client").to_str().unwrap(),
    ]);
    let _node = Agent(node);
    let client = Client::new(&format!("http://{addr}"));
    ready_nodes(&client, 1).await;
    let nodes = client.get("/v1/nodes").await.json();
    let node_id = nodes[0]["ID"].as_str().unwrap().to_owned();
    let node = client.get(&format!("/v1/node/{node_id}")).await.json();
    assert_eq!(node["HTTPAddr"], node_addr.as_str(), "{node}");
    let health = Client::new(&format!("http://{node_addr}"))
        .get("/v1/agent/health")
        .await
        .expect(200)
        .json();
    assert_eq!(health["client"]["ok"], true, "{health}");

    // Waits for a go file, so the stream is open before the first line is printed.
    let go = dir.path().join("go");
    let script = format!(
        "while [ ! -e {go} ]; do sleep 0.05; done; i=1; while [ $i -le 30 ]; do echo line $i; i=$((i+1)); sleep 0.1; done",
        go = go.display()
    );
    client
        .post("/v1/jobs", &job("remote", "batch", &script, None))
        .await
        .expect(200);
    let alloc = wait_for_status(&client, "remote", "running").await;
    let short = alloc["ID"].as_str().unwrap()[..8].to_owned();
    let (mut follow, rx, reader) = follower(&addr, &["-f", &short]);
    std::fs::write(&go, "").unwrap();
    // Lines arrive while the task runs (30 lines take 3 s).
    let mut lines = Vec::new();
    while lines.len() < 5 {
        lines.push(
            rx.recv_timeout(Duration::from_secs(15))
                .expect("lines as they are printed"),
        );
    }
    assert_eq!(lines[0], "line 1");
    let still = first_alloc(&client, "remote").await.unwrap();
    assert_eq!(
        still["ClientStatus"], "running",
        "streamed, not read at the end"
    );
    // Meanwhile, -tail -f starts with the last lines and goes on from there.
    let (mut tail_follow, tail_rx, tail_reader) =
        follower(&addr, &["-tail", "-n", "2", "-f", &short]);
    let tail_first = tail_rx
        .recv_timeout(Duration::from_secs(15))
        .expect("the tail");
    let still = first_alloc(&client, "remote").await.unwrap();
    assert_eq!(still["ClientStatus"], "running", "the tail came at once");
    // Both exit by themselves once the task is done and everything was printed.
    let status = exit_of(&mut follow, "alloc logs -f exits when the task is done").await;
    assert!(status.success(), "{status}");
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    let want: Vec<String> = (1..=30).map(|i| format!("line {i}")).collect();
    assert_eq!(lines, want);
    let status = exit_of(&mut tail_follow, "alloc logs -tail -f exits too").await;
    assert!(status.success(), "{status}");
    tail_reader.join().unwrap();
    let tail: Vec<String> = std::iter::once(tail_first)
        .chain(tail_rx.try_iter())
        .collect();
    let from: usize = tail
        .first()
        .and_then(|l| l.strip_prefix("line "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{tail:?}"));
    assert!((4..=29).contains(&from), "{tail:?}");
    assert_eq!(tail, want[from - 1..], "the tail, then every line after it");

    // -tail -n through the server too.
    let out = Command::new(env!("CARGO_BIN_EXE_caravan"))
        .args(["alloc", "logs", "-tail", "-n", "3", &short])
        .env("CARAVAN_ADDR", format!("http://{addr}"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "line 28\nline 29\nline 30\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_out_of_the_allocation_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_agent, client) = dev_agent(&data);
    ready_nodes(&client, 1).await;
    client
        .post("/v1/jobs", &job("once", "batch", "echo fine", None))
        .await
        .expect(200);
    let alloc = wait_for_status(&client, "once", "complete").await;
    let id = alloc["ID"].as_str().unwrap().to_owned();
    let logs = |query: String| {
        let client = client.clone();
        let id = id.clone();
        async move {
            client
                .get(&format!("/v1/client/fs/logs/{id}?plain=true&{query}"))
                .await
        }
    };
    assert_eq!(logs(String::new()).await.expect(200).body, "fine\n");
    for task in ["..", "../../..", "t/../t", "%2e%2e", "t%2F..%2F.."] {
        let resp = logs(format!("task={task}")).await;
        assert_eq!(resp.status, 400, "task={task}: {}", resp.body);
        assert!(resp.body.contains("unknown task"), "{}", resp.body);
    }
    let resp = client
        .get("/v1/client/fs/logs/..%2F..%2F..?task=t&plain=true")
        .await;
    assert_eq!(resp.status, 404, "{}", resp.body);

    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("t.stdout.0"), "secret\n").unwrap();
    std::fs::write(outside.join("secret"), "secret\n").unwrap();
    let log_dir = data.join("client/allocs").join(&id).join("alloc/logs");
    // A log file that is a symlink is not read.
    std::os::unix::fs::symlink(outside.join("secret"), log_dir.join("t.stdout.1")).unwrap();
    let resp = logs(String::new()).await.expect(200);
    assert_eq!(resp.body, "fine\n");
    // A log directory that is a symlink out of the allocation is refused.
    std::fs::rename(&log_dir, log_dir.with_extension("moved")).unwrap();
    std::os::unix::fs::symlink(&outside, &log_dir).unwrap();
    let resp = logs(String::new()).await;
    assert_eq!(resp.status, 400, "{}", resp.body);
    assert!(
        resp.body.contains("leads out of the allocation directory"),
        "{}",
        resp.body
    );
    assert!(!resp.body.contains("secret\n"));
}

/// A logmon started by hand, reading FIFOs in `dir/logs`.
fn spawn_logmon(dir: &Path) -> Child {
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let logs = dir.join("logs");
    Command::new(env!("CARGO_BIN_EXE_caravan"))
        .arg("logmon")
        .arg("--log-dir")
        .arg(&logs)
        .args([
            "--task",
            "t",
            "--max-files",
            "2",
            "--max-file-size",
            "100000",
        ])
        .arg("--stdout-fifo")
        .arg(logs.join(".t.stdout.fifo"))
        .arg("--stderr-fifo")
        .arg(logs.join(".t.stderr.fifo"))
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logmon_outlives_its_writers_and_drains_on_sigterm() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mut logmon = spawn_logmon(dir.path());
    let logs = dir.path().join("logs");
    eventually(Duration::from_secs(10), "both FIFOs are read", || async {
        logs.join("t.stderr.0").exists()
    })
    .await;
    let write = |text: &[u8]| {
        let mut fifo = std::fs::OpenOptions::new()
            .write(true)
            .open(logs.join(".t.stdout.fifo"))
            .unwrap();
        fifo.write_all(text).unwrap();
    };
    // A task that exits and is started again: the writer closes and a new one opens.
    write(b"first run\n");
    eventually(
        Duration::from_secs(10),
        "the first run's output",
        || async { std::fs::read_to_string(logs.join("t.stdout.0")).unwrap() == "first run\n" },
    )
    .await;
    assert!(
        logmon.try_wait().unwrap().is_none(),
        "a closed writer is not the end"
    );
    write(b"second run\n");
    // What is still in the pipe when SIGTERM comes is written before it exits.
    let burst: Vec<u8> = (0..6000)
        .flat_map(|i| format!("{i:09}\n").into_bytes())
        .collect();
    write(&burst);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(logmon.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = logmon.wait().unwrap();
    assert!(status.success(), "{status}");
    let mut all = std::fs::read(logs.join("t.stdout.0")).unwrap();
    all.extend(std::fs::read(logs.join("t.stdout.1")).unwrap_or_default());
    let mut want = b"first run\nsecond run\n".to_vec();
    want.extend_from_slice(&burst);
    assert_eq!(all.len(), want.len());
    assert!(all == want, "output reordered or lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logmon_exits_when_its_log_directory_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut logmon = spawn_logmon(dir.path());
    let logs = dir.path().join("logs");
    eventually(Duration::from_secs(10), "logmon is up", || async {
        logs.join("t.stderr.0").exists()
    })
    .await;
    std::fs::remove_dir_all(&logs).unwrap();
    let status = exit_of(&mut logmon, "logmon exits without its log directory").await;
    assert!(status.success(), "{status}");
}

/// `caravan alloc logs ARGS` against `addr`, its output lines sent as they come.
fn follower(
    addr: &str,
    args: &[&str],
) -> (
    Child,
    std::sync::mpsc::Receiver<String>,
    std::thread::JoinHandle<()>,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_caravan"))
        .args(["alloc", "logs"])
        .args(args)
        .env("CARAVAN_ADDR", format!("http://{addr}"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    (child, rx, reader)
}

/// Waits (bounded) for a child to exit.
async fn exit_of(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let child = std::sync::Mutex::new(child);
    let status = std::sync::Mutex::new(None);
    eventually(Duration::from_secs(30), what, || async {
        let exited = child.lock().unwrap().try_wait().unwrap();
        *status.lock().unwrap() = exited;
        exited.is_some()
    })
    .await;
    status.into_inner().unwrap().unwrap()
}

/// How much memory of its own a logmon holds: it is one process per task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logmon_stays_small() {
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = dir.path().join("data");
    let (_agent, client) = dev_agent(&data);
    ready_nodes(&client, 1).await;
    client
        .post(
            "/v1/jobs",
            &job("idle", "service", "seq 1 100000; sleep 300", None),
        )
        .await
        .expect(200);
    let alloc = wait_for_status(&client, "idle", "running").await;
    let id = alloc["ID"].as_str().unwrap().to_owned();
    let task_dir = data.join("client/allocs").join(&id).join("t");
    eventually(Duration::from_secs(10), "a logmon", || async {
        logmon_pid(&task_dir).is_some()
    })
    .await;
    let pid = logmon_pid(&task_dir).unwrap();
    let mut status = String::new();
    std::fs::File::open(format!("/proc/{pid}/status"))
        .unwrap()
        .read_to_string(&mut status)
        .unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    // Its own memory; the rest of its RSS are pages of the caravan binary, shared with the
    // agent and every other logmon.
    let (anon_kb, file_kb) = (field("RssAnon:"), field("RssFile:"));
    assert!(
        anon_kb < 4 * 1024,
        "logmon private RSS {anon_kb} kB (and {file_kb} kB of shared binary pages)"
    );
    client.delete("/v1/job/idle").await.expect(200);
    eventually(Duration::from_secs(15), "the logmon exits", || async {
        logmons_of(&id).is_empty()
    })
    .await;
}
