//! The exec driver against real processes: cgroup limits, OOM kills, `nobody`, mount namespace,
//! recovery. Every test first asks the fingerprint whether this machine allows cgroups: if it
//! does, the isolation is exercised; if it does not, the test asserts that the driver reports
//! itself unhealthy with a reason and refuses to start tasks. Which branch ran is printed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/reap.rs"]
mod reap;
use caravan::drivers::exec::ExecDriver;
use caravan::drivers::process::read_stat;
use caravan::drivers::{
    Driver, DriverError, ExitResult, TaskConfig, TaskHandle, TaskResources, TaskStatus,
};
use reap::Reap;
use serde_json::json;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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

fn sh_task(dir: &Path, script: &str) -> TaskConfig {
    let task_dir = dir.join("task");
    for sub in ["local", "secrets", "tmp"] {
        std::fs::create_dir_all(task_dir.join(sub)).unwrap();
    }
    TaskConfig {
        alloc_id: format!("exec-{}", std::process::id()),
        job_id: "job".into(),
        group: "g".into(),
        task: "t".into(),
        config: BTreeMap::from([
            ("command".to_string(), json!("/bin/sh")),
            ("args".to_string(), json!(["-c", script])),
        ]),
        env: BTreeMap::from([("GREETING".to_string(), "hi".to_string())]),
        resources: TaskResources {
            cpu_mhz: 250,
            memory_mb: 64,
            memory_max_mb: 0,
        },
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

async fn wait_exit(driver: &ExecDriver, handle: &TaskHandle) -> ExitResult {
    tokio::time::timeout(Duration::from_secs(30), driver.wait(handle))
        .await
        .expect("task did not exit in time")
        .unwrap()
}

fn cgroup_dirs(handle: &TaskHandle) -> Vec<PathBuf> {
    serde_json::from_value(handle.state["cgroups"].clone()).unwrap()
}

/// The driver when this machine supports it; otherwise asserts that it says why not (and that
/// it refuses tasks) and returns `None`.
async fn healthy_driver_or_explained_refusal(test: &str) -> Option<ExecDriver> {
    let driver = ExecDriver::new(BTreeMap::new());
    let fp = driver.fingerprint().await;
    assert!(fp.detected, "{fp:?}");
    if fp.healthy {
        let version = &fp.attributes["driver.exec.cgroup_version"];
        assert!(version == "1" || version == "2", "{fp:?}");
        assert_eq!(fp.attributes["driver.exec"], "1");
        let mount_ns = &fp.attributes["driver.exec.mount_namespace"];
        assert!(mount_ns == "true" || mount_ns == "false", "{fp:?}");
        if mount_ns == "false" {
            assert!(
                fp.attributes
                    .contains_key("driver.exec.mount_namespace.reason")
            );
        }
        eprintln!(
            "[{test}] BRANCH isolated: cgroup v{version}, mount namespace {mount_ns}: {}",
            fp.description
        );
        Some(driver)
    } else {
        assert!(!fp.description.is_empty(), "unhealthy without a reason");
        eprintln!(
            "[{test}] BRANCH unhealthy: the exec driver reports {:?}",
            fp.description
        );
        let dir = tempfile::tempdir().unwrap();
        let err = driver
            .start(&sh_task(dir.path(), "true"))
            .await
            .unwrap_err();
        assert!(matches!(err, DriverError::NotHealthy(_)), "{err}");
        None
    }
}

#[tokio::test]
async fn fingerprint_states_what_the_kernel_allows() {
    let driver = ExecDriver::new(BTreeMap::new());
    let fp = driver.fingerprint().await;
    eprintln!("exec fingerprint: {fp:#?}");
    assert!(fp.detected);
    if fp.healthy {
        assert!(fp.attributes.contains_key("driver.exec.cgroup_parent"));
        assert_eq!(fp.attributes["driver.exec.default_user"], "nobody");
    } else {
        assert!(
            fp.attributes.contains_key("driver.exec.cgroup.reason") || !fp.description.is_empty()
        );
    }
    // Asking twice gives the same answer (probing is done once).
    assert_eq!(driver.fingerprint().await, fp);
}

#[tokio::test]
async fn runs_as_nobody_in_its_own_cgroup_and_mount_namespace() {
    let Some(driver) = healthy_driver_or_explained_refusal("nobody+cgroup").await else {
        return;
    };
    let fp = driver.fingerprint().await;
    let dir = tempfile::tempdir().unwrap();
    let task = sh_task(
        dir.path(),
        r#"echo "uid=$(id -u) gid=$(id -g) user=$(id -un)"; echo "greeting=$GREETING"; echo "mnt=$(readlink /proc/self/ns/mnt)"; cat /proc/self/cgroup; touch local/written && echo wrote-local"#,
    );
    let handle = driver.start(&task).await.unwrap();
    let _reap_handle = Reap::new(&handle);
    assert_eq!(handle.driver, "exec");
    let r = wait_exit(&driver, &handle).await;
    let out = read(&task.stdout_path);
    assert!(r.successful(), "{r:?} {out} {}", read(&task.stderr_path));
    assert!(out.contains("uid=65534 "), "{out}");
    assert!(out.contains("user=nobody"), "{out}");
    assert!(out.contains("greeting=hi"), "{out}");
    assert!(
        out.contains("wrote-local"),
        "the task dir is writable by the task: {out}"
    );
    assert!(
        out.contains(&handle.id),
        "the task's /proc/self/cgroup names its cgroup {}: {out}",
        handle.id
    );
    let ours = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    let theirs_line = out.lines().find(|l| l.starts_with("mnt=")).unwrap();
    if fp.attributes["driver.exec.mount_namespace"] == "true" {
        assert_ne!(
            theirs_line,
            format!("mnt={}", ours.display()),
            "expected a private mount namespace"
        );
    } else {
        assert_eq!(theirs_line, format!("mnt={}", ours.display()));
    }
    driver.destroy(&handle).await.unwrap();
    for d in cgroup_dirs(&handle) {
        assert!(!d.exists(), "destroy removes {}", d.display());
    }
}

#[tokio::test]
async fn the_user_option_overrides_nobody() {
    let Some(driver) = healthy_driver_or_explained_refusal("user").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut task = sh_task(dir.path(), r#"echo "user=$(id -un) uid=$(id -u)""#);
    task.user = Some("daemon".into());
    let h = driver.start(&task).await.unwrap();
    let _reap_h = Reap::new(&h);
    assert!(wait_exit(&driver, &h).await.successful());
    assert!(
        read(&task.stdout_path).contains("user=daemon uid=1"),
        "{}",
        read(&task.stdout_path)
    );
    driver.destroy(&h).await.unwrap();
    task.user = Some("no-such-user-xyz".into());
    let err = driver.start(&task).await.unwrap_err();
    assert!(matches!(err, DriverError::Start(_)), "{err}");
}

#[tokio::test]
async fn limits_are_written_to_the_cgroup() {
    let Some(driver) = healthy_driver_or_explained_refusal("limits").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut task = sh_task(dir.path(), "echo ready; while true; do sleep 0.1; done");
    task.resources = TaskResources {
        cpu_mhz: 300,
        memory_mb: 48,
        memory_max_mb: 96,
    };
    let h = driver.start(&task).await.unwrap();
    let _reap_h = Reap::new(&h);
    wait_for_output(&task, "ready").await;
    let dirs = cgroup_dirs(&h);
    let mib = 1024 * 1024;
    if h.state["cgroup_v2"] == json!(true) {
        assert_eq!(
            read(&dirs[0].join("memory.max")).trim(),
            (96 * mib).to_string()
        );
        assert_eq!(
            read(&dirs[0].join("memory.low")).trim(),
            (48 * mib).to_string()
        );
        assert!(!read(&dirs[0].join("cpu.weight")).trim().is_empty());
    } else {
        assert_eq!(
            read(&dirs[0].join("memory.limit_in_bytes")).trim(),
            (96 * mib).to_string()
        );
        assert_eq!(
            read(&dirs[0].join("memory.soft_limit_in_bytes")).trim(),
            (48 * mib).to_string()
        );
        assert_eq!(read(&dirs[1].join("cpu.shares")).trim(), "300");
    }
    eventually(Duration::from_secs(10), "memory stats", || async {
        driver.stats(&h).await.unwrap().memory_rss_bytes > 0
    })
    .await;
    driver
        .stop(&h, Duration::from_secs(5), "SIGTERM")
        .await
        .unwrap();
    let r = wait_exit(&driver, &h).await;
    assert_eq!(r.signal, 15, "{r:?}");
    driver.destroy(&h).await.unwrap();
    for d in &dirs {
        assert!(!d.exists(), "{} removed", d.display());
    }
}

#[tokio::test]
async fn a_task_over_its_memory_limit_is_oom_killed_and_reported() {
    let Some(driver) = healthy_driver_or_explained_refusal("oom").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // dd fills one 256 MiB buffer: far over the 32 MiB limit.
    let mut task = sh_task(
        dir.path(),
        "dd if=/dev/zero of=/dev/null bs=256M count=1 && echo survived",
    );
    task.resources = TaskResources {
        cpu_mhz: 100,
        memory_mb: 16,
        memory_max_mb: 32,
    };
    let h = driver.start(&task).await.unwrap();
    let _reap_h = Reap::new(&h);
    let r = wait_exit(&driver, &h).await;
    assert!(r.oom_killed, "{r:?}");
    assert!(!r.successful());
    assert!(!read(&task.stdout_path).contains("survived"));
    assert_eq!(
        driver.inspect(&h).await.unwrap(),
        TaskStatus::Exited(r.clone())
    );
    driver.destroy(&h).await.unwrap();

    // The same work within the limit is fine.
    let mut task = sh_task(dir.path(), "dd if=/dev/zero of=/dev/null bs=4M count=1");
    task.resources.memory_mb = 64;
    let h = driver.start(&task).await.unwrap();
    let _reap_h = Reap::new(&h);
    let r = wait_exit(&driver, &h).await;
    assert!(r.successful(), "{r:?}");
    driver.destroy(&h).await.unwrap();
}

#[tokio::test]
async fn stop_kills_everything_in_the_cgroup_even_processes_that_left_the_group() {
    let Some(driver) = healthy_driver_or_explained_refusal("cgroup kill").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let task = sh_task(
        dir.path(),
        "setsid sleep 1000 & echo $! > tmp/escapee.pid; trap '' INT; echo ready; while true; do sleep 0.1; done",
    );
    let h = driver.start(&task).await.unwrap();
    let _reap_h = Reap::new(&h);
    wait_for_output(&task, "ready").await;
    let escapee: u32 = read(&task.task_dir.join("tmp/escapee.pid"))
        .trim()
        .parse()
        .unwrap();
    let timeout = Duration::from_millis(1000);
    let t0 = Instant::now();
    driver.stop(&h, timeout, "SIGINT").await.unwrap();
    let elapsed = t0.elapsed();
    assert!(
        elapsed >= timeout && elapsed < timeout + Duration::from_secs(10),
        "{elapsed:?}"
    );
    let r = wait_exit(&driver, &h).await;
    assert_eq!(r.signal, 9, "{r:?}");
    eventually(
        Duration::from_secs(5),
        "the escapee to die",
        || async move { read_stat(escapee).is_none_or(|s| s.is_dead()) },
    )
    .await;
    let procs = read(&cgroup_dirs(&h)[0].join("cgroup.procs"));
    assert!(procs.trim().is_empty(), "cgroup still has {procs}");
    driver.destroy(&h).await.unwrap();
}

#[tokio::test]
async fn a_new_driver_instance_recovers_the_task_and_its_cgroup() {
    let Some(first) = healthy_driver_or_explained_refusal("recover").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let task = sh_task(dir.path(), "echo ready; while true; do sleep 0.1; done");
    let handle = first.start(&task).await.unwrap();
    let _reap_handle = Reap::new(&handle);
    wait_for_output(&task, "ready").await;
    let persisted = serde_json::to_string(&handle).unwrap();

    let second = ExecDriver::new(BTreeMap::new());
    let restored: TaskHandle = serde_json::from_str(&persisted).unwrap();
    second.recover(&restored).await.unwrap();
    assert_eq!(
        second.inspect(&restored).await.unwrap(),
        TaskStatus::Running
    );
    eventually(Duration::from_secs(10), "memory stats", || async {
        second.stats(&restored).await.unwrap().memory_rss_bytes > 0
    })
    .await;

    let mut reused = restored.clone();
    reused.id.push_str("-other");
    reused.state["start_ticks"] = json!(restored.state["start_ticks"].as_u64().unwrap() + 7);
    let err = second.recover(&reused).await.unwrap_err();
    assert!(
        matches!(&err, DriverError::NotFound(m) if m.contains("reused")),
        "{err}"
    );

    second
        .stop(&restored, Duration::from_secs(5), "SIGTERM")
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), second.wait(&restored))
        .await
        .unwrap()
        .unwrap();
    assert!(
        r.error.is_some(),
        "exit status of a recovered task is unknown: {r:?}"
    );
    second.destroy(&restored).await.unwrap();
    for d in cgroup_dirs(&restored) {
        assert!(!d.exists(), "{} removed", d.display());
    }
    // The first instance (the real parent) saw the real status; its destroy is a no-op now.
    assert_eq!(wait_exit(&first, &handle).await.signal, 15);
    first.destroy(&handle).await.unwrap();
}

#[tokio::test]
async fn destroy_without_recover_still_removes_the_cgroup() {
    let Some(first) = healthy_driver_or_explained_refusal("destroy orphan").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let task = sh_task(dir.path(), "echo ready; while true; do sleep 0.1; done");
    let handle = first.start(&task).await.unwrap();
    let _reap_handle = Reap::new(&handle);
    wait_for_output(&task, "ready").await;
    // Another agent instance that never recovered the task cleans it up from the handle alone.
    let other = ExecDriver::new(BTreeMap::new());
    other.destroy(&handle).await.unwrap();
    for d in cgroup_dirs(&handle) {
        assert!(!d.exists(), "{} removed", d.display());
    }
    assert_eq!(wait_exit(&first, &handle).await.signal, 9);
}

#[tokio::test]
async fn an_unusable_cgroup_parent_makes_the_driver_unhealthy_with_the_reason() {
    // A "parent" below a file cannot be created in any hierarchy: the unhealthy branch, forced.
    let driver = ExecDriver::new(BTreeMap::from([(
        "cgroup_parent".to_string(),
        json!("cgroup.procs/caravan"),
    )]));
    let fp = driver.fingerprint().await;
    eprintln!("forced-unhealthy exec fingerprint: {fp:#?}");
    assert!(fp.detected && !fp.healthy, "{fp:?}");
    assert!(fp.description.contains("cgroup"), "{fp:?}");
    assert_eq!(fp.attributes["driver.exec.cgroup_version"], "none");
    assert!(!fp.attributes.contains_key("driver.exec"));
    let dir = tempfile::tempdir().unwrap();
    let err = driver
        .start(&sh_task(dir.path(), "true"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DriverError::NotHealthy(m) if m.contains("cgroup")),
        "{err}"
    );
}
