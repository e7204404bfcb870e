//! The docker driver against the real Docker engine, with the images `hack/build-test-image.sh`
//! builds from Debian's busybox-static (no registry involved). Docker must answer: these tests
//! fail, they never skip, when it does not.
//!
//! Every test uses its own allocation id and removes the containers labelled with it when it
//! ends, passed or failed (a Drop guard).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use caravan::drivers::docker::{DockerDriver, LABEL_ALLOC_ID, LABEL_TASK};
use caravan::drivers::{Driver, DriverError, PortMapping, TaskConfig, TaskHandle, TaskStatus};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::images::{BUSYBOX, DEMO_WEB, ensure as ensure_images};
use support::{eventually, random_suffix};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Removes every container of the allocation when dropped, even when the test failed.
struct Cleanup {
    alloc_id: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label={LABEL_ALLOC_ID}={}", self.alloc_id);
        let Ok(out) = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
        else {
            return;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&ids)
                .output();
        }
    }
}

/// One allocation's directories, driver and cleanup.
struct Fixture {
    driver: DockerDriver,
    alloc_id: String,
    dir: tempfile::TempDir,
    _cleanup: Cleanup,
}

impl Fixture {
    async fn new() -> Fixture {
        Self::with_plugin(BTreeMap::new()).await
    }

    async fn with_plugin(plugin: BTreeMap<String, Value>) -> Fixture {
        ensure_images();
        let driver = DockerDriver::new(plugin);
        let fp = driver.fingerprint().await;
        assert!(
            fp.detected && fp.healthy,
            "the Docker engine must answer for these tests: {}",
            fp.description
        );
        let alloc_id = format!("test-{}", random_suffix());
        Fixture {
            driver,
            _cleanup: Cleanup {
                alloc_id: alloc_id.clone(),
            },
            alloc_id,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn alloc_dir(&self) -> PathBuf {
        self.dir.path().join(&self.alloc_id)
    }

    /// A task of this allocation, its directories created as the agent would.
    fn task(&self, name: &str, config: Value) -> TaskConfig {
        let alloc_dir = self.alloc_dir();
        let task_dir = alloc_dir.join(name);
        for dir in [
            alloc_dir.join("alloc/logs"),
            task_dir.join("local"),
            task_dir.join("secrets"),
        ] {
            std::fs::create_dir_all(dir).unwrap();
        }
        let Value::Object(config) = config else {
            panic!("config must be an object");
        };
        TaskConfig {
            alloc_id: self.alloc_id.clone(),
            job_id: "docker-test".into(),
            group: "group".into(),
            task: name.into(),
            config: config.into_iter().collect(),
            env: BTreeMap::from([("NOMAD_TASK_NAME".to_string(), name.to_string())]),
            // The driver writes `<prefix>.<n>`, rotated.
            stdout_path: alloc_dir.join(format!("alloc/logs/{name}.stdout")),
            stderr_path: alloc_dir.join(format!("alloc/logs/{name}.stderr")),
            alloc_dir,
            task_dir,
            ..Default::default()
        }
    }

    async fn docker(&self) -> bollard::Docker {
        self.driver.client().await.unwrap()
    }

    async fn inspect(&self, handle: &TaskHandle) -> bollard::models::ContainerInspectResponse {
        self.docker()
            .await
            .inspect_container(&handle.id, None)
            .await
            .unwrap()
    }

    /// Ids of the allocation's containers, running or not.
    fn containers(&self) -> Vec<String> {
        let filter = format!("label={LABEL_ALLOC_ID}={}", self.alloc_id);
        let out = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }
}

/// A log written by the driver: its rotated files `<prefix>.0`, `.1`, … in order.
fn read(prefix: &Path) -> String {
    let mut out = String::new();
    for n in 0.. {
        let mut path = prefix.as_os_str().to_owned();
        path.push(format!(".{n}"));
        match std::fs::read_to_string(&path) {
            Ok(text) => out.push_str(&text),
            Err(_) => break,
        }
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET /` on 127.0.0.1:port, the whole response, or None while nothing answers.
async fn http_get(port: u16) -> Option<String> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        stream
            .write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        text.starts_with("HTTP/").then_some(text)
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

#[tokio::test]
async fn fingerprint_reports_the_engine() {
    let fx = Fixture::new().await;
    let fp = fx.driver.fingerprint().await;
    assert_eq!(fp.attributes["driver.docker"], "1");
    assert!(!fp.attributes["driver.docker.version"].is_empty());
    assert_eq!(fp.attributes["driver.docker.privileged.enabled"], "false");
    assert_eq!(fp.attributes["driver.docker.volumes.enabled"], "false");

    let unreachable = DockerDriver::new(BTreeMap::from([(
        "endpoint".to_string(),
        json!("unix:///nonexistent/docker.sock"),
    )]));
    let fp = unreachable.fingerprint().await;
    assert!(!fp.healthy);
    assert!(fp.description.contains("nonexistent"), "{}", fp.description);
}

#[tokio::test]
async fn env_and_args_reach_the_log_files() {
    let fx = Fixture::new().await;
    let mut task = fx.task(
        "printer",
        json!({
            "image": BUSYBOX,
            "command": "sh",
            "args": ["-c", "echo \"greeting=$GREETING task=$NOMAD_TASK_NAME\"; echo \"args: $*\"; echo oops >&2", "sh", "one", "two"],
        }),
    );
    task.env.insert("GREETING".into(), "hello world".into());
    let handle = fx.driver.start(&task).await.unwrap();
    assert_eq!(handle.driver, "docker");
    let exit = fx.driver.wait(&handle).await.unwrap();
    assert!(exit.successful(), "{exit:?}");
    let stdout = read(&task.stdout_path);
    assert!(
        stdout.contains("greeting=hello world task=printer"),
        "{stdout}"
    );
    assert!(stdout.contains("args: one two"), "{stdout}");
    assert_eq!(read(&task.stderr_path), "oops\n");
    fx.driver.destroy(&handle).await.unwrap();
}

#[tokio::test]
async fn exit_code_is_reported() {
    let fx = Fixture::new().await;
    let task = fx.task(
        "failing",
        json!({"image": BUSYBOX, "command": "sh", "args": ["-c", "exit 3"]}),
    );
    let handle = fx.driver.start(&task).await.unwrap();
    let exit = fx.driver.wait(&handle).await.unwrap();
    assert_eq!(exit.exit_code, 3);
    assert!(!exit.oom_killed);
    assert!(!exit.successful());
    // A second waiter gets the same answer.
    assert_eq!(fx.driver.wait(&handle).await.unwrap().exit_code, 3);
    match fx.driver.inspect(&handle).await.unwrap() {
        TaskStatus::Exited(e) => assert_eq!(e.exit_code, 3),
        other => panic!("expected Exited, got {other:?}"),
    }
    fx.driver.destroy(&handle).await.unwrap();
}

#[tokio::test]
async fn ports_are_published_on_the_host_address() {
    let fx = Fixture::new().await;
    let port = free_port();
    let mut task = fx.task("web", json!({"image": DEMO_WEB, "ports": ["http"]}));
    task.ports = vec![PortMapping {
        label: "http".into(),
        host_ip: "127.0.0.1".into(),
        host_port: port,
        container_port: 8080,
    }];
    let handle = fx.driver.start(&task).await.unwrap();
    eventually(Duration::from_secs(20), "the web page", || async {
        http_get(port)
            .await
            .is_some_and(|t| t.contains("demo-web v1"))
    })
    .await;
    let body = http_get(port).await.unwrap();
    let short = &handle.id[..12];
    assert!(body.contains(&format!("on {short}")), "{body}");
    let info = fx.inspect(&handle).await;
    let bindings = info.host_config.unwrap().port_bindings.unwrap();
    let http = bindings["8080/tcp"].as_ref().unwrap();
    assert_eq!(http[0].host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        http[0].host_port.as_deref(),
        Some(port.to_string().as_str())
    );

    // demo-web handles SIGTERM: a stop is quick, far from the timeout.
    let started = Instant::now();
    fx.driver
        .stop(&handle, Duration::from_secs(10), "SIGTERM")
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let exit = fx.driver.wait(&handle).await.unwrap();
    assert_eq!(exit.exit_code, 0, "{exit:?}");
    assert!(read(&task.stdout_path).contains("demo-web v1 listening on :8080"));
    fx.driver.destroy(&handle).await.unwrap();
}

#[tokio::test]
async fn the_older_port_map_syntax_works() {
    let fx = Fixture::new().await;
    let port = free_port();
    let mut task = fx.task(
        "db",
        json!({
            "image": BUSYBOX,
            "command": "httpd",
            "args": ["-f", "-p", "6379", "-h", "/local"],
            "port_map": [{"db": 6379}],
        }),
    );
    task.ports = vec![PortMapping {
        label: "db".into(),
        host_ip: "127.0.0.1".into(),
        host_port: port,
        container_port: 0,
    }];
    std::fs::write(
        task.task_dir.join("local/index.html"),
        "served from local\n",
    )
    .unwrap();
    let handle = fx.driver.start(&task).await.unwrap();
    eventually(
        Duration::from_secs(20),
        "httpd on the mapped port",
        || async {
            http_get(port)
                .await
                .is_some_and(|t| t.contains("served from local"))
        },
    )
    .await;
    let info = fx.inspect(&handle).await;
    let bindings = info.host_config.unwrap().port_bindings.unwrap();
    assert!(bindings.contains_key("6379/tcp"), "{bindings:?}");
    fx.driver
        .stop(&handle, Duration::from_secs(5), "SIGKILL")
        .await
        .unwrap();
    fx.driver.destroy(&handle).await.unwrap();
}

#[tokio::test]
async fn resources_labels_and_name_are_applied() {
    let fx = Fixture::new().await;
    let mut task = fx.task(
        "limited",
        json!({"image": BUSYBOX, "command": "sleep", "args": ["30"], "labels": {"team": "storage"}}),
    );
    task.resources.cpu_mhz = 250;
    task.resources.memory_mb = 64;
    task.resources.memory_max_mb = 96;
    let handle = fx.driver.start(&task).await.unwrap();
    let info = fx.inspect(&handle).await;
    let host = info.host_config.unwrap();
    assert_eq!(host.memory, Some(96 * 1024 * 1024));
    assert_eq!(host.memory_reservation, Some(64 * 1024 * 1024));
    assert_eq!(host.cpu_shares, Some(250));
    assert_eq!(host.privileged, Some(false));
    let labels = info.config.unwrap().labels.unwrap();
    assert_eq!(labels[LABEL_ALLOC_ID], fx.alloc_id);
    assert_eq!(labels[LABEL_TASK], "limited");
    assert_eq!(labels["com.caravan.job_id"], "docker-test");
    assert_eq!(labels["com.caravan.task_group"], "group");
    assert_eq!(labels["team"], "storage");
    assert_eq!(info.name.unwrap(), format!("/limited-{}", fx.alloc_id));
    assert!(matches!(
        fx.driver.inspect(&handle).await.unwrap(),
        TaskStatus::Running
    ));
    let stats = fx.driver.stats(&handle).await.unwrap();
    assert!(stats.cpu_percent >= 0.0);
    fx.driver
        .stop(&handle, Duration::from_secs(1), "SIGKILL")
        .await
        .unwrap();
    fx.driver.destroy(&handle).await.unwrap();
}

#[tokio::test]
async fn volumes_are_confined_to_the_alloc_dir() {
    let fx = Fixture::new().await;
    let task = fx.task(
        "reader",
        json!({
            "image": BUSYBOX,
            "command": "sh",
            "args": ["-c", "cat /data/hello.txt /local/note.txt; echo shared > /alloc/from-task"],
            "volumes": ["data:/data:ro"],
        }),
    );
    std::fs::create_dir_all(task.task_dir.join("data")).unwrap();
    std::fs::write(task.task_dir.join("data/hello.txt"), "from the task dir\n").unwrap();
    std::fs::write(task.task_dir.join("local/note.txt"), "from local\n").unwrap();
    let handle = fx.driver.start(&task).await.unwrap();
    let exit = fx.driver.wait(&handle).await.unwrap();
    assert!(exit.successful(), "{exit:?} {}", read(&task.stderr_path));
    assert_eq!(read(&task.stdout_path), "from the task dir\nfrom local\n");
    assert_eq!(
        std::fs::read_to_string(fx.alloc_dir().join("alloc/from-task")).unwrap(),
        "shared\n"
    );
    fx.driver.destroy(&handle).await.unwrap();

    // An absolute path outside the alloc dir, or a relative one climbing out of it: refused.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "host secret\n").unwrap();
    for volume in [
        format!("{}:/outside", outside.path().display()),
        "../../../../etc:/host-etc:ro".to_string(),
    ] {
        let task = fx.task(
            "escaper",
            json!({"image": BUSYBOX, "command": "true", "volumes": [volume]}),
        );
        match fx.driver.start(&task).await {
            Err(DriverError::InvalidConfig(msg)) => {
                assert!(msg.contains("outside the allocation directory"), "{msg}")
            }
            other => panic!("expected InvalidConfig for {volume}, got {other:?}"),
        }
    }
    assert!(
        fx.containers().is_empty(),
        "a refused task created a container"
    );

    // With the plugin's permission, the host path is mounted.
    let permissive = Fixture::with_plugin(BTreeMap::from([(
        "volumes".to_string(),
        json!({"enabled": true}),
    )]))
    .await;
    let fp = permissive.driver.fingerprint().await;
    assert_eq!(fp.attributes["driver.docker.volumes.enabled"], "true");
    let task = permissive.task(
        "escaper",
        json!({
            "image": BUSYBOX,
            "command": "cat",
            "args": ["/outside/secret.txt"],
            "volumes": [format!("{}:/outside:ro", outside.path().display())],
        }),
    );
    let handle = permissive.driver.start(&task).await.unwrap();
    assert!(permissive.driver.wait(&handle).await.unwrap().successful());
    assert_eq!(read(&task.stdout_path), "host secret\n");
    permissive.driver.destroy(&handle).await.unwrap();
}

#[tokio::test]
async fn privileged_is_refused_without_the_plugin_permission() {
    let fx = Fixture::new().await;
    let task = fx.task(
        "root",
        json!({"image": BUSYBOX, "command": "true", "privileged": true}),
    );
    match fx.driver.start(&task).await {
        Err(DriverError::InvalidConfig(msg)) => assert!(msg.contains("allow_privileged"), "{msg}"),
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    assert!(fx.containers().is_empty());

    // With the plugin's permission the node says so; the container itself is not started here
    // (a sandboxed engine may lack the capabilities to run it; the unit tests check the request).
    let allowed = Fixture::with_plugin(BTreeMap::from([(
        "allow_privileged".to_string(),
        json!(true),
    )]))
    .await;
    let fp = allowed.driver.fingerprint().await;
    assert_eq!(fp.attributes["driver.docker.privileged.enabled"], "true");
}

#[tokio::test]
async fn a_missing_image_fails_clearly() {
    let fx = Fixture::new().await;
    let task = fx.task(
        "ghost",
        json!({"image": "caravan/not-built-anywhere:1", "command": "true"}),
    );
    match fx.driver.start(&task).await {
        Err(DriverError::Start(msg)) => assert!(
            msg.contains(
                "image caravan/not-built-anywhere:1 is not present locally and pulling it failed"
            ),
            "{msg}"
        ),
        other => panic!("expected a start error, got {other:?}"),
    }
    let task = fx.task("nameless", json!({"command": "true"}));
    assert!(matches!(
        fx.driver.start(&task).await,
        Err(DriverError::InvalidConfig(_))
    ));
}

#[tokio::test]
async fn stop_waits_the_kill_timeout_for_a_task_ignoring_the_signal() {
    let fx = Fixture::new().await;
    let task = fx.task(
        "stubborn",
        json!({
            "image": BUSYBOX,
            "command": "sh",
            "args": ["-c", "trap 'echo got INT' INT; echo ready; while true; do sleep 0.2; done"],
        }),
    );
    let handle = fx.driver.start(&task).await.unwrap();
    eventually(Duration::from_secs(15), "the task to be ready", || async {
        read(&task.stdout_path).contains("ready")
    })
    .await;
    let timeout = Duration::from_secs(2);
    let started = Instant::now();
    fx.driver.stop(&handle, timeout, "SIGINT").await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= timeout,
        "stopped after {took:?}, before the timeout"
    );
    assert!(
        took < timeout + Duration::from_secs(5),
        "stopped after {took:?}"
    );
    let info = fx.inspect(&handle).await;
    assert_eq!(info.state.as_ref().unwrap().running, Some(false));
    let exit = fx.driver.wait(&handle).await.unwrap();
    assert_eq!(exit.exit_code, 137, "{exit:?}");
    assert!(read(&task.stdout_path).contains("got INT"));
    // Stopping a stopped task is fine.
    fx.driver.stop(&handle, timeout, "SIGINT").await.unwrap();
    fx.driver.destroy(&handle).await.unwrap();
}

#[tokio::test]
async fn signal_reaches_the_container() {
    let fx = Fixture::new().await;
    let task = fx.task(
        "listener",
        json!({
            "image": BUSYBOX,
            "command": "sh",
            "args": ["-c", "trap 'echo got HUP' HUP; echo ready; while true; do sleep 0.2; done"],
        }),
    );
    let handle = fx.driver.start(&task).await.unwrap();
    eventually(Duration::from_secs(15), "the task to be ready", || async {
        read(&task.stdout_path).contains("ready")
    })
    .await;
    fx.driver.signal(&handle, "SIGHUP").await.unwrap();
    eventually(Duration::from_secs(15), "the trap to run", || async {
        read(&task.stdout_path).contains("got HUP")
    })
    .await;
    assert!(matches!(
        fx.driver.signal(&handle, "SIGNOPE").await,
        Err(DriverError::InvalidSignal(_))
    ));
    fx.driver
        .stop(&handle, Duration::from_secs(1), "SIGKILL")
        .await
        .unwrap();
    fx.driver.destroy(&handle).await.unwrap();
}

#[tokio::test]
async fn a_new_driver_recovers_the_task_and_its_logs() {
    let fx = Fixture::new().await;
    let task = fx.task(
        "survivor",
        json!({
            "image": BUSYBOX,
            "command": "sh",
            "args": ["-c", "echo before; sleep 3; echo after; exit 7"],
        }),
    );
    let handle = fx.driver.start(&task).await.unwrap();
    eventually(Duration::from_secs(15), "the first line", || async {
        read(&task.stdout_path).contains("before")
    })
    .await;
    // The agent restarts: the handle is all that is left (persisted as JSON).
    let persisted = serde_json::to_string(&handle).unwrap();
    drop(fx.driver);
    let handle: TaskHandle = serde_json::from_str(&persisted).unwrap();
    let driver = DockerDriver::new(BTreeMap::new());
    driver.recover(&handle).await.unwrap();
    assert!(matches!(
        driver.inspect(&handle).await.unwrap(),
        TaskStatus::Running
    ));
    let exit = driver.wait(&handle).await.unwrap();
    assert_eq!(exit.exit_code, 7);
    // Logs went on into the same file, nothing repeated.
    assert_eq!(read(&task.stdout_path), "before\nafter\n");

    // A handle whose container id is stale is found again by its labels.
    let third = DockerDriver::new(BTreeMap::new());
    let stale = TaskHandle {
        id: "0000000000000000000000000000000000000000000000000000000000000000".into(),
        ..handle.clone()
    };
    third.recover(&stale).await.unwrap();
    assert_eq!(third.wait(&stale).await.unwrap().exit_code, 7);
    assert_eq!(read(&task.stdout_path), "before\nafter\n");

    driver.destroy(&handle).await.unwrap();
    // Gone for good: recovering fails with NotFound.
    let fourth = DockerDriver::new(BTreeMap::new());
    assert!(matches!(
        fourth.recover(&handle).await,
        Err(DriverError::NotFound(_))
    ));
}

#[tokio::test]
async fn container_output_is_rotated_by_the_logs_block() {
    let fx = Fixture::new().await;
    let mut task = fx.task(
        "rotated",
        json!({
            "image": BUSYBOX,
            "command": "sh",
            "args": ["-c", "i=10; while [ $i -lt 60 ]; do echo line $i; i=$((i+1)); done"],
        }),
    );
    task.logs = caravan::agent::logs::LogRotation {
        max_files: 2,
        max_file_size_bytes: 100,
    };
    let handle = fx.driver.start(&task).await.unwrap();
    assert!(fx.driver.wait(&handle).await.unwrap().successful());
    fx.driver.destroy(&handle).await.unwrap();
    // 50 lines of 8 bytes in files of at most 100 (12 whole lines): 5 files, the last 2 kept.
    let logs = fx.alloc_dir().join("alloc/logs");
    let mut kept: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("rotated.stdout."))
        .collect();
    kept.sort();
    assert_eq!(kept, ["rotated.stdout.3", "rotated.stdout.4"]);
    let newest: String = kept
        .iter()
        .map(|n| std::fs::read_to_string(logs.join(n)).unwrap())
        .collect();
    let want: String = (46..60).map(|i| format!("line {i}\n")).collect();
    assert_eq!(newest, want);
}

#[tokio::test]
async fn destroy_removes_the_container() {
    let fx = Fixture::new().await;
    let task = fx.task(
        "doomed",
        json!({"image": BUSYBOX, "command": "sleep", "args": ["60"]}),
    );
    let handle = fx.driver.start(&task).await.unwrap();
    assert_eq!(fx.containers().len(), 1);
    // `sleep` as PID 1 ignores SIGTERM: killed after the timeout.
    fx.driver
        .stop(&handle, Duration::from_secs(1), "SIGTERM")
        .await
        .unwrap();
    fx.driver.destroy(&handle).await.unwrap();
    assert!(fx.containers().is_empty());
    assert!(matches!(
        fx.driver.inspect(&handle).await,
        Err(DriverError::NotFound(_))
    ));
    // Destroying twice is fine.
    fx.driver.destroy(&handle).await.unwrap();
}
