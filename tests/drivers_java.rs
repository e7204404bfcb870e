//! The java driver: a Hello class compiled with `javac` into a task directory and run both as a
//! class and as a jar (`jar cfe`), isolated like exec. If exec's isolation is unavailable here,
//! the test asserts java reports itself unhealthy with the reason (the branch taken is printed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/reap.rs"]
mod reap;
use caravan::drivers::java::JavaDriver;
use caravan::drivers::{Driver, DriverError, TaskConfig, TaskHandle, TaskResources};
use reap::Reap;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

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

/// Compiles Hello into `task_dir/local/classes` and packs `task_dir/local/hello.jar`.
fn build_hello(task_dir: &Path) {
    let local = task_dir.join("local");
    std::fs::write(local.join("Hello.java"), HELLO).unwrap();
    let status = Command::new("javac")
        .args(["-d", "classes", "Hello.java"])
        .current_dir(&local)
        .status()
        .unwrap();
    assert!(status.success(), "javac failed");
    let status = Command::new("jar")
        .args(["cfe", "hello.jar", "Hello", "-C", "classes", "."])
        .current_dir(&local)
        .status()
        .unwrap();
    assert!(status.success(), "jar failed");
}

fn java_task(dir: &Path, config: serde_json::Value) -> TaskConfig {
    let task_dir = dir.join("task");
    for sub in ["local", "secrets", "tmp"] {
        std::fs::create_dir_all(task_dir.join(sub)).unwrap();
    }
    TaskConfig {
        alloc_id: format!("java-{}", std::process::id()),
        job_id: "job".into(),
        group: "g".into(),
        task: "hello".into(),
        config: serde_json::from_value(config).unwrap(),
        env: BTreeMap::new(),
        resources: TaskResources {
            cpu_mhz: 500,
            memory_mb: 256,
            memory_max_mb: 0,
        },
        alloc_dir: dir.to_path_buf(),
        task_dir,
        stdout_path: dir.join("hello.stdout.0"),
        stderr_path: dir.join("hello.stderr.0"),
        ..TaskConfig::default()
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

async fn run_to_exit(driver: &JavaDriver, task: &TaskConfig) -> (TaskHandle, String) {
    let handle = driver.start(task).await.unwrap();
    let _reap_handle = Reap::new(&handle);
    assert_eq!(handle.driver, "java");
    let r = tokio::time::timeout(Duration::from_secs(60), driver.wait(&handle))
        .await
        .expect("java did not exit in time")
        .unwrap();
    let out = read(&task.stdout_path);
    assert!(
        r.successful(),
        "{r:?} stdout={out} stderr={}",
        read(&task.stderr_path)
    );
    driver.destroy(&handle).await.unwrap();
    (handle, out)
}

#[tokio::test]
async fn fingerprint_reports_the_jvm() {
    let driver = JavaDriver::new(BTreeMap::new());
    let fp = driver.fingerprint().await;
    eprintln!("java fingerprint: {fp:#?}");
    assert!(fp.detected, "a JDK is installed here: {fp:?}");
    let version = &fp.attributes["driver.java.version"];
    assert!(version.starts_with("17"), "{fp:?}");
    assert!(fp.attributes["driver.java.runtime"].contains("Runtime Environment"));
    assert!(fp.attributes["driver.java.vm"].contains("VM"));
}

#[tokio::test]
async fn runs_a_class_and_a_jar_isolated() {
    let driver = JavaDriver::new(BTreeMap::new());
    let fp = driver.fingerprint().await;
    let dir = tempfile::tempdir().unwrap();
    let class_task = java_task(
        dir.path(),
        json!({
            "class": "Hello",
            "class_path": "local/classes",
            "jvm_options": ["-Xmx64m", "-Dgreeting=hi"],
            "args": ["a", "b"],
        }),
    );
    if !fp.healthy {
        eprintln!("BRANCH unhealthy: java reports {:?}", fp.description);
        assert!(!fp.description.is_empty());
        let err = driver.start(&class_task).await.unwrap_err();
        assert!(matches!(err, DriverError::NotHealthy(_)), "{err}");
        return;
    }
    eprintln!(
        "BRANCH isolated: java {} with exec isolation (cgroup v{})",
        fp.attributes["driver.java.version"], fp.attributes["driver.java.cgroup_version"]
    );
    assert_eq!(fp.attributes["driver.java"], "1");
    build_hello(&class_task.task_dir);

    let (_, out) = run_to_exit(&driver, &class_task).await;
    assert!(out.contains("hello a,b greeting=hi user=nobody"), "{out}");

    let jar_task = java_task(
        dir.path(),
        json!({
            "jar_path": "local/hello.jar",
            "jvm_options": ["-Xmx64m", "-Dgreeting=jar"],
            "args": ["c"],
        }),
    );
    let (_, out) = run_to_exit(&driver, &jar_task).await;
    assert!(out.contains("hello c greeting=jar user=nobody"), "{out}");

    // A long-running JVM stops on SIGINT (the JVM exits on it) and its cgroup goes away.
    let block_task = java_task(
        dir.path(),
        json!({"jar_path": "local/hello.jar", "jvm_options": ["-Xmx64m"], "args": ["block"]}),
    );
    let h = driver.start(&block_task).await.unwrap();
    let _reap_h = Reap::new(&h);
    let path = block_task.stdout_path.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !read(&path).contains("ready") {
        assert!(std::time::Instant::now() < deadline, "JVM never got ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Memory statistics are flushed lazily by the kernel: poll, bounded.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = driver.stats(&h).await.unwrap();
        if stats.memory_rss_bytes > 1024 * 1024 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{stats:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    driver
        .stop(&h, Duration::from_secs(10), "SIGINT")
        .await
        .unwrap();
    let r = driver.wait(&h).await.unwrap();
    assert!(r.exit_code != 0 && !r.oom_killed, "{r:?}");
    driver.destroy(&h).await.unwrap();
    let cgroups: Vec<std::path::PathBuf> =
        serde_json::from_value(h.state["cgroups"].clone()).unwrap();
    assert!(cgroups.iter().all(|d| !d.exists()));
}

#[tokio::test]
async fn jar_or_class_is_required() {
    let driver = JavaDriver::new(BTreeMap::new());
    let dir = tempfile::tempdir().unwrap();
    let err = driver
        .start(&java_task(dir.path(), json!({"args": ["x"]})))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        DriverError::InvalidConfig("missing config key jar_path or class".into())
    );
}
