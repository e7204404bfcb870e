//! Nomad's constraint operators (`checkConstraint` in scheduler/feasible.go) and target
//! interpolation (`resolveTarget`).

use super::hash::FxHashMap;
use super::version::{Constraints, Version};
use caravan_schemas::job::Constraint;
use caravan_schemas::node::Node;
use regex::Regex;

/// `distinct_hosts`.
pub const DISTINCT_HOSTS: &str = "distinct_hosts";
/// `distinct_property`.
pub const DISTINCT_PROPERTY: &str = "distinct_property";

/// Resolves a constraint target against a node: a literal is itself; `${attr.x}`,
/// `${meta.x}`, `${node.unique.id}`, `${node.unique.name}`, `${node.datacenter}`,
/// `${node.class}` and `${node.pool}` are looked up. `None` when the node has no such value.
pub fn resolve_target<'a>(target: &'a str, node: &'a Node) -> Option<&'a str> {
    if !target.starts_with("${") {
        return Some(target);
    }
    match target {
        "${node.unique.id}" => Some(node.id.as_str()),
        "${node.datacenter}" => Some(node.datacenter.as_str()),
        "${node.unique.name}" => Some(node.name.as_str()),
        "${node.class}" => Some(node.node_class.as_str()),
        "${node.pool}" => Some(node.node_pool.as_str()),
        _ => {
            if let Some(rest) = target.strip_prefix("${attr.") {
                node.attribute(rest.strip_suffix('}').unwrap_or(rest))
            } else if let Some(rest) = target.strip_prefix("${meta.") {
                node.meta_value(rest.strip_suffix('}').unwrap_or(rest))
            } else {
                None
            }
        }
    }
}

/// Go's `strconv.ParseBool`.
pub(crate) fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Whether a list of constraints turns on `distinct_hosts` (the first such constraint decides:
/// an empty or truthy `RTarget`, or one that does not parse as a boolean).
pub(crate) fn distinct_hosts_enabled(constraints: &[Constraint]) -> bool {
    constraints
        .iter()
        .find(|c| c.operand == DISTINCT_HOSTS)
        .is_some_and(|c| c.r_target.is_empty() || parse_go_bool(&c.r_target).unwrap_or(true))
}

/// Caches of compiled regular expressions and version constraints, keyed by their text.
#[derive(Debug, Default)]
pub(crate) struct OperatorCache {
    regexes: FxHashMap<String, Option<Regex>>,
    versions: FxHashMap<String, Option<Constraints>>,
    semvers: FxHashMap<String, Option<Constraints>>,
}

impl OperatorCache {
    /// Whether the constraint holds on `node`.
    pub(crate) fn constraint_holds(&mut self, c: &Constraint, node: &Node) -> bool {
        let l = resolve_target(&c.l_target, node);
        let r = resolve_target(&c.r_target, node);
        self.check(&c.operand, l, r)
    }

    /// Nomad's `checkConstraint`: `l` and `r` are the resolved targets (`None` when missing).
    pub(crate) fn check(&mut self, operand: &str, l: Option<&str>, r: Option<&str>) -> bool {
        match operand {
            DISTINCT_HOSTS | DISTINCT_PROPERTY => true,
            // Nomad canonicalizes an empty operand to "=".
            "" | "=" | "==" | "is" => matches!((l, r), (Some(a), Some(b)) if a == b),
            // Nomad compares the resolved strings, a missing target being "".
            "!=" | "not" => l.unwrap_or("") != r.unwrap_or(""),
            "<" | "<=" | ">" | ">=" => match (l, r) {
                (Some(a), Some(b)) => check_order(operand, a, b),
                _ => false,
            },
            "is_set" => l.is_some(),
            "is_not_set" => l.is_none(),
            "version" | "semver" => match (l, r) {
                (Some(a), Some(b)) => self.version_match(operand == "semver", a, b),
                _ => false,
            },
            "regexp" => match (l, r) {
                (Some(a), Some(b)) => self.regex_match(a, b),
                _ => false,
            },
            "set_contains" | "set_contains_all" => match (l, r) {
                (Some(a), Some(b)) => set_contains_all(a, b),
                _ => false,
            },
            "set_contains_any" => match (l, r) {
                (Some(a), Some(b)) => set_contains_any(a, b),
                _ => false,
            },
            _ => false,
        }
    }

    fn regex_match(&mut self, value: &str, pattern: &str) -> bool {
        if let Some(re) = self.regexes.get(pattern) {
            return re.as_ref().is_some_and(|re| re.is_match(value));
        }
        let re = Regex::new(pattern).ok();
        let matched = re.as_ref().is_some_and(|re| re.is_match(value));
        self.regexes.insert(pattern.to_owned(), re);
        matched
    }

    fn version_match(&mut self, semver: bool, value: &str, constraint: &str) -> bool {
        let Some(version) = Version::parse(value, false) else {
            return false;
        };
        let cache = if semver {
            &mut self.semvers
        } else {
            &mut self.versions
        };
        if let Some(c) = cache.get(constraint) {
            return c.as_ref().is_some_and(|c| c.check(&version));
        }
        let parsed = Constraints::parse(constraint, semver);
        let ok = parsed.as_ref().is_some_and(|c| c.check(&version));
        cache.insert(constraint.to_owned(), parsed);
        ok
    }
}

/// `<`, `<=`, `>`, `>=`: as integers when both parse, else as floats, else lexically.
fn check_order(op: &str, l: &str, r: &str) -> bool {
    fn cmp<T: PartialOrd>(op: &str, a: T, b: T) -> bool {
        match op {
            "<" => a < b,
            "<=" => a <= b,
            ">" => a > b,
            ">=" => a >= b,
            _ => false,
        }
    }
    if let (Ok(a), Ok(b)) = (l.parse::<i64>(), r.parse::<i64>()) {
        return cmp(op, a, b);
    }
    if let (Ok(a), Ok(b)) = (l.parse::<f64>(), r.parse::<f64>()) {
        return cmp(op, a, b);
    }
    cmp(op, l, r)
}

fn set_contains_all(l: &str, r: &str) -> bool {
    r.split(',')
        .map(str::trim)
        .all(|want| l.split(',').map(str::trim).any(|have| have == want))
}

fn set_contains_any(l: &str, r: &str) -> bool {
    r.split(',')
        .map(str::trim)
        .any(|want| l.split(',').map(str::trim).any(|have| have == want))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_targets() {
        let mut node = Node {
            id: "n1".into(),
            name: "client-1".into(),
            datacenter: "dc1".into(),
            node_class: "gpu".into(),
            node_pool: "prod".into(),
            ..Default::default()
        };
        node.attributes.insert("kernel.name".into(), "linux".into());
        node.meta.insert("rack".into(), "r1".into());
        let cases = [
            ("literal", Some("literal")),
            ("${node.unique.id}", Some("n1")),
            ("${node.unique.name}", Some("client-1")),
            ("${node.datacenter}", Some("dc1")),
            ("${node.class}", Some("gpu")),
            ("${node.pool}", Some("prod")),
            ("${attr.kernel.name}", Some("linux")),
            ("${meta.rack}", Some("r1")),
            ("${attr.missing}", None),
            ("${meta.missing}", None),
            ("${unknown.thing}", None),
        ];
        for (target, want) in cases {
            assert_eq!(resolve_target(target, &node), want, "{target}");
        }
    }

    #[test]
    fn distinct_hosts_values() {
        let c = |r: &str| Constraint {
            operand: DISTINCT_HOSTS.into(),
            r_target: r.into(),
            ..Default::default()
        };
        assert!(distinct_hosts_enabled(&[c("")]));
        assert!(distinct_hosts_enabled(&[c("true")]));
        assert!(distinct_hosts_enabled(&[c("garbage")]));
        assert!(!distinct_hosts_enabled(&[c("false")]));
        assert!(!distinct_hosts_enabled(&[]));
    }
}
