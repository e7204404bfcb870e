//! The lb-config reconciler, pure: the route table `caravan lb` serves, computed from the
//! service registrations and the TrafficSplits.
//!
//! - **Routes** come from Fabio's tags on *healthy* registrations (`Healthy == Some(true)`; an
//!   instance whose checks are undecided or failing gets no traffic):
//!   `urlprefix-[host]/path [option=value …]`, the options separated by spaces inside the same
//!   tag: `strip=/path` (removed from the request path before forwarding), `proto=http|https`
//!   (how the upstream is spoken to), `redirect=CODE,URL` (answer with a 3xx instead of
//!   proxying; `$path` in the URL stands for the request path). `urlprefix-/foo`,
//!   `urlprefix-example.com/foo strip=/foo`, `urlprefix-/old redirect=301,https://x/new$path`.
//! - One route per (host, prefix); the registrations of one service carrying it are grouped.
//!   A tag that cannot be read (no path, a TCP route, an unsupported protocol, a bad redirect)
//!   is skipped and the reason returned ([`TagIssue`]); so is a second service claiming a
//!   (host, prefix) another already has. Options Caravan does not implement (Fabio's `auth`,
//!   `tlsskipverify`, …) are ignored, and said so.
//! - **Backends**: with a [`TrafficSplit`] for the route's service (same namespace), one backend
//!   per share, weighted as the share, holding the instances its subset selects (`canary`,
//!   `job_version`, every tag in `tags`, every `meta` pair); otherwise one backend of weight 100
//!   with every instance.
//! - Deterministic: routes sorted by host (host-specific routes first, the any-host routes last)
//!   then longest prefix first; instances sorted by address, port and allocation.

#[cfg(test)]
mod tests;

use caravan_schemas::ids::Namespace;
use caravan_schemas::lb::{Backend, Instance, Redirect, Route, RouteTable, Subset, TrafficSplit};
use caravan_schemas::service::ServiceRegistration;
use std::collections::BTreeMap;
use std::fmt;

/// Fabio's tag prefix.
pub const TAG_PREFIX: &str = "urlprefix-";

/// A `urlprefix-` tag, read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UrlPrefix {
    /// Lower-cased, without a port; empty for any host.
    pub host: String,
    pub prefix: String,
    pub strip: String,
    pub proto: String,
    pub redirect: Option<Redirect>,
    /// Options given but not implemented: `name=value` as written.
    pub ignored: Vec<String>,
}

/// Reads one tag: `None` when it is not a `urlprefix-` tag, the reason when it is one that
/// cannot be routed.
pub fn parse_tag(tag: &str) -> Option<Result<UrlPrefix, String>> {
    let rest = tag.strip_prefix(TAG_PREFIX)?;
    Some(parse_route(rest))
}

fn parse_route(rest: &str) -> Result<UrlPrefix, String> {
    let mut words = rest.split_whitespace();
    let Some(target) = words.next() else {
        return Err("no route after urlprefix-: expected [host]/path".to_owned());
    };
    if target.starts_with(':') {
        return Err(format!(
            "{target:?} is a TCP route; only HTTP routes ([host]/path) are supported"
        ));
    }
    let Some(slash) = target.find('/') else {
        return Err(format!(
            "{target:?} has no path: expected [host]/path, the path starting with /"
        ));
    };
    let (host, prefix) = target.split_at(slash);
    let host = host_without_port(host)?;
    let mut out = UrlPrefix {
        host,
        prefix: prefix.to_owned(),
        proto: "http".to_owned(),
        ..UrlPrefix::default()
    };
    for word in words {
        let Some((name, value)) = word.split_once('=') else {
            return Err(format!("option {word:?} is not name=value"));
        };
        match name {
            "strip" => {
                if !value.starts_with('/') {
                    return Err(format!("strip={value:?} must be a path starting with /"));
                }
                out.strip = value.to_owned();
            }
            "proto" => match value {
                "http" | "https" => out.proto = value.to_owned(),
                other => {
                    return Err(format!(
                        "proto={other:?} is not supported: expected http or https"
                    ));
                }
            },
            "redirect" => out.redirect = Some(parse_redirect(value)?),
            _ => out.ignored.push(word.to_owned()),
        }
    }
    Ok(out)
}

/// `host[:port]` → the lower-cased host; checks the characters a host name may hold.
fn host_without_port(host: &str) -> Result<String, String> {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        Some(_) => return Err(format!("host {host:?} has a port that is not a number")),
        None => host,
    };
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '*')))
    {
        return Err(format!("host {host:?} holds {bad:?}"));
    }
    Ok(name.to_ascii_lowercase())
}

/// `CODE,URL`, the code a 3xx.
fn parse_redirect(value: &str) -> Result<Redirect, String> {
    let (code, url) = value.split_once(',').unwrap_or((value, ""));
    let code: u16 = code
        .parse()
        .ok()
        .filter(|c| (300..=399).contains(c))
        .ok_or_else(|| format!("redirect={value:?}: the code must be between 300 and 399"))?;
    if url.is_empty() {
        return Err(format!(
            "redirect={value:?}: expected CODE,URL (the URL to redirect to)"
        ));
    }
    Ok(Redirect {
        code,
        url: url.to_owned(),
    })
}

/// Whether a subset selects a registration: every condition it gives holds.
pub fn selects(subset: &Subset, reg: &ServiceRegistration) -> bool {
    subset.canary.is_none_or(|c| c == reg.canary)
        && subset.job_version.is_none_or(|v| v == reg.job_version)
        && subset
            .tags
            .iter()
            .all(|t| reg.tags.iter().any(|have| have == t))
        && subset
            .meta
            .iter()
            .all(|(k, v)| reg.meta.get(k).is_some_and(|have| have == v))
}

/// Something about a tag or a split that the table does not (fully) follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagIssue {
    pub namespace: Namespace,
    pub service: String,
    /// The registration (or TrafficSplit) concerned.
    pub source: String,
    pub tag: String,
    pub reason: String,
    /// Whether the route was left out (otherwise it was kept, without what is described).
    pub skipped: bool,
}

impl fmt::Display for TagIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.skipped { "skipped" } else { "note" };
        write!(
            f,
            "{what}: service {:?} ({}) {}: tag {:?}: {}",
            self.service, self.namespace, self.source, self.tag, self.reason
        )
    }
}

/// The table and what could not be followed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Built {
    pub table: RouteTable,
    pub issues: Vec<TagIssue>,
}

/// The route table for these registrations and splits.
pub fn route_table(registrations: &[ServiceRegistration], splits: &[TrafficSplit]) -> RouteTable {
    build(registrations, splits).table
}

/// What claims one (host, prefix): per (namespace, service), the registrations and their tag.
type Claims<'a> = BTreeMap<(Namespace, String), Vec<(&'a ServiceRegistration, UrlPrefix, &'a str)>>;

/// [`route_table`], with the reasons for every tag left out or not fully followed.
pub fn build(registrations: &[ServiceRegistration], splits: &[TrafficSplit]) -> Built {
    let mut issues = Vec::new();
    let mut healthy: Vec<&ServiceRegistration> = registrations
        .iter()
        .filter(|r| r.healthy == Some(true))
        .collect();
    healthy.sort_by(|a, b| (&a.alloc_id, &a.id).cmp(&(&b.alloc_id, &b.id)));
    let mut routes: BTreeMap<(String, String), Claims<'_>> = BTreeMap::new();
    for reg in healthy {
        let issue = |tag: &str, reason: String, skipped: bool| TagIssue {
            namespace: reg.namespace.clone(),
            service: reg.service_name.clone(),
            source: reg.id.to_string(),
            tag: tag.to_owned(),
            reason,
            skipped,
        };
        for tag in &reg.tags {
            match parse_tag(tag) {
                None => {}
                Some(Err(reason)) => issues.push(issue(tag, reason, true)),
                Some(Ok(parsed)) => {
                    if !parsed.ignored.is_empty() {
                        issues.push(issue(
                            tag,
                            format!(
                                "options not supported, ignored: {}",
                                parsed.ignored.join(" ")
                            ),
                            false,
                        ));
                    }
                    let claims = routes
                        .entry((parsed.host.clone(), parsed.prefix.clone()))
                        .or_default()
                        .entry((reg.namespace.clone(), reg.service_name.clone()))
                        .or_default();
                    // The same registration twice on one route (two tags): the first counts.
                    if claims.iter().any(|(r, _, _)| r.id == reg.id) {
                        issues.push(issue(
                            tag,
                            "another tag of this registration has the same route".to_owned(),
                            true,
                        ));
                        continue;
                    }
                    claims.push((reg, parsed, tag.as_str()));
                }
            }
        }
    }
    let split_of = splits_by_service(splits, &mut issues);
    let mut table = RouteTable::default();
    for ((host, prefix), claims) in routes {
        let mut claims = claims.into_iter();
        let Some(((namespace, service), members)) = claims.next() else {
            continue;
        };
        for ((ns, other), theirs) in claims {
            for (reg, _, tag) in theirs {
                issues.push(TagIssue {
                    namespace: ns.clone(),
                    service: other.clone(),
                    source: reg.id.to_string(),
                    tag: tag.to_owned(),
                    reason: format!(
                        "route {host}{prefix} is already served by service {service:?} ({namespace})"
                    ),
                    skipped: true,
                });
            }
        }
        let Some((_, first, _)) = members.first() else {
            continue;
        };
        let first = first.clone();
        for (reg, parsed, tag) in &members[1..] {
            if (&parsed.strip, &parsed.proto, &parsed.redirect)
                != (&first.strip, &first.proto, &first.redirect)
            {
                issues.push(TagIssue {
                    namespace: namespace.clone(),
                    service: service.clone(),
                    source: reg.id.to_string(),
                    tag: (*tag).to_owned(),
                    reason: "its options differ from the other instances'; the first instance's are used"
                        .to_owned(),
                    skipped: false,
                });
            }
        }
        let regs: Vec<&ServiceRegistration> = members.iter().map(|(r, _, _)| *r).collect();
        let backends = match split_of.get(&(namespace.clone(), service.clone())) {
            Some(split) => split
                .splits
                .iter()
                .map(|share| Backend {
                    weight: share.weight,
                    subset: share.subset.describe(),
                    instances: instances(
                        regs.iter().copied().filter(|r| selects(&share.subset, r)),
                    ),
                })
                .collect(),
            None => vec![Backend {
                weight: 100,
                subset: String::new(),
                instances: instances(regs.iter().copied()),
            }],
        };
        table.routes.push(Route {
            host,
            prefix,
            service,
            namespace,
            strip: first.strip,
            proto: first.proto,
            redirect: first.redirect,
            backends,
        });
    }
    table.routes.sort_by(|a, b| {
        (
            a.host.is_empty(),
            &a.host,
            std::cmp::Reverse(a.prefix.len()),
            &a.prefix,
        )
            .cmp(&(
                b.host.is_empty(),
                &b.host,
                std::cmp::Reverse(b.prefix.len()),
                &b.prefix,
            ))
    });
    Built { table, issues }
}

/// The split that applies to each (namespace, service): the first by name when several name the
/// same service (the others are reported).
fn splits_by_service<'a>(
    splits: &'a [TrafficSplit],
    issues: &mut Vec<TagIssue>,
) -> BTreeMap<(Namespace, String), &'a TrafficSplit> {
    let mut sorted: Vec<&TrafficSplit> = splits.iter().collect();
    sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut out: BTreeMap<(Namespace, String), &TrafficSplit> = BTreeMap::new();
    for s in sorted {
        let key = (s.namespace.clone(), s.service.clone());
        if let Some(first) = out.get(&key) {
            issues.push(TagIssue {
                namespace: s.namespace.clone(),
                service: s.service.clone(),
                source: format!("TrafficSplit {}", s.name),
                tag: String::new(),
                reason: format!(
                    "ignored: TrafficSplit {:?} already splits this service",
                    first.name
                ),
                skipped: true,
            });
            continue;
        }
        out.insert(key, s);
    }
    out
}

/// Instances, sorted by address, port and allocation.
fn instances<'a>(regs: impl Iterator<Item = &'a ServiceRegistration>) -> Vec<Instance> {
    let mut out: Vec<Instance> = regs
        .map(|r| Instance {
            address: r.address.clone(),
            port: r.port,
            alloc_id: r.alloc_id.clone(),
            job_version: r.job_version,
            canary: r.canary,
        })
        .collect();
    out.sort_by(|a, b| (&a.address, a.port, &a.alloc_id).cmp(&(&b.address, b.port, &b.alloc_id)));
    out
}

/// Whether two tables route the same (their indexes aside).
pub fn same_routes(a: &RouteTable, b: &RouteTable) -> bool {
    a.routes == b.routes
}
