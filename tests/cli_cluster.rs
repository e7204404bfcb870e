//! The `caravan` CLI against a real dev agent: jobs registered, listed, inspected, versioned and
//! stopped; manifests applied; servers listed; clear errors for unknown ids and a dead agent.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cli_support;

use cli_support::{Agent, both, caravan, closed_port, eventually, manifests, ok, stderr};
use std::time::Duration;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The `JobModifyIndex` the servers hold for `id`.
fn job_modify_index(agent: &Agent, dir: &std::path::Path, id: &str) -> i64 {
    let out = ok(&agent.cli(dir, &["job", "inspect", id]));
    json(&out)["Job"]["JobModifyIndex"].as_i64().unwrap()
}

#[test]
fn a_job_is_run_listed_inspected_versioned_and_stopped() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let example = manifests().join("example.nomad.hcl");
    let example = example.to_str().unwrap();

    assert_eq!(
        ok(&agent.cli(d, &["job", "status"])).trim(),
        "No running jobs"
    );

    let run = ok(&agent.cli(d, &["job", "run", "-detach", example]));
    assert!(run.contains("Job registration successful"), "{run}");
    let eval_id = run
        .lines()
        .find_map(|l| l.strip_prefix("Evaluation ID: "))
        .unwrap_or_else(|| panic!("no evaluation id in {run}"))
        .trim()
        .to_owned();
    assert_eq!(eval_id.len(), 36, "{run}");

    // The list, from `job status` and from the top-level `status`.
    for cmd in [&["job", "status"][..], &["status"]] {
        let list = ok(&agent.cli(d, cmd));
        let mut lines = list.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            ["ID", "Type", "Priority", "Status", "Submit", "Date"],
            "{list}"
        );
        let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(&row[..3], ["example", "service", "50"], "{list}");
    }

    // One job's block, by id and by prefix.
    for id in ["example", "exa"] {
        let status = ok(&agent.cli(d, &["job", "status", id]));
        assert!(status.starts_with("ID            = example\n"), "{status}");
        for expected in [
            "Name          = example",
            "Type          = service",
            "Priority      = 50",
            "Namespace     = default",
            "\n\nSummary\nTask Group  Queued  Starting  Running  Failed  Complete  Lost  Unknown\ncache ",
            "\n\nAllocations\n",
        ] {
            assert!(status.contains(expected), "{expected:?} in\n{status}");
        }
    }
    let top = ok(&agent.cli(d, &["status", "example"]));
    assert!(top.starts_with("ID            = example\n"), "{top}");

    // The evaluation the registration created.
    let eval = ok(&agent.cli(d, &["eval", "status", &eval_id[..8]]));
    assert!(
        eval.contains(&format!("ID                 = {}", &eval_id[..8])),
        "{eval}"
    );
    assert!(eval.contains("TriggeredBy        = job-register"), "{eval}");
    assert!(eval.contains("Job ID             = example"), "{eval}");

    // Inspect round-trips: the printed JSON registers as the same job (no new version).
    let inspected = ok(&agent.cli(d, &["job", "inspect", "example"]));
    let v = json(&inspected);
    assert_eq!(v["Job"]["ID"], "example");
    assert_eq!(v["Job"]["TaskGroups"][0]["Name"], "cache");
    assert_eq!(
        v["Job"]["TaskGroups"][0]["Tasks"][0]["Config"]["image"],
        "redis:7"
    );
    let index0 = v["Job"]["JobModifyIndex"].as_i64().unwrap();
    std::fs::write(d.join("inspected.json"), &inspected).unwrap();
    ok(&agent.cli(d, &["job", "run", "-detach", "inspected.json"]));
    assert_eq!(
        job_modify_index(&agent, d, "example"),
        index0,
        "same spec, same index"
    );

    // -check-index: the current index is accepted, a stale one is refused.
    let text = std::fs::read_to_string(example).unwrap();
    std::fs::write(
        d.join("three.nomad.hcl"),
        text.replace("count = 1", "count = 3"),
    )
    .unwrap();
    std::fs::write(
        d.join("five.nomad.hcl"),
        text.replace("count = 1", "count = 5"),
    )
    .unwrap();
    let index = index0.to_string();
    ok(&agent.cli(
        d,
        &[
            "job",
            "run",
            "-detach",
            "-check-index",
            &index,
            "three.nomad.hcl",
        ],
    ));
    let stale = agent.cli(
        d,
        &[
            "job",
            "run",
            "-detach",
            "-check-index",
            &index,
            "five.nomad.hcl",
        ],
    );
    assert_eq!(stale.status.code(), Some(1), "{}", both(&stale));
    let err = stderr(&stale);
    assert!(
        err.contains(&format!("Enforcing job modify index {index0}")),
        "{err}"
    );
    assert!(err.contains("Job not updated"), "{err}");
    let current = json(&ok(&agent.cli(d, &["job", "inspect", "example"])));
    assert_eq!(
        current["Job"]["TaskGroups"][0]["Count"], 3,
        "the stale run changed nothing"
    );

    // History: two versions, and with -p the change between them.
    let history = ok(&agent.cli(d, &["job", "history", "example"]));
    assert!(history.starts_with("Version     = 1\n"), "{history}");
    assert!(history.contains("\n\nVersion     = 0\n"), "{history}");
    let diffs = ok(&agent.cli(d, &["job", "history", "-p", "example"]));
    assert!(
        diffs.contains("+/- Task Group: \"cache\"\n  +/- Count: \"1\" => \"3\" (forces create)"),
        "{diffs}"
    );

    // Stop without monitoring: the job stays, marked stopped.
    let stop = ok(&agent.cli(d, &["job", "stop", "-detach", "example"]));
    assert_eq!(stop.trim().len(), 36, "prints the evaluation id: {stop}");
    let stopped = ok(&agent.cli(d, &["job", "status", "example"]));
    assert!(stopped.contains("(stopped)"), "{stopped}");
    let list = ok(&agent.cli(d, &["job", "status"]));
    assert!(list.contains("(stopped)"), "{list}");
}

#[test]
fn unknown_ids_give_clear_errors() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (args, expected) in [
        (
            &["job", "status", "nosuch"][..],
            "No job(s) with prefix or id \"nosuch\" found",
        ),
        (
            &["job", "inspect", "nosuch"],
            "No job(s) with prefix or id \"nosuch\" found",
        ),
        (
            &["job", "stop", "-yes", "nosuch"],
            "No job(s) with prefix or id \"nosuch\" found",
        ),
        (
            &["job", "history", "nosuch"],
            "No job(s) with prefix or id \"nosuch\" found",
        ),
        (
            &["alloc", "status", "ffff0000"],
            "No allocation(s) with prefix or id \"ffff0000\" found",
        ),
        (
            &["eval", "status", "ffff0000"],
            "No evaluation(s) with prefix or id \"ffff0000\" found",
        ),
        (
            &["node", "status", "ffff0000"],
            "No node(s) with prefix \"ffff0000\" found",
        ),
        (&["alloc", "status", "f"], "at least two characters"),
        (
            &["status", "ffff0000"],
            "with prefix or id \"ffff0000\" found",
        ),
    ] {
        let out = agent.cli(d, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", both(&out));
        assert!(stderr(&out).contains(expected), "{args:?}: {}", both(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", both(&out));
    }
    // Read a job file that is not there: a plain message, not a debug dump.
    let missing = agent.cli(d, &["job", "run", "nosuch.nomad.hcl"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("reading nosuch.nomad.hcl"),
        "{}",
        both(&missing)
    );
}

#[test]
fn apply_registers_every_job_in_a_manifest() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let web = manifests().join("web.yaml");
    let web = web.to_str().unwrap();
    let out = ok(&agent.cli(d, &["apply", "-f", web]));
    assert_eq!(
        out,
        "job.caravan.io/web created\njob.caravan.io/worker created\n"
    );
    let again = ok(&agent.cli(d, &["apply", "-f", web]));
    assert_eq!(
        again,
        "job.caravan.io/web unchanged\njob.caravan.io/worker unchanged\n"
    );

    let list = ok(&agent.cli(d, &["job", "status"]));
    let ids: Vec<&str> = list
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(ids, ["web", "worker"], "{list}");
    let worker = ok(&agent.cli(d, &["job", "status", "worker"]));
    assert!(worker.contains("Type          = batch"), "{worker}");

    // A directory: every job file in it.
    let manifests_dir = d.join("manifests");
    std::fs::create_dir(&manifests_dir).unwrap();
    std::fs::copy(
        manifests().join("batch.nomad.hcl"),
        manifests_dir.join("batch.nomad.hcl"),
    )
    .unwrap();
    std::fs::write(manifests_dir.join("README.txt"), "not a job").unwrap();
    let out = ok(&agent.cli(d, &["apply", "-f", "manifests"]));
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.ends_with(" created\n"), "{out}");
}

#[test]
fn server_members_shows_one_alive_leader_and_nodes_are_listed() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut last = String::new();
    eventually(Duration::from_secs(30), "an elected leader", || {
        let out = agent.cli(d, &["server", "members"]);
        last = both(&out);
        out.status.success() && cli_support::stdout(&out).contains(" true ")
    });
    let out = ok(&agent.cli(d, &["server", "members"]));
    let mut lines = out.lines();
    assert_eq!(
        lines
            .next()
            .unwrap()
            .split("  ")
            .filter(|c| !c.is_empty())
            .map(str::trim)
            .collect::<Vec<_>>(),
        [
            "Name",
            "Address",
            "Port",
            "Status",
            "Leader",
            "Raft Version",
            "Build",
            "Datacenter",
            "Region"
        ],
        "{last}"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[3], "alive", "{out}");
    assert_eq!(row[4], "true", "{out}");
    assert_eq!(row[5], "<none>", "{out}");
    assert_eq!(&row[7..], ["dc1", "global"], "{out}");
    assert_eq!(lines.next(), None, "one server: {out}");
    let port = agent.address.rsplit(':').next().unwrap();
    assert_eq!(row[2], port, "{out}");

    let members = json(&ok(&agent.cli(d, &["server", "members", "-json"])));
    assert_eq!(members["Members"].as_array().map(Vec::len), Some(1));

    // The node list answers (the dev agent's client half may or may not have registered).
    let nodes = ok(&agent.cli(d, &["node", "status"]));
    assert!(
        nodes.trim() == "No nodes registered" || nodes.starts_with("ID "),
        "{nodes}"
    );
}

#[test]
fn a_dead_agent_is_reported_with_its_address() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("http://127.0.0.1:{}", closed_port());
    let out = caravan(dir.path(), &["job", "status", "-address", &addr]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let err = stderr(&out);
    assert!(err.starts_with("Error querying jobs: "), "{err}");
    assert!(
        err.contains(&format!("is the agent running at {addr}?")),
        "{err}"
    );
    assert!(err.contains("connection refused"), "{err}");

    // The environment is honoured: CARAVAN_ADDR, then NOMAD_ADDR.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_caravan"))
        .args(["server", "members"])
        .env_remove("CARAVAN_ADDR")
        .env("NOMAD_ADDR", &addr)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("is the agent running at {addr}?")),
        "{}",
        both(&out)
    );
}
