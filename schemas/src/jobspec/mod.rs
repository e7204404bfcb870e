//! Reading jobspecs: Nomad HCL, Nomad JSON (`{"Job": {...}}` or a bare Job), HCL's JSON syntax
//! (`{"job": {"id": {...}}}`), and YAML or JSON manifests (`apiVersion: caravan.io/v1`).
//!
//! Every front-end produces a [`Tree`] in the jobspec's shape; one pipeline then checks it
//! against the JSON Schema, decodes it into [`spec::JobSpec`], converts it into a canonical
//! [`Job`] and runs the semantic checks. Problems found anywhere are reported with the file, the
//! line and column, and the path of the value.

pub mod convert;
pub mod error;
pub mod hcl;
pub mod spec;
pub mod split;
pub mod tree;
pub mod wrappers;
pub mod yaml;

pub use error::{Location, Problem, SpecError};
pub use hcl::{VarFile, VariableInputs};
pub use tree::{Pos, Seg, SourceMap, Tree};

use crate::job::Job;
use crate::schema::{API_VERSION, Metadata};
use serde_json::Value;

/// The syntax of a jobspec file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Hcl,
    Json,
    Yaml,
}

impl Format {
    /// By extension first (`.hcl`, `.nomad`, `.json`, `.yaml`, `.yml`); otherwise by content.
    pub fn detect(name: &str, text: &str) -> Format {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".json") {
            return Format::Json;
        }
        if lower.ends_with(".yaml") || lower.ends_with(".yml") {
            return Format::Yaml;
        }
        if lower.ends_with(".hcl") || lower.ends_with(".nomad") {
            return Format::Hcl;
        }
        let first = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("//"));
        match first {
            Some(l) if l.starts_with('{') || l.starts_with('[') => Format::Json,
            Some(l)
                if l.starts_with("---")
                    || l.starts_with("apiVersion:")
                    || l.starts_with("kind:") =>
            {
                Format::Yaml
            }
            _ => Format::Hcl,
        }
    }
}

/// One object read from a file.
#[derive(Clone, Debug, PartialEq)]
pub enum Document {
    Job(Box<Job>),
    /// `kind: TrafficSplit`: weights over subsets of a service's instances.
    TrafficSplit(Box<crate::lb::TrafficSplit>),
}

/// Reads every object in `text` (one job for HCL; one or more documents for YAML). `name` is
/// the file name used in errors and for format detection (`-` or `<stdin>` for standard input).
pub fn decode(name: &str, text: &str, vars: &VariableInputs) -> Result<Vec<Document>, SpecError> {
    decode_inner(text, Format::detect(name, text), vars).map_err(|e| e.in_file(name))
}

/// Reads a file that must hold exactly one job.
pub fn decode_job(name: &str, text: &str, vars: &VariableInputs) -> Result<Job, SpecError> {
    let mut docs = decode(name, text, vars)?;
    match (docs.pop(), docs.is_empty()) {
        (Some(Document::Job(job)), true) => Ok(*job),
        (None, _) => Err(SpecError::invalid(None, "no job found").in_file(name)),
        (Some(Document::TrafficSplit(s)), true) => Err(SpecError::invalid(
            None,
            format!(
                "found TrafficSplit {:?} where a job was expected (use `caravan apply -f`)",
                s.name
            ),
        )
        .in_file(name)),
        (Some(_), false) => Err(SpecError::invalid(
            None,
            format!(
                "{} documents found where one job was expected",
                docs.len() + 1
            ),
        )
        .in_file(name)),
    }
}

fn decode_inner(
    text: &str,
    format: Format,
    vars: &VariableInputs,
) -> Result<Vec<Document>, SpecError> {
    match format {
        Format::Hcl => {
            let tree = hcl::parse_jobspec(text, vars)?;
            hcl_shaped(&tree).map(|job| vec![Document::Job(Box::new(job))])
        }
        Format::Yaml => yaml::parse_documents(text)?.iter().map(manifest).collect(),
        Format::Json => {
            let tree = match yaml::parse_documents(text) {
                Ok(mut docs) if docs.len() == 1 => docs.remove(0),
                Ok(_) => return Err(SpecError::syntax(None, "expected one JSON document")),
                Err(yaml_err) => {
                    return Err(match serde_json::from_str::<Value>(text) {
                        Err(e) => SpecError::syntax(
                            Some(Pos {
                                line: u32::try_from(e.line()).unwrap_or(0),
                                column: u32::try_from(e.column()).unwrap_or(0),
                            }),
                            e.to_string(),
                        ),
                        Ok(_) => yaml_err,
                    });
                }
            };
            json(&tree)
        }
    }
}

fn json(tree: &Tree) -> Result<Vec<Document>, SpecError> {
    let Value::Object(obj) = &tree.value else {
        return Err(SpecError::invalid(
            Some(Pos { line: 1, column: 1 }),
            "expected a JSON object",
        ));
    };
    if obj.contains_key("apiVersion") {
        return manifest(tree).map(|d| vec![d]);
    }
    if obj.contains_key("job") {
        return hcl_shaped(tree).map(|job| vec![Document::Job(Box::new(job))]);
    }
    let (api, path) = match obj.get("Job") {
        Some(job) => (job, vec![Seg::Key("Job".into())]),
        None => (&tree.value, Vec::new()),
    };
    api_job(tree, api, path).map(|job| vec![Document::Job(Box::new(job))])
}

/// A job in Nomad's API form.
fn api_job(tree: &Tree, value: &Value, path: Vec<Seg>) -> Result<Job, SpecError> {
    let mut value = value.clone();
    strip_nulls(&mut value);
    let mut job: Job = serde_path_to_error::deserialize(&value).map_err(|e| {
        let mut full = path.clone();
        full.extend(serde_path(e.path()));
        problem_at(tree, &full, e.inner().to_string())
    })?;
    job.canonicalize();
    let problems = crate::validate::job(&job);
    if problems.is_empty() {
        Ok(job)
    } else {
        Err(SpecError::Invalid(
            problems
                .into_iter()
                .map(|(p, m)| Problem::new(m).with_path(tree::display_path(&p)))
                .collect(),
        ))
    }
}

/// Removes `"Key": null` members everywhere. Nomad's clients send `null` for every unset
/// pointer, list and map; in Caravan's types an absent member already means "unset".
pub fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// `{"job": {"<id>": {...}}}`: what the HCL front-end produces, and HCL's JSON syntax.
fn hcl_shaped(tree: &Tree) -> Result<Job, SpecError> {
    let jobs = tree.value.get("job").and_then(Value::as_object);
    let Some(jobs) = jobs.filter(|j| j.len() == 1) else {
        return Err(SpecError::invalid(
            tree.source_map.lookup(&[Seg::Key("job".into())]),
            "expected exactly one `job \"<id>\" { ... }` block",
        ));
    };
    let Some((id, _)) = jobs.iter().next() else {
        return Err(SpecError::invalid(None, "no job block"));
    };
    job_at(
        tree,
        vec![Seg::Key("job".into()), Seg::Key(id.clone())],
        id,
        None,
    )
}

/// `apiVersion: caravan.io/v1` + `kind` + `metadata` + `spec`.
fn manifest(tree: &Tree) -> Result<Document, SpecError> {
    let at = |k: &str| tree.source_map.lookup(&[Seg::Key(k.into())]);
    let field = |k: &str| tree.value.get(k);
    let Value::Object(_) = &tree.value else {
        return Err(SpecError::invalid(
            at(""),
            "expected a manifest: an object with apiVersion, kind, metadata and spec",
        ));
    };
    match field("apiVersion").and_then(Value::as_str) {
        Some(API_VERSION) => {}
        Some(other) => {
            return Err(SpecError::invalid(
                at("apiVersion"),
                format!("unsupported apiVersion {other:?}: expected {API_VERSION:?}"),
            ));
        }
        None => {
            return Err(SpecError::invalid(
                at(""),
                format!("missing apiVersion: expected {API_VERSION:?}"),
            ));
        }
    }
    for k in tree.value.as_object().into_iter().flat_map(|o| o.keys()) {
        if !matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "spec") {
            return Err(SpecError::invalid(
                at(k),
                format!("unknown manifest field {k:?}: expected apiVersion, kind, metadata, spec"),
            ));
        }
    }
    let metadata: Metadata = match field("metadata") {
        Some(m) => serde_path_to_error::deserialize(m).map_err(|e| {
            let mut p = vec![Seg::Key("metadata".into())];
            p.extend(serde_path(e.path()));
            problem_at(tree, &p, e.inner().to_string())
        })?,
        None => {
            return Err(SpecError::invalid(
                at(""),
                "missing metadata: a manifest needs metadata.name",
            ));
        }
    };
    if metadata.name.is_empty() {
        return Err(SpecError::invalid(
            at("metadata"),
            "metadata.name must not be empty",
        ));
    }
    match field("kind").and_then(Value::as_str) {
        Some("Job") => {
            if field("spec").is_none() {
                return Err(SpecError::invalid(
                    at(""),
                    "missing spec: a Job manifest needs a spec",
                ));
            }
            let job = job_at(
                tree,
                vec![Seg::Key("spec".into())],
                &metadata.name,
                Some(&metadata),
            )?;
            Ok(Document::Job(Box::new(job)))
        }
        Some("TrafficSplit") => {
            split::traffic_split(tree, &metadata).map(|s| Document::TrafficSplit(Box::new(s)))
        }
        Some(other) => Err(SpecError::invalid(
            at("kind"),
            format!("unsupported kind {other:?}: expected Job or TrafficSplit"),
        )),
        None => Err(SpecError::invalid(
            at(""),
            "missing kind: expected Job or TrafficSplit",
        )),
    }
}

/// The shared pipeline: schema check, typed decode, conversion, semantic checks.
fn job_at(
    tree: &Tree,
    body_path: Vec<Seg>,
    id: &str,
    metadata: Option<&Metadata>,
) -> Result<Job, SpecError> {
    let body = body_path
        .iter()
        .try_fold(&tree.value, |v, seg| match seg {
            Seg::Key(k) => v.get(k),
            Seg::Index(i) => v.get(i),
        })
        .cloned()
        .unwrap_or(Value::Null);
    let body = if body.is_null() {
        Value::Object(serde_json::Map::new())
    } else {
        body
    };
    let locate = |rel: &[Seg], message: String| {
        let mut full = body_path.clone();
        full.extend_from_slice(rel);
        problem(tree, &full, message)
    };
    let mut problems: Vec<Problem> = Vec::new();
    let typed = serde_path_to_error::deserialize::<_, spec::JobSpec>(&body);
    let serde_path_rel = typed.as_ref().err().map(|e| serde_path(e.path()));
    for (rel, message) in crate::schema::check_jobspec(&body) {
        let overlaps = serde_path_rel
            .as_ref()
            .is_some_and(|p| p.starts_with(&rel) || rel.starts_with(p));
        if !overlaps {
            problems.push(locate(&rel, message));
        }
    }
    let spec = match typed {
        Ok(spec) if problems.is_empty() => spec,
        Ok(_) => return Err(SpecError::Invalid(problems)),
        Err(e) => {
            let rel = serde_path(e.path());
            problems.insert(0, locate(&rel, e.into_inner().to_string()));
            return Err(SpecError::Invalid(problems));
        }
    };
    let mut job = convert::job(id, spec, Vec::new())
        .map_err(|ps| SpecError::Invalid(ps.into_iter().map(|(p, m)| locate(&p, m)).collect()))?;
    if let Some(md) = metadata {
        if let Some(ns) = &md.namespace {
            job.namespace = crate::ids::Namespace::new(ns.clone());
        }
        for (k, v) in &md.labels {
            job.meta.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    let problems = crate::validate::job(&job);
    if problems.is_empty() {
        Ok(job)
    } else {
        Err(SpecError::Invalid(
            problems.into_iter().map(|(p, m)| locate(&p, m)).collect(),
        ))
    }
}

/// Decodes the value at `path` of a tree into `T`, with every problem located in the source.
pub fn decode_at<T: serde::de::DeserializeOwned>(
    tree: &Tree,
    path: &[Seg],
) -> Result<T, SpecError> {
    let value = path
        .iter()
        .try_fold(&tree.value, |v, seg| match seg {
            Seg::Key(k) => v.get(k),
            Seg::Index(i) => v.get(i),
        })
        .cloned()
        .unwrap_or(Value::Object(serde_json::Map::new()));
    serde_path_to_error::deserialize(&value).map_err(|e| {
        let mut full = path.to_vec();
        full.extend(serde_path(e.path()));
        problem_at(tree, &full, e.inner().to_string())
    })
}

fn serde_path(path: &serde_path_to_error::Path) -> Vec<Seg> {
    path.iter()
        .filter_map(|s| match s {
            serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
            serde_path_to_error::Segment::Enum { variant } => Some(Seg::Key(variant.clone())),
            serde_path_to_error::Segment::Unknown => None,
        })
        .collect()
}

/// serde names Rust types in its messages; say what a user would.
fn plain(message: String) -> String {
    let signed = ["i64", "i32"].iter().fold(message, |m, t| {
        m.replace(&format!("expected {t}"), "expected a whole number")
    });
    ["u64", "u32", "u16", "u8"].iter().fold(signed, |m, t| {
        m.replace(
            &format!("expected {t}"),
            "expected a non-negative whole number",
        )
    })
}

fn problem(tree: &Tree, path: &[Seg], message: String) -> Problem {
    let message = plain(message);
    Problem {
        at: Location {
            file: None,
            pos: tree.source_map.lookup(path),
            path: Some(tree::display_path(path)),
        },
        message,
    }
}

fn problem_at(tree: &Tree, path: &[Seg], message: String) -> SpecError {
    SpecError::Invalid(vec![problem(tree, path, message)])
}
