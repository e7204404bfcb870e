//! JSON Schema documents for jobspecs and manifests, generated from the types and checked in
//! under `schemas/json/` (a test fails when they drift), and validation against them with the
//! `jsonschema` crate.

use crate::job::Job;
use crate::jobspec::spec::JobSpec;
use crate::jobspec::tree::Seg;
use jsonschema::error::ValidationErrorKind;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// The `apiVersion` every Caravan manifest carries.
pub const API_VERSION: &str = "caravan.io/v1";

/// The identity of a manifest's object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// The object's name: a job's ID.
    pub name: String,
    /// `default` when left out.
    pub namespace: Option<String>,
    /// Free-form labels; on a job they become its `meta`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A Kubernetes-style manifest holding a job: `apiVersion`, `kind: Job`, `metadata`, and a
/// `spec` that mirrors the HCL jobspec field for field.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "Caravan Job manifest")]
pub struct JobManifest {
    /// Always `caravan.io/v1`.
    #[schemars(extend("const" = "caravan.io/v1"))]
    pub api_version: String,
    /// `Job`.
    #[schemars(extend("const" = "Job"))]
    pub kind: String,
    pub metadata: Metadata,
    pub spec: JobSpec,
}

/// Every schema document Caravan publishes, by file name.
pub fn documents() -> Vec<(&'static str, Value)> {
    vec![
        (
            "job-manifest.schema.json",
            to_value(schemars::schema_for!(JobManifest)),
        ),
        (
            "jobspec.schema.json",
            to_value(schemars::schema_for!(JobSpec)),
        ),
        ("job.schema.json", to_value(schemars::schema_for!(Job))),
    ]
}

fn to_value(schema: schemars::Schema) -> Value {
    schema.to_value()
}

fn jobspec_validator() -> Option<&'static jsonschema::Validator> {
    static VALIDATOR: OnceLock<Option<jsonschema::Validator>> = OnceLock::new();
    VALIDATOR
        .get_or_init(|| jsonschema::validator_for(&to_value(schemars::schema_for!(JobSpec))).ok())
        .as_ref()
}

/// Checks a job body (the inside of `job "x" { }`, or a manifest's `spec`) against the jobspec
/// schema. Each problem carries the path of the offending value.
pub fn check_jobspec(body: &Value) -> Vec<(Vec<Seg>, String)> {
    let Some(validator) = jobspec_validator() else {
        return vec![(
            Vec::new(),
            "internal error: the jobspec schema does not compile".into(),
        )];
    };
    validator
        .iter_errors(body)
        .map(|e| most_specific(body, &e))
        .collect()
}

/// For `anyOf` failures (one-or-many blocks), the error of the branch that got furthest into the
/// document says what is really wrong.
fn most_specific(root: &Value, err: &jsonschema::ValidationError<'_>) -> (Vec<Seg>, String) {
    if let ValidationErrorKind::AnyOf { context } = err.kind() {
        // Deepest first; at equal depth, an error about content beats a bare type mismatch
        // (which only says that another branch of the anyOf was not taken).
        let deepest = context
            .iter()
            .flatten()
            .map(|e| {
                (
                    most_specific(root, e),
                    matches!(e.kind(), ValidationErrorKind::Type { .. }),
                )
            })
            .max_by_key(|((path, _), is_type)| (path.len(), !is_type))
            .map(|(found, _)| found);
        if let Some(found) = deepest {
            return found;
        }
    }
    (
        pointer_to_path(root, err.instance_path().as_str()),
        err.to_string(),
    )
}

/// Turns a JSON pointer into path segments, using the document to tell indexes from keys.
pub fn pointer_to_path(root: &Value, pointer: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    let mut node = Some(root);
    for raw in pointer.split('/').skip(1) {
        let token = raw.replace("~1", "/").replace("~0", "~");
        match node {
            Some(Value::Array(items)) => {
                let i = token.parse::<usize>().unwrap_or(0);
                node = items.get(i);
                out.push(Seg::Index(i));
            }
            Some(Value::Object(map)) => {
                node = map.get(&token);
                out.push(Seg::Key(token));
            }
            _ => {
                node = None;
                out.push(Seg::Key(token));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checked-in documents must match the types. Regenerate with
    /// `CARAVAN_UPDATE_SCHEMAS=1 cargo test -p caravan-schemas schema`.
    #[test]
    fn checked_in_schemas_match_the_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("json");
        let update = std::env::var_os("CARAVAN_UPDATE_SCHEMAS").is_some();
        for (name, schema) in documents() {
            let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
            let path = dir.join(name);
            if update {
                std::fs::write(&path, &text).unwrap();
                continue;
            }
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                on_disk == text,
                "{} is out of date with the types: run CARAVAN_UPDATE_SCHEMAS=1 cargo test -p caravan-schemas schema",
                path.display()
            );
        }
    }

    #[test]
    fn schema_errors_point_at_the_deepest_value() {
        let body = serde_json::json!({"group": {"web": {"count": "three", "task": {"t": {"driver": "raw_exec"}}}}});
        let problems = check_jobspec(&body);
        assert_eq!(problems.len(), 1, "{problems:?}");
        let (path, message) = &problems[0];
        assert_eq!(
            path,
            &vec![
                Seg::Key("group".into()),
                Seg::Key("web".into()),
                Seg::Key("count".into())
            ]
        );
        assert!(message.contains("three"), "{message}");
    }
}
