//! The built-in load balancer's inputs and outputs: `TrafficSplit` objects (weights over subsets
//! of a service's instances, applied with `caravan apply -f`) and the route table the lb-config
//! controller builds from the service registrations and the splits, which `caravan lb` serves.
//!
//! All of these are Caravan extensions; Nomad has no equivalent (it leaves routing to Fabio and
//! weighted traffic to Consul's service mesh).

use crate::ids::{AllocId, Namespace};
use crate::resources::null_as_default;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Weights over subsets of one service's instances.
///
/// ```yaml
/// apiVersion: caravan.io/v1
/// kind: TrafficSplit
/// metadata: {name: bootcamp-demo}
/// spec:
///   service: bootcamp-demo
///   splits:
///     - {weight: 90, subset: {canary: false}}
///     - {weight: 10, subset: {canary: true}}
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct TrafficSplit {
    /// `metadata.name`; unique per namespace.
    pub name: String,
    pub namespace: Namespace,
    /// The service (registration name) whose instances are split.
    pub service: String,
    #[serde(deserialize_with = "null_as_default")]
    pub splits: Vec<Split>,
    pub create_index: i64,
    pub modify_index: i64,
}

/// One weighted share of a service's traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct Split {
    /// Relative weight (the shares of a split need not add up to 100).
    pub weight: u32,
    pub subset: Subset,
}

/// Which instances of a service a split's share goes to: every condition given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct Subset {
    /// Registered by an unpromoted canary (or not).
    pub canary: Option<bool>,
    /// Runs this job version.
    pub job_version: Option<u64>,
    /// Has all of these tags.
    #[serde(deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
    /// Has all of these meta values.
    #[serde(deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
}

/// Everything `caravan lb` routes: built by the lb-config controller, stored as one object,
/// served at `GET /v1/lb/routes` (blocking queries).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct RouteTable {
    /// Sorted by host, then by prefix, longest first (the order a lookup tries them).
    #[serde(deserialize_with = "null_as_default")]
    pub routes: Vec<Route>,
    pub modify_index: i64,
}

/// One `urlprefix-[host]/path` route.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct Route {
    /// Matched against the request's Host (without port); empty matches any host.
    pub host: String,
    /// Path prefix, starting with `/`.
    pub prefix: String,
    /// The service the route came from (its registrations' name).
    pub service: String,
    pub namespace: Namespace,
    /// `strip=/path`: removed from the request path before forwarding.
    pub strip: String,
    /// `proto=http|https`: how the upstream is spoken to (`http` unless given).
    pub proto: String,
    /// `redirect=CODE,URL`: answer with a redirect instead of proxying.
    pub redirect: Option<Redirect>,
    /// Weighted groups of instances; without a TrafficSplit, one group of weight 100 with
    /// every healthy instance. A group with no healthy instance keeps its place (weight) but
    /// is skipped when chosen.
    #[serde(deserialize_with = "null_as_default")]
    pub backends: Vec<Backend>,
}

/// A redirect answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct Redirect {
    pub code: u16,
    /// May contain `$path` (the request path and query), as Fabio's.
    pub url: String,
}

/// A weighted group of instances (one share of a TrafficSplit, or all instances).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct Backend {
    pub weight: u32,
    /// The TrafficSplit share it comes from, for the status page (`canary=true`, …).
    pub subset: String,
    #[serde(deserialize_with = "null_as_default")]
    pub instances: Vec<Instance>,
}

/// One healthy instance: where to send requests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct Instance {
    pub address: String,
    pub port: i32,
    #[serde(rename = "AllocID")]
    pub alloc_id: AllocId,
    pub job_version: u64,
    pub canary: bool,
}

impl Instance {
    /// `address:port` (IPv6 addresses bracketed).
    pub fn socket_addr(&self) -> String {
        if self.address.contains(':') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        }
    }
}

impl Subset {
    /// Whether the subset has no condition (it selects every instance).
    pub fn is_all(&self) -> bool {
        self.canary.is_none()
            && self.job_version.is_none()
            && self.tags.is_empty()
            && self.meta.is_empty()
    }

    /// How the status page and the CLI name a subset: `canary=true`, `job_version=3`,
    /// `tags=a,b`, `meta.k=v`, separated by spaces; `all` when it has no condition.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = self.canary {
            parts.push(format!("canary={c}"));
        }
        if let Some(v) = self.job_version {
            parts.push(format!("job_version={v}"));
        }
        if !self.tags.is_empty() {
            parts.push(format!("tags={}", self.tags.join(",")));
        }
        for (k, v) in &self.meta {
            parts.push(format!("meta.{k}={v}"));
        }
        if parts.is_empty() {
            "all".to_owned()
        } else {
            parts.join(" ")
        }
    }
}

/// What is wrong with a TrafficSplit, as (path, message) pairs; paths are relative to the
/// split (`service`, `splits`, `splits[1].subset.tags[0]`). Empty when it is valid.
pub fn split_problems(split: &TrafficSplit) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if split.name.is_empty() {
        out.push(("name".to_owned(), "must not be empty".to_owned()));
    }
    if split.service.is_empty() {
        out.push((
            "service".to_owned(),
            "must name the service to split".to_owned(),
        ));
    }
    if split.splits.is_empty() {
        out.push((
            "splits".to_owned(),
            "must hold at least one {weight, subset}".to_owned(),
        ));
    } else if split
        .splits
        .iter()
        .map(|s| u64::from(s.weight))
        .sum::<u64>()
        == 0
    {
        out.push((
            "splits".to_owned(),
            "the weights add up to 0: at least one share needs a positive weight".to_owned(),
        ));
    }
    for (i, s) in split.splits.iter().enumerate() {
        for (j, t) in s.subset.tags.iter().enumerate() {
            if t.is_empty() {
                out.push((
                    format!("splits[{i}].subset.tags[{j}]"),
                    "a tag must not be empty".to_owned(),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(weights: &[u32]) -> TrafficSplit {
        TrafficSplit {
            name: "s".into(),
            service: "web".into(),
            splits: weights
                .iter()
                .map(|w| Split {
                    weight: *w,
                    subset: Subset::default(),
                })
                .collect(),
            ..TrafficSplit::default()
        }
    }

    #[test]
    fn subsets_describe_themselves() {
        assert_eq!(Subset::default().describe(), "all");
        let s = Subset {
            canary: Some(true),
            job_version: Some(3),
            tags: vec!["a".into(), "b".into()],
            meta: [("k".to_owned(), "v".to_owned())].into(),
        };
        assert_eq!(s.describe(), "canary=true job_version=3 tags=a,b meta.k=v");
    }

    #[test]
    fn problems_name_the_field() {
        assert!(split_problems(&split(&[90, 10])).is_empty());
        assert!(split_problems(&split(&[0, 10])).is_empty());
        assert_eq!(split_problems(&split(&[0, 0]))[0].0, "splits");
        assert_eq!(split_problems(&split(&[]))[0].0, "splits");
        let mut s = split(&[1]);
        s.service.clear();
        assert_eq!(split_problems(&s)[0].0, "service");
    }
}
