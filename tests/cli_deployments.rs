//! The seed's third act, replayed with the `caravan` binary against a real `caravan agent -dev`
//! and real containers: three instances of `demo-web:v1` under an update block with one canary
//! and manual promotion; v2 starts one canary beside them and waits ("requires manual
//! promotion"); `caravan deployment promote` rolls the rest one at a time until "Deployment
//! completed successfully"; then a v3 whose task exits at once fails its deployment and, with
//! auto_revert, the job is registered again with v2's spec as a new version, which rolls out.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cli_support;

use cli_support::support::images;
use cli_support::{Agent, both, eventually, ok, stdout};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// `manifests/demo.nomad.hcl` with the health time shortened, `image` as the version.
fn demo(version: &str) -> String {
    let spec = std::fs::read_to_string(cli_support::manifests().join("demo.nomad.hcl")).unwrap();
    let spec = spec.replace(r#"min_healthy_time = "10s""#, r#"min_healthy_time = "2s""#);
    assert!(
        spec.contains(r#"min_healthy_time = "2s""#),
        "demo.nomad.hcl changed"
    );
    spec.replace("v1", version)
}

/// v3: the v2 spec with auto_revert on, a task that exits at once, and no restart or
/// reschedule to wait for.
fn broken() -> String {
    let spec = demo("v2")
        .replace("auto_revert      = false", "auto_revert      = true")
        .replace(
            r#"ports = ["http"]"#,
            "ports = [\"http\"]\n        entrypoint = [\"/bin/sh\", \"-c\", \"exit 1\"]",
        )
        .replace(
            "    count = 3\n",
            "    count = 3\n\n    restart {\n      attempts = 0\n      mode     = \"fail\"\n    }\n\n    reschedule {\n      attempts  = 0\n      unlimited = false\n    }\n",
        );
    assert!(spec.contains("auto_revert      = true") && spec.contains("exit 1"));
    spec
}

fn api(agent: &Agent, path: &str) -> Value {
    let url = format!("{}{path}", agent.address);
    let body = std::process::Command::new("curl")
        .args(["-sf", &url])
        .output()
        .unwrap();
    assert!(body.status.success(), "GET {path} failed");
    serde_json::from_slice(&body.stdout).unwrap()
}

/// (job version, desired status, client status) of every allocation, sorted.
fn allocs(agent: &Agent) -> Vec<(u64, String, String)> {
    let mut list: Vec<(u64, String, String)> = api(agent, "/v1/job/demo/allocations")
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["JobVersion"].as_u64().unwrap(),
                a["DesiredStatus"].as_str().unwrap().to_owned(),
                a["ClientStatus"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    list.sort();
    list
}

fn count(list: &[(u64, String, String)], version: u64, desired: &str, client: &str) -> usize {
    list.iter()
        .filter(|(v, d, c)| *v == version && d == desired && c == client)
        .count()
}

fn write(dir: &Path, name: &str, spec: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, spec).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn canary_promoted_by_hand_then_a_bad_version_reverts() {
    images::ensure();
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // v1: three instances, rolled out as the first deployment.
    let v1 = write(d, "v1.hcl", &demo("v1"));
    let out = ok(&agent.cli(d, &["job", "run", &v1]));
    assert!(out.contains("Monitoring deployment"), "{out}");
    assert!(out.contains("Deployment completed successfully"), "{out}");
    assert_eq!(count(&allocs(&agent), 0, "run", "running"), 3);

    // v2: one canary beside the three, waiting for a human.
    let v2 = write(d, "v2.hcl", &demo("v2"));
    let out = ok(&agent.cli(d, &["job", "run", &v2]));
    assert!(out.contains("requires manual promotion"), "{out}");
    let list = allocs(&agent);
    assert_eq!(count(&list, 0, "run", "running"), 3, "{list:?}");
    assert_eq!(count(&list, 1, "run", "running"), 1, "{list:?}");
    assert_eq!(list.len(), 4, "{list:?}");
    let status = ok(&agent.cli(d, &["job", "status", "demo"]));
    assert!(
        status.contains("Deployment is running but requires manual promotion"),
        "{status}"
    );
    let deployment = api(&agent, "/v1/job/demo/deployment");
    let id = deployment["ID"].as_str().unwrap().to_owned();
    assert_eq!(deployment["JobVersion"], 1);
    let group = &deployment["TaskGroups"]["demo"];
    assert_eq!(group["DesiredCanaries"], 1);
    assert_eq!(group["PlacedCanaries"].as_array().map(Vec::len), Some(1));
    assert_eq!(group["Promoted"], false);

    // The canary is healthy and says so; its tasks' start is an event.
    let canary = group["PlacedCanaries"][0].as_str().unwrap().to_owned();
    let alloc = ok(&agent.cli(d, &["alloc", "status", &canary]));
    assert!(alloc.contains("Deployment Health   = healthy"), "{alloc}");
    assert!(alloc.contains("Started"), "{alloc}");
    assert!(
        alloc.contains(&format!("Deployment ID       = {}", &id[..8])),
        "{alloc}"
    );

    // Promotion: the others are replaced one at a time.
    let out = ok(&agent.cli(d, &["deployment", "promote", &id[..8]]));
    assert!(out.contains("promoted"), "{out}");
    assert!(out.contains("Deployment completed successfully"), "{out}");
    let list = allocs(&agent);
    assert_eq!(count(&list, 1, "run", "running"), 3, "{list:?}");
    assert_eq!(count(&list, 0, "stop", "complete"), 3, "{list:?}");
    let status = ok(&agent.cli(d, &["deployment", "status", &id[..8]]));
    assert!(
        status.contains("Deployment completed successfully"),
        "{status}"
    );
    let row = status.lines().find(|l| l.starts_with("demo ")).unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    // Task Group  Promoted  Desired  Canaries  Placed  Healthy  Unhealthy  Progress Deadline
    assert_eq!(
        &cols[..7],
        ["demo", "true", "3", "1", "3", "3", "0"],
        "{status}"
    );
    let history = ok(&agent.cli(d, &["job", "history", "demo"]));
    assert!(
        history.contains("Version     = 1\nStable      = true"),
        "{history}"
    );

    // v3 exits at once: its canary is unhealthy, the deployment fails and reverts to v2's spec.
    let v3 = write(d, "v3.hcl", &broken());
    let out = agent.cli(d, &["job", "run", &v3]);
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert!(
        stdout(&out)
            .contains("Failed due to unhealthy allocations - rolling back to job version 1"),
        "{}",
        both(&out)
    );
    let versions = api(&agent, "/v1/job/demo/versions");
    let versions = versions["Versions"].as_array().unwrap();
    let latest = &versions[0];
    assert_eq!(latest["Version"], 3, "the revert is a new version");
    let spec = |j: &Value| j["TaskGroups"][0]["Tasks"][0]["Config"].clone();
    let v2_spec = versions.iter().find(|j| j["Version"] == 1).unwrap();
    assert_eq!(spec(latest), spec(v2_spec), "back at v2's task");
    assert_eq!(
        latest["TaskGroups"][0]["Update"]["AutoRevert"], false,
        "back at v2's update block"
    );
    // The revert rolls out too: v2's allocations are updated in place and healthy again.
    eventually(
        Duration::from_secs(60),
        "the revert's deployment to succeed",
        || {
            let d = api(&agent, "/v1/job/demo/deployment");
            d["JobVersion"] == 3 && d["Status"] == "successful"
        },
    );
    let list = allocs(&agent);
    assert_eq!(count(&list, 3, "run", "running"), 3, "{list:?}");
    assert_eq!(count(&list, 2, "stop", "failed"), 1, "{list:?}");
    let listed = ok(&agent.cli(d, &["deployment", "list"]));
    assert!(
        listed.contains("Failed due to unhealthy allocations"),
        "{listed}"
    );
    ok(&agent.cli(d, &["job", "stop", "demo"]));
}

/// A raw_exec service of `count` sleepers whose `VERSION` is `version`, rolled out with `update`.
fn sleeper(count: u32, version: &str, update: &str) -> String {
    format!(
        r#"job "sleeper" {{
  datacenters = ["dc1"]

  update {{
    max_parallel     = 1
    min_healthy_time = "1s"
    healthy_deadline = "1m"
    health_check     = "task_states"
{update}
  }}

  group "app" {{
    count = {count}

    task "sleep" {{
      driver = "raw_exec"

      env {{
        VERSION = "{version}"
      }}

      config {{
        command = "/bin/sleep"
        args    = ["3600"]
      }}

      resources {{
        cpu    = 20
        memory = 16
      }}
    }}
  }}
}}
"#
    )
}

fn latest(agent: &Agent) -> Value {
    api(agent, "/v1/job/sleeper/deployment")
}

fn post(agent: &Agent, path: &str, body: &Value) -> (bool, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "-XPOST", "-d"])
        .arg(body.to_string())
        .arg(format!("{}{path}", agent.address))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code == "200", body.to_owned())
}

#[test]
fn auto_promote_pause_resume_cancel_fail_revert_and_manual_health() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |name: &str, spec: String| agent.cli(d, &["job", "run", &write(d, name, &spec)]);
    let auto = "    canary = 1\n    auto_promote = true";
    let manual = "    canary = 1\n    auto_promote = false";

    // Version 0, then version 1 with a canary that promotes itself once healthy.
    ok(&run("v0.hcl", sleeper(2, "v0", auto)));
    let out = ok(&run("v1.hcl", sleeper(2, "v1", auto)));
    assert!(out.contains("Deployment completed successfully"), "{out}");
    let d1 = latest(&agent);
    assert_eq!(d1["JobVersion"], 1);
    assert_eq!(d1["TaskGroups"]["app"]["Promoted"], true);

    // Version 2 waits for a human; pause and resume it.
    let out = ok(&run("v2.hcl", sleeper(2, "v2", manual)));
    assert!(out.contains("requires manual promotion"), "{out}");
    let d2 = latest(&agent)["ID"].as_str().unwrap().to_owned();
    let out = ok(&agent.cli(d, &["deployment", "pause", &d2]));
    assert!(out.contains("paused"), "{out}");
    assert_eq!(latest(&agent)["Status"], "paused");
    assert_eq!(latest(&agent)["StatusDescription"], "Deployment is paused");
    let out = ok(&agent.cli(d, &["deployment", "resume", &d2]));
    assert!(out.contains("resumed"), "{out}");
    assert_eq!(latest(&agent)["Status"], "running");

    // Promoting a group the deployment does not have is refused, with the reason.
    let out = agent.cli(d, &["deployment", "promote", "-group", "nope", &d2]);
    assert!(!out.status.success(), "{}", both(&out));
    assert!(both(&out).contains("nope"), "{}", both(&out));

    // Version 3 cancels version 2's deployment.
    let out = ok(&run("v3.hcl", sleeper(2, "v3", manual)));
    assert!(out.contains("requires manual promotion"), "{out}");
    let cancelled = api(&agent, &format!("/v1/deployment/{d2}"));
    assert_eq!(cancelled["Status"], "cancelled");
    assert_eq!(
        cancelled["StatusDescription"],
        "Cancelled due to newer version of job"
    );

    // Failing version 3's deployment by hand: no auto_revert, the job stays where it is.
    let d3 = latest(&agent)["ID"].as_str().unwrap().to_owned();
    let out = ok(&agent.cli(d, &["deployment", "fail", &d3]));
    assert!(out.contains("failed"), "{out}");
    let failed = latest(&agent);
    assert_eq!(failed["Status"], "failed");
    assert_eq!(failed["StatusDescription"], "Deployment marked as failed");
    // Nothing left to promote.
    let out = agent.cli(d, &["job", "promote", "sleeper"]);
    assert!(!out.status.success(), "{}", both(&out));

    // `job revert` to version 1: a new version (4) with version 1's spec, rolled out.
    let out = ok(&agent.cli(d, &["job", "revert", "sleeper", "1"]));
    assert!(out.contains("Deployment completed successfully"), "{out}");
    let job = api(&agent, "/v1/job/sleeper");
    assert_eq!(job["Version"], 4);
    assert_eq!(job["TaskGroups"][0]["Tasks"][0]["Env"]["VERSION"], "v1");
    assert_eq!(job["Stable"], true, "its deployment succeeded");
    let out = agent.cli(d, &["job", "revert", "sleeper", "4"]);
    assert!(
        both(&out).contains("can't revert to current version"),
        "{}",
        both(&out)
    );

    // Manual health: nothing is healthy until someone says so.
    let manual_health = "    health_check = \"manual\"".to_owned();
    let spec = sleeper(2, "v5", "").replace("    health_check     = \"task_states\"\n", "");
    let spec = spec.replace("  update {\n", &format!("  update {{\n{manual_health}\n"));
    let out = agent.cli(d, &["job", "run", "-detach", &write(d, "v5.hcl", &spec)]);
    assert!(out.status.success(), "{}", both(&out));
    let mut deployment = Value::Null;
    eventually(Duration::from_secs(30), "version 5's deployment", || {
        deployment = latest(&agent);
        deployment["JobVersion"] == 5 && deployment["TaskGroups"]["app"]["PlacedAllocs"] == 1
    });
    let id = deployment["ID"].as_str().unwrap().to_owned();
    let placed = || -> Vec<String> {
        api(&agent, &format!("/v1/deployment/allocations/{id}"))
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["ID"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut marked = 0;
    eventually(
        Duration::from_secs(60),
        "a manually healthy rollout",
        || {
            for alloc in placed() {
                let body = serde_json::json!({"DeploymentID": id, "HealthyAllocationIDs": [alloc]});
                let (good, text) = post(
                    &agent,
                    &format!("/v1/deployment/allocation-health/{id}"),
                    &body,
                );
                assert!(good || text.contains("terminal"), "{text}");
                marked += usize::from(good);
            }
            latest(&agent)["Status"] == "successful"
        },
    );
    assert!(marked >= 2, "each allocation was marked healthy by hand");
    ok(&agent.cli(d, &["job", "stop", "sleeper"]));
}
