//! `kind: TrafficSplit` manifests: weights over subsets of a service's instances.
//!
//! ```yaml
//! apiVersion: caravan.io/v1
//! kind: TrafficSplit
//! metadata: {name: bootcamp-demo}
//! spec:
//!   service: bootcamp-demo
//!   splits:
//!     - {weight: 90, subset: {canary: false}}
//!     - {weight: 10, subset: {canary: true}}
//! ```
//!
//! The spec is decoded strictly (unknown fields are refused, a weight must be a non-negative
//! whole number) and then checked as a whole (at least one share, weights not all 0); every
//! problem names its path and line.

use super::tree::{Seg, Tree};
use super::{SpecError, problem};
use crate::ids::Namespace;
use crate::lb::{Split, Subset, TrafficSplit, split_problems};
use crate::schema::Metadata;
use serde::Deserialize;
use std::collections::BTreeMap;

/// `spec` of a TrafficSplit manifest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitSpec {
    service: String,
    splits: Vec<ShareSpec>,
}

/// One `{weight, subset}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShareSpec {
    weight: u32,
    /// Left out or empty: every instance.
    #[serde(default)]
    subset: Option<SubsetSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubsetSpec {
    #[serde(default)]
    canary: Option<bool>,
    #[serde(default)]
    job_version: Option<u64>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
}

/// Decodes the `spec` of a TrafficSplit manifest whose metadata is `metadata`.
pub(super) fn traffic_split(tree: &Tree, metadata: &Metadata) -> Result<TrafficSplit, SpecError> {
    let spec_path = [Seg::Key("spec".into())];
    let Some(body) = tree.value.get("spec").filter(|v| !v.is_null()) else {
        return Err(SpecError::invalid(
            tree.source_map.lookup(&[]),
            "missing spec: a TrafficSplit manifest needs spec.service and spec.splits",
        ));
    };
    let spec: SplitSpec = serde_path_to_error::deserialize(body).map_err(|e| {
        let mut full = spec_path.to_vec();
        full.extend(super::serde_path(e.path()));
        SpecError::Invalid(vec![problem(tree, &full, e.into_inner().to_string())])
    })?;
    let split = TrafficSplit {
        name: metadata.name.clone(),
        namespace: metadata
            .namespace
            .as_ref()
            .filter(|n| !n.is_empty())
            .map_or_else(Namespace::default_ns, |n| Namespace::new(n.clone())),
        service: spec.service,
        splits: spec
            .splits
            .into_iter()
            .map(|s| {
                let sub = s.subset.unwrap_or_default();
                Split {
                    weight: s.weight,
                    subset: Subset {
                        canary: sub.canary,
                        job_version: sub.job_version,
                        tags: sub.tags.unwrap_or_default(),
                        meta: sub.meta.unwrap_or_default(),
                    },
                }
            })
            .collect(),
        create_index: 0,
        modify_index: 0,
    };
    let problems: Vec<_> = split_problems(&split)
        .into_iter()
        .map(|(path, message)| {
            let mut full = spec_path.to_vec();
            full.extend(parse_rel_path(&path));
            problem(tree, &full, message)
        })
        .collect();
    if problems.is_empty() {
        Ok(split)
    } else {
        Err(SpecError::Invalid(problems))
    }
}

/// `splits[1].subset.tags[0]` → segments.
fn parse_rel_path(path: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, rest) = part.split_once('[').unwrap_or((part, ""));
        if !key.is_empty() {
            out.push(Seg::Key(key.to_owned()));
        }
        for idx in rest.split('[') {
            if let Ok(i) = idx.trim_end_matches(']').parse::<usize>() {
                out.push(Seg::Index(i));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{Document, VariableInputs, decode};
    use super::*;

    fn one(text: &str) -> Result<TrafficSplit, SpecError> {
        let mut docs = decode("split.yaml", text, &VariableInputs::default())?;
        match docs.pop() {
            Some(Document::TrafficSplit(s)) => Ok(*s),
            other => panic!("expected a TrafficSplit, got {other:?}"),
        }
    }

    const HEAD: &str = "apiVersion: caravan.io/v1\nkind: TrafficSplit\nmetadata: {name: demo}\n";

    fn err(spec: &str) -> (String, u32, String) {
        let e = one(&format!("{HEAD}{spec}")).expect_err("accepted");
        let p = e.problems().remove(0);
        (
            p.at.path.clone().unwrap_or_default(),
            p.at.pos.map_or(0, |p| p.line),
            e.to_string(),
        )
    }

    #[test]
    fn a_split_decodes() {
        let s = one(&format!(
            "{HEAD}spec:\n  service: web\n  splits:\n    - {{weight: 90, subset: {{canary: false}}}}\n    - weight: 10\n      subset: {{canary: true, job_version: 2, tags: [a], meta: {{k: v}}}}\n    - weight: 0\n"
        ))
        .unwrap();
        assert_eq!(s.name, "demo");
        assert_eq!(s.namespace.as_str(), "default");
        assert_eq!(s.service, "web");
        assert_eq!(s.splits.len(), 3);
        assert_eq!(s.splits[0].weight, 90);
        assert_eq!(s.splits[0].subset.canary, Some(false));
        assert_eq!(s.splits[1].subset.job_version, Some(2));
        assert_eq!(s.splits[1].subset.tags, ["a"]);
        assert_eq!(s.splits[1].subset.meta["k"], "v");
        assert!(s.splits[2].subset.is_all());
    }

    #[test]
    fn the_namespace_comes_from_metadata() {
        let s = one("apiVersion: caravan.io/v1\nkind: TrafficSplit\nmetadata: {name: d, namespace: ops}\nspec: {service: w, splits: [{weight: 1}]}\n").unwrap();
        assert_eq!(s.namespace.as_str(), "ops");
    }

    #[test]
    fn problems_are_located() {
        let (path, line, msg) =
            err("spec:\n  service: web\n  splits:\n    - {weight: 1, colour: red}\n");
        assert_eq!(path, "spec.splits[0].colour", "{msg}");
        assert_eq!(line, 7, "{msg}");
        assert!(msg.contains("unknown field `colour`"), "{msg}");

        let (path, line, msg) = err("spec:\n  service: web\n  splits:\n    - weight: -5\n");
        assert_eq!(path, "spec.splits[0].weight", "{msg}");
        assert_eq!(line, 7, "{msg}");
        assert!(msg.contains("whole number"), "{msg}");

        let (path, _, msg) = err("spec:\n  service: web\n  splits:\n    - weight: 1.5\n");
        assert_eq!(path, "spec.splits[0].weight", "{msg}");

        let (path, _, msg) = err("spec:\n  service: web\n  splits:\n    - weight: ten\n");
        assert_eq!(path, "spec.splits[0].weight", "{msg}");

        let (path, line, msg) = err("spec:\n  service: web\n  splits: []\n");
        assert_eq!((path.as_str(), line), ("spec.splits", 6), "{msg}");

        let (path, _, msg) = err("spec:\n  service: web\n  splits: [{weight: 0}, {weight: 0}]\n");
        assert_eq!(path, "spec.splits", "{msg}");
        assert!(msg.contains("add up to 0"), "{msg}");

        let (path, _, msg) =
            err("spec:\n  service: web\n  splits: [{weight: 1, subset: {canary: maybe}}]\n");
        assert_eq!(path, "spec.splits[0].subset.canary", "{msg}");

        let (path, _, msg) = err("spec:\n  splits: [{weight: 1}]\n");
        assert!(msg.contains("service"), "{path}: {msg}");

        let (path, _, msg) = err("spec:\n  service: web\n  splits: [{weight: 1}]\n  extra: 1\n");
        assert!(msg.contains("extra"), "{path}: {msg}");

        let (_, _, msg) = err("");
        assert!(msg.contains("missing spec"), "{msg}");
    }

    #[test]
    fn an_empty_subset_selects_all() {
        let s = one(&format!(
            "{HEAD}spec: {{service: w, splits: [{{weight: 1, subset: {{}}}}]}}\n"
        ))
        .unwrap();
        assert!(s.splits[0].subset.is_all());
    }

    #[test]
    fn json_manifests_decode_too() {
        let text = r#"{"apiVersion":"caravan.io/v1","kind":"TrafficSplit","metadata":{"name":"j"},"spec":{"service":"w","splits":[{"weight":3}]}}"#;
        let docs = decode("s.json", text, &VariableInputs::default()).unwrap();
        assert!(matches!(&docs[0], Document::TrafficSplit(s) if s.name == "j"));
    }
}
