//! The CLI against a canned API: `job plan`, `job run`'s evaluation monitor and `job scale`,
//! whose server side (the plan and scale endpoints, evaluations completed by the job
//! controller) a dev agent does not provide yet. The answers are Nomad's JSON.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cli_support;

use cli_support::{both, caravan, manifests, stderr, stdout, stub};
use serde_json::json;
use std::sync::{Arc, Mutex};

const EVAL: &str = "abcd1234-5d6e-7f80-91a2-b3c4d5e6f708";

fn example() -> String {
    manifests()
        .join("example.nomad.hcl")
        .to_str()
        .unwrap()
        .to_owned()
}

#[test]
fn plan_prints_the_diff_the_dry_run_and_the_check_index_hint() {
    let seen = Arc::new(Mutex::new(String::new()));
    let record = Arc::clone(&seen);
    let server = stub(move |method, path, body| {
        if method == "POST" && path == "/v1/job/example/plan" {
            *record.lock().unwrap() = body.to_owned();
            let resp = json!({
                "JobModifyIndex": 42,
                "CreatedEvals": null,
                "Diff": {"Type": "Edited", "ID": "example", "Fields": null, "Objects": null,
                    "TaskGroups": [{"Type": "Edited", "Name": "cache",
                        "Fields": [{"Type": "Edited", "Name": "Count", "Old": "1", "New": "3",
                                    "Annotations": ["forces create"]}],
                        "Objects": null,
                        "Tasks": [{"Type": "None", "Name": "redis", "Fields": null,
                                   "Objects": null, "Annotations": null}],
                        "Updates": {"create": 2, "ignore": 1}}]},
                "Annotations": {"DesiredTGUpdates": {"cache": {"Ignore": 1, "Place": 2,
                    "Migrate": 0, "Stop": 0, "InPlaceUpdate": 0, "DestructiveUpdate": 0,
                    "Canary": 0, "Preemptions": 0}}, "PreemptedAllocs": null},
                "FailedTGAllocs": null,
                "NextPeriodicLaunch": "0001-01-01T00:00:00Z",
                "Warnings": ""
            });
            return (200, resp.to_string());
        }
        (404, format!("Invalid URL path {path}"))
    });
    let dir = tempfile::tempdir().unwrap();
    let file = example();
    let out = caravan(
        dir.path(),
        &["job", "plan", "-address", &server.address, &file],
    );
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let expected = format!(
        "+/- Job: \"example\"
+/- Task Group: \"cache\" (2 create, 1 ignore)
  +/- Count: \"1\" => \"3\" (forces create)
      Task: \"redis\"

Scheduler dry-run:
- All tasks successfully allocated.

Job Modify Index: 42
To submit the job with version verification run:

caravan job run -check-index 42 {file}

When running the job with the check-index flag, the job will only be run if the
job modify index given matches the server-side version. If the index has
changed, another user has modified the job and the plan's results are
potentially invalid.
"
    );
    assert_eq!(stdout(&out), expected);
    let sent: serde_json::Value = serde_json::from_str(&seen.lock().unwrap()).unwrap();
    assert_eq!(sent["Diff"], true);
    assert_eq!(sent["Job"]["ID"], "example");
}

#[test]
fn plan_without_changes_exits_zero_and_failures_are_listed() {
    let server = stub(move |method, path, body| {
        if method == "POST" && path == "/v1/job/example/plan" {
            let job: serde_json::Value = serde_json::from_str(body).unwrap();
            let resp = json!({
                "JobModifyIndex": 9,
                "Diff": {"Type": "None", "ID": job["Job"]["ID"], "TaskGroups": [
                    {"Type": "None", "Name": "cache", "Tasks": [{"Type": "None", "Name": "redis"}],
                     "Updates": {"ignore": 1}}]},
                "Annotations": {"DesiredTGUpdates": {"cache": {"Ignore": 1}}},
                "FailedTGAllocs": {"cache": {"NodesEvaluated": 2, "NodesExhausted": 2,
                    "DimensionExhausted": {"memory": 2}, "CoalescedFailures": 1}}
            });
            return (200, resp.to_string());
        }
        (404, "not found".into())
    });
    let dir = tempfile::tempdir().unwrap();
    let out = caravan(
        dir.path(),
        &["job", "plan", "-address", &server.address, &example()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(
            "Job: \"example\"\nTask Group: \"cache\" (1 ignore)\n  Task: \"redis\"\n\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "- WARNING: Failed to place all allocations.
  Task Group \"cache\" (failed to place 2 allocations):
    * Resources exhausted on 2 nodes
    * Dimension \"memory\" exhausted on 2 nodes

Job Modify Index: 9"
        ),
        "{text}"
    );
}

#[test]
fn plan_errors_exit_255() {
    let server = stub(|_, _, _| (405, "Invalid method".into()));
    let dir = tempfile::tempdir().unwrap();
    let out = caravan(
        dir.path(),
        &["job", "plan", "-address", &server.address, &example()],
    );
    assert_eq!(out.status.code(), Some(255), "{}", both(&out));
    assert_eq!(
        stderr(&out).trim(),
        "Error during plan: Unexpected response code: 405 (Invalid method)"
    );
}

fn eval_json(status: &str, failed: serde_json::Value) -> String {
    json!({
        "ID": EVAL, "Namespace": "default", "Priority": 50, "Type": "service",
        "TriggeredBy": "job-register", "JobID": "example", "Status": status,
        "FailedTGAllocs": failed, "BlockedEval": if failed.is_null() { "" } else { "efgh5678-0000" },
        "CreateIndex": 10, "ModifyIndex": 12
    })
    .to_string()
}

fn register_reply() -> (u16, String) {
    (
        200,
        json!({"EvalID": EVAL, "EvalCreateIndex": 10, "JobModifyIndex": 10, "Warnings": "", "Index": 10})
            .to_string(),
    )
}

#[test]
fn run_monitors_the_evaluation_until_it_completes() {
    let polls = Arc::new(Mutex::new(0));
    let count = Arc::clone(&polls);
    let server = stub(move |method, path, _| {
        let eval_path = format!("/v1/evaluation/{EVAL}");
        match (method, path) {
            ("POST", "/v1/jobs") => register_reply(),
            ("GET", p) if p.starts_with(&format!("{eval_path}/allocations")) => {
                let n = *count.lock().unwrap();
                if n < 2 {
                    (200, "[]".into())
                } else {
                    let alloc = json!([{"ID": "8ba85cef-1111-2222-3333-444444444444",
                        "NodeID": "171a583b-0000-0000-0000-000000000000", "TaskGroup": "cache",
                        "DesiredStatus": "run", "ClientStatus": "pending", "CreateIndex": 11}]);
                    (200, alloc.to_string())
                }
            }
            ("GET", p) if p.starts_with(&eval_path) => {
                let mut n = count.lock().unwrap();
                *n += 1;
                let status = if *n < 3 { "pending" } else { "complete" };
                (200, eval_json(status, serde_json::Value::Null))
            }
            _ => (404, format!("Invalid URL path {path}")),
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let out = caravan(
        dir.path(),
        &["job", "run", "-address", &server.address, &example()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let lines: Vec<String> = stdout(&out)
        .lines()
        .map(|l| {
            // Drop the timestamps: `==> 2024-…Z: text` → `==> text`.
            let (prefix, rest) = l.split_at(4);
            match rest.split_once("Z: ") {
                Some((_, text)) => format!("{prefix}{text}"),
                None => l.to_owned(),
            }
        })
        .collect();
    assert_eq!(
        lines,
        [
            "==> Monitoring evaluation \"abcd1234\"",
            "    Evaluation triggered by job \"example\"",
            "    Allocation \"8ba85cef\" created: node \"171a583b\", group \"cache\"",
            "    Evaluation status changed: \"pending\" -> \"complete\"",
            "==> Evaluation \"abcd1234\" finished with status \"complete\"",
        ],
        "{}",
        both(&out)
    );
}

#[test]
fn run_exits_two_when_placement_fails() {
    let server = stub(move |method, path, _| match (method, path) {
        ("POST", "/v1/jobs") => register_reply(),
        ("GET", p) if p.contains("/allocations") => (200, "[]".into()),
        ("GET", p) if p.starts_with("/v1/evaluation/") => (
            200,
            eval_json(
                "complete",
                json!({"cache": {"NodesEvaluated": 3, "NodesFiltered": 3,
                    "ConstraintFiltered": {"${attr.kernel.name} = windows": 3}}}),
            ),
        ),
        _ => (404, "not found".into()),
    });
    let dir = tempfile::tempdir().unwrap();
    let out = caravan(
        dir.path(),
        &["job", "run", "-address", &server.address, &example()],
    );
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    let text = stdout(&out);
    for expected in [
        "Evaluation \"abcd1234\" finished with status \"complete\" but failed to place all allocations:",
        "Task Group \"cache\" (failed to place 1 allocation):\n      * Constraint \"${attr.kernel.name} = windows\": 3 nodes excluded by filter",
        "Evaluation \"efgh5678\" waiting for additional capacity to place remainder",
    ] {
        assert!(text.contains(expected), "{expected:?} in\n{text}");
    }
}

#[test]
fn scale_defaults_to_the_only_group() {
    let seen = Arc::new(Mutex::new(String::new()));
    let record = Arc::clone(&seen);
    let server = stub(move |method, path, body| match (method, path) {
        ("GET", p) if p.starts_with("/v1/jobs") => (
            200,
            json!([{"ID": "example", "Type": "service", "Priority": 50, "Status": "running"}])
                .to_string(),
        ),
        ("GET", "/v1/job/example") => (
            200,
            json!({"ID": "example", "TaskGroups": [{"Name": "cache", "Count": 1}]}).to_string(),
        ),
        ("POST", "/v1/job/example/scale") => {
            *record.lock().unwrap() = body.to_owned();
            register_reply()
        }
        _ => (404, "not found".into()),
    });
    let dir = tempfile::tempdir().unwrap();
    let out = caravan(
        dir.path(),
        &[
            "job",
            "scale",
            "-detach",
            "-address",
            &server.address,
            "example",
            "3",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_eq!(stdout(&out), format!("Evaluation ID: {EVAL}\n"));
    let sent: serde_json::Value = serde_json::from_str(&seen.lock().unwrap()).unwrap();
    assert_eq!(sent["Count"], 3);
    assert_eq!(sent["Target"]["Group"], "cache");
    assert_eq!(sent["Target"]["Job"], "example");

    let wrong = caravan(
        dir.path(),
        &[
            "job",
            "scale",
            "-address",
            &server.address,
            "example",
            "db",
            "3",
        ],
    );
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        stderr(&wrong).contains("has no task group \"db\""),
        "{}",
        both(&wrong)
    );
}
