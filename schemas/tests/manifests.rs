//! Every file in manifests/ decodes and validates; a broken copy of each — an unclosed block, a
//! count that is not a number, a duration that does not parse — fails with the file name and
//! the line of the damage.

#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use caravan_schemas::jobspec::{self, Document, SpecError, VariableInputs};
use std::path::{Path, PathBuf};

fn manifests() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= 9,
        "expected the demo set in {}",
        dir.display()
    );
    files
}

fn decode(name: &str, text: &str) -> Result<Vec<Document>, SpecError> {
    jobspec::decode(name, text, &VariableInputs::default())
}

#[test]
fn every_manifest_validates() {
    for path in manifests() {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let docs = decode(&name, &text).unwrap_or_else(|e| panic!("{e}"));
        assert!(!docs.is_empty(), "{name}: no documents");
        for doc in docs {
            let job = match doc {
                Document::Job(job) => job,
                Document::TrafficSplit(split) => {
                    assert!(!split.service.is_empty(), "{name}");
                    assert!(!split.splits.is_empty(), "{name}");
                    continue;
                }
            };
            assert!(!job.id.is_empty(), "{name}");
            assert!(!job.task_groups.is_empty(), "{name}");
            // Canonical: restart policies and resources are filled in everywhere.
            for g in &job.task_groups {
                assert!(
                    g.restart_policy.is_some(),
                    "{name}: group {} has no restart policy",
                    g.name
                );
                for t in &g.tasks {
                    assert!(
                        t.resources.memory_mb > 0,
                        "{name}: task {} has no memory",
                        t.name
                    );
                }
            }
        }
    }
}

/// The 1-based line of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> u32 {
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not found"));
    u32::try_from(text[..offset].matches('\n').count() + 1).unwrap()
}

fn assert_fails_at(name: &str, broken: &str, line: Option<u32>, what: &str) {
    let err = decode(name, broken).expect_err(&format!("{name}: {what} was accepted"));
    let problems = err.problems();
    let first = &problems[0];
    assert_eq!(first.at.file.as_deref(), Some(name), "{what}: {err}");
    let pos = first
        .at
        .pos
        .unwrap_or_else(|| panic!("{name}: {what}: no line in {err}"));
    if let Some(line) = line {
        assert_eq!(pos.line, line, "{name}: {what}: {err}");
    }
    let shown = err.to_string();
    assert!(
        shown.contains(&format!("{name}:{}:", pos.line)),
        "{what}: message {shown:?} lacks file:line"
    );
}

#[test]
fn broken_copies_fail_with_a_line_number() {
    for path in manifests() {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if text.contains("kind: TrafficSplit") {
            broken_split_copies(&name, &text);
            continue;
        }

        // 1. An unclosed block.
        let unclosed = if yaml {
            text.replacen("datacenters: [\"dc1\"]", "datacenters: [\"dc1\"", 1)
                .replacen("type: batch", "type: [batch", 1)
        } else {
            let last = text.rfind('}').unwrap();
            format!("{}{}", &text[..last], &text[last + 1..])
        };
        assert_ne!(unclosed, text, "{name}: could not break it");
        assert_fails_at(&name, &unclosed, None, "an unclosed block");

        // 2. A count that is not a number.
        let (needle, replacement) = if yaml {
            ("count: 2", "count: lots")
        } else {
            ("count = ", "count = \"lots\" # ")
        };
        let bad_count = text.replacen(needle, replacement, 1);
        assert_ne!(bad_count, text, "{name}: has no count");
        assert_fails_at(
            &name,
            &bad_count,
            Some(line_of(&text, needle)),
            "a count that is not a number",
        );

        // 3. A duration that does not parse: keep the key, spoil the value.
        let needle = if yaml {
            "min_healthy_time: "
        } else {
            [
                "kill_timeout = \"",
                "delay    = \"",
                "interval = \"",
                "min_healthy_time = \"",
                "stagger      = \"",
                "timeout  = \"",
            ]
            .into_iter()
            .find(|n| text.contains(n))
            .unwrap_or_else(|| panic!("{name}: has no duration"))
        };
        let at = text.find(needle).unwrap() + needle.len();
        let end = at + text[at..].find(['"', '\n']).unwrap();
        let bad_duration = format!("{}10 parsecs{}", &text[..at], &text[end..]);
        assert_ne!(bad_duration, text);
        assert_fails_at(
            &name,
            &bad_duration,
            Some(line_of(&text, needle)),
            "a duration that does not parse",
        );
        let err = decode(&name, &bad_duration).unwrap_err().to_string();
        assert!(
            err.contains("10 parsecs"),
            "{name}: the message should quote the bad value: {err}"
        );
    }
}

/// A TrafficSplit manifest has no count or duration: an unclosed flow mapping, a weight that is
/// not a number, a negative weight and an unknown field each fail at their line.
fn broken_split_copies(name: &str, text: &str) {
    let needle = "weight: 90";
    let line = Some(line_of(text, needle));
    for (replacement, what) in [
        ("weight: lots", "a weight that is not a number"),
        ("weight: -90", "a negative weight"),
        ("weihgt: 90", "an unknown field"),
    ] {
        let broken = text.replacen(needle, replacement, 1);
        assert_ne!(broken, text, "{name}: has no {needle}");
        assert_fails_at(name, &broken, line, what);
    }
    let unclosed = text.replacen("subset: {canary: false}", "subset: {canary: false", 1);
    assert_ne!(unclosed, text, "{name}: could not break it");
    assert_fails_at(name, &unclosed, None, "an unclosed mapping");
}

#[test]
fn variables_and_locals_are_applied() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/variables.nomad.hcl");
    let text = std::fs::read_to_string(&path).unwrap();
    let vars = VariableInputs {
        flags: vec![
            ("env".into(), "prod".into()),
            ("replicas".into(), "5".into()),
        ],
        ..VariableInputs::default()
    };
    let job = jobspec::decode_job("variables.nomad.hcl", &text, &vars).unwrap();
    let group = &job.task_groups[0];
    assert_eq!(group.count, 5);
    assert_eq!(group.services[0].name, "api-prod");
    assert_eq!(
        group.services[0].checks[0].interval,
        caravan_schemas::Duration::from_secs(5)
    );
    assert_eq!(job.meta["env"], "prod");
    // Runtime interpolation is left for the agent.
    assert_eq!(group.tasks[0].env["ADDR"], "${NOMAD_ADDR_http}");

    let bad = VariableInputs {
        flags: vec![("env".into(), "qa".into())],
        ..VariableInputs::default()
    };
    let err = jobspec::decode_job("variables.nomad.hcl", &text, &bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("must be staging or prod"), "{err}");
}

#[test]
fn the_older_port_map_syntax_decodes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/legacy-port-map.nomad.hcl");
    let job = jobspec::decode_job(
        "legacy",
        &std::fs::read_to_string(path).unwrap(),
        &VariableInputs::default(),
    )
    .unwrap();
    let task = &job.task_groups[0].tasks[0];
    let net = &task.resources.networks[0];
    assert_eq!(net.mbits, 10);
    assert_eq!(net.dynamic_ports[0].label, "db");
    assert_eq!(task.config["port_map"], serde_json::json!([{ "db": 6379 }]));
}

#[test]
fn the_yaml_manifest_holds_two_jobs_with_their_metadata() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/web.yaml");
    let docs = decode("web.yaml", &std::fs::read_to_string(path).unwrap()).unwrap();
    let jobs: Vec<_> = docs
        .into_iter()
        .filter_map(|d| match d {
            Document::Job(j) => Some(j),
            Document::TrafficSplit(_) => None,
        })
        .collect();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0].id.as_str(), "web");
    assert_eq!(jobs[0].meta["team"], "storefront");
    assert_eq!(jobs[0].task_groups[0].update.as_ref().unwrap().canary, 1);
    assert_eq!(jobs[1].task_groups[0].name, "work");
    assert_eq!(jobs[1].task_groups[0].count, 3);
    assert_eq!(jobs[1].task_groups[0].tasks[0].name, "crunch");
}

#[test]
fn yaml_and_hcl_spell_the_same_job_the_same_way() {
    let hcl = r#"
job "same" {
  group "g" {
    count = 2
    network {
      port "http" { to = 80 }
    }
    task "t" {
      driver = "raw_exec"
      config { command = "true" }
      restart { attempts = 1 }
    }
  }
}"#;
    let yaml = r#"
apiVersion: caravan.io/v1
kind: Job
metadata: {name: same}
spec:
  group:
    g:
      count: 2
      network: {port: {http: {to: 80}}}
      task:
        t:
          driver: raw_exec
          config: {command: "true"}
          restart: {attempts: 1}
"#;
    let a = jobspec::decode_job("same.hcl", hcl, &VariableInputs::default()).unwrap();
    let b = jobspec::decode_job("same.yaml", yaml, &VariableInputs::default()).unwrap();
    assert_eq!(a, b);
}

#[test]
fn nomad_api_json_decodes_too() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/example.nomad.hcl");
    let job = jobspec::decode_job(
        "example",
        &std::fs::read_to_string(path).unwrap(),
        &VariableInputs::default(),
    )
    .unwrap();
    let wrapped = serde_json::to_string(&serde_json::json!({ "Job": job })).unwrap();
    let again = jobspec::decode_job("example.json", &wrapped, &VariableInputs::default()).unwrap();
    assert_eq!(job, again);
    let bare = serde_json::to_string_pretty(&job).unwrap();
    assert_eq!(
        jobspec::decode_job("-", &bare, &VariableInputs::default()).unwrap(),
        job
    );
}
