//! The `caravan` binary, driven as a user types it: `job init`, `job validate`, `job inspect -local`.

#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

fn caravan(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_caravan"))
        .args(args)
        .current_dir(dir)
        .env_remove("NOMAD_VAR_env")
        .output()
        .expect("run caravan")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn init_writes_an_example_that_validates() {
    let dir = tempfile::tempdir().unwrap();
    let out = caravan(dir.path(), &["job", "init"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("example.nomad.hcl"));
    let written = std::fs::read_to_string(dir.path().join("example.nomad.hcl")).unwrap();
    assert!(written.contains("job \"example\""));
    assert!(written.contains('#'), "the default example is commented");

    let again = caravan(dir.path(), &["job", "init"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("already exists"));

    let short = caravan(dir.path(), &["job", "init", "-short", "short.nomad.hcl"]);
    assert!(short.status.success(), "{}", text(&short.stderr));
    assert!(
        !std::fs::read_to_string(dir.path().join("short.nomad.hcl"))
            .unwrap()
            .contains('#')
    );

    let ok = caravan(
        dir.path(),
        &["job", "validate", "example.nomad.hcl", "short.nomad.hcl"],
    );
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert_eq!(text(&ok.stdout).matches("validation successful").count(), 2);
}

#[test]
fn validate_reports_the_line_and_exits_one() {
    let dir = tempfile::tempdir().unwrap();
    let bad = "job \"x\" {\n  group \"g\" {\n    count = \"many\"\n    task \"t\" {\n      driver = \"raw_exec\"\n      config { command = \"true\" }\n    }\n  }\n}\n";
    std::fs::write(dir.path().join("bad.nomad.hcl"), bad).unwrap();
    let out = caravan(dir.path(), &["job", "validate", "bad.nomad.hcl"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("bad.nomad.hcl:3:"), "{err}");
    assert!(err.contains("count"), "{err}");
}

#[test]
fn validate_reads_standard_input() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_caravan"))
        .args(["job", "validate", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"apiVersion: caravan.io/v1\nkind: Job\nmetadata: {name: s}\nspec:\n  group:\n    g:\n      task:\n        t: {driver: raw_exec, config: {command: \"true\"}}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("\"s\" validation successful"));
}

#[test]
fn inspect_local_prints_the_canonical_job_with_variables_applied() {
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
    let out = caravan(
        &manifests,
        &[
            "job",
            "inspect",
            "-local",
            "-var",
            "env=prod",
            "--var=replicas=4",
            "variables.nomad.hcl",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let job = &v["Job"];
    assert_eq!(job["ID"], "api");
    assert_eq!(job["Priority"], 50);
    assert_eq!(job["Region"], "global");
    assert_eq!(job["Namespace"], "default");
    let group = &job["TaskGroups"][0];
    assert_eq!(group["Count"], 4);
    // Durations are nanoseconds, as in Nomad's API.
    assert_eq!(
        group["Services"][0]["Checks"][0]["Interval"],
        5_000_000_000i64
    );
    assert_eq!(group["RestartPolicy"]["Attempts"], 2);
    assert_eq!(group["EphemeralDisk"]["SizeMB"], 300);
    assert_eq!(group["Tasks"][0]["LogConfig"]["MaxFiles"], 10);
}

#[test]
fn run_and_plan_report_bad_job_files_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.nomad.hcl"),
        "job \"x\" {\n  group \"g\" {\n    count = \"many\"\n  }\n}\n",
    )
    .unwrap();
    // Nothing listens here: the file is refused before any request is made.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("http://127.0.0.1:{port}");
    let run = caravan(
        dir.path(),
        &["job", "run", "-address", &addr, "bad.nomad.hcl"],
    );
    assert_eq!(run.status.code(), Some(1), "{}", text(&run.stderr));
    assert!(
        text(&run.stderr).starts_with("Error parsing job file bad.nomad.hcl"),
        "{}",
        text(&run.stderr)
    );
    let plan = caravan(
        dir.path(),
        &["job", "plan", "-address", &addr, "bad.nomad.hcl"],
    );
    assert_eq!(plan.status.code(), Some(255), "{}", text(&plan.stderr));
    assert!(
        text(&plan.stderr).contains("bad.nomad.hcl:3:"),
        "{}",
        text(&plan.stderr)
    );
}
