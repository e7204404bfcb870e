//! Version constraints as Nomad checks them.
//!
//! The `version` operand follows hashicorp/go-version: lenient versions (`v1.2`, `1.2.3.4`,
//! `1.0.0-beta1+meta`, `1.2.3rc1`), constraints `=`, `!=`, `>`, `>=`, `<`, `<=`, `~>` joined by
//! commas, and go-version's pre-release rule (a pre-release only satisfies an ordering constraint
//! that names a pre-release of the same version). The `semver` operand follows Nomad's
//! `helper/constraints/semver`: at most three numeric segments in constraints, no `~>`, and
//! pre-releases ordered by plain semver rules.

use std::cmp::Ordering;

/// A parsed version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Version {
    /// Numeric segments, padded with zeros to at least three.
    segments: Vec<u64>,
    /// How many segments were written.
    significant: usize,
    pre: String,
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '~'
}

fn valid_dotted(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|part| !part.is_empty() && part.chars().all(is_ident_char))
}

impl Version {
    /// Parses a version; `strict` limits it to three numeric segments (go-version's
    /// `NewSemver`).
    pub(crate) fn parse(input: &str, strict: bool) -> Option<Version> {
        let s = input.trim();
        let s = s.strip_prefix('v').unwrap_or(s);
        // Numeric segments.
        let digits_end = s
            .char_indices()
            .find(|&(_, c)| !(c.is_ascii_digit() || c == '.'))
            .map_or(s.len(), |(i, _)| i);
        let mut numeric = &s[..digits_end];
        let mut rest = &s[digits_end..];
        // A trailing '.' is not part of the numbers (`1.2.` is invalid; `1.2.x` too).
        if numeric.ends_with('.') {
            // Give the dot back to the rest, which will then fail to parse.
            numeric = &numeric[..numeric.len() - 1];
            rest = &s[numeric.len()..];
        }
        if numeric.is_empty() {
            return None;
        }
        let mut segments = Vec::with_capacity(3);
        for part in numeric.split('.') {
            if part.is_empty() {
                return None;
            }
            segments.push(part.parse::<u64>().ok()?);
        }
        if strict && segments.len() > 3 {
            return None;
        }
        let significant = segments.len();
        while segments.len() < 3 {
            segments.push(0);
        }
        // Pre-release and metadata.
        let (pre_part, meta) = match rest.split_once('+') {
            Some((p, m)) => (p, Some(m)),
            None => (rest, None),
        };
        let pre = if pre_part.is_empty() {
            String::new()
        } else if let Some(p) = pre_part.strip_prefix('-') {
            if !valid_dotted(p) {
                return None;
            }
            p.to_owned()
        } else {
            // go-version accepts `1.2.3beta1`: a pre-release starting with a letter.
            let first = pre_part.chars().next()?;
            if !(first.is_ascii_alphabetic() || first == '~') || !valid_dotted(pre_part) {
                return None;
            }
            pre_part.to_owned()
        };
        if let Some(m) = meta
            && !valid_dotted(m)
        {
            return None;
        }
        Some(Version {
            segments,
            significant,
            pre,
        })
    }

    fn compare(&self, other: &Version) -> Ordering {
        let a = &self.segments;
        let b = &other.segments;
        let longest = a.len().max(b.len());
        for i in 0..longest {
            let x = a.get(i).copied().unwrap_or(0);
            let y = b.get(i).copied().unwrap_or(0);
            match x.cmp(&y) {
                Ordering::Equal => {}
                ord => return ord,
            }
        }
        match (self.pre.is_empty(), other.pre.is_empty()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => compare_prereleases(&self.pre, &other.pre),
        }
    }

    fn same_segments(&self, other: &Version) -> bool {
        let longest = self.segments.len().max(other.segments.len());
        (0..longest).all(|i| {
            self.segments.get(i).copied().unwrap_or(0)
                == other.segments.get(i).copied().unwrap_or(0)
        })
    }
}

fn compare_part(a: &str, b: &str) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    let an = a.parse::<i64>().ok();
    let bn = b.parse::<i64>().ok();
    if a.is_empty() {
        return if bn.is_some() {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    if b.is_empty() {
        return if an.is_some() {
            Ordering::Greater
        } else {
            Ordering::Less
        };
    }
    match (an, bn) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

fn compare_prereleases(a: &str, b: &str) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    let pa: Vec<&str> = a.split('.').collect();
    let pb: Vec<&str> = b.split('.').collect();
    for i in 0..pa.len().max(pb.len()) {
        let x = pa.get(i).copied().unwrap_or("");
        let y = pb.get(i).copied().unwrap_or("");
        match compare_part(x, y) {
            Ordering::Equal => {}
            ord => return ord,
        }
    }
    Ordering::Equal
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Pessimistic,
}

/// A set of version constraints, all of which must hold.
#[derive(Clone, Debug)]
pub(crate) struct Constraints {
    items: Vec<(Op, Version)>,
    /// `semver` rules (no pre-release special case).
    semver: bool,
}

impl Constraints {
    /// Parses `">= 1.2, < 2.0"`; `semver` selects Nomad's strict semver constraints.
    pub(crate) fn parse(input: &str, semver: bool) -> Option<Constraints> {
        let mut items = Vec::new();
        for single in input.split(',') {
            let single = single.trim();
            let (op, rest) = if let Some(r) = single.strip_prefix("~>") {
                if semver {
                    return None;
                }
                (Op::Pessimistic, r)
            } else if let Some(r) = single.strip_prefix(">=") {
                (Op::Ge, r)
            } else if let Some(r) = single.strip_prefix("<=") {
                (Op::Le, r)
            } else if let Some(r) = single.strip_prefix("!=") {
                (Op::Ne, r)
            } else if let Some(r) = single.strip_prefix('>') {
                (Op::Gt, r)
            } else if let Some(r) = single.strip_prefix('<') {
                (Op::Lt, r)
            } else if let Some(r) = single.strip_prefix('=') {
                (Op::Eq, r)
            } else {
                (Op::Eq, single)
            };
            let version = Version::parse(rest, semver)?;
            items.push((op, version));
        }
        Some(Constraints { items, semver })
    }

    /// Whether `v` satisfies every constraint.
    pub(crate) fn check(&self, v: &Version) -> bool {
        self.items.iter().all(|(op, c)| {
            if self.semver {
                check_semver(*op, v, c)
            } else {
                check_go_version(*op, v, c)
            }
        })
    }
}

/// go-version: a pre-release version only matches an ordering constraint on a pre-release of
/// the same segments; a constraint without pre-release never matches a pre-release.
fn prerelease_check(v: &Version, c: &Version) -> bool {
    match (!v.pre.is_empty(), !c.pre.is_empty()) {
        (true, true) => v.same_segments(c),
        (true, false) => false,
        _ => true,
    }
}

fn check_go_version(op: Op, v: &Version, c: &Version) -> bool {
    let ord = v.compare(c);
    match op {
        Op::Eq => ord == Ordering::Equal,
        Op::Ne => ord != Ordering::Equal,
        Op::Gt => prerelease_check(v, c) && ord == Ordering::Greater,
        Op::Lt => prerelease_check(v, c) && ord == Ordering::Less,
        Op::Ge => prerelease_check(v, c) && ord != Ordering::Less,
        Op::Le => prerelease_check(v, c) && ord != Ordering::Greater,
        Op::Pessimistic => pessimistic(v, c, ord),
    }
}

fn pessimistic(v: &Version, c: &Version, ord: Ordering) -> bool {
    if !prerelease_check(v, c) || (!c.pre.is_empty() && v.pre.is_empty()) {
        return false;
    }
    if ord == Ordering::Less {
        return false;
    }
    let cs = c.segments.len();
    if cs > v.segments.len() || cs == 0 {
        return false;
    }
    for i in 0..c.significant.saturating_sub(1) {
        if v.segments[i] != c.segments[i] {
            return false;
        }
    }
    c.segments[cs - 1] <= v.segments[cs - 1]
}

fn check_semver(op: Op, v: &Version, c: &Version) -> bool {
    let ord = v.compare(c);
    match op {
        Op::Eq => ord == Ordering::Equal,
        Op::Ne => ord != Ordering::Equal,
        Op::Gt => ord == Ordering::Greater,
        Op::Lt => ord == Ordering::Less,
        Op::Ge => ord != Ordering::Less,
        Op::Le => ord != Ordering::Greater,
        // Rejected at parse time.
        Op::Pessimistic => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(v: &str, c: &str) -> bool {
        let v = Version::parse(v, false).unwrap();
        Constraints::parse(c, false).unwrap().check(&v)
    }

    fn semver(v: &str, c: &str) -> bool {
        let v = Version::parse(v, false).unwrap();
        Constraints::parse(c, true).unwrap().check(&v)
    }

    #[test]
    fn parses_like_go_version() {
        for ok in [
            "1",
            "1.2",
            "v1.2.3",
            "1.2.3.4",
            "1.2.3-beta1",
            "1.2.3-beta.1+meta",
            "1.2.3rc1",
            " 1.0 ",
            "1.7.0-dev",
            "0.12.0-x.7.z.92",
        ] {
            assert!(Version::parse(ok, false).is_some(), "{ok}");
        }
        for bad in [
            "",
            "x",
            "1.",
            "1..2",
            "1.2.x",
            "1.2-",
            "1.2+",
            "-1",
            "1.2.3-beta..1",
        ] {
            assert!(Version::parse(bad, false).is_none(), "{bad}");
        }
        assert!(Version::parse("1.2.3.4", true).is_none());
        assert!(Constraints::parse(">= nope", false).is_none());
        assert!(Constraints::parse("~> 1.2", true).is_none());
    }

    #[test]
    fn go_version_constraints() {
        let cases = [
            ("1.2.3", ">= 1.2, < 2.0", true),
            ("2.0.0", ">= 1.2, < 2.0", false),
            ("1.2", "= 1.2.0", true),
            ("1.2.0", "1.2", true),
            ("1.3.0", "!= 1.3", false),
            ("1.3.1", "!= 1.3", true),
            ("1.2.9", "~> 1.2", true),
            ("1.9.9", "~> 1.2", true),
            ("2.0.0", "~> 1.2", false),
            ("1.2.3", "~> 1.2.3", true),
            ("1.2.9", "~> 1.2.3", true),
            ("1.3.0", "~> 1.2.3", false),
            ("1.2.2", "~> 1.2.3", false),
            ("1.0.0-beta1", ">= 0.9", false),
            ("1.0.0-beta2", ">= 1.0.0-beta1", true),
            ("1.0.0-beta2", "> 1.0.0-beta10", true), // lexical, as go-version
            ("1.0.0", "> 1.0.0-beta1", true),
            ("1.0.0-beta1", "= 1.0.0-beta1", true),
            ("1.0.0+build5", "= 1.0.0", true),
            ("1.2.3.4", "> 1.2.3", true),
            ("10.0", "> 9.9", true),
        ];
        for (v, c, want) in cases {
            assert_eq!(version(v, c), want, "{v} {c}");
        }
    }

    #[test]
    fn semver_constraints() {
        assert!(semver("1.0.0-beta1", ">= 0.9.0"));
        assert!(semver("1.0.0-beta.2", "> 1.0.0-beta.1"));
        assert!(semver("1.0.0-beta.2", "< 1.0.0"));
        assert!(semver("1.2.3", ">= 1.2.0, < 1.3.0"));
        assert!(!semver("1.3.0", ">= 1.2.0, < 1.3.0"));
        assert!(semver("1.3.0", "!= 1.2.0"));
    }
}
