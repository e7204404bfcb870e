//! The raw_exec driver against real processes in temporary task directories.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/reap.rs"]
mod reap;
use caravan::drivers::process::{UNKNOWN_EXIT_CODE, read_stat};
use caravan::drivers::raw_exec::RawExecDriver;
use caravan::drivers::{Driver, DriverError, PluginConfigs, TaskConfig, TaskHandle, TaskStatus};
use reap::Reap;
use serde_json::json;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

/// Polls `condition` until it holds, failing the test after `timeout`.
async fn eventually<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sh_task(dir: &Path, script: &str, args: &[&str]) -> TaskConfig {
    let task_dir = dir.join("task");
    for sub in ["local", "secrets", "tmp"] {
        std::fs::create_dir_all(task_dir.join(sub)).unwrap();
    }
    let mut all_args = vec![json!("-c"), json!(script)];
    all_args.extend(args.iter().map(|a| json!(a)));
    TaskConfig {
        alloc_id: "0b6f2bd8-raw".into(),
        job_id: "job".into(),
        group: "g".into(),
        task: "t".into(),
        config: BTreeMap::from([
            ("command".to_string(), json!("/bin/sh")),
            ("args".to_string(), json!(all_args)),
        ]),
        env: BTreeMap::from([
            ("GREETING".to_string(), "hello world".to_string()),
            ("NOMAD_TASK_NAME".to_string(), "t".to_string()),
        ]),
        alloc_dir: dir.to_path_buf(),
        task_dir,
        stdout_path: dir.join("t.stdout.0"),
        stderr_path: dir.join("t.stderr.0"),
        ..TaskConfig::default()
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

async fn wait_for_output(task: &TaskConfig, needle: &str) {
    let path = task.stdout_path.clone();
    eventually(Duration::from_secs(10), needle, || {
        let found = read(&path).contains(needle);
        async move { found }
    })
    .await;
}

async fn wait_exit(driver: &RawExecDriver, handle: &TaskHandle) -> caravan::drivers::ExitResult {
    tokio::time::timeout(Duration::from_secs(15), driver.wait(handle))
        .await
        .expect("task did not exit in time")
        .unwrap()
}

/// Gone, or a zombie nobody reaped (the container's init may not reap).
fn process_gone(pid: u32) -> bool {
    read_stat(pid).is_none_or(|s| s.is_dead())
}

#[tokio::test]
async fn disabled_unless_the_plugin_config_enables_it() {
    let off = RawExecDriver::new(BTreeMap::new());
    let fp = off.fingerprint().await;
    assert!(!fp.detected && !fp.healthy, "{fp:?}");
    assert!(fp.description.contains("enabled = true"), "{fp:?}");
    let dir = tempfile::tempdir().unwrap();
    let err = off
        .start(&sh_task(dir.path(), "true", &[]))
        .await
        .unwrap_err();
    assert!(matches!(err, DriverError::NotHealthy(_)), "{err}");

    let on = RawExecDriver::new(BTreeMap::from([("enabled".to_string(), json!(true))]));
    let fp = on.fingerprint().await;
    assert!(fp.detected && fp.healthy, "{fp:?}");
    assert_eq!(fp.attributes["driver.raw_exec"], "1");

    let builtin = caravan::drivers::builtin(&PluginConfigs::default());
    assert!(!builtin.iter().any(|d| d.name() == "raw_exec"));
    let enabled = PluginConfigs(BTreeMap::from([(
        "raw_exec".to_string(),
        BTreeMap::from([("enabled".to_string(), json!(true))]),
    )]));
    assert!(
        caravan::drivers::builtin(&enabled)
            .iter()
            .any(|d| d.name() == "raw_exec")
    );
}

#[tokio::test]
async fn env_and_args_land_in_the_stdout_file() {
    let dir = tempfile::tempdir().unwrap();
    let driver = RawExecDriver::enabled();
    let task = sh_task(
        dir.path(),
        r#"echo "greeting=$GREETING"; echo "args=$0|$1|$2"; echo "pwd=$(pwd)"; echo to-stderr >&2; env"#,
        &["zero", "one two", "three"],
    );
    let handle = driver.start(&task).await.unwrap();
    let _reap_handle = Reap::new(&handle);
    assert_eq!(handle.driver, "raw_exec");
    assert!(handle.pid.is_some());
    let result = wait_exit(&driver, &handle).await;
    assert!(result.successful(), "{result:?}");
    let out = read(&task.stdout_path);
    assert!(out.contains("greeting=hello world"), "{out}");
    assert!(out.contains("args=zero|one two|three"), "{out}");
    assert!(
        out.contains(&format!("pwd={}", task.task_dir.display())),
        "{out}"
    );
    assert!(out.contains("NOMAD_TASK_NAME=t"), "{out}");
    // The environment is the task's only: nothing leaks from the agent (cargo sets CARGO_*).
    assert!(!out.contains("CARGO"), "agent environment leaked: {out}");
    assert_eq!(read(&task.stderr_path), "to-stderr\n");

    // A second run appends.
    let handle = driver.start(&task).await.unwrap();
    let _reap_handle = Reap::new(&handle);
    wait_exit(&driver, &handle).await;
    assert_eq!(read(&task.stdout_path).matches("greeting=").count(), 2);
    assert_eq!(
        driver.inspect(&handle).await.unwrap(),
        TaskStatus::Exited(result)
    );
    driver.destroy(&handle).await.unwrap();
}

#[tokio::test]
async fn commands_resolve_on_path_and_relative_to_the_task_dir() {
    let dir = tempfile::tempdir().unwrap();
    let driver = RawExecDriver::enabled();
    let mut task = sh_task(dir.path(), "", &[]);
    std::fs::write(
        task.task_dir.join("local/run.sh"),
        "#!/bin/sh\necho from-script \"$@\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        task.task_dir.join("local/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    task.config = BTreeMap::from([
        ("command".to_string(), json!("local/run.sh")),
        ("args".to_string(), json!(["a"])),
    ]);
    let h = driver.start(&task).await.unwrap();
    let _reap_h = Reap::new(&h);
    assert!(wait_exit(&driver, &h).await.successful());
    task.config = BTreeMap::from([
        ("command".to_string(), json!("echo")),
        ("args".to_string(), json!(["from-path"])),
    ]);
    let h = driver.start(&task).await.unwrap();
    let _reap_h = Reap::new(&h);
    assert!(wait_exit(&driver, &h).await.successful());
    let out = read(&task.stdout_path);
    assert!(
        out.contains("from-script a") && out.contains("from-path"),
        "{out}"
    );

    task.config = BTreeMap::from([("args".to_string(), json!(["x"]))]);
    let err = driver.start(&task).await.unwrap_err();
    assert_eq!(
        err,
        DriverError::InvalidConfig("missing config key command".into())
    );
    task.config = BTreeMap::from([("command".to_string(), json!("no-such-command-xyz"))]);
    let err = driver.start(&task).await.unwrap_err();
    assert!(matches!(err, DriverError::Start(_)), "{err}");
}

#[tokio::test]
async fn exit_codes_and_signals_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let driver = RawExecDriver::enabled();
    let h = driver
        .start(&sh_task(dir.path(), "exit 3", &[]))
        .await
        .unwrap();
    let _reap_h = Reap::new(&h);
    let r = wait_exit(&driver, &h).await;
    assert_eq!(
        (r.exit_code, r.signal, r.oom_killed),
        (3, 0, false),
        "{r:?}"
    );
    assert!(!r.successful());

    let h = driver
        .start(&sh_task(dir.path(), "kill -TERM $$; sleep 5", &[]))
        .await
        .unwrap();

    let _reap_h = Reap::new(&h);
    let r = wait_exit(&driver, &h).await;
    assert_eq!((r.exit_code, r.signal), (128 + 15, 15), "{r:?}");
}

#[tokio::test]
async fn stop_with_a_trapped_sigint_exits_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let driver = RawExecDriver::enabled();
    let task = sh_task(
        dir.path(),
        "trap 'echo got-INT; exit 42' INT; echo ready; while true; do sleep 0.1; done",
        &[],
    );
    let h = driver.start(&task).await.unwrap();
    let _reap_h = Reap::new(&h);
    wait_for_output(&task, "ready").await;
    assert_eq!(driver.inspect(&h).await.unwrap(), TaskStatus::Running);
    let t0 = Instant::now();
    driver
        .stop(&h, Duration::from_secs(10), "SIGINT")
        .await
        .unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "graceful stop took {:?}",
        t0.elapsed()
    );
    let r = wait_exit(&driver, &h).await;
    assert_eq!((r.exit_code, r.signal), (42, 0), "{r:?}");
    assert!(read(&task.stdout_path).contains("got-INT"));
    // Stopping an exited task is fine.
    driver.stop(&h, Duration::from_secs(1), "").await.unwrap();
}

#[tokio::test]
async fn stop_kills_a_task_that_ignores_sigint_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let driver = RawExecDriver::enabled();
    let task = sh_task(
        dir.path(),
        "trap '' INT; echo ready; while true; do sleep 0.1; done",
        &[],
    );
    let h = driver.start(&task).await.unwrap();
    let _reap_h = Reap::new(&h);
    wait_for_output(&task, "ready").await;
    let timeout = Duration::from_millis(1500);
    let t0 = Instant::now();
    // Empty = SIGINT, Nomad's default.
    driver.stop(&h, timeout, "").await.unwrap();
    let elapsed = t0.elapsed();
    assert!(elapsed >= timeout, "killed before the timeout: {elapsed:?}");
    assert!(
        elapsed < timeout + Duration::from_secs(5),
        "stop took {elapsed:?}"
    );
    let r = wait_exit(&driver, &h).await;
    assert_eq!((r.exit_code, r.signal), (128 + 9, 9), "{r:?}");
}

#[tokio::test]
async fn the_whole_process_group_dies_grandchildren_too() {
    let dir = tempfile::tempdir().unwrap();
    let driver = RawExecDriver::enabled();
    // A background job of a non-interactive shell ignores SIGINT: only the group kill gets it.
    let task = sh_task(
        dir.path(),
        "sleep 1000 & echo $! > grandchild.pid; echo ready; wait",
        &[],
    );
    let h = driver.start(&task).await.unwrap();
    let _reap_h = Reap::new(&h);
    wait_for_output(&task, "ready").await;
    let grandchild: u32 = read(&task.task_dir.join("grandchild.pid"))
        .trim()
        .parse()
        .unwrap();
    let stat = read_stat(grandchild).unwrap();
    assert_eq!(
        stat.pgrp,
        i32::try_from(h.pid.unwrap()).unwrap(),
        "grandchild is in the task's group"
    );
    driver
        .stop(&h, Duration::from_secs(5), "SIGINT")
        .await
        .unwrap();
    eventually(
        Duration::from_secs(5),
        "the grandchild to die",
        || async move { process_gone(grandchild) },
    )
    .await;
    driver.destroy(&h).await.unwrap();
}

#[tokio::test]
async fn signals_reach_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let driver = RawExecDriver::enabled();
    let task = sh_task(
        dir.path(),
        "trap 'echo got-USR1' USR1; trap 'echo got-HUP' HUP; echo ready; while true; do sleep 0.1; done",
        &[],
    );
    let h = driver.start(&task).await.unwrap();
    let _reap_h = Reap::new(&h);
    wait_for_output(&task, "ready").await;
    driver.signal(&h, "SIGUSR1").await.unwrap();
    wait_for_output(&task, "got-USR1").await;
    driver.signal(&h, "1").await.unwrap();
    wait_for_output(&task, "got-HUP").await;
    let err = driver.signal(&h, "SIGWHATEVER").await.unwrap_err();
    assert!(matches!(err, DriverError::InvalidSignal(_)), "{err}");

    let stats = driver.stats(&h).await.unwrap();
    assert!(stats.memory_rss_bytes > 0, "{stats:?}");
    assert!(stats.cpu_percent >= 0.0, "{stats:?}");

    driver
        .stop(&h, Duration::from_secs(5), "SIGTERM")
        .await
        .unwrap();
    let r = wait_exit(&driver, &h).await;
    assert_eq!(r.signal, 15, "{r:?}");
}

#[tokio::test]
async fn a_new_driver_instance_recovers_the_task_from_its_serialized_handle() {
    let dir = tempfile::tempdir().unwrap();
    let first = RawExecDriver::enabled();
    let task = sh_task(
        dir.path(),
        "echo ready; while true; do sleep 0.1; done",
        &[],
    );
    let handle = first.start(&task).await.unwrap();
    let _reap_handle = Reap::new(&handle);
    wait_for_output(&task, "ready").await;
    let persisted = serde_json::to_string(&handle).unwrap();

    // "The agent restarted": a fresh driver knows nothing until it recovers the handle.
    let second = RawExecDriver::enabled();
    let restored: TaskHandle = serde_json::from_str(&persisted).unwrap();
    assert!(matches!(
        second.wait(&restored).await,
        Err(DriverError::NotFound(_))
    ));
    assert_eq!(
        second.inspect(&restored).await.unwrap(),
        TaskStatus::Running
    );
    second.recover(&restored).await.unwrap();
    second.recover(&restored).await.unwrap(); // idempotent
    assert_eq!(
        second.inspect(&restored).await.unwrap(),
        TaskStatus::Running
    );

    // A handle whose pid now belongs to another process (different start time) is rejected.
    let mut reused = restored.clone();
    reused.id.push_str("-other");
    reused.state["start_ticks"] = json!(restored.state["start_ticks"].as_u64().unwrap() + 1);
    let err = second.recover(&reused).await.unwrap_err();
    assert!(
        matches!(&err, DriverError::NotFound(m) if m.contains("reused")),
        "{err}"
    );
    assert_eq!(second.inspect(&reused).await.unwrap(), TaskStatus::Unknown);
    // As is one whose pid is gone.
    let mut gone = restored.clone();
    gone.id.push_str("-gone");
    gone.pid = Some(u32::try_from(i32::MAX).unwrap());
    assert!(matches!(
        second.recover(&gone).await,
        Err(DriverError::NotFound(_))
    ));

    // The recovered task can be stopped; its exit status is unknowable to a non-parent.
    second
        .stop(&restored, Duration::from_secs(5), "SIGTERM")
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), second.wait(&restored))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.exit_code, UNKNOWN_EXIT_CODE, "{r:?}");
    assert!(
        r.error.as_deref().unwrap_or("").contains("unknown"),
        "{r:?}"
    );
    assert!(!r.successful());
    // The original parent saw the real status.
    let r = wait_exit(&first, &handle).await;
    assert_eq!(r.signal, 15, "{r:?}");
    second.destroy(&restored).await.unwrap();
    // A task that has exited cannot be recovered.
    let third = RawExecDriver::enabled();
    assert!(matches!(
        third.recover(&restored).await,
        Err(DriverError::NotFound(_))
    ));
}

#[tokio::test]
async fn output_can_go_to_fifos() {
    let dir = tempfile::tempdir().unwrap();
    let driver = RawExecDriver::enabled();
    let mut task = sh_task(dir.path(), "echo via-fifo; echo err-via-fifo >&2", &[]);
    task.stdout_path = dir.path().join("stdout.fifo");
    task.stderr_path = dir.path().join("stderr.fifo");
    let mode = nix::sys::stat::Mode::from_bits_truncate(0o600);
    nix::unistd::mkfifo(&task.stdout_path, mode).unwrap();
    nix::unistd::mkfifo(&task.stderr_path, mode).unwrap();
    // The log collector's side: readers that appear a little after the driver starts opening.
    let readers: Vec<_> = [task.stdout_path.clone(), task.stderr_path.clone()]
        .into_iter()
        .map(|p| std::thread::spawn(move || std::fs::read_to_string(p).unwrap()))
        .collect();
    let h = driver.start(&task).await.unwrap();
    let _reap_h = Reap::new(&h);
    assert!(wait_exit(&driver, &h).await.successful());
    let outputs: Vec<String> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    assert_eq!(outputs, ["via-fifo\n", "err-via-fifo\n"]);
}

#[tokio::test]
async fn exec_runs_beside_the_task_and_is_killed_at_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let driver = RawExecDriver::enabled();
    let task = sh_task(dir.path(), "exec sleep 30", &[]);
    let handle = driver.start(&task).await.unwrap();
    let _reap = Reap::new(&handle);
    let request = |command: &[&str], timeout_ms: u64| caravan::drivers::ExecRequest {
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        env: task.env.clone(),
        cwd: task.task_dir.clone(),
        timeout: Duration::from_millis(timeout_ms),
        output_limit: 16,
    };
    // The task's environment and directory; stdout and stderr together; the exit code.
    let out = driver
        .exec(
            &handle,
            &request(
                &["sh", "-c", "echo $GREETING; ls -d local >&2; exit 3"],
                5000,
            ),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 3);
    assert_eq!(
        String::from_utf8_lossy(&out.output),
        "hello world\nloca",
        "cut to 16 bytes"
    );
    // A command that outlives its timeout is killed, with everything it started.
    let started = Instant::now();
    let err = driver
        .exec(&handle, &request(&["sh", "-c", "sleep 30 & sleep 30"], 200))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "{err}");
    assert!(err.to_string().contains("timed out after 200ms"), "{err}");
    let err = driver
        .exec(&handle, &request(&["no-such-command-xyz"], 1000))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no-such-command-xyz"), "{err}");
    driver
        .stop(&handle, Duration::from_secs(2), "")
        .await
        .unwrap();
    driver.destroy(&handle).await.unwrap();
    // A task that is gone has nothing to exec in.
    assert!(
        driver
            .exec(&handle, &request(&["true"], 1000))
            .await
            .is_err()
    );
}
